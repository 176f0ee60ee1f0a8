/* chain.c: following backing names (the one walk of the daemon) and
 * building a chain from its top image down.
 *
 * The image policy, strictest first: formats are never probed (the top's
 * comes from the caller, a backing file's from the caller or from the
 * parent's backing-format extension); a backing name is a literal local
 * path, relative names resolve against the directory of the image that
 * names them (as QEMU does, without resolving that image's symlinks first);
 * `json:` and `protocol:` names are refused; a layer is a regular file whose
 * canonical path lies under one of the policy's image directories, or a
 * block device node the policy names (compared by device number: a
 * directory never allows the devices in it), checked by stat() before
 * anything opens it, and the file then opened must be the one checked (same
 * device and inode, and for chain_open() a descriptor that still names the
 * canonical path); loops (same device and inode) and chains deeper than the
 * policy's limit are refused.
 *
 * chain_follow() is that walk with a visitor per layer: chain_walk() and
 * chain_open() open each layer, summary.c reads its cached summaries.
 * Nothing else in the daemon resolves a backing name.
 *
 * Errors: EACCES for what the policy refuses, ELOOP for loops and chains
 * too deep, EIO for malformed images, EOPNOTSUPP for unsupported features,
 * the open(2) errno for missing files.
 *
 * Thread model: a walk runs on one thread; the resulting Chain is
 * immutable except for its caches (region.c, seek.c) and may be shared.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain-private.h"

/* QEMU's notion of a protocol prefix: a ':' before any '/'. */
static gboolean
name_has_protocol(const char *name)
{
  gsize span = strcspn(name, ":/");
  return name[span] == ':';
}

static gboolean
path_is_under(const char *path, const char *dir)
{
  gsize n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/')
    n--;
  if (n == 1 && dir[0] == '/')
    return TRUE;
  return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* The descriptor must still name the canonical path checked by policy: a
 * directory swapped for a symlink in between would show here. */
static gboolean
fd_matches_path(int fd, const char *path)
{
  char link[64];
  char target[4096];
  g_snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n < 0)
    return TRUE; /* no /proc: realpath() was the check */
  target[n] = '\0';
  return strcmp(target, path) == 0;
}

/* A policy made ready for checks: directories resolved, devices stat()ed. */
typedef struct {
  gboolean restricted;    /* image_dirs given */
  GPtrArray *dirs;        /* canonical image directories */
  GArray *devices;        /* dev_t of each block device named */
  guint max_depth;
} Places;

static void
places_init(Places *places, const ChainPolicy *policy)
{
  *places = (Places){.max_depth = CHAIN_MAX_DEPTH};
  places->dirs = g_ptr_array_new_with_free_func(g_free);
  places->devices = g_array_new(FALSE, FALSE, sizeof(dev_t));
  if (policy == NULL)
    return;
  if (policy->max_depth != 0)
    places->max_depth = MIN(policy->max_depth, CHAIN_MAX_DEPTH);
  if (policy->image_dirs == NULL)
    return;
  places->restricted = TRUE;
  for (const char *const *d = policy->image_dirs; *d != NULL; d++) {
    char *canonical = realpath(*d, NULL);
    if (canonical != NULL)
      g_ptr_array_add(places->dirs, canonical);
  }
  for (const char *const *d = policy->devices; d != NULL && *d != NULL; d++) {
    struct stat st;
    if (stat(*d, &st) == 0 && S_ISBLK(st.st_mode))
      g_array_append_val(places->devices, st.st_rdev);
  }
}

static void
places_clear(Places *places)
{
  g_clear_pointer(&places->dirs, g_ptr_array_unref);
  g_clear_pointer(&places->devices, g_array_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(Places, places_clear)

static gboolean
places_have_dir(const Places *places, const char *canonical)
{
  for (guint i = 0; i < places->dirs->len; i++)
    if (path_is_under(canonical, places->dirs->pdata[i]))
      return TRUE;
  return FALSE;
}

static gboolean
places_have_device(const Places *places, dev_t rdev)
{
  for (guint i = 0; i < places->devices->len; i++)
    if (g_array_index(places->devices, dev_t, i) == rdev)
      return TRUE;
  return FALSE;
}

/* Resolves one layer's name under the policy: its canonical path, and in
 * *st what it is.  who names the layer in messages. */
static char *
resolve_layer(const char *who, const char *named, const Places *places, struct stat *st,
              GError **error)
{
  g_autofree char *canonical = realpath(named, NULL);
  if (canonical == NULL || stat(canonical, st) < 0) {
    int e = errno;
    g_set_error(error, CHAIN_ERROR, e, "%s: %s", who, g_strerror(e));
    return NULL;
  }
  /* Before anything opens it: opening a FIFO or a terminal would block
   * or act on it. */
  if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode)) {
    g_set_error(error, CHAIN_ERROR, EACCES, "%s: %s is not a regular file or block device", who,
                canonical);
    return NULL;
  }
  if (!places->restricted)
    return g_steal_pointer(&canonical);
  if (S_ISBLK(st->st_mode) && !places_have_device(places, st->st_rdev)) {
    g_set_error(error, CHAIN_ERROR, EACCES,
                "%s: block device %s is not a device node the image policy names", who,
                canonical);
    return NULL;
  }
  if (S_ISREG(st->st_mode) && !places_have_dir(places, canonical)) {
    g_set_error(error, CHAIN_ERROR, EACCES, "%s: %s is not under an image directory", who,
                canonical);
    return NULL;
  }
  return g_steal_pointer(&canonical);
}

gboolean
chain_follow(const ChainImage *image, const ChainPolicy *policy, guint limit,
             ChainWalkVisit visit, gpointer data, char **rest, ChainFormat *rest_format,
             GError **error)
{
  g_return_val_if_fail(image != NULL && image->path != NULL, FALSE);
  if (rest != NULL) {
    *rest = NULL;
    *rest_format = CHAIN_FORMAT_UNKNOWN;
  }

  g_auto(Places) places;
  places_init(&places, policy);

  /* Layers seen so far: canonical paths and identities, for loops. */
  g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GArray) ids = g_array_new(FALSE, FALSE, sizeof(ChainWalkStep));
  g_autofree char *cwd = g_get_current_dir();
  g_autofree char *named = g_path_is_absolute(image->path)
                              ? g_strdup(image->path)
                              : g_build_filename(cwd, image->path, NULL);
  ChainFormat format = image->format;
  const ChainFormat *backing_formats = image->backing_formats;
  gboolean formats_left = backing_formats != NULL;

  for (;;) {
    const char *parent = paths->len ? paths->pdata[paths->len - 1] : NULL;
    g_autofree char *who = parent ? g_strdup_printf("%s: backing file %s", parent, named)
                                  : g_strdup(named);
    struct stat st;
    char *canonical = resolve_layer(who, named, &places, &st, error);
    if (canonical == NULL)
      return FALSE;
    g_ptr_array_add(paths, canonical);
    ChainWalkStep step = {0};
    if (!visit(canonical, format, places.restricted, data, &step, error))
      return FALSE;
    /* What was opened must be what was checked. */
    if (step.dev != st.st_dev || step.ino != st.st_ino) {
      g_set_error(error, CHAIN_ERROR, EACCES, "%s: path changed while it was opened", canonical);
      return FALSE;
    }
    for (guint i = 0; i < ids->len; i++) {
      ChainWalkStep *other = &g_array_index(ids, ChainWalkStep, i);
      if (other->dev == step.dev && other->ino == step.ino) {
        g_set_error(error, CHAIN_ERROR, ELOOP, "%s: backing chain loops back to %s",
                    (char *)paths->pdata[paths->len - 2], (char *)paths->pdata[i]);
        return FALSE;
      }
    }
    g_array_append_val(ids, step);

    const char *backing = step.backing_name;
    if (backing == NULL || format == CHAIN_FORMAT_RAW)
      return TRUE;
    if (paths->len >= places.max_depth) {
      g_set_error(error, CHAIN_ERROR, ELOOP, "%s: backing chain is deeper than %u layers",
                  (char *)paths->pdata[0], places.max_depth);
      return FALSE;
    }
    if (name_has_protocol(backing)) {
      g_autofree char *shown = g_strescape(backing, NULL);
      g_set_error(error, CHAIN_ERROR, EACCES,
                  "%s: backing name \"%s\" is not a local path (json: or protocol names are refused)",
                  canonical, shown);
      return FALSE;
    }

    ChainFormat next = CHAIN_FORMAT_UNKNOWN;
    if (formats_left) {
      next = backing_formats[paths->len - 1];
      formats_left = next != CHAIN_FORMAT_UNKNOWN;
    }
    if (next == CHAIN_FORMAT_UNKNOWN)
      next = step.backing_format;
    if (next == CHAIN_FORMAT_UNKNOWN) {
      g_autofree char *shown = g_strescape(backing, NULL);
      g_set_error(error, CHAIN_ERROR, EACCES,
                  "%s: backing file \"%s\" has no known format and formats are never probed",
                  canonical, shown);
      return FALSE;
    }

    char *resolved;
    if (g_path_is_absolute(backing)) {
      resolved = g_strdup(backing);
    } else {
      g_autofree char *dir = g_path_get_dirname(named);
      resolved = g_build_filename(dir, backing, NULL);
    }
    g_free(named);
    named = resolved;
    format = next;
    if (limit != 0 && paths->len >= limit) {
      if (rest != NULL) {
        *rest = g_steal_pointer(&named);
        *rest_format = format;
      }
      return TRUE;
    }
  }
}

gboolean
chain_policy_check_place(const ChainPolicy *policy, const char *path, GError **error)
{
  g_return_val_if_fail(path != NULL, FALSE);
  if (policy == NULL || policy->image_dirs == NULL)
    return TRUE;
  g_auto(Places) places;
  places_init(&places, policy);
  g_autofree char *dir = g_path_get_dirname(path);
  g_autofree char *base = g_path_get_basename(path);
  g_autofree char *canonical_dir = realpath(dir, NULL);
  if (canonical_dir == NULL) {
    int e = errno;
    g_set_error(error, CHAIN_ERROR, e, "%s: %s", dir, g_strerror(e));
    return FALSE;
  }
  g_autofree char *placed = g_build_filename(canonical_dir, base, NULL);
  if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0 || strcmp(base, "/") == 0 ||
      !places_have_dir(&places, placed)) {
    if (strcmp(path, placed) == 0)
      g_set_error(error, CHAIN_ERROR, EACCES, "%s is not under an image directory", path);
    else
      g_set_error(error, CHAIN_ERROR, EACCES, "%s: %s is not under an image directory", path,
                  placed);
    return FALSE;
  }
  struct stat st;
  if (lstat(path, &st) < 0) {
    int e = errno;
    if (e == ENOENT)
      return TRUE;
    g_set_error(error, CHAIN_ERROR, e, "%s: %s", path, g_strerror(e));
    return FALSE;
  }
  if (!S_ISREG(st.st_mode)) {
    g_set_error(error, CHAIN_ERROR, EACCES, "%s is not a regular file (%s)", path,
                S_ISLNK(st.st_mode)   ? "a symlink"
                : S_ISBLK(st.st_mode) ? "a block device"
                : S_ISDIR(st.st_mode) ? "a directory"
                                      : "a special file");
    return FALSE;
  }
  return TRUE;
}

/* chain_walk()'s visitor: opens the layer and keeps it. */
static gboolean
open_visit(const char *canonical, ChainFormat format, gboolean check_fd, gpointer data,
           ChainWalkStep *step, GError **error)
{
  GPtrArray *layers = data;
  g_autoptr(ChainLayer) layer = chain_layer_open(canonical, format, error);
  if (layer == NULL)
    return FALSE;
  if (check_fd && !fd_matches_path(layer->fd, canonical)) {
    g_set_error(error, CHAIN_ERROR, EACCES, "%s: path changed while it was opened", canonical);
    return FALSE;
  }
  *step = (ChainWalkStep){.dev = layer->dev, .ino = layer->ino,
                          .backing_name = layer->backing_name,
                          .backing_format = layer->backing_format};
  g_ptr_array_add(layers, g_steal_pointer(&layer));
  return TRUE;
}

void
chain_walk_clear(ChainWalk *walk)
{
  g_clear_pointer(&walk->layers, g_ptr_array_unref);
  g_clear_pointer(&walk->rest, g_free);
  walk->rest_format = CHAIN_FORMAT_UNKNOWN;
}

gboolean
chain_walk(const ChainImage *image, const ChainPolicy *policy, guint limit, ChainWalk *walk,
           GError **error)
{
  g_return_val_if_fail(walk != NULL && walk->layers == NULL && walk->rest == NULL, FALSE);
  walk->layers = g_ptr_array_new_with_free_func((GDestroyNotify)chain_layer_unref);
  return chain_follow(image, policy, limit, open_visit, walk->layers, &walk->rest,
                      &walk->rest_format, error);
}

Chain *
chain_open(const char *path, ChainFormat format, const ChainFormat *backing_formats,
           const ChainPolicy *policy, GError **error)
{
  g_return_val_if_fail(path != NULL, NULL);

  ChainImage image = {path, format, backing_formats};
  g_auto(ChainWalk) walk = {0};
  if (!chain_walk(&image, policy, 0, &walk, error))
    return NULL;

  Chain *chain = g_new0(Chain, 1);
  chain->ref_count = 1;
  chain->depth = walk.layers->len;
  chain->layers = (ChainLayer **)g_ptr_array_steal(walk.layers, NULL);
  chain->virtual_size = chain->layers[0]->virtual_size;
  chain->allocated = -1;
  chain_regions_init(chain);
  return chain;
}

Chain *
chain_ref(Chain *chain)
{
  g_return_val_if_fail(chain != NULL, NULL);
  g_atomic_int_inc(&chain->ref_count);
  return chain;
}

void
chain_unref(Chain *chain)
{
  if (chain == NULL || !g_atomic_int_dec_and_test(&chain->ref_count))
    return;
  chain_regions_clear(chain);
  for (guint i = 0; i < chain->depth; i++)
    chain_layer_unref(chain->layers[i]);
  g_free(chain->layers);
  g_free(chain);
}

guint64
chain_virtual_size(const Chain *chain)
{
  return chain->virtual_size;
}

guint
chain_depth(const Chain *chain)
{
  return chain->depth;
}

ChainLayer *
chain_get_layer(const Chain *chain, guint i)
{
  g_return_val_if_fail(i < chain->depth, NULL);
  return chain->layers[i];
}
