#!/usr/bin/env bash
# Builds Tests/Fuzz/PacketFuzzer.swift with libFuzzer (swiftc -sanitize=fuzzer,
# plus AddressSanitizer) against the packet libraries and runs it for
# SECONDS (default 60) on the committed corpus, without adding to it.
# Exits non-zero on any finding (the crashing input is left in
# Tests/Fuzz/build/). Usage: run-fuzzer.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
root=../..
build=build
mkdir -p "$build/modules" "$build/findings"
flags=(-sanitize=fuzzer,address -parse-as-library -O -g -swift-version 6 -I "$build/modules")

# Each library as its own module (they import each other), in dependency order.
module() {
    local name=$1; shift
    swiftc "${flags[@]}" -module-name "$name" -emit-module -emit-module-path "$build/modules/$name.swiftmodule" \
        -emit-library -static -o "$build/lib$name.a" "$root/Sources/$name"/*.swift
}
module Packets
module FrameLink
module PacketComparison
module SequenceRewriter
swiftc "${flags[@]}" -module-name PacketFuzzer PacketFuzzer.swift \
    "$build/libSequenceRewriter.a" "$build/libPacketComparison.a" "$build/libFrameLink.a" "$build/libPackets.a" \
    -o "$build/packet-fuzzer"

# A scratch copy of the corpus: new inputs found during the run stay out
# of the repository unless someone copies them in on purpose.
rm -rf "$build/run-corpus"
cp -r corpus "$build/run-corpus"
exec "$build/packet-fuzzer" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
    -artifact_prefix="$build/findings/" -print_final_stats=1 "$build/run-corpus"
