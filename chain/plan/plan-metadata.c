/* plan-metadata.c: the metadata steps of a plan, derived by comparing
 * the snapshots and active images before and after it: new snapshots are
 * defined, gone ones deleted, changed ones redefined, the current one and
 * the active images set; the files that left the graph are deleted last,
 * once no metadata names them.
 *
 * Thread model: none; works on one planner_plan() call's PlanWork.
 */
#include <string.h>

#include "planner-private.h"

static void
fill_points(PlanState *st)
{
  for (guint i = 0; i < st->snapshots->len; i++) {
    PlanSnapshot *snapshot = st->snapshots->pdata[i];
    for (guint j = 0; j < snapshot->disks->len; j++) {
      PlanSnapshotDisk *sd = snapshot->disks->pdata[j];
      PlanDisk *disk = plan_state_find_disk(st, sd->target);
      g_free(sd->point);
      sd->point = disk ? g_strdup(plan_snapshot_point(disk, snapshot)) : NULL;
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
        g_strcmp0(plan_snapshot_point(disk, old), sd->point) != 0)
      return TRUE;
  }
  return FALSE;
}

static PlanStep *
add_snapshot_step(PlanWork *w, PlanStepKind kind, const char *name)
{
  PlanStep *step = plan_step_new(kind);
  step->snapshot = g_strdup(name);
  g_ptr_array_add(w->plan->steps, step);
  return step;
}

static void
add_redefine(PlanWork *w, const PlanSnapshot *snapshot)
{
  add_snapshot_step(w, PLAN_STEP_REDEFINE_SNAPSHOT, snapshot->name)->definition =
    plan_snapshot_copy(snapshot);
}

void
plan_add_metadata_steps(PlanWork *w)
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
    if (plan_state_find_snapshot(after, snapshot->name) == NULL)
      add_snapshot_step(w, PLAN_STEP_DELETE_SNAPSHOT, snapshot->name);
  }
  for (guint i = 0; i < after->snapshots->len; i++) {
    const PlanSnapshot *snapshot = after->snapshots->pdata[i];
    const PlanSnapshot *old = plan_state_find_snapshot(before, snapshot->name);
    if (old != NULL && snapshot_changed(before, old, snapshot))
      add_redefine(w, snapshot);
  }

  const PlanSnapshot *was = plan_state_current(before), *now = plan_state_current(after);
  if (now != NULL && (was == NULL || strcmp(was->name, now->name) != 0))
    add_snapshot_step(w, PLAN_STEP_SET_CURRENT, now->name);

  for (guint i = 0; i < after->disks->len; i++) {
    const PlanDisk *disk = after->disks->pdata[i];
    const PlanDisk *old = plan_state_find_disk(before, disk->target);
    if (disk->unsupported == NULL && g_strcmp0(old->active, disk->active) != 0)
      plan_work_add_step(w, PLAN_STEP_SET_ACTIVE, FALSE, disk,
                         plan_disk_find_image(disk, disk->active), NULL);
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
