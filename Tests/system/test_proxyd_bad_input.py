"""proxyd under bad input: malformed control requests, and frames with
truncated headers, lying lengths, garbage options and enormous sizes from
every side (guest, external, the peer link), a peer that is not a peer and
one whose frame stream lies. proxyd answers with typed errors, counts what
it cannot parse, compares it as bytes, and keeps running."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import shutil
import socket
import struct
import time

import pytest

import colo_daemons
import pcap_frames
from proxyd_pair import P, Proxyd, peer_link_sockets, read_events, write_key

pytestmark = pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                                reason="systemd-socket-activate is not installed")

KEY = b"proxyd-test-key-0123456789abcdef"


@pytest.fixture
def proxyd():
    keydir = colo_daemons.runtime_dir("bad-key")
    daemon = Proxyd("bad-input", write_key(keydir))
    yield daemon
    daemon.close()
    shutil.rmtree(keydir, ignore_errors=True)


def authenticate_as_responder(sock: socket.socket, channel: bytes = b"proxyd-frames") -> None:
    """The responder's side of PeerAuthentication (Sources/PeerAuthentication)."""
    nonce = os.urandom(32)
    sock.sendall(b"COLOPEER" + bytes([1, 1, len(channel)]) + channel + nonce)
    header = recv_exact(sock, 11)
    peer_channel = recv_exact(sock, header[10])
    peer_nonce = recv_exact(sock, 32)
    assert header[:8] == b"COLOPEER" and peer_channel == channel
    sock.sendall(hmac.new(KEY, b"colo-peer-v1" + bytes([1]) + channel + peer_nonce + nonce, hashlib.sha256).digest())
    recv_exact(sock, 32)


def recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "closed"
        data += chunk
    return data


def bad_frames() -> list[bytes]:
    good = bytes.fromhex("020000c0100152540000c010020800") + bytes.fromhex(
        "4500002c0000400040060000"  # IPv4, total length 44
        "0a4d46020a4d4601") + struct.pack("!HHIIBBHHH", 80, 4000, 1, 2, 0x60, 0x18, 100, 0, 0) + b"\x02\x04\x05\xb4"
    frames = [b"", b"\x01", good[:10], good[:20], good[:36], good[:50]]
    lying = bytearray(good)
    lying[16:18] = b"\xff\xff"                      # IPv4 total length beyond the frame
    frames.append(bytes(lying))
    lying = bytearray(good)
    lying[14] = 0x4f                                # IHL 60
    frames.append(bytes(lying))
    lying = bytearray(good)
    lying[14 + 20 + 12] = 0xf0                      # TCP data offset 60
    frames.append(bytes(lying))
    garbage = bytearray(good)
    garbage[54:58] = b"\x08\x03\x00\x00"            # timestamp option of length 3
    frames.append(bytes(garbage))
    garbage[54:58] = b"\x05\x00\x00\x00"            # zero-length option
    frames.append(bytes(garbage))
    frames.append(good[:12] + b"\x81\x00\x00\x01" * 3 + good[12:])   # three VLAN tags
    frames.append(good + b"\0" * 70_000)            # enormous
    rng = random.Random(7)
    frames += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(300)]
    frames += [good[:14] + bytes(rng.randrange(256) for _ in range(60)) for _ in range(300)]
    return frames


def test_bad_attach_requests_get_typed_errors(proxyd):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        reply = proxyd.call([], proxy_attach=P.ProxyAttach(role=P.PROXY_ROLE_UNSPECIFIED))
        assert reply.error.code == 5, reply                       # INVALID_ARGUMENT
        attach = P.ProxyAttach(role=P.PROXY_ROLE_PASS_THROUGH, compare_timeout_ms=10)
        attach.external.index = 0
        attach.guest.index = 3
        reply = proxyd.call([a.fileno()], proxy_attach=attach)
        assert reply.error.code == 7, reply                       # MISSING_FD
        attach.guest.index = 0
        reply = proxyd.call([a.fileno()], proxy_attach=attach)
        assert reply.error.code == 5 and "reuses" in reply.error.message, reply
        attach.guest.index = 1
        attach.guest_mac = "not-a-mac"
        reply = proxyd.call([a.fileno(), b.fileno()], proxy_attach=attach)
        assert reply.error.code == 5 and "guest_mac" in reply.error.message, reply
        attach.guest_mac = ""
        attach.guest_addresses.append("10.1.2")
        reply = proxyd.call([a.fileno(), b.fileno()], proxy_attach=attach)
        assert reply.error.code == 5 and "10.1.2" in reply.error.message, reply
        reply = proxyd.call([], proxy_checkpoint_done={})
        assert reply.error.code == 6, reply                       # FAILED_PRECONDITION: not attached
    finally:
        a.close()
        b.close()
    assert proxyd.daemon.proc.poll() is None


def test_garbage_frames_from_every_side_never_crash_proxyd(proxyd):
    external, external_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    guest, guest_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events, events_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link, link_theirs = peer_link_sockets()
    for s in (external, guest):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    try:
        reply = proxyd.attach("primary", external=external_theirs.fileno(), guest=guest_theirs.fileno(),
                              peer=link_theirs.fileno(), events=events_theirs.fileno(), timeout_ms=50,
                              queue_limit=100_000)
        assert reply.WhichOneof("body") == "proxy_counters", reply
        for s in (external_theirs, guest_theirs, events_theirs, link_theirs):
            s.close()
        authenticate_as_responder(link)
        proxyd.wait_state("running")
        link.sendall(pcap_frames_header())
        frames = bad_frames()
        for frame, other in zip(frames, reversed(frames)):
            guest.send(frame)
            external.send(frame)
            # The "secondary" sends the same garbage in another order: mismatches.
            if other and len(other) < 65_000:
                link.sendall(struct.pack("<IIII", 0, 0, len(other), len(other)) + other)
        time.sleep(0.5)
        counters = proxyd.counters()
        assert counters.malformed_frames >= 20, counters
        assert counters.inbound_frames > 600, counters
        events_seen = read_events(events, 1.0)
        assert any(e.WhichOneof("body") == "checkpoint_request" for e in events_seen)
        # A frame stream that lies about a record's length ends the link, not proxyd.
        link.sendall(struct.pack("<IIII", 0, 0, 0x7fffffff, 0x7fffffff))
        deadline = time.monotonic() + 5
        while proxyd.counters().state != "link-failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lost = [e for e in read_events(events, 1.0) if e.WhichOneof("body") == "link_lost"]
        assert lost and "exceeds" in lost[0].link_lost.reason, lost
        assert proxyd.daemon.proc.poll() is None
        assert proxyd.call(proxy_checkpoint_done={}).WhichOneof("body") == "proxy_counters"
    finally:
        for s in (external, guest, events, link):
            s.close()


def test_a_peer_without_the_key_is_refused(proxyd):
    external, external_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    guest, guest_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events, events_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link, link_theirs = peer_link_sockets()
    try:
        proxyd.attach("primary", external=external_theirs.fileno(), guest=guest_theirs.fileno(),
                      peer=link_theirs.fileno(), events=events_theirs.fileno())
        for s in (external_theirs, guest_theirs, events_theirs, link_theirs):
            s.close()
        link.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 64)
        proxyd.wait_state("link-failed")
        lost = [e for e in read_events(events, 1.0) if e.WhichOneof("body") == "link_lost"]
        assert lost and "authentication" in lost[0].link_lost.reason, lost
        assert proxyd.daemon.proc.poll() is None
    finally:
        for s in (external, guest, events, link):
            s.close()


def pcap_frames_header() -> bytes:
    return struct.pack("<IHHiIII", pcap_frames.MAGIC, 2, 4, 0, 0, 65535 + 22, 1)
