/* sim.c: the image simulator the planner tests execute plans on.
 *
 * It models what the executor's tools do, including libvirt's side
 * effects (an intermediate block commit moves the pointer of top's child in
 * the running chain; an active commit pivots), and turns every safety rule
 * a plan could break into an error: a plan that writes into a
 * pinned or shared file, changes a backing file that still has another
 * child, runs qemu-img on an image the running domain has open, or deletes
 * a file that metadata or a backing pointer still names, fails here.
 */
#include <string.h>

#include "sim.h"

#define SIM_ERROR (g_quark_from_static_string("sim"))

struct _Sim {
  guint n;
  PlanState *st;      /* images, active images, snapshots (allocation: see maps) */
  GHashTable *data;   /* "target\tpath" -> gint[n], -1 = not allocated */
  GPtrArray *maps;    /* allocation maps handed out by sim_state() */
  gint next_value;
  gint64 clock;
  GHashTable *doomed; /* while sim_run(): "target\tpath" the plan deletes at its end */
  gint crash_at;      /* the next sim_run() cuts this step short once, or -1 */
  GPtrArray *readers; /* while sim_run(): SimReader * */
  GHashTable *graveyard; /* while sim_run(): data of deleted files readers may hold */
  gboolean half;      /* the step running now stops halfway (a crash) */
};

struct _SimExpect {
  GHashTable *reads;  /* "name\ttarget" -> gint[n]; name "@now" is the present,
                       * "@kept" the present a keeping revert turns into a snapshot */
  GHashTable *names;  /* snapshot names before the operation */
  guint n;
};

/* An open point in time: the chain it opened (paths, top first) and what
 * it read then.  Its descriptors keep deleted files readable. */
typedef struct {
  char *target;
  GPtrArray *chain; /* char * */
  gint *view;
} SimReader;

static void
sim_reader_free(SimReader *reader)
{
  g_free(reader->target);
  g_ptr_array_unref(reader->chain);
  g_free(reader->view);
  g_free(reader);
}

static char *
key_of(const char *a, const char *b)
{
  return g_strconcat(a, "\t", b, NULL);
}

static gint *
image_data(Sim *sim, const PlanDisk *disk, const char *path)
{
  g_autofree char *key = key_of(disk->target, path);
  return g_hash_table_lookup(sim->data, key);
}

static gint *
new_data(Sim *sim, const PlanDisk *disk, const char *path)
{
  gint *data = g_new(gint, sim->n);
  for (guint i = 0; i < sim->n; i++)
    data[i] = -1;
  g_hash_table_insert(sim->data, key_of(disk->target, path), data);
  return data;
}

static gint
read_cluster(Sim *sim, const PlanDisk *disk, const char *path, guint cluster)
{
  for (PlanImage *image = plan_disk_find_image(disk, path); image != NULL;
       image = plan_disk_find_image(disk, image->backing)) {
    gint v = image_data(sim, disk, image->path)[cluster];
    if (v >= 0)
      return v;
  }
  return 0;
}

static gint *
read_all(Sim *sim, const PlanDisk *disk, const char *path)
{
  gint *out = g_new(gint, sim->n);
  for (guint i = 0; i < sim->n; i++)
    out[i] = read_cluster(sim, disk, path, i);
  return out;
}

static gboolean
in_chain(const PlanDisk *disk, const char *top, const char *path)
{
  for (PlanImage *image = plan_disk_find_image(disk, top); image != NULL;
       image = plan_disk_find_image(disk, image->backing))
    if (strcmp(image->path, path) == 0)
      return TRUE;
  return FALSE;
}

/* Images backing onto path that matter: a file the running plan deletes
 * at its end does not (readers that still hold one are checked apart). */
static guint
other_children(Sim *sim, const PlanDisk *disk, const char *path, const char *except)
{
  guint n = 0;
  for (guint i = 0; i < disk->images->len; i++) {
    PlanImage *image = disk->images->pdata[i];
    g_autofree char *key = key_of(disk->target, image->path);
    if (g_strcmp0(image->backing, path) == 0 && strcmp(image->path, except) != 0 &&
        (sim->doomed == NULL || !g_hash_table_contains(sim->doomed, key)))
      n++;
  }
  return n;
}

static guint
children(const PlanDisk *disk, const char *path)
{
  guint n = 0;
  for (guint i = 0; i < disk->images->len; i++)
    n += g_strcmp0(((PlanImage *)disk->images->pdata[i])->backing, path) == 0;
  return n;
}

Sim *
sim_new(guint nclusters)
{
  Sim *sim = g_new0(Sim, 1);
  sim->n = nclusters;
  sim->st = plan_state_new(FALSE);
  sim->data = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  sim->maps = g_ptr_array_new_with_free_func((GDestroyNotify)chain_bitmap_free);
  sim->next_value = 1;
  sim->clock = 1700000000;
  sim->crash_at = -1;
  return sim;
}

void
sim_free(Sim *sim)
{
  if (sim == NULL)
    return;
  plan_state_free(sim->st);
  g_hash_table_unref(sim->data);
  g_ptr_array_unref(sim->maps);
  g_free(sim);
}

void
sim_add_disk(Sim *sim, const char *target, ChainFormat base_format)
{
  g_autofree char *path = g_strdup_printf("/img/%s-base", target);
  PlanDisk *disk = plan_state_add_disk(sim->st, target, path);
  plan_disk_add_image(disk, path, base_format, NULL, NULL);
  new_data(sim, disk, path);
}

void
sim_write(Sim *sim, const char *target, guint cluster, gint value)
{
  PlanDisk *disk = plan_state_find_disk(sim->st, target);
  g_assert_nonnull(disk);
  g_assert_cmpuint(cluster, <, sim->n);
  image_data(sim, disk, disk->active)[cluster] = value;
}

void
sim_write_mask(Sim *sim, const char *target, const char *mask)
{
  for (guint i = 0; mask[i] && i < sim->n; i++)
    if (mask[i] == '1')
      sim_write(sim, target, i, sim->next_value++);
}

void
sim_snapshot(Sim *sim, const char *name)
{
  sim_snapshot_disks(sim, name, G_MAXUINT);
}

void
sim_snapshot_disks(Sim *sim, const char *name, guint mask)
{
  PlanSnapshot *current = NULL;
  for (guint i = 0; i < sim->st->snapshots->len; i++) {
    PlanSnapshot *s = sim->st->snapshots->pdata[i];
    if (s->current)
      current = s;
  }
  PlanSnapshot *snapshot = plan_state_add_snapshot(sim->st, name, sim->clock++,
                                                   current ? current->name : NULL, TRUE);
  if (current)
    current->current = FALSE;
  for (guint i = 0; i < sim->st->disks->len; i++) {
    PlanDisk *disk = sim->st->disks->pdata[i];
    if (!(mask & (1u << i)))
      continue;
    g_autofree char *path = g_strdup_printf("/img/%s.%s", disk->target, name);
    g_assert_null(plan_disk_find_image(disk, path));
    plan_disk_add_image(disk, path, CHAIN_FORMAT_QCOW2, disk->active, NULL);
    new_data(sim, disk, path);
    g_free(disk->active);
    disk->active = g_strdup(path);
    plan_snapshot_set_overlay(snapshot, disk->target, path);
  }
}

void
sim_crash_at(Sim *sim, guint step)
{
  sim->crash_at = (gint)step;
}

void
sim_set_running(Sim *sim, gboolean running)
{
  sim->st->running = running;
}

gboolean
sim_running(Sim *sim)
{
  return sim->st->running;
}

void
sim_pin(Sim *sim, const char *target, const char *path)
{
  PlanImage *image = plan_disk_find_image(plan_state_find_disk(sim->st, target), path);
  g_assert_nonnull(image);
  image->pinned = TRUE;
}

void
sim_pin_point(Sim *sim, const char *snapshot)
{
  PlanSnapshot *s = plan_state_find_snapshot(sim->st, snapshot);
  g_assert_nonnull(s);
  for (guint i = 0; i < sim->st->disks->len; i++) {
    PlanDisk *disk = sim->st->disks->pdata[i];
    PlanImage *overlay = plan_disk_find_image(disk, plan_snapshot_overlay(s, disk->target));
    if (overlay == NULL)
      continue;
    for (PlanImage *image = plan_disk_find_image(disk, overlay->backing); image != NULL;
         image = plan_disk_find_image(disk, image->backing))
      image->pinned = TRUE;
  }
}

void
sim_unpin_all(Sim *sim)
{
  for (guint i = 0; i < sim->st->disks->len; i++) {
    PlanDisk *disk = sim->st->disks->pdata[i];
    for (guint j = 0; j < disk->images->len; j++)
      ((PlanImage *)disk->images->pdata[j])->pinned = FALSE;
  }
}

void
sim_share(Sim *sim, const char *target, const char *path)
{
  PlanImage *image = plan_disk_find_image(plan_state_find_disk(sim->st, target), path);
  g_assert_nonnull(image);
  image->shared = TRUE;
}

const PlanState *
sim_state(Sim *sim)
{
  g_ptr_array_set_size(sim->maps, 0);
  for (guint i = 0; i < sim->st->disks->len; i++) {
    PlanDisk *disk = sim->st->disks->pdata[i];
    for (guint j = 0; j < disk->images->len; j++) {
      PlanImage *image = disk->images->pdata[j];
      ChainBitmap *map = chain_bitmap_new(SIM_GRANULARITY, (guint64)sim->n * SIM_GRANULARITY);
      gint *data = image_data(sim, disk, image->path);
      for (guint c = 0; c < sim->n; c++)
        if (data[c] >= 0)
          chain_bitmap_set_range(map, (guint64)c * SIM_GRANULARITY, SIM_GRANULARITY);
      g_ptr_array_add(sim->maps, map);
      image->allocation = map;
    }
  }
  return sim->st;
}

const char *
sim_overlay(Sim *sim, const char *snapshot, const char *target)
{
  PlanSnapshot *s = plan_state_find_snapshot(sim->st, snapshot);
  return s ? plan_snapshot_overlay(s, target) : NULL;
}

gboolean
sim_has_file(Sim *sim, const char *target, const char *path)
{
  return plan_disk_find_image(plan_state_find_disk(sim->st, target), path) != NULL;
}

guint
sim_image_count(Sim *sim, const char *target)
{
  return plan_state_find_disk(sim->st, target)->images->len;
}

/* ------------------------------------------------------------------ */

SimExpect *
sim_expect(Sim *sim, const PlanOp *op)
{
  SimExpect *e = g_new0(SimExpect, 1);
  e->n = sim->n;
  e->reads = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  e->names = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  const PlanSnapshot *target = plan_state_find_snapshot(sim->st, op->name);

  for (guint i = 0; i < sim->st->disks->len; i++) {
    PlanDisk *disk = sim->st->disks->pdata[i];
    for (guint j = 0; j < sim->st->snapshots->len; j++) {
      PlanSnapshot *s = sim->st->snapshots->pdata[j];
      PlanImage *overlay = plan_disk_find_image(disk, plan_snapshot_overlay(s, disk->target));
      const char *name = s->name;
      if (overlay == NULL)
        continue;
      if (op->kind == PLAN_OP_DELETE && s == target)
        continue;
      if (op->kind == PLAN_OP_RENAME && s == target)
        name = op->new_name;
      g_hash_table_insert(e->reads, key_of(name, disk->target), read_all(sim, disk, overlay->backing));
    }
    gint *present = read_all(sim, disk, disk->active);
    if (op->kind == PLAN_OP_REVERT && target != NULL && plan_snapshot_overlay(target, disk->target)) {
      PlanImage *overlay = plan_disk_find_image(disk, plan_snapshot_overlay(target, disk->target));
      g_hash_table_insert(e->reads, key_of("@now", disk->target), read_all(sim, disk, overlay->backing));
      if (!op->discard)
        g_hash_table_insert(e->reads, key_of("@kept", disk->target), g_steal_pointer(&present));
    } else {
      g_hash_table_insert(e->reads, key_of("@now", disk->target), g_steal_pointer(&present));
    }
    g_free(present);
  }
  for (guint j = 0; j < sim->st->snapshots->len; j++)
    g_hash_table_add(e->names, g_strdup(((PlanSnapshot *)sim->st->snapshots->pdata[j])->name));
  if (op->kind == PLAN_OP_RENAME && op->new_name != NULL)
    g_hash_table_add(e->names, g_strdup(op->new_name));
  return e;
}

void
sim_expect_free(SimExpect *expect)
{
  if (expect == NULL)
    return;
  g_hash_table_unref(expect->reads);
  g_hash_table_unref(expect->names);
  g_free(expect);
}

/* ------------------------------------------------------------------ */

#define FAIL(...)                                                                                  \
  do {                                                                                             \
    g_set_error(error, SIM_ERROR, 1, __VA_ARGS__);                                                 \
    return FALSE;                                                                                  \
  } while (0)

/* Writing content into image: never into a file another domain uses, and
 * never into a layer an open reader's chain holds (a reader never sees
 * data change under it), except
 * under keep: clusters of keep, which every such reader reads from keep. */
static gboolean
check_writable(Sim *sim, const PlanDisk *disk, const PlanImage *image, const char *keep,
               const char *what, GError **error)
{
  if (image->shared)
    FAIL("%s writes into %s, which another domain uses", what, image->path);
  for (guint i = 0; sim->readers && i < sim->readers->len; i++) {
    SimReader *reader = sim->readers->pdata[i];
    if (strcmp(reader->target, disk->target) != 0)
      continue;
    for (guint j = 0; j < reader->chain->len; j++) {
      const char *path = reader->chain->pdata[j];
      if (keep != NULL && strcmp(path, keep) == 0)
        break;
      if (strcmp(path, image->path) == 0)
        FAIL("%s writes into %s, which the reader of %s depends on", what, image->path,
             (char *)reader->chain->pdata[0]);
    }
  }
  return TRUE;
}

static gint *
reader_view(Sim *sim, const SimReader *reader)
{
  gint *view = g_new(gint, sim->n);
  for (guint c = 0; c < sim->n; c++) {
    view[c] = 0;
    for (guint j = 0; j < reader->chain->len; j++) {
      g_autofree char *key = key_of(reader->target, reader->chain->pdata[j]);
      gint *data = g_hash_table_lookup(sim->data, key);
      if (data == NULL)
        data = g_hash_table_lookup(sim->graveyard, key);
      g_assert_nonnull(data);
      if (data[c] >= 0) {
        view[c] = data[c];
        break;
      }
    }
  }
  return view;
}

static gboolean
check_readers(Sim *sim, GError **error)
{
  for (guint i = 0; i < sim->readers->len; i++) {
    SimReader *reader = sim->readers->pdata[i];
    g_autofree gint *now = reader_view(sim, reader);
    for (guint c = 0; c < sim->n; c++)
      if (now[c] != reader->view[c])
        FAIL("the reader of %s sees cluster %u change from %d to %d",
             (char *)reader->chain->pdata[0], c, reader->view[c], now[c]);
  }
  return TRUE;
}

static gboolean
check_offline(Sim *sim, const PlanDisk *disk, const char *path, const char *what, GError **error)
{
  if (sim->st->running && in_chain(disk, disk->active, path))
    FAIL("%s: offline step on %s, which the running domain has open", what, path);
  return TRUE;
}

static gboolean
run_commit(Sim *sim, PlanDisk *disk, const PlanStep *step, GError **error)
{
  PlanImage *top = plan_disk_find_image(disk, step->image);
  PlanImage *base = plan_disk_find_image(disk, step->backing);
  gboolean active = step->kind == PLAN_STEP_ACTIVE_COMMIT;
  if (top == NULL || base == NULL)
    FAIL("commit: %s or %s does not exist", step->image, step->backing);

  /* Re-run after a crash: libvirt's job already finished. */
  if (active && g_strcmp0(disk->active, base->path) == 0)
    return TRUE;
  if (step->block_job && !active && !in_chain(disk, disk->active, top->path) &&
      in_chain(disk, disk->active, base->path))
    return TRUE;

  if (g_strcmp0(top->backing, base->path) != 0)
    FAIL("commit: backing of %s is not %s", top->path, base->path);
  if (other_children(sim, disk, base->path, top->path) != 0)
    FAIL("commit into %s, which other images back onto", base->path);
  if (!check_writable(sim, disk, base, top->path, "commit", error))
    return FALSE;
  if (step->block_job) {
    if (!sim->st->running)
      FAIL("block job on a shut-off domain");
    if (!in_chain(disk, disk->active, top->path))
      FAIL("block commit of %s, which is not in the running chain", top->path);
    if (active != (g_strcmp0(disk->active, top->path) == 0))
      FAIL("%s of %s: wrong kind of block commit", plan_step_kind_name(step->kind), top->path);
  } else {
    if (active)
      FAIL("active commit is a block job");
    if (!check_offline(sim, disk, top->path, "commit", error) ||
        !check_offline(sim, disk, base->path, "commit", error))
      return FALSE;
  }

  gint *t = image_data(sim, disk, top->path), *b = image_data(sim, disk, base->path);
  for (guint i = 0; i < (sim->half ? sim->n / 2 : sim->n); i++)
    if (t[i] >= 0)
      b[i] = t[i];

  /* A job cut short neither pivots nor moves a pointer. */
  if (step->block_job && !sim->half) {
    for (guint i = 0; i < disk->images->len; i++) {
      PlanImage *child = disk->images->pdata[i];
      if (g_strcmp0(child->backing, top->path) == 0 && in_chain(disk, disk->active, child->path)) {
        g_free(child->backing);
        child->backing = g_strdup(base->path);
      }
    }
    if (active) {
      g_free(disk->active);
      disk->active = g_strdup(base->path);
    }
  }
  return TRUE;
}

static gboolean
run_pull(Sim *sim, PlanDisk *disk, const PlanStep *step, GError **error)
{
  PlanImage *image = plan_disk_find_image(disk, step->image);
  if (image == NULL)
    FAIL("pull into %s, which does not exist", step->image);
  if (step->backing != NULL && !in_chain(disk, image->path, step->backing))
    FAIL("pull: %s is not below %s", step->backing, image->path);
  if (step->backing != NULL && strcmp(step->backing, image->path) == 0)
    FAIL("pull: %s onto itself", image->path);
  if (!check_writable(sim, disk, image, NULL, "pull", error))
    return FALSE;
  if (step->block_job) {
    if (!sim->st->running || g_strcmp0(disk->active, image->path) != 0)
      FAIL("block pull into %s, which is not the running active image", image->path);
  } else if (!check_offline(sim, disk, image->path, "pull", error)) {
    return FALSE;
  }

  gint *d = image_data(sim, disk, image->path);
  for (guint i = 0; i < (sim->half ? sim->n / 2 : sim->n); i++) {
    if (d[i] >= 0)
      continue;
    gint old = image->backing ? read_cluster(sim, disk, image->backing, i) : 0;
    gint new = step->backing ? read_cluster(sim, disk, step->backing, i) : 0;
    if (old != new)
      d[i] = old;
  }
  /* qemu-img rebase -t writethrough: the header moves after the data. */
  if (sim->half)
    return TRUE;
  g_free(image->backing);
  image->backing = g_strdup(step->backing);
  return TRUE;
}

static gboolean
run_rebase_unsafe(Sim *sim, PlanDisk *disk, const PlanStep *step, GError **error)
{
  PlanImage *image = plan_disk_find_image(disk, step->image);
  if (image == NULL || plan_disk_find_image(disk, step->backing) == NULL)
    FAIL("rebase -u: %s or %s does not exist", step->image, step->backing);
  if (image->shared)
    FAIL("rebase -u of %s, which another domain uses", image->path);
  if (!check_offline(sim, disk, image->path, "rebase -u", error))
    return FALSE;

  g_autofree gint *before = read_all(sim, disk, image->path);
  g_autofree char *old = g_steal_pointer(&image->backing);
  image->backing = g_strdup(step->backing);
  g_autofree gint *after = read_all(sim, disk, image->path);
  if (memcmp(before, after, sim->n * sizeof(gint)) != 0)
    FAIL("rebase -u of %s from %s to %s changes what it reads", image->path, old, step->backing);
  return TRUE;
}

static gboolean
run_create(Sim *sim, PlanDisk *disk, const PlanStep *step, GError **error)
{
  PlanImage *backing = plan_disk_find_image(disk, step->backing);
  PlanImage *image = plan_disk_find_image(disk, step->image);
  if (backing == NULL)
    FAIL("create %s on %s, which does not exist", step->image, step->backing);
  if (image != NULL) {
    gint *d = image_data(sim, disk, image->path);
    for (guint i = 0; i < sim->n; i++)
      if (d[i] >= 0)
        FAIL("create %s: a file with data is there", step->image);
    if (g_strcmp0(image->backing, step->backing) != 0)
      FAIL("create %s: a file with another backing is there", step->image);
    return TRUE;
  }
  for (guint i = 0; i < sim->st->disks->len; i++)
    if (plan_disk_find_image(sim->st->disks->pdata[i], step->image) != NULL)
      FAIL("create %s: another disk has that file", step->image);
  plan_disk_add_image(disk, step->image, CHAIN_FORMAT_QCOW2, step->backing, NULL);
  new_data(sim, disk, step->image);
  return TRUE;
}

static gboolean
run_delete_file(Sim *sim, PlanDisk *disk, const PlanStep *step, GError **error)
{
  PlanImage *image = plan_disk_find_image(disk, step->image);
  if (image == NULL)
    return TRUE;
  if (image->shared)
    FAIL("delete %s, which another domain uses", image->path);
  if (g_strcmp0(disk->active, image->path) == 0)
    FAIL("delete %s, the active image", image->path);
  if (children(disk, image->path) != 0)
    FAIL("delete %s, which another image backs onto", image->path);
  for (guint i = 0; i < sim->st->snapshots->len; i++)
    if (g_strcmp0(plan_snapshot_overlay(sim->st->snapshots->pdata[i], disk->target), image->path) == 0)
      FAIL("delete %s, which snapshot %s names", image->path,
           ((PlanSnapshot *)sim->st->snapshots->pdata[i])->name);
  g_autofree char *key = key_of(disk->target, image->path);
  gpointer old_key = NULL, data = NULL;
  g_hash_table_steal_extended(sim->data, key, &old_key, &data);
  g_hash_table_insert(sim->graveyard, old_key, data);
  g_ptr_array_remove(disk->images, image);
  return TRUE;
}

static gboolean
run_redefine(Sim *sim, const PlanStep *step, GError **error)
{
  const PlanSnapshot *def = step->definition;
  if (def->parent != NULL && plan_state_find_snapshot(sim->st, def->parent) == NULL)
    FAIL("redefine %s: parent %s does not exist", def->name, def->parent);
  for (guint j = 0; j < def->disks->len; j++) {
    const PlanSnapshotDisk *sd = def->disks->pdata[j];
    PlanDisk *disk = plan_state_find_disk(sim->st, sd->target);
    PlanImage *overlay = disk ? plan_disk_find_image(disk, sd->overlay) : NULL;
    if (overlay == NULL)
      FAIL("redefine %s: overlay %s does not exist", def->name, sd->overlay);
    if (g_strcmp0(overlay->backing, sd->point) != 0)
      FAIL("redefine %s: %s backs onto %s, not the point %s", def->name, sd->overlay,
           overlay->backing, sd->point);
  }
  PlanSnapshot *old = plan_state_find_snapshot(sim->st, def->name);
  PlanSnapshot *copy = plan_snapshot_copy(def);
  if (old != NULL) {
    guint index = 0;
    g_ptr_array_find(sim->st->snapshots, old, &index);
    plan_snapshot_free(old);
    sim->st->snapshots->pdata[index] = copy;
  } else {
    g_ptr_array_add(sim->st->snapshots, copy);
  }
  if (copy->current)
    for (guint i = 0; i < sim->st->snapshots->len; i++)
      ((PlanSnapshot *)sim->st->snapshots->pdata[i])->current = sim->st->snapshots->pdata[i] == copy;
  return TRUE;
}

static gboolean
run_step(Sim *sim, const PlanStep *step, GError **error)
{
  PlanDisk *disk = step->disk ? plan_state_find_disk(sim->st, step->disk) : NULL;
  if (step->disk != NULL && disk == NULL)
    FAIL("no disk %s", step->disk);

  switch (step->kind) {
  case PLAN_STEP_COMMIT:
  case PLAN_STEP_ACTIVE_COMMIT:
    return run_commit(sim, disk, step, error);
  case PLAN_STEP_PULL:
    return run_pull(sim, disk, step, error);
  case PLAN_STEP_REBASE_UNSAFE:
    return run_rebase_unsafe(sim, disk, step, error);
  case PLAN_STEP_CREATE_OVERLAY:
    return run_create(sim, disk, step, error);
  case PLAN_STEP_SET_ACTIVE:
    if (plan_disk_find_image(disk, step->image) == NULL)
      FAIL("set-active %s, which does not exist", step->image);
    if (sim->st->running && g_strcmp0(disk->active, step->image) != 0)
      FAIL("set-active %s on a running domain without a pivot", step->image);
    g_free(disk->active);
    disk->active = g_strdup(step->image);
    return TRUE;
  case PLAN_STEP_REDEFINE_SNAPSHOT:
    return run_redefine(sim, step, error);
  case PLAN_STEP_DELETE_SNAPSHOT: {
    PlanSnapshot *s = plan_state_find_snapshot(sim->st, step->snapshot);
    if (s != NULL) {
      /* libvirt reparents the children. */
      for (guint i = 0; i < sim->st->snapshots->len; i++) {
        PlanSnapshot *o = sim->st->snapshots->pdata[i];
        if (g_strcmp0(o->parent, s->name) == 0) {
          g_free(o->parent);
          o->parent = g_strdup(s->parent);
        }
      }
      g_ptr_array_remove(sim->st->snapshots, s);
    }
    return TRUE;
  }
  case PLAN_STEP_SET_CURRENT: {
    PlanSnapshot *s = plan_state_find_snapshot(sim->st, step->snapshot);
    if (s == NULL)
      FAIL("set-current %s, which does not exist", step->snapshot);
    for (guint i = 0; i < sim->st->snapshots->len; i++)
      ((PlanSnapshot *)sim->st->snapshots->pdata[i])->current = sim->st->snapshots->pdata[i] == s;
    return TRUE;
  }
  case PLAN_STEP_DELETE_FILE:
    return run_delete_file(sim, disk, step, error);
  }
  FAIL("unknown step kind %d", step->kind);
}

gboolean
sim_run(Sim *sim, const Plan *plan, gboolean twice, GError **error)
{
  g_autoptr(GHashTable) doomed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  for (guint i = 0; i < plan->steps->len; i++) {
    const PlanStep *step = plan->steps->pdata[i];
    if (step->kind == PLAN_STEP_DELETE_FILE)
      g_hash_table_add(doomed, key_of(step->disk, step->image));
  }
  sim->doomed = doomed;
  g_autoptr(GPtrArray) readers = g_ptr_array_new_with_free_func((GDestroyNotify)sim_reader_free);
  g_autoptr(GHashTable) graveyard = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  sim->readers = readers;
  sim->graveyard = graveyard;
  for (guint d = 0; d < sim->st->disks->len; d++) {
    PlanDisk *disk = sim->st->disks->pdata[d];
    for (guint j = 0; j < disk->images->len; j++) {
      PlanImage *top = disk->images->pdata[j];
      if (!top->pinned)
        continue;
      SimReader *reader = g_new0(SimReader, 1);
      reader->target = g_strdup(disk->target);
      reader->chain = g_ptr_array_new_with_free_func(g_free);
      for (PlanImage *image = top; image != NULL; image = plan_disk_find_image(disk, image->backing))
        g_ptr_array_add(reader->chain, g_strdup(image->path));
      reader->view = reader_view(sim, reader);
      g_ptr_array_add(readers, reader);
    }
  }
  gboolean ok = TRUE;
  gint crash_at = sim->crash_at;
  sim->crash_at = -1;
  for (guint i = 0; ok && i < plan->steps->len; i++) {
    const PlanStep *step = plan->steps->pdata[i];
    if ((gint)i == crash_at && (step->kind == PLAN_STEP_COMMIT || step->kind == PLAN_STEP_ACTIVE_COMMIT ||
                                step->kind == PLAN_STEP_PULL)) {
      sim->half = TRUE;
      ok = run_step(sim, step, error) && check_readers(sim, error);
      sim->half = FALSE;
      if (!ok) {
        g_prefix_error(error, "step %u cut short: ", i);
        break;
      }
    }
    for (guint r = 0; r < (twice ? 2u : 1u); r++) {
      if (!run_step(sim, step, error) || !check_readers(sim, error)) {
        g_autofree char *line = plan_step_to_line(plan->steps->pdata[i]);
        g_prefix_error(error, "step %u (%s)%s: ", i, line, r ? " re-run" : "");
        ok = FALSE;
        break;
      }
    }
  }
  sim->doomed = NULL;
  sim->readers = NULL;
  sim->graveyard = NULL;
  return ok;
}

/* ------------------------------------------------------------------ */

static gboolean
is_point(const PlanState *st, const PlanDisk *disk, const char *path)
{
  for (guint i = 0; i < st->snapshots->len; i++) {
    PlanImage *o = plan_disk_find_image(disk, plan_snapshot_overlay(st->snapshots->pdata[i], disk->target));
    if (o != NULL && g_strcmp0(o->backing, path) == 0)
      return TRUE;
  }
  return FALSE;
}

static gboolean
same_after(Sim *sim, const PlanState *after, GError **error)
{
  for (guint i = 0; i < sim->st->disks->len; i++) {
    PlanDisk *disk = sim->st->disks->pdata[i];
    PlanDisk *other = plan_state_find_disk(after, disk->target);
    if (g_strcmp0(disk->active, other->active) != 0)
      FAIL("%s: active is %s, the plan said %s", disk->target, disk->active, other->active);
    if (disk->images->len != other->images->len)
      FAIL("%s: %u images, the plan said %u", disk->target, disk->images->len, other->images->len);
    for (guint j = 0; j < disk->images->len; j++) {
      PlanImage *image = disk->images->pdata[j];
      PlanImage *o = plan_disk_find_image(other, image->path);
      if (o == NULL || g_strcmp0(o->backing, image->backing) != 0)
        FAIL("%s: %s backs onto %s, the plan said otherwise", disk->target, image->path,
             image->backing);
    }
  }
  if (sim->st->snapshots->len != after->snapshots->len)
    FAIL("%u snapshots, the plan said %u", sim->st->snapshots->len, after->snapshots->len);
  for (guint i = 0; i < sim->st->snapshots->len; i++) {
    PlanSnapshot *s = sim->st->snapshots->pdata[i];
    PlanSnapshot *o = plan_state_find_snapshot(after, s->name);
    if (o == NULL || g_strcmp0(o->parent, s->parent) != 0 || o->current != s->current)
      FAIL("snapshot %s differs from the plan's (parent or current)", s->name);
    for (guint j = 0; j < s->disks->len; j++) {
      PlanSnapshotDisk *sd = s->disks->pdata[j];
      if (g_strcmp0(plan_snapshot_overlay(o, sd->target), sd->overlay) != 0)
        FAIL("snapshot %s names %s on %s, the plan said %s", s->name, sd->overlay, sd->target,
             plan_snapshot_overlay(o, sd->target));
    }
  }
  return TRUE;
}

gboolean
sim_check(Sim *sim, const SimExpect *expect, const Plan *plan, gboolean normal_form,
          GError **error)
{
  const PlanState *st = sim->st;
  guint currents = 0;
  const char *kept = NULL;

  for (guint i = 0; i < st->snapshots->len; i++) {
    PlanSnapshot *s = st->snapshots->pdata[i];
    currents += s->current;
    if (s->parent != NULL && plan_state_find_snapshot(st, s->parent) == NULL)
      FAIL("snapshot %s: parent %s does not exist", s->name, s->parent);
    if (!g_hash_table_contains(expect->names, s->name)) {
      if (kept != NULL)
        FAIL("two new snapshots: %s and %s", kept, s->name);
      kept = s->name;
    }
  }
  if (currents > 1)
    FAIL("%u current snapshots", currents);

  for (guint i = 0; i < st->disks->len; i++) {
    PlanDisk *disk = st->disks->pdata[i];
    if (plan_disk_find_image(disk, disk->active) == NULL)
      FAIL("%s: active image %s does not exist", disk->target, disk->active);

    /* Every remaining snapshot names an existing overlay whose backing is
     * its point image, and reads as before. */
    for (guint j = 0; j < st->snapshots->len; j++) {
      PlanSnapshot *s = st->snapshots->pdata[j];
      if (plan_snapshot_find_disk(s, disk->target) == NULL)
        continue;
      PlanImage *overlay = plan_disk_find_image(disk, plan_snapshot_overlay(s, disk->target));
      if (overlay == NULL || overlay->backing == NULL ||
          plan_disk_find_image(disk, overlay->backing) == NULL)
        FAIL("snapshot %s: %s has no overlay with a point image", s->name, disk->target);
      g_autofree char *key = key_of(s->name == kept ? "@kept" : s->name, disk->target);
      const gint *want = g_hash_table_lookup(expect->reads, key);
      if (want == NULL)
        FAIL("snapshot %s was not expected", s->name);
      g_autofree gint *got = read_all(sim, disk, overlay->backing);
      for (guint c = 0; c < sim->n; c++)
        if (got[c] != want[c])
          FAIL("snapshot %s, disk %s, cluster %u reads %d, was %d", s->name, disk->target, c,
               got[c], want[c]);
    }
    g_autofree char *now_key = key_of("@now", disk->target);
    const gint *want = g_hash_table_lookup(expect->reads, now_key);
    g_autofree gint *got = read_all(sim, disk, disk->active);
    for (guint c = 0; c < sim->n; c++)
      if (got[c] != want[c])
        FAIL("present of %s, cluster %u reads %d, expected %d", disk->target, c, got[c], want[c]);

    /* No file that nothing references; no layer left to merge. */
    for (guint j = 0; j < disk->images->len; j++) {
      PlanImage *image = disk->images->pdata[j];
      guint n = children(disk, image->path);
      gboolean named = g_strcmp0(disk->active, image->path) == 0;
      for (guint k = 0; k < st->snapshots->len; k++)
        named |= g_strcmp0(plan_snapshot_overlay(st->snapshots->pdata[k], disk->target), image->path) == 0;
      if (n == 0 && !named && !image->shared)
        FAIL("%s: %s is left over: no snapshot names it, nothing backs onto it", disk->target,
             image->path);
      if (normal_form && n == 1 && !image->shared && g_strcmp0(disk->active, image->path) != 0 &&
          !is_point(st, disk, image->path))
        FAIL("%s: %s is an unnamed layer with one child", disk->target, image->path);
    }
  }

  /* Every expected snapshot is there. */
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, expect->reads);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    g_auto(GStrv) parts = g_strsplit(key, "\t", 2);
    if (strcmp(parts[0], "@now") == 0)
      continue;
    if (strcmp(parts[0], "@kept") == 0 ? kept == NULL : plan_state_find_snapshot(st, parts[0]) == NULL)
      FAIL("snapshot %s is gone", parts[0]);
  }
  return plan == NULL || same_after(sim, plan->after, error);
}
