/* backend.h: what the daemon knows of libvirt, as immutable snapshots.
 *
 * The backend owns the libvirt connection (with libvirt's event loop in a
 * thread of its own), reads every domain's XML and snapshot XML, and
 * publishes the result as a BackendModel: an immutable, reference-counted
 * picture of all domains, their disks and their points in time.  When
 * libvirt reports a change (lifecycle, snapshot, block job, device events,
 * or a periodic poll for changes no event announces) the backend builds a
 * new model, swaps it in atomically, and tells the listener.
 *
 * Thread model: backend_get_model() may be called from any thread and never
 * blocks on libvirt; the listener is called from the backend's thread.
 * Operations that change libvirt state (freeze, thaw, plans) block the
 * calling thread and are serialised per domain.
 */
#pragma once

#include <glib.h>
#include <sys/types.h>

#include "chain.h"

G_BEGIN_DECLS

/* Errors of the backend: the code is an errno value (EIO for libvirt and
 * qemu-img failures, ENOENT for an unknown domain, EINVAL for bad XML), and
 * the message carries libvirt's own reason. */
#define BACKEND_ERROR (backend_error_quark())
GQuark backend_error_quark(void);

/* One disk of a point in time: the image whose chain reads as that disk. */
typedef struct {
  char *target;            /* "vda", "sdb": the file name stem in the tree */
  char *image_path;        /* the point image P(S), or the active image for @now */
  ChainFormat format;      /* of image_path */
  ChainFormat *backing_formats; /* formats libvirt reports for the layers
                                 * below image_path, UNKNOWN-terminated; may
                                 * be NULL (then chain/ uses the qcow2
                                 * backing-format extension) */
  char **backing_paths;    /* a running domain's layers below image_path as
                            * libvirt reports them, top down; NULL when
                            * libvirt does not say (shut off): then the
                            * headers alone name the chain */
} BackendDisk;

/* DESIGN.md 4.1: for a running domain the chain read from the headers must
 * be the one libvirt reports.  FALSE (EIO) when chain differs from
 * disk->backing_paths; TRUE when it matches or libvirt said nothing. */
gboolean backend_disk_check_chain(const BackendDisk *disk, Chain *chain, GError **error);
/* The same for the paths of a chain's layers, top first (NULL-terminated). */
gboolean backend_disk_check_layers(const BackendDisk *disk, const char *const *layer_paths,
                                   GError **error);

BackendDisk *backend_disk_copy(const BackendDisk *disk);
void backend_disk_free(BackendDisk *disk);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendDisk, backend_disk_free)

/* A point in time of a domain. */
typedef struct {
  char *name;              /* libvirt's snapshot name, unescaped */
  char *parent;            /* parent snapshot name or NULL */
  gint64 creation_time;    /* seconds since the epoch */
  gboolean current;
  char *xml;               /* libvirt's snapshot XML, for snapshot.xml */
  GPtrArray *disks;        /* of BackendDisk, in target order */
} BackendSnapshot;

typedef struct {
  char *name;
  char *uuid;
  gboolean running;
  gboolean frozen;         /* an @now freeze holds temporary overlays: the
                            * active images are then our overlays */
  GPtrArray *disks;        /* of BackendDisk: the active images (present) */
  GPtrArray *snapshots;    /* of BackendSnapshot, oldest first */
} BackendDomain;

typedef struct {
  gint ref_count;
  guint64 generation;      /* increases with every new model */
  GPtrArray *domains;      /* of BackendDomain, sorted by name */
  char **image_dirs;       /* pool targets, the directories of the images
                            * libvirt names, -o image_dir (policy.h) */
  char **image_devices;    /* the block device nodes libvirt names, and
                            * those an open @now freeze reads */
  ChainPolicy policy;      /* both as the policy of every chain walk
                            * (borrows them from this model) */
} BackendModel;

BackendModel *backend_model_ref(BackendModel *model);
void backend_model_unref(BackendModel *model);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendModel, backend_model_unref)

/* Lookups in a model; borrowed results, valid while the model is held. */
BackendDomain *backend_model_find_domain(BackendModel *model, const char *name);
BackendSnapshot *backend_domain_find_snapshot(BackendDomain *domain, const char *name);

typedef struct _Backend Backend;

/* Called after a new model was published: from the backend's worker
 * thread, or from the thread of a backend_refresh() / backend_freeze() /
 * backend_thaw() caller.  Calls are serialised and come in generation
 * order.  The listener may call backend_get_model() but must not call
 * backend_refresh(), backend_freeze() or backend_thaw() (it runs under the
 * backend's build lock). */
typedef void (*BackendChangeFunc)(BackendModel *old_model, BackendModel *new_model,
                                  gpointer user_data);

typedef struct {
  const char *uri;               /* libvirt URI */
  const char *state_dir;         /* journal and freeze records */
  const char *const *image_dirs; /* extra allowed directories, may be NULL */
  gboolean revert_discard;       /* -o revert=discard: a revert keeps no
                                  * pre-revert snapshot of the present */
  gboolean connect_later;        /* when libvirt does not answer at start,
                                  * start anyway with an empty model and
                                  * keep trying (a host of several); the
                                  * freeze repair and journal recovery then
                                  * run on the first connection, before
                                  * anything else may use it */
  unsigned long bandwidth_mib;   /* -o bandwidth=: MiB/s for every block
                                  * job and qemu-img commit; 0 = unlimited */
} BackendOptions;

/* Connects, reads the first model, repairs freezes a crash left behind,
 * and starts watching for changes (see BackendOptions.connect_later). */
Backend *backend_new(const BackendOptions *options, GError **error);
/* Thaws open freezes, stops the event thread, closes the connection. */
void backend_free(Backend *backend);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Backend, backend_free)

void backend_set_listener(Backend *backend, BackendChangeFunc func, gpointer user_data);

/* Reads libvirt now and publishes a new model (calling the listener from
 * the calling thread), without waiting for the poll: for callers that just
 * changed libvirt state themselves.  Blocks.  A snapshot libvirt is still
 * creating (its metadata listed, its overlay not yet there) holds the new
 * model back; the worker publishes it once settled, within 3 s. */
gboolean backend_refresh(Backend *backend, GError **error);

/* The current model: a new reference, never NULL (empty while the
 * connection is down and no model was ever read). */
BackendModel *backend_get_model(Backend *backend);

/* The capacity (guest size) of a disk as libvirt reports it, for disks
 * whose images this machine cannot read (a remote host without shared
 * storage): the block info of target when given (a disk of the present),
 * else the storage volume at path.  ENOTCONN while disconnected, EIO when
 * libvirt cannot tell.  Blocks on libvirt. */
gboolean backend_disk_capacity(Backend *backend, const char *domain, const char *target,
                               const char *path, guint64 *capacity, GError **error);

/* @now (DESIGN.md 4.2).  The first freeze of a domain takes a temporary
 * external overlay of all its disks (no metadata, quiesced when the guest
 * agent answers) and returns the frozen images as BackendDisks; further
 * freezes share it.  Each successful backend_freeze() is paired with one
 * backend_thaw(); the last thaw commits the overlays back and deletes
 * them.  Returns a new array of BackendDisk (free with g_ptr_array_unref).
 * Overlays are named "<active image>.virtsnapfs-now-<usec>-<pid>" beside
 * the active image (STATE_DIR/now/ for block devices); every freeze is
 * recorded in STATE_DIR/freeze/ and repaired by the next backend_new()
 * if the process dies before the thaw.  A thaw that fails is logged and
 * retried at the domain's next freeze or thaw, or at the next start. */
GPtrArray *backend_freeze(Backend *backend, const char *domain, GError **error);
void backend_thaw(Backend *backend, const char *domain);

/* ------------------------------------------------------------------ */
/* Snapshot operations (DESIGN.md 3 and 5), for mkdir, rmdir and rename. */

/* All four block the calling thread until the operation finished (plans
 * can take minutes) and are serialised per domain in arrival order; other
 * domains run in parallel.  On return the published model already shows
 * the result.  Errors are BACKEND_ERROR with an errno code (DESIGN.md 3):
 *   EEXIST      create, or rename onto, an existing name
 *   EINVAL      bad name (empty, too long, control characters)
 *   ENOENT      no such domain or snapshot
 *   EBUSY       a layer the plan must write is pinned by a reader; revert
 *               of a running domain; the domain is frozen for @now
 *   EOPNOTSUPP  a disk the planner cannot handle
 *   EIO         libvirt or qemu-img failed: the message holds their reason;
 *               the chain is as it was, or recovery rolls the plan forward
 * Every changing call logs one line with what the planner chose and why. */
gboolean backend_snapshot_create(Backend *backend, const char *domain, const char *name,
                                 GError **error);
gboolean backend_snapshot_delete(Backend *backend, const char *domain, const char *name,
                                 GError **error);
gboolean backend_snapshot_rename(Backend *backend, const char *domain, const char *name,
                                 const char *new_name, GError **error);
/* The present being left is kept as snapshot pre-revert-<UTC time>
 * unless discard or BackendOptions.revert_discard says to drop it. */
gboolean backend_snapshot_revert(Backend *backend, const char *domain, const char *name,
                                 gboolean discard, GError **error);

/* Pinned layers (DESIGN.md 4.3): the front end pins the chain of every
 * open point in time, snapshot files and @now alike (open), and unpins it
 * (release).  What counts is the chain's top layer, the point image, keyed
 * by device and inode (the planner follows the chain below it); pins
 * count, so a chain may be pinned many times.  A plan never changes what
 * an open reader reads: deleting an open point in time, or a merge with no
 * safe direction, fails with EBUSY.  Any thread; never blocks on a plan. */
void backend_pin_chain(Backend *backend, const char *domain, Chain *chain);
void backend_unpin_chain(Backend *backend, const char *domain, Chain *chain);

/* For the user.virtsnapfs.job xattr of a domain directory: the running
 * operation and its progress, e.g. "delete s2: step 3/7 commit vda 45%",
 * or NULL when nothing runs.  Returns a new string.  Any thread. */
char *backend_job_status(Backend *backend, const char *domain);

G_END_DECLS
