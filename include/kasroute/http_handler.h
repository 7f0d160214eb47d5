/* libkasroute — HTTP handlers: an agent serving HTTP without an upstream.
 *
 * A kr_http_handler serves one service of an agent as HTTP
 * (kr_agent_options_add_http_handler() in <kasroute/agent.h>). Callers
 * reach it like any HTTP service: through the kas gateway
 * (/api/v1/agents/{id}/services/{service}/{path}) or with HTTP over a
 * stream (docs/PROTOCOL.md, "HTTP over streams"). Each request is one
 * kr_http_exchange:
 *
 *   on_request   the request head arrived: method, path, fields, and the
 *                caller's identity when kas knows it. Answer now or later
 *                with kr_http_respond() (or kr_http_respond_body() for a
 *                whole small response).
 *   on_body      request body bytes (valid during the call). They count
 *                as consumed when the callback returns unless the
 *                exchange is paused (kr_http_pause_body()): then the
 *                caller can send at most one stream window (2 MiB) more
 *                until it is resumed. Without on_body the body is
 *                dropped.
 *   on_body_end  the request body is complete (also fires, right after
 *                on_request, for a request without a body).
 *   on_writable  a kr_http_write() was short (or KR_EAGAIN): write the
 *                rest now.
 *   on_close     the exchange is over, exactly once per on_request: err 0
 *                when the response was finished and the request read to
 *                its end, otherwise why it failed (KR_ERESET: the caller
 *                went away, the exchange was aborted, or the agent was
 *                freed or shut down; other codes as kr_error_from_code()
 *                maps the stream's reset). No callback of the exchange
 *                follows it. The exchange and every string obtained from
 *                it are invalid once it returns. Through the gateway, a
 *                response finished before the whole request body arrived
 *                ends with KR_ERESET (the gateway cannot skip the rest
 *                of the body, so it resets the stream).
 *
 * A malformed request (no ":method" or ":path", a method that is not a
 * token, a path not starting with '/' or holding a space or control
 * byte, a field name that is not a token, a value holding CR, LF or NUL,
 * more than 256 fields or 60 KiB of them) never reaches on_request: the
 * stream is reset with KR_CODE_PROTOCOL.
 *
 * The request's fields are its end-to-end fields, names in lower case:
 * hop-by-hop fields are removed (whoever opened the stream), except that
 * an upgrade request ("upgrade" and a "connection" field naming it)
 * keeps "upgrade" and "connection: upgrade".
 *
 * When on_close fires: of the calls below, only kr_http_abort() fires it
 * inside the call. The response's end (kr_http_finish(),
 * kr_http_respond() with end, kr_http_respond_body()) is queued at once,
 * in the same write as the last body bytes; when that ends the exchange,
 * on_close follows from the agent's loop (or inside kr_agent_free(),
 * whichever comes first), never from inside those calls.
 *
 * User data: an exchange's user data starts as the service_data given at
 * registration; on_request may replace it (kr_http_set_user_data()).
 * Later callbacks receive the current value.
 *
 * Re-entrancy and threading as in <kasroute/handler.h>: callbacks run on
 * the agent's loop thread; the kr_http_* functions may be called inside
 * them, or outside them from that thread while the exchange is open.
 * kr_http_abort() fires on_close before it returns; inside a callback
 * the exchange then stays valid until that callback returns (calls
 * return KR_ECLOSED), outside one it is gone when kr_http_abort()
 * returns. kr_agent_free() ends every open exchange (on_close with
 * KR_ERESET) and must not be called from these callbacks.
 */
#ifndef KASROUTE_HTTP_HANDLER_H
#define KASROUTE_HTTP_HANDLER_H

#include <kasroute/common.h>
#include <kasroute/mux.h>

KR_BEGIN_DECLS

/* The callbacks of one HTTP service (opaque; kr_http_handler_new()). */
typedef struct kr_http_handler kr_http_handler;
/* One request and its response, from on_request to on_close. */
typedef struct kr_http_exchange kr_http_exchange;

/* on_request: the request head arrived; service_data as registered. */
typedef void (*kr_http_request_cb)(kr_http_exchange *x, void *service_data);
/* on_body: data[0..len) of the request body, valid during the call. */
typedef void (*kr_http_body_cb)(kr_http_exchange *x, const uint8_t *data,
                                size_t len, void *user_data);
/* on_body_end and on_writable. */
typedef void (*kr_http_event_cb)(kr_http_exchange *x, void *user_data);
/* on_close: the exchange is over (err 0, or why it failed). */
typedef void (*kr_http_close_cb)(kr_http_exchange *x, int err, void *user_data);

/* An empty callback set; on_request is required. Copied at registration.
 * Returns 0 or KR_ENOMEM. */
KR_API int kr_http_handler_new(kr_http_handler **out);
/* NULL is a no-op. */
KR_API void kr_http_handler_free(kr_http_handler *h);

/* Set one callback of the set (f NULL unsets it); the change applies to
 * this set only, not to services registered with it before. */
KR_API void kr_http_handler_set_on_request(kr_http_handler *h,
                                           kr_http_request_cb f);
KR_API void kr_http_handler_set_on_body(kr_http_handler *h, kr_http_body_cb f);
KR_API void kr_http_handler_set_on_body_end(kr_http_handler *h,
                                            kr_http_event_cb f);
KR_API void kr_http_handler_set_on_writable(kr_http_handler *h,
                                            kr_http_event_cb f);
KR_API void kr_http_handler_set_on_close(kr_http_handler *h,
                                         kr_http_close_cb f);

/* ---------------------------------------------------------------- request
 * Strings are NUL-terminated and valid until on_close returns. */

/* The request method ("GET", ...). */
KR_API const char *kr_http_method(const kr_http_exchange *x);
/* The request target: path and query, starting with '/' (relative to the
 * service: the gateway strips /api/v1/agents/{id}/services/{service}, or
 * /k8s-proxy). */
KR_API const char *kr_http_path(const kr_http_exchange *x);
/* The value of the first field named name (ASCII case-insensitive), or
 * NULL. Hop-by-hop fields never arrive (see above). */
KR_API const char *kr_http_header(const kr_http_exchange *x, const char *name);
/* Number of request fields, and field i (names in lower case; name and
 * value may be NULL). Returns 0, or KR_EINVAL when i is out of range. */
KR_API size_t kr_http_header_count(const kr_http_exchange *x);
KR_API int kr_http_header_at(const kr_http_exchange *x, size_t i,
                             const char **name, const char **value);
/* Who is calling, as kas authenticated it (":user", ":group"); NULL / 0
 * when kas sent no identity. kas sends one whenever the caller's
 * credentials name a user (a JWT "user" claim, a user token's user, a
 * custom verifier's kr_kas_auth_set_user()), through the gateway's
 * service proxy (/api/v1/agents/...), its Kubernetes proxy (/k8s-proxy/,
 * to a service named "kubernetes", which always needs one) and from API
 * clients. kr_http_group_at() returns NULL when i is out of range. */
KR_API const char *kr_http_user(const kr_http_exchange *x);
KR_API size_t kr_http_group_count(const kr_http_exchange *x);
KR_API const char *kr_http_group_at(const kr_http_exchange *x, size_t i);
/* 1 while request body bytes may still arrive. */
KR_API int kr_http_has_body(const kr_http_exchange *x);

/* The exchange's user data (first the service_data; see above) and its
 * replacement; later callbacks receive the new value. */
KR_API void *kr_http_user_data(const kr_http_exchange *x);
KR_API void kr_http_set_user_data(kr_http_exchange *x, void *user_data);

/* Pauses (1) or resumes (0) crediting the request body: see on_body.
 * Resuming gives back the credit of every byte delivered meanwhile.
 * Returns 0 or KR_ECLOSED. */
KR_API int kr_http_pause_body(kr_http_exchange *x, int pause);

/* --------------------------------------------------------------- response */

/* Sends the response head: status 200..599, or 101 to switch protocols
 * (only for an upgrade request; afterwards both directions carry raw
 * bytes: request bytes arrive through on_body, response bytes go with
 * kr_http_write()); fields[0..n) (names 1..255 bytes of RFC 9110 token
 * characters, any case, sent in lower case; values without CR, LF or
 * NUL; copied). Hop-by-hop fields are refused, except "upgrade" with
 * 101. end: no body follows.
 * A "content-length" field (at most one, decimal) is the body's exact
 * size: kr_http_write() refuses bytes beyond it and kr_http_finish()
 * refuses to end before it (not for HEAD requests, 101, 204 and 304,
 * whose responses carry no body). Without one the gateway sends the body
 * chunked (or until close to HTTP/1.0 clients).
 * Returns 0, KR_ESTATE (already answered), KR_EINVAL (status, a
 * reserved (":"), hop-by-hop or malformed field, a bad content-length,
 * end with a non-zero content-length, fields NULL with n > 0),
 * KR_ETOOBIG (the head does not fit one frame), KR_ECLOSED, KR_ENOMEM;
 * nothing is sent on error. */
KR_API int kr_http_respond(kr_http_exchange *x, int status, const kr_md *fields,
                           size_t n, int end);
/* A whole response at once: status, "content-type" (NULL: none),
 * "content-length" and body[0..len), then the end. The body is copied
 * whatever its size, before anything is sent (KR_ENOMEM then); the part
 * the stream cannot queue at once stays with the exchange and follows
 * as the caller reads. Memory grows with len: this is meant for
 * documents, not bulk data (stream that with kr_http_respond() and
 * kr_http_write()). For a HEAD request only the
 * head goes (content-length still says len); for 204 and 304 len must be
 * 0 and no content-length is sent. Errors as kr_http_respond(), plus
 * KR_EINVAL for status 101, body NULL with len > 0, or a body with 204 /
 * 304. */
KR_API int kr_http_respond_body(kr_http_exchange *x, int status,
                                const char *content_type, const void *body,
                                size_t len);
/* Writes response body bytes, as kr_stream_write(): returns the count
 * accepted (0..len); a short count or KR_EAGAIN means on_writable will
 * fire. KR_ESTATE before kr_http_respond() or after the end (including
 * after kr_http_respond_body()), KR_EINVAL (more than the content-length
 * left, data NULL with len > 0), KR_ECLOSED, KR_ENOMEM. */
KR_API int64_t kr_http_write(kr_http_exchange *x, const void *data, size_t len);
/* Ends the response body (the FIN goes after the bytes written, from the
 * loop). Returns 0, KR_ESTATE (not answered, already ended, or fewer
 * bytes written than the content-length announced), KR_ECLOSED. */
KR_API int kr_http_finish(kr_http_exchange *x);
/* Aborts the exchange: the stream is reset with KR_CODE_UPSTREAM, so the
 * caller sees a failed response (the gateway answers 502 if no head was
 * sent yet, otherwise cuts the connection; a kr_client caller gets
 * KR_EUPSTREAM). reason (may be NULL; at most KR_MAX_REASON bytes are
 * sent) goes to the caller. on_close fires with KR_ERESET before it
 * returns. Returns 0, KR_ECLOSED, or KR_ENOMEM (nothing happened). */
KR_API int kr_http_abort(kr_http_exchange *x, const char *reason);

KR_END_DECLS

#endif
