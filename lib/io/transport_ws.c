/* WebSocket transports over libwebsockets (see transport_ws.h).
 *
 * Lifetimes. A ws_transport belongs to its owner until the owner calls
 * free(); its socket (the wsi) belongs to libwebsockets until
 * LWS_CALLBACK_WSI_DESTROY. The memory goes when both are over and no
 * handler of this module is still using it (refs). Owner callbacks are
 * made only while the transport is not freed, and on_close at most once.
 *
 * Re-entrancy. Every call into libwebsockets that may call back is
 * bracketed by ctx_enter()/ctx_leave(). Work that must not run inside a
 * libwebsockets callback (killing another socket, destroying the context)
 * is queued and done by the ctx_leave() that brings the depth back to 0.
 */
#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <libwebsockets.h>
#include <mbedtls/platform_util.h>

#include <kasroute/error.h>
#include <kasroute/mux.h>

#include "core/frame.h"
#include "log.h"
#include "transport_ws.h"

/* Per-connection receive buffer of libwebsockets (one read per readiness
 * is at most this much) and the per-context service buffer. */
#define WS_RX_BUFFER ((size_t)64 << 10)
#define WS_SERV_BUF ((unsigned)256 << 10)
/* Largest upgrade request header block accepted (tokens up to 8 KiB). */
#define WS_MAX_HEADER_DATA 16384
#define WS_MAX_BEARER 8192
#define WS_DEFAULT_HANDSHAKE_MS 10000

/* ====================================================== framing helpers */

void kr__ws_txq_init(kr__ws_txq *q, size_t pre) {
  memset(q, 0, sizeof(*q));
  q->pre = pre;
  q->head = q->scan = q->tail = pre;
}

void kr__ws_txq_free(kr__ws_txq *q) {
  free(q->buf);
  kr__ws_txq_init(q, q->pre);
}

size_t kr__ws_txq_buffered(const kr__ws_txq *q) {
  return q->tail - q->head;
}

size_t kr__ws_txq_room(const kr__ws_txq *q, size_t limit) {
  size_t queued = q->tail - q->head;
  if (q->tail - q->scan >= KR_FRAME_HEADER_SIZE) {
    /* Where the partial trailing frame ends, counted from the head. */
    size_t end = q->scan - q->head + KR_FRAME_HEADER_SIZE +
                 kr__get_u24(q->buf + q->scan);
    if (end > limit)
      limit = end;
  }
  return queued >= limit ? 0 : limit - queued;
}

int kr__ws_txq_append(kr__ws_txq *q, const uint8_t *p, size_t n) {
  if (n == 0)
    return 0;
  if (q->tail + n > q->cap) {
    /* Reuse the sent space first, then grow. */
    if (q->head > q->pre && q->buf) {
      size_t len = q->tail - q->head, shift = q->head - q->pre;
      memmove(q->buf + q->pre, q->buf + q->head, len);
      q->head -= shift;
      q->scan -= shift;
      q->tail -= shift;
    }
    if (q->tail + n > q->cap) {
      size_t need = q->tail + n, cap = q->cap ? q->cap : (size_t)64 << 10;
      while (cap < need)
        cap *= 2;
      uint8_t *nb = realloc(q->buf, cap);
      if (!nb)
        return KR_ENOMEM;
      q->buf = nb;
      q->cap = cap;
    }
  }
  memcpy(q->buf + q->tail, p, n);
  q->tail += n;
  while (q->tail - q->scan >= KR_FRAME_HEADER_SIZE) {
    size_t f = KR_FRAME_HEADER_SIZE + kr__get_u24(q->buf + q->scan);
    if (q->tail - q->scan < f)
      break;
    q->scan += f;
  }
  return 0;
}

size_t kr__ws_txq_next(const kr__ws_txq *q, size_t max, uint8_t **p) {
  size_t off = q->head;
  while (off < q->scan) {
    size_t f = KR_FRAME_HEADER_SIZE + kr__get_u24(q->buf + off);
    if (off > q->head && off + f - q->head > max)
      break;
    off += f;
  }
  *p = q->buf ? q->buf + q->head : NULL;
  return off - q->head;
}

void kr__ws_txq_consume(kr__ws_txq *q, size_t n) {
  q->head += n;
  if (q->head == q->tail) {
    q->head = q->scan = q->tail = q->pre;
    /* An idle connection does not keep a burst's worth of memory. */
    if (q->cap > KR__TRANSPORT_LOW_WATER) {
      free(q->buf);
      q->buf = NULL;
      q->cap = 0;
    }
  }
}

void kr__ws_rx_feed(kr__ws_rx *r, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (r->have < KR_FRAME_HEADER_SIZE) {
      if (r->have < 3)
        r->hdr[r->have] = *p;
      r->have++;
      p++;
      n--;
      if (r->have == KR_FRAME_HEADER_SIZE) {
        r->left = kr__get_u24(r->hdr);
        if (r->left == 0)
          r->have = 0;
      }
      continue;
    }
    size_t k = n < r->left ? n : r->left;
    r->left -= (uint32_t)k;
    p += k;
    n -= k;
    if (r->left == 0)
      r->have = 0;
  }
}

int kr__ws_rx_at_boundary(const kr__ws_rx *r) {
  return r->have == 0;
}

/* ============================================================ structures */

typedef struct ws_transport ws_transport;

struct kr__ws_ctx {
  struct event_base *base;
  struct lws_context *lws;
  struct lws_vhost *vh;
  struct event *tick; /* lws_service() for libwebsockets' own timers */
  struct event *svc;  /* more buffered work than one pass handled */
  int depth;          /* nesting of our calls into libwebsockets */
  int free_pending;   /* kr__ws_ctx_free() came while depth > 0 */
  int destroying;     /* lws_context_destroy() is running */
  int tls, verify;
  SSL_CTX *client_ssl; /* ours, handed to libwebsockets (see ssl_new) */
  ws_transport *kills; /* freed transports whose socket must be killed */
};

struct ws_transport {
  kr__transport base;
  kr__ws_ctx *x; /* NULL once the socket is gone */
  struct lws *wsi;
  evutil_socket_t fd;
  /* One event for both directions: freeing it after libwebsockets closed
   * the socket is then a plain delete, which libevent tolerates. */
  struct event *ev, *timer;
  /* Writes are tried at once, from the loop, as if the socket had
   * reported writability; EV_WRITE is registered only while
   * libwebsockets holds output the socket did not take. */
  struct event *flush;
  short ev_on; /* EV_READ / EV_WRITE registered now */
  kr__ws_txq q;
  kr__ws_rx rx;
  char *bearer; /* server: received; client: to send */
  size_t bearer_len;
  int handshake_ms;
  int refs;            /* handlers of this module using the memory */
  int peer_close;      /* close status the peer sent, 0 if none */
  char cert_error[80]; /* why the server certificate was refused */
  unsigned client : 1, open : 1, dead : 1, setup : 1;
  unsigned want_read : 1, rd_want : 1, wr_want : 1, rx_paused : 1;
  unsigned want_writable : 1, poke : 1, want_drain : 1;
  /* flush_cb found libwebsockets unwilling to call back (a closing
   * state): the one-second service pass takes over. */
  unsigned stalled : 1;
  unsigned kick_rd : 1; /* serve input held while paused (flush_cb) */
  unsigned writeables;  /* writeable callbacks made, for flush_cb */
  unsigned closing : 1, reported : 1, freed : 1, kill_queued : 1;
  ws_transport *kill_next;
};

static const kr__transport_ops ws_ops;

/* =============================================================== context */

static void ctx_destroy(kr__ws_ctx *x);
static void service_pending(kr__ws_ctx *x);

static void ctx_enter(kr__ws_ctx *x) {
  x->depth++;
}

static void fd_cb(evutil_socket_t fd, short what, void *arg);

static void kill_wsi(ws_transport *t);

/* Leaves a call into libwebsockets. At depth 0 runs the queued kills and a
 * deferred destruction. Returns 1 when x is gone. */
static int ctx_leave(kr__ws_ctx *x) {
  if (x->depth > 1) {
    x->depth--;
    return 0;
  }
  /* Still at depth 1: kills below nest and queue nothing new for us. */
  while (x->kills && !x->free_pending) {
    ws_transport *t = x->kills;
    x->kills = t->kill_next;
    t->kill_queued = 0;
    t->kill_next = NULL;
    if (t->wsi)
      kill_wsi(t);
  }
  x->depth = 0;
  if (x->free_pending) {
    ctx_destroy(x);
    return 1;
  }
  return 0;
}

static void unqueue_kill(ws_transport *t) {
  if (!t->kill_queued || !t->x)
    return;
  for (ws_transport **pp = &t->x->kills; *pp; pp = &(*pp)->kill_next)
    if (*pp == t) {
      *pp = t->kill_next;
      break;
    }
  t->kill_queued = 0;
  t->kill_next = NULL;
}

/* Runs work libwebsockets has buffered (TLS records, input held while
 * paused and now allowed) until none is left; hands a long tail to the
 * next loop pass so that other events are not starved. */
static void service_pending(kr__ws_ctx *x) {
  for (int i = 0; i < 16; i++) {
    if (x->free_pending || lws_service_adjust_timeout(x->lws, 1, 0) != 0)
      return;
    lws_service_tsi(x->lws, -1, 0);
  }
  if (!x->free_pending && lws_service_adjust_timeout(x->lws, 1, 0) == 0)
    event_active(x->svc, EV_TIMEOUT, 0);
}

static void svc_cb(evutil_socket_t fd, short what, void *arg) {
  kr__ws_ctx *x = arg;
  ctx_enter(x);
  service_pending(x);
  ctx_leave(x);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg) {
  kr__ws_ctx *x = arg;
  ctx_enter(x);
  lws_service(x->lws, -1);
  service_pending(x);
  ctx_leave(x);
}

static void lws_log_cb(int level, const char *line) {
  char q[400];
  size_t n = strlen(line);
  while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    n--;
  kr__log(KR_LOG_DEBUG, "websocket_library", "lws_level=%d msg=%s", level,
          kr__log_quote(q, sizeof(q), line, n));
}

static void log_once(void) {
  lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_cb);
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
                       void *user, void *in, size_t len);

static const struct lws_protocols ws_protocols[] = {
    {.name = KR__WS_PROTOCOL,
     .callback = ws_callback,
     .per_session_data_size = 0,
     .rx_buffer_size = WS_RX_BUFFER,
     /* One message goes to the socket in one send (lws_issue_raw cuts
      * sends at this size and copies the rest). */
     .tx_packet_size = KR__WS_MSG_MAX + 16},
    {.name = NULL}};

/* The client SSL_CTX of a TLS context. libwebsockets 4.1 would make it
 * itself, but it finds its own bookkeeping through an OpenSSL ex_data
 * index that every new context allocates afresh, so the SSL_CTX of any
 * earlier context (with a whole CA store) is never freed. Made here and
 * handed over as provided_client_ssl_ctx, it is freed with the context.
 * load: load ca_file, or the system store when ca_file is NULL. */
static int ssl_new(const char *ca_file, int load, SSL_CTX **out, char *err,
                   size_t errlen) {
  SSL_CTX *c = SSL_CTX_new(TLS_client_method());
  if (!c) {
    snprintf(err, errlen, "cannot create a TLS client context");
    return KR_ENOMEM;
  }
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION);
  /* libwebsockets may retry a write from another address. */
  SSL_CTX_set_mode(c, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
  if (load && (ca_file ? SSL_CTX_load_verify_locations(c, ca_file, NULL)
                       : SSL_CTX_set_default_verify_paths(c)) != 1) {
    ERR_clear_error();
    SSL_CTX_free(c);
    snprintf(err, errlen, "cannot load CA certificates from %.200s",
             ca_file ? ca_file : "the system store");
    return KR_ETLS;
  }
  *out = c;
  return 0;
}

/* Makes the context (client_ssl: NULL or an SSL_CTX whose ownership
 * passes, also on failure). */
static int ctx_new(struct event_base *base,
                   struct lws_context_creation_info *info, SSL_CTX *client_ssl,
                   kr__ws_ctx **out, char *err, size_t errlen) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, log_once);
  kr__ws_ctx *x = calloc(1, sizeof(*x));
  if (!x) {
    if (client_ssl)
      SSL_CTX_free(client_ssl);
    return KR_ENOMEM;
  }
  x->base = base;
  x->client_ssl = client_ssl;
  if (client_ssl) {
    info->options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info->provided_client_ssl_ctx = client_ssl;
  }
  info->protocols = ws_protocols;
  info->gid = -1;
  info->uid = -1;
  info->user = x;
  info->count_threads = 1;
  info->pt_serv_buf_size = WS_SERV_BUF;
  info->max_http_header_data = WS_MAX_HEADER_DATA;
  info->timeout_secs = KR__TRANSPORT_CLOSE_TIMEOUT_S;
  /* No HTTP/2: the upgrade is plain HTTP/1.1. */
  info->alpn = "http/1.1";
  x->tick = event_new(base, -1, EV_PERSIST, tick_cb, x);
  x->svc = event_new(base, -1, 0, svc_cb, x);
  if (!x->tick || !x->svc) {
    ctx_destroy(x);
    return KR_ENOMEM;
  }
  x->lws = lws_create_context(info);
  if (!x->lws) {
    snprintf(err, errlen, "cannot create the WebSocket context%s",
             info->ssl_cert_filepath ? " (certificate or key not usable)" : "");
    ctx_destroy(x);
    return info->ssl_cert_filepath ? KR_ETLS : KR_ENOMEM;
  }
  x->vh = lws_get_vhost_by_name(x->lws, "default");
  if (!x->vh) {
    snprintf(err, errlen, "WebSocket context has no vhost");
    ctx_destroy(x);
    return KR_ENOMEM;
  }
  struct timeval tv = {1, 0};
  event_add(x->tick, &tv);
  *out = x;
  return 0;
}

static int readable_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return 0;
  fclose(f);
  return 1;
}

int kr__ws_ctx_new_server(struct event_base *base, const char *cert_file,
                          const char *key_file, kr__ws_ctx **out, char *err,
                          size_t errlen) {
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof(info));
  info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
  if (cert_file || key_file) {
    if (!cert_file || !key_file || !readable_file(cert_file) ||
        !readable_file(key_file)) {
      snprintf(err, errlen, "cannot read the certificate or key for wss://");
      return KR_ETLS;
    }
    info.ssl_cert_filepath = cert_file;
    info.ssl_private_key_filepath = key_file;
  }
  SSL_CTX *c = NULL;
  int rc = cert_file ? ssl_new(NULL, 0, &c, err, errlen) : 0;
  if (rc == 0)
    rc = ctx_new(base, &info, c, out, err, errlen);
  if (rc == 0)
    (*out)->tls = cert_file != NULL;
  return rc;
}

int kr__ws_ctx_new_client(struct event_base *base, int tls, const char *ca_file,
                          int verify, kr__ws_ctx **out, char *err,
                          size_t errlen) {
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof(info));
  info.port = CONTEXT_PORT_NO_LISTEN;
  SSL_CTX *c = NULL;
  int rc = tls ? ssl_new(ca_file, 1, &c, err, errlen) : 0;
  if (rc == 0)
    rc = ctx_new(base, &info, c, out, err, errlen);
  if (rc == 0) {
    (*out)->tls = tls ? 1 : 0;
    (*out)->verify = verify ? 1 : 0;
  }
  return rc;
}

/* Destroys now: every socket is closed with callbacks to nobody; the
 * transports left over become inert. */
static void ctx_destroy(kr__ws_ctx *x) {
  x->destroying = 1;
  x->depth++;
  if (x->lws)
    lws_context_destroy(x->lws);
  if (x->tick)
    event_free(x->tick);
  if (x->svc)
    event_free(x->svc);
  if (x->client_ssl)
    SSL_CTX_free(x->client_ssl);
  free(x);
}

void kr__ws_ctx_free(kr__ws_ctx *x) {
  if (!x)
    return;
  if (x->depth > 0) {
    x->free_pending = 1;
    return;
  }
  ctx_destroy(x);
}

/* ============================================================ transports */

/* Wipes and frees the bearer token (a secret) and forgets it. */
static void wipe_bearer(ws_transport *t) {
  if (t->bearer) {
    mbedtls_platform_zeroize(t->bearer, t->bearer_len);
    free(t->bearer);
    t->bearer = NULL;
    t->bearer_len = 0;
  }
}

static void release(ws_transport *t) {
  if (t->ev)
    event_free(t->ev);
  if (t->flush)
    event_free(t->flush);
  if (t->timer)
    event_free(t->timer);
  kr__ws_txq_free(&t->q);
  wipe_bearer(t);
  free(t);
}

/* Frees the memory once nothing needs it any more. Returns 1 if freed. */
static int maybe_release(ws_transport *t) {
  if (t->freed && !t->wsi && t->refs == 0) {
    release(t);
    return 1;
  }
  return 0;
}

/* Tells the owner the connection ended (once, never after free()). */
static void report(ws_transport *t, int err, const char *why) {
  if (t->reported || t->freed || t->setup)
    return;
  t->reported = 1;
  if (t->timer)
    event_del(t->timer);
  t->refs++;
  t->base.cb.on_close(&t->base, err, why, t->base.ud);
  t->refs--;
}

/* Registers what rd_want / wr_want ask for (EV_WRITE stays registered
 * while it keeps being wanted, so a busy sender costs no epoll changes). */
static void update_ev(ws_transport *t) {
  if (!t->ev)
    return;
  short want =
      (short)((t->rd_want ? EV_READ : 0) | (t->wr_want ? EV_WRITE : 0));
  if (want == t->ev_on)
    return;
  if (t->ev_on)
    event_del(t->ev);
  t->ev_on = want;
  if (want) {
    event_assign(t->ev, t->base.base, t->fd, want | EV_PERSIST, fd_cb, t);
    event_add(t->ev, NULL);
  }
}

static void arm_write(ws_transport *t) {
  if (t->ev && t->wsi) {
    t->wr_want = 1;
    update_ev(t);
  }
}

static void set_rd(ws_transport *t, int on) {
  t->rd_want = on ? 1 : 0;
  update_ev(t);
}

/* Asks for a writeable callback: flush_cb makes it from the loop. */
static void request_writable(ws_transport *t) {
  if (!t->wsi || !t->open)
    return;
  if (!t->want_writable) {
    t->want_writable = 1;
    t->stalled = 0;
    lws_callback_on_writable(t->wsi);
  }
  if (t->flush && !t->stalled)
    event_active(t->flush, EV_TIMEOUT, 0);
}

/* Lets libwebsockets read again (needed to see a close or end of file). */
static void allow_rx(ws_transport *t) {
  if (t->wsi && t->rx_paused) {
    t->rx_paused = 0;
    lws_rx_flow_control(t->wsi, 1);
  }
  set_rd(t, 1);
}

/* Closes the socket at once (no close frame). Only at depth 0. May free
 * t's memory when nothing else holds it. */
static void kill_wsi(ws_transport *t) {
  kr__ws_ctx *x = t->x;
  allow_rx(t);
  ctx_enter(x);
  t->refs++;
  lws_set_timeout(t->wsi, PENDING_TIMEOUT_KILLED_BY_PARENT, LWS_TO_KILL_SYNC);
  t->refs--;
  /* A server socket may linger until the peer's end of file (bounded by
   * the context's timeout_secs), still read, until WSI_DESTROY. */
  maybe_release(t);
  ctx_leave(x);
}

/* Forgets the socket: libwebsockets destroyed it. */
static void detach(ws_transport *t) {
  kr__ws_ctx *x = t->x;
  unqueue_kill(t);
  t->wsi = NULL;
  t->dead = 1;
  if (t->ev) {
    event_free(t->ev);
    t->ev = NULL;
    t->ev_on = 0;
  }
  if (t->flush) {
    event_free(t->flush);
    t->flush = NULL;
  }
  if (x && !x->destroying)
    report(t, t->closing ? 0 : KR_EIO,
           t->closing ? "closed" : "connection closed by peer");
  if (t->timer) {
    event_free(t->timer);
    t->timer = NULL;
  }
  t->x = NULL;
}

/* After libwebsockets ran for t: wait for real writability while it
 * holds unsent output (or a connect / close frame is pending); otherwise
 * come back through flush_cb if a writeable callback is still wanted. */
static void after_service(ws_transport *t) {
  if (t->wsi && t->x && !t->x->destroying) {
    int partial = lws_partial_buffered(t->wsi);
    t->wr_want = partial || t->poke;
    if (!partial && t->want_writable && !t->stalled && t->flush)
      event_active(t->flush, EV_TIMEOUT, 0);
  }
  update_ev(t);
}

static void fd_cb(evutil_socket_t fd, short what, void *arg) {
  ws_transport *t = arg;
  kr__ws_ctx *x = t->x;
  struct lws_pollfd pfd;
  pfd.fd = fd;
  pfd.events = LWS_POLLIN | LWS_POLLOUT;
  pfd.revents = 0;
  if (what & EV_READ)
    pfd.revents |= LWS_POLLIN;
  if (what & EV_WRITE) {
    pfd.revents |= LWS_POLLOUT;
    t->poke = 0;
  }
  t->refs++;
  ctx_enter(x);
  lws_service_fd(x->lws, &pfd);
  service_pending(x);
  after_service(t);
  t->refs--;
  maybe_release(t);
  ctx_leave(x);
}

/* Makes the writeable callbacks t asked for without waiting for epoll
 * (a few messages per pass, then yields to other events), and serves
 * input libwebsockets held while reading was paused (it drains that
 * before it reads the socket again). */
static void flush_cb(evutil_socket_t fd, short what, void *arg) {
  ws_transport *t = arg;
  kr__ws_ctx *x = t->x;
  struct lws_pollfd pfd;
  pfd.fd = t->fd;
  pfd.events = LWS_POLLIN | LWS_POLLOUT;
  t->refs++;
  ctx_enter(x);
  if (t->kick_rd && t->wsi && !t->freed) {
    t->kick_rd = 0;
    pfd.revents = LWS_POLLIN;
    lws_service_fd(x->lws, &pfd);
  }
  for (int i = 0; i < 8 && t->wsi && !t->freed && t->want_writable &&
                  !lws_partial_buffered(t->wsi);
       i++) {
    unsigned before = t->writeables;
    pfd.revents = LWS_POLLOUT;
    lws_service_fd(x->lws, &pfd);
    if (t->writeables == before && t->want_writable) {
      t->stalled = 1;
      break;
    }
  }
  service_pending(x);
  after_service(t);
  t->refs--;
  maybe_release(t);
  ctx_leave(x);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  ws_transport *t = arg;
  if (t->open && !t->closing)
    return;
  t->refs++;
  report(t, KR_ETIMEDOUT,
         t->closing ? "close timed out" : "WebSocket handshake timed out");
  if (t->wsi && t->x && t->x->depth == 0)
    kill_wsi(t);
  t->refs--;
  maybe_release(t);
}

static void start_timer(ws_transport *t, int ms) {
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  if (t->timer)
    event_add(t->timer, &tv);
}

/* ---------------------------------------------------------------- ops */

static size_t ws_write(kr__transport *bt, const uint8_t *p, size_t n) {
  ws_transport *t = (ws_transport *)bt;
  if (t->freed || !t->wsi || t->closing || t->reported)
    return 0;
  size_t take = kr__ws_txq_room(&t->q, KR__TRANSPORT_HIGH_WATER);
  if (take > n)
    take = n;
  if (take < n)
    t->want_drain = 1;
  if (take == 0 || kr__ws_txq_append(&t->q, p, take) < 0) {
    t->want_drain = 1;
    return 0;
  }
  if (t->q.scan > t->q.head)
    request_writable(t);
  return take;
}

static void ws_set_reading(kr__transport *bt, int on) {
  ws_transport *t = (ws_transport *)bt;
  on = on ? 1 : 0;
  t->want_read = on;
  if (!t->wsi || t->freed || t->closing)
    return;
  if (!t->open) /* applied when the upgrade completes */
    return;
  if (on) {
    if (t->rx_paused) {
      t->rx_paused = 0;
      lws_rx_flow_control(t->wsi, 1);
      /* Input held back while paused is served from the loop. */
      t->kick_rd = 1;
      if (t->flush)
        event_active(t->flush, EV_TIMEOUT, 0);
    }
    set_rd(t, 1);
  } else {
    if (!t->rx_paused) {
      t->rx_paused = 1;
      lws_rx_flow_control(t->wsi, 0);
    }
    set_rd(t, 0);
  }
}

static void ws_close(kr__transport *bt) {
  ws_transport *t = (ws_transport *)bt;
  if (t->closing || t->freed || t->reported || !t->wsi)
    return;
  t->closing = 1;
  /* The close handshake needs the peer's close frame: read on (what
   * arrives is dropped). */
  allow_rx(t);
  start_timer(t, KR__TRANSPORT_CLOSE_TIMEOUT_S * 1000);
  /* The writeable callback sends what is queued, then the close frame. */
  request_writable(t);
}

static void ws_free(kr__transport *bt) {
  ws_transport *t = (ws_transport *)bt;
  if (t->freed)
    return;
  t->freed = 1;
  if (t->timer)
    event_del(t->timer);
  if (!t->wsi || !t->x) {
    maybe_release(t);
    return;
  }
  if (t->x->depth > 0) {
    /* Inside a libwebsockets call: kill when it has returned. */
    if (!t->kill_queued) {
      t->kill_queued = 1;
      t->kill_next = t->x->kills;
      t->x->kills = t;
    }
    return;
  }
  kill_wsi(t);
}

static const kr__transport_ops ws_ops = {ws_write, ws_set_reading, ws_close,
                                         ws_free};

int kr__transport_is_ws(const kr__transport *t) {
  return t && t->ops == &ws_ops;
}

void kr__ws_forget_bearer(kr__transport *bt) {
  if (bt && kr__transport_is_ws(bt))
    wipe_bearer((ws_transport *)bt);
}

const char *kr__ws_bearer(const kr__transport *bt, size_t *len) {
  if (!kr__transport_is_ws(bt))
    return NULL;
  const ws_transport *t = (const ws_transport *)bt;
  if (t->client || !t->bearer)
    return NULL;
  if (len)
    *len = t->bearer_len;
  return t->bearer;
}

static ws_transport *ws_new(kr__ws_ctx *x, int handshake_ms,
                            const kr__transport_cbs *cbs, void *ud) {
  ws_transport *t = calloc(1, sizeof(*t));
  if (!t)
    return NULL;
  t->base.ops = &ws_ops;
  t->base.base = x->base;
  t->base.cb = *cbs;
  t->base.ud = ud;
  snprintf(t->base.peer, sizeof(t->base.peer), "?");
  t->x = x;
  t->fd = -1;
  t->want_read = 1;
  t->handshake_ms = handshake_ms > 0 ? handshake_ms : WS_DEFAULT_HANDSHAKE_MS;
  kr__ws_txq_init(&t->q, LWS_PRE);
  t->timer = evtimer_new(x->base, timer_cb, t);
  if (!t->timer) {
    free(t);
    return NULL;
  }
  return t;
}

static int bind_fd(ws_transport *t, evutil_socket_t fd) {
  t->fd = fd;
  t->ev = event_new(t->x->base, fd, EV_READ | EV_PERSIST, fd_cb, t);
  t->flush = event_new(t->x->base, -1, 0, flush_cb, t);
  return t->ev && t->flush ? 0 : KR_ENOMEM;
}

int kr__ws_accept(kr__ws_ctx *x, evutil_socket_t fd, int handshake_ms,
                  const kr__transport_cbs *cbs, void *ud, kr__transport **out) {
  evutil_make_socket_nonblocking(fd);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ws_transport *t = ws_new(x, handshake_ms, cbs, ud);
  if (!t || bind_fd(t, fd) < 0) {
    if (t)
      release(t);
    evutil_closesocket(fd);
    return KR_ENOMEM;
  }
  kr__transport_set_peer(&t->base, fd);
  lws_adopt_desc_t d;
  memset(&d, 0, sizeof(d));
  d.vh = x->vh;
  d.type = LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP | LWS_ADOPT_ALLOW_SSL;
  d.fd.sockfd = fd;
  d.opaque = t;
  t->setup = 1;
  ctx_enter(x);
  struct lws *wsi = lws_adopt_descriptor_vhost_via_info(&d);
  t->setup = 0;
  if (!wsi || t->dead) {
    /* libwebsockets closed the socket. */
    t->wsi = NULL;
    t->freed = 1;
    if (!maybe_release(t))
      t->x = NULL;
    ctx_leave(x);
    return KR_EIO;
  }
  t->wsi = wsi;
  set_rd(t, 1);
  start_timer(t, t->handshake_ms);
  ctx_leave(x);
  *out = &t->base;
  return 0;
}

static int printable(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] < 0x21 || s[i] > 0x7e)
      return 0;
  return 1;
}

int kr__ws_connect(kr__ws_ctx *x, const kr__url *u, const char *bearer,
                   size_t bearer_len, int handshake_ms,
                   const kr__transport_cbs *cbs, void *ud,
                   kr__transport **out) {
  int secure = u->scheme == KR__SCHEME_WSS;
  if ((u->scheme != KR__SCHEME_WS && !secure) || (secure && !x->tls))
    return KR_EINVAL;
  struct evutil_addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (evutil_getaddrinfo(u->host, NULL, &hints, &ai) != 0 || !ai)
    return KR_EADDR;
  char addr[INET6_ADDRSTRLEN] = "";
  if (ai->ai_family == AF_INET)
    inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, addr,
              sizeof(addr));
  else if (ai->ai_family == AF_INET6)
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, addr,
              sizeof(addr));
  evutil_freeaddrinfo(ai);
  if (!addr[0])
    return KR_EADDR;
  ws_transport *t = ws_new(x, handshake_ms, cbs, ud);
  if (!t)
    return KR_ENOMEM;
  t->client = 1;
  snprintf(t->base.peer, sizeof(t->base.peer), "%.80s:%d", u->host, u->port);
  if (bearer && bearer_len > 0 && bearer_len <= WS_MAX_BEARER &&
      printable(bearer, bearer_len)) {
    t->bearer = malloc(bearer_len + 1);
    if (!t->bearer) {
      release(t);
      return KR_ENOMEM;
    }
    memcpy(t->bearer, bearer, bearer_len);
    t->bearer[bearer_len] = 0;
    t->bearer_len = bearer_len;
  }
  /* Host header with the port; libwebsockets strips ":port" for SNI and
   * the certificate name check. */
  char host[300];
  snprintf(host, sizeof(host), strchr(u->host, ':') ? "[%s]:%d" : "%s:%d",
           u->host, u->port);
  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof(ci));
  ci.context = x->lws;
  ci.vhost = x->vh;
  ci.address = addr;
  ci.port = u->port;
  ci.path = u->path[0] ? u->path : "/";
  ci.host = host;
  ci.protocol = KR__WS_PROTOCOL;
  ci.ietf_version_or_minus_one = -1;
  ci.alpn = "http/1.1";
  ci.opaque_user_data = t;
  ci.ssl_connection = LCCSCF_HTTP_NO_FOLLOW_REDIRECT;
  if (secure) {
    ci.ssl_connection |= LCCSCF_USE_SSL;
    if (!x->verify)
      ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED |
                           LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                           LCCSCF_ALLOW_INSECURE | LCCSCF_ALLOW_EXPIRED;
  }
  t->setup = 1;
  ctx_enter(x);
  struct lws *wsi = lws_client_connect_via_info(&ci);
  t->setup = 0;
  if (!wsi || t->dead) {
    t->wsi = NULL;
    t->freed = 1;
    if (!maybe_release(t))
      t->x = NULL;
    ctx_leave(x);
    return KR_EIO;
  }
  t->wsi = wsi;
  evutil_socket_t fd = lws_get_socket_fd(wsi);
  if (fd < 0 || bind_fd(t, fd) < 0) {
    ws_free(&t->base);
    ctx_leave(x);
    return KR_ENOMEM;
  }
  set_rd(t, 1);
  /* The connect completes (or fails) when the socket turns writable. */
  t->poke = 1;
  arm_write(t);
  start_timer(t, t->handshake_ms);
  ctx_leave(x);
  *out = &t->base;
  return 0;
}

/* ============================================================= callbacks */

/* Ends the connection for a reason found here: closes with a WebSocket
 * status, reports, and returns -1 for the callback to return. */
static int fail(ws_transport *t, struct lws *wsi, enum lws_close_status st,
                int err, const char *why) {
  lws_close_reason(wsi, st, (unsigned char *)(uintptr_t)why, strlen(why));
  t->poke = 1; /* the close frame goes out when writable */
  arm_write(t);
  report(t, err, why);
  return -1;
}

static int on_established(ws_transport *t) {
  t->open = 1;
  if (t->timer && !t->closing)
    event_del(t->timer);
  if (!t->closing) {
    t->refs++;
    t->base.cb.on_open(&t->base, t->base.ud);
    t->refs--;
    if (t->freed)
      return -1;
    if (!t->want_read)
      ws_set_reading(&t->base, 0);
  }
  if (t->q.scan > t->q.head || t->closing)
    request_writable(t);
  return 0;
}

static int on_receive(ws_transport *t, struct lws *wsi, const uint8_t *in,
                      size_t len) {
  if (t->closing || t->reported)
    return 0; /* the owner is done reading */
  if (!lws_frame_is_binary(wsi))
    return fail(t, wsi, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, KR_EPROTO,
                "WebSocket text message (binary expected)");
  kr__ws_rx_feed(&t->rx, in, len);
  if (lws_is_final_fragment(wsi) && !kr__ws_rx_at_boundary(&t->rx))
    return fail(t, wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, KR_EPROTO,
                "WebSocket message ends inside a frame");
  if (len > 0) {
    t->refs++;
    t->base.cb.on_read(&t->base, in, len, t->base.ud);
    t->refs--;
    if (t->freed)
      return -1;
  }
  return 0;
}

static int on_writeable(ws_transport *t, struct lws *wsi) {
  t->want_writable = 0;
  t->stalled = 0;
  t->writeables++;
  uint8_t *p;
  size_t n = kr__ws_txq_next(&t->q, KR__WS_MSG_MAX, &p);
  if (n > 0) {
    if (lws_write(wsi, p, n, LWS_WRITE_BINARY) < 0) {
      report(t, KR_EIO, "WebSocket write failed");
      return -1;
    }
    kr__ws_txq_consume(&t->q, n);
    if (lws_partial_buffered(wsi))
      arm_write(t); /* the socket is full: wait for it */
    if (t->q.scan > t->q.head)
      request_writable(t);
  }
  if (t->closing) {
    if (t->q.scan > t->q.head)
      return 0;
    /* Everything whole is out (an incomplete frame cannot be sent). The
     * close frame follows any output libwebsockets still holds. */
    lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
    t->poke = 1;
    arm_write(t);
    return -1;
  }
  if (t->want_drain && kr__ws_txq_buffered(&t->q) < KR__TRANSPORT_LOW_WATER) {
    t->want_drain = 0;
    t->refs++;
    t->base.cb.on_drain(&t->base, t->base.ud);
    t->refs--;
    if (t->freed)
      return -1;
  }
  return 0;
}

/* Keeps the token of "Authorization: Bearer <token>" from the upgrade. */
static void capture_bearer(ws_transport *t, struct lws *wsi) {
  int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
  if (t->bearer || n <= 7 || n > WS_MAX_HEADER_DATA)
    return;
  char *v = malloc((size_t)n + 1);
  if (!v)
    return;
  int got = lws_hdr_copy(wsi, v, n + 1, WSI_TOKEN_HTTP_AUTHORIZATION);
  if (got > 7 && strncasecmp(v, "Bearer ", 7) == 0) {
    const char *tok = v + 7;
    while (*tok == ' ')
      tok++;
    size_t tl = strlen(tok);
    while (tl > 0 && tok[tl - 1] == ' ')
      tl--;
    if (tl > 0 && (t->bearer = malloc(tl + 1)) != NULL) {
      memcpy(t->bearer, tok, tl);
      t->bearer[tl] = 0;
      t->bearer_len = tl;
    }
  }
  memset(v, 0, (size_t)n + 1);
  free(v);
}

/* Appends our Authorization header to the client upgrade request. */
static int append_bearer(ws_transport *t, char **pp, size_t room) {
  static const char pre[] = "Authorization: Bearer ";
  if (!t->bearer)
    return 0;
  size_t need = sizeof(pre) - 1 + t->bearer_len + 2;
  if (need >= room)
    return -1;
  char *p = *pp;
  memcpy(p, pre, sizeof(pre) - 1);
  p += sizeof(pre) - 1;
  memcpy(p, t->bearer, t->bearer_len);
  p += t->bearer_len;
  *p++ = '\r';
  *p++ = '\n';
  *pp = p;
  return 0;
}

/* Keeps OpenSSL's reason for refusing the server certificate. */
static void note_cert_error(ws_transport *t, void *store_ctx) {
#if defined(LWS_WITH_TLS) && !defined(LWS_WITH_MBEDTLS)
  int e = store_ctx ? X509_STORE_CTX_get_error(store_ctx) : 0;
  if (e != 0) {
    snprintf(t->cert_error, sizeof(t->cert_error), "%s",
             X509_verify_cert_error_string(e));
    return;
  }
#endif
  snprintf(t->cert_error, sizeof(t->cert_error), "verification failed");
}

static void connect_failed(ws_transport *t, const char *in, size_t len) {
  char r[120];
  size_t n = in ? strnlen(in, len ? len : sizeof(r)) : 0;
  if (n >= sizeof(r))
    n = sizeof(r) - 1;
  memcpy(r, in ? in : "", n);
  r[n] = 0;
  r[strcspn(r, "\r\n")] = 0;
  int tls = t->cert_error[0] || strstr(r, "cert") || strstr(r, "SSL") ||
            strstr(r, "ssl") || strstr(r, "tls") || strstr(r, "TLS");
  char why[200];
  if (t->cert_error[0])
    snprintf(why, sizeof(why),
             "TLS handshake failed: server certificate refused (%s)",
             t->cert_error);
  else if (tls && strstr(r, "cert"))
    snprintf(why, sizeof(why),
             "TLS handshake failed: server certificate not accepted (%s)", r);
  else if (tls)
    snprintf(why, sizeof(why), "TLS handshake failed: %s", r);
  else
    snprintf(why, sizeof(why), "WebSocket connect failed: %s",
             r[0] ? r : "unknown error");
  if (t->setup) { /* kr__ws_connect() returns the error */
    kr__log(KR_LOG_DEBUG, "websocket_connect_failed", "peer=%s reason=%s",
            t->base.peer, kr__log_quote(r, sizeof(r), why, strlen(why)));
    return;
  }
  report(t, tls ? KR_ETLS : KR_EIO, why);
}

static int ws_callback(struct lws *wsi, enum lws_callback_reasons reason,
                       void *user, void *in, size_t len) {
  ws_transport *t = wsi ? lws_get_opaque_user_data(wsi) : NULL;
  if (!t)
    return lws_callback_http_dummy(wsi, reason, user, in, len);
  if (reason == LWS_CALLBACK_WSI_DESTROY) {
    t->refs++;
    detach(t);
    t->refs--;
    maybe_release(t);
    return 0;
  }
  if (t->dead)
    return 0;
  if (!t->wsi)
    t->wsi = wsi; /* callbacks made before adopt/connect returned */
  if (t->x && t->x->destroying)
    return 0;
  switch (reason) {
  case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
    capture_bearer(t, wsi); /* any path is accepted */
    return 0;
  case LWS_CALLBACK_HTTP:
    return -1; /* plain HTTP request: this port speaks WebSocket only */
  case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
    return append_bearer(t, (char **)in, len);
  case LWS_CALLBACK_ESTABLISHED:
  case LWS_CALLBACK_CLIENT_ESTABLISHED:
    if (t->freed)
      return -1;
    return on_established(t);
  case LWS_CALLBACK_RECEIVE:
  case LWS_CALLBACK_CLIENT_RECEIVE:
    if (t->freed)
      return -1;
    return on_receive(t, wsi, in, len);
  case LWS_CALLBACK_SERVER_WRITEABLE:
  case LWS_CALLBACK_CLIENT_WRITEABLE:
    if (t->freed)
      return -1;
    return on_writeable(t, wsi);
  case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    if (len >= 2)
      t->peer_close =
          (((const uint8_t *)in)[0] << 8) | ((const uint8_t *)in)[1];
    /* libwebsockets answers with a close frame when writable. */
    t->poke = 1;
    arm_write(t);
    return 0;
  case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
    /* user: the X509_STORE_CTX, len: OpenSSL's verdict so far. */
    if (!len && !t->cert_error[0])
      note_cert_error(t, user);
    return 0;
  case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    connect_failed(t, in, len);
    return 0;
  case LWS_CALLBACK_CLOSED:
  case LWS_CALLBACK_CLIENT_CLOSED:
    if (t->closing || t->peer_close == LWS_CLOSE_STATUS_NORMAL)
      report(t, 0, t->closing ? "closed" : "closed by peer");
    else
      report(t, KR_EIO, "connection closed by peer");
    return 0;
  default:
    return lws_callback_http_dummy(wsi, reason, user, in, len);
  }
}
