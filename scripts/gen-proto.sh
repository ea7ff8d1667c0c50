#!/usr/bin/env bash
# Regenerates Sources/ColoProtocol/Generated from Proto/ and records the hash of
# the sources it was generated from (ProtoTests fail when the two drift apart).
#
# Building swift-protobuf's protoc plugin takes minutes, so it is built once
# into .build-protoc (git-ignored) and the generated code is committed: no
# ordinary build or CI run needs the plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.39.0
plugin=${PROTOC_GEN_SWIFT:-.build-protoc/release/protoc-gen-swift}
if [ ! -x "$plugin" ]; then
    if [ ! -d .build-protoc/src ]; then
        git clone -q --depth 1 -b "$version" https://github.com/apple/swift-protobuf.git .build-protoc/src
    fi
    swift build -c release --product protoc-gen-swift \
        --package-path .build-protoc/src --scratch-path .build-protoc
fi

plugin=$(realpath "$plugin")
out=Sources/ColoProtocol/Generated
rm -rf "$out"
mkdir -p "$out"
protos=$(cd Proto && find . -name '*.proto' | sed 's|^\./||' | LC_ALL=C sort)
(cd Proto && protoc --plugin=protoc-gen-swift="$plugin" \
    --swift_out="$OLDPWD/$out" --swift_opt=Visibility=Public --swift_opt=FileNaming=DropPath \
    $protos)
cat > "$out/GeneratedFrom.swift" <<SWIFT
// DO NOT EDIT. Written by scripts/gen-proto.sh.

/// The fingerprint (scripts/proto-hash.sh) of the Proto/ sources this
/// directory was generated from; a test compares it with Proto/ as it is now.
package let generatedFromProtoSourcesSHA256 = "$(scripts/proto-hash.sh)"
SWIFT
echo "generated $(ls "$out" | wc -l) files into $out"
