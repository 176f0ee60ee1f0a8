/* ops.c: the FUSE low-level operations table, init, and the operations
 * that need no node's content (statfs, access).
 *
 * Thread model
 * ------------
 * - The FUSE session loop runs in its own thread (main.c) with
 *   fuse_session_loop_mt: up to -o threads=N workers, each with a cloned
 *   /dev/fuse descriptor.  Every operation runs on one of them, many at
 *   once, and may block (opening a chain, freezing a domain).
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
 * Open files own everything their reads need (ops-open.c, ops-read.c):
 * the read path takes no global lock.
 *
 * The operations live by topic: ops-entry.c (lookup, forget, getattr),
 * ops-dir.c (directories), ops-open.c and ops-read.c (files), xattr.c,
 * ops-change.c (everything that would change the tree).
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <sys/statvfs.h>

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
  g_autoptr(TreeNode) node = ops_node_get(req, ino);
  if (node == NULL)
    return;
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
  .statfs = ops_statfs,
  .access = ops_access,
  /* ops-entry.c */
  .lookup = ops_lookup,
  .forget = ops_forget,
  .forget_multi = ops_forget_multi,
  .getattr = ops_getattr,
  /* ops-dir.c */
  .opendir = ops_opendir,
  .readdir = ops_readdir,
  .releasedir = ops_releasedir,
  /* ops-open.c */
  .open = ops_open,
  .release = ops_release,
  /* ops-read.c */
  .read = ops_read,
  .lseek = ops_lseek,
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
