/* plan-check.c: the planner's error domain and what it refuses before it
 * plans: a state that contradicts itself (EINVAL), chains it cannot handle
 * (EOPNOTSUPP), bad snapshot names; and the UTC stamps that name new
 * snapshots and files.
 *
 * A checked state has, for every supported disk: unique image paths, an
 * active image and every backing file in the graph, no loops, qcow2 for
 * every file with a backing file; every snapshot disk names a disk of the
 * domain and, when that disk is supported, an overlay in its graph that
 * has a backing file.  The rest of the planner relies on these.
 */
#include <errno.h>
#include <string.h>

#include "planner-private.h"

G_DEFINE_QUARK(planner-error-quark, planner_error)

static gboolean
check_disk(const PlanDisk *disk, GError **error)
{
  if (disk->unsupported != NULL)
    return TRUE;

  g_autoptr(GHashTable) by_path = g_hash_table_new(g_str_hash, g_str_equal);
  for (guint i = 0; i < disk->images->len; i++) {
    const PlanImage *image = disk->images->pdata[i];
    if (image->path == NULL || !g_hash_table_insert(by_path, image->path, (gpointer)image)) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "disk %s: image %s is listed twice",
                  disk->target, image->path ? image->path : "(null)");
      return FALSE;
    }
  }
  if (disk->active == NULL || !g_hash_table_contains(by_path, disk->active)) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "disk %s: active image %s is not in its graph",
                disk->target, disk->active ? disk->active : "(none)");
    return FALSE;
  }

  /* Images whose chain is known to end (no loop). */
  g_autoptr(GHashTable) ends = g_hash_table_new(NULL, NULL);
  for (guint i = 0; i < disk->images->len; i++) {
    const PlanImage *image = disk->images->pdata[i];
    if (image->backing == NULL)
      continue;
    if (!g_hash_table_contains(by_path, image->backing)) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "disk %s: backing file %s of %s is not in its graph",
                  disk->target, image->backing, image->path);
      return FALSE;
    }
    if (image->format != CHAIN_FORMAT_QCOW2) {
      g_set_error(error, PLANNER_ERROR, EOPNOTSUPP, "disk %s: %s has a backing file but is not qcow2",
                  disk->target, image->path);
      return FALSE;
    }
    /* A walk longer than the graph has a loop. */
    guint depth = 0;
    const PlanImage *up = image;
    while (up != NULL && !g_hash_table_contains(ends, up)) {
      if (++depth > disk->images->len) {
        g_set_error(error, PLANNER_ERROR, EINVAL, "disk %s: the backing chain of %s loops",
                    disk->target, image->path);
        return FALSE;
      }
      up = up->backing ? g_hash_table_lookup(by_path, up->backing) : NULL;
    }
    for (up = image; up != NULL && g_hash_table_add(ends, (gpointer)up);)
      up = up->backing ? g_hash_table_lookup(by_path, up->backing) : NULL;
  }
  return TRUE;
}

gboolean
plan_check_state(const PlanState *st, GError **error)
{
  for (guint i = 0; i < st->disks->len; i++) {
    const PlanDisk *disk = st->disks->pdata[i];
    if (plan_state_find_disk(st, disk->target) != disk) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "disk %s is listed twice", disk->target);
      return FALSE;
    }
    if (!check_disk(disk, error))
      return FALSE;
  }
  for (guint i = 0; i < st->snapshots->len; i++) {
    const PlanSnapshot *snapshot = st->snapshots->pdata[i];
    if (plan_state_find_snapshot(st, snapshot->name) != snapshot) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "snapshot %s is listed twice", snapshot->name);
      return FALSE;
    }
    for (guint j = 0; j < snapshot->disks->len; j++) {
      const PlanSnapshotDisk *sd = snapshot->disks->pdata[j];
      const PlanDisk *disk = plan_state_find_disk(st, sd->target);
      if (disk == NULL) {
        g_set_error(error, PLANNER_ERROR, EINVAL, "snapshot %s names disk %s, which the domain lacks",
                    snapshot->name, sd->target);
        return FALSE;
      }
      if (disk->unsupported != NULL)
        continue;
      const PlanImage *overlay = plan_disk_find_image(disk, sd->overlay);
      if (overlay == NULL) {
        g_set_error(error, PLANNER_ERROR, EINVAL, "snapshot %s: overlay %s of disk %s is not in its graph",
                    snapshot->name, sd->overlay ? sd->overlay : "(none)", sd->target);
        return FALSE;
      }
      if (overlay->backing == NULL) {
        g_set_error(error, PLANNER_ERROR, EOPNOTSUPP,
                    "snapshot %s: overlay %s of disk %s has no backing file (not an external snapshot)",
                    snapshot->name, sd->overlay, sd->target);
        return FALSE;
      }
    }
  }
  return TRUE;
}

/* The disks a snapshot covers must all be ones the planner can handle. */
gboolean
plan_check_snapshot_disks(const PlanState *st, const PlanSnapshot *snapshot, GError **error)
{
  for (guint j = 0; j < snapshot->disks->len; j++) {
    const PlanSnapshotDisk *sd = snapshot->disks->pdata[j];
    const PlanDisk *disk = plan_state_find_disk(st, sd->target);
    if (disk->unsupported != NULL) {
      g_set_error(error, PLANNER_ERROR, EOPNOTSUPP, "snapshot %s: disk %s: %s",
                  snapshot->name, disk->target, disk->unsupported);
      return FALSE;
    }
  }
  return TRUE;
}

gboolean
planner_check_name(const char *name, GError **error)
{
  if (name == NULL || *name == '\0') {
    g_set_error(error, PLANNER_ERROR, EINVAL, "a snapshot name must not be empty");
    return FALSE;
  }
  if (strlen(name) > PLANNER_NAME_MAX) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "snapshot name of %zu bytes is longer than %d",
                strlen(name), PLANNER_NAME_MAX);
    return FALSE;
  }
  if (!g_utf8_validate(name, -1, NULL)) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "snapshot name is not valid UTF-8");
    return FALSE;
  }
  for (const char *p = name; *p; p++) {
    if ((guchar)*p < 0x20 || *p == 0x7f) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "snapshot name holds control character 0x%02x",
                  (guchar)*p);
      return FALSE;
    }
  }
  return TRUE;
}

char *
plan_utc_stamp(gint64 now)
{
  g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(now);
  if (dt == NULL)
    dt = g_date_time_new_from_unix_utc(0);
  return g_date_time_format(dt, "%Y%m%dT%H%M%SZ");
}

char *
planner_pre_revert_name(gint64 now)
{
  g_autofree char *stamp = plan_utc_stamp(now);
  return g_strconcat("pre-revert-", stamp, NULL);
}

gboolean
planner_check_create(const PlanState *state, const char *name, GError **error)
{
  if (!planner_check_name(name, error))
    return FALSE;
  if (plan_state_find_snapshot(state, name) != NULL) {
    g_set_error(error, PLANNER_ERROR, EEXIST, "snapshot %s exists", name);
    return FALSE;
  }
  return TRUE;
}
