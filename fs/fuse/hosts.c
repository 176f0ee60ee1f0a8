/* hosts.c: the libvirt hosts of a mount, and which one a node belongs to.
 *
 * Each host (one per URI of the options) has a backend of its own: its
 * connection, worker thread, model, executor and journals, and its own
 * info cache, so that nothing one host does (a plan, a reconnect, a
 * dead connection) waits for another.  On a mount of one host the tree
 * has no host level and the host's state is STATE_DIR itself, as before
 * hosts existed; with several, each keeps its state in STATE_DIR/<name>/.
 *
 * A host whose connection drops keeps its directory with its last known
 * model; the backend reconnects with its backoff (backend.c).  On a mount
 * of several hosts one that does not answer at start is mounted anyway,
 * as an empty directory that fills once it answers; a mount of one host
 * fails instead, as it always did.
 *
 * Thread model: fs->hosts is built before the mount and freed after the
 * FUSE loop ended, so FUSE workers read it without a lock; a host's
 * capacity table has its own lock, never held across a libvirt call.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>

static void
host_free(VirtsnapfsHost *host)
{
  if (host == NULL)
    return;
  if (host->snap) {
    backend_set_listener(host->backend, NULL, NULL);
    snap_free(host->snap);
  }
  info_cache_free(host->info);
  g_hash_table_unref(host->capacity);
  g_mutex_clear(&host->lock);
  g_free(host->name);
  g_free(host->tree_host);
  g_free(host->uri);
  g_free(host);
}

gboolean
hosts_uri_is_remote(const char *uri)
{
  /* driver[+transport]://[user@][server][:port]/path: libvirt's remote
   * driver reads the images where the daemon runs.  A plain
   * qemu:///system goes through the local daemon, whose files are ours. */
  const char *colon = strchr(uri, ':');
  if (colon == NULL)
    return FALSE;
  if (memchr(uri, '+', (gsize)(colon - uri)))
    return TRUE;
  g_autoptr(GUri) parsed = g_uri_parse(uri, G_URI_FLAGS_NON_DNS, NULL);
  const char *server = parsed ? g_uri_get_host(parsed) : NULL;
  return server != NULL && server[0] != '\0';
}

gboolean
hosts_connect(Virtsnapfs *fs, GError **error)
{
  VirtsnapfsOptions *opts = fs->opts;
  fs->multi_host = opts->hosts->len > 1;
  fs->hosts = g_ptr_array_new_with_free_func((GDestroyNotify)host_free);

  for (guint i = 0; i < opts->hosts->len; i++) {
    VirtsnapfsHostSpec *spec = opts->hosts->pdata[i];
    VirtsnapfsHost *host = g_new0(VirtsnapfsHost, 1);
    host->fs = fs;
    host->name = g_strdup(spec->name);
    host->tree_host = fs->multi_host ? g_strdup(spec->name) : NULL;
    host->uri = g_strdup(spec->uri);
    host->remote = hosts_uri_is_remote(spec->uri);
    host->info = info_cache_new(host->tree_host, host->remote);
    g_mutex_init(&host->lock);
    host->capacity = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_ptr_array_add(fs->hosts, host);

    g_autofree char *state_dir = fs->multi_host
                                     ? g_build_filename(opts->state_dir, spec->name, NULL)
                                     : g_strdup(opts->state_dir);
    SnapOptions sopts = {
      .backend = {
        .uri = spec->uri,
        .image_dirs = opts->image_dirs_strv,
        .bandwidth_mib = opts->bandwidth,
        /* One host down must not keep the others from being mounted. */
        .connect_later = fs->multi_host,
      },
      .state_dir = state_dir,
      .revert_discard = opts->revert_mode == VIRTSNAPFS_REVERT_DISCARD,
    };
    if (fs->multi_host)
      g_message("host %s: uri=%s state_dir=%s%s", spec->name, spec->uri, state_dir,
                host->remote ? " (remote: images may not be visible here)" : "");
    host->snap = snap_new(&sopts, error);
    if (host->snap == NULL) {
      if (fs->multi_host)
        g_prefix_error(error, "host %s: ", spec->name);
      hosts_disconnect(fs);
      return FALSE;
    }
    host->backend = snap_get_backend(host->snap);
    backend_set_listener(host->backend, invalidate_on_change, host);
  }
  return TRUE;
}

void
hosts_disconnect(Virtsnapfs *fs)
{
  g_clear_pointer(&fs->hosts, g_ptr_array_unref);
}

VirtsnapfsHost *
hosts_find(Virtsnapfs *fs, const char *name)
{
  if (!fs->multi_host)
    return name == NULL ? fs->hosts->pdata[0] : NULL;
  if (name == NULL)
    return NULL;
  for (guint i = 0; i < fs->hosts->len; i++) {
    VirtsnapfsHost *host = fs->hosts->pdata[i];
    if (g_str_equal(host->name, name))
      return host;
  }
  return NULL;
}

VirtsnapfsHost *
hosts_of_node(Virtsnapfs *fs, const TreeNode *node)
{
  return hosts_find(fs, node->host);
}

BackendModel *
hosts_node_model(Virtsnapfs *fs, const TreeNode *node)
{
  VirtsnapfsHost *host = hosts_of_node(fs, node);
  return host ? backend_get_model(host->backend) : NULL;
}

guint64
hosts_unavailable_size(VirtsnapfsHost *host, const char *domain, gboolean present,
                       const BackendDisk *disk)
{
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&host->lock);
    guint64 *known = g_hash_table_lookup(host->capacity, disk->image_path);
    if (known)
      return *known;
  }
  guint64 size = 0;
  g_autoptr(GError) error = NULL;
  if (!backend_disk_capacity(host->backend, domain, present ? disk->target : NULL,
                             disk->image_path, &size, &error)) {
    g_debug("%s: size of %s unknown: %s", host->name, disk->image_path, error->message);
    size = 0;
    /* Not remembered while the connection is down: ask again later. */
    if (g_error_matches(error, BACKEND_ERROR, ENOTCONN))
      return 0;
  }
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&host->lock);
  g_hash_table_replace(host->capacity, g_strdup(disk->image_path), g_memdup2(&size, sizeof size));
  return size;
}
