/* SHA-256, hex encoding and constant-time comparison. Internal to the
 * library.
 *
 * Thin wrappers over mbedTLS 2.28 so the rest of the core (agent token
 * table, JWT) never touches mbedTLS types for these small jobs. Nothing here
 * allocates or keeps state; every function is thread-safe.
 */
#ifndef KR_CORE_SHA256_H
#define KR_CORE_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/error.h>

/* Bytes in a SHA-256 digest and characters in its hex form. */
#define KR__SHA256_LEN 32
#define KR__SHA256_HEX_LEN 64

/* Writes the SHA-256 digest of data[0..len) to out. data may be NULL only
 * when len is 0. Returns 0, KR_EINVAL for a NULL data with len > 0 or a NULL
 * out, or KR_EINVAL when mbedTLS reports a failure (only possible with an
 * alternative hardware implementation); out is then unspecified. */
int kr__sha256(const void *data, size_t len, uint8_t out[KR__SHA256_LEN]);

/* Writes 2 * len lowercase hex characters and a terminating NUL to out,
 * which must hold 2 * len + 1 bytes. Returns 2 * len. Cannot fail. */
size_t kr__hex_encode(const void *data, size_t len, char *out);

/* Strict hex decoding: hex[0..hexlen) must be exactly 2 * outlen characters
 * from [0-9a-fA-F] (no prefix, no whitespace, no sign). Returns 0 with
 * out[0..outlen) written, or KR_EINVAL (out is then unspecified, though
 * every byte of the input was still examined: the time taken does not depend
 * on where the first bad character is). */
int kr__hex_decode(const char *hex, size_t hexlen, uint8_t *out, size_t outlen);

/* Returns 1 when a[0..n) equals b[0..n), otherwise 0. Reads all n bytes of
 * both every time (no early exit) through volatile pointers into a volatile
 * accumulator, so the time taken depends on n only, never on where the
 * buffers differ. n == 0 returns 1. */
int kr__ct_equal(const void *a, const void *b, size_t n);

#endif
