/* planner.c: DELETE, RENAME and REVERT as plans (DESIGN.md 5).
 *
 * Every operation is first applied to a working copy of the state's
 * metadata (a snapshot goes, gets a new name, or the domain gets a new
 * active overlay), then the image graph of each disk is brought back to its
 * normal form, and the steps that get the files there are recorded:
 *
 *   1. A snapshot whose overlay is a dead end (a leaf that is neither
 *      active nor anyone's point image: what a revert leaves behind) is
 *      pointed at a live sibling over the same point image, or, when it has
 *      none and the dead end holds data, at a new empty overlay.
 *   2. A file no snapshot names, that is not active and that nothing backs
 *      onto is garbage.
 *   3. A layer that is not named (not active, no remaining snapshot's point
 *      image) and has exactly one child is merged away, by commit or pull,
 *      whichever moves fewer bytes among the safe ones.
 *
 * until nothing changes.  Then the metadata steps are derived by comparing
 * the snapshots and active images before and after, and the files that left
 * the graph are deleted last.  Deleting the snapshot is thus the same code as
 * the garbage collection after a revert: a branch point left with one child
 * by any plan is merged away by that plan.
 *
 * Safety (DESIGN.md 1, 4.3): the planner writes data only into the layer
 * being merged away (commit) or into its only child (pull), never into a
 * shared file, and never so that an open reader sees data change.  Commit
 * writes into F while F has no other child and no point in time of its
 * own: the one exception DESIGN.md allows.  Readers keep the chain they
 * opened (descriptors), so: a pull into C is refused when any reader's
 * chain holds C; a commit into F when a reader's chain reaches F without
 * passing C (C hides from it exactly the clusters the commit writes).
 * Unlinking a file a reader has open is harmless.
 */
#include <errno.h>
#include <string.h>

#include "planner-private.h"

G_DEFINE_QUARK(planner-error-quark, planner_error)

typedef struct {
  const PlanState *before;
  const PlanOp *op;
  PlanState *st;          /* the working copy: becomes plan->after */
  Plan *plan;
  GPtrArray *maps;        /* ChainBitmap * made by the planner (unions, empty overlays) */
  GHashTable *fresh;      /* "target\tpath" of files this plan creates */
  GHashTable *deferred;   /* "target\tpath" of layers left unmerged this time */
  GHashTable *primary;    /* target -> P(S) of the snapshot being deleted */
  GPtrArray *deletes;     /* PlanStep * (DELETE_FILE), appended last */
  GHashTable *dropped;    /* paths that left the graph (still on disk until the end) */
} PlanWork;

static void
plan_work_clear(PlanWork *w)
{
  g_clear_pointer(&w->maps, g_ptr_array_unref);
  g_clear_pointer(&w->fresh, g_hash_table_unref);
  g_clear_pointer(&w->deferred, g_hash_table_unref);
  g_clear_pointer(&w->primary, g_hash_table_unref);
  g_clear_pointer(&w->deletes, g_ptr_array_unref);
  g_clear_pointer(&w->dropped, g_hash_table_unref);
  g_clear_pointer(&w->st, plan_state_free);
  g_clear_pointer(&w->plan, plan_free);
}

static char *
disk_key(const PlanDisk *disk, const char *path)
{
  return g_strconcat(disk->target, "\t", path, NULL);
}

/* ------------------------------------------------------------------ */
/* Graph queries on one disk.                                           */

static const char *
snapshot_point(const PlanDisk *disk, const PlanSnapshot *snapshot)
{
  PlanImage *overlay = plan_disk_find_image(disk, plan_snapshot_overlay(snapshot, disk->target));
  return overlay ? overlay->backing : NULL;
}

static gboolean
in_active_chain(const PlanDisk *disk, const char *path)
{
  guint depth = 0;
  for (PlanImage *image = plan_disk_find_image(disk, disk->active);
       image != NULL && depth <= disk->images->len;
       image = plan_disk_find_image(disk, image->backing), depth++)
    if (strcmp(image->path, path) == 0)
      return TRUE;
  return FALSE;
}

/* Lookups over one disk for the normal-form rules, which ask them for every
 * image: built in O(images + snapshots), valid until the graph or the
 * metadata changes, so normalize_disk() rebuilds it after every change.
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

static void
disk_remove_image(PlanDisk *disk, PlanImage *image)
{
  g_ptr_array_remove(disk->images, image);
}

/* ------------------------------------------------------------------ */
/* Recording changes.                                                   */

static PlanStep *
add_step(PlanWork *w, PlanStepKind kind, gboolean block_job, const PlanDisk *disk,
         const PlanImage *image, const PlanImage *backing)
{
  PlanStep *step = plan_step_new(kind);
  step->block_job = block_job;
  step->disk = g_strdup(disk->target);
  step->image = g_strdup(image->path);
  step->format = image->format;
  if (backing != NULL) {
    step->backing = g_strdup(backing->path);
    step->backing_format = backing->format;
  }
  g_ptr_array_add(w->plan->steps, step);
  return step;
}

/* The file leaves the graph now and the disk at the end of the plan. */
static void
drop_image(PlanWork *w, PlanDisk *disk, PlanImage *image)
{
  PlanStep *step = plan_step_new(PLAN_STEP_DELETE_FILE);
  step->disk = g_strdup(disk->target);
  step->image = g_strdup(image->path);
  step->format = image->format;
  g_ptr_array_add(w->deletes, step);
  g_hash_table_add(w->dropped, g_strdup(image->path));
  disk_remove_image(disk, image);
}

/* The first open point in time whose chain, as it was opened, contains
 * path and not also keep above it; NULL if none.  Readers resolved their
 * chain at open() and hold descriptors, so their chains come from the
 * state before the plan, whatever pointers the plan has moved since. */
static const char *
reader_of(const PlanWork *w, const PlanDisk *disk, const char *path, const char *keep)
{
  const PlanDisk *orig = plan_state_find_disk(w->before, disk->target);
  for (guint i = 0; i < orig->images->len; i++) {
    const PlanImage *top = orig->images->pdata[i];
    if (!top->pinned)
      continue;
    guint depth = 0;
    for (const PlanImage *up = top; up != NULL && depth++ <= orig->images->len;
         up = plan_disk_find_image(orig, up->backing)) {
      if (keep != NULL && strcmp(up->path, keep) == 0)
        break;
      if (strcmp(up->path, path) == 0)
        return top->path;
    }
  }
  return NULL;
}

static gboolean
path_taken(PlanWork *w, const char *path)
{
  if (g_hash_table_contains(w->dropped, path))
    return TRUE;
  const PlanState *states[] = { w->before, w->st };
  for (guint s = 0; s < G_N_ELEMENTS(states); s++)
    for (guint i = 0; i < states[s]->disks->len; i++)
      if (plan_disk_find_image(states[s]->disks->pdata[i], path) != NULL)
        return TRUE;
  return FALSE;
}

/* A new empty qcow2 overlay on backing, named after the disk, purpose and
 * the plan's time, next to near; added to the graph. */
static PlanImage *
create_overlay(PlanWork *w, PlanDisk *disk, PlanImage *backing, const char *near,
               const char *purpose)
{
  g_autofree char *dir = g_path_get_dirname(near);
  g_autofree char *stamp = plan_utc_stamp(w->op->now);
  g_autofree char *path = NULL;
  for (guint n = 1; path == NULL || path_taken(w, path); n++) {
    g_free(path);
    g_autofree char *file = n == 1
      ? g_strdup_printf("%s.%s-%s.qcow2", disk->target, purpose, stamp)
      : g_strdup_printf("%s.%s-%s-%u.qcow2", disk->target, purpose, stamp, n);
    path = g_build_filename(dir, file, NULL);
  }

  PlanImage *image = plan_disk_add_image(disk, path, CHAIN_FORMAT_QCOW2, backing->path, NULL);
  if (backing->allocation != NULL) {
    const ChainBitmap *b = backing->allocation;
    ChainBitmap *empty = chain_bitmap_new(b->granularity, b->nbits * b->granularity);
    g_ptr_array_add(w->maps, empty);
    image->allocation = empty;
  }
  g_hash_table_add(w->fresh, disk_key(disk, path));
  add_step(w, PLAN_STEP_CREATE_OVERLAY, FALSE, disk, image, backing);
  return image;
}

static const ChainBitmap *
bitmap_union(PlanWork *w, const ChainBitmap *a, const ChainBitmap *b)
{
  guint64 nbits = MAX(a->nbits, b->nbits);
  ChainBitmap *u = chain_bitmap_new(a->granularity, nbits * a->granularity);
  guint64 wa = (a->nbits + 63) / 64, wb = (b->nbits + 63) / 64;
  for (guint64 i = 0; i < (nbits + 63) / 64; i++)
    u->words[i] = (i < wa ? a->words[i] : 0) | (i < wb ? b->words[i] : 0);
  g_ptr_array_add(w->maps, u);
  return u;
}

/* ------------------------------------------------------------------ */
/* Normal form, rule 1: dead-end overlays.                              */

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
      g_autofree char *sib_key = disk_key(disk, sib->path);
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
    g_autofree char *key = disk_key(disk, overlay->path);
    if (g_hash_table_contains(w->fresh, key))
      continue;
    if (overlay->allocation != NULL && chain_bitmap_count(overlay->allocation) == 0)
      continue;
    PlanImage *point = g_hash_table_lookup(idx->images, overlay->backing);
    PlanImage *empty = create_overlay(w, disk, point, overlay->path, "overlay");
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
      drop_image(w, disk, image);
      return TRUE;
    }
  }
  return FALSE;
}

/* ------------------------------------------------------------------ */
/* Rule 3: merging an unnamed layer F into its only child C or back.    */

/* Plain ASCII for the log (g_format_size() uses a no-break space). */
static char *
format_bytes(guint64 bytes)
{
  static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
  guint u = 0;
  while (u + 1 < G_N_ELEMENTS(units) && bytes >= 10240 && bytes % 1024 == 0) {
    bytes /= 1024;
    u++;
  }
  if (u == 0 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    u++;
  }
  return g_strdup_printf("%" G_GUINT64_FORMAT " %s", bytes, units[u]);
}

static gboolean
merge_costs(const PlanDisk *disk, const PlanImage *f, const PlanImage *c, guint64 *commit_bytes,
            guint64 *pull_bytes, GError **error)
{
  const PlanImage *missing = f->allocation == NULL ? f : c->allocation == NULL ? c : NULL;
  if (missing != NULL) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "disk %s: no allocation map for %s",
                disk->target, missing->path);
    return FALSE;
  }
  if (f->allocation->granularity != c->allocation->granularity) {
    g_set_error(error, PLANNER_ERROR, EINVAL,
                "disk %s: allocation maps of %s and %s have different granularities",
                disk->target, f->path, c->path);
    return FALSE;
  }
  guint64 g = c->allocation->granularity;
  *commit_bytes = chain_bitmap_count(c->allocation) * g;
  *pull_bytes = chain_bitmap_count_and_not(f->allocation, c->allocation) * g;
  return TRUE;
}

static char *
open_for_reading(const char *path, const char *reader)
{
  if (strcmp(path, reader) == 0)
    return g_strdup_printf("%s is open for reading", path);
  return g_strdup_printf("%s is open for reading (under %s)", path, reader);
}

/* Why commit (writes c's clusters into f, drops c) may not run now, or
 * NULL.  A reader whose chain has c above f never reads those clusters
 * of f; only one that reaches f some other way (f's own point, or through
 * a file an earlier step of this plan took out of f's way) would see them. */
static char *
commit_unsafe(const PlanWork *w, const PlanDisk *disk, const PlanImage *f, const PlanImage *c)
{
  if (f->shared)
    return g_strdup_printf("%s is used outside this domain", f->path);
  if (c->shared)
    return g_strdup_printf("%s is used outside this domain", c->path);
  const char *reader = reader_of(w, disk, f->path, c->path);
  if (reader != NULL)
    return open_for_reading(f->path, reader);
  return NULL;
}

/* Why pull (writes into c, drops f) may not run now, or NULL.  The data
 * a reader of c sees would not change, but its file would: DESIGN.md 4.3
 * writes into no layer an open reader depends on. */
static char *
pull_unsafe(const PlanWork *w, const PlanDisk *disk, const PlanImage *f, const PlanImage *c)
{
  if (c->shared)
    return g_strdup_printf("%s is used outside this domain", c->path);
  if (f->shared)
    return g_strdup_printf("%s is used outside this domain", f->path);
  const char *reader = reader_of(w, disk, c->path, NULL);
  if (reader != NULL)
    return open_for_reading(c->path, reader);
  if (w->st->running && g_strcmp0(disk->active, c->path) != 0 && in_active_chain(disk, c->path))
    return g_strdup_printf("libvirt cannot pull into %s, an intermediate layer of the running domain",
                           c->path);
  return NULL;
}

static void
do_commit(PlanWork *w, PlanDisk *disk, PlanImage *f, PlanImage *c)
{
  gboolean running_chain = w->st->running && in_active_chain(disk, c->path);
  gboolean c_active = g_strcmp0(disk->active, c->path) == 0;

  if (running_chain && c_active)
    add_step(w, PLAN_STEP_ACTIVE_COMMIT, TRUE, disk, c, f);
  else
    add_step(w, PLAN_STEP_COMMIT, running_chain, disk, c, f);

  /* C's children now back onto F.  In the running chain libvirt has
   * already moved the pointer of C's child; every other child is offline. */
  for (guint i = 0; i < disk->images->len; i++) {
    PlanImage *child = disk->images->pdata[i];
    if (g_strcmp0(child->backing, c->path) != 0)
      continue;
    if (!(running_chain && in_active_chain(disk, child->path)))
      add_step(w, PLAN_STEP_REBASE_UNSAFE, FALSE, disk, child, f);
    g_free(child->backing);
    child->backing = g_strdup(f->path);
  }
  if (c_active) {
    g_free(disk->active);
    disk->active = g_strdup(f->path);
  }
  f->allocation = bitmap_union(w, f->allocation, c->allocation);
  /* No remaining snapshot names C: its point would be F, which is unnamed. */
  drop_image(w, disk, c);
}

static void
do_pull(PlanWork *w, PlanDisk *disk, PlanImage *f, PlanImage *c)
{
  gboolean block = w->st->running && g_strcmp0(disk->active, c->path) == 0;
  PlanImage *base = plan_disk_find_image(disk, f->backing);

  add_step(w, PLAN_STEP_PULL, block, disk, c, base);
  g_free(c->backing);
  c->backing = g_strdup(f->backing);
  c->allocation = bitmap_union(w, f->allocation, c->allocation);

  /* Snapshots whose overlay was F (their point is backing(F)) name C. */
  for (guint i = 0; i < w->st->snapshots->len; i++) {
    PlanSnapshotDisk *sd = plan_snapshot_find_disk(w->st->snapshots->pdata[i], disk->target);
    if (sd != NULL && g_strcmp0(sd->overlay, f->path) == 0) {
      g_free(sd->overlay);
      sd->overlay = g_strdup(c->path);
    }
  }
  drop_image(w, disk, f);
}

/* A new entry for the log, chosen PLAN_MERGE_NONE until decided. */
static PlanChoice *
add_choice(PlanWork *w, const PlanDisk *disk, const PlanImage *f, const PlanImage *c)
{
  PlanChoice *choice = g_new0(PlanChoice, 1);
  choice->disk = g_strdup(disk->target);
  choice->layer = g_strdup(f->path);
  choice->child = g_strdup(c->path);
  choice->chosen = PLAN_MERGE_NONE;
  g_ptr_array_add(w->plan->choices, choice);
  return choice;
}

static gboolean
merge_layer(PlanWork *w, PlanDisk *disk, PlanImage *f, PlanImage *c, gboolean *merged,
            GError **error)
{
  gboolean primary = g_strcmp0(g_hash_table_lookup(w->primary, disk->target), f->path) == 0;
  guint64 commit_bytes = 0, pull_bytes = 0;
  *merged = FALSE;
  g_autoptr(GError) cost_error = NULL;
  if (!merge_costs(disk, f, c, &commit_bytes, &pull_bytes, &cost_error)) {
    /* Without costs there is no choice to make.  Only the merge asked
     * for needs one now; tidying up waits for a caller with the maps. */
    if (primary) {
      g_propagate_error(error, g_steal_pointer(&cost_error));
      return FALSE;
    }
    PlanChoice *choice = add_choice(w, disk, f, c);
    choice->reason = g_strdup_printf("neither: %s", cost_error->message);
    g_hash_table_add(w->deferred, disk_key(disk, f->path));
    return TRUE;
  }

  g_autofree char *no_commit = commit_unsafe(w, disk, f, c);
  g_autofree char *no_pull = pull_unsafe(w, disk, f, c);
  g_autofree char *cb = format_bytes(commit_bytes);
  g_autofree char *pb = format_bytes(pull_bytes);
  gboolean c_active = g_strcmp0(disk->active, c->path) == 0;

  PlanChoice *choice = add_choice(w, disk, f, c);
  choice->commit_bytes = commit_bytes;
  choice->pull_bytes = pull_bytes;
  choice->commit_safe = no_commit == NULL;
  choice->pull_safe = no_pull == NULL;

  if (no_commit != NULL && no_pull != NULL) {
    choice->chosen = PLAN_MERGE_NONE;
    choice->reason = g_strdup_printf("neither: commit: %s; pull: %s", no_commit, no_pull);
    if (primary) {
      g_set_error(error, PLANNER_ERROR, EBUSY,
                  "disk %s: cannot merge %s away: commit: %s; pull: %s",
                  disk->target, f->path, no_commit, no_pull);
      return FALSE;
    }
    /* Housekeeping, not what the user asked for: the layer stays unnamed
     * and a later plan merges it. */
    g_hash_table_add(w->deferred, disk_key(disk, f->path));
    return TRUE;
  }

  if (no_commit != NULL) {
    choice->chosen = PLAN_MERGE_PULL;
    choice->reason = g_strdup_printf("pull %s: no commit: %s", pb, no_commit);
  } else if (no_pull != NULL) {
    choice->chosen = PLAN_MERGE_COMMIT;
    choice->reason = g_strdup_printf("commit %s: no pull: %s", cb, no_pull);
  } else if (commit_bytes < pull_bytes) {
    choice->chosen = PLAN_MERGE_COMMIT;
    choice->reason = g_strdup_printf("commit %s < pull %s", cb, pb);
  } else if (pull_bytes < commit_bytes) {
    choice->chosen = PLAN_MERGE_PULL;
    choice->reason = g_strdup_printf("pull %s < commit %s", pb, cb);
  } else if (c_active) {
    /* Tie rule, see planner.h. */
    choice->chosen = PLAN_MERGE_PULL;
    choice->reason = g_strdup_printf("tie at %s: pull keeps the active image, no pivot", cb);
  } else {
    choice->chosen = PLAN_MERGE_COMMIT;
    choice->reason = g_strdup_printf("tie at %s: commit writes only the layer that goes", cb);
  }

  if (choice->chosen == PLAN_MERGE_COMMIT)
    do_commit(w, disk, f, c);
  else
    do_pull(w, disk, f, c);
  /* The point asked for is gone; what follows is tidying up (a commit
   * leaves F in place, and F may still be an unnamed layer). */
  if (primary)
    g_hash_table_remove(w->primary, disk->target);
  *merged = TRUE;
  return TRUE;
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
    g_autofree char *key = disk_key(disk, f->path);
    if (g_hash_table_contains(w->deferred, key))
      continue;
    if (!merge_layer(w, disk, f, c, changed, error))
      return FALSE;
    if (*changed)
      return TRUE;
  }
  return TRUE;
}

static gboolean
normalize_disk(PlanWork *w, PlanDisk *disk, GError **error)
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

/* ------------------------------------------------------------------ */
/* Metadata steps, from the difference between before and after.       */

static void
fill_points(PlanState *st)
{
  for (guint i = 0; i < st->snapshots->len; i++) {
    PlanSnapshot *snapshot = st->snapshots->pdata[i];
    for (guint j = 0; j < snapshot->disks->len; j++) {
      PlanSnapshotDisk *sd = snapshot->disks->pdata[j];
      PlanDisk *disk = plan_state_find_disk(st, sd->target);
      g_free(sd->point);
      sd->point = disk ? g_strdup(snapshot_point(disk, snapshot)) : NULL;
    }
  }
}

static gboolean
snapshot_changed(const PlanState *before, const PlanSnapshot *old, const PlanSnapshot *new)
{
  if (g_strcmp0(old->parent, new->parent) != 0 || old->disks->len != new->disks->len)
    return TRUE;
  for (guint j = 0; j < new->disks->len; j++) {
    const PlanSnapshotDisk *sd = new->disks->pdata[j];
    const PlanSnapshotDisk *od = plan_snapshot_find_disk(old, sd->target);
    const PlanDisk *disk = plan_state_find_disk(before, sd->target);
    if (od == NULL || g_strcmp0(od->overlay, sd->overlay) != 0 ||
        g_strcmp0(snapshot_point(disk, old), sd->point) != 0)
      return TRUE;
  }
  return FALSE;
}

static void
add_redefine(PlanWork *w, const PlanSnapshot *snapshot)
{
  PlanStep *step = plan_step_new(PLAN_STEP_REDEFINE_SNAPSHOT);
  step->snapshot = g_strdup(snapshot->name);
  step->definition = plan_snapshot_copy(snapshot);
  g_ptr_array_add(w->plan->steps, step);
}

static const PlanSnapshot *
find_current(const PlanState *st)
{
  for (guint i = 0; i < st->snapshots->len; i++)
    if (((PlanSnapshot *)st->snapshots->pdata[i])->current)
      return st->snapshots->pdata[i];
  return NULL;
}

static void
add_metadata_steps(PlanWork *w)
{
  const PlanState *before = w->before;
  PlanState *after = w->st;
  fill_points(after);

  /* New snapshots first (their parents exist), then the old ones go
   * (libvirt reparents their children itself), then every change. */
  for (guint i = 0; i < after->snapshots->len; i++) {
    const PlanSnapshot *snapshot = after->snapshots->pdata[i];
    if (plan_state_find_snapshot(before, snapshot->name) == NULL)
      add_redefine(w, snapshot);
  }
  for (guint i = 0; i < before->snapshots->len; i++) {
    const PlanSnapshot *snapshot = before->snapshots->pdata[i];
    if (plan_state_find_snapshot(after, snapshot->name) == NULL) {
      PlanStep *step = plan_step_new(PLAN_STEP_DELETE_SNAPSHOT);
      step->snapshot = g_strdup(snapshot->name);
      g_ptr_array_add(w->plan->steps, step);
    }
  }
  for (guint i = 0; i < after->snapshots->len; i++) {
    const PlanSnapshot *snapshot = after->snapshots->pdata[i];
    const PlanSnapshot *old = plan_state_find_snapshot(before, snapshot->name);
    if (old != NULL && snapshot_changed(before, old, snapshot))
      add_redefine(w, snapshot);
  }

  const PlanSnapshot *was = find_current(before), *now = find_current(after);
  if (now != NULL && (was == NULL || strcmp(was->name, now->name) != 0)) {
    PlanStep *step = plan_step_new(PLAN_STEP_SET_CURRENT);
    step->snapshot = g_strdup(now->name);
    g_ptr_array_add(w->plan->steps, step);
  }

  for (guint i = 0; i < after->disks->len; i++) {
    const PlanDisk *disk = after->disks->pdata[i];
    const PlanDisk *old = plan_state_find_disk(before, disk->target);
    if (disk->unsupported == NULL && g_strcmp0(old->active, disk->active) != 0) {
      const PlanImage *active = plan_disk_find_image(disk, disk->active);
      PlanStep *step = plan_step_new(PLAN_STEP_SET_ACTIVE);
      step->disk = g_strdup(disk->target);
      step->image = g_strdup(active->path);
      step->format = active->format;
      g_ptr_array_add(w->plan->steps, step);
    }
  }

  /* Files leave the disk only after the metadata no longer names them. */
  for (guint i = 0; i < w->deletes->len; i++)
    g_ptr_array_add(w->plan->steps, w->deletes->pdata[i]);
  g_ptr_array_set_free_func(w->deletes, NULL);

  for (guint i = 0; i < after->disks->len; i++) {
    PlanDisk *disk = after->disks->pdata[i];
    for (guint j = 0; j < disk->images->len; j++)
      ((PlanImage *)disk->images->pdata[j])->allocation = NULL;
  }
}

/* ------------------------------------------------------------------ */
/* The operations.                                                      */

static gboolean
plan_delete(PlanWork *w, GError **error)
{
  PlanSnapshot *snapshot = plan_state_find_snapshot(w->st, w->op->name);
  if (!plan_check_snapshot_disks(w->st, snapshot, error))
    return FALSE;

  for (guint j = 0; j < snapshot->disks->len; j++) {
    const PlanSnapshotDisk *sd = snapshot->disks->pdata[j];
    PlanDisk *disk = plan_state_find_disk(w->st, sd->target);
    const char *point = snapshot_point(disk, snapshot);
    if (w->op->refuse_open && plan_disk_find_image(disk, point)->pinned) {
      g_set_error(error, PLANNER_ERROR, EBUSY, "cannot delete snapshot %s: disk %s: %s is open for reading",
                  snapshot->name, disk->target, point);
      return FALSE;
    }
    g_hash_table_insert(w->primary, g_strdup(disk->target), g_strdup(point));
  }

  /* libvirt's tree: children move up to the parent, which also becomes
   * current if the deleted snapshot was. */
  g_autofree char *name = g_strdup(snapshot->name);
  g_autofree char *parent = g_strdup(snapshot->parent);
  gboolean was_current = snapshot->current;
  g_ptr_array_remove(w->st->snapshots, snapshot);
  for (guint i = 0; i < w->st->snapshots->len; i++) {
    PlanSnapshot *other = w->st->snapshots->pdata[i];
    if (g_strcmp0(other->parent, name) == 0) {
      g_free(other->parent);
      other->parent = g_strdup(parent);
    }
    if (was_current && g_strcmp0(other->name, parent) == 0)
      other->current = TRUE;
  }

  for (guint i = 0; i < w->st->disks->len; i++) {
    if (!normalize_disk(w, w->st->disks->pdata[i], error)) {
      g_prefix_error(error, "cannot delete snapshot %s: ", name);
      return FALSE;
    }
  }
  return TRUE;
}

static gboolean
plan_rename(PlanWork *w, GError **error)
{
  const char *new_name = w->op->new_name;
  if (!planner_check_name(new_name, error))
    return FALSE;
  if (strcmp(new_name, w->op->name) == 0)
    return TRUE;
  if (plan_state_find_snapshot(w->st, new_name) != NULL) {
    g_set_error(error, PLANNER_ERROR, EEXIST, "cannot rename snapshot %s: %s exists",
                w->op->name, new_name);
    return FALSE;
  }
  PlanSnapshot *snapshot = plan_state_find_snapshot(w->st, w->op->name);
  for (guint i = 0; i < w->st->snapshots->len; i++) {
    PlanSnapshot *other = w->st->snapshots->pdata[i];
    if (g_strcmp0(other->parent, snapshot->name) == 0) {
      g_free(other->parent);
      other->parent = g_strdup(new_name);
    }
  }
  g_free(snapshot->name);
  snapshot->name = g_strdup(new_name);
  return TRUE;
}

static gboolean
plan_revert(PlanWork *w, GError **error)
{
  PlanSnapshot *snapshot = plan_state_find_snapshot(w->st, w->op->name);
  if (w->st->running) {
    g_set_error(error, PLANNER_ERROR, EBUSY, "cannot revert to snapshot %s: the domain is running",
                snapshot->name);
    return FALSE;
  }
  if (!plan_check_snapshot_disks(w->st, snapshot, error))
    return FALSE;

  g_autofree char *keep_name = NULL;
  if (!w->op->discard) {
    keep_name = planner_pre_revert_name(w->op->now);
    for (guint n = 2; plan_state_find_snapshot(w->st, keep_name) != NULL; n++) {
      g_free(keep_name);
      g_autofree char *base = planner_pre_revert_name(w->op->now);
      keep_name = g_strdup_printf("%s-%u", base, n);
    }
  }

  const PlanSnapshot *was_current = find_current(w->st);
  PlanSnapshot *keep = NULL;
  if (keep_name != NULL) {
    keep = plan_state_add_snapshot(w->st, keep_name, w->op->now,
                                   was_current ? was_current->name : NULL, FALSE);
  }

  for (guint j = 0; j < snapshot->disks->len; j++) {
    const PlanSnapshotDisk *sd = snapshot->disks->pdata[j];
    PlanDisk *disk = plan_state_find_disk(w->st, sd->target);
    PlanImage *point = plan_disk_find_image(disk, snapshot_point(disk, snapshot));
    PlanImage *present = plan_disk_find_image(disk, disk->active);

    /* Next to the present, not the point: that may be a template
     * directory the domain only reads. */
    PlanImage *overlay = create_overlay(w, disk, point, present->path, "revert");
    g_free(disk->active);
    disk->active = g_strdup(overlay->path);

    /* The present being left becomes a point in time: libvirt names a
     * point by an overlay on it, so it gets an empty one. */
    if (keep != NULL) {
      PlanImage *keep_overlay = create_overlay(w, disk, present, present->path, "pre-revert");
      plan_snapshot_set_overlay(keep, disk->target, keep_overlay->path);
    }
  }

  for (guint i = 0; i < w->st->snapshots->len; i++) {
    PlanSnapshot *other = w->st->snapshots->pdata[i];
    other->current = other == snapshot;
  }

  for (guint i = 0; i < w->st->disks->len; i++) {
    if (!normalize_disk(w, w->st->disks->pdata[i], error)) {
      g_prefix_error(error, "cannot revert to snapshot %s: ", snapshot->name);
      return FALSE;
    }
  }
  return TRUE;
}

Plan *
planner_plan(const PlanState *state, const PlanOp *op, GError **error)
{
  g_return_val_if_fail(state != NULL && op != NULL, NULL);

  if (!plan_check_state(state, error))
    return NULL;
  if (op->name == NULL || plan_state_find_snapshot(state, op->name) == NULL) {
    g_set_error(error, PLANNER_ERROR, ENOENT, "no snapshot %s", op->name ? op->name : "(null)");
    return NULL;
  }

  PlanWork w = {
    .before = state,
    .op = op,
    .st = plan_state_copy(state),
    .plan = plan_new(),
    .maps = g_ptr_array_new_with_free_func((GDestroyNotify)chain_bitmap_free),
    .fresh = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
    .deferred = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
    .primary = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free),
    .deletes = g_ptr_array_new_with_free_func((GDestroyNotify)plan_step_free),
    .dropped = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL),
  };

  gboolean ok = FALSE;
  switch (op->kind) {
  case PLAN_OP_DELETE:
    ok = plan_delete(&w, error);
    break;
  case PLAN_OP_RENAME:
    ok = plan_rename(&w, error);
    break;
  case PLAN_OP_REVERT:
    ok = plan_revert(&w, error);
    break;
  default:
    g_set_error(error, PLANNER_ERROR, EINVAL, "unknown operation %d", (int)op->kind);
    break;
  }
  if (!ok) {
    plan_work_clear(&w);
    return NULL;
  }

  add_metadata_steps(&w);
  Plan *plan = g_steal_pointer(&w.plan);
  plan->after = g_steal_pointer(&w.st);
  plan_work_clear(&w);
  return plan;
}
