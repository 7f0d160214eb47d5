/* JSON Web Tokens signed with HMAC-SHA256 (RFC 7519 over RFC 7515 compact
 * serialization, "alg":"HS256" only). Internal to the library.
 *
 * The algorithm is pinned: a token is accepted only when its header says
 * "alg":"HS256", whatever else it claims ("none", RS256 and friends are
 * refused before any key is used). Signatures are checked in constant time
 * before the payload is parsed. Secrets and tokens are never logged, copied
 * into error reasons or kept after a call returns.
 *
 * Base64url (RFC 4648 section 5, no padding) is done with mbedTLS's base64
 * codec after translating the alphabet; these helpers are exported here for
 * the tests and for callers that must encode a secret or a key.
 */
#ifndef KR_CORE_JWT_H
#define KR_CORE_JWT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <kasroute/error.h>
#include <kasroute/mem.h>

/* Longest token kr__jwt_verify_hs256 looks at (bytes, no terminator);
 * longer ones fail with KR_ETOOBIG before any decoding. */
#define KR__JWT_MAX_TOKEN 8192

/* Shortest accepted HMAC secret in bytes: RFC 7518 section 3.2 requires a
 * key at least as long as the hash output for HS256. */
#define KR__JWT_MIN_SECRET 32

/* Characters kr__b64url_encode writes for n input bytes (no terminator). */
#define KR__B64URL_LEN(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))

/* Encodes data[0..len) as unpadded base64url into out and NUL-terminates
 * it. outcap must be at least 4 * ceil(len / 3) + 1 (room for the padding
 * mbedTLS writes before it is stripped). Returns 0 and stores the length
 * (KR__B64URL_LEN(len)) in *outlen (may be NULL), or KR_EINVAL when out is
 * too small or an argument is NULL; out is then unspecified. */
int kr__b64url_encode(const void *data, size_t len, char *out, size_t outcap,
                      size_t *outlen);

/* Strict base64url decoding: in[0..len) must use only [A-Za-z0-9_-], carry
 * no '=' padding, whitespace or other characters, must not have a length of
 * 1 modulo 4, and the unused low bits of the last character must be zero
 * (so every byte string has exactly one accepted encoding). Returns 0 with
 * the decoded length in *outlen, KR_EINVAL for malformed input or NULL
 * arguments, KR_ETOOBIG when out (outcap bytes) cannot hold the result. out
 * is unspecified on failure. Allocates nothing. */
int kr__b64url_decode(const char *in, size_t len, uint8_t *out, size_t outcap,
                      size_t *outlen);

/* Signs claims_json as an HS256 JWT. claims_json must be NUL-terminated
 * text of one JSON object (duplicate keys refused); its bytes become the
 * payload as given (not re-serialized). The header is exactly
 * {"alg":"HS256","typ":"JWT"}. On success *out receives a NUL-terminated
 * compact token "header.payload.signature" allocated with mem (NULL = the
 * process default), which the caller releases with kr__free(mem, *out).
 * Errors (then *out is set to NULL):
 *   KR_EINVAL   NULL argument, secret shorter than KR__JWT_MIN_SECRET,
 *               claims_json not a JSON object
 *   KR_ETOOBIG  the token would exceed KR__JWT_MAX_TOKEN
 *   KR_ENOMEM   allocation failed */
int kr__jwt_sign_hs256(const kr_mem *mem, const uint8_t *secret,
                       size_t secret_len, const char *claims_json, char **out);

/* Builds the claims {"iss","aud","sub","iat","nbf","exp"} with iat = nbf =
 * now_s and exp = now_s + ttl_s (seconds since the epoch) and signs them
 * like kr__jwt_sign_hs256. issuer and subject may be NULL (claim left out);
 * audience is required. Returns 0 or the errors of kr__jwt_sign_hs256, plus
 * KR_EINVAL when audience is NULL, ttl_s <= 0 or now_s + ttl_s overflows.
 * *out is NULL on failure. */
int kr__jwt_mint(const kr_mem *mem, const uint8_t *secret, size_t secret_len,
                 const char *issuer, const char *audience, const char *subject,
                 int64_t now_s, int64_t ttl_s, char **out);

/* Verifies an HS256 token token[0..token_len) (no terminator needed).
 *
 * Checks, in this order: length (<= KR__JWT_MAX_TOKEN), three base64url
 * parts, the header is a JSON object with "alg":"HS256", no "crit", and a
 * "typ" (if any) of "JWT" in any case; the signature is 32 bytes and equals
 * HMAC-SHA256(secret, "header.payload") (constant-time compare); only then
 * is the payload decoded and parsed: a JSON object with a numeric "exp"
 * such that now_s < exp + leeway_s, an optional numeric "nbf" with
 * nbf <= now_s + leeway_s, an optional numeric "iat" with
 * iat <= now_s + leeway_s, and an "aud" that is audience or an array of
 * strings containing it. Non-integer NumericDates are rounded the strict
 * way (exp down, nbf and iat up). Duplicate JSON keys are refused.
 *
 * Returns 0 on success: *reason (if reason is not NULL) is set to NULL and,
 * when claims_out is not NULL, *claims_out receives a new reference to the
 * claims object (the caller json_decref()s it). On failure *claims_out is
 * set to NULL and *reason to a static English reason that never contains
 * token or secret bytes:
 *   KR_EAUTH    the token is refused (malformed, wrong algorithm, bad
 *               signature, expired, not yet valid, wrong audience, ...)
 *   KR_ETOOBIG  token_len > KR__JWT_MAX_TOKEN
 *   KR_EINVAL   NULL secret/token/audience, empty audience, secret shorter
 *               than KR__JWT_MIN_SECRET, negative leeway_s
 *   KR_ENOMEM   jansson could not allocate while parsing
 * Allocates nothing itself (buffers are on the stack, about 15 KiB);
 * thread-safe. */
int kr__jwt_verify_hs256(const uint8_t *secret, size_t secret_len,
                         const char *token, size_t token_len,
                         const char *audience, int64_t now_s, int64_t leeway_s,
                         json_t **claims_out, const char **reason);

#endif
