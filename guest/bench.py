#!/usr/bin/env python3
"""Guest-side baselines for docs/PERFORMANCE.md (run as root, from anywhere):

    python3 guest/bench.py [--boots 3] [--echo 1000] [--http 200]

Reports, under qemu-system-x86_64 -enable-kvm on this machine:
  * boot time from starting QEMU to the COLO-GUEST START marker (firmware +
    loader) and to COLO-GUEST READY, with qboot and with SeaBIOS;
  * TCP echo round trips per second (one connection, 64-byte messages, one
    outstanding), HTTP requests per second (one connection per request, each
    one a disk write + flush in the guest);
and under QEMU TCG with -icount shift=0 (one guest TSC tick = one guest
instruction): guest instructions per TCP echo round trip and per HTTP
request, from the guest's busy TSC ticks (status: tsc - idle_tsc) minus the
idle-loop baseline over the same wall time.
Uses the test helpers in Tests/system (netns.py, qemu.py).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Tests" / "system"))
import netns  # noqa: E402
import qemu  # noqa: E402


def status(ns, ) -> dict:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"status", (ns.guest_ip, 7000))
    data = s.recv(512).decode()
    s.close()
    return {k: int(v) for k, v in (w.split("=") for w in data.split())}


def poweroff(ns, g):
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(b"poweroff", (ns.guest_ip, 7000))
    s.recv(64)
    s.close()
    g.wait_exit(30)


def echo(ns, n):
    s = ns.connect((ns.guest_ip, 7))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 64
    t = time.monotonic()
    for _ in range(n):
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += s.recv(64)
    dt = time.monotonic() - t
    s.close()
    return dt


def http(ns, n):
    t = time.monotonic()
    for _ in range(n):
        s = ns.connect((ns.guest_ip, 80))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(4096):
            pass
        s.close()
    return time.monotonic() - t


def boot(ns, d, bios, workdir, accel="kvm"):
    t0 = time.monotonic()
    g = qemu.Guest(netns=ns, disk=d, workdir=workdir, args=["--bios", bios, "--accel", accel])
    try:
        g.wait_for(r"^COLO-GUEST START", 120)
        t_start = time.monotonic() - t0
        m = g.wait_for(r"^COLO-GUEST READY .*boot_ms=(\d+)", 120)
        t_ready = time.monotonic() - t0
    except BaseException:
        g.close()
        raise
    return g, t_start, t_ready, int(m.group(1))


def measure_boots(ns, d, bios, tmp, n):
    starts, readys = [], []
    for _ in range(n):
        g, t_start, t_ready, _ = boot(ns, d, bios, tmp)
        try:
            starts.append(t_start)
            readys.append(t_ready)
            poweroff(ns, g)
        finally:
            g.close()
    print(f"boot {bios}: to START {min(starts):.2f}-{max(starts):.2f}s, "
          f"to READY {min(readys):.2f}-{max(readys):.2f}s ({n} boots)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--echo", type=int, default=1000)
    ap.add_argument("--http", type=int, default=200)
    a = ap.parse_args()
    why = qemu.missing_prerequisite()
    if why:
        sys.exit(f"bench: {why}")
    with tempfile.TemporaryDirectory() as tmp, netns.NetNS(subnet=5) as ns:
        d = Path(tmp) / "disk.img"
        d.write_bytes(b"\0" * (1 << 20))
        for bios in ("qboot", "seabios"):
            measure_boots(ns, d, bios, tmp, a.boots)

        g, *_ = boot(ns, d, "qboot", tmp)
        try:
            dt = echo(ns, a.echo)
            print(f"kvm TCP echo: {a.echo} round trips in {dt:.2f}s = {a.echo / dt:.0f}/s")
            dt = http(ns, a.http)
            print(f"kvm HTTP: {a.http} requests in {dt:.2f}s = {a.http / dt:.1f}/s")
            poweroff(ns, g)
        finally:
            g.close()

        # Instructions: TCG with icount shift=0, guest TSC == instruction count.
        g, *_ = boot(ns, d, "qboot", tmp, accel="tcg-icount")
        try:
            instructions(ns, g, a)
        finally:
            g.close()


def instructions(ns, g, a):
    time.sleep(1)

    def busy(fn):
        s0 = status(ns)
        w0 = time.monotonic()
        fn()
        w = time.monotonic() - w0
        s1 = status(ns)
        return (s1["tsc"] - s1["idle_tsc"]) - (s0["tsc"] - s0["idle_tsc"]), w

    idle_busy, idle_w = busy(lambda: time.sleep(2))
    per_s = idle_busy / idle_w          # timer ticks + status round trips
    n_echo, n_http = min(a.echo, 500), min(a.http, 100)
    b, w = busy(lambda: echo(ns, n_echo))
    print(f"icount: idle baseline {per_s:.0f} instr/s; TCP echo round trip "
          f"{(b - per_s * w) / n_echo:.0f} instructions")
    b, w = busy(lambda: http(ns, n_http))
    print(f"icount: HTTP request (incl. disk write+flush) "
          f"{(b - per_s * w) / n_http:.0f} instructions")
    poweroff(ns, g)


if __name__ == "__main__":
    main()
