#!/usr/bin/env python3
"""test-policy: the image policy on the change path, through the mount.

An attacker who controls one image file (an uploaded disk, a tenant's
image) must not make the daemon, or qemu-img and libvirt on its behalf,
open for writing, create, rename or delete anything outside the image
directories.  A chain that fails the policy reads as EIO and is changed by
nothing: every operation on it fails with EIO and one log line that names
the file and the reason.

Each domain has the chain base <- o1 <- o2 (active) and the points s1
(overlay o1, point image base) and s2 (overlay o2, point image o1), disks
of 4 MiB.  Shapes (shut off unless said):
  pq-abs, pr-abs   o1's backing name is an absolute path outside, qcow2 /
                   raw: P(s1) is the outside file, and deleting s1 would
                   commit o1 into it
  pq-rel, pr-rel   the same as ../outside/NAME
  ln-base, ln-mid, ln-act
                   base, o1 or o2 is a symlink in the image directory to
                   a copy outside
  dev-plant        o1's backing name is a loop device libvirt never named
  run-plant        running: o1 replaced by a file whose header names an
                   outside file (QEMU keeps the old one open)
The attacks are made while the tree is mounted and was listed, as an
attacker would: the listing had found the present's chain sound, so the
open of @now reaches the freeze, which refuses it.  Operations on each:
mkdir, rmdir, rm -r, mv (rename), mv to @now (revert) and an open of
@now/vda.raw: EIO with one log line each (rm -r and the open fail at the
stat of a file whose chain the listing already found refused and logged,
once per image, when the attack lies in that chain).  Afterwards every
file in the image and outside directories is byte for byte as before,
every point in time reads as `qemu-img convert -O raw` said before, and
nothing is parked in the journal or frozen.

Also:
  ok       a healthy domain in the same mount reads, and takes a mkdir and
           an rmdir, before and after
  blk      a shut-off domain whose disk is a loop device: @now reads the
           device, without -o image_dir=/dev
  mp-hdr, mp-link
           a plan parked in the journal (qemu-io holds the lock of a layer
           it must write), then o1's header is changed to name an outside
           file, or o1 is replaced by a symlink to a copy outside: the next
           operation, and recovery at the next start, refuse the plan with
           EIO; once the chain is repaired the plan finishes and nothing
           is lost.
"""

import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
SIZE = 4 * MiB
check = m.Checker()
OURS = re.compile(r"virtsnapfs\[\d+\]: (Message|WARNING|CRITICAL|ERROR):")
OUTSIDE_REASON = "is not under an image directory"
DEVICE_REASON = "is not a device node the image policy names"


class Chain:
    """A domain with base <- o1 <- o2 and points s1, s2."""

    def __init__(self, env, name, running=False):
        self.name = name
        self.base = os.path.join(env.images, name + "-vda.qcow2")
        m.qemu_img_create(self.base, SIZE)
        m.qemu_io_write(self.base, "qcow2", 0x11, 0, MiB)
        env.define(name, [("vda", "virtio", self.base, "qcow2")], start=running)
        env.snapshot(name, "s1")
        self.o1 = env.active_image(name, "vda")
        if running:
            env.guest_write(name, "vda", 0x22, MiB, 256 * 1024)
        else:
            m.qemu_io_write(self.o1, "qcow2", 0x22, MiB, 256 * 1024)
        env.snapshot(name, "s2")
        self.o2 = env.active_image(name, "vda")
        if not running:
            m.qemu_io_write(self.o2, "qcow2", 0x33, 2 * MiB, 256 * 1024)

    def points(self):
        """Point -> the image qemu-img converts for it."""
        return {"s1": self.base, "s2": self.o1, "@now": self.o2}


def victim(env, name, fmt):
    """A file outside the image directories with bytes of its own."""
    path = os.path.join(env.outside, name)
    m.qemu_img_create(path, SIZE, fmt=fmt)
    m.qemu_io_write(path, fmt, 0x5a, 0, SIZE)
    return path


def rebase(path, backing, fmt):
    m.run("qemu-img", "rebase", "-u", "-b", backing, "-F", fmt, path)


def replace(path, new):
    """Puts new (a file or a symlink) at path in one rename, as an
    attacker with write access to the directory could."""
    os.rename(new, path)


def symlink_out(env, path):
    """Moves path's bytes to a copy outside and leaves a symlink to it."""
    copy = os.path.join(env.outside, os.path.basename(path))
    shutil.copyfile(path, copy)
    tmp = path + ".tmp-link"
    os.symlink(copy, tmp)
    replace(path, tmp)
    return copy


def loop_attach(path):
    return m.run("losetup", "-f", "--show", path).strip()


def oracle_sums(env, images):
    """key -> sha256 of `qemu-img convert -O raw` of images[key]."""
    out = os.path.join(env.dir, "oracle.raw")
    sums = {}
    for key, image in images.items():
        m.oracle(image, out)
        sums[key] = m.sha(out)
    os.unlink(out)
    return sums


def tree_sums(*dirs):
    """sha256 of every regular file under dirs (symlinks as their target
    name), by path."""
    sums = {}
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                p = os.path.join(root, f)
                sums[p] = ("-> " + os.readlink(p)) if os.path.islink(p) else m.sha(p)
    return sums


def log_lines(d):
    return [l for l in d.log_text().splitlines() if OURS.search(l)]


def journals(env):
    d = os.path.join(env.state, "journal")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def freezes(env):
    d = os.path.join(env.state, "freeze")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def thawed(env):
    m.wait_for(lambda: not freezes(env), timeout=120, what="the @now thaws")


def sh_op(*cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode == 0:
        return 0
    return errno.EIO if "Input/output error" in p.stderr else p.stderr.strip() or p.returncode


def open_now(path):
    try:
        with open(path, "rb") as f:
            f.read(4096)
        return 0
    except OSError as e:
        return e.errno


def operations(mnt, dom):
    d = os.path.join(mnt, dom)
    return [
        ("mkdir", lambda: sh_op("mkdir", os.path.join(d, "new"))),
        ("rmdir", lambda: sh_op("rmdir", os.path.join(d, "s1"))),
        ("rm -r", lambda: sh_op("rm", "-r", os.path.join(d, "s2"))),
        ("mv rename", lambda: sh_op("mv", os.path.join(d, "s1"), os.path.join(d, "s1x"))),
        ("mv revert", lambda: sh_op("mv", os.path.join(d, "s2"), os.path.join(d, "@now"))),
        ("@now open", lambda: open_now(os.path.join(d, "@now", "vda.raw"))),
    ]


def warm(mnt, dom):
    """Lists and stats every file of a domain, so that the reasons the
    listing logs once per image are logged before the operations."""
    d = os.path.join(mnt, dom)
    for point in sorted(os.listdir(d)):
        for f in sorted(os.listdir(os.path.join(d, point))):
            try:
                os.stat(os.path.join(d, point, f))
            except OSError:
                pass


def refused(env, d, dom, culprit, reason):
    """Every operation on dom fails with EIO and one log line naming the
    culprit file and the reason.  rm -r and the open of @now fail at the
    stat of a file whose chain the listing found refused (and logged, once
    per image: warm()) when the attack is in that chain: then they add
    nothing to the log."""
    for what, op in operations(env.mnt, dom):
        before = len(log_lines(d))
        got = op()
        new = log_lines(d)[before:]
        check.ok(got == errno.EIO, "%s %s: EIO (got %r)" % (what, dom, got))
        if what in ("rm -r", "@now open") and not new:
            new = [l for l in log_lines(d)[:before]
                   if "WARNING: disk vda: " in l and culprit in l and reason in l][-1:]
        check.ok(len(new) == 1 and culprit in new[0] and reason in new[0],
                 "%s %s: one log line naming %s: %s" % (what, dom, culprit, new))


def points_sums(env, chains):
    return oracle_sums(env, {(c.name, p): img for c in chains for p, img in c.points().items()})


def mount_sums(env, dom, points):
    return {p: m.sha(os.path.join(env.mnt, dom, p, "vda.raw")) for p in points}


def build(env):
    """The domains, healthy; plant() then attacks the shapes."""
    env.outside = os.path.join(env.dir, "outside")
    os.makedirs(env.outside)
    shapes = {}  # name -> Chain
    for name in ("pq-abs", "pr-abs", "pq-rel", "pr-rel", "ln-base", "ln-mid", "ln-act",
                 "dev-plant"):
        shapes[name] = Chain(env, name)

    loops = os.path.join(env.dir, "loops")
    os.makedirs(loops)
    env.loops = []
    for name, pattern in (("named", 0x61), ("unnamed", 0x62)):
        path = os.path.join(loops, name + ".raw")
        m.qemu_img_create(path, SIZE, fmt="raw")
        m.qemu_io_write(path, "raw", pattern, 0, SIZE // 2)
        env.loops.append(loop_attach(path))
    named = env.loops[0]
    shapes["run-plant"] = Chain(env, "run-plant", running=True)

    blk = os.path.join(env.dir, "blk.xml")
    with open(blk, "w") as f:
        f.write(m.DOMAIN_XML.format(name="blk", disks=(
            "    <disk type='block' device='disk'>\n"
            "      <driver name='qemu' type='raw'/>\n"
            "      <source dev='%s'/>\n"
            "      <target dev='vda' bus='virtio'/>\n"
            "    </disk>\n" % named)))
    env.virsh("define", blk)
    env.domains.append("blk")

    healthy = Chain(env, "ok")
    parked = {name: Chain(env, name) for name in ("mp-hdr", "mp-link")}
    return shapes, healthy, parked


def plant(env, shapes):
    """The attacks, made while the tree is mounted and was listed (the
    model still names the point images it found before).  Returns
    name -> (Chain, the file the log must name, the reason)."""
    planted = {}
    for name, fmt, relative in (("pq-abs", "qcow2", False), ("pr-abs", "raw", False),
                                ("pq-rel", "qcow2", True), ("pr-rel", "raw", True)):
        c = shapes[name]
        v = victim(env, name + "." + fmt, fmt)
        rebase(c.o1, os.path.join("..", "outside", os.path.basename(v)) if relative else v, fmt)
        planted[name] = (c, v, OUTSIDE_REASON)
    for name, layer in (("ln-base", "base"), ("ln-mid", "o1"), ("ln-act", "o2")):
        c = shapes[name]
        planted[name] = (c, symlink_out(env, getattr(c, layer)), OUTSIDE_REASON)
    c = shapes["dev-plant"]
    rebase(c.o1, env.loops[1], "raw")
    planted["dev-plant"] = (c, env.loops[1], DEVICE_REASON)
    # QEMU keeps the old o1 open; the file at its name now says otherwise.
    c = shapes["run-plant"]
    v = victim(env, "run-plant.qcow2", "qcow2")
    tmp = c.o1 + ".tmp"
    shutil.copyfile(c.o1, tmp)
    rebase(tmp, v, "qcow2")
    replace(c.o1, tmp)
    planted["run-plant"] = (c, v, OUTSIDE_REASON)
    return planted


def settled(d):
    """Waits until the model that leaves out the disks of ln-mid/s1 and
    ln-act/s2 (their overlays are symlinks out) is published: until then
    the backend holds new models back, as for a snapshot libvirt is still
    creating."""
    for point in ("ln-mid: disk vda left out: snapshot s1", "ln-act: disk vda left out: snapshot s2"):
        m.wait_for(lambda: "Message: domain " + point in d.log_text(), timeout=60,
                   what="the model to settle")


def check_healthy(env, healthy, before, when):
    check.ok(mount_sums(env, "ok", before) == before,
             "ok reads as qemu-img said, %s" % when)
    new = os.path.join(env.mnt, "ok", "new-" + when.split()[0])
    thawed(env)
    os.mkdir(new)
    check.ok(mount_sums(env, "ok", before) == before, "ok/%s made, %s" % (os.path.basename(new), when))
    os.rmdir(new)
    check.ok(not os.path.exists(new) and mount_sums(env, "ok", before) == before,
             "ok/%s deleted, the points read as before" % os.path.basename(new))
    thawed(env)


def test_refusals(env, d, shapes, healthy):
    for dom in sorted(shapes):
        warm(env.mnt, dom)
    shapes = plant(env, shapes)
    # The next model (a freeze of ok changes libvirt) finds the overlays of
    # ln-mid/s1 and ln-act/s2 refused: those disks are left out of those
    # points, and said so once the model settled.
    ok_before = oracle_sums(env, healthy.points())
    check.ok(mount_sums(env, "ok", ok_before) == ok_before, "ok reads as qemu-img said")
    settled(d)
    thawed(env)
    for dom in sorted(shapes):
        warm(env.mnt, dom)
    chains = [c for c, _, _ in shapes.values()]
    files_before = tree_sums(env.images, env.outside)
    devices_before = {dev: m.sha(dev) for dev in env.loops}
    points_before = points_sums(env, chains)
    listing = {dom: sorted(os.listdir(os.path.join(env.mnt, dom))) for dom in shapes}
    check_healthy(env, healthy, ok_before, "before the attacks")

    for dom in sorted(shapes):
        _, culprit, reason = shapes[dom]
        refused(env, d, dom, culprit, reason)
    frozen = d.log_text().count("cannot freeze: ")
    check.ok(frozen >= 6, "%d opens of @now were refused by the freeze itself (the listing had "
             "found the present's chain sound before the attack)" % frozen)

    files_after = tree_sums(env.images, env.outside)
    changed = sorted(p for p in set(files_before) | set(files_after)
                     if files_before.get(p) != files_after.get(p) and "/ok-vda" not in p)
    check.ok(not changed, "no file in the image or outside directories changed, appeared or "
             "went (but the healthy domain's): %s" % changed)
    check.ok({dev: m.sha(dev) for dev in env.loops} == devices_before,
             "the loop devices are unchanged")
    check.ok(points_sums(env, chains) == points_before,
             "every point in time of every shape reads as qemu-img said before")
    check.ok({dom: sorted(os.listdir(os.path.join(env.mnt, dom))) for dom in shapes} == listing,
             "every shape lists the same points")
    check.ok(journals(env) == [] and freezes(env) == [], "nothing parked, nothing frozen")
    check_healthy(env, healthy, ok_before, "after the attacks")


def test_block_device(env):
    named = env.loops[0]
    want = m.sha(named)
    got = m.sha(os.path.join(env.mnt, "blk", "@now", "vda.raw"))
    check.ok(got == want, "blk: @now reads the loop device %s" % named)
    thawed(env)
    check.ok(m.sha(named) == want, "blk: the device is unchanged after the thaw")


def hold_lock(image):
    """qemu-io with image open read-write (its backing files read-only,
    shared with readers only) until its stdin closes.  A qemu-io that
    exits before it holds the lock is logged with its reason and started
    again (three tries)."""
    for _ in range(3):
        with tempfile.TemporaryFile() as err:
            p = subprocess.Popen(["qemu-io", "-f", "qcow2", image], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=err)

            def locked():
                if p.poll() is not None:
                    return True
                r = subprocess.run(["qemu-img", "info", image], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
                return "lock" in r.stderr

            m.wait_for(locked, timeout=60, what="qemu-io to lock " + image)
            if p.poll() is None:
                return p
            err.seek(0)
            m.log("qemu-io on %s exited (%d) before it held the lock: %s"
                  % (image, p.returncode, err.read().decode(errors="replace").strip()))
    raise AssertionError("qemu-io could not hold the lock of " + image)


def test_parked(env, d, parked):
    """Headers changed while a plan waits in the journal."""
    mnt = env.mnt
    before = {name: oracle_sums(env, {p: img for p, img in c.points().items() if p != "s2"})
              for name, c in parked.items()}
    holders = [hold_lock(c.o2) for c in parked.values()]
    try:
        for name in parked:
            got = sh_op("rmdir", os.path.join(mnt, name, "s2"))
            check.ok(got == errno.EIO, "%s: rmdir s2 while its layers are locked: EIO" % name)
        check.ok(len(journals(env)) == 2, "both plans are parked: %s" % journals(env))
    finally:
        for h in holders:
            h.stdin.close()
            h.wait()

    # The changes an attacker makes meanwhile.
    hdr, link = parked["mp-hdr"], parked["mp-link"]
    outside_hdr = victim(env, "mp-hdr.qcow2", "qcow2")
    rebase(hdr.o1, outside_hdr, "qcow2")
    outside_link = symlink_out(env, link.o1)
    culprits = {"mp-hdr": outside_hdr, "mp-link": outside_link}
    outside_before = tree_sums(env.outside)

    for name in parked:
        before_log = len(log_lines(d))
        got = sh_op("mkdir", os.path.join(mnt, name, "x"))
        new = log_lines(d)[before_log:]
        check.ok(got == errno.EIO, "%s: the next operation finishes the plan first: EIO" % name)
        check.ok(any(culprits[name] in l and OUTSIDE_REASON in l for l in new),
                 "%s: the log names %s and why: %s" % (name, culprits[name], new))
    check.ok(tree_sums(env.outside) == outside_before, "nothing outside changed")
    check.ok(len(journals(env)) == 2, "both plans are still parked")

    # A restart: recovery checks each step the same way.
    d.stop()
    d = m.Daemon(env, expect=EXPECT)
    m.wait_for(lambda: d.log_text().count("could not be finished") >= 2, timeout=120,
               what="recovery")
    settled(d)
    for name in parked:
        check.ok(re.search(r"domain %s: the plan in .* could not be finished .*%s.*%s"
                           % (name, re.escape(culprits[name]), OUTSIDE_REASON), d.log_text()),
                 "%s: recovery refuses the plan and says why" % name)
    check.ok(tree_sums(env.outside) == outside_before, "nothing outside changed at recovery")
    check.ok(len(journals(env)) == 2, "both plans are still parked after recovery")

    # Repaired chains: the plans finish and no point in time is lost.
    rebase(hdr.o1, hdr.base, "qcow2")
    tmp = link.o1 + ".tmp-copy"
    shutil.copyfile(outside_link, tmp)
    replace(link.o1, tmp)
    for name in parked:
        os.mkdir(os.path.join(mnt, name, "after"))
        listed = sorted(os.listdir(os.path.join(mnt, name)))
        check.ok(listed == ["@now", "after", "s1"], "%s: s2 went, after came: %s" % (name, listed))
        got = mount_sums(env, name, ["s1", "@now", "after"])
        want = dict(before[name], after=before[name]["@now"])
        check.ok(got == want, "%s: every point reads as before" % name)
    check.ok(journals(env) == [], "no plan left")
    check.ok(tree_sums(env.outside) == outside_before, "nothing outside changed")
    return d


# The daemon's warnings this test causes: listings and opens of the
# refused chains, and the parked and refused plans.
EXPECT = [r"disk vda: ", r"open [-a-z]+/(s[12]|@now)/vda\.raw: ", r"[-a-z]+/s[12]/vda\.delta: ",
          r"failed; its journal .* stays", r"could not be finished"]


def test(env):
    env.loops = []
    try:
        shapes, healthy, parked = build(env)
        d = m.Daemon(env, expect=EXPECT)
        try:
            test_refusals(env, d, shapes, healthy)
            test_block_device(env)
            d = test_parked(env, d, parked)
        finally:
            d.stop()
    finally:
        for dev in env.loops:
            subprocess.run(["losetup", "-d", dev])


if __name__ == "__main__":
    m.main(test, "policy")
