#!/bin/sh
# embed-test.sh PROGRAM ARGS...: runs one C test that uses embed roots
# (embed-fixture.c) in a private directory (VIRTSNAPFS_TEST_DIR, under
# which the fixture makes its roots), then, whatever became of the test,
# stops the QEMU processes libvirt started under it (an embedded driver's
# domains outlive the process that started them) by the PIDs in libvirt's
# pid files, and removes the directory.
set -u
dir=$(mktemp -d /tmp/vsb-XXXXXX) || exit 99
VIRTSNAPFS_TEST_DIR=$dir "$@"
status=$?
for pidfile in "$dir"/*/root/run/qemu/*.pid; do
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  case $pid in
  '' | *[!0-9]*) ;;
  *)
    # A pid file can outlive its QEMU, and with tests running side by
    # side its number may already belong to another test's process.
    grep -q qemu-system "/proc/$pid/cmdline" 2>/dev/null || continue
    kill "$pid" 2>/dev/null && echo "# $0: stopped QEMU $pid left by the test"
    ;;
  esac
done
rm -rf "$dir"
exit $status
