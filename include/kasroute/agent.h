/* libkasroute — the agent role (what agentd runs).
 *
 * A kr_agent keeps N tunnel connections dialed out to kas (tcp://, tls://,
 * ws:// or wss://), authenticates with its token (in HELLO, and on
 * WebSocket also as "Authorization: Bearer"), and serves the streams kas opens
 * by ":service" name. Built-in services:
 *   - tcp://host:port: bytes piped to the target;
 *   - http://host:port[/base] and https://...: an HTTP/1.1 reverse proxy
 *     speaking the "HTTP over streams" mapping (docs/PROTOCOL.md): the
 *     OPEN carries ":method", ":path" and the request fields, the REPLY
 *     ":status" and the response fields; bodies stream both ways with
 *     backpressure; upstream connections are kept alive and reused; a
 *     101 reply switches the stream to raw bytes (WebSocket, SPDY). An
 *     upstream that cannot be reached or misbehaves resets the stream with
 *     KR_CODE_UPSTREAM and a reason naming it;
 *   - kubernetes: the HTTP proxy in front of a Kubernetes API server that
 *     authenticates with the agent's service-account token and acts for
 *     the caller named by kas (":user", ":group") through
 *     Impersonate-User / Impersonate-Group; streams without ":user" are
 *     refused (KR_CODE_UNAUTHORIZED) and callers' own Authorization and
 *     Impersonate-* fields are dropped.
 * Connections are re-dialled with full-jitter exponential
 * backoff (1 s doubling up to 30 s, reset after 60 s of stable
 * connection); when kas sends GOAWAY, a replacement connection is dialled
 * at once while the old one finishes its streams.
 *
 * Threading: every call on the loop thread of the event_base given to
 * kr_agent_new().
 */
#ifndef KASROUTE_AGENT_H
#define KASROUTE_AGENT_H

#include <kasroute/common.h>
#include <kasroute/handler.h>
#include <kasroute/http_handler.h>
#include <kasroute/mux.h>

KR_BEGIN_DECLS

struct event_base;
/* A running agent: its tunnel connections and services. Made by
 * kr_agent_new(), ended by kr_agent_free(). */
typedef struct kr_agent kr_agent;
/* Everything kr_agent_new() needs, set piece by piece; copied by
 * kr_agent_new(), so it may be freed (or reused) right after. */
typedef struct kr_agent_options kr_agent_options;

/* Options with the defaults stated below. Returns 0 or KR_ENOMEM. */
KR_API int kr_agent_options_new(kr_agent_options **out);
/* Frees the options (the token is wiped). NULL is a no-op. */
KR_API void kr_agent_options_free(kr_agent_options *o);

/* kas agent listener: tcp://host:port, tls://host:port,
 * ws://host:port/path or wss://host:port/path. Required. KR_EADDR for other
 * forms. */
KR_API int kr_agent_options_set_kas_url(kr_agent_options *o, const char *url);
/* Another kas URL (same forms), for a kas tier without one load-balancing
 * address: connection i first dials URL i modulo their number, and every
 * reconnect moves on to the next URL, so tunnels spread over the
 * instances and move away from one that died. At most 8 URLs in all.
 * KR_EADDR, KR_ETOOBIG. */
KR_API int kr_agent_options_add_kas_url(kr_agent_options *o, const char *url);
/* The agent token (copied; 1..4096 bytes). Required. KR_EINVAL for a
 * NULL, empty or longer token. */
KR_API int kr_agent_options_set_token(kr_agent_options *o, const char *token,
                                      size_t len);
/* Tunnel connections to keep (1..64, default 2). KR_EINVAL otherwise. */
KR_API int kr_agent_options_set_connections(kr_agent_options *o, unsigned n);
/* Replica name sent in HELLO (default: the host name); kas shows it in
 * its logs and listings. 1..127 bytes; KR_EINVAL otherwise. */
KR_API int kr_agent_options_set_name(kr_agent_options *o, const char *name);
/* Adds a service: name (1..127 bytes of [A-Za-z0-9._-]) served by url:
 * tcp://host:port, or http://host:port[/base] / https://host:port[/base]
 * (an HTTP service: a request for ":path" P goes to base + P; https
 * verifies the upstream certificate and host name against the system
 * store unless kr_agent_options_set_service_ca_file() says otherwise).
 * KR_EINVAL bad name, KR_EADDR bad URL, KR_ETOOBIG more than 256 services,
 * KR_ESTATE duplicate name, KR_ENOMEM. */
KR_API int kr_agent_options_add_service(kr_agent_options *o, const char *name,
                                        const char *url);
/* Adds a service implemented by the application: every stream opened to
 * name is served by the callbacks of h (<kasroute/handler.h>; h is
 * copied, on_open required) with service_data as the stream's first user
 * data; service_data belongs to the application and must stay valid
 * until kr_agent_free() returns. The built-in services above are handlers of the same kind,
 * registered and dispatched the same way. Errors as
 * kr_agent_options_add_service(), and KR_EINVAL for a NULL h or one
 * without on_open. */
KR_API int kr_agent_options_add_handler(kr_agent_options *o, const char *name,
                                        const kr_handler *h,
                                        void *service_data);
/* Adds an HTTP service implemented by the application
 * (<kasroute/http_handler.h>; h copied, on_request required). Errors as
 * kr_agent_options_add_handler(). */
KR_API int kr_agent_options_add_http_handler(kr_agent_options *o,
                                             const char *name,
                                             const kr_http_handler *h,
                                             void *service_data);
/* CA bundle (PEM file) trusted for the https upstream of service name
 * (copied; checked when the agent is created: KR_ETLS then).
 * KR_ENOENT no such service, KR_EINVAL a tcp service or a NULL, empty or
 * over-long (1023 bytes) path, KR_ENOMEM. */
KR_API int kr_agent_options_set_service_ca_file(kr_agent_options *o,
                                                const char *name,
                                                const char *path);
/* Certificate verification for the https upstream of service name
 * (default 1). Turning it off is for tests only. KR_ENOENT no such
 * service, KR_EINVAL a tcp service. */
KR_API int kr_agent_options_set_service_verify(kr_agent_options *o,
                                               const char *name, int verify);
/* Adds a Kubernetes API service named name (usually "kubernetes").
 * url_or_null: the API server (http:// or https://); NULL means the
 * in-cluster configuration, read when the agent is created:
 * https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT with the
 * service-account token and CA under
 * /var/run/secrets/kubernetes.io/serviceaccount (token, ca.crt).
 * token_file_or_null: the bearer token file (overrides the in-cluster one;
 * with an explicit URL, NULL sends no token); it is re-read when it
 * changes, so rotation works. ca_file_or_null: the CA bundle (overrides
 * the in-cluster one; with an explicit URL, NULL means the system store).
 * Errors as kr_agent_options_add_service(), and KR_EINVAL for an empty or
 * over-long (1023 bytes) path. kr_agent_new() fails with KR_ECONFIG when
 * the token cannot be read or no cluster is found. */
KR_API int kr_agent_options_add_kubernetes(kr_agent_options *o,
                                           const char *name,
                                           const char *url_or_null,
                                           const char *token_file_or_null,
                                           const char *ca_file_or_null);
/* CA bundle (PEM file) for tls:// and wss:// (default: the system
 * store). The path is copied (KR_EINVAL for NULL or over 1023 bytes); the
 * file is read by kr_agent_new() (KR_ETLS when it cannot be used). */
KR_API int kr_agent_options_set_tls_ca_file(kr_agent_options *o,
                                            const char *path);
/* Certificate verification for tls:// and wss:// (default 1). Turning it
 * off is for tests only. Returns 0. */
KR_API int kr_agent_options_set_tls_verify(kr_agent_options *o, int verify);
/* Keepalive (see kr_mux_options_set_keepalive()). Defaults 15 s / 45 s.
 * KR_EINVAL when timeout is not 0 and not above interval. */
KR_API int kr_agent_options_set_keepalive(kr_agent_options *o,
                                          kr_time_us interval,
                                          kr_time_us timeout);
/* Reconnect backoff: first ceiling and maximum. Defaults 1 s and 30 s.
 * KR_EINVAL for a zero base or a cap below it. */
KR_API int kr_agent_options_set_backoff(kr_agent_options *o, kr_time_us base,
                                        kr_time_us cap);

/* Creates the agent and its services and starts dialling. o is copied.
 * A kas that cannot be reached is not an error: dialling goes on with
 * backoff (kr_agent_connected() says when tunnels are up). Host names in
 * URLs are resolved with the system resolver, which blocks the loop
 * while it runs; numeric addresses never block.
 * KR_ECONFIG (missing URL or token; a kubernetes service without a
 * cluster or a readable token), KR_ETLS (a CA file), KR_EADDR,
 * KR_ENOMEM, with a reason in err (may be NULL). */
KR_API int kr_agent_new(kr_agent **out, struct event_base *base,
                        const kr_agent_options *o, char *err, size_t errlen);

/* Closes everything at once and frees. NULL: no-op. Streams in flight are
 * reset and every upstream connection closed; the only callbacks that
 * fire (during this call) are the on_close of streams that application
 * handlers are serving (KR_CODE_SHUTDOWN; HTTP handlers: on_close with
 * KR_ERESET), so that they can free their per-stream state. Nothing fires
 * afterwards. Not allowed inside a handler callback of the same agent;
 * allowed inside kr_agent_drain()'s done. */
KR_API void kr_agent_free(kr_agent *a);

/* Tunnel connections that completed their handshake and are serving. */
KR_API unsigned kr_agent_connected(const kr_agent *a);

/* kr_agent_drain() is over: every connection is closed. */
typedef void (*kr_agent_drained_cb)(kr_agent *a, void *user_data);

/* Graceful stop: no reconnects; GOAWAY on every connection (kas routes
 * new streams elsewhere); open streams finish for up to grace; then the
 * rest is closed (their handlers' on_close fires with KR_CODE_SHUTDOWN)
 * and done (may be NULL) fires once, from the loop, never inside this
 * call. kr_agent_free() may be called inside done. A second call is
 * ignored. */
KR_API void kr_agent_drain(kr_agent *a, kr_time_us grace,
                           kr_agent_drained_cb done, void *user_data);

KR_END_DECLS

#endif
