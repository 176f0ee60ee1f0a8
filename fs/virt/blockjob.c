/* blockjob.c: libvirt block jobs, started at -o bandwidth= and waited for
 * in one way.
 *
 * Completion comes from VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 events, which the
 * event thread records here (backend_job_event) keyed by domain UUID and
 * disk target.  A waiter sleeps until an event for its disk arrives, and
 * then asks libvirt (virDomainGetBlockJobInfo) where the job stands: the
 * list of jobs is the truth, the event the wake-up call.  Events can be
 * missed (a reconnect, a driver that does not send them), so a waiter
 * also looks once every JOB_LOOK_US without one; each look records the
 * job's progress for backend_job_progress().  A two-phase job is ready to
 * pivot at its READY event, or when two looks in a row find cur == end.
 *
 * One timeout policy: a job is given up when libvirt reports no progress
 * for JOB_STALL_S (no event and the same cur), whatever its size: a large
 * disk at a low -o bandwidth= takes long, a stuck job does not move.
 *
 * Every job runs at -o bandwidth= (MiB/s, libvirt's unit when no
 * *_BANDWIDTH_BYTES flag is given; 0 = unlimited).
 *
 * Thread model: waiters block the calling thread (a freeze, thaw or plan
 * step), never the event thread.  job_lock guards Backend.jobs only and is
 * never held across a libvirt call.
 */
#include <errno.h>

#include "backend-private.h"

#define JOB_LOOK_US G_USEC_PER_SEC
#define JOB_STALL_S 300

/* What is known of the job on one disk. */
typedef struct {
  int status;                   /* last BLOCK_JOB_2 status, -1 none */
  guint64 events;               /* events recorded so far */
  gboolean watched;             /* a waiter looks at it (progress valid) */
  guint64 cur, end;             /* progress at the waiter's last look */
} BackendJob;

void
backend_jobs_init(Backend *backend)
{
  g_mutex_init(&backend->job_lock);
  g_cond_init(&backend->job_cond);
  backend->jobs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
}

void
backend_jobs_clear(Backend *backend)
{
  g_hash_table_unref(backend->jobs);
  g_mutex_clear(&backend->job_lock);
  g_cond_clear(&backend->job_cond);
}

static char *
job_key(const char *uuid, const char *target)
{
  return g_strdup_printf("%s/%s", uuid, target);
}

static char *
dom_key(virDomainPtr dom, const char *target)
{
  char uuid[VIR_UUID_STRING_BUFLEN] = "";
  virDomainGetUUIDString(dom, uuid);
  return job_key(uuid, target);
}

/* The entry of key, created when missing; under job_lock. */
static BackendJob *
job_get(Backend *backend, const char *key)
{
  BackendJob *job = g_hash_table_lookup(backend->jobs, key);
  if (!job) {
    job = g_new0(BackendJob, 1);
    job->status = -1;
    g_hash_table_insert(backend->jobs, g_strdup(key), job);
  }
  return job;
}

void
backend_job_event(Backend *backend, const char *uuid, const char *target, int status)
{
  g_autofree char *key = job_key(uuid, target);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  BackendJob *job = job_get(backend, key);
  job->status = status;
  job->events++;
  g_cond_broadcast(&backend->job_cond);
}

/* Before a job starts, and after it ended: what was recorded of the
 * disk's earlier jobs must not answer for the next one. */
static void
job_forget(Backend *backend, const char *key)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  g_hash_table_remove(backend->jobs, key);
}

/* The last event's status (-1: none) and the number of events so far. */
static int
job_last_event(Backend *backend, const char *key, guint64 *events)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  BackendJob *job = g_hash_table_lookup(backend->jobs, key);
  *events = job ? job->events : 0;
  return job ? job->status : -1;
}

static void
job_record_progress(Backend *backend, const char *key, const virDomainBlockJobInfo *info)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  BackendJob *job = job_get(backend, key);
  job->watched = TRUE;
  job->cur = info->cur;
  job->end = info->end;
}

/* Sleeps until an event for key arrives after the first `seen`, or for
 * JOB_LOOK_US. */
static void
job_sleep(Backend *backend, const char *key, guint64 seen)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  gint64 deadline = g_get_monotonic_time() + JOB_LOOK_US;
  for (;;) {
    BackendJob *job = g_hash_table_lookup(backend->jobs, key);
    if (job && job->events != seen)
      return;
    if (!g_cond_wait_until(&backend->job_cond, &backend->job_lock, deadline))
      return;
  }
}

gboolean
backend_job_progress(Backend *backend, const char *uuid, const char *target, guint64 *cur,
                     guint64 *end)
{
  g_autofree char *key = job_key(uuid, target);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->job_lock);
  BackendJob *job = g_hash_table_lookup(backend->jobs, key);
  if (!job || !job->watched || job->end == 0)
    return FALSE;
  *cur = job->cur;
  *end = job->end;
  return TRUE;
}

/* 1 when a block job runs on target (info filled), 0 when none, -1 error. */
static int
job_info(virDomainPtr dom, const char *target, virDomainBlockJobInfo *info, GError **error)
{
  int ret = virDomainGetBlockJobInfo(dom, target, info, 0);
  if (ret < 0)
    backend_set_virt_error(error, "domain %s disk %s: block job state", virDomainGetName(dom),
                           target);
  return ret;
}

gboolean
backend_job_wait(Backend *backend, virDomainPtr dom, const char *target, BackendJobGoal goal,
                 GError **error)
{
  const char *name = virDomainGetName(dom);
  g_autofree char *key = dom_key(dom, target);
  guint64 last_cur = G_MAXUINT64, last_events = G_MAXUINT64;
  gint64 moved = 0;
  gboolean full = FALSE;        /* the last look saw cur == end */
  for (;;) {
    guint64 events;
    int status = job_last_event(backend, key, &events);
    if (goal == BACKEND_JOB_READY && status == VIR_DOMAIN_BLOCK_JOB_READY)
      return TRUE;
    if (status == VIR_DOMAIN_BLOCK_JOB_FAILED || status == VIR_DOMAIN_BLOCK_JOB_CANCELED) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: block job %s", name, target,
                  status == VIR_DOMAIN_BLOCK_JOB_FAILED ? "failed" : "was cancelled");
      return FALSE;
    }
    if (goal == BACKEND_JOB_READY && status == VIR_DOMAIN_BLOCK_JOB_COMPLETED) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: block job completed before it "
                  "was ready to pivot", name, target);
      return FALSE;
    }
    virDomainBlockJobInfo info;
    int ret = job_info(dom, target, &info, error);
    if (ret < 0)
      return FALSE;
    if (ret == 0 && goal == BACKEND_JOB_GONE) {
      job_forget(backend, key);
      return TRUE;
    }
    if (ret == 0) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: block job vanished before it "
                  "was ready to pivot", name, target);
      return FALSE;
    }
    job_record_progress(backend, key, &info);
    /* libvirt accepts the pivot once it has handled QEMU's ready event,
     * which it then passes on to us: cur == end alone may come a moment
     * earlier.  It counts when the event went missing: at a second look. */
    if (goal == BACKEND_JOB_READY && info.end > 0 && info.cur == info.end && full)
      return TRUE;
    full = info.end > 0 && info.cur == info.end;
    /* Progress is a new cur, or an event (a job between phases reports
     * the same cur). */
    gint64 now = g_get_monotonic_time();
    if (info.cur != last_cur || events != last_events) {
      last_cur = info.cur;
      last_events = events;
      moved = now;
    } else if (now - moved > JOB_STALL_S * G_USEC_PER_SEC) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: block job made no progress for "
                  "%d s (%llu/%llu) while waiting until it is %s", name, target, JOB_STALL_S,
                  info.cur, info.end, goal == BACKEND_JOB_READY ? "ready" : "gone");
      return FALSE;
    }
    job_sleep(backend, key, events);
  }
}

gboolean
backend_job_running(Backend *backend, virDomainPtr dom, const char *target, int type,
                    gboolean *running, GError **error)
{
  virDomainBlockJobInfo info;
  *running = FALSE;
  int ret = job_info(dom, target, &info, error);
  if (ret < 0)
    return FALSE;
  if (ret == 0)
    return TRUE;
  if (info.type != type) {
    g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s disk %s: another block job (type %d) "
                "runs", virDomainGetName(dom), target, info.type);
    return FALSE;
  }
  *running = TRUE;
  return TRUE;
}

gboolean
backend_job_commit(Backend *backend, virDomainPtr dom, const char *target, const char *base,
                   const char *top, GError **error)
{
  const char *name = virDomainGetName(dom);
  g_autofree char *key = dom_key(dom, target);
  job_forget(backend, key);
  g_debug("virDomainBlockCommit(%s, %s, base=%s, top=%s, bandwidth=%lu MiB/s, SHALLOW)", name,
          target, base, top, backend->bandwidth_mib);
  if (virDomainBlockCommit(dom, target, base, top, backend->bandwidth_mib,
                           VIR_DOMAIN_BLOCK_COMMIT_SHALLOW) < 0) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: commit %s into %s: %s", name,
                target, top, base, virGetLastErrorMessage());
    return FALSE;
  }
  return TRUE;
}

gboolean
backend_job_pull(Backend *backend, virDomainPtr dom, const char *target, const char *base,
                 GError **error)
{
  const char *name = virDomainGetName(dom);
  g_autofree char *key = dom_key(dom, target);
  job_forget(backend, key);
  g_debug("virDomainBlockRebase(%s, %s, base=%s, bandwidth=%lu MiB/s)", name, target,
          base ? base : "(none)", backend->bandwidth_mib);
  if (virDomainBlockRebase(dom, target, base, backend->bandwidth_mib, 0) < 0) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: pull down to %s: %s", name,
                target, base ? base : "the base", virGetLastErrorMessage());
    return FALSE;
  }
  return TRUE;
}

gboolean
backend_job_active_commit(Backend *backend, virDomainPtr dom, const char *target,
                          GError **error)
{
  const char *name = virDomainGetName(dom);
  g_autofree char *key = dom_key(dom, target);
  gboolean resume;
  if (!backend_job_running(backend, dom, target, VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT, &resume,
                           error))
    return FALSE;
  if (resume) {
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
  if (!backend_job_wait(backend, dom, target, BACKEND_JOB_READY, error))
    return FALSE;
  g_debug("virDomainBlockJobAbort(%s, %s, PIVOT)", name, target);
  if (virDomainBlockJobAbort(dom, target, VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT) < 0) {
    backend_set_virt_error(error, "domain %s disk %s: pivot", name, target);
    return FALSE;
  }
  return backend_job_wait(backend, dom, target, BACKEND_JOB_GONE, error);
}
