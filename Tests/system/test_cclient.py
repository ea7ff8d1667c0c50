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
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAEMONS = ("vmmd", "checkpointd", "proxyd", "blockd", "supervisord")
NOBODY = 65534

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="runs the client as another uid (setpriv): needs root"),
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate is not installed"),
]


@pytest.fixture(scope="module")
def cclient() -> Path:
    """Tests/cclient/build/colo-status, built now (make is incremental)."""
    subprocess.run(["make", "-s", "-C", str(REPO / "Tests" / "cclient")], check=True)
    return REPO / "Tests" / "cclient" / "build" / "colo-status"


@pytest.fixture(scope="module")
def daemons_dir() -> Path:
    """The built daemons: $COLO_DAEMONS_DIR, else .build/release, else
    .build/debug (the host has the Swift runtime, so either build runs)."""
    candidates = [Path(os.environ["COLO_DAEMONS_DIR"])] if "COLO_DAEMONS_DIR" in os.environ else [
        REPO / ".build" / "release", REPO / ".build" / "debug"]
    for d in candidates:
        if all(os.access(d / n, os.X_OK) for n in DAEMONS):
            return d.resolve()
    pytest.fail(f"the daemons are not built in {[str(c) for c in candidates]}: run scripts/setup.sh")


class ActivatedDaemon:
    """One daemon behind systemd-socket-activate, with a notify socket."""

    def __init__(self, binary: Path, name: str):
        # Not under pytest's tmp_path: its 0700 parents would keep the
        # unprivileged client from reaching the socket.
        self.dir = Path(tempfile.mkdtemp(prefix=f"colo-cclient-{name}-"))
        os.chmod(self.dir, 0o755)
        self.name = name
        self.sock = self.dir / f"{name}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = self.dir / "notify.sock"
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        self.log = open(self.dir / "daemon.log", "w+")
        self.proc = subprocess.Popen(
            ["systemd-socket-activate", "--seqpacket", "-l", str(self.sock),
             "-E", f"NOTIFY_SOCKET={self.notify_path}", "-E", "COLO_RUNTIME_DIR=" + str(self.dir),
             str(binary), "--runtime-dir", str(self.dir)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert time.monotonic() < deadline, f"{self.sock} never appeared:\n{self.output()}"
            assert self.proc.poll() is None, f"systemd-socket-activate exited:\n{self.output()}"
            time.sleep(0.02)
        # Let the unprivileged client reach the file; the daemon's own
        # SO_PEERCRED check is what must refuse it.
        os.chmod(self.sock, 0o666)

    def output(self) -> str:
        self.log.flush()
        return (self.dir / "daemon.log").read_text(errors="replace")[-4000:]

    def wait_notify(self, field: str, timeout: float = 20.0) -> bool:
        """Collect notify datagrams until one carries the field (e.g. READY=1)."""
        deadline = time.monotonic() + timeout
        while not any(field in m.split("\n") for m in self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.notify.settimeout(remaining)
            try:
                self.messages.append(self.notify.recv(4096).decode(errors="replace"))
            except socket.timeout:
                return False
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_client(cclient: Path, sock: Path, *args: str, uid: int | None = None):
    """Run colo-status (optionally as another uid); return the process result."""
    argv = [str(cclient), "--timeout", "20000", *args, str(sock)]
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_c_client_talks_to_every_daemon(cclient, daemons_dir, daemon):
    d = ActivatedDaemon(daemons_dir / daemon, daemon)
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


def test_c_client_transport_failure_exit_status(cclient, tmp_path):
    """No daemon behind the path: exit status 2, distinct from an error reply."""
    r = run_client(cclient, tmp_path / "absent.sock")
    assert r.returncode == 2 and "No such file or directory" in r.stderr
    r = subprocess.run([str(cclient)], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
