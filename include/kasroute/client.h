/* libkasroute — the client role: reach an agent's services through kas.
 *
 * A kr_client holds one multiplexed connection to a kas API listener
 * (tcp://, tls://, ws:// or wss://), authenticated with an HS256 JWT (audience
 * "gitlab-kas"). Each stream it opens names an agent and a service; kas
 * routes it to a tunnel of that agent. Stream events arrive through the
 * kr_mux_callbacks given to kr_client_new() (on_reply, on_data, on_fin,
 * on_writable, on_close), each with the user data given to
 * kr_client_open(); kr_stream_* calls work on the returned stream.
 *
 * Why a stream ended is in its on_close code; kr_error_from_code() turns
 * it into an error: KR_ENOTCONN (agent not connected before the kas route
 * deadline), KR_ENOSERVICE (unknown service), KR_EAUTH (credentials
 * refused), KR_EUPSTREAM (the service behind the agent failed), ...
 *
 * Threading: every call on the loop thread of the event_base given to
 * kr_client_new(); every callback runs there, from the loop.
 *
 * Re-entrancy: inside the client's callbacks (on_state, the stream
 * callbacks, a listing callback) every kr_stream_* function and every
 * kr_client_* function may be called, kr_client_free() included: after
 * it no callback of that client fires any more (not even the rest of the
 * callbacks that one event would have fired), neither the client nor its
 * streams may be used again, and the memory is released once the
 * callback has returned.
 *
 * Name resolution (getaddrinfo) happens in kr_client_new() and blocks the
 * calling thread; use a numeric address or a local resolver on loops that
 * must not stall.
 */
#ifndef KASROUTE_CLIENT_H
#define KASROUTE_CLIENT_H

#include <kasroute/common.h>
#include <kasroute/mux.h>

KR_BEGIN_DECLS

struct event_base;
/* One connection to kas and its streams (opaque): kr_client_new() to
 * kr_client_free(). */
typedef struct kr_client kr_client;
/* Settings of a client (opaque), copied by kr_client_new(). */
typedef struct kr_client_options kr_client_options;

/* Creates options with the defaults. Returns 0 or KR_ENOMEM. */
KR_API int kr_client_options_new(kr_client_options **out);
/* Wipes the token and frees. NULL is a no-op. */
KR_API void kr_client_options_free(kr_client_options *o);
/* kas API listener: tcp://, tls://, ws://HOST:PORT/PATH or wss://...
 * (copied). Required. Returns 0, or KR_EADDR for a malformed URL or
 * another scheme. */
KR_API int kr_client_options_set_url(kr_client_options *o, const char *url);
/* The JWT presented to kas (copied, 1 byte to 8 KiB). Required.
 * Returns 0, or KR_EINVAL (NULL, empty or too long). */
KR_API int kr_client_options_set_token(kr_client_options *o, const char *jwt,
                                       size_t len);
/* CA bundle (PEM file) for tls:// and wss:// (default: the system
 * store), and verification (default on; off only for tests). The path is
 * copied (KR_EINVAL for NULL or 1024 bytes or more) and read by
 * kr_client_new() (KR_ETLS there). Return 0 otherwise. */
KR_API int kr_client_options_set_tls_ca_file(kr_client_options *o,
                                             const char *path);
KR_API int kr_client_options_set_tls_verify(kr_client_options *o, int verify);
/* Keepalive (see kr_mux_options_set_keepalive()); defaults 15 s / 45 s;
 * 0 disables. Returns 0, or KR_EINVAL when timeout is non-zero and not
 * greater than interval. */
KR_API int kr_client_options_set_keepalive(kr_client_options *o,
                                           kr_time_us interval,
                                           kr_time_us timeout);

/* The connection is ready for streams (err 0) or failed / ended (err < 0
 * with a reason; after that every stream has ended and the client only
 * needs kr_client_free()). Fires once with 0, then at most once with an
 * error; or only once, with the error, when the connection never became
 * ready. err: KR_ECLOSED (ended after kr_client_close() or a GOAWAY from
 * kas), KR_EAUTH (kas refused the token), KR_EIO (connect failed or the
 * connection broke), KR_ETLS, KR_ETIMEDOUT (connect, handshake or
 * keepalive), KR_EPROTO (kas broke the protocol), KR_ERESET (this side
 * failed the connection for another reason, named in reason), KR_ENOMEM.
 * reason: NUL-terminated text, valid during the call. Runs from the
 * loop. */
typedef void (*kr_client_state_cb)(kr_client *c, int err, const char *reason,
                                   void *user_data);

/* Creates the client and starts connecting; on_state reports the
 * outcome. o and stream_cbs are copied (stream_cbs may be NULL: streams
 * then get no callbacks and their data is dropped; its on_hello, on_open,
 * on_ping and on_goaway are not used). err[0..errlen) receives a reason
 * on failure (err may be NULL). Returns 0, KR_ECONFIG (URL or token
 * missing), KR_ETLS (CA file), KR_EADDR (the host name does not resolve),
 * KR_ENOMEM. */
KR_API int kr_client_new(kr_client **out, struct event_base *base,
                         const kr_client_options *o,
                         const kr_mux_callbacks *stream_cbs,
                         kr_client_state_cb on_state, void *user_data,
                         char *err, size_t errlen);

/* Closes the connection at once and frees. No callback fires: open
 * streams get no on_close and pending kr_client_list_agents() callbacks
 * never run, so release their state yourself. NULL is a no-op. May be
 * called from inside the client's own callbacks (on_state, stream
 * callbacks, listing callbacks; see above): the connection closes and no
 * further callback fires; the rest of the memory (the client, and the
 * TLS or WebSocket context the closing connection still uses) is
 * released from the loop once the callback has returned, or by
 * event_base_free() if the loop never runs again. */
KR_API void kr_client_free(kr_client *c);

/* Opens a stream to (agent_id, service) with optional extra metadata
 * extra[0..n) (copied). fin: no data will be sent. stream_user_data is
 * the stream's user data, passed to its callbacks. No callback fires
 * during the call; the stream's end always comes as on_close. Returns 0
 * and *out, or KR_ESTATE (not ready yet), KR_EGOAWAY (closing),
 * KR_ECLOSED (ended), KR_ESTREAMLIMIT (kas's concurrent-stream limit:
 * retry after a stream closed), KR_EIDEXHAUSTED (open a new client),
 * KR_EINVAL (agent_id <= 0, empty service, more than 1024 entries, an
 * empty name), KR_ETOOBIG (metadata over one frame), KR_ENOMEM. */
KR_API int kr_client_open(kr_client *c, int64_t agent_id, const char *service,
                          const kr_md *extra, size_t n, int fin,
                          void *stream_user_data, kr_stream **out);

/* Sends pending stream output now rather than at the end of the current
 * loop iteration (rarely needed: the client flushes once per iteration). */
KR_API void kr_client_flush(kr_client *c);

/* Starts a graceful close: no new streams; on_state fires with
 * KR_ECLOSED once open streams ended. Does nothing after the end. */
KR_API void kr_client_close(kr_client *c);

/* Every agent connected to the kas tier (all instances when kas uses
 * Redis) as a JSON document, the same as the HTTP gateway's
 * GET /api/v1/agents:
 *   {"agents":[{"id":7,"connections":2,"connected_since_ms":...,
 *     "instances":[{"instance":...,"connections":...,
 *                   "connected_since_ms":...}],
 *     "replicas":[{"name":...,"instance":...,"connections":...,
 *                  "connected_since_ms":...}]}],"truncated":false}
 * The callback fires once, from the loop: json[0..len) (NUL-terminated,
 * valid during the call) and err 0, or json NULL and err < 0 (KR_ECLOSED,
 * KR_EPROTO, KR_ERESET, KR_EAUTH...). It never fires if the client is
 * freed first. Returns 0, or KR_EINVAL (c or cb NULL), KR_ESTATE (not
 * ready), KR_ECLOSED, KR_EGOAWAY, KR_ESTREAMLIMIT, KR_EIDEXHAUSTED,
 * KR_ENOMEM (then no callback). */
typedef void (*kr_client_list_cb)(const char *json, size_t len, int err,
                                  void *user_data);
KR_API int kr_client_list_agents(kr_client *c, kr_client_list_cb cb,
                                 void *user_data);

/* Maps a RESET/GOAWAY wire code to an error: 0 for KR_CODE_NO_ERROR,
 * KR_ENOTCONN for UNAVAILABLE, KR_ENOSERVICE for NOT_FOUND, KR_EAUTH for
 * UNAUTHORIZED, KR_EUPSTREAM for UPSTREAM, KR_ETIMEDOUT for TIMEOUT,
 * KR_EPROTO for PROTOCOL, FLOW_CONTROL and FRAME_SIZE, KR_ERESET for the
 * rest (INTERNAL, REFUSED, CANCEL, STREAM_LIMIT, VERSION, SHUTDOWN and
 * unknown codes). Thread-safe. */
KR_API int kr_error_from_code(uint32_t code);

KR_END_DECLS

#endif
