/* qemu-img.c: the one way the daemon runs qemu-img.
 *
 * Offline steps of a plan and the thaw of a shut-off domain's @now
 * overlay run qemu-img (commit, rebase, create).  It runs as a child that
 * dies with the daemon: a qemu-img left running by a killed daemon would
 * hold the write lock on the image that recovery at the next start must
 * write; killed, its work is cut short, which every caller is ready for.
 * Commits run at -o bandwidth= (qemu-img's -r is in bytes per second) and
 * with write-through caching, so that a commit cut short leaves no header
 * that names clusters it has not written.
 *
 * Thread model: blocks the calling thread until qemu-img exits; any thread.
 */
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "backend-private.h"

/* In the child before exec: SIGKILL when the daemon goes. */
static void
die_with_parent(gpointer parent)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != GPOINTER_TO_INT(parent))
    _exit(127); /* the daemon died before prctl() */
}

gboolean
backend_qemu_img(const char *const *argv, GError **error)
{
  g_autoptr(GPtrArray) args = g_ptr_array_new();
  g_ptr_array_add(args, (gpointer) "qemu-img");
  for (guint i = 0; argv[i]; i++)
    g_ptr_array_add(args, (gpointer)argv[i]);
  g_ptr_array_add(args, NULL);
  g_autofree char *cmdline = g_strjoinv(" ", (char **)args->pdata);
  g_debug("%s", cmdline);

  g_autofree char *err_out = NULL;
  int status;
  g_autoptr(GError) spawn_error = NULL;
  if (!g_spawn_sync(NULL, (char **)args->pdata, NULL,
                    G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL, die_with_parent,
                    GINT_TO_POINTER(getpid()), NULL, &err_out,
                    &status, &spawn_error)) {
    g_set_error(error, BACKEND_ERROR, EIO, "%s: %s", cmdline, spawn_error->message);
    return FALSE;
  }
  g_autoptr(GError) wait_error = NULL;
  if (!g_spawn_check_wait_status(status, &wait_error)) {
    g_set_error(error, BACKEND_ERROR, EIO, "%s: %s: %s", cmdline, wait_error->message,
                err_out ? g_strstrip(err_out) : "");
    return FALSE;
  }
  return TRUE;
}

gboolean
backend_qemu_img_commit(Backend *backend, const char *image, ChainFormat format,
                        const char *base, GError **error)
{
  g_autoptr(GPtrArray) argv = g_ptr_array_new();
  const char *head[] = {"commit", "-q", "-t", "writethrough", "-f", chain_format_name(format)};
  for (guint i = 0; i < G_N_ELEMENTS(head); i++)
    g_ptr_array_add(argv, (gpointer)head[i]);
  if (base) {
    g_ptr_array_add(argv, (gpointer) "-d");
    g_ptr_array_add(argv, (gpointer) "-b");
    g_ptr_array_add(argv, (gpointer)base);
  }
  /* No -r: unlimited. */
  g_autofree char *rate = g_strdup_printf("%lu", backend->bandwidth_mib * 1024 * 1024);
  if (backend->bandwidth_mib) {
    g_ptr_array_add(argv, (gpointer) "-r");
    g_ptr_array_add(argv, rate);
  }
  g_ptr_array_add(argv, (gpointer)image);
  g_ptr_array_add(argv, NULL);
  return backend_qemu_img((const char *const *)argv->pdata, error);
}
