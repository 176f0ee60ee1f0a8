/* pread.c: the one way chain/ reads bytes from an image file.
 *
 * Its own file so that the files that read (layer.c for headers and L1,
 * l2-cache.c for L2 slices, read.c for guest data) all depend on it and
 * not on each other.  Thread-safe: pread() has no file position.
 */
#include <errno.h>
#include <unistd.h>

#include "chain-private.h"

/* pread until length bytes or end of file.  *done gets the bytes read. */
int
chain_pread_full(int fd, void *buf, gsize length, guint64 offset, gsize *done)
{
  gsize total = 0;
  while (total < length) {
    ssize_t n = pread(fd, (char *)buf + total, length - total, (off_t)(offset + total));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      *done = total;
      return -errno;
    }
    if (n == 0)
      break;
    total += (gsize)n;
  }
  *done = total;
  return 0;
}
