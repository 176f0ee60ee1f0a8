/* exec.h: what the files of the snapshot executor share.  A map of the
 * code, grouped by the file that defines each prototype:
 *
 *   snapshot-ops.c  the four public operations, pins, job status, the
 *                   per-domain FIFO queue, recovery at start-up
 *   plan-input.c    libvirt + image headers -> PlanState
 *   executor.c      running a plan's steps, idempotently
 *   journal.c       the crash-safe plan journal in the state directory
 *   exec-xml.c      the snapshot and domain XML the executor writes
 *
 * Lock order (after the backend's, see backend-private.h): the domain
 * queue (BackendExec.queue_lock, released while the operation runs),
 * then backend_domain_lock(), then BackendExec.lock (a leaf, held for
 * table updates only, never across libvirt or qemu-img).
 */
#pragma once

#include "backend-private.h"
#include "planner.h"

G_BEGIN_DECLS

struct _BackendExec {
  gboolean revert_discard;

  GMutex queue_lock;            /* protects queues */
  GCond queue_cond;
  GHashTable *queues;           /* domain -> BackendExecQueue*: FIFO tickets */

  GMutex lock;                  /* leaf; protects the tables below */
  GHashTable *hidden;           /* "domain\tsnapshot" -> count */
  GHashTable *pins;             /* "dev:ino" -> count */
  guint64 unpins;               /* counts unpins, for waiters on unpinned */
  GCond unpinned;               /* broadcast at every unpin (with lock) */
  GHashTable *status;           /* domain -> BackendExecStatus* */
  int stop_after;               /* test hooks, see backend_exec_set_stop_after() */
  gboolean stop_in_job;
};

typedef struct {
  char *op;                     /* "delete s2" */
  guint step;                   /* 1-based, 0 before the first */
  guint n_steps;
  char *what;                   /* "commit vda" */
  char *job_disk;               /* a block job runs on this disk, or NULL */
} BackendExecStatus;

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
} BackendJournal;

/* Takes a reference on steps. */
BackendJournal *backend_journal_new(const char *domain, const char *uuid, const PlanOp *op,
                                    const char *hidden, GPtrArray *steps);
void backend_journal_free(BackendJournal *journal);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendJournal, backend_journal_free)
/* The PlanOp the journal records (strings borrowed from it). */
void backend_journal_get_op(const BackendJournal *journal, PlanOp *op);
/* STATE_DIR/journal/<uuid>.plan, file and directory fsync'd. */
gboolean backend_journal_write(BackendJournal *journal, const char *state_dir, GError **error);
/* Appends "done N" (N = journal->done + 1) and fsyncs it. */
gboolean backend_journal_step_done(BackendJournal *journal, GError **error);
gboolean backend_journal_remove(BackendJournal *journal, GError **error);
/* Every journal under state_dir (of BackendJournal); unreadable ones are
 * logged and left alone. */
GPtrArray *backend_journals_load(const char *state_dir, GError **error);

/* ------------------------------------------------------------------ */
/* plan-input.c */

typedef struct {
  PlanState *state;
  GPtrArray *bitmaps;           /* ChainBitmap *: the allocations state borrows */
  char *uuid;
  /* Snapshots the planner must not touch, name -> why ("disk vda is an
   * internal snapshot"): EOPNOTSUPP for an operation on them. */
  GHashTable *unsupported;
} BackendPlanInput;

void backend_plan_input_free(BackendPlanInput *input);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendPlanInput, backend_plan_input_free)
/* Reads the domain's XML, its snapshots and the headers and allocation
 * of every image of every disk (all branches), and marks pinned and
 * shared layers.  Blocks; call under the domain's lock. */
BackendPlanInput *backend_plan_input_read(Backend *backend, virDomainPtr dom, GError **error);
/* The path the planner and journal use for a file: canonical when it
 * exists, lexically cleaned otherwise. */
char *backend_exec_canonical(const char *path);

/* ------------------------------------------------------------------ */
/* executor.c */

/* Runs journal->steps from journal->done on, recording each finished
 * step.  Each step first checks whether it already happened (a re-run
 * after a crash) and then only does what is missing.  Updates the job
 * status of the domain. */
gboolean backend_exec_run(Backend *backend, virDomainPtr dom, BackendJournal *journal,
                          GError **error);

/* ------------------------------------------------------------------ */
/* exec-xml.c */

/* <domainsnapshot> for creating snapshot name: an external qcow2 overlay
 * for targets[i] at overlays[i], snapshot='no' for no_targets. */
char *exec_xml_create_snapshot(const char *name, const char *const *targets,
                               const char *const *overlays, const char *const *no_targets);
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
/* snapshot-ops.c */

void backend_exec_status_set(Backend *backend, const char *domain, const char *op, guint step,
                             guint n_steps, const char *what, const char *job_disk);
void backend_exec_status_clear(Backend *backend, const char *domain);
/* Whether the layer with this identity is pinned by a reader. */
gboolean backend_exec_pinned(Backend *backend, dev_t dev, ino_t ino);
/* Test hook: a plan stops after its first k steps (k >= 0) as if the
 * daemon was killed there: the operation fails with ECANCELED and leaves
 * its journal and hidden snapshot behind.  With in_job, when step k + 1
 * is a commit or pull block job, it stops right after starting the job,
 * which QEMU then runs on its own.  k = -1 switches the hook off. */
void backend_exec_set_stop_after(Backend *backend, int steps, gboolean in_job);
/* Whether the plan must stop (as if killed) after steps_done steps;
 * *in_job: inside the next step, once its block job started. */
gboolean backend_exec_stop_here(Backend *backend, guint steps_done, gboolean *in_job);

G_END_DECLS
