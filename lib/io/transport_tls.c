/* TLS transport (see transport_tls.h).
 *
 * mbedTLS talks to the bufferevent through BIO callbacks: send appends to
 * the output evbuffer and never blocks (write() checks the high-water mark
 * before encrypting, so mbedTLS never sees WANT_WRITE and never needs the
 * same buffer again); receive drains the input evbuffer and says WANT_READ
 * when it is empty.
 */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <mbedtls/error.h>
#include <mbedtls/ssl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <kasroute/error.h>

#include "tls_internal.h"

typedef struct tls_transport {
  kr__transport base;
  struct bufferevent *bev;
  mbedtls_ssl_context ssl;
  int connecting;
  int handshake_done;
  int closing;
  int failed;
  int lingering; /* output flushed and FIN sent: discard input until EOF */
  char fail_reason[160];
  int handshake_ms;
} tls_transport;

static int bio_send(void *ctx, const unsigned char *buf, size_t len) {
  tls_transport *c = ctx;
  if (evbuffer_add(bufferevent_get_output(c->bev), buf, len) != 0)
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  return (int)len;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len) {
  tls_transport *c = ctx;
  int n = evbuffer_remove(bufferevent_get_input(c->bev), buf, len);
  if (n <= 0)
    return MBEDTLS_ERR_SSL_WANT_READ;
  return n;
}

static void tls_free(kr__transport *t) {
  tls_transport *c = (tls_transport *)t;
  if (c->bev)
    bufferevent_free(c->bev);
  mbedtls_ssl_free(&c->ssl);
  free(c);
}

static void report_close(tls_transport *c, int err, const char *why) {
  bufferevent_disable(c->bev, EV_READ | EV_WRITE);
  c->base.cb.on_close(&c->base, err, why, c->base.ud);
}

/* Remembers a failure found inside write() and reports it from the loop. */
static void defer_failure(tls_transport *c, int rc, const char *what) {
  if (c->failed)
    return;
  char buf[96];
  mbedtls_strerror(rc, buf, sizeof(buf));
  snprintf(c->fail_reason, sizeof(c->fail_reason), "%s: %s", what, buf);
  c->failed = 1;
  bufferevent_trigger_event(c->bev, BEV_EVENT_ERROR, BEV_TRIG_DEFER_CALLBACKS);
}

/* Runs the handshake; returns 1 when done, 0 to wait, -1 after reporting
 * a failure (the transport may be gone). */
static int handshake(tls_transport *c) {
  int rc = mbedtls_ssl_handshake(&c->ssl);
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
    return 0;
  if (rc != 0) {
    char why[256], buf[96];
    uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags) {
      char info[160];
      mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
      info[strcspn(info, "\n")] = 0;
      snprintf(why, sizeof(why), "TLS handshake failed: certificate %s", info);
    } else {
      mbedtls_strerror(rc, buf, sizeof(buf));
      snprintf(why, sizeof(why), "TLS handshake failed: %s", buf);
    }
    report_close(c, KR_ETLS, why);
    return -1;
  }
  c->handshake_done = 1;
  bufferevent_set_timeouts(c->bev, NULL, NULL);
  c->base.cb.on_open(&c->base, c->base.ud);
  return 1;
}

static void tls_read_cb(struct bufferevent *bev, void *arg) {
  tls_transport *c = arg;
  if (c->closing) {
    /* Lingering close: input is read and dropped so that the kernel does
     * not answer the peer's last frames with a reset. */
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  if (!c->handshake_done) {
    if (handshake(c) <= 0)
      return;
  }
  unsigned char buf[16384];
  while (!c->closing) {
    int n = mbedtls_ssl_read(&c->ssl, buf, sizeof(buf));
    if (n > 0) {
      c->base.cb.on_read(&c->base, buf, (size_t)n, c->base.ud);
      continue;
    }
    if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE)
      return;
    if (n == 0 || n == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
      report_close(c, c->closing ? 0 : KR_EIO, "connection closed by peer");
      return;
    }
    char why[128], e[96];
    mbedtls_strerror(n, e, sizeof(e));
    snprintf(why, sizeof(why), "TLS read failed: %s", e);
    report_close(c, KR_ETLS, why);
    return;
  }
}

static void tls_write_cb(struct bufferevent *bev, void *arg) {
  tls_transport *c = arg;
  if (c->closing) {
    if (evbuffer_get_length(bufferevent_get_output(bev)) != 0)
      return;
    if (c->base.no_linger) {
      report_close(c, 0, "closed");
    } else if (!c->lingering) {
      c->lingering = 1;
      shutdown(bufferevent_getfd(bev), SHUT_WR);
      bufferevent_enable(bev, EV_READ);
    }
    return;
  }
  if (c->handshake_done)
    c->base.cb.on_drain(&c->base, c->base.ud);
}

static void tls_event_cb(struct bufferevent *bev, short what, void *arg) {
  tls_transport *c = arg;
  if (what & BEV_EVENT_CONNECTED) {
    c->connecting = 0;
    evutil_socket_t fd = bufferevent_getfd(bev);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    kr__transport_set_peer(&c->base, fd);
    handshake(c); /* sends the ClientHello */
    return;
  }
  if (c->lingering) {
    report_close(c, 0, "closed");
  } else if (c->failed) {
    report_close(c, KR_ETLS, c->fail_reason);
  } else if (what & BEV_EVENT_TIMEOUT) {
    report_close(c, KR_ETIMEDOUT, c->closing ? "close timed out"
                                             : "TLS handshake timed out");
  } else if (what & BEV_EVENT_EOF) {
    report_close(c, c->closing ? 0 : KR_EIO,
                 c->handshake_done ? "connection closed by peer"
                                   : "connection closed during TLS handshake");
  } else if (what & BEV_EVENT_ERROR) {
    char why[128];
    int e = EVUTIL_SOCKET_ERROR();
    snprintf(why, sizeof(why), "%s%s",
             c->connecting ? "connect failed: " : "socket error: ",
             e ? evutil_socket_error_to_string(e) : "unknown");
    report_close(c, KR_EIO, why);
  }
}

static size_t tls_write(kr__transport *t, const uint8_t *p, size_t n) {
  tls_transport *c = (tls_transport *)t;
  if (!c->handshake_done || c->closing || c->failed)
    return 0;
  struct evbuffer *out = bufferevent_get_output(c->bev);
  size_t done = 0;
  while (done < n && evbuffer_get_length(out) < KR__TRANSPORT_HIGH_WATER) {
    int r = mbedtls_ssl_write(&c->ssl, p + done, n - done);
    if (r < 0) {
      defer_failure(c, r, "TLS write failed");
      break;
    }
    done += (size_t)r;
  }
  return done;
}

static void tls_set_reading(kr__transport *t, int on) {
  tls_transport *c = (tls_transport *)t;
  if (on)
    bufferevent_enable(c->bev, EV_READ);
  else
    bufferevent_disable(c->bev, EV_READ);
}

static void tls_close(kr__transport *t) {
  tls_transport *c = (tls_transport *)t;
  if (c->closing)
    return;
  c->closing = 1;
  if (c->handshake_done)
    mbedtls_ssl_close_notify(&c->ssl);
  bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
  /* A peer that stops reading, or never closes, cannot hold the close up
   * for long. */
  struct timeval tv = {KR__TRANSPORT_CLOSE_TIMEOUT_S, 0};
  bufferevent_set_timeouts(c->bev, &tv, &tv);
  if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
    bufferevent_trigger(c->bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
}

static const kr__transport_ops tls_ops = {tls_write, tls_set_reading,
                                          tls_close, tls_free};

static tls_transport *tls_new(struct event_base *base, evutil_socket_t fd,
                              kr__tls_config *cfg, int handshake_ms,
                              const kr__transport_cbs *cbs, void *ud) {
  tls_transport *c = calloc(1, sizeof(*c));
  if (!c)
    return NULL;
  mbedtls_ssl_init(&c->ssl);
  if (mbedtls_ssl_setup(&c->ssl, &cfg->conf) != 0) {
    mbedtls_ssl_free(&c->ssl);
    free(c);
    return NULL;
  }
  c->bev = bufferevent_socket_new(base, fd,
                                  BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
  if (!c->bev) {
    mbedtls_ssl_free(&c->ssl);
    free(c);
    return NULL;
  }
  mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
  c->base.ops = &tls_ops;
  c->base.base = base;
  c->base.cb = *cbs;
  c->base.ud = ud;
  c->handshake_ms = handshake_ms > 0 ? handshake_ms : 10000;
  snprintf(c->base.peer, sizeof(c->base.peer), "?");
  struct timeval tv = {c->handshake_ms / 1000, (c->handshake_ms % 1000) * 1000};
  bufferevent_set_timeouts(c->bev, &tv, &tv);
  bufferevent_setcb(c->bev, tls_read_cb, tls_write_cb, tls_event_cb, c);
  /* libevent moves 16 KiB per read or write call by default: far too
   * little for bulk streams. */
  bufferevent_set_max_single_read(c->bev, KR__IO_CHUNK);
  bufferevent_set_max_single_write(c->bev, KR__IO_CHUNK);
  bufferevent_setwatermark(c->bev, EV_WRITE, KR__TRANSPORT_LOW_WATER, 0);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  return c;
}

int kr__tls_accept(struct event_base *base, evutil_socket_t fd,
                   kr__tls_config *cfg, int handshake_ms,
                   const kr__transport_cbs *cbs, void *ud,
                   kr__transport **out) {
  evutil_make_socket_nonblocking(fd);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  tls_transport *c = tls_new(base, fd, cfg, handshake_ms, cbs, ud);
  if (!c) {
    evutil_closesocket(fd);
    return KR_ENOMEM;
  }
  kr__transport_set_peer(&c->base, fd);
  *out = &c->base;
  return 0;
}

int kr__tls_connect(struct event_base *base, const char *host, int port,
                    const char *server_name, kr__tls_config *cfg,
                    int handshake_ms, const kr__transport_cbs *cbs, void *ud,
                    kr__transport **out) {
  tls_transport *c = tls_new(base, -1, cfg, handshake_ms, cbs, ud);
  if (!c)
    return KR_ENOMEM;
  if (mbedtls_ssl_set_hostname(&c->ssl, server_name ? server_name : host) != 0) {
    tls_free(&c->base);
    return KR_ENOMEM;
  }
  c->connecting = 1;
  snprintf(c->base.peer, sizeof(c->base.peer), "%s:%d", host, port);
  if (bufferevent_socket_connect_hostname(c->bev, NULL, AF_UNSPEC, host,
                                          port) != 0) {
    tls_free(&c->base);
    return KR_EADDR;
  }
  *out = &c->base;
  return 0;
}
