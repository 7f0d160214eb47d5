/* Opening a stream to a tunnel of an agent (DESIGN.md section 6): the
 * least-loaded usable tunnel here, else a wait until one registers or the
 * route deadline passes. Internal to the kas role; used by the relay
 * (client streams) and the HTTP gateway (HTTP requests).
 *
 * The caller owns the opened tunnel stream: it gets the stream's events
 * through the handler it passed, and must call kr__route_done() exactly
 * once when that stream ended (its on_close, or after resetting it), so
 * that the tunnel's load and the stream counters stay right.
 */
#ifndef KR_KAS_ROUTE_H
#define KR_KAS_ROUTE_H

#include "kas/kas_internal.h"

typedef struct kr__route kr__route;

/* The outcome, once:
 *   s != NULL: the tunnel stream (on connection ac), opened with the
 *     request's metadata, with the caller's handler and user data
 *     attached; code is KR_CODE_NO_ERROR;
 *   s == NULL: no tunnel: code KR_CODE_UNAVAILABLE (not connected before
 *     the deadline; reason names the agent), KR_CODE_REFUSED (kas is
 *     draining or too many requests wait) or KR_CODE_INTERNAL.
 * The route object is gone when the callback runs. It may fire from
 * inside kr__route_start(). */
typedef void (*kr__route_cb)(kr_stream *s, kas_conn *ac, uint32_t code,
                             const char *reason, void *ud);

/* Routes a stream with metadata md[0..n) (copied; ":agent" is not sent to
 * the agent and should not be in md) to agent. fin: the OPEN carries FIN.
 * hop: the stream came from another kas: only local tunnels are tried,
 * waiting at most the hop wait (it is never forwarded again). Otherwise,
 * with a cluster, other instances holding the agent are tried in turn
 * (over peer links) when no local tunnel is usable, and a wake-up from
 * any instance ends the wait at once.
 * *out is set before any callback and identifies the pending route for
 * kr__route_cancel(); the callback's firing ends it (clear your copy
 * there). Returns 0 (the callback has fired or will), or KR_ENOMEM (no
 * callback). */
int kr__route_start(kr_kas *k, int64_t agent, const kr_md *md, size_t n,
                    int fin, int hop, const kr__stream_handler *h, void *ud,
                    kr__route_cb cb, kr__route **out);

/* kr__route_start() with an absolute deadline (kr__now_us() clock), for a
 * request routed again that must not wait longer than it was promised. */
int kr__route_start_until(kr_kas *k, int64_t agent, const kr_md *md, size_t n,
                          int fin, int hop, kr_time_us deadline,
                          const kr__stream_handler *h, void *ud,
                          kr__route_cb cb, kr__route **out);

/* The cluster's wake-up: agent's first tunnel registered at the instance
 * reachable at url. Waiting routes for agent try it at once. */
void kr__route_wake(kr_kas *k, int64_t agent, const char *url);

/* The peer at url (NULL: every peer) answered a routed stream for agent
 * with "not connected here", or failed: forget it as a candidate. */
void kr__route_forget(kr_kas *k, int64_t agent, const char *url);

/* Wake-ups may have been missed (Redis came back): waiting routes look
 * the agent up again. */
void kr__route_resync(kr_kas *k);

/* Abandons a pending route: no callback. NULL is a no-op. */
void kr__route_cancel(kr__route *r);

/* The caller's tunnel stream on ac ended (or the caller reset it). */
void kr__route_done(kr_kas *k, kas_conn *ac);

/* Drain: every pending route ends now with KR_CODE_SHUTDOWN. */
void kr__route_drain(kr_kas *k);

/* Frees every pending route without callbacks (kr_kas_free()). */
void kr__route_free_all(kr_kas *k);

#endif
