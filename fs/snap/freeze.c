/* freeze.c: @now: temporary overlays, shared per domain.
 *
 * Opening a file under @now freezes the domain's present without leaving
 * a named snapshot.  The first freeze of a domain creates an external
 * qcow2 overlay on every disk the tree shows (virDomainSnapshotCreateXML
 * with DISK_ONLY, NO_METADATA and ATOMIC; QUIESCE first when the domain
 * runs, retried without it when the guest agent does not answer).  The
 * guest then writes into the overlays, and the image that was active, now
 * frozen, is what @now reads.  libvirt does the same offline for a
 * shut-off domain: it creates the overlays with qemu-img and points the
 * inactive XML at them, so a start during the read writes into the
 * overlay too.  Further freezes share it; the last thaw commits the
 * overlays back (thaw.c).
 *
 * Overlays live beside the active image, named
 * "<active>.virtsnapfs-now-<microseconds>-<pid>": that directory is already
 * one the qemu process may use and one the image policy allows.  A disk on
 * a block device gets its overlay under STATE_DIR/now/ instead.  A freeze
 * record (state.c) is durable before the first overlay exists.
 *
 * The image policy (guard.h) is checked before a freeze creates anything:
 * every disk's chain and every overlay's place (a chain that fails makes
 * the open of @now EIO), and before a failed freeze deletes its overlays.
 * The frozen images of every record are allowed to the model's policy
 * (snap_freeze_policy_images()): a block device frozen for @now is no
 * longer named by libvirt while the domain runs on the overlay above it.
 *
 * Thread model: freezes and thaws block their caller and run in the
 * domain's turn (queue.c); Snap.freeze_lock guards the table of open
 * freezes (a leaf, also taken by the model_built hook).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "guard.h"

static void
freeze_free(SnapFreeze *freeze)
{
  if (!freeze)
    return;
  snap_freeze_record_free(freeze->record);
  g_ptr_array_unref(freeze->frozen);
  g_free(freeze);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SnapFreeze, freeze_free)

void
snap_freeze_init(Snap *snap)
{
  g_mutex_init(&snap->freeze_lock);
  snap->freezes = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
}

void
snap_freeze_clear(Snap *snap)
{
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, snap->freezes);
  while (g_hash_table_iter_next(&iter, NULL, &value))
    freeze_free(value);
  g_hash_table_unref(snap->freezes);
  g_mutex_clear(&snap->freeze_lock);
}

void
snap_freeze_mark_model(Snap *snap, BackendModel *model)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *domain = g_ptr_array_index(model->domains, i);
    domain->frozen = g_hash_table_contains(snap->freezes, domain->name);
  }
}

char **
snap_freeze_policy_images(Snap *snap)
{
  GStrvBuilder *builder = g_strv_builder_new();
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) records = snap_freeze_records_load(snap->state_dir, &error);
  if (!records)
    g_debug("freeze records: %s", error->message);
  for (guint i = 0; records && i < records->len; i++) {
    SnapFreezeRecord *record = g_ptr_array_index(records, i);
    for (guint j = 0; j < record->disks->len; j++) {
      SnapFreezeDisk *disk = g_ptr_array_index(record->disks, j);
      g_strv_builder_add(builder, disk->frozen);
    }
  }
  char **images = g_strv_builder_end(builder);
  g_strv_builder_unref(builder);
  return images;
}

static GPtrArray *
disks_copy(GPtrArray *disks)
{
  GPtrArray *copy = g_ptr_array_new_full(disks->len, (GDestroyNotify)backend_disk_free);
  for (guint i = 0; i < disks->len; i++)
    g_ptr_array_add(copy, backend_disk_copy(g_ptr_array_index(disks, i)));
  return copy;
}

static char *
overlay_path(Snap *snap, const char *uuid, const DomXmlDisk *disk, const char *tag)
{
  if (!disk->is_block)
    return g_strdup_printf("%s.virtsnapfs-now-%s", disk->source, tag);
  g_autofree char *dir = g_build_filename(snap->state_dir, "now", NULL);
  if (g_mkdir_with_parents(dir, 0700) < 0)
    g_warning("cannot create %s: %s", dir, g_strerror(errno));
  g_autofree char *name = g_strdup_printf("%s-%s-%s.qcow2", uuid, disk->target, tag);
  return g_build_filename(dir, name, NULL);
}

/* After a failed snapshot: deletes the overlays the domain does not use. */
static void
discard_overlays(Snap *snap, virDomainPtr dom, SnapFreezeRecord *record)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) now = backend_read_domain(dom, 0, &error);
  if (!now) {
    g_warning("domain %s: cannot check the overlays of a failed freeze (%s); left in place",
              record->domain, error->message);
    return;
  }
  for (guint i = 0; i < record->disks->len; i++) {
    SnapFreezeDisk *disk = g_ptr_array_index(record->disks, i);
    DomXmlDisk *d = domxml_domain_find_disk(now, disk->target);
    if (d && backend_path_same(d->source, disk->overlay)) {
      g_warning("domain %s disk %s: a failed freeze left overlay %s in use", record->domain,
                disk->target, disk->overlay);
      return;
    }
  }
  g_autoptr(SnapGuard) guard = snap_guard_new(snap, &error);
  if (!guard) {
    g_warning("domain %s: overlays of a failed freeze left in place: %s", record->domain,
              error->message);
    return;
  }
  for (guint i = 0; i < record->disks->len; i++) {
    SnapFreezeDisk *disk = g_ptr_array_index(record->disks, i);
    g_autoptr(GError) refused = NULL;
    if (!snap_guard_place(guard, disk->overlay, &refused))
      g_warning("domain %s: overlay %s of a failed freeze left in place: %s", record->domain,
                disk->overlay, refused->message);
    else if (unlink(disk->overlay) == 0)
      g_debug("removed overlay %s of a failed freeze", disk->overlay);
  }
  g_autoptr(GError) rm = NULL;
  if (!snap_freeze_record_remove(record, &rm))
    g_warning("domain %s: %s", record->domain, rm->message);
}

static SnapFreeze *
freeze_create(Snap *snap, const char *name, GError **error)
{
  g_autoptr(BackendVirConnect) conn = backend_get_connection(snap->backend, error);
  if (!conn)
    return NULL;
  g_autoptr(BackendVirDomain) dom = backend_lookup_domain(conn, name, NULL, error);
  if (!dom)
    return NULL;
  char uuid[VIR_UUID_STRING_BUFLEN];
  gboolean active;
  if (!backend_domain_state(dom, uuid, &active, error))
    return NULL;
  g_autoptr(DomXmlDomain) parsed = backend_read_domain(dom, 0, error);
  if (!parsed)
    return NULL;
  if (!active)
    domxml_domain_forget_backing(parsed);

  g_autoptr(SnapFreeze) freeze = g_new0(SnapFreeze, 1);
  freeze->refs = 1;
  freeze->frozen = g_ptr_array_new_with_free_func((GDestroyNotify)backend_disk_free);
  if (parsed->disks->len == 0) {
    g_message("domain %s: @now has no disk to freeze", name);
    return g_steal_pointer(&freeze);
  }

  g_autoptr(SnapFreezeRecord) record = snap_freeze_record_new(name, uuid);
  g_autofree char *tag = g_strdup_printf("%" G_GINT64_FORMAT "-%d", g_get_real_time(), getpid());
  g_autoptr(GArray) overlays = g_array_new(FALSE, FALSE, sizeof(DomXmlOverlay));
  g_autoptr(SnapGuard) guard = snap_guard_new(snap, error);
  if (!guard)
    return NULL;
  for (guint i = 0; i < parsed->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(parsed->disks, i);
    g_autofree char *overlay = overlay_path(snap, uuid, disk, tag);
    g_autofree ChainFormat *formats = backend_layer_formats(disk->backing, 0);
    if (!snap_guard_chain(guard, disk->source, disk->format, formats, 0, NULL, error) ||
        !snap_guard_place(guard, overlay, error)) {
      g_prefix_error(error, "domain %s disk %s: cannot freeze: ", name, disk->target);
      return NULL;
    }
    snap_freeze_record_add_disk(record, disk->target, disk->source, disk->format, overlay);
    SnapFreezeDisk *rdisk = g_ptr_array_index(record->disks, record->disks->len - 1);
    DomXmlOverlay o = {rdisk->target, rdisk->overlay};
    g_array_append_val(overlays, o);

    BackendDisk *frozen = g_new0(BackendDisk, 1);
    frozen->target = g_strdup(disk->target);
    frozen->image_path = g_strdup(disk->source);
    frozen->format = disk->format;
    frozen->backing_formats = backend_layer_formats(disk->backing, 0);
    g_ptr_array_add(freeze->frozen, frozen);
  }
  g_autoptr(GPtrArray) no_targets = g_ptr_array_new();
  for (guint i = 0; i < parsed->skipped->len; i++) {
    DomXmlSkipped *skipped = g_ptr_array_index(parsed->skipped, i);
    if (skipped->target)
      g_ptr_array_add(no_targets, skipped->target);
  }
  g_ptr_array_add(no_targets, NULL);

  if (!snap_freeze_record_write(record, snap->state_dir, error))
    return NULL;

  g_autofree char *xml =
      domxml_overlay_snapshot_xml(NULL, "virtsnapfs @now", (DomXmlOverlay *)overlays->data,
                                  overlays->len, (const char *const *)no_targets->pdata);
  unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA |
                       VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
  virDomainSnapshotPtr created = NULL;
  if (active) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|NO_METADATA|ATOMIC|QUIESCE)", name);
    created = virDomainSnapshotCreateXML(dom, xml, flags | VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
    if (!created)
      g_message("domain %s: no quiesced freeze (%s); freezing crash-consistent", name,
                virGetLastErrorMessage());
  }
  if (!created) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|NO_METADATA|ATOMIC)", name);
    created = virDomainSnapshotCreateXML(dom, xml, flags);
  }
  if (!created) {
    backend_set_virt_error(error, "domain %s: cannot freeze", name);
    discard_overlays(snap, dom, record);
    return NULL;
  }
  virDomainSnapshotFree(created);
  g_message("domain %s: frozen for @now (%u disks, %s)", name, record->disks->len,
            active ? "running" : "shut off");
  freeze->record = g_steal_pointer(&record);
  return g_steal_pointer(&freeze);
}

GPtrArray *
snap_freeze(Snap *snap, const char *domain, GError **error)
{
  g_autoptr(SnapTurn) turn = snap_queue_wait(snap->queue, domain);
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
    SnapFreeze *freeze = g_hash_table_lookup(snap->freezes, domain);
    if (freeze) {
      freeze->refs++;
      return disks_copy(freeze->frozen);
    }
  }
  /* A freeze whose thaw failed earlier is finished first when it can be;
   * when it cannot, the new overlay simply stacks on the old one, and the
   * old record is tried again after this thaw. */
  snap_freeze_repair(snap, domain);
  SnapFreeze *freeze = freeze_create(snap, domain, error);
  if (!freeze)
    return NULL;
  GPtrArray *disks = disks_copy(freeze->frozen);
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
    g_hash_table_insert(snap->freezes, g_strdup(domain), freeze);
  }
  snap_refresh(snap, G_LOG_LEVEL_DEBUG, "a freeze change");
  return disks;
}

void
snap_thaw(Snap *snap, const char *domain)
{
  g_autoptr(SnapTurn) turn = snap_queue_wait(snap->queue, domain);
  SnapFreeze *freeze;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
    freeze = g_hash_table_lookup(snap->freezes, domain);
    if (!freeze) {
      g_warning("domain %s: thaw without a freeze", domain);
      return;
    }
    if (--freeze->refs > 0)
      return;
    g_hash_table_remove(snap->freezes, domain);
  }
  g_autoptr(GError) error = NULL;
  if (freeze->record && !snap_thaw_record(snap, freeze->record, &error))
    g_warning("domain %s: thaw failed; its record stays and is retried at the next freeze, "
              "thaw or start: %s", domain, error->message);
  else {
    g_message("domain %s: thawed", domain);
    snap_freeze_repair(snap, domain);
  }
  freeze_free(freeze);
  snap_refresh(snap, G_LOG_LEVEL_DEBUG, "a freeze change");
}

void
snap_freeze_thaw_all(Snap *snap)
{
  g_autofree char **names = NULL;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
    names = (char **)g_hash_table_get_keys_as_array(snap->freezes, NULL);
    for (char **n = names; *n; n++)
      *n = g_strdup(*n);
  }
  for (char **n = names; *n; n++) {
    {
      g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->freeze_lock);
      SnapFreeze *freeze = g_hash_table_lookup(snap->freezes, *n);
      if (freeze)
        freeze->refs = 1;
    }
    g_message("domain %s: thawing an @now freeze still open at shutdown", *n);
    snap_thaw(snap, *n);
    g_free(*n);
  }
}
