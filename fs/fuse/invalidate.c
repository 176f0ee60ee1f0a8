/* invalidate.c: tell the kernel what changed between two models.
 *
 * The backend publishes a new model when libvirt changes (a snapshot made
 * with virsh behind the daemon's back, a deleted one, a domain defined).
 * The kernel caches entries and attributes for -o timeout seconds and
 * keeps the page cache of snapshot files across opens, so the daemon
 * tells it: entries that went away are invalidated in their parent
 * (fuse_lowlevel_notify_inval_entry), directories whose listing changed
 * and files whose content or size may differ are invalidated as inodes
 * (fuse_lowlevel_notify_inval_inode, which also drops cached pages).
 * New entries need nothing: the daemon never caches negative lookups and
 * readdir is not cached.
 *
 * Each host of the mount has its own backend and listener: a change is
 * diffed within its host (the host component of the tree, and a domain's
 * parent is the host's directory on a mount of several).
 *
 * Thread model: invalidate_on_change() runs on the backend's thread and
 * only queues the pair of models to the main loop; the notifications are
 * sent from the main thread, never from a FUSE worker (a notification
 * may wait for a kernel lock that a worker's request holds).
 *
 * An entry notification takes the parent directory's lock in the kernel.
 * A mkdir, rmdir or rename holds that lock until the daemon replies, which
 * for a plan is minutes: an rmdir hides its snapshot at once, and the
 * invalidation of that entry would stall the main loop for the whole
 * plan, and, if the daemon is killed meanwhile, leave its main thread
 * unkillable in the kernel with the rmdir waiting for it for ever.  So
 * while ops-change.c marks a domain busy, entry notifications in its
 * directories (the domain's, a point's: rmdir locks the victim too) are
 * kept in busy_domains and sent by the worker after its reply.  (A change
 * the kernel has locked for but the worker has not marked yet can still
 * delay the main loop until that request is answered; it cannot deadlock.)
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>

typedef struct {
  Virtsnapfs *fs;
  const char *host;     /* tree component of the host (VirtsnapfsHost.tree_host) */
  BackendModel *old_model;
  BackendModel *new_model;
} Change;

static void
change_free(gpointer data)
{
  Change *c = data;
  g_clear_pointer(&c->old_model, backend_model_unref);
  g_clear_pointer(&c->new_model, backend_model_unref);
  g_free(c);
}

static void
inval_inode(Virtsnapfs *fs, fuse_ino_t ino, const char *what)
{
  if (ino == 0)
    return; /* the kernel never saw it */
  int r = fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
  g_debug("INVAL inode %s (%" G_GUINT64_FORMAT ") => %d", what, (guint64)ino, r);
}

typedef struct {
  fuse_ino_t parent;
  char *name;
} InvalEntry;

static void
entry_free(gpointer data)
{
  InvalEntry *entry = data;
  g_free(entry->name);
  g_free(entry);
}

typedef struct {
  guint count;                  /* change requests in flight in the domain */
  GPtrArray *deferred;          /* InvalEntry: to send afterwards */
} InvalBusy;

static void
busy_free(gpointer data)
{
  InvalBusy *busy = data;
  g_ptr_array_unref(busy->deferred);
  g_free(busy);
}

void
invalidate_init(Virtsnapfs *fs)
{
  g_mutex_init(&fs->inval_lock);
  fs->busy_domains = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, busy_free);
}

void
invalidate_clear(Virtsnapfs *fs)
{
  g_clear_pointer(&fs->busy_domains, g_hash_table_unref);
  g_mutex_clear(&fs->inval_lock);
}

static void
send_inval_entry(Virtsnapfs *fs, fuse_ino_t parent, const char *name)
{
  int r = fuse_lowlevel_notify_inval_entry(fs->se, parent, name, strlen(name));
  g_debug("INVAL entry %s in %" G_GUINT64_FORMAT " => %d", name, (guint64)parent, r);
}

/* busy_domains' key: domains of two hosts may share a name. */
static char *
busy_key(const char *host, const char *domain)
{
  return host ? g_strconcat(host, "/", domain, NULL) : g_strdup(domain);
}

void
invalidate_domain_busy(Virtsnapfs *fs, const char *host, const char *domain)
{
  g_autofree char *key = busy_key(host, domain);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->inval_lock);
  InvalBusy *busy = g_hash_table_lookup(fs->busy_domains, key);
  if (!busy) {
    busy = g_new0(InvalBusy, 1);
    busy->deferred = g_ptr_array_new_with_free_func(entry_free);
    g_hash_table_insert(fs->busy_domains, g_steal_pointer(&key), busy);
  }
  busy->count++;
}

void
invalidate_domain_idle(Virtsnapfs *fs, const char *host, const char *domain)
{
  g_autofree char *key = busy_key(host, domain);
  g_autoptr(GPtrArray) deferred = NULL;
  {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->inval_lock);
    InvalBusy *busy = g_hash_table_lookup(fs->busy_domains, key);
    if (!busy || --busy->count > 0)
      return;
    deferred = g_ptr_array_ref(busy->deferred);
    g_hash_table_remove(fs->busy_domains, key);
  }
  for (guint i = 0; i < deferred->len; i++) {
    InvalEntry *entry = deferred->pdata[i];
    send_inval_entry(fs, entry->parent, entry->name);
  }
}

/* name in directory parent, which belongs to domain of host (domain NULL:
 * the root or a host's directory). */
static void
inval_entry(Virtsnapfs *fs, const char *host, const char *domain, fuse_ino_t parent,
            const char *name)
{
  if (parent == 0)
    return;
  if (domain) {
    g_autofree char *key = busy_key(host, domain);
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&fs->inval_lock);
    InvalBusy *busy = g_hash_table_lookup(fs->busy_domains, key);
    if (busy) {
      InvalEntry *entry = g_new0(InvalEntry, 1);
      entry->parent = parent;
      entry->name = g_strdup(name);
      g_ptr_array_add(busy->deferred, entry);
      g_debug("INVAL entry %s in %" G_GUINT64_FORMAT ": deferred, a change in domain %s holds "
              "the directory", name, (guint64)parent, domain);
      return;
    }
  }
  send_inval_entry(fs, parent, name);
}

static gboolean
disk_equal(const BackendDisk *a, const BackendDisk *b)
{
  return g_str_equal(a->target, b->target) && g_str_equal(a->image_path, b->image_path) &&
         a->format == b->format;
}

/* Invalidates the files of one point (snapshot or @now) whose disks or
 * XML changed, and the entries of disks that went away. */
static void
diff_point(Change *c, const char *domain, const char *point, GPtrArray *old_disks,
           GPtrArray *new_disks, const char *old_xml, const char *new_xml)
{
  Virtsnapfs *fs = c->fs;
  Tree *tree = fs->tree;
  const char *host = c->host;
  fuse_ino_t pino = tree_find(tree, TREE_POINT, host, domain, point, NULL);
  gboolean listing_changed = FALSE;

  for (guint i = 0; old_disks && i < old_disks->len; i++) {
    BackendDisk *od = old_disks->pdata[i];
    BackendDisk *nd = tree_find_disk(new_disks, od->target);
    fuse_ino_t ino = tree_find(tree, TREE_DISK, host, domain, point, od->target);
    if (nd == NULL) {
      g_autofree char *name = g_strconcat(od->target, VIRTSNAPFS_RAW_SUFFIX, NULL);
      inval_entry(fs, host, domain, pino, name);
      inval_inode(fs, ino, name);
      if (point != NULL) {
        g_autofree char *delta = g_strconcat(od->target, VIRTSNAPFS_DELTA_SUFFIX, NULL);
        inval_entry(fs, host, domain, pino, delta);
      }
      listing_changed = TRUE;
    } else if (!disk_equal(od, nd)) {
      inval_inode(fs, ino, od->target);
    }
  }
  for (guint i = 0; new_disks && i < new_disks->len; i++) {
    BackendDisk *nd = new_disks->pdata[i];
    if (tree_find_disk(old_disks, nd->target) == NULL)
      listing_changed = TRUE;
  }
  if (point != NULL && g_strcmp0(old_xml, new_xml) != 0)
    inval_inode(fs, tree_find(tree, TREE_XML, host, domain, point, NULL),
                VIRTSNAPFS_SNAPSHOT_XML);
  if (listing_changed)
    inval_inode(fs, pino, point ? point : VIRTSNAPFS_NOW);
}

static void
diff_domain(Change *c, BackendDomain *od, BackendDomain *nd)
{
  Virtsnapfs *fs = c->fs;
  Tree *tree = fs->tree;
  const char *host = c->host;
  fuse_ino_t dino = tree_find(tree, TREE_DOMAIN, host, od->name, NULL, NULL);
  gboolean listing_changed = FALSE;

  for (guint i = 0; i < od->snapshots->len; i++) {
    BackendSnapshot *os = od->snapshots->pdata[i];
    BackendSnapshot *ns = nd ? backend_domain_find_snapshot(nd, os->name) : NULL;
    if (ns == NULL) {
      /* Gone: drop the entry, and the pages of its files in case the name
       * comes back as another point in time with the same inodes. */
      g_autofree char *entry = names_escape(os->name);
      inval_entry(fs, host, od->name, dino, entry);
      diff_point(c, od->name, os->name, os->disks, NULL, os->xml, NULL);
      inval_inode(fs, tree_find(tree, TREE_POINT, host, od->name, os->name, NULL), os->name);
      listing_changed = TRUE;
    } else if (ns->creation_time != os->creation_time) {
      /* Same name, another point in time. */
      for (guint j = 0; j < os->disks->len; j++) {
        BackendDisk *d = os->disks->pdata[j];
        inval_inode(fs, tree_find(tree, TREE_DISK, host, od->name, os->name, d->target),
                    d->target);
      }
      diff_point(c, od->name, os->name, os->disks, ns->disks, os->xml, ns->xml);
      inval_inode(fs, tree_find(tree, TREE_POINT, host, od->name, os->name, NULL), os->name);
    } else {
      diff_point(c, od->name, os->name, os->disks, ns->disks, os->xml, ns->xml);
    }
  }
  if (nd) {
    for (guint i = 0; i < nd->snapshots->len; i++) {
      BackendSnapshot *ns = nd->snapshots->pdata[i];
      if (backend_domain_find_snapshot(od, ns->name) == NULL)
        listing_changed = TRUE;
    }
    diff_point(c, od->name, NULL, od->disks, nd->disks, NULL, NULL);
    if (od->running != nd->running)
      inval_inode(fs, tree_find(tree, TREE_POINT, host, od->name, NULL, NULL), VIRTSNAPFS_NOW);
  }
  if (listing_changed)
    inval_inode(fs, dino, od->name);
}

static gboolean
apply_change(gpointer data)
{
  Change *c = data;
  Virtsnapfs *fs = c->fs;
  gboolean root_changed = FALSE;
  /* Where the domains are listed: the root, or the host's directory. */
  fuse_ino_t top = c->host ? tree_find(fs->tree, TREE_HOST, c->host, NULL, NULL, NULL)
                           : FUSE_ROOT_ID;

  g_debug("%s%smodel %" G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT, c->host ? c->host : "",
          c->host ? ": " : "", c->old_model->generation, c->new_model->generation);
  for (guint i = 0; i < c->old_model->domains->len; i++) {
    BackendDomain *od = c->old_model->domains->pdata[i];
    BackendDomain *nd = backend_model_find_domain(c->new_model, od->name);
    diff_domain(c, od, nd);
    if (nd == NULL) {
      g_autofree char *entry = names_escape(od->name);
      inval_entry(fs, c->host, NULL, top, entry);
      root_changed = TRUE;
    }
  }
  for (guint i = 0; i < c->new_model->domains->len; i++) {
    BackendDomain *nd = c->new_model->domains->pdata[i];
    if (backend_model_find_domain(c->old_model, nd->name) == NULL)
      root_changed = TRUE;
  }
  if (root_changed)
    inval_inode(fs, top, c->host ? c->host : "/");
  tree_prune(fs->tree, c->host, c->new_model);
  return G_SOURCE_REMOVE;
}

void
invalidate_on_change(BackendModel *old_model, BackendModel *new_model, gpointer user_data)
{
  VirtsnapfsHost *host = user_data;
  Change *c = g_new0(Change, 1);
  c->fs = host->fs;
  c->host = host->tree_host;
  c->old_model = old_model ? backend_model_ref(old_model) : NULL;
  c->new_model = backend_model_ref(new_model);
  if (c->old_model == NULL) {
    change_free(c);
    return;
  }
  /* Always through a source: g_main_context_invoke() would run it right
   * here if the main loop did not own the context yet. */
  g_idle_add_full(G_PRIORITY_DEFAULT, apply_change, c, change_free);
}
