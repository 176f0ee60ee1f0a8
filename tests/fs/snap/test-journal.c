/* test-journal.c: the plan journal without libvirt: what is written reads
 * back, "done" records count, a torn last record is ignored, a leftover
 * temporary file is dropped, names with spaces, newlines and non-ASCII
 * bytes survive, and a damaged journal is reported and left alone. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "snap-private.h"

static char *
make_state_dir(void)
{
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp("vsj-XXXXXX", &error);
  g_assert_no_error(error);
  return dir;
}

static void
remove_tree(const char *dir)
{
  const char *argv[] = {"rm", "-rf", dir, NULL};
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL,
                             NULL, NULL, NULL));
}

static GPtrArray *
sample_steps(void)
{
  GPtrArray *steps = g_ptr_array_new_with_free_func((GDestroyNotify)plan_step_free);
  PlanStep *commit = plan_step_new(PLAN_STEP_COMMIT);
  commit->disk = g_strdup("vda");
  commit->image = g_strdup("/img/a b.qcow2");
  commit->format = CHAIN_FORMAT_QCOW2;
  commit->backing = g_strdup("/img/base.qcow2");
  commit->backing_format = CHAIN_FORMAT_QCOW2;
  g_ptr_array_add(steps, commit);
  PlanStep *del = plan_step_new(PLAN_STEP_DELETE_SNAPSHOT);
  del->snapshot = g_strdup("name with spaces\nand ünïcode");
  g_ptr_array_add(steps, del);
  PlanStep *file = plan_step_new(PLAN_STEP_DELETE_FILE);
  file->disk = g_strdup("vda");
  file->image = g_strdup("/img/a b.qcow2");
  file->format = CHAIN_FORMAT_QCOW2;
  g_ptr_array_add(steps, file);
  return steps;
}

static SnapJournal *
load_one(const char *dir)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) journals = snap_journals_load(dir, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(journals->len, ==, 1);
  return g_ptr_array_steal_index(journals, 0);
}

static void
test_roundtrip(void)
{
  g_autofree char *dir = make_state_dir();
  g_autoptr(GPtrArray) steps = sample_steps();
  PlanOp op = {.kind = PLAN_OP_RENAME, .name = "old name", .new_name = "new\nname",
               .now = 1700000000};
  g_autoptr(SnapJournal) journal =
      snap_journal_new("dom ain", "0b3d-uuid", &op, NULL, steps);
  g_autoptr(GError) error = NULL;
  g_assert_true(snap_journal_write(journal, dir, &error));
  g_assert_no_error(error);
  g_assert_true(snap_journal_step_done(journal, &error));
  g_assert_true(snap_journal_step_done(journal, &error));

  g_autoptr(SnapJournal) back = load_one(dir);
  g_assert_cmpstr(back->domain, ==, "dom ain");
  g_assert_cmpstr(back->uuid, ==, "0b3d-uuid");
  g_assert_cmpint(back->op, ==, PLAN_OP_RENAME);
  g_assert_cmpstr(back->name, ==, "old name");
  g_assert_cmpstr(back->new_name, ==, "new\nname");
  g_assert_null(back->hidden);
  g_assert_cmpint(back->now, ==, 1700000000);
  g_assert_cmpuint(back->done, ==, 2);
  g_assert_cmpuint(back->steps->len, ==, 3);
  for (guint i = 0; i < steps->len; i++) {
    g_autofree char *a = plan_step_to_line(steps->pdata[i]);
    g_autofree char *b = plan_step_to_line(back->steps->pdata[i]);
    g_assert_cmpstr(a, ==, b);
  }
  PlanOp again;
  snap_journal_get_op(back, &again);
  g_assert_cmpstr(again.new_name, ==, "new\nname");

  g_assert_true(snap_journal_remove(journal, &error));
  g_autoptr(GPtrArray) none = snap_journals_load(dir, &error);
  g_assert_cmpuint(none->len, ==, 0);
  remove_tree(dir);
}

static void
test_torn(void)
{
  g_autofree char *dir = make_state_dir();
  g_autoptr(GPtrArray) steps = sample_steps();
  PlanOp op = {.kind = PLAN_OP_DELETE, .name = "s2", .now = 1};
  g_autoptr(SnapJournal) journal = snap_journal_new("d", "u1", &op, "s2", steps);
  g_autoptr(GError) error = NULL;
  g_assert_true(snap_journal_write(journal, dir, &error));
  g_assert_true(snap_journal_step_done(journal, &error));
  /* A record cut short by the crash, and a temporary file never renamed. */
  g_assert_cmpint(write(journal->fd, "don", 3), ==, 3);
  g_autofree char *tmp = g_build_filename(dir, "journal", "u2.plan.Q3zX9a", NULL);
  g_assert_true(g_file_set_contents(tmp, "virtsnapfs-plan 1\n", -1, NULL));

  /* Loading (also done while other domains' plans write) ignores it;
   * start-up removes it. */
  g_autoptr(SnapJournal) back = load_one(dir);
  g_assert_cmpuint(back->done, ==, 1);
  g_assert_cmpstr(back->hidden, ==, "s2");
  g_assert_true(g_file_test(tmp, G_FILE_TEST_EXISTS));
  snap_state_remove_torn(dir);
  g_assert_false(g_file_test(tmp, G_FILE_TEST_EXISTS));

  /* Written again whole, it records further steps cleanly. */
  g_assert_true(snap_journal_write(back, dir, &error));
  g_assert_true(snap_journal_step_done(back, &error));
  g_autoptr(SnapJournal) third = load_one(dir);
  g_assert_cmpuint(third->done, ==, 2);
  remove_tree(dir);
}

static void
test_damaged(void)
{
  g_autofree char *dir = make_state_dir();
  g_autofree char *jdir = g_build_filename(dir, "journal", NULL);
  g_assert_cmpint(g_mkdir_with_parents(jdir, 0700), ==, 0);
  g_autofree char *path = g_build_filename(jdir, "u3.plan", NULL);
  const char *texts[] = {
    "not a journal\n",
    "virtsnapfs-plan 1\ndomain d\nuuid u3\nop delete\nname s\nnew-name -\ndiscard 0\nnow 1\n"
    "hidden -\nsteps 2\ndelete-file disk=vda image=/x format=qcow2\n",
    "virtsnapfs-plan 1\ndomain d\nuuid u3\nop explode\nname s\nnew-name -\ndiscard 0\nnow 1\n"
    "hidden -\nsteps 0\nend\n",
  };
  for (guint i = 0; i < G_N_ELEMENTS(texts); i++) {
    g_assert_true(g_file_set_contents(path, texts[i], -1, NULL));
    g_autoptr(GError) error = NULL;
    g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
    g_test_expect_message("virtsnapfs", G_LOG_LEVEL_WARNING, "plan journal * is unreadable*");
    g_autoptr(GPtrArray) journals = snap_journals_load(dir, &error);
    g_test_assert_expected_messages();
    g_assert_no_error(error);
    g_assert_cmpuint(journals->len, ==, 0);
    g_assert_true(g_file_test(path, G_FILE_TEST_EXISTS));
  }
  remove_tree(dir);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/journal/roundtrip", test_roundtrip);
  g_test_add_func("/journal/torn", test_torn);
  g_test_add_func("/journal/damaged", test_damaged);
  return g_test_run();
}
