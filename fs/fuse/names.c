/* names.c: snapshot names <-> directory entry names.
 *
 * A snapshot name is shown as is, except that '/', '%', and a leading '.'
 * or '@' are written as %2F, %25, %2E and %40.  The leading-dot rule keeps
 * ".", ".." and hidden files out of the tree; the leading-'@' rule keeps
 * the namespace of "@now" (and later '@' entries) for the daemon.  The
 * mapping is a bijection on non-empty strings, so two snapshots never share
 * an entry.  Decoding is strict: it accepts exactly the encodings that
 * names_escape() produces, so every entry has one spelling.
 *
 * Pure functions, no state; safe from any thread.
 */
#include "virtsnapfs.h"

#include <string.h>

char *
names_escape(const char *name)
{
  g_return_val_if_fail(name != NULL, NULL);

  GString *out = g_string_sized_new(strlen(name) + 8);
  for (const char *p = name; *p; p++) {
    if (*p == '/')
      g_string_append(out, "%2F");
    else if (*p == '%')
      g_string_append(out, "%25");
    else if (p == name && *p == '.')
      g_string_append(out, "%2E");
    else if (p == name && *p == '@')
      g_string_append(out, "%40");
    else
      g_string_append_c(out, *p);
  }
  return g_string_free(out, FALSE);
}

char *
names_unescape(const char *entry)
{
  g_return_val_if_fail(entry != NULL, NULL);

  if (entry[0] == '\0' || entry[0] == '.' || entry[0] == '@')
    return NULL;
  if (strchr(entry, '/') != NULL)
    return NULL;

  GString *out = g_string_sized_new(strlen(entry));
  for (const char *p = entry; *p; p++) {
    if (*p != '%') {
      g_string_append_c(out, *p);
      continue;
    }
    if (g_str_has_prefix(p, "%2F"))
      g_string_append_c(out, '/');
    else if (g_str_has_prefix(p, "%25"))
      g_string_append_c(out, '%');
    else if (p == entry && g_str_has_prefix(p, "%2E"))
      g_string_append_c(out, '.');
    else if (p == entry && g_str_has_prefix(p, "%40"))
      g_string_append_c(out, '@');
    else {
      /* Any other escape (lower case, %2E in the middle, a lone '%') is
       * not something names_escape() writes: refuse it rather than give
       * one snapshot two names. */
      g_string_free(out, TRUE);
      return NULL;
    }
    p += 2;
  }
  return g_string_free(out, FALSE);
}

gboolean
names_is_disk_file(const char *entry, const char *suffix, char **target_out)
{
  if (!g_str_has_suffix(entry, suffix))
    return FALSE;
  gsize len = strlen(entry) - strlen(suffix);
  if (len == 0)
    return FALSE;
  if (target_out)
    *target_out = g_strndup(entry, len);
  return TRUE;
}
