/* Hash-keyed lookup index for the token tables (see hash_index.h). */
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "hash_index.h"
#include "mem_internal.h"

/* Sort order: hash, then line (so equal hashes sit in file order). */
static int key_cmp(const void *a, const void *b) {
  const kr__hash_key *x = a, *y = b;
  int c = memcmp(x->hash, y->hash, KR__SHA256_LEN);
  if (c != 0)
    return c;
  return (x->line > y->line) - (x->line < y->line);
}

static const kr__hash_key *key_at(const void *entries, size_t i,
                                  size_t stride) {
  return (const kr__hash_key *)((const uint8_t *)entries + i * stride);
}

static uint32_t bucket_of(const kr__hash_index *ix, const uint8_t *h) {
  if (ix->bits == 0)
    return 0;
  uint32_t top = ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) |
                 ((uint32_t)h[2] << 8) | (uint32_t)h[3];
  return top >> (32 - ix->bits);
}

int kr__hash_index_build(kr__hash_index *ix, const kr_mem *mem, void *entries,
                         size_t count, size_t stride, size_t *dup_line,
                         size_t *dup_first) {
  if (count > 1)
    qsort(entries, count, stride, key_cmp);
  *dup_line = *dup_first = 0;
  for (size_t i = 1; i < count; i++) {
    const kr__hash_key *a = key_at(entries, i - 1, stride);
    const kr__hash_key *b = key_at(entries, i, stride);
    if (memcmp(a->hash, b->hash, KR__SHA256_LEN) == 0 &&
        (*dup_line == 0 || b->line < *dup_line)) {
      *dup_line = b->line;
      *dup_first = a->line;
    }
  }
  if (*dup_line != 0)
    return KR_ECONFIG;
  /* About one entry per bucket: 2^bits >= count, at most 2^24 buckets. */
  unsigned bits = 0;
  while (bits < 24 && ((size_t)1 << bits) < count)
    bits++;
  ix->bits = bits;
  size_t nb = (size_t)1 << bits;
  ix->start = kr__calloc(mem, nb + 1, sizeof *ix->start);
  if (ix->start == NULL)
    return KR_ENOMEM;
  for (size_t i = 0; i < count; i++)
    ix->start[bucket_of(ix, key_at(entries, i, stride)->hash) + 1]++;
  for (size_t b = 0; b < nb; b++)
    ix->start[b + 1] += ix->start[b];
  return 0;
}

int64_t kr__hash_index_find(const kr__hash_index *ix, const void *entries,
                            size_t count, size_t stride, const uint8_t *hash) {
  if (count == 0 || ix->start == NULL)
    return -1;
  uint32_t b = bucket_of(ix, hash);
  size_t found = 0, idx = 0;
  /* Every candidate is compared in full; the match is selected with a mask
   * rather than a branch or an early exit. */
  for (size_t i = ix->start[b]; i < ix->start[b + 1]; i++) {
    size_t eq = (size_t)kr__ct_equal(hash, key_at(entries, i, stride)->hash,
                                     KR__SHA256_LEN);
    size_t m = (size_t)0 - eq;
    idx = (idx & ~m) | (i & m);
    found |= eq;
  }
  return found ? (int64_t)idx : -1;
}

void kr__hash_index_free(kr__hash_index *ix, const kr_mem *mem) {
  kr__free(mem, ix->start);
  ix->start = NULL;
}
