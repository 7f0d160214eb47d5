/* Links from this kas to other kas instances (peers), for routing a
 * stream to an agent whose tunnel another instance holds. Internal to the
 * kas role.
 *
 * One multiplexed connection per peer URL, dialled on first use, shared by
 * every stream routed there, authenticated with a short-lived JWT signed
 * with the private secret (audience "kas-private") in its HELLO, and
 * closed after a minute without streams. Streams opened before the
 * connection is ready wait for it (bounded); if it fails they fail with
 * it, and the caller (the router) tries its next candidate.
 */
#ifndef KR_KAS_PEER_H
#define KR_KAS_PEER_H

#include "kas/kas_internal.h"

/* Audience of the JWTs kas instances present to each other. */
#define KR__PEER_AUDIENCE "kas-private"

typedef struct kr__peer_open kr__peer_open;

/* Once: s != NULL, the stream opened on the link pc with the caller's
 * handler and user data attached; or s == NULL with err (KR_EIO: the link
 * failed; KR_ETIMEDOUT; KR_ENOMEM...) and a reason. Never from inside
 * kr__peer_open_start(). */
typedef void (*kr__peer_open_cb)(kr_stream *s, kas_conn *pc, int err,
                                 const char *why, void *ud);

/* Opens a stream with md[0..n) (copied) to the kas at url (tcp:// or
 * tls://); the stream gets handler h and user data stream_ud; cb gets
 * cb_ud. 0 and *out (for kr__peer_open_cancel()), or KR_EADDR (bad URL),
 * KR_EAGAIN (too many opens waiting for that link), KR_ENOMEM. */
int kr__peer_open_start(kr_kas *k, const char *url, const kr_md *md, size_t n,
                        int fin, const kr__stream_handler *h, void *stream_ud,
                        kr__peer_open_cb cb, void *cb_ud,
                        kr__peer_open **out);

/* Abandons a pending open: no callback. NULL is a no-op. */
void kr__peer_open_cancel(kr__peer_open *o);

/* Starts a graceful close of every link (kas drain). */
void kr__peers_goaway(kr_kas *k);

/* Frees every link and pending open without callbacks (kr_kas_free()). */
void kr__peers_free_all(kr_kas *k);

/* Links open now (connected or connecting). */
size_t kr__peers_count(const kr_kas *k);

#endif
