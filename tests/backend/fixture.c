/* fixture.c: see fixture.h. */
#include "fixture.h"

#include <glib/gstdio.h>
#include <stdlib.h>
#include <string.h>

char *
fixture_run(const char *const *argv)
{
  g_autofree char *out = NULL, *err = NULL;
  int status;
  g_autoptr(GError) error = NULL;
  g_autofree char *cmd = g_strjoinv(" ", (char **)argv);
  g_test_message("run: %s", cmd);
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out,
                             &err, &status, &error));
  g_assert_no_error(error);
  if (!g_spawn_check_wait_status(status, &error))
    g_error("%s: %s: %s", cmd, error->message, err);
  return g_steal_pointer(&out);
}

void
fixture_setup(Fixture *fx)
{
  g_autoptr(GError) error = NULL;
  /* embed-test.sh makes the directory and cleans up after a failed test;
   * keep it short: libvirt puts UNIX sockets under the root (108 bytes). */
  const char *given = g_getenv("VIRTSNAPFS_TEST_DIR");
  fx->dir = given ? g_strdup(given) : g_dir_make_tmp("vsb-XXXXXX", &error);
  g_assert_no_error(error);
  fx->images = g_build_filename(fx->dir, "images", NULL);
  fx->state_dir = g_build_filename(fx->dir, "state", NULL);
  g_autofree char *etc = g_build_filename(fx->dir, "root", "etc", NULL);
  g_assert_cmpint(g_mkdir_with_parents(fx->images, 0755), ==, 0);
  g_assert_cmpint(g_mkdir_with_parents(etc, 0755), ==, 0);
  g_autofree char *conf = g_build_filename(etc, "qemu.conf", NULL);
  g_assert_true(g_file_set_contents(conf,
                                    "user = \"root\"\n"
                                    "group = \"root\"\n"
                                    "dynamic_ownership = 0\n"
                                    "security_driver = \"none\"\n"
                                    "stdio_handler = \"file\"\n"
                                    /* no mount namespace: it would keep
                                     * copies of other tests' FUSE mounts
                                     * alive (tests/fs/mountlib.py) */
                                    "namespaces = []\n",
                                    -1, &error));
  fx->uri = g_strdup_printf("qemu:///embed?root=%s/root", fx->dir);
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
    virConnectClose(g_steal_pointer(&fx->conn));
  }
  g_test_message("teardown: freeing the backend");
  fx->backend = NULL;
  g_clear_pointer(&fx->snap, snap_free);
  g_test_message("teardown: removing %s", fx->dir);
  const char *rm[] = {"rm", "-rf", fx->dir, NULL};
  g_free(fixture_run(rm));
  g_free(fx->dir);
  g_free(fx->images);
  g_free(fx->state_dir);
  g_free(fx->uri);
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

static void
monitor(virDomainPtr dom, const char *cmd)
{
  char *result = NULL;
  if (virDomainQemuMonitorCommand(dom, cmd, &result, VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) < 0)
    g_error("monitor %s: %s", cmd, virGetLastErrorMessage());
  /* qemu-io reports its own failures as text. */
  if (result && (strstr(result, "rror") || strstr(result, "failed")))
    g_error("monitor %s: %s", cmd, result);
  free(result);
}

void
fixture_guest_write(virDomainPtr dom, const char *qdev_path, guint8 pattern, guint64 offset,
                    guint64 length)
{
  g_autofree char *write = g_strdup_printf(
      "qemu-io -d %s \"write -P 0x%02x %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT "\"", qdev_path,
      pattern, offset, length);
  monitor(dom, write);
  g_autofree char *flush = g_strdup_printf("qemu-io -d %s \"flush\"", qdev_path);
  monitor(dom, flush);
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
