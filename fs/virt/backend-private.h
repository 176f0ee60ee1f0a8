/* backend-private.h: what the files of fs/virt share and nothing outside
 * it uses.  A map of the code: prototypes are grouped by the file that
 * defines them.
 *
 * Lock order (outer first): BackendSink.lock (libvirt callbacks only),
 * Backend.build_lock, then whatever the policy_images and model_built
 * hooks take, then Backend.lock and Backend.job_lock.  Backend.lock and
 * job_lock are leaf locks held only for pointer swaps and flag changes,
 * never across a libvirt call.
 */
#pragma once

#include "backend-virt.h"

G_BEGIN_DECLS

typedef struct _BackendSink BackendSink;

struct _Backend {
  char *uri;
  char **image_dirs;            /* BackendOptions.image_dirs, copied */
  unsigned long bandwidth_mib;  /* BackendOptions.bandwidth_mib */
  gboolean connect_later;       /* BackendOptions.connect_later */
  BackendHooks hooks;           /* of the owner; fields may be NULL */
  gpointer hooks_data;

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
  gboolean ready;               /* the ready hook ran: the connection may
                                 * be handed out */
  GThread *repairing;           /* the worker while it runs the ready hook
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
  BackendSink *sink;            /* opaque of libvirt's callbacks (events.c) */

  GMutex job_lock;              /* protects jobs */
  GCond job_cond;               /* broadcast at every recorded event */
  GHashTable *jobs;             /* "uuid/target" -> BackendJob (blockjob.c) */
};

/* events.c */
/* The sink of the libvirt callbacks for backend; detached and freed by
 * backend_events_detach() (once the event loop stopped). */
void backend_events_attach(Backend *backend);
void backend_events_detach(Backend *backend);
/* Registers the domain event and close callbacks on conn (ids: one per
 * event, -1 when libvirt refused it), and removes them again. */
void backend_events_register(Backend *backend, virConnectPtr conn, int ids[5]);
void backend_events_deregister(virConnectPtr conn, const int ids[5]);

/* virt.c */
void backend_virt_init(void);
gboolean backend_event_loop_start(GError **error);
void backend_event_loop_stop(void);
/* Frees DATA with FREE_FUNC once no event callback can run any more, that
 * is when the event loop thread stops.  For callback opaques: libvirt
 * never calls a callback's freecb for a connection that died. */
void backend_event_loop_free_later(gpointer data, GDestroyNotify free_func);

/* model-read.c */
/* Everything of libvirt a model is built from, read in one pass. */
typedef struct {
  char *name;
  char *xml;
  gboolean running;
  GPtrArray *snapshot_xmls;     /* of char* */
  char *current;                /* name of the current snapshot, or NULL */
} BackendRawDomain;

typedef struct {
  GPtrArray *domains;           /* of BackendRawDomain */
  GPtrArray *pool_xmls;         /* of char* */
  char *fingerprint;            /* a checksum of the above: equal
                                 * fingerprints, equal models */
} BackendRaw;

void backend_raw_free(BackendRaw *raw);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendRaw, backend_raw_free)
/* no_pools: in, skip storage pools; out, set when the driver has none. */
BackendRaw *backend_raw_read(virConnectPtr conn, gboolean *no_pools, GError **error);

/* model.c */
/* Parses and resolves raw into a model (generation 0; the caller sets it).
 * Its image policy (policy.h) allows what raw names, extra_dirs, and
 * extra_images (the owner's policy_images hook: a block device among them
 * is allowed as itself).  Disks left out for what the XML says are logged
 * once, remembered in logged; snapshot disks whose point image cannot be
 * found are left out and added to unresolved (key -> log message) for the
 * caller to judge. */
BackendModel *backend_model_build(const BackendRaw *raw, const char *const *extra_dirs,
                                  const char *const *extra_images, GHashTable *logged,
                                  GHashTable *unresolved);
BackendModel *backend_model_new_empty(void);

/* blockjob.c */
/* Records a BLOCK_JOB_2 event (called on the event thread). */
void backend_job_event(Backend *backend, const char *uuid, const char *target, int status);
void backend_jobs_init(Backend *backend);
void backend_jobs_clear(Backend *backend);

G_END_DECLS
