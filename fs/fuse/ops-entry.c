/* ops-entry.c: what an entry is: the node of a request's inode, its
 * attributes, and lookup, forget and getattr.
 *
 * Thread model: FUSE workers, many at once.  Each answer comes from one
 * reference to the model of the node's host (see ops.c); the tree has its
 * own lock.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>

TreeNode *
ops_node_get(fuse_req_t req, fuse_ino_t ino)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  TreeNode *node = tree_get(fs->tree, ino);
  if (node == NULL)
    fuse_reply_err(req, ESTALE);
  return node;
}

/* ------------------------------------------------------------------ */
/* Attributes.                                                          */

static void
set_time(struct stat *st, gint64 seconds, long nsec)
{
  st->st_mtim.tv_sec = seconds;
  st->st_mtim.tv_nsec = nsec;
  st->st_ctim = st->st_mtim;
  st->st_atim = st->st_mtim;
}

static gint64
domain_mtime(Virtsnapfs *fs, BackendDomain *dom)
{
  gint64 t = fs->mount_time.tv_sec;
  for (guint i = 0; i < dom->snapshots->len; i++) {
    BackendSnapshot *snap = dom->snapshots->pdata[i];
    t = MAX(t, snap->creation_time);
  }
  return t;
}

gboolean
ops_stat(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, struct stat *st,
         int *err)
{
  memset(st, 0, sizeof *st);
  st->st_ino = node->ino;
  st->st_uid = fs->uid;
  st->st_gid = fs->gid;
  st->st_blksize = VIRTSNAPFS_MAX_READ;
  *err = ENOENT;

  switch (node->kind) {
  case TREE_ROOT:
  case TREE_HOST:
    st->st_mode = S_IFDIR | 0555;
    if (node->kind == TREE_ROOT && fs->multi_host)
      st->st_nlink = 2 + fs->hosts->len;
    else
      st->st_nlink = 2 + model->domains->len;
    set_time(st, fs->mount_time.tv_sec, fs->mount_time.tv_nsec);
    return TRUE;

  case TREE_DOMAIN:
  case TREE_POINT: {
    BackendDomain *dom = tree_node_domain(node, model);
    if (dom == NULL)
      return FALSE;
    /* Writable by the owner: mkdir, rmdir and rename happen in a domain;
     * `rm -r` unlinks the files of a snapshot, and `mv D/NAME D/@now`
     * renames into @now (a revert). */
    st->st_mode = S_IFDIR | 0755;
    if (node->kind == TREE_DOMAIN) {
      st->st_nlink = 2 + 1 + dom->snapshots->len;
      set_time(st, domain_mtime(fs, dom), 0);
      return TRUE;
    }
    st->st_nlink = 2;
    if (node->point == NULL) {
      /* The present: it is always now. */
      set_time(st, g_get_real_time() / G_USEC_PER_SEC, 0);
      return TRUE;
    }
    BackendSnapshot *snap = backend_domain_find_snapshot(dom, node->point);
    if (snap == NULL)
      return FALSE;
    set_time(st, snap->creation_time, 0);
    return TRUE;
  }

  case TREE_XML: {
    BackendSnapshot *snap = tree_node_snapshot(node, model);
    if (snap == NULL)
      return FALSE;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = snap->xml ? (off_t)strlen(snap->xml) : 0;
    st->st_blocks = (st->st_size + 511) / 512;
    set_time(st, snap->creation_time, 0);
    return TRUE;
  }

  case TREE_DISK: {
    BackendDisk *disk = tree_find_disk(tree_node_disks(node, model), node->target);
    if (disk == NULL)
      return FALSE;
    BackendDomain *dom = tree_node_domain(node, model);
    VirtsnapfsHost *host = hosts_of_node(fs, node);
    gboolean live = node->point == NULL && dom->running;
    ImageInfo info;
    g_autoptr(GError) error = NULL;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    if (!info_cache_get(host->info, disk, &model->policy, live, &info, &error)) {
      /* Logged once by info.c.  A disk that is not visible here (remote
       * host) is listed with the size libvirt knows and fails to open;
       * other failures leave the entry visible in readdir only. */
      if (!g_error_matches(error, CHAIN_ERROR, EREMOTE)) {
        *err = EIO;
        return FALSE;
      }
      st->st_size = (off_t)hosts_unavailable_size(host, node->domain, node->point == NULL, disk);
      st->st_blocks = 0;
      if (node->point == NULL)
        set_time(st, fs->mount_time.tv_sec, fs->mount_time.tv_nsec);
      else
        set_time(st, tree_node_snapshot(node, model)->creation_time, 0);
      return TRUE;
    }
    st->st_size = (off_t)info.virtual_size;
    st->st_blocks = (blkcnt_t)((info.allocated + 511) / 512);
    if (node->point == NULL) {
      set_time(st, info.mtime.tv_sec, info.mtime.tv_nsec);
    } else {
      BackendSnapshot *snap = tree_node_snapshot(node, model);
      set_time(st, snap->creation_time, 0);
    }
    return TRUE;
  }

  case TREE_DELTA:
    return delta_stat(fs, node, model, st, err);
  }
  return FALSE;
}

/* ------------------------------------------------------------------ */
/* lookup, forget, getattr.                                             */

/* Resolves name under parent to a node's components; FALSE if there is
 * no such entry (or the parent is not a directory: *err). */
static gboolean
resolve_child(Virtsnapfs *fs, const TreeNode *parent, const char *name, BackendModel *model,
              TreeKind *kind, char **host, char **domain, char **point, char **target,
              int *err)
{
  *err = ENOENT;
  *host = g_strdup(parent->host);
  switch (parent->kind) {
  case TREE_ROOT:
    if (fs->multi_host) {
      if (hosts_find(fs, name) == NULL)
        return FALSE;
      *kind = TREE_HOST;
      g_free(*host);
      *host = g_strdup(name);
      return TRUE;
    }
    /* One host: the root lists its domains. */
    G_GNUC_FALLTHROUGH;
  case TREE_HOST: {
    g_autofree char *dname = names_unescape(name);
    if (dname == NULL || backend_model_find_domain(model, dname) == NULL)
      return FALSE;
    *kind = TREE_DOMAIN;
    *domain = g_steal_pointer(&dname);
    return TRUE;
  }
  case TREE_DOMAIN: {
    BackendDomain *dom = tree_node_domain(parent, model);
    if (dom == NULL)
      return FALSE;
    if (g_str_equal(name, VIRTSNAPFS_NOW)) {
      *kind = TREE_POINT;
      *domain = g_strdup(parent->domain);
      return TRUE;
    }
    g_autofree char *sname = names_unescape(name);
    if (sname == NULL || backend_domain_find_snapshot(dom, sname) == NULL)
      return FALSE;
    *kind = TREE_POINT;
    *domain = g_strdup(parent->domain);
    *point = g_steal_pointer(&sname);
    return TRUE;
  }
  case TREE_POINT: {
    if (parent->point != NULL && g_str_equal(name, VIRTSNAPFS_SNAPSHOT_XML)) {
      if (tree_node_snapshot(parent, model) == NULL)
        return FALSE;
      *kind = TREE_XML;
      *domain = g_strdup(parent->domain);
      *point = g_strdup(parent->point);
      return TRUE;
    }
    g_autofree char *tname = NULL;
    TreeKind file_kind = TREE_DISK;
    if (parent->point != NULL && names_is_disk_file(name, VIRTSNAPFS_DELTA_SUFFIX, &tname))
      file_kind = TREE_DELTA;
    else if (!names_is_disk_file(name, VIRTSNAPFS_RAW_SUFFIX, &tname))
      return FALSE;
    if (tree_find_disk(tree_node_disks(parent, model), tname) == NULL)
      return FALSE;
    *kind = file_kind;
    *domain = g_strdup(parent->domain);
    *point = g_strdup(parent->point);
    *target = g_steal_pointer(&tname);
    return TRUE;
  }
  case TREE_DISK:
  case TREE_XML:
  case TREE_DELTA:
    *err = ENOTDIR;
    return FALSE;
  }
  return FALSE;
}

void
ops_reply_entry(fuse_req_t req, Virtsnapfs *fs, BackendModel *model, const TreeNode *pnode,
                const char *name)
{
  g_autofree char *host = NULL, *domain = NULL, *point = NULL, *target = NULL;
  TreeKind kind;
  int err;

  if (!resolve_child(fs, pnode, name, model, &kind, &host, &domain, &point, &target, &err)) {
    g_debug("LOOKUP %s/%s => %s", pnode->display, name, g_strerror(err));
    fuse_reply_err(req, err);
    return;
  }

  g_autoptr(TreeNode) node = tree_lookup(fs->tree, kind, host, domain, point, target);
  /* A host's directory under the root of several: its own model. */
  g_autoptr(BackendModel) child_model = model ? backend_model_ref(model)
                                              : hosts_node_model(fs, node);
  model = child_model;
  struct fuse_entry_param e = { 0 };
  if (!ops_stat(fs, node, model, &e.attr, &err)) {
    tree_forget(fs->tree, node->ino, 1, model);
    g_debug("LOOKUP %s/%s => %s", pnode->display, name, g_strerror(err));
    fuse_reply_err(req, err);
    return;
  }
  e.ino = node->ino;
  e.attr_timeout = fs->opts->timeout;
  e.entry_timeout = fs->opts->timeout;
  g_debug("LOOKUP %s/%s => ino %" G_GUINT64_FORMAT, pnode->display, name, (guint64)node->ino);
  if (fuse_reply_entry(req, &e) != 0)
    tree_forget(fs->tree, node->ino, 1, model); /* the kernel did not take it */
}

void
ops_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) pnode = ops_node_get(req, parent);
  if (pnode == NULL)
    return;
  g_autoptr(BackendModel) model = hosts_node_model(fs, pnode);
  ops_reply_entry(req, fs, model, pnode, name);
}

/* Forgets nlookup of ino, judged against the model of its host. */
static void
forget_one(Virtsnapfs *fs, fuse_ino_t ino, guint64 nlookup)
{
  g_autoptr(TreeNode) node = tree_get(fs->tree, ino);
  if (node == NULL)
    return;
  g_autoptr(BackendModel) model = hosts_node_model(fs, node);
  if (model == NULL)
    return; /* the root */
  tree_forget(fs->tree, ino, nlookup, model);
}

void
ops_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
  forget_one(fuse_req_userdata(req), ino, nlookup);
  fuse_reply_none(req);
}

void
ops_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  for (size_t i = 0; i < count; i++)
    forget_one(fs, forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void
ops_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) node = ops_node_get(req, ino);
  if (node == NULL)
    return;
  struct stat st;
  int err;
  g_autoptr(BackendModel) model = hosts_node_model(fs, node);
  if (!ops_stat(fs, node, model, &st, &err)) {
    g_debug("GETATTR %s => %s", node->display, g_strerror(err));
    fuse_reply_err(req, err);
    return;
  }
  g_debug("GETATTR %s => size %" G_GINT64_FORMAT, node->display, (gint64)st.st_size);
  fuse_reply_attr(req, &st, fs->opts->timeout);
}
