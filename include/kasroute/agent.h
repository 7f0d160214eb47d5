/* libkasroute — the agent role (what agentd runs).
 *
 * A kr_agent keeps N tunnel connections dialed out to kas (tcp://, tls://,
 * ws:// or wss://), authenticates with its token (in HELLO, and on
 * WebSocket also as "Authorization: Bearer"), and serves the streams kas opens
 * by ":service" name. Built-in services: tcp://host:port (bytes piped to
 * the target). Connections are re-dialled with full-jitter exponential
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
#include <kasroute/mux.h>

KR_BEGIN_DECLS

struct event_base;
typedef struct kr_agent kr_agent;
typedef struct kr_agent_options kr_agent_options;

KR_API int kr_agent_options_new(kr_agent_options **out);
KR_API void kr_agent_options_free(kr_agent_options *o);

/* kas agent listener: tcp://host:port, tls://host:port,
 * ws://host:port/path or wss://host:port/path. Required. KR_EADDR for other
 * forms. */
KR_API int kr_agent_options_set_kas_url(kr_agent_options *o, const char *url);
/* The agent token (copied; 1..4096 bytes). Required. */
KR_API int kr_agent_options_set_token(kr_agent_options *o, const char *token,
                                      size_t len);
/* Tunnel connections to keep (1..64, default 2). */
KR_API int kr_agent_options_set_connections(kr_agent_options *o, unsigned n);
/* Replica name sent in HELLO (default: the host name). Max 127 bytes. */
KR_API int kr_agent_options_set_name(kr_agent_options *o, const char *name);
/* Adds a service: name (1..127 bytes of [A-Za-z0-9._-]) served by url
 * (tcp://host:port). KR_EINVAL bad name, KR_EADDR bad URL, KR_ETOOBIG
 * more than 256 services, KR_ESTATE duplicate name. */
KR_API int kr_agent_options_add_service(kr_agent_options *o, const char *name,
                                        const char *url);
/* CA bundle for tls:// and wss:// (default: the system store). */
KR_API int kr_agent_options_set_tls_ca_file(kr_agent_options *o,
                                            const char *path);
/* Certificate verification for tls:// and wss:// (default 1). Turning it off is for
 * tests only. */
KR_API int kr_agent_options_set_tls_verify(kr_agent_options *o, int verify);
/* Keepalive (see kr_mux_options_set_keepalive()). Defaults 15 s / 45 s. */
KR_API int kr_agent_options_set_keepalive(kr_agent_options *o,
                                          kr_time_us interval,
                                          kr_time_us timeout);
/* Reconnect backoff: first ceiling and maximum. Defaults 1 s and 30 s. */
KR_API int kr_agent_options_set_backoff(kr_agent_options *o, kr_time_us base,
                                        kr_time_us cap);

/* Creates the agent and starts dialling. o is copied. KR_ECONFIG (missing
 * URL or token), KR_ETLS (CA file), KR_ENOMEM, with a reason in err. */
KR_API int kr_agent_new(kr_agent **out, struct event_base *base,
                        const kr_agent_options *o, char *err, size_t errlen);

/* Closes everything at once without callbacks and frees. NULL: no-op. */
KR_API void kr_agent_free(kr_agent *a);

/* Tunnel connections that completed their handshake and are serving. */
KR_API unsigned kr_agent_connected(const kr_agent *a);

typedef void (*kr_agent_drained_cb)(kr_agent *a, void *user_data);

/* Graceful stop: no reconnects; GOAWAY on every connection; open streams
 * finish for up to grace; then the rest is closed and done fires once. */
KR_API void kr_agent_drain(kr_agent *a, kr_time_us grace,
                           kr_agent_drained_cb done, void *user_data);

KR_END_DECLS

#endif
