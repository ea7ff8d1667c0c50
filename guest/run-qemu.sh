#!/usr/bin/env bash
# Runs the test guest under qemu-system-x86_64 -enable-kvm with a virtio-net-pci
# NIC on a tap inside a network namespace and a virtio-blk-pci disk on a raw
# image. See --help. Must run as root (namespaces, taps, /dev/kvm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() {
    cat <<'USAGE'
usage: guest/run-qemu.sh [options] [-- extra qemu arguments]

  --kernel ELF        guest image (default: guest/build/colo-guest.elf)
  --netns NAME        network namespace holding the tap; QEMU runs inside it
                      (default: colo-guest). Created, with the tap, if absent,
                      and then deleted again when QEMU exits.
  --tap NAME          tap device in that namespace (default: tap0)
  --host-ip A/P       address put on a tap this script creates (default 10.77.0.1/24)
  --ip A/P            guest address: ip= on the guest command line (default 10.77.0.2/24)
  --gw A              gw= on the guest command line (default: none)
  --dirty N           dirty= MiB/s for the memory dirtier (default 0)
  --cmdline STRING    the whole guest command line instead of ip=/gw=/dirty=
  --append STRING     words added to the guest command line
  --disk IMG          raw disk image (default: guest/build/disk.img, 1 MiB,
                      created when absent)
  --no-disk           no virtio-blk device (the guest then reports an error)
  --no-net            no virtio-net device
  --mem MIB           guest RAM (default 128)
  --bios qboot|seabios  firmware (default qboot: ~4 s faster boot here; both
                      set up PCI BARs and IRQ lines; see guest/README.md)
  --accel kvm|tcg-icount  kvm (default), or QEMU's TCG with -icount shift=0,
                      where one guest TSC tick is one guest instruction (used to
                      count instructions per request, see docs/PERFORMANCE.md)
  --qmp PATH          QMP server on a unix socket at PATH
  --serial PATH       console to a file (default: stdio)
  --pidfile PATH      QEMU's pid file
  --dry-run           print the QEMU command and exit
USAGE
}

kernel=$here/build/colo-guest.elf
netns=colo-guest tap=tap0 host_ip=10.77.0.1/24
ip=10.77.0.2/24 gw="" dirty=0 cmdline="" append=""
disk=$here/build/disk.img use_disk=1 use_net=1 mem=128 bios=qboot
accel=kvm qmp="" serial=stdio pidfile="" dry=0 extra=()

while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --netns) netns=$2; shift 2 ;;
        --tap) tap=$2; shift 2 ;;
        --host-ip) host_ip=$2; shift 2 ;;
        --ip) ip=$2; shift 2 ;;
        --gw) gw=$2; shift 2 ;;
        --dirty) dirty=$2; shift 2 ;;
        --cmdline) cmdline=$2; shift 2 ;;
        --append) append=$2; shift 2 ;;
        --disk) disk=$2; shift 2 ;;
        --no-disk) use_disk=0; shift ;;
        --no-net) use_net=0; shift ;;
        --mem) mem=$2; shift 2 ;;
        --bios) bios=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        --qmp) qmp=$2; shift 2 ;;
        --serial) serial=$2; shift 2 ;;
        --pidfile) pidfile=$2; shift 2 ;;
        --dry-run) dry=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "run-qemu.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

[ -f "$kernel" ] || { echo "run-qemu.sh: no $kernel (run guest/build.sh)" >&2; exit 1; }
if [ -z "$cmdline" ]; then
    cmdline="ip=$ip dirty=$dirty"
    [ -n "$gw" ] && cmdline+=" gw=$gw"
fi
[ -n "$append" ] && cmdline+=" $append"

case "$accel" in
    kvm) acc=(-enable-kvm) ;;
    tcg-icount) acc=(-accel tcg -icount shift=0,sleep=on) ;;
    *) echo "run-qemu.sh: --accel kvm|tcg-icount" >&2; exit 2 ;;
esac
q=(qemu-system-x86_64 "${acc[@]}" -machine pc -m "$mem"
   -nodefaults -no-user-config -display none -no-reboot
   -kernel "$kernel" -append "$cmdline")
case "$bios" in
    qboot) q+=(-bios /usr/share/qemu/qboot.rom) ;;
    seabios) ;;
    *) echo "run-qemu.sh: --bios qboot|seabios" >&2; exit 2 ;;
esac
if [ "$serial" = stdio ]; then q+=(-serial stdio); else q+=(-serial "file:$serial"); fi
[ -n "$qmp" ] && q+=(-qmp "unix:$qmp,server=on,wait=off")
[ -n "$pidfile" ] && q+=(-pidfile "$pidfile")
if [ "$use_net" = 1 ]; then
    # romfile= : no iPXE option ROM (the firmware would spend seconds on it).
    q+=(-netdev "tap,id=net0,ifname=$tap,script=no,downscript=no"
        -device "virtio-net-pci,netdev=net0,romfile=,mac=52:54:00:77:00:02")
fi
if [ "$use_disk" = 1 ]; then
    if [ ! -e "$disk" ]; then
        mkdir -p "$(dirname "$disk")"
        truncate -s 1M "$disk"
    fi
    q+=(-drive "file=$disk,format=raw,if=none,id=disk0,cache=writeback"
        -device "virtio-blk-pci,drive=disk0")
fi
q+=("${extra[@]}")

if [ "$dry" = 1 ]; then
    printf '%q ' ip netns exec "$netns" "${q[@]}"; echo
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "run-qemu.sh: must run as root" >&2; exit 1; }

if [ "$use_net" = 0 ]; then
    exec "${q[@]}"
fi
created=0
if ! ip netns list | grep -qw "^$netns"; then
    ip netns add "$netns"
    created=1
fi
if ! ip -n "$netns" link show "$tap" >/dev/null 2>&1; then
    ip -n "$netns" tuntap add dev "$tap" mode tap
    ip -n "$netns" addr add "$host_ip" dev "$tap"
    ip -n "$netns" link set "$tap" up
    ip -n "$netns" link set lo up
fi
if [ "$created" = 0 ]; then
    exec ip netns exec "$netns" "${q[@]}"
fi
# We made the namespace: take it down again when QEMU is gone.
cleanup() { ip netns del "$netns" 2>/dev/null || true; }
trap cleanup EXIT
trap 'kill -TERM "$qpid" 2>/dev/null || true' INT TERM
ip netns exec "$netns" "${q[@]}" &
qpid=$!
wait "$qpid" || true
wait "$qpid" 2>/dev/null || true
