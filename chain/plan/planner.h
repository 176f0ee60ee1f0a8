/* planner.h: turns a snapshot operation into the cheapest safe list of steps.
 *
 * The planner is a pure function (doc/design.md): it reads a PlanState (the
 * image graph of every disk with per-layer allocation, the snapshot metadata,
 * the pinned layers, whether the domain runs) and a PlanOp, and returns a
 * Plan: ordered PlanSteps for the executor in fs/, the PlanState after them,
 * and for the log the cost of each merge it weighed.  It runs no I/O and
 * keeps no state; every call may run on any thread.
 *
 * Words used below.  For a snapshot S and a disk, O(S) is the overlay file
 * S's metadata names and P(S) = backing(O(S)) is the point image: the chain
 * from P(S) down is the disk at S.  A layer is "named" when it is the active
 * image or the point image of a remaining snapshot.  A layer that is not
 * named and has exactly one child is merged away, by commit (the child's
 * clusters go into it) or pull (its clusters go into the child).
 *
 * Use (the executor in fs/):
 *
 *   g_autoptr(PlanState) st = plan_state_new(domain_is_running);
 *   PlanDisk *d = plan_state_add_disk(st, "vda", active_path);
 *   PlanImage *im = plan_disk_add_image(d, path, CHAIN_FORMAT_QCOW2, backing_path, bitmap);
 *   im->pinned = a_reader_opened_this_point_image;     (one call per file)
 *   PlanSnapshot *s = plan_state_add_snapshot(st, name, ctime, parent, is_current);
 *   plan_snapshot_set_overlay(s, "vda", overlay_path);  (from <disks><disk><source file>)
 *   PlanOp op = { .kind = PLAN_OP_DELETE, .name = name, .now = time(NULL) };
 *   g_autoptr(Plan) plan = planner_plan(st, &op, &error);
 *   journal plan_steps_to_text(plan->steps), log plan->choices, run the steps.
 *
 * Decisions:
 * - Cost: commit moves the clusters allocated in C, pull those of F that C
 *   does not override (PlanImage.allocation).  The cheaper safe one wins.
 * - Tie: pull when C is the active image (no pivot, the domain keeps its
 *   file and its XML; a block pull ends by itself), commit otherwise (it
 *   writes only into F, the layer whose point in time is going, never into
 *   a file holding a point that stays; and it is the only choice for an
 *   intermediate C on a running domain, so both cases plan alike).
 * - Safety: commit writes C's clusters into F, so it is refused when a
 *   reader reaches F without C above it (F itself is pinned: S's point is
 *   open).  A reader of C or of anything above C never reads those
 *   clusters from F, and C itself is only unlinked: a pinned C does not
 *   stop a commit.  Pull writes into C, so it is refused when any reader's
 *   chain holds C (no plan writes into a layer a reader depends on, even
 *   though the data it reads would not change), and on a running domain
 *   unless C is active or off the running chain (libvirt pulls only into
 *   the active layer).  No safe merge: EBUSY for the point being
 *   deleted; a merge that only tidies up (a branch point left with one
 *   child) is skipped instead (PLAN_MERGE_NONE) and done by a later plan.
 * - Revert keeps the present as snapshot planner_pre_revert_name(now)
 *   (-2, -3... if taken) whose overlay is a new empty file on the old
 *   active image (libvirt names points by overlays).  A snapshot whose
 *   overlay became a dead end (a leaf nobody runs or reads as a point)
 *   names a live sibling instead, the new active overlay first, as if it
 *   had just been taken; with no sibling, an empty overlay replaces a dead
 *   end that holds data.  Discard drops whatever only the present used.
 * - New files are named DIR/TARGET.PURPOSE-YYYYMMDDTHHMMSSZ[-N].qcow2, in
 *   the directory of the active image (revert, pre-revert) or of the file
 *   they replace (overlay), never next to a possibly shared base.
 *
 * Ownership: every char * and GPtrArray in these structs is owned by the
 * struct that holds it, except PlanImage.allocation (borrowed: it must
 * outlive planner_plan()).  Returned objects belong to the caller.
 *
 * Errors: PLANNER_ERROR, code = errno value (EBUSY, EEXIST, EINVAL, ENOENT,
 * EOPNOTSUPP), message names the snapshot, disk and file.
 */
#pragma once

#include <glib.h>

#include "chain.h"

G_BEGIN_DECLS

#define PLANNER_ERROR (planner_error_quark())
GQuark planner_error_quark(void);

/* Longest snapshot name: libvirt saves NAME.xml through a temporary
 * NAME.xml.new, which must fit NAME_MAX (255). */
#define PLANNER_NAME_MAX 247

/* ------------------------------------------------------------------ */
/* Input: the domain as the executor found it.                         */

typedef struct {
  char *path;          /* absolute; unique within its disk */
  ChainFormat format;
  char *backing;       /* path of the backing image (in the same disk), or NULL */
  /* Borrowed.  Which clusters this file overrides; all images of a disk
   * must use one granularity.  Needed for F and C of the point being
   * deleted (EINVAL otherwise); another merge without maps is put off.
   * NULL in Plan.after (costs there are unknown). */
  const ChainBitmap *allocation;
  /* An open reader reads from this file down: the executor marks the point
   * image of every open snapshot file and the frozen image under @now.  The
   * planner follows each such chain as it is now (readers hold descriptors
   * to it) and never changes what one reads.  Marking more layers, e.g.
   * every layer of each open chain, is safe and only makes plans more
   * cautious.  Unlinking a file a reader has open, or moving its backing
   * pointer, is harmless: readers resolved both at open(). */
  gboolean pinned;
  /* Something outside this domain uses the file (a template base shared by
   * several domains, a <readonly/> or <shareable/> disk): never written,
   * never deleted. */
  gboolean shared;
} PlanImage;

typedef struct {
  char *target;       /* "vda" */
  char *active;       /* path of the active image (in images) */
  /* NULL, or why the planner cannot handle this disk ("network disk"):
   * an operation on a snapshot that covers it fails with EOPNOTSUPP, and
   * the planner never touches it otherwise.  images may then be empty. */
  char *unsupported;
  GPtrArray *images;  /* PlanImage *; the union of every chain of the disk */
} PlanDisk;

typedef struct {
  char *target;
  char *overlay;      /* O(S) */
  char *point;        /* P(S); ignored on input, filled in Plan.after */
} PlanSnapshotDisk;

typedef struct {
  char *name;
  gint64 creation_time; /* seconds since the epoch, UTC */
  char *parent;         /* libvirt's parent snapshot, or NULL */
  gboolean current;
  GPtrArray *disks;     /* PlanSnapshotDisk *; a disk not listed is not in the snapshot */
} PlanSnapshot;

typedef struct {
  gboolean running;
  GPtrArray *disks;     /* PlanDisk * */
  GPtrArray *snapshots; /* PlanSnapshot *, in libvirt's order */
} PlanState;

/* Building a state; the returned PlanDisk/PlanImage/PlanSnapshot are
 * borrowed from their container (set pinned/shared through them). */
PlanState *plan_state_new(gboolean running);
void plan_state_free(PlanState *state);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PlanState, plan_state_free)
/* Deep copy; allocation pointers stay borrowed. */
PlanState *plan_state_copy(const PlanState *state);
PlanDisk *plan_state_add_disk(PlanState *state, const char *target, const char *active);
PlanImage *plan_disk_add_image(PlanDisk *disk, const char *path, ChainFormat format,
                               const char *backing, const ChainBitmap *allocation);
PlanSnapshot *plan_state_add_snapshot(PlanState *state, const char *name, gint64 creation_time,
                                      const char *parent, gboolean current);
void plan_snapshot_set_overlay(PlanSnapshot *snapshot, const char *target, const char *overlay);

/* Lookups (borrowed results, NULL when absent). */
PlanDisk *plan_state_find_disk(const PlanState *state, const char *target);
PlanSnapshot *plan_state_find_snapshot(const PlanState *state, const char *name);
PlanImage *plan_disk_find_image(const PlanDisk *disk, const char *path);
const char *plan_snapshot_overlay(const PlanSnapshot *snapshot, const char *target);
PlanSnapshotDisk *plan_snapshot_find_disk(const PlanSnapshot *snapshot, const char *target);

PlanSnapshot *plan_snapshot_copy(const PlanSnapshot *snapshot);
void plan_snapshot_free(PlanSnapshot *snapshot);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PlanSnapshot, plan_snapshot_free)

/* ------------------------------------------------------------------ */
/* The operation.                                                      */

typedef enum {
  PLAN_OP_DELETE,  /* name */
  PLAN_OP_RENAME,  /* name -> new_name, metadata only */
  PLAN_OP_REVERT,  /* name; discard */
} PlanOpKind;

typedef struct {
  PlanOpKind kind;
  const char *name;
  const char *new_name;   /* RENAME */
  gboolean discard;       /* REVERT: drop the present instead of keeping it */
  /* DELETE: EBUSY when a reader has the point being deleted open (its
   * point image is pinned), the errno an rmdir of an open point gets,
   * instead of planning around that reader (a pull leaves its files
   * intact). */
  gboolean refuse_open;
  /* UTC seconds: names the pre-revert snapshot and any file the plan
   * creates, so that the planner needs no clock. */
  gint64 now;
} PlanOp;

/* ------------------------------------------------------------------ */
/* Output.                                                             */

typedef enum {
  /* Write top's clusters into base = backing(top); top stays untouched.
   * offline: qemu-img commit -t writethrough -d -f FORMAT -b BASE top.
   * block job: virDomainBlockCommit(disk, base, top, 0, 0) on an
   * intermediate top; libvirt moves the backing pointer of top's child in
   * the running chain itself (other children get REBASE_UNSAFE steps).
   * Re-running is harmless; a block commit is done once top has left the
   * running chain. */
  PLAN_STEP_COMMIT,
  /* Running domain, top = active image: virDomainBlockCommit(disk, base,
   * top, 0, ACTIVE), wait for READY, virDomainBlockJobAbort(PIVOT).
   * Afterwards base is the active image; done when it already is. */
  PLAN_STEP_ACTIVE_COMMIT,
  /* Copy into image what its chain reads and backing would not, then point
   * image at backing (NULL: flatten, no backing at all).
   * offline: qemu-img rebase -t writethrough -f FORMAT -b BACKING -F BFMT
   * image (-b "" to flatten).  Re-running it after the pointer moved copies
   * nothing; write-through makes the pointer move after the data.
   * block job (image = the active image): virDomainBlockRebase(disk,
   * backing, 0, 0), backing NULL for a full pull. */
  PLAN_STEP_PULL,
  /* Pointer only, content unchanged: qemu-img rebase -u -f FORMAT -b BACKING
   * -F BFMT image.  Always offline (the image is not in the running chain). */
  PLAN_STEP_REBASE_UNSAFE,
  /* qemu-img create -f qcow2 -b BACKING -F BFMT image (empty overlay).
   * Done when image exists with that backing; the executor must check
   * before the first step that no foreign file already has the name. */
  PLAN_STEP_CREATE_OVERLAY,
  /* Make the domain definition name image (format) as the disk's source.
   * Done when it already does (an active commit's pivot may have). */
  PLAN_STEP_SET_ACTIVE,
  /* virDomainSnapshotCreateXML(REDEFINE [| CURRENT]) from definition: a new
   * snapshot (revert's pre-revert one; RENAME's new name) or a changed
   * parent, overlay or point image (the <domain> copy's disk source).
   * Idempotent. */
  PLAN_STEP_REDEFINE_SNAPSHOT,
  /* virDomainSnapshotDelete(METADATA_ONLY) of snapshot; gone = done.
   * libvirt reparents its children; later REDEFINE steps say the same. */
  PLAN_STEP_DELETE_SNAPSHOT,
  /* Mark snapshot current (its XML redefined with CURRENT). */
  PLAN_STEP_SET_CURRENT,
  /* unlink(image); absent = done.  Only after no metadata names it. */
  PLAN_STEP_DELETE_FILE,
} PlanStepKind;

typedef struct {
  PlanStepKind kind;
  gboolean block_job;       /* TRUE: a libvirt block job on the running domain */
  char *disk;               /* target; NULL for snapshot steps */
  char *image;              /* the file the step acts on (COMMIT: top) */
  ChainFormat format;       /* of image */
  char *backing;            /* COMMIT: base; PULL, REBASE_UNSAFE, CREATE_OVERLAY: new backing */
  ChainFormat backing_format;
  char *snapshot;           /* REDEFINE, DELETE_SNAPSHOT, SET_CURRENT */
  PlanSnapshot *definition; /* REDEFINE: the snapshot as it must be afterwards */
} PlanStep;

PlanStep *plan_step_new(PlanStepKind kind);
void plan_step_free(PlanStep *step);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(PlanStep, plan_step_free)
const char *plan_step_kind_name(PlanStepKind kind);

typedef enum {
  PLAN_MERGE_NONE,   /* not merged: no safe way now (see reason) */
  PLAN_MERGE_COMMIT,
  PLAN_MERGE_PULL,
} PlanMerge;

/* One merge the planner weighed, for the daemon log. */
typedef struct {
  char *disk;
  char *layer;           /* F: the unnamed layer merged away */
  char *child;           /* C: its only child */
  guint64 commit_bytes;  /* bytes allocated in C */
  guint64 pull_bytes;    /* bytes allocated in F and not in C */
  gboolean commit_safe, pull_safe;
  PlanMerge chosen;
  char *reason;          /* "commit: 64 KiB < pull 1 MiB", "pull: F is pinned" */
} PlanChoice;

/* Steps come in this order: first the data steps (CREATE_OVERLAY, COMMIT,
 * ACTIVE_COMMIT, PULL, REBASE_UNSAFE), disk after disk, each step seeing
 * the files as the steps before it left them; then REDEFINE of new
 * snapshots, DELETE_SNAPSHOT, REDEFINE of changed ones, SET_CURRENT,
 * SET_ACTIVE; DELETE_FILE last.
 * Data steps of a running domain may be block jobs; everything else is
 * offline or metadata. */
typedef struct {
  GPtrArray *steps;    /* PlanStep *, in order */
  GPtrArray *choices;  /* PlanChoice * */
  /* Metadata and graph after the steps: PlanSnapshotDisk.point filled,
   * allocation NULL, pinned/shared as given. */
  PlanState *after;
} Plan;

void plan_free(Plan *plan);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Plan, plan_free)

/* The planner.  Returns a new Plan, or NULL with error set:
 *   ENOENT      no snapshot op->name
 *   EINVAL      bad new name, or a state that contradicts itself
 *   EEXIST      RENAME onto an existing name
 *   EBUSY       the point image and its child are both unsafe to write
 *               (pinned, shared, or impossible as a block job); REVERT of a
 *               running domain
 *   EOPNOTSUPP  the snapshot covers an unsupported disk or a chain the
 *               planner cannot handle
 * A RENAME to the same name returns an empty plan. */
Plan *planner_plan(const PlanState *state, const PlanOp *op, GError **error);

/* A name libvirt and the tree can both hold: not empty, at most
 * PLANNER_NAME_MAX bytes, valid UTF-8, no control characters.  EINVAL. */
gboolean planner_check_name(const char *name, GError **error);

/* Before libvirt creates snapshot name (mkdir): planner_check_name(), and
 * EEXIST when the domain already has it.  No plan is needed. */
gboolean planner_check_create(const PlanState *state, const char *name, GError **error);

/* The name a revert at now gives the present it leaves. */
char *planner_pre_revert_name(gint64 now);

/* ------------------------------------------------------------------ */
/* Journal lines (plan-text.c).                                        */

/* One line, no newline: the kind, then key=value fields; values are
 * percent-escaped so a line never holds a space, '=' in a value, a newline
 * or a non-ASCII byte.  Returns a new string. */
char *plan_step_to_line(const PlanStep *step);
/* The inverse; EINVAL on anything it did not write.  Returns a new step. */
PlanStep *plan_step_from_line(const char *line, GError **error);
/* Lines joined with '\n' (each ends with one).  Returns a new string. */
char *plan_steps_to_text(const GPtrArray *steps);
/* Returns a new array of PlanStep * (with a free function). */
GPtrArray *plan_steps_from_text(const char *text, GError **error);

G_END_DECLS
