/* fixture.c: see fixture.h. */
#include "fixture.h"

#include <errno.h>
#include <libvirt/libvirt-qemu.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static GMutex log_lock;

static void
on_log(const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  Fixture *fixture = data;
  /* Debug lines too: a plan cut short by the test hook logs its choice
   * only at debug level (the message line comes when a call finishes). */
  if (level & (G_LOG_LEVEL_DEBUG | G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_WARNING |
               G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_ERROR)) {
    g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&log_lock);
    g_string_append_printf(fixture->log, "%s\n", message);
  }
  if ((level & G_LOG_LEVEL_DEBUG) && !g_getenv("EXEC_TEST_DEBUG"))
    return;
  g_printerr("# %s: %s\n", domain, message);
  if (level & (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_CRITICAL))
    g_error("unexpected warning from the daemon code: %s", message);
}

void
fixture_log_clear(Fixture *fixture)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&log_lock);
  g_string_truncate(fixture->log, 0);
}

static void
run(const char *const *argv, char **out)
{
  g_autofree char *err = NULL;
  g_autoptr(GError) error = NULL;
  int status;
  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, out, &err, &status,
                    &error))
    g_error("%s: %s", argv[0], error->message);
  if (!g_spawn_check_wait_status(status, &error)) {
    g_autofree char *cmd = g_strjoinv(" ", (char **)argv);
    g_error("%s: %s: %s", cmd, error->message, err ? err : "");
  }
}

static void
open_backend(Fixture *fixture)
{
  SnapOptions options = {.backend = {.uri = fixture->uri}, .state_dir = fixture->state};
  g_autoptr(GError) error = NULL;
  fixture->snap = snap_new(&options, &error);
  g_assert_no_error(error);
  fixture->backend = snap_get_backend(fixture->snap);
}

Fixture *
fixture_new(void)
{
  const char *tools[] = {"qemu-system-x86_64", "qemu-img", "qemu-io"};
  for (guint i = 0; i < G_N_ELEMENTS(tools); i++) {
    g_autofree char *found = g_find_program_in_path(tools[i]);
    if (!found) {
      g_print("1..0 # SKIP %s is not installed\n", tools[i]);
      exit(77);
    }
  }
  Fixture *fixture = g_new0(Fixture, 1);
  g_autoptr(GError) error = NULL;
  fixture->dir = g_dir_make_tmp("vsx-XXXXXX", &error);
  g_assert_no_error(error);
  fixture->root = g_build_filename(fixture->dir, "r", NULL);
  fixture->images = g_build_filename(fixture->dir, "img", NULL);
  fixture->state = g_build_filename(fixture->dir, "state", NULL);
  g_autofree char *etc = g_build_filename(fixture->root, "etc", NULL);
  g_assert_cmpint(g_mkdir_with_parents(etc, 0755), ==, 0);
  g_assert_cmpint(g_mkdir_with_parents(fixture->images, 0755), ==, 0);
  g_autofree char *conf = g_build_filename(etc, "qemu.conf", NULL);
  const char *text = "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\n"
                     "security_driver = \"none\"\nstdio_handler = \"file\"\n"
                     /* no mount namespace: it would keep copies of other
                      * tests' FUSE mounts alive (tests/fs/mountlib.py) */
                     "namespaces = []\n";
  g_assert_true(g_file_set_contents(conf, text, -1, NULL));
  fixture->uri = g_strdup_printf("qemu:///embed?root=%s", fixture->root);
  fixture->log = g_string_new(NULL);
  g_log_set_handler("virtsnapfs", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL | G_LOG_FLAG_RECURSION,
                    on_log, fixture);
  open_backend(fixture);
  return fixture;
}

void
fixture_free(Fixture *fixture)
{
  g_autoptr(BackendModel) model = backend_get_model(fixture->backend);
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *domain = g_ptr_array_index(model->domains, i);
    if (domain->running)
      fixture_stop(fixture, domain->name);
  }
  snap_free(fixture->snap);
  const char *argv[] = {"rm", "-rf", fixture->dir, NULL};
  run(argv, NULL);
  g_string_free(fixture->log, TRUE);
  g_free(fixture->dir);
  g_free(fixture->root);
  g_free(fixture->images);
  g_free(fixture->state);
  g_free(fixture->uri);
  g_free(fixture);
}

void
fixture_reopen(Fixture *fixture, gboolean crash)
{
  if (crash)
    snap_abandon(fixture->snap);
  else
    snap_free(fixture->snap);
  fixture->snap = NULL;
  fixture->backend = NULL;
  open_backend(fixture);
}

virConnectPtr
fixture_conn(Fixture *fixture)
{
  g_autoptr(GError) error = NULL;
  virConnectPtr conn = backend_get_connection(fixture->backend, &error);
  g_assert_no_error(error);
  return conn;
}

virDomainPtr
fixture_domain(Fixture *fixture, const char *name)
{
  g_autoptr(BackendVirConnect) conn = fixture_conn(fixture);
  virDomainPtr dom = virDomainLookupByName(conn, name);
  if (!dom)
    g_error("domain %s: %s", name, virGetLastErrorMessage());
  return dom;
}

void
fixture_define(Fixture *fixture, const char *name, guint n_disks, guint size_mib)
{
  g_autofree char *dir = g_build_filename(fixture->images, name, NULL);
  g_assert_cmpint(g_mkdir_with_parents(dir, 0755), ==, 0);
  g_autoptr(GString) xml = g_string_new(NULL);
  g_string_append_printf(xml, "<domain type='qemu'><name>%s</name><memory unit='MiB'>128</memory>"
                         "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
                         "<devices>", name);
  for (guint i = 0; i < n_disks; i++) {
    g_autofree char *file = g_strdup_printf("vd%c.qcow2", 'a' + i);
    g_autofree char *path = g_build_filename(dir, file, NULL);
    g_autofree char *size = g_strdup_printf("%uM", size_mib);
    const char *argv[] = {"qemu-img", "create", "-q", "-f", "qcow2", path, size, NULL};
    run(argv, NULL);
    g_string_append_printf(xml, "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                           "<source file='%s'/><target dev='vd%c' bus='virtio'/></disk>", path,
                           'a' + i);
  }
  g_string_append(xml, "</devices></domain>");
  g_autoptr(BackendVirConnect) conn = fixture_conn(fixture);
  g_autoptr(BackendVirDomain) dom = virDomainDefineXML(conn, xml->str);
  if (!dom)
    g_error("define %s: %s", name, virGetLastErrorMessage());
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fixture->backend, &error));
}

void
fixture_start(Fixture *fixture, const char *name)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fixture, name);
  if (virDomainCreate(dom) < 0)
    g_error("start %s: %s", name, virGetLastErrorMessage());
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fixture->backend, &error));
}

void
fixture_stop(Fixture *fixture, const char *name)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fixture, name);
  if (virDomainDestroy(dom) < 0)
    g_error("stop %s: %s", name, virGetLastErrorMessage());
  g_autoptr(GError) error = NULL;
  g_assert_true(backend_refresh(fixture->backend, &error));
}

gboolean
fixture_running(Fixture *fixture, const char *name)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fixture, name);
  return virDomainIsActive(dom) == 1;
}

static void
monitor(virDomainPtr dom, const char *command)
{
  char *reply = NULL;
  if (virDomainQemuMonitorCommand(dom, command, &reply, VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) < 0)
    g_error("monitor %s: %s", command, virGetLastErrorMessage());
  if (reply && (strstr(reply, "rror") || strstr(reply, "failed")))
    g_error("monitor %s: %s", command, reply);
  free(reply);
}

void
fixture_write(Fixture *fixture, const char *name, guint disk, guint64 offset, guint64 len,
              guint8 pattern)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fixture, name);
  g_autofree char *io = g_strdup_printf("write -P 0x%02x %" G_GUINT64_FORMAT " %" G_GUINT64_FORMAT,
                                        pattern, offset, len);
  if (virDomainIsActive(dom) == 1) {
    g_autofree char *write = g_strdup_printf(
        "qemu-io -d /machine/peripheral/virtio-disk%u/virtio-backend \"%s\"", disk, io);
    g_autofree char *flush = g_strdup_printf(
        "qemu-io -d /machine/peripheral/virtio-disk%u/virtio-backend \"flush\"", disk);
    monitor(dom, write);
    monitor(dom, flush);
    return;
  }
  g_autofree char *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(disk, <, parsed->disks->len);
  DomXmlDisk *d = g_ptr_array_index(parsed->disks, disk);
  const char *argv[] = {"qemu-io", "-f", chain_format_name(d->format), "-c", io, d->source, NULL};
  g_autofree char *out = NULL;
  run(argv, &out);
}

/* ------------------------------------------------------------------ */
/* The invariant                                                       */

static char *
checksum(const BackendDisk *disk)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = chain_open(disk->image_path, disk->format, disk->backing_formats, NULL,
                                      &error);
  if (!chain)
    g_error("%s: %s", disk->image_path, error->message);
  g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
  guint64 size = chain_virtual_size(chain);
  g_autofree guchar *buf = g_malloc(1 << 20);
  for (guint64 off = 0; off < size;) {
    gssize n = chain_read(chain, buf, 1 << 20, off);
    if (n <= 0)
      g_error("%s: read at %" G_GUINT64_FORMAT ": %zd", disk->image_path, off, n);
    g_checksum_update(sum, buf, n);
    off += (guint64)n;
  }
  return g_strdup(g_checksum_get_string(sum));
}

/* QEMU keeps qcow2 metadata in its caches: flush them so that the files
 * read from outside are what the guest sees. */
static void
flush_running(Fixture *fixture, const char *name)
{
  g_autoptr(BackendVirDomain) dom = fixture_domain(fixture, name);
  if (virDomainIsActive(dom) != 1)
    return;
  g_autofree char *xml = virDomainGetXMLDesc(dom, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, &error);
  g_assert_no_error(error);
  for (guint i = 0; i < parsed->disks->len; i++) {
    g_autofree char *flush = g_strdup_printf(
        "qemu-io -d /machine/peripheral/virtio-disk%u/virtio-backend \"flush\"", i);
    monitor(dom, flush);
  }
}

static BackendDomain *
model_domain(Fixture *fixture, BackendModel **model, const char *name)
{
  g_autoptr(GError) error = NULL;
  flush_running(fixture, name);
  g_assert_true(backend_refresh(fixture->backend, &error));
  *model = backend_get_model(fixture->backend);
  BackendDomain *domain = backend_model_find_domain(*model, name);
  g_assert_nonnull(domain);
  return domain;
}

GHashTable *
fixture_picture(Fixture *fixture, const char *name)
{
  g_autoptr(BackendModel) model = NULL;
  BackendDomain *domain = model_domain(fixture, &model, name);
  GHashTable *picture = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  for (guint i = 0; i < domain->disks->len; i++) {
    BackendDisk *disk = g_ptr_array_index(domain->disks, i);
    g_hash_table_insert(picture, g_strdup_printf("@now/%s", disk->target), checksum(disk));
  }
  for (guint s = 0; s < domain->snapshots->len; s++) {
    BackendSnapshot *snapshot = g_ptr_array_index(domain->snapshots, s);
    for (guint i = 0; i < snapshot->disks->len; i++) {
      BackendDisk *disk = g_ptr_array_index(snapshot->disks, i);
      g_hash_table_insert(picture, g_strdup_printf("%s/%s", snapshot->name, disk->target),
                          checksum(disk));
    }
  }
  return picture;
}

static GPtrArray *
picture_keys(GHashTable *picture, const char *prefix)
{
  g_autofree char *p = g_strconcat(prefix, "/", NULL);
  GPtrArray *keys = g_ptr_array_new_with_free_func(g_free);
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, picture);
  while (g_hash_table_iter_next(&iter, &key, NULL))
    if (g_str_has_prefix(key, p))
      g_ptr_array_add(keys, g_strdup(key));
  return keys;
}

void
fixture_picture_rename(GHashTable *picture, const char *from, const char *to)
{
  g_autoptr(GPtrArray) keys = picture_keys(picture, from);
  for (guint i = 0; i < keys->len; i++) {
    g_autofree char *key = NULL;
    char *value = NULL;
    g_hash_table_steal_extended(picture, keys->pdata[i], (gpointer *)&key, (gpointer *)&value);
    g_hash_table_insert(picture, g_strdup_printf("%s/%s", to, key + strlen(from) + 1), value);
  }
}

void
fixture_picture_copy(GHashTable *picture, const char *from, const char *to)
{
  g_autoptr(GPtrArray) keys = picture_keys(picture, from);
  for (guint i = 0; i < keys->len; i++) {
    const char *key = keys->pdata[i];
    g_hash_table_insert(picture, g_strdup_printf("%s/%s", to, key + strlen(from) + 1),
                        g_strdup(g_hash_table_lookup(picture, key)));
  }
}

void
fixture_picture_drop(GHashTable *picture, const char *prefix)
{
  g_autoptr(GPtrArray) keys = picture_keys(picture, prefix);
  for (guint i = 0; i < keys->len; i++)
    g_hash_table_remove(picture, keys->pdata[i]);
}

/* Adds every layer of the chain from top to reachable (canonical paths). */
static Chain *
reach(GHashTable *reachable, const char *top, ChainFormat format)
{
  g_autoptr(GError) error = NULL;
  Chain *chain = chain_open(top, format, NULL, NULL, &error);
  if (!chain)
    g_error("%s: %s", top, error->message);
  for (guint i = 0; i < chain_depth(chain); i++) {
    ChainLayer *layer = chain_get_layer(chain, i);
    g_hash_table_insert(reachable, g_strdup(chain_layer_path(layer)),
                        GINT_TO_POINTER(chain_layer_format(layer)));
  }
  return chain;
}

void
fixture_check(Fixture *fixture, const char *name, GHashTable *expect)
{
  /* Every point in time and the present read as expected. */
  g_autoptr(GHashTable) now = fixture_picture(fixture, name);
  GHashTableIter iter;
  gpointer key, value;
  g_hash_table_iter_init(&iter, expect);
  while (g_hash_table_iter_next(&iter, &key, &value)) {
    const char *got = g_hash_table_lookup(now, key);
    if (g_strcmp0(got, value) != 0)
      g_error("domain %s: %s reads %s, expected %s", name, (char *)key, got ? got : "(missing)",
              (char *)value);
  }
  g_hash_table_iter_init(&iter, now);
  while (g_hash_table_iter_next(&iter, &key, &value))
    if (!g_hash_table_contains(expect, key))
      g_error("domain %s: unexpected point %s", name, (char *)key);

  /* Metadata and files agree; nothing is left that no chain uses. */
  g_autoptr(BackendModel) model = NULL;
  BackendDomain *domain = model_domain(fixture, &model, name);
  g_autoptr(GHashTable) reachable = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  for (guint i = 0; i < domain->disks->len; i++) {
    BackendDisk *disk = g_ptr_array_index(domain->disks, i);
    g_autoptr(Chain) chain = reach(reachable, disk->image_path, disk->format);
  }
  for (guint s = 0; s < domain->snapshots->len; s++) {
    BackendSnapshot *snapshot = g_ptr_array_index(domain->snapshots, s);
    g_autoptr(GError) error = NULL;
    g_autoptr(DomXmlSnapshot) parsed = domxml_parse_snapshot(snapshot->xml, &error);
    g_assert_no_error(error);
    guint external = 0;
    for (guint j = 0; j < parsed->disks->len; j++) {
      DomXmlSnapshotDisk *sd = g_ptr_array_index(parsed->disks, j);
      if (sd->mode == DOMXML_SNAPSHOT_DISK_NO)
        continue;
      g_assert_cmpint(sd->mode, ==, DOMXML_SNAPSHOT_DISK_EXTERNAL);
      external++;
      g_autoptr(Chain) chain = reach(reachable, sd->source, sd->format);
      g_assert_cmpuint(chain_depth(chain), >=, 2);
      gboolean found = FALSE;
      for (guint k = 0; k < snapshot->disks->len; k++) {
        BackendDisk *point = g_ptr_array_index(snapshot->disks, k);
        if (strcmp(point->target, sd->name) == 0) {
          found = TRUE;
          if (!backend_path_same(point->image_path, chain_layer_path(chain_get_layer(chain, 1))))
            g_error("snapshot %s disk %s: overlay %s backs onto %s, point is %s", snapshot->name,
                    sd->name, sd->source, chain_layer_path(chain_get_layer(chain, 1)),
                    point->image_path);
        }
      }
      g_assert_true(found);
    }
    g_assert_cmpuint(snapshot->disks->len, ==, external);
  }

  g_autofree char *dir = g_build_filename(fixture->images, name, NULL);
  g_autoptr(GDir) listing = g_dir_open(dir, 0, NULL);
  const char *entry;
  while ((entry = g_dir_read_name(listing))) {
    g_autofree char *path = g_build_filename(dir, entry, NULL);
    g_autofree char *canonical = backend_exec_canonical(path);
    gpointer format;
    if (!g_hash_table_lookup_extended(reachable, canonical, NULL, &format))
      g_error("domain %s: %s is left over: no chain uses it", name, path);
    if (GPOINTER_TO_INT(format) != CHAIN_FORMAT_QCOW2)
      continue;
    const char *argv[] = {"qemu-img", "check", "-q", "-U", "-f", "qcow2", path, NULL};
    g_autofree char *out = NULL;
    run(argv, &out);
  }

  /* The chain the domain definition lists (if any) is the chain on disk. */
  {
    g_autoptr(BackendVirDomain) dom = fixture_domain(fixture, name);
    g_autofree char *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    g_autoptr(GError) error = NULL;
    g_autoptr(DomXmlDomain) parsed = domxml_parse_domain(xml, &error);
    g_assert_no_error(error);
    for (guint i = 0; i < parsed->disks->len; i++) {
      DomXmlDisk *disk = g_ptr_array_index(parsed->disks, i);
      if (!disk->backing)
        continue;
      g_autoptr(Chain) chain = chain_open(disk->source, disk->format, NULL, NULL, &error);
      g_assert_no_error(error);
      for (guint j = 0; j < disk->backing->len; j++) {
        DomXmlLayer *layer = g_ptr_array_index(disk->backing, j);
        if (j + 1 >= chain_depth(chain) ||
            !backend_path_same(layer->path, chain_layer_path(chain_get_layer(chain, j + 1))))
          g_error("domain %s disk %s: the inactive XML lists %s as layer %u of the chain, which "
                  "is not what the images say", name, disk->target, layer->path, j + 1);
      }
    }
  }

  g_autofree char *journals = g_build_filename(fixture->state, "journal", NULL);
  g_autoptr(GDir) jlisting = g_dir_open(journals, 0, NULL);
  while (jlisting && (entry = g_dir_read_name(jlisting)))
    g_error("journal %s/%s is left over", journals, entry);
}
