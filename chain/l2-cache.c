/* l2-cache.c: a process-wide, bounded cache of L2 table slices.
 *
 * L2 tables are cached in slices of min(cluster size, 4 KiB), keyed by
 * (layer id, host offset), converted to host byte order once when read;
 * a slice of only zero entries keeps no words (n_words == 0).
 * The cache is split into shards, each with its own mutex, LRU list and
 * byte budget; a lookup holds one shard lock for a hash lookup only, never
 * across I/O.  Slices are reference-counted: a reader keeps its slice alive
 * even if it is evicted meanwhile.  Layer ids are never reused, so a stale
 * entry can never be mistaken for another layer's.
 */
#include <errno.h>

#include "chain-private.h"

#define L2_SHARDS 16
#define L2_CACHE_BYTES (32u * 1024 * 1024)
#define L2_SHARD_BYTES (L2_CACHE_BYTES / L2_SHARDS)
#define L2_SLICE_MAX 4096 /* layer.c: slice_bytes = min(cluster size, this) */

typedef struct {
  GMutex lock;
  GHashTable *slices; /* L2Slice* (key: layer_id, offset) -> same */
  GQueue lru;         /* head = most recent */
  gsize bytes;
} L2Shard;

static L2Shard shards[L2_SHARDS];
static gint shards_ready; /* atomic: set once the shards are initialized */

static guint
slice_hash(gconstpointer p)
{
  const L2Slice *s = p;
  guint64 h = s->layer_id * G_GUINT64_CONSTANT(0x9e3779b97f4a7c15) ^ s->offset;
  return (guint)(h ^ (h >> 32));
}

static gboolean
slice_equal(gconstpointer a, gconstpointer b)
{
  const L2Slice *x = a, *y = b;
  return x->layer_id == y->layer_id && x->offset == y->offset;
}

static L2Shard *
shards_get(guint64 layer_id, guint64 offset)
{
  static gsize initialized;
  if (g_once_init_enter(&initialized)) {
    for (guint i = 0; i < L2_SHARDS; i++) {
      g_mutex_init(&shards[i].lock);
      shards[i].slices = g_hash_table_new(slice_hash, slice_equal);
      g_queue_init(&shards[i].lru);
    }
    g_atomic_int_set(&shards_ready, 1);
    g_once_init_leave(&initialized, 1);
  }
  guint64 h = (layer_id * 31 + (offset >> 9)) * G_GUINT64_CONSTANT(0x9e3779b97f4a7c15);
  return &shards[(h >> 32) % L2_SHARDS];
}

void
l2_slice_unref(L2Slice *slice)
{
  if (slice != NULL && g_atomic_int_dec_and_test(&slice->ref_count))
    g_free(slice);
}

static gsize
slice_bytes(const L2Slice *slice)
{
  return sizeof(*slice) + (gsize)slice->n_words * 8;
}

/* Removes a slice from its shard (lock held) and drops the cache's ref. */
static void
shard_remove(L2Shard *shard, L2Slice *slice)
{
  g_hash_table_remove(shard->slices, slice);
  g_queue_unlink(&shard->lru, &slice->link);
  shard->bytes -= slice_bytes(slice);
  l2_slice_unref(slice);
}

/* Returns a new reference to the slice of layer's L2 table that starts at
 * host offset (slice-aligned, checked by the caller to lie in the file). */
int
l2_cache_get(ChainLayer *layer, guint64 offset, L2Slice **out)
{
  L2Shard *shard = shards_get(layer->id, offset);
  L2Slice key = {.layer_id = layer->id, .offset = offset};

  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&shard->lock);
    L2Slice *hit = g_hash_table_lookup(shard->slices, &key);
    if (hit != NULL) {
      g_queue_unlink(&shard->lru, &hit->link);
      g_queue_push_head_link(&shard->lru, &hit->link);
      g_atomic_int_inc(&hit->ref_count);
      *out = hit;
      return 0;
    }
  }

  guint64 buf[L2_SLICE_MAX / 8];
  gsize got;
  int r = chain_pread_full(layer->fd, buf, layer->slice_bytes, offset, &got);
  if (r == 0 && got < layer->slice_bytes)
    r = -EIO;
  if (r < 0) {
    chain_layer_report(layer, "reading the L2 table at 0x%" G_GINT64_MODIFIER "x: %s", offset,
                       g_strerror(-r));
    return r;
  }
  /* Overlays are mostly sparse: a slice with no entry at all is kept as a
   * header only (n_words 0), and reads as all unallocated. */
  guint n_words = layer->slice_bytes / 8;
  guint64 any = 0;
  for (guint i = 0; i < n_words; i++)
    any |= buf[i];
  if (any == 0)
    n_words = 0;
  L2Slice *slice = g_malloc(sizeof(*slice) + (gsize)n_words * 8);
  slice->ref_count = 1;
  slice->layer_id = layer->id;
  slice->offset = offset;
  slice->link = (GList){.data = slice};
  slice->n_words = n_words;
  for (guint i = 0; i < n_words; i++)
    slice->words[i] = GUINT64_FROM_BE(buf[i]);

  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&shard->lock);
  L2Slice *hit = g_hash_table_lookup(shard->slices, &key);
  if (hit != NULL) { /* another thread won the race */
    g_free(slice);
    g_atomic_int_inc(&hit->ref_count);
    *out = hit;
    return 0;
  }
  g_hash_table_add(shard->slices, slice);
  g_queue_push_head_link(&shard->lru, &slice->link);
  shard->bytes += slice_bytes(slice);
  while (shard->bytes > L2_SHARD_BYTES && shard->lru.length > 1)
    shard_remove(shard, g_queue_peek_tail(&shard->lru));
  g_atomic_int_inc(&slice->ref_count); /* one for the cache, one for the caller */
  *out = slice;
  return 0;
}

/* Forgets every slice of a layer that is going away. */
void
l2_cache_drop_layer(guint64 layer_id)
{
  if (!g_atomic_int_get(&shards_ready))
    return; /* nothing was ever cached */
  for (guint i = 0; i < L2_SHARDS; i++) {
    L2Shard *shard = &shards[i];
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&shard->lock);
    for (GList *l = shard->lru.head; l != NULL;) {
      GList *next = l->next;
      L2Slice *slice = l->data;
      if (slice->layer_id == layer_id)
        shard_remove(shard, slice);
      l = next;
    }
  }
}
