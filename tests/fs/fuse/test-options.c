/* test-options.c: command line and -o parsing, as mount.fuse3 and fstab
 * call the daemon, and validation before anything is mounted. */
#include "virtsnapfs.h"

#include <glib/gstdio.h>
#include <string.h>

typedef struct {
  VirtsnapfsOptions opts;
  FuseArgs args;
  char *dir;
} Fixture;

static void
fixture_clear(Fixture *f)
{
  options_clear(&f->opts);
  fuse_opt_free_args(&f->args);
}

/* The directory "MNT" stands for; made on first use, removed by main. */
static char *mnt_dir;

/* Parses argv (NULL-terminated, without argv[0]); "MNT" is replaced by a
 * real directory.  Returns the parse result. */
static gboolean
parse(Fixture *f, const char *const *argv, GError **error)
{
  if (mnt_dir == NULL)
    mnt_dir = g_dir_make_tmp("virtsnapfs-opt-XXXXXX", NULL);
  char *dir = mnt_dir;
  memset(f, 0, sizeof *f);
  f->dir = dir;
  options_init(&f->opts);
  fuse_opt_add_arg(&f->args, "virtsnapfs");
  for (gsize i = 0; argv[i]; i++)
    fuse_opt_add_arg(&f->args, g_str_equal(argv[i], "MNT") ? dir : argv[i]);
  return options_parse(&f->opts, &f->args, error);
}

static gboolean
args_contain(const FuseArgs *args, const char *needle)
{
  for (int i = 0; i < args->argc; i++)
    if (strstr(args->argv[i], needle))
      return TRUE;
  return FALSE;
}

static void
test_defaults(void)
{
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "MNT", NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_no_error(error);
  g_assert_cmpstr(f.opts.uri, ==, "qemu:///system");
  g_assert_cmpstr(f.opts.state_dir, ==, "/var/lib/virtsnapfs");
  g_assert_cmpstr(f.opts.mountpoint, ==, f.dir);
  g_assert_cmpint(f.opts.revert_mode, ==, VIRTSNAPFS_REVERT_KEEP);
  g_assert_cmpuint(f.opts.max_threads, ==, VIRTSNAPFS_DEFAULT_THREADS);
  g_assert_cmpuint(f.opts.bandwidth, ==, 0);
  g_assert_cmpuint(f.opts.hole_kib, ==, VIRTSNAPFS_DEFAULT_HOLE_KIB);
  g_assert_cmpuint(f.opts.prefetch_kib, ==, VIRTSNAPFS_DEFAULT_PREFETCH_KIB);
  g_assert_false(f.opts.foreground);
  g_assert_null(f.opts.image_dirs_strv[0]);
  fixture_clear(&f);
}

static void
test_mount_helper(void)
{
  /* mount -t fuse.virtsnapfs qemu:///session /mnt -o ...: mount.fuse3
   * passes the source first and the options after the mount point. */
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "qemu:///session", "MNT", "-o",
                         "rw,nosuid,nodev,allow_other,image_dir=/tmp,image_dir=/,revert=discard,"
                         "state_dir=/run/x,_netdev", NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_no_error(error);
  g_assert_cmpstr(f.opts.uri, ==, "qemu:///session");
  g_assert_cmpstr(f.opts.state_dir, ==, "/run/x");
  g_assert_true(f.opts.allow_other);
  g_assert_cmpint(f.opts.revert_mode, ==, VIRTSNAPFS_REVERT_DISCARD);
  g_assert_cmpstr(f.opts.image_dirs_strv[0], ==, "/tmp");
  g_assert_cmpstr(f.opts.image_dirs_strv[1], ==, "/");
  g_assert_null(f.opts.image_dirs_strv[2]);
  /* libfuse's options stay for fuse_session_new; ours and _netdev go. */
  g_assert_true(args_contain(&f.args, "allow_other"));
  g_assert_true(args_contain(&f.args, "nosuid"));
  g_assert_false(args_contain(&f.args, "image_dir"));
  g_assert_false(args_contain(&f.args, "revert"));
  g_assert_false(args_contain(&f.args, "_netdev"));
  g_assert_false(args_contain(&f.args, "qemu:"));
  fixture_clear(&f);
}

static void
test_uri_option_wins(void)
{
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "virtsnapfs", "MNT", "-o", "uri=qemu:///embed?root=/x", "-f", "-d",
                         NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_cmpstr(f.opts.uri, ==, "qemu:///embed?root=/x");
  g_assert_true(f.opts.foreground);
  g_assert_true(f.opts.debug);
  g_assert_true(args_contain(&f.args, "-d"));
  fixture_clear(&f);
}

static void
test_bandwidth(void)
{
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "MNT", "-o", "bandwidth=5,threads=8", NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(f.opts.bandwidth, ==, 5);
  g_assert_false(args_contain(&f.args, "bandwidth"));
  fixture_clear(&f);
}

static void
test_hole_granularity(void)
{
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "MNT", "-o", "hole_granularity=0", NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(f.opts.hole_kib, ==, 0);
  g_assert_false(args_contain(&f.args, "hole_granularity"));
  fixture_clear(&f);
}

static void
test_prefetch(void)
{
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "MNT", "-o", "prefetch=0", NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(f.opts.prefetch_kib, ==, 0);
  g_assert_false(args_contain(&f.args, "prefetch"));
  fixture_clear(&f);
}

static void
test_help_version(void)
{
  Fixture f;
  const char *argv[] = { "--help", NULL };
  g_assert_true(parse(&f, argv, NULL));
  g_assert_true(f.opts.show_help);
  fixture_clear(&f);
  const char *argv2[] = { "-V", NULL };
  g_assert_true(parse(&f, argv2, NULL));
  g_assert_true(f.opts.show_version);
  fixture_clear(&f);
}

static void
test_invalid(void)
{
  const char *const *const bad[] = {
    (const char *const[]){ "MNT", "-o", "revert=maybe", NULL },
    (const char *const[]){ "MNT", "-o", "state_dir=relative", NULL },
    (const char *const[]){ "MNT", "-o", "image_dir=/does/not/exist", NULL },
    (const char *const[]){ "MNT", "-o", "threads=100000", NULL },
    (const char *const[]){ "MNT", "-o", "bandwidth=-1", NULL },
    (const char *const[]){ "MNT", "-o", "bandwidth=fast", NULL },
    (const char *const[]){ "MNT", "-o", "bandwidth=2000000", NULL },
    (const char *const[]){ "MNT", "-o", "hole_granularity=2000000", NULL },
    (const char *const[]){ "MNT", "-o", "hole_granularity=-1", NULL },
    (const char *const[]){ "MNT", "-o", "hole_granularity=big", NULL },
    (const char *const[]){ "MNT", "-o", "prefetch=2000000", NULL },
    (const char *const[]){ "MNT", "-o", "prefetch=lots", NULL },
    (const char *const[]){ "MNT", "-o", "uri=nocolon", NULL },
    (const char *const[]){ "/does/not/exist", NULL },
    (const char *const[]){ "-f", NULL },
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    Fixture f;
    g_autoptr(GError) error = NULL;
    gboolean ok = parse(&f, bad[i], &error) && options_validate(&f.opts, &error);
    g_assert_false(ok);
    g_assert_nonnull(error);
    g_test_message("case %zu: %s", i, error->message);
    fixture_clear(&f);
  }
  /* Three positionals is a parse error. */
  Fixture f;
  const char *argv[] = { "a:", "MNT", "extra", NULL };
  g_assert_false(parse(&f, argv, NULL));
  fixture_clear(&f);
}

static void
test_fstab_options(void)
{
  /* What an fstab line may carry beyond what mount.fuse3 strips, when the
   * daemon is run with it by hand or by another helper; and -o debug,
   * which traces without staying in the foreground (mount would wait). */
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "qemu:///system", "MNT", "-o",
                         "defaults,noauto,nofail,_netdev,x-systemd.automount,"
                         "x-systemd.requires=libvirtd.service,comment=backup,debug", NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_no_error(error);
  g_assert_true(f.opts.debug);
  g_assert_false(f.opts.foreground);
  for (const char *const *o = (const char *const[]){ "defaults", "noauto", "nofail", "_netdev",
                                                     "x-systemd", "comment", NULL }; *o; o++)
    g_assert_false(args_contain(&f.args, *o));
  /* libfuse prints its own request trace too. */
  g_assert_true(args_contain(&f.args, "debug"));
  fixture_clear(&f);
}

static const VirtsnapfsHostSpec *
host_at(const Fixture *f, guint i)
{
  g_assert_cmpuint(i, <, f->opts.hosts->len);
  return f->opts.hosts->pdata[i];
}

/* Repeated -o uri=: names from the servers, localhost without one, -2,
 * -3... for duplicates in option order; explicit names are kept first. */
static void
test_hosts(void)
{
  Fixture f;
  g_autoptr(GError) error = NULL;
  const char *argv[] = { "none", "MNT",
                         "-o", "uri=qemu+ssh://host1/system",
                         "-o", "uri=qemu+tls://root@host2:16514/system,uri=qemu+ssh://host1/session",
                         "-o", "uri=qemu:///embed?root=/x",
                         "-o", "uri=host1-2=qemu+tcp://host3/system",
                         "-o", "uri=qemu+unix:///system?socket=/run/p/libvirt-sock",
                         "-o", "uri=qemu+ssh://host1/x", NULL };
  g_assert_true(parse(&f, argv, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_no_error(error);
  g_assert_null(f.opts.uri);
  g_assert_cmpuint(f.opts.hosts->len, ==, 7);
  const char *want[][2] = {
    { "host1", "qemu+ssh://host1/system" },
    { "host2", "qemu+tls://root@host2:16514/system" },
    { "host1-3", "qemu+ssh://host1/session" }, /* host1-2 is taken by name */
    { "localhost", "qemu:///embed?root=/x" },
    { "host1-2", "qemu+tcp://host3/system" },
    { "localhost-2", "qemu+unix:///system?socket=/run/p/libvirt-sock" },
    { "host1-4", "qemu+ssh://host1/x" },
  };
  for (guint i = 0; i < G_N_ELEMENTS(want); i++) {
    g_assert_cmpstr(host_at(&f, i)->name, ==, want[i][0]);
    g_assert_cmpstr(host_at(&f, i)->uri, ==, want[i][1]);
  }
  g_assert_false(args_contain(&f.args, "uri="));
  fixture_clear(&f);

  /* One -o uri=NAME=URI is a mount of one host: the URI is the URI. */
  const char *one[] = { "MNT", "-o", "uri=mine=qemu:///embed?root=/y", NULL };
  g_assert_true(parse(&f, one, &error));
  g_assert_true(options_validate(&f.opts, &error));
  g_assert_cmpstr(f.opts.uri, ==, "qemu:///embed?root=/y");
  g_assert_cmpuint(f.opts.hosts->len, ==, 1);
  g_assert_cmpstr(host_at(&f, 0)->name, ==, "mine");
  fixture_clear(&f);
}

static void
test_hosts_invalid(void)
{
  const char *const values[] = {
    "uri=qemu:///system,uri=qemu:///system",            /* the same URI twice */
    "uri=a=qemu:///system,uri=b=qemu:///system",        /* ... also under two names */
    "uri=a=qemu:///system,uri=a=qemu:///session",       /* one name twice */
    "uri==qemu:///system,uri=qemu:///session",          /* empty name */
    "uri=.hidden=qemu:///system,uri=qemu:///session",   /* leading '.' */
    "uri=@now=qemu:///system,uri=qemu:///session",      /* leading '@' */
    "uri=a%2Fb=qemu:///system,uri=qemu:///session",     /* '%' */
    "uri=a=nocolon,uri=qemu:///session",                /* not a URI */
    "uri=qemu:///system,uri=",                          /* empty URI */
  };
  for (gsize i = 0; i < G_N_ELEMENTS(values); i++) {
    Fixture f;
    g_autoptr(GError) error = NULL;
    const char *argv[] = { "MNT", "-o", values[i], NULL };
    gboolean ok = parse(&f, argv, &error) && options_validate(&f.opts, &error);
    g_assert_false(ok);
    g_assert_nonnull(error);
    g_test_message("case %zu: %s", i, error->message);
    fixture_clear(&f);
  }
}

static void
test_uri_remote(void)
{
  g_assert_true(hosts_uri_is_remote("qemu+ssh://host1/system"));
  g_assert_true(hosts_uri_is_remote("qemu+tcp://host1/system"));
  g_assert_true(hosts_uri_is_remote("qemu+tls://root@host1:16514/system"));
  g_assert_true(hosts_uri_is_remote("qemu+unix:///system?socket=/run/x/libvirt-sock"));
  g_assert_true(hosts_uri_is_remote("qemu://host1/system"));
  g_assert_false(hosts_uri_is_remote("qemu:///system"));
  g_assert_false(hosts_uri_is_remote("qemu:///system?socket=/run/x/libvirt-sock"));
  g_assert_false(hosts_uri_is_remote("qemu:///embed?root=/x"));
}

int
main(int argc, char *argv[])
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/options/defaults", test_defaults);
  g_test_add_func("/options/mount-helper", test_mount_helper);
  g_test_add_func("/options/uri-option-wins", test_uri_option_wins);
  g_test_add_func("/options/bandwidth", test_bandwidth);
  g_test_add_func("/options/hole-granularity", test_hole_granularity);
  g_test_add_func("/options/prefetch", test_prefetch);
  g_test_add_func("/options/help-version", test_help_version);
  g_test_add_func("/options/invalid", test_invalid);
  g_test_add_func("/options/fstab", test_fstab_options);
  g_test_add_func("/options/hosts", test_hosts);
  g_test_add_func("/options/hosts-invalid", test_hosts_invalid);
  g_test_add_func("/options/uri-remote", test_uri_remote);
  int r = g_test_run();
  if (mnt_dir)
    g_rmdir(mnt_dir);
  g_free(mnt_dir);
  return r;
}
