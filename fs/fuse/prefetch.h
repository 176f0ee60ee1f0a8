/* prefetch.h: storing a sequentially read file into the kernel's page
 * cache ahead of its reader (prefetch.c).
 *
 * Two layers: PrefetchPace decides what to store and when, from the READ
 * requests the daemon sees; it is plain arithmetic, unit-tested on its
 * own (tests/fs/test-prefetch.c).  Prefetch runs a pace on worker threads
 * and stores with FUSE_NOTIFY_STORE.
 */
#pragma once

#include "fuse-version.h"

#include <glib.h>

G_BEGIN_DECLS

/* Where a file has data: SEEK_DATA or SEEK_HOLE from off, as lseek(2)
 * answers them; -ENXIO when no data follows off, other -errno on error. */
typedef gint64 (*PrefetchSeekFunc)(gpointer data, guint64 off, int whence);

/* Reads of one open file, and what to store ahead of them.  Offsets are
 * bytes of the file.  Not locked: Prefetch holds its own lock around it. */
typedef struct {
  guint64 size;      /* of the file */
  guint64 window;    /* stored ahead of the reader's furthest READ */
  guint64 lead;      /* how far stores jump past a READ that caught up */
  guint64 chunk;     /* largest single store */
  guint64 start;     /* sequential bytes read before storing begins */
  guint64 page;      /* the kernel's page size: stores are page-aligned */
  /* The current sequential run of READs. */
  guint64 run;       /* bytes read in it */
  guint64 read_end;  /* end of its furthest READ */
  /* What is stored next. */
  guint64 next;      /* next offset to store */
  guint64 limit;     /* stores stay below this */
  guint64 tripwire;  /* a page left out, G_MAXUINT64 if none (prefetch.c) */
  gboolean taken;    /* a store has been taken in this run */
  /* The data run around next, from the last two seeks. */
  guint64 data_start, data_end;
  gboolean stopped;  /* a store failed: never store again */
} PrefetchPace;

void prefetch_pace_init(PrefetchPace *pace, guint64 size, guint64 window, guint64 chunk,
                        guint64 start, guint64 page);
/* Notes a READ of [off, off + len).  TRUE when there is something to
 * store (prefetch_pace_take will say what). */
gboolean prefetch_pace_note_read(PrefetchPace *pace, guint64 off, guint64 len);
/* The next range to store, skipping holes as seek reports them.  FALSE
 * when nothing is left below the limit (or seek failed: the pace stops). */
gboolean prefetch_pace_take(PrefetchPace *pace, PrefetchSeekFunc seek, gpointer seek_data,
                            guint64 *off, guint64 *len);

/* ------------------------------------------------------------------ */

/* Where the bytes come from.  Both functions run on prefetch threads,
 * while the file is open. */
typedef struct {
  PrefetchSeekFunc seek;
  /* Points *bufv at the bytes of [off, off + len): valid until the next
   * call on the same thread.  0 or -errno. */
  int (*fill)(gpointer data, guint64 off, gsize len, struct fuse_bufvec **bufv);
} PrefetchSource;

typedef struct _Prefetch Prefetch;

/* Prefetches the file of inode ino, size bytes, through session se;
 * source reads it with source_data, which must outlive the Prefetch.
 * buf_flags are fuse_buf_copy_flags for the stores (splice or not). */
Prefetch *prefetch_new(struct fuse_session *se, fuse_ino_t ino, const char *display,
                       guint64 size, guint64 window, const PrefetchSource *source,
                       gpointer source_data, int buf_flags);
/* Called for each READ of the file, before it is answered. */
void prefetch_note_read(Prefetch *prefetch, guint64 off, guint64 len);
/* Stops, waits for stores under way, frees.  Nothing is stored after it
 * returns. */
void prefetch_free(Prefetch *prefetch);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Prefetch, prefetch_free)

G_END_DECLS
