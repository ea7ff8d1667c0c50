"""A harness that plays vmmd and supervisord around two checkpointd processes.

vmmd's part: ``GuestRAM`` is a sealed memfd used as guest RAM, written by
the test between checkpoints, with the matching dirty bitmaps
(Proto/colo/control/checkpointd.proto: 1 bit per 4 KiB page, little-endian
64-bit words). supervisord's part: ``CheckpointPair`` starts a primary and a
secondary checkpointd (socket-activated, sandboxed, sharing a --peer-key
file), connects them with loopback TCP channels, hands every fd over the
control sockets and drives checkpoints on both sides at once.

A page channel can run through a ``Relay`` so a test can cut it, or stall
it, at an exact byte count in the middle of a checkpoint.

``VmReplication`` drives the same pair around two real vmmds instead,
as supervisord does: pre-copy rounds of a live migration from the source
VM's dirty log, the stop-and-copy, and COLO checkpoints of a running
primary into a running secondary, with the secondary's device state
checked by its vmmd before checkpointd writes its RAM.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import mmap
import os
import socket
import struct
import threading
import time
from pathlib import Path

import colo_proto
from colo_daemons import ActivatedDaemon, build_dir, runtime_dir

checkpointd_pb2 = colo_proto.importlib.import_module("colo.control.checkpointd_pb2")
common_pb2 = colo_proto.common

PAGE = 4096
KEY = b"colo test pair key: 32 bytes!!!!"


def sealed_memfd(name: str, size: int, data: bytes | None = None) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    if data is not None:
        os.write(fd, data)
    else:
        os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


def bitmap_bytes(pages: set[int], page_count: int) -> bytes:
    words = [0] * ((page_count + 63) // 64)
    for page in pages:
        words[page // 64] |= 1 << (page % 64)
    return struct.pack(f"<{len(words)}Q", *words)


class GuestRAM:
    """Guest RAM as vmmd keeps it: a sealed memfd, plus the set of pages
    written since the last dirty bitmap was taken."""

    def __init__(self, pages: int, name: str = "guest-ram"):
        self.pages = pages
        self.fd = sealed_memfd(name, pages * PAGE)
        self.map = mmap.mmap(self.fd, pages * PAGE)
        self.dirty: set[int] = set()

    def write(self, page: int, data: bytes) -> None:
        assert len(data) == PAGE
        self.map[page * PAGE:(page + 1) * PAGE] = data
        self.dirty.add(page)

    def page(self, page: int) -> bytes:
        return self.map[page * PAGE:(page + 1) * PAGE]

    def take_dirty_bitmap(self) -> int:
        """A memfd holding the dirty bitmap; the dirty set starts afresh."""
        fd = sealed_memfd("dirty-bitmap", 0, bitmap_bytes(self.dirty, self.pages))
        self.dirty = set()
        return fd

    def contents(self) -> bytes:
        return bytes(self.map)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


class Relay:
    """Forwards one TCP channel through the test, both ways, so the test can
    cut it (or stop forwarding) after an exact number of primary-to-secondary
    bytes. Returns the two ends to hand to the daemons."""

    def __init__(self):
        self.primary_end, self._left = tcp_pair()
        self._right, self.secondary_end = tcp_pair()
        self._budget: int | None = None
        self._lock = threading.Lock()
        self.forwarded = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._pump, args=(self._left, self._right, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self._right, self._left, False), daemon=True).start()

    def limit(self, more_bytes: int) -> None:
        """Forward at most this many more bytes towards the secondary."""
        with self._lock:
            self._budget = self.forwarded + more_bytes

    def cut(self) -> None:
        for s in (self._left, self._right):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _pump(self, source: socket.socket, sink: socket.socket, towards_secondary: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if towards_secondary:
                    with self._lock:
                        if self._budget is not None:
                            data = data[:max(0, self._budget - self.forwarded)]
                        self.forwarded += len(data)
                        exhausted = self._budget is not None and self.forwarded >= self._budget
                    if data:
                        sink.sendall(data)
                    if exhausted:
                        self.stopped.set()
                        # Hold the channel: the primary's sends back up.
                        threading.Event().wait()
                else:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            self.stopped.set()

    def close(self) -> None:
        self.cut()
        for s in (self._left, self._right, self.primary_end, self.secondary_end):
            s.close()


class Checkpointd:
    """One checkpointd process and a control connection to it."""

    def __init__(self, name: str, key_path: Path, directory: Path | None = None):
        self.dir = directory or runtime_dir(name)
        self.daemon = ActivatedDaemon(build_dir() / "checkpointd", "checkpointd", self.dir,
                                      ("--peer-key", str(key_path)))
        # systemd-socket-activate binds the socket file before it listens.
        deadline = time.monotonic() + 5
        while True:
            try:
                self.control = colo_proto.connect(self.daemon.sock)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.control.settimeout(30)
        self._next_id = 1

    def send(self, fds: list[int] = (), **body) -> int:
        request_id = self._next_id
        self._next_id += 1
        message = colo_proto.envelope.Request(id=request_id, fd_count=len(fds))
        for field, value in body.items():
            getattr(message, field).SetInParent()
            if value is not None:
                getattr(message, field).MergeFrom(value)
        socket.send_fds(self.control, [message.SerializeToString()], list(fds))
        return request_id

    def receive(self):
        """The next response and the fds it carries."""
        data, fds, _, _ = socket.recv_fds(self.control, colo_proto.MAX_DATAGRAM, 16)
        reply = colo_proto.envelope.Response()
        reply.ParseFromString(data)
        return reply, fds

    def call_with_fds(self, fds: list[int] = (), **body):
        """The response and the fds it carries (the caller closes them)."""
        self.send(fds, **body)
        return self.receive()

    def call(self, fds: list[int] = (), **body):
        reply, received = self.call_with_fds(fds, **body)
        for fd in received:
            os.close(fd)
        return reply

    def status(self):
        """On a connection of its own: the main one may be waiting on a
        checkpoint (requests on one connection are answered in order)."""
        reply = colo_proto.call(self.daemon.sock, colo_proto.request(1, checkpoint_status=None))
        assert reply.WhichOneof("body") == "checkpoint_status", reply
        return reply.checkpoint_status

    def close(self) -> None:
        self.control.close()
        self.daemon.close()


def attach_request(role: int, channels: int, **options):
    """A CheckpointAttach naming fds 0 (RAM), 1 (control), 2.. (pages)."""
    request = checkpointd_pb2.CheckpointAttach(role=role, **options)
    request.guest_memory.index = 0
    request.control_channel.index = 1
    for index in range(channels):
        request.page_channels.add().index = 2 + index
    return request


class CheckpointPair:
    """A primary and a secondary checkpointd paired over loopback TCP, with
    guest RAM of `pages` pages on each side."""

    def __init__(self, pages: int, channels: int = 2, verify: bool = False, relayed: set[int] = frozenset(),
                 timeout_ms: int = 3000, memory_fds: tuple[int, int] | None = None, **options):
        """With `memory_fds` (primary's, secondary's: vmmd's RAM memfds)
        the pair works on those, and primary_ram/secondary_ram are None."""
        self.dir = runtime_dir("ckpt")
        self.key_path = self.dir / "peer.key"
        self.key_path.write_bytes(KEY)
        os.chmod(self.key_path, 0o600)
        self.pages = pages
        if memory_fds is None:
            self.primary_ram = GuestRAM(pages, "pvm-ram")
            self.secondary_ram = GuestRAM(pages, "svm-ram")
            memory_fds = (self.primary_ram.fd, self.secondary_ram.fd)
        else:
            self.primary_ram = self.secondary_ram = None
        self.primary = Checkpointd("primary", self.key_path, self._subdir("primary"))
        self.secondary = Checkpointd("secondary", self.key_path, self._subdir("secondary"))
        self.relays: dict[int, Relay] = {}
        control = tcp_pair()
        page_pairs = []
        for index in range(channels):
            if index in relayed:
                relay = Relay()
                self.relays[index] = relay
                page_pairs.append((relay.primary_end, relay.secondary_end))
            else:
                page_pairs.append(tcp_pair())
        options = dict(verify=verify, peer_timeout_ms=timeout_ms, copy_threads=2, **options)
        self.primary.send([memory_fds[0], control[0].fileno(), *[p[0].fileno() for p in page_pairs]],
                          checkpoint_attach=attach_request(checkpointd_pb2.CHECKPOINT_ROLE_PRIMARY, channels, **options))
        self.secondary.send([memory_fds[1], control[1].fileno(), *[p[1].fileno() for p in page_pairs]],
                            checkpoint_attach=attach_request(checkpointd_pb2.CHECKPOINT_ROLE_SECONDARY, channels,
                                                             **options))
        self.attached = (self.primary.receive()[0], self.secondary.receive()[0])
        # The daemons hold their own copies now; relays keep theirs.
        for s in [*control, *[s for p in page_pairs for s in p]]:
            if not any(s in (r.primary_end, r.secondary_end) for r in self.relays.values()):
                s.close()
        for relay in self.relays.values():
            relay.primary_end.close()
            relay.secondary_end.close()

    def _subdir(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir()
        os.chmod(path, 0o755)
        return path

    def initial_sync(self) -> None:
        """Live migration: every page in one round, then checkpoint 1."""
        reply = self.primary.call(checkpoint_send_pages=checkpointd_pb2.CheckpointSendPages(all_pages=True))
        assert reply.WhichOneof("body") == "checkpoint_send_pages", reply
        self.primary_ram.dirty = set()
        deadline = time.monotonic() + 30
        while self.primary.status().progress.dirty_pages_left:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        taken, committed = self.checkpoint()
        assert taken.WhichOneof("body") == "checkpoint_taken", taken
        assert committed.WhichOneof("body") == "checkpoint_committed", committed

    def send_round(self):
        """A pre-copy round of the pages written since the last bitmap."""
        fd = self.primary_ram.take_dirty_bitmap()
        try:
            request = checkpointd_pb2.CheckpointSendPages()
            request.dirty_bitmap.index = 0
            return self.primary.call([fd], checkpoint_send_pages=request)
        finally:
            os.close(fd)

    def start_checkpoint(self, device_state: bytes = b"device state"):
        """Sends commit (secondary) and take (primary) without waiting."""
        secondary_bitmap = self.secondary_ram.take_dirty_bitmap()
        primary_bitmap = self.primary_ram.take_dirty_bitmap()
        state = sealed_memfd("device-state", 0, device_state)
        commit = checkpointd_pb2.CheckpointCommit()
        commit.guest_dirty_bitmap.index = 0
        take = checkpointd_pb2.CheckpointTake()
        take.dirty_bitmap.index = 0
        take.device_state.index = 1
        try:
            self.secondary.send([secondary_bitmap], checkpoint_commit=commit)
            self.primary.send([primary_bitmap, state], checkpoint_take=take)
        finally:
            for fd in (secondary_bitmap, primary_bitmap, state):
                os.close(fd)

    def finish_checkpoint(self):
        """(primary reply, secondary reply); the device state the secondary
        handed back is read into `self.device_state`."""
        taken, _ = self.primary.receive()
        committed, fds = self.secondary.receive()
        self.device_state = None
        for fd in fds:
            self.device_state = os.pread(fd, 1 << 20, 0)
            os.close(fd)
        return taken, committed

    def checkpoint(self, device_state: bytes = b"device state"):
        self.start_checkpoint(device_state)
        return self.finish_checkpoint()

    def close(self) -> None:
        for relay in self.relays.values():
            relay.close()
        self.primary.close()
        self.secondary.close()
        for ram in (self.primary_ram, self.secondary_ram):
            if ram is not None:
                ram.close()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


# -- A primary written in Python, for bad input the real one never sends.

def authenticate_as_primary(sock: socket.socket, channel: str, key: bytes = KEY) -> None:
    """PeerAuthentication's handshake, initiator side (see PeerAuthenticator)."""
    name = channel.encode()
    nonce = os.urandom(32)
    sock.sendall(b"COLOPEER" + bytes([1, 0, len(name)]) + name + nonce)
    header = _read(sock, 11)
    peer_channel = _read(sock, header[10])
    peer_nonce = _read(sock, 32)
    assert peer_channel == name
    mac = lambda role: hmac.new(key, b"colo-peer-v1" + bytes([role]) + name + nonce + peer_nonce,
                                hashlib.sha256).digest()
    sock.sendall(mac(0))
    proof = _read(sock, 32)
    if proof != mac(1):
        raise PermissionError("secondary proof mismatch")


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def control_frame(kind: int, sequence: int, payload: bytes) -> bytes:
    return b"CCTL" + struct.pack("<BBHIIQ", 1, kind, 0, len(payload), 0, sequence) + payload


def hello(memory_bytes: int, channels: int) -> bytes:
    return control_frame(1, 0, struct.pack("<QII", memory_bytes, channels, PAGE))


def page_header(kind: int, count: int, sequence: int, pages: int = 0) -> bytes:
    return b"CRAM" + struct.pack("<BBHIIQQ", 1, kind, 0, count, 0, sequence, pages)


class FakePrimary:
    """Pairs with a real secondary checkpointd as a primary would, then lets
    the test write whatever bytes it likes on the channels."""

    def __init__(self, secondary: Checkpointd, ram: GuestRAM, channels: int = 1, key: bytes = KEY):
        self.control, remote_control = tcp_pair()
        pairs = [tcp_pair() for _ in range(channels)]
        self.pages = [p[0] for p in pairs]
        request = attach_request(checkpointd_pb2.CHECKPOINT_ROLE_SECONDARY, channels, peer_timeout_ms=1500)
        secondary.send([ram.fd, remote_control.fileno(), *[p[1].fileno() for p in pairs]], checkpoint_attach=request)
        remote_control.close()
        for p in pairs:
            p[1].close()
        self.error: Exception | None = None
        try:
            authenticate_as_primary(self.control, "checkpoint-control", key)
            for index, sock in enumerate(self.pages):
                authenticate_as_primary(sock, f"checkpoint-ram-{index}", key)
            self.control.sendall(hello(ram.pages * PAGE, channels))
            _read(self.control, 24 + 16)
        except (PermissionError, ConnectionError) as error:
            self.error = error
        self.attached, _ = secondary.receive()

    def close(self) -> None:
        self.control.close()
        for sock in self.pages:
            sock.close()


# -- Real vmmds: live migration and COLO checkpoints, as supervisord drives them.

def _expect(reply, body: str):
    assert reply.WhichOneof("body") == body, f"{body} expected: {reply}"
    return getattr(reply, body)


def ram_digest(fd: int, size: int) -> str:
    """SHA-256 of a whole RAM memfd."""
    digest = hashlib.sha256()
    for offset in range(0, size, 8 << 20):
        digest.update(os.pread(fd, min(8 << 20, size - offset), offset))
    return digest.hexdigest()


class VmReplication:
    """A CheckpointPair on the RAM memfds of two real vmmds (vmm.Vmmd),
    driven as supervisord drives it. `source` is the primary's vmmd, `target`
    the secondary's (a VM prepared for incoming state: pass incoming=True;
    or one that already runs as the secondary). Keeps both RAM memfds for
    hashing."""

    def __init__(self, source, target, channels: int = 2, verify: bool = True, incoming: bool = False,
                 **options):
        self.source, self.target = source, target
        # A target that never ran has nothing of its own to overwrite at
        # the first commit; its log goes on now (the first sync), before it
        # runs, so that it names the target's own writes from then on.
        self.target_never_ran = incoming
        if incoming:
            self.target.sync_dirty_log()
        self.source_memory = source.guest_memory()
        self.target_memory = target.guest_memory()
        self.memory_bytes = os.fstat(self.source_memory).st_size
        assert os.fstat(self.target_memory).st_size == self.memory_bytes
        self.pair = CheckpointPair(self.memory_bytes // PAGE, channels=channels, verify=verify,
                                   memory_fds=(self.source_memory, self.target_memory), incoming=incoming,
                                   **options)
        for reply in self.pair.attached:
            _expect(reply, "checkpoint_attached")

    # --- live migration ------------------------------------------------------
    def precopy(self, timeout: float = 60.0) -> list:
        """Pre-copy rounds while the source runs, each from a fresh dirty-log
        sync (the first reports every page) once the previous round is
        sent, until checkpointd advises stop-and-copy. Returns each round's
        CheckpointProgress."""
        rounds = []
        deadline = time.monotonic() + timeout
        while True:
            _, bitmap = self.source.sync_dirty_log()
            if rounds:
                reply = self._send_round(bitmap)
            else:
                # Whatever the source's log said: a new pairing starts from nothing.
                reply = self.pair.primary.call(
                    checkpoint_send_pages=checkpointd_pb2.CheckpointSendPages(all_pages=True))
            _expect(reply, "checkpoint_send_pages")
            while (progress := self.pair.primary.status().progress).dirty_pages_left:
                assert time.monotonic() < deadline, progress
                time.sleep(0.002)
            rounds.append(progress)
            if progress.stop_and_copy_advised:
                return rounds

    def _send_round(self, bitmap: bytes):
        fd = sealed_memfd("dirty-bitmap", 0, bitmap)
        try:
            request = checkpointd_pb2.CheckpointSendPages()
            request.dirty_bitmap.index = 0
            return self.pair.primary.call([fd], checkpoint_send_pages=request)
        finally:
            os.close(fd)

    # --- one checkpoint -------------------------------------------------------
    def checkpoint(self, resume_source: bool = True, resume_target: bool = True, tamper=None,
                   before_resume=None) -> dict:
        """One checkpoint (the stop-and-copy of a migration is one too):
        pause both VMs, dirty logs, source state -> CheckpointTake; on the
        target CheckpointReceive, its vmmd checks the device state
        (VmStateLoad check_only; not for a target that never ran, which a
        failed load discards anyway), CheckpointCommit with the target's dirty
        bitmap, VmStateLoad, then resume. `tamper(blob) -> blob` alters the
        state sent (a blob vmmd refuses: the target is sent
        CheckpointRefuse instead and stays paused on its last commit).
        `before_resume(figures)` runs with both VMs paused after the
        commit. Returns the replies and timings (`steps`: ms from the
        source's pause request to the end of each step)."""
        started = time.monotonic()
        steps = {}

        def step(name: str) -> None:
            steps[name] = (time.monotonic() - started) * 1000

        self.source.pause()
        step("source paused")
        if self.target_never_ran:
            target_dirty_pages, target_bitmap = 0, bytes((self.memory_bytes // PAGE + 63) // 64 * 8)
        else:
            self.target.pause()  # answered at once when already paused
            # The pages the target dirtied itself (a first sync names
            # every page; the first checkpoint of a pairing copies every
            # page anyway).
            target_log, target_bitmap = self.target.sync_dirty_log()
            target_dirty_pages = 0 if target_log.all_pages else target_log.dirty_pages
        _, source_bitmap = self.source.sync_dirty_log()
        step("dirty logs synced")
        blob = self.source.save_state()
        step("state saved")
        if tamper is not None:
            blob = tamper(blob)
        figures = {"paused_to_state_s": time.monotonic() - started,
                   "target_dirty_pages": target_dirty_pages, "steps": steps}
        self._start_take(source_bitmap, blob)
        reply, fds = self.pair.secondary.call_with_fds(checkpoint_receive=None)
        figures["received"] = reply
        step("checkpoint received")
        if reply.WhichOneof("body") != "checkpoint_received":
            figures["taken"] = self._finish_take()
            return figures
        state_fd = fds[0]
        try:
            state = os.pread(state_fd, reply.checkpoint_received.device_state_bytes, 0)
        finally:
            for fd in fds:
                os.close(fd)
        # A target that never ran is discarded if its load fails: nothing
        # of it to keep, no check needed before the commit.
        check = None if self.target_never_ran else self.target.load_state(state, check_only=True)
        figures["check"] = check
        step("state checked")
        if check is not None and check.WhichOneof("body") != "vm_state_loaded":
            refuse = checkpointd_pb2.CheckpointRefuse(reason=f"vmmd refused the device state: {check.error.message}")
            figures["refused"] = self.pair.secondary.call(checkpoint_refuse=refuse)
            figures["taken"] = self._finish_take()
            return figures
        fd = sealed_memfd("dirty-bitmap", 0, target_bitmap)
        try:
            request = checkpointd_pb2.CheckpointCommit()
            request.guest_dirty_bitmap.index = 0
            figures["committed"] = _expect(self.pair.secondary.call([fd], checkpoint_commit=request),
                                           "checkpoint_committed")
        finally:
            os.close(fd)
        step("committed")
        _expect(self.target.load_state(state), "vm_state_loaded")
        step("state loaded")
        figures["taken"] = _expect(self._finish_take(), "checkpoint_taken")
        step("take answered")
        figures["switchover_s"] = time.monotonic() - started
        if before_resume is not None:
            before_resume(figures)
        if resume_target:
            self.target.resume()
            self.target_never_ran = False
            step("target resumed")
        if resume_source:
            self.source.resume()
        figures["downtime_s"] = time.monotonic() - started
        return figures

    def _start_take(self, bitmap: bytes, blob: bytes) -> None:
        bitmap_fd = sealed_memfd("dirty-bitmap", 0, bitmap)
        state_fd = sealed_memfd("device-state", 0, blob)
        take = checkpointd_pb2.CheckpointTake()
        take.dirty_bitmap.index = 0
        take.device_state.index = 1
        try:
            self.pair.primary.send([bitmap_fd, state_fd], checkpoint_take=take)
        finally:
            os.close(bitmap_fd)
            os.close(state_fd)

    def _finish_take(self):
        reply, fds = self.pair.primary.receive()
        for fd in fds:
            os.close(fd)
        return reply

    def hashes(self) -> tuple[str, str]:
        """(source, target) RAM digests; meaningful while both are paused."""
        return ram_digest(self.source_memory, self.memory_bytes), ram_digest(self.target_memory, self.memory_bytes)

    def close(self) -> None:
        self.pair.close()
        os.close(self.source_memory)
        os.close(self.target_memory)
