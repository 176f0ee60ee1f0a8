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
