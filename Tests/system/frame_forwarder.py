#!/usr/bin/env python3
"""Joins vmmd's virtio-net frame socket to a tap device, for tests (the
role proxyd will play): every datagram from the socket is one Ethernet
frame written to the tap, every frame read from the tap one datagram.

    frame_forwarder.py --socket-fd N --tap NAME [--stats-fd M] [--switch-fd K]

Run inside the tap's network namespace (``ip netns exec``). The tap is
attached with TUNSETIFF (IFF_TAP | IFF_NO_PI: bare frames). A single poll
loop moves frames both ways; it exits when the socket's peer closes. On
exit it writes "frames_in=A frames_out=B busy_us=C" to the stats fd, so a
test can show the forwarder is not what limits throughput (busy_us: time
spent moving frames, not waiting).

With --switch-fd (a SOCK_SEQPACKET socket), each datagram arriving there
carries a new frame socket (SCM_RIGHTS) that replaces the current one: a
VM migrating to another vmmd takes the tap along. The forwarder then runs
until the switch socket closes, not the frame socket.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import socket
import struct
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def forward(sock: socket.socket | None, tap: int,
            switch: socket.socket | None = None) -> tuple[int, int, float]:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(tap, select.POLLIN)
    if switch is not None:
        poller.register(switch.fileno(), select.POLLIN)
    frames_in = frames_out = 0
    busy = 0.0

    def drop_socket() -> None:
        nonlocal sock
        if sock is not None:
            poller.unregister(sock.fileno())
            sock.close()
            sock = None

    while True:
        events = poller.poll()
        start = time.perf_counter()
        for fd, event in events:
            if switch is not None and fd == switch.fileno():
                _, fds, _, _ = socket.recv_fds(switch, 16, 1)
                if not fds:
                    return frames_in, frames_out, busy
                drop_socket()
                sock = socket.socket(fileno=fds[0])
                poller.register(sock.fileno(), select.POLLIN)
                break
            if fd == tap:
                frame = os.read(tap, 65536)
                if sock is None:
                    continue
                try:
                    sock.send(frame)
                except (BrokenPipeError, ConnectionResetError):
                    if switch is None:
                        return frames_in, frames_out, busy
                    drop_socket()
                    break
                frames_in += 1
            elif sock is not None and fd == sock.fileno():
                try:
                    frame = sock.recv(65536)
                except ConnectionResetError:
                    frame = b""
                if not frame:
                    if switch is None:
                        return frames_in, frames_out, busy
                    drop_socket()
                    break
                try:
                    os.write(tap, frame)
                except OSError:
                    pass        # the tap refuses a malformed frame: dropped, as a wire would
                frames_out += 1
        busy += time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket-fd", type=int, required=True)
    ap.add_argument("--tap", required=True)
    ap.add_argument("--stats-fd", type=int)
    ap.add_argument("--switch-fd", type=int)
    a = ap.parse_args()
    sock = socket.socket(fileno=a.socket_fd)
    switch = socket.socket(fileno=a.switch_fd) if a.switch_fd is not None else None
    tap = open_tap(a.tap)
    frames_in, frames_out, busy = forward(sock, tap, switch)
    if a.stats_fd is not None:
        os.write(a.stats_fd, f"frames_in={frames_in} frames_out={frames_out} "
                             f"busy_us={int(busy * 1e6)}\n".encode())


if __name__ == "__main__":
    main()
