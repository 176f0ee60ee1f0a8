/* summary.c: size, depth and allocated bytes of a chain without opening it.
 *
 * A file listing (getattr of every disk file) needs each chain's virtual
 * size and allocated bytes.  Opening a chain opens every layer, and
 * counting its allocation maps the whole disk through every layer: for a
 * domain with 200 snapshots that is 20,000 layer opens and as many whole-
 * disk maps, while the layers are nearly all shared between the points.
 *
 * So each image is summarized once: its header (virtual size, backing name
 * and format) and which guest ranges it holds data in, hides as zeros, or
 * has corrupt entries for, as a sorted list of runs (unallocated ranges are
 * the gaps).  Summaries live in one process-wide cache keyed by canonical
 * path and checked against the file's identity (device, inode, size, mtime,
 * ctime): an image that changed is summarized again.  A chain's summary is
 * then a walk under the same policy as chain_open() (chain_follow(): one
 * realpath and one stat per layer) and a merge of the layers' runs from
 * the top down, as region.c merges them, without any I/O for known images.
 *
 * Thread model: any thread.  One mutex protects the cache (held for
 * lookups and inserts, never across I/O); summaries are reference-counted
 * and immutable.  Two threads may summarize one image at once; the later
 * insert wins, both are right.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "chain-private.h"

/* Runs kept by the cache (24 bytes each): 6 MiB. */
#define SUMMARY_BUDGET_RUNS (256u * 1024)
#define SUMMARY_BASE_COST 16

typedef enum {
  SUMMARY_DATA, /* data or compressed: allocated */
  SUMMARY_ZERO, /* hides the backing file, reads as zeros */
  SUMMARY_ERROR,
} SummaryKind;

typedef struct {
  guint64 start;
  guint64 end;
  guint kind; /* SummaryKind */
} SummaryRun;

typedef struct {
  gint ref_count;
  char *path; /* canonical; the cache key */
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime, ctime;
  ChainFormat format;
  guint64 virtual_size;
  char *backing_name;
  ChainFormat backing_format;
  GList link; /* in the LRU queue */
  guint n_runs;
  SummaryRun runs[];
} LayerSummary;

static GMutex cache_lock;
static GHashTable *cache_table; /* path -> LayerSummary (owns a reference) */
static GQueue cache_lru;        /* head = most recent */
static guint64 cache_cost;

static void
summary_unref(LayerSummary *s)
{
  if (s == NULL || !g_atomic_int_dec_and_test(&s->ref_count))
    return;
  g_free(s->path);
  g_free(s->backing_name);
  g_free(s);
}

static guint64
summary_cost(const LayerSummary *s)
{
  return s->n_runs + SUMMARY_BASE_COST;
}

static gboolean
same_identity(const LayerSummary *s, const struct stat *st, ChainFormat format)
{
  return s->format == format && s->dev == st->st_dev && s->ino == st->st_ino &&
         s->size == st->st_size && s->mtime.tv_sec == st->st_mtim.tv_sec &&
         s->mtime.tv_nsec == st->st_mtim.tv_nsec && s->ctime.tv_sec == st->st_ctim.tv_sec &&
         s->ctime.tv_nsec == st->st_ctim.tv_nsec;
}

/* A new reference to the cached summary of path if it is still current. */
static LayerSummary *
cache_lookup(const char *path, const struct stat *st, ChainFormat format)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&cache_lock);
  if (cache_table == NULL)
    return NULL;
  LayerSummary *s = g_hash_table_lookup(cache_table, path);
  if (s == NULL || !same_identity(s, st, format))
    return NULL;
  g_queue_unlink(&cache_lru, &s->link);
  g_queue_push_head_link(&cache_lru, &s->link);
  g_atomic_int_inc(&s->ref_count);
  return s;
}

static void
cache_remove_locked(LayerSummary *s)
{
  g_queue_unlink(&cache_lru, &s->link);
  g_hash_table_steal(cache_table, s->path);
  cache_cost -= summary_cost(s);
  summary_unref(s);
}

static void
cache_insert(LayerSummary *s)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&cache_lock);
  if (cache_table == NULL)
    cache_table = g_hash_table_new(g_str_hash, g_str_equal);
  LayerSummary *old = g_hash_table_lookup(cache_table, s->path);
  if (old != NULL)
    cache_remove_locked(old);
  g_atomic_int_inc(&s->ref_count);
  g_hash_table_insert(cache_table, s->path, s);
  g_queue_push_head_link(&cache_lru, &s->link);
  cache_cost += summary_cost(s);
  while (cache_cost > SUMMARY_BUDGET_RUNS && cache_lru.length > 1)
    cache_remove_locked(g_queue_peek_tail(&cache_lru));
}

static void
runs_append(GArray *runs, guint64 start, guint64 end, SummaryKind kind)
{
  if (runs->len > 0) {
    SummaryRun *last = &g_array_index(runs, SummaryRun, runs->len - 1);
    if (last->end == start && last->kind == kind) {
      last->end = end;
      return;
    }
  }
  SummaryRun run = {start, end, kind};
  g_array_append_val(runs, run);
}

/* Opens and maps one image: its header and its runs. */
static LayerSummary *
summarize_layer(const char *canonical, ChainFormat format, const struct stat *st,
                GError **error)
{
  /* No descriptor check as chain_open() does (check_fd): nothing read
   * here reaches a reader, and a swapped path changes the identity. */
  g_autoptr(ChainLayer) layer = chain_layer_open(canonical, format, error);
  if (layer == NULL)
    return NULL;

  g_autoptr(GArray) runs = g_array_new(FALSE, FALSE, sizeof(SummaryRun));
  for (guint64 pos = 0; pos < layer->virtual_size;) {
    LayerRun lr;
    int r = chain_layer_map(layer, pos, layer->virtual_size - pos, &lr);
    if (r < 0) {
      g_set_error(error, CHAIN_ERROR, -r, "%s: cannot map guest offset 0x%" G_GINT64_MODIFIER
                  "x: %s", canonical, pos, g_strerror(-r));
      return NULL;
    }
    switch (lr.kind) {
    case LAYER_RUN_UNALLOCATED:
      break;
    case LAYER_RUN_DATA:
    case LAYER_RUN_COMPRESSED:
      runs_append(runs, pos, pos + lr.length, SUMMARY_DATA);
      break;
    case LAYER_RUN_ZERO:
      runs_append(runs, pos, pos + lr.length, SUMMARY_ZERO);
      break;
    case LAYER_RUN_ERROR:
      runs_append(runs, pos, pos + lr.length, SUMMARY_ERROR);
      break;
    }
    pos += lr.length;
  }

  LayerSummary *s = g_malloc(sizeof(*s) + runs->len * sizeof(SummaryRun));
  *s = (LayerSummary){
      .ref_count = 1,
      .path = g_strdup(canonical),
      .dev = st->st_dev,
      .ino = st->st_ino,
      .size = st->st_size,
      .mtime = st->st_mtim,
      .ctime = st->st_ctim,
      .format = format,
      .virtual_size = layer->virtual_size,
      .backing_name = g_strdup(layer->backing_name),
      .backing_format = layer->backing_format,
      .n_runs = runs->len,
  };
  s->link = (GList){.data = s};
  if (runs->len > 0) /* an empty GArray's data may be NULL, which memcpy() must not see */
    memcpy(s->runs, runs->data, runs->len * sizeof(SummaryRun));
  return s;
}

/* chain_follow() visitor: the layer's summary, from the cache or fresh. */
static gboolean
summary_visit(const char *canonical, ChainFormat format, gboolean check_fd, gpointer data,
              ChainWalkStep *step, GError **error)
{
  GPtrArray *layers = data;
  (void)check_fd;
  struct stat st;
  if (stat(canonical, &st) < 0) {
    int e = errno;
    g_set_error(error, CHAIN_ERROR, e, "%s: %s", canonical, g_strerror(e));
    return FALSE;
  }
  LayerSummary *s = cache_lookup(canonical, &st, format);
  if (s == NULL) {
    s = summarize_layer(canonical, format, &st, error);
    if (s == NULL)
      return FALSE;
    cache_insert(s);
  }
  g_ptr_array_add(layers, s);
  *step = (ChainWalkStep){.dev = s->dev, .ino = s->ino, .backing_name = s->backing_name,
                          .backing_format = s->backing_format};
  return TRUE;
}

typedef struct {
  guint64 start, end;
} Span;

/* First run of s that ends after pos. */
static guint
first_run_after(const LayerSummary *s, guint64 pos)
{
  guint lo = 0, hi = s->n_runs;
  while (lo < hi) {
    guint mid = lo + (hi - lo) / 2;
    if (s->runs[mid].end <= pos)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Merges the layers' runs from the top down: what the layers above leave
 * unallocated, the next one answers.  Returns the allocated bytes or
 * -EIO when a corrupt range shows through. */
static gint64
merge_allocated(GPtrArray *layers, guint64 virtual_size)
{
  g_autoptr(GArray) pending = g_array_new(FALSE, FALSE, sizeof(Span));
  g_autoptr(GArray) next = g_array_new(FALSE, FALSE, sizeof(Span));
  Span all = {0, virtual_size};
  g_array_append_val(pending, all);
  guint64 allocated = 0;

  for (guint i = 0; i < layers->len && pending->len > 0; i++) {
    const LayerSummary *s = layers->pdata[i];
    g_array_set_size(next, 0);
    for (guint k = 0; k < pending->len; k++) {
      Span iv = g_array_index(pending, Span, k);
      /* Past the end of a shorter backing file: zeros. */
      iv.end = MIN(iv.end, s->virtual_size);
      guint64 pos = iv.start;
      for (guint j = first_run_after(s, pos); j < s->n_runs && pos < iv.end; j++) {
        const SummaryRun *run = &s->runs[j];
        if (run->start >= iv.end)
          break;
        if (run->start > pos) {
          Span gap = {pos, run->start};
          g_array_append_val(next, gap);
          pos = run->start;
        }
        guint64 until = MIN(run->end, iv.end);
        if (run->kind == SUMMARY_ERROR)
          return -EIO;
        if (run->kind == SUMMARY_DATA)
          allocated += until - pos;
        pos = until;
      }
      if (pos < iv.end) {
        Span gap = {pos, iv.end};
        g_array_append_val(next, gap);
      }
    }
    GArray *swap = pending;
    pending = next;
    next = swap;
  }
  return (gint64)allocated;
}

gboolean
chain_summarize(const char *path, ChainFormat format, const ChainFormat *backing_formats,
                const ChainPolicy *policy, ChainSummary *summary, GError **error)
{
  g_autoptr(GPtrArray) layers = g_ptr_array_new_with_free_func((GDestroyNotify)summary_unref);
  ChainImage image = {path, format, backing_formats};
  if (!chain_follow(&image, policy, 0, summary_visit, layers, NULL, NULL, error))
    return FALSE;
  const LayerSummary *top = layers->pdata[0];
  gint64 allocated = merge_allocated(layers, top->virtual_size);
  if (allocated < 0) {
    g_set_error(error, CHAIN_ERROR, (int)-allocated,
                "%s: cannot count allocated bytes: a layer has corrupt tables (see the log)",
                top->path);
    return FALSE;
  }
  char **paths = g_new0(char *, layers->len + 1);
  for (guint i = 0; i < layers->len; i++)
    paths[i] = g_strdup(((const LayerSummary *)layers->pdata[i])->path);
  *summary = (ChainSummary){
      .virtual_size = top->virtual_size,
      .allocated = (guint64)allocated,
      .depth = layers->len,
      .format = top->format,
      .layer_paths = paths,
  };
  return TRUE;
}

/* Marks in out what the top `upper` layers of a walked chain override
 * (chain_layer_allocation(): any run; a raw layer all of itself), and the
 * ranges that a layer shorter than the chain cuts off.  FALSE when a
 * corrupt range is among them. */
static gboolean
mark_upper(ChainBitmap *out, guint64 size, GPtrArray *layers, guint upper)
{
  const LayerSummary *top = layers->pdata[0];
  for (guint i = 0; i < upper; i++) {
    const LayerSummary *s = layers->pdata[i];
    if (s->format == CHAIN_FORMAT_RAW)
      chain_bitmap_set_range(out, 0, MIN(s->virtual_size, size));
    for (guint j = 0; j < s->n_runs && s->runs[j].start < size; j++) {
      if (s->runs[j].kind == SUMMARY_ERROR)
        return FALSE;
      chain_bitmap_set_range(out, s->runs[j].start, MIN(s->runs[j].end, size) - s->runs[j].start);
    }
    if (s->virtual_size < MIN(top->virtual_size, size))
      chain_bitmap_set_range(out, s->virtual_size, MIN(top->virtual_size, size) - s->virtual_size);
  }
  return TRUE;
}

gboolean
chain_summarize_delta(const ChainImage *point, const ChainImage *parent,
                      const ChainPolicy *policy, guint64 *bytes, GError **error)
{
  g_autoptr(GPtrArray) a = g_ptr_array_new_with_free_func((GDestroyNotify)summary_unref);
  g_autoptr(GPtrArray) b = g_ptr_array_new_with_free_func((GDestroyNotify)summary_unref);
  if (!chain_follow(point, policy, 0, summary_visit, a, NULL, NULL, error) ||
      !chain_follow(parent, policy, 0, summary_visit, b, NULL, NULL, error))
    return FALSE;

  /* The layers both share, counted from the bottom (as delta.c does). */
  guint base = 0;
  while (base < a->len && base < b->len) {
    const LayerSummary *x = a->pdata[a->len - 1 - base], *y = b->pdata[b->len - 1 - base];
    if (x->dev != y->dev || x->ino != y->ino || x->format != y->format)
      break;
    base++;
  }
  const LayerSummary *top = a->pdata[0], *parent_top = b->pdata[0];
  guint64 size = top->virtual_size;
  g_autoptr(ChainBitmap) out = chain_bitmap_new(chain_delta_granularity(size), size);
  if (!mark_upper(out, size, a, a->len - base) || !mark_upper(out, size, b, b->len - base)) {
    g_set_error(error, CHAIN_ERROR, EIO,
                "%s: cannot bound the delta: a layer has corrupt tables (see the log)",
                top->path);
    return FALSE;
  }
  /* Past the end of a shorter parent the point's bytes are new. */
  if (parent_top->virtual_size < size)
    chain_bitmap_set_range(out, parent_top->virtual_size, size - parent_top->virtual_size);
  *bytes = chain_bitmap_bytes(out, size);
  return TRUE;
}

void
chain_summary_clear(ChainSummary *summary)
{
  g_clear_pointer(&summary->layer_paths, g_strfreev);
}
