/* The blocking client (kasroute/blocking.h).
 *
 * One library-owned thread runs an event_base with kr_client connections;
 * callers on other threads hand it work and wait on condition variables.
 *
 * Shared state lives in a "hub": one mutex for the client and all its
 * streams, a wake-up pipe, and the queues of work for the loop. Streams
 * hold a reference on the hub so they stay valid objects after the client
 * is freed. Rules that keep this free of deadlocks and races:
 *   - the loop thread never holds the hub mutex while it calls into
 *     kr_client / kr_stream (their callbacks take the mutex);
 *   - fields marked "loop" are touched by the loop thread only; every other
 *     field of a shared object is read and written under the hub mutex;
 *   - a kr_bstream is reference-counted (under the mutex): the caller holds
 *     one reference until kr_bstream_free(), the loop one until the stream
 *     ended there, the dirty queue one while the stream is queued.
 * Received data is buffered per stream and credit goes back to kas only as
 * the reader takes bytes, so the mux window bounds the buffer; written data
 * is buffered up to KR__BS_TX_MAX per stream, and writers block beyond that
 * until the loop moved bytes into the mux (which holds them until the
 * peer's window opens): backpressure end to end.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kasroute/blocking.h>
#include <kasroute/client.h>
#include <kasroute/error.h>

#include "core/jwt.h"
#include "core/mem_internal.h"
#include "http/http_map.h"

#define KR__BS_TX_MAX ((size_t)1 << 20) /* written bytes held per stream */
#define KR__BS_CHUNK ((size_t)64 << 10) /* bytes moved to the mux at once */
#define KR__BC_DEFAULT_TIMEOUT ((kr_time_us)30 * 1000000)
#define KR__BC_TOKEN_TTL 300       /* seconds: minted JWTs */
#define KR__BC_SECRET_MAX 1024     /* bytes of API secret */
#define KR__BC_SHUTDOWN_GRACE 1000 /* ms to let listings finish at free */
#define KR__BC_REASON 256

/* ------------------------------------------------------------ last error */

static _Thread_local char tl_err[KR__BC_REASON];

const char *kr_bclient_last_error(void) {
  return tl_err;
}

static int fail(int rc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail(int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tl_err, sizeof(tl_err), fmt, ap);
  va_end(ap);
  return rc;
}

/* ---------------------------------------------------------------- options */

struct kr_bclient_options {
  char url[1024];
  int has_url;
  char *token; /* secret: wiped on free */
  size_t token_len;
  uint8_t *secret; /* secret: wiped on free */
  size_t secret_len;
  char ca_file[1024];
  int verify;
  kr_time_us timeout;
};

static void wipe_free(void *p, size_t n) {
  if (p) {
    volatile uint8_t *v = p;
    for (size_t i = 0; i < n; i++)
      v[i] = 0;
    free(p);
  }
}

int kr_bclient_options_new(kr_bclient_options **out) {
  kr_bclient_options *o = calloc(1, sizeof(*o));
  if (!o)
    return KR_ENOMEM;
  o->verify = 1;
  o->timeout = KR__BC_DEFAULT_TIMEOUT;
  *out = o;
  return 0;
}

void kr_bclient_options_free(kr_bclient_options *o) {
  if (!o)
    return;
  wipe_free(o->token, o->token_len);
  wipe_free(o->secret, o->secret_len);
  free(o);
}

int kr_bclient_options_set_url(kr_bclient_options *o, const char *url) {
  if (!o || !url || strlen(url) >= sizeof(o->url))
    return KR_EADDR;
  /* Checked now by the client role's own parser, so a bad URL fails here. */
  kr_client_options *co;
  if (kr_client_options_new(&co) < 0)
    return KR_ENOMEM;
  int rc = kr_client_options_set_url(co, url);
  kr_client_options_free(co);
  if (rc < 0)
    return rc;
  snprintf(o->url, sizeof(o->url), "%s", url);
  o->has_url = 1;
  return 0;
}

int kr_bclient_options_set_token(kr_bclient_options *o, const char *jwt,
                                 size_t len) {
  if (!o || !jwt || len == 0 || len > KR__JWT_MAX_TOKEN)
    return KR_EINVAL;
  char *t = malloc(len);
  if (!t)
    return KR_ENOMEM;
  memcpy(t, jwt, len);
  wipe_free(o->token, o->token_len);
  o->token = t;
  o->token_len = len;
  return 0;
}

int kr_bclient_options_set_secret(kr_bclient_options *o, const uint8_t *secret,
                                  size_t len) {
  if (!o || !secret || len < KR__JWT_MIN_SECRET || len > KR__BC_SECRET_MAX)
    return KR_EINVAL;
  uint8_t *s = malloc(len);
  if (!s)
    return KR_ENOMEM;
  memcpy(s, secret, len);
  wipe_free(o->secret, o->secret_len);
  o->secret = s;
  o->secret_len = len;
  return 0;
}

int kr_bclient_options_set_tls_ca_file(kr_bclient_options *o,
                                       const char *path) {
  if (!o || !path || strlen(path) >= sizeof(o->ca_file))
    return KR_EINVAL;
  snprintf(o->ca_file, sizeof(o->ca_file), "%s", path);
  return 0;
}

int kr_bclient_options_set_tls_verify(kr_bclient_options *o, int verify) {
  if (!o)
    return KR_EINVAL;
  o->verify = verify ? 1 : 0;
  return 0;
}

int kr_bclient_options_set_timeout(kr_bclient_options *o, kr_time_us timeout) {
  if (!o || timeout == 0)
    return KR_EINVAL;
  o->timeout = timeout;
  return 0;
}

/* ------------------------------------------------------------ structures */

typedef struct bc_hub bc_hub;
typedef struct bc_conn bc_conn;
typedef struct bc_op bc_op;

struct bc_hub {
  pthread_mutex_t mu;
  int refs;              /* the client + one per stream */
  int wfd;               /* write end of the wake-up pipe (client owns it) */
  int wake_pending;      /* a byte is in the pipe, or the loop is awake */
  int stopping;          /* kr_bclient_free() began: no new work */
  int dead;              /* the client is gone: stream calls -> KR_ECLOSED */
  kr_bstream *dirty;     /* streams with work for the loop (LIFO) */
  bc_op *ops, *ops_tail; /* listings for the loop */
};

/* One connection to kas (a kr_client). */
enum { CONN_CONNECTING, CONN_READY, CONN_ENDED };
struct bc_conn {
  kr_bclient *c;
  kr_client *kc;
  int state;
  int draining; /* kas said GOAWAY: no new streams here */
  int lists;    /* listings in flight */
  int err;
  char reason[KR__BC_REASON];
  bc_conn *next;
};

struct kr_bstream {
  bc_hub *h;
  kr_bclient *c; /* only dereferenced by the loop */
  pid_t pid;
  kr_time_us timeout; /* the client's default */
  pthread_cond_t cond;
  int refs;
  /* caller -> loop */
  int want_open, open_fin;
  int64_t agent;
  char *service;
  kr__mdlist open_md;
  struct evbuffer *tx;
  int want_fin;
  size_t consume; /* credit to return */
  int caller_gone;
  int in_dirty;
  kr_bstream *dirty_next;
  /* loop -> caller */
  struct evbuffer *rx;
  int replied, rx_eof, ended, err;
  int wr_err; /* write side unusable (a write gave up half way) */
  char reason[KR__BC_REASON];
  kr__mdlist reply_md;
  /* loop */
  kr_stream *ks;
  bc_conn *conn;
  bc_conn *wait; /* parked: the connection awaited (NULL: any) */
  int parked, retried, started, fin_sent, write_blocked;
  kr_bstream *lprev, *lnext; /* the loop's list of parked/open streams */
};

struct bc_op {
  pthread_cond_t cond;
  int refs; /* caller + loop */
  int done, err;
  char reason[KR__BC_REASON];
  char *json;
  size_t len;
  bc_op *next;   /* hub queue */
  bc_conn *conn; /* loop */
  bc_conn *wait; /* loop: parked on this connection (NULL: any) */
  int retried;   /* loop */
  bc_op *lnext;  /* loop: parked or in flight */
  int inflight;  /* loop */
};

struct kr_bclient {
  bc_hub *h;
  pid_t pid;
  kr_time_us timeout;
  /* immutable after kr_bclient_new */
  kr_client_options *copt;
  char *token;
  size_t token_len;
  uint8_t *secret;
  size_t secret_len;
  pthread_t thread;
  int thread_started;
  int rfd; /* read end of the wake-up pipe */
  /* loop */
  struct event_base *base;
  struct event *wake_ev, *kick_ev, *grace_ev;
  kr_mux_callbacks *cbs;
  bc_conn *conns;      /* every connection not yet freed */
  bc_conn *cur;        /* the one new streams go to */
  kr_bstream *streams; /* parked or opened (ks set) */
  size_t n_parked;
  bc_op *parked_ops, *inflight_ops;
  bc_op *settling; /* failed listings waiting for their connection's fate */
  struct event *settle_ev;
  int shutting;
  uint8_t chunk[KR__BS_CHUNK];
};

/* ----------------------------------------------------------- hub helpers */

static void hub_lock(bc_hub *h) {
  pthread_mutex_lock(&h->mu);
}

/* Unlocks; destroys the hub when nothing references it any more. */
static void hub_unlock(bc_hub *h) {
  int gone = h->refs == 0;
  pthread_mutex_unlock(&h->mu);
  if (gone) {
    pthread_mutex_destroy(&h->mu);
    free(h);
  }
}

/* Under the mutex: makes sure the loop will run its work handler. */
static void wake_locked(bc_hub *h) {
  if (h->wake_pending || h->wfd < 0)
    return;
  h->wake_pending = 1;
  ssize_t r;
  do
    r = write(h->wfd, "w", 1);
  while (r < 0 && errno == EINTR);
  /* EAGAIN: the pipe is full, so the loop is about to run anyway. */
}

static int cond_init(pthread_cond_t *cv) {
  pthread_condattr_t a;
  if (pthread_condattr_init(&a) != 0)
    return KR_ENOMEM;
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  int rc = pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
  return rc == 0 ? 0 : KR_ENOMEM;
}

static struct timespec deadline_of(kr_time_us timeout) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += (time_t)(timeout / 1000000);
  ts.tv_nsec += (long)(timeout % 1000000) * 1000;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

/* Waits on cv (hub mutex held) until signalled or dl. 0, or KR_ETIMEDOUT
 * once dl passed. Spurious wake-ups return 0: callers re-check. */
static int wait_until(pthread_cond_t *cv, bc_hub *h,
                      const struct timespec *dl) {
  int rc = pthread_cond_timedwait(cv, &h->mu, dl);
  return rc == ETIMEDOUT ? KR_ETIMEDOUT : 0;
}

static kr_time_us eff_timeout(const kr_bclient *c, kr_time_us t) {
  return t ? t : c->timeout;
}

/* -------------------------------------------------------- stream objects */

/* Frees s (hub mutex held, refs reached 0) and drops its hub reference. */
static void bs_destroy_locked(kr_bstream *s) {
  bc_hub *h = s->h;
  pthread_cond_destroy(&s->cond);
  if (s->tx)
    evbuffer_free(s->tx);
  if (s->rx)
    evbuffer_free(s->rx);
  kr__mdlist_free(&s->open_md);
  kr__mdlist_free(&s->reply_md);
  free(s->service);
  free(s);
  h->refs--;
}

static void bs_unref_locked(kr_bstream *s) {
  if (--s->refs == 0)
    bs_destroy_locked(s);
}

/* Queues s for the loop (mutex held). Nothing to do once the stream ended
 * there, except the open itself (queued before anything else). */
static void bs_dirty_locked(kr_bstream *s) {
  bc_hub *h = s->h;
  if (s->in_dirty || h->stopping)
    return;
  s->in_dirty = 1;
  s->refs++;
  s->dirty_next = h->dirty;
  h->dirty = s;
  wake_locked(h);
}

/* Marks s ended (mutex held) with err (0: cleanly) and a reason. */
static void bs_end_locked(kr_bstream *s, int err, const char *reason,
                          size_t rlen) {
  if (s->ended)
    return;
  s->ended = 1;
  s->err = err;
  if (reason && rlen)
    snprintf(s->reason, sizeof(s->reason), "%.*s", (int)rlen, reason);
  pthread_cond_broadcast(&s->cond);
}

static kr_bstream *bs_new(kr_bclient *c, int64_t agent, const char *service) {
  kr_bstream *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  kr__mdlist_init(&s->open_md);
  kr__mdlist_init(&s->reply_md);
  s->service = strdup(service);
  s->tx = evbuffer_new();
  s->rx = evbuffer_new();
  if (!s->service || !s->tx || !s->rx || cond_init(&s->cond) < 0) {
    if (s->tx)
      evbuffer_free(s->tx);
    if (s->rx)
      evbuffer_free(s->rx);
    free(s->service);
    free(s);
    return NULL;
  }
  s->h = c->h;
  s->c = c;
  s->pid = c->pid;
  s->timeout = c->timeout;
  s->agent = agent;
  s->refs = 2; /* the caller and the loop */
  hub_lock(s->h);
  s->h->refs++;
  hub_unlock(s->h);
  return s;
}

/* Frees a stream never handed to the loop. */
static void bs_discard(kr_bstream *s) {
  bc_hub *h = s->h;
  hub_lock(h);
  s->refs = 1;
  bs_unref_locked(s);
  hub_unlock(h);
}

/* Hands s to the loop for opening. */
static void bs_post_open(kr_bstream *s) {
  bc_hub *h = s->h;
  hub_lock(h);
  s->want_open = 1;
  if (h->stopping) {
    s->refs--; /* the loop will never see it */
    bs_end_locked(s, KR_ECLOSED, "the client is closing", 21);
  } else {
    bs_dirty_locked(s);
  }
  hub_unlock(h);
}

/* Waits until s has its REPLY or ended (mutex held). 0, KR_ETIMEDOUT. */
static int bs_wait_reply_locked(kr_bstream *s, const struct timespec *dl) {
  while (!s->replied && !s->ended && !s->h->dead)
    if (wait_until(&s->cond, s->h, dl) == KR_ETIMEDOUT && !s->replied &&
        !s->ended)
      return KR_ETIMEDOUT;
  return 0;
}

static void bs_release(kr_bstream *s) {
  bc_hub *h = s->h;
  hub_lock(h);
  s->caller_gone = 1;
  if (!s->ended && !h->dead)
    bs_dirty_locked(s);
  bs_unref_locked(s);
  hub_unlock(h);
}

/* --------------------------------------------------- loop: stream events */

static void loop_list_add(kr_bclient *c, kr_bstream *s) {
  s->lprev = NULL;
  s->lnext = c->streams;
  if (c->streams)
    c->streams->lprev = s;
  c->streams = s;
}

static void loop_list_del(kr_bclient *c, kr_bstream *s) {
  if (s->lprev)
    s->lprev->lnext = s->lnext;
  else if (c->streams == s)
    c->streams = s->lnext;
  if (s->lnext)
    s->lnext->lprev = s->lprev;
  s->lprev = s->lnext = NULL;
}

/* The loop is done with s: it ended with err. Drops the loop's reference. */
static void loop_finish(kr_bclient *c, kr_bstream *s, int err,
                        const char *reason) {
  loop_list_del(c, s);
  if (s->parked)
    c->n_parked--;
  s->parked = 0;
  s->ks = NULL;
  bc_hub *h = c->h;
  hub_lock(h);
  bs_end_locked(s, err, reason, reason ? strlen(reason) : 0);
  bs_unref_locked(s);
  hub_unlock(h);
}

static void on_reply(kr_stream *ks, const kr_md *md, size_t n, int fin,
                     void *ud) {
  kr_bstream *s = ud;
  bc_hub *h = s->h;
  hub_lock(h);
  for (size_t i = 0; i < n; i++)
    if (kr__mdlist_add(&s->reply_md, md[i].name, md[i].name_len, md[i].value,
                       md[i].value_len) < 0)
      break; /* bounded by the frame anyway; a cut head is still usable */
  s->replied = 1;
  if (fin)
    s->rx_eof = 1;
  pthread_cond_broadcast(&s->cond);
  hub_unlock(h);
}

static void on_data(kr_stream *ks, const uint8_t *p, size_t n, void *ud) {
  kr_bstream *s = ud;
  bc_hub *h = s->h;
  hub_lock(h);
  int rc = evbuffer_add(s->rx, p, n);
  pthread_cond_broadcast(&s->cond);
  hub_unlock(h);
  if (rc < 0)
    kr_stream_reset(ks, KR_CODE_INTERNAL, "out of memory");
}

static void on_fin(kr_stream *ks, void *ud) {
  kr_bstream *s = ud;
  bc_hub *h = s->h;
  hub_lock(h);
  s->rx_eof = 1;
  pthread_cond_broadcast(&s->cond);
  hub_unlock(h);
}

static void pump_tx(kr_bclient *c, kr_bstream *s);

static void on_writable(kr_stream *ks, void *ud) {
  kr_bstream *s = ud;
  s->write_blocked = 0;
  pump_tx(s->c, s);
}

static void on_close(kr_stream *ks, uint32_t code, const uint8_t *reason,
                     size_t rlen, void *ud) {
  kr_bstream *s = ud;
  kr_bclient *c = s->c;
  int err = kr_error_from_code(code);
  char why[KR__BC_REASON];
  if (c->shutting)
    err = KR_ECLOSED;
  if (err && rlen)
    snprintf(why, sizeof(why), "%s: %.*s", kr_code_name(code), (int)rlen,
             (const char *)reason);
  else if (err)
    snprintf(why, sizeof(why), "stream reset (%s)", kr_code_name(code));
  else
    why[0] = 0;
  loop_finish(c, s, err, why);
}

/* Moves written bytes into the mux until it takes no more, then the FIN
 * once everything went. A write error ends the write side only (the
 * stream's on_close reports the rest). */
static void pump_tx(kr_bclient *c, kr_bstream *s) {
  bc_hub *h = c->h;
  while (s->ks && !s->write_blocked && !s->fin_sent) {
    hub_lock(h);
    ev_ssize_t n = evbuffer_copyout(s->tx, c->chunk, sizeof(c->chunk));
    int fin = s->want_fin;
    hub_unlock(h);
    if (n <= 0) {
      if (fin) {
        s->fin_sent = 1;
        kr_stream_close_write(s->ks);
      }
      return;
    }
    int64_t w = kr_stream_write(s->ks, c->chunk, (size_t)n);
    if (w == KR_EAGAIN)
      w = 0;
    hub_lock(h);
    if (w < 0) {
      s->wr_err = (int)w;
      evbuffer_drain(s->tx, evbuffer_get_length(s->tx));
    } else {
      evbuffer_drain(s->tx, (size_t)w);
    }
    pthread_cond_broadcast(&s->cond);
    hub_unlock(h);
    if (w < 0)
      return;
    if (w < n)
      s->write_blocked = 1; /* on_writable resumes */
  }
}

/* -------------------------------------------------- loop: connections */

static void conn_state_cb(kr_client *kc, int err, const char *reason, void *ud);

/* A JWT for one connection: the configured one, or one minted from the
 * secret. *owned: the token must be wiped and released with kr__free. */
static int conn_token(kr_bclient *c, const char **tok, size_t *len,
                      char **owned) {
  *owned = NULL;
  if (!c->secret) {
    *tok = c->token;
    *len = c->token_len;
    return 0;
  }
  int rc = kr__jwt_mint(kr_mem_default(), c->secret, c->secret_len, "kasroute",
                        "gitlab-kas", "kasroute-blocking", (int64_t)time(NULL),
                        KR__BC_TOKEN_TTL, owned);
  if (rc < 0)
    return rc;
  *tok = *owned;
  *len = strlen(*owned);
  return 0;
}

/* Frees connections that ended (never from inside their callbacks: called
 * from the loop's own events only). */
static void reap_conns(kr_bclient *c) {
  for (bc_conn **pp = &c->conns; *pp;) {
    bc_conn *k = *pp;
    if (k->state == CONN_ENDED && k->lists == 0) {
      *pp = k->next;
      if (c->cur == k)
        c->cur = NULL;
      kr_client_free(k->kc);
      free(k);
    } else {
      pp = &k->next;
    }
  }
}

/* The connection new streams go to: 1 ready (*out set), 0 connecting (wait
 * for its state callback), or an error with the reason in why. Dials when
 * there is no usable connection. */
static int conn_get(kr_bclient *c, bc_conn **out, char *why, size_t whylen) {
  bc_conn *k = c->cur;
  if (k && !k->draining && k->state != CONN_ENDED) {
    *out = k;
    return k->state == CONN_READY;
  }
  c->cur = NULL;
  k = calloc(1, sizeof(*k));
  if (!k) {
    snprintf(why, whylen, "out of memory");
    return KR_ENOMEM;
  }
  k->c = c;
  k->state = CONN_CONNECTING;
  const char *tok;
  size_t tlen = 0;
  char *owned;
  int rc = conn_token(c, &tok, &tlen, &owned);
  if (rc == 0)
    rc = kr_client_options_set_token(c->copt, tok, tlen);
  if (owned) {
    volatile char *v = owned;
    for (size_t i = 0; i < tlen; i++)
      v[i] = 0;
    kr__free(kr_mem_default(), owned);
  }
  if (rc < 0) {
    snprintf(why, whylen, "cannot make an API token: %s", kr_strerror(rc));
    free(k);
    return rc;
  }
  /* The new connection goes on the list first: its state callback may
   * run before kr_client_new() returns. */
  k->next = c->conns;
  c->conns = k;
  c->cur = k;
  char err[KR__BC_REASON];
  rc = kr_client_new(&k->kc, c->base, c->copt, c->cbs, conn_state_cb, k, err,
                     sizeof(err));
  if (rc < 0) {
    k->kc = NULL;
    k->state = CONN_ENDED;
    snprintf(why, whylen, "%s", err[0] ? err : kr_strerror(rc));
    return rc;
  }
  *out = k;
  return k->state == CONN_READY;
}

static void op_complete(kr_bclient *c, bc_op *op, int err, const char *why,
                        const char *json, size_t len);
static void settle(kr_bclient *c, bc_conn *k);
static void start_stream(kr_bclient *c, kr_bstream *s);
static void start_op(kr_bclient *c, bc_op *op);

/* 1 if an item parked on connection k (NULL: none) may be started now. */
static int may_start(const bc_conn *k) {
  return !k || (k->state == CONN_READY && !k->draining);
}

/* Starts the parked streams and listings whose connection became ready or
 * was given up (see conn_state_cb). */
static void unpark(kr_bclient *c) {
  if (!c->n_parked && !c->parked_ops)
    return;
  kr_bstream *go = NULL;
  for (kr_bstream *s = c->streams, *nx; s; s = nx) {
    nx = s->lnext;
    if (s->parked && may_start(s->wait)) {
      loop_list_del(c, s);
      s->parked = 0;
      c->n_parked--;
      s->lnext = go;
      go = s;
    }
  }
  while (go) {
    kr_bstream *s = go;
    go = s->lnext;
    s->lnext = NULL;
    start_stream(c, s);
  }
  bc_op *ops = NULL;
  for (bc_op **pp = &c->parked_ops; *pp;) {
    bc_op *op = *pp;
    if (may_start(op->wait)) {
      *pp = op->lnext;
      op->lnext = ops;
      ops = op;
    } else {
      pp = &op->lnext;
    }
  }
  while (ops) {
    bc_op *op = ops;
    ops = op->lnext;
    start_op(c, op);
  }
}

static void kick(kr_bclient *c) {
  event_active(c->kick_ev, 0, 0);
}

/* What the items parked on k do now that it ended: fail with its error
 * when it never became ready or refused the credentials (one dial per
 * call: no loop against a kas that refuses us) or when they were retried
 * already; otherwise (kas drained it) try once more on a new one. */
static int park_outcome(const bc_conn *k, int was_ready, int *retried) {
  if (!was_ready || k->err == KR_EAUTH || *retried)
    return k->err;
  *retried = 1;
  return 0;
}

static void conn_state_cb(kr_client *kc, int err, const char *reason,
                          void *ud) {
  bc_conn *k = ud;
  kr_bclient *c = k->c;
  if (err == 0) {
    k->state = CONN_READY;
  } else {
    int was_ready = k->state == CONN_READY;
    k->state = CONN_ENDED;
    k->err = err;
    snprintf(k->reason, sizeof(k->reason), "connection to kas: %s",
             reason && *reason ? reason : kr_strerror(err));
    for (kr_bstream *s = c->streams, *nx; s; s = nx) {
      nx = s->lnext;
      if (!s->parked || s->wait != k)
        continue;
      s->wait = NULL;
      int e = park_outcome(k, was_ready, &s->retried);
      if (e)
        loop_finish(c, s, e, k->reason);
    }
    for (bc_op **pp = &c->parked_ops; *pp;) {
      bc_op *op = *pp;
      if (op->wait != k) {
        pp = &op->lnext;
        continue;
      }
      op->wait = NULL;
      int e = park_outcome(k, was_ready, &op->retried);
      if (e) {
        *pp = op->lnext;
        op_complete(c, op, e, k->reason, NULL, 0);
      } else {
        pp = &op->lnext;
      }
    }
    if (c->cur == k)
      c->cur = NULL;
    settle(c, k);
  }
  kick(c); /* unpark / reap from the loop's own event */
}

/* Opens s on the current connection, parks it until that connection is
 * ready (or, refused by a draining one, until it ended), or ends it with
 * the error. */
static void start_stream(kr_bclient *c, kr_bstream *s) {
  char why[KR__BC_REASON];
  bc_conn *k;
  int rc = conn_get(c, &k, why, sizeof(why));
  loop_list_add(c, s);
  if (rc < 0) {
    loop_finish(c, s, rc, why);
    return;
  }
  kr_stream *ks = NULL;
  if (rc == 1) {
    rc = kr_client_open(k->kc, s->agent, s->service, s->open_md.md,
                        s->open_md.n, s->open_fin, s, &ks);
    if (rc == KR_EGOAWAY || rc == KR_ECLOSED) {
      k->draining = 1;
      rc = 0;
    } else if (rc == 0) {
      rc = 1;
    }
  }
  if (rc == 0) {
    s->parked = 1;
    s->wait = k;
    c->n_parked++;
    return;
  }
  if (rc < 0) {
    snprintf(why, sizeof(why), "cannot open a stream: %s", kr_strerror(rc));
    loop_finish(c, s, rc, why);
    return;
  }
  s->ks = ks;
  s->conn = k;
  s->started = 1;
  if (s->open_fin)
    s->fin_sent = 1;
  pump_tx(c, s);
}

/* Work a caller queued on stream s. */
static void serve_stream(kr_bclient *c, kr_bstream *s) {
  bc_hub *h = c->h;
  hub_lock(h);
  s->in_dirty = 0;
  int open = s->want_open;
  s->want_open = 0;
  int gone = s->caller_gone;
  size_t consume = s->consume;
  s->consume = 0;
  int ended = s->ended;
  hub_unlock(h);
  if (open && !ended)
    start_stream(c, s);
  if (gone) {
    if (s->ks)
      kr_stream_reset(s->ks, KR_CODE_CANCEL, "closed by the application");
    else if (s->parked)
      loop_finish(c, s, KR_ECLOSED, "closed");
  } else if (s->ks) {
    if (consume)
      kr_stream_consume(s->ks, consume);
    pump_tx(c, s);
  }
}

/* ------------------------------------------------------ loop: listings */

static void op_unref_locked(bc_op *op) {
  if (--op->refs == 0) {
    pthread_cond_destroy(&op->cond);
    free(op->json);
    free(op);
  }
}

static void op_complete(kr_bclient *c, bc_op *op, int err, const char *why,
                        const char *json, size_t len) {
  bc_hub *h = c->h;
  char *copy = NULL;
  if (err == 0) {
    copy = malloc(len + 1);
    if (copy) {
      memcpy(copy, json, len);
      copy[len] = 0;
    } else {
      err = KR_ENOMEM;
      why = "out of memory";
    }
  }
  hub_lock(h);
  op->done = 1;
  op->err = err;
  op->json = copy;
  op->len = len;
  snprintf(op->reason, sizeof(op->reason), "%s", why ? why : "");
  pthread_cond_broadcast(&op->cond);
  op_unref_locked(op);
  hub_unlock(h);
}

/* Completes the settling listings: of connection k (NULL: all) with
 * err_if_auth when k ended refusing the credentials, else with their own
 * error. */
static void settle(kr_bclient *c, bc_conn *k) {
  for (bc_op **pp = &c->settling; *pp;) {
    bc_op *op = *pp;
    if (k && op->conn != k) {
      pp = &op->lnext;
      continue;
    }
    *pp = op->lnext;
    int err = op->err;
    if (op->conn->state == CONN_ENDED && op->conn->err == KR_EAUTH)
      err = KR_EAUTH;
    op->conn->lists--;
    op_complete(c, op, err,
                err == KR_EAUTH ? op->conn->reason : "agent listing failed",
                NULL, 0);
  }
}

static void settle_cb(evutil_socket_t fd, short what, void *arg) {
  settle(arg, NULL);
}

static void list_cb(const char *json, size_t len, int err, void *ud) {
  bc_op *op = ud;
  kr_bclient *c = op->conn->c;
  for (bc_op **pp = &c->inflight_ops; *pp; pp = &(*pp)->lnext)
    if (*pp == op) {
      *pp = op->lnext;
      break;
    }
  if (err == KR_ERESET && !c->shutting) {
    /* kas refusing the credentials answers HELLO, then sends GOAWAY
     * UNAUTHORIZED: the listing is only REFUSED. Its connection ending
     * soon tells which it was (kr_client maps this for its streams). */
    op->err = err;
    op->lnext = c->settling;
    c->settling = op;
    struct timeval tv = {1, 0};
    evtimer_add(c->settle_ev, &tv);
    return;
  }
  op->conn->lists--;
  char why[64];
  snprintf(why, sizeof(why), "agent listing failed: %s", kr_strerror(err));
  op_complete(c, op, err, err ? why : NULL, json, len);
  if (c->shutting)
    kick(c);
}

static void start_op(kr_bclient *c, bc_op *op) {
  char why[KR__BC_REASON];
  bc_conn *k;
  int rc = conn_get(c, &k, why, sizeof(why));
  if (rc == 1) {
    op->conn = k;
    rc = kr_client_list_agents(k->kc, list_cb, op);
    if (rc == KR_EGOAWAY || rc == KR_ECLOSED) {
      k->draining = 1;
      rc = 0;
    } else if (rc == 0) {
      k->lists++;
      op->lnext = c->inflight_ops;
      c->inflight_ops = op;
      return;
    } else {
      snprintf(why, sizeof(why), "cannot list agents: %s", kr_strerror(rc));
    }
  }
  if (rc == 0) {
    op->wait = k;
    op->lnext = c->parked_ops;
    c->parked_ops = op;
    return;
  }
  op_complete(c, op, rc, why, NULL, 0);
}

/* ------------------------------------------------- loop: work and exit */

static void finish_shutdown(kr_bclient *c) {
  if (c->grace_ev)
    event_del(c->grace_ev);
  settle(c, NULL);
  /* Listings still in flight only end with their connection. */
  while (c->inflight_ops) {
    bc_op *op = c->inflight_ops;
    c->inflight_ops = op->lnext;
    op->conn->lists--;
    op_complete(c, op, KR_ECLOSED, "the client is closing", NULL, 0);
  }
  while (c->conns) {
    bc_conn *k = c->conns;
    c->conns = k->next;
    kr_client_free(k->kc);
    free(k);
  }
  c->cur = NULL;
  event_base_loopbreak(c->base);
}

static void grace_cb(evutil_socket_t fd, short what, void *arg) {
  finish_shutdown(arg);
}

/* Starts the end: every stream is reset (callers see KR_ECLOSED), queued
 * work fails, connections close; listings in flight get a moment to end
 * so their connection can be freed cleanly. */
static void begin_shutdown(kr_bclient *c) {
  c->shutting = 1;
  for (kr_bstream *s = c->streams, *nx; s; s = nx) {
    nx = s->lnext;
    if (s->ks)
      kr_stream_reset(s->ks, KR_CODE_CANCEL, "client closing");
    else
      loop_finish(c, s, KR_ECLOSED, "the client is closing");
  }
  while (c->streams) /* a reset whose on_close did not come */
    loop_finish(c, c->streams, KR_ECLOSED, "the client is closing");
  bc_op *ops = c->parked_ops;
  c->parked_ops = NULL;
  while (ops) {
    bc_op *op = ops;
    ops = op->lnext;
    op_complete(c, op, KR_ECLOSED, "the client is closing", NULL, 0);
  }
  int waiting = 0;
  for (bc_conn *k = c->conns; k; k = k->next)
    if (k->lists && k->state != CONN_ENDED) {
      kr_client_close(k->kc);
      waiting = 1;
    }
  if (!waiting) {
    finish_shutdown(c);
    return;
  }
  struct timeval tv = {KR__BC_SHUTDOWN_GRACE / 1000,
                       (KR__BC_SHUTDOWN_GRACE % 1000) * 1000};
  evtimer_add(c->grace_ev, &tv);
}

/* Takes the queued work: streams, listings, the stop request. */
static void serve(kr_bclient *c) {
  bc_hub *h = c->h;
  if (c->shutting) {
    if (!c->inflight_ops)
      finish_shutdown(c);
    return;
  }
  hub_lock(h);
  h->wake_pending = 0;
  kr_bstream *dirty = h->dirty;
  h->dirty = NULL;
  bc_op *ops = h->ops;
  h->ops = h->ops_tail = NULL;
  int stop = h->stopping;
  hub_unlock(h);
  /* Oldest first, so opens run in the order they were made. */
  kr_bstream *rev = NULL;
  while (dirty) {
    kr_bstream *s = dirty;
    dirty = s->dirty_next;
    s->dirty_next = rev;
    rev = s;
  }
  while (rev) {
    kr_bstream *s = rev;
    rev = s->dirty_next;
    s->dirty_next = NULL;
    if (stop) {
      hub_lock(h);
      s->in_dirty = 0;
      int open = s->want_open;
      s->want_open = 0;
      if (open) {
        bs_end_locked(s, KR_ECLOSED, "the client is closing", 21);
        bs_unref_locked(s); /* the loop's: it never started */
      }
      bs_unref_locked(s);
      hub_unlock(h);
      continue;
    }
    serve_stream(c, s);
    hub_lock(h);
    bs_unref_locked(s); /* the dirty queue's reference */
    hub_unlock(h);
  }
  while (ops) {
    bc_op *op = ops;
    ops = op->next;
    op->next = NULL;
    if (stop)
      op_complete(c, op, KR_ECLOSED, "the client is closing", NULL, 0);
    else
      start_op(c, op);
  }
  if (stop) {
    begin_shutdown(c);
    return;
  }
  unpark(c);
  reap_conns(c);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg) {
  char buf[64];
  while (read(fd, buf, sizeof(buf)) > 0)
    ;
  serve(arg);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg) {
  serve(arg);
}

static void *loop_main(void *arg) {
  kr_bclient *c = arg;
  event_base_loop(c->base, EVLOOP_NO_EXIT_ON_EMPTY);
  return NULL;
}

/* ---------------------------------------------------------------- client */

static void client_destroy(kr_bclient *c) {
  if (c->wake_ev)
    event_free(c->wake_ev);
  if (c->kick_ev)
    event_free(c->kick_ev);
  if (c->grace_ev)
    event_free(c->grace_ev);
  if (c->settle_ev)
    event_free(c->settle_ev);
  while (c->conns) {
    bc_conn *k = c->conns;
    c->conns = k->next;
    kr_client_free(k->kc);
    free(k);
  }
  if (c->base)
    event_base_free(c->base);
  kr_mux_callbacks_free(c->cbs);
  kr_client_options_free(c->copt);
  wipe_free(c->token, c->token_len);
  wipe_free(c->secret, c->secret_len);
  if (c->rfd >= 0)
    close(c->rfd);
  bc_hub *h = c->h;
  if (h) {
    hub_lock(h);
    if (h->wfd >= 0)
      close(h->wfd);
    h->wfd = -1;
    h->dead = 1;
    h->refs--;
    hub_unlock(h);
  }
  free(c);
}

int kr_bclient_new(kr_bclient **out, const kr_bclient_options *o, char *err,
                   size_t errlen) {
  char dummy[8];
  if (!err) {
    err = dummy;
    errlen = sizeof(dummy);
  }
  err[0] = 0;
  if (!out || !o || !o->has_url || (!o->token && !o->secret)) {
    snprintf(err, errlen, "%s",
             !o || !o->has_url ? "the kas URL is required"
                               : "a token or a secret is required");
    return KR_ECONFIG;
  }
  kr_bclient *c = calloc(1, sizeof(*c));
  bc_hub *h = calloc(1, sizeof(*h));
  if (!c || !h) {
    free(c);
    free(h);
    return KR_ENOMEM;
  }
  pthread_mutex_init(&h->mu, NULL);
  h->refs = 1;
  h->wfd = -1;
  c->h = h;
  c->rfd = -1;
  c->pid = getpid();
  c->timeout = o->timeout;
  int rc = KR_ENOMEM;
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
    snprintf(err, errlen, "pipe: %s", strerror(errno));
    rc = KR_EIO;
    goto fail;
  }
  c->rfd = fds[0];
  h->wfd = fds[1];
  if (o->token && !(c->token = malloc(o->token_len)))
    goto fail;
  if (o->token) {
    memcpy(c->token, o->token, o->token_len);
    c->token_len = o->token_len;
  }
  if (o->secret && !(c->secret = malloc(o->secret_len)))
    goto fail;
  if (o->secret) {
    memcpy(c->secret, o->secret, o->secret_len);
    c->secret_len = o->secret_len;
  }
  if (kr_client_options_new(&c->copt) < 0 || kr_mux_callbacks_new(&c->cbs) < 0)
    goto fail;
  rc = kr_client_options_set_url(c->copt, o->url);
  if (rc == 0 && o->ca_file[0])
    rc = kr_client_options_set_tls_ca_file(c->copt, o->ca_file);
  if (rc < 0) {
    snprintf(err, errlen, "bad option: %s", kr_strerror(rc));
    rc = KR_ECONFIG;
    goto fail;
  }
  kr_client_options_set_tls_verify(c->copt, o->verify);
  kr_mux_callbacks_set_on_reply(c->cbs, on_reply);
  kr_mux_callbacks_set_on_data(c->cbs, on_data);
  kr_mux_callbacks_set_on_fin(c->cbs, on_fin);
  kr_mux_callbacks_set_on_writable(c->cbs, on_writable);
  kr_mux_callbacks_set_on_close(c->cbs, on_close);
  rc = KR_ENOMEM;
  c->base = event_base_new();
  if (!c->base)
    goto fail;
  c->wake_ev = event_new(c->base, c->rfd, EV_READ | EV_PERSIST, wake_cb, c);
  c->kick_ev = event_new(c->base, -1, 0, kick_cb, c);
  c->grace_ev = evtimer_new(c->base, grace_cb, c);
  c->settle_ev = evtimer_new(c->base, settle_cb, c);
  if (!c->wake_ev || !c->kick_ev || !c->grace_ev || !c->settle_ev ||
      event_add(c->wake_ev, NULL) < 0)
    goto fail;
  /* The first connection is dialled here, before the thread exists, so
   * configuration errors (the CA file) come back from this call. */
  bc_conn *k;
  char why[KR__BC_REASON];
  rc = conn_get(c, &k, why, sizeof(why));
  if (rc < 0 && rc != KR_EIO && rc != KR_EADDR) {
    snprintf(err, errlen, "%s", why);
    goto fail;
  }
  if (pthread_create(&c->thread, NULL, loop_main, c) != 0) {
    snprintf(err, errlen, "cannot start the client thread");
    rc = KR_EIO;
    goto fail;
  }
  c->thread_started = 1;
  *out = c;
  return 0;
fail:
  client_destroy(c);
  return rc;
}

void kr_bclient_free(kr_bclient *c) {
  if (!c)
    return;
  if (getpid() != c->pid) {
    /* A forked child: the loop thread and the connection belong to the
     * parent (the event base shares its epoll set with it); release only
     * this struct's own memory. */
    wipe_free(c->token, c->token_len);
    wipe_free(c->secret, c->secret_len);
    free(c);
    return;
  }
  bc_hub *h = c->h;
  hub_lock(h);
  h->stopping = 1;
  h->wake_pending = 0; /* force a wake-up */
  wake_locked(h);
  hub_unlock(h);
  if (c->thread_started)
    pthread_join(c->thread, NULL);
  hub_lock(h);
  h->dead = 1;
  /* Streams queued while the loop stopped hold their dirty reference. */
  kr_bstream *dirty = h->dirty;
  h->dirty = NULL;
  while (dirty) {
    kr_bstream *s = dirty;
    dirty = s->dirty_next;
    s->in_dirty = 0;
    bs_unref_locked(s);
  }
  hub_unlock(h);
  client_destroy(c);
}

/* ---------------------------------------------------------------- streams */

static int check_client(const kr_bclient *c) {
  tl_err[0] = 0;
  if (!c)
    return fail(KR_EINVAL, "no client");
  if (getpid() != c->pid)
    return fail(KR_ESTATE, "a client cannot be used in a forked child");
  return 0;
}

static int check_stream(const kr_bstream *s) {
  tl_err[0] = 0;
  if (!s)
    return fail(KR_EINVAL, "no stream");
  if (getpid() != s->pid)
    return fail(KR_ESTATE, "a stream cannot be used in a forked child");
  return 0;
}

/* The error a stream call reports once s ended or broke (mutex held). */
static int stream_err_locked(const kr_bstream *s) {
  if (s->h->dead)
    return fail(KR_ECLOSED, "the client was freed");
  if (s->ended && s->err)
    return fail(s->err, "%s", s->reason[0] ? s->reason : kr_strerror(s->err));
  return fail(KR_ECLOSED, "the stream is closed");
}

static int md_ok(const kr_md *md, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!md[i].name || !md[i].name_len || (!md[i].value && md[i].value_len))
      return 0;
  return 1;
}

int kr_bclient_open(kr_bclient *c, int64_t agent, const char *service,
                    const kr_md *extra, size_t n, kr_time_us timeout,
                    kr_bstream **out) {
  int rc = check_client(c);
  if (rc < 0)
    return rc;
  if (agent <= 0 || !service || !*service || !out || (n && !extra) ||
      !md_ok(extra, n))
    return fail(KR_EINVAL, "agent, service and stream are required");
  kr_bstream *s = bs_new(c, agent, service);
  if (!s)
    return fail(KR_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++)
    if ((rc = kr__mdlist_add(&s->open_md, extra[i].name, extra[i].name_len,
                             extra[i].value, extra[i].value_len)) < 0) {
      bs_discard(s);
      return fail(rc, "stream metadata: %s", kr_strerror(rc));
    }
  bs_post_open(s);
  struct timespec dl = deadline_of(eff_timeout(c, timeout));
  bc_hub *h = c->h;
  hub_lock(h);
  rc = bs_wait_reply_locked(s, &dl);
  if (rc == 0 && !s->replied)
    rc = stream_err_locked(s);
  else if (rc == KR_ETIMEDOUT)
    fail(rc, "agent %lld service %s did not answer in time", (long long)agent,
         service);
  hub_unlock(h);
  if (rc < 0) {
    bs_release(s);
    return rc;
  }
  *out = s;
  return 0;
}

int64_t kr_bstream_write(kr_bstream *s, const void *buf, size_t len,
                         kr_time_us timeout) {
  int rc = check_stream(s);
  if (rc < 0)
    return rc;
  if (!buf && len)
    return fail(KR_EINVAL, "no buffer");
  if (len > INT64_MAX)
    return fail(KR_EINVAL, "too long");
  bc_hub *h = s->h;
  struct timespec dl = deadline_of(timeout ? timeout : s->timeout);
  const uint8_t *p = buf;
  size_t off = 0;
  int64_t ret = (int64_t)len;
  hub_lock(h);
  for (;;) {
    if (!h->dead && s->want_fin) {
      ret = fail(KR_ESTATE, "the stream was closed for writing");
      break;
    }
    if (h->dead || s->ended) {
      ret = stream_err_locked(s);
      break;
    }
    if (s->wr_err) {
      ret = fail(s->wr_err, "the stream cannot be written any more");
      break;
    }
    size_t used = evbuffer_get_length(s->tx);
    if (used < KR__BS_TX_MAX && off < len) {
      size_t n = KR__BS_TX_MAX - used;
      if (n > len - off)
        n = len - off;
      if (evbuffer_add(s->tx, p + off, n) < 0) {
        ret = fail(KR_ENOMEM, "out of memory");
        break;
      }
      off += n;
      bs_dirty_locked(s);
    }
    if (off == len)
      break;
    if (wait_until(&s->cond, h, &dl) == KR_ETIMEDOUT &&
        evbuffer_get_length(s->tx) >= KR__BS_TX_MAX) {
      ret = fail(KR_ETIMEDOUT, "the stream's window stayed closed");
      break;
    }
  }
  /* Part of the bytes went: the byte stream has a hole, so no more. */
  if (ret < 0 && off > 0 && !s->wr_err)
    s->wr_err = (int)ret;
  hub_unlock(h);
  return ret;
}

int64_t kr_bstream_read(kr_bstream *s, void *buf, size_t cap,
                        kr_time_us timeout) {
  int rc = check_stream(s);
  if (rc < 0)
    return rc;
  if (!buf || cap == 0)
    return fail(KR_EINVAL, "no buffer");
  bc_hub *h = s->h;
  struct timespec dl = deadline_of(timeout ? timeout : s->timeout);
  int64_t ret;
  hub_lock(h);
  for (;;) {
    if (h->dead) {
      ret = stream_err_locked(s);
      break;
    }
    size_t have = evbuffer_get_length(s->rx);
    if (have) {
      if (cap > have)
        cap = have;
      if (cap > INT64_MAX)
        cap = INT64_MAX;
      evbuffer_remove(s->rx, buf, cap);
      ret = (int64_t)cap;
      if (!s->ended) {
        s->consume += cap;
        bs_dirty_locked(s);
      }
      break;
    }
    if (s->rx_eof) {
      ret = 0;
      break;
    }
    if (s->ended) {
      ret = stream_err_locked(s);
      break;
    }
    if (wait_until(&s->cond, h, &dl) == KR_ETIMEDOUT &&
        evbuffer_get_length(s->rx) == 0 && !s->rx_eof && !s->ended) {
      ret = fail(KR_ETIMEDOUT, "nothing arrived in time");
      break;
    }
  }
  hub_unlock(h);
  return ret;
}

int kr_bstream_close_write(kr_bstream *s) {
  int rc = check_stream(s);
  if (rc < 0)
    return rc;
  bc_hub *h = s->h;
  hub_lock(h);
  if (h->dead || s->ended)
    rc = stream_err_locked(s);
  else if (s->want_fin)
    rc = fail(KR_ESTATE, "the stream was already closed for writing");
  else {
    s->want_fin = 1;
    bs_dirty_locked(s);
  }
  hub_unlock(h);
  return rc;
}

void kr_bstream_free(kr_bstream *s) {
  if (!s || getpid() != s->pid)
    return; /* a forked child releases nothing the parent shares */
  bs_release(s);
}

/* ------------------------------------------------------------------- HTTP */

struct kr_bhttp_response {
  kr_bstream *s;
  int status;
  kr__mdlist fields;
};

/* 1 if the bytes contain no CR, LF or NUL (they would split the head the
 * agent writes). */
static int bytes_ok(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] == '\r' || p[i] == '\n' || p[i] == 0)
      return 0;
  return 1;
}

/* The OPEN metadata of an HTTP request (docs/PROTOCOL.md "HTTP"): method,
 * path, the end-to-end fields lower-cased, and content-length. */
static int http_md(kr__mdlist *out, const char *method, const char *path,
                   const kr_md *headers, size_t n, size_t body_len) {
  kr__mdlist lower;
  kr__mdlist_init(&lower);
  int rc = 0, has_cl = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const kr_md *f = &headers[i];
    if (!f->name || !f->name_len || f->name_len > 256 || f->name[0] == ':' ||
        (!f->value && f->value_len) || !bytes_ok(f->name, f->name_len) ||
        !bytes_ok(f->value, f->value_len)) {
      rc = fail(KR_EINVAL, "bad header field %zu", i);
      break;
    }
    char name[256];
    for (size_t j = 0; j < f->name_len; j++) {
      uint8_t ch = f->name[j];
      name[j] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    /* Values lose surrounding blanks, as the gateway sends them. */
    const uint8_t *v = f->value;
    size_t vl = f->value_len;
    while (vl && (v[0] == ' ' || v[0] == '\t'))
      v++, vl--;
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
      vl--;
    rc = kr__mdlist_add(&lower, name, f->name_len, vl ? v : (const uint8_t *)"",
                        vl);
  }
  if (rc == 0)
    rc = kr__mdlist_adds(out, KR_MD_METHOD, method);
  if (rc == 0)
    rc = kr__mdlist_adds(out, KR_MD_PATH, path);
  for (size_t i = 0; rc == 0 && i < lower.n; i++) {
    const kr_md *f = &lower.md[i];
    if (kr__http_is_hop_by_hop((const char *)f->name, f->name_len, lower.md,
                               lower.n))
      continue;
    if (kr__md_is(f, "content-length"))
      has_cl = 1;
    rc = kr__mdlist_add(out, f->name, f->name_len, f->value, f->value_len);
  }
  if (rc == 0 && body_len && !has_cl) {
    char cl[24];
    snprintf(cl, sizeof(cl), "%zu", body_len);
    rc = kr__mdlist_adds(out, "content-length", cl);
  }
  kr__mdlist_free(&lower);
  if (rc < 0 && !tl_err[0])
    fail(rc, "request head: %s", kr_strerror(rc));
  return rc;
}

static int token_ok(const char *s) {
  if (!*s || strlen(s) > 32)
    return 0;
  for (; *s; s++)
    if (*s <= ' ' || *s >= 127 || strchr("()<>@,;:\\\"/[]?={}", *s))
      return 0;
  return 1;
}

int kr_bclient_http_request(kr_bclient *c, int64_t agent, const char *service,
                            const char *method, const char *path,
                            const kr_md *headers, size_t n_headers,
                            const void *body, size_t body_len,
                            kr_time_us timeout, kr_bhttp_response **out) {
  int rc = check_client(c);
  if (rc < 0)
    return rc;
  if (agent <= 0 || !service || !*service || !method || !token_ok(method) ||
      !path || path[0] != '/' ||
      !bytes_ok((const uint8_t *)path, strlen(path)) || strchr(path, ' ') ||
      (n_headers && !headers) || (body_len && !body) || !out)
    return fail(KR_EINVAL, "agent, service, method, an origin-form path and "
                           "the response are required");
  kr_bhttp_response *r = calloc(1, sizeof(*r));
  kr_bstream *s = r ? bs_new(c, agent, service) : NULL;
  if (!s) {
    free(r);
    return fail(KR_ENOMEM, "out of memory");
  }
  kr__mdlist_init(&r->fields);
  rc = http_md(&s->open_md, method, path, headers, n_headers, body_len);
  if (rc < 0) {
    bs_discard(s);
    free(r);
    return rc;
  }
  s->open_fin = body_len == 0;
  bs_post_open(s);
  kr_time_us t = eff_timeout(c, timeout);
  struct timespec dl = deadline_of(t);
  if (body_len) {
    /* The body goes while kas routes the stream; a refusal shows as the
     * stream's error below. */
    int64_t w = kr_bstream_write(s, body, body_len, t);
    if (w >= 0)
      kr_bstream_close_write(s);
  }
  bc_hub *h = c->h;
  hub_lock(h);
  rc = bs_wait_reply_locked(s, &dl);
  if (rc == KR_ETIMEDOUT)
    fail(rc, "no response from agent %lld service %s in time", (long long)agent,
         service);
  else if (!s->replied)
    rc = stream_err_locked(s);
  if (rc == 0) {
    const kr_md *st = kr__md_find(s->reply_md.md, s->reply_md.n, KR_MD_STATUS);
    r->status = st ? kr__http_parse_status(st->value, st->value_len) : -1;
    if (r->status < 0)
      rc = fail(KR_EPROTO, "the response has no valid status");
    for (size_t i = 0; rc == 0 && i < s->reply_md.n; i++) {
      const kr_md *f = &s->reply_md.md[i];
      if (f->name_len && f->name[0] == ':')
        continue;
      rc = kr__mdlist_add(&r->fields, f->name, f->name_len, f->value,
                          f->value_len);
      if (rc < 0)
        fail(rc, "response head: %s", kr_strerror(rc));
    }
  }
  hub_unlock(h);
  if (rc < 0) {
    bs_release(s);
    kr__mdlist_free(&r->fields);
    free(r);
    return rc;
  }
  r->s = s;
  *out = r;
  return 0;
}

int kr_bhttp_response_status(const kr_bhttp_response *r) {
  return r ? r->status : KR_EINVAL;
}

size_t kr_bhttp_response_header_count(const kr_bhttp_response *r) {
  return r ? r->fields.n : 0;
}

int kr_bhttp_response_header(const kr_bhttp_response *r, size_t i,
                             const char **name, size_t *name_len,
                             const char **value, size_t *value_len) {
  if (!r || i >= r->fields.n)
    return KR_EINVAL;
  const kr_md *f = &r->fields.md[i];
  if (name)
    *name = (const char *)f->name;
  if (name_len)
    *name_len = f->name_len;
  if (value)
    *value = (const char *)f->value;
  if (value_len)
    *value_len = f->value_len;
  return 0;
}

int64_t kr_bhttp_response_read(kr_bhttp_response *r, void *buf, size_t cap,
                               kr_time_us timeout) {
  if (!r)
    return fail(KR_EINVAL, "no response");
  return kr_bstream_read(r->s, buf, cap, timeout);
}

void kr_bhttp_response_free(kr_bhttp_response *r) {
  if (!r)
    return;
  if (getpid() != r->s->pid)
    return;
  kr_bstream_free(r->s);
  kr__mdlist_free(&r->fields);
  free(r);
}

/* ----------------------------------------------------------------- agents */

int kr_bclient_list_agents(kr_bclient *c, kr_time_us timeout, char **json,
                           size_t *len) {
  int rc = check_client(c);
  if (rc < 0)
    return rc;
  if (!json)
    return fail(KR_EINVAL, "json is required");
  bc_op *op = calloc(1, sizeof(*op));
  if (!op || cond_init(&op->cond) < 0) {
    free(op);
    return fail(KR_ENOMEM, "out of memory");
  }
  op->refs = 2;
  struct timespec dl = deadline_of(eff_timeout(c, timeout));
  bc_hub *h = c->h;
  hub_lock(h);
  if (h->ops_tail)
    h->ops_tail->next = op;
  else
    h->ops = op;
  h->ops_tail = op;
  wake_locked(h);
  while (!op->done)
    if (wait_until(&op->cond, h, &dl) == KR_ETIMEDOUT && !op->done)
      break;
  if (!op->done) {
    rc = fail(KR_ETIMEDOUT, "the agent listing did not arrive in time");
  } else if (op->err) {
    rc = fail(op->err, "%s", op->reason);
  } else {
    *json = op->json;
    if (len)
      *len = op->len;
    op->json = NULL;
  }
  op_unref_locked(op);
  hub_unlock(h);
  return rc;
}

void kr_bclient_free_string(char *s) {
  free(s);
}
