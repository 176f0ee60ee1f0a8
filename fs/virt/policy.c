/* policy.c: collecting the image policy of a model, and the chain walk
 * under it (policy.h).
 *
 * Directories are canonical when they exist (so that the policy compares
 * with canonical layer paths), lexically cleaned otherwise.  Devices are
 * kept as libvirt spells them: chain/ compares them by device number.
 *
 * Thread model: see policy.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "policy.h"

struct _BackendPlaces {
  GHashTable *dirs;    /* canonical directory -> itself */
  GHashTable *devices; /* device node path -> itself */
};

BackendPlaces *
backend_places_new(void)
{
  BackendPlaces *places = g_new0(BackendPlaces, 1);
  places->dirs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  places->devices = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  return places;
}

void
backend_places_free(BackendPlaces *places)
{
  if (!places)
    return;
  g_hash_table_unref(places->dirs);
  g_hash_table_unref(places->devices);
  g_free(places);
}

char *
backend_path_canonical(const char *path)
{
  char *real = realpath(path, NULL);
  if (real == NULL)
    return g_canonicalize_filename(path, "/");
  char *copy = g_strdup(real);
  free(real);
  return copy;
}

void
backend_places_add_dir(BackendPlaces *places, const char *dir)
{
  if (!dir || !g_path_is_absolute(dir))
    return;
  g_hash_table_add(places->dirs, backend_path_canonical(dir));
}

static gboolean
is_block_device(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 && S_ISBLK(st.st_mode);
}

void
backend_places_add_device(BackendPlaces *places, const char *path)
{
  if (path && g_path_is_absolute(path) && is_block_device(path))
    g_hash_table_add(places->devices, g_strdup(path));
}

void
backend_places_add_image(BackendPlaces *places, const char *path)
{
  if (!path || !g_path_is_absolute(path))
    return;
  if (is_block_device(path)) {
    g_hash_table_add(places->devices, g_strdup(path));
    return;
  }
  g_autofree char *dir = g_path_get_dirname(path);
  backend_places_add_dir(places, dir);
}

static gint
compare_strings(gconstpointer a, gconstpointer b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The keys of set, sorted, as a NULL-terminated vector. */
static char **
sorted_strv(GHashTable *set)
{
  GPtrArray *sorted = g_ptr_array_new();
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, set);
  while (g_hash_table_iter_next(&iter, &key, NULL))
    g_ptr_array_add(sorted, g_strdup(key));
  g_ptr_array_sort(sorted, compare_strings);
  g_ptr_array_add(sorted, NULL);
  return (char **)g_ptr_array_free(sorted, FALSE);
}

void
backend_places_apply(const BackendPlaces *places, BackendModel *model)
{
  g_strfreev(model->image_dirs);
  g_strfreev(model->image_devices);
  model->image_dirs = sorted_strv(places->dirs);
  model->image_devices = sorted_strv(places->devices);
  model->policy = (ChainPolicy){.image_dirs = (const char *const *)model->image_dirs,
                                .devices = (const char *const *)model->image_devices};
}

gboolean
backend_walk(const ChainPolicy *policy, const char *path, ChainFormat format,
             const ChainFormat *backing_formats, guint limit, ChainWalk *walk, GError **error)
{
  ChainImage image = {path, format, backing_formats};
  g_autoptr(GError) local = NULL;
  if (chain_walk(&image, policy, limit, walk, &local))
    return TRUE;
  g_set_error_literal(error, BACKEND_ERROR, EIO, local->message);
  return FALSE;
}
