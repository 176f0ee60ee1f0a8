/* invariant.c: see invariant.h. */
#include "invariant.h"
#include "policy.h"

#include <string.h>

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
    g_autofree char *qdev = fixture_virtio_qdev(i);
    g_autofree char *flush = g_strdup_printf("qemu-io -d %s \"flush\"", qdev);
    fixture_monitor(dom, flush);
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
    g_autofree char *canonical = backend_path_canonical(path);
    gpointer format;
    if (!g_hash_table_lookup_extended(reachable, canonical, NULL, &format))
      g_error("domain %s: %s is left over: no chain uses it", name, path);
    if (GPOINTER_TO_INT(format) != CHAIN_FORMAT_QCOW2)
      continue;
    const char *argv[] = {"qemu-img", "check", "-q", "-U", "-f", "qcow2", path, NULL};
    g_free(fixture_run(argv));
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

  g_autofree char *journals = g_build_filename(fixture->state_dir, "journal", NULL);
  g_autoptr(GDir) jlisting = g_dir_open(journals, 0, NULL);
  while (jlisting && (entry = g_dir_read_name(jlisting)))
    g_error("journal %s/%s is left over", journals, entry);
}
