/* test-state.c: freeze records (fs/snap/state.c) round-trip through the
 * state directory; a damaged record is reported and skipped, never fatal;
 * the temporary file of a write a crash cut short is removed at start-up. */
#include <glib/gstdio.h>
#include <sys/stat.h>

#include "snap-private.h"

static void
test_round_trip(void)
{
  g_autofree char *dir = g_dir_make_tmp("virtsnapfs-state-XXXXXX", NULL);
  g_autoptr(GError) error = NULL;

  g_autoptr(SnapFreezeRecord) record = snap_freeze_record_new("web", "uuid-1");
  snap_freeze_record_add_disk(record, "vda", "/img/a.qcow2", CHAIN_FORMAT_QCOW2,
                              "/img/a.qcow2.virtsnapfs-now-1-2");
  snap_freeze_record_add_disk(record, "sdb", "/img/b raw=x.img", CHAIN_FORMAT_RAW,
                              "/img/b.ov");
  g_assert_true(snap_freeze_record_write(record, dir, &error));
  g_assert_no_error(error);
  g_assert_nonnull(record->path);
  struct stat st;
  g_assert_cmpint(g_stat(record->path, &st), ==, 0);
  g_assert_cmpint(st.st_mode & 0777, ==, 0600);

  g_autoptr(GPtrArray) loaded = snap_freeze_records_load(dir, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(loaded->len, ==, 1);
  SnapFreezeRecord *back = g_ptr_array_index(loaded, 0);
  g_assert_cmpstr(back->domain, ==, "web");
  g_assert_cmpstr(back->uuid, ==, "uuid-1");
  g_assert_cmpint(back->created, ==, record->created);
  g_assert_cmpuint(back->disks->len, ==, 2);
  for (guint i = 0; i < 2; i++) {
    SnapFreezeDisk *a = g_ptr_array_index(record->disks, i);
    SnapFreezeDisk *b = NULL;
    for (guint j = 0; j < 2; j++) {
      SnapFreezeDisk *c = g_ptr_array_index(back->disks, j);
      if (g_str_equal(c->target, a->target))
        b = c;
    }
    g_assert_nonnull(b);
    g_assert_cmpstr(b->frozen, ==, a->frozen);
    g_assert_cmpint(b->frozen_format, ==, a->frozen_format);
    g_assert_cmpstr(b->overlay, ==, a->overlay);
  }

  g_assert_true(snap_freeze_record_remove(back, &error));
  g_assert_no_error(error);
  g_assert_false(g_file_test(record->path, G_FILE_TEST_EXISTS));
  g_autoptr(GPtrArray) none = snap_freeze_records_load(dir, &error);
  g_assert_cmpuint(none->len, ==, 0);

  g_autofree char *sub = g_build_filename(dir, "freeze", NULL);
  g_rmdir(sub);
  g_rmdir(dir);
}

static void
test_missing_and_damaged(void)
{
  g_autofree char *dir = g_dir_make_tmp("virtsnapfs-state-XXXXXX", NULL);
  g_autoptr(GError) error = NULL;
  /* No freeze/ directory yet: no records, no error. */
  g_autoptr(GPtrArray) none = snap_freeze_records_load(dir, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(none->len, ==, 0);

  g_autofree char *sub = g_build_filename(dir, "freeze", NULL);
  g_mkdir(sub, 0700);
  g_autofree char *bad = g_build_filename(sub, "x.freeze", NULL);
  g_assert_true(g_file_set_contents(bad, "[freeze]\ndomain=web\n", -1, NULL));
  g_test_expect_message("virtsnapfs", G_LOG_LEVEL_WARNING, "*x.freeze is unreadable*");
  g_autoptr(GPtrArray) skipped = snap_freeze_records_load(dir, &error);
  g_test_assert_expected_messages();
  g_assert_no_error(error);
  g_assert_cmpuint(skipped->len, ==, 0);
  g_unlink(bad);
  g_rmdir(sub);
  g_rmdir(dir);
}

/* A kill during snap_state_write_file() leaves glib's "<file>.XXXXXX";
 * start-up removes it and keeps every whole record. */
static void
test_torn_writes(void)
{
  g_autofree char *dir = g_dir_make_tmp("virtsnapfs-state-XXXXXX", NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(SnapFreezeRecord) record = snap_freeze_record_new("web", "uuid-1");
  snap_freeze_record_add_disk(record, "vda", "/img/a.qcow2", CHAIN_FORMAT_QCOW2, "/img/a.ov");
  g_assert_true(snap_freeze_record_write(record, dir, &error));
  g_autofree char *journal = g_build_filename(dir, "journal", NULL);
  g_assert_cmpint(g_mkdir_with_parents(journal, 0700), ==, 0);
  const char *const files[] = {"journal/uuid-2.plan", "journal/uuid-3.plan.Ab12Cd",
                               "freeze/uuid-4.freeze.Xy34Zw"};
  for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
    g_autofree char *path = g_build_filename(dir, files[i], NULL);
    g_assert_true(g_file_set_contents(path, "partial", -1, &error));
  }

  snap_state_remove_torn(dir);

  g_assert_true(g_file_test(record->path, G_FILE_TEST_EXISTS));
  for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
    g_autofree char *path = g_build_filename(dir, files[i], NULL);
    g_assert_cmpint(g_file_test(path, G_FILE_TEST_EXISTS), ==, i == 0);
  }
  const char *rm[] = {"rm", "-rf", dir, NULL};
  g_assert_true(g_spawn_sync(NULL, (char **)rm, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL,
                             NULL, NULL, NULL));
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/state/round-trip", test_round_trip);
  g_test_add_func("/state/missing-and-damaged", test_missing_and_damaged);
  g_test_add_func("/state/torn-writes", test_torn_writes);
  return g_test_run();
}
