/* A tunnel connection: one kr_mux driven over one transport on a libevent
 * loop. Internal.
 *
 * The conn pumps mux output into the transport (batched once per loop
 * iteration through a deferred event), feeds received bytes to the mux,
 * stops reading while the mux does not want input, drives the mux timers,
 * and closes the transport once the mux is done.
 *
 * Stream callbacks are dispatched per stream through the handler set with
 * kr__stream_set_handler() (lib/core/mux_internal.h); each callback gets
 * the stream's user data. A stream without a handler gets no callbacks
 * (its data is consumed and dropped).
 */
#ifndef KR_IO_CONN_H
#define KR_IO_CONN_H

#include <event2/event.h>

#include <kasroute/mux.h>

#include "transport.h"

typedef struct kr__conn kr__conn;

typedef struct kr__stream_handler {
  void (*on_reply)(kr_stream *s, const kr_md *md, size_t n, int fin, void *ud);
  void (*on_data)(kr_stream *s, const uint8_t *p, size_t n, void *ud);
  void (*on_fin)(kr_stream *s, void *ud);
  void (*on_writable)(kr_stream *s, void *ud);
  void (*on_close)(kr_stream *s, uint32_t code, const uint8_t *reason,
                   size_t reason_len, void *ud);
} kr__stream_handler;

typedef struct kr__conn_cbs {
  /* The transport is open and the peer's HELLO was accepted. */
  void (*on_ready)(kr__conn *c, const kr_md *hello, size_t n, void *ud);
  /* The peer opened a stream: attach a handler (kr__stream_set_handler)
   * and user data, then reply or reset. */
  void (*on_stream)(kr__conn *c, kr_stream *s, const kr_md *md, size_t n,
                    int fin, void *ud);
  /* A GOAWAY was received (the conn keeps serving its open streams). */
  void (*on_goaway)(kr__conn *c, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud);
  /* The connection is over; every stream got on_close before. err 0 for a
   * clean end. The owner frees the conn (here or later). */
  void (*on_closed)(kr__conn *c, int err, const char *why, void *ud);
  /* Optional: a PING this side sent was answered (rtt in microseconds). */
  void (*on_ping)(kr__conn *c, kr_time_us rtt, void *ud);
} kr__conn_cbs;

/* Monotonic clock in microseconds. */
kr_time_us kr__now_us(void);

/* Creates a conn over transport t (ownership passes, also on failure; the
 * conn takes over t's callbacks). transport_open: t is usable already (an
 * accepted TCP socket); otherwise the conn waits for its on_open.
 * opt: mux options (role and HELLO metadata included). Returns 0 or
 * KR_ENOMEM / KR_EINVAL. */
int kr__conn_new(struct event_base *base, kr__transport *t, int transport_open,
                 const kr_mux_options *opt, const kr__conn_cbs *cbs, void *ud,
                 kr__conn **out);

/* Callbacks to give a transport constructor before kr__conn_new() takes
 * it over (they do nothing). */
extern const kr__transport_cbs kr__transport_nop_cbs;

/* Frees at once: the mux (streams die without callbacks), the transport
 * and the events. Safe inside the conn's own callbacks: deferred then. */
void kr__conn_free(kr__conn *c);

kr_mux *kr__conn_mux(const kr__conn *c);
void *kr__conn_user_data(const kr__conn *c);
const char *kr__conn_peer(const kr__conn *c);

/* Schedules a pump: call after writing to streams of this conn. */
void kr__conn_kick(kr__conn *c);

/* Starts a graceful drain: GOAWAY, then close once every stream ended. */
void kr__conn_goaway(kr__conn *c, uint32_t code, const char *reason);

/* Closes at once: streams end with on_close(code, reason), then the
 * transport closes and on_closed follows. */
void kr__conn_abort(kr__conn *c, uint32_t code, const char *reason);

/* The transport, or NULL once it closed. */
kr__transport *kr__conn_transport(const kr__conn *c);

/* The event_base the conn runs on. */
struct event_base *kr__conn_base(const kr__conn *c);

/* The conn of a stream (the mux's user data). */
kr__conn *kr__conn_of(const kr_stream *s);

#endif
