/* region.c: the merged map of a chain, by region, and its cache.
 *
 * The merged map of a chain is computed per 2 MiB region of the guest disk
 * (CHAIN_REGION_SIZE): each layer, from the top, fills the parts that the
 * layers above left unallocated (layer-map.c answers for one layer).  A
 * region's runs are computed once and kept in a per-Chain cache, bounded
 * per chain and, more tightly, once all chains together hold more than
 * REGION_GLOBAL_BUDGET, so a read at depth 200 costs the same as at depth
 * 1 once its region is known.  Layers are immutable while a chain is open
 * (no plan writes into a layer an open reader depends on), so cached maps
 * never go stale.  ChainRunIter walks the runs over a guest range for
 * every reader of the map: chain_map() here, chain_read(), chain_seek()
 * and chain_allocated_bytes().
 *
 * Thread model: regions are reference-counted and immutable once built;
 * each cache shard has its own mutex, held for hash lookups only.  Two
 * threads may compute the same region at once; the first to insert wins.
 */
#include <errno.h>
#include <string.h>

#include "chain-private.h"

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
/* Walking the runs of a guest range                                   */

ChainRunIter
chain_run_iter(Chain *chain, guint64 pos, guint64 end, gboolean cache, gboolean skip_unmapped)
{
  return (ChainRunIter){.chain = chain, .pos = pos, .end = end, .cache = cache,
                        .skip_unmapped = skip_unmapped};
}

int
chain_run_iter_next(ChainRunIter *it, const ChainRun **run)
{
  for (;;) {
    if (it->pos >= it->end)
      return 0;
    if (it->region != NULL && it->next < it->region->n_runs) {
      *run = &it->region->runs[it->next++];
      it->pos = (*run)->offset + (*run)->length;
      return 1;
    }
    g_clear_pointer(&it->region, chain_region_unref);
    if (it->skip_unmapped) {
      guint64 skip = chain_unallocated_until(it->chain, it->pos);
      if (skip > it->pos) {
        it->gap = (ChainRun){.offset = it->pos, .length = skip - it->pos,
                             .layer = (guint16)it->chain->depth, .kind = CHAIN_RUN_ZERO};
        it->pos = skip;
        *run = &it->gap;
        return 1;
      }
    }
    int r = chain_region_get(it->chain, it->pos >> CHAIN_REGION_BITS, it->cache, &it->region);
    if (r < 0)
      return r;
    it->next = chain_region_find(it->region, it->pos);
  }
}

void
chain_run_iter_clear(ChainRunIter *it)
{
  g_clear_pointer(&it->region, chain_region_unref);
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

  g_auto(ChainRunIter) it = chain_run_iter(chain, offset, end, TRUE, FALSE);
  const ChainRun *run;
  gboolean first = TRUE;
  ChainRun last = {0};
  int r;
  while ((r = chain_run_iter_next(&it, &run)) > 0) {
    if (first) {
      if (run->kind == CHAIN_RUN_ERROR)
        return -EIO;
      extent_from_run(chain, run, offset, extent);
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
  }
  if (r < 0)
    return r;
  extent->length = MIN(extent->length, end - extent->offset);
  return 0;
}
