#!/usr/bin/env bash
# Everything a fresh Debian 12 machine (root, /dev/kvm) needs before the
# project runs: Debian packages, the daemons, the test guest, the C client.
# Safe to run again: each step skips work that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== setup: %s\n' "$*" >&2; }

install_debian_packages() {
    local wanted missing=()
    wanted=$(grep -vE '^\s*(#|$)' scripts/debian-packages.txt)
    for p in $wanted; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "Debian packages present"
        return
    fi
    log "installing ${missing[*]}"
    # debconf would ask whether non-root users may capture (tshark).
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_daemons() {
    log "building the daemons and coloctl (swift build -c ${COLO_BUILD_CONFIG:-release})"
    swift build -c "${COLO_BUILD_CONFIG:-release}" --static-swift-stdlib
}

build_guest() {
    log "building the test guest"
    guest/build.sh
}

build_c_client() {
    log "building the protobuf-c client"
    make -s -C Tests/cclient
}

install_debian_packages
build_guest
build_daemons
build_c_client
log "done"
