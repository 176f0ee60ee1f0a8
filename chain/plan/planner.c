/* planner.c: DELETE, RENAME and REVERT as plans.
 *
 * Every operation is first applied to a working copy of the state's
 * metadata (a snapshot goes, gets a new name, or the domain gets a new
 * active overlay), then the image graph of each disk is brought back to its
 * normal form (plan-normal.c, plan-merge.c), and the steps that get the
 * files there are recorded (plan-work.c).  Then the metadata steps are
 * derived by comparing the snapshots and active images before and after
 * (plan-metadata.c), and the files that left the graph are deleted last.
 * Deleting the snapshot is thus the same code as the garbage collection
 * after a revert: a branch point left with one child by any plan is merged
 * away by that plan.
 *
 * Thread model: none of its own; planner_plan() may run on any thread.
 */
#include <errno.h>
#include <string.h>

#include "planner-private.h"

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
    const char *point = plan_snapshot_point(disk, snapshot);
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
    if (!plan_normalize_disk(w, w->st->disks->pdata[i], error)) {
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

  const PlanSnapshot *was_current = plan_state_current(w->st);
  PlanSnapshot *keep = NULL;
  if (keep_name != NULL) {
    keep = plan_state_add_snapshot(w->st, keep_name, w->op->now,
                                   was_current ? was_current->name : NULL, FALSE);
  }

  for (guint j = 0; j < snapshot->disks->len; j++) {
    const PlanSnapshotDisk *sd = snapshot->disks->pdata[j];
    PlanDisk *disk = plan_state_find_disk(w->st, sd->target);
    PlanImage *point = plan_disk_find_image(disk, plan_snapshot_point(disk, snapshot));
    PlanImage *present = plan_disk_find_image(disk, disk->active);

    /* Next to the present, not the point: that may be a template
     * directory the domain only reads. */
    PlanImage *overlay = plan_work_create_overlay(w, disk, point, present->path, "revert");
    g_free(disk->active);
    disk->active = g_strdup(overlay->path);

    /* The present being left becomes a point in time: libvirt names a
     * point by an overlay on it, so it gets an empty one. */
    if (keep != NULL) {
      PlanImage *keep_overlay = plan_work_create_overlay(w, disk, present, present->path, "pre-revert");
      plan_snapshot_set_overlay(keep, disk->target, keep_overlay->path);
    }
  }

  for (guint i = 0; i < w->st->snapshots->len; i++) {
    PlanSnapshot *other = w->st->snapshots->pdata[i];
    other->current = other == snapshot;
  }

  for (guint i = 0; i < w->st->disks->len; i++) {
    if (!plan_normalize_disk(w, w->st->disks->pdata[i], error)) {
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

  plan_add_metadata_steps(&w);
  Plan *plan = g_steal_pointer(&w.plan);
  plan->after = g_steal_pointer(&w.st);
  plan_work_clear(&w);
  return plan;
}
