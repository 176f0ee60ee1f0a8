/* prefetch.c: stores a sequentially read file into the kernel's page
 * cache ahead of its reader, with FUSE_NOTIFY_STORE.
 *
 * Why: on a first read the kernel's readahead allocates every page of the
 * FUSE file's cache on the *reader's* thread, one 4 KiB page at a time,
 * and the reader then waits for the READ that fills it.  Measured on a
 * 2 GiB point in time (depth 8, 2 cores): cp took 0.95 to 1.2 s, of
 * which page allocation was the largest share, against 0.48 s when the
 * pages were already cached.  A store allocates and fills the pages on a
 * daemon thread, so the reader only copies from the cache; cp of the same
 * point takes 0.58 s.
 *
 * Pacing (PrefetchPace): after `start` bytes of sequential READs, stores
 * run up to `window` bytes past the furthest READ.  The reader sends no
 * READ for a page already stored, so the daemon cannot see it advance; to
 * learn where it is, each window leaves one page out (the tripwire) half a
 * window before its end.  The reader's miss there is a one-page READ,
 * which moves the window on while half of it is still ahead of the
 * reader.  A reader faster than the stores (a compressed image, where
 * building the bytes is the work) catches up with them: its READ sends the
 * stores a quarter window ahead, and the kernel's readahead READs, on
 * other threads, serve it until it reaches them.  Without the jump the
 * next readahead READ asks for the very range being stored, and both
 * build it: cp of a 2 GiB zlib base took 5.2 s, with it 3.0 to 3.2 s
 * (qemu-img convert: 4.8 to 5.4 s).  A READ far from the run (a seek)
 * starts a new run.  Holes, as SEEK_DATA/SEEK_HOLE report them, are
 * skipped and do not count against the window, so a sparse copy's jumps
 * over holes neither store zeros nobody reads nor run out of stores.
 *
 * Only what reads the same as long as the file is open is prefetched: a
 * snapshot's or @now's disk (ops-open.c, ops-read.c).  Stores for a file
 * end before its release is answered, so no store can reach a name that
 * has been reused (invalidate.c), nor outlive an @now freeze.
 *
 * Threads: one GThreadPool for the process, a thread per core.  A
 * Prefetch has at most one task queued or running, which takes ranges
 * from the pace under the Prefetch's lock and stores them without it;
 * prefetch_free waits for it.  One is enough: a reader that catches up
 * sends READs, which other threads answer (two tasks per file were
 * slower on 2 cores, and no faster on a zlib-compressed base).
 */
#include "prefetch.h"
#include "virtsnapfs.h"

#include <errno.h>
#include <unistd.h>

#define NO_TRIPWIRE G_MAXUINT64

static guint64
align_down(guint64 x, guint64 page)
{
  return x - x % page;
}

void
prefetch_pace_init(PrefetchPace *pace, guint64 size, guint64 window, guint64 chunk,
                   guint64 start, guint64 page)
{
  *pace = (PrefetchPace){
    .size = size,
    .window = window,
    .lead = align_down(window / 4, page),
    .chunk = MAX(align_down(chunk, page), page),
    .start = start,
    .page = page,
    .tripwire = NO_TRIPWIRE,
  };
}

/* TRUE when a READ at off continues the current run: not far behind its
 * furthest READ (concurrent READs arrive out of order), not beyond what
 * is stored plus a window (the tripwire's READ, or a reader that has
 * passed the stores). */
static gboolean
pace_continues(const PrefetchPace *pace, guint64 off)
{
  return pace->run > 0 && off + pace->window >= pace->read_end &&
         off <= MAX(pace->read_end, pace->limit) + pace->window;
}

gboolean
prefetch_pace_note_read(PrefetchPace *pace, guint64 off, guint64 len)
{
  guint64 end = MIN(off + len, pace->size);
  if (off >= pace->size || pace->stopped)
    return FALSE;
  if (!pace_continues(pace, off)) {
    pace->run = 0;
    pace->read_end = end;
    pace->next = pace->limit = end;
    pace->tripwire = NO_TRIPWIRE;
    pace->taken = FALSE;
  }
  pace->run += end - off;
  pace->read_end = MAX(pace->read_end, end);
  /* What READs fetch is not stored again.  A READ past stores already
   * under way means the reader has caught up with them: they jump ahead
   * by a lead, and the kernel's readahead READs serve the reader in
   * between, so that READs and stores do not build the same bytes twice.
   * A readahead READ that comes before the first store has caught up
   * with nothing: the stores start right after it. */
  if (end > pace->next)
    pace->next = end + (pace->taken ? pace->lead : 0);
  if (pace->run < pace->start)
    return FALSE;

  guint64 limit = MIN(pace->size, pace->read_end + pace->window);
  if (limit > pace->limit) {
    pace->limit = limit;
    guint64 tripwire = align_down(limit - MIN(limit, pace->window / 2), pace->page);
    pace->tripwire = tripwire >= pace->next ? tripwire : NO_TRIPWIRE;
  }
  return pace->next < pace->limit;
}

/* Moves next to the data at or after it; FALSE when there is none below
 * the limit or seek failed.  Remembers the data run for the next take.
 * A hole does not use up the window: the limit moves on by its size. */
static gboolean
pace_find_data(PrefetchPace *pace, PrefetchSeekFunc seek, gpointer seek_data)
{
  if (pace->next >= pace->data_start && pace->next < pace->data_end)
    return TRUE;
  gint64 data = seek(seek_data, pace->next, SEEK_DATA);
  if (data == -ENXIO) {
    pace->next = pace->limit;
    return FALSE;
  }
  gint64 hole = data < 0 ? data : seek(seek_data, (guint64)data, SEEK_HOLE);
  if (hole < 0) {
    pace->stopped = TRUE;
    return FALSE;
  }
  pace->data_start = align_down((guint64)data, pace->page);
  pace->data_end = (guint64)hole;
  if (pace->data_start > pace->next) {
    pace->limit = MIN(pace->size, pace->limit + (pace->data_start - pace->next));
    pace->next = pace->data_start;
  }
  return pace->next < pace->limit;
}

gboolean
prefetch_pace_take(PrefetchPace *pace, PrefetchSeekFunc seek, gpointer seek_data,
                   guint64 *off, guint64 *len)
{
  while (!pace->stopped && pace->next < pace->limit) {
    if (!pace_find_data(pace, seek, seek_data))
      return FALSE;
    /* At the tripwire, or past it over a hole: leave this page out. */
    if (pace->tripwire <= pace->next) {
      pace->next += pace->page;
      pace->tripwire = NO_TRIPWIRE;
      continue;
    }
    guint64 end = MIN(MIN(pace->next + pace->chunk, pace->limit), pace->tripwire);
    /* Whole pages: a page stored in part is not marked up to date, and
     * the bytes around data are the file's too (zeros of a hole). */
    guint64 data_end = pace->data_end + pace->page - 1;
    end = MIN(end, MIN(align_down(data_end, pace->page), pace->size));
    *off = pace->next;
    *len = end - pace->next;
    pace->next = end;
    pace->taken = TRUE;
    return TRUE;
  }
  return FALSE;
}

/* ------------------------------------------------------------------ */

struct _Prefetch {
  struct fuse_session *se;
  fuse_ino_t ino;
  char *display;           /* for the debug lines */
  PrefetchSource source;
  gpointer source_data;
  int buf_flags;
  GMutex lock;             /* guards the fields below */
  GCond idle;              /* busy became FALSE */
  PrefetchPace pace;
  gboolean busy;           /* a task is queued or running */
  gboolean stopping;       /* prefetch_free has begun */
  guint64 stored;          /* bytes */
};

static GThreadPool *prefetch_pool;

static void prefetch_work(gpointer data, gpointer unused);

static gpointer
pool_create(gpointer unused)
{
  gint threads = (gint)MAX(1, g_get_num_processors());
  prefetch_pool = g_thread_pool_new(prefetch_work, NULL, threads, FALSE, NULL);
  return NULL;
}

Prefetch *
prefetch_new(struct fuse_session *se, fuse_ino_t ino, const char *display, guint64 size,
             guint64 window, const PrefetchSource *source, gpointer source_data, int buf_flags)
{
  static GOnce pool_once = G_ONCE_INIT;
  g_once(&pool_once, pool_create, NULL);

  Prefetch *prefetch = g_new0(Prefetch, 1);
  prefetch->se = se;
  prefetch->ino = ino;
  prefetch->display = g_strdup(display);
  prefetch->source = *source;
  prefetch->source_data = source_data;
  prefetch->buf_flags = buf_flags;
  g_mutex_init(&prefetch->lock);
  g_cond_init(&prefetch->idle);
  long page = sysconf(_SC_PAGESIZE);
  /* One store is as large as the largest READ reply, for the same
   * reason: it must fit a pipe (VIRTSNAPFS_MAX_READ).  Two READs in a
   * row make a run. */
  prefetch_pace_init(&prefetch->pace, size, window, VIRTSNAPFS_MAX_READ, 2 * VIRTSNAPFS_MAX_READ,
                     page > 0 ? (guint64)page : 4096);
  return prefetch;
}

/* Stores [off, off + len).  0 or -errno. */
static int
prefetch_store(Prefetch *prefetch, guint64 off, guint64 len)
{
  struct fuse_bufvec *bufv;
  int r = prefetch->source.fill(prefetch->source_data, off, (gsize)len, &bufv);
  if (r < 0)
    return r;
  return fuse_lowlevel_notify_store(prefetch->se, prefetch->ino, (off_t)off, bufv,
                                    (enum fuse_buf_copy_flags)prefetch->buf_flags);
}

static void
prefetch_work(gpointer data, gpointer unused)
{
  Prefetch *prefetch = data;
  g_mutex_lock(&prefetch->lock);
  guint64 off, len;
  while (!prefetch->stopping &&
         prefetch_pace_take(&prefetch->pace, prefetch->source.seek, prefetch->source_data,
                            &off, &len)) {
    g_mutex_unlock(&prefetch->lock);
    int r = prefetch_store(prefetch, off, len);
    g_mutex_lock(&prefetch->lock);
    if (r < 0) {
      /* A read error is answered to the READ that reaches it; a store
       * refused (an old kernel, unmounting) will be refused again. */
      if (!prefetch->pace.stopped)
        g_debug("PREFETCH %s: off=%" G_GUINT64_FORMAT " len=%" G_GUINT64_FORMAT
                " => %s; no more stores", prefetch->display, off, len, g_strerror(-r));
      prefetch->pace.stopped = TRUE;
    } else {
      prefetch->stored += len;
    }
  }
  prefetch->busy = FALSE;
  g_cond_broadcast(&prefetch->idle);
  g_mutex_unlock(&prefetch->lock);
}

void
prefetch_note_read(Prefetch *prefetch, guint64 off, guint64 len)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&prefetch->lock);
  if (!prefetch_pace_note_read(&prefetch->pace, off, len) || prefetch->stopping)
    return;
  if (!prefetch->busy) {
    prefetch->busy = TRUE;
    g_thread_pool_push(prefetch_pool, prefetch, NULL);
  }
}

void
prefetch_free(Prefetch *prefetch)
{
  if (prefetch == NULL)
    return;
  g_mutex_lock(&prefetch->lock);
  prefetch->stopping = TRUE;
  while (prefetch->busy)
    g_cond_wait(&prefetch->idle, &prefetch->lock);
  g_mutex_unlock(&prefetch->lock);
  g_debug("PREFETCH %s: %" G_GUINT64_FORMAT " bytes stored", prefetch->display,
          prefetch->stored);
  g_mutex_clear(&prefetch->lock);
  g_cond_clear(&prefetch->idle);
  g_free(prefetch->display);
  g_free(prefetch);
}
