#!/usr/bin/env bash
# Check every unit in units/ with `systemd-analyze verify`, strictly: a unit
# passes only when verify exits 0 *and* prints nothing (verify reports many
# mistakes, such as an unknown Type=, as warnings with exit status 0).
#
# Usage: units/verify.sh [BINDIR]
#   BINDIR holds the five daemons. verify checks that every ExecStart=
#   binary exists and is executable, so the units are checked against real
#   binaries: BINDIR, else $COLO_LIBEXEC_DIR, else /usr/local/libexec/colo
#   (installed), else the repository's .build/release (scripts/setup.sh
#   builds it). The units are copied to a temporary directory and their
#   /usr/local/libexec/colo/ paths rewritten to BINDIR; nothing is installed.
#
# Template units are verified as an instance (colo-vmmd@demo.service): that
# is how systemd loads them, with %i expanded. The sysusers file is checked
# by letting systemd-sysusers create its users in a scratch root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
daemons=(vmmd checkpointd proxyd blockd supervisord)
instance=demo

has_all() {
    local d
    for d in "${daemons[@]}"; do [ -x "$1/$d" ] || return 1; done
}

bindir=${1:-${COLO_LIBEXEC_DIR:-}}
if [ -z "$bindir" ]; then
    for candidate in /usr/local/libexec/colo "$repo/.build/release"; do
        if has_all "$candidate"; then bindir=$candidate; break; fi
    done
fi
if [ -z "$bindir" ] || ! has_all "$bindir"; then
    echo "verify.sh: no directory with all of ${daemons[*]} (build them: scripts/setup.sh, or pass BINDIR)" >&2
    exit 2
fi
bindir=$(cd "$bindir" && pwd)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp "$here"/*.service "$here"/*.socket "$here"/*.target "$tmp/"
sed -i "s#/usr/local/libexec/colo/#$bindir/#g" "$tmp"/*.service

units=()
for f in "$tmp"/*; do
    base=$(basename "$f")
    units+=("${base/@./@$instance.}")
done

failed=0
for u in "${units[@]}"; do
    if out=$(cd "$tmp" && systemd-analyze verify "$tmp/$u" 2>&1) && [ -z "$out" ]; then
        echo "ok   $u"
    else
        echo "FAIL $u"
        printf '%s\n' "$out" | sed 's/^/     /'
        failed=1
    fi
done

# systemd-sysusers reports each user it creates ("Creating ..."); any other
# line is a complaint about the file.
mkdir -p "$tmp/sysroot/etc"
sysusers_ok=1
out=$(systemd-sysusers --root="$tmp/sysroot" "$here/colo.sysusers" 2>&1) || sysusers_ok=0
if printf '%s\n' "$out" | grep -v -e '^Creating ' -e '^$' >/dev/null; then sysusers_ok=0; fi
for d in "${daemons[@]}"; do
    grep -q "^colo-$d:" "$tmp/sysroot/etc/passwd" || { out+=$'\n'"no user colo-$d"; sysusers_ok=0; }
done
grep -q '^colo-operators:' "$tmp/sysroot/etc/group" || { out+=$'\n'"no group colo-operators"; sysusers_ok=0; }
grep -Eq '^kvm:[^:]*:[0-9]+:(.*,)?colo-vmmd(,|$)' "$tmp/sysroot/etc/group" || { out+=$'\n'"colo-vmmd not in kvm"; sysusers_ok=0; }
if [ $sysusers_ok = 1 ]; then
    echo "ok   colo.sysusers"
else
    echo "FAIL colo.sysusers"
    printf '%s\n' "$out" | sed 's/^/     /'
    failed=1
fi
exit $failed
