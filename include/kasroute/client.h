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
 * kr_client_new().
 */
#ifndef KASROUTE_CLIENT_H
#define KASROUTE_CLIENT_H

#include <kasroute/common.h>
#include <kasroute/mux.h>

KR_BEGIN_DECLS

struct event_base;
typedef struct kr_client kr_client;
typedef struct kr_client_options kr_client_options;

KR_API int kr_client_options_new(kr_client_options **out);
KR_API void kr_client_options_free(kr_client_options *o);
/* kas API listener: tcp://, tls://, ws://HOST:PORT/PATH or wss://...
 * Required. KR_EADDR otherwise. */
KR_API int kr_client_options_set_url(kr_client_options *o, const char *url);
/* The JWT presented to kas (copied, up to 8 KiB). Required. */
KR_API int kr_client_options_set_token(kr_client_options *o, const char *jwt,
                                       size_t len);
/* CA bundle for tls:// (default: the system store) and verification
 * (default on; off only for tests). */
KR_API int kr_client_options_set_tls_ca_file(kr_client_options *o,
                                             const char *path);
KR_API int kr_client_options_set_tls_verify(kr_client_options *o, int verify);
/* Keepalive; defaults 15 s / 45 s. */
KR_API int kr_client_options_set_keepalive(kr_client_options *o,
                                           kr_time_us interval,
                                           kr_time_us timeout);

/* The connection is ready for streams (err 0) or failed / ended (err < 0
 * with a reason; after that every stream has ended and the client only
 * needs kr_client_free()). Fires once with 0, then at most once with an
 * error. */
typedef void (*kr_client_state_cb)(kr_client *c, int err, const char *reason,
                                   void *user_data);

/* Creates the client and starts connecting. o and stream_cbs are copied.
 * Returns 0, KR_ECONFIG (URL or token missing, reason in err), KR_ETLS,
 * KR_ENOMEM. */
KR_API int kr_client_new(kr_client **out, struct event_base *base,
                         const kr_client_options *o,
                         const kr_mux_callbacks *stream_cbs,
                         kr_client_state_cb on_state, void *user_data,
                         char *err, size_t errlen);

/* Closes the connection at once (streams get no callbacks) and frees. */
KR_API void kr_client_free(kr_client *c);

/* Opens a stream to (agent_id, service) with optional extra metadata
 * (copied). fin: no data will be sent. Returns 0 and *out, or KR_ESTATE
 * (not ready), KR_EGOAWAY, KR_ECLOSED, KR_ESTREAMLIMIT, KR_EINVAL,
 * KR_ETOOBIG, KR_ENOMEM. */
KR_API int kr_client_open(kr_client *c, int64_t agent_id, const char *service,
                          const kr_md *extra, size_t n, int fin,
                          void *stream_user_data, kr_stream **out);

/* Sends pending stream output now rather than at the end of the current
 * loop iteration (rarely needed: the client flushes once per iteration). */
KR_API void kr_client_flush(kr_client *c);

/* Starts a graceful close: no new streams; on_state fires with
 * KR_ECLOSED once open streams ended. */
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
 * KR_EPROTO, KR_ERESET...). Returns 0, or KR_ESTATE (not ready),
 * KR_ECLOSED, KR_EGOAWAY, KR_ESTREAMLIMIT, KR_ENOMEM (no callback). */
typedef void (*kr_client_list_cb)(const char *json, size_t len, int err,
                                  void *user_data);
KR_API int kr_client_list_agents(kr_client *c, kr_client_list_cb cb,
                                 void *user_data);

/* Maps a RESET/GOAWAY wire code to an error: 0 for KR_CODE_NO_ERROR,
 * KR_ENOTCONN, KR_ENOSERVICE, KR_EAUTH, KR_EUPSTREAM, KR_ETIMEDOUT,
 * KR_EPROTO, KR_ERESET for the rest. */
KR_API int kr_error_from_code(uint32_t code);

KR_END_DECLS

#endif
