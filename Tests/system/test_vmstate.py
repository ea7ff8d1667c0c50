"""vmmd pause/resume, dirty log, state save/load and RAM hand-off (issue 5),
with the real daemons under their seccomp filters and the test guest.

The guest RAM of one vmmd is copied into another through the RAM memfds
(as checkpointd will), the state blob goes with it, and the guest carries on
there: its console keeps ticking, its TCP echo answers, its time never goes
backwards or stalls. Dirty-log syncs must name every page that changed
between them (guest writes and device writes: virtqueue rings, received
frames, the block service's READ buffers), so that copying only those pages
makes the target's RAM hash equal the source's. Bad blobs are refused and
leave the target as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import struct
import threading
import time
import zlib

import pytest

import colo_proto
import netns
import vmm
from test_guest_qemu import udp_request

_missing = vmm.missing_prerequisite()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"vmstate tests: {_missing}")

VM = colo_proto.vmmd
ERRORS = colo_proto.common
PAGE = 4096
MEMORY_MIB = 64
TICK = re.compile(r"^COLO-GUEST TICK s=(\d+) ", re.M)


@pytest.fixture
def client():
    with netns.client_namespace(subnet=5) as ns:
        yield ns


def copy_ram(source: int, target: int, size: int, bitmap: bytes | None = None) -> int:
    """Copies the pages set in `bitmap` (all populated ones when None) from
    one RAM memfd to the other in the kernel; returns pages copied."""
    if bitmap is None:
        ranges, offset = [], 0
        while offset < size:
            try:
                start = os.lseek(source, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(source, start, os.SEEK_HOLE)
            ranges.append((start, min(end, size)))
            offset = end
    else:
        ranges = list(dirty_runs(bitmap, size // PAGE))
    pages = 0
    for start, end in ranges:
        done = start
        while done < end:
            done += os.copy_file_range(source, target, end - done, done, done)
        pages += (end - start) // PAGE
    return pages


def dirty_runs(bitmap: bytes, pages: int):
    """(start, end) byte ranges of consecutive set bits."""
    words = struct.unpack(f"<{len(bitmap) // 8}Q", bitmap)
    run = None
    for index, word in enumerate(words):
        if word == 0 and run is None:
            continue
        for bit in range(64):
            page = index * 64 + bit
            if page >= pages:
                break
            if word >> bit & 1:
                if run is None:
                    run = page
            elif run is not None:
                yield run * PAGE, page * PAGE
                run = None
    if run is not None:
        yield run * PAGE, pages * PAGE


def page_set(bitmap: bytes, pages: int) -> set[int]:
    words = struct.unpack(f"<{len(bitmap) // 8}Q", bitmap)
    return {i * 64 + b for i, w in enumerate(words) if w for b in range(64) if w >> b & 1 and i * 64 + b < pages}


def ram_hash(fd: int, size: int) -> str:
    h = hashlib.sha256()
    for offset in range(0, size, 8 << 20):
        h.update(os.pread(fd, min(8 << 20, size - offset), offset))
    return h.hexdigest()


def echo(ns, payload: bytes, timeout: float = 10.0) -> None:
    s = ns.connect((ns.guest_ip, 7), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            assert chunk, "guest closed the echo connection"
            got += chunk
        assert got == payload
    finally:
        s.close()


class Traffic:
    """TCP echo round trips against the guest in a thread, through every
    migration; counts successes and remembers the longest wait."""

    def __init__(self, ns):
        self.ns = ns
        self.ok = 0
        self.errors: list[str] = []
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                echo(self.ns, f"traffic {i}\n".encode() * 50, timeout=15)
                self.ok += 1
            except (OSError, AssertionError) as e:
                self.errors.append(repr(e))
            self.longest = max(self.longest, time.monotonic() - t0)
            i += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Host:
    """One vmmd with the VM's disk backend and console of its current VM."""

    def __init__(self):
        self.vmmd = vmm.Vmmd()
        self.backend: vmm.BlockBackend | None = None
        self.console: vmm.Console | None = None
        self.ticks: list[int] = []

    def prepare(self, disk, ns, forwarder: vmm.Forwarder) -> None:
        self.backend = vmm.BlockBackend(disk)
        reply = self.vmmd.create(cmdline=f"ip={ns.guest_ip}/24 dirty=8", memory_mib=MEMORY_MIB,
                                 net=forwarder.new_socket(), block=self.backend.vmm_end, incoming=True)
        assert self.vmmd.expect(reply, "vm_status").state == VM.VM_STATE_PAUSED

    def finish(self) -> None:
        """Stops this host's VM and keeps the ticks its console showed."""
        self.vmmd.stop()
        if self.console is not None:
            self.ticks += [int(s) for s in TICK.findall(self.console.text())]
            self.console.close()
            self.vmmd._consoles.remove(self.console)
            self.console = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.vmmd.close()


def migrate(source: Host, target: Host, forwarder: vmm.Forwarder, disk, ns) -> dict[str, float]:
    """Pause on `source`, RAM and state into a fresh VM on `target`, resume there."""
    target.prepare(disk, ns, forwarder)
    t0 = time.monotonic()
    paused = source.vmmd.pause()
    blob = source.vmmd.save_state()
    src, dst = source.vmmd.guest_memory(), target.vmmd.guest_memory()
    try:
        copy_ram(src, dst, MEMORY_MIB << 20)
    finally:
        os.close(src)
        os.close(dst)
    target.vmmd.expect(target.vmmd.load_state(blob), "vm_state_loaded")
    forwarder.switch()
    target.console = target.vmmd.console()
    target.vmmd.resume()
    downtime = time.monotonic() - t0
    source.finish()
    return {"downtime": downtime, "pause_us": paused.paused_us}


def boot(host: Host, disk, ns, forwarder: vmm.Forwarder, dirty: int = 8) -> None:
    host.backend = vmm.BlockBackend(disk)
    reply = host.vmmd.create(cmdline=f"ip={ns.guest_ip}/24 dirty={dirty}", memory_mib=MEMORY_MIB,
                             net=forwarder.vmm_end, block=host.backend.vmm_end)
    host.vmmd.expect(reply, "vm_status")
    host.console = host.vmmd.console()
    host.console.wait_for(r"^COLO-GUEST READY ", timeout=60, alive=host.vmmd.alive)


def test_twenty_round_trips_between_two_vmmds(client, disk):
    """The guest dirties memory and serves TCP while it moves A -> B -> A ...
    forty times: ticks keep counting (never back, no gap over 1 s beyond
    their period), TCP echo answers throughout, guest uptime only grows."""
    a, b = Host(), Host()
    traffic = None
    try:
        with vmm.Forwarder(client, switchable=True) as forwarder:
            boot(a, disk, client, forwarder)
            assert colo_proto.status(a.vmmd.sock).sandbox.seccomp_filter_installed
            echo(client, b"before\n")
            traffic = Traffic(client)
            uptimes = [int(re.search(rb"uptime_ms=(\d+)", udp_request(client, 7000, b"status")).group(1))]
            downtimes = []
            started = time.monotonic()
            for hop in range(40):
                source, target = (a, b) if hop % 2 == 0 else (b, a)
                downtimes.append(migrate(source, target, forwarder, disk, client)["downtime"])
                if hop % 8 == 7:
                    status = udp_request(client, 7000, b"status", timeout=10)
                    uptimes.append(int(re.search(rb"uptime_ms=(\d+)", status).group(1)))
            elapsed = time.monotonic() - started
            current = a  # forty hops end where they began
            current.console.wait_for(r"^COLO-GUEST TICK ", timeout=10, alive=current.vmmd.alive)
            time.sleep(1.5)
            traffic.stop()
            echo(client, b"after\n" * 1000)
            status = udp_request(client, 7000, b"status")
            uptimes.append(int(re.search(rb"uptime_ms=(\d+)", status).group(1)))
            current.finish()
        ticks = a.ticks + b.ticks
        print(f"40 migrations in {elapsed:.1f}s; downtime median {sorted(downtimes)[20] * 1000:.0f} ms, "
              f"max {max(downtimes) * 1000:.0f} ms; traffic ok={traffic.ok} longest={traffic.longest:.2f}s "
              f"errors={traffic.errors[:3]}; uptimes {uptimes}")
        assert uptimes == sorted(uptimes) and uptimes[-1] > uptimes[0], uptimes
        assert not traffic.errors and traffic.ok >= 20, (traffic.ok, traffic.errors)
        # Every console showed a run of ticks; across hosts in hop order they
        # never go back and never skip more than one second.
        seen = sorted(set(ticks))
        assert seen[-1] - seen[0] >= 3, seen
        assert all(n2 - n1 <= 2 for n1, n2 in zip(seen, seen[1:])), seen
    finally:
        if traffic is not None:
            traffic.stop()
        a.close()
        b.close()


def test_dirty_log_names_every_changed_page_and_restored_ram_matches(client, disk):
    """From the first sync on, RAM copied to a second vmmd once in full and
    then only as the dirty bitmaps say equals the source's RAM, while the
    guest dirties memory, boots its disk (the block service's READ lands
    through the memfd) and serves TCP; then the state follows and the guest
    runs on there."""
    a, b = Host(), Host()
    size = MEMORY_MIB << 20
    pages = size // PAGE
    try:
        with vmm.Forwarder(client, switchable=True) as forwarder:
            a.backend = vmm.BlockBackend(disk)
            reply = a.vmmd.create(cmdline=f"ip={client.guest_ip}/24 dirty=16", memory_mib=MEMORY_MIB,
                                  net=forwarder.vmm_end, block=a.backend.vmm_end)
            a.vmmd.expect(reply, "vm_status")
            a.console = a.vmmd.console()
            b.prepare(disk, client, forwarder)
            src, dst = a.vmmd.guest_memory(), b.vmmd.guest_memory()
            try:
                # First sync while booting: logging starts, every page reported.
                a.vmmd.pause()
                first, bitmap = a.vmmd.sync_dirty_log()
                assert first.all_pages and first.dirty_pages == pages == first.page_count
                assert len(bitmap) == (pages + 63) // 64 * 8 and os.fstat(src).st_size == size
                copy_ram(src, dst, size)
                before = os.pread(src, size, 0)
                a.vmmd.resume()
                device_pages = 0
                for round_ in range(3):
                    if round_ == 0:
                        a.console.wait_for(r"^COLO-GUEST READY ", timeout=60, alive=a.vmmd.alive)
                    echo(client, bytes(range(256)) * 64)
                    time.sleep(0.3)
                    a.vmmd.pause()
                    log, bitmap = a.vmmd.sync_dirty_log()
                    assert not log.all_pages and log.dirty_pages > 0
                    now = os.pread(src, size, 0)
                    changed = {p for p in range(pages)
                               if before[p * PAGE:(p + 1) * PAGE] != now[p * PAGE:(p + 1) * PAGE]}
                    marked = page_set(bitmap, pages)
                    assert changed and not changed - marked, sorted(changed - marked)[:20]
                    assert len(marked) == log.dirty_pages
                    device_pages += log.device_pages
                    copy_ram(src, dst, size, bitmap)
                    assert ram_hash(dst, size) == ram_hash(src, size)
                    before = now
                    a.vmmd.resume()
                print(f"dirty pages per round ~{log.dirty_pages}, device-written pages {device_pages}")
                assert device_pages > 0
                # The checkpoint: state follows the RAM, the guest continues on B.
                a.vmmd.pause()
                _, bitmap = a.vmmd.sync_dirty_log()
                copy_ram(src, dst, size, bitmap)
                assert ram_hash(dst, size) == ram_hash(src, size)
            finally:
                os.close(src)
                os.close(dst)
            blob = a.vmmd.save_state()
            b.vmmd.expect(b.vmmd.load_state(blob), "vm_state_loaded")
            forwarder.switch()
            b.console = b.vmmd.console()
            b.vmmd.resume()
            b.console.wait_for(r"^COLO-GUEST TICK ", timeout=10, alive=b.vmmd.alive)
            echo(client, b"on the second vmmd\n")
            # Back into A's paused VM, which ran before: RAM rewritten through
            # its memfd, then the state loaded over its own (a secondary's
            # checkpoint). Its frame socket is gone (the tap moved on), so
            # the console shows it running.
            b.vmmd.pause()
            blob = b.vmmd.save_state()
            last_tick = max(int(n) for n in TICK.findall(b.console.text()))
            src, dst = b.vmmd.guest_memory(), a.vmmd.guest_memory()
            try:
                copy_ram(src, dst, size)
            finally:
                os.close(src)
                os.close(dst)
            b.finish()
            a.vmmd.expect(a.vmmd.load_state(blob), "vm_state_loaded")
            mark = len(a.console.text())
            a.vmmd.resume()
            tick = a.console.wait_for(r"^COLO-GUEST TICK s=(\d+) ", timeout=10, after=mark, alive=a.vmmd.alive)
            assert int(tick.group(1)) in (last_tick + 1, last_tick + 2), (last_tick, tick.group(0))
            a.finish()
    finally:
        a.close()
        b.close()


def test_snapshot_restore_snapshot_equal_and_bad_blobs_refused(client, disk):
    """Save, load into a fresh vmmd, save again without running: equal
    bytes. Wrong magic, version, checksum, truncation, trailing bytes, and a
    state for another RAM size are refused with INVALID_ARGUMENT and leave
    the target's state as it was; load/save/resume refused when not paused."""
    a, b, c = Host(), Host(), Host()
    try:
        with vmm.Forwarder(client, switchable=True) as forwarder:
            boot(a, disk, client, forwarder)
            assert a.vmmd.call(vm_state_save=None).error.code == ERRORS.ERROR_CODE_FAILED_PRECONDITION
            assert a.vmmd.load_state(b"").error.code == ERRORS.ERROR_CODE_FAILED_PRECONDITION
            assert a.vmmd.call(vm_resume=None).error.code == ERRORS.ERROR_CODE_FAILED_PRECONDITION
            a.vmmd.pause()
            assert a.vmmd.status().state == VM.VM_STATE_PAUSED
            assert a.vmmd.pause().paused_us == 0          # already paused
            first = a.vmmd.save_state()
            assert first == a.vmmd.save_state()
            assert first[:8] == b"COLOVMST" and struct.unpack_from("<IIQ", first, 8) == (
                1, zlib.crc32(first[24:]), len(first) - 24)

            b.prepare(disk, client, forwarder)
            assert b.vmmd.call(vm_resume=None).error.code == ERRORS.ERROR_CODE_FAILED_PRECONDITION
            assert b.vmmd.call(vm_state_save=None).error.code == ERRORS.ERROR_CODE_FAILED_PRECONDITION
            src, dst = a.vmmd.guest_memory(), b.vmmd.guest_memory()
            try:
                copy_ram(src, dst, MEMORY_MIB << 20)
            finally:
                os.close(src)
                os.close(dst)
            b.vmmd.expect(b.vmmd.load_state(first), "vm_state_loaded")
            second = b.vmmd.save_state()
            assert second == first

            bad = {
                "magic": b"X" + first[1:],
                "version": first[:8] + struct.pack("<I", 2) + first[12:],
                "checksum": first[:-1] + bytes([first[-1] ^ 1]),
                "truncated": first[:-100],
                "header only": first[:20],
                "trailing": first + b"\0",
                "empty": b"",
            }
            for name, blob in bad.items():
                reply = b.vmmd.load_state(blob)
                assert reply.error.code == ERRORS.ERROR_CODE_INVALID_ARGUMENT, (name, reply)
                assert b.vmmd.save_state() == first, name
            reply = b.vmmd.call(vm_state_load=colo_proto.vmstate.VmStateLoadRequest())
            assert reply.error.code == ERRORS.ERROR_CODE_MISSING_FD, reply

            # A VM of another RAM size refuses the state whole.
            c.backend = vmm.BlockBackend(disk)
            frames, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            reply = c.vmmd.create(cmdline="ip=10.0.2.15/24", memory_mib=MEMORY_MIB * 2,
                                  block=c.backend.vmm_end, net=frames, incoming=True)
            frames.close()
            peer.close()
            c.vmmd.expect(reply, "vm_status")
            reply = c.vmmd.load_state(first)
            assert reply.error.code == ERRORS.ERROR_CODE_INVALID_ARGUMENT and "RAM" in reply.error.message, reply

            forwarder.switch()
            b.console = b.vmmd.console()
            b.vmmd.resume()
            a.finish()
            b.console.wait_for(r"^COLO-GUEST TICK ", timeout=10, alive=b.vmmd.alive)
            echo(client, b"restored\n")
            b.finish()
    finally:
        for host in (a, b, c):
            host.close()


def test_guest_memory_only_for_allowed_users(client, disk):
    """--memory-user names who may have the RAM memfd: a peer allowed on the
    control socket but not named is refused; the memfd handed out is
    size-sealed."""
    frames, _peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with vmm.Vmmd(extra_args=("--memory-user", "65534")) as daemon, vmm.BlockBackend(disk) as backend:
        daemon.expect(daemon.create(memory_mib=MEMORY_MIB, block=backend.vmm_end, net=frames), "vm_status")
        reply = daemon.call(vm_guest_memory=None)
        assert reply.error.code == ERRORS.ERROR_CODE_PERMISSION_DENIED, reply
        daemon.stop()
    with vmm.Vmmd() as daemon, vmm.BlockBackend(disk) as backend:
        daemon.expect(daemon.create(memory_mib=MEMORY_MIB, block=backend.vmm_end, net=frames), "vm_status")
        fd = daemon.guest_memory()
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SHRINK
            with pytest.raises(OSError):
                os.ftruncate(fd, 4096)
        finally:
            os.close(fd)
        daemon.stop()
    frames.close()
    _peer.close()
