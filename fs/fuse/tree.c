/* tree.c: inode numbers for the entries of the tree.
 *
 * An entry is identified by its components: (domain), (domain, point),
 * (domain, point, file), where point is a snapshot name or @now.  On a
 * mount of several libvirt hosts every component list starts with the
 * host (TREE_HOST is the level between the root and the domains); on a
 * mount of one host that component is NULL and the tree is as it always
 * was.  The
 * first lookup of an entry gives it the next inode number; the number
 * stays with the entry for the lifetime of the mount, also across FUSE
 * forgets, as long as the entry exists in the model.  A node leaves the
 * table only when the kernel has forgotten it (nlookup 0) and it is gone
 * from the model, so the table holds what the model shows plus what the
 * kernel still references.  Numbers are never reused, which makes the
 * FUSE generation number unnecessary.
 *
 * What an entry *is* (size, times, disks) is not stored here: operations
 * read it from the current BackendModel, so a node never goes stale.
 *
 * Thread model: called from FUSE workers and the main loop; one mutex
 * (tree->lock) protects both tables and every nlookup count; it is never
 * held while calling out.  TreeNodes are immutable and reference-counted,
 * so a node handed out stays valid after it left the table.
 */
#include "virtsnapfs.h"

#include <string.h>

typedef struct {
  TreeNode node;      /* first: a TreeNode * is an Entry * */
  guint64 nlookup;    /* under tree->lock */
} Entry;

struct _Tree {
  GMutex lock;
  GHashTable *by_ino;  /* fuse_ino_t (as guint64 key) -> Entry * (owned ref) */
  GHashTable *by_key;  /* key -> Entry * (borrowed from by_ino) */
  fuse_ino_t next_ino;
};

static void
entry_clear(gpointer data)
{
  TreeNode *node = data;
  g_free(node->host);
  g_free(node->domain);
  g_free(node->point);
  g_free(node->target);
  g_free(node->key);
  g_free(node->display);
}

TreeNode *
tree_node_ref(TreeNode *node)
{
  return g_atomic_rc_box_acquire(node);
}

void
tree_node_unref(TreeNode *node)
{
  g_atomic_rc_box_release_full(node, entry_clear);
}

static char *
make_key_in_host(TreeKind kind, const char *host, const char *domain, const char *point,
                 const char *target)
{
  /* Components are escaped, so '/' separates them unambiguously; host and
   * domain names cannot contain '/', snapshot names can. */
  g_autofree char *p = point ? names_escape(point) : g_strdup(VIRTSNAPFS_NOW);
  switch (kind) {
  case TREE_ROOT:
    return g_strdup("/");
  case TREE_HOST:
    return g_strdup_printf("h:%s", host);
  case TREE_DOMAIN:
    return g_strdup_printf("d:%s", domain);
  case TREE_POINT:
    return g_strdup_printf("p:%s/%s", domain, p);
  case TREE_DISK:
    return g_strdup_printf("f:%s/%s/%s", domain, p, target);
  case TREE_XML:
    return g_strdup_printf("x:%s/%s", domain, p);
  case TREE_DELTA:
    return g_strdup_printf("t:%s/%s/%s", domain, p, target);
  }
  g_assert_not_reached();
}

static char *
make_key(TreeKind kind, const char *host, const char *domain, const char *point,
         const char *target)
{
  g_autofree char *key = make_key_in_host(kind, host, domain, point, target);
  if (host == NULL || kind == TREE_HOST || kind == TREE_ROOT)
    return g_steal_pointer(&key);
  return g_strdup_printf("%s/%s", host, key);
}

static char *
make_display_in_host(TreeKind kind, const char *domain, const char *point, const char *target)
{
  const char *p = point ? point : VIRTSNAPFS_NOW;
  switch (kind) {
  case TREE_ROOT:
  case TREE_HOST:
    return g_strdup("/");
  case TREE_DOMAIN:
    return g_strdup(domain);
  case TREE_POINT:
    return g_strdup_printf("%s/%s", domain, p);
  case TREE_DISK:
    return g_strdup_printf("%s/%s/%s" VIRTSNAPFS_RAW_SUFFIX, domain, p, target);
  case TREE_XML:
    return g_strdup_printf("%s/%s/" VIRTSNAPFS_SNAPSHOT_XML, domain, p);
  case TREE_DELTA:
    return g_strdup_printf("%s/%s/%s" VIRTSNAPFS_DELTA_SUFFIX, domain, p, target);
  }
  g_assert_not_reached();
}

/* "host/demo/s1/vda.raw" on a mount of several hosts. */
static char *
make_display(TreeKind kind, const char *host, const char *domain, const char *point,
             const char *target)
{
  if (kind == TREE_HOST)
    return g_strdup(host);
  g_autofree char *display = make_display_in_host(kind, domain, point, target);
  if (host == NULL || kind == TREE_ROOT)
    return g_steal_pointer(&display);
  return g_strdup_printf("%s/%s", host, display);
}

static Entry *
entry_new(fuse_ino_t ino, TreeKind kind, const char *host, const char *domain,
          const char *point, const char *target)
{
  Entry *e = g_atomic_rc_box_new0(Entry);
  e->node.ino = ino;
  e->node.kind = kind;
  e->node.host = g_strdup(host);
  e->node.domain = g_strdup(domain);
  e->node.point = g_strdup(point);
  e->node.target = g_strdup(target);
  e->node.key = make_key(kind, host, domain, point, target);
  e->node.display = make_display(kind, host, domain, point, target);
  return e;
}

Tree *
tree_new(void)
{
  Tree *tree = g_new0(Tree, 1);
  g_mutex_init(&tree->lock);
  tree->by_ino = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                       (GDestroyNotify)tree_node_unref);
  tree->by_key = g_hash_table_new(g_str_hash, g_str_equal);
  Entry *root = entry_new(FUSE_ROOT_ID, TREE_ROOT, NULL, NULL, NULL, NULL);
  root->nlookup = 1; /* the kernel holds the root without a lookup */
  g_hash_table_insert(tree->by_ino, &root->node.ino, root);
  g_hash_table_insert(tree->by_key, root->node.key, root);
  tree->next_ino = FUSE_ROOT_ID + 1;
  return tree;
}

void
tree_free(Tree *tree)
{
  if (tree == NULL)
    return;
  g_hash_table_unref(tree->by_key);
  g_hash_table_unref(tree->by_ino);
  g_mutex_clear(&tree->lock);
  g_free(tree);
}

TreeNode *
tree_get(Tree *tree, fuse_ino_t ino)
{
  guint64 key = ino;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  Entry *e = g_hash_table_lookup(tree->by_ino, &key);
  return e ? tree_node_ref(&e->node) : NULL;
}

/* The entry of the components, created with a fresh inode number if it
 * does not exist.  Under tree->lock. */
static Entry *
entry_intern(Tree *tree, TreeKind kind, const char *host, const char *domain, const char *point,
             const char *target)
{
  g_autofree char *key = make_key(kind, host, domain, point, target);
  Entry *e = g_hash_table_lookup(tree->by_key, key);
  if (e == NULL) {
    e = entry_new(tree->next_ino++, kind, host, domain, point, target);
    g_hash_table_insert(tree->by_ino, &e->node.ino, e);
    g_hash_table_insert(tree->by_key, e->node.key, e);
  }
  return e;
}

TreeNode *
tree_lookup(Tree *tree, TreeKind kind, const char *host, const char *domain, const char *point,
            const char *target)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  Entry *e = entry_intern(tree, kind, host, domain, point, target);
  e->nlookup++;
  return tree_node_ref(&e->node);
}

fuse_ino_t
tree_find(Tree *tree, TreeKind kind, const char *host, const char *domain, const char *point,
          const char *target)
{
  g_autofree char *key = make_key(kind, host, domain, point, target);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  Entry *e = g_hash_table_lookup(tree->by_key, key);
  return e ? e->node.ino : 0;
}

fuse_ino_t
tree_intern(Tree *tree, TreeKind kind, const char *host, const char *domain, const char *point,
            const char *target)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  return entry_intern(tree, kind, host, domain, point, target)->node.ino;
}

/* Under tree->lock. */
static void
tree_remove_locked(Tree *tree, Entry *e)
{
  g_hash_table_remove(tree->by_key, e->node.key);
  g_hash_table_remove(tree->by_ino, &e->node.ino); /* drops the table's ref */
}

void
tree_forget(Tree *tree, fuse_ino_t ino, guint64 nlookup, BackendModel *model)
{
  guint64 key = ino;
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  Entry *e = g_hash_table_lookup(tree->by_ino, &key);
  if (e == NULL || e->node.kind == TREE_ROOT)
    return;
  e->nlookup = nlookup >= e->nlookup ? 0 : e->nlookup - nlookup;
  if (e->nlookup == 0 && (model == NULL || !tree_node_exists(&e->node, model)))
    tree_remove_locked(tree, e);
}

void
tree_prune(Tree *tree, const char *host, BackendModel *model)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  GHashTableIter iter;
  gpointer value;
  g_autoptr(GPtrArray) gone = g_ptr_array_new();

  g_hash_table_iter_init(&iter, tree->by_ino);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    Entry *e = value;
    if (e->nlookup == 0 && g_strcmp0(e->node.host, host) == 0 &&
        !tree_node_exists(&e->node, model))
      g_ptr_array_add(gone, e);
  }
  for (guint i = 0; i < gone->len; i++)
    tree_remove_locked(tree, gone->pdata[i]);
}

void
tree_rename_point(Tree *tree, const char *host, const char *domain, const char *old_name,
                  const char *new_name)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  g_autoptr(GPtrArray) moved = g_ptr_array_new();
  GHashTableIter iter;
  gpointer value;

  g_hash_table_iter_init(&iter, tree->by_ino);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    Entry *e = value;
    if (e->node.point != NULL && g_strcmp0(e->node.host, host) == 0 &&
        g_strcmp0(e->node.domain, domain) == 0 &&
        g_str_equal(e->node.point, old_name))
      g_ptr_array_add(moved, e);
  }
  for (guint i = 0; i < moved->len; i++) {
    Entry *old = moved->pdata[i];
    Entry *e = entry_new(old->node.ino, old->node.kind, host, domain, new_name,
                         old->node.target);
    /* A node of the new name cannot exist yet (the kernel holds the
     * directory locked during rename); if one does, keep it. */
    if (g_hash_table_contains(tree->by_key, e->node.key)) {
      tree_node_unref(&e->node);
      continue;
    }
    e->nlookup = old->nlookup;
    g_hash_table_remove(tree->by_key, old->node.key);
    g_hash_table_replace(tree->by_ino, &e->node.ino, e); /* drops old */
    g_hash_table_insert(tree->by_key, e->node.key, e);
  }
}

guint
tree_size(Tree *tree)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&tree->lock);
  return g_hash_table_size(tree->by_ino);
}

/* ------------------------------------------------------------------ */
/* What a node stands for in a model.  Pure: no lock needed.           */

BackendDomain *
tree_node_domain(const TreeNode *node, BackendModel *model)
{
  if (node->domain == NULL)
    return NULL;
  return backend_model_find_domain(model, node->domain);
}

BackendSnapshot *
tree_node_snapshot(const TreeNode *node, BackendModel *model)
{
  if (node->point == NULL)
    return NULL;
  BackendDomain *dom = tree_node_domain(node, model);
  return dom ? backend_domain_find_snapshot(dom, node->point) : NULL;
}

GPtrArray *
tree_node_disks(const TreeNode *node, BackendModel *model)
{
  BackendDomain *dom = tree_node_domain(node, model);
  if (dom == NULL)
    return NULL;
  if (node->point == NULL)
    return dom->disks;
  BackendSnapshot *snap = backend_domain_find_snapshot(dom, node->point);
  return snap ? snap->disks : NULL;
}

BackendDisk *
tree_find_disk(GPtrArray *disks, const char *target)
{
  if (disks == NULL)
    return NULL;
  for (guint i = 0; i < disks->len; i++) {
    BackendDisk *disk = disks->pdata[i];
    if (g_str_equal(disk->target, target))
      return disk;
  }
  return NULL;
}

gboolean
tree_node_exists(const TreeNode *node, BackendModel *model)
{
  switch (node->kind) {
  case TREE_ROOT:
  case TREE_HOST: /* the hosts are fixed for the mount */
    return TRUE;
  case TREE_DOMAIN:
    return tree_node_domain(node, model) != NULL;
  case TREE_POINT:
    if (node->point == NULL)
      return tree_node_domain(node, model) != NULL;
    return tree_node_snapshot(node, model) != NULL;
  case TREE_DISK:
    return tree_find_disk(tree_node_disks(node, model), node->target) != NULL;
  case TREE_XML:
    return node->point != NULL && tree_node_snapshot(node, model) != NULL;
  case TREE_DELTA:
    return node->point != NULL &&
           tree_find_disk(tree_node_disks(node, model), node->target) != NULL;
  }
  return FALSE;
}
