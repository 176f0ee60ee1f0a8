/* sim.h: an in-memory model of a domain's image files, for planner tests.
 *
 * Each image is a small array of clusters (a value, or "not allocated" so
 * reads fall through to the backing file) with a backing pointer; snapshot
 * metadata and the active image per disk live in a PlanState the simulator
 * owns.  sim_run() executes a plan step by step the way libvirt and
 * qemu-img would, and refuses what the real tools or the safety rules forbid
 * (writing into a pinned file, an offline step on a running image, a block
 * job off the running chain, deleting a file something still names).
 * sim_check() then verifies the invariant: every remaining point in time
 * and the present read back as before.
 */
#pragma once

#include "planner.h"

#define SIM_GRANULARITY 65536

typedef struct _Sim Sim;

Sim *sim_new(guint nclusters);
void sim_free(Sim *sim);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Sim, sim_free)

/* A disk whose only image, /img/TARGET-base, is active. */
void sim_add_disk(Sim *sim, const char *target, ChainFormat base_format);
/* Writes value (> 0) into cluster of the disk's active image. */
void sim_write(Sim *sim, const char *target, guint cluster, gint value);
/* Writes a new value into each cluster whose mask char is '1'. */
void sim_write_mask(Sim *sim, const char *target, const char *mask);
/* What libvirt does for an external disk-only snapshot of every disk:
 * a new overlay /img/TARGET.NAME on the active image becomes active, the
 * parent is the current snapshot and the new one becomes current. */
void sim_snapshot(Sim *sim, const char *name);
/* The same for the disks whose bit (1 << index) is in mask: the others
 * are left out of the snapshot (<disk snapshot='no'>). */
void sim_snapshot_disks(Sim *sim, const char *name, guint mask);
void sim_set_running(Sim *sim, gboolean running);
gboolean sim_running(Sim *sim);
void sim_pin(Sim *sim, const char *target, const char *path);
/* Pins every layer of the snapshot's point in time on every disk. */
void sim_pin_point(Sim *sim, const char *snapshot);
void sim_unpin_all(Sim *sim);
void sim_share(Sim *sim, const char *target, const char *path);

/* The state to plan on, with fresh allocation maps.  Borrowed; valid until
 * the simulator changes. */
const PlanState *sim_state(Sim *sim);
/* Overlay path a snapshot names on a disk (borrowed) or NULL. */
const char *sim_overlay(Sim *sim, const char *snapshot, const char *target);
gboolean sim_has_file(Sim *sim, const char *target, const char *path);
guint sim_image_count(Sim *sim, const char *target);

/* What every point in time and the present must read after op. */
typedef struct _SimExpect SimExpect;
SimExpect *sim_expect(Sim *sim, const PlanOp *op);
void sim_expect_free(SimExpect *expect);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SimExpect, sim_expect_free)

/* The next sim_run() stops step (a commit or pull) halfway once, as a
 * crash would, then runs it again from the start, as recovery does. */
void sim_crash_at(Sim *sim, guint step);
/* Executes the plan's steps; twice: every step is run twice in a row, as a
 * recovery after a crash would.  FALSE with a message on a forbidden step. */
gboolean sim_run(Sim *sim, const Plan *plan, gboolean twice, GError **error);
/* The invariant (every remaining point in time and the present read as
 * before), and that the simulator agrees with plan->after.
 * normal_form: also no unnamed layer with one child may remain. */
gboolean sim_check(Sim *sim, const SimExpect *expect, const Plan *plan, gboolean normal_form,
                   GError **error);
