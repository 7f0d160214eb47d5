/* Shared helpers for the authentication unit suites (tests/auth).
 *
 * - ta_run_suite: TAP on stdout for meson (TA_VERBOSE=1: Check's report);
 * - ta_rng: splitmix64, so random cases replay from the printed seed;
 * - ta_alloc: a kr_mem that counts live blocks and bytes and can fail the
 *   Nth allocation, to walk every allocation failure path of a call and
 *   prove nothing leaks on any of them.
 */
#ifndef TA_AUTH_HELPER_H
#define TA_AUTH_HELPER_H

#include <stddef.h>
#include <stdint.h>

#include <check.h>
#include <kasroute/kasroute.h>

int ta_run_suite(Suite *s);

/* 1 under valgrind (its preload library is in LD_PRELOAD). */
int ta_under_valgrind(void);

/* Adds fn as its own test case with a Check timeout in seconds (scaled up
 * under valgrind and sanitizers). */
void ta_add_tcase(Suite *s, const char *name, const TTest *t, double timeout);
#define TA_ADD(s, fn, timeout) ta_add_tcase((s), #fn, (fn), (timeout))

typedef struct ta_rng {
  uint64_t s;
} ta_rng;

/* Seeds from TA_SEED when set (decimal), else from seed; prints the seed
 * used with the test name so a failure can be replayed. */
void ta_rng_init(ta_rng *r, uint64_t seed, const char *what);
uint64_t ta_rng_next(ta_rng *r);
void ta_rng_bytes(ta_rng *r, void *out, size_t n);

typedef struct ta_alloc {
  kr_mem mem;    /* pass &a.mem to the code under test */
  long fail_at;  /* 1-based allocation attempt that fails; 0 = none */
  long attempts; /* malloc + growing realloc attempts so far */
  long live_blocks;
  size_t live_bytes;
} ta_alloc;

void ta_alloc_init(ta_alloc *a, long fail_at);

#endif
