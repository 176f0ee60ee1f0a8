/* layer.c: open and validate one image file, qcow2 (v2, v3) or raw.
 *
 * An image is untrusted input: every header field, extension and table
 * offset is checked before use, with overflow-checked arithmetic, and each
 * refusal names the file and the value in hex.  Opening reads the header
 * cluster only; the L1 table is loaded on first use (chain_layer_load_l1),
 * so that opening a 200-layer chain stays cheap.
 *
 * Thread model: a ChainLayer is immutable after chain_layer_open() except
 * for its L1 pointer, which is set once under l1_lock and read with an
 * atomic load, and its "logged" flag (error.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain-private.h"
#include "qcow2-format.h"

static guint64 next_layer_id = 1;

/* Fills *error with "PATH: message" and returns FALSE. */
static gboolean G_GNUC_PRINTF(4, 5)
fail(GError **error, int code, const char *path, const char *format, ...)
{
  va_list args;
  va_start(args, format);
  g_autofree char *message = g_strdup_vprintf(format, args);
  va_end(args);
  g_set_error(error, CHAIN_ERROR, code, "%s: %s", path, message);
  return FALSE;
}

static guint32
be32_at(const guint8 *p)
{
  guint32 v;
  memcpy(&v, p, sizeof(v));
  return GUINT32_FROM_BE(v);
}

static guint64
be64_at(const guint8 *p)
{
  guint64 v;
  memcpy(&v, p, sizeof(v));
  return GUINT64_FROM_BE(v);
}

/* A table of `bytes` bytes at `offset` must be cluster-aligned, lie past
 * the header cluster and end inside the file. */
static gboolean
check_table(ChainLayer *layer, const char *what, guint64 offset, guint64 bytes, GError **error)
{
  guint64 end;
  if (offset & (layer->cluster_size - 1))
    return fail(error, EIO, layer->path, "%s offset 0x%" G_GINT64_MODIFIER "x is not cluster-aligned",
                what, offset);
  if (offset < layer->cluster_size)
    return fail(error, EIO, layer->path, "%s offset 0x%" G_GINT64_MODIFIER "x overlaps the header",
                what, offset);
  if (!g_uint64_checked_add(&end, offset, bytes) || end > layer->file_size)
    return fail(error, EIO, layer->path,
                "%s at 0x%" G_GINT64_MODIFIER "x (0x%" G_GINT64_MODIFIER
                "x bytes) extends past the end of the file (0x%" G_GINT64_MODIFIER "x)",
                what, offset, bytes, layer->file_size);
  return TRUE;
}

/* Names an incompatible feature bit from the image's feature name table,
 * if it has one ("Feature name table"). */
static char *
feature_name(const guint8 *table, guint32 length, guint bit)
{
  for (guint32 i = 0; i + QCOW2_FEATURE_NAME_ENTRY <= length; i += QCOW2_FEATURE_NAME_ENTRY) {
    if (table[i] == QCOW2_FEATURE_TYPE_INCOMPAT && table[i + 1] == bit) {
      g_autofree char *name = g_strndup((const char *)table + i + 2, QCOW2_FEATURE_NAME_LEN);
      return g_strescape(name, NULL);
    }
  }
  return g_strdup("no name in the image");
}

typedef struct {
  const guint8 *feature_table;
  guint32 feature_table_length;
} Extensions;

/* EXT_ERROR is 0, so "return fail(...)" (FALSE) reports an error. */
typedef enum { EXT_ERROR = 0, EXT_OK, EXT_NEED_MORE } ExtResult;

/* "Header extensions": between the header and the backing file name (or
 * the end of the first cluster), each extension at most once.  Only the
 * first `have` bytes of the cluster are in the buffer: EXT_NEED_MORE asks
 * for the whole cluster (most images need less than 4 KiB of it). */
static ExtResult
parse_extensions(ChainLayer *layer, const guint8 *cluster, guint32 have, guint32 start,
                 guint32 end, guint64 autoclear, Extensions *ext, GError **error)
{
  guint32 seen_backing = 0, seen_features = 0, seen_bitmaps = 0;
  guint32 pos = start;

  while (end - pos >= sizeof(Qcow2ExtensionHeader)) {
    if (pos > have || have - pos < sizeof(Qcow2ExtensionHeader))
      return EXT_NEED_MORE;
    guint32 type = be32_at(cluster + pos);
    guint32 length = be32_at(cluster + pos + 4);
    guint32 at = pos;
    pos += sizeof(Qcow2ExtensionHeader);
    if (type == QCOW2_EXT_END)
      break;
    if (length > end - pos)
      return fail(error, EIO, layer->path,
                  "header extension 0x%08x at 0x%x has length 0x%x, past the end of the "
                  "extension area (0x%x)",
                  type, at, length, end);
    if (length > have - pos)
      return EXT_NEED_MORE;
    const guint8 *data = cluster + pos;

    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT: {
      if (seen_backing++)
        return fail(error, EIO, layer->path, "duplicate backing format extension at 0x%x", at);
      if (length == 0 || length > 16)
        return fail(error, EIO, layer->path, "backing format name length 0x%x is invalid", length);
      if (memchr(data, 0, length) != NULL)
        return fail(error, EIO, layer->path, "backing format name contains a NUL byte");
      g_autofree char *name = g_strndup((const char *)data, length);
      /* Formats other than raw and qcow2 stay UNKNOWN: not followed. */
      layer->backing_format = chain_format_from_name(name);
      break;
    }
    case QCOW2_EXT_FEATURE_NAMES:
      if (seen_features++)
        return fail(error, EIO, layer->path, "duplicate feature name table at 0x%x", at);
      ext->feature_table = data;
      ext->feature_table_length = length;
      break;
    case QCOW2_EXT_BITMAPS: {
      if (seen_bitmaps++)
        return fail(error, EIO, layer->path, "duplicate bitmaps extension at 0x%x", at);
      if (length != QCOW2_BITMAPS_EXT_LEN)
        return fail(error, EIO, layer->path, "bitmaps extension length 0x%x is not 0x%x", length,
                    QCOW2_BITMAPS_EXT_LEN);
      /* Without autoclear bit 0 the extension is stale and ignored. */
      if (!(autoclear & 1))
        break;
      guint32 nb = be32_at(data), reserved = be32_at(data + 4);
      guint64 dir_size = be64_at(data + 8), dir_offset = be64_at(data + 16);
      if (nb == 0 || nb > 65535)
        return fail(error, EIO, layer->path, "bitmaps extension: bitmap count 0x%x is invalid", nb);
      if (reserved != 0)
        return fail(error, EIO, layer->path, "bitmaps extension: reserved field is 0x%x", reserved);
      if (!check_table(layer, "bitmap directory", dir_offset, dir_size, error))
        return FALSE;
      break;
    }
    case QCOW2_EXT_CRYPTO:
      return fail(error, EOPNOTSUPP, layer->path,
                  "full disk encryption header present: encrypted images are not supported");
    case QCOW2_EXT_DATA_FILE:
      return fail(error, EOPNOTSUPP, layer->path, "external data files are not supported");
    default:
      break; /* unknown extensions may be ignored */
    }
    pos += (length + 7) & ~7u; /* length <= end - pos < 2^21: no overflow */
    if (pos > end)
      break;
  }
  return EXT_OK;
}

static gboolean
read_whole_cluster(ChainLayer *layer, guint8 **cluster, guint32 *have, GError **error)
{
  gsize got;
  *cluster = g_realloc(*cluster, layer->cluster_size);
  memset(*cluster, 0, layer->cluster_size);
  int r = chain_pread_full(layer->fd, *cluster, layer->cluster_size, 0, &got);
  if (r < 0)
    return fail(error, -r, layer->path, "reading the header cluster: %s", g_strerror(-r));
  *have = (guint32)layer->cluster_size;
  return TRUE;
}

static gboolean
open_qcow2(ChainLayer *layer, GError **error)
{
  /* One read for the header, its extensions and the backing file name,
   * which nearly always lie in the first 4 KiB; read_whole_cluster() gets
   * the rest of the header cluster when an image needs it. */
  guint32 have = 4096;
  g_autofree guint8 *cluster = g_malloc0(have);
  gsize got;
  int r = chain_pread_full(layer->fd, cluster, have, 0, &got);
  if (r < 0)
    return fail(error, -r, layer->path, "reading the header: %s", g_strerror(-r));
  if (got < QCOW2_V2_HEADER_LENGTH)
    return fail(error, EIO, layer->path, "file too short for a qcow2 header (0x%zx bytes)", got);

  Qcow2Header h;
  memcpy(&h, cluster, sizeof(h));
  guint32 magic = GUINT32_FROM_BE(h.magic);
  if (magic != QCOW2_MAGIC)
    return fail(error, EIO, layer->path, "bad qcow2 magic 0x%08x", magic);
  layer->version = GUINT32_FROM_BE(h.version);
  if (layer->version != 2 && layer->version != 3)
    return fail(error, EIO, layer->path, "unsupported qcow2 version 0x%x", layer->version);
  guint32 cluster_bits = GUINT32_FROM_BE(h.cluster_bits);
  if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return fail(error, EIO, layer->path, "cluster_bits 0x%x is out of range [9, 21]", cluster_bits);
  layer->cluster_bits = cluster_bits;
  layer->cluster_size = G_GUINT64_CONSTANT(1) << cluster_bits;

  guint32 header_length = QCOW2_V2_HEADER_LENGTH;
  guint64 incompat = 0, autoclear = 0;
  if (layer->version == 3) {
    header_length = GUINT32_FROM_BE(h.header_length);
    if (header_length < QCOW2_V3_HEADER_LENGTH || header_length % 8 != 0 ||
        header_length > layer->cluster_size)
      return fail(error, EIO, layer->path, "header_length 0x%x is invalid", header_length);
    if (got < MIN(header_length, sizeof(Qcow2Header)))
      return fail(error, EIO, layer->path, "file too short for header_length 0x%x", header_length);
    incompat = GUINT64_FROM_BE(h.incompatible_features);
    autoclear = GUINT64_FROM_BE(h.autoclear_features);
    guint32 refcount_order = GUINT32_FROM_BE(h.refcount_order);
    if (refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
      return fail(error, EIO, layer->path, "refcount_order 0x%x exceeds 6", refcount_order);
  }

  /* Bytes past a small header cluster are not part of it. */
  have = (guint32)MIN(layer->cluster_size, have);

  guint64 backing_offset = GUINT64_FROM_BE(h.backing_file_offset);
  guint32 backing_length = GUINT32_FROM_BE(h.backing_file_size);
  guint32 ext_end = (guint32)layer->cluster_size;
  if (backing_offset != 0) {
    if (backing_length > QCOW2_MAX_BACKING_NAME)
      return fail(error, EIO, layer->path, "backing file name length 0x%x exceeds 1023 bytes",
                  backing_length);
    if (backing_offset < header_length || backing_offset > layer->cluster_size ||
        backing_length > layer->cluster_size - backing_offset)
      return fail(error, EIO, layer->path,
                  "backing file name at 0x%" G_GINT64_MODIFIER "x, length 0x%x, lies outside "
                  "the header cluster",
                  backing_offset, backing_length);
    ext_end = (guint32)backing_offset;
    if (backing_offset + backing_length > have && !read_whole_cluster(layer, &cluster, &have, error))
      return FALSE;
    if (backing_length > 0) {
      const guint8 *name = cluster + backing_offset;
      if (memchr(name, 0, backing_length) != NULL)
        return fail(error, EIO, layer->path, "backing file name contains a NUL byte");
      layer->backing_name = g_strndup((const char *)name, backing_length);
    }
  }

  Extensions ext = {0};
  ExtResult parsed = parse_extensions(layer, cluster, have, header_length, ext_end, autoclear, &ext,
                                      error);
  if (parsed == EXT_NEED_MORE) {
    if (!read_whole_cluster(layer, &cluster, &have, error))
      return FALSE;
    ext = (Extensions){0};
    layer->backing_format = CHAIN_FORMAT_UNKNOWN;
    parsed = parse_extensions(layer, cluster, have, header_length, ext_end, autoclear, &ext, error);
  }
  if (parsed != EXT_OK)
    return FALSE;

  guint64 unknown = incompat & ~QCOW2_INCOMPAT_KNOWN;
  if (unknown != 0) {
    guint bit = (guint)__builtin_ctzll(unknown);
    g_autofree char *name = feature_name(ext.feature_table, ext.feature_table_length, bit);
    return fail(error, EOPNOTSUPP, layer->path,
                "unknown incompatible features 0x%" G_GINT64_MODIFIER "x (bit %u: %s)", unknown,
                bit, name);
  }
  if (incompat & QCOW2_INCOMPAT_DATA_FILE)
    return fail(error, EOPNOTSUPP, layer->path, "external data files are not supported");

  guint32 crypt = GUINT32_FROM_BE(h.crypt_method);
  if (crypt != QCOW2_CRYPT_NONE)
    return fail(error, EOPNOTSUPP, layer->path,
                "crypt_method 0x%x: encrypted images are not supported", crypt);

  /* "compression_type": present and non-zero iff incompatible bit 3. */
  guint compression = header_length > QCOW2_V3_HEADER_LENGTH ? h.compression_type : 0;
  if (incompat & QCOW2_INCOMPAT_COMPRESSION) {
    if (compression == QCOW2_COMPRESSION_ZLIB)
      return fail(error, EIO, layer->path,
                  "compression type feature bit set but compression_type is 0x%x", compression);
  } else if (compression != QCOW2_COMPRESSION_ZLIB) {
    return fail(error, EIO, layer->path,
                "compression_type 0x%x without the compression type feature bit", compression);
  }
  if (compression > QCOW2_COMPRESSION_ZSTD)
    return fail(error, EOPNOTSUPP, layer->path, "unknown compression_type 0x%x", compression);
  layer->compression_type = compression;

  layer->extended_l2 = (incompat & QCOW2_INCOMPAT_EXTL2) != 0;
  if (layer->extended_l2 && cluster_bits < QCOW2_MIN_CLUSTER_BITS_EXTL2)
    return fail(error, EIO, layer->path,
                "extended L2 entries need clusters of 16 KiB or more (cluster_bits 0x%x)",
                cluster_bits);
  layer->l2_entry_bytes = layer->extended_l2 ? 16 : 8;
  layer->l2_bits = cluster_bits - (layer->extended_l2 ? 4 : 3);
  layer->slice_bytes = (guint)MIN(layer->cluster_size, 4096);

  /* QEMU counts whole 512-byte sectors of the virtual size. */
  guint64 size = GUINT64_FROM_BE(h.size);
  layer->virtual_size = size & ~G_GUINT64_CONSTANT(511);
  guint coverage_bits = cluster_bits + layer->l2_bits;
  guint64 needed = (layer->virtual_size >> coverage_bits) +
                   ((layer->virtual_size & ((G_GUINT64_CONSTANT(1) << coverage_bits) - 1)) != 0);
  if (needed > QCOW2_MAX_L1_BYTES / 8)
    return fail(error, EIO, layer->path,
                "image too big: virtual size 0x%" G_GINT64_MODIFIER "x needs 0x%" G_GINT64_MODIFIER
                "x L1 entries",
                size, needed);
  guint32 l1_size = GUINT32_FROM_BE(h.l1_size);
  if (l1_size > QCOW2_MAX_L1_BYTES / 8)
    return fail(error, EIO, layer->path, "L1 size 0x%x is too large", l1_size);
  if (l1_size < needed)
    return fail(error, EIO, layer->path,
                "L1 size 0x%x is too small for virtual size 0x%" G_GINT64_MODIFIER "x", l1_size,
                size);
  layer->l1_offset = GUINT64_FROM_BE(h.l1_table_offset);
  layer->l1_entries = (guint32)needed;
  if (needed > 0 && !check_table(layer, "L1 table", layer->l1_offset, needed * 8, error))
    return FALSE;

  guint64 refcount_offset = GUINT64_FROM_BE(h.refcount_table_offset);
  guint32 refcount_clusters = GUINT32_FROM_BE(h.refcount_table_clusters);
  if (refcount_clusters == 0)
    return fail(error, EIO, layer->path, "refcount table has 0 clusters");
  if (!check_table(layer, "refcount table", refcount_offset, layer->cluster_size, error))
    return FALSE;

  guint32 nb_snapshots = GUINT32_FROM_BE(h.nb_snapshots);
  guint64 snapshots_offset = GUINT64_FROM_BE(h.snapshots_offset);
  if (nb_snapshots > 65536)
    return fail(error, EIO, layer->path, "snapshot count 0x%x is too large", nb_snapshots);
  if (nb_snapshots > 0 && !check_table(layer, "snapshot table", snapshots_offset, 40, error))
    return FALSE;

  return TRUE;
}

ChainLayer *
chain_layer_open(const char *path, ChainFormat format, GError **error)
{
  g_return_val_if_fail(path != NULL, NULL);

  if (format != CHAIN_FORMAT_RAW && format != CHAIN_FORMAT_QCOW2) {
    fail(error, EINVAL, path, "format is not known (refusing to probe)");
    return NULL;
  }
  g_autofree char *canonical = realpath(path, NULL);
  if (canonical == NULL) {
    int e = errno;
    fail(error, e, path, "%s", g_strerror(e));
    return NULL;
  }

  g_autoptr(ChainLayer) layer = g_new0(ChainLayer, 1);
  layer->ref_count = 1;
  layer->fd = -1;
  layer->id = __atomic_fetch_add(&next_layer_id, 1, __ATOMIC_RELAXED);
  layer->path = g_steal_pointer(&canonical);
  layer->format = format;
  g_mutex_init(&layer->l1_lock);

  layer->fd = open(layer->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (layer->fd < 0) {
    int e = errno;
    fail(error, e, layer->path, "%s", g_strerror(e));
    return NULL;
  }
  struct stat st;
  if (fstat(layer->fd, &st) < 0) {
    int e = errno;
    fail(error, e, layer->path, "%s", g_strerror(e));
    return NULL;
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    fail(error, EACCES, layer->path, "not a regular file or block device");
    return NULL;
  }
  layer->dev = st.st_dev;
  layer->ino = st.st_ino;
  off_t end = lseek(layer->fd, 0, SEEK_END);
  if (end < 0) {
    int e = errno;
    fail(error, e, layer->path, "%s", g_strerror(e));
    return NULL;
  }
  layer->file_size = (guint64)end;

  if (format == CHAIN_FORMAT_RAW) {
    /* QEMU rounds a raw image up to whole 512-byte sectors; the tail past
     * the end of the file reads as zeros. */
    layer->cluster_bits = 9;
    layer->cluster_size = 512;
    layer->virtual_size = (layer->file_size + 511) & ~G_GUINT64_CONSTANT(511);
  } else if (!open_qcow2(layer, error)) {
    return NULL;
  }
  return g_steal_pointer(&layer);
}

ChainLayer *
chain_layer_ref(ChainLayer *layer)
{
  g_return_val_if_fail(layer != NULL, NULL);
  g_atomic_int_inc(&layer->ref_count);
  return layer;
}

void
chain_layer_unref(ChainLayer *layer)
{
  if (layer == NULL || !g_atomic_int_dec_and_test(&layer->ref_count))
    return;
  l2_cache_drop_layer(layer->id);
  if (layer->fd >= 0)
    close(layer->fd);
  g_mutex_clear(&layer->l1_lock);
  g_free(layer->l1);
  g_free(layer->backing_name);
  g_free(layer->path);
  g_free(layer);
}

/* Loads the L1 table on first use, byte-swapped once.  Returns 0 or
 * -errno; a short table is -EIO (logged once). */
int
chain_layer_load_l1(ChainLayer *layer)
{
  if (g_atomic_pointer_get(&layer->l1) != NULL)
    return 0;

  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&layer->l1_lock);
  if (layer->l1 != NULL)
    return 0;

  gsize bytes = (gsize)layer->l1_entries * 8, got;
  g_autofree guint64 *table = g_new(guint64, MAX(layer->l1_entries, 1));
  int r = chain_pread_full(layer->fd, table, bytes, layer->l1_offset, &got);
  if (r < 0) {
    chain_layer_report(layer, "reading the L1 table at 0x%" G_GINT64_MODIFIER "x: %s",
                       layer->l1_offset, g_strerror(-r));
    return r;
  }
  if (got < bytes) {
    chain_layer_report(layer, "L1 table at 0x%" G_GINT64_MODIFIER "x is truncated",
                       layer->l1_offset);
    return -EIO;
  }
  for (guint32 i = 0; i < layer->l1_entries; i++)
    table[i] = GUINT64_FROM_BE(table[i]);
  g_atomic_pointer_set(&layer->l1, g_steal_pointer(&table));
  return 0;
}

const char *
chain_layer_path(const ChainLayer *layer)
{
  return layer->path;
}

ChainFormat
chain_layer_format(const ChainLayer *layer)
{
  return layer->format;
}

guint64
chain_layer_virtual_size(const ChainLayer *layer)
{
  return layer->virtual_size;
}

guint64
chain_layer_cluster_size(const ChainLayer *layer)
{
  return layer->cluster_size;
}

const char *
chain_layer_backing_name(const ChainLayer *layer)
{
  return layer->backing_name;
}

ChainFormat
chain_layer_backing_format(const ChainLayer *layer)
{
  return layer->backing_format;
}

dev_t
chain_layer_dev(const ChainLayer *layer)
{
  return layer->dev;
}

ino_t
chain_layer_ino(const ChainLayer *layer)
{
  return layer->ino;
}

int
chain_layer_fd(const ChainLayer *layer)
{
  return layer->fd;
}
