/* Unit tests: full-jitter exponential backoff (lib/core/backoff.c). */
#include <string.h>

#include "auth_helper.h"
#include "core/backoff.h"

#define MS 1000u
#define S 1000000u

START_TEST(init_validates) {
  kr__backoff b;
  memset(&b, 0x5a, sizeof b);
  kr__backoff b0 = b;
  ck_assert_int_eq(kr__backoff_init(NULL, 1, 2, 3), KR_EINVAL);
  ck_assert_int_eq(kr__backoff_init(&b, 0, 2, 3), KR_EINVAL);
  ck_assert_int_eq(kr__backoff_init(&b, 5, 4, 3), KR_EINVAL);
  ck_assert_mem_eq(&b, &b0, sizeof b); /* untouched on failure */
  ck_assert_int_eq(kr__backoff_init(&b, 5, 5, 0), 0);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 0);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), 5);
}
END_TEST

/* Ceilings double from base up to the cap and stay there. */
START_TEST(ceiling_doubles_to_cap) {
  kr__backoff b;
  ck_assert_int_eq(kr__backoff_init(&b, 100 * MS, 30 * S, 60 * S), 0);
  const uint64_t want[] = {100 * MS,   200 * MS,  400 * MS,  800 * MS,
                           1600 * MS,  3200 * MS, 6400 * MS, 12800 * MS,
                           25600 * MS, 30 * S,    30 * S,    30 * S};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    ck_assert_uint_eq(kr__backoff_ceiling(&b), want[i]);
    /* random == ceiling maps to the ceiling itself: the range is
     * inclusive. */
    ck_assert_uint_eq(kr__backoff_next(&b, want[i]), want[i]);
    ck_assert_uint_eq(kr__backoff_attempts(&b), i + 1);
  }
}
END_TEST

START_TEST(next_maps_random_into_range) {
  kr__backoff b;
  ck_assert_int_eq(kr__backoff_init(&b, 1000, 1000000, 0), 0);
  ck_assert_uint_eq(kr__backoff_next(&b, 0), 0);
  /* attempt 1: [0, 2000] */
  ck_assert_uint_eq(kr__backoff_next(&b, 2001), 0);
  /* attempt 2: [0, 4000] */
  ck_assert_uint_eq(kr__backoff_next(&b, UINT64_MAX), UINT64_MAX % 4001);
  ta_rng r;
  ta_rng_init(&r, 0xbac0ff, "next_maps_random_into_range");
  /* Full jitter: uniform over [0, ceiling]; the mean of many draws sits
   * near ceiling / 2 and both ends of the range are reached. */
  for (uint32_t attempt = 0; attempt < 14; attempt++) {
    uint64_t sum = 0, lo = UINT64_MAX, hi = 0;
    kr__backoff_reset(&b);
    for (uint32_t i = 0; i < attempt; i++)
      (void)kr__backoff_next(&b, 0);
    uint64_t ceiling = kr__backoff_ceiling(&b);
    ck_assert_uint_eq(ceiling, attempt < 10 ? 1000u << attempt : 1000000u);
    enum { DRAWS = 20000 };
    for (int i = 0; i < DRAWS; i++) {
      kr__backoff c = b;
      uint64_t d = kr__backoff_next(&c, ta_rng_next(&r));
      ck_assert_uint_le(d, ceiling);
      sum += d;
      lo = d < lo ? d : lo;
      hi = d > hi ? d : hi;
    }
    double mean = (double)sum / DRAWS;
    ck_assert_msg(mean > ceiling * 0.47 && mean < ceiling * 0.53,
                  "attempt %u: mean %.1f for ceiling %llu", attempt, mean,
                  (unsigned long long)ceiling);
    ck_assert_uint_lt(lo, ceiling / 100 + 1);
    ck_assert_uint_gt(hi, ceiling - ceiling / 100 - 1);
  }
}
END_TEST

/* Huge values: no overflow in the doubling or the inclusive range. */
START_TEST(no_overflow) {
  kr__backoff b;
  ck_assert_int_eq(kr__backoff_init(&b, 1, UINT64_MAX, 0), 0);
  for (int i = 0; i < 200; i++)
    (void)kr__backoff_next(&b, 12345);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 200);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), UINT64_MAX);
  ck_assert_uint_eq(kr__backoff_next(&b, 987654321), 987654321);
  ck_assert_uint_eq(kr__backoff_next(&b, UINT64_MAX), UINT64_MAX);

  ck_assert_int_eq(kr__backoff_init(&b, UINT64_MAX / 3, UINT64_MAX - 1, 0), 0);
  (void)kr__backoff_next(&b, 0);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), UINT64_MAX / 3 * 2);
  (void)kr__backoff_next(&b, 0);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), UINT64_MAX - 1);
  ck_assert_uint_le(kr__backoff_next(&b, UINT64_MAX), UINT64_MAX - 1);

  /* The attempt counter saturates. */
  ck_assert_int_eq(kr__backoff_init(&b, 10, 1000, 0), 0);
  b.attempt = UINT32_MAX - 1;
  ck_assert_uint_eq(kr__backoff_ceiling(&b), 1000);
  (void)kr__backoff_next(&b, 1);
  (void)kr__backoff_next(&b, 1);
  ck_assert_uint_eq(kr__backoff_attempts(&b), UINT32_MAX);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), 1000);
}
END_TEST

static kr__backoff failed_n_times(uint32_t n) {
  kr__backoff b;
  ck_assert_int_eq(kr__backoff_init(&b, 100 * MS, 60 * S, 10 * S), 0);
  for (uint32_t i = 0; i < n; i++)
    (void)kr__backoff_next(&b, 0);
  return b;
}

START_TEST(reset_only_after_stable_connection) {
  /* Short-lived connection: attempts keep growing. */
  kr__backoff b = failed_n_times(5);
  kr__backoff_connected(&b, 1000 * S);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 5);
  kr__backoff_disconnected(&b, 1000 * S + 10 * S - 1);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 5);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), 3200 * MS);

  /* Exactly stable_us: reset. */
  b = failed_n_times(5);
  kr__backoff_connected(&b, 1000 * S);
  kr__backoff_disconnected(&b, 1010 * S);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 0);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), 100 * MS);

  /* Long-lived. */
  b = failed_n_times(9);
  kr__backoff_connected(&b, 5 * S);
  kr__backoff_disconnected(&b, 5000 * S);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 0);

  /* Disconnected without connected (a failed dial): no reset. */
  b = failed_n_times(3);
  kr__backoff_disconnected(&b, 5000 * S);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 3);
  /* A short connection does not reset, nor does a later disconnected()
   * without a new connected() (the old connection is not counted twice). */
  kr__backoff_connected(&b, 0);
  kr__backoff_disconnected(&b, 1 * S);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 3);
  (void)kr__backoff_next(&b, 0);
  kr__backoff_disconnected(&b, 100 * S);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 4);

  /* Clock going backwards counts as short. */
  b = failed_n_times(4);
  kr__backoff_connected(&b, 100 * S);
  kr__backoff_disconnected(&b, 50 * S);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 4);

  /* stable_us == 0: any connection resets. */
  ck_assert_int_eq(kr__backoff_init(&b, 1, 100, 0), 0);
  (void)kr__backoff_next(&b, 0);
  kr__backoff_connected(&b, 7);
  kr__backoff_disconnected(&b, 7);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 0);

  /* Explicit reset. */
  b = failed_n_times(6);
  kr__backoff_reset(&b);
  ck_assert_uint_eq(kr__backoff_attempts(&b), 0);
  ck_assert_uint_eq(kr__backoff_ceiling(&b), 100 * MS);
}
END_TEST

/* A flapping peer (accepts, then drops at once) still gets growing
 * delays up to the cap. */
START_TEST(flapping_peer_backs_off) {
  kr__backoff b;
  ck_assert_int_eq(kr__backoff_init(&b, 100 * MS, 30 * S, 10 * S), 0);
  uint64_t now = 0;
  for (int i = 0; i < 20; i++) {
    uint64_t ceiling = kr__backoff_ceiling(&b);
    now += kr__backoff_next(&b, UINT64_MAX - 1);
    kr__backoff_connected(&b, now);
    now += 1 * S;
    kr__backoff_disconnected(&b, now);
    ck_assert_uint_eq(kr__backoff_attempts(&b), (uint32_t)i + 1);
    if (i >= 9)
      ck_assert_uint_eq(ceiling, 30 * S);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("backoff");
  TA_ADD(s, init_validates, 10);
  TA_ADD(s, ceiling_doubles_to_cap, 10);
  TA_ADD(s, next_maps_random_into_range, 10);
  TA_ADD(s, no_overflow, 10);
  TA_ADD(s, reset_only_after_stable_connection, 10);
  TA_ADD(s, flapping_peer_backs_off, 10);
  return ta_run_suite(s);
}
