#!/usr/bin/env python3
"""test-faults: faults while a plan runs, through the mount: what the
journal, the executor and the errno table promise when things go wrong.

Against qemu:///embed with real QEMU (TCG), -o bandwidth=1 (MiB/s) so that
merging tens of MiB takes many seconds and the plan can be observed and
hit while it runs.  Scenarios (each in a scratch env of its own; meson
runs each as a test of its own, mount-faults-NAME, by naming it on the
command line; without a name all run):

  reads    a delete on a RUNNING domain: while user.virtsnapfs.job shows
           the plan (its progress text changes), other points in time of
           the same domain and files of another domain read as the
           qemu-img convert oracle taken before, and all those reads
           finish while the plan is still running; a mkdir on the same
           domain waits behind the plan, one on another domain does not.
  errnos   EOPNOTSUPP (a snapshot with an internal disk snapshot) and EIO
           (a layer that cannot be read) as rmdir prints them.
  qemukill SIGKILL of the domain's QEMU in the middle of a commit and of a
           pull block job: rmdir says EIO, and the journal rolls forward
           at the next start (the domain is then shut off).
  races    two rmdir of one snapshot at once; mkdir racing rmdir of one
           name; rm -r of a point a reader has open.
  daemonkill  the daemon killed with SIGKILL at random moments during
           deletes (offline and running), restarted on the same state
           dir: each delete happened fully or not at all.
  locked   qemu-io holds the write locks of the layers a shut-off plan
           must write: rmdir says EIO, the plan is parked (the snapshot
           stays hidden) and the next operation finishes it.
  libvirtd a private libvirtd killed (SIGKILL) and restarted while a commit
           job runs: the call says EIO, the plan is parked, and the next
           operation after the daemon reconnected finishes it.
  diskfull the images on a small loop-mounted ext4: mkdir, and a merge
           that runs out of space, fail with EIO; the journal on a full
           state dir fails with ENOSPC; after freeing space the operation
           goes through.

After every fault, "nothing lost": every remaining point in time and the
present read byte for byte as before (sha256 through the mount), and
qemu-img check finds every image clean.
"""

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
check = m.Checker()
JOB = "user.virtsnapfs.job"
# What the daemon logs, at warning level, for the faults this test makes.
FAILED_PLAN = r"failed; its journal .* stays"


# ---------------------------------------------------------------------------
# Helpers

def oracle_sha(env, image):
    out = os.path.join(env.dir, "oracle.raw")
    m.oracle(image, out)
    try:
        return m.sha(out)
    finally:
        os.unlink(out)


def thawed(env):
    """Waits until no @now freeze is open: the thaw runs after the
    kernel's release, a moment after close(), and a change on a frozen
    domain is EBUSY."""
    d = os.path.join(env.state, "freeze")
    m.wait_for(lambda: not os.path.isdir(d) or not os.listdir(d), timeout=300,
               what="the @now thaws")


def sums(env, dom, now=True, settle=True):
    """{point: {file: sha256}} of dom's points in time (and @now); with
    settle, returns once the freeze of @now is thawed."""
    out = {}
    ddir = os.path.join(env.mnt, dom)
    for p in sorted(os.listdir(ddir)):
        if p == "@now" and not now:
            continue
        pdir = os.path.join(ddir, p)
        out[p] = {f: m.sha(os.path.join(pdir, f)) for f in sorted(os.listdir(pdir))
                  if f.endswith(".raw")}
    if now and settle:
        thawed(env)
    return out


def nothing_lost(env, dom, before, what, gone=(), now=True, settle=True):
    """Every point of before except gone is listed and reads as before;
    gone ones are not listed."""
    after = sums(env, dom, now=now, settle=settle)
    for p, files in before.items():
        if p in gone:
            check.ok(p not in after, "%s: %s/%s is gone" % (what, dom, p))
        else:
            check.ok(after.get(p) == files, "%s: %s/%s reads as before" % (what, dom, p))
    return after


def images_clean(env, images_dir=None, running=False):
    """qemu-img check of every qcow2 image in the image directory."""
    d = images_dir or env.images
    # A read of @now thaws after the kernel's release, a moment after
    # close(): wait until its temporary overlays are gone.
    m.wait_for(lambda: not [f for f in os.listdir(d) if ".virtsnapfs-now-" in f], timeout=300,
               what="the @now thaws")
    for f in sorted(os.listdir(d)):
        path = os.path.join(d, f)
        if not os.path.isfile(path) or m.image_info(path).get("format") != "qcow2":
            continue
        args = ["qemu-img", "check", "-q"] + (["-U"] if running else []) + [path]
        r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        check.ok(r.returncode == 0, "qemu-img check %s: clean %s" % (f, r.stderr.strip()))


def job(env, dom):
    return os.getxattr(os.path.join(env.mnt, dom), JOB).decode()


def build_chain(env, dom, layers, size=48 * MiB, images=None, start=False):
    """A domain with one virtio disk whose chain has one layer per entry of
    layers: (snapshot name or None for the active image, [(pattern,
    offset, length)...] written into that layer).  Snapshots are taken
    offline with virsh.  Returns {snapshot: point image}."""
    d = images or env.images
    base = os.path.join(d, dom + "-vda.qcow2")
    m.qemu_img_create(base, size)
    env.define(dom, [("vda", "virtio", base, "qcow2")])
    points = {}
    for name, writes in layers:
        active = env.active_image(dom, "vda")
        for pattern, off, length in writes:
            m.qemu_io_write(active, "qcow2", pattern, off, length)
        if name:
            points[name] = active
            env.snapshot(dom, name)
    if start:
        env.virsh("start", dom)
    return points


def qemu_pid(env, dom):
    """The qemu-system process of dom in this env (by its -name and an
    image path of ours on its command line)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if not cmd or b"qemu-system" not in os.path.basename(cmd[0]):
            continue
        text = b" ".join(cmd)
        if (b"guest=%s," % dom.encode()) in text and env.dir.encode() in text:
            return int(pid)
    return None


def wait_job(env, dom, pattern, proc=None, timeout=120):
    """Waits until the job xattr matches pattern; returns the text."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = job(env, dom)
        if re.search(pattern, text):
            return text
        if proc is not None and proc.poll() is not None:
            raise AssertionError("the call ended (%s) before the job showed %r; last %r" %
                                 (proc.returncode, pattern, text))
        time.sleep(0.1)
    raise AssertionError("job of %s never matched %r (last %r)" % (dom, pattern, text))


def start(*cmd):
    return subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.strip()


def expect_errno(what, want, fn):
    try:
        fn()
    except OSError as e:
        check.ok(e.errno == want, "%s: %s (want %s)" % (
            what, errno.errorcode.get(e.errno, e.errno), errno.errorcode[want]))
        return
    raise AssertionError(what + " succeeded")


# ---------------------------------------------------------------------------
# reads: "reads never wait for a plan", queueing, parallel domains

def scenario_reads(env):
    # s1's point image is the base; deleting s1 merges the first overlay
    # (16 MiB) into it: an intermediate commit block job, since libvirt
    # cannot pull into a layer below the active one.
    pts = build_chain(env, "rd", [
        ("s1", [(0x11, 0, 2 * MiB)]),
        ("s2", [(0x22, 2 * MiB, 16 * MiB)]),
        ("s3", [(0x33, 20 * MiB, MiB)]),
        (None, [(0x44, 24 * MiB, MiB)]),
    ], start=True)
    opts = build_chain(env, "other", [("o1", [(0x55, 0, MiB)]), (None, [(0x56, MiB, MiB)])],
                       size=8 * MiB)
    oracle = {"s2": oracle_sha(env, pts["s2"]), "s3": oracle_sha(env, pts["s3"]),
              "o1": oracle_sha(env, opts["o1"])}
    d = m.Daemon(env, "bandwidth=1")
    before = sums(env, "rd", now=False)
    other_before = sums(env, "other")
    for p in ("s2", "s3"):
        check.ok(before[p]["vda.raw"] == oracle[p], "rd/%s reads as qemu-img convert" % p)
    check.ok(other_before["o1"]["vda.raw"] == oracle["o1"], "other/o1 reads as qemu-img convert")

    rd = os.path.join(env.mnt, "rd")
    rmdir = start("rmdir", os.path.join(rd, "s1"))
    first = wait_job(env, "rd", r"^delete s1: step \d+/\d+ commit vda \d+%$", rmdir)
    check.ok(True, "job shows the commit: %r" % first)

    # Reads of other points of rd and of another domain while it runs.
    reads = {}
    for p in ("s2", "s3"):
        reads["rd/" + p] = m.sha(os.path.join(rd, p, "vda.raw"))
    reads["other/o1"] = m.sha(os.path.join(env.mnt, "other", "o1", "vda.raw"))
    reads["other/@now"] = m.sha(os.path.join(env.mnt, "other", "@now", "vda.raw"))
    thawed(env)  # other's freeze, before mkdir other/p1 below
    still = job(env, "rd")
    check.ok(still.startswith("delete s1: step") and rmdir.poll() is None,
             "the plan was still running after the reads: %r" % still)
    for p in ("s2", "s3"):
        check.ok(reads["rd/" + p] == oracle[p], "during the plan rd/%s reads as the oracle" % p)
    check.ok(reads["other/o1"] == oracle["o1"], "during the plan other/o1 reads as the oracle")
    check.ok(reads["other/@now"] == other_before["@now"]["vda.raw"],
             "during the plan other/@now reads as before")

    # A change on another domain goes through meanwhile.
    os.mkdir(os.path.join(env.mnt, "other", "p1"))
    still = job(env, "rd")
    check.ok(still.startswith("delete s1: step") and rmdir.poll() is None,
             "mkdir other/p1 returned while the plan on rd runs: %r" % still)

    # A second change on rd is issued now and must wait for the first.
    mkdir = start("mkdir", os.path.join(rd, "q1"))
    time.sleep(1)  # give it time to reach the daemon (or the kernel's lock)
    busy = mkdir.poll() is None
    still = job(env, "rd")
    check.ok(busy and still.startswith("delete s1: step"),
             "mkdir rd/q1 waits while the delete runs (%r)" % still)

    # The progress moves.
    def progressed():
        t = job(env, "rd")
        return t != first or rmdir.poll() is not None
    m.wait_for(progressed, timeout=120, what="the job text to change")
    check.ok(True, "job text changed: %r -> %r" % (first, job(env, "rd")))

    rc, err = finish(rmdir)
    check.ok(rc == 0, "rmdir rd/s1 finished: %s" % err)
    rc, err = finish(mkdir)
    check.ok(rc == 0, "mkdir rd/q1 finished after it: %s" % err)
    check.ok(job(env, "rd") == "idle", "job xattr idle again")
    after = nothing_lost(env, "rd", before, "after the delete", gone=("s1",), now=False)
    check.ok("q1" in after, "q1 exists")
    nothing_lost(env, "other", other_before, "other after all")
    images_clean(env, running=True)
    d.stop()


# ---------------------------------------------------------------------------
# qemukill: QEMU dies in the middle of a block job

def journals(env):
    d = os.path.join(env.state, "journal")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def scenario_qemukill(env):
    # kc: deleting s1 is an intermediate commit of 16 MiB (see reads).
    build_chain(env, "kc", [
        ("s1", [(0x11, 0, 2 * MiB)]),
        ("s2", [(0x22, 2 * MiB, 16 * MiB)]),
        ("s3", [(0x33, 20 * MiB, MiB)]),
        (None, [(0x44, 24 * MiB, MiB)]),
    ], start=True)
    # kp: deleting s2 merges its 12 MiB layer with the active image that
    # holds 20 MiB elsewhere: the pull into the active image is cheaper.
    build_chain(env, "kp", [
        ("s1", [(0x61, 0, MiB)]),
        ("s2", [(0x62, 2 * MiB, 12 * MiB)]),
        (None, [(0x63, 16 * MiB, 20 * MiB)]),
    ], start=True)
    # ka: deleting s2 merges a 20 MiB layer with an active image of 12 MiB:
    # an active commit (and pivot) is cheaper.
    build_chain(env, "ka", [
        ("s1", [(0x71, 0, MiB)]),
        ("s2", [(0x72, 2 * MiB, 20 * MiB)]),
        (None, [(0x73, 24 * MiB, 12 * MiB)]),
    ], start=True)
    cases = (("kc", "s1", "commit"), ("kp", "s2", "pull"), ("ka", "s2", "active-commit"))
    d = m.Daemon(env, "bandwidth=1", expect=[FAILED_PLAN])
    before = {dom: sums(env, dom) for dom, _, _ in cases}
    for dom, victim, kind in cases:
        rmdir = start("rmdir", os.path.join(env.mnt, dom, victim))
        text = wait_job(env, dom, r"^delete %s: step \d+/\d+ %s vda \d+%%$" % (victim, kind),
                        rmdir)
        pid = qemu_pid(env, dom)
        check.ok(pid is not None, "%s: QEMU found while the job shows %r" % (dom, text))
        os.kill(pid, signal.SIGKILL)
        rc, err = finish(rmdir)
        check.ok(rc != 0 and "Input/output error" in err,
                 "%s: rmdir %s with QEMU killed mid-%s: %s" % (dom, victim, kind, err))
        check.ok(job(env, dom) == "idle", "%s: job idle after the failure" % dom)
        # The plan is parked: the point being deleted stays hidden, the
        # others read as before.  (@now waits for the restart: libvirt may
        # still be tidying up after QEMU's death, and a freeze then fails.)
        nothing_lost(env, dom, {p: v for p, v in before[dom].items() if p != "@now"},
                     "%s: after QEMU died" % dom, gone=(victim,), now=False)
    check.ok(len(journals(env)) == 3, "three plans parked in the journal: %s" % journals(env))
    d.stop()
    d = m.Daemon(env, "bandwidth=1")
    check.ok(journals(env) == [], "the restart finished all plans")
    check.ok("finishing a plan left by an earlier run" in d.log_text(), "recovery logged")
    for dom, victim, _ in cases:
        nothing_lost(env, dom, before[dom], "%s: after recovery" % dom, gone=(victim,))
    images_clean(env)
    d.stop()
    for dom, victim, _ in cases:
        snaps = env.virsh("snapshot-list", dom, "--name").split()
        check.ok(set(snaps) == set(before[dom]) - {"@now", victim},
                 "%s: libvirt lists %s" % (dom, snaps))
    # The domains start again on what the plans left.
    for dom, _, _ in cases:
        env.virsh("start", dom)
        check.ok("running" in env.virsh("domstate", dom), "%s starts again" % dom)


# ---------------------------------------------------------------------------
# errnos: EOPNOTSUPP and EIO as the shell prints them

def scenario_errnos(env):
    pts = build_chain(env, "eo", [
        ("s1", [(0x11, 0, MiB)]),
        ("s2", [(0x22, MiB, MiB)]),
        (None, [(0x33, 2 * MiB, MiB)]),
    ], size=8 * MiB)
    env.define("nodisk", [])
    # A model rebuild that happens to read the broken image logs it.
    d = m.Daemon(env, expect=[re.escape(pts["s2"])])
    before = sums(env, "eo")

    # EOPNOTSUPP: a domain without disks has nothing to snapshot.
    r = subprocess.run(["mkdir", os.path.join(env.mnt, "nodisk", "x")], stderr=subprocess.PIPE,
                       text=True)
    check.ok(r.returncode != 0 and "Operation not supported" in r.stderr,
             "mkdir in a domain without disks: %s" % r.stderr.strip())
    check.ok(os.listdir(os.path.join(env.mnt, "nodisk")) == ["@now"], "nodisk: nothing made")

    # EIO: s2's point image cannot be read (its magic is broken), so no
    # plan can be made for deleting s2; afterwards everything reads as before.
    victim = pts["s2"]
    with open(victim, "r+b") as f:
        saved = f.read(4)
        f.seek(0)
        f.write(b"XXXX")
    r = subprocess.run(["rmdir", os.path.join(env.mnt, "eo", "s2")], stderr=subprocess.PIPE,
                       text=True)
    check.ok(r.returncode != 0 and "Input/output error" in r.stderr,
             "rmdir with an unreadable layer: %s" % r.stderr.strip())
    with open(victim, "r+b") as f:
        f.write(saved)
    check.ok(journals(env) == [], "no plan was journaled")
    nothing_lost(env, "eo", before, "after EIO")
    images_clean(env)
    os.rmdir(os.path.join(env.mnt, "eo", "s2"))
    nothing_lost(env, "eo", before, "rmdir s2 again", gone=("s2",))
    d.stop()


# ---------------------------------------------------------------------------
# races

def scenario_races(env):
    build_chain(env, "ra", [
        ("s1", [(0x11, 0, 6 * MiB)]),
        ("s2", [(0x22, 6 * MiB, 6 * MiB)]),
        ("s3", [(0x33, 12 * MiB, MiB)]),
        ("a", [(0x34, 13 * MiB, MiB)]),
        (None, [(0x44, 14 * MiB, MiB)]),
    ], size=16 * MiB)
    d = m.Daemon(env, "bandwidth=1")
    before = sums(env, "ra")
    ra = os.path.join(env.mnt, "ra")

    # Two rmdir of one snapshot at once: one deletes, the other finds
    # nothing (ENOENT), whichever came first.
    p1 = start("rmdir", os.path.join(ra, "s2"))
    p2 = start("rmdir", os.path.join(ra, "s2"))
    r1, r2 = finish(p1), finish(p2)
    codes = sorted([r1[0], r2[0]])
    errs = r1[1] + r2[1]
    check.ok(codes[0] == 0 and codes[1] != 0 and "No such file or directory" in errs,
             "two rmdir of s2: one deletes, the other says %r" % errs)
    before = nothing_lost(env, "ra", before, "after the double rmdir", gone=("s2",))

    # mkdir racing rmdir of one name: either order is fine, but the end
    # state must be one of the two and match libvirt.
    p1 = start("rmdir", os.path.join(ra, "a"))
    p2 = start("mkdir", os.path.join(ra, "a"))
    (rc1, e1), (rc2, e2) = finish(p1), finish(p2)
    check.ok(rc1 == 0, "rmdir a: %s" % e1)
    exists = "a" in os.listdir(ra)
    if rc2 == 0:
        check.ok(exists, "mkdir a after the rmdir: a exists again")
        now = sums(env, "ra")
        check.ok(now["a"] == now["@now"], "the new a reads as the present")
        before["a"] = now["a"]
    else:
        check.ok("File exists" in e2 and not exists, "mkdir a before the rmdir: %s; a gone" % e2)
        before.pop("a")
    before = nothing_lost(env, "ra", before, "after mkdir/rmdir of a")

    # rm -r of a point that a reader has open: EBUSY, and the reader goes
    # on reading the right bytes.
    path = os.path.join(ra, "s1", "vda.raw")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(3 * MiB))
        r = subprocess.run(["rm", "-r", os.path.join(ra, "s1")], stderr=subprocess.PIPE,
                           text=True)
        check.ok(r.returncode != 0 and "Device or resource busy" in r.stderr,
                 "rm -r of an open point: %s" % r.stderr.strip())
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
    check.ok(h.hexdigest() == before["s1"]["vda.raw"], "the reader read s1 whole and right")
    before = nothing_lost(env, "ra", before, "after the refused rm -r")
    d.stop()
    snaps = set(env.virsh("snapshot-list", "ra", "--name").split())
    check.ok(snaps == set(before) - {"@now"}, "libvirt agrees: %s" % sorted(snaps))


# ---------------------------------------------------------------------------
# daemonkill: SIGKILL of the daemon at random moments during deletes

def kill_during_deletes(env, dom, rounds, rng, opts, max_delay):
    d = m.Daemon(env, *opts)
    before = sums(env, dom)
    for i in range(rounds):
        points = sorted(p for p in before if p != "@now")
        if len(points) < 2:
            break
        victim = rng.choice(points)
        delay = rng.uniform(0, max_delay)
        m.log("round %d: rmdir %s/%s, SIGKILL after %.2f s" % (i, dom, victim, delay))
        rmdir = start("rmdir", os.path.join(env.mnt, dom, victim))
        time.sleep(delay)
        state = job(env, dom) if rmdir.poll() is None else "(returned)"
        d.stop("kill9")
        rc, err = finish(rmdir)
        m.log("  job was %r; rmdir: %d %s" % (state, rc, err))
        d = m.Daemon(env, *opts)
        check.ok(journals(env) == [], "round %d: no plan left after the restart" % i)
        after = sums(env, dom)
        done = victim not in after
        check.ok(not (rc == 0 and not done), "round %d: an rmdir that returned 0 deleted" % i)
        gone = (victim,) if done else ()
        before = nothing_lost(env, dom, before, "round %d (%s %s)" % (
            i, victim, "deleted" if done else "kept"), gone=gone)
    d.stop()
    return before


def scenario_daemonkill(env):
    seed = int(os.environ.get("VIRTSNAPFS_TEST_SEED", time.time()))
    m.log("seed", seed, "(VIRTSNAPFS_TEST_SEED repeats it)")
    rng = random.Random(seed)
    layers = [("s%d" % i, [(0x10 + i, i * 4 * MiB, 4 * MiB)]) for i in range(1, 8)]
    build_chain(env, "dk", layers + [(None, [(0x20, 30 * MiB, MiB)])], size=32 * MiB)
    build_chain(env, "dr", [
        ("s1", [(0x31, 0, 2 * MiB)]),
        ("s2", [(0x32, 2 * MiB, 8 * MiB)]),
        ("s3", [(0x33, 10 * MiB, 8 * MiB)]),
        ("s4", [(0x34, 18 * MiB, 8 * MiB)]),
        (None, [(0x35, 26 * MiB, MiB)]),
    ], size=32 * MiB, start=True)
    # Offline: qemu-img commit -r 1 MiB/s or an unlimited rebase.
    left = kill_during_deletes(env, "dk", 6, rng, ["bandwidth=1"], 6.0)
    images_clean(env, running=True)  # dr runs
    snaps = set(env.virsh("snapshot-list", "dk", "--name").split())
    check.ok(snaps == set(left) - {"@now"}, "dk: libvirt agrees: %s" % sorted(snaps))
    # Running: block jobs that go on in QEMU while the daemon is dead.
    left = kill_during_deletes(env, "dr", 3, rng, ["bandwidth=1"], 10.0)
    images_clean(env, running=True)
    snaps = set(env.virsh("snapshot-list", "dr", "--name").split())
    check.ok(snaps == set(left) - {"@now"}, "dr: libvirt agrees: %s" % sorted(snaps))


# ---------------------------------------------------------------------------
# diskfull: the images' filesystem or the state directory runs out of space

def fill(mnt, leave):
    """A file that takes all free space of mnt but leave bytes."""
    path = os.path.join(mnt, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # In chunks: the file's own extent blocks come out of the space too.
        chunk, end = MiB, 0
        while chunk >= 4096:
            st = os.statvfs(mnt)
            if st.f_bavail * st.f_frsize <= leave:
                break
            n = min(chunk, st.f_bavail * st.f_frsize - leave)
            try:
                os.posix_fallocate(fd, end, n)
                end += n
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return path


def listing(d):
    return sorted(f for f in os.listdir(d) if f not in ("filler", "lost+found"))


def scenario_diskfull(env):
    small = os.path.join(env.dir, "small")
    img = os.path.join(env.dir, "small.ext4")
    os.makedirs(small)
    m.run("truncate", "-s", "48M", img)
    m.run("mkfs.ext4", "-q", "-F", "-m", "0", img)
    m.run("mount", "-o", "loop", img, small)
    # The state directory on a tmpfs of its own, to fill it separately.
    m.run("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", env.state)
    try:
        diskfull(env, small)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", env.mnt], stderr=subprocess.DEVNULL)
        m.run("umount", small, check=False)
        m.run("umount", env.state, check=False)


def diskfull(env, small):
    build_chain(env, "df", [
        ("s1", [(0x11, 0, MiB)]),
        ("s2", [(0x22, 2 * MiB, 10 * MiB)]),
        ("s3", [(0x33, 14 * MiB, 10 * MiB)]),
        (None, [(0x44, 26 * MiB, MiB)]),
    ], size=32 * MiB, images=small)
    d = m.Daemon(env, "image_dir=" + small,
                 expect=[FAILED_PLAN, r"No space left on device"])
    df = os.path.join(env.mnt, "df")
    before = sums(env, "df")
    files = listing(small)

    # (a) No room for the overlays of a new snapshot: libvirt's snapshot
    # fails, so EIO (the errno table's "libvirt or qemu-img failed").
    filler = fill(small, 0)
    r = subprocess.run(["mkdir", os.path.join(df, "x")], stderr=subprocess.PIPE, text=True)
    check.ok(r.returncode != 0 and "Input/output error" in r.stderr,
             "mkdir on a full filesystem: %s" % r.stderr.strip())
    check.ok("x" not in os.listdir(df) and listing(small) == files,
             "no snapshot and no file left behind")
    os.unlink(filler)
    before = nothing_lost(env, "df", before, "after the failed mkdir")
    os.mkdir(os.path.join(df, "x"))
    after = sums(env, "df")
    check.ok(after["x"] == after["@now"], "mkdir once there is room: x reads as the present")
    os.rmdir(os.path.join(df, "x"))
    before = nothing_lost(env, "df", before, "after rmdir x")
    files = listing(small)

    # (b) A merge that runs out of space half-way: qemu-img commit fails
    # (EIO), the plan stays journaled with s2 hidden, and the rest reads
    # as before.  Once there is room, the next operation finishes it.
    filler = fill(small, 3 * MiB)
    r = subprocess.run(["rmdir", os.path.join(df, "s2")], stderr=subprocess.PIPE, text=True)
    check.ok(r.returncode != 0 and "Input/output error" in r.stderr,
             "rmdir with 3 MiB free for a 10 MiB merge: %s" % r.stderr.strip())
    check.ok(len(journals(env)) == 1, "the plan is parked in the journal")
    nothing_lost(env, "df", {p: v for p, v in before.items() if p != "@now"},
                 "while full", gone=("s2",), now=False)
    os.unlink(filler)
    os.mkdir(os.path.join(df, "y"))
    check.ok(journals(env) == [], "the next operation (mkdir y) finished the parked plan")
    before = nothing_lost(env, "df", before, "after room was made", gone=("s2",))
    os.rmdir(os.path.join(df, "y"))
    before.pop("y", None)
    images_clean(env, small)

    # (c) The state directory is full: the journal cannot be written, so
    # nothing starts: ENOSPC says why, where EIO would not.
    filler = fill(env.state, 0)
    r = subprocess.run(["rmdir", os.path.join(df, "s1")], stderr=subprocess.PIPE, text=True)
    check.ok(r.returncode != 0 and "No space left on device" in r.stderr,
             "rmdir with a full state directory: %s" % r.stderr.strip())
    check.ok("s1" in os.listdir(df), "s1 is still listed")
    os.unlink(filler)
    before = nothing_lost(env, "df", before, "after the journal failed")
    os.rmdir(os.path.join(df, "s1"))
    nothing_lost(env, "df", before, "rmdir s1 once the state dir has room", gone=("s1",))
    images_clean(env, small)
    d.stop()


# ---------------------------------------------------------------------------
# locked: another process holds the write lock of a layer a plan must write

def scenario_locked(env):
    pts = build_chain(env, "lk", [
        ("s1", [(0x11, 0, MiB)]),
        ("s2", [(0x22, MiB, 2 * MiB)]),
        ("s3", [(0x33, 4 * MiB, 2 * MiB)]),
        (None, [(0x44, 8 * MiB, MiB)]),
    ], size=16 * MiB)
    d = m.Daemon(env, expect=[FAILED_PLAN, r"thaw failed; its record stays",
                              r"freeze repair failed"])
    before = sums(env, "lk")
    # Deleting s2 merges its layer (s2's point image) with the next one
    # (s3's): either direction writes one of them.  qemu-io keeps s3's
    # open read-write and s2's as its backing file, which QEMU shares with
    # readers but not writers, until its stdin closes.
    holders = [subprocess.Popen(["qemu-io", "-f", "qcow2", pts["s3"]], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1)  # let qemu-io open the images
        for h in holders:
            check.ok(h.poll() is None, "qemu-io holds an image")
        r = subprocess.run(["rmdir", os.path.join(env.mnt, "lk", "s2")], stderr=subprocess.PIPE,
                           text=True)
        check.ok(r.returncode != 0 and "Input/output error" in r.stderr,
                 "rmdir while the layers are locked: %s" % r.stderr.strip())
        check.ok('Failed to get "write" lock' in d.log_text(), "the log says why")
        # Reading @now freezes and thaws; the thaw's commit needs the lock
        # too and fails, so the domain stays on the temporary overlay: a
        # snapshot on top of it would strand it, so changes are EBUSY.
        nothing_lost(env, "lk", before, "while locked", gone=("s2",), settle=False)
        m.wait_for(lambda: "thaw failed" in d.log_text(), timeout=60, what="the thaw")
        check.ok(True, "the thaw of @now failed while locked")
        r = subprocess.run(["mkdir", os.path.join(env.mnt, "lk", "early")],
                           stderr=subprocess.PIPE, text=True)
        check.ok(r.returncode != 0 and "Device or resource busy" in r.stderr,
                 "mkdir while a failed thaw is pending: %s" % r.stderr.strip())
    finally:
        for h in holders:
            h.stdin.close()
            h.wait()
    # The next operation finishes the thaw and the parked plan.
    os.mkdir(os.path.join(env.mnt, "lk", "after"))
    check.ok(journals(env) == [], "the plan finished once the locks were gone")
    check.ok(os.listdir(os.path.join(env.state, "freeze")) == [], "the thaw finished too")
    check.ok(not [f for f in os.listdir(env.images) if "virtsnapfs-now" in f],
             "no temporary overlay left")
    after = nothing_lost(env, "lk", before, "after the locks went", gone=("s2",))
    check.ok(after["after"] == after["@now"], "the new snapshot reads as the present")
    images_clean(env)
    d.stop()


# ---------------------------------------------------------------------------
# libvirtd: the libvirt connection is lost and comes back during a plan

def scenario_libvirtd(env):
    lv = m.PrivateLibvirtd(env)
    dom = "vsfs-faults-lc"
    build_chain(env, dom, [
        ("s1", [(0x11, 0, 2 * MiB)]),
        ("s2", [(0x22, 2 * MiB, 16 * MiB)]),
        ("s3", [(0x33, 20 * MiB, MiB)]),
        (None, [(0x44, 24 * MiB, MiB)]),
    ], start=True)
    d = m.Daemon(env, "bandwidth=1", expect=[FAILED_PLAN, r"libvirt|connection|reconnect"])
    before = sums(env, dom)
    rmdir = start("rmdir", os.path.join(env.mnt, dom, "s1"))
    text = wait_job(env, dom, r"^delete s1: step \d+/\d+ commit vda \d+%$", rmdir)
    lv.kill(signal.SIGKILL)
    lv.start()
    check.ok(True, "libvirtd killed and restarted while the job showed %r" % text)
    rc, err = finish(rmdir)
    m.log("rmdir after the reconnect: %d %s" % (rc, err))
    check.ok(rc == 0 or "Input/output error" in err, "rmdir: done or EIO: %r" % err)
    if rc != 0:
        # Parked: the next operation on the domain finishes it, once the
        # daemon has reconnected (until then: EIO, "not connected").
        def mkdir_after():
            try:
                os.mkdir(os.path.join(env.mnt, dom, "after"))
                return True
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                return False
        m.wait_for(mkdir_after, timeout=120, what="mkdir after the daemon reconnected")
        check.ok(True, "mkdir after the reconnect went through")
        before["after"] = None
    check.ok(journals(env) == [], "no plan left")
    after = sums(env, dom)
    if "after" in before:
        before["after"] = after["after"]
    nothing_lost(env, dom, before, "after the reconnect", gone=("s1",))
    images_clean(env, running=True)
    d.stop()


# ---------------------------------------------------------------------------

SCENARIOS = {
    "reads": scenario_reads,
    "qemukill": scenario_qemukill,
    "errnos": scenario_errnos,
    "races": scenario_races,
    "daemonkill": scenario_daemonkill,
    "diskfull": scenario_diskfull,
    "locked": scenario_locked,
    "libvirtd": scenario_libvirtd,
}


def main():
    names = sys.argv[1:] or list(SCENARIOS)
    m.need_tools()
    for name in names:
        m.log("=== scenario", name)
        env = m.Env("faults-" + name)
        try:
            SCENARIOS[name](env)
        except BaseException:
            env.keep = True
            subprocess.run(["fusermount3", "-u", "-z", env.mnt], stderr=subprocess.DEVNULL)
            raise
        finally:
            env.cleanup()
    m.log("%d checks passed" % check.n)


if __name__ == "__main__":
    main()
