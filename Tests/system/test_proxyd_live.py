"""proxyd live, between real kernel TCP stacks in network namespaces: a
client talks through the primary proxyd to a "primary" and a "secondary"
server (two namespaces with the same address and MAC, different ISNs), as
it would to a COLO pair of guests. The test plays supervisord: it holds the
event socket and says "checkpoint done"."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

import proxyd_pair
from proxyd_pair import GuestPair, protocol_counters, read_events
from tap_forwarder import GuestLink

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]

PORT = 7000


class Server:
    """A line server in a namespace: answers "answer:<line>" (or, when
    `diverge` is set, something else; nothing when `mute` is), in `chunks`
    writes."""

    def __init__(self, ns, chunks: int = 1):
        self.listener = ns.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("10.77.70.2", PORT))
        self.listener.listen()
        self.chunks = chunks
        self.diverge = False
        self.mute = False
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                conn.close()
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if self.mute:
                    continue
                reply = (b"different:" if self.diverge else b"answer:") + line + b"\n"
                step = max(1, len(reply) // self.chunks)
                for start in range(0, len(reply), step):
                    conn.sendall(reply[start:start + step])

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def pair():
    with GuestPair(timeout_ms=300) as p:
        p.primary_server = Server(p.primary_guest)
        p.secondary_server = Server(p.secondary_guest, chunks=3)   # cuts its answers differently
        yield p
        p.primary_server.close()
        p.secondary_server.close()


def request(conn: socket.socket, line: bytes, timeout: float = 5.0) -> bytes:
    conn.settimeout(timeout)
    conn.sendall(line + b"\n")
    answer = b""
    while not answer.endswith(b"\n"):
        data = conn.recv(65536)
        assert data, "connection closed"
        answer += data
    return answer


def test_same_answers_pass_without_a_checkpoint(pair):
    conn = pair.client.connect(("10.77.70.2", PORT))
    for index in range(20):
        payload = b"request-%d-" % index + b"x" * (index * 97)
        assert request(conn, payload) == b"answer:" + payload + b"\n"
    conn.close()
    assert read_events(pair.events, 0.5) == []
    counters = pair.primary.counters()
    tcp = protocol_counters(counters, "tcp")
    assert tcp.matched >= 20 and tcp.mismatched == 0 and tcp.expired == 0, counters
    assert counters.checkpoints_requested == 0
    assert sum(counters.held_time_histogram_us) >= tcp.matched
    # The secondary's ISN differed: its output was rewritten.
    assert pair.secondary.counters().rewritten_frames > 0


def test_divergent_answer_requests_a_checkpoint_then_primary_answer_is_released(pair, tmp_path):
    capture_path = tmp_path / "mismatches.pcap"
    capture_fd = os.open(capture_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    capture = proxyd_pair.P.ProxyCapture()
    capture.file.index = 0
    try:
        assert pair.primary.call([capture_fd], proxy_capture=capture).proxy_counters.capturing
    finally:
        os.close(capture_fd)
    conn = pair.client.connect(("10.77.70.2", PORT))
    assert request(conn, b"hello") == b"answer:hello\n"
    pair.secondary_server.diverge = True
    conn.sendall(b"second\n")
    events = read_events(pair.events, 0.3 + 1.0)
    assert [e.WhichOneof("body") for e in events] == ["checkpoint_request"], events
    checkpoint = events[0].checkpoint_request
    assert checkpoint.reason == proxyd_pair.P.PROXY_CHECKPOINT_REASON_MISMATCH, \
        (checkpoint, pair.primary.counters(), pair.primary.output())
    assert checkpoint.protocol == proxyd_pair.P.PROXY_PROTOCOL_TCP
    assert "10.77.70.2:7000" in checkpoint.connection
    # Held: the client has not seen the primary's answer yet.
    conn.settimeout(0.2)
    with pytest.raises(socket.timeout):
        conn.recv(100)
    pair.checkpoint_done()
    conn.settimeout(5)
    assert conn.recv(100) == b"answer:second\n"
    counters = pair.primary.counters()
    assert protocol_counters(counters, "tcp").mismatched == 1
    assert counters.checkpoints_done == 1 and counters.released_by_checkpoint >= 1
    conn.close()
    # The mismatching frames, as tshark reads them: the primary's answer and
    # the secondary's different one.
    assert not pair.primary.call(proxy_capture={}).proxy_counters.capturing
    shown = subprocess.run(["tshark", "-r", str(capture_path), "-T", "fields", "-e", "tcp.payload"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert b"answer:second\n".hex() in shown
    assert any(bytes.fromhex(p).startswith(b"diff") for p in shown), shown


def test_secondary_guest_socket_replaced_after_a_resync(pair):
    # A VM created anew by a resync has the primary's ARP cache; this
    # namespace's would be flushed when its tap loses its forwarder (carrier
    # down), and the secondary would then ARP where the primary does not.
    pair.secondary_guest.ip("neigh", "replace", "10.77.70.1", "lladdr", proxyd_pair.CLIENT_MAC,
                            "nud", "permanent", "dev", "tap0")
    conn = pair.client.connect(("10.77.70.2", PORT))
    assert request(conn, b"before") == b"answer:before\n"
    # The secondary VM is created anew (a resync): its old frame socket
    # closes and vmmd hands proxyd the new one. (No "checkpoint done" here:
    # it would zero the rewriter's offsets, and these two kernel stacks,
    # unlike a resynchronised VM, keep their different sequence numbers.)
    pair.secondary_link.close()
    pair.secondary.wait_state("guest-closed")
    link = GuestLink(pair.secondary_guest)
    pair.closers.append(link.close)
    try:
        reply = pair.secondary.replace_guest(link.socket.fileno())
    finally:
        link.socket.close()
    assert reply.proxy_counters.state == "running", reply
    # The client's connection goes on, answered only once the secondary's
    # new socket delivered the same bytes.
    for index in range(5):
        assert request(conn, b"after-%d" % index) == b"answer:after-%d\n" % index
    assert read_events(pair.events, 0.5) == []
    counters = pair.primary.counters()
    assert protocol_counters(counters, "tcp").mismatched == 0 and counters.checkpoints_requested == 0, counters
    conn.close()
    bad = pair.secondary.call(proxy_replace_guest={})
    assert bad.WhichOneof("body") == "error", bad


def test_checkpoint_done_releases_frames_held_for_a_silent_secondary(pair):
    # The secondary guest's output is lost (its socket taken away): the
    # primary's answer is held, expires, and "checkpoint done" releases it.
    conn = pair.client.connect(("10.77.70.2", PORT))
    assert request(conn, b"hello") == b"answer:hello\n"
    pair.secondary_link.close()
    conn.sendall(b"held\n")
    events = read_events(pair.events, 0.3 + 1.0)
    assert [e.checkpoint_request.reason for e in events] == [proxyd_pair.P.PROXY_CHECKPOINT_REASON_EXPIRED], events
    conn.settimeout(0.2)
    with pytest.raises(socket.timeout):
        conn.recv(100)
    assert pair.primary.counters().held_frames >= 1
    pair.checkpoint_done()
    conn.settimeout(5)
    assert conn.recv(100) == b"answer:held\n"
    counters = pair.primary.counters()
    assert counters.held_frames == 0 and counters.released_by_checkpoint >= 1, counters
    conn.close()


def gratuitous_arps(sock: socket.socket, address: str, timeout: float) -> int:
    """Gratuitous ARP frames for `address` read from a packet socket."""
    wanted = socket.inet_aton(address)
    count = 0
    sock.settimeout(timeout)
    try:
        while True:
            frame = sock.recv(2048)
            # Ethernet (14) + ARP: sender protocol address at 28, target at 38.
            if len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[28:32] == wanted == frame[38:42]:
                count += 1
    except socket.timeout:
        return count


def test_secondary_takes_over_the_clients_connection(pair):
    conn = pair.client.connect(("10.77.70.2", PORT))
    for index in range(5):
        assert request(conn, b"before-%d" % index) == b"answer:before-%d\n" % index
    # What reaches the client's interface, to see the announcement.
    with pair.client.entered():
        arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    arp.bind(("ext0", 0))
    # The primary host is lost: its proxyd and its guest go away.
    pair.primary.daemon.close()
    pair.primary_server.close()
    pair.primary_link.close()
    reply = pair.secondary.call(proxy_pass_through={})
    assert reply.WhichOneof("body") == "proxy_counters", reply
    assert reply.proxy_counters.announcements_sent == 1
    assert reply.proxy_counters.state == "pass-through"
    try:
        assert gratuitous_arps(arp, "10.77.70.2", 0.5) == 1
    finally:
        arp.close()
    # The same connection, now answered by the secondary (which cuts its
    # answers in three): sequence numbers rewritten into the primary's space.
    for index in range(5):
        assert request(conn, b"after-%d" % index, timeout=10) == b"answer:after-%d\n" % index
    assert pair.secondary.counters().rewritten_frames > 0
    conn.close()


def test_take_over_sends_what_the_secondary_answered_while_the_link_was_down(pair):
    """The primary dies with the secondary's answer in its comparison queue
    (its own guest never answered). The secondary guest's TCP resends the
    answer on its timer (0.2 s, 0.6 s, 1.4 s after the first) while its
    proxyd has no link and no permission to serve yet; at the take-over
    that retransmission goes out at once, instead of at the next timeout
    (3 s), and the guest is prompted to resend what is outstanding."""
    conn = pair.client.connect(("10.77.70.2", PORT))
    assert request(conn, b"before") == b"answer:before\n"
    pair.primary_server.mute = True
    conn.sendall(b"lost\n")
    time.sleep(0.05)
    pair.primary.daemon.close()
    pair.primary_server.close()
    pair.primary_link.close()
    time.sleep(1.6)
    taken_over = time.monotonic()
    reply = pair.secondary.call(proxy_pass_through={})
    assert reply.WhichOneof("body") == "proxy_counters", reply
    conn.settimeout(5)
    answer = b""
    while not answer.endswith(b"\n"):
        data = conn.recv(65536)
        assert data, "connection closed"
        answer += data
    waited = time.monotonic() - taken_over
    assert answer == b"answer:lost\n"
    assert waited < 0.5, f"the answer came {waited:.2f} s after the take-over:\n{pair.secondary.output()}"
    log = pair.secondary.output()
    assert "event=takeover_output" in log and "prompted_connections=1" in log, log
    assert "released_frames=0" not in log, log
    assert request(conn, b"after") == b"answer:after\n"
    conn.close()


def answer_through_checkpoints(pair, conn: socket.socket, timeout: float = 5.0) -> bytes:
    """One answer line, saying "checkpoint done" whenever the primary asks
    (the rest of an answer cut in pieces may be held again)."""
    answer = b""
    deadline = time.monotonic() + timeout
    conn.settimeout(0.2)
    while not answer.endswith(b"\n"):
        assert time.monotonic() < deadline, answer
        try:
            data = conn.recv(65536)
            assert data, "connection closed"
            answer += data
        except socket.timeout:
            if read_events(pair.events, 0.05):
                pair.checkpoint_done()
    return answer


def test_survivor_attached_anew_compares_against_a_new_secondary(pair):
    old = pair.client.connect(("10.77.70.2", PORT))
    assert request(old, b"before") == b"answer:before\n"
    # Take-over: the primary host is lost, the secondary goes pass-through.
    pair.primary.daemon.close()
    pair.primary_server.close()
    pair.primary_link.close()
    assert pair.secondary.call(proxy_pass_through={}).proxy_counters.state == "pass-through"
    assert request(old, b"survivor", timeout=10) == b"answer:survivor\n"
    rewritten = pair.secondary.counters().rewritten_frames
    # Resync: the survivor's proxyd becomes the primary of a new pair.
    survivor_server = pair.secondary_server
    pair.resync_onto_survivor()
    pair.secondary_server = Server(pair.secondary_guest)
    counters = pair.primary.counters()
    assert counters.role == proxyd_pair.P.PROXY_ROLE_PRIMARY and counters.inbound_frames == 0, counters
    assert counters.rewritten_frames >= rewritten, "the survivor's rewriter stays in the path"
    # Comparing with a live link: another attach is refused, nothing changes.
    refused = pair.primary.attach("pass-through", external=pair.external_fd, guest=pair.primary_link.socket.fileno())
    assert refused.WhichOneof("body") == "error" and "live peer link" in refused.error.message, refused
    assert pair.primary.counters().state == "running"

    # A new connection: both guests answer alike, nothing is requested...
    conn = pair.client.connect(("10.77.70.2", PORT))
    for index in range(3):
        assert request(conn, b"new-%d" % index) == b"answer:new-%d\n" % index
    assert read_events(pair.events, 0.5) == []
    assert protocol_counters(pair.primary.counters(), "tcp").matched >= 3
    # ...until the new secondary answers differently.
    pair.secondary_server.diverge = True
    conn.sendall(b"differs\n")
    events = read_events(pair.events, 0.3 + 1.0)
    assert [e.checkpoint_request.reason for e in events] == [proxyd_pair.P.PROXY_CHECKPOINT_REASON_MISMATCH], events
    pair.checkpoint_done()
    assert answer_through_checkpoints(pair, conn) == b"answer:differs\n"
    conn.close()

    # The connection from before the failover goes on in the client's
    # sequence space (the new secondary, no copy of a real VM here, does not
    # know it: a checkpoint releases the survivor's answer).
    old.sendall(b"after-resync\n")
    assert read_events(pair.events, 0.3 + 1.0), "the new secondary's answer is compared"
    pair.checkpoint_done()
    assert answer_through_checkpoints(pair, old) == b"answer:after-resync\n"
    old.close()
    survivor_server.close()


def test_primary_whose_link_failed_is_attached_anew_as_pass_through(pair):
    conn = pair.client.connect(("10.77.70.2", PORT))
    assert request(conn, b"before") == b"answer:before\n"
    pair.secondary.daemon.close()
    pair.primary.wait_state("link-failed")
    reply = pair.primary.attach("pass-through", external=pair.external_fd, guest=pair.primary_link.socket.fileno())
    assert reply.WhichOneof("body") == "proxy_counters", reply
    pair.primary.wait_state("pass-through")
    assert request(conn, b"after") == b"answer:after\n"
    conn.close()
