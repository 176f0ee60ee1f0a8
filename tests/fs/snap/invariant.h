/* invariant.h: what the snapshot executor's tests check after every
 * operation, on a domain of an embed-fixture root: a picture of every
 * point in time and of the present (checksums of what they read), and
 * the invariant that no image is lost, left over or damaged.
 *
 * Thread model: the test's main thread.  Each test program makes one
 * fixture (fixture_new()) and its cases use domains of their own names
 * in it.
 */
#pragma once

#include "embed-fixture.h"
#include "exec.h"

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
