/* steps-meta.c: the steps that change libvirt's metadata: which image a
 * disk is defined on (set-active), a snapshot's definition (redefine), its
 * removal (delete-snapshot), which snapshot is current (set-current), and
 * after the last step the inactive XML's stale chains.
 *
 * Each is done once libvirt says what it should: set-active when the
 * definition already names the image (a running domain must already run
 * on it), redefine replaces whatever is there, delete-snapshot is done
 * when libvirt no longer has the snapshot, set-current when it is
 * current.
 *
 * Thread model: the operation's thread, in the domain's turn.
 */
#include <errno.h>

#include "exec.h"

/* The inactive XML: as text in *xml (to rewrite it) and parsed. */
static DomXmlDomain *
read_inactive(Exec *x, char **xml, GError **error)
{
  *xml = virDomainGetXMLDesc(x->dom, VIR_DOMAIN_XML_INACTIVE);
  if (!*xml) {
    backend_set_virt_error(error, "domain %s: XML", x->name);
    return NULL;
  }
  return domxml_parse_domain(*xml, error);
}

gboolean
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
  g_autofree char *xml = NULL;
  g_autoptr(DomXmlDomain) parsed = read_inactive(x, &xml, error);
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

/* libvirt's snapshot name of the domain in *snap, NULL when libvirt has
 * no such snapshot; FALSE when libvirt cannot tell. */
static gboolean
find_snapshot(Exec *x, const char *name, virDomainSnapshotPtr *snap, GError **error)
{
  *snap = virDomainSnapshotLookupByName(x->dom, name, 0);
  const virError *err = *snap ? NULL : virGetLastError();
  if (!*snap && (!err || err->code != VIR_ERR_NO_DOMAIN_SNAPSHOT)) {
    backend_set_virt_error(error, "domain %s: snapshot %s", x->name, name);
    return FALSE;
  }
  return TRUE;
}

/* libvirt's XML of snapshot name, or NULL (no error) when it has none. */
static char *
snapshot_xml(Exec *x, const char *name, GError **error)
{
  g_autoptr(BackendVirDomainSnapshot) snap = NULL;
  if (!find_snapshot(x, name, &snap, error) || !snap)
    return NULL;
  char *xml = virDomainSnapshotGetXMLDesc(snap, VIR_DOMAIN_SNAPSHOT_XML_SECURE);
  if (!xml)
    backend_set_virt_error(error, "domain %s: XML of snapshot %s", x->name, name);
  return xml;
}

gboolean
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

gboolean
step_delete_snapshot(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(BackendVirDomainSnapshot) snap = NULL;
  if (!find_snapshot(x, step->snapshot, &snap, error))
    return FALSE;
  if (!snap)
    return TRUE; /* gone already */
  g_debug("virDomainSnapshotDelete(%s, %s, METADATA_ONLY)", x->name, step->snapshot);
  if (virDomainSnapshotDelete(snap, VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY) < 0) {
    backend_set_virt_error(error, "domain %s: delete metadata of snapshot %s", x->name,
                           step->snapshot);
    return FALSE;
  }
  return TRUE;
}

gboolean
step_set_current(Exec *x, const PlanStep *step, GError **error)
{
  g_autoptr(BackendVirDomainSnapshot) snap = NULL;
  if (!find_snapshot(x, step->snapshot, &snap, error))
    return FALSE;
  if (!snap) {
    g_set_error(error, BACKEND_ERROR, EIO, "domain %s: snapshot %s is gone", x->name,
                step->snapshot);
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

/* libvirt writes the chain it found into the inactive XML (<backingStore>,
 * e.g. after an offline snapshot) and reads it back from there.  A plan
 * that moved backing pointers below an unchanged active image leaves that
 * copy stale: it is dropped so that libvirt looks at the files again.
 * Idempotent; shut-off domains only (a running domain's XML is libvirt's). */
gboolean
steps_tidy_inactive_xml(Exec *x, GError **error)
{
  gboolean running;
  if (!get_running(x, &running, error))
    return FALSE;
  if (running)
    return TRUE;
  g_autofree char *xml = NULL;
  g_autoptr(DomXmlDomain) parsed = read_inactive(x, &xml, error);
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
    gboolean stale = !snap_guard_chain(x->guard, disk->source, disk->format, NULL, 0, &walk,
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
