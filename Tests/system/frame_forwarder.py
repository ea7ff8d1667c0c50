#!/usr/bin/env python3
"""Joins vmmd's virtio-net frame socket to a tap device, for tests (the
role proxyd will play): every datagram from the socket is one Ethernet
frame written to the tap, every frame read from the tap one datagram.

    frame_forwarder.py --socket-fd N --tap NAME [--stats-fd M]

Run inside the tap's network namespace (``ip netns exec``). The tap is
attached with TUNSETIFF (IFF_TAP | IFF_NO_PI: bare frames). A single poll
loop moves frames both ways; it exits when the socket's peer closes. On
exit it writes "frames_in=A frames_out=B busy_us=C" to the stats fd, so a
test can show the forwarder is not what limits throughput (busy_us: time
spent moving frames, not waiting).
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


def forward(sock: socket.socket, tap: int) -> tuple[int, int, float]:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(tap, select.POLLIN)
    frames_in = frames_out = 0
    busy = 0.0
    while True:
        events = poller.poll()
        start = time.perf_counter()
        for fd, event in events:
            if fd == tap:
                frame = os.read(tap, 65536)
                try:
                    sock.send(frame)
                except (BrokenPipeError, ConnectionResetError):
                    return frames_in, frames_out, busy
                frames_in += 1
            else:
                try:
                    frame = sock.recv(65536)
                except ConnectionResetError:
                    frame = b""
                if not frame:
                    return frames_in, frames_out, busy
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
    a = ap.parse_args()
    sock = socket.socket(fileno=a.socket_fd)
    tap = open_tap(a.tap)
    frames_in, frames_out, busy = forward(sock, tap)
    if a.stats_fd is not None:
        os.write(a.stats_fd, f"frames_in={frames_in} frames_out={frames_out} "
                             f"busy_us={int(busy * 1e6)}\n".encode())


if __name__ == "__main__":
    main()
