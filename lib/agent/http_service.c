/* HTTP/1.1 reverse proxy from mux streams to one upstream (see
 * http_service.h).
 *
 * Ownership: an exchange (one stream) and an upstream connection point at
 * each other while the connection serves it. Every entry point (stream
 * callback, transport callback, timer, serve) brackets its work with
 * hx_enter()/hx_leave(); releasing the connection and freeing the exchange
 * happen only in hx_leave() once nothing of the exchange is on the stack,
 * because stream calls (reply, close_write) may end the stream at once and
 * a parser may not be freed inside its own callbacks.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <kasroute/error.h>

#include "core/mux_internal.h"
#include "http/http_map.h"
#include "http/http_parse.h"
#include "http_service.h"
#include "io/conn.h"
#include "io/dial.h"
#include "io/log.h"
#include "io/url.h"

typedef struct hs_conn hs_conn;
typedef struct hs_exchange hs_exchange;

enum conn_timer { T_NONE, T_CONNECT, T_HEAD, T_IDLE };

/* How the request body travels to the upstream. */
enum body_mode {
  BODY_NONE,    /* the OPEN carried FIN */
  BODY_LENGTH,  /* content-length given: raw, exactly that many bytes */
  BODY_CHUNKED, /* unknown length: chunked transfer coding */
  BODY_RAW      /* an upgrade request: raw bytes, before and after 101 */
};

struct hs_conn {
  kr__http_service *sv;
  kr__transport *t; /* NULL once closed */
  kr__http_parser *p;
  struct event *timer;
  enum conn_timer timer_kind;
  hs_exchange *hx; /* the exchange served; NULL while idle in the pool */
  int open;        /* connected (and TLS handshake done) */
  int reused;      /* served an earlier exchange */
  hs_conn *prev, *next;
};

struct hs_exchange {
  kr__http_service *sv;
  kr_stream *s;          /* NULL once the stream ended or was reset */
  hs_conn *c;            /* NULL once the connection was released */
  kr__strbuf head;       /* serialized request head (kept for a retry) */
  struct evbuffer *out;  /* request bytes the transport has not taken */
  size_t unconsumed;     /* stream bytes in out, credit not returned yet */
  struct evbuffer *in;   /* upstream bytes not parsed yet */
  struct evbuffer *hold; /* response bytes the stream refused */
  enum body_mode mode;
  uint64_t body_left; /* BODY_LENGTH */
  int is_head, is_upgrade, no_body;
  int req_fin;  /* the stream's FIN arrived */
  int req_sent; /* the whole request went to the transport */
  int head_timer_started;
  int resp_started; /* an upstream byte arrived */
  int replied, reply_fin, upgraded, resp_done, resp_keep_alive;
  int interim, interim_end, parse_paused;
  int up_eof;  /* the upstream connection closed */
  int out_fin; /* our FIN was sent on the stream */
  int retried;
  int busy;
  int failed;  /* reset by us */
  int aborted; /* reset by the peer */
  hs_exchange *prev, *next;
};

struct kr__http_service {
  struct event_base *base;
  char name[128];
  kr__url url;         /* tcp:// or tls:// host:port */
  char base_path[256]; /* the URL path without a trailing '/' */
  char host_field[300];
  char where[300]; /* "host:port" for reasons and logs */
  kr__dialer dialer;
  hs_conn *idle[KR__HTTP_SERVICE_MAX_IDLE]; /* LIFO: newest last */
  size_t n_idle;
  hs_conn *conns;
  hs_exchange *exchanges;
  int connect_ms, head_ms, idle_ms;
  kr__http_service_stats st;
};

static const kr__stream_handler hs_handler;
static const kr__transport_cbs conn_tcbs;
static const kr__http_parser_cbs parser_cbs;
static void timer_cb(evutil_socket_t fd, short what, void *arg);

/* ---------------------------------------------------------- connections */

static void set_timer(hs_conn *c, enum conn_timer kind, int ms) {
  event_del(c->timer);
  c->timer_kind = kind;
  if (kind != T_NONE) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(c->timer, &tv);
  }
}

static void idle_remove(kr__http_service *sv, hs_conn *c) {
  for (size_t i = 0; i < sv->n_idle; i++)
    if (sv->idle[i] == c) {
      memmove(&sv->idle[i], &sv->idle[i + 1],
              (sv->n_idle - i - 1) * sizeof(sv->idle[0]));
      sv->n_idle--;
      return;
    }
}

/* Closes at once and frees. Never called inside the parser's callbacks. */
static void conn_destroy(hs_conn *c) {
  kr__http_service *sv = c->sv;
  idle_remove(sv, c);
  if (c->prev)
    c->prev->next = c->next;
  else
    sv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  sv->st.live--;
  if (c->timer)
    event_free(c->timer);
  if (c->t)
    c->t->ops->free(c->t);
  kr__http_parser_free(c->p);
  free(c);
}

/* Starts a connection to the upstream. 0, KR_EADDR or KR_ENOMEM. */
static int conn_new(kr__http_service *sv, hs_conn **out) {
  hs_conn *c = calloc(1, sizeof(*c));
  if (!c)
    return KR_ENOMEM;
  c->sv = sv;
  int rc = KR_ENOMEM;
  if (!(c->timer = event_new(sv->base, -1, 0, timer_cb, c)))
    goto fail;
  if (kr__http_parser_new(&c->p, 0, NULL, &parser_cbs, c) < 0)
    goto fail;
  rc = kr__dialer_connect(&sv->dialer, NULL, 0, sv->connect_ms, &c->t);
  if (rc < 0)
    goto fail;
  c->t->cb = conn_tcbs;
  c->t->ud = c;
  c->next = sv->conns;
  if (sv->conns)
    sv->conns->prev = c;
  sv->conns = c;
  sv->st.live++;
  sv->st.connects++;
  *out = c;
  return 0;
fail:
  if (c->timer)
    event_free(c->timer);
  kr__http_parser_free(c->p);
  free(c);
  return rc;
}

/* An exchange completed on c: keep it for the next one. */
static void pool_put(hs_conn *c) {
  kr__http_service *sv = c->sv;
  kr__http_parser_resume(c->p); /* ready for the next response */
  c->hx = NULL;
  c->reused = 1;
  if (sv->n_idle == KR__HTTP_SERVICE_MAX_IDLE)
    conn_destroy(sv->idle[0]); /* the oldest goes */
  sv->idle[sv->n_idle++] = c;
  set_timer(c, T_IDLE, sv->idle_ms);
  c->t->ops->set_reading(c->t, 1); /* to notice the upstream closing it */
}

static hs_conn *pool_get(kr__http_service *sv) {
  if (sv->n_idle == 0)
    return NULL;
  hs_conn *c = sv->idle[--sv->n_idle];
  set_timer(c, T_NONE, 0);
  return c;
}

/* ------------------------------------------------------------ exchanges */

static void hx_enter(hs_exchange *hx) {
  hx->busy++;
}

static void hx_free(hs_exchange *hx) {
  kr__http_service *sv = hx->sv;
  if (hx->prev)
    hx->prev->next = hx->next;
  else
    sv->exchanges = hx->next;
  if (hx->next)
    hx->next->prev = hx->prev;
  sv->st.exchanges--;
  if (hx->head.p) /* may hold credentials (the kubernetes service's) */
    explicit_bzero(hx->head.p, hx->head.len);
  kr__strbuf_free(&hx->head);
  if (hx->out)
    evbuffer_free(hx->out);
  if (hx->in)
    evbuffer_free(hx->in);
  if (hx->hold)
    evbuffer_free(hx->hold);
  free(hx);
}

static void release_conn(hs_exchange *hx, int reuse) {
  hs_conn *c = hx->c;
  if (!c)
    return;
  hx->c = NULL;
  c->hx = NULL;
  if (reuse)
    pool_put(c);
  else
    conn_destroy(c);
}

/* Ends a bracket; once the stream is over and nothing is on the stack,
 * the connection (if still held: never reused then) and the exchange go. */
static void hx_leave(hs_exchange *hx) {
  if (--hx->busy > 0 || hx->s)
    return;
  release_conn(hx, 0);
  hx_free(hx);
}

/* Resets the stream with code and a formatted reason; the connection is
 * closed at hx_leave(). Idempotent. */
static void hx_fail(hs_exchange *hx, uint32_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void hx_fail(hs_exchange *hx, uint32_t code, const char *fmt, ...) {
  if (hx->failed)
    return;
  hx->failed = 1;
  char why[KR_MAX_REASON + 1], q[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  kr__log(code == KR_CODE_UPSTREAM ? KR_LOG_WARN : KR_LOG_INFO,
          "http_request_failed", "service=%s code=%s reason=%s", hx->sv->name,
          kr_code_name(code), kr__log_quote(q, sizeof(q), why, strlen(why)));
  kr_stream *s = hx->s;
  if (s) {
    hx->s = NULL;
    kr__stream_set_handler(s, NULL);
    kr_stream_set_user_data(s, NULL);
    kr_stream_reset(s, code, why);
  }
}

/* Hands queued request bytes to the transport and returns stream credit
 * for what it took; starts the response-head timer once all is sent. */
static void flush_out(hs_exchange *hx) {
  hs_conn *c = hx->c;
  if (!c || !c->t || !c->open)
    return;
  while (evbuffer_get_length(hx->out) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(hx->out, -1, NULL, &v, 1) < 1)
      break;
    size_t w = c->t->ops->write(c->t, v.iov_base, v.iov_len);
    evbuffer_drain(hx->out, w);
    if (w < v.iov_len)
      break; /* on_drain comes back here */
  }
  size_t left = evbuffer_get_length(hx->out);
  if (hx->s && hx->unconsumed > left) {
    kr_stream_consume(hx->s, hx->unconsumed - left);
    hx->unconsumed = left;
  }
  if (left == 0 && hx->req_fin)
    hx->req_sent = 1;
  if (left == 0 && !hx->head_timer_started && !hx->replied &&
      (hx->req_fin || hx->mode == BODY_RAW)) {
    hx->head_timer_started = 1;
    set_timer(c, T_HEAD, hx->sv->head_ms);
  }
}

static void attach(hs_exchange *hx, hs_conn *c) {
  hx->c = c;
  c->hx = hx;
  kr__http_parser_expect_head_response(c->p, hx->is_head);
}

/* Gives the exchange a connection: a pooled one if allowed, else a new
 * one. Resets the stream when none can be started. */
static void start_conn(hs_exchange *hx, int allow_pool) {
  kr__http_service *sv = hx->sv;
  hs_conn *c = allow_pool ? pool_get(sv) : NULL;
  if (c) {
    sv->st.reused++;
    attach(hx, c);
    flush_out(hx);
    return;
  }
  int rc = conn_new(sv, &c);
  if (rc < 0) {
    hx_fail(hx, rc == KR_EADDR ? KR_CODE_UPSTREAM : KR_CODE_INTERNAL,
            rc == KR_EADDR ? "cannot resolve upstream %s" : "out of memory",
            sv->where);
    return;
  }
  attach(hx, c);
  set_timer(c, T_CONNECT, sv->connect_ms);
}

/* A request without a body failed on a reused connection before any
 * response byte (the upstream closed it while idle): once more on a
 * fresh connection. */
static void retry(hs_exchange *hx) {
  release_conn(hx, 0);
  hx->retried = 1;
  hx->sv->st.retries++;
  evbuffer_drain(hx->out, evbuffer_get_length(hx->out));
  if (evbuffer_add(hx->out, hx->head.p, hx->head.len) != 0) {
    hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  hx->req_sent = 0;
  hx->head_timer_started = 0;
  evbuffer_drain(hx->in, evbuffer_get_length(hx->in));
  start_conn(hx, 0);
}

/* ------------------------------------------------------ response side */

static int keep_all(const char *name, size_t len, void *ud) {
  return 0;
}

static int p_head(const kr__http_head *h, void *ud) {
  hs_conn *c = ud;
  hs_exchange *hx = c->hx;
  if (!hx || !hx->s)
    return KR_ECLOSED;
  if (h->status >= 100 && h->status < 200 && h->status != 101) {
    hx->interim = 1; /* 100 Continue, 103 Early Hints: not relayed */
    return 0;
  }
  set_timer(c, T_NONE, 0);
  if (h->status == 101 && !hx->is_upgrade) {
    hx_fail(hx, KR_CODE_UPSTREAM,
            "upstream %s switched protocols without an upgrade request",
            hx->sv->where);
    return KR_EPROTO;
  }
  kr__mdlist l;
  kr__mdlist_init(&l);
  char status[8];
  snprintf(status, sizeof(status), "%03d", h->status);
  int rc = kr__mdlist_adds(&l, KR_MD_STATUS, status);
  if (rc == 0)
    rc = kr__http_copy_fields(&l, h, keep_all, NULL);
  int fin = h->status != 101 && !h->has_body;
  if (rc == 0)
    rc = kr_stream_reply(hx->s, l.md, l.n, fin);
  kr__mdlist_free(&l);
  if (rc == KR_ETOOBIG) {
    hx_fail(hx, KR_CODE_UPSTREAM, "response header too large: upstream %s",
            hx->sv->where);
    return KR_ETOOBIG;
  }
  if (rc < 0) {
    if (rc != KR_ECLOSED)
      hx_fail(hx, KR_CODE_INTERNAL, "cannot relay the response head");
    return rc;
  }
  kr__log(KR_LOG_DEBUG, "http_response", "service=%s status=%d", hx->sv->name,
          h->status);
  hx->replied = 1;
  hx->reply_fin = fin;
  hx->resp_keep_alive = h->keep_alive;
  if (h->status == 101)
    hx->upgraded = 1;
  return 0;
}

static int p_body(const uint8_t *p, size_t n, void *ud) {
  hs_conn *c = ud;
  hs_exchange *hx = c->hx;
  if (!hx || !hx->s)
    return KR_ECLOSED;
  int64_t w = kr_stream_write(hx->s, p, n);
  if (w == KR_EAGAIN)
    w = 0;
  if (w < 0) {
    if (w != KR_ECLOSED)
      hx_fail(hx, KR_CODE_INTERNAL, "cannot relay the response body");
    return KR_ECLOSED;
  }
  if ((size_t)w < n) {
    /* The stream is full: keep the rest, stop until on_writable. */
    if (evbuffer_add(hx->hold, p + w, n - (size_t)w) != 0) {
      hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
      return KR_ENOMEM;
    }
    hx->parse_paused = 1;
    return KR__HTTP_PAUSE;
  }
  return 0;
}

static int p_end(void *ud) {
  hs_conn *c = ud;
  hs_exchange *hx = c->hx;
  if (!hx)
    return KR_ECLOSED;
  if (hx->interim) {
    hx->interim = 0;
    hx->interim_end = 1;
  } else if (!hx->upgraded) {
    hx->resp_done = 1;
  }
  return 0;
}

static const kr__http_parser_cbs parser_cbs = {p_head, p_body, p_end};

/* Writes held response bytes to the stream; 1 when all went. */
static int flush_hold(hs_exchange *hx) {
  while (evbuffer_get_length(hx->hold) > 0) {
    if (!hx->s)
      return 0;
    struct evbuffer_iovec v;
    if (evbuffer_peek(hx->hold, -1, NULL, &v, 1) < 1)
      return 0;
    int64_t w = kr_stream_write(hx->s, v.iov_base, v.iov_len);
    if (w == KR_EAGAIN || w == 0)
      return 0;
    if (w < 0) {
      if (w != KR_ECLOSED)
        hx_fail(hx, KR_CODE_INTERNAL, "cannot relay the response body");
      return 0;
    }
    evbuffer_drain(hx->hold, (size_t)w);
  }
  return 1;
}

/* Takes upstream bytes: raw after a 101, else through the parser.
 * Returns how many were used (the rest stays with the caller). */
static size_t consume(hs_exchange *hx, const uint8_t *d, size_t n) {
  if (hx->upgraded) {
    int64_t w = hx->s ? kr_stream_write(hx->s, d, n) : KR_ECLOSED;
    if (w == KR_EAGAIN)
      w = 0;
    if (w < 0) {
      if (w != KR_ECLOSED)
        hx_fail(hx, KR_CODE_INTERNAL, "cannot relay upgraded bytes");
      return 0;
    }
    if ((size_t)w < n && evbuffer_add(hx->hold, d + w, n - (size_t)w) != 0) {
      hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
      return 0;
    }
    return n;
  }
  int64_t r = kr__http_parser_feed(hx->c->p, d, n);
  if (r < 0) {
    if (!hx->failed && hx->s && r == KR_ETOOBIG)
      hx_fail(hx, KR_CODE_UPSTREAM, "%s: upstream %s",
              kr__http_parser_error(hx->c->p), hx->sv->where);
    else if (!hx->failed && hx->s)
      hx_fail(hx, KR_CODE_UPSTREAM, "malformed response from upstream %s: %s",
              hx->sv->where, kr__http_parser_error(hx->c->p));
    return 0;
  }
  if (hx->interim_end) {
    hx->interim_end = 0;
    kr__http_parser_resume(hx->c->p);
  } else if (r == 0 && !hx->resp_done && !hx->upgraded && !hx->parse_paused) {
    hx_fail(hx, KR_CODE_UPSTREAM, "malformed response from upstream %s",
            hx->sv->where);
  }
  return (size_t)r;
}

/* The exchange's response is complete: end the stream's sending side and
 * pool the connection if it can carry another exchange. */
static void finish_response(hs_exchange *hx, size_t leftover) {
  if (hx->s && !hx->reply_fin && !hx->out_fin) {
    hx->out_fin = 1;
    kr_stream_close_write(hx->s); /* may end the stream at once */
  }
  hs_conn *c = hx->c;
  int reuse = !hx->failed && !hx->aborted && c->t && hx->resp_keep_alive &&
              !hx->is_upgrade && hx->req_sent && leftover == 0 &&
              evbuffer_get_length(hx->in) == 0 && !hx->up_eof;
  release_conn(hx, reuse);
}

/* The upstream closed and everything it sent was relayed. */
static void upstream_ended(hs_exchange *hx) {
  if (hx->upgraded) {
    if (hx->s && !hx->out_fin) {
      hx->out_fin = 1;
      kr_stream_close_write(hx->s);
    }
    release_conn(hx, 0);
    return;
  }
  int rc = kr__http_parser_eof(hx->c->p);
  if (rc == 0 && hx->resp_done) {
    finish_response(hx, 0);
    return;
  }
  hx_fail(hx, KR_CODE_UPSTREAM,
          hx->replied ? "upstream %s closed the connection mid-response"
                      : "upstream %s closed the connection before responding",
          hx->sv->where);
}

/* Moves upstream input (p[0..n) first queued behind earlier input) on as
 * far as the stream takes it, then decides about reading, the end of the
 * response and the end of the upstream. */
static void drive(hs_exchange *hx, const uint8_t *p, size_t n) {
  if (n > 0 && evbuffer_get_length(hx->in) > 0) {
    if (evbuffer_add(hx->in, p, n) != 0) {
      hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
      return;
    }
    n = 0;
  }
  while (!hx->failed && hx->c) {
    if (!flush_hold(hx))
      break; /* on_writable comes back */
    if (hx->resp_done)
      break;
    if (hx->parse_paused) {
      hx->parse_paused = 0;
      kr__http_parser_resume(hx->c->p);
    }
    size_t k;
    if (n > 0) {
      k = consume(hx, p, n);
      p += k;
      n -= k;
    } else if (evbuffer_get_length(hx->in) > 0) {
      struct evbuffer_iovec v;
      if (evbuffer_peek(hx->in, -1, NULL, &v, 1) < 1)
        break;
      k = consume(hx, v.iov_base, v.iov_len);
      evbuffer_drain(hx->in, k);
    } else {
      break;
    }
  }
  if (hx->failed || !hx->c)
    return;
  if (n > 0 && evbuffer_add(hx->in, p, n) != 0) {
    hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  int stalled = evbuffer_get_length(hx->hold) > 0;
  if (hx->resp_done && !stalled) {
    finish_response(hx, evbuffer_get_length(hx->in));
    return;
  }
  hs_conn *c = hx->c;
  if (c->t)
    c->t->ops->set_reading(c->t, !stalled && evbuffer_get_length(hx->in) == 0 &&
                                     !hx->parse_paused);
  if (hx->up_eof && !stalled && evbuffer_get_length(hx->in) == 0)
    upstream_ended(hx);
}

/* --------------------------------------------------- transport callbacks */

static void t_open(kr__transport *t, void *ud) {
  hs_conn *c = ud;
  hs_exchange *hx = c->hx;
  c->open = 1;
  if (!hx)
    return;
  hx_enter(hx);
  set_timer(c, T_NONE, 0);
  t->ops->set_reading(t, 1);
  flush_out(hx);
  hx_leave(hx);
}

static void t_read(kr__transport *t, const uint8_t *p, size_t n, void *ud) {
  hs_conn *c = ud;
  hs_exchange *hx = c->hx;
  if (!hx) {
    /* An idle connection must stay silent. */
    conn_destroy(c);
    return;
  }
  hx_enter(hx);
  hx->resp_started = 1;
  drive(hx, p, n);
  hx_leave(hx);
}

static void t_drain(kr__transport *t, void *ud) {
  hs_conn *c = ud;
  hs_exchange *hx = c->hx;
  if (!hx)
    return;
  hx_enter(hx);
  flush_out(hx);
  hx_leave(hx);
}

static void t_close(kr__transport *t, int err, const char *why, void *ud) {
  hs_conn *c = ud;
  hs_exchange *hx = c->hx;
  c->t = NULL;
  t->ops->free(t);
  if (!hx) {
    conn_destroy(c);
    return;
  }
  hx_enter(hx);
  kr__http_service *sv = hx->sv;
  if (!c->open) {
    hx_fail(hx, KR_CODE_UPSTREAM, "cannot connect to upstream %s: %s",
            sv->where, why);
  } else if (c->reused && !hx->resp_started && hx->no_body && !hx->retried) {
    retry(hx);
  } else if (!hx->resp_started) {
    hx_fail(hx, KR_CODE_UPSTREAM,
            "upstream %s closed the connection before responding (%s)",
            sv->where, why);
  } else {
    hx->up_eof = 1;
    drive(hx, NULL, 0);
  }
  hx_leave(hx);
}

static const kr__transport_cbs conn_tcbs = {t_open, t_read, t_drain, t_close};

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  hs_conn *c = arg;
  hs_exchange *hx = c->hx;
  enum conn_timer kind = c->timer_kind;
  c->timer_kind = T_NONE;
  if (!hx) {
    conn_destroy(c); /* idle too long */
    return;
  }
  hx_enter(hx);
  if (kind == T_CONNECT)
    hx_fail(hx, KR_CODE_UPSTREAM, "connecting to upstream %s timed out",
            hx->sv->where);
  else if (kind == T_HEAD)
    hx_fail(hx, KR_CODE_UPSTREAM, "upstream %s sent no response in %.1f s",
            hx->sv->where, hx->sv->head_ms / 1000.0);
  hx_leave(hx);
}

/* ------------------------------------------------------ stream callbacks */

static void s_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  hs_exchange *hx = ud;
  hx_enter(hx);
  hs_conn *c = hx->c;
  if (!c || !c->t || hx->failed || hx->mode == BODY_NONE) {
    kr_stream_consume(s, n); /* nobody wants it any more */
    hx_leave(hx);
    return;
  }
  int rc = 0;
  if (hx->mode == BODY_LENGTH) {
    if (n > hx->body_left) {
      hx_fail(hx, KR_CODE_PROTOCOL,
              "request body longer than its content-length");
      hx_leave(hx);
      return;
    }
    hx->body_left -= n;
    rc = evbuffer_add(hx->out, p, n);
  } else if (hx->mode == BODY_CHUNKED) {
    char line[24];
    size_t ll = kr__http_chunk_line(line, n);
    rc = evbuffer_add(hx->out, line, ll) | evbuffer_add(hx->out, p, n) |
         evbuffer_add(hx->out, "\r\n", 2);
  } else {
    rc = evbuffer_add(hx->out, p, n);
  }
  if (rc != 0) {
    hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
    hx_leave(hx);
    return;
  }
  hx->unconsumed += n;
  flush_out(hx);
  hx_leave(hx);
}

static void s_fin(kr_stream *s, void *ud) {
  hs_exchange *hx = ud;
  hx_enter(hx);
  hx->req_fin = 1;
  if (!hx->c || !hx->c->t || hx->failed) {
    /* The response ended already: the rest of the request is moot. */
  } else if (hx->mode == BODY_LENGTH && hx->body_left > 0) {
    hx_fail(hx, KR_CODE_PROTOCOL,
            "request body shorter than its content-length");
  } else if (hx->mode == BODY_CHUNKED &&
             evbuffer_add(hx->out, "0\r\n\r\n", 5) != 0) {
    hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
  } else {
    flush_out(hx);
  }
  hx_leave(hx);
}

static void s_writable(kr_stream *s, void *ud) {
  hs_exchange *hx = ud;
  hx_enter(hx);
  drive(hx, NULL, 0);
  hx_leave(hx);
}

static void s_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  hs_exchange *hx = ud;
  hx_enter(hx);
  hx->s = NULL;
  if (code != KR_CODE_NO_ERROR) {
    hx->aborted = 1; /* its connection is never reused */
    char q[300];
    kr__log(KR_LOG_INFO, "http_request_aborted", "service=%s code=%s reason=%s",
            hx->sv->name, kr_code_name(code),
            kr__log_quote(q, sizeof(q), (const char *)reason, len));
  }
  hx_leave(hx);
}

static const kr__stream_handler hs_handler = {NULL, s_data, s_fin, s_writable,
                                              s_close};

/* -------------------------------------------------------- request head */

static int md_name_is(const kr_md *m, const char *name) {
  size_t l = strlen(name);
  return m->name_len == l && strncasecmp((const char *)m->name, name, l) == 0;
}

static int parse_length(const kr_md *m, uint64_t *out) {
  if (m->value_len == 0 || m->value_len > 18)
    return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < m->value_len; i++) {
    if (m->value[i] < '0' || m->value[i] > '9')
      return -1;
    v = v * 10 + (uint64_t)(m->value[i] - '0');
  }
  *out = v;
  return 0;
}

static kr_md field(const char *name, const void *value, size_t len) {
  kr_md m = {(const uint8_t *)name, strlen(name), (const uint8_t *)value, len};
  return m;
}

/* Builds the request head into hx->head and chooses the body mode.
 * On failure the stream is reset (with the reason) and -1 returned. */
static int build_head(hs_exchange *hx, const kr_md *md, size_t n, int fin,
                      const kr_md *extra, size_t n_extra,
                      kr__http_field_filter drop, void *drop_ud) {
  kr__http_service *sv = hx->sv;
  const kr_md *method = kr__md_find(md, n, KR_MD_METHOD);
  const kr_md *path = kr__md_find(md, n, KR_MD_PATH);
  if (!method || !path) {
    hx_fail(hx, KR_CODE_PROTOCOL, "an HTTP stream needs :method and :path");
    return -1;
  }
  char meth[32];
  if (!kr__http_token_ok(method->value, method->value_len) ||
      method->value_len >= sizeof(meth)) {
    hx_fail(hx, KR_CODE_PROTOCOL, "invalid :method");
    return -1;
  }
  memcpy(meth, method->value, method->value_len);
  meth[method->value_len] = 0;
  if (path->value_len == 0 || path->value[0] != '/') {
    hx_fail(hx, KR_CODE_PROTOCOL, ":path must start with '/'");
    return -1;
  }
  for (size_t i = 0; i < path->value_len; i++)
    if (path->value[i] <= 0x20 || path->value[i] == 0x7f) {
      hx_fail(hx, KR_CODE_PROTOCOL, "invalid byte in :path");
      return -1;
    }
  hx->is_head = strcmp(meth, "HEAD") == 0;

  /* Upgrade: an "upgrade" field and a Connection field naming it. */
  const kr_md *upgrade = NULL;
  int conn_upgrade = 0;
  for (size_t i = 0; i < n; i++) {
    if (md_name_is(&md[i], "upgrade") && !upgrade)
      upgrade = &md[i];
    else if (md_name_is(&md[i], "connection") &&
             kr__http_list_has(md[i].value, md[i].value_len, "upgrade", 7))
      conn_upgrade = 1;
  }
  hx->is_upgrade = upgrade && conn_upgrade && upgrade->value_len > 0;

  kr_md *f = malloc((n + 1) * sizeof(kr_md));
  kr_md *x = malloc((n_extra + 4) * sizeof(kr_md));
  kr__strbuf target;
  kr__strbuf_init(&target);
  int ret = -1;
  if (!f || !x) {
    hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
    goto out;
  }
  size_t nf = 0, nx = 0;
  f[nf++] = field("host", sv->host_field, strlen(sv->host_field));
  const kr_md *cl = NULL;
  for (size_t i = 0; i < n; i++) {
    const kr_md *m = &md[i];
    if (m->name_len > 0 && m->name[0] == ':')
      continue;
    if (!kr__http_token_ok(m->name, m->name_len)) {
      hx_fail(hx, KR_CODE_PROTOCOL, "invalid request field name");
      goto out;
    }
    if (md_name_is(m, "content-length")) {
      if (cl) {
        hx_fail(hx, KR_CODE_PROTOCOL, "more than one content-length");
        goto out;
      }
      cl = m;
      continue;
    }
    if (kr__http_is_hop_by_hop((const char *)m->name, m->name_len, md, n) ||
        md_name_is(m, "host") || md_name_is(m, "expect"))
      continue;
    if (drop && drop((const char *)m->name, m->name_len, drop_ud))
      continue;
    f[nf++] = *m;
  }
  uint64_t len = 0;
  if (cl && parse_length(cl, &len) < 0) {
    hx_fail(hx, KR_CODE_PROTOCOL, "invalid content-length");
    goto out;
  }
  if (hx->is_upgrade) {
    hx->mode = BODY_RAW;
    x[nx++] = field("connection", "upgrade", 7);
    x[nx++] = field("upgrade", upgrade->value, upgrade->value_len);
    if (cl)
      x[nx++] = *cl;
  } else if (fin) {
    hx->mode = BODY_NONE;
    if (cl || strcmp(meth, "POST") == 0 || strcmp(meth, "PUT") == 0 ||
        strcmp(meth, "PATCH") == 0)
      x[nx++] = field("content-length", "0", 1);
  } else if (cl) {
    hx->mode = BODY_LENGTH;
    hx->body_left = len;
    x[nx++] = *cl;
  } else {
    hx->mode = BODY_CHUNKED;
    x[nx++] = field("transfer-encoding", "chunked", 7);
  }
  for (size_t i = 0; i < n_extra; i++)
    x[nx++] = extra[i];
  kr__strbuf_add(&target, sv->base_path, strlen(sv->base_path));
  kr__strbuf_add(&target, path->value, path->value_len);
  if (target.failed) {
    hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
    goto out;
  }
  int rc = kr__http_write_request_head(&hx->head, meth, target.p, target.len, f,
                                       nf, x, nx);
  if (rc < 0) {
    if (rc == KR_EPROTO)
      hx_fail(hx, KR_CODE_PROTOCOL, "invalid request field value");
    else
      hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
    goto out;
  }
  ret = 0;
out:
  kr__strbuf_free(&target);
  free(f);
  free(x);
  return ret;
}

/* ------------------------------------------------------------- service */

void kr__http_service_serve(kr__http_service *sv, kr_stream *s, const kr_md *md,
                            size_t n, int fin, const kr_md *extra,
                            size_t n_extra, kr__http_field_filter drop,
                            void *drop_ud) {
  hs_exchange *hx = calloc(1, sizeof(*hx));
  if (!hx) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  hx->sv = sv;
  hx->s = s;
  kr__strbuf_init(&hx->head);
  hx->next = sv->exchanges;
  if (sv->exchanges)
    sv->exchanges->prev = hx;
  sv->exchanges = hx;
  sv->st.exchanges++;
  hx_enter(hx);
  hx->out = evbuffer_new();
  hx->in = evbuffer_new();
  hx->hold = evbuffer_new();
  if (!hx->out || !hx->in || !hx->hold) {
    hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
  } else if (build_head(hx, md, n, fin, extra, n_extra, drop, drop_ud) == 0) {
    kr_stream_set_user_data(s, hx);
    kr__stream_set_handler(s, &hs_handler);
    hx->no_body = fin;
    hx->req_fin = fin;
    if (evbuffer_add(hx->out, hx->head.p, hx->head.len) != 0)
      hx_fail(hx, KR_CODE_INTERNAL, "out of memory");
    else
      start_conn(hx, 1);
  }
  hx_leave(hx);
}

int kr__http_service_new(struct event_base *base, const char *name,
                         const char *url, const char *ca_file, int verify,
                         kr__http_service **out, char *err, size_t errlen) {
  kr__url u;
  int rc = kr__url_parse(url, &u, err, errlen);
  if (rc < 0)
    return rc;
  if (u.scheme != KR__SCHEME_HTTP && u.scheme != KR__SCHEME_HTTPS) {
    snprintf(err, errlen,
             "bad URL \"%.200s\": an HTTP service needs http:// "
             "or https://",
             url);
    return KR_EADDR;
  }
  kr__http_service *sv = calloc(1, sizeof(*sv));
  if (!sv)
    return KR_ENOMEM;
  sv->base = base;
  snprintf(sv->name, sizeof(sv->name), "%s", name ? name : "http");
  sv->url = u;
  sv->url.scheme =
      u.scheme == KR__SCHEME_HTTPS ? KR__SCHEME_TLS : KR__SCHEME_TCP;
  size_t pl = strlen(u.path);
  while (pl > 0 && u.path[pl - 1] == '/')
    pl--;
  snprintf(sv->base_path, sizeof(sv->base_path), "%.*s", (int)pl, u.path);
  int v6 = strchr(u.host, ':') != NULL;
  int default_port = u.port == (u.scheme == KR__SCHEME_HTTPS ? 443 : 80);
  snprintf(sv->where, sizeof(sv->where), v6 ? "[%s]:%d" : "%s:%d", u.host,
           u.port);
  if (default_port)
    snprintf(sv->host_field, sizeof(sv->host_field), v6 ? "[%s]" : "%s",
             u.host);
  else
    snprintf(sv->host_field, sizeof(sv->host_field), "%s", sv->where);
  sv->connect_ms = KR__HTTP_SERVICE_CONNECT_MS;
  sv->head_ms = KR__HTTP_SERVICE_HEAD_MS;
  sv->idle_ms = KR__HTTP_SERVICE_IDLE_MS;
  rc = kr__dialer_init(&sv->dialer, base, &sv->url, ca_file, verify, err,
                       errlen);
  if (rc < 0) {
    free(sv);
    return rc;
  }
  *out = sv;
  return 0;
}

void kr__http_service_free(kr__http_service *sv) {
  if (!sv)
    return;
  while (sv->exchanges) {
    hs_exchange *hx = sv->exchanges;
    if (hx->s) {
      kr__stream_set_handler(hx->s, NULL);
      kr_stream_set_user_data(hx->s, NULL);
      hx->s = NULL;
    }
    release_conn(hx, 0);
    hx_free(hx);
  }
  while (sv->conns)
    conn_destroy(sv->conns);
  kr__dialer_free(&sv->dialer);
  free(sv);
}

void kr__http_service_set_timeouts(kr__http_service *sv, int connect_ms,
                                   int head_ms, int idle_ms) {
  if (connect_ms > 0)
    sv->connect_ms = connect_ms;
  if (head_ms > 0)
    sv->head_ms = head_ms;
  if (idle_ms > 0)
    sv->idle_ms = idle_ms;
}

void kr__http_service_get_stats(const kr__http_service *sv,
                                kr__http_service_stats *out) {
  *out = sv->st;
  out->idle = sv->n_idle;
}
