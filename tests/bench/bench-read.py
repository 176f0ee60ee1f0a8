#!/usr/bin/env python3
"""bench-read.py: how fast points in time read through virtsnapfs, side by
side with the tools an operator would otherwise use (issue 5).

usage: tests/bench/bench-read.py [--build DIR] [--runs N] [--size MIB] [--quick] [--keep]

Run as root from the source tree after `ninja -C build`.  It builds its own
images with qemu-img and qemu-io in a libvirt embed root under /var/tmp:

  deep   a 2 GiB disk, 60% allocated (three 64 KiB clusters of every five),
         then 199 overlays holding one 64 KiB write each, and snapshots
         s001..s200 (redefined with virsh) whose points are depth 1..200
  zstd   the same disk as one zstd-compressed image (depth 1)
  zlib   the same disk as one zlib-compressed image (depth 1)
  c2m    2 MiB clusters, depth 8
  xl2    extended L2 (64 KiB clusters, 2 KiB subclusters), depth 8; its
         @now too (every open freezes the shut-off domain: a temporary
         overlay over the active image, committed back at close)

and mounts virtsnapfs on it.  For every point measured it times, with the
page cache warm (each command runs once before timing; the best of N runs
is kept; outputs go to a tmpfs):

  mount    cp --sparse=always MNT/DOM/SNAP/vda.raw OUT, a first read: the
           file's pages in the mount's page cache are dropped before each
           run (the images' pages stay cached), so the daemon serves it
  again    the same cp from the mount's page cache (a point in time never
           changes, so the kernel keeps its pages across opens; @now's
           are dropped at each open, so its "again" is another first read)
  convert  qemu-img convert -O raw POINT OUT
  qsd      qemu-storage-daemon --export type=fuse of POINT; cp --sparse=always
  nbdfuse  nbdfuse over qemu-nbd of POINT; cp --sparse=always (if installed:
           apt-get install libnbd-bin)
  flat     cp --sparse=always of a flat raw copy of POINT on /var/tmp

and prints one table of times and ratios (other / mount: above 1 means the
mount is faster), and the depth-200 / depth-1 throughput ratio from first
reads of the two alternated 2N times.  Then: first-open latency at each
depth (a fresh mount, `dd bs=4k count=1` of the file, against `qemu-io -c
'read 0 4k'` of the point, median of N), `ls -l` / `ls -lR` of the domain with 200 snapshots on
a fresh mount against `virsh snapshot-list`, and the daemon's peak resident
memory (VmHWM) with 20 domains of 50 snapshots (16 MiB disks), every file
listed (`ls -lR`) and every point read once.

--quick shrinks everything (64 MiB disk, depths up to 20, 3 x 5 points) to
check that the script works.  Not a test: the numbers depend on the
machine and its load; only ratios from one run mean anything.
"""
import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "tests", "fs"))

MIB = 1 << 20
KIB = 1 << 10


# The present of the domain with 200 snapshots sits on 201 layers, past
# the reader's limit: the daemon says so once if anything looks at @now.
DEPTH_WARNING = (r"backing chain is deeper than 200 layers",)


def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw).stdout


def say(*a):
    print(*a, flush=True)


# -- images -------------------------------------------------------------

def make_source(path, size):
    """A raw disk: of every five 64 KiB clusters the first three hold data
    (half random, half a repeated byte, so it compresses about 2:1), the
    other two are holes."""
    pool = os.urandom(4 * MIB)
    cl = 64 * KIB
    with open(path, "wb") as f:
        f.truncate(size)
        for i, off in enumerate(range(0, size, 5 * cl)):
            chunk = bytearray()
            for j in range(3):
                if off + j * cl >= size:
                    break
                r = ((i * 3 + j) * 32 * KIB) % (len(pool) - 32 * KIB)
                chunk += pool[r:r + 32 * KIB] + bytes([(i + j) % 251 + 1]) * (32 * KIB)
            f.seek(off)
            f.write(chunk[:size - off])


def make_chain(d, src, size, depth, opts, compress=None):
    """Layers L001 (the base, converted from src) .. L{depth}, plus an empty
    active image on top.  Returns the list of layer paths, bottom first,
    the active image last."""
    os.makedirs(d, exist_ok=True)
    base = os.path.join(d, "L001.qcow2")
    o = ",".join(opts + ([f"compression_type={compress}"] if compress else []))
    cmd = ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", o]
    if compress:
        cmd.append("-c")
    sh(*cmd, src, base)
    layers = [base]
    for i in range(2, depth + 2):
        path = os.path.join(d, f"L{i:03d}.qcow2")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", ",".join(opts), "-u",
           "-b", layers[-1], "-F", "qcow2", path, size)
        if i <= depth:
            off = (i * 7919 * 64 * KIB) % (size - 64 * KIB)
            spec = ('json:{"driver":"qcow2","file":{"driver":"file","filename":"%s"},'
                    '"backing":null}' % path)
            sh("qemu-io", "-c", f"write -P {i % 250 + 1} {off} 64k", spec)
        layers.append(path)
    return layers


SNAP_XML = """<domainsnapshot>
  <name>{name}</name>
  {parent}<state>shutoff</state>
  <creationTime>{ctime}</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='{overlay}'/>
    </disk>
  </disks>
{domain}</domainsnapshot>
"""


def define_with_snapshots(env, dom, layers, names):
    """Defines dom on the active image layers[-1] and redefines snapshot
    names[i] with point layers[i] (its overlay is layers[i + 1])."""
    env.define(dom, [("vda", "virtio", layers[-1], "qcow2")])
    domxml = env.virsh("dumpxml", dom, "--inactive")
    script = []
    t0 = 1700000000
    for i, name in enumerate(names):
        parent = f"<parent><name>{names[i - 1]}</name></parent>\n  " if i else ""
        path = os.path.join(env.dir, f"snap-{dom}-{i}.xml")
        with open(path, "w") as f:
            f.write(SNAP_XML.format(name=name, parent=parent, ctime=t0 + i,
                                    overlay=layers[i + 1], domain=domxml))
        script.append(f"snapshot-create {dom} {path} --redefine")
    # One virsh process for all of them: an embed root opens slowly.
    subprocess.run(["virsh", "-q", "-c", env.uri], input="\n".join(script) + "\n", text=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env.env)
    got = env.virsh("snapshot-list", dom, "--name").split()
    assert len(got) == len(names), f"{dom}: {len(got)} snapshots defined, want {len(names)}"


# -- timing ---------------------------------------------------------------

def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def best_of(runs, cmd, out, before=None):
    """Runs cmd once to warm up, then runs times; the best wall time.
    Flushes dirty pages first (building the images leaves gigabytes of
    them): writeback would land on whichever command runs next.  before()
    runs ahead of every run, untimed."""
    os.sync()
    ts = []
    for r in range(runs + 1):
        if os.path.exists(out):
            os.unlink(out)
        if before:
            before()
        t = timed(cmd)
        if r:
            ts.append(t)
    os.unlink(out)
    return min(ts)


def wait_file_mounted(path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open("/proc/self/mountinfo") as f:
            if any(line.split()[4] == path for line in f):
                return
        time.sleep(0.05)
    raise AssertionError(f"{path}: not mounted after {timeout} s")


class Qsd:
    """qemu-storage-daemon exporting point read-only over FUSE at a file."""

    def __init__(self, point, where):
        self.path = where
        open(where, "w").close()
        self.proc = subprocess.Popen(
            ["qemu-storage-daemon",
             "--blockdev", f"driver=file,node-name=f,filename={point},read-only=on",
             "--blockdev", "driver=qcow2,node-name=q,file=f,read-only=on",
             "--export", f"type=fuse,id=e,node-name=q,mountpoint={where},writable=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_file_mounted(where)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        os.unlink(self.path)


class NbdFuse:
    """nbdfuse DIR/nbd [ qemu-nbd -r -f qcow2 POINT ]: a file DIR/nbd."""

    def __init__(self, point, where):
        os.makedirs(where, exist_ok=True)
        self.dir = where
        self.path = os.path.join(where, "nbd")
        self.proc = subprocess.Popen(
            ["nbdfuse", "-r", self.path, "[", "qemu-nbd", "-r", "-f", "qcow2", point, "]"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_file_mounted(where)

    def stop(self):
        subprocess.run(["fusermount3", "-u", "-z", self.dir], check=False)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fresh_mount(env, mountlib):
    return mountlib.Daemon(env)


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def read_all_and_drop(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, MIB):
            pass
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- the parts ----------------------------------------------------------------

def part_throughput(a, env, mountlib, rows, tmpfs, have_nbd):
    out = os.path.join(tmpfs, "out.raw")
    results = []
    d = mountlib.Daemon(env, expect=DEPTH_WARNING)
    try:
        for label, dom, snap, point in rows:
            f = os.path.join(env.mnt, dom, snap, "vda.raw")
            flat = os.path.join(env.dir, "flat.raw")
            sh("qemu-img", "convert", "-U", "-O", "raw", "-f", "qcow2", point, flat)
            sh("cmp", f, flat)  # the mount reads what QEMU reads
            r = {"label": label, "size": os.path.getsize(f)}
            cp = ["cp", "--sparse=always", f, out]
            r["mount"] = best_of(a.runs, cp, out, before=lambda: mountlib.drop_cached(f))
            r["again"] = best_of(a.runs, cp, out)
            r["convert"] = best_of(a.runs, ["qemu-img", "convert", "-U", "-O", "raw", "-f",
                                            "qcow2", point, out], out)
            q = Qsd(point, os.path.join(env.dir, "qsd.raw"))
            try:
                r["qsd"] = best_of(a.runs, ["cp", "--sparse=always", q.path, out], out)
            finally:
                q.stop()
            if have_nbd:
                n = NbdFuse(point, os.path.join(env.dir, "nbdfuse"))
                try:
                    r["nbdfuse"] = best_of(a.runs, ["cp", "--sparse=always", n.path, out], out)
                finally:
                    n.stop()
            r["flat"] = best_of(a.runs, ["cp", "--sparse=always", flat, out], out)
            os.unlink(flat)
            results.append(r)
            say(f"  {label}: " + ", ".join(f"{k} {r[k]:.3f}s" for k in
                                          ("mount", "again", "convert", "qsd", "nbdfuse",
                                           "flat") if k in r))
    finally:
        d.stop()
    return results


def part_depth_ratio(a, env, mountlib, tmpfs, top):
    """First reads of the depth-1 and the depth-top point, alternately,
    2 x runs times each after a warm-up: the depth goal's ratio from reads
    seconds apart, not rows minutes apart (this VM's speed drifts by a
    third between minutes).  Returns the best times (depth 1, depth top)."""
    out = os.path.join(tmpfs, "out.raw")
    files = [os.path.join(env.mnt, "deep", f"s{dep:03d}", "vda.raw") for dep in (1, top)]
    times = [[], []]
    d = mountlib.Daemon(env, expect=DEPTH_WARNING)
    try:
        os.sync()
        for r in range(2 * a.runs + 1):
            for i, f in enumerate(files):
                mountlib.drop_cached(f)
                t = timed(["cp", "--sparse=always", f, out])
                os.unlink(out)
                if r:
                    times[i].append(t)
    finally:
        d.stop()
    return min(times[0]), min(times[1])


def part_first_open(a, env, mountlib, depths, points):
    res = {}
    for depth in depths:
        ours, qio = [], []
        for _ in range(max(a.runs, 3)):
            d = mountlib.Daemon(env, expect=DEPTH_WARNING)
            try:
                f = os.path.join(env.mnt, "deep", f"s{depth:03d}", "vda.raw")
                ours.append(timed(["dd", f"if={f}", "bs=4k", "count=1", "of=/dev/null"]))
            finally:
                d.stop()
            qio.append(timed(["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 4k", points[depth]]))
        res[depth] = (statistics.median(ours), statistics.median(qio))
        say(f"  first open at depth {depth}: {res[depth][0] * 1000:.1f} ms,"
            f" qemu-io {res[depth][1] * 1000:.1f} ms")
    return res


def part_ls(a, env, mountlib):
    res = {}
    ls, lsr, lsr_warm = [], [], []
    for _ in range(max(a.runs, 3)):
        d = mountlib.Daemon(env, expect=DEPTH_WARNING)
        try:
            deep = os.path.join(env.mnt, "deep")
            ls.append(timed(["ls", "-l", deep]))
            # The snapshots' directories: @now's chain (201 layers) is refused.
            snaps = [os.path.join(deep, n) for n in sorted(os.listdir(deep)) if n != "@now"]
            lsr.append(timed(["ls", "-lR"] + snaps))
            lsr_warm.append(timed(["ls", "-lR"] + snaps))
        finally:
            d.stop()
    t = time.perf_counter()
    env.virsh("snapshot-list", "deep")
    res["virsh"] = time.perf_counter() - t
    res["ls"] = statistics.median(ls)
    res["lsR"] = statistics.median(lsr)
    res["lsR_warm"] = statistics.median(lsr_warm)
    say("  " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in res.items()))
    return res


def part_memory(a, mountlib, src_small, size, n_dom, n_snap):
    env = mountlib.Env("bench-mem")
    try:
        for k in range(n_dom):
            dom = f"m{k:02d}"
            layers = make_chain(os.path.join(env.images, dom), src_small, size, n_snap,
                                ["cluster_size=65536"])
            define_with_snapshots(env, dom, layers, [f"s{i + 1:02d}" for i in range(n_snap)])
        d = mountlib.Daemon(env)
        try:
            sh("ls", "-lR", env.mnt)
            after_ls = hwm_kib(d.proc.pid)
            n = 0
            for k in range(n_dom):
                for i in range(n_snap):
                    read_all_and_drop(os.path.join(env.mnt, f"m{k:02d}", f"s{i + 1:02d}", "vda.raw"))
                    n += 1
            peak = hwm_kib(d.proc.pid)
        finally:
            d.stop()
        say(f"# memory: VmHWM {after_ls} KiB after ls -lR, {peak} KiB after reading {n} points")
        return {"points": n, "after_ls": after_ls, "peak": peak}
    finally:
        env.domains = []  # the embed root goes with the directory, no need to undefine
        env.cleanup()


def memory(a, mountlib, n_dom, n_snap):
    src_small = os.path.join(tempfile.gettempdir(), f"vsfs-bench-small-{os.getpid()}.raw")
    make_source(src_small, 16 * MIB)
    try:
        return part_memory(a, mountlib, src_small, 16 * MIB, n_dom, n_snap)
    finally:
        os.unlink(src_small)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(SRC, "build"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048, help="MiB of the main disks")
    ap.add_argument("--quick", action="store_true", help="small and fast, to check the script")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--no-throughput", action="store_true",
                    help="skip the cp table (first open, ls and memory only)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory part (20 x 50 points; 3 x 5 with --quick)")
    a = ap.parse_args()
    # Unwind (unmount, stop exporters, remove the scratch) on SIGTERM too,
    # and on SIGINT when started in the background (where it is ignored).
    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    os.environ["VIRTSNAPFS"] = os.path.join(os.path.abspath(a.build), "fs", "virtsnapfs")
    if a.keep:
        os.environ["VIRTSNAPFS_KEEP_TMP"] = "1"
    if not os.access(os.environ["VIRTSNAPFS"], os.X_OK):
        sys.exit(f"build first: {os.environ['VIRTSNAPFS']} missing")
    import mountlib
    mountlib.log = lambda *args: None  # its "mount: ..." lines would bury the table

    if a.quick:
        a.size, a.runs = 64, 1
        depths, n_dom, n_snap = (1, 8, 20), 3, 5
    else:
        depths, n_dom, n_snap = (1, 8, 64, 200), 20, 50
    size = a.size * MIB
    top = max(depths)
    have_nbd = shutil.which("nbdfuse") is not None

    say(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs,"
        f" load: {sh('uptime').strip()}")
    if a.memory_only:
        mem = memory(a, mountlib, n_dom, n_snap)
        say(f"VmHWM after ls -lR: {mem['after_ls'] / 1024:.1f} MiB; after reading all"
            f" {mem['points']} points: {mem['peak'] / 1024:.1f} MiB")
        return
    env = mountlib.Env("bench-read")
    tmpfs = tempfile.mkdtemp(prefix="vsfs-bench-out-", dir="/dev/shm")
    try:
        t = time.perf_counter()
        src = os.path.join(env.dir, "src.raw")
        make_source(src, size)
        c64 = ["cluster_size=65536"]
        chains = {
            "deep": make_chain(os.path.join(env.images, "deep"), src, size, top, c64),
            "zstd": make_chain(os.path.join(env.images, "zstd"), src, size, 1, c64, "zstd"),
            "zlib": make_chain(os.path.join(env.images, "zlib"), src, size, 1, c64, "zlib"),
            "c2m": make_chain(os.path.join(env.images, "c2m"), src, size, 8,
                              ["cluster_size=2097152"]),
            "xl2": make_chain(os.path.join(env.images, "xl2"), src, size, 8,
                              ["cluster_size=65536", "extended_l2=on"]),
        }
        os.unlink(src)
        for dom, layers in chains.items():
            define_with_snapshots(env, dom, layers, [f"s{i:03d}" for i in range(1, len(layers))])
        say(f"# built {a.size} MiB disks in {time.perf_counter() - t:.0f} s; best of {a.runs}"
            " runs after one warm-up, page cache warm, outputs on tmpfs")

        deep = chains["deep"]
        rows = [(f"depth {dep}", "deep", f"s{dep:03d}", deep[dep - 1]) for dep in depths]
        rows += [("zstd base", "zstd", "s001", chains["zstd"][0]),
                 ("zlib base", "zlib", "s001", chains["zlib"][0]),
                 ("2M clusters d8", "c2m", "s008", chains["c2m"][7]),
                 ("ext. L2 d8", "xl2", "s008", chains["xl2"][7]),
                 # The present of a shut-off domain: every open freezes it
                 # (a temporary overlay over the active image, depth 9).
                 ("@now ext. L2 d9", "xl2", "@now", chains["xl2"][8])]
        res = [] if a.no_throughput else part_throughput(a, env, mountlib, rows, tmpfs, have_nbd)
        ratio = None if a.no_throughput else part_depth_ratio(a, env, mountlib, tmpfs, top)
        first = part_first_open(a, env, mountlib, depths,
                                {dep: deep[dep - 1] for dep in depths})
        ls = part_ls(a, env, mountlib)
    finally:
        env.domains = []
        env.cleanup()
        shutil.rmtree(tmpfs, ignore_errors=True)

    mem = memory(a, mountlib, n_dom, n_snap)

    gbs = lambda r, k: r["size"] / r[k] / 1e9
    say("")
    if res:
        print_table(a, res, have_nbd, top, ratio)
    print_rest(a, first, ls, mem, top, n_dom, n_snap)


def print_table(a, res, have_nbd, top, ratio):
    gbs = lambda r, k: r["size"] / r[k] / 1e9
    say(f"## cp of a point in time, {a.size} MiB virtual, ~60% allocated; best of {a.runs};"
        f" load after: {sh('uptime').strip().split('load average: ')[1]}")
    cols = ["convert", "qsd"] + (["nbdfuse"] if have_nbd else []) + ["flat"]
    say("| point | mount GB/s | again GB/s | " + " | ".join(f"{c} GB/s" for c in cols) + " | "
        + " | ".join(f"{c}/mount time" for c in cols) + " |")
    say("|" + " --- |" * (3 + 2 * len(cols)))
    for r in res:
        say(f"| {r['label']} | {gbs(r, 'mount'):.2f} | {gbs(r, 'again'):.2f} | "
            + " | ".join(f"{gbs(r, c):.2f}" for c in cols) + " | "
            + " | ".join(f"{r[c] / r['mount']:.2f}" for c in cols) + " |")
    say("(mount: a first read, the mount's page cache of the file dropped before each run;"
        " again: read again from that page cache, as a re-read within the cache time"
        " does.  The ratios use the first read.)")
    if not have_nbd:
        say("(nbdfuse not installed: apt-get install libnbd-bin for its column)")
    by = {r["label"]: r for r in res}
    d1, dt = by["depth 1"], by[f"depth {top}"]
    say(f"\nthroughput depth {top} / depth 1 through the mount: {d1['mount'] / dt['mount']:.2f}"
        f" (qemu-img convert: {d1['convert'] / dt['convert']:.2f}); from first reads"
        f" alternated {2 * a.runs} times each: {ratio[0] / ratio[1]:.2f}"
        f" (best {ratio[0]:.3f} s at depth 1, {ratio[1]:.3f} s at depth {top})")


def print_rest(a, first, ls, mem, top, n_dom, n_snap):
    say(f"\n## first open + 4 KiB read on a fresh mount (dd), median of {max(a.runs, 3)}")
    say("| depth | mount ms | qemu-io ms | mount/qemu-io |")
    say("| --- | --- | --- | --- |")
    for dep, (o, q) in first.items():
        say(f"| {dep} | {o * 1000:.1f} | {q * 1000:.1f} | {o / q:.3f} |")
    say(f"\n## the domain with {top} snapshots, fresh mount, median of {max(a.runs, 3)}")
    say(f"ls -l: {ls['ls'] * 1000:.1f} ms; ls -lR of the snapshots (stats every disk file): {ls['lsR'] * 1000:.1f} ms,"
        f" again: {ls['lsR_warm'] * 1000:.1f} ms; virsh snapshot-list: {ls['virsh'] * 1000:.1f} ms")
    say(f"ratios to virsh snapshot-list: ls -l {ls['ls'] / ls['virsh']:.2f},"
        f" ls -lR {ls['lsR'] / ls['virsh']:.2f}")
    say(f"\n## daemon memory, {n_dom} domains x {n_snap} snapshots ({mem['points']} points,"
        " 16 MiB disks), ls -lR then every point read once")
    say(f"VmHWM after ls -lR: {mem['after_ls'] / 1024:.1f} MiB; after reading all:"
        f" {mem['peak'] / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
