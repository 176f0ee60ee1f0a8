/* backend-virt.h: libvirt-level access to the backend, for fs/ code that
 * runs libvirt jobs itself (the plan executor) and for tests.
 *
 * Includes libvirt; backend.h deliberately does not.  Defines the glib
 * autoptr cleanups for libvirt's handle types.
 */
#pragma once

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "backend.h"

G_BEGIN_DECLS

/* virConnectClose() returns the remaining reference count; wrap it so that
 * g_autoptr can use it. */
static inline void
backend_virt_connect_close(virConnectPtr conn)
{
  if (conn)
    virConnectClose(conn);
}

typedef struct _virConnect BackendVirConnect;
typedef struct _virDomain BackendVirDomain;
typedef struct _virDomainSnapshot BackendVirDomainSnapshot;
typedef struct _virStoragePool BackendVirStoragePool;
typedef struct _virStorageVol BackendVirStorageVol;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirConnect, backend_virt_connect_close)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirDomain, virDomainFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirDomainSnapshot, virDomainSnapshotFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirStoragePool, virStoragePoolFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(BackendVirStorageVol, virStorageVolFree)

/* The current connection: a new reference (virConnectClose it, or hold it in
 * g_autoptr(BackendVirConnect)), or NULL with an EIO error while the
 * connection is down. */
virConnectPtr backend_get_connection(Backend *backend, GError **error);

/* Treats the connection as lost, as when libvirt reports it closed: the
 * worker drops it and reconnects with backoff, and the last model is
 * served meanwhile.  For tests of the reconnect path, and for callers that
 * know the connection went stale. */
void backend_drop_connection(Backend *backend);

/* Tears the backend down like backend_free() but leaves open freezes as
 * they are, records included: what a crash leaves behind.  For tests of
 * the repair at the next backend_new(). */
void backend_abandon(Backend *backend);

/* Fills error (BACKEND_ERROR, EIO) with "what: libvirt's last error". */
void backend_set_virt_error(GError **error, const char *format, ...) G_GNUC_PRINTF(2, 3);

G_END_DECLS
