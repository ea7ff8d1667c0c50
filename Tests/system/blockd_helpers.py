"""Driving blockd from tests: the sandboxed daemon with its plain NBD
listener, its control requests (with fds), and the TCP loopback pair that stands in for the replication link supervisord
would broker between two hosts."""

from __future__ import annotations

import array
import importlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import colo_daemons
import colo_proto

blockd_pb2 = importlib.import_module("colo.control.blockd_pb2")
PRIMARY = blockd_pb2.BLOCKD_DISK_ROLE_PRIMARY
SECONDARY = blockd_pb2.BLOCKD_DISK_ROLE_SECONDARY


class Blockd:
    """One blockd with its plain NBD listener and a scratch directory."""

    def __init__(self, name: str, key: Path | None = None):
        self.dir = colo_daemons.runtime_dir(name)
        self.nbd_socket = self.dir / "nbd.sock"
        self.key = key
        self.start()

    def start(self):
        args = ["--nbd-listen", f"unix:{self.nbd_socket}"]
        if self.key:
            args += ["--peer-key", str(self.key)]
        for stale in (self.dir / "blockd.notify", self.dir / "blockd.sock"):
            stale.unlink(missing_ok=True)
        self.daemon = colo_daemons.ActivatedDaemon(colo_daemons.build_dir() / "blockd", "blockd", self.dir, tuple(args))
        assert colo_proto.status(self.daemon.sock).sandbox.seccomp_filter_installed

    @property
    def sock(self):
        return self.daemon.sock

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.nbd_socket}"

    def connect(self, export: str):
        import nbd  # python3-libnbd; tests that connect importorskip it
        handle = nbd.NBD()
        handle.connect_uri(self.uri(export))
        return handle

    def kill9(self):
        os.kill(self.daemon.proc.pid, signal.SIGKILL)
        self.daemon.proc.wait()
        self.daemon.close()

    def close(self):
        self.daemon.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def call(path, fds=(), **body):
    """One request to blockd, with fds attached; returns the Response."""
    s = colo_proto.connect(path)
    try:
        message = colo_proto.envelope.Request(id=1, fd_count=len(fds))
        for field, value in body.items():
            getattr(message, field).SetInParent()
            if value is not None:
                getattr(message, field).MergeFrom(value)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        s.sendmsg([message.SerializeToString()], ancillary)
        reply = colo_proto.envelope.Response()
        reply.ParseFromString(s.recv(colo_proto.MAX_DATAGRAM))
        return reply
    finally:
        s.close()


def open_disk(path, name, role, image, size=0, active="", hidden=""):
    reply = call(path, blockd_open_disk=blockd_pb2.BlockdOpenDiskRequest(
        name=name, role=role, image_path=str(image), create_size_bytes=size,
        active_path=str(active), hidden_path=str(hidden)))
    assert reply.WhichOneof("body") == "blockd_disk", reply
    return reply.blockd_disk


def disk_info(path, name):
    reply = call(path, blockd_status=blockd_pb2.BlockdStatusRequest())
    assert reply.WhichOneof("body") == "blockd_status", reply
    return next(d for d in reply.blockd_status.disks if d.name == name)


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def tcp_pair():
    """Two connected TCP sockets on loopback (the link's two ends)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return client, server


def attach_guest(path, disk):
    """A SOCK_SEQPACKET pair whose one end blockd now serves as `disk`'s
    block service; returns the other end (vmmd's)."""
    vmm_end, service = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reply = call(path, fds=[service.fileno()], blockd_attach_guest=blockd_pb2.BlockdAttachGuestRequest(
        disk=disk, socket=colo_proto.common.FdRef(index=0)))
    service.close()
    assert reply.WhichOneof("body") == "blockd_disk", reply
    return vmm_end


def attach_link(path, disk, sock, resync=False):
    reply = call(path, fds=[sock.fileno()], blockd_attach_link=blockd_pb2.BlockdAttachLinkRequest(
        disk=disk, socket=colo_proto.common.FdRef(index=0), resync=resync))
    sock.close()
    assert reply.WhichOneof("body") == "blockd_disk", reply
    return reply.blockd_disk
