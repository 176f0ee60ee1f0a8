#!/usr/bin/env python3
"""test-change: mkdir, rmdir, rm -r and mv through the mount.

Against qemu:///embed with real QEMU (TCG):
  - "off": shut off, two virtio disks, snapshots s1..s4 with distinct data
    written (qemu-io, offline) before and between them;
  - "run": running, one disk, snapshots r1, r2 with guest writes through
    the monitor between them.
Through the mount: mkdir makes a snapshot (offline and live) that reads
as the present did; rmdir and a real `rm -r` delete one, and afterwards
every remaining point in time, and the present, read byte for byte as
before (sha256 of each .raw); a real `mv` renames one; `mv D/NAME D/@now`
and rename(D/NAME, D/@now) revert the shut-off domain, keeping the
present as pre-revert-*, or not with -o revert=discard; every row of the
errno table; another user cannot change anything.  After unmounting,
virsh shows the result.  The daemon must log no unexpected warning.
"""

import errno
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
check = m.Checker()


def build_off(env):
    disks = []
    for t in ("vda", "vdb"):
        path = os.path.join(env.images, "off-%s.qcow2" % t)
        m.qemu_img_create(path, 16 * MiB)
        disks.append((t, "virtio", path, "qcow2"))
    # Distinct data in every point in time, on both disks.
    m.qemu_io_write(disks[0][2], "qcow2", 0x10, 0, MiB)
    m.qemu_io_write(disks[1][2], "qcow2", 0x90, 0, MiB)
    env.define("off", disks)
    for i, name in enumerate(("s1", "s2", "s3", "s4")):
        env.snapshot("off", name)
        for j, t in enumerate(("vda", "vdb")):
            active = env.active_image("off", t)
            m.qemu_io_write(active, "qcow2", 0x11 + i + 0x80 * j, (i + 1) * MiB + j * 4096,
                            512 * 1024)
        time.sleep(1.1)  # distinct creation times


def build_run(env):
    path = os.path.join(env.images, "run-vda.qcow2")
    m.qemu_img_create(path, 16 * MiB)
    m.qemu_io_write(path, "qcow2", 0x40, 0, MiB)
    env.define("run", [("vda", "virtio", path, "qcow2")], start=True)
    for i, name in enumerate(("r1", "r2")):
        env.snapshot("run", name)
        env.guest_write("run", "vda", 0x41 + i, (i + 2) * MiB, 256 * 1024)
        time.sleep(1.1)
    env.hmp("run", 'qemu-io -d %s "flush"' % env.qom_disk("run", "vda"))


def points(env, dom):
    return [e for e in os.listdir(os.path.join(env.mnt, dom))]


def sums(env, dom):
    """{point: {file: sha256}} of every point in time and @now of dom."""
    out = {}
    for p in points(env, dom):
        pdir = os.path.join(env.mnt, dom, p)
        out[p] = {f: m.sha(os.path.join(pdir, f)) for f in sorted(os.listdir(pdir))
                  if f.endswith(".raw")}
    return out


def same_sums(env, dom, before, what, renamed=None):
    """Every point of dom still listed reads as it did before."""
    after = sums(env, dom)
    for p, files in after.items():
        was = (renamed or {}).get(p, p)
        if was not in before:
            continue
        check.ok(files == before[was], "%s: %s/%s reads as %s did before" % (what, dom, p, was))
    return after


def expect_errno(what, want, fn):
    try:
        fn()
    except OSError as e:
        got = errno.errorcode.get(e.errno, str(e.errno))
        wants = want if isinstance(want, tuple) else (want,)
        check.ok(e.errno in wants, "%s: %s (want %s)" % (
            what, got, "/".join(errno.errorcode[w] for w in wants)))
        return
    raise AssertionError(what + " succeeded")


def as_nobody(code):
    """Runs python code as uid 65534; returns its output (an errno name)."""
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return r.stdout.strip() + r.stderr.strip()


NOBODY = """
import errno, os, sys
try:
    %s
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def virsh_snapshots(env, dom):
    return sorted(x.strip() for x in env.virsh("snapshot-list", dom, "--name").splitlines()
                  if x.strip())


def test(env):
    build_off(env)
    build_run(env)
    off = os.path.join(env.mnt, "off")
    run = os.path.join(env.mnt, "run")

    d = m.Daemon(env, "allow_other")
    before_off = sums(env, "off")
    before_run = sums(env, "run")
    check.ok(sorted(before_off) == ["@now", "s1", "s2", "s3", "s4"], "off lists s1..s4, @now")
    check.ok(len({tuple(sorted(v.items())) for v in before_off.values()}) == 5,
             "every point of off reads differently")
    check.ok(os.getxattr(off, "user.virtsnapfs.job") == b"idle", "job xattr: idle")

    # --- mkdir: offline and live snapshots ---------------------------------
    os.mkdir(os.path.join(off, "new"))
    check.ok("new" in os.listdir(off), "mkdir off/new: listed")
    check.ok(os.path.isdir(os.path.join(off, "new")), "mkdir off/new: a directory")
    before_off = same_sums(env, "off", before_off, "after mkdir")
    check.ok(before_off["new"] == before_off["@now"], "off/new reads as the present")
    os.mkdir(os.path.join(run, "live-new"))
    before_run = same_sums(env, "run", before_run, "after live mkdir")
    check.ok(before_run["live-new"] == before_run["@now"], "run/live-new reads as the present")

    # --- the errno table ----------------------------------------------------
    expect_errno("mkdir of an existing name", errno.EEXIST,
                 lambda: os.mkdir(os.path.join(off, "s1")))
    expect_errno("mkdir @now", errno.EEXIST, lambda: os.mkdir(os.path.join(off, "@now")))
    expect_errno("rename onto an existing snapshot", errno.EEXIST,
                 lambda: os.rename(os.path.join(off, "s1"), os.path.join(off, "s2")))
    r = subprocess.run(["mv", os.path.join(off, "s1"), os.path.join(off, "s2")],
                       stderr=subprocess.PIPE, text=True)
    # mv moves s1 *into* the directory s2: rename(off/s1, off/s2/s1).
    check.ok(r.returncode != 0 and "not permitted" in r.stderr,
             "mv onto an existing snapshot fails: %s" % r.stderr.strip())
    expect_errno("mkdir with a control character", errno.EINVAL,
                 lambda: os.mkdir(os.path.join(off, "bad\x01name")))
    expect_errno("mkdir of an escape names_escape never writes", errno.EINVAL,
                 lambda: os.mkdir(os.path.join(off, "%41")))
    expect_errno("mkdir of a leading '.'", errno.EINVAL,
                 lambda: os.mkdir(os.path.join(off, ".hidden")))
    expect_errno("mkdir of a name libvirt cannot store", errno.EINVAL,
                 lambda: os.mkdir(os.path.join(off, "x" * 250)))
    expect_errno("rename across domains", errno.EXDEV,
                 lambda: os.rename(os.path.join(off, "s1"), os.path.join(run, "s1")))
    expect_errno("revert of a running domain", errno.EBUSY,
                 lambda: os.rename(os.path.join(run, "r1"), os.path.join(run, "@now")))
    expect_errno("rmdir @now", errno.EBUSY, lambda: os.rmdir(os.path.join(off, "@now")))
    with open(os.path.join(off, "s2", "vda.raw"), "rb") as f:
        f.read(4096)
        expect_errno("rmdir of a point a reader has open", errno.EBUSY,
                     lambda: os.rmdir(os.path.join(off, "s2")))
        check.ok("s2" in os.listdir(off), "s2 is still there")
    # Closed: the pin goes with the release (which the kernel sends after
    # close(2) has returned), and an rmdir right away deletes.
    s2_gone_sums = before_off.pop("s2")
    os.rmdir(os.path.join(off, "s2"))
    check.ok("s2" not in os.listdir(off), "rmdir off/s2 right after the reader closed it")
    check.ok(not os.path.exists(os.path.join(off, "s2")), "rmdir off/s2: lookup fails")
    before_off = same_sums(env, "off", before_off, "after rmdir s2")
    check.ok(s2_gone_sums not in before_off.values(), "no point reads as s2 did")
    raw = os.path.join(off, "s1", "vda.raw")
    denied = (errno.EPERM, errno.EACCES)
    expect_errno("open a .raw for writing", denied, lambda: os.open(raw, os.O_WRONLY))
    expect_errno("create a file in a snapshot", denied,
                 lambda: open(os.path.join(off, "s1", "new.raw"), "w"))
    expect_errno("create a file in @now", denied,
                 lambda: open(os.path.join(off, "@now", "x"), "w"))
    expect_errno("mkdir at the top level", denied, lambda: os.mkdir(os.path.join(env.mnt, "x")))
    expect_errno("mkdir in a snapshot", denied, lambda: os.mkdir(os.path.join(off, "s1", "x")))
    expect_errno("rmdir of a domain", denied, lambda: os.rmdir(off))
    expect_errno("rename a file", denied,
                 lambda: os.rename(raw, os.path.join(off, "s1", "x.raw")))
    expect_errno("unlink in @now", denied, lambda: os.unlink(os.path.join(off, "@now", "vda.raw")))
    for what, code in (("mkdir", "os.mkdir(%r)" % os.path.join(off, "nobody")),
                       ("rmdir", "os.rmdir(%r)" % os.path.join(off, "s1")),
                       ("rename", "os.rename(%r, %r)" % (os.path.join(off, "s1"),
                                                         os.path.join(off, "nobody"))),
                       ("revert", "os.rename(%r, %r)" % (os.path.join(off, "s1"),
                                                         os.path.join(off, "@now", "s1"))),
                       ("unlink", "os.unlink(%r)" % os.path.join(off, "s1", "vda.raw"))):
        got = as_nobody(NOBODY % code)
        check.ok(got in ("EACCES", "EPERM"), "another user cannot %s: %s" % (what, got))
    check.ok(as_nobody(NOBODY % ("open(%r, 'rb').read(1)" % raw)) == "OK",
             "another user reads with allow_other")
    before_off = same_sums(env, "off", before_off, "after the refused calls")
    check.ok(sorted(before_off) == ["@now", "new", "s1", "s3", "s4"],
             "the refused calls changed nothing")

    # --- delete: a real rm -r, and rmdir while running -------------------
    m.run("rm", "-r", os.path.join(off, "s3"))
    check.ok(not os.path.exists(os.path.join(off, "s3")), "rm -r off/s3: gone")
    before_off = same_sums(env, "off", before_off, "after rm -r s3")
    check.ok(sorted(before_off) == ["@now", "new", "s1", "s4"], "off: s1, s4, new, @now left")
    os.rmdir(os.path.join(run, "r1"))
    check.ok("r1" not in os.listdir(run), "rmdir run/r1 (live): gone")
    before_run = same_sums(env, "run", before_run, "after live rmdir r1")

    # --- rename ---------------------------------------------------------
    s1_sums = before_off["s1"]
    m.run("mv", os.path.join(off, "s1"), os.path.join(off, "renamed"))
    check.ok(not os.path.exists(os.path.join(off, "s1")), "mv off/s1 off/renamed: s1 gone")
    check.ok(os.path.isdir(os.path.join(off, "renamed")), "renamed is there at once")
    check.ok(sorted(os.listdir(os.path.join(off, "renamed"))) ==
             ["snapshot.xml", "vda.delta", "vda.raw", "vdb.delta", "vdb.raw"],
             "renamed lists its files")
    before_off = same_sums(env, "off", before_off, "after mv", renamed={"renamed": "s1"})
    check.ok(before_off["renamed"] == s1_sums, "renamed reads as s1 did")

    # --- revert: mv D/NAME D/@now, keeping the present ------------------
    present = before_off["@now"]
    m.run("mv", os.path.join(off, "s4"), os.path.join(off, "@now"))
    listing = os.listdir(off)
    pre = [e for e in listing if e.startswith("pre-revert-")]
    check.ok(len(pre) == 1, "revert keeps the present as %s" % pre)
    check.ok("s4" in listing, "s4 stays after the revert")
    check.ok(sorted(os.listdir(os.path.join(off, "@now"))) == ["vda.raw", "vdb.raw"],
             "@now lists the disks at once")
    after = sums(env, "off")
    check.ok(after["@now"] == before_off["s4"], "@now reads as s4")
    check.ok(after[pre[0]] == present, "%s reads as the present before the revert" % pre[0])
    for p in ("renamed", "new", "s4"):
        check.ok(after[p] == before_off[p], "after revert: %s unchanged" % p)
    d.stop()

    snaps = virsh_snapshots(env, "off")
    check.ok(snaps == sorted(["new", "renamed", "s4"] + pre), "virsh lists %s" % snaps)
    check.ok(virsh_snapshots(env, "run") == ["live-new", "r2"], "virsh: run has r2, live-new")

    # --- revert with -o revert=discard, through rename(D/NAME, D/@now) --
    d = m.Daemon(env, "revert=discard")
    os.rename(os.path.join(off, "renamed"), os.path.join(off, "@now"))
    after = sums(env, "off")
    check.ok(after["@now"] == s1_sums, "revert=discard: @now reads as renamed (s1)")
    check.ok(sorted(after) == sorted(["@now", "new", "renamed", "s4"] + pre),
             "revert=discard keeps no pre-revert snapshot")
    d.stop()
    print("%d checks passed" % check.n)


if __name__ == "__main__":
    m.main(test, "change")
