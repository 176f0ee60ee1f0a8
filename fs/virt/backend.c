/* backend.c: the libvirt connection, change detection, and the published
 * model.
 *
 * Threads:
 *  - libvirt's event loop (virt.c) runs the callbacks registered here.  They
 *    never call libvirt: they set Backend.dirty (or record a block job
 *    status) and wake the worker.
 *  - the worker thread waits for a wake-up or one second, then re-reads
 *    libvirt (model.c).  The one-second poll catches what no event
 *    announces: snapshots created or deleted by another client, define and
 *    undefine.  When the fingerprint of what it read changed, it builds a
 *    new model, swaps it in under Backend.lock and calls the listener.
 *    When the connection dropped (close callback, or a read that finds it
 *    dead) the worker reconnects with exponential backoff (1 s to 30 s);
 *    the last model keeps being served meanwhile.  With connect_later a
 *    backend may start without a connection: the worker then makes the
 *    first one, runs the freeze repair and journal recovery on it, and
 *    only then hands the connection to anyone else (Backend.ready).
 *  - callers of backend_get_model() only take Backend.lock for a reference.
 */
#include <errno.h>
#include <string.h>

#include "backend-private.h"

#define POLL_INTERVAL_US (G_USEC_PER_SEC)
#define SETTLE_POLL_US (G_USEC_PER_SEC / 10)
#define SETTLE_US (3 * G_USEC_PER_SEC)
#define BACKOFF_MAX_S 30


void
backend_wake(Backend *backend)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  backend->dirty = TRUE;
  g_cond_signal(&backend->wake);
}

/* ------------------------------------------------------------------ */
/* Event callbacks (libvirt's event thread)                            */

/* The opaque of every libvirt callback.  libvirt may still be running a
 * callback when it is deregistered, and never calls the freecb of a
 * connection that died, so the callbacks reach the backend through this
 * small sink: backend_destroy() detaches it, and the event loop frees it
 * once its thread has stopped (backend_event_loop_free_later). */
struct _BackendSink {
  GMutex lock;
  Backend *backend;            /* NULL once detached */
};

static void
sink_free(gpointer data)
{
  BackendSink *sink = data;
  g_mutex_clear(&sink->lock);
  g_free(sink);
}

static int
on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
  BackendSink *sink = opaque;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&sink->lock);
  g_debug("event: domain %s lifecycle %d/%d", virDomainGetName(dom), event, detail);
  if (sink->backend)
    backend_wake(sink->backend);
  return 0;
}

static void
on_block_job(virConnectPtr conn, virDomainPtr dom, const char *disk, int type, int status,
             void *opaque)
{
  BackendSink *sink = opaque;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&sink->lock);
  char uuid[VIR_UUID_STRING_BUFLEN] = "";
  virDomainGetUUIDString(dom, uuid);
  g_debug("event: domain %s disk %s block job type %d status %d", virDomainGetName(dom), disk,
          type, status);
  if (!sink->backend)
    return;
  backend_job_event(sink->backend, uuid, disk, status);
  backend_wake(sink->backend);
}

static void
on_device(virConnectPtr conn, virDomainPtr dom, const char *alias, void *opaque)
{
  BackendSink *sink = opaque;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&sink->lock);
  g_debug("event: domain %s device %s changed", virDomainGetName(dom), alias);
  if (sink->backend)
    backend_wake(sink->backend);
}

static void
on_close(virConnectPtr conn, int reason, void *opaque)
{
  BackendSink *sink = opaque;
  g_autoptr(GMutexLocker) sink_locker = g_mutex_locker_new(&sink->lock);
  Backend *backend = sink->backend;
  if (!backend)
    return;
  g_message("libvirt connection to %s closed (reason %d); reconnecting", backend->uri, reason);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  backend->conn_broken = TRUE;
  g_cond_signal(&backend->wake);
}

/* ------------------------------------------------------------------ */
/* Connection                                                          */

static virConnectPtr
connect_open(Backend *backend, int ids[5], GError **error)
{
  g_debug("virConnectOpen(%s)", backend->uri);
  virConnectPtr conn = virConnectOpen(backend->uri);
  if (!conn) {
    backend_set_virt_error(error, "cannot connect to %s", backend->uri);
    return NULL;
  }
  /* Remote drivers support keepalive; embedded and local ones say no. */
  if (virConnectSetKeepAlive(conn, 5, 3) < 0)
    g_debug("%s: no keepalive: %s", backend->uri, virGetLastErrorMessage());
  if (virConnectRegisterCloseCallback(conn, on_close, backend->sink, NULL) < 0)
    g_debug("%s: no close callback: %s", backend->uri, virGetLastErrorMessage());

  static const struct {
    int id;
    virConnectDomainEventGenericCallback cb;
  } events[5] = {
    {VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle)},
    {VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, VIR_DOMAIN_EVENT_CALLBACK(on_block_job)},
    {VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, VIR_DOMAIN_EVENT_CALLBACK(on_device)},
    {VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, VIR_DOMAIN_EVENT_CALLBACK(on_device)},
    {VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, VIR_DOMAIN_EVENT_CALLBACK(on_device)},
  };
  for (guint i = 0; i < G_N_ELEMENTS(events); i++) {
    ids[i] = virConnectDomainEventRegisterAny(conn, NULL, events[i].id, events[i].cb,
                                              backend->sink, NULL);
    if (ids[i] < 0)
      g_debug("%s: cannot register event %d: %s", backend->uri, events[i].id,
              virGetLastErrorMessage());
  }
  return conn;
}

/* Drops the connection (if any); the model stays. */
static void
connect_drop(Backend *backend)
{
  virConnectPtr conn;
  int ids[5];
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
    conn = g_steal_pointer(&backend->conn);
    memcpy(ids, backend->callback_ids, sizeof(ids));
    for (guint i = 0; i < G_N_ELEMENTS(ids); i++)
      backend->callback_ids[i] = -1;
    backend->conn_broken = FALSE;
  }
  if (!conn)
    return;
  for (guint i = 0; i < G_N_ELEMENTS(ids); i++)
    if (ids[i] >= 0)
      virConnectDomainEventDeregisterAny(conn, ids[i]);
  virConnectUnregisterCloseCallback(conn, on_close);
  g_debug("virConnectClose(%s)", backend->uri);
  virConnectClose(conn);
}

static gboolean
connect_up(Backend *backend, GError **error)
{
  int ids[5];
  virConnectPtr conn = connect_open(backend, ids, error);
  if (!conn)
    return FALSE;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  backend->conn = conn;
  backend->conn_broken = FALSE;
  memcpy(backend->callback_ids, ids, sizeof(ids));
  return TRUE;
}

virConnectPtr
backend_get_connection(Backend *backend, GError **error)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  if (!backend->conn || backend->conn_broken ||
      (!backend->ready && backend->repairing != g_thread_self())) {
    g_set_error(error, BACKEND_ERROR, EIO, "not connected to %s", backend->uri);
    return NULL;
  }
  virConnectRef(backend->conn);
  return backend->conn;
}

void
backend_drop_connection(Backend *backend)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  g_message("dropping the connection to %s", backend->uri);
  backend->conn_broken = TRUE;
  g_cond_signal(&backend->wake);
}

gboolean
backend_disk_capacity(Backend *backend, const char *domain, const char *target,
                      const char *path, guint64 *capacity, GError **error)
{
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, NULL);
  if (!conn) {
    g_set_error(error, BACKEND_ERROR, ENOTCONN, "not connected to %s", backend->uri);
    return FALSE;
  }
  if (target) {
    g_autoptr(BackendVirDomain) dom = virDomainLookupByName(conn, domain);
    virDomainBlockInfo info;
    if (dom && virDomainGetBlockInfo(dom, target, &info, 0) == 0) {
      *capacity = info.capacity;
      return TRUE;
    }
  }
  g_autoptr(BackendVirStorageVol) vol = virStorageVolLookupByPath(conn, path);
  virStorageVolInfo info;
  if (vol && virStorageVolGetInfo(vol, &info) == 0) {
    *capacity = info.capacity;
    return TRUE;
  }
  backend_set_virt_error(error, "size of %s", path);
  return FALSE;
}

/* ------------------------------------------------------------------ */
/* Model                                                               */

static void
mark_frozen(Backend *backend, BackendModel *model)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *domain = g_ptr_array_index(model->domains, i);
    domain->frozen = g_hash_table_contains(backend->freezes, domain->name);
  }
}

/* A snapshot disk whose point image cannot be found is usually a snapshot
 * libvirt is still creating: its metadata shows before the overlay exists.
 * Such a build is not published until it settles, for up to SETTLE_US per
 * unresolved disk, while the worker polls faster; a disk unresolved for
 * longer is published as left out, and logged.  Under build_lock. */
static gboolean
settled(Backend *backend, GHashTable *unresolved)
{
  gint64 now = g_get_monotonic_time();
  gboolean waiting = FALSE;
  GHashTableIter iter;
  gpointer key, message;
  g_hash_table_iter_init(&iter, unresolved);
  while (g_hash_table_iter_next(&iter, &key, &message)) {
    gint64 *since = g_hash_table_lookup(backend->unresolved_since, key);
    if (!since) {
      since = g_new(gint64, 1);
      *since = now;
      g_hash_table_insert(backend->unresolved_since, g_strdup(key), since);
      g_debug("waiting for libvirt to finish: %s", (const char *)message);
    }
    waiting |= now - *since < SETTLE_US;
  }
  g_hash_table_iter_init(&iter, backend->unresolved_since);
  while (g_hash_table_iter_next(&iter, &key, NULL))
    if (!g_hash_table_contains(unresolved, key))
      g_hash_table_iter_remove(&iter);
  g_atomic_int_set(&backend->settling, waiting);
  if (waiting)
    return FALSE;
  g_hash_table_iter_init(&iter, unresolved);
  while (g_hash_table_iter_next(&iter, &key, &message))
    if (g_hash_table_add(backend->logged, g_strdup(message)))
      g_message("%s", (const char *)message);
  return TRUE;
}

static gboolean
refresh(Backend *backend, gboolean force, GError **error)
{
  g_autoptr(GMutexLocker) build = g_mutex_locker_new(&backend->build_lock);
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, error);
  if (!conn)
    return FALSE;
  g_autoptr(BackendRaw) raw = backend_raw_read(conn, &backend->no_pools, error);
  if (!raw) {
    if (virConnectIsAlive(conn) != 1) {
      g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
      backend->conn_broken = TRUE;
    }
    return FALSE;
  }
  if (!force && !g_atomic_int_get(&backend->settling) &&
      g_strcmp0(backend->fingerprint, backend_raw_fingerprint(raw)) == 0)
    return TRUE;

  g_autoptr(GHashTable) unresolved = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  g_auto(GStrv) frozen = backend_freeze_frozen_images(backend);
  g_autoptr(BackendModel) built = backend_model_build(raw, (const char *const *)backend->image_dirs,
                                                      (const char *const *)frozen,
                                                      backend->logged, unresolved);
  /* The first model is published at once, settled or not: otherwise a
   * single unresolvable snapshot hides every domain for SETTLE_US after
   * the mount.  The worker keeps rebuilding while settling. */
  if (!settled(backend, unresolved) && backend->generation > 0)
    return TRUE;
  g_free(backend->fingerprint);
  backend->fingerprint = g_strdup(backend_raw_fingerprint(raw));
  BackendModel *model = g_steal_pointer(&built);
  mark_frozen(backend, model);
  backend_exec_filter_model(backend, model);
  model->generation = ++backend->generation;
  g_debug("model %" G_GUINT64_FORMAT ": %u domains", model->generation, model->domains->len);

  g_autoptr(BackendModel) old = NULL;
  BackendChangeFunc listener;
  gpointer listener_data;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
    old = backend->model;
    backend->model = model;
    listener = backend->listener;
    listener_data = backend->listener_data;
  }
  if (listener)
    listener(old, model, listener_data);
  return TRUE;
}

gboolean
backend_refresh(Backend *backend, GError **error)
{
  return refresh(backend, TRUE, error);
}

BackendModel *
backend_get_model(Backend *backend)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  return backend_model_ref(backend->model);
}

void
backend_set_listener(Backend *backend, BackendChangeFunc func, gpointer user_data)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  backend->listener = func;
  backend->listener_data = user_data;
}

GMutex *
backend_domain_lock(Backend *backend, const char *domain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
  GMutex *mutex = g_hash_table_lookup(backend->domain_locks, domain);
  if (!mutex) {
    mutex = g_new0(GMutex, 1);
    g_mutex_init(mutex);
    g_hash_table_insert(backend->domain_locks, g_strdup(domain), mutex);
  }
  return mutex;
}

/* ------------------------------------------------------------------ */
/* Worker                                                              */

static gboolean
backend_is_ready(Backend *backend)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  return backend->ready;
}

/* The start-up repairs of a backend that started without a connection,
 * on its first one; until they are done nobody else gets it. */
static void
repair_late(Backend *backend)
{
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
    backend->repairing = g_thread_self();
  }
  backend_freeze_repair(backend);
  backend_exec_recover(backend);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  backend->repairing = NULL;
  backend->ready = TRUE;
}

static gpointer
worker_run(gpointer data)
{
  Backend *backend = data;
  guint backoff = 1;
  gint64 next_connect = 0;
  gboolean logged_failure = FALSE;
  gboolean logged_connect_failure = backend->start_failed;

  for (;;) {
    gboolean connected;
    {
      g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
      gint64 deadline = g_get_monotonic_time() +
                        (g_atomic_int_get(&backend->settling) ? SETTLE_POLL_US : POLL_INTERVAL_US);
      while (!backend->stopping && !backend->dirty && !backend->conn_broken &&
             g_cond_wait_until(&backend->wake, &backend->lock, deadline))
        ;
      if (backend->stopping)
        break;
      backend->dirty = FALSE;
      connected = backend->conn && !backend->conn_broken;
    }

    if (!connected) {
      connect_drop(backend);
      if (g_get_monotonic_time() < next_connect)
        continue;
      g_autoptr(GError) error = NULL;
      if (!connect_up(backend, &error)) {
        /* One line per outage, not one per try: a host that stays down
         * for hours must not fill the log. */
        if (!logged_connect_failure)
          g_message("%s (retrying every %u s at most; further failures are not logged)",
                    error->message, BACKOFF_MAX_S);
        else
          g_debug("%s (next try in %u s)", error->message, backoff);
        logged_connect_failure = TRUE;
        next_connect = g_get_monotonic_time() + backoff * G_USEC_PER_SEC;
        backoff = MIN(backoff * 2, BACKOFF_MAX_S);
        continue;
      }
      g_message("reconnected to %s", backend->uri);
      logged_connect_failure = FALSE;
      if (!backend_is_ready(backend))
        repair_late(backend);
      {
        g_autoptr(GMutexLocker) build = g_mutex_locker_new(&backend->build_lock);
        backend->no_pools = FALSE;
      }
      backoff = 1;
    }

    g_autoptr(GError) error = NULL;
    if (!refresh(backend, FALSE, &error)) {
      if (!logged_failure)
        g_message("cannot read libvirt state: %s", error->message);
      logged_failure = TRUE;
    } else {
      logged_failure = FALSE;
    }
  }
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */

static void
backend_destroy(Backend *backend, gboolean thaw)
{
  if (!backend)
    return;
  if (thaw)
    backend_freeze_thaw_all(backend);
  if (backend->worker) {
    {
      g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
      backend->stopping = TRUE;
      g_cond_signal(&backend->wake);
    }
    g_thread_join(g_steal_pointer(&backend->worker));
  }
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->sink->lock);
    backend->sink->backend = NULL;
  }
  connect_drop(backend);
  backend_event_loop_free_later(g_steal_pointer(&backend->sink), sink_free);
  backend_exec_free(backend);
  backend_freeze_table_free(backend);
  g_hash_table_unref(backend->domain_locks);
  g_hash_table_unref(backend->job_events);
  g_hash_table_unref(backend->logged);
  g_hash_table_unref(backend->unresolved_since);
  backend_model_unref(backend->model);
  g_free(backend->fingerprint);
  g_free(backend->uri);
  g_free(backend->state_dir);
  g_strfreev(backend->image_dirs);
  g_mutex_clear(&backend->lock);
  g_mutex_clear(&backend->build_lock);
  g_mutex_clear(&backend->freeze_lock);
  g_mutex_clear(&backend->job_lock);
  g_cond_clear(&backend->wake);
  g_cond_clear(&backend->job_cond);
  g_free(backend);
  backend_event_loop_stop();
}

static void
domain_lock_free(gpointer data)
{
  g_mutex_clear(data);
  g_free(data);
}

Backend *
backend_new(const BackendOptions *options, GError **error)
{
  g_return_val_if_fail(options && options->uri && options->state_dir, NULL);
  if (!backend_event_loop_start(error))
    return NULL;

  Backend *backend = g_new0(Backend, 1);
  backend->uri = g_strdup(options->uri);
  backend->state_dir = g_strdup(options->state_dir);
  backend->image_dirs = g_strdupv((char **)options->image_dirs);
  backend->bandwidth_mib = options->bandwidth_mib;
  g_mutex_init(&backend->lock);
  g_mutex_init(&backend->build_lock);
  g_mutex_init(&backend->freeze_lock);
  g_mutex_init(&backend->job_lock);
  g_cond_init(&backend->wake);
  g_cond_init(&backend->job_cond);
  for (guint i = 0; i < G_N_ELEMENTS(backend->callback_ids); i++)
    backend->callback_ids[i] = -1;
  backend->model = backend_model_new_empty();
  backend->sink = g_new0(BackendSink, 1);
  g_mutex_init(&backend->sink->lock);
  backend->sink->backend = backend;
  backend->logged = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  backend->unresolved_since = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  backend->freezes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  backend->domain_locks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, domain_lock_free);
  backend->job_events = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  backend_exec_init(backend, options);

  if (g_mkdir_with_parents(backend->state_dir, 0700) < 0) {
    int err = errno;
    g_set_error(error, BACKEND_ERROR, err, "cannot create state directory %s: %s",
                backend->state_dir, g_strerror(err));
    backend_destroy(backend, FALSE);
    return NULL;
  }
  backend->ready = TRUE;
  g_autoptr(GError) unreachable = NULL;
  if (connect_up(backend, &unreachable)) {
    backend_freeze_repair(backend);
    backend_exec_recover(backend);
    if (!refresh(backend, TRUE, error)) {
      backend_destroy(backend, FALSE);
      return NULL;
    }
  } else if (options->connect_later) {
    g_message("%s; starting without it, retrying every %u s at most (further failures are "
              "not logged)", unreachable->message, BACKOFF_MAX_S);
    backend->ready = FALSE;
    backend->start_failed = TRUE;
  } else {
    g_propagate_error(error, g_steal_pointer(&unreachable));
    backend_destroy(backend, FALSE);
    return NULL;
  }
  backend->worker = g_thread_try_new("backend", worker_run, backend, error);
  if (!backend->worker) {
    backend_destroy(backend, FALSE);
    return NULL;
  }
  return backend;
}

void
backend_free(Backend *backend)
{
  backend_destroy(backend, TRUE);
}

void
backend_abandon(Backend *backend)
{
  backend_destroy(backend, FALSE);
}
