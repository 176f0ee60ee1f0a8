#!/usr/bin/env python3
"""test-hosts: one mount of two libvirt hosts at once (-o uri= twice).

Host "emb" is an embed root (qemu:///embed), host "lv" a private libvirtd
reached through its own socket with the remote driver
(qemu+unix:///system?socket=...), see mountlib.PrivateLibvirtd.  While
mounted:
  - the root lists the two host directories, each its own domains;
  - every point in time of each host reads as `qemu-img convert -O raw`;
  - mkdir/rmdir in one host while a reader keeps reading the other;
    renaming across hosts is EXDEV; mkdir/rmdir at the top is EPERM;
  - a disk of "lv" whose image does not exist on this machine is listed,
    open() fails with EREMOTE, user.virtsnapfs.unavailable says why, and
    the daemon logs it once;
  - the private libvirtd stopped: "emb" keeps working, "lv" keeps its last
    known listing (its snapshots still read), mkdir there is EIO, the log
    gets one line per outage, not one per retry;
    restarted: "lv" works again;
  - mounted while the private libvirtd is down: mounted anyway, "lv" is
    empty, and fills once its libvirtd answers.
"""

import errno
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
EMB_DOM = "vsfs-hosts-e"
LV_DOM = "vsfs-hosts-l"
GONE_DOM = "vsfs-hosts-gone"
check = m.Checker()


def points_of(env, dom, snaps):
    """{point name: image whose chain reads as it}, @now included."""
    out = {"@now": env.active_image(dom, "vda")}
    for s in snaps:
        xml = ET.fromstring(env.virsh("snapshot-dumpxml", dom, s))
        for d in xml.findall("disks/disk"):
            if d.get("name") == "vda" and d.get("snapshot") == "external":
                out[s] = m.backing_of(d.find("source").get("file"))
    return out


def make_oracles(env, tag, points):
    """Raw copies of each point, made now (the embed root cannot be asked
    while it is mounted)."""
    oracles = {}
    for name, image in points.items():
        path = os.path.join(env.dir, "oracle-%s-%s.raw" % (tag, name.replace(" ", "_")))
        m.oracle(image, path)
        oracles[name] = path
    return oracles


def compare_all(env, ddir, oracles, label):
    got = os.path.join(env.dir, "copy.raw")
    for name, want in sorted(oracles.items()):
        if os.path.exists(got):
            os.unlink(got)
        m.copy_sparse(os.path.join(ddir, name, "vda.raw"), got)
        check.ok(m.files_equal(want, got), "%s %s/vda.raw == qemu-img convert" % (label, name))


def make_domain(env, dom, tag):
    """A shut-off domain with one qcow2 disk over a raw base, two
    snapshots, and data written between them."""
    base = os.path.join(env.images, "%s-base.raw" % tag)
    m.qemu_img_create(base, 16 * MiB, fmt="raw")
    m.qemu_io_write(base, "raw", 0x11, 0, MiB)
    vda = os.path.join(env.images, "%s-vda.qcow2" % tag)
    m.qemu_img_create(vda, None, backing=base, backing_fmt="raw")
    m.qemu_io_write(vda, "qcow2", 0x22, 2 * MiB, MiB)
    env.define(dom, [("vda", "virtio", vda, "qcow2")])
    env.snapshot(dom, "s1")
    m.qemu_io_write(env.active_image(dom, "vda"), "qcow2", 0x33, 3 * MiB, MiB)
    env.snapshot(dom, "s 2")
    m.qemu_io_write(env.active_image(dom, "vda"), "qcow2", 0x44, 5 * MiB, 512 * 1024)
    return ["s1", "s 2"]


class Reader(threading.Thread):
    """Reads one file again and again, comparing with its oracle, until
    stopped: the other host's changes must not hold it up."""

    def __init__(self, path, oracle):
        super().__init__(daemon=True)
        self.path, self.want = path, open(oracle, "rb").read()
        self.stop_flag = threading.Event()
        self.rounds, self.errors = 0, []

    def run(self):
        while not self.stop_flag.is_set():
            try:
                with open(self.path, "rb") as f:
                    if f.read() != self.want:
                        self.errors.append("content differs")
                self.rounds += 1
            except OSError as e:
                self.errors.append(str(e))

    def finish(self):
        # At least one whole read after the change finished, then stop.
        start = self.rounds
        m.wait_for(lambda: self.rounds >= start + 2 or self.errors, timeout=120,
                   what="the reader to go on")
        self.stop_flag.set()
        self.join()


def change_while_reading(env, label, ddir, sname, reader_path, reader_oracle, now_oracle):
    reader = Reader(reader_path, reader_oracle)
    reader.start()
    m.wait_for(lambda: reader.rounds >= 1 or reader.errors, timeout=120, what="a first read")
    os.mkdir(os.path.join(ddir, sname))
    got = os.path.join(env.dir, "copy.raw")
    if os.path.exists(got):
        os.unlink(got)
    m.copy_sparse(os.path.join(ddir, sname, "vda.raw"), got)
    check.ok(m.files_equal(now_oracle, got), "%s: mkdir %s reads as @now did" % (label, sname))
    os.rmdir(os.path.join(ddir, sname))
    check.ok(sname not in os.listdir(ddir), "%s: rmdir %s" % (label, sname))
    reader.finish()
    check.ok(not reader.errors and reader.rounds >= 2,
             "%s: the other host read %d times meanwhile, all equal to qemu-img (%s)"
             % (label, reader.rounds, reader.errors[:1]))


def expect_errno(fn, err, what):
    try:
        fn()
    except OSError as e:
        check.ok(e.errno == err, "%s: %s (got %s)" % (what, errno.errorcode[err],
                                                        errno.errorcode.get(e.errno)))
        return
    raise AssertionError("%s: succeeded, expected %s" % (what, errno.errorcode[err]))


def test(env, emb, lv):
    lv_uri = env.uri.replace("qemu:///", "qemu+unix:///", 1)
    emb_uri = emb.uri

    emb_snaps = make_domain(emb, EMB_DOM, "emb")
    emb_points = points_of(emb, EMB_DOM, emb_snaps)
    emb_oracles = make_oracles(env, "emb", emb_points)
    lv_snaps = make_domain(env, LV_DOM, "lv")
    lv_points = points_of(env, LV_DOM, lv_snaps)
    lv_oracles = make_oracles(env, "lv", lv_points)
    # A disk whose image this machine cannot see: defined, then removed.
    missing = os.path.join(env.images, "gone-vda.qcow2")
    m.qemu_img_create(missing, 8 * MiB)
    env.define(GONE_DOM, [("vda", "virtio", missing, "qcow2")])
    os.unlink(missing)

    d = m.Daemon(env, "uri=emb=" + emb_uri, "uri=lv=" + lv_uri, "image_dir=" + emb.images,
                 uri="virtsnapfs")
    mnt = env.mnt
    check.ok(sorted(os.listdir(mnt)) == ["emb", "lv"], "the root lists one directory per host")
    check.ok(os.listdir(os.path.join(mnt, "emb")) == [EMB_DOM], "emb lists its domain")
    lv_doms = os.listdir(os.path.join(mnt, "lv"))
    check.ok(LV_DOM in lv_doms and GONE_DOM in lv_doms and EMB_DOM not in lv_doms,
             "lv lists its domains: %s" % lv_doms)
    check.ok(os.stat(os.path.join(mnt, "emb")).st_ino != os.stat(os.path.join(mnt, "lv")).st_ino,
             "host directories have their own inodes")

    emb_dir = os.path.join(mnt, "emb", EMB_DOM)
    lv_dir = os.path.join(mnt, "lv", LV_DOM)
    compare_all(env, emb_dir, emb_oracles, "emb")
    compare_all(env, lv_dir, lv_oracles, "lv")

    # Changes in one host while the other reads.
    change_while_reading(env, "emb", emb_dir, "new-e", os.path.join(lv_dir, "s1", "vda.raw"),
                         lv_oracles["s1"], emb_oracles["@now"])
    change_while_reading(env, "lv", lv_dir, "new-l", os.path.join(emb_dir, "s1", "vda.raw"),
                         emb_oracles["s1"], lv_oracles["@now"])
    check.ok("new-l" not in env.virsh("snapshot-list", LV_DOM, "--name").split(),
             "lv: libvirt no longer lists new-l")
    expect_errno(lambda: os.rename(os.path.join(emb_dir, "s1"), os.path.join(lv_dir, "moved")),
                 errno.EXDEV, "rename across hosts")
    expect_errno(lambda: os.mkdir(os.path.join(mnt, "emb", "x")), errno.EPERM, "mkdir in a host")
    expect_errno(lambda: os.mkdir(os.path.join(mnt, "x")), errno.EPERM, "mkdir in the root")
    expect_errno(lambda: os.rmdir(os.path.join(mnt, "lv")), errno.EPERM, "rmdir of a host")
    compare_all(env, emb_dir, emb_oracles, "emb after the changes")

    # The disk that is not visible here.
    gone = os.path.join(mnt, "lv", GONE_DOM, "@now", "vda.raw")
    for _ in range(5):
        st = os.stat(gone)
        expect_errno(lambda: open(gone, "rb"), errno.EREMOTE, "open of a disk not visible here")
    # libvirt cannot tell its size either (the file is gone on its side too).
    check.ok(st.st_size == 0, "its size is what libvirt knows: 0 here")
    reason = os.getxattr(gone, "user.virtsnapfs.unavailable").decode()
    check.ok("not visible" in reason and missing in reason, "xattr gives the reason: " + reason)
    check.ok("user.virtsnapfs.unavailable" in os.listxattr(gone), "listxattr names it")
    expect_errno(lambda: os.getxattr(os.path.join(emb_dir, "s1", "vda.raw"),
                                     "user.virtsnapfs.unavailable"),
                 errno.ENODATA, "a visible disk has no unavailable xattr")
    time.sleep(3)  # a few polls of the backend: still no new line
    os.stat(gone)
    lines = [l for l in d.log_text().splitlines() if "not visible" in l]
    check.ok(len(lines) == 1, "logged once: %s" % lines)

    # The private libvirtd goes away.
    before = len(d.log_text().splitlines())
    lv.kill()
    m.wait_for(lambda: "retrying every" in d.log_text(), timeout=60,
               what="the daemon to notice the outage")
    compare_all(env, emb_dir, emb_oracles, "emb with lv down")
    change_while_reading(env, "emb (lv down)", emb_dir, "down-e",
                         os.path.join(emb_dir, "s 2", "vda.raw"), emb_oracles["s 2"],
                         emb_oracles["@now"])
    check.ok(LV_DOM in os.listdir(os.path.join(mnt, "lv")),
             "lv keeps its last known listing while down")
    # Its snapshots read from the images, which need no libvirt (@now
    # would: its freeze fails while down).
    compare_all(env, lv_dir, {k: v for k, v in lv_oracles.items() if k != "@now"},
                "lv while down")
    expect_errno(lambda: os.mkdir(os.path.join(lv_dir, "while-down")), errno.EIO,
                 "mkdir in lv while down")
    # Reconnects are tried at 1, 2, 4, 8 s...: let several fail.
    time.sleep(16)
    new = d.log_text().splitlines()[before:]
    # (The refused mkdir logs its own line: asked for, not a storm.)
    about_lv = [l for l in new if "libvirt-sock" in l and "mkdir" not in l]
    m.log("log lines during the outage:\n" + "\n".join(new))
    check.ok(len(about_lv) <= 3 and len(new) <= 30,
             "no storm: %d lines in all, %d about lv" % (len(new), len(about_lv)))

    lv.start()
    m.wait_for(lambda: "reconnected to " + lv_uri in d.log_text(), timeout=90,
               what="the daemon to reconnect to lv")
    check.ok(True, "lv reconnected")
    change_while_reading(env, "lv (back)", lv_dir, "back-l",
                         os.path.join(emb_dir, "s1", "vda.raw"), emb_oracles["s1"],
                         lv_oracles["@now"])
    compare_all(env, lv_dir, lv_oracles, "lv back")
    d.stop()
    state = sorted(os.listdir(env.state))
    check.ok(state == ["emb", "lv"], "per-host state directories: %s" % state)

    # Mounting while lv does not answer: mounted anyway, lv empty until
    # its libvirtd is back.
    lv.kill()
    d = m.Daemon(env, "uri=emb=" + emb_uri, "uri=lv=" + lv_uri, "image_dir=" + emb.images,
                 uri="virtsnapfs")
    check.ok(sorted(os.listdir(mnt)) == ["emb", "lv"], "mounted with lv down")
    check.ok(os.listdir(os.path.join(mnt, "lv")) == [], "lv is empty while it never answered")
    compare_all(env, emb_dir, emb_oracles, "emb, mounted with lv down")
    lv.start()
    m.wait_for(lambda: LV_DOM in os.listdir(os.path.join(mnt, "lv")), timeout=90,
               what="lv to fill once its libvirtd answers")
    check.ok(True, "lv lists its domains once it answers")
    compare_all(env, lv_dir, lv_oracles, "lv, late")
    change_while_reading(env, "lv (late)", lv_dir, "late-l",
                         os.path.join(emb_dir, "s1", "vda.raw"), emb_oracles["s1"],
                         lv_oracles["@now"])
    d.stop()
    check.ok(d.log_text().count("starting without it") == 1,
             "the failed start is logged once")
    print("%d checks passed" % check.n)


def main():
    m.need_tools()
    env = m.Env("hosts")
    emb = m.Env("hosts-embed")
    try:
        test(env, emb, m.PrivateLibvirtd(env))
    except BaseException:
        env.keep = emb.keep = True
        subprocess.run(["fusermount3", "-u", "-z", env.mnt], stderr=subprocess.DEVNULL)
        raise
    finally:
        env.cleanup()
        emb.cleanup()


if __name__ == "__main__":
    main()
