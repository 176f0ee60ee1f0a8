/* chain.h: the public interface of the chain reader.
 *
 * chain/ opens disk images (qcow2 v2/v3 and raw), validates them as untrusted
 * input, follows their backing names under a strict policy (chain.c) and
 * answers "what does the guest see at this offset" for a whole chain.
 * chain_walk() is the one place in the daemon that follows a backing name.
 * It knows nothing of FUSE or libvirt.
 *
 * Thread model: after chain_open() returns, a Chain is immutable except for
 * its caches, which have their own locks; every function taking a Chain or a
 * ChainLayer may be called from many threads at once.  Objects are
 * reference-counted; functions that return a new reference say so.
 *
 * Errors: control paths (open, policy, allocation maps) return NULL/FALSE and
 * fill a GError in CHAIN_ERROR whose code is an errno value, so callers map it
 * onto a reply without a table.  Data paths (map, read, seek) return -errno.
 * The codes chain_open() and chain_layer_open() use:
 *   EIO         malformed image (the message names the file, field, value)
 *   EOPNOTSUPP  a valid image using what the reader refuses: encryption,
 *               external data files, unknown incompatible features or
 *               compression types
 *   EACCES      refused by policy: a layer outside the image directories,
 *               a block device the policy does not name, not a regular
 *               file or block device, a json:/protocol backing name, a
 *               backing file of unknown format
 *   ELOOP       a backing loop, or a chain deeper than the policy allows
 *   EINVAL      the caller passed no format for the top layer
 *   others      from open(2)/realpath(3), e.g. ENOENT for a missing layer
 * Data paths return -EIO for corrupt tables or compressed data: the clusters
 * concerned fail, the rest of the disk still reads; each layer logs its
 * first such error once (g_warning, domain "virtsnapfs-chain").
 *
 * Resources: one descriptor per layer.  Opening reads one 4 KiB header per
 * layer; a layer's L1 table (at most 32 MiB, and never more than its file
 * holds) is loaded on first use; L2 tables go through one process-wide
 * cache of 32 MiB; each Chain caches merged maps of its disk (about 2 MiB
 * at most, and 4 KiB per shard once all chains hold 4 MiB); each thread that reads compressed clusters keeps up to three
 * clusters of scratch (6 MiB with 2 MiB clusters).
 */
#pragma once

#include <glib.h>
#include <stdint.h>
#include <sys/types.h>

G_BEGIN_DECLS

#define CHAIN_ERROR (chain_error_quark())
GQuark chain_error_quark(void);

/* Deepest chain the reader follows; deeper is an error, like a loop. */
#define CHAIN_MAX_DEPTH 200

typedef enum {
  CHAIN_FORMAT_UNKNOWN = 0, /* no format known: a backing file like this is not followed */
  CHAIN_FORMAT_RAW,
  CHAIN_FORMAT_QCOW2,
} ChainFormat;

const char *chain_format_name(ChainFormat format);
/* "raw" / "qcow2" -> format; anything else -> CHAIN_FORMAT_UNKNOWN. */
ChainFormat chain_format_from_name(const char *name);

/* Where layers may live and how deep a chain may go.  Borrowed by
 * chain_open(), chain_walk() and the others for the duration of the call
 * only. */
typedef struct {
  /* NULL-terminated list of absolute directories; every layer that is a
   * regular file must have its canonical path under one of them.  NULL
   * means "no restriction" (devices included) and is for tools and tests
   * only. */
  const char *const *image_dirs;
  /* NULL-terminated list of block device nodes (may be NULL: none); a layer
   * that is a block device must be one of them (the same device number),
   * whatever directory it is in: an image directory does not allow the
   * device nodes under it.  Ignored when image_dirs is NULL. */
  const char *const *devices;
  /* 0 means CHAIN_MAX_DEPTH; larger values are clamped to it. */
  guint max_depth;
} ChainPolicy;

/* ------------------------------------------------------------------ */
/* One image file, without its backing chain.                          */

typedef struct _ChainLayer ChainLayer;

/* Opens and validates one image (read-only).  Does not follow the backing
 * name.  Returns a new reference. */
ChainLayer *chain_layer_open(const char *path, ChainFormat format, GError **error);
ChainLayer *chain_layer_ref(ChainLayer *layer);
void chain_layer_unref(ChainLayer *layer);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ChainLayer, chain_layer_unref)

/* Canonical absolute path the layer was opened at (borrowed). */
const char *chain_layer_path(const ChainLayer *layer);
ChainFormat chain_layer_format(const ChainLayer *layer);
guint64 chain_layer_virtual_size(const ChainLayer *layer);
/* Guest bytes per cluster; 512 for raw (whose virtual size is the file
 * size rounded up to 512, as QEMU sees it). */
guint64 chain_layer_cluster_size(const ChainLayer *layer);
/* The backing name exactly as stored in the header, or NULL (borrowed). */
const char *chain_layer_backing_name(const ChainLayer *layer);
/* From the backing-format header extension; UNKNOWN when absent. */
ChainFormat chain_layer_backing_format(const ChainLayer *layer);
/* Identity of the open file, for loop detection and sharing. */
dev_t chain_layer_dev(const ChainLayer *layer);
ino_t chain_layer_ino(const ChainLayer *layer);
/* The open read-only descriptor; valid while the layer is referenced. */
int chain_layer_fd(const ChainLayer *layer);

/* ------------------------------------------------------------------ */
/* Allocation bitmaps, for the planner and for delta files.            */

/* A set of guest ranges at a fixed granularity: bit i covers guest bytes
 * [i * granularity, (i + 1) * granularity). */
typedef struct {
  guint64 granularity;
  guint64 nbits;
  guint64 *words; /* (nbits + 63) / 64 words */
} ChainBitmap;

ChainBitmap *chain_bitmap_new(guint64 granularity, guint64 virtual_size);
void chain_bitmap_free(ChainBitmap *bitmap);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ChainBitmap, chain_bitmap_free)
void chain_bitmap_set_range(ChainBitmap *bitmap, guint64 offset, guint64 length);
gboolean chain_bitmap_get(const ChainBitmap *bitmap, guint64 bit);
guint64 chain_bitmap_count(const ChainBitmap *bitmap);
/* Guest bytes the set bits cover, the last granule ending at virtual_size. */
guint64 chain_bitmap_bytes(const ChainBitmap *bitmap, guint64 virtual_size);
/* Bits set in a and not in b; both must have the same granularity. */
guint64 chain_bitmap_count_and_not(const ChainBitmap *a, const ChainBitmap *b);
/* dst |= src, with the same granularity; bits of src past the end of dst
 * are dropped. */
void chain_bitmap_or(ChainBitmap *dst, const ChainBitmap *src);
/* The first bit at or after from that is set (set TRUE) or clear (set
 * FALSE); nbits when there is none. */
guint64 chain_bitmap_next(const ChainBitmap *bitmap, guint64 from, gboolean set);

/* Which guest ranges this layer overrides (data, zero or compressed
 * clusters: anything that hides the backing file; for raw, the whole
 * disk).  granularity must be a power of two; a cluster marks every granule
 * it touches.  Returns a new bitmap, or NULL with EIO for corrupt tables. */
ChainBitmap *chain_layer_allocation(ChainLayer *layer, guint64 granularity, GError **error);

/* ------------------------------------------------------------------ */
/* Following backing names.                                            */

/* A chain named by its top image, as chain_open() takes it: the top's
 * format, and optionally the formats libvirt knows for the layers below
 * (entry i for layer i + 1, CHAIN_FORMAT_UNKNOWN-terminated). */
typedef struct {
  const char *path;
  ChainFormat format;
  const ChainFormat *backing_formats;
} ChainImage;

/* What chain_walk() found. */
typedef struct {
  GPtrArray *layers;       /* of ChainLayer (owned), top first: layer i + 1
                            * is the backing file of layer i */
  char *rest;              /* a walk its limit stopped: the backing file the
                            * last layer names, resolved against the
                            * directory that layer was reached in (absolute,
                            * not canonical), neither opened nor checked;
                            * NULL when the chain ends at the last layer */
  ChainFormat rest_format; /* the format rest would be read as */
} ChainWalk;

/* Frees what a ChainWalk holds and zeroes it. */
void chain_walk_clear(ChainWalk *walk);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(ChainWalk, chain_walk_clear)

/* Follows the backing chain of image under policy, as chain_open() and
 * chain_summarize() do (all three are this one walk): names resolve, are
 * checked and are refused exactly as chain.c describes.  Each layer is
 * opened read-only and its header validated; no table is read.  limit 0
 * walks to the bottom; limit n > 0 stops after n layers (rest then says
 * what lies below, unchecked; the depth limit of the policy still holds).
 * walk must be zeroed; on failure it keeps the layers walked before the
 * one that failed (each of them passed the policy) and the error is as
 * chain_open()'s. */
gboolean chain_walk(const ChainImage *image, const ChainPolicy *policy, guint limit,
                    ChainWalk *walk, GError **error);

/* For a file the caller is about to create, rename or delete at path: its
 * directory, resolved, must lie under one of the policy's image
 * directories, and what is at path now, if anything, must be a regular
 * file (not a symlink, a device or a directory).  EACCES otherwise; TRUE
 * without a check when policy->image_dirs is NULL. */
gboolean chain_policy_check_place(const ChainPolicy *policy, const char *path, GError **error);

/* ------------------------------------------------------------------ */
/* A point in time: a top layer and everything under it.               */

typedef struct _Chain Chain;

/* Opens path as the top of a chain and follows backing names under
 * policy.  The top layer's format must be known (it comes from libvirt);
 * each backing file's format comes from its parent's backing-format
 * extension, or from the matching entry of backing_formats when the
 * caller knows it from libvirt (may be NULL; entry i is for layer i + 1,
 * CHAIN_FORMAT_UNKNOWN-terminated).  Returns a new reference. */
Chain *chain_open(const char *path, ChainFormat format, const ChainFormat *backing_formats,
                  const ChainPolicy *policy, GError **error);
Chain *chain_ref(Chain *chain);
void chain_unref(Chain *chain);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Chain, chain_unref)

guint64 chain_virtual_size(const Chain *chain);
/* Number of layers, >= 1. */
guint chain_depth(const Chain *chain);
/* Layer i, 0 = top (borrowed; valid while the chain is referenced). */
ChainLayer *chain_get_layer(const Chain *chain, guint i);

typedef enum {
  CHAIN_EXTENT_DATA,       /* bytes stored at (fd, host_offset), uncompressed */
  CHAIN_EXTENT_ZERO,       /* reads as zeros: zero cluster, hole, or past the
                            * end of a backing file shorter than the disk */
  CHAIN_EXTENT_COMPRESSED, /* stored compressed: read it with chain_read() */
} ChainExtentKind;

typedef struct {
  ChainExtentKind kind;
  guint64 offset;      /* guest offset of the run */
  guint64 length;      /* > 0 */
  guint layer;         /* index of the layer that answers; chain_depth()
                        * when nothing in the chain has the range */
  gboolean allocated;  /* TRUE for data and compressed runs: what
                        * SEEK_DATA and `qemu-img map` call data */
  int fd;              /* DATA only: the layer's descriptor */
  guint64 host_offset; /* DATA only */
} ChainExtent;

/* Describes the longest run of one kind, layer and (for data) contiguous
 * host range that starts at offset and ends at or before offset + length.
 * offset must be below the virtual size (else -EINVAL); length is clamped
 * to it.  A data extent may extend past the end of its file; those bytes
 * read as zeros.  Returns 0 or -errno (-EIO for a corrupt image, logged
 * once). */
int chain_map(Chain *chain, guint64 offset, guint64 length, ChainExtent *extent);

/* Reads guest bytes [offset, offset + length) into buf, clamped to the
 * virtual size.  Returns the number of bytes read (0 at or past the end)
 * or -errno. */
gssize chain_read(Chain *chain, void *buf, gsize length, guint64 offset);

/* lseek(2) SEEK_DATA / SEEK_HOLE over the merged allocation of the chain,
 * as `qemu-img map` reports it.  Returns the offset, or -ENXIO at or past
 * the end (and for SEEK_DATA when no data follows), or another -errno. */
gint64 chain_seek(Chain *chain, guint64 offset, int whence);

/* chain_seek() at a coarser grain: the disk is cut into aligned granules
 * of granule bytes (the last one may be shorter), and a granule is a hole
 * only when all of it is, else all of it is data.  Fewer, longer extents
 * for callers that pay per extent; granule 0 or 1 is chain_seek(). */
gint64 chain_seek_granular(Chain *chain, guint64 offset, int whence, guint64 granule);

/* Bytes of the guest disk that read from allocated data (what st_blocks
 * reports).  Computed once and cached.  Returns -errno on error. */
gint64 chain_allocated_bytes(Chain *chain);

/* ------------------------------------------------------------------ */
/* Deltas between two points in time: the .delta files.                */

/* A ChainDelta says which guest ranges of a point in time differ from its
 * parent point in time, as a set of granules of one size: granularity is
 * 4 KiB (the block size of the filesystems a delta is copied to, so that
 * `cp --sparse` keeps every hole), doubled for disks over 256 GiB so the
 * set never takes more than 8 MiB.  A granule is data when any of its
 * bytes differs; the last granule ends at the virtual size.  Ranges past
 * the end of a shorter parent compare with zeros (apply a delta by first
 * truncating the parent's image to the delta's size).  With no parent
 * (the first point in time) the data is the point's allocated data, as
 * SEEK_DATA reports it, widened to granules.
 *
 * Immutable once made; any thread. */
typedef struct _ChainDelta ChainDelta;

/* The granularity of deltas of a disk of this virtual size. */
guint64 chain_delta_granularity(guint64 virtual_size);

/* The exact delta of point against parent (NULL: no parent).  Candidates
 * come from allocation: the layers of either chain above their longest
 * common base (layers compared by device, inode and format), plus ranges
 * a shorter layer or parent cuts off; every candidate granule is then
 * read from both points and kept only if its bytes differ.  Costs reading
 * the candidates twice; reads go through the chains' region caches.
 * Returns a new reference, or NULL with the chain's errno (EIO for a
 * corrupt image) in error. */
ChainDelta *chain_delta_compute(Chain *point, Chain *parent, GError **error);
/* The candidates alone, without reading data: a superset of the exact
 * delta (and itself a correct delta: its extra granules read as bytes
 * the parent already has).  Costs what counting allocation costs. */
ChainDelta *chain_delta_candidates(Chain *point, Chain *parent, GError **error);
ChainDelta *chain_delta_ref(ChainDelta *delta);
void chain_delta_unref(ChainDelta *delta);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(ChainDelta, chain_delta_unref)

guint64 chain_delta_virtual_size(const ChainDelta *delta);
guint64 chain_delta_get_granularity(const ChainDelta *delta);
/* Bytes of data (the sum of the data extents' lengths). */
guint64 chain_delta_bytes(const ChainDelta *delta);
/* Whether offset (below the virtual size) lies in data; *end gets the end
 * of the run of data or hole that holds it. */
gboolean chain_delta_run(const ChainDelta *delta, guint64 offset, guint64 *end);
/* lseek(2) SEEK_DATA / SEEK_HOLE over the delta's extents: the offset,
 * or -ENXIO at or past the end (and for SEEK_DATA with no data after
 * offset), or -EINVAL for another whence. */
gint64 chain_delta_seek(const ChainDelta *delta, guint64 offset, int whence);

/* ------------------------------------------------------------------ */
/* What a file listing needs, without opening the chain.               */

typedef struct {
  guint64 virtual_size;
  guint64 allocated; /* as chain_allocated_bytes() */
  guint depth;
  ChainFormat format; /* of the top layer */
  char **layer_paths; /* canonical path of every layer, top first */
} ChainSummary;

/* Frees what a ChainSummary owns (its layer_paths). */
void chain_summary_clear(ChainSummary *summary);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(ChainSummary, chain_summary_clear)

/* Answers what chain_open() + chain_allocated_bytes() would, with the same
 * policy and errors, from a process-wide cache of per-image summaries
 * (header and allocation runs, at most about 6 MiB), each checked against
 * its file's device, inode, size, mtime and ctime: a known chain costs one
 * realpath and one stat per layer, an image that changed is mapped again.
 * Any thread. */
gboolean chain_summarize(const char *path, ChainFormat format, const ChainFormat *backing_formats,
                         const ChainPolicy *policy, ChainSummary *summary, GError **error);

/* chain_delta_bytes() of chain_delta_candidates() of point against
 * parent, from the same cache as chain_summarize() and without opening
 * either chain: what the layers above their common base override, in
 * either chain, in granules.  An upper bound of the exact delta.  FALSE
 * with error as chain_summarize() (EIO when one of those layers has
 * corrupt tables). */
gboolean chain_summarize_delta(const ChainImage *point, const ChainImage *parent,
                               const ChainPolicy *policy, guint64 *bytes, GError **error);

G_END_DECLS
