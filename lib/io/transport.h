/* Byte transports on libevent: the seam between sockets and a kr_mux.
 * Internal to the library.
 *
 * A transport moves bytes for one connection. tcp:// is a bufferevent;
 * tls:// runs mbedTLS over a bufferevent; ws:// and wss:// carry whole
 * frames in WebSocket binary messages through libwebsockets. The owner
 * (kr__conn) sees the same five operations and four callbacks for all.
 *
 * Callbacks run on the event loop. on_close is always the last callback a
 * transport makes, and the transport touches nothing of itself after it:
 * the owner may free it from inside on_close.
 */
#ifndef KR_IO_TRANSPORT_H
#define KR_IO_TRANSPORT_H

#include <event2/event.h>
#include <stdint.h>

typedef struct kr__transport kr__transport;

typedef struct kr__transport_cbs {
  /* The handshake (TCP connect, TLS, WebSocket upgrade) completed. */
  void (*on_open)(kr__transport *t, void *ud);
  /* Bytes arrived (plaintext; for WebSocket one or more whole frames). */
  void (*on_read)(kr__transport *t, const uint8_t *p, size_t n, void *ud);
  /* Output drained below the low-water mark: write() accepts more. */
  void (*on_drain)(kr__transport *t, void *ud);
  /* The connection ended: err 0 after a clean close, else a KR_E* code;
   * why is a short human-readable cause (never secret). */
  void (*on_close)(kr__transport *t, int err, const char *why, void *ud);
} kr__transport_cbs;

typedef struct kr__transport_ops {
  /* Accepts up to n bytes for sending and returns how many it took; fewer
   * than n means on_drain fires when more fit. */
  size_t (*write)(kr__transport *t, const uint8_t *p, size_t n);
  /* Starts or stops reading from the socket (backpressure). */
  void (*set_reading)(kr__transport *t, int on);
  /* Sends what is buffered, then closes: unless no_linger is set it sends
   * FIN and reads (dropping the input) until the peer closes too, so that
   * the peer's last frames are not answered with a reset; bounded by
   * KR__TRANSPORT_CLOSE_TIMEOUT_S. on_close(0) follows. */
  void (*close)(kr__transport *t);
  /* Frees at once, closing the socket; no callback. */
  void (*free)(kr__transport *t);
} kr__transport_ops;

struct kr__transport {
  const kr__transport_ops *ops;
  struct event_base *base;
  kr__transport_cbs cb;
  void *ud;
  char peer[96]; /* "ip:port" of the other end, for logs */
  int no_linger; /* close() after a failure: do not wait for the peer */
};

/* Output above which write() accepts nothing, and the mark below which
 * on_drain fires. Sized so a socket stays busy on a fast link while the
 * memory held per connection stays small. */
#define KR__TRANSPORT_HIGH_WATER ((size_t)1 << 20)
#define KR__TRANSPORT_LOW_WATER ((size_t)256 << 10)

/* Seconds close() waits for buffered output before giving up. */
#define KR__TRANSPORT_CLOSE_TIMEOUT_S 5

/* Writes a socket's peer address as "ip:port" / "[ip6]:port" into out.
 * 0, or -1 (out untouched) when it has none. */
int kr__peer_name(int fd, char *out, size_t size);

/* Fills t->peer from a socket's peer address ("?" if unknown). */
void kr__transport_set_peer(kr__transport *t, int fd);

#endif
