/* embed-fixture.c: see embed-fixture.h. */
#include "embed-fixture.h"

#include <glib/gstdio.h>
#include <stdlib.h>
#include <string.h>

/* QEMU as root without a security driver, like the daemon's own tests.
 * No mount namespace per QEMU: it would keep copies of other tests' FUSE
 * mounts alive (tests/fs/mountlib.py, Env.share_mountpoint). */
static const char QEMU_CONF[] = "user = \"root\"\n"
                                "group = \"root\"\n"
                                "dynamic_ownership = 0\n"
                                "security_driver = \"none\"\n"
                                "stdio_handler = \"file\"\n"
                                "namespaces = []\n";

static GMutex log_lock;
static guint log_handler;

char *
fixture_run(const char *const *argv)
{
  g_autofree char *out = NULL, *err = NULL;
  int status;
  g_autoptr(GError) error = NULL;
  g_autofree char *cmd = g_strjoinv(" ", (char **)argv);
  g_test_message("run: %s", cmd);
  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err,
                    &status, &error))
    g_error("%s: %s", cmd, error->message);
  if (!g_spawn_check_wait_status(status, &error))
    g_error("%s: %s: %s", cmd, error->message, err ? err : "");
  return g_steal_pointer(&out);
}

/* qemu-caps.sh seed|keep on the root's capabilities cache. */
static void
qemu_caps(Fixture *fx, const char *how)
{
  g_autofree char *cache = g_build_filename(fx->root, "cache", "qemu", "capabilities", NULL);
  const char *argv[] = {"sh", FIXTURE_QEMU_CAPS, how, cache, NULL};
  g_free(fixture_run(argv));
}

void
fixture_attach(Fixture *fx, const char *dir)
{
  fx->dir = g_strdup(dir);
  fx->root = g_build_filename(dir, "root", NULL);
  fx->images = g_build_filename(dir, "images", NULL);
  fx->state_dir = g_build_filename(dir, "state", NULL);
  fx->uri = g_strdup_printf("qemu:///embed?root=%s", fx->root);
}

static void
fields_free(Fixture *fx)
{
  g_clear_pointer(&fx->dir, g_free);
  g_clear_pointer(&fx->root, g_free);
  g_clear_pointer(&fx->images, g_free);
  g_clear_pointer(&fx->state_dir, g_free);
  g_clear_pointer(&fx->uri, g_free);
}

void
fixture_setup(Fixture *fx)
{
  const char *tools[] = {"qemu-system-x86_64", "qemu-img", "qemu-io"};
  for (guint i = 0; i < G_N_ELEMENTS(tools); i++) {
    g_autofree char *found = g_find_program_in_path(tools[i]);
    if (!found) {
      g_print("1..0 # SKIP %s is not installed\n", tools[i]);
      exit(77);
    }
  }
  /* Keep the path short: libvirt puts UNIX sockets under the root, and
   * their names have room for 108 bytes. */
  const char *base = g_getenv("VIRTSNAPFS_TEST_DIR");
  g_autofree char *dir = g_build_filename(base ? base : g_get_tmp_dir(), "vsf-XXXXXX", NULL);
  g_assert_nonnull(g_mkdtemp(dir));
  fixture_attach(fx, dir);
  g_autofree char *etc = g_build_filename(fx->root, "etc", NULL);
  g_assert_cmpint(g_mkdir_with_parents(fx->images, 0755), ==, 0);
  g_assert_cmpint(g_mkdir_with_parents(etc, 0755), ==, 0);
  g_autofree char *conf = g_build_filename(etc, "qemu.conf", NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_set_contents(conf, QEMU_CONF, -1, &error));
  qemu_caps(fx, "seed");
}

void
fixture_open(Fixture *fx)
{
  g_autoptr(GError) error = NULL;
  SnapOptions options = {.backend = {.uri = fx->uri}, .state_dir = fx->state_dir};
  fx->snap = snap_new(&options, &error);
  g_assert_no_error(error);
  g_assert_nonnull(fx->snap);
  fx->backend = snap_get_backend(fx->snap);
  fx->conn = backend_get_connection(fx->backend, &error);
  g_assert_no_error(error);
}

void
fixture_abandon(Fixture *fx)
{
  g_clear_pointer(&fx->conn, virConnectClose);
  fx->backend = NULL;
  g_clear_pointer(&fx->snap, snap_abandon);
  fields_free(fx);
}

void
fixture_reopen(Fixture *fx, gboolean crash)
{
  g_clear_pointer(&fx->conn, virConnectClose);
  fx->backend = NULL;
  if (crash)
    g_clear_pointer(&fx->snap, snap_abandon);
  else
    g_clear_pointer(&fx->snap, snap_free);
  fixture_open(fx);
}

void
fixture_teardown(Fixture *fx)
{
  g_test_message("teardown: destroying domains");
  if (fx->conn) {
    virDomainPtr *doms = NULL;
    int n = virConnectListAllDomains(fx->conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    for (int i = 0; i < n; i++) {
      virDomainDestroy(doms[i]);
      virDomainFree(doms[i]);
    }
    free(doms);
    g_clear_pointer(&fx->conn, virConnectClose);
  }
  g_test_message("teardown: freeing the backend");
  fx->backend = NULL;
  g_clear_pointer(&fx->snap, snap_free);
  qemu_caps(fx, "keep");
  g_test_message("teardown: removing %s", fx->dir);
  const char *rm[] = {"rm", "-rf", fx->dir, NULL};
  g_free(fixture_run(rm));
  fields_free(fx);
  if (fx->log) {
    g_log_remove_handler("virtsnapfs", log_handler);
    g_string_free(g_steal_pointer(&fx->log), TRUE);
  }
}

static void
on_log(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  Fixture *fx = data;
  /* Debug lines too: a plan cut short by the test hook logs its choice
   * only at debug level (the message line comes when a call finishes). */
  if (level & (G_LOG_LEVEL_DEBUG | G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_WARNING |
               G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_ERROR)) {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&log_lock);
    g_string_append_printf(fx->log, "%s\n", message);
  }
  if ((level & G_LOG_LEVEL_DEBUG) && !g_getenv("EXEC_TEST_DEBUG"))
    return;
  g_printerr("# %s: %s\n", domain, message);
  if (level & (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_CRITICAL))
    g_error("unexpected warning from the daemon code: %s", message);
}

void
fixture_watch_log(Fixture *fx)
{
  fx->log = g_string_new(NULL);
  log_handler = g_log_set_handler(
      "virtsnapfs", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL | G_LOG_FLAG_RECURSION, on_log, fx);
}

void
fixture_log_clear(Fixture *fx)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&log_lock);
  g_string_truncate(fx->log, 0);
}

Fixture *
fixture_new(void)
{
  Fixture *fx = g_new0(Fixture, 1);
  fixture_setup(fx);
  fixture_watch_log(fx);
  fixture_open(fx);
  return fx;
}

void
fixture_free(Fixture *fx)
{
  fixture_teardown(fx);
  g_free(fx);
}

char *
fixture_image(Fixture *fx, const char *name, const char *format, const char *size,
              const char *backing, const char *backing_format)
{
  char *path = g_build_filename(fx->images, name, NULL);
  if (backing) {
    const char *argv[] = {"qemu-img", "create", "-q", "-f", format, "-b", backing, "-F",
                          backing_format, path, NULL};
    g_free(fixture_run(argv));
  } else {
    const char *argv[] = {"qemu-img", "create", "-q", "-f", format, path, size, NULL};
    g_free(fixture_run(argv));
  }
  return path;
}

void
fixture_image_write(const char *path, const char *format, guint8 pattern, guint64 offset,
                    guint64 length)
{
  g_autofree char *cmd = g_strdup_printf("write -P 0x%02x %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT,
                                         pattern, offset, length);
  const char *argv[] = {"qemu-io", "-f", format, "-c", cmd, path, NULL};
  g_free(fixture_run(argv));
}

GBytes *
fixture_read_image(Fixture *fx, const char *image)
{
  g_autofree char *out = g_build_filename(fx->dir, "read.raw", NULL);
  const char *argv[] = {"qemu-img", "convert", "-U", "-O", "raw", image, out, NULL};
  g_free(fixture_run(argv));
  g_autoptr(GError) error = NULL;
  g_autoptr(GMappedFile) map = g_mapped_file_new(out, FALSE, &error);
  g_assert_no_error(error);
  GBytes *bytes = g_bytes_new(g_mapped_file_get_contents(map), g_mapped_file_get_length(map));
  g_unlink(out);
  return bytes;
}

void
fixture_assert_pattern(GBytes *content, guint8 pattern, guint64 offset, guint64 length)
{
  gsize size;
  const guint8 *data = g_bytes_get_data(content, &size);
  g_assert_cmpuint(offset + length, <=, size);
  for (guint64 i = 0; i < length; i++)
    if (data[offset + i] != pattern)
      g_error("byte %" G_GUINT64_FORMAT " is 0x%02x, expected 0x%02x", offset + i,
              data[offset + i], pattern);
}

virDomainPtr
fixture_define(Fixture *fx, const char *name, const FixtureDisk *disks, guint n)
{
  g_autoptr(GString) xml = g_string_new(NULL);
  g_string_append_printf(xml,
                         "<domain type='qemu'><name>%s</name><memory unit='MiB'>128</memory>"
                         "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
                         "<devices>",
                         name);
  for (guint i = 0; i < n; i++) {
    const char *device = disks[i].device ? disks[i].device : "disk";
    g_string_append_printf(xml,
                           "<disk type='file' device='%s'><driver name='qemu' type='%s'/>"
                           "<source file='%s'/><target dev='%s' bus='%s'/>%s</disk>",
                           device, disks[i].format, disks[i].path, disks[i].target, disks[i].bus,
                           g_str_equal(device, "cdrom") ? "<readonly/>" : "");
  }
  g_string_append(xml, "</devices></domain>");
  virDomainPtr dom = virDomainDefineXML(fx->conn, xml->str);
  if (!dom)
    g_error("define %s: %s", name, virGetLastErrorMessage());
  return dom;
}

void
fixture_define_qcow2(Fixture *fx, const char *name, guint n_disks, guint size_mib)
{
  g_autofree char *subdir = g_build_filename(fx->images, name, NULL);
  g_assert_cmpint(g_mkdir_with_parents(subdir, 0755), ==, 0);
  g_autofree char *size = g_strdup_printf("%uM", size_mib);
  g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
  g_autofree FixtureDisk *disks = g_new0(FixtureDisk, n_disks);
  g_autoptr(GPtrArray) targets = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < n_disks; i++) {
    g_autofree char *file = g_strdup_printf("%s/vd%c.qcow2", name, 'a' + i);
    g_ptr_array_add(paths, fixture_image(fx, file, "qcow2", size, NULL, NULL));
    g_ptr_array_add(targets, g_strdup_printf("vd%c", 'a' + i));
    disks[i] = (FixtureDisk){targets->pdata[i], "virtio", paths->pdata[i], "qcow2", NULL};
  }
  g_autoptr(BackendVirDomain) dom = fixture_define(fx, name, disks, n_disks);
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
}

virDomainPtr
fixture_domain(Fixture *fx, const char *name)
{
  virDomainPtr dom = virDomainLookupByName(fx->conn, name);
  if (!dom)
    g_error("domain %s: %s", name, virGetLastErrorMessage());
  return dom;
}

/* Starts or stops (destroys) a domain, then refreshes the model. */
static void
set_running(Fixture *fx, const char *name, gboolean running)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fx, name);
  if ((running ? virDomainCreate(dom) : virDomainDestroy(dom)) < 0)
    g_error("%s %s: %s", running ? "start" : "stop", name, virGetLastErrorMessage());
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fx->backend, &error));
}

void
fixture_start(Fixture *fx, const char *name)
{
  set_running(fx, name, TRUE);
}

void
fixture_stop(Fixture *fx, const char *name)
{
  set_running(fx, name, FALSE);
}

gboolean
fixture_running(Fixture *fx, const char *name)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fx, name);
  return virDomainIsActive(dom) == 1;
}

char *
fixture_virtio_qdev(guint n)
{
  return g_strdup_printf("/machine/peripheral/virtio-disk%u/virtio-backend", n);
}

void
fixture_monitor(virDomainPtr dom, const char *command)
{
  char *reply = NULL;
  if (virDomainQemuMonitorCommand(dom, command, &reply, VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) < 0)
    g_error("monitor %s: %s", command, virGetLastErrorMessage());
  /* qemu-io reports its own failures as text. */
  if (reply && (strstr(reply, "rror") || strstr(reply, "failed")))
    g_error("monitor %s: %s", command, reply);
  free(reply);
}

void
fixture_guest_write(virDomainPtr dom, const char *qdev_path, guint8 pattern, guint64 offset,
                    guint64 length)
{
  g_autofree char *write = g_strdup_printf(
      "qemu-io -d %s \"write -P 0x%02x %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT "\"", qdev_path,
      pattern, offset, length);
  fixture_monitor(dom, write);
  g_autofree char *flush = g_strdup_printf("qemu-io -d %s \"flush\"", qdev_path);
  fixture_monitor(dom, flush);
}

void
fixture_write(Fixture *fx, const char *name, guint disk, guint64 offset, guint64 len,
              guint8 pattern)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fx, name);
  if (virDomainIsActive(dom) == 1) {
    g_autofree char *qdev = fixture_virtio_qdev(disk);
    fixture_guest_write(dom, qdev, pattern, offset, len);
    return;
  }
  g_autofree char *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(disk, <, parsed->disks->len);
  DomXmlDisk *d = g_ptr_array_index(parsed->disks, disk);
  fixture_image_write(d->source, chain_format_name(d->format), pattern, offset, len);
}

BackendModel *
fixture_wait_model(Fixture *fx, gboolean (*check)(BackendModel *, gpointer), gpointer data,
                   guint timeout_s)
{
  gint64 deadline = g_get_monotonic_time() + timeout_s * G_USEC_PER_SEC;
  for (;;) {
    BackendModel *model = backend_get_model(fx->backend);
    if (check(model, data))
      return model;
    backend_model_unref(model);
    if (g_get_monotonic_time() > deadline)
      return NULL;
    g_usleep(50 * 1000);
  }
}
