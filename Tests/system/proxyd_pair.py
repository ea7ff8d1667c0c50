"""A primary and a secondary proxyd, as the issue-7 tests and benchmarks
use them: each a real process behind systemd-socket-activate with its
seccomp filter on, attached to fds the test hands over (as supervisord
will): the external side, the guest's frame socket, the authenticated TCP
link between the two, and the event socket whose other end the test holds.

``GuestPair`` adds the guests: two namespaces with the same MAC and IP
address, each a real kernel stack behind a tap bridged to its proxyd's guest
socket (tap_forwarder), and a client namespace whose tap is the primary's
external interface.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import colo_daemons
import colo_proto
import netns
from tap_forwarder import GuestLink, open_tap

P = colo_proto.proxyd
GUEST_MAC = "52:54:00:c0:10:02"
CLIENT_MAC = "02:00:00:c0:10:01"
ROLES = {"primary": P.PROXY_ROLE_PRIMARY, "secondary": P.PROXY_ROLE_SECONDARY,
         "pass-through": P.PROXY_ROLE_PASS_THROUGH}


def write_key(directory: Path) -> Path:
    path = directory / "peer.key"
    path.write_bytes(b"proxyd-test-key-0123456789abcdef")
    os.chmod(path, 0o600)
    return path


def peer_link_sockets() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection (the link between hosts)."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    finally:
        listener.close()
    return client, server


class Proxyd:
    def __init__(self, name: str, key: Path | None):
        self.dir = colo_daemons.runtime_dir(f"proxyd-{name}")
        args = ("--peer-key", str(key)) if key else ()
        self.daemon = colo_daemons.ActivatedDaemon(colo_daemons.build_dir() / "proxyd", "proxyd", self.dir, args)
        # The socket file appears at bind(), a moment before listen().
        deadline = time.monotonic() + 5
        while True:
            try:
                self.control = colo_proto.connect(self.daemon.sock)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.control.settimeout(15)
        self.next_id = 1

    def call(self, fds: list[int] = (), **body):
        """One request (body as in colo_proto.request) with fds attached; the Response."""
        self.next_id += 1
        message = colo_proto.envelope.Request(id=self.next_id, fd_count=len(fds))
        for field, value in body.items():
            getattr(message, field).SetInParent()
            if value:
                getattr(message, field).MergeFrom(value)
        socket.send_fds(self.control, [message.SerializeToString()], list(fds))
        reply = colo_proto.envelope.Response()
        reply.ParseFromString(self.control.recv(colo_proto.MAX_DATAGRAM))
        assert reply.id == self.next_id, reply
        return reply

    def attach(self, role: str, external: int | None = None, guest: int | None = None, peer: int | None = None,
               events: int | None = None, timeout_ms: int = 300, queue_limit: int = 0,
               addresses: tuple[str, ...] = ("10.77.70.2",)):
        fds: list[int] = []
        attach = P.ProxyAttach(role=ROLES[role], compare_timeout_ms=timeout_ms, queue_limit=queue_limit,
                               guest_mac=GUEST_MAC, guest_addresses=list(addresses))
        for field, fd in (("external", external), ("guest", guest), ("peer", peer), ("events", events)):
            if fd is not None:
                getattr(attach, field).index = len(fds)
                fds.append(fd)
        return self.call(fds, proxy_attach=attach)

    def replace_guest(self, guest: int):
        """A new guest frame socket (the guest's VM was created anew)."""
        replace = P.ProxyReplaceGuest()
        replace.guest.index = 0
        return self.call([guest], proxy_replace_guest=replace)

    def counters(self):
        reply = self.call(proxy_counters={})
        assert reply.WhichOneof("body") == "proxy_counters", reply
        return reply.proxy_counters

    def wait_state(self, state: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while (current := self.counters().state) != state:
            assert time.monotonic() < deadline, f"proxyd state {current!r}, expected {state!r}:\n{self.output()}"
            time.sleep(0.02)

    def output(self) -> str:
        return self.daemon.output()

    def close(self) -> None:
        self.control.close()
        self.daemon.close()
        colo_daemons.shutil.rmtree(self.dir, ignore_errors=True)


def protocol_counters(counters, name: str):
    number = getattr(P, f"PROXY_PROTOCOL_{name.upper()}")
    return next(c for c in counters.protocols if c.protocol == number)


def read_events(sock: socket.socket, timeout: float) -> list:
    """ProxyEvents arriving within `timeout`."""
    events = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            break
        event = P.ProxyEvent()
        event.ParseFromString(data)
        events.append(event)
    return events


def quiet_namespace(ns: netns.NetNS) -> None:
    """No IPv6 chatter (router solicitations, MLD reports at random times):
    the tests control every frame the stacks send."""
    ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    ns.exec("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")


class GuestPair:
    """client namespace -> primary proxyd -> primary "guest" namespace, and
    the secondary proxyd with the secondary "guest" namespace; both guests
    10.77.70.2 with the same MAC, the client 10.77.70.1."""

    def __init__(self, timeout_ms: int = 300, queue_limit: int = 0, start_secondary: bool = True):
        self.closers = []
        try:
            self._build(timeout_ms, queue_limit, start_secondary)
        except BaseException:
            self.close()
            raise

    def _build(self, timeout_ms: int, queue_limit: int, start_secondary: bool) -> None:
        self.client = netns.NetNS(subnet=70, tap="ext0", mac=CLIENT_MAC)
        self.closers.append(self.client.close)
        self.primary_guest = netns.NetNS(subnet=70, address="10.77.70.2", mac=GUEST_MAC)
        self.closers.append(self.primary_guest.close)
        self.secondary_guest = netns.NetNS(subnet=70, address="10.77.70.2", mac=GUEST_MAC)
        self.closers.append(self.secondary_guest.close)
        for ns in (self.client, self.primary_guest, self.secondary_guest):
            quiet_namespace(ns)
        self.external_fd = open_tap(self.client, "ext0")
        self.closers.append(lambda: os.close(self.external_fd))
        self.primary_link = GuestLink(self.primary_guest)
        self.closers.append(self.primary_link.close)
        self.secondary_link = GuestLink(self.secondary_guest)
        self.closers.append(self.secondary_link.close)

        self.keydir = colo_daemons.runtime_dir("proxyd-key")
        self.closers.append(lambda: colo_daemons.shutil.rmtree(self.keydir, ignore_errors=True))
        key = write_key(self.keydir)
        self.primary = Proxyd("primary", key)
        self.closers.append(self.primary.close)
        self.secondary = Proxyd("secondary", key)
        self.closers.append(self.secondary.close)
        link_a, link_b = peer_link_sockets()
        self.events, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.closers.append(self.events.close)
        secondary_events, secondary_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.secondary_events = secondary_events
        self.closers.append(secondary_events.close)
        try:
            reply = self.primary.attach("primary", external=self.external_fd, guest=self.primary_link.socket.fileno(),
                                        peer=link_a.fileno(), events=theirs.fileno(), timeout_ms=timeout_ms,
                                        queue_limit=queue_limit)
            assert reply.WhichOneof("body") == "proxy_counters", reply
            reply = self.secondary.attach("secondary", external=self.external_fd,
                                          guest=self.secondary_link.socket.fileno(), peer=link_b.fileno(),
                                          events=secondary_theirs.fileno())
            assert reply.WhichOneof("body") == "proxy_counters", reply
        finally:
            for s in (link_a, link_b, theirs, secondary_theirs):
                s.close()
        self.primary.wait_state("running")
        self.secondary.wait_state("running")

    def checkpoint_done(self) -> None:
        for proxyd in (self.primary, self.secondary):
            reply = proxyd.call(proxy_checkpoint_done={})
            assert reply.WhichOneof("body") == "proxy_counters", reply

    def resync_onto_survivor(self, timeout_ms: int = 300) -> None:
        """After a take-over (the secondary proxyd in pass-through): a fresh
        secondary joins, as `coloctl resync` makes one. The survivor's proxyd
        is attached anew as primary (the same external tap and guest socket,
        sent again, a new link and events socket), and a new secondary proxyd
        with a new "guest" namespace follows it. Afterwards `primary` is the
        survivor, `secondary` the new one, `events` the survivor's events."""
        new_guest = netns.NetNS(subnet=70, address="10.77.70.2", mac=GUEST_MAC)
        self.closers.append(new_guest.close)
        quiet_namespace(new_guest)
        # A resynchronised VM has the primary's ARP cache: neither guest asks.
        for ns, dev in ((self.secondary_guest, "tap0"), (new_guest, "tap0")):
            ns.ip("neigh", "replace", "10.77.70.1", "lladdr", CLIENT_MAC, "nud", "permanent", "dev", dev)
        new_link = GuestLink(new_guest)
        self.closers.append(new_link.close)
        new_secondary = Proxyd("new-secondary", self.keydir / "peer.key")
        self.closers.append(new_secondary.close)
        link_a, link_b = peer_link_sockets()
        events, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.closers.append(events.close)
        try:
            reply = self.secondary.attach("primary", external=self.external_fd,
                                          guest=self.secondary_link.socket.fileno(), peer=link_a.fileno(),
                                          events=theirs.fileno(), timeout_ms=timeout_ms)
            assert reply.WhichOneof("body") == "proxy_counters", reply
            reply = new_secondary.attach("secondary", guest=new_link.socket.fileno(), peer=link_b.fileno())
            assert reply.WhichOneof("body") == "proxy_counters", reply
        finally:
            for s in (link_a, link_b, theirs):
                s.close()
        self.primary, self.primary_guest, self.primary_link = self.secondary, self.secondary_guest, self.secondary_link
        self.secondary, self.secondary_guest, self.secondary_link = new_secondary, new_guest, new_link
        self.events = events
        self.primary.wait_state("running")
        self.secondary.wait_state("running")

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                pass
        self.closers.clear()

    def __enter__(self) -> "GuestPair":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
