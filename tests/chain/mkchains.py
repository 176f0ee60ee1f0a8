#!/usr/bin/env python3
"""Builds backing chains with qemu-img and qemu-io for the golden tests.

usage: mkchains.py OUTDIR GROUP

Prints one line per point in time of every chain of GROUP:
    CHAIN <tab> INDEX <tab> PATH <tab> FORMAT
where PATH is the point's top image (the chain from PATH down is the point).
Content is pseudo-random but seeded, so a failure reproduces.  Groups:
basic (cluster sizes 512 B..2 MiB, compat 0.10/1.1, extended L2, zlib and
zstd, raw bases, relative/absolute names, odd and growing sizes, depth 8),
deep64 and deep200 (long chains of small writes).
"""
import json
import os
import random
import subprocess
import sys

KIB = 1024
MIB = 1024 * KIB


def run(args, cwd):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


class Builder:
    def __init__(self, out, seed):
        self.out = out
        self.rng = random.Random(seed)
        self.lines = []

    def ops(self, size, cluster, count, compress=True, zero=True):
        """qemu-io commands: unaligned pattern writes, zero writes, discards,
        compressed whole-cluster writes."""
        rng, cmds, compressed = self.rng, [], set()
        for _ in range(count):
            kind = rng.choices(["write", "zero", "discard", "compress"], [5, 2, 1, 2])[0]
            # QEMU cannot write compressed 512-byte clusters
            if kind == "compress" and (not compress or size < cluster or cluster < 1024):
                kind = "write"
            if kind in ("zero", "discard") and not zero:
                kind = "write"
            pattern = rng.randrange(1, 256)
            if kind == "compress":
                # QEMU only compresses into clusters this layer has not
                # allocated yet: these go first, each to its own cluster.
                off = rng.randrange(size // cluster) * cluster
                if off not in compressed:
                    compressed.add(off)
                    cmds.insert(0, f"write -c -P {pattern} {off} {cluster}")
                continue
            # zero and discard need 512-byte alignment in qemu-io
            align = 1 if kind == "write" else 512
            length = rng.randrange(1, min(size, 3 * max(cluster, 64 * KIB)) // align + 1) * align
            off = rng.randrange(0, (size - length) // align + 1) * align
            if kind == "write":
                cmds.append(f"write -P {pattern} {off} {length}")
            elif kind == "zero":
                cmds.append(f"write -z {off} {length}")
            else:
                cmds.append(f"discard {off} {length}")
        return cmds

    def io(self, path, fmt, cmds, detached=False):
        """Runs qemu-io commands on path; detached opens it without its
        backing file (partial writes then fill from zeros, not from the
        backing file), which keeps building a deep chain linear in time."""
        if cmds:
            args = ["qemu-io"]
            for c in cmds:
                args += ["-c", c]
            if detached:
                spec = {"driver": fmt, "file": {"driver": "file", "filename": path}, "backing": None}
                args += ["json:" + json.dumps(spec)]
            else:
                args += ["-f", fmt, path]
            run(args, self.out)

    def qcow2(self, path, size, opts, backing=None, backing_fmt=None, unsafe=False):
        o = ",".join(f"{k}={v}" for k, v in opts.items())
        args = ["qemu-img", "create", "-q", "-f", "qcow2"] + (["-u"] if unsafe else [])
        if o:
            args += ["-o", o]
        if backing:
            args += ["-b", backing, "-F", backing_fmt]
        args += [path]
        if size is not None:
            args += [str(size)]
        run(args, self.out)

    def emit(self, chain, points):
        for i, (path, fmt) in enumerate(points):
            self.lines.append(f"{chain}\t{i}\t{os.path.join(self.out, path)}\t{fmt}")

    def chain(self, name, base, overlays, ops=6, names="relative", detached=False):
        """base: ('raw', size) | ('qcow2', size, opts) | ('convert', size, opts)
        overlays: list of (size or None, opts)."""
        d = os.path.join(self.out, name)
        os.makedirs(os.path.join(d, "base"))
        points = []
        kind, size = base[0], base[1]
        base_ops, ops = (ops, ops) if isinstance(ops, int) else (8, ops)
        if kind == "raw":
            path = f"{name}/base/base.raw"
            with open(os.path.join(self.out, path), "wb") as f:
                f.truncate(size)
            self.io(path, "raw", self.ops(size, 64 * KIB, base_ops, compress=False))
            points.append((path, "raw"))
            size = (size + 511) // 512 * 512
        elif kind == "convert":
            src = f"{name}/base/src.raw"
            with open(os.path.join(self.out, src), "wb") as f:
                f.truncate(size)
            self.io(src, "raw", self.ops(size, 64 * KIB, base_ops, compress=False))
            path = f"{name}/base/base.qcow2"
            o = ",".join(f"{k}={v}" for k, v in base[2].items())
            run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", o, src, path], self.out)
            os.unlink(os.path.join(self.out, src))
            points.append((path, "qcow2"))
        else:
            path = f"{name}/base/base.qcow2"
            self.qcow2(path, size, base[2])
            cluster = base[2].get("cluster_size", 64 * KIB)
            # compressed writes need unallocated clusters
            self.io(path, "qcow2", self.ops(size, cluster, base_ops,
                                            compress="preallocation" not in base[2]))
            points.append((path, "qcow2"))

        for i, (osize, opts) in enumerate(overlays):
            below, below_fmt = points[-1]
            path = f"{name}/l{i + 1:03d}.qcow2"
            if names == "absolute" or (names == "mixed" and i % 2):
                backing = os.path.join(self.out, below)
            else:  # relative to the overlay's directory
                backing = os.path.relpath(os.path.join(self.out, below), os.path.join(self.out, name))
            size = osize or size
            self.qcow2(path, size if detached else osize, opts, backing, below_fmt, unsafe=detached)
            cluster = opts.get("cluster_size", 64 * KIB)
            n = ops if isinstance(ops, int) else ops(i)
            self.io(path, "qcow2", self.ops(size, cluster, n, compress="preallocation" not in opts),
                    detached)
            points.append((path, "qcow2"))
        self.emit(name, points)


def basic(b):
    odd = 3 * MIB + 1536  # not a multiple of any cluster size above 512
    for cs in (512, 4 * KIB, 64 * KIB, 2 * MIB):
        for compat in ("0.10", "1.1"):
            o = {"cluster_size": cs, "compat": compat}
            b.chain(f"cs{cs}-v{compat}", ("qcow2", odd, o),
                    [(None, o), (4 * MIB + 512, o), (None, dict(o, cluster_size=64 * KIB))])
    for cs in (16 * KIB, 64 * KIB, 2 * MIB):
        for comp in ("zlib", "zstd"):
            o = {"cluster_size": cs, "extended_l2": "on", "compression_type": comp}
            b.chain(f"extl2-{cs}-{comp}", ("qcow2", odd, o),
                    [(None, o), (4 * MIB, o), (None, dict(o, extended_l2="off"))], ops=8)
    for cs in (4 * KIB, 64 * KIB):
        for comp in ("zlib", "zstd"):
            o = {"cluster_size": cs, "compression_type": comp}
            b.chain(f"compressed-{cs}-{comp}", ("convert", 5 * MIB, o),
                    [(None, o), (6 * MIB, dict(o, cluster_size=16 * KIB))], ops=8)
    o = {"cluster_size": 64 * KIB}
    b.chain("raw-base", ("raw", 2 * MIB + 1000), [(None, o), (3 * MIB, o)])
    b.chain("raw-only", ("raw", 1 * MIB + 4096 + 17), [])
    b.chain("absolute", ("qcow2", 2 * MIB, o), [(None, o), (None, o)], names="absolute")
    b.chain("depth8", ("qcow2", odd, {"cluster_size": 32 * KIB}),
            [(None, {"cluster_size": 1 << (9 + i % 8), "compat": "1.1" if i % 3 else "0.10"})
             for i in range(7)], ops=4, names="mixed")
    b.chain("empty", ("qcow2", 0, o), [(None, o)], ops=0)
    # Preallocation: zero clusters with host offsets, data clusters over holes.
    b.chain("prealloc-v2", ("qcow2", odd, {"cluster_size": 4 * KIB, "compat": "0.10",
                                           "preallocation": "metadata"}), [(None, o)])
    b.chain("prealloc-extl2", ("qcow2", odd, {"preallocation": "falloc"}),
            [(None, {"extended_l2": "on", "preallocation": "metadata"})])


def deep(b, depth):
    o = {"cluster_size": 64 * KIB}
    # Small disks: each point is read whole several times, and converted
    # by qemu-img; depth, not size, is what these chains test.
    size = 16 * MIB
    b.chain(f"deep{depth}", ("qcow2", size, o), [(None, o)] * (depth - 1),
            ops=lambda i: 1 + (i % 3 == 0), names="mixed", detached=True)


def main():
    out, group = sys.argv[1], sys.argv[2]
    b = Builder(os.path.abspath(out), seed=sum(map(ord, group)))
    if group == "basic":
        basic(b)
    elif group.startswith("deep"):
        deep(b, int(group[4:]))
    else:
        sys.exit(f"unknown group {group}")
    print("\n".join(b.lines))


if __name__ == "__main__":
    main()
