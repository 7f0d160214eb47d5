/* Unit tests: the user-token table (lib/core/user_tokens.c).
 *
 * Linked with -Wl,--wrap=kr__ct_equal (tests/auth/meson.build): every
 * comparison the table makes goes through __wrap_kr__ct_equal below, which
 * counts them, so the test can prove the lookup's structure (every entry of
 * the bucket compared on all 32 bytes, no early exit). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth_helper.h"
#include "core/user_tokens.h"

#define ERRLEN 256

/* ------------------------------------------------ kr__ct_equal wrapper */

int __real_kr__ct_equal(const void *a, const void *b, size_t n);
int __wrap_kr__ct_equal(const void *a, const void *b, size_t n);

static long ct_calls;    /* calls since the last reset */
static long ct_not_full; /* calls with n != 32 */
static long ct_matches;  /* calls that returned 1 */

int __wrap_kr__ct_equal(const void *a, const void *b, size_t n) {
  ct_calls++;
  if (n != KR__SHA256_LEN)
    ct_not_full++;
  int r = __real_kr__ct_equal(a, b, n);
  ct_matches += r;
  return r;
}

static void ct_reset(void) {
  ct_calls = ct_not_full = ct_matches = 0;
}

/* ------------------------------------------------------------- helpers */

static kr__user_token_table *parse_ok(const char *text, size_t len) {
  kr__user_token_table *t = (kr__user_token_table *)1;
  char err[ERRLEN] = "unset";
  int rc =
      kr__user_token_table_parse(NULL, text, len, "u.txt", &t, err, ERRLEN);
  ck_assert_msg(rc == 0, "parse failed: %d %s", rc, err);
  ck_assert_ptr_nonnull(t);
  ck_assert_str_eq(err, "");
  return t;
}

static kr__user_token_table *parse_str(const char *text) {
  return parse_ok(text, strlen(text));
}

static kr__user_token_entry found(const kr__user_token_table *t,
                                  const char *token) {
  kr__user_token_entry e;
  int rc = kr__user_token_lookup(t, token, strlen(token), &e);
  ck_assert_msg(rc == 0, "token %s not found (%d)", token, rc);
  return e;
}

static void expect_missing(const kr__user_token_table *t, const char *token) {
  kr__user_token_entry e;
  memset(&e, 0x55, sizeof e);
  ck_assert_int_eq(kr__user_token_lookup(t, token, strlen(token), &e),
                   KR_ENOENT);
  /* Zeroed on failure: nothing stale for a careless caller. */
  ck_assert_ptr_null(e.user);
  ck_assert_ptr_null(e.agents);
  ck_assert_ptr_null(e.groups);
  ck_assert_uint_eq(e.n_agents + e.n_groups, 0);
  ck_assert_int_eq(e.any_agent, 0);
}

static void expect_error_len(const char *text, size_t len, int want_rc,
                             const char *want_err) {
  kr__user_token_table *t = (kr__user_token_table *)1;
  char err[ERRLEN] = "unset";
  int rc =
      kr__user_token_table_parse(NULL, text, len, "u.txt", &t, err, ERRLEN);
  ck_assert_msg(rc == want_rc, "rc %d (%s), want %d (%s)", rc, err, want_rc,
                want_err);
  ck_assert_ptr_null(t);
  ck_assert_str_eq(err, want_err);
}

static void expect_error(const char *text, int want_rc, const char *want_err) {
  expect_error_len(text, strlen(text), want_rc, want_err);
}

/* Replaces each 'H' of src with a valid hash; out holds 8 KiB. */
static void expand(const char *src, const char *h, char *out, size_t cap) {
  size_t w = 0;
  for (const char *p = src; *p; p++) {
    if (*p == 'H') {
      ck_assert_uint_lt(w + 64, cap);
      memcpy(out + w, h, 64);
      w += 64;
    } else {
      ck_assert_uint_lt(w + 1, cap);
      out[w++] = *p;
    }
  }
  out[w] = '\0';
}

/* --------------------------------------------------------------- parse */

START_TEST(parse_valid_file) {
  char ha[65], hb[65], hc[65], hd[65];
  ta_hash_hex("tok-a", ha);
  ta_hash_hex("tok-b", hb);
  ta_hash_hex("tok-c", hc);
  ta_hash_hex("tok-d", hd);
  ta_upper_hex(hb);
  char text[4096];
  int n = snprintf(text, sizeof text,
                   "# SHA256_HEX AGENTS USER [GROUPS]\n"
                   "\n"
                   "   \t \n"
                   "%s 17,18 alice developers,ops\n"
                   "  %s\t*\t  ci-bot \t  # trailing comment\n"
                   "%s 9223372036854775807 system:serviceaccount:ns:sa"
                   " system:masters\r\n"
                   "#%s 1 commented-out\n"
                   "\t# indented comment\n"
                   "%s 5,4,3 bob@example.com g1,G1,g-2",
                   ha, hb, hc, hd, hd);
  kr__user_token_table *t = parse_ok(text, (size_t)n);
  ck_assert_uint_eq(kr__user_token_table_count(t), 4);

  kr__user_token_entry e = found(t, "tok-a");
  ck_assert_int_eq(e.any_agent, 0);
  ck_assert_uint_eq(e.n_agents, 2);
  ck_assert_int_eq(e.agents[0], 17);
  ck_assert_int_eq(e.agents[1], 18);
  ck_assert_str_eq(e.user, "alice");
  ck_assert_uint_eq(e.n_groups, 2);
  ck_assert_str_eq(e.groups[0], "developers");
  ck_assert_str_eq(e.groups[1], "ops");
  ck_assert_uint_eq(e.line, 4);
  ck_assert(kr__user_token_entry_allows(&e, 17));
  ck_assert(kr__user_token_entry_allows(&e, 18));
  ck_assert(!kr__user_token_entry_allows(&e, 19));
  ck_assert(!kr__user_token_entry_allows(&e, 0));
  ck_assert(!kr__user_token_entry_allows(&e, -17));
  ck_assert(!kr__user_token_entry_allows(NULL, 17));

  e = found(t, "tok-b");
  ck_assert_int_eq(e.any_agent, 1);
  ck_assert_uint_eq(e.n_agents, 0);
  ck_assert_str_eq(e.user, "ci-bot");
  ck_assert_uint_eq(e.n_groups, 0);
  ck_assert_ptr_null(e.groups);
  ck_assert_uint_eq(e.line, 5);
  ck_assert(kr__user_token_entry_allows(&e, 1));
  ck_assert(kr__user_token_entry_allows(&e, INT64_MAX));
  ck_assert(!kr__user_token_entry_allows(&e, 0));

  e = found(t, "tok-c");
  ck_assert_uint_eq(e.n_agents, 1);
  ck_assert_int_eq(e.agents[0], INT64_MAX);
  ck_assert_str_eq(e.user, "system:serviceaccount:ns:sa");
  ck_assert_uint_eq(e.n_groups, 1);
  ck_assert_str_eq(e.groups[0], "system:masters");

  e = found(t, "tok-d");
  ck_assert_uint_eq(e.line, 9);
  ck_assert_uint_eq(e.n_agents, 3);
  ck_assert_int_eq(e.agents[0], 5); /* file order kept */
  ck_assert_int_eq(e.agents[2], 3);
  ck_assert_str_eq(e.user, "bob@example.com");
  ck_assert_uint_eq(e.n_groups, 3);
  ck_assert_str_eq(e.groups[1], "G1"); /* names are case-sensitive */
  ck_assert_str_eq(e.groups[2], "g-2");

  expect_missing(t, "tok-e");
  expect_missing(t, "tok-a ");
  expect_missing(t, "TOK-A");
  expect_missing(t, "");
  kr__user_token_entry x;
  ck_assert_int_eq(kr__user_token_lookup(t, NULL, 1, &x), KR_EINVAL);
  ck_assert_int_eq(kr__user_token_lookup(NULL, "tok-a", 5, &x), KR_EINVAL);
  ck_assert_int_eq(kr__user_token_lookup(t, "tok-a", 5, NULL), 0);
  /* A token with a NUL byte inside is hashed whole. */
  ck_assert_int_eq(kr__user_token_lookup(t, "tok-a\0x", 7, NULL), KR_ENOENT);

  /* Entries in hash order; each found again by its hash. */
  uint8_t prev[KR__SHA256_LEN] = {0};
  for (size_t i = 0; i < 4; i++) {
    uint8_t h[KR__SHA256_LEN];
    kr__user_token_entry g, l;
    ck_assert_int_eq(kr__user_token_table_get(t, i, h, &g), 0);
    ck_assert(i == 0 || memcmp(prev, h, sizeof h) < 0);
    memcpy(prev, h, sizeof h);
    ck_assert_int_eq(kr__user_token_lookup_hash(t, h, &l), 0);
    ck_assert_ptr_eq(g.user, l.user);
    ck_assert_uint_eq(g.line, l.line);
  }
  ck_assert_int_eq(kr__user_token_table_get(t, 4, NULL, NULL), KR_EINVAL);
  ck_assert_int_eq(kr__user_token_table_get(NULL, 0, NULL, NULL), KR_EINVAL);
  ck_assert_int_eq(kr__user_token_lookup_hash(t, NULL, NULL), KR_EINVAL);
  kr__user_token_table_free(t);
  kr__user_token_table_free(NULL);
  ck_assert_uint_eq(kr__user_token_table_count(NULL), 0);
}
END_TEST

START_TEST(parse_empty_and_comments_only) {
  kr__user_token_table *t = parse_ok("", 0);
  ck_assert_uint_eq(kr__user_token_table_count(t), 0);
  expect_missing(t, "x");
  kr__user_token_table_free(t);
  t = parse_ok(NULL, 0);
  kr__user_token_table_free(t);
  t = parse_str("# nothing\n\n   # here\n\r\n#");
  ck_assert_uint_eq(kr__user_token_table_count(t), 0);
  kr__user_token_table_free(t);

  char err[ERRLEN];
  ck_assert_int_eq(
      kr__user_token_table_parse(NULL, "x", 1, "u", NULL, err, ERRLEN),
      KR_EINVAL);
  ck_assert_int_eq(
      kr__user_token_table_parse(NULL, NULL, 1, "u", &t, err, ERRLEN),
      KR_EINVAL);
  ck_assert_ptr_null(t);
  ck_assert_str_eq(err, "u: invalid argument");
  ck_assert_int_eq(
      kr__user_token_table_parse(NULL, "x", 1, NULL, &t, err, ERRLEN),
      KR_ECONFIG);
  ck_assert_str_eq(err, "user-tokens:1: missing agents");
  ck_assert_int_eq(kr__user_token_table_parse(NULL, "x", 1, NULL, &t, NULL, 0),
                   KR_ECONFIG);
  /* A short error buffer is truncated, still terminated. */
  char small[8];
  ck_assert_int_eq(
      kr__user_token_table_parse(NULL, "x", 1, "u.txt", &t, small, 8),
      KR_ECONFIG);
  ck_assert_str_eq(small, "u.txt:1");
}
END_TEST

typedef struct err_case {
  const char *line; /* each 'H' becomes a valid hash */
  int rc;
  const char *msg;
} err_case;

#define NOT_ID "agent id is not a positive decimal integer"
#define BAD_USER                                                               \
  "user name has a character other than printable ASCII (no space or comma)"
#define BAD_GROUP                                                              \
  "group name has a character other than printable ASCII (no space or comma)"

/* Each bad line sits on line 3 behind a comment and a blank line, then
 * alone on line 1 without a newline. */
START_TEST(every_error_names_its_line) {
  static const err_case cases[] = {
      {"H", KR_ECONFIG, "missing agents"},
      {"H  # 1 alice", KR_ECONFIG, "missing agents"},
      {"H 1", KR_ECONFIG, "missing user"},
      {"H 1 \t ", KR_ECONFIG, "missing user"},
      {"H 1 a g extra", KR_ECONFIG,
       "too many fields (hash, agents, user, groups)"},
      {"abc 1 a", KR_ECONFIG, "hash is not 64 hex characters"},
      {"Ha 1 a", KR_ECONFIG, "hash is not 64 hex characters"},
      {"0H 1 a", KR_ECONFIG, "hash is not 64 hex characters"},
      {"17 H alice", KR_ECONFIG, "hash is not 64 hex characters"},
      {"H x a", KR_ECONFIG, NOT_ID},
      {"H 0 a", KR_ECONFIG, NOT_ID},
      {"H 01 a", KR_ECONFIG, NOT_ID},
      {"H -1 a", KR_ECONFIG, NOT_ID},
      {"H +1 a", KR_ECONFIG, NOT_ID},
      {"H 1.5 a", KR_ECONFIG, NOT_ID},
      {"H 1,,2 a", KR_ECONFIG, NOT_ID},
      {"H ,1 a", KR_ECONFIG, NOT_ID},
      {"H 1, a", KR_ECONFIG, NOT_ID},
      {"H , a", KR_ECONFIG, NOT_ID},
      {"H ** a", KR_ECONFIG, NOT_ID},
      {"H 1;2 a", KR_ECONFIG, NOT_ID},
      {"H *,1 a", KR_ECONFIG,
       "\"*\" must be the only entry of the agents field"},
      {"H 1,* a", KR_ECONFIG,
       "\"*\" must be the only entry of the agents field"},
      {"H 9223372036854775808 a", KR_ECONFIG,
       "agent id is larger than 9223372036854775807"},
      {"H 1,99999999999999999999 a", KR_ECONFIG,
       "agent id is larger than 9223372036854775807"},
      {"H 3,4,3 a", KR_ECONFIG, "agent id listed twice"},
      {"H 1 al,ice", KR_ECONFIG, BAD_USER},
      {"H 1 al\x01ice", KR_ECONFIG, BAD_USER},
      {"H 1 al\x7fice", KR_ECONFIG, BAD_USER},
      {"H 1 al\rice", KR_ECONFIG, BAD_USER},
      {"H 1 al\xc3\xa9ice", KR_ECONFIG, BAD_USER},
      {"H 1 a g1,,g2", KR_ECONFIG, "empty group name"},
      {"H 1 a ,g", KR_ECONFIG, "empty group name"},
      {"H 1 a g,", KR_ECONFIG, "empty group name"},
      {"H 1 a g\x1b", KR_ECONFIG, BAD_GROUP},
      {"H 1 a g\x80", KR_ECONFIG, BAD_GROUP},
      {"H 1 a dev,ops,dev", KR_ECONFIG, "group listed twice"},
  };
  char h[65];
  ta_hash_hex("tok", h);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char line[8192], text[8400], want[512];
    expand(cases[i].line, h, line, sizeof line);
    snprintf(text, sizeof text, "# users\n\n%s\n%s 1 ok\n", line, h);
    snprintf(want, sizeof want, "u.txt:3: %s", cases[i].msg);
    expect_error(text, cases[i].rc, want);
    snprintf(want, sizeof want, "u.txt:1: %s", cases[i].msg);
    expect_error(line, cases[i].rc, want);
  }
  /* A non-hex character at each position of the hash. */
  for (int pos = 0; pos < 64; pos++) {
    char text[128];
    snprintf(text, sizeof text, "%s 1 a", h);
    text[pos] = 'g';
    expect_error(text, KR_ECONFIG, "u.txt:1: hash is not 64 hex characters");
  }
  /* A NUL byte inside a line. */
  char nul[128];
  int n = snprintf(nul, sizeof nul, "\n%s 1 ab", h);
  nul[n - 1] = '\0';
  expect_error_len(nul, (size_t)n, KR_ECONFIG,
                   "u.txt:2: line contains a NUL byte");
}
END_TEST

START_TEST(field_limits) {
  char h[65];
  ta_hash_hex("tok", h);
  static char text[20000];
  char name[300];
  memset(name, 'n', sizeof name);

  /* User and group names: 255 bytes accepted, 256 refused. */
  snprintf(text, sizeof text, "%s 1 %.255s %.255s,g\n", h, name, name);
  kr__user_token_table *t = parse_str(text);
  kr__user_token_entry e = found(t, "tok");
  ck_assert_uint_eq(strlen(e.user), 255);
  ck_assert_uint_eq(strlen(e.groups[0]), 255);
  kr__user_token_table_free(t);
  snprintf(text, sizeof text, "%s 1 %.256s\n", h, name);
  expect_error(text, KR_ECONFIG, "u.txt:1: user name is longer than 255 bytes");
  snprintf(text, sizeof text, "%s 1 u g,%.256s\n", h, name);
  expect_error(text, KR_ECONFIG,
               "u.txt:1: group name is longer than 255 bytes");

  /* 64 agent ids, then 65. */
  int w = snprintf(text, sizeof text, "%s ", h);
  for (int i = 1; i <= 64; i++)
    w += snprintf(text + w, sizeof text - (size_t)w, "%s%d", i > 1 ? "," : "",
                  1000 + i);
  snprintf(text + w, sizeof text - (size_t)w, " u");
  t = parse_str(text);
  e = found(t, "tok");
  ck_assert_uint_eq(e.n_agents, 64);
  ck_assert_int_eq(e.agents[63], 1064);
  ck_assert(kr__user_token_entry_allows(&e, 1064));
  kr__user_token_table_free(t);
  snprintf(text + w, sizeof text - (size_t)w, ",7 u");
  expect_error(text, KR_ECONFIG, "u.txt:1: more than 64 agent ids");

  /* 32 groups of 255 bytes (a long but legal line), then 33. */
  w = snprintf(text, sizeof text, "%s * u ", h);
  for (int i = 0; i < 32; i++)
    w += snprintf(text + w, sizeof text - (size_t)w, "%s%02d%.253s",
                  i ? "," : "", i, name);
  t = parse_str(text);
  e = found(t, "tok");
  ck_assert_uint_eq(e.n_groups, 32);
  ck_assert_uint_eq(strlen(e.groups[31]), 255);
  ck_assert(strncmp(e.groups[31], "31", 2) == 0);
  kr__user_token_table_free(t);
  snprintf(text + w, sizeof text - (size_t)w, ",x");
  expect_error(text, KR_ECONFIG, "u.txt:1: more than 32 groups");

  /* The default line limit: 16384 bytes fine, 16385 not (comments and the
   * trailing '\r' count). */
  w = snprintf(text, sizeof text, "%s 1 padded", h);
  memset(text + w, ' ', KR__USER_TOKEN_FILE_MAX_LINE - (size_t)w);
  strcpy(text + KR__USER_TOKEN_FILE_MAX_LINE, "\r");
  expect_error(text, KR_ETOOBIG, "u.txt:1: line is longer than 16384 bytes");
  text[KR__USER_TOKEN_FILE_MAX_LINE] = '\0';
  t = parse_str(text);
  ck_assert_str_eq(found(t, "tok").user, "padded");
  kr__user_token_table_free(t);
}
END_TEST

START_TEST(duplicate_hashes) {
  char ha[65], hb[65], hA[65];
  ta_hash_hex("tok-a", ha);
  ta_hash_hex("tok-b", hb);
  strcpy(hA, ha);
  ta_upper_hex(hA);
  char text[1024];
  snprintf(text, sizeof text, "# x\n%s 1 a\n%s 2 b\n\n%s 3 c g\n", ha, hb, hA);
  expect_error(text, KR_ECONFIG, "u.txt:5: hash duplicates the one on line 2");
  const char *lo = strcmp(ha, hb) < 0 ? ha : hb;
  const char *hi = lo == ha ? hb : ha;
  snprintf(text, sizeof text, "%s 1 a\n%s 1 b\n%s 1 c\n%s 1 d\n%s 1 e\n", lo,
           hi, hi, lo, lo);
  expect_error(text, KR_ECONFIG, "u.txt:3: hash duplicates the one on line 2");
  /* The same user and agents with different tokens is fine. */
  snprintf(text, sizeof text, "%s 7 alice\n%s 7 alice\n", ha, hb);
  kr__user_token_table *t = parse_str(text);
  ck_assert_str_eq(found(t, "tok-a").user, "alice");
  ck_assert_str_eq(found(t, "tok-b").user, "alice");
  kr__user_token_table_free(t);
}
END_TEST

START_TEST(explicit_limits) {
  char ha[65], hb[65];
  ta_hash_hex("a", ha);
  ta_hash_hex("b", hb);
  char text[512];
  snprintf(text, sizeof text, "%s 1 a\n%s 2 b\n", ha, hb);
  size_t len = strlen(text);
  kr__user_token_table *t;
  char err[ERRLEN];
  kr__user_token_limits lim = {len, 2, 100};
  ck_assert_int_eq(kr__user_token_table_parse_limits(NULL, text, len, "u", &lim,
                                                     &t, err, ERRLEN),
                   0);
  ck_assert_uint_eq(kr__user_token_table_count(t), 2);
  kr__user_token_table_free(t);
  lim.max_bytes = len - 1;
  ck_assert_int_eq(kr__user_token_table_parse_limits(NULL, text, len, "u", &lim,
                                                     &t, err, ERRLEN),
                   KR_ETOOBIG);
  char want[64];
  snprintf(want, sizeof want, "u: larger than %zu bytes", len - 1);
  ck_assert_str_eq(err, want);
  lim.max_bytes = len;
  lim.max_entries = 1;
  ck_assert_int_eq(kr__user_token_table_parse_limits(NULL, text, len, "u", &lim,
                                                     &t, err, ERRLEN),
                   KR_ETOOBIG);
  ck_assert_str_eq(err, "u:2: more than 1 entries");
  lim.max_entries = 2;
  lim.max_line = 69;
  ck_assert_int_eq(kr__user_token_table_parse_limits(NULL, text, len, "u", &lim,
                                                     &t, err, ERRLEN),
                   0);
  kr__user_token_table_free(t);
  lim.max_line = 67;
  ck_assert_int_eq(kr__user_token_table_parse_limits(NULL, text, len, "u", &lim,
                                                     &t, err, ERRLEN),
                   KR_ETOOBIG);
  ck_assert_str_eq(err, "u:1: line is longer than 67 bytes");
  ck_assert_ptr_null(t);
}
END_TEST

/* A token pasted where a hash belongs, or a user name that is really a
 * token, never appears in the message. */
START_TEST(errors_never_contain_the_token) {
  static const char *const lines[] = {
      "glpat-SECRETSECRET 1 alice",
      "H glpat-SECRETSECRET alice",
      "H 1 glpat-SECRETSECRET,x",
      "H 1 alice glpat-SECRETSECRET,,x",
      "H 1 alice glpat-SECRETSECRET glpat-SECRETSECRET",
      "H 1 glpat-SECRETSECRET\x01",
  };
  char h[65];
  ta_hash_hex("tok", h);
  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
    char line[512];
    expand(lines[i], h, line, sizeof line);
    kr__user_token_table *t;
    char err[ERRLEN];
    ck_assert_int_eq(kr__user_token_table_parse(NULL, line, strlen(line),
                                                "u.txt", &t, err, ERRLEN),
                     KR_ECONFIG);
    ck_assert_msg(strstr(err, "SECRET") == NULL, "leak: %s", err);
    ck_assert_msg(strstr(err, h) == NULL, "hash quoted: %s", err);
    ck_assert(strncmp(err, "u.txt:1: ", 9) == 0);
  }
}
END_TEST

/* ------------------------------------------------------------- lookups */

/* The lookup's structure, through the kr__ct_equal wrapper: every lookup
 * compares whole hashes only, a miss in an empty bucket compares nothing,
 * and a hit compares against its whole bucket (the same count for the
 * first, middle and last member), so the time does not tell where in the
 * bucket, or whether, a stored hash matched. */
START_TEST(constant_time_structure) {
  enum { N = 3000 };
  char *text = malloc((size_t)N * 80);
  ck_assert_ptr_nonnull(text);
  size_t len = 0;
  for (int i = 0; i < N; i++) {
    char tok[32], h[65];
    snprintf(tok, sizeof tok, "user-token-%d", i);
    ta_hash_hex(tok, h);
    len += (size_t)sprintf(text + len, "%s %d u%d\n", h, i + 1, i);
  }
  kr__user_token_table *t = parse_ok(text, len);
  free(text);
  ck_assert_uint_eq(kr__user_token_table_count(t), N);

  /* Calls per entry, in hash order. */
  static long calls[N];
  for (size_t i = 0; i < N; i++) {
    uint8_t h[KR__SHA256_LEN];
    kr__user_token_entry e;
    ck_assert_int_eq(kr__user_token_table_get(t, i, h, NULL), 0);
    ct_reset();
    ck_assert_int_eq(kr__user_token_lookup_hash(t, h, &e), 0);
    ck_assert_int_eq(ct_not_full, 0);
    ck_assert_int_eq(ct_matches, 1);
    ck_assert_int_ge(ct_calls, 1);
    calls[i] = ct_calls;
  }
  /* Sorted entries form contiguous buckets: a run of c entries that each
   * needed exactly c comparisons. */
  size_t multi = 0;
  for (size_t i = 0; i < N;) {
    long c = calls[i];
    ck_assert_uint_le(i + (size_t)c, N);
    for (long k = 0; k < c; k++)
      ck_assert_int_eq(calls[i + (size_t)k], c);
    if (c > 1)
      multi++;
    i += (size_t)c;
  }
  /* With about one entry per bucket, some buckets hold several (birthday
   * bound): the no-early-exit property was actually exercised. */
  ck_assert_uint_gt(multi, 10);

  /* Misses: whole-hash comparisons only, never a match. */
  long empty = 0, nonempty = 0;
  for (int i = 0; i < 2000; i++) {
    char tok[32];
    snprintf(tok, sizeof tok, "absent-%d", i);
    ct_reset();
    ck_assert_int_eq(kr__user_token_lookup(t, tok, strlen(tok), NULL),
                     KR_ENOENT);
    ck_assert_int_eq(ct_not_full, 0);
    ck_assert_int_eq(ct_matches, 0);
    if (ct_calls == 0)
      empty++;
    else
      nonempty++;
  }
  ck_assert_int_gt(empty, 0);
  ck_assert_int_gt(nonempty, 0);
  kr__user_token_table_free(t);
}
END_TEST

START_TEST(lookup_many_random) {
  ta_rng r;
  ta_rng_init(&r, 20240601, "lookup_many_random");
  enum { N = 5000 };
  char(*toks)[33] = malloc(sizeof(*toks) * N);
  char *text = malloc((size_t)N * 100);
  ck_assert_ptr_nonnull(toks);
  ck_assert_ptr_nonnull(text);
  size_t len = 0;
  for (int i = 0; i < N; i++) {
    uint8_t raw[16];
    ta_rng_bytes(&r, raw, sizeof raw);
    kr__hex_encode(raw, sizeof raw, toks[i]);
    char h[65];
    ta_hash_hex(toks[i], h);
    len += (size_t)sprintf(text + len, "%s %d,%d user%d grp%d\n", h, i + 1,
                           i + N + 1, i, i % 7);
  }
  kr__user_token_table *t = parse_ok(text, len);
  for (int i = 0; i < N; i++) {
    kr__user_token_entry e = found(t, toks[i]);
    char want[32];
    snprintf(want, sizeof want, "user%d", i);
    ck_assert_str_eq(e.user, want);
    ck_assert_int_eq(e.agents[0], i + 1);
    ck_assert_int_eq(e.agents[1], i + N + 1);
    ck_assert_uint_eq(e.line, (size_t)i + 1);
    snprintf(want, sizeof want, "grp%d", i % 7);
    ck_assert_str_eq(e.groups[0], want);
    toks[i][0] ^= 1;
    expect_missing(t, toks[i]);
  }
  kr__user_token_table_free(t);
  free(text);
  free(toks);
}
END_TEST

/* Every allocation of a parse fails in turn: an ENOMEM with nothing
 * leaked, until the parse succeeds. */
START_TEST(allocation_failures) {
  enum { N = 300 };
  char *text = malloc((size_t)N * 100);
  ck_assert_ptr_nonnull(text);
  size_t len = 0;
  for (int i = 0; i < N; i++) {
    char tok[16], h[65];
    snprintf(tok, sizeof tok, "t%d", i);
    ta_hash_hex(tok, h);
    len += (size_t)sprintf(text + len, "%s %d,%d user-%d g%d,h\n", h, i + 1,
                           i + 2, i, i);
  }
  int ok = 0;
  for (long n = 1; n < 200 && !ok; n++) {
    ta_alloc a;
    ta_alloc_init(&a, n);
    kr__user_token_table *t = (kr__user_token_table *)1;
    char err[ERRLEN];
    int rc =
        kr__user_token_table_parse(&a.mem, text, len, "u", &t, err, ERRLEN);
    if (rc == 0) {
      ok = 1;
      ck_assert_uint_eq(kr__user_token_table_count(t), N);
      kr__user_token_entry e = found(t, "t7");
      ck_assert_str_eq(e.user, "user-7");
      ck_assert_str_eq(e.groups[1], "h");
      kr__user_token_table_free(t);
    } else {
      ck_assert_int_eq(rc, KR_ENOMEM);
      ck_assert_ptr_null(t);
      ck_assert(strstr(err, "out of memory") != NULL);
    }
    ck_assert_int_eq(a.live_blocks, 0);
    ck_assert_uint_eq(a.live_bytes, 0);
  }
  ck_assert(ok);
  free(text);
}
END_TEST

/* --------------------------------------------------------------- files */

static char tmpdir[64];

static int load_count(const char *path, size_t *count, char *err,
                      size_t errlen) {
  kr__user_token_table *t = (kr__user_token_table *)1;
  int rc = kr__user_token_table_load(NULL, path, &t, err, errlen);
  if (rc == 0)
    *count = kr__user_token_table_count(t);
  else
    ck_assert_ptr_null(t);
  kr__user_token_table_free(t);
  return rc;
}

START_TEST(load_from_files) {
  strcpy(tmpdir, "/tmp/kr-test-users-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  char path[128], want[256], err[ERRLEN];
  kr__user_token_table *t = (kr__user_token_table *)1;

  char h[65], text[256];
  ta_hash_hex("tok-file", h);
  snprintf(text, sizeof text, "# users\n%s 42 alice dev\n", h);
  snprintf(path, sizeof path, "%s/users.txt", tmpdir);
  ta_write_file(path, text, strlen(text));
  ck_assert_int_eq(kr__user_token_table_load(NULL, path, &t, err, ERRLEN), 0);
  ck_assert_str_eq(err, "");
  kr__user_token_entry e = found(t, "tok-file");
  ck_assert_str_eq(e.user, "alice");
  ck_assert_int_eq(e.agents[0], 42);
  kr__user_token_table_free(t);

  /* Parse errors name the path. */
  snprintf(text, sizeof text, "%s 42 alice\n\nglpat-x 43 bob\n", h);
  ta_write_file(path, text, strlen(text));
  ck_assert_int_eq(kr__user_token_table_load(NULL, path, &t, err, ERRLEN),
                   KR_ECONFIG);
  ck_assert_ptr_null(t);
  snprintf(want, sizeof want, "%s:3: hash is not 64 hex characters", path);
  ck_assert_str_eq(err, want);

  /* Missing, unreadable, at and over the size limit. */
  ta_check_load_errors(load_count, tmpdir, KR__USER_TOKEN_FILE_MAX_BYTES, path);
  unlink(path);
  ck_assert_int_eq(rmdir(tmpdir), 0);
  ck_assert_int_eq(kr__user_token_table_load(NULL, NULL, &t, err, ERRLEN),
                   KR_EINVAL);
  ck_assert_int_eq(kr__user_token_table_load(NULL, "x", NULL, err, ERRLEN),
                   KR_EINVAL);
}
END_TEST

int main(void) {
  Suite *s = suite_create("user_tokens");
  TA_ADD(s, parse_valid_file, 10);
  TA_ADD(s, parse_empty_and_comments_only, 10);
  TA_ADD(s, every_error_names_its_line, 10);
  TA_ADD(s, field_limits, 10);
  TA_ADD(s, duplicate_hashes, 10);
  TA_ADD(s, explicit_limits, 10);
  TA_ADD(s, errors_never_contain_the_token, 10);
  TA_ADD(s, constant_time_structure, 30);
  TA_ADD(s, lookup_many_random, 30);
  TA_ADD(s, allocation_failures, 60);
  TA_ADD(s, load_from_files, 30);
  return ta_run_suite(s);
}
