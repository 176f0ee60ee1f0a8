#!/usr/bin/env python3
"""test-read: every point in time of every disk reads as qemu-img says.

Against qemu:///embed with real QEMU (TCG):
  - "one": shut off, one virtio disk on a chain whose base has compressed
    clusters, zero clusters in the middle, five snapshots with data written
    between them, names with a space, unicode, '%', a leading '@'.
  - "two": running, a virtio disk on a raw base and a sata disk, snapshots
    taken live with guest writes (through the QEMU monitor) between them.
For each point and disk: `cp --sparse=always` equals `qemu-img convert -O
raw` of the point image, the copy is sparse where the chain has holes, and
SEEK_DATA/SEEK_HOLE match `qemu-img map`; after a sequential read the
daemon has stored the data that follows into the page cache (and with
-o prefetch=0 has not).  Also: the tree, modes, times,
xattrs, readdir order, unaligned reads, ENXIO past the end, nothing
writable, other users, mount -t fuse.virtsnapfs, SIGTERM with a file open,
stat of @now while its freezes are thawed.
"""

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
check = m.Checker()


def build_one(env):
    img = env.images
    # A base with compressed clusters: write a raw file, convert with -c.
    raw = os.path.join(env.dir, "base-src.raw")
    m.qemu_img_create(raw, 64 * MiB, fmt="raw")
    m.qemu_io_write(raw, "raw", 0x11, 0, 2 * MiB)
    m.qemu_io_write(raw, "raw", 0x12, 40 * MiB, 256 * 1024)
    base = os.path.join(img, "one-base.qcow2")
    m.run("qemu-img", "convert", "-c", "-O", "qcow2", raw, base)
    vda = os.path.join(img, "one-vda.qcow2")
    m.qemu_img_create(vda, None, backing=base, backing_fmt="qcow2")
    m.qemu_io_write(vda, "qcow2", 0x13, 1 * MiB, 64 * 1024)
    env.define("one", [("vda", "virtio", vda, "qcow2")])

    steps = [
        ("first", (0x21, 512 * 1024, MiB)),
        ("with space", (0x22, 8 * MiB, 3 * MiB)),
        ("ünïcødé", None),            # zero clusters over data
        ("100%", (0x24, 63 * MiB, MiB)),
        ("@at", (0x25, 20 * MiB + 4096, 8192)),
    ]
    for name, write in steps:
        env.snapshot("one", name)
        active = env.active_image("one", "vda")
        if write is None:
            m.qemu_io_zero(active, "qcow2", 0, 1 * MiB)
        else:
            m.qemu_io_write(active, "qcow2", *write)
        time.sleep(1.1)  # distinct creation times for ls -t
    return [s for s, _ in steps]


def build_two(env):
    img = env.images
    base = os.path.join(img, "two-base.raw")
    m.qemu_img_create(base, 32 * MiB, fmt="raw")
    m.qemu_io_write(base, "raw", 0x31, 4 * MiB, MiB)
    vda = os.path.join(img, "two-vda.qcow2")
    m.qemu_img_create(vda, None, backing=base, backing_fmt="raw")
    sdb = os.path.join(img, "two-sdb.qcow2")
    m.qemu_img_create(sdb, 16 * MiB, extra=("-o", "cluster_size=4096"))
    m.qemu_io_write(sdb, "qcow2", 0x41, 0, 128 * 1024)
    env.define("two", [("vda", "virtio", vda, "qcow2"), ("sdb", "sata", sdb, "qcow2")],
               start=True)
    names = ["live1", "live2"]
    for i, name in enumerate(names):
        env.guest_write("two", "vda", 0x50 + i, (i + 1) * MiB, 256 * 1024)
        env.guest_write("two", "sdb", 0x60 + i, (i + 2) * MiB + 512, 4096)
        env.snapshot("two", name)
        time.sleep(1.1)
    env.guest_write("two", "vda", 0x5f, 30 * MiB, 64 * 1024)
    env.guest_write("two", "sdb", 0x6f, 15 * MiB, 64 * 1024)
    for t in ("vda", "sdb"):
        dev = env.qom_disk("two", t)
        env.hmp("two", 'qemu-io -d %s "flush"' % dev)
    return names


def snapshot_points(env, dom):
    """{snapshot: (creation_time, {target: point image})} from libvirt."""
    out = {}
    for name in env.virsh("snapshot-list", dom, "--name").split("\n"):
        if not name.strip():
            continue
        xml = ET.fromstring(env.virsh("snapshot-dumpxml", dom, name))
        ctime = int(xml.findtext("creationTime"))
        disks = {}
        for d in xml.findall("disks/disk"):
            if d.get("snapshot") != "external":
                continue
            overlay = d.find("source").get("file")
            disks[d.get("name")] = m.backing_of(overlay)
        out[name] = (ctime, disks)
    return out


def escape(name):
    e = name.replace("%", "%25").replace("/", "%2F")
    if e.startswith("."):
        e = "%2E" + e[1:]
    if e.startswith("@"):
        e = "%40" + e[1:]
    return e


def chain_depth(path):
    return len(m.json.loads(m.run("qemu-img", "info", "-U", "--backing-chain",
                                  "--output=json", path)))


def check_file(env, path, image, fmt, label):
    st = os.stat(path)
    info = m.image_info(image)
    check.ok(st.st_size == info["virtual-size"], "%s: size %d" % (label, st.st_size))
    check.ok(st.st_mode & 0o7777 == 0o444, "%s: mode 0444" % label)

    want = os.path.join(env.dir, "oracle.raw")
    got = os.path.join(env.dir, "copy.raw")
    for p in (want, got):
        if os.path.exists(p):
            os.unlink(p)
    m.oracle(image, want)
    m.copy_sparse(path, got)
    check.ok(m.files_equal(want, got), "%s: cp --sparse=always == qemu-img convert" % label)

    qmap = m.data_ranges_qemu(image)
    smap = m.data_ranges_seek(path)
    check.ok(m.widen(qmap, st.st_size) == smap,
             "%s: SEEK_DATA/SEEK_HOLE == qemu-img map in 1 MiB granules (%d extents, %d"
             " reported)" % (label, len(qmap), len(smap)))
    alloc_chain = sum(e - s for s, e in qmap)
    # Where the chain has a hole, so has the copy: every data range of the
    # copy (SEEK_DATA/SEEK_HOLE, rounded to 4 KiB blocks) lies in data.
    def in_data(r):
        s0, e0 = r
        return any(s0 >= (qs // 4096) * 4096 and e0 <= -(-qe // 4096) * 4096 for qs, qe in qmap)
    cmap = m.data_ranges_seek(got)
    check.ok(all(in_data(r) for r in cmap),
             "%s: the copy's data ranges lie in the chain's data (%d ranges)" % (label, len(cmap)))
    check.ok(m.allocated(got) <= alloc_chain + 64 * 1024,
             "%s: copy is sparse (%d allocated <= %d in the chain)"
             % (label, m.allocated(got), alloc_chain))

    x = lambda n: os.getxattr(path, "user.virtsnapfs." + n).decode()  # noqa: E731
    check.ok(os.path.realpath(x("point_image")) == os.path.realpath(image),
             "%s: xattr point_image" % label)
    check.ok(int(x("chain_depth")) == chain_depth(image), "%s: xattr chain_depth" % label)
    check.ok(x("format") == fmt, "%s: xattr format" % label)
    check.ok(int(x("allocated")) == alloc_chain,
             "%s: xattr allocated %s == qemu-img map %d" % (label, x("allocated"), alloc_chain))
    check.ok(st.st_blocks == (alloc_chain + 511) // 512, "%s: st_blocks" % label)

    # Unaligned reads anywhere, and reads crossing the end.
    rnd = random.Random(label)
    with open(path, "rb", buffering=0) as f, open(want, "rb") as w:
        for _ in range(40):
            off = rnd.randrange(0, st.st_size)
            n = rnd.choice([1, 511, 4097, 65536 + 3, 300000])
            f.seek(off)
            w.seek(off)
            a = f.read(n)
            b = w.read(n)
            if a != b:
                raise AssertionError("%s: read at %d len %d differs" % (label, off, n))
        f.seek(st.st_size - 10)
        w.seek(st.st_size - 10)
        tail = f.read(100)
        check.ok(len(tail) == 10 and tail == w.read(100), "%s: read across the end" % label)
        check.ok(f.read(100) == b"", "%s: read at the end is empty" % label)
        try:
            os.lseek(f.fileno(), st.st_size, os.SEEK_DATA)
            raise AssertionError("SEEK_DATA past the end succeeded")
        except OSError as e:
            check.ok(e.errno == errno.ENXIO, "%s: SEEK_DATA at the end is ENXIO" % label)


def check_domain(env, dom, names, points):
    ddir = os.path.join(env.mnt, dom)
    entries = os.listdir(ddir)
    want = [escape(n) for n in names] + ["@now"]
    check.ok(entries == want, "%s: readdir order %s" % (dom, entries))
    by_time = sorted(os.listdir(ddir), key=lambda e: os.stat(os.path.join(ddir, e)).st_mtime)
    check.ok(by_time[:-1] == want[:-1], "%s: mtime order is creation order" % dom)
    check.ok(os.getxattr(ddir, "user.virtsnapfs.job") == b"idle", "%s: xattr job" % dom)
    check.ok(os.stat(ddir).st_mode & 0o7777 == 0o755, "%s: dir mode 0755 (owner makes snapshots here)" % dom)

    for name in names:
        ctime, disks = points[name]
        pdir = os.path.join(ddir, escape(name))
        check.ok(int(os.stat(pdir).st_mtime) == ctime, "%s/%s: mtime = creation time" % (dom, name))
        files = sorted(os.listdir(pdir))
        check.ok(files == sorted([t + ".raw" for t in disks] + [t + ".delta" for t in disks]
                                 + ["snapshot.xml"]),
                 "%s/%s: files %s" % (dom, name, files))
        with open(os.path.join(pdir, "snapshot.xml")) as f:
            xml = ET.fromstring(f.read())
        check.ok(xml.findtext("name") == name, "%s/%s: snapshot.xml names it" % (dom, name))
        for target, image in sorted(disks.items()):
            fmt = m.image_info(image)["format"]
            check_file(env, os.path.join(pdir, target + ".raw"), image, fmt,
                       "%s/%s/%s" % (dom, name, target))


def check_now(env, dom, targets, oracle_images):
    for t in targets:
        path = os.path.join(env.mnt, dom, "@now", t + ".raw")
        label = "%s/@now/%s" % (dom, t)
        want = os.path.join(env.dir, "oracle.raw")
        got = os.path.join(env.dir, "copy.raw")
        for p in (want, got):
            if os.path.exists(p):
                os.unlink(p)
        m.oracle(oracle_images[t], want)
        m.copy_sparse(path, got)
        check.ok(m.files_equal(want, got), "%s: cp --sparse=always == qemu-img convert" % label)


def check_prefetch(env, path, image, on):
    """A sequential read of the first 2 MiB of path, from a cold cache:
    with prefetch on, the daemon stores the data granules after it into the
    page cache while the file is open, with the image's bytes, and no page
    of a hole; with -o prefetch=0 only what the kernel asked for is there."""
    label = "%s: prefetch %s" % (os.path.relpath(path, env.mnt), "on" if on else "off")
    size = os.stat(path).st_size
    page = os.sysconf("SC_PAGE_SIZE")
    data = m.widen(m.data_ranges_qemu(image), size)
    # Past the 2 MiB read, the kernel's own readahead after it, and the
    # lead (a quarter of the 32 MiB window) by which a READ that catches up
    # with the stores sends them ahead: stores may skip what is before.
    past = 12 * MiB
    far = [(max(s, past), e) for s, e in data if e > past]
    holes = [(max(a[1], past), b[0]) for a, b in zip(data, data[1:]) if b[0] > past]
    check.ok(far and holes, "%s: the point has data and holes past 12 MiB" % label)

    def cached(ranges):
        pages = m.cached_pages(path, f.fileno())
        return [pages[p] for s, e in ranges for p in range(s // page, e // page)]

    m.drop_cached(path)
    with open(path, "rb", buffering=0) as f:
        check.ok(not any(cached(far)), "%s: nothing cached after dropping the file's pages"
                 % label)
        for _ in range(4):
            f.read(512 * 1024)
        if on:
            # All of it but the tripwire page (prefetch.c), in a few seconds.
            m.wait_for(lambda: cached(far).count(False) <= 1, timeout=20,
                       what=label + ": the data granules after the read cached")
            want = os.path.join(env.dir, "oracle.raw")
            m.oracle(image, want)
            with open(want, "rb") as w:
                for s, e in far:
                    w.seek(s)
                    f.seek(s)
                    check.ok(f.read(e - s) == w.read(e - s),
                             "%s: stored bytes [%d, %d) == qemu-img convert" % (label, s, e))
        else:
            time.sleep(2)
            check.ok(not any(cached(far)), "%s: nothing stored past the reader" % label)
        check.ok(not any(cached(holes)), "%s: no page of a hole stored (%d holes)"
                 % (label, len(holes)))
    if on:
        # Closed while the stores run: release waits for them, and the
        # file still reads as the image.
        for i in range(10):
            m.drop_cached(path)
            with open(path, "rb", buffering=0) as f:
                for _ in range(3 + i % 3):
                    f.read(512 * 1024)
        got = os.path.join(env.dir, "copy.raw")
        m.copy_sparse(path, got)
        check.ok(m.files_equal(want, got),
                 "%s: after 10 closes during stores, cp == qemu-img convert" % label)


def check_now_stat_during_thaw(env, dom, cycles):
    """stat of @now while opens of it come and go: each close thaws the
    freeze (commits the overlay back, deletes it), and no stat meanwhile
    may fail, nor the daemon log a missing image.  Run with -o timeout=0,
    so that every stat reaches the daemon."""
    path = os.path.join(env.mnt, dom, "@now", "vda.raw")
    errors, stats = [], [0]
    done = threading.Event()

    def stat_loop():
        while not done.is_set():
            try:
                os.stat(path)
                stats[0] += 1
            except OSError as e:
                errors.append(e.strerror)
    t = threading.Thread(target=stat_loop)
    t.start()
    try:
        for _ in range(cycles):
            with open(path, "rb") as f:
                f.read(4096)
    finally:
        done.set()
        t.join()
    check.ok(stats[0] > cycles and not errors, "%s/@now: %d stats during %d freezes and thaws,"
             " no error %s" % (dom, stats[0], cycles, errors[:3]))


def check_not_writable(env):
    p = os.path.join(env.mnt, "one", "first", "vda.raw")
    d = os.path.join(env.mnt, "one")
    refused = (errno.EPERM, errno.EACCES, errno.EROFS, errno.EBADF)

    def refuses(what, fn):
        try:
            fn()
        except OSError as e:
            check.ok(e.errno in refused, "%s refused (%s)" % (what, errno.errorcode[e.errno]))
            return
        raise AssertionError(what + " succeeded")

    refuses("open O_WRONLY", lambda: os.open(p, os.O_WRONLY))
    refuses("open O_RDWR", lambda: os.open(p, os.O_RDWR))
    refuses("open O_TRUNC", lambda: os.open(p, os.O_RDONLY | os.O_TRUNC))
    refuses("truncate", lambda: os.truncate(p, 0))
    refuses("chmod", lambda: os.chmod(p, 0o666))
    refuses("chown", lambda: os.chown(p, 1, 1))
    refuses("utime", lambda: os.utime(p, (0, 0)))
    refuses("create", lambda: open(os.path.join(env.mnt, "one", "first", "new"), "w"))
    # mkdir, rmdir and rename of snapshots in a domain directory change
    # snapshots (test-change.py); everywhere else they are refused.
    now = os.path.join(d, "@now", "vda.raw")
    refuses("mkdir in a snapshot", lambda: os.mkdir(os.path.join(d, "first", "snap-new")))
    refuses("mkdir at the root", lambda: os.mkdir(os.path.join(env.mnt, "dom-new")))
    refuses("rmdir of a domain", lambda: os.rmdir(d))
    refuses("unlink in @now", lambda: os.unlink(now))
    refuses("rename of a file", lambda: os.rename(p, os.path.join(d, "first", "x.raw")))
    refuses("symlink", lambda: os.symlink("x", os.path.join(d, "link")))
    refuses("link", lambda: os.link(p, os.path.join(d, "hard")))
    refuses("setxattr", lambda: os.setxattr(p, "user.x", b"1"))
    # (access(W_OK) succeeds for root, as on any filesystem mounted rw with
    # default_permissions: the open itself is refused, checked above.)
    check.ok(os.access(p, os.R_OK), "access R_OK")
    # Lookups of what is not there.
    for bad in ("one/nope", "one/first/vdz.raw", "one/@now/snapshot.xml", "nodomain",
                "one/%2Ffirst", "one/.first"):
        check.ok(not os.path.exists(os.path.join(env.mnt, bad)), "%s does not exist" % bad)


def as_nobody(*cmd):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                          + list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test(env):
    names_one = build_one(env)
    names_two = build_two(env)
    now_two = {t: env.active_image("two", t) for t in ("vda", "sdb")}
    now_one = {"vda": env.active_image("one", "vda")}
    overlays_before = sorted(os.listdir(env.images))
    points_one = snapshot_points(env, "one")
    points_two = snapshot_points(env, "two")

    d = m.Daemon(env)
    check.ok(sorted(os.listdir(env.mnt)) == ["one", "two"], "root lists the domains")
    check_domain(env, "one", names_one, points_one)
    check_domain(env, "two", names_two, points_two)
    check_now(env, "one", ["vda"], now_one)
    check_now(env, "two", ["vda", "sdb"], now_two)
    check_not_writable(env)
    at = os.path.join(env.mnt, "one", escape("@at"), "vda.raw")
    check_prefetch(env, at, points_one["@at"][1]["vda"], on=True)
    check_prefetch(env, os.path.join(env.mnt, "one", "@now", "vda.raw"), now_one["vda"], on=True)

    p = os.path.join(env.mnt, "one", "first", "vda.raw")
    r = as_nobody("head", "-c", "1", p)
    check.ok(r.returncode != 0, "another user cannot read without allow_other: %s"
             % r.stderr.decode().strip())
    r = as_nobody("ls", env.mnt)
    check.ok(r.returncode != 0, "another user cannot list without allow_other")
    d.stop()
    time.sleep(1)
    check.ok(sorted(os.listdir(env.images)) == overlays_before,
             "no temporary overlay left after unmount")
    check.ok(env.active_image("two", "vda") == now_two["vda"],
             "two runs on its original active image after @now reads")

    d = m.Daemon(env, "timeout=0")
    check_now_stat_during_thaw(env, "one", 20)
    check_now_stat_during_thaw(env, "two", 3)
    d.stop()

    # mount(8) through mount.fuse3, in the background, with allow_other.
    # mount.fuse3 runs the helper with a fixed PATH, so an uninstalled build
    # is named with the "PROGRAM#SOURCE" form of -t fuse; -t fuse.virtsnapfs
    # is the same code path once virtsnapfs is installed.
    if shutil.which("virtsnapfs", path="/usr/sbin:/usr/bin:/sbin:/bin") == m.VIRTSNAPFS:
        source, fstype = env.uri, "fuse.virtsnapfs"
    else:
        source, fstype = m.VIRTSNAPFS + "#" + env.uri, "fuse"
    subprocess.run(["mount", "-t", fstype, source, env.mnt, "-o",
                    "allow_other,hole_granularity=0,prefetch=0,state_dir=%s,image_dir=%s"
                    % (env.state, env.images)],
                   env=env.env, check=True)
    check.ok(os.path.ismount(env.mnt), "mount -t %s SOURCE MNT works" % fstype)
    # -o hole_granularity=0: every hole exactly as qemu-img map has it.
    for name, (_, disks) in sorted(points_two.items()):
        for target, image in sorted(disks.items()):
            path = os.path.join(env.mnt, "two", escape(name), target + ".raw")
            qmap = m.data_ranges_qemu(image)
            check.ok(m.data_ranges_seek(path) == qmap,
                     "two/%s/%s: exact SEEK_DATA/SEEK_HOLE == qemu-img map (%d extents)"
                     % (name, target, len(qmap)))
    check_prefetch(env, at, points_one["@at"][1]["vda"], on=False)
    r = as_nobody("cmp", p, os.path.join(env.mnt, "one", "first", "vda.raw"))
    check.ok(r.returncode == 0, "another user reads with allow_other")
    r = as_nobody("sh", "-c", "echo x >> '%s'" % p)
    check.ok(r.returncode != 0, "another user cannot write with allow_other")
    fstype = [l.split()[2] for l in open("/proc/mounts") if l.split()[1] == env.mnt]
    check.ok(fstype == ["fuse.virtsnapfs"], "/proc/mounts type %s" % fstype)
    subprocess.run(["umount", env.mnt], check=True)
    m.wait_for(lambda: not any(l.split()[1] == env.mnt for l in open("/proc/mounts")),
               what="umount")
    # The daemon is in the background: wait for it to let go of the root.
    time.sleep(2)

    # SIGTERM with an @now file open, and a snapshot being prefetched:
    # exits cleanly, thaws the freeze.
    d = m.Daemon(env, expect=[r"cannot abort"])
    f = open(os.path.join(env.mnt, "two", "@now", "vda.raw"), "rb")
    f.read(4096)
    m.drop_cached(at)
    g = open(at, "rb", buffering=0)
    g.read(2 * MiB)
    check.ok(env.active_image is not None, "@now open during SIGTERM")
    d.stop(signal.SIGTERM)
    for h in (f, g):
        try:
            h.close()
        except OSError:
            pass
    check.ok(sorted(os.listdir(env.images)) == overlays_before,
             "SIGTERM with @now open: temporary overlay committed and removed")
    check.ok(env.active_image("two", "vda") == now_two["vda"],
             "SIGTERM with @now open: domain back on its active image")

    # Invalid options fail before mounting.
    r = subprocess.run([m.VIRTSNAPFS, env.uri, env.mnt, "-o", "revert=maybe"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    check.ok(r.returncode != 0 and not os.path.ismount(env.mnt),
             "bad option refused before mounting: %s" % r.stderr.decode().strip())
    r = subprocess.run([m.VIRTSNAPFS, "--help"], stdout=subprocess.PIPE)
    check.ok(r.returncode == 0 and b"state_dir=DIR" in r.stdout, "--help")
    print("%d checks passed" % check.n)


if __name__ == "__main__":
    m.main(test, "read")
