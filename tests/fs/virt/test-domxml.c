/* test-domxml.c: parsing of domain, snapshot and pool XML, and the XML the
 * backend writes (fs/domxml.c).  Pure: sample strings, no libvirt. */
#include <errno.h>
#include <string.h>

#include "backend.h"
#include "domxml.h"

/* A running domain as libvirt reports it: a qcow2 chain of three with
 * formats, a raw block device, and every kind of disk the tree leaves out. */
static const char running_xml[] =
  "<domain type='qemu' id='4'>\n"
  "  <name>web</name>\n"
  "  <uuid>4c466eb3-0000-4000-8000-000000000001</uuid>\n"
  "  <devices>\n"
  "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
  "    <disk type='file' device='disk'>\n"
  "      <driver name='qemu' type='qcow2'/>\n"
  "      <source file='/img/vda.ov2' index='3'/>\n"
  "      <backingStore type='file' index='1'>\n"
  "        <format type='qcow2'/>\n"
  "        <source file='/img/vda.ov1'/>\n"
  "        <backingStore type='file' index='2'>\n"
  "          <format type='raw'/>\n"
  "          <source file='/img/vda.raw'/>\n"
  "          <backingStore/>\n"
  "        </backingStore>\n"
  "      </backingStore>\n"
  "      <target dev='vda' bus='virtio'/>\n"
  "    </disk>\n"
  "    <disk type='block' device='disk'>\n"
  "      <driver name='qemu' type='raw'/>\n"
  "      <source dev='/dev/vg/data'/>\n"
  "      <target dev='sdb' bus='sata'/>\n"
  "    </disk>\n"
  "    <disk type='network' device='disk'>\n"
  "      <driver name='qemu' type='raw'/>\n"
  "      <source protocol='nbd' name='x'><host name='h' port='10809'/></source>\n"
  "      <target dev='vdc' bus='virtio'/>\n"
  "    </disk>\n"
  "    <disk type='file' device='cdrom'>\n"
  "      <driver name='qemu' type='raw'/>\n"
  "      <source file='/iso/install.iso'/>\n"
  "      <target dev='hdc' bus='ide'/>\n"
  "    </disk>\n"
  "    <disk type='file' device='disk'>\n"
  "      <driver name='qemu' type='qcow2'/>\n"
  "      <source file='/img/secret.qcow2'>\n"
  "        <encryption format='luks'><secret type='passphrase' uuid='x'/></encryption>\n"
  "      </source>\n"
  "      <target dev='vdd' bus='virtio'/>\n"
  "    </disk>\n"
  "    <disk type='file' device='disk'>\n"
  "      <driver name='qemu' type='luks'/>\n"
  "      <source file='/img/old.luks'/>\n"
  "      <target dev='vde' bus='virtio'/>\n"
  "    </disk>\n"
  "    <disk type='file' device='disk'>\n"
  "      <driver name='qemu' type='qcow2'/>\n"
  "      <target dev='vdf' bus='virtio'/>\n"
  "    </disk>\n"
  "    <disk type='file' device='disk'>\n"
  "      <driver name='qemu' type='qcow2'/>\n"
  "      <source file='/img/net-backed.qcow2'/>\n"
  "      <backingStore type='network' index='1'>\n"
  "        <format type='raw'/>\n"
  "        <source protocol='nbd' name='base'/>\n"
  "      </backingStore>\n"
  "      <target dev='vdg' bus='virtio'/>\n"
  "    </disk>\n"
  "  </devices>\n"
  "</domain>\n";

static void
test_domain_running(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) domain = domxml_parse_domain(running_xml, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(domain->name, ==, "web");
  g_assert_cmpstr(domain->uuid, ==, "4c466eb3-0000-4000-8000-000000000001");
  g_assert_true(domain->has_id);
  g_assert_cmpuint(domain->disks->len, ==, 3);

  DomXmlDisk *vda = domxml_domain_find_disk(domain, "vda");
  g_assert_nonnull(vda);
  g_assert_cmpstr(vda->source, ==, "/img/vda.ov2");
  g_assert_false(vda->is_block);
  g_assert_cmpint(vda->format, ==, CHAIN_FORMAT_QCOW2);
  g_assert_nonnull(vda->backing);
  g_assert_cmpuint(vda->backing->len, ==, 2);
  g_assert_true(vda->backing_complete);
  DomXmlLayer *l0 = g_ptr_array_index(vda->backing, 0), *l1 = g_ptr_array_index(vda->backing, 1);
  g_assert_cmpstr(l0->path, ==, "/img/vda.ov1");
  g_assert_cmpint(l0->format, ==, CHAIN_FORMAT_QCOW2);
  g_assert_cmpstr(l1->path, ==, "/img/vda.raw");
  g_assert_cmpint(l1->format, ==, CHAIN_FORMAT_RAW);

  DomXmlDisk *sdb = domxml_domain_find_disk(domain, "sdb");
  g_assert_nonnull(sdb);
  g_assert_true(sdb->is_block);
  g_assert_cmpstr(sdb->source, ==, "/dev/vg/data");
  g_assert_cmpint(sdb->format, ==, CHAIN_FORMAT_RAW);
  g_assert_null(sdb->backing);

  /* A chain that reaches a network layer is kept, but known incomplete. */
  DomXmlDisk *vdg = domxml_domain_find_disk(domain, "vdg");
  g_assert_nonnull(vdg);
  g_assert_cmpuint(vdg->backing->len, ==, 0);
  g_assert_false(vdg->backing_complete);

  /* network, cdrom, encrypted, luks format, no source */
  static const struct {
    const char *target, *reason;
  } skipped[] = {
    {"vdc", "network"}, {"hdc", "cdrom"}, {"vdd", "encrypted"}, {"vde", "luks"}, {"vdf", "no source"},
  };
  g_assert_cmpuint(domain->skipped->len, ==, G_N_ELEMENTS(skipped));
  for (guint i = 0; i < G_N_ELEMENTS(skipped); i++) {
    DomXmlSkipped *s = g_ptr_array_index(domain->skipped, i);
    g_assert_cmpstr(s->target, ==, skipped[i].target);
    g_assert_nonnull(strstr(s->reason, skipped[i].reason));
  }
}

static void
test_domain_inactive(void)
{
  /* Inactive XML: no id, no backingStore, default disk type and device. */
  const char *xml =
    "<domain type='qemu'><name>db</name><uuid>u-1</uuid><devices>"
    "<disk><driver name='qemu' type='qcow2'/><source file='/img/db.qcow2'/>"
    "<target dev='vda'/></disk>"
    "<disk type='file' device='disk'><driver type='raw'/><source file='/img/b.raw'/>"
    "<target dev='sda' bus='sata'/></disk>"
    "</devices></domain>";
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) domain = domxml_parse_domain(xml, &error);
  g_assert_no_error(error);
  g_assert_false(domain->has_id);
  g_assert_cmpuint(domain->disks->len, ==, 2);
  DomXmlDisk *vda = domxml_domain_find_disk(domain, "vda");
  g_assert_null(vda->backing);
  g_assert_false(vda->backing_complete);
  g_assert_cmpint(domxml_domain_find_disk(domain, "sda")->format, ==, CHAIN_FORMAT_RAW);
  g_assert_null(domxml_domain_find_disk(domain, "sdz"));
  g_assert_cmpuint(domain->skipped->len, ==, 0);
}

static void
test_domain_bad(void)
{
  static const char *const bad[] = {
    "<domain><name>x</name>",                 /* truncated */
    "<domainsnapshot><name>x</name></domainsnapshot>", /* wrong root */
    "<domain><devices/></domain>",            /* no name */
    "",
  };
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    g_autoptr(DomXmlDomain) domain = domxml_parse_domain(bad[i], &error);
    g_assert_null(domain);
    g_assert_error(error, BACKEND_ERROR, EINVAL);
  }
}

static void
test_snapshot(void)
{
  const char *xml =
    "<domainsnapshot>\n"
    "  <name>before-upgrade</name>\n"
    "  <state>disk-snapshot</state>\n"
    "  <parent><name>base</name></parent>\n"
    "  <creationTime>1795345919</creationTime>\n"
    "  <memory snapshot='no'/>\n"
    "  <disks>\n"
    "    <disk name='vda' snapshot='external' type='file'>\n"
    "      <driver type='qcow2'/>\n"
    "      <source file='/img/vda.ov2'/>\n"
    "    </disk>\n"
    "    <disk name='sdb' snapshot='no'/>\n"
    "    <disk name='vdc' snapshot='internal'/>\n"
    "    <disk name='vdd' snapshot='external' type='block'>\n"
    "      <source dev='/dev/vg/ov'/>\n"
    "    </disk>\n"
    "  </disks>\n"
    "  <domain type='qemu'><name>web</name><devices><disk type='file' device='disk'>"
    "<driver type='qcow2'/><source file='/img/vda.ov1'/><target dev='vda'/></disk>"
    "</devices></domain>\n"
    "</domainsnapshot>\n";
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlSnapshot) snapshot = domxml_parse_snapshot(xml, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(snapshot->name, ==, "before-upgrade");
  g_assert_cmpstr(snapshot->parent, ==, "base");
  g_assert_cmpstr(snapshot->state, ==, "disk-snapshot");
  g_assert_cmpint(snapshot->creation_time, ==, 1795345919);
  /* Only the snapshot's own <disks>, not those of the embedded <domain>. */
  g_assert_cmpuint(snapshot->disks->len, ==, 4);
  DomXmlSnapshotDisk *d0 = g_ptr_array_index(snapshot->disks, 0);
  g_assert_cmpstr(d0->name, ==, "vda");
  g_assert_cmpint(d0->mode, ==, DOMXML_SNAPSHOT_DISK_EXTERNAL);
  g_assert_cmpstr(d0->source, ==, "/img/vda.ov2");
  g_assert_cmpint(d0->format, ==, CHAIN_FORMAT_QCOW2);
  DomXmlSnapshotDisk *d1 = g_ptr_array_index(snapshot->disks, 1);
  g_assert_cmpint(d1->mode, ==, DOMXML_SNAPSHOT_DISK_NO);
  g_assert_null(d1->source);
  DomXmlSnapshotDisk *d2 = g_ptr_array_index(snapshot->disks, 2);
  g_assert_cmpint(d2->mode, ==, DOMXML_SNAPSHOT_DISK_INTERNAL);
  DomXmlSnapshotDisk *d3 = g_ptr_array_index(snapshot->disks, 3);
  g_assert_cmpstr(d3->source, ==, "/dev/vg/ov");
  g_assert_cmpint(d3->format, ==, CHAIN_FORMAT_QCOW2); /* not given: qcow2 */
}

static void
test_snapshot_root_and_bad(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlSnapshot) root = domxml_parse_snapshot(
      "<domainsnapshot><name>s1</name><creationTime>5</creationTime></domainsnapshot>", &error);
  g_assert_no_error(error);
  g_assert_null(root->parent);
  g_assert_cmpint(root->creation_time, ==, 5);
  g_assert_cmpuint(root->disks->len, ==, 0);

  g_autoptr(DomXmlSnapshot) bad = domxml_parse_snapshot(
      "<domainsnapshot><name>s1</name><creationTime>5x</creationTime></domainsnapshot>", &error);
  g_assert_null(bad);
  g_assert_error(error, BACKEND_ERROR, EINVAL);
  g_assert_nonnull(strstr(error->message, "5x"));
}

static void
test_pool(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *path = domxml_parse_pool_target(
      "<pool type='dir'><name>default</name><target><path>/var/lib/libvirt/images</path>"
      "</target></pool>", &error);
  g_assert_no_error(error);
  g_assert_cmpstr(path, ==, "/var/lib/libvirt/images");
  g_autofree char *none = domxml_parse_pool_target("<pool type='rbd'><name>x</name></pool>", &error);
  g_assert_no_error(error);
  g_assert_null(none);
  /* A logical pool names its physical devices: exact nodes for the image
   * policy; a relative or missing path is none. */
  g_auto(GStrv) devices = domxml_parse_pool_devices(
      "<pool type='logical'><name>vg</name><source><device path='/dev/sdb1'/>"
      "<device path='/dev/disk/by-id/x'/><device path='rel'/><device/><name>vg</name></source>"
      "<target><path>/dev/vg</path></target></pool>", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(g_strv_length(devices), ==, 2);
  g_assert_cmpstr(devices[0], ==, "/dev/sdb1");
  g_assert_cmpstr(devices[1], ==, "/dev/disk/by-id/x");
  g_auto(GStrv) no_devices = domxml_parse_pool_devices("<pool type='dir'><name>d</name></pool>",
                                                       &error);
  g_assert_no_error(error);
  g_assert_cmpuint(g_strv_length(no_devices), ==, 0);
}

static void
test_overlay_xml(void)
{
  DomXmlOverlay overlays[] = {
    {"vda", "/img/vda.qcow2.virtsnapfs-now-1-2"},
    {"sdb", "/img/it's <odd>&.qcow2"},
  };
  const char *no[] = {"hdc", NULL};
  g_autofree char *xml = domxml_overlay_snapshot_xml(NULL, "virtsnapfs @now", overlays, 2, no);
  /* libvirt parses what we write: check it through our own parser, with a
   * name added since libvirt makes one up. */
  g_autofree char *named = g_strdup(xml);
  g_autofree char *with_name = NULL;
  {
    const char *at = strstr(named, "<domainsnapshot>") + strlen("<domainsnapshot>");
    with_name = g_strdup_printf("<domainsnapshot><name>n</name>%s", at);
  }
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlSnapshot) parsed = domxml_parse_snapshot(with_name, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(parsed->disks->len, ==, 3);
  DomXmlSnapshotDisk *d1 = g_ptr_array_index(parsed->disks, 1);
  g_assert_cmpstr(d1->name, ==, "sdb");
  g_assert_cmpint(d1->mode, ==, DOMXML_SNAPSHOT_DISK_EXTERNAL);
  g_assert_cmpstr(d1->source, ==, "/img/it's <odd>&.qcow2");
  DomXmlSnapshotDisk *d2 = g_ptr_array_index(parsed->disks, 2);
  g_assert_cmpstr(d2->name, ==, "hdc");
  g_assert_cmpint(d2->mode, ==, DOMXML_SNAPSHOT_DISK_NO);
}

static void
test_set_disk_source(void)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *xml = domxml_set_disk_source(running_xml, "vda", "/img/vda.ov1",
                                                CHAIN_FORMAT_QCOW2, &error);
  g_assert_no_error(error);
  g_autoptr(DomXmlDomain) domain = domxml_parse_domain(xml, &error);
  g_assert_no_error(error);
  DomXmlDisk *vda = domxml_domain_find_disk(domain, "vda");
  g_assert_cmpstr(vda->source, ==, "/img/vda.ov1");
  g_assert_null(vda->backing); /* libvirt detects the chain again */
  g_assert_cmpstr(domxml_domain_find_disk(domain, "sdb")->source, ==, "/dev/vg/data");
  g_assert_cmpuint(domain->skipped->len, ==, 5);

  g_autofree char *block = domxml_set_disk_source(xml, "sdb", "/dev/vg/other", CHAIN_FORMAT_QCOW2,
                                                  &error);
  g_assert_no_error(error);
  g_autoptr(DomXmlDomain) again = domxml_parse_domain(block, &error);
  DomXmlDisk *sdb = domxml_domain_find_disk(again, "sdb");
  g_assert_true(sdb->is_block);
  g_assert_cmpstr(sdb->source, ==, "/dev/vg/other");
  g_assert_cmpint(sdb->format, ==, CHAIN_FORMAT_QCOW2);

  g_autofree char *missing = domxml_set_disk_source(running_xml, "vdz", "/x", CHAIN_FORMAT_RAW,
                                                    &error);
  g_assert_null(missing);
  g_assert_error(error, BACKEND_ERROR, ENOENT);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/domxml/domain/running", test_domain_running);
  g_test_add_func("/domxml/domain/inactive", test_domain_inactive);
  g_test_add_func("/domxml/domain/bad", test_domain_bad);
  g_test_add_func("/domxml/snapshot/disks", test_snapshot);
  g_test_add_func("/domxml/snapshot/root-and-bad", test_snapshot_root_and_bad);
  g_test_add_func("/domxml/pool", test_pool);
  g_test_add_func("/domxml/write/overlay-snapshot", test_overlay_xml);
  g_test_add_func("/domxml/write/set-disk-source", test_set_disk_source);
  return g_test_run();
}
