/* events.c: libvirt's callbacks into the backend.
 *
 * libvirt's event loop (virt.c) runs the callbacks registered here.  They
 * never call libvirt: they set Backend.dirty (or record a block job
 * status, blockjob.c) and wake the worker, which re-reads libvirt
 * (backend.c).  The close callback marks the connection broken, and the
 * worker reconnects.
 *
 * Thread model: the callbacks run on libvirt's event thread and take
 * BackendSink.lock, then Backend.lock or Backend.job_lock.  libvirt may
 * still be running a callback when it is deregistered, and never calls
 * the freecb of a connection that died, so the callbacks reach the
 * backend through a small sink: backend_events_detach() cuts it off, and
 * the event loop frees it once its thread has stopped.
 */
#include <string.h>

#include "backend-private.h"

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

void
backend_events_attach(Backend *backend)
{
  backend->sink = g_new0(BackendSink, 1);
  g_mutex_init(&backend->sink->lock);
  backend->sink->backend = backend;
}

void
backend_events_detach(Backend *backend)
{
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->sink->lock);
    backend->sink->backend = NULL;
  }
  backend_event_loop_free_later(g_steal_pointer(&backend->sink), sink_free);
}

/* Asks the worker for a rebuild; under the sink's lock. */
static void
wake(BackendSink *sink)
{
  Backend *backend = sink->backend;
  if (!backend)
    return;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->lock);
  backend->dirty = TRUE;
  g_cond_signal(&backend->wake);
}

static int
on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
  BackendSink *sink = opaque;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&sink->lock);
  g_debug("event: domain %s lifecycle %d/%d", virDomainGetName(dom), event, detail);
  wake(sink);
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
  wake(sink);
}

static void
on_device(virConnectPtr conn, virDomainPtr dom, const char *alias, void *opaque)
{
  BackendSink *sink = opaque;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&sink->lock);
  g_debug("event: domain %s device %s changed", virDomainGetName(dom), alias);
  wake(sink);
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

void
backend_events_register(Backend *backend, virConnectPtr conn, int ids[5])
{
  /* Remote drivers support keepalive; embedded and local ones say no. */
  if (virConnectSetKeepAlive(conn, 5, 3) < 0)
    g_debug("%s: no keepalive: %s", backend->uri, virGetLastErrorMessage());
  if (virConnectRegisterCloseCallback(conn, on_close, backend->sink, NULL) < 0)
    g_debug("%s: no close callback: %s", backend->uri, virGetLastErrorMessage());
  for (guint i = 0; i < G_N_ELEMENTS(events); i++) {
    ids[i] = virConnectDomainEventRegisterAny(conn, NULL, events[i].id, events[i].cb,
                                              backend->sink, NULL);
    if (ids[i] < 0)
      g_debug("%s: cannot register event %d: %s", backend->uri, events[i].id,
              virGetLastErrorMessage());
  }
}

void
backend_events_deregister(virConnectPtr conn, const int ids[5])
{
  for (guint i = 0; i < G_N_ELEMENTS(events); i++)
    if (ids[i] >= 0)
      virConnectDomainEventDeregisterAny(conn, ids[i]);
  virConnectUnregisterCloseCallback(conn, on_close);
}
