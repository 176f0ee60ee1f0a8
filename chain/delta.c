/* delta.c: which granules of a point in time differ from its parent point.
 *
 * A .delta file (doc/design.md, "Reading") has data exactly where a point
 * in time differs from its parent point, so that the parent's image plus
 * the delta's data gives the point.  Two steps:
 *
 * 1. Candidates, from allocation only.  Two chains that end in the same
 *    layers (device, inode and format equal, counted from the bottom: the
 *    common base) read the same bytes wherever no layer above that base
 *    allocates anything, in either chain.  So the candidates are the
 *    granules that those upper layers allocate (data, zero or compressed
 *    clusters: a zero write or a discard that hides the base counts),
 *    plus what reads as zeros only because an upper layer or the parent is
 *    shorter than the disk.  For a parent that is an ancestor, the common
 *    base is the whole parent chain and only the point's own layers count;
 *    after merges or a revert the parent may sit on another branch, and
 *    then both sides' upper layers count (with no common base at all:
 *    every layer of both).
 * 2. Exactness: each candidate granule is read from both points and kept
 *    only if its bytes differ, so a cluster rewritten with the bytes it had
 *    (or zeroed where the parent read zeros) is not in the delta.
 *
 * With no parent (the first point in time), the delta is the point's
 * allocated data: the ranges SEEK_DATA reports, widened to granules.
 *
 * The result is a bitmap of granules.  Its size is bounded by the
 * granularity choice (chain_delta_granularity: at most 64 Mi granules,
 * 8 MiB), whatever the pattern of changes; an extent list could grow to
 * one entry per two granules.
 *
 * Thread model: computing runs on the caller's thread and only reads the
 * chains (which are thread-safe); a ChainDelta is immutable afterwards
 * and reference-counted.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "chain-private.h"

#define DELTA_MIN_GRANULARITY 4096
#define DELTA_MAX_GRANULES (G_GUINT64_CONSTANT(64) * 1024 * 1024)
/* Bytes compared per read of each chain. */
#define DELTA_CHUNK (1024 * 1024)

struct _ChainDelta {
  gint ref_count;
  guint64 virtual_size;
  guint64 bytes;
  ChainBitmap *granules; /* granularity = the delta's, nbits covers the disk */
};

guint64
chain_delta_granularity(guint64 virtual_size)
{
  guint64 g = DELTA_MIN_GRANULARITY;
  while (virtual_size / g > DELTA_MAX_GRANULES)
    g *= 2;
  return g;
}

static ChainDelta *
delta_new(ChainBitmap *granules, guint64 virtual_size)
{
  ChainDelta *delta = g_new0(ChainDelta, 1);
  delta->ref_count = 1;
  delta->virtual_size = virtual_size;
  delta->granules = granules;
  delta->bytes = chain_bitmap_bytes(granules, virtual_size);
  return delta;
}

ChainDelta *
chain_delta_ref(ChainDelta *delta)
{
  g_atomic_int_inc(&delta->ref_count);
  return delta;
}

void
chain_delta_unref(ChainDelta *delta)
{
  if (delta == NULL || !g_atomic_int_dec_and_test(&delta->ref_count))
    return;
  chain_bitmap_free(delta->granules);
  g_free(delta);
}

guint64
chain_delta_virtual_size(const ChainDelta *delta)
{
  return delta->virtual_size;
}

guint64
chain_delta_get_granularity(const ChainDelta *delta)
{
  return delta->granules->granularity;
}

guint64
chain_delta_bytes(const ChainDelta *delta)
{
  return delta->bytes;
}

/* ------------------------------------------------------------------ */
/* Candidates                                                          */

static gboolean
same_layer(const ChainLayer *a, const ChainLayer *b)
{
  return a->dev == b->dev && a->ino == b->ino && a->format == b->format;
}

/* Layers counted from the bottom that both chains share. */
static guint
common_base(const Chain *a, const Chain *b)
{
  guint n = 0;
  while (n < a->depth && n < b->depth &&
         same_layer(a->layers[a->depth - 1 - n], b->layers[b->depth - 1 - n]))
    n++;
  return n;
}

static gboolean
set_error_from(GError **error, int err, const Chain *chain, const char *what, guint64 offset)
{
  g_set_error(error, CHAIN_ERROR, err,
              "%s: cannot %s at guest offset 0x%" G_GINT64_MODIFIER "x: %s (see the log)",
              chain->layers[0]->path, what, offset, g_strerror(err));
  return FALSE;
}

/* Marks the allocated data of chain (what SEEK_DATA reports). */
static gboolean
mark_allocated(ChainBitmap *out, Chain *chain, GError **error)
{
  for (guint64 pos = 0; pos < chain->virtual_size;) {
    gint64 data = chain_seek(chain, pos, SEEK_DATA);
    if (data == -ENXIO)
      break;
    if (data < 0)
      return set_error_from(error, (int)-data, chain, "map", pos);
    gint64 hole = chain_seek(chain, (guint64)data, SEEK_HOLE);
    if (hole < 0)
      return set_error_from(error, (int)-hole, chain, "map", (guint64)data);
    chain_bitmap_set_range(out, (guint64)data, (guint64)(hole - data));
    pos = (guint64)hole;
  }
  return TRUE;
}

/* Marks what the top `upper` layers of chain can make differ from the
 * common base below them: their allocation, and the ranges a layer
 * shorter than the chain cuts off (they read as zeros whatever the layers
 * below hold). */
static gboolean
mark_upper_layers(ChainBitmap *out, Chain *chain, guint upper, GError **error)
{
  for (guint i = 0; i < upper; i++) {
    ChainLayer *layer = chain->layers[i];
    ChainBitmap *alloc = chain_layer_allocation(layer, out->granularity, error);
    if (alloc == NULL)
      return FALSE;
    chain_bitmap_or(out, alloc);
    chain_bitmap_free(alloc);
    if (layer->virtual_size < chain->virtual_size)
      chain_bitmap_set_range(out, layer->virtual_size,
                             chain->virtual_size - layer->virtual_size);
  }
  return TRUE;
}

static ChainBitmap *
candidates(Chain *point, Chain *parent, GError **error)
{
  guint64 size = point->virtual_size;
  g_autoptr(ChainBitmap) out = chain_bitmap_new(chain_delta_granularity(size), size);

  if (parent == NULL)
    return mark_allocated(out, point, error) ? g_steal_pointer(&out) : NULL;

  guint base = common_base(point, parent);
  if (!mark_upper_layers(out, point, point->depth - base, error) ||
      !mark_upper_layers(out, parent, parent->depth - base, error))
    return NULL;
  /* Past the end of a shorter parent the point compares with zeros: the
   * bytes it reads there from the common base are new. */
  if (parent->virtual_size < size)
    chain_bitmap_set_range(out, parent->virtual_size, size - parent->virtual_size);
  return g_steal_pointer(&out);
}

ChainDelta *
chain_delta_candidates(Chain *point, Chain *parent, GError **error)
{
  ChainBitmap *granules = candidates(point, parent, error);
  return granules ? delta_new(granules, point->virtual_size) : NULL;
}

/* ------------------------------------------------------------------ */
/* Exact                                                               */

/* Reads guest [offset, offset + length) of chain into buf; bytes past the
 * chain's end read as zeros. */
static gboolean
read_or_zeros(Chain *chain, guint8 *buf, gsize length, guint64 offset, GError **error)
{
  gsize got = 0;
  if (offset < chain->virtual_size) {
    gssize r = chain_read(chain, buf, length, offset);
    if (r < 0)
      return set_error_from(error, (int)-r, chain, "read", offset);
    got = (gsize)r;
  }
  memset(buf + got, 0, length - got);
  return TRUE;
}

ChainDelta *
chain_delta_compute(Chain *point, Chain *parent, GError **error)
{
  g_autoptr(ChainBitmap) cand = candidates(point, parent, error);
  if (cand == NULL)
    return NULL;
  if (parent == NULL)
    return delta_new(g_steal_pointer(&cand), point->virtual_size);

  guint64 size = point->virtual_size;
  guint64 g = cand->granularity;
  guint64 chunk_granules = MAX(DELTA_CHUNK / g, 1);
  g_autoptr(ChainBitmap) out = chain_bitmap_new(g, size);
  g_autofree guint8 *mine = g_malloc(chunk_granules * g);
  g_autofree guint8 *theirs = g_malloc(chunk_granules * g);

  for (guint64 bit = chain_bitmap_next(cand, 0, TRUE); bit < cand->nbits;) {
    guint64 stop = chain_bitmap_next(cand, bit, FALSE);
    while (bit < stop) {
      guint64 n = MIN(stop - bit, chunk_granules);
      guint64 offset = bit * g;
      gsize length = (gsize)MIN(n * g, size - offset);
      if (!read_or_zeros(point, mine, length, offset, error) ||
          !read_or_zeros(parent, theirs, length, offset, error))
        return NULL;
      for (guint64 k = 0; k < n; k++) {
        gsize at = (gsize)(k * g);
        gsize len = (gsize)MIN(g, length - at);
        if (memcmp(mine + at, theirs + at, len) != 0)
          chain_bitmap_set_range(out, offset + at, len);
      }
      bit += n;
    }
    bit = chain_bitmap_next(cand, stop, TRUE);
  }
  return delta_new(g_steal_pointer(&out), size);
}

/* ------------------------------------------------------------------ */
/* Queries                                                             */

gboolean
chain_delta_run(const ChainDelta *delta, guint64 offset, guint64 *end)
{
  const ChainBitmap *b = delta->granules;
  guint64 bit = offset / b->granularity;
  gboolean data = chain_bitmap_get(b, bit);
  guint64 next = chain_bitmap_next(b, bit, !data);
  *end = MIN(next * b->granularity, delta->virtual_size);
  return data;
}

gint64
chain_delta_seek(const ChainDelta *delta, guint64 offset, int whence)
{
  if (whence != SEEK_DATA && whence != SEEK_HOLE)
    return -EINVAL;
  if (offset >= delta->virtual_size)
    return -ENXIO;
  const ChainBitmap *b = delta->granules;
  guint64 bit = offset / b->granularity;
  gboolean want = whence == SEEK_DATA;
  if (chain_bitmap_get(b, bit) == want)
    return (gint64)offset;
  guint64 next = chain_bitmap_next(b, bit, want);
  if (next >= b->nbits)
    return want ? -ENXIO : (gint64)delta->virtual_size;
  return (gint64)MIN(next * b->granularity, delta->virtual_size);
}
