"""helpers/tap-forwarder: two namespaces' kernel stacks joined through their
forwarders' frame sockets (a relay thread of the test in between, in the
place a daemon would be) talk ARP, ICMP and TCP to each other; as a VM's
NIC (vmm.Forwarder) it follows the VM to a new frame socket and counts
the frames it moved."""

from __future__ import annotations

import os
import select
import socket
import threading

import pytest

import netns
import vmm
from tap_forwarder import GuestLink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def relay(a: socket.socket, b: socket.socket, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        ready, _, _ = select.select([a, b], [], [], 0.1)
        for s in ready:
            frame = s.recv(65536)
            if not frame:
                return
            seen.append(len(frame))
            (b if s is a else a).send(frame)


def test_two_namespaces_talk_through_their_frame_sockets():
    with netns.NetNS(subnet=60) as left, netns.NetNS(subnet=60, address="10.77.60.2") as right, \
            GuestLink(left) as left_link, GuestLink(right) as right_link:
        stop = threading.Event()
        seen: list[int] = []
        thread = threading.Thread(target=relay, args=(left_link.socket, right_link.socket, stop, seen))
        thread.start()
        try:
            right.exec("ping", "-c", "1", "-W", "5", "10.77.60.1", timeout=10)
            server = right.socket()
            server.bind(("10.77.60.2", 7000))
            server.listen()
            client = left.connect(("10.77.60.2", 7000))
            peer, _ = server.accept()
            payload = os.urandom(200_000)
            client.sendall(payload)
            received = b""
            peer.settimeout(10)
            while len(received) < len(payload):
                received += peer.recv(65536)
            assert received == payload
            for s in (client, peer, server):
                s.close()
        finally:
            stop.set()
            thread.join()
        # Every frame crossed as one datagram with its Ethernet header.
        assert seen and min(seen) >= 42


def test_forwarder_exits_when_the_socket_peer_closes():
    with netns.NetNS(subnet=61) as ns:
        link = GuestLink(ns)
        link.socket.close()
        assert link.proc.wait(timeout=5) == 0
        link.close()


VM_MAC = bytes.fromhex("020000000099")


def arp_request(target: str, sender: str) -> bytes:
    """Who has `target`? Tell `sender` (at VM_MAC), broadcast."""
    return (b"\xff" * 6 + VM_MAC + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + VM_MAC
            + socket.inet_aton(sender) + b"\x00" * 6 + socket.inet_aton(target))


def arp_reply_arrives(sock: socket.socket, timeout: float = 3.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            frame = sock.recv(65536)
            if not frame:
                return False        # the forwarder let go of this socket
            if frame[:6] == VM_MAC and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02":
                return True
    except socket.timeout:
        return False


def test_the_tap_moves_to_a_switched_socket_and_stats_count_frames():
    """vmm.Forwarder (a VM's NIC): the tap follows the VM to a new frame
    socket (a migration), and the counters show the frames moved."""
    with netns.NetNS(subnet=62) as ns, vmm.Forwarder(ns, switchable=True) as forwarder:
        first = forwarder.vmm_end
        first.send(arp_request(ns.host_ip, ns.guest_ip))
        assert arp_reply_arrives(first)
        second = forwarder.new_socket()
        forwarder.switch()
        second.send(arp_request(ns.host_ip, ns.guest_ip))
        assert arp_reply_arrives(second)
        assert not arp_reply_arrives(first, timeout=0.3), "the old socket is no longer fed"
        second.close()
    stats = forwarder.stats()
    assert stats["frames_out"] >= 2 and stats["frames_in"] >= 2, stats
