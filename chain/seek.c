/* seek.c: SEEK_DATA / SEEK_HOLE and the allocated byte count of a chain.
 *
 * Both read the merged map (map.c).  "Data" is what `qemu-img map` calls
 * data: uncompressed and compressed clusters of any layer, and the data
 * extents of a raw base; zero clusters, holes, and the range past a shorter
 * backing file are holes.  Thread-safe like the map.
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

  for (guint64 pos = offset; pos < chain->virtual_size;) {
    guint64 skip = chain_unallocated_until(chain, pos);
    if (skip > pos) {
      if (!want)
        return (gint64)pos;
      pos = skip;
      continue;
    }
    g_autoptr(ChainRegion) region = NULL;
    int r = chain_region_get(chain, pos >> CHAIN_REGION_BITS, TRUE, &region);
    if (r < 0)
      return r;
    for (guint i = chain_region_find(region, pos); i < region->n_runs; i++) {
      const ChainRun *run = &region->runs[i];
      if (run->kind == CHAIN_RUN_ERROR)
        return -EIO;
      if ((gboolean)run->allocated == want)
        return (gint64)MAX(pos, run->offset);
    }
    pos = (region->index + 1) << CHAIN_REGION_BITS;
  }
  return want ? -ENXIO : (gint64)chain->virtual_size;
}

gint64
chain_allocated_bytes(Chain *chain)
{
  gint64 known = __atomic_load_n(&chain->allocated, __ATOMIC_ACQUIRE);
  if (known >= 0)
    return known;

  guint64 total = 0;
  for (guint64 pos = 0; pos < chain->virtual_size;) {
    guint64 skip = chain_unallocated_until(chain, pos);
    if (skip > pos) {
      pos = skip;
      continue;
    }
    g_autoptr(ChainRegion) region = NULL;
    int r = chain_region_get(chain, pos >> CHAIN_REGION_BITS, FALSE, &region);
    if (r < 0)
      return r;
    for (guint i = chain_region_find(region, pos); i < region->n_runs; i++) {
      const ChainRun *run = &region->runs[i];
      if (run->kind == CHAIN_RUN_ERROR)
        return -EIO;
      if (run->allocated)
        total += run->offset + run->length - MAX(pos, run->offset);
    }
    pos = (region->index + 1) << CHAIN_REGION_BITS;
  }
  __atomic_store_n(&chain->allocated, (gint64)total, __ATOMIC_RELEASE);
  return (gint64)total;
}
