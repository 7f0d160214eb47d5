/* Unit tests: SHA-256, hex codec, constant-time compare
 * (lib/core/sha256.c). */
#include <stdlib.h>
#include <string.h>

#include "auth_helper.h"
#include "core/sha256.h"

static void expect_digest(const void *data, size_t len, const char *hex) {
  uint8_t d[KR__SHA256_LEN];
  char got[KR__SHA256_HEX_LEN + 1];
  ck_assert_int_eq(kr__sha256(data, len, d), 0);
  ck_assert_uint_eq(kr__hex_encode(d, sizeof d, got), 64);
  ck_assert_str_eq(got, hex);
}

/* FIPS 180-2 appendix B vectors plus the empty string. */
START_TEST(sha256_known_vectors) {
  expect_digest(
      "abc", 3,
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  expect_digest(
      "", 0,
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  expect_digest(
      NULL, 0,
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  expect_digest(
      m, strlen(m),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  size_t n = 1000000;
  char *a = malloc(n);
  ck_assert_ptr_nonnull(a);
  memset(a, 'a', n);
  expect_digest(
      a, n, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  free(a);
}
END_TEST

START_TEST(sha256_bad_arguments) {
  uint8_t d[KR__SHA256_LEN];
  ck_assert_int_eq(kr__sha256(NULL, 1, d), KR_EINVAL);
  ck_assert_int_eq(kr__sha256("x", 1, NULL), KR_EINVAL);
}
END_TEST

START_TEST(hex_encode_lowercase) {
  const uint8_t in[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff};
  char out[2 * sizeof in + 1];
  memset(out, 'X', sizeof out);
  ck_assert_uint_eq(kr__hex_encode(in, sizeof in, out), 16);
  ck_assert_str_eq(out, "00017f80abcdefff");
  char empty[1] = {'X'};
  ck_assert_uint_eq(kr__hex_encode(NULL, 0, empty), 0);
  ck_assert_int_eq(empty[0], '\0');
}
END_TEST

START_TEST(hex_decode_accepts_both_cases) {
  uint8_t out[8];
  ck_assert_int_eq(kr__hex_decode("00017f80abcdefff", 16, out, 8), 0);
  const uint8_t want[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff};
  ck_assert_mem_eq(out, want, 8);
  ck_assert_int_eq(kr__hex_decode("00017F80ABCDEFFF", 16, out, 8), 0);
  ck_assert_mem_eq(out, want, 8);
  ck_assert_int_eq(kr__hex_decode("00017f80AbCdEfFf", 16, out, 8), 0);
  ck_assert_mem_eq(out, want, 8);
  ck_assert_int_eq(kr__hex_decode("", 0, out, 0), 0);
}
END_TEST

/* Every byte value at every position of a 4-character input: exactly the
 * 22 hex digits are accepted, with the right value. */
START_TEST(hex_decode_is_strict) {
  for (int pos = 0; pos < 4; pos++) {
    for (int c = 0; c < 256; c++) {
      char in[4] = {'a', 'b', 'c', 'd'};
      in[pos] = (char)c;
      uint8_t out[2];
      int rc = kr__hex_decode(in, 4, out, 2);
      int v = -1;
      if (c >= '0' && c <= '9')
        v = c - '0';
      else if (c >= 'a' && c <= 'f')
        v = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        v = c - 'A' + 10;
      if (v < 0) {
        ck_assert_msg(rc == KR_EINVAL, "byte 0x%02x at %d accepted", c, pos);
        continue;
      }
      ck_assert_msg(rc == 0, "digit 0x%02x at %d refused", c, pos);
      int nib = pos % 2 ? out[pos / 2] & 0x0f : out[pos / 2] >> 4;
      ck_assert_int_eq(nib, v);
    }
  }
  uint8_t out[4];
  ck_assert_int_eq(kr__hex_decode("abc", 3, out, 2), KR_EINVAL);  /* odd */
  ck_assert_int_eq(kr__hex_decode("abcd", 4, out, 1), KR_EINVAL); /* long */
  ck_assert_int_eq(kr__hex_decode("ab", 2, out, 2), KR_EINVAL);   /* short */
  ck_assert_int_eq(kr__hex_decode("0xab", 4, out, 2), KR_EINVAL);
  ck_assert_int_eq(kr__hex_decode(" ab ", 4, out, 2), KR_EINVAL);
  ck_assert_int_eq(kr__hex_decode("-1", 2, out, 1), KR_EINVAL);
  ck_assert_int_eq(kr__hex_decode(NULL, 2, out, 1), KR_EINVAL);
  ck_assert_int_eq(kr__hex_decode("ab", 2, NULL, 1), KR_EINVAL);
}
END_TEST

START_TEST(hex_round_trip_random) {
  ta_rng r;
  ta_rng_init(&r, 0x5ea256, "hex_round_trip_random");
  for (int i = 0; i < 1000; i++) {
    uint8_t in[64], back[64];
    char hex[129];
    size_t n = ta_rng_next(&r) % 65;
    ta_rng_bytes(&r, in, n);
    ck_assert_uint_eq(kr__hex_encode(in, n, hex), 2 * n);
    ck_assert_uint_eq(strlen(hex), 2 * n);
    ck_assert_int_eq(kr__hex_decode(hex, 2 * n, back, n), 0);
    ck_assert(n == 0 || memcmp(in, back, n) == 0);
  }
}
END_TEST

START_TEST(ct_equal_detects_every_bit) {
  uint8_t a[32], b[32];
  for (int i = 0; i < 32; i++)
    a[i] = (uint8_t)(i * 37 + 1);
  memcpy(b, a, sizeof a);
  ck_assert_int_eq(kr__ct_equal(a, b, 32), 1);
  ck_assert_int_eq(kr__ct_equal(a, b, 0), 1);
  ck_assert_int_eq(kr__ct_equal(NULL, NULL, 0), 1);
  for (int i = 0; i < 32; i++) {
    for (int bit = 0; bit < 8; bit++) {
      b[i] ^= (uint8_t)(1u << bit);
      ck_assert_int_eq(kr__ct_equal(a, b, 32), 0);
      /* The prefix before the difference still compares equal. */
      ck_assert_int_eq(kr__ct_equal(a, b, (size_t)i), 1);
      b[i] ^= (uint8_t)(1u << bit);
    }
  }
  memset(b, 0, sizeof b);
  for (int i = 0; i < 32; i++)
    b[i] = (uint8_t)~a[i];
  ck_assert_int_eq(kr__ct_equal(a, b, 32), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("sha256");
  TA_ADD(s, sha256_known_vectors, 30);
  TA_ADD(s, sha256_bad_arguments, 10);
  TA_ADD(s, hex_encode_lowercase, 10);
  TA_ADD(s, hex_decode_accepts_both_cases, 10);
  TA_ADD(s, hex_decode_is_strict, 10);
  TA_ADD(s, hex_round_trip_random, 10);
  TA_ADD(s, ct_equal_detects_every_bit, 10);
  return ta_run_suite(s);
}
