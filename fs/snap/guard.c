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
 * Thread model: see guard.h.
 */
#include <errno.h>

#include "guard.h"
#include "policy.h"

struct _BackendGuard {
  BackendModel *model;
  GPtrArray *dirs;    /* the model's directories and STATE_DIR/now, NULL-terminated */
  ChainPolicy policy; /* dirs, and the model's devices */
};

BackendGuard *
backend_guard_new(Backend *backend, GError **error)
{
  g_autoptr(BackendModel) model = backend_get_model(backend);
  if (model->generation == 0) {
    if (!backend_refresh(backend, error))
      return NULL;
    g_clear_pointer(&model, backend_model_unref);
    model = backend_get_model(backend);
  }
  BackendGuard *guard = g_new0(BackendGuard, 1);
  guard->dirs = g_ptr_array_new_with_free_func(g_free);
  for (char **d = model->image_dirs; *d; d++)
    g_ptr_array_add(guard->dirs, g_strdup(*d));
  g_ptr_array_add(guard->dirs, g_build_filename(backend->state_dir, "now", NULL));
  g_ptr_array_add(guard->dirs, NULL);
  guard->policy = model->policy;
  guard->policy.image_dirs = (const char *const *)guard->dirs->pdata;
  guard->model = g_steal_pointer(&model);
  return guard;
}

void
backend_guard_free(BackendGuard *guard)
{
  if (!guard)
    return;
  g_ptr_array_unref(guard->dirs);
  backend_model_unref(guard->model);
  g_free(guard);
}

const ChainPolicy *
backend_guard_policy(const BackendGuard *guard)
{
  return &guard->policy;
}

gboolean
backend_guard_chain(const BackendGuard *guard, const char *path, ChainFormat format,
                    const ChainFormat *backing_formats, guint limit, ChainWalk *walk,
                    GError **error)
{
  g_auto(ChainWalk) own = {0};
  return backend_walk(&guard->policy, path, format, backing_formats, limit, walk ? walk : &own,
                      error);
}

gboolean
backend_guard_place(const BackendGuard *guard, const char *path, GError **error)
{
  g_autoptr(GError) local = NULL;
  if (chain_policy_check_place(&guard->policy, path, &local))
    return TRUE;
  g_set_error_literal(error, BACKEND_ERROR, EIO, local->message);
  return FALSE;
}

gboolean
backend_guard_step(const BackendGuard *guard, const PlanStep *step, GError **error)
{
  switch (step->kind) {
  case PLAN_STEP_COMMIT:
  case PLAN_STEP_ACTIVE_COMMIT:
  case PLAN_STEP_SET_ACTIVE:
    return backend_guard_chain(guard, step->image, step->format, NULL, 0, NULL, error);
  case PLAN_STEP_PULL:
    return backend_guard_chain(guard, step->image, step->format, NULL, 0, NULL, error) &&
           (!step->backing || backend_guard_chain(guard, step->backing, step->backing_format,
                                                  NULL, 0, NULL, error));
  case PLAN_STEP_REBASE_UNSAFE:
    return backend_guard_chain(guard, step->image, step->format, NULL, 1, NULL, error) &&
           backend_guard_chain(guard, step->backing, step->backing_format, NULL, 0, NULL, error);
  case PLAN_STEP_CREATE_OVERLAY: {
    g_autofree char *tmp = g_strdup_printf("%s.virtsnapfs-tmp", step->image);
    return backend_guard_place(guard, step->image, error) &&
           backend_guard_place(guard, tmp, error) &&
           backend_guard_chain(guard, step->backing, step->backing_format, NULL, 0, NULL, error);
  }
  case PLAN_STEP_DELETE_FILE:
    return backend_guard_place(guard, step->image, error);
  case PLAN_STEP_REDEFINE_SNAPSHOT:
  case PLAN_STEP_DELETE_SNAPSHOT:
  case PLAN_STEP_SET_CURRENT:
    return TRUE;
  }
  g_set_error(error, BACKEND_ERROR, EINVAL, "unknown plan step %d", (int)step->kind);
  return FALSE;
}
