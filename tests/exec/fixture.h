/* fixture.h: a private qemu:///embed root with domains on qcow2 images,
 * for the snapshot executor's tests, and the invariant they check after
 * every operation.
 *
 * One process owns one embed root (libvirt's embedded driver allows one
 * root per process), so each test program makes one fixture and its cases
 * use domains of their own names in it.  The Backend is the only libvirt
 * connection; the fixture reaches libvirt through it.
 */
#pragma once

#include "snap-private.h"

typedef struct {
  char *dir;       /* temporary directory, removed at the end */
  char *root;      /* the embed root */
  char *images;    /* where the images live */
  char *state;     /* the backend's state directory */
  char *uri;
  Snap *snap;
  Backend *backend; /* snap's */
  GString *log;    /* messages of G_LOG_DOMAIN "virtsnapfs" since the last clear */
} Fixture;

/* Creates the root and opens a Snap on it; exits 77 (skip) when
 * qemu-system-x86_64 or qemu-img is missing. */
Fixture *fixture_new(void);
void fixture_free(Fixture *fixture);
/* crash: snap_abandon() (what kill -9 leaves) instead of snap_free();
 * then snap_new() on the same root and state directory. */
void fixture_reopen(Fixture *fixture, gboolean crash);
virConnectPtr fixture_conn(Fixture *fixture);
virDomainPtr fixture_domain(Fixture *fixture, const char *name);

/* Defines domain name with n_disks qcow2 disks vda, vdb, ... of size MiB
 * each, in images/<name>/. */
void fixture_define(Fixture *fixture, const char *name, guint n_disks, guint size_mib);
void fixture_start(Fixture *fixture, const char *name);
void fixture_stop(Fixture *fixture, const char *name);
gboolean fixture_running(Fixture *fixture, const char *name);
/* A guest write of len bytes of pattern at offset on disk index disk
 * (0 = vda): through the monitor (qemu-io, then flush) when running,
 * with qemu-io on the active image otherwise. */
void fixture_write(Fixture *fixture, const char *name, guint disk, guint64 offset, guint64 len,
                   guint8 pattern);

/* The content of every point in time and of the present: "snapshot/vda"
 * and "@now/vda" -> SHA-256 of the whole guest disk. */
GHashTable *fixture_picture(Fixture *fixture, const char *name);
/* The invariant after an operation: every entry of expect is in the
 * picture now with the same checksum, and the picture has no other
 * entries; qemu-img check is clean on every image; every snapshot's
 * overlays exist and back onto its point images; no image file in the
 * domain's directory is outside every chain; no journal is left. */
void fixture_check(Fixture *fixture, const char *name, GHashTable *expect);
/* Renames the entries of prefix from/ to to/ in a picture. */
void fixture_picture_rename(GHashTable *picture, const char *from, const char *to);
void fixture_picture_drop(GHashTable *picture, const char *prefix);
/* Copies the entries of from/ to to/. */
void fixture_picture_copy(GHashTable *picture, const char *from, const char *to);

/* Asserts a snapshot operation failed with errno code. */
#define fixture_assert_errno(err, errno_value)                                   \
  G_STMT_START {                                                                 \
    g_assert_nonnull(err);                                                       \
    if ((err)->code != (errno_value))                                            \
      g_error("expected errno %d, got %d: %s", (errno_value), (err)->code,       \
              (err)->message);                                                   \
  } G_STMT_END

void fixture_log_clear(Fixture *fixture);
