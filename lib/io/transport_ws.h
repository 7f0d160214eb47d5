/* WebSocket transports: ws:// and wss:// through libwebsockets on a
 * libevent loop. Internal.
 *
 * Framing. Every WebSocket binary message carries one or more whole mux
 * frames; a frame never spans two messages. The conn hands write() any
 * prefix of the mux output, so the transport parses the 9-byte frame
 * headers of the outgoing byte stream (length: first 3 bytes, big-endian)
 * and sends only runs of whole frames (up to KR__WS_MSG_MAX bytes per
 * message; a larger frame travels alone). A partial trailing frame waits
 * in the queue until write() completes it. Received messages are passed on
 * as they arrive (the mux parses frames itself); a message that ends
 * inside a frame, or a text message, closes the connection with KR_EPROTO.
 *
 * Sub-protocol "kasroute.v1"; the client sends the URL path (default "/"),
 * the server accepts any path. A dialer may present a bearer token in the
 * upgrade request (Authorization: Bearer ...); the server keeps what it
 * received for kr__ws_bearer() and never logs it.
 *
 * Event loop. Debian's libwebsockets 4.1 has neither libevent support nor
 * external-poll callbacks, so the sockets are watched here: a persistent
 * EV_READ per connection (removed while reading is paused, together with
 * lws_rx_flow_control()), a one-shot EV_WRITE armed whenever this module
 * asked for a writeable callback, libwebsockets holds unsent output, a
 * connect is in progress or a close frame has to go out. Readiness is
 * handed to lws_service_fd(); work libwebsockets has buffered (TLS
 * records, paused input) is then drained with lws_service_tsi(ctx, -1, 0)
 * while lws_service_adjust_timeout() reports some. A one-second timer runs
 * lws_service(ctx, -1) for libwebsockets' own timeouts (close handshake,
 * shutdown) and anything the hints above missed.
 *
 * Contexts. One kr__ws_ctx (one lws_context, one vhost) per owner: each
 * ws:// or wss:// listener of a kas, each agent, each client. Server
 * contexts accept sockets that the listener accepted with libevent
 * (lws_adopt_descriptor_vhost_via_info); client contexts dial with
 * lws_client_connect_via_info() to the first address the host name
 * resolves to (blocking resolution, like the TCP transport). Freeing a
 * context closes every connection still on it at once, without callbacks;
 * transports left behind become inert (write() takes nothing, close() does
 * nothing) until their owner frees them. Everything is safe inside
 * callbacks: work that would re-enter libwebsockets (killing a socket,
 * destroying the context) waits until the outermost call into
 * libwebsockets has returned.
 *
 * libwebsockets logs errors and warnings through kr__log at debug level
 * (the setting is process-wide: lws_set_log_level()).
 *
 * Threading: one event_base, one thread, like the rest of lib/io.
 */
#ifndef KR_IO_TRANSPORT_WS_H
#define KR_IO_TRANSPORT_WS_H

#include <event2/util.h>
#include <stddef.h>
#include <stdint.h>

#include "transport.h"
#include "url.h"

#define KR__WS_PROTOCOL "kasroute.v1"

/* Largest message built from several frames (one larger frame is sent
 * alone). */
#define KR__WS_MSG_MAX ((size_t)256 << 10)

typedef struct kr__ws_ctx kr__ws_ctx;

/* Server context for one listener: cert_file and key_file (PEM, read by
 * OpenSSL inside libwebsockets) make it wss://; both NULL: ws://.
 * Returns 0, KR_ETLS (certificate or key not usable) or KR_ENOMEM, with a
 * reason in err. */
int kr__ws_ctx_new_server(struct event_base *base, const char *cert_file,
                          const char *key_file, kr__ws_ctx **out, char *err,
                          size_t errlen);

/* Client context: tls 1 allows wss:// with ca_file (NULL: the system
 * store) and verify (0 accepts any certificate and host name: tests and
 * explicit opt-out only). Returns 0, KR_ETLS (CA file unreadable) or
 * KR_ENOMEM, with a reason in err. */
int kr__ws_ctx_new_client(struct event_base *base, int tls, const char *ca_file,
                          int verify, kr__ws_ctx **out, char *err,
                          size_t errlen);

/* Closes every connection of the context without callbacks and frees it
 * (deferred while a libwebsockets call is on the stack). NULL: no-op. */
void kr__ws_ctx_free(kr__ws_ctx *x);

/* Wraps an accepted socket (ownership passes, also on failure). The
 * upgrade must complete within handshake_ms (0: 10 s), else on_close
 * (KR_ETIMEDOUT). on_open fires once the upgrade is done. Returns 0,
 * KR_ENOMEM or KR_EIO. */
int kr__ws_accept(kr__ws_ctx *x, evutil_socket_t fd, int handshake_ms,
                  const kr__transport_cbs *cbs, void *ud, kr__transport **out);

/* Dials u (ws:// or wss://; wss needs a context made with tls 1). bearer
 * (may be NULL) is sent as "Authorization: Bearer <bearer>" when it is
 * 1..8192 printable ASCII characters. The TCP connect, TLS and upgrade
 * must complete within handshake_ms (0: 10 s). Failures after the call
 * arrive as on_close: KR_ETLS (certificate refused), KR_ETIMEDOUT,
 * KR_EIO. Returns 0, KR_EADDR (name does not resolve), KR_EINVAL (scheme
 * does not fit the context), KR_ENOMEM or KR_EIO. */
int kr__ws_connect(kr__ws_ctx *x, const kr__url *u, const char *bearer,
                   size_t bearer_len, int handshake_ms,
                   const kr__transport_cbs *cbs, void *ud, kr__transport **out);

/* 1 if t is a WebSocket transport. */
int kr__transport_is_ws(const kr__transport *t);

/* Server side: the bearer token the peer sent in its upgrade request
 * (after "Bearer ", without the scheme), valid until t is freed or
 * kr__ws_forget_bearer(); NULL when
 * none was sent or t is not a WebSocket transport. Secret: never log it. */
const char *kr__ws_bearer(const kr__transport *t, size_t *len);

/* Server side: wipes the bearer token once it was checked, so that the
 * secret does not stay in memory for the connection's life. No-op for
 * other transports. */
void kr__ws_forget_bearer(kr__transport *t);

/* ------------------------------------------------ framing (for tests) */

/* Outgoing queue: bytes accepted by write(), sent as messages of whole
 * frames. Data lives in buf[head, tail); [head, scan) is whole frames.
 * head never drops below pre, the headroom libwebsockets writes the
 * WebSocket header into. */
typedef struct kr__ws_txq {
  uint8_t *buf;
  size_t cap, pre, head, scan, tail;
} kr__ws_txq;

void kr__ws_txq_init(kr__ws_txq *q, size_t pre);
void kr__ws_txq_free(kr__ws_txq *q);
/* Bytes queued (sent ones excluded). */
size_t kr__ws_txq_buffered(const kr__ws_txq *q);
/* How many bytes the queue accepts now under limit: limit minus what is
 * queued, except that a partial trailing frame whose header is known may
 * always be completed (so a frame larger than limit cannot deadlock). */
size_t kr__ws_txq_room(const kr__ws_txq *q, size_t limit);
/* Appends; 0 or KR_ENOMEM (nothing appended). */
int kr__ws_txq_append(kr__ws_txq *q, const uint8_t *p, size_t n);
/* The next message: whole frames from the head, at most max bytes unless
 * the first frame alone is larger. Returns its length (0: no whole frame
 * queued) and its start in *p (with pre writable bytes before it). */
size_t kr__ws_txq_next(const kr__ws_txq *q, size_t max, uint8_t **p);
/* Drops n sent bytes from the head (n from kr__ws_txq_next()). */
void kr__ws_txq_consume(kr__ws_txq *q, size_t n);

/* Incoming frame-boundary tracker. */
typedef struct kr__ws_rx {
  uint8_t hdr[3]; /* length bytes of the current header */
  uint8_t have;   /* header bytes seen, 0..9; 0 = at a frame boundary */
  uint32_t left;  /* payload bytes still to come after a whole header */
} kr__ws_rx;

/* Advances over n received bytes. */
void kr__ws_rx_feed(kr__ws_rx *r, const uint8_t *p, size_t n);
/* 1 if the bytes fed so far end exactly at a frame boundary. */
int kr__ws_rx_at_boundary(const kr__ws_rx *r);

#endif
