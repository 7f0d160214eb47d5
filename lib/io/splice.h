/* Splices a mux stream with a socket (kr__sock), both directions, with
 * backpressure. Internal; used by the agent's tcp services and by kasctl.
 *
 *   stream -> socket: bytes go into the socket's output buffer and are
 *     consumed (credit returned to the sender) only as the socket drains,
 *     so a slow upstream closes the stream window instead of growing memory.
 *   socket -> stream: reading stops while the stream refuses more
 *     (kr_stream_write short) and resumes on on_writable.
 *   FIN maps to shutdown(SHUT_WR) after the output drained, EOF to
 *   kr_stream_close_write(); a socket error resets the stream
 *   (KR_CODE_UPSTREAM), a stream reset closes the socket.
 */
#ifndef KR_IO_SPLICE_H
#define KR_IO_SPLICE_H


#include <kasroute/mux.h>

#include "sock.h"

typedef struct kr__splice kr__splice;

/* Called once when both directions ended or either side failed; the
 * splice is freed right after it returns. err 0 for a clean end. */
typedef void (*kr__splice_done_cb)(kr__splice *sp, int err, const char *why,
                                   void *ud);

/* Takes ownership of sock (freed with the splice; the splice takes over its
 * callbacks) and attaches itself to s as handler and user data.
 * connected: sock is connected already; else the splice waits for its
 * connect and, if reply is set, answers the stream (kr_stream_reply with
 * no metadata) once connected, or resets it with KR_CODE_UPSTREAM if the
 * connect fails. Returns 0 or KR_ENOMEM (sock freed, stream untouched). */
int kr__splice_new(kr_stream *s, kr__sock *sock, int connected, int reply,
                   kr__splice_done_cb done, void *ud, kr__splice **out);

/* The stream's peer sent no data at all (its OPEN carried FIN): shut the
 * socket's sending side once connected. */
void kr__splice_peer_fin(kr__splice *sp);

#endif
