/* options.c: the command line and -o options, parsed into one struct.
 *
 *   virtsnapfs [URI] MOUNTPOINT [-f] [-d] [-o OPT[,OPT...]]
 *
 * fuse_opt_parse() fills VirtsnapfsOptions from an offsetof table, so every
 * option works as `-o name=value` on the command line and in fstab (through
 * mount.fuse3, which passes the mount source as the first argument).  The
 * options the daemon consumes are removed from the argument vector; the
 * rest (allow_other, ro, max_read=, ...) stay in it for fuse_session_new(),
 * which rejects what it does not know, before anything is mounted.
 *
 * Runs on the main thread before any other thread exists.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
  KEY_HELP,
  KEY_VERSION,
  KEY_FOREGROUND,
  KEY_DEBUG,
  KEY_IMAGE_DIR,
  KEY_ALLOW_OTHER,
  KEY_KEEP,
};

#define OPT(t, p, v) { t, offsetof(VirtsnapfsOptions, p), v }

static const struct fuse_opt option_table[] = {
  OPT("uri=%s", uri, 0),
  OPT("state_dir=%s", state_dir, 0),
  OPT("revert=%s", revert, 0),
  OPT("threads=%u", max_threads, 0),
  OPT("timeout=%lf", timeout, 0),
  OPT("no_splice", no_splice, 1),
  OPT("bandwidth=%lu", bandwidth, 0),
  FUSE_OPT_KEY("image_dir=", KEY_IMAGE_DIR),
  FUSE_OPT_KEY("-h", KEY_HELP),
  FUSE_OPT_KEY("--help", KEY_HELP),
  FUSE_OPT_KEY("-V", KEY_VERSION),
  FUSE_OPT_KEY("--version", KEY_VERSION),
  FUSE_OPT_KEY("-f", KEY_FOREGROUND),
  FUSE_OPT_KEY("-s", KEY_KEEP),
  /* Seen here and also passed on: libfuse prints its own request trace. */
  FUSE_OPT_KEY("-d", KEY_DEBUG),
  FUSE_OPT_KEY("debug", KEY_DEBUG),
  FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
  /* mount.fuse3 and fstab pass these; they mean nothing to a daemon that
   * is not a block device filesystem. */
  FUSE_OPT_KEY("_netdev", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY("auto", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY("noauto", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY("user", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY("nouser", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY("users", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_KEY("nofail", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_END
};

void
options_init(VirtsnapfsOptions *opts)
{
  memset(opts, 0, sizeof *opts);
  opts->image_dirs = g_ptr_array_new_with_free_func(g_free);
  opts->timeout = VIRTSNAPFS_DEFAULT_TIMEOUT;
}

void
options_clear(VirtsnapfsOptions *opts)
{
  /* fuse_opt_parse allocates "%s" values with malloc. */
  free(opts->uri);
  free(opts->state_dir);
  free(opts->revert);
  g_free(opts->source);
  g_free(opts->mountpoint);
  g_clear_pointer(&opts->image_dirs, g_ptr_array_unref);
  g_clear_pointer(&opts->image_dirs_strv, g_free);
  memset(opts, 0, sizeof *opts);
}

static int
options_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
  VirtsnapfsOptions *opts = data;

  switch (key) {
  case KEY_HELP:
    opts->show_help = TRUE;
    return 0;
  case KEY_VERSION:
    opts->show_version = TRUE;
    return 0;
  case KEY_FOREGROUND:
    opts->foreground = TRUE;
    return 0;
  case KEY_KEEP:
    opts->single_thread = TRUE;
    return 0;
  case KEY_DEBUG:
    opts->debug = TRUE;
    opts->foreground = TRUE;
    return 1;
  case KEY_ALLOW_OTHER:
    opts->allow_other = TRUE;
    return 1;
  case KEY_IMAGE_DIR:
    g_ptr_array_add(opts->image_dirs, g_strdup(arg + strlen("image_dir=")));
    return 0;
  case FUSE_OPT_KEY_NONOPT:
    if (opts->n_nonopt == 0)
      opts->mountpoint = g_strdup(arg);
    else if (opts->n_nonopt == 1) {
      /* Two positionals: the first was the source (the URI). */
      opts->source = g_steal_pointer(&opts->mountpoint);
      opts->mountpoint = g_strdup(arg);
    } else {
      fprintf(stderr, "virtsnapfs: unexpected argument '%s'\n", arg);
      return -1;
    }
    opts->n_nonopt++;
    return 0;
  default:
    return 1;
  }
}

gboolean
options_parse(VirtsnapfsOptions *opts, struct fuse_args *args, GError **error)
{
  if (fuse_opt_parse(args, opts, option_table, options_proc) == -1) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "cannot parse the command line (see --help)");
    return FALSE;
  }
  return TRUE;
}

static gboolean
check_dir(const char *what, const char *path, gboolean must_exist, GError **error)
{
  if (!g_path_is_absolute(path)) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s '%s' is not an absolute path", what, path);
    return FALSE;
  }
  if (!must_exist)
    return TRUE;
  struct stat st;
  if (stat(path, &st) < 0) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s '%s': %s", what, path, g_strerror(errno));
    return FALSE;
  }
  if (!S_ISDIR(st.st_mode)) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "%s '%s' is not a directory", what, path);
    return FALSE;
  }
  return TRUE;
}

gboolean
options_validate(VirtsnapfsOptions *opts, GError **error)
{
  /* -o uri= wins over the mount source, so that an fstab line may carry
   * a placeholder source ("virtsnapfs", "none") and the URI as an option. */
  if (opts->uri == NULL)
    opts->uri = strdup(opts->source ? opts->source : VIRTSNAPFS_DEFAULT_URI);
  if (opts->uri[0] == '\0' || strchr(opts->uri, ':') == NULL) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "'%s' is not a libvirt URI (like qemu:///system)", opts->uri);
    return FALSE;
  }
  if (opts->mountpoint == NULL) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "no mount point given (see --help)");
    return FALSE;
  }
  if (!check_dir("mount point", opts->mountpoint, FALSE, error)) {
    /* A relative mount point is fine: make it absolute before the
     * daemon changes its directory. */
    g_clear_error(error);
    g_autofree char *cwd = g_get_current_dir();
    char *abs = g_build_filename(cwd, opts->mountpoint, NULL);
    g_free(opts->mountpoint);
    opts->mountpoint = abs;
  }
  if (!check_dir("mount point", opts->mountpoint, TRUE, error))
    return FALSE;

  if (opts->state_dir == NULL)
    opts->state_dir = strdup(VIRTSNAPFS_DEFAULT_STATE_DIR);
  if (!check_dir("state_dir", opts->state_dir, FALSE, error))
    return FALSE;

  for (guint i = 0; i < opts->image_dirs->len; i++)
    if (!check_dir("image_dir", opts->image_dirs->pdata[i], TRUE, error))
      return FALSE;
  g_clear_pointer(&opts->image_dirs_strv, g_free);
  opts->image_dirs_strv = g_new0(const char *, opts->image_dirs->len + 1);
  for (guint i = 0; i < opts->image_dirs->len; i++)
    opts->image_dirs_strv[i] = opts->image_dirs->pdata[i];

  if (opts->revert == NULL)
    opts->revert = strdup("keep");
  if (g_str_equal(opts->revert, "keep"))
    opts->revert_mode = VIRTSNAPFS_REVERT_KEEP;
  else if (g_str_equal(opts->revert, "discard"))
    opts->revert_mode = VIRTSNAPFS_REVERT_DISCARD;
  else {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "revert='%s': expected 'keep' or 'discard'", opts->revert);
    return FALSE;
  }

  if (opts->max_threads == 0)
    opts->max_threads = VIRTSNAPFS_DEFAULT_THREADS;
  if (opts->max_threads > 256) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "threads=%u: at most 256", opts->max_threads);
    return FALSE;
  }
  /* libvirt takes MiB/s as an unsigned long and QEMU converts it to
   * bytes/s in an int64: stay far below both limits. */
  if (opts->bandwidth > VIRTSNAPFS_MAX_BANDWIDTH) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "bandwidth=%lu: at most %lu MiB/s (0: unlimited)", opts->bandwidth,
                (unsigned long)VIRTSNAPFS_MAX_BANDWIDTH);
    return FALSE;
  }
  if (!(opts->timeout >= 0 && opts->timeout <= 3600)) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "timeout=%g: expected 0 to 3600 seconds", opts->timeout);
    return FALSE;
  }
  return TRUE;
}

void
options_print_help(const char *argv0)
{
  printf("usage: %s [URI] MOUNTPOINT [options]\n"
         "\n"
         "Shows the disk snapshots of libvirt/QEMU domains as a read-only tree:\n"
         "MOUNTPOINT/<domain>/{@now,<snapshot>}/<target>.raw\n"
         "\n"
         "virtsnapfs options:\n"
         "    -h, --help             print this help and exit\n"
         "    -V, --version          print the version and exit\n"
         "    -f                     stay in the foreground (log to stderr)\n"
         "    -d, -o debug           debug: foreground, one log line per request\n"
         "    -s                     single-threaded FUSE loop (debugging)\n"
         "    -o uri=URI             libvirt URI (default: the mount source, else %s)\n"
         "    -o state_dir=DIR       journal and freeze records (default: %s)\n"
         "    -o image_dir=DIR       another directory images may live in\n"
         "                           (repeatable; default: storage pool targets and\n"
         "                           the directories of configured disks)\n"
         "    -o revert=keep|discard keep the present as a snapshot when reverting\n"
         "                           (default: keep)\n"
         "    -o bandwidth=MIB       limit what merges copy to MIB MiB/s per disk, so that\n"
         "                           snapshot deletes and @now thaws do not starve\n"
         "                           the guests' I/O: libvirt block jobs and\n"
         "                           qemu-img commit; qemu-img rebase (an offline pull)\n"
         "                           has no rate limit and runs unlimited\n"
         "                           (default: 0, unlimited)\n"
         "    -o threads=N           most FUSE worker threads (default: %u)\n"
         "    -o timeout=SECONDS     attribute and entry cache time (default: %g)\n"
         "    -o no_splice           copy data through user space instead of splice(2)\n"
         "                           (default: splice when the kernel can)\n"
         "    -o allow_other         let other users read (default: only the mount owner);\n"
         "                           default_permissions is always on, so files (0444)\n"
         "                           and directories (0555) are checked by the kernel\n"
         "\n"
         "Any other -o option is passed to libfuse (ro, max_read=N, ...).\n",
         argv0, VIRTSNAPFS_DEFAULT_URI, VIRTSNAPFS_DEFAULT_STATE_DIR,
         VIRTSNAPFS_DEFAULT_THREADS, VIRTSNAPFS_DEFAULT_TIMEOUT);
}
