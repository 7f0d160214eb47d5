/* The agent token table: which agent a presented token belongs to.
 * Internal to the library.
 *
 * kas stores no tokens, only their SHA-256 hashes, in a text file:
 *
 *   # AGENT_ID  SHA256_HEX_OF_TOKEN  NAME
 *   17 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 prod
 *
 * - one entry per line; fields separated by spaces or tabs;
 * - '#' starts a comment, on its own line or after an entry; blank lines
 *   are ignored; a trailing '\r' (CRLF files) is ignored;
 * - AGENT_ID: a positive decimal int64 without sign or leading zeros;
 * - SHA256_HEX: exactly 64 hex digits (either case), the SHA-256 of the
 *   token bytes; `printf %s "$TOKEN" | sha256sum` prints it;
 * - NAME: required, the rest of the line with surrounding blanks removed
 *   (inner spaces and tabs are kept), at most 255 bytes, no other control
 *   characters; it is meant for logs;
 * - the same agent id may appear on several lines (several valid tokens,
 *   e.g. while rotating); the same hash twice is an error.
 *
 * A table is immutable once built, so it can be read from any number of
 * threads. To reload (kasd on SIGHUP) build a new table and swap pointers;
 * free the old one when no lookup is using it.
 *
 * Error messages name the file and line ("tokens.txt:7: hash is not 64 hex
 * characters") and never quote the line's content, so a token pasted into
 * the file by mistake does not end up in a log.
 */
#ifndef KR_CORE_TOKEN_FILE_H
#define KR_CORE_TOKEN_FILE_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/error.h>
#include <kasroute/mem.h>

#include "sha256.h"

typedef struct kr__token_table kr__token_table;

/* Default limits (kr__token_table_parse and kr__token_file_load). */
#define KR__TOKEN_FILE_MAX_BYTES ((size_t)16 << 20)
#define KR__TOKEN_FILE_MAX_ENTRIES ((size_t)1000000)
#define KR__TOKEN_FILE_MAX_LINE ((size_t)4096) /* bytes, without '\n' */
#define KR__TOKEN_NAME_MAX 255

typedef struct kr__token_limits {
  size_t max_bytes;   /* whole text; over it: KR_ETOOBIG */
  size_t max_entries; /* entries; over it: KR_ETOOBIG */
  size_t max_line;    /* one line without its '\n'; over it: KR_ETOOBIG */
} kr__token_limits;

/* Parses text[0..len) (no terminator needed; NUL bytes are an error) with
 * the default limits. name_for_errors prefixes error messages (NULL:
 * "tokens"). mem allocates the table (NULL: the process default); its
 * struct is copied, so it need not outlive the call.
 * Returns 0 with *out set to a new table (free with kr__token_table_free),
 * or an error with *out set to NULL and, when err is not NULL and errlen >
 * 0, a NUL-terminated message in err (truncated to errlen):
 *   KR_ECONFIG  a line is malformed, or a hash is listed twice
 *   KR_ETOOBIG  text, a line or the entry count exceeds its limit
 *   KR_EINVAL   NULL out, or NULL text with len > 0
 *   KR_ENOMEM   allocation failed
 * An empty text (or only comments) gives an empty table. */
int kr__token_table_parse(const kr_mem *mem, const char *text, size_t len,
                          const char *name_for_errors, kr__token_table **out,
                          char *err, size_t errlen);

/* kr__token_table_parse with explicit limits (tests, special deployments).
 * limits NULL means the defaults. */
int kr__token_table_parse_limits(const kr_mem *mem, const char *text,
                                 size_t len, const char *name_for_errors,
                                 const kr__token_limits *limits,
                                 kr__token_table **out, char *err,
                                 size_t errlen);

/* Reads the file at path (at most KR__TOKEN_FILE_MAX_BYTES) and parses it
 * with kr__token_table_parse, using path in error messages. Besides the
 * parse errors it returns KR_ENOENT (no such file), KR_EIO (cannot open or
 * read it, e.g. permission denied or a directory) and KR_ETOOBIG (file
 * larger than the limit). *out is NULL on failure. This is the only
 * function of the module that does I/O (blocking stdio reads). */
int kr__token_file_load(const kr_mem *mem, const char *path,
                        kr__token_table **out, char *err, size_t errlen);

/* Finds the entry whose hash is SHA-256(token[0..len)). Returns 0 and sets
 * *agent_id and *name (each may be NULL; name stays valid until the table
 * is freed), or KR_EAUTH when no entry matches or len is 0, or KR_EINVAL
 * for a NULL table or a NULL token with len > 0.
 *
 * Timing: the presented token is hashed, the first bits of its hash pick a
 * bucket of the index (about one entry per bucket), and every entry of that
 * bucket is compared on all 32 bytes with kr__ct_equal, without stopping at
 * a match. The time therefore depends on the bucket's size, which is a
 * function of the presented token's own hash, never on how many leading
 * bytes of a stored hash it shares. Learning that a stored hash starts
 * with some bits gives nothing useful: a matching token is a SHA-256
 * preimage. A linear scan would be the same in principle and too slow for
 * large tables. */
int kr__token_table_lookup(const kr__token_table *t, const char *token,
                           size_t len, int64_t *agent_id, const char **name);

/* kr__token_table_lookup for an already computed hash. */
int kr__token_table_lookup_hash(const kr__token_table *t,
                                const uint8_t hash[KR__SHA256_LEN],
                                int64_t *agent_id, const char **name);

/* Number of entries (0 for NULL). */
size_t kr__token_table_count(const kr__token_table *t);

/* Entry i (0 <= i < count), in hash order, not file order; for tests and
 * diagnostics. Any out pointer may be NULL. Returns 0 or KR_EINVAL (i out
 * of range, NULL table). line receives the entry's 1-based line number. */
int kr__token_table_get(const kr__token_table *t, size_t i, int64_t *agent_id,
                        uint8_t hash[KR__SHA256_LEN], const char **name,
                        size_t *line);

/* Frees the table; NULL is a no-op. */
void kr__token_table_free(kr__token_table *t);

#endif
