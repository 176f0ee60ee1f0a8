#!/bin/sh
# qemu-caps.sh seed|keep DIR: shares libvirt's cache of QEMU's
# capabilities between the test roots of one run, so that QEMU is probed
# once per run instead of once per embed root or private libvirtd (each
# probe starts QEMU two or three times: seconds each on a loaded machine).
#
# DIR is the cache directory of one root (ROOT/cache/qemu/capabilities of
# an embed root, /var/cache/libvirt/qemu/capabilities of a private
# libvirtd); $VIRTSNAPFS_CAPS_CACHE, set by meson, the run's shared copy.
#   seed  copies the shared files into DIR before libvirt starts there;
#   keep  copies back what libvirt probed or probed again in DIR.
# libvirt checks every cache file before use (QEMU's and libvirt's ctime,
# kernel, microcode, KVM access of the configured user) and probes again
# when one does not hold, so a stale copy costs a probe, never a wrong
# answer.  All roots of the tests run QEMU as root with the same settings,
# so their caches are the same files.  Without VIRTSNAPFS_CAPS_CACHE this
# does nothing.
set -eu
[ $# -eq 2 ] || { echo "usage: $0 seed|keep DIR" >&2; exit 2; }
shared=${VIRTSNAPFS_CAPS_CACHE:-}
[ -n "$shared" ] || exit 0
case $1 in
seed)
  mkdir -p "$2"
  for f in "$shared"/*.xml; do
    if [ -f "$f" ]; then cp "$f" "$2/"; fi
  done
  ;;
keep)
  mkdir -p "$shared"
  for f in "$2"/*.xml; do
    [ -f "$f" ] || continue
    to=$shared/${f##*/}
    cmp -s "$f" "$to" && continue
    # Readers of the shared copy see the old file or the new, never half.
    cp "$f" "$to.$$" && mv -f "$to.$$" "$to"
  done
  ;;
*)
  echo "usage: $0 seed|keep DIR" >&2
  exit 2
  ;;
esac
exit 0
