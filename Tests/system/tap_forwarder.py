"""Kernel network stacks standing in for guests: a namespace's tap device
bridged to a SOCK_SEQPACKET socket that carries one Ethernet frame per
datagram (no header), the frame socket vmmd's virtio-net backend and proxyd's
guest side speak.

``GuestLink(ns)`` starts helpers/tap-forwarder inside ``ns`` on the
namespace's tap and one end of a fresh socketpair, and hands the other end
(``link.socket``) to whoever plays the other side: a daemon (send its fd
over a control socket) or the test itself. The forwarder is C (built here
with make on first use) so that it is not the bottleneck of a benchmark.

``open_tap(ns, name)`` opens an existing tap of ``ns`` from this process and
returns its fd: an "external interface" fd to hand to a daemon.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
from pathlib import Path

import netns

HELPERS = Path(__file__).resolve().parent / "helpers"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def forwarder_binary() -> Path:
    subprocess.run(["make", "-s", "-C", str(HELPERS)], check=True)
    return HELPERS / "build" / "tap-forwarder"


def open_tap(ns: netns.NetNS, name: str) -> int:
    """An fd on tap ``name`` of ``ns`` (IFF_TAP | IFF_NO_PI, close-on-exec):
    reading it gives the frames the namespace's kernel sends out of the
    tap, writing it delivers frames to that kernel."""
    with ns.entered():
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


class GuestLink:
    """The tap of ``ns`` forwarded to ``self.socket`` (SOCK_SEQPACKET)."""

    def __init__(self, ns: netns.NetNS, tap: str | None = None):
        binary = forwarder_binary()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.socket = ours
        try:
            self.proc = subprocess.Popen(
                ns.wrap([str(binary), tap or ns.tap, str(theirs.fileno())]),
                pass_fds=[theirs.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        finally:
            theirs.close()
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"tap-forwarder did not start: {self.proc.stderr.read()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.socket.close()

    def __enter__(self) -> "GuestLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
