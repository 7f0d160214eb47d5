/* Unit tests: HS256 JSON Web Tokens and base64url (lib/core/jwt.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/md.h>

#include "auth_helper.h"
#include "core/jwt.h"
#include "core/mem_internal.h"

#define SECRET_STR "kasroute-unit-test-secret-0123456789abcdef"
#define SECRET ((const uint8_t *)SECRET_STR)
#define SECRET_LEN (sizeof SECRET_STR - 1)
#define AUD "gitlab-kas"
#define T0 INT64_C(1700000000)

/* ------------------------------------------------------------- helpers */

static char *b64(const void *data, size_t len) {
  size_t cap = 4 * ((len + 2) / 3) + 1;
  char *out = malloc(cap);
  ck_assert_ptr_nonnull(out);
  size_t n;
  ck_assert_int_eq(kr__b64url_encode(data, len, out, cap, &n), 0);
  ck_assert_uint_eq(n, KR__B64URL_LEN(len));
  return out;
}

/* "h64.p64." + base64url(HMAC-SHA256(key, "h64.p64")), computed here with
 * mbedTLS directly, not through the code under test. */
static char *sign_parts(const char *h64, const char *p64, const uint8_t *key,
                        size_t keylen) {
  size_t n = strlen(h64) + 1 + strlen(p64);
  char *tok = malloc(n + 1 + 44);
  ck_assert_ptr_nonnull(tok);
  sprintf(tok, "%s.%s", h64, p64);
  uint8_t mac[32];
  ck_assert_int_eq(mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256),
                                   key, keylen, (const uint8_t *)tok, n, mac),
                   0);
  char *s = b64(mac, sizeof mac);
  tok[n] = '.';
  strcpy(tok + n + 1, s);
  free(s);
  return tok;
}

/* A token with any header and payload text, signed with SECRET. */
static char *craft(const char *header, const char *payload) {
  char *h = b64(header, strlen(header));
  char *p = b64(payload, strlen(payload));
  char *t = sign_parts(h, p, SECRET, SECRET_LEN);
  free(h);
  free(p);
  return t;
}

static const char std_header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* Claims valid at T0 for AUD, with `extra` spliced in (may be ""). */
static char *claims(const char *extra) {
  char *c = malloc(256 + strlen(extra));
  ck_assert_ptr_nonnull(c);
  sprintf(c, "{\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld,\"nbf\":%lld%s}",
          (long long)(T0 + 60), (long long)T0, (long long)T0, extra);
  return c;
}

static void expect(const char *token, size_t len, const char *aud, int64_t now,
                   int64_t leeway, int want_rc, const char *want_reason) {
  json_t *c = (json_t *)1;
  const char *reason = "unset";
  int rc = kr__jwt_verify_hs256(SECRET, SECRET_LEN, token, len, aud, now,
                                leeway, &c, &reason);
  ck_assert_msg(rc == want_rc, "rc %d (%s), want %d (%s)", rc,
                reason ? reason : "(null)", want_rc,
                want_reason ? want_reason : "(null)");
  if (want_rc == 0) {
    ck_assert_ptr_null(reason);
    ck_assert_ptr_nonnull(c);
    ck_assert(json_is_object(c));
    json_decref(c);
    return;
  }
  ck_assert_ptr_null(c);
  ck_assert_ptr_nonnull(reason);
  ck_assert_str_eq(reason, want_reason);
  /* Reasons are static text: never the secret, never token bytes. */
  ck_assert_ptr_null(strstr(reason, SECRET_STR));
  ck_assert_ptr_null(strstr(reason, "eyJ"));
}

static void expect_str(const char *token, int64_t now, int64_t leeway,
                       int want_rc, const char *want_reason) {
  expect(token, strlen(token), AUD, now, leeway, want_rc, want_reason);
}

/* Signs header + payload with SECRET and expects the verdict at T0. */
static void expect_crafted(const char *header, const char *payload, int want_rc,
                           const char *want_reason) {
  char *t = craft(header, payload);
  expect_str(t, T0, 0, want_rc, want_reason);
  free(t);
}

/* ------------------------------------------------------------ base64url */

START_TEST(b64url_rfc4648_vectors) {
  static const char *plain[] = {"",     "f",     "fo",    "foo",
                                "foob", "fooba", "foobar"};
  static const char *enc[] = {"",       "Zg",      "Zm8",     "Zm9v",
                              "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
  for (int i = 0; i < 7; i++) {
    char *e = b64(plain[i], strlen(plain[i]));
    ck_assert_str_eq(e, enc[i]);
    free(e);
    uint8_t out[8];
    size_t n = 99;
    ck_assert_int_eq(
        kr__b64url_decode(enc[i], strlen(enc[i]), out, sizeof out, &n), 0);
    ck_assert_uint_eq(n, strlen(plain[i]));
    ck_assert(n == 0 || memcmp(out, plain[i], n) == 0);
  }
  /* The URL-safe alphabet: 0xfb 0xff -> "-_8" (standard: "+/8="). */
  const uint8_t odd[] = {0xfb, 0xff};
  char *e = b64(odd, 2);
  ck_assert_str_eq(e, "-_8");
  free(e);
  uint8_t out[2];
  size_t n;
  ck_assert_int_eq(kr__b64url_decode("-_8", 3, out, 2, &n), 0);
  ck_assert_uint_eq(n, 2);
  ck_assert_mem_eq(out, odd, 2);
}
END_TEST

START_TEST(b64url_decode_is_strict) {
  uint8_t out[16];
  size_t n;
  static const char *bad[] = {
      "Zg==",                                         /* padding */
      "Zm8=",                                         /* padding */
      "Z",                                            /* length 1 mod 4 */
      "Zm9vY",                                        /* length 1 mod 4 */
      "+_8",                                          /* standard alphabet */
      "-/8",                                          /* standard alphabet */
      "Zm 9v",                                        /* space */
      "Zm9v\n",   "Zm\r\n9v", "Zm9v.", "Zm9v!", "Zh", /* non-canonical: f */
      "Zm9", /* non-canonical: fo is Zm8 */
      "\x80\x80",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(kr__b64url_decode(bad[i], strlen(bad[i]), out, sizeof out,
                                    &n) == KR_EINVAL,
                  "accepted \"%s\"", bad[i]);
  /* A NUL inside is just another bad character. */
  ck_assert_int_eq(kr__b64url_decode("Zm\0v", 4, out, sizeof out, &n),
                   KR_EINVAL);
  /* Output too small. */
  ck_assert_int_eq(kr__b64url_decode("Zm9vYmFy", 8, out, 5, &n), KR_ETOOBIG);
  ck_assert_int_eq(kr__b64url_decode("Zm9vYmFy", 8, out, 6, &n), 0);
  ck_assert_int_eq(kr__b64url_decode("Zm9v", 4, out, 16, NULL), KR_EINVAL);
  ck_assert_int_eq(kr__b64url_decode(NULL, 4, out, 16, &n), KR_EINVAL);
  /* Encoder capacity: needs room for the padding it strips. */
  char small[4];
  ck_assert_int_eq(kr__b64url_encode("f", 1, small, 4, &n), KR_EINVAL);
  char ok[5];
  ck_assert_int_eq(kr__b64url_encode("f", 1, ok, 5, &n), 0);
  ck_assert_str_eq(ok, "Zg");
  ck_assert_int_eq(kr__b64url_encode("", 0, ok, 1, &n), 0);
  ck_assert_str_eq(ok, "");
  ck_assert_int_eq(kr__b64url_encode("f", 1, NULL, 5, &n), KR_EINVAL);
}
END_TEST

/* Random lengths across the decoder's 256-character chunks. */
START_TEST(b64url_round_trip_random) {
  ta_rng r;
  ta_rng_init(&r, 0xb64, "b64url_round_trip_random");
  static uint8_t in[2000], back[2000];
  for (int i = 0; i < 2000; i++) {
    size_t len = i < 800 ? (size_t)i : ta_rng_next(&r) % sizeof in;
    ta_rng_bytes(&r, in, len);
    char *e = b64(in, len);
    ck_assert_uint_eq(strlen(e), KR__B64URL_LEN(len));
    ck_assert_ptr_null(strpbrk(e, "+/="));
    size_t n;
    ck_assert_int_eq(kr__b64url_decode(e, strlen(e), back, len, &n), 0);
    ck_assert_uint_eq(n, len);
    ck_assert(len == 0 || memcmp(in, back, len) == 0);
    free(e);
  }
}
END_TEST

/* ------------------------------------------------------------ vectors */

/* RFC 7515 appendix A.1: the HS256 example, its key given as a JWK. The
 * token has no "aud", so a successful signature check shows up as the
 * later "aud missing" refusal; its exp is 1300819380. */
static const char rfc_k[] =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUu"
    "TwjAzZr1Z9CAow";
static const char rfc_token[] =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNv"
    "bS9pc19yb290Ijp0cnVlfQ"
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

START_TEST(rfc7515_a1_vector) {
  uint8_t key[64];
  size_t klen;
  ck_assert_int_eq(
      kr__b64url_decode(rfc_k, strlen(rfc_k), key, sizeof key, &klen), 0);
  ck_assert_uint_eq(klen, 64);
  ck_assert_int_eq(key[0], 0x03);
  ck_assert_int_eq(key[63], 0xa3);

  const char *reason;
  json_t *c;
  size_t len = strlen(rfc_token);
  int rc = kr__jwt_verify_hs256(key, klen, rfc_token, len, AUD,
                                INT64_C(1300819000), 0, &c, &reason);
  ck_assert_int_eq(rc, KR_EAUTH);
  ck_assert_str_eq(reason, "aud missing");
  ck_assert_ptr_null(c);
  /* At exp the same token is expired (the check after the signature). */
  rc = kr__jwt_verify_hs256(key, klen, rfc_token, len, AUD, INT64_C(1300819380),
                            0, &c, &reason);
  ck_assert_str_eq(reason, "token expired");
  /* The expected signature is exactly what the spec prints: one different
   * byte of key, header or signature fails the HMAC. */
  char tok[sizeof rfc_token];
  memcpy(tok, rfc_token, sizeof tok);
  tok[len - 2] = tok[len - 2] == 'X' ? 'Y' : 'X';
  rc = kr__jwt_verify_hs256(key, klen, tok, len, AUD, INT64_C(1300819000), 0,
                            &c, &reason);
  ck_assert_str_eq(reason, "signature mismatch");
  key[10] ^= 1;
  rc = kr__jwt_verify_hs256(key, klen, rfc_token, len, AUD, INT64_C(1300819000),
                            0, &c, &reason);
  ck_assert_int_eq(rc, KR_EAUTH);
  ck_assert_str_eq(reason, "signature mismatch");
}
END_TEST

/* clang-format off */
/* A token from a different implementation (Python's standard library, with
 * its own JSON spacing and header order), produced by:
 *
 * python3 -c 'import base64,hmac,hashlib,json;e=lambda b:base64.urlsafe_b64encode(b).rstrip(b"=");k=b"kasroute-test-secret-0123456789abcdef";h=e(json.dumps({"typ":"JWT","alg":"HS256"}).encode());p=e(json.dumps({"iss":"gitlab","aud":["gitlab-kas","other"],"sub":"user:42","iat":1700000000,"nbf":1700000000,"exp":1700003600}).encode());s=h+b"."+p;print((s+b"."+e(hmac.new(k,s,hashlib.sha256).digest())).decode())'
 */
/* clang-format on */
static const char py_secret[] = "kasroute-test-secret-0123456789abcdef";
static const char py_token[] =
    "eyJ0eXAiOiAiSldUIiwgImFsZyI6ICJIUzI1NiJ9"
    ".eyJpc3MiOiAiZ2l0bGFiIiwgImF1ZCI6IFsiZ2l0bGFiLWthcyIsICJvdGhlciJdLCAic3Vi"
    "IjogInVzZXI6NDIiLCAiaWF0IjogMTcwMDAwMDAwMCwgIm5iZiI6IDE3MDAwMDAwMDAsICJl"
    "eHAiOiAxNzAwMDAzNjAwfQ"
    ".B1TQYbK23N3Mydu5Y7h-29lKCTy563QYgMtSjYBoHC8";

START_TEST(python_token_verifies) {
  const uint8_t *k = (const uint8_t *)py_secret;
  size_t klen = strlen(py_secret), len = strlen(py_token);
  json_t *c = NULL;
  const char *reason = "unset";
  ck_assert_int_eq(kr__jwt_verify_hs256(k, klen, py_token, len, AUD, T0 + 100,
                                        0, &c, &reason),
                   0);
  ck_assert_ptr_null(reason);
  ck_assert_str_eq(json_string_value(json_object_get(c, "sub")), "user:42");
  ck_assert_str_eq(json_string_value(json_object_get(c, "iss")), "gitlab");
  ck_assert_int_eq(json_integer_value(json_object_get(c, "exp")), T0 + 3600);
  json_decref(c);
  /* Second audience of the array; claims_out and reason may be NULL. */
  ck_assert_int_eq(kr__jwt_verify_hs256(k, klen, py_token, len, "other",
                                        T0 + 100, 0, NULL, NULL),
                   0);
  ck_assert_int_eq(kr__jwt_verify_hs256(k, klen, py_token, len, "gitlab",
                                        T0 + 100, 0, NULL, &reason),
                   KR_EAUTH);
  ck_assert_str_eq(reason, "aud does not match");
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, py_token, len, AUD,
                                        T0 + 100, 0, NULL, &reason),
                   KR_EAUTH);
  ck_assert_str_eq(reason, "signature mismatch");
  ck_assert_int_eq(kr__jwt_verify_hs256(k, klen, py_token, len, AUD, T0 + 3600,
                                        0, NULL, &reason),
                   KR_EAUTH);
  ck_assert_str_eq(reason, "token expired");
}
END_TEST

/* ----------------------------------------------------------- round trip */

START_TEST(sign_verify_round_trip) {
  char *cl = claims(",\"sub\":\"user:7\",\"groups\":[\"a\",\"b\"],\"x\":"
                    "\"\\u00e9\\n\\\"q\\\"\"");
  char *tok = NULL;
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, SECRET_LEN, cl, &tok), 0);
  ck_assert_ptr_nonnull(tok);
  /* The header is exactly {"alg":"HS256","typ":"JWT"}. */
  ck_assert(strncmp(tok, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.", 37) == 0);
  ck_assert_ptr_null(strpbrk(tok, "+/= \n"));
  /* The payload is the claims text as given. */
  const char *p = tok + 37;
  const char *dot = strchr(p, '.');
  ck_assert_ptr_nonnull(dot);
  uint8_t buf[1024];
  size_t n;
  ck_assert_int_eq(kr__b64url_decode(p, (size_t)(dot - p), buf, sizeof buf, &n),
                   0);
  ck_assert_uint_eq(n, strlen(cl));
  ck_assert_mem_eq(buf, cl, n);
  ck_assert_uint_eq(strlen(dot + 1), 43);

  json_t *c = NULL;
  const char *reason;
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, tok, strlen(tok),
                                        AUD, T0, 0, &c, &reason),
                   0);
  json_t *want = json_loads(cl, 0, NULL);
  ck_assert(json_equal(c, want));
  json_decref(want);
  json_decref(c);
  kr__free(kr_mem_default(), tok);
  free(cl);
}
END_TEST

START_TEST(mint_builds_claims) {
  char *tok = NULL;
  ck_assert_int_eq(kr__jwt_mint(NULL, SECRET, SECRET_LEN, "gitlab", AUD,
                                "agent:17", T0, 30, &tok),
                   0);
  json_t *c = NULL;
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, tok, strlen(tok),
                                        AUD, T0 + 29, 0, &c, NULL),
                   0);
  ck_assert_uint_eq(json_object_size(c), 6);
  ck_assert_str_eq(json_string_value(json_object_get(c, "iss")), "gitlab");
  ck_assert_str_eq(json_string_value(json_object_get(c, "aud")), AUD);
  ck_assert_str_eq(json_string_value(json_object_get(c, "sub")), "agent:17");
  ck_assert_int_eq(json_integer_value(json_object_get(c, "iat")), T0);
  ck_assert_int_eq(json_integer_value(json_object_get(c, "nbf")), T0);
  ck_assert_int_eq(json_integer_value(json_object_get(c, "exp")), T0 + 30);
  json_decref(c);
  const char *reason;
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, tok, strlen(tok),
                                        AUD, T0 + 30, 0, NULL, &reason),
                   KR_EAUTH);
  ck_assert_str_eq(reason, "token expired");
  kr__free(kr_mem_default(), tok);

  /* Issuer and subject are optional; strings are escaped by jansson. */
  ck_assert_int_eq(kr__jwt_mint(NULL, SECRET, SECRET_LEN, NULL, "a\"b\\c", NULL,
                                T0, 1, &tok),
                   0);
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, tok, strlen(tok),
                                        "a\"b\\c", T0, 0, &c, NULL),
                   0);
  ck_assert_uint_eq(json_object_size(c), 4);
  ck_assert_ptr_null(json_object_get(c, "iss"));
  ck_assert_ptr_null(json_object_get(c, "sub"));
  json_decref(c);
  kr__free(kr_mem_default(), tok);

  tok = (char *)1;
  ck_assert_int_eq(
      kr__jwt_mint(NULL, SECRET, SECRET_LEN, NULL, NULL, NULL, T0, 30, &tok),
      KR_EINVAL);
  ck_assert_ptr_null(tok);
  ck_assert_int_eq(
      kr__jwt_mint(NULL, SECRET, SECRET_LEN, NULL, AUD, NULL, T0, 0, &tok),
      KR_EINVAL);
  ck_assert_int_eq(kr__jwt_mint(NULL, SECRET, SECRET_LEN, NULL, AUD, NULL,
                                INT64_MAX - 5, 6, &tok),
                   KR_EINVAL);
  ck_assert_int_eq(
      kr__jwt_mint(NULL, SECRET, SECRET_LEN, "\xff", AUD, NULL, T0, 6, &tok),
      KR_EINVAL); /* not UTF-8 */
  ck_assert_int_eq(kr__jwt_mint(NULL, SECRET, 31, NULL, AUD, NULL, T0, 6, &tok),
                   KR_EINVAL);
  ck_assert_ptr_null(tok);
}
END_TEST

START_TEST(sign_refuses_bad_input) {
  char *tok = (char *)1;
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, 31, "{}", &tok), KR_EINVAL);
  ck_assert_ptr_null(tok);
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, NULL, 32, "{}", &tok), KR_EINVAL);
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, SECRET_LEN, NULL, &tok),
                   KR_EINVAL);
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, SECRET_LEN, "{}", NULL),
                   KR_EINVAL);
  static const char *bad[] = {"",     "[]", "\"x\"", "1",
                              "null", "{",  "{} {}", "{\"a\":1,\"a\":2}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_msg(kr__jwt_sign_hs256(NULL, SECRET, SECRET_LEN, bad[i], &tok) ==
                      KR_EINVAL,
                  "signed \"%s\"", bad[i]);
    ck_assert_ptr_null(tok);
  }
  /* 32 bytes is the minimum key. */
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, 32, "{}", &tok), 0);
  kr__free(kr_mem_default(), tok);
}
END_TEST

/* Claims padded to n bytes exactly (n >= 80). */
static char *claims_of_size(size_t n) {
  char *c = malloc(n + 1);
  ck_assert_ptr_nonnull(c);
  int head = sprintf(c, "{\"aud\":\"" AUD "\",\"exp\":%lld,\"pad\":\"",
                     (long long)(T0 + 60));
  ck_assert_uint_gt(n, (size_t)head + 2);
  memset(c + head, 'x', n - (size_t)head - 2);
  strcpy(c + n - 2, "\"}");
  ck_assert_uint_eq(strlen(c), n);
  return c;
}

/* 36 (header) + 1 + 8111 (6083 payload bytes) + 1 + 43 = 8192 exactly. */
START_TEST(size_limit_boundaries) {
  char *tok;
  char *c = claims_of_size(6083);
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, SECRET_LEN, c, &tok), 0);
  ck_assert_uint_eq(strlen(tok), KR__JWT_MAX_TOKEN);
  expect_str(tok, T0, 0, 0, NULL);
  kr__free(kr_mem_default(), tok);
  free(c);

  c = claims_of_size(6084);
  tok = (char *)1;
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, SECRET_LEN, c, &tok),
                   KR_ETOOBIG);
  ck_assert_ptr_null(tok);
  /* The verifier refuses it before looking at it. */
  char *h = b64(std_header, strlen(std_header));
  char *p = b64(c, strlen(c));
  char *big = sign_parts(h, p, SECRET, SECRET_LEN);
  ck_assert_uint_eq(strlen(big), KR__JWT_MAX_TOKEN + 1);
  expect_str(big, T0, 0, KR_ETOOBIG, "token longer than 8 KiB");
  /* Even garbage: the length is checked first. */
  memset(big, '.', strlen(big));
  expect_str(big, T0, 0, KR_ETOOBIG, "token longer than 8 KiB");
  expect(big, KR__JWT_MAX_TOKEN + 1, AUD, T0, 0, KR_ETOOBIG,
         "token longer than 8 KiB");
  expect(big, KR__JWT_MAX_TOKEN, AUD, T0, 0, KR_EAUTH,
         "token is not three dot-separated parts");
  free(big);
  free(h);
  free(p);
  free(c);
  c = claims_of_size(20000);
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, SECRET, SECRET_LEN, c, &tok),
                   KR_ETOOBIG);
  free(c);
}
END_TEST

/* ------------------------------------------------------------- refusals */

START_TEST(reject_malformed_structure) {
  static const char *bad[] = {"",       "abc",   "a.b",        "a.b.c.d", "...",
                              "a..b.c", ".a.b.", "eyJ.eyJ.x.", "a.b.c."};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_str(bad[i], T0, 0, KR_EAUTH,
               "token is not three dot-separated parts");
  /* Two dots but empty or undecodable parts. */
  expect_str("..", T0, 0, KR_EAUTH, "header is not a JSON object");
  expect_str("a.b.c", T0, 0, KR_EAUTH, "header is not valid base64url");
  char *good = craft(std_header, "{}");
  const char *d1 = strchr(good, '.'), *d2 = strrchr(good, '.');
  char buf[512];
  /* '=' padding, standard alphabet, whitespace in each part. */
  snprintf(buf, sizeof buf, "%.*s=%s", (int)(d1 - good), good, d1);
  expect_str(buf, T0, 0, KR_EAUTH, "header is not valid base64url");
  snprintf(buf, sizeof buf, "%s=", good);
  expect_str(buf, T0, 0, KR_EAUTH, "signature is not valid base64url");
  snprintf(buf, sizeof buf, "%.*s.+%s", (int)(d2 - good), good, d2 + 2);
  expect_str(buf, T0, 0, KR_EAUTH, "signature is not valid base64url");
  snprintf(buf, sizeof buf, "%.*s %s", (int)(d1 - good) + 1, good, d1 + 2);
  /* The payload part is only decoded after the signature: a changed
   * payload fails the signature first. */
  expect_str(buf, T0, 0, KR_EAUTH, "signature mismatch");
  snprintf(buf, sizeof buf, "%.*s.", (int)(d2 - good), good);
  expect_str(buf, T0, 0, KR_EAUTH, "signature has the wrong length");
  free(good);
  /* A payload that is not base64url but correctly signed as text. */
  char *h = b64(std_header, strlen(std_header));
  char *t = sign_parts(h, "e30=", SECRET, SECRET_LEN);
  expect_str(t, T0, 0, KR_EAUTH, "payload is not valid base64url");
  free(t);
  t = sign_parts(h, "", SECRET, SECRET_LEN);
  expect_str(t, T0, 0, KR_EAUTH, "payload is not a JSON object");
  free(t);
  free(h);
}
END_TEST

START_TEST(reject_bad_headers) {
  char *cl = claims("");
  expect_crafted("not json", cl, KR_EAUTH, "header is not a JSON object");
  expect_crafted("[\"HS256\"]", cl, KR_EAUTH, "header is not a JSON object");
  expect_crafted("\"alg\"", cl, KR_EAUTH, "header is not a JSON object");
  expect_crafted("{\"alg\":\"HS256\",\"alg\":\"none\"}", cl, KR_EAUTH,
                 "header is not a JSON object");
  expect_crafted("{\"typ\":\"JWT\"}", cl, KR_EAUTH, "header has no alg");
  expect_crafted("{}", cl, KR_EAUTH, "header has no alg");
  static const char *algs[] = {
      "\"none\"",  "\"None\"",  "\"RS256\"",   "\"ES256\"",  "\"HS384\"",
      "\"HS512\"", "\"hs256\"", "\"HS256 \"",  "\"\"",       "1",
      "null",      "true",      "[\"HS256\"]", "\"HS2560\"", "\"HS25\""};
  for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++) {
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"alg\":%s,\"typ\":\"JWT\"}", algs[i]);
    expect_crafted(hdr, cl, KR_EAUTH, "header alg is not HS256");
  }
  expect_crafted("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", cl, KR_EAUTH,
                 "header has crit");
  expect_crafted("{\"alg\":\"HS256\",\"b64\":false,\"crit\":[\"b64\"]}", cl,
                 KR_EAUTH, "header has crit");
  expect_crafted("{\"alg\":\"HS256\",\"typ\":\"JOSE\"}", cl, KR_EAUTH,
                 "header typ is not JWT");
  expect_crafted("{\"alg\":\"HS256\",\"typ\":1}", cl, KR_EAUTH,
                 "header typ is not JWT");
  /* typ is case-insensitive (RFC 7519 section 5.1) and optional; unknown
   * header members are ignored. */
  expect_crafted("{\"alg\":\"HS256\",\"typ\":\"jwt\"}", cl, 0, NULL);
  expect_crafted("{\"alg\":\"HS256\"}", cl, 0, NULL);
  expect_crafted("{\"kid\":\"k1\",\"alg\":\"HS256\"}", cl, 0, NULL);
  expect_crafted(" {\"alg\" : \"HS256\"}\n", cl, 0, NULL);

  /* "alg":"none" with the empty signature an attacker would send: refused
   * on the header, before any key is involved. */
  const char *none = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
  char *h = b64(none, strlen(none));
  char *p = b64(cl, strlen(cl));
  char t[1024];
  snprintf(t, sizeof t, "%s.%s.", h, p);
  expect_str(t, T0, 0, KR_EAUTH, "header alg is not HS256");
  free(h);
  free(p);
  free(cl);
}
END_TEST

START_TEST(reject_bad_signatures) {
  char *cl = claims("");
  char *h = b64(std_header, strlen(std_header));
  char *p = b64(cl, strlen(cl));
  /* Signed with another secret. */
  const uint8_t other[] = "another-secret-of-at-least-32-bytes!";
  char *t = sign_parts(h, p, other, sizeof other - 1);
  expect_str(t, T0, 0, KR_EAUTH, "signature mismatch");
  free(t);
  /* A prefix or an extension of the secret is a different key. */
  t = sign_parts(h, p, SECRET, SECRET_LEN - 1);
  expect_str(t, T0, 0, KR_EAUTH, "signature mismatch");
  free(t);
  /* Wrong lengths: 31 and 33 bytes. */
  uint8_t mac[33] = {0};
  char buf[1024];
  for (size_t n = 31; n <= 33; n += 2) {
    char *s = b64(mac, n);
    snprintf(buf, sizeof buf, "%s.%s.%s", h, p, s);
    expect_str(buf, T0, 0, KR_EAUTH, "signature has the wrong length");
    free(s);
  }
  /* Every single-character change of a valid token is refused. */
  t = sign_parts(h, p, SECRET, SECRET_LEN);
  expect_str(t, T0, 0, 0, NULL);
  size_t len = strlen(t);
  static const char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
  for (size_t i = 0; i < len; i++) {
    char orig = t[i];
    for (const char *a = alphabet; *a; a++) {
      if (*a == orig)
        continue;
      t[i] = *a;
      const char *reason = NULL;
      int rc = kr__jwt_verify_hs256(SECRET, SECRET_LEN, t, len, AUD, T0, 0,
                                    NULL, &reason);
      ck_assert_msg(rc == KR_EAUTH, "changed byte %zu to '%c' accepted", i, *a);
    }
    t[i] = orig;
  }
  free(t);
  free(h);
  free(p);
  free(cl);
}
END_TEST

START_TEST(reject_bad_payloads) {
  expect_crafted(std_header, "[1]", KR_EAUTH, "payload is not a JSON object");
  expect_crafted(std_header, "null", KR_EAUTH, "payload is not a JSON object");
  expect_crafted(std_header, "{\"exp\":", KR_EAUTH,
                 "payload is not a JSON object");
  expect_crafted(std_header, "{} x", KR_EAUTH, "payload is not a JSON object");
  char dup[128];
  snprintf(dup, sizeof dup, "{\"aud\":\"" AUD "\",\"exp\":%lld,\"exp\":1}",
           (long long)(T0 + 60));
  expect_crafted(std_header, dup, KR_EAUTH, "payload is not a JSON object");
}
END_TEST

START_TEST(reject_time_claims) {
  char p[256];
  expect_crafted(std_header, "{\"aud\":\"" AUD "\"}", KR_EAUTH, "exp missing");
  expect_crafted(std_header, "{\"aud\":\"" AUD "\",\"exp\":\"1800000000\"}",
                 KR_EAUTH, "exp is not a NumericDate");
  expect_crafted(std_header, "{\"aud\":\"" AUD "\",\"exp\":null}", KR_EAUTH,
                 "exp is not a NumericDate");
  expect_crafted(std_header, "{\"aud\":\"" AUD "\",\"exp\":1e300}", KR_EAUTH,
                 "exp is not a NumericDate");

  /* exp: valid strictly before exp (+ leeway). */
  snprintf(p, sizeof p, "{\"aud\":\"" AUD "\",\"exp\":%lld}",
           (long long)(T0 + 10));
  char *t = craft(std_header, p);
  expect_str(t, T0 + 9, 0, 0, NULL);
  expect_str(t, T0 + 10, 0, KR_EAUTH, "token expired");
  expect_str(t, T0 + 10, 5, 0, NULL);
  expect_str(t, T0 + 14, 5, 0, NULL);
  expect_str(t, T0 + 15, 5, KR_EAUTH, "token expired");
  expect_str(t, INT64_MAX, 0, KR_EAUTH, "token expired");
  expect_str(t, INT64_MAX, INT64_MAX, KR_EAUTH, "token expired");
  free(t);
  /* A fractional exp rounds down. */
  snprintf(p, sizeof p, "{\"aud\":\"" AUD "\",\"exp\":%lld.5}",
           (long long)(T0 + 10));
  t = craft(std_header, p);
  expect_str(t, T0 + 9, 0, 0, NULL);
  expect_str(t, T0 + 10, 0, KR_EAUTH, "token expired");
  free(t);
  /* exp at the top of the range with a leeway does not overflow. */
  snprintf(p, sizeof p, "{\"aud\":\"" AUD "\",\"exp\":%lld}",
           (long long)INT64_MAX);
  t = craft(std_header, p);
  expect_str(t, T0, INT64_MAX, 0, NULL);
  free(t);

  /* nbf: valid from nbf (- leeway). */
  snprintf(p, sizeof p, "{\"aud\":\"" AUD "\",\"exp\":%lld,\"nbf\":%lld}",
           (long long)(T0 + 100), (long long)(T0 + 10));
  t = craft(std_header, p);
  expect_str(t, T0 + 10, 0, 0, NULL);
  expect_str(t, T0 + 9, 0, KR_EAUTH, "token not yet valid (nbf)");
  expect_str(t, T0 + 5, 5, 0, NULL);
  expect_str(t, T0 + 4, 5, KR_EAUTH, "token not yet valid (nbf)");
  free(t);
  snprintf(p, sizeof p, "{\"aud\":\"" AUD "\",\"exp\":%lld,\"nbf\":%lld.25}",
           (long long)(T0 + 100), (long long)(T0 + 9));
  t = craft(std_header, p); /* rounds up to T0 + 10 */
  expect_str(t, T0 + 9, 0, KR_EAUTH, "token not yet valid (nbf)");
  expect_str(t, T0 + 10, 0, 0, NULL);
  free(t);
  expect_crafted(std_header,
                 "{\"aud\":\"" AUD "\",\"exp\":1800000000,\"nbf\":\"0\"}",
                 KR_EAUTH, "nbf is not a NumericDate");

  /* iat: not after now (+ leeway). */
  snprintf(p, sizeof p, "{\"aud\":\"" AUD "\",\"exp\":%lld,\"iat\":%lld}",
           (long long)(T0 + 100), (long long)(T0 + 30));
  t = craft(std_header, p);
  expect_str(t, T0 + 29, 0, KR_EAUTH, "iat is in the future");
  expect_str(t, T0 + 30, 0, 0, NULL);
  expect_str(t, T0, 30, 0, NULL);
  expect_str(t, T0, 29, KR_EAUTH, "iat is in the future");
  free(t);
  expect_crafted(std_header,
                 "{\"aud\":\"" AUD "\",\"exp\":1800000000,\"iat\":[]}",
                 KR_EAUTH, "iat is not a NumericDate");
}
END_TEST

START_TEST(audience_rules) {
  const char *e = ",\"exp\":1800000000}";
  char p[256];
#define AUD_CASE(aud_json, want_rc, want_reason)                               \
  do {                                                                         \
    snprintf(p, sizeof p, "{\"aud\":%s%s", aud_json, e);                       \
    expect_crafted(std_header, p, want_rc, want_reason);                       \
  } while (0)
  expect_crafted(std_header, "{\"exp\":1800000000}", KR_EAUTH, "aud missing");
  AUD_CASE("\"" AUD "\"", 0, NULL);
  AUD_CASE("[\"" AUD "\"]", 0, NULL);
  AUD_CASE("[\"x\",\"y\",\"" AUD "\"]", 0, NULL);
  AUD_CASE("\"GITLAB-KAS\"", KR_EAUTH, "aud does not match");
  AUD_CASE("\"gitlab-kas \"", KR_EAUTH, "aud does not match");
  AUD_CASE("\"gitlab-ka\"", KR_EAUTH, "aud does not match");
  AUD_CASE("\"\"", KR_EAUTH, "aud does not match");
  AUD_CASE("[]", KR_EAUTH, "aud does not match");
  AUD_CASE("[\"x\"]", KR_EAUTH, "aud does not match");
  AUD_CASE("null", KR_EAUTH, "aud is not a string or array of strings");
  AUD_CASE("7", KR_EAUTH, "aud is not a string or array of strings");
  AUD_CASE("{\"" AUD "\":1}", KR_EAUTH,
           "aud is not a string or array of strings");
  AUD_CASE("[\"" AUD "\",1]", KR_EAUTH,
           "aud is not a string or array of strings");
  AUD_CASE("[[\"" AUD "\"]]", KR_EAUTH,
           "aud is not a string or array of strings");
#undef AUD_CASE
}
END_TEST

START_TEST(verify_argument_errors) {
  char *cl = claims("");
  char *t = craft(std_header, cl);
  size_t len = strlen(t);
  const char *reason;
  json_t *c = (json_t *)1;
  ck_assert_int_eq(
      kr__jwt_verify_hs256(SECRET, 31, t, len, AUD, T0, 0, &c, &reason),
      KR_EINVAL);
  ck_assert_str_eq(reason, "secret shorter than 32 bytes");
  ck_assert_ptr_null(c);
  ck_assert_int_eq(
      kr__jwt_verify_hs256(NULL, 32, t, len, AUD, T0, 0, &c, &reason),
      KR_EINVAL);
  ck_assert_str_eq(reason, "invalid argument");
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, NULL, 0, AUD, T0, 0,
                                        &c, &reason),
                   KR_EINVAL);
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, t, len, NULL, T0, 0,
                                        &c, &reason),
                   KR_EINVAL);
  ck_assert_int_eq(
      kr__jwt_verify_hs256(SECRET, SECRET_LEN, t, len, "", T0, 0, &c, &reason),
      KR_EINVAL);
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, t, len, AUD, T0, -1,
                                        &c, &reason),
                   KR_EINVAL);
  /* The token need not be NUL-terminated: trailing bytes past len are not
   * read. */
  char *copy = malloc(len + 5);
  memcpy(copy, t, len);
  memcpy(copy + len, "XXXXX", 5);
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, copy, len, AUD, T0,
                                        0, NULL, &reason),
                   0);
  ck_assert_int_eq(kr__jwt_verify_hs256(SECRET, SECRET_LEN, copy, len + 5, AUD,
                                        T0, 0, NULL, &reason),
                   KR_EAUTH);
  free(copy);
  free(t);
  free(cl);
}
END_TEST

/* Every allocation of sign and mint fails once in turn: each failure gives
 * KR_ENOMEM and leaves nothing allocated. */
START_TEST(allocation_failures) {
  for (int which = 0; which < 2; which++) {
    int ok = 0;
    for (long n = 1; n < 50 && !ok; n++) {
      ta_alloc a;
      ta_alloc_init(&a, n);
      char *tok = (char *)1;
      int rc = which == 0 ? kr__jwt_sign_hs256(&a.mem, SECRET, SECRET_LEN,
                                               "{\"aud\":\"x\"}", &tok)
                          : kr__jwt_mint(&a.mem, SECRET, SECRET_LEN, "i", AUD,
                                         "s", T0, 10, &tok);
      if (rc == 0) {
        ok = 1;
        ck_assert_int_eq(a.live_blocks, 1);
        kr__free(&a.mem, tok);
      } else {
        ck_assert_int_eq(rc, KR_ENOMEM);
        ck_assert_ptr_null(tok);
      }
      ck_assert_int_eq(a.live_blocks, 0);
      ck_assert_uint_eq(a.live_bytes, 0);
    }
    ck_assert(ok);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("jwt");
  TA_ADD(s, b64url_rfc4648_vectors, 10);
  TA_ADD(s, b64url_decode_is_strict, 10);
  TA_ADD(s, b64url_round_trip_random, 20);
  TA_ADD(s, rfc7515_a1_vector, 10);
  TA_ADD(s, python_token_verifies, 10);
  TA_ADD(s, sign_verify_round_trip, 10);
  TA_ADD(s, mint_builds_claims, 10);
  TA_ADD(s, sign_refuses_bad_input, 10);
  TA_ADD(s, size_limit_boundaries, 10);
  TA_ADD(s, reject_malformed_structure, 10);
  TA_ADD(s, reject_bad_headers, 10);
  TA_ADD(s, reject_bad_signatures, 30);
  TA_ADD(s, reject_bad_payloads, 10);
  TA_ADD(s, reject_time_claims, 10);
  TA_ADD(s, audience_rules, 10);
  TA_ADD(s, verify_argument_errors, 10);
  TA_ADD(s, allocation_failures, 10);
  return ta_run_suite(s);
}
