#!/usr/bin/env bash
# All set-up, then every test: the Swift unit and integration tests
# (swift test), then the system tests (pytest: several processes, network
# namespaces, QEMU and vmmd guests, systemd containers). Run as root on a
# Debian 12 machine with /dev/kvm; tests that need what is missing say so
# and skip.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== swift test" >&2
swift test

echo "== system tests" >&2
# Debian's python3 carries python3-pytest and python3-protobuf.
export COLO_DAEMONS_DIR="$PWD/.build/release"
exec /usr/bin/python3 -m pytest -v -p no:cacheprovider Tests/system "$@"
