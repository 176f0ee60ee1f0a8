/* fuse-version.h: the one place FUSE_USE_VERSION is defined.
 *
 * 3.12 gives the fuse_loop_cfg_* API for fuse_session_loop_mt (thread
 * count, clone_fd) on top of the 3.x low-level API; everything else the
 * daemon uses (lseek, splice, fuse_set_log_func) exists since 3.8.
 * Every file that includes a libfuse header includes this one instead.
 */
#pragma once

#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <fuse_opt.h>
#include <fuse_log.h>
