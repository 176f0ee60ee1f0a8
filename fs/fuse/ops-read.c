/* ops-read.c: read and lseek of open files, and the prefetch of a .raw.
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
 * ahead of the reader, built the same way as a READ reply.
 *
 * Thread model: FUSE workers, many reads of one handle at once, and a
 * prefetch thread building stores the same way.  A handle is immutable
 * after open (ops-open.c; the Chain has its own locks, the Prefetch its
 * own lock; the Prefetch is freed at release, after the last READ); the
 * only shared mutable bit is the "error logged" flag, an atomic.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

static void
file_data_error(VirtsnapfsFile *file, const char *what, guint64 off, int err)
{
  if (g_atomic_int_compare_and_exchange(&file->error_logged, 0, 1))
    g_warning("%s: %s at offset 0x%" G_GINT64_MODIFIER "x: %s (further errors of this "
              "file are not logged)", file->display, what, off, g_strerror(-err));
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

Prefetch *
read_prefetch_new(Virtsnapfs *fs, VirtsnapfsFile *file, fuse_ino_t ino)
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
  VirtsnapfsFile *file = ops_file(fi);

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
/* lseek                                                                */

void
ops_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  VirtsnapfsFile *file = ops_file(fi);
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
