/* test-random.c: a seeded random sequence of create, guest write, delete,
 * rename, revert (and now and then a stop or start of the domain) on one
 * domain that starts shut off and one that starts running, with the
 * invariant of fixture_check() after every step: the model the test keeps
 * (the checksum of every point in time and of the present) must be what
 * the images read.
 *
 * EXEC_TEST_SEED=N repeats a run; EXEC_TEST_STEPS=N changes its length.
 */
#include <errno.h>
#include <string.h>

#include "invariant.h"

#define MiB (1024 * 1024)
#define KiB 1024

static Fixture *fx;
static guint32 seed;
static guint steps = 30;

static GPtrArray *
snapshot_names(const char *d)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
  g_autoptr(BackendModel) model = backend_get_model(fx->backend);
  BackendDomain *domain = backend_model_find_domain(model, d);
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < domain->snapshots->len; i++)
    g_ptr_array_add(names, g_strdup(((BackendSnapshot *)g_ptr_array_index(domain->snapshots, i))->name));
  return names;
}

static char *
pre_revert_name(const char *d, GHashTable *known)
{
  g_autoptr(GPtrArray) names = snapshot_names(d);
  for (guint i = 0; i < names->len; i++) {
    const char *name = names->pdata[i];
    if (g_str_has_prefix(name, "pre-revert-") && !g_hash_table_contains(known, name))
      return g_strdup(name);
  }
  return NULL;
}

static void
random_run(const char *d, gboolean start_running)
{
  g_autoptr(GRand) rand = g_rand_new_with_seed(seed ^ (start_running ? 0x5a5a : 0));
  fixture_define_qcow2(fx, d, 2, 8);
  fixture_write(fx, d, 0, 0, MiB, 0x01);
  if (start_running)
    fixture_start(fx, d);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  guint counter = 0;

  for (guint step = 0; step < steps; step++) {
    g_autoptr(GPtrArray) names = snapshot_names(d);
    gboolean running = fixture_running(fx, d);
    guint roll = g_rand_int_range(rand, 0, 100);
    const char *pick = names->len ? names->pdata[g_rand_int_range(rand, 0, names->len)] : NULL;
    g_autoptr(GError) error = NULL;

    if (roll < 22 && names->len < 6) {
      g_autofree char *name = g_strdup_printf("r%u", counter++);
      g_test_message("%s step %u: create %s", d, step, name);
      if (!snap_create(fx->snap, d, name, &error))
        g_error("create: %s", error->message);
      fixture_picture_copy(expect, "@now", name);
    } else if (roll < 50) {
      guint disk = g_rand_int_range(rand, 0, 2);
      guint64 offset = (guint64)g_rand_int_range(rand, 0, 120) * 64 * KiB;
      guint64 len = (guint64)g_rand_int_range(rand, 1, 9) * 64 * KiB;
      guint8 pattern = (guint8)g_rand_int_range(rand, 1, 256);
      g_test_message("%s step %u: write vd%c %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT, d, step,
                     'a' + disk, offset, len);
      fixture_write(fx, d, disk, offset, len, pattern);
      /* Only the present changed. */
      g_autoptr(GHashTable) fresh = fixture_picture(fx, d);
      GHashTableIter iter;
      gpointer key, value;
      g_hash_table_iter_init(&iter, fresh);
      while (g_hash_table_iter_next(&iter, &key, &value))
        if (g_str_has_prefix(key, "@now/"))
          g_hash_table_insert(expect, g_strdup(key), g_strdup(value));
    } else if (roll < 70 && pick) {
      g_test_message("%s step %u: delete %s", d, step, pick);
      if (!snap_delete(fx->snap, d, pick, &error))
        g_error("delete %s: %s", pick, error->message);
      fixture_picture_drop(expect, pick);
    } else if (roll < 80 && pick) {
      gboolean onto_existing = names->len > 1 && g_rand_boolean(rand);
      g_autofree char *to = onto_existing ? NULL : g_strdup_printf("n%u", counter++);
      const char *target = to;
      if (!target)
        for (guint i = 0; i < names->len && !target; i++)
          if (strcmp(names->pdata[i], pick) != 0)
            target = names->pdata[i];
      g_test_message("%s step %u: rename %s to %s", d, step, pick, target);
      gboolean ok = snap_rename(fx->snap, d, pick, target, &error);
      if (onto_existing) {
        g_assert_false(ok);
        fixture_assert_errno(error, EEXIST);
      } else {
        if (!ok)
          g_error("rename: %s", error->message);
        fixture_picture_rename(expect, pick, target);
      }
    } else if (roll < 94 && pick) {
      gboolean discard = g_rand_boolean(rand);
      g_test_message("%s step %u: revert to %s%s", d, step, pick, discard ? " (discard)" : "");
      g_autoptr(GPtrArray) before = snapshot_names(d);
      g_autoptr(GHashTable) known = g_hash_table_new(g_str_hash, g_str_equal);
      for (guint i = 0; i < before->len; i++)
        g_hash_table_add(known, before->pdata[i]);
      gboolean ok = snap_revert(fx->snap, d, pick, discard, &error);
      if (running) {
        g_assert_false(ok);
        fixture_assert_errno(error, EBUSY);
      } else {
        if (!ok)
          g_error("revert: %s", error->message);
        g_autofree char *keep = pre_revert_name(d, known);
        g_assert_true(discard == (keep == NULL));
        if (keep)
          fixture_picture_copy(expect, "@now", keep);
        fixture_picture_drop(expect, "@now");
        fixture_picture_copy(expect, pick, "@now");
      }
    } else {
      g_test_message("%s step %u: %s", d, step, running ? "stop" : "start");
      if (running)
        fixture_stop(fx, d);
      else
        fixture_start(fx, d);
    }
    fixture_check(fx, d, expect);
  }

  g_autoptr(GPtrArray) names = snapshot_names(d);
  for (guint i = 0; i < names->len; i++) {
    g_autoptr(GError) error = NULL;
    if (!snap_delete(fx->snap, d, names->pdata[i], &error))
      g_error("delete %s: %s", (char *)names->pdata[i], error->message);
    fixture_picture_drop(expect, names->pdata[i]);
    fixture_check(fx, d, expect);
  }
  if (fixture_running(fx, d))
    fixture_stop(fx, d);
}

static void
test_shut_off(void)
{
  random_run("random-off", FALSE);
}

static void
test_running(void)
{
  random_run("random-run", TRUE);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  const char *s = g_getenv("EXEC_TEST_SEED");
  seed = s ? (guint32)g_ascii_strtoull(s, NULL, 10) : 20261122;
  const char *n = g_getenv("EXEC_TEST_STEPS");
  if (n)
    steps = (guint)g_ascii_strtoull(n, NULL, 10);
  g_test_message("seed %u, %u steps", seed, steps);
  fx = fixture_new();
  g_test_add_func("/exec/random/shut-off", test_shut_off);
  g_test_add_func("/exec/random/running", test_running);
  int ret = g_test_run();
  fixture_free(fx);
  return ret;
}
