/* test-plan-text.c: journal lines of plan steps: exact text, round trips,
 * and the lines the parser must refuse.
 */
#include <errno.h>
#include <string.h>

#include "planner.h"

static PlanStep *
make_step(PlanStepKind kind, gboolean block, const char *disk, const char *image, ChainFormat format,
          const char *backing, ChainFormat backing_format, const char *snapshot)
{
  PlanStep *step = plan_step_new(kind);
  step->block_job = block;
  step->disk = g_strdup(disk);
  step->image = g_strdup(image);
  step->format = format;
  step->backing = g_strdup(backing);
  step->backing_format = backing_format;
  step->snapshot = g_strdup(snapshot);
  return step;
}

static void
assert_same_step(const PlanStep *a, const PlanStep *b)
{
  g_assert_cmpint(a->kind, ==, b->kind);
  g_assert_cmpint(a->block_job, ==, b->block_job);
  g_assert_cmpstr(a->disk, ==, b->disk);
  g_assert_cmpstr(a->image, ==, b->image);
  if (a->image)
    g_assert_cmpint(a->format, ==, b->format);
  g_assert_cmpstr(a->backing, ==, b->backing);
  if (a->backing)
    g_assert_cmpint(a->backing_format, ==, b->backing_format);
  g_assert_cmpstr(a->snapshot, ==, b->snapshot);
  g_assert_true((a->definition == NULL) == (b->definition == NULL));
  if (a->definition) {
    const PlanSnapshot *x = a->definition, *y = b->definition;
    g_assert_cmpstr(x->name, ==, y->name);
    g_assert_cmpstr(x->parent, ==, y->parent);
    g_assert_cmpint(x->creation_time, ==, y->creation_time);
    g_assert_cmpint(x->current, ==, y->current);
    g_assert_cmpuint(x->disks->len, ==, y->disks->len);
    for (guint i = 0; i < x->disks->len; i++) {
      const PlanSnapshotDisk *p = x->disks->pdata[i], *q = y->disks->pdata[i];
      g_assert_cmpstr(p->target, ==, q->target);
      g_assert_cmpstr(p->overlay, ==, q->overlay);
      g_assert_cmpstr(p->point, ==, q->point);
    }
  }
}

static GPtrArray *
sample_steps(void)
{
  GPtrArray *steps = g_ptr_array_new_with_free_func((GDestroyNotify)plan_step_free);
  const char *odd = "/var/lib/my images/a=b%c\n\t\"é\".qcow2";
  g_ptr_array_add(steps, make_step(PLAN_STEP_COMMIT, FALSE, "vda", "/i/b.qcow2", CHAIN_FORMAT_QCOW2,
                                   "/i/a.raw", CHAIN_FORMAT_RAW, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_COMMIT, TRUE, "vda", odd, CHAIN_FORMAT_QCOW2, odd,
                                   CHAIN_FORMAT_QCOW2, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_ACTIVE_COMMIT, TRUE, "sdb", "/i/c", CHAIN_FORMAT_QCOW2,
                                   "/i/b", CHAIN_FORMAT_QCOW2, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_PULL, TRUE, "vda", "/i/c", CHAIN_FORMAT_QCOW2, NULL,
                                   CHAIN_FORMAT_UNKNOWN, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_PULL, FALSE, "vda", "/i/c", CHAIN_FORMAT_QCOW2, "/i/a",
                                   CHAIN_FORMAT_RAW, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_REBASE_UNSAFE, FALSE, "vda", "/i/d", CHAIN_FORMAT_QCOW2,
                                   "/i/a", CHAIN_FORMAT_QCOW2, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_CREATE_OVERLAY, FALSE, "vda", "/i/n", CHAIN_FORMAT_QCOW2,
                                   "/i/a", CHAIN_FORMAT_RAW, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_SET_ACTIVE, FALSE, "vda", "/i/n", CHAIN_FORMAT_QCOW2,
                                   NULL, 0, NULL));
  g_ptr_array_add(steps, make_step(PLAN_STEP_DELETE_SNAPSHOT, FALSE, NULL, NULL, 0, NULL, 0,
                                   "name with spaces / and %"));
  g_ptr_array_add(steps, make_step(PLAN_STEP_SET_CURRENT, FALSE, NULL, NULL, 0, NULL, 0, "s1"));
  g_ptr_array_add(steps, make_step(PLAN_STEP_DELETE_FILE, FALSE, "vda", odd, CHAIN_FORMAT_QCOW2,
                                   NULL, 0, NULL));

  g_autoptr(PlanState) st = plan_state_new(FALSE);
  PlanSnapshot *def = plan_state_add_snapshot(st, "pre-revert-20231114T221320Z", -5, "s=0", TRUE);
  plan_snapshot_set_overlay(def, "vda", "/i/o1");
  plan_snapshot_set_overlay(def, "vd b", odd);
  ((PlanSnapshotDisk *)def->disks->pdata[0])->point = g_strdup("/i/p1");
  PlanStep *redefine = make_step(PLAN_STEP_REDEFINE_SNAPSHOT, FALSE, NULL, NULL, 0, NULL, 0, def->name);
  redefine->definition = plan_snapshot_copy(def);
  g_ptr_array_add(steps, redefine);
  PlanSnapshot *root = plan_state_add_snapshot(st, "root", 0, NULL, FALSE);
  PlanStep *redefine2 = make_step(PLAN_STEP_REDEFINE_SNAPSHOT, FALSE, NULL, NULL, 0, NULL, 0, "root");
  redefine2->definition = plan_snapshot_copy(root);
  g_ptr_array_add(steps, redefine2);
  return steps;
}

static void
test_round_trip(void)
{
  g_autoptr(GPtrArray) steps = sample_steps();
  for (guint i = 0; i < steps->len; i++) {
    g_autofree char *line = plan_step_to_line(steps->pdata[i]);
    g_assert_null(strchr(line, '\n'));
    for (const char *p = line; *p; p++)
      g_assert_true(((guchar)*p > 0x20 && (guchar)*p < 0x7f) || *p == ' ');
    g_autoptr(GError) error = NULL;
    g_autoptr(PlanStep) back = plan_step_from_line(line, &error);
    g_assert_no_error(error);
    assert_same_step(steps->pdata[i], back);
    g_autofree char *again = plan_step_to_line(back);
    g_assert_cmpstr(line, ==, again);
  }

  g_autofree char *text = plan_steps_to_text(steps);
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) back = plan_steps_from_text(text, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(back->len, ==, steps->len);
  for (guint i = 0; i < steps->len; i++)
    assert_same_step(steps->pdata[i], back->pdata[i]);

  g_autoptr(GPtrArray) none = plan_steps_from_text("", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(none->len, ==, 0);
}

/* The exact text is a contract with journals already on disk. */
static void
test_exact_text(void)
{
  g_autoptr(GPtrArray) steps = sample_steps();
  static const char *const want[] = {
    "commit disk=vda image=/i/b.qcow2 format=qcow2 backing=/i/a.raw backing-format=raw",
    "commit job=block disk=vda image=/var/lib/my%20images/a%3Db%25c%0A%09%22%C3%A9%22.qcow2 format=qcow2 "
    "backing=/var/lib/my%20images/a%3Db%25c%0A%09%22%C3%A9%22.qcow2 backing-format=qcow2",
    "active-commit job=block disk=sdb image=/i/c format=qcow2 backing=/i/b backing-format=qcow2",
    "pull job=block disk=vda image=/i/c format=qcow2",
    "pull disk=vda image=/i/c format=qcow2 backing=/i/a backing-format=raw",
    "rebase-unsafe disk=vda image=/i/d format=qcow2 backing=/i/a backing-format=qcow2",
    "create-overlay disk=vda image=/i/n format=qcow2 backing=/i/a backing-format=raw",
    "set-active disk=vda image=/i/n format=qcow2",
    "delete-snapshot snapshot=name%20with%20spaces%20/%20and%20%25",
    "set-current snapshot=s1",
    "delete-file disk=vda image=/var/lib/my%20images/a%3Db%25c%0A%09%22%C3%A9%22.qcow2 format=qcow2",
    "redefine-snapshot snapshot=pre-revert-20231114T221320Z parent=s%3D0 ctime=-5 current=1 "
    "overlay.vda=/i/o1 point.vda=/i/p1 "
    "overlay.vd%20b=/var/lib/my%20images/a%3Db%25c%0A%09%22%C3%A9%22.qcow2",
    "redefine-snapshot snapshot=root ctime=0 current=0",
  };
  g_assert_cmpuint(G_N_ELEMENTS(want), ==, steps->len);
  for (guint i = 0; i < steps->len; i++) {
    g_autofree char *line = plan_step_to_line(steps->pdata[i]);
    g_assert_cmpstr(line, ==, want[i]);
  }
}

typedef struct {
  const char *name;
  const char *line;
} BadLine;

static const BadLine bad_lines[] = {
  { "empty", "" },
  { "unknown-kind", "explode disk=vda" },
  { "unknown-field", "set-current snapshot=s1 colour=red" },
  { "duplicate-field", "set-current snapshot=s1 snapshot=s2" },
  { "no-equals", "set-current snapshot" },
  { "empty-key", "set-current =s1" },
  { "double-space", "set-current  snapshot=s1" },
  { "trailing-space", "set-current snapshot=s1 " },
  { "raw-byte", "set-current snapshot=a\"b" },
  { "lowercase-escape", "set-current snapshot=a%c3%a9" },
  { "short-escape", "set-current snapshot=a%2" },
  { "nul-escape", "set-current snapshot=a%00b" },
  { "needless-escape", "set-current snapshot=%41" },
  { "missing-snapshot", "set-current" },
  { "missing-disk", "commit image=/a format=qcow2 backing=/b backing-format=qcow2" },
  { "missing-backing", "commit disk=vda image=/a format=qcow2" },
  { "missing-format", "set-active disk=vda image=/a" },
  { "bad-format", "set-active disk=vda image=/a format=vmdk" },
  { "backing-format-alone", "pull disk=vda image=/a format=qcow2 backing-format=raw" },
  { "job-on-rebase", "rebase-unsafe job=block disk=vda image=/a format=qcow2 backing=/b backing-format=qcow2" },
  { "bad-job", "pull job=maybe disk=vda image=/a format=qcow2" },
  { "image-on-snapshot-step", "delete-snapshot snapshot=s image=/a format=qcow2" },
  { "definition-on-delete", "delete-snapshot snapshot=s ctime=1 current=0" },
  { "redefine-without-definition", "redefine-snapshot snapshot=s" },
  { "redefine-without-ctime", "redefine-snapshot snapshot=s current=1" },
  { "redefine-bad-ctime", "redefine-snapshot snapshot=s ctime=12x current=1" },
  { "redefine-bad-current", "redefine-snapshot snapshot=s ctime=1 current=yes" },
  { "redefine-point-first", "redefine-snapshot snapshot=s ctime=1 current=0 point.vda=/p overlay.vda=/o" },
  { "redefine-other-name", "redefine-snapshot snapshot=s name=t ctime=1 current=0" },
  { "redefine-empty-target", "redefine-snapshot snapshot=s ctime=1 current=0 overlay.=/o" },
};

static void
test_bad_line(gconstpointer data)
{
  const BadLine *tc = data;
  g_autoptr(GError) error = NULL;
  g_autoptr(PlanStep) step = plan_step_from_line(tc->line, &error);
  g_assert_null(step);
  g_assert_error(error, PLANNER_ERROR, EINVAL);
}

static void
test_bad_text(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) steps = plan_steps_from_text("set-current snapshot=a\nexplode\n", &error);
  g_assert_null(steps);
  g_assert_error(error, PLANNER_ERROR, EINVAL);
  g_assert_true(g_str_has_prefix(error->message, "line 2: "));
  g_clear_error(&error);
  /* A blank line in the middle is a torn write, not a separator. */
  g_autoptr(GPtrArray) s2 = plan_steps_from_text("set-current snapshot=a\n\nset-current snapshot=b\n", &error);
  g_assert_null(s2);
  g_assert_error(error, PLANNER_ERROR, EINVAL);
}

/* Torn and corrupted lines: the parser never crashes, and what it accepts
 * it writes back byte for byte (it accepts only the writer's own form). */
static void
test_mutations(void)
{
  g_autoptr(GPtrArray) steps = sample_steps();
  g_autoptr(GRand) rand = g_rand_new_with_seed(4);
  static const char alphabet[] = " =%.-/abcz09AFGZ\n\t\xc3\xa9";
  guint accepted = 0;
  for (guint round = 0; round < 20000; round++) {
    g_autofree char *line = plan_step_to_line(steps->pdata[round % steps->len]);
    GString *m = g_string_new(line);
    for (gint n = g_rand_int_range(rand, 1, 4); n > 0; n--) {
      guint at = (guint)g_rand_int_range(rand, 0, (gint32)m->len + 1);
      switch (g_rand_int_range(rand, 0, 4)) {
      case 0:
        g_string_truncate(m, at);
        break;
      case 1:
        if (at < m->len)
          g_string_erase(m, at, 1);
        break;
      case 2:
        g_string_insert_c(m, at, alphabet[g_rand_int_range(rand, 0, sizeof(alphabet) - 1)]);
        break;
      default:
        if (at < m->len)
          m->str[at] = alphabet[g_rand_int_range(rand, 0, sizeof(alphabet) - 1)];
        break;
      }
    }
    g_autofree char *mutated = g_string_free(m, FALSE);
    g_autoptr(GError) error = NULL;
    g_autoptr(PlanStep) step = plan_step_from_line(mutated, &error);
    if (step == NULL) {
      g_assert_error(error, PLANNER_ERROR, EINVAL);
      continue;
    }
    accepted++;
    g_autofree char *again = plan_step_to_line(step);
    g_assert_cmpstr(again, ==, mutated);
  }
  g_test_message("%u of 20000 mutated lines were still valid lines", accepted);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/plan-text/round-trip", test_round_trip);
  g_test_add_func("/plan-text/exact", test_exact_text);
  for (guint i = 0; i < G_N_ELEMENTS(bad_lines); i++) {
    g_autofree char *path = g_strdup_printf("/plan-text/bad/%s", bad_lines[i].name);
    g_test_add_data_func(path, &bad_lines[i], test_bad_line);
  }
  g_test_add_func("/plan-text/bad-text", test_bad_text);
  g_test_add_func("/plan-text/mutations", test_mutations);
  return g_test_run();
}
