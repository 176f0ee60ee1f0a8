/* plan-input.c: the planner's picture of one domain (a PlanState), read
 * from libvirt and from the image headers.
 *
 * For each disk the graph holds every image reachable from the active
 * image and from the overlay of every snapshot, so files of other branches
 * (left by a revert) are in it too.  Every chain is walked by chain/ under
 * the image policy (guard.h): one that fails makes the whole operation EIO
 * before anything is planned.  Formats come from the qcow2 backing-format
 * extension or, for a running domain, from libvirt's <backingStore>.
 * Allocation bitmaps use one granularity per disk: the smallest qcow2
 * cluster size among its images.
 * A layer is pinned when an open reader holds it (dev/ino, registered by
 * the front end), shared when its disk is <readonly/> or <shareable/> or
 * the chain of another domain in the model reaches it.
 *
 * Paths are canonical (realpath) so that the names the planner compares
 * are the names of files, whatever spelling libvirt or a header used.
 *
 * Thread model: called by an operation in its domain's turn; reads the
 * published model, makes libvirt calls, opens images read-only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "guard.h"
#include "policy.h"

#define DEFAULT_GRANULARITY 65536

void
snap_plan_input_free(SnapPlanInput *input)
{
  if (!input)
    return;
  plan_state_free(input->state);
  g_ptr_array_unref(input->bitmaps);
  g_free(input->uuid);
  g_hash_table_unref(input->unsupported);
  g_free(input);
}

static char *
identity(dev_t dev, ino_t ino)
{
  return g_strdup_printf("%ju:%ju", (uintmax_t)dev, (uintmax_t)ino);
}

/* Whether path is a file whose identity set holds. */
static gboolean
known(GHashTable *set, const char *path)
{
  struct stat st;
  if (stat(path, &st) < 0)
    return FALSE;
  g_autofree char *key = identity(st.st_dev, st.st_ino);
  return g_hash_table_contains(set, key);
}

/* Identities of every layer of every chain of the other domains.  A chain
 * that fails the policy contributes the layers above the failing one; what
 * lies below is reached only through a file the policy refuses (that
 * domain reads the chain as EIO) and is not followed. */
static GHashTable *
foreign_layers(Backend *backend, const ChainPolicy *policy, const char *domain)
{
  GHashTable *set = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr(BackendModel) model = backend_get_model(backend);
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *d = g_ptr_array_index(model->domains, i);
    if (strcmp(d->name, domain) == 0)
      continue;
    /* The present first, then the newest points: an older point's chain
     * is usually part of one walked already, and is then skipped. */
    g_autoptr(GPtrArray) tops = g_ptr_array_new();
    for (guint j = 0; j < d->disks->len; j++)
      g_ptr_array_add(tops, g_ptr_array_index(d->disks, j));
    for (guint s = d->snapshots->len; s-- > 0;) {
      BackendSnapshot *snapshot = g_ptr_array_index(d->snapshots, s);
      for (guint j = 0; j < snapshot->disks->len; j++)
        g_ptr_array_add(tops, g_ptr_array_index(snapshot->disks, j));
    }
    for (guint t = 0; t < tops->len; t++) {
      BackendDisk *disk = g_ptr_array_index(tops, t);
      if (known(set, disk->image_path))
        continue;
      g_auto(ChainWalk) walk = {0};
      g_autoptr(GError) error = NULL;
      backend_walk(policy, disk->image_path, disk->format, disk->backing_formats, 0, &walk,
                   &error);
      for (guint k = 0; k < walk.layers->len; k++) {
        ChainLayer *layer = walk.layers->pdata[k];
        g_hash_table_add(set, identity(chain_layer_dev(layer), chain_layer_ino(layer)));
      }
    }
  }
  return set;
}

/* One image found while walking a disk's graph. */
typedef struct {
  ChainLayer *layer;
  char *path;
  ChainFormat format;
  char *backing;
  ChainFormat backing_format;
} FoundImage;

static void
found_image_free(FoundImage *found)
{
  if (found->layer)
    chain_layer_unref(found->layer);
  g_free(found->path);
  g_free(found->backing);
  g_free(found);
}

/* The formats libvirt reports for the layers below top, when top is in
 * the running chain of disk (NULL otherwise: the headers say). */
static ChainFormat *
libvirt_formats(const DomXmlDisk *disk, gboolean running, const char *top)
{
  if (!running || !disk->backing)
    return NULL;
  if (backend_path_same(disk->source, top))
    return backend_layer_formats(disk->backing, 0);
  for (guint i = 0; i < disk->backing->len; i++) {
    DomXmlLayer *layer = g_ptr_array_index(disk->backing, i);
    if (backend_path_same(layer->path, top))
      return backend_layer_formats(disk->backing, i + 1);
  }
  return NULL;
}

/* Walks the chain of top under the policy, adding every image not yet in
 * found (by canonical path); a top already found adds nothing. */
static gboolean
walk_chain(SnapGuard *guard, const DomXmlDomain *domain, const DomXmlDisk *disk,
           gboolean running, const char *top, ChainFormat format, GHashTable *found,
           GError **error)
{
  g_autofree char *path = backend_path_canonical(top);
  if (g_hash_table_contains(found, path))
    return TRUE;
  g_autofree ChainFormat *formats = libvirt_formats(disk, running, top);
  g_auto(ChainWalk) walk = {0};
  if (!snap_guard_chain(guard, top, format, formats, 0, &walk, error)) {
    g_prefix_error(error, "domain %s disk %s: ", domain->name, disk->target);
    return FALSE;
  }
  for (guint i = 0; i < walk.layers->len; i++) {
    ChainLayer *layer = walk.layers->pdata[i];
    if (g_hash_table_contains(found, chain_layer_path(layer)))
      continue;
    FoundImage *image = g_new0(FoundImage, 1);
    image->layer = chain_layer_ref(layer);
    image->path = g_strdup(chain_layer_path(layer));
    image->format = chain_layer_format(layer);
    if (i + 1 < walk.layers->len) {
      ChainLayer *below = walk.layers->pdata[i + 1];
      image->backing = g_strdup(chain_layer_path(below));
      image->backing_format = chain_layer_format(below);
    }
    g_hash_table_insert(found, image->path, image);
  }
  return TRUE;
}

static gint
compare_found(gconstpointer a, gconstpointer b)
{
  return strcmp((*(FoundImage *const *)a)->path, (*(FoundImage *const *)b)->path);
}

/* The target a snapshot's <disk name=...> means: a target or a path. */
static const DomXmlDisk *
snapshot_disk_target(const DomXmlDomain *domain, const char *name)
{
  for (guint i = 0; i < domain->disks->len; i++) {
    const DomXmlDisk *disk = g_ptr_array_index(domain->disks, i);
    if (strcmp(disk->target, name) == 0)
      return disk;
  }
  for (guint i = 0; i < domain->disks->len; i++) {
    const DomXmlDisk *disk = g_ptr_array_index(domain->disks, i);
    if (backend_path_same(disk->source, name))
      return disk;
  }
  return NULL;
}

static gboolean
add_disk(Snap *snap, SnapGuard *guard, SnapPlanInput *input, const DomXmlDomain *domain,
         const DomXmlDisk *disk, GPtrArray *snapshots, GHashTable *shared_targets,
         GHashTable *foreign, GError **error)
{
  g_autoptr(GHashTable) found =
      g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)found_image_free);
  gboolean running = input->state->running;
  if (!walk_chain(guard, domain, disk, running, disk->source, disk->format, found, error))
    return FALSE;
  for (guint s = 0; s < snapshots->len; s++) {
    DomXmlSnapshot *snapshot = g_ptr_array_index(snapshots, s);
    for (guint j = 0; j < snapshot->disks->len; j++) {
      DomXmlSnapshotDisk *sd = g_ptr_array_index(snapshot->disks, j);
      if (sd->mode != DOMXML_SNAPSHOT_DISK_EXTERNAL || !sd->source ||
          snapshot_disk_target(domain, sd->name) != disk)
        continue;
      if (!walk_chain(guard, domain, disk, running, sd->source, sd->format, found, error)) {
        g_prefix_error(error, "snapshot %s: ", snapshot->name);
        return FALSE;
      }
    }
  }

  g_autoptr(GPtrArray) images = g_ptr_array_new();
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, found);
  while (g_hash_table_iter_next(&iter, NULL, &value))
    g_ptr_array_add(images, value);
  g_ptr_array_sort(images, compare_found);
  guint64 granularity = 0;
  for (guint i = 0; i < images->len; i++) {
    FoundImage *image = g_ptr_array_index(images, i);
    if (image->format != CHAIN_FORMAT_QCOW2)
      continue;
    guint64 cluster = chain_layer_cluster_size(image->layer);
    if (granularity == 0 || cluster < granularity)
      granularity = cluster;
  }
  if (granularity == 0)
    granularity = DEFAULT_GRANULARITY;

  g_autofree char *active = backend_path_canonical(disk->source);
  PlanDisk *pdisk = plan_state_add_disk(input->state, disk->target, active);
  gboolean disk_shared = g_hash_table_contains(shared_targets, disk->target);
  for (guint i = 0; i < images->len; i++) {
    FoundImage *image = g_ptr_array_index(images, i);
    g_autoptr(GError) local = NULL;
    ChainBitmap *allocation = chain_layer_allocation(image->layer, granularity, &local);
    if (!allocation) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: allocation of %s: %s",
                  domain->name, disk->target, image->path, local->message);
      return FALSE;
    }
    g_ptr_array_add(input->bitmaps, allocation);
    PlanImage *pimage =
        plan_disk_add_image(pdisk, image->path, image->format, image->backing, allocation);
    dev_t dev = chain_layer_dev(image->layer);
    ino_t ino = chain_layer_ino(image->layer);
    g_autofree char *key = identity(dev, ino);
    pimage->pinned = snap_pinned(snap, dev, ino);
    pimage->shared = disk_shared || g_hash_table_contains(foreign, key);
  }
  return TRUE;
}

static gint
compare_snapshots(gconstpointer a, gconstpointer b)
{
  const DomXmlSnapshot *x = *(DomXmlSnapshot *const *)a, *y = *(DomXmlSnapshot *const *)b;
  if (x->creation_time != y->creation_time)
    return x->creation_time < y->creation_time ? -1 : 1;
  return strcmp(x->name, y->name);
}

SnapPlanInput *
snap_plan_input_read(Snap *snap, virDomainPtr dom, GError **error)
{
  const char *name = virDomainGetName(dom);
  char uuid[VIR_UUID_STRING_BUFLEN];
  gboolean active;
  if (!backend_domain_state(dom, uuid, &active, error))
    return NULL;
  g_autofree char *xml = virDomainGetXMLDesc(dom, 0);
  if (!xml) {
    backend_set_virt_error(error, "domain %s: XML", name);
    return NULL;
  }
  g_autoptr(DomXmlDomain) domain = domxml_parse_domain(xml, error);
  if (!domain)
    return NULL;

  /* Snapshots, in creation order. */
  g_autoptr(GPtrArray) snapshots =
      g_ptr_array_new_with_free_func((GDestroyNotify)domxml_snapshot_free);
  g_autofree char *current = NULL;
  virDomainSnapshotPtr *snaps = NULL;
  int n = virDomainListAllSnapshots(dom, &snaps, 0);
  if (n < 0) {
    backend_set_virt_error(error, "domain %s: snapshots", name);
    return NULL;
  }
  gboolean ok = TRUE;
  for (int i = 0; i < n; i++) {
    if (ok) {
      g_autofree char *sxml = virDomainSnapshotGetXMLDesc(snaps[i], 0);
      int is_current = virDomainSnapshotIsCurrent(snaps[i], 0);
      if (!sxml || is_current < 0) {
        backend_set_virt_error(error, "domain %s: snapshot %s", name,
                               virDomainSnapshotGetName(snaps[i]));
        ok = FALSE;
      } else {
        DomXmlSnapshot *parsed = domxml_parse_snapshot(sxml, error);
        if (!parsed)
          ok = FALSE;
        else
          g_ptr_array_add(snapshots, parsed);
        if (parsed && is_current == 1)
          current = g_strdup(parsed->name);
      }
    }
    virDomainSnapshotFree(snaps[i]);
  }
  free(snaps);
  if (!ok)
    return NULL;
  g_ptr_array_sort(snapshots, compare_snapshots);

  g_autoptr(SnapPlanInput) input = g_new0(SnapPlanInput, 1);
  input->state = plan_state_new(active);
  input->bitmaps = g_ptr_array_new_with_free_func((GDestroyNotify)chain_bitmap_free);
  input->uuid = g_strdup(uuid);
  input->unsupported = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);

  g_autoptr(SnapGuard) guard = snap_guard_new(snap, error);
  if (!guard)
    return NULL;
  g_autoptr(GHashTable) shared_targets = exec_xml_shared_targets(xml);
  g_autoptr(GHashTable) foreign = foreign_layers(snap->backend, snap_guard_policy(guard), name);
  for (guint i = 0; i < domain->disks->len; i++) {
    if (!add_disk(snap, guard, input, domain, g_ptr_array_index(domain->disks, i), snapshots,
                  shared_targets, foreign, error))
      return NULL;
  }
  for (guint i = 0; i < domain->skipped->len; i++) {
    DomXmlSkipped *skipped = g_ptr_array_index(domain->skipped, i);
    if (!skipped->target || plan_state_find_disk(input->state, skipped->target))
      continue;
    PlanDisk *pdisk = plan_state_add_disk(input->state, skipped->target, NULL);
    pdisk->unsupported = g_strdup(skipped->reason);
  }

  for (guint s = 0; s < snapshots->len; s++) {
    DomXmlSnapshot *snapshot = g_ptr_array_index(snapshots, s);
    PlanSnapshot *ps = plan_state_add_snapshot(input->state, snapshot->name,
                                               snapshot->creation_time, snapshot->parent,
                                               g_strcmp0(current, snapshot->name) == 0);
    for (guint j = 0; j < snapshot->disks->len; j++) {
      DomXmlSnapshotDisk *sd = g_ptr_array_index(snapshot->disks, j);
      if (sd->mode == DOMXML_SNAPSHOT_DISK_NO)
        continue;
      const DomXmlDisk *disk = snapshot_disk_target(domain, sd->name);
      PlanDisk *pdisk = plan_state_find_disk(input->state, disk ? disk->target : sd->name);
      if (sd->mode == DOMXML_SNAPSHOT_DISK_INTERNAL || !sd->source || !pdisk) {
        g_hash_table_replace(input->unsupported, g_strdup(snapshot->name),
                             g_strdup_printf("disk %s: %s", sd->name,
                                             sd->mode == DOMXML_SNAPSHOT_DISK_INTERNAL
                                                 ? "internal snapshot"
                                             : !pdisk ? "the domain has no such disk"
                                                      : "external snapshot without a file"));
        continue;
      }
      if (pdisk->unsupported) {
        plan_snapshot_set_overlay(ps, pdisk->target, sd->source);
        continue;
      }
      g_autofree char *overlay = backend_path_canonical(sd->source);
      plan_snapshot_set_overlay(ps, pdisk->target, overlay);
    }
  }
  return g_steal_pointer(&input);
}
