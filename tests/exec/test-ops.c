/* test-ops.c: the four snapshot operations against real libvirt/QEMU
 * (qemu:///embed), on shut-off and running domains, with the invariant of
 * fixture_check() after every operation. */
#include <errno.h>
#include <string.h>

#include "fixture.h"

#define MiB (1024 * 1024)
#define KiB 1024

static Fixture *fx;

static void
create(const char *domain, const char *name, GHashTable *expect)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_snapshot_create(fx->backend, domain, name, &error));
  g_assert_no_error(error);
  fixture_picture_copy(expect, "@now", name);
  fixture_check(fx, domain, expect);
}

static void
delete(const char *domain, const char *name, GHashTable *expect)
{
  g_autoptr(GError) error = NULL;
  fixture_log_clear(fx);
  if (!backend_snapshot_delete(fx->backend, domain, name, &error))
    g_error("delete %s/%s: %s", domain, name, error->message);
  fixture_picture_drop(expect, name);
  fixture_check(fx, domain, expect);
}

static gboolean
log_has(const char *text)
{
  return strstr(fx->log->str, text) != NULL;
}

/* base <- s1 overlay <- s2 overlay (active); the data written between s1
 * and s2 is big, after s2 small: deleting s2 merges F = O(s1) with its
 * child C = O(s2), and commit (C's bytes) is cheaper. */
static void
delete_direction(const char *domain, gboolean running, gboolean big_first)
{
  fixture_define(fx, domain, 1, 16);
  fixture_write(fx, domain, 0, 0, 2 * MiB, 0x11);
  if (running)
    fixture_start(fx, domain);
  g_autoptr(GHashTable) expect = fixture_picture(fx, domain);
  create(domain, "s1", expect);
  fixture_write(fx, domain, 0, MiB, big_first ? 4 * MiB : 64 * KiB, 0x22);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, domain);
  create(domain, "s2", expect);
  fixture_write(fx, domain, 0, 3 * MiB, big_first ? 64 * KiB : 4 * MiB, 0x33);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, domain);

  delete(domain, "s2", expect);
  /* The planner's reason, as the log line carries it. */
  if (big_first)
    g_assert_true(log_has(": commit 64.0") && log_has(" < pull ") && log_has("(commit 65536 bytes"));
  else
    g_assert_true(log_has(": pull ") && log_has(" < commit 4.0") && log_has("(commit 4194304 bytes"));

  delete(domain, "s1", expect);
  if (running)
    fixture_stop(fx, domain);
}

static void
test_delete_offline_commit(void)
{
  delete_direction("off-commit", FALSE, TRUE);
}

static void
test_delete_offline_pull(void)
{
  delete_direction("off-pull", FALSE, FALSE);
}

static void
test_delete_running_commit(void)
{
  delete_direction("run-commit", TRUE, TRUE);
}

static void
test_delete_running_pull(void)
{
  delete_direction("run-pull", TRUE, FALSE);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  fx = fixture_new();
  g_test_add_func("/exec/delete/offline-commit", test_delete_offline_commit);
  g_test_add_func("/exec/delete/offline-pull", test_delete_offline_pull);
  g_test_add_func("/exec/delete/running-commit", test_delete_running_commit);
  g_test_add_func("/exec/delete/running-pull", test_delete_running_pull);
  int ret = g_test_run();
  fixture_free(fx);
  return ret;
}
