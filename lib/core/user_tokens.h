/* The user-token table: who a "Bearer pat:<agent_id>:<token>" credential
 * of the kas HTTP gateway belongs to. Internal to the library.
 *
 * kas stores no tokens, only their SHA-256 hashes, in a text file:
 *
 *   # SHA256_HEX_OF_TOKEN  AGENTS  USER  [GROUPS]
 *   9f86d081...f00a08  17,18  alice   developers,ops
 *   60303ae2...11c752  *      ci-bot
 *
 * (hashes shortened here; the file holds all 64 hex digits)
 *
 * - one entry per line; fields separated by spaces or tabs;
 * - '#' starts a comment, on its own line or after an entry; blank lines
 *   are ignored; a trailing '\r' (CRLF files) is ignored;
 * - SHA256_HEX: exactly 64 hex digits (either case), the SHA-256 of the
 *   token bytes (`kasctl hash-token < token` prints it);
 * - AGENTS: "*" (any agent) or comma-separated agent ids, each a positive
 *   decimal int64 without sign or leading zeros, at most
 *   KR__USER_TOKEN_MAX_AGENTS of them, none twice, no empty element;
 * - USER: the Kubernetes user name, 1..KR__USER_TOKEN_NAME_MAX bytes of
 *   printable ASCII other than space, ',' and '#';
 * - GROUPS (optional): comma-separated group names, same charset and
 *   length as USER, at most KR__USER_TOKEN_MAX_GROUPS, none twice, no
 *   empty element;
 * - nothing may follow GROUPS but blanks or a comment;
 * - the same hash twice is an error (one token, one identity).
 *
 * A table is immutable once built, so it can be read from any number of
 * threads. To reload (kasd on SIGHUP) build a new table and swap pointers;
 * free the old one when no lookup is using it.
 *
 * Error messages name the file and line ("users.txt:7: hash is not 64 hex
 * characters") and never quote the line's content, so a token pasted into
 * the file by mistake does not end up in a log.
 */
#ifndef KR_CORE_USER_TOKENS_H
#define KR_CORE_USER_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/error.h>
#include <kasroute/mem.h>

#include "sha256.h"

typedef struct kr__user_token_table kr__user_token_table;

#define KR__USER_TOKEN_MAX_AGENTS 64 /* ids on one line */
#define KR__USER_TOKEN_MAX_GROUPS 32 /* groups on one line */
#define KR__USER_TOKEN_NAME_MAX 255  /* bytes of a user or group name */

/* Default limits (kr__user_token_table_parse and _load). A line holds at
 * most 64 + 64 * 20 + 256 + 32 * 256 bytes of fields, well under the line
 * limit. */
#define KR__USER_TOKEN_FILE_MAX_BYTES ((size_t)16 << 20)
#define KR__USER_TOKEN_FILE_MAX_ENTRIES ((size_t)1000000)
#define KR__USER_TOKEN_FILE_MAX_LINE ((size_t)16384) /* bytes, without '\n' */

typedef struct kr__user_token_limits {
  size_t max_bytes;   /* whole text; over it: KR_ETOOBIG */
  size_t max_entries; /* entries; over it: KR_ETOOBIG */
  size_t max_line;    /* one line without its '\n'; over it: KR_ETOOBIG */
} kr__user_token_limits;

/* One entry, as returned by a lookup. Every pointer points into the table
 * and stays valid until the table is freed. */
typedef struct kr__user_token_entry {
  int any_agent;         /* AGENTS was "*"; agents is then empty */
  const int64_t *agents; /* in file order */
  size_t n_agents;
  const char *user;          /* NUL-terminated */
  const char *const *groups; /* NUL-terminated names, in file order */
  size_t n_groups;           /* 0 when GROUPS is absent */
  size_t line;               /* 1-based line in the file */
} kr__user_token_entry;

/* Parses text[0..len) (no terminator needed; NUL bytes are an error) with
 * the default limits. name_for_errors prefixes error messages (NULL:
 * "user-tokens"). mem allocates the table (NULL: the process default); its
 * struct is copied, so it need not outlive the call.
 * Returns 0 with *out set to a new table (free with
 * kr__user_token_table_free), or an error with *out set to NULL and, when
 * err is not NULL and errlen > 0, a NUL-terminated message in err
 * (truncated to errlen):
 *   KR_ECONFIG  a line is malformed, or a hash is listed twice
 *   KR_ETOOBIG  text, a line or the entry count exceeds its limit
 *   KR_EINVAL   NULL out, or NULL text with len > 0
 *   KR_ENOMEM   allocation failed
 * An empty text (or only comments) gives an empty table. */
int kr__user_token_table_parse(const kr_mem *mem, const char *text, size_t len,
                               const char *name_for_errors,
                               kr__user_token_table **out, char *err,
                               size_t errlen);

/* kr__user_token_table_parse with explicit limits (tests, fuzzing).
 * limits NULL means the defaults. */
int kr__user_token_table_parse_limits(const kr_mem *mem, const char *text,
                                      size_t len, const char *name_for_errors,
                                      const kr__user_token_limits *limits,
                                      kr__user_token_table **out, char *err,
                                      size_t errlen);

/* Reads the file at path (at most KR__USER_TOKEN_FILE_MAX_BYTES) and parses
 * it, using path in error messages. Besides the parse errors it returns
 * KR_ENOENT (no such file), KR_EIO (cannot open or read it, e.g.
 * permission denied or a directory) and KR_ETOOBIG (file larger than the
 * limit). *out is NULL on failure. The only function of the module that
 * does I/O (blocking stdio reads). */
int kr__user_token_table_load(const kr_mem *mem, const char *path,
                              kr__user_token_table **out, char *err,
                              size_t errlen);

/* Finds the entry whose hash is SHA-256(token[0..len)). Returns 0 with
 * *entry filled (entry may be NULL), KR_ENOENT when no entry matches or
 * len is 0, or KR_EINVAL for a NULL table or a NULL token with len > 0.
 * On failure *entry is zeroed.
 *
 * Timing: as kr__token_table_lookup (core/token_file.h): the presented
 * token is hashed, the top bits of its hash pick a bucket of the index
 * (about one entry per bucket), and every entry of that bucket is compared
 * on all 32 bytes with kr__ct_equal, without stopping at a match. The time
 * depends on the presented token's own hash, never on how many leading
 * bytes of a stored hash it shares. */
int kr__user_token_lookup(const kr__user_token_table *t, const char *token,
                          size_t len, kr__user_token_entry *entry);

/* kr__user_token_lookup for an already computed hash. */
int kr__user_token_lookup_hash(const kr__user_token_table *t,
                               const uint8_t hash[KR__SHA256_LEN],
                               kr__user_token_entry *entry);

/* 1 if entry allows agent (any_agent, or agent in its list), else 0. */
int kr__user_token_entry_allows(const kr__user_token_entry *entry,
                                int64_t agent);

/* Number of entries (0 for NULL). */
size_t kr__user_token_table_count(const kr__user_token_table *t);

/* Entry i (0 <= i < count), in hash order, not file order; for tests and
 * diagnostics. hash and entry may be NULL. Returns 0 or KR_EINVAL (i out
 * of range, NULL table). */
int kr__user_token_table_get(const kr__user_token_table *t, size_t i,
                             uint8_t hash[KR__SHA256_LEN],
                             kr__user_token_entry *entry);

/* Frees the table; NULL is a no-op. */
void kr__user_token_table_free(kr__user_token_table *t);

#endif
