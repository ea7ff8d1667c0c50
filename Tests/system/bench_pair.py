#!/usr/bin/env python3
"""Benchmark of the pair (issue 9), all in one run on this machine:

- client throughput under lock-step: HTTP requests per second on one
  keep-alive connection (each increments the guest's disk counter: a disk
  write and flush, replicated), beside the same guest running unreplicated
  (the survivor of the same pair once its partner is gone: no comparison,
  no checkpoints, no disk replication) measured in the same run;
- checkpoint pause p50/p99 and checkpoints per minute during that workload
  (from the primary supervisord's checkpoint events);
- failover time: the longest gap the client sees (last reply before the
  primary host is killed to the first reply after), connection kept.

Run as root after scripts/setup.sh:
    /usr/bin/python3 Tests/system/bench_pair.py [--failovers 3] [--heartbeat 50ms,250ms]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pair import Pair  # noqa: E402


def client_run(pair: Pair, seconds: float, interval: float, event=None, at: float = 0.0) -> dict:
    client = subprocess.Popen(
        ["ip", "netns", "exec", "colo-client", sys.executable,
         str(Path(__file__).resolve().parents[2] / "scripts" / "demo_client.py"),
         "--seconds", str(seconds), "--interval", str(interval)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if event:
        time.sleep(at)
        event()
    out, _ = client.communicate(timeout=seconds + 60)
    summary = json.loads(out.strip().splitlines()[-1])
    if not summary["connection_kept"] or not summary["counts_consecutive"]:
        raise SystemExit(f"client failed: {summary}\n{pair.logs()}")
    return summary


def pauses(pair: Pair, since: float) -> list[tuple[float, str]]:
    """(pause ms, trigger) of the primary's checkpoints logged after `since` (epoch s)."""
    out = []
    for line in (pair.dir / "host-a" / "daemons.log").read_text(errors="replace").splitlines():
        if "supervisord" not in line or " event=checkpoint " not in line:
            continue
        stamp = datetime.fromisoformat(line[:23]).replace(tzinfo=timezone.utc).timestamp()
        if stamp < since:
            continue
        pause = re.search(r"pause_us=(\d+)", line)
        trigger = re.search(r"trigger=([\w-]+)", line)
        if pause and trigger and trigger.group(1) != "stop-and-copy":
            out.append((int(pause.group(1)) / 1000, trigger.group(1)))
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--heartbeat", default="50ms,250ms")
    args = parser.parse_args()

    import test_pair
    test_pair.HEARTBEAT = args.heartbeat
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pair = Pair(Path(tmp) / "demo")
        try:
            up = pair.up()
            print(f"coloctl up to lock-step: {up:.1f} s")
            start = time.time()
            replicated = client_run(pair, args.seconds, 0.0)
            cps = pauses(pair, start)
            elapsed = time.time() - start
            pair.kill_host("b")
            pair.wait_for(lambda: pair.report("a").get("state") == "alone", 10, "host a alone")
            alone = client_run(pair, args.seconds, 0.0)
            rate_replicated = replicated["requests"] / args.seconds
            rate_alone = alone["requests"] / args.seconds
            values = [p for p, _ in cps]
            triggers: dict[str, int] = {}
            for _, t in cps:
                triggers[t] = triggers.get(t, 0) + 1
            results["throughput"] = {
                "lockstep_req_s": round(rate_replicated, 1), "unreplicated_req_s": round(rate_alone, 1),
                "ratio": round(rate_replicated / rate_alone, 2)}
            results["checkpoints"] = {
                "count": len(values), "per_minute": round(len(values) / elapsed * 60, 1),
                "pause_p50_ms": round(percentile(values, 50), 2) if values else None,
                "pause_p99_ms": round(percentile(values, 99), 2) if values else None,
                "by_trigger": triggers}
        finally:
            pair.down()

        gaps = []
        for _ in range(args.failovers):
            pair = Pair(Path(tmp) / "demo")
            try:
                pair.up()
                summary = client_run(pair, 8, 0.02, event=lambda: pair.kill_host("a"), at=3)
                gaps.append(summary["longest_gap_ms"])
            finally:
                pair.down()
        results["failover"] = {"heartbeat": args.heartbeat, "gaps_ms": gaps,
                               "median_ms": statistics.median(gaps) if gaps else None}

    t = results["throughput"]
    c = results["checkpoints"]
    print(f"HTTP on one connection: lock-step {t['lockstep_req_s']} req/s, unreplicated {t['unreplicated_req_s']} req/s "
          f"(ratio {t['ratio']}x; goal >= 0.8x)")
    print(f"checkpoints: {c['per_minute']}/min, pause p50 {c['pause_p50_ms']} ms, p99 {c['pause_p99_ms']} ms, "
          f"by trigger {c['by_trigger']}")
    f = results["failover"]
    print(f"failover (primary host killed, heartbeat {f['heartbeat']}): gaps {f['gaps_ms']} ms, "
          f"median {f['median_ms']} ms (goal < 1000 ms, connection kept)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
