#!/usr/bin/env bash
# Configure, build (warnings are errors) and run every test suite; then the
# unit suite and the main mount tests again under AddressSanitizer and UBSan.  Prints one closing line
# "N passed, N failed" for the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0 failed=0 skipped=0
count() { # BUILDDIR: add meson's results to the totals
  local log=$1/meson-logs/testlog.json
  [ -f "$log" ] || return 0
  read -r p f s < <(python3 - "$log" <<'PY'
import json, sys
p = f = s = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"): p += 1
    elif r == "SKIP": s += 1
    else: f += 1
print(p, f, s)
PY
)
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

status=0
meson setup build --wipe -Dwerror=true >/dev/null 2>&1 || meson setup build -Dwerror=true || exit 1
ninja -C build || exit 1
meson test -C build --print-errorlogs --num-processes 2 || status=1
count build

meson setup build-asan --wipe -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null 2>&1 \
  || meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false || exit 1
ninja -C build-asan || exit 1
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 || status=1
count build-asan

# The daemon under ASan+UBSan through the mount tests.  LeakSanitizer runs
# when it exits after the unmount: a leak makes its exit status non-zero,
# and mountlib fails a test whose daemon log holds any sanitizer report.
# tests/lsan.supp lists what libraries keep for the life of the process.
# Which mount tests, to keep CI under 30 minutes: see ASAN_MOUNT_TESTS.
# read: every read path (compressed, zero, raw base, SEEK_*, @now freeze
#   of a running and a shut-off domain); change: every plan kind and the
#   errno table; attacks: the policy and error paths on hostile images;
#   load: the thread-pool and open/release/pin paths under concurrency,
#   with mkdir/rmdir plans (shortened: VIRTSNAPFS_LOAD_SECONDS); delta:
#   the .delta files (fs/delta.c and the chain/ delta code on real chains).
# Left out: live (behind-the-daemon changes through a private libvirtd;
#   its daemon code paths are the refresh ones that read and change
#   already cover; it passes under ASan), log and install (pass under ASan),
#   and hosts and faults: they kill a private libvirtd, and LeakSanitizer
#   then reports the 24-byte BackendSink of that backend (a reference libvirt
#   never gives back once its connection died).  Add them when that is fixed.
ASAN_MOUNT_TESTS=${ASAN_MOUNT_TESTS:-"mount-read mount-change mount-attacks mount-load mount-delta"}
mv build-asan/meson-logs/testlog.json build-asan/meson-logs/testlog-unit.json 2>/dev/null
# shellcheck disable=SC2086 # the list is word-split on purpose
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
VIRTSNAPFS_LOAD_SECONDS=30 \
  meson test -C build-asan $ASAN_MOUNT_TESTS --print-errorlogs --num-processes 1 || status=1
count build-asan

echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$skipped" -eq 0 ] || { echo "skipped tests count as failures in CI" >&2; [ -z "${CI:-}" ] || status=1; }
exit $status
