/* status.c: what a domain shows of its running operation: the job status
 * (user.virtsnapfs.job), and the model the backend publishes after a
 * change.  Also the test hook that stops a plan as if the daemon was
 * killed.
 *
 * The progress of a block job comes from the backend's record of the job
 * (blockjob.c), which its waiter keeps current: reading the status never
 * calls libvirt.
 *
 * Thread model: any thread; Snap.lock (a leaf) guards the table and the
 * hook.
 */
#include "snap-private.h"

typedef struct {
  char *op;                     /* "delete s2" */
  guint step;                   /* 1-based, 0 before the first */
  guint n_steps;
  char *what;                   /* "commit vda" */
  char *job_uuid;               /* a block job runs on this domain's */
  char *job_disk;               /* disk, or both NULL */
} SnapStatus;

static void
status_free(gpointer data)
{
  SnapStatus *status = data;
  g_free(status->op);
  g_free(status->what);
  g_free(status->job_uuid);
  g_free(status->job_disk);
  g_free(status);
}

void
snap_status_init(Snap *snap)
{
  snap->status = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, status_free);
  snap->stop_after = -1;
}

void
snap_status_clear_all(Snap *snap)
{
  g_hash_table_unref(snap->status);
}

void
snap_status_set(Snap *snap, const char *domain, const char *op, guint step, guint n_steps,
                const char *what, const char *job_uuid, const char *job_disk)
{
  SnapStatus *status = g_new0(SnapStatus, 1);
  status->op = g_strdup(op);
  status->step = step;
  status->n_steps = n_steps;
  status->what = g_strdup(what);
  status->job_uuid = g_strdup(job_uuid);
  status->job_disk = g_strdup(job_disk);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  g_hash_table_insert(snap->status, g_strdup(domain), status);
}

void
snap_status_clear(Snap *snap, const char *domain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  g_hash_table_remove(snap->status, domain);
}

char *
snap_job_status(Snap *snap, const char *domain)
{
  g_autofree char *text = NULL;
  g_autofree char *job_uuid = NULL;
  g_autofree char *job_disk = NULL;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
    SnapStatus *status = g_hash_table_lookup(snap->status, domain);
    if (!status)
      return NULL;
    if (status->step == 0)
      text = g_strdup_printf("%s: planning", status->op);
    else
      text = g_strdup_printf("%s: step %u/%u %s", status->op, status->step, status->n_steps,
                             status->what);
    job_uuid = g_strdup(status->job_uuid);
    job_disk = g_strdup(status->job_disk);
  }
  guint64 cur, end;
  if (job_uuid && job_disk && backend_job_progress(snap->backend, job_uuid, job_disk, &cur, &end))
    return g_strdup_printf("%s %" G_GUINT64_FORMAT "%%", text, cur * 100 / end);
  return g_steal_pointer(&text);
}

void
snap_refresh(Snap *snap, GLogLevelFlags level, const char *after)
{
  g_autoptr(GError) error = NULL;
  if (!backend_refresh(snap->backend, &error))
    g_log(G_LOG_DOMAIN, level, "model refresh after %s: %s", after, error->message);
}

void
snap_set_stop_after(Snap *snap, int steps, gboolean in_job)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  snap->stop_after = steps;
  snap->stop_in_job = in_job;
}

gboolean
snap_stop_here(Snap *snap, guint steps_done, gboolean *in_job)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  *in_job = snap->stop_in_job;
  return snap->stop_after >= 0 && steps_done == (guint)snap->stop_after;
}
