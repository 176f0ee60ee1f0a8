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
import resource
import shutil
import subprocess
import tempfile
import time

MIB = 1 << 20


def run(args, **kw):
    subprocess.run(args, check=True, stdout=kw.pop("stdout", subprocess.DEVNULL), **kw)


def best(n, fn):
    """Best of n runs: (wall seconds, CPU seconds of the child processes).
    CPU time is the steadier figure on a shared machine."""
    walls, cpus = [], []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return min(walls), min(cpus)


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

        print(f"disk {a.size} MiB of data, 64 KiB clusters, best of {a.runs};"
              " times are wall / CPU (user+sys)\n")
        print(f"{'depth':>5} {'chain-cat':>17} {'qemu-img convert':>17}"
              f" {'4K cold':>8} {'4K warm':>8} {'open+4K':>15} {'qemu-io':>15}")
        res = {}
        for depth, top in tops.items():
            def ours():
                with open(out, "wb") as f:
                    run([cat, top], stdout=f)
            # Flush what building and the last runs wrote, so that writeback
            # throttling does not land on whoever runs next; one warm-up.
            os.sync()
            ours()
            os.sync()
            full = best(a.runs, ours)
            os.sync()
            qemu = best(a.runs, lambda: run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, out]))
            r = subprocess.run([cat, "--random", "20000", top], check=True, capture_output=True, text=True)
            cold, warm, lookup = (float(line.split()[1]) for line in r.stdout.splitlines())
            op = best(a.runs * 3, lambda: run([cat, "--read", "0:4096", top]))
            qio = best(a.runs * 3, lambda: run(["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 4k", top]))
            res[depth] = dict(full=full, qemu=qemu, cold=cold, warm=warm, lookup=lookup, open=op, qio=qio)
            ms = lambda t: f"{t[0] * 1000:6.1f}/{t[1] * 1000:6.1f}ms"
            print(f"{depth:>5} {ms(full):>17} {ms(qemu):>17} {cold:>5.0f} ns {warm:>5.0f} ns"
                  f" {ms(op):>15} {ms(qio):>15}")
        d1, d8, d200 = res[1], res[8], res[200]
        print()
        for i, what in ((0, "wall"), (1, "CPU")):
            print(f"[{what}] depth 200 / depth 1 full-read throughput: "
                  f"{d1['full'][i] / d200['full'][i]:.2f}")
            print(f"[{what}] vs qemu-img convert: {d8['qemu'][i] / d8['full'][i]:.2f}x faster at depth 8, "
                  f"{d200['qemu'][i] / d200['full'][i]:.2f}x at depth 200")
            print(f"[{what}] open + 4 KiB read at depth 200: "
                  f"{d200['open'][i] / d200['qio'][i]:.3f} of qemu-io's")
        print(f"depth 200 / depth 1 cost of one 4 KiB read, warm map: {d200['warm'] / d1['warm']:.2f},"
              f" cold map: {d200['cold'] / d1['cold']:.2f}")
        print(f"depth 200 / depth 1 cost of one warm lookup (chain_map, no I/O):"
              f" {d200['lookup'] / d1['lookup']:.2f} ({d1['lookup']:.0f} vs {d200['lookup']:.0f} ns)")
    finally:
        if not a.dir:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
