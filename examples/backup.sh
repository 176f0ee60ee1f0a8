#!/usr/bin/env bash
# backup.sh: incremental backups of a domain's disks through virtsnapfs.
#
# usage: examples/backup.sh [--verify] MOUNT/DOMAIN DEST [SNAPSHOT]
#
# Backs up every disk of snapshot SNAPSHOT of the domain (a directory name
# as the mount shows it; default: the newest snapshot) into DEST:
#   DEST/<disk>.img   a sparse raw image of the disk at that snapshot
#   DEST/<disk>.at    which snapshot the image is at: its directory name
#                     and creation time (the directory's mtime)
# The first run of a disk copies <snapshot>/<disk>.raw whole, skipping
# holes.  A later run finds the way from the snapshot the image is at to
# the new one through the snapshots' parents (user.virtsnapfs.parent of
# each <disk>.delta) and writes the data extents of each step's .delta
# over the image, in order; each .delta holds exactly what changed since
# its parent.  When there is no such way (the recorded snapshot was
# deleted, a revert moved to another branch, a name now means another
# snapshot) the disk is copied whole again.  --verify compares each image
# with <snapshot>/<disk>.raw afterwards.
#
# Applying a delta is idempotent, and <disk>.at is replaced (atomically)
# only after the image is synced, so an interrupted run is simply run
# again.  While a delta is applied, <disk>.pending names it: if the next
# run's way does not start with that very snapshot (it was deleted, or
# the newest snapshot is on another branch), the half-updated image is
# copied whole again.  Each file is held open while it is read, which
# pins its point in time: a snapshot cannot be deleted under a running
# backup (rmdir fails with EBUSY meanwhile).
#
# Needs bash and python3 (standard library only).
set -euo pipefail

VERIFY=0
if [ "${1:-}" = "--verify" ]; then
  VERIFY=1
  shift
fi
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  sed -n '3,30p' "$0" >&2
  exit 2
fi

exec python3 - "$VERIFY" "$@" <<'PY'
import ctypes
import errno
import os
import sys

CHUNK = 1 << 20
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2

verify = sys.argv[1] == "1"
domain_dir, dest = sys.argv[2], sys.argv[3]
wanted = sys.argv[4] if len(sys.argv) > 4 else None

libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def say(*args):
    print("backup:", *args, flush=True)


def extents(fd, size):
    """Data extents of fd by SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def punch(fd, offset, length):
    """Makes [offset, offset + length) a hole (it reads as zeros)."""
    if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return
    os.pwrite(fd, bytes(length), offset)  # no hole punching here: write zeros


def copy_extents(src, dst):
    """Writes the data extents of file src over file dst (same offsets),
    after cutting or growing dst to src's size.  Zeros inside an extent
    are changes to zeros: they become holes in dst.  Returns bytes copied."""
    copied = 0
    with open(src, "rb", buffering=0) as s, open(dst, "r+b", buffering=0) as d:
        size = os.fstat(s.fileno()).st_size
        os.ftruncate(d.fileno(), size)
        for start, end in extents(s.fileno(), size):
            pos = start
            while pos < end:
                n = min(CHUNK, end - pos)
                buf = os.pread(s.fileno(), n, pos)
                if len(buf) != n:
                    raise OSError(errno.EIO, "%s: short read at %d" % (src, pos))
                if buf.count(0) == n:
                    punch(d.fileno(), pos, n)
                else:
                    os.pwrite(d.fileno(), buf, pos)
                pos += n
            copied += end - start
        os.fsync(d.fileno())
    return copied


def points():
    """Snapshot directory names, oldest first (the mount's readdir order)."""
    return [e for e in os.listdir(domain_dir) if e != "@now"]


def ctime_of(snap):
    return str(int(os.stat(os.path.join(domain_dir, snap)).st_mtime))


def read_at(disk):
    try:
        with open(os.path.join(dest, disk + ".at")) as f:
            name, when = f.read().rstrip("\n").rsplit("\t", 1)
            return name, when
    except FileNotFoundError:
        return None


def sync_dir():
    dirfd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def write_at(disk, snap, what="at"):
    path = os.path.join(dest, disk + "." + what)
    with open(path + ".new", "w") as f:
        f.write("%s\t%s\n" % (snap, ctime_of(snap)))
        f.flush()
        os.fsync(f.fileno())
    os.rename(path + ".new", path)
    sync_dir()


def read_pending(disk):
    try:
        with open(os.path.join(dest, disk + ".pending")) as f:
            return tuple(f.read().rstrip("\n").rsplit("\t", 1))
    except FileNotFoundError:
        return None


def clear_pending(disk):
    try:
        os.unlink(os.path.join(dest, disk + ".pending"))
    except FileNotFoundError:
        return
    sync_dir()


def steps(disk, snap, at):
    """The snapshots whose deltas lead from `at` (name, ctime) to snap,
    oldest first; None when snap does not descend from it."""
    path = []
    cur = snap
    while True:
        if cur == at[0]:
            return path[::-1] if ctime_of(cur) == at[1] else None
        path.append(cur)
        try:
            parent = os.getxattr(os.path.join(domain_dir, cur, disk + ".delta"),
                                 "user.virtsnapfs.parent").decode()
        except FileNotFoundError:
            return None
        if parent == "" or not os.path.isdir(os.path.join(domain_dir, parent)) or len(path) > 10000:
            return None
        cur = parent


def full_copy(disk, snap):
    img = os.path.join(dest, disk + ".img")
    tmp = img + ".partial"
    with open(tmp, "wb"):
        pass
    n = copy_extents(os.path.join(domain_dir, snap, disk + ".raw"), tmp)
    os.rename(tmp, img)
    write_at(disk, snap)
    clear_pending(disk)
    say("%s: full copy of %s (%d bytes of data)" % (disk, snap, n))


def backup_disk(disk, snap):
    img = os.path.join(dest, disk + ".img")
    at = read_at(disk)
    if at is None or not os.path.exists(img):
        return full_copy(disk, snap)
    path = steps(disk, snap, at)
    if path is None:
        say("%s: %s is not an ancestor of %s any more: copying whole" % (disk, at[0], snap))
        return full_copy(disk, snap)
    pending = read_pending(disk)
    if pending is not None and (not path or (path[0], ctime_of(path[0])) != pending):
        say("%s: the delta of %s was left half applied and is not the next step: copying whole"
            % (disk, pending[0]))
        return full_copy(disk, snap)
    if not path:
        say("%s: already at %s" % (disk, snap))
        return
    for step in path:
        write_at(disk, step, "pending")
        n = copy_extents(os.path.join(domain_dir, step, disk + ".delta"), img)
        write_at(disk, step)
        clear_pending(disk)
        say("%s: applied the delta of %s (%d bytes)" % (disk, step, n))


def same(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


snaps = points()
if not snaps:
    sys.exit("backup: %s has no snapshots" % domain_dir)
snap = wanted or snaps[-1]
if snap not in snaps:
    sys.exit("backup: no snapshot %s in %s" % (snap, domain_dir))
os.makedirs(dest, exist_ok=True)
disks = sorted(e[:-4] for e in os.listdir(os.path.join(domain_dir, snap)) if e.endswith(".raw"))
status = 0
for disk in disks:
    backup_disk(disk, snap)
    if verify:
        if same(os.path.join(dest, disk + ".img"), os.path.join(domain_dir, snap, disk + ".raw")):
            say("%s: verified against %s/%s.raw" % (disk, snap, disk))
        else:
            say("%s: DIFFERS from %s/%s.raw" % (disk, snap, disk))
            status = 1
sys.exit(status)
PY
