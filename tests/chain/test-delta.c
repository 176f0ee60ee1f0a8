/* test-delta: chain_delta_compute() against real qemu-img/qemu-io chains.
 *
 * Each case builds images with a shell script (qemu-img, qemu-io) in a
 * directory of its own and names a point image and a parent point image
 * (or none).  The oracle is a byte comparison of `qemu-img convert -O raw`
 * of both: a granule is expected in the delta exactly when its bytes
 * differ (the parent's image read as zeros past its end); with no parent,
 * exactly when it holds data by `qemu-img map`.  Per case:
 *   - the delta's runs (chain_delta_run) and SEEK_DATA/SEEK_HOLE walk give
 *     exactly the expected granules, and chain_delta_bytes() their size;
 *   - the parent's raw image, cut or grown to the point's size, with the
 *     delta's data extents (read from the point's chain) written over it,
 *     equals the point's raw image;
 *   - the candidates contain the exact delta, and are a correct delta too;
 *   - seeks at the edges (0, the end, past it).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "chain.h"

typedef struct {
  const char *name;
  const char *script; /* run with sh in the case's directory */
  const char *point;
  ChainFormat point_format;
  const char *parent; /* NULL: the first point in time */
  ChainFormat parent_format;
  /* Bounds on what the oracle finds, so a case cannot pass by testing
   * nothing: the candidates must exceed the exact delta by at least
   * extra_min bytes (identical rewrites), the delta hold at least
   * bytes_min. */
  guint64 bytes_min;
  guint64 extra_min;
} Case;

#define MiB "1048576"

/* qemu-io shorthands */
#define IO(img, cmd) "qemu-io -f qcow2 -c '" cmd "' " img " >/dev/null\n"
#define IORAW(img, cmd) "qemu-io -f raw -c '" cmd "' " img " >/dev/null\n"
#define OVERLAY(img, backing, fmt) \
  "qemu-img create -q -f qcow2 -b " backing " -F " fmt " " img "\n"

static const Case cases[] = {
  {
    "writes",
    "qemu-img create -q -f qcow2 base.qcow2 64M\n"
    IO("base.qcow2", "write -P 0x11 0 4M")
    IO("base.qcow2", "write -P 0x12 32M 1M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    IO("a.qcow2", "write -P 0x21 1M 64k")        /* over data */
    IO("a.qcow2", "write -P 0x22 16M 128k")      /* over a hole */
    IO("a.qcow2", "write -P 0x23 33M 3000")      /* unaligned, partial cluster */
    IO("a.qcow2", "write -P 0x24 63M 1M"),       /* up to the end */
    "a.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, 1 << 20, 60 * 1024,
  },
  {
    "same-bytes",
    "qemu-img create -q -f qcow2 base.qcow2 16M\n"
    IO("base.qcow2", "write -P 0x31 0 2M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    IO("a.qcow2", "write -P 0x31 0 1M")          /* the bytes it had */
    IO("a.qcow2", "write -P 0x31 1M 8k")
    IO("a.qcow2", "write -P 0x32 1052672 4096")  /* one changed block in it */
    IO("a.qcow2", "write -z 8M 1M"),             /* zeros over zeros */
    "a.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, 4096, 2 << 20,
  },
  {
    "zero-and-discard",
    "qemu-img create -q -f qcow2 base.qcow2 16M\n"
    IO("base.qcow2", "write -P 0x41 0 8M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    IO("a.qcow2", "write -z 1M 512k")            /* data -> zeros */
    IO("a.qcow2", "discard 4M 1M")               /* discard over data */
    IO("a.qcow2", "write -z 12M 64k")            /* zeros over a hole */
    IO("a.qcow2", "write -P 0 6M 64k")           /* written zeros over data */
    IO("a.qcow2", "write -z 7M 512"),            /* a zeroed sector */
    "a.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, (3 << 20) / 2 + 68 * 1024, 64 * 1024,
  },
  {
    "compressed",
    "qemu-img create -q -f qcow2 base.qcow2 16M\n"
    IO("base.qcow2", "write -c -P 0x51 0 64k")
    IO("base.qcow2", "write -c -P 0x52 1M 64k")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    IO("a.qcow2", "write -c -P 0x51 0 64k")      /* compressed, same bytes */
    IO("a.qcow2", "write -c -P 0x53 2M 64k")     /* compressed, new */
    IO("a.qcow2", "write -P 0x54 1M 4k"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, 68 * 1024, 64 * 1024,
  },
  {
    "first-point",
    "qemu-img create -q -f qcow2 base.qcow2 16M\n"
    IO("base.qcow2", "write -P 0x61 0 1M")
    IO("base.qcow2", "write -c -P 0x62 4M 64k")
    IO("base.qcow2", "write -z 8M 1M")           /* zero clusters: not data */
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    IO("a.qcow2", "write -P 0x63 10M 3000"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, NULL, CHAIN_FORMAT_UNKNOWN, 1 << 20, 0,
  },
  {
    "first-point-raw",
    "qemu-img create -q -f raw base.raw 8M\n"
    IORAW("base.raw", "write -P 0x64 1M 256k")
    OVERLAY("a.qcow2", "base.raw", "raw")
    IO("a.qcow2", "write -P 0x65 6M 64k"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, NULL, CHAIN_FORMAT_UNKNOWN, 320 * 1024, 0,
  },
  {
    "deeper",
    "qemu-img create -q -f qcow2 base.qcow2 16M\n"
    IO("base.qcow2", "write -P 0x71 0 16M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    IO("a.qcow2", "write -P 0x72 1M 1M")
    OVERLAY("b.qcow2", "a.qcow2", "qcow2")
    IO("b.qcow2", "write -P 0x71 1M 64k")        /* the base's bytes, not a's */
    IO("b.qcow2", "write -P 0x73 5M 64k")
    OVERLAY("c.qcow2", "b.qcow2", "qcow2")
    IO("c.qcow2", "write -P 0x72 5M 64k")        /* over b's, new against a */
    IO("c.qcow2", "write -P 0x71 12M 64k")       /* what a reads there */
    IO("c.qcow2", "write -z 9M 128k"),
    "c.qcow2", CHAIN_FORMAT_QCOW2, "a.qcow2", CHAIN_FORMAT_QCOW2, 256 * 1024, 64 * 1024,
  },
  {
    /* After a revert: the parent point is on another branch. */
    "non-ancestor",
    "qemu-img create -q -f qcow2 base.qcow2 16M\n"
    IO("base.qcow2", "write -P 0x81 0 4M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    IO("a.qcow2", "write -P 0x82 1M 1M")         /* only the parent has it */
    IO("a.qcow2", "write -P 0x83 8M 64k")
    OVERLAY("b.qcow2", "base.qcow2", "qcow2")
    IO("b.qcow2", "write -P 0x83 8M 64k")        /* both wrote the same */
    IO("b.qcow2", "write -P 0x84 10M 64k"),      /* only the point */
    "b.qcow2", CHAIN_FORMAT_QCOW2, "a.qcow2", CHAIN_FORMAT_QCOW2, (1 << 20) + 64 * 1024,
    64 * 1024,
  },
  {
    /* Nothing shared (a merged or copied chain): every layer of both. */
    "no-common-base",
    "qemu-img create -q -f raw base.raw 8M\n"
    IORAW("base.raw", "write -P 0x91 0 2M")
    "qemu-img convert -O qcow2 -f raw base.raw copy.qcow2\n"
    OVERLAY("a.qcow2", "base.raw", "raw")
    IO("a.qcow2", "write -P 0x92 512k 4k")
    IO("copy.qcow2", "write -P 0x93 3M 4k"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, "copy.qcow2", CHAIN_FORMAT_QCOW2, 8192, 0,
  },
  {
    "small-clusters",
    "qemu-img create -q -f qcow2 -o cluster_size=512 base.qcow2 4M\n"
    IO("base.qcow2", "write -P 0xa1 0 1M")
    "qemu-img create -q -f qcow2 -o cluster_size=1024 -b base.qcow2 -F qcow2 a.qcow2\n"
    IO("a.qcow2", "write -P 0xa2 4096 512")      /* one sector per granule */
    IO("a.qcow2", "write -P 0xa1 16384 1024")    /* same bytes */
    IO("a.qcow2", "write -P 0xa3 2M 100"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, 8192, 1024,
  },
  {
    "extended-l2",
    "qemu-img create -q -f qcow2 base.qcow2 8M\n"
    IO("base.qcow2", "write -P 0xb1 0 1M")
    "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=128k -b base.qcow2 -F qcow2 a.qcow2\n"
    IO("a.qcow2", "write -P 0xb2 8192 4096")
    IO("a.qcow2", "write -z 524288 4096")
    IO("a.qcow2", "write -P 0xb3 5M 4096"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, 12288, 0,
  },
  {
    /* The disk grew after the parent: past its end the point compares
     * with zeros (its zeros there are no change). */
    "grown",
    "qemu-img create -q -f qcow2 base.qcow2 8M\n"
    IO("base.qcow2", "write -P 0xc1 0 8M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    "qemu-img resize -q a.qcow2 12M\n"
    IO("a.qcow2", "write -P 0xc2 9M 64k"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, 64 * 1024, 0,
  },
  {
    /* Shrunk, then grown again above data of the base: the cut-off range
     * reads as zeros in the point. */
    "shrunk-and-grown",
    "qemu-img create -q -f qcow2 base.qcow2 8M\n"
    IO("base.qcow2", "write -P 0xd1 0 8M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    "qemu-img resize -q --shrink a.qcow2 6M\n"
    OVERLAY("b.qcow2", "a.qcow2", "qcow2")
    "qemu-img resize -q b.qcow2 8M\n",
    "b.qcow2", CHAIN_FORMAT_QCOW2, "base.qcow2", CHAIN_FORMAT_QCOW2, 2 << 20, 0,
  },
  {
    /* A parent cut short on another branch: past its end the point reads
     * the common base's data, new against the parent's zeros. */
    "parent-shorter",
    "qemu-img create -q -f qcow2 base.qcow2 8M\n"
    IO("base.qcow2", "write -P 0xd2 0 8M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2")
    "qemu-img resize -q --shrink a.qcow2 6M\n"
    OVERLAY("c.qcow2", "base.qcow2", "qcow2"),
    "c.qcow2", CHAIN_FORMAT_QCOW2, "a.qcow2", CHAIN_FORMAT_QCOW2, 2 << 20, 0,
  },
  {
    "identical",
    "qemu-img create -q -f qcow2 base.qcow2 8M\n"
    IO("base.qcow2", "write -P 0xe1 0 1M")
    OVERLAY("a.qcow2", "base.qcow2", "qcow2"),
    "a.qcow2", CHAIN_FORMAT_QCOW2, "a.qcow2", CHAIN_FORMAT_QCOW2, 0, 0,
  },
};

static char *tmpdir;

static char *
run(const char *const *argv, const char *cwd)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *out = NULL, *err = NULL;
  gint status;
  if (!g_spawn_sync(cwd, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err,
                    &status, &error))
    g_error("%s: %s", argv[0], error->message);
  if (!g_spawn_check_wait_status(status, &error))
    g_error("%s %s: %s\n%s", argv[0], argv[1], error->message, err);
  return g_steal_pointer(&out);
}

static GBytes *
raw_of(const char *dir, const char *image, ChainFormat format)
{
  g_autofree char *out = g_build_filename(dir, "oracle.raw", NULL);
  const char *argv[] = {"qemu-img", "convert", "-f", chain_format_name(format), "-O", "raw",
                        image, out, NULL};
  g_free(run(argv, dir));
  g_autoptr(GError) error = NULL;
  char *data;
  gsize size;
  g_assert_true(g_file_get_contents(out, &data, &size, &error));
  unlink(out);
  return g_bytes_new_take(data, size);
}

/* "data": true ranges of `qemu-img map`, as a granule bitmap. */
static ChainBitmap *
qemu_data_granules(const char *dir, const char *image, ChainFormat format, guint64 size,
                   guint64 g)
{
  const char *argv[] = {"qemu-img", "map", "-f", chain_format_name(format), "--output=json",
                        image, NULL};
  g_autofree char *json = run(argv, dir);
  ChainBitmap *bits = chain_bitmap_new(g, size);
  for (const char *p = json; (p = strstr(p, "\"start\":")) != NULL;) {
    guint64 start = g_ascii_strtoull(p + 8, NULL, 10);
    const char *l = strstr(p, "\"length\":"), *d = strstr(p, "\"data\":");
    g_assert_nonnull(l);
    g_assert_nonnull(d);
    guint64 length = g_ascii_strtoull(l + 9, NULL, 10);
    d += 7;
    while (*d == ' ')
      d++;
    if (g_str_has_prefix(d, "true"))
      chain_bitmap_set_range(bits, start, length);
    p = d;
  }
  return bits;
}

static Chain *
open_chain(const char *dir, const char *image, ChainFormat format)
{
  g_autofree char *path = g_build_filename(dir, image, NULL);
  const char *dirs[] = {dir, NULL};
  ChainPolicy policy = {.image_dirs = dirs};
  g_autoptr(GError) error = NULL;
  Chain *chain = chain_open(path, format, NULL, &policy, &error);
  g_assert_no_error(error);
  return chain;
}

/* Checks that delta's runs and seeks show exactly the granules of want. */
static void
check_granules(const ChainDelta *delta, const ChainBitmap *want, const char *what)
{
  guint64 size = chain_delta_virtual_size(delta);
  guint64 g = want->granularity;
  guint64 bytes = 0;

  /* Runs tile the disk and agree with want granule by granule. */
  for (guint64 pos = 0; pos < size;) {
    guint64 end;
    gboolean data = chain_delta_run(delta, pos, &end);
    g_assert_cmpuint(end, >, pos);
    g_assert_cmpuint(end, <=, size);
    g_assert_true(end == size || end % g == 0);
    for (guint64 b = pos / g; b * g < end; b++) {
      if (chain_bitmap_get(want, b) != data)
        g_error("%s: granule at 0x%" G_GINT64_MODIFIER "x is %s in the delta, %s by the oracle",
                what, b * g, data ? "data" : "a hole", data ? "unchanged" : "changed");
    }
    if (data)
      bytes += end - pos;
    pos = end;
  }
  g_assert_cmpuint(chain_delta_bytes(delta), ==, bytes);

  /* The same extents by SEEK_DATA/SEEK_HOLE. */
  guint64 seen = 0;
  for (guint64 pos = 0; pos < size;) {
    gint64 data = chain_delta_seek(delta, pos, SEEK_DATA);
    if (data == -ENXIO)
      break;
    g_assert_cmpint(data, >=, (gint64)pos);
    gint64 hole = chain_delta_seek(delta, (guint64)data, SEEK_HOLE);
    g_assert_cmpint(hole, >, data);
    for (guint64 b = pos / g; b * g < (guint64)hole; b++)
      g_assert_true(chain_bitmap_get(want, b) == (b * g >= (guint64)data));
    seen += (guint64)(hole - data);
    pos = (guint64)hole;
  }
  g_assert_cmpuint(seen, ==, bytes);
  g_assert_cmpint(chain_delta_seek(delta, size, SEEK_DATA), ==, -ENXIO);
  g_assert_cmpint(chain_delta_seek(delta, size, SEEK_HOLE), ==, -ENXIO);
  g_assert_cmpint(chain_delta_seek(delta, size + 4096, SEEK_HOLE), ==, -ENXIO);
  gint64 last_hole = chain_delta_seek(delta, size - 1, SEEK_HOLE);
  g_assert_true(last_hole == (gint64)size - 1 || last_hole == (gint64)size);
  g_assert_cmpint(chain_delta_seek(delta, 0, SEEK_END), ==, -EINVAL);
}

/* parent's bytes (cut or zero-extended to the point's size) with the
 * delta's data read from the point's chain written over them. */
static void
check_rebuild(Chain *point, const ChainDelta *delta, GBytes *parent_raw, GBytes *point_raw,
              const char *what)
{
  gsize size = g_bytes_get_size(point_raw);
  g_autofree guint8 *image = g_malloc0(size);
  if (parent_raw != NULL)
    memcpy(image, g_bytes_get_data(parent_raw, NULL), MIN(size, g_bytes_get_size(parent_raw)));
  for (guint64 pos = 0; pos < size;) {
    guint64 end;
    if (chain_delta_run(delta, pos, &end))
      g_assert_cmpint(chain_read(point, image + pos, (gsize)(end - pos), pos), ==,
                      (gssize)(end - pos));
    pos = end;
  }
  if (memcmp(image, g_bytes_get_data(point_raw, NULL), size) != 0)
    g_error("%s: parent + delta differs from the point", what);
}

static void
test_case(gconstpointer data)
{
  const Case *c = data;
  g_autofree char *dir = g_build_filename(tmpdir, c->name, NULL);
  g_assert_cmpint(g_mkdir(dir, 0755), ==, 0);
  const char *sh[] = {"sh", "-e", "-c", c->script, NULL};
  g_free(run(sh, dir));

  g_autoptr(Chain) point = open_chain(dir, c->point, c->point_format);
  g_autoptr(Chain) parent = c->parent ? open_chain(dir, c->parent, c->parent_format) : NULL;
  g_autoptr(GBytes) point_raw = raw_of(dir, c->point, c->point_format);
  g_autoptr(GBytes) parent_raw = c->parent ? raw_of(dir, c->parent, c->parent_format) : NULL;
  guint64 size = g_bytes_get_size(point_raw);
  g_assert_cmpuint(chain_virtual_size(point), ==, size);
  guint64 g = chain_delta_granularity(size);
  g_assert_cmpuint(g, ==, 4096);

  /* The oracle's granules. */
  g_autoptr(ChainBitmap) want = NULL;
  if (parent_raw == NULL) {
    want = qemu_data_granules(dir, c->point, c->point_format, size, g);
  } else {
    want = chain_bitmap_new(g, size);
    const guint8 *a = g_bytes_get_data(point_raw, NULL);
    gsize psize;
    const guint8 *b = g_bytes_get_data(parent_raw, &psize);
    static const guint8 zeros[4096];
    for (guint64 off = 0; off < size; off += g) {
      gsize len = (gsize)MIN(g, size - off);
      gsize have = off < psize ? (gsize)MIN((guint64)len, psize - off) : 0;
      if (memcmp(a + off, b + off, have) != 0 || memcmp(a + off + have, zeros, len - have) != 0)
        chain_bitmap_set_range(want, off, len);
    }
  }

  g_autoptr(GError) error = NULL;
  g_autoptr(ChainDelta) delta = chain_delta_compute(point, parent, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_delta_virtual_size(delta), ==, size);
  g_assert_cmpuint(chain_delta_get_granularity(delta), ==, g);
  check_granules(delta, want, c->name);
  check_rebuild(point, delta, parent_raw, point_raw, c->name);
  g_assert_cmpuint(chain_delta_bytes(delta), >=, c->bytes_min);
  if (c->bytes_min == 0)
    g_assert_cmpuint(chain_delta_bytes(delta), ==, 0);

  /* Candidates: a superset, and a correct delta as well. */
  g_autoptr(ChainDelta) cand = chain_delta_candidates(point, parent, &error);
  g_assert_no_error(error);
  for (guint64 pos = 0; pos < size;) {
    guint64 end;
    if (chain_delta_run(delta, pos, &end)) {
      guint64 cend;
      g_assert_true(chain_delta_run(cand, pos, &cend));
      g_assert_cmpuint(cend, >=, end);
    }
    pos = end;
  }
  g_assert_cmpuint(chain_delta_bytes(cand), >=, chain_delta_bytes(delta) + c->extra_min);
  check_rebuild(point, cand, parent_raw, point_raw, "candidates");

  /* The same count from the per-image summaries, without the chains. */
  if (c->parent != NULL) {
    g_autofree char *point_path = g_build_filename(dir, c->point, NULL);
    g_autofree char *parent_path = g_build_filename(dir, c->parent, NULL);
    const char *dirs[] = {dir, NULL};
    ChainPolicy policy = {.image_dirs = dirs};
    ChainImage p = {point_path, c->point_format, NULL};
    ChainImage q = {parent_path, c->parent_format, NULL};
    guint64 bound = 0;
    g_assert_true(chain_summarize_delta(&p, &q, &policy, &bound, &error));
    g_assert_no_error(error);
    g_assert_cmpuint(bound, ==, chain_delta_bytes(cand));
  }
  g_test_message("%s: delta %" G_GUINT64_FORMAT " bytes, candidates %" G_GUINT64_FORMAT,
                 c->name, chain_delta_bytes(delta), chain_delta_bytes(cand));
}

/* The granularity grows with the disk so the bitmap stays bounded. */
static void
test_granularity(void)
{
  g_assert_cmpuint(chain_delta_granularity(0), ==, 4096);
  g_assert_cmpuint(chain_delta_granularity(G_GUINT64_CONSTANT(256) << 30), ==, 4096);
  g_assert_cmpuint(chain_delta_granularity((G_GUINT64_CONSTANT(256) << 30) + 4096), ==, 8192);
  g_assert_cmpuint(chain_delta_granularity(G_GUINT64_CONSTANT(1) << 40), ==, 16384);
  guint64 big = G_GUINT64_CONSTANT(1) << 62;
  g_assert_cmpuint(big / chain_delta_granularity(big), <=, G_GUINT64_CONSTANT(64) << 20);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  for (const char *tool = "qemu-img\0qemu-io\0"; *tool; tool += strlen(tool) + 1) {
    g_autofree char *found = g_find_program_in_path(tool);
    if (found == NULL) {
      g_print("1..0 # SKIP %s is not installed\n", tool);
      return 77;
    }
  }
  g_autoptr(GError) error = NULL;
  tmpdir = g_dir_make_tmp("chain-delta-XXXXXX", &error);
  g_assert_no_error(error);

  g_test_add_func("/delta/granularity", test_granularity);
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *name = g_strdup_printf("/delta/%s", cases[i].name);
    g_test_add_data_func(name, &cases[i], test_case);
  }
  int status = g_test_run();
  const char *rm[] = {"rm", "-rf", tmpdir, NULL};
  g_free(run(rm, NULL));
  g_free(tmpdir);
  return status;
}
