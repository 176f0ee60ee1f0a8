/* info.c: size, allocation and depth of a disk's chain, cached.
 *
 * getattr needs the virtual size and allocated bytes of every disk file,
 * which only the chain can tell.  chain_summarize() answers without
 * opening the chain, from per-image summaries that chain/ caches (one
 * realpath and stat per layer); the answer is also cached here per image path,
 * keyed by the identity of the top image (device, inode, mtime, size):
 * a point image never changes while it is one, so its entry lives as long
 * as the file.  The present of a running domain is written all the time;
 * its entries expire after a few seconds: recounting maps the changed top
 * image again (every L2 table of it), and st_blocks of the present is an
 * estimate anyway (cp only compares it with the size to look for holes).
 *
 * Errors (unreadable chain, policy refusal) are logged once per image
 * path and reported as the chain's errno.  A cache of a remote host
 * (hosts.c) tells "not visible here" apart: an image or a layer that does
 * not exist on this machine (ENOENT, ENOTDIR) is normal for a host
 * without shared storage, so it is reported as EREMOTE and logged once as
 * a message, not a warning.  A local host's missing image stays an error
 * (EIO to the reader): there it means a broken domain, not a remote one.
 *
 * Thread model: any FUSE worker; one mutex protects the table and is not
 * held while a chain is summarized (two threads may compute the same entry;
 * the later one wins, both are right).
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>

#define INFO_LIVE_TTL_US (5 * G_USEC_PER_SEC)

typedef struct {
  dev_t dev;
  ino_t ino;
  struct timespec mtime;
  off_t size;
  gint64 fetched;     /* monotonic time */
  ImageInfo info;
} InfoEntry;

struct _InfoCache {
  char *label;          /* host name for log lines, or NULL */
  gboolean remote;
  GMutex lock;
  GHashTable *entries;  /* image path -> InfoEntry * */
  GHashTable *failed;   /* image paths whose error was logged */
};

InfoCache *
info_cache_new(const char *label, gboolean remote)
{
  InfoCache *cache = g_new0(InfoCache, 1);
  cache->label = g_strdup(label);
  cache->remote = remote;
  g_mutex_init(&cache->lock);
  cache->entries = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  cache->failed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  return cache;
}

void
info_cache_free(InfoCache *cache)
{
  if (cache == NULL)
    return;
  g_hash_table_unref(cache->entries);
  g_hash_table_unref(cache->failed);
  g_mutex_clear(&cache->lock);
  g_free(cache->label);
  g_free(cache);
}

static gboolean
same_file(const InfoEntry *e, const struct stat *st)
{
  return e->dev == st->st_dev && e->ino == st->st_ino && e->size == st->st_size &&
         e->mtime.tv_sec == st->st_mtim.tv_sec && e->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static gboolean
info_compute(const BackendDisk *disk, const ChainPolicy *policy, ImageInfo *info,
             GError **error)
{
  g_auto(ChainSummary) summary = {0};
  if (!chain_summarize(disk->image_path, disk->format, disk->backing_formats, policy,
                       &summary, error) ||
      !backend_disk_check_layers(disk, (const char *const *)summary.layer_paths, error))
    return FALSE;
  info->virtual_size = summary.virtual_size;
  info->allocated = summary.allocated;
  info->depth = summary.depth;
  info->format = summary.format;
  return TRUE;
}

static gboolean
info_lookup(InfoCache *cache, const BackendDisk *disk, const ChainPolicy *policy,
            gboolean live, ImageInfo *info, GError **error)
{
  struct stat st;
  if (stat(disk->image_path, &st) < 0) {
    int err = errno;
    g_set_error(error, CHAIN_ERROR, err, "%s: %s", disk->image_path, g_strerror(err));
    return FALSE;
  }

  gint64 now = g_get_monotonic_time();
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&cache->lock);
    InfoEntry *e = g_hash_table_lookup(cache->entries, disk->image_path);
    if (e && same_file(e, &st) && (!live || now - e->fetched < INFO_LIVE_TTL_US)) {
      *info = e->info;
      return TRUE;
    }
  }

  g_autofree InfoEntry *e = g_new0(InfoEntry, 1);
  if (!info_compute(disk, policy, &e->info, error))
    return FALSE;
  e->dev = st.st_dev;
  e->ino = st.st_ino;
  e->size = st.st_size;
  e->mtime = st.st_mtim;
  e->fetched = now;
  e->info.mtime = st.st_mtim;
  *info = e->info;

  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&cache->lock);
  g_hash_table_remove(cache->failed, disk->image_path);
  g_hash_table_replace(cache->entries, g_strdup(disk->image_path), g_steal_pointer(&e));
  return TRUE;
}

gboolean
info_cache_get(InfoCache *cache, const BackendDisk *disk, const ChainPolicy *policy,
               gboolean live, ImageInfo *info, GError **error)
{
  g_autoptr(GError) local = NULL;
  if (info_lookup(cache, disk, policy, live, info, &local))
    return TRUE;
  gboolean not_visible = cache->remote && local->domain == CHAIN_ERROR &&
                         (local->code == ENOENT || local->code == ENOTDIR);
  if (not_visible) {
    g_autofree char *reason = g_strdup_printf("not visible on this machine: %s", local->message);
    g_clear_error(&local);
    g_set_error_literal(&local, CHAIN_ERROR, EREMOTE, reason);
  }
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&cache->lock);
    const char *sep = cache->label ? ": " : "";
    const char *label = cache->label ? cache->label : "";
    if (g_hash_table_add(cache->failed, g_strdup(disk->image_path))) {
      if (not_visible)
        g_message("%s%sdisk %s: %s; it is listed, and opening it fails with EREMOTE", label,
                  sep, disk->target, local->message);
      else
        g_warning("%s%sdisk %s: %s", label, sep, disk->target, local->message);
    }
  }
  g_propagate_error(error, g_steal_pointer(&local));
  return FALSE;
}
