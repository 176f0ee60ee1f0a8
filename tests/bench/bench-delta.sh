#!/usr/bin/env bash
# bench-delta.sh: what an incremental backup through .delta files costs.
#
# Builds a disk in a qemu:///embed root (a shut-off domain; a base with
# random data in its first half; snapshot s1; scattered 64 KiB writes,
# one per 4 MiB, half of them rewriting the bytes already there; snapshot
# s2), mounts virtsnapfs, and times in one run:
#   cp --sparse=always s2/vda.delta   first open (the delta is computed:
#                                     candidates read from both points)
#   cp --sparse=always s2/vda.delta   again (the delta is cached)
#   cp --sparse=always s2/vda.raw     the anchor: a full copy of the point
#   examples/backup.sh s1 -> s2       applying the delta to a backup at s1
#   examples/backup.sh at s2          a first, full backup
# (both backups fsync what they wrote; the time includes it).
# and prints the ratios.  The page cache is warm (images read once
# before); the repeated timings are best of N, the first open is one run
# on a fresh mount.
#
# usage: tests/bench/bench-delta.sh [BUILDDIR] [SIZE_MIB] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$PWD
BUILD=${1:-build}
SIZE=${2:-1024}
RUNS=${3:-3}
EXE=$PWD/$BUILD/fs/virtsnapfs
[ -x "$EXE" ] || { echo "build first: $EXE missing" >&2; exit 1; }

DIR=$(mktemp -d /var/tmp/virtsnapfs-bench-delta-XXXXXX)
URI="qemu:///embed?root=$DIR/root"
export LIBVIRT_LOG_OUTPUTS="3:file:$DIR/libvirt.log"
cleanup() {
  fusermount3 -u "$DIR/mnt" 2>/dev/null || true
  wait 2>/dev/null || true
  virsh -q -c "$URI" snapshot-list bench --name 2>/dev/null | while read -r s; do
    [ -n "$s" ] && virsh -q -c "$URI" snapshot-delete bench "$s" --metadata >/dev/null 2>&1
  done || true
  virsh -q -c "$URI" undefine bench >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
mkdir -p "$DIR/root/etc" "$DIR/img" "$DIR/mnt" "$DIR/state" "$DIR/out"
printf 'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nsecurity_driver = "none"\nstdio_handler = "file"\nnamespaces = []\n' \
  > "$DIR/root/etc/qemu.conf"

echo "# building a ${SIZE} MiB disk: base with random data in the first half"
half=$((SIZE / 2))
head -c $((half * 1024 * 1024)) /dev/urandom > "$DIR/src.raw"
truncate -s "${SIZE}M" "$DIR/src.raw"
qemu-img convert -O qcow2 "$DIR/src.raw" "$DIR/img/vda.qcow2"
cat > "$DIR/bench.xml" <<XML
<domain type='qemu'><name>bench</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='$DIR/img/vda.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>
XML
virsh -q -c "$URI" define "$DIR/bench.xml" >/dev/null
virsh -q -c "$URI" snapshot-create-as bench s1 --disk-only >/dev/null
top=$(virsh -q -c "$URI" domblklist bench | awk '{print $2}')
# One 64 KiB write per 4 MiB: in the first half every other one writes
# the bytes already there (read back from the source), the rest new data.
cmds=()
for ((i = 0; i < SIZE; i += 4)); do
  if ((i < half && i % 8 == 0)); then
    cmds+=(-c "write -s $DIR/src.raw.$i ${i}M 64k")
    dd if="$DIR/src.raw" of="$DIR/src.raw.$i" bs=64k skip=$((i * 16)) count=1 status=none
  else
    cmds+=(-c "write -P $(printf 0x%x $((i % 200 + 16))) ${i}M 64k")
  fi
done
qemu-io -f qcow2 "${cmds[@]}" "$top" >/dev/null
rm -f "$DIR"/src.raw*
sleep 1.1
virsh -q -c "$URI" snapshot-create-as bench s2 --disk-only >/dev/null

mount_it() {
  "$EXE" "$URI" "$DIR/mnt" -f -o state_dir="$DIR/state" -o image_dir="$DIR/img" 2>>"$DIR/daemon.log" &
  for _ in $(seq 100); do mountpoint -q "$DIR/mnt" && break; sleep 0.1; done
  mountpoint -q "$DIR/mnt" || { cat "$DIR/daemon.log"; exit 1; }
}
umount_it() { fusermount3 -u "$DIR/mnt"; wait; }

now() { date +%s.%N; }
elapsed() { python3 -c "print($2 - $1)"; }
best() { # best of RUNS wall-clock seconds of "$@"
  local b=
  for ((r = 0; r < RUNS; r++)); do
    rm -rf "$DIR/out/x"
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    b=$(python3 -c "t=$t1-$t0; b='$b'; print(min(t, float(b)) if b else t)")
  done
  echo "$b"
}

mount_it
M=$DIR/mnt/bench
cat "$M/s1/vda.raw" "$M/s2/vda.raw" > /dev/null # warm the page cache
umount_it
mount_it # a fresh delta cache
t0=$(now); cp --sparse=always "$M/s2/vda.delta" "$DIR/out/x"; t1=$(now)
t_delta_first=$(elapsed "$t0" "$t1")
delta_bytes=$(getfattr --absolute-names --only-values -n user.virtsnapfs.delta_bytes "$M/s2/vda.delta")
t_delta=$(best cp --sparse=always "$M/s2/vda.delta" "$DIR/out/x")
t_raw=$(best cp --sparse=always "$M/s2/vda.raw" "$DIR/out/x")

incremental() {
  rm -rf "$DIR/out/b"
  bash "$SRC/examples/backup.sh" "$M" "$DIR/out/b" s1 >/dev/null
  sync # the full copy's writes are not the increment's cost
  local t0 t1
  t0=$(now)
  bash "$SRC/examples/backup.sh" "$M" "$DIR/out/b" s2 >/dev/null
  t1=$(now)
  elapsed "$t0" "$t1"
}
t_incr=
for ((r = 0; r < RUNS; r++)); do
  t=$(incremental)
  t_incr=$(python3 -c "t=$t; b='$t_incr'; print(min(t, float(b)) if b else t)")
done
t_full=$(best sh -c "rm -rf '$DIR/out/b'; bash '$SRC/examples/backup.sh' '$M' '$DIR/out/b' s2")
cmp "$DIR/out/b/vda.img" "$M/s2/vda.raw" || { echo "backup differs from s2" >&2; exit 1; }
umount_it

python3 - "$SIZE" "$delta_bytes" "$t_delta_first" "$t_delta" "$t_raw" "$t_incr" "$t_full" <<'PY'
import sys
size, delta = int(sys.argv[1]), int(sys.argv[2])
first, again, raw, incr, full = map(float, sys.argv[3:8])
print("disk %d MiB, delta of s2: %.1f MiB of data" % (size, delta / 2**20))
print("%-44s %8s" % ("", "seconds"))
for label, t in (("cp --sparse=always s2/vda.delta, first open", first),
                 ("cp --sparse=always s2/vda.delta, cached", again),
                 ("cp --sparse=always s2/vda.raw (anchor)", raw),
                 ("backup.sh s1 -> s2 (incremental)", incr),
                 ("backup.sh at s2 (full)", full)):
    print("%-44s %8.3f" % (label, t))
print("ratios (time; < 1 means faster than the anchor):")
print("  delta cp, first open / raw cp : %.2f" % (first / raw))
print("  delta cp, cached / raw cp     : %.2f" % (again / raw))
print("  incremental / full backup     : %.2f" % (incr / full))
PY
grep -E "WARNING|CRITICAL" "$DIR/daemon.log" && exit 1 || true
