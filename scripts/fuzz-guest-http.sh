#!/usr/bin/env bash
# Fuzzes the test guest's HTTP request parser (guest/src/http_request.c) on
# the host with libFuzzer for a bounded time: scripts/fuzz-guest-http.sh
# [SECONDS] (default 30). Builds with the Swift toolchain's clang
# (-fsanitize=fuzzer,address,undefined). Starts from the committed corpus
# (Tests/Fuzz/guest-http-corpus); new inputs go to a scratch copy, so a run
# never changes the repository. Exits non-zero on a crash or a broken
# invariant, leaving the crashing input in the scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
clang=$(dirname "$(readlink -f "$(command -v swiftc)")")/clang
out=.build/fuzz
mkdir -p "$out"
"$clang" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iguest/include guest/src/http_request.c Tests/Fuzz/GuestHTTPRequestFuzzer.c \
    -o "$out/guest-http-fuzzer"
scratch=$(mktemp -d /tmp/colo-guest-http-fuzz-XXXXXX)
cp Tests/Fuzz/guest-http-corpus/* "$scratch/"
cd "$scratch"
"$OLDPWD/$out/guest-http-fuzzer" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "$scratch"
rm -rf "$scratch"
