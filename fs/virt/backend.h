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
 * This is the part the FUSE front reads: the model, the listener, and
 * sizes libvirt reports.  Creating a backend and the libvirt-level calls
 * are in backend-virt.h (for fs/snap, which owns the backend); changing
 * snapshots is fs/snap's snap.h.
 *
 * Thread model: backend_get_model() may be called from any thread and never
 * blocks on libvirt; the listener is called from the backend's thread or
 * from the thread that asked for a refresh.
 */
#pragma once

#include <glib.h>
#include <sys/types.h>

#include "chain.h"

G_BEGIN_DECLS

/* Errors of the backend and of fs/snap on top of it: the code is an errno
 * value (EIO for libvirt and qemu-img failures, ENOENT for an unknown
 * domain, EINVAL for bad XML), and the message carries libvirt's own
 * reason. */
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

/* The image policy: for a running domain the chain read from the headers
 * must be the one libvirt reports.  FALSE (EIO) when chain differs from
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
 * thread, or from the thread of a backend_refresh() caller (fs/snap
 * refreshes after every change it makes).  Calls are serialised and come
 * in generation order.  The listener may call backend_get_model() but
 * must not call backend_refresh() or anything of fs/snap that changes
 * libvirt (it runs under the backend's build lock). */
typedef void (*BackendChangeFunc)(BackendModel *old_model, BackendModel *new_model,
                                  gpointer user_data);

typedef struct {
  const char *uri;               /* libvirt URI */
  const char *const *image_dirs; /* extra allowed directories, may be NULL */
  gboolean connect_later;        /* when libvirt does not answer at start,
                                  * start anyway with an empty model and
                                  * keep trying (a host of several); the
                                  * ready hook (backend-virt.h) then runs
                                  * on the first connection, before
                                  * anything else may use it */
  unsigned long bandwidth_mib;   /* -o bandwidth=: MiB/s for every block
                                  * job and qemu-img commit; 0 = unlimited */
} BackendOptions;

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

G_END_DECLS
