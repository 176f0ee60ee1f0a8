/* model-read.c: reading libvirt for a model.
 *
 * backend_raw_read() makes every libvirt call a model needs (domain list,
 * domain XML, snapshot XML, current snapshot, storage pools) and
 * fingerprints the answers, so the poll can tell cheaply whether anything
 * changed; model.c builds the model from them without calling libvirt.
 *
 * Thread model: called from the backend's worker (or a backend_refresh()
 * caller) under Backend.build_lock.
 */
#include <stdlib.h>

#include "backend-private.h"

static void
raw_domain_free(BackendRawDomain *domain)
{
  g_free(domain->name);
  g_free(domain->xml);
  g_ptr_array_unref(domain->snapshot_xmls);
  g_free(domain->current);
  g_free(domain);
}

void
backend_raw_free(BackendRaw *raw)
{
  if (!raw)
    return;
  g_ptr_array_unref(raw->domains);
  g_ptr_array_unref(raw->pool_xmls);
  g_free(raw->fingerprint);
  g_free(raw);
}

static gboolean
domain_vanished(void)
{
  const virError *err = virGetLastError();
  return err && (err->code == VIR_ERR_NO_DOMAIN || err->code == VIR_ERR_NO_DOMAIN_SNAPSHOT);
}

/* Reads one domain; FALSE with no error when it went away meanwhile. */
static gboolean
raw_read_domain(virDomainPtr dom, BackendRawDomain *out, GError **error)
{
  const char *name = virDomainGetName(dom);
  out->name = g_strdup(name);
  int active = virDomainIsActive(dom);
  if (active < 0)
    goto fail;
  out->running = active == 1;
  out->xml = virDomainGetXMLDesc(dom, 0);
  if (!out->xml)
    goto fail;

  virDomainSnapshotPtr *snaps = NULL;
  int n = virDomainListAllSnapshots(dom, &snaps, 0);
  if (n < 0)
    goto fail;
  gboolean ok = TRUE;
  for (int i = 0; i < n; i++) {
    if (ok) {
      char *xml = virDomainSnapshotGetXMLDesc(snaps[i], 0);
      int current = virDomainSnapshotIsCurrent(snaps[i], 0);
      if (!xml || current < 0) {
        g_free(xml);
        ok = FALSE;
      } else {
        g_ptr_array_add(out->snapshot_xmls, xml);
        /* Two can say so when the current snapshot changes while they
         * are listed; the next refresh sees which one it is. */
        if (current == 1) {
          g_free(out->current);
          out->current = g_strdup(virDomainSnapshotGetName(snaps[i]));
        }
      }
    }
    virDomainSnapshotFree(snaps[i]);
  }
  free(snaps);
  if (!ok)
    goto fail;
  return TRUE;

fail:
  if (!domain_vanished())
    backend_set_virt_error(error, "domain %s", name);
  return FALSE;
}

BackendRaw *
backend_raw_read(virConnectPtr conn, gboolean *no_pools, GError **error)
{
  g_autoptr(BackendRaw) raw = g_new0(BackendRaw, 1);
  raw->domains = g_ptr_array_new_with_free_func((GDestroyNotify)raw_domain_free);
  raw->pool_xmls = g_ptr_array_new_with_free_func(g_free);

  virDomainPtr *doms = NULL;
  int n = virConnectListAllDomains(conn, &doms, 0);
  if (n < 0) {
    backend_set_virt_error(error, "cannot list domains");
    return NULL;
  }
  gboolean ok = TRUE;
  for (int i = 0; i < n; i++) {
    if (ok) {
      BackendRawDomain *domain = g_new0(BackendRawDomain, 1);
      domain->snapshot_xmls = g_ptr_array_new_with_free_func(g_free);
      GError *local = NULL;
      if (raw_read_domain(doms[i], domain, &local)) {
        g_ptr_array_add(raw->domains, domain);
      } else {
        raw_domain_free(domain);
        if (local) {
          g_propagate_error(error, local);
          ok = FALSE;
        }
      }
    }
    virDomainFree(doms[i]);
  }
  free(doms);
  if (!ok)
    return NULL;

  /* Storage pools only widen the image policy; a driver without them
   * (qemu:///embed has no storage driver) is not an error, and is not
   * asked again on this connection. */
  virStoragePoolPtr *pools = NULL;
  n = *no_pools ? 0 : virConnectListAllStoragePools(conn, &pools, 0);
  if (n < 0) {
    const virError *err = virGetLastError();
    g_debug("no storage pools: %s", virGetLastErrorMessage());
    *no_pools = err && err->code == VIR_ERR_NO_SUPPORT;
  }
  for (int i = 0; i < n; i++) {
    char *xml = virStoragePoolGetXMLDesc(pools[i], 0);
    if (xml)
      g_ptr_array_add(raw->pool_xmls, xml);
    virStoragePoolFree(pools[i]);
  }
  free(pools);

  g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
  for (guint i = 0; i < raw->domains->len; i++) {
    BackendRawDomain *domain = g_ptr_array_index(raw->domains, i);
    g_checksum_update(sum, (const guchar *)domain->xml, -1);
    g_checksum_update(sum, (const guchar *)(domain->running ? "\1R" : "\1S"), -1);
    for (guint j = 0; j < domain->snapshot_xmls->len; j++) {
      g_checksum_update(sum, (const guchar *)"\2", 1);
      g_checksum_update(sum, g_ptr_array_index(domain->snapshot_xmls, j), -1);
    }
    g_checksum_update(sum, (const guchar *)"\3", 1);
    if (domain->current)
      g_checksum_update(sum, (const guchar *)domain->current, -1);
  }
  for (guint i = 0; i < raw->pool_xmls->len; i++) {
    g_checksum_update(sum, (const guchar *)"\4", 1);
    g_checksum_update(sum, g_ptr_array_index(raw->pool_xmls, i), -1);
  }
  raw->fingerprint = g_strdup(g_checksum_get_string(sum));
  return g_steal_pointer(&raw);
}
