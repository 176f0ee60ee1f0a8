/* test-crash.c: a plan (delete, revert, rename) killed after each of its
 * steps, then a new
 * backend on the same state directory: recovery finishes the plan, every
 * remaining point in time and the present read as before, and nothing is
 * left behind.  Every stop point k = 0 .. n of the plan is tried; on odd k
 * the journal also loses its last "done" record, as when the kill came
 * after the step but before its record was durable, so the finished step
 * runs again.  On a running domain a stop can also come while QEMU runs
 * the step's block job, which recovery must wait for, not start again.
 *
 * libvirt registers a driver for every embed connection and has room for
 * about twenty in a process, so each case runs in a subprocess of its own
 * with its own embed root.
 *
 * Usage: test-exec-crash [offline|running] (default: both).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "invariant.h"

#define MiB (1024 * 1024)
#define KiB 1024

static Fixture *fx;

typedef enum { OP_DELETE, OP_REVERT, OP_REVERT_DISCARD, OP_RENAME } CrashOp;

typedef struct {
  const char *tag;
  CrashOp op;
  gboolean running;
  gboolean in_job;
  const char *victim;
  guint64 sizes[3];   /* written after s1, s2, s3 */
  const char *expect; /* in the plan's log line */
} CrashCase;

static gboolean
run_op(const char *d, const CrashCase *c, GError **error)
{
  switch (c->op) {
  case OP_DELETE:
    return snap_delete(fx->snap, d, c->victim, error);
  case OP_REVERT:
  case OP_REVERT_DISCARD:
    return snap_revert(fx->snap, d, c->victim, c->op == OP_REVERT_DISCARD, error);
  case OP_RENAME:
    return snap_rename(fx->snap, d, c->victim, "renamed", error);
  }
  return FALSE;
}

static char *
status_prefix(const CrashCase *c)
{
  switch (c->op) {
  case OP_DELETE:
    return g_strdup_printf("delete %s: ", c->victim);
  case OP_REVERT:
  case OP_REVERT_DISCARD:
    return g_strdup_printf("revert to %s: ", c->victim);
  case OP_RENAME:
    return g_strdup_printf("rename %s to renamed: ", c->victim);
  }
  return NULL;
}

static char *pre_revert(const char *d);

/* What the points read once the operation happened, from before. */
static void
apply_op(const char *d, const CrashCase *c, GHashTable *expect)
{
  switch (c->op) {
  case OP_DELETE:
    fixture_picture_drop(expect, c->victim);
    break;
  case OP_REVERT: {
    g_autofree char *keep = pre_revert(d);
    g_assert_nonnull(keep);
    fixture_picture_copy(expect, "@now", keep);
  }
    /* fall through */
  case OP_REVERT_DISCARD:
    fixture_picture_drop(expect, "@now");
    fixture_picture_copy(expect, c->victim, "@now");
    break;
  case OP_RENAME:
    fixture_picture_rename(expect, c->victim, "renamed");
    break;
  }
}

/* base <- O(s1) <- O(s2) <- O(s3) (active), with writes between. */
static GHashTable *
build(const char *d, const CrashCase *c)
{
  fixture_define_qcow2(fx, d, 1, 16);
  fixture_write(fx, d, 0, 0, MiB, 0x10);
  if (c->running)
    fixture_start(fx, d);
  for (guint i = 0; i < 3; i++) {
    g_autofree char *name = g_strdup_printf("s%u", i + 1);
    g_autoptr(GError) error = NULL;
    if (!snap_create(fx->snap, d, name, &error))
      g_error("create %s: %s", name, error->message);
    fixture_write(fx, d, 0, (guint64)(i + 1) * MiB, c->sizes[i], 0x20 + i);
  }
  return fixture_picture(fx, d);
}

/* Drops the last "done N" line of the domain's journal. */
static void
drop_last_done(const char *d)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fx, d);
  char uuid[VIR_UUID_STRING_BUFLEN];
  g_assert_cmpint(virDomainGetUUIDString(dom, uuid), ==, 0);
  g_autofree char *file = g_strdup_printf("%s.plan", uuid);
  g_autofree char *path = g_build_filename(fx->state_dir, "journal", file, NULL);
  g_autofree char *text = NULL;
  g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
  char *last = g_strrstr(text, "\ndone ");
  if (!last)
    return;
  last[1] = '\0';
  g_assert_true(g_file_set_contents(path, text, -1, NULL));
}

static char *
pre_revert(const char *d)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
  g_autoptr(BackendModel) model = backend_get_model(fx->backend);
  BackendDomain *domain = backend_model_find_domain(model, d);
  for (guint i = 0; i < domain->snapshots->len; i++) {
    BackendSnapshot *snapshot = g_ptr_array_index(domain->snapshots, i);
    if (g_str_has_prefix(snapshot->name, "pre-revert-"))
      return g_strdup(snapshot->name);
  }
  return NULL;
}

static gboolean
listed(const char *d, const char *snapshot)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
  g_autoptr(BackendModel) model = backend_get_model(fx->backend);
  return backend_domain_find_snapshot(backend_model_find_domain(model, d), snapshot) != NULL;
}

static void
crash_run(const CrashCase *c)
{
  for (int k = 0;; k++) {
    g_autofree char *d = g_strdup_printf("crash-%s-%d", c->tag, k);
    g_autoptr(GHashTable) expect = build(d, c);

    fixture_log_clear(fx);
    snap_set_stop_after(fx->snap, k, c->in_job);
    GError *error = NULL;
    gboolean ok = run_op(d, c, &error);
    snap_set_stop_after(fx->snap, -1, FALSE);
    g_assert_nonnull(strstr(fx->log->str, c->expect));
    if (ok) {
      /* k is past the last step: the plan ran whole. */
      g_assert_cmpint(k, >, 0);
      apply_op(d, c, expect);
      fixture_check(fx, d, expect);
      if (c->running)
        fixture_stop(fx, d);
      g_test_message("%s: %d stop points", c->tag, k);
      return;
    }
    fixture_assert_errno(error, ECANCELED);
    g_test_message("%s: stopped: %s", d, error->message);
    g_clear_error(&error);
    if (c->op == OP_DELETE)
      g_assert_false(listed(d, c->victim));
    /* The job status shows the plan that stopped. */
    g_autofree char *status = snap_job_status(fx->snap, d);
    g_autofree char *prefix = status_prefix(c);
    g_assert_true(status && g_str_has_prefix(status, prefix));
    if (k % 2 == 1)
      drop_last_done(d);

    fixture_reopen(fx, TRUE);
    apply_op(d, c, expect);
    fixture_check(fx, d, expect);
    g_assert_null(snap_job_status(fx->snap, d));
    if (c->running)
      fixture_stop(fx, d);
  }
}

static void
crash_case(gconstpointer data)
{
  if (g_test_subprocess()) {
    fx = fixture_new();
    crash_run(data);
    fixture_free(fx);
    return;
  }
  g_test_trap_subprocess(NULL, 0, G_TEST_SUBPROCESS_INHERIT_STDOUT | G_TEST_SUBPROCESS_INHERIT_STDERR);
  g_test_trap_assert_passed();
}

static const CrashCase cases[] = {
  {"off-commit", OP_DELETE, FALSE, FALSE, "s2", {2 * MiB, 64 * KiB, 64 * KiB}, ": commit "},
  {"off-pull", OP_DELETE, FALSE, FALSE, "s2", {64 * KiB, 2 * MiB, 64 * KiB}, ": pull "},
  {"off-first", OP_DELETE, FALSE, FALSE, "s1", {2 * MiB, 64 * KiB, 64 * KiB}, ": pull "},
  {"off-revert", OP_REVERT, FALSE, FALSE, "s2", {64 * KiB, 2 * MiB, 64 * KiB}, "revert to s2"},
  {"off-revert-discard", OP_REVERT_DISCARD, FALSE, FALSE, "s1", {64 * KiB, 2 * MiB, 64 * KiB},
   "revert to s1"},
  {"off-rename", OP_RENAME, FALSE, FALSE, "s2", {64 * KiB, 64 * KiB, 64 * KiB}, "rename s2"},
  {"run-commit", OP_DELETE, TRUE, FALSE, "s2", {2 * MiB, 64 * KiB, 64 * KiB}, ": commit "},
  {"run-commit-job", OP_DELETE, TRUE, TRUE, "s2", {4 * MiB, 4 * MiB, 64 * KiB}, ": commit "},
  {"run-active", OP_DELETE, TRUE, FALSE, "s3", {64 * KiB, 2 * MiB, 64 * KiB}, ": commit "},
  {"run-pull", OP_DELETE, TRUE, FALSE, "s3", {64 * KiB, 64 * KiB, 2 * MiB}, ": pull "},
  {"run-pull-job", OP_DELETE, TRUE, TRUE, "s3", {64 * KiB, 64 * KiB, 6 * MiB}, ": pull "},
  {"run-rename", OP_RENAME, TRUE, FALSE, "s3", {64 * KiB, 64 * KiB, 64 * KiB}, "rename s3"},
};

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  const char *only = argc > 1 ? argv[1] : NULL;
  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    if (only && (strcmp(only, "running") == 0) != cases[i].running)
      continue;
    g_autofree char *path = g_strdup_printf("/exec/crash/%s", cases[i].tag);
    g_test_add_data_func(path, &cases[i], crash_case);
  }
  return g_test_run();
}
