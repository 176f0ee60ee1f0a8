/* ops-change.c: every FUSE operation that would change the tree.
 *
 * Three of them have a meaning, carried out by fs/snap's snapshot
 * operations (snap.h "Snapshot operations"):
 *   mkdir D/NAME          snap_create
 *   rmdir D/NAME          snap_delete; unlink of the files in
 *                         D/NAME is accepted and does nothing, so `rm -r`
 *                         works: the snapshot goes when its directory goes
 *   rename D/NAME D/NEW   snap_rename
 *   rename D/NAME D/@now, or D/NAME D/@now/NAME (what mv sends when the
 *                         target is a directory): snap_revert
 * On a mount of several hosts D is HOST/DOMAIN and each call goes to
 * that host's backend; a rename across hosts is EXDEV as one across
 * domains, and the root and host directories refuse mkdir and rmdir
 * (EPERM) as the root of a one-host mount does.
 * Only the mount owner or root may call them (EACCES otherwise).  Each
 * call logs one message-level line when it ends: a refusal here with its
 * reason, a success in the backend with what was done (for a delete the
 * plan it chose, why, and the bytes each direction would move); the
 * start of a call is a debug line.
 * rmdir of @now is EBUSY: the present cannot be deleted, only left by a
 * revert.  Everything else that writes (files' data, modes, sizes,
 * links, xattrs, new files) is refused for good with EPERM.
 *
 * Thread model: FUSE workers.  A change blocks its worker until the plan
 * has finished (minutes); the backend runs one operation per domain at a
 * time, and reads never wait for it (they use the published model and
 * their own open chains).  On return the published model shows the
 * result, and invalidate.c tells the kernel about entries that went away
 * from the main loop (in the domain of a change in flight: after its
 * reply, see invalidate_domain_busy()).  The kernel itself drops the
 * dentry of an rmdir and moves the dentry of a rename; tree_rename_point() makes the moved
 * inode stand for the new name.  A revert moves D/NAME onto D/@now in the
 * kernel's cache, which is wrong (NAME stays, @now is the present): those
 * entries are invalidated after the reply, from this worker, once the
 * kernel has finished the rename and released the directory locks.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* A directory as log lines show it, before "/NAME": the root is "". */
static const char *
dir_display(const TreeNode *dir)
{
  return dir->kind == TREE_ROOT ? "" : dir->display;
}

/* The mount owner or root may change snapshots; others get EACCES.  With
 * default_permissions the kernel already refuses callers without write
 * permission on the directory; this also covers root-owned mounts seen
 * by other users through allow_other and any mode change to come. */
static gboolean
caller_allowed(fuse_req_t req, Virtsnapfs *fs, const char *what, const char *display,
               const char *name)
{
  const struct fuse_ctx *ctx = fuse_req_ctx(req);
  if (ctx->uid == 0 || ctx->uid == fs->uid)
    return TRUE;
  g_message("%s %s/%s by uid %u: only the mount owner (uid %u) or root changes snapshots "
            "(EACCES)", what, display, name, (unsigned)ctx->uid, (unsigned)fs->uid);
  fuse_reply_err(req, EACCES);
  return FALSE;
}

/* The snapshot name for an entry in a domain directory, or NULL with a
 * log line (EINVAL: not an entry names_escape() can produce). */
static char *
entry_to_snapshot(const char *what, const char *display, const char *name)
{
  char *sname = names_unescape(name);
  if (sname == NULL)
    g_message("%s %s/%s: not a snapshot entry name (a leading '.' or '@', or a '%%' escape "
              "other than %%2F %%25 %%2E %%40) (EINVAL)", what, display, name);
  return sname;
}

static void
reply_failure(fuse_req_t req, const char *what, const char *display, const char *name,
              const GError *error)
{
  int err = errors_to_errno(error);
  g_message("%s %s/%s: %s (%s)", what, display, name, error->message, g_strerror(err));
  fuse_reply_err(req, err);
}

/* How mkdir, rmdir and rename of D/NAME refuse what they cannot take. */
typedef struct {
  const char *what;       /* for log lines */
  const char *not_domain; /* why the parent must be a domain directory (EPERM) */
  int now_errno;          /* NAME is @now */
  const char *now_why;    /* the log line's reason then, or NULL */
  int bad_name_errno;     /* NAME is not a snapshot entry (logged) */
} ChangeKind;

static const ChangeKind change_mkdir = {
  "mkdir", "snapshots are made in a domain directory", EEXIST, NULL, EINVAL,
};
/* Not in the root or a host (domains are libvirt's to remove), nor inside
 * a point. */
static const ChangeKind change_rmdir = {
  "rmdir", "only snapshot directories can be removed", EBUSY,
  "the present cannot be deleted (EBUSY)", ENOENT,
};
static const ChangeKind change_rename = {
  "rename", "only snapshot directories can be renamed", EBUSY,
  "the present cannot be renamed (EBUSY)", ENOENT,
};

/* The node of parent, a new reference, when it is a domain directory;
 * otherwise NULL after replying (ESTALE, or EPERM with a log line). */
static TreeNode *
change_parent(fuse_req_t req, fuse_ino_t parent, const ChangeKind *kind, const char *name)
{
  g_autoptr(TreeNode) pnode = ops_node_get(req, parent);
  if (pnode == NULL)
    return NULL;
  if (pnode->kind != TREE_DOMAIN) {
    g_message("%s %s/%s: %s (EPERM)", kind->what, dir_display(pnode), name, kind->not_domain);
    fuse_reply_err(req, EPERM);
    return NULL;
  }
  return g_steal_pointer(&pnode);
}

/* The snapshot that NAME in the domain directory pnode stands for
 * (g_free), or NULL after replying: the caller may not change snapshots,
 * NAME is @now, or NAME is not a snapshot entry. */
static char *
change_snapshot(fuse_req_t req, Virtsnapfs *fs, const TreeNode *pnode, const ChangeKind *kind,
                const char *name)
{
  if (!caller_allowed(req, fs, kind->what, dir_display(pnode), name))
    return NULL;
  if (g_str_equal(name, VIRTSNAPFS_NOW)) {
    if (kind->now_why != NULL)
      g_message("%s %s/%s: %s", kind->what, dir_display(pnode), name, kind->now_why);
    fuse_reply_err(req, kind->now_errno);
    return NULL;
  }
  char *sname = entry_to_snapshot(kind->what, dir_display(pnode), name);
  if (sname == NULL)
    fuse_reply_err(req, kind->bad_name_errno);
  return sname;
}

void
ops_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) pnode = change_parent(req, parent, &change_mkdir, name);
  if (pnode == NULL)
    return;
  g_autofree char *sname = change_snapshot(req, fs, pnode, &change_mkdir, name);
  if (sname == NULL)
    return;
  g_autoptr(GError) error = NULL;
  VirtsnapfsHost *host = hosts_of_node(fs, pnode);
  g_debug("mkdir %s/%s: creating snapshot", dir_display(pnode), name);
  invalidate_domain_busy(fs, pnode->host, pnode->domain);
  if (!snap_create(host->snap, pnode->domain, sname, &error)) {
    reply_failure(req, "mkdir", dir_display(pnode), name, error);
  } else {
    /* The published model shows the new snapshot: answer as lookup does. */
    g_autoptr(BackendModel) model = backend_get_model(host->backend);
    ops_reply_entry(req, fs, model, pnode, name);
  }
  invalidate_domain_idle(fs, pnode->host, pnode->domain);
}

void
ops_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) pnode = change_parent(req, parent, &change_rmdir, name);
  if (pnode == NULL)
    return;
  g_autofree char *sname = change_snapshot(req, fs, pnode, &change_rmdir, name);
  if (sname == NULL)
    return;
  g_autoptr(GError) error = NULL;
  g_debug("rmdir %s/%s: deleting snapshot", dir_display(pnode), name);
  invalidate_domain_busy(fs, pnode->host, pnode->domain);
  if (!snap_delete(hosts_of_node(fs, pnode)->snap, pnode->domain, sname,
                               &error))
    reply_failure(req, "rmdir", dir_display(pnode), name, error);
  else
    fuse_reply_err(req, 0);
  invalidate_domain_idle(fs, pnode->host, pnode->domain);
}

void
ops_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) pnode = ops_node_get(req, parent);
  if (pnode == NULL)
    return;
  g_autoptr(BackendModel) model = hosts_node_model(fs, pnode);
  /* Part of `rm -r D/NAME`: accepted, nothing happens; rmdir deletes.
   * The files stay listed until then, which rm does not mind. */
  if (pnode->kind == TREE_POINT && pnode->point != NULL) {
    g_autofree char *target = NULL;
    gboolean known = g_str_equal(name, VIRTSNAPFS_SNAPSHOT_XML) ||
                     ((names_is_disk_file(name, VIRTSNAPFS_RAW_SUFFIX, &target) ||
                       names_is_disk_file(name, VIRTSNAPFS_DELTA_SUFFIX, &target)) &&
                      tree_find_disk(tree_node_disks(pnode, model), target) != NULL);
    if (!known) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (!caller_allowed(req, fs, "unlink", dir_display(pnode), name))
      return;
    g_debug("UNLINK %s/%s: accepted, the snapshot goes with its directory", dir_display(pnode),
            name);
    fuse_reply_err(req, 0);
    return;
  }
  g_message("unlink %s/%s: files are removed with their snapshot directory (EPERM)",
            dir_display(pnode), name);
  fuse_reply_err(req, EPERM);
}

/* After the reply to a revert: the kernel moved the dentry of the source
 * onto the target name; drop both names so the next lookups ask us. */
static void
revert_invalidate(Virtsnapfs *fs, fuse_ino_t domain_ino, fuse_ino_t newparent,
                  const char *name, const char *newname)
{
  int r = fuse_lowlevel_notify_inval_entry(fs->se, newparent, newname, strlen(newname));
  g_debug("INVAL entry %s in %" G_GUINT64_FORMAT " => %d", newname, (guint64)newparent, r);
  r = fuse_lowlevel_notify_inval_entry(fs->se, domain_ino, name, strlen(name));
  g_debug("INVAL entry %s in %" G_GUINT64_FORMAT " => %d", name, (guint64)domain_ino, r);
}

void
ops_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
           const char *newname, unsigned int flags)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) npnode = ops_node_get(req, newparent);
  if (npnode == NULL)
    return;
  g_autoptr(TreeNode) pnode = change_parent(req, parent, &change_rename, name);
  if (pnode == NULL)
    return;
  if (npnode->domain == NULL || !g_str_equal(npnode->domain, pnode->domain) ||
      g_strcmp0(npnode->host, pnode->host) != 0) {
    g_message("rename %s/%s to %s/%s: snapshots stay in their domain (EXDEV)",
              dir_display(pnode), name, dir_display(npnode), newname);
    fuse_reply_err(req, EXDEV);
    return;
  }
  if (flags & RENAME_EXCHANGE) {
    g_message("rename %s/%s: RENAME_EXCHANGE is not supported (EINVAL)", dir_display(pnode), name);
    fuse_reply_err(req, EINVAL);
    return;
  }
  g_autofree char *sname = change_snapshot(req, fs, pnode, &change_rename, name);
  if (sname == NULL)
    return;
  g_autoptr(GError) error = NULL;
  Snap *snap = hosts_of_node(fs, pnode)->snap;

  /* rename(D/NAME, D/@now), or rename(D/NAME, D/@now/NAME): revert. */
  gboolean to_now = npnode->kind == TREE_DOMAIN && g_str_equal(newname, VIRTSNAPFS_NOW);
  gboolean into_now = npnode->kind == TREE_POINT && npnode->point == NULL &&
                      g_str_equal(newname, name);
  if (to_now || into_now) {
    g_debug("rename %s/%s to %s/%s: reverting to snapshot %s", dir_display(pnode), name,
              dir_display(npnode), newname, sname);
    invalidate_domain_busy(fs, pnode->host, pnode->domain);
    gboolean ok = snap_revert(snap, pnode->domain, sname, FALSE, &error);
    if (!ok)
      reply_failure(req, "revert", dir_display(pnode), name, error);
    else
      fuse_reply_err(req, 0);
    invalidate_domain_idle(fs, pnode->host, pnode->domain);
    if (ok)
      revert_invalidate(fs, parent, newparent, name, newname);
    return;
  }
  if (npnode->kind != TREE_DOMAIN) {
    /* Into a snapshot directory: `mv D/NAME D/OTHER` sends this when
     * OTHER exists.  EPERM, not EEXIST: mv would answer EEXIST by
     * looking at D/OTHER/NAME and print a confusing message. */
    g_message("rename %s/%s to %s/%s: a snapshot is renamed within its domain directory "
              "(EPERM)", dir_display(pnode), name, dir_display(npnode), newname);
    fuse_reply_err(req, EPERM);
    return;
  }
  g_autofree char *new_sname = entry_to_snapshot("rename", dir_display(npnode), newname);
  if (new_sname == NULL) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  g_debug("rename %s/%s to %s", dir_display(pnode), name, newname);
  invalidate_domain_busy(fs, pnode->host, pnode->domain);
  if (!snap_rename(snap, pnode->domain, sname, new_sname, &error)) {
    reply_failure(req, "rename", dir_display(pnode), name, error);
  } else {
    /* Before the reply: the kernel's dentries follow the inode numbers. */
    tree_rename_point(fs->tree, pnode->host, pnode->domain, sname, new_sname);
    fuse_reply_err(req, 0);
  }
  invalidate_domain_idle(fs, pnode->host, pnode->domain);
}

/* The rest is refused without a log line: it is never going to work. */

void
ops_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
            struct fuse_file_info *fi)
{
  fuse_reply_err(req, EPERM);
}

void
ops_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
  fuse_reply_err(req, EPERM);
}

void
ops_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
           struct fuse_file_info *fi)
{
  fuse_reply_err(req, EPERM);
}

void
ops_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
  fuse_reply_err(req, EPERM);
}

void
ops_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
  fuse_reply_err(req, EPERM);
}

void
ops_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
          struct fuse_file_info *fi)
{
  /* No file is ever opened for writing. */
  fuse_reply_err(req, EBADF);
}

void
ops_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
             size_t size, int flags)
{
  fuse_reply_err(req, EPERM);
}

void
ops_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
  fuse_reply_err(req, EPERM);
}

void
ops_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
              struct fuse_file_info *fi)
{
  fuse_reply_err(req, EBADF);
}
