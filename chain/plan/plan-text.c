/* plan-text.c: plan steps as journal lines, and back.
 *
 * One step is one line: its kind, then space-separated key=value fields in
 * a fixed order.  Values are percent-escaped (every byte outside
 * [A-Za-z0-9-._~/+,:@] becomes %XX), so a line holds no space, newline,
 * control or non-ASCII byte whatever the paths and names are.  A field
 * that is NULL is left out.  The parser accepts exactly what the writer
 * produces, and checks that each kind has the fields it needs, so a torn or
 * edited journal line is an error, never a half-filled step.
 *
 *   commit disk=vda image=/i/b.qcow2 format=qcow2 backing=/i/a.qcow2 backing-format=qcow2
 *   pull job=block disk=vda image=/i/c.qcow2 format=qcow2
 *   redefine-snapshot snapshot=s1 parent=s0 ctime=1700000000 current=1 overlay.vda=/i/b.qcow2 point.vda=/i/a.qcow2
 */
#include <errno.h>
#include <string.h>

#include "planner-private.h"

static const char *
format_to_text(ChainFormat format)
{
  switch (format) {
  case CHAIN_FORMAT_RAW:
    return "raw";
  case CHAIN_FORMAT_QCOW2:
    return "qcow2";
  default:
    return "unknown";
  }
}

static gboolean
format_from_text(const char *text, ChainFormat *format)
{
  if (strcmp(text, "raw") == 0)
    *format = CHAIN_FORMAT_RAW;
  else if (strcmp(text, "qcow2") == 0)
    *format = CHAIN_FORMAT_QCOW2;
  else if (strcmp(text, "unknown") == 0)
    *format = CHAIN_FORMAT_UNKNOWN;
  else
    return FALSE;
  return TRUE;
}

static gboolean
plain_byte(guchar c)
{
  return g_ascii_isalnum(c) || strchr("-._~/+,:@", c) != NULL;
}

static void
append_escaped(GString *out, const char *value)
{
  for (const guchar *p = (const guchar *)value; *p; p++) {
    if (plain_byte(*p))
      g_string_append_c(out, (char)*p);
    else
      g_string_append_printf(out, "%%%02X", *p);
  }
}

static void
append_field(GString *out, const char *key, const char *value)
{
  if (value == NULL)
    return;
  g_string_append_c(out, ' ');
  append_escaped(out, key);
  g_string_append_c(out, '=');
  append_escaped(out, value);
}

char *
plan_step_to_line(const PlanStep *step)
{
  const char *kind = plan_step_kind_name(step->kind);
  g_return_val_if_fail(kind != NULL, NULL);

  GString *out = g_string_new(kind);
  if (step->block_job)
    append_field(out, "job", "block");
  append_field(out, "disk", step->disk);
  append_field(out, "image", step->image);
  if (step->image != NULL)
    append_field(out, "format", format_to_text(step->format));
  append_field(out, "backing", step->backing);
  if (step->backing != NULL)
    append_field(out, "backing-format", format_to_text(step->backing_format));
  append_field(out, "snapshot", step->snapshot);

  const PlanSnapshot *def = step->definition;
  if (def != NULL) {
    g_autofree char *ctime = g_strdup_printf("%" G_GINT64_FORMAT, def->creation_time);
    /* The name is the step's snapshot field; written again only if it
     * differs, which the parser then refuses. */
    if (g_strcmp0(def->name, step->snapshot) != 0)
      append_field(out, "name", def->name);
    append_field(out, "parent", def->parent);
    append_field(out, "ctime", ctime);
    append_field(out, "current", def->current ? "1" : "0");
    for (guint i = 0; i < def->disks->len; i++) {
      const PlanSnapshotDisk *sd = def->disks->pdata[i];
      g_autofree char *okey = g_strconcat("overlay.", sd->target, NULL);
      g_autofree char *pkey = g_strconcat("point.", sd->target, NULL);
      append_field(out, okey, sd->overlay);
      append_field(out, pkey, sd->point);
    }
  }
  return g_string_free(out, FALSE);
}

static char *
unescape(const char *text, gsize len, GError **error)
{
  GString *out = g_string_sized_new(len);
  for (gsize i = 0; i < len; i++) {
    guchar c = (guchar)text[i];
    if (c == '%') {
      /* Only what append_escaped() writes: two upper-case hex digits
       * for a byte that needs them. */
      int hi = i + 2 < len && !g_ascii_islower(text[i + 1]) ? g_ascii_xdigit_value(text[i + 1]) : -1;
      int lo = i + 2 < len && !g_ascii_islower(text[i + 2]) ? g_ascii_xdigit_value(text[i + 2]) : -1;
      guchar byte = hi >= 0 && lo >= 0 ? (guchar)(hi << 4 | lo) : 0;
      if (byte == 0 || plain_byte(byte)) {
        g_set_error(error, PLANNER_ERROR, EINVAL, "bad escape at byte %zu of \"%.*s\"", i,
                    (int)len, text);
        g_string_free(out, TRUE);
        return NULL;
      }
      g_string_append_c(out, (char)byte);
      i += 2;
      continue;
    }
    if (!plain_byte(c)) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "byte 0x%02x may not appear unescaped", c);
      g_string_free(out, TRUE);
      return NULL;
    }
    g_string_append_c(out, (char)c);
  }
  return g_string_free(out, FALSE);
}

static gboolean
parse_int64(const char *text, gint64 *value)
{
  char *end = NULL;
  if (*text == '\0')
    return FALSE;
  errno = 0;
  gint64 v = g_ascii_strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0')
    return FALSE;
  *value = v;
  return TRUE;
}

/* Which fields a kind needs (R), may have (O) or must not have (-). */
typedef struct {
  char job, disk, image, backing, snapshot, definition;
} StepShape;

static const StepShape step_shapes[] = {
  [PLAN_STEP_COMMIT] = { 'O', 'R', 'R', 'R', '-', '-' },
  [PLAN_STEP_ACTIVE_COMMIT] = { 'O', 'R', 'R', 'R', '-', '-' },
  [PLAN_STEP_PULL] = { 'O', 'R', 'R', 'O', '-', '-' },
  [PLAN_STEP_REBASE_UNSAFE] = { '-', 'R', 'R', 'R', '-', '-' },
  [PLAN_STEP_CREATE_OVERLAY] = { '-', 'R', 'R', 'R', '-', '-' },
  [PLAN_STEP_SET_ACTIVE] = { '-', 'R', 'R', '-', '-', '-' },
  [PLAN_STEP_REDEFINE_SNAPSHOT] = { '-', '-', '-', '-', 'R', 'R' },
  [PLAN_STEP_DELETE_SNAPSHOT] = { '-', '-', '-', '-', 'R', '-' },
  [PLAN_STEP_SET_CURRENT] = { '-', '-', '-', '-', 'R', '-' },
  [PLAN_STEP_DELETE_FILE] = { '-', 'R', 'R', '-', '-', '-' },
};

static gboolean
check_shape(char rule, gboolean present, const char *field, const char *kind, GError **error)
{
  if (rule == 'R' && !present) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "%s step without %s", kind, field);
    return FALSE;
  }
  if (rule == '-' && present) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "%s step with %s", kind, field);
    return FALSE;
  }
  return TRUE;
}

/* One key=value token into step (def collects the definition). */
static gboolean
parse_field(PlanStep *step, PlanSnapshot **def, GHashTable *seen, const char *key,
            char *value, GError **error)
{
  if (!g_hash_table_add(seen, g_strdup(key))) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "field %s given twice", key);
    return FALSE;
  }

  ChainFormat format;
  gint64 number;
  if (strcmp(key, "job") == 0 && strcmp(value, "block") == 0) {
    step->block_job = TRUE;
  } else if (strcmp(key, "disk") == 0) {
    step->disk = g_strdup(value);
  } else if (strcmp(key, "image") == 0) {
    step->image = g_strdup(value);
  } else if (strcmp(key, "format") == 0 && format_from_text(value, &format)) {
    step->format = format;
  } else if (strcmp(key, "backing") == 0) {
    step->backing = g_strdup(value);
  } else if (strcmp(key, "backing-format") == 0 && format_from_text(value, &format)) {
    step->backing_format = format;
  } else if (strcmp(key, "snapshot") == 0) {
    step->snapshot = g_strdup(value);
  } else if (strcmp(key, "parent") == 0) {
    g_free((*def)->parent);
    (*def)->parent = g_strdup(value);
  } else if (strcmp(key, "ctime") == 0 && parse_int64(value, &number)) {
    (*def)->creation_time = number;
  } else if (strcmp(key, "current") == 0 && (strcmp(value, "0") == 0 || strcmp(value, "1") == 0)) {
    (*def)->current = value[0] == '1';
  } else if (g_str_has_prefix(key, "overlay.") && key[8] != '\0') {
    plan_snapshot_set_overlay(*def, key + 8, value);
  } else if (g_str_has_prefix(key, "point.") && key[6] != '\0') {
    PlanSnapshotDisk *sd = plan_snapshot_find_disk(*def, key + 6);
    if (sd == NULL) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "field %s before overlay.%s", key, key + 6);
      return FALSE;
    }
    g_free(sd->point);
    sd->point = g_strdup(value);
  } else {
    g_set_error(error, PLANNER_ERROR, EINVAL, "unknown field %s=%s", key, value);
    return FALSE;
  }
  return TRUE;
}

PlanStep *
plan_step_from_line(const char *line, GError **error)
{
  g_auto(GStrv) tokens = g_strsplit(line, " ", -1);
  if (tokens[0] == NULL || tokens[0][0] == '\0') {
    g_set_error(error, PLANNER_ERROR, EINVAL, "empty step line");
    return NULL;
  }

  PlanStepKind kind = 0;
  gboolean known = FALSE;
  for (guint k = 0; k < G_N_ELEMENTS(step_shapes); k++) {
    if (g_strcmp0(plan_step_kind_name(k), tokens[0]) == 0) {
      kind = k;
      known = TRUE;
    }
  }
  if (!known) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "unknown step kind \"%s\"", tokens[0]);
    return NULL;
  }

  g_autoptr(PlanStep) step = plan_step_new(kind);
  g_autoptr(PlanSnapshot) def = plan_snapshot_new(NULL, 0, NULL, FALSE);
  g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  gboolean has_definition = FALSE;

  for (guint i = 1; tokens[i] != NULL; i++) {
    const char *eq = strchr(tokens[i], '=');
    if (eq == NULL || eq == tokens[i]) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "field \"%s\" is not key=value", tokens[i]);
      return NULL;
    }
    g_autofree char *key = unescape(tokens[i], (gsize)(eq - tokens[i]), error);
    if (key == NULL)
      return NULL;
    g_autofree char *value = unescape(eq + 1, strlen(eq + 1), error);
    if (value == NULL)
      return NULL;
    if (strcmp(key, "name") == 0) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "a definition's name differs from its snapshot");
      return NULL;
    }
    if (strcmp(key, "parent") == 0 || strcmp(key, "ctime") == 0 || strcmp(key, "current") == 0 ||
        g_str_has_prefix(key, "overlay.") || g_str_has_prefix(key, "point."))
      has_definition = TRUE;
    if (!parse_field(step, &def, seen, key, value, error))
      return NULL;
  }

  const StepShape *shape = &step_shapes[kind];
  const char *name = tokens[0];
  if (!check_shape(shape->job, step->block_job, "job", name, error) ||
      !check_shape(shape->disk, step->disk != NULL, "disk", name, error) ||
      !check_shape(shape->image, step->image != NULL, "image", name, error) ||
      !check_shape(shape->backing, step->backing != NULL, "backing", name, error) ||
      !check_shape(shape->snapshot, step->snapshot != NULL, "snapshot", name, error) ||
      !check_shape(shape->definition, has_definition, "definition", name, error))
    return NULL;
  if (step->image != NULL && !g_hash_table_contains(seen, "format")) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "%s step without format", name);
    return NULL;
  }
  if ((step->backing != NULL) != g_hash_table_contains(seen, "backing-format")) {
    g_set_error(error, PLANNER_ERROR, EINVAL, "%s step: backing and backing-format go together", name);
    return NULL;
  }
  if (has_definition) {
    if (!g_hash_table_contains(seen, "ctime") || !g_hash_table_contains(seen, "current")) {
      g_set_error(error, PLANNER_ERROR, EINVAL, "%s step without ctime or current", name);
      return NULL;
    }
    def->name = g_strdup(step->snapshot);
    step->definition = g_steal_pointer(&def);
  }
  return g_steal_pointer(&step);
}

char *
plan_steps_to_text(const GPtrArray *steps)
{
  GString *out = g_string_new(NULL);
  for (guint i = 0; i < steps->len; i++) {
    g_autofree char *line = plan_step_to_line(steps->pdata[i]);
    g_string_append(out, line);
    g_string_append_c(out, '\n');
  }
  return g_string_free(out, FALSE);
}

GPtrArray *
plan_steps_from_text(const char *text, GError **error)
{
  g_autoptr(GPtrArray) steps = g_ptr_array_new_with_free_func((GDestroyNotify)plan_step_free);
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (guint i = 0; lines[i] != NULL; i++) {
    /* The text ends with a newline, so the last piece is empty. */
    if (lines[i + 1] == NULL && lines[i][0] == '\0')
      break;
    PlanStep *step = plan_step_from_line(lines[i], error);
    if (step == NULL) {
      g_prefix_error(error, "line %u: ", i + 1);
      return NULL;
    }
    g_ptr_array_add(steps, step);
  }
  return g_steal_pointer(&steps);
}
