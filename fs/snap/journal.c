/* journal.c: the plan journal, one file per domain: a plan is durable
 * before its first step, so that recovery can finish it after a crash.
 *
 * A plan is written to STATE_DIR/journal/<uuid>.plan before its first
 * step: written to a temporary file, fsync'd, renamed into place, and the
 * directory fsync'd, so the file either is complete or is not there.  After
 * each finished step one line "done N" is appended and fsync'd.  When the
 * plan is complete the file is removed (directory fsync'd).  A crash leaves
 * a complete header and a prefix of the done lines, possibly with a torn
 * last line, which the reader ignores: that step simply runs again, and
 * every step is idempotent (exec.h).
 *
 *   virtsnapfs-plan 1
 *   domain demo
 *   uuid 0b3d...
 *   op delete
 *   name s2
 *   new-name -            (RENAME only; "-" is none)
 *   discard 0
 *   now 1700000000
 *   hidden s2             ("-" is none)
 *   steps 3
 *   commit disk=vda ...   (plan_step_to_line, one per step)
 *   ...
 *   end
 *   done 1
 *   done 2
 *
 * Values are URI-escaped, so a name never holds a space or newline.
 * Thread model: a journal belongs to the operation running it, in the
 * domain's turn (queue.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "snap-private.h"

#define JOURNAL_MAGIC "virtsnapfs-plan 1"

SnapJournal *
snap_journal_new(const char *domain, const char *uuid, const PlanOp *op, const char *hidden,
                 GPtrArray *steps)
{
  SnapJournal *journal = g_new0(SnapJournal, 1);
  journal->domain = g_strdup(domain);
  journal->uuid = g_strdup(uuid);
  journal->op = op->kind;
  journal->name = g_strdup(op->name);
  journal->new_name = g_strdup(op->new_name);
  journal->discard = op->discard;
  journal->now = op->now;
  journal->hidden = g_strdup(hidden);
  journal->steps = g_ptr_array_ref(steps);
  journal->fd = -1;
  return journal;
}

void
snap_journal_free(SnapJournal *journal)
{
  if (!journal)
    return;
  if (journal->fd >= 0)
    close(journal->fd);
  g_free(journal->path);
  g_free(journal->domain);
  g_free(journal->uuid);
  g_free(journal->name);
  g_free(journal->new_name);
  g_free(journal->hidden);
  g_ptr_array_unref(journal->steps);
  g_free(journal);
}

void
snap_journal_get_op(const SnapJournal *journal, PlanOp *op)
{
  memset(op, 0, sizeof(*op));
  op->kind = journal->op;
  op->name = journal->name;
  op->new_name = journal->new_name;
  op->discard = journal->discard;
  op->now = journal->now;
}

static const char *const op_names[] = {
  [PLAN_OP_DELETE] = "delete",
  [PLAN_OP_RENAME] = "rename",
  [PLAN_OP_REVERT] = "revert",
};

char *
snap_op_title(const PlanOp *op)
{
  switch (op->kind) {
  case PLAN_OP_DELETE:
    return g_strdup_printf("delete %s", op->name);
  case PLAN_OP_RENAME:
    return g_strdup_printf("rename %s to %s", op->name, op->new_name);
  case PLAN_OP_REVERT:
    return g_strdup_printf("revert to %s", op->name);
  }
  return g_strdup(op->name);
}

static char *
escape(const char *value)
{
  return value ? g_uri_escape_string(value, NULL, FALSE) : g_strdup("-");
}

static char *
unescape(const char *value)
{
  return strcmp(value, "-") == 0 ? NULL : g_uri_unescape_string(value, NULL);
}

static char *
journal_dir(const char *state_dir)
{
  return g_build_filename(state_dir, "journal", NULL);
}

gboolean
snap_journal_write(SnapJournal *journal, const char *state_dir, GError **error)
{
  g_autofree char *dir = journal_dir(state_dir);
  g_autoptr(GString) text = g_string_new(JOURNAL_MAGIC "\n");
  g_autofree char *domain = escape(journal->domain);
  g_autofree char *name = escape(journal->name);
  g_autofree char *new_name = escape(journal->new_name);
  g_autofree char *hidden = escape(journal->hidden);
  g_string_append_printf(text, "domain %s\nuuid %s\nop %s\nname %s\nnew-name %s\n", domain,
                         journal->uuid, op_names[journal->op], name, new_name);
  g_string_append_printf(text, "discard %d\nnow %" G_GINT64_FORMAT "\nhidden %s\nsteps %u\n",
                         journal->discard ? 1 : 0, journal->now, hidden, journal->steps->len);
  for (guint i = 0; i < journal->steps->len; i++) {
    g_autofree char *line = plan_step_to_line(journal->steps->pdata[i]);
    g_string_append_printf(text, "%s\n", line);
  }
  g_string_append(text, "end\n");
  for (guint i = 1; i <= journal->done; i++)
    g_string_append_printf(text, "done %u\n", i);

  g_autofree char *file = g_strdup_printf("%s.plan", journal->uuid);
  g_autofree char *path = g_build_filename(dir, file, NULL);
  if (!snap_state_write_file(path, text->str, text->len, error))
    return FALSE;
  int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    g_set_error(error, BACKEND_ERROR, err, "cannot open %s: %s", path, g_strerror(err));
    return FALSE;
  }
  if (journal->fd >= 0)
    close(journal->fd);
  journal->fd = fd;
  g_free(journal->path);
  journal->path = g_steal_pointer(&path);
  return TRUE;
}

gboolean
snap_journal_step_done(SnapJournal *journal, GError **error)
{
  g_return_val_if_fail(journal->fd >= 0, FALSE);
  g_autofree char *line = g_strdup_printf("done %u\n", journal->done + 1);
  gsize len = strlen(line);
  if (write(journal->fd, line, len) != (gssize)len || fdatasync(journal->fd) < 0) {
    int err = errno ? errno : EIO;
    g_set_error(error, BACKEND_ERROR, err, "cannot record step %u in %s: %s", journal->done + 1,
                journal->path, g_strerror(err));
    return FALSE;
  }
  journal->done++;
  return TRUE;
}

gboolean
snap_journal_remove(SnapJournal *journal, GError **error)
{
  if (!journal->path)
    return TRUE;
  if (journal->fd >= 0) {
    close(journal->fd);
    journal->fd = -1;
  }
  if (!snap_state_remove_file(journal->path, error))
    return FALSE;
  g_clear_pointer(&journal->path, g_free);
  return TRUE;
}

/* ------------------------------------------------------------------ */
/* Reading                                                             */

static gboolean
expect(char **lines, guint *i, const char *key, const char **value, GError **error)
{
  const char *line = lines[*i];
  gsize n = strlen(key);
  if (!line || strncmp(line, key, n) != 0 || line[n] != ' ') {
    g_set_error(error, BACKEND_ERROR, EINVAL, "line %u: expected '%s'", *i + 1, key);
    return FALSE;
  }
  *value = line + n + 1;
  (*i)++;
  return TRUE;
}

static SnapJournal *
journal_parse(const char *path, const char *text, GError **error)
{
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  guint i = 0;
  if (!lines[0] || strcmp(lines[0], JOURNAL_MAGIC) != 0) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "not a plan journal");
    return NULL;
  }
  i = 1;
  const char *domain, *uuid, *op, *name, *new_name, *discard, *now, *hidden, *steps;
  if (!expect(lines, &i, "domain", &domain, error) || !expect(lines, &i, "uuid", &uuid, error) ||
      !expect(lines, &i, "op", &op, error) || !expect(lines, &i, "name", &name, error) ||
      !expect(lines, &i, "new-name", &new_name, error) ||
      !expect(lines, &i, "discard", &discard, error) || !expect(lines, &i, "now", &now, error) ||
      !expect(lines, &i, "hidden", &hidden, error) || !expect(lines, &i, "steps", &steps, error))
    return NULL;

  PlanOp plan_op = {0};
  gboolean known = FALSE;
  for (guint k = 0; k < G_N_ELEMENTS(op_names); k++) {
    if (strcmp(op, op_names[k]) == 0) {
      plan_op.kind = (PlanOpKind)k;
      known = TRUE;
    }
  }
  if (!known) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "unknown operation '%s'", op);
    return NULL;
  }
  g_autofree char *name_value = unescape(name);
  g_autofree char *new_name_value = unescape(new_name);
  g_autofree char *hidden_value = unescape(hidden);
  g_autofree char *domain_value = unescape(domain);
  plan_op.name = name_value;
  plan_op.new_name = new_name_value;
  plan_op.discard = strcmp(discard, "1") == 0;
  plan_op.now = g_ascii_strtoll(now, NULL, 10);
  guint64 n_steps = g_ascii_strtoull(steps, NULL, 10);
  if (!domain_value || !name_value || n_steps > 100000) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "bad header");
    return NULL;
  }

  g_autoptr(GPtrArray) parsed = g_ptr_array_new_with_free_func((GDestroyNotify)plan_step_free);
  for (guint64 k = 0; k < n_steps; k++, i++) {
    if (!lines[i]) {
      g_set_error(error, BACKEND_ERROR, EINVAL, "only %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                  " steps", k, n_steps);
      return NULL;
    }
    PlanStep *step = plan_step_from_line(lines[i], error);
    if (!step) {
      g_prefix_error(error, "line %u: ", i + 1);
      return NULL;
    }
    g_ptr_array_add(parsed, step);
  }
  if (!lines[i] || strcmp(lines[i], "end") != 0) {
    g_set_error(error, BACKEND_ERROR, EINVAL, "line %u: expected 'end'", i + 1);
    return NULL;
  }
  i++;

  SnapJournal *journal = snap_journal_new(domain_value, uuid, &plan_op, hidden_value, parsed);
  journal->path = g_strdup(path);
  /* "done N" lines in order; a torn last line is not a record. */
  for (; lines[i] && *lines[i]; i++) {
    g_autofree char *expected = g_strdup_printf("done %u", journal->done + 1);
    if (strcmp(lines[i], expected) != 0 || journal->done >= parsed->len) {
      if (lines[i + 1] && *lines[i + 1])
        g_warning("plan journal %s: unexpected line %u '%s' ignored", path, i + 1, lines[i]);
      break;
    }
    journal->done++;
  }
  return journal;
}

GPtrArray *
snap_journals_load(const char *state_dir, GError **error)
{
  g_autoptr(GPtrArray) journals =
      g_ptr_array_new_with_free_func((GDestroyNotify)snap_journal_free);
  g_autofree char *dir = journal_dir(state_dir);
  g_autoptr(GError) local = NULL;
  g_autoptr(GDir) listing = g_dir_open(dir, 0, &local);
  if (!listing) {
    if (g_error_matches(local, G_FILE_ERROR, G_FILE_ERROR_NOENT))
      return g_steal_pointer(&journals);
    g_propagate_error(error, g_steal_pointer(&local));
    return NULL;
  }
  const char *entry;
  while ((entry = g_dir_read_name(listing))) {
    g_autofree char *path = g_build_filename(dir, entry, NULL);
    if (!g_str_has_suffix(entry, ".plan"))
      continue;
    g_autofree char *text = NULL;
    g_autoptr(GError) bad = NULL;
    SnapJournal *journal = NULL;
    if (g_file_get_contents(path, &text, NULL, &bad))
      journal = journal_parse(path, text, &bad);
    if (journal)
      g_ptr_array_add(journals, journal);
    else
      g_warning("plan journal %s is unreadable and left alone: %s", path, bad->message);
  }
  return g_steal_pointer(&journals);
}
