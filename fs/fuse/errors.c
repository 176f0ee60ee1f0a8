/* errors.c: one way from an error to a FUSE reply.
 *
 * The chain reader (CHAIN_ERROR), the planner (PLANNER_ERROR) and the
 * backend put errno values in their GError codes, so the mapping needs no
 * table: a code in errno range from those domains is used as is; anything
 * else (GIO, libvirt wrappers, a code of 0) becomes EIO.  Data paths already carry -errno.
 *
 * Pure functions; safe from any thread.
 */
#include "virtsnapfs.h"

#include <errno.h>

#include "planner.h"

int
errors_to_errno(const GError *error)
{
  if (error == NULL)
    return EIO;
  if (error->domain == G_FILE_ERROR) {
    switch (error->code) {
    case G_FILE_ERROR_NOENT: return ENOENT;
    case G_FILE_ERROR_ACCES: return EACCES;
    case G_FILE_ERROR_PERM: return EPERM;
    case G_FILE_ERROR_NOMEM: return ENOMEM;
    /* The state directory is full or read-only: the journal of a plan
     * cannot be written, so nothing was changed; say why. */
    case G_FILE_ERROR_NOSPC: return ENOSPC;
    case G_FILE_ERROR_ROFS: return EROFS;
    default: return EIO;
    }
  }
  /* CHAIN_ERROR, PLANNER_ERROR and BACKEND_ERROR carry errno codes. */
  gboolean errno_domain = error->domain == CHAIN_ERROR || error->domain == PLANNER_ERROR ||
                          error->domain == BACKEND_ERROR;
  if (errno_domain && error->code > 0 && error->code < 4096)
    return error->code;
  return EIO;
}

void
errors_reply_gerror(fuse_req_t req, const GError *error)
{
  fuse_reply_err(req, errors_to_errno(error));
}

void
errors_reply_errno(fuse_req_t req, int err)
{
  if (err < 0)
    err = -err;
  if (err == 0)
    err = EIO;
  fuse_reply_err(req, err);
}
