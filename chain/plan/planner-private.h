/* planner-private.h: what the planner's files share and nobody else needs.
 * Grouped by the file that defines it.
 */
#pragma once

#include "planner.h"

/* plan-state.c */
/* An empty plan (no steps, no choices, after = NULL).  Returns a new Plan. */
Plan *plan_new(void);
/* A snapshot with no disks.  Returns a new PlanSnapshot. */
PlanSnapshot *plan_snapshot_new(const char *name, gint64 creation_time, const char *parent,
                                gboolean current);

/* plan-check.c */
gboolean plan_check_state(const PlanState *st, GError **error);
/* Every disk the snapshot covers is one the planner handles (EOPNOTSUPP). */
gboolean plan_check_snapshot_disks(const PlanState *st, const PlanSnapshot *snapshot, GError **error);
/* now as YYYYMMDDTHHMMSSZ.  Returns a new string. */
char *plan_utc_stamp(gint64 now);
