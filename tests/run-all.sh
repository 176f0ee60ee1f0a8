#!/usr/bin/env bash
# Configure and build twice (warnings are errors), then run every test once
# or twice:
#   build/       (plain)         the unit and fuzz suites, and mount-load
#                                (suite unsanitized: its RSS rule);
#   build-asan/  (ASan + UBSan)  the unit, libvirt and mount suites: every
#                                test that runs the daemon's code runs it
#                                sanitized.
# The two test runs go side by side (the plain one's output comes at the
# end): the sanitized one waits on QEMU and on rate-limited block jobs
# most of the time, which the plain unit tests fill.  Libvirt and mount
# tests each have their own embed root, scratch directory and (where
# needed) private libvirtd in a mount namespace of its own, so they run
# several at once (VIRTSNAPFS_TEST_JOBS, default 4).
# Prints the summed test time per suite and build, then one closing line
# "N passed, N failed, N skipped" for the whole run; with CI set, a
# skipped test fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0 failed=0 skipped=0
count() { # LOG: add meson's results to the totals, print the time per suite
  [ -f "$1" ] || return 0
  local p f s
  read -r p f s < <(python3 - "$1" <<'PY'
import collections, json, sys
p = f = s = 0
t = collections.Counter()
for line in open(sys.argv[1]):
    r = json.loads(line)
    t[r["name"].split(" / ")[0].split(":")[-1]] += r["duration"]
    if r["result"] in ("OK", "EXPECTEDFAIL"): p += 1
    elif r["result"] == "SKIP": s += 1
    else: f += 1
print("# %s: %s" % (sys.argv[1], ", ".join("%s %d s" % kv for kv in sorted(t.items()))),
      file=sys.stderr)
print(p, f, s)
PY
)
  passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

setup() { # DIR OPTIONS...: configure DIR afresh
  local dir=$1
  shift
  meson setup "$dir" --wipe -Dwerror=true "$@" >/dev/null 2>&1 || meson setup "$dir" -Dwerror=true "$@"
}

SECONDS=0
status=0
setup build || exit 1
setup build-asan -Db_sanitize=address,undefined -Db_lundef=false || exit 1
ninja -C build || exit 1
ninja -C build-asan || exit 1
echo "# built in $SECONDS s"

# The fuzz suite builds its own target with clang and AddressSanitizer.
meson test -C build --suite unit --suite fuzz --suite unsanitized --print-errorlogs \
  --num-processes 1 \
  >build/run-all.log 2>&1 &
plain=$!
# LeakSanitizer runs when each test program, and the daemon after its
# unmount, exits: a leak makes the exit status non-zero, and mountlib fails
# a test whose daemon log holds any sanitizer report.  tests/lsan.supp
# lists what libraries keep for the life of the process.  test-load is
# shortened (VIRTSNAPFS_LOAD_SECONDS) for the slower sanitized daemon.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
VIRTSNAPFS_LOAD_SECONDS=30 \
  meson test -C build-asan --suite unit --suite libvirt --suite mount --print-errorlogs \
  --num-processes "${VIRTSNAPFS_TEST_JOBS:-4}" || status=1
wait "$plain" || status=1
echo "# the plain build's tests:"
cat build/run-all.log
echo "# tests done at $SECONDS s"

count build/meson-logs/testlog.json
count build-asan/meson-logs/testlog.json
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
[ "$skipped" -eq 0 ] || { echo "skipped tests count as failures in CI" >&2; [ -z "${CI:-}" ] || status=1; }
exit $status
