/* queue.c: the per-domain queue of changing operations.
 *
 * Everything that changes a domain's disks or snapshots (create, delete,
 * rename, revert, an @now freeze or thaw, the repair of a freeze, the
 * recovery of a journaled plan) runs in the domain's turn: one at a time
 * per domain, in the order the callers arrived, while other domains run in
 * parallel.  A caller draws a ticket and waits until the domain serves
 * it; ending the turn serves the next ticket.  A domain's entry exists
 * while a turn is held or waited for.
 *
 * Thread model: any thread; SnapQueue.lock is held only to draw, wait for
 * and end turns, never during the operation itself.  Turns do not nest:
 * code that runs in a turn never waits for one.
 */
#include "snap-private.h"

struct _SnapQueue {
  GMutex lock;
  GHashTable *domains;          /* domain -> DomainLine* */
};

/* The queue of one domain. */
typedef struct {
  guint64 next;                 /* the ticket the next caller draws */
  guint64 serving;              /* the ticket whose turn it is */
  GCond served;                 /* broadcast when serving moves on */
} DomainLine;

struct _SnapTurn {
  SnapQueue *queue;
  char *domain;
};

static void
line_free(gpointer data)
{
  DomainLine *line = data;
  g_cond_clear(&line->served);
  g_free(line);
}

SnapQueue *
snap_queue_new(void)
{
  SnapQueue *queue = g_new0(SnapQueue, 1);
  g_mutex_init(&queue->lock);
  queue->domains = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, line_free);
  return queue;
}

void
snap_queue_free(SnapQueue *queue)
{
  if (!queue)
    return;
  g_hash_table_unref(queue->domains);
  g_mutex_clear(&queue->lock);
  g_free(queue);
}

SnapTurn *
snap_queue_wait(SnapQueue *queue, const char *domain)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&queue->lock);
  DomainLine *line = g_hash_table_lookup(queue->domains, domain);
  if (!line) {
    line = g_new0(DomainLine, 1);
    g_cond_init(&line->served);
    g_hash_table_insert(queue->domains, g_strdup(domain), line);
  }
  guint64 ticket = line->next++;
  while (line->serving != ticket)
    g_cond_wait(&line->served, &queue->lock);
  SnapTurn *turn = g_new0(SnapTurn, 1);
  turn->queue = queue;
  turn->domain = g_strdup(domain);
  return turn;
}

void
snap_turn_end(SnapTurn *turn)
{
  if (!turn)
    return;
  SnapQueue *queue = turn->queue;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&queue->lock);
    DomainLine *line = g_hash_table_lookup(queue->domains, turn->domain);
    line->serving++;
    if (line->serving == line->next)
      g_hash_table_remove(queue->domains, turn->domain); /* nobody waits */
    else
      g_cond_broadcast(&line->served);
  }
  g_free(turn->domain);
  g_free(turn);
}
