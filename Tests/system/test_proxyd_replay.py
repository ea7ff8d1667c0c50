"""proxyd fed with real traffic recorded in namespaces (captures/, made by
captures/record.py): the primary guest's and the secondary guest's sides of
one TCP conversation, replayed into a real primary and secondary proxyd as
their guests' output, with the client's frames as the primary's external
input (mirrored to the secondary through the authenticated link).

The two captures cut the same 3000 bytes into different segments and start
from different ISNs: everything the primary sent must come out, unchanged,
with no checkpoint request. One byte changed in the secondary's stream must
bring a mismatch request instead."""

from __future__ import annotations

import os
import select
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import colo_daemons
import pcap_frames
import proxyd_pair
from proxyd_pair import Proxyd, peer_link_sockets, read_events, write_key

pytestmark = pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                                reason="systemd-socket-activate is not installed")

CAPTURES = Path(__file__).resolve().parent / "captures"
SERVER_PORT = 8000


def conversation():
    """(inbound, primary output, secondary output), each [(time, frame)]."""
    primary = pcap_frames.read(CAPTURES / "primary.pcap")
    secondary = pcap_frames.read(CAPTURES / "secondary.pcap")
    inbound = [(t, f) for t, f in primary if pcap_frames.TCP(f).dport == SERVER_PORT]
    primary_out = [(t, f) for t, f in primary if pcap_frames.TCP(f).sport == SERVER_PORT]
    secondary_out = [(t, f) for t, f in secondary if pcap_frames.TCP(f).sport == SERVER_PORT]
    return inbound, primary_out, secondary_out


class Drain(threading.Thread):
    """Collects every datagram arriving on the given sockets."""

    def __init__(self, *sockets: socket.socket):
        super().__init__(daemon=True)
        self.sockets = sockets
        self.received: dict[int, list[bytes]] = {s.fileno(): [] for s in sockets}
        self.stopping = False
        self.start()

    def run(self) -> None:
        while not self.stopping:
            ready, _, _ = select.select(self.sockets, [], [], 0.05)
            for s in ready:
                self.received[s.fileno()].append(s.recv(65536))


@pytest.fixture
def proxyds():
    keydir = colo_daemons.runtime_dir("replay-key")
    key = write_key(keydir)
    primary, secondary = Proxyd("replay-primary", key), Proxyd("replay-secondary", key)
    external, external_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    primary_guest, primary_guest_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    secondary_guest, secondary_guest_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events, events_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link_a, link_b = peer_link_sockets()
    try:
        assert primary.attach("primary", external=external_theirs.fileno(), guest=primary_guest_theirs.fileno(),
                              peer=link_a.fileno(), events=events_theirs.fileno(), timeout_ms=3000
                              ).WhichOneof("body") == "proxy_counters"
        assert secondary.attach("secondary", guest=secondary_guest_theirs.fileno(), peer=link_b.fileno()
                                ).WhichOneof("body") == "proxy_counters"
        for s in (external_theirs, primary_guest_theirs, secondary_guest_theirs, events_theirs, link_a, link_b):
            s.close()
        primary.wait_state("running")
        secondary.wait_state("running")
        yield primary, secondary, external, primary_guest, secondary_guest, events
    finally:
        for s in (external, primary_guest, secondary_guest, events):
            s.close()
        primary.close()
        secondary.close()
        shutil.rmtree(keydir, ignore_errors=True)


def replay(proxyds, secondary_output):
    """Feeds the conversation in capture order; returns the frames the
    primary released and the events it sent."""
    primary, secondary, external, primary_guest, secondary_guest, events = proxyds
    inbound, primary_out, _ = conversation()
    timeline = sorted([(t, 0, f) for t, f in inbound] + [(t, 1, f) for t, f in primary_out]
                      + [(t, 2, f) for t, f in secondary_output], key=lambda item: (item[0], item[1]))
    drain = Drain(external, primary_guest, secondary_guest)
    targets = (external, primary_guest, secondary_guest)
    for _, which, frame in timeline:
        targets[which].send(frame)
        time.sleep(0.003)
    deadline = time.monotonic() + 5
    while len(drain.received[external.fileno()]) < len(primary_out) and time.monotonic() < deadline:
        time.sleep(0.02)
    got_events = read_events(events, 0.3)
    drain.stopping = True
    drain.join()
    return drain.received[external.fileno()], got_events, drain.received[secondary_guest.fileno()]


def test_captures_differ_in_isn_and_segmentation():
    _, primary_out, secondary_out = conversation()

    def isn(frames):
        return next(pcap_frames.TCP(f).seq for _, f in frames if pcap_frames.TCP(f).flags & 0x02)

    def stream(frames):
        """The byte stream (retransmissions folded in) and the segment sizes."""
        data, sizes = {}, []
        for _, frame in frames:
            segment = pcap_frames.TCP(frame)
            if segment.payload:
                sizes.append(len(segment.payload))
                start = (segment.seq - isn(frames) - 1) % 2**32
                data.update({start + i: b for i, b in enumerate(segment.payload)})
        return bytes(data[i] for i in range(len(data))), sizes

    primary_bytes, primary_sizes = stream(primary_out)
    secondary_bytes, secondary_sizes = stream(secondary_out)
    assert len(primary_bytes) == 3000 and primary_bytes == secondary_bytes
    assert primary_sizes != secondary_sizes
    assert isn(primary_out) != isn(secondary_out)


def test_same_bytes_in_other_segments_and_other_isn_match(proxyds):
    _, primary_out, secondary_out = conversation()
    released, events, delivered = replay(proxyds, secondary_out)
    assert events == []
    assert released == [f for _, f in primary_out]
    counters = proxyds[0].counters()
    assert proxyd_pair.protocol_counters(counters, "tcp").matched == len(primary_out)
    assert counters.held_frames == 0
    # The secondary's own space: the client's ACKs were rewritten for it.
    assert proxyds[1].counters().rewritten_frames > 0
    assert len(delivered) == len(conversation()[0])


def test_one_differing_byte_requests_a_checkpoint(proxyds):
    _, primary_out, secondary_out = conversation()
    changed = list(secondary_out)
    index = next(i for i, (_, f) in enumerate(changed) if len(pcap_frames.TCP(f).payload) > 100)
    stamp, frame = changed[index]
    frame = bytearray(frame)
    frame[pcap_frames.TCP(bytes(frame)).tcp + pcap_frames.TCP(bytes(frame)).data_offset + 50] ^= 0x01
    pcap_frames.fix_tcp_checksum(frame)
    changed[index] = (stamp, bytes(frame))
    released, events, _ = replay(proxyds, changed)
    assert [e.WhichOneof("body") for e in events] == ["checkpoint_request"]
    assert events[0].checkpoint_request.reason == proxyd_pair.P.PROXY_CHECKPOINT_REASON_MISMATCH
    assert "payload differs" in events[0].checkpoint_request.connection
    assert len(released) < len(primary_out)
