#!/usr/bin/env python3
"""test-load: 64 concurrent readers while snapshots come and go next door.

Against qemu:///embed with real QEMU (TCG), two shut-off domains in one
mount:
  - "load": two disks (vda with 64 KiB clusters and a compressed base,
    vdb with 4 KiB clusters), points s1..s4 with data written between
    them, and @now;
  - "churn": one disk, a snapshot "keep", and a loop of mkdir churn/cN,
    reading cN/vda.raw, rmdir churn/cN through the mount, each step
    checked (listing, bytes against the oracle, keep still reads right).
64 reader threads pick a random point and disk of "load", open it, read
random ranges (aligned or not, up to 256 KiB) and compare every byte with
`qemu-img convert -O raw` of that point, close, and start again, until the
run ends (VIRTSNAPFS_LOAD_SECONDS, default 60; `--soak SECONDS` for a long
run).  Any mismatch, error or daemon warning fails the test.

Meanwhile the daemon's VmRSS and open descriptors are sampled every
second.  Rules (the reader load is stationary once warmed up, so a leak
shows as growth between the first and the last third of the run):
  - descriptors: while busy, never more than one chain (5 layers) per
    reader, a /dev/fuse clone, a splice pipe and a chain being opened for
    getattr per FUSE worker (16), and 16 more (the churn, plans) above
    the idle count.  Once every file is closed,
    descriptors other than /dev/fuse and pipes are back to the idle count
    exactly (a leaked layer, journal or image shows here); libfuse keeps
    a /dev/fuse clone and a splice pipe per worker thread, and workers
    that went idle stay until they serve another request, so /dev/fuse
    clones may stay up to the worker limit (16), and pipe ends may exceed
    the idle count by at most two per such clone, plus one pipe in use
    for a moment (a pipe leaked per plan or per open shows).
    The busy count moves by hundreds between samples, so comparing busy
    maxima would measure the readers, not the daemon;
  - RSS: the last third's maximum is at most the first third's maximum
    + 16 MiB.  What the daemon may legitimately keep growing after warm-up
    is bounded: the L2 cache (32 MiB process-wide, but these disks have
    under 10 KiB of L2 tables), the merged-map caches (a few KiB for 16
    MiB disks) and malloc's per-thread arenas, which the first third
    already reaches with 64 readers.  A leak of one 4 KiB buffer per open
    crosses 16 MiB within about 4000 opens, fewer than a 60 s run makes.
    Not checked under AddressSanitizer, whose quarantine grows RSS by
    design; LeakSanitizer checks leaks there at exit.
"""

import argparse
import contextlib
import errno
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
READERS = 64
MAX_THREADS = 16  # VIRTSNAPFS_DEFAULT_THREADS: libfuse's worker limit
SIZE = 16 * MiB
check = m.Checker()


def build_load(env):
    img = env.images
    raw = os.path.join(env.dir, "load-src.raw")
    m.qemu_img_create(raw, SIZE, fmt="raw")
    m.qemu_io_write(raw, "raw", 0x11, 0, 2 * MiB)
    m.qemu_io_write(raw, "raw", 0x12, 9 * MiB, 300 * KiB)
    vda = os.path.join(img, "load-vda.qcow2")
    m.run("qemu-img", "convert", "-c", "-O", "qcow2", raw, vda)
    vdb = os.path.join(img, "load-vdb.qcow2")
    m.qemu_img_create(vdb, SIZE, extra=("-o", "cluster_size=4096"))
    m.qemu_io_write(vdb, "qcow2", 0x21, 0, MiB)
    env.define("load", [("vda", "virtio", vda, "qcow2"), ("vdb", "virtio", vdb, "qcow2")])
    for i in range(4):
        env.snapshot("load", "s%d" % (i + 1))
        for j, t in enumerate(("vda", "vdb")):
            active = env.active_image("load", t)
            m.qemu_io_write(active, "qcow2", 0x30 + 16 * j + i, (i * 3 + j) * MiB + 512 * j,
                            700 * KiB)
            if i == 2:
                m.qemu_io_zero(active, "qcow2", 0, 256 * KiB)
        time.sleep(1.1)


def build_churn(env):
    vda = os.path.join(env.images, "churn-vda.qcow2")
    m.qemu_img_create(vda, SIZE)
    m.qemu_io_write(vda, "qcow2", 0x71, MiB, MiB)
    env.define("churn", [("vda", "virtio", vda, "qcow2")])
    env.snapshot("churn", "keep")
    m.qemu_io_write(env.active_image("churn", "vda"), "qcow2", 0x72, 3 * MiB, MiB)


def point_images(env, dom, targets):
    """{point: {target: image}}: P(s) from each overlay's backing; @now is
    the active image (the domain is shut off and stays unchanged)."""
    import xml.etree.ElementTree as ET
    out = {}
    for name in filter(None, (x.strip() for x in env.virsh("snapshot-list", dom, "--name")
                              .splitlines())):
        xml = ET.fromstring(env.virsh("snapshot-dumpxml", dom, name))
        out[name] = {d.get("name"): m.backing_of(d.find("source").get("file"))
                     for d in xml.findall("disks/disk") if d.get("snapshot") == "external"}
    out["@now"] = {t: env.active_image(dom, t) for t in targets}
    return out


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reads = 0
        self.bytes = 0
        self.opens = 0
        self.cycles = 0
        self.errors = []

    def fail(self, msg):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(msg)


def reader(env, oracles, stop, stats, seed):
    rnd = random.Random(seed)
    files = sorted(oracles)
    while not stop.is_set():
        point, target = rnd.choice(files)
        path = os.path.join(env.mnt, "load", point, target + ".raw")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            stats.fail("open %s: %s" % (path, e))
            stop.set()
            return
        try:
            with open(oracles[(point, target)], "rb") as want:
                for _ in range(rnd.randint(1, 20)):
                    length = rnd.choice((4 * KiB, 64 * KiB, 256 * KiB, rnd.randint(1, 256 * KiB)))
                    offset = rnd.randrange(0, SIZE + 4 * KiB)
                    if rnd.random() < 0.5:
                        offset &= ~4095
                    got = os.pread(fd, length, offset)
                    want.seek(offset)
                    exp = want.read(length)
                    if got != exp:
                        stats.fail("%s: %d bytes at %d differ from the oracle (got %d bytes)"
                                   % (path, length, offset, len(got)))
                        stop.set()
                        return
                    with stats.lock:
                        stats.reads += 1
                        stats.bytes += len(got)
        except OSError as e:
            stats.fail("read %s: %s" % (path, e))
            stop.set()
            return
        finally:
            os.close(fd)
        with stats.lock:
            stats.opens += 1


def churn(env, stop, stats, want_now, want_keep):
    dom = os.path.join(env.mnt, "churn")
    n = 0
    try:
        while not stop.is_set():
            n += 1
            name = "c%d" % n
            os.mkdir(os.path.join(dom, name))
            if name not in os.listdir(dom):
                raise AssertionError("mkdir %s: not listed" % name)
            got = m.sha(os.path.join(dom, name, "vda.raw"))
            if got != want_now:
                raise AssertionError("churn/%s/vda.raw differs from the present" % name)
            os.rmdir(os.path.join(dom, name))
            if name in os.listdir(dom):
                raise AssertionError("rmdir %s: still listed" % name)
            if m.sha(os.path.join(dom, "keep", "vda.raw")) != want_keep:
                raise AssertionError("churn/keep changed after rmdir %s" % name)
            with stats.lock:
                stats.cycles += 1
    except (OSError, AssertionError) as e:
        stats.fail("churn cycle %d: %s" % (n, e))
        stop.set()


def daemon_sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    return rss * KiB, len(os.listdir("/proc/%d/fd" % pid))


def fd_targets(pid):
    out = []
    for fd in sorted(os.listdir("/proc/%d/fd" % pid), key=int):
        with contextlib.suppress(OSError):
            out.append("%s -> %s" % (fd, os.readlink("/proc/%d/fd/%s" % (pid, fd))))
    return "\n".join(out)


def fd_kinds(pid):
    """(other descriptors, /dev/fuse descriptors, pipe ends)."""
    files = fuse = pipes = 0
    for line in fd_targets(pid).splitlines():
        target = line.split(" -> ", 1)[1]
        if target == "/dev/fuse":
            fuse += 1
        elif target.startswith("pipe:"):
            pipes += 1
        else:
            files += 1
    return files, fuse, pipes


def sanitized(binary):
    out = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, text=True).stdout
    return "libasan" in out


def test(env, seconds):
    build_load(env)
    build_churn(env)
    points = point_images(env, "load", ("vda", "vdb"))
    oracles = {}
    for point, disks in points.items():
        for t, image in disks.items():
            out = os.path.join(env.dir, "oracle-%s-%s.raw" % (point, t))
            m.oracle(image, out)
            oracles[(point, t)] = out
    check.ok(len(oracles) == 10, "oracles for 5 points x 2 disks")
    churn_points = point_images(env, "churn", ("vda",))
    tmp = os.path.join(env.dir, "oracle-churn.raw")
    m.oracle(churn_points["@now"]["vda"], tmp)
    want_now = m.sha(tmp)
    m.oracle(churn_points["keep"]["vda"], tmp)
    want_keep = m.sha(tmp)

    d = m.Daemon(env)
    pid = d.proc.pid
    try:
        for point in points:
            os.listdir(os.path.join(env.mnt, "load", point))
        idle_rss, idle_fds = daemon_sample(pid)
        idle_files, idle_fuse, idle_pipes = fd_kinds(pid)
        m.log("before the load: RSS %.1f MiB, %d descriptors" % (idle_rss / MiB, idle_fds))

        stop = threading.Event()
        stats = Stats()
        threads = [threading.Thread(target=reader, args=(env, oracles, stop, stats, i))
                   for i in range(READERS)]
        threads.append(threading.Thread(target=churn, args=(env, stop, stats, want_now,
                                                            want_keep)))
        for t in threads:
            t.start()
        samples = []
        start = time.monotonic()
        while not stop.is_set() and time.monotonic() - start < seconds:
            time.sleep(1)
            samples.append(daemon_sample(pid))
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        check.ok(not stats.errors, "no error or mismatch:\n" + "\n".join(stats.errors))
        m.log("%.0f s: %d reads (%.0f MiB), %d opens, %d mkdir/rmdir cycles" %
              (elapsed, stats.reads, stats.bytes / MiB, stats.opens, stats.cycles))
        check.ok(stats.cycles >= 1 and stats.opens >= READERS,
                 "the load ran (%d cycles, %d opens)" % (stats.cycles, stats.opens))

        # Every file is closed; the kernel sends RELEASE asynchronously.
        def settled():
            return fd_kinds(pid)[0] <= idle_files
        try:
            m.wait_for(settled, timeout=30, what="descriptors back to idle")
        except AssertionError:
            pass
        end_rss, end_fds = daemon_sample(pid)
        third = max(1, len(samples) // 3)
        first, last = samples[:third], samples[-third:]
        rss1, rss3 = max(s[0] for s in first), max(s[0] for s in last)
        fd1, fd3 = max(s[1] for s in first), max(s[1] for s in last)
        m.log("RSS max: first third %.1f MiB, last third %.1f MiB, after %.1f MiB" %
              (rss1 / MiB, rss3 / MiB, end_rss / MiB))
        m.log("descriptors max: first third %d, last third %d; idle before %d, after %d" %
              (fd1, fd3, idle_fds, end_fds))
        for line in fd_targets(pid).splitlines():
            m.log("after:", line)
        busy = max(s[1] for s in samples)
        check.ok(busy <= idle_fds + READERS * 5 + MAX_THREADS * (3 + 5) + 16,
                 "descriptors stay within one chain per reader and three per FUSE worker "
                 "(%d)" % busy)
        # The least of a few samples, and two pipe ends of slack: a pipe
        # libvirt opens for a moment while the backend polls is not kept
        # (one was seen in about one run in five).
        kinds = []
        for _ in range(5):
            kinds.append(fd_kinds(pid))
            time.sleep(0.5)
        end_files, end_fuse, end_pipes = min(kinds, key=sum)
        check.ok(end_files <= idle_files, "file descriptors back to idle (%d -> %d)"
                 % (idle_files, end_files))
        clones = end_fuse - 1  # the session's own /dev/fuse stays
        check.ok(clones <= MAX_THREADS, "/dev/fuse clones: at most one per FUSE worker (%d)"
                 % clones)
        check.ok(end_pipes <= idle_pipes + 2 * clones + 2,
                 "pipes: at most one splice pipe per FUSE worker (%d -> %d, %d workers)"
                 % (idle_pipes, end_pipes, clones))
        if sanitized(m.VIRTSNAPFS):
            m.log("AddressSanitizer build: RSS rule not applied (LeakSanitizer checks at exit)")
        else:
            check.ok(rss3 <= rss1 + 16 * MiB, "RSS does not keep growing (%.1f -> %.1f MiB)"
                     % (rss1 / MiB, rss3 / MiB))
        check.ok(sorted(os.listdir(os.path.join(env.mnt, "churn"))) == ["@now", "keep"],
                 "churn is left with keep and @now")
    finally:
        d.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--soak", type=float, metavar="SECONDS",
                    default=float(os.environ.get("VIRTSNAPFS_LOAD_SECONDS", "60")),
                    help="how long the readers and the churn run (default 60)")
    args = ap.parse_args()
    m.main(lambda env: test(env, args.soak), "load")
