/* plan.c: delete, rename and revert, the operations that run a plan, and
 * the recovery of plans a crash left.
 *
 * The path of a delete, each step calling only downward:
 *   snap_delete         tries again while the release of a file that was
 *                       just closed is in flight (pins.c)
 *   run_plan
 *     snap_op_begin     the domain's turn (queue.c), the connection and the
 *                       domain (fs/virt); no @now open and no failed thaw
 *                       left (thaw.c); a plan an earlier failure left
 *                       finished first (journal_finish)
 *     plan_for          what to do: the domain's graph (plan-input.c) and
 *                       the planner (chain/plan/)
 *     snap_journal_write  durable before anything changes (journal.c)
 *     hide              the tree stops listing the snapshot before any
 *                       data moves
 *     journal_finish    the steps (executor.c), then the journal goes and
 *                       the snapshot is unhidden (it is gone by then)
 * A plan that fails part-way keeps its journal and stays hidden: the next
 * operation on the domain, or the next start (snap_recover), rolls it
 * forward first.  Rename and revert take the same path; only a delete
 * hides anything, and a rename needs no settled freeze (it changes
 * metadata only).
 *
 * Thread model: the public functions block their caller, in the domain's
 * turn.  The hidden snapshots are guarded by Snap.lock (a leaf), which the
 * model_built hook also takes.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "snap-private.h"

/* How long a delete refused for an open file waits for releases that
 * close(2) left in flight (see snap_delete). */
#define RELEASE_GRACE_US (2 * G_USEC_PER_SEC)

/* ------------------------------------------------------------------ */
/* Hidden snapshots                                                    */

void
snap_plan_init(Snap *snap)
{
  snap->hidden = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
}

void
snap_plan_clear(Snap *snap)
{
  g_hash_table_unref(snap->hidden);
}

static char *
hidden_key(const char *domain, const char *snapshot)
{
  return g_strdup_printf("%s\t%s", domain, snapshot);
}

static void
hide(Snap *snap, const char *domain, const char *snapshot, gboolean on)
{
  g_autofree char *key = hidden_key(domain, snapshot);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(snap->hidden, key));
  if (on)
    g_hash_table_insert(snap->hidden, g_steal_pointer(&key), GUINT_TO_POINTER(count + 1));
  else if (count > 1)
    g_hash_table_insert(snap->hidden, g_steal_pointer(&key), GUINT_TO_POINTER(count - 1));
  else
    g_hash_table_remove(snap->hidden, key);
}

void
snap_plan_filter_model(Snap *snap, BackendModel *model)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  if (g_hash_table_size(snap->hidden) == 0)
    return;
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *domain = g_ptr_array_index(model->domains, i);
    for (guint j = domain->snapshots->len; j-- > 0;) {
      BackendSnapshot *snapshot = g_ptr_array_index(domain->snapshots, j);
      g_autofree char *key = hidden_key(domain->name, snapshot->name);
      if (g_hash_table_contains(snap->hidden, key))
        g_ptr_array_remove_index(domain->snapshots, j);
    }
  }
}

/* ------------------------------------------------------------------ */
/* Running a journal                                                   */

/* Runs a journal to its end: removes it, unhides, clears the status.
 * On failure the journal stays (and the snapshot stays hidden). */
static gboolean
journal_finish(Snap *snap, virDomainPtr dom, SnapJournal *journal, GError **error)
{
  /* A journal read back from disk is written again whole: that drops a
   * torn last line and opens it for appending. */
  if (journal->fd < 0 && !snap_journal_write(journal, snap->state_dir, error))
    return FALSE;
  gboolean ok = snap_exec_run(snap, dom, journal, error);
  if (!ok && *error && (*error)->code == ECANCELED)
    return FALSE; /* the test hook: as if killed here */
  snap_status_clear(snap, journal->domain);
  if (!ok || !snap_journal_remove(journal, error))
    return FALSE;
  if (journal->hidden)
    hide(snap, journal->domain, journal->hidden, FALSE);
  return TRUE;
}

/* A plan an earlier failure left for this domain is finished first. */
static gboolean
finish_pending(Snap *snap, virDomainPtr dom, GError **error)
{
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (!backend_domain_state(dom, uuid, NULL, error))
    return FALSE;
  g_autoptr(GPtrArray) journals = snap_journals_load(snap->state_dir, error);
  if (!journals)
    return FALSE;
  for (guint i = 0; i < journals->len; i++) {
    SnapJournal *journal = g_ptr_array_index(journals, i);
    if (strcmp(journal->uuid, uuid) != 0)
      continue;
    g_message("domain %s: finishing a plan an earlier attempt left (%u of %u steps done)",
              journal->domain, journal->done, journal->steps->len);
    if (!journal_finish(snap, dom, journal, error)) {
      g_prefix_error(error, "an earlier plan could not be finished: ");
      return FALSE;
    }
  }
  return TRUE;
}

gboolean
snap_op_begin(Snap *snap, const char *domain, const char *frozen_what, SnapOp *op,
              GError **error)
{
  op->turn = snap_queue_wait(snap->queue, domain);
  op->started = g_get_monotonic_time();
  op->conn = backend_get_connection(snap->backend, error);
  if (op->conn)
    op->dom = backend_lookup_domain(op->conn, domain, NULL, error);
  return op->dom && (!frozen_what || snap_freeze_settle(snap, domain, frozen_what, error)) &&
         finish_pending(snap, op->dom, error);
}

void
snap_op_end(SnapOp *op)
{
  g_clear_pointer(&op->dom, virDomainFree);
  g_clear_pointer(&op->conn, backend_virt_connect_close);
  g_clear_pointer(&op->turn, snap_turn_end);
}

void
snap_recover(Snap *snap)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) journals = snap_journals_load(snap->state_dir, &error);
  if (!journals) {
    g_warning("cannot read plan journals in %s: %s", snap->state_dir, error->message);
    return;
  }
  for (guint i = 0; i < journals->len; i++) {
    SnapJournal *journal = g_ptr_array_index(journals, i);
    if (journal->hidden)
      hide(snap, journal->domain, journal->hidden, TRUE);
  }
  for (guint i = 0; i < journals->len; i++) {
    SnapJournal *journal = g_ptr_array_index(journals, i);
    g_message("domain %s: finishing a plan left by an earlier run (%u of %u steps done)",
              journal->domain, journal->done, journal->steps->len);
    g_autoptr(SnapTurn) turn = snap_queue_wait(snap->queue, journal->domain);
    g_autoptr(GError) local = NULL;
    g_autoptr(BackendVirConnect) conn = backend_get_connection(snap->backend, &local);
    g_autoptr(BackendVirDomain) dom =
        conn ? backend_lookup_domain(conn, journal->domain, journal->uuid, &local) : NULL;
    if (!dom || !journal_finish(snap, dom, journal, &local))
      g_warning("domain %s: the plan in %s could not be finished (the next operation on the "
                "domain tries again): %s", journal->domain, journal->path, local->message);
    else
      g_message("domain %s: plan finished", journal->domain);
  }
}

/* ------------------------------------------------------------------ */
/* Planning                                                            */

/* Planner and chain errors carry errno codes too: same code, our domain. */
static void
propagate_as_backend(GError **error, GError *local)
{
  if (local && local->domain != BACKEND_ERROR) {
    g_set_error_literal(error, BACKEND_ERROR, local->code, local->message);
    g_error_free(local);
  } else {
    g_propagate_error(error, local);
  }
}

/* For the log: "4.0 MiB", plain ASCII (g_format_size() uses a no-break
 * space). */
static char *
format_size(guint64 bytes)
{
  static const char *const units[] = { "bytes", "KiB", "MiB", "GiB", "TiB" };
  double value = (double)bytes;
  guint u = 0;
  while (value >= 1024 && u + 1 < G_N_ELEMENTS(units)) {
    value /= 1024;
    u++;
  }
  return u == 0 ? g_strdup_printf("%" G_GUINT64_FORMAT " bytes", bytes)
                : g_strdup_printf("%.1f %s", value, units[u]);
}

static char *
describe_choices(const Plan *plan)
{
  if (plan->choices->len == 0)
    return g_strdup("no data moves");
  g_autoptr(GString) text = g_string_new(NULL);
  for (guint i = 0; i < plan->choices->len; i++) {
    const PlanChoice *choice = plan->choices->pdata[i];
    g_autofree char *layer = g_path_get_basename(choice->layer);
    g_autofree char *child = g_path_get_basename(choice->child);
    g_autofree char *commit = format_size(choice->commit_bytes);
    g_autofree char *pull = format_size(choice->pull_bytes);
    if (i > 0)
      g_string_append(text, "; ");
    switch (choice->chosen) {
    case PLAN_MERGE_COMMIT:
      g_string_append_printf(text, "disk %s: commit %s into %s, %s (pull would move %s)",
                             choice->disk, child, layer, commit, pull);
      break;
    case PLAN_MERGE_PULL:
      g_string_append_printf(text, "disk %s: pull %s into %s, %s (commit would move %s)",
                             choice->disk, layer, child, pull, commit);
      break;
    case PLAN_MERGE_NONE:
      g_string_append_printf(text, "disk %s: %s stays, merged later (commit would move %s, "
                             "pull %s)", choice->disk, layer, commit, pull);
      break;
    }
    g_string_append_printf(text, ", because %s", choice->reason);
  }
  return g_string_free(g_steal_pointer(&text), FALSE);
}

static const char *
op_verb(PlanOpKind kind)
{
  switch (kind) {
  case PLAN_OP_DELETE:
    return "delete";
  case PLAN_OP_RENAME:
    return "rename";
  case PLAN_OP_REVERT:
    return "revert to";
  }
  return "?";
}

/* The plan for op (titled title) on dom, with *uuid (the domain's, for
 * the journal) and *summary (for the log).  The planner only knows the
 * graph: a file it wants to create must not exist yet. */
static Plan *
plan_for(Snap *snap, virDomainPtr dom, const PlanOp *op, const char *title, char **uuid,
         char **summary, GError **error)
{
  const char *domain = virDomainGetName(dom);
  g_autoptr(SnapPlanInput) input = snap_plan_input_read(snap, dom, error);
  if (!input)
    return NULL;
  const char *why = g_hash_table_lookup(input->unsupported, op->name);
  if (why) {
    g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s: cannot %s snapshot %s: %s", domain,
                op_verb(op->kind), op->name, why);
    return NULL;
  }
  GError *local = NULL;
  g_autoptr(Plan) plan = planner_plan(input->state, op, &local);
  if (!plan) {
    g_prefix_error(&local, "domain %s: ", domain);
    propagate_as_backend(error, local);
    return NULL;
  }
  for (guint i = 0; i < plan->steps->len; i++) {
    const PlanStep *step = plan->steps->pdata[i];
    if (step->kind == PLAN_STEP_CREATE_OVERLAY && access(step->image, F_OK) == 0) {
      g_set_error(error, BACKEND_ERROR, EEXIST, "domain %s: %s: %s exists already", domain, title,
                  step->image);
      return NULL;
    }
  }
  g_autofree char *choices = describe_choices(plan);
  *summary = g_strdup_printf("%u steps, domain %s; %s", plan->steps->len,
                             input->state->running ? "running" : "shut off", choices);
  *uuid = g_strdup(input->uuid);
  return g_steal_pointer(&plan);
}

static gboolean
run_plan(Snap *snap, const char *domain, const PlanOp *op, GError **error)
{
  g_auto(SnapOp) o = {0};
  if (!snap_op_begin(snap, domain, op->kind == PLAN_OP_RENAME ? NULL : op_verb(op->kind), &o,
                     error))
    return FALSE;
  g_autofree char *title = snap_op_title(op);
  snap_status_set(snap, domain, title, 0, 0, NULL, NULL, NULL);
  g_autofree char *uuid = NULL;
  g_autofree char *summary = NULL;
  g_autoptr(Plan) plan = plan_for(snap, o.dom, op, title, &uuid, &summary, error);
  if (!plan || plan->steps->len == 0) {
    snap_status_clear(snap, domain);
    if (plan)
      g_message("domain %s: %s: done, nothing to do", domain, title);
    return plan != NULL;
  }
  /* One message-level line per operation, when it has finished (below);
   * the plan as chosen is a debug line. */
  g_debug("domain %s: %s: planned: %s", domain, title, summary);

  const char *hidden = op->kind == PLAN_OP_DELETE ? op->name : NULL;
  g_autoptr(SnapJournal) journal = snap_journal_new(domain, uuid, op, hidden, plan->steps);
  if (!snap_journal_write(journal, snap->state_dir, error)) {
    snap_status_clear(snap, domain);
    g_prefix_error(error, "domain %s: %s: journal: ", domain, title);
    return FALSE;
  }
  if (hidden) {
    hide(snap, domain, hidden, TRUE);
    snap_refresh(snap, G_LOG_LEVEL_MESSAGE, "a snapshot operation");
  }
  if (!journal_finish(snap, o.dom, journal, error)) {
    if ((*error)->code != ECANCELED)
      g_warning("domain %s: %s failed; its journal %s stays and the plan is finished by the next "
                "operation on the domain or the next start: %s", domain, title, journal->path,
                (*error)->message);
    return FALSE;
  }
  snap_refresh(snap, G_LOG_LEVEL_MESSAGE, "a snapshot operation");
  g_message("domain %s: %s: done in %.1f s: %s", domain, title,
            (double)(g_get_monotonic_time() - o.started) / G_USEC_PER_SEC, summary);
  return TRUE;
}

/* ------------------------------------------------------------------ */
/* The operations                                                      */

/* A name libvirt can hold: the planner's rules (length included), and
 * (verified with libvirt 9.0) no leading '.' and no '/'. */
gboolean
snap_check_name(const char *name, GError **error)
{
  GError *local = NULL;
  if (!planner_check_name(name, &local)) {
    propagate_as_backend(error, local);
    return FALSE;
  }
  if (name[0] == '.' || strchr(name, '/')) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "snapshot name '%s': libvirt refuses a leading '.' "
                "and any '/'", name);
    return FALSE;
  }
  return TRUE;
}

gboolean
snap_delete(Snap *snap, const char *domain, const char *name, GError **error)
{
  /* Deleting a point in time that is open is EBUSY. */
  PlanOp op = {.kind = PLAN_OP_DELETE, .name = name, .refuse_open = TRUE,
               .now = g_get_real_time() / G_USEC_PER_SEC};
  /* The kernel sends RELEASE after close(2) has returned, as a background
   * request: `cat S/vda.raw; rmdir S` may find S still pinned.  A refusal
   * is tried again each time a file is released, for RELEASE_GRACE_US. */
  gint64 deadline = g_get_monotonic_time() + RELEASE_GRACE_US;
  for (;;) {
    guint64 seen = snap_unpin_count(snap);
    GError *local = NULL;
    if (run_plan(snap, domain, &op, &local))
      return TRUE;
    if (!g_error_matches(local, BACKEND_ERROR, EBUSY) || !snap_wait_unpin(snap, seen, deadline)) {
      g_propagate_error(error, local);
      return FALSE;
    }
    g_debug("domain %s: delete %s: %s; a file was released since, trying again", domain, name,
            local->message);
    g_error_free(local);
  }
}

gboolean
snap_rename(Snap *snap, const char *domain, const char *name, const char *new_name,
            GError **error)
{
  if (!snap_check_name(new_name, error))
    return FALSE;
  PlanOp op = {.kind = PLAN_OP_RENAME, .name = name, .new_name = new_name,
               .now = g_get_real_time() / G_USEC_PER_SEC};
  return run_plan(snap, domain, &op, error);
}

gboolean
snap_revert(Snap *snap, const char *domain, const char *name, gboolean discard, GError **error)
{
  PlanOp op = {.kind = PLAN_OP_REVERT, .name = name, .discard = discard || snap->revert_discard,
               .now = g_get_real_time() / G_USEC_PER_SEC};
  return run_plan(snap, domain, &op, error);
}
