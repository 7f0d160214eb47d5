/* Incremental HTTP/1.1 message parsing over libhttp-parser. Internal.
 *
 * One kr__http_parser reads a sequence of requests (the kas gateway) or of
 * responses (the agent's upstream client) from a byte stream. It collects
 * the head (start line and header fields) into a kr__http_head, bounded by
 * kr__http_limits, then hands the body to on_body as it arrives, already
 * de-chunked. It never buffers body bytes.
 *
 * Flow control: feed() returns how many bytes it consumed. It stops early
 *   - after on_end (the message is complete): the parser is paused until
 *     kr__http_parser_resume(), so that a pipelined next request waits
 *     until its predecessor's response is done;
 *   - after on_head of an upgrade (a request with "Connection: upgrade" and
 *     an "Upgrade" field, or a 101 response): every later byte is not HTTP
 *     (the caller relays it raw), including the body an upgrade request's
 *     fields may announce; on_end is not called; the parser is then
 *     finished and later feed() calls return KR_ESTATE;
 *   - when on_body returned KR__HTTP_PAUSE (the receiver is full): call
 *     kr__http_parser_resume() and feed the unconsumed rest again later.
 *     (When that was the body's last chunk, the count may leave out the
 *     body's last byte; feeding it again completes the message.)
 * The caller keeps unconsumed bytes and feeds them again. While paused,
 * feed() consumes nothing and returns 0.
 *
 * Interim responses: a 1xx other than 101 (100 Continue, 103) is reported
 * as a message of its own: on_head (status 1xx, has_body 0), then on_end;
 * after resume() the next head is the final response (or another 1xx).
 *
 * What is refused beyond libhttp-parser's grammar, as KR_EPROTO: bare LF,
 * CR not followed by LF, NUL and obsolete line folding anywhere in a head;
 * field names that are not tokens (so "Name : v" too); HTTP versions other
 * than 1.x; CONNECT; HTTP/1.1 requests without exactly one Host (HTTP/1.0:
 * more than one); Content-Length together with Transfer-Encoding, or
 * repeated (even with equal values); Transfer-Encoding naming anything but
 * a single "chunked"; response status outside 100..599. Chunk extensions
 * are ignored; trailer fields are counted against max_head and dropped.
 *
 * Errors: feed() returns KR_EPROTO (malformed message), KR_ETOOBIG (a
 * limit was exceeded: the reason is "request header too large" /
 * "response header too large" / "too many header fields", fit for a 431),
 * KR_ENOMEM, or the error a callback returned; kr__http_parser_error()
 * gives a short reason fit for an HTTP 400/431 body; the parser is then
 * dead (every later feed() returns the same error).
 *
 * Memory: one arena per parser holds the head; it grows to the largest
 * head seen (at most max_head plus two bytes per field) and is reused, so
 * steady-state parsing allocates nothing.
 *
 * Callbacks may not free the parser; they may call resume/pause helpers.
 */
#ifndef KR_HTTP_HTTP_PARSE_H
#define KR_HTTP_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/mux.h> /* kr_md */

/* Defaults of kr__http_limits. */
#define KR__HTTP_DEFAULT_MAX_HEAD ((size_t)32 << 10) /* start line + fields */
#define KR__HTTP_DEFAULT_MAX_FIELDS 128

/* A zero member means its default; larger values than
 * KR__HTTP_MAX_LIMIT (bytes) and KR__HTTP_MAX_LIMIT / 64 (fields) are
 * capped to those. */
#define KR__HTTP_MAX_LIMIT ((size_t)1 << 30)
typedef struct kr__http_limits {
  size_t max_head;   /* bytes of start line and header fields together,
                        line ends and the final empty line included */
  size_t max_fields; /* number of header fields */
} kr__http_limits;

/* The head of one message. Every pointer stays valid until the next
 * kr__http_parser_resume() or kr__http_parser_free(). */
typedef struct kr__http_head {
  int is_request;
  int http_major, http_minor;
  /* Requests. */
  const char *method; /* "GET", ... (static string) */
  int is_head;        /* method is HEAD */
  const char *target; /* request-target as received, NUL-terminated */
  size_t target_len;
  /* Responses. */
  int status;
  /* Header fields in order. Names are lower-cased; values have leading
   * and trailing blanks removed. Both NUL-terminated after their length
   * (the kr_md byte pointers may be cast to char *). Repeated fields stay
   * separate entries. */
  kr_md *fields;
  size_t n_fields;
  /* Body framing as parsed. content_length is -1 when absent. */
  int64_t content_length;
  int chunked;
  /* The message has a body to read (requests: Content-Length > 0 or
   * chunked, and not an upgrade; responses: anything but 1xx/204/304, a
   * reply to HEAD (expect_head_response) or Content-Length: 0). A chunked
   * body may still turn out empty. Set to 0 when on_head returned
   * KR__HTTP_NO_BODY. */
  int has_body;
  int keep_alive;      /* the connection may carry another message after
                          (HTTP/1.1 unless "Connection: close"; HTTP/1.0 only
                          with "Connection: keep-alive"; never for a response
                          delimited by the connection close) */
  int upgrade;         /* see above: bytes after this head are raw */
  int expect_continue; /* HTTP/1.1 request carried "Expect: 100-continue" */
} kr__http_head;

/* Return values of the callbacks besides 0 (go on). */
/* on_body: stop after this chunk. */
#define KR__HTTP_PAUSE 1
/* on_head of a response: it has no body (the request was HEAD); ignored
 * for requests. */
#define KR__HTTP_NO_BODY 2

typedef struct kr__http_parser_cbs {
  /* The head is complete. Return 0, KR__HTTP_NO_BODY, or a negative
   * KR_E* to fail the parse with that error. */
  int (*on_head)(const kr__http_head *h, void *ud);
  /* Body bytes (de-chunked). Return 0, KR__HTTP_PAUSE or a negative KR_E*. */
  int (*on_body)(const uint8_t *p, size_t n, void *ud);
  /* The message is complete. Return 0 or a negative KR_E*. */
  int (*on_end)(void *ud);
} kr__http_parser_cbs;

typedef struct kr__http_parser kr__http_parser;

/* is_request: parse requests (else responses). limits NULL: defaults.
 * Returns 0 or KR_ENOMEM. */
int kr__http_parser_new(kr__http_parser **out, int is_request,
                        const kr__http_limits *limits,
                        const kr__http_parser_cbs *cbs, void *ud);
void kr__http_parser_free(kr__http_parser *p);

/* Consumes up to n bytes; returns the count consumed (see the flow
 * control rules above) or KR_EPROTO / KR_ETOOBIG / KR_ENOMEM / the error a
 * callback returned, or KR_ESTATE after an upgrade. */
int64_t kr__http_parser_feed(kr__http_parser *p, const uint8_t *data, size_t n);

/* The input ended (the peer closed). Completes a response whose body is
 * delimited by the connection close (on_end fires). Returns 0 if the
 * parser was between messages or the message ended cleanly, KR_EPROTO
 * when a message was cut short. */
int kr__http_parser_eof(kr__http_parser *p);

/* Unpauses after on_end or KR__HTTP_PAUSE. After on_end it also releases
 * the head and prepares for the next message. */
void kr__http_parser_resume(kr__http_parser *p);

/* Responses only: the next response answers a HEAD request (no body
 * whatever its fields say). Call before feeding that response; it holds
 * across interim 1xx responses and is cleared when a final response
 * ends. */
void kr__http_parser_expect_head_response(kr__http_parser *p, int on);

/* 1 while a message has started (bytes of it consumed) and not ended. */
int kr__http_parser_in_message(const kr__http_parser *p);

/* Reason for the last error, "" if none. Never quotes input bytes. */
const char *kr__http_parser_error(const kr__http_parser *p);

#endif
