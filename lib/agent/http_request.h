/* The request head of an HTTP handler exchange (kasroute/http_handler.h),
 * checked and copied out of a stream's OPEN metadata. Internal.
 *
 * The OPEN is untrusted (any kas or opener can send it): parsing checks
 * every byte that is kept and owns copies of them, so the head outlives
 * the OPEN and every string it hands out is NUL-terminated with no NUL
 * inside. The rules are those http_handler.h promises: ":method" a
 * token, ":path" starting with '/' with no space or control byte,
 * ":user" and ":group" values and field values free of CR, LF and NUL,
 * field names tokens (stored lower-case), hop-by-hop fields removed
 * except the upgrade pair ("upgrade" and "connection: upgrade") of a
 * request that asks to switch protocols, and the kr__mdlist limits.
 */
#ifndef KR_AGENT_HTTP_REQUEST_H
#define KR_AGENT_HTTP_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/mux.h>

#include "http/http_map.h"

typedef struct kr__http_request {
  /* Owned copies: info holds ":method", ":path", then ":user" (when
   * present) and every ":group"; fields the end-to-end request fields in
   * order, names lower-case. */
  kr__mdlist info;
  kr__mdlist fields;
  const char *method;      /* into info */
  const char *path;        /* into info */
  const char *user;        /* into info; NULL: no identity */
  size_t group0, n_groups; /* groups are info.md[group0 .. + n_groups) */
  int is_head;             /* HEAD: the response carries no body */
  int upgrade;             /* the request asks to switch protocols */
} kr__http_request;

/* Checks md[0..n) and fills *out with owned copies (out need not be
 * initialised). Returns 0, KR_EPROTO (malformed: *why says how, a static
 * string), KR_ETOOBIG (over the kr__mdlist limits) or KR_ENOMEM. On
 * failure *out holds nothing (kr__http_request_free() on it is a no-op);
 * on success the caller frees it with kr__http_request_free(). */
int kr__http_request_parse(kr__http_request *out, const kr_md *md, size_t n,
                           const char **why);

/* Releases the copies and leaves *r empty. Safe on a zeroed struct. */
void kr__http_request_free(kr__http_request *r);

/* The value of the first field named name (NUL-terminated, ASCII
 * case-insensitive), or NULL (also for name NULL). */
const char *kr__http_request_header(const kr__http_request *r,
                                    const char *name);

/* Field i: *name / *value (either pointer may be NULL). 0, or KR_EINVAL
 * when i >= r->fields.n (then nothing is written). */
int kr__http_request_header_at(const kr__http_request *r, size_t i,
                               const char **name, const char **value);

/* Group i, or NULL when i >= r->n_groups. */
const char *kr__http_request_group(const kr__http_request *r, size_t i);

/* Shared with the response side (http_handler.c); the token and value
 * checks are kr__http_token_ok() and kr__http_value_ok() (http_map.h).
 * Copies name[0..n) lower-cased into out[0..n] with a NUL (out may be
 * name itself). */
void kr__http_lower_copy(char *out, const uint8_t *name, size_t n);

#endif
