/* Stream id -> pointer map (open addressing, linear probing, backward-shift
 * deletion). Internal to the library. Ids are never 0. */
#ifndef KR_CORE_STREAM_MAP_H
#define KR_CORE_STREAM_MAP_H

#include <stdint.h>

#include <kasroute/mem.h>

typedef struct kr__map_slot {
  uint32_t id; /* 0: empty */
  void *value;
} kr__map_slot;

typedef struct kr__stream_map {
  kr__map_slot *slots;
  size_t cap; /* power of two, or 0 */
  size_t count;
} kr__stream_map;

void *kr__map_get(const kr__stream_map *m, uint32_t id);
/* Inserts id (not present). 0 or KR_ENOMEM (map unchanged). */
int kr__map_put(const kr_mem *mem, kr__stream_map *m, uint32_t id, void *value);
/* Removes id if present. */
void kr__map_del(kr__stream_map *m, uint32_t id);
void kr__map_free(const kr_mem *mem, kr__stream_map *m);

#endif
