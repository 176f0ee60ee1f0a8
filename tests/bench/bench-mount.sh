#!/usr/bin/env bash
# bench-mount.sh: how fast a point in time reads through the mount.
#
# Builds a three-layer qcow2 chain in a qemu:///embed root (a shut-off
# domain, two disk-only snapshots with data written between them), mounts
# virtsnapfs on it, and times, side by side in one run:
#   cp --sparse=always MNT/bench/s2/vda.raw      (the point of snapshot s2)
#   qemu-img convert -O raw <point image of s2>  (what QEMU's reader does)
#   cp --sparse=always FLAT.raw                  (a flat raw copy of the same bytes)
#   cat MNT/.../vda.raw > /dev/null  vs  cat FLAT.raw > /dev/null
#   cp through a mount with -o no_splice (splice vs copies through the daemon)
# and prints the ratios.  Each run is repeated, best of N.  By default the
# page cache is warm (for the mount: the kernel keeps the pages of a point
# in time across opens, so this mostly measures the page cache); with
# COLD=1 every run starts after `echo 3 > /proc/sys/vm/drop_caches` (root),
# which measures the daemon's read path and the disk.
#
# usage: [COLD=1] tests/bench/bench-mount.sh [BUILDDIR] [SIZE_MIB] [RUNS]
# (the chain engineer's depth benchmarks are tests/bench/bench-chain*)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
SIZE=${2:-1024}
RUNS=${3:-3}
EXE=$PWD/$BUILD/fs/virtsnapfs
[ -x "$EXE" ] || { echo "build first: $EXE missing" >&2; exit 1; }

DIR=$(mktemp -d /var/tmp/virtsnapfs-bench-XXXXXX)
URI="qemu:///embed?root=$DIR/root"
export LIBVIRT_LOG_OUTPUTS="3:file:$DIR/libvirt.log"
cleanup() {
  fusermount3 -u "$DIR/mnt" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
mkdir -p "$DIR/root/etc" "$DIR/img" "$DIR/mnt" "$DIR/state" "$DIR/out"
printf 'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\nstdio_handler = "file"\nnamespaces = []\n' \
  > "$DIR/root/etc/qemu.conf"

echo "# building a ${SIZE} MiB disk: base with random data in the first half, two overlays"
half=$((SIZE / 2))
head -c $((half * 1024 * 1024)) /dev/urandom > "$DIR/src.raw"
truncate -s "${SIZE}M" "$DIR/src.raw"
qemu-img convert -O qcow2 "$DIR/src.raw" "$DIR/img/vda.qcow2"
rm "$DIR/src.raw"
cat > "$DIR/bench.xml" <<XML
<domain type='qemu'><name>bench</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='$DIR/img/vda.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>
XML
virsh -q -c "$URI" define "$DIR/bench.xml" >/dev/null
for s in s1 s2; do
  virsh -q -c "$URI" snapshot-create-as bench "$s" --disk-only >/dev/null
  # scattered 64 KiB writes over the whole disk into the new active image
  top=$(virsh -q -c "$URI" domblklist bench | awk '{print $2}')
  cmds=()
  for ((i = 0; i < SIZE; i += 4)); do cmds+=(-c "write -P $(printf 0x%x $((i % 200 + 16))) ${i}M 64k"); done
  qemu-io -f qcow2 "${cmds[@]}" "$top" >/dev/null
done
point=$(qemu-img info -U --output=json "$(virsh -q -c "$URI" snapshot-dumpxml bench s2 \
        | sed -n "s/.*<source file='\([^']*\)'.*/\1/p" | head -1)" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["full-backing-filename"])')
echo "# point image of s2: $point (depth $(qemu-img info -U --backing-chain "$point" | grep -c '^image:'))"
qemu-img convert -U -O raw "$point" "$DIR/flat.raw"

"$EXE" "$URI" "$DIR/mnt" -f -o state_dir="$DIR/state" -o image_dir="$DIR/img" 2>"$DIR/daemon.log" &
for _ in $(seq 100); do mountpoint -q "$DIR/mnt" && break; sleep 0.1; done
mountpoint -q "$DIR/mnt" || { cat "$DIR/daemon.log"; exit 1; }
FILE="$DIR/mnt/bench/s2/vda.raw"
cmp "$FILE" "$DIR/flat.raw" || { echo "mount and flat copy differ" >&2; exit 1; }

best() { # best of RUNS wall-clock seconds of "$@"
  local b=
  for ((r = 0; r < RUNS; r++)); do
    rm -f "$DIR/out/x"
    if [ "${COLD:-0}" = 1 ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    b=$(python3 -c "import sys; t=$t1-$t0; b='$b'; print(min(t, float(b)) if b else t)")
  done
  echo "$b"
}
t_mount=$(best cp --sparse=always "$FILE" "$DIR/out/x")
t_qemu=$(best qemu-img convert -U -O raw "$point" "$DIR/out/x")
t_flat=$(best cp --sparse=always "$DIR/flat.raw" "$DIR/out/x")
t_cat_mount=$(best sh -c "cat '$FILE' > /dev/null")
t_cat_flat=$(best sh -c "cat '$DIR/flat.raw' > /dev/null")

# The same copy with -o no_splice (replies copied through user space).
fusermount3 -u "$DIR/mnt"; wait
"$EXE" "$URI" "$DIR/mnt" -f -o state_dir="$DIR/state" -o image_dir="$DIR/img" -o no_splice \
  2>>"$DIR/daemon.log" &
for _ in $(seq 100); do mountpoint -q "$DIR/mnt" && break; sleep 0.1; done
t_nosplice=$(best cp --sparse=always "$FILE" "$DIR/out/x")

python3 - "$SIZE" "$t_mount" "$t_qemu" "$t_flat" "$t_cat_mount" "$t_cat_flat" "${COLD:-0}" "$t_nosplice" <<'PY'
import sys
size, m, q, f, cm, cf = int(sys.argv[1]), *map(float, sys.argv[2:7])
cold = sys.argv[7] == "1"
ns = float(sys.argv[8])
mib = lambda t: size / t if t else float("inf")
print("%-44s %8s %10s" % ("", "seconds", "MiB/s"))
for label, t in (("cp --sparse=always  mount s2/vda.raw", m),
                 ("qemu-img convert -O raw  point image", q),
                 ("cp --sparse=always  flat raw copy", f),
                 ("cat  mount s2/vda.raw", cm),
                 ("cat  flat raw copy", cf),
                 ("cp --sparse=always  mount, -o no_splice", ns)):
    print("%-44s %8.3f %10.0f" % (label, t, mib(t)))
print("page cache: %s" % ("dropped before every run" if cold else "warm"))
print("ratios (time; < 1 means the mount is faster):")
print("  mount cp / qemu-img convert : %.2f" % (m / q))
print("  mount cp / flat cp          : %.2f" % (m / f))
print("  mount cat / flat cat        : %.2f" % (cm / cf))
print("  mount cp splice / no_splice : %.2f" % (m / ns))
PY
grep -E "WARNING|CRITICAL" "$DIR/daemon.log" && exit 1 || true
