/* backend-private.h: what the files of the backend share.  A map of the
 * code: prototypes are grouped by the file that defines them.
 *
 * Lock order (outer first): a domain's operation lock, BackendSink.lock
 * (libvirt callbacks only), Backend.build_lock, Backend.freeze_lock,
 * Backend.lock, Backend.job_lock.  Backend.lock and job_lock are leaf
 * locks held only for pointer swaps and flag changes, never across a
 * libvirt call.
 */
#pragma once

#include "backend-virt.h"
#include "domxml.h"

G_BEGIN_DECLS

typedef struct _BackendSink BackendSink;

struct _Backend {
  char *uri;
  char *state_dir;
  char **image_dirs;            /* BackendOptions.image_dirs, copied */
  unsigned long bandwidth_mib;  /* BackendOptions.bandwidth_mib */

  GMutex lock;                  /* protects the fields down to "stopping" */
  virConnectPtr conn;           /* NULL while disconnected */
  gboolean conn_broken;         /* set by the close callback */
  int callback_ids[5];          /* domain event callbacks on conn, -1 = none */
  BackendModel *model;          /* never NULL */
  BackendChangeFunc listener;
  gpointer listener_data;
  GCond wake;                   /* signalled with dirty or stopping */
  gboolean dirty;               /* an event asked for a rebuild */
  gboolean stopping;
  gboolean ready;               /* freezes repaired and journals recovered:
                                 * the connection may be handed out */
  GThread *repairing;           /* the worker while it runs those repairs
                                 * (connect_later), the one thread that
                                 * gets the connection before ready */
  gboolean start_failed;        /* connect_later: the first connect failed
                                 * (and was logged) */

  GMutex build_lock;            /* serialises model builds */
  char *fingerprint;            /* of the libvirt state the model was built from */
  GHashTable *logged;           /* "domain/target: reason" already logged */
  gboolean no_pools;            /* the connection has no storage driver */
  GHashTable *unresolved_since; /* unresolved key -> gint64* first seen */
  gint settling;                /* atomic: an unpublished build waits to settle */
  guint64 generation;

  GThread *worker;              /* polls, rebuilds, reconnects */
  BackendSink *sink;            /* opaque of libvirt's callbacks (backend.c) */

  GMutex freeze_lock;           /* protects freezes and domain_locks */
  GHashTable *freezes;          /* domain name -> BackendFreeze */
  GHashTable *domain_locks;     /* domain name -> GMutex*: one operation at a time */

  GMutex job_lock;              /* protects job_events */
  GCond job_cond;
  GHashTable *job_events;       /* "uuid/target" -> last block job status + 1 */

  struct _BackendExec *exec;    /* snapshot operations (snapshot-ops.c) */
};

/* backend.c */
void backend_wake(Backend *backend);
/* The GMutex that serialises libvirt-changing operations on one domain;
 * lives as long as the backend. */
GMutex *backend_domain_lock(Backend *backend, const char *domain);

/* virt.c */
void backend_virt_init(void);
gboolean backend_event_loop_start(GError **error);
void backend_event_loop_stop(void);
/* Frees DATA with FREE_FUNC once no event callback can run any more, that
 * is when the event loop thread stops.  For callback opaques: libvirt
 * never calls a callback's freecb for a connection that died. */
void backend_event_loop_free_later(gpointer data, GDestroyNotify free_func);

/* model.c */
/* Everything of libvirt a model is built from, read in one pass. */
typedef struct _BackendRaw BackendRaw;
void backend_raw_free(BackendRaw *raw);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendRaw, backend_raw_free)
/* no_pools: in, skip storage pools; out, set when the driver has none. */
BackendRaw *backend_raw_read(virConnectPtr conn, gboolean *no_pools, GError **error);
/* A checksum of everything in raw: equal fingerprints, equal models. */
const char *backend_raw_fingerprint(const BackendRaw *raw);
/* Parses and resolves raw into a model (generation 0; the caller sets it).
 * Its image policy (policy.h) allows what raw names, extra_dirs, and
 * extra_images (the frozen images of @now freeze records: a block device
 * among them is allowed as itself).  Disks left out for what the XML says are logged
 * once, remembered in logged; snapshot disks whose point image cannot be
 * found are left out and added to unresolved (key -> log message) for the
 * caller to judge. */
BackendModel *backend_model_build(const BackendRaw *raw, const char *const *extra_dirs,
                                  const char *const *extra_images, GHashTable *logged,
                                  GHashTable *unresolved);
BackendModel *backend_model_new_empty(void);
/* UNKNOWN-terminated formats of layers[from..] (of DomXmlLayer), for
 * BackendDisk.backing_formats; NULL when layers is NULL or too short. */
ChainFormat *backend_layer_formats(GPtrArray *layers, guint from);
/* TRUE when both paths name the same existing file (device and inode), or
 * are equal strings. */
gboolean backend_path_same(const char *a, const char *b);

/* blockjob.c */
/* Records a BLOCK_JOB_2 event (called on the event thread). */
void backend_job_event(Backend *backend, const char *uuid, const char *target, int status);
/* Active commit of target's top image into its backing file, then pivot:
 * afterwards the domain runs on the backing file.  Blocks until done. */
gboolean backend_job_active_commit(Backend *backend, virDomainPtr dom, const char *uuid,
                                   const char *target, GError **error);

/* freeze.c */
/* The domain by uuid when given (it survives a rename), else by name.
 * ENOENT when libvirt has no such domain, EIO for other failures. */
virDomainPtr backend_lookup_domain(virConnectPtr conn, const char *name, const char *uuid,
                                   GError **error);

/* state.c */
/* Durable files in the state directory (freeze records, journals):
 * written whole or not at all, and the change survives a power loss. */
gboolean backend_state_sync_dir(const char *dir, GError **error);
gboolean backend_state_write_file(const char *path, const char *data, gsize length,
                                  GError **error);
gboolean backend_state_remove_file(const char *path, GError **error);
typedef struct {
  char *target;
  char *frozen;                 /* the image that was active at the freeze */
  ChainFormat frozen_format;
  char *overlay;                /* the temporary overlay on top of it */
} BackendFreezeDisk;

typedef struct {
  char *path;                   /* the record file; NULL until written */
  char *domain;
  char *uuid;
  gint64 created;
  GPtrArray *disks;             /* of BackendFreezeDisk */
} BackendFreezeRecord;

BackendFreezeRecord *backend_freeze_record_new(const char *domain, const char *uuid);
void backend_freeze_record_free(BackendFreezeRecord *record);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendFreezeRecord, backend_freeze_record_free)
void backend_freeze_record_add_disk(BackendFreezeRecord *record, const char *target,
                                    const char *frozen, ChainFormat frozen_format,
                                    const char *overlay);
/* Writes the record durably (file and directory fsync'd) under state_dir. */
gboolean backend_freeze_record_write(BackendFreezeRecord *record, const char *state_dir,
                                     GError **error);
gboolean backend_freeze_record_remove(BackendFreezeRecord *record, GError **error);
/* Every record under state_dir (of BackendFreezeRecord). */
GPtrArray *backend_freeze_records_load(const char *state_dir, GError **error);

/* executor.c */
/* qemu-img with argv (NULL-terminated, without "qemu-img"); EIO with its
 * stderr on failure.  qemu-img dies with the daemon (a kill -9 of the
 * daemon must not leave it holding image locks that recovery needs). */
gboolean backend_exec_qemu_img(const char *const *argv, GError **error);

/* freeze.c */
/* Commits back and deletes what the records under the state dir describe. */
void backend_freeze_repair(Backend *backend);
/* Before a snapshot operation, under domain's operation lock: finishes
 * the freeze records of failed thaws of domain.  EBUSY when one stays
 * (the domain still runs on a temporary overlay: a snapshot or plan on
 * top of it would strand it). */
gboolean backend_freeze_settle(Backend *backend, const char *domain, GError **error);
/* The frozen image of every disk of every freeze record under the state
 * directory, for the image policy: a block device frozen for @now is no
 * longer named by libvirt while the domain runs on the overlay above it. */
char **backend_freeze_frozen_images(Backend *backend);
/* Thaws every open freeze (backend_free). */
void backend_freeze_thaw_all(Backend *backend);
void backend_freeze_table_free(Backend *backend);

/* snapshot-ops.c, journal.c, plan-input.c, executor.c, exec-xml.c:
 * the snapshot operations and their plans; see exec.h. */
typedef struct _BackendExec BackendExec;
void backend_exec_init(Backend *backend, const BackendOptions *options);
void backend_exec_free(Backend *backend);
/* Finishes every plan a crash left in the journal (backend_new). */
void backend_exec_recover(Backend *backend);
/* Drops the snapshots a running plan hides from a model being built. */
void backend_exec_filter_model(Backend *backend, BackendModel *model);

G_END_DECLS
