/* layer-map.c: from guest offsets to runs of one kind, in one layer.
 *
 * chain_layer_map() answers for one layer: the longest run, from an offset,
 * of unallocated, data (host-contiguous), zero, compressed (one cluster) or
 * corrupt clusters, through L1 and L2 (standard or extended entries).  A
 * corrupt entry becomes an ERROR run for the clusters it covers, logged
 * once per layer, so only reads that touch it fail (as in QEMU).
 * chain_layer_allocation() is the same walk over the whole layer, as a
 * bitmap (the planner's costs, delta files).
 *
 * Thread model: no state of its own; L2 slices come from the shared,
 * locked cache (l2-cache.c) and the L1 table is loaded once (layer.c).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "chain-private.h"
#include "qcow2-format.h"

static int
error_run(guint64 length, LayerRun *run)
{
  *run = (LayerRun){.kind = LAYER_RUN_ERROR, .length = length};
  return 0;
}

/* Raw images: data where the file has data, zeros in holes and in the tail
 * past the end of the file. */
static int
raw_map(ChainLayer *layer, guint64 offset, guint64 length, LayerRun *run)
{
  guint64 end = offset + length;
  if (offset >= layer->file_size) {
    *run = (LayerRun){.kind = LAYER_RUN_ZERO, .length = length};
    return 0;
  }
  end = MIN(end, layer->file_size);
  off_t data = lseek(layer->fd, (off_t)offset, SEEK_DATA);
  if (data < 0 && errno == ENXIO) {
    *run = (LayerRun){.kind = LAYER_RUN_ZERO, .length = end - offset};
    return 0;
  }
  if (data >= 0 && (guint64)data > offset) {
    *run = (LayerRun){.kind = LAYER_RUN_ZERO, .length = MIN((guint64)data, end) - offset};
    return 0;
  }
  guint64 data_end = end;
  if (data >= 0) {
    off_t hole = lseek(layer->fd, (off_t)offset, SEEK_HOLE);
    if (hole >= 0 && (guint64)hole > offset)
      data_end = MIN((guint64)hole, end);
  }
  *run = (LayerRun){.kind = LAYER_RUN_DATA, .length = data_end - offset, .host = offset};
  return 0;
}

/* Checks a data cluster's host offset ("Standard Cluster Descriptor"). */
static gboolean
data_offset_ok(ChainLayer *layer, guint64 host, guint64 guest)
{
  if (host & (layer->cluster_size - 1)) {
    chain_layer_report(layer,
                       "data cluster offset 0x%" G_GINT64_MODIFIER "x for guest offset 0x%" G_GINT64_MODIFIER
                       "x is not cluster-aligned",
                       host, guest);
    return FALSE;
  }
  if (host >= layer->file_size) {
    chain_layer_report(layer,
                       "data cluster offset 0x%" G_GINT64_MODIFIER "x for guest offset 0x%" G_GINT64_MODIFIER
                       "x is past the end of the file",
                       host, guest);
    return FALSE;
  }
  return TRUE;
}

/* Decodes the L2 entry of the cluster at guest cstart for the piece of it
 * that starts at pos: its kind, length (to the end of the cluster or of a
 * stretch of subclusters of one kind) and host offset. */
static void
decode_entry(ChainLayer *layer, const guint64 *entry, guint64 cstart, guint64 pos, LayerRun *piece)
{
  guint64 cs = layer->cluster_size;
  guint64 e = entry[0];
  guint64 bitmap = layer->extended_l2 ? entry[1] : 0;
  *piece = (LayerRun){.kind = LAYER_RUN_ERROR, .length = cstart + cs - pos};

  if (e & QCOW2_L2_COMPRESSED) {
    /* "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8). */
    guint x = 62 - (layer->cluster_bits - 8);
    guint64 host = e & ((G_GUINT64_CONSTANT(1) << x) - 1);
    guint64 sectors = ((e >> x) & ((G_GUINT64_CONSTANT(1) << (layer->cluster_bits - 8)) - 1)) + 1;
    if (bitmap != 0) {
      chain_layer_report(layer, "compressed cluster at guest 0x%" G_GINT64_MODIFIER
                         "x has a subcluster bitmap 0x%" G_GINT64_MODIFIER "x",
                         cstart, bitmap);
      return;
    }
    if (host >> 56) {
      chain_layer_report(layer, "compressed cluster offset 0x%" G_GINT64_MODIFIER
                         "x has reserved bits set", host);
      return;
    }
    if (host < cs || host >= layer->file_size) {
      chain_layer_report(layer, "compressed cluster offset 0x%" G_GINT64_MODIFIER
                         "x for guest 0x%" G_GINT64_MODIFIER "x is outside the file's data area",
                         host, cstart);
      return;
    }
    piece->kind = LAYER_RUN_COMPRESSED;
    piece->host = host;
    piece->csize = (guint32)(sectors * QCOW2_COMPRESSED_SECTOR - (host & 511));
    return;
  }

  guint64 reserved = QCOW2_L2_RESERVED_MASK | (layer->extended_l2 ? QCOW2_L2_ZERO : 0);
  if (e & reserved) {
    chain_layer_report(layer, "L2 entry 0x%" G_GINT64_MODIFIER "x for guest 0x%" G_GINT64_MODIFIER
                       "x has reserved bits set", e, cstart);
    return;
  }
  guint64 host = e & QCOW2_L2_OFFSET_MASK;
  if (host == 0 && (e & QCOW2_L2_COPIED)) {
    chain_layer_report(layer, "L2 entry 0x%" G_GINT64_MODIFIER "x for guest 0x%" G_GINT64_MODIFIER
                       "x has host offset 0 (external data file layout)", e, cstart);
    return;
  }

  if (!layer->extended_l2) {
    if (e & QCOW2_L2_ZERO) {
      /* A preallocated zero cluster's offset is never read, but it must be
       * aligned all the same. */
      if (host & (cs - 1)) {
        data_offset_ok(layer, host, cstart);
        return;
      }
      piece->kind = LAYER_RUN_ZERO;
    } else if (host == 0) {
      piece->kind = LAYER_RUN_UNALLOCATED;
    } else if (data_offset_ok(layer, host, cstart)) {
      piece->kind = LAYER_RUN_DATA;
      piece->host = host + (pos - cstart);
    }
    return;
  }

  /* "Extended L2 Entries": 32 subclusters, bits 0-31 allocated, 32-63 zero. */
  guint32 alloc = (guint32)(bitmap & QCOW2_EXTL2_ALLOC_MASK);
  guint32 zero = (guint32)(bitmap >> QCOW2_EXTL2_ZERO_SHIFT);
  if (alloc & zero) {
    chain_layer_report(layer, "subcluster bitmap 0x%" G_GINT64_MODIFIER "x for guest 0x%" G_GINT64_MODIFIER
                       "x marks subclusters both allocated and zero", bitmap, cstart);
    return;
  }
  if (alloc != 0 && host == 0) {
    chain_layer_report(layer, "allocated subclusters without a host offset at guest 0x%" G_GINT64_MODIFIER "x",
                       cstart);
    return;
  }
  if (host != 0 && (host & (cs - 1))) {
    data_offset_ok(layer, host, cstart);
    return;
  }
  if (alloc != 0 && !data_offset_ok(layer, host, cstart))
    return;

  guint sc_bits = layer->cluster_bits - 5;
  guint sc = (guint)((pos - cstart) >> sc_bits);
  gboolean is_alloc = (alloc >> sc) & 1, is_zero = (zero >> sc) & 1;
  guint last = sc + 1;
  while (last < QCOW2_SUBCLUSTERS && (gboolean)((alloc >> last) & 1) == is_alloc &&
         (gboolean)((zero >> last) & 1) == is_zero)
    last++;
  piece->length = cstart + ((guint64)last << sc_bits) - pos;
  if (is_alloc) {
    piece->kind = LAYER_RUN_DATA;
    piece->host = host + (pos - cstart);
  } else {
    piece->kind = is_zero ? LAYER_RUN_ZERO : LAYER_RUN_UNALLOCATED;
  }
}

/* The longest run of one kind from offset, ending at or before offset +
 * length.  offset + length must not exceed the layer's virtual size.
 * Returns 0 (corruption gives an ERROR run) or -errno for I/O errors. */
int
chain_layer_map(ChainLayer *layer, guint64 offset, guint64 length, LayerRun *run)
{
  g_assert(length > 0 && offset + length <= layer->virtual_size);

  if (layer->format == CHAIN_FORMAT_RAW)
    return raw_map(layer, offset, length, run);

  int r = chain_layer_load_l1(layer);
  if (r < 0)
    return r;

  guint cb = layer->cluster_bits;
  guint64 cs = layer->cluster_size;
  guint64 cluster = offset >> cb;
  guint64 l1_index = cluster >> layer->l2_bits;
  guint64 end = MIN(offset + length, (l1_index + 1) << (cb + layer->l2_bits));

  guint64 l1e = layer->l1[l1_index];
  guint64 l2 = l1e & QCOW2_L1_OFFSET_MASK;
  guint64 l2_end;
  if (l1e & QCOW2_L1_RESERVED_MASK) {
    chain_layer_report(layer, "L1 entry 0x%" G_GINT64_MODIFIER "x (0x%" G_GINT64_MODIFIER
                       "x) has reserved bits set", l1_index, l1e);
    return error_run(end - offset, run);
  }
  if (l2 == 0) {
    *run = (LayerRun){.kind = LAYER_RUN_UNALLOCATED, .length = end - offset};
    return 0;
  }
  if (l2 & (cs - 1)) {
    chain_layer_report(layer, "L2 table offset 0x%" G_GINT64_MODIFIER "x is not cluster-aligned", l2);
    return error_run(end - offset, run);
  }
  if (l2 < cs) {
    chain_layer_report(layer, "L2 table offset 0x%" G_GINT64_MODIFIER "x overlaps the header", l2);
    return error_run(end - offset, run);
  }
  if (!g_uint64_checked_add(&l2_end, l2, cs) || l2_end > layer->file_size) {
    chain_layer_report(layer, "L2 table offset 0x%" G_GINT64_MODIFIER "x is past the end of the file", l2);
    return error_run(end - offset, run);
  }

  /* The slice of the L2 table that holds this cluster's entry. */
  guint64 index = cluster & ((G_GUINT64_CONSTANT(1) << layer->l2_bits) - 1);
  guint64 byte = index * layer->l2_entry_bytes;
  guint64 in_slice = byte & (layer->slice_bytes - 1);
  L2Slice *slice;
  r = l2_cache_get(layer, l2 + (byte - in_slice), &slice);
  if (r < 0)
    return r;
  guint64 slice_clusters = (layer->slice_bytes - in_slice) / layer->l2_entry_bytes;
  end = MIN(end, (cluster + slice_clusters) << cb);
  if (slice->n_words == 0) {
    l2_slice_unref(slice);
    *run = (LayerRun){.kind = LAYER_RUN_UNALLOCATED, .length = end - offset};
    return 0;
  }

  const guint64 *entry = slice->words + in_slice / 8;
  guint words = layer->l2_entry_bytes / 8;
  guint64 pos = offset;
  *run = (LayerRun){.kind = LAYER_RUN_UNALLOCATED, .length = 0};
  while (pos < end) {
    guint64 cstart = pos & ~(cs - 1);
    LayerRun piece;
    decode_entry(layer, entry, cstart, pos, &piece);
    piece.length = MIN(piece.length, end - pos);
    if (run->length == 0) {
      *run = piece;
    } else if (piece.kind != run->kind || piece.kind == LAYER_RUN_COMPRESSED ||
               (piece.kind == LAYER_RUN_DATA && piece.host != run->host + run->length)) {
      break;
    } else {
      run->length += piece.length;
    }
    if (run->kind == LAYER_RUN_COMPRESSED)
      break;
    pos += piece.length;
    if ((pos & (cs - 1)) == 0)
      entry += words;
  }
  l2_slice_unref(slice);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Per-layer allocation (planner, delta files)                         */

ChainBitmap *
chain_layer_allocation(ChainLayer *layer, guint64 granularity, GError **error)
{
  g_return_val_if_fail(granularity > 0 && (granularity & (granularity - 1)) == 0, NULL);

  g_autoptr(ChainBitmap) bitmap = chain_bitmap_new(granularity, layer->virtual_size);
  for (guint64 pos = 0; pos < layer->virtual_size;) {
    LayerRun run;
    int r = chain_layer_map(layer, pos, layer->virtual_size - pos, &run);
    if (r == 0 && run.kind == LAYER_RUN_ERROR)
      r = -EIO;
    if (r < 0) {
      g_set_error(error, CHAIN_ERROR, -r,
                  "%s: cannot map guest offset 0x%" G_GINT64_MODIFIER "x: %s (see the log)",
                  layer->path, pos, g_strerror(-r));
      return NULL;
    }
    if (run.kind != LAYER_RUN_UNALLOCATED)
      chain_bitmap_set_range(bitmap, pos, run.length);
    pos += run.length;
  }
  return g_steal_pointer(&bitmap);
}
