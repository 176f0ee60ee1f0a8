/* fuzz-chain: a libFuzzer target for the chain reader (issue #6).
 *
 * Each input is an image file.  It is written to top.qcow2 in a private
 * directory and opened as the qcow2 top of a chain; the directory also
 * holds base.raw and base.qcow2, written once, so an input whose backing
 * name is "base.raw" or "base.qcow2" (the seeds from make-seeds.sh have
 * them) becomes a two-layer chain.  The last input byte chooses what the
 * caller claims the backing format to be: nothing (the image's own
 * backing-format extension decides), raw or qcow2; or it opens
 * over.qcow2 instead, a fixed image whose backing file is the input, so
 * the input's map is merged beneath another layer.  The policy confines
 * layers to the directory, so a fuzzed backing name cannot reach out.
 *
 * If the chain opens, the target walks its map, reads, seeks, counts and
 * builds an allocation bitmap.  Work per input is bounded by capping
 * iterations and sizes here, not by changing chain/: virtual sizes may be
 * up to 2^61 bytes.  Every result is checked against the API contract
 * (chain.h), so a wrong answer aborts like a crash does.
 *
 * Single-threaded, like libFuzzer.  Built and run by run-fuzz.sh with
 * clang -fsanitize=fuzzer,address,undefined; not part of the meson build.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chain.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_MAP_STEPS 2048
#define MAX_READ (G_GUINT64_CONSTANT(1) << 20)
/* chain_layer_allocation() bitmaps stay below this many bits. */
#define MAX_BITMAP_BITS (G_GUINT64_CONSTANT(1) << 20)

static char *dir;      /* canonical; removed at exit */
static char *top_path;  /* dir/top.qcow2 */
static char *over_path; /* dir/over.qcow2, whose backing file is top.qcow2 */
static guint8 *buf;    /* MAX_READ bytes */

static void
drop_log(const char *domain, GLogLevelFlags level, const char *message, gpointer data)
{
}

static void
remove_dir(void)
{
  const char *names[] = {"top.qcow2", "over.qcow2", "base.raw", "base.qcow2"};
  for (guint i = 0; i < G_N_ELEMENTS(names); i++) {
    g_autofree char *path = g_build_filename(dir, names[i], NULL);
    unlink(path);
  }
  rmdir(dir);
}

static void
put_be(guint8 *p, guint width, guint64 v)
{
  for (guint i = 0; i < width; i++)
    p[width - 1 - i] = (guint8)(v >> (8 * i));
}

/* A 1 MiB qcow2 image with 64 KiB clusters: header at 0, L1 at 64K,
 * refcount table at 128K, refcount block at 192K, L2 at 256K, data at
 * 320K.  Guest cluster 0 holds 0xb5, cluster 2 is a zero cluster, the rest
 * is unallocated (reads from the backing file, if any).  The reader does
 * not check refcounts, so they are left empty. */
static void
write_qcow2(const char *path, const char *backing)
{
  const gsize cluster = 65536, length = 6 * cluster;
  g_autofree guint8 *img = g_malloc0(length);
  put_be(img + 0, 4, 0x514649fb); /* magic */
  put_be(img + 4, 4, 3);          /* version */
  if (backing != NULL) {
    put_be(img + 8, 8, 512); /* backing_file_offset */
    put_be(img + 16, 4, (guint32)strlen(backing));
    memcpy(img + 512, backing, strlen(backing));
    /* backing format extension, then the end of the list */
    put_be(img + 112, 4, 0xe2792aca);
    put_be(img + 116, 4, 5);
    memcpy(img + 120, "qcow2", 5);
  }
  put_be(img + 20, 4, 16);      /* cluster_bits */
  put_be(img + 24, 8, 1 << 20); /* size */
  put_be(img + 36, 4, 1);       /* l1_size */
  put_be(img + 40, 8, 1 * cluster);
  put_be(img + 48, 8, 2 * cluster); /* refcount_table_offset */
  put_be(img + 56, 4, 1);           /* refcount_table_clusters */
  put_be(img + 96, 4, 4);           /* refcount_order */
  put_be(img + 100, 4, 112);        /* header_length */
  put_be(img + 1 * cluster, 8, G_GUINT64_CONSTANT(1) << 63 | 4 * cluster);
  put_be(img + 2 * cluster, 8, 3 * cluster);
  put_be(img + 4 * cluster, 8, G_GUINT64_CONSTANT(1) << 63 | 5 * cluster);
  put_be(img + 4 * cluster + 16, 8, 1); /* QCOW_OFLAG_ZERO */
  memset(img + 5 * cluster, 0xb5, cluster);
  g_autoptr(GError) error = NULL;
  if (!g_file_set_contents(path, (const char *)img, (gssize)length, &error))
    g_error("%s", error->message);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
  /* The reader logs the first corrupt table of each layer: expected here,
   * and printing it would slow the run down.  Criticals stay fatal: they
   * mean a precondition failed inside chain/. */
  g_log_set_handler("virtsnapfs-chain", G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE, drop_log, NULL);
  g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);

  g_autoptr(GError) error = NULL;
  g_autofree char *tmp = g_dir_make_tmp("fuzz-chain-XXXXXX", &error);
  if (tmp == NULL)
    g_error("%s", error->message);
  dir = realpath(tmp, NULL);
  g_assert_nonnull(dir);
  atexit(remove_dir);
  top_path = g_build_filename(dir, "top.qcow2", NULL);

  /* 192 KiB of a counting pattern: shorter than most disks above it. */
  g_autofree guint8 *raw = g_malloc(192 * 1024);
  for (gsize i = 0; i < 192 * 1024; i++)
    raw[i] = (guint8)(i * 7 + (i >> 9));
  g_autofree char *raw_path = g_build_filename(dir, "base.raw", NULL);
  if (!g_file_set_contents(raw_path, (const char *)raw, 192 * 1024, &error))
    g_error("%s", error->message);
  g_autofree char *qcow2_path = g_build_filename(dir, "base.qcow2", NULL);
  write_qcow2(qcow2_path, NULL);
  over_path = g_build_filename(dir, "over.qcow2", NULL);
  write_qcow2(over_path, "top.qcow2");

  buf = g_malloc(MAX_READ);
  return 0;
}

/* Input-derived numbers: the bytes before the mode byte, read backwards
 * (qemu-img images mostly end in zeros there, so the mutator can steer
 * them), mixed with a hash of the whole input so that seeds and mutants
 * read at different places even when those bytes are zero. */
typedef struct {
  const uint8_t *data;
  size_t size;
  guint cursor;
  guint64 hash;
} Picker;

static guint64
pick(Picker *p)
{
  guint64 v = 0;
  for (guint i = 0; i < 8; i++) {
    gsize at = ++p->cursor;
    v = v << 8 | (at < p->size ? p->data[p->size - 1 - at] : 0);
  }
  p->hash = (p->hash ^ v) * G_GUINT64_CONSTANT(0x100000001b3);
  return v ^ p->hash >> 7;
}

/* The map and the reads agree: a zero extent reads as zeros, a data
 * extent as its host bytes (zeros past the end of the file). */
static void
check_extent(Chain *chain, const ChainExtent *extent)
{
  gsize length = (gsize)MIN(extent->length, 65536);
  gssize n = chain_read(chain, buf, length, extent->offset);
  if (extent->kind == CHAIN_EXTENT_COMPRESSED) {
    g_assert_true(n == -EIO || n == (gssize)length);
    return;
  }
  g_assert_cmpint(n, ==, (gssize)length);
  g_autofree guint8 *want = g_malloc0(length);
  if (extent->kind == CHAIN_EXTENT_DATA) {
    gssize got = pread(extent->fd, want, length, (off_t)extent->host_offset);
    g_assert_cmpint(got, >=, 0);
  }
  g_assert_true(memcmp(buf, want, length) == 0);
}

static void
walk_map(Chain *chain)
{
  guint64 size = chain_virtual_size(chain), pos = 0;
  for (guint step = 0; step < MAX_MAP_STEPS && pos < size; step++) {
    ChainExtent extent;
    int r = chain_map(chain, pos, size - pos, &extent);
    if (r < 0) {
      g_assert_cmpint(r, ==, -EIO);
      /* Corrupt tables spoil the cluster, not the disk: go on after it. */
      pos += MIN(size - pos, chain_layer_cluster_size(chain_get_layer(chain, 0)));
      continue;
    }
    g_assert_cmpuint(extent.offset, ==, pos);
    g_assert_cmpuint(extent.length, >, 0);
    g_assert_cmpuint(extent.length, <=, size - pos);
    g_assert_cmpuint(extent.layer, <=, chain_depth(chain));
    if (extent.kind == CHAIN_EXTENT_DATA) {
      g_assert_cmpuint(extent.layer, <, chain_depth(chain));
      g_assert_cmpint(extent.fd, ==, chain_layer_fd(chain_get_layer(chain, extent.layer)));
    }
    if (step < 16)
      check_extent(chain, &extent);
    pos += extent.length;
  }
}

static void
check_seek(Chain *chain, guint64 offset, int whence)
{
  guint64 size = chain_virtual_size(chain);
  gint64 r = chain_seek(chain, offset, whence);
  if (r == -EIO || r == -ENXIO)
    return;
  g_assert_cmpint(r, >=, 0);
  g_assert_cmpuint((guint64)r, >=, offset);
  g_assert_cmpuint((guint64)r, <=, size);
  if (whence == SEEK_DATA)
    g_assert_cmpuint((guint64)r, <, size);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  /* Not g_file_set_contents(): it syncs, which would cost most of the time. */
  int fd = open(top_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, data, size) != (ssize_t)size || close(fd) < 0)
    g_error("%s: %s", top_path, g_strerror(errno));

  g_autoptr(GError) error = NULL;

  /* Mode 0-2: the input is the top and the caller claims no backing
   * format, raw or qcow2.  Mode 3: the input is a qcow2 backing file under
   * over.qcow2, so its map is merged beneath another layer. */
  guint mode = size > 0 ? data[size - 1] & 3 : 0;
  ChainFormat claimed[] = {CHAIN_FORMAT_UNKNOWN, CHAIN_FORMAT_RAW, CHAIN_FORMAT_QCOW2, CHAIN_FORMAT_QCOW2};
  ChainFormat backing_formats[] = {claimed[mode], CHAIN_FORMAT_UNKNOWN};
  const char *dirs[] = {dir, NULL};
  ChainPolicy policy = {.image_dirs = dirs, .max_depth = 4};
  g_autoptr(Chain) chain = chain_open(mode == 3 ? over_path : top_path, CHAIN_FORMAT_QCOW2,
                                      backing_formats, &policy, &error);
  if (chain == NULL) {
    g_assert_nonnull(error);
    g_assert_true(error->domain == CHAIN_ERROR);
    g_assert_cmpint(error->code, >, 0);
    g_assert_cmpuint(strlen(error->message), >, 0);
    return 0;
  }
  g_assert_no_error(error);
  guint64 vsize = chain_virtual_size(chain);
  g_assert_cmpuint(chain_depth(chain), >=, 1);
  g_assert_cmpuint(chain_depth(chain), <=, 4);

  walk_map(chain);

  Picker picker = {data, size, 0, G_GUINT64_CONSTANT(0xcbf29ce484222325)};
  for (size_t i = 0; i < size; i++)
    picker.hash = (picker.hash ^ data[i]) * G_GUINT64_CONSTANT(0x100000001b3);
  for (guint i = 0; i < 3 && vsize > 0; i++) {
    guint64 offset = pick(&picker) % vsize;
    /* One long read across many clusters, two short ones. */
    gsize length = 1 + (gsize)(pick(&picker) % (i == 0 ? MAX_READ : 65536));
    gssize n = chain_read(chain, buf, length, offset);
    if (n != -EIO)
      g_assert_cmpint(n, ==, (gssize)MIN(length, vsize - offset));
  }
  g_assert_cmpint(chain_read(chain, buf, 1, vsize), ==, 0);

  guint64 at = vsize > 0 ? pick(&picker) % vsize : 0;
  check_seek(chain, 0, SEEK_DATA);
  check_seek(chain, 0, SEEK_HOLE);
  check_seek(chain, at, SEEK_DATA);
  check_seek(chain, at, SEEK_HOLE);

  gint64 allocated = chain_allocated_bytes(chain);
  g_assert_true(allocated == -EIO || (allocated >= 0 && (guint64)allocated <= vsize));

  for (guint i = 0; i < chain_depth(chain); i++) {
    ChainLayer *layer = chain_get_layer(chain, i);
    guint64 granularity = 512;
    while (granularity < G_GUINT64_CONSTANT(1) << 40 &&
           chain_layer_virtual_size(layer) / granularity >= MAX_BITMAP_BITS)
      granularity <<= 1;
    g_autoptr(GError) bitmap_error = NULL;
    g_autoptr(ChainBitmap) bitmap = chain_layer_allocation(layer, granularity, &bitmap_error);
    if (bitmap == NULL)
      g_assert_error(bitmap_error, CHAIN_ERROR, EIO);
    else
      g_assert_cmpuint(chain_bitmap_count(bitmap), <=, bitmap->nbits);
  }
  return 0;
}
