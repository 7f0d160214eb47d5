/* A non-blocking stream socket on a libevent loop, for bulk transfer.
 * Internal.
 *
 * Why not a bufferevent: libevent 2.1's evbuffer_read() reads at most
 * 4 KiB per call whatever the socket holds, so a bufferevent needs a loop
 * pass (and two epoll_ctl calls) per 4 KiB. kr__sock reads up to
 * KR__SOCK_READ_CHUNK per recv() into a per-thread buffer handed straight
 * to on_read (no copy, nothing buffered on input), sends directly when
 * nothing is queued, and queues only what the kernel refused.
 *
 * Callbacks may call any kr__sock function on the same socket, including
 * kr__sock_free() (deferred until the callback returns).
 */
#ifndef KR_IO_SOCK_H
#define KR_IO_SOCK_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#define KR__SOCK_READ_CHUNK ((size_t)256 << 10)

typedef struct kr__sock kr__sock;

typedef struct kr__sock_cbs {
  /* An outgoing connect completed (kr__sock_connect only). */
  void (*on_connect)(kr__sock *s, void *ud);
  /* Bytes arrived; p is valid only during the call. */
  void (*on_read)(kr__sock *s, const uint8_t *p, size_t n, void *ud);
  /* Queued output fell to the low-water mark after a write was short or
   * kr__sock_want_drain() asked. */
  void (*on_drain)(kr__sock *s, void *ud);
  /* The peer half-closed (EOF). Reading stops by itself. */
  void (*on_eof)(kr__sock *s, void *ud);
  /* Connect failure, socket error or deadline: err is KR_EIO or
   * KR_ETIMEDOUT, why a short text. No callback follows but on_read of
   * nothing; the owner frees the socket. */
  void (*on_error)(kr__sock *s, int err, const char *why, void *ud);
} kr__sock_cbs;

/* Wraps a connected socket (takes ownership of fd, also on failure;
 * makes it non-blocking, sets TCP_NODELAY). Reading starts at once.
 * Returns 0 or KR_ENOMEM. */
int kr__sock_new(struct event_base *base, int fd, const kr__sock_cbs *cbs,
                 void *ud, kr__sock **out);

/* Starts a non-blocking connect to host:port (resolved with getaddrinfo,
 * first address that accepts the connect() call). on_connect or on_error
 * follows. Returns 0, KR_EADDR (cannot resolve or create) or KR_ENOMEM. */
int kr__sock_connect(struct event_base *base, const char *host, int port,
                     const kr__sock_cbs *cbs, void *ud, kr__sock **out);

/* Closes the socket (queued output is dropped). NULL is a no-op. */
void kr__sock_free(kr__sock *s);

/* Replaces callbacks and user data (e.g. when a new owner takes over). */
void kr__sock_set_cbs(kr__sock *s, const kr__sock_cbs *cbs, void *ud);

/* Starts or stops reading. */
void kr__sock_set_reading(kr__sock *s, int on);

/* Sends or queues up to n bytes so that at most limit bytes stay queued;
 * returns how many it took (fewer than n: on_drain follows). Data written
 * after kr__sock_shutdown_write() is refused (0). */
size_t kr__sock_write(kr__sock *s, const void *p, size_t n, size_t limit);

/* Bytes queued and not yet accepted by the kernel. */
size_t kr__sock_pending(const kr__sock *s);

/* on_drain fires once a send shrinks the queue to low_water or below (from
 * the loop at once when the queue is empty). */
void kr__sock_want_drain(kr__sock *s, size_t low_water);

/* Half-closes (SHUT_WR) once the queued output is sent. */
void kr__sock_shutdown_write(kr__sock *s);

/* Starts a graceful close: the queued output is sent, then either on_drain
 * (linger 0) or, with linger, FIN and reading on until the peer's EOF
 * (on_eof), so that the peer's last bytes are not answered with a reset.
 * The owner drops what it reads meanwhile. Bounded by deadline_ms
 * (on_error KR_ETIMEDOUT "close timed out"). */
void kr__sock_close_gracefully(kr__sock *s, int linger, int deadline_ms);

/* on_error(KR_ETIMEDOUT, why) unless kr__sock_clear_deadline() first. */
void kr__sock_set_deadline(kr__sock *s, int ms, const char *why);
void kr__sock_clear_deadline(kr__sock *s);

/* "ip:port" of the peer (or the connect target), for logs. */
const char *kr__sock_peer(const kr__sock *s);

#endif
