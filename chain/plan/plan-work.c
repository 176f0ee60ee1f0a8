/* plan-work.c: recording what a plan does, into the PlanWork that
 * planner_plan() builds: steps, files that leave the graph (deleted last),
 * new overlays.  Used by the operations (planner.c) and the normal-form
 * rules (plan-normal.c, plan-merge.c); uses only the state (plan-state.c).
 *
 * Thread model: none; a PlanWork belongs to one planner_plan() call.
 */
#include <string.h>

#include "planner-private.h"

char *
plan_disk_key(const PlanDisk *disk, const char *path)
{
  return g_strconcat(disk->target, "\t", path, NULL);
}

/* A new step on image of disk, over backing (or NULL). */
static PlanStep *
file_step(PlanStepKind kind, const PlanDisk *disk, const PlanImage *image,
          const PlanImage *backing)
{
  PlanStep *step = plan_step_new(kind);
  step->disk = g_strdup(disk->target);
  step->image = g_strdup(image->path);
  step->format = image->format;
  if (backing != NULL) {
    step->backing = g_strdup(backing->path);
    step->backing_format = backing->format;
  }
  return step;
}

PlanStep *
plan_work_add_step(PlanWork *w, PlanStepKind kind, gboolean block_job, const PlanDisk *disk,
                   const PlanImage *image, const PlanImage *backing)
{
  PlanStep *step = file_step(kind, disk, image, backing);
  step->block_job = block_job;
  g_ptr_array_add(w->plan->steps, step);
  return step;
}

void
plan_work_drop_image(PlanWork *w, PlanDisk *disk, PlanImage *image)
{
  g_ptr_array_add(w->deletes, file_step(PLAN_STEP_DELETE_FILE, disk, image, NULL));
  g_hash_table_add(w->dropped, g_strdup(image->path));
  g_ptr_array_remove(disk->images, image);
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

PlanImage *
plan_work_create_overlay(PlanWork *w, PlanDisk *disk, PlanImage *backing, const char *near,
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
  g_hash_table_add(w->fresh, plan_disk_key(disk, path));
  plan_work_add_step(w, PLAN_STEP_CREATE_OVERLAY, FALSE, disk, image, backing);
  return image;
}
