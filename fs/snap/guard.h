/* guard.h: the image policy on the change path.
 *
 * Nothing outside the image directories may be opened for writing,
 * created, renamed or deleted, by the daemon or by qemu-img or libvirt on
 * its behalf, whatever a header says.  Headers can change at any time
 * (between planning and a step, between a crash and the restart), so the
 * executor checks every step right before running it, the same way for a
 * fresh plan and for one that recovery rolls forward; freezes and thaws
 * check what they will create, commit into or delete.  A refusal is EIO
 * with chain/'s reason, which names the file.
 *
 * Thread model: a SnapGuard is used by one thread (an operation in its
 * domain's turn); it holds a reference on the model whose policy it
 * extends, and may publish a new model (backend_refresh()), so it is never
 * used under Snap.freeze_lock or Snap.lock.
 */
#pragma once

#include "snap-private.h"

G_BEGIN_DECLS

typedef struct _SnapGuard SnapGuard;

/* The policy of the published model (refreshed first when none was built
 * yet: recovery at start-up runs before the first model), plus
 * STATE_DIR/now, where @now overlays of block devices live.  A check that
 * fails is tried once more under the policy of a model read afresh. */
SnapGuard *snap_guard_new(Snap *snap, GError **error);
void snap_guard_free(SnapGuard *guard);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SnapGuard, snap_guard_free)
const ChainPolicy *snap_guard_policy(const SnapGuard *guard);

/* Walks the chain of path under the policy (backend_walk(); limit 0: to
 * the bottom).  walk may be NULL when the layers are not needed; on
 * failure it keeps the layers above the one that failed. */
gboolean snap_guard_chain(SnapGuard *guard, const char *path, ChainFormat format,
                          const ChainFormat *backing_formats, guint limit, ChainWalk *walk,
                          GError **error);
/* A file about to be created or deleted at path (chain_policy_check_place()). */
gboolean snap_guard_place(SnapGuard *guard, const char *path, GError **error);
/* Everything step will touch: the chains it reads or writes into, the
 * chain it points an image or the domain at, the files it creates or
 * deletes.  Metadata-only steps touch no file. */
gboolean snap_guard_step(SnapGuard *guard, const PlanStep *step, GError **error);

G_END_DECLS
