/* log.c: where the daemon's messages go.
 *
 * Everything logs through glib (G_LOG_DOMAIN "virtsnapfs").  In the
 * foreground messages go to stderr, one line each with a level; once the
 * daemon is in the background they go to syslog.  libfuse's own messages
 * are routed into glib too, so one writer sees everything.  Debug messages
 * (one line per request) are on with -d / -o debug.
 *
 * Thread model: the writer is called from any thread; glib serialises
 * nothing, so each message is written with one write(2)/syslog(3) call.
 */
#include "virtsnapfs.h"

#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

static gboolean log_debug;
static gboolean log_syslog;

static const char *
level_name(GLogLevelFlags level)
{
  if (level & G_LOG_LEVEL_ERROR)
    return "ERROR";
  if (level & G_LOG_LEVEL_CRITICAL)
    return "CRITICAL";
  if (level & G_LOG_LEVEL_WARNING)
    return "WARNING";
  if (level & G_LOG_LEVEL_MESSAGE)
    return "Message";
  if (level & G_LOG_LEVEL_INFO)
    return "INFO";
  return "DEBUG";
}

static int
level_priority(GLogLevelFlags level)
{
  if (level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL))
    return LOG_ERR;
  if (level & G_LOG_LEVEL_WARNING)
    return LOG_WARNING;
  if (level & G_LOG_LEVEL_MESSAGE)
    return LOG_NOTICE;
  if (level & G_LOG_LEVEL_INFO)
    return LOG_INFO;
  return LOG_DEBUG;
}

static GLogWriterOutput
log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  const char *message = NULL, *domain = NULL;

  if ((level & (G_LOG_LEVEL_DEBUG | G_LOG_LEVEL_INFO)) && !log_debug)
    return G_LOG_WRITER_HANDLED;
  for (gsize i = 0; i < n_fields; i++) {
    if (g_str_equal(fields[i].key, "MESSAGE"))
      message = fields[i].value;
    else if (g_str_equal(fields[i].key, "GLIB_DOMAIN"))
      domain = fields[i].value;
  }
  if (message == NULL)
    return G_LOG_WRITER_UNHANDLED;

  if (log_syslog) {
    syslog(level_priority(level), "%s: %s", level_name(level), message);
    return G_LOG_WRITER_HANDLED;
  }

  g_autoptr(GDateTime) now = g_date_time_new_now_local();
  g_autofree char *stamp = g_date_time_format(now, "%H:%M:%S.%f");
  g_autofree char *line = g_strdup_printf("%.12s %s[%d]: %s: %s\n", stamp,
                                          domain ? domain : "virtsnapfs",
                                          (int)getpid(), level_name(level), message);
  gsize len = strlen(line);
  /* One write per line so lines from threads do not interleave. */
  while (len > 0) {
    ssize_t n = write(STDERR_FILENO, line, len);
    if (n <= 0)
      break;
    len -= (gsize)n;
  }
  return G_LOG_WRITER_HANDLED;
}

static void
log_from_fuse(enum fuse_log_level level, const char *fmt, va_list ap)
{
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  g_strchomp(msg);
  GLogLevelFlags glevel;

  switch (level) {
  case FUSE_LOG_EMERG:
  case FUSE_LOG_ALERT:
  case FUSE_LOG_CRIT:
  case FUSE_LOG_ERR:
    glevel = G_LOG_LEVEL_WARNING;
    break;
  case FUSE_LOG_WARNING:
  case FUSE_LOG_NOTICE:
    glevel = G_LOG_LEVEL_MESSAGE;
    break;
  default:
    glevel = G_LOG_LEVEL_DEBUG;
    break;
  }
  g_log("libfuse", glevel, "%s", msg);
}

void
log_setup(gboolean debug, gboolean to_syslog)
{
  static gsize installed;

  log_debug = debug;
  log_syslog = to_syslog;
  /* glib accepts one writer per process. */
  if (g_once_init_enter(&installed)) {
    g_log_set_writer_func(log_writer, NULL, NULL);
    fuse_set_log_func(log_from_fuse);
    g_once_init_leave(&installed, 1);
  }
}

void
log_use_syslog(void)
{
  openlog("virtsnapfs", LOG_PID, LOG_DAEMON);
  log_syslog = TRUE;
}

gboolean
log_debug_enabled(void)
{
  return log_debug;
}
