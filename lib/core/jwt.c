/* HS256 JSON Web Tokens (see jwt.h). */
#include <string.h>
#include <strings.h>

#include <mbedtls/base64.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include <kasroute/error.h>

#include "jwt.h"
#include "mem_internal.h"
#include "sha256.h"

#define HMAC_LEN 32
/* Base64url characters of a 32-byte HMAC: 43 (no padding). */
#define SIG_B64_LEN KR__B64URL_LEN(HMAC_LEN)

/* The only header this library writes; verification accepts any header
 * that pins HS256 (other implementations order or space it differently). */
static const char jwt_header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* ------------------------------------------------------------ base64url */

/* 6-bit value of a base64url character, or -1. */
static int b64url_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '-')
    return 62;
  if (c == '_')
    return 63;
  return -1;
}

int kr__b64url_encode(const void *data, size_t len, char *out, size_t outcap,
                      size_t *outlen) {
  if (out == NULL || outcap == 0 || (data == NULL && len > 0))
    return KR_EINVAL;
  size_t n = 0;
  if (len > 0 &&
      mbedtls_base64_encode((unsigned char *)out, outcap, &n, data, len) != 0)
    return KR_EINVAL;
  /* mbedTLS writes the standard alphabet with '=' padding; translate and
   * drop the padding (it is always at the end). */
  size_t w = 0;
  for (size_t i = 0; i < n; i++) {
    char c = out[i];
    if (c == '=')
      break;
    out[w++] = c == '+' ? '-' : c == '/' ? '_' : c;
  }
  out[w] = '\0';
  if (outlen)
    *outlen = w;
  return 0;
}

int kr__b64url_decode(const char *in, size_t len, uint8_t *out, size_t outcap,
                      size_t *outlen) {
  if (outlen == NULL || (in == NULL && len > 0) || (out == NULL && outcap > 0))
    return KR_EINVAL;
  *outlen = 0;
  size_t rem = len % 4;
  if (rem == 1)
    return KR_EINVAL;
  /* The alphabet check also keeps out what mbedTLS would tolerate ('=',
   * spaces, CR/LF) or treat as the standard alphabet ('+', '/'). */
  for (size_t i = 0; i < len; i++)
    if (b64url_value((unsigned char)in[i]) < 0)
      return KR_EINVAL;
  /* Canonical form only: the bits of the last character beyond the data
   * must be zero, otherwise two strings would decode to the same bytes. */
  if (rem != 0) {
    int last = b64url_value((unsigned char)in[len - 1]);
    if ((rem == 2 && (last & 0x0f)) || (rem == 3 && (last & 0x03)))
      return KR_EINVAL;
  }
  size_t need = len / 4 * 3 + (rem ? rem - 1 : 0);
  if (need > outcap)
    return KR_ETOOBIG;

  /* Translate to the standard alphabet in stack chunks (a multiple of 4, so
   * only the last chunk can need padding); base64 groups decode
   * independently, so the chunks concatenate. */
  unsigned char chunk[256];
  size_t done = 0;
  for (size_t pos = 0; pos < len;) {
    size_t n = len - pos < sizeof chunk ? len - pos : sizeof chunk;
    for (size_t i = 0; i < n; i++) {
      char c = in[pos + i];
      chunk[i] = (unsigned char)(c == '-' ? '+' : c == '_' ? '/' : c);
    }
    size_t padded = n;
    while (padded % 4)
      chunk[padded++] = '=';
    size_t got = 0;
    if (mbedtls_base64_decode(out + done, outcap - done, &got, chunk, padded) !=
        0)
      return KR_EINVAL;
    done += got;
    pos += n;
  }
  *outlen = done;
  return 0;
}

/* ------------------------------------------------------------- signing */

/* HMAC-SHA256(secret, data) into mac. Returns 0 or KR_ENOMEM (mbedTLS
 * allocates its HMAC context internally). */
static int hmac_sha256(const uint8_t *secret, size_t secret_len,
                       const void *data, size_t len, uint8_t mac[HMAC_LEN]) {
  const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
  if (md == NULL ||
      mbedtls_md_hmac(md, secret, secret_len, data, len, mac) != 0)
    return KR_ENOMEM;
  return 0;
}

/* Parses text[0..len) and keeps it only if it is a JSON object without
 * duplicate keys. Returns the object, or NULL with *rc set to KR_ENOMEM
 * (jansson ran out of memory) or KR_EINVAL (anything else). */
static json_t *load_object(const char *text, size_t len, int *rc) {
  json_error_t err;
  json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
  if (v == NULL) {
    *rc = json_error_code(&err) == json_error_out_of_memory ? KR_ENOMEM
                                                            : KR_EINVAL;
    return NULL;
  }
  if (!json_is_object(v)) {
    json_decref(v);
    *rc = KR_EINVAL;
    return NULL;
  }
  *rc = 0;
  return v;
}

/* Builds the token in one allocation: the parts are encoded straight into
 * place, the MAC is computed over the first two, then appended. On failure
 * nothing is left allocated and *out is NULL. */
int kr__jwt_sign_hs256(const kr_mem *mem, const uint8_t *secret,
                       size_t secret_len, const char *claims_json, char **out) {
  if (out == NULL)
    return KR_EINVAL;
  *out = NULL;
  if (secret == NULL || claims_json == NULL || secret_len < KR__JWT_MIN_SECRET)
    return KR_EINVAL;
  if (mem == NULL)
    mem = kr_mem_default();

  size_t plen = strlen(claims_json);
  if (plen > KR__JWT_MAX_TOKEN)
    return KR_ETOOBIG;
  int rc;
  json_t *check = load_object(claims_json, plen, &rc);
  if (check == NULL)
    return rc;
  json_decref(check);

  size_t hlen = sizeof jwt_header - 1;
  size_t h64 = KR__B64URL_LEN(hlen);
  size_t p64 = KR__B64URL_LEN(plen);
  size_t total = h64 + 1 + p64 + 1 + SIG_B64_LEN;
  if (total > KR__JWT_MAX_TOKEN)
    return KR_ETOOBIG;
  /* + 3: the encoder writes up to two '=' and a NUL past each part before
   * they are stripped. */
  size_t cap = total + 3;
  char *tok = kr__malloc(mem, cap);
  if (tok == NULL)
    return KR_ENOMEM;

  uint8_t mac[HMAC_LEN];
  size_t n, pos = 0;
  if (kr__b64url_encode(jwt_header, hlen, tok, cap, &n) != 0)
    goto fail_inval;
  pos += n;
  tok[pos++] = '.';
  if (kr__b64url_encode(claims_json, plen, tok + pos, cap - pos, &n) != 0)
    goto fail_inval;
  pos += n;

  rc = hmac_sha256(secret, secret_len, tok, pos, mac);
  if (rc != 0) {
    kr__free(mem, tok);
    return rc;
  }
  tok[pos++] = '.';
  if (kr__b64url_encode(mac, sizeof mac, tok + pos, cap - pos, &n) != 0)
    goto fail_inval;
  pos += n;
  mbedtls_platform_zeroize(mac, sizeof mac);
  *out = tok;
  return 0;

fail_inval:
  /* Unreachable when the size arithmetic above is right. */
  mbedtls_platform_zeroize(mac, sizeof mac);
  kr__free(mem, tok);
  return KR_EINVAL;
}

/* Claims are built with jansson so strings are escaped correctly; the
 * serialization goes into a buffer from mem. */
int kr__jwt_mint(const kr_mem *mem, const uint8_t *secret, size_t secret_len,
                 const char *issuer, const char *audience, const char *subject,
                 int64_t now_s, int64_t ttl_s, char **out) {
  if (out == NULL)
    return KR_EINVAL;
  *out = NULL;
  if (audience == NULL || ttl_s <= 0 || now_s > INT64_MAX - ttl_s)
    return KR_EINVAL;
  if (mem == NULL)
    mem = kr_mem_default();

  json_t *claims = json_object();
  if (claims == NULL)
    return KR_ENOMEM;
  int rc = 0;
  const char *keys[] = {"iss", "aud", "sub"};
  const char *vals[] = {issuer, audience, subject};
  for (size_t i = 0; i < 3 && rc == 0; i++) {
    if (vals[i] == NULL)
      continue;
    /* json_string refuses invalid UTF-8 (and fails on OOM; the two are
     * indistinguishable, the former is the likely one). */
    json_t *s = json_string(vals[i]);
    if (s == NULL)
      rc = KR_EINVAL;
    else if (json_object_set_new(claims, keys[i], s) != 0)
      rc = KR_ENOMEM;
  }
  const char *tkeys[] = {"iat", "nbf", "exp"};
  const int64_t tvals[] = {now_s, now_s, now_s + ttl_s};
  for (size_t i = 0; i < 3 && rc == 0; i++)
    if (json_object_set_new(claims, tkeys[i], json_integer(tvals[i])) != 0)
      rc = KR_ENOMEM;
  if (rc != 0) {
    json_decref(claims);
    return rc;
  }

  size_t n = json_dumpb(claims, NULL, 0, JSON_COMPACT);
  char *text = n ? kr__malloc(mem, n + 1) : NULL;
  if (text == NULL || json_dumpb(claims, text, n, JSON_COMPACT) != n) {
    kr__free(mem, text);
    json_decref(claims);
    return KR_ENOMEM;
  }
  text[n] = '\0';
  json_decref(claims);
  rc = kr__jwt_sign_hs256(mem, secret, secret_len, text, out);
  kr__free(mem, text);
  return rc;
}

/* ---------------------------------------------------------- verifying */

static int64_t sat_add(int64_t a, int64_t b) { /* b >= 0 */
  return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* Reads a NumericDate (RFC 7519 section 2: seconds, possibly fractional).
 * round_up chooses the strict direction for non-integers. Returns 0, or -1
 * when v is not a number or is out of the int64 range. */
static int numeric_date(const json_t *v, int round_up, int64_t *out) {
  if (json_is_integer(v)) {
    *out = (int64_t)json_integer_value(v);
    return 0;
  }
  if (!json_is_real(v))
    return -1;
  double d = json_real_value(v);
  if (!(d >= -9.0e18 && d <= 9.0e18)) /* also false for NaN */
    return -1;
  int64_t t = (int64_t)d; /* truncates toward zero */
  if (round_up && (double)t < d)
    t++;
  else if (!round_up && (double)t > d)
    t--;
  *out = t;
  return 0;
}

static int string_is(const json_t *v, const char *s, size_t slen) {
  return json_is_string(v) && json_string_length(v) == slen &&
         memcmp(json_string_value(v), s, slen) == 0;
}

/* Time and audience checks on a verified payload. Returns 0 or KR_EAUTH
 * with *reason set. */
static int check_claims(const json_t *claims, const char *audience,
                        int64_t now_s, int64_t leeway_s, const char **reason) {
  int64_t t;
  const json_t *v = json_object_get(claims, "exp");
  if (v == NULL) {
    *reason = "exp missing";
    return KR_EAUTH;
  }
  if (numeric_date(v, 0, &t) != 0) {
    *reason = "exp is not a NumericDate";
    return KR_EAUTH;
  }
  if (now_s >= sat_add(t, leeway_s)) {
    *reason = "token expired";
    return KR_EAUTH;
  }
  int64_t late_now = sat_add(now_s, leeway_s);
  if ((v = json_object_get(claims, "nbf")) != NULL) {
    if (numeric_date(v, 1, &t) != 0) {
      *reason = "nbf is not a NumericDate";
      return KR_EAUTH;
    }
    if (t > late_now) {
      *reason = "token not yet valid (nbf)";
      return KR_EAUTH;
    }
  }
  if ((v = json_object_get(claims, "iat")) != NULL) {
    if (numeric_date(v, 1, &t) != 0) {
      *reason = "iat is not a NumericDate";
      return KR_EAUTH;
    }
    if (t > late_now) {
      *reason = "iat is in the future";
      return KR_EAUTH;
    }
  }

  size_t alen = strlen(audience);
  v = json_object_get(claims, "aud");
  if (v == NULL) {
    *reason = "aud missing";
    return KR_EAUTH;
  }
  int match = 0;
  if (json_is_string(v)) {
    match = string_is(v, audience, alen);
  } else if (json_is_array(v)) {
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e) {
      if (!json_is_string(e)) {
        *reason = "aud is not a string or array of strings";
        return KR_EAUTH;
      }
      match |= string_is(e, audience, alen);
    }
  } else {
    *reason = "aud is not a string or array of strings";
    return KR_EAUTH;
  }
  if (!match) {
    *reason = "aud does not match";
    return KR_EAUTH;
  }
  return 0;
}

/* Header checks: pinned algorithm, no critical extensions, typ JWT if
 * present. Returns 0, KR_EAUTH or KR_ENOMEM with *reason set. */
static int check_header(const uint8_t *text, size_t len, const char **reason) {
  int rc;
  json_t *h = load_object((const char *)text, len, &rc);
  if (h == NULL) {
    *reason = rc == KR_ENOMEM ? "out of memory" : "header is not a JSON object";
    return rc == KR_ENOMEM ? KR_ENOMEM : KR_EAUTH;
  }
  rc = KR_EAUTH;
  const json_t *alg = json_object_get(h, "alg");
  const json_t *typ = json_object_get(h, "typ");
  if (alg == NULL)
    *reason = "header has no alg";
  else if (!string_is(alg, "HS256", 5))
    *reason = "header alg is not HS256";
  else if (json_object_get(h, "crit") != NULL)
    *reason = "header has crit";
  else if (typ != NULL &&
           !(json_is_string(typ) && json_string_length(typ) == 3 &&
             strcasecmp(json_string_value(typ), "JWT") == 0))
    *reason = "header typ is not JWT";
  else
    rc = 0;
  json_decref(h);
  return rc;
}

/* The order of checks is the contract in jwt.h. Decoded parts live on the
 * stack; the only heap use is jansson's and mbedTLS's HMAC context. */
int kr__jwt_verify_hs256(const uint8_t *secret, size_t secret_len,
                         const char *token, size_t token_len,
                         const char *audience, int64_t now_s, int64_t leeway_s,
                         json_t **claims_out, const char **reason) {
  const char *why = NULL;
  int rc;
  json_t *claims = NULL;
  if (claims_out)
    *claims_out = NULL;

  if (secret == NULL || token == NULL || audience == NULL ||
      audience[0] == '\0' || leeway_s < 0) {
    why = "invalid argument";
    rc = KR_EINVAL;
    goto out;
  }
  if (secret_len < KR__JWT_MIN_SECRET) {
    why = "secret shorter than 32 bytes";
    rc = KR_EINVAL;
    goto out;
  }
  if (token_len > KR__JWT_MAX_TOKEN) {
    why = "token longer than 8 KiB";
    rc = KR_ETOOBIG;
    goto out;
  }

  rc = KR_EAUTH;
  const char *end = token + token_len;
  const char *d1 = memchr(token, '.', token_len);
  const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
  if (d2 == NULL || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)) != NULL) {
    why = "token is not three dot-separated parts";
    goto out;
  }

  /* Large enough for any part of a token within the length limit. */
  uint8_t buf[KR__JWT_MAX_TOKEN / 4 * 3];
  size_t n;
  if (kr__b64url_decode(token, (size_t)(d1 - token), buf, sizeof buf, &n) !=
      0) {
    why = "header is not valid base64url";
    goto out;
  }
  rc = check_header(buf, n, &why);
  if (rc != 0)
    goto out;
  rc = KR_EAUTH;

  uint8_t sig[HMAC_LEN];
  int drc =
      kr__b64url_decode(d2 + 1, (size_t)(end - d2 - 1), sig, sizeof sig, &n);
  if (drc == KR_EINVAL) {
    why = "signature is not valid base64url";
    goto out;
  }
  if (drc != 0 || n != HMAC_LEN) {
    why = "signature has the wrong length";
    goto out;
  }
  uint8_t mac[HMAC_LEN];
  if (hmac_sha256(secret, secret_len, token, (size_t)(d2 - token), mac) != 0) {
    why = "out of memory";
    rc = KR_ENOMEM;
    goto out;
  }
  int same = kr__ct_equal(mac, sig, HMAC_LEN);
  /* The MAC of attacker-chosen input under our secret is a forgery: never
   * leave it behind on the stack. */
  mbedtls_platform_zeroize(mac, sizeof mac);
  if (!same) {
    why = "signature mismatch";
    goto out;
  }

  if (kr__b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), buf, sizeof buf, &n) !=
      0) {
    why = "payload is not valid base64url";
    goto out;
  }
  int lrc;
  claims = load_object((const char *)buf, n, &lrc);
  if (claims == NULL) {
    if (lrc == KR_ENOMEM) {
      why = "out of memory";
      rc = KR_ENOMEM;
    } else {
      why = "payload is not a JSON object";
    }
    goto out;
  }
  rc = check_claims(claims, audience, now_s, leeway_s, &why);
  if (rc != 0)
    goto out;

  if (claims_out) {
    *claims_out = claims;
    claims = NULL;
  }
  why = NULL;
out:
  json_decref(claims);
  if (reason)
    *reason = why;
  return rc;
}
