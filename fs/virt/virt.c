/* virt.c: process-wide libvirt set-up: the error quark, libvirt's error
 * routing into glib, and the event loop thread.
 *
 * libvirt's default event implementation is global to the process, so the
 * thread that runs it is too: it is started by the first backend_new() and
 * stopped when the last backend goes (reference count under event_lock).
 * Event callbacks run on that thread and must never call back into
 * libvirt with slow calls; they only record and wake the worker.
 */
#include <errno.h>

#include "backend-private.h"

G_DEFINE_QUARK(virtsnapfs-backend-error-quark, backend_error)

static GMutex event_lock;
static GThread *event_thread;
static guint event_users;
static gint event_quit;
static GPtrArray *free_at_stop; /* of Garbage, freed after the thread's end */

/* libvirt prints its errors on stderr by default; they belong in our
 * debug log, and the ones that matter reach the user through GErrors. */
static void
on_libvirt_error(void *opaque, virErrorPtr err)
{
  if (err && err->message)
    g_debug("libvirt: %s", err->message);
}

void
backend_virt_init(void)
{
  static gsize done;
  if (g_once_init_enter(&done)) {
    virSetErrorFunc(NULL, on_libvirt_error);
    if (virEventRegisterDefaultImpl() < 0)
      g_warning("cannot register libvirt's event loop: %s", virGetLastErrorMessage());
    g_once_init_leave(&done, 1);
  }
}

void
backend_set_virt_error(GError **error, const char *format, ...)
{
  va_list args;
  va_start(args, format);
  g_autofree char *what = g_strdup_vprintf(format, args);
  va_end(args);
  g_set_error(error, BACKEND_ERROR, EIO, "%s: %s", what, virGetLastErrorMessage());
}

static gpointer
event_loop_run(gpointer data)
{
  while (!g_atomic_int_get(&event_quit)) {
    if (virEventRunDefaultImpl() < 0)
      g_debug("libvirt event loop: %s", virGetLastErrorMessage());
  }
  return NULL;
}

gboolean
backend_event_loop_start(GError **error)
{
  backend_virt_init();
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&event_lock);
  if (event_users++ > 0)
    return TRUE;
  g_atomic_int_set(&event_quit, 0);
  event_thread = g_thread_try_new("libvirt-events", event_loop_run, NULL, error);
  if (!event_thread) {
    event_users--;
    return FALSE;
  }
  return TRUE;
}

static void
on_wake_timeout(int timer, void *opaque)
{
  virEventRemoveTimeout(timer);
}

typedef struct {
  gpointer data;
  GDestroyNotify free_func;
} Garbage;

static void
garbage_free(gpointer item)
{
  Garbage *garbage = item;
  garbage->free_func(garbage->data);
  g_free(garbage);
}

void
backend_event_loop_free_later(gpointer data, GDestroyNotify free_func)
{
  Garbage *garbage = g_new(Garbage, 1);
  *garbage = (Garbage){data, free_func};
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&event_lock);
  if (!free_at_stop)
    free_at_stop = g_ptr_array_new_with_free_func(garbage_free);
  g_ptr_array_add(free_at_stop, garbage);
}

void
backend_event_loop_stop(void)
{
  g_autoptr(GMutexLocker) locker = g_mutex_locker_new(&event_lock);
  g_return_if_fail(event_users > 0);
  if (--event_users > 0)
    return;
  g_atomic_int_set(&event_quit, 1);
  /* A timer that fires at once makes virEventRunDefaultImpl() return. */
  if (virEventAddTimeout(0, on_wake_timeout, NULL, NULL) < 0)
    g_warning("cannot wake libvirt's event loop: %s", virGetLastErrorMessage());
  g_thread_join(g_steal_pointer(&event_thread));
  g_clear_pointer(&free_at_stop, g_ptr_array_unref);
}
