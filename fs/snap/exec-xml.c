/* exec-xml.c: the snapshot XML the executor sends to libvirt, and the
 * disks a snapshot leaves alone.
 *
 * A REDEFINE starts from libvirt's own XML of the
 * snapshot (so the description, state, memory and the embedded <domain>
 * survive) and changes only what the plan changed: name, parent, creation
 * time, the overlay of each disk, and in the embedded <domain> the disk
 * sources, which are the point images (the domain as it was at the
 * snapshot).  Pure code: strings in, strings out; any thread.
 */
#include <errno.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <string.h>

#include "snap-private.h"

G_DEFINE_AUTOPTR_CLEANUP_FUNC(xmlDoc, xmlFreeDoc)

/* ------------------------------------------------------------------ */
/* Tree helpers                                                        */

static void
remove_children(xmlNode *parent, const char *name)
{
  xmlNode *n;
  while ((n = domxml_child(parent, name))) {
    xmlUnlinkNode(n);
    xmlFreeNode(n);
  }
}

/* Replaces (or adds) <name>text</name> under parent. */
static xmlNode *
set_text_child(xmlNode *parent, const char *name, const char *text)
{
  xmlNode *node = domxml_child(parent, name);
  if (!node)
    node = xmlNewChild(parent, NULL, (const xmlChar *)name, NULL);
  xmlNodeSetContent(node, NULL);
  xmlNodeAddContent(node, (const xmlChar *)text);
  return node;
}

static xmlDoc *
parse(const char *xml, const char *root, GError **error)
{
  xmlDoc *doc = xmlReadMemory(xml, (int)strlen(xml), NULL, NULL, XML_PARSE_NONET | XML_PARSE_NOBLANKS);
  if (!doc || !domxml_node_is(xmlDocGetRootElement(doc), root)) {
    if (doc)
      xmlFreeDoc(doc);
    g_set_error(error, BACKEND_ERROR, EINVAL, "not a <%s> document", root);
    return NULL;
  }
  return doc;
}

/* The <disk> of a domain's <devices> with this target, or NULL. */
static xmlNode *
domain_disk(xmlNode *domain, const char *target)
{
  for (xmlNode *n = domxml_child(domain, "devices") ? domxml_child(domain, "devices")->children : NULL; n;
       n = n->next) {
    if (!domxml_node_is(n, "disk"))
      continue;
    g_autofree char *dev = domxml_attr(domxml_child(n, "target"), "dev");
    if (g_strcmp0(dev, target) == 0)
      return n;
  }
  return NULL;
}

static void
set_source_file(xmlNode *disk, const char *path)
{
  xmlNode *source = domxml_child(disk, "source");
  if (!source)
    source = xmlNewChild(disk, NULL, (const xmlChar *)"source", NULL);
  g_autofree char *type = domxml_attr(disk, "type");
  gboolean block = g_strcmp0(type, "block") == 0;
  xmlUnsetProp(source, (const xmlChar *)"index");
  xmlSetProp(source, (const xmlChar *)(block ? "dev" : "file"), (const xmlChar *)path);
}

/* ------------------------------------------------------------------ */
/* REDEFINE                                                            */

char *
exec_xml_redefine_snapshot(const char *template_xml, const char *domain_xml,
                           const PlanSnapshot *definition, GError **error)
{
  g_autoptr(xmlDoc) doc = NULL;
  if (template_xml) {
    doc = parse(template_xml, "domainsnapshot", error);
    if (!doc)
      return NULL;
  } else {
    doc = xmlNewDoc((const xmlChar *)"1.0");
    xmlNode *root = xmlNewNode(NULL, (const xmlChar *)"domainsnapshot");
    xmlDocSetRootElement(doc, root);
    xmlNewChild(root, NULL, (const xmlChar *)"state", (const xmlChar *)"shutoff");
    xmlNode *memory = xmlNewChild(root, NULL, (const xmlChar *)"memory", NULL);
    xmlSetProp(memory, (const xmlChar *)"snapshot", (const xmlChar *)"no");
    if (domain_xml) {
      g_autoptr(xmlDoc) dom = parse(domain_xml, "domain", error);
      if (!dom)
        return NULL;
      xmlNode *copy = xmlDocCopyNode(xmlDocGetRootElement(dom), doc, 1);
      xmlAddChild(root, copy);
    }
  }
  xmlNode *root = xmlDocGetRootElement(doc);

  set_text_child(root, "name", definition->name);
  remove_children(root, "parent");
  if (definition->parent) {
    xmlNode *parent = xmlNewChild(root, NULL, (const xmlChar *)"parent", NULL);
    xmlNewTextChild(parent, NULL, (const xmlChar *)"name", (const xmlChar *)definition->parent);
  }
  g_autofree char *ctime = g_strdup_printf("%" G_GINT64_FORMAT, definition->creation_time);
  set_text_child(root, "creationTime", ctime);

  xmlNode *disks = domxml_child(root, "disks");
  if (!disks)
    disks = xmlNewChild(root, NULL, (const xmlChar *)"disks", NULL);
  xmlNode *domain = domxml_child(root, "domain");
  for (guint i = 0; i < definition->disks->len; i++) {
    const PlanSnapshotDisk *sd = definition->disks->pdata[i];
    xmlNode *disk = NULL;
    for (xmlNode *n = disks->children; n && !disk; n = n->next) {
      g_autofree char *name = domxml_attr(n, "name");
      if (domxml_node_is(n, "disk") && g_strcmp0(name, sd->target) == 0)
        disk = n;
    }
    if (!disk) {
      disk = xmlNewChild(disks, NULL, (const xmlChar *)"disk", NULL);
      xmlSetProp(disk, (const xmlChar *)"name", (const xmlChar *)sd->target);
    }
    xmlSetProp(disk, (const xmlChar *)"snapshot", (const xmlChar *)"external");
    if (!xmlHasProp(disk, (const xmlChar *)"type"))
      xmlSetProp(disk, (const xmlChar *)"type", (const xmlChar *)"file");
    if (!domxml_child(disk, "driver")) {
      xmlNode *driver = xmlNewChild(disk, NULL, (const xmlChar *)"driver", NULL);
      xmlSetProp(driver, (const xmlChar *)"type", (const xmlChar *)"qcow2");
    }
    if (sd->overlay)
      set_source_file(disk, sd->overlay);

    /* The embedded domain is the domain at the snapshot: it read P(S). */
    xmlNode *ddisk = domain ? domain_disk(domain, sd->target) : NULL;
    if (ddisk && sd->point) {
      set_source_file(ddisk, sd->point);
      remove_children(ddisk, "backingStore");
    }
  }
  return domxml_doc_dump(doc, error);
}

/* ------------------------------------------------------------------ */
/* Shared disks                                                        */

GHashTable *
exec_xml_shared_targets(const char *domain_xml)
{
  GHashTable *targets = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(xmlDoc) doc = parse(domain_xml, "domain", &error);
  if (!doc)
    return targets;
  xmlNode *devices = domxml_child(xmlDocGetRootElement(doc), "devices");
  for (xmlNode *n = devices ? devices->children : NULL; n; n = n->next) {
    if (!domxml_node_is(n, "disk") || !(domxml_child(n, "readonly") || domxml_child(n, "shareable")))
      continue;
    char *dev = domxml_attr(domxml_child(n, "target"), "dev");
    if (dev)
      g_hash_table_add(targets, dev);
  }
  return targets;
}
