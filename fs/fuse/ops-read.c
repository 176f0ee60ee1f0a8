/* ops-read.c: open, read, lseek and release of the files in the tree.
 *
 * open() pins what a file reads (DESIGN.md 4): a snapshot's <target>.raw
 * opens the chain of its point image and keeps every layer's descriptor
 * until release(); @now/<target>.raw first freezes the domain (one
 * snap_freeze() per open handle, paired with snap_thaw() at
 * release: fs/snap shares one temporary overlay between them) and
 * then opens the frozen image's chain.  snapshot.xml copies the XML.
 * A disk whose images are not visible on this machine (a remote host
 * without shared storage, info.c) fails with EREMOTE before anything is
 * frozen.
 * A snapshot's <target>.delta opens and pins the chain like the .raw and
 * gets its delta against the parent point from delta.c.
 *
 * read() answers from chain_map(): data runs become FUSE_BUF_IS_FD |
 * FUSE_BUF_FD_SEEK buffers (layer descriptor + host offset), so with
 * splice the bytes go from the page cache of the image to the FUSE device
 * without a copy through the daemon; zero runs point at one static zero
 * buffer; compressed runs are decompressed by chain_read() into a scratch
 * buffer owned by the worker thread.  Nothing is allocated per read once a
 * thread's buffers have grown to the largest request.  A .delta reads
 * the same way inside its data extents and as zeros in its holes.
 *
 * A <target>.raw, a snapshot's or @now's, is also prefetched: once it
 * is read sequentially, prefetch.c stores it into the kernel's page cache
 * ahead of the reader, built the same way as a READ reply.  Its stores
 * end at release, before an @now freeze may be thawed, and the next
 * freeze's open drops the cache (keep_cache 0).
 *
 * Thread model: FUSE workers, many reads of one handle at once, and a
 * prefetch thread building stores the same way.  A handle is immutable
 * after open (the Chain has its own locks, the Prefetch its own lock; the
 * Prefetch is freed at release, after the last READ); the only shared
 * mutable bit is the "error logged" flag, an atomic.  fs->files (the set
 * of open handles, for shutdown) has its own lock, not taken by read().
 */
#include "virtsnapfs.h"
#include "prefetch.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

struct _VirtsnapfsFile {
  TreeKind kind;
  VirtsnapfsHost *host; /* whose backend pinned and froze (lives as long
                         * as the mount) */
  char *display;        /* "demo/s1/vda.raw", for log lines */
  Chain *chain;         /* TREE_DISK, TREE_DELTA */
  ChainDelta *delta;    /* TREE_DELTA */
  guint64 size;
  GBytes *bytes;        /* TREE_XML */
  char *frozen_domain;  /* @now: the domain to thaw at release */
  char *pinned_domain;  /* the chain is pinned in the backend (DESIGN.md
                         * 4.3): unpinned at release */
  gint error_logged;    /* atomic: a data error was logged */
  Prefetch *prefetch;   /* a .raw, unless -o prefetch=0 */
};

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

static VirtsnapfsFile *
req_file(struct fuse_file_info *fi)
{
  return (VirtsnapfsFile *)(uintptr_t)fi->fh;
}

static void
file_data_error(VirtsnapfsFile *file, const char *what, guint64 off, int err)
{
  if (g_atomic_int_compare_and_exchange(&file->error_logged, 0, 1))
    g_warning("%s: %s at offset 0x%" G_GINT64_MODIFIER "x: %s (further errors of this "
              "file are not logged)", file->display, what, off, g_strerror(-err));
}

static Prefetch *file_prefetch_new(Virtsnapfs *fs, VirtsnapfsFile *file, fuse_ino_t ino);

/* Opens the chain of a disk; the model's image directories are the policy. */
static Chain *
open_disk_chain(const BackendDisk *disk, BackendModel *model, GError **error)
{
  ChainPolicy policy = { .image_dirs = (const char *const *)model->image_dirs };
  g_autoptr(Chain) chain = chain_open(disk->image_path, disk->format, disk->backing_formats,
                                      &policy, error);
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
  return !info_cache_get(host->info, disk, (const char *const *)model->image_dirs, live, &info,
                         &error) &&
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
  g_autoptr(TreeNode) node = tree_get(fs->tree, ino);
  g_autoptr(GError) error = NULL;

  if (node == NULL) {
    fuse_reply_err(req, ESTALE);
    return;
  }
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
       * answers for the same chain (DESIGN.md 4.1). */
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
    file->prefetch = file_prefetch_new(fs, file, ino);
  fi->direct_io = 0;
  fi->nonseekable = 0;
  /* No plan may write what this handle reads (DESIGN.md 4.3): deleting
   * this point, or a merge into its layers, fails with EBUSY until it is
   * released. */
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

/* ------------------------------------------------------------------ */
/* read                                                                 */

/* Zero runs all point into this; never written.  Zero runs longer than
 * it become several buffers. */
#define ZERO_BUFFER_SIZE (256 * 1024)
static char zero_buffer[ZERO_BUFFER_SIZE];

/* Per-thread buffers, grown to the largest request and reused. */
typedef struct {
  struct fuse_bufvec *bufv;
  gsize bufv_capacity;  /* entries in bufv->buf */
  char *scratch;        /* compressed runs */
  gsize scratch_size;
} ReadBuffers;

static void
read_buffers_free(gpointer data)
{
  ReadBuffers *rb = data;
  g_free(rb->bufv);
  g_free(rb->scratch);
  g_free(rb);
}

static GPrivate read_buffers_key = G_PRIVATE_INIT(read_buffers_free);

static ReadBuffers *
read_buffers(gsize size)
{
  ReadBuffers *rb = g_private_get(&read_buffers_key);
  if (rb == NULL) {
    rb = g_new0(ReadBuffers, 1);
    g_private_set(&read_buffers_key, rb);
  }
  if (rb->scratch_size < size) {
    g_free(rb->scratch);
    rb->scratch = g_malloc(size);
    rb->scratch_size = size;
  }
  return rb;
}

/* Appends a buffer to the thread's vector, growing it when full. */
static struct fuse_buf *
bufv_push(ReadBuffers *rb)
{
  if (rb->bufv == NULL || rb->bufv->count == rb->bufv_capacity) {
    gsize cap = MAX(rb->bufv_capacity * 2, 64);
    gsize count = rb->bufv ? rb->bufv->count : 0;
    rb->bufv = g_realloc(rb->bufv, sizeof(struct fuse_bufvec) +
                                   (cap - 1) * sizeof(struct fuse_buf));
    rb->bufv->count = count;
    rb->bufv_capacity = cap;
  }
  struct fuse_buf *buf = &rb->bufv->buf[rb->bufv->count++];
  memset(buf, 0, sizeof *buf);
  return buf;
}

/* Appends n bytes of zeros to the thread's bufvec. */
static void
push_zeros(ReadBuffers *rb, gsize n)
{
  for (gsize done = 0; done < n;) {
    struct fuse_buf *last = rb->bufv->count ? &rb->bufv->buf[rb->bufv->count - 1] : NULL;
    if (last && last->mem == zero_buffer && last->size < ZERO_BUFFER_SIZE) {
      gsize add = MIN(n - done, ZERO_BUFFER_SIZE - last->size);
      last->size += add;
      done += add;
      continue;
    }
    struct fuse_buf *b = bufv_push(rb);
    b->mem = zero_buffer;
    b->size = MIN(n - done, (gsize)ZERO_BUFFER_SIZE);
    done += b->size;
  }
}

/* Appends guest [off, off + len) of file's chain to the thread's bufvec;
 * *scratch_used counts the scratch bytes taken by compressed runs.
 * Returns 0 or -errno. */
static int
read_build_chain(VirtsnapfsFile *file, ReadBuffers *rb, gsize *scratch_used, guint64 off,
                 gsize len)
{
  guint64 pos = off, end = off + len;

  while (pos < end) {
    ChainExtent ext;
    int r = chain_map(file->chain, pos, end - pos, &ext);
    if (r < 0)
      return r;
    if (ext.length == 0 || ext.offset != pos)
      return -EIO;
    gsize n = (gsize)MIN(ext.length, end - pos);
    struct fuse_buf *last = rb->bufv->count ? &rb->bufv->buf[rb->bufv->count - 1] : NULL;

    switch (ext.kind) {
    case CHAIN_EXTENT_DATA:
      if (last && (last->flags & FUSE_BUF_IS_FD) && last->fd == ext.fd &&
          (guint64)last->pos + last->size == ext.host_offset) {
        last->size += n;
        break;
      }
      {
        struct fuse_buf *b = bufv_push(rb);
        b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY;
        b->fd = ext.fd;
        b->pos = (off_t)ext.host_offset;
        b->size = n;
      }
      break;

    case CHAIN_EXTENT_ZERO:
      push_zeros(rb, n);
      break;

    case CHAIN_EXTENT_COMPRESSED: {
      char *dst = rb->scratch + *scratch_used;
      gssize got = chain_read(file->chain, dst, n, pos);
      if (got < 0)
        return (int)got;
      if ((gsize)got != n)
        return -EIO;
      if (last && last->mem == dst - last->size && (char *)last->mem >= rb->scratch &&
          (char *)last->mem < rb->scratch + rb->scratch_size) {
        last->size += n;
      } else {
        struct fuse_buf *b = bufv_push(rb);
        b->mem = dst;
        b->size = n;
      }
      *scratch_used += n;
      break;
    }
    }
    pos += n;
  }
  return 0;
}

/* Fills the thread's bufvec for [off, off + len) of file: the chain's
 * bytes, or for a .delta the chain's bytes in data extents and zeros in
 * holes.  Returns 0 or -errno. */
static int
read_build(VirtsnapfsFile *file, ReadBuffers *rb, guint64 off, gsize len)
{
  gsize scratch_used = 0;
  if (file->delta == NULL)
    return read_build_chain(file, rb, &scratch_used, off, len);

  for (guint64 pos = off, end = off + len; pos < end;) {
    guint64 run_end;
    gboolean data = chain_delta_run(file->delta, pos, &run_end);
    gsize n = (gsize)(MIN(run_end, end) - pos);
    if (!data) {
      push_zeros(rb, n);
    } else {
      int r = read_build_chain(file, rb, &scratch_used, pos, n);
      if (r < 0)
        return r;
    }
    pos += n;
  }
  return 0;
}

/* Builds [off, off + len) of file into the thread's buffers; 0 or -errno. */
static int
read_fill(VirtsnapfsFile *file, guint64 off, gsize len, struct fuse_bufvec **bufv)
{
  ReadBuffers *rb = read_buffers(len);
  if (rb->bufv == NULL)
    bufv_push(rb);
  rb->bufv->count = 0;
  int r = read_build(file, rb, off, len);
  if (r < 0)
    return r;
  rb->bufv->idx = 0;
  rb->bufv->off = 0;
  *bufv = rb->bufv;
  return 0;
}

/* prefetch.c's view of a .raw. */
static int
prefetch_fill(gpointer data, guint64 off, gsize len, struct fuse_bufvec **bufv)
{
  return read_fill(data, off, len, bufv);
}

/* Holes in the default granules whatever -o hole_granularity says:
 * storing a small hole's zeros costs less than a store per data run. */
static gint64
prefetch_seek(gpointer data, guint64 off, int whence)
{
  VirtsnapfsFile *file = data;
  return chain_seek_granular(file->chain, off, whence,
                             (guint64)VIRTSNAPFS_DEFAULT_HOLE_KIB * 1024);
}

static Prefetch *
file_prefetch_new(Virtsnapfs *fs, VirtsnapfsFile *file, fuse_ino_t ino)
{
  static const PrefetchSource source = { .seek = prefetch_seek, .fill = prefetch_fill };
  return prefetch_new(fs->se, ino, file->display, file->size,
                      (guint64)fs->opts->prefetch_kib * 1024, &source, file,
                      fs->splice ? FUSE_BUF_SPLICE_MOVE : FUSE_BUF_NO_SPLICE);
}

static void
read_xml(fuse_req_t req, VirtsnapfsFile *file, size_t size, off_t off)
{
  /* Our own reference: once the kernel has the reply it may release the
   * handle (from another worker) while fuse_reply_buf() returns. */
  g_autoptr(GBytes) bytes = g_bytes_ref(file->bytes);
  gsize len;
  const char *data = g_bytes_get_data(bytes, &len);
  if ((guint64)off >= len) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  fuse_reply_buf(req, data + off, MIN(size, len - (gsize)off));
}

void
ops_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  VirtsnapfsFile *file = req_file(fi);

  if (file->kind == TREE_XML) {
    read_xml(req, file, size, off);
    return;
  }
  if (off < 0 || (guint64)off >= file->size || size == 0) {
    LOG_TRACE("READ %s off=%" G_GINT64_FORMAT " len=%zu => 0", file->display, (gint64)off, size);
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  gsize len = (gsize)MIN((guint64)size, file->size - (guint64)off);
  /* Held until the reply is sent: a release may free the handle as soon
   * as the kernel has the data, and the reply's buffers name the chain's
   * descriptors.  Nothing touches file after fuse_reply_data(). */
  g_autoptr(Chain) chain = chain_ref(file->chain);

  if (file->prefetch)
    prefetch_note_read(file->prefetch, (guint64)off, len);
  struct fuse_bufvec *bufv;
  int r = read_fill(file, (guint64)off, len, &bufv);
  if (r < 0) {
    file_data_error(file, "read", (guint64)off, r);
    LOG_TRACE("READ %s off=%" G_GINT64_FORMAT " len=%zu => %s", file->display, (gint64)off,
            size, g_strerror(-r));
    fuse_reply_err(req, EIO);
    return;
  }

  LOG_TRACE("READ %s off=%" G_GINT64_FORMAT " len=%zu => %zu (%zu buffers)", file->display,
          (gint64)off, size, len, bufv->count);
  r = fuse_reply_data(req, bufv, fs->splice ? FUSE_BUF_SPLICE_MOVE : FUSE_BUF_NO_SPLICE);
  if (r < 0 && r != -ENOENT)
    LOG_TRACE("READ reply at offset %" G_GINT64_FORMAT ": %s", (gint64)off, g_strerror(-r));
}

/* ------------------------------------------------------------------ */
/* lseek, release                                                       */

void
ops_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  VirtsnapfsFile *file = req_file(fi);
  gint64 r;

  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (off < 0) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  if ((guint64)off >= file->size)
    r = -ENXIO;
  else if (file->kind == TREE_XML)
    r = whence == SEEK_DATA ? off : (gint64)file->size;
  else if (file->delta != NULL)
    r = chain_delta_seek(file->delta, (guint64)off, whence);
  else
    r = chain_seek_granular(file->chain, (guint64)off, whence,
                            (guint64)fs->opts->hole_kib * 1024);

  LOG_TRACE("LSEEK %s off=%" G_GINT64_FORMAT " %s => %" G_GINT64_FORMAT, file->display,
          (gint64)off, whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", r);
  if (r < 0) {
    if (r != -ENXIO)
      file_data_error(file, "seek", (guint64)off, (int)r);
    fuse_reply_err(req, r == -ENXIO ? ENXIO : EIO);
    return;
  }
  fuse_reply_lseek(req, (off_t)r);
}

void
ops_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  VirtsnapfsFile *file = req_file(fi);
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
