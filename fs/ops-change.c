/* ops-change.c: every FUSE operation that would change the tree.
 *
 * DESIGN.md 3 gives mkdir (take a snapshot), rmdir (delete one) and rename
 * (rename, or revert with D/@now) a meaning; they need the plan executor
 * of the backend and are refused with EPERM until it exists, with one log
 * line each so the user sees why.  Everything else that writes (files'
 * data, modes, sizes, links, xattrs) is refused for good: data files have
 * no write bits and the tree is a view of libvirt.
 *
 * Thread model: FUSE workers; no state.
 */
#include "virtsnapfs.h"

#include <errno.h>

static const char *
parent_name(fuse_req_t req, fuse_ino_t parent, TreeNode **out)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  *out = tree_get(fs->tree, parent);
  return *out ? (*out)->display : "?";
}

static void
refuse_change(fuse_req_t req, const char *what, fuse_ino_t parent, const char *name)
{
  g_autoptr(TreeNode) node = NULL;
  const char *where = parent_name(req, parent, &node);
  g_message("%s %s/%s: changing snapshots through the mount is not supported yet (EPERM)",
            what, where, name);
  fuse_reply_err(req, EPERM);
}

void
ops_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
  /* TODO(issue: snapshot operations): D/NAME -> backend snapshot create. */
  refuse_change(req, "mkdir", parent, name);
}

void
ops_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  /* TODO(issue: snapshot operations): D/NAME -> delete plan. */
  refuse_change(req, "rmdir", parent, name);
}

void
ops_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  /* Later: accepted inside a snapshot directory as part of `rm -r`. */
  refuse_change(req, "unlink", parent, name);
}

void
ops_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
           const char *newname, unsigned int flags)
{
  /* TODO(issue: snapshot operations): rename, and revert onto @now. */
  refuse_change(req, "rename", parent, name);
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
