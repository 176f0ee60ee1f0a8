/* state.c: freeze records in the state directory.
 *
 * A record says "domain D has temporary overlays on top of these images".
 * It is written, and made durable (file fsync'd, renamed into place,
 * directory fsync'd), before the first overlay is created, and removed
 * (directory fsync'd) only after every overlay was committed back and
 * deleted.  So after a crash, each record names overlays that may exist and
 * may hold guest writes; snap_freeze_repair() (thaw.c) finishes them.
 *
 * Layout: STATE_DIR/freeze/<uuid>-<microseconds>.freeze, one per freeze
 * (a domain can have two: a freeze whose thaw failed, and a later one
 * stacked on it), a GKeyFile:
 *   [freeze]       domain=, uuid=, created= (seconds since the epoch)
 *   [disk <target>] frozen=, format=, overlay=
 *
 * Thread model: called in the domain's turn (queue.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "snap-private.h"

static void
freeze_disk_free(SnapFreezeDisk *disk)
{
  g_free(disk->target);
  g_free(disk->frozen);
  g_free(disk->overlay);
  g_free(disk);
}

SnapFreezeRecord *
snap_freeze_record_new(const char *domain, const char *uuid)
{
  SnapFreezeRecord *record = g_new0(SnapFreezeRecord, 1);
  record->domain = g_strdup(domain);
  record->uuid = g_strdup(uuid);
  record->created = g_get_real_time() / G_USEC_PER_SEC;
  record->disks = g_ptr_array_new_with_free_func((GDestroyNotify)freeze_disk_free);
  return record;
}

void
snap_freeze_record_free(SnapFreezeRecord *record)
{
  if (!record)
    return;
  g_free(record->path);
  g_free(record->domain);
  g_free(record->uuid);
  g_ptr_array_unref(record->disks);
  g_free(record);
}

void
snap_freeze_record_add_disk(SnapFreezeRecord *record, const char *target,
                            const char *frozen, ChainFormat frozen_format, const char *overlay)
{
  SnapFreezeDisk *disk = g_new0(SnapFreezeDisk, 1);
  disk->target = g_strdup(target);
  disk->frozen = g_strdup(frozen);
  disk->frozen_format = frozen_format;
  disk->overlay = g_strdup(overlay);
  g_ptr_array_add(record->disks, disk);
}

gboolean
snap_state_sync_dir(const char *dir, GError **error)
{
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 || fsync(fd) < 0) {
    int err = errno;
    if (fd >= 0)
      close(fd);
    g_set_error(error, BACKEND_ERROR, err, "cannot sync directory %s: %s", dir, g_strerror(err));
    return FALSE;
  }
  close(fd);
  return TRUE;
}

/* CONSISTENT | DURABLE: glib writes a temporary file, fsyncs it and renames
 * it into place; the directory sync makes the rename itself durable. */
gboolean
snap_state_write_file(const char *path, const char *data, gsize length, GError **error)
{
  g_autofree char *dir = g_path_get_dirname(path);
  if (g_mkdir_with_parents(dir, 0700) < 0) {
    int err = errno;
    g_set_error(error, BACKEND_ERROR, err, "cannot create %s: %s", dir, g_strerror(err));
    return FALSE;
  }
  if (!g_file_set_contents_full(path, data, (gssize)length,
                                G_FILE_SET_CONTENTS_CONSISTENT | G_FILE_SET_CONTENTS_DURABLE,
                                0600, error))
    return FALSE;
  return snap_state_sync_dir(dir, error);
}

void
snap_state_remove_torn(const char *state_dir)
{
  const char *const subdirs[] = {"journal", "freeze"};
  for (guint i = 0; i < G_N_ELEMENTS(subdirs); i++) {
    g_autofree char *dir = g_build_filename(state_dir, subdirs[i], NULL);
    g_autoptr(GDir) listing = g_dir_open(dir, 0, NULL);
    const char *name;
    while (listing && (name = g_dir_read_name(listing))) {
      /* glib writes "<file>.XXXXXX" and renames it over <file>: a name
       * with a dot after the record's suffix was never renamed into
       * place, so what it describes never started. */
      const char *suffix = strstr(name, i == 0 ? ".plan." : ".freeze.");
      if (suffix == NULL)
        continue;
      g_autofree char *path = g_build_filename(dir, name, NULL);
      g_message("removing %s: a record whose write a crash cut short", path);
      if (unlink(path) < 0)
        g_warning("cannot remove %s: %s", path, g_strerror(errno));
    }
  }
}

gboolean
snap_state_remove_file(const char *path, GError **error)
{
  if (unlink(path) < 0 && errno != ENOENT) {
    int err = errno;
    g_set_error(error, BACKEND_ERROR, err, "cannot remove %s: %s", path, g_strerror(err));
    return FALSE;
  }
  g_autofree char *dir = g_path_get_dirname(path);
  return snap_state_sync_dir(dir, error);
}

static char *
records_dir(const char *state_dir)
{
  return g_build_filename(state_dir, "freeze", NULL);
}

gboolean
snap_freeze_record_write(SnapFreezeRecord *record, const char *state_dir, GError **error)
{
  g_autofree char *dir = records_dir(state_dir);
  g_autoptr(GKeyFile) file = g_key_file_new();
  g_key_file_set_string(file, "freeze", "domain", record->domain);
  g_key_file_set_string(file, "freeze", "uuid", record->uuid);
  g_key_file_set_int64(file, "freeze", "created", record->created);
  for (guint i = 0; i < record->disks->len; i++) {
    SnapFreezeDisk *disk = g_ptr_array_index(record->disks, i);
    g_autofree char *group = g_strdup_printf("disk %s", disk->target);
    g_key_file_set_string(file, group, "frozen", disk->frozen);
    g_key_file_set_string(file, group, "format", chain_format_name(disk->frozen_format));
    g_key_file_set_string(file, group, "overlay", disk->overlay);
  }
  gsize length;
  g_autofree char *data = g_key_file_to_data(file, &length, NULL);

  g_autofree char *name = g_strdup_printf("%s-%" G_GINT64_FORMAT ".freeze", record->uuid,
                                          g_get_real_time());
  g_autofree char *path = record->path ? g_strdup(record->path) : g_build_filename(dir, name, NULL);
  if (!snap_state_write_file(path, data, length, error))
    return FALSE;
  g_free(record->path);
  record->path = g_steal_pointer(&path);
  return TRUE;
}

gboolean
snap_freeze_record_remove(SnapFreezeRecord *record, GError **error)
{
  if (!record->path)
    return TRUE;
  if (!snap_state_remove_file(record->path, error))
    return FALSE;
  g_clear_pointer(&record->path, g_free);
  return TRUE;
}

static SnapFreezeRecord *
record_load(const char *path, GError **error)
{
  g_autoptr(GKeyFile) file = g_key_file_new();
  if (!g_key_file_load_from_file(file, path, G_KEY_FILE_NONE, error))
    return NULL;
  g_autofree char *domain = g_key_file_get_string(file, "freeze", "domain", error);
  if (!domain)
    return NULL;
  g_autofree char *uuid = g_key_file_get_string(file, "freeze", "uuid", error);
  if (!uuid)
    return NULL;
  g_autoptr(SnapFreezeRecord) record = snap_freeze_record_new(domain, uuid);
  record->created = g_key_file_get_int64(file, "freeze", "created", NULL);
  record->path = g_strdup(path);

  g_auto(GStrv) groups = g_key_file_get_groups(file, NULL);
  for (char **g = groups; *g; g++) {
    if (!g_str_has_prefix(*g, "disk "))
      continue;
    g_autofree char *frozen = g_key_file_get_string(file, *g, "frozen", error);
    g_autofree char *format = frozen ? g_key_file_get_string(file, *g, "format", error) : NULL;
    g_autofree char *overlay = format ? g_key_file_get_string(file, *g, "overlay", error) : NULL;
    if (!overlay)
      return NULL;
    snap_freeze_record_add_disk(record, *g + strlen("disk "), frozen,
                                chain_format_from_name(format), overlay);
  }
  return g_steal_pointer(&record);
}

GPtrArray *
snap_freeze_records_load(const char *state_dir, GError **error)
{
  g_autoptr(GPtrArray) records =
      g_ptr_array_new_with_free_func((GDestroyNotify)snap_freeze_record_free);
  g_autofree char *dir = records_dir(state_dir);
  g_autoptr(GError) local = NULL;
  g_autoptr(GDir) listing = g_dir_open(dir, 0, &local);
  if (!listing) {
    if (g_error_matches(local, G_FILE_ERROR, G_FILE_ERROR_NOENT))
      return g_steal_pointer(&records);
    g_propagate_error(error, g_steal_pointer(&local));
    return NULL;
  }
  const char *name;
  while ((name = g_dir_read_name(listing))) {
    if (!g_str_has_suffix(name, ".freeze"))
      continue;
    g_autofree char *path = g_build_filename(dir, name, NULL);
    g_autoptr(GError) bad = NULL;
    SnapFreezeRecord *record = record_load(path, &bad);
    if (record)
      g_ptr_array_add(records, record);
    else
      g_warning("freeze record %s is unreadable and left alone: %s", path, bad->message);
  }
  return g_steal_pointer(&records);
}
