#!/usr/bin/env bash
# Prints one hash over every file under Proto/ (path and contents, sorted), the
# fingerprint Sources/ColoProtocol/Generated was made from.
set -euo pipefail
cd "$(dirname "$0")/../Proto"
find . -name '*.proto' | LC_ALL=C sort | while read -r f; do
    printf '%s\n' "$f"
    sha256sum < "$f"
done | sha256sum | cut -d' ' -f1
