/* seek.c: SEEK_DATA / SEEK_HOLE and the allocated byte count of a chain.
 *
 * Both walk the merged map (region.c) with a ChainRunIter.  "Data" is
 * what `qemu-img map` calls data: uncompressed and compressed clusters of
 * any layer, and the data extents of a raw base; zero clusters, holes, and
 * the range past a shorter backing file are holes.  Thread-safe like the
 * map.
 */
#include <errno.h>
#include <unistd.h>

#include "chain-private.h"

gint64
chain_seek(Chain *chain, guint64 offset, int whence)
{
  if (whence != SEEK_DATA && whence != SEEK_HOLE)
    return -EINVAL;
  if (offset >= chain->virtual_size)
    return -ENXIO;
  gboolean want = whence == SEEK_DATA;

  g_auto(ChainRunIter) it = chain_run_iter(chain, offset, chain->virtual_size, TRUE, TRUE);
  const ChainRun *run;
  guint64 pos = offset; /* a run may start before it */
  int r;
  while ((r = chain_run_iter_next(&it, &run)) > 0) {
    if (run->kind == CHAIN_RUN_ERROR)
      return -EIO;
    if ((gboolean)run->allocated == want)
      return (gint64)MAX(pos, run->offset);
    pos = run->offset + run->length;
  }
  if (r < 0)
    return r;
  return want ? -ENXIO : (gint64)chain->virtual_size;
}

gint64
chain_allocated_bytes(Chain *chain)
{
  gint64 known = __atomic_load_n(&chain->allocated, __ATOMIC_ACQUIRE);
  if (known >= 0)
    return known;

  /* Not cached: a whole-disk scan must not evict what readers use. */
  g_auto(ChainRunIter) it = chain_run_iter(chain, 0, chain->virtual_size, FALSE, TRUE);
  const ChainRun *run;
  guint64 pos = 0, total = 0;
  int r;
  while ((r = chain_run_iter_next(&it, &run)) > 0) {
    if (run->kind == CHAIN_RUN_ERROR)
      return -EIO;
    if (run->allocated)
      total += run->offset + run->length - MAX(pos, run->offset);
    pos = run->offset + run->length;
  }
  if (r < 0)
    return r;
  __atomic_store_n(&chain->allocated, (gint64)total, __ATOMIC_RELEASE);
  return (gint64)total;
}

/* Whether [start, start + granule) of the guest holds no data (clamped to
 * the virtual size); or -errno. */
static int
granule_is_hole(Chain *chain, guint64 start, guint64 granule)
{
  gint64 data = chain_seek(chain, start, SEEK_DATA);
  if (data == -ENXIO)
    return 1;
  if (data < 0)
    return (int)data;
  return (guint64)data >= start + granule;
}

gint64
chain_seek_granular(Chain *chain, guint64 offset, int whence, guint64 granule)
{
  if (granule <= 1)
    return chain_seek(chain, offset, whence);
  if (whence != SEEK_DATA && whence != SEEK_HOLE)
    return -EINVAL;
  if (offset >= chain->virtual_size)
    return -ENXIO;

  guint64 here = offset - offset % granule;
  int hole = granule_is_hole(chain, here, granule);
  if (hole < 0)
    return hole;
  if (whence == SEEK_DATA) {
    if (!hole)
      return (gint64)offset;
    /* The granule of the next data byte: it has data, so it is data. */
    gint64 data = chain_seek(chain, here + granule, SEEK_DATA);
    return data < 0 ? data : data - data % (gint64)granule;
  }
  if (hole)
    return (gint64)offset;
  /* The first granule after this one that holds no data: it starts in or
   * right after some hole, at that hole's first granule boundary. */
  for (guint64 pos = here + granule; pos < chain->virtual_size;) {
    gint64 start = chain_seek(chain, pos, SEEK_HOLE);
    if (start < 0)
      return start;
    if ((guint64)start >= chain->virtual_size)
      break;
    guint64 candidate = (guint64)start + (granule - (guint64)start % granule) % granule;
    if (candidate >= chain->virtual_size)
      break;
    hole = granule_is_hole(chain, candidate, granule);
    if (hole < 0)
      return hole;
    if (hole)
      return (gint64)candidate;
    pos = candidate + granule;
  }
  return (gint64)chain->virtual_size;
}
