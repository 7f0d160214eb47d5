/* Helpers for the authentication unit suites (see auth_helper.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth_helper.h"
#include "core/sha256.h"

int ta_run_suite(Suite *s) {
  SRunner *sr = srunner_create(s);
  const char *v = getenv("TA_VERBOSE");
  if (v && *v && *v != '0') {
    srunner_run_all(sr, CK_VERBOSE);
  } else {
    srunner_set_tap(sr, "-");
    srunner_run_all(sr, CK_SILENT);
  }
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}

int ta_under_valgrind(void) {
  const char *pre = getenv("LD_PRELOAD");
  return pre != NULL && strstr(pre, "vgpreload") != NULL;
}

#if defined(__SANITIZE_ADDRESS__)
#define TA_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TA_SANITIZED 1
#endif
#endif
#ifndef TA_SANITIZED
#define TA_SANITIZED 0
#endif

void ta_add_tcase(Suite *s, const char *name, const TTest *t, double timeout) {
  TCase *tc = tcase_create(name);
  tcase_add_test(tc, t);
  if (ta_under_valgrind())
    timeout *= 20;
  else if (TA_SANITIZED)
    timeout *= 4;
  tcase_set_timeout(tc, timeout);
  suite_add_tcase(s, tc);
}

void ta_rng_init(ta_rng *r, uint64_t seed, const char *what) {
  const char *env = getenv("TA_SEED");
  if (env && *env)
    seed = strtoull(env, NULL, 10);
  /* A diagnostic line in TAP output (ignored by the parser). */
  printf("# %s: seed %" PRIu64 " (TA_SEED=%" PRIu64 " replays it)\n", what,
         seed, seed);
  fflush(stdout);
  r->s = seed;
}

uint64_t ta_rng_next(ta_rng *r) {
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void ta_rng_bytes(ta_rng *r, void *out, size_t n) {
  uint8_t *p = out;
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)ta_rng_next(r);
}

/* Each block carries its size in a header so frees can be accounted. */
typedef union ta_hdr {
  size_t size;
  max_align_t align;
} ta_hdr;

static int ta_should_fail(ta_alloc *a) {
  a->attempts++;
  return a->fail_at > 0 && a->attempts == a->fail_at;
}

static void *ta_malloc(size_t size, void *ud) {
  ta_alloc *a = ud;
  if (ta_should_fail(a))
    return NULL;
  ta_hdr *h = malloc(sizeof *h + size);
  if (h == NULL)
    return NULL;
  h->size = size;
  a->live_blocks++;
  a->live_bytes += size;
  return h + 1;
}

static void *ta_realloc(void *p, size_t size, void *ud) {
  ta_alloc *a = ud;
  if (p == NULL)
    return ta_malloc(size, ud);
  ta_hdr *h = (ta_hdr *)p - 1;
  if (ta_should_fail(a))
    return NULL;
  size_t old = h->size;
  ta_hdr *n = realloc(h, sizeof *n + size);
  if (n == NULL)
    return NULL;
  n->size = size;
  a->live_bytes = a->live_bytes - old + size;
  return n + 1;
}

static void ta_free(void *p, void *ud) {
  ta_alloc *a = ud;
  if (p == NULL)
    return;
  ta_hdr *h = (ta_hdr *)p - 1;
  a->live_blocks--;
  a->live_bytes -= h->size;
  free(h);
}

void ta_alloc_init(ta_alloc *a, long fail_at) {
  memset(a, 0, sizeof *a);
  a->mem.user_data = a;
  a->mem.malloc = ta_malloc;
  a->mem.realloc = ta_realloc;
  a->mem.free = ta_free;
  a->fail_at = fail_at;
}

void ta_hash_hex(const char *token, char *out) {
  uint8_t h[KR__SHA256_LEN];
  ck_assert_int_eq(kr__sha256(token, strlen(token), h), 0);
  kr__hex_encode(h, sizeof h, out);
}

void ta_upper_hex(char *s) {
  for (; *s; s++)
    if (*s >= 'a' && *s <= 'f')
      *s = (char)(*s - 'a' + 'A');
}

void ta_write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(data, 1, len, f), len);
  ck_assert_int_eq(fclose(f), 0);
}

void ta_check_load_errors(ta_loader load, const char *dir, size_t max,
                          const char *existing) {
  char path[512], want[700], err[512];
  size_t count = 1;

  snprintf(path, sizeof path, "%s/absent.txt", dir);
  ck_assert_int_eq(load(path, &count, err, sizeof err), KR_ENOENT);
  snprintf(want, sizeof want, "%s: cannot open: ", path);
  ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);

  /* A directory opens but cannot be read. */
  ck_assert_int_eq(load(dir, &count, err, sizeof err), KR_EIO);
  snprintf(want, sizeof want, "%s: cannot read: ", dir);
  ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s", err);

  /* Exactly the byte limit (comment lines) loads; one byte more does not. */
  char *big = malloc(max + 1);
  ck_assert_ptr_nonnull(big);
  for (size_t i = 0; i < max; i += 4096) {
    memset(big + i, '#', 4095);
    big[i + 4095] = '\n';
  }
  big[max] = '\n';
  snprintf(path, sizeof path, "%s/big.txt", dir);
  ta_write_file(path, big, max);
  ck_assert_int_eq(load(path, &count, err, sizeof err), 0);
  ck_assert_uint_eq(count, 0);
  ta_write_file(path, big, max + 1);
  ck_assert_int_eq(load(path, &count, err, sizeof err), KR_ETOOBIG);
  snprintf(want, sizeof want, "%s: larger than %zu bytes", path, max);
  ck_assert_str_eq(err, want);
  free(big);
  unlink(path);

  if (geteuid() != 0) {
    ck_assert_int_eq(chmod(existing, 0), 0);
    ck_assert_int_eq(load(existing, &count, err, sizeof err), KR_EIO);
  }
}
