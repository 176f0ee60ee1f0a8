/* steps-job.c: the block job steps of a plan made while the domain ran:
 * an intermediate commit, an active commit with its pivot, a pull into
 * the active image.
 *
 * Each is done once the chain shows it: a commit once top left the live
 * chain, an active commit once the disk runs on base (blockjob.c resumes
 * a job that waits for its pivot), a pull once the image's backing
 * pointer is the new one.  A job of the step's kind that an earlier run
 * left running is waited for, never started twice; another kind is EBUSY.
 * Starting, waiting and the timeout are blockjob.c's.
 *
 * When the domain does not run any more (QEMU was killed, or the guest
 * shut down, between the plan and this run) the same merge runs offline
 * with qemu-img, which writes the same clusters.
 *
 * Thread model: the operation's thread, in the domain's turn.
 */
#include <errno.h>

#include "exec.h"

/* The few seconds libvirt may take to show the end of a job. */
#define SETTLE_TRIES 20
#define SETTLE_POLL_US (G_USEC_PER_SEC / 5)

/* The test hook: stop as if killed while QEMU runs the job. */
static gboolean
job_test_hook(Exec *x, GError **error)
{
  if (!x->stop_in_job)
    return TRUE;
  g_set_error(error, BACKEND_ERROR, ECANCELED, "stopped by the test hook while a block job runs");
  return FALSE;
}

/* After a restart libvirt may still be processing the end of a job that
 * QEMU finished meanwhile: no job is listed, but the live XML changes only
 * a moment later.  Polls the live XML for a few seconds for done(). */
static gboolean
settled_meanwhile(Exec *x, const PlanStep *step,
                  gboolean (*done)(const DomXmlDisk *, const PlanStep *))
{
  for (guint i = 0; i < SETTLE_TRIES; i++) {
    g_usleep(SETTLE_POLL_US);
    g_autoptr(GError) error = NULL;
    g_autoptr(DomXmlDomain) live = read_xml(x, 0, &error);
    DomXmlDisk *disk = live ? domxml_domain_find_disk(live, step->disk) : NULL;
    if (disk && done(disk, step)) {
      g_message("domain %s disk %s: the %s an earlier run started has finished", x->name,
                step->disk, plan_step_kind_name(step->kind));
      return TRUE;
    }
  }
  return FALSE;
}

static gboolean
commit_done(const DomXmlDisk *disk, const PlanStep *step)
{
  return !in_live_chain(disk, step->image);
}

static gboolean
pull_done(const DomXmlDisk *disk, const PlanStep *step)
{
  return same_file(live_backing(disk), step->backing);
}

static gboolean
start_commit(Exec *x, const PlanStep *step, GError **error)
{
  return backend_job_commit(x->backend, x->dom, step->disk, step->backing, step->image, error);
}

static gboolean
start_pull(Exec *x, const PlanStep *step, GError **error)
{
  return backend_job_pull(x->backend, x->dom, step->disk, step->backing, error);
}

/* Runs the step's job of type to its end: started with start(), or the
 * one an earlier run left, waited for.  A start that fails because the
 * job finished meanwhile (done() says so) is success. */
static gboolean
run_job(Exec *x, const PlanStep *step, int type,
        gboolean (*start)(Exec *, const PlanStep *, GError **),
        gboolean (*done)(const DomXmlDisk *, const PlanStep *), GError **error)
{
  gboolean running;
  if (!backend_job_running(x->backend, x->dom, step->disk, type, &running, error))
    return FALSE;
  if (running) {
    g_message("domain %s disk %s: waiting for a block job an earlier run started", x->name,
              step->disk);
  } else {
    g_autoptr(GError) start_error = NULL;
    if (!start(x, step, &start_error)) {
      if (settled_meanwhile(x, step, done))
        return TRUE;
      g_propagate_error(error, g_steal_pointer(&start_error));
      return FALSE;
    }
    if (!job_test_hook(x, error))
      return FALSE;
  }
  return backend_job_wait(x->backend, x->dom, step->disk, BACKEND_JOB_GONE, error);
}

static gboolean
step_commit_job(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
  DomXmlDisk *disk = live ? live_disk(live, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (!in_live_chain(disk, step->image))
    return TRUE; /* the commit finished and libvirt dropped top */
  if (!run_job(x, step, VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, start_commit, commit_done, error))
    return FALSE;
  g_autoptr(DomXmlDomain) after = read_xml(x, 0, error);
  DomXmlDisk *now = after ? live_disk(after, x, step->disk, error) : NULL;
  if (!now)
    return FALSE;
  if (in_live_chain(now, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the commit %s is still in "
                "the chain", x->name, step->disk, step->image);
    return FALSE;
  }
  return TRUE;
}

static gboolean
step_active_commit(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
  DomXmlDisk *disk = live ? live_disk(live, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (same_file(disk->source, step->backing))
    return TRUE; /* pivoted already */
  if (!same_file(disk->source, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s runs on %s, neither %s nor %s",
                x->name, step->disk, disk->source, step->image, step->backing);
    return FALSE;
  }
  if (!same_file(live_backing(disk), step->backing)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: %s is not backed by %s", x->name,
                step->disk, step->image, step->backing);
    return FALSE;
  }
  if (!backend_job_active_commit(x->backend, x->dom, step->disk, error))
    return FALSE;
  g_autoptr(DomXmlDomain) after = read_xml(x, 0, error);
  DomXmlDisk *now = after ? live_disk(after, x, step->disk, error) : NULL;
  if (!now)
    return FALSE;
  if (!same_file(now->source, step->backing)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the pivot it runs on %s, "
                "not %s", x->name, step->disk, now->source, step->backing);
    return FALSE;
  }
  return TRUE;
}

static gboolean
step_pull_job(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
  DomXmlDisk *disk = live ? live_disk(live, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (!same_file(disk->source, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s runs on %s, not %s: cannot pull "
                "into it", x->name, step->disk, disk->source, step->image);
    return FALSE;
  }
  if (same_file(live_backing(disk), step->backing))
    return TRUE;
  if (!run_job(x, step, VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, start_pull, pull_done, error))
    return FALSE;
  g_autoptr(DomXmlDomain) after = read_xml(x, 0, error);
  DomXmlDisk *now = after ? live_disk(after, x, step->disk, error) : NULL;
  if (!now)
    return FALSE;
  if (!same_file(live_backing(now), step->backing)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the pull %s is backed by %s, "
                "not %s", x->name, step->disk, step->image, live_backing(now) ? live_backing(now)
                : "nothing", step->backing ? step->backing : "nothing");
    return FALSE;
  }
  return TRUE;
}

/* An active commit for a domain that no longer runs (QEMU died or was shut
 * down in the middle of the plan): qemu-img commit, then the definition
 * names the base.  Done once it does; a commit cut short runs again. */
static gboolean
step_active_commit_offline(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) def = read_xml(x, VIR_DOMAIN_XML_INACTIVE, error);
  DomXmlDisk *disk = def ? live_disk(def, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (same_file(disk->source, step->backing))
    return TRUE;
  if (!same_file(disk->source, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s is defined on %s, neither %s nor %s",
                x->name, step->disk, disk->source, step->image, step->backing);
    return FALSE;
  }
  if (!step_commit_offline(x, step, error))
    return FALSE;
  PlanStep set_active = {.kind = PLAN_STEP_SET_ACTIVE, .disk = step->disk,
                         .image = step->backing, .format = step->backing_format};
  return step_set_active(x, &set_active, error);
}

/* The image of target's defined chain whose backing file is image, and
 * its format; NULL (no error) when image is not in the chain below. */
static char *
defined_child(Exec *x, const char *target, const char *image, ChainFormat *format,
              GError **error)
{
  g_autoptr(DomXmlDomain) def = read_xml(x, VIR_DOMAIN_XML_INACTIVE, error);
  DomXmlDisk *disk = def ? live_disk(def, x, target, error) : NULL;
  if (!disk)
    return NULL;
  g_auto(ChainWalk) walk = {0};
  if (!snap_guard_chain(x->guard, disk->source, disk->format, NULL, 0, &walk, error))
    return NULL;
  for (guint i = 0; i + 1 < walk.layers->len; i++) {
    if (same_file(chain_layer_path(walk.layers->pdata[i + 1]), image)) {
      *format = chain_layer_format(walk.layers->pdata[i]);
      return g_strdup(chain_layer_path(walk.layers->pdata[i]));
    }
  }
  return NULL;
}

/* An intermediate commit for a domain that no longer runs: libvirt's
 * block commit also points the image above top at base, so after
 * qemu-img commit that child is rebased (unsafe: base now holds top's
 * clusters).  Done once no image of the chain is backed by top. */
static gboolean
step_commit_job_offline(Exec *x, const PlanStep *step, GError **error)
{
  GError *local = NULL;
  ChainFormat child_format = CHAIN_FORMAT_UNKNOWN;
  g_autofree char *child = defined_child(x, step->disk, step->image, &child_format, &local);
  if (local) {
    g_propagate_error(error, local);
    return FALSE;
  }
  if (!child)
    return TRUE;
  if (!step_commit_offline(x, step, error))
    return FALSE;
  PlanStep rebase = {.kind = PLAN_STEP_REBASE_UNSAFE, .disk = step->disk, .image = child,
                     .format = child_format, .backing = step->backing,
                     .backing_format = step->backing_format};
  return step_rebase_unsafe(x, &rebase, error);
}

/* A block job step of a plan made while the domain ran, for a domain that
 * is shut off now (QEMU was killed, or the guest shut down, between the
 * plan and this run): the same merge offline with qemu-img, which writes
 * the same clusters.  Sets *handled when it ran the step. */
static gboolean
run_job_step_offline(Exec *x, const PlanStep *step, gboolean *handled, GError **error)
{
  *handled = FALSE;
  if (!step->block_job)
    return TRUE;
  gboolean running;
  if (!get_running(x, &running, error))
    return FALSE;
  if (running)
    return TRUE;
  *handled = TRUE;
  g_message("domain %s disk %s: the domain is not running any more: %s %s offline", x->name,
            step->disk, plan_step_kind_name(step->kind), step->image);
  switch (step->kind) {
  case PLAN_STEP_COMMIT:
    return step_commit_job_offline(x, step, error);
  case PLAN_STEP_ACTIVE_COMMIT:
    return step_active_commit_offline(x, step, error);
  case PLAN_STEP_PULL:
    return step_pull_offline(x, step, error);
  default:
    *handled = FALSE;
    return TRUE;
  }
}

gboolean
step_block_job(Exec *x, const PlanStep *step, GError **error)
{
  gboolean handled;
  if (!run_job_step_offline(x, step, &handled, error))
    return FALSE;
  if (handled)
    return TRUE;
  switch (step->kind) {
  case PLAN_STEP_COMMIT:
    return step_commit_job(x, step, error);
  case PLAN_STEP_ACTIVE_COMMIT:
    return step_active_commit(x, step, error);
  case PLAN_STEP_PULL:
    return step_pull_job(x, step, error);
  default:
    g_set_error(error, BACKEND_ERROR, EINVAL, "plan step %s is no block job",
                plan_step_kind_name(step->kind));
    return FALSE;
  }
}
