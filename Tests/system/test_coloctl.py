"""coloctl's pair commands against a real supervisord: exit statuses scripts
rely on, --json on success and failure, bad usage. Without a pair
configuration every pair command is refused with a clear message (exit 4);
the pair itself is exercised end to end by the pair tests."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from colo_daemons import Host, runtime_dir

pytestmark = [
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]

PAIR_COMMANDS = (["checkpoint"], ["failover"], ["resync"], ["resync", "--peer", "127.0.0.1:7601"],
                 ["failback"], ["wait"])


@pytest.fixture(scope="module")
def host():
    h = Host(names=("supervisord",))
    yield h
    h.close()


@pytest.mark.parametrize("command", PAIR_COMMANDS, ids=" ".join)
def test_pair_commands_without_a_pair_are_refused(host, command):
    r = host.coloctl(*command)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "without a pair configuration" in r.stderr, r.stderr
    assert r.stdout == ""

    r = host.coloctl(*command, "--json")
    assert r.returncode == 4
    error = json.loads(r.stdout)["error"]
    assert error["code"] == "failed_precondition" and error["exit_status"] == 4
    assert "without a pair configuration" in error["message"]


def test_status_without_a_pair_lists_the_daemons_and_no_pair(host):
    # Only supervisord runs here: the others are down (exit 3), listed all the same.
    r = host.coloctl("status")
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.splitlines()[0].split()[:2] == ["DAEMON", "STATE"]
    assert "role" not in r.stdout
    doc = json.loads(host.coloctl("status", "--json").stdout)
    assert "pair" not in doc and doc["supervisor"]["state"] == "ready"


@pytest.mark.parametrize("command", PAIR_COMMANDS + (["status"],), ids=" ".join)
def test_unreachable_supervisord_is_exit_2(host, command):
    empty = runtime_dir("empty")
    try:
        r = subprocess.run([str(host.bin / "coloctl"), *command, "--json", "--runtime-dir", str(empty)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "supervisord" in r.stderr and "did not answer" in r.stderr
        assert json.loads(r.stdout)["error"]["exit_status"] == 2
    finally:
        shutil.rmtree(empty, ignore_errors=True)


@pytest.mark.parametrize("args,complaint", [
    (["resync", "--peer", "localhost"], "--peer"),
    (["resync", "--peer", "10.0.0.1:0"], "--peer"),
    (["resync", "--wait-timeout", "0"], "--wait-timeout"),
    (["wait", "--wait-timeout", "-3"], "--wait-timeout"),
    (["checkpoint", "--timeout", "0"], "--timeout"),
    (["failover", "--bogus"], "--bogus"),
    (["failback", "extra"], "extra"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_usage_is_exit_64(host, args, complaint):
    r = host.coloctl(*args)
    assert r.returncode == 64, r.stdout + r.stderr
    assert complaint in r.stderr


def test_help_documents_the_exit_statuses(host):
    r = host.coloctl("--help")
    assert r.returncode == 0
    for line in ("0   success", "2   supervisord could not be reached", "4   refused", "5   timed out",
                 "64  bad usage"):
        assert line in r.stdout, r.stdout
    for sub in ("status", "checkpoint", "failover", "resync", "failback", "wait"):
        assert f"  {sub}" in r.stdout
