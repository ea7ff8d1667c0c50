"""helpers/tap-forwarder: two namespaces' kernel stacks joined through their
forwarders' frame sockets (a relay thread of the test in between, in the
place a daemon would be) talk ARP, ICMP and TCP to each other."""

from __future__ import annotations

import os
import select
import socket
import threading

import pytest

import netns
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
