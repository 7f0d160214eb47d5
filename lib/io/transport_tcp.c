/* Plain TCP transport over kr__sock (see transport_tcp.h and sock.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "sock.h"
#include "transport_tcp.h"

typedef struct tcp_transport {
  kr__transport base;
  kr__sock *sock;
  int closing; /* close() called: flush, then (linger) wait for EOF */
  int reported;
} tcp_transport;

static void tcp_free(kr__transport *t) {
  tcp_transport *c = (tcp_transport *)t;
  kr__sock_free(c->sock);
  free(c);
}

/* Reports the end once; the owner may free t inside the callback. */
static void report_close(tcp_transport *c, int err, const char *why) {
  if (c->reported)
    return;
  c->reported = 1;
  kr__sock_set_reading(c->sock, 0);
  c->base.cb.on_close(&c->base, err, why, c->base.ud);
}

static void s_connect(kr__sock *s, void *ud) {
  tcp_transport *c = ud;
  snprintf(c->base.peer, sizeof(c->base.peer), "%s", kr__sock_peer(s));
  c->base.cb.on_open(&c->base, c->base.ud);
}

static void s_read(kr__sock *s, const uint8_t *p, size_t n, void *ud) {
  tcp_transport *c = ud;
  /* While closing, input is read and dropped so that the kernel does not
   * answer the peer's last frames with a reset. */
  if (!c->closing)
    c->base.cb.on_read(&c->base, p, n, c->base.ud);
}

static void s_drain(kr__sock *s, void *ud) {
  tcp_transport *c = ud;
  if (!c->closing) {
    c->base.cb.on_drain(&c->base, c->base.ud);
  } else if (c->base.no_linger && kr__sock_pending(s) == 0) {
    report_close(c, 0, "closed");
  }
}

static void s_eof(kr__sock *s, void *ud) {
  tcp_transport *c = ud;
  report_close(c, c->closing ? 0 : KR_EIO, "connection closed by peer");
}

static void s_error(kr__sock *s, int err, const char *why, void *ud) {
  tcp_transport *c = ud;
  report_close(c, c->closing ? 0 : err, why);
}

static const kr__sock_cbs tcp_sock_cbs = {s_connect, s_read, s_drain, s_eof,
                                          s_error};

static size_t tcp_write(kr__transport *t, const uint8_t *p, size_t n) {
  tcp_transport *c = (tcp_transport *)t;
  if (c->closing)
    return 0;
  return kr__sock_write(c->sock, p, n, KR__TRANSPORT_HIGH_WATER);
}

static void tcp_set_reading(kr__transport *t, int on) {
  tcp_transport *c = (tcp_transport *)t;
  if (!c->closing)
    kr__sock_set_reading(c->sock, on);
}

static void tcp_close(kr__transport *t) {
  tcp_transport *c = (tcp_transport *)t;
  if (c->closing)
    return;
  c->closing = 1;
  kr__sock_close_gracefully(c->sock, !c->base.no_linger,
                            KR__TRANSPORT_CLOSE_TIMEOUT_S * 1000);
}

static const kr__transport_ops tcp_ops = {tcp_write, tcp_set_reading,
                                          tcp_close, tcp_free};

static tcp_transport *tcp_alloc(struct event_base *base,
                                const kr__transport_cbs *cbs, void *ud) {
  tcp_transport *c = calloc(1, sizeof(*c));
  if (!c)
    return NULL;
  c->base.ops = &tcp_ops;
  c->base.base = base;
  c->base.cb = *cbs;
  c->base.ud = ud;
  snprintf(c->base.peer, sizeof(c->base.peer), "?");
  return c;
}

int kr__tcp_accept(struct event_base *base, evutil_socket_t fd,
                   const kr__transport_cbs *cbs, void *ud,
                   kr__transport **out) {
  tcp_transport *c = tcp_alloc(base, cbs, ud);
  if (!c) {
    evutil_closesocket(fd);
    return KR_ENOMEM;
  }
  int rc = kr__sock_new(base, fd, &tcp_sock_cbs, c, &c->sock);
  if (rc < 0) {
    free(c);
    return rc;
  }
  snprintf(c->base.peer, sizeof(c->base.peer), "%s", kr__sock_peer(c->sock));
  *out = &c->base;
  return 0;
}

int kr__tcp_connect(struct event_base *base, const char *host, int port,
                    const kr__transport_cbs *cbs, void *ud,
                    kr__transport **out) {
  tcp_transport *c = tcp_alloc(base, cbs, ud);
  if (!c)
    return KR_ENOMEM;
  int rc = kr__sock_connect(base, host, port, &tcp_sock_cbs, c, &c->sock);
  if (rc < 0) {
    free(c);
    return rc;
  }
  snprintf(c->base.peer, sizeof(c->base.peer), "%s:%d", host, port);
  *out = &c->base;
  return 0;
}
