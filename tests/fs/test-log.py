#!/usr/bin/env python3
"""test-log: what the daemon's log says, through the mount (embed root).

  - Without debug, reading the tree logs no debug line; with `-o debug`
    (the fstab-friendly form of -d) every request has its trace line
    (LOOKUP, GETATTR, OPEN ...).
  - Every changing call logs exactly one line at message level when it
    has finished, saying what was done: mkdir, mv (rename), mv to @now
    (revert), rmdir and rm -r (delete, with what the planner chose for
    the disk, why, and the bytes each direction would have moved), and a
    refused call its reason.
"""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

MiB = 1 << 20
check = m.Checker()
MESSAGE = re.compile(r"\bvirtsnapfs\[\d+\]: Message: (.*)$")
DEBUG = re.compile(r"\b(virtsnapfs|libfuse)\[\d+\]: DEBUG: (.*)$")


def build(env):
    vda = os.path.join(env.images, "logd-vda.qcow2")
    m.qemu_img_create(vda, 64 * MiB)
    m.qemu_io_write(vda, "qcow2", 0x61, 0, 8 * MiB)
    env.define("logd", [("vda", "virtio", vda, "qcow2")])
    # s2's point image gets 8 MiB on top of s1's, its child 1 MiB: the
    # planner has two directions with different costs to weigh.
    for name, (pattern, off, length) in (("s1", (0x62, 8 * MiB, 8 * MiB)),
                                         ("s2", (0x63, 16 * MiB, 1 * MiB)),
                                         ("s3", (0x64, 32 * MiB, 1 * MiB))):
        env.snapshot("logd", name)
        m.qemu_io_write(env.active_image("logd", "vda"), "qcow2", pattern, off, length)


def one_message(d, action, pattern, expect_ok=True):
    """Runs action (a callable); checks it added exactly one message-level
    line to the log and that it matches pattern."""
    before = len(d.log_text().splitlines())
    err = None
    try:
        action()
    except OSError as e:
        err = e
    if expect_ok and err is not None:
        raise AssertionError("%s failed: %s" % (pattern, err))
    if not expect_ok and err is None:
        raise AssertionError("%s: expected a refusal" % pattern)
    new = d.log_text().splitlines()[before:]
    messages = [MESSAGE.search(l).group(1) for l in new if MESSAGE.search(l)]
    check.ok(len(messages) == 1 and re.search(pattern, messages[0]),
             "one message line /%s/: %s" % (pattern, messages))
    return messages[0]


def test(env):
    build(env)
    dom = os.path.join(env.mnt, "logd")

    d = m.Daemon(env)
    os.listdir(dom)
    os.stat(os.path.join(dom, "s1", "vda.raw"))
    d.stop()
    debug = [l for l in d.log_text().splitlines() if DEBUG.search(l)]
    check.ok(debug == [], "no debug lines without -o debug (%d)" % len(debug))

    d = m.Daemon(env, "debug")
    os.listdir(dom)
    with open(os.path.join(dom, "s1", "vda.raw"), "rb") as f:
        f.read(4096)

    def trace():
        return [DEBUG.search(l).group(2) for l in d.log_text().splitlines() if DEBUG.search(l)]

    # The kernel sends RELEASE after close() has returned.
    m.wait_for(lambda: any(t.startswith("RELEASE logd/s1/vda.raw") for t in trace()),
               what="RELEASE in the trace")
    for op in ("INIT ", "GETATTR / ", "OPENDIR logd ", "LOOKUP logd/s1 ",
               "OPEN logd/s1/vda.raw => size", "READ logd/s1/vda.raw off=0 ",
               "RELEASE logd/s1/vda.raw", "unique: "):
        check.ok(any(t.startswith(op) for t in trace()), "-o debug traces %r" % op)

    one_message(d, lambda: os.mkdir(os.path.join(dom, "m1")),
                r"^domain logd: created snapshot m1 in \d+\.\d s \(offline, 1 disks")
    one_message(d, lambda: os.rename(os.path.join(dom, "m1"), os.path.join(dom, "m2")),
                r"^domain logd: rename m1 to m2: done in \d+\.\d s: ")
    line = one_message(d, lambda: os.rmdir(os.path.join(dom, "s2")),
                       r"^domain logd: delete s2: done in \d+\.\d s: \d+ steps, domain shut "
                       r"off; disk vda: (commit \S+ into \S+, [\d.]+ \S+ \(pull would move|"
                       r"pull \S+ into \S+, [\d.]+ \S+ \(commit would move) [\d.]+ \S+\), "
                       r"because .+")
    m.log("delete:", line)
    one_message(d, lambda: m.run("rm", "-r", os.path.join(dom, "m2")),
                r"^domain logd: delete m2: done in \d+\.\d s: ")
    one_message(d, lambda: os.rename(os.path.join(dom, "s1"), os.path.join(dom, "@now")),
                r"^domain logd: revert to s1: done in \d+\.\d s: ")
    one_message(d, lambda: os.mkdir(os.path.join(env.mnt, "nodomain")),
                r"^mkdir /nodomain: snapshots are made in a domain directory \(EPERM\)",
                expect_ok=False)
    names = sorted(os.listdir(dom))
    check.ok("s1" in names and "s3" in names and "s2" not in names and "m2" not in names
             and any(n.startswith("pre-revert-") for n in names), "tree after the calls: %s"
             % names)
    d.stop()


m.main(test, "log")
