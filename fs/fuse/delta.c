/* delta.c: the <target>.delta files of snapshot directories.
 *
 * A .delta file has the virtual size of its disk; its data extents are
 * the granules (chain_delta_granularity(): 4 KiB up to 256 GiB disks)
 * whose bytes differ between its point in time and the parent point in
 * time (libvirt's snapshot parent), and read as this point's bytes;
 * everything else is a hole.  The first point in time (no parent, or a
 * parent that does not have the disk) has its allocated data as delta.
 * The reader in chain/ finds the differences (chain/delta.c); this file
 * finds the two points, pins them, and caches the result.
 *
 * Why a cache: finding the exact delta reads every candidate range of
 * both points.  Backup tools often stat a file, open it, and open it
 * again (a map pass, then a data pass), and getattr wants the data size
 * for st_blocks.  So a delta is kept per pair (point image, parent's point
 * image) as long as both top images keep their identity (device, inode,
 * size, mtime): a point image is never written while it is one, and every
 * plan that changes a chain rewrites one of the two headers; plans keep
 * the content of every remaining point, and the delta is a function of
 * the two points' content (the first point's: of its allocation, which a
 * plan changes only by writing its image).  The cache holds at most
 * DELTA_CACHE_BUDGET bytes of bitmaps, least recently used out first.
 *
 * getattr does not read data: st_blocks is the exact data size when the
 * delta is known (it was opened, or its user.virtsnapfs.delta_bytes
 * read), and otherwise the size of the candidates, which costs what the
 * .raw's allocated count costs (chain_summarize_delta(), from the same
 * per-image summaries) and bounds the exact size from above.  Computing exact deltas in getattr would make `ls -l`
 * of a snapshot directory read every changed byte twice.
 *
 * Pins: an open .delta pins its point's chain for its lifetime, as a .raw
 * does (ops-open.c); the parent's chain is pinned only while it is read
 * to compute the delta, since reads of the file never touch it.  If the
 * parent is hidden because a plan is deleting it, opening fails with
 * EBUSY: the delta against it is about to lose its meaning.
 *
 * Thread model: any FUSE worker.  The cache has one mutex, never held
 * while a chain is opened or a delta computed (two threads may compute
 * the same delta; the first to store it wins).  ChainDeltas are immutable.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>

/* Bitmap bytes the cache keeps (a 256 GiB disk's delta takes 8 MiB). */
#define DELTA_CACHE_BUDGET (64 * 1024 * 1024)
#define DELTA_ENTRY_COST 256

typedef struct {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
} FileId;

typedef struct {
  char *key;
  FileId point_id;
  FileId parent_id;      /* zero without a parent */
  ChainDelta *exact;     /* NULL until computed */
  gint64 estimate;       /* candidates' bytes, -1 until computed */
  guint64 cost;
  GList link;            /* in the LRU queue, head = most recent */
} DeltaEntry;

struct _DeltaCache {
  GMutex lock;
  GHashTable *entries;   /* key -> DeltaEntry (owned) */
  GQueue lru;
  guint64 cost;
  GHashTable *failed;    /* keys whose getattr error was logged */
};

static void
entry_free(gpointer data)
{
  DeltaEntry *e = data;
  g_clear_pointer(&e->exact, chain_delta_unref);
  g_free(e->key);
  g_free(e);
}

DeltaCache *
delta_cache_new(void)
{
  DeltaCache *cache = g_new0(DeltaCache, 1);
  g_mutex_init(&cache->lock);
  cache->entries = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, entry_free);
  g_queue_init(&cache->lru);
  cache->failed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  return cache;
}

void
delta_cache_free(DeltaCache *cache)
{
  if (cache == NULL)
    return;
  g_hash_table_unref(cache->entries);
  g_hash_table_unref(cache->failed);
  g_mutex_clear(&cache->lock);
  g_free(cache);
}

/* ------------------------------------------------------------------ */
/* The two points                                                      */

typedef struct {
  BackendDisk *disk;        /* this point's disk (borrowed from the model) */
  BackendSnapshot *parent;  /* NULL: the first point in time */
  BackendDisk *parent_disk; /* NULL: no parent, or it lacks the disk */
  char *key;
} DeltaPoints;

static void
points_clear(DeltaPoints *p)
{
  g_free(p->key);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(DeltaPoints, points_clear)

/* Finds node's disk and its parent point's disk in model.  FALSE with
 * ENOENT (gone) or EBUSY (the parent is hidden: a plan deletes it). */
static gboolean
find_points(const TreeNode *node, BackendModel *model, DeltaPoints *p, GError **error)
{
  BackendSnapshot *snap = tree_node_snapshot(node, model);
  p->disk = snap ? tree_find_disk(snap->disks, node->target) : NULL;
  if (p->disk == NULL) {
    g_set_error(error, CHAIN_ERROR, ENOENT, "%s: no such disk", node->display);
    return FALSE;
  }
  if (snap->parent != NULL) {
    p->parent = backend_domain_find_snapshot(tree_node_domain(node, model), snap->parent);
    if (p->parent == NULL) {
      g_set_error(error, CHAIN_ERROR, EBUSY,
                  "%s: the parent snapshot %s is not shown (being deleted?)", node->display,
                  snap->parent);
      return FALSE;
    }
    p->parent_disk = tree_find_disk(p->parent->disks, node->target);
  }
  p->key = g_strdup_printf("%s\n%s", p->disk->image_path,
                           p->parent_disk ? p->parent_disk->image_path : "");
  return TRUE;
}

static gboolean
file_id(const char *path, FileId *id, GError **error)
{
  struct stat st;
  if (stat(path, &st) < 0) {
    int err = errno;
    g_set_error(error, CHAIN_ERROR, err, "%s: %s", path, g_strerror(err));
    return FALSE;
  }
  *id = (FileId){st.st_dev, st.st_ino, st.st_size, st.st_mtim};
  return TRUE;
}

static gboolean
file_id_equal(const FileId *a, const FileId *b)
{
  return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
         a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

static gboolean
points_ids(const DeltaPoints *p, FileId *point_id, FileId *parent_id, GError **error)
{
  memset(parent_id, 0, sizeof *parent_id);
  return file_id(p->disk->image_path, point_id, error) &&
         (p->parent_disk == NULL || file_id(p->parent_disk->image_path, parent_id, error));
}

/* A chain that cannot be read, whatever the reason (the image policy, a
 * loop, a malformed header), makes its delta EIO as it makes its .raw
 * file; the message keeps the reason. */
static void
chain_failed(GError **error)
{
  if (error && *error && (*error)->domain == CHAIN_ERROR)
    (*error)->code = EIO;
}

static Chain *
open_chain(const BackendDisk *disk, BackendModel *model, GError **error)
{
  Chain *chain = chain_open(disk->image_path, disk->format, disk->backing_formats,
                            &model->policy, error);
  if (!chain)
    chain_failed(error);
  return chain;
}

/* ------------------------------------------------------------------ */
/* The cache                                                           */

/* The entry for key if it describes these files; under cache->lock. */
static DeltaEntry *
lookup_locked(DeltaCache *cache, const char *key, const FileId *point_id,
              const FileId *parent_id)
{
  DeltaEntry *e = g_hash_table_lookup(cache->entries, key);
  if (e == NULL)
    return NULL;
  if (!file_id_equal(&e->point_id, point_id) || !file_id_equal(&e->parent_id, parent_id)) {
    g_queue_unlink(&cache->lru, &e->link);
    cache->cost -= e->cost;
    g_hash_table_remove(cache->entries, key);
    return NULL;
  }
  g_queue_unlink(&cache->lru, &e->link);
  g_queue_push_head_link(&cache->lru, &e->link);
  return e;
}

/* Records what is known of key: an exact delta, or an estimate. */
static void
store(DeltaCache *cache, const char *key, const FileId *point_id, const FileId *parent_id,
      ChainDelta *exact, gint64 estimate)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&cache->lock);
  DeltaEntry *e = lookup_locked(cache, key, point_id, parent_id);
  if (e == NULL) {
    e = g_new0(DeltaEntry, 1);
    e->key = g_strdup(key);
    e->point_id = *point_id;
    e->parent_id = *parent_id;
    e->estimate = -1;
    e->cost = DELTA_ENTRY_COST;
    e->link.data = e;
    g_hash_table_insert(cache->entries, e->key, e);
    g_queue_push_head_link(&cache->lru, &e->link);
    cache->cost += e->cost;
  }
  if (exact != NULL && e->exact == NULL) {
    e->exact = chain_delta_ref(exact);
    guint64 granules = chain_delta_virtual_size(exact) / chain_delta_get_granularity(exact) + 1;
    guint64 add = granules / 8;
    e->cost += add;
    cache->cost += add;
  }
  if (estimate >= 0)
    e->estimate = estimate;
  while (cache->cost > DELTA_CACHE_BUDGET && cache->lru.length > 1) {
    DeltaEntry *old = g_queue_peek_tail(&cache->lru);
    g_queue_unlink(&cache->lru, &old->link);
    cache->cost -= old->cost;
    g_hash_table_remove(cache->entries, old->key);
  }
}

/* The cached exact delta (a new reference) or estimate (-1: none). */
static ChainDelta *
cached(DeltaCache *cache, const char *key, const FileId *point_id, const FileId *parent_id,
       gint64 *estimate)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&cache->lock);
  DeltaEntry *e = lookup_locked(cache, key, point_id, parent_id);
  *estimate = e ? e->estimate : -1;
  return e && e->exact ? chain_delta_ref(e->exact) : NULL;
}

/* ------------------------------------------------------------------ */
/* Computing                                                           */

ChainDelta *
delta_get(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, Chain *chain,
          GError **error)
{
  g_auto(DeltaPoints) p = {0};
  FileId point_id, parent_id;
  gint64 estimate;
  if (!find_points(node, model, &p, error) || !points_ids(&p, &point_id, &parent_id, error))
    return NULL;
  ChainDelta *hit = cached(fs->deltas, p.key, &point_id, &parent_id, &estimate);
  if (hit != NULL)
    return hit;

  gint64 start = g_get_monotonic_time();
  g_autoptr(Chain) parent = NULL;
  if (p.parent_disk != NULL) {
    parent = open_chain(p.parent_disk, model, error);
    if (parent == NULL)
      return NULL;
    snap_pin_chain(hosts_of_node(fs, node)->snap, node->domain, parent);
  }
  ChainDelta *delta = chain_delta_compute(chain, parent, error);
  if (parent != NULL)
    snap_unpin_chain(hosts_of_node(fs, node)->snap, node->domain, parent);
  if (delta == NULL) {
    chain_failed(error);
    return NULL;
  }
  store(fs->deltas, p.key, &point_id, &parent_id, delta, -1);
  g_debug("DELTA %s against %s: %" G_GUINT64_FORMAT " bytes of data in %" G_GINT64_FORMAT " ms",
          node->display, p.parent_disk ? p.parent->name : "nothing (first point)",
          chain_delta_bytes(delta), (g_get_monotonic_time() - start) / 1000);
  return delta;
}

/* The exact data size, computing the delta with its own pinned chain. */
static gint64
exact_bytes(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, GError **error)
{
  g_auto(DeltaPoints) p = {0};
  if (!find_points(node, model, &p, error))
    return -1;
  g_autoptr(Chain) chain = open_chain(p.disk, model, error);
  if (chain == NULL)
    return -1;
  snap_pin_chain(hosts_of_node(fs, node)->snap, node->domain, chain);
  g_autoptr(ChainDelta) delta = delta_get(fs, node, model, chain, error);
  snap_unpin_chain(hosts_of_node(fs, node)->snap, node->domain, chain);
  return delta ? (gint64)chain_delta_bytes(delta) : -1;
}

/* st_blocks' bytes: exact if known, else the candidates' size. */
static gint64
stat_bytes(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, const ImageInfo *info,
           GError **error)
{
  g_auto(DeltaPoints) p = {0};
  g_autoptr(GError) local = NULL;
  if (!find_points(node, model, &p, &local)) {
    if (local->code != EBUSY) {
      g_propagate_error(error, g_steal_pointer(&local));
      return -1;
    }
    /* The parent is on its way out: the point's own allocation is the
     * best guess until the model shows the new parent. */
    return (gint64)info->allocated;
  }
  FileId point_id, parent_id;
  gint64 estimate;
  if (!points_ids(&p, &point_id, &parent_id, error))
    return -1;
  g_autoptr(ChainDelta) exact = cached(fs->deltas, p.key, &point_id, &parent_id, &estimate);
  if (exact != NULL)
    return (gint64)chain_delta_bytes(exact);
  if (estimate >= 0)
    return estimate;

  if (p.parent_disk != NULL) {
    /* From the per-image summaries that listings use: opening both
     * chains for every .delta of a long chain of snapshots would open
     * each layer as many times as there are snapshots above it. */
    ChainImage point = {p.disk->image_path, p.disk->format, p.disk->backing_formats};
    ChainImage parent = {p.parent_disk->image_path, p.parent_disk->format,
                         p.parent_disk->backing_formats};
    guint64 bound;
    if (!chain_summarize_delta(&point, &parent, &model->policy, &bound, error)) {
      chain_failed(error);
      return -1;
    }
    store(fs->deltas, p.key, &point_id, &parent_id, NULL, (gint64)bound);
    return (gint64)bound;
  }
  /* With no parent the candidates are the exact delta: keep it. */
  g_autoptr(Chain) chain = open_chain(p.disk, model, error);
  if (chain == NULL)
    return -1;
  g_autoptr(ChainDelta) cand = chain_delta_candidates(chain, NULL, error);
  if (cand == NULL) {
    chain_failed(error);
    return -1;
  }
  estimate = (gint64)chain_delta_bytes(cand);
  store(fs->deltas, p.key, &point_id, &parent_id, cand, estimate);
  return estimate;
}

/* ------------------------------------------------------------------ */
/* getattr, xattrs                                                     */

gboolean
delta_stat(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, struct stat *st,
           int *err)
{
  BackendSnapshot *snap = tree_node_snapshot(node, model);
  BackendDisk *disk = snap ? tree_find_disk(snap->disks, node->target) : NULL;
  ImageInfo info;
  g_autoptr(GError) error = NULL;

  *err = ENOENT;
  if (disk == NULL)
    return FALSE;
  st->st_mode = S_IFREG | 0444;
  st->st_nlink = 1;
  st->st_mtim.tv_sec = snap->creation_time;
  st->st_mtim.tv_nsec = 0;
  st->st_ctim = st->st_atim = st->st_mtim;
  if (!info_cache_get(hosts_of_node(fs, node)->info, disk, &model->policy, FALSE, &info,
                      &error)) {
    *err = EIO; /* logged once by info.c */
    return FALSE;
  }
  st->st_size = (off_t)info.virtual_size;
  gint64 bytes = stat_bytes(fs, node, model, &info, &error);
  if (bytes < 0) {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->deltas->lock);
    if (g_hash_table_add(fs->deltas->failed, g_strdup(node->display)))
      g_warning("%s: %s", node->display, error->message);
    *err = errors_to_errno(error);
    return FALSE;
  }
  st->st_blocks = (blkcnt_t)(((guint64)bytes + 511) / 512);
  return TRUE;
}

const char *const delta_xattr_names[] = {
  "user.virtsnapfs.point_image",
  "user.virtsnapfs.parent",
  "user.virtsnapfs.parent_image",
  "user.virtsnapfs.granularity",
  "user.virtsnapfs.delta_bytes",
  NULL,
};

char *
delta_xattr(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, const char *key,
            int *err)
{
  g_auto(DeltaPoints) p = {0};
  g_autoptr(GError) error = NULL;

  if (!find_points(node, model, &p, &error)) {
    *err = error->code;
    return NULL;
  }
  if (g_str_equal(key, "point_image"))
    return g_strdup(p.disk->image_path);
  /* The parent's directory name (escaped as in the tree, so that
   * ../PARENT/ names it); empty for the first point in time. */
  if (g_str_equal(key, "parent"))
    return p.parent_disk ? names_escape(p.parent->name) : g_strdup("");
  if (g_str_equal(key, "parent_image"))
    return g_strdup(p.parent_disk ? p.parent_disk->image_path : "");
  if (g_str_equal(key, "granularity") || g_str_equal(key, "delta_bytes")) {
    ImageInfo info;
    if (!info_cache_get(hosts_of_node(fs, node)->info, p.disk, &model->policy, FALSE, &info,
                        &error)) {
      *err = EIO;
      return NULL;
    }
    if (g_str_equal(key, "granularity"))
      return g_strdup_printf("%" G_GUINT64_FORMAT, chain_delta_granularity(info.virtual_size));
    gint64 bytes = exact_bytes(fs, node, model, &error);
    if (bytes < 0) {
      g_message("%s: delta_bytes: %s", node->display, error->message);
      *err = errors_to_errno(error);
      return NULL;
    }
    return g_strdup_printf("%" G_GINT64_FORMAT, bytes);
  }
  *err = ENODATA;
  return NULL;
}
