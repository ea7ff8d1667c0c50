"""Driving blockd from tests: its control requests (with fds), and the
TCP loopback pair that stands in for the replication link supervisord
would broker between two hosts."""

from __future__ import annotations

import array
import importlib
import socket
import time

import colo_proto

blockd_pb2 = importlib.import_module("colo.control.blockd_pb2")
PRIMARY = blockd_pb2.BLOCKD_DISK_ROLE_PRIMARY
SECONDARY = blockd_pb2.BLOCKD_DISK_ROLE_SECONDARY


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


def attach_link(path, disk, sock, resync=False):
    reply = call(path, fds=[sock.fileno()], blockd_attach_link=blockd_pb2.BlockdAttachLinkRequest(
        disk=disk, socket=colo_proto.common.FdRef(index=0), resync=resync))
    sock.close()
    assert reply.WhichOneof("body") == "blockd_disk", reply
    return reply.blockd_disk
