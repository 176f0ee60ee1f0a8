/* test-libvirt.c: the backend against real libvirt and QEMU (TCG) through
 * qemu:///embed.  Each case runs in its own process (meson passes -p):
 * the model of running and shut-off domains, change detection without
 * calling refresh, and @now freeze/thaw running, shut off, and after a
 * crash. */
#include <string.h>
#include <unistd.h>

#include "embed-fixture.h"

#define VIRTIO0 "/machine/peripheral/virtio-disk0/virtio-backend"
#define SATA0 "sata0-0-0"
#define MiB (1024 * 1024)

static char *
snapshot_xml(const char *name, const char *const *external, const char *const *no)
{
  g_autoptr(GString) xml = g_string_new(NULL);
  g_string_append_printf(xml, "<domainsnapshot><name>%s</name><disks>", name);
  for (; external && external[0]; external += 2)
    g_string_append_printf(xml, "<disk name='%s' snapshot='external'><source file='%s'/></disk>",
                           external[0], external[1]);
  for (; no && *no; no++)
    g_string_append_printf(xml, "<disk name='%s' snapshot='no'/>", *no);
  g_string_append(xml, "</disks></domainsnapshot>");
  return g_string_free(g_steal_pointer(&xml), FALSE);
}

static void
take_snapshot(virDomainPtr dom, const char *xml)
{
  virDomainSnapshotPtr snap =
      virDomainSnapshotCreateXML(dom, xml, VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY);
  if (!snap)
    g_error("snapshot of %s: %s", virDomainGetName(dom), virGetLastErrorMessage());
  virDomainSnapshotFree(snap);
}

static BackendDisk *
find_disk(GPtrArray *disks, const char *target)
{
  for (guint i = 0; i < disks->len; i++) {
    BackendDisk *disk = g_ptr_array_index(disks, i);
    if (g_str_equal(disk->target, target))
      return disk;
  }
  g_error("no disk %s", target);
}

static void
assert_disk(GPtrArray *disks, const char *target, const char *path, ChainFormat format)
{
  BackendDisk *disk = find_disk(disks, target);
  g_assert_cmpstr(disk->image_path, ==, path);
  g_assert_cmpint(disk->format, ==, format);
}

static char *
domain_source(virDomainPtr dom, unsigned int flags, const char *target)
{
  g_autofree char *xml = virDomainGetXMLDesc(dom, flags);
  g_assert_nonnull(xml);
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, &error);
  g_assert_no_error(error);
  DomXmlDisk *disk = domxml_domain_find_disk(parsed, target);
  g_assert_nonnull(disk);
  return g_strdup(disk->source);
}

static guint
count_records(Fixture *fx)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) records = snap_freeze_records_load(fx->state_dir, &error);
  g_assert_no_error(error);
  return records->len;
}

/* ------------------------------------------------------------------ */

static void
test_model(void)
{
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *a_vda = fixture_image(&fx, "alpha-vda.qcow2", "qcow2", "64M", NULL, NULL);
  g_autofree char *a_sda = fixture_image(&fx, "alpha-sda.raw", "raw", "16M", NULL, NULL);
  g_autofree char *iso = fixture_image(&fx, "install.iso", "raw", "1M", NULL, NULL);
  g_autofree char *b_base = fixture_image(&fx, "beta-base.raw", "raw", "32M", NULL, NULL);
  g_autofree char *b_vda = fixture_image(&fx, "beta-vda.qcow2", "qcow2", NULL, b_base, "raw");
  fixture_open(&fx);

  FixtureDisk alpha_disks[] = {
    {"vda", "virtio", a_vda, "qcow2", NULL},
    {"sda", "sata", a_sda, "raw", NULL},
    {"hdc", "ide", iso, "raw", "cdrom"},
  };
  g_autoptr(BackendVirDomain) alpha = fixture_define(&fx, "alpha", alpha_disks, 3);
  FixtureDisk beta_disks[] = {{"vda", "virtio", b_vda, "qcow2", NULL}};
  g_autoptr(BackendVirDomain) beta = fixture_define(&fx, "beta", beta_disks, 1);
  g_assert_cmpint(virDomainCreate(beta), ==, 0);

  /* alpha, shut off: s1 of both disks, then s2 of vda only. */
  g_autofree char *a_vda_s1 = g_build_filename(fx.images, "alpha-vda.s1", NULL);
  g_autofree char *a_sda_s1 = g_build_filename(fx.images, "alpha-sda.s1", NULL);
  g_autofree char *a_vda_s2 = g_build_filename(fx.images, "alpha-vda.s2", NULL);
  const char *s1_ext[] = {"vda", a_vda_s1, "sda", a_sda_s1, NULL};
  const char *s1_no[] = {"hdc", NULL};
  g_autofree char *s1 = snapshot_xml("s1", s1_ext, s1_no);
  take_snapshot(alpha, s1);
  const char *s2_ext[] = {"vda", a_vda_s2, NULL};
  const char *s2_no[] = {"sda", "hdc", NULL};
  g_autofree char *s2 = snapshot_xml("s2", s2_ext, s2_no);
  take_snapshot(alpha, s2);
  /* beta, running: one snapshot, P(S) from libvirt's backingStore. */
  g_autofree char *b_vda_s1 = g_build_filename(fx.images, "beta-vda.s1", NULL);
  const char *b1_ext[] = {"vda", b_vda_s1, NULL};
  g_autofree char *b1 = snapshot_xml("before", b1_ext, NULL);
  take_snapshot(beta, b1);

  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx.backend, &error));
  g_assert_no_error(error);
  g_autoptr(BackendModel) model = backend_get_model(fx.backend);
  g_assert_cmpuint(model->domains->len, ==, 2);
  BackendDomain *a = g_ptr_array_index(model->domains, 0);
  BackendDomain *b = g_ptr_array_index(model->domains, 1);
  g_assert_true(backend_model_find_domain(model, "alpha") == a);
  g_assert_null(backend_model_find_domain(model, "gamma"));

  g_assert_cmpstr(a->name, ==, "alpha");
  g_assert_false(a->running);
  g_assert_false(a->frozen);
  g_assert_cmpuint(a->disks->len, ==, 2); /* the cdrom is left out */
  assert_disk(a->disks, "sda", a_sda_s1, CHAIN_FORMAT_QCOW2);
  assert_disk(a->disks, "vda", a_vda_s2, CHAIN_FORMAT_QCOW2);
  g_assert_cmpuint(a->snapshots->len, ==, 2);
  BackendSnapshot *as1 = g_ptr_array_index(a->snapshots, 0);
  BackendSnapshot *as2 = g_ptr_array_index(a->snapshots, 1);
  g_assert_true(backend_domain_find_snapshot(a, "s2") == as2);
  g_assert_cmpstr(as1->name, ==, "s1");
  g_assert_null(as1->parent);
  g_assert_false(as1->current);
  g_assert_cmpint(as1->creation_time, >, 0);
  g_assert_nonnull(strstr(as1->xml, "<name>s1</name>"));
  g_assert_cmpuint(as1->disks->len, ==, 2);
  assert_disk(as1->disks, "sda", a_sda, CHAIN_FORMAT_RAW);
  assert_disk(as1->disks, "vda", a_vda, CHAIN_FORMAT_QCOW2);
  g_assert_cmpstr(as2->name, ==, "s2");
  g_assert_cmpstr(as2->parent, ==, "s1");
  g_assert_true(as2->current);
  g_assert_cmpuint(as2->disks->len, ==, 1);
  assert_disk(as2->disks, "vda", a_vda_s1, CHAIN_FORMAT_QCOW2);

  g_assert_cmpstr(b->name, ==, "beta");
  g_assert_true(b->running);
  g_assert_cmpuint(b->disks->len, ==, 1);
  assert_disk(b->disks, "vda", b_vda_s1, CHAIN_FORMAT_QCOW2);
  BackendDisk *active = find_disk(b->disks, "vda");
  g_assert_nonnull(active->backing_formats);
  g_assert_cmpint(active->backing_formats[0], ==, CHAIN_FORMAT_QCOW2);
  g_assert_cmpint(active->backing_formats[1], ==, CHAIN_FORMAT_RAW);
  g_assert_cmpint(active->backing_formats[2], ==, CHAIN_FORMAT_UNKNOWN);
  g_assert_cmpuint(b->snapshots->len, ==, 1);
  BackendSnapshot *bs = g_ptr_array_index(b->snapshots, 0);
  assert_disk(bs->disks, "vda", b_vda, CHAIN_FORMAT_QCOW2);
  BackendDisk *point = find_disk(bs->disks, "vda");
  g_assert_nonnull(point->backing_formats);
  g_assert_cmpint(point->backing_formats[0], ==, CHAIN_FORMAT_RAW);
  g_assert_cmpint(point->backing_formats[1], ==, CHAIN_FORMAT_UNKNOWN);

  g_autofree char *images = realpath(fx.images, NULL);
  g_assert_true(g_strv_contains((const char *const *)model->image_dirs, images));

  /* The point images read as chain/ sees them: open each P(S) chain under
   * the model's policy. */
  ChainPolicy policy = {.image_dirs = (const char *const *)model->image_dirs};
  g_autoptr(Chain) chain = chain_open(point->image_path, point->format, point->backing_formats,
                                      &policy, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_depth(chain), ==, 2);

  fixture_teardown(&fx);
}

/* ------------------------------------------------------------------ */

typedef struct {
  GAsyncQueue *generations;
} ListenerData;

static void
on_change(BackendModel *old_model, BackendModel *new_model, gpointer user_data)
{
  ListenerData *data = user_data;
  g_assert_nonnull(old_model);
  g_assert_cmpuint(new_model->generation, >, old_model->generation);
  /* A snapshot being created never shows half made (without its disk);
   * only "ghost", whose overlay does not exist, ends up like that. */
  for (guint i = 0; i < new_model->domains->len; i++) {
    BackendDomain *domain = g_ptr_array_index(new_model->domains, i);
    for (guint j = 0; j < domain->snapshots->len; j++) {
      BackendSnapshot *snapshot = g_ptr_array_index(domain->snapshots, j);
      if (!g_str_equal(snapshot->name, "ghost"))
        g_assert_cmpuint(snapshot->disks->len, ==, 1);
    }
  }
  g_async_queue_push(data->generations, GUINT_TO_POINTER((guint)new_model->generation));
}

static gboolean
has_snapshot(BackendModel *model, gpointer data)
{
  /* While libvirt creates a snapshot of a running domain, its metadata
   * can show before the overlay exists; wait for the complete picture. */
  BackendDomain *domain = backend_model_find_domain(model, "gamma");
  BackendSnapshot *snapshot = domain ? backend_domain_find_snapshot(domain, data) : NULL;
  return snapshot && snapshot->disks->len == 1;
}

static gboolean
has_ghost(BackendModel *model, gpointer data)
{
  BackendDomain *domain = backend_model_find_domain(model, "gamma");
  return domain && backend_domain_find_snapshot(domain, "ghost");
}

static gboolean
gamma_running(BackendModel *model, gpointer data)
{
  BackendDomain *domain = backend_model_find_domain(model, "gamma");
  return domain && domain->running;
}

static gboolean
theta_running(BackendModel *model, gpointer data)
{
  BackendDomain *domain = backend_model_find_domain(model, "theta");
  return domain && domain->running;
}

static gboolean
has_domain(BackendModel *model, gpointer data)
{
  return backend_model_find_domain(model, data) != NULL;
}

static gboolean
lacks_domain(BackendModel *model, gpointer data)
{
  return backend_model_find_domain(model, data) == NULL;
}

static void
test_listener(void)
{
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *vda = fixture_image(&fx, "gamma.qcow2", "qcow2", "64M", NULL, NULL);
  g_autofree char *dvda = fixture_image(&fx, "delta.qcow2", "qcow2", "64M", NULL, NULL);
  fixture_open(&fx);
  ListenerData data = {g_async_queue_new()};
  backend_set_listener(fx.backend, on_change, &data);

  /* Every change below goes to libvirt directly: only the backend's own
   * events and poll can notice it. */
  FixtureDisk disks[] = {{"vda", "virtio", vda, "qcow2", NULL}};
  g_autoptr(BackendVirDomain) gamma = fixture_define(&fx, "gamma", disks, 1);
  g_autoptr(BackendModel) m1 = fixture_wait_model(&fx, has_domain, (gpointer) "gamma", 5);
  g_assert_nonnull(m1);

  g_autofree char *ov = g_build_filename(fx.images, "gamma.s1", NULL);
  const char *ext[] = {"vda", ov, NULL};
  g_autofree char *xml = snapshot_xml("s1", ext, NULL);
  gint64 start = g_get_monotonic_time();
  take_snapshot(gamma, xml);
  g_autoptr(BackendModel) m2 = fixture_wait_model(&fx, has_snapshot, (gpointer) "s1", 5);
  g_assert_nonnull(m2);
  g_test_message("offline snapshot seen after %" G_GINT64_FORMAT " ms",
                 (g_get_monotonic_time() - start) / 1000);
  g_assert_cmpuint(m2->generation, >, m1->generation);

  g_assert_cmpint(virDomainCreate(gamma), ==, 0);
  g_autoptr(BackendModel) m3 = fixture_wait_model(&fx, gamma_running, NULL, 5);
  g_assert_nonnull(m3);

  g_autofree char *ov2 = g_build_filename(fx.images, "gamma.s2", NULL);
  const char *ext2[] = {"vda", ov2, NULL};
  g_autofree char *xml2 = snapshot_xml("s2", ext2, NULL);
  take_snapshot(gamma, xml2);
  g_autoptr(BackendModel) m4 = fixture_wait_model(&fx, has_snapshot, (gpointer) "s2", 5);
  g_assert_nonnull(m4);
  BackendSnapshot *s2 = backend_domain_find_snapshot(backend_model_find_domain(m4, "gamma"), "s2");
  assert_disk(s2->disks, "vda", ov, CHAIN_FORMAT_QCOW2);

  /* Metadata naming an overlay that does not exist: shown after the
   * settling time, without the disk (and logged once). */
  g_autofree char *domxml = virDomainGetXMLDesc(gamma, VIR_DOMAIN_XML_INACTIVE);
  g_autofree char *ghost = g_strdup_printf(
      "<domainsnapshot><name>ghost</name><state>disk-snapshot</state>"
      "<creationTime>1700000000</creationTime><memory snapshot='no'/><disks>"
      "<disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
      "<source file='%s/nonexistent.qcow2'/></disk></disks>%s</domainsnapshot>",
      fx.images, domxml);
  start = g_get_monotonic_time();
  virDomainSnapshotPtr redefined =
      virDomainSnapshotCreateXML(gamma, ghost, VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE);
  g_assert_nonnull(redefined);
  virDomainSnapshotFree(redefined);
  g_autoptr(BackendModel) mg = fixture_wait_model(&fx, has_ghost, NULL, 10);
  g_assert_nonnull(mg);
  gint64 waited = g_get_monotonic_time() - start;
  g_test_message("ghost snapshot shown after %" G_GINT64_FORMAT " ms", waited / 1000);
  g_assert_cmpint(waited, >=, 2 * G_USEC_PER_SEC);
  BackendSnapshot *g = backend_domain_find_snapshot(backend_model_find_domain(mg, "gamma"), "ghost");
  g_assert_cmpuint(g->disks->len, ==, 0);
  g_assert_true(g == g_ptr_array_index(backend_model_find_domain(mg, "gamma")->snapshots, 0));

  FixtureDisk ddisks[] = {{"vda", "virtio", dvda, "qcow2", NULL}};
  g_autoptr(BackendVirDomain) delta = fixture_define(&fx, "delta", ddisks, 1);
  g_autoptr(BackendModel) m5 = fixture_wait_model(&fx, has_domain, (gpointer) "delta", 5);
  g_assert_nonnull(m5);
  g_assert_cmpint(virDomainUndefine(delta), ==, 0);
  g_autoptr(BackendModel) m6 = fixture_wait_model(&fx, lacks_domain, (gpointer) "delta", 5);
  g_assert_nonnull(m6);

  /* The listener saw every one of these models, in order. */
  g_assert_cmpint(g_async_queue_length(data.generations), >=, 6);
  guint last = 0;
  gpointer item;
  while ((item = g_async_queue_try_pop(data.generations))) {
    g_assert_cmpuint(GPOINTER_TO_UINT(item), >, last);
    last = GPOINTER_TO_UINT(item);
  }
  g_assert_cmpuint(last, >=, m6->generation);

  backend_set_listener(fx.backend, NULL, NULL);
  g_async_queue_unref(data.generations);
  fixture_teardown(&fx);
}

/* ------------------------------------------------------------------ */

static virConnectPtr
wait_connection(Fixture *fx, guint timeout_s)
{
  gint64 deadline = g_get_monotonic_time() + timeout_s * G_USEC_PER_SEC;
  while (g_get_monotonic_time() < deadline) {
    virConnectPtr conn = backend_get_connection(fx->backend, NULL);
    if (conn)
      return conn;
    g_usleep(50 * 1000);
  }
  return NULL;
}

static void
test_reconnect(void)
{
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *vda = fixture_image(&fx, "theta.qcow2", "qcow2", "64M", NULL, NULL);
  g_autofree char *ivda = fixture_image(&fx, "iota.qcow2", "qcow2", "64M", NULL, NULL);
  fixture_open(&fx);
  FixtureDisk disks[] = {{"vda", "virtio", vda, "qcow2", NULL}};
  virDomainFree(fixture_define(&fx, "theta", disks, 1));
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx.backend, &error));
  g_autoptr(BackendModel) before = backend_get_model(fx.backend);
  g_assert_nonnull(backend_model_find_domain(before, "theta"));

  /* Lose the connection: the last model stays while the worker
   * reconnects. */
  virConnectClose(g_steal_pointer(&fx.conn));
  backend_drop_connection(fx.backend);
  g_autoptr(BackendModel) during = backend_get_model(fx.backend);
  g_assert_nonnull(backend_model_find_domain(during, "theta"));
  fx.conn = wait_connection(&fx, 10);
  g_assert_nonnull(fx.conn);

  /* The new connection is watched like the first: poll and events. */
  FixtureDisk idisks[] = {{"vda", "virtio", ivda, "qcow2", NULL}};
  virDomainFree(fixture_define(&fx, "iota", idisks, 1));
  g_autoptr(BackendModel) after = fixture_wait_model(&fx, has_domain, (gpointer) "iota", 5);
  g_assert_nonnull(after);
  g_assert_cmpuint(after->generation, >, before->generation);
  g_autoptr(BackendVirDomain) theta = virDomainLookupByName(fx.conn, "theta");
  g_assert_cmpint(virDomainCreate(theta), ==, 0);
  g_autoptr(BackendModel) running = fixture_wait_model(&fx, theta_running, NULL, 5);
  g_assert_nonnull(running);
  fixture_teardown(&fx);
}

static void
test_freeze_running(void)
{
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *vda = fixture_image(&fx, "eps.qcow2", "qcow2", "64M", NULL, NULL);
  fixture_image_write(vda, "qcow2", 0x11, 0, 2 * MiB);
  fixture_open(&fx);
  FixtureDisk disks[] = {{"vda", "virtio", vda, "qcow2", NULL}};
  g_autoptr(BackendVirDomain) dom = fixture_define(&fx, "eps", disks, 1);
  g_assert_cmpint(virDomainCreate(dom), ==, 0);

  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) frozen = snap_freeze(fx.snap, "eps", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(frozen->len, ==, 1);
  assert_disk(frozen, "vda", vda, CHAIN_FORMAT_QCOW2);
  g_assert_cmpuint(count_records(&fx), ==, 1);

  g_autoptr(BackendModel) model = backend_get_model(fx.backend);
  BackendDomain *eps = backend_model_find_domain(model, "eps");
  g_assert_true(eps->frozen);
  g_autofree char *overlay = g_strdup(find_disk(eps->disks, "vda")->image_path);
  g_assert_true(g_str_has_prefix(overlay, vda));
  g_assert_nonnull(strstr(overlay, ".virtsnapfs-now-"));
  g_assert_true(g_file_test(overlay, G_FILE_TEST_IS_REGULAR));

  g_autoptr(GBytes) before = fixture_read_image(&fx, vda);
  fixture_guest_write(dom, VIRTIO0, 0xab, 0, 64 * 1024);
  fixture_guest_write(dom, VIRTIO0, 0xcd, MiB, 64 * 1024);
  g_autoptr(GBytes) after = fixture_read_image(&fx, vda);
  g_assert_true(g_bytes_equal(before, after)); /* the frozen image never moved */

  /* What @now serves: the frozen disk through chain/ under the model's
   * image policy reads as before the guest writes. */
  BackendDisk *fdisk = find_disk(frozen, "vda");
  ChainPolicy policy = {.image_dirs = (const char *const *)model->image_dirs};
  g_autoptr(Chain) chain = chain_open(fdisk->image_path, fdisk->format, fdisk->backing_formats,
                                      &policy, &error);
  g_assert_no_error(error);
  guint8 buf[4096];
  g_assert_cmpint(chain_read(chain, buf, sizeof(buf), 0), ==, sizeof(buf));
  for (gsize i = 0; i < sizeof(buf); i++)
    g_assert_cmpuint(buf[i], ==, 0x11);
  g_autoptr(GBytes) present = fixture_read_image(&fx, overlay);
  fixture_assert_pattern(present, 0xab, 0, 64 * 1024);
  fixture_assert_pattern(present, 0x11, 64 * 1024, MiB - 64 * 1024);

  /* A second reader shares the freeze; its thaw is not the last. */
  g_autoptr(GPtrArray) again = snap_freeze(fx.snap, "eps", &error);
  g_assert_no_error(error);
  assert_disk(again, "vda", vda, CHAIN_FORMAT_QCOW2);
  snap_thaw(fx.snap, "eps");
  g_assert_true(g_file_test(overlay, G_FILE_TEST_EXISTS));

  snap_thaw(fx.snap, "eps");
  g_assert_false(g_file_test(overlay, G_FILE_TEST_EXISTS));
  g_assert_cmpuint(count_records(&fx), ==, 0);
  g_autofree char *live = domain_source(dom, 0, "vda");
  g_assert_cmpstr(live, ==, vda);
  g_autofree char *persistent = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "vda");
  g_assert_cmpstr(persistent, ==, vda);
  g_autoptr(BackendModel) thawed = backend_get_model(fx.backend);
  BackendDomain *eps2 = backend_model_find_domain(thawed, "eps");
  g_assert_false(eps2->frozen);
  assert_disk(eps2->disks, "vda", vda, CHAIN_FORMAT_QCOW2);

  /* Every write made during the freeze is in the original image, and the
   * guest keeps writing there. */
  fixture_guest_write(dom, VIRTIO0, 0xef, 2 * MiB, 64 * 1024);
  g_autoptr(GBytes) final = fixture_read_image(&fx, vda);
  fixture_assert_pattern(final, 0xab, 0, 64 * 1024);
  fixture_assert_pattern(final, 0x11, 64 * 1024, MiB - 64 * 1024);
  fixture_assert_pattern(final, 0xcd, MiB, 64 * 1024);
  fixture_assert_pattern(final, 0x11, MiB + 64 * 1024, MiB - 64 * 1024);
  fixture_assert_pattern(final, 0xef, 2 * MiB, 64 * 1024);

  fixture_teardown(&fx);
}

static void
test_freeze_shutoff(void)
{
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *vda = fixture_image(&fx, "zeta.qcow2", "qcow2", "64M", NULL, NULL);
  g_autofree char *sda = fixture_image(&fx, "zeta-data.raw", "raw", "16M", NULL, NULL);
  fixture_image_write(vda, "qcow2", 0x22, 0, MiB);
  fixture_image_write(sda, "raw", 0x33, 0, MiB);
  fixture_open(&fx);
  FixtureDisk disks[] = {
    {"vda", "virtio", vda, "qcow2", NULL},
    {"sda", "sata", sda, "raw", NULL},
  };
  g_autoptr(BackendVirDomain) dom = fixture_define(&fx, "zeta", disks, 2);

  /* Frozen while shut off: libvirt makes the overlays offline. */
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) frozen = snap_freeze(fx.snap, "zeta", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(frozen->len, ==, 2);
  assert_disk(frozen, "vda", vda, CHAIN_FORMAT_QCOW2);
  assert_disk(frozen, "sda", sda, CHAIN_FORMAT_RAW);
  g_autofree char *ov_vda = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "vda");
  g_autofree char *ov_sda = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "sda");
  g_assert_nonnull(strstr(ov_vda, ".virtsnapfs-now-"));
  g_assert_nonnull(strstr(ov_sda, ".virtsnapfs-now-"));

  g_autoptr(GBytes) vda_before = fixture_read_image(&fx, vda);
  g_autoptr(GBytes) sda_before = fixture_read_image(&fx, sda);

  /* A start during the freeze writes into the overlays, not the frozen
   * images. */
  g_assert_cmpint(virDomainCreate(dom), ==, 0);
  fixture_guest_write(dom, VIRTIO0, 0x44, 0, 64 * 1024);
  fixture_guest_write(dom, SATA0, 0x55, 4 * MiB, 64 * 1024);
  g_autoptr(GBytes) vda_during = fixture_read_image(&fx, vda);
  g_autoptr(GBytes) sda_during = fixture_read_image(&fx, sda);
  g_assert_true(g_bytes_equal(vda_before, vda_during));
  g_assert_true(g_bytes_equal(sda_before, sda_during));
  g_assert_cmpint(virDomainDestroy(dom), ==, 0);

  /* Shut off again at the thaw: qemu-img commit and a redefinition. */
  snap_thaw(fx.snap, "zeta");
  g_assert_false(g_file_test(ov_vda, G_FILE_TEST_EXISTS));
  g_assert_false(g_file_test(ov_sda, G_FILE_TEST_EXISTS));
  g_assert_cmpuint(count_records(&fx), ==, 0);
  g_autofree char *src_vda = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "vda");
  g_autofree char *src_sda = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "sda");
  g_assert_cmpstr(src_vda, ==, vda);
  g_assert_cmpstr(src_sda, ==, sda);
  g_autoptr(BackendModel) model = backend_get_model(fx.backend);
  BackendDomain *zeta = backend_model_find_domain(model, "zeta");
  assert_disk(zeta->disks, "sda", sda, CHAIN_FORMAT_RAW);
  assert_disk(zeta->disks, "vda", vda, CHAIN_FORMAT_QCOW2);

  g_autoptr(GBytes) vda_final = fixture_read_image(&fx, vda);
  g_autoptr(GBytes) sda_final = fixture_read_image(&fx, sda);
  fixture_assert_pattern(vda_final, 0x44, 0, 64 * 1024);
  fixture_assert_pattern(vda_final, 0x22, 64 * 1024, MiB - 64 * 1024);
  fixture_assert_pattern(sda_final, 0x33, 0, MiB);
  fixture_assert_pattern(sda_final, 0x55, 4 * MiB, 64 * 1024);

  /* And the domain starts again on its own images. */
  g_assert_cmpint(virDomainCreate(dom), ==, 0);
  fixture_teardown(&fx);
}

/* ------------------------------------------------------------------ */

#define REPAIR_ENV "VIRTSNAPFS_TEST_REPAIR_DIR"
#define REPAIR_MODE_ENV "VIRTSNAPFS_TEST_REPAIR_MODE"

/* The child: freeze, write, and vanish without a thaw. */
static void
repair_child(void)
{
  Fixture fx = {0};
  fixture_attach(&fx, g_getenv(REPAIR_ENV));
  g_autofree char *vda = g_build_filename(fx.images, "eta.qcow2", NULL);
  fixture_open(&fx);
  FixtureDisk disks[] = {{"vda", "virtio", vda, "qcow2", NULL}};
  g_autoptr(BackendVirDomain) dom = fixture_define(&fx, "eta", disks, 1);
  gboolean shutoff = g_strcmp0(g_getenv(REPAIR_MODE_ENV), "shutoff") == 0;
  if (!shutoff)
    g_assert_cmpint(virDomainCreate(dom), ==, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) frozen = snap_freeze(fx.snap, "eta", &error);
  g_assert_no_error(error);
  if (shutoff) /* started after the freeze, stopped before the crash */
    g_assert_cmpint(virDomainCreate(dom), ==, 0);
  fixture_guest_write(dom, VIRTIO0, 0x66, 0, 64 * 1024);
  if (shutoff)
    g_assert_cmpint(virDomainDestroy(dom), ==, 0);
  fixture_abandon(&fx);
}

static void
freeze_repair(const char *mode)
{
  if (g_test_subprocess()) {
    repair_child();
    return;
  }
  g_setenv(REPAIR_MODE_ENV, mode, TRUE);
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *vda = fixture_image(&fx, "eta.qcow2", "qcow2", "64M", NULL, NULL);
  fixture_image_write(vda, "qcow2", 0x77, 0, MiB);
  g_setenv(REPAIR_ENV, fx.dir, TRUE);
  g_test_trap_subprocess(NULL, 120 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_INHERIT_STDERR);
  g_test_trap_assert_passed();

  /* What the crash left: a record, an overlay holding a guest write. */
  g_assert_cmpuint(count_records(&fx), ==, 1);
  g_autoptr(GError) error = NULL;
  g_autoptr(GPtrArray) records = snap_freeze_records_load(fx.state_dir, &error);
  SnapFreezeRecord *record = g_ptr_array_index(records, 0);
  g_assert_cmpstr(record->domain, ==, "eta");
  SnapFreezeDisk *rdisk = g_ptr_array_index(record->disks, 0);
  g_autofree char *overlay = g_strdup(rdisk->overlay);
  g_assert_true(g_file_test(overlay, G_FILE_TEST_IS_REGULAR));

  fixture_open(&fx); /* repairs */
  g_assert_cmpuint(count_records(&fx), ==, 0);
  g_assert_false(g_file_test(overlay, G_FILE_TEST_EXISTS));
  g_autoptr(BackendVirDomain) dom = virDomainLookupByName(fx.conn, "eta");
  g_assert_nonnull(dom);
  g_test_message("domain eta was %s at the repair",
                 virDomainIsActive(dom) == 1 ? "still running" : "shut off");
  if (g_str_equal(mode, "shutoff"))
    g_assert_cmpint(virDomainIsActive(dom), ==, 0);
  g_autofree char *src = domain_source(dom, 0, "vda");
  g_assert_cmpstr(src, ==, vda);
  g_autofree char *persistent = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "vda");
  g_assert_cmpstr(persistent, ==, vda);
  g_autoptr(GBytes) content = fixture_read_image(&fx, vda);
  fixture_assert_pattern(content, 0x66, 0, 64 * 1024);
  fixture_assert_pattern(content, 0x77, 64 * 1024, MiB - 64 * 1024);
  g_autoptr(BackendModel) model = backend_get_model(fx.backend);
  BackendDomain *eta = backend_model_find_domain(model, "eta");
  g_assert_false(eta->frozen);
  assert_disk(eta->disks, "vda", vda, CHAIN_FORMAT_QCOW2);
  fixture_teardown(&fx);
}

/* The child keeps the domain running: qemu outlives it, and the repair
 * is an active commit and pivot. */
static void
test_freeze_repair_running(void)
{
  freeze_repair("running");
}

/* The domain ran during the freeze and was shut off before the crash: the
 * repair is qemu-img commit and a redefinition. */
static void
test_freeze_repair_shutoff(void)
{
  freeze_repair("shutoff");
}

/* Records a crash can leave without any guest write at stake: the overlay
 * was never created, or was created but no disk reads from it.  Both go;
 * a record for a domain that no longer exists stays, with its overlay. */
static void
test_freeze_repair_stale(void)
{
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *vda = fixture_image(&fx, "kappa.qcow2", "qcow2", "64M", NULL, NULL);
  fixture_image_write(vda, "qcow2", 0x12, 0, MiB);
  g_autofree char *xml_path = g_build_filename(fx.dir, "kappa.xml", NULL);
  g_autofree char *xml = g_strdup_printf(
      "<domain type='qemu'><name>kappa</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' "
      "device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' "
      "bus='virtio'/></disk></devices></domain>", vda);
  g_assert_true(g_file_set_contents(xml_path, xml, -1, NULL));
  /* Prepared with virsh before the backend owns the root. */
  const char *define[] = {"virsh", "-q", "-c", fx.uri, "define", xml_path, NULL};
  g_free(fixture_run(define));
  const char *uuid_argv[] = {"virsh", "-q", "-c", fx.uri, "domuuid", "kappa", NULL};
  g_autofree char *uuid = g_strstrip(fixture_run(uuid_argv));

  g_autofree char *never = g_strdup_printf("%s.virtsnapfs-now-1-1", vda);
  g_autofree char *stray = fixture_image(&fx, "kappa.qcow2.virtsnapfs-now-2-2", "qcow2", NULL,
                                         vda, "qcow2");
  g_autoptr(GError) error = NULL;
  g_autoptr(SnapFreezeRecord) r1 = snap_freeze_record_new("kappa", uuid);
  snap_freeze_record_add_disk(r1, "vda", vda, CHAIN_FORMAT_QCOW2, never);
  g_assert_true(snap_freeze_record_write(r1, fx.state_dir, &error));
  g_autoptr(SnapFreezeRecord) r2 = snap_freeze_record_new("kappa", "uuid-of-r2");
  snap_freeze_record_add_disk(r2, "vda", vda, CHAIN_FORMAT_QCOW2, stray);
  g_assert_true(snap_freeze_record_write(r2, fx.state_dir, &error));
  g_autofree char *orphan = fixture_image(&fx, "gone.qcow2.virtsnapfs-now-3-3", "qcow2", "64M",
                                          NULL, NULL);
  g_autoptr(SnapFreezeRecord) r3 = snap_freeze_record_new("gone", "uuid-of-gone");
  snap_freeze_record_add_disk(r3, "vda", "/nowhere/gone.qcow2", CHAIN_FORMAT_QCOW2, orphan);
  g_assert_true(snap_freeze_record_write(r3, fx.state_dir, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(count_records(&fx), ==, 3);

  /* The record of the vanished domain makes the repair warn: expected. */
  GLogLevelFlags fatal = g_log_set_always_fatal(G_LOG_FATAL_MASK);
  fixture_open(&fx);
  g_log_set_always_fatal(fatal);
  g_assert_cmpuint(count_records(&fx), ==, 1); /* gone's */
  g_assert_false(g_file_test(stray, G_FILE_TEST_EXISTS));
  g_assert_true(g_file_test(orphan, G_FILE_TEST_EXISTS));
  g_autoptr(BackendVirDomain) dom = virDomainLookupByName(fx.conn, "kappa");
  g_autofree char *src = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "vda");
  g_assert_cmpstr(src, ==, vda);
  g_autoptr(GBytes) content = fixture_read_image(&fx, vda);
  fixture_assert_pattern(content, 0x12, 0, MiB);
  fixture_teardown(&fx);
}

/* A record that could not be finished at start-up (here: its domain was
 * not defined yet) is finished before the next freeze of that domain, and
 * the new freeze reads what the old overlay held. */
static void
test_freeze_retry(void)
{
  Fixture fx = {0};
  fixture_setup(&fx);
  g_autofree char *vda = fixture_image(&fx, "lambda.qcow2", "qcow2", "64M", NULL, NULL);
  fixture_image_write(vda, "qcow2", 0x21, 0, MiB);
  g_autofree char *old_overlay = fixture_image(&fx, "lambda.qcow2.virtsnapfs-now-5-5", "qcow2",
                                               NULL, vda, "qcow2");
  fixture_image_write(old_overlay, "qcow2", 0x31, 0, 64 * 1024);
  g_autoptr(GError) error = NULL;
  g_autoptr(SnapFreezeRecord) record = snap_freeze_record_new("lambda", "uuid-lambda");
  snap_freeze_record_add_disk(record, "vda", vda, CHAIN_FORMAT_QCOW2, old_overlay);
  g_assert_true(snap_freeze_record_write(record, fx.state_dir, &error));
  g_assert_no_error(error);

  /* The start-up repair fails and says so; the record stays. */
  GLogLevelFlags fatal = g_log_set_always_fatal(G_LOG_FATAL_MASK);
  fixture_open(&fx);
  g_log_set_always_fatal(fatal);
  g_assert_cmpuint(count_records(&fx), ==, 1);

  FixtureDisk disks[] = {{"vda", "virtio", old_overlay, "qcow2", NULL}};
  g_autoptr(BackendVirDomain) dom = fixture_define(&fx, "lambda", disks, 1);
  g_autoptr(GPtrArray) frozen = snap_freeze(fx.snap, "lambda", &error);
  g_assert_no_error(error);
  assert_disk(frozen, "vda", vda, CHAIN_FORMAT_QCOW2);
  g_assert_false(g_file_test(old_overlay, G_FILE_TEST_EXISTS));
  g_assert_cmpuint(count_records(&fx), ==, 1); /* the new freeze's */
  g_autoptr(GBytes) content = fixture_read_image(&fx, vda);
  fixture_assert_pattern(content, 0x31, 0, 64 * 1024);
  fixture_assert_pattern(content, 0x21, 64 * 1024, MiB - 64 * 1024);

  snap_thaw(fx.snap, "lambda");
  g_assert_cmpuint(count_records(&fx), ==, 0);
  g_autofree char *src = domain_source(dom, VIR_DOMAIN_XML_INACTIVE, "vda");
  g_assert_cmpstr(src, ==, vda);
  fixture_teardown(&fx);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/libvirt/model", test_model);
  g_test_add_func("/libvirt/listener", test_listener);
  g_test_add_func("/libvirt/reconnect", test_reconnect);
  g_test_add_func("/libvirt/freeze/running", test_freeze_running);
  g_test_add_func("/libvirt/freeze/shutoff", test_freeze_shutoff);
  g_test_add_func("/libvirt/freeze/repair-running", test_freeze_repair_running);
  g_test_add_func("/libvirt/freeze/repair-shutoff", test_freeze_repair_shutoff);
  g_test_add_func("/libvirt/freeze/repair-stale", test_freeze_repair_stale);
  g_test_add_func("/libvirt/freeze/retry", test_freeze_retry);
  return g_test_run();
}
