"""The C client (Tests/cclient, protobuf-c) against every daemon.

Each daemon runs under ``systemd-socket-activate --seqpacket`` (the same
hand-over of a listening socket that systemd does, without a systemd), with
a notify socket of the test's own in $NOTIFY_SOCKET. The client, built from
nothing but Proto/ with protoc-c, asks for the status; that it decodes the
Swift daemons' replies proves the wire protocol is language-neutral.

Checks per daemon: READY=1 arrives on the notify socket; the status reply
matches the process; a peer whose uid is not allowed gets the id-0
PERMISSION_DENIED refusal (exit status 1) and the daemon then still serves
the next client; SIGTERM gives STOPPING=1 and exit status 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from colo_daemons import DAEMONS, ActivatedDaemon, runtime_dir

NOBODY = 65534

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs the client as another uid (setpriv): needs root"),
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]


def run_client(cclient: Path, sock: Path, *args: str, uid: int | None = None):
    """Run colo-status (optionally as another uid); return the process result."""
    argv = [str(cclient), "--timeout", "20000", *args, str(sock)]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_c_client_talks_to_every_daemon(cclient, daemons_dir, daemon):
    d = ActivatedDaemon(daemons_dir / daemon, daemon, runtime_dir(f"cclient-{daemon}"))
    try:
        # First connection: systemd-socket-activate execs the daemon, which
        # then answers on the socket it was handed.
        r = run_client(cclient, d.sock, "--json")
        assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{d.output()}"
        doc = json.loads(r.stdout)
        status = doc["status"]
        assert doc["id"] != 0
        assert status["daemon"] == daemon
        assert status["pid"] == d.proc.pid, "socket-activate execs the daemon in its own process"
        assert status["socket_origin"] == "systemd"
        assert status["version"] and status["state"]
        assert status["sandbox"]["seccomp_filter_installed"] is True
        assert d.wait_notify("READY=1"), f"no READY=1: {d.messages}\n{d.output()}"

        # The readable form carries the same fields.
        r = run_client(cclient, d.sock)
        assert r.returncode == 0, r.stderr
        assert f"daemon:           {daemon}" in r.stdout and f"pid:              {d.proc.pid}" in r.stdout

        # A uid that is not allowed: the id-0 refusal, exit status 1.
        r = run_client(cclient, d.sock, "--json", uid=NOBODY)
        assert r.returncode == 1, f"{r.stdout}{r.stderr}\n{d.output()}"
        refusal = json.loads(r.stdout)
        assert refusal["id"] == 0 and refusal["refused"] is True
        assert refusal["error"]["code"] == "ERROR_CODE_PERMISSION_DENIED"
        r = run_client(cclient, d.sock, uid=NOBODY)
        assert r.returncode == 1 and "refused: error: ERROR_CODE_PERMISSION_DENIED" in r.stdout, r.stdout + r.stderr

        # ... and the daemon still serves the next client.
        r = run_client(cclient, d.sock, "--json")
        assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{d.output()}"
        assert json.loads(r.stdout)["status"]["requests_served"] >= 2

        # SIGTERM: STOPPING=1, then exit status 0.
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=15) == 0, d.output()
        assert d.wait_notify("STOPPING=1", timeout=2), d.messages
    finally:
        d.close()
        shutil.rmtree(d.dir, ignore_errors=True)


def test_c_client_transport_failure_exit_status(cclient, tmp_path):
    """No daemon behind the path: exit status 2, distinct from an error reply."""
    r = run_client(cclient, tmp_path / "absent.sock")
    assert r.returncode == 2 and "No such file or directory" in r.stderr
    r = subprocess.run([str(cclient)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
