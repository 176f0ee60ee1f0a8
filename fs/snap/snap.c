/* snap.c: the Snap: its life cycle, and the hooks through which the
 * backend (fs/virt) runs fs/snap's code without knowing it.
 *
 *   ready        on the first connection, before anyone else may use it:
 *                finish the @now freezes and the plans a crash left
 *                (thaw.c, plan.c)
 *   model_built  on every model before it is published: mark the domains
 *                frozen for @now (freeze.c), drop the snapshots a running
 *                plan deletes (plan.c)
 *   policy_images on every model before its image policy is collected:
 *                the frozen images of the freeze records (freeze.c)
 *
 * Thread model: snap_new() and snap_free() run on the thread that mounts
 * and unmounts; the hooks on the backend's threads (see backend-virt.h).
 */
#include <errno.h>

#include "snap-private.h"

static void
on_ready(gpointer data)
{
  Snap *snap = data;
  snap_state_remove_torn(snap->state_dir);
  snap_freeze_repair(snap, NULL);
  snap_recover(snap);
}

static void
on_model_built(BackendModel *model, gpointer data)
{
  Snap *snap = data;
  snap_freeze_mark_model(snap, model);
  snap_plan_filter_model(snap, model);
}

static char **
on_policy_images(gpointer data)
{
  return snap_freeze_policy_images(data);
}

static const BackendHooks hooks = {
  .ready = on_ready,
  .model_built = on_model_built,
  .policy_images = on_policy_images,
};

/* Frees snap; open freezes are thawed first when thaw is set. */
static void
snap_destroy(Snap *snap, gboolean thaw)
{
  if (!snap)
    return;
  if (thaw && snap->backend)
    snap_freeze_thaw_all(snap);
  /* The backend's threads call the hooks until it is gone. */
  g_clear_pointer(&snap->backend, backend_free);
  snap_freeze_clear(snap);
  snap_plan_clear(snap);
  snap_pins_clear(snap);
  snap_status_clear_all(snap);
  snap_queue_free(snap->queue);
  g_mutex_clear(&snap->lock);
  g_free(snap->state_dir);
  g_free(snap);
}

Snap *
snap_new(const SnapOptions *options, GError **error)
{
  g_return_val_if_fail(options && options->state_dir, NULL);
  if (g_mkdir_with_parents(options->state_dir, 0700) < 0) {
    int err = errno;
    g_set_error(error, BACKEND_ERROR, err, "cannot create state directory %s: %s",
                options->state_dir, g_strerror(err));
    return NULL;
  }
  Snap *snap = g_new0(Snap, 1);
  snap->state_dir = g_strdup(options->state_dir);
  snap->revert_discard = options->revert_discard;
  snap->queue = snap_queue_new();
  g_mutex_init(&snap->lock);
  snap_freeze_init(snap);
  snap_plan_init(snap);
  snap_pins_init(snap);
  snap_status_init(snap);
  snap->backend = backend_new(&options->backend, &hooks, snap, error);
  if (!snap->backend || !backend_start(snap->backend, error)) {
    snap_destroy(snap, FALSE);
    return NULL;
  }
  return snap;
}

void
snap_free(Snap *snap)
{
  snap_destroy(snap, TRUE);
}

void
snap_abandon(Snap *snap)
{
  snap_destroy(snap, FALSE);
}

Backend *
snap_get_backend(Snap *snap)
{
  return snap->backend;
}
