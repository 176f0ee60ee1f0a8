#!/usr/bin/env python3
"""test-install: what `meson install` puts on a machine, used as users will.

From the build tree (VIRTSNAPFS_BUILD_ROOT), `meson install --destdir D`;
then:
  - the daemon, virtsnapfs(1) and virtsnapfs.service are where `meson
    introspect --installed` says, the page renders without groff warnings,
    the unit's ExecStart names the installed daemon, and `systemd-analyze
    verify` accepts the unit (with D prefixed to that path, as it will be
    once installed at /);
  - with the daemon at its installed path (see below), `mount -t
    fuse.virtsnapfs URI MNT -o ...` (with the fstab-only options users
    add) mounts an embed root through mount.fuse3, a point in time reads
    as `qemu-img convert -O raw` of its point image, `umount` ends the
    daemon with status 0;
  - the same through an fstab line in an alternate fstab (`mount -T`);
  - the unit's ExecStartPre/ExecStart/ExecStop command lines, as parsed
    from the installed unit with the URI and mount point replaced, mount
    and unmount cleanly; and so does ExecStart followed by the stop signal
    systemd sends (SIGTERM to the main process).
systemd is not PID 1 here, so the unit's commands run from this test.
mount(8) runs helpers with a fixed PATH (/usr/local/sbin:/usr/local/bin:
/usr/sbin:/usr/bin:/sbin:/bin), and mount.fuse3 finds the daemon there:
so the test runs in a mount namespace of its own (unshare -m) where the
installed bindir (/usr/local/bin by default) is a directory of symlinks
to the real one's entries plus D's virtsnapfs.  Mounts made in there are
invisible outside and go with the namespace.  It is a slave of the
host's, so that the FUSE mounts of tests running beside this one leave
it when they are unmounted (mountlib.Env.share_mountpoint).
The daemons run in the background (as installed), so their log goes to
syslog: the test becomes their subreaper to collect their exit status.
"""

import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mountlib as m  # noqa: E402

if os.environ.get("VIRTSNAPFS_TEST_NAMESPACE") != "1" and shutil.which("unshare"):
    os.environ["VIRTSNAPFS_TEST_NAMESPACE"] = "1"
    os.execvp("unshare", ["unshare", "--mount", "--propagation", "slave", sys.executable]
              + sys.argv)

MiB = 1 << 20
check = m.Checker()
BUILD = os.environ.get("VIRTSNAPFS_BUILD_ROOT")
PR_SET_CHILD_SUBREAPER = 36


def install(env):
    """meson install --destdir; returns (destdir, {kind: installed path})."""
    dest = os.path.join(env.dir, "destdir")
    m.run("meson", "install", "-C", BUILD, "--destdir", dest, "--no-rebuild", "--quiet")
    installed = json.loads(m.run("meson", "introspect", "--installed", BUILD))
    paths = {}
    for src, dst in installed.items():
        name = os.path.basename(dst)
        if name == "virtsnapfs" and "/bin/" in dst:
            paths["bin"] = dst
        elif name == "virtsnapfs.1":
            paths["man"] = dst
        elif name == "virtsnapfs.service":
            paths["unit"] = dst
    check.ok(sorted(paths) == ["bin", "man", "unit"],
             "meson installs the daemon, the man page and the unit: %s" % paths)
    check.ok(paths["man"].endswith("/man1/virtsnapfs.1"), "man page in man1")
    check.ok(paths["unit"].endswith("/systemd/system/virtsnapfs.service"),
             "unit in a systemd system unit directory: %s" % paths["unit"])
    return dest, paths


def in_dest(dest, path):
    return dest + path


def check_files(env, dest, paths):
    binary = in_dest(dest, paths["bin"])
    check.ok(os.access(binary, os.X_OK), "installed daemon is executable")
    out = m.run(binary, "--version")
    check.ok(out.startswith("virtsnapfs "), "installed daemon runs: " + out.splitlines()[0])
    page = in_dest(dest, paths["man"])
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page], stderr=subprocess.PIPE,
                       text=True)
    check.ok(p.returncode == 0 and p.stderr == "", "man page renders without warnings "
             + p.stderr)
    text = subprocess.run(["man", "-l", page], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=dict(env.env, MANWIDTH="80")).stdout
    check.ok("EREMOTE" in text and ".delta" in text and "fuse.virtsnapfs" in text,
             "man -l shows the page")

    unit = in_dest(dest, paths["unit"])
    cmds = unit_commands(unit)
    start = cmds["ExecStart"][0]
    check.ok(start[0] == paths["bin"], "ExecStart runs the installed daemon %s" % start[0])
    # It checks that the programs exist, at their installed paths (see
    # install_bindir); the man page is checked above.
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", unit], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, cwd=env.dir)
    check.ok(p.returncode == 0 and p.stdout.strip() == "",
             "systemd-analyze verify accepts the unit: %s" % p.stdout.strip())
    return cmds


def install_bindir(env, dest, paths):
    """In this mount namespace, makes the installed daemon appear at its
    installed path: bindir becomes a directory of symlinks to what it
    holds, plus the daemon from the destdir."""
    bindir = os.path.dirname(paths["bin"])
    std_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".split(":")
    check.ok(bindir in std_path, "bindir %s is in the PATH mount(8) gives mount.fuse3" % bindir)
    if os.environ.get("VIRTSNAPFS_TEST_NAMESPACE") != "1":
        m.skip("unshare missing: cannot install into %s privately" % bindir)
    farm = os.path.join(env.dir, "bindir")
    os.makedirs(farm)
    for name in os.listdir(bindir) if os.path.isdir(bindir) else []:
        os.symlink(os.path.join(bindir, name), os.path.join(farm, name))
    shutil.copy2(in_dest(dest, paths["bin"]), os.path.join(farm, "virtsnapfs"))
    os.makedirs(bindir, exist_ok=True)
    m.run("mount", "--bind", farm, bindir)
    check.ok(shutil.which("virtsnapfs", path=":".join(std_path)) == paths["bin"],
             "virtsnapfs is found at %s in this namespace" % paths["bin"])


def unit_commands(unit):
    """Exec*= lines of the [Service] section: {key: [argv, ...]}."""
    cmds = {}
    section = None
    for line in open(unit):
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line.startswith("Exec") and "=" in line:
            key, _, value = line.partition("=")
            argv = shlex.split(value)
            # Prefixes systemd allows before the path: "-", "@", "+", "!".
            while argv and argv[0][:1] in "-@+!" and len(argv[0]) > 1:
                argv[0] = argv[0][1:]
            cmds.setdefault(key, []).append(argv)
    return cmds


def build_domain(env):
    """Shut off, one disk, two snapshots with writes between: returns
    {snapshot: point image}."""
    vda = os.path.join(env.images, "inst-vda.qcow2")
    m.qemu_img_create(vda, 32 * MiB)
    m.qemu_io_write(vda, "qcow2", 0x51, 0, MiB)
    env.define("inst", [("vda", "virtio", vda, "qcow2")])
    points = {}
    for name, pattern in (("s1", 0x52), ("s2", 0x53)):
        before = env.active_image("inst", "vda")
        env.snapshot("inst", name)
        points[name] = before
        m.qemu_io_write(env.active_image("inst", "vda"), "qcow2", pattern, 4 * MiB, 2 * MiB)
    return points


def daemon_pids(mnt):
    """virtsnapfs processes serving mnt (mount.fuse3 runs "virtsnapfs ...",
    the unit the full path)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"virtsnapfs" and mnt.encode() in argv:
            pids.append(int(pid))
    return pids


def reap(pid, what):
    """Waits for an adopted daemon; checks its exit status."""
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            check.ok(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0,
                     "%s: daemon exits with status 0 (wait status %d)" % (what, status))
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("%s: daemon %d did not exit" % (what, pid))


def check_mounted_reads(env, points, what):
    check.ok(os.path.ismount(env.mnt), what + ": mounted")
    fstype = [l.split()[2] for l in open("/proc/mounts") if l.split()[1] == env.mnt]
    check.ok(fstype == ["fuse.virtsnapfs"], what + ": /proc/mounts type %s" % fstype)
    for snap in ("s1",):
        want = os.path.join(env.dir, "oracle-%s.raw" % snap)
        if not os.path.exists(want):
            m.oracle(points[snap], want)
        got = os.path.join(env.mnt, "inst", snap, "vda.raw")
        check.ok(m.files_equal(got, want), "%s: inst/%s/vda.raw reads as qemu-img convert" %
                 (what, snap))


def unmounted(mnt):
    return not any(l.split()[1] == mnt for l in open("/proc/mounts"))


def test(env):
    if BUILD is None:
        m.skip("VIRTSNAPFS_BUILD_ROOT not set (run through meson test)")
    for tool in ("meson", "mount", "umount", "groff", "man", "systemd-analyze"):
        if shutil.which(tool) is None:
            m.skip(tool + " missing")
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    dest, paths = install(env)
    install_bindir(env, dest, paths)
    cmds = check_files(env, dest, paths)
    points = build_domain(env)
    mount_env = env.env
    ours = "state_dir=%s,image_dir=%s" % (env.state, env.images)
    fstab_only = "_netdev,nofail,noauto,x-systemd.requires=libvirtd.service,x-systemd.automount"

    # mount -t fuse.virtsnapfs SOURCE MNT -o ...
    m.run("mount", "-t", "fuse.virtsnapfs", env.uri, env.mnt, "-o", ours + "," + fstab_only,
          env=mount_env)
    pids = daemon_pids(env.mnt)
    check.ok(len(pids) == 1, "mount -t fuse.virtsnapfs started one installed daemon")
    check_mounted_reads(env, points, "mount -t")
    m.run("umount", env.mnt)
    reap(pids[0], "umount")
    check.ok(unmounted(env.mnt), "umount: unmounted")

    # An fstab line, from an alternate fstab; debug traces without
    # keeping mount(8) waiting.
    fstab = os.path.join(env.dir, "fstab")
    with open(fstab, "w") as f:
        f.write("# virtsnapfs test\n%s %s fuse.virtsnapfs %s,%s,debug 0 0\n"
                % (env.uri, env.mnt, ours, fstab_only))
    m.run("mount", "-T", fstab, env.mnt, env=mount_env)
    pids = daemon_pids(env.mnt)
    check.ok(len(pids) == 1, "mount -T FSTAB MNT started one installed daemon")
    check_mounted_reads(env, points, "fstab")
    m.run("umount", env.mnt)
    reap(pids[0], "fstab umount")

    # The unit's commands, with this test's URI and mount point.
    def unit_argv(argv):
        out = []
        for a in argv:
            out.append(a.replace("qemu:///system", env.uri).replace("/mnt/vms", env.mnt))
        if out[0] == paths["bin"]:
            out += ["-o", ours]
        return out

    for stop in ("ExecStop", "SIGTERM"):
        os.rmdir(env.mnt)
        for argv in cmds.get("ExecStartPre", []):
            m.run(*unit_argv(argv), env=mount_env)
        check.ok(os.path.isdir(env.mnt), "ExecStartPre makes the mount point")
        start = unit_argv(cmds["ExecStart"][0])
        m.log("ExecStart:", " ".join(start))
        # Type=forking: the command returns once the mount is there.
        m.run(*start, env=mount_env)
        pids = daemon_pids(env.mnt)
        check.ok(len(pids) == 1, "ExecStart left one daemon behind")
        check_mounted_reads(env, points, "unit ExecStart")
        if stop == "ExecStop":
            for argv in cmds["ExecStop"]:
                m.run(*unit_argv(argv), env=mount_env)
        else:
            os.kill(pids[0], signal.SIGTERM)
        reap(pids[0], "unit " + stop)
        check.ok(unmounted(env.mnt), "unit %s: unmounted" % stop)


m.main(test, "install")
