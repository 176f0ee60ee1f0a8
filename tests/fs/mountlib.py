"""mountlib: helpers for the mount tests of virtsnapfs (Python 3 stdlib only).

An Env is a scratch directory with a libvirt embed root (qemu:///embed),
an image directory, a mount point and a state directory.  Domains and
snapshots are made with virsh and qemu-img before mounting: only one
process at a time may use an embed root.  Daemon runs virtsnapfs in the
foreground with its stderr captured, and stop() fails the test when the
daemon logged a warning or worse that the test did not expect.

The oracle for what a point in time must read as is
`qemu-img convert -O raw` of its point image.
"""

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SRCDIR = os.path.dirname(os.path.abspath(__file__))
VIRTSNAPFS = os.environ.get("VIRTSNAPFS")

# namespaces = []: QEMU otherwise runs in a mount namespace of its own,
# copied from the host's at its start.  Where / is not a shared mount (as
# in containers), unmounts do not propagate into it: a copy of any FUSE
# mount that existed then (another test's) keeps that daemon's connection
# alive after `fusermount3 -u`, and the daemon never exits.
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
namespaces = []
"""

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
{disks}  </devices>
</domain>
"""

DISK_XML = """    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{path}'/>
      <target dev='{target}' bus='{bus}'/>
    </disk>
"""

# A daemon log line at warning level or worse, from our writer.
BAD_LOG = re.compile(r"\b(virtsnapfs|libfuse)\[\d+\]: (WARNING|CRITICAL|ERROR):")
# A report of AddressSanitizer, LeakSanitizer or UBSan (build-asan): always
# a failure, whatever the test expects.
SANITIZER_LOG = re.compile(r"ERROR: (Address|Leak)Sanitizer|: runtime error: |"
                           r"SUMMARY: (Address|Leak|UndefinedBehavior)Sanitizer")


def log(*args):
    print("#", *args, flush=True)


def skip(reason):
    print("SKIP:", reason, flush=True)
    sys.exit(77)


def need_tools():
    if VIRTSNAPFS is None or not os.access(VIRTSNAPFS, os.X_OK):
        skip("VIRTSNAPFS not set (run through meson test)")
    for tool in ("virsh", "qemu-img", "qemu-io", "fusermount3", "cp"):
        if shutil.which(tool) is None:
            skip(tool + " missing")
    if not os.path.exists("/dev/fuse"):
        skip("/dev/fuse missing")
    if os.geteuid() != 0:
        skip("mount tests run as root (embed root with user root)")


def run(*cmd, check=True, quiet=False, **kw):
    """Runs cmd; returns stdout as text; raises with stderr on failure."""
    cmd = [str(c) for c in cmd]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    if not quiet and p.returncode == 0:
        pass
    return p.stdout


def qemu_caps(how, cache):
    """Seeds a root's cache of QEMU's capabilities from the run's shared
    copy, or keeps what it probed there (qemu-caps.sh)."""
    run("sh", os.path.join(SRCDIR, "qemu-caps.sh"), how, cache)


class Env:
    def __init__(self, name, uri=None):
        base = os.environ.get("VIRTSNAPFS_TEST_TMP", "/var/tmp")
        self.dir = tempfile.mkdtemp(prefix="virtsnapfs-%s-" % name, dir=base)
        os.chmod(self.dir, 0o755)
        self.root = os.path.join(self.dir, "root")
        self.images = os.path.join(self.dir, "images")
        self.mnt = os.path.join(self.dir, "mnt")
        self.state = os.path.join(self.dir, "state")
        for d in (self.root + "/etc", self.images, self.mnt, self.state):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.images, 0o755)
        self.share_mountpoint()
        with open(self.root + "/etc/qemu.conf", "w") as f:
            f.write(QEMU_CONF)
        qemu_caps("seed", self.root + "/cache/qemu/capabilities")
        self.uri = uri or "qemu:///embed?root=" + self.root
        self.domains = []
        # Objects whose stop() runs after the domains are gone, before the
        # directory is removed (a PrivateLibvirtd).
        self.services = []
        self.keep = os.environ.get("VIRTSNAPFS_KEEP_TMP") == "1"
        # libvirt's own log would print a warning about security_driver
        # "none" on every connection: send it to a file.
        self.env = dict(os.environ)
        self.env["LIBVIRT_LOG_OUTPUTS"] = "3:file:%s/libvirt-client.log" % self.dir

    def share_mountpoint(self):
        """Put the mount point under a shared mount, as / is on a systemd host.

        A new mount namespace (a private libvirtd's, test-install's, a
        QEMU's unless qemu.conf says namespaces = [] as ours do) copies
        every mount there is, the daemon's FUSE mount too.  Where / is
        private, as in containers, an unmount does not reach the copy, the
        FUSE connection stays open and the daemon never exits.  Under a
        shared mount the copy is a slave and goes with ours."""
        run("mount", "--bind", self.dir, self.dir)
        run("mount", "--make-shared", self.dir)

    def unshare_mountpoint(self):
        # os.path.ismount() cannot see a bind mount of a directory onto
        # itself (same device): undo the one mount made above.
        subprocess.run(["umount", "-l", self.dir], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    # -- libvirt ---------------------------------------------------------
    READ_ONLY = ("domblklist", "snapshot-list", "snapshot-dumpxml", "dumpxml", "domstate",
                 "list")
    # Each virsh on an embed root starts a QEMU driver of its own, which
    # reconnects to every running VM in a thread.  A command that needs no
    # job (domblklist, list, ...) can finish first; virsh then exits under
    # that thread, whose host CPU probe reads a libnuma mask that exit has
    # freed: SIGSEGV (libvirt 9.0).  `domstats --block` takes a job on every
    # running domain, so it returns only when every reconnect is done.  It
    # runs first in the same virsh and its output is dropped; virsh's exit
    # status is the last command's.
    SYNC_MARK = "@virtsnapfs-reconnected@"
    SYNC = "domstats --block --list-active; echo " + SYNC_MARK + "; "

    def virsh(self, *args, check=True):
        """virsh on the env's URI, after the embed driver's reconnects (see
        SYNC).  Should virsh still die of a signal, a read-only command is
        run again; for others the crash is logged and the command's effect
        is checked by the caller's next steps."""
        args = [str(a) for a in args]
        embed = self.uri.startswith("qemu:///embed")
        if embed:
            cmd = ["virsh", "-q", "-c", self.uri, self.SYNC + " ".join(map(shlex.quote, args))]
        else:
            cmd = ["virsh", "-q", "-c", self.uri] + args
        rerun = args[0] in self.READ_ONLY or args[0].startswith("qemu-monitor")
        for attempt in range(3):
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=self.env)
            out = p.stdout.split(self.SYNC_MARK, 1)[-1] if embed else p.stdout
            if p.returncode >= 0:
                break
            log("virsh %s died of signal %d (attempt %d)" % (args[0], -p.returncode, attempt))
            if not rerun:
                return out
        if check and p.returncode != 0:
            raise AssertionError("%s: exit %d\n%s%s" % (" ".join(cmd), p.returncode, out,
                                                         p.stderr))
        return out

    def define(self, name, disks, start=False):
        """disks: list of (target, bus, path, fmt)."""
        xml = DOMAIN_XML.format(name=name, disks="".join(
            DISK_XML.format(target=t, bus=b, path=p, fmt=f) for t, b, p, f in disks))
        path = os.path.join(self.dir, name + ".xml")
        with open(path, "w") as f:
            f.write(xml)
        self.virsh("define", path)
        self.domains.append(name)
        if start:
            self.virsh("start", name)

    def snapshot(self, dom, name):
        self.virsh("snapshot-create-as", dom, name, "--disk-only", "--atomic")

    def active_image(self, dom, target):
        out = self.virsh("domblklist", dom, "--details")
        for line in out.splitlines():
            f = line.split(None, 3)
            if len(f) == 4 and f[2] == target:
                return f[3]
        raise AssertionError("no disk %s in %s:\n%s" % (target, dom, out))

    def hmp(self, dom, cmd):
        return self.virsh("qemu-monitor-command", dom, "--hmp", cmd)

    def qom_disk(self, dom, target):
        """The QOM path of a disk's device, for qemu-io through the monitor."""
        out = self.hmp(dom, "info block")
        # "libvirt-1-format: /path (qcow2)\n    Attached to: /machine/peripheral/virtio-disk0/virtio-backend"
        blocks = out.split("\n\n") if "\n\n" in out else re.split(r"\n(?=\S)", out)
        path = self.active_image(dom, target)
        for b in blocks:
            if path in b:
                m = re.search(r"Attached to:\s+(\S+)", b)
                if m:
                    return m.group(1)
        raise AssertionError("no device for %s in:\n%s" % (target, out))

    def guest_write(self, dom, target, pattern, offset, length):
        dev = self.qom_disk(dom, target)
        # qemu-io prints to QEMU's stdout, not to the monitor: no output.
        self.hmp(dom, 'qemu-io -d %s "write -P 0x%x %d %d"' % (dev, pattern, offset, length))

    def cleanup(self):
        for dom in self.domains:
            self.virsh("destroy", dom, check=False)
            snaps = self.virsh("snapshot-list", dom, "--name", check=False).splitlines()
            for s in filter(None, (x.strip() for x in snaps)):
                self.virsh("snapshot-delete", dom, s, "--metadata", check=False)
            out = self.virsh("undefine", dom, check=False)
            if dom in self.virsh("list", "--all", "--name", check=False).split():
                log("could not undefine", dom, out)
        for service in self.services:
            service.stop()
        qemu_caps("keep", self.root + "/cache/qemu/capabilities")
        self.unshare_mountpoint()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log("kept", self.dir)


def qemu_img_create(path, size, fmt="qcow2", backing=None, backing_fmt=None, extra=()):
    cmd = ["qemu-img", "create", "-q", "-f", fmt]
    if backing:
        cmd += ["-b", backing, "-F", backing_fmt or "qcow2"]
    cmd += list(extra) + [path]
    if size is not None:
        cmd.append(str(size))
    run(*cmd)


def qemu_io_write(path, fmt, pattern, offset, length):
    run("qemu-io", "-f", fmt, "-c", "write -P 0x%x %d %d" % (pattern, offset, length), path)


def qemu_io_zero(path, fmt, offset, length):
    run("qemu-io", "-f", fmt, "-c", "write -z %d %d" % (offset, length), path)


def image_info(path):
    return json.loads(run("qemu-img", "info", "-U", "--output=json", path))


def backing_of(path):
    info = image_info(path)
    return info.get("full-backing-filename") or info.get("backing-filename")


def oracle(path, out):
    """qemu-img convert -O raw of the chain under path."""
    run("qemu-img", "convert", "-U", "-O", "raw", path, out)


def data_ranges_qemu(path):
    """Allocated (data) ranges of the chain under path, merged."""
    out = json.loads(run("qemu-img", "map", "-U", "--output=json", path))
    return merge([(e["start"], e["start"] + e["length"]) for e in out if e.get("data")])


def data_ranges_seek(path):
    """Data ranges of a file by SEEK_DATA/SEEK_HOLE."""
    ranges = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return merge(ranges)


# The daemon's default -o hole_granularity, in bytes: SEEK_DATA/SEEK_HOLE
# report holes in aligned granules of this size.
HOLE_GRANULE = 1 << 20


def widen(ranges, size, granule=HOLE_GRANULE):
    """Data ranges as the daemon reports them in granules: each widened
    to granule boundaries (the last granule ends at size), merged."""
    return merge([(s - s % granule, min(-(-e // granule) * granule, size)) for s, e in ranges])


def merge(ranges):
    out = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def sha(path):
    """sha256 of a file's contents, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1024 * 1024)
            if not b:
                return h.hexdigest()
            h.update(b)


def files_equal(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(1 << 20)
            y = fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def copy_sparse(src, dst):
    run("cp", "--sparse=always", src, dst)


def allocated(path):
    return os.stat(path).st_blocks * 512


def drop_cached(path):
    """Drops the kernel's cached pages of path, a file on the mount: the
    next read of them goes to the daemon again."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_pages(path, fd=None):
    """Which pages of path are in the kernel's page cache (mincore(2) of a
    shared mapping): a list of booleans, one per page.  Through fd, an open
    descriptor of path, if given: opening an @now file again drops its
    pages (it is not kept across opens)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.stat(path).st_size
    page = os.sysconf("SC_PAGE_SIZE")
    vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap " + path)
        try:
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore " + path)
        finally:
            libc.munmap(addr, size)
    finally:
        if own:
            os.close(fd)
    return [bool(b & 1) for b in vec]


class Daemon:
    """virtsnapfs -f on env, stderr captured in env.dir/daemon-N.log."""

    count = 0

    def __init__(self, env, *opts, uri=None, expect=()):
        self.env = env
        Daemon.count += 1
        self.logpath = os.path.join(env.dir, "daemon-%d.log" % Daemon.count)
        self.expect = [re.compile(e) for e in expect]
        args = [VIRTSNAPFS, uri or env.uri, env.mnt, "-f",
                "-o", "state_dir=" + env.state, "-o", "image_dir=" + env.images]
        for o in opts:
            args += ["-o", o]
        if os.environ.get("VIRTSNAPFS_DEBUG") == "1":
            args.append("-d")
        log("mount:", " ".join(args))
        self.logfile = open(self.logpath, "w")
        self.proc = subprocess.Popen(args, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     env=env.env)
        wait_mounted(env.mnt, self.proc)

    def log_text(self):
        with open(self.logpath) as f:
            return f.read()

    def check_sanitizer(self):
        text = self.log_text()
        san = SANITIZER_LOG.search(text)
        assert not san, "daemon sanitizer report:\n" + text[max(0, san.start() - 200):][:20000]

    def check_log(self):
        self.check_sanitizer()
        text = self.log_text()
        bad = []
        for line in text.splitlines():
            if BAD_LOG.search(line) and not any(e.search(line) for e in self.expect):
                bad.append(line)
        assert not bad, "daemon logged unexpected warnings:\n" + "\n".join(bad)

    def stop(self, how="fusermount"):
        if how == "fusermount":
            run("fusermount3", "-u", self.env.mnt)
        elif how == "kill9":
            self.proc.kill()
            self.proc.wait()
            run("fusermount3", "-u", "-z", self.env.mnt, check=False)
            self.logfile.close()
            self.check_sanitizer()
            return
        else:
            self.proc.send_signal(how)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stacks = thread_stacks(self.proc.pid)
            self.proc.kill()
            raise AssertionError("daemon did not exit after unmount; its threads were:\n" + stacks[-30000:])
        self.logfile.close()
        assert not os.path.ismount(self.env.mnt), "still mounted"
        self.check_sanitizer()
        assert rc == 0, "daemon exit status %d:\n%s" % (rc, self.log_text())
        self.check_log()


def thread_stacks(pid):
    """Every thread's backtrace of a hung process, for the failure message."""
    if not shutil.which("gdb"):
        return "(gdb is not installed: no backtraces)"
    r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    return r.stdout


def wait_mounted(mnt, proc=None, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.ismount(mnt):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError("daemon exited with %d before mounting" % proc.returncode)
        time.sleep(0.05)
    raise AssertionError("not mounted after %d s" % timeout)


def wait_for(pred, timeout=60, what="condition"):
    # The bound is for what never happens; tests run several at once on
    # loaded machines, so it is not a measure of speed.
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


class Checker:
    """Counts checks; main() prints a summary and fails on the first error."""

    def __init__(self):
        self.n = 0

    def ok(self, cond, msg):
        self.n += 1
        if not cond:
            raise AssertionError(msg)
        log("ok", self.n, "-", msg)


def main(fn, name):
    need_tools()
    env = Env(name)
    try:
        fn(env)
    except BaseException:
        env.keep = True
        for mnt in (env.mnt,):
            subprocess.run(["fusermount3", "-u", "-z", mnt], stderr=subprocess.DEVNULL)
        raise
    finally:
        env.cleanup()


class PrivateLibvirtd:
    """A libvirtd of the test's own, for changes behind the daemon's back.

    An embed root belongs to one process, so a test that changes libvirt
    while virtsnapfs is mounted needs a libvirt daemon both can talk to.
    `libvirtd -f CONFIG` with its own unix_sock_dir is reached with
    qemu:///system?socket=DIR/libvirt-sock.  Run as root, libvirtd keeps
    its state in the system's paths (/etc/libvirt, /run/libvirt,
    /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt), so it runs in
    a mount namespace of its own where directories of the env are bound
    over those: tests with a libvirtd each run in parallel, and none sees
    the host's or another test's domains.  Its qemu.conf is the embed
    roots' (QEMU runs as root, logs to a file, no virtlogd).  The
    namespace is a slave of the host's (unshare --propagation slave): the
    FUSE mounts of this and other tests, all under shared mounts (Env.
    share_mountpoint), leave it when they are unmounted.  The directories
    persist across stop and start(), as a system libvirtd's do across a
    restart.

    With the system's qemu.conf, QEMU would run as libvirt-qemu; where
    /dev/kvm is root's alone (0600, as here), libvirt probes QEMU with
    CAP_DAC_OVERRIDE, finds KVM, then finds /dev/kvm closed to that user
    and drops its capabilities cache as outdated on every lookup: each
    define, snapshot or start probed QEMU again (tens of seconds).
    """

    DIRS = (("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
            ("cache", "/var/cache/libvirt"), ("log", "/var/log/libvirt"))
    # Runs in the new namespace: $1 is the base directory.
    START = ('set -e; for d in ' + " ".join("%s:%s" % d for d in DIRS) + '; do '
             'mkdir -p "${d#*:}"; mount --bind "$1/${d%%:*}" "${d#*:}"; done; '
             'exec libvirtd -f "$1/libvirtd.conf" -p "$1/libvirtd.pid"')

    def __init__(self, env):
        for tool in ("libvirtd", "unshare"):
            if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
                skip(tool + " missing")
        self.env = env
        self.proc = None
        self.base = os.path.join(env.dir, "libvirtd")
        for d, _ in self.DIRS:
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        with open(os.path.join(self.base, "etc", "qemu.conf"), "w") as f:
            f.write(QEMU_CONF)
        self.caps = os.path.join(self.base, "cache", "qemu", "capabilities")
        qemu_caps("seed", self.caps)
        sockdir = os.path.join(env.dir, "sock")
        os.makedirs(sockdir, exist_ok=True)
        with open(os.path.join(self.base, "libvirtd.conf"), "w") as f:
            f.write('unix_sock_dir = "%s"\nauth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                    'log_outputs = "3:file:%s/libvirtd.log"\n' % (sockdir, env.dir))
        env.uri = "qemu:///system?socket=%s/libvirt-sock" % sockdir
        env.services.append(self)
        self.start()
        log("private libvirtd at", env.uri)

    def start(self):
        """Starts libvirtd (again) and waits until it answers."""
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "--",
                                      "sh", "-c", self.START, "sh", self.base],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers():
            return self.proc.poll() is not None or subprocess.run(
                ["virsh", "-c", self.env.uri, "version"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL).returncode == 0
        wait_for(answers, timeout=60, what="private libvirtd")
        assert self.proc.poll() is None, "libvirtd exited with %d; see %s/libvirtd.log" % (
            self.proc.returncode, self.env.dir)

    def kill(self, sig=signal.SIGTERM):
        """Stops libvirtd with sig; its domains' QEMUs go on running."""
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """Stops libvirtd, then any QEMU it left (by its pid files), and
        keeps what it probed of QEMU for the next tests.  Env.cleanup()
        calls it."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        for pidfile in glob.glob(os.path.join(self.base, "run", "qemu", "*.pid")):
            with contextlib.suppress(OSError, ValueError):
                pid = int(open(pidfile).read().strip())
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    if b"qemu-system" not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
                log("stopped QEMU %d left by the test" % pid)
        qemu_caps("keep", self.caps)


def main_libvirtd(fn, name):
    """main() for tests that need a libvirt daemon (PrivateLibvirtd)."""
    need_tools()
    env = Env(name)
    try:
        PrivateLibvirtd(env)
        fn(env)
    except BaseException:
        env.keep = True
        subprocess.run(["fusermount3", "-u", "-z", env.mnt], stderr=subprocess.DEVNULL)
        raise
    finally:
        env.cleanup()
