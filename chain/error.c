/* error.c: the CHAIN_ERROR domain, format names, and data-path error
 * reporting.
 *
 * A corrupt table entry found while reading is reported once per layer
 * (g_warning naming the file and the reason); later reads that hit it fail
 * with -EIO silently, so a broken image cannot flood the log.  Thread-safe:
 * the "already logged" flag is atomic.
 */
#include <stdarg.h>
#include <string.h>

#include "chain-private.h"

G_DEFINE_QUARK(virtsnapfs-chain-error-quark, chain_error)

const char *
chain_format_name(ChainFormat format)
{
  switch (format) {
  case CHAIN_FORMAT_RAW:
    return "raw";
  case CHAIN_FORMAT_QCOW2:
    return "qcow2";
  case CHAIN_FORMAT_UNKNOWN:
  default:
    return "unknown";
  }
}

ChainFormat
chain_format_from_name(const char *name)
{
  if (name == NULL)
    return CHAIN_FORMAT_UNKNOWN;
  if (strcmp(name, "raw") == 0)
    return CHAIN_FORMAT_RAW;
  if (strcmp(name, "qcow2") == 0)
    return CHAIN_FORMAT_QCOW2;
  return CHAIN_FORMAT_UNKNOWN;
}

void
chain_layer_report(ChainLayer *layer, const char *format, ...)
{
  if (!g_atomic_int_compare_and_exchange(&layer->logged, 0, 1))
    return;

  va_list args;
  va_start(args, format);
  g_autofree char *message = g_strdup_vprintf(format, args);
  va_end(args);
  g_warning("%s: %s (further errors in this file are not logged)", layer->path, message);
}
