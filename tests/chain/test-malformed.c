/* test-malformed: hostile images fail cleanly.
 *
 * Real images are built with qemu-img and qemu-io, then one field is
 * patched per case.  A header-level fault must make chain_open() fail with
 * the expected errno and a message naming the file and the field; a
 * table-level fault must make reads fail with -EIO, with exactly one
 * warning for the layer however often it is read.  Run under ASan/UBSan
 * too, which turns any over-read into a failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "chain.h"

static char *tmpdir;

typedef enum { AT_ABS, AT_L1, AT_L2, AT_L2_BITMAP, AT_EXT0, AT_BACKING, AT_COMPRESSED } Base;
typedef enum { SET, OR, ADD, FILL } Op;
/* OPEN: chain_open() fails; READ: the map and reads fail; INFLATE: the
 * map is sound, reading the compressed data fails; OPENS: odd but valid. */
typedef enum { OPEN, READ, INFLATE, OPENS } Stage;

typedef struct {
  const char *name;
  const char *tmpl; /* v3 (with a qcow2 base), v2, zlib, zstd, extl2 */
  Base base;
  guint64 offset;
  guint width; /* 1, 4 or 8 bytes; byte count for FILL */
  Op op;
  guint64 value;
  Stage stage;
  int code;
  const char *expect; /* in the message (OPEN) */
} Case;

#define HDR(field_offset) AT_ABS, field_offset
static const Case cases[] = {
    {"magic", "v3", HDR(0), 4, SET, 0x51464900, OPEN, EIO, "magic 0x51464900"},
    {"version-1", "v3", HDR(4), 4, SET, 1, OPEN, EIO, "version 0x1"},
    {"version-4", "v3", HDR(4), 4, SET, 4, OPEN, EIO, "version 0x4"},
    {"cluster-bits-8", "v3", HDR(20), 4, SET, 8, OPEN, EIO, "cluster_bits 0x8"},
    {"cluster-bits-22", "v3", HDR(20), 4, SET, 22, OPEN, EIO, "cluster_bits 0x16"},
    {"header-length-short", "v3", HDR(100), 4, SET, 96, OPEN, EIO, "header_length 0x60"},
    {"header-length-odd", "v3", HDR(100), 4, SET, 108, OPEN, EIO, "header_length 0x6c"},
    {"header-length-huge", "v3", HDR(100), 4, SET, 0x20000, OPEN, EIO, "header_length 0x20000"},
    /* extensions start past the first 4 KiB: read the whole header cluster */
    {"header-length-past-4k", "zlib", HDR(100), 4, SET, 0x2000, OPENS, 0, NULL},
    {"backing-offset", "v3", HDR(8), 8, SET, 0xfffc, OPEN, EIO, "backing file name at 0xfffc"},
    {"backing-offset-header", "v3", HDR(8), 8, SET, 0x20, OPEN, EIO, "backing file name at 0x20"},
    {"backing-length", "v3", HDR(16), 4, SET, 1024, OPEN, EIO, "length 0x400 exceeds 1023"},
    {"backing-nul", "v3", AT_BACKING, 2, 1, SET, 0, OPEN, EIO, "NUL"},
    {"extension-length", "v3", AT_EXT0, 4, 4, SET, 0xfff0, OPEN, EIO, "length 0xfff0"},
    {"extension-length-max", "v3", AT_EXT0, 4, 4, SET, 0xffffffff, OPEN, EIO, "length 0xffffffff"},
    {"backing-format-long", "v3", AT_EXT0, 4, 4, SET, 17, OPEN, EIO, "backing format name length 0x11"},
    {"bitmaps-extension", "v2", AT_EXT0, 0, 4, SET, 0x23852875, OPEN, EIO, "bitmaps extension length"},
    {"crypto-extension", "v2", AT_EXT0, 0, 4, SET, 0x0537be77, OPEN, EOPNOTSUPP, "encrypt"},
    {"data-file-extension", "v2", AT_EXT0, 0, 4, SET, 0x44415441, OPEN, EOPNOTSUPP, "external data"},
    {"incompatible-bit-5", "v3", HDR(72), 8, OR, 1 << 5, OPEN, EOPNOTSUPP, "incompatible features 0x20"},
    {"incompatible-bit-63", "v3", HDR(72), 8, OR, G_GUINT64_CONSTANT(1) << 63, OPEN, EOPNOTSUPP,
     "0x8000000000000000"},
    {"data-file-bit", "v3", HDR(72), 8, OR, 1 << 2, OPEN, EOPNOTSUPP, "external data"},
    {"refcount-order", "v3", HDR(96), 4, SET, 7, OPEN, EIO, "refcount_order 0x7"},
    {"refcount-table-unaligned", "v3", HDR(48), 8, ADD, 0x200, OPEN, EIO, "refcount table offset"},
    {"refcount-table-zero", "v3", HDR(48), 8, SET, 0, OPEN, EIO, "overlaps the header"},
    {"l1-size-small", "v3", HDR(36), 4, SET, 0, OPEN, EIO, "L1 size 0x0 is too small"},
    {"l1-size-huge", "v3", HDR(36), 4, SET, 0x10000000, OPEN, EIO, "L1 size 0x10000000"},
    {"l1-offset-unaligned", "v3", HDR(40), 8, ADD, 0x200, OPEN, EIO, "not cluster-aligned"},
    {"l1-offset-header", "v3", HDR(40), 8, SET, 0, OPEN, EIO, "L1 table offset 0x0 overlaps"},
    {"l1-offset-eof", "v3", HDR(40), 8, SET, 0x7fff0000, OPEN, EIO, "past the end of the file"},
    {"image-too-big", "v3", HDR(24), 8, SET, G_GUINT64_CONSTANT(1) << 62, OPEN, EIO, "image too big"},
    {"size-overflow", "v3", HDR(24), 8, SET, G_MAXUINT64, OPEN, EIO, "0xffffffffffffffff"},
    {"encrypted-aes", "v3", HDR(32), 4, SET, 1, OPEN, EOPNOTSUPP, "crypt_method 0x1"},
    {"encrypted-luks", "v2", HDR(32), 4, SET, 2, OPEN, EOPNOTSUPP, "crypt_method 0x2"},
    {"compression-without-bit", "v3", HDR(104), 1, SET, 1, OPEN, EIO, "without the compression type"},
    {"compression-bit-zlib", "v3", HDR(72), 8, OR, 1 << 3, OPEN, EIO, "compression_type is 0x0"},
    {"compression-unknown", "zstd", HDR(104), 1, SET, 7, OPEN, EOPNOTSUPP, "compression_type 0x7"},
    {"extl2-small-clusters", "extl2", HDR(20), 4, SET, 13, OPEN, EIO, "cluster_bits 0xd"},
    {"snapshots-count", "v3", HDR(60), 4, SET, 0x20000, OPEN, EIO, "snapshot count 0x20000"},
    {"snapshots-offset", "v3", HDR(60), 4, SET, 1, OPEN, EIO, "snapshot table offset 0x0"},
    {"l1-reserved", "v3", AT_L1, 0, 8, OR, 1, READ, EIO, NULL},
    {"l1-reserved-high", "v3", AT_L1, 0, 8, OR, G_GUINT64_CONSTANT(1) << 60, READ, EIO, NULL},
    {"l2-unaligned", "v3", AT_L1, 0, 8, ADD, 0x200, READ, EIO, NULL},
    {"l2-eof", "v3", AT_L1, 0, 8, SET, G_GUINT64_CONSTANT(0x80000000007f0000), READ, EIO, NULL},
    {"data-unaligned", "v3", AT_L2, 0, 8, ADD, 0x200, READ, EIO, NULL},
    {"data-eof", "v3", AT_L2, 0, 8, SET, G_GUINT64_CONSTANT(0x80000000ffff0000), READ, EIO, NULL},
    {"l2-reserved", "v3", AT_L2, 0, 8, OR, G_GUINT64_CONSTANT(1) << 57, READ, EIO, NULL},
    {"l2-reserved-low", "v2", AT_L2, 0, 8, OR, 2, READ, EIO, NULL},
    {"l2-offset-zero-copied", "v3", AT_L2, 0, 8, SET, G_GUINT64_CONSTANT(1) << 63, READ, EIO, NULL},
    {"zero-cluster-unaligned", "v3", AT_L2, 0, 8, SET, 0x10201, READ, EIO, NULL},
    {"compressed-garbage", "zlib", AT_COMPRESSED, 0, 64, FILL, 0x5a, INFLATE, EIO, NULL},
    {"compressed-misplaced", "zlib", AT_L2, 0, 8, SET,
     G_GUINT64_CONSTANT(0x4000000000000000) | 0x50003, INFLATE, EIO, NULL},
    {"compressed-header", "zlib", AT_L2, 0, 8, SET, G_GUINT64_CONSTANT(0x4000000000000000) | 0x100,
     READ, EIO, NULL},
    {"compressed-eof", "zlib", AT_L2, 0, 8, SET,
     G_GUINT64_CONSTANT(0x4000000000000000) | 0x7fff000000, READ, EIO, NULL},
    {"zstd-garbage", "zstd", AT_COMPRESSED, 0, 64, FILL, 0xa5, INFLATE, EIO, NULL},
    {"extl2-alloc-and-zero", "extl2", AT_L2_BITMAP, 0, 8, OR, G_GUINT64_CONSTANT(1) << 32, READ, EIO,
     NULL},
    {"extl2-alloc-no-offset", "extl2", AT_L2, 0, 8, SET, 0, READ, EIO, NULL},
    {"extl2-zero-bit", "extl2", AT_L2, 0, 8, OR, 1, READ, EIO, NULL},
    {"extl2-compressed-bitmap", "extl2", AT_L2, 0, 8, OR, G_GUINT64_CONSTANT(1) << 62, READ, EIO,
     NULL},
};

typedef struct {
  guint64 cluster_size, l1, l2, data, compressed, ext0, backing;
  gboolean extended_l2;
} Info;

static guint64
get_be(int fd, guint64 offset, guint width)
{
  guint8 b[8] = {0};
  g_assert_cmpint(pread(fd, b, width, (off_t)offset), ==, (gssize)width);
  guint64 v = 0;
  for (guint i = 0; i < width; i++)
    v = v << 8 | b[i];
  return v;
}

static void
put_be(int fd, guint64 offset, guint width, guint64 v)
{
  guint8 b[8];
  for (guint i = 0; i < width; i++)
    b[width - 1 - i] = (guint8)(v >> (8 * i));
  g_assert_cmpint(pwrite(fd, b, width, (off_t)offset), ==, (gssize)width);
}

static Info
inspect(int fd)
{
  Info info = {0};
  guint bits = (guint)get_be(fd, 20, 4);
  info.cluster_size = G_GUINT64_CONSTANT(1) << bits;
  guint version = (guint)get_be(fd, 4, 4);
  info.ext0 = version == 3 ? get_be(fd, 100, 4) : 72;
  info.extended_l2 = version == 3 && (get_be(fd, 72, 8) & 16);
  info.backing = get_be(fd, 8, 8);
  info.l1 = get_be(fd, 40, 8);
  info.l2 = get_be(fd, info.l1, 8) & G_GUINT64_CONSTANT(0x00fffffffffffe00);
  guint64 entry = info.l2 ? get_be(fd, info.l2, 8) : 0;
  info.data = entry & G_GUINT64_CONSTANT(0x00fffffffffffe00);
  guint x = 62 - (bits - 8);
  info.compressed = entry & ((G_GUINT64_CONSTANT(1) << x) - 1);
  return info;
}

static void
run(const char *cmd)
{
  g_autofree char *full = g_strdup_printf("cd '%s' && %s", tmpdir, cmd);
  const char *argv[] = {"sh", "-c", full, NULL};
  g_autoptr(GError) error = NULL;
  gint status;
  g_autofree char *err = NULL;
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL,
                             NULL, NULL, NULL, &err, &status, &error));
  if (!g_spawn_check_wait_status(status, &error))
    g_error("%s: %s\n%s", cmd, error->message, err);
}

static guint warnings;

static void
count_warnings(const char *domain, GLogLevelFlags level, const char *message, gpointer data)
{
  warnings++;
  g_test_message("logged: %s", message);
}

static Chain *
open_chain(const char *path, guint max_depth, GError **error)
{
  const char *dirs[] = {tmpdir, NULL};
  ChainPolicy policy = {.image_dirs = dirs, .max_depth = max_depth};
  return chain_open(path, CHAIN_FORMAT_QCOW2, NULL, &policy, error);
}

/* chain_summarize() on the same file: TRUE, or its errno. */
static int
summarize_errno(const char *path)
{
  const char *dirs[] = {tmpdir, NULL};
  ChainPolicy policy = {.image_dirs = dirs};
  g_auto(ChainSummary) summary = {0};
  g_autoptr(GError) error = NULL;
  if (chain_summarize(path, CHAIN_FORMAT_QCOW2, NULL, &policy, &summary, &error))
    return 0;
  g_assert_nonnull(strstr(error->message, path));
  return error->code;
}

static void
test_case(gconstpointer data)
{
  const Case *c = data;
  g_autofree char *tmpl = g_strdup_printf("%s/%s.qcow2", tmpdir, c->tmpl);
  g_autofree char *path = g_strdup_printf("%s/case-%s.qcow2", tmpdir, c->name);
  g_autofree char *contents = NULL;
  gsize length;
  g_assert_true(g_file_get_contents(tmpl, &contents, &length, NULL));
  g_assert_true(g_file_set_contents(path, contents, (gssize)length, NULL));

  int fd = open(path, O_RDWR);
  g_assert_cmpint(fd, >=, 0);
  Info info = inspect(fd);
  guint64 at = c->offset;
  switch (c->base) {
  case AT_ABS: break;
  case AT_L1: at += info.l1; break;
  case AT_L2: at += info.l2; break;
  case AT_L2_BITMAP: at += info.l2 + 8; break;
  case AT_EXT0: at += info.ext0; break;
  case AT_BACKING: at += info.backing; break;
  case AT_COMPRESSED: at += info.compressed; break;
  }
  if (c->op == FILL) {
    g_autofree guint8 *bytes = g_malloc(c->width);
    memset(bytes, (int)c->value, c->width);
    g_assert_cmpint(pwrite(fd, bytes, c->width, (off_t)at), ==, (gssize)c->width);
  } else {
    guint64 v = get_be(fd, at, c->width);
    v = c->op == SET ? c->value : c->op == OR ? v | c->value : v + c->value;
    put_be(fd, at, c->width, v);
  }
  close(fd);

  g_autoptr(GError) error = NULL;
  warnings = 0;
  g_autoptr(Chain) chain = open_chain(path, 0, &error);
  if (c->stage == OPEN) {
    g_assert_null(chain);
    g_assert_error(error, CHAIN_ERROR, c->code);
    g_test_message("%s", error->message);
    g_assert_nonnull(strstr(error->message, path));
    if (strstr(error->message, c->expect) == NULL)
      g_error("message \"%s\" lacks \"%s\"", error->message, c->expect);
    g_assert_cmpuint(warnings, ==, 0);
    g_assert_cmpint(summarize_errno(path), ==, c->code);
    return;
  }

  g_assert_no_error(error);
  guint64 size = chain_virtual_size(chain);
  g_autofree guint8 *buf = g_malloc(size);
  if (c->stage == OPENS) {
    g_assert_cmpint(chain_read(chain, buf, size, 0), ==, (gssize)size);
    g_assert_cmpuint(warnings, ==, 0);
    g_assert_cmpint(summarize_errno(path), ==, 0);
    return;
  }
  for (int i = 0; i < 3; i++)
    g_assert_cmpint(chain_read(chain, buf, size, 0), ==, -EIO);
  /* A fault in one L2 entry spoils that cluster only (an L1 entry covers
   * the whole small disk). */
  if (c->base != AT_L1)
    g_assert_cmpint(chain_read(chain, buf, 4096, size - 4096), ==, 4096);
  if (c->stage == INFLATE) {
    g_assert_cmpint(chain_seek(chain, 0, SEEK_DATA), ==, 0);
    g_assert_cmpuint(warnings, ==, 1);
    return;
  }
  g_assert_cmpint(chain_seek(chain, 0, SEEK_HOLE), ==, -EIO);
  g_assert_cmpint(chain_allocated_bytes(chain), ==, -EIO);
  ChainExtent extent;
  g_assert_cmpint(chain_map(chain, 0, size, &extent), ==, -EIO);
  g_autoptr(ChainBitmap) bitmap = chain_layer_allocation(chain_get_layer(chain, 0), 65536, &error);
  g_assert_null(bitmap);
  g_assert_error(error, CHAIN_ERROR, EIO);
  g_assert_cmpuint(warnings, ==, 1); /* once per layer, not per read */
  g_assert_cmpint(summarize_errno(path), ==, EIO);
}

static void
test_loop(void)
{
  run("qemu-img create -q -f qcow2 loop-a.qcow2 1M && "
      "qemu-img create -q -f qcow2 -b loop-a.qcow2 -F qcow2 loop-b.qcow2 && "
      "qemu-img rebase -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2");
  g_autofree char *path = g_build_filename(tmpdir, "loop-b.qcow2", NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = open_chain(path, 0, &error);
  g_assert_null(chain);
  g_assert_error(error, CHAIN_ERROR, ELOOP);
  g_assert_nonnull(strstr(error->message, "loops"));

  /* A self-loop through a symlink is the same inode. */
  run("qemu-img create -q -f qcow2 self.qcow2 1M && ln -s self.qcow2 self-link.qcow2 && "
      "qemu-img rebase -u -b self-link.qcow2 -F qcow2 self.qcow2");
  g_autofree char *self = g_build_filename(tmpdir, "self.qcow2", NULL);
  g_clear_error(&error);
  g_autoptr(Chain) chain2 = open_chain(self, 0, &error);
  g_assert_null(chain2);
  g_assert_error(error, CHAIN_ERROR, ELOOP);
}

static void
test_depth(void)
{
  run("qemu-img create -q -f qcow2 d0.qcow2 1M && "
      "qemu-img create -q -f qcow2 -b d0.qcow2 -F qcow2 d1.qcow2 && "
      "qemu-img create -q -f qcow2 -b d1.qcow2 -F qcow2 d2.qcow2");
  g_autofree char *path = g_build_filename(tmpdir, "d2.qcow2", NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = open_chain(path, 2, &error);
  g_assert_null(chain);
  g_assert_error(error, CHAIN_ERROR, ELOOP);
  g_assert_nonnull(strstr(error->message, "deeper than 2"));
  g_clear_error(&error);
  g_autoptr(Chain) ok = open_chain(path, 3, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_depth(ok), ==, 3);
}

/* Random damage: flip bytes of the header cluster, the L1 and the first
 * L2 table of each template; whatever opens must read, seek and count
 * without crashing, hanging or reading out of bounds (ASan). */
static void
test_random_flips(void)
{
  const char *templates[] = {"v3", "v2", "zlib", "zstd", "extl2"};
  /* CHAIN_FUZZ_SEED and CHAIN_FUZZ_ROUNDS run a longer campaign by hand. */
  const char *seed = g_getenv("CHAIN_FUZZ_SEED"), *env_rounds = g_getenv("CHAIN_FUZZ_ROUNDS");
  GRand *rand = g_rand_new_with_seed(seed ? (guint32)g_ascii_strtoull(seed, NULL, 10) : 20261122);
  guint rounds = env_rounds ? (guint)g_ascii_strtoull(env_rounds, NULL, 10) : 1000;
  guint opened = 0;
  for (guint round = 0; round < rounds; round++) {
    const char *tmpl = templates[round % G_N_ELEMENTS(templates)];
    g_autofree char *from = g_strdup_printf("%s/%s.qcow2", tmpdir, tmpl);
    g_autofree char *path = g_strdup_printf("%s/flip.qcow2", tmpdir);
    g_autofree char *contents = NULL;
    gsize length;
    g_assert_true(g_file_get_contents(from, &contents, &length, NULL));
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(write(fd, contents, length), ==, (gssize)length);
    Info info = inspect(fd);
    guint flips = (guint)g_rand_int_range(rand, 1, 5);
    for (guint i = 0; i < flips; i++) {
      guint64 area[] = {0, info.ext0, info.l1, info.l2 ? info.l2 : info.l1,
                        info.compressed ? info.compressed : info.l1};
      guint64 span[] = {112, 256, 64, 256, 64};
      guint which = (guint)g_rand_int_range(rand, 0, G_N_ELEMENTS(area));
      guint64 at = area[which] + (guint64)g_rand_int_range(rand, 0, (gint32)span[which]);
      guint8 byte = (guint8)g_rand_int_range(rand, 0, 256);
      g_assert_cmpint(pwrite(fd, &byte, 1, (off_t)at), ==, 1);
    }
    close(fd);

    g_autoptr(GError) error = NULL;
    g_autoptr(Chain) chain = open_chain(path, 0, &error);
    if (chain == NULL) {
      g_assert_nonnull(error);
      g_assert_nonnull(strstr(error->message, "flip.qcow2"));
      continue;
    }
    opened++;
    guint64 size = MIN(chain_virtual_size(chain), 64 * 1024 * 1024);
    g_autofree guint8 *buf = g_malloc(MAX(size, 1));
    gssize n = chain_read(chain, buf, size, 0);
    g_assert_true(n == (gssize)size || n == -EIO);
    (void)chain_seek(chain, 0, SEEK_DATA);
    (void)chain_seek(chain, 0, SEEK_HOLE);
    (void)chain_allocated_bytes(chain);
    g_autoptr(ChainBitmap) bitmap =
        chain_layer_allocation(chain_get_layer(chain, 0), 65536, &error);
    g_assert_true(bitmap != NULL || error != NULL);
  }
  g_test_message("%u of %u damaged images opened", opened, rounds);
  g_rand_free(rand);
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
  /* The reader's warnings are expected here: count them, keep them
   * non-fatal.  Other domains' warnings stay fatal. */
  g_log_set_always_fatal(G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
  g_log_set_fatal_mask("virtsnapfs-chain", G_LOG_FATAL_MASK);
  g_log_set_handler("virtsnapfs-chain", G_LOG_LEVEL_WARNING, count_warnings, NULL);

  g_autoptr(GError) error = NULL;
  tmpdir = g_dir_make_tmp("chain-malformed-XXXXXX", &error);
  g_assert_no_error(error);
  run("qemu-img create -q -f qcow2 base.qcow2 4M && qemu-io -f qcow2 -c 'write -P 1 0 4M' base.qcow2 && "
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 v3.qcow2 && "
      "qemu-io -f qcow2 -c 'write -P 2 0 128k' -c 'write -z 256k 64k' v3.qcow2 && "
      "qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M && qemu-io -f qcow2 -c 'write -P 3 0 64k' v2.qcow2 && "
      "qemu-img create -q -f qcow2 zlib.qcow2 4M && qemu-io -f qcow2 -c 'write -c -P 4 0 64k' zlib.qcow2 && "
      "qemu-img create -q -f qcow2 -o compression_type=zstd zstd.qcow2 4M && "
      "qemu-io -f qcow2 -c 'write -c -P 5 0 64k' zstd.qcow2 && "
      "qemu-img create -q -f qcow2 -o extended_l2=on extl2.qcow2 4M && "
      "qemu-io -f qcow2 -c 'write -P 6 0 4k' extl2.qcow2");

  for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *name = g_strdup_printf("/malformed/%s", cases[i].name);
    g_test_add_data_func(name, &cases[i], test_case);
  }
  g_test_add_func("/malformed/backing-loop", test_loop);
  g_test_add_func("/malformed/depth-limit", test_depth);
  g_test_add_func("/malformed/random-flips", test_random_flips);

  int status = g_test_run();
  g_autofree char *rm = g_strdup_printf("rm -rf '%s'", tmpdir);
  const char *argv_rm[] = {"sh", "-c", rm, NULL};
  g_spawn_sync(NULL, (char **)argv_rm, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL, NULL);
  g_free(tmpdir);
  return status;
}
