"""The units in units/ under a real systemd (DESIGN.md section 10).

A Debian root (cached, see nspawn.py) boots as a systemd-nspawn container;
the units, the sysusers file, the built daemons (bound read-only at their
installed path, /usr/local/libexec/colo) and the C client go in; the
sockets of one instance ("demo") are enabled. Then, for every daemon:

* socket activation: the service is inactive until the first connection,
  which starts it and is answered (a status request from the C client);
* readiness: Type=notify, so "active" means READY=1 arrived; STATUS= is
  shown; the watchdog is fed; SIGTERM ends it with exit status 0;
* structured journald fields: COLO_DAEMON and COLO_EVENT in
  ``journalctl -o json``;
* the sandbox the unit declares, seen twice: from the running daemon's
  /proc/<pid>/status, and by a probe started with ``systemd-run`` with the
  unit's own [Service] settings (processes entered with nsenter carry no
  sandbox, so that is the way to look from inside);
* the user scheme: who may open which socket, who is refused with an id-0
  error, and supervisord reaching every other daemon.

Daemon binaries come from $COLO_DAEMONS_DIR or .build/release (built by
scripts/setup.sh with --static-swift-stdlib: the container has no Swift
runtime).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import nspawn

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "units"
DAEMONS = ("vmmd", "checkpointd", "proxyd", "blockd", "supervisord")
MANAGED = tuple(d for d in DAEMONS if d != "supervisord")
# DESIGN.md section 2: these only work on handed-over fds.
NO_NETWORK = {"vmmd", "checkpointd", "proxyd", "blockd"}
INSTANCE = "demo"


# [Service] settings that are about the process's life, not its sandbox, or
# that a second process beside the running daemon must not share (the
# runtime and state directories would be removed when the probe exits).
NOT_SANDBOX = {
    "Type", "NotifyAccess", "WatchdogSec", "Restart", "RestartSec", "TimeoutStartSec", "TimeoutStopSec",
    "EnvironmentFile", "ExecStart", "RuntimeDirectory", "RuntimeDirectoryMode", "StateDirectory",
    "StateDirectoryMode",
}


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_systemd() -> None:
    """Skip (before anything is built or booted) where containers cannot run."""
    missing = nspawn.missing_requirements()
    if missing:
        pytest.skip(f"real-systemd tests: {missing}")


@pytest.fixture(scope="module")
def container(real_systemd, tmp_path_factory, daemons_dir, swift_runtime_dirs, cclient):
    """A booted container with the units installed and the demo sockets on."""
    root = nspawn.ensure_root()
    with nspawn.Container(
        root,
        binds_ro=[(str(daemons_dir), "/usr/local/libexec/colo"), *((d, d) for d in swift_runtime_dirs)],
        devices=["/dev/kvm", "/dev/net/tun"],
        log_dir=tmp_path_factory.mktemp("nspawn"),
    ) as c:
        for f in sorted(UNITS.iterdir()):
            if f.suffix in (".service", ".socket", ".target"):
                c.install(f, f"/etc/systemd/system/{f.name}")
        c.install(UNITS / "colo.sysusers", "/usr/lib/sysusers.d/colo.conf")
        c.install(cclient, "/usr/local/bin/colo-status", 0o755)
        c.run("systemd-sysusers")
        # The pair key of each instance: blockd, checkpointd and proxyd load
        # it as a credential, supervisord reads it through its group.
        c.run("mkdir -p /etc/colo && for i in demo second; do head -c 32 /dev/urandom > /etc/colo/$i.key; "
              "chgrp colo-supervisord /etc/colo/$i.key; chmod 0640 /etc/colo/$i.key; done")
        provision_secondary(c)
        # The root has no udev. On a host, udev creates /dev/kvm as
        # root:kvm 0660; nspawn bound the host's node (root 0600, and
        # chmod would change the host's). Replace the bind with a node of
        # our own, as udev would make it.
        c.run("umount /dev/kvm; rm -f /dev/kvm; mknod -m 0660 /dev/kvm c 10 232 && chgrp kvm /dev/kvm")
        # Likewise /dev/net/tun, 0666 as udev makes it (for supervisord's tap).
        c.run("umount /dev/net/tun; rm -f /dev/net/tun; mknod -m 0666 /dev/net/tun c 10 200")
        c.run("touch /tmp/outside-marker")
        c.run("systemctl daemon-reload")
        c.run(["systemctl", "enable", "--now", *(f"colo-{d}@{INSTANCE}.socket" for d in DAEMONS)])
        yield c


def provision_secondary(c) -> None:
    """What supervisord's unit needs for the demo instance (units/README.md):
    a pair configuration, blockd's state directory with the disk image, a
    persistent tap owned by colo-supervisord. The host is a secondary whose
    peer never comes: supervisord starts, serves and waits, which is all
    these tests look at (test_pair_nspawn.py runs a pair)."""
    nspawn.install_disk(c, INSTANCE)
    c.run(f"cat > /etc/colo/{INSTANCE}.conf",
          input=nspawn.host_configuration(INSTANCE, "b", "secondary", listen="127.0.0.1:7400", peer="127.0.0.2:7400"))
    uid = c.run(["id", "-u", "colo-supervisord"]).stdout.strip()
    subprocess.run(["nsenter", "-t", str(c.leader), "-n", "ip", "tuntap", "add", "dev", "tap0", "mode", "tap",
                    "user", uid], check=True)
    subprocess.run(["nsenter", "-t", str(c.leader), "-n", "ip", "link", "set", "lo", "up"], check=True)


# -- helpers ------------------------------------------------------------------


def show(c, unit: str, *props: str) -> dict[str, str]:
    """`systemctl show` properties of a unit as a dict."""
    args = ["systemctl", "show", unit]
    for p in props:
        args += ["-p", p]
    out = c.run(args).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def diagnostics(c, unit: str) -> str:
    """Status and recent journal of a unit, for assertion messages."""
    r = c.run(f"systemctl status --no-pager {shlex.quote(unit)}; journalctl --no-pager -n 40 -u {shlex.quote(unit)}",
              check=False)
    return r.stdout + r.stderr


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def client_user(daemon: str) -> str:
    """Who talks to a daemon in the scheme of units/README.md: supervisord
    talks to the others; root (coloctl) talks to supervisord."""
    return "root" if daemon == "supervisord" else "colo-supervisord"


def colo_status(c, daemon: str, user: str | None = None, instance: str = INSTANCE, host: bool = False):
    """Ask a daemon for its status with the C client, as a given user.

    Returns (exit code, decoded JSON or None, stderr).
    """
    user = user or client_user(daemon)
    argv = ["colo-status", "--json"] + (["--host"] if host else []) + [f"/run/colo/{instance}/{daemon}.sock"]
    if user != "root":
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
    r = c.run(argv, check=False)
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    return r.returncode, doc, r.stderr


def activate(c, daemon: str, instance: str = INSTANCE) -> dict:
    """Make sure the daemon runs and is ready; return its status reply."""
    unit = f"colo-{daemon}@{instance}.service"
    rc, doc, err = colo_status(c, daemon, instance=instance)
    assert rc == 0, f"status of {daemon}: exit {rc}: {err}\n{diagnostics(c, unit)}"
    state = wait_for(lambda: c.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "active")
    assert state, f"{unit} not active after answering\n{diagnostics(c, unit)}"
    return doc["status"]


def unit_sandbox_properties(daemon: str) -> list[str]:
    """The [Service] sandbox settings of a unit file as systemd-run -p args.

    Read from units/ itself, so the probe runs with exactly what the unit
    declares; %i is expanded as systemd would for the demo instance.
    """
    args, section = [], None
    for raw in (UNITS / f"colo-{daemon}@.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section != "[Service]":
            continue
        key, value = line.split("=", 1)
        if key not in NOT_SANDBOX:
            args += ["-p", f"{key}={value.replace('%i', INSTANCE)}"]
    return args


# Everything the probe looks at prints one key=value line.
PROBE = r"""
echo uid=$(id -u)
echo groups="$(id -G)"
sed -n -e 's/^\(NoNewPrivs\|Seccomp\|Seccomp_filters\|CapEff\|CapPrm\|CapBnd\|CapAmb\):\s*/\1=/p' /proc/self/status
echo netns=$(readlink /proc/self/ns/net)
touch /usr/colo-probe 2>/dev/null && echo usr=writable || echo usr=readonly
touch /etc/colo-probe 2>/dev/null && echo etc=writable || echo etc=readonly
touch /tmp/colo-probe 2>/dev/null && echo tmp=writable || echo tmp=readonly
test -e /tmp/outside-marker && echo tmpns=shared || echo tmpns=private
ls /home >/dev/null 2>&1 && echo home=visible || echo home=hidden
test -e /proc/1 && echo pid1=visible || echo pid1=hidden
test -e /proc/meminfo && echo procsubset=all || echo procsubset=pid
echo devices="$(ls /dev | tr '\n' ' ')"
(exec 3<>/dev/kvm) 2>/dev/null && echo kvm=open || echo kvm=closed
(exec 3<>/dev/net/tun) 2>/dev/null && echo tun=open || echo tun=closed
perl -MSocket -e 'print socket(my $s, AF_INET, SOCK_STREAM, 0) ? "inet=ok\n" : "inet=refused\n"'
perl -MSocket -e 'print socket(my $s, AF_UNIX, SOCK_SEQPACKET, 0) ? "unix=ok\n" : "unix=refused\n"'
perl -e 'print syscall(9, 0, 4096, 7, 0x22, -1, 0) == -1 ? "wxmmap=refused\n" : "wxmmap=ok\n"'
setarch -R true 2>/dev/null && echo personality=changed || echo personality=locked
unshare -U true 2>/dev/null && echo userns=created || echo userns=refused
"""


def probe(c, properties: list[str]) -> dict[str, str]:
    """Run PROBE in a transient service with the given properties."""
    r = c.run(["systemd-run", "--wait", "--pipe", "--quiet", "--collect", *properties, "/bin/sh", "-c", PROBE],
              check=False, timeout=60)
    result = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert "uid" in result and "userns" in result, f"probe did not run: {r.stdout}\n{r.stderr}"
    return result


def proc_status(c, pid: int) -> dict[str, str]:
    """/proc/<pid>/status of a process in the container, as a dict."""
    text = c.run(["cat", f"/proc/{pid}/status"]).stdout
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def cmdline(c, pid: int) -> str:
    """A container process's command line, arguments joined by spaces."""
    return c.run(["cat", f"/proc/{pid}/cmdline"]).stdout.replace("\0", " ").strip()


def uid_of(c, user: str) -> int:
    return int(c.run(["id", "-u", user]).stdout)


def gid_of_group(c, group: str) -> int:
    return int(c.run(["getent", "group", group]).stdout.split(":")[2])


# -- tests --------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(daemons_dir):
    """Every unit passes `systemd-analyze verify` without a single warning."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    r = subprocess.run([str(UNITS / "verify.sh"), str(daemons_dir)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("daemon", DAEMONS)
def test_socket_activation_and_readiness(container, daemon):
    """Inactive until the first connection; then started, answering, ready."""
    c = container
    unit, socket = f"colo-{daemon}@{INSTANCE}.service", f"colo-{daemon}@{INSTANCE}.socket"
    sock = show(c, socket, "ActiveState", "SubState")
    assert (sock["ActiveState"], sock["SubState"]) == ("active", "listening"), diagnostics(c, socket)
    before = c.run(["systemctl", "is-active", unit], check=False).stdout.strip()
    assert before == "inactive", f"{unit} ran before any connection\n{diagnostics(c, unit)}"

    status = activate(c, daemon)
    props = show(c, unit, "ActiveState", "SubState", "MainPID", "Type", "StatusText", "NRestarts",
                 "WatchdogUSec", "User")
    assert props["Type"] == "notify"
    # Type=notify: "active" is only reached once the daemon sent READY=1.
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), diagnostics(c, unit)
    assert props["StatusText"], f"{unit} sent no STATUS=\n{diagnostics(c, unit)}"
    assert props["NRestarts"] == "0"
    assert props["WatchdogUSec"] == "20s"
    assert props["User"] == f"colo-{daemon}"
    assert status["daemon"] == daemon
    assert status["socket_origin"] == "systemd"
    assert status["pid"] == int(props["MainPID"])
    assert status["state"]


@pytest.mark.parametrize("daemon", DAEMONS)
def test_structured_journal_fields(container, daemon):
    """The daemon's own journal entries carry COLO_DAEMON and COLO_EVENT."""
    c = container
    unit = f"colo-{daemon}@{INSTANCE}.service"
    pid = activate(c, daemon)["pid"]

    def entries():
        out = c.run(["journalctl", "-u", unit, "-o", "json", "--no-pager"]).stdout
        docs = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [d for d in docs if "COLO_DAEMON" in d]

    found = wait_for(entries, timeout=5)
    assert found, f"no entry with COLO_DAEMON for {unit}\n{diagnostics(c, unit)}"
    for e in found:
        assert e["COLO_DAEMON"] == daemon
        assert e.get("COLO_EVENT"), e
        assert e.get("MESSAGE") and e.get("PRIORITY"), e
        assert e["_SYSTEMD_UNIT"] == unit
        assert e["_TRANSPORT"] == "journal", "structured entries come through sd_journal_sendv"
    assert any(int(e["_PID"]) == pid for e in found)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_running_daemon_sandbox(container, daemon):
    """/proc/<pid>/status of the running daemon shows the unit's sandbox plus
    the daemon's own seccomp filter on top of systemd's."""
    c = container
    status = activate(c, daemon)
    pid = status["pid"]
    st = proc_status(c, pid)
    uid = uid_of(c, f"colo-{daemon}")
    assert st["Uid"].split() == [str(uid)] * 4
    assert st["Gid"].split() == [str(gid_of_group(c, f"colo-{daemon}"))] * 4
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, f"{cap}={st[cap]}"
    groups = set(st["Groups"].split())
    if daemon == "vmmd":
        assert str(gid_of_group(c, "kvm")) in groups
    else:
        assert str(gid_of_group(c, "kvm")) not in groups

    # Only the first filters (systemd's, for the unit) are in a fresh process
    # of the same sandbox; the daemon must have added its own.
    baseline = probe(c, unit_sandbox_properties(daemon))
    assert int(st["Seccomp_filters"]) > int(baseline["Seccomp_filters"]), (
        f"{daemon} has {st['Seccomp_filters']} seccomp filters, the unit alone gives "
        f"{baseline['Seccomp_filters']}: the daemon installed none of its own")

    own_net = c.run(["readlink", f"/proc/{pid}/ns/net"]).stdout.strip()
    host_net = c.run(["readlink", "/proc/1/ns/net"]).stdout.strip()
    assert (own_net != host_net) == (daemon in NO_NETWORK)
    own_mnt = c.run(["readlink", f"/proc/{pid}/ns/mnt"]).stdout.strip()
    assert own_mnt != c.run(["readlink", "/proc/1/ns/mnt"]).stdout.strip()

    sandbox = status["sandbox"]
    assert sandbox["seccomp_filter_installed"] is True
    assert sandbox["no_new_privileges"] is True
    assert sandbox["effective_capabilities"] == 0


@pytest.fixture(scope="module")
def unsandboxed(container):
    """The probe as each daemon user without any sandbox setting: proves that
    every check below can tell a sandboxed process from one that is not."""
    return probe(container, ["-p", "User=colo-vmmd", "-p", "SupplementaryGroups=kvm"])


def test_probe_sees_an_unsandboxed_process(unsandboxed):
    u = unsandboxed
    assert u["NoNewPrivs"] == "0" and int(u["CapBnd"], 16) != 0
    assert u["tmpns"] == "shared" and u["home"] == "visible" and u["pid1"] == "visible"
    assert u["procsubset"] == "all" and u["kvm"] == "open" and u["inet"] == "ok" and u["tun"] == "open"
    assert u["wxmmap"] == "ok" and u["personality"] == "changed" and u["userns"] == "created"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_sandbox_from_inside(container, unsandboxed, daemon):
    """A process started by systemd-run with the unit's settings is boxed in
    as the unit says (ProtectSystem, PrivateTmp, PrivateNetwork, ...)."""
    c = container
    p = probe(c, unit_sandbox_properties(daemon))
    host_net = c.run(["readlink", "/proc/1/ns/net"]).stdout.strip()

    assert int(p["uid"]) == uid_of(c, f"colo-{daemon}")
    assert p["NoNewPrivs"] == "1"                                   # NoNewPrivileges=yes
    assert p["Seccomp"] == "2"
    assert int(p["Seccomp_filters"]) > int(unsandboxed["Seccomp_filters"])  # SystemCallFilter= & co
    for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(p[cap], 16) == 0, f"{cap}={p[cap]}"              # CapabilityBoundingSet=
    assert p["usr"] == "readonly" and p["etc"] == "readonly"        # ProtectSystem=strict
    assert p["tmp"] == "writable" and p["tmpns"] == "private"       # PrivateTmp=yes
    assert p["home"] == "hidden"                                    # ProtectHome=yes
    assert p["pid1"] == "hidden"                                    # ProtectProc=invisible
    assert p["procsubset"] == "pid"                                 # ProcSubset=pid
    assert p["wxmmap"] == "refused"                                 # MemoryDenyWriteExecute=yes
    assert p["personality"] == "locked"                             # LockPersonality=yes
    assert p["userns"] == "refused"                                 # RestrictNamespaces=yes
    assert p["unix"] == "ok"
    if daemon in NO_NETWORK:
        assert p["netns"] != host_net                               # PrivateNetwork=yes
        assert p["inet"] == "refused"                               # RestrictAddressFamilies=AF_UNIX
    else:
        assert p["netns"] == host_net
        assert p["inet"] == "ok"
    devices = set(p["devices"].split())
    assert "console" not in devices                                 # PrivateDevices=yes
    if daemon == "vmmd":
        assert "kvm" in devices and p["kvm"] == "open"              # BindPaths=, DeviceAllow=, kvm group
    else:
        assert "kvm" not in devices and p["kvm"] == "closed"
    if daemon == "supervisord":
        assert "net" in devices and p["tun"] == "open"              # BindPaths=, DeviceAllow=/dev/net/tun
    else:
        assert "net" not in devices and p["tun"] == "closed"


@pytest.mark.parametrize("daemon", MANAGED)
def test_peer_checks_on_managed_daemons(container, daemon):
    """Socket files admit root and supervisord's group; the daemon's
    SO_PEERCRED check admits only supervisord: root is refused with an id-0
    error, another daemon's user cannot even open the file, and the daemon
    keeps serving supervisord afterwards."""
    c = container
    activate(c, daemon)
    rc, doc, err = colo_status(c, daemon, user="root")
    assert rc == 1, (rc, doc, err)
    assert doc["id"] == 0 and doc["refused"] is True
    assert doc["error"]["code"] == "ERROR_CODE_PERMISSION_DENIED"

    other = "colo-proxyd" if daemon != "proxyd" else "colo-blockd"
    rc, doc, err = colo_status(c, daemon, user=other)
    assert rc == 2 and "Permission denied" in err, (rc, doc, err)

    rc, doc, err = colo_status(c, daemon)
    assert rc == 0 and doc["status"]["daemon"] == daemon, (rc, doc, err)


def test_supervisord_socket_is_for_operators_only(container):
    """A daemon user cannot open supervisord's socket (colo-operators only)."""
    rc, doc, err = colo_status(container, "supervisord", user="colo-vmmd")
    assert rc == 2 and "Permission denied" in err, (rc, doc, err)


def test_operator_allowed_through_environment_file(container):
    """A member of colo-operators may open supervisord's socket but is
    refused until /etc/colo/<instance>.env lists them with --allow-user."""
    c = container
    unit = f"colo-supervisord@{INSTANCE}.service"
    c.run("id alice >/dev/null 2>&1 || useradd -M -G colo-operators alice")
    activate(c, "supervisord")
    rc, doc, err = colo_status(c, "supervisord", user="alice")
    assert rc == 1 and doc["error"]["code"] == "ERROR_CODE_PERMISSION_DENIED", (rc, doc, err)

    c.run(f"mkdir -p /etc/colo && echo 'COLO_SUPERVISORD_OPTIONS=--allow-user alice' > /etc/colo/{INSTANCE}.env")
    try:
        c.run(["systemctl", "restart", unit])
        rc, doc, err = colo_status(c, "supervisord", user="alice")
        assert rc == 0 and doc["status"]["daemon"] == "supervisord", (rc, doc, err, diagnostics(c, unit))
        assert "--allow-user alice" in cmdline(c, int(show(c, unit, "MainPID")["MainPID"]))
    finally:
        c.run(f"rm -f /etc/colo/{INSTANCE}.env")
        c.run(["systemctl", "restart", unit])


def sandboxed_status(c, as_daemon: str, target: str) -> tuple[int, str]:
    """Run the C client inside as_daemon's unit sandbox (systemd-run with the
    unit's settings, so also its user and ProtectSystem=strict) against the
    target daemon's socket."""
    r = c.run(["systemd-run", "--wait", "--pipe", "--quiet", "--collect", *unit_sandbox_properties(as_daemon),
               "/usr/local/bin/colo-status", "--json", f"/run/colo/{INSTANCE}/{target}.sock"], check=False)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("daemon", MANAGED)
def test_sandboxes_allow_exactly_the_designed_connections(container, daemon):
    """From inside supervisord's sandbox every managed daemon answers; from
    inside another managed daemon's sandbox its socket cannot be opened."""
    c = container
    rc, out = sandboxed_status(c, "supervisord", daemon)
    assert rc == 0 and json.loads(out.splitlines()[0])["status"]["daemon"] == daemon, out
    other = "vmmd" if daemon != "vmmd" else "proxyd"
    rc, out = sandboxed_status(c, other, daemon)
    assert rc != 0 and "Permission denied" in out, out
    rc, out = sandboxed_status(c, daemon, "supervisord")
    assert rc != 0 and "Permission denied" in out, out


def test_supervisord_reaches_every_daemon(container):
    """supervisord, in its own sandbox and as its own user, reaches every
    other daemon's socket: the HostStatus it returns has a status (not an
    'unreachable' error) for each, and each of them is running."""
    c = container
    rc, doc, err = colo_status(c, "supervisord", host=True)
    assert rc == 0, (rc, doc, err, diagnostics(c, f"colo-supervisord@{INSTANCE}.service"))
    reports = {r["daemon"]: r for r in doc["host_status"]["daemons"]}
    for daemon in MANAGED:
        assert daemon in reports, reports
        assert "status" in reports[daemon], reports[daemon]
        assert reports[daemon]["status"]["daemon"] == daemon
        assert c.run(["systemctl", "is-active", f"colo-{daemon}@{INSTANCE}.service"], check=False).stdout.strip() == "active"
    assert doc["host_status"]["supervisor"]["daemon"] == "supervisord"


def test_watchdog_is_fed(container):
    """With WatchdogSec=2s every daemon stays up well past 2 s: it sends
    WATCHDOG=1 at half the interval (systemd would kill it otherwise)."""
    c = container
    units = [f"colo-{d}@{INSTANCE}.service" for d in DAEMONS]
    for u in units:
        c.run(f"mkdir -p /run/systemd/system/{u}.d && "
              f"printf '[Service]\\nWatchdogSec=2s\\n' > /run/systemd/system/{u}.d/50-test-watchdog.conf")
    try:
        c.run("systemctl daemon-reload")
        c.run(["systemctl", "restart", *units])
        pids = {u: show(c, u, "MainPID")["MainPID"] for u in units}
        time.sleep(5)
        for u in units:
            props = show(c, u, "ActiveState", "MainPID", "NRestarts", "WatchdogUSec", "Result")
            assert props["WatchdogUSec"] == "2s"
            assert props["ActiveState"] == "active" and props["MainPID"] == pids[u], (props, diagnostics(c, u))
            assert props["Result"] == "success" and props["NRestarts"] == "0", (props, diagnostics(c, u))
    finally:
        c.run(f"rm -rf /run/systemd/system/colo-*@{INSTANCE}.service.d && systemctl daemon-reload")
        c.run(["systemctl", "restart", *units])


@pytest.mark.parametrize("daemon", DAEMONS)
def test_stop_exits_cleanly_and_socket_reactivates(container, daemon):
    """SIGTERM (systemctl stop) ends the daemon with exit status 0; the socket
    stays and the next connection starts a new daemon."""
    c = container
    unit = f"colo-{daemon}@{INSTANCE}.service"
    first = activate(c, daemon)["pid"]
    c.run(["systemctl", "stop", unit])
    props = show(c, unit, "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert props["ActiveState"] == "inactive" and props["Result"] == "success", (props, diagnostics(c, unit))
    assert props["ExecMainStatus"] == "0" and props["ExecMainCode"] == "1", props  # CLD_EXITED, status 0
    assert show(c, f"colo-{daemon}@{INSTANCE}.socket", "SubState")["SubState"] == "listening"
    assert activate(c, daemon)["pid"] != first


def test_second_instance_is_independent(container):
    """colo@NAME.target brings up a second VM's five sockets beside the first;
    stopping it stops its daemons and removes its sockets only."""
    c = container
    c.run(["systemctl", "start", "colo@second.target"])
    try:
        socks = set(c.run(["ls", "/run/colo/second"]).stdout.split())
        assert {f"{d}.sock" for d in DAEMONS} <= socks, socks
        demo_pid = activate(c, "vmmd")["pid"]
        second = activate(c, "vmmd", instance="second")
        assert second["pid"] != demo_pid
        assert "--runtime-dir /run/colo/second" in cmdline(c, second["pid"])
    finally:
        c.run(["systemctl", "stop", "colo@second.target"])
    assert wait_for(lambda: c.run(["systemctl", "is-active", "colo-vmmd@second.service"], check=False)
                    .stdout.strip() == "inactive")
    left = set(c.run(["ls", "/run/colo/second"], check=False).stdout.split())
    assert not any(s.endswith(".sock") for s in left), left
    assert c.run(["systemctl", "is-active", f"colo-vmmd@{INSTANCE}.socket"]).stdout.strip() == "active"
