/* ops-open.c: open and release of the files in the tree: what a handle
 * pins, freezes and owns.
 *
 * open() pins what a file reads: a snapshot's <target>.raw opens the chain
 * of its point image and keeps every layer's descriptor until release();
 * @now/<target>.raw first freezes the domain (one snap_freeze() per
 * open handle, paired with snap_thaw() at release: fs/snap shares
 * one temporary overlay between them) and then opens the frozen image's
 * chain.  snapshot.xml copies the XML.  A disk whose images are not
 * visible on this machine (a remote host without shared storage, info.c)
 * fails with EREMOTE before anything is frozen.  A snapshot's
 * <target>.delta opens and pins the chain like the .raw and gets its delta
 * against the parent point from delta.c.  Every chain a handle holds is
 * pinned in the backend, so no plan writes what it reads (EBUSY instead)
 * until release.
 *
 * A <target>.raw, a snapshot's or @now's, is also prefetched (ops-read.c,
 * prefetch.c).  Its stores end at release, before an @now freeze may be
 * thawed, and the next freeze's open drops the cache (keep_cache 0).
 *
 * Thread model: FUSE workers.  A handle is immutable after open (reads
 * run on it from many workers at once, see ops-read.c).  fs->files (the
 * set of open handles, for shutdown) has its own lock, not taken by
 * read().
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

static void
file_free(VirtsnapfsFile *file)
{
  g_clear_pointer(&file->prefetch, prefetch_free);
  g_clear_pointer(&file->delta, chain_delta_unref);
  g_clear_pointer(&file->chain, chain_unref);
  g_clear_pointer(&file->bytes, g_bytes_unref);
  g_free(file->display);
  g_free(file->frozen_domain);
  g_free(file->pinned_domain);
  g_free(file);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VirtsnapfsFile, file_free)

/* Lets plans touch file's chain again; cheap, no libvirt.  Stops the
 * prefetch first: once a plan may delete the point, the name may be
 * reused, and a late store would fill its cache with the old bytes. */
static void
file_unpin(Virtsnapfs *fs, VirtsnapfsFile *file)
{
  g_clear_pointer(&file->prefetch, prefetch_free);
  g_autofree char *domain = g_steal_pointer(&file->pinned_domain);
  if (domain)
    snap_unpin_chain(file->host->snap, domain, file->chain);
}

/* Releases file: unpins its chain while the chain still exists, then
 * thaws its freeze after the chain's descriptors are closed, so the
 * backend can commit the overlay back. */
static void
file_close(Virtsnapfs *fs, VirtsnapfsFile *file)
{
  file_unpin(fs, file);
  g_autofree char *domain = g_steal_pointer(&file->frozen_domain);
  Snap *snap = file->host ? file->host->snap : NULL;
  file_free(file);
  if (domain)
    snap_thaw(snap, domain);
}

/* Opens the chain of a disk under the model's image policy. */
static Chain *
open_disk_chain(const BackendDisk *disk, BackendModel *model, GError **error)
{
  g_autoptr(Chain) chain = chain_open(disk->image_path, disk->format, disk->backing_formats,
                                      &model->policy, error);
  if (!chain || !backend_disk_check_chain(disk, chain, error))
    return NULL;
  return g_steal_pointer(&chain);
}

/* TRUE when disk's images are not visible here (remote host, info.c has
 * logged it once): open() answers EREMOTE. */
static gboolean
disk_not_visible(VirtsnapfsHost *host, const TreeNode *node, BackendModel *model)
{
  if (!host->remote)
    return FALSE;
  BackendDisk *disk = tree_find_disk(tree_node_disks(node, model), node->target);
  BackendDomain *dom = tree_node_domain(node, model);
  if (disk == NULL || dom == NULL)
    return FALSE;
  ImageInfo info;
  g_autoptr(GError) error = NULL;
  gboolean live = node->point == NULL && dom->running;
  return !info_cache_get(host->info, disk, &model->policy, live, &info, &error) &&
         g_error_matches(error, CHAIN_ERROR, EREMOTE);
}

static gboolean
open_now(Virtsnapfs *fs, VirtsnapfsFile *file, const TreeNode *node, BackendModel *model,
         GError **error)
{
  Snap *snap = file->host->snap;
  g_autoptr(GPtrArray) frozen = snap_freeze(snap, node->domain, error);
  if (frozen == NULL)
    return FALSE;
  /* From here on the freeze is ours: thaw it if anything below fails. */
  BackendDisk *disk = tree_find_disk(frozen, node->target);
  if (disk == NULL) {
    g_set_error(error, CHAIN_ERROR, ENOENT, "disk %s is not in the frozen domain",
                node->target);
    snap_thaw(snap, node->domain);
    return FALSE;
  }
  file->chain = open_disk_chain(disk, model, error);
  if (file->chain == NULL) {
    snap_thaw(snap, node->domain);
    return FALSE;
  }
  file->frozen_domain = g_strdup(node->domain);
  g_debug("OPEN %s: frozen image %s", node->display, disk->image_path);
  return TRUE;
}

void
ops_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) node = ops_node_get(req, ino);
  g_autoptr(GError) error = NULL;

  if (node == NULL)
    return;
  if (node->kind != TREE_DISK && node->kind != TREE_XML && node->kind != TREE_DELTA) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  VirtsnapfsHost *host = hosts_of_node(fs, node);
  g_autoptr(BackendModel) model = backend_get_model(host->backend);
  /* Data files have no write bits; root is refused here too. */
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
    g_debug("OPEN %s flags=0%o => EACCES", node->display, fi->flags);
    fuse_reply_err(req, EACCES);
    return;
  }

  if ((node->kind == TREE_DISK || node->kind == TREE_DELTA) &&
      disk_not_visible(host, node, model)) {
    g_debug("OPEN %s => EREMOTE (not visible on this machine)", node->display);
    fuse_reply_err(req, EREMOTE);
    return;
  }

  g_autoptr(VirtsnapfsFile) file = g_new0(VirtsnapfsFile, 1);
  file->kind = node->kind;
  file->host = host;
  file->display = g_strdup(node->display);

  if (node->kind == TREE_XML) {
    BackendSnapshot *snap = tree_node_snapshot(node, model);
    if (snap == NULL) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    const char *xml = snap->xml ? snap->xml : "";
    file->bytes = g_bytes_new(xml, strlen(xml));
    file->size = g_bytes_get_size(file->bytes);
    fi->keep_cache = 1;
  } else if (node->point == NULL) {
    if (tree_node_domain(node, model) == NULL) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (!open_now(fs, file, node, model, &error)) {
      g_warning("open %s: %s", node->display, error->message);
      errors_reply_gerror(req, error);
      return;
    }
    file->size = chain_virtual_size(file->chain);
    /* A freeze is immutable while this handle lives, but the next freeze
     * is another disk: never keep the page cache across opens. */
    fi->keep_cache = 0;
  } else {
    BackendDisk *disk = tree_find_disk(tree_node_disks(node, model), node->target);
    if (disk == NULL) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    file->chain = open_disk_chain(disk, model, &error);
    if (file->chain == NULL) {
      /* EIO whatever the reason (policy, loop, malformed), as getattr
       * answers for the same chain. */
      g_warning("open %s: %s", node->display, error->message);
      fuse_reply_err(req, EIO);
      return;
    }
    file->size = chain_virtual_size(file->chain);
    /* A point in time never changes: keep the kernel's cache across
     * opens (invalidate.c drops it if the name is reused). */
    fi->keep_cache = 1;
    if (node->kind == TREE_DELTA) {
      /* Pinned before the delta reads it, as long as the handle lives. */
      snap_pin_chain(host->snap, node->domain, file->chain);
      file->pinned_domain = g_strdup(node->domain);
      file->delta = delta_get(fs, node, model, file->chain, &error);
      if (file->delta == NULL) {
        file_unpin(fs, file);
        if (error->code == EBUSY)
          g_message("open %s: %s", node->display, error->message);
        else
          g_warning("open %s: %s", node->display, error->message);
        errors_reply_gerror(req, error);
        return;
      }
      /* What a delta holds depends on which snapshot is the parent,
       * which libvirt may change under the same name: no cache across
       * opens. */
      fi->keep_cache = 0;
    }
  }
  /* Fill the kernel's cache ahead of a sequential reader of a disk: a
   * snapshot's or @now's, whose bytes stay the same as long as the handle
   * is open (every open @now handle shares one freeze).  Not a .delta:
   * two handles open at once may have different parents. */
  if (node->kind == TREE_DISK && fs->opts->prefetch_kib > 0)
    file->prefetch = read_prefetch_new(fs, file, ino);
  fi->direct_io = 0;
  fi->nonseekable = 0;
  /* No plan may write what this handle reads: deleting this point, or a
   * merge into its layers, fails with EBUSY until it is released. */
  if (file->chain && file->pinned_domain == NULL) {
    snap_pin_chain(host->snap, node->domain, file->chain);
    file->pinned_domain = g_strdup(node->domain);
  }

  VirtsnapfsFile *handle = g_steal_pointer(&file);
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->files_lock);
    g_hash_table_add(fs->files, handle);
  }
  fi->fh = (uint64_t)(uintptr_t)handle;
  g_debug("OPEN %s => size %" G_GUINT64_FORMAT, handle->display, handle->size);
  if (fuse_reply_open(req, fi) != 0) {
    /* Interrupted: the kernel will not release it. */
    {
      g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->files_lock);
      g_hash_table_remove(fs->files, handle);
    }
    file_close(fs, handle);
  }
}

void
ops_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  VirtsnapfsFile *file = ops_file(fi);
  gboolean owned;

  g_debug("RELEASE %s", file->display);
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->files_lock);
    owned = g_hash_table_remove(fs->files, file);
  }
  /* Unpin before the reply, thaw after it: the kernel sends RELEASE in
   * the background after close(2) has returned, so an rmdir right after
   * a close can race with it; unpinning first keeps that window to the
   * time the kernel takes to deliver RELEASE.  A thaw commits the
   * overlay back and may take a while; nothing need wait for it. */
  if (owned)
    file_unpin(fs, file);
  fuse_reply_err(req, 0);
  if (owned)
    file_close(fs, file);
}

void
ops_release_all(Virtsnapfs *fs)
{
  g_autoptr(GPtrArray) files = g_ptr_array_new();
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->files_lock);
    GHashTableIter iter;
    gpointer key;
    g_hash_table_iter_init(&iter, fs->files);
    while (g_hash_table_iter_next(&iter, &key, NULL))
      g_ptr_array_add(files, key);
    g_hash_table_remove_all(fs->files);
  }
  for (guint i = 0; i < files->len; i++) {
    VirtsnapfsFile *file = files->pdata[i];
    g_message("closing %s, still open at exit", file->display);
    file_close(fs, file);
  }
}
