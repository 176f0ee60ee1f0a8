#!/bin/sh
# make-seeds.sh DIR: writes the seed corpus of fuzz-chain into DIR, small
# real images made by qemu-img and qemu-io (no binary is committed).
# Backing names are "base.raw" and "base.qcow2", the files fuzz-chain puts
# beside its input, so those seeds open as two-layer chains.
set -eu
dir=${1:?usage: make-seeds.sh DIR}
mkdir -p "$dir"
cd "$dir"
tmp=$(mktemp -d seeds.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

img() { qemu-img create -q -f qcow2 "$@"; }
io() { qemu-io -f qcow2 "$@" >/dev/null; }

# A 64 KiB-cluster v3 image with data, a zero cluster and a hole (the
# default layout; longer than -max_len, so only its start is fuzzed).  The
# others use small clusters to stay under it.
img -o cluster_size=65536 "$tmp/v3.qcow2" 1M
io -c 'write -P 1 0 64k' -c 'write -z 128k 64k' -c 'write -P 2 512k 4k' "$tmp/v3.qcow2"
# compat 0.10 (version 2), where zero clusters do not exist.
img -o compat=0.10,cluster_size=4096 "$tmp/v2.qcow2" 1M
io -c 'write -P 3 64k 8k' "$tmp/v2.qcow2"
# 512-byte clusters: many L2 tables, long maps.
img -o cluster_size=512 "$tmp/c512.qcow2" 256k
io -c 'write -P 4 0 3k' -c 'write -z 8k 2k' -c 'write -P 5 100k 512' "$tmp/c512.qcow2"
# Extended L2 entries: subclusters allocated and zeroed.
img -o extended_l2=on,cluster_size=16384 "$tmp/extl2.qcow2" 1M
io -c 'write -P 6 0 2k' -c 'write -z 4k 1k' -c 'write -P 7 9k 1k' "$tmp/extl2.qcow2"
# Compressed clusters, zlib and zstd.
img -o cluster_size=4096 "$tmp/zlib.qcow2" 1M
io -c 'write -c -P 8 0 4k' -c 'write -P 9 8k 4k' "$tmp/zlib.qcow2"
img -o compression_type=zstd,cluster_size=4096 "$tmp/zstd.qcow2" 1M
io -c 'write -c -P 10 0 4k' -c 'write -c -P 11 192k 4k' "$tmp/zstd.qcow2"
# Backing name and backing-format extension, over the fuzzer's bases.
qemu-img create -q -f raw "$tmp/base.raw" 192k
img -o cluster_size=4096 -b base.raw -F raw "$tmp/over-raw.qcow2" 1M
io -c 'write -P 12 64k 4k' -c 'write -z 128k 64k' "$tmp/over-raw.qcow2"
img "$tmp/base.qcow2" 1M
img -o cluster_size=2048 -b base.qcow2 -F qcow2 "$tmp/over-qcow2.qcow2" 2M
io -c 'write -P 13 0 4k' "$tmp/over-qcow2.qcow2"
# A backing name without a format: the caller's claimed format decides.
# qemu-img insists on a format, so the backing-format extension
# (0xe2792aca) is renamed to an unknown type, which readers skip.
img -o cluster_size=4096 -b base.raw -F raw "$tmp/noformat.qcow2" 512k
io -c 'write -P 14 4k 4k' "$tmp/noformat.qcow2"
at=$(od -An -tx1 -v -w1 -N 4096 "$tmp/noformat.qcow2" | tr -d ' ' | tr '\n' ' ' |
  awk '{ for (i = 1; i + 3 <= NF; i++)
           if ($i $(i+1) $(i+2) $(i+3) == "e2792aca") { print i - 1; exit } }')
printf '\125\125\125\125' | dd of="$tmp/noformat.qcow2" bs=1 seek="${at:?}" conv=notrunc status=none
# A persistent dirty bitmap: the bitmaps extension and its directory.
img -o cluster_size=4096 "$tmp/bitmap.qcow2" 256k
io -c 'write -P 15 0 4k' "$tmp/bitmap.qcow2"
qemu-img bitmap --add -f qcow2 "$tmp/bitmap.qcow2" dirty
# Raw bytes: the qcow2 reader must refuse them cleanly.
head -c 4096 /dev/zero | tr '\0' 'r' >"$tmp/raw.img"

for f in v3 v2 c512 extl2 zlib zstd over-raw over-qcow2 noformat bitmap; do
  mv "$tmp/$f.qcow2" "seed-$f"
done
mv "$tmp/raw.img" seed-raw
