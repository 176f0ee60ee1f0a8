#!/usr/bin/env python3
"""test-live: changes behind the daemon's back, and @now of a running VM.

Needs a libvirt daemon that virsh and virtsnapfs share (mountlib.
PrivateLibvirtd explains the set-up).  While mounted:
  - snapshots made with `virsh snapshot-create-as --disk-only` show up
    within a few seconds and read as qemu-img says; a deleted one goes;
  - @now of a running domain while the guest writes (through the QEMU
    monitor): a copy equals the disk as it was at open(); after close the
    domain runs on its original active image again with every write kept
    and no temporary overlay left;
  - SIGKILL of the daemon while an @now file is open, restart: the
    temporary overlay is gone and no guest write is lost.
"""

import os
import signal
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
DOM = "vsfs-live"
check = m.Checker()


def flush(env):
    for t in ("vda", "sdb"):
        env.hmp(DOM, 'qemu-io -d %s "flush"' % env.qom_disk(DOM, t))


def snapshot_points(env, name):
    xml = ET.fromstring(env.virsh("snapshot-dumpxml", DOM, name))
    return {d.get("name"): m.backing_of(d.find("source").get("file"))
            for d in xml.findall("disks/disk") if d.get("snapshot") == "external"}


def compare(env, path, image, label):
    want = os.path.join(env.dir, "oracle.raw")
    got = os.path.join(env.dir, "copy.raw")
    for p in (want, got):
        if os.path.exists(p):
            os.unlink(p)
    m.oracle(image, want)
    m.copy_sparse(path, got)
    check.ok(m.files_equal(want, got), "%s: cp --sparse=always == qemu-img convert" % label)
    check.ok(m.data_ranges_seek(path) == m.widen(m.data_ranges_qemu(image),
                                                 os.path.getsize(path)),
             "%s: SEEK_DATA/SEEK_HOLE == qemu-img map in 1 MiB granules" % label)


def read_range(image, off, length):
    out = os.path.join(os.path.dirname(image), ".." , "range.raw")
    m.oracle(image, out)
    with open(out, "rb") as f:
        f.seek(off)
        data = f.read(length)
    os.unlink(out)
    return data


def image_files(env):
    return sorted(os.listdir(env.images))


def wait_thawed(env, active):
    m.wait_for(lambda: all(env.active_image(DOM, t) == active[t] for t in active), timeout=120,
               what="the domain back on its active images")


def test(env):
    base = os.path.join(env.images, "live-base.raw")
    m.qemu_img_create(base, 32 * MiB, fmt="raw")
    m.qemu_io_write(base, "raw", 0x11, 2 * MiB, MiB)
    vda = os.path.join(env.images, "live-vda.qcow2")
    m.qemu_img_create(vda, None, backing=base, backing_fmt="raw")
    sdb = os.path.join(env.images, "live-sdb.qcow2")
    m.qemu_img_create(sdb, 16 * MiB)
    env.define(DOM, [("vda", "virtio", vda, "qcow2"), ("sdb", "sata", sdb, "qcow2")], start=True)
    env.guest_write(DOM, "vda", 0x21, 0, 256 * 1024)
    env.guest_write(DOM, "sdb", 0x22, MiB, 64 * 1024)
    flush(env)
    active = {t: env.active_image(DOM, t) for t in ("vda", "sdb")}

    d = m.Daemon(env)
    ddir = os.path.join(env.mnt, DOM)
    check.ok(os.listdir(ddir) == ["@now"], "no snapshots yet")

    # -- snapshots behind the daemon's back --------------------------------
    # (The daemon notices within its poll interval, 1 s; the waits' bounds
    # are for a daemon that never does, and leave room for a loaded CI
    # machine running tests in parallel: the time taken is printed.)
    for name, entry in (("snap 1", "snap 1"), ("ünï 100%", "ünï 100%25")):
        t0 = time.time()
        env.snapshot(DOM, name)
        files = [os.path.join(ddir, entry, f) for f in ("vda.raw", "sdb.raw", "snapshot.xml")]
        m.wait_for(lambda: all(os.path.exists(f) for f in files), timeout=60,
                   what="%s and its files to show up" % name)
        check.ok(True, "snapshot %r shows up as %r with its files %.1f s after virsh returned"
                 % (name, entry, time.time() - t0))
        env.guest_write(DOM, "vda", 0x30 + len(name), 4 * MiB, 128 * 1024)
        env.guest_write(DOM, "sdb", 0x40 + len(name), 0, 4096)
        flush(env)
    active = {t: env.active_image(DOM, t) for t in ("vda", "sdb")}
    for name, entry in (("snap 1", "snap 1"), ("ünï 100%", "ünï 100%25")):
        for t, image in sorted(snapshot_points(env, name).items()):
            compare(env, os.path.join(ddir, entry, t + ".raw"), image, "%s/%s" % (name, t))
    check.ok(os.listdir(ddir) == ["snap 1", "ünï 100%25", "@now"], "readdir order")

    env.snapshot(DOM, "doomed")
    m.wait_for(lambda: os.path.exists(os.path.join(ddir, "doomed", "vda.raw")), timeout=60,
               what="doomed to show up")
    st = os.stat(os.path.join(ddir, "doomed", "vda.raw"))  # cached by the kernel
    env.virsh("snapshot-delete", DOM, "doomed", "--metadata")
    t0 = time.time()
    m.wait_for(lambda: not os.path.exists(os.path.join(ddir, "doomed")), timeout=60,
               what="doomed to go")
    check.ok(st.st_size > 0, "a deleted snapshot disappears %.1f s after virsh returned"
             % (time.time() - t0))
    check.ok("doomed" not in os.listdir(ddir), "and leaves the listing")
    active = {t: env.active_image(DOM, t) for t in ("vda", "sdb")}

    # -- @now while the guest writes ---------------------------------------
    flush(env)
    before = {t: os.path.join(env.dir, "now-%s.raw" % t) for t in active}
    for t in active:
        m.oracle(active[t], before[t])
    files_before = image_files(env)

    fds = {t: open(os.path.join(ddir, "@now", t + ".raw"), "rb") for t in active}
    first = {t: fds[t].read(MiB) for t in active}
    writes = [("vda", 0x77, 0, MiB), ("vda", 0x78, 2 * MiB + 512, 3 * MiB),
              ("vda", 0x79, 30 * MiB, 64 * 1024), ("sdb", 0x7a, 0, 2 * MiB),
              ("sdb", 0x7b, 15 * MiB, 4096)]
    for t, pat, off, n in writes:
        env.guest_write(DOM, t, pat, off, n)
    for t in active:
        rest = fds[t].read()
        with open(before[t], "rb") as f:
            check.ok(first[t] + rest == f.read(),
                     "@now/%s: read while the guest writes == the disk at open()" % t)
        # A second open shares the freeze and reads the same.
        got = os.path.join(env.dir, "copy-now.raw")
        if os.path.exists(got):
            os.unlink(got)
        m.copy_sparse(os.path.join(ddir, "@now", t + ".raw"), got)
        check.ok(m.files_equal(got, before[t]), "@now/%s: cp during the freeze == at open()" % t)
    for f in fds.values():
        f.close()
    wait_thawed(env, active)
    check.ok(True, "after close the domain runs on its original active images")
    m.wait_for(lambda: image_files(env) == files_before, timeout=30,
               what="temporary overlays to go")
    check.ok(True, "no temporary overlay left")
    flush(env)
    for t, pat, off, n in writes:
        check.ok(read_range(active[t], off, n) == bytes([pat]) * n,
                 "guest write 0x%x at %d on %s kept" % (pat, off, t))

    # -- SIGKILL with @now open ---------------------------------------------
    f = open(os.path.join(ddir, "@now", "vda.raw"), "rb")
    f.read(4096)
    env.guest_write(DOM, "vda", 0x88, 8 * MiB, MiB)
    d.stop("kill9")
    try:
        f.close()
    except OSError:
        pass
    check.ok(env.active_image(DOM, "vda") != active["vda"],
             "killed while frozen: the domain still runs on the temporary overlay")
    d = m.Daemon(env)  # the repair itself must not warn
    wait_thawed(env, active)
    check.ok(True, "restart repairs the freeze: back on the original active images")
    m.wait_for(lambda: image_files(env) == files_before, timeout=30,
               what="temporary overlays to go after the restart")
    check.ok(True, "restart: no temporary overlay left")
    flush(env)
    check.ok(read_range(active["vda"], 8 * MiB, MiB) == b"\x88" * MiB,
             "restart: the guest write made while frozen is kept")
    compare(env, os.path.join(ddir, "snap 1", "vda.raw"), snapshot_points(env, "snap 1")["vda"],
            "after restart snap 1/vda")
    d.stop()
    print("%d checks passed" % check.n)


if __name__ == "__main__":
    m.main_libvirtd(test, "live")
