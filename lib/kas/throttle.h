/* Slows down addresses that keep failing authentication. Internal.
 *
 * After KR__THROTTLE_FREE failures within KR__THROTTLE_WINDOW, new
 * connections from that address are closed unread for a penalty that
 * doubles with each further failure (1 s up to 60 s). The table is bounded:
 * the oldest entry goes when it is full.
 */
#ifndef KR_KAS_THROTTLE_H
#define KR_KAS_THROTTLE_H

#include <kasroute/mux.h>

#define KR__THROTTLE_SLOTS 1024
#define KR__THROTTLE_FREE 5
#define KR__THROTTLE_WINDOW ((kr_time_us)60 * 1000000)
#define KR__THROTTLE_MAX_PENALTY ((kr_time_us)60 * 1000000)

typedef struct kr__throttle_entry {
  char addr[64];
  unsigned failures;
  kr_time_us first;       /* start of the counting window */
  kr_time_us blocked_until;
} kr__throttle_entry;

typedef struct kr__throttle {
  kr__throttle_entry *slots; /* KR__THROTTLE_SLOTS, allocated on first use */
} kr__throttle;

/* Records a failure of addr at now. Allocation failure: not recorded. */
void kr__throttle_failure(kr__throttle *t, const char *addr, kr_time_us now);
/* 1 while addr is in its penalty. */
int kr__throttle_blocked(const kr__throttle *t, const char *addr,
                         kr_time_us now);
void kr__throttle_clear(kr__throttle *t);

#endif
