"""The control protocol in Python, generated from Proto/ at import time.

protoc (Debian's protobuf-compiler) writes the Python modules into a cache
directory keyed by the sources' hash, so tests always speak the protocol as
Proto/ defines it now, and nothing generated is committed twice.
"""

from __future__ import annotations

import hashlib
import importlib
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "Proto"


def _generate() -> Path:
    sources = sorted(PROTO.rglob("*.proto"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"colo-proto-py-{digest}"
    if not (out / "colo" / "control" / "envelope_pb2.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["protoc", f"-I{PROTO}", f"--python_out={out}",
                        *[str(p.relative_to(PROTO)) for p in sources]], check=True)
    return out


sys.path.insert(0, str(_generate()))
envelope = importlib.import_module("colo.control.envelope_pb2")
common = importlib.import_module("colo.control.common_pb2")
vmmd = importlib.import_module("colo.control.vmmd_pb2")
block = importlib.import_module("colo.control.block_pb2")
vmstate = importlib.import_module("colo.control.vmstate_pb2")
proxyd = importlib.import_module("colo.control.proxyd_pb2")

MAX_DATAGRAM = 64 * 1024


def request(request_id: int, **body) -> bytes:
    """A serialized Request; `body` names one oneof field, e.g. status={}."""
    message = envelope.Request(id=request_id)
    for field, value in body.items():
        getattr(message, field).SetInParent()
        if value:
            getattr(message, field).MergeFrom(value)
    return message.SerializeToString()


def connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(str(path))
    return s


def call(path_or_socket, request_bytes: bytes):
    """Send one datagram and decode the one reply as a Response."""
    s = connect(path_or_socket) if not isinstance(path_or_socket, socket.socket) else path_or_socket
    try:
        s.send(request_bytes)
        reply = envelope.Response()
        reply.ParseFromString(s.recv(MAX_DATAGRAM))
        return reply
    finally:
        if s is not path_or_socket:
            s.close()


def status(path):
    """The DaemonStatus of the daemon at path."""
    reply = call(path, request(1, status={}))
    assert reply.WhichOneof("body") == "status", reply
    return reply.status
