/* snap-private.h: what the files of fs/snap share.  A map of the code:
 * prototypes are grouped by the file that defines them, lowest first;
 * each file calls only files listed above it (and fs/virt, chain/,
 * chain/plan/ below them all):
 *
 *   queue.c       the per-domain FIFO every changing operation waits in
 *   status.c      the job status, the model refresh after a change, the
 *                 test hook that stops a plan as if killed
 *   pins.c        the layers open readers pin
 *   guard.c       the image policy on the change path (guard.h)
 *   state.c       durable files: freeze records
 *   journal.c     durable files: the plan journal
 *   exec-xml.c    the snapshot XML the steps and create write
 *   plan-input.c  libvirt + image headers -> PlanState
 *   steps-*.c,    the steps of a plan, and running them (exec.h)
 *   executor.c
 *   thaw.c        committing @now overlays back, repairing freezes
 *   plan.c        delete, rename, revert: plans run through the journal;
 *                 recovery at start-up
 *   create.c      mkdir: a new snapshot
 *   freeze.c      @now: the open freezes of each domain
 *   snap.c        the Snap: life cycle, the hooks fs/virt calls
 *
 * Lock order (outer first): a domain's turn in the queue (held for a whole
 * operation), Backend.build_lock (a refresh, whose model_built hook takes
 * the next two), Snap.freeze_lock, Snap.lock.  The last two are leaves,
 * held for table updates only, never across libvirt or qemu-img.
 */
#pragma once

#include "backend-virt.h"
#include "planner.h"
#include "snap.h"

G_BEGIN_DECLS

typedef struct _SnapQueue SnapQueue;

struct _Snap {
  Backend *backend;
  char *state_dir;
  gboolean revert_discard;

  SnapQueue *queue;             /* queue.c */

  GMutex freeze_lock;           /* leaf; protects freezes */
  GHashTable *freezes;          /* domain -> SnapFreeze* (freeze.c) */

  GMutex lock;                  /* leaf; protects the fields below */
  GHashTable *hidden;           /* "domain\tsnapshot" -> count (plan.c) */
  GHashTable *pins;             /* "dev:ino" -> count (pins.c) */
  guint64 unpins;               /* counts unpins, for waiters on unpinned */
  GCond unpinned;               /* broadcast at every unpin (with lock) */
  GHashTable *status;           /* domain -> SnapStatus* (status.c) */
  int stop_after;               /* test hook, see snap_set_stop_after() */
  gboolean stop_in_job;
};

/* An open @now freeze of a domain (freeze.c; thaw.c reads the record). */
typedef struct _SnapFreezeRecord SnapFreezeRecord;
typedef struct {
  SnapFreezeRecord *record;     /* NULL when the domain has no disk to freeze */
  guint refs;
  GPtrArray *frozen;            /* of BackendDisk: what @now reads */
} SnapFreeze;

/* ------------------------------------------------------------------ */
/* queue.c */

/* One domain's operations run one at a time, in the order they arrived
 * (FIFO); different domains run in parallel. */
SnapQueue *snap_queue_new(void);
void snap_queue_free(SnapQueue *queue);
/* Blocks until it is this caller's turn on domain; the turn lasts until
 * snap_turn_end(). */
typedef struct _SnapTurn SnapTurn;
SnapTurn *snap_queue_wait(SnapQueue *queue, const char *domain);
void snap_turn_end(SnapTurn *turn);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SnapTurn, snap_turn_end)

/* ------------------------------------------------------------------ */
/* status.c */

void snap_status_init(Snap *snap);
void snap_status_clear_all(Snap *snap);
/* What domain's operation does now: op ("delete s2"), step of n_steps (0:
 * planning), what ("commit vda"); job_uuid and job_disk name the disk a
 * block job runs on, whose progress the status then shows (or NULL). */
void snap_status_set(Snap *snap, const char *domain, const char *op, guint step, guint n_steps,
                     const char *what, const char *job_uuid, const char *job_disk);
void snap_status_clear(Snap *snap, const char *domain);
/* Publishes a new model now, after a change; a failure is logged at
 * level ("model refresh after <after>: why"). */
void snap_refresh(Snap *snap, GLogLevelFlags level, const char *after);
/* Test hook: a plan stops after its first k steps (k >= 0) as if the
 * daemon was killed there: the operation fails with ECANCELED and leaves
 * its journal and hidden snapshot behind.  With in_job, when step k + 1
 * is a commit or pull block job, it stops right after starting the job,
 * which QEMU then runs on its own.  k = -1 switches the hook off. */
void snap_set_stop_after(Snap *snap, int steps, gboolean in_job);
/* Whether the plan must stop (as if killed) after steps_done steps;
 * *in_job: inside the next step, once its block job started. */
gboolean snap_stop_here(Snap *snap, guint steps_done, gboolean *in_job);

/* ------------------------------------------------------------------ */
/* pins.c */

void snap_pins_init(Snap *snap);
void snap_pins_clear(Snap *snap);
/* Whether the layer with this identity is pinned by a reader. */
gboolean snap_pinned(Snap *snap, dev_t dev, ino_t ino);
/* How many unpins there were so far, and a wait for the next one after
 * `seen` until deadline (monotonic): TRUE if something was unpinned. */
guint64 snap_unpin_count(Snap *snap);
gboolean snap_wait_unpin(Snap *snap, guint64 seen, gint64 deadline);

/* ------------------------------------------------------------------ */
/* state.c */

/* Durable files in the state directory (freeze records, journals):
 * written whole or not at all, and the change survives a power loss. */
gboolean snap_state_sync_dir(const char *dir, GError **error);
gboolean snap_state_write_file(const char *path, const char *data, gsize length,
                               GError **error);
gboolean snap_state_remove_file(const char *path, GError **error);
/* At start-up, before anything reads them: removes the temporary files
 * of record writes a crash cut short (journal/ and freeze/). */
void snap_state_remove_torn(const char *state_dir);

typedef struct {
  char *target;
  char *frozen;                 /* the image that was active at the freeze */
  ChainFormat frozen_format;
  char *overlay;                /* the temporary overlay on top of it */
} SnapFreezeDisk;

struct _SnapFreezeRecord {
  char *path;                   /* the record file; NULL until written */
  char *domain;
  char *uuid;
  gint64 created;
  GPtrArray *disks;             /* of SnapFreezeDisk */
};

SnapFreezeRecord *snap_freeze_record_new(const char *domain, const char *uuid);
void snap_freeze_record_free(SnapFreezeRecord *record);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SnapFreezeRecord, snap_freeze_record_free)
void snap_freeze_record_add_disk(SnapFreezeRecord *record, const char *target,
                                 const char *frozen, ChainFormat frozen_format,
                                 const char *overlay);
/* Writes the record durably (file and directory fsync'd) under state_dir. */
gboolean snap_freeze_record_write(SnapFreezeRecord *record, const char *state_dir,
                                  GError **error);
gboolean snap_freeze_record_remove(SnapFreezeRecord *record, GError **error);
/* Every record under state_dir (of SnapFreezeRecord). */
GPtrArray *snap_freeze_records_load(const char *state_dir, GError **error);

/* ------------------------------------------------------------------ */
/* journal.c */

/* A plan being run: written durably before the first step, one "done N"
 * record per finished step, removed when the plan is complete. */
typedef struct {
  char *path;                   /* NULL until written */
  char *domain;
  char *uuid;
  PlanOpKind op;
  char *name;
  char *new_name;               /* RENAME */
  gboolean discard;             /* REVERT */
  gint64 now;
  char *hidden;                 /* snapshot hidden from the tree meanwhile, or NULL */
  GPtrArray *steps;             /* PlanStep *, owned */
  guint done;                   /* steps [0, done) are finished */
  int fd;                       /* open for appending, -1 when closed */
} SnapJournal;

/* Takes a reference on steps. */
SnapJournal *snap_journal_new(const char *domain, const char *uuid, const PlanOp *op,
                              const char *hidden, GPtrArray *steps);
void snap_journal_free(SnapJournal *journal);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SnapJournal, snap_journal_free)
/* "delete s2", "rename a to b", "revert to s1": for the log and the job
 * status. */
char *snap_op_title(const PlanOp *op);
/* The PlanOp the journal records (strings borrowed from it). */
void snap_journal_get_op(const SnapJournal *journal, PlanOp *op);
/* STATE_DIR/journal/<uuid>.plan, file and directory fsync'd. */
gboolean snap_journal_write(SnapJournal *journal, const char *state_dir, GError **error);
/* Appends "done N" (N = journal->done + 1) and fsyncs it. */
gboolean snap_journal_step_done(SnapJournal *journal, GError **error);
gboolean snap_journal_remove(SnapJournal *journal, GError **error);
/* Every journal under state_dir (of SnapJournal); unreadable ones are
 * logged and left alone. */
GPtrArray *snap_journals_load(const char *state_dir, GError **error);

/* ------------------------------------------------------------------ */
/* exec-xml.c */

/* The snapshot XML for a REDEFINE: template (libvirt's XML of the
 * snapshot, or of the one it is renamed from; NULL: built from
 * domain_xml) with name, parent, creation time and the overlay of every
 * disk of definition; the embedded <domain> gets the point images as
 * its disk sources. */
char *exec_xml_redefine_snapshot(const char *template_xml, const char *domain_xml,
                                 const PlanSnapshot *definition, GError **error);
/* Targets of the disks that are <readonly/> or <shareable/>. */
GHashTable *exec_xml_shared_targets(const char *domain_xml);

/* ------------------------------------------------------------------ */
/* plan-input.c */

typedef struct {
  PlanState *state;
  GPtrArray *bitmaps;           /* ChainBitmap *: the allocations state borrows */
  char *uuid;
  /* Snapshots the planner must not touch, name -> why ("disk vda is an
   * internal snapshot"): EOPNOTSUPP for an operation on them. */
  GHashTable *unsupported;
} SnapPlanInput;

void snap_plan_input_free(SnapPlanInput *input);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(SnapPlanInput, snap_plan_input_free)
/* Reads the domain's XML, its snapshots and the headers and allocation
 * of every image of every disk (all branches), and marks pinned and
 * shared layers.  Blocks; call in the domain's turn. */
SnapPlanInput *snap_plan_input_read(Snap *snap, virDomainPtr dom, GError **error);

/* ------------------------------------------------------------------ */
/* executor.c (its steps: exec.h) */

/* Runs journal->steps from journal->done on, recording each finished
 * step.  Each step first checks whether it already happened (a re-run
 * after a crash) and then only does what is missing.  Updates the job
 * status of the domain. */
gboolean snap_exec_run(Snap *snap, virDomainPtr dom, SnapJournal *journal, GError **error);

/* ------------------------------------------------------------------ */
/* thaw.c */

/* Commits back what record describes and deletes its overlays; the
 * record goes when every disk is done. */
gboolean snap_thaw_record(Snap *snap, SnapFreezeRecord *record, GError **error);
/* Finishes the records no open freeze owns: those of domain (in its
 * turn), or of all domains when domain is NULL (taking each one's turn).
 * FALSE when a record had to stay. */
gboolean snap_freeze_repair(Snap *snap, const char *domain);
/* Before a snapshot operation, in domain's turn: EBUSY (naming `what`)
 * while @now is open on domain, or while a freeze whose thaw failed
 * cannot be finished (the domain still runs on a temporary overlay: a
 * snapshot or plan on top of it would strand it). */
gboolean snap_freeze_settle(Snap *snap, const char *domain, const char *what, GError **error);

/* ------------------------------------------------------------------ */
/* plan.c */

void snap_plan_init(Snap *snap);
void snap_plan_clear(Snap *snap);
/* A changing operation on a domain, from its turn in the queue to its
 * end: the connection and the domain it works on. */
typedef struct {
  SnapTurn *turn;
  virConnectPtr conn;
  virDomainPtr dom;
  gint64 started;               /* when the turn came */
} SnapOp;
/* Waits for domain's turn, connects, looks the domain up, and finishes a
 * plan an earlier failure left for it.  frozen_what (NULL: skip) names
 * the operation for snap_freeze_settle(). */
gboolean snap_op_begin(Snap *snap, const char *domain, const char *frozen_what, SnapOp *op,
                       GError **error);
void snap_op_end(SnapOp *op);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(SnapOp, snap_op_end)
/* A name libvirt can hold, for create and rename. */
gboolean snap_check_name(const char *name, GError **error);
/* Finishes every plan a crash left in the journal (ready hook). */
void snap_recover(Snap *snap);
/* Drops the snapshots a running plan hides from a model being built. */
void snap_plan_filter_model(Snap *snap, BackendModel *model);

/* ------------------------------------------------------------------ */
/* freeze.c */

void snap_freeze_init(Snap *snap);
/* Thaws every open freeze (snap_free). */
void snap_freeze_thaw_all(Snap *snap);
void snap_freeze_clear(Snap *snap);
/* Marks the domains frozen for @now in a model being built. */
void snap_freeze_mark_model(Snap *snap, BackendModel *model);
/* The frozen image of every disk of every freeze record under the state
 * directory, for the image policy of a model being built (policy_images
 * hook); NULL-terminated. */
char **snap_freeze_policy_images(Snap *snap);

/* ------------------------------------------------------------------ */
/* snap.c */

/* Tears snap down like snap_free() but leaves open freezes as they are,
 * records included: what a crash leaves behind.  For tests of the repair
 * at the next snap_new(). */
void snap_abandon(Snap *snap);

G_END_DECLS
