/* A lookup index over entries keyed by a SHA-256 hash, for the token
 * tables (agent tokens, user tokens). Internal to the library.
 *
 * Entries live in the caller's array (any element size); each element
 * starts with a kr__hash_key. Building sorts the array by hash (then by
 * line), refuses duplicate hashes, and buckets the entries by the top
 * bits of their hash, about one entry per bucket. A lookup compares every
 * entry of the hash's bucket in full, in constant time, and selects the
 * match with a mask, so its timing does not depend on which entry (if
 * any) matched.
 */
#ifndef KR_CORE_HASH_INDEX_H
#define KR_CORE_HASH_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/mem.h>

#include "sha256.h"

typedef struct kr__hash_key {
  uint8_t hash[KR__SHA256_LEN];
  uint32_t line; /* 1-based source line, for error messages */
} kr__hash_key;

typedef struct kr__hash_index {
  /* Entries of bucket b are entries[start[b] .. start[b + 1]). */
  uint32_t *start;
  unsigned bits; /* a bucket is the top `bits` bits of the hash */
} kr__hash_index;

/* Sorts entries[0..count) (stride bytes each) and builds the buckets.
 * Returns 0; KR_ECONFIG when two entries share a hash, with *dup_line the
 * line of the earliest second occurrence and *dup_first the line it
 * repeats (nothing built); KR_ENOMEM. */
int kr__hash_index_build(kr__hash_index *ix, const kr_mem *mem, void *entries,
                         size_t count, size_t stride, size_t *dup_line,
                         size_t *dup_first);

/* The index of the entry whose hash is hash, or -1. */
int64_t kr__hash_index_find(const kr__hash_index *ix, const void *entries,
                            size_t count, size_t stride, const uint8_t *hash);

void kr__hash_index_free(kr__hash_index *ix, const kr_mem *mem);

#endif
