/* backend-virt.h: libvirt-level access to the backend, for fs/snap (which
 * owns a backend and changes libvirt state through it) and for tests.  A
 * map of fs/virt: prototypes are grouped by the file that defines them.
 *
 * Includes libvirt; backend.h deliberately does not.  Defines the glib
 * autoptr cleanups for libvirt's handle types.
 */
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "backend.h"
#include "domxml.h"

G_BEGIN_DECLS

/* virConnectClose() returns the remaining reference count; wrap it so that
 * g_autoptr can use it. */
static inline void
backend_virt_connect_close(virConnectPtr conn)
{
  if (conn)
    virConnectClose(conn);
}

typedef struct _virConnect BackendVirConnect;
typedef struct _virDomain BackendVirDomain;
typedef struct _virDomainSnapshot BackendVirDomainSnapshot;
typedef struct _virStoragePool BackendVirStoragePool;
typedef struct _virStorageVol BackendVirStorageVol;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirConnect, backend_virt_connect_close)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirDomain, virDomainFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirDomainSnapshot, virDomainSnapshotFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirStoragePool, virStoragePoolFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirStorageVol, virStorageVolFree)

/* ------------------------------------------------------------------ */
/* backend.c: life cycle, the connection, domains                      */

/* What the owner of a backend (fs/snap) runs at moments the backend
 * decides.  fs/virt knows nothing else of it: the dependency points from
 * fs/snap down to fs/virt.  Any pointer may be NULL. */
typedef struct {
  /* Once, on the first connection, before anyone else may use it (the
   * repairs a crash asks for: freezes, journals).  Runs on the thread of
   * backend_start(), or on the worker when the backend started without a
   * connection (BackendOptions.connect_later); backend_get_connection()
   * works on that thread meanwhile and fails everywhere else. */
  void (*ready)(gpointer user_data);
  /* Each time a model was built, before it is published: may mark or
   * drop what it shows (frozen domains, snapshots a running plan
   * deletes).  Under the build lock: must not call backend_refresh(). */
  void (*model_built)(BackendModel *model, gpointer user_data);
  /* Each time a model is built, before its image policy is collected
   * (policy.h): images the owner reads that libvirt may no longer name
   * (the frozen images of @now freezes), allowed as libvirt's own are; a
   * NULL-terminated vector the backend frees, or NULL.  Under the build
   * lock: must not call backend_refresh(). */
  char **(*policy_images)(gpointer user_data);
} BackendHooks;

/* A backend that has not connected yet: no thread of its own, no libvirt
 * call (libvirt's event loop thread is started).  hooks may be NULL. */
Backend *backend_new(const BackendOptions *options, const BackendHooks *hooks,
                     gpointer hooks_data, GError **error);
/* Connects, runs the ready hook, reads and publishes the first model, and
 * starts the worker that watches for changes (see
 * BackendOptions.connect_later).  Blocks. */
gboolean backend_start(Backend *backend, GError **error);
/* Stops the worker and the event thread, closes the connection. */
void backend_free(Backend *backend);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Backend, backend_free)

/* The current connection: a new reference (virConnectClose it, or hold it in
 * g_autoptr(BackendVirConnect)), or NULL with an EIO error while the
 * connection is down. */
virConnectPtr backend_get_connection(Backend *backend, GError **error);

/* Treats the connection as lost, as when libvirt reports it closed: the
 * worker drops it and reconnects with backoff, and the last model is
 * served meanwhile.  For tests of the reconnect path, and for callers that
 * know the connection went stale. */
void backend_drop_connection(Backend *backend);

/* The domain by uuid when given (it survives a rename), else by name.
 * ENOENT when libvirt has no such domain, EIO for other failures. */
virDomainPtr backend_lookup_domain(virConnectPtr conn, const char *name, const char *uuid,
                                   GError **error);
/* The domain's UUID (into uuid, VIR_UUID_STRING_BUFLEN bytes) and
 * whether it runs; either may be NULL. */
gboolean backend_domain_state(virDomainPtr dom, char *uuid, gboolean *running, GError **error);
/* The domain's XML (virDomainGetXMLDesc flags), parsed. */
DomXmlDomain *backend_read_domain(virDomainPtr dom, unsigned int flags, GError **error);

/* ------------------------------------------------------------------ */
/* virt.c */

/* Fills error (BACKEND_ERROR, EIO) with "what: libvirt's last error". */
void backend_set_virt_error(GError **error, const char *format, ...) G_GNUC_PRINTF(2, 3);

/* ------------------------------------------------------------------ */
/* model.c: paths and images */

/* TRUE when both paths name the same existing file (device and inode), or
 * are equal strings. */
gboolean backend_path_same(const char *a, const char *b);
/* UNKNOWN-terminated formats of layers[from..] (of DomXmlLayer), for
 * BackendDisk.backing_formats; NULL when layers is NULL or too short. */
ChainFormat *backend_layer_formats(GPtrArray *layers, guint from);

/* ------------------------------------------------------------------ */
/* blockjob.c: libvirt block jobs, started at -o bandwidth= and waited for
 * in one way (BLOCK_JOB_2 events, checked against libvirt's job list) */

typedef enum {
  BACKEND_JOB_READY,  /* a two-phase job (active commit) may pivot */
  BACKEND_JOB_GONE,   /* no job runs on the disk any more */
} BackendJobGoal;

/* Whether a job of type (VIR_DOMAIN_BLOCK_JOB_TYPE_*) runs on target, left
 * by an earlier run of the daemon: *running.  EBUSY when a job of another
 * type runs there. */
gboolean backend_job_running(Backend *backend, virDomainPtr dom, const char *target, int type,
                             gboolean *running, GError **error);
/* Starts an intermediate commit of top into base (shallow) on target. */
gboolean backend_job_commit(Backend *backend, virDomainPtr dom, const char *target,
                            const char *base, const char *top, GError **error);
/* Starts a pull into target's active image of everything above base
 * (NULL: of the whole chain). */
gboolean backend_job_pull(Backend *backend, virDomainPtr dom, const char *target,
                          const char *base, GError **error);
/* Blocks until the job on target reached goal.  Fails when the job
 * failed, was cancelled, ended before it was ready, or made no progress
 * for the stall limit (blockjob.c). */
gboolean backend_job_wait(Backend *backend, virDomainPtr dom, const char *target,
                          BackendJobGoal goal, GError **error);
/* Active commit of target's top image into its backing file, then pivot:
 * afterwards the domain runs on the backing file.  Resumes an active
 * commit an earlier run left.  Blocks until done. */
gboolean backend_job_active_commit(Backend *backend, virDomainPtr dom, const char *target,
                                   GError **error);
/* The progress of the job a waiter watches on (domain uuid, target), as
 * libvirt last reported it; FALSE when nobody waits on one or libvirt
 * gave no total yet.  Any thread; never calls libvirt. */
gboolean backend_job_progress(Backend *backend, const char *uuid, const char *target,
                              guint64 *cur, guint64 *end);

/* ------------------------------------------------------------------ */
/* qemu-img.c: the one way qemu-img runs */

/* qemu-img with argv (NULL-terminated, without "qemu-img"); EIO with its
 * stderr on failure.  qemu-img dies with the daemon (a kill -9 of the
 * daemon must not leave it holding image locks that recovery needs). */
gboolean backend_qemu_img(const char *const *argv, GError **error);
/* qemu-img commit of image (in format) at -o bandwidth=, with
 * write-through caching.  base given: into base, image kept as it is (-d);
 * NULL: into image's backing file, image emptied. */
gboolean backend_qemu_img_commit(Backend *backend, const char *image, ChainFormat format,
                                 const char *base, GError **error);

G_END_DECLS
