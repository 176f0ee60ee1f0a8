/* test-ops.c: the four snapshot operations against real libvirt/QEMU
 * (qemu:///embed), on shut-off and running domains, with the invariant of
 * fixture_check() after every operation. */
#include <errno.h>
#include <string.h>

#include "invariant.h"

#define MiB (1024 * 1024)
#define KiB 1024

static Fixture *fx;

/* Creates snapshot name; skip: a disk the snapshot leaves out. */
static void
create_skip(const char *domain, const char *name, GHashTable *expect, const char *skip)
{
  g_autoptr(GError) error = NULL;
  if (!snap_create(fx->snap, domain, name, &error))
    g_error("create %s/%s: %s", domain, name, error->message);
  fixture_picture_copy(expect, "@now", name);
  if (skip) {
    g_autofree char *key = g_strdup_printf("%s/%s", name, skip);
    g_hash_table_remove(expect, key);
  }
  fixture_check(fx, domain, expect);
}

static void
create(const char *domain, const char *name, GHashTable *expect)
{
  create_skip(domain, name, expect, NULL);
}

static void
delete(const char *domain, const char *name, GHashTable *expect)
{
  g_autoptr(GError) error = NULL;
  fixture_log_clear(fx);
  if (!snap_delete(fx->snap, domain, name, &error))
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
  fixture_define_qcow2(fx, domain, 1, 16);
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
    g_assert_true(log_has(": commit ") && log_has(" < pull ") &&
                  log_has(", 64.0 KiB (pull would move"));
  else
    g_assert_true(log_has(": pull ") && log_has(" < commit ") &&
                  log_has("(commit would move 4.0 MiB)"));

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

/* error is read after ok was computed (argument order is unspecified). */
static void
expect_fail(gboolean ok, GError **error, int code)
{
  g_assert_false(ok);
  fixture_assert_errno(*error, code);
  g_assert_true((*error)->domain == BACKEND_ERROR);
  g_clear_error(error);
}

static const char *
pre_revert_name(const char *domain)
{
  static char name[64];
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
  g_autoptr(BackendModel) model = backend_get_model(fx->backend);
  BackendDomain *d = backend_model_find_domain(model, domain);
  for (guint i = 0; i < d->snapshots->len; i++) {
    BackendSnapshot *snapshot = g_ptr_array_index(d->snapshots, i);
    if (g_str_has_prefix(snapshot->name, "pre-revert-")) {
      g_strlcpy(name, snapshot->name, sizeof(name));
      return name;
    }
  }
  return NULL;
}

static BackendSnapshot *
find_snapshot(BackendModel **model, const char *domain, const char *name)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
  g_clear_pointer(model, backend_model_unref);
  *model = backend_get_model(fx->backend);
  BackendDomain *d = backend_model_find_domain(*model, domain);
  return d ? backend_domain_find_snapshot(d, name) : NULL;
}

static void
test_errors(void)
{
  const char *d = "errors";
  fixture_define_qcow2(fx, d, 1, 8);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "a", expect);
  create(d, "b", expect);
  GError *error = NULL;
  expect_fail(snap_create(fx->snap, d, "a", &error), &error, EEXIST);
  expect_fail(snap_create(fx->snap, d, "", &error), &error, EINVAL);
  g_autofree char *long_name = g_strnfill(300, 'x');
  expect_fail(snap_create(fx->snap, d, long_name, &error), &error, EINVAL);
  expect_fail(snap_create(fx->snap, d, "tab\there", &error), &error, EINVAL);
  expect_fail(snap_create(fx->snap, "no-such-domain", "x", &error), &error, ENOENT);
  expect_fail(snap_delete(fx->snap, d, "nope", &error), &error, ENOENT);
  expect_fail(snap_delete(fx->snap, "no-such-domain", "a", &error), &error, ENOENT);
  expect_fail(snap_rename(fx->snap, d, "nope", "x", &error), &error, ENOENT);
  expect_fail(snap_rename(fx->snap, d, "a", "b", &error), &error, EEXIST);
  expect_fail(snap_rename(fx->snap, d, "a", "", &error), &error, EINVAL);
  expect_fail(snap_revert(fx->snap, d, "nope", FALSE, &error), &error, ENOENT);
  fixture_check(fx, d, expect);

  /* libvirt refuses a leading '.': EINVAL, before libvirt says so. */
  expect_fail(snap_create(fx->snap, d, ".dot", &error), &error, EINVAL);
  expect_fail(snap_create(fx->snap, d, "a/b", &error), &error, EINVAL);
  /* libvirt saves NAME.xml through a temporary NAME.xml.new. */
  expect_fail(snap_create(fx->snap, d, long_name + 300 - 248, &error), &error, EINVAL);
  /* A name that is no file name: escaped in the overlay's name. */
  create(d, "@b name %2F ünï", expect);
  g_autofree char *file = g_build_filename(fx->images, d, "vda.%40b%20name%20%252F%20%C3%BCn%C3%AF.qcow2", NULL);
  g_assert_true(g_file_test(file, G_FILE_TEST_EXISTS));
  create(d, long_name + 300 - 247, expect);
  g_assert_null(snap_job_status(fx->snap, d));
  delete(d, "@b name %2F ünï", expect);
  delete(d, long_name + 300 - 247, expect);
  delete(d, "a", expect);
  delete(d, "b", expect);
}

static void
multi_disk(const char *d, gboolean running)
{
  fixture_define_qcow2(fx, d, 2, 16);
  fixture_write(fx, d, 0, 0, MiB, 0x01);
  fixture_write(fx, d, 1, 2 * MiB, MiB, 0x02);
  if (running)
    fixture_start(fx, d);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  for (guint i = 0; i < 4; i++) {
    g_autofree char *name = g_strdup_printf("m%u", i);
    create(d, name, expect);
    fixture_write(fx, d, i % 2, (guint64)i * MiB, (i + 1) * 256 * KiB, 0x10 + i);
    fixture_write(fx, d, 1 - i % 2, (guint64)(7 - i) * MiB, 64 * KiB, 0x20 + i);
    g_hash_table_unref(expect);
    expect = fixture_picture(fx, d);
  }
  delete(d, "m1", expect);
  delete(d, "m3", expect);
  delete(d, "m0", expect);
  g_autoptr(GError) error = NULL;
  g_assert_true(snap_rename(fx->snap, d, "m2", "last", &error));
  g_assert_no_error(error);
  fixture_picture_rename(expect, "m2", "last");
  fixture_check(fx, d, expect);
  delete(d, "last", expect);
  if (running)
    fixture_stop(fx, d);
}

static void
test_multi_disk_offline(void)
{
  multi_disk("multi-off", FALSE);
}

static void
test_multi_disk_running(void)
{
  multi_disk("multi-run", TRUE);
}

static void
rename_test(const char *d, gboolean running)
{
  fixture_define_qcow2(fx, d, 1, 8);
  if (running)
    fixture_start(fx, d);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "s1", expect);
  fixture_write(fx, d, 0, 0, 64 * KiB, 0x41);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s2", expect);

  g_autoptr(GError) error = NULL;
  g_assert_true(snap_rename(fx->snap, d, "s1", "first", &error));
  g_assert_no_error(error);
  fixture_picture_rename(expect, "s1", "first");
  fixture_check(fx, d, expect);
  {
    g_autoptr(BackendModel) model = NULL;
    BackendSnapshot *s2 = find_snapshot(&model, d, "s2");
    g_assert_cmpstr(s2->parent, ==, "first");
    g_assert_true(s2->current);
    g_assert_null(find_snapshot(&model, d, "s1"));
  }
  g_assert_true(snap_rename(fx->snap, d, "s2", "second", &error));
  g_assert_no_error(error);
  fixture_picture_rename(expect, "s2", "second");
  fixture_check(fx, d, expect);
  {
    g_autoptr(BackendModel) model = NULL;
    BackendSnapshot *second = find_snapshot(&model, d, "second");
    g_assert_cmpstr(second->parent, ==, "first");
    g_assert_true(second->current);
  }
  /* To the same name: nothing to do. */
  g_assert_true(snap_rename(fx->snap, d, "second", "second", &error));
  fixture_check(fx, d, expect);
  delete(d, "first", expect);
  delete(d, "second", expect);
  if (running)
    fixture_stop(fx, d);
}

static void
test_rename_offline(void)
{
  rename_test("rename-off", FALSE);
}

static void
test_rename_running(void)
{
  rename_test("rename-run", TRUE);
}

static void
revert(const char *d, const char *name, gboolean discard, GHashTable *expect)
{
  g_autoptr(GError) error = NULL;
  if (!snap_revert(fx->snap, d, name, discard, &error))
    g_error("revert %s to %s: %s", d, name, error->message);
  if (!discard) {
    const char *keep = pre_revert_name(d);
    g_assert_nonnull(keep);
    fixture_picture_copy(expect, "@now", keep);
  } else {
    g_assert_null(pre_revert_name(d));
  }
  fixture_picture_drop(expect, "@now");
  fixture_picture_copy(expect, name, "@now");
  fixture_check(fx, d, expect);
  g_autoptr(BackendModel) model = NULL;
  g_assert_true(find_snapshot(&model, d, name)->current);
}

static void
test_revert_keep(void)
{
  const char *d = "revert-keep";
  fixture_define_qcow2(fx, d, 1, 8);
  fixture_write(fx, d, 0, 0, MiB, 0x51);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "s1", expect);
  fixture_write(fx, d, 0, 512 * KiB, MiB, 0x52);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s2", expect);
  fixture_write(fx, d, 0, 3 * MiB, MiB, 0x53);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);

  revert(d, "s1", FALSE, expect);
  const char *keep = pre_revert_name(d);
  g_autofree char *keep1 = g_strdup(keep);
  fixture_write(fx, d, 0, 2 * MiB, 256 * KiB, 0x54);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  /* Rename the kept present so the next revert in the same second can
   * keep its own. */
  g_autoptr(GError) error = NULL;
  g_assert_true(snap_rename(fx->snap, d, keep1, "kept", &error));
  g_assert_no_error(error);
  fixture_picture_rename(expect, keep1, "kept");
  fixture_check(fx, d, expect);

  revert(d, "s2", FALSE, expect);
  g_autofree char *keep2 = g_strdup(pre_revert_name(d));
  delete(d, "s1", expect);
  delete(d, "kept", expect);
  delete(d, "s2", expect);
  delete(d, keep2, expect);
}

static void
test_revert_discard(void)
{
  const char *d = "revert-discard";
  fixture_define_qcow2(fx, d, 2, 8);
  fixture_write(fx, d, 0, 0, MiB, 0x61);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "s1", expect);
  fixture_write(fx, d, 1, 0, MiB, 0x62);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s2", expect);
  fixture_write(fx, d, 0, MiB, MiB, 0x63);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  revert(d, "s1", TRUE, expect);
  fixture_write(fx, d, 0, 4 * MiB, MiB, 0x64);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  revert(d, "s2", TRUE, expect);
  revert(d, "s2", TRUE, expect);
  delete(d, "s1", expect);
  delete(d, "s2", expect);
}

static void
test_revert_running(void)
{
  const char *d = "revert-run";
  fixture_define_qcow2(fx, d, 1, 8);
  fixture_start(fx, d);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "s1", expect);
  GError *error = NULL;
  expect_fail(snap_revert(fx->snap, d, "s1", FALSE, &error), &error, EBUSY);
  fixture_check(fx, d, expect);
  delete(d, "s1", expect);
  fixture_stop(fx, d);
}

static Chain *
open_point(const char *d, const char *snapshot)
{
  g_autoptr(BackendModel) model = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
  model = backend_get_model(fx->backend);
  BackendDomain *domain = backend_model_find_domain(model, d);
  BackendDisk *disk = NULL;
  if (strcmp(snapshot, "@now") == 0) {
    disk = g_ptr_array_index(domain->disks, 0);
  } else {
    BackendSnapshot *s = backend_domain_find_snapshot(domain, snapshot);
    disk = g_ptr_array_index(s->disks, 0);
  }
  Chain *chain = chain_open(disk->image_path, disk->format, disk->backing_formats, NULL, &error);
  g_assert_no_error(error);
  return chain;
}

/* base <- O(s1) <- O(s2) <- O(s3) (active); deleting s2 merges F = O(s1)
 * and C = O(s2) = P(s3).  A reader of s2 makes the delete EBUSY (an open
 * point in time is never deleted).  A reader of s3 pins C: pull, although cheaper, would write into
 * it, so commit runs. */
static void
test_pinned(void)
{
  const char *d = "pinned";
  fixture_define_qcow2(fx, d, 1, 8);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "s1", expect);
  fixture_write(fx, d, 0, 0, 64 * KiB, 0x71);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s2", expect);
  fixture_write(fx, d, 0, 0, 2 * MiB, 0x72);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s3", expect);
  fixture_write(fx, d, 0, MiB, 64 * KiB, 0x73);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);

  g_autoptr(Chain) open_s2 = open_point(d, "s2");
  g_autoptr(Chain) open_s3 = open_point(d, "s3");
  snap_pin_chain(fx->snap, d, open_s2);
  snap_pin_chain(fx->snap, d, open_s3);
  GError *error = NULL;
  expect_fail(snap_delete(fx->snap, d, "s2", &error), &error, EBUSY);
  fixture_check(fx, d, expect);

  snap_unpin_chain(fx->snap, d, open_s2);
  fixture_log_clear(fx);
  delete(d, "s2", expect);
  g_assert_true(log_has(": commit ") && log_has("no pull") && log_has("open for reading"));
  snap_unpin_chain(fx->snap, d, open_s3);
  delete(d, "s3", expect);
  delete(d, "s1", expect);
}

/* Running, three snapshots: deleting the middle one merges two layers
 * below the active image: libvirt cannot pull into an intermediate layer,
 * so an intermediate commit block job runs whatever the sizes. */
static void
test_intermediate_running(void)
{
  const char *d = "intermediate";
  fixture_define_qcow2(fx, d, 1, 16);
  fixture_start(fx, d);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "s1", expect);
  fixture_write(fx, d, 0, 0, 64 * KiB, 0x81);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s2", expect);
  fixture_write(fx, d, 0, MiB, 4 * MiB, 0x82);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s3", expect);
  fixture_write(fx, d, 0, 8 * MiB, MiB, 0x83);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  fixture_log_clear(fx);
  delete(d, "s2", expect);
  g_assert_true(log_has(": commit ") && log_has("no pull"));
  delete(d, "s1", expect);
  delete(d, "s3", expect);
  fixture_stop(fx, d);
}

/* An image that cannot be read: EIO naming the file, and nothing changed. */
static void
test_eio(void)
{
  const char *d = "eio";
  fixture_define_qcow2(fx, d, 1, 8);
  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create(d, "s1", expect);
  fixture_write(fx, d, 0, 0, MiB, 0xa1);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create(d, "s2", expect);

  g_autofree char *victim = g_build_filename(fx->images, d, "vda.s1.qcow2", NULL);
  g_autofree char *saved = NULL;
  gsize length;
  g_assert_true(g_file_get_contents(victim, &saved, &length, NULL));
  g_autofree char *broken = g_memdup2(saved, length);
  memcpy(broken, "XXXX", 4);
  g_assert_true(g_file_set_contents(victim, broken, (gssize)length, NULL));
  GError *error = NULL;
  g_assert_false(snap_delete(fx->snap, d, "s2", &error));
  fixture_assert_errno(error, EIO);
  g_assert_nonnull(strstr(error->message, victim));
  g_clear_error(&error);
  g_assert_true(g_file_set_contents(victim, saved, (gssize)length, NULL));
  fixture_check(fx, d, expect);
  delete(d, "s2", expect);
  delete(d, "s1", expect);
}

/* A <readonly/> raw disk beside a normal one: snapshots leave it out
 * (snapshot='no'), and plans never touch it. */
static void
test_readonly_disk(void)
{
  const char *d = "readonly";
  fixture_define_qcow2(fx, d, 1, 8);
  g_autofree char *raw = g_build_filename(fx->images, d, "ro.raw", NULL);
  const char *argv[] = {"qemu-img", "create", "-q", "-f", "raw", raw, "4M", NULL};
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL,
                             NULL, NULL, NULL));
  g_autoptr(BackendVirDomain) dom = fixture_domain(fx, d);
  g_autofree char *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
  g_autofree char *disk = g_strdup_printf("<disk type='file' device='disk'><driver name='qemu' "
                                          "type='raw'/><source file='%s'/><target dev='vdb' "
                                          "bus='virtio'/><readonly/></disk></devices>", raw);
  g_auto(GStrv) halves = g_strsplit(xml, "</devices>", 2);
  g_autofree char *with_ro = g_strjoinv(disk, halves);
  g_autoptr(BackendVirDomain) redefined = virDomainDefineXML(fx->conn, with_ro);
  g_assert_nonnull(redefined);

  g_autoptr(GHashTable) expect = fixture_picture(fx, d);
  create_skip(d, "s1", expect, "vdb");
  fixture_write(fx, d, 0, 0, MiB, 0x91);
  g_hash_table_unref(expect);
  expect = fixture_picture(fx, d);
  create_skip(d, "s2", expect, "vdb");
  delete(d, "s1", expect);
  fixture_start(fx, d);
  delete(d, "s2", expect);
  fixture_stop(fx, d);
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
  g_test_add_func("/exec/delete/intermediate-running", test_intermediate_running);
  g_test_add_func("/exec/delete/pinned", test_pinned);
  g_test_add_func("/exec/errors", test_errors);
  g_test_add_func("/exec/readonly-disk", test_readonly_disk);
  g_test_add_func("/exec/eio", test_eio);
  g_test_add_func("/exec/multi-disk/offline", test_multi_disk_offline);
  g_test_add_func("/exec/multi-disk/running", test_multi_disk_running);
  g_test_add_func("/exec/rename/offline", test_rename_offline);
  g_test_add_func("/exec/rename/running", test_rename_running);
  g_test_add_func("/exec/revert/keep", test_revert_keep);
  g_test_add_func("/exec/revert/discard", test_revert_discard);
  g_test_add_func("/exec/revert/running", test_revert_running);
  int ret = g_test_run();
  fixture_free(fx);
  return ret;
}
