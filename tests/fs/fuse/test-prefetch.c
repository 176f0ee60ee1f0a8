/* test-prefetch: PrefetchPace, what is stored ahead of a reader and when.
 *
 * A pure unit test: a fake file with data runs answers the seeks, and the
 * tests play READs and takes against the pace.
 */
#include "prefetch.h"

#include <errno.h>
#include <unistd.h>

#define KiB 1024ull
#define MiB (1024 * KiB)
#define PAGE (4 * KiB)
#define CHUNK (512 * KiB)
#define WINDOW (8 * MiB)

/* A file of data runs [start, end), sorted; the rest is holes. */
typedef struct {
  guint64 size;
  const guint64 (*runs)[2];
  guint n_runs;
  int fail;  /* nonzero: every seek fails with -fail */
} FakeFile;

static gint64
fake_seek(gpointer data, guint64 off, int whence)
{
  const FakeFile *f = data;
  if (f->fail)
    return -f->fail;
  if (off >= f->size)
    return -ENXIO;
  for (guint i = 0; i < f->n_runs; i++) {
    if (off < f->runs[i][1])
      return whence == SEEK_DATA ? (gint64)MAX(off, f->runs[i][0])
                                 : (gint64)(off < f->runs[i][0] ? off : f->runs[i][1]);
  }
  return whence == SEEK_DATA ? -ENXIO : (gint64)f->size;
}

static const guint64 all_data[][2] = { { 0, 64 * MiB } };
static const FakeFile dense = { 64 * MiB, all_data, 1, 0 };

static void
pace_new(PrefetchPace *pace, guint64 size)
{
  prefetch_pace_init(pace, size, WINDOW, CHUNK, 2 * CHUNK, PAGE);
}

/* A pace whose reader has read the first two chunks: storing from 1 MiB. */
static void
pace_started(PrefetchPace *pace, guint64 size)
{
  pace_new(pace, size);
  g_assert_false(prefetch_pace_note_read(pace, 0, CHUNK));
  g_assert_true(prefetch_pace_note_read(pace, CHUNK, CHUNK));
}

/* Takes until the pace has nothing left; marks what was stored in a
 * byte-per-page map of the file and checks each range's shape. */
static guint64
take_all(PrefetchPace *pace, const FakeFile *f, guint8 *stored)
{
  guint64 off, len, total = 0;
  while (prefetch_pace_take(pace, fake_seek, (gpointer)f, &off, &len)) {
    g_assert_cmpuint(len, >, 0);
    g_assert_cmpuint(len, <=, CHUNK);
    g_assert_cmpuint(off % PAGE, ==, 0);
    g_assert_true(len % PAGE == 0 || off + len == f->size);
    g_assert_cmpuint(off + len, <=, f->size);
    for (guint64 p = off / PAGE; p < (off + len + PAGE - 1) / PAGE; p++) {
      g_assert_cmpuint(stored[p], ==, 0);  /* never stored twice */
      stored[p] = 1;
    }
    total += len;
  }
  return total;
}

static guint64
pages_stored(const guint8 *stored, guint64 from, guint64 to)
{
  guint64 n = 0;
  for (guint64 p = from / PAGE; p < to / PAGE; p++)
    n += stored[p];
  return n;
}

/* Nothing before two chunks of sequential READs; then a window past the
 * furthest READ, less the tripwire page half a window before its end. */
static void
test_starts_after_a_run(void)
{
  PrefetchPace pace;
  g_autofree guint8 *stored = g_new0(guint8, dense.size / PAGE);
  pace_new(&pace, dense.size);

  g_assert_false(prefetch_pace_note_read(&pace, 0, CHUNK));
  g_assert_cmpuint(take_all(&pace, &dense, stored), ==, 0);
  g_assert_true(prefetch_pace_note_read(&pace, CHUNK, CHUNK));
  guint64 read_end = 2 * CHUNK;
  take_all(&pace, &dense, stored);

  guint64 tripwire = read_end + WINDOW / 2;
  g_assert_cmpuint(pages_stored(stored, 0, read_end), ==, 0);
  g_assert_cmpuint(pages_stored(stored, read_end, tripwire), ==, (tripwire - read_end) / PAGE);
  g_assert_cmpuint(stored[tripwire / PAGE], ==, 0);
  g_assert_cmpuint(pages_stored(stored, tripwire + PAGE, read_end + WINDOW), ==,
                   (WINDOW / 2 - PAGE) / PAGE);
  g_assert_cmpuint(pages_stored(stored, read_end + WINDOW, dense.size), ==, 0);
}

/* The reader's one-page READ at the tripwire moves the window on, and
 * the stores go on from where they stopped: every page of the file is
 * stored once, or read. */
static void
test_tripwire_moves_the_window(void)
{
  PrefetchPace pace;
  g_autofree guint8 *stored = g_new0(guint8, dense.size / PAGE);
  pace_started(&pace, dense.size);
  guint64 tripwires = 0;
  for (;;) {
    take_all(&pace, &dense, stored);
    /* The reader goes through the stored pages to the first missing one,
     * which it READs. */
    guint64 p = 2 * CHUNK / PAGE;
    while (p < dense.size / PAGE && stored[p])
      p++;
    if (p == dense.size / PAGE)
      break;
    stored[p] = 1;
    tripwires++;
    prefetch_pace_note_read(&pace, p * PAGE, PAGE);
  }
  /* A miss per half window, not one per store. */
  g_assert_cmpuint(tripwires, <=, dense.size / (WINDOW / 2) + 1);
}

/* What READs fetched is not stored again, and a reader that has caught
 * up with the stores sends them a quarter window past its READ. */
static void
test_reads_ahead_of_the_stores(void)
{
  PrefetchPace pace;
  g_autofree guint8 *stored = g_new0(guint8, dense.size / PAGE);
  pace_started(&pace, dense.size);
  guint64 off, len;
  g_assert_true(prefetch_pace_take(&pace, fake_seek, (gpointer)&dense, &off, &len));
  g_assert_cmpuint(off, ==, 2 * CHUNK);
  /* Readahead READs beyond what was stored: the first has caught up. */
  prefetch_pace_note_read(&pace, 3 * CHUNK, CHUNK);
  prefetch_pace_note_read(&pace, 4 * CHUNK, CHUNK);
  g_assert_true(prefetch_pace_take(&pace, fake_seek, (gpointer)&dense, &off, &len));
  g_assert_cmpuint(off, ==, 4 * CHUNK + WINDOW / 4);
  g_assert_cmpuint(pace.limit, ==, 5 * CHUNK + WINDOW);
  /* READs in between move nothing. */
  prefetch_pace_note_read(&pace, 5 * CHUNK, CHUNK);
  g_assert_true(prefetch_pace_take(&pace, fake_seek, (gpointer)&dense, &off, &len));
  g_assert_cmpuint(off, ==, 4 * CHUNK + WINDOW / 4 + CHUNK);
}

/* A readahead READ that comes before the first store is not a reader
 * catching up: the stores begin right after it, with no jump. */
static void
test_read_before_the_first_store(void)
{
  PrefetchPace pace;
  pace_started(&pace, dense.size);
  guint64 off, len;
  prefetch_pace_note_read(&pace, 2 * CHUNK, CHUNK);
  g_assert_true(prefetch_pace_take(&pace, fake_seek, (gpointer)&dense, &off, &len));
  g_assert_cmpuint(off, ==, 3 * CHUNK);
  /* Once stores are under way, the same READ is a catching up. */
  prefetch_pace_note_read(&pace, 4 * CHUNK, CHUNK);
  g_assert_true(prefetch_pace_take(&pace, fake_seek, (gpointer)&dense, &off, &len));
  g_assert_cmpuint(off, ==, 5 * CHUNK + WINDOW / 4);
}

/* A READ far behind or far ahead (a seek) starts a new run: nothing is
 * stored until it is two chunks long. */
static void
test_seek_starts_a_new_run(void)
{
  PrefetchPace pace;
  g_autofree guint8 *stored = g_new0(guint8, dense.size / PAGE);
  pace_new(&pace, dense.size);
  prefetch_pace_note_read(&pace, 40 * MiB, CHUNK);
  prefetch_pace_note_read(&pace, 40 * MiB + CHUNK, CHUNK);
  g_assert_cmpuint(pace.limit, ==, 41 * MiB + WINDOW);

  g_assert_false(prefetch_pace_note_read(&pace, 0, CHUNK));
  g_assert_cmpuint(pace.limit, ==, CHUNK);
  g_assert_cmpuint(take_all(&pace, &dense, stored), ==, 0);
  g_assert_false(prefetch_pace_note_read(&pace, 60 * MiB, CHUNK));
  g_assert_cmpuint(take_all(&pace, &dense, stored), ==, 0);
  g_assert_true(prefetch_pace_note_read(&pace, 60 * MiB + CHUNK, CHUNK));
  g_assert_cmpuint(take_all(&pace, &dense, stored), ==, 3 * MiB);  /* to the end */
  g_assert_cmpuint(pages_stored(stored, 61 * MiB, 64 * MiB), ==, 3 * MiB / PAGE);
}

/* Holes are not stored and do not use up the window; data runs are
 * stored in whole pages (a run that ends inside a page takes the page),
 * and a tripwire in a hole moves to the first data page after it. */
static void
test_holes_are_skipped(void)
{
  static const guint64 runs[][2] = {
    { 0, 2 * MiB },
    { 3 * MiB + 100, 3 * MiB + 5000 },  /* unaligned: pages 3M and 3M+4K */
    { 7 * MiB, 8 * MiB },
    { 30 * MiB, 31 * MiB },
  };
  const FakeFile sparse = { 64 * MiB, runs, G_N_ELEMENTS(runs), 0 };
  PrefetchPace pace;
  g_autofree guint8 *stored = g_new0(guint8, sparse.size / PAGE);
  pace_started(&pace, sparse.size);
  /* Tripwire at 5 MiB: a hole.  The window, 1 MiB to 9 MiB, holds 3 MiB
   * of data; with the holes it reaches past 30 MiB. */
  take_all(&pace, &sparse, stored);
  g_assert_cmpuint(pages_stored(stored, MiB, 2 * MiB), ==, MiB / PAGE);
  g_assert_cmpuint(pages_stored(stored, 2 * MiB, 3 * MiB), ==, 0);
  g_assert_cmpuint(pages_stored(stored, 3 * MiB, 3 * MiB + 8 * KiB), ==, 2);
  g_assert_cmpuint(pages_stored(stored, 3 * MiB + 8 * KiB, 7 * MiB), ==, 0);
  /* The tripwire, moved to 7 MiB, the first data page after the hole. */
  g_assert_cmpuint(stored[7 * MiB / PAGE], ==, 0);
  g_assert_cmpuint(pages_stored(stored, 7 * MiB + PAGE, 8 * MiB), ==, MiB / PAGE - 1);
  g_assert_cmpuint(pages_stored(stored, 8 * MiB, 30 * MiB), ==, 0);
  g_assert_cmpuint(pages_stored(stored, 30 * MiB, 31 * MiB), ==, MiB / PAGE);
  g_assert_cmpuint(pages_stored(stored, 31 * MiB, sparse.size), ==, 0);
  /* The reader's READ at the tripwire: no data is left to store. */
  g_assert_false(prefetch_pace_note_read(&pace, 7 * MiB, PAGE));
  g_assert_cmpuint(take_all(&pace, &sparse, stored), ==, 0);
}

/* The end of the file bounds the window; a file whose size is not a
 * multiple of the page ends with a short store. */
static void
test_end_of_file(void)
{
  static const guint64 runs[][2] = { { 0, 3 * MiB + 123 } };
  const FakeFile f = { 3 * MiB + 123, runs, 1, 0 };
  PrefetchPace pace;
  g_autofree guint8 *stored = g_new0(guint8, f.size / PAGE + 1);
  pace_started(&pace, f.size);
  g_assert_cmpuint(pace.limit, ==, f.size);
  guint64 total = take_all(&pace, &f, stored);
  /* All of it: the window is longer than the file, so no tripwire. */
  g_assert_cmpuint(total, ==, f.size - 2 * CHUNK);
  g_assert_false(prefetch_pace_note_read(&pace, f.size, CHUNK));
}

/* A failed seek stops the pace for good; so does a failed store
 * (prefetch.c sets stopped). */
static void
test_errors_stop(void)
{
  FakeFile broken = dense;
  broken.fail = EIO;
  PrefetchPace pace;
  g_autofree guint8 *stored = g_new0(guint8, dense.size / PAGE);
  pace_started(&pace, dense.size);
  g_assert_cmpuint(take_all(&pace, &broken, stored), ==, 0);
  g_assert_true(pace.stopped);
  g_assert_false(prefetch_pace_note_read(&pace, 2 * CHUNK, CHUNK));
  g_assert_cmpuint(take_all(&pace, &dense, stored), ==, 0);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/prefetch/starts-after-a-run", test_starts_after_a_run);
  g_test_add_func("/prefetch/tripwire-moves-the-window", test_tripwire_moves_the_window);
  g_test_add_func("/prefetch/reads-ahead-of-the-stores", test_reads_ahead_of_the_stores);
  g_test_add_func("/prefetch/read-before-the-first-store", test_read_before_the_first_store);
  g_test_add_func("/prefetch/seek-starts-a-new-run", test_seek_starts_a_new_run);
  g_test_add_func("/prefetch/holes-are-skipped", test_holes_are_skipped);
  g_test_add_func("/prefetch/end-of-file", test_end_of_file);
  g_test_add_func("/prefetch/errors-stop", test_errors_stop);
  return g_test_run();
}
