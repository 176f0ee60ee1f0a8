/* test-policy: how chain_open() follows backing names (the image policy),
 * and the small public helpers (format names, layer accessors, per-layer
 * allocation bitmaps).
 *
 * Images live in DIR/images (the policy's only image directory); DIR/outside
 * holds files a hostile backing name may try to reach.
 */
#include <errno.h>
#include <glib/gstdio.h>
#include <unistd.h>

#include "chain.h"

static char *tmpdir;
static char *images;

static void
sh(const char *cmd)
{
  g_autofree char *full = g_strdup_printf("cd '%s' && %s", images, cmd);
  const char *argv[] = {"sh", "-c", full, NULL};
  g_autoptr(GError) error = NULL;
  g_autofree char *err = NULL;
  gint status;
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL,
                             G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, NULL,
                             &err, &status, &error));
  if (!g_spawn_check_wait_status(status, &error))
    g_error("%s: %s\n%s", cmd, error->message, err);
}

static Chain *
open_in(const char *name, ChainFormat format, const ChainFormat *backing, GError **error)
{
  g_autofree char *path = g_build_filename(images, name, NULL);
  const char *dirs[] = {images, NULL};
  ChainPolicy policy = {.image_dirs = dirs};
  return chain_open(path, format, backing, &policy, error);
}

/* Expects chain_open(name) to fail with code and a message containing
 * what. */
static void
expect_refusal(const char *name, int code, const char *what)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = open_in(name, CHAIN_FORMAT_QCOW2, NULL, &error);
  g_assert_null(chain);
  g_assert_error(error, CHAIN_ERROR, code);
  g_test_message("%s", error->message);
  if (strstr(error->message, what) == NULL)
    g_error("message \"%s\" lacks \"%s\"", error->message, what);
}

static void
test_formats(void)
{
  g_assert_cmpstr(chain_format_name(CHAIN_FORMAT_RAW), ==, "raw");
  g_assert_cmpstr(chain_format_name(CHAIN_FORMAT_QCOW2), ==, "qcow2");
  g_assert_cmpint(chain_format_from_name("qcow2"), ==, CHAIN_FORMAT_QCOW2);
  g_assert_cmpint(chain_format_from_name("raw"), ==, CHAIN_FORMAT_RAW);
  g_assert_cmpint(chain_format_from_name("vmdk"), ==, CHAIN_FORMAT_UNKNOWN);
  g_assert_cmpint(chain_format_from_name(NULL), ==, CHAIN_FORMAT_UNKNOWN);
  g_autoptr(GError) error = NULL;
  g_autoptr(ChainLayer) layer = chain_layer_open("/nonexistent", CHAIN_FORMAT_UNKNOWN, &error);
  g_assert_null(layer);
  g_assert_error(error, CHAIN_ERROR, EINVAL);
}

static void
test_relative_names(void)
{
  /* sub/top.qcow2 -> ../base/b.qcow2 -> raw in the same directory. */
  sh("mkdir -p base sub && truncate -s 1M base/b.raw && "
     "qemu-img create -q -f qcow2 -b b.raw -F raw base/b.qcow2 && "
     "qemu-img create -q -f qcow2 -b ../base/b.qcow2 -F qcow2 sub/top.qcow2");
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = open_in("sub/top.qcow2", CHAIN_FORMAT_QCOW2, NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_depth(chain), ==, 3);
  g_assert_cmpint(chain_layer_format(chain_get_layer(chain, 2)), ==, CHAIN_FORMAT_RAW);
  g_assert_true(g_str_has_suffix(chain_layer_path(chain_get_layer(chain, 2)), "/base/b.raw"));
  g_assert_cmpstr(chain_layer_backing_name(chain_get_layer(chain, 0)), ==, "../base/b.qcow2");
  g_assert_cmpint(chain_layer_backing_format(chain_get_layer(chain, 0)), ==, CHAIN_FORMAT_QCOW2);
  g_assert_cmpuint(chain_virtual_size(chain), ==, 1024 * 1024);
  g_assert_cmpuint(chain_layer_cluster_size(chain_get_layer(chain, 0)), ==, 65536);
  ChainLayer *top = chain_get_layer(chain, 0);
  g_assert_cmpint(chain_layer_fd(top), >=, 0);
  g_assert_cmpuint(chain_layer_virtual_size(top), ==, 1024 * 1024);
  g_assert_true(chain_layer_ino(top) != chain_layer_ino(chain_get_layer(chain, 1)) ||
                chain_layer_dev(top) != chain_layer_dev(chain_get_layer(chain, 1)));
}

static void
test_protocols(void)
{
  sh("qemu-img create -q -f qcow2 plain.qcow2 1M && cp plain.qcow2 json.qcow2 && "
     "cp plain.qcow2 nbd.qcow2 && "
     "qemu-img rebase -u -b 'json:{\"file.filename\":\"plain.qcow2\"}' -F qcow2 json.qcow2 && "
     "qemu-img rebase -u -b 'nbd://localhost/x' -F raw nbd.qcow2");
  expect_refusal("json.qcow2", EACCES, "json:");
  expect_refusal("nbd.qcow2", EACCES, "not a local path");
}

static void
test_outside(void)
{
  /* A raw backing file outside the image directories, named directly or
   * through a symlink inside them. */
  sh("qemu-img create -q -f qcow2 -u -b /etc/passwd -F raw passwd.qcow2 1M && "
     "truncate -s 1M ../outside/secret.raw && ln -sf ../outside/secret.raw link.raw && "
     "qemu-img create -q -f qcow2 -u -b link.raw -F raw symlink.qcow2 1M && "
     "qemu-img create -q -f qcow2 -u -b ../outside/secret.raw -F raw dotdot.qcow2 1M");
  expect_refusal("passwd.qcow2", EACCES, "not under an image directory");
  expect_refusal("symlink.qcow2", EACCES, "not under an image directory");
  expect_refusal("dotdot.qcow2", EACCES, "not under an image directory");

  /* The top itself is checked too. */
  g_autofree char *outside = g_build_filename(tmpdir, "outside", "secret.raw", NULL);
  const char *dirs[] = {images, NULL};
  ChainPolicy policy = {.image_dirs = dirs};
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = chain_open(outside, CHAIN_FORMAT_RAW, NULL, &policy, &error);
  g_assert_null(chain);
  g_assert_error(error, CHAIN_ERROR, EACCES);

  /* No restriction: tools may open it. */
  g_clear_error(&error);
  g_autoptr(Chain) free_chain = chain_open(outside, CHAIN_FORMAT_RAW, NULL, NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_depth(free_chain), ==, 1);

  /* Not a regular file or block device. */
  g_clear_error(&error);
  g_autoptr(Chain) dir_chain = chain_open(images, CHAIN_FORMAT_RAW, NULL, NULL, &error);
  g_assert_null(dir_chain);
  g_assert_error(error, CHAIN_ERROR, EACCES);
}

static void
test_missing(void)
{
  sh("qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 orphan.qcow2 1M");
  expect_refusal("orphan.qcow2", ENOENT, "gone.qcow2");
  expect_refusal("no-such-file.qcow2", ENOENT, "no-such-file");
}

static void
test_formats_needed(void)
{
  /* No backing format extension: not followed unless the caller knows. */
  sh("qemu-img create -q -f qcow2 fmtbase.qcow2 1M && "
     "qemu-io -f qcow2 -c 'write -P 7 0 64k' fmtbase.qcow2 && "
     "qemu-img create -q -f qcow2 -u -b fmtbase.qcow2 -F qcow2 nofmt.qcow2 1M && "
     /* turn the backing format extension (at 0x70) into an unknown one */
     "printf '\\022\\064\\126\\170' | dd of=nofmt.qcow2 bs=1 seek=112 conv=notrunc status=none");
  expect_refusal("nofmt.qcow2", EACCES, "never probed");

  g_autoptr(GError) error = NULL;
  ChainFormat formats[] = {CHAIN_FORMAT_QCOW2, CHAIN_FORMAT_UNKNOWN};
  g_autoptr(Chain) chain = open_in("nofmt.qcow2", CHAIN_FORMAT_QCOW2, formats, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_depth(chain), ==, 2);
  guint8 buf[4];
  g_assert_cmpint(chain_read(chain, buf, sizeof(buf), 100), ==, 4);
  g_assert_cmpint(buf[0], ==, 7);

  /* A top of unknown format is refused: the top's comes from libvirt. */
  g_clear_error(&error);
  g_autoptr(Chain) unknown = open_in("nofmt.qcow2", CHAIN_FORMAT_UNKNOWN, NULL, &error);
  g_assert_null(unknown);
  g_assert_error(error, CHAIN_ERROR, EINVAL);
}

static void
test_allocation(void)
{
  sh("qemu-img create -q -f qcow2 -o cluster_size=4k alloc-base.qcow2 1M && "
     "qemu-io -f qcow2 -c 'write -P 1 0 256k' alloc-base.qcow2 && "
     "qemu-img create -q -f qcow2 -o cluster_size=4k -b alloc-base.qcow2 -F qcow2 alloc.qcow2 && "
     "qemu-io -f qcow2 -c 'write -P 2 4096 100' -c 'write -z 65536 8192' "
     "-c 'write -c -P 3 131072 4096' alloc.qcow2");
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = open_in("alloc.qcow2", CHAIN_FORMAT_QCOW2, NULL, &error);
  g_assert_no_error(error);

  g_autoptr(ChainBitmap) top = chain_layer_allocation(chain_get_layer(chain, 0), 4096, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_bitmap_count(top), ==, 1 + 2 + 1); /* data, zero x2, compressed */
  g_assert_true(chain_bitmap_get(top, 1));
  g_assert_true(chain_bitmap_get(top, 16));
  g_assert_true(chain_bitmap_get(top, 17));
  g_assert_true(chain_bitmap_get(top, 32));
  g_assert_false(chain_bitmap_get(top, 0));

  g_autoptr(ChainBitmap) base = chain_layer_allocation(chain_get_layer(chain, 1), 4096, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_bitmap_count(base), ==, 64);
  /* What a pull would copy: in base and not overridden by top. */
  g_assert_cmpuint(chain_bitmap_count_and_not(base, top), ==, 64 - 4);

  /* Coarser granularity: a cluster marks every granule it touches. */
  g_autoptr(ChainBitmap) coarse = chain_layer_allocation(chain_get_layer(chain, 0), 65536, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(chain_bitmap_count(coarse), ==, 3);

  /* The merged count: everything top overrides lies in base's 256 KiB,
   * and only its two zero clusters hide data. */
  g_assert_cmpint(chain_allocated_bytes(chain), ==, 256 * 1024 - 8192);
}

static void
test_refs(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(Chain) chain = open_in("plain.qcow2", CHAIN_FORMAT_QCOW2, NULL, &error);
  g_assert_no_error(error);
  /* A layer outlives its chain while referenced. */
  ChainLayer *layer = chain_layer_ref(chain_get_layer(chain, 0));
  Chain *again = chain_ref(chain);
  chain_unref(again);
  g_clear_pointer(&chain, chain_unref);
  g_assert_cmpuint(chain_layer_virtual_size(layer), ==, 1024 * 1024);
  chain_layer_unref(layer);
}

int
main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  for (const char *tool = "qemu-img\0qemu-io\0"; *tool; tool += strlen(tool) + 1) {
    g_autofree char *found = g_find_program_in_path(tool);
    if (found == NULL) {
      g_print("1..0 # SKIP %s is not installed\n", tool);
      return 77;
    }
  }
  g_autoptr(GError) error = NULL;
  tmpdir = g_dir_make_tmp("chain-policy-XXXXXX", &error);
  g_assert_no_error(error);
  images = g_build_filename(tmpdir, "images", NULL);
  g_autofree char *outside = g_build_filename(tmpdir, "outside", NULL);
  g_assert_cmpint(g_mkdir(images, 0700), ==, 0);
  g_assert_cmpint(g_mkdir(outside, 0700), ==, 0);

  g_test_add_func("/policy/formats", test_formats);
  g_test_add_func("/policy/relative-names", test_relative_names);
  g_test_add_func("/policy/protocols", test_protocols);
  g_test_add_func("/policy/outside", test_outside);
  g_test_add_func("/policy/missing", test_missing);
  g_test_add_func("/policy/formats-needed", test_formats_needed);
  g_test_add_func("/policy/allocation", test_allocation);
  g_test_add_func("/policy/refs", test_refs);
  int status = g_test_run();

  g_autofree char *rm = g_strdup_printf("rm -rf '%s'", tmpdir);
  const char *argv_rm[] = {"sh", "-c", rm, NULL};
  g_spawn_sync(NULL, (char **)argv_rm, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL, NULL);
  g_free(images);
  g_free(tmpdir);
  return status;
}
