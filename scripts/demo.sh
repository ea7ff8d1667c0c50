#!/usr/bin/env bash
# The main job: all set-up, then one host's daemons brought up and reported
# on by coloctl. (The replicated pair of the test guest with a failover
# replaces this as vmmd, checkpointd, proxyd, blockd and supervisord gain
# their replication roles.)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

bin="$PWD/.build/release"
runtime=$(mktemp -d /tmp/colo-demo-XXXXXX)
chmod 755 "$runtime"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$runtime"
}
trap cleanup EXIT

echo "== starting the daemons of one host in $runtime" >&2
for daemon in vmmd checkpointd proxyd blockd supervisord; do
    "$bin/$daemon" --runtime-dir "$runtime" 2>>"$runtime/daemons.log" &
    pids+=($!)
done
for _ in $(seq 50); do
    [ -S "$runtime/supervisord.sock" ] && break
    sleep 0.1
done

echo "== coloctl status" >&2
"$bin/coloctl" status --runtime-dir "$runtime"
echo "== daemon log" >&2
cat "$runtime/daemons.log" >&2
