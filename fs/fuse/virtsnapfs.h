/* virtsnapfs.h: the private header of the FUSE front end.
 *
 * A map of the FUSE front: each group of prototypes below belongs to one
 * file and names what that file is for.  The libvirt side is behind
 * backend.h (models) and snap.h (changing snapshots, @now, pins), the
 * image reader behind chain.h.  Uses go one way: ops.c (the
 * table) uses the ops-*.c files and xattr.c; ops-change.c, ops-open.c,
 * ops-dir.c and xattr.c use ops-entry.c; ops-open.c uses ops-read.c; all
 * of them use the helpers above them in this header (names, log, errors,
 * tree, info, delta, hosts, invalidate), and no helper uses an operation.
 */
#pragma once

#include "fuse-version.h"

#include <glib.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "backend.h"
#include "snap.h"
#include "chain.h"
#include "prefetch.h"

G_BEGIN_DECLS

#define VIRTSNAPFS_DEFAULT_URI "qemu:///system"
#define VIRTSNAPFS_DEFAULT_STATE_DIR "/var/lib/virtsnapfs"
#define VIRTSNAPFS_DEFAULT_THREADS 16
#define VIRTSNAPFS_DEFAULT_TIMEOUT 1.0
#define VIRTSNAPFS_MAX_BANDWIDTH (1024ul * 1024)  /* MiB/s: 1 TiB/s */
/* SEEK_DATA/SEEK_HOLE report holes in aligned granules of this many KiB
 * (-o hole_granularity): every lseek is a round trip to the daemon, and
 * copying a small hole's zeros through the page cache costs less than
 * the two lseeks that would skip it. */
#define VIRTSNAPFS_DEFAULT_HOLE_KIB 1024u
#define VIRTSNAPFS_MAX_HOLE_KIB (1024u * 1024)  /* 1 GiB */
/* A point in time read sequentially is stored into the kernel's page
 * cache this far ahead of its reader (-o prefetch, prefetch.c). */
#define VIRTSNAPFS_DEFAULT_PREFETCH_KIB (32u * 1024)
#define VIRTSNAPFS_MAX_PREFETCH_KIB (1024u * 1024)  /* 1 GiB */
/* The directory of the present, in every domain directory. */
#define VIRTSNAPFS_NOW "@now"
#define VIRTSNAPFS_RAW_SUFFIX ".raw"
#define VIRTSNAPFS_DELTA_SUFFIX ".delta"
#define VIRTSNAPFS_SNAPSHOT_XML "snapshot.xml"
/* Largest read request: the readahead window, st_blksize, and (through
 * max_write, from which libfuse derives max_pages) the kernel's request
 * size.  Splice replies need a pipe that holds a whole reply plus its
 * header, and pipes grow to /proc/sys/fs/pipe-max-size (1 MiB by default):
 * 1 MiB requests would not fit and libfuse would fall back to copying. */
#define VIRTSNAPFS_MAX_READ (512 * 1024)

/* libfuse types with automatic cleanup. */
typedef struct fuse_session FuseSession;
typedef struct fuse_loop_config FuseLoopConfig;
typedef struct fuse_args FuseArgs;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FuseSession, fuse_session_destroy)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FuseLoopConfig, fuse_loop_cfg_destroy)
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(FuseArgs, fuse_opt_free_args)

/* ------------------------------------------------------------------ */
/* options.c: the command line and -o options, parsed into one struct. */

typedef enum {
  VIRTSNAPFS_REVERT_KEEP,
  VIRTSNAPFS_REVERT_DISCARD,
} VirtsnapfsRevertMode;

/* One libvirt host of the mount (options_validate). */
typedef struct {
  char *name;   /* its directory on a mount of several hosts */
  char *uri;
} VirtsnapfsHostSpec;

typedef struct {
  /* Filled by fuse_opt_parse from the offsetof table (malloc'd). */
  char *state_dir;
  char *revert;
  unsigned max_threads;
  double timeout;
  int no_splice;
  unsigned long bandwidth;   /* MiB/s for block jobs and qemu-img commit, 0 = unlimited */
  unsigned hole_kib;         /* granule of reported holes, 0 = exact */
  unsigned prefetch_kib;     /* stored ahead of a sequential reader, 0 = never */
  /* Filled by the option callback (g_malloc'd). */
  char *source;              /* first positional of two: the mount source */
  char *mountpoint;
  GPtrArray *image_dirs;     /* of char *, -o image_dir= in order */
  GPtrArray *uri_opts;       /* of char *, -o uri=[NAME=]URI in order */
  int n_nonopt;
  gboolean show_help, show_version;
  gboolean foreground, debug, single_thread, allow_other;
  /* Derived by options_validate(). */
  char *uri;                 /* the URI of a mount of one host; NULL for several */
  GPtrArray *hosts;          /* of VirtsnapfsHostSpec, in option order */
  VirtsnapfsRevertMode revert_mode;
  const char **image_dirs_strv; /* NULL-terminated view of image_dirs */
} VirtsnapfsOptions;

void options_init(VirtsnapfsOptions *opts);
void options_clear(VirtsnapfsOptions *opts);
/* Consumes the daemon's options from args; leaves libfuse's in it. */
gboolean options_parse(VirtsnapfsOptions *opts, struct fuse_args *args, GError **error);
/* Fills defaults and checks every value; nothing is mounted yet. */
gboolean options_validate(VirtsnapfsOptions *opts, GError **error);
void options_print_help(const char *argv0);

/* ------------------------------------------------------------------ */
/* names.c: snapshot names <-> entry names (pure functions).          */

/* Returns the entry name for a snapshot name (g_free). */
char *names_escape(const char *name);
/* Returns the snapshot name for an entry name, or NULL if the entry is
 * not one names_escape() can produce (g_free). */
char *names_unescape(const char *entry);
/* TRUE if entry is "<target><suffix>" with a non-empty target. */
gboolean names_is_disk_file(const char *entry, const char *suffix, char **target_out);

/* ------------------------------------------------------------------ */
/* log.c: glib logging to stderr or syslog, libfuse's log routed in.  */

void log_setup(gboolean debug, gboolean to_syslog);
/* g_debug() for the hot paths: formats nothing unless -d. */
#define LOG_TRACE(...)              \
  do {                              \
    if (log_debug_enabled())        \
      g_debug(__VA_ARGS__);         \
  } while (0)
void log_use_syslog(void);
gboolean log_debug_enabled(void);

/* ------------------------------------------------------------------ */
/* errors.c: one way from an error to a FUSE reply.                    */

/* errno for a GError: CHAIN_ERROR and the backend's domain carry errno
 * values as codes; anything else is EIO. */
int errors_to_errno(const GError *error);
/* Replies to req with the errno of error (or EIO), logging nothing. */
void errors_reply_gerror(fuse_req_t req, const GError *error);
/* Replies with -err (err < 0) or err (err > 0). */
void errors_reply_errno(fuse_req_t req, int err);

/* ------------------------------------------------------------------ */
/* tree.c: inode numbers for ([host,] domain, point, file), stable per
 * mount.  Every function that takes components takes the host first: NULL
 * on a mount of one host (no host level), its name otherwise. */

typedef enum {
  TREE_ROOT,
  TREE_HOST,      /* a libvirt host, on a mount of several */
  TREE_DOMAIN,
  TREE_POINT,     /* a snapshot directory, or @now when point == NULL */
  TREE_DISK,      /* <target>.raw */
  TREE_XML,       /* snapshot.xml */
  TREE_DELTA,     /* <target>.delta, in snapshot directories only */
} TreeKind;

typedef struct {
  fuse_ino_t ino;
  TreeKind kind;
  char *host;     /* NULL for the root, and everywhere on a one-host mount */
  char *domain;   /* NULL for the root and hosts */
  char *point;    /* snapshot name (unescaped); NULL for @now and above */
  char *target;   /* disk target, TREE_DISK and TREE_DELTA only */
  char *key;      /* unique: kind and components */
  char *display;  /* for log lines: "demo/s1/vda.raw" */
} TreeNode;

typedef struct _Tree Tree;

Tree *tree_new(void);
void tree_free(Tree *tree);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Tree, tree_free)

TreeNode *tree_node_ref(TreeNode *node);
void tree_node_unref(TreeNode *node);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(TreeNode, tree_node_unref)

/* The node for ino, a new reference, or NULL (ENOENT/ESTALE). */
TreeNode *tree_get(Tree *tree, fuse_ino_t ino);
/* The node for the components, created with a fresh inode number if it
 * does not exist; its lookup count goes up by one (a FUSE entry reply
 * follows).  Returns a new reference. */
TreeNode *tree_lookup(Tree *tree, TreeKind kind, const char *host, const char *domain,
                      const char *point, const char *target);
/* The inode of the components if known, else 0 (no lookup count). */
fuse_ino_t tree_find(Tree *tree, TreeKind kind, const char *host, const char *domain,
                     const char *point, const char *target);
/* The inode of the components, created if needed, without a lookup
 * count (for readdir's d_ino; pruned when it leaves the model). */
fuse_ino_t tree_intern(Tree *tree, TreeKind kind, const char *host, const char *domain,
                       const char *point, const char *target);
/* FUSE forget: drops nlookup; a node that reaches zero and is no longer
 * in the model (its host's) leaves the table (nodes still in the model keep their
 * number for the next lookup). */
void tree_forget(Tree *tree, fuse_ino_t ino, guint64 nlookup, BackendModel *model);
/* Drops forgotten nodes of host that left its model. */
void tree_prune(Tree *tree, const char *host, BackendModel *model);
guint tree_size(Tree *tree);
/* After a snapshot rename: the nodes of (domain, old) and of its files
 * take the name new_name and keep their inode numbers, as a rename on a
 * real filesystem keeps them (the kernel moved its dentries already). */
void tree_rename_point(Tree *tree, const char *host, const char *domain,
                       const char *old_name, const char *new_name);

/* Model lookups for a node; borrowed from model. */
gboolean tree_node_exists(const TreeNode *node, BackendModel *model);
BackendDomain *tree_node_domain(const TreeNode *node, BackendModel *model);
/* The snapshot of a TREE_POINT/DISK/XML node, NULL for @now or gone. */
BackendSnapshot *tree_node_snapshot(const TreeNode *node, BackendModel *model);
/* The disks of the node's point (snapshot disks or the present). */
GPtrArray *tree_node_disks(const TreeNode *node, BackendModel *model);
BackendDisk *tree_find_disk(GPtrArray *disks, const char *target);

/* ------------------------------------------------------------------ */
/* info.c: virtual size, allocation and depth of images, cached.      */

typedef struct {
  guint64 virtual_size;
  guint64 allocated;     /* bytes that read from allocated data */
  guint depth;
  ChainFormat format;
  struct timespec mtime; /* of the top image */
} ImageInfo;

typedef struct _InfoCache InfoCache;

/* label names the host in log lines (NULL: none).  remote: images are
 * read where libvirt's host sees them, and may not be visible here. */
InfoCache *info_cache_new(const char *label, gboolean remote);
void info_cache_free(InfoCache *cache);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(InfoCache, info_cache_free)
/* Facts about disk's chain.  live: the image may be written to (the
 * present of a running domain), so cached facts expire after 5 seconds.
 * Errors are logged once per image and carry the chain's errno; on a
 * remote cache an image (or a layer) that does not exist here is "not
 * visible": code EREMOTE, the reason as message, logged once as a message
 * rather than a warning. */
gboolean info_cache_get(InfoCache *cache, const BackendDisk *disk,
                        const ChainPolicy *policy, gboolean live,
                        ImageInfo *info, GError **error);

/* ------------------------------------------------------------------ */
/* delta.c: <target>.delta files: what changed since the parent point. */

typedef struct _DeltaCache DeltaCache;

DeltaCache *delta_cache_new(void);
void delta_cache_free(DeltaCache *cache);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(DeltaCache, delta_cache_free)

/* ------------------------------------------------------------------ */
/* daemon state shared by every FUSE operation (main.c owns it).      */

typedef struct _VirtsnapfsHost VirtsnapfsHost;

typedef struct {
  VirtsnapfsOptions *opts;
  GPtrArray *hosts;        /* of VirtsnapfsHost *, fixed for the mount */
  gboolean multi_host;     /* a TREE_HOST level under the root */
  struct fuse_session *se;
  Tree *tree;
  DeltaCache *deltas;
  uid_t uid;               /* owner of every entry: the mount owner */
  gid_t gid;
  struct timespec mount_time;
  GMutex files_lock;       /* protects files; taken alone */
  GHashTable *files;       /* VirtsnapfsFile * set: open handles */
  gboolean splice;         /* kernel accepted splice */
  GMutex inval_lock;       /* protects busy_domains; taken alone */
  GHashTable *busy_domains; /* domain with a change request in flight -> InvalBusy
                             * (invalidate.c) */
} Virtsnapfs;

/* ------------------------------------------------------------------ */
/* hosts.c: the libvirt hosts of the mount, one Snap (and backend) each. */

struct _VirtsnapfsHost {
  Virtsnapfs *fs;
  char *name;              /* the host's directory (multi-host mounts) */
  char *tree_host;         /* its nodes' host component: NULL on a
                            * mount of one host, else name */
  char *uri;
  gboolean remote;         /* through a transport or to a server: its
                            * images may not be visible here */
  Snap *snap;              /* changes snapshots; owns backend */
  Backend *backend;        /* models (snap_get_backend) */
  InfoCache *info;
  GMutex lock;             /* protects capacity */
  GHashTable *capacity;    /* image path -> guint64 *: sizes of disks
                            * that are not visible here */
};

/* Connects every host of fs->opts (STATE_DIR/<host>/ when several) and
 * registers invalidate_on_change() for each.  Blocks. */
gboolean hosts_connect(Virtsnapfs *fs, GError **error);
/* Closes every host's Snap (thaws what is still frozen). */
void hosts_disconnect(Virtsnapfs *fs);
/* The host of a node; NULL for the root of a multi-host mount. */
VirtsnapfsHost *hosts_of_node(Virtsnapfs *fs, const TreeNode *node);
VirtsnapfsHost *hosts_find(Virtsnapfs *fs, const char *name);
/* The current model of node's host (new reference), or NULL for the root
 * of a multi-host mount. */
BackendModel *hosts_node_model(Virtsnapfs *fs, const TreeNode *node);
/* TRUE when URI reaches libvirt through a transport (qemu+ssh://) or
 * names a server: then its images may live where this machine cannot see
 * them.  Pure. */
gboolean hosts_uri_is_remote(const char *uri);
/* The size of a disk that is not visible here, as libvirt tells it (0
 * when it cannot), asked once per image.  Blocks on libvirt. */
guint64 hosts_unavailable_size(VirtsnapfsHost *host, const char *domain, gboolean present,
                               const BackendDisk *disk);

/* delta.c, continued: what needs Virtsnapfs. */

/* The delta of a TREE_DELTA node's point against its parent point, from
 * the cache or computed (reading both points; the parent's chain is
 * pinned meanwhile).  chain is the point's open chain, pinned by the
 * caller.  Returns a new reference, or NULL with an errno-coded error
 * (EBUSY: the parent is being deleted). */
ChainDelta *delta_get(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, Chain *chain,
                      GError **error);
/* getattr of a TREE_DELTA node: size, and st_blocks from the data size
 * (exact when known, else an upper bound: see delta.c). */
gboolean delta_stat(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, struct stat *st,
                    int *err);
/* user.virtsnapfs.* of a .delta: key is the name after the prefix;
 * NULL with *err (ENODATA: no such attribute). */
extern const char *const delta_xattr_names[];
char *delta_xattr(Virtsnapfs *fs, const TreeNode *node, BackendModel *model, const char *key,
                  int *err);

/* ------------------------------------------------------------------ */
/* ops.c: the FUSE low-level operations table, init, statfs, access.  */

extern const struct fuse_lowlevel_ops ops_table;

/* ------------------------------------------------------------------ */
/* ops-entry.c: the node of a request, attributes, lookup, getattr.   */

/* The node of ino, a new reference; NULL after replying ESTALE. */
TreeNode *ops_node_get(fuse_req_t req, fuse_ino_t ino);
/* Fills st for node from model; FALSE with ENOENT/EIO in *err. */
gboolean ops_stat(Virtsnapfs *fs, const TreeNode *node, BackendModel *model,
                  struct stat *st, int *err);
/* Answers a lookup of name in pnode from model (pnode's host's; NULL for
 * the root of several hosts): fuse_reply_entry (the node's lookup count
 * goes up) or fuse_reply_err.  lookup and mkdir. */
void ops_reply_entry(fuse_req_t req, Virtsnapfs *fs, BackendModel *model,
                     const TreeNode *pnode, const char *name);
void ops_lookup(fuse_req_t req, fuse_ino_t parent, const char *name);
void ops_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void ops_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets);
void ops_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ------------------------------------------------------------------ */
/* ops-dir.c: directory listings, taken at opendir from one model.    */

void ops_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ops_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                 struct fuse_file_info *fi);
void ops_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* ------------------------------------------------------------------ */
/* ops-open.c: open and release of files: what a handle pins and owns. */

/* An open file; immutable after open, so reads need no lock. */
typedef struct {
  TreeKind kind;
  VirtsnapfsHost *host; /* whose backend pinned and froze (lives as long
                         * as the mount) */
  char *display;        /* "demo/s1/vda.raw", for log lines */
  Chain *chain;         /* TREE_DISK, TREE_DELTA */
  ChainDelta *delta;    /* TREE_DELTA */
  guint64 size;
  GBytes *bytes;        /* TREE_XML */
  char *frozen_domain;  /* @now: the domain to thaw at release */
  char *pinned_domain;  /* the chain is pinned in the backend (no plan
                         * writes what it reads): unpinned at release */
  gint error_logged;    /* atomic: a data error was logged */
  Prefetch *prefetch;   /* a .raw, unless -o prefetch=0 */
} VirtsnapfsFile;

static inline VirtsnapfsFile *
ops_file(struct fuse_file_info *fi)
{
  return (VirtsnapfsFile *)(uintptr_t)fi->fh;
}

void ops_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ops_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
/* At shutdown, after the FUSE loop ended: closes what the kernel did not
 * release (and thaws their freezes). */
void ops_release_all(Virtsnapfs *fs);

/* ------------------------------------------------------------------ */
/* ops-read.c: read and lseek of open files; the prefetch of a .raw.  */

void ops_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
              struct fuse_file_info *fi);
void ops_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
               struct fuse_file_info *fi);
/* A prefetch of file (a .raw, open as ino) into the kernel's cache. */
Prefetch *read_prefetch_new(Virtsnapfs *fs, VirtsnapfsFile *file, fuse_ino_t ino);

/* ------------------------------------------------------------------ */
/* ops-change.c: mkdir, rmdir, rename change snapshots; the rest EPERM. */

void ops_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void ops_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void ops_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void ops_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
                fuse_ino_t newparent, const char *newname, unsigned int flags);
void ops_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                 struct fuse_file_info *fi);
void ops_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void ops_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                struct fuse_file_info *fi);
void ops_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void ops_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void ops_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
               struct fuse_file_info *fi);
void ops_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                  size_t size, int flags);
void ops_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
void ops_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                   struct fuse_file_info *fi);

/* ------------------------------------------------------------------ */
/* xattr.c: user.virtsnapfs.* attributes.                              */

void xattr_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
void xattr_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);

/* ------------------------------------------------------------------ */
/* invalidate.c: tell the kernel what changed between two models.     */

/* Called by the backend thread of host (user_data, a VirtsnapfsHost);
 * hands the work to the main loop. */
void invalidate_on_change(BackendModel *old_model, BackendModel *new_model,
                          gpointer user_data);
void invalidate_init(Virtsnapfs *fs);
void invalidate_clear(Virtsnapfs *fs);
/* A change request (mkdir, rmdir, rename) in a domain: the kernel holds
 * the locks of directories of the domain until the reply, so entry
 * invalidations in the domain wait until invalidate_domain_idle(), which
 * the worker calls after replying. */
void invalidate_domain_busy(Virtsnapfs *fs, const char *host, const char *domain);
void invalidate_domain_idle(Virtsnapfs *fs, const char *host, const char *domain);

G_END_DECLS
