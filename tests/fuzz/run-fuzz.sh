#!/bin/sh
# run-fuzz.sh [SECONDS [WORKDIR]]: builds fuzz-chain with clang's libFuzzer,
# ASan and UBSan, writes the seed corpus and fuzzes the chain reader for
# SECONDS (default 60).  The meson test "fuzz-chain" (suite fuzz) runs 45 s.
#
# A longer campaign keeps its corpus and findings in WORKDIR, so it can be
# resumed and its crashes replayed:
#   tests/fuzz/run-fuzz.sh 3600 ~/fuzz-chain
#   ~/fuzz-chain/fuzz-chain ~/fuzz-chain/artifacts/crash-...   # replay one
# Extra libFuzzer options go in FUZZ_ARGS, e.g. FUZZ_ARGS=-jobs=4.
#
# Needs clang and its libFuzzer runtime (Debian: clang, libclang-rt-14-dev),
# qemu-img and qemu-io; exits 77 (skip) without them.  A crash, leak,
# sanitizer report or timeout fails the run; the input is left in
# WORKDIR/artifacts (a temporary WORKDIR is then kept and printed).
set -eu
seconds=${1:-60}
src=$(cd "$(dirname "$0")/../.." && pwd)
cc=${CLANG:-clang}

for tool in "$cc" qemu-img qemu-io pkg-config; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIP: $tool is not installed"
    exit 77
  fi
done

if [ $# -ge 2 ]; then
  work=$2
  keep=1
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-chain.XXXXXX")
  keep=0
fi
mkdir -p "$work/corpus" "$work/artifacts" "$work/seeds"

probe="$work/probe.c"
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' >"$probe"
if ! "$cc" -fsanitize=fuzzer "$probe" -o "$work/probe" 2>/dev/null; then
  echo "SKIP: $cc cannot link -fsanitize=fuzzer (Debian: install libclang-rt-14-dev)"
  [ "$keep" = 1 ] || rm -rf "$work"
  exit 77
fi

# Every file of libchain: the planner costs nothing and keeps the list
# in step with chain/meson.build.
# shellcheck disable=SC2046
"$cc" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -std=gnu17 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -DG_LOG_DOMAIN='"virtsnapfs-chain"' \
  -I"$src/chain" $(pkg-config --cflags glib-2.0 zlib libzstd) \
  "$src"/chain/*.c "$src/tests/fuzz/fuzz-chain.c" \
  $(pkg-config --libs glib-2.0 zlib libzstd) -lpthread -o "$work/fuzz-chain"

"$src/tests/fuzz/make-seeds.sh" "$work/seeds"

# Short inputs: qcow2 images with small clusters fit; 131072 keeps the
# 16 KiB-cluster extended-L2 seed whole.
status=0
# shellcheck disable=SC2086
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$work/fuzz-chain" -max_total_time="$seconds" -max_len=131072 -rss_limit_mb=1024 \
  -timeout=10 -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
  -dict="$src/tests/fuzz/qcow2.dict" \
  ${FUZZ_ARGS:-} "$work/corpus" "$work/seeds" || status=$?

if [ "$status" != 0 ]; then
  echo "fuzz-chain failed ($status); inputs in $work/artifacts:"
  ls -l "$work/artifacts"
elif [ "$keep" = 0 ]; then
  rm -rf "$work"
fi
exit "$status"
