/* chain-cat: a small tool over the chain reader, for debugging and for the
 * benchmarks in tests/bench.
 *
 *   chain-cat [-f FORMAT] [-b BLOCK] IMAGE > disk.raw   whole disk to stdout
 *   chain-cat --map IMAGE                               merged map, one run a line
 *   chain-cat --read OFFSET:LENGTH IMAGE                one read to stdout
 *   chain-cat --allocated IMAGE                         allocated bytes
 *   chain-cat --random N IMAGE                          ns per random 4 KiB
 *                                                       read (cold, warm map)
 *                                                       and per lookup alone
 *
 * Holes are skipped with SEEK_DATA/SEEK_HOLE when stdout is seekable, as
 * cp would do.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"

static gboolean
write_all(int fd, const void *buf, gsize length, guint64 offset, gboolean seekable)
{
  const char *p = buf;
  while (length > 0) {
    ssize_t n = seekable ? pwrite(fd, p, length, (off_t)offset) : write(fd, p, length);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return FALSE;
    }
    p += n;
    length -= (gsize)n;
    offset += (guint64)n;
  }
  return TRUE;
}

int
main(int argc, char **argv)
{
  g_autofree char *format_name = NULL;
  g_autofree char *read_spec = NULL;
  gboolean map = FALSE, allocated = FALSE;
  gint block = 1024 * 1024;
  gint random_reads = 0;
  GOptionEntry entries[] = {
      {"format", 'f', 0, G_OPTION_ARG_STRING, &format_name, "Format of IMAGE (qcow2)", "FORMAT"},
      {"block", 'b', 0, G_OPTION_ARG_INT, &block, "Read size (1 MiB)", "BYTES"},
      {"map", 0, 0, G_OPTION_ARG_NONE, &map, "Print the merged map", NULL},
      {"allocated", 0, 0, G_OPTION_ARG_NONE, &allocated, "Print allocated bytes", NULL},
      {"read", 0, 0, G_OPTION_ARG_STRING, &read_spec, "Read one range", "OFFSET:LENGTH"},
      {"random", 0, 0, G_OPTION_ARG_INT, &random_reads, "Time N random 4 KiB reads", "N"},
      {NULL},
  };
  g_autoptr(GOptionContext) context = g_option_context_new("IMAGE");
  g_option_context_add_main_entries(context, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse(context, &argc, &argv, &error) || argc != 2 || block <= 0) {
    g_printerr("chain-cat: %s\n", error ? error->message : "one IMAGE expected (see --help)");
    return 2;
  }
  ChainFormat format = format_name ? chain_format_from_name(format_name) : CHAIN_FORMAT_QCOW2;

  g_autoptr(Chain) chain = chain_open(argv[1], format, NULL, NULL, &error);
  if (chain == NULL) {
    g_printerr("chain-cat: %s\n", error->message);
    return 1;
  }
  guint64 size = chain_virtual_size(chain);

  if (allocated) {
    gint64 n = chain_allocated_bytes(chain);
    if (n < 0) {
      g_printerr("chain-cat: %s\n", g_strerror((int)-n));
      return 1;
    }
    g_print("%" G_GINT64_FORMAT "\n", n);
    return 0;
  }

  if (random_reads > 0) {
    /* The first pass meets cold maps; then the best of three warm passes,
     * and the best of five passes of lookups alone (no pread), which is
     * what depth could cost.  Best-of damps a busy machine's noise. */
    guint8 page[4096];
    double best_warm = G_MAXDOUBLE, best_map = G_MAXDOUBLE;
    for (int pass = 0; pass < 9; pass++) {
      GRand *rand = g_rand_new_with_seed(42);
      gint64 start = g_get_monotonic_time();
      for (int i = 0; i < random_reads; i++) {
        guint64 off = (guint64)g_rand_double_range(rand, 0, (double)(size / 4096)) * 4096;
        ChainExtent e;
        int r = pass < 4 ? (int)chain_read(chain, page, sizeof(page), off)
                         : chain_map(chain, off, sizeof(page), &e);
        if (r < 0) {
          g_printerr("chain-cat: %s\n", g_strerror(-r));
          return 1;
        }
      }
      double ns = (g_get_monotonic_time() - start) * 1000.0 / random_reads;
      g_rand_free(rand);
      if (pass == 0)
        g_print("cold %.0f ns/read\n", ns);
      else if (pass < 4)
        best_warm = MIN(best_warm, ns);
      else
        best_map = MIN(best_map, ns);
    }
    g_print("warm %.0f ns/read\nmap %.0f ns/lookup\n", best_warm, best_map);
    return 0;
  }

  if (map) {
    for (guint64 pos = 0; pos < size;) {
      ChainExtent e;
      int r = chain_map(chain, pos, size - pos, &e);
      if (r < 0) {
        g_printerr("chain-cat: map at 0x%" G_GINT64_MODIFIER "x: %s\n", pos, g_strerror(-r));
        return 1;
      }
      static const char *const kinds[] = {"data", "zero", "compressed"};
      g_print("%" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT " %s layer=%u allocated=%d", e.offset,
              e.length, kinds[e.kind], e.layer, e.allocated);
      if (e.kind == CHAIN_EXTENT_DATA)
        g_print(" host=%" G_GUINT64_FORMAT, e.host_offset);
      g_print("\n");
      pos += e.length;
    }
    return 0;
  }

  guint64 start = 0, end = size;
  if (read_spec != NULL) {
    guint64 off, len;
    if (sscanf(read_spec, "%" G_GUINT64_FORMAT ":%" G_GUINT64_FORMAT, &off, &len) != 2) {
      g_printerr("chain-cat: --read wants OFFSET:LENGTH\n");
      return 2;
    }
    start = MIN(off, size);
    end = MIN(off + len, size);
  }

  struct stat st;
  gboolean seekable = read_spec == NULL && fstat(STDOUT_FILENO, &st) == 0 && S_ISREG(st.st_mode);
  g_autofree guint8 *buf = g_malloc((gsize)block);
  guint64 data_end = seekable ? start : end; /* end of the current data extent */
  for (guint64 pos = start; pos < end;) {
    if (seekable && pos >= data_end) {
      /* Like cp: find the next data extent, then read it whole. */
      gint64 data = chain_seek(chain, pos, SEEK_DATA);
      if (data == -ENXIO)
        break;
      gint64 hole = data < 0 ? data : chain_seek(chain, (guint64)data, SEEK_HOLE);
      if (hole < 0) {
        g_printerr("chain-cat: seek: %s\n", g_strerror((int)-hole));
        return 1;
      }
      pos = (guint64)data;
      data_end = MIN((guint64)hole, end);
    }
    gsize want = (gsize)MIN((guint64)block, data_end - pos);
    gssize n = chain_read(chain, buf, want, pos);
    if (n <= 0) {
      g_printerr("chain-cat: read at 0x%" G_GINT64_MODIFIER "x: %s\n", pos,
                 n < 0 ? g_strerror((int)-n) : "unexpected end");
      return 1;
    }
    if (!write_all(STDOUT_FILENO, buf, (gsize)n, pos - start, seekable)) {
      g_printerr("chain-cat: write: %s\n", g_strerror(errno));
      return 1;
    }
    pos += (guint64)n;
  }
  if (seekable && ftruncate(STDOUT_FILENO, (off_t)(end - start)) < 0) {
    g_printerr("chain-cat: truncate: %s\n", g_strerror(errno));
    return 1;
  }
  return 0;
}
