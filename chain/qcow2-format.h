/* qcow2-format.h: the qcow2 on-disk layout (docs/interop/qcow2.txt).
 *
 * Constants, masks and the packed header only; no logic.  Every field on
 * disk is big-endian; layer.c converts the header and each table once, when
 * it is loaded, never at each use.
 */
#pragma once

#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */

#define QCOW2_MIN_CLUSTER_BITS 9  /* spec: 512-byte clusters */
#define QCOW2_MAX_CLUSTER_BITS 21 /* QEMU's limit: 2 MiB */
/* "Extended L2 Entries": cluster_bits must be at least 14. */
#define QCOW2_MIN_CLUSTER_BITS_EXTL2 14
#define QCOW2_SUBCLUSTERS 32

#define QCOW2_V2_HEADER_LENGTH 72
#define QCOW2_V3_HEADER_LENGTH 104 /* through header_length */
#define QCOW2_MAX_BACKING_NAME 1023
/* QEMU's implementation limit for the active L1 table, in bytes. */
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)
#define QCOW2_MAX_REFCOUNT_ORDER 6

/* crypt_method */
#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES 1
#define QCOW2_CRYPT_LUKS 2

/* incompatible_features */
#define QCOW2_INCOMPAT_DIRTY (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2 (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_KNOWN                                                          \
  (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE |         \
   QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_EXTL2)

/* compression_type (byte 104) */
#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension types ("Header extensions"). */
#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_NAMES 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

/* Feature name table entry: type, bit, 46 bytes of name. */
#define QCOW2_FEATURE_NAME_ENTRY 48
#define QCOW2_FEATURE_NAME_LEN 46
#define QCOW2_FEATURE_TYPE_INCOMPAT 0

/* Bitmaps extension data is exactly this long. */
#define QCOW2_BITMAPS_EXT_LEN 24
#define QCOW2_CRYPTO_EXT_LEN 16

/* L1 entry: bits 9-55 are the L2 table offset, bit 63 "copied". */
#define QCOW2_L1_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define QCOW2_L1_RESERVED_MASK UINT64_C(0x7f000000000001ff)

/* L2 entry (standard cluster descriptor plus bits 62-63). */
#define QCOW2_L2_COPIED (UINT64_C(1) << 63)
#define QCOW2_L2_COMPRESSED (UINT64_C(1) << 62)
#define QCOW2_L2_ZERO (UINT64_C(1) << 0)
#define QCOW2_L2_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define QCOW2_L2_RESERVED_MASK UINT64_C(0x3f000000000001fe)

/* Compressed cluster descriptor: x = 62 - (cluster_bits - 8); bits 0..x-1
 * are the byte offset, bits x..61 the count of additional 512-byte
 * sectors. */
#define QCOW2_COMPRESSED_SECTOR 512

/* Extended L2: second word, bits 0-31 allocated, bits 32-63 reads-as-zero. */
#define QCOW2_EXTL2_ALLOC_MASK UINT64_C(0x00000000ffffffff)
#define QCOW2_EXTL2_ZERO_SHIFT 32

/* The fixed part of the header, as stored (big-endian).  Version 2 ends
 * at header_length's offset (72 bytes). */
typedef struct __attribute__((packed)) {
  uint32_t magic;
  uint32_t version;
  uint64_t backing_file_offset;
  uint32_t backing_file_size;
  uint32_t cluster_bits;
  uint64_t size;
  uint32_t crypt_method;
  uint32_t l1_size;
  uint64_t l1_table_offset;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  /* version 3 */
  uint64_t incompatible_features;
  uint64_t compatible_features;
  uint64_t autoclear_features;
  uint32_t refcount_order;
  uint32_t header_length;
  /* optional additional fields */
  uint8_t compression_type;
  uint8_t padding[7];
} Qcow2Header;

_Static_assert(sizeof(Qcow2Header) == 112, "qcow2 header layout");
_Static_assert(__builtin_offsetof(Qcow2Header, incompatible_features) == QCOW2_V2_HEADER_LENGTH,
               "qcow2 v2 header length");
_Static_assert(__builtin_offsetof(Qcow2Header, compression_type) == QCOW2_V3_HEADER_LENGTH,
               "qcow2 v3 header length");

/* Header extension header: type and length, then data padded to 8. */
typedef struct __attribute__((packed)) {
  uint32_t type;
  uint32_t length;
} Qcow2ExtensionHeader;

_Static_assert(sizeof(Qcow2ExtensionHeader) == 8, "qcow2 extension header layout");
