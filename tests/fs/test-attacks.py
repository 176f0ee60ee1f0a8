#!/usr/bin/env python3
"""test-attacks: hostile backing names and image headers, through the mount.

Every attack sits in the chain of a point in time of a domain (shut off,
but for "live") in one embed root.  The domains are defined and snapshotted with clean images
(libvirt would refuse some of the attacks), then the images are edited with
`qemu-img rebase -u` or by patching header bytes: for a shut-off domain
the daemon reads the chains from the headers.  Each domain
has the points s1 and s2 made offline: s1 created the overlay o1, s2 the
overlay o2 (the active image).  For a shut-off domain P(s) is read from
the header of O(s): P(s1) = backing(o1) (normally the base image), P(s2) =
backing(o2) = o1.  So an attack written as o1's backing is both P(s1)
itself and a layer under P(s2); one written as o2's backing is P(s2).

Attacks (domain: disk = what is done):
  proto:    vda json:{...file outside...}, vdb nbd:, vdc file:OUTSIDE,
            as o1's backing name
  host:     vda /etc/shadow, vdb /etc/passwd, vdc OUTSIDE (all declared
            raw), vdd ../outside/secret.raw, vde a symlink in the image
            directory pointing outside; all as o1's backing
  header:   the same escapes as the backing of o2, whose header is where
            a shut-off domain's P(s2) is read from
  fmt:      vda o1's backing (raw) recorded without a format; vdb a raw
            backing declared qcow2; vdc a qcow2 (whose own backing is
            OUTSIDE) declared raw: reads as that file's raw bytes
  loop:     vda o1 backs onto itself; vdb o1 -> base -> o1
  deep:     vda base on 199 more layers: s1 is 200 deep (read), s2 201 (EIO)
  feature:  vda o1's backing has an external data file (OUTSIDE);
            vdb o1's backing is LUKS-encrypted; vdc o1 has an unknown
            incompatible feature bit
  rawhdr:   vda a raw disk whose bytes are a qcow2 header with backing
            /etc/shadow: reads as the raw bytes
  swap:     vda's base is a symlink in the image directory to a file there;
            after the tree was listed and the point opened, the symlink is
            swapped to point outside: the open file keeps reading the
            original bytes, new opens fail
  live:     a running domain (libvirt's live chain is authoritative for
            P(s)): vda o1's backing name overwritten in the header with
            /etc/shadow, vdb with ../outside/secret.raw, vdc with another
            image in the image directory (the chain must be libvirt's)
  healthy:  two disks, untouched: reads as qemu-img says before and after.
Expectations: an attacked disk gives EIO (on stat/open or read), its
reason logged once; where the attack is P(s) itself as named by the
overlay's header and names no local file of a known format (json:,
nbd:, file:, no backing format, an unreadable overlay), the disk is left
out of that point instead, with a message; nothing read through the mount ever contains the
marker planted in the outside files or a line of /etc/passwd; every
other disk and point reads as `qemu-img convert -O raw` says.
"""

import errno
import json
import os
import re
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
SIZE = 16 * MiB
MARKER = b"VIRTSNAPFS-OUTSIDE-MARKER-5d1c"
check = m.Checker()
seen = []  # every buffer read through the mount


class Domain:
    """A shut-off domain with points s1 and s2 on disks of SIZE bytes."""

    def __init__(self, env, name, targets, base_fmt="qcow2", bases=None, running=False):
        self.name = name
        self.base, self.o1, self.o2, self.fmt, self.p1 = {}, {}, {}, {}, {}
        disks = []
        for i, t in enumerate(targets):
            if bases and t in bases:
                path = bases[t]
            else:
                path = os.path.join(env.images, "%s-%s.%s" % (name, t, base_fmt))
                m.qemu_img_create(path, SIZE, fmt=base_fmt)
                m.qemu_io_write(path, base_fmt, 0x10 + i, 0, MiB)
            self.base[t] = path
            self.fmt[t] = base_fmt
            disks.append((t, "virtio", path, base_fmt))
        env.define(name, disks, start=running)
        env.snapshot(name, "s1")
        for i, t in enumerate(targets):
            self.o1[t] = env.active_image(name, t)
            if running:
                env.guest_write(name, t, 0x20 + i, 2 * MiB, MiB)
            else:
                m.qemu_io_write(self.o1[t], "qcow2", 0x20 + i, 2 * MiB, MiB)
        env.snapshot(name, "s2")
        for i, t in enumerate(targets):
            self.o2[t] = env.active_image(name, t)
            if not running:
                m.qemu_io_write(self.o2[t], "qcow2", 0x30 + i, 4 * MiB, MiB)

    def point(self, snap, t):
        if snap == "s1":
            return self.p1.get(t, self.base[t])
        return self.o1[t]


def rebase(path, backing, fmt):
    m.run("qemu-img", "rebase", "-u", "-b", backing, "-F", fmt, path)


def qcow2_header(path):
    with open(path, "rb") as f:
        return f.read(4096)


def patch(path, offset, data):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def overwrite_backing_name(path, name):
    """Rewrites the backing name in the header in place, as a guest or
    user with write access to the image could; for images a running QEMU
    holds locked, where qemu-img refuses to write."""
    head = qcow2_header(path)
    offset, size = struct.unpack_from(">QI", head, 8)
    data = name.encode()
    assert offset and len(data) <= size, path
    patch(path, offset, data)
    patch(path, 16, struct.pack(">I", len(data)))


def drop_backing_format(path):
    """Renames the backing-format header extension to an unknown one:
    QEMU and we ignore unknown extensions, so the format is then unknown."""
    head = qcow2_header(path)
    at = head.find(struct.pack(">I", 0xE2792ACA), 104)
    assert at > 0, "no backing format extension in " + path
    patch(path, at, struct.pack(">I", 0x7EE7F00D))
    assert "backing-filename-format" not in m.image_info(path), path


def set_incompatible_bit(path, bit):
    head = qcow2_header(path)
    (version,) = struct.unpack_from(">I", head, 4)
    assert version == 3
    (bits,) = struct.unpack_from(">Q", head, 72)
    patch(path, 72, struct.pack(">Q", bits | (1 << bit)))


def no_leak(data, what):
    seen.append(data)
    check.ok(MARKER not in data and b"root:" not in data, "%s: no outside bytes" % what)


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def expect_eio(env, path, what):
    """The disk fails with EIO at stat, open or the first read; whatever
    came back before the error holds no outside byte."""
    err = None
    data = b""
    try:
        os.stat(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            while True:
                chunk = os.pread(fd, MiB, len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
    except OSError as e:
        err = e.errno
    no_leak(data, what)
    check.ok(err == errno.EIO, "%s: EIO (got %s after %d bytes)" %
             (what, errno.errorcode.get(err, err), len(data)))


def expect_oracle(env, path, image, what):
    out = os.path.join(env.dir, "oracle.raw")
    m.oracle(image, out)
    data = read_all(path)
    no_leak(data, what)
    with open(out, "rb") as f:
        check.ok(data == f.read(), "%s reads as qemu-img convert of %s" % (what, image))


def expect_bytes(path, want, what):
    data = read_all(path)
    no_leak(data, what)
    check.ok(data == want, what + " reads as the raw bytes of its image")


def build(env):
    img, out = env.images, os.path.join(env.dir, "outside")
    os.makedirs(out)
    secret = os.path.join(out, "secret.raw")
    with open(secret, "wb") as f:
        f.write(MARKER * (SIZE // len(MARKER)))
    plan = {}  # domain -> {target: {"s1": expectation, "s2": expectation}}
    doms = {}

    def expect(d, t, s1="oracle", s2="eio"):
        """What s1 and s2 of disk t of d read as: "oracle", "eio", "raw"
        (the bytes of the point image), "gone" (the disk is left out)."""
        plan.setdefault(d.name, {})[t] = {"s1": s1, "s2": s2}

    # Protocol names as o1's backing.
    d = doms["proto"] = Domain(env, "proto", ["vda", "vdb", "vdc"])
    rebase(d.o1["vda"], 'json:{"driver":"raw","file":{"driver":"file","filename":"%s"}}'
           % secret, "raw")
    rebase(d.o1["vdb"], "nbd:localhost:10809", "raw")
    rebase(d.o1["vdc"], "file:" + secret, "raw")
    for t in ("vda", "vdb", "vdc"):
        expect(d, t, s1="gone")

    # Host files, escapes and a symlink out, as o1's backing.
    link = os.path.join(img, "host-link.raw")
    os.symlink(secret, link)
    d = doms["host"] = Domain(env, "host", ["vda", "vdb", "vdc", "vdd", "vde"])
    rebase(d.o1["vda"], "/etc/shadow", "raw")
    rebase(d.o1["vdb"], "/etc/passwd", "raw")
    rebase(d.o1["vdc"], secret, "raw")
    rebase(d.o1["vdd"], "../outside/secret.raw", "raw")
    rebase(d.o1["vde"], "host-link.raw", "raw")
    for t in ("vda", "vdb", "vdc", "vdd", "vde"):
        expect(d, t, s1="eio")

    # The same as o2's backing: for a shut-off domain P(s2) comes from there.
    d = doms["header"] = Domain(env, "header", ["vda", "vdb", "vdc", "vdd"])
    rebase(d.o2["vda"], "/etc/shadow", "raw")
    rebase(d.o2["vdb"], secret, "raw")
    rebase(d.o2["vdc"], "../outside/secret.raw", "raw")
    rebase(d.o2["vdd"], "header-link.raw", "raw")
    os.symlink(secret, os.path.join(img, "header-link.raw"))
    for t in ("vda", "vdb", "vdc", "vdd"):
        expect(d, t)

    # Formats.
    d = doms["fmt"] = Domain(env, "fmt", ["vda", "vdb", "vdc"])
    raw = os.path.join(img, "fmt-raw.raw")
    m.qemu_img_create(raw, SIZE, fmt="raw")
    m.qemu_io_write(raw, "raw", 0x44, 0, MiB)
    rebase(d.o1["vda"], raw, "raw")
    drop_backing_format(d.o1["vda"])
    rebase(d.o1["vdb"], raw, "qcow2")
    inner = os.path.join(img, "fmt-inner.qcow2")
    m.run("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", secret, "-F", "raw", inner,
          str(SIZE))
    rebase(d.o1["vdc"], inner, "raw")
    d.p1["vdc"] = inner
    expect(d, "vda", s1="gone")
    expect(d, "vdb", s1="eio")
    expect(d, "vdc", s1="raw", s2="oracle")

    # Loops.
    d = doms["loop"] = Domain(env, "loop", ["vda", "vdb"])
    rebase(d.o1["vda"], d.o1["vda"], "qcow2")
    rebase(d.o1["vdb"], d.base["vdb"], "qcow2")
    rebase(d.base["vdb"], d.o1["vdb"], "qcow2")
    expect(d, "vda", s1="eio")
    expect(d, "vdb", s1="eio")

    # 199 layers under the base: s1 is 200 deep, s2 201.
    d = doms["deep"] = Domain(env, "deep", ["vda"])
    below = None
    for i in range(199):
        layer = os.path.join(img, "deep-%03d.qcow2" % i)
        if below is None:
            m.qemu_img_create(layer, SIZE)
        else:
            m.run("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b",
                  os.path.basename(below), "-F", "qcow2", layer, str(SIZE))
        if i % 50 == 0:
            m.qemu_io_write(layer, "qcow2", 0x50 + i // 50, (8 + i // 50) * MiB, 64 * 1024)
        below = layer
    rebase(d.base["vda"], os.path.basename(below), "qcow2")
    depth = len(json.loads(m.run("qemu-img", "info", "-U", "--backing-chain",
                                 "--output=json", d.base["vda"])))
    check.ok(depth == 200, "deep: P(s1) is 200 layers deep (%d)" % depth)
    expect(d, "vda")

    # Features the reader refuses.
    d = doms["feature"] = Domain(env, "feature", ["vda", "vdb", "vdc"])
    ext = os.path.join(img, "feature-ext.qcow2")
    data_file = os.path.join(out, "data.raw")
    m.run("qemu-img", "create", "-q", "-f", "qcow2", "-o",
          "data_file=%s,data_file_raw=on" % data_file, ext, str(SIZE))
    with open(data_file, "r+b") as f:
        f.write(MARKER * (MiB // len(MARKER)))
    rebase(d.o1["vda"], ext, "qcow2")
    luks = os.path.join(img, "feature-luks.qcow2")
    # LUKS times its key derivation by CPU time; on a loaded machine that
    # measurement sometimes fails ("Unable to get accurate CPU usage").
    for attempt in range(5):
        try:
            m.run("qemu-img", "create", "-q", "--object", "secret,id=s0,data=pw", "-f",
                  "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0", luks, str(SIZE))
            break
        except AssertionError:
            if attempt == 4:
                raise
            m.log("qemu-img create of a LUKS image failed; again")
    rebase(d.o1["vdb"], luks, "qcow2")
    set_incompatible_bit(d.o1["vdc"], 40)
    expect(d, "vda", s1="eio")
    expect(d, "vdb", s1="eio")
    expect(d, "vdc", s1="gone")

    # A raw disk whose bytes look like a qcow2 with backing /etc/shadow.
    hdr = os.path.join(env.dir, "rawhdr-src.qcow2")
    m.run("qemu-img", "create", "-q", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw",
          hdr, str(SIZE))
    rawdisk = os.path.join(img, "rawhdr-vda.raw")
    with open(hdr, "rb") as f, open(rawdisk, "wb") as g:
        g.write(f.read())
        g.truncate(SIZE)
    d = doms["rawhdr"] = Domain(env, "rawhdr", ["vda"], base_fmt="raw", bases={"vda": rawdisk})
    plan["rawhdr"] = {"vda": {"s1": "raw", "s2": "oracle"}}

    # A base that is a symlink inside the image directory (swapped later).
    real = os.path.join(img, "swap-real.raw")
    m.qemu_img_create(real, SIZE, fmt="raw")
    m.qemu_io_write(real, "raw", 0x66, 0, SIZE)
    swap = os.path.join(img, "swap-vda.raw")
    os.symlink("swap-real.raw", swap)
    doms["swap"] = Domain(env, "swap", ["vda"], base_fmt="raw", bases={"vda": swap})

    # A running domain: P(s) comes from libvirt's live chain, but the
    # reader still follows the names in the headers, which changed on disk.
    d = doms["live"] = Domain(env, "live", ["vda", "vdb", "vdc"], running=True)
    overwrite_backing_name(d.o1["vda"], "/etc/shadow")
    overwrite_backing_name(d.o1["vdb"], "../outside/secret.raw")
    decoy = os.path.join(img, "live-decoy.qcow2")
    m.qemu_img_create(decoy, SIZE)
    m.qemu_io_write(decoy, "qcow2", 0x77, 0, SIZE)
    overwrite_backing_name(d.o1["vdc"], os.path.basename(decoy))
    for t in ("vda", "vdb", "vdc"):
        expect(d, t)

    doms["healthy"] = Domain(env, "healthy", ["vda", "vdb"])
    return doms, plan, secret


def check_healthy(env, d, when):
    for snap in ("s1", "s2"):
        for t in ("vda", "vdb"):
            expect_oracle(env, os.path.join(env.mnt, d.name, snap, t + ".raw"),
                          d.point(snap, t), "healthy %s/%s %s" % (snap, t, when))


def warnings(d):
    return [l.split(": ", 1)[1] for l in d.log_text().splitlines() if m.BAD_LOG.search(l)]


def read_plan(env, doms, plan, again):
    for name, disks in sorted(plan.items()):
        dom = doms[name]
        for t, points in sorted(disks.items()):
            for snap, want in sorted(points.items()):
                path = os.path.join(env.mnt, name, snap, t + ".raw")
                what = "%s/%s/%s%s" % (name, snap, t, again)
                if want == "eio":
                    expect_eio(env, path, what)
                elif want == "raw":
                    with open(dom.point(snap, t), "rb") as f:
                        raw = f.read()
                    expect_bytes(path, raw + bytes(-len(raw) % 512), what)
                elif want == "gone":
                    # P(s) comes from a hostile overlay header: the
                    # disk is left out of the point (logged).
                    check.ok(not os.path.lexists(path), what + " is left out")
                else:
                    expect_oracle(env, path, dom.point(snap, t), what)


def test(env):
    doms, plan, secret = build(env)
    oracle_swap = read_all(os.path.join(env.images, "swap-real.raw"))
    # Every attacked disk may log its reason; counted below.
    d = m.Daemon(env, expect=[r"disk vd[a-e]: ", r"open (proto|host|header|fmt|loop|deep|"
                              r"feature|swap|live)/s[12]/vd[a-e]\.raw: "])
    try:
        check_healthy(env, doms["healthy"], "before")
        check.ok(sorted(os.listdir(env.mnt)) == sorted(doms), "every domain is listed")
        read_plan(env, doms, plan, "")
        # Each failing point logged its reason when first touched; touching
        # it again logs nothing new.
        first = warnings(d)
        eio = sum(1 for disks in plan.values() for pts in disks.values()
                  for want in pts.values() if want == "eio")
        for l in first:
            m.log("warning:", l[:200])
        check.ok(0 < len(first) <= eio, "%d warnings for %d failing disks" % (len(first), eio))
        read_plan(env, doms, plan, " (again)")
        check.ok(warnings(d) == first, "nothing new logged when the same disks fail again")
        check.ok(not any("healthy" in l or "rawhdr" in l for l in first),
                 "no warning about the healthy domain or the raw disk")

        # The symlink swap: list, open and read half, swap, read the rest.
        swapdir = os.path.join(env.mnt, "swap")
        check.ok(sorted(os.listdir(os.path.join(swapdir, "s1"))) == ["snapshot.xml", "vda.delta", "vda.raw"],
                 "swap/s1 is listed")
        f1 = open(os.path.join(swapdir, "s1", "vda.raw"), "rb")
        f2 = open(os.path.join(swapdir, "s2", "vda.raw"), "rb")
        try:
            head = f1.read(SIZE // 2)
            check.ok(head == oracle_swap[:SIZE // 2], "swap/s1 first half before the swap")
            tmp = os.path.join(env.images, "swap-new")
            os.symlink(secret, tmp)
            os.rename(tmp, doms["swap"].base["vda"])
            tail = f1.read()
            no_leak(tail, "swap/s1 open before the swap")
            check.ok(head + tail == oracle_swap, "swap/s1 open before the swap keeps its bytes")
            f2.seek(3 * MiB)
            rest = f2.read()
            no_leak(rest, "swap/s2 open before the swap")
            s2 = os.path.join(env.dir, "swap-s2.raw")
            # The oracle of s2 as it was: o1 over the original file.
            m.run("qemu-img", "convert", "-U", "-O", "raw", "--image-opts",
                  "driver=qcow2,file.filename=%s,backing.driver=raw,"
                  "backing.file.filename=%s" % (doms["swap"].o1["vda"],
                                                os.path.join(env.images, "swap-real.raw")), s2)
            with open(s2, "rb") as f:
                check.ok(rest == f.read()[3 * MiB:], "swap/s2 open before the swap keeps its bytes")
        finally:
            f1.close()
            f2.close()
        for snap in ("s1", "s2"):
            path = os.path.join(swapdir, snap, "vda.raw")
            fd = None
            try:
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                data = os.pread(fd, MiB, 5 * MiB)
                no_leak(data, "swap/%s after the swap" % snap)
                err = None
            except OSError as e:
                err = e.errno
            finally:
                if fd is not None:
                    os.close(fd)
            check.ok(err == errno.EIO, "swap/%s: a new open after the swap fails with EIO (%s)"
                     % (snap, errno.errorcode.get(err, err)))

        check_healthy(env, doms["healthy"], "after")
    finally:
        d.stop()

    check.ok(not any(MARKER in b for b in seen), "no marker in %d reads" % len(seen))

if __name__ == "__main__":
    m.main(test, "attacks")
