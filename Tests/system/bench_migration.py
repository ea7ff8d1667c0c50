"""Live-migration benchmark (issue 6): the test guest moved between two
vmmd processes by two checkpointds, beside QEMU's own migration of the same
guest (same RAM size, same dirtier rate, same time since boot) between two
qemu-system-x86_64 processes over loopback TCP, in the same run.

    sudo /usr/bin/python3 Tests/system/bench_migration.py [--runs 3] [--memory-mib 64] [--dirty 8]

Ours: pre-copy rounds (checkpoint_harness.VmReplication.precopy: a dirty-log
sync, a CheckpointSendPages round, wait until sent, until checkpointd
advises stop-and-copy), then the stop-and-copy as supervisord would drive
it (pause, sync, save, take / receive, check, commit, load, resume on the
target). Total = first sync to target resumed; downtime = source paused to
target resumed, every control round trip of the Python driver included.
QEMU: `migrate` over tcp:127.0.0.1 inside the namespace, `query-migrate`'s
total-time and downtime; once with QEMU's defaults and once with its
bandwidth limit lifted and the same 100 ms downtime target as ours. Needs
release builds (COLO_DAEMONS_DIR=.build/release).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import netns
import qemu
import test_vmstate
import vmm
from checkpoint_harness import VmReplication
from test_vmstate import Host, boot

SETTLE_S = 3.0


def ours(ns: netns.NetNS, disk: Path, args) -> dict:
    a, b = Host(), Host()
    replication = None
    try:
        with vmm.Forwarder(ns, switchable=True) as forwarder:
            boot(a, disk, ns, forwarder, dirty=args.dirty)
            time.sleep(SETTLE_S)
            b.prepare(disk, ns, forwarder)
            attaching = time.monotonic()
            replication = VmReplication(a.vmmd, b.vmmd, channels=args.channels, verify=False, incoming=True)
            started = time.monotonic()
            rounds = replication.precopy()

            b.console = b.vmmd.console()

            def switch(_figures):
                forwarder.switch()

            figures = replication.checkpoint(resume_source=False, before_resume=switch)
            total = time.monotonic() - started
            b.console.wait_for(r"^COLO-GUEST TICK ", timeout=15, alive=b.vmmd.alive)
            progress = replication.pair.primary.status().progress
            a.finish()
            b.finish()
            return {"steps": figures["steps"], "total_ms": total * 1000, "downtime_ms": figures["downtime_s"] * 1000,
                    "rounds": len(rounds), "mbytes": progress.bytes_transferred / 1e6,
                    "checkpointd_pause_ms": figures["taken"].total_us / 1000,
                    "attach_ms": (started - attaching) * 1000}
    finally:
        if replication is not None:
            replication.close()
        a.close()
        b.close()


def theirs(ns: netns.NetNS, disk: Path, workdir: Path, args, tuned: bool, port: int) -> dict:
    target_disk = workdir / "target-disk.img"
    shutil.copy(disk, target_disk)
    common = ["--mem", str(args.memory_mib), "--dirty", str(args.dirty)]
    with qemu.Guest(netns=ns, disk=disk, args=common, workdir=workdir, name="source") as source, \
            qemu.Guest(netns=ns, disk=target_disk, workdir=workdir, name="target",
                       args=[*common, "--tap", "tap1", "--", "-incoming", f"tcp:127.0.0.1:{port}"]) as target:
        source.wait_for(r"^COLO-GUEST READY ", timeout=60)
        time.sleep(SETTLE_S)
        if tuned:
            source.qmp("migrate-set-parameters", **{"max-bandwidth": 100 << 30, "downtime-limit": 100})
        source.qmp("migrate", uri=f"tcp:127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while (info := source.qmp("query-migrate")).get("status") not in ("completed", "failed", "cancelled"):
            assert time.monotonic() < deadline, info
            time.sleep(0.01)
        assert info["status"] == "completed", info
        mark = len(target.text())
        target.wait_for(r"^COLO-GUEST TICK ", timeout=15, after=mark)
        return {"total_ms": float(info["total-time"]), "downtime_ms": float(info["downtime"]),
                "rounds": info["ram"].get("dirty-sync-count", 0),
                "mbytes": info["ram"]["transferred"] / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-mib", type=int, default=test_vmstate.MEMORY_MIB)
    parser.add_argument("--dirty", type=int, default=8, help="guest dirtier, MiB/s")
    parser.add_argument("--channels", type=int, default=2)
    args = parser.parse_args()
    if args.memory_mib != test_vmstate.MEMORY_MIB:
        test_vmstate.MEMORY_MIB = args.memory_mib
    results: dict[str, list[dict]] = {"ours": [], "qemu default": [], "qemu tuned": []}
    with tempfile.TemporaryDirectory(prefix="colo-bench-migration-") as tmp:
        workdir = Path(tmp)
        disk = workdir / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
        with netns.NetNS(subnet=73) as ns:
            ns.ip("tuntap", "add", "dev", "tap1", "mode", "tap")
            ns.ip("link", "set", "tap1", "up")
            for run in range(args.runs):
                results["ours"].append(ours(ns, disk, args))
                results["qemu default"].append(theirs(ns, disk, workdir, args, tuned=False, port=4400 + 2 * run))
                results["qemu tuned"].append(theirs(ns, disk, workdir, args, tuned=True, port=4401 + 2 * run))
                print(f"run {run + 1}: " + "; ".join(
                    f"{name} total {r[-1]['total_ms']:.0f} ms downtime {r[-1]['downtime_ms']:.0f} ms"
                    for name, r in results.items()), flush=True)
    steps = {name: statistics.median(r["steps"][name] for r in results["ours"]) for name in results["ours"][0]["steps"]}
    for runs in results.values():
        for r in runs:
            r.pop("steps", None)
    median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
              for name, runs in results.items()}
    print(f"\n{args.memory_mib} MiB guest, dirtier {args.dirty} MiB/s, {args.runs} runs, medians:")
    print(f"{'':14} {'total ms':>9} {'downtime ms':>12} {'rounds':>7} {'MB sent':>8}")
    for name, m in median.items():
        print(f"{name:14} {m['total_ms']:9.0f} {m['downtime_ms']:12.1f} {m['rounds']:7.0f} {m['mbytes']:8.1f}")
    best = min(("qemu default", "qemu tuned"), key=lambda n: median[n]["downtime_ms"])
    for name in ("qemu default", "qemu tuned"):
        print(f"ours / {name}: total {median['ours']['total_ms'] / median[name]['total_ms']:.2f}x, "
              f"downtime {median['ours']['downtime_ms'] / median[name]['downtime_ms']:.2f}x")
    print(f"checkpointd's own share of our downtime (take to commit acknowledged): "
          f"{median['ours']['checkpointd_pause_ms']:.1f} ms; best QEMU downtime: {best}")
    print("our downtime, step by step (ms since the source's pause request, medians): "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in steps.items()))
    print(f"ours, before the total: pairing the two checkpointds (authentication, colo-cache and "
          f"target RAM faulted in): {median['ours']['attach_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
