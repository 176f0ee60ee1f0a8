#!/usr/bin/env bash
# Configure, build (warnings are errors) and run every test suite; then
# all of them again under AddressSanitizer and UBSan.  Prints one closing line
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

# The whole suite again under ASan+UBSan (the fuzz suite is left out: it
# builds its own target with clang and AddressSanitizer already).
# LeakSanitizer runs when each test program, and the daemon after its
# unmount, exits: a leak makes the exit status non-zero, and mountlib fails
# a test whose daemon log holds any sanitizer report.  tests/lsan.supp
# lists what libraries keep for the life of the process.  The mount tests
# run one at a time, and test-load is shortened (VIRTSNAPFS_LOAD_SECONDS),
# to keep the slower sanitized daemon within their time limits.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
meson test -C build-asan --suite unit --suite libvirt --print-errorlogs --num-processes 2 || status=1
count build-asan
mv build-asan/meson-logs/testlog.json build-asan/meson-logs/testlog-unit.json 2>/dev/null
VIRTSNAPFS_LOAD_SECONDS=30 \
  meson test -C build-asan --suite mount --print-errorlogs --num-processes 1 || status=1
count build-asan

echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$skipped" -eq 0 ] || { echo "skipped tests count as failures in CI" >&2; [ -z "${CI:-}" ] || status=1; }
exit $status
