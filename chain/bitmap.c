/* bitmap.c: fixed-granularity sets of guest ranges.
 *
 * The planner compares what two layers allocate (the cost of a commit or a
 * pull), and delta files need the clusters a layer overrides;
 * both work on these bitmaps.  Plain data, no locking: a bitmap is built by
 * one thread and read afterwards.
 */
#include "chain.h"

ChainBitmap *
chain_bitmap_new(guint64 granularity, guint64 virtual_size)
{
  g_return_val_if_fail(granularity > 0 && (granularity & (granularity - 1)) == 0, NULL);

  ChainBitmap *bitmap = g_new0(ChainBitmap, 1);
  bitmap->granularity = granularity;
  bitmap->nbits = virtual_size / granularity + (virtual_size % granularity != 0);
  bitmap->words = g_new0(guint64, (bitmap->nbits + 63) / 64);
  return bitmap;
}

void
chain_bitmap_free(ChainBitmap *bitmap)
{
  if (bitmap == NULL)
    return;
  g_free(bitmap->words);
  g_free(bitmap);
}

/* Marks every granule that [offset, offset + length) touches; the part
 * beyond the end of the bitmap is ignored. */
void
chain_bitmap_set_range(ChainBitmap *bitmap, guint64 offset, guint64 length)
{
  if (length == 0)
    return;
  guint64 end = offset > G_MAXUINT64 - (length - 1) ? G_MAXUINT64 : offset + (length - 1);
  guint64 first = offset / bitmap->granularity;
  guint64 last = end / bitmap->granularity;
  if (first >= bitmap->nbits)
    return;
  last = MIN(last, bitmap->nbits - 1);

  for (guint64 bit = first; bit <= last;) {
    if (bit % 64 == 0 && last - bit >= 63) {
      bitmap->words[bit / 64] = G_MAXUINT64;
      bit += 64;
    } else {
      bitmap->words[bit / 64] |= G_GUINT64_CONSTANT(1) << (bit % 64);
      bit++;
    }
  }
}

gboolean
chain_bitmap_get(const ChainBitmap *bitmap, guint64 bit)
{
  if (bit >= bitmap->nbits)
    return FALSE;
  return (bitmap->words[bit / 64] >> (bit % 64)) & 1;
}

guint64
chain_bitmap_count(const ChainBitmap *bitmap)
{
  guint64 count = 0;
  for (guint64 i = 0; i < (bitmap->nbits + 63) / 64; i++)
    count += (guint64)__builtin_popcountll(bitmap->words[i]);
  return count;
}

guint64
chain_bitmap_bytes(const ChainBitmap *bitmap, guint64 virtual_size)
{
  guint64 g = bitmap->granularity;
  guint64 bytes = chain_bitmap_count(bitmap) * g;
  if (bitmap->nbits > 0 && chain_bitmap_get(bitmap, bitmap->nbits - 1))
    bytes -= bitmap->nbits * g - virtual_size;
  return bytes;
}

guint64
chain_bitmap_count_and_not(const ChainBitmap *a, const ChainBitmap *b)
{
  g_return_val_if_fail(a->granularity == b->granularity, 0);

  guint64 words_a = (a->nbits + 63) / 64;
  guint64 words_b = (b->nbits + 63) / 64;
  guint64 count = 0;
  for (guint64 i = 0; i < words_a; i++) {
    guint64 other = i < words_b ? b->words[i] : 0;
    count += (guint64)__builtin_popcountll(a->words[i] & ~other);
  }
  return count;
}

void
chain_bitmap_or(ChainBitmap *dst, const ChainBitmap *src)
{
  g_return_if_fail(dst->granularity == src->granularity);

  guint64 words = MIN((dst->nbits + 63) / 64, (src->nbits + 63) / 64);
  for (guint64 i = 0; i < words; i++)
    dst->words[i] |= src->words[i];
  /* Keep the bits past dst's end clear: counts rely on it. */
  if (dst->nbits % 64 != 0 && words == (dst->nbits + 63) / 64)
    dst->words[words - 1] &= (G_GUINT64_CONSTANT(1) << (dst->nbits % 64)) - 1;
}

guint64
chain_bitmap_next(const ChainBitmap *bitmap, guint64 from, gboolean set)
{
  while (from < bitmap->nbits) {
    guint64 word = bitmap->words[from / 64];
    if (!set)
      word = ~word;
    word &= G_MAXUINT64 << (from % 64);
    if (word != 0)
      return MIN((from & ~G_GUINT64_CONSTANT(63)) + (guint64)__builtin_ctzll(word), bitmap->nbits);
    from = (from & ~G_GUINT64_CONSTANT(63)) + 64;
  }
  return bitmap->nbits;
}
