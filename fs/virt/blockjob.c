/* blockjob.c: running a libvirt block job to its end.
 *
 * Completion comes from VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 events, which the
 * event thread records here (backend_job_event) keyed by domain UUID and
 * disk target.  Events can be missed (a reconnect, a driver that does not
 * send them), so the waiter also polls virDomainGetBlockJobInfo() every
 * half second: libvirt reports cur == end for a two-phase job only once it
 * is ready to pivot.  Every job runs at -o bandwidth= (MiB/s, libvirt's
 * unit when no *_BANDWIDTH_BYTES flag is given; 0 = unlimited).
 *
 * Thread model: waiters block the calling thread (a freeze, thaw or plan
 * step), never the event thread.  job_lock guards job_events only.
 */
#include <errno.h>

#include "backend-private.h"

#define JOB_READY_TIMEOUT_S 600
#define JOB_END_TIMEOUT_S 120
#define JOB_POLL_US (G_USEC_PER_SEC / 2)

static char *
job_key(const char *uuid, const char *target)
{
  return g_strdup_printf("%s/%s", uuid, target);
}

void
backend_job_event(Backend *backend, const char *uuid, const char *target, int status)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  g_hash_table_insert(backend->job_events, job_key(uuid, target), GINT_TO_POINTER(status + 1));
  g_cond_broadcast(&backend->job_cond);
}

static void
job_forget(Backend *backend, const char *key)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  g_hash_table_remove(backend->job_events, key);
}

/* The last status an event reported, or -1; waits up to JOB_POLL_US for
 * one to arrive. */
static int
job_wait_event(Backend *backend, const char *key)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  gint64 deadline = g_get_monotonic_time() + JOB_POLL_US;
  gpointer value;
  while (!(value = g_hash_table_lookup(backend->job_events, key)) &&
         g_cond_wait_until(&backend->job_cond, &backend->job_lock, deadline))
    ;
  return value ? GPOINTER_TO_INT(value) - 1 : -1;
}

/* Waits until the active commit on target is ready to pivot. */
static gboolean
wait_ready(Backend *backend, virDomainPtr dom, const char *key, const char *target,
           GError **error)
{
  const char *name = virDomainGetName(dom);
  gint64 deadline = g_get_monotonic_time() + JOB_READY_TIMEOUT_S * G_USEC_PER_SEC;
  for (;;) {
    int status = job_wait_event(backend, key);
    if (status == VIR_DOMAIN_BLOCK_JOB_READY)
      return TRUE;
    if (status == VIR_DOMAIN_BLOCK_JOB_FAILED || status == VIR_DOMAIN_BLOCK_JOB_CANCELED ||
        status == VIR_DOMAIN_BLOCK_JOB_COMPLETED) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: commit job ended (status %d) "
                  "before it was ready", name, target, status);
      return FALSE;
    }
    virDomainBlockJobInfo info;
    int ret = virDomainGetBlockJobInfo(dom, target, &info, 0);
    if (ret < 0) {
      backend_set_virt_error(error, "domain %s disk %s: block job state", name, target);
      return FALSE;
    }
    if (ret == 0) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: commit job vanished", name,
                  target);
      return FALSE;
    }
    if (info.end > 0 && info.cur == info.end)
      return TRUE;
    if (g_get_monotonic_time() > deadline) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: commit job not ready after "
                  "%d s (%llu/%llu)", name, target, JOB_READY_TIMEOUT_S, info.cur, info.end);
      return FALSE;
    }
  }
}

/* Waits until no block job runs on target any more. */
static gboolean
wait_gone(virDomainPtr dom, const char *target, GError **error)
{
  gint64 deadline = g_get_monotonic_time() + JOB_END_TIMEOUT_S * G_USEC_PER_SEC;
  for (;;) {
    virDomainBlockJobInfo info;
    int ret = virDomainGetBlockJobInfo(dom, target, &info, 0);
    if (ret == 0)
      return TRUE;
    if (ret < 0) {
      backend_set_virt_error(error, "domain %s disk %s: block job state", virDomainGetName(dom),
                             target);
      return FALSE;
    }
    if (g_get_monotonic_time() > deadline) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: block job still there after "
                  "pivot", virDomainGetName(dom), target);
      return FALSE;
    }
    g_usleep(JOB_POLL_US / 5);
  }
}

gboolean
backend_job_active_commit(Backend *backend, virDomainPtr dom, const char *uuid,
                          const char *target, GError **error)
{
  const char *name = virDomainGetName(dom);
  g_autofree char *key = job_key(uuid, target);

  virDomainBlockJobInfo info;
  int ret = virDomainGetBlockJobInfo(dom, target, &info, 0);
  if (ret < 0) {
    backend_set_virt_error(error, "domain %s disk %s: block job state", name, target);
    return FALSE;
  }
  if (ret == 1 && info.type != VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT) {
    g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s disk %s: another block job (type %d) "
                "is running", name, target, info.type);
    return FALSE;
  }
  if (ret == 1) {
    /* Left by an earlier run (a crash between commit and pivot): finish it. */
    g_message("domain %s disk %s: resuming an active commit", name, target);
  } else {
    job_forget(backend, key);
    g_debug("virDomainBlockCommit(%s, %s, bandwidth=%lu MiB/s, ACTIVE|SHALLOW)", name, target,
            backend->bandwidth_mib);
    if (virDomainBlockCommit(dom, target, NULL, NULL, backend->bandwidth_mib,
                             VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | VIR_DOMAIN_BLOCK_COMMIT_SHALLOW) < 0) {
      backend_set_virt_error(error, "domain %s disk %s: active commit", name, target);
      return FALSE;
    }
  }
  if (!wait_ready(backend, dom, key, target, error))
    return FALSE;
  g_debug("virDomainBlockJobAbort(%s, %s, PIVOT)", name, target);
  if (virDomainBlockJobAbort(dom, target, VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT) < 0) {
    backend_set_virt_error(error, "domain %s disk %s: pivot", name, target);
    return FALSE;
  }
  gboolean ok = wait_gone(dom, target, error);
  job_forget(backend, key);
  return ok;
}
