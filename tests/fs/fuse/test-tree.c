/* test-tree.c: inode numbers stay with their entries:
 * stable across lookups and forgets while the entry exists, dropped when
 * the kernel forgot it and the model lost it, never reused. */
#include "virtsnapfs.h"

#include "backend-private.h"

static BackendDisk *
disk_new(const char *target, const char *path)
{
  BackendDisk *disk = g_new0(BackendDisk, 1);
  disk->target = g_strdup(target);
  disk->image_path = g_strdup(path);
  disk->format = CHAIN_FORMAT_QCOW2;
  return disk;
}

/* A model with domain "demo": snapshots named in names, one disk vda. */
static BackendModel *
model_new(const char *const *names)
{
  BackendModel *model = backend_model_new_empty();
  BackendDomain *dom = g_new0(BackendDomain, 1);
  dom->name = g_strdup("demo");
  dom->uuid = g_strdup("00000000-0000-0000-0000-000000000001");
  dom->disks = g_ptr_array_new_with_free_func((GDestroyNotify)backend_disk_free);
  g_ptr_array_add(dom->disks, disk_new("vda", "/img/vda.now"));
  dom->snapshots = g_ptr_array_new();
  for (gsize i = 0; names && names[i]; i++) {
    BackendSnapshot *snap = g_new0(BackendSnapshot, 1);
    snap->name = g_strdup(names[i]);
    snap->creation_time = 1000 + (gint64)i;
    snap->xml = g_strdup("<domainsnapshot/>");
    snap->disks = g_ptr_array_new_with_free_func((GDestroyNotify)backend_disk_free);
    g_ptr_array_add(snap->disks, disk_new("vda", "/img/vda.point"));
    g_ptr_array_add(dom->snapshots, snap);
  }
  g_ptr_array_add(model->domains, dom);
  return model;
}

static void
free_snapshots(gpointer data)
{
  BackendDomain *dom = data;
  for (guint i = 0; i < dom->snapshots->len; i++) {
    BackendSnapshot *snap = dom->snapshots->pdata[i];
    g_free(snap->name);
    g_free(snap->xml);
    g_ptr_array_unref(snap->disks);
    g_free(snap);
  }
  g_ptr_array_set_size(dom->snapshots, 0);
}

static void
model_free(BackendModel *model)
{
  for (guint i = 0; i < model->domains->len; i++)
    free_snapshots(model->domains->pdata[i]);
  backend_model_unref(model);
}

static void
test_stable(void)
{
  g_autoptr(Tree) tree = tree_new();
  const char *names[] = { "s1", "s/2", NULL };
  BackendModel *model = model_new(names);

  g_autoptr(TreeNode) dom = tree_lookup(tree, TREE_DOMAIN, NULL, "demo", NULL, NULL);
  g_autoptr(TreeNode) s1 = tree_lookup(tree, TREE_POINT, NULL, "demo", "s1", NULL);
  g_autoptr(TreeNode) now = tree_lookup(tree, TREE_POINT, NULL, "demo", NULL, NULL);
  g_autoptr(TreeNode) f1 = tree_lookup(tree, TREE_DISK, NULL, "demo", "s1", "vda");
  g_autoptr(TreeNode) fnow = tree_lookup(tree, TREE_DISK, NULL, "demo", NULL, "vda");
  g_autoptr(TreeNode) x1 = tree_lookup(tree, TREE_XML, NULL, "demo", "s1", NULL);

  /* All distinct, none is the root. */
  fuse_ino_t inos[] = { dom->ino, s1->ino, now->ino, f1->ino, fnow->ino, x1->ino };
  for (gsize i = 0; i < G_N_ELEMENTS(inos); i++) {
    g_assert_cmpuint(inos[i], !=, FUSE_ROOT_ID);
    for (gsize j = i + 1; j < G_N_ELEMENTS(inos); j++)
      g_assert_cmpuint(inos[i], !=, inos[j]);
  }
  g_assert_cmpstr(f1->display, ==, "demo/s1/vda.raw");
  g_assert_cmpstr(fnow->display, ==, "demo/@now/vda.raw");

  /* "s/2" and a snapshot literally named "s%2F2" would be different
   * entries; the key escapes components. */
  fuse_ino_t a = tree_intern(tree, TREE_POINT, NULL, "demo", "s/2", NULL);
  fuse_ino_t b = tree_intern(tree, TREE_POINT, NULL, "demo", "s%2F2", NULL);
  g_assert_cmpuint(a, !=, b);

  /* Forgotten but still in the model: the number stays. */
  tree_forget(tree, f1->ino, 1, model);
  g_autoptr(TreeNode) f1again = tree_lookup(tree, TREE_DISK, NULL, "demo", "s1", "vda");
  g_assert_cmpuint(f1again->ino, ==, f1->ino);
  g_assert_true(tree_node_exists(f1again, model));

  /* The node is found by number and by components. */
  g_autoptr(TreeNode) byino = tree_get(tree, s1->ino);
  g_assert_true(byino == s1);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "s1", NULL), ==, s1->ino);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "zz", NULL), ==, 0);

  model_free(model);
}

static void
test_gone(void)
{
  g_autoptr(Tree) tree = tree_new();
  const char *names[] = { "s1", NULL };
  BackendModel *before = model_new(names);
  BackendModel *after = model_new(NULL);

  g_autoptr(TreeNode) s1 = tree_lookup(tree, TREE_POINT, NULL, "demo", "s1", NULL);
  fuse_ino_t old = s1->ino;
  g_assert_false(tree_node_exists(s1, after));

  /* Still referenced by the kernel: survives a prune. */
  tree_prune(tree, NULL, after);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "s1", NULL), ==, old);

  /* Forgotten and gone: leaves the table; a new s1 gets a new number. */
  tree_forget(tree, old, 1, after);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "s1", NULL), ==, 0);
  g_assert_null(tree_get(tree, old));
  g_autoptr(TreeNode) again = tree_lookup(tree, TREE_POINT, NULL, "demo", "s1", NULL);
  g_assert_cmpuint(again->ino, >, old);
  /* The old handle stays valid (reference-counted). */
  g_assert_cmpstr(s1->point, ==, "s1");

  /* Interned without lookup, then gone: pruned. */
  fuse_ino_t x = tree_intern(tree, TREE_XML, NULL, "demo", "s1", NULL);
  g_assert_cmpuint(x, !=, 0);
  guint size = tree_size(tree);
  tree_prune(tree, NULL, after);
  g_assert_cmpuint(tree_size(tree), ==, size - 1);
  g_autoptr(TreeNode) root = tree_get(tree, FUSE_ROOT_ID);
  g_assert_nonnull(root);

  model_free(before);
  model_free(after);
}

static void
test_model_lookups(void)
{
  const char *names[] = { "s1", NULL };
  BackendModel *model = model_new(names);
  g_autoptr(Tree) tree = tree_new();
  g_autoptr(TreeNode) f = tree_lookup(tree, TREE_DISK, NULL, "demo", "s1", "vda");
  g_autoptr(TreeNode) fn = tree_lookup(tree, TREE_DISK, NULL, "demo", NULL, "vda");
  g_autoptr(TreeNode) fx = tree_lookup(tree, TREE_DISK, NULL, "demo", "s1", "vdb");
  g_autoptr(TreeNode) xn = tree_lookup(tree, TREE_XML, NULL, "demo", NULL, NULL);

  BackendDisk *d = tree_find_disk(tree_node_disks(f, model), "vda");
  g_assert_cmpstr(d->image_path, ==, "/img/vda.point");
  d = tree_find_disk(tree_node_disks(fn, model), "vda");
  g_assert_cmpstr(d->image_path, ==, "/img/vda.now");
  g_assert_false(tree_node_exists(fx, model));
  g_assert_false(tree_node_exists(xn, model)); /* @now has no snapshot.xml */
  model_free(model);
}

/* After a snapshot rename the kernel's dentries point at the old inode
 * numbers under the new name: the numbers move with the snapshot. */
static void
test_rename(void)
{
  const char *const after[] = { "renamed", "s2", NULL };
  g_autoptr(Tree) tree = tree_new();
  BackendModel *model = model_new(after);

  g_autoptr(TreeNode) pn = tree_lookup(tree, TREE_POINT, NULL, "demo", "s1", NULL);
  g_autoptr(TreeNode) fn = tree_lookup(tree, TREE_DISK, NULL, "demo", "s1", "vda");
  fuse_ino_t other = tree_intern(tree, TREE_POINT, NULL, "demo", "s2", NULL);
  fuse_ino_t now = tree_intern(tree, TREE_POINT, NULL, "demo", NULL, NULL);

  tree_rename_point(tree, NULL, "demo", "s1", "renamed");
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "s1", NULL), ==, 0);
  g_assert_cmpuint(tree_find(tree, TREE_DISK, NULL, "demo", "s1", "vda"), ==, 0);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "renamed", NULL), ==, pn->ino);
  g_assert_cmpuint(tree_find(tree, TREE_DISK, NULL, "demo", "renamed", "vda"), ==, fn->ino);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "s2", NULL), ==, other);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", NULL, NULL), ==, now);

  g_autoptr(TreeNode) moved = tree_get(tree, pn->ino);
  g_assert_cmpstr(moved->point, ==, "renamed");
  g_assert_cmpstr(moved->display, ==, "demo/renamed");
  g_assert_true(tree_node_exists(moved, model));
  g_assert_false(tree_node_exists(pn, model)); /* the old node object is stale */

  /* The lookup count came along: one forget drops the node only once it
   * leaves the model. */
  tree_forget(tree, pn->ino, 1, model);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, NULL, "demo", "renamed", NULL), ==, pn->ino);
  model_free(model);
}

/* Several hosts: the same domain on two hosts is two entries; a host's
 * model prunes and renames only its own nodes; a host's directory keeps
 * its number whatever the models say. */
static void
test_hosts(void)
{
  g_autoptr(Tree) tree = tree_new();
  const char *names[] = { "s1", NULL };
  BackendModel *with = model_new(names);
  BackendModel *without = model_new(NULL);

  g_autoptr(TreeNode) ha = tree_lookup(tree, TREE_HOST, "a", NULL, NULL, NULL);
  g_autoptr(TreeNode) hb = tree_lookup(tree, TREE_HOST, "b", NULL, NULL, NULL);
  g_assert_cmpuint(ha->ino, !=, hb->ino);
  g_assert_cmpstr(ha->display, ==, "a");
  g_assert_null(ha->domain);

  g_autoptr(TreeNode) da = tree_lookup(tree, TREE_DOMAIN, "a", "demo", NULL, NULL);
  g_autoptr(TreeNode) db = tree_lookup(tree, TREE_DOMAIN, "b", "demo", NULL, NULL);
  g_assert_cmpuint(da->ino, !=, db->ino);
  g_assert_cmpstr(da->display, ==, "a/demo");
  g_assert_cmpstr(db->host, ==, "b");
  /* Neither is the one-host entry of the same domain. */
  g_assert_cmpuint(tree_find(tree, TREE_DOMAIN, NULL, "demo", NULL, NULL), ==, 0);

  fuse_ino_t fa = tree_intern(tree, TREE_DISK, "a", "demo", "s1", "vda");
  fuse_ino_t fb = tree_intern(tree, TREE_DISK, "b", "demo", "s1", "vda");
  g_assert_cmpuint(fa, !=, fb);
  g_assert_cmpuint(tree_intern(tree, TREE_DISK, "a", "demo", "s1", "vda"), ==, fa);
  g_autoptr(TreeNode) nfa = tree_get(tree, fa);
  g_assert_cmpstr(nfa->display, ==, "a/demo/s1/vda.raw");

  /* Host a lost s1: its file goes, host b's stays. */
  tree_prune(tree, "a", without);
  g_assert_cmpuint(tree_find(tree, TREE_DISK, "a", "demo", "s1", "vda"), ==, 0);
  g_assert_cmpuint(tree_find(tree, TREE_DISK, "b", "demo", "s1", "vda"), ==, fb);
  /* Hosts never leave the table, even forgotten against an empty model. */
  tree_forget(tree, ha->ino, 1, without);
  g_assert_cmpuint(tree_find(tree, TREE_HOST, "a", NULL, NULL, NULL), ==, ha->ino);
  g_autoptr(TreeNode) hagain = tree_lookup(tree, TREE_HOST, "a", NULL, NULL, NULL);
  g_assert_cmpuint(hagain->ino, ==, ha->ino);

  /* A rename on host b leaves host a's point of the same name alone. */
  fuse_ino_t pa = tree_intern(tree, TREE_POINT, "a", "demo", "s1", NULL);
  fuse_ino_t pb = tree_intern(tree, TREE_POINT, "b", "demo", "s1", NULL);
  tree_rename_point(tree, "b", "demo", "s1", "s2");
  g_assert_cmpuint(tree_find(tree, TREE_POINT, "a", "demo", "s1", NULL), ==, pa);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, "b", "demo", "s2", NULL), ==, pb);
  g_assert_cmpuint(tree_find(tree, TREE_DISK, "b", "demo", "s2", "vda"), ==, fb);
  g_assert_cmpuint(tree_find(tree, TREE_POINT, "b", "demo", "s1", NULL), ==, 0);

  model_free(with);
  model_free(without);
}

int
main(int argc, char *argv[])
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/tree/stable", test_stable);
  g_test_add_func("/tree/gone", test_gone);
  g_test_add_func("/tree/model-lookups", test_model_lookups);
  g_test_add_func("/tree/rename", test_rename);
  g_test_add_func("/tree/hosts", test_hosts);
  return g_test_run();
}
