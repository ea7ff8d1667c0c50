#!/usr/bin/env bash
# The main job: all set-up, then a replicated pair of the test guest on this
# one machine (two network namespaces as the two hosts, one as the client,
# one for the witness), a client holding one TCP connection, the primary
# host killed, and the secondary taking over with that connection intact.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

bin="$PWD/.build/release"
demo=/var/lib/colo-demo
cleanup() { "$bin/coloctl" down >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== coloctl up: host a (primary) and host b (secondary) of the test guest" >&2
"$bin/coloctl" up --replace --dir "$demo"

echo "== both hosts" >&2
"$bin/coloctl" status --runtime-dir "$demo/host-a/run" || true
"$bin/coloctl" status --runtime-dir "$demo/host-b/run" || true

echo "== a client in namespace colo-client: one TCP connection, an HTTP request every 20 ms" >&2
ip netns exec colo-client /usr/bin/python3 scripts/demo_client.py --seconds 14 --json "$demo/client.json" &
client=$!
sleep 5

echo "== $(date +%T.%N | cut -c1-12) killing every process of host a (the primary host dies)" >&2
for pid in $(ip netns pids colo-a); do kill -9 "$pid" 2>/dev/null || true; done

wait "$client" && verdict=0 || verdict=$?

echo "== host b after the failover" >&2
"$bin/coloctl" status --runtime-dir "$demo/host-b/run" || true
echo "== host b's log of the failover" >&2
grep -E "event=(peer_lost|pair_transition|failover|failover_commit_done|pass_through|running_alone)" \
    "$demo/host-b/daemons.log" >&2 || true
if [ "$verdict" = 0 ]; then
    echo "== failover done: the client's connection survived; no acknowledged request lost or applied twice" >&2
else
    echo "== the client saw a problem (see above)" >&2
fi
exit "$verdict"
