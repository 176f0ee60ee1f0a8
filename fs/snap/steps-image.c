/* steps-image.c: the steps that work on image files: qemu-img commit,
 * rebase (a pull, or an unsafe rebase that only moves the pointer) and
 * create, and deleting a file that left every chain.
 *
 * Each is done once its result is there: a commit writes the same
 * clusters again (and is refused unless the image still backs onto the
 * base), a pull or rebase is done once the image's backing pointer is the
 * new one, an overlay is created under a temporary name and linked into
 * place so that its name exists only complete, and a file is gone once it
 * is gone.  Commits run at -o bandwidth= (qemu-img.c); qemu-img rebase
 * has no rate limit.
 *
 * qemu-img never runs on an image the running QEMU has open: an offline
 * step on a running domain is refused when its image is in the live chain
 * (the planner never asks for that; this is the last line of defence).
 * Files leave the disk only once no snapshot and no definition of the
 * domain names them.
 *
 * Thread model: the operation's thread, in the domain's turn.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exec.h"

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

gboolean
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
  return backend_qemu_img_commit(x->backend, step->image, step->format, step->backing, error);
}

/* qemu-img rebase of step->image onto step->backing: a pull (the clusters
 * of the layers left out are copied up first), or with unsafe only the
 * pointer.  Done once the pointer is the new one. */
static gboolean
rebase_offline(Exec *x, const PlanStep *step, gboolean unsafe, GError **error)
{
  if (!guard_offline(x, step, error))
    return FALSE;
  g_autofree char *backing = NULL;
  if (!read_backing(x, step->image, step->format, &backing, error))
    return FALSE;
  if (same_file(backing, step->backing))
    return TRUE;
  /* Unsafe touches only the header: no cache mode to choose. */
  const char *safe[] = {"rebase", "-q", "-t", "writethrough", NULL};
  const char *header_only[] = {"rebase", "-q", "-u", NULL};
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  for (const char *const *a = unsafe ? header_only : safe; *a; a++)
    g_ptr_array_add(argv, (gpointer)*a);
  const char *tail[] = {"-f", chain_format_name(step->format), "-b",
                        step->backing ? step->backing : ""};
  for (guint i = 0; i < G_N_ELEMENTS(tail); i++)
    g_ptr_array_add(argv, (gpointer)tail[i]);
  if (step->backing) {
    g_ptr_array_add(argv, (gpointer) "-F");
    g_ptr_array_add(argv, (gpointer)chain_format_name(step->backing_format));
  }
  g_ptr_array_add(argv, step->image);
  g_ptr_array_add(argv, NULL);
  return backend_qemu_img((const char *const *)argv->pdata, error);
}

gboolean
step_pull_offline(Exec *x, const PlanStep *step, GError **error)
{
  return rebase_offline(x, step, FALSE, error);
}

gboolean
step_rebase_unsafe(Exec *x, const PlanStep *step, GError **error)
{
  return rebase_offline(x, step, TRUE, error);
}

gboolean
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
  if (!snap_guard_chain(x->guard, step->backing, step->backing_format, NULL, 1, &backing,
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
  if (!backend_qemu_img(argv, error))
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

gboolean
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
