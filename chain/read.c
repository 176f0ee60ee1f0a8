/* read.c: guest reads of a chain.
 *
 * chain_read() walks the merged map (region.c) and turns it into I/O: data
 * runs that are adjacent in the guest and in one layer's file become one
 * pread, zero runs are memset without I/O, compressed clusters are inflated
 * (zlib raw deflate, or zstd, per the image's compression_type).  Bytes
 * past the end of a layer's file read as zeros, as QEMU's file driver does.
 *
 * Thread model: any number of threads may read one chain.  Decompression
 * uses per-thread scratch (GPrivate): a compressed-input buffer, an output
 * cluster, and the zlib/zstd contexts, so the hot path does not allocate.
 * The scratch also remembers the last cluster it inflated, so sequential
 * small reads of a compressed cluster inflate it once.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "chain-private.h"
#include "qcow2-format.h"

typedef struct {
  guint8 *in;
  gsize in_size;
  guint8 *out;
  gsize out_size;
  z_stream zs;
  gboolean zs_ready;
  ZSTD_DCtx *zstd;
  /* what out holds */
  guint64 layer_id;
  guint64 host;
  gboolean valid;
} Scratch;

static void
scratch_free(gpointer p)
{
  Scratch *s = p;
  if (s->zs_ready)
    inflateEnd(&s->zs);
  ZSTD_freeDCtx(s->zstd);
  g_free(s->in);
  g_free(s->out);
  g_free(s);
}

static GPrivate scratch_key = G_PRIVATE_INIT(scratch_free);

static Scratch *
scratch_get(void)
{
  Scratch *s = g_private_get(&scratch_key);
  if (s == NULL) {
    s = g_new0(Scratch, 1);
    g_private_set(&scratch_key, s);
  }
  return s;
}

/* qcow2 stores zlib clusters as raw deflate with a 4 KiB window; the
 * compressed length is only known to the sector, so input may be left
 * over.  Success means a whole cluster came out. */
static gboolean
inflate_zlib(Scratch *s, const guint8 *in, gsize in_len, guint8 *out, gsize out_len)
{
  if (!s->zs_ready) {
    memset(&s->zs, 0, sizeof(s->zs));
    if (inflateInit2(&s->zs, -12) != Z_OK)
      return FALSE;
    s->zs_ready = TRUE;
  } else if (inflateReset(&s->zs) != Z_OK) {
    return FALSE;
  }
  s->zs.next_in = (Bytef *)in;
  s->zs.avail_in = (uInt)in_len;
  s->zs.next_out = out;
  s->zs.avail_out = (uInt)out_len;
  int r = inflate(&s->zs, Z_FINISH);
  return (r == Z_STREAM_END || r == Z_BUF_ERROR) && s->zs.avail_out == 0;
}

/* zstd clusters may hold several frames; decompression stops when a whole
 * cluster came out, and that must end a frame exactly. */
static gboolean
inflate_zstd(Scratch *s, const guint8 *in, gsize in_len, guint8 *out, gsize out_len)
{
  if (s->zstd == NULL && (s->zstd = ZSTD_createDCtx()) == NULL)
    return FALSE;
  ZSTD_DCtx_reset(s->zstd, ZSTD_reset_session_only);
  ZSTD_inBuffer input = {in, in_len, 0};
  ZSTD_outBuffer output = {out, out_len, 0};
  size_t r = 1;
  while (output.pos < output.size) {
    size_t in_pos = input.pos, out_pos = output.pos;
    r = ZSTD_decompressStream(s->zstd, &output, &input);
    if (ZSTD_isError(r))
      return FALSE;
    if (input.pos == in_pos && output.pos == out_pos)
      return FALSE; /* no progress: truncated input */
  }
  return r == 0;
}

/* Copies length bytes, from byte skip of the compressed cluster at host,
 * into buf.  Returns 0 or -errno (-EIO for corrupt data, logged once). */
int
chain_read_compressed(ChainLayer *layer, guint64 host, guint32 csize, guint64 skip, void *buf,
                      gsize length)
{
  Scratch *s = scratch_get();
  gsize cs = layer->cluster_size;

  if (!(s->valid && s->layer_id == layer->id && s->host == host)) {
    s->valid = FALSE;
    if (s->out_size < cs) {
      g_free(s->out);
      s->out = g_malloc(cs);
      s->out_size = cs;
    }
    if (s->in_size < csize) {
      g_free(s->in);
      s->in = g_malloc(csize);
      s->in_size = csize;
    }
    gsize got;
    int r = chain_pread_full(layer->fd, s->in, csize, host, &got);
    if (r < 0)
      return r;
    /* The last compressed cluster may end past the end of the file. */
    memset(s->in + got, 0, csize - got);
    gboolean ok = layer->compression_type == QCOW2_COMPRESSION_ZSTD
                      ? inflate_zstd(s, s->in, csize, s->out, cs)
                      : inflate_zlib(s, s->in, csize, s->out, cs);
    if (!ok) {
      chain_layer_report(layer, "compressed cluster at 0x%" G_GINT64_MODIFIER
                         "x (0x%x bytes) does not decompress to 0x%zx bytes (%s)",
                         host, csize, cs, layer->compression_type ? "zstd" : "zlib");
      return -EIO;
    }
    s->layer_id = layer->id;
    s->host = host;
    s->valid = TRUE;
  }
  memcpy(buf, s->out + skip, length);
  return 0;
}

/* A pending pread: guest-adjacent data runs of one file, host-contiguous. */
typedef struct {
  ChainLayer *layer;
  guint64 host;
  guint8 *buf;
  gsize length;
} PendingRead;

static int
pending_flush(PendingRead *p)
{
  if (p->length == 0)
    return 0;
  gsize got;
  int r = chain_pread_full(p->layer->fd, p->buf, p->length, p->host, &got);
  if (r < 0) {
    chain_layer_report(p->layer, "read of 0x%zx bytes at 0x%" G_GINT64_MODIFIER "x failed: %s",
                       p->length, p->host, g_strerror(-r));
    return r;
  }
  memset(p->buf + got, 0, p->length - got); /* past the end of the file */
  p->length = 0;
  return 0;
}

gssize
chain_read(Chain *chain, void *buf, gsize length, guint64 offset)
{
  if (offset >= chain->virtual_size || length == 0)
    return 0;
  length = (gsize)MIN((guint64)length, chain->virtual_size - offset);
  if (length > G_MAXSSIZE)
    length = G_MAXSSIZE;

  guint8 *out = buf;
  guint64 pos = offset, end = offset + length;
  PendingRead pending = {0};

  g_auto(ChainRunIter) it = chain_run_iter(chain, offset, end, TRUE, FALSE);
  const ChainRun *run;
  int r;
  while ((r = chain_run_iter_next(&it, &run)) > 0) {
    guint64 skip = pos - run->offset;
    gsize n = (gsize)(MIN(run->offset + run->length, end) - pos);
    guint8 *dst = out + (pos - offset);
    ChainLayer *layer = run->layer < chain->depth ? chain->layers[run->layer] : NULL;

    switch ((ChainRunKind)run->kind) {
    case CHAIN_RUN_DATA:
      if (pending.length > 0 && pending.layer == layer &&
          pending.host + pending.length == run->host + skip &&
          pending.buf + pending.length == dst) {
        pending.length += n;
        break;
      }
      r = pending_flush(&pending);
      if (r < 0)
        return r;
      pending = (PendingRead){layer, run->host + skip, dst, n};
      break;
    case CHAIN_RUN_ZERO:
      memset(dst, 0, n);
      break;
    case CHAIN_RUN_COMPRESSED: {
      guint64 cluster_skip = pos & (layer->cluster_size - 1);
      r = chain_read_compressed(layer, run->host, run->csize, cluster_skip, dst, n);
      if (r < 0)
        return r;
      break;
    }
    case CHAIN_RUN_ERROR:
    default:
      return -EIO;
    }
    pos += n;
  }
  if (r < 0)
    return r;
  r = pending_flush(&pending);
  if (r < 0)
    return r;
  return (gssize)length;
}
