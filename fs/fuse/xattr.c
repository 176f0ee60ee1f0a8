/* xattr.c: the user.virtsnapfs.* extended attributes.
 *
 * On a disk file:
 *   user.virtsnapfs.point_image   path of the image whose chain the file
 *                                 reads (the point image; for @now the
 *                                 active image, frozen at open)
 *   user.virtsnapfs.chain_depth   layers in that chain
 *   user.virtsnapfs.allocated     bytes that read from allocated data
 *   user.virtsnapfs.format        format of the top image
 *   user.virtsnapfs.unavailable   only on a disk that is not visible on
 *                                 this machine (a remote host without
 *                                 shared storage): why; open() of such a
 *                                 disk fails with EREMOTE
 * On a .delta file (delta.c): point_image, parent (the parent snapshot's
 * directory name, empty for the first point in time), parent_image, granularity,
 * delta_bytes (the exact data size; computed if not known yet).
 * On a domain directory:
 *   user.virtsnapfs.job           the running operation and its progress
 *                                 (snap_job_status), or "idle"
 * Values are text without a trailing newline, as `getfattr -d` shows them.
 *
 * Thread model: FUSE workers; answers from the current model and the info
 * cache (info.c), no state of its own.
 */
#include "virtsnapfs.h"

#include <errno.h>
#include <string.h>

#define XATTR_PREFIX "user.virtsnapfs."

static const char *const disk_names[] = {
  XATTR_PREFIX "point_image",
  XATTR_PREFIX "chain_depth",
  XATTR_PREFIX "allocated",
  XATTR_PREFIX "format",
};
#define XATTR_UNAVAILABLE XATTR_PREFIX "unavailable"
static const char *const domain_names[] = {
  XATTR_PREFIX "job",
};

/* The value of name on node, or NULL with *err set (ENODATA: no such
 * attribute). */
static char *
xattr_value(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, const char *name,
            int *err)
{
  *err = ENODATA;
  if (!g_str_has_prefix(name, XATTR_PREFIX))
    return NULL;
  const char *key = name + strlen(XATTR_PREFIX);

  if (node->kind == TREE_DOMAIN) {
    if (tree_node_domain(node, model) == NULL) {
      *err = ENOENT;
      return NULL;
    }
    if (g_str_equal(key, "job")) {
      char *status = snap_job_status(hosts_of_node(fs, node)->snap, node->domain);
      return status ? status : g_strdup("idle");
    }
    return NULL;
  }
  if (node->kind == TREE_DELTA)
    return delta_xattr(fs, node, model, key, err);
  if (node->kind != TREE_DISK)
    return NULL;

  BackendDisk *disk = tree_find_disk(tree_node_disks(node, model), node->target);
  if (disk == NULL) {
    *err = ENOENT;
    return NULL;
  }
  if (g_str_equal(key, "point_image"))
    return g_strdup(disk->image_path);

  BackendDomain *dom = tree_node_domain(node, model);
  gboolean live = node->point == NULL && dom->running;
  ImageInfo info;
  g_autoptr(GError) error = NULL;
  gboolean unavailable = g_str_equal(key, "unavailable");
  gboolean known = g_str_equal(key, "chain_depth") || g_str_equal(key, "allocated") ||
                   g_str_equal(key, "format") || unavailable;
  if (!known)
    return NULL;
  if (!info_cache_get(hosts_of_node(fs, node)->info, disk,
                      &model->policy, live, &info, &error)) {
    if (g_error_matches(error, CHAIN_ERROR, EREMOTE))
      return unavailable ? g_strdup(error->message) : NULL;
    *err = EIO;
    return NULL;
  }
  if (unavailable)
    return NULL;
  if (g_str_equal(key, "chain_depth"))
    return g_strdup_printf("%u", info.depth);
  if (g_str_equal(key, "allocated"))
    return g_strdup_printf("%" G_GUINT64_FORMAT, info.allocated);
  return g_strdup(chain_format_name(info.format));
}

/* TRUE when node's disk is not visible here (info.c says EREMOTE). */
static gboolean
disk_unavailable(Virtsnapfs *fs, const TreeNode *node)
{
  g_autoptr(BackendModel) model = hosts_node_model(fs, node);
  int err;
  g_autofree char *reason = xattr_value(fs, node, model, XATTR_UNAVAILABLE, &err);
  return reason != NULL;
}

/* Replies with data (or its size when size == 0), ERANGE if too small. */
static void
reply_sized(fuse_req_t req, const char *data, gsize len, size_t size)
{
  if (size == 0)
    fuse_reply_xattr(req, len);
  else if (size < len)
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, data, len);
}

void
xattr_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) node = ops_node_get(req, ino);
  int err;

  if (node == NULL)
    return;
  g_autoptr(BackendModel) model = hosts_node_model(fs, node);
  if (model == NULL) {
    fuse_reply_err(req, ENODATA); /* the root of several hosts */
    return;
  }
  g_autofree char *value = xattr_value(fs, node, model, name, &err);
  g_debug("GETXATTR %s %s => %s", node->display, name, value ? value : g_strerror(err));
  if (value == NULL) {
    fuse_reply_err(req, err);
    return;
  }
  reply_sized(req, value, strlen(value), size);
}

void
xattr_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
  Virtsnapfs *fs = fuse_req_userdata(req);
  g_autoptr(TreeNode) node = ops_node_get(req, ino);
  const char *const *names = NULL;
  gsize n = 0;

  if (node == NULL)
    return;
  if (node->kind == TREE_DISK) {
    names = disk_names;
    n = G_N_ELEMENTS(disk_names);
  } else if (node->kind == TREE_DOMAIN) {
    names = domain_names;
    n = G_N_ELEMENTS(domain_names);
  } else if (node->kind == TREE_DELTA) {
    names = (const char *const *)delta_xattr_names;
    n = g_strv_length((char **)delta_xattr_names);
  }
  g_autoptr(GString) list = g_string_new(NULL);
  for (gsize i = 0; i < n; i++)
    g_string_append_len(list, names[i], (gssize)strlen(names[i]) + 1);
  if (node->kind == TREE_DISK && disk_unavailable(fs, node))
    g_string_append_len(list, XATTR_UNAVAILABLE, sizeof XATTR_UNAVAILABLE);
  reply_sized(req, list->str, list->len, size);
}
