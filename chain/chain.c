/* chain.c: building a chain from its top image down, under the policy.
 *
 * The policy, strictest first: formats are never probed (the top's comes
 * from the caller, a backing file's from the caller or from the parent's
 * backing-format extension); a backing name is a literal local path,
 * relative names resolve against the directory of the image that names them
 * (as QEMU does, without resolving that image's symlinks first); `json:`
 * and `protocol:` names are refused; every layer's canonical path must lie
 * under one of the policy's image directories, and the descriptor actually
 * opened must still be that path; loops (same device and inode) and chains
 * deeper than the policy's limit are refused.
 *
 * Errors: EACCES for what the policy refuses, ELOOP for loops and chains
 * too deep, EIO for malformed images, EOPNOTSUPP for unsupported features,
 * the open(2) errno for missing files.
 *
 * Thread model: chain_open() runs on one thread; the resulting Chain is
 * immutable except for its caches (region.c, seek.c) and may be shared.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
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

/* Resolves one layer's name under the policy: canonical path, inside an
 * image directory.  who names the layer in messages. */
static char *
resolve_layer(const char *who, const char *named, GPtrArray *dirs, GError **error)
{
  g_autofree char *canonical = realpath(named, NULL);
  if (canonical == NULL) {
    int e = errno;
    g_set_error(error, CHAIN_ERROR, e, "%s: %s", who, g_strerror(e));
    return NULL;
  }
  if (dirs != NULL) {
    gboolean ok = FALSE;
    for (guint i = 0; i < dirs->len && !ok; i++)
      ok = path_is_under(canonical, dirs->pdata[i]);
    if (!ok) {
      g_set_error(error, CHAIN_ERROR, EACCES, "%s: %s is not under an image directory", who,
                  canonical);
      return NULL;
    }
  }
  return g_steal_pointer(&canonical);
}

gboolean
chain_walk(const char *path, ChainFormat format, const ChainFormat *backing_formats,
           const ChainPolicy *policy, ChainWalkVisit visit, gpointer data, GError **error)
{
  g_return_val_if_fail(path != NULL, FALSE);

  guint max_depth = CHAIN_MAX_DEPTH;
  g_autoptr(GPtrArray) dirs = NULL;
  if (policy != NULL) {
    if (policy->max_depth != 0)
      max_depth = MIN(policy->max_depth, CHAIN_MAX_DEPTH);
    if (policy->image_dirs != NULL) {
      dirs = g_ptr_array_new_with_free_func(g_free);
      for (const char *const *d = policy->image_dirs; *d != NULL; d++) {
        char *canonical = realpath(*d, NULL);
        if (canonical != NULL)
          g_ptr_array_add(dirs, canonical);
      }
    }
  }

  /* Layers seen so far: canonical paths and identities, for loops. */
  g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GArray) ids = g_array_new(FALSE, FALSE, sizeof(ChainWalkStep));
  g_autofree char *cwd = g_get_current_dir();
  g_autofree char *named = g_path_is_absolute(path) ? g_strdup(path)
                                                    : g_build_filename(cwd, path, NULL);
  gboolean formats_left = backing_formats != NULL;

  for (;;) {
    const char *parent = paths->len ? paths->pdata[paths->len - 1] : NULL;
    g_autofree char *who = parent ? g_strdup_printf("%s: backing file %s", parent, named)
                                  : g_strdup(named);
    char *canonical = resolve_layer(who, named, dirs, error);
    if (canonical == NULL)
      return FALSE;
    g_ptr_array_add(paths, canonical);
    ChainWalkStep step = {0};
    if (!visit(canonical, format, dirs != NULL, data, &step, error))
      return FALSE;
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
    if (paths->len >= max_depth) {
      g_set_error(error, CHAIN_ERROR, ELOOP, "%s: backing chain is deeper than %u layers",
                  (char *)paths->pdata[0], max_depth);
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
  }
}

/* chain_open()'s visitor: opens the layer and keeps it. */
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

Chain *
chain_open(const char *path, ChainFormat format, const ChainFormat *backing_formats,
           const ChainPolicy *policy, GError **error)
{
  g_return_val_if_fail(path != NULL, NULL);

  g_autoptr(GPtrArray) layers = g_ptr_array_new_with_free_func((GDestroyNotify)chain_layer_unref);
  if (!chain_walk(path, format, backing_formats, policy, open_visit, layers, error))
    return NULL;

  Chain *chain = g_new0(Chain, 1);
  chain->ref_count = 1;
  chain->depth = layers->len;
  chain->layers = (ChainLayer **)g_ptr_array_steal(layers, NULL);
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
