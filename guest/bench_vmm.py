#!/usr/bin/env python3
"""vmmd beside QEMU on the same guest, image and machine, in one run (run
as root, from anywhere; the figures in docs/PERFORMANCE.md, "vmmd (issue 4)"):

    python3 guest/bench_vmm.py [--boots 3] [--rounds 9] [--figures disk] [--disk-mib 64]

The daemons come from $COLO_DAEMONS_DIR, else .build/release when every
daemon is built there, else .build/debug (Tests/system/colo_daemons.py);
the first line says which vmmd runs.

For each VMM, on the project's test guest with a virtio-net NIC on a tap in
a network namespace and a virtio-blk disk on a raw image:
  * boot: start -> COLO-GUEST READY (vmmd: daemon start and VM create; QEMU:
    process start, qboot, multiboot loader);
  * TCP echo round trips per second (64-byte messages, one outstanding);
  * HTTP requests per second (one connection each, a disk write + flush each);
  * disk throughput from the guest's "disk" control command: sequential
    64 KiB reads and writes, random 4 KiB reads and writes.
vmmd's NIC is its frame socket joined to the tap by Tests/system/helpers/
tap-forwarder (proxyd's role for now) and its disk is served by
Tests/system/block_backend.py or, with --block-service blockd, by the real
blockd (sandboxed, release build when there); QEMU uses its own tap and file
backends (virtio-net-pci, virtio-blk-pci with cache=writeback). Ratios are
vmmd / QEMU for rates and QEMU / vmmd for times: above 1 means vmmd is faster.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack, closing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Tests" / "system"))
import blockd_helpers  # noqa: E402
import netns  # noqa: E402
import qemu  # noqa: E402
import vmm  # noqa: E402
from bench import echo, http, poweroff  # noqa: E402


def command(ns, text: str, timeout: float = 120) -> str:
    s = ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(text.encode(), (ns.guest_ip, 7000))
        return s.recv(512).decode()
    finally:
        s.close()


def disk(ns, mode: str, pattern: str, kib: int, count: int) -> float:
    """MiB/s of one disk command, timed from the host."""
    t = time.monotonic()
    reply = command(ns, f"disk {mode} {pattern} {kib} {count}")
    dt = time.monotonic() - t
    assert reply.startswith("ok disk bytes="), reply
    return int(reply.split()[2].split("=")[1]) / dt / (1 << 20)


def workloads(a) -> dict[str, callable]:
    """Each figure as a function of the namespace the guest is reached from."""
    seq_count = a.disk_mib * 1024 // 64 // 2
    return {
        "TCP echo round trips/s": lambda ns: a.echo / echo(ns, a.echo),
        "HTTP requests/s": lambda ns: a.http / http(ns, a.http),
        "disk sequential read MiB/s (64 KiB)": lambda ns: disk(ns, "read", "seq", 64, seq_count),
        "disk sequential write MiB/s (64 KiB)": lambda ns: disk(ns, "write", "seq", 64, seq_count),
        "disk random read MiB/s (4 KiB)": lambda ns: disk(ns, "read", "rand", 4, a.random),
        "disk random write MiB/s (4 KiB)": lambda ns: disk(ns, "write", "rand", 4, a.random),
    }


class VmmdRun:
    notify = "exit"
    # blockd serving the image as disk "bench", or None: block_backend.py.
    blockd = None

    def __init__(self, ns, image):
        self.started = time.monotonic()
        self.daemon = vmm.Vmmd(extra_args=("--virtio-notify", self.notify))
        self.backend = None if self.blockd else vmm.BlockBackend(image)
        block = blockd_helpers.attach_guest(self.blockd.sock, "bench") if self.blockd else self.backend.vmm_end
        self.forwarder = vmm.Forwarder(ns)
        try:
            reply = self.daemon.create(cmdline=f"ip={ns.guest_ip}/24", net=self.forwarder.vmm_end, block=block)
        finally:
            if self.blockd:
                block.close()
        assert reply.WhichOneof("body") == "vm_status", reply
        self.console = self.daemon.console()
        self.console.wait_for(r"^COLO-GUEST READY ", timeout=120, alive=self.daemon.alive)
        self.boot = time.monotonic() - self.started

    def close(self, ns):
        if self.daemon.status().state != vmm.colo_proto.vmmd.VM_STATE_ENDED:
            command(ns, "poweroff", timeout=10)
            self.daemon.wait_ended()
        self.forwarder.close()
        if self.backend:
            self.backend.close()
        self.daemon.close()
        if self.blockd:
            blockd_helpers.wait_for(lambda: not blockd_helpers.disk_info(self.blockd.sock, "bench").guest_attached,
                                    what="blockd to see the guest's block socket close")


class QemuRun:
    def __init__(self, ns, image, workdir):
        self.started = time.monotonic()
        self.guest = qemu.Guest(netns=ns, disk=image, workdir=workdir)
        self.guest.wait_for(r"^COLO-GUEST READY ", 120)
        self.boot = time.monotonic() - self.started

    def close(self, ns):
        try:
            if self.guest.proc.poll() is None:
                poweroff(ns, self.guest)
        finally:
            self.guest.close()


def make_image(path: Path, mib: int) -> Path:
    # Written out, not sparse: neither VMM pays for block allocation.
    with open(path, "wb") as f:
        f.write(bytes(mib << 20))
        f.flush()
        os.fsync(f.fileno())
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds of each throughput figure")
    ap.add_argument("--echo", type=int, default=300)
    ap.add_argument("--http", type=int, default=60)
    ap.add_argument("--random", type=int, default=500, help="random 4 KiB requests per direction")
    ap.add_argument("--disk-mib", type=int, default=64, help="image size; sequential passes move half of it")
    ap.add_argument("--figures", default="",
                    help="measure only the throughput figures whose names contain this text (e.g. disk)")
    ap.add_argument("--notify", choices=["exit", "eventfd"], default="exit",
                    help="vmmd's --virtio-notify (virtqueue notifications as ioeventfds or exits)")
    ap.add_argument("--block-service", choices=["python", "blockd"], default="python",
                    help="vmmd's disk server: Tests/system/block_backend.py or the real blockd (sandboxed)")
    a = ap.parse_args()
    VmmdRun.notify = a.notify
    why = vmm.missing_prerequisite() or qemu.missing_prerequisite()
    if why:
        sys.exit(f"bench_vmm: {why}")
    # A debug vmmd is several times slower: say which one runs.
    print(f"vmmd: {(vmm.colo_daemons.build_dir() / 'vmmd').resolve()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp, netns.NetNS(subnet=6) as ns_v, netns.NetNS(subnet=7) as ns_q, \
            ExitStack() as stack:
        image_v = make_image(Path(tmp) / "vmmd.img", a.disk_mib)
        image_q = make_image(Path(tmp) / "qemu.img", a.disk_mib)
        if a.block_service == "blockd":
            VmmdRun.blockd = stack.enter_context(closing(blockd_helpers.Blockd("blockd-bench")))
            blockd_helpers.open_disk(VmmdRun.blockd.sock, "bench", blockd_helpers.PRIMARY, image_v)
        # Boot times, alternating so both see the same machine load.
        boots = {"vmmd": [], "QEMU": []}
        for _ in range(a.boots):
            for name, start in (("vmmd", lambda: VmmdRun(ns_v, image_v)),
                                ("QEMU", lambda: QemuRun(ns_q, image_q, tmp))):
                run = start()
                boots[name].append(run.boot)
                run.close(ns_v if name == "vmmd" else ns_q)
        # Throughput: both guests up at once, each figure measured in
        # alternating rounds (vmmd, QEMU, vmmd, ...), the median kept.
        v = VmmdRun(ns_v, image_v)
        try:
            q = QemuRun(ns_q, image_q, tmp)
            try:
                results = {}
                for key, measure in workloads(a).items():
                    if a.figures not in key:
                        continue
                    samples = {"vmmd": [], "QEMU": []}
                    for _ in range(a.rounds):
                        samples["vmmd"].append(measure(ns_v))
                        samples["QEMU"].append(measure(ns_q))
                    results[key] = samples
            finally:
                q.close(ns_q)
        finally:
            v.close(ns_v)
        stats = v.forwarder.stats()
        frames = stats["frames_in"] + stats["frames_out"]
        print(f"tap forwarder: {frames} frames, {stats['busy_us'] / max(1, frames):.0f} us of its time per frame")
        print(f"\n{'figure':40} {'vmmd':>10} {'QEMU':>10} {'ratio':>7}   spread: vmmd, QEMU (min-max), "
              f"ratio of each round's pair (min-max)")
        report(f"boot to READY, s (median of {a.boots})", boots["vmmd"], boots["QEMU"], rate=False)
        for key, samples in results.items():
            report(key, samples["vmmd"], samples["QEMU"], rate=True)


def report(key: str, vmmd: list[float], qemu_: list[float], rate: bool) -> None:
    """Medians and their ratio (above 1: vmmd faster; for times QEMU/vmmd),
    then the spread: each side's range and the range of the per-round
    ratios (rounds alternate, so each pair saw the same machine)."""
    def ratio(v: float, q: float) -> float:
        return v / q if rate else q / v
    pairs = [ratio(v, q) for v, q in zip(vmmd, qemu_)]
    digits = 1 if rate else 2
    print(f"{key:40} {statistics.median(vmmd):10.{digits}f} {statistics.median(qemu_):10.{digits}f} "
          f"{ratio(statistics.median(vmmd), statistics.median(qemu_)):7.2f}   "
          f"{min(vmmd):.{digits}f}-{max(vmmd):.{digits}f}, {min(qemu_):.{digits}f}-{max(qemu_):.{digits}f}, "
          f"{min(pairs):.2f}-{max(pairs):.2f}")


if __name__ == "__main__":
    main()
