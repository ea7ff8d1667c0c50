"""Records the captures test_proxyd_replay.py replays: a client fetches a
3000-byte answer over TCP through a live proxyd pair (see proxyd_pair),
while tcpdump captures each guest namespace's tap. The primary server writes
its answer at once, the secondary in 7 pieces, so the two captures cut the
same bytes into different segments; the two kernels chose different ISNs.

    sudo /usr/bin/python3 Tests/system/captures/record.py   (from the repo root)

writes primary.pcap and secondary.pcap beside this file."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from proxyd_pair import GuestPair  # noqa: E402

ANSWER = bytes((index * 7 + 3) % 251 for index in range(3000))


def serve(ns, pieces: int) -> socket.socket:
    listener = ns.socket()
    listener.bind(("10.77.70.2", 8000))
    listener.listen()

    def run():
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert conn.recv(100) == b"GET /colo\n"
        step = -(-len(ANSWER) // pieces)
        for start in range(0, len(ANSWER), step):
            conn.sendall(ANSWER[start:start + step])
            time.sleep(0.01)
        conn.close()

    threading.Thread(target=run, daemon=True).start()
    return listener


def main() -> None:
    with GuestPair(timeout_ms=2000) as pair:
        dumps = []
        for ns, name in ((pair.primary_guest, "primary"), (pair.secondary_guest, "secondary")):
            dumps.append(subprocess.Popen(ns.wrap(["tcpdump", "-i", "tap0", "-U", "-s", "0", "-w",
                                                   str(HERE / f"{name}.pcap"), "tcp port 8000"]),
                                          stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        listeners = [serve(pair.primary_guest, 1), serve(pair.secondary_guest, 7)]
        conn = pair.client.connect(("10.77.70.2", 8000))
        conn.sendall(b"GET /colo\n")
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        conn.close()
        assert received == ANSWER
        time.sleep(1.0)
        for dump in dumps:
            dump.terminate()
            dump.wait()
        for listener in listeners:
            listener.close()
        print(pair.primary.counters())


if __name__ == "__main__":
    main()
