"""The failover scenario of issue 9 the way an operator deploys it.

Each host is a systemd-nspawn container (DESIGN.md section 10, nspawn.py)
booted into a network namespace of its own, with /dev/kvm and /dev/net/tun
bound in, running the units from units/ and the static daemons installed
as units/README.md says: /etc/colo/<instance>.conf (the format coloctl up
writes), the pair key, the disk image in blockd's state directory, a
persistent tap owned by colo-supervisord. `systemctl start colo@ha.target`
listens on the five sockets; coloctl's first connection starts supervisord,
whose connections start the others (socket activation, no --spawn-daemons).
The witness and the client stay in plain namespaces:

    colo-nclient (10.0.2.2) ── colo-nlan bridge ──┬── ext-a ─ brx ─ tap0 (container in colo-na)
                                                  └── ext-b ─ brx ─ tap0 (container in colo-nb)
    colo-na 192.168.77.1 ── replication link ── 192.168.77.2 colo-nb
    colo-na 172.31.1.2 ── colo-nw 172.31.1.1 / 172.31.2.1 ── 172.31.2.2 colo-nb

The names (prefix colo-n) differ from the demo's, so this test needs no
/tmp/colo-demo.lock. Then: lock-step; a client keeps ONE connection
counting; the primary host dies (SIGKILL to its container's PID 1, the
whole pid namespace); the secondary takes over and the connection goes on
with consecutive counts; journalctl in the survivor shows the take-over
as structured events; a fresh container joins as the new secondary and
`coloctl resync` on the survivor brings lock-step back.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nspawn
import vmm

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "units"
INSTANCE = "ha"
HOSTS = ("a", "b")
PREFIX = "colo-n"
NAMESPACES = [f"{PREFIX}{h}" for h in HOSTS] + [f"{PREFIX}client", f"{PREFIX}lan", f"{PREFIX}w"]
CLIENT_IP = "10.0.2.2"
LIBEXEC = "/usr/local/libexec/colo"
COLOCTL = f"{LIBEXEC}/coloctl"
RUNTIME = f"/run/colo/{INSTANCE}"
GUEST = nspawn.GUEST_PATH
SUPERVISOR = f"colo-supervisord@{INSTANCE}.service"


def replication_address(host: str) -> str:
    return "192.168.77.1" if host == "a" else "192.168.77.2"


def witness_address(host: str) -> str:
    return "172.31.1.1" if host == "a" else "172.31.2.1"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {r.stderr}")
    return r


def remove_network() -> None:
    """Every namespace of this test gone (processes in them killed first)."""
    for ns in NAMESPACES:
        for pid in ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
    for ns in NAMESPACES:
        ip("netns", "del", ns, check=False)


def create_network() -> None:
    """The demo pair's topology (Sources/coloctl/DemoPair.swift) under
    this test's prefix; the taps are made per container (provision)."""
    lan, client, witness = f"{PREFIX}lan", f"{PREFIX}client", f"{PREFIX}w"
    for ns in NAMESPACES:
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", lan, "link", "add", "br0", "type", "bridge")
    ip("-n", lan, "link", "set", "br0", "up")
    for index, host in enumerate(HOSTS):
        ns = f"{PREFIX}{host}"
        ip("link", "add", f"ext-{host}", "netns", ns, "type", "veth", "peer", "name", f"lan-{host}", "netns", lan)
        ip("-n", lan, "link", "set", f"lan-{host}", "master", "br0", "up")
        ip("-n", ns, "link", "add", "brx", "type", "bridge")
        ip("-n", ns, "link", "set", "brx", "up")
        ip("-n", ns, "link", "set", f"ext-{host}", "master", "brx", "up")
        subnet = index + 1
        ip("link", "add", f"w-{host}", "netns", witness, "type", "veth", "peer", "name", "wit", "netns", ns)
        ip("-n", witness, "addr", "add", f"172.31.{subnet}.1/24", "dev", f"w-{host}")
        ip("-n", witness, "link", "set", f"w-{host}", "up")
        ip("-n", ns, "addr", "add", f"172.31.{subnet}.2/24", "dev", "wit")
        ip("-n", ns, "link", "set", "wit", "up")
    ip("link", "add", "c0", "netns", client, "type", "veth", "peer", "name", "lan-c", "netns", lan)
    ip("-n", lan, "link", "set", "lan-c", "master", "br0", "up")
    ip("-n", client, "addr", "add", f"{CLIENT_IP}/24", "dev", "c0")
    ip("-n", client, "link", "set", "c0", "up")
    ip("link", "add", "rep", "netns", f"{PREFIX}a", "type", "veth", "peer", "name", "rep", "netns", f"{PREFIX}b")
    for host in HOSTS:
        ip("-n", f"{PREFIX}{host}", "addr", "add", f"{replication_address(host)}/24", "dev", "rep")
        ip("-n", f"{PREFIX}{host}", "link", "set", "rep", "up")


def configuration(host: str, role: str) -> str:
    """/etc/colo/ha.conf of one host of the pair, with its witness."""
    other = "b" if host == "a" else "a"
    return (f"# Host {host} of the nspawn pair (test_pair_nspawn.py).\n"
            + nspawn.host_configuration(INSTANCE, host, role, listen=f"{replication_address(host)}:7400",
                                        peer=f"{replication_address(other)}:7400",
                                        witness=f"{witness_address(host)}:7500", heartbeat_timeout="500ms"))


class Deployment:
    """The two hosts (containers), the witness, and what they log."""

    def __init__(self, directory: Path, root: Path, daemons_dir: Path, runtime_dirs: list[str]):
        self.dir = directory
        self.root = root
        self.daemons_dir = daemons_dir
        self.runtime_dirs = runtime_dirs
        self.key = directory / "pair.key"
        self.key.write_bytes(os.urandom(32))
        os.chmod(self.key, 0o600)
        self.hosts: dict[str, nspawn.Container] = {}
        self.retired: list[nspawn.Container] = []
        self.witness: subprocess.Popen | None = None

    # -- set-up -------------------------------------------------------------

    def start_witness(self) -> None:
        self.witness = subprocess.Popen(
            ["ip", "netns", "exec", f"{PREFIX}w", str(self.daemons_dir / "colo-witness"), "--listen", "0.0.0.0:7500",
             "--key-file", str(self.key), "--state-file", str(self.dir / "witness.state")],
            stdout=open(self.dir / "witness.log", "w"), stderr=subprocess.STDOUT)

    def boot(self, host: str) -> nspawn.Container:
        c = nspawn.Container(
            self.root,
            name=f"colo-test-n{host}-{os.urandom(3).hex()}",
            binds_ro=[(str(self.daemons_dir), LIBEXEC), (str(vmm.GUEST_ELF), GUEST),
                      *((d, d) for d in self.runtime_dirs)],
            devices=["/dev/kvm", "/dev/net/tun"],
            log_dir=self.dir,
            network_namespace=f"{PREFIX}{host}",
        )
        self.hosts[host] = c
        c.start()
        return c

    def provision(self, host: str, role: str) -> None:
        """Install as units/README.md says, then start the instance's
        sockets and make the first connection (coloctl status), which
        socket-activates supervisord."""
        c = self.hosts[host]
        for f in sorted(UNITS.iterdir()):
            if f.suffix in (".service", ".socket", ".target"):
                c.install(f, f"/etc/systemd/system/{f.name}")
        c.install(UNITS / "colo.sysusers", "/usr/lib/sysusers.d/colo.conf")
        c.run("systemd-sysusers")
        # No udev in the root: /dev/kvm and /dev/net/tun as udev makes them
        # (root:kvm 0660, 0666), not the bound host nodes, whose modes this
        # machine may not have (test_systemd_units does the same).
        c.run("umount /dev/kvm; rm -f /dev/kvm; mknod -m 0660 /dev/kvm c 10 232 && chgrp kvm /dev/kvm")
        c.run("umount /dev/net/tun; rm -f /dev/net/tun; mknod -m 0666 /dev/net/tun c 10 200")
        c.install(self.key, f"/etc/colo/{INSTANCE}.key", 0o640)
        c.run(f"chgrp colo-supervisord /etc/colo/{INSTANCE}.key")
        conf = self.dir / f"host-{host}.conf"
        conf.write_text(configuration(host, role))
        c.install(conf, f"/etc/colo/{INSTANCE}.conf")
        nspawn.install_disk(c, INSTANCE)
        # The host's network set-up: a persistent tap supervisord may
        # attach to without a capability (units/README.md).
        uid = c.run(["id", "-u", "colo-supervisord"]).stdout.strip()
        ns = f"{PREFIX}{host}"
        ip("-n", ns, "tuntap", "del", "dev", "tap0", "mode", "tap", check=False)
        ip("-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap", "user", uid)
        ip("-n", ns, "link", "set", "tap0", "master", "brx", "up")
        c.run("systemctl daemon-reload")
        c.run(["systemctl", "start", f"colo@{INSTANCE}.target"])
        self.coloctl(host, "status", "--timeout", "30", check=False, timeout=60)
        state = self.wait_for(lambda: c.run(["systemctl", "is-active", SUPERVISOR], check=False).stdout.strip()
                              == "active", 30)
        assert state, f"supervisord of host {host} did not start\n{self.diagnostics(host)}"

    # -- operating ------------------------------------------------------------

    def coloctl(self, host: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """coloctl as root inside the host's container."""
        r = self.hosts[host].run([COLOCTL, *args, "--runtime-dir", RUNTIME], check=False, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"coloctl {' '.join(args)} on host {host}: exit {r.returncode}\n"
                                 f"{r.stdout}\n{r.stderr}\n{self.diagnostics(host)}")
        return r

    def report(self, host: str) -> dict:
        r = self.coloctl(host, "status", "--json", check=False, timeout=30)
        try:
            return json.loads(r.stdout).get("pair", {}) if r.stdout.strip() else {}
        except json.JSONDecodeError:
            return {}

    def journal(self, host: str, unit: str = SUPERVISOR) -> list[dict]:
        out = self.hosts[host].run(["journalctl", "-u", unit, "-o", "json", "--no-pager"], timeout=30).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def diagnostics(self, host: str) -> str:
        c = self.hosts.get(host)
        if c is None or c.leader is None or c.proc is None or c.proc.poll() is not None:
            return f"(host {host} is down)"
        r = c.run("systemctl --no-pager list-units 'colo*'; journalctl --no-pager -n 80 -u 'colo-*' "
                  "| grep -v 'COLO-GUEST TICK'", check=False, timeout=30)
        return f"--- host {host}\n{r.stdout}{r.stderr}"

    def client(self, seconds: float, name: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", f"{PREFIX}client", sys.executable, str(REPO / "scripts" / "demo_client.py"),
             "--seconds", str(seconds), "--json", str(self.dir / f"{name}.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def wait_for(predicate, timeout: float, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() > deadline:
                return value
            time.sleep(interval)

    # -- tear-down ------------------------------------------------------------

    def close(self) -> None:
        for host, c in self.hosts.items():
            # Every host's journal, kept beside the test's other files for
            # whoever reads a failure.
            if c.leader is not None and c.proc is not None and c.proc.poll() is None:
                with contextlib.suppress(Exception):
                    journal = c.run("journalctl --no-pager -o short-precise | grep -v 'COLO-GUEST TICK'",
                                    check=False, timeout=60).stdout
                    (self.dir / f"host-{host}.journal").write_text(journal)
        for c in [*self.hosts.values(), *self.retired]:
            c.stop()
        if self.witness is not None:
            self.witness.kill()
            self.witness.wait(timeout=10)


@pytest.fixture
def deployment(tmp_path, daemons_dir, swift_runtime_dirs):
    missing = nspawn.missing_requirements() or vmm.missing_prerequisite()
    if missing:
        pytest.skip(f"nspawn pair: {missing}")
    if not Path("/dev/net/tun").exists():
        pytest.skip("nspawn pair: no /dev/net/tun")
    if not os.access(daemons_dir / "colo-witness", os.X_OK):
        pytest.fail(f"{daemons_dir}/colo-witness is not built")
    root = nspawn.ensure_root()
    remove_network()
    d = Deployment(tmp_path, root, daemons_dir, swift_runtime_dirs)
    try:
        create_network()
        d.start_witness()
        yield d
    finally:
        d.close()
        remove_network()
    left = set(ip("netns", "list").stdout.split())
    assert not set(NAMESPACES) & left, left


def summary_of(client: subprocess.Popen, seconds: float) -> dict:
    out, _ = client.communicate(timeout=seconds + 60)
    print(out)
    return json.loads(out.strip().splitlines()[-1])


def test_failover_and_resync_under_systemd(deployment):
    d = deployment
    t0 = time.monotonic()
    for host in HOSTS:
        d.boot(host)
    d.provision("b", "secondary")
    d.provision("a", "primary")
    d.coloctl("a", "wait", "--wait-timeout", "150", timeout=180)
    assert d.wait_for(lambda: d.report("b").get("state") == "lockstep", 30), d.diagnostics("b")
    print(f"containers booted and the pair in lock-step: {time.monotonic() - t0:.1f}s")

    # Socket activation: every daemon runs as its unit, started by systemd,
    # none by supervisord (no --spawn-daemons).
    for host in HOSTS:
        c = d.hosts[host]
        for daemon in ("vmmd", "checkpointd", "proxyd", "blockd", "supervisord"):
            unit = f"colo-{daemon}@{INSTANCE}.service"
            props = dict(line.split("=", 1) for line in c.run(
                ["systemctl", "show", unit, "-p", "ActiveState", "-p", "TriggeredBy", "-p", "MainPID"]
            ).stdout.splitlines() if "=" in line)
            assert props["ActiveState"] == "active", (host, unit, props)
            assert f"colo-{daemon}@{INSTANCE}.socket" in props["TriggeredBy"], (host, unit, props)
        assert "--spawn-daemons" not in c.run(["cat", f"/proc/{props['MainPID']}/cmdline"]).stdout

    # The primary host dies under a client's one connection.
    seconds = 12.0
    client = d.client(seconds, "failover")
    time.sleep(4)
    killed_at = time.monotonic()
    d.hosts["a"].kill()
    assert d.wait_for(lambda: d.report("b").get("state") == "alone", 15), d.diagnostics("b")
    print(f"host b alone {time.monotonic() - killed_at:.1f}s after host a died")
    summary = summary_of(client, seconds)
    assert summary["connection_kept"], f"{summary}\n{d.diagnostics('b')}"
    assert summary["counts_consecutive"], f"{summary}\n{d.diagnostics('b')}"
    assert summary["first_count"] == 1 and summary["requests"] > 20, summary
    report = d.report("b")
    assert report["host_role"] == "primary", report
    print(f"failover with the primary's container killed: longest gap {summary['longest_gap_ms']} ms")

    # The take-over, read back from the survivor's journal as structured
    # fields (COLO_EVENT and the pair's state), written by supervisord's unit.
    entries = [e for e in d.journal("b") if e.get("COLO_DAEMON") == "supervisord"]
    events = [e.get("COLO_EVENT") for e in entries]
    for expected in ("peer_lost", "failover"):
        assert expected in events, events
    assert events.index("peer_lost") < events.index("failover"), events
    taken = [e for e in entries if e.get("COLO_EVENT") == "pair_transition" and e.get("COLO_PAIR_STATE") == "alone"]
    assert taken and taken[-1]["COLO_ROLE"] == "primary", taken
    assert all(e["_SYSTEMD_UNIT"] == SUPERVISOR and e["_TRANSPORT"] == "journal" for e in entries)

    # A fresh container takes host a's place (empty disk, no state) and
    # coloctl resync on the survivor brings the pair back to lock-step.
    d.retired.append(d.hosts.pop("a"))
    d.retired[-1].stop()
    d.boot("a")
    d.provision("a", "secondary")
    t1 = time.monotonic()
    d.coloctl("b", "resync", "--wait-timeout", "120", timeout=180)
    assert d.wait_for(lambda: d.report("a").get("state") == "lockstep", 30), d.diagnostics("a")
    print(f"resync to the fresh container: {time.monotonic() - t1:.1f}s")
    assert d.report("b")["host_role"] == "primary" and d.report("a")["host_role"] == "secondary"
    events = [e.get("COLO_EVENT") for e in d.journal("b") if e.get("COLO_DAEMON") == "supervisord"]
    after_failover = events[events.index("failover"):]
    assert "sync_completed" in after_failover and "lockstep_started" in after_failover, events

    # An operator's failover, with coloctl on the new secondary, under a
    # new client connection: host a claims the pair from the witness and
    # serves; host b, refused by the witness, fences itself. The counter
    # carries on from the last reply before the resync, one by one.
    seconds = 8.0
    client = d.client(seconds, "operator-failover")
    time.sleep(3)
    d.coloctl("a", "failover")
    assert d.wait_for(lambda: d.report("a").get("state") == "alone", 15), d.diagnostics("a")
    assert d.wait_for(lambda: d.report("b").get("state") == "fenced", 15), d.diagnostics("b")
    after = summary_of(client, seconds)
    assert after["connection_kept"] and after["counts_consecutive"], f"{after}\n{d.diagnostics('a')}"
    assert after["first_count"] == summary["last_count"] + 1, (summary, after)
    assert d.report("a")["host_role"] == "primary"
    print(f"operator failover to the resynced container: longest gap {after['longest_gap_ms']} ms")
    events = [e.get("COLO_EVENT") for e in d.journal("a") if e.get("COLO_DAEMON") == "supervisord"]
    assert "operator_command" in events and "failover" in events, events

    # supervisord of the fenced host crashes (SIGKILL): systemd restarts
    # it, and its daemons with it (PartOf=); the host comes back as a fresh
    # secondary, and coloctl resync on the primary takes it in again.
    def main_pid(host: str, daemon: str) -> str:
        return d.hosts[host].run(["systemctl", "show", f"colo-{daemon}@{INSTANCE}.service", "-p", "MainPID",
                                  "--value"]).stdout.strip()
    vmmd_before = main_pid("b", "vmmd")
    d.hosts["b"].run(["systemctl", "kill", "-s", "KILL", SUPERVISOR])
    # Back as a fresh secondary: waiting, or already linked to the primary
    # and waiting for its sync.
    assert d.wait_for(lambda: d.report("b").get("state") in ("waiting", "syncing"), 30), d.diagnostics("b")
    assert d.report("b")["host_role"] == "secondary", d.report("b")
    assert main_pid("b", "vmmd") != vmmd_before, "vmmd was restarted with supervisord"
    d.coloctl("a", "resync", "--wait-timeout", "120", timeout=180)
    assert d.wait_for(lambda: d.report("b").get("state") == "lockstep", 30), d.diagnostics("b")

    # A failback under a client connection: coloctl on the primary hands
    # the pair over; host b is the primary again, a its secondary.
    seconds = 8.0
    client = d.client(seconds, "failback")
    time.sleep(3)
    d.coloctl("a", "failback", "--wait-timeout", "120", timeout=180)
    assert d.report("a")["host_role"] == "secondary" and d.report("b")["host_role"] == "primary"
    assert d.wait_for(lambda: d.report("b").get("state") == "lockstep", 30), d.diagnostics("b")
    last = summary_of(client, seconds)
    assert last["connection_kept"] and last["counts_consecutive"], f"{last}\n{d.diagnostics('b')}"
    assert last["first_count"] == after["last_count"] + 1, (after, last)
    print(f"failback under systemd: longest gap {last['longest_gap_ms']} ms")
    events = [e.get("COLO_EVENT") for e in d.journal("a") if e.get("COLO_DAEMON") == "supervisord"]
    assert "handover_started" in events and "failback" in events, events

    # Through all of it, systemd restarted no daemon on either host but the
    # supervisord killed on purpose: the sandboxes held (a daemon killed by
    # its seccomp filter or failing in its unit would show as a restart).
    for host in HOSTS:
        for daemon in ("vmmd", "checkpointd", "proxyd", "blockd", "supervisord"):
            unit = f"colo-{daemon}@{INSTANCE}.service"
            restarts = d.hosts[host].run(["systemctl", "show", unit, "-p", "NRestarts", "--value"]).stdout.strip()
            expected = "1" if (host, daemon) == ("b", "supervisord") else "0"
            assert restarts == expected, f"{unit} on host {host} restarted {restarts} times\n{d.diagnostics(host)}"
