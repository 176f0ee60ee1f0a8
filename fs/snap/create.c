/* create.c: mkdir: a new external disk-only snapshot of every disk of a
 * domain, atomically, in one libvirt call (no journal needed: it happens
 * whole or not at all).
 *
 * Live when the domain runs, quiesced through the guest agent when it
 * answers; offline when it is shut off.  Each disk's new overlay is
 * "<dir of active>/<stem of the chain's base image>.<name>.qcow2", the
 * name escaped and made unique so that two operations, in one domain or
 * in two, never pick the same file.  <readonly/> and <shareable/> disks
 * get no overlay.  Every disk's chain and every new overlay's place must
 * pass the image policy (guard.h) before libvirt is asked.
 *
 * Thread model: blocks its caller, in the domain's turn.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "guard.h"

/* A filename component stays below NAME_MAX with this much of the name. */
#define OVERLAY_NAME_MAX 160

/* The name as a file name component: bytes outside [A-Za-z0-9._+-] and a
 * leading '.' become %XX; a long name is cut and made unique by a hash. */
static char *
escape_for_file(const char *name)
{
  GString *out = g_string_new(NULL);
  for (const guchar *p = (const guchar *)name; *p; p++) {
    if ((g_ascii_isalnum(*p) || strchr("._+-", *p)) && !(p == (const guchar *)name && *p == '.'))
      g_string_append_c(out, (char)*p);
    else
      g_string_append_printf(out, "%%%02X", *p);
  }
  if (out->len > OVERLAY_NAME_MAX) {
    g_autofree char *sum = g_compute_checksum_for_string(G_CHECKSUM_SHA256, name, -1);
    g_string_truncate(out, OVERLAY_NAME_MAX - 17);
    /* Never cut an escape in half. */
    while (out->len > 0 && strchr(out->str + MAX((gssize)out->len - 2, 0), '%'))
      g_string_truncate(out, out->len - 1);
    g_string_append_printf(out, "-%.16s", sum);
  }
  return g_string_free(out, FALSE);
}

/* "<dir of active>/<stem of the chain's base image>.<name>.qcow2", with a
 * counter when that file exists: never an existing file.  base is the
 * bottom layer of the disk's chain. */
static char *
overlay_path(const DomXmlDisk *disk, const char *base, const char *escaped, GHashTable *taken)
{
  g_autofree char *file = g_path_get_basename(base);
  char *dot = strchr(file, '.');
  if (dot && dot != file)
    *dot = '\0';
  g_autofree char *dir = g_path_get_dirname(disk->source);
  for (guint n = 1;; n++) {
    g_autofree char *leaf = n == 1 ? g_strdup_printf("%s.%s.qcow2", file, escaped)
                                   : g_strdup_printf("%s.%s-%u.qcow2", file, escaped, n);
    char *path = g_build_filename(dir, leaf, NULL);
    if (access(path, F_OK) != 0 && errno == ENOENT && !g_hash_table_contains(taken, path))
      return path;
    g_free(path);
  }
}

gboolean
snap_create(Snap *snap, const char *domain, const char *name, GError **error)
{
  if (!snap_check_name(name, error))
    return FALSE;
  g_auto(SnapOp) o = {0};
  if (!snap_op_begin(snap, domain, "create a snapshot", &o, error))
    return FALSE;
  virDomainPtr dom = o.dom;

  g_autoptr(BackendVirDomainSnapshot) existing = virDomainSnapshotLookupByName(dom, name, 0);
  if (existing) {
    g_set_error(error, BACKEND_ERROR, EEXIST, "domain %s: snapshot %s exists", domain, name);
    return FALSE;
  }
  int active = virDomainIsActive(dom);
  g_autofree char *xml = virDomainGetXMLDesc(dom, 0);
  if (active < 0 || !xml) {
    backend_set_virt_error(error, "domain %s", domain);
    return FALSE;
  }
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, error);
  if (!parsed)
    return FALSE;
  if (parsed->disks->len == 0) {
    g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s has no disk to snapshot", domain);
    return FALSE;
  }

  g_autoptr(SnapGuard) guard = snap_guard_new(snap, error);
  if (!guard)
    return FALSE;
  g_autofree char *escaped = escape_for_file(name);
  g_autoptr(GHashTable) taken = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr(GArray) overlays = g_array_new(FALSE, FALSE, sizeof(DomXmlOverlay));
  g_autoptr(GPtrArray) no_targets = g_ptr_array_new();
  /* A <readonly/> disk never changes and a <shareable/> one is written by
   * others too: neither gets an overlay (libvirt would make one). */
  g_autoptr(GHashTable) shared = exec_xml_shared_targets(xml);
  for (guint i = 0; i < parsed->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(parsed->disks, i);
    if (g_hash_table_contains(shared, disk->target)) {
      g_ptr_array_add(no_targets, disk->target);
      continue;
    }
    if (disk->is_block) {
      g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s disk %s is a block device: no "
                  "directory for its overlay", domain, disk->target);
      return FALSE;
    }
    /* A chain the policy refuses is changed by nothing: libvirt would
     * write the new overlay's header onto it and qemu-img read it. */
    g_auto(ChainWalk) walk = {0};
    g_autofree ChainFormat *formats = active == 1 ? backend_layer_formats(disk->backing, 0) : NULL;
    if (!snap_guard_chain(guard, disk->source, disk->format, formats, 0, &walk, error)) {
      g_prefix_error(error, "domain %s disk %s: ", domain, disk->target);
      return FALSE;
    }
    ChainLayer *bottom = walk.layers->pdata[walk.layers->len - 1];
    char *overlay = overlay_path(disk, chain_layer_path(bottom), escaped, taken);
    g_hash_table_add(taken, overlay);
    if (!snap_guard_place(guard, overlay, error)) {
      g_prefix_error(error, "domain %s disk %s: ", domain, disk->target);
      return FALSE;
    }
    DomXmlOverlay o = {disk->target, overlay};
    g_array_append_val(overlays, o);
  }
  if (overlays->len == 0) {
    g_set_error(error, BACKEND_ERROR, EOPNOTSUPP, "domain %s has no writable disk to snapshot",
                domain);
    return FALSE;
  }
  for (guint i = 0; i < parsed->skipped->len; i++) {
    DomXmlSkipped *skipped = g_ptr_array_index(parsed->skipped, i);
    if (skipped->target)
      g_ptr_array_add(no_targets, skipped->target);
  }
  g_ptr_array_add(no_targets, NULL);
  g_autofree char *snapshot_xml =
      domxml_overlay_snapshot_xml(name, NULL, (DomXmlOverlay *)overlays->data, overlays->len,
                                  (const char *const *)no_targets->pdata);

  unsigned int flags = VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
  virDomainSnapshotPtr created = NULL;
  gboolean quiesced = FALSE;
  if (active == 1) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|ATOMIC|QUIESCE) %s", domain, name);
    created = virDomainSnapshotCreateXML(dom, snapshot_xml,
                                         flags | VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
    if (created)
      quiesced = TRUE;
    else
      g_message("domain %s: snapshot %s is not quiesced: %s", domain, name,
                virGetLastErrorMessage());
  }
  if (!created) {
    g_debug("virDomainSnapshotCreateXML(%s, DISK_ONLY|ATOMIC) %s", domain, name);
    created = virDomainSnapshotCreateXML(dom, snapshot_xml, flags);
  }
  if (!created) {
    backend_set_virt_error(error, "domain %s: create snapshot %s", domain, name);
    return FALSE;
  }
  virDomainSnapshotFree(created);
  g_message("domain %s: created snapshot %s in %.1f s (%s, %u disks, first overlay %s)", domain,
            name, (double)(g_get_monotonic_time() - o.started) / G_USEC_PER_SEC,
            active == 1 ? (quiesced ? "live, quiesced" : "live, crash-consistent") : "offline",
            overlays->len, g_array_index(overlays, DomXmlOverlay, 0).overlay);
  snap_refresh(snap, G_LOG_LEVEL_MESSAGE, "a snapshot operation");
  return TRUE;
}
