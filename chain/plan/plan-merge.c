/* plan-merge.c: normal-form rule 3, merging an unnamed layer F into its
 * only child C (commit) or C's data down from F (pull): the cost of each
 * direction, whether it is safe, the choice, and its steps.
 *
 * Safety: the planner writes data only into the layer being merged away
 * (commit) or into its only child (pull), never into a shared file, and
 * never so that an open reader sees data change.  Commit writes into F
 * while F has no other child and no point in time of its own: the one
 * case where a backing file may change while something depends on it.
 * Readers keep the chain they opened (descriptors), so: a pull into C is
 * refused when any reader's chain holds C; a commit into F when a
 * reader's chain reaches F without passing C (C hides from it exactly the
 * clusters the commit writes).  Unlinking a file a reader has open is
 * harmless.
 *
 * Thread model: none; works on one planner_plan() call's PlanWork.
 */
#include <errno.h>
#include <string.h>

#include "planner-private.h"

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

/* Why target may not be written by merging it with other, or NULL: one
 * of them is used outside this domain, or a reader reaches target
 * without passing keep (NULL: any reader of target). */
static char *
unsafe_to_write(const PlanWork *w, const PlanDisk *disk, const PlanImage *target,
                const PlanImage *other, const char *keep)
{
  const PlanImage *layers[] = { target, other };
  for (guint i = 0; i < G_N_ELEMENTS(layers); i++)
    if (layers[i]->shared)
      return g_strdup_printf("%s is used outside this domain", layers[i]->path);
  const char *reader = reader_of(w, disk, target->path, keep);
  if (reader == NULL)
    return NULL;
  if (strcmp(target->path, reader) == 0)
    return g_strdup_printf("%s is open for reading", target->path);
  return g_strdup_printf("%s is open for reading (under %s)", target->path, reader);
}

/* Why commit (writes c's clusters into f, drops c) may not run now, or
 * NULL.  A reader whose chain has c above f never reads those clusters
 * of f; only one that reaches f some other way (f's own point, or through
 * a file an earlier step of this plan took out of f's way) would see them. */
static char *
commit_unsafe(const PlanWork *w, const PlanDisk *disk, const PlanImage *f, const PlanImage *c)
{
  return unsafe_to_write(w, disk, f, c, c->path);
}

/* Why pull (writes into c, drops f) may not run now, or NULL.  The data
 * a reader of c sees would not change, but its file would, and no plan
 * writes into a layer an open reader depends on. */
static char *
pull_unsafe(const PlanWork *w, const PlanDisk *disk, const PlanImage *f, const PlanImage *c)
{
  char *why = unsafe_to_write(w, disk, c, f, NULL);
  if (why != NULL)
    return why;
  if (w->st->running && g_strcmp0(disk->active, c->path) != 0 && plan_disk_in_active_chain(disk, c->path))
    return g_strdup_printf("libvirt cannot pull into %s, an intermediate layer of the running domain",
                           c->path);
  return NULL;
}

static void
do_commit(PlanWork *w, PlanDisk *disk, PlanImage *f, PlanImage *c)
{
  gboolean running_chain = w->st->running && plan_disk_in_active_chain(disk, c->path);
  gboolean c_active = g_strcmp0(disk->active, c->path) == 0;

  if (running_chain && c_active)
    plan_work_add_step(w, PLAN_STEP_ACTIVE_COMMIT, TRUE, disk, c, f);
  else
    plan_work_add_step(w, PLAN_STEP_COMMIT, running_chain, disk, c, f);

  /* C's children now back onto F.  In the running chain libvirt has
   * already moved the pointer of C's child; every other child is offline. */
  for (guint i = 0; i < disk->images->len; i++) {
    PlanImage *child = disk->images->pdata[i];
    if (g_strcmp0(child->backing, c->path) != 0)
      continue;
    if (!(running_chain && plan_disk_in_active_chain(disk, child->path)))
      plan_work_add_step(w, PLAN_STEP_REBASE_UNSAFE, FALSE, disk, child, f);
    g_free(child->backing);
    child->backing = g_strdup(f->path);
  }
  if (c_active) {
    g_free(disk->active);
    disk->active = g_strdup(f->path);
  }
  f->allocation = bitmap_union(w, f->allocation, c->allocation);
  /* No remaining snapshot names C: its point would be F, which is unnamed. */
  plan_work_drop_image(w, disk, c);
}

static void
do_pull(PlanWork *w, PlanDisk *disk, PlanImage *f, PlanImage *c)
{
  gboolean block = w->st->running && g_strcmp0(disk->active, c->path) == 0;
  PlanImage *base = plan_disk_find_image(disk, f->backing);

  plan_work_add_step(w, PLAN_STEP_PULL, block, disk, c, base);
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
  plan_work_drop_image(w, disk, f);
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

gboolean
plan_merge_layer(PlanWork *w, PlanDisk *disk, PlanImage *f, PlanImage *c, gboolean *merged,
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
    g_hash_table_add(w->deferred, plan_disk_key(disk, f->path));
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
    g_hash_table_add(w->deferred, plan_disk_key(disk, f->path));
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
