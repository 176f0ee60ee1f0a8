/* domxml.c: parsing of libvirt's domain, snapshot and pool XML (libxml2),
 * and the writing of the two documents the backend sends back.
 *
 * Pure: strings in, structs out.  A disk the daemon cannot show is not an
 * error; it lands in DomXmlDomain.skipped with the reason, and the caller
 * logs it once.  Thread model: any thread; no shared state.
 */
#include "domxml.h"

#include <errno.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <string.h>

#include "backend.h"

G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)

void
domxml_layer_free(DomXmlLayer *layer)
{
  if (!layer)
    return;
  g_free(layer->path);
  g_free(layer);
}

void
domxml_disk_free(DomXmlDisk *disk)
{
  if (!disk)
    return;
  g_free(disk->target);
  g_free(disk->source);
  if (disk->backing)
    g_ptr_array_unref(disk->backing);
  g_free(disk);
}

void
domxml_skipped_free(DomXmlSkipped *skipped)
{
  if (!skipped)
    return;
  g_free(skipped->target);
  g_free(skipped->reason);
  g_free(skipped);
}

void
domxml_domain_free(DomXmlDomain *domain)
{
  if (!domain)
    return;
  g_free(domain->name);
  g_free(domain->uuid);
  g_ptr_array_unref(domain->disks);
  g_ptr_array_unref(domain->skipped);
  g_free(domain);
}

void
domxml_snapshot_disk_free(DomXmlSnapshotDisk *disk)
{
  if (!disk)
    return;
  g_free(disk->name);
  g_free(disk->source);
  g_free(disk);
}

void
domxml_snapshot_free(DomXmlSnapshot *snapshot)
{
  if (!snapshot)
    return;
  g_free(snapshot->name);
  g_free(snapshot->parent);
  g_free(snapshot->state);
  g_ptr_array_unref(snapshot->disks);
  g_free(snapshot);
}

/* ------------------------------------------------------------------ */
/* Tree helpers                                                        */

gboolean
domxml_node_is(const xmlNode *node, const char *name)
{
  return node && node->type == XML_ELEMENT_NODE && strcmp((const char *)node->name, name) == 0;
}

xmlNode *
domxml_child(const xmlNode *parent, const char *name)
{
  for (xmlNode *n = parent ? parent->children : NULL; n; n = n->next)
    if (domxml_node_is(n, name))
      return n;
  return NULL;
}

char *
domxml_attr(const xmlNode *node, const char *name)
{
  if (!node)
    return NULL;
  xmlChar *value = xmlGetProp(node, (const xmlChar *)name);
  if (!value)
    return NULL;
  char *copy = g_strdup((const char *)value);
  xmlFree(value);
  return copy;
}

/* The text content of child name, stripped, or NULL. */
static char *
child_text(const xmlNode *parent, const char *name)
{
  xmlNode *child = domxml_child(parent, name);
  if (!child)
    return NULL;
  xmlChar *value = xmlNodeGetContent(child);
  if (!value)
    return NULL;
  char *copy = g_strstrip(g_strdup((const char *)value));
  xmlFree(value);
  return copy;
}

static xmlDoc *
parse_doc(const char *xml, const char *root_name, GError **error)
{
  static gsize initialised;
  if (g_once_init_enter(&initialised)) {
    xmlInitParser();
    g_once_init_leave(&initialised, 1);
  }
  if (!xml) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "no %s XML", root_name);
    return NULL;
  }
  g_autoptr(xmlDoc) doc = xmlReadMemory(xml, (int)strlen(xml), root_name, NULL,
                                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc) {
    const xmlError *err = xmlGetLastError();
    g_autofree char *why = g_strdup(err && err->message ? err->message : "unknown error");
    g_set_error(error, BACKEND_ERROR, EINVAL, "%s XML does not parse: %s", root_name,
                g_strstrip(why));
    return NULL;
  }
  xmlNode *root = xmlDocGetRootElement(doc);
  if (!root || !domxml_node_is(root, root_name)) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "XML root is <%s>, expected <%s>",
                root ? (const char *)root->name : "(none)", root_name);
    return NULL;
  }
  return g_steal_pointer(&doc);
}

/* The path of a <source>: file= for files, dev= for block devices. */
static char *
source_path(const xmlNode *source)
{
  char *path = domxml_attr(source, "file");
  if (!path)
    path = domxml_attr(source, "dev");
  return path;
}

/* ------------------------------------------------------------------ */
/* Domains                                                             */

/* Follows <backingStore> below a disk or layer.  Stops at the empty
 * element (the known end), or at a layer that is not a local image. */
static void
parse_backing(const xmlNode *node, DomXmlDisk *disk)
{
  xmlNode *store = domxml_child(node, "backingStore");
  if (!store)
    return;
  disk->backing = g_ptr_array_new_with_free_func((GDestroyNotify)domxml_layer_free);
  for (; store; store = domxml_child(store, "backingStore")) {
    xmlNode *source = domxml_child(store, "source");
    if (!source && !store->children) {
      disk->backing_complete = TRUE;
      return;
    }
    g_autofree char *type = domxml_attr(store, "type");
    g_autofree char *format = domxml_attr(domxml_child(store, "format"), "type");
    g_autofree char *path = source_path(source);
    if (!path || (type && strcmp(type, "file") != 0 && strcmp(type, "block") != 0))
      return; /* network or otherwise unreadable: the chain stays incomplete */
    DomXmlLayer *layer = g_new0(DomXmlLayer, 1);
    layer->path = g_steal_pointer(&path);
    layer->format = chain_format_from_name(format);
    g_ptr_array_add(disk->backing, layer);
  }
}

static void
add_skipped(DomXmlDomain *domain, const char *target, const char *format, ...) G_GNUC_PRINTF(3, 4);

static void
add_skipped(DomXmlDomain *domain, const char *target, const char *format, ...)
{
  va_list args;
  va_start(args, format);
  DomXmlSkipped *skipped = g_new0(DomXmlSkipped, 1);
  skipped->target = g_strdup(target);
  skipped->reason = g_strdup_vprintf(format, args);
  va_end(args);
  g_ptr_array_add(domain->skipped, skipped);
}

static void
parse_disk(const xmlNode *node, DomXmlDomain *domain)
{
  g_autofree char *type = domxml_attr(node, "type");
  g_autofree char *device = domxml_attr(node, "device");
  xmlNode *source = domxml_child(node, "source");
  g_autofree char *target = domxml_attr(domxml_child(node, "target"), "dev");
  g_autofree char *format_name = domxml_attr(domxml_child(node, "driver"), "type");

  if (!target) {
    add_skipped(domain, NULL, "disk has no target");
    return;
  }
  if (device && strcmp(device, "disk") != 0) {
    add_skipped(domain, target, "device is a %s, not a disk", device);
    return;
  }
  if (type && strcmp(type, "file") != 0 && strcmp(type, "block") != 0) {
    add_skipped(domain, target, "disk type '%s' is not a local image", type);
    return;
  }
  if (domxml_child(node, "encryption") || domxml_child(source, "encryption")) {
    add_skipped(domain, target, "disk is encrypted");
    return;
  }
  ChainFormat format = chain_format_from_name(format_name);
  if (format == CHAIN_FORMAT_UNKNOWN) {
    add_skipped(domain, target, "image format '%s' is not raw or qcow2",
                format_name ? format_name : "(none)");
    return;
  }
  g_autofree char *path = source_path(source);
  if (!path) {
    add_skipped(domain, target, "disk has no source");
    return;
  }
  DomXmlDisk *disk = g_new0(DomXmlDisk, 1);
  disk->target = g_steal_pointer(&target);
  disk->source = g_steal_pointer(&path);
  disk->is_block = type && strcmp(type, "block") == 0;
  disk->format = format;
  parse_backing(node, disk);
  g_ptr_array_add(domain->disks, disk);
}

DomXmlDomain *
domxml_parse_domain(const char *xml, GError **error)
{
  g_autoptr(xmlDoc) doc = parse_doc(xml, "domain", error);
  if (!doc)
    return NULL;
  xmlNode *root = xmlDocGetRootElement(doc);

  g_autoptr(DomXmlDomain) domain = g_new0(DomXmlDomain, 1);
  domain->disks = g_ptr_array_new_with_free_func((GDestroyNotify)domxml_disk_free);
  domain->skipped = g_ptr_array_new_with_free_func((GDestroyNotify)domxml_skipped_free);
  domain->name = child_text(root, "name");
  domain->uuid = child_text(root, "uuid");
  g_autofree char *id = domxml_attr(root, "id");
  domain->has_id = id && strcmp(id, "-1") != 0;
  if (!domain->name || !*domain->name) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "domain XML has no <name>");
    return NULL;
  }
  for (xmlNode *n = domxml_child(root, "devices") ? domxml_child(root, "devices")->children : NULL;
       n; n = n->next)
    if (domxml_node_is(n, "disk"))
      parse_disk(n, domain);
  return g_steal_pointer(&domain);
}

DomXmlDisk *
domxml_domain_find_disk(DomXmlDomain *domain, const char *target)
{
  for (guint i = 0; i < domain->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(domain->disks, i);
    if (strcmp(disk->target, target) == 0)
      return disk;
  }
  return NULL;
}

void
domxml_domain_forget_backing(DomXmlDomain *domain)
{
  for (guint i = 0; i < domain->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(domain->disks, i);
    g_clear_pointer(&disk->backing, g_ptr_array_unref);
    disk->backing_complete = FALSE;
  }
}

/* ------------------------------------------------------------------ */
/* Snapshots and pools                                                 */

static DomXmlSnapshotDisk *
parse_snapshot_disk(const xmlNode *node)
{
  g_autofree char *mode = domxml_attr(node, "snapshot");
  xmlNode *source = domxml_child(node, "source");
  DomXmlSnapshotDisk *disk = g_new0(DomXmlSnapshotDisk, 1);
  disk->name = domxml_attr(node, "name");
  disk->source = source_path(source);
  g_autofree char *format = domxml_attr(domxml_child(node, "driver"), "type");
  disk->format = format ? chain_format_from_name(format) : CHAIN_FORMAT_QCOW2;
  if (!mode)
    disk->mode = disk->source ? DOMXML_SNAPSHOT_DISK_EXTERNAL : DOMXML_SNAPSHOT_DISK_NO;
  else if (strcmp(mode, "external") == 0)
    disk->mode = DOMXML_SNAPSHOT_DISK_EXTERNAL;
  else if (strcmp(mode, "internal") == 0)
    disk->mode = DOMXML_SNAPSHOT_DISK_INTERNAL;
  else /* "no", "manual" */
    disk->mode = DOMXML_SNAPSHOT_DISK_NO;
  return disk;
}

DomXmlSnapshot *
domxml_parse_snapshot(const char *xml, GError **error)
{
  g_autoptr(xmlDoc) doc = parse_doc(xml, "domainsnapshot", error);
  if (!doc)
    return NULL;
  xmlNode *root = xmlDocGetRootElement(doc);

  g_autoptr(DomXmlSnapshot) snapshot = g_new0(DomXmlSnapshot, 1);
  snapshot->disks = g_ptr_array_new_with_free_func((GDestroyNotify)domxml_snapshot_disk_free);
  snapshot->name = child_text(root, "name");
  snapshot->parent = child_text(domxml_child(root, "parent"), "name");
  snapshot->state = child_text(root, "state");
  if (!snapshot->name || !*snapshot->name) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "snapshot XML has no <name>");
    return NULL;
  }
  g_autofree char *created = child_text(root, "creationTime");
  if (created) {
    char *end = NULL;
    gint64 value = g_ascii_strtoll(created, &end, 10);
    if (end == created || *end) {
      g_set_error(error, BACKEND_ERROR, EINVAL, "snapshot %s: bad creationTime '%s'",
                  snapshot->name, created);
      return NULL;
    }
    snapshot->creation_time = value;
  }
  xmlNode *disks = domxml_child(root, "disks");
  for (xmlNode *n = disks ? disks->children : NULL; n; n = n->next)
    if (domxml_node_is(n, "disk"))
      g_ptr_array_add(snapshot->disks, parse_snapshot_disk(n));
  return g_steal_pointer(&snapshot);
}

char *
domxml_parse_pool_target(const char *xml, GError **error)
{
  g_autoptr(xmlDoc) doc = parse_doc(xml, "pool", error);
  if (!doc)
    return NULL;
  char *path = child_text(domxml_child(xmlDocGetRootElement(doc), "target"), "path");
  if (path && !*path)
    g_clear_pointer(&path, g_free);
  return path;
}

char **
domxml_parse_pool_devices(const char *xml, GError **error)
{
  g_autoptr(xmlDoc) doc = parse_doc(xml, "pool", error);
  if (!doc)
    return NULL;
  GStrvBuilder *builder = g_strv_builder_new();
  xmlNode *source = domxml_child(xmlDocGetRootElement(doc), "source");
  for (xmlNode *n = source ? source->children : NULL; n; n = n->next) {
    if (!domxml_node_is(n, "device"))
      continue;
    g_autofree char *path = domxml_attr(n, "path");
    if (path && g_path_is_absolute(path))
      g_strv_builder_add(builder, path);
  }
  char **devices = g_strv_builder_end(builder);
  g_strv_builder_unref(builder);
  return devices;
}

/* ------------------------------------------------------------------ */
/* Writing                                                             */

char *
domxml_overlay_snapshot_xml(const char *name, const char *description,
                            const DomXmlOverlay *overlays, gsize n_overlays,
                            const char *const *no_targets)
{
  GString *xml = g_string_new("<domainsnapshot>\n");
  if (name) {
    g_autofree char *escaped = g_markup_escape_text(name, -1);
    g_string_append_printf(xml, "  <name>%s</name>\n", escaped);
  }
  if (description) {
    g_autofree char *escaped = g_markup_escape_text(description, -1);
    g_string_append_printf(xml, "  <description>%s</description>\n", escaped);
  }
  g_string_append(xml, "  <disks>\n");
  for (gsize i = 0; i < n_overlays; i++) {
    g_autofree char *target = g_markup_escape_text(overlays[i].target, -1);
    g_autofree char *overlay = g_markup_escape_text(overlays[i].overlay, -1);
    g_string_append_printf(xml,
                           "    <disk name='%s' snapshot='external' type='file'>\n"
                           "      <driver type='qcow2'/>\n"
                           "      <source file='%s'/>\n"
                           "    </disk>\n",
                           target, overlay);
  }
  for (const char *const *t = no_targets; t && *t; t++) {
    g_autofree char *target = g_markup_escape_text(*t, -1);
    g_string_append_printf(xml, "    <disk name='%s' snapshot='no'/>\n", target);
  }
  g_string_append(xml, "  </disks>\n</domainsnapshot>\n");
  return g_string_free(xml, FALSE);
}

char *
domxml_set_disk_source(const char *xml, const char *target, const char *path,
                       ChainFormat format, GError **error)
{
  g_autoptr(xmlDoc) doc = parse_doc(xml, "domain", error);
  if (!doc)
    return NULL;
  xmlNode *devices = domxml_child(xmlDocGetRootElement(doc), "devices");
  xmlNode *disk = NULL;
  for (xmlNode *n = devices ? devices->children : NULL; n && !disk; n = n->next) {
    if (!domxml_node_is(n, "disk"))
      continue;
    g_autofree char *dev = domxml_attr(domxml_child(n, "target"), "dev");
    if (dev && strcmp(dev, target) == 0)
      disk = n;
  }
  if (!disk) {
    g_set_error(error, BACKEND_ERROR, ENOENT, "domain XML has no disk %s", target);
    return NULL;
  }
  g_autofree char *type = domxml_attr(disk, "type");
  gboolean block = type && strcmp(type, "block") == 0;
  xmlNode *source = domxml_child(disk, "source");
  if (!source)
    source = xmlNewChild(disk, NULL, (const xmlChar *)"source", NULL);
  xmlUnsetProp(source, (const xmlChar *)(block ? "file" : "dev"));
  xmlSetProp(source, (const xmlChar *)(block ? "dev" : "file"), (const xmlChar *)path);
  xmlUnsetProp(source, (const xmlChar *)"index");
  xmlNode *driver = domxml_child(disk, "driver");
  if (!driver) {
    driver = xmlNewChild(disk, NULL, (const xmlChar *)"driver", NULL);
    xmlSetProp(driver, (const xmlChar *)"name", (const xmlChar *)"qemu");
  }
  xmlSetProp(driver, (const xmlChar *)"type", (const xmlChar *)chain_format_name(format));
  xmlNode *store;
  while ((store = domxml_child(disk, "backingStore"))) {
    xmlUnlinkNode(store);
    xmlFreeNode(store);
  }
  return domxml_doc_dump(doc, error);
}

char *
domxml_doc_dump(xmlDoc *doc, GError **error)
{
  xmlChar *out = NULL;
  int len = 0;
  xmlDocDumpMemory(doc, &out, &len);
  if (!out) {
    g_set_error(error, BACKEND_ERROR, ENOMEM, "cannot serialise XML");
    return NULL;
  }
  char *copy = g_strndup((const char *)out, (gsize)len);
  xmlFree(out);
  return copy;
}
