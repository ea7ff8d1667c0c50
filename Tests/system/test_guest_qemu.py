"""The test guest (guest/, issue 3) under qemu-system-x86_64 -enable-kvm.

A client network namespace holds the tap QEMU's virtio-net-pci uses; from
there the tests ping the guest and use its UDP echo, TCP echo and HTTP
services. The HTTP request counter lives on a raw virtio-blk image that the
tests read on the host after the guest has powered itself off (UDP control
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


def power_off(ns: netns.NetNS, guest: qemu.Guest) -> None:
    assert udp_request(ns, 7000, b"poweroff") == b"ok poweroff"
    guest.wait_for(r"^COLO-GUEST POWEROFF$", timeout=10)
    assert guest.wait_exit(timeout=20) == 0, "QEMU did not exit on the guest's power-off"


@pytest.fixture
def client():
    with netns.NetNS(subnet=3) as ns:
        yield ns
    assert not [n for n in netns.leftover_namespaces() if n == ns.name]


@pytest.fixture
def disk(tmp_path):
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
    return p


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
