"""Running the project's daemons the way systemd would, without a systemd.

Each daemon runs under ``systemd-socket-activate --seqpacket``: the listening
socket is created by the activator and handed over on the first connection
(LISTEN_FDS), exactly the interface a real systemd uses. $NOTIFY_SOCKET
points at a datagram socket of the test, so READY=1/STOPPING=1 are observed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAEMONS = ("vmmd", "checkpointd", "proxyd", "blockd", "supervisord")


def build_dir() -> Path:
    """The built daemons: $COLO_DAEMONS_DIR, else .build/release, else
    .build/debug (this host has the Swift runtime, so either build runs)."""
    candidates = [Path(os.environ["COLO_DAEMONS_DIR"])] if "COLO_DAEMONS_DIR" in os.environ else [
        REPO / ".build" / "release", REPO / ".build" / "debug"]
    for d in candidates:
        if all(os.access(d / n, os.X_OK) for n in DAEMONS + ("coloctl",)):
            return d.resolve()
    pytest.fail(f"the daemons are not built in {[str(c) for c in candidates]}: run scripts/setup.sh")


def runtime_dir(prefix: str) -> Path:
    """A runtime directory others may traverse (pytest's tmp_path has 0700
    parents, which would keep an unprivileged test peer out)."""
    d = Path(tempfile.mkdtemp(prefix=f"colo-{prefix}-"))
    os.chmod(d, 0o755)
    return d


class ActivatedDaemon:
    """One daemon behind systemd-socket-activate, with a notify socket."""

    def __init__(self, binary: Path, name: str, directory: Path, extra_args: tuple[str, ...] = ()):
        self.dir = directory
        self.name = name
        self.sock = directory / f"{name}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_path = directory / f"{name}.notify"
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        self.log_path = directory / f"{name}.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            ["systemd-socket-activate", "--seqpacket", "-l", str(self.sock),
             "-E", f"NOTIFY_SOCKET={self.notify_path}",
             str(binary), "--runtime-dir", str(directory), *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert time.monotonic() < deadline, f"{self.sock} never appeared:\n{self.output()}"
            assert self.proc.poll() is None, f"systemd-socket-activate exited:\n{self.output()}"
            time.sleep(0.02)
        # Let an unprivileged test peer reach the file; the daemon's own
        # SO_PEERCRED check is what must refuse it.
        os.chmod(self.sock, 0o666)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

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

    def proc_status(self) -> dict[str, str]:
        """/proc/<pid>/status of the daemon (socket-activate execs it in place)."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return fields

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        self.log.close()


class Host:
    """All five daemons of one host sharing a runtime directory."""

    def __init__(self, names=DAEMONS, extra_args: tuple[str, ...] = ()):
        self.bin = build_dir()
        self.dir = runtime_dir("host")
        self.daemons = {n: ActivatedDaemon(self.bin / n, n, self.dir, extra_args) for n in names}

    def coloctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "coloctl"), *args, "--runtime-dir", str(self.dir)],
                              capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        for d in self.daemons.values():
            d.close()
        shutil.rmtree(self.dir, ignore_errors=True)
