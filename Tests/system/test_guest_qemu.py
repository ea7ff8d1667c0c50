"""The test guest (guest/, issue 3) under qemu-system-x86_64 -enable-kvm.

A client network namespace holds the tap QEMU's virtio-net-pci uses; from
there the tests ping the guest and use its UDP echo, TCP echo and HTTP
services (HTTP also with persistent and pipelined connections, bad requests
and its connection limit). The HTTP request counter lives on a raw
virtio-blk image that the tests read on the host after the guest has powered itself off (UDP control
"poweroff" -> ACPI PM1a at 0x604 -> QEMU exits), and the next boot must
resume from it. The memory dirtier's rate is checked with QEMU's own
dirty-rate measurement (QMP calc-dirty-rate, dirty-bitmap mode). Bad command
lines must end in a clear console error and a power-off, never a hang.

Guests run slowly here (software KVM, ~1-2 M instructions/s), so each boot is
short and the whole module takes well under a minute of guest time.
"""

from __future__ import annotations

import re
import socket
import struct
import time

import pytest

import netns
import qemu

_missing = qemu.missing_prerequisite()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"QEMU guest tests: {_missing}")

MAGIC = b"COLOCNT1"


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def disk_counter(path) -> int | None:
    """The counter in sector 0 of a raw image (None for a fresh disk)."""
    sector = open(path, "rb").read(512)
    if sector[:8] != MAGIC:
        return None
    count, h = struct.unpack_from("<QI", sector, 8)
    assert h == fnv1a(sector[:16]), "counter sector hash mismatch"
    return count


def udp_request(ns: netns.NetNS, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(payload, (ns.guest_ip, port))
        data, src = s.recvfrom(4096)
        assert src == (ns.guest_ip, port)
        return data
    finally:
        s.close()


def http_get(ns: netns.NetNS, path: str = "/") -> tuple[int, str]:
    s = ns.connect((ns.guest_ip, 80))
    try:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    finally:
        s.close()
    text = data.decode()
    status = int(text.split(" ", 2)[1])
    m = re.search(r"^count=(\d+)$", text, re.M)
    assert m, f"no count= line in reply:\n{text}"
    return status, int(m.group(1))


class HttpConnection:
    """One TCP connection to the guest's HTTP server, replies framed by their
    Content-Length, so that several requests (one after another or pipelined)
    share it. ``request`` sends one request and reads its reply."""

    def __init__(self, ns: netns.NetNS, timeout: float = 10.0, rcvbuf: int | None = None):
        if rcvbuf is None:
            self.sock = ns.connect((ns.guest_ip, 80), timeout=timeout)
        else:       # a small receive window, set before the handshake
            self.sock = ns.socket()
            self.sock.settimeout(timeout)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.connect((ns.guest_ip, 80))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    @staticmethod
    def format(path: str = "/", version: str = "1.1", headers: str = "") -> bytes:
        return f"GET {path} HTTP/{version}\r\nHost: guest\r\n{headers}\r\n".encode()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def reply(self) -> tuple[int, dict[str, str], str]:
        """The next reply: status, headers (lower-case names), body."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed before a reply head: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip()
                   for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buf) < length:
            assert self._fill(), "connection closed inside a reply body"
        body, self.buf = self.buf[:length].decode(), self.buf[length:]
        headers[":status-line"] = lines[0]
        return status, headers, body

    def count(self) -> int:
        """The next reply, which must be a 200 whose count header and body agree."""
        status, headers, body = self.reply()
        assert status == 200, (status, headers, body)
        n = int(headers["x-colo-count"])
        assert re.search(rf"^count={n}$", body, re.M), body
        return n

    def request(self, data: bytes | None = None) -> int:
        self.send(data or self.format())
        return self.count()

    def closed_by_guest(self) -> bool:
        """True when the guest closed the connection (EOF) with nothing more to read."""
        return not self.buf and not self._fill()

    def close(self) -> None:
        self.sock.close()


def power_off(ns: netns.NetNS, guest: qemu.Guest) -> None:
    assert udp_request(ns, 7000, b"poweroff") == b"ok poweroff"
    guest.wait_for(r"^COLO-GUEST POWEROFF$", timeout=10)
    assert guest.wait_exit(timeout=20) == 0, "QEMU did not exit on the guest's power-off"


@pytest.fixture
def client():
    with netns.client_namespace(subnet=3) as ns:
        yield ns


def test_services_and_disk_counter(client, disk, tmp_path):
    """Boot marker, ping, UDP echo, 100 TCP echo round trips, 20 HTTP requests;
    counter on disk == requests; power off, boot again, counter resumes."""
    with qemu.Guest(netns=client, disk=disk, workdir=tmp_path, name="boot1") as g:
        g.wait_for(r"^COLO-GUEST DISK count=0 fresh=1$", timeout=60)
        ready = g.wait_for(r"^COLO-GUEST READY ip=(\S+)/24 .*boot_ms=(\d+)$", timeout=60)
        assert ready.group(1) == client.guest_ip

        ping = client.exec("ping", "-c", "3", "-i", "0.2", "-W", "5", client.guest_ip,
                           check=False, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert " 0% packet loss" in ping.stdout

        for i in range(5):
            msg = f"udp echo {i}".encode()
            assert udp_request(client, 7, msg) == msg

        s = client.connect((client.guest_ip, 7))
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(100):
                msg = f"round trip {i:03d}\n".encode()
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    assert chunk, "guest closed the echo connection"
                    got += chunk
                assert got == msg
            # one larger write, several segments: flow control path of the echo
            blob = bytes(range(256)) * 64
            s.sendall(blob)
            got = b""
            while len(got) < len(blob):
                chunk = s.recv(65536)
                assert chunk
                got += chunk
            assert got == blob
        finally:
            s.close()

        for i in range(1, 21):
            status, count = http_get(client)
            assert (status, count) == (200, i)

        assert udp_request(client, 7000, b"status").startswith(b"count=20 ")
        g.wait_for(r"^COLO-GUEST TICK s=\d+ count=20 dirty=0$", timeout=10)
        power_off(client, g)

    assert disk_counter(disk) == 20

    with qemu.Guest(netns=client, disk=disk, workdir=tmp_path, name="boot2") as g:
        g.wait_for(r"^COLO-GUEST DISK count=20 fresh=0$", timeout=60)
        g.wait_for(r"^COLO-GUEST READY ", timeout=60)
        assert http_get(client) == (200, 21)
        power_off(client, g)
    assert disk_counter(disk) == 21


def test_dirty_rate_matches_setting(client, disk, tmp_path):
    """QEMU's dirty-bitmap measurement sees the rate set on the command line,
    and the new rate after a run-time "dirty N" control message."""
    with qemu.Guest(netns=client, disk=disk, workdir=tmp_path, args=["--dirty", "8"]) as g:
        g.wait_for(r"^COLO-GUEST READY .* dirty=8 ", timeout=60)

        def measure() -> int:
            g.qmp("calc-dirty-rate", **{"calc-time": 2, "mode": "dirty-bitmap"})
            deadline = time.monotonic() + 20
            while True:
                r = g.qmp("query-dirty-rate")
                if r["status"] == "measured":
                    return r["dirty-rate"]          # MiB/s
                assert time.monotonic() < deadline, r
                time.sleep(0.2)

        rate = measure()
        assert 6 <= rate <= 11, f"dirty rate {rate} MiB/s with dirty=8"
        assert udp_request(client, 7000, b"dirty 24") == b"ok dirty=24"
        g.wait_for(r"^COLO-GUEST DIRTY rate=24MiB/s$", timeout=10)
        time.sleep(0.5)
        rate = measure()
        assert 20 <= rate <= 30, f"dirty rate {rate} MiB/s with dirty 24"
        assert udp_request(client, 7000, b"dirty 0") == b"ok dirty=0"
        assert udp_request(client, 7000, b"bogus") == b"error unknown command"
        power_off(client, g)


@pytest.mark.parametrize("case,args,error", [
    ("no-ip", ["--cmdline", "dirty=1"], r"no ip= on the command line"),
    ("bad-ip", ["--cmdline", "ip=10.77.0.300/24"], r"bad ip= address '10\.77\.0\.300/24'"),
    ("bad-prefix", ["--cmdline", "ip=10.77.0.2/33"], r"bad ip= prefix"),
    ("bad-dirty", ["--cmdline", "ip=10.77.0.2 dirty=lots"], r"bad dirty= value 'lots'"),
    ("no-disk", None, r"no virtio-blk disk"),
])
def test_bad_command_line_is_a_clear_error(case, args, error, tmp_path, disk):
    """A clear console error, then power-off (QEMU exits): never a hang."""
    guest_args = args or []
    with qemu.Guest(disk=None if case == "no-disk" else disk, args=guest_args,
                    workdir=tmp_path) as g:
        g.wait_for(r"^COLO-GUEST ERROR: " + error, timeout=60)
        g.wait_for(r"^COLO-GUEST POWEROFF$", timeout=10)
        assert g.wait_exit(timeout=20) == 0
        assert "COLO-GUEST READY" not in g.text()


def test_seabios_boot(client, disk, tmp_path):
    """SeaBIOS (QEMU's default firmware) assigns BARs and IRQ lines itself, as
    vmmd will: the guest must run unchanged there too (just slower to boot)."""
    t0 = time.monotonic()
    with qemu.Guest(netns=client, disk=disk, workdir=tmp_path, args=["--bios", "seabios"]) as g:
        g.wait_for(r"^COLO-GUEST READY ", timeout=90)
        boot_s = time.monotonic() - t0
        assert "BAR0 unassigned" not in g.text(), "SeaBIOS left a virtio BAR0 unassigned?"
        assert http_get(client) == (200, 1)
        power_off(client, g)
    print(f"SeaBIOS boot to READY: {boot_s:.2f}s")


def test_http_keep_alive_connection(client, disk, tmp_path):
    """One HTTP/1.1 connection, 50 requests one after another: counts 1..50 in
    order, the connection stays open, and the disk holds 50 after power-off."""
    with qemu.Guest(netns=client, disk=disk, workdir=tmp_path) as g:
        g.wait_for(r"^COLO-GUEST READY ", timeout=60)
        conn = HttpConnection(client)
        try:
            t0 = time.monotonic()
            counts = []
            for _ in range(50):
                conn.send(conn.format())
                status, headers, body = conn.reply()
                assert (status, headers[":status-line"]) == (200, "HTTP/1.1 200 OK")
                assert headers["connection"] == "keep-alive"
                counts.append(int(headers["x-colo-count"]))
            elapsed = time.monotonic() - t0
            assert counts == list(range(1, 51))
            assert conn.buf == b""
        finally:
            conn.close()
        print(f"50 keep-alive requests on one connection: {elapsed:.2f}s")
        power_off(client, g)
    assert disk_counter(disk) == 50


def test_http_pipelining_close_and_bad_requests(client, disk, tmp_path):
    """Pipelined requests are answered in order, none lost or doubled; HTTP/1.0
    still gets one reply and a close; bad requests get 400 and a close without
    counting; beyond 16 connections a clear 503 busy."""
    with qemu.Guest(netns=client, disk=disk, workdir=tmp_path) as g:
        g.wait_for(r"^COLO-GUEST READY ", timeout=60)

        # A burst of 100 pipelined requests in one write (more than the guest's
        # 2 KiB head buffer, so part of it waits in lwIP), two of them with a
        # body to skip, then one with "Connection: close". The client reads
        # nothing until the guest has stalled on its full send buffer (the
        # client's receive window is small), then reads all 101 replies.
        conn = HttpConnection(client, rcvbuf=4096)
        try:
            post = b"POST /x HTTP/1.1\r\nHost: guest\r\nContent-Length: 5\r\n\r\nGET /"
            burst = b"".join(post if i in (7, 70) else conn.format(f"/{i}") for i in range(100))
            conn.send(burst + conn.format(headers="Connection: close\r\n"))
            last = -1
            while (n := int(udp_request(client, 7000, b"status").split()[0][6:])) != last:
                last = n
                time.sleep(1)
            assert 0 < last < 101, f"the guest did not wait for the client: count={last}"
            print(f"pipelined burst: the guest waited for the client at count={last}")
            assert [conn.count() for _ in range(101)] == list(range(1, 102))
            assert conn.closed_by_guest()
            total = 101
        finally:
            conn.close()

        # A reply does not wait for the request's body, which is then skipped.
        conn = HttpConnection(client)
        try:
            conn.send(b"POST / HTTP/1.1\r\nHost: guest\r\nContent-Length: 10\r\n\r\n12345")
            assert conn.count() == total + 1
            conn.send(b"67890" + conn.format())
            assert conn.count() == total + 2
            total += 2
        finally:
            conn.close()

        # HTTP/1.0 is unchanged: one reply, "Connection: close", then EOF
        # (http_get reads to EOF) ...
        assert http_get(client) == (200, total + 1)
        total += 1
        # ... unless it asks for keep-alive.
        conn = HttpConnection(client)
        try:
            ka = conn.format(version="1.0", headers="Connection: keep-alive\r\n")
            conn.send(ka)
            status, headers, _ = conn.reply()
            assert headers[":status-line"] == "HTTP/1.0 200 OK"
            assert headers["connection"] == "keep-alive"
            assert conn.request(ka) == total + 2
            total += 2
        finally:
            conn.close()

        # Bad requests: 400, closed, nothing counted.
        bad = [b"BLAH\r\n\r\n", b"GET / HTTP/2.0\r\n\r\n", b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
               b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
               b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
               b"GET / HTTP/1.1\r\nX: " + b"a" * 3000, b"\x00\xff\r\n\r\n"]
        for req in bad:
            conn = HttpConnection(client)
            try:
                conn.send(req)
                status, headers, body = conn.reply()
                assert status == 400 and "error=bad-request" in body, (req, status, body)
                assert headers["connection"] == "close"
                assert conn.closed_by_guest()
            finally:
                conn.close()

        # 16 connections at a time; the 17th is refused clearly, and once one
        # closes there is room again.
        conns = []
        try:
            for _ in range(16):
                conns.append(HttpConnection(client))
                total += 1
                assert conns[-1].request() == total
            extra = HttpConnection(client)
            try:
                status, headers, body = extra.reply()
                assert status == 503 and "error=busy" in body, (status, body)
                assert extra.closed_by_guest()
            finally:
                extra.close()
            g.wait_for(r"^COLO-GUEST WARN http: 16 connections open, refused one$", timeout=10)
            conns.pop().close()
            deadline = time.monotonic() + 10
            while True:             # the guest sees that FIN a moment later
                again = HttpConnection(client)
                try:
                    again.send(again.format())
                    status, headers, _ = again.reply()
                finally:
                    again.close()
                if status == 200:
                    total += 1
                    assert int(headers["x-colo-count"]) == total
                    break
                assert status == 503 and time.monotonic() < deadline, status
            total += 1
            assert conns[0].request() == total, "an older connection stopped working"
        finally:
            for c in conns:
                c.close()

        assert udp_request(client, 7000, b"status").startswith(f"count={total} ".encode())
        power_off(client, g)
    assert disk_counter(disk) == total
