/* Tunnel connection: a kr_mux over a transport (see conn.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kasroute/error.h>

#include <kasroute/client.h>

#include "conn.h"
#include "core/mux_internal.h"

struct kr__conn {
  struct event_base *base;
  kr__transport *t;
  kr_mux *mux;
  kr__conn_cbs cb;
  void *ud;
  struct event *pump_ev;  /* deferred pump */
  struct event *timer_ev; /* mux deadlines */
  kr_time_us timer_at;
  int transport_open;
  int closing;  /* transport close requested */
  int closed;   /* on_closed delivered */
  int depth;    /* inside our own callbacks */
  int in_mux;   /* inside a mux callback (also of a call we did not make) */
  int free_pending;
  int zombie;   /* transport and timer gone; the rest waits for the loop */
  char peer[96]; /* kept past the transport, for logs */
  int fail_err;          /* why the mux failed, if it did */
  char fail_reason[300];
};

kr_time_us kr__now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (kr_time_us)ts.tv_sec * 1000000u + (kr_time_us)ts.tv_nsec / 1000u;
}

/* Releases everything at once: the mux (its streams die without
 * callbacks), the transport and the events. Only where no mux call is on
 * the stack: see conn_reap(). */
static void conn_destroy(kr__conn *c) {
  if (c->pump_ev && !c->zombie)
    event_free(c->pump_ev);
  if (c->timer_ev)
    event_free(c->timer_ev);
  if (c->t)
    c->t->ops->free(c->t);
  kr_mux_free(c->mux);
  free(c);
}

/* The last part of a zombie's end, from the loop (or event_base_free()):
 * by then the mux call that was on the stack has returned. */
static void zombie_finalize(struct event *ev, void *arg) {
  kr__conn *c = arg;
  c->pump_ev = NULL; /* freed by libevent after this returns */
  conn_destroy(c);
}

/* Ends a conn whose owner asked for the free, outside our own callback
 * sections. Inside a mux callback of a call the conn did not make (the
 * application's kr_stream_reset() firing on_close, say) the mux may call
 * back again before that call returns, with this conn as its user data:
 * the transport and the timer go now, the conn and the mux stay (silent:
 * free_pending gates every callback) until the loop runs the pump
 * event's finalizer. */
static void conn_reap(kr__conn *c) {
  if (c->in_mux == 0) {
    conn_destroy(c);
    return;
  }
  if (c->zombie)
    return;
  c->zombie = 1;
  if (c->t) {
    c->t->ops->free(c->t); /* not inside a transport callback: depth 0 */
    c->t = NULL;
  }
  event_free(c->timer_ev);
  c->timer_ev = NULL;
  event_free_finalize(0, c->pump_ev, zombie_finalize);
}

void kr__conn_free(kr__conn *c) {
  if (!c)
    return;
  c->free_pending = 1;
  if (c->depth > 0)
    return; /* conn_leave() ends it */
  conn_reap(c);
}

/* Leaves a callback section; 1 if c was freed (or, inside a mux callback,
 * is going: see conn_reap()); the caller must not touch it then. */
static int conn_leave(kr__conn *c) {
  if (--c->depth == 0 && c->free_pending) {
    conn_reap(c);
    return 1;
  }
  return 0;
}

kr_mux *kr__conn_mux(const kr__conn *c) { return c->mux; }
kr__transport *kr__conn_transport(const kr__conn *c) { return c->t; }
struct event_base *kr__conn_base(const kr__conn *c) { return c->base; }
void *kr__conn_user_data(const kr__conn *c) { return c->ud; }
const char *kr__conn_peer(const kr__conn *c) { return c->peer; }
kr__conn *kr__conn_of(const kr_stream *s) {
  return kr_mux_user_data(kr_stream_mux(s));
}

void kr__conn_kick(kr__conn *c) {
  if (c->free_pending)
    return; /* going: nothing more to send */
  if (!event_pending(c->pump_ev, EV_TIMEOUT, NULL))
    event_active(c->pump_ev, EV_TIMEOUT, 0);
}

static void schedule_timer(kr__conn *c) {
  kr_time_us at = kr_mux_next_deadline(c->mux);
  if (at == c->timer_at)
    return;
  c->timer_at = at;
  if (at == UINT64_MAX) {
    event_del(c->timer_ev);
    return;
  }
  kr_time_us now = kr__now_us();
  kr_time_us d = at > now ? at - now : 0;
  struct timeval tv = {(time_t)(d / 1000000u), (suseconds_t)(d % 1000000u)};
  event_add(c->timer_ev, &tv);
}

/* Moves mux output into the transport and updates reading, timers and the
 * close decision. */
static void t_close(kr__transport *t, int err, const char *why, void *ud);

/* Moves mux output into the transport and updates reading, timers and the
 * close decision. kr_mux_send() runs stream callbacks, which may free the
 * conn: the depth bracket defers that to the end. */
static void pump(kr__conn *c) {
  if (!c->t || c->closed || c->free_pending)
    return;
  c->depth++;
  if (c->transport_open && !c->closing) {
    const uint8_t *p;
    size_t n;
    while ((n = kr_mux_send(c->mux, &p)) > 0 && !c->free_pending) {
      size_t w = c->t->ops->write(c->t, p, n);
      kr_mux_sent(c->mux, w);
      if (w < n)
        break;
    }
    if (!c->free_pending) {
      c->t->ops->set_reading(c->t, kr_mux_want_read(c->mux));
      if (kr_mux_is_done(c->mux)) {
        c->closing = 1;
        c->t->no_linger = !kr_mux_want_read(c->mux); /* mux failed */
        c->t->ops->close(c->t);
      }
    }
  } else if (!c->transport_open && !c->closing && !kr_mux_want_read(c->mux)) {
    /* The handshake timer fired while still connecting: give up now. */
    t_close(c->t, KR_ETIMEDOUT, "connect or handshake timed out", c);
  }
  if (conn_leave(c))
    return;
  if (!c->closed)
    schedule_timer(c);
}

static void pump_cb(evutil_socket_t fd, short what, void *arg) { pump(arg); }

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  kr__conn *c = arg;
  c->timer_at = UINT64_MAX;
  c->depth++;
  kr_mux_tick(c->mux, kr__now_us());
  if (conn_leave(c))
    return;
  pump(c);
}

/* ------------------------------------------------- transport callbacks */

static void t_open(kr__transport *t, void *ud) {
  kr__conn *c = ud;
  c->transport_open = 1;
  memcpy(c->peer, t->peer, sizeof(c->peer));
  pump(c);
}

static void t_read(kr__transport *t, const uint8_t *p, size_t n, void *ud) {
  kr__conn *c = ud;
  if (c->closing || c->free_pending)
    return;
  c->depth++;
  kr_mux_recv(c->mux, p, n, kr__now_us());
  if (conn_leave(c))
    return;
  kr__conn_kick(c);
}

static void t_drain(kr__transport *t, void *ud) { pump(ud); }

static void t_close(kr__transport *t, int err, const char *why, void *ud) {
  kr__conn *c = ud;
  c->depth++;
  /* Streams still open learn the connection is gone. */
  kr_mux_abort(c->mux, err ? KR_CODE_INTERNAL : KR_CODE_NO_ERROR,
               err ? why : "connection closed");
  c->closed = 1;
  c->t->ops->free(c->t);
  c->t = NULL;
  event_del(c->timer_ev);
  event_del(c->pump_ev);
  if (!err && c->fail_err) {
    err = c->fail_err;
    why = c->fail_reason;
  }
  /* A stream callback above may have freed the conn: its owner is gone,
   * so it hears nothing more. */
  if (c->cb.on_closed && !c->free_pending)
    c->cb.on_closed(c, err, why, c->ud);
  conn_leave(c);
}

static const kr__transport_cbs transport_cbs = {t_open, t_read, t_drain,
                                                t_close};

/* --------------------------------------------------------- mux callbacks */

/* Every mux callback counts itself in in_mux, so that a free the owner asks
 * for meanwhile keeps the conn (the mux's user data) while the mux is on
 * the stack (conn_reap()). free_pending silences the rest of the
 * dispatch: no owner or stream callback runs after a free. */
static void mux_enter(kr__conn *c) { c->in_mux++; }
static void mux_leave(kr__conn *c) { c->in_mux--; }

/* The handler of s, or NULL once c is being freed. */
static const kr__stream_handler *handler_of(kr__conn *c, kr_stream *s) {
  if (c->free_pending)
    return NULL;
  return kr__stream_get_handler(s);
}

static void m_hello(kr_mux *m, const kr_md *md, size_t n, void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  if (c->cb.on_ready && !c->free_pending)
    c->cb.on_ready(c, md, n, c->ud);
  mux_leave(c);
}

static void m_open(kr_mux *m, kr_stream *s, const kr_md *md, size_t n, int fin,
                   void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  if (c->free_pending)
    kr_stream_reset(s, KR_CODE_REFUSED, "connection closing");
  else if (c->cb.on_stream)
    c->cb.on_stream(c, s, md, n, fin, c->ud);
  else
    kr_stream_reset(s, KR_CODE_REFUSED, "this end accepts no streams");
  mux_leave(c);
}

static void m_reply(kr_stream *s, const kr_md *md, size_t n, int fin, void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  const kr__stream_handler *h = handler_of(c, s);
  if (h && h->on_reply)
    h->on_reply(s, md, n, fin, kr_stream_user_data(s));
  mux_leave(c);
}

static void m_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  const kr__stream_handler *h = handler_of(c, s);
  if (h && h->on_data)
    h->on_data(s, p, n, kr_stream_user_data(s));
  else
    kr_stream_consume(s, n);
  mux_leave(c);
}

static void m_fin(kr_stream *s, void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  const kr__stream_handler *h = handler_of(c, s);
  if (h && h->on_fin)
    h->on_fin(s, kr_stream_user_data(s));
  mux_leave(c);
}

static void m_writable(kr_stream *s, void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  const kr__stream_handler *h = handler_of(c, s);
  if (h && h->on_writable)
    h->on_writable(s, kr_stream_user_data(s));
  mux_leave(c);
}

static void m_close(kr_stream *s, uint32_t code, const uint8_t *r, size_t rl,
                    void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  const kr__stream_handler *h = handler_of(c, s);
  if (h && h->on_close)
    h->on_close(s, code, r, rl, kr_stream_user_data(s));
  mux_leave(c);
}

static void m_goaway(kr_mux *m, int remote, uint32_t code, const uint8_t *r,
                     size_t rl, void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  /* Remember why this side ended the connection, for on_closed. */
  if (!remote && code != KR_CODE_NO_ERROR && code != KR_CODE_SHUTDOWN &&
      !c->fail_err) {
    c->fail_err = kr_error_from_code(code);
    snprintf(c->fail_reason, sizeof(c->fail_reason), "%s: %.*s",
             kr_code_name(code), (int)rl, (const char *)r);
  }
  if (remote && c->cb.on_goaway && !c->free_pending)
    c->cb.on_goaway(c, code, r, rl, c->ud);
  mux_leave(c);
}

static void m_ping(kr_mux *m, kr_time_us rtt, void *ud) {
  kr__conn *c = ud;
  mux_enter(c);
  if (c->cb.on_ping && !c->free_pending)
    c->cb.on_ping(c, rtt, c->ud);
  mux_leave(c);
}

/* Any write on any stream of this conn schedules one pump (none once the
 * conn is going: its pump event may be gone already). */
static void output_hook(kr_mux *m, void *ud) {
  kr__conn *c = ud;
  if (!c->free_pending)
    kr__conn_kick(c);
}

static void nop_open(kr__transport *t, void *ud) {}
static void nop_read(kr__transport *t, const uint8_t *p, size_t n, void *ud) {}
static void nop_drain(kr__transport *t, void *ud) {}
static void nop_close(kr__transport *t, int err, const char *why, void *ud) {}
const kr__transport_cbs kr__transport_nop_cbs = {nop_open, nop_read, nop_drain,
                                                 nop_close};

int kr__conn_new(struct event_base *base, kr__transport *t, int transport_open,
                 const kr_mux_options *opt, const kr__conn_cbs *cbs, void *ud,
                 kr__conn **out) {
  kr__conn *c = calloc(1, sizeof(*c));
  kr_mux_callbacks *mc = NULL;
  int rc = KR_ENOMEM;
  if (!c)
    goto fail;
  c->base = base;
  c->cb = *cbs;
  c->ud = ud;
  c->timer_at = UINT64_MAX;
  c->pump_ev = event_new(base, -1, 0, pump_cb, c);
  c->timer_ev = event_new(base, -1, 0, timer_cb, c);
  if (!c->pump_ev || !c->timer_ev || kr_mux_callbacks_new(&mc) < 0)
    goto fail;
  kr_mux_callbacks_set_on_hello(mc, m_hello);
  kr_mux_callbacks_set_on_open(mc, m_open);
  kr_mux_callbacks_set_on_reply(mc, m_reply);
  kr_mux_callbacks_set_on_data(mc, m_data);
  kr_mux_callbacks_set_on_fin(mc, m_fin);
  kr_mux_callbacks_set_on_writable(mc, m_writable);
  kr_mux_callbacks_set_on_close(mc, m_close);
  kr_mux_callbacks_set_on_goaway(mc, m_goaway);
  kr_mux_callbacks_set_on_ping(mc, m_ping);
  rc = kr_mux_new(&c->mux, opt, mc, kr__now_us(), c);
  kr_mux_callbacks_free(mc);
  if (rc < 0)
    goto fail;
  kr__mux_set_output_hook(c->mux, output_hook, c);
  c->t = t;
  memcpy(c->peer, t->peer, sizeof(c->peer));
  t->cb = transport_cbs;
  t->ud = c;
  *out = c;
  if (transport_open) {
    c->transport_open = 1;
    kr__conn_kick(c);
  }
  schedule_timer(c); /* the handshake timeout runs while connecting too */
  return 0;
fail:
  t->ops->free(t);
  if (c) {
    c->t = NULL;
    conn_destroy(c);
  }
  return rc;
}

void kr__conn_goaway(kr__conn *c, uint32_t code, const char *reason) {
  if (c->closed)
    return;
  kr_mux_goaway(c->mux, code, reason);
  kr__conn_kick(c);
}

void kr__conn_abort(kr__conn *c, uint32_t code, const char *reason) {
  if (c->closed)
    return;
  c->depth++;
  kr_mux_abort(c->mux, code, reason);
  if (conn_leave(c))
    return;
  kr__conn_kick(c);
}
