/* policy.h: the image policy of the daemon and the chain walk under it.
 *
 * Which files and device nodes may be layers of a chain (the chain reader's
 * ChainPolicy): the directories of every image libvirt names (domain,
 * snapshot and storage-pool XML, and -o image_dir=), and the exact block
 * device nodes libvirt names, never the directory they are in.  A model
 * carries its policy (BackendModel.policy).  Every part of fs/ that needs
 * to know what lies below an image asks backend_walk(), which is chain/'s
 * one walk under that policy: nothing in fs/ reads or resolves a backing
 * name itself.
 *
 * Thread model: a BackendPlaces belongs to one thread while it is filled;
 * backend_walk() may run on any thread.
 */
#pragma once

#include "backend.h"

G_BEGIN_DECLS

/* path canonical when it exists, lexically cleaned otherwise: how the
 * policy, the planner and the journal name a file. */
char *backend_path_canonical(const char *path);

/* The places a model's policy allows, while they are collected. */
typedef struct _BackendPlaces BackendPlaces;

BackendPlaces *backend_places_new(void);
void backend_places_free(BackendPlaces *places);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendPlaces, backend_places_free)
/* An image libvirt names (a disk, a layer of its chain, a snapshot's
 * overlay): a block device allows itself, anything else its directory. */
void backend_places_add_image(BackendPlaces *places, const char *path);
/* A directory (a pool's target, -o image_dir=). */
void backend_places_add_dir(BackendPlaces *places, const char *dir);
/* A device node a pool names: allowed when it is a block device. */
void backend_places_add_device(BackendPlaces *places, const char *path);
/* Sets model->image_dirs, model->image_devices and model->policy. */
void backend_places_apply(const BackendPlaces *places, BackendModel *model);

/* chain_walk() of path (format, and the formats libvirt knows for the
 * layers below, may be NULL) under policy, for limit layers (0: all).  A
 * chain that fails is EIO in BACKEND_ERROR whatever the reason (policy,
 * loop, malformed header, missing file), with chain/'s message, which
 * names the file and why; walk keeps the layers above the failing one. */
gboolean backend_walk(const ChainPolicy *policy, const char *path, ChainFormat format,
                      const ChainFormat *backing_formats, guint limit, ChainWalk *walk,
                      GError **error);

G_END_DECLS
