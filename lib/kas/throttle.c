/* Authentication-failure throttle (see throttle.h). */
#include <stdlib.h>
#include <string.h>

#include "kas/throttle.h"

static kr__throttle_entry *find(const kr__throttle *t, const char *addr) {
  if (!t->slots)
    return NULL;
  for (size_t i = 0; i < KR__THROTTLE_SLOTS; i++)
    if (t->slots[i].addr[0] && strcmp(t->slots[i].addr, addr) == 0)
      return &t->slots[i];
  return NULL;
}

void kr__throttle_failure(kr__throttle *t, const char *addr, kr_time_us now) {
  if (!t->slots && !(t->slots = calloc(KR__THROTTLE_SLOTS, sizeof(*t->slots))))
    return;
  kr__throttle_entry *e = find(t, addr);
  if (!e) {
    /* A free slot, else the one whose window started longest ago. */
    e = &t->slots[0];
    for (size_t i = 0; i < KR__THROTTLE_SLOTS; i++) {
      if (!t->slots[i].addr[0]) {
        e = &t->slots[i];
        break;
      }
      if (t->slots[i].first < e->first)
        e = &t->slots[i];
    }
    memset(e, 0, sizeof(*e));
    strncpy(e->addr, addr, sizeof(e->addr) - 1);
    e->first = now;
  }
  if (now - e->first > KR__THROTTLE_WINDOW && now >= e->blocked_until) {
    e->failures = 0;
    e->first = now;
  }
  e->failures++;
  if (e->failures > KR__THROTTLE_FREE) {
    unsigned extra = e->failures - KR__THROTTLE_FREE - 1;
    kr_time_us penalty = (kr_time_us)1000000 << (extra > 6 ? 6 : extra);
    if (penalty > KR__THROTTLE_MAX_PENALTY)
      penalty = KR__THROTTLE_MAX_PENALTY;
    e->blocked_until = now + penalty;
  }
}

int kr__throttle_blocked(const kr__throttle *t, const char *addr,
                         kr_time_us now) {
  const kr__throttle_entry *e = find(t, addr);
  return e && now < e->blocked_until;
}

void kr__throttle_clear(kr__throttle *t) {
  free(t->slots);
  t->slots = NULL;
}
