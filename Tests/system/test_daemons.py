"""Every daemon as a real process: socket activation, readiness, coloctl
status across all of them, bad input, and its seccomp filter at work."""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

import colo_proto
from colo_daemons import DAEMONS, Host

pytestmark = [
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]


@pytest.fixture
def host():
    h = Host()
    yield h
    h.close()


def test_coloctl_status_reports_every_daemon_and_exit_codes(host):
    r = host.coloctl("status")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["DAEMON", "STATE", "PID"]
    for name, daemon in host.daemons.items():
        row = next(line.split() for line in lines if line.split()[0] == name)
        assert row[2] == str(daemon.proc.pid), row
        assert row[3] == "0.1.0" and row[-1] == "systemd"
        assert daemon.wait_notify("READY=1"), daemon.messages

    doc = json.loads(host.coloctl("status", "--json").stdout)
    assert doc["supervisor"]["pid"] == host.daemons["supervisord"].proc.pid
    assert [d["daemon"] for d in doc["daemons"]] == ["vmmd", "checkpointd", "proxyd", "blockd"]
    assert all(d["status"]["sandbox"]["seccomp_filter_installed"] for d in doc["daemons"])

    # One daemon down: reported, exit status 3, the others still listed.
    host.daemons["proxyd"].close()
    r = host.coloctl("status")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "proxyd" in r.stderr and "DOWN" in r.stdout
    assert json.loads(host.coloctl("status", "--json").stdout)["daemons"][2]["unreachable"]["code"] \
        == "ERROR_CODE_UNAVAILABLE"

    # supervisord down: exit status 2 and a clear message.
    host.daemons["supervisord"].close()
    r = host.coloctl("status")
    assert r.returncode == 2 and "supervisord" in r.stderr and "did not answer" in r.stderr


def test_coloctl_rejects_bad_flags(host):
    r = host.coloctl("status", "--timeout", "-1")
    assert r.returncode == 64 and "--timeout" in r.stderr
    r = host.coloctl("frobnicate")
    assert r.returncode == 64


def _raw_exchange(sock_path, payload: bytes):
    """Send one raw datagram; return (reply or None, whether the daemon closed)."""
    s = colo_proto.connect(sock_path)
    try:
        s.send(payload)
        data = s.recv(colo_proto.MAX_DATAGRAM)
        reply = colo_proto.envelope.Response()
        reply.ParseFromString(data)
        closed = s.recv(16) == b""
        return reply, closed
    except TimeoutError:
        return reply, False
    finally:
        s.close()


@pytest.mark.parametrize("daemon", DAEMONS)
def test_bad_input_is_refused_and_the_daemon_keeps_serving(host, daemon):
    path = host.daemons[daemon].sock
    rng = random.Random(daemon)
    valid = colo_proto.request(7, status={})
    unknown = colo_proto.envelope.Request(id=8).SerializeToString() + bytes([0xBA, 0x3E, 0x00])
    cases = {
        "random bytes": (bytes(rng.randrange(256) for _ in range(200)), None),
        "truncated protobuf": (valid[:-1], "ERROR_CODE_MALFORMED"),
        "oversized datagram": (b"\x08" * (colo_proto.MAX_DATAGRAM + 1000), "ERROR_CODE_OVERSIZED"),
        "unknown body": (unknown, "ERROR_CODE_UNKNOWN_REQUEST"),
    }
    for name, (payload, code) in cases.items():
        s = colo_proto.connect(path)
        s.settimeout(5)
        try:
            s.send(payload)
            data = s.recv(colo_proto.MAX_DATAGRAM)
        finally:
            s.close()
        reply = colo_proto.envelope.Response()
        reply.ParseFromString(data)
        assert reply.WhichOneof("body") == "error", f"{name}: {reply}"
        if code:
            assert colo_proto.common.ErrorCode.Name(reply.error.code) == code, name
        if name == "unknown body":
            assert reply.id == 8, "an unknown body is answered under its own id"
        else:
            assert reply.id == 0, f"{name}: a datagram without a readable id gets id 0"
    # ... and the daemon answers the next client.
    assert colo_proto.status(path).pid == host.daemons[daemon].proc.pid
    assert host.daemons[daemon].proc.poll() is None


@pytest.mark.parametrize("daemon", DAEMONS)
def test_seccomp_filter_refuses_what_is_not_listed(host, daemon):
    d = host.daemons[daemon]
    assert colo_proto.status(d.sock).sandbox.seccomp_filter_installed
    status = d.proc_status()
    assert status["Seccomp"] == "2", "filter mode"
    assert status["NoNewPrivs"] == "1"
    if os.geteuid() == 0:
        assert int(status["CapEff"], 16) == 0, "a daemon started as root drops every capability"
    reply = colo_proto.call(d.sock, colo_proto.request(3, sandbox_probe={}))
    assert reply.WhichOneof("body") == "sandbox_probe", reply
    outcomes = {o.syscall: o for o in reply.sandbox_probe.outcomes}
    # blockd opens the disk images its requests name and supervisord the
    # guest kernel and its state file, so their allowlists admit openat and
    # the probe does not try it there.
    expected = {"socket", "execve", "ptrace"} | (set() if daemon in ("blockd", "supervisord") else {"openat"})
    assert expected <= set(outcomes)
    for name, outcome in outcomes.items():
        assert outcome.refused and outcome.error_number == 1, f"{daemon}: {name} was not refused: {outcome}"
    # Still serving under the filter.
    assert colo_proto.status(d.sock).pid == d.proc.pid


def test_without_the_sandbox_the_probe_sees_the_calls_succeed():
    """The probe can tell: unsandboxed, the same attempts are not refused."""
    h = Host(names=("blockd",), extra_args=("--no-sandbox",))
    try:
        reply = colo_proto.call(h.daemons["blockd"].sock, colo_proto.request(3, sandbox_probe={}))
        outcomes = {o.syscall: o for o in reply.sandbox_probe.outcomes}
        assert all(not outcomes[name].refused for name in ("openat", "socket") if name in outcomes)
        assert "socket" in outcomes
        assert not outcomes["execve"].refused and outcomes["execve"].error_number != 1
        assert h.daemons["blockd"].proc_status()["Seccomp"] == "0"
    finally:
        h.close()
