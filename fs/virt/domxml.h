/* domxml.h: libvirt domain, snapshot and storage-pool XML, parsed into plain
 * structs, and the few XML documents the backend writes.
 *
 * Pure code: no libvirt calls, no I/O; every function is unit-tested on
 * sample strings (tests/fs/virt/test-domxml.c).  Thread model: none needed;
 * libxml2 parsing is reentrant once xmlInitParser() ran (done here lazily).
 */
#pragma once

#include <glib.h>
#include <libxml/tree.h>

#include "chain.h"

G_BEGIN_DECLS

/* One image below a disk's source, as libvirt's <backingStore> reports it. */
typedef struct {
  char *path;
  ChainFormat format;
} DomXmlLayer;

/* A disk the daemon can show: a file or block device image in raw or qcow2. */
typedef struct {
  char *target;        /* "vda" */
  char *source;        /* <source file=> or <source dev=> */
  gboolean is_block;
  ChainFormat format;  /* <driver type=> */
  /* Layers below source, top down, or NULL when libvirt reported no chain
   * (inactive XML never has one).  A chain whose end libvirt knows ends
   * with an empty <backingStore/>; backing_complete says it was seen. */
  GPtrArray *backing;  /* of DomXmlLayer */
  gboolean backing_complete;
} DomXmlDisk;

/* A disk left out of the tree, and why (for the once-per-disk log line). */
typedef struct {
  char *target;        /* may be NULL when the disk has no target */
  char *reason;
} DomXmlSkipped;

typedef struct {
  char *name;
  char *uuid;
  gboolean has_id;     /* <domain id=...>: the live XML of a running domain */
  GPtrArray *disks;    /* of DomXmlDisk, in document order */
  GPtrArray *skipped;  /* of DomXmlSkipped */
} DomXmlDomain;

typedef enum {
  DOMXML_SNAPSHOT_DISK_EXTERNAL,
  DOMXML_SNAPSHOT_DISK_INTERNAL,
  DOMXML_SNAPSHOT_DISK_NO,
} DomXmlSnapshotMode;

typedef struct {
  char *name;          /* target ("vda") or, rarely, the disk's path */
  DomXmlSnapshotMode mode;
  char *source;        /* external only: the overlay O(S); may be NULL */
  ChainFormat format;  /* of the overlay; QCOW2 when not given */
} DomXmlSnapshotDisk;

typedef struct {
  char *name;
  char *parent;        /* NULL for a root snapshot */
  gint64 creation_time;
  char *state;         /* "disk-snapshot", "shutoff", "running", ... */
  GPtrArray *disks;    /* of DomXmlSnapshotDisk */
} DomXmlSnapshot;

void domxml_layer_free(DomXmlLayer *layer);
void domxml_disk_free(DomXmlDisk *disk);
void domxml_skipped_free(DomXmlSkipped *skipped);
void domxml_domain_free(DomXmlDomain *domain);
void domxml_snapshot_disk_free(DomXmlSnapshotDisk *disk);
void domxml_snapshot_free(DomXmlSnapshot *snapshot);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(DomXmlDomain, domxml_domain_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(DomXmlSnapshot, domxml_snapshot_free)

/* Errors: BACKEND_ERROR / EINVAL for XML that does not parse or lacks a
 * required element. */
DomXmlDomain *domxml_parse_domain(const char *xml, GError **error);
DomXmlSnapshot *domxml_parse_snapshot(const char *xml, GError **error);
/* The <target><path> of a storage pool, or NULL (no error) when it has none. */
char *domxml_parse_pool_target(const char *xml, GError **error);
/* The absolute <source><device path=...> nodes of a storage pool (a disk
 * or logical pool's devices), NULL-terminated and possibly empty. */
char **domxml_parse_pool_devices(const char *xml, GError **error);

DomXmlDisk *domxml_domain_find_disk(DomXmlDomain *domain, const char *target);
/* Drops every disk's backing chain (for inactive XML, whose chain may be
 * stale). */
void domxml_domain_forget_backing(DomXmlDomain *domain);

/* One disk of a new snapshot or freeze: the overlay to create on top of
 * target. */
typedef struct {
  const char *target;
  const char *overlay;
} DomXmlOverlay;

/* <domainsnapshot> for virDomainSnapshotCreateXML: its name and
 * description when given (either may be NULL), an external qcow2 overlay
 * for each of overlays[0..n_overlays), snapshot='no' for every other
 * target in no_targets (NULL-terminated, may be NULL). */
char *domxml_overlay_snapshot_xml(const char *name, const char *description,
                                  const DomXmlOverlay *overlays, gsize n_overlays,
                                  const char *const *no_targets);

/* A copy of domain XML whose disk target now reads from path in format,
 * with any <backingStore> of that disk removed (libvirt re-detects it). */
char *domxml_set_disk_source(const char *xml, const char *target, const char *path,
                             ChainFormat format, GError **error);

/* The document as text; ENOMEM when libxml2 cannot write it. */
char *domxml_doc_dump(xmlDoc *doc, GError **error);

/* Tree helpers, also for the XML the executor rewrites.  NULL-safe:
 * a NULL node is no element, has no children and no attributes. */
gboolean domxml_node_is(const xmlNode *node, const char *name);
xmlNode *domxml_child(const xmlNode *parent, const char *name);
/* A g_malloc'd copy of attribute name, or NULL. */
char *domxml_attr(const xmlNode *node, const char *name);

G_END_DECLS
