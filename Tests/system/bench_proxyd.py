"""proxyd benchmark (issue 7): request round-trip latency and TCP stream
throughput through a primary/secondary proxyd pair in compare mode, beside
a direct path (a veth pair between two namespaces: the kernel alone)
measured in the same run.

    sudo /usr/bin/python3 Tests/system/bench_proxyd.py [--seconds 5] [--megabytes 256]

The compare path is proxyd_pair.GuestPair: client namespace -> tap ->
primary proxyd -> tap-forwarder -> primary "guest" namespace, the inbound
frames mirrored over the authenticated link to the secondary proxyd and its
"guest"; the primary releases each answer once the secondary produced the
same bytes. helpers/rr-bench is the load (open-loop requests at a fixed
rate, 64 bytes each, echoed) and the stream source/drain. Needs release
builds (COLO_DAEMONS_DIR=.build/release).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import netns
import tap_forwarder
from proxyd_pair import GuestPair

RR = tap_forwarder.HELPERS / "build" / "rr-bench"


def start(ns: netns.NetNS, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(ns.wrap([str(RR), *args]), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def run(ns: netns.NetNS, *args: str) -> dict[str, float]:
    out = ns.exec(str(RR), *args, timeout=600).stdout.split()
    return {out[i]: float(out[i + 1]) for i in range(0, len(out), 2)}


def cpu_seconds(pid: int) -> float:
    """User + system time of process `pid` so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(client: netns.NetNS, servers: list[netns.NetNS], address: str, port: int, args,
            proxyds: tuple[int, ...] = ()) -> dict:
    results = {}
    for rate in (1000, 10000):
        procs = [start(ns, "echo", address, str(port)) for ns in servers]
        results[rate] = run(client, "rr", address, str(port), str(rate), str(args.seconds), "64")
        for proc in procs:
            proc.wait(timeout=10)
        port += 1
    procs = [start(ns, "source", address, str(port), str(args.megabytes)) for ns in servers]
    before = [cpu_seconds(pid) for pid in proxyds]
    results["stream"] = run(client, "drain", address, str(port))
    results["stream_cpu"] = [cpu_seconds(pid) - used for pid, used in zip(proxyds, before)]
    for proc in procs:
        proc.wait(timeout=60)
    return results


def direct_path(args) -> dict:
    with netns.NetNS(subnet=71) as client, netns.NetNS(subnet=72) as server:
        subprocess.run(["ip", "link", "add", "v0", "netns", client.name, "type", "veth",
                        "peer", "v1", "netns", server.name], check=True)
        client.ip("addr", "add", "10.77.73.1/24", "dev", "v0")
        server.ip("addr", "add", "10.77.73.2/24", "dev", "v1")
        client.ip("link", "set", "v0", "up")
        server.ip("link", "set", "v1", "up")
        time.sleep(0.5)
        return measure(client, [server], "10.77.73.2", 9100, args)


def compare_path(args) -> tuple[dict, object]:
    with GuestPair(timeout_ms=1000, queue_limit=65536) as pair:
        results = measure(pair.client, [pair.primary_guest, pair.secondary_guest], "10.77.70.2", 9200, args,
                          (pair.primary.daemon.proc.pid, pair.secondary.daemon.proc.pid))
        return results, pair.primary.counters()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--megabytes", type=int, default=256)
    args = parser.parse_args()
    tap_forwarder.forwarder_binary()
    direct = direct_path(args)
    compared, counters = compare_path(args)
    print(f"{'figure':34} {'direct':>10} {'compare':>10} {'ratio':>7}")
    for rate in (1000, 10000):
        for key, name in (("p50_us", "p50"), ("p99_us", "p99")):
            d, c = direct[rate][key], compared[rate][key]
            print(f"{f'rr {rate}/s 64 B {name} (us)':34} {d:10.1f} {c:10.1f} {c / d:7.2f}   added {c - d:.1f} us")
    d, c = direct["stream"]["mbit_per_s"], compared["stream"]["mbit_per_s"]
    print(f"{f'stream {args.megabytes} MiB (Mbit/s)':34} {d:10.1f} {c:10.1f} {c / d:7.2f}")
    # Per core: the stream's bits over the CPU time each proxyd spent moving
    # it (the rest of the machine runs the guests, forwarders and client).
    bits = compared["stream"]["bytes"] * 8
    for name, used in zip(("primary", "secondary"), compared["stream_cpu"]):
        print(f"{f'stream per {name} proxyd core (Mbit/s)':34} {'':10} {bits / used / 1e6:10.1f}"
              f"   ({used:.2f} CPU s for {compared['stream']['seconds']:.2f} s)")
    print(f"checkpoints requested during the run: {counters.checkpoints_requested}, frames the receiving "
          f"side had no room for: {counters.undeliverable_frames}", file=sys.stderr)


if __name__ == "__main__":
    main()
