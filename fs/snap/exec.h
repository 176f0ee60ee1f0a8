/* exec.h: what the steps of a plan share, and a map of them.
 *
 * Each step first looks at the real state (backing pointers read from the
 * image headers, the live or inactive domain XML, libvirt's snapshot
 * metadata, libvirt's block job on the disk) and does only what is still
 * missing, so that running a step again after a crash, at any point inside
 * it, finishes it.  The reads every step starts with are the small inline
 * helpers below; every chain they follow is walked under the image policy
 * (guard.h), which the executor checks against the whole step first.
 *
 *   steps-image.c  qemu-img on image files (commit, pull, rebase-unsafe,
 *                  create-overlay) and delete-file
 *   steps-meta.c   libvirt metadata: set-active, redefine, delete-snapshot,
 *                  set-current, and the inactive XML after a plan
 *   steps-job.c    block jobs (commit, active-commit, pull), or the same
 *                  merge offline when the domain stopped running
 *   executor.c     the loop over a journal's steps (snap-private.h)
 *
 * Thread model: a step runs on the thread of the operation (or of
 * recovery), in the domain's turn.
 */
#pragma once

#include <errno.h>
#include <unistd.h>

#include "guard.h"
#include "policy.h"

G_BEGIN_DECLS

/* The context of a running plan. */
typedef struct {
  Snap *snap;
  Backend *backend;
  virConnectPtr conn;
  virDomainPtr dom;
  const char *name;
  char uuid[VIR_UUID_STRING_BUFLEN];
  SnapJournal *journal;
  SnapGuard *guard;             /* the image policy, fresh for each step */
  gboolean stop_in_job;         /* test hook: stop once the job started */
} Exec;

static inline gboolean
file_exists(const char *path)
{
  return access(path, F_OK) == 0;
}

static inline gboolean
same_file(const char *a, const char *b)
{
  if (!a || !b)
    return a == b;
  return backend_path_same(a, b);
}

/* The domain's XML: live (0) or VIR_DOMAIN_XML_INACTIVE. */
static inline DomXmlDomain *
read_xml(Exec *x, unsigned int flags, GError **error)
{
  return backend_read_domain(x->dom, flags, error);
}

/* Sets *running to whether the domain runs; FALSE if libvirt cannot say. */
static inline gboolean
get_running(Exec *x, gboolean *running, GError **error)
{
  return backend_domain_state(x->dom, NULL, running, error);
}

static inline DomXmlDisk *
live_disk(DomXmlDomain *live, Exec *x, const char *target, GError **error)
{
  DomXmlDisk *disk = domxml_domain_find_disk(live, target);
  if (!disk)
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s has no disk %s any more", x->name, target);
  return disk;
}

/* TRUE when path is the source or a layer of the running chain of disk. */
static inline gboolean
in_live_chain(const DomXmlDisk *disk, const char *path)
{
  if (same_file(disk->source, path))
    return TRUE;
  for (guint i = 0; disk->backing && i < disk->backing->len; i++)
    if (same_file(((DomXmlLayer *)g_ptr_array_index(disk->backing, i))->path, path))
      return TRUE;
  return FALSE;
}

/* The image directly below the top of a live disk, or NULL. */
static inline const char *
live_backing(const DomXmlDisk *disk)
{
  if (!disk->backing || disk->backing->len == 0)
    return NULL;
  return ((DomXmlLayer *)g_ptr_array_index(disk->backing, 0))->path;
}

/* The backing file of image as a canonical path, NULL when it has none;
 * image must pass the policy (its backing file is named, not opened). */
static inline gboolean
read_backing(Exec *x, const char *image, ChainFormat format, char **backing, GError **error)
{
  *backing = NULL;
  if (format != CHAIN_FORMAT_QCOW2)
    return TRUE;
  g_auto(ChainWalk) walk = {0};
  if (!snap_guard_chain(x->guard, image, format, NULL, 1, &walk, error))
    return FALSE;
  *backing = walk.rest ? backend_path_canonical(walk.rest) : NULL;
  return TRUE;
}

/* ------------------------------------------------------------------ */
/* steps-image.c */

gboolean step_commit_offline(Exec *x, const PlanStep *step, GError **error);
gboolean step_pull_offline(Exec *x, const PlanStep *step, GError **error);
gboolean step_rebase_unsafe(Exec *x, const PlanStep *step, GError **error);
gboolean step_create_overlay(Exec *x, const PlanStep *step, GError **error);
gboolean step_delete_file(Exec *x, const PlanStep *step, GError **error);

/* ------------------------------------------------------------------ */
/* steps-meta.c */

gboolean step_set_active(Exec *x, const PlanStep *step, GError **error);
gboolean step_redefine(Exec *x, const PlanStep *step, GError **error);
gboolean step_delete_snapshot(Exec *x, const PlanStep *step, GError **error);
gboolean step_set_current(Exec *x, const PlanStep *step, GError **error);
/* After the last step: drops a shut-off domain's stale <backingStore>
 * chains from its inactive XML, so that libvirt reads the files again. */
gboolean steps_tidy_inactive_xml(Exec *x, GError **error);

/* ------------------------------------------------------------------ */
/* steps-job.c */

/* A block job step (commit, active-commit, pull): through libvirt while
 * the domain runs, offline with qemu-img when it does not any more. */
gboolean step_block_job(Exec *x, const PlanStep *step, GError **error);

G_END_DECLS
