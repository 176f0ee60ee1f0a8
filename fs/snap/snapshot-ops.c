/* snapshot-ops.c: create, delete, rename and revert (DESIGN.md 3, 5), the
 * pinned layers, the job status, and the recovery of journaled plans.
 *
 * Operations on one domain run one at a time in the order they arrived: a
 * FIFO of tickets per domain (BackendExec.queues) decides the turn, then
 * the backend's domain lock (shared with @now freezes) is taken.  Other
 * domains run in parallel.
 *
 * A changing operation (delete, rename, revert) is a plan:
 *   1. read the domain into a PlanState (plan-input.c) and plan it;
 *   2. write the journal (journal.c), durable before anything changes;
 *   3. hide a snapshot being deleted from the model, so the tree stops
 *      listing it before any data moves;
 *   4. run the steps (executor.c), recording each;
 *   5. remove the journal, unhide, publish the new model.
 * A plan that fails part-way keeps its journal and stays hidden: the next
 * operation on the domain, or the next start, rolls it forward first.
 * Creating a snapshot is one atomic libvirt call and needs no journal.
 *
 * Domains frozen for @now refuse create, delete and revert with EBUSY: the
 * freeze's temporary overlay is the active image, and a thaw after a plan
 * changed the chain below it could not commit it back.  The same goes for
 * a freeze whose thaw failed (an image was locked, the disk was full):
 * it is retried first, and EBUSY while it cannot be finished.
 *
 * Thread model: the public functions block their caller; pins and the job
 * status are guarded by BackendExec.lock, a leaf lock.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "exec.h"
#include "guard.h"

/* How long a delete refused for an open file waits for releases that
 * close(2) left in flight (see backend_snapshot_delete). */
#define RELEASE_GRACE_US (2 * G_USEC_PER_SEC)

/* A filename component stays below NAME_MAX with this much of the name. */
#define OVERLAY_NAME_MAX 160

typedef struct {
  guint64 next;
  guint64 serving;
} BackendExecQueue;

static void
status_free(BackendExecStatus *status)
{
  g_free(status->op);
  g_free(status->what);
  g_free(status->job_disk);
  g_free(status);
}

void
backend_exec_init(Backend *backend, const BackendOptions *options)
{
  BackendExec *exec = g_new0(BackendExec, 1);
  exec->revert_discard = options->revert_discard;
  g_mutex_init(&exec->queue_lock);
  g_cond_init(&exec->queue_cond);
  exec->queues = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  g_mutex_init(&exec->lock);
  exec->hidden = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  exec->pins = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_cond_init(&exec->unpinned);
  exec->status = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                       (GDestroyNotify)status_free);
  exec->stop_after = -1;
  backend->exec = exec;
}

void
backend_exec_free(Backend *backend)
{
  BackendExec *exec = g_steal_pointer(&backend->exec);
  if (!exec)
    return;
  g_hash_table_unref(exec->queues);
  g_hash_table_unref(exec->hidden);
  g_hash_table_unref(exec->pins);
  g_hash_table_unref(exec->status);
  g_mutex_clear(&exec->queue_lock);
  g_cond_clear(&exec->queue_cond);
  g_cond_clear(&exec->unpinned);
  g_mutex_clear(&exec->lock);
  g_free(exec);
}

void
backend_exec_set_stop_after(Backend *backend, int steps, gboolean in_job)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  backend->exec->stop_after = steps;
  backend->exec->stop_in_job = in_job;
}

gboolean
backend_exec_stop_here(Backend *backend, guint steps_done, gboolean *in_job)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  *in_job = backend->exec->stop_in_job;
  return backend->exec->stop_after >= 0 && steps_done == (guint)backend->exec->stop_after;
}

/* ------------------------------------------------------------------ */
/* Turns: FIFO per domain, then the domain lock                        */

typedef struct {
  Backend *backend;
  char *domain;
  GMutex *mutex;
} DomainTurn;

static DomainTurn *
turn_take(Backend *backend, const char *domain)
{
  BackendExec *exec = backend->exec;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&exec->queue_lock);
    BackendExecQueue *queue = g_hash_table_lookup(exec->queues, domain);
    if (!queue) {
      queue = g_new0(BackendExecQueue, 1);
      g_hash_table_insert(exec->queues, g_strdup(domain), queue);
    }
    guint64 ticket = queue->next++;
    while (queue->serving != ticket)
      g_cond_wait(&exec->queue_cond, &exec->queue_lock);
  }
  DomainTurn *turn = g_new0(DomainTurn, 1);
  turn->backend = backend;
  turn->domain = g_strdup(domain);
  turn->mutex = backend_domain_lock(backend, domain);
  g_mutex_lock(turn->mutex);
  return turn;
}

static void
turn_release(DomainTurn *turn)
{
  if (!turn)
    return;
  g_mutex_unlock(turn->mutex);
  BackendExec *exec = turn->backend->exec;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&exec->queue_lock);
    BackendExecQueue *queue = g_hash_table_lookup(exec->queues, turn->domain);
    queue->serving++;
    g_cond_broadcast(&exec->queue_cond);
  }
  g_free(turn->domain);
  g_free(turn);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(DomainTurn, turn_release)

/* ------------------------------------------------------------------ */
/* Hidden snapshots, pins, status                                      */

static char *
hidden_key(const char *domain, const char *snapshot)
{
  return g_strdup_printf("%s\t%s", domain, snapshot);
}

static void
hide(Backend *backend, const char *domain, const char *snapshot, gboolean on)
{
  g_autofree char *key = hidden_key(domain, snapshot);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(backend->exec->hidden, key));
  if (on)
    g_hash_table_insert(backend->exec->hidden, g_steal_pointer(&key), GUINT_TO_POINTER(count + 1));
  else if (count > 1)
    g_hash_table_insert(backend->exec->hidden, g_steal_pointer(&key), GUINT_TO_POINTER(count - 1));
  else
    g_hash_table_remove(backend->exec->hidden, key);
}

void
backend_exec_filter_model(Backend *backend, BackendModel *model)
{
  if (!backend->exec)
    return;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  if (g_hash_table_size(backend->exec->hidden) == 0)
    return;
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *domain = g_ptr_array_index(model->domains, i);
    for (guint j = domain->snapshots->len; j-- > 0;) {
      BackendSnapshot *snapshot = g_ptr_array_index(domain->snapshots, j);
      g_autofree char *key = hidden_key(domain->name, snapshot->name);
      if (g_hash_table_contains(backend->exec->hidden, key))
        g_ptr_array_remove_index(domain->snapshots, j);
    }
  }
}

static char *
pin_key(const ChainLayer *layer)
{
  return g_strdup_printf("%ju:%ju", (uintmax_t)chain_layer_dev(layer),
                         (uintmax_t)chain_layer_ino(layer));
}

/* The planner wants the image each reader reads from (planner.h: the
 * point image of an open snapshot file, the frozen image under @now) and
 * follows the chain below it itself: the top layer of the chain. */
void
backend_pin_chain(Backend *backend, const char *domain, Chain *chain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  char *key = pin_key(chain_get_layer(chain, 0));
  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(backend->exec->pins, key));
  g_hash_table_insert(backend->exec->pins, key, GUINT_TO_POINTER(count + 1));
}

void
backend_unpin_chain(Backend *backend, const char *domain, Chain *chain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  g_autofree char *key = pin_key(chain_get_layer(chain, 0));
  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(backend->exec->pins, key));
  if (count > 1)
    g_hash_table_insert(backend->exec->pins, g_steal_pointer(&key), GUINT_TO_POINTER(count - 1));
  else if (count == 1)
    g_hash_table_remove(backend->exec->pins, key);
  else
    g_warning("domain %s: unpinning %s, which is not pinned", domain,
              chain_layer_path(chain_get_layer(chain, 0)));
  backend->exec->unpins++;
  g_cond_broadcast(&backend->exec->unpinned);
}

static guint64
unpin_count(Backend *backend)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  return backend->exec->unpins;
}

/* Waits until something is unpinned after the count `seen`, or until
 * deadline (monotonic); TRUE if something was. */
static gboolean
wait_unpin(Backend *backend, guint64 seen, gint64 deadline)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  while (backend->exec->unpins == seen)
    if (!g_cond_wait_until(&backend->exec->unpinned, &backend->exec->lock, deadline))
      return FALSE;
  return TRUE;
}

gboolean
backend_exec_pinned(Backend *backend, dev_t dev, ino_t ino)
{
  g_autofree char *key = g_strdup_printf("%ju:%ju", (uintmax_t)dev, (uintmax_t)ino);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  return g_hash_table_contains(backend->exec->pins, key);
}

void
backend_exec_status_set(Backend *backend, const char *domain, const char *op, guint step,
                        guint n_steps, const char *what, const char *job_disk)
{
  BackendExecStatus *status = g_new0(BackendExecStatus, 1);
  status->op = g_strdup(op);
  status->step = step;
  status->n_steps = n_steps;
  status->what = g_strdup(what);
  status->job_disk = g_strdup(job_disk);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  g_hash_table_insert(backend->exec->status, g_strdup(domain), status);
}

void
backend_exec_status_clear(Backend *backend, const char *domain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
  g_hash_table_remove(backend->exec->status, domain);
}

char *
backend_job_status(Backend *backend, const char *domain)
{
  g_autofree char *text = NULL;
  g_autofree char *job_disk = NULL;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->exec->lock);
    BackendExecStatus *status = g_hash_table_lookup(backend->exec->status, domain);
    if (!status)
      return NULL;
    if (status->step == 0)
      text = g_strdup_printf("%s: planning", status->op);
    else
      text = g_strdup_printf("%s: step %u/%u %s", status->op, status->step, status->n_steps,
                             status->what);
    job_disk = g_strdup(status->job_disk);
  }
  if (!job_disk)
    return g_steal_pointer(&text);
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, NULL);
  g_autoptr(BackendVirDomain) dom = conn ? virDomainLookupByName(conn, domain) : NULL;
  virDomainBlockJobInfo info;
  if (dom && virDomainGetBlockJobInfo(dom, job_disk, &info, 0) == 1 && info.end > 0)
    return g_strdup_printf("%s %llu%%", text, info.cur * 100 / info.end);
  return g_steal_pointer(&text);
}

/* ------------------------------------------------------------------ */
/* Common parts                                                        */

static void
refresh_model(Backend *backend)
{
  g_autoptr(GError) error = NULL;
  if (!backend_refresh(backend, &error))
    g_message("model refresh after a snapshot operation: %s", error->message);
}

static gboolean
check_not_frozen(Backend *backend, const char *domain, const char *what, GError **error)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
  if (g_hash_table_contains(backend->freezes, domain)) {
    g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s: cannot %s while @now is open", domain,
                what);
    return FALSE;
  }
  return TRUE;
}

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

/* Runs a journal to its end: removes it, unhides, clears the status.
 * On failure the journal stays (and the snapshot stays hidden). */
static gboolean
journal_finish(Backend *backend, virDomainPtr dom, BackendJournal *journal, GError **error)
{
  /* A journal read back from disk is written again whole: that drops a
   * torn last line and opens it for appending. */
  if (journal->fd < 0 && !backend_journal_write(journal, backend->state_dir, error))
    return FALSE;
  gboolean ok = backend_exec_run(backend, dom, journal, error);
  if (!ok && *error && (*error)->code == ECANCELED)
    return FALSE; /* the test hook: as if killed here */
  backend_exec_status_clear(backend, journal->domain);
  if (!ok)
    return FALSE;
  if (!backend_journal_remove(journal, error))
    return FALSE;
  if (journal->hidden)
    hide(backend, journal->domain, journal->hidden, FALSE);
  return TRUE;
}

/* A plan an earlier failure left for this domain is finished first. */
static gboolean
finish_pending(Backend *backend, virDomainPtr dom, GError **error)
{
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom, uuid) < 0) {
    backend_set_virt_error(error, "domain %s: UUID", virDomainGetName(dom));
    return FALSE;
  }
  g_autoptr(GPtrArray) journals = backend_journals_load(backend->state_dir, error);
  if (!journals)
    return FALSE;
  for (guint i = 0; i < journals->len; i++) {
    BackendJournal *journal = g_ptr_array_index(journals, i);
    if (strcmp(journal->uuid, uuid) != 0)
      continue;
    g_message("domain %s: finishing a plan an earlier attempt left (%u of %u steps done)",
              journal->domain, journal->done, journal->steps->len);
    if (!journal_finish(backend, dom, journal, error)) {
      g_prefix_error(error, "an earlier plan could not be finished: ");
      return FALSE;
    }
  }
  return TRUE;
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

static gboolean
run_plan(Backend *backend, const char *domain, const PlanOp *op, GError **error)
{
  g_autoptr(DomainTurn) turn = turn_take(backend, domain);
  gint64 started = g_get_monotonic_time(); /* once it is this call's turn */
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, error);
  if (!conn)
    return FALSE;
  g_autoptr(BackendVirDomain) dom = backend_lookup_domain(conn, domain, NULL, error);
  if (!dom)
    return FALSE;
  if (op->kind != PLAN_OP_RENAME && !check_not_frozen(backend, domain, op_verb(op->kind), error))
    return FALSE;
  if (op->kind != PLAN_OP_RENAME && !backend_freeze_settle(backend, domain, error))
    return FALSE;
  if (!finish_pending(backend, dom, error))
    return FALSE;

  g_autofree char *title = op->kind == PLAN_OP_RENAME
      ? g_strdup_printf("rename %s to %s", op->name, op->new_name)
      : g_strdup_printf("%s %s", op_verb(op->kind), op->name);
  backend_exec_status_set(backend, domain, title, 0, 0, NULL, NULL);
  g_autoptr(BackendPlanInput) input = backend_plan_input_read(backend, dom, error);
  if (!input) {
    backend_exec_status_clear(backend, domain);
    return FALSE;
  }
  const char *why = g_hash_table_lookup(input->unsupported, op->name);
  if (why) {
    backend_exec_status_clear(backend, domain);
    g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s: cannot %s snapshot %s: %s", domain,
                op_verb(op->kind), op->name, why);
    return FALSE;
  }
  GError *local = NULL;
  g_autoptr(Plan) plan = planner_plan(input->state, op, &local);
  if (!plan) {
    backend_exec_status_clear(backend, domain);
    g_prefix_error(&local, "domain %s: ", domain);
    propagate_as_backend(error, local);
    return FALSE;
  }
  /* One message-level line per operation, when it has finished (below);
   * the plan as chosen is a debug line. */
  g_autofree char *choices = describe_choices(plan);
  g_autofree char *summary = g_strdup_printf("%u steps, domain %s; %s", plan->steps->len,
                                             input->state->running ? "running" : "shut off",
                                             choices);
  g_debug("domain %s: %s: planned: %s", domain, title, summary);
  if (plan->steps->len == 0) {
    backend_exec_status_clear(backend, domain);
    g_message("domain %s: %s: done, nothing to do", domain, title);
    return TRUE;
  }
  /* The planner only knows the graph: a file it wants to create must not
   * exist yet. */
  for (guint i = 0; i < plan->steps->len; i++) {
    const PlanStep *step = plan->steps->pdata[i];
    if (step->kind == PLAN_STEP_CREATE_OVERLAY && access(step->image, F_OK) == 0) {
      backend_exec_status_clear(backend, domain);
      g_set_error(error, BACKEND_ERROR, EEXIST, "domain %s: %s: %s exists already", domain, title,
                  step->image);
      return FALSE;
    }
  }

  const char *hidden = op->kind == PLAN_OP_DELETE ? op->name : NULL;
  g_autoptr(BackendJournal) journal =
      backend_journal_new(domain, input->uuid, op, hidden, plan->steps);
  if (!backend_journal_write(journal, backend->state_dir, error)) {
    backend_exec_status_clear(backend, domain);
    g_prefix_error(error, "domain %s: %s: journal: ", domain, title);
    return FALSE;
  }
  if (hidden) {
    hide(backend, domain, hidden, TRUE);
    refresh_model(backend);
  }
  if (!journal_finish(backend, dom, journal, error)) {
    if ((*error)->code != ECANCELED)
      g_warning("domain %s: %s failed; its journal %s stays and the plan is finished by the next "
                "operation on the domain or the next start: %s", domain, title, journal->path,
                (*error)->message);
    return FALSE;
  }
  refresh_model(backend);
  g_message("domain %s: %s: done in %.1f s: %s", domain, title,
            (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC, summary);
  return TRUE;
}

/* A name libvirt can hold: the planner's rules (length included), and
 * (verified with libvirt 9.0) no leading '.' and no '/'. */
static gboolean
check_name(const char *name, GError **error)
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
backend_snapshot_delete(Backend *backend, const char *domain, const char *name, GError **error)
{
  /* DESIGN.md 3: deleting a point in time that is open is EBUSY. */
  PlanOp op = {.kind = PLAN_OP_DELETE, .name = name, .refuse_open = TRUE,
               .now = g_get_real_time() / G_USEC_PER_SEC};
  /* The kernel sends RELEASE after close(2) has returned, as a background
   * request: `cat S/vda.raw; rmdir S` may find S still pinned.  A refusal
   * is tried again each time a file is released, for RELEASE_GRACE_US. */
  gint64 deadline = g_get_monotonic_time() + RELEASE_GRACE_US;
  for (;;) {
    guint64 seen = unpin_count(backend);
    GError *local = NULL;
    if (run_plan(backend, domain, &op, &local))
      return TRUE;
    if (!g_error_matches(local, BACKEND_ERROR, EBUSY) || !wait_unpin(backend, seen, deadline)) {
      g_propagate_error(error, local);
      return FALSE;
    }
    g_debug("domain %s: delete %s: %s; a file was released since, trying again", domain, name,
            local->message);
    g_error_free(local);
  }
}

gboolean
backend_snapshot_rename(Backend *backend, const char *domain, const char *name,
                        const char *new_name, GError **error)
{
  if (!check_name(new_name, error))
    return FALSE;
  PlanOp op = {.kind = PLAN_OP_RENAME, .name = name, .new_name = new_name,
               .now = g_get_real_time() / G_USEC_PER_SEC};
  return run_plan(backend, domain, &op, error);
}

gboolean
backend_snapshot_revert(Backend *backend, const char *domain, const char *name, gboolean discard,
                        GError **error)
{
  PlanOp op = {.kind = PLAN_OP_REVERT, .name = name,
               .discard = discard || backend->exec->revert_discard,
               .now = g_get_real_time() / G_USEC_PER_SEC};
  return run_plan(backend, domain, &op, error);
}

/* ------------------------------------------------------------------ */
/* Create                                                              */

/* The name as a file name component: bytes outside [A-Za-z0-9._+-] and a
 * leading '.' become %XX; a long name is cut and made unique by a hash. */
static char *
escape_for_file(const char *name)
{
  GString *out = g_string_new(NULL);
  for (const guchar *p = (const guchar *)name; *p; p++) {
    if ((g_ascii_isalnum(*p) || strchr("._+-", *p)) && !(p == (const guchar *)name && *p == '.'))
      g_string_append_c(out, (char)*p);
    else
      g_string_append_printf(out, "%%%02X", *p);
  }
  if (out->len > OVERLAY_NAME_MAX) {
    g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, name, -1);
    g_string_truncate(out, OVERLAY_NAME_MAX - 17);
    /* Never cut an escape in half. */
    while (out->len > 0 && strchr(out->str + MAX((gssize)out->len - 2, 0), '%'))
      g_string_truncate(out, out->len - 1);
    g_string_append_printf(out, "-%.16s", sum);
  }
  return g_string_free(out, FALSE);
}

/* "<dir of active>/<stem of the chain's base image>.<name>.qcow2", with a
 * counter when that file exists: never an existing file.  base is the
 * bottom layer of the disk's chain. */
static char *
overlay_path(const DomXmlDisk *disk, const char *base, const char *escaped, GHashTable *taken)
{
  g_autofree char *file = g_path_get_basename(base);
  char *dot = strchr(file, '.');
  if (dot && dot != file)
    *dot = '\0';
  g_autofree char *dir = g_path_get_dirname(disk->source);
  for (guint n = 1;; n++) {
    g_autofree char *leaf = n == 1 ? g_strdup_printf("%s.%s.qcow2", file, escaped)
                                   : g_strdup_printf("%s.%s-%u.qcow2", file, escaped, n);
    char *path = g_build_filename(dir, leaf, NULL);
    if (access(path, F_OK) != 0 && errno == ENOENT && !g_hash_table_contains(taken, path))
      return path;
    g_free(path);
  }
}

gboolean
backend_snapshot_create(Backend *backend, const char *domain, const char *name, GError **error)
{
  if (!check_name(name, error))
    return FALSE;
  g_autoptr(DomainTurn) turn = turn_take(backend, domain);
  gint64 started = g_get_monotonic_time(); /* once it is this call's turn */
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, error);
  if (!conn)
    return FALSE;
  g_autoptr(BackendVirDomain) dom = backend_lookup_domain(conn, domain, NULL, error);
  if (!dom)
    return FALSE;
  if (!check_not_frozen(backend, domain, "create a snapshot", error))
    return FALSE;
  if (!backend_freeze_settle(backend, domain, error))
    return FALSE;
  if (!finish_pending(backend, dom, error))
    return FALSE;

  g_autoptr(BackendVirDomainSnapshot) existing = virDomainSnapshotLookupByName(dom, name, 0);
  if (existing) {
    g_set_error(error, BACKEND_ERROR, EEXIST, "domain %s: snapshot %s exists", domain, name);
    return FALSE;
  }
  int active = virDomainIsActive(dom);
  g_autofree char *xml = virDomainGetXMLDesc(dom, 0);
  if (active < 0 || !xml) {
    backend_set_virt_error(error, "domain %s", domain);
    return FALSE;
  }
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, error);
  if (!parsed)
    return FALSE;
  if (parsed->disks->len == 0) {
    g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s has no disk to snapshot", domain);
    return FALSE;
  }

  g_autoptr(BackendGuard) guard = backend_guard_new(backend, error);
  if (!guard)
    return FALSE;
  g_autofree char *escaped = escape_for_file(name);
  g_autoptr(GHashTable) taken = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr(GPtrArray) targets = g_ptr_array_new();
  g_autoptr(GPtrArray) overlays = g_ptr_array_new();
  g_autoptr(GPtrArray) no_targets = g_ptr_array_new();
  /* A <readonly/> disk never changes and a <shareable/> one is written by
   * others too: neither gets an overlay (libvirt would make one). */
  g_autoptr(GHashTable) shared = exec_xml_shared_targets(xml);
  for (guint i = 0; i < parsed->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(parsed->disks, i);
    if (g_hash_table_contains(shared, disk->target)) {
      g_ptr_array_add(no_targets, disk->target);
      continue;
    }
    if (disk->is_block) {
      g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s disk %s is a block device: no "
                  "directory for its overlay", domain, disk->target);
      return FALSE;
    }
    /* A chain the policy refuses is changed by nothing: libvirt would
     * write the new overlay's header onto it and qemu-img read it. */
    g_auto(ChainWalk) walk = {0};
    g_autofree ChainFormat *formats = active == 1 ? backend_layer_formats(disk->backing, 0) : NULL;
    if (!backend_guard_chain(guard, disk->source, disk->format, formats, 0, &walk, error)) {
      g_prefix_error(error, "domain %s disk %s: ", domain, disk->target);
      return FALSE;
    }
    ChainLayer *bottom = walk.layers->pdata[walk.layers->len - 1];
    char *overlay = overlay_path(disk, chain_layer_path(bottom), escaped, taken);
    g_hash_table_add(taken, overlay);
    if (!backend_guard_place(guard, overlay, error)) {
      g_prefix_error(error, "domain %s disk %s: ", domain, disk->target);
      return FALSE;
    }
    g_ptr_array_add(targets, disk->target);
    g_ptr_array_add(overlays, overlay);
  }
  if (targets->len == 0) {
    g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s has no writable disk to snapshot",
                domain);
    return FALSE;
  }
  g_ptr_array_add(targets, NULL);
  g_ptr_array_add(overlays, NULL);
  for (guint i = 0; i < parsed->skipped->len; i++) {
    DomXmlSkipped *skipped = g_ptr_array_index(parsed->skipped, i);
    if (skipped->target)
      g_ptr_array_add(no_targets, skipped->target);
  }
  g_ptr_array_add(no_targets, NULL);
  g_autofree char *snapshot_xml = exec_xml_create_snapshot(
      name, (const char *const *)targets->pdata, (const char *const *)overlays->pdata,
      (const char *const *)no_targets->pdata);

  unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
  virDomainSnapshotPtr snap = NULL;
  gboolean quiesced = FALSE;
  if (active == 1) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|ATOMIC|QUIESCE) %s", domain, name);
    snap = virDomainSnapshotCreateXML(dom, snapshot_xml,
                                      flags | VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
    if (snap)
      quiesced = TRUE;
    else
      g_message("domain %s: snapshot %s is not quiesced: %s", domain, name,
                virGetLastErrorMessage());
  }
  if (!snap) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|ATOMIC) %s", domain, name);
    snap = virDomainSnapshotCreateXML(dom, snapshot_xml, flags);
  }
  if (!snap) {
    backend_set_virt_error(error, "domain %s: create snapshot %s", domain, name);
    return FALSE;
  }
  virDomainSnapshotFree(snap);
  g_message("domain %s: created snapshot %s in %.1f s (%s, %u disks, first overlay %s)", domain,
            name, (double)(g_get_monotonic_time() - started) / G_USEC_PER_SEC,
            active == 1 ? (quiesced ? "live, quiesced" : "live, crash-consistent") : "offline",
            targets->len - 1, (const char *)overlays->pdata[0]);
  refresh_model(backend);
  return TRUE;
}

/* ------------------------------------------------------------------ */
/* Recovery                                                            */

void
backend_exec_recover(Backend *backend)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) journals = backend_journals_load(backend->state_dir, &error);
  if (!journals) {
    g_warning("cannot read plan journals in %s: %s", backend->state_dir, error->message);
    return;
  }
  for (guint i = 0; i < journals->len; i++) {
    BackendJournal *journal = g_ptr_array_index(journals, i);
    if (journal->hidden)
      hide(backend, journal->domain, journal->hidden, TRUE);
  }
  for (guint i = 0; i < journals->len; i++) {
    BackendJournal *journal = g_ptr_array_index(journals, i);
    g_message("domain %s: finishing a plan left by an earlier run (%u of %u steps done)",
              journal->domain, journal->done, journal->steps->len);
    g_autoptr(DomainTurn) turn = turn_take(backend, journal->domain);
    g_autoptr(GError) local = NULL;
    g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, &local);
    g_autoptr(BackendVirDomain) dom = conn ? backend_lookup_domain(conn, journal->domain, journal->uuid, &local)
                                           : NULL;
    if (!dom || !journal_finish(backend, dom, journal, &local))
      g_warning("domain %s: the plan in %s could not be finished (the next operation on the "
                "domain tries again): %s", journal->domain, journal->path, local->message);
    else
      g_message("domain %s: plan finished", journal->domain);
  }
}
