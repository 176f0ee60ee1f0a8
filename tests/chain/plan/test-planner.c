/* test-planner.c: table-driven tests of planner_plan().
 *
 * Each case builds a domain in the simulator (sim.c), plans one operation,
 * compares the plan's step kinds (a "signature": kinds in order, '@' after
 * a block job) and its merge choice with the table, then executes the plan
 * in the simulator, twice per step as crash recovery would, and checks
 * that every remaining point in time and the present read as before.
 *
 * The standard chain: disk vda, base image /img/vda-base, snapshots s1..sN
 * taken in order, so /img/vda.sK is O(sK) and the active image is the last
 * one.  masks[0] is written into the base before s1, masks[K] into
 * /img/vda.sK after sK ('1' = a cluster gets new data).
 */
#include <errno.h>
#include <string.h>

#include "sim.h"

#define NCLUSTERS 8

static char *
signature(const Plan *plan)
{
  GString *s = g_string_new(NULL);
  for (guint i = 0; i < plan->steps->len; i++) {
    const PlanStep *step = plan->steps->pdata[i];
    if (i > 0)
      g_string_append_c(s, ' ');
    g_string_append(s, plan_step_kind_name(step->kind));
    if (step->block_job)
      g_string_append_c(s, '@');
  }
  return g_string_free(s, FALSE);
}

static const PlanStep *
find_step(const Plan *plan, PlanStepKind kind, guint nth)
{
  for (guint i = 0; i < plan->steps->len; i++) {
    const PlanStep *step = plan->steps->pdata[i];
    if (step->kind == kind && nth-- == 0)
      return step;
  }
  return NULL;
}

static Sim *
build_chain(guint layers, const char *const *masks, ChainFormat base_format, gboolean running)
{
  Sim *sim = sim_new(NCLUSTERS);
  sim_add_disk(sim, "vda", base_format);
  if (masks[0])
    sim_write_mask(sim, "vda", masks[0]);
  for (guint i = 1; i <= layers; i++) {
    g_autofree char *name = g_strdup_printf("s%u", i);
    sim_snapshot(sim, name);
    if (masks[i])
      sim_write_mask(sim, "vda", masks[i]);
  }
  sim_set_running(sim, running);
  return sim;
}

/* Plans op on sim; on success runs and checks the plan and returns it. */
static Plan *
plan_and_run(Sim *sim, const PlanOp *op, GError **error)
{
  g_autoptr(SimExpect) expect = sim_expect(sim, op);
  g_autoptr(Plan) plan = planner_plan(sim_state(sim), op, error);
  if (plan == NULL)
    return NULL;

  /* after owns no maps: the planner's own ones are freed with it. */
  for (guint i = 0; i < plan->after->disks->len; i++) {
    const PlanDisk *disk = plan->after->disks->pdata[i];
    for (guint j = 0; j < disk->images->len; j++)
      g_assert_null(((PlanImage *)disk->images->pdata[j])->allocation);
  }

  /* Journal lines must give the same plan back. */
  g_autofree char *text = plan_steps_to_text(plan->steps);
  g_autoptr(GError) perr = NULL;
  g_autoptr(GPtrArray) parsed = plan_steps_from_text(text, &perr);
  g_assert_no_error(perr);
  g_autofree char *again = plan_steps_to_text(parsed);
  g_assert_cmpstr(text, ==, again);

  g_autoptr(GError) run_error = NULL;
  if (!sim_run(sim, plan, TRUE, &run_error) || !sim_check(sim, expect, plan, FALSE, &run_error)) {
    g_test_message("plan:\n%s", text);
    g_assert_no_error(run_error);
  }
  return g_steal_pointer(&plan);
}

/* ------------------------------------------------------------------ */
/* Deleting one point of a linear chain.                               */

typedef struct {
  const char *name;
  gboolean running;
  ChainFormat base_format;
  guint layers;
  const char *masks[6];
  const char *del;
  const char *pins;     /* space-separated files to pin */
  int error;
  PlanMerge merge;      /* the choice for the deleted point's layer */
  const char *steps;
} DeleteCase;

static const DeleteCase delete_cases[] = {
  /* s2's point /img/vda.s1 (F) has one child /img/vda.s2 (C), an
   * intermediate layer. */
  { "commit-small-child", FALSE, CHAIN_FORMAT_QCOW2, 3, { "11110000", "11111111", "10000000", "00000001" },
    "s2", NULL, 0, PLAN_MERGE_COMMIT, "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file" },
  { "pull-big-child", FALSE, CHAIN_FORMAT_QCOW2, 3, { "11110000", "10000000", "01111111", "00000001" },
    "s2", NULL, 0, PLAN_MERGE_PULL,
    "pull delete-snapshot redefine-snapshot redefine-snapshot delete-file" },
  { "pull-overlapping-child", FALSE, CHAIN_FORMAT_QCOW2, 3, { NULL, "11111100", "11111110", NULL },
    "s2", NULL, 0, PLAN_MERGE_PULL,
    "pull delete-snapshot redefine-snapshot redefine-snapshot delete-file" },
  { "tie-intermediate-commits", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "10000000", "01000000", NULL },
    "s2", NULL, 0, PLAN_MERGE_COMMIT, "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file" },
  { "tie-empty-commits", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", NULL, NULL, NULL },
    "s2", NULL, 0, PLAN_MERGE_COMMIT, "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file" },
  { "running-intermediate-small-child", TRUE, CHAIN_FORMAT_QCOW2, 3, { "1", "11111111", "10000000", NULL },
    "s2", NULL, 0, PLAN_MERGE_COMMIT, "commit@ delete-snapshot redefine-snapshot delete-file" },
  { "running-intermediate-commit-only", TRUE, CHAIN_FORMAT_QCOW2, 3, { "1", "10000000", "01111111", NULL },
    "s2", NULL, 0, PLAN_MERGE_COMMIT, "commit@ delete-snapshot redefine-snapshot delete-file" },

  /* s3's point /img/vda.s2 has the active image as its only child. */
  { "active-commit-offline", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", "11111111", "00000001" },
    "s3", NULL, 0, PLAN_MERGE_COMMIT, "commit delete-snapshot set-current set-active delete-file" },
  { "active-pull-offline", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", "00000001", "11111110" },
    "s3", NULL, 0, PLAN_MERGE_PULL,
    "pull delete-snapshot redefine-snapshot set-current delete-file" },
  { "active-commit-running", TRUE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", "11111111", "00000001" },
    "s3", NULL, 0, PLAN_MERGE_COMMIT,
    "active-commit@ delete-snapshot set-current set-active delete-file" },
  { "active-pull-running", TRUE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", "00000001", "11111110" },
    "s3", NULL, 0, PLAN_MERGE_PULL, "pull@ delete-snapshot redefine-snapshot set-current delete-file" },
  { "active-tie-running-pulls", TRUE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", "00000011", "00001100" },
    "s3", NULL, 0, PLAN_MERGE_PULL, "pull@ delete-snapshot redefine-snapshot set-current delete-file" },
  { "active-tie-offline-pulls", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", NULL, NULL },
    "s3", NULL, 0, PLAN_MERGE_PULL, "pull delete-snapshot redefine-snapshot set-current delete-file" },

  /* Readers. */
  { "pinned-F-forces-pull", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "11111111", "10000000", NULL },
    "s2", "/img/vda.s1", 0, PLAN_MERGE_PULL,
    "pull delete-snapshot redefine-snapshot redefine-snapshot delete-file" },
  { "pinned-C-forces-commit", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "10000000", "01111111", NULL },
    "s2", "/img/vda.s2", 0, PLAN_MERGE_COMMIT,
    "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file" },
  { "pinned-both-ebusy", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", "1", NULL },
    "s2", "/img/vda.s1 /img/vda.s2", EBUSY, PLAN_MERGE_NONE, NULL },
  { "pinned-F-running-intermediate-ebusy", TRUE, CHAIN_FORMAT_QCOW2, 3, { "1", "1", "1", NULL },
    "s2", "/img/vda.s1", EBUSY, PLAN_MERGE_NONE, NULL },
  { "pinned-F-running-active-pulls", TRUE, CHAIN_FORMAT_QCOW2, 3, { "1", "11111111", "11111111", "1" },
    "s3", "/img/vda.s2", 0, PLAN_MERGE_PULL,
    "pull@ delete-snapshot redefine-snapshot set-current delete-file" },
  { "pinned-C-running-active-commits", TRUE, CHAIN_FORMAT_QCOW2, 2, { "1", "1", "11111111" },
    "s2", "/img/vda.s2", 0, PLAN_MERGE_COMMIT,
    "active-commit@ delete-snapshot set-current set-active delete-file" },
  /* A reader of s4's point (vda.s3) reads through C and F: C hides from
   * it what a commit writes into F, but a pull would write C. */
  { "reader-above-C-commits", FALSE, CHAIN_FORMAT_QCOW2, 4, { "1", "10000000", "01111111", "1", "1" },
    "s2", "/img/vda.s3", 0, PLAN_MERGE_COMMIT,
    "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file" },
  /* The same reader with every layer of its chain marked: cautious. */
  { "whole-chain-pinned-ebusy", FALSE, CHAIN_FORMAT_QCOW2, 4, { "1", "10000000", "01111111", "1", "1" },
    "s2", "/img/vda.s3 /img/vda.s2 /img/vda.s1 /img/vda-base", EBUSY, PLAN_MERGE_NONE, NULL },
  { "pinned-elsewhere-irrelevant", FALSE, CHAIN_FORMAT_QCOW2, 3, { "1", "11111111", "10000000", NULL },
    "s2", "/img/vda-base /img/vda.s3", 0, PLAN_MERGE_COMMIT,
    "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file" },

  /* The first point in time: F is the base. */
  { "base-raw-commit", FALSE, CHAIN_FORMAT_RAW, 2, { "11111111", "00000001", NULL },
    "s1", NULL, 0, PLAN_MERGE_COMMIT, "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file" },
  { "base-flatten-pull", FALSE, CHAIN_FORMAT_RAW, 2, { "11111111", "11111110", NULL },
    "s1", NULL, 0, PLAN_MERGE_PULL, "pull delete-snapshot redefine-snapshot delete-file" },
  { "base-running-intermediate", TRUE, CHAIN_FORMAT_QCOW2, 2, { "11111111", "11111110", NULL },
    "s1", NULL, 0, PLAN_MERGE_COMMIT, "commit@ delete-snapshot redefine-snapshot delete-file" },
  { "base-only-snapshot-running-flatten", TRUE, CHAIN_FORMAT_QCOW2, 1, { "11111111", "11111110" },
    "s1", NULL, 0, PLAN_MERGE_PULL, "pull@ delete-snapshot delete-file" },
  { "base-only-snapshot-commit", FALSE, CHAIN_FORMAT_RAW, 1, { "11111111", "00000010" },
    "s1", NULL, 0, PLAN_MERGE_COMMIT, "commit delete-snapshot set-active delete-file" },
  { "base-pinned-running-flatten", TRUE, CHAIN_FORMAT_QCOW2, 1, { "11111111", "00000010" },
    "s1", "/img/vda-base", 0, PLAN_MERGE_PULL, "pull@ delete-snapshot delete-file" },
};

static void
test_delete_case(gconstpointer data)
{
  const DeleteCase *tc = data;
  g_autoptr(Sim) sim = build_chain(tc->layers, tc->masks, tc->base_format, tc->running);
  if (tc->pins != NULL) {
    g_auto(GStrv) pins = g_strsplit(tc->pins, " ", -1);
    for (guint i = 0; pins[i]; i++)
      sim_pin(sim, "vda", pins[i]);
  }

  PlanOp op = { .kind = PLAN_OP_DELETE, .name = tc->del, .now = 1800000000 };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  if (tc->error != 0) {
    g_assert_error(error, PLANNER_ERROR, tc->error);
    g_assert_null(plan);
    g_assert_nonnull(strstr(error->message, tc->del));
    return;
  }
  g_assert_no_error(error);
  g_autofree char *sig = signature(plan);
  g_assert_cmpstr(sig, ==, tc->steps);

  g_assert_cmpuint(plan->choices->len, ==, 1);
  const PlanChoice *choice = plan->choices->pdata[0];
  g_assert_cmpint(choice->chosen, ==, tc->merge);
  g_assert_nonnull(choice->reason);
  g_test_message("%s: %s", tc->name, choice->reason);

  /* Exactly one file left the chain, and it is F or C. */
  const PlanStep *del = find_step(plan, PLAN_STEP_DELETE_FILE, 0);
  g_assert_nonnull(del);
  g_assert_null(find_step(plan, PLAN_STEP_DELETE_FILE, 1));
  g_assert_cmpstr(del->image, ==, tc->merge == PLAN_MERGE_COMMIT ? choice->child : choice->layer);
  g_assert_false(sim_has_file(sim, "vda", del->image));
  g_assert_null(plan_state_find_snapshot(plan->after, tc->del));
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, tc->layers);
}

/* The daemon may prefer EBUSY for an open point to planning around it. */
static void
test_delete_refuse_open(void)
{
  const char *masks[] = { "1", "11111111", "10000000", NULL };
  g_autoptr(Sim) sim = build_chain(3, masks, CHAIN_FORMAT_QCOW2, FALSE);
  sim_pin(sim, "vda", "/img/vda.s1");
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s2", .refuse_open = TRUE };
  g_autoptr(GError) error = NULL;
  g_assert_null(planner_plan(sim_state(sim), &op, &error));
  g_assert_error(error, PLANNER_ERROR, EBUSY);
  g_assert_nonnull(strstr(error->message, "/img/vda.s1 is open for reading"));
  g_clear_error(&error);
  /* A reader elsewhere does not count. */
  sim_unpin_all(sim);
  sim_pin(sim, "vda", "/img/vda.s2");
  plan_free(plan_and_run(sim, &op, &error));
  g_assert_no_error(error);
}

/* The costs reported for the log are the bytes each direction moves. */
static void
test_delete_costs(void)
{
  const char *masks[] = { "1", "11110000", "00111111", "1" };
  g_autoptr(Sim) sim = build_chain(3, masks, CHAIN_FORMAT_QCOW2, FALSE);
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s2" };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = planner_plan(sim_state(sim), &op, &error);
  g_assert_no_error(error);
  const PlanChoice *choice = plan->choices->pdata[0];
  g_assert_cmpstr(choice->disk, ==, "vda");
  g_assert_cmpstr(choice->layer, ==, "/img/vda.s1");
  g_assert_cmpstr(choice->child, ==, "/img/vda.s2");
  g_assert_cmpuint(choice->commit_bytes, ==, 6 * SIM_GRANULARITY);
  g_assert_cmpuint(choice->pull_bytes, ==, 2 * SIM_GRANULARITY);
  g_assert_true(choice->commit_safe && choice->pull_safe);
  g_assert_cmpint(choice->chosen, ==, PLAN_MERGE_PULL);

  /* The pull: vda.s2 onto the base, s1 now names vda.s2. */
  const PlanStep *pull = find_step(plan, PLAN_STEP_PULL, 0);
  g_assert_cmpstr(pull->disk, ==, "vda");
  g_assert_cmpstr(pull->image, ==, "/img/vda.s2");
  g_assert_cmpstr(pull->backing, ==, "/img/vda-base");
  g_assert_cmpint(pull->backing_format, ==, CHAIN_FORMAT_QCOW2);
  g_assert_false(pull->block_job);
  const PlanSnapshot *s1 = plan_state_find_snapshot(plan->after, "s1");
  g_assert_cmpstr(plan_snapshot_overlay(s1, "vda"), ==, "/img/vda.s2");
  g_assert_cmpstr(plan_snapshot_find_disk(s1, "vda")->point, ==, "/img/vda-base");
  const PlanSnapshot *s3 = plan_state_find_snapshot(plan->after, "s3");
  g_assert_cmpstr(s3->parent, ==, "s1");
  g_assert_cmpstr(plan_snapshot_find_disk(s3, "vda")->point, ==, "/img/vda.s2");
  g_assert_true(s3->current);
  const PlanStep *redefine = find_step(plan, PLAN_STEP_REDEFINE_SNAPSHOT, 0);
  g_assert_cmpstr(redefine->snapshot, ==, "s1");
  g_assert_cmpstr(plan_snapshot_overlay(redefine->definition, "vda"), ==, "/img/vda.s2");
}

/* The commit of an intermediate layer: top, base, and the child rebased. */
static void
test_delete_commit_fields(void)
{
  const char *masks[] = { "1", "11111111", "1", "1" };
  g_autoptr(Sim) sim = build_chain(3, masks, CHAIN_FORMAT_RAW, FALSE);
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s2" };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  const PlanStep *commit = find_step(plan, PLAN_STEP_COMMIT, 0);
  g_assert_cmpstr(commit->image, ==, "/img/vda.s2");
  g_assert_cmpstr(commit->backing, ==, "/img/vda.s1");
  g_assert_cmpint(commit->format, ==, CHAIN_FORMAT_QCOW2);
  const PlanStep *rebase = find_step(plan, PLAN_STEP_REBASE_UNSAFE, 0);
  g_assert_cmpstr(rebase->image, ==, "/img/vda.s3");
  g_assert_cmpstr(rebase->backing, ==, "/img/vda.s1");
  /* s3's overlay is unchanged but its point is now vda.s1. */
  const PlanStep *redefine = find_step(plan, PLAN_STEP_REDEFINE_SNAPSHOT, 0);
  g_assert_cmpstr(redefine->snapshot, ==, "s3");
  g_assert_cmpstr(redefine->definition->parent, ==, "s1");
  g_assert_cmpstr(plan_snapshot_find_disk(redefine->definition, "vda")->point, ==, "/img/vda.s1");
  g_assert_cmpstr(find_step(plan, PLAN_STEP_DELETE_FILE, 0)->image, ==, "/img/vda.s2");
  /* Files go last, after every metadata step. */
  g_assert_true(plan->steps->pdata[plan->steps->len - 1] == find_step(plan, PLAN_STEP_DELETE_FILE, 0));
}

/* Running: an intermediate layer off the running chain is merged with
 * qemu-img even though the domain runs. */
static void
test_delete_offline_branch_while_running(void)
{
  const char *masks[] = { "1", "11111111", "1", NULL };
  g_autoptr(Sim) sim = build_chain(2, masks, CHAIN_FORMAT_QCOW2, FALSE);
  /* Revert to s1 (keeping the present), then run. */
  PlanOp revert = { .kind = PLAN_OP_REVERT, .name = "s1", .now = 1800000000 };
  g_autoptr(GError) error = NULL;
  plan_free(plan_and_run(sim, &revert, &error));
  g_assert_no_error(error);
  g_autofree char *kept = planner_pre_revert_name(1800000000);
  sim_write_mask(sim, "vda", "00000011");
  sim_set_running(sim, TRUE);

  /* s2's point vda.s1 has one child vda.s2, both off the running chain. */
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s2" };
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  for (guint i = 0; i < plan->steps->len; i++)
    g_assert_false(((PlanStep *)plan->steps->pdata[i])->block_job);
  g_assert_nonnull(find_step(plan, PLAN_STEP_COMMIT, 0));
  g_assert_nonnull(plan_state_find_snapshot(plan->after, kept));
}

/* Running: C is in the running chain and also has a child on another
 * branch.  libvirt moves the running child's pointer; the other one gets
 * an offline pointer-only rebase. */
static void
test_delete_running_commit_with_branch(void)
{
  const char *masks[] = { "1", "11111111", "1", NULL };
  g_autoptr(Sim) sim = build_chain(2, masks, CHAIN_FORMAT_QCOW2, FALSE);
  /* Revert to s2 (point vda.s1): vda.s1 gets a second child. */
  PlanOp revert = { .kind = PLAN_OP_REVERT, .name = "s2", .now = 1800000000 };
  g_autoptr(GError) error = NULL;
  plan_free(plan_and_run(sim, &revert, &error));
  g_assert_no_error(error);
  sim_set_running(sim, TRUE);

  /* s1: F = base, C = vda.s1 (intermediate, running; commit is cheaper). */
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s1" };
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  const PlanStep *commit = find_step(plan, PLAN_STEP_COMMIT, 0);
  g_assert_true(commit->block_job);
  g_assert_cmpstr(commit->image, ==, "/img/vda.s1");
  g_assert_cmpstr(commit->backing, ==, "/img/vda-base");
  const PlanStep *rebase = find_step(plan, PLAN_STEP_REBASE_UNSAFE, 0);
  g_assert_nonnull(rebase);
  g_assert_null(find_step(plan, PLAN_STEP_REBASE_UNSAFE, 1));
  g_assert_false(rebase->block_job);
  g_assert_cmpstr(rebase->image, ==, "/img/vda.s2");
  g_assert_cmpstr(rebase->backing, ==, "/img/vda-base");
}

/* A chain as deep as the reader follows: every other point deleted, on a
 * running domain, in a time that does not grow out of hand. */
static void
test_delete_deep_chain(void)
{
  g_autoptr(Sim) sim = sim_new(NCLUSTERS);
  sim_add_disk(sim, "vda", CHAIN_FORMAT_RAW);
  sim_write_mask(sim, "vda", "11111111");
  for (guint i = 1; i < CHAIN_MAX_DEPTH; i++) {
    g_autofree char *name = g_strdup_printf("s%u", i);
    sim_snapshot(sim, name);
    sim_write(sim, "vda", i % NCLUSTERS, (gint)i);
  }
  sim_set_running(sim, TRUE);
  gint64 start = g_get_monotonic_time();
  for (guint i = 1; i < CHAIN_MAX_DEPTH; i += 2) {
    g_autofree char *name = g_strdup_printf("s%u", i);
    PlanOp op = { .kind = PLAN_OP_DELETE, .name = name };
    g_autoptr(GError) error = NULL;
    plan_free(plan_and_run(sim, &op, &error));
    g_assert_no_error(error);
  }
  g_test_message("%d deletes in a %d-layer chain: %" G_GINT64_FORMAT " ms", CHAIN_MAX_DEPTH / 2,
                 CHAIN_MAX_DEPTH, (g_get_monotonic_time() - start) / 1000);
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, CHAIN_MAX_DEPTH / 2);
}

/* ------------------------------------------------------------------ */
/* Branches.                                                            */

/* base <- vda.s1 <- vda.s2 <- (pre-revert overlay); base <- revert overlay. */
static Sim *
build_branch(void)
{
  const char *masks[] = { "11000000", "00110000", "00001100", NULL };
  Sim *sim = build_chain(2, masks, CHAIN_FORMAT_QCOW2, FALSE);
  PlanOp revert = { .kind = PLAN_OP_REVERT, .name = "s1", .now = 1800000000 };
  g_autoptr(GError) error = NULL;
  plan_free(plan_and_run(sim, &revert, &error));
  g_assert_no_error(error);
  sim_write_mask(sim, "vda", "00000011");
  return sim;
}

static void
test_branch_delete_keeps_shared_layer(void)
{
  g_autoptr(Sim) sim = build_branch();
  g_autofree char *kept = planner_pre_revert_name(1800000000);
  g_autoptr(GError) error = NULL;

  /* s1's point (the base) has two children now: no data moves. */
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s1" };
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  g_autofree char *sig = signature(plan);
  g_assert_cmpstr(sig, ==, "delete-snapshot redefine-snapshot");
  g_assert_cmpuint(plan->choices->len, ==, 0);
  g_assert_true(sim_has_file(sim, "vda", "/img/vda-base"));
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 5);

  /* s2: its point vda.s1 (unnamed now) merges with vda.s2. */
  PlanOp op2 = { .kind = PLAN_OP_DELETE, .name = "s2" };
  g_autoptr(Plan) plan2 = plan_and_run(sim, &op2, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(plan2->choices->len, ==, 1);
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 4);

  /* The pre-revert snapshot: its whole branch is garbage, and the base,
   * left with the running branch only, merges into the active image's
   * chain. */
  PlanOp op3 = { .kind = PLAN_OP_DELETE, .name = kept };
  g_autoptr(Plan) plan3 = plan_and_run(sim, &op3, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 1);
  g_assert_cmpuint(plan3->choices->len, ==, 1);
  const PlanChoice *choice = plan3->choices->pdata[0];
  g_assert_cmpstr(choice->layer, ==, "/img/vda-base");
  /* The active overlay holds 2 clusters, the base 2 it does not hide. */
  g_assert_cmpuint(choice->commit_bytes, ==, 2 * SIM_GRANULARITY);
  g_assert_cmpuint(choice->pull_bytes, ==, 2 * SIM_GRANULARITY);
  g_assert_cmpint(choice->chosen, ==, PLAN_MERGE_PULL);
  g_assert_cmpuint(plan3->after->snapshots->len, ==, 0);
}

/* A branch merge that cannot run now (readers) is left for later, without
 * failing the delete that made it possible. */
static void
test_branch_merge_deferred(void)
{
  g_autoptr(Sim) sim = build_branch();
  g_autofree char *kept = planner_pre_revert_name(1800000000);
  g_autoptr(GError) error = NULL;
  PlanOp del_s1 = { .kind = PLAN_OP_DELETE, .name = "s1" };
  plan_free(plan_and_run(sim, &del_s1, &error));
  g_assert_no_error(error);
  PlanOp del_s2 = { .kind = PLAN_OP_DELETE, .name = "s2" };
  plan_free(plan_and_run(sim, &del_s2, &error));
  g_assert_no_error(error);

  /* Delete the kept present while a reader has the base and the active
   * image open: the base cannot be merged now. */
  const PlanState *st = sim_state(sim);
  const char *active = plan_state_find_disk(st, "vda")->active;
  sim_pin(sim, "vda", "/img/vda-base");
  sim_pin(sim, "vda", active);
  PlanOp del = { .kind = PLAN_OP_DELETE, .name = kept };
  g_autoptr(SimExpect) expect = sim_expect(sim, &del);
  g_autoptr(Plan) p2 = planner_plan(sim_state(sim), &del, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(p2->choices->len, ==, 1);
  const PlanChoice *c = p2->choices->pdata[0];
  g_assert_cmpint(c->chosen, ==, PLAN_MERGE_NONE);
  g_assert_cmpstr(c->layer, ==, "/img/vda-base");
  g_assert_true(sim_run(sim, p2, FALSE, &error));
  g_assert_true(sim_check(sim, expect, p2, FALSE, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 2);

  /* Once the reader is gone from the base, the next plan merges it too.
   * A reader still has the old active image N open: committing N into the
   * base is fine (N hides those clusters from it), but the reader keeps
   * reading the base under N, so the second merge must not write clusters
   * of s4 into the base: it pulls into the new active image instead. */
  g_autofree char *n = g_strdup(active);
  sim_unpin_all(sim);
  sim_snapshot(sim, "s4");
  sim_write_mask(sim, "vda", "00000001");
  sim_pin(sim, "vda", n);
  PlanOp del_s4 = { .kind = PLAN_OP_DELETE, .name = "s4" };
  g_autoptr(Plan) p3 = plan_and_run(sim, &del_s4, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(p3->choices->len, ==, 2);
  const PlanChoice *first = p3->choices->pdata[0], *second = p3->choices->pdata[1];
  g_assert_cmpstr(first->layer, ==, "/img/vda-base");
  g_assert_cmpint(first->chosen, ==, PLAN_MERGE_COMMIT);
  g_assert_cmpint(second->chosen, ==, PLAN_MERGE_PULL);
  g_assert_false(second->commit_safe);
  g_assert_nonnull(strstr(second->reason, "/img/vda-base is open for reading (under "));
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 1);
}

/* ------------------------------------------------------------------ */
/* Several disks.                                                       */

static void
test_multi_disk(void)
{
  g_autoptr(Sim) sim = sim_new(NCLUSTERS);
  sim_add_disk(sim, "vda", CHAIN_FORMAT_QCOW2);
  sim_add_disk(sim, "vdb", CHAIN_FORMAT_RAW);
  sim_write_mask(sim, "vda", "11111111");
  sim_write_mask(sim, "vdb", "11111111");
  sim_snapshot(sim, "s1");
  sim_write_mask(sim, "vda", "11111111"); /* vda: F = base full, C full: pull 0 */
  sim_write_mask(sim, "vdb", "00000001"); /* vdb: C small: commit */
  sim_snapshot(sim, "s2");
  sim_write_mask(sim, "vda", "1");
  sim_write_mask(sim, "vdb", "1");

  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s1" };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(plan->choices->len, ==, 2);
  for (guint i = 0; i < 2; i++) {
    const PlanChoice *c = plan->choices->pdata[i];
    if (strcmp(c->disk, "vda") == 0)
      g_assert_cmpint(c->chosen, ==, PLAN_MERGE_PULL);
    else
      g_assert_cmpint(c->chosen, ==, PLAN_MERGE_COMMIT);
  }
  /* One redefinition of s2 carries both disks. */
  const PlanStep *redefine = find_step(plan, PLAN_STEP_REDEFINE_SNAPSHOT, 0);
  g_assert_null(find_step(plan, PLAN_STEP_REDEFINE_SNAPSHOT, 1));
  g_assert_cmpuint(redefine->definition->disks->len, ==, 2);
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 2);
  g_assert_cmpuint(sim_image_count(sim, "vdb"), ==, 2);
}

/* One disk pinned on both sides refuses the whole operation. */
static void
test_multi_disk_ebusy(void)
{
  g_autoptr(Sim) sim = sim_new(NCLUSTERS);
  sim_add_disk(sim, "vda", CHAIN_FORMAT_QCOW2);
  sim_add_disk(sim, "vdb", CHAIN_FORMAT_QCOW2);
  sim_snapshot(sim, "s1");
  sim_snapshot(sim, "s2");
  sim_pin(sim, "vdb", "/img/vdb-base");
  sim_pin(sim, "vdb", "/img/vdb.s1");
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s1" };
  g_autoptr(GError) error = NULL;
  g_assert_null(planner_plan(sim_state(sim), &op, &error));
  g_assert_error(error, PLANNER_ERROR, EBUSY);
  g_assert_nonnull(strstr(error->message, "vdb"));
  g_assert_nonnull(strstr(error->message, "open for reading"));
}

static void
test_unsupported_disk(void)
{
  g_autoptr(Sim) sim = sim_new(NCLUSTERS);
  sim_add_disk(sim, "vda", CHAIN_FORMAT_QCOW2);
  sim_snapshot(sim, "s1");
  g_autoptr(PlanState) st = plan_state_copy(sim_state(sim));
  PlanDisk *net = plan_state_add_disk(st, "vdb", NULL);
  net->unsupported = g_strdup("network disk");

  /* A snapshot that does not cover it: fine. */
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s1" };
  g_autoptr(GError) error = NULL;
  plan_free(planner_plan(st, &op, &error));
  g_assert_no_error(error);

  /* One that does: EOPNOTSUPP, for delete and revert. */
  plan_snapshot_set_overlay(plan_state_find_snapshot(st, "s1"), "vdb", "nbd://x");
  g_assert_null(planner_plan(st, &op, &error));
  g_assert_error(error, PLANNER_ERROR, EOPNOTSUPP);
  g_assert_nonnull(strstr(error->message, "network disk"));
  g_clear_error(&error);
  PlanOp rev = { .kind = PLAN_OP_REVERT, .name = "s1" };
  g_assert_null(planner_plan(st, &rev, &error));
  g_assert_error(error, PLANNER_ERROR, EOPNOTSUPP);
}

/* A template base shared with other domains is never written or deleted. */
static void
test_shared_base(void)
{
  const char *masks[] = { "11111111", "1", "1" };
  g_autoptr(Sim) sim = build_chain(2, masks, CHAIN_FORMAT_QCOW2, FALSE);
  sim_share(sim, "vda", "/img/vda-base");
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s1" };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  g_autofree char *sig = signature(plan);
  g_assert_cmpstr(sig, ==, "delete-snapshot redefine-snapshot");
  g_assert_true(sim_has_file(sim, "vda", "/img/vda-base"));
}

/* An input that is not in normal form (an unnamed layer /u left by some
 * other tool) gets tidied up too, but a merge nobody asked for waits when
 * a map is missing, instead of failing the delete. */
static void
test_untidy_input(void)
{
  g_autoptr(ChainBitmap) full = chain_bitmap_new(SIM_GRANULARITY, 8 * SIM_GRANULARITY);
  g_autoptr(ChainBitmap) one = chain_bitmap_new(SIM_GRANULARITY, 8 * SIM_GRANULARITY);
  chain_bitmap_set_range(full, 0, 8 * SIM_GRANULARITY);
  chain_bitmap_set_range(one, 0, 1);
  g_autoptr(PlanState) st = plan_state_new(FALSE);
  PlanDisk *disk = plan_state_add_disk(st, "vda", "/a");
  plan_disk_add_image(disk, "/b", CHAIN_FORMAT_RAW, NULL, full);
  plan_disk_add_image(disk, "/u", CHAIN_FORMAT_QCOW2, "/b", one);
  plan_disk_add_image(disk, "/c", CHAIN_FORMAT_QCOW2, "/u", NULL);
  plan_disk_add_image(disk, "/a", CHAIN_FORMAT_QCOW2, "/c", NULL);
  plan_snapshot_set_overlay(plan_state_add_snapshot(st, "s1", 1, NULL, FALSE), "vda", "/u");
  plan_snapshot_set_overlay(plan_state_add_snapshot(st, "s2", 2, "s1", TRUE), "vda", "/a");

  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s1" };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = planner_plan(st, &op, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(plan->choices->len, ==, 2);
  const PlanChoice *asked = plan->choices->pdata[0], *tidy = plan->choices->pdata[1];
  g_assert_cmpstr(asked->layer, ==, "/b");
  g_assert_cmpint(asked->chosen, ==, PLAN_MERGE_COMMIT);
  g_assert_cmpstr(tidy->layer, ==, "/b");
  g_assert_cmpstr(tidy->child, ==, "/c");
  g_assert_cmpint(tidy->chosen, ==, PLAN_MERGE_NONE);
  g_autofree char *sig = signature(plan);
  g_assert_cmpstr(sig, ==, "commit rebase-unsafe delete-snapshot redefine-snapshot delete-file");
}

static void
test_bad_input(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(PlanState) st = plan_state_new(FALSE);
  PlanDisk *disk = plan_state_add_disk(st, "vda", "/a");
  plan_disk_add_image(disk, "/a", CHAIN_FORMAT_QCOW2, "/missing", NULL);
  plan_state_add_snapshot(st, "s", 0, NULL, TRUE);
  PlanOp op = { .kind = PLAN_OP_DELETE, .name = "s" };
  g_assert_null(planner_plan(st, &op, &error));
  g_assert_error(error, PLANNER_ERROR, EINVAL);
  g_clear_error(&error);

  /* A loop. */
  g_free(((PlanImage *)disk->images->pdata[0])->backing);
  ((PlanImage *)disk->images->pdata[0])->backing = g_strdup("/b");
  plan_disk_add_image(disk, "/b", CHAIN_FORMAT_QCOW2, "/a", NULL);
  g_assert_null(planner_plan(st, &op, &error));
  g_assert_error(error, PLANNER_ERROR, EINVAL);
  g_assert_nonnull(strstr(error->message, "loops"));
  g_clear_error(&error);

  /* A raw file with a backing file. */
  g_autoptr(PlanState) st2 = plan_state_new(FALSE);
  PlanDisk *d2 = plan_state_add_disk(st2, "vda", "/top");
  plan_disk_add_image(d2, "/base", CHAIN_FORMAT_RAW, NULL, NULL);
  plan_disk_add_image(d2, "/top", CHAIN_FORMAT_RAW, "/base", NULL);
  plan_state_add_snapshot(st2, "s", 0, NULL, TRUE);
  g_assert_null(planner_plan(st2, &op, &error));
  g_assert_error(error, PLANNER_ERROR, EOPNOTSUPP);
  g_clear_error(&error);

  /* An overlay with no backing file (an internal snapshot, say). */
  g_autoptr(PlanState) st3 = plan_state_new(FALSE);
  PlanDisk *d3 = plan_state_add_disk(st3, "vda", "/base");
  plan_disk_add_image(d3, "/base", CHAIN_FORMAT_QCOW2, NULL, NULL);
  plan_snapshot_set_overlay(plan_state_add_snapshot(st3, "s", 0, NULL, TRUE), "vda", "/base");
  g_assert_null(planner_plan(st3, &op, &error));
  g_assert_error(error, PLANNER_ERROR, EOPNOTSUPP);
  g_clear_error(&error);

  /* No allocation map where a merge needs one. */
  g_autoptr(PlanState) st4 = plan_state_new(FALSE);
  PlanDisk *d4 = plan_state_add_disk(st4, "vda", "/top");
  plan_disk_add_image(d4, "/base", CHAIN_FORMAT_QCOW2, NULL, NULL);
  plan_disk_add_image(d4, "/top", CHAIN_FORMAT_QCOW2, "/base", NULL);
  plan_snapshot_set_overlay(plan_state_add_snapshot(st4, "s", 0, NULL, TRUE), "vda", "/top");
  g_assert_null(planner_plan(st4, &op, &error));
  g_assert_error(error, PLANNER_ERROR, EINVAL);
  g_assert_nonnull(strstr(error->message, "allocation"));
  g_clear_error(&error);

  PlanOp missing = { .kind = PLAN_OP_DELETE, .name = "nope" };
  g_assert_null(planner_plan(st4, &missing, &error));
  g_assert_error(error, PLANNER_ERROR, ENOENT);
}

/* ------------------------------------------------------------------ */
/* Rename.                                                              */

static void
test_rename(void)
{
  const char *masks[] = { "1", "1", "1", "1" };
  g_autoptr(Sim) sim = build_chain(3, masks, CHAIN_FORMAT_QCOW2, TRUE);
  g_autoptr(GError) error = NULL;

  PlanOp op = { .kind = PLAN_OP_RENAME, .name = "s2", .new_name = "middle" };
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  g_autofree char *sig = signature(plan);
  g_assert_cmpstr(sig, ==, "redefine-snapshot delete-snapshot redefine-snapshot");
  g_assert_cmpstr(((PlanStep *)plan->steps->pdata[0])->snapshot, ==, "middle");
  g_assert_cmpstr(((PlanStep *)plan->steps->pdata[1])->snapshot, ==, "s2");
  g_assert_cmpstr(plan_state_find_snapshot(plan->after, "s3")->parent, ==, "middle");
  g_assert_cmpstr(sim_overlay(sim, "middle", "vda"), ==, "/img/vda.s2");

  /* The current snapshot. */
  PlanOp cur = { .kind = PLAN_OP_RENAME, .name = "s3", .new_name = "last" };
  g_autoptr(Plan) p2 = plan_and_run(sim, &cur, &error);
  g_assert_no_error(error);
  g_autofree char *sig2 = signature(p2);
  g_assert_cmpstr(sig2, ==, "redefine-snapshot delete-snapshot set-current");
  g_assert_true(((PlanStep *)p2->steps->pdata[0])->definition->current);

  /* Same name: nothing to do. */
  PlanOp same = { .kind = PLAN_OP_RENAME, .name = "s1", .new_name = "s1" };
  g_autoptr(Plan) p3 = plan_and_run(sim, &same, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(p3->steps->len, ==, 0);
}

typedef struct {
  const char *name, *from, *to;
  int error;
} RenameError;

static const RenameError rename_errors[] = {
  { "exists", "s1", "s2", EEXIST },
  { "missing", "nope", "x", ENOENT },
  { "empty", "s1", "", EINVAL },
  { "null", "s1", NULL, EINVAL },
  { "control", "s1", "a\nb", EINVAL },
  { "not-utf8", "s1", "a\xff", EINVAL },
  { "too-long", "s1", "@LONG", EINVAL },
};

static void
test_rename_error(gconstpointer data)
{
  const RenameError *tc = data;
  const char *masks[] = { "1", "1", "1" };
  g_autoptr(Sim) sim = build_chain(2, masks, CHAIN_FORMAT_QCOW2, FALSE);
  g_autofree char *longname = g_strnfill(PLANNER_NAME_MAX + 1, 'x');
  PlanOp op = { .kind = PLAN_OP_RENAME, .name = tc->from,
                .new_name = g_strcmp0(tc->to, "@LONG") == 0 ? longname : tc->to };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = planner_plan(sim_state(sim), &op, &error);
  g_assert_error(error, PLANNER_ERROR, tc->error);
  g_assert_null(plan);
}

static void
test_check_name(void)
{
  g_autofree char *max = g_strnfill(PLANNER_NAME_MAX, 'x');
  g_assert_true(planner_check_name(max, NULL));
  g_assert_true(planner_check_name("a/b %c .d @e", NULL));
  g_assert_true(planner_check_name("snäpshot", NULL));
  g_assert_false(planner_check_name("tab\there", NULL));
  g_autoptr(Sim) sim = sim_new(NCLUSTERS);
  sim_add_disk(sim, "vda", CHAIN_FORMAT_QCOW2);
  sim_snapshot(sim, "s1");
  g_autoptr(GError) error = NULL;
  g_assert_true(planner_check_create(sim_state(sim), "s2", &error));
  g_assert_false(planner_check_create(sim_state(sim), "s1", &error));
  g_assert_error(error, PLANNER_ERROR, EEXIST);
  g_clear_error(&error);
  g_assert_false(planner_check_create(sim_state(sim), "", &error));
  g_assert_error(error, PLANNER_ERROR, EINVAL);

  g_autofree char *pre = planner_pre_revert_name(1700000000);
  g_assert_cmpstr(pre, ==, "pre-revert-20231114T221320Z");
}

/* ------------------------------------------------------------------ */
/* Revert.                                                              */

typedef struct {
  const char *name;
  const char *to;
  gboolean discard;
  gboolean running;
  const char *last_mask; /* written into the active image before the revert */
  int error;
  const char *steps;
  guint images_after;
  const char *to_overlay; /* what the reverted-to snapshot names after; "new" = the revert overlay */
  const char *deleted;    /* the one file deleted, or NULL */
} RevertCase;

static const RevertCase revert_cases[] = {
  /* Keep: a new overlay on P(s2) runs; the present gets an overlay and a
   * name; nothing is copied or deleted. */
  { "keep-middle", "s2", FALSE, FALSE, "00000001", 0,
    "create-overlay create-overlay redefine-snapshot set-current set-active", 6, "/img/vda.s2", NULL },
  /* Discard: the data written since s3 goes; s3 names an empty overlay. */
  { "discard-middle", "s2", TRUE, FALSE, "00000001", 0,
    "create-overlay create-overlay redefine-snapshot set-current set-active delete-file", 5,
    "/img/vda.s2", "/img/vda.s3" },
  /* Discard with nothing written since s3: the empty overlay stays. */
  { "discard-middle-empty", "s2", TRUE, FALSE, NULL, 0,
    "create-overlay set-current set-active", 5, "/img/vda.s2", NULL },
  /* Revert to the newest snapshot, discarding: s3 names the new overlay,
   * the old one goes. */
  { "discard-newest", "s3", TRUE, FALSE, "11", 0,
    "create-overlay redefine-snapshot set-active delete-file", 4, "new", "/img/vda.s3" },
  { "keep-newest", "s3", FALSE, FALSE, "11", 0,
    "create-overlay create-overlay redefine-snapshot set-active", 6, "/img/vda.s3", NULL },
  /* Revert to the first snapshot: the new overlay sits on the base. */
  { "keep-first", "s1", FALSE, FALSE, "1", 0,
    "create-overlay create-overlay redefine-snapshot set-current set-active", 6, "/img/vda.s1", NULL },
  { "running", "s1", FALSE, TRUE, NULL, EBUSY, NULL, 0, NULL, NULL },
  { "running-discard", "s2", TRUE, TRUE, NULL, EBUSY, NULL, 0, NULL, NULL },
  { "missing", "nope", FALSE, FALSE, NULL, ENOENT, NULL, 0, NULL, NULL },
};

static void
test_revert_case(gconstpointer data)
{
  const RevertCase *tc = data;
  const char *masks[] = { "11110000", "00001111", "11000000", "00000000" };
  g_autoptr(Sim) sim = build_chain(3, masks, CHAIN_FORMAT_QCOW2, FALSE);
  if (tc->last_mask)
    sim_write_mask(sim, "vda", tc->last_mask);
  sim_set_running(sim, tc->running);

  PlanOp op = { .kind = PLAN_OP_REVERT, .name = tc->to, .discard = tc->discard, .now = 1800000000 };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = plan_and_run(sim, &op, &error);
  if (tc->error) {
    g_assert_error(error, PLANNER_ERROR, tc->error);
    return;
  }
  g_assert_no_error(error);
  g_autofree char *sig = signature(plan);
  g_assert_cmpstr(sig, ==, tc->steps);
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, tc->images_after);

  /* The new overlay backs onto the snapshot's point and is active. */
  const PlanStep *create = find_step(plan, PLAN_STEP_CREATE_OVERLAY, 0);
  g_assert_cmpstr(create->backing, ==, plan_snapshot_find_disk(plan_state_find_snapshot(plan->after, tc->to), "vda")->point);
  g_assert_true(g_str_has_prefix(create->image, "/img/vda.revert-"));
  g_assert_cmpstr(plan_state_find_disk(plan->after, "vda")->active, ==, create->image);
  g_assert_true(plan_state_find_snapshot(plan->after, tc->to)->current);
  g_assert_cmpstr(sim_overlay(sim, tc->to, "vda"), ==,
                  strcmp(tc->to_overlay, "new") == 0 ? create->image : tc->to_overlay);
  const PlanStep *del = find_step(plan, PLAN_STEP_DELETE_FILE, 0);
  g_assert_cmpstr(del ? del->image : NULL, ==, tc->deleted);
  g_assert_null(find_step(plan, PLAN_STEP_DELETE_FILE, 1));
  /* Nothing is copied. */
  g_assert_null(find_step(plan, PLAN_STEP_COMMIT, 0));
  g_assert_null(find_step(plan, PLAN_STEP_PULL, 0));

  g_autofree char *kept = planner_pre_revert_name(1800000000);
  const PlanSnapshot *pre = plan_state_find_snapshot(plan->after, kept);
  if (tc->discard) {
    g_assert_null(pre);
  } else {
    g_assert_nonnull(pre);
    g_assert_cmpstr(pre->parent, ==, "s3");
    g_assert_false(pre->current);
    g_assert_cmpint(pre->creation_time, ==, 1800000000);
  }
}

/* Two reverts in the same second still give two names and two files. */
static void
test_revert_twice_same_second(void)
{
  const char *masks[] = { "1", "1", "1" };
  g_autoptr(Sim) sim = build_chain(2, masks, CHAIN_FORMAT_QCOW2, FALSE);
  PlanOp op = { .kind = PLAN_OP_REVERT, .name = "s1", .now = 1800000000 };
  g_autoptr(GError) error = NULL;
  plan_free(plan_and_run(sim, &op, &error));
  g_assert_no_error(error);
  sim_write_mask(sim, "vda", "01");
  g_autoptr(Plan) p2 = plan_and_run(sim, &op, &error);
  g_assert_no_error(error);
  g_autofree char *kept = planner_pre_revert_name(1800000000);
  g_autofree char *kept2 = g_strconcat(kept, "-2", NULL);
  g_assert_nonnull(plan_state_find_snapshot(p2->after, kept));
  g_assert_nonnull(plan_state_find_snapshot(p2->after, kept2));
}

/* A discarding revert leaves files nothing references (the branch being
 * left) and a branch point with one child: both are cleaned up. */
static void
test_revert_discard_collects_branch(void)
{
  const char *masks[] = { "11110000", "00001100" };
  g_autoptr(Sim) sim = build_chain(1, masks, CHAIN_FORMAT_QCOW2, FALSE);
  g_autoptr(GError) error = NULL;
  /* base <- vda.s1 <- (pre-revert overlay), base <- revert overlay N. */
  PlanOp keep = { .kind = PLAN_OP_REVERT, .name = "s1", .now = 1800000000 };
  plan_free(plan_and_run(sim, &keep, &error));
  g_assert_no_error(error);
  sim_write_mask(sim, "vda", "00000011");
  /* s1 goes: the base becomes an unnamed branch point. */
  PlanOp del = { .kind = PLAN_OP_DELETE, .name = "s1" };
  plan_free(plan_and_run(sim, &del, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 4);

  /* Back to the kept present, discarding N: N is garbage, and the base,
   * left with vda.s1 only, merges with it. */
  g_autofree char *kept = planner_pre_revert_name(1800000000);
  PlanOp discard = { .kind = PLAN_OP_REVERT, .name = kept, .discard = TRUE, .now = 1800000100 };
  g_autoptr(Plan) p3 = plan_and_run(sim, &discard, &error);
  g_assert_no_error(error);
  g_autofree char *sig = signature(p3);
  g_test_message("%s", sig);
  g_assert_cmpuint(p3->choices->len, ==, 1);
  g_assert_cmpstr(((PlanChoice *)p3->choices->pdata[0])->layer, ==, "/img/vda-base");
  /* vda.s1 (point of the kept snapshot) and the new active overlay. */
  g_assert_cmpuint(sim_image_count(sim, "vda"), ==, 2);
  g_assert_cmpuint(p3->after->snapshots->len, ==, 1);
}

/* New files go where the domain keeps its images, not next to a template. */
static void
test_revert_new_file_dir(void)
{
  g_autoptr(PlanState) st = plan_state_new(FALSE);
  PlanDisk *disk = plan_state_add_disk(st, "vda", "/img/vda.s1");
  plan_disk_add_image(disk, "/templates/base", CHAIN_FORMAT_RAW, NULL, NULL)->shared = TRUE;
  plan_disk_add_image(disk, "/img/vda.s1", CHAIN_FORMAT_QCOW2, "/templates/base", NULL);
  plan_snapshot_set_overlay(plan_state_add_snapshot(st, "s1", 1, NULL, TRUE), "vda", "/img/vda.s1");

  PlanOp op = { .kind = PLAN_OP_REVERT, .name = "s1", .discard = TRUE, .now = 1800000000 };
  g_autoptr(GError) error = NULL;
  g_autoptr(Plan) plan = planner_plan(st, &op, &error);
  g_assert_no_error(error);
  const PlanStep *create = find_step(plan, PLAN_STEP_CREATE_OVERLAY, 0);
  g_assert_cmpstr(create->image, ==, "/img/vda.revert-20270115T080000Z.qcow2");
  g_assert_cmpstr(create->backing, ==, "/templates/base");
  g_assert_cmpint(create->backing_format, ==, CHAIN_FORMAT_RAW);
  g_assert_cmpstr(plan_snapshot_overlay(plan_state_find_snapshot(plan->after, "s1"), "vda"), ==,
                  create->image);
  g_assert_cmpstr(find_step(plan, PLAN_STEP_DELETE_FILE, 0)->image, ==, "/img/vda.s1");
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  for (guint i = 0; i < G_N_ELEMENTS(delete_cases); i++) {
    g_autofree char *path = g_strdup_printf("/planner/delete/%s", delete_cases[i].name);
    g_test_add_data_func(path, &delete_cases[i], test_delete_case);
  }
  g_test_add_func("/planner/delete/costs", test_delete_costs);
  g_test_add_func("/planner/delete/refuse-open", test_delete_refuse_open);
  g_test_add_func("/planner/delete/commit-fields", test_delete_commit_fields);
  g_test_add_func("/planner/delete/offline-branch-while-running", test_delete_offline_branch_while_running);
  g_test_add_func("/planner/delete/deep-chain", test_delete_deep_chain);
  g_test_add_func("/planner/delete/running-commit-with-branch", test_delete_running_commit_with_branch);
  g_test_add_func("/planner/branch/shared-layer-merges-away", test_branch_delete_keeps_shared_layer);
  g_test_add_func("/planner/branch/merge-deferred", test_branch_merge_deferred);
  g_test_add_func("/planner/multi-disk/choices", test_multi_disk);
  g_test_add_func("/planner/multi-disk/ebusy", test_multi_disk_ebusy);
  g_test_add_func("/planner/input/unsupported-disk", test_unsupported_disk);
  g_test_add_func("/planner/input/shared-base", test_shared_base);
  g_test_add_func("/planner/input/bad", test_bad_input);
  g_test_add_func("/planner/input/untidy", test_untidy_input);
  g_test_add_func("/planner/rename/steps", test_rename);
  for (guint i = 0; i < G_N_ELEMENTS(rename_errors); i++) {
    g_autofree char *path = g_strdup_printf("/planner/rename/%s", rename_errors[i].name);
    g_test_add_data_func(path, &rename_errors[i], test_rename_error);
  }
  g_test_add_func("/planner/rename/check-name", test_check_name);
  for (guint i = 0; i < G_N_ELEMENTS(revert_cases); i++) {
    g_autofree char *path = g_strdup_printf("/planner/revert/%s", revert_cases[i].name);
    g_test_add_data_func(path, &revert_cases[i], test_revert_case);
  }
  g_test_add_func("/planner/revert/twice-same-second", test_revert_twice_same_second);
  g_test_add_func("/planner/revert/discard-collects-branch", test_revert_discard_collects_branch);
  g_test_add_func("/planner/revert/new-file-dir", test_revert_new_file_dir);
  return g_test_run();
}
