/* embed-fixture.h: a private qemu:///embed root for every C test that
 * needs real libvirt and QEMU (tests/fs/virt, tests/fs/snap): the root
 * with its qemu.conf, images, a state directory and a Backend on it, and
 * helpers to make images, define, start and stop domains, write as a
 * guest and read images back through qemu-img.
 *
 * Thread model: the test's main thread; with fixture_watch_log() the log
 * handler may run on the backend's threads too (it locks).
 *
 * One root per process at a time: an embed root belongs to one process,
 * and libvirt embeds one root per process.  The directory is made under
 * VIRTSNAPFS_TEST_DIR when embed-test.sh runs the test (it stops the QEMU
 * processes a failed test leaves), else under the temporary directory.
 * Each new root starts from the QEMU capabilities that earlier roots of
 * the run probed (qemu-caps.sh), so QEMU is probed once per run. */
#pragma once

#include <libvirt/libvirt-qemu.h>

#include "snap-private.h"

typedef struct {
  char *dir;          /* the test's directory, removed at teardown */
  char *root;         /* dir/root: the embed root */
  char *images;       /* dir/images */
  char *state_dir;    /* dir/state: the backend's state directory */
  char *uri;          /* qemu:///embed?root=... */
  Snap *snap;         /* after fixture_open() */
  Backend *backend;   /* snap's, after fixture_open() */
  virConnectPtr conn; /* the backend's connection, after fixture_open() */
  GString *log;       /* with fixture_watch_log(): messages since the last clear */
} Fixture;

typedef struct {
  const char *target; /* "vda", "sda" */
  const char *bus;    /* "virtio", "sata", "ide" */
  const char *path;
  const char *format; /* "qcow2", "raw" */
  const char *device; /* NULL = "disk"; "cdrom" */
} FixtureDisk;

/* Makes the directory and the root; exits 77 (skip) when QEMU, qemu-img
 * or qemu-io is missing. */
void fixture_setup(Fixture *fx);
/* The fields of a root that fixture_setup() made in dir (by another
 * process), without touching it. */
void fixture_attach(Fixture *fx, const char *dir);
/* snap_new() on the root; fx->conn is the backend's connection. */
void fixture_open(Fixture *fx);
/* What kill -9 leaves: the connection closed, snap_abandon(), the
 * fields freed; the directory stays. */
void fixture_abandon(Fixture *fx);
/* Closes the backend (crash: abandons it) and opens a new one on the
 * same root and state directory. */
void fixture_reopen(Fixture *fx, gboolean crash);
/* Destroys running domains, frees the backend, removes the directory. */
void fixture_teardown(Fixture *fx);

/* Every message of G_LOG_DOMAIN "virtsnapfs" goes into fx->log; one at
 * warning level or worse fails the test. */
void fixture_watch_log(Fixture *fx);
void fixture_log_clear(Fixture *fx);

/* fixture_setup(), fixture_watch_log() and fixture_open() on a new
 * fixture; fixture_free() tears it down. */
Fixture *fixture_new(void);
void fixture_free(Fixture *fx);

/* Runs argv (NULL-terminated) and asserts it exits 0; returns stdout. */
char *fixture_run(const char *const *argv);

/* qemu-img create in fx->images; returns the path. */
char *fixture_image(Fixture *fx, const char *name, const char *format, const char *size,
                    const char *backing, const char *backing_format);
/* qemu-io -c "write -P pattern off len" on an image that no VM uses. */
void fixture_image_write(const char *path, const char *format, guint8 pattern, guint64 offset,
                         guint64 length);
/* The guest-visible content of image (qemu-img convert -U -O raw). */
GBytes *fixture_read_image(Fixture *fx, const char *image);
/* Asserts that bytes [offset, offset + length) of content are all pattern. */
void fixture_assert_pattern(GBytes *content, guint8 pattern, guint64 offset, guint64 length);

virDomainPtr fixture_define(Fixture *fx, const char *name, const FixtureDisk *disks, guint n);
/* Defines domain name with n_disks empty qcow2 disks vda, vdb, ... of
 * size_mib MiB each, in images/<name>/, and refreshes the backend. */
void fixture_define_qcow2(Fixture *fx, const char *name, guint n_disks, guint size_mib);
/* A new reference to the domain (asserts it exists). */
virDomainPtr fixture_domain(Fixture *fx, const char *name);
/* Start, stop (destroy), then refresh the backend's model. */
void fixture_start(Fixture *fx, const char *name);
void fixture_stop(Fixture *fx, const char *name);
gboolean fixture_running(Fixture *fx, const char *name);

/* The QOM path of the device of virtio disk number n (0 = vda). */
char *fixture_virtio_qdev(guint n);
/* An HMP command; a reply that reports an error fails the test. */
void fixture_monitor(virDomainPtr dom, const char *command);
/* A guest write through the monitor (HMP qemu-io) into the device at
 * qdev_path (fixture_virtio_qdev(0), "sata0-0-0"), then a flush so that
 * the image on disk has it. */
void fixture_guest_write(virDomainPtr dom, const char *qdev_path, guint8 pattern, guint64 offset,
                         guint64 length);
/* A write of len bytes of pattern at offset on virtio disk number disk of
 * a domain: as a guest write when it runs, with qemu-io on its active
 * image when it is shut off. */
void fixture_write(Fixture *fx, const char *name, guint disk, guint64 offset, guint64 len,
                   guint8 pattern);

/* Waits up to timeout_s for the backend's model to satisfy check. */
BackendModel *fixture_wait_model(Fixture *fx, gboolean (*check)(BackendModel *, gpointer),
                                 gpointer data, guint timeout_s);
