#!/usr/bin/env python3
"""A block service for tests: serves vmmd's virtio-blk data path
(Proto/colo/control/block.proto) from a raw image file, until blockd does.

    block_backend.py --socket-fd N --image PATH [--read-only]

The socket (fd N, inherited) is one end of a SOCK_SEQPACKET pair whose other
end vmmd holds. vmmd's first message is `attach` with the guest RAM memfd;
this process maps it and from then on reads and writes the image straight
into and out of guest RAM (preadv/pwritev on memoryviews of the mapping:
one copy, image <-> guest). Every buffer is checked against the regions
vmmd declared and every request against the image size; a bad one gets an
IO_ERROR completion, never a write outside RAM or the image. Written in
Python on purpose: the protocol must not depend on Swift.
"""

from __future__ import annotations

import argparse
import mmap
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import colo_proto  # noqa: E402

block = colo_proto.block
MAX_DATAGRAM = 64 * 1024


def send(sock: socket.socket, **body) -> None:
    message = block.BlockMessage(**body)
    sock.send(message.SerializeToString())


def fail_session(sock: socket.socket, text: str) -> None:
    send(sock, error=colo_proto.common.Error(code=colo_proto.common.ERROR_CODE_INVALID_ARGUMENT,
                                              message=text))
    sys.exit(f"block_backend: {text}")


class GuestMemory:
    def __init__(self, fd: int, regions):
        size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self.regions = [(r.guest_address, r.size, r.memfd_offset) for r in regions]
        for _, rsize, offset in self.regions:
            if offset + rsize > size:
                raise ValueError(f"region at memfd offset {offset:#x} of {rsize:#x} bytes exceeds the memfd")

    def slice(self, address: int, length: int) -> memoryview:
        for start, size, offset in self.regions:
            if start <= address and address + length <= start + size:
                base = offset + (address - start)
                return self.view[base:base + length]
        raise ValueError(f"guest buffer {address:#x}+{length:#x} is outside RAM")


def serve(sock: socket.socket, image: int, read_only: bool) -> None:
    data, fds, _, _ = socket.recv_fds(sock, MAX_DATAGRAM, 4)
    if not data:
        return
    first = block.BlockMessage()
    first.ParseFromString(data)
    if first.WhichOneof("body") != "attach" or len(fds) != 1:
        fail_session(sock, "the first message must be attach with the guest RAM memfd")
    try:
        memory = GuestMemory(fds[0], first.attach.regions)
    except ValueError as e:
        fail_session(sock, str(e))
    os.close(fds[0])
    capacity = os.fstat(image).st_size
    send(sock, attached=block.BlockAttached(capacity_bytes=capacity, logical_block_size=512,
                                            read_only=read_only, supports_flush=True,
                                            serial="colo-test-disk"))
    # After attach no message carries fds: plain recv (any fd a broken
    # peer attaches anyway is discarded by the kernel, MSG_CTRUNC).
    while True:
        data = sock.recv(MAX_DATAGRAM)
        if not data:
            return
        message = block.BlockMessage()
        message.ParseFromString(data)
        if message.WhichOneof("body") != "request":
            fail_session(sock, f"expected a request, got {message.WhichOneof('body')}")
        send(sock, completion=handle(message.request, memory, image, capacity, read_only))


def handle(request, memory: GuestMemory, image: int, capacity: int, read_only: bool):
    done = block.BlockCompletion(id=request.id, status=block.BLOCK_STATUS_OK)
    try:
        if request.operation == block.BLOCK_OPERATION_FLUSH:
            os.fdatasync(image)
            return done
        if request.operation not in (block.BLOCK_OPERATION_READ, block.BLOCK_OPERATION_WRITE):
            done.status = block.BLOCK_STATUS_UNSUPPORTED
            return done
        views = [memory.slice(b.guest_address, b.length) for b in request.buffers]
        length = sum(len(v) for v in views)
        if request.offset + length > capacity:
            raise ValueError(f"request {request.offset:#x}+{length:#x} is past the end ({capacity:#x})")
        if request.operation == block.BLOCK_OPERATION_READ:
            # Within the image (checked above): the whole length is read.
            done.bytes_to_guest = os.preadv(image, views, request.offset) if views else 0
        else:
            if read_only:
                raise ValueError("the disk is read-only")
            written = os.pwritev(image, views, request.offset) if views else 0
            if written != length:
                raise OSError(f"short write: {written} of {length}")
            if request.fua:
                os.fdatasync(image)
    except (ValueError, OSError) as e:
        done.status = block.BLOCK_STATUS_IO_ERROR
        done.detail = str(e)
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket-fd", type=int, required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--read-only", action="store_true")
    a = ap.parse_args()
    sock = socket.socket(fileno=a.socket_fd)
    image = os.open(a.image, os.O_RDONLY if a.read_only else os.O_RDWR)
    serve(sock, image, a.read_only)


if __name__ == "__main__":
    main()
