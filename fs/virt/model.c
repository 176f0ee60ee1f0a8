/* model.c: the BackendModel, built from what model-read.c read.
 *
 * backend_model_build() parses that material, collects the image policy
 * from it (policy.c), and resolves each snapshot's point image
 * P(S) = backing(O(S)): from libvirt's own <backingStore> when O(S) is in
 * the running chain, otherwise from the overlay's header through the chain
 * walk under that policy.  fs/ never parses qcow2 itself.  The model's
 * objects, their lookups and the image-policy check of a disk's chain live
 * here too.
 *
 * Thread model: built from the backend's worker (or a backend_refresh()
 * caller) under Backend.build_lock; the result is immutable once published.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend-private.h"
#include "policy.h"

/* ------------------------------------------------------------------ */
/* Model objects                                                       */

BackendDisk *
backend_disk_copy(const BackendDisk *disk)
{
  BackendDisk *copy = g_new0(BackendDisk, 1);
  copy->target = g_strdup(disk->target);
  copy->image_path = g_strdup(disk->image_path);
  copy->format = disk->format;
  if (disk->backing_formats) {
    gsize n = 0;
    while (disk->backing_formats[n] != CHAIN_FORMAT_UNKNOWN)
      n++;
    copy->backing_formats = g_memdup2(disk->backing_formats, (n + 1) * sizeof(ChainFormat));
  }
  copy->backing_paths = g_strdupv(disk->backing_paths);
  return copy;
}

void
backend_disk_free(BackendDisk *disk)
{
  if (!disk)
    return;
  g_free(disk->target);
  g_free(disk->image_path);
  g_free(disk->backing_formats);
  g_strfreev(disk->backing_paths);
  g_free(disk);
}

gboolean
backend_disk_check_layers(const BackendDisk *disk, const char *const *layer_paths, GError **error)
{
  if (!disk->backing_paths)
    return TRUE;
  guint n = g_strv_length(disk->backing_paths);
  guint depth = g_strv_length((char **)layer_paths);
  if (depth != n + 1) {
    g_set_error(error, CHAIN_ERROR, EIO, "%s: the headers name %u layers below it, libvirt "
                "reports %u", disk->image_path, depth - 1, n);
    return FALSE;
  }
  for (guint i = 0; i < n; i++) {
    const char *read = layer_paths[i + 1];
    if (!backend_path_same(read, disk->backing_paths[i])) {
      g_set_error(error, CHAIN_ERROR, EIO, "%s: layer %u is %s in the headers, %s for libvirt",
                  disk->image_path, i + 1, read, disk->backing_paths[i]);
      return FALSE;
    }
  }
  return TRUE;
}

gboolean
backend_disk_check_chain(const BackendDisk *disk, Chain *chain, GError **error)
{
  if (!disk->backing_paths)
    return TRUE;
  g_autofree const char **paths = g_new0(const char *, chain_depth(chain) + 1);
  for (guint i = 0; i < chain_depth(chain); i++)
    paths[i] = chain_layer_path(chain_get_layer(chain, i));
  return backend_disk_check_layers(disk, paths, error);
}

/* The paths of layers[from..] (libvirt's whole chain: the caller checks
 * that libvirt ended it with an empty <backingStore/>). */
static char **
layer_paths(GPtrArray *layers, guint from)
{
  if (!layers)
    return NULL;
  GStrvBuilder *builder = g_strv_builder_new();
  for (guint i = from; i < layers->len; i++)
    g_strv_builder_add(builder, ((DomXmlLayer *)g_ptr_array_index(layers, i))->path);
  char **paths = g_strv_builder_end(builder);
  g_strv_builder_unref(builder);
  return paths;
}

static void
snapshot_free(BackendSnapshot *snapshot)
{
  g_free(snapshot->name);
  g_free(snapshot->parent);
  g_free(snapshot->xml);
  g_ptr_array_unref(snapshot->disks);
  g_free(snapshot);
}

static void
domain_free(BackendDomain *domain)
{
  g_free(domain->name);
  g_free(domain->uuid);
  g_ptr_array_unref(domain->disks);
  g_ptr_array_unref(domain->snapshots);
  g_free(domain);
}

BackendModel *
backend_model_new_empty(void)
{
  BackendModel *model = g_new0(BackendModel, 1);
  model->ref_count = 1;
  model->domains = g_ptr_array_new_with_free_func((GDestroyNotify)domain_free);
  g_autoptr(BackendPlaces) none = backend_places_new();
  backend_places_apply(none, model);
  return model;
}

BackendModel *
backend_model_ref(BackendModel *model)
{
  g_atomic_int_inc(&model->ref_count);
  return model;
}

void
backend_model_unref(BackendModel *model)
{
  if (!model || !g_atomic_int_dec_and_test(&model->ref_count))
    return;
  g_ptr_array_unref(model->domains);
  g_strfreev(model->image_dirs);
  g_strfreev(model->image_devices);
  g_free(model);
}

BackendDomain *
backend_model_find_domain(BackendModel *model, const char *name)
{
  for (guint i = 0; i < model->domains->len; i++) {
    BackendDomain *domain = g_ptr_array_index(model->domains, i);
    if (strcmp(domain->name, name) == 0)
      return domain;
  }
  return NULL;
}

BackendSnapshot *
backend_domain_find_snapshot(BackendDomain *domain, const char *name)
{
  for (guint i = 0; i < domain->snapshots->len; i++) {
    BackendSnapshot *snapshot = g_ptr_array_index(domain->snapshots, i);
    if (strcmp(snapshot->name, name) == 0)
      return snapshot;
  }
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Paths                                                               */

gboolean
backend_path_same(const char *a, const char *b)
{
  if (!a || !b)
    return FALSE;
  if (strcmp(a, b) == 0)
    return TRUE;
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

/* ------------------------------------------------------------------ */
/* Building                                                            */

static void
log_once(GHashTable *logged, const char *domain, const char *target, const char *reason)
{
  g_autofree char *key = g_strdup_printf("%s/%s: %s", domain, target ? target : "?", reason);
  if (g_hash_table_contains(logged, key))
    return;
  g_message("domain %s: disk %s left out: %s", domain, target ? target : "(no target)", reason);
  g_hash_table_add(logged, g_steal_pointer(&key));
}

ChainFormat *
backend_layer_formats(GPtrArray *layers, guint from)
{
  if (!layers || from >= layers->len)
    return NULL;
  ChainFormat *formats = g_new0(ChainFormat, layers->len - from + 1);
  for (guint i = from; i < layers->len; i++) {
    DomXmlLayer *layer = g_ptr_array_index(layers, i);
    if (layer->format == CHAIN_FORMAT_UNKNOWN)
      break;
    formats[i - from] = layer->format;
  }
  return formats;
}

static DomXmlDisk *
find_domain_disk(DomXmlDomain *domain, const char *name)
{
  DomXmlDisk *disk = domxml_domain_find_disk(domain, name);
  for (guint i = 0; !disk && i < domain->disks->len; i++) {
    DomXmlDisk *d = g_ptr_array_index(domain->disks, i);
    if (backend_path_same(d->source, name))
      disk = d;
  }
  return disk;
}

/* Records a point image that could not be found.  While libvirt creates
 * a snapshot of a running domain, its metadata shows before the overlay
 * exists; the caller decides whether this is such a moment (refresh()
 * waits a little) or lasting (then it logs the message). */
static void
add_unresolved(GHashTable *unresolved, const char *domain, const char *snapshot,
               const char *target, const char *reason)
{
  g_hash_table_insert(unresolved, g_strdup_printf("%s/%s/%s", domain, snapshot, target),
                      g_strdup_printf("domain %s: disk %s left out: snapshot %s: %s", domain,
                                      target, snapshot, reason));
}

/* P(S) for one disk of a snapshot; NULL (logged, or added to unresolved)
 * when it cannot be known. */
static BackendDisk *
resolve_point(DomXmlDomain *domain, const char *snapshot, DomXmlSnapshotDisk *sdisk,
              const ChainPolicy *policy, GHashTable *logged, GHashTable *unresolved)
{
  DomXmlDisk *disk = find_domain_disk(domain, sdisk->name);
  const char *target = disk ? disk->target : sdisk->name;
  g_autofree char *where = g_strdup_printf("snapshot %s", snapshot);

  if (sdisk->mode != DOMXML_SNAPSHOT_DISK_EXTERNAL || !sdisk->source) {
    g_autofree char *reason = g_strdup_printf(
        "%s: %s", where,
        sdisk->mode == DOMXML_SNAPSHOT_DISK_INTERNAL ? "internal snapshot"
        : sdisk->mode == DOMXML_SNAPSHOT_DISK_NO     ? "disk not in the snapshot"
                                                     : "external snapshot without a file");
    if (sdisk->mode != DOMXML_SNAPSHOT_DISK_NO || disk)
      log_once(logged, domain->name, target, reason);
    return NULL;
  }

  g_autoptr(BackendDisk) point = g_new0(BackendDisk, 1);
  point->target = g_strdup(target);
  const char *overlay = sdisk->source;

  /* O(S) in the chain libvirt reports: the layer below it is P(S). */
  if (disk && disk->backing) {
    gint at = backend_path_same(disk->source, overlay) ? 0 : -1;
    for (guint i = 0; at < 0 && i < disk->backing->len; i++) {
      DomXmlLayer *layer = g_ptr_array_index(disk->backing, i);
      if (backend_path_same(layer->path, overlay))
        at = (gint)i + 1;
    }
    if (at >= 0 && (guint)at < disk->backing->len) {
      DomXmlLayer *below = g_ptr_array_index(disk->backing, at);
      if (below->format != CHAIN_FORMAT_UNKNOWN) {
        point->image_path = g_strdup(below->path);
        point->format = below->format;
        point->backing_formats = backend_layer_formats(disk->backing, (guint)at + 1);
        if (disk->backing_complete)
          point->backing_paths = layer_paths(disk->backing, (guint)at + 1);
        return g_steal_pointer(&point);
      }
    }
  }

  /* Otherwise ask the overlay's header: the walk checks the overlay and
   * names what lies below it without opening it (the reader checks P(S)
   * and its chain under the same policy: one that fails reads as EIO). */
  g_autoptr(GError) error = NULL;
  g_auto(ChainWalk) walk = {0};
  if (!backend_walk(policy, overlay, sdisk->format, NULL, 1, &walk, &error) || !walk.rest) {
    g_autofree char *reason =
        error ? g_strdup(error->message) : g_strdup_printf("overlay %s has no backing file", overlay);
    add_unresolved(unresolved, domain->name, snapshot, target, reason);
    return NULL;
  }
  point->image_path = g_canonicalize_filename(walk.rest, "/");
  point->format = walk.rest_format;
  return g_steal_pointer(&point);
}

static gint
compare_snapshots(gconstpointer a, gconstpointer b)
{
  const BackendSnapshot *x = *(BackendSnapshot *const *)a, *y = *(BackendSnapshot *const *)b;
  if (x->creation_time != y->creation_time)
    return x->creation_time < y->creation_time ? -1 : 1;
  return strcmp(x->name, y->name);
}

static gint
compare_disks(gconstpointer a, gconstpointer b)
{
  const BackendDisk *x = *(BackendDisk *const *)a, *y = *(BackendDisk *const *)b;
  return strcmp(x->target, y->target);
}

static gint
compare_domains(gconstpointer a, gconstpointer b)
{
  const BackendDomain *x = *(BackendDomain *const *)a, *y = *(BackendDomain *const *)b;
  return strcmp(x->name, y->name);
}

/* A domain of raw, parsed: what the first pass of a build makes. */
typedef struct {
  const BackendRawDomain *raw;
  DomXmlDomain *domain;
  GPtrArray *snapshots;     /* of DomXmlSnapshot, those that parse */
  GPtrArray *snapshot_xmls; /* their XML (borrowed from raw), same order */
} ParsedDomain;

static void
parsed_domain_free(ParsedDomain *parsed)
{
  domxml_domain_free(parsed->domain);
  g_ptr_array_unref(parsed->snapshots);
  g_ptr_array_unref(parsed->snapshot_xmls);
  g_free(parsed);
}

/* The first pass over one domain: parses it and its snapshots and adds
 * the places its images are in to the policy.  NULL (logged once) when
 * the domain XML does not parse. */
static ParsedDomain *
parse_domain(const BackendRawDomain *raw, BackendPlaces *places, GHashTable *logged)
{
  g_autoptr(GError) error = NULL;
  DomXmlDomain *domain = domxml_parse_domain(raw->xml, &error);
  if (!domain) {
    g_autofree char *key = g_strdup_printf("%s: %s", raw->name, error->message);
    if (g_hash_table_add(logged, g_steal_pointer(&key)))
      g_warning("domain %s left out: %s", raw->name, error->message);
    return NULL;
  }
  ParsedDomain *parsed = g_new0(ParsedDomain, 1);
  parsed->raw = raw;
  parsed->domain = domain;
  parsed->snapshots = g_ptr_array_new_with_free_func((GDestroyNotify)domxml_snapshot_free);
  parsed->snapshot_xmls = g_ptr_array_new();

  /* Every image libvirt names, live or in the inactive XML, is in a place
   * the policy allows.  But the inactive XML's chain is the one libvirt
   * saw when it last looked; only the live one is authoritative for P(S),
   * so a shut-off domain's chains are read from the headers. */
  for (guint i = 0; i < domain->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(domain->disks, i);
    backend_places_add_image(places, disk->source);
    for (guint j = 0; disk->backing && j < disk->backing->len; j++)
      backend_places_add_image(places, ((DomXmlLayer *)g_ptr_array_index(disk->backing, j))->path);
  }
  if (!raw->running)
    domxml_domain_forget_backing(domain);

  for (guint i = 0; i < raw->snapshot_xmls->len; i++) {
    const char *xml = g_ptr_array_index(raw->snapshot_xmls, i);
    g_autoptr(GError) serror = NULL;
    DomXmlSnapshot *snapshot = domxml_parse_snapshot(xml, &serror);
    if (!snapshot) {
      g_autofree char *key = g_strdup_printf("%s: %s", domain->name, serror->message);
      if (g_hash_table_add(logged, g_steal_pointer(&key)))
        g_warning("domain %s: a snapshot is left out: %s", domain->name, serror->message);
      continue;
    }
    /* Only what libvirt names widens the policy: the overlay.  P(S) of a
     * shut-off domain comes from the overlay's header, which anyone who
     * can write an image controls (a backing name /etc/shadow would
     * otherwise allow /etc); a running domain's P(S) is in the live
     * chain, whose places are added above. */
    for (guint j = 0; j < snapshot->disks->len; j++) {
      DomXmlSnapshotDisk *sdisk = g_ptr_array_index(snapshot->disks, j);
      if (sdisk->mode == DOMXML_SNAPSHOT_DISK_EXTERNAL)
        backend_places_add_image(places, sdisk->source);
    }
    g_ptr_array_add(parsed->snapshots, snapshot);
    g_ptr_array_add(parsed->snapshot_xmls, (gpointer)xml);
  }
  return parsed;
}

/* The second pass: the model's domain, under the finished policy. */
static BackendDomain *
build_domain(const ParsedDomain *parsed_domain, const ChainPolicy *policy, GHashTable *logged,
             GHashTable *unresolved)
{
  const BackendRawDomain *raw = parsed_domain->raw;
  DomXmlDomain *parsed = parsed_domain->domain;
  BackendDomain *domain = g_new0(BackendDomain, 1);
  domain->name = g_strdup(parsed->name);
  domain->uuid = g_strdup(parsed->uuid);
  domain->running = raw->running;
  domain->disks = g_ptr_array_new_with_free_func((GDestroyNotify)backend_disk_free);
  domain->snapshots = g_ptr_array_new_with_free_func((GDestroyNotify)snapshot_free);

  for (guint i = 0; i < parsed->skipped->len; i++) {
    DomXmlSkipped *skipped = g_ptr_array_index(parsed->skipped, i);
    log_once(logged, parsed->name, skipped->target, skipped->reason);
  }
  for (guint i = 0; i < parsed->disks->len; i++) {
    DomXmlDisk *disk = g_ptr_array_index(parsed->disks, i);
    BackendDisk *out = g_new0(BackendDisk, 1);
    out->target = g_strdup(disk->target);
    out->image_path = g_strdup(disk->source);
    out->format = disk->format;
    out->backing_formats = backend_layer_formats(disk->backing, 0);
    if (disk->backing_complete) /* never when shut off: forgotten in parse_domain() */
      out->backing_paths = layer_paths(disk->backing, 0);
    g_ptr_array_add(domain->disks, out);
  }
  g_ptr_array_sort(domain->disks, compare_disks);

  for (guint i = 0; i < parsed_domain->snapshots->len; i++) {
    DomXmlSnapshot *parsed_snap = g_ptr_array_index(parsed_domain->snapshots, i);
    BackendSnapshot *snapshot = g_new0(BackendSnapshot, 1);
    snapshot->name = g_strdup(parsed_snap->name);
    snapshot->parent = g_strdup(parsed_snap->parent);
    snapshot->creation_time = parsed_snap->creation_time;
    snapshot->current = g_strcmp0(raw->current, parsed_snap->name) == 0;
    snapshot->xml = g_strdup(g_ptr_array_index(parsed_domain->snapshot_xmls, i));
    snapshot->disks = g_ptr_array_new_with_free_func((GDestroyNotify)backend_disk_free);
    for (guint j = 0; j < parsed_snap->disks->len; j++) {
      DomXmlSnapshotDisk *sdisk = g_ptr_array_index(parsed_snap->disks, j);
      BackendDisk *point = resolve_point(parsed, parsed_snap->name, sdisk, policy, logged,
                                         unresolved);
      if (point)
        g_ptr_array_add(snapshot->disks, point);
    }
    g_ptr_array_sort(snapshot->disks, compare_disks);
    g_ptr_array_add(domain->snapshots, snapshot);
  }
  g_ptr_array_sort(domain->snapshots, compare_snapshots);
  return domain;
}

BackendModel *
backend_model_build(const BackendRaw *raw, const char *const *extra_dirs,
                    const char *const *extra_images, GHashTable *logged, GHashTable *unresolved)
{
  BackendModel *model = backend_model_new_empty();
  g_autoptr(BackendPlaces) places = backend_places_new();

  g_autoptr(GPtrArray) parsed = g_ptr_array_new_with_free_func((GDestroyNotify)parsed_domain_free);
  for (guint i = 0; i < raw->domains->len; i++) {
    ParsedDomain *domain = parse_domain(g_ptr_array_index(raw->domains, i), places, logged);
    if (domain)
      g_ptr_array_add(parsed, domain);
  }
  for (guint i = 0; i < raw->pool_xmls->len; i++) {
    const char *xml = g_ptr_array_index(raw->pool_xmls, i);
    g_autoptr(GError) error = NULL;
    g_autofree char *target = domxml_parse_pool_target(xml, &error);
    g_auto(GStrv) devices = error ? NULL : domxml_parse_pool_devices(xml, &error);
    if (error)
      g_debug("storage pool XML: %s", error->message);
    backend_places_add_dir(places, target);
    for (char **d = devices; d && *d; d++)
      backend_places_add_device(places, *d);
  }
  for (const char *const *d = extra_dirs; d && *d; d++)
    backend_places_add_dir(places, *d);
  for (const char *const *p = extra_images; p && *p; p++)
    backend_places_add_image(places, *p);
  backend_places_apply(places, model);

  for (guint i = 0; i < parsed->len; i++)
    g_ptr_array_add(model->domains, build_domain(g_ptr_array_index(parsed, i), &model->policy,
                                                 logged, unresolved));
  g_ptr_array_sort(model->domains, compare_domains);
  return model;
}
