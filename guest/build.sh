#!/usr/bin/env bash
# The one entry point for the test guest (scripts/setup.sh calls it).
#  1. Fetch lwIP from Debian's `lwip` source package into third_party/ if it is
#     not there yet. We never touch the machine's apt configuration: a private
#     sources list (deb-src for bookworm, signed by Debian's archive key) and a
#     private lists/cache directory under third_party/apt are handed to apt-get
#     with -o options, so this works whether or not the host has deb-src lines.
#  2. make: builds build/colo-guest.elf (incremental, so running again is cheap).
# Safe to run again; idempotent.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '== guest: %s\n' "$*" >&2; }

LWIP_DIR=third_party/lwip

fetch_lwip() {
    if [ -f "$LWIP_DIR/src/core/tcp.c" ]; then
        return
    fi
    command -v dpkg-source >/dev/null || {
        log "dpkg-source missing: install dpkg-dev"; exit 1; }
    local apt=third_party/apt
    rm -rf "$apt" third_party/src
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" third_party/src
    local suite keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    # deb-src only; the mirror is Debian's own, as for the host's binary lines.
    echo "deb-src [signed-by=$keyring] http://deb.debian.org/debian $suite main" \
        > "$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$PWD/$apt/sources.list"
                -o "Dir::Etc::SourceParts=/dev/null"
                -o "Dir::State::Lists=$PWD/$apt/lists"
                -o "Dir::Cache=$PWD/$apt/cache"
                -o "APT::Sandbox::User=root")
    log "fetching lwIP source from Debian ($suite)"
    apt-get -qq "${opts[@]}" update
    (cd third_party/src && apt-get -qq "${opts[@]}" source lwip >/dev/null)
    local d
    d=$(find third_party/src -maxdepth 1 -mindepth 1 -type d -name 'lwip-*' | head -1)
    [ -n "$d" ] && [ -f "$d/src/core/tcp.c" ] || { log "apt-get source lwip gave no tree"; exit 1; }
    rm -rf "$LWIP_DIR"
    mv "$d" "$LWIP_DIR"
    log "lwIP at $LWIP_DIR ($(basename "$d"))"
}

fetch_lwip
make -s -j"$(nproc)" LWIP_DIR="$LWIP_DIR"
log "built build/colo-guest.elf"
