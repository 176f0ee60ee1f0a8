/* map.c: from guest offsets to runs of one kind.
 *
 * chain_layer_map() answers for one layer: the longest run, from an offset,
 * of unallocated, data (host-contiguous), zero, compressed (one cluster) or
 * corrupt clusters, through L1 and L2 (standard or extended entries).  A
 * corrupt entry becomes an ERROR run for the clusters it covers, logged
 * once per layer, so only reads that touch it fail (as in QEMU).
 *
 * The merged map of a chain is computed per 2 MiB region of the guest disk
 * (CHAIN_REGION_SIZE): each layer, from the top, fills the parts that the
 * layers above left unallocated.  A region's runs are computed once and
 * kept in a per-Chain cache, bounded per chain and, more tightly, once all
 * chains together hold more than REGION_GLOBAL_BUDGET, so a read at depth
 * 200 costs the same as at depth 1 once its region is known.  Layers are immutable while a
 * chain is open (DESIGN.md 4.3), so cached maps never go stale.
 *
 * Thread model: regions are reference-counted and immutable once built;
 * each cache shard has its own mutex, held for hash lookups only.  Two
 * threads may compute the same region at once; the first to insert wins.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "chain-private.h"
#include "qcow2-format.h"

/* Runs cached per shard of a chain's region cache (about 32 bytes each). */
#define REGION_SHARD_BUDGET 8192
#define REGION_BASE_COST 4
/* All chains' cached runs together (4 MiB).  Past it, a chain that caches
 * a region first trims its own shard to REGION_SHARD_FLOOR, so that many
 * open chains do not each keep 2 MiB of maps; a sequential reader only
 * needs the region it is in. */
#define REGION_GLOBAL_BUDGET (128 * 1024)
#define REGION_SHARD_FLOOR 128

static gint64 region_cost_total; /* atomic: runs cached by all chains */

/* ------------------------------------------------------------------ */
/* One layer                                                           */

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
/* The merged map of a chain, by region                                */

typedef struct {
  guint64 start, end;
} Interval;

static void
interval_append(GArray *intervals, guint64 start, guint64 end)
{
  if (intervals->len > 0) {
    Interval *last = &g_array_index(intervals, Interval, intervals->len - 1);
    if (last->end == start) {
      last->end = end;
      return;
    }
  }
  Interval iv = {start, end};
  g_array_append_val(intervals, iv);
}

static gint
run_compare(gconstpointer a, gconstpointer b)
{
  const ChainRun *x = a, *y = b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static gboolean
runs_join(const ChainRun *a, const ChainRun *b)
{
  if (a->kind != b->kind || a->layer != b->layer || a->offset + a->length != b->offset)
    return FALSE;
  if (a->kind == CHAIN_RUN_COMPRESSED)
    return FALSE;
  if (a->kind == CHAIN_RUN_DATA)
    return a->host + a->length == b->host;
  return TRUE;
}

static int
region_compute(Chain *chain, guint64 index, ChainRegion **out)
{
  guint64 start = index << CHAIN_REGION_BITS;
  guint64 end = MIN(start + CHAIN_REGION_SIZE, chain->virtual_size);
  g_autoptr(GArray) runs = g_array_new(FALSE, FALSE, sizeof(ChainRun));
  g_autoptr(GArray) pending = g_array_new(FALSE, FALSE, sizeof(Interval));
  g_autoptr(GArray) next = g_array_new(FALSE, FALSE, sizeof(Interval));

  interval_append(pending, start, end);
  for (guint i = 0; i < chain->depth && pending->len > 0; i++) {
    ChainLayer *layer = chain->layers[i];
    g_array_set_size(next, 0);
    for (guint k = 0; k < pending->len; k++) {
      Interval iv = g_array_index(pending, Interval, k);
      if (iv.end > layer->virtual_size) {
        /* Past the end of a shorter backing file: zeros ("If there is no
         * backing file or the backing file is smaller than the image"). */
        guint64 zs = MAX(iv.start, layer->virtual_size);
        ChainRun zero = {.offset = zs, .length = iv.end - zs, .layer = (guint16)i,
                         .kind = CHAIN_RUN_ZERO};
        g_array_append_val(runs, zero);
        iv.end = zs;
      }
      for (guint64 pos = iv.start; pos < iv.end;) {
        LayerRun lr;
        int r = chain_layer_map(layer, pos, iv.end - pos, &lr);
        if (r < 0)
          return r;
        ChainRun run = {.offset = pos, .length = lr.length, .host = lr.host, .csize = lr.csize,
                        .layer = (guint16)i};
        switch (lr.kind) {
        case LAYER_RUN_UNALLOCATED:
          interval_append(next, pos, pos + lr.length);
          break;
        case LAYER_RUN_DATA:
          run.kind = CHAIN_RUN_DATA;
          run.allocated = TRUE;
          g_array_append_val(runs, run);
          break;
        case LAYER_RUN_COMPRESSED:
          run.kind = CHAIN_RUN_COMPRESSED;
          run.allocated = TRUE;
          g_array_append_val(runs, run);
          break;
        case LAYER_RUN_ZERO:
          run.kind = CHAIN_RUN_ZERO;
          g_array_append_val(runs, run);
          break;
        case LAYER_RUN_ERROR:
          run.kind = CHAIN_RUN_ERROR;
          g_array_append_val(runs, run);
          break;
        }
        pos += lr.length;
      }
    }
    GArray *swap = pending;
    pending = next;
    next = swap;
  }
  for (guint k = 0; k < pending->len; k++) {
    Interval iv = g_array_index(pending, Interval, k);
    ChainRun hole = {.offset = iv.start, .length = iv.end - iv.start,
                     .layer = (guint16)chain->depth, .kind = CHAIN_RUN_ZERO};
    g_array_append_val(runs, hole);
  }

  g_array_sort(runs, run_compare);
  guint n = 0;
  for (guint k = 0; k < runs->len; k++) {
    ChainRun *run = &g_array_index(runs, ChainRun, k);
    if (n > 0 && runs_join(&g_array_index(runs, ChainRun, n - 1), run))
      g_array_index(runs, ChainRun, n - 1).length += run->length;
    else
      g_array_index(runs, ChainRun, n++) = *run;
  }

  ChainRegion *region = g_malloc(sizeof(*region) + n * sizeof(ChainRun));
  region->ref_count = 1;
  region->index = index;
  region->link = (GList){.data = region};
  region->n_runs = n;
  memcpy(region->runs, runs->data, n * sizeof(ChainRun));
  *out = region;
  return 0;
}

void
chain_region_unref(ChainRegion *region)
{
  if (region != NULL && g_atomic_int_dec_and_test(&region->ref_count))
    g_free(region);
}

void
chain_regions_init(Chain *chain)
{
  for (guint i = 0; i < CHAIN_REGION_SHARDS; i++) {
    ChainRegionShard *shard = &chain->shards[i];
    g_mutex_init(&shard->lock);
    shard->regions = g_hash_table_new(g_int64_hash, g_int64_equal);
    g_queue_init(&shard->lru);
    shard->cost = 0;
  }
}

void
chain_regions_clear(Chain *chain)
{
  for (guint i = 0; i < CHAIN_REGION_SHARDS; i++) {
    ChainRegionShard *shard = &chain->shards[i];
    if (shard->regions == NULL)
      continue;
    for (GList *l = shard->lru.head; l != NULL;) {
      GList *next = l->next;
      chain_region_unref(l->data);
      l = next;
    }
    g_hash_table_destroy(shard->regions);
    g_mutex_clear(&shard->lock);
    __atomic_sub_fetch(&region_cost_total, (gint64)shard->cost, __ATOMIC_RELAXED);
  }
}

/* Returns a new reference to the merged map of region index.  With cache
 * FALSE a missing region is computed but not kept (whole-disk scans must
 * not evict what readers use). */
int
chain_region_get(Chain *chain, guint64 index, gboolean cache, ChainRegion **out)
{
  ChainRegionShard *shard = &chain->shards[index % CHAIN_REGION_SHARDS];
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&shard->lock);
    ChainRegion *hit = g_hash_table_lookup(shard->regions, &index);
    if (hit != NULL) {
      if (shard->lru.head != &hit->link) {
        g_queue_unlink(&shard->lru, &hit->link);
        g_queue_push_head_link(&shard->lru, &hit->link);
      }
      g_atomic_int_inc(&hit->ref_count);
      *out = hit;
      return 0;
    }
  }

  ChainRegion *region;
  int r = region_compute(chain, index, &region);
  if (r < 0)
    return r;
  if (!cache) {
    *out = region;
    return 0;
  }

  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&shard->lock);
  ChainRegion *hit = g_hash_table_lookup(shard->regions, &index);
  if (hit != NULL) {
    chain_region_unref(region);
    g_atomic_int_inc(&hit->ref_count);
    *out = hit;
    return 0;
  }
  g_hash_table_insert(shard->regions, &region->index, region);
  g_queue_push_head_link(&shard->lru, &region->link);
  guint64 cost = region->n_runs + REGION_BASE_COST;
  shard->cost += cost;
  gint64 total = __atomic_add_fetch(&region_cost_total, (gint64)cost, __ATOMIC_RELAXED);
  guint64 limit = total > REGION_GLOBAL_BUDGET ? REGION_SHARD_FLOOR : REGION_SHARD_BUDGET;
  while (shard->cost > limit && shard->lru.length > 1) {
    ChainRegion *old = g_queue_peek_tail(&shard->lru);
    g_queue_unlink(&shard->lru, &old->link);
    g_hash_table_remove(shard->regions, &old->index);
    cost = old->n_runs + REGION_BASE_COST;
    shard->cost -= cost;
    __atomic_sub_fetch(&region_cost_total, (gint64)cost, __ATOMIC_RELAXED);
    chain_region_unref(old);
  }
  g_atomic_int_inc(&region->ref_count);
  *out = region;
  return 0;
}

/* Index of the run that contains offset (which must lie in the region). */
guint
chain_region_find(const ChainRegion *region, guint64 offset)
{
  guint lo = 0, hi = region->n_runs;
  while (hi - lo > 1) {
    guint mid = lo + (hi - lo) / 2;
    if (region->runs[mid].offset <= offset)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* For scans over sparse disks: when, at pos, every layer's L1 table says
 * "nothing here" (or the layer has ended, which hides the ones below),
 * returns the end of that stretch; otherwise pos.  Costs one L1 lookup per
 * layer instead of a region map per 2 MiB. */
guint64
chain_unallocated_until(Chain *chain, guint64 pos)
{
  guint64 end = chain->virtual_size;
  for (guint i = 0; i < chain->depth; i++) {
    ChainLayer *layer = chain->layers[i];
    if (pos >= layer->virtual_size)
      break; /* zeros from here down */
    if (layer->format != CHAIN_FORMAT_QCOW2 || chain_layer_load_l1(layer) < 0)
      return pos;
    guint coverage_bits = layer->cluster_bits + layer->l2_bits;
    guint64 l1_index = pos >> coverage_bits;
    if (layer->l1[l1_index] != 0)
      return pos;
    end = MIN(end, (l1_index + 1) << coverage_bits);
  }
  return end;
}

/* ------------------------------------------------------------------ */
/* Public mapping API                                                  */

static void
extent_from_run(Chain *chain, const ChainRun *run, guint64 pos, ChainExtent *extent)
{
  guint64 skip = pos - run->offset;
  *extent = (ChainExtent){
      .kind = run->kind == CHAIN_RUN_DATA         ? CHAIN_EXTENT_DATA
              : run->kind == CHAIN_RUN_COMPRESSED ? CHAIN_EXTENT_COMPRESSED
                                                  : CHAIN_EXTENT_ZERO,
      .offset = pos,
      .length = run->length - skip,
      .layer = run->layer,
      .allocated = run->allocated,
      .fd = -1,
  };
  if (run->kind == CHAIN_RUN_DATA) {
    extent->fd = chain->layers[run->layer]->fd;
    extent->host_offset = run->host + skip;
  }
}

int
chain_map(Chain *chain, guint64 offset, guint64 length, ChainExtent *extent)
{
  if (offset >= chain->virtual_size || length == 0)
    return -EINVAL;
  guint64 end = offset + MIN(length, chain->virtual_size - offset);

  guint64 pos = offset;
  gboolean first = TRUE;
  ChainRun last = {0};
  while (pos < end) {
    g_autoptr(ChainRegion) region = NULL;
    int r = chain_region_get(chain, pos >> CHAIN_REGION_BITS, TRUE, &region);
    if (r < 0)
      return r;
    for (guint i = chain_region_find(region, pos); i < region->n_runs && pos < end; i++) {
      const ChainRun *run = &region->runs[i];
      if (first) {
        if (run->kind == CHAIN_RUN_ERROR)
          return -EIO;
        extent_from_run(chain, run, pos, extent);
        last = *run;
        first = FALSE;
      } else {
        /* Compare as if the previous run ended where this one starts. */
        ChainRun prev = last;
        prev.offset = run->offset - prev.length;
        if (!runs_join(&prev, run))
          return 0;
        extent->length += run->length;
        last = *run;
      }
      pos = run->offset + run->length;
    }
  }
  extent->length = MIN(extent->length, end - extent->offset);
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
