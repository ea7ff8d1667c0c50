"""Network namespaces with a tap device, for QEMU guests under test.

A ``NetNS`` is a namespace of our own (unique name) holding one tap device
with a host-side address; QEMU runs inside it (``ip netns exec``) and opens
the tap, the test talks to the guest from the same namespace. Sockets are
made inside the namespace by switching this thread's network namespace with
setns(2) just for the socket() call (a socket stays in the namespace it was
created in). Everything is removed on ``close()`` / leaving the ``with``.
Only addresses inside the namespace are used (10.77.x.y).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import socket
import subprocess

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_seq = itertools.count()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class NetNS:
    def __init__(self, subnet: int = 0, tap: str = "tap0", prefix: str = "colo-gt",
                 address: str | None = None, mac: str | None = None):
        """``address`` is the tap's own address (default: host_ip, .1 of the
        subnet; a namespace standing in for a guest takes guest_ip, .2);
        ``mac`` its Ethernet address (default: the kernel's random one)."""
        self.name = f"{prefix}-{os.getpid()}-{next(_seq)}"
        self.tap = tap
        self.host_ip = f"10.77.{subnet}.1"
        self.guest_ip = f"10.77.{subnet}.2"
        self._created = False
        run("ip", "netns", "add", self.name)
        self._created = True
        try:
            self.ip("tuntap", "add", "dev", tap, "mode", "tap")
            if mac:
                self.ip("link", "set", tap, "address", mac)
            self.ip("addr", "add", f"{address or self.host_ip}/24", "dev", tap)
            self.ip("link", "set", tap, "up")
            self.ip("link", "set", "lo", "up")
        except Exception:
            self.close()
            raise

    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.name, *args).stdout

    def exec(self, *args: str, check: bool = True, timeout: float | None = None
             ) -> subprocess.CompletedProcess:
        """Run a command inside the namespace."""
        return run("ip", "netns", "exec", self.name, *args, check=check, timeout=timeout)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    @contextlib.contextmanager
    def entered(self):
        """This thread is inside the namespace for the duration."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)
            os.close(target)

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM) -> socket.socket:
        with self.entered():
            return socket.socket(family, type)

    def connect(self, addr: tuple[str, int], timeout: float = 10.0) -> socket.socket:
        s = self.socket()
        s.settimeout(timeout)
        try:
            s.connect(addr)
        except BaseException:
            s.close()
            raise
        return s

    def close(self) -> None:
        if self._created:
            # Deleting the namespace deletes the tap in it as well.
            run("ip", "netns", "del", self.name, check=False)
            self._created = False

    def __enter__(self) -> "NetNS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def leftover_namespaces(prefix: str = "colo-gt") -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@contextlib.contextmanager
def client_namespace(subnet: int):
    """A client namespace for a guest test, checked to be gone afterwards."""
    with NetNS(subnet=subnet) as ns:
        yield ns
    assert not [n for n in leftover_namespaces() if n == ns.name]
