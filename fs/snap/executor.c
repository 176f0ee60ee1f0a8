/* executor.c: running the steps of a plan (planner.h), one after the
 * other, each recorded in the journal once done.
 *
 * A step is idempotent (exec.h): after a crash, recovery runs the journal
 * again from its first step not recorded as done, and a step cut short
 * finishes.  While a plan runs, the domain's job status (status.c) names
 * its step; the test hook there can stop a plan as if the daemon was
 * killed, between two steps or inside a block job step.
 *
 * Nothing runs on a file outside the image policy: before each step,
 * fresh or rolled forward by recovery, guard.c checks every path the step
 * will touch, walking the chains again (headers may have changed since
 * the plan was made), and the step reads chains under that same policy.
 *
 * Thread model: runs on the thread of the operation (or of recovery), in
 * the domain's turn.
 */
#include <errno.h>

#include "exec.h"

/* The step's function: block jobs (steps-job.c) or the rest. */
static gboolean
run_step(Exec *x, const PlanStep *step, GError **error)
{
  switch (step->kind) {
  case PLAN_STEP_COMMIT:
    return step->block_job ? step_block_job(x, step, error) : step_commit_offline(x, step, error);
  case PLAN_STEP_ACTIVE_COMMIT:
    return step_block_job(x, step, error);
  case PLAN_STEP_PULL:
    return step->block_job ? step_block_job(x, step, error) : step_pull_offline(x, step, error);
  case PLAN_STEP_REBASE_UNSAFE:
    return step_rebase_unsafe(x, step, error);
  case PLAN_STEP_CREATE_OVERLAY:
    return step_create_overlay(x, step, error);
  case PLAN_STEP_SET_ACTIVE:
    return step_set_active(x, step, error);
  case PLAN_STEP_REDEFINE_SNAPSHOT:
    return step_redefine(x, step, error);
  case PLAN_STEP_DELETE_SNAPSHOT:
    return step_delete_snapshot(x, step, error);
  case PLAN_STEP_SET_CURRENT:
    return step_set_current(x, step, error);
  case PLAN_STEP_DELETE_FILE:
    return step_delete_file(x, step, error);
  }
  g_set_error(error, BACKEND_ERROR, EINVAL, "unknown plan step %d", (int)step->kind);
  return FALSE;
}

/* "commit vda", "redefine-snapshot s3": for the log and the job status. */
static char *
step_title(const PlanStep *step)
{
  const char *object = step->disk ? step->disk : step->snapshot;
  return g_strdup_printf("%s %s", plan_step_kind_name(step->kind), object ? object : "");
}

gboolean
snap_exec_run(Snap *snap, virDomainPtr dom, SnapJournal *journal, GError **error)
{
  g_autoptr(BackendVirConnect) conn = backend_get_connection(snap->backend, error);
  if (!conn)
    return FALSE;
  Exec x = {
    .snap = snap,
    .backend = snap->backend,
    .conn = conn,
    .dom = dom,
    .name = virDomainGetName(dom),
    .journal = journal,
  };
  if (!backend_domain_state(dom, x.uuid, NULL, error))
    return FALSE;
  PlanOp op;
  snap_journal_get_op(journal, &op);
  g_autofree char *op_title = snap_op_title(&op);
  guint n = journal->steps->len;
  while (journal->done < n) {
    const PlanStep *step = journal->steps->pdata[journal->done];
    gboolean in_job = FALSE;
    if (snap_stop_here(snap, journal->done, &in_job)) {
      gboolean job = step->block_job &&
                     (step->kind == PLAN_STEP_COMMIT || step->kind == PLAN_STEP_PULL);
      if (!(in_job && job)) {
        g_set_error(error, BACKEND_ERROR, ECANCELED, "%s: stopped after step %u by the test hook",
                    op_title, journal->done);
        return FALSE;
      }
      x.stop_in_job = TRUE;
    }
    g_autofree char *title = step_title(step);
    snap_status_set(snap, journal->domain, op_title, journal->done + 1, n, title, x.uuid,
                    step->block_job ? step->disk : NULL);
    g_debug("domain %s: %s: step %u/%u %s", journal->domain, op_title, journal->done + 1, n,
            title);
    g_autoptr(SnapGuard) guard = snap_guard_new(snap, error);
    x.guard = guard;
    if (!guard || !snap_guard_step(guard, step, error) || !run_step(&x, step, error)) {
      g_prefix_error(error, "%s: step %u/%u %s: ", op_title, journal->done + 1, n, title);
      return FALSE;
    }
    if (!snap_journal_step_done(journal, error))
      return FALSE;
  }
  g_autoptr(SnapGuard) guard = snap_guard_new(snap, error);
  x.guard = guard;
  if (!guard || !steps_tidy_inactive_xml(&x, error)) {
    g_prefix_error(error, "%s: after the last step: ", op_title);
    return FALSE;
  }
  return TRUE;
}
