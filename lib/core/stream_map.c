/* Stream id map (see stream_map.h). */
#include <string.h>

#include <kasroute/error.h>

#include "mem_internal.h"
#include "stream_map.h"

static size_t slot_of(uint32_t id, size_t cap) {
  /* Fibonacci hashing spreads the sequential ids streams use. */
  return (size_t)((id * 2654435769u) >> 7) & (cap - 1);
}

void *kr__map_get(const kr__stream_map *m, uint32_t id) {
  if (m->cap == 0)
    return NULL;
  for (size_t i = slot_of(id, m->cap);; i = (i + 1) & (m->cap - 1)) {
    if (m->slots[i].id == id)
      return m->slots[i].value;
    if (m->slots[i].id == 0)
      return NULL;
  }
}

static void insert(kr__map_slot *slots, size_t cap, uint32_t id, void *value) {
  size_t i = slot_of(id, cap);
  while (slots[i].id != 0)
    i = (i + 1) & (cap - 1);
  slots[i].id = id;
  slots[i].value = value;
}

int kr__map_put(const kr_mem *mem, kr__stream_map *m, uint32_t id,
                void *value) {
  if ((m->count + 1) * 4 > m->cap * 3) { /* keep load under 3/4 */
    size_t cap = m->cap ? m->cap * 2 : 16;
    kr__map_slot *slots = kr__calloc(mem, cap, sizeof(*slots));
    if (!slots)
      return KR_ENOMEM;
    for (size_t i = 0; i < m->cap; i++)
      if (m->slots[i].id)
        insert(slots, cap, m->slots[i].id, m->slots[i].value);
    kr__free(mem, m->slots);
    m->slots = slots;
    m->cap = cap;
  }
  insert(m->slots, m->cap, id, value);
  m->count++;
  return 0;
}

void kr__map_del(kr__stream_map *m, uint32_t id) {
  if (m->cap == 0)
    return;
  size_t mask = m->cap - 1, i = slot_of(id, m->cap);
  while (m->slots[i].id != id) {
    if (m->slots[i].id == 0)
      return;
    i = (i + 1) & mask;
  }
  /* Backward-shift: move later entries of the probe run into the hole. */
  size_t hole = i;
  for (size_t j = (i + 1) & mask; m->slots[j].id != 0; j = (j + 1) & mask) {
    size_t home = slot_of(m->slots[j].id, m->cap);
    if (((j - home) & mask) >= ((j - hole) & mask)) {
      m->slots[hole] = m->slots[j];
      hole = j;
    }
  }
  m->slots[hole].id = 0;
  m->slots[hole].value = NULL;
  m->count--;
}

void kr__map_free(const kr_mem *mem, kr__stream_map *m) {
  kr__free(mem, m->slots);
  memset(m, 0, sizeof(*m));
}
