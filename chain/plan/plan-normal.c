/* plan-normal.c: bringing the image graph of one disk back to its
 * normal form after an operation changed the metadata (planner.c):
 *
 *   1. A snapshot whose overlay is a dead end (a leaf that is neither
 *      active nor anyone's point image: what a revert leaves behind) is
 *      pointed at a live sibling over the same point image, or, when it has
 *      none and the dead end holds data, at a new empty overlay.
 *   2. A file no snapshot names, that is not active and that nothing backs
 *      onto is garbage.
 *   3. A layer that is not named (not active, no remaining snapshot's point
 *      image) and has exactly one child is merged away, by commit or pull,
 *      whichever moves fewer bytes among the safe ones (plan-merge.c).
 *
 * The rules apply one change at a time until nothing changes.
 *
 * Thread model: none; works on one planner_plan() call's PlanWork.
 */
#include <string.h>

#include "planner-private.h"

/* Lookups over one disk for the normal-form rules, which ask them for every
 * image: built in O(images + snapshots), valid until the graph or the
 * metadata changes, so plan_normalize_disk() rebuilds it after every change.
 * Keys are borrowed from the images and snapshots. */
typedef struct {
  GHashTable *images;   /* path -> PlanImage * */
  GHashTable *children; /* path -> GPtrArray of PlanImage * */
  GHashTable *points;   /* paths that are a snapshot's point image */
  GHashTable *overlays; /* paths that a snapshot names */
} DiskIndex;

static void
disk_index_build(DiskIndex *idx, const PlanState *st, const PlanDisk *disk)
{
  idx->images = g_hash_table_new(g_str_hash, g_str_equal);
  idx->children = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                        (GDestroyNotify)g_ptr_array_unref);
  idx->points = g_hash_table_new(g_str_hash, g_str_equal);
  idx->overlays = g_hash_table_new(g_str_hash, g_str_equal);
  for (guint i = 0; i < disk->images->len; i++) {
    PlanImage *image = disk->images->pdata[i];
    g_hash_table_insert(idx->images, image->path, image);
    if (image->backing == NULL)
      continue;
    GPtrArray *kids = g_hash_table_lookup(idx->children, image->backing);
    if (kids == NULL) {
      kids = g_ptr_array_new();
      g_hash_table_insert(idx->children, image->backing, kids);
    }
    g_ptr_array_add(kids, image);
  }
  for (guint i = 0; i < st->snapshots->len; i++) {
    const char *path = plan_snapshot_overlay(st->snapshots->pdata[i], disk->target);
    PlanImage *overlay = path ? g_hash_table_lookup(idx->images, path) : NULL;
    if (overlay == NULL)
      continue;
    g_hash_table_add(idx->overlays, overlay->path);
    if (overlay->backing != NULL)
      g_hash_table_add(idx->points, overlay->backing);
  }
}

static void
disk_index_clear(DiskIndex *idx)
{
  g_clear_pointer(&idx->images, g_hash_table_unref);
  g_clear_pointer(&idx->children, g_hash_table_unref);
  g_clear_pointer(&idx->points, g_hash_table_unref);
  g_clear_pointer(&idx->overlays, g_hash_table_unref);
}

static guint
index_children(const DiskIndex *idx, const char *path, PlanImage **only)
{
  GPtrArray *kids = g_hash_table_lookup(idx->children, path);
  if (kids == NULL || kids->len == 0)
    return 0;
  if (only != NULL)
    *only = kids->pdata[0];
  return kids->len;
}

/* ------------------------------------------------------------------ */
/* Rule 1: dead-end overlays.                                           */

static gboolean
is_dead_end(const DiskIndex *idx, const PlanDisk *disk, const PlanImage *image)
{
  return index_children(idx, image->path, NULL) == 0 && g_strcmp0(disk->active, image->path) != 0 &&
         !g_hash_table_contains(idx->points, image->path) && !image->shared;
}

static gboolean
repoint_dead_ends(PlanWork *w, PlanDisk *disk, const DiskIndex *idx)
{
  for (guint i = 0; i < w->st->snapshots->len; i++) {
    PlanSnapshot *snapshot = w->st->snapshots->pdata[i];
    PlanSnapshotDisk *sd = plan_snapshot_find_disk(snapshot, disk->target);
    if (sd == NULL)
      continue;
    PlanImage *overlay = sd->overlay ? g_hash_table_lookup(idx->images, sd->overlay) : NULL;
    if (overlay == NULL || !is_dead_end(idx, disk, overlay))
      continue;

    /* A sibling that stays anyway (or an empty overlay made for another
     * snapshot of the same point); the active image first, so that a
     * revert leaves S naming the overlay the domain runs on, as if S had
     * just been taken. */
    PlanImage *best = NULL;
    GPtrArray *siblings = g_hash_table_lookup(idx->children, overlay->backing);
    for (guint j = 0; j < siblings->len; j++) {
      PlanImage *sib = siblings->pdata[j];
      g_autofree char *sib_key = plan_disk_key(disk, sib->path);
      if (sib == overlay ||
          (is_dead_end(idx, disk, sib) && !g_hash_table_contains(w->fresh, sib_key)))
        continue;
      if (best == NULL || g_strcmp0(disk->active, sib->path) == 0)
        best = sib;
    }
    if (best != NULL) {
      g_free(sd->overlay);
      sd->overlay = g_strdup(best->path);
      return TRUE;
    }

    /* No sibling: the dead end holds data no point in time reads (what
     * the domain wrote after the snapshot, before a discarding revert).
     * Swap it for an empty overlay so the space comes back. */
    g_autofree char *key = plan_disk_key(disk, overlay->path);
    if (g_hash_table_contains(w->fresh, key))
      continue;
    if (overlay->allocation != NULL && chain_bitmap_count(overlay->allocation) == 0)
      continue;
    PlanImage *point = g_hash_table_lookup(idx->images, overlay->backing);
    PlanImage *empty = plan_work_create_overlay(w, disk, point, overlay->path, "overlay");
    g_free(sd->overlay);
    sd->overlay = g_strdup(empty->path);
    return TRUE;
  }
  return FALSE;
}

/* Rule 2: garbage. */
static gboolean
drop_garbage(PlanWork *w, PlanDisk *disk, const DiskIndex *idx)
{
  for (guint i = 0; i < disk->images->len; i++) {
    PlanImage *image = disk->images->pdata[i];
    if (index_children(idx, image->path, NULL) == 0 && g_strcmp0(disk->active, image->path) != 0 &&
        !g_hash_table_contains(idx->overlays, image->path) && !image->shared) {
      plan_work_drop_image(w, disk, image);
      return TRUE;
    }
  }
  return FALSE;
}

static gboolean
merge_unnamed(PlanWork *w, PlanDisk *disk, const DiskIndex *idx, gboolean *changed, GError **error)
{
  *changed = FALSE;
  for (guint i = 0; i < disk->images->len; i++) {
    PlanImage *f = disk->images->pdata[i];
    PlanImage *c = NULL;
    if (g_strcmp0(disk->active, f->path) == 0 || f->shared ||
        g_hash_table_contains(idx->points, f->path) || index_children(idx, f->path, &c) != 1)
      continue;
    g_autofree char *key = plan_disk_key(disk, f->path);
    if (g_hash_table_contains(w->deferred, key))
      continue;
    if (!plan_merge_layer(w, disk, f, c, changed, error))
      return FALSE;
    if (*changed)
      return TRUE;
  }
  return TRUE;
}

gboolean
plan_normalize_disk(PlanWork *w, PlanDisk *disk, GError **error)
{
  if (disk->unsupported != NULL)
    return TRUE;
  for (;;) {
    gboolean changed = FALSE;
    DiskIndex idx;
    disk_index_build(&idx, w->st, disk);
    gboolean ok = TRUE;
    if (!repoint_dead_ends(w, disk, &idx) && !drop_garbage(w, disk, &idx))
      ok = merge_unnamed(w, disk, &idx, &changed, error);
    else
      changed = TRUE;
    disk_index_clear(&idx);
    if (!ok)
      return FALSE;
    if (!changed)
      return TRUE;
  }
}
