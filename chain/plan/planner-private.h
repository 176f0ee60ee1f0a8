/* planner-private.h: what the planner's files share and nobody else needs,
 * and a map of the code: prototypes are grouped under the file that
 * defines them.  Uses go one way, top to bottom (no file uses one above
 * it):
 *
 *   planner.c        the operations, planner_plan()
 *   plan-metadata.c  the metadata steps, from before and after
 *   plan-normal.c    the normal-form rules 1 and 2, the loop
 *   plan-merge.c     rule 3: commit or pull
 *   plan-work.c      recording steps, drops and new overlays
 *   plan-text.c      steps as journal lines (for fs/snap's journal)
 *   plan-check.c     refusals, names, stamps, the error domain
 *   plan-state.c     the plain data
 */
#pragma once

#include "planner.h"

/* One planner_plan() call: the state before, the working copy that
 * becomes the state after, and what the plan records on the way. */
typedef struct {
  const PlanState *before;
  const PlanOp *op;
  PlanState *st;          /* the working copy: becomes plan->after */
  Plan *plan;
  GPtrArray *maps;        /* ChainBitmap * made by the planner (unions, empty overlays) */
  GHashTable *fresh;      /* "target\tpath" of files this plan creates */
  GHashTable *deferred;   /* "target\tpath" of layers left unmerged this time */
  GHashTable *primary;    /* target -> P(S) of the snapshot being deleted */
  GPtrArray *deletes;     /* PlanStep * (DELETE_FILE), appended last */
  GHashTable *dropped;    /* paths that left the graph (still on disk until the end) */
} PlanWork;

/* plan-state.c */
/* An empty plan (no steps, no choices, after = NULL).  Returns a new Plan. */
Plan *plan_new(void);
/* A snapshot with no disks.  Returns a new PlanSnapshot. */
PlanSnapshot *plan_snapshot_new(const char *name, gint64 creation_time, const char *parent,
                                gboolean current);
/* P(S) on disk: the backing file of S's overlay; NULL if that is not in
 * the graph.  Borrowed. */
const char *plan_snapshot_point(const PlanDisk *disk, const PlanSnapshot *snapshot);
gboolean plan_disk_in_active_chain(const PlanDisk *disk, const char *path);
/* The current snapshot, or NULL.  Borrowed. */
const PlanSnapshot *plan_state_current(const PlanState *st);

/* plan-check.c */
gboolean plan_check_state(const PlanState *st, GError **error);
/* Every disk the snapshot covers is one the planner handles (EOPNOTSUPP). */
gboolean plan_check_snapshot_disks(const PlanState *st, const PlanSnapshot *snapshot, GError **error);
/* now as YYYYMMDDTHHMMSSZ.  Returns a new string. */
char *plan_utc_stamp(gint64 now);

/* plan-work.c */
/* "target\tpath", the key of a file of one disk in PlanWork's sets. */
char *plan_disk_key(const PlanDisk *disk, const char *path);
/* Appends a step on image (and its backing, or NULL) to the plan. */
PlanStep *plan_work_add_step(PlanWork *w, PlanStepKind kind, gboolean block_job,
                             const PlanDisk *disk, const PlanImage *image,
                             const PlanImage *backing);
/* The file leaves the graph now and the disk at the end of the plan. */
void plan_work_drop_image(PlanWork *w, PlanDisk *disk, PlanImage *image);
/* A new empty qcow2 overlay on backing, named after the disk, purpose and
 * the plan's time, in the directory of near; added to the graph. */
PlanImage *plan_work_create_overlay(PlanWork *w, PlanDisk *disk, PlanImage *backing,
                                    const char *near, const char *purpose);

/* plan-merge.c */
/* Rule 3 for F, unnamed with the one child C: merges by the cheaper safe
 * direction (*merged TRUE), or leaves F for a later plan; EBUSY when F is
 * the point being deleted and neither direction is safe. */
gboolean plan_merge_layer(PlanWork *w, PlanDisk *disk, PlanImage *f, PlanImage *c,
                          gboolean *merged, GError **error);

/* plan-normal.c */
/* Applies the normal-form rules to disk until nothing changes. */
gboolean plan_normalize_disk(PlanWork *w, PlanDisk *disk, GError **error);

/* plan-metadata.c */
/* Appends the metadata steps, then the file deletions, to w->plan. */
void plan_add_metadata_steps(PlanWork *w);
