/* executor.c: running the steps of a plan (planner.h says what each does).
 *
 * Each step first looks at the real state (backing pointers read from the
 * image headers, the live or inactive domain XML, libvirt's snapshot
 * metadata, libvirt's block job on the disk) and does only what is still
 * missing, so that running a step again after a crash, at any point inside
 * it, finishes it:
 *
 *   commit          offline: qemu-img commit rewrites the same clusters
 *                   again; block job: done once top left the live chain, a
 *                   job still running is waited for, not started twice
 *   active-commit   done once the disk runs on base (blockjob.c resumes a
 *                   job that waits for its pivot)
 *   pull            done once image's backing pointer is the new one
 *   rebase-unsafe   done once the pointer is the new one
 *   create-overlay  created under a temporary name and renamed, so the
 *                   name exists only complete; done when it has the backing
 *   set-active      done when the definition already names the image
 *   redefine        a redefinition replaces whatever is there
 *   delete-snapshot done when libvirt no longer has it
 *   set-current     done when it is current
 *   delete-file     done when the file is gone
 *
 * Data-moving steps run at -o bandwidth= (MiB/s): the block jobs through
 * libvirt's bandwidth argument, an offline commit through qemu-img commit
 * -r; qemu-img rebase (an offline pull) has no rate limit.
 *
 * qemu-img never runs on an image the running QEMU has open: an offline
 * step on a running domain is refused when its image is in the live chain
 * (the planner never asks for that; this is the last line of defence).
 * Nor does anything run on a file outside the image policy: before each
 * step, fresh or rolled forward by recovery, guard.c checks every path the
 * step will touch, walking the chains again (headers may have changed
 * since the plan was made).
 *
 * Thread model: runs on the thread of the operation (or of recovery), under
 * the domain's lock.  Block job completion is observed through the
 * BLOCK_JOB_2 events the event thread records in Backend.job_events
 * (blockjob.c) and by polling virDomainGetBlockJobInfo.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "exec.h"
#include "guard.h"

#define JOB_TIMEOUT_S 900
#define JOB_POLL_US (G_USEC_PER_SEC / 5)

typedef struct {
  Backend *backend;
  virConnectPtr conn;
  virDomainPtr dom;
  const char *name;
  char uuid[VIR_UUID_STRING_BUFLEN];
  BackendJournal *journal;
  BackendGuard *guard;          /* the policy, fresh for each step */
  gboolean stop_in_job;         /* test hook: stop once the job started */
} Exec;

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

/* In the child before exec: SIGKILL when the daemon goes.  A qemu-img
 * left running by a killed daemon would hold the write lock on the image
 * that recovery at the next start must write; killed, its work is cut
 * short, which every step is ready for. */
static void
die_with_parent(gpointer parent)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != GPOINTER_TO_INT(parent))
    _exit(127); /* the daemon died before prctl() */
}

gboolean
backend_exec_qemu_img(const char *const *argv, GError **error)
{
  g_autoptr(GPtrArray) args = g_ptr_array_new();
  g_ptr_array_add(args, (gpointer) "qemu-img");
  for (guint i = 0; argv[i]; i++)
    g_ptr_array_add(args, (gpointer)argv[i]);
  g_ptr_array_add(args, NULL);
  g_autofree char *cmdline = g_strjoinv(" ", (char **)args->pdata);
  g_debug("%s", cmdline);

  g_autofree char *err_out = NULL;
  int status;
  g_autoptr(GError) spawn_error = NULL;
  if (!g_spawn_sync(NULL, (char **)args->pdata, NULL,
                    G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL, die_with_parent,
                    GINT_TO_POINTER(getpid()), NULL, &err_out,
                    &status, &spawn_error)) {
    g_set_error(error, BACKEND_ERROR, EIO, "%s: %s", cmdline, spawn_error->message);
    return FALSE;
  }
  g_autoptr(GError) wait_error = NULL;
  if (!g_spawn_check_wait_status(status, &wait_error)) {
    g_set_error(error, BACKEND_ERROR, EIO, "%s: %s: %s", cmdline, wait_error->message,
                err_out ? g_strstrip(err_out) : "");
    return FALSE;
  }
  return TRUE;
}

static gboolean
file_exists(const char *path)
{
  return access(path, F_OK) == 0;
}

/* The backing file of image as a canonical path, NULL when it has none. */
static gboolean
read_backing(Exec *x, const char *image, ChainFormat format, char **backing, GError **error)
{
  *backing = NULL;
  if (format != CHAIN_FORMAT_QCOW2)
    return TRUE;
  g_auto(ChainWalk) walk = {0};
  if (!backend_guard_chain(x->guard, image, format, NULL, 1, &walk, error))
    return FALSE;
  *backing = walk.rest ? backend_exec_canonical(walk.rest) : NULL;
  return TRUE;
}

static gboolean
same_file(const char *a, const char *b)
{
  if (!a || !b)
    return a == b;
  return backend_path_same(a, b);
}

static DomXmlDomain *
read_xml(Exec *x, unsigned int flags, GError **error)
{
  g_autofree char *xml = virDomainGetXMLDesc(x->dom, flags);
  if (!xml) {
    backend_set_virt_error(error, "domain %s: XML", x->name);
    return NULL;
  }
  return domxml_parse_domain(xml, error);
}

/* Sets *running to whether the domain runs; FALSE if libvirt cannot say. */
static gboolean
get_running(Exec *x, gboolean *running, GError **error)
{
  int active = virDomainIsActive(x->dom);
  if (active < 0) {
    backend_set_virt_error(error, "domain %s: state", x->name);
    return FALSE;
  }
  *running = active == 1;
  return TRUE;
}

/* TRUE when path is the source or a layer of the running chain of disk. */
static gboolean
in_live_chain(const DomXmlDisk *disk, const char *path)
{
  if (same_file(disk->source, path))
    return TRUE;
  for (guint i = 0; disk->backing && i < disk->backing->len; i++)
    if (same_file(((DomXmlLayer *)g_ptr_array_index(disk->backing, i))->path, path))
      return TRUE;
  return FALSE;
}

/* Refuses an offline step on a file the running QEMU has open. */
static gboolean
guard_offline(Exec *x, const PlanStep *step, GError **error)
{
  gboolean running;
  if (!get_running(x, &running, error))
    return FALSE;
  if (!running)
    return TRUE;
  g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
  if (!live)
    return FALSE;
  for (guint i = 0; i < live->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(live->disks, i);
    if (in_live_chain(disk, step->image)) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: refusing %s on %s: the running "
                  "QEMU has it open", x->name, disk->target, plan_step_kind_name(step->kind),
                  step->image);
      return FALSE;
    }
  }
  return TRUE;
}

static DomXmlDisk *
live_disk(DomXmlDomain *live, Exec *x, const char *target, GError **error)
{
  DomXmlDisk *disk = domxml_domain_find_disk(live, target);
  if (!disk)
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s has no disk %s any more", x->name, target);
  return disk;
}

/* The image directly below the top of a live disk, or NULL. */
static const char *
live_backing(const DomXmlDisk *disk)
{
  if (!disk->backing || disk->backing->len == 0)
    return NULL;
  return ((DomXmlLayer *)g_ptr_array_index(disk->backing, 0))->path;
}

/* ------------------------------------------------------------------ */
/* Block jobs                                                          */

static char *
job_key(Exec *x, const char *target)
{
  return g_strdup_printf("%s/%s", x->uuid, target);
}

static void
job_event_forget(Exec *x, const char *target)
{
  g_autofree char *key = job_key(x, target);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&x->backend->job_lock);
  g_hash_table_remove(x->backend->job_events, key);
}

/* The last status a BLOCK_JOB_2 event reported for target, or -1. */
static int
job_event_status(Exec *x, const char *target)
{
  g_autofree char *key = job_key(x, target);
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&x->backend->job_lock);
  gpointer value = g_hash_table_lookup(x->backend->job_events, key);
  return value ? GPOINTER_TO_INT(value) - 1 : -1;
}

/* 1 when a block job runs on target (info filled), 0 when none, -1 error. */
static int
job_info(Exec *x, const char *target, virDomainBlockJobInfo *info, GError **error)
{
  int ret = virDomainGetBlockJobInfo(x->dom, target, info, 0);
  if (ret < 0)
    backend_set_virt_error(error, "domain %s disk %s: block job state", x->name, target);
  return ret;
}

/* Waits until no block job runs on target; fails when an event says the
 * job failed or was cancelled. */
static gboolean
job_wait_end(Exec *x, const char *target, GError **error)
{
  gint64 deadline = g_get_monotonic_time() + JOB_TIMEOUT_S * G_USEC_PER_SEC;
  for (;;) {
    int status = job_event_status(x, target);
    if (status == VIR_DOMAIN_BLOCK_JOB_FAILED || status == VIR_DOMAIN_BLOCK_JOB_CANCELED) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: block job %s", x->name, target,
                  status == VIR_DOMAIN_BLOCK_JOB_FAILED ? "failed" : "was cancelled");
      return FALSE;
    }
    virDomainBlockJobInfo info;
    int ret = job_info(x, target, &info, error);
    if (ret < 0)
      return FALSE;
    if (ret == 0)
      return TRUE;
    if (g_get_monotonic_time() > deadline) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: block job still running after "
                  "%d s (%llu/%llu)", x->name, target, JOB_TIMEOUT_S, info.cur, info.end);
      return FALSE;
    }
    g_usleep(JOB_POLL_US);
  }
}

/* The test hook: stop as if killed while QEMU runs the job. */
static gboolean
job_test_hook(Exec *x, GError **error)
{
  if (!x->stop_in_job)
    return TRUE;
  g_set_error(error, BACKEND_ERROR, ECANCELED, "stopped by the test hook while a block job runs");
  return FALSE;
}

/* A job already on target (left by a crash) of the expected type is
 * waited for; any other job is an error. */
static gboolean
job_settle(Exec *x, const char *target, int type, gboolean *waited, GError **error)
{
  virDomainBlockJobInfo info;
  *waited = FALSE;
  int ret = job_info(x, target, &info, error);
  if (ret < 0)
    return FALSE;
  if (ret == 0)
    return TRUE;
  if (info.type != type) {
    g_set_error(error, BACKEND_ERROR, EBUSY, "domain %s disk %s: another block job (type %d) "
                "runs", x->name, target, info.type);
    return FALSE;
  }
  g_message("domain %s disk %s: waiting for a block job an earlier run started", x->name, target);
  *waited = TRUE;
  return job_wait_end(x, target, error);
}

/* ------------------------------------------------------------------ */
/* Steps                                                               */

static gboolean
step_commit_offline(Exec *x, const PlanStep *step, GError **error)
{
  if (!guard_offline(x, step, error))
    return FALSE;
  g_autofree char *backing = NULL;
  if (!read_backing(x, step->image, step->format, &backing, error))
    return FALSE;
  if (!same_file(backing, step->backing)) {
    g_set_error(error, BACKEND_ERROR, EIO, "disk %s: cannot commit %s into %s: its backing file "
                "is %s", step->disk, step->image, step->backing, backing ? backing : "none");
    return FALSE;
  }
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  const char *head[] = {"commit", "-q", "-t", "writethrough", "-d", "-f",
                        chain_format_name(step->format), "-b", step->backing};
  for (guint i = 0; i < G_N_ELEMENTS(head); i++)
    g_ptr_array_add(argv, (gpointer)head[i]);
  /* -r is in bytes per second (-o bandwidth= is MiB/s); no -r: unlimited. */
  g_autofree char *rate = g_strdup_printf("%lu", x->backend->bandwidth_mib * 1024 * 1024);
  if (x->backend->bandwidth_mib) {
    g_ptr_array_add(argv, (gpointer) "-r");
    g_ptr_array_add(argv, rate);
  }
  g_ptr_array_add(argv, step->image);
  g_ptr_array_add(argv, NULL);
  return backend_exec_qemu_img((const char *const *)argv->pdata, error);
}

/* After a restart libvirt may still be processing the end of a job that
 * QEMU finished meanwhile: no job is listed, but the live XML changes only
 * a moment later.  Polls the live XML for a few seconds for done(). */
static gboolean
settled_meanwhile(Exec *x, const PlanStep *step,
                  gboolean (*done)(const DomXmlDisk *, const PlanStep *))
{
  for (guint i = 0; i < 20; i++) {
    g_usleep(JOB_POLL_US);
    g_autoptr(GError) error = NULL;
    g_autoptr(DomXmlDomain) live = read_xml(x, 0, &error);
    DomXmlDisk *disk = live ? domxml_domain_find_disk(live, step->disk) : NULL;
    if (disk && done(disk, step)) {
      g_message("domain %s disk %s: the %s an earlier run started has finished", x->name,
                step->disk, plan_step_kind_name(step->kind));
      return TRUE;
    }
  }
  return FALSE;
}

static gboolean
commit_done(const DomXmlDisk *disk, const PlanStep *step)
{
  return !in_live_chain(disk, step->image);
}

static gboolean
pull_done(const DomXmlDisk *disk, const PlanStep *step)
{
  return same_file(live_backing(disk), step->backing);
}

static gboolean
step_commit_job(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
  DomXmlDisk *disk = live ? live_disk(live, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (!in_live_chain(disk, step->image))
    return TRUE; /* the commit finished and libvirt dropped top */
  gboolean waited;
  if (!job_settle(x, step->disk, VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT, &waited, error))
    return FALSE;
  if (!waited) {
    job_event_forget(x, step->disk);
    g_debug("virDomainBlockCommit(%s, %s, base=%s, top=%s, bandwidth=%lu MiB/s, SHALLOW)",
            x->name, step->disk, step->backing, step->image, x->backend->bandwidth_mib);
    if (virDomainBlockCommit(x->dom, step->disk, step->backing, step->image,
                             x->backend->bandwidth_mib, VIR_DOMAIN_BLOCK_COMMIT_SHALLOW) < 0) {
      g_autofree char *why = g_strdup(virGetLastErrorMessage());
      if (settled_meanwhile(x, step, commit_done))
        return TRUE;
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: commit %s into %s: %s", x->name,
                  step->disk, step->image, step->backing, why);
      return FALSE;
    }
    if (!job_test_hook(x, error) || !job_wait_end(x, step->disk, error))
      return FALSE;
  }
  g_autoptr(DomXmlDomain) after = read_xml(x, 0, error);
  DomXmlDisk *now = after ? live_disk(after, x, step->disk, error) : NULL;
  if (!now)
    return FALSE;
  if (in_live_chain(now, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the commit %s is still in "
                "the chain", x->name, step->disk, step->image);
    return FALSE;
  }
  return TRUE;
}

static gboolean
step_active_commit(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
  DomXmlDisk *disk = live ? live_disk(live, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (same_file(disk->source, step->backing))
    return TRUE; /* pivoted already */
  if (!same_file(disk->source, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s runs on %s, neither %s nor %s",
                x->name, step->disk, disk->source, step->image, step->backing);
    return FALSE;
  }
  if (!same_file(live_backing(disk), step->backing)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: %s is not backed by %s", x->name,
                step->disk, step->image, step->backing);
    return FALSE;
  }
  if (!backend_job_active_commit(x->backend, x->dom, x->uuid, step->disk, error))
    return FALSE;
  g_autoptr(DomXmlDomain) after = read_xml(x, 0, error);
  DomXmlDisk *now = after ? live_disk(after, x, step->disk, error) : NULL;
  if (!now)
    return FALSE;
  if (!same_file(now->source, step->backing)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the pivot it runs on %s, "
                "not %s", x->name, step->disk, now->source, step->backing);
    return FALSE;
  }
  return TRUE;
}

static gboolean
step_pull_offline(Exec *x, const PlanStep *step, GError **error)
{
  if (!guard_offline(x, step, error))
    return FALSE;
  g_autofree char *backing = NULL;
  if (!read_backing(x, step->image, step->format, &backing, error))
    return FALSE;
  if (same_file(backing, step->backing))
    return TRUE;
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  const char *head[] = {"rebase", "-q", "-t", "writethrough", "-f", chain_format_name(step->format),
                        "-b", step->backing ? step->backing : ""};
  for (guint i = 0; i < G_N_ELEMENTS(head); i++)
    g_ptr_array_add(argv, (gpointer)head[i]);
  if (step->backing) {
    g_ptr_array_add(argv, (gpointer) "-F");
    g_ptr_array_add(argv, (gpointer)chain_format_name(step->backing_format));
  }
  g_ptr_array_add(argv, step->image);
  g_ptr_array_add(argv, NULL);
  return backend_exec_qemu_img((const char *const *)argv->pdata, error);
}

static gboolean
step_pull_job(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
  DomXmlDisk *disk = live ? live_disk(live, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (!same_file(disk->source, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s runs on %s, not %s: cannot pull "
                "into it", x->name, step->disk, disk->source, step->image);
    return FALSE;
  }
  if (same_file(live_backing(disk), step->backing))
    return TRUE;
  gboolean waited;
  if (!job_settle(x, step->disk, VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, &waited, error))
    return FALSE;
  if (!waited) {
    job_event_forget(x, step->disk);
    g_debug("virDomainBlockRebase(%s, %s, base=%s, bandwidth=%lu MiB/s)", x->name, step->disk,
            step->backing ? step->backing : "(none)", x->backend->bandwidth_mib);
    if (virDomainBlockRebase(x->dom, step->disk, step->backing, x->backend->bandwidth_mib,
                             0) < 0) {
      g_autofree char *why = g_strdup(virGetLastErrorMessage());
      if (settled_meanwhile(x, step, pull_done))
        return TRUE;
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: pull into %s: %s", x->name,
                  step->disk, step->image, why);
      return FALSE;
    }
    if (!job_test_hook(x, error) || !job_wait_end(x, step->disk, error))
      return FALSE;
  }
  g_autoptr(DomXmlDomain) after = read_xml(x, 0, error);
  DomXmlDisk *now = after ? live_disk(after, x, step->disk, error) : NULL;
  if (!now)
    return FALSE;
  if (!same_file(live_backing(now), step->backing)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s: after the pull %s is backed by %s, "
                "not %s", x->name, step->disk, step->image, live_backing(now) ? live_backing(now)
                : "nothing", step->backing ? step->backing : "nothing");
    return FALSE;
  }
  return TRUE;
}

static gboolean
step_rebase_unsafe(Exec *x, const PlanStep *step, GError **error)
{
  if (!guard_offline(x, step, error))
    return FALSE;
  g_autofree char *backing = NULL;
  if (!read_backing(x, step->image, step->format, &backing, error))
    return FALSE;
  if (same_file(backing, step->backing))
    return TRUE;
  const char *argv[] = {"rebase", "-q", "-u", "-f", chain_format_name(step->format), "-b",
                        step->backing, "-F", chain_format_name(step->backing_format), step->image,
                        NULL};
  return backend_exec_qemu_img(argv, error);
}

static gboolean
step_create_overlay(Exec *x, const PlanStep *step, GError **error)
{
  if (file_exists(step->image)) {
    g_autofree char *backing = NULL;
    if (!read_backing(x, step->image, CHAIN_FORMAT_QCOW2, &backing, error))
      return FALSE;
    if (same_file(backing, step->backing))
      return TRUE;
    g_set_error(error, BACKEND_ERROR, EEXIST, "disk %s: %s exists and is not an overlay on %s",
                step->disk, step->image, step->backing);
    return FALSE;
  }
  /* -u with the size read here: qemu-img then never opens the backing
   * file, which a running QEMU may hold locked. */
  g_auto(ChainWalk) backing = {0};
  if (!backend_guard_chain(x->guard, step->backing, step->backing_format, NULL, 1, &backing,
                           error)) {
    g_prefix_error(error, "disk %s: ", step->disk);
    return FALSE;
  }
  g_autofree char *size = g_strdup_printf("%" G_GUINT64_FORMAT,
                                          chain_layer_virtual_size(backing.layers->pdata[0]));
  g_autofree char *tmp = g_strdup_printf("%s.virtsnapfs-tmp", step->image);
  unlink(tmp);
  const char *argv[] = {"create", "-q", "-f", "qcow2", "-u", "-b", step->backing, "-F",
                        chain_format_name(step->backing_format), tmp, size, NULL};
  if (!backend_exec_qemu_img(argv, error))
    return FALSE;
  if (link(tmp, step->image) < 0) {
    int err = errno;
    unlink(tmp);
    g_set_error(error, BACKEND_ERROR, err == EEXIST ? EEXIST : EIO, "cannot create %s: %s",
                step->image, g_strerror(err));
    return FALSE;
  }
  unlink(tmp);
  return TRUE;
}

static gboolean
step_set_active(Exec *x, const PlanStep *step, GError **error)
{
  gboolean running;
  if (!get_running(x, &running, error))
    return FALSE;
  if (running) {
    g_autoptr(DomXmlDomain) live = read_xml(x, 0, error);
    DomXmlDisk *disk = live ? live_disk(live, x, step->disk, error) : NULL;
    if (!disk)
      return FALSE;
    if (!same_file(disk->source, step->image)) {
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s runs on %s, not %s", x->name,
                  step->disk, disk->source, step->image);
      return FALSE;
    }
    return TRUE;
  }
  g_autofree char *xml = virDomainGetXMLDesc(x->dom, VIR_DOMAIN_XML_INACTIVE);
  if (!xml) {
    backend_set_virt_error(error, "domain %s: XML", x->name);
    return FALSE;
  }
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, error);
  if (!parsed)
    return FALSE;
  DomXmlDisk *disk = live_disk(parsed, x, step->disk, error);
  if (!disk)
    return FALSE;
  if (same_file(disk->source, step->image) && disk->format == step->format && !disk->backing)
    return TRUE;
  g_autofree char *fixed = domxml_set_disk_source(xml, step->disk, step->image, step->format, error);
  if (!fixed)
    return FALSE;
  g_debug("virDomainDefineXML(%s) with disk %s on %s", x->name, step->disk, step->image);
  g_autoptr(BackendVirDomain) defined = virDomainDefineXML(x->conn, fixed);
  if (!defined) {
    backend_set_virt_error(error, "domain %s: redefine disk %s on %s", x->name, step->disk,
                           step->image);
    return FALSE;
  }
  return TRUE;
}

/* libvirt's XML of snapshot name, or NULL (no error) when it has none. */
static char *
snapshot_xml(Exec *x, const char *name, GError **error)
{
  g_autoptr(BackendVirDomainSnapshot) snap = virDomainSnapshotLookupByName(x->dom, name, 0);
  if (!snap) {
    const virError *err = virGetLastError();
    if (!err || err->code != VIR_ERR_NO_DOMAIN_SNAPSHOT)
      backend_set_virt_error(error, "domain %s: snapshot %s", x->name, name);
    return NULL;
  }
  char *xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
  if (!xml)
    backend_set_virt_error(error, "domain %s: XML of snapshot %s", x->name, name);
  return xml;
}

static gboolean
step_redefine(Exec *x, const PlanStep *step, GError **error)
{
  const PlanSnapshot *def = step->definition;
  GError *local = NULL;
  g_autofree char *template = snapshot_xml(x, def->name, &local);
  if (!template && !local && x->journal->op == PLAN_OP_RENAME &&
      g_strcmp0(x->journal->new_name, def->name) == 0)
    template = snapshot_xml(x, x->journal->name, &local);
  if (local) {
    g_propagate_error(error, local);
    return FALSE;
  }
  g_autofree char *domain_xml = NULL;
  if (!template) {
    domain_xml = virDomainGetXMLDesc(x->dom, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
    if (!domain_xml) {
      backend_set_virt_error(error, "domain %s: XML", x->name);
      return FALSE;
    }
  }
  g_autofree char *xml = exec_xml_redefine_snapshot(template, domain_xml, def, error);
  if (!xml)
    return FALSE;
  unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE;
  if (def->current)
    flags |= VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT;
  g_debug("virDomainSnapshotCreateXML(%s, REDEFINE%s) %s", x->name, def->current ? "|CURRENT" : "",
          def->name);
  g_autoptr(BackendVirDomainSnapshot) snap = virDomainSnapshotCreateXML(x->dom, xml, flags);
  if (!snap) {
    backend_set_virt_error(error, "domain %s: redefine snapshot %s", x->name, def->name);
    return FALSE;
  }
  return TRUE;
}

static gboolean
step_delete_snapshot(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(BackendVirDomainSnapshot) snap =
      virDomainSnapshotLookupByName(x->dom, step->snapshot, 0);
  if (!snap) {
    const virError *err = virGetLastError();
    if (err && err->code == VIR_ERR_NO_DOMAIN_SNAPSHOT)
      return TRUE;
    backend_set_virt_error(error, "domain %s: snapshot %s", x->name, step->snapshot);
    return FALSE;
  }
  g_debug("virDomainSnapshotDelete(%s, %s, METADATA_ONLY)", x->name, step->snapshot);
  if (virDomainSnapshotDelete(snap, VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY) < 0) {
    backend_set_virt_error(error, "domain %s: delete metadata of snapshot %s", x->name,
                           step->snapshot);
    return FALSE;
  }
  return TRUE;
}

static gboolean
step_set_current(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(BackendVirDomainSnapshot) snap =
      virDomainSnapshotLookupByName(x->dom, step->snapshot, 0);
  if (!snap) {
    backend_set_virt_error(error, "domain %s: snapshot %s", x->name, step->snapshot);
    return FALSE;
  }
  if (virDomainSnapshotIsCurrent(snap, 0) == 1)
    return TRUE;
  g_autofree char *xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
  if (!xml) {
    backend_set_virt_error(error, "domain %s: XML of snapshot %s", x->name, step->snapshot);
    return FALSE;
  }
  g_autoptr(BackendVirDomainSnapshot) again = virDomainSnapshotCreateXML(
      x->dom, xml, VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT);
  if (!again) {
    backend_set_virt_error(error, "domain %s: make snapshot %s current", x->name, step->snapshot);
    return FALSE;
  }
  return TRUE;
}

/* TRUE when a snapshot's metadata names path as an overlay. */
static gboolean
snapshot_names_file(Exec *x, const char *path, char **which, GError **error)
{
  virDomainSnapshotPtr *snaps = NULL;
  int n = virDomainListAllSnapshots(x->dom, &snaps, 0);
  if (n < 0) {
    backend_set_virt_error(error, "domain %s: snapshots", x->name);
    return FALSE;
  }
  gboolean found = FALSE;
  for (int i = 0; i < n; i++) {
    g_autofree char *xml = found ? NULL : virDomainSnapshotGetXMLDesc(snaps[i], 0);
    g_autoptr(DomXmlSnapshot) parsed = xml ? domxml_parse_snapshot(xml, NULL) : NULL;
    for (guint j = 0; parsed && j < parsed->disks->len && !found; j++) {
      DomXmlSnapshotDisk *sd = g_ptr_array_index(parsed->disks, j);
      if (sd->source && same_file(sd->source, path)) {
        found = TRUE;
        *which = g_strdup(parsed->name);
      }
    }
    virDomainSnapshotFree(snaps[i]);
  }
  free(snaps);
  return found;
}

static gboolean
step_delete_file(Exec *x, const PlanStep *step, GError **error)
{
  if (!file_exists(step->image))
    return TRUE;
  g_autofree char *which = NULL;
  GError *local = NULL;
  if (snapshot_names_file(x, step->image, &which, &local) || local) {
    if (local)
      g_propagate_error(error, local);
    else
      g_set_error(error, BACKEND_ERROR, EIO, "domain %s: snapshot %s still names %s: not deleted",
                  x->name, which, step->image);
    return FALSE;
  }
  /* Files leave the disk only once nothing names them: not the domain. */
  const unsigned int flags[] = {0, VIR_DOMAIN_XML_INACTIVE};
  for (guint i = 0; i < G_N_ELEMENTS(flags); i++) {
    g_autoptr(DomXmlDomain) def = read_xml(x, flags[i], error);
    if (!def)
      return FALSE;
    for (guint j = 0; j < def->disks->len; j++) {
      DomXmlDisk *disk = g_ptr_array_index(def->disks, j);
      if (in_live_chain(disk, step->image)) {
        g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s still uses %s: not deleted",
                    x->name, disk->target, step->image);
        return FALSE;
      }
    }
  }
  g_debug("unlink(%s)", step->image);
  if (unlink(step->image) < 0 && errno != ENOENT) {
    int err = errno;
    g_set_error(error, BACKEND_ERROR, EIO, "cannot delete %s: %s", step->image, g_strerror(err));
    return FALSE;
  }
  return TRUE;
}

/* An active commit for a domain that no longer runs (QEMU died or was shut
 * down in the middle of the plan): qemu-img commit, then the definition
 * names the base.  Done once it does; a commit cut short runs again. */
static gboolean
step_active_commit_offline(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(DomXmlDomain) def = read_xml(x, VIR_DOMAIN_XML_INACTIVE, error);
  DomXmlDisk *disk = def ? live_disk(def, x, step->disk, error) : NULL;
  if (!disk)
    return FALSE;
  if (same_file(disk->source, step->backing))
    return TRUE;
  if (!same_file(disk->source, step->image)) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s disk %s is defined on %s, neither %s nor %s",
                x->name, step->disk, disk->source, step->image, step->backing);
    return FALSE;
  }
  if (!step_commit_offline(x, step, error))
    return FALSE;
  PlanStep set_active = {.kind = PLAN_STEP_SET_ACTIVE, .disk = step->disk,
                         .image = step->backing, .format = step->backing_format};
  return step_set_active(x, &set_active, error);
}

/* The image of target's defined chain whose backing file is image, and
 * its format; NULL (no error) when image is not in the chain below. */
static char *
defined_child(Exec *x, const char *target, const char *image, ChainFormat *format,
              GError **error)
{
  g_autoptr(DomXmlDomain) def = read_xml(x, VIR_DOMAIN_XML_INACTIVE, error);
  DomXmlDisk *disk = def ? live_disk(def, x, target, error) : NULL;
  if (!disk)
    return NULL;
  g_auto(ChainWalk) walk = {0};
  if (!backend_guard_chain(x->guard, disk->source, disk->format, NULL, 0, &walk, error))
    return NULL;
  for (guint i = 0; i + 1 < walk.layers->len; i++) {
    if (same_file(chain_layer_path(walk.layers->pdata[i + 1]), image)) {
      *format = chain_layer_format(walk.layers->pdata[i]);
      return g_strdup(chain_layer_path(walk.layers->pdata[i]));
    }
  }
  return NULL;
}

/* An intermediate commit for a domain that no longer runs: libvirt's
 * block commit also points the image above top at base, so after
 * qemu-img commit that child is rebased (unsafe: base now holds top's
 * clusters).  Done once no image of the chain is backed by top. */
static gboolean
step_commit_job_offline(Exec *x, const PlanStep *step, GError **error)
{
  GError *local = NULL;
  ChainFormat child_format = CHAIN_FORMAT_UNKNOWN;
  g_autofree char *child = defined_child(x, step->disk, step->image, &child_format, &local);
  if (local) {
    g_propagate_error(error, local);
    return FALSE;
  }
  if (!child)
    return TRUE;
  if (!step_commit_offline(x, step, error))
    return FALSE;
  PlanStep rebase = {.kind = PLAN_STEP_REBASE_UNSAFE, .disk = step->disk, .image = child,
                     .format = child_format, .backing = step->backing,
                     .backing_format = step->backing_format};
  return step_rebase_unsafe(x, &rebase, error);
}

/* A block job step of a plan made while the domain ran, for a domain that
 * is shut off now (QEMU was killed, or the guest shut down, between the
 * plan and this run): the same merge offline with qemu-img, which writes
 * the same clusters.  Sets *handled when it ran the step. */
static gboolean
run_job_step_offline(Exec *x, const PlanStep *step, gboolean *handled, GError **error)
{
  *handled = FALSE;
  if (!step->block_job)
    return TRUE;
  gboolean running;
  if (!get_running(x, &running, error))
    return FALSE;
  if (running)
    return TRUE;
  *handled = TRUE;
  g_message("domain %s disk %s: the domain is not running any more: %s %s offline", x->name,
            step->disk, plan_step_kind_name(step->kind), step->image);
  switch (step->kind) {
  case PLAN_STEP_COMMIT:
    return step_commit_job_offline(x, step, error);
  case PLAN_STEP_ACTIVE_COMMIT:
    return step_active_commit_offline(x, step, error);
  case PLAN_STEP_PULL:
    return step_pull_offline(x, step, error);
  default:
    *handled = FALSE;
    return TRUE;
  }
}

static gboolean
run_step(Exec *x, const PlanStep *step, GError **error)
{
  gboolean handled;
  if (!run_job_step_offline(x, step, &handled, error))
    return FALSE;
  if (handled)
    return TRUE;
  switch (step->kind) {
  case PLAN_STEP_COMMIT:
    return step->block_job ? step_commit_job(x, step, error) : step_commit_offline(x, step, error);
  case PLAN_STEP_ACTIVE_COMMIT:
    return step_active_commit(x, step, error);
  case PLAN_STEP_PULL:
    return step->block_job ? step_pull_job(x, step, error) : step_pull_offline(x, step, error);
  case PLAN_STEP_REBASE_UNSAFE:
    return step_rebase_unsafe(x, step, error);
  case PLAN_STEP_CREATE_OVERLAY:
    return step_create_overlay(x, step, error);
  case PLAN_STEP_SET_ACTIVE:
    return step_set_active(x, step, error);
  case PLAN_STEP_REDEFINE_SNAPSHOT:
    return step_redefine(x, step, error);
  case PLAN_STEP_DELETE_SNAPSHOT:
    return step_delete_snapshot(x, step, error);
  case PLAN_STEP_SET_CURRENT:
    return step_set_current(x, step, error);
  case PLAN_STEP_DELETE_FILE:
    return step_delete_file(x, step, error);
  }
  g_set_error(error, BACKEND_ERROR, EINVAL, "unknown plan step %d", (int)step->kind);
  return FALSE;
}

/* libvirt writes the chain it found into the inactive XML (<backingStore>,
 * e.g. after an offline snapshot) and reads it back from there.  A plan
 * that moved backing pointers below an unchanged active image leaves that
 * copy stale: it is dropped so that libvirt looks at the files again.
 * Idempotent; shut-off domains only (a running domain's XML is libvirt's). */
static gboolean
tidy_inactive_xml(Exec *x, GError **error)
{
  gboolean running;
  if (!get_running(x, &running, error))
    return FALSE;
  if (running)
    return TRUE;
  g_autofree char *xml = virDomainGetXMLDesc(x->dom, VIR_DOMAIN_XML_INACTIVE);
  if (!xml) {
    backend_set_virt_error(error, "domain %s: XML", x->name);
    return FALSE;
  }
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, error);
  if (!parsed)
    return FALSE;
  g_autofree char *fixed = NULL;
  for (guint i = 0; i < parsed->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(parsed->disks, i);
    if (!disk->backing)
      continue;
    /* Compare what the XML lists with the headers, layer by layer; a
     * chain the policy refuses is stale too (libvirt then looks again). */
    g_auto(ChainWalk) walk = {0};
    g_autoptr(GError) ignored = NULL;
    gboolean stale = !backend_guard_chain(x->guard, disk->source, disk->format, NULL, 0, &walk,
                                          &ignored);
    for (guint j = 0; !stale && j < disk->backing->len; j++) {
      DomXmlLayer *listed = g_ptr_array_index(disk->backing, j);
      stale = j + 1 >= walk.layers->len ||
              !same_file(chain_layer_path(walk.layers->pdata[j + 1]), listed->path);
    }
    if (!stale && disk->backing_complete)
      stale = walk.layers->len > disk->backing->len + 1;
    if (!stale)
      continue;
    g_autofree char *next = domxml_set_disk_source(fixed ? fixed : xml, disk->target, disk->source,
                                                   disk->format, error);
    if (!next)
      return FALSE;
    g_free(fixed);
    fixed = g_steal_pointer(&next);
  }
  if (!fixed)
    return TRUE;
  g_debug("virDomainDefineXML(%s): stale backing chains dropped", x->name);
  g_autoptr(BackendVirDomain) defined = virDomainDefineXML(x->conn, fixed);
  if (!defined) {
    backend_set_virt_error(error, "domain %s: drop stale backing chains", x->name);
    return FALSE;
  }
  return TRUE;
}

/* "commit vda", "redefine-snapshot s3": for the log and the job status. */
static char *
step_title(const PlanStep *step)
{
  const char *object = step->disk ? step->disk : step->snapshot;
  return g_strdup_printf("%s %s", plan_step_kind_name(step->kind), object ? object : "");
}

gboolean
backend_exec_run(Backend *backend, virDomainPtr dom, BackendJournal *journal, GError **error)
{
  g_autoptr(BackendVirConnect) conn = backend_get_connection(backend, error);
  if (!conn)
    return FALSE;
  Exec x = {
    .backend = backend,
    .conn = conn,
    .dom = dom,
    .name = virDomainGetName(dom),
    .journal = journal,
  };
  if (virDomainGetUUIDString(dom, x.uuid) < 0) {
    backend_set_virt_error(error, "domain %s: UUID", x.name);
    return FALSE;
  }
  PlanOp op;
  backend_journal_get_op(journal, &op);
  g_autofree char *op_title = op.kind == PLAN_OP_RENAME
      ? g_strdup_printf("rename %s to %s", op.name, op.new_name)
      : g_strdup_printf("%s %s", op.kind == PLAN_OP_DELETE ? "delete" : "revert to", op.name);
  guint n = journal->steps->len;
  while (journal->done < n) {
    const PlanStep *step = journal->steps->pdata[journal->done];
    gboolean in_job = FALSE;
    if (backend_exec_stop_here(backend, journal->done, &in_job)) {
      gboolean job = step->block_job &&
                     (step->kind == PLAN_STEP_COMMIT || step->kind == PLAN_STEP_PULL);
      if (!(in_job && job)) {
        g_set_error(error, BACKEND_ERROR, ECANCELED, "%s: stopped after step %u by the test hook",
                    op_title, journal->done);
        return FALSE;
      }
      x.stop_in_job = TRUE;
    }
    g_autofree char *title = step_title(step);
    backend_exec_status_set(backend, journal->domain, op_title, journal->done + 1, n, title,
                            step->block_job ? step->disk : NULL);
    g_debug("domain %s: %s: step %u/%u %s", journal->domain, op_title, journal->done + 1, n,
            title);
    g_autoptr(BackendGuard) guard = backend_guard_new(backend, error);
    x.guard = guard;
    if (!guard || !backend_guard_step(guard, step, error) || !run_step(&x, step, error)) {
      g_prefix_error(error, "%s: step %u/%u %s: ", op_title, journal->done + 1, n, title);
      return FALSE;
    }
    if (!backend_journal_step_done(journal, error))
      return FALSE;
  }
  g_autoptr(BackendGuard) guard = backend_guard_new(backend, error);
  x.guard = guard;
  if (!guard || !tidy_inactive_xml(&x, error)) {
    g_prefix_error(error, "%s: after the last step: ", op_title);
    return FALSE;
  }
  return TRUE;
}
