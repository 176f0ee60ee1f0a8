#!/usr/bin/env python3
"""test-delta: <disk>.delta files and examples/backup.sh.

Against qemu:///embed with real QEMU (TCG), a shut-off domain "bk" with
two disks: vda (qcow2, 64 KiB clusters, a base with compressed clusters)
and sdb (qcow2 with 4 KiB clusters over a raw base).  Snapshots s1..s4
with varied writes between them (new data, the bytes already there, zero
writes over data and over zeros, discards, compressed writes, unaligned
writes, nothing at all).  For every snapshot and disk, with the parent
point from libvirt's snapshot XML and the oracle `qemu-img convert -O raw`:
  - the parent's image with the data extents of the .delta (found with
    SEEK_DATA/SEEK_HOLE, read through the mount) written over it equals
    the point; holes read as zeros, data as the point's bytes;
  - the extents are exactly the 4 KiB granules whose bytes differ (for the
    first point: the granules of its allocated data, by qemu-img map);
  - `cp --sparse=always` of the .delta keeps its holes;
  - st_blocks bounds the data from above before an open and equals it
    after one; the xattrs.
Then through the mount: an open .delta pins its point (rmdir is EBUSY);
rmdir s2 makes s3's parent s1, and s3's delta follows; a revert to s3 and
mkdir s5 give a delta against s3.  examples/backup.sh runs along: a full
copy at s1, deltas up to s3, then s4, a full copy again when the recorded
snapshot is no ancestor (s5) or a step was left half applied, and a
delta for s6; after each run the
image equals `qemu-img convert -O raw` of the point, byte for byte.
"""

import errno
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
G = 4096
DOM = "bk"
BACKUP_SH = os.path.join(m.SRCDIR, "..", "..", "examples", "backup.sh")
check = m.Checker()


def io(path, *cmds):
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    m.run(*args, path)


def build(env):
    img = env.images
    # vda: a base with plain and compressed data.
    src = os.path.join(env.dir, "vda-src.raw")
    m.qemu_img_create(src, 32 * MiB, fmt="raw")
    m.qemu_io_write(src, "raw", 0x11, 0, 2 * MiB)
    m.qemu_io_write(src, "raw", 0x12, 8 * MiB, MiB)
    vbase = os.path.join(img, "bk-vda-base.qcow2")
    m.run("qemu-img", "convert", "-c", "-O", "qcow2", src, vbase)
    vda = os.path.join(img, "bk-vda.qcow2")
    m.qemu_img_create(vda, None, backing=vbase, backing_fmt="qcow2")
    io(vda, "write -P 0x13 16M 64k")
    # sdb: 4 KiB clusters over a raw base.
    sbase = os.path.join(img, "bk-sdb-base.raw")
    m.qemu_img_create(sbase, 8 * MiB, fmt="raw")
    m.qemu_io_write(sbase, "raw", 0x21, 0, MiB)
    sdb = os.path.join(img, "bk-sdb.qcow2")
    m.qemu_img_create(sdb, None, backing=sbase, backing_fmt="raw",
                      extra=("-o", "cluster_size=4096"))
    env.define(DOM, [("vda", "virtio", vda, "qcow2"), ("sdb", "sata", sdb, "qcow2")])

    # The writes that go into each point: made on the active image after
    # the snapshot before it (and those for @now after the last one).
    writes = {
        "s2": {
            "vda": ["write -P 0x31 1M 64k",          # new data over data
                    "write -P 0x11 0 64k",           # the bytes it had
                    "write -P 0x32 20M 3000"],       # unaligned, over a hole
            "sdb": ["write -P 0x41 512k 4096",
                    "write -P 0x21 0 8k"],           # the bytes it had
        },
        "s3": {
            "vda": ["write -z 256k 256k",            # zeros over data
                    "discard 8M 512k",               # discard over data
                    "write -c -P 0x33 24M 64k",      # compressed
                    "write -z 28M 128k"],            # zeros over zeros
            "sdb": ["write -z 64k 64k",              # zeros over raw data
                    "write -P 0x42 3145828 5000"],   # unaligned
        },
        "s4": {
            "vda": ["write -P 0x34 31M 1M",          # up to the end
                    "write -P 0 12M 64k"],           # written zeros over zeros
            "sdb": [],                               # nothing: an empty delta
        },
        "@now": {
            "vda": ["write -P 0x35 4100k 8k"],
            "sdb": ["write -P 0x43 7M 1M"],
        },
    }
    names = ["s1", "s2", "s3", "s4"]
    for i, name in enumerate(names):
        env.snapshot(DOM, name)
        into = names[i + 1] if i + 1 < len(names) else "@now"
        for target, cmds in writes[into].items():
            if cmds:
                io(env.active_image(DOM, target), *cmds)
        time.sleep(1.1)  # distinct creation times


# ---------------------------------------------------------------------------
# What libvirt says, read from the mount's snapshot.xml (libvirt's XML).

def point_info(env, snap):
    """(parent name or None, {target: point image}) of snap."""
    with open(os.path.join(env.mnt, DOM, snap, "snapshot.xml")) as f:
        xml = ET.fromstring(f.read())
    parent = xml.findtext("parent/name")
    disks = {}
    for d in xml.findall("disks/disk"):
        if d.get("snapshot") == "external":
            disks[d.get("name")] = m.backing_of(d.find("source").get("file"))
    return parent, disks


def snapshots(env):
    return [e for e in os.listdir(os.path.join(env.mnt, DOM)) if e != "@now"]


def raw_bytes(env, image):
    out = os.path.join(env.dir, "oracle.raw")
    if os.path.exists(out):
        os.unlink(out)
    m.oracle(image, out)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def granules(ranges, size):
    """The set of granule indexes that ranges touch."""
    out = set()
    for s, e in ranges:
        out.update(range(s // G, (min(e, size) + G - 1) // G))
    return out


def as_ranges(gs, size):
    out = []
    for g in sorted(gs):
        s, e = g * G, min((g + 1) * G, size)
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


# ---------------------------------------------------------------------------

def check_delta(env, snap, target, parent, images, stat_first=True):
    label = "%s/%s.delta" % (snap, target)
    path = os.path.join(env.mnt, DOM, snap, target + ".delta")
    image = images[snap][1][target]
    mine = raw_bytes(env, image)
    size = len(mine)

    st0 = os.stat(path)
    check.ok(st0.st_size == size, "%s: size %d = the disk's" % (label, size))
    check.ok(st0.st_mode & 0o7777 == 0o444, "%s: mode 0444" % label)

    x = lambda n: os.getxattr(path, "user.virtsnapfs." + n).decode()  # noqa: E731
    check.ok(x("granularity") == str(G), "%s: xattr granularity %s" % (label, x("granularity")))
    check.ok(x("parent") == (parent or ""), "%s: xattr parent '%s'" % (label, x("parent")))
    check.ok(os.path.realpath(x("point_image")) == os.path.realpath(image),
             "%s: xattr point_image" % label)
    if parent:
        pimage = images[parent][1][target]
        check.ok(os.path.realpath(x("parent_image")) == os.path.realpath(pimage),
                 "%s: xattr parent_image" % label)
        theirs = raw_bytes(env, pimage)
    else:
        check.ok(x("parent_image") == "", "%s: xattr parent_image empty" % label)
        theirs = b""

    # The oracle's granules.
    if parent:
        base = theirs[:size].ljust(size, b"\0")
        want = {g for g in range(0, (size + G - 1) // G)
                if mine[g * G:(g + 1) * G] != base[g * G:(g + 1) * G]}
    else:
        base = bytes(size)
        want = granules(m.data_ranges_qemu(image), size)
    extents = m.data_ranges_seek(path)
    got = granules(extents, size)
    check.ok(all(s % G == 0 and (e % G == 0 or e == size) for s, e in extents),
             "%s: %d extents on granule boundaries" % (label, len(extents)))
    check.ok(got == want, "%s: extents are exactly the changed granules (%d of them%s)"
             % (label, len(want), "" if got == want else
                "; extra %s, missing %s" % (as_ranges(got - want, size)[:5],
                                            as_ranges(want - got, size)[:5])))
    data_bytes = sum(e - s for s, e in extents)
    if stat_first:
        check.ok(st0.st_blocks * 512 >= data_bytes,
                 "%s: st_blocks before an open bounds the data (%d >= %d)"
                 % (label, st0.st_blocks * 512, data_bytes))

    # Read the whole file: data extents are the point's bytes, holes zeros;
    # the parent with the extents written over it is the point.
    with open(path, "rb") as f:
        whole = f.read()
    check.ok(len(whole) == size, "%s: reads %d bytes" % (label, len(whole)))
    masked = bytearray(size)
    rebuilt = bytearray(base)
    for s, e in extents:
        masked[s:e] = mine[s:e]
        rebuilt[s:e] = whole[s:e]
    check.ok(whole == bytes(masked), "%s: data reads as the point, holes as zeros" % label)
    check.ok(bytes(rebuilt) == mine, "%s: parent + delta extents == qemu-img convert of %s"
             % (label, snap))

    st1 = os.stat(path)  # -o timeout=0: asks the daemon
    check.ok(st1.st_blocks == (data_bytes + 511) // 512,
             "%s: st_blocks after an open = the data (%d)" % (label, data_bytes))
    check.ok(int(x("delta_bytes")) == data_bytes, "%s: xattr delta_bytes" % label)

    # cp --sparse=always keeps the holes.
    copy = os.path.join(env.dir, "delta-copy")
    if os.path.exists(copy):
        os.unlink(copy)
    m.copy_sparse(path, copy)
    with open(copy, "rb") as f:
        check.ok(f.read() == bytes(masked), "%s: cp --sparse=always copies it" % label)
    alloc = m.allocated(copy)
    check.ok(alloc <= data_bytes + 64 * KiB, "%s: the copy is sparse (%d allocated, %d of data)"
             % (label, alloc, data_bytes))
    os.unlink(copy)
    return data_bytes


def check_all(env, stage, stat_first=False):
    images = {}
    for snap in snapshots(env):
        images[snap] = point_info(env, snap)
    total = {}
    for snap, (parent, disks) in images.items():
        if parent is not None and parent not in images:
            raise AssertionError("%s: parent %s not listed" % (snap, parent))
        for target in sorted(disks):
            parent_has = parent is not None and target in images[parent][1]
            total[(snap, target)] = check_delta(env, snap, target, parent if parent_has else None,
                                                images, stat_first)
    log_sizes = ", ".join("%s/%s %d" % (s, t, n) for (s, t), n in sorted(total.items()))
    m.log("%s: delta data bytes: %s" % (stage, log_sizes))
    return images, total


def backup(env, dest, snap=None, verify=False):
    args = ["--verify"] if verify else []
    args += [os.path.join(env.mnt, DOM), dest] + ([snap] if snap else [])
    out = m.run("bash", BACKUP_SH, *args)
    for line in out.splitlines():
        m.log(line)
    return out


def check_backup(env, dest, snap, images, label):
    with open(os.path.join(dest, "vda.at")) as f:
        at = f.read().split("\t")[0]
    check.ok(at == snap, "%s: vda.at records %s" % (label, at))
    for target, image in sorted(images[snap][1].items()):
        want = os.path.join(env.dir, "oracle.raw")
        if os.path.exists(want):
            os.unlink(want)
        m.oracle(image, want)
        got = os.path.join(dest, target + ".img")
        check.ok(m.files_equal(want, got), "%s: backup %s.img == qemu-img convert of %s"
                 % (label, target, snap))
        check.ok(m.allocated(got) < os.stat(got).st_size,
                 "%s: %s.img is sparse (%d allocated)" % (label, target, m.allocated(got)))
        os.unlink(want)


def expect_errno(what, want, fn):
    try:
        fn()
    except OSError as e:
        check.ok(e.errno == want, "%s: %s" % (what, errno.errorcode.get(e.errno, e.errno)))
        return
    raise AssertionError(what + " succeeded")


def test(env):
    build(env)
    d = m.Daemon(env, "timeout=0")
    ddir = os.path.join(env.mnt, DOM)
    check.ok(snapshots(env) == ["s1", "s2", "s3", "s4"], "bk lists s1..s4")
    check.ok(sorted(os.listdir(os.path.join(ddir, "s2"))) ==
             ["sdb.delta", "sdb.raw", "snapshot.xml", "vda.delta", "vda.raw"],
             "a snapshot lists its .delta files")
    check.ok(sorted(os.listdir(os.path.join(ddir, "@now"))) == ["sdb.raw", "vda.raw"],
             "@now has no .delta")
    check.ok(not os.path.exists(os.path.join(ddir, "@now", "vda.delta")),
             "@now/vda.delta does not exist")
    check.ok(not os.path.exists(os.path.join(ddir, "s1", "vdz.delta")),
             "s1/vdz.delta does not exist")
    try:
        os.open(os.path.join(ddir, "s2", "vda.delta"), os.O_RDWR)
        raise AssertionError("opened a .delta for writing")
    except OSError as e:
        check.ok(e.errno in (errno.EACCES, errno.EPERM), "a .delta is not writable")

    images, sizes = check_all(env, "s1..s4", stat_first=True)
    check.ok(images["s1"][0] is None and images["s2"][0] == "s1" and images["s4"][0] == "s3",
             "parents from libvirt: s1 none, s2 <- s1, s4 <- s3")
    check.ok(sizes[("s4", "sdb")] == 0, "s4/sdb.delta is empty (nothing written)")
    check.ok(all(sizes[(s, "vda")] > 0 for s in ("s1", "s2", "s3", "s4")),
             "every vda delta has data")

    # --- backup.sh: full at s1, deltas s2 and s3, then s4 ------------------
    dest = os.path.join(env.dir, "backup")
    out = backup(env, dest, "s1")
    check.ok("full copy of s1" in out, "backup at s1: a full copy")
    check_backup(env, dest, "s1", images, "backup at s1")
    out = backup(env, dest, "s3")
    check.ok("applied the delta of s2" in out and "applied the delta of s3" in out
             and "full copy" not in out, "backup at s3: the deltas of s2 and s3")
    check_backup(env, dest, "s3", images, "backup at s3")
    out = backup(env, dest, verify=True)
    check.ok("applied the delta of s4" in out and "full copy" not in out
             and "DIFFERS" not in out, "backup of the newest (s4): its delta, verified")
    check_backup(env, dest, "s4", images, "backup at s4")
    out = backup(env, dest)
    check.ok("already at s4" in out, "backup again: nothing to do")
    # A run cut short while applying a delta that is not the next step
    # any more: the half-updated image is copied whole.
    with open(os.path.join(dest, "vda.pending"), "w") as f:
        f.write("gone\t1\n")
    out = backup(env, dest)
    check.ok("vda: the delta of gone was left half applied" in out and "full copy of s4" in out
             and "sdb: already at s4" in out, "backup after an interrupted step: a full copy")
    check.ok(not os.path.exists(os.path.join(dest, "vda.pending")), "vda.pending is gone")
    check_backup(env, dest, "s4", images, "backup after an interrupted step")

    # --- pins ------------------------------------------------------------------
    with open(os.path.join(ddir, "s4", "vda.delta"), "rb") as f:
        f.read(4096)
        expect_errno("rmdir s4 while s4/vda.delta is open", errno.EBUSY,
                     lambda: os.rmdir(os.path.join(ddir, "s4")))
    check.ok(os.path.isdir(os.path.join(ddir, "s4")), "s4 is still there")

    # --- a merge: s3's parent becomes s1 -----------------------------------
    os.rmdir(os.path.join(ddir, "s2"))
    check.ok(snapshots(env) == ["s1", "s3", "s4"], "rmdir s2")
    images, _ = check_all(env, "after rmdir s2")
    check.ok(images["s3"][0] == "s1", "s3's parent is s1 now")

    # --- a revert to s3, and s5 on the new branch --------------------------
    os.rename(os.path.join(ddir, "s3"), os.path.join(ddir, "@now"))
    active = os.getxattr(os.path.join(ddir, "@now", "vda.raw"),
                         "user.virtsnapfs.point_image").decode()
    io(active, "write -P 0x36 2M 64k", "write -P 0x31 1M 64k")  # the second: s3's bytes
    time.sleep(1.1)
    os.mkdir(os.path.join(ddir, "s5"))
    names = snapshots(env)
    check.ok(names[:3] == ["s1", "s3", "s4"] and names[-1] == "s5" and len(names) == 5
             and names[3].startswith("pre-revert-"), "revert and mkdir s5: %s" % names)
    images, sizes = check_all(env, "after revert")
    check.ok(images["s5"][0] == "s3", "s5's parent is s3")
    check.ok(sizes[("s5", "vda")] == 64 * KiB, "s5/vda.delta is the one new cluster")
    out = backup(env, dest)
    check.ok("not an ancestor" in out and "full copy of s5" in out,
             "backup at s5: s4 is no ancestor, a full copy")
    check_backup(env, dest, "s5", images, "backup at s5")

    active = os.getxattr(os.path.join(ddir, "@now", "vda.raw"),
                         "user.virtsnapfs.point_image").decode()
    io(active, "write -P 0x37 5M 100k")
    time.sleep(1.1)
    os.mkdir(os.path.join(ddir, "s6"))
    images, _ = check_all(env, "after mkdir s6")
    out = backup(env, dest)
    check.ok("applied the delta of s6" in out and "full copy" not in out,
             "backup at s6: its delta")
    check_backup(env, dest, "s6", images, "backup at s6")
    d.stop()


if __name__ == "__main__":
    m.main(test, "delta")
    print("1..%d" % check.n)
