/* libFuzzer target for HS256 JWT verification and base64url
 * (lib/core/jwt.c).
 *
 * Input layout: byte 0 picks the mode (low 3 bits), the rest is the body.
 *   0  verify the body as a token with a fixed secret;
 *   1  byte 1 of the body (mod body length) splits it into a secret and a
 *      token, then verify (exercises short and odd secrets);
 *   2  sign the body as claims text with the fixed secret, then verify: a
 *      token this library signed can only be refused for its claims;
 *   3  body = header text NUL payload text: both are encoded and signed
 *      with the fixed secret here, so the header and claims checks behind
 *      the signature are reached with arbitrary JSON;
 *   4  base64url-decode the body; whatever decodes must encode back to the
 *      same text (one accepted spelling per byte string);
 *   5  body = issuer NUL audience NUL subject: mint a token from them; if
 *      that succeeds it must verify for that audience with those claims;
 *   other values behave like 0.
 * Every mode checks the contract: the return code is one of the documented
 * ones, a refusal has a reason and no claims, a success has an object and
 * no reason. A violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/md.h>

#include "core/jwt.h"
#include "core/mem_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

static const char fz_secret[] = "fuzz-secret-0123456789abcdef-0123456789";
#define FZ_SECRET ((const uint8_t *)fz_secret)
#define FZ_SECRET_LEN (sizeof fz_secret - 1)
#define FZ_AUD "gitlab-kas"
#define FZ_NOW INT64_C(1700000000)

/* Verifies and checks the result contract; returns rc and the reason. */
static int verify(const uint8_t *secret, size_t secret_len, const char *tok,
                  size_t len, int64_t leeway, json_t **keep, const char **why) {
  json_t *claims = (json_t *)1;
  const char *reason = "unset";
  int rc = kr__jwt_verify_hs256(secret, secret_len, tok, len, FZ_AUD, FZ_NOW,
                                leeway, &claims, &reason);
  CHECK(rc == 0 || rc == KR_EAUTH || rc == KR_ETOOBIG || rc == KR_EINVAL ||
        rc == KR_ENOMEM);
  CHECK(rc != KR_ETOOBIG || len > KR__JWT_MAX_TOKEN);
  CHECK(rc != KR_EINVAL || secret_len < KR__JWT_MIN_SECRET);
  if (rc == 0) {
    CHECK(reason == NULL);
    CHECK(claims != NULL && json_is_object(claims));
    if (keep)
      *keep = claims;
    else
      json_decref(claims);
  } else {
    CHECK(reason != NULL && reason[0] != '\0');
    CHECK(claims == NULL);
    if (keep)
      *keep = NULL;
  }
  if (why)
    *why = reason;
  return rc;
}

static void mode_sign_then_verify(const uint8_t *body, size_t n) {
  char *text = malloc(n + 1);
  if (text == NULL)
    return;
  memcpy(text, body, n);
  text[n] = '\0';
  char *tok = NULL;
  int rc = kr__jwt_sign_hs256(NULL, FZ_SECRET, FZ_SECRET_LEN, text, &tok);
  CHECK(rc == 0 || rc == KR_EINVAL || rc == KR_ETOOBIG || rc == KR_ENOMEM);
  if (rc != 0) {
    CHECK(tok == NULL);
    free(text);
    return;
  }
  size_t len = strlen(tok);
  CHECK(len <= KR__JWT_MAX_TOKEN);
  json_t *claims = NULL;
  const char *why = NULL;
  rc = verify(FZ_SECRET, FZ_SECRET_LEN, tok, len, 30, &claims, &why);
  if (rc == 0) {
    /* The claims are the signed text, parsed. */
    json_t *want = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    CHECK(want != NULL && json_equal(claims, want));
    json_decref(want);
    json_decref(claims);
  } else {
    CHECK(rc == KR_EAUTH || rc == KR_ENOMEM);
    /* Only the claims can be at fault. */
    CHECK(strstr(why, "header") == NULL && strstr(why, "signature") == NULL &&
          strstr(why, "base64url") == NULL &&
          strstr(why, "dot-separated") == NULL &&
          strcmp(why, "payload is not a JSON object") != 0);
  }
  /* Another secret never accepts it. */
  rc = verify((const uint8_t *)"another-fuzz-secret-0123456789abcdef", 36, tok,
              len, 30, NULL, &why);
  CHECK(rc == KR_EAUTH);
  kr__free(kr_mem_default(), tok);
  free(text);
}

static void mode_crafted(const uint8_t *body, size_t n) {
  const uint8_t *nul = memchr(body, 0, n);
  size_t hlen = nul ? (size_t)(nul - body) : n;
  const uint8_t *payload = nul ? nul + 1 : body + n;
  size_t plen = nul ? n - hlen - 1 : 0;
  if (KR__B64URL_LEN(hlen) + KR__B64URL_LEN(plen) + 48 > 3 * KR__JWT_MAX_TOKEN)
    return;
  size_t cap = 4 * ((hlen + 2) / 3) + 4 * ((plen + 2) / 3) + 64;
  char *tok = malloc(cap);
  if (tok == NULL)
    return;
  size_t a, b, c;
  CHECK(kr__b64url_encode(body, hlen, tok, cap, &a) == 0);
  tok[a] = '.';
  CHECK(kr__b64url_encode(payload, plen, tok + a + 1, cap - a - 1, &b) == 0);
  size_t si = a + 1 + b;
  uint8_t mac[32];
  CHECK(mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), FZ_SECRET,
                        FZ_SECRET_LEN, (const uint8_t *)tok, si, mac) == 0);
  tok[si] = '.';
  CHECK(kr__b64url_encode(mac, sizeof mac, tok + si + 1, cap - si - 1, &c) ==
        0);
  size_t len = si + 1 + c;
  const char *why = NULL;
  int rc = verify(FZ_SECRET, FZ_SECRET_LEN, tok, len, 60, NULL, &why);
  if (rc == KR_EAUTH)
    CHECK(strstr(why, "base64url") == NULL &&
          strcmp(why, "signature mismatch") != 0 &&
          strcmp(why, "signature has the wrong length") != 0 &&
          strstr(why, "dot-separated") == NULL);
  /* Any token with an accepted header is only accepted with the right
   * secret: flip one bit of the key. */
  if (rc == 0) {
    uint8_t other[sizeof fz_secret];
    memcpy(other, fz_secret, sizeof other);
    other[body[0] % FZ_SECRET_LEN] ^= 1;
    CHECK(verify(other, FZ_SECRET_LEN, tok, len, 60, NULL, &why) == KR_EAUTH);
    CHECK(strcmp(why, "signature mismatch") == 0);
  }
  free(tok);
}

static void mode_b64(const uint8_t *body, size_t n) {
  size_t cap = n; /* decoded is never longer than the input */
  uint8_t *out = malloc(cap + 1);
  if (out == NULL)
    return;
  size_t got = 0;
  int rc = kr__b64url_decode((const char *)body, n, out, cap, &got);
  CHECK(rc == 0 || rc == KR_EINVAL);
  if (rc == 0) {
    CHECK(got == n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0));
    size_t ecap = 4 * ((got + 2) / 3) + 1;
    char *enc = malloc(ecap);
    if (enc != NULL) {
      size_t elen = 0;
      CHECK(kr__b64url_encode(out, got, enc, ecap, &elen) == 0);
      CHECK(elen == n && memcmp(enc, body, n) == 0);
      free(enc);
    }
  }
  free(out);
}

/* Splits body at NUL bytes into up to three strings (copied, terminated). */
static void mode_mint(const uint8_t *body, size_t n) {
  char *copy = malloc(n + 3);
  if (copy == NULL)
    return;
  memcpy(copy, body, n);
  memset(copy + n, 0, 3);
  const char *iss = copy;
  const char *aud = iss + strlen(iss) + 1;
  const char *sub = aud + strlen(aud) + 1;
  if ((size_t)(sub - copy) > n + 1)
    sub = NULL; /* fewer than three fields */
  char *tok = NULL;
  int rc = kr__jwt_mint(NULL, FZ_SECRET, FZ_SECRET_LEN, iss[0] ? iss : NULL,
                        aud, sub, FZ_NOW, 60, &tok);
  CHECK(rc == 0 || rc == KR_EINVAL || rc == KR_ETOOBIG || rc == KR_ENOMEM);
  if (rc == 0 && aud[0] != '\0') {
    json_t *claims = NULL;
    const char *why = NULL;
    rc = kr__jwt_verify_hs256(FZ_SECRET, FZ_SECRET_LEN, tok, strlen(tok), aud,
                              FZ_NOW, 0, &claims, &why);
    CHECK(rc == 0 || rc == KR_ENOMEM);
    if (rc == 0) {
      const json_t *v = json_object_get(claims, "iss");
      CHECK(iss[0] ? v != NULL && strcmp(json_string_value(v), iss) == 0
                   : v == NULL);
      v = json_object_get(claims, "sub");
      CHECK(sub ? v != NULL && strcmp(json_string_value(v), sub) == 0
                : v == NULL);
      json_decref(claims);
    }
  }
  kr__free(kr_mem_default(), tok);
  free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const uint8_t *body = data + 1;
  size_t n = size - 1;
  switch (data[0] & 7u) {
  case 1: {
    if (n < 1)
      return 0;
    size_t k = body[0] % n;
    verify(body + 1, k, (const char *)body + 1 + k, n - 1 - k, 0, NULL, NULL);
    break;
  }
  case 2:
    mode_sign_then_verify(body, n);
    break;
  case 3:
    if (n > 0)
      mode_crafted(body, n);
    break;
  case 4:
    mode_b64(body, n);
    break;
  case 5:
    mode_mint(body, n);
    break;
  default:
    verify(FZ_SECRET, FZ_SECRET_LEN, (const char *)body, n, 0, NULL, NULL);
    break;
  }
  return 0;
}
