#!/usr/bin/env python3
"""vmmd beside QEMU on the same guest, image and machine, in one run (run
as root, from anywhere; the figures in docs/PERFORMANCE.md, "vmmd (issue 4)"):

    python3 guest/bench_vmm.py [--boots 3] [--echo 500] [--http 100] [--disk-mib 64]

For each VMM, on the project's test guest with a virtio-net NIC on a tap in
a network namespace and a virtio-blk disk on a raw image:
  * boot: start -> COLO-GUEST READY (vmmd: daemon start and VM create; QEMU:
    process start, qboot, multiboot loader);
  * TCP echo round trips per second (64-byte messages, one outstanding);
  * HTTP requests per second (one connection each, a disk write + flush each);
  * disk throughput from the guest's "disk" control command: sequential
    64 KiB reads and writes, random 4 KiB reads and writes.
vmmd's NIC is its frame socket joined to the tap by Tests/system/helpers/
tap-forwarder and its disk is served by Tests/system/block_backend.py
(proxyd's and blockd's roles for now); QEMU uses its own tap and file
backends (virtio-net-pci, virtio-blk-pci with cache=writeback). Ratios are
vmmd / QEMU for rates and QEMU / vmmd for times: above 1 means vmmd is faster.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Tests" / "system"))
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

    def __init__(self, ns, image):
        self.started = time.monotonic()
        self.daemon = vmm.Vmmd(extra_args=("--virtio-notify", self.notify))
        self.backend = vmm.BlockBackend(image)
        self.forwarder = vmm.Forwarder(ns)
        reply = self.daemon.create(cmdline=f"ip={ns.guest_ip}/24", net=self.forwarder.vmm_end,
                                   block=self.backend.vmm_end)
        assert reply.WhichOneof("body") == "vm_status", reply
        self.console = self.daemon.console()
        self.console.wait_for(r"^COLO-GUEST READY ", timeout=120, alive=self.daemon.alive)
        self.boot = time.monotonic() - self.started

    def close(self, ns):
        if self.daemon.status().state != vmm.colo_proto.vmmd.VM_STATE_ENDED:
            command(ns, "poweroff", timeout=10)
            self.daemon.wait_ended()
        self.forwarder.close()
        self.backend.close()
        self.daemon.close()


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
    ap.add_argument("--notify", choices=["exit", "eventfd"], default="exit",
                    help="vmmd's --virtio-notify (virtqueue notifications as ioeventfds or exits)")
    a = ap.parse_args()
    VmmdRun.notify = a.notify
    why = vmm.missing_prerequisite() or qemu.missing_prerequisite()
    if why:
        sys.exit(f"bench_vmm: {why}")
    with tempfile.TemporaryDirectory() as tmp, netns.NetNS(subnet=6) as ns_v, netns.NetNS(subnet=7) as ns_q:
        image_v = make_image(Path(tmp) / "vmmd.img", a.disk_mib)
        image_q = make_image(Path(tmp) / "qemu.img", a.disk_mib)
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
                    samples = {"vmmd": [], "QEMU": []}
                    for _ in range(a.rounds):
                        samples["vmmd"].append(measure(ns_v))
                        samples["QEMU"].append(measure(ns_q))
                    results[key] = {name: statistics.median(values) for name, values in samples.items()}
            finally:
                q.close(ns_q)
        finally:
            v.close(ns_v)
        stats = v.forwarder.stats()
        frames = stats["frames_in"] + stats["frames_out"]
        print(f"frame forwarder: {frames} frames, {stats['busy_us'] / max(1, frames):.0f} us of its time per frame")
        print(f"\n{'figure':40} {'vmmd':>10} {'QEMU':>10} {'ratio':>7}")
        boot_v, boot_q = statistics.median(boots["vmmd"]), statistics.median(boots["QEMU"])
        print(f"{'boot to READY, s (median of ' + str(a.boots) + ')':40} {boot_v:10.2f} {boot_q:10.2f} "
              f"{boot_q / boot_v:7.2f}")
        for key, pair in results.items():
            print(f"{key:40} {pair['vmmd']:10.1f} {pair['QEMU']:10.1f} {pair['vmmd'] / pair['QEMU']:7.2f}")


if __name__ == "__main__":
    main()
