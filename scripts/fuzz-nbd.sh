#!/usr/bin/env bash
# Fuzzes the NBD request and option parsers with libFuzzer for a bounded
# time: scripts/fuzz-nbd.sh [SECONDS] (default 30). Builds with the Swift
# toolchain's `-sanitize=fuzzer` (plus address sanitizer) from the
# dependency-free parser files of Sources/NBD. Starts from the committed
# corpus (Tests/Fuzz/nbd-corpus); new inputs go to a scratch copy, so a run
# never changes the repository. Exits non-zero on a crash or a broken
# invariant, leaving the crashing input in the scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
out=.build/fuzz
mkdir -p "$out"
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name NBDFuzz \
    Sources/NBD/ByteCoding.swift Sources/NBD/NBDConstants.swift Sources/NBD/NBDRequest.swift \
    Sources/NBD/NBDOptionPayloads.swift Tests/Fuzz/NBDParserFuzzer.swift -o "$out/nbd-fuzzer"
scratch=$(mktemp -d /tmp/colo-nbd-fuzz-XXXXXX)
cp Tests/Fuzz/nbd-corpus/* "$scratch/"
cd "$scratch"
"$OLDPWD/$out/nbd-fuzzer" -max_total_time="$seconds" -max_len=4200 -print_final_stats=1 "$scratch"
rm -rf "$scratch"
