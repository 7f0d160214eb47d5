/* Full-jitter exponential backoff (see backoff.h). */
#include <stddef.h>

#include <kasroute/error.h>

#include "backoff.h"

int kr__backoff_init(kr__backoff *b, uint64_t base_us, uint64_t cap_us,
                     uint64_t stable_us) {
  if (b == NULL || base_us == 0 || cap_us < base_us)
    return KR_EINVAL;
  b->base_us = base_us;
  b->cap_us = cap_us;
  b->stable_us = stable_us;
  b->attempt = 0;
  b->connected = 0;
  b->connected_at = 0;
  return 0;
}

/* min(cap, base << attempt) without overflowing: doubling stops as soon as
 * the cap is reached (at most 64 steps). */
uint64_t kr__backoff_ceiling(const kr__backoff *b) {
  uint64_t c = b->base_us;
  for (uint32_t i = 0; i < b->attempt && c < b->cap_us; i++)
    c = c > b->cap_us / 2 ? b->cap_us : c * 2;
  return c < b->cap_us ? c : b->cap_us;
}

uint64_t kr__backoff_next(kr__backoff *b, uint64_t random) {
  uint64_t ceiling = kr__backoff_ceiling(b);
  if (b->attempt < UINT32_MAX)
    b->attempt++;
  if (ceiling == UINT64_MAX)
    return random;
  return random % (ceiling + 1);
}

void kr__backoff_connected(kr__backoff *b, uint64_t now_us) {
  b->connected = 1;
  b->connected_at = now_us;
}

void kr__backoff_disconnected(kr__backoff *b, uint64_t now_us) {
  if (b->connected && now_us >= b->connected_at &&
      now_us - b->connected_at >= b->stable_us)
    b->attempt = 0;
  b->connected = 0;
}

void kr__backoff_reset(kr__backoff *b) {
  b->attempt = 0;
}

uint32_t kr__backoff_attempts(const kr__backoff *b) {
  return b->attempt;
}
