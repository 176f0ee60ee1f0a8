/* plan-state.c: the planner's plain data: building, copying, freeing and
 * looking up PlanState, PlanStep and Plan.
 *
 * No rules about snapshots live here; see planner.c.  Lookups are linear:
 * a domain has a handful of disks, tens of images and snapshots.
 */
#include "planner-private.h"

static void
plan_image_free(PlanImage *image)
{
  if (image == NULL)
    return;
  g_free(image->path);
  g_free(image->backing);
  g_free(image);
}

static void
plan_disk_free(PlanDisk *disk)
{
  if (disk == NULL)
    return;
  g_free(disk->target);
  g_free(disk->active);
  g_free(disk->unsupported);
  g_ptr_array_unref(disk->images);
  g_free(disk);
}

static void
plan_snapshot_disk_free(PlanSnapshotDisk *sd)
{
  if (sd == NULL)
    return;
  g_free(sd->target);
  g_free(sd->overlay);
  g_free(sd->point);
  g_free(sd);
}

void
plan_snapshot_free(PlanSnapshot *snapshot)
{
  if (snapshot == NULL)
    return;
  g_free(snapshot->name);
  g_free(snapshot->parent);
  g_ptr_array_unref(snapshot->disks);
  g_free(snapshot);
}

PlanState *
plan_state_new(gboolean running)
{
  PlanState *state = g_new0(PlanState, 1);
  state->running = running;
  state->disks = g_ptr_array_new_with_free_func((GDestroyNotify)plan_disk_free);
  state->snapshots = g_ptr_array_new_with_free_func((GDestroyNotify)plan_snapshot_free);
  return state;
}

void
plan_state_free(PlanState *state)
{
  if (state == NULL)
    return;
  g_ptr_array_unref(state->disks);
  g_ptr_array_unref(state->snapshots);
  g_free(state);
}

PlanDisk *
plan_state_add_disk(PlanState *state, const char *target, const char *active)
{
  PlanDisk *disk = g_new0(PlanDisk, 1);
  disk->target = g_strdup(target);
  disk->active = g_strdup(active);
  disk->images = g_ptr_array_new_with_free_func((GDestroyNotify)plan_image_free);
  g_ptr_array_add(state->disks, disk);
  return disk;
}

PlanImage *
plan_disk_add_image(PlanDisk *disk, const char *path, ChainFormat format, const char *backing,
                    const ChainBitmap *allocation)
{
  PlanImage *image = g_new0(PlanImage, 1);
  image->path = g_strdup(path);
  image->format = format;
  image->backing = g_strdup(backing);
  image->allocation = allocation;
  g_ptr_array_add(disk->images, image);
  return image;
}

PlanSnapshot *
plan_snapshot_new(const char *name, gint64 creation_time, const char *parent, gboolean current)
{
  PlanSnapshot *snapshot = g_new0(PlanSnapshot, 1);
  snapshot->name = g_strdup(name);
  snapshot->creation_time = creation_time;
  snapshot->parent = g_strdup(parent);
  snapshot->current = current;
  snapshot->disks = g_ptr_array_new_with_free_func((GDestroyNotify)plan_snapshot_disk_free);
  return snapshot;
}

PlanSnapshot *
plan_state_add_snapshot(PlanState *state, const char *name, gint64 creation_time,
                        const char *parent, gboolean current)
{
  PlanSnapshot *snapshot = plan_snapshot_new(name, creation_time, parent, current);
  g_ptr_array_add(state->snapshots, snapshot);
  return snapshot;
}

PlanSnapshotDisk *
plan_snapshot_find_disk(const PlanSnapshot *snapshot, const char *target)
{
  for (guint i = 0; i < snapshot->disks->len; i++) {
    PlanSnapshotDisk *sd = snapshot->disks->pdata[i];
    if (g_strcmp0(sd->target, target) == 0)
      return sd;
  }
  return NULL;
}

void
plan_snapshot_set_overlay(PlanSnapshot *snapshot, const char *target, const char *overlay)
{
  PlanSnapshotDisk *sd = plan_snapshot_find_disk(snapshot, target);
  if (sd == NULL) {
    sd = g_new0(PlanSnapshotDisk, 1);
    sd->target = g_strdup(target);
    g_ptr_array_add(snapshot->disks, sd);
  }
  g_free(sd->overlay);
  sd->overlay = g_strdup(overlay);
}

const char *
plan_snapshot_overlay(const PlanSnapshot *snapshot, const char *target)
{
  PlanSnapshotDisk *sd = plan_snapshot_find_disk(snapshot, target);
  return sd ? sd->overlay : NULL;
}

PlanSnapshot *
plan_snapshot_copy(const PlanSnapshot *snapshot)
{
  PlanSnapshot *copy = plan_snapshot_new(snapshot->name, snapshot->creation_time,
                                         snapshot->parent, snapshot->current);
  for (guint i = 0; i < snapshot->disks->len; i++) {
    const PlanSnapshotDisk *sd = snapshot->disks->pdata[i];
    PlanSnapshotDisk *c = g_new0(PlanSnapshotDisk, 1);
    c->target = g_strdup(sd->target);
    c->overlay = g_strdup(sd->overlay);
    c->point = g_strdup(sd->point);
    g_ptr_array_add(copy->disks, c);
  }
  return copy;
}

PlanState *
plan_state_copy(const PlanState *state)
{
  PlanState *copy = plan_state_new(state->running);
  for (guint i = 0; i < state->disks->len; i++) {
    const PlanDisk *disk = state->disks->pdata[i];
    PlanDisk *d = plan_state_add_disk(copy, disk->target, disk->active);
    d->unsupported = g_strdup(disk->unsupported);
    for (guint j = 0; j < disk->images->len; j++) {
      const PlanImage *image = disk->images->pdata[j];
      PlanImage *im = plan_disk_add_image(d, image->path, image->format, image->backing,
                                          image->allocation);
      im->pinned = image->pinned;
      im->shared = image->shared;
    }
  }
  for (guint i = 0; i < state->snapshots->len; i++)
    g_ptr_array_add(copy->snapshots, plan_snapshot_copy(state->snapshots->pdata[i]));
  return copy;
}

PlanDisk *
plan_state_find_disk(const PlanState *state, const char *target)
{
  for (guint i = 0; i < state->disks->len; i++) {
    PlanDisk *disk = state->disks->pdata[i];
    if (g_strcmp0(disk->target, target) == 0)
      return disk;
  }
  return NULL;
}

PlanSnapshot *
plan_state_find_snapshot(const PlanState *state, const char *name)
{
  for (guint i = 0; i < state->snapshots->len; i++) {
    PlanSnapshot *snapshot = state->snapshots->pdata[i];
    if (g_strcmp0(snapshot->name, name) == 0)
      return snapshot;
  }
  return NULL;
}

PlanImage *
plan_disk_find_image(const PlanDisk *disk, const char *path)
{
  if (path == NULL)
    return NULL;
  for (guint i = 0; i < disk->images->len; i++) {
    PlanImage *image = disk->images->pdata[i];
    if (strcmp(image->path, path) == 0)
      return image;
  }
  return NULL;
}

/* The point image of snapshot on disk: backing(O(S)); NULL if O(S) is not
 * in the graph. */
const char *
plan_snapshot_point(const PlanDisk *disk, const PlanSnapshot *snapshot)
{
  PlanImage *overlay = plan_disk_find_image(disk, plan_snapshot_overlay(snapshot, disk->target));
  return overlay ? overlay->backing : NULL;
}

/* Whether path is in the chain of the disk's active image. */
gboolean
plan_disk_in_active_chain(const PlanDisk *disk, const char *path)
{
  guint depth = 0;
  for (PlanImage *image = plan_disk_find_image(disk, disk->active);
       image != NULL && depth <= disk->images->len;
       image = plan_disk_find_image(disk, image->backing), depth++)
    if (strcmp(image->path, path) == 0)
      return TRUE;
  return FALSE;
}

const PlanSnapshot *
plan_state_current(const PlanState *st)
{
  for (guint i = 0; i < st->snapshots->len; i++)
    if (((PlanSnapshot *)st->snapshots->pdata[i])->current)
      return st->snapshots->pdata[i];
  return NULL;
}

/* ------------------------------------------------------------------ */

PlanStep *
plan_step_new(PlanStepKind kind)
{
  PlanStep *step = g_new0(PlanStep, 1);
  step->kind = kind;
  return step;
}

void
plan_step_free(PlanStep *step)
{
  if (step == NULL)
    return;
  g_free(step->disk);
  g_free(step->image);
  g_free(step->backing);
  g_free(step->snapshot);
  plan_snapshot_free(step->definition);
  g_free(step);
}

static const char *const step_kind_names[] = {
  [PLAN_STEP_COMMIT] = "commit",
  [PLAN_STEP_ACTIVE_COMMIT] = "active-commit",
  [PLAN_STEP_PULL] = "pull",
  [PLAN_STEP_REBASE_UNSAFE] = "rebase-unsafe",
  [PLAN_STEP_CREATE_OVERLAY] = "create-overlay",
  [PLAN_STEP_SET_ACTIVE] = "set-active",
  [PLAN_STEP_REDEFINE_SNAPSHOT] = "redefine-snapshot",
  [PLAN_STEP_DELETE_SNAPSHOT] = "delete-snapshot",
  [PLAN_STEP_SET_CURRENT] = "set-current",
  [PLAN_STEP_DELETE_FILE] = "delete-file",
};

const char *
plan_step_kind_name(PlanStepKind kind)
{
  if ((guint)kind >= G_N_ELEMENTS(step_kind_names))
    return NULL;
  return step_kind_names[kind];
}

static void
plan_choice_free(PlanChoice *choice)
{
  if (choice == NULL)
    return;
  g_free(choice->disk);
  g_free(choice->layer);
  g_free(choice->child);
  g_free(choice->reason);
  g_free(choice);
}

Plan *
plan_new(void)
{
  Plan *plan = g_new0(Plan, 1);
  plan->steps = g_ptr_array_new_with_free_func((GDestroyNotify)plan_step_free);
  plan->choices = g_ptr_array_new_with_free_func((GDestroyNotify)plan_choice_free);
  return plan;
}

void
plan_free(Plan *plan)
{
  if (plan == NULL)
    return;
  g_ptr_array_unref(plan->steps);
  g_ptr_array_unref(plan->choices);
  plan_state_free(plan->after);
  g_free(plan);
}
