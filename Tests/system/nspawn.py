"""Real systemd for system tests: a Debian root booted with systemd-nspawn.

DESIGN.md section 10 describes what works on these machines and how; this
module is that recipe as code, shared by every test that needs a real
systemd as PID 1 (socket activation, journald, unit sandboxing):

* ``ensure_root()`` builds a Debian bookworm root with debootstrap once and
  caches it outside the repository (``/var/cache/colo-test/nspawn-root`` or
  ``$COLO_NSPAWN_ROOT``). A file lock makes concurrent test processes wait
  for one build instead of racing two.
* ``Container`` boots that root with ``--volatile=overlay`` (so several
  containers share one root and none of them changes it), waits for
  ``systemctl is-system-running``, runs commands inside with ``nsenter`` and
  tears everything down -- nspawn, its cgroup directories, its entry in
  ``/run/systemd/nspawn`` -- even when the test fails.

Nothing here fakes systemd: the container's PID 1 is Debian's systemd.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

DEFAULT_ROOT = Path(os.environ.get("COLO_NSPAWN_ROOT", "/var/cache/colo-test/nspawn-root"))
SUITE = "bookworm"
MIRROR = os.environ.get("COLO_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the root holds beyond minbase. Changing this list changes MARKER's
# content, so an old cached root is rebuilt rather than silently reused.
PACKAGES = ("systemd", "systemd-sysv", "dbus")
MARKER = ".colo-nspawn-root"
MARKER_CONTENT = f"suite={SUITE} packages={','.join(PACKAGES)} v1\n"

CGROUP_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
NSPAWN_RUN_DIR = Path("/run/systemd/nspawn")


def missing_requirements() -> str | None:
    """Why containers cannot run here, or None when they can.

    Tests call this to skip with a message that names the missing piece
    instead of failing deep inside nspawn with an obscure error.
    """
    if os.geteuid() != 0:
        return "systemd-nspawn containers need root"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs it)"
    if not any(Path(h).is_dir() for h in CGROUP_HIERARCHIES) and not Path(
        "/sys/fs/cgroup/cgroup.controllers"
    ).exists():
        return "no cgroup hierarchy mounted under /sys/fs/cgroup"
    return None


def ensure_root(root: Path = DEFAULT_ROOT) -> Path:
    """Return a bootable Debian root, building it with debootstrap if needed.

    The build goes to a sibling directory that is renamed into place only
    after debootstrap succeeded and the marker is written, so an interrupted
    build never leaves a half root that a later run would boot.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    lock_path = root.parent / (root.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = root / MARKER
        if marker.is_file() and marker.read_text() == MARKER_CONTENT:
            return root
        if root.exists():
            shutil.rmtree(root)
        staging = root.parent / f"{root.name}.building-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        cmd = [
            "debootstrap",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            SUITE,
            str(staging),
            MIRROR,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(
                f"debootstrap failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        # A machine id makes journald keep one journal per boot; the overlay
        # gives every container a copy, which is all the tests need.
        (staging / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        # debootstrap leaves the apt cache behind; it is ~30 MB of nothing.
        for deb in (staging / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        (staging / MARKER).write_text(MARKER_CONTENT)
        staging.rename(root)
        return root


def _write_pid_to_cgroups(cgroup_dirs: list[Path]) -> None:
    """Move the calling process into its own cgroup in every hierarchy.

    Runs in the forked child just before exec of systemd-nspawn
    (``preexec_fn``): nspawn then starts from a cgroup nobody else uses, as
    DESIGN.md section 10 requires, and the test process itself stays put.
    """
    for d in cgroup_dirs:
        (d / "cgroup.procs").write_text(str(os.getpid()))


class Container:
    """One booted systemd-nspawn container over a shared, read-only root.

    Use as a context manager; ``__exit__`` always tears down. ``binds_ro``
    and ``binds`` are lists of ``(host_path, container_path)``; host devices
    listed in ``devices`` are bound at the same path (nspawn then allows
    them in the container's device policy). ``network_namespace`` names a
    namespace under /run/netns for the container to join (its interfaces
    are the namespace's, set up by the test); without it the container
    gets a private network of its own.
    """

    def __init__(
        self,
        root: Path,
        name: str | None = None,
        binds_ro: list[tuple[str, str]] = (),
        binds: list[tuple[str, str]] = (),
        devices: list[str] = ("/dev/kvm",),
        log_dir: Path | None = None,
        network_namespace: str | None = None,
    ):
        self.root = Path(root)
        self.name = name or f"colo-test-{uuid.uuid4().hex[:8]}"
        self.binds_ro = list(binds_ro)
        self.binds = list(binds)
        self.devices = [d for d in devices if Path(d).exists()]
        self.network_namespace = network_namespace
        self.log_path = (Path(log_dir) if log_dir else Path("/tmp")) / f"{self.name}.console.log"
        self.cgroup_dirs = [Path(h) / self.name for h in CGROUP_HIERARCHIES if Path(h).is_dir()]
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None

    # -- life cycle ---------------------------------------------------------

    def __enter__(self) -> "Container":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> None:
        """Boot the container and wait until its systemd reports a state.

        ``running`` and ``degraded`` both count as booted: a minbase root
        may have a unit that fails for container reasons, and the tests
        check their own units explicitly. The console goes to a log file
        that failures quote.
        """
        remove_stale_cgroups()
        for d in self.cgroup_dirs:
            d.mkdir(exist_ok=True)
        cmd = [
            "systemd-nspawn",
            "-D", str(self.root),
            "--register=no",
            "--keep-unit",
            "-b",
            *([f"--network-namespace-path=/run/netns/{self.network_namespace}"] if self.network_namespace
              else ["--private-network"]),
            "--system-call-filter=bpf",
            "--volatile=overlay",
            "-M", self.name,
        ]
        for dev in self.devices:
            cmd.append(f"--bind={dev}")
        for src, dst in self.binds_ro:
            cmd.append(f"--bind-ro={src}:{dst}")
        for src, dst in self.binds:
            cmd.append(f"--bind={src}:{dst}")
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        # nspawn wants a terminal or a pipe on stdin; /dev/null makes it run
        # the console in passive mode and never read from the test's stdin.
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=lambda: _write_pid_to_cgroups(self.cgroup_dirs),
        )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console()}")
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None:
                r = subprocess.run(
                    self._nsenter(["systemctl", "is-system-running"]),
                    capture_output=True, text=True, timeout=10,
                )
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"container {self.name} did not boot in {timeout}s (state {state!r}):\n{self.console()}")

    def _find_leader(self) -> int | None:
        """Find the container's PID 1 (its systemd) as a host pid.

        It is the descendant of nspawn whose innermost pid-namespace pid is
        1; nspawn forks twice before that process exists, so walk the tree.
        """
        assert self.proc is not None
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            ppid = int(fields.get("PPid", "0"))
            children.setdefault(ppid, []).append(int(entry.name))
            nspid = fields.get("NSpid", "").split()
            if len(nspid) > 1 and nspid[-1] == "1":
                children.setdefault(-1, []).append(int(entry.name))
        todo = list(children.get(self.proc.pid, []))
        seen = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            if pid in children.get(-1, []):
                return pid
            todo.extend(children.get(pid, []))
        return None

    def kill(self) -> None:
        """The host dies: SIGKILL to the container's PID 1 ends its pid
        namespace, every process in it at once, with no chance to clean
        up; nspawn then exits. ``stop()`` still removes the traces."""
        if self.leader is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)

    def stop(self) -> None:
        """Stop the container and remove every trace of it on the host.

        SIGTERM to nspawn makes it ask the container's systemd to power
        off (~2 s); SIGKILL after 20 s, then kill whatever is still in our
        cgroups so that their directories can be removed.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        self.leader = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None
        for d in self.cgroup_dirs:
            _remove_cgroup_tree(d)
        # nspawn leaves per-machine state under /run/systemd/nspawn; remove
        # ours, then the directories if no other container still uses them.
        if NSPAWN_RUN_DIR.is_dir():
            for sub in NSPAWN_RUN_DIR.iterdir():
                shutil.rmtree(sub / self.name, ignore_errors=True)
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                NSPAWN_RUN_DIR.rmdir()

    # -- inside the container -----------------------------------------------

    def _nsenter(self, argv: list[str]) -> list[str]:
        """The host command that runs ``argv`` in all the container's namespaces."""
        assert self.leader is not None
        return ["nsenter", "-t", str(self.leader), "-a", "--", *argv]

    def run(self, argv: list[str] | str, check: bool = True, timeout: float = 30, input: str | None = None,
            ) -> subprocess.CompletedProcess:
        """Run a command inside the container and return its result.

        A string is run by /bin/sh -c. The environment is a clean minimal
        one: the test's own environment (virtualenv paths, LISTEN_* or
        NOTIFY_SOCKET of an outer manager) must not leak into the container.
        Note that processes entered this way do not carry any unit's
        sandbox: use ``systemd-run`` for that (DESIGN.md section 10).
        """
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        r = subprocess.run(self._nsenter(argv), capture_output=True, text=True, timeout=timeout, input=input,
                           env=env)
        if check and r.returncode != 0:
            raise AssertionError(
                f"in container {self.name}: {argv!r} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
            )
        return r

    def path(self, inside: str) -> Path:
        """Host path of a file in the container's file system (its overlay)."""
        assert self.leader is not None
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def install(self, src: Path, dst: str, mode: int = 0o644) -> None:
        """Copy a host file into the container (writes go to the overlay)."""
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        os.chmod(target, mode)

    def console(self) -> str:
        """The container's console output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


def remove_stale_cgroups() -> None:
    """Remove cgroup directories of earlier runs that were killed before
    their teardown (SIGKILL, a lost CI runner).

    Only trees without a single process are removed, so containers of a
    concurrent test run, which always hold processes, are left alone.
    """
    for h in CGROUP_HIERARCHIES:
        for d in Path(h).glob("colo-test-*") if Path(h).is_dir() else ():
            try:
                busy = any((p / "cgroup.procs").read_text().strip()
                           for p in [d, *(q for q in d.rglob("*") if q.is_dir())])
            except OSError:
                continue
            if not busy:
                for sub in sorted((q for q in d.rglob("*") if q.is_dir()), key=lambda q: len(q.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    d.rmdir()


def _remove_cgroup_tree(d: Path) -> None:
    """Kill any process left in a cgroup tree and remove its directories.

    cgroup directories can only be removed when empty of processes and of
    child groups, so kill first and remove bottom-up; a process may take a
    moment to leave after SIGKILL, hence the short retry loop.
    """
    if not d.is_dir():
        return
    for _ in range(50):
        dirs = sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        dirs.append(d)
        for sub in dirs:
            with contextlib.suppress(OSError):
                for pid in (sub / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        for sub in dirs:
            with contextlib.suppress(OSError):
                sub.rmdir()
        if not d.exists():
            return
        time.sleep(0.1)


# -- a COLO host installed in a container (units/README.md) -----------------

GUEST_PATH = "/usr/share/colo/colo-guest.elf"


def blockd_state(instance: str) -> str:
    """blockd's state directory of an instance: the disk image lives there."""
    return f"/var/lib/colo/{instance}/blockd"


def host_configuration(instance: str, host: str, role: str, listen: str, peer: str,
                       witness: str | None = None, heartbeat_timeout: str = "400ms") -> str:
    """/etc/colo/INSTANCE.conf of one installed host: the format coloctl up
    writes, with the paths units/README.md installs to."""
    witness_line = f"witness = {witness}\n" if witness else ""
    return f"""[pair]
name = {instance}
host = host-{host}
role = {role}
listen = {listen}
peer = {peer}
key-file = /etc/colo/{instance}.key
{witness_line}
[guest]
kernel = {GUEST_PATH}
command-line = ip=10.0.2.15/24
memory = 64M
vcpus = 1
disk = {blockd_state(instance)}/disk.img

[network]
tap = tap0
guest-mac = 52:54:00:c0:10:01
guest-ip = 10.0.2.15

[checkpoint]
max-interval = 2s
compare-timeout = 200ms
queue-limit = 4096
ram-channels = 2

[heartbeat]
interval = 100ms
timeout = {heartbeat_timeout}
"""


def install_disk(container: "Container", instance: str) -> None:
    """blockd's state directory (group-writable for supervisord's overlay
    clean-up) with an empty 1 MiB disk image only blockd may read."""
    state = blockd_state(instance)
    container.run(f"install -d -o colo-blockd -g colo-blockd -m 0770 {state} && "
                  f"truncate -s 1M {state}/disk.img && chown colo-blockd:colo-blockd {state}/disk.img && "
                  f"chmod 0600 {state}/disk.img")
