#!/usr/bin/env python3
"""Benchmark: does chain depth cost anything, and how do we compare to QEMU?

usage: bench-depth.py CHAIN_CAT [--size MIB] [--runs N] [--dir DIR]

Builds one base image full of data and, on top of it, chains of depth 8 and
200 whose overlays each hold one small write, so that every depth shows
nearly the same disk.  Then, with the page cache warm, best of N runs:

  full read   chain-cat TOP > out.raw   versus   qemu-img convert -O raw
  random 4K   chain-cat --random: ns per 4 KiB read, cold map and warm map
  open+4K     chain-cat --read 0:4096   versus   qemu-io -c 'read 0 4k'

and prints the ratios that matter: depth 200 against depth 1, and us
against qemu-img.  Not a test: numbers depend on the machine and its load.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

MIB = 1 << 20


def run(args, **kw):
    subprocess.run(args, check=True, stdout=kw.pop("stdout", subprocess.DEVNULL), **kw)


def best(n, fn):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def build(d, size, depth, base):
    top, fmt = base, "qcow2"
    os.makedirs(d, exist_ok=True)
    for i in range(1, depth):
        path = os.path.join(d, f"l{i:03d}.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", top, "-F", fmt, path, str(size)])
        off = (i * 7919 * 65536) % (size - 65536)
        spec = {"driver": "qcow2", "file": {"driver": "file", "filename": path}, "backing": None}
        run(["qemu-io", "-c", f"write -P {i % 255 + 1} {off} 64k", "json:" + json.dumps(spec)])
        top = path
    return top


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("chain_cat")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir")
    a = ap.parse_args()
    cat = os.path.abspath(a.chain_cat)
    size = a.size * MIB
    tmp = a.dir or tempfile.mkdtemp(prefix="bench-depth-")
    try:
        base = os.path.join(tmp, "base.qcow2")
        run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(size)])
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {size}", base])
        tops = {1: base}
        for depth in (8, 200):
            tops[depth] = build(os.path.join(tmp, f"d{depth}"), size, depth, base)
        out = os.path.join(tmp, "out.raw")

        print(f"disk {a.size} MiB of data, 64 KiB clusters, best of {a.runs}\n")
        print(f"{'depth':>5} {'chain-cat':>10} {'qemu-img':>10} {'ours/qemu':>9}"
              f" {'4K cold':>9} {'4K warm':>9} {'open+4K':>8} {'qemu-io':>8}")
        res = {}
        for depth, top in tops.items():
            def ours():
                with open(out, "wb") as f:
                    run([cat, top], stdout=f)
            t_cat = best(a.runs, ours)
            t_qemu = best(a.runs, lambda: run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, out]))
            r = subprocess.run([cat, "--random", "20000", top], check=True, capture_output=True, text=True)
            cold, warm = (float(line.split()[1]) for line in r.stdout.splitlines())
            t_open = best(a.runs * 3, lambda: run([cat, "--read", "0:4096", top]))
            t_qio = best(a.runs * 3, lambda: run(["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 4k", top]))
            res[depth] = (t_cat, t_qemu, cold, warm, t_open, t_qio)
            print(f"{depth:>5} {size / t_cat / MIB:>6.0f} MB/s {size / t_qemu / MIB:>6.0f} MB/s"
                  f" {t_qemu / t_cat:>8.2f}x {cold:>6.0f} ns {warm:>6.0f} ns"
                  f" {t_open * 1000:>5.1f} ms {t_qio * 1000:>5.1f} ms")
        d1, d200 = res[1], res[200]
        print()
        print(f"depth 200 / depth 1 throughput (full read): {d1[0] / d200[0]:.2f}")
        print(f"depth 200 / depth 1 cost of a warm 4 KiB read: {d200[3] / d1[3]:.2f}")
        print(f"depth 200 / depth 1 cost of a cold 4 KiB read: {d200[2] / d1[2]:.2f}")
        print(f"full read vs qemu-img convert: {res[8][1] / res[8][0]:.2f}x faster at depth 8,"
              f" {d200[1] / d200[0]:.2f}x at depth 200")
        print(f"open + 4 KiB read at depth 200: {d200[4] / d200[5]:.3f} of qemu-io's time")
    finally:
        if not a.dir:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
