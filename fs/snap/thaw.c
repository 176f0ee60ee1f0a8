/* thaw.c: committing @now overlays back, and finishing the freezes a
 * crash or a failed thaw left behind.
 *
 * A freeze record (state.c) names, per disk, the frozen image and the
 * temporary overlay on top of it.  Thawing it commits each overlay back:
 * active commit and pivot while the domain runs (blockjob.c), `qemu-img
 * commit -t writethrough` and a redefinition of the inactive XML
 * otherwise; then the overlays are deleted, and the record last.  So
 * after a crash a record names overlays that may exist and may hold guest
 * writes, and snap_freeze_repair() finishes them without losing one: an
 * overlay is deleted only once no disk of the domain reads from it.
 *
 * A record whose thaw failed (an image was locked, the disk was full)
 * stays and is retried at the domain's next freeze, thaw or snapshot
 * operation, and at the next start; a snapshot operation on a domain that
 * still runs on such an overlay is EBUSY (snap_freeze_settle()).
 *
 * The image policy (guard.h) is checked before a commit (the overlay's
 * chain, read again: its header may have changed since the freeze) and
 * before an overlay is deleted.
 *
 * Thread model: callers hold the domain's turn (queue.c), except
 * snap_freeze_repair(snap, NULL), which takes each domain's turn itself.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "guard.h"

/* TRUE when path is below the disk's top image (not the top itself). */
static gboolean
in_chain_below(SnapGuard *guard, const DomXmlDisk *d, const char *path)
{
  if (d->backing) {
    for (guint i = 0; i < d->backing->len; i++)
      if (backend_path_same(((DomXmlLayer *)g_ptr_array_index(d->backing, i))->path, path))
        return TRUE;
    if (d->backing_complete)
      return FALSE;
  }
  /* No chain from libvirt (inactive XML): follow the headers, as far as
   * the policy lets them lead. */
  g_auto(ChainWalk) walk = {0};
  g_autoptr(GError) error = NULL;
  snap_guard_chain(guard, d->source, d->format, NULL, 0, &walk, &error);
  for (guint i = 1; i < walk.layers->len; i++)
    if (backend_path_same(chain_layer_path(walk.layers->pdata[i]), path))
      return TRUE;
  return FALSE;
}

/* Commits one overlay back into its frozen image, which the disk reads
 * again; the overlay stays until delete_overlay(). */
static gboolean
thaw_disk(Snap *snap, virConnectPtr conn, virDomainPtr dom, const SnapFreezeDisk *disk,
          GError **error)
{
  const char *name = virDomainGetName(dom);
  gboolean active;
  if (!backend_domain_state(dom, NULL, &active, error))
    return FALSE;
  g_autoptr(DomXmlDomain) now = backend_read_domain(dom, 0, error);
  if (!now)
    return FALSE;
  if (!active)
    domxml_domain_forget_backing(now);
  DomXmlDisk *d = domxml_domain_find_disk(now, disk->target);
  gboolean on_top = d && (strcmp(d->source, disk->overlay) == 0 ||
                          backend_path_same(d->source, disk->overlay));
  g_autoptr(SnapGuard) guard = snap_guard_new(snap, error);
  if (!guard)
    return FALSE;
  /* The commit writes into what the overlay's header names now. */
  if (on_top && !snap_guard_chain(guard, disk->overlay, CHAIN_FORMAT_QCOW2, NULL, 0, NULL,
                                  error)) {
    g_prefix_error(error, "domain %s disk %s: refusing to commit overlay %s: ", name,
                   disk->target, disk->overlay);
    return FALSE;
  }

  if (on_top && active) {
    if (!backend_job_active_commit(snap->backend, dom, disk->target, error))
      return FALSE;
    g_autoptr(DomXmlDomain) after = backend_read_domain(dom, 0, error);
    if (!after)
      return FALSE;
    DomXmlDisk *a = domxml_domain_find_disk(after, disk->target);
    if (!a || !backend_path_same(a->source, disk->frozen)) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the pivot the disk reads "
                  "%s, not %s", name, disk->target, a ? a->source : "nothing", disk->frozen);
      return FALSE;
    }
  } else if (on_top) {
    if (!backend_qemu_img_commit(snap->backend, disk->overlay, CHAIN_FORMAT_QCOW2, NULL, error))
      return FALSE;
    g_autofree char *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    if (!xml) {
      backend_set_virt_error(error, "domain %s: XML", name);
      return FALSE;
    }
    g_autofree char *fixed =
        domxml_set_disk_source(xml, disk->target, disk->frozen, disk->frozen_format, error);
    if (!fixed)
      return FALSE;
    g_debug("virDomainDefineXML(%s) with disk %s on %s", name, disk->target, disk->frozen);
    g_autoptr(BackendVirDomain) defined = virDomainDefineXML(conn, fixed);
    if (!defined) {
      backend_set_virt_error(error, "domain %s: redefine disk %s on %s", name, disk->target,
                             disk->frozen);
      return FALSE;
    }
  } else if (!d && g_file_test(disk->overlay, G_FILE_TEST_EXISTS)) {
    /* Whether it still holds writes its image lacks cannot be told. */
    g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s has no disk %s any more; overlay %s "
                "left in place", name, disk->target, disk->overlay);
    return FALSE;
  } else if (d && in_chain_below(guard, d, disk->overlay)) {
    g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s disk %s: overlay %s is no longer the "
                "active image (a snapshot was taken on top of it); left in place", name,
                disk->target, disk->overlay);
    return FALSE;
  }
  g_debug("domain %s disk %s: overlay %s committed", name, disk->target, disk->overlay);
  return TRUE;
}

/* Deletes an overlay that nothing reads from any more (or that never came
 * to be). */
static gboolean
delete_overlay(Snap *snap, const SnapFreezeDisk *disk, GError **error)
{
  g_autoptr(SnapGuard) guard = snap_guard_new(snap, error);
  if (!guard || !snap_guard_place(guard, disk->overlay, error))
    return FALSE;
  if (unlink(disk->overlay) < 0 && errno != ENOENT) {
    int err = errno;
    g_set_error(error, BACKEND_ERROR, err, "cannot delete overlay %s: %s", disk->overlay,
                g_strerror(err));
    return FALSE;
  }
  g_debug("disk %s: overlay %s deleted", disk->target, disk->overlay);
  return TRUE;
}

/* Keeps the first error of several in *error and logs the others. */
static void
keep_first_error(gboolean *ok, GError **error, GError *local)
{
  if (*ok)
    g_propagate_error(error, local);
  else {
    g_warning("%s", local->message);
    g_error_free(local);
  }
  *ok = FALSE;
}

/* The overlays are deleted after the model has been refreshed: until
 * then it names them as the active images, and a stat or open of @now
 * meanwhile would find them gone. */
gboolean
snap_thaw_record(Snap *snap, SnapFreezeRecord *record, GError **error)
{
  g_autoptr(BackendVirConnect) conn = backend_get_connection(snap->backend, error);
  if (!conn)
    return FALSE;
  g_autoptr(BackendVirDomain) dom = backend_lookup_domain(conn, record->domain, record->uuid, error);
  if (!dom)
    return FALSE;
  gboolean ok = TRUE;
  g_autoptr(GPtrArray) thawed = g_ptr_array_new();
  for (guint i = 0; i < record->disks->len; i++) {
    SnapFreezeDisk *disk = g_ptr_array_index(record->disks, i);
    GError *local = NULL;
    if (thaw_disk(snap, conn, dom, disk, &local))
      g_ptr_array_add(thawed, disk);
    else
      keep_first_error(&ok, error, local);
  }
  if (thawed->len > 0)
    snap_refresh(snap, G_LOG_LEVEL_DEBUG, "a freeze change");
  for (guint i = 0; i < thawed->len; i++) {
    GError *local = NULL;
    if (!delete_overlay(snap, g_ptr_array_index(thawed, i), &local))
      keep_first_error(&ok, error, local);
  }
  return ok && snap_freeze_record_remove(record, error);
}

/* TRUE when record belongs to an open freeze of this process. */
static gboolean
record_is_live(Snap *snap, const SnapFreezeRecord *record)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
  SnapFreeze *freeze = g_hash_table_lookup(snap->freezes, record->domain);
  return freeze && freeze->record && g_strcmp0(freeze->record->path, record->path) == 0;
}

gboolean
snap_freeze_repair(Snap *snap, const char *domain)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) records = snap_freeze_records_load(snap->state_dir, &error);
  if (!records) {
    g_warning("cannot read freeze records in %s: %s", snap->state_dir, error->message);
    return FALSE;
  }
  gboolean all_done = TRUE;
  for (guint i = 0; i < records->len; i++) {
    SnapFreezeRecord *record = g_ptr_array_index(records, i);
    if (domain && g_strcmp0(record->domain, domain) != 0)
      continue;
    g_autoptr(SnapTurn) turn = domain ? NULL : snap_queue_wait(snap->queue, record->domain);
    if (record_is_live(snap, record))
      continue;
    g_message("domain %s: finishing an @now freeze left by an earlier run or a failed thaw",
              record->domain);
    g_autoptr(GError) local = NULL;
    if (!snap_thaw_record(snap, record, &local)) {
      g_warning("domain %s: freeze repair failed, record %s kept: %s", record->domain,
                record->path, local->message);
      all_done = FALSE;
    }
  }
  return all_done;
}

gboolean
snap_freeze_settle(Snap *snap, const char *domain, const char *what, GError **error)
{
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
    if (g_hash_table_contains(snap->freezes, domain)) {
      g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s: cannot %s while @now is open", domain,
                  what);
      return FALSE;
    }
  }
  if (snap_freeze_repair(snap, domain))
    return TRUE;
  g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s: a temporary @now overlay whose thaw "
              "failed is still the active image; it is tried again at the next operation",
              domain);
  return FALSE;
}
