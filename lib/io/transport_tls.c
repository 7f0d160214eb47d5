/* TLS transport (see transport_tls.h): mbedTLS over a kr__sock.
 *
 * mbedTLS talks to the socket through BIO callbacks: send hands the
 * records to kr__sock_write() and never blocks (write() checks the
 * high-water mark before encrypting, so mbedTLS never sees WANT_WRITE and
 * never needs the same buffer again); receive drains the ciphertext that
 * on_read collected and says WANT_READ when it is empty.
 */
#include <event2/buffer.h>
#include <mbedtls/error.h>
#include <mbedtls/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "sock.h"
#include "tls_internal.h"

typedef struct tls_transport {
  kr__transport base;
  kr__sock *sock;
  struct evbuffer *in; /* ciphertext not yet taken by mbedTLS */
  mbedtls_ssl_context ssl;
  int handshake_done;
  int closing;
  int reported;
  int busy, free_pending;
} tls_transport;

static int bio_send(void *ctx, const unsigned char *buf, size_t len) {
  tls_transport *c = ctx;
  if (kr__sock_write(c->sock, buf, len, SIZE_MAX) < len)
    return MBEDTLS_ERR_SSL_INTERNAL_ERROR; /* the socket failed */
  return (int)len;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len) {
  tls_transport *c = ctx;
  int n = evbuffer_remove(c->in, buf, len);
  if (n <= 0)
    return MBEDTLS_ERR_SSL_WANT_READ;
  return n;
}

static void destroy(tls_transport *c) {
  kr__sock_free(c->sock);
  evbuffer_free(c->in);
  mbedtls_ssl_free(&c->ssl);
  free(c);
}

static void tls_free(kr__transport *t) {
  tls_transport *c = (tls_transport *)t;
  if (c->busy) {
    c->free_pending = 1;
    return;
  }
  destroy(c);
}

static void enter(tls_transport *c) { c->busy++; }

/* Returns 1 if c was freed. */
static int leave(tls_transport *c) {
  if (--c->busy == 0 && c->free_pending) {
    destroy(c);
    return 1;
  }
  return 0;
}

/* Reports the end once; the owner may free t inside the callback. */
static void report_close(tls_transport *c, int err, const char *why) {
  if (c->reported)
    return;
  c->reported = 1;
  kr__sock_set_reading(c->sock, 0);
  c->base.cb.on_close(&c->base, err, why, c->base.ud);
}

static void report_mbedtls(tls_transport *c, int rc, const char *what) {
  char why[256], buf[96];
  uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
  if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags && flags != (uint32_t)-1) {
    char info[160];
    mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
    info[strcspn(info, "\n")] = 0;
    snprintf(why, sizeof(why), "%s: certificate %s", what, info);
  } else {
    mbedtls_strerror(rc, buf, sizeof(buf));
    snprintf(why, sizeof(why), "%s: %s", what, buf);
  }
  report_close(c, KR_ETLS, why);
}

/* Runs the handshake; returns 1 when done, 0 to wait, -1 after reporting. */
static int handshake(tls_transport *c) {
  int rc = mbedtls_ssl_handshake(&c->ssl);
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
    return 0;
  if (rc != 0) {
    report_mbedtls(c, rc, "TLS handshake failed");
    return -1;
  }
  c->handshake_done = 1;
  kr__sock_clear_deadline(c->sock);
  c->base.cb.on_open(&c->base, c->base.ud);
  return 1;
}

/* Decrypts what arrived and hands the plaintext on. */
static void read_records(tls_transport *c) {
  unsigned char buf[16384];
  while (!c->closing && !c->reported && !c->free_pending) {
    int n = mbedtls_ssl_read(&c->ssl, buf, sizeof(buf));
    if (n > 0) {
      c->base.cb.on_read(&c->base, buf, (size_t)n, c->base.ud);
      continue;
    }
    if (n == MBEDTLS_ERR_SSL_WANT_READ || n == MBEDTLS_ERR_SSL_WANT_WRITE)
      return;
    if (n == 0 || n == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
      report_close(c, KR_EIO, "connection closed by peer");
      return;
    }
    report_mbedtls(c, n, "TLS read failed");
    return;
  }
}

static void s_connect(kr__sock *s, void *ud) {
  tls_transport *c = ud;
  enter(c);
  snprintf(c->base.peer, sizeof(c->base.peer), "%s", kr__sock_peer(s));
  handshake(c); /* sends the ClientHello */
  leave(c);
}

static void s_read(kr__sock *s, const uint8_t *p, size_t n, void *ud) {
  tls_transport *c = ud;
  if (c->closing)
    return; /* lingering close: dropped */
  enter(c);
  if (evbuffer_add(c->in, p, n) != 0) {
    report_close(c, KR_ENOMEM, "out of memory");
  } else if (c->handshake_done || handshake(c) > 0) {
    read_records(c);
  }
  leave(c);
}

static void s_drain(kr__sock *s, void *ud) {
  tls_transport *c = ud;
  if (!c->closing) {
    if (c->handshake_done)
      c->base.cb.on_drain(&c->base, c->base.ud);
  } else if (c->base.no_linger && kr__sock_pending(s) == 0) {
    report_close(c, 0, "closed");
  }
}

static void s_eof(kr__sock *s, void *ud) {
  tls_transport *c = ud;
  report_close(c, c->closing ? 0 : KR_EIO,
               c->handshake_done ? "connection closed by peer"
                                 : "connection closed during TLS handshake");
}

static void s_error(kr__sock *s, int err, const char *why, void *ud) {
  tls_transport *c = ud;
  report_close(c, c->closing ? 0 : err, why);
}

static const kr__sock_cbs tls_sock_cbs = {s_connect, s_read, s_drain, s_eof,
                                          s_error};

static size_t tls_write(kr__transport *t, const uint8_t *p, size_t n) {
  tls_transport *c = (tls_transport *)t;
  if (!c->handshake_done || c->closing || c->reported)
    return 0;
  size_t done = 0;
  while (done < n && kr__sock_pending(c->sock) < KR__TRANSPORT_HIGH_WATER) {
    int r = mbedtls_ssl_write(&c->ssl, p + done, n - done);
    if (r <= 0)
      break; /* the socket failed: its on_error reports it */
    done += (size_t)r;
  }
  if (done < n)
    kr__sock_want_drain(c->sock, KR__TRANSPORT_LOW_WATER);
  return done;
}

static void tls_set_reading(kr__transport *t, int on) {
  tls_transport *c = (tls_transport *)t;
  if (!c->closing)
    kr__sock_set_reading(c->sock, on);
}

static void tls_close(kr__transport *t) {
  tls_transport *c = (tls_transport *)t;
  if (c->closing)
    return;
  c->closing = 1;
  if (c->handshake_done)
    mbedtls_ssl_close_notify(&c->ssl);
  kr__sock_close_gracefully(c->sock, !c->base.no_linger,
                            KR__TRANSPORT_CLOSE_TIMEOUT_S * 1000);
}

static const kr__transport_ops tls_ops = {tls_write, tls_set_reading,
                                          tls_close, tls_free};

static tls_transport *tls_alloc(struct event_base *base, kr__tls_config *cfg,
                                const kr__transport_cbs *cbs, void *ud) {
  tls_transport *c = calloc(1, sizeof(*c));
  if (!c)
    return NULL;
  mbedtls_ssl_init(&c->ssl);
  if (mbedtls_ssl_setup(&c->ssl, &cfg->conf) != 0 ||
      !(c->in = evbuffer_new())) {
    mbedtls_ssl_free(&c->ssl);
    free(c);
    return NULL;
  }
  mbedtls_ssl_set_bio(&c->ssl, c, bio_send, bio_recv, NULL);
  c->base.ops = &tls_ops;
  c->base.base = base;
  c->base.cb = *cbs;
  c->base.ud = ud;
  snprintf(c->base.peer, sizeof(c->base.peer), "?");
  return c;
}

int kr__tls_accept(struct event_base *base, evutil_socket_t fd,
                   kr__tls_config *cfg, int handshake_ms,
                   const kr__transport_cbs *cbs, void *ud,
                   kr__transport **out) {
  tls_transport *c = tls_alloc(base, cfg, cbs, ud);
  if (!c) {
    evutil_closesocket(fd);
    return KR_ENOMEM;
  }
  int rc = kr__sock_new(base, fd, &tls_sock_cbs, c, &c->sock);
  if (rc < 0) {
    evbuffer_free(c->in);
    mbedtls_ssl_free(&c->ssl);
    free(c);
    return rc;
  }
  snprintf(c->base.peer, sizeof(c->base.peer), "%s", kr__sock_peer(c->sock));
  kr__sock_set_deadline(c->sock, handshake_ms > 0 ? handshake_ms : 10000,
                        "TLS handshake timed out");
  *out = &c->base;
  return 0;
}

int kr__tls_connect(struct event_base *base, const char *host, int port,
                    const char *server_name, kr__tls_config *cfg,
                    int handshake_ms, const kr__transport_cbs *cbs, void *ud,
                    kr__transport **out) {
  tls_transport *c = tls_alloc(base, cfg, cbs, ud);
  if (!c)
    return KR_ENOMEM;
  int rc = mbedtls_ssl_set_hostname(&c->ssl, server_name ? server_name : host)
               ? KR_ENOMEM
               : kr__sock_connect(base, host, port, &tls_sock_cbs, c, &c->sock);
  if (rc < 0) {
    evbuffer_free(c->in);
    mbedtls_ssl_free(&c->ssl);
    free(c);
    return rc;
  }
  snprintf(c->base.peer, sizeof(c->base.peer), "%s:%d", host, port);
  kr__sock_set_deadline(c->sock, handshake_ms > 0 ? handshake_ms : 10000,
                        "TLS handshake timed out");
  *out = &c->base;
  return 0;
}
