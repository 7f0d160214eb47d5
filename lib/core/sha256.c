/* SHA-256, hex encoding and constant-time comparison (see sha256.h). */
#include <mbedtls/sha256.h>

#include <kasroute/error.h>

#include "sha256.h"

/* mbedtls_sha256_ret is the 2.28 name (plain mbedtls_sha256 is the
 * deprecated void variant there); is224 = 0 selects SHA-256. */
int kr__sha256(const void *data, size_t len, uint8_t out[KR__SHA256_LEN]) {
  static const unsigned char empty[1] = {0};
  if (out == NULL || (data == NULL && len > 0))
    return KR_EINVAL;
  if (data == NULL)
    data = empty;
  if (mbedtls_sha256_ret(data, len, out, 0) != 0)
    return KR_EINVAL;
  return 0;
}

size_t kr__hex_encode(const void *data, size_t len, char *out) {
  static const char digits[] = "0123456789abcdef";
  const uint8_t *p = data;
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 0x0f];
  }
  out[2 * len] = '\0';
  return 2 * len;
}

/* Value of one hex digit, or 16 for anything else. Written without
 * data-dependent branches (comparisons become flag moves) so decoding a
 * stored hash takes the same time whatever its digits are. */
static unsigned hex_nibble(unsigned char ch) {
  unsigned d = (unsigned)ch - '0';           /* < 10 only for 0-9 */
  unsigned l = ((unsigned)ch | 0x20u) - 'a'; /* < 6 only for a-f, A-F */
  unsigned is_d = 0u - (unsigned)(d < 10u);
  unsigned is_l = 0u - (unsigned)(l < 6u);
  return (d & is_d) | ((l + 10u) & is_l) | (16u & ~(is_d | is_l));
}

int kr__hex_decode(const char *hex, size_t hexlen, uint8_t *out,
                   size_t outlen) {
  if (hex == NULL || out == NULL || outlen > SIZE_MAX / 2 ||
      hexlen != 2 * outlen)
    return KR_EINVAL;
  unsigned bad = 0;
  for (size_t i = 0; i < outlen; i++) {
    unsigned hi = hex_nibble((unsigned char)hex[2 * i]);
    unsigned lo = hex_nibble((unsigned char)hex[2 * i + 1]);
    bad |= (hi | lo) & 16u;
    out[i] = (uint8_t)(((hi & 15u) << 4) | (lo & 15u));
  }
  return bad ? KR_EINVAL : 0;
}

int kr__ct_equal(const void *a, const void *b, size_t n) {
  const volatile uint8_t *x = a;
  const volatile uint8_t *y = b;
  volatile uint8_t acc = 0;
  for (size_t i = 0; i < n; i++)
    acc |= (uint8_t)(x[i] ^ y[i]);
  /* acc - 1 borrows into bit 8 exactly when acc is 0. */
  return (int)((((unsigned)acc - 1u) >> 8) & 1u);
}
