/* Links to other kas instances (see peer.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kasroute/error.h>

#include "core/jwt.h"
#include "core/md_dup.h"
#include "core/mem_internal.h"
#include "core/mux_internal.h"
#include "io/dial.h"
#include "io/log.h"
#include "kas/peer.h"

/* Opens waiting for one link to come up; more fail at once. */
#define PEER_MAX_PENDING 4096
/* A link without streams for two checks this far apart is closed. */
#define PEER_IDLE_CHECK_S 30
/* Lifetime of the JWT a link presents (only checked at its HELLO). */
#define PEER_TOKEN_TTL_S 300

typedef struct kr__peer kr__peer;

struct kr__peer_open {
  kr__peer *p;
  kr_md *md; /* one allocation: entries, then bytes */
  size_t n;
  int fin;
  const kr__stream_handler *h;
  void *stream_ud;
  kr__peer_open_cb cb;
  void *ud; /* cb's */
  kr__peer_open *prev, *next;
};

struct kr__peer {
  kr_kas *k;
  char url[512];
  kr__dialer dialer;
  int has_dialer;
  kas_conn pc; /* what routed streams report to kr__route_done() */
  kr__conn *conn;
  int ready;
  int going; /* GOAWAY either way or failed: no new streams */
  int idle_checks;
  size_t n_pending;
  kr__peer_open *pending;
  struct event *ev; /* deferred delivery of opens; idle checks */
  kr__peer *prev, *next;
};

static void open_unlink(kr__peer_open *o) {
  kr__peer *p = o->p;
  if (o->prev)
    o->prev->next = o->next;
  else
    p->pending = o->next;
  if (o->next)
    o->next->prev = o->prev;
  o->prev = o->next = NULL;
  p->n_pending--;
}

static void open_free(kr__peer_open *o) {
  free(o->md);
  free(o);
}

void kr__peer_open_cancel(kr__peer_open *o) {
  if (!o)
    return;
  open_unlink(o);
  open_free(o);
}

/* Removes the link from the kas's list (it is closed). */
static void peer_unlink(kr__peer *p) {
  kr_kas *k = p->k;
  if (p->prev)
    p->prev->next = p->next;
  else if (k->peers == p)
    k->peers = p->next;
  if (p->next)
    p->next->prev = p->prev;
  p->prev = p->next = NULL;
}

/* The rest of a link's end, from the loop (or from event_base_free()):
 * the dialer's TLS configuration goes only now, after the transport that
 * used it. */
static void peer_reap(struct event *ev, void *arg) {
  (void)ev;
  kr__peer *p = arg;
  if (p->has_dialer)
    kr__dialer_free(&p->dialer);
  free(p);
}

/* Frees the link: its waiting opens (without callbacks), its conn, its
 * dialer. deferred: the conn reported its close (pc_closed()), so its
 * transport may still be on the stack: a TLS transport that saw the close
 * from inside its read path frees itself (mbedtls_ssl_free(), which reads
 * the configuration) only when that path returns. The dialer and p then
 * wait for the finalizer of p->ev, which runs from the loop once the
 * current callback has returned (the conn is silent meanwhile: a conn
 * freed inside its own callback calls back no more). */
static void peer_free(kr__peer *p, int deferred) {
  while (p->pending) {
    kr__peer_open *o = p->pending;
    open_unlink(o);
    open_free(o);
  }
  kr__conn_free(p->conn);
  p->conn = NULL;
  if (deferred && p->ev) {
    event_free_finalize(0, p->ev, peer_reap);
    return;
  }
  if (p->ev)
    event_free(p->ev);
  if (p->has_dialer)
    kr__dialer_free(&p->dialer); /* after the conn */
  free(p);
}

/* Fails every waiting open (the link is gone or refused). */
static void fail_pending(kr__peer *p, int err, const char *why) {
  while (p->pending) {
    kr__peer_open *o = p->pending;
    open_unlink(o);
    kr__peer_open_cb cb = o->cb;
    void *ud = o->ud;
    open_free(o);
    cb(NULL, NULL, err, why, ud);
  }
}

/* Opens the waiting streams on a ready link. */
static void deliver(kr__peer *p) {
  kr_mux *m = kr__conn_mux(p->conn);
  while (p->pending && p->ready && !p->going) {
    kr__peer_open *o = p->pending;
    open_unlink(o);
    kr_stream *s;
    int rc = kr_stream_open(m, o->md, o->n, o->fin, o->stream_ud, &s);
    kr__peer_open_cb cb = o->cb;
    void *ud = o->ud;
    const kr__stream_handler *h = o->h;
    open_free(o);
    if (rc < 0) {
      cb(NULL, NULL, rc, "the link to the peer refused the stream", ud);
      continue;
    }
    kr__stream_set_handler(s, h);
    p->idle_checks = 0;
    cb(s, &p->pc, 0, NULL, ud);
  }
  kr__conn_kick(p->conn);
}

static void ev_cb(evutil_socket_t fd, short what, void *arg) {
  kr__peer *p = arg;
  if (p->pending && p->ready) {
    deliver(p);
    return;
  }
  if (what & EV_TIMEOUT && p->ready && !p->pending) {
    kr_mux *m = kr__conn_mux(p->conn);
    if (kr_mux_num_streams(m) == 0 && ++p->idle_checks >= 2) {
      p->going = 1;
      kr__conn_goaway(p->conn, KR_CODE_NO_ERROR, "idle");
      return;
    }
  }
  struct timeval tv = {PEER_IDLE_CHECK_S, 0};
  event_add(p->ev, &tv);
}

/* ------------------------------------------------------ conn callbacks */

/* The handshake is done, but the peer checks our token only when our
 * HELLO arrives, and refuses with a GOAWAY. A PING sent now is answered
 * after that GOAWAY would have been sent: streams wait for the answer, so a
 * refused link fails them before any was opened (and the router tries its
 * next candidate). */
static void pc_ready(kr__conn *c, const kr_md *md, size_t n, void *ud) {
  (void)ud;
  kr_mux_ping(kr__conn_mux(c), kr__now_us());
  kr__conn_kick(c);
}

static void pc_ping(kr__conn *c, kr_time_us rtt, void *ud) {
  kr__peer *p = ud;
  if (p->ready || p->going)
    return;
  p->ready = 1;
  kr__log(KR_LOG_INFO, "peer_connected", "kas=%s peer=%s", p->k->name, p->url);
  deliver(p);
  struct timeval tv = {PEER_IDLE_CHECK_S, 0};
  event_add(p->ev, &tv);
}

static void pc_stream(kr__conn *c, kr_stream *s, const kr_md *md, size_t n,
                      int fin, void *ud) {
  kr_stream_reset(s, KR_CODE_REFUSED, "streams go the other way on this link");
}

static void pc_goaway(kr__conn *c, uint32_t code, const uint8_t *r, size_t rl,
                      void *ud) {
  kr__peer *p = ud;
  p->going = 1; /* stays listed (for kr__peers_free_all) until closed */
  char why[KR_MAX_REASON + 1];
  snprintf(why, sizeof(why), "peer going away: %.*s", (int)rl, (const char *)r);
  if (code == KR_CODE_UNAUTHORIZED)
    kr__log(KR_LOG_ERROR, "peer_refused", "kas=%s peer=%s (check that both "
            "use the same private secret)", p->k->name, p->url);
  fail_pending(p, code == KR_CODE_UNAUTHORIZED ? KR_EAUTH : KR_EGOAWAY, why);
}

static void pc_closed(kr__conn *c, int err, const char *why, void *ud) {
  kr__peer *p = ud;
  char q[200];
  kr__log(err ? KR_LOG_WARN : KR_LOG_INFO, "peer_disconnected",
          "kas=%s peer=%s reason=%s", p->k->name, p->url,
          kr__log_quote(q, sizeof(q), why, strlen(why)));
  peer_unlink(p);
  char msg[512];
  snprintf(msg, sizeof(msg), "link to %.200s failed: %.200s", p->url, why);
  fail_pending(p, err ? err : KR_EIO, msg);
  peer_free(p, 1);
}

static const kr__conn_cbs peer_conn_cbs = {pc_ready, pc_stream, pc_goaway,
                                           pc_closed, pc_ping};

/* Dials a new link to url. 0 or an error (nothing left behind). */
static int peer_new(kr_kas *k, const char *url, kr__peer **out) {
  char err[256];
  kr__peer *p = calloc(1, sizeof(*p));
  if (!p)
    return KR_ENOMEM;
  p->k = k;
  snprintf(p->url, sizeof(p->url), "%s", url);
  p->pc.k = k;
  p->pc.kind = KR__LISTEN_PRIVATE;
  snprintf(p->pc.peer, sizeof(p->pc.peer), "%s", url);
  kr__url u;
  int rc = kr__dial_parse_url(url, &u);
  if (rc == 0 && u.scheme != KR__SCHEME_TCP && u.scheme != KR__SCHEME_TLS)
    rc = KR_EADDR;
  if (rc == 0) {
    rc = kr__dialer_init(&p->dialer, k->base, &u,
                         k->opt.private_ca_file[0] ? k->opt.private_ca_file
                                                   : NULL,
                         1, err, sizeof(err));
    p->has_dialer = rc == 0;
  }
  char *tok = NULL;
  if (rc == 0)
    rc = kr__jwt_mint(NULL, k->private_secret, k->private_secret_len, k->name,
                      KR__PEER_AUDIENCE, k->name, (int64_t)time(NULL),
                      PEER_TOKEN_TTL_S, &tok);
  kr_mux_options *mo = NULL;
  if (rc == 0 && kr_mux_options_new(&mo) < 0)
    rc = KR_ENOMEM;
  if (rc == 0) {
    kr_md hello = {(const uint8_t *)KR_MD_TOKEN, strlen(KR_MD_TOKEN),
                   (const uint8_t *)tok, strlen(tok)};
    kr_mux_options_set_role(mo, KR_ROLE_DIALER);
    kr_mux_options_set_keepalive(mo, k->opt.keepalive_interval,
                                 k->opt.keepalive_timeout);
    kr_mux_options_set_handshake_timeout(mo, k->opt.handshake_timeout);
    rc = kr_mux_options_add_hello(mo, &hello);
  }
  if (rc == 0 && !(p->ev = event_new(k->base, -1, 0, ev_cb, p)))
    rc = KR_ENOMEM;
  kr__transport *t = NULL;
  if (rc == 0)
    rc = kr__dialer_connect(&p->dialer, NULL, 0,
                            (int)(k->opt.handshake_timeout / 1000), &t);
  if (rc == 0)
    rc = kr__conn_new(k->base, t, 0, mo, &peer_conn_cbs, p, &p->conn);
  kr_mux_options_free(mo);
  if (tok) {
    memset(tok, 0, strlen(tok));
    kr__free(kr_mem_default(), tok);
  }
  if (rc < 0) {
    peer_free(p, 0);
    return rc;
  }
  p->pc.conn = p->conn;
  p->next = k->peers;
  if (k->peers)
    k->peers->prev = p;
  k->peers = p;
  *out = p;
  return 0;
}

int kr__peer_open_start(kr_kas *k, const char *url, const kr_md *md, size_t n,
                        int fin, const kr__stream_handler *h, void *stream_ud,
                        kr__peer_open_cb cb, void *cb_ud,
                        kr__peer_open **out) {
  kr__peer *p = k->peers;
  while (p && (p->going || strcmp(p->url, url) != 0))
    p = p->next;
  if (!p) {
    int rc = peer_new(k, url, &p);
    if (rc < 0)
      return rc;
  }
  if (p->n_pending >= PEER_MAX_PENDING)
    return KR_EAGAIN;
  kr__peer_open *o = calloc(1, sizeof(*o));
  if (!o || !(o->md = kr__md_dup(md, n))) {
    free(o);
    return KR_ENOMEM;
  }
  o->p = p;
  o->n = n;
  o->fin = fin;
  o->h = h;
  o->stream_ud = stream_ud;
  o->cb = cb;
  o->ud = cb_ud;
  o->next = p->pending;
  if (p->pending)
    p->pending->prev = o;
  p->pending = o;
  p->n_pending++;
  if (p->ready)
    event_active(p->ev, EV_WRITE, 0); /* deliver from the loop */
  *out = o;
  return 0;
}

void kr__peers_goaway(kr_kas *k) {
  for (kr__peer *p = k->peers; p; p = p->next) {
    p->going = 1;
    kr__conn_goaway(p->conn, KR_CODE_SHUTDOWN, "kas is shutting down");
  }
}

void kr__peers_free_all(kr_kas *k) {
  while (k->peers) {
    kr__peer *p = k->peers;
    peer_unlink(p);
    peer_free(p, 0);
  }
}

size_t kr__peers_count(const kr_kas *k) {
  size_t n = 0;
  for (const kr__peer *p = k->peers; p; p = p->next)
    n++;
  return n;
}
