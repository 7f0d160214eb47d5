/* Unit tests: the agent token table (lib/core/token_file.c). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth_helper.h"
#include "core/token_file.h"

#define ERRLEN 256

static kr__token_table *parse_ok(const char *text, size_t len) {
  kr__token_table *t = NULL;
  char err[ERRLEN] = "unset";
  int rc = kr__token_table_parse(NULL, text, len, "t.txt", &t, err, ERRLEN);
  ck_assert_msg(rc == 0, "parse failed: %d %s", rc, err);
  ck_assert_ptr_nonnull(t);
  ck_assert_str_eq(err, "");
  return t;
}

static void expect_found(const kr__token_table *t, const char *token,
                         int64_t want_id, const char *want_name) {
  int64_t id = -1;
  const char *name = NULL;
  int rc = kr__token_table_lookup(t, token, strlen(token), &id, &name);
  ck_assert_msg(rc == 0, "token %s not found (%d)", token, rc);
  ck_assert_int_eq(id, want_id);
  ck_assert_str_eq(name, want_name);
}

static void expect_missing(const kr__token_table *t, const char *token) {
  int64_t id = -1;
  const char *name = NULL;
  ck_assert_int_eq(kr__token_table_lookup(t, token, strlen(token), &id, &name),
                   KR_EAUTH);
  ck_assert_int_eq(id, -1);
  ck_assert_ptr_null(name);
}

/* Parses text (its own length) and expects rc and exactly want_err. */
static void expect_error_len(const char *text, size_t len, int want_rc,
                             const char *want_err) {
  kr__token_table *t = (kr__token_table *)1;
  char err[ERRLEN] = "unset";
  int rc = kr__token_table_parse(NULL, text, len, "t.txt", &t, err, ERRLEN);
  ck_assert_msg(rc == want_rc, "rc %d (%s), want %d (%s)", rc, err, want_rc,
                want_err);
  ck_assert_ptr_null(t);
  ck_assert_str_eq(err, want_err);
}

static void expect_error(const char *text, int want_rc, const char *want_err) {
  expect_error_len(text, strlen(text), want_rc, want_err);
}

START_TEST(parse_valid_file) {
  char ha[65], hb[65], hc[65], hd[65];
  ta_hash_hex("tok-a", ha);
  ta_hash_hex("tok-b", hb);
  ta_hash_hex("tok-c", hc);
  ta_hash_hex("tok-d", hd);
  ta_upper_hex(hb);
  char text[2048];
  int n = snprintf(text, sizeof text,
                   "# agent tokens\n"
                   "\n"
                   "   \t \n"
                   "17 %s prod cluster\n"
                   "  18\t%s\t  staging \t eu   # trailing comment\n"
                   "17 %s prod cluster (rotated)\r\n"
                   "#19 %s commented out\n"
                   "\t# indented comment\n"
                   "9223372036854775807 "
                   /* sha256("abc"), as printed by sha256sum */
                   "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61"
                   "f20015ad max id",
                   ha, hb, hc, hd);
  kr__token_table *t = parse_ok(text, (size_t)n);
  ck_assert_uint_eq(kr__token_table_count(t), 4);
  expect_found(t, "tok-a", 17, "prod cluster");
  expect_found(t, "tok-b", 18, "staging \t eu");
  expect_found(t, "tok-c", 17, "prod cluster (rotated)");
  expect_found(t, "abc", INT64_MAX, "max id");
  expect_missing(t, "tok-d");
  expect_missing(t, "tok-a ");
  expect_missing(t, "TOK-A");
  expect_missing(t, "");
  ck_assert_int_eq(kr__token_table_lookup(t, NULL, 1, NULL, NULL), KR_EINVAL);
  ck_assert_int_eq(kr__token_table_lookup(NULL, "tok-a", 5, NULL, NULL),
                   KR_EINVAL);
  ck_assert_int_eq(kr__token_table_lookup(t, "tok-a", 5, NULL, NULL), 0);
  /* A token with a NUL byte inside is hashed whole. */
  ck_assert_int_eq(kr__token_table_lookup(t, "tok-a\0x", 7, NULL, NULL),
                   KR_EAUTH);

  /* Entries in hash order, with their file lines. */
  uint8_t prev[KR__SHA256_LEN] = {0};
  for (size_t i = 0; i < 4; i++) {
    uint8_t h[KR__SHA256_LEN];
    int64_t id;
    const char *name;
    size_t line;
    ck_assert_int_eq(kr__token_table_get(t, i, &id, h, &name, &line), 0);
    ck_assert(i == 0 || memcmp(prev, h, sizeof h) < 0);
    memcpy(prev, h, sizeof h);
    ck_assert_int_eq(kr__token_table_lookup_hash(t, h, &id, &name), 0);
    if (strcmp(name, "prod cluster") == 0)
      ck_assert_uint_eq(line, 4);
    else if (strcmp(name, "max id") == 0)
      ck_assert_uint_eq(line, 9);
  }
  ck_assert_int_eq(kr__token_table_get(t, 4, NULL, NULL, NULL, NULL),
                   KR_EINVAL);
  kr__token_table_free(t);
  kr__token_table_free(NULL);
  ck_assert_uint_eq(kr__token_table_count(NULL), 0);
}
END_TEST

START_TEST(parse_empty_and_comments_only) {
  kr__token_table *t = parse_ok("", 0);
  ck_assert_uint_eq(kr__token_table_count(t), 0);
  expect_missing(t, "x");
  kr__token_table_free(t);
  t = parse_ok(NULL, 0);
  kr__token_table_free(t);
  const char *c = "# nothing\n\n   # here\n\r\n#";
  t = parse_ok(c, strlen(c));
  ck_assert_uint_eq(kr__token_table_count(t), 0);
  kr__token_table_free(t);
  /* Argument errors. */
  char err[ERRLEN];
  ck_assert_int_eq(kr__token_table_parse(NULL, "x", 1, "t", NULL, err, ERRLEN),
                   KR_EINVAL);
  ck_assert_int_eq(kr__token_table_parse(NULL, NULL, 1, "t", &t, err, ERRLEN),
                   KR_EINVAL);
  ck_assert_ptr_null(t);
  ck_assert_str_eq(err, "t: invalid argument");
  /* No name: a generic one; no err buffer at all is fine. */
  ck_assert_int_eq(kr__token_table_parse(NULL, "x", 1, NULL, &t, err, ERRLEN),
                   KR_ECONFIG);
  ck_assert_str_eq(err, "tokens:1: agent id is not a positive decimal integer");
  ck_assert_int_eq(kr__token_table_parse(NULL, "x", 1, NULL, &t, NULL, 0),
                   KR_ECONFIG);
}
END_TEST

typedef struct err_case {
  const char *line; /* H = a valid hash is substituted for "H" */
  int rc;
  const char *msg;
} err_case;

/* Each bad line sits on line 3 behind a comment and a blank line. */
START_TEST(every_error_names_its_line) {
  static const err_case cases[] = {
      {"x H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"-1 H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"+1 H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"0 H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"01 H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"1.5 H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"1x H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"0x10 H n", KR_ECONFIG, "agent id is not a positive decimal integer"},
      {"9223372036854775808 H n", KR_ECONFIG,
       "agent id is larger than 9223372036854775807"},
      {"99999999999999999999999 H n", KR_ECONFIG,
       "agent id is larger than 9223372036854775807"},
      {"5", KR_ECONFIG, "missing hash"},
      {"5   # H n", KR_ECONFIG, "missing hash"},
      {"5 abc n", KR_ECONFIG, "hash is not 64 hex characters"},
      {"5 Ha n", KR_ECONFIG, "hash is not 64 hex characters"},
      {"5 0H n", KR_ECONFIG, "hash is not 64 hex characters"},
      {"5 H", KR_ECONFIG, "missing name"},
      {"5 H   \t ", KR_ECONFIG, "missing name"},
      {"5 H # name in a comment", KR_ECONFIG, "missing name"},
      {"5 H a\x01z", KR_ECONFIG, "name contains a control character"},
      {"5 H a\x7fz", KR_ECONFIG, "name contains a control character"},
      {"5 H a\rz", KR_ECONFIG, "name contains a control character"},
      {"5 H a\x1bz", KR_ECONFIG, "name contains a control character"},
  };
  char h[65];
  ta_hash_hex("tok", h);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char line[256], text[512], want[256];
    const char *src = cases[i].line;
    size_t w = 0;
    for (const char *p = src; *p; p++) {
      if (*p == 'H') {
        memcpy(line + w, h, 64);
        w += 64;
      } else {
        line[w++] = *p;
      }
    }
    line[w] = '\0';
    snprintf(text, sizeof text, "# tokens\n\n%s\n1 %s ok\n", line, h);
    snprintf(want, sizeof want, "t.txt:3: %s", cases[i].msg);
    expect_error(text, cases[i].rc, want);
    /* Same without the final newline and at line 1. */
    snprintf(want, sizeof want, "t.txt:1: %s", cases[i].msg);
    expect_error(line, cases[i].rc, want);
  }
  /* The hash with a non-hex character at each position. */
  for (int pos = 0; pos < 64; pos++) {
    char text[128];
    snprintf(text, sizeof text, "1 %s n", h);
    text[2 + pos] = 'g';
    expect_error(text, KR_ECONFIG, "t.txt:1: hash is not 64 hex characters");
  }
  /* A NUL byte inside a line. */
  char nul[100];
  int n = snprintf(nul, sizeof nul, "\n1 %s na", h);
  nul[n - 1] = '\0';
  expect_error_len(nul, (size_t)n, KR_ECONFIG,
                   "t.txt:2: line contains a NUL byte");
}
END_TEST

START_TEST(name_and_line_length_limits) {
  char h[65];
  ta_hash_hex("tok", h);
  char text[8192];
  char name[300];
  memset(name, 'n', sizeof name);
  /* 255-byte name accepted (inner blanks kept, outer trimmed). */
  name[10] = ' ';
  snprintf(text, sizeof text, "1 %s  %.255s  \n", h, name);
  kr__token_table *t = parse_ok(text, strlen(text));
  const char *got;
  ck_assert_int_eq(kr__token_table_lookup(t, "tok", 3, NULL, &got), 0);
  ck_assert_uint_eq(strlen(got), 255);
  kr__token_table_free(t);
  snprintf(text, sizeof text, "1 %s %.256s\n", h, name);
  expect_error(text, KR_ECONFIG, "t.txt:1: name is longer than 255 bytes");

  /* Lines of 4096 bytes (without the newline) are fine, 4097 are not;
   * comments and trailing blanks count. */
  memset(text, '#', 4096);
  strcpy(text + 4096, "\n");
  t = parse_ok(text, strlen(text));
  kr__token_table_free(t);
  int n = snprintf(text, sizeof text, "1 %s padded", h);
  memset(text + n, ' ', 4096 - (size_t)n);
  strcpy(text + 4096, "\r"); /* the '\r' counts too */
  expect_error(text, KR_ETOOBIG, "t.txt:1: line is longer than 4096 bytes");
  text[4096] = '\0';
  t = parse_ok(text, strlen(text));
  ck_assert_int_eq(kr__token_table_lookup(t, "tok", 3, NULL, &got), 0);
  ck_assert_str_eq(got, "padded");
  kr__token_table_free(t);
  text[0] = '#';
  memset(text + 1, 'x', 4096);
  strcpy(text + 4097, "\n");
  expect_error(text, KR_ETOOBIG, "t.txt:1: line is longer than 4096 bytes");
}
END_TEST

START_TEST(duplicate_hashes) {
  char ha[65], hb[65], hA[65];
  ta_hash_hex("tok-a", ha);
  ta_hash_hex("tok-b", hb);
  strcpy(hA, ha);
  ta_upper_hex(hA);
  char text[1024];
  snprintf(text, sizeof text,
           "# x\n1 %s a\n2 %s b\n\n3 %s a again under another id\n", ha, hb,
           hA);
  expect_error(text, KR_ECONFIG, "t.txt:5: hash duplicates the one on line 2");
  /* Several duplicates: the earliest second occurrence is reported, even
   * when a pair that repeats later sorts first by hash. */
  const char *lo = strcmp(ha, hb) < 0 ? ha : hb;
  const char *hi = lo == ha ? hb : ha;
  snprintf(text, sizeof text,
           "1 %s a\n2 %s b\n3 %s c\n4 %s d\n5 %s e\n6 %s f\n", lo, hi, hi, lo,
           hi, lo);
  expect_error(text, KR_ECONFIG, "t.txt:3: hash duplicates the one on line 2");
  /* The same agent id with different tokens is fine. */
  snprintf(text, sizeof text, "7 %s old\n7 %s new\n", ha, hb);
  kr__token_table *t = parse_ok(text, strlen(text));
  expect_found(t, "tok-a", 7, "old");
  expect_found(t, "tok-b", 7, "new");
  kr__token_table_free(t);
}
END_TEST

START_TEST(explicit_limits) {
  char h[3][65];
  ta_hash_hex("t0", h[0]);
  ta_hash_hex("t1", h[1]);
  ta_hash_hex("t2", h[2]);
  char text[1024];
  snprintf(text, sizeof text, "1 %s a\n# c\n2 %s b\n3 %s c\n", h[0], h[1],
           h[2]);
  kr__token_limits lim = {1000, 2, 4096};
  kr__token_table *t = (kr__token_table *)1;
  char err[ERRLEN];
  ck_assert_int_eq(kr__token_table_parse_limits(NULL, text, strlen(text), "f",
                                                &lim, &t, err, ERRLEN),
                   KR_ETOOBIG);
  ck_assert_ptr_null(t);
  ck_assert_str_eq(err, "f:4: more than 2 entries");
  lim.max_entries = 3;
  ck_assert_int_eq(kr__token_table_parse_limits(NULL, text, strlen(text), "f",
                                                &lim, &t, err, ERRLEN),
                   0);
  ck_assert_uint_eq(kr__token_table_count(t), 3);
  kr__token_table_free(t);
  lim.max_bytes = strlen(text) - 1;
  ck_assert_int_eq(kr__token_table_parse_limits(NULL, text, strlen(text), "f",
                                                &lim, &t, err, ERRLEN),
                   KR_ETOOBIG);
  char want[64];
  snprintf(want, sizeof want, "f: larger than %zu bytes", strlen(text) - 1);
  ck_assert_str_eq(err, want);
  lim.max_bytes = 1000;
  lim.max_line = 20;
  ck_assert_int_eq(kr__token_table_parse_limits(NULL, text, strlen(text), "f",
                                                &lim, &t, err, ERRLEN),
                   KR_ETOOBIG);
  ck_assert_str_eq(err, "f:1: line is longer than 20 bytes");
}
END_TEST

/* The 16 MiB default: exactly 16 MiB of comment lines parse, one more
 * byte does not. */
START_TEST(default_size_limit) {
  size_t max = KR__TOKEN_FILE_MAX_BYTES;
  ck_assert_uint_eq(max, 16u << 20);
  char *text = malloc(max + 1);
  ck_assert_ptr_nonnull(text);
  for (size_t i = 0; i < max; i += 4096) {
    memset(text + i, '#', 4095);
    text[i + 4095] = '\n';
  }
  text[max] = '\n';
  kr__token_table *t = parse_ok(text, max);
  ck_assert_uint_eq(kr__token_table_count(t), 0);
  kr__token_table_free(t);
  char want[64];
  snprintf(want, sizeof want, "t.txt: larger than %zu bytes", max);
  expect_error_len(text, max + 1, KR_ETOOBIG, want);
  free(text);
}
END_TEST

/* The default entry limit with a table of a million entries. The 16 MiB
 * text limit alone allows about 240,000 entries, so the byte limit is
 * lifted here to reach it. */
START_TEST(million_entries) {
  if (ta_under_valgrind()) {
    printf("# million_entries: skipped under valgrind\n");
    return;
  }
  size_t count = KR__TOKEN_FILE_MAX_ENTRIES + 1;
  size_t line_len = 8 + 1 + 64 + 1 + 8 + 1;
  char *text = malloc(count * line_len + 1);
  ck_assert_ptr_nonnull(text);
  size_t len = 0, len_1m = 0;
  for (size_t i = 0; i < count; i++) {
    char tok[32], h[65];
    snprintf(tok, sizeof tok, "token-%zu", i);
    ta_hash_hex(tok, h);
    if (i == count - 1)
      len_1m = len;
    len += (size_t)sprintf(text + len, "%08zu %s n%07zu\n", i + 1, h, i);
  }
  kr__token_limits lim = {SIZE_MAX, KR__TOKEN_FILE_MAX_ENTRIES,
                          KR__TOKEN_FILE_MAX_LINE};
  kr__token_table *t = NULL;
  char err[ERRLEN];
  /* Ids with leading zeros are refused, so rewrite them as 1-based ids
   * padded with spaces. */
  for (size_t off = 0; off < len; off += line_len) {
    size_t z = 0;
    while (z < 7 && text[off + z] == '0')
      text[off + z++] = ' ';
  }
  ck_assert_int_eq(kr__token_table_parse_limits(NULL, text, len, "big", &lim,
                                                &t, err, ERRLEN),
                   KR_ETOOBIG);
  ck_assert_str_eq(err, "big:1000001: more than 1000000 entries");
  ck_assert_int_eq(kr__token_table_parse_limits(NULL, text, len_1m, "big", &lim,
                                                &t, err, ERRLEN),
                   0);
  ck_assert_uint_eq(kr__token_table_count(t), KR__TOKEN_FILE_MAX_ENTRIES);
  ta_rng r;
  ta_rng_init(&r, 1000000, "million_entries");
  for (int k = 0; k < 2000; k++) {
    size_t i = ta_rng_next(&r) % KR__TOKEN_FILE_MAX_ENTRIES;
    char tok[32], name[16];
    snprintf(tok, sizeof tok, "token-%zu", i);
    snprintf(name, sizeof name, "n%07zu", i);
    expect_found(t, tok, (int64_t)i + 1, name);
  }
  expect_missing(t, "token-1000000");
  expect_missing(t, "token--1");
  kr__token_table_free(t);
  free(text);
}
END_TEST

/* A token pasted where its hash belongs must not reach a log. */
START_TEST(errors_never_contain_the_token) {
  static const char *secret = "glpat-SuperSecretToken-4f1c2a9b";
  char text[512], err[ERRLEN];
  const char *layouts[] = {"7 %s my agent\n", "%s\n", "%s 7 name\n",
                           "# ok\n7 %s\n", "7   %s   # comment\n"};
  for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
    snprintf(text, sizeof text, layouts[i], secret);
    kr__token_table *t = NULL;
    int rc = kr__token_table_parse(NULL, text, strlen(text), "t.txt", &t, err,
                                   ERRLEN);
    ck_assert_int_eq(rc, KR_ECONFIG);
    ck_assert_msg(strstr(err, "glpat") == NULL &&
                      strstr(err, "SuperSecret") == NULL,
                  "error quotes the token: %s", err);
    ck_assert(strncmp(err, "t.txt:", 6) == 0);
  }
  /* Nor the hash of a duplicate. */
  char h[65];
  ta_hash_hex(secret, h);
  snprintf(text, sizeof text, "1 %s a\n2 %s b\n", h, h);
  kr__token_table *t = NULL;
  ck_assert_int_eq(
      kr__token_table_parse(NULL, text, strlen(text), "t.txt", &t, err, ERRLEN),
      KR_ECONFIG);
  ck_assert_ptr_null(strstr(err, h));
  ck_assert_ptr_null(strstr(err, "4f1c2a9b"));
  /* Truncation keeps the buffer terminated. */
  char small[10];
  ck_assert_int_eq(kr__token_table_parse(NULL, "x", 1, "a-long-file-name", &t,
                                         small, sizeof small),
                   KR_ECONFIG);
  ck_assert_uint_eq(strlen(small), sizeof small - 1);
}
END_TEST

/* Random tokens: every one found with its id, others not. */
START_TEST(lookup_many_random) {
  ta_rng r;
  ta_rng_init(&r, 0x70c3e5, "lookup_many_random");
  enum { N = 5000 };
  static char toks[N][33];
  size_t cap = (size_t)N * 100;
  char *text = malloc(cap);
  ck_assert_ptr_nonnull(text);
  size_t len = 0;
  for (int i = 0; i < N; i++) {
    uint8_t raw[16];
    ta_rng_bytes(&r, raw, sizeof raw);
    kr__hex_encode(raw, sizeof raw, toks[i]);
    char h[65];
    ta_hash_hex(toks[i], h);
    len += (size_t)snprintf(text + len, cap - len, "%d %s agent %d\n", i + 1, h,
                            i + 1);
  }
  kr__token_table *t = parse_ok(text, len);
  ck_assert_uint_eq(kr__token_table_count(t), N);
  for (int i = 0; i < N; i++) {
    char name[32];
    snprintf(name, sizeof name, "agent %d", i + 1);
    expect_found(t, toks[i], i + 1, name);
    char other[64];
    snprintf(other, sizeof other, "%.32sx", toks[i]);
    expect_missing(t, other);
  }
  kr__token_table_free(t);
  free(text);
}
END_TEST

/* Each allocation of a parse fails once in turn: KR_ENOMEM, nothing
 * leaked; an error found after allocating (a duplicate) frees too. */
START_TEST(allocation_failures) {
  enum { N = 300 };
  char *text = malloc(N * 100 + 200);
  ck_assert_ptr_nonnull(text);
  size_t len = 0;
  for (int i = 0; i < N; i++) {
    char tok[16], h[65];
    snprintf(tok, sizeof tok, "t%d", i);
    ta_hash_hex(tok, h);
    len +=
        (size_t)sprintf(text + len, "%d %s agent number %d\n", i + 1, h, i + 1);
  }
  int ok = 0;
  for (long n = 1; n < 100 && !ok; n++) {
    ta_alloc a;
    ta_alloc_init(&a, n);
    kr__token_table *t = (kr__token_table *)1;
    char err[ERRLEN];
    int rc = kr__token_table_parse(&a.mem, text, len, "t", &t, err, ERRLEN);
    if (rc == 0) {
      ok = 1;
      ck_assert_uint_eq(kr__token_table_count(t), N);
      expect_found(t, "t7", 8, "agent number 8");
      kr__token_table_free(t);
    } else {
      ck_assert_int_eq(rc, KR_ENOMEM);
      ck_assert_ptr_null(t);
      ck_assert(strstr(err, "out of memory") != NULL);
    }
    ck_assert_int_eq(a.live_blocks, 0);
    ck_assert_uint_eq(a.live_bytes, 0);
  }
  ck_assert(ok);
  /* Duplicate found after everything was allocated. */
  memcpy(text + len, text, strchr(text, '\n') - text + 1);
  len += (size_t)(strchr(text, '\n') - text + 1);
  ta_alloc a;
  ta_alloc_init(&a, 0);
  kr__token_table *t;
  char err[ERRLEN];
  ck_assert_int_eq(
      kr__token_table_parse(&a.mem, text, len, "t", &t, err, ERRLEN),
      KR_ECONFIG);
  ck_assert_str_eq(err, "t:301: hash duplicates the one on line 1");
  ck_assert_int_eq(a.live_blocks, 0);
  free(text);
}
END_TEST

/* --------------------------------------------------------------- files */

static char tmpdir[64];

static void make_tmpdir(void) {
  strcpy(tmpdir, "/tmp/kr-test-tokens-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int load_count(const char *path, size_t *count, char *err,
                      size_t errlen) {
  kr__token_table *t = (kr__token_table *)1;
  int rc = kr__token_file_load(NULL, path, &t, err, errlen);
  if (rc == 0)
    *count = kr__token_table_count(t);
  else
    ck_assert_ptr_null(t);
  kr__token_table_free(t);
  return rc;
}

START_TEST(load_from_files) {
  make_tmpdir();
  char path[128], want[256], err[ERRLEN];
  kr__token_table *t = (kr__token_table *)1;

  /* A good file. */
  char h[65], text[256];
  ta_hash_hex("tok-file", h);
  snprintf(text, sizeof text, "# kasd tokens\n42 %s file agent\n", h);
  snprintf(path, sizeof path, "%s/tokens.txt", tmpdir);
  ta_write_file(path, text, strlen(text));
  ck_assert_int_eq(kr__token_file_load(NULL, path, &t, err, ERRLEN), 0);
  ck_assert_str_eq(err, "");
  expect_found(t, "tok-file", 42, "file agent");
  kr__token_table_free(t);

  /* Parse errors name the path. */
  snprintf(text, sizeof text, "# kasd tokens\n42 %s file agent\n\n43 %s x\n", h,
           "glpat-secret-token");
  ta_write_file(path, text, strlen(text));
  ck_assert_int_eq(kr__token_file_load(NULL, path, &t, err, ERRLEN),
                   KR_ECONFIG);
  ck_assert_ptr_null(t);
  snprintf(want, sizeof want, "%s:4: hash is not 64 hex characters", path);
  ck_assert_str_eq(err, want);

  /* Missing, unreadable, at and over the size limit. */
  ta_check_load_errors(load_count, tmpdir, KR__TOKEN_FILE_MAX_BYTES, path);
  unlink(path);
  ck_assert_int_eq(rmdir(tmpdir), 0);
  ck_assert_int_eq(kr__token_file_load(NULL, NULL, &t, err, ERRLEN), KR_EINVAL);
}
END_TEST

/* Streams that are not regular files (size unknown up front). */
START_TEST(load_from_a_pipe) {
  make_tmpdir();
  char path[128], err[ERRLEN];
  snprintf(path, sizeof path, "%s/fifo", tmpdir);
  ck_assert_int_eq(mkfifo(path, 0600), 0);
  char h[65];
  ta_hash_hex("piped", h);
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    FILE *f = fopen(path, "wb");
    if (f == NULL)
      _exit(1);
    /* More than the initial 64 KiB buffer, to grow it. */
    for (int i = 0; i < 2000; i++)
      fprintf(f, "# %0100d\n", i);
    fprintf(f, "5 %s pipe\n", h);
    fclose(f);
    _exit(0);
  }
  kr__token_table *t = NULL;
  ck_assert_int_eq(kr__token_file_load(NULL, path, &t, err, ERRLEN), 0);
  expect_found(t, "piped", 5, "pipe");
  kr__token_table_free(t);
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  unlink(path);
  rmdir(tmpdir);
}
END_TEST

int main(void) {
  Suite *s = suite_create("token_file");
  TA_ADD(s, parse_valid_file, 10);
  TA_ADD(s, parse_empty_and_comments_only, 10);
  TA_ADD(s, every_error_names_its_line, 10);
  TA_ADD(s, name_and_line_length_limits, 10);
  TA_ADD(s, duplicate_hashes, 10);
  TA_ADD(s, explicit_limits, 10);
  TA_ADD(s, default_size_limit, 30);
  TA_ADD(s, million_entries, 60);
  TA_ADD(s, errors_never_contain_the_token, 10);
  TA_ADD(s, lookup_many_random, 30);
  TA_ADD(s, allocation_failures, 30);
  TA_ADD(s, load_from_files, 30);
  TA_ADD(s, load_from_a_pipe, 10);
  return ta_run_suite(s);
}
