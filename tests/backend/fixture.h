/* fixture.h: a private qemu:///embed root for the libvirt tests, with
 * helpers to make images, define domains, write into a running guest and
 * read images back through qemu-img.  One fixture per process: an embed
 * root belongs to one process, and libvirt embeds one root per process. */
#pragma once

#include <libvirt/libvirt-qemu.h>

#include "snap-private.h"

typedef struct {
  char *dir;         /* /tmp/vsb-XXXXXX, removed at teardown */
  char *images;      /* dir/images */
  char *state_dir;   /* dir/state */
  char *uri;         /* qemu:///embed?root=dir/root */
  Snap *snap;
  Backend *backend;  /* snap's */
  virConnectPtr conn;
} Fixture;

typedef struct {
  const char *target;   /* "vda", "sda" */
  const char *bus;      /* "virtio", "sata", "ide" */
  const char *path;
  const char *format;   /* "qcow2", "raw" */
  const char *device;   /* NULL = "disk"; "cdrom" */
} FixtureDisk;

void fixture_setup(Fixture *fx);
/* snap_new() on the root; fx->conn is the backend's connection. */
void fixture_open(Fixture *fx);
/* Destroys running domains, frees the backend, removes the directory. */
void fixture_teardown(Fixture *fx);

/* Runs argv (NULL-terminated) and asserts it exits 0; returns stdout. */
char *fixture_run(const char *const *argv);
/* qemu-img create in fx->images; returns the path. */
char *fixture_image(Fixture *fx, const char *name, const char *format, const char *size,
                    const char *backing, const char *backing_format);
/* qemu-io -c "write -P pattern off len" on an image that no VM uses. */
void fixture_image_write(const char *path, const char *format, guint8 pattern, guint64 offset,
                         guint64 length);
virDomainPtr fixture_define(Fixture *fx, const char *name, const FixtureDisk *disks, guint n);
/* A guest write through the monitor (HMP qemu-io) into the device at
 * qdev_path ("/machine/peripheral/virtio-disk0/virtio-backend",
 * "sata0-0-0"), then a flush so that the image on disk has it. */
void fixture_guest_write(virDomainPtr dom, const char *qdev_path, guint8 pattern, guint64 offset,
                         guint64 length);
/* The guest-visible content of image (qemu-img convert -U -O raw). */
GBytes *fixture_read_image(Fixture *fx, const char *image);
/* Asserts that bytes [offset, offset + length) of content are all pattern. */
void fixture_assert_pattern(GBytes *content, guint8 pattern, guint64 offset, guint64 length);
/* Waits up to timeout_s for the backend's model to satisfy check. */
BackendModel *fixture_wait_model(Fixture *fx, gboolean (*check)(BackendModel *, gpointer),
                                 gpointer data, guint timeout_s);
