/* options.c: the command line and -o options, parsed into one struct.
 *
 *   virtsnapfs [URI] MOUNTPOINT [-f] [-d] [-o OPT[,OPT...]] [-o uri=[NAME=]URI]...
 *
 * One URI (the mount source, or one -o uri=) mounts one libvirt host with
 * its domains at the top level.  Several -o uri= mount several hosts, one
 * directory each, named NAME or after the URI's server (hosts_name_*
 * below).
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
  KEY_DEBUG_OPT,
  KEY_IMAGE_DIR,
  KEY_URI,
  KEY_ALLOW_OTHER,
  KEY_KEEP,
};

#define OPT(t, p, v) { t, offsetof(VirtsnapfsOptions, p), v }

static const struct fuse_opt option_table[] = {
  OPT("state_dir=%s", state_dir, 0),
  OPT("revert=%s", revert, 0),
  OPT("threads=%u", max_threads, 0),
  OPT("timeout=%lf", timeout, 0),
  OPT("no_splice", no_splice, 1),
  OPT("bandwidth=%lu", bandwidth, 0),
  OPT("hole_granularity=%u", hole_kib, 0),
  OPT("prefetch=%u", prefetch_kib, 0),
  FUSE_OPT_KEY("image_dir=", KEY_IMAGE_DIR),
  FUSE_OPT_KEY("uri=", KEY_URI),
  FUSE_OPT_KEY("-h", KEY_HELP),
  FUSE_OPT_KEY("--help", KEY_HELP),
  FUSE_OPT_KEY("-V", KEY_VERSION),
  FUSE_OPT_KEY("--version", KEY_VERSION),
  FUSE_OPT_KEY("-f", KEY_FOREGROUND),
  FUSE_OPT_KEY("-s", KEY_KEEP),
  /* Seen here and also passed on: libfuse prints its own request trace. */
  FUSE_OPT_KEY("-d", KEY_DEBUG),
  /* The same trace without the foreground, so that an fstab line can
   * carry it (mount would wait forever for a foreground daemon). */
  FUSE_OPT_KEY("debug", KEY_DEBUG_OPT),
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
  FUSE_OPT_KEY("defaults", FUSE_OPT_KEY_DISCARD),
  /* x-systemd.automount, x-systemd.requires=..., comment=...: for mount
   * and systemd only (see options_proc). */
  FUSE_OPT_KEY("comment=", FUSE_OPT_KEY_DISCARD),
  FUSE_OPT_END
};

void
options_init(VirtsnapfsOptions *opts)
{
  memset(opts, 0, sizeof *opts);
  opts->image_dirs = g_ptr_array_new_with_free_func(g_free);
  opts->uri_opts = g_ptr_array_new_with_free_func(g_free);
  opts->timeout = VIRTSNAPFS_DEFAULT_TIMEOUT;
  opts->hole_kib = VIRTSNAPFS_DEFAULT_HOLE_KIB;
  opts->prefetch_kib = VIRTSNAPFS_DEFAULT_PREFETCH_KIB;
}

void
options_clear(VirtsnapfsOptions *opts)
{
  /* fuse_opt_parse allocates "%s" values with malloc. */
  g_free(opts->uri);
  free(opts->state_dir);
  free(opts->revert);
  g_free(opts->source);
  g_free(opts->mountpoint);
  g_clear_pointer(&opts->image_dirs, g_ptr_array_unref);
  g_clear_pointer(&opts->uri_opts, g_ptr_array_unref);
  g_clear_pointer(&opts->hosts, g_ptr_array_unref);
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
  case KEY_DEBUG_OPT:
    opts->debug = TRUE;
    return 1;
  case KEY_ALLOW_OTHER:
    opts->allow_other = TRUE;
    return 1;
  case KEY_IMAGE_DIR:
    g_ptr_array_add(opts->image_dirs, g_strdup(arg + strlen("image_dir=")));
    return 0;
  case KEY_URI:
    g_ptr_array_add(opts->uri_opts, g_strdup(arg + strlen("uri=")));
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
  case FUSE_OPT_KEY_OPT:
    /* fstab options for mount(8) and systemd's fstab generator, which
     * mount.fuse3 drops too; discarded here for a daemon run by hand or
     * by another mount helper with an fstab line's options. */
    if (g_str_has_prefix(arg, "x-"))
      return 0;
    return 1;
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

/* ------------------------------------------------------------------ */
/* Hosts: -o uri=[NAME=]URI, repeatable.                                */

static void
host_spec_free(gpointer data)
{
  VirtsnapfsHostSpec *spec = data;
  g_free(spec->name);
  g_free(spec->uri);
  g_free(spec);
}

/* A host directory's name: an entry name the tree can show and that
 * names_unescape() would not take for something else. */
static gboolean
check_host_name(const char *name, const char *option, GError **error)
{
  if (name[0] == '\0' || name[0] == '.' || name[0] == '@' || strchr(name, '/') ||
      strchr(name, '%') || strlen(name) > 255) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "uri=%s: host name '%s' must be non-empty, at most 255 bytes, without a "
                "leading '.' or '@' and without '/' or '%%' (give one as uri=NAME=URI)",
                option, name);
    return FALSE;
  }
  return TRUE;
}

/* The name a URI gives its host directory: the server's host name, or
 * localhost when the URI names none (qemu:///system, qemu:///embed...). */
static char *
name_from_uri(const char *uri)
{
  g_autoptr(GUri) parsed = g_uri_parse(uri, G_URI_FLAGS_NON_DNS, NULL);
  const char *host = parsed ? g_uri_get_host(parsed) : NULL;
  return g_strdup(host && host[0] ? host : "localhost");
}

/* Splits "NAME=URI": NAME is what comes before the first '=' when that
 * contains no ':' and no '/' (a URI's scheme has a ':' before any '='). */
static VirtsnapfsHostSpec *
parse_uri_option(const char *value, GError **error)
{
  g_autoptr(GPtrArray) holder = g_ptr_array_new_with_free_func(host_spec_free);
  VirtsnapfsHostSpec *spec = g_new0(VirtsnapfsHostSpec, 1);
  g_ptr_array_add(holder, spec);
  const char *eq = strchr(value, '=');
  if (eq && !memchr(value, ':', (gsize)(eq - value)) && !memchr(value, '/', (gsize)(eq - value))) {
    spec->name = g_strndup(value, (gsize)(eq - value));
    spec->uri = g_strdup(eq + 1);
    if (!check_host_name(spec->name, value, error))
      return NULL;
  } else {
    spec->uri = g_strdup(value);
  }
  if (spec->uri[0] == '\0' || strchr(spec->uri, ':') == NULL) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "'%s' is not a libvirt URI (like qemu:///system)", spec->uri);
    return NULL;
  }
  return g_ptr_array_steal_index(holder, 0);
}

/* Fills opts->hosts from -o uri= (or the mount source, or the default):
 * explicit names are taken first and must differ; the others get their
 * server's name, then -2, -3... in option order for duplicates. */
static gboolean
validate_hosts(VirtsnapfsOptions *opts, GError **error)
{
  g_clear_pointer(&opts->hosts, g_ptr_array_unref);
  opts->hosts = g_ptr_array_new_with_free_func(host_spec_free);
  /* -o uri= wins over the mount source, so that an fstab line may carry
   * a placeholder source ("virtsnapfs", "none") and the URIs as options. */
  if (opts->uri_opts->len == 0)
    g_ptr_array_add(opts->uri_opts,
                    g_strdup(opts->source ? opts->source : VIRTSNAPFS_DEFAULT_URI));

  g_autoptr(GHashTable) names = g_hash_table_new(g_str_hash, g_str_equal);
  g_autoptr(GHashTable) uris = g_hash_table_new(g_str_hash, g_str_equal);
  for (guint i = 0; i < opts->uri_opts->len; i++) {
    VirtsnapfsHostSpec *spec = parse_uri_option(opts->uri_opts->pdata[i], error);
    if (spec == NULL)
      return FALSE;
    g_ptr_array_add(opts->hosts, spec);
    if (!g_hash_table_add(uris, spec->uri)) {
      g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                  "uri=%s is given twice", spec->uri);
      return FALSE;
    }
    if (spec->name && !g_hash_table_add(names, spec->name)) {
      g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                  "host name '%s' is given to two URIs", spec->name);
      return FALSE;
    }
  }
  for (guint i = 0; i < opts->hosts->len; i++) {
    VirtsnapfsHostSpec *spec = opts->hosts->pdata[i];
    if (spec->name)
      continue;
    g_autofree char *base = name_from_uri(spec->uri);
    char *name = g_strdup(base);
    for (guint n = 2; g_hash_table_contains(names, name); n++) {
      g_free(name);
      name = g_strdup_printf("%s-%u", base, n);
    }
    spec->name = name;
    if (opts->hosts->len > 1 && !check_host_name(spec->name, spec->uri, error))
      return FALSE;
    g_hash_table_add(names, spec->name);
  }
  g_clear_pointer(&opts->uri, g_free);
  if (opts->hosts->len == 1)
    opts->uri = g_strdup(((VirtsnapfsHostSpec *)opts->hosts->pdata[0])->uri);
  return TRUE;
}

gboolean
options_validate(VirtsnapfsOptions *opts, GError **error)
{
  if (!validate_hosts(opts, error))
    return FALSE;
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
  if (opts->hole_kib > VIRTSNAPFS_MAX_HOLE_KIB) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "hole_granularity=%u: at most %u KiB (0: exact holes)", opts->hole_kib,
                VIRTSNAPFS_MAX_HOLE_KIB);
    return FALSE;
  }
  if (opts->prefetch_kib > VIRTSNAPFS_MAX_PREFETCH_KIB) {
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "prefetch=%u: at most %u KiB (0: no prefetch)", opts->prefetch_kib,
                VIRTSNAPFS_MAX_PREFETCH_KIB);
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
  printf("usage: %s [URI] MOUNTPOINT [options] [-o uri=[NAME=]URI]...\n"
         "\n"
         "Shows the disk snapshots of libvirt/QEMU domains as a read-only tree:\n"
         "MOUNTPOINT/<domain>/{@now,<snapshot>}/<target>.raw, or with several\n"
         "-o uri= MOUNTPOINT/<host>/<domain>/{@now,<snapshot>}/<target>.raw\n"
         "\n"
         "virtsnapfs options:\n"
         "    -h, --help             print this help and exit\n"
         "    -V, --version          print the version and exit\n"
         "    -f                     stay in the foreground (log to stderr)\n"
         "    -d                     debug: the same as -f -o debug\n"
         "    -o debug               log one line per request and libfuse's trace\n"
         "                           (default: off; without -f it goes to syslog)\n"
         "    -s                     single-threaded FUSE loop (debugging)\n"
         "    -o uri=[NAME=]URI      libvirt URI (default: the mount source, else %s);\n"
         "                           repeat it to mount several hosts, one directory\n"
         "                           each: MOUNTPOINT/<NAME>/<domain>/...  NAME defaults\n"
         "                           to the URI's server (localhost without one), with\n"
         "                           -2, -3... for duplicates; state goes to\n"
         "                           STATE_DIR/<NAME>/.  Disks whose images are not\n"
         "                           visible here (remote hosts without shared storage)\n"
         "                           are listed but fail to open with EREMOTE\n"
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
         "    -o hole_granularity=KIB\n"
         "                           report holes in aligned pieces of KIB KiB: one\n"
         "                           that holds any data is data (its holes read as\n"
         "                           zeros); 0 reports every hole exactly as qemu-img\n"
         "                           map does (default: %u)\n"
         "    -o prefetch=KIB        when a disk file is read sequentially, store\n"
         "                           up to KIB KiB ahead of the reader into the kernel's\n"
         "                           page cache from daemon threads; 0: only what the\n"
         "                           kernel asks for (default: %u)\n"
         "    -o threads=N           most FUSE worker threads (default: %u)\n"
         "    -o timeout=SECONDS     attribute and entry cache time (default: %g)\n"
         "    -o no_splice           copy data through user space instead of splice(2)\n"
         "                           (default: splice when the kernel can)\n"
         "    -o allow_other         let other users read (default: only the mount owner);\n"
         "                           default_permissions is always on, so the kernel\n"
         "                           checks the modes (files 0444)\n"
         "\n"
         "Any other -o option is passed to libfuse (ro, max_read=N, ...).  Options for\n"
         "mount(8) and systemd (noauto, nofail, _netdev, x-systemd.*, ...) are ignored.\n",
         argv0, VIRTSNAPFS_DEFAULT_URI, VIRTSNAPFS_DEFAULT_STATE_DIR,
         VIRTSNAPFS_DEFAULT_HOLE_KIB, VIRTSNAPFS_DEFAULT_PREFETCH_KIB, VIRTSNAPFS_DEFAULT_THREADS, VIRTSNAPFS_DEFAULT_TIMEOUT);
}
