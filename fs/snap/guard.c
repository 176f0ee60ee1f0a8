/* guard.c: the image policy on the change path (guard.h).
 *
 * What each step touches (planner.h says what each step runs):
 *   commit, active-commit  writes into backing, which must be in the
 *                          chain of image: that whole chain is walked
 *   pull                   writes into image from its chain and from the
 *                          chain of the new backing: both are walked
 *   rebase-unsafe          rewrites image's header to name backing: image
 *                          is walked (itself), backing's chain in full
 *   create-overlay         creates image (and image.virtsnapfs-tmp) on
 *                          backing: both places, backing's chain
 *   set-active             the domain is pointed at image: its chain
 *   delete-file            image's place
 * A walk that fails, or a place that is not in an image directory, is EIO
 * naming the file and the reason.
 *
 * The published model can be a poll behind libvirt (a domain defined or
 * moved to another directory a moment ago): a refusal is checked once
 * more against a model read afresh before it stands.
 *
 * Thread model: see guard.h.
 */
#include <errno.h>

#include "guard.h"
#include "policy.h"

struct _SnapGuard {
  Snap *snap;
  gboolean fresh;     /* the model was read for this guard */
  BackendModel *model;
  GPtrArray *dirs;    /* the model's directories and STATE_DIR/now, NULL-terminated */
  ChainPolicy policy; /* dirs, and the model's devices */
};

/* Takes the policy of the published model. */
static void
load(SnapGuard *guard)
{
  g_clear_pointer(&guard->model, backend_model_unref);
  g_clear_pointer(&guard->dirs, g_ptr_array_unref);
  guard->model = backend_get_model(guard->snap->backend);
  guard->dirs = g_ptr_array_new_with_free_func(g_free);
  for (char **d = guard->model->image_dirs; *d; d++)
    g_ptr_array_add(guard->dirs, g_strdup(*d));
  g_ptr_array_add(guard->dirs, g_build_filename(guard->snap->state_dir, "now", NULL));
  g_ptr_array_add(guard->dirs, NULL);
  guard->policy = guard->model->policy;
  guard->policy.image_dirs = (const char *const *)guard->dirs->pdata;
}

/* After a refusal: TRUE when the policy was reloaded from a model read
 * now, and the check should run again. */
static gboolean
refresh(SnapGuard *guard)
{
  if (guard->fresh)
    return FALSE;
  guard->fresh = TRUE;
  g_autoptr(GError) error = NULL;
  if (!backend_refresh(guard->snap->backend, &error)) {
    g_debug("image policy: %s", error->message);
    return FALSE;
  }
  load(guard);
  return TRUE;
}

SnapGuard *
snap_guard_new(Snap *snap, GError **error)
{
  g_autoptr(SnapGuard) guard = g_new0(SnapGuard, 1);
  guard->snap = snap;
  load(guard);
  if (guard->model->generation == 0) {
    if (!backend_refresh(snap->backend, error))
      return NULL;
    guard->fresh = TRUE;
    load(guard);
  }
  return g_steal_pointer(&guard);
}

void
snap_guard_free(SnapGuard *guard)
{
  if (!guard)
    return;
  g_clear_pointer(&guard->dirs, g_ptr_array_unref);
  g_clear_pointer(&guard->model, backend_model_unref);
  g_free(guard);
}

const ChainPolicy *
snap_guard_policy(const SnapGuard *guard)
{
  return &guard->policy;
}

gboolean
snap_guard_chain(SnapGuard *guard, const char *path, ChainFormat format,
                 const ChainFormat *backing_formats, guint limit, ChainWalk *walk,
                 GError **error)
{
  g_auto(ChainWalk) own = {0};
  ChainWalk *into = walk ? walk : &own;
  for (;;) {
    g_autoptr(GError) local = NULL;
    if (backend_walk(&guard->policy, path, format, backing_formats, limit, into, &local))
      return TRUE;
    if (!refresh(guard)) {
      g_propagate_error(error, g_steal_pointer(&local));
      return FALSE;
    }
    chain_walk_clear(into);
  }
}

gboolean
snap_guard_place(SnapGuard *guard, const char *path, GError **error)
{
  for (;;) {
    g_autoptr(GError) local = NULL;
    if (chain_policy_check_place(&guard->policy, path, &local))
      return TRUE;
    if (!refresh(guard)) {
      g_set_error_literal(error, BACKEND_ERROR, EIO, local->message);
      return FALSE;
    }
  }
}

gboolean
snap_guard_step(SnapGuard *guard, const PlanStep *step, GError **error)
{
  switch (step->kind) {
  case PLAN_STEP_COMMIT:
  case PLAN_STEP_ACTIVE_COMMIT:
  case PLAN_STEP_SET_ACTIVE:
    return snap_guard_chain(guard, step->image, step->format, NULL, 0, NULL, error);
  case PLAN_STEP_PULL:
    return snap_guard_chain(guard, step->image, step->format, NULL, 0, NULL, error) &&
           (!step->backing || snap_guard_chain(guard, step->backing, step->backing_format,
                                               NULL, 0, NULL, error));
  case PLAN_STEP_REBASE_UNSAFE:
    return snap_guard_chain(guard, step->image, step->format, NULL, 1, NULL, error) &&
           snap_guard_chain(guard, step->backing, step->backing_format, NULL, 0, NULL, error);
  case PLAN_STEP_CREATE_OVERLAY: {
    g_autofree char *tmp = g_strdup_printf("%s.virtsnapfs-tmp", step->image);
    return snap_guard_place(guard, step->image, error) &&
           snap_guard_place(guard, tmp, error) &&
           snap_guard_chain(guard, step->backing, step->backing_format, NULL, 0, NULL, error);
  }
  case PLAN_STEP_DELETE_FILE:
    return snap_guard_place(guard, step->image, error);
  case PLAN_STEP_REDEFINE_SNAPSHOT:
  case PLAN_STEP_DELETE_SNAPSHOT:
  case PLAN_STEP_SET_CURRENT:
    return TRUE;
  }
  g_set_error(error, BACKEND_ERROR, EINVAL, "unknown plan step %d", (int)step->kind);
  return FALSE;
}
