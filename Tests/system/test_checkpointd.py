"""Two checkpointd processes (socket-activated, sandboxed) replicating guest
RAM over loopback TCP, driven by checkpoint_harness playing vmmd and
supervisord: checkpoints with verify mode, the live-migration rounds,
failures in the middle of a checkpoint, and bad input from a primary."""

from __future__ import annotations

import os
import random
import shutil
import signal
import struct
import time

import pytest

from checkpoint_harness import (KEY, PAGE, Checkpointd, CheckpointPair, FakePrimary, GuestRAM, checkpointd_pb2,
                                control_frame, page_header, runtime_dir, sealed_memfd)

pytestmark = [
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]

PAGES = 4096  # 16 MiB of guest RAM


@pytest.fixture
def make_pair():
    pairs = []

    def make(**options):
        pair = CheckpointPair(PAGES, **options)
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.close()


def random_page(rng: random.Random) -> bytes:
    return rng.randbytes(64) * (PAGE // 64)


def test_hundred_checkpoints_verify_identical_ram(make_pair):
    pair = make_pair(channels=3, verify=True)
    for reply in pair.attached:
        assert reply.WhichOneof("body") == "checkpoint_attached", reply
        assert reply.checkpoint_attached.guest_memory_bytes == PAGES * PAGE
    rng = random.Random(6)
    for page in range(0, PAGES, 7):
        pair.primary_ram.write(page, random_page(rng))
    pair.initial_sync()
    assert pair.secondary_ram.contents() == pair.primary_ram.contents()

    for number in range(2, 102):
        for _ in range(rng.randrange(0, 120)):
            page = rng.randrange(PAGES)
            # Some dirtied pages become zero pages: flagged, not sent, and
            # still copied into the SVM's RAM.
            pair.primary_ram.write(page, bytes(PAGE) if rng.random() < 0.2 else random_page(rng))
        # The SVM writes pages of its own; the commit must undo them.
        for _ in range(rng.randrange(0, 10)):
            pair.secondary_ram.write(rng.randrange(PAGES), random_page(rng))
        if number % 3 == 0:
            # Pages moved between checkpoints, while the "guest" runs on.
            assert pair.send_round().WhichOneof("body") == "checkpoint_send_pages"
            for _ in range(rng.randrange(0, 30)):
                pair.primary_ram.write(rng.randrange(PAGES), random_page(rng))
        state = f"device state {number}".encode()
        taken, committed = pair.checkpoint(state)
        assert taken.WhichOneof("body") == "checkpoint_taken", taken
        assert committed.WhichOneof("body") == "checkpoint_committed", committed
        assert taken.checkpoint_taken.sequence == committed.checkpoint_committed.sequence == number
        verification = committed.checkpoint_committed.verification
        assert verification.checked and verification.identical, verification
        assert verification.chunks_compared == PAGES * PAGE >> 20
        assert taken.checkpoint_taken.verification.identical
        assert pair.device_state == state
        assert pair.secondary_ram.contents() == pair.primary_ram.contents(), f"checkpoint {number}"

    status = pair.secondary.status()
    assert status.role == checkpointd_pb2.CHECKPOINT_ROLE_SECONDARY and status.link == "connected"
    assert status.committed_sequence == 101 and status.commits_verified == 101 and status.verify_mismatches == 0
    primary = pair.primary.status()
    assert primary.committed_sequence == 101 and primary.progress.dirty_pages_left == 0
    assert primary.progress.zero_pages > 0


def test_live_migration_rounds_report_progress(make_pair):
    pair = make_pair(channels=2)
    rng = random.Random(1)
    for page in range(PAGES):
        pair.primary_ram.write(page, random_page(rng))
    reply = pair.primary.call(checkpoint_send_pages=checkpointd_pb2.CheckpointSendPages(all_pages=True))
    assert reply.checkpoint_send_pages.pages_queued == PAGES and reply.checkpoint_send_pages.round == 1
    pair.primary_ram.dirty = set()
    rounds = 1
    while True:
        while pair.primary.status().progress.dirty_pages_left:
            time.sleep(0.005)
        progress = pair.primary.status().progress
        if progress.stop_and_copy_advised:
            break
        # The guest dirties less each round, as a converging migration does.
        for _ in range(max(1, 400 >> rounds)):
            pair.primary_ram.write(rng.randrange(PAGES), random_page(rng))
        rounds += 1
        assert pair.send_round().checkpoint_send_pages.round == rounds
        assert rounds < 30
    assert progress.bytes_transferred >= PAGES * PAGE and progress.bytes_per_second > 0
    assert progress.rounds == rounds >= 2
    taken, committed = pair.checkpoint()
    assert committed.checkpoint_committed.sequence == 1
    assert pair.secondary_ram.contents() == pair.primary_ram.contents()
    assert pair.secondary.status().progress.pages_transferred >= PAGES


def write_everything(pair: CheckpointPair, seed: int) -> None:
    rng = random.Random(seed)
    for page in range(PAGES):
        pair.primary_ram.write(page, random_page(rng))


def test_cut_page_channel_mid_checkpoint_keeps_last_commit(make_pair):
    pair = make_pair(channels=2, relayed={1}, timeout_ms=1500)
    pair.initial_sync()
    committed_ram = pair.secondary_ram.contents()
    write_everything(pair, 2)
    relay = pair.relays[1]
    relay.limit(3 << 20)  # 3 MiB of this checkpoint's 8 MiB on channel 1, then the cut
    pair.start_checkpoint()
    assert relay.stopped.wait(10)
    relay.cut()
    taken, committed = pair.finish_checkpoint()
    assert taken.error.code == committed.error.code == 8  # ERROR_CODE_UNAVAILABLE
    assert "checkpoint-ram-1" in committed.error.message, committed.error.message
    assert pair.secondary_ram.contents() == committed_ram
    status = pair.secondary.status()
    assert status.link == "failed" and status.committed_sequence == 1 and "checkpoint-ram-1" in status.last_error


def test_killing_primary_mid_checkpoint_keeps_last_commit(make_pair):
    pair = make_pair(channels=2, relayed={0}, timeout_ms=1500)
    pair.initial_sync()
    committed_ram = pair.secondary_ram.contents()
    write_everything(pair, 3)
    relay = pair.relays[0]
    relay.limit(2 << 20)  # the checkpoint stalls 2 MiB into channel 0
    pair.start_checkpoint()
    assert relay.stopped.wait(10)
    assert pair.secondary.status().progress.pages_transferred > PAGES  # part of it has arrived
    os.kill(pair.primary.daemon.proc.pid, signal.SIGKILL)
    committed, fds = pair.secondary.receive()
    assert not fds
    assert committed.WhichOneof("body") == "error", committed
    assert pair.secondary_ram.contents() == committed_ram
    status = pair.secondary.status()
    assert status.link == "failed" and status.committed_sequence == 1
    assert "closed" in status.last_error, status.last_error


def test_receive_then_refuse_leaves_ram_at_last_commit(make_pair):
    """CheckpointReceive hands over the device state with the SVM's RAM
    untouched; CheckpointRefuse (vmmd refused that state) fails the
    primary's take with the reason and keeps the last commit."""
    pair = make_pair(channels=2)
    pair.initial_sync()
    committed_ram = pair.secondary_ram.contents()
    write_everything(pair, 4)
    primary_bitmap = pair.primary_ram.take_dirty_bitmap()
    state = sealed_memfd("device-state", 0, b"a state vmmd refuses")
    take = checkpointd_pb2.CheckpointTake()
    take.dirty_bitmap.index = 0
    take.device_state.index = 1
    pair.primary.send([primary_bitmap, state], checkpoint_take=take)
    os.close(primary_bitmap)
    os.close(state)
    for _ in range(2):  # asking twice returns the same checkpoint
        reply, fds = pair.secondary.call_with_fds(checkpoint_receive=None)
        assert reply.WhichOneof("body") == "checkpoint_received", reply
        assert reply.checkpoint_received.sequence == 2 and len(fds) == 1
        assert reply.checkpoint_received.device_state_bytes == len(b"a state vmmd refuses")
        assert os.pread(fds[0], 100, 0) == b"a state vmmd refuses"
        os.close(fds[0])
        assert pair.secondary_ram.contents() == committed_ram
    reply = pair.secondary.call(checkpoint_refuse=checkpointd_pb2.CheckpointRefuse(reason="bad checksum"))
    assert reply.WhichOneof("body") == "checkpoint_refused" and reply.checkpoint_refused.sequence == 2, reply
    taken, _ = pair.primary.receive()
    assert taken.WhichOneof("body") == "error" and "bad checksum" in taken.error.message, taken
    assert pair.secondary_ram.contents() == committed_ram
    status = pair.secondary.status()
    assert status.link == "failed" and status.committed_sequence == 1 and "bad checksum" in status.last_error
    reply = pair.secondary.call(checkpoint_refuse=checkpointd_pb2.CheckpointRefuse(reason="again"))
    assert reply.error.code == 8, reply  # ERROR_CODE_UNAVAILABLE: the pairing has ended


@pytest.fixture
def lone_secondary():
    """A secondary checkpointd with a fake primary to pair with; its RAM
    holds a pattern that must survive every bad input untouched."""
    directory = runtime_dir("ckpt-bad")
    key = directory / "peer.key"
    key.write_bytes(KEY)
    secondary = Checkpointd("secondary", key, directory)
    ram = GuestRAM(256, "svm-ram")
    for page in range(256):
        ram.map[page * PAGE:(page + 1) * PAGE] = bytes([page % 251 + 1]) * PAGE
    pattern = ram.contents()
    yield secondary, ram, pattern
    secondary.close()
    ram.close()
    shutil.rmtree(directory, ignore_errors=True)


def commit_refused(secondary, ram) -> str:
    fd = ram.take_dirty_bitmap()
    request = checkpointd_pb2.CheckpointCommit()
    request.guest_dirty_bitmap.index = 0
    reply = secondary.call([fd], checkpoint_commit=request)
    os.close(fd)
    assert reply.WhichOneof("body") == "error", reply
    return reply.error.message


def wait_failed(secondary) -> str:
    deadline = time.monotonic() + 5
    while (status := secondary.status()).link != "failed":
        assert time.monotonic() < deadline, status
        time.sleep(0.01)
    return status.last_error


def test_wrong_key_is_refused_before_any_page(lone_secondary):
    secondary, ram, pattern = lone_secondary
    fake = FakePrimary(secondary, ram, key=b"not the pair's key, 32 bytes...!")
    assert isinstance(fake.error, PermissionError)
    assert fake.attached.error.code == 4, fake.attached  # ERROR_CODE_PERMISSION_DENIED
    assert "different key" in fake.attached.error.message
    assert secondary.status().link == "detached"
    fake.close()
    assert ram.contents() == pattern


BAD_INPUT = {
    "garbage frame": (lambda: os.urandom(32), "garbage on the channel"),
    "page outside RAM": (lambda: page_header(1, 1, 1) + struct.pack("<Q", 256) + bytes(PAGE),
                         "page 256 is outside RAM (256 pages)"),
    "truncated batch": (lambda: page_header(1, 2, 1) + struct.pack("<QQ", 3, 4) + bytes(PAGE + 100),
                        "closed in the middle of a frame"),
    "wrong sequence": (lambda: page_header(1, 1, 7) + struct.pack("<Q", 3) + bytes(PAGE),
                       "frame for checkpoint 7 where checkpoint 1 was expected"),
    "end count lies": (lambda: page_header(2, 0, 1, pages=5), "channel end counts 5 pages"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_page_frames_are_refused_and_ram_untouched(lone_secondary, case):
    secondary, ram, pattern = lone_secondary
    frame, expected = BAD_INPUT[case]
    fake = FakePrimary(secondary, ram)
    assert fake.error is None and fake.attached.WhichOneof("body") == "checkpoint_attached", fake.attached
    fake.pages[0].sendall(frame())
    if case == "truncated batch":
        fake.pages[0].shutdown(2)
    error = wait_failed(secondary)
    assert expected in error and "checkpoint-ram-0" in error, error
    assert expected in commit_refused(secondary, ram)
    # The fake primary is told why, on the control channel.
    fake.control.settimeout(5)
    assert expected.encode() in fake.control.recv(4096)
    fake.close()
    assert ram.contents() == pattern


def test_bad_control_frames_and_requests_are_refused(lone_secondary):
    secondary, ram, pattern = lone_secondary
    fake = FakePrimary(secondary, ram)
    fake.control.sendall(control_frame(2, 1, b"state") + control_frame(2, 1, b"again"))
    assert "a second device state for checkpoint 1" in wait_failed(secondary)
    fake.close()

    # Requests that do not fit: bitmap of the wrong size, no fds, wrong role.
    fake = FakePrimary(secondary, ram)
    bitmap = sealed_memfd("short-bitmap", 0, bytes(8))
    request = checkpointd_pb2.CheckpointCommit()
    request.guest_dirty_bitmap.index = 0
    reply = secondary.call([bitmap], checkpoint_commit=request)
    os.close(bitmap)
    assert reply.error.code == 5 and "needs exactly 32" in reply.error.message, reply
    assert secondary.call(checkpoint_commit=request).error.code == 7  # MISSING_FD
    take = checkpointd_pb2.CheckpointTake()
    assert "not paired as primary" in secondary.call(checkpoint_take=take).error.message
    assert secondary.status().link == "connected"  # a refused request does not end the pairing
    fake.close()
    assert ram.contents() == pattern
