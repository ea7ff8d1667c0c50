"""`coloctl console` (issue 4): attached to a running test guest under the
real, sandboxed vmmd, it shows the console's history and then live output,
detaches on Ctrl-] (byte 0x1D) with status 0, exits 2 when no vmmd answers
and 3 when vmmd goes away under it."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time

import pytest

import colo_daemons
import vmm

_missing = vmm.missing_prerequisite()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"vmmd guest tests: {_missing}")


class Coloctl:
    """`coloctl console` as a process; a thread collects its stdout."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([str(colo_daemons.build_dir() / "coloctl"), "console", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self.proc.stdout.read1(65536):
            with self._lock:
                self.output += chunk

    def text(self) -> str:
        with self._lock:
            return self.output.decode(errors="replace")

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.text()):
            assert self.proc.poll() is None, f"coloctl exited ({self.proc.returncode}): {self.proc.stderr.read()}"
            assert time.monotonic() < deadline, f"no {what} from coloctl console:\n{self.text()[-2000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 10) -> tuple[int, str]:
        """Its exit status and stderr (killed if it outlives `timeout`)."""
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        self._reader.join(timeout=5)
        return code, self.proc.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ticks(text: str) -> list[int]:
    return [int(s) for s in re.findall(r"^COLO-GUEST TICK s=(\d+) ", text, re.M)]


def test_console_streams_history_and_live_output_and_detaches(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    # The NIC's frames go to a socket nobody reads: the guest boots and ticks.
    net, frames = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    daemon = vmm.Vmmd()
    try:
        with vmm.BlockBackend(image) as backend:
            reply = daemon.create(net=net, block=backend.vmm_end)
            assert reply.WhichOneof("body") == "vm_status", reply
            daemon.console().wait_for(r"^COLO-GUEST READY ", timeout=120, alive=daemon.alive)
            host_dir = daemon.dir
            # HOST: the vmmd's runtime directory inside a parent one.
            console = Coloctl("--runtime-dir", str(host_dir.parent), host_dir.name)
            try:
                # History first (the boot from its first line), then live ticks.
                console.wait_until(lambda t: "COLO-GUEST START" in t and "COLO-GUEST READY" in t, 30, "history")
                seen = max(ticks(console.text()), default=-1)
                console.wait_until(lambda t: max(ticks(t), default=-1) >= seen + 2, 30, "live ticks")
                console.proc.stdin.write(b"\x1d")
                console.proc.stdin.flush()
                code, stderr = console.finish()
                assert code == 0, stderr
            finally:
                console.kill()

            missing = Coloctl("--runtime-dir", str(tmp_path / "nowhere"))
            code, stderr = missing.finish()
            assert code == 2 and "vmmd.sock" in stderr, (code, stderr)

            attached = Coloctl("--runtime-dir", str(host_dir))
            try:
                attached.wait_until(lambda t: "COLO-GUEST READY" in t, 30, "history")
                daemon.proc.terminate()
                code, stderr = attached.finish(timeout=30)
                assert code == 3 and "vmmd closed the console" in stderr, (code, stderr)
            finally:
                attached.kill()
    finally:
        daemon.close()
        net.close()
        frames.close()
