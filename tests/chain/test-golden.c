/* test-golden: every point in time of generated chains reads back exactly
 * as `qemu-img convert -O raw` gives it, and SEEK_DATA/SEEK_HOLE and the
 * allocated byte count agree with `qemu-img map --output=json`.
 *
 * usage: test-golden MKCHAINS.PY GROUP   (see mkchains.py for the groups)
 *
 * The chains are built at test time into a temporary directory, which is
 * also the only image directory of the policy the chains are opened with.
 * Per point: a whole-disk read, random unaligned reads (some crossing the
 * end of the disk), a walk of chain_map() checked against the reference
 * bytes, seeks from every extent boundary and from random offsets.  One
 * more case reads the deepest point from several threads at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "chain.h"

typedef struct {
  char *chain;
  guint index;
  char *path;
  ChainFormat format;
  gboolean check_map;
} Point;

static char *tmpdir;
static char *ref_path;

static void
point_free(gpointer p)
{
  Point *point = p;
  g_free(point->chain);
  g_free(point->path);
  g_free(point);
}

/* Runs argv, returns its stdout; fails the test on error. */
static char *
run(const char *const *argv)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *out = NULL, *err = NULL;
  gint status;
  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err,
                    &status, &error))
    g_error("%s: %s", argv[0], error->message);
  if (!g_spawn_check_wait_status(status, &error))
    g_error("%s %s: %s\n%s", argv[0], argv[1], error->message, err);
  return g_steal_pointer(&out);
}

typedef struct {
  guint64 start, end;
} Range;

/* The "data": true ranges of `qemu-img map --output=json`, merged. */
static GArray *
qemu_data_ranges(const Point *point)
{
  const char *argv[] = {"qemu-img", "map", "-f", chain_format_name(point->format),
                        "--output=json", point->path, NULL};
  g_autofree char *json = run(argv);
  GArray *ranges = g_array_new(FALSE, FALSE, sizeof(Range));
  for (const char *p = json; (p = strstr(p, "\"start\":")) != NULL;) {
    guint64 start = g_ascii_strtoull(p + 8, NULL, 10);
    const char *l = strstr(p, "\"length\":"), *d = strstr(p, "\"data\":");
    g_assert_nonnull(l);
    g_assert_nonnull(d);
    guint64 length = g_ascii_strtoull(l + 9, NULL, 10);
    d += 7;
    while (*d == ' ')
      d++;
    if (g_str_has_prefix(d, "true") && length > 0) {
      Range *last = ranges->len ? &g_array_index(ranges, Range, ranges->len - 1) : NULL;
      if (last != NULL && last->end == start) {
        last->end = start + length;
      } else {
        Range r = {start, start + length};
        g_array_append_val(ranges, r);
      }
    }
    p = d;
  }
  return ranges;
}

static gint64
expect_seek(GArray *ranges, guint64 size, guint64 offset, int whence)
{
  if (offset >= size)
    return -ENXIO;
  for (guint i = 0; i < ranges->len; i++) {
    Range r = g_array_index(ranges, Range, i);
    if (offset < r.start)
      return whence == SEEK_DATA ? (gint64)r.start : (gint64)offset;
    if (offset < r.end)
      return whence == SEEK_DATA ? (gint64)offset : (gint64)r.end;
  }
  return whence == SEEK_DATA ? -ENXIO : (gint64)offset;
}

/* ranges widened to aligned granules (the last one ends at size), merged:
 * what chain_seek_granular() must report as data. */
static GArray *
widen_ranges(GArray *ranges, guint64 granule, guint64 size)
{
  GArray *out = g_array_new(FALSE, FALSE, sizeof(Range));
  for (guint i = 0; i < ranges->len; i++) {
    Range r = g_array_index(ranges, Range, i);
    Range w = {r.start - r.start % granule, MIN((r.end + granule - 1) / granule * granule, size)};
    Range *last = out->len ? &g_array_index(out, Range, out->len - 1) : NULL;
    if (last && w.start <= last->end)
      last->end = MAX(last->end, w.end);
    else
      g_array_append_val(out, w);
  }
  return out;
}

static void
check_bytes(const guint8 *got, const guint8 *want, gsize length, guint64 offset, const char *what)
{
  if (length == 0 || memcmp(got, want, length) == 0)
    return;
  gsize i = 0;
  while (got[i] == want[i])
    i++;
  g_error("%s: byte at guest 0x%" G_GINT64_MODIFIER "x is 0x%02x, qemu-img says 0x%02x", what,
          offset + i, got[i], want[i]);
}

static Chain *
open_point(const Point *point)
{
  const char *dirs[] = {tmpdir, NULL};
  ChainPolicy policy = {.image_dirs = dirs};
  g_autoptr(GError) error = NULL;
  Chain *chain = chain_open(point->path, point->format, NULL, &policy, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_depth(chain), ==, point->index + 1);
  return chain;
}

static void
test_point(gconstpointer data)
{
  const Point *point = data;
  const char *convert[] = {"qemu-img", "convert", "-f", chain_format_name(point->format),
                           "-O", "raw", point->path, ref_path, NULL};
  g_free(run(convert));
  g_autoptr(GError) error = NULL;
  g_autoptr(GMappedFile) mapped = g_mapped_file_new(ref_path, FALSE, &error);
  g_assert_no_error(error);
  const guint8 *ref = (const guint8 *)g_mapped_file_get_contents(mapped);
  gsize size = g_mapped_file_get_length(mapped);

  g_autoptr(Chain) chain = open_point(point);
  g_assert_cmpuint(chain_virtual_size(chain), ==, size);

  /* The whole disk in one read.  The buffer is kept from point to point:
   * faulting in 64 MiB each time would dominate the deep chains' run. */
  static guint8 *buf;
  static gsize buf_size;
  if (buf_size < size) {
    g_free(buf);
    buf = g_malloc(size);
    buf_size = size;
  }
  g_assert_cmpint(chain_read(chain, buf, size, 0), ==, (gssize)size);
  check_bytes(buf, ref, size, 0, "whole read");

  /* Random unaligned reads, small and large, some across the end. */
  GRand *rand = g_rand_new_with_seed(point->index * 7919 + (guint32)size);
  gsize max = 3 * 1024 * 1024;
  static guint8 *rbuf;
  if (rbuf == NULL)
    rbuf = g_malloc(max);
  int reads = g_str_has_prefix(point->chain, "deep") ? 60 : 200;
  for (int i = 0; i < reads; i++) {
    guint64 off = (guint64)g_rand_double_range(rand, 0, (double)size + 4096);
    gsize len = i % 4 == 0 ? (gsize)g_rand_int_range(rand, 0, (gint32)max)
                           : (gsize)g_rand_int_range(rand, 1, 9000);
    gssize want = off >= size ? 0 : (gssize)MIN((guint64)len, size - off);
    g_assert_cmpint(chain_read(chain, rbuf, len, off), ==, want);
    check_bytes(rbuf, ref + off, (gsize)want, off, "random read");
  }
  g_rand_free(rand);

  /* chain_map() tiles the disk; its data extents hold the right bytes. */
  guint64 allocated = 0;
  for (guint64 pos = 0; pos < size;) {
    ChainExtent e;
    g_assert_cmpint(chain_map(chain, pos, size - pos, &e), ==, 0);
    g_assert_cmpuint(e.offset, ==, pos);
    g_assert_cmpuint(e.length, >, 0);
    g_assert_cmpuint(e.layer, <=, chain_depth(chain));
    if (e.allocated)
      allocated += e.length;
    if (e.kind == CHAIN_EXTENT_DATA) {
      gsize n = (gsize)MIN(e.length, (guint64)max);
      gssize got = pread(e.fd, rbuf, n, (off_t)e.host_offset);
      g_assert_cmpint(got, >=, 0);
      memset(rbuf + got, 0, n - (gsize)got);
      check_bytes(rbuf, ref + pos, n, pos, "data extent");
    } else if (e.kind == CHAIN_EXTENT_ZERO) {
      if (ref[pos] != 0 || memcmp(ref + pos, ref + pos + 1, e.length - 1) != 0)
        g_error("zero extent at 0x%" G_GINT64_MODIFIER "x has data", pos);
    }
    pos += e.length;
  }
  g_assert_cmpint(chain_allocated_bytes(chain), ==, (gint64)allocated);

  /* The summary (from cached per-image runs) says what the open chain says. */
  const char *dirs[] = {tmpdir, NULL};
  ChainPolicy policy = {.image_dirs = dirs};
  for (int pass = 0; pass < 2; pass++) { /* the second from the cache */
    g_auto(ChainSummary) summary = {0};
    g_assert_true(chain_summarize(point->path, point->format, NULL, &policy, &summary, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(summary.virtual_size, ==, size);
    g_assert_cmpuint(summary.allocated, ==, allocated);
    g_assert_cmpuint(summary.depth, ==, chain_depth(chain));
    g_assert_cmpint(summary.format, ==, point->format);
  }

  if (point->check_map) {
    g_autoptr(GArray) ranges = qemu_data_ranges(point);
    guint64 qemu_allocated = 0;
    g_autoptr(GArray) probes = g_array_new(FALSE, FALSE, sizeof(guint64));
    for (guint i = 0; i < ranges->len; i++) {
      Range r = g_array_index(ranges, Range, i);
      qemu_allocated += r.end - r.start;
      guint64 p[] = {r.start, r.start + 1, r.end - 1, r.end, r.start ? r.start - 1 : 0};
      g_array_append_vals(probes, p, G_N_ELEMENTS(p));
    }
    g_assert_cmpint(chain_allocated_bytes(chain), ==, (gint64)qemu_allocated);
    for (guint64 off = 0; off < size + 1024; off += 65536 + 511)
      g_array_append_val(probes, off);
    guint64 edges[] = {0, size ? size - 1 : 0, size, size + 1};
    g_array_append_vals(probes, edges, G_N_ELEMENTS(edges));
    /* Exact, then in granules: one cluster (1 is exact too), three
     * clusters (not a power of two) and 1 MiB. */
    const guint64 granules[] = {0, 1, 65536, 3 * 65536, 1 << 20};
    for (guint g = 0; g < G_N_ELEMENTS(granules); g++) {
      guint64 granule = granules[g];
      g_autoptr(GArray) expect = granule > 1 ? widen_ranges(ranges, granule, size)
                                             : g_array_ref(ranges);
      g_autoptr(GArray) at = g_array_copy(probes);
      for (guint i = 0; i < expect->len; i++) {
        Range r = g_array_index(expect, Range, i);
        guint64 p[] = {r.start, r.end - 1, r.end, r.start ? r.start - 1 : 0};
        g_array_append_vals(at, p, G_N_ELEMENTS(p));
      }
      for (guint i = 0; i < at->len; i++) {
        guint64 off = g_array_index(at, guint64, i);
        for (int whence = SEEK_DATA; whence <= SEEK_HOLE; whence++) {
          gint64 want = expect_seek(expect, size, off, whence);
          gint64 got = chain_seek_granular(chain, off, whence, granule);
          if (got != want)
            g_error("%s from 0x%" G_GINT64_MODIFIER "x in granules of %" G_GUINT64_FORMAT
                    ": got %" G_GINT64_FORMAT ", qemu-img map says %" G_GINT64_FORMAT,
                    whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", off, granule, got, want);
        }
      }
    }
  }
  unlink(ref_path);
}

typedef struct {
  Chain *chain;
  const guint8 *ref;
  gsize size;
  guint seed;
} ThreadJob;

static gpointer
reader_thread(gpointer data)
{
  ThreadJob *job = data;
  GRand *rand = g_rand_new_with_seed(job->seed);
  g_autofree guint8 *buf = g_malloc(256 * 1024);
  for (int i = 0; i < 2000; i++) {
    guint64 off = (guint64)g_rand_double_range(rand, 0, (double)job->size);
    gsize len = (gsize)g_rand_int_range(rand, 1, 256 * 1024);
    gssize want = (gssize)MIN((guint64)len, job->size - off);
    gssize got = chain_read(job->chain, buf, len, off);
    if (got != want || memcmp(buf, job->ref + off, (gsize)want) != 0) {
      g_rand_free(rand);
      return GINT_TO_POINTER(1);
    }
  }
  g_rand_free(rand);
  return NULL;
}

/* Many readers of one chain at once: the caches' locking. */
static void
test_threads(gconstpointer data)
{
  const Point *point = data;
  const char *convert[] = {"qemu-img", "convert", "-f", chain_format_name(point->format),
                           "-O", "raw", point->path, ref_path, NULL};
  g_free(run(convert));
  g_autofree guint8 *ref = NULL;
  gsize size;
  g_assert_true(g_file_get_contents(ref_path, (char **)&ref, &size, NULL));
  g_autoptr(Chain) chain = open_point(point);
  if (size == 0)
    return;

  GThread *threads[6];
  ThreadJob jobs[G_N_ELEMENTS(threads)];
  for (guint i = 0; i < G_N_ELEMENTS(threads); i++) {
    jobs[i] = (ThreadJob){chain, ref, size, i + 1};
    threads[i] = g_thread_new("reader", reader_thread, &jobs[i]);
  }
  for (guint i = 0; i < G_N_ELEMENTS(threads); i++)
    g_assert_null(g_thread_join(threads[i]));
  unlink(ref_path);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  if (argc != 3) {
    g_printerr("usage: %s MKCHAINS.PY GROUP\n", argv[0]);
    return 2;
  }
  const char *group = argv[2];
  for (const char *tool = "qemu-img\0qemu-io\0python3\0"; *tool; tool += strlen(tool) + 1) {
    g_autofree char *found = g_find_program_in_path(tool);
    if (found == NULL) {
      g_print("1..0 # SKIP %s is not installed\n", tool);
      return 77;
    }
  }

  g_autoptr(GError) error = NULL;
  tmpdir = g_dir_make_tmp("chain-golden-XXXXXX", &error);
  g_assert_no_error(error);
  ref_path = g_build_filename(tmpdir, "reference.raw", NULL);
  const char *mk[] = {"python3", argv[1], tmpdir, group, NULL};
  g_autofree char *manifest = run(mk);

  /* Deep chains: qemu-img map of every point would dominate the run
   * time; every tenth point and the deepest one are enough there. */
  guint map_every = g_str_equal(group, "deep200") ? 10 : 1;
  g_autoptr(GPtrArray) points = g_ptr_array_new_with_free_func(point_free);
  g_auto(GStrv) lines = g_strsplit(manifest, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++) {
    g_auto(GStrv) f = g_strsplit(lines[i], "\t", -1);
    if (g_strv_length(f) != 4)
      continue;
    Point *point = g_new0(Point, 1);
    point->chain = g_strdup(f[0]);
    point->index = (guint)g_ascii_strtoull(f[1], NULL, 10);
    point->path = g_strdup(f[2]);
    point->format = chain_format_from_name(f[3]);
    g_ptr_array_add(points, point);
  }
  g_assert_cmpuint(points->len, >, 0);
  for (guint i = 0; i < points->len; i++) {
    Point *point = points->pdata[i];
    gboolean last = i + 1 == points->len || !g_str_equal(((Point *)points->pdata[i + 1])->chain,
                                                         point->chain);
    point->check_map = point->index % map_every == 0 || last;
    g_autofree char *name = g_strdup_printf("/golden/%s/%s/%u", group, point->chain, point->index);
    g_test_add_data_func(name, point, test_point);
  }
  g_autofree char *name = g_strdup_printf("/golden/%s/threads", group);
  g_test_add_data_func(name, points->pdata[points->len - 1], test_threads);

  int status = g_test_run();
  const char *rm[] = {"rm", "-rf", tmpdir, NULL};
  g_free(run(rm));
  g_free(ref_path);
  g_free(tmpdir);
  return status;
}
