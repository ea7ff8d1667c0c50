"""The test guest under QEMU: start it with guest/run-qemu.sh, watch its
serial console (a file), talk QMP, and make sure it is gone afterwards.

``Guest`` is a context manager; leaving it (also on a failed assertion)
kills QEMU if it is still running. Console lines a test waits for are the
``COLO-GUEST ...`` markers documented in guest/README.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_QEMU = REPO / "guest" / "run-qemu.sh"
GUEST_ELF = REPO / "guest" / "build" / "colo-guest.elf"


def missing_prerequisite() -> str | None:
    """Why QEMU guest tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps)"
    if not os.path.exists("/dev/kvm"):
        return "needs /dev/kvm"
    if not GUEST_ELF.exists():
        return f"{GUEST_ELF} not built: run guest/build.sh (scripts/setup.sh does)"
    return None


class Guest:
    def __init__(self, *, netns=None, disk: str | os.PathLike | None = None,
                 args: list[str] = (), workdir: str | os.PathLike | None = None,
                 name: str = "guest"):
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="colo-guest-")
            workdir = self._tmp.name
        self.dir = Path(workdir)
        self.console = self.dir / f"{name}.console"
        self.qmp_path = self.dir / f"{name}.qmp"
        self.console.unlink(missing_ok=True)
        self.qmp_path.unlink(missing_ok=True)
        argv = [str(RUN_QEMU), "--serial", str(self.console), "--qmp", str(self.qmp_path)]
        if netns is not None:
            argv += ["--netns", netns.name, "--tap", netns.tap,
                     "--ip", f"{netns.guest_ip}/24"]
        else:
            argv += ["--no-net"]
        if disk is None:
            argv += ["--no-disk"]
        else:
            argv += ["--disk", str(disk)]
        argv += list(args)
        self.argv = argv
        self.started = time.monotonic()
        self.log = open(self.dir / f"{name}.qemu.log", "w")
        # Own process group: run-qemu.sh execs into ip netns exec -> qemu, and
        # one killpg reaches whatever is left of that chain.
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self._qmp = None

    # --- console -----------------------------------------------------------
    def text(self) -> str:
        try:
            return self.console.read_text(errors="replace").replace("\r", "")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 60.0, after: int = 0) -> re.Match:
        """Wait for a regex on the console (searching from offset ``after``)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text(), after)
            if m:
                return m
            if self.proc.poll() is not None:
                m = rx.search(self.text(), after)
                if m:
                    return m
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before "
                                     f"/{pattern}/; console:\n{self.text()}\n"
                                     f"qemu: {self.qemu_log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ in {timeout}s; console:\n{self.text()}")
            time.sleep(0.05)

    def qemu_log(self) -> str:
        self.log.flush()
        return (self.dir / Path(self.log.name).name).read_text(errors="replace")

    # --- QMP ---------------------------------------------------------------
    def qmp(self, command: str, **arguments):
        if self._qmp is None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(str(self.qmp_path))
                    break
                except OSError:
                    s.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            s.settimeout(30)
            self._qmp = (s, s.makefile("rwb"))
            self._qmp_read()                      # greeting
            self._qmp_send("qmp_capabilities")
            self._qmp_reply()
        self._qmp_send(command, arguments)
        return self._qmp_reply()

    def _qmp_send(self, command, arguments=None):
        msg = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._qmp[1].write(json.dumps(msg).encode() + b"\n")
        self._qmp[1].flush()

    def _qmp_read(self):
        line = self._qmp[1].readline()
        if not line:
            raise EOFError("QMP closed")
        return json.loads(line)

    def _qmp_reply(self):
        while True:
            m = self._qmp_read()
            if "return" in m:
                return m["return"]
            if "error" in m:
                raise RuntimeError(f"QMP error: {m['error']}")
            # asynchronous events: ignore

    # --- end ---------------------------------------------------------------
    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        if self._qmp is not None:
            self._qmp[1].close()
            self._qmp[0].close()
            self._qmp = None
        self.log.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
