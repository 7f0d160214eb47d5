/* libkasroute — the kas server role (what kasd runs).
 *
 * A kr_kas listens for agent tunnels and for API clients on a libevent
 * loop the host owns. Agents authenticate with a token (HELLO ":token", or
 * "Authorization: Bearer" on a WebSocket upgrade),
 * resolved to an agent id by the token table; API clients authenticate
 * with an HS256 JWT (audience "gitlab-kas") in their HELLO ":token". A
 * client stream names ":agent" (decimal id) and ":service"; kas opens a
 * stream to that agent's least-loaded tunnel and splices the two with
 * end-to-end backpressure, or waits for a tunnel until the route timeout
 * and then resets the stream with KR_CODE_UNAVAILABLE.
 *
 * Threading: every call on the loop thread of the event_base given to
 * kr_kas_new(). Nothing is thread-safe.
 */
#ifndef KASROUTE_KAS_H
#define KASROUTE_KAS_H

#include <kasroute/common.h>
#include <kasroute/mux.h>

KR_BEGIN_DECLS

struct event_base;
/* A running kas server: listeners, connections, routes. Made by
 * kr_kas_new(), ended by kr_kas_free(). */
typedef struct kr_kas kr_kas;
/* Everything kr_kas_new() needs, set piece by piece; copied by
 * kr_kas_new(), so it may be freed (or reused) right after. */
typedef struct kr_kas_options kr_kas_options;

/* Options with the defaults stated below. Returns 0 or KR_ENOMEM. */
KR_API int kr_kas_options_new(kr_kas_options **out);
/* Frees the options; the secrets and the Redis password in them are
 * wiped first. NULL is a no-op. */
KR_API void kr_kas_options_free(kr_kas_options *o);

/* Where agents connect: tcp://host:port, tls://host:port,
 * ws://host:port/path or wss://host:port/path (any path is served; port 0
 * picks a free port; see kr_kas_agent_port()). Repeatable, at most 16 in all.
 * KR_EADDR for a malformed URL or unsupported scheme, KR_ETOOBIG. */
KR_API int kr_kas_options_add_agent_listen(kr_kas_options *o, const char *url);
/* Where API clients connect; same URL forms. */
KR_API int kr_kas_options_add_api_listen(kr_kas_options *o, const char *url);
/* Where HTTP clients connect to the gateway: http://host:port or
 * https://host:port (docs: README "HTTP API"). Same limit as above. */
KR_API int kr_kas_options_add_http_listen(kr_kas_options *o, const char *url);
/* User-token file for "Authorization: Bearer pat:<agent>:<token>" on the
 * HTTP gateway (README "User tokens"). Optional. Copied. */
KR_API int kr_kas_options_set_user_tokens_file(kr_kas_options *o,
                                               const char *path);
/* HTTP gateway timeouts: receiving a request head (default 30 s) and a
 * keep-alive connection's idle time (default 60 s). KR_EINVAL for 0. */
KR_API int kr_kas_options_set_http_timeouts(kr_kas_options *o,
                                            kr_time_us request_head,
                                            kr_time_us idle);
/* HTTP gateway limits: bytes of a request head (default 32 KiB, at most
 * 60 KiB: a request's metadata must fit one frame) and header fields
 * (default 128, at most 256). KR_EINVAL out of range. */
KR_API int kr_kas_options_set_http_limits(kr_kas_options *o, size_t max_head,
                                          size_t max_fields);
/* Several kas instances (docs/PRESENCE.md). With Redis configured, each
 * instance records which agents it holds, learns at once when an agent
 * connects anywhere, and routes a stream for an agent it does not hold to
 * an instance that does, over a peer link. Without Redis, kas runs alone
 * with in-memory presence.
 *
 * Redis: redis://[:password@]host:port[/db] (KR_EADDR otherwise). */
KR_API int kr_kas_options_set_redis(kr_kas_options *o, const char *url);
/* Redis through Sentinel: "host:port,host:port" and the master's name;
 * kas follows failovers by itself. KR_EINVAL for empty or long values. */
KR_API int kr_kas_options_set_redis_sentinel(kr_kas_options *o,
                                             const char *sentinels,
                                             const char *master);
/* Password for Redis (with Sentinel, the master's). Copied. */
KR_API int kr_kas_options_set_redis_password(kr_kas_options *o,
                                             const char *password);
/* Key prefix in Redis (default "kas:"). */
KR_API int kr_kas_options_set_redis_prefix(kr_kas_options *o,
                                           const char *prefix);
/* Where other kas instances connect (tcp:// or tls://); repeatable. */
KR_API int kr_kas_options_add_private_listen(kr_kas_options *o,
                                             const char *url);
/* The URL other instances use to reach this one (tcp:// or tls://),
 * published in Redis; also the default instance name. Required with
 * Redis. */
KR_API int kr_kas_options_set_private_url(kr_kas_options *o, const char *url);
/* Secret shared by the instances (>= 32 bytes) for the JWTs of peer
 * links (audience "kas-private"); separate from the API secret. Required
 * with Redis. */
KR_API int kr_kas_options_set_private_secret(kr_kas_options *o,
                                             const uint8_t *secret, size_t len);
/* CA bundle to verify tls:// peers (default: the system store). */
KR_API int kr_kas_options_set_private_ca_file(kr_kas_options *o,
                                              const char *path);
/* Certificate chain and key (PEM files) for tls://, wss:// and https:// listeners.
 * Copied. */
KR_API int kr_kas_options_set_tls(kr_kas_options *o, const char *cert_file,
                                  const char *key_file);
/* Agent token file (docs: README "Agent tokens"). Required unless an
 * agent verifier is set (see "custom verifiers"). Copied. */
KR_API int kr_kas_options_set_agent_tokens_file(kr_kas_options *o,
                                                const char *path);
/* Secret for API JWTs (HS256), at least 32 bytes. Copied. Required when
 * an API or HTTP listener is configured, unless an API verifier is set.
 * KR_EINVAL when shorter. */
KR_API int kr_kas_options_set_api_secret(kr_kas_options *o,
                                         const uint8_t *secret, size_t len);
/* How long a client stream waits for a tunnel of its agent. Default 20 s. */
KR_API int kr_kas_options_set_route_timeout(kr_kas_options *o,
                                            kr_time_us timeout);
/* Keepalive of every connection (see kr_mux_options_set_keepalive()).
 * Defaults 15 s / 45 s. */
KR_API int kr_kas_options_set_keepalive(kr_kas_options *o, kr_time_us interval,
                                        kr_time_us timeout);
/* Time allowed for TLS, HELLO and a custom verifier's verdict. Default
 * 10 s. */
KR_API int kr_kas_options_set_handshake_timeout(kr_kas_options *o,
                                                kr_time_us timeout);
/* Instance name for logs. Default "kas". Copied (max 255 bytes). */
KR_API int kr_kas_options_set_name(kr_kas_options *o, const char *name);

/* ----------------------------------------------------- custom verifiers
 * A host program that knows its agents and users itself (a platform
 * asking its own database or API) verifies credentials with callbacks
 * instead of, or in addition to, the token file and the API secret. The
 * built-in checks run first; a credential they do not accept (or every
 * credential, when no file or secret is configured) goes to the verifier.
 * A connection or request that presents no credential at all is refused
 * without asking it.
 *
 * A verification may take time (a network call): the verifier receives a
 * kr_kas_auth and completes it exactly once, now (inside the callback) or
 * later, on the loop thread, with kr_kas_auth_allow() or
 * kr_kas_auth_deny(); completing frees it. Until then the connection (or
 * HTTP request) waits: an agent is not registered, so nothing is routed
 * to it; an API client's streams are held unanswered (at most 1024 per
 * connection, more are refused; their data waits within the flow-control
 * windows), started once allowed and reset with KR_CODE_UNAUTHORIZED
 * when denied; a gateway request gets its answer after the verdict.
 * A denial is a refused credential like any other: GOAWAY UNAUTHORIZED
 * (an agent then retries with backoff) or HTTP 401, counted in
 * KR_KAS_STAT_AUTH_FAILURES, and on agent and API listeners it slows the
 * address down as failures do.
 *
 * A verification not completed within one handshake timeout counted from
 * the verifier call (agent and API listeners; none when that timeout is
 * 0: the TLS and HELLO exchange before it had its own), or within the
 * HTTP request timeout (gateway), fails the connection with GOAWAY
 * TIMEOUT, or the request with HTTP 504; that is not counted as a refusal. If the connection goes
 * away, the request is abandoned, kr_kas_drain() starts or kr_kas_free()
 * runs first, the kr_kas_auth stays valid, must still be completed, and
 * completing it only frees it (kr_kas_auth_cancelled() tells a verifier
 * it may stop early). At most 16384 verifications wait at once per kas;
 * beyond that, credentials are turned away without calling the verifier
 * (GOAWAY UNAUTHORIZED "retry later", or HTTP 503).
 *
 * Verdicts are not cached: every connection, and every gateway request
 * whose credential the built-in checks refuse, asks the verifier again.
 * The verifier may call any function of this header except kr_kas_free().
 */
typedef struct kr_kas_auth kr_kas_auth;

/* What is being verified. */
typedef enum kr_kas_auth_kind {
  KR_KAS_AUTH_AGENT = 1, /* an agent's token (HELLO or WebSocket Bearer) */
  KR_KAS_AUTH_API = 2    /* an API client's HELLO token, or the credential
                            after "Bearer " of a gateway request */
} kr_kas_auth_kind;

/* token[0..len): the credential presented (len > 0), valid during the
 * call only. Never log it. */
typedef void (*kr_kas_verify_cb)(kr_kas_auth *req, const uint8_t *token,
                                 size_t len, void *user_data);

/* Sets the verifier of agent tokens (cb NULL: none). With it, the agent
 * token file is optional. KR_EINVAL for a NULL o. */
KR_API int kr_kas_options_set_agent_verifier(kr_kas_options *o,
                                             kr_kas_verify_cb cb,
                                             void *user_data);
/* Sets the verifier of API credentials (API listeners and the HTTP
 * gateway; cb NULL: none). With it, the API secret is optional. */
KR_API int kr_kas_options_set_api_verifier(kr_kas_options *o,
                                           kr_kas_verify_cb cb,
                                           void *user_data);

/* Whether req is an agent's token or an API credential. */
KR_API kr_kas_auth_kind kr_kas_auth_get_kind(const kr_kas_auth *req);
/* The caller's address ("ip:port"), for the verifier's own logs. Valid
 * as long as req. */
KR_API const char *kr_kas_auth_peer(const kr_kas_auth *req);
/* 1 when nobody waits for the verdict any more (connection closed, timed
 * out, request abandoned, kas draining or freed), else 0. */
KR_API int kr_kas_auth_cancelled(const kr_kas_auth *req);

/* The verdict's contents, set before kr_kas_auth_allow():
 * agent verification: the agent id (required, > 0);
 * API verification: the agent of the Kubernetes proxy (/k8s-proxy/), as
 * the "agent_id" claim of an API JWT (optional). KR_EINVAL for id <= 0. */
KR_API int kr_kas_auth_set_agent_id(kr_kas_auth *req, int64_t id);
/* API verification: the agents the caller may reach (at most 64 ids
 * > 0; n 0: none), as the "agents" claim of an API JWT: a stream or
 * request for another agent is refused (KR_CODE_UNAUTHORIZED, HTTP 403).
 * Not called: any agent. KR_EINVAL (an id <= 0, ids NULL with n > 0, an
 * agent verification), KR_ETOOBIG (n > 64); the verdict is unchanged on
 * error. */
KR_API int kr_kas_auth_set_agents(kr_kas_auth *req, const int64_t *ids,
                                  size_t n);
/* API verification: the caller's Kubernetes user name and groups (at most
 * 32), 1..255 bytes of printable ASCII, not starting or ending with a
 * space (they become Impersonate-* values at the agent). The Kubernetes
 * proxy needs an agent id and a user. Copied. KR_EINVAL (a bad name, an
 * agent verification), KR_ETOOBIG (longer than 255 bytes, a 33rd group). */
KR_API int kr_kas_auth_set_user(kr_kas_auth *req, const char *user);
KR_API int kr_kas_auth_add_group(kr_kas_auth *req, const char *group);

/* Accepts the credential and frees req. Returns 0, or KR_EINVAL (an agent
 * verification without an agent id: then req stays pending). */
KR_API int kr_kas_auth_allow(kr_kas_auth *req);
/* Refuses the credential (reason: short text for the log and the
 * caller, NULL allowed; never put the credential in it; cut at 120 bytes,
 * characters outside printable ASCII replaced) and frees req. */
KR_API void kr_kas_auth_deny(kr_kas_auth *req, const char *reason);

/* Creates the server and binds every listener. o is copied. On failure
 * returns KR_EADDR (bind), KR_ETLS (certificate), KR_ECONFIG (neither an
 * agent token file nor an agent verifier; an API or HTTP listener with
 * neither an API secret nor an API verifier; an unreadable token file) or
 * KR_ENOMEM, with a reason in err (may be NULL). */
KR_API int kr_kas_new(kr_kas **out, struct event_base *base,
                      const kr_kas_options *o, char *err, size_t errlen);

/* Closes every connection and listener at once (no callbacks to anyone:
 * not the drain callback, not a verifier) and frees. Pending custom
 * verifications stay valid until completed (see above). Allowed inside
 * kr_kas_drain()'s done; not inside a verifier callback. NULL is a
 * no-op. */
KR_API void kr_kas_free(kr_kas *k);

/* Bound port of the i-th agent, API, HTTP or private listener (each
 * kind counted in the order added), or KR_EINVAL when there is no such
 * listener. */
KR_API int kr_kas_agent_port(const kr_kas *k, size_t i);
KR_API int kr_kas_api_port(const kr_kas *k, size_t i);
KR_API int kr_kas_http_port(const kr_kas *k, size_t i);
KR_API int kr_kas_private_port(const kr_kas *k, size_t i);

/* Re-reads the agent token file and the user-token file (what is
 * configured). Returns 0, or KR_ECONFIG / KR_ETOOBIG / KR_ENOMEM with the
 * reason in err (may be NULL); on error the old tables stay in force.
 * Connected agents are not re-checked; gateway connections check their
 * next request against the new user tokens. */
KR_API int kr_kas_reload_tokens(kr_kas *k, char *err, size_t errlen);

/* kr_kas_drain() is over: no connection remains. */
typedef void (*kr_kas_drained_cb)(kr_kas *k, void *user_data);

/* Graceful shutdown: stop accepting, send GOAWAY(SHUTDOWN) on every
 * connection, let open streams finish for up to grace, then close what is
 * left (with Redis, this instance's presence is removed too). done (may
 * be NULL) fires once, from the loop, never inside this call, when no
 * connection remains; kr_kas_free() may be called inside it. A second
 * call is ignored. */
KR_API void kr_kas_drain(kr_kas *k, kr_time_us grace, kr_kas_drained_cb done,
                         void *user_data);

/* Counters and gauges of a kas (kr_kas_stat_get()). */
typedef enum kr_kas_stat {
  KR_KAS_STAT_AGENT_CONNECTIONS = 0, /* authenticated tunnels now */
  KR_KAS_STAT_API_CONNECTIONS,       /* authenticated API clients now */
  KR_KAS_STAT_AUTH_FAILURES,         /* refused agent and API credentials */
  KR_KAS_STAT_STREAMS_ROUTED,        /* client streams spliced to a tunnel */
  KR_KAS_STAT_ROUTE_TIMEOUTS,        /* no tunnel before the deadline */
  KR_KAS_STAT_STREAMS_ACTIVE,        /* spliced streams now */
  KR_KAS_STAT_THROTTLED,             /* connections refused unread because
                                        their address kept failing auth */
  KR_KAS_STAT_HTTP_REQUESTS,         /* requests received by the gateway */
  KR_KAS_STAT_ROUTED_LOCAL,          /* streams routed to a tunnel here */
  KR_KAS_STAT_ROUTED_PEER,           /* streams routed through another kas */
  KR_KAS_STAT_ROUTE_RETRIES,         /* peer candidates that failed and were
                                        followed by the next one */
  KR_KAS_STAT_HOP_STREAMS,           /* streams other kas routed here */
  KR_KAS_STAT_COUNT                  /* number of ids, not a statistic */
} kr_kas_stat;

/* A counter or gauge; 0 for unknown ids. */
KR_API uint64_t kr_kas_stat_get(const kr_kas *k, kr_kas_stat id);

/* Number of distinct agents with at least one tunnel here. */
KR_API size_t kr_kas_agent_count(const kr_kas *k);

KR_END_DECLS

#endif
