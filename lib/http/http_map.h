/* HTTP messages <-> stream metadata, and HTTP/1.1 head serialization.
 * Internal.
 *
 * How an HTTP exchange travels over one mux stream (docs/PROTOCOL.md,
 * "HTTP over streams"): the OPEN carries ":service", ":method", ":path"
 * (origin-form path and query, relative to the service) and the request's
 * end-to-end header fields as lower-case name/value entries in order;
 * kas may add ":user" and ":group" (Kubernetes identity, one entry per
 * group). DATA carries the de-chunked request body, FIN ends it (an OPEN
 * with FIN means no body). The REPLY carries ":status" and the response's
 * end-to-end fields; DATA the body; FIN its end. After a REPLY with
 * ":status" 101 both directions carry raw bytes (the upgraded protocol).
 * "content-length" travels when the sender knew it; otherwise the
 * receiver frames the body itself (chunked, or close-delimited for
 * HTTP/1.0 peers).
 */
#ifndef KR_HTTP_HTTP_MAP_H
#define KR_HTTP_HTTP_MAP_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/mux.h>

#include "http/http_parse.h"

/* Reserved names used by the HTTP mapping besides KR_MD_* in mux.h. */
#define KR__MD_USER KR_MD_USER
#define KR__MD_GROUP KR_MD_GROUP

/* A growable list of metadata entries owning copies of their bytes.
 * Limits: KR__MDLIST_MAX_ENTRIES entries, KR__MDLIST_MAX_BYTES bytes of
 * names and values together (the frame size bounds metadata anyway). */
#define KR__MDLIST_MAX_ENTRIES 256
#define KR__MDLIST_MAX_BYTES ((size_t)60 << 10)

typedef struct kr__mdlist {
  kr_md *md; /* entries; their bytes point into owned blocks that never
                move, so md[i] stays valid until kr__mdlist_free */
  size_t n, cap;
  size_t bytes;     /* names and values, counted against the limit */
  uint8_t **blocks; /* owned copies, several entries per block */
  size_t n_blocks, cap_blocks;
  size_t block_used, block_cap; /* fill of the last block */
} kr__mdlist;

void kr__mdlist_init(kr__mdlist *l);
void kr__mdlist_free(kr__mdlist *l); /* leaves an empty, reusable list */
/* Appends a copy. 0, KR_ETOOBIG (limits) or KR_ENOMEM; nothing appended
 * on failure. */
int kr__mdlist_add(kr__mdlist *l, const void *name, size_t name_len,
                   const void *value, size_t value_len);
/* kr__mdlist_add with NUL-terminated strings. */
int kr__mdlist_adds(kr__mdlist *l, const char *name, const char *value);

/* First entry named name (NUL-terminated, exact bytes) in md[0..n), or
 * NULL. */
const kr_md *kr__md_find(const kr_md *md, size_t n, const char *name);
/* 1 if entry m is named name. */
int kr__md_is(const kr_md *m, const char *name);

/* 1 if c is an RFC 9110 token character ("!#$%&'*+-.^_`|~", digits,
 * letters). */
int kr__http_is_tchar(unsigned char c);
/* 1 if p[0..n) is a non-empty RFC 9110 token (a method, a field name). */
int kr__http_token_ok(const uint8_t *p, size_t n);
/* 1 if p[0..n) holds no CR, LF or NUL (one header line, one C string). */
int kr__http_value_ok(const uint8_t *p, size_t n);

/* 1 if the comma-separated field value v[0..n) (optional blanks around
 * items, empty items allowed) lists the token name[0..len) (lower case),
 * compared ignoring case: "connection: keep-alive, Upgrade". */
int kr__http_list_has(const uint8_t *v, size_t n, const char *name,
                      size_t len);

/* 1 if a header field (lower-case name) is hop-by-hop for a proxy: the
 * fixed set of RFC 9110 section 7.6.1 (connection, keep-alive,
 * proxy-connection, te, trailer, transfer-encoding, upgrade) plus every
 * name listed in the message's Connection fields (fields[0..n)). "upgrade"
 * is reported hop-by-hop too; callers that relay an upgrade re-add it. */
int kr__http_is_hop_by_hop(const char *name, size_t name_len,
                           const kr_md *fields, size_t n);

/* Appends the end-to-end fields of h (hop-by-hop ones dropped, and every
 * name for which skip(name, name_len, skip_ud) returns 1) to out.
 * When h->upgrade, "connection: upgrade" and the "upgrade" field are kept.
 * 0 or the errors of kr__mdlist_add. */
int kr__http_copy_fields(kr__mdlist *out, const kr__http_head *h,
                         int (*skip)(const char *name, size_t len, void *ud),
                         void *skip_ud);

/* A growable byte buffer for serialized heads. */
typedef struct kr__strbuf {
  char *p;
  size_t len, cap;
  int failed; /* an append ran out of memory: contents unusable */
} kr__strbuf;

void kr__strbuf_init(kr__strbuf *b);
void kr__strbuf_free(kr__strbuf *b);
void kr__strbuf_add(kr__strbuf *b, const void *p, size_t n);
void kr__strbuf_addf(kr__strbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Writes "METHOD target HTTP/1.1\r\n", then every entry of md[0..n) whose
 * name does not start with ':' as "name: value\r\n", then extra[0..n_extra)
 * the same way, then "\r\n". Field values containing CR, LF or NUL are
 * refused (KR_EPROTO, nothing guaranteed in b). 0, KR_EPROTO or KR_ENOMEM. */
int kr__http_write_request_head(kr__strbuf *b, const char *method,
                                const char *target, size_t target_len,
                                const kr_md *md, size_t n, const kr_md *extra,
                                size_t n_extra);

/* Writes "HTTP/1.1 status reason\r\n", the fields as above, and "\r\n". */
int kr__http_write_response_head(kr__strbuf *b, int status, const kr_md *md,
                                 size_t n, const kr_md *extra, size_t n_extra);

/* Standard reason phrase ("OK", "Not Found", ...; "Unknown" otherwise). */
const char *kr__http_reason(int status);

/* Writes the chunk-size line for a chunk of n bytes ("1f40\r\n") into out
 * (at least 20 bytes); returns its length. The chunk's data is followed by
 * "\r\n"; the last chunk is "0\r\n\r\n". */
size_t kr__http_chunk_line(char *out, size_t n);

/* Parses a decimal ":status" value (three digits, 100..599). Returns the
 * status or -1. */
int kr__http_parse_status(const uint8_t *p, size_t n);

#endif
