/* test-planner-model.c: model-based test of the planner.
 *
 * Seeded random sequences of guest writes, snapshots (as libvirt takes
 * them, now and then leaving a disk out), deletes, renames and reverts
 * (keeping and discarding), on one or two disks, some on a base that other
 * domains share, with the domain running or shut off and random readers
 * holding points in time open.  Every plan is executed in the simulator
 * (sim.c), which refuses unsafe steps and checks after each step that no
 * reader sees data change; then the plan invariant is checked: every
 * remaining point in time and the present read back as before, no file is
 * left that nothing references, every snapshot names an existing overlay
 * over its point image, and the simulator agrees with the plan's "after".
 * Without readers the graph must also be in normal form (no unnamed layer
 * with one child).  Half the sequences run every step twice, as recovery
 * from a crash would, and half the plans are cut short in the middle of a
 * step (a commit or pull half done) and resumed from that step.
 *
 * A failure prints the seed; rerun one with VIRTSNAPFS_MODEL_SEED=N, or
 * a longer hunt with VIRTSNAPFS_MODEL_SEED=N VIRTSNAPFS_MODEL_COUNT=M;
 * VIRTSNAPFS_MODEL_TRACE=1 prints every plan.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#define NCLUSTERS 12
/* The sanitizer build looks for memory errors, not for more states: a
 * third of the sequences keeps it as fast as the plain one. */
#if defined(__SANITIZE_ADDRESS__)
#define SEQUENCES 1000
#else
#define SEQUENCES 3000
#endif
#define OPS 40

typedef struct {
  guint plans, commits, active_commits, pulls, block_jobs, rebases, creates, deletes;
  guint ebusy, deferred, eexist, reverts, renames, branches;
  /* This sequence has a merge left for later (readers were in the way):
   * until a plan without readers runs, the graph may not be normal. */
  gboolean dirty;
} Stats;

static const char *
random_snapshot(GRand *rand, const PlanState *st)
{
  if (st->snapshots->len == 0)
    return NULL;
  return ((PlanSnapshot *)st->snapshots->pdata[g_rand_int_range(rand, 0, (gint32)st->snapshots->len)])->name;
}

/* Readers: random layers, every layer of a random point's chain, its point
 * image only, or the present (each one time in eight; else no reader). */
static gboolean
random_pins(GRand *rand, Sim *sim)
{
  const PlanState *st = sim_state(sim);
  switch (g_rand_int_range(rand, 0, 8)) {
  case 0: {
    gboolean any = FALSE;
    for (guint i = 0; i < st->disks->len; i++) {
      PlanDisk *disk = st->disks->pdata[i];
      for (guint j = 0; j < disk->images->len; j++) {
        if (g_rand_int_range(rand, 0, 4) == 0) {
          sim_pin(sim, disk->target, ((PlanImage *)disk->images->pdata[j])->path);
          any = TRUE;
        }
      }
    }
    return any;
  }
  case 1: {
    const char *name = random_snapshot(rand, st);
    if (name == NULL)
      return FALSE;
    sim_pin_point(sim, name);
    return TRUE;
  }
  case 2: {
    /* What the executor marks: the point image of an open snapshot. */
    const char *name = random_snapshot(rand, st);
    if (name == NULL)
      return FALSE;
    const PlanSnapshot *snapshot = plan_state_find_snapshot(st, name);
    for (guint i = 0; i < snapshot->disks->len; i++) {
      const PlanSnapshotDisk *sd = snapshot->disks->pdata[i];
      PlanDisk *disk = plan_state_find_disk(st, sd->target);
      sim_pin(sim, sd->target, plan_disk_find_image(disk, sd->overlay)->backing);
    }
    return TRUE;
  }
  case 3:
    /* A reader of @now: the daemon froze the present under a temporary
     * overlay, so everything below the active image is open. */
    for (guint i = 0; i < st->disks->len; i++) {
      PlanDisk *disk = st->disks->pdata[i];
      PlanImage *active = plan_disk_find_image(disk, disk->active);
      for (PlanImage *image = plan_disk_find_image(disk, active->backing); image != NULL;
           image = plan_disk_find_image(disk, image->backing))
        sim_pin(sim, disk->target, image->path);
    }
    return TRUE;
  default:
    return FALSE;
  }
}

static void
count_steps(const Plan *plan, Stats *stats)
{
  stats->plans++;
  for (guint i = 0; i < plan->steps->len; i++) {
    const PlanStep *step = plan->steps->pdata[i];
    stats->block_jobs += step->block_job;
    switch (step->kind) {
    case PLAN_STEP_COMMIT:
      stats->commits++;
      break;
    case PLAN_STEP_ACTIVE_COMMIT:
      stats->active_commits++;
      break;
    case PLAN_STEP_PULL:
      stats->pulls++;
      break;
    case PLAN_STEP_REBASE_UNSAFE:
      stats->rebases++;
      break;
    case PLAN_STEP_CREATE_OVERLAY:
      stats->creates++;
      break;
    case PLAN_STEP_DELETE_FILE:
      stats->deletes++;
      break;
    default:
      break;
    }
  }
  for (guint i = 0; i < plan->choices->len; i++) {
    const PlanChoice *c = plan->choices->pdata[i];
    stats->deferred += c->chosen == PLAN_MERGE_NONE;
    /* The choice is the cheaper of the safe ones. */
    if (c->commit_safe && c->pull_safe) {
      if (c->chosen == PLAN_MERGE_COMMIT)
        g_assert_cmpuint(c->commit_bytes, <=, c->pull_bytes);
      else
        g_assert_cmpuint(c->pull_bytes, <=, c->commit_bytes);
    }
    g_assert_true(c->chosen != PLAN_MERGE_COMMIT || c->commit_safe);
    g_assert_true(c->chosen != PLAN_MERGE_PULL || c->pull_safe);
  }
}

static const char *
op_name(PlanOpKind kind)
{
  return kind == PLAN_OP_DELETE ? "delete" : kind == PLAN_OP_RENAME ? "rename" : "revert";
}

static gboolean
any_pinned(const PlanState *st)
{
  for (guint i = 0; i < st->disks->len; i++) {
    PlanDisk *disk = st->disks->pdata[i];
    for (guint j = 0; j < disk->images->len; j++)
      if (((PlanImage *)disk->images->pdata[j])->pinned)
        return TRUE;
  }
  return FALSE;
}

static guint
max_children(const PlanState *st)
{
  guint best = 0;
  for (guint i = 0; i < st->disks->len; i++) {
    PlanDisk *disk = st->disks->pdata[i];
    for (guint j = 0; j < disk->images->len; j++) {
      guint n = 0;
      for (guint k = 0; k < disk->images->len; k++)
        n += g_strcmp0(((PlanImage *)disk->images->pdata[k])->backing,
                       ((PlanImage *)disk->images->pdata[j])->path) == 0;
      best = MAX(best, n);
    }
  }
  return best;
}

/* Plans, executes and checks one operation; FALSE with the reason. */
static gboolean
do_op(Sim *sim, const PlanOp *op, gboolean twice, GRand *rand, Stats *stats, GError **error)
{
  g_autoptr(GError) local = NULL;
  gboolean pinned = any_pinned(sim_state(sim));
  g_autoptr(SimExpect) expect = sim_expect(sim, op);
  g_autoptr(Plan) plan = planner_plan(sim_state(sim), op, &local);

  if (plan == NULL) {
    if (g_error_matches(local, PLANNER_ERROR, EBUSY)) {
      stats->ebusy++;
      if (op->kind == PLAN_OP_REVERT && sim_running(sim))
        return TRUE;
      if (!pinned) {
        g_propagate_prefixed_error(error, g_steal_pointer(&local), "EBUSY without readers: ");
        return FALSE;
      }
      /* Without the readers the same operation must go through. */
      sim_unpin_all(sim);
      return do_op(sim, op, twice, rand, stats, error);
    }
    if (g_error_matches(local, PLANNER_ERROR, EEXIST) && op->kind == PLAN_OP_RENAME &&
        plan_state_find_snapshot(sim_state(sim), op->new_name) != NULL) {
      stats->eexist++;
      return TRUE;
    }
    g_propagate_error(error, g_steal_pointer(&local));
    return FALSE;
  }
  count_steps(plan, stats);
  gboolean normal = !pinned && (op->kind != PLAN_OP_RENAME || !stats->dirty);
  if (normal)
    stats->dirty = FALSE;
  for (guint i = 0; i < plan->choices->len; i++)
    if (((PlanChoice *)plan->choices->pdata[i])->chosen == PLAN_MERGE_NONE)
      stats->dirty = TRUE;

  g_autofree char *text = plan_steps_to_text(plan->steps);
  if (g_getenv("VIRTSNAPFS_MODEL_TRACE") != NULL)
    g_printerr("== %s %s%s%s running=%d readers=%d\n%s", op_name(op->kind), op->name,
               op->new_name ? " -> " : "", op->new_name ? op->new_name : "", sim_running(sim),
               pinned, text);
  g_autoptr(GPtrArray) parsed = plan_steps_from_text(text, &local);
  if (parsed == NULL) {
    g_propagate_error(error, g_steal_pointer(&local));
    return FALSE;
  }
  g_autofree char *again = plan_steps_to_text(parsed);
  g_assert_cmpstr(text, ==, again);

  /* Half the plans crash in one step and are resumed there. */
  if (plan->steps->len > 0 && g_rand_boolean(rand))
    sim_crash_at(sim, (guint)g_rand_int_range(rand, 0, (gint32)plan->steps->len));
  if (!sim_run(sim, plan, twice, error) || !sim_check(sim, expect, plan, normal, error)) {
    g_prefix_error(error, "plan:\n%s", text);
    return FALSE;
  }
  return TRUE;
}

static gboolean
run_sequence(guint32 seed, Stats *stats, GError **error)
{
  g_autoptr(GRand) rand = g_rand_new_with_seed(seed);
  g_autoptr(Sim) sim = sim_new(NCLUSTERS);
  guint disks = (guint)g_rand_int_range(rand, 1, 3);
  gboolean twice = seed % 2;
  gint64 now = 1800000000;
  guint counter = 0;
  stats->dirty = FALSE;

  /* One sequence in eight runs on a template base other domains share. */
  gboolean shared_base = g_rand_int_range(rand, 0, 8) == 0;
  for (guint d = 0; d < disks; d++) {
    g_autofree char *target = g_strdup_printf("vd%c", 'a' + d);
    g_autofree char *base = g_strdup_printf("/img/%s-base", target);
    sim_add_disk(sim, target, g_rand_boolean(rand) ? CHAIN_FORMAT_RAW : CHAIN_FORMAT_QCOW2);
    if (shared_base)
      sim_share(sim, target, base);
    for (guint c = 0; c < NCLUSTERS; c++)
      if (g_rand_boolean(rand))
        sim_write(sim, target, c, g_rand_int_range(rand, 1, 1000));
  }

  for (guint i = 0; i < OPS; i++) {
    const PlanState *st = sim_state(sim);
    guint pick = (guint)g_rand_int_range(rand, 0, 100);
    now += g_rand_int_range(rand, 0, 2);
    PlanOp op = { .now = now };
    g_autofree char *new_name = NULL;

    if (pick < 25) {
      guint d = (guint)g_rand_int_range(rand, 0, (gint32)disks);
      g_autofree char *target = g_strdup_printf("vd%c", 'a' + d);
      for (gint n = g_rand_int_range(rand, 1, 5); n > 0; n--)
        sim_write(sim, target, (guint)g_rand_int_range(rand, 0, NCLUSTERS), g_rand_int_range(rand, 1, 1000));
      continue;
    }
    if (pick < 47 || st->snapshots->len == 0) {
      g_autofree char *name = g_strdup_printf("s%u", counter++);
      /* Now and then a snapshot leaves a disk out. */
      guint mask = disks > 1 && g_rand_int_range(rand, 0, 5) == 0 ? 1u << g_rand_int_range(rand, 0, 2)
                                                                   : G_MAXUINT;
      sim_snapshot_disks(sim, name, mask);
      continue;
    }
    if (pick < 52) {
      sim_set_running(sim, !sim_running(sim));
      continue;
    }

    op.name = random_snapshot(rand, st);
    if (pick < 75) {
      op.kind = PLAN_OP_DELETE;
    } else if (pick < 82) {
      op.kind = PLAN_OP_RENAME;
      new_name = g_rand_int_range(rand, 0, 4) == 0 ? g_strdup(random_snapshot(rand, st))
                                                   : g_strdup_printf("r%u", counter++);
      op.new_name = new_name;
      stats->renames++;
    } else {
      op.kind = PLAN_OP_REVERT;
      op.discard = g_rand_boolean(rand);
      stats->reverts++;
    }
    g_autofree char *name = g_strdup(op.name);
    op.name = name;

    random_pins(rand, sim);
    if (!do_op(sim, &op, twice, rand, stats, error)) {
      g_prefix_error(error, "op %u (%s %s): ", i, op_name(op.kind), op.name);
      return FALSE;
    }
    sim_unpin_all(sim);
    if (max_children(sim_state(sim)) > 1)
      stats->branches++;
  }

  /* Deleting every snapshot, without readers, leaves one file per disk:
   * nothing leaks.  (One more snapshot makes sure a plan runs, to merge
   * what readers kept the last ones from merging.) */
  sim_snapshot(sim, "final");
  sim_set_running(sim, g_rand_boolean(rand));
  for (;;) {
    const PlanState *st = sim_state(sim);
    if (st->snapshots->len == 0)
      break;
    g_autofree char *name = g_strdup(random_snapshot(rand, st));
    PlanOp op = { .kind = PLAN_OP_DELETE, .name = name, .now = ++now };
    if (!do_op(sim, &op, twice, rand, stats, error)) {
      g_prefix_error(error, "final delete of %s: ", name);
      return FALSE;
    }
  }
  for (guint d = 0; d < disks; d++) {
    g_autofree char *target = g_strdup_printf("vd%c", 'a' + d);
    const PlanDisk *disk = plan_state_find_disk(sim_state(sim), target);
    guint want = shared_base && !g_str_has_suffix(disk->active, "-base") ? 2 : 1;
    if (sim_image_count(sim, target) != want) {
      g_autoptr(GString) files = g_string_new(NULL);
      for (guint j = 0; j < disk->images->len; j++) {
        const PlanImage *image = disk->images->pdata[j];
        g_string_append_printf(files, " %s%s<-%s", image->path, image->pinned ? "(pinned)" : "",
                               image->backing ? image->backing : "");
      }
      g_set_error(error, PLANNER_ERROR, 0, "%s keeps %u files without snapshots (active %s):%s",
                  target, sim_image_count(sim, target), disk->active, files->str);
      return FALSE;
    }
  }
  return TRUE;
}

static void
test_model(void)
{
  Stats stats = { 0 };
  const char *only = g_getenv("VIRTSNAPFS_MODEL_SEED");
  const char *many = g_getenv("VIRTSNAPFS_MODEL_COUNT");
  guint32 first = only ? (guint32)strtoul(only, NULL, 10) : 1;
  guint32 count = many ? (guint32)strtoul(many, NULL, 10) : only ? 1 : SEQUENCES;

  for (guint32 seed = first; seed < first + count; seed++) {
    g_autoptr(GError) error = NULL;
    if (!run_sequence(seed, &stats, &error)) {
      g_test_message("seed %u: %s", seed, error->message);
      g_test_fail();
      return;
    }
  }
  g_test_message("%u plans: %u commits, %u active commits, %u pulls (%u block jobs), %u rebases, "
                 "%u overlays created, %u files deleted; %u EBUSY, %u merges deferred, %u EEXIST, "
                 "%u reverts, %u renames, %u states with branches",
                 stats.plans, stats.commits, stats.active_commits, stats.pulls, stats.block_jobs,
                 stats.rebases, stats.creates, stats.deletes, stats.ebusy, stats.deferred, stats.eexist,
                 stats.reverts, stats.renames, stats.branches);
  if (count >= 1000) {
    /* The generator reaches every kind of plan. */
    g_assert_cmpuint(stats.commits, >, 0);
    g_assert_cmpuint(stats.active_commits, >, 0);
    g_assert_cmpuint(stats.pulls, >, 0);
    g_assert_cmpuint(stats.block_jobs, >, 0);
    g_assert_cmpuint(stats.rebases, >, 0);
    g_assert_cmpuint(stats.ebusy, >, 0);
    g_assert_cmpuint(stats.deferred, >, 0);
    g_assert_cmpuint(stats.eexist, >, 0);
    g_assert_cmpuint(stats.branches, >, 0);
  }
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/planner/model/random-sequences", test_model);
  return g_test_run();
}
