/* main.c: the virtsnapfs executable: options, daemon, threads, shutdown.
 *
 * Start-up, in order: parse and validate every option; create the FUSE
 * session (which checks libfuse's own options); go to the background
 * (before any thread exists: fork keeps only the calling thread); connect
 * the backend of every host (hosts.c; each starts libvirt's event thread and repairs freezes a
 * crash left behind); mount; start the FUSE loop thread; then run the
 * GMainLoop on the main thread.  In the background the parent process
 * waits on a pipe until the child has mounted, so `virtsnapfs URI MNT`
 * and `mount -t fuse.virtsnapfs` fail with the real error and succeed
 * only when the mount is there.
 *
 * Shutdown: `fusermount3 -u` (or umount) ends the FUSE loop, which quits
 * the main loop.  SIGINT, SIGTERM and SIGHUP detach the mount (lazily);
 * when files are still open the kernel keeps the connection, so after a
 * grace period the daemon aborts it through the fusectl filesystem.  Then
 * open handles are closed (thawing @now freezes) and the backend freed.
 * Nothing calls exit() after the mount.
 *
 * Thread model: see ops.c.
 */
#include "virtsnapfs.h"

#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define ABORT_GRACE_SECONDS 3

typedef struct {
  Virtsnapfs *fs;
  GMainLoop *loop;
  GThread *fuse_thread;
  gint fuse_done;        /* atomic */
  int fuse_status;
  dev_t mount_dev;       /* of the mounted root, for fusectl */
  gboolean stopping;
  guint abort_source;
} Daemon;

/* ------------------------------------------------------------------ */
/* The FUSE loop thread.                                                */

static gboolean
fuse_thread_done(gpointer data)
{
  Daemon *d = data;
  g_main_loop_quit(d->loop);
  return G_SOURCE_REMOVE;
}

static gpointer
fuse_thread_main(gpointer data)
{
  Daemon *d = data;
  Virtsnapfs *fs = d->fs;
  int r;

  if (fs->opts->single_thread) {
    r = fuse_session_loop(fs->se);
  } else {
    g_autoptr(FuseLoopConfig) cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_loop_cfg_set_max_threads(cfg, fs->opts->max_threads);
    /* Workers are never retired while mounted (libfuse's default too): a
     * retired worker exits detached, and when that exit races the
     * unmount, libfuse 3.14 deletes its splice-pipe key first and the
     * worker's pipe (two descriptors and 24 bytes) is never freed, which
     * LeakSanitizer reports.  The loop joins every worker it still has. */
    fuse_loop_cfg_set_idle_threads(cfg, fs->opts->max_threads);
    r = fuse_session_loop_mt(fs->se, cfg);
  }
  d->fuse_status = r;
  g_atomic_int_set(&d->fuse_done, 1);
  g_idle_add(fuse_thread_done, d);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Signals and shutdown.                                                */

static gboolean
abort_connection(gpointer data)
{
  Daemon *d = data;
  d->abort_source = 0;
  if (g_atomic_int_get(&d->fuse_done))
    return G_SOURCE_REMOVE;
  g_autofree char *path = g_strdup_printf("/sys/fs/fuse/connections/%u/abort",
                                          minor(d->mount_dev));
  g_message("files still open after %d s: aborting the connection (%s)",
            ABORT_GRACE_SECONDS, path);
  /* Not g_file_set_contents(): it writes a temporary file and renames. */
  int fd = d->mount_dev ? open(path, O_WRONLY | O_CLOEXEC) : -1;
  if (fd < 0 && errno == ENOENT && geteuid() == 0) {
    /* fusectl is not mounted (systemd mounts it at boot; containers may
     * not): mount it, as sys-fs-fuse-connections.mount would. */
    if (mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, NULL) == 0)
      g_message("mounted fusectl on /sys/fs/fuse/connections");
    fd = open(path, O_WRONLY | O_CLOEXEC);
  }
  if (fd < 0 || write(fd, "1", 1) != 1)
    g_warning("cannot abort the FUSE connection (%s: %s); waiting for files to be closed",
              path, d->mount_dev ? g_strerror(errno) : "device unknown");
  if (fd >= 0)
    close(fd);
  return G_SOURCE_REMOVE;
}

static void
detach_mount(Daemon *d)
{
  const char *mnt = d->fs->opts->mountpoint;
  if (geteuid() == 0) {
    if (umount2(mnt, MNT_DETACH) < 0 && errno != EINVAL)
      g_warning("umount %s: %s", mnt, g_strerror(errno));
    return;
  }
  const char *argv[] = { "fusermount3", "-u", "-z", "--", mnt, NULL };
  g_autoptr(GError) error = NULL;
  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL,
                    NULL, &error))
    g_warning("fusermount3 -u %s: %s", mnt, error->message);
}

static gboolean
on_signal(gpointer data)
{
  Daemon *d = data;
  if (d->stopping)
    return G_SOURCE_CONTINUE;
  d->stopping = TRUE;
  g_message("signal received: unmounting %s", d->fs->opts->mountpoint);
  fuse_session_exit(d->fs->se);
  detach_mount(d);
  d->abort_source = g_timeout_add_seconds(ABORT_GRACE_SECONDS, abort_connection, d);
  return G_SOURCE_CONTINUE;
}

/* FUSE mounts start with the kernel's default readahead (128 KiB), and
 * INIT can only lower it.  Sequential copies of disk images gain from a
 * larger window: raise it through the mount's bdi, where root may.  Best
 * effort: a failure only costs speed. */
static void
widen_readahead(dev_t dev)
{
  g_autofree char *path = g_strdup_printf("/sys/class/bdi/%u:%u/read_ahead_kb", major(dev),
                                          minor(dev));
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    g_debug("readahead: %s: %s", path, g_strerror(errno));
    return;
  }
  g_autofree char *value = g_strdup_printf("%d", VIRTSNAPFS_MAX_READ / 1024);
  if (write(fd, value, strlen(value)) < 0)
    g_debug("readahead: %s: %s", path, g_strerror(errno));
  close(fd);
}

/* ------------------------------------------------------------------ */
/* Going to the background.                                             */

/* Forks; the parent waits for the child's word and exits with it.
 * Returns the write end of the pipe in the child. */
static int
daemon_fork(void)
{
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) < 0) {
    perror("virtsnapfs: pipe");
    return -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    perror("virtsnapfs: fork");
    return -1;
  }
  if (pid > 0) {
    close(pipefd[1]);
    char status = 1;
    if (read(pipefd[0], &status, 1) != 1)
      status = 1;
    _exit(status);
  }
  close(pipefd[0]);
  setsid();
  return pipefd[1];
}

static void
daemon_ready(int notify_fd, char status)
{
  if (notify_fd < 0)
    return;
  if (status == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, STDIN_FILENO);
      dup2(null, STDOUT_FILENO);
      dup2(null, STDERR_FILENO);
      if (null > STDERR_FILENO)
        close(null);
    }
    log_use_syslog();
  }
  if (write(notify_fd, &status, 1) != 1) {
    /* The parent is gone; nothing to tell. */
  }
  close(notify_fd);
}

/* ------------------------------------------------------------------ */

static void
print_version(void)
{
  printf("virtsnapfs %s\n", VIRTSNAPFS_VERSION);
  printf("libfuse %s (FUSE_USE_VERSION %d)\n", fuse_pkgversion(), FUSE_USE_VERSION);
}

static int
run(Virtsnapfs *fs, FuseArgs *args)
{
  VirtsnapfsOptions *opts = fs->opts;
  g_autoptr(GError) error = NULL;
  int notify_fd = -1;

  /* The kernel checks the modes (dirs 0555, files 0444) for everyone. */
  fuse_opt_add_arg(args, "-odefault_permissions");
  fuse_opt_add_arg(args, "-osubtype=virtsnapfs");
  g_autofree char *fsname = g_strdup_printf("-ofsname=%s", opts->uri ? opts->uri : "virtsnapfs");
  g_autofree char *fsname_escaped = NULL;
  {
    /* fuse_opt splits on commas; a backslash escapes them. */
    g_auto(GStrv) parts = g_strsplit(fsname, ",", -1);
    fsname_escaped = g_strjoinv("\\,", parts);
  }
  fuse_opt_add_arg(args, fsname_escaped);

  g_autoptr(FuseSession) se = fuse_session_new(args, &ops_table, sizeof ops_table, fs);
  if (se == NULL) {
    fprintf(stderr, "virtsnapfs: cannot create the FUSE session (see above)\n");
    return 1;
  }
  fs->se = se;

  if (!opts->foreground) {
    notify_fd = daemon_fork();
    if (notify_fd < 0)
      return 1;
  }

  g_autofree char *image_dirs = g_strjoinv(":", (char **)opts->image_dirs_strv);
  g_message("virtsnapfs %s: uri=%s mountpoint=%s state_dir=%s image_dirs=%s",
            VIRTSNAPFS_VERSION, opts->uri ? opts->uri : "(several hosts)", opts->mountpoint,
            opts->state_dir, image_dirs[0] ? image_dirs : "(pools and disk directories)");

  if (!hosts_connect(fs, &error)) {
    g_printerr("virtsnapfs: %s\n", error->message);
    daemon_ready(notify_fd, 1);
    return 1;
  }

  if (fuse_session_mount(se, opts->mountpoint) != 0) {
    g_printerr("virtsnapfs: cannot mount on %s\n", opts->mountpoint);
    hosts_disconnect(fs);
    daemon_ready(notify_fd, 1);
    return 1;
  }
  clock_gettime(CLOCK_REALTIME, &fs->mount_time);

  Daemon d = { .fs = fs };
  g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
  d.loop = loop;
  g_unix_signal_add(SIGINT, on_signal, &d);
  g_unix_signal_add(SIGTERM, on_signal, &d);
  g_unix_signal_add(SIGHUP, on_signal, &d);

  /* The FUSE thread (and the workers it starts) block the signals, so
   * they arrive on the main thread. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  d.fuse_thread = g_thread_new("fuse", fuse_thread_main, &d);
  pthread_sigmask(SIG_SETMASK, &old, NULL);

  struct stat st;
  if (stat(opts->mountpoint, &st) == 0) {
    d.mount_dev = st.st_dev;
    widen_readahead(st.st_dev);
  }
  g_message("mounted %s on %s", opts->uri ? opts->uri : "several hosts", opts->mountpoint);
  daemon_ready(notify_fd, 0);

  g_main_loop_run(loop);

  /* The FUSE loop has ended (unmounted) unless a signal stopped the main
   * loop some other way: make sure of it before tearing down. */
  if (!g_atomic_int_get(&d.fuse_done)) {
    fuse_session_exit(se);
    detach_mount(&d);
  }
  g_thread_join(d.fuse_thread);
  if (d.abort_source)
    g_source_remove(d.abort_source);
  /* No more invalidations: the main loop that sends them has ended. */
  for (guint i = 0; i < fs->hosts->len; i++)
    backend_set_listener(((VirtsnapfsHost *)fs->hosts->pdata[i])->backend, NULL, NULL);
  ops_release_all(fs);
  fuse_session_unmount(se);
  hosts_disconnect(fs); /* thaws what is still frozen */
  fs->se = NULL;
  g_message("unmounted %s", opts->mountpoint);
  return d.fuse_status < 0 ? 1 : 0;
}

int
main(int argc, char *argv[])
{
  g_auto(FuseArgs) args = FUSE_ARGS_INIT(argc, argv);
  VirtsnapfsOptions opts;
  g_autoptr(GError) error = NULL;

  options_init(&opts);
  log_setup(FALSE, FALSE);
  if (!options_parse(&opts, &args, &error)) {
    fprintf(stderr, "virtsnapfs: %s\n", error->message);
    options_clear(&opts);
    return 1;
  }
  if (opts.show_help) {
    options_print_help(argv[0]);
    options_clear(&opts);
    return 0;
  }
  if (opts.show_version) {
    print_version();
    options_clear(&opts);
    return 0;
  }
  if (!options_validate(&opts, &error)) {
    fprintf(stderr, "virtsnapfs: %s\n", error->message);
    options_clear(&opts);
    return 1;
  }
  log_setup(opts.debug, FALSE);

  Virtsnapfs fs = { 0 };
  fs.opts = &opts;
  fs.uid = getuid();
  fs.gid = getgid();
  fs.tree = tree_new();
  fs.deltas = delta_cache_new();
  g_mutex_init(&fs.files_lock);
  fs.files = g_hash_table_new(NULL, NULL);
  invalidate_init(&fs);

  int status = run(&fs, &args);

  invalidate_clear(&fs);
  g_hash_table_unref(fs.files);
  g_mutex_clear(&fs.files_lock);
  delta_cache_free(fs.deltas);
  tree_free(fs.tree);
  options_clear(&opts);
  return status;
}
