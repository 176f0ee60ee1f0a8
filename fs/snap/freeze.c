/* freeze.c: @now (the present, frozen while read): temporary overlays,
 * shared per domain.
 *
 * The first freeze of a domain creates an external qcow2 overlay on every
 * disk the tree shows (virDomainSnapshotCreateXML with DISK_ONLY,
 * NO_METADATA and ATOMIC; QUIESCE first when the domain runs, retried
 * without it when the guest agent does not answer).  The guest then writes
 * into the overlays, and the image that was active, now frozen, is what
 * @now reads.  libvirt does the same offline for a shut-off domain: it
 * creates the overlays with qemu-img and points the inactive XML at them,
 * so a start during the read writes into the overlay too.
 *
 * Overlays live beside the active image, named
 * "<active>.virtsnapfs-now-<microseconds>-<pid>": that directory is already
 * one the qemu process may use and one the image policy allows.  A disk on
 * a block device gets its overlay under STATE_DIR/now/ instead.
 *
 * The last thaw commits each overlay back: active commit and pivot while
 * the domain runs (blockjob.c), `qemu-img commit -t writethrough` and a
 * redefinition of the inactive XML otherwise; then the overlay is deleted.
 * A freeze record (state.c) is durable before the first overlay exists and
 * goes after the last overlay is deleted, so backend_freeze_repair() can
 * finish the work after a crash without losing a guest write: an overlay
 * is deleted only once no disk of the domain reads from it.
 *
 * The image policy (guard.h) is checked before a freeze creates anything
 * (every disk's chain, every overlay's place: a chain that fails makes
 * the open of @now EIO), before a thaw commits (the overlay's chain, read
 * again: its header may have changed meanwhile) and before an overlay is
 * deleted.
 *
 * Thread model: callers block; operations on one domain are serialised by
 * backend_domain_lock(); freeze_lock guards the table of open freezes.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "backend-private.h"
#include "guard.h"

typedef struct {
  BackendFreezeRecord *record;  /* NULL when the domain has no disk to freeze */
  guint refs;
  GPtrArray *frozen;            /* of BackendDisk: what @now reads */
} BackendFreeze;

static void
freeze_free(BackendFreeze *freeze)
{
  if (!freeze)
    return;
  backend_freeze_record_free(freeze->record);
  g_ptr_array_unref(freeze->frozen);
  g_free(freeze);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendFreeze, freeze_free)

static GPtrArray *
disks_copy(GPtrArray *disks)
{
  GPtrArray *copy = g_ptr_array_new_full(disks->len, (GDestroyNotify)backend_disk_free);
  for (guint i = 0; i < disks->len; i++)
    g_ptr_array_add(copy, backend_disk_copy(g_ptr_array_index(disks, i)));
  return copy;
}

virDomainPtr
backend_lookup_domain(virConnectPtr conn, const char *name, const char *uuid, GError **error)
{
  virDomainPtr dom = uuid ? virDomainLookupByUUIDString(conn, uuid) : NULL;
  if (!dom)
    dom = virDomainLookupByName(conn, name);
  if (!dom) {
    const virError *err = virGetLastError();
    g_set_error(error, BACKEND_ERROR, err && err->code == VIR_ERR_NO_DOMAIN ? ENOENT : EIO,
                "domain %s: %s", name, virGetLastErrorMessage());
  }
  return dom;
}

static DomXmlDomain *
read_domain(virDomainPtr dom, unsigned int flags, GError **error)
{
  g_debug("virDomainGetXMLDesc(%s, %#x)", virDomainGetName(dom), flags);
  g_autofree char *xml = virDomainGetXMLDesc(dom, flags);
  if (!xml) {
    backend_set_virt_error(error, "domain %s: XML", virDomainGetName(dom));
    return NULL;
  }
  return domxml_parse_domain(xml, error);
}

static void
refresh_quietly(Backend *backend)
{
  g_autoptr(GError) error = NULL;
  if (!backend_refresh(backend, &error))
    g_debug("model refresh after a freeze change: %s", error->message);
}

static gboolean repair_records(Backend *backend, const char *domain);

/* ------------------------------------------------------------------ */
/* Freeze                                                              */

static char *
overlay_path(Backend *backend, const char *uuid, const DomXmlDisk *disk, const char *tag)
{
  if (!disk->is_block)
    return g_strdup_printf("%s.virtsnapfs-now-%s", disk->source, tag);
  g_autofree char *dir = g_build_filename(backend->state_dir, "now", NULL);
  if (g_mkdir_with_parents(dir, 0700) < 0)
    g_warning("cannot create %s: %s", dir, g_strerror(errno));
  g_autofree char *name = g_strdup_printf("%s-%s-%s.qcow2", uuid, disk->target, tag);
  return g_build_filename(dir, name, NULL);
}

/* After a failed snapshot: deletes the overlays the domain does not use. */
static void
discard_overlays(Backend *backend, virDomainPtr dom, BackendFreezeRecord *record)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) now = read_domain(dom, 0, &error);
  if (!now) {
    g_warning("domain %s: cannot check the overlays of a failed freeze (%s); left in place",
              record->domain, error->message);
    return;
  }
  for (guint i = 0; i < record->disks->len; i++) {
    BackendFreezeDisk *disk = g_ptr_array_index(record->disks, i);
    DomXmlDisk *d = domxml_domain_find_disk(now, disk->target);
    if (d && backend_path_same(d->source, disk->overlay)) {
      g_warning("domain %s disk %s: a failed freeze left overlay %s in use", record->domain,
                disk->target, disk->overlay);
      return;
    }
  }
  g_autoptr(BackendGuard) guard = backend_guard_new(backend, &error);
  for (guint i = 0; guard && i < record->disks->len; i++) {
    BackendFreezeDisk *disk = g_ptr_array_index(record->disks, i);
    g_autoptr(GError) refused = NULL;
    if (!backend_guard_place(guard, disk->overlay, &refused))
      g_warning("domain %s: overlay %s of a failed freeze left in place: %s", record->domain,
                disk->overlay, refused->message);
    else if (unlink(disk->overlay) == 0)
      g_debug("removed overlay %s of a failed freeze", disk->overlay);
  }
  if (!guard) {
    g_warning("domain %s: overlays of a failed freeze left in place: %s", record->domain,
              error->message);
    return;
  }
  g_autoptr(GError) rm = NULL;
  if (!backend_freeze_record_remove(record, &rm))
    g_warning("domain %s: %s", record->domain, rm->message);
}

static BackendFreeze *
freeze_create(Backend *backend, const char *name, GError **error)
{
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, error);
  if (!conn)
    return NULL;
  g_autoptr(BackendVirDomain) dom = backend_lookup_domain(conn, name, NULL, error);
  if (!dom)
    return NULL;
  char uuid[VIR_UUID_STRING_BUFLEN];
  if (virDomainGetUUIDString(dom, uuid) < 0) {
    backend_set_virt_error(error, "domain %s: UUID", name);
    return NULL;
  }
  int active = virDomainIsActive(dom);
  if (active < 0) {
    backend_set_virt_error(error, "domain %s: state", name);
    return NULL;
  }
  g_autoptr(DomXmlDomain) parsed = read_domain(dom, 0, error);
  if (!parsed)
    return NULL;
  if (!active)
    domxml_domain_forget_backing(parsed);

  g_autoptr(BackendFreeze) freeze = g_new0(BackendFreeze, 1);
  freeze->refs = 1;
  freeze->frozen = g_ptr_array_new_with_free_func((GDestroyNotify)backend_disk_free);
  if (parsed->disks->len == 0) {
    g_message("domain %s: @now has no disk to freeze", name);
    return g_steal_pointer(&freeze);
  }

  g_autoptr(BackendFreezeRecord) record = backend_freeze_record_new(name, uuid);
  g_autofree char *tag = g_strdup_printf("%" G_GINT64_FORMAT "-%d", g_get_real_time(), getpid());
  g_autoptr(GArray) overlays = g_array_new(FALSE, FALSE, sizeof(DomXmlOverlay));
  g_autoptr(BackendGuard) guard = backend_guard_new(backend, error);
  if (!guard)
    return NULL;
  for (guint i = 0; i < parsed->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(parsed->disks, i);
    g_autofree char *overlay = overlay_path(backend, uuid, disk, tag);
    g_autofree ChainFormat *formats = backend_layer_formats(disk->backing, 0);
    if (!backend_guard_chain(guard, disk->source, disk->format, formats, 0, NULL, error) ||
        !backend_guard_place(guard, overlay, error)) {
      g_prefix_error(error, "domain %s disk %s: cannot freeze: ", name, disk->target);
      return NULL;
    }
    backend_freeze_record_add_disk(record, disk->target, disk->source, disk->format, overlay);
    BackendFreezeDisk *rdisk = g_ptr_array_index(record->disks, record->disks->len - 1);
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

  if (!backend_freeze_record_write(record, backend->state_dir, error))
    return NULL;

  g_autofree char *xml = domxml_overlay_snapshot_xml("virtsnapfs @now", (DomXmlOverlay *)overlays->data,
                                                     overlays->len,
                                                     (const char *const *)no_targets->pdata);
  unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA |
                       VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
  virDomainSnapshotPtr snap = NULL;
  if (active) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|NO_METADATA|ATOMIC|QUIESCE)", name);
    snap = virDomainSnapshotCreateXML(dom, xml, flags | VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
    if (!snap)
      g_message("domain %s: no quiesced freeze (%s); freezing crash-consistent", name,
                virGetLastErrorMessage());
  }
  if (!snap) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|NO_METADATA|ATOMIC)", name);
    snap = virDomainSnapshotCreateXML(dom, xml, flags);
  }
  if (!snap) {
    backend_set_virt_error(error, "domain %s: cannot freeze", name);
    discard_overlays(backend, dom, record);
    return NULL;
  }
  virDomainSnapshotFree(snap);
  g_message("domain %s: frozen for @now (%u disks, %s)", name, record->disks->len,
            active ? "running" : "shut off");
  freeze->record = g_steal_pointer(&record);
  return g_steal_pointer(&freeze);
}

GPtrArray *
backend_freeze(Backend *backend, const char *domain, GError **error)
{
  g_autoptr(GMutexLocker) op = g_mutex_locker_new(backend_domain_lock(backend, domain));
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
    BackendFreeze *freeze = g_hash_table_lookup(backend->freezes, domain);
    if (freeze) {
      freeze->refs++;
      return disks_copy(freeze->frozen);
    }
  }
  /* A freeze whose thaw failed earlier is finished first when it can be;
   * when it cannot, the new overlay simply stacks on the old one, and the
   * old record is tried again after this thaw. */
  repair_records(backend, domain);
  BackendFreeze *freeze = freeze_create(backend, domain, error);
  if (!freeze)
    return NULL;
  GPtrArray *disks = disks_copy(freeze->frozen);
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
    g_hash_table_insert(backend->freezes, g_strdup(domain), freeze);
  }
  refresh_quietly(backend);
  return disks;
}

/* ------------------------------------------------------------------ */
/* Thaw                                                                */

/* At -o bandwidth= like every merge (-r is in bytes per second). */
static gboolean
qemu_img_commit(Backend *backend, const char *overlay, GError **error)
{
  if (!backend->bandwidth_mib) {
    const char *argv[] = {"commit", "-q", "-t", "writethrough", "-f", "qcow2", overlay, NULL};
    return backend_exec_qemu_img(argv, error);
  }
  g_autofree char *rate = g_strdup_printf("%lu", backend->bandwidth_mib * 1024 * 1024);
  const char *argv[] = {"commit", "-q", "-t", "writethrough", "-f", "qcow2", "-r", rate, overlay,
                        NULL};
  return backend_exec_qemu_img(argv, error);
}

/* TRUE when path is below the disk's top image (not the top itself). */
static gboolean
in_chain_below(BackendGuard *guard, const DomXmlDisk *d, const char *path)
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
  backend_guard_chain(guard, d->source, d->format, NULL, 0, &walk, &error);
  for (guint i = 1; i < walk.layers->len; i++)
    if (backend_path_same(chain_layer_path(walk.layers->pdata[i]), path))
      return TRUE;
  return FALSE;
}

/* Commits one overlay back into its frozen image, which the disk reads
 * again; the overlay stays until delete_overlay(). */
static gboolean
thaw_disk(Backend *backend, virConnectPtr conn, virDomainPtr dom, const char *uuid,
          const BackendFreezeDisk *disk, GError **error)
{
  const char *name = virDomainGetName(dom);
  int active = virDomainIsActive(dom);
  if (active < 0) {
    backend_set_virt_error(error, "domain %s: state", name);
    return FALSE;
  }
  g_autoptr(DomXmlDomain) now = read_domain(dom, 0, error);
  if (!now)
    return FALSE;
  if (!active)
    domxml_domain_forget_backing(now);
  DomXmlDisk *d = domxml_domain_find_disk(now, disk->target);
  gboolean on_top = d && (strcmp(d->source, disk->overlay) == 0 ||
                          backend_path_same(d->source, disk->overlay));
  g_autoptr(BackendGuard) guard = backend_guard_new(backend, error);
  if (!guard)
    return FALSE;
  /* The commit writes into what the overlay's header names now. */
  if (on_top && !backend_guard_chain(guard, disk->overlay, CHAIN_FORMAT_QCOW2, NULL, 0, NULL,
                                     error)) {
    g_prefix_error(error, "domain %s disk %s: refusing to commit overlay %s: ", name,
                   disk->target, disk->overlay);
    return FALSE;
  }

  if (on_top && active) {
    if (!backend_job_active_commit(backend, dom, uuid, disk->target, error))
      return FALSE;
    g_autoptr(DomXmlDomain) after = read_domain(dom, 0, error);
    if (!after)
      return FALSE;
    DomXmlDisk *a = domxml_domain_find_disk(after, disk->target);
    if (!a || !backend_path_same(a->source, disk->frozen)) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the pivot the disk reads "
                  "%s, not %s", name, disk->target, a ? a->source : "nothing", disk->frozen);
      return FALSE;
    }
  } else if (on_top) {
    if (!qemu_img_commit(backend, disk->overlay, error))
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
delete_overlay(Backend *backend, const BackendFreezeDisk *disk, GError **error)
{
  g_autoptr(BackendGuard) guard = backend_guard_new(backend, error);
  if (!guard || !backend_guard_place(guard, disk->overlay, error))
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

/* Thaws what record describes; the record goes when every disk is done.
 * The overlays are deleted after the model has been refreshed: until
 * then it names them as the active images, and a stat or open of @now
 * meanwhile would find them gone. */
static gboolean
thaw_record(Backend *backend, BackendFreezeRecord *record, GError **error)
{
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, error);
  if (!conn)
    return FALSE;
  g_autoptr(BackendVirDomain) dom = backend_lookup_domain(conn, record->domain, record->uuid, error);
  if (!dom)
    return FALSE;
  gboolean ok = TRUE;
  g_autoptr(GPtrArray) thawed = g_ptr_array_new();
  for (guint i = 0; i < record->disks->len; i++) {
    BackendFreezeDisk *disk = g_ptr_array_index(record->disks, i);
    GError *local = NULL;
    if (thaw_disk(backend, conn, dom, record->uuid, disk, &local))
      g_ptr_array_add(thawed, disk);
    else
      keep_first_error(&ok, error, local);
  }
  if (thawed->len > 0)
    refresh_quietly(backend);
  for (guint i = 0; i < thawed->len; i++) {
    GError *local = NULL;
    if (!delete_overlay(backend, g_ptr_array_index(thawed, i), &local))
      keep_first_error(&ok, error, local);
  }
  return ok && backend_freeze_record_remove(record, error);
}

void
backend_thaw(Backend *backend, const char *domain)
{
  g_autoptr(GMutexLocker) op = g_mutex_locker_new(backend_domain_lock(backend, domain));
  BackendFreeze *freeze;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
    freeze = g_hash_table_lookup(backend->freezes, domain);
    if (!freeze) {
      g_warning("domain %s: thaw without a freeze", domain);
      return;
    }
    if (--freeze->refs > 0)
      return;
    g_hash_table_remove(backend->freezes, domain);
  }
  g_autoptr(GError) error = NULL;
  if (freeze->record && !thaw_record(backend, freeze->record, &error))
    g_warning("domain %s: thaw failed; its record stays and is retried at the next freeze, "
              "thaw or start: %s", domain, error->message);
  else {
    g_message("domain %s: thawed", domain);
    repair_records(backend, domain);
  }
  freeze_free(freeze);
  refresh_quietly(backend);
}

void
backend_freeze_thaw_all(Backend *backend)
{
  g_autofree char **names = NULL;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
    names = (char **)g_hash_table_get_keys_as_array(backend->freezes, NULL);
    for (char **n = names; *n; n++)
      *n = g_strdup(*n);
  }
  for (char **n = names; *n; n++) {
    {
      g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
      BackendFreeze *freeze = g_hash_table_lookup(backend->freezes, *n);
      if (freeze)
        freeze->refs = 1;
    }
    g_message("domain %s: thawing an @now freeze still open at shutdown", *n);
    backend_thaw(backend, *n);
    g_free(*n);
  }
}

void
backend_freeze_table_free(Backend *backend)
{
  GHashTableIter iter;
  gpointer key, value;
  g_hash_table_iter_init(&iter, backend->freezes);
  while (g_hash_table_iter_next(&iter, &key, &value))
    freeze_free(value);
  g_hash_table_unref(backend->freezes);
}

/* TRUE when record belongs to an open freeze of this process. */
static gboolean
record_is_live(Backend *backend, const BackendFreezeRecord *record)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&backend->freeze_lock);
  BackendFreeze *freeze = g_hash_table_lookup(backend->freezes, record->domain);
  return freeze && freeze->record && g_strcmp0(freeze->record->path, record->path) == 0;
}

/* Finishes the records no open freeze owns: those of domain only, or all
 * when domain is NULL.  The caller holds domain's operation lock (a
 * domain given) or no lock at all (NULL: each domain's lock is taken
 * here).  Returns FALSE when a record had to stay. */
static gboolean
repair_records(Backend *backend, const char *domain)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) records = backend_freeze_records_load(backend->state_dir, &error);
  if (!records) {
    g_warning("cannot read freeze records in %s: %s", backend->state_dir, error->message);
    return FALSE;
  }
  gboolean all_done = TRUE;
  for (guint i = 0; i < records->len; i++) {
    BackendFreezeRecord *record = g_ptr_array_index(records, i);
    if (domain && g_strcmp0(record->domain, domain) != 0)
      continue;
    g_autoptr(GMutexLocker) op =
        domain ? NULL : g_mutex_locker_new(backend_domain_lock(backend, record->domain));
    if (record_is_live(backend, record))
      continue;
    g_message("domain %s: finishing an @now freeze left by an earlier run or a failed thaw",
              record->domain);
    g_autoptr(GError) local = NULL;
    if (!thaw_record(backend, record, &local)) {
      g_warning("domain %s: freeze repair failed, record %s kept: %s", record->domain,
                record->path, local->message);
      all_done = FALSE;
    }
  }
  return all_done;
}

gboolean
backend_freeze_settle(Backend *backend, const char *domain, GError **error)
{
  if (repair_records(backend, domain))
    return TRUE;
  g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s: a temporary @now overlay whose thaw "
              "failed is still the active image; it is tried again at the next operation",
              domain);
  return FALSE;
}

char **
backend_freeze_frozen_images(Backend *backend)
{
  GStrvBuilder *builder = g_strv_builder_new();
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) records = backend_freeze_records_load(backend->state_dir, &error);
  if (!records)
    g_debug("freeze records: %s", error->message);
  for (guint i = 0; records && i < records->len; i++) {
    BackendFreezeRecord *record = g_ptr_array_index(records, i);
    for (guint j = 0; j < record->disks->len; j++) {
      BackendFreezeDisk *disk = g_ptr_array_index(record->disks, j);
      g_strv_builder_add(builder, disk->frozen);
    }
  }
  char **images = g_strv_builder_end(builder);
  g_strv_builder_unref(builder);
  return images;
}

void
backend_freeze_repair(Backend *backend)
{
  repair_records(backend, NULL);
}
