#!/usr/bin/env bash
# demo.sh: try virtsnapfs on a fresh Debian 12 machine, as root.
#
# Installs the packages (.ci/packages), builds, creates a libvirt embed
# root (qemu:///embed, real QEMU under TCG, no libvirtd) with a running
# demo VM, makes three disk-only snapshots with guest writes between them,
# mounts virtsnapfs on it and shows what it looks like: ls, getfattr, and
# `cp --sparse=always` of a snapshot disk compared with
# `qemu-img convert -O raw` of its point image; then takes and deletes a
# snapshot with mkdir and rmdir.  Unmounts at the end, unless --keep.
#
# usage: examples/demo.sh [--keep] [--no-install] [DIR]
#   DIR defaults to /var/tmp/virtsnapfs-demo (wiped and rebuilt each run)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

KEEP=0 INSTALL=1
while [ $# -gt 0 ]; do
  case $1 in
    --keep) KEEP=1 ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) break ;;
  esac
  shift
done
DIR=${1:-/var/tmp/virtsnapfs-demo}
URI="qemu:///embed?root=$DIR/root"
MNT=$DIR/mnt

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
[ "$(id -u)" = 0 ] || { echo "run as root (QEMU in the embed root runs as root)" >&2; exit 1; }

if [ "$INSTALL" = 1 ]; then
  step "installing packages (.ci/packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # shellcheck disable=SC2046
  apt-get install -y -q --no-install-recommends $(grep -v '^#' .ci/packages)
fi

step "building"
[ -d build ] || meson setup build -Dwerror=true >/dev/null
ninja -C build >/dev/null
VIRTSNAPFS=$SRC/build/fs/virtsnapfs

# libvirt logs a warning about security_driver "none" on each connection.
export LIBVIRT_LOG_OUTPUTS="3:file:$DIR/libvirt.log"
# virsh on an embed root with a running VM sometimes dies of SIGSEGV while
# exiting (libvirt 9.0: a reconnect thread races the exit handlers), after
# its command did its work, sometimes before its output was flushed.  Such
# an exit counts as success; a query that lost its answer is asked again.
virsh() {
  local out rc attempt
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    rc=0
    out=$(command virsh -q -c "$URI" "$@") || rc=$?
    if [ "$rc" -lt 128 ] || [ -n "$out" ]; then break; fi
    case $1 in
      domblklist|snapshot-dumpxml|domstate|list|qemu-monitor-command) sleep 0.2 ;;
      *) rc=0; break ;;
    esac
  done
  [ -z "$out" ] || printf '%s\n' "$out"
  [ "$rc" -ge 128 ] && return 0
  return "$rc"
}

step "a fresh embed root in $DIR"
if [ -d "$DIR" ]; then
  mountpoint -q "$MNT" && fusermount3 -u "$MNT"
  virsh destroy demo >/dev/null 2>&1 || true
  rm -rf "$DIR"
fi
mkdir -p "$DIR/root/etc" "$DIR/images" "$MNT" "$DIR/state"
cat > "$DIR/root/etc/qemu.conf" <<CONF
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
# QEMU in the mount namespace of the host: a private namespace would keep
# a copy of the FUSE mount where / is not a shared mount (containers).
namespaces = []
CONF
qemu-img create -q -f qcow2 "$DIR/images/vda.qcow2" 256M
qemu-img create -q -f qcow2 "$DIR/images/sdb.qcow2" 64M
cat > "$DIR/demo.xml" <<XML
<domain type='qemu'>
  <name>demo</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$DIR/images/vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$DIR/images/sdb.qcow2'/>
      <target dev='sdb' bus='sata'/>
    </disk>
  </devices>
</domain>
XML
show virsh define "$DIR/demo.xml"
show virsh start demo

# The VM has no OS: it idles in its firmware.  Guest writes go through
# QEMU's monitor, as if the guest wrote them.
guest_write() { # TARGET PATTERN OFFSET LENGTH
  # (one virsh at a time: an embed root belongs to one process)
  local img blocks dev
  img=$(virsh domblklist demo | awk -v t="$1" '$1 == t {print $2}')
  blocks=$(virsh qemu-monitor-command demo --hmp "info block")
  dev=$(awk -v img="$img" 'index($0, img) {f = 1} f && /Attached to:/ {print $3; exit}' \
        <<<"$blocks")
  virsh qemu-monitor-command demo --hmp "qemu-io -d $dev \"write -P $2 $3 $4\"" >/dev/null
  virsh qemu-monitor-command demo --hmp "qemu-io -d $dev \"flush\"" >/dev/null
}

step "guest writes and three disk-only snapshots"
guest_write vda 0x11 0 4M
guest_write sdb 0x21 1M 1M
show virsh snapshot-create-as demo monday --disk-only --atomic
sleep 1
guest_write vda 0x12 64M 8M
guest_write sdb 0x22 0 64k
show virsh snapshot-create-as demo tuesday --disk-only --atomic
sleep 1
guest_write vda 0x13 2M 1M
show virsh snapshot-create-as demo "release 1.0" --disk-only --atomic
guest_write vda 0x14 200M 1M
# What tuesday must read as: the image under tuesday's overlay.
tuesday_overlay=$(virsh snapshot-dumpxml demo tuesday |
                  sed -n "s/.*<source file='\([^']*vda[^']*\)'.*/\1/p" | head -1)
tuesday_point=$(qemu-img info -U --output=json "$tuesday_overlay" |
                python3 -c 'import json, sys; print(json.load(sys.stdin)["full-backing-filename"])')

step "mounting (the embed root now belongs to virtsnapfs)"
show "$VIRTSNAPFS" "$URI" "$MNT" -o "image_dir=$DIR/images,state_dir=$DIR/state"
show ls -l "$MNT" "$MNT/demo"
show ls -l "$MNT/demo/tuesday" "$MNT/demo/@now"
show ls -lt "$MNT/demo"
show getfattr -d "$MNT/demo/tuesday/vda.raw"
show getfattr -d "$MNT/demo"

step "copying tuesday's vda, and what qemu-img says it is"
show cp --sparse=always "$MNT/demo/tuesday/vda.raw" "$DIR/tuesday-vda.raw"
show qemu-img convert -U -O raw "$tuesday_point" "$DIR/tuesday-vda.oracle.raw"
show cmp "$DIR/tuesday-vda.raw" "$DIR/tuesday-vda.oracle.raw"
echo "identical; sparse copy: $(du -h "$DIR/tuesday-vda.raw" | cut -f1) of $(du -h --apparent-size "$DIR/tuesday-vda.raw" | cut -f1)"
show cmp "$MNT/demo/monday/vda.raw" "$MNT/demo/tuesday/vda.raw" || true

step "an incremental backup: monday in full, then tuesday's .delta over it"
show getfattr -n user.virtsnapfs.delta_bytes "$MNT/demo/tuesday/vda.delta"
show "$SRC/examples/backup.sh" "$MNT/demo" "$DIR/backup" monday
show "$SRC/examples/backup.sh" --verify "$MNT/demo" "$DIR/backup" tuesday
show cmp "$DIR/backup/vda.img" "$DIR/tuesday-vda.oracle.raw"
echo "the backup equals tuesday"

step "the present of the running VM (frozen while the file is open)"
show cp --sparse=always "$MNT/demo/@now/vda.raw" "$DIR/now-vda.raw"
show od -A d -t x1 -j $((200 * 1024 * 1024)) -N 16 "$DIR/now-vda.raw"

step "snapshots through the mount: create one, delete the oldest"
show mkdir "$MNT/demo/wednesday"
show rmdir "$MNT/demo/monday"
show ls -l "$MNT/demo"
show cmp "$MNT/demo/tuesday/vda.raw" "$DIR/tuesday-vda.oracle.raw"
echo "tuesday still reads as before"

if [ "$KEEP" = 1 ]; then
  step "left mounted on $MNT"
  echo "unmount with: fusermount3 -u $MNT"
  echo "then stop the VM with: virsh -c '$URI' destroy demo"
  exit 0
fi
step "unmounting"
show fusermount3 -u "$MNT"
# The daemon lets go of the embed root when it has exited.
for _ in $(seq 100); do virsh list >/dev/null 2>&1 && break; sleep 0.2; done
virsh destroy demo >/dev/null 2>&1 || true  # stop the VM
echo "done; everything is in $DIR"
