/* snap.h: changing snapshots, what the FUSE front calls for mkdir, rmdir,
 * mv, the @now freezes of open files, the pins of open points in time,
 * and the job status.
 *
 * A Snap owns one backend (fs/virt, backend.h): it creates it, repairs on
 * its first connection what a crash left (freezes and plan journals), and
 * marks every model it builds (frozen domains, snapshots a running plan
 * deletes).  The front reads models from snap_get_backend().
 *
 * Thread model: every function may be called from any thread.  The
 * changing ones (create, delete, rename, revert, freeze, thaw) block the
 * caller and run one at a time per domain, in the order they arrived;
 * different domains run in parallel.  Pins and the job status never wait
 * for an operation.
 */
#pragma once

#include <glib.h>

#include "backend.h"
#include "chain.h"

G_BEGIN_DECLS

typedef struct _Snap Snap;

typedef struct {
  BackendOptions backend;        /* the libvirt side */
  const char *state_dir;         /* plan journals and freeze records */
  gboolean revert_discard;       /* -o revert=discard: a revert keeps no
                                  * pre-revert snapshot of the present */
} SnapOptions;

/* Creates the state directory and the backend, finishes what a crash left
 * in the state directory (on the first connection), and reads the first
 * model.  Blocks. */
Snap *snap_new(const SnapOptions *options, GError **error);
/* Thaws open freezes, then frees the backend. */
void snap_free(Snap *snap);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Snap, snap_free)

/* The backend: models, the listener.  Borrowed; lives as long as snap. */
Backend *snap_get_backend(Snap *snap);

/* ------------------------------------------------------------------ */
/* Snapshot operations, for mkdir, rmdir and rename.                  */

/* All four block the calling thread until the operation finished (plans
 * can take minutes).  On return the published model already shows the
 * result.  Errors are BACKEND_ERROR with an errno code:
 *   EEXIST      create, or rename onto, an existing name
 *   EINVAL      bad name (empty, too long, control characters)
 *   ENOENT      no such domain or snapshot
 *   EBUSY       a layer the plan must write is pinned by a reader; revert
 *               of a running domain; the domain is frozen for @now
 *   EOPNOTSUPP  a disk the planner cannot handle
 *   EIO         libvirt or qemu-img failed: the message holds their reason;
 *               the chain is as it was, or recovery rolls the plan forward
 * Every changing call logs one line with what the planner chose and why. */
gboolean snap_create(Snap *snap, const char *domain, const char *name, GError **error);
gboolean snap_delete(Snap *snap, const char *domain, const char *name, GError **error);
gboolean snap_rename(Snap *snap, const char *domain, const char *name, const char *new_name,
                     GError **error);
/* The present being left is kept as snapshot pre-revert-<UTC time>
 * unless discard or SnapOptions.revert_discard says to drop it. */
gboolean snap_revert(Snap *snap, const char *domain, const char *name, gboolean discard,
                     GError **error);

/* ------------------------------------------------------------------ */
/* @now: reading the present of a domain.                              */

/* The first freeze of a domain takes a temporary external overlay of all
 * its disks (no metadata, quiesced when the guest agent answers) and
 * returns the frozen images as BackendDisks; further freezes share it.
 * Each successful snap_freeze() is paired with one snap_thaw(); the last
 * thaw commits the overlays back and deletes them.  Returns a new array
 * of BackendDisk (free with g_ptr_array_unref).  Overlays are named
 * "<active image>.virtsnapfs-now-<usec>-<pid>" beside the active image
 * (STATE_DIR/now/ for block devices); every freeze is recorded in
 * STATE_DIR/freeze/ and repaired by the next snap_new() if the process
 * dies before the thaw.  A thaw that fails is logged and retried at the
 * domain's next freeze or thaw, or at the next start. */
GPtrArray *snap_freeze(Snap *snap, const char *domain, GError **error);
void snap_thaw(Snap *snap, const char *domain);

/* ------------------------------------------------------------------ */
/* Pins and the job status.                                            */

/* A plan never changes what an open reader reads: the front pins the
 * chain of every open point in time, snapshot files and @now alike
 * (open), and unpins it (release).  What counts is the chain's top layer,
 * the point image, keyed by device and inode (the planner follows the
 * chain below it); pins count, so a chain may be pinned many times.
 * Deleting an open point in time, or a merge with no safe direction,
 * fails with EBUSY. */
void snap_pin_chain(Snap *snap, const char *domain, Chain *chain);
void snap_unpin_chain(Snap *snap, const char *domain, Chain *chain);

/* For the user.virtsnapfs.job xattr of a domain directory: the running
 * operation and its progress, e.g. "delete s2: step 3/7 commit vda 45%",
 * or NULL when nothing runs.  Returns a new string. */
char *snap_job_status(Snap *snap, const char *domain);

G_END_DECLS
