/* ops-dir.c: directories.  A listing is taken at opendir from one model
 * and kept in the handle, so readdir answers from it at any offset and a
 * listing never mixes two models.
 *
 * Thread model: FUSE workers; a handle's listing is immutable after
 * opendir.
 */
#include "virtsnapfs.h"

#include <errno.h>

typedef struct {
  char *name;
  fuse_ino_t ino;
  mode_t mode;
} DirEntry;

static void
dir_entry_clear(gpointer data)
{
  DirEntry *e = data;
  g_free(e->name);
}

static void
dir_add(GArray *entries, const char *name, fuse_ino_t ino, mode_t mode)
{
  DirEntry e = { g_strdup(name), ino, mode };
  g_array_append_val(entries, e);
}

/* The domains of a host's model: the root of a one-host mount, or a
 * host's directory. */
static void
dir_add_domains(GArray *entries, Tree *tree, const TreeNode *node, BackendModel *model)
{
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *dom = model->domains->pdata[i];
    g_autofree char *entry = names_escape(dom->name);
    dir_add(entries, entry, tree_intern(tree, TREE_DOMAIN, node->host, dom->name, NULL, NULL),
            S_IFDIR);
  }
}

/* The inode of a domain directory's parent. */
static fuse_ino_t
domain_parent_ino(Virtsnapfs *fs, const TreeNode *node)
{
  if (node->host == NULL)
    return FUSE_ROOT_ID;
  return tree_intern(fs->tree, TREE_HOST, node->host, NULL, NULL, NULL);
}

void
ops_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) node = ops_node_get(req, ino);
  if (node == NULL)
    return;
  Tree *tree = fs->tree;
  g_autoptr(BackendModel) model = hosts_node_model(fs, node);
  if (node->kind == TREE_DISK || node->kind == TREE_XML || node->kind == TREE_DELTA) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  if (model != NULL && !tree_node_exists(node, model)) {
    fuse_reply_err(req, ENOENT);
    return;
  }

  g_autoptr(GArray) entries = g_array_new(FALSE, FALSE, sizeof(DirEntry));
  g_array_set_clear_func(entries, dir_entry_clear);
  dir_add(entries, ".", ino, S_IFDIR);

  switch (node->kind) {
  case TREE_ROOT:
    dir_add(entries, "..", ino, S_IFDIR);
    if (!fs->multi_host) {
      dir_add_domains(entries, tree, node, model);
      break;
    }
    for (guint i = 0; i < fs->hosts->len; i++) {
      VirtsnapfsHost *host = fs->hosts->pdata[i];
      dir_add(entries, host->name, tree_intern(tree, TREE_HOST, host->name, NULL, NULL, NULL),
              S_IFDIR);
    }
    break;
  case TREE_HOST:
    dir_add(entries, "..", FUSE_ROOT_ID, S_IFDIR);
    dir_add_domains(entries, tree, node, model);
    break;
  case TREE_DOMAIN: {
    BackendDomain *dom = tree_node_domain(node, model);
    dir_add(entries, "..", domain_parent_ino(fs, node), S_IFDIR);
    /* Points in time oldest first, then the present. */
    for (guint i = 0; i < dom->snapshots->len; i++) {
      BackendSnapshot *snap = dom->snapshots->pdata[i];
      g_autofree char *entry = names_escape(snap->name);
      dir_add(entries, entry,
              tree_intern(tree, TREE_POINT, node->host, dom->name, snap->name, NULL), S_IFDIR);
    }
    dir_add(entries, VIRTSNAPFS_NOW,
            tree_intern(tree, TREE_POINT, node->host, dom->name, NULL, NULL), S_IFDIR);
    break;
  }
  case TREE_POINT: {
    GPtrArray *disks = tree_node_disks(node, model);
    dir_add(entries, "..", tree_intern(tree, TREE_DOMAIN, node->host, node->domain, NULL, NULL),
            S_IFDIR);
    for (guint i = 0; disks && i < disks->len; i++) {
      BackendDisk *disk = disks->pdata[i];
      g_autofree char *entry = g_strconcat(disk->target, VIRTSNAPFS_RAW_SUFFIX, NULL);
      dir_add(entries, entry,
              tree_intern(tree, TREE_DISK, node->host, node->domain, node->point, disk->target),
              S_IFREG);
    }
    /* Deltas against the parent point: snapshots only. */
    for (guint i = 0; node->point != NULL && disks && i < disks->len; i++) {
      BackendDisk *disk = disks->pdata[i];
      g_autofree char *entry = g_strconcat(disk->target, VIRTSNAPFS_DELTA_SUFFIX, NULL);
      dir_add(entries, entry,
              tree_intern(tree, TREE_DELTA, node->host, node->domain, node->point, disk->target), S_IFREG);
    }
    if (node->point != NULL)
      dir_add(entries, VIRTSNAPFS_SNAPSHOT_XML,
              tree_intern(tree, TREE_XML, node->host, node->domain, node->point, NULL), S_IFREG);
    break;
  }
  case TREE_DISK:
  case TREE_XML:
  case TREE_DELTA:
    g_assert_not_reached();
  }

  g_debug("OPENDIR %s => %u entries", node->display, entries->len);
  fi->fh = (uint64_t)(uintptr_t)g_steal_pointer(&entries);
  fi->cache_readdir = 0;
  if (fuse_reply_open(req, fi) != 0)
    g_array_unref((GArray *)(uintptr_t)fi->fh);
}

void
ops_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
            struct fuse_file_info *fi)
{
  GArray *entries = (GArray *)(uintptr_t)fi->fh;
  g_autofree char *buf = g_malloc(size);
  size_t used = 0;

  for (gsize i = (gsize)MAX(off, 0); i < entries->len; i++) {
    DirEntry *e = &g_array_index(entries, DirEntry, i);
    struct stat st = { .st_ino = e->ino, .st_mode = e->mode };
    size_t n = fuse_add_direntry(req, buf + used, size - used, e->name, &st, (off_t)(i + 1));
    if (n > size - used)
      break;
    used += n;
  }
  fuse_reply_buf(req, buf, used);
}

void
ops_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  g_array_unref((GArray *)(uintptr_t)fi->fh);
  fuse_reply_err(req, 0);
}
