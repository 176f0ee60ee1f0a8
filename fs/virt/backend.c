/* backend.c: the libvirt connection, change detection, the published
 * model, and the backend's life cycle.
 *
 * Threads:
 *  - libvirt's event loop (virt.c) runs the callbacks of events.c.  They
 *    never call libvirt: they set Backend.dirty (or record a block job
 *    status) and wake the worker.
 *  - the worker thread waits for a wake-up or one second, then re-reads
 *    libvirt (model-read.c).  The one-second poll catches what no event
 *    announces: snapshots created or deleted by another client, define and
 *    undefine.  When the fingerprint of what it read changed, it builds a
 *    new model (model.c), lets the owner's model_built hook mark it, swaps
 *    it in under Backend.lock and calls the listener.  When the connection
 *    dropped (close callback, or a read that finds it dead) the worker
 *    reconnects with exponential backoff (1 s to 30 s); the last model
 *    keeps being served meanwhile.  With connect_later a backend may start
 *    without a connection: the worker then makes the first one, runs the
 *    owner's ready hook on it, and only then hands the connection to
 *    anyone else (Backend.ready).
 *  - callers of backend_get_model() only take Backend.lock for a reference.
 */
#include <errno.h>
#include <string.h>

#include "backend-private.h"

#define POLL_INTERVAL_US (G_USEC_PER_SEC)
#define SETTLE_POLL_US (G_USEC_PER_SEC / 10)
#define SETTLE_US (3 * G_USEC_PER_SEC)
#define BACKOFF_MAX_S 30

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
  backend_events_register(backend, conn, ids);
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
  backend_events_deregister(conn, ids);
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
    g_autoptr(BackendVirDomain) dom = backend_lookup_domain(conn, domain, NULL, NULL);
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
/* Domains                                                             */

virDomainPtr
backend_lookup_domain(virConnectPtr conn, const char *name, const char *uuid, GError **error)
{
  virDomainPtr dom = uuid ? virDomainLookupByUUIDString(conn, uuid) : NULL;
  if (!dom)
    dom = virDomainLookupByName(conn, name);
  if (!dom) {
    const virError *err = virGetLastError();
    g_set_error(error, BACKEND_ERROR, err && err->code == VIR_ERR_NO_DOMAIN ? ENOENT : EIO,
                "domain %s: %s", name, virGetLastErrorMessage());
  }
  return dom;
}

gboolean
backend_domain_state(virDomainPtr dom, char *uuid, gboolean *running, GError **error)
{
  const char *name = virDomainGetName(dom);
  if (uuid && virDomainGetUUIDString(dom, uuid) < 0) {
    backend_set_virt_error(error, "domain %s: UUID", name);
    return FALSE;
  }
  int active = running ? virDomainIsActive(dom) : 0;
  if (active < 0) {
    backend_set_virt_error(error, "domain %s: state", name);
    return FALSE;
  }
  if (running)
    *running = active == 1;
  return TRUE;
}

DomXmlDomain *
backend_read_domain(virDomainPtr dom, unsigned int flags, GError **error)
{
  g_debug("virDomainGetXMLDesc(%s, %#x)", virDomainGetName(dom), flags);
  g_autofree char *xml = virDomainGetXMLDesc(dom, flags);
  if (!xml) {
    backend_set_virt_error(error, "domain %s: XML", virDomainGetName(dom));
    return NULL;
  }
  return domxml_parse_domain(xml, error);
}

/* ------------------------------------------------------------------ */
/* Model                                                               */

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
      g_strcmp0(backend->fingerprint, raw->fingerprint) == 0)
    return TRUE;

  g_autoptr(GHashTable) unresolved = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  g_auto(GStrv) images = backend->hooks.policy_images
                              ? backend->hooks.policy_images(backend->hooks_data)
                              : NULL;
  g_autoptr(BackendModel) built = backend_model_build(raw, (const char *const *)backend->image_dirs,
                                                      (const char *const *)images,
                                                      backend->logged, unresolved);
  /* The first model is published at once, settled or not: otherwise a
   * single unresolvable snapshot hides every domain for SETTLE_US after
   * the mount.  The worker keeps rebuilding while settling. */
  if (!settled(backend, unresolved) && backend->generation > 0)
    return TRUE;
  g_free(backend->fingerprint);
  backend->fingerprint = g_strdup(raw->fingerprint);
  BackendModel *model = g_steal_pointer(&built);
  if (backend->hooks.model_built)
    backend->hooks.model_built(model, backend->hooks_data);
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

/* ------------------------------------------------------------------ */
/* Worker                                                              */

static gboolean
backend_is_ready(Backend *backend)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  return backend->ready;
}

/* The ready hook of a backend that started without a connection, on its
 * first one; until it is done nobody else gets the connection. */
static void
repair_late(Backend *backend)
{
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
    backend->repairing = g_thread_self();
  }
  if (backend->hooks.ready)
    backend->hooks.ready(backend->hooks_data);
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

void
backend_free(Backend *backend)
{
  if (!backend)
    return;
  if (backend->worker) {
    {
      g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
      backend->stopping = TRUE;
      g_cond_signal(&backend->wake);
    }
    g_thread_join(g_steal_pointer(&backend->worker));
  }
  backend_events_detach(backend);
  connect_drop(backend);
  backend_jobs_clear(backend);
  g_hash_table_unref(backend->logged);
  g_hash_table_unref(backend->unresolved_since);
  backend_model_unref(backend->model);
  g_free(backend->fingerprint);
  g_free(backend->uri);
  g_strfreev(backend->image_dirs);
  g_mutex_clear(&backend->lock);
  g_mutex_clear(&backend->build_lock);
  g_cond_clear(&backend->wake);
  g_free(backend);
  backend_event_loop_stop();
}

Backend *
backend_new(const BackendOptions *options, const BackendHooks *hooks, gpointer hooks_data,
            GError **error)
{
  g_return_val_if_fail(options && options->uri, NULL);
  if (!backend_event_loop_start(error))
    return NULL;

  Backend *backend = g_new0(Backend, 1);
  backend->uri = g_strdup(options->uri);
  backend->image_dirs = g_strdupv((char **)options->image_dirs);
  backend->bandwidth_mib = options->bandwidth_mib;
  backend->connect_later = options->connect_later;
  if (hooks)
    backend->hooks = *hooks;
  backend->hooks_data = hooks_data;
  g_mutex_init(&backend->lock);
  g_mutex_init(&backend->build_lock);
  g_cond_init(&backend->wake);
  for (guint i = 0; i < G_N_ELEMENTS(backend->callback_ids); i++)
    backend->callback_ids[i] = -1;
  backend->model = backend_model_new_empty();
  backend_events_attach(backend);
  backend->logged = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  backend->unresolved_since = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  backend_jobs_init(backend);
  return backend;
}

gboolean
backend_start(Backend *backend, GError **error)
{
  g_return_val_if_fail(!backend->worker, FALSE);
  backend->ready = TRUE;
  g_autoptr(GError) unreachable = NULL;
  if (connect_up(backend, &unreachable)) {
    if (backend->hooks.ready)
      backend->hooks.ready(backend->hooks_data);
    if (!refresh(backend, TRUE, error))
      return FALSE;
  } else if (backend->connect_later) {
    g_message("%s; starting without it, retrying every %u s at most (further failures are "
              "not logged)", unreachable->message, BACKOFF_MAX_S);
    backend->ready = FALSE;
    backend->start_failed = TRUE;
  } else {
    g_propagate_error(error, g_steal_pointer(&unreachable));
    return FALSE;
  }
  backend->worker = g_thread_try_new("backend", worker_run, backend, error);
  return backend->worker != NULL;
}
