/* pins.c: the layers open readers pin.
 *
 * The front pins the chain of every open point in time (snapshot files
 * and @now alike) at open and unpins it at release.  The planner wants the
 * image each reader reads from (the point image of an open snapshot file,
 * the frozen image under @now) and follows the chain below it itself: a
 * pin is the chain's top layer, keyed by device and inode, and counted.
 * plan-input.c marks pinned layers for the planner; a delete refused for
 * a pin waits here for the releases that close(2) leaves in flight.
 *
 * Thread model: any thread; never blocks on an operation.  Snap.lock (a
 * leaf) guards the table and the unpin counter.
 */
#include "snap-private.h"

void
snap_pins_init(Snap *snap)
{
  snap->pins = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_cond_init(&snap->unpinned);
}

void
snap_pins_clear(Snap *snap)
{
  g_hash_table_unref(snap->pins);
  g_cond_clear(&snap->unpinned);
}

static char *
pin_key(dev_t dev, ino_t ino)
{
  return g_strdup_printf("%ju:%ju", (uintmax_t)dev, (uintmax_t)ino);
}

static char *
chain_key(Chain *chain)
{
  const ChainLayer *top = chain_get_layer(chain, 0);
  return pin_key(chain_layer_dev(top), chain_layer_ino(top));
}

void
snap_pin_chain(Snap *snap, const char *domain, Chain *chain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  char *key = chain_key(chain);
  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(snap->pins, key));
  g_hash_table_insert(snap->pins, key, GUINT_TO_POINTER(count + 1));
}

void
snap_unpin_chain(Snap *snap, const char *domain, Chain *chain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  g_autofree char *key = chain_key(chain);
  guint count = GPOINTER_TO_UINT(g_hash_table_lookup(snap->pins, key));
  if (count > 1)
    g_hash_table_insert(snap->pins, g_steal_pointer(&key), GUINT_TO_POINTER(count - 1));
  else if (count == 1)
    g_hash_table_remove(snap->pins, key);
  else
    g_warning("domain %s: unpinning %s, which is not pinned", domain,
              chain_layer_path(chain_get_layer(chain, 0)));
  snap->unpins++;
  g_cond_broadcast(&snap->unpinned);
}

gboolean
snap_pinned(Snap *snap, dev_t dev, ino_t ino)
{
  g_autofree char *key = pin_key(dev, ino);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  return g_hash_table_contains(snap->pins, key);
}

guint64
snap_unpin_count(Snap *snap)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  return snap->unpins;
}

gboolean
snap_wait_unpin(Snap *snap, guint64 seen, gint64 deadline)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&snap->lock);
  while (snap->unpins == seen)
    if (!g_cond_wait_until(&snap->unpinned, &snap->lock, deadline))
      return FALSE;
  return TRUE;
}
