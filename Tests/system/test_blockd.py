"""blockd as a process, sandboxed, as systemd would start it: NBD interop
with libnbd's tools, bad input on its NBD server, the block service for
vmmd (a driver plays vmmd), and replication between two blockds over an
authenticated loopback TCP link, with checkpoints, failover and a kill -9
during the failover commit."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

import colo_proto
from blockd_helpers import (PRIMARY, SECONDARY, Blockd, attach_guest, attach_link, blockd_pb2, call, disk_info,
                            open_disk, tcp_pair, wait_for)

nbd = pytest.importorskip("nbd", reason="python3-libnbd (nbdsh) is not installed")
MiB = 1 << 20


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "peer.key"
    path.write_bytes(os.urandom(32))
    return path


@pytest.fixture
def blockd(key):
    daemon = Blockd("blockd", key)
    yield daemon
    daemon.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_all(handle, size: int) -> bytes:
    return b"".join(handle.pread(min(4 * MiB, size - o), o) for o in range(0, size, 4 * MiB))


def test_interop_with_nbdinfo_nbdcopy_nbdsh(blockd):
    size = 8 * MiB
    open_disk(blockd.sock, "disk0", PRIMARY, blockd.dir / "disk.img", size)
    listing = subprocess.run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={blockd.nbd_socket}"],
                             capture_output=True, text=True, check=True).stdout
    assert '"export-name": "disk0"' in listing and f'"export-size": {size}' in listing
    source = blockd.dir / "source"
    source.write_bytes(os.urandom(size))
    subprocess.run(["nbdcopy", str(source), blockd.uri("disk0")], check=True)
    back = blockd.dir / "back"
    subprocess.run(["nbdcopy", blockd.uri("disk0"), str(back)], check=True)
    assert sha(back.read_bytes()) == sha(source.read_bytes()) == sha((blockd.dir / "disk.img").read_bytes())
    script = (
        "h.pwrite(b'colo' * 1024, 4096, nbd.CMD_FLAG_FUA)\n"
        "assert h.pread(4096, 4096) == b'colo' * 1024\n"
        "h.flush()\n"
        "h.trim(8192, 0)\n"
        "assert h.pread(8192, 0) == bytes(8192)\n"
        "h.zero(4096, 4096)\n"
        "assert h.pread(4096, 4096) == bytes(4096)\n"
        "assert h.can_fua() and h.can_trim() and h.can_zero() and h.can_flush()\n"
        "print('nbdsh-ok', h.get_size())\n")
    # nbdsh runs `python3 -m nbd`: Debian's python3, which has the module.
    debian_first = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
    out = subprocess.run(["nbdsh", "-u", blockd.uri("disk0"), "-c", script], capture_output=True, text=True,
                         env=debian_first)
    assert out.returncode == 0 and f"nbdsh-ok {size}" in out.stdout, out.stderr


def raw_handshake(path, export: bytes = b"disk0"):
    """A hand-rolled fixed-newstyle client up to transmission (NBD_OPT_GO)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    greeting = recv_exact(s, 18)
    assert greeting[:16] == b"NBDMAGICIHAVEOPT"
    s.sendall(struct.pack(">I", 3))
    # An unknown option first: NBD_REP_ERR_UNSUP, and the haggling goes on.
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 99, 0))
    magic, option, reply, length = struct.unpack(">QIII", recv_exact(s, 20))
    assert (option, reply) == (99, 0x80000001)
    recv_exact(s, length)
    payload = struct.pack(">I", len(export)) + export + struct.pack(">H", 0)
    s.sendall(b"IHAVEOPT" + struct.pack(">II", 7, len(payload)) + payload)
    while True:
        magic, option, reply, length = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, length)
        if reply == 1:
            return s
        assert reply == 3, hex(reply)


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def request(s, command, offset, length, cookie, flags=0, payload=b"", magic=0x25609513):
    s.sendall(struct.pack(">IHHQQI", magic, flags, command, cookie, offset, length) + payload)


def simple_reply(s, cookie):
    magic, error, got = struct.unpack(">IIQ", recv_exact(s, 16))
    assert magic == 0x67446698 and got == cookie
    return error


def test_bad_input_gets_spec_errors_and_others_keep_being_served(blockd):
    size = 4 * MiB
    open_disk(blockd.sock, "disk0", PRIMARY, blockd.dir / "disk.img", size)
    good = blockd.connect("disk0")
    good.pwrite(b"\x5a" * 65536, 0)

    s = raw_handshake(blockd.nbd_socket)
    request(s, 0, size - 512, 4096, 1)                                  # read past the end
    assert simple_reply(s, 1) == 22                                     # EINVAL
    request(s, 1, size, 512, 2, payload=b"x" * 512)                     # write past the end
    assert simple_reply(s, 2) == 28                                     # ENOSPC
    request(s, 1, 2**64 - 512, 1024, 3, payload=b"x" * 1024)            # offset overflow
    assert simple_reply(s, 3) == 28
    request(s, 42, 0, 512, 4)                                           # unknown command
    assert simple_reply(s, 4) == 22
    request(s, 0, 0, 0xFFFFFFFF, 5)                                     # huge read
    assert simple_reply(s, 5) == 22
    request(s, 1, 0, 512, 6, flags=0x100, payload=b"y" * 512)           # unknown flag: payload skipped
    assert simple_reply(s, 6) == 22
    request(s, 0, 0, 512, 7)                                            # still in step
    assert simple_reply(s, 7) == 0 and recv_exact(s, 512) == b"\x5a" * 512
    request(s, 1, 0, 0x7FFFFFFF, 8)                                     # huge write: error, then closed
    assert simple_reply(s, 8) == 22
    with pytest.raises((ConnectionError, OSError)):
        request(s, 0, 0, 512, 9)
        recv_exact(s, 16)
    s.close()

    s = raw_handshake(blockd.nbd_socket)
    request(s, 0, 0, 512, 1, magic=0xdeadbeef)                          # bad magic: closed
    with pytest.raises((ConnectionError, OSError)):
        recv_exact(s, 16)
    s.close()

    s = raw_handshake(blockd.nbd_socket)                                # vanishes mid-write
    request(s, 1, 0, 65536, 1, payload=b"\xff" * 1000)
    s.close()

    with pytest.raises(nbd.Error):
        blockd.connect("no-such-export")
    # No corruption, and the first client is still served.
    assert good.pread(65536, 0) == b"\x5a" * 65536
    good.shutdown()
    status = call(blockd.sock, blockd_status=blockd_pb2.BlockdStatusRequest()).blockd_status
    assert status.nbd_requests_rejected >= 7 and status.nbd_protocol_errors >= 2


def test_block_service_for_vmmd(blockd):
    """A driver plays vmmd: guest RAM is a sealed memfd, requests name
    guest buffers, blockd reads and writes them in place."""
    size = 1 * MiB
    image = blockd.dir / "disk.img"
    open_disk(blockd.sock, "disk0", PRIMARY, image, size)
    ram_size = 2 * MiB
    ram = os.memfd_create("guest-ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(ram, ram_size)
    import fcntl
    fcntl.fcntl(ram, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    import mmap
    guest = mmap.mmap(ram, ram_size)
    vmm = attach_guest(blockd.sock, "disk0")
    block = colo_proto.block
    base = 0x100000  # guest-physical address of the RAM region
    attach = block.BlockMessage(attach=block.BlockAttach(
        guest_memory=colo_proto.common.FdRef(index=0),
        regions=[block.GuestMemoryRegion(guest_address=base, size=ram_size, memfd_offset=0)]))
    vmm.sendmsg([attach.SerializeToString()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", ram))])
    vmm.settimeout(10)
    attached = block.BlockMessage.FromString(vmm.recv(65536)).attached
    assert attached.capacity_bytes == size and attached.logical_block_size == 512 and attached.supports_flush

    def submit(**fields):
        vmm.send(block.BlockMessage(request=block.BlockRequest(**fields)).SerializeToString())
        return block.BlockMessage.FromString(vmm.recv(65536)).completion

    pattern = os.urandom(8192)
    guest[0:8192] = pattern
    done = submit(id=1, operation=block.BLOCK_OPERATION_WRITE, offset=4096,
                  buffers=[block.GuestBuffer(guest_address=base, length=4096),
                           block.GuestBuffer(guest_address=base + 4096, length=4096)], fua=True)
    assert (done.id, done.status) == (1, block.BLOCK_STATUS_OK)
    done = submit(id=2, operation=block.BLOCK_OPERATION_READ, offset=4096,
                  buffers=[block.GuestBuffer(guest_address=base + MiB, length=8192)])
    assert done.status == block.BLOCK_STATUS_OK and done.bytes_to_guest == 8192
    assert guest[MiB:MiB + 8192] == pattern
    assert image.read_bytes()[4096:12288] == pattern
    assert submit(id=3, operation=block.BLOCK_OPERATION_FLUSH).status == block.BLOCK_STATUS_OK
    # Outside guest RAM (below, straddling the end), past the disk's end, unknown: errors.
    for guest_address in (0, base + ram_size - 512):
        done = submit(id=4, operation=block.BLOCK_OPERATION_READ, offset=0,
                      buffers=[block.GuestBuffer(guest_address=guest_address, length=4096)])
        assert done.status == block.BLOCK_STATUS_IO_ERROR and "outside guest RAM" in done.detail
    done = submit(id=5, operation=block.BLOCK_OPERATION_WRITE, offset=size - 512,
                  buffers=[block.GuestBuffer(guest_address=base, length=4096)])
    assert done.status == block.BLOCK_STATUS_IO_ERROR
    assert submit(id=6, operation=block.BLOCK_OPERATION_UNSPECIFIED).status == block.BLOCK_STATUS_UNSUPPORTED
    assert submit(id=7, operation=block.BLOCK_OPERATION_WRITE_ZEROES, offset=4096, length=4096).status == 0
    assert image.read_bytes()[4096:8192] == bytes(4096)
    # Garbage ends the session with an error message, and blockd lives on.
    vmm.send(b"\xff\xff\xff")
    assert block.BlockMessage.FromString(vmm.recv(65536)).WhichOneof("body") == "error"
    vmm.close()
    os.close(ram)
    assert colo_proto.status(blockd.sock).state.startswith("serving")

    # An old primary becoming a secondary closes the disk (refused while a
    # guest is attached) and opens the same image in the other role.
    vmm = attach_guest(blockd.sock, "disk0")
    wait_for(lambda: disk_info(blockd.sock, "disk0").guest_attached, what="the guest attached")
    close = lambda: call(blockd.sock, blockd_close_disk=blockd_pb2.BlockdCloseDiskRequest(name="disk0"))
    refused = close()
    assert refused.WhichOneof("body") == "error" and "guest is attached" in refused.error.message, refused
    vmm.close()
    wait_for(lambda: close().WhichOneof("body") == "blockd_status", what="the disk to close once the guest left")
    unknown = close()
    assert unknown.WhichOneof("body") == "error" and "no disk named" in unknown.error.message, unknown
    reopened = open_disk(blockd.sock, "disk0", SECONDARY, image, active=blockd.dir / "active",
                         hidden=blockd.dir / "hidden")
    assert reopened.role == SECONDARY and reopened.capacity_bytes == size


def random_workload(rng, primary, secondary_view, size, rounds, model):
    """Primary writes/flushes/trims and secondary-guest writes; updates the
    models of the primary's disk and the secondary guest's view."""
    primary_model, view_model = model
    for _ in range(rounds):
        length = rng.randrange(1, 32) * 512
        offset = rng.randrange(0, (size - length) // 512) * 512
        op = rng.randrange(10)
        if op < 5:
            data = rng.randbytes(length)
            primary.pwrite(data, offset, nbd.CMD_FLAG_FUA if op == 0 else 0)
            primary_model[offset:offset + length] = data
        elif op == 5:
            primary.flush()
        elif op == 6:
            primary.trim(length, offset)
            primary_model[offset:offset + length] = bytes(length)
        else:
            data = rng.randbytes(length)
            secondary_view.pwrite(data, offset)
            view_model[offset:offset + length] = data


def test_replication_checkpoint_failover_and_kill_during_commit(key, tmp_path):
    size = 32 * MiB
    primary_host, secondary_host = Blockd("primary", key), Blockd("secondary", key)
    overlays = Path("/dev/shm") / f"colo-blockd-test-{os.getpid()}"
    overlays.mkdir()
    try:
        open_disk(primary_host.sock, "disk0", PRIMARY, primary_host.dir / "disk.img", size)
        secondary_args = dict(image=secondary_host.dir / "disk.img", size=size,
                              active=overlays / "active.ovl", hidden=overlays / "hidden.ovl")
        open_disk(secondary_host.sock, "disk0", SECONDARY, **secondary_args)
        near, far = tcp_pair()
        attach_link(secondary_host.sock, "disk0", far)
        attach_link(primary_host.sock, "disk0", near)
        wait_for(lambda: disk_info(primary_host.sock, "disk0").state == "replicating", what="replication")

        primary = primary_host.connect("disk0")
        view = secondary_host.connect("disk0")
        rng = random.Random(8)
        primary_model, view_model = bytearray(size), bytearray(size)
        for round in range(3):
            random_workload(rng, primary, view, size, 300, (primary_model, view_model))
            assert sha(read_all(primary, size)) == sha(primary_model)
            assert sha(read_all(view, size)) == sha(view_model), f"round {round}: checkpoint + own writes"
            reply = call(primary_host.sock, blockd_checkpoint=blockd_pb2.BlockdCheckpointRequest(disk="disk0"))
            assert reply.WhichOneof("body") == "blockd_disk"
            reply = call(secondary_host.sock, blockd_checkpoint=blockd_pb2.BlockdCheckpointRequest(disk="disk0"))
            assert reply.blockd_disk.active_bytes == 0 and reply.blockd_disk.hidden_bytes == 0
            view_model[:] = primary_model
            assert sha(read_all(view, size)) == sha(primary_model), f"round {round}: view equals primary"

        # The secondary guest writes a lot (so the commit takes a while),
        # the primary keeps writing, then the primary dies and the secondary
        # fails over: blockd is killed during the commit and restarted.
        random_workload(rng, primary, view, size, 100, (primary_model, view_model))
        big = rng.randbytes(16 * MiB)
        view.pwrite(big, 8 * MiB)
        view_model[8 * MiB:24 * MiB] = big
        view.flush()
        primary.shutdown()
        view.shutdown()
        primary_host.kill9()
        call(secondary_host.sock, blockd_failover=blockd_pb2.BlockdFailoverRequest(disk="disk0"))
        time.sleep(0.01)
        secondary_host.kill9()
        secondary_host.start()
        info = open_disk(secondary_host.sock, "disk0", SECONDARY, **secondary_args)
        print(f"kill -9 landed {'during' if info.recovered_commit else 'before' if info.role == SECONDARY else 'after'}"
              " the commit")
        if info.role == SECONDARY:
            # The kill came before the commit recorded anything: fail over again.
            call(secondary_host.sock, blockd_failover=blockd_pb2.BlockdFailoverRequest(disk="disk0"))
        wait_for(lambda: disk_info(secondary_host.sock, "disk0").role == PRIMARY, what="failover")
        survivor = secondary_host.connect("disk0")
        assert sha(read_all(survivor, size)) == sha(view_model), "the committed disk is the secondary's view"
        survivor.shutdown()
        assert sha((secondary_host.dir / "disk.img").read_bytes()) == sha(view_model)
    finally:
        primary_host.close()
        secondary_host.close()
        shutil.rmtree(overlays, ignore_errors=True)


def test_resync_to_new_partner_under_concurrent_writer(key):
    size = 32 * MiB
    source_host, partner_host = Blockd("source", key), Blockd("partner", key)
    overlays = Path("/dev/shm") / f"colo-blockd-resync-{os.getpid()}"
    overlays.mkdir()
    try:
        open_disk(source_host.sock, "disk0", PRIMARY, source_host.dir / "disk.img", size)
        writer = source_host.connect("disk0")
        writer.pwrite(os.urandom(12 * MiB), 0)
        (partner_host.dir / "disk.img").write_bytes(os.urandom(size))  # stale contents to be replaced
        open_disk(partner_host.sock, "disk0", SECONDARY, partner_host.dir / "disk.img", 0,
                  overlays / "active.ovl", overlays / "hidden.ovl")
        near, far = tcp_pair()
        attach_link(partner_host.sock, "disk0", far)
        attach_link(source_host.sock, "disk0", near, resync=True)
        rng = random.Random(3)
        phases = set()
        deadline = time.monotonic() + 60
        while True:
            for _ in range(20):
                length = rng.randrange(1, 64) * 512
                writer.pwrite(rng.randbytes(length), rng.randrange(0, (size - length) // 512) * 512)
            info = disk_info(source_host.sock, "disk0")
            phases.add(info.resync.phase)
            assert info.resync.phase != "failed", info.resync.error
            if info.state == "replicating":
                break
            assert time.monotonic() < deadline, info
        # Writes after the switch are replicated too.
        writer.pwrite(b"after" * 1000, 20 * MiB)
        writer.flush()
        assert info.resync.scanned_bytes == size and info.resync.copied_bytes > 0
        partner = partner_host.connect("disk0.secondary")
        assert sha(read_all(partner, size)) == sha(read_all(writer, size))
    finally:
        source_host.close()
        partner_host.close()
        shutil.rmtree(overlays, ignore_errors=True)
