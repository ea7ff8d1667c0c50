"""vmmd under test: start the daemon, create VMs with fds, read the console.

``Vmmd`` runs the real daemon (seccomp filter on unless asked otherwise)
with its own runtime directory; ``create`` sends a VmCreateRequest with the
kernel, frame-socket and block-socket fds as SCM_RIGHTS, exactly as
supervisord will; ``Console`` is an attached console socket with a reader
thread, searchable like qemu.Guest's console file. Everything is torn down
on ``close()`` / leaving the ``with``, also after a failed assertion.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import colo_daemons
import colo_proto
import tap_forwarder

REPO = Path(__file__).resolve().parents[2]
GUEST_ELF = REPO / "guest" / "build" / "colo-guest.elf"


def missing_prerequisite() -> str | None:
    """Why vmmd guest tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (/dev/kvm, network namespaces, taps)"
    if not os.path.exists("/dev/kvm"):
        return "needs /dev/kvm"
    if not GUEST_ELF.exists():
        return f"{GUEST_ELF} not built: run guest/build.sh (scripts/setup.sh does)"
    return None


class Console:
    """An attached console socket; a thread collects what the guest writes."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._data = bytearray()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._closed = True
                return
            with self._lock:
                self._data += chunk

    def text(self) -> str:
        with self._lock:
            return self._data.decode(errors="replace").replace("\r", "")

    def wait_for(self, pattern: str, timeout: float = 60.0, after: int = 0,
                 alive=lambda: True) -> re.Match:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text(), after)
            if m:
                return m
            if not alive():
                raise AssertionError(f"vmmd exited before /{pattern}/; console:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ in {timeout}s; console:\n{self.text()}")
            time.sleep(0.02)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout=5)
        self.sock.close()


class Vmmd:
    """The vmmd daemon, bound to DIR/vmmd.sock in a runtime dir of its own."""

    def __init__(self, extra_args: tuple[str, ...] = (), sandbox: bool = True):
        self.bin = colo_daemons.build_dir() / "vmmd"
        self.dir = colo_daemons.runtime_dir("vmmd")
        self.sock = self.dir / "vmmd.sock"
        self.log_path = self.dir / "vmmd.log"
        self.log = open(self.log_path, "w+")
        args = [str(self.bin), "--runtime-dir", str(self.dir), *extra_args]
        if not sandbox:
            args.append("--no-sandbox")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self._consoles: list[Console] = []
        self._request_id = 0
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"vmmd exited ({self.proc.returncode}):\n{self.output()}")
            assert time.monotonic() < deadline, f"{self.sock} never appeared:\n{self.output()}"
            time.sleep(0.01)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    # --- requests ------------------------------------------------------------
    def call(self, fds: list[int] = (), timeout: float = 30.0, **body):
        """One request on a fresh connection; returns the Response (any fds
        it carried are closed)."""
        reply, got = self.call_with_fds(fds, timeout, **body)
        for fd in got:
            os.close(fd)
        return reply

    def call_with_fds(self, fds: list[int] = (), timeout: float = 30.0, **body):
        """One request on a fresh connection; returns (Response, its fds)."""
        self._request_id += 1
        request = colo_proto.envelope.Request(id=self._request_id, fd_count=len(fds))
        for field, value in body.items():
            getattr(request, field).SetInParent()
            if value is not None:
                getattr(request, field).CopyFrom(value)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(timeout)
        try:
            s.connect(str(self.sock))
            if fds:
                socket.send_fds(s, [request.SerializeToString()], list(fds))
            else:
                s.send(request.SerializeToString())
            data, got_fds, _, _ = socket.recv_fds(s, colo_proto.MAX_DATAGRAM, 4)
        finally:
            s.close()
        reply = colo_proto.envelope.Response()
        reply.ParseFromString(data)
        return reply, got_fds

    def create(self, kernel: str | os.PathLike | int = GUEST_ELF, cmdline: str = "ip=10.0.2.15/24",
               memory_mib: int = 128, net: socket.socket | None = None,
               block: socket.socket | None = None, kernel_format: int | None = None,
               initrd: str | os.PathLike | None = None, mac: bytes = b"", incoming: bool = False):
        """Sends VmCreateRequest (with ``incoming``, VmPrepareIncomingRequest:
        no kernel); returns the Response (vm_status or error)."""
        vm = colo_proto.vmmd
        config = vm.VmConfiguration(
            memory_mib=memory_mib, vcpus=1, command_line=cmdline, mac_address=mac,
            kernel_format=vm.KERNEL_FORMAT_MULTIBOOT if kernel_format is None else kernel_format)
        fds, owned = [], []
        try:
            if not incoming:
                kernel_fd = kernel if isinstance(kernel, int) else os.open(kernel, os.O_RDONLY)
                if not isinstance(kernel, int):
                    owned.append(kernel_fd)
                config.kernel.index = len(fds)
                fds.append(kernel_fd)
            if initrd is not None:
                fd = os.open(initrd, os.O_RDONLY)
                owned.append(fd)
                config.initrd.index = len(fds)
                fds.append(fd)
            if net is not None:
                config.net_frames.index = len(fds)
                fds.append(net.fileno())
            if block is not None:
                config.block.index = len(fds)
                fds.append(block.fileno())
            if incoming:
                return self.call(fds, vm_prepare_incoming=colo_proto.vmstate.VmPrepareIncomingRequest(
                    configuration=config))
            return self.call(fds, vm_create=vm.VmCreateRequest(configuration=config))
        finally:
            for fd in owned:
                os.close(fd)

    # --- pause, dirty log, state, RAM (vmstate.proto) --------------------------
    def expect(self, reply, body: str):
        assert reply.WhichOneof("body") == body, f"{body} expected: {reply}\n{self.output()[-3000:]}"
        return getattr(reply, body)

    def pause(self):
        return self.expect(self.call(vm_pause=None), "vm_paused")

    def resume(self):
        return self.expect(self.call(vm_resume=None), "vm_resumed")

    def sync_dirty_log(self) -> tuple[object, bytes]:
        """VmDirtyLog and the bitmap's bytes."""
        reply, fds = self.call_with_fds(vm_dirty_log_sync=None)
        try:
            log = self.expect(reply, "vm_dirty_log")
            assert len(fds) == 1
            return log, os.pread(fds[0], os.fstat(fds[0]).st_size, 0)
        finally:
            for fd in fds:
                os.close(fd)

    def save_state(self) -> bytes:
        reply, fds = self.call_with_fds(vm_state_save=None)
        try:
            saved = self.expect(reply, "vm_state_saved")
            assert len(fds) == 1 and os.fstat(fds[0]).st_size == saved.bytes
            return os.pread(fds[0], saved.bytes, 0)
        finally:
            for fd in fds:
                os.close(fd)

    def load_state(self, blob: bytes, check_only: bool = False):
        """Sends the blob in a memfd; returns the Response. `check_only`:
        vmmd only checks it."""
        fd = os.memfd_create("state", os.MFD_CLOEXEC)
        try:
            os.write(fd, blob)
            request = colo_proto.vmstate.VmStateLoadRequest(check_only=check_only)
            request.state.index = 0
            return self.call([fd], vm_state_load=request)
        finally:
            os.close(fd)

    def guest_memory(self) -> int:
        """The guest RAM memfd (the caller closes it)."""
        reply, fds = self.call_with_fds(vm_guest_memory=None)
        try:
            memory = self.expect(reply, "vm_guest_memory")
        except AssertionError:
            for fd in fds:
                os.close(fd)
            raise
        assert len(fds) == 1 and os.fstat(fds[0]).st_size == memory.bytes
        return fds[0]

    def status(self):
        reply = self.call(vm_status=None)
        assert reply.WhichOneof("body") == "vm_status", reply
        return reply.vm_status

    def stop(self):
        return self.call(vm_stop=None)

    def console(self) -> Console:
        reply, fds = self.call_with_fds(console_attach=None)
        assert reply.WhichOneof("body") == "console_attached", reply
        assert len(fds) == 1, reply
        c = Console(socket.socket(fileno=fds[0]))
        self._consoles.append(c)
        return c

    def wait_ended(self, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st.state == colo_proto.vmmd.VM_STATE_ENDED:
                return st
            assert time.monotonic() < deadline, f"VM still {st.state} after {timeout}s:\n{st}"
            time.sleep(0.05)

    # --- end -----------------------------------------------------------------
    def close(self) -> None:
        for c in self._consoles:
            c.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Vmmd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def exit_counts(status) -> dict[str, int]:
    """Exits by kind, summed over vCPUs."""
    counts: dict[str, int] = {}
    for vcpu in status.vcpus:
        for e in vcpu.exits:
            counts[e.kind] = counts.get(e.kind, 0) + e.count
    return counts


HERE = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3"


class BlockBackend:
    """block_backend.py serving `image` on one end of a SEQPACKET pair;
    `vmm_end` is the socket to hand to vmmd."""

    def __init__(self, image: str | os.PathLike, read_only: bool = False):
        self.vmm_end, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = [PYTHON, str(HERE / "block_backend.py"), "--socket-fd", str(theirs.fileno()),
                "--image", str(image)]
        if read_only:
            args.append("--read-only")
        self.proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()

    def close(self) -> None:
        self.vmm_end.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "BlockBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Forwarder:
    """helpers/tap-forwarder joining a SEQPACKET pair to `ns`'s tap; `vmm_end`
    is the socket to hand to vmmd. ``stats()`` after close: its counters.
    With ``switchable``, ``new_socket()`` makes another pair, and
    ``switch()`` moves the tap to it (a VM migrating between vmmds)."""

    def __init__(self, ns, switchable: bool = False):
        binary = tap_forwarder.forwarder_binary()
        self.vmm_end, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._stats_r, stats_w = os.pipe()
        args = [str(binary), ns.tap, str(theirs.fileno()), "--stats-fd", str(stats_w)]
        passed = [theirs.fileno(), stats_w]
        self._switch = None
        if switchable:
            self._switch, switch_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            args += ["--switch-fd", str(switch_theirs.fileno())]
            passed.append(switch_theirs.fileno())
        self.proc = subprocess.Popen(ns.wrap(args), pass_fds=passed, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, text=True)
        theirs.close()
        if self._switch is not None:
            switch_theirs.close()
        os.close(stats_w)
        self._stats = ""
        self._pending: socket.socket | None = None
        # The tap is attached before the VM may send its first frame.
        ready = self.proc.stdout.readline().strip()
        self.proc.stdout.close()
        if ready != "ready":
            self.close()
            raise RuntimeError("tap-forwarder did not start")

    def new_socket(self) -> socket.socket:
        """A new frame socket for another vmmd; the tap moves to it with switch()."""
        mine, self._pending = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return mine

    def switch(self) -> None:
        socket.send_fds(self._switch, [b"s"], [self._pending.fileno()])
        self._pending.close()
        self._pending = None

    def close(self) -> None:
        if self.vmm_end.fileno() >= 0:
            self.vmm_end.close()
        if self._switch is not None:
            self._switch.close()
        if self._pending is not None:
            self._pending.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._stats_r >= 0:
            self._stats = os.read(self._stats_r, 4096).decode()
            os.close(self._stats_r)
            self._stats_r = -1

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in (w.split("=") for w in self._stats.split())}

    def __enter__(self) -> "Forwarder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
