#!/usr/bin/env python3
"""A client of the demo pair's guest: ONE TCP connection, HTTP/1.1
keep-alive requests back to back, each incrementing the counter the guest
keeps on its disk (guest/README.md). Run inside the client namespace:

    ip netns exec colo-client python3 scripts/demo_client.py --seconds 12

Prints one line per second and, at the end, a JSON summary: the counts
seen (in order), the longest gap between two replies (a failover's
visible cost), whether the connection was ever lost, and errors.
Exit status 0 when every reply came on the one connection and the counts
rose by exactly one each time (no acknowledged request lost or doubled).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

REQUEST = b"GET /count HTTP/1.1\r\nHost: guest\r\n\r\n"


def read_reply(sock: socket.socket, buffer: bytearray) -> tuple[int, int]:
    """One HTTP reply: (status, X-Colo-Count)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the guest closed the connection")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the guest closed the connection mid-reply")
        rest += chunk
    del buffer[:]
    buffer += rest[length:]
    if headers.get("connection", "").lower() == "close":
        raise ConnectionError("the guest does not keep connections alive (needs HTTP/1.1 keep-alive)")
    return status, int(headers.get("x-colo-count", "-1"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="10.0.2.15")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.02, help="pause between requests (s)")
    parser.add_argument("--reply-timeout", type=float, default=10.0)
    parser.add_argument("--json", metavar="FILE", help="also write the summary here")
    args = parser.parse_args()

    counts: list[int] = []
    times: list[float] = []
    errors: list[str] = []
    sock = socket.create_connection((args.address, args.port), timeout=args.reply_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    start = time.monotonic()
    next_report = start + 1
    try:
        while time.monotonic() - start < args.seconds:
            sock.sendall(REQUEST)
            status, count = read_reply(sock, buffer)
            now = time.monotonic()
            if status != 200:
                errors.append(f"status {status} at count {count}")
            counts.append(count)
            times.append(now)
            if now >= next_report:
                gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
                print(f"t={now - start:5.1f}s requests={len(counts)} count={count} longest gap={gap * 1000:.0f} ms",
                      flush=True)
                next_report += 1
            time.sleep(args.interval)
    except (OSError, ConnectionError) as error:
        errors.append(f"connection lost after {len(counts)} replies: {error}")
    finally:
        sock.close()

    gaps = [b - a for a, b in zip(times, times[1:])]
    steps_ok = all(b == a + 1 for a, b in zip(counts, counts[1:]))
    summary = {
        "requests": len(counts),
        "first_count": counts[0] if counts else None,
        "last_count": counts[-1] if counts else None,
        "counts_consecutive": steps_ok,
        "longest_gap_ms": round(max(gaps, default=0.0) * 1000, 1),
        "connection_kept": not errors,
        "errors": errors,
    }
    print(json.dumps(summary), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "counts": counts, "times": times}, f)
    return 0 if steps_ok and not errors and counts else 1


if __name__ == "__main__":
    sys.exit(main())
