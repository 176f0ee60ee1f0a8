/* ops.c: the FUSE low-level operations: the table, init, and the
 * operations that read metadata (lookup, getattr, readdir, statfs).
 *
 * Thread model
 * ------------
 * - The FUSE session loop runs in its own thread (main.c) with
 *   fuse_session_loop_mt: up to -o threads=N workers, each with a cloned
 *   /dev/fuse descriptor.  Every operation here runs on one of them, many
 *   at once, and may block (opening a chain, freezing a domain).
 * - The main thread runs a GMainLoop: signals, and the invalidations that
 *   follow a model change (invalidate.c).  Kernel notifications are sent
 *   from there and never from a worker, so a worker never waits for the
 *   kernel while the kernel waits for it.
 * - The backend runs libvirt's event loop in a thread of its own and calls
 *   invalidate_on_change() from it; it hands the work to the main loop.
 *
 * State: each operation takes a reference to the current BackendModel of
 * its node's host (hosts_node_model(), never blocks) and answers from that
 * immutable picture, so one request sees one consistent model.  The root
 * of a mount of several hosts lists the hosts (fs->hosts, fixed) and has
 * no model; each host's directory lists its domains as the root of a
 * one-host mount does.  The tree (tree.c) only maps inode numbers to
 * ([host,] domain, point, file); it has its own lock.
 * Open files own everything their reads need (ops-read.c): the read path
 * takes no global lock.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>
#include <sys/statvfs.h>

static Virtsnapfs *
req_fs(fuse_req_t req)
{
  return fuse_req_userdata(req);
}

static void
ops_init(void *userdata, struct fuse_conn_info *conn)
{
  Virtsnapfs *fs = userdata;

  /* Reads reply with descriptors of image layers: let the kernel splice
   * them into the FUSE device instead of copying through user space
   * (SPLICE_WRITE; SPLICE_MOVE lets it take the pages when it can).
   * SPLICE_READ is left off: it splices *requests* from the device, which
   * only pays for large WRITE payloads; for this read-only filesystem it
   * costs one more syscall per request (measured with strace). */
  if (!fs->opts->no_splice) {
    unsigned want = FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
    conn->want |= conn->capable & want;
    conn->want &= ~(unsigned)FUSE_CAP_SPLICE_READ;
    fs->splice = (conn->capable & FUSE_CAP_SPLICE_WRITE) != 0;
  }
  if (conn->capable & FUSE_CAP_ASYNC_READ)
    conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
    conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  /* Nothing is ever written through the mount. */
  conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
  /* The kernel offers its readahead window and only accepts less; main.c
   * widens the window through the mount's bdi after mounting.  Nothing is
   * written, so max_write only serves to bound read requests: libfuse
   * derives max_pages from it (see VIRTSNAPFS_MAX_READ). */
  conn->max_write = VIRTSNAPFS_MAX_READ;
  conn->max_background = 64;
  conn->time_gran = 1;

  g_debug("INIT proto %u.%u capable=0x%x want=0x%x max_readahead=%u splice=%s",
          conn->proto_major, conn->proto_minor, conn->capable, conn->want,
          conn->max_readahead, fs->splice ? "yes" : "no");
}

static void
ops_destroy(void *userdata)
{
  g_debug("DESTROY");
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

  case TREE_DOMAIN: {
    BackendDomain *dom = tree_node_domain(node, model);
    if (dom == NULL)
      return FALSE;
    /* Writable by the owner: mkdir, rmdir and rename happen here. */
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2 + 1 + dom->snapshots->len;
    set_time(st, domain_mtime(fs, dom), 0);
    return TRUE;
  }

  case TREE_POINT: {
    BackendDomain *dom = tree_node_domain(node, model);
    if (dom == NULL)
      return FALSE;
    /* Writable by the owner: `rm -r` unlinks the files of a snapshot, and
     * `mv D/NAME D/@now` renames into @now (a revert). */
    st->st_mode = S_IFDIR | 0755;
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
    if (!info_cache_get(host->info, disk, &model->policy, live,
                        &info, &error)) {
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

static void
ops_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  Virtsnapfs *fs = req_fs(req);
  g_autoptr(TreeNode) pnode = tree_get(fs->tree, parent);

  if (pnode == NULL) {
    fuse_reply_err(req, ESTALE);
    return;
  }
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

static void
ops_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
  forget_one(req_fs(req), ino, nlookup);
  fuse_reply_none(req);
}

static void
ops_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
  Virtsnapfs *fs = req_fs(req);
  for (size_t i = 0; i < count; i++)
    forget_one(fs, forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

static void
ops_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = req_fs(req);
  g_autoptr(TreeNode) node = tree_get(fs->tree, ino);
  struct stat st;
  int err;

  if (node == NULL) {
    fuse_reply_err(req, ESTALE);
    return;
  }
  g_autoptr(BackendModel) model = hosts_node_model(fs, node);
  if (!ops_stat(fs, node, model, &st, &err)) {
    g_debug("GETATTR %s => %s", node->display, g_strerror(err));
    fuse_reply_err(req, err);
    return;
  }
  g_debug("GETATTR %s => size %" G_GINT64_FORMAT, node->display, (gint64)st.st_size);
  fuse_reply_attr(req, &st, fs->opts->timeout);
}

/* ------------------------------------------------------------------ */
/* Directories: the listing is taken at opendir from one model.        */

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

static void
ops_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = req_fs(req);
  g_autoptr(TreeNode) node = tree_get(fs->tree, ino);
  Tree *tree = fs->tree;

  if (node == NULL) {
    fuse_reply_err(req, ESTALE);
    return;
  }
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

static void
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

static void
ops_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  g_array_unref((GArray *)(uintptr_t)fi->fh);
  fuse_reply_err(req, 0);
}

/* ------------------------------------------------------------------ */
/* statfs, access.                                                      */

static void
ops_statfs(fuse_req_t req, fuse_ino_t ino)
{
  struct statvfs sv = { 0 };
  sv.f_bsize = 4096;
  sv.f_frsize = 512;
  sv.f_namemax = 255;
  sv.f_flag = ST_NOSUID | ST_NODEV;
  fuse_reply_statfs(req, &sv);
}

static void
ops_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
  Virtsnapfs *fs = req_fs(req);
  g_autoptr(TreeNode) node = tree_get(fs->tree, ino);

  if (node == NULL) {
    fuse_reply_err(req, ESTALE);
    return;
  }
  /* Nothing is writable; files are not executable.  (With
   * default_permissions the kernel checks modes itself and never asks.) */
  if (mask & W_OK) {
    fuse_reply_err(req, EACCES);
    return;
  }
  if ((mask & X_OK) && node->kind != TREE_ROOT && node->kind != TREE_DOMAIN &&
      node->kind != TREE_POINT) {
    fuse_reply_err(req, EACCES);
    return;
  }
  fuse_reply_err(req, 0);
}

const struct fuse_lowlevel_ops ops_table = {
  .init = ops_init,
  .destroy = ops_destroy,
  .lookup = ops_lookup,
  .forget = ops_forget,
  .forget_multi = ops_forget_multi,
  .getattr = ops_getattr,
  .opendir = ops_opendir,
  .readdir = ops_readdir,
  .releasedir = ops_releasedir,
  .statfs = ops_statfs,
  .access = ops_access,
  /* ops-read.c */
  .open = ops_open,
  .read = ops_read,
  .lseek = ops_lseek,
  .release = ops_release,
  /* xattr.c */
  .getxattr = xattr_getxattr,
  .listxattr = xattr_listxattr,
  /* ops-change.c: everything that would change the tree */
  .mkdir = ops_mkdir,
  .rmdir = ops_rmdir,
  .unlink = ops_unlink,
  .rename = ops_rename,
  .setattr = ops_setattr,
  .mknod = ops_mknod,
  .create = ops_create,
  .symlink = ops_symlink,
  .link = ops_link,
  .write = ops_write,
  .setxattr = ops_setxattr,
  .removexattr = ops_removexattr,
  .fallocate = ops_fallocate,
};
