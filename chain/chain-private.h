/* chain-private.h: structures shared by the files of chain/, and a map of
 * the code: prototypes are grouped under the file that defines them.
 *
 * Lock order (outer first): ChainLayer.l1_lock, then an L2 cache shard,
 * then a region cache shard.  No function holds two of them at once today;
 * keep it that way.
 */
#pragma once

#include <stdint.h>

#include "chain.h"

/* Guest disk regions whose merged map is computed once per Chain and
 * cached.  2 MiB is QEMU's largest cluster, so a cluster of any layer lies
 * inside one region. */
#define CHAIN_REGION_BITS 21
#define CHAIN_REGION_SIZE (G_GUINT64_CONSTANT(1) << CHAIN_REGION_BITS)

/* What one layer says about a guest range. */
typedef enum {
  LAYER_RUN_UNALLOCATED = 0, /* ask the backing file */
  LAYER_RUN_DATA,            /* uncompressed at host */
  LAYER_RUN_ZERO,            /* reads as zeros, hides the backing file */
  LAYER_RUN_COMPRESSED,      /* one compressed cluster at host, csize bytes */
  LAYER_RUN_ERROR,           /* corrupt metadata: reads fail with -EIO */
} LayerRunKind;

typedef struct {
  LayerRunKind kind;
  guint64 length;
  guint64 host;  /* DATA: host offset of the first byte; COMPRESSED: of the
                  * compressed cluster (not of the run's first byte) */
  guint32 csize; /* COMPRESSED: bytes of compressed data from host */
} LayerRun;

struct _ChainLayer {
  gint ref_count;
  guint64 id;    /* unique per process, never reused: cache key */
  char *path;    /* canonical */
  int fd;
  dev_t dev;
  ino_t ino;
  ChainFormat format;
  guint64 file_size;
  guint64 virtual_size;
  guint64 cluster_size; /* 512 for raw */
  guint cluster_bits;
  int logged; /* atomic: a data-path error has been logged */

  /* qcow2 only; immutable after open except l1 (set once, under l1_lock) */
  guint version;
  gboolean extended_l2;
  guint compression_type;
  guint l2_entry_bytes; /* 8 or 16 */
  guint l2_bits;        /* log2(entries per L2 table) */
  guint64 l1_offset;
  guint32 l1_entries;   /* entries loaded: min(l1_size, needed) */
  guint64 *l1;          /* host order; NULL until first use */
  GMutex l1_lock;
  guint slice_bytes;    /* L2 cache granule: min(cluster_size, 4 KiB) */
  char *backing_name;
  ChainFormat backing_format;
};

typedef enum {
  CHAIN_RUN_DATA = 0,
  CHAIN_RUN_ZERO,
  CHAIN_RUN_COMPRESSED,
  CHAIN_RUN_ERROR,
} ChainRunKind;

/* One run of a region's merged map. */
typedef struct {
  guint64 offset; /* guest */
  guint64 length;
  guint64 host;   /* DATA: host of offset; COMPRESSED: compressed cluster */
  guint32 csize;  /* COMPRESSED */
  guint16 layer;  /* owner; depth when nothing has it */
  guint8 kind;    /* ChainRunKind */
  guint8 allocated;
} ChainRun;

typedef struct {
  gint ref_count;
  guint64 index;
  GList link; /* in its shard's LRU queue */
  guint n_runs;
  ChainRun runs[]; /* sorted, contiguous, covering the region */
} ChainRegion;

#define CHAIN_REGION_SHARDS 8

typedef struct {
  GMutex lock;
  GHashTable *regions; /* &index -> ChainRegion (owns a reference) */
  GQueue lru;          /* head = most recent */
  guint64 cost;        /* runs held */
} ChainRegionShard;

struct _Chain {
  gint ref_count;
  guint depth;
  ChainLayer **layers; /* depth entries, 0 = top, owned */
  guint64 virtual_size;
  gint64 allocated;    /* atomic; -1 until computed */
  ChainRegionShard shards[CHAIN_REGION_SHARDS];
};

/* chain.c */
/* What a visitor of chain_follow() reports about the layer it was given. */
typedef struct {
  dev_t dev;
  ino_t ino;
  const char *backing_name;   /* borrowed: must live until the walk ends
                               * or the next visit; NULL at the bottom */
  ChainFormat backing_format; /* from the backing-format extension */
} ChainWalkStep;
/* Called for each layer, top first, with its canonical path (already
 * checked against the policy) and format; check_fd says the policy
 * restricts places (then an opened descriptor must still name canonical).
 * The identity it reports must be the one the policy checked. */
typedef gboolean (*ChainWalkVisit)(const char *canonical, ChainFormat format, gboolean check_fd,
                                   gpointer data, ChainWalkStep *step, GError **error);
/* The walk of chain_walk() (see there for limit, rest and rest_format,
 * which may be NULL), with its policy and errors, for any visitor. */
gboolean chain_follow(const ChainImage *image, const ChainPolicy *policy, guint limit,
                      ChainWalkVisit visit, gpointer data, char **rest,
                      ChainFormat *rest_format, GError **error);

/* error.c */
void chain_layer_report(ChainLayer *layer, const char *format, ...) G_GNUC_PRINTF(2, 3);

/* layer.c */
int chain_layer_load_l1(ChainLayer *layer);

/* pread.c */
int chain_pread_full(int fd, void *buf, gsize length, guint64 offset, gsize *done);

/* l2-cache.c */
typedef struct {
  gint ref_count;
  guint64 layer_id;
  guint64 offset; /* host offset of the slice */
  GList link;
  guint n_words;    /* 0: every entry of the slice is 0 (unallocated) */
  guint64 words[]; /* host order */
} L2Slice;

int l2_cache_get(ChainLayer *layer, guint64 offset, L2Slice **slice);
void l2_slice_unref(L2Slice *slice);
void l2_cache_drop_layer(guint64 layer_id);

/* layer-map.c */
int chain_layer_map(ChainLayer *layer, guint64 offset, guint64 length, LayerRun *run);

/* region.c */
void chain_regions_init(Chain *chain);
void chain_regions_clear(Chain *chain);
int chain_region_get(Chain *chain, guint64 index, gboolean cache, ChainRegion **region);
void chain_region_unref(ChainRegion *region);
guint chain_region_find(const ChainRegion *region, guint64 offset);
guint64 chain_unallocated_until(Chain *chain, guint64 pos);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ChainRegion, chain_region_unref)
/* The runs of the merged map that cover guest [pos, end), in order; the
 * first may start before pos.  cache: keep the regions it computes (FALSE
 * for whole-disk scans, which must not evict what readers use).
 * skip_unmapped: a stretch where every layer's L1 table is empty comes as
 * one unallocated ZERO run, without computing its regions. */
typedef struct {
  Chain *chain;
  guint64 pos, end;
  gboolean cache, skip_unmapped;
  ChainRegion *region; /* held while its runs are handed out */
  guint next;          /* the next run of region */
  ChainRun gap;        /* the run handed out for an empty L1 stretch */
} ChainRunIter;
ChainRunIter chain_run_iter(Chain *chain, guint64 pos, guint64 end, gboolean cache,
                            gboolean skip_unmapped);
/* 1 and *run (valid until the next call), 0 at the end, or -errno. */
int chain_run_iter_next(ChainRunIter *it, const ChainRun **run);
void chain_run_iter_clear(ChainRunIter *it);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(ChainRunIter, chain_run_iter_clear)

/* read.c */
int chain_read_compressed(ChainLayer *layer, guint64 host, guint32 csize, guint64 skip,
                          void *buf, gsize length);
