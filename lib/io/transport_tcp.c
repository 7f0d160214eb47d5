/* Plain TCP transport (see transport_tcp.h).
 *
 * Reads hand the bufferevent's input chunks to on_read without copying
 * (evbuffer_peek), then drain them. Writes copy into the output evbuffer
 * up to the high-water mark.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <kasroute/error.h>

#include "transport_tcp.h"

typedef struct tcp_transport {
  kr__transport base;
  struct bufferevent *bev;
  int connecting;
  int closing; /* close() called: finish writing, then report */
  int lingering; /* output flushed and FIN sent: discard input until EOF */
} tcp_transport;

static void tcp_free(kr__transport *t) {
  tcp_transport *c = (tcp_transport *)t;
  if (c->bev)
    bufferevent_free(c->bev);
  free(c);
}

/* Reports the end once; the owner may free t inside the callback. */
static void tcp_report_close(tcp_transport *c, int err, const char *why) {
  bufferevent_disable(c->bev, EV_READ | EV_WRITE);
  c->base.cb.on_close(&c->base, err, why, c->base.ud);
}

static void tcp_read_cb(struct bufferevent *bev, void *arg) {
  tcp_transport *c = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  struct evbuffer_iovec v[16];
  /* Lingering close: input is read and dropped so that the kernel does
   * not answer the peer's last frames with a reset. */
  if (c->closing) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  while (evbuffer_get_length(in) > 0 && !c->closing) {
    int n = evbuffer_peek(in, -1, NULL, v, 16);
    if (n > 16)
      n = 16;
    size_t total = 0;
    for (int i = 0; i < n; i++)
      total += v[i].iov_len;
    for (int i = 0; i < n; i++)
      c->base.cb.on_read(&c->base, v[i].iov_base, v[i].iov_len, c->base.ud);
    evbuffer_drain(in, total);
  }
}

static void tcp_write_cb(struct bufferevent *bev, void *arg) {
  tcp_transport *c = arg;
  if (c->closing) {
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 &&
        c->base.no_linger) {
      tcp_report_close(c, 0, "closed");
      return;
    }
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 &&
        !c->lingering) {
      c->lingering = 1;
      shutdown(bufferevent_getfd(bev), SHUT_WR);
      bufferevent_enable(bev, EV_READ);
    }
    return;
  }
  c->base.cb.on_drain(&c->base, c->base.ud);
}

static void tcp_event_cb(struct bufferevent *bev, short what, void *arg) {
  tcp_transport *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    c->connecting = 0;
    evutil_socket_t fd = bufferevent_getfd(bev);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    kr__transport_set_peer(&c->base, fd);
    c->base.cb.on_open(&c->base, c->base.ud);
    return;
  }
  if (c->lingering) {
    tcp_report_close(c, 0, "closed");
    return;
  }
  if (what & BEV_EVENT_EOF) {
    tcp_report_close(c, c->closing ? 0 : KR_EIO, "connection closed by peer");
  } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
    char why[128];
    int e = EVUTIL_SOCKET_ERROR();
    snprintf(why, sizeof(why), "%s%s",
             c->connecting ? "connect failed: " : "socket error: ",
             e ? evutil_socket_error_to_string(e) : "unknown");
    tcp_report_close(c, KR_EIO, why);
  }
}

static size_t tcp_write(kr__transport *t, const uint8_t *p, size_t n) {
  tcp_transport *c = (tcp_transport *)t;
  struct evbuffer *out = bufferevent_get_output(c->bev);
  size_t have = evbuffer_get_length(out);
  if (c->closing || have >= KR__TRANSPORT_HIGH_WATER)
    return 0;
  size_t take = KR__TRANSPORT_HIGH_WATER - have;
  if (take > n)
    take = n;
  if (evbuffer_add(out, p, take) != 0)
    return 0;
  return take;
}

static void tcp_set_reading(kr__transport *t, int on) {
  tcp_transport *c = (tcp_transport *)t;
  if (on)
    bufferevent_enable(c->bev, EV_READ);
  else
    bufferevent_disable(c->bev, EV_READ);
}

static void tcp_close(kr__transport *t) {
  tcp_transport *c = (tcp_transport *)t;
  if (c->closing)
    return;
  c->closing = 1;
  /* Once the output is empty the write callback sends FIN and keeps
   * reading until the peer's EOF (or reports at once after a failure). */
  bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
  /* A peer that stops reading cannot hold the close up for long. */
  struct timeval tv = {KR__TRANSPORT_CLOSE_TIMEOUT_S, 0};
  bufferevent_set_timeouts(c->bev, &tv, &tv);
  if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
    bufferevent_trigger(c->bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
}

static const kr__transport_ops tcp_ops = {tcp_write, tcp_set_reading,
                                          tcp_close, tcp_free};

static tcp_transport *tcp_new(struct event_base *base, evutil_socket_t fd,
                              const kr__transport_cbs *cbs, void *ud) {
  tcp_transport *c = calloc(1, sizeof(*c));
  if (!c)
    return NULL;
  c->bev = bufferevent_socket_new(base, fd,
                                  BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
  if (!c->bev) {
    free(c);
    return NULL;
  }
  c->base.ops = &tcp_ops;
  c->base.base = base;
  c->base.cb = *cbs;
  c->base.ud = ud;
  snprintf(c->base.peer, sizeof(c->base.peer), "?");
  bufferevent_setcb(c->bev, tcp_read_cb, tcp_write_cb, tcp_event_cb, c);
  /* libevent moves 16 KiB per read or write call by default: far too
   * little for bulk streams. */
  bufferevent_set_max_single_read(c->bev, KR__IO_CHUNK);
  bufferevent_set_max_single_write(c->bev, KR__IO_CHUNK);
  bufferevent_setwatermark(c->bev, EV_WRITE, KR__TRANSPORT_LOW_WATER, 0);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  return c;
}

int kr__tcp_accept(struct event_base *base, evutil_socket_t fd,
                   const kr__transport_cbs *cbs, void *ud,
                   kr__transport **out) {
  evutil_make_socket_nonblocking(fd);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  tcp_transport *c = tcp_new(base, fd, cbs, ud);
  if (!c) {
    evutil_closesocket(fd);
    return KR_ENOMEM;
  }
  kr__transport_set_peer(&c->base, fd);
  *out = &c->base;
  return 0;
}

int kr__tcp_connect(struct event_base *base, const char *host, int port,
                    const kr__transport_cbs *cbs, void *ud,
                    kr__transport **out) {
  tcp_transport *c = tcp_new(base, -1, cbs, ud);
  if (!c)
    return KR_ENOMEM;
  c->connecting = 1;
  snprintf(c->base.peer, sizeof(c->base.peer), "%s:%d", host, port);
  if (bufferevent_socket_connect_hostname(c->bev, NULL, AF_UNSPEC, host,
                                          port) != 0) {
    tcp_free(&c->base);
    return KR_EADDR;
  }
  *out = &c->base;
  return 0;
}
