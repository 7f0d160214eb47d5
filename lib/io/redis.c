/* Redis client over hiredis 0.14's async API on libevent (see redis.h).
 *
 * Objects: a kr__redis owns up to four links, each one hiredis async
 * context with its own timer: the command link (r->cmd), the pub/sub link
 * (r->sub), and under Sentinel a short-lived discovery link (r->disc) and
 * a subscription to "+switch-master" on a sentinel (r->sentsub). A link
 * that ends is closed by link_close(), detached from r, and freed once no
 * frame of ours is on the stack.
 *
 * Lifetimes, and why they are safe:
 *  - every hiredis callback finds its link through ac->data; link_close()
 *    clears ac->data first, so hiredis callbacks that still arrive for a
 *    closed link (the NULL replies redisAsyncFree() hands out, the
 *    disconnect callback) touch nothing but the command record they own.
 *  - a command record (rreq) is owned by hiredis from the moment
 *    redisAsyncCommandArgv() accepted it: hiredis calls on_reply() exactly
 *    once per record (with the reply, or NULL when the context goes away)
 *    and on_reply() frees it. The link's list only borrows it, and
 *    link_close() marks the records it fails early as done.
 *  - hiredis contexts are freed with redisAsyncFree() only where hiredis
 *    allows it: outside its callbacks, or inside a reply callback, where
 *    hiredis defers the free until the callback returns. Inside the
 *    connect-failure and disconnect callbacks hiredis frees the context
 *    itself; the connect-success callback runs no code of the owner.
 *  - r->depth counts our frames that may call the owner; kr__redis_free()
 *    inside a callback only marks r, and the outermost frame releases the
 *    memory on its way out (leave()).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/http.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>

#include <kasroute/error.h>

#include "core/backoff.h"
#include "io/conn.h"
#include "io/log.h"
#include "io/redis.h"

#define MS 1000ull /* microseconds */
#define STABLE_US                                                              \
  (10 * 1000 * MS) /* a connection that lived this long                        \
                      resets the backoff */
#define MAX_PASSWORD 512
#define MAX_USER 128
#define MAX_NAME 256
#define MAX_DB 1000000
#define SWITCH_CHANNEL "+switch-master"
#define HOSTLEN INET6_ADDRSTRLEN

typedef enum { L_CMD, L_SUB, L_SENTQ, L_SENTSUB } link_kind;
static const char *const kind_names[] = {"command", "subscriber",
                                         "sentinel-query", "sentinel-sub"};

typedef enum { LS_CONNECTING, LS_HANDSHAKE, LS_READY } link_state;

/* Which hiredis callback of this link is on the stack (decides whether
 * redisAsyncFree() may be called). */
typedef enum { HC_NONE, HC_REPLY, HC_GONE } hiredis_ctx;

/* Handshake and internal steps answered through rreq.step. */
typedef enum {
  ST_USER,      /* the owner's command */
  ST_AUTH,      /* command link AUTH */
  ST_SELECT,    /* command link SELECT */
  ST_CHECK,     /* command link PING, or ROLE under Sentinel */
  ST_SUBAUTH,   /* pub/sub link AUTH, then SUBSCRIBE */
  ST_SENTQUERY, /* SENTINEL get-master-addr-by-name */
} step_kind;

typedef struct rlink rlink;

typedef struct rreq {
  struct rreq *next, *prev;
  int done; /* answered or failed already; hiredis still owns it */
  step_kind step;
  kr_time_us deadline;
  kr__redis_reply_fn cb;
  void *ud;
} rreq;

typedef struct rsub {
  struct rsub *next;
  char *channel;
  kr__redis_message_fn cb;
  void *ud;
} rsub;

struct rlink {
  kr__redis *r;
  rlink *next_dead;
  link_kind kind;
  link_state state;
  int closing;
  hiredis_ctx hctx;
  redisAsyncContext *ac; /* NULL once closed or freed by hiredis */
  struct event *timer;
  kr_time_us connect_deadline;
  kr_time_us sub_deadline; /* oldest unconfirmed SUBSCRIBE (ready state) */
  rreq *head, *tail;
  size_t npending;
  unsigned hs_left;   /* handshake replies still awaited */
  size_t unconfirmed; /* SUBSCRIBE confirmations still awaited */
  int subs_sent;      /* SUBSCRIBE commands went out on this link */
  size_t sentinel;    /* index, for sentinel links */
  char host[HOSTLEN];
  int port;
};

typedef struct raddr {
  char host[HOSTLEN];
  int port;
} raddr;

struct kr__redis {
  struct event_base *base;
  kr_time_us connect_timeout, command_timeout;
  size_t max_pending;
  char user[MAX_USER + 1];
  char password[MAX_PASSWORD + 1]; /* secret: wiped on release */
  int db;
  int sentinel_mode;
  raddr sentinels[KR__REDIS_MAX_SENTINELS];
  size_t n_sentinels;
  char master_name[MAX_NAME + 1];
  raddr master;
  int master_known;
  char server[HOSTLEN + 16];
  rlink *cmd, *sub, *disc, *sentsub;
  rlink *dead; /* closed links awaiting depth 0 */
  rsub *subs, *subs_tail;
  size_t nsubs;
  rsub switch_sub; /* "+switch-master" on r->sentsub */
  kr__backoff backoff;
  struct event *retry_ev, *kick_ev;
  int need_discovery;
  int switching; /* links closing because the master moved */
  size_t disc_idx, disc_tried, good_sentinel;
  int disc_err;
  char disc_why[HOSTLEN + 128];
  int depth, freed;
  kr__redis_state_fn on_state;
  void *state_ud;
};

static void link_close(rlink *l, int err, const char *why, int notify);
static void kick(kr__redis *r);
static void schedule_retry(kr__redis *r);
static void discovery_start(kr__redis *r);

/* --------------------------------------------------------------- helpers */

static uint64_t random_u64(void) {
  uint64_t v = 0;
  if (getrandom(&v, sizeof(v), 0) != sizeof(v))
    v = (uint64_t)kr__now_us() * 6364136223846793005ull;
  return v;
}

static void wipe(void *p, size_t n) {
  volatile unsigned char *v = p;
  for (size_t i = 0; i < n; i++)
    v[i] = 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, const char *a,
                    const char *b) {
  if (err && errlen)
    snprintf(err, errlen, fmt, a, b);
}

static void format_addr(char *out, size_t size, const char *host, int port) {
  if (strchr(host, ':'))
    snprintf(out, size, "[%s]:%d", host, port);
  else
    snprintf(out, size, "%s:%d", host, port);
}

static int is_numeric_host(const char *host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host, buf) == 1 ||
         inet_pton(AF_INET6, host, buf) == 1;
}

/* Resolves host once (blocking getaddrinfo, see redis.h) to its first
 * numeric address. 0 or KR_EADDR. */
static int resolve(const char *host, char *out, size_t size) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
    return KR_EADDR;
  int rc = getnameinfo(res->ai_addr, res->ai_addrlen, out, (socklen_t)size,
                       NULL, 0, NI_NUMERICHOST);
  freeaddrinfo(res);
  return rc == 0 ? 0 : KR_EADDR;
}

/* Decodes one percent-encoded part of the user info into out (size bytes
 * with the NUL). 0, or KR_EADDR when it does not fit. The decoded copy is
 * wiped: it may be a password. */
static int decode_part(const char *raw, size_t len, char *out, size_t size) {
  char tmp[3 * MAX_PASSWORD + 1];
  if (len >= sizeof(tmp))
    return KR_EADDR;
  memcpy(tmp, raw, len);
  tmp[len] = 0;
  size_t n = 0;
  char *dec = evhttp_uridecode(tmp, 0, &n);
  wipe(tmp, sizeof(tmp));
  if (!dec)
    return KR_ENOMEM;
  int rc = 0;
  if (n >= size || memchr(dec, 0, n))
    rc = KR_EADDR;
  else
    memcpy(out, dec, n + 1);
  wipe(dec, n);
  free(dec);
  return rc;
}

/* Parses "redis://[[user]:password@]host[:port][/db]" with evhttp_uri.
 * auth: user info and a db path are allowed (the server URL); otherwise
 * only host and port (a sentinel). Fills a (host resolved to a numeric
 * address) and, with auth, user, password and db. Returns 0, KR_EADDR or
 * KR_ENOMEM with err set (never quoting the user info). */
static int parse_url(const char *url, int auth, int default_port, raddr *a,
                     char *user, char *password, int *db, char *err,
                     size_t errlen) {
  const char *shown = auth ? "(redis URL)" : url;
  if (strlen(url) > 2048) {
    set_err(err, errlen, "bad address %s: %s", "(too long)", "too long");
    return KR_EADDR;
  }
  struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
  if (!u) {
    set_err(err, errlen, "bad address %s: %s", shown,
            auth ? "not a URL (expected redis://host:port)"
                 : "expected host:port");
    return KR_EADDR;
  }
  int rc = 0;
  const char *scheme = evhttp_uri_get_scheme(u);
  const char *host = evhttp_uri_get_host(u);
  const char *userinfo = evhttp_uri_get_userinfo(u);
  const char *path = evhttp_uri_get_path(u);
  int port = evhttp_uri_get_port(u);
  char h[256];
  if (!scheme || strcasecmp(scheme, "redis") != 0) {
    rc = KR_EADDR;
    set_err(err, errlen, "bad address %s: %s", shown,
            scheme && strcasecmp(scheme, "rediss") == 0
                ? "TLS (rediss://) is not supported"
                : "scheme must be redis://");
  } else if (!host || !*host || strlen(host) >= sizeof(h)) {
    rc = KR_EADDR;
    set_err(err, errlen, "bad address %s: %s", shown,
            "missing or oversized host");
  } else if (evhttp_uri_get_query(u) || evhttp_uri_get_fragment(u)) {
    rc = KR_EADDR;
    set_err(err, errlen, "bad address %s: %s", shown,
            "query or fragment not allowed");
  } else if (!auth && (userinfo || (path && *path))) {
    rc = KR_EADDR;
    set_err(err, errlen, "bad address %s: %s", shown, "expected host:port");
  } else if (port == 0 || port > 65535) {
    rc = KR_EADDR;
    set_err(err, errlen, "bad address %s: %s", shown, "invalid port");
  }
  if (rc == 0 && auth && path && *path && strcmp(path, "/") != 0) {
    char *end = NULL;
    errno = 0;
    long v = strtol(path + 1, &end, 10);
    if (errno || !end || *end || end == path + 1 || v < 0 || v > MAX_DB) {
      rc = KR_EADDR;
      set_err(err, errlen, "bad address %s: %s", shown,
              "path must be /DB (a database number)");
    } else {
      *db = (int)v;
    }
  }
  if (rc == 0 && auth && userinfo) {
    const char *colon = strchr(userinfo, ':');
    if (!colon) {
      rc = KR_EADDR;
      set_err(err, errlen, "bad address %s: %s", shown,
              "user info must be [user]:password");
    } else {
      rc =
          decode_part(userinfo, (size_t)(colon - userinfo), user, MAX_USER + 1);
      if (rc == 0)
        rc = decode_part(colon + 1, strlen(colon + 1), password,
                         MAX_PASSWORD + 1);
      if (rc == 0 && !*password)
        rc = KR_EADDR;
      if (rc < 0)
        set_err(err, errlen, "bad address %s: %s", shown,
                "bad, empty or oversized user or password");
    }
  }
  if (rc == 0) {
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
      snprintf(h, sizeof(h), "%.*s", (int)(hl - 2), host + 1);
    else
      snprintf(h, sizeof(h), "%s", host);
    a->port = port < 0 ? default_port : port;
    if (resolve(h, a->host, sizeof(a->host)) < 0) {
      rc = KR_EADDR;
      set_err(err, errlen, "cannot resolve host %s%s", h, "");
    }
  }
  evhttp_uri_free(u);
  return rc;
}

/* ------------------------------------------------------- depth and state */

static void enter(kr__redis *r) {
  r->depth++;
}

static void free_link(rlink *l) {
  if (l->timer)
    event_free(l->timer);
  free(l);
}

static void release(kr__redis *r) {
  while (r->subs) {
    rsub *s = r->subs;
    r->subs = s->next;
    free(s->channel);
    free(s);
  }
  if (r->retry_ev)
    event_free(r->retry_ev);
  if (r->kick_ev)
    event_free(r->kick_ev);
  wipe(r->password, sizeof(r->password));
  free(r);
}

/* Leaves a frame that may have called the owner: at depth 0, closed links
 * are freed, and r itself when kr__redis_free() was called meanwhile. */
static void leave(kr__redis *r) {
  if (--r->depth > 0)
    return;
  while (r->dead) {
    rlink *l = r->dead;
    r->dead = l->next_dead;
    free_link(l);
  }
  if (r->freed)
    release(r);
}

static void emit(kr__redis *r, kr__redis_event ev, int err, const char *why) {
  if (!r->freed && r->on_state)
    r->on_state(r, ev, err, why, r->state_ud);
}

static void log_down(const rlink *l, int err, const char *why) {
  char q[256];
  kr__log_quote(q, sizeof(q), why ? why : "", why ? strlen(why) : 0);
  kr__log(l->kind == L_SENTQ ? KR_LOG_INFO : KR_LOG_WARN, "redis_disconnected",
          "link=%s server=%s:%d err=%s reason=%s", kind_names[l->kind], l->host,
          l->port, kr_err_name(err), q);
}

/* ----------------------------------------------------------------- timers */

/* The time by which the link must make progress: the connect deadline
 * until it is ready, then the oldest pending command or unconfirmed
 * subscription. 0: nothing to wait for. */
static kr_time_us link_deadline(const rlink *l) {
  if (l->state != LS_READY)
    return l->connect_deadline;
  kr_time_us d = 0;
  if (l->head)
    d = l->head->deadline;
  if (l->unconfirmed && (!d || l->sub_deadline < d))
    d = l->sub_deadline;
  return d;
}

/* Arms the link timer for its deadline unless already armed: deadlines
 * only grow along the pending list, so an armed timer is never late; it
 * re-arms itself when it fires early. */
static void arm(rlink *l) {
  if (!l->timer || evtimer_pending(l->timer, NULL))
    return;
  kr_time_us d = link_deadline(l);
  if (!d)
    return;
  kr_time_us now = kr__now_us();
  kr_time_us left = d > now ? d - now : 0;
  struct timeval tv = {(time_t)(left / 1000000u),
                       (suseconds_t)(left % 1000000u)};
  evtimer_add(l->timer, &tv);
}

static void link_timer_cb(evutil_socket_t fd, short what, void *arg) {
  rlink *l = arg;
  kr__redis *r = l->r;
  enter(r);
  kr_time_us d = link_deadline(l), now = kr__now_us();
  if (d && now >= d) {
    char why[96];
    if (l->state != LS_READY)
      snprintf(why, sizeof(why), "not ready within %llu ms",
               (unsigned long long)(r->connect_timeout / MS));
    else
      snprintf(why, sizeof(why), "no reply within %llu ms",
               (unsigned long long)(r->command_timeout / MS));
    link_close(l, KR_ETIMEDOUT, why, 1);
  } else {
    arm(l);
  }
  leave(r);
}

/* -------------------------------------------------------------- commands */

static void list_unlink(rlink *l, rreq *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    l->head = c->next;
  if (c->next)
    c->next->prev = c->prev;
  else
    l->tail = c->prev;
  c->next = c->prev = NULL;
  l->npending--;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Queues one command on l. 0, or KR_ECLOSED when hiredis refuses (the
 * context is going away) or KR_ENOMEM; the record is then freed. */
static int link_send(rlink *l, step_kind step, kr_time_us deadline, int argc,
                     const char **argv, const size_t *argvlen,
                     kr__redis_reply_fn cb, void *ud) {
  rreq *c = calloc(1, sizeof(*c));
  if (!c)
    return KR_ENOMEM;
  c->step = step;
  c->deadline = deadline;
  c->cb = cb;
  c->ud = ud;
  if (!l->ac || redisAsyncCommandArgv(l->ac, on_reply, c, argc, argv,
                                      argvlen) != REDIS_OK) {
    free(c);
    return KR_ECLOSED;
  }
  c->prev = l->tail;
  if (l->tail)
    l->tail->next = c;
  else
    l->head = c;
  l->tail = c;
  l->npending++;
  arm(l);
  return 0;
}

/* ----------------------------------------------------------------- links */

static const char *ac_why(const redisAsyncContext *ac, const char *dflt) {
  return ac && ac->errstr && *ac->errstr ? ac->errstr : dflt;
}

static void on_connect(const redisAsyncContext *cac, int status);
static void on_disconnect(const redisAsyncContext *cac, int status);

static void link_ready(rlink *l) {
  kr__redis *r = l->r;
  l->state = LS_READY;
  arm(l);
  switch (l->kind) {
  case L_CMD:
    kr__backoff_connected(&r->backoff, kr__now_us());
    kr__log(KR_LOG_INFO, "redis_connected", "link=command server=%s:%d",
            l->host, l->port);
    emit(r, KR__REDIS_UP, 0, NULL);
    break;
  case L_SUB:
    kr__log(KR_LOG_INFO, "redis_subscribed", "server=%s:%d channels=%zu",
            l->host, l->port, r->nsubs);
    emit(r, KR__REDIS_SUB_UP, 0, NULL);
    break;
  case L_SENTSUB:
    kr__log(KR_LOG_INFO, "redis_connected", "link=sentinel-sub server=%s:%d",
            l->host, l->port);
    break;
  case L_SENTQ:
    break;
  }
}

static void on_sub(redisAsyncContext *ac, void *reply, void *privdata);

static void send_subscribe(rlink *l, rsub *s) {
  const char *argv[2] = {"SUBSCRIBE", s->channel};
  if (!l->ac ||
      redisAsyncCommandArgv(l->ac, on_sub, s, 2, argv, NULL) != REDIS_OK)
    return; /* the context is going away; the link closes on its own */
  if (l->unconfirmed++ == 0)
    l->sub_deadline = kr__now_us() + l->r->command_timeout;
  arm(l);
}

static void send_subscribes(rlink *l) {
  kr__redis *r = l->r;
  l->subs_sent = 1;
  if (l->kind == L_SENTSUB) {
    send_subscribe(l, &r->switch_sub);
    return;
  }
  for (rsub *s = r->subs; s; s = s->next)
    send_subscribe(l, s);
}

/* Sends the handshake that follows the TCP connect. Runs inside hiredis's
 * connect callback, where the context cannot be freed: it never closes the
 * link and never calls the owner. */
static void link_handshake(rlink *l) {
  kr__redis *r = l->r;
  kr_time_us dl = l->connect_deadline;
  l->state = LS_HANDSHAKE;
  char db[16];
  const char *auth[3] = {"AUTH", r->user, r->password};
  switch (l->kind) {
  case L_CMD:
    if (r->password[0]) {
      l->hs_left++;
      if (r->user[0])
        link_send(l, ST_AUTH, dl, 3, auth, NULL, NULL, NULL);
      else
        link_send(l, ST_AUTH, dl, 2, (const char *[]){"AUTH", r->password},
                  NULL, NULL, NULL);
    }
    if (r->db) {
      snprintf(db, sizeof(db), "%d", r->db);
      l->hs_left++;
      link_send(l, ST_SELECT, dl, 2, (const char *[]){"SELECT", db}, NULL, NULL,
                NULL);
    }
    l->hs_left++;
    link_send(l, ST_CHECK, dl, 1,
              (const char *[]){r->sentinel_mode ? "ROLE" : "PING"}, NULL, NULL,
              NULL);
    break;
  case L_SUB:
    if (r->password[0]) {
      if (r->user[0])
        link_send(l, ST_SUBAUTH, dl, 3, auth, NULL, NULL, NULL);
      else
        link_send(l, ST_SUBAUTH, dl, 2, (const char *[]){"AUTH", r->password},
                  NULL, NULL, NULL);
    } else {
      send_subscribes(l);
    }
    break;
  case L_SENTQ:
    link_send(
        l, ST_SENTQUERY, dl, 3,
        (const char *[]){"SENTINEL", "get-master-addr-by-name", r->master_name},
        NULL, NULL, NULL);
    break;
  case L_SENTSUB:
    send_subscribes(l);
    break;
  }
}

/* Creates a link of kind to host:port and starts connecting; stores it in
 * its slot of r. A connect that fails at once is closed (and reported like
 * any failed attempt) before this returns, so only call it where the owner
 * may be called. */
static void link_start(kr__redis *r, link_kind kind, const raddr *a,
                       size_t sentinel) {
  rlink *l = calloc(1, sizeof(*l));
  if (!l || !(l->timer = evtimer_new(r->base, link_timer_cb, l))) {
    free(l);
    kr__log(KR_LOG_ERROR, "redis_disconnected", "link=%s err=NOMEM",
            kind_names[kind]);
    schedule_retry(r);
    return;
  }
  l->r = r;
  l->kind = kind;
  l->sentinel = sentinel;
  snprintf(l->host, sizeof(l->host), "%s", a->host);
  l->port = a->port;
  rlink **slot = kind == L_CMD     ? &r->cmd
                 : kind == L_SUB   ? &r->sub
                 : kind == L_SENTQ ? &r->disc
                                   : &r->sentsub;
  *slot = l;
  l->connect_deadline = kr__now_us() + r->connect_timeout;
  redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);
  if (!ac || ac->err) {
    char why[160];
    snprintf(why, sizeof(why), "%s", ac_why(ac, "out of memory"));
    if (ac)
      redisAsyncFree(ac); /* not attached: no callbacks */
    enter(r);
    link_close(l, KR_EIO, why, 1);
    leave(r);
    return;
  }
  ac->data = l;
  l->ac = ac;
  /* TCP keepalive (hiredis: 15 s): the pub/sub and sentinel links carry no
   * traffic of their own, so a vanished peer is noticed this way. */
  redisEnableKeepAlive(&ac->c);
  redisLibeventAttach(ac, r->base);
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  arm(l);
}

/* Ends the link: fails its pending commands (exactly once, with err or
 * KR_ECLOSED), releases the hiredis context where that is allowed (see the
 * top of this file), detaches the link from r and, with notify, reports
 * the loss and schedules what comes next. The caller is inside
 * enter()/leave(); the link struct is freed at depth 0. */
static void link_close(rlink *l, int err, const char *why, int notify) {
  if (l->closing)
    return;
  kr__redis *r = l->r;
  l->closing = 1;
  if (r->cmd == l)
    r->cmd = NULL;
  else if (r->sub == l)
    r->sub = NULL;
  else if (r->disc == l)
    r->disc = NULL;
  else if (r->sentsub == l)
    r->sentsub = NULL;
  if (l->timer) {
    event_free(l->timer);
    l->timer = NULL;
  }
  link_state was = l->state;
  redisAsyncContext *ac = l->ac;
  l->ac = NULL;
  if (ac)
    ac->data = NULL;
  l->next_dead = r->dead;
  r->dead = l;
  char reason[160];
  snprintf(reason, sizeof(reason), "%s", why ? why : "closed");
  int ferr = err ? err : KR_ECLOSED;
  /* The records stay hiredis's (it frees them through on_reply). */
  rreq *c;
  while ((c = l->head) != NULL) {
    list_unlink(l, c);
    c->done = 1;
    if (c->step == ST_USER && c->cb)
      c->cb(NULL, ferr, c->ud);
  }
  if (ac && l->hctx != HC_GONE)
    redisAsyncFree(ac); /* deferred by hiredis inside a reply callback */
  if (!notify || r->freed)
    return;
  log_down(l, ferr, reason);
  switch (l->kind) {
  case L_CMD:
    if (was == LS_READY)
      kr__backoff_disconnected(&r->backoff, kr__now_us());
    if (!r->switching) {
      r->need_discovery = r->sentinel_mode;
      schedule_retry(r);
    }
    emit(r, KR__REDIS_DOWN, ferr, reason);
    /* A server that stopped answering commands cannot be trusted to
     * deliver messages either: the pub/sub link has no traffic of its own
     * that would notice. */
    if (ferr == KR_ETIMEDOUT && !r->freed && r->sub &&
        r->sub->state == LS_READY)
      link_close(r->sub, KR_ETIMEDOUT, "command connection timed out", 1);
    break;
  case L_SUB:
    if (!r->switching) {
      r->need_discovery = r->sentinel_mode;
      schedule_retry(r);
    }
    if (was == LS_READY)
      emit(r, KR__REDIS_SUB_DOWN, ferr, reason);
    break;
  case L_SENTSUB:
    r->need_discovery = 1;
    schedule_retry(r);
    break;
  case L_SENTQ:
    /* The next sentinel, at once; a whole round failing waits. */
    r->disc_err = ferr;
    snprintf(r->disc_why, sizeof(r->disc_why), "%s:%d: %.100s", l->host,
             l->port, reason);
    r->disc_idx = (l->sentinel + 1) % r->n_sentinels;
    if (++r->disc_tried < r->n_sentinels) {
      discovery_start(r);
    } else {
      r->disc_tried = 0;
      char q[256];
      kr__log_quote(q, sizeof(q), r->disc_why, strlen(r->disc_why));
      kr__log(KR_LOG_WARN, "redis_discovery_failed", "master=%s last=%s",
              r->master_name, q);
      schedule_retry(r);
      char msg[MAX_NAME + 256];
      snprintf(msg, sizeof(msg), "no sentinel gave the address of %s (%s)",
               r->master_name, r->disc_why);
      emit(r, KR__REDIS_DOWN, r->disc_err, msg);
    }
    break;
  }
}

/* --------------------------------------------------- hiredis callbacks */

static void on_connect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  rlink *l = ac->data;
  if (!l)
    return;
  if (status == REDIS_OK) {
    link_handshake(l);
    return;
  }
  /* hiredis frees the context when this returns. */
  kr__redis *r = l->r;
  char why[160];
  snprintf(why, sizeof(why), "%s", ac_why(ac, "connect failed"));
  l->hctx = HC_GONE;
  enter(r);
  link_close(l, KR_EIO, why, 1);
  leave(r);
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  rlink *l = ac->data;
  if (!l)
    return;
  /* hiredis frees the context when this returns. */
  kr__redis *r = l->r;
  char why[160];
  snprintf(why, sizeof(why), "%s", ac_why(ac, "connection closed"));
  l->hctx = HC_GONE;
  enter(r);
  link_close(l, KR_ECLOSED, why, 1);
  leave(r);
}

static int str_reply(const redisReply *e) {
  return e && (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS);
}

static void found_master(kr__redis *r, const char *host, int port,
                         const char *how);

/* Answers to the handshake and to the sentinel query. */
static void step_reply(rlink *l, step_kind step, const redisReply *rep) {
  kr__redis *r = l->r;
  if (rep->type == REDIS_REPLY_ERROR) {
    const char *s = rep->str ? rep->str : "error";
    int err = KR_EIO;
    if (step == ST_AUTH || step == ST_SUBAUTH || strncmp(s, "NOAUTH", 6) == 0 ||
        strncmp(s, "WRONGPASS", 9) == 0)
      err = KR_EAUTH;
    else if (step == ST_SELECT)
      err = KR_ECONFIG;
    link_close(l, err, s, 1);
    return;
  }
  switch (step) {
  case ST_CHECK:
    if (r->sentinel_mode) {
      const redisReply *role = rep->type == REDIS_REPLY_ARRAY && rep->elements
                                   ? rep->element[0]
                                   : NULL;
      if (!str_reply(role) || strcmp(role->str, "master") != 0) {
        char why[96];
        snprintf(why, sizeof(why), "server is not a master (role %.32s)",
                 str_reply(role) ? role->str : "unknown");
        link_close(l, KR_ESTATE, why, 1);
        return;
      }
    }
    /* fallthrough */
  case ST_AUTH:
  case ST_SELECT:
    if (--l->hs_left == 0)
      link_ready(l);
    break;
  case ST_SUBAUTH:
    send_subscribes(l);
    break;
  case ST_SENTQUERY: {
    int port = 0;
    const char *host = NULL;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
        str_reply(rep->element[0]) && str_reply(rep->element[1])) {
      host = rep->element[0]->str;
      char *end = NULL;
      long p = strtol(rep->element[1]->str, &end, 10);
      port = end && !*end && p > 0 && p <= 65535 ? (int)p : 0;
    }
    if (rep->type == REDIS_REPLY_NIL) {
      link_close(l, KR_ENOENT, "sentinel does not know the master name", 1);
    } else if (!host || !port || strlen(host) >= HOSTLEN ||
               !is_numeric_host(host)) {
      link_close(l, KR_EPROTO,
                 "unexpected answer (a numeric host and port expected)", 1);
    } else {
      char h[HOSTLEN];
      snprintf(h, sizeof(h), "%s", host);
      r->good_sentinel = l->sentinel;
      r->disc_tried = 0;
      link_close(l, 0, "done", 0);
      found_master(r, h, port, "discovery");
    }
    break;
  }
  case ST_USER:
    break;
  }
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  rreq *c = privdata;
  rlink *l = ac->data;
  if (!l || c->done) {
    free(c);
    return;
  }
  kr__redis *r = l->r;
  enter(r);
  hiredis_ctx prev = l->hctx;
  l->hctx = HC_REPLY;
  if (!reply) {
    /* hiredis is tearing the context down: c is failed by link_close. */
    link_close(l, KR_ECLOSED, ac_why(ac, "connection lost"), 1);
  } else {
    list_unlink(l, c);
    c->done = 1;
    if (c->step == ST_USER) {
      if (c->cb)
        c->cb(reply, 0, c->ud);
    } else {
      step_reply(l, c->step, reply);
    }
  }
  l->hctx = prev;
  free(c);
  leave(r);
}

static void on_switch_master(kr__redis *r, const char *payload, size_t len) {
  /* "<name> <old-ip> <old-port> <new-ip> <new-port>" */
  char buf[MAX_NAME + 2 * HOSTLEN + 32];
  if (len >= sizeof(buf))
    return;
  memcpy(buf, payload, len);
  buf[len] = 0;
  char *tok[5], *save = NULL;
  size_t n = 0;
  for (char *t = strtok_r(buf, " ", &save); t && n < 5;
       t = strtok_r(NULL, " ", &save))
    tok[n++] = t;
  if (n != 5 || strcmp(tok[0], r->master_name) != 0)
    return;
  char *end = NULL;
  long port = strtol(tok[4], &end, 10);
  if (!end || *end || port <= 0 || port > 65535 || strlen(tok[3]) >= HOSTLEN ||
      !is_numeric_host(tok[3]))
    return;
  found_master(r, tok[3], (int)port, "switch-master");
}

static void on_sub(redisAsyncContext *ac, void *reply, void *privdata) {
  rsub *s = privdata;
  rlink *l = ac->data;
  if (!l)
    return;
  kr__redis *r = l->r;
  enter(r);
  hiredis_ctx prev = l->hctx;
  l->hctx = HC_REPLY;
  const redisReply *rep = reply;
  if (!rep) {
    link_close(l, KR_ECLOSED, ac_why(ac, "connection lost"), 1);
  } else if (!l->closing && rep->type == REDIS_REPLY_ARRAY &&
             rep->elements >= 3 && str_reply(rep->element[0]) &&
             str_reply(rep->element[1]) &&
             strcmp(rep->element[1]->str, s->channel) == 0) {
    const char *kind = rep->element[0]->str;
    if (strcasecmp(kind, "subscribe") == 0) {
      if (l->unconfirmed && --l->unconfirmed == 0 && l->state == LS_HANDSHAKE)
        link_ready(l);
      else if (l->unconfirmed)
        l->sub_deadline = kr__now_us() + r->command_timeout;
    } else if (strcasecmp(kind, "message") == 0 && str_reply(rep->element[2])) {
      if (s == &r->switch_sub)
        on_switch_master(r, rep->element[2]->str, rep->element[2]->len);
      else if (s->cb && !r->freed)
        s->cb(s->channel, rep->element[2]->str, rep->element[2]->len, s->ud);
    }
  }
  l->hctx = prev;
  leave(r);
}

/* ------------------------------------------------------ orchestration */

static void found_master(kr__redis *r, const char *host, int port,
                         const char *how) {
  int changed = !r->master_known || r->master.port != port ||
                strcmp(r->master.host, host) != 0;
  r->need_discovery = 0;
  if (changed) {
    kr__log(KR_LOG_INFO, "redis_master", "name=%s server=%s:%d via=%s",
            r->master_name, host, port, how);
    snprintf(r->master.host, sizeof(r->master.host), "%s", host);
    r->master.port = port;
    r->master_known = 1;
    format_addr(r->server, sizeof(r->server), host, port);
    char why[HOSTLEN + 64];
    snprintf(why, sizeof(why), "master moved to %s", r->server);
    r->switching = 1;
    if (r->cmd)
      link_close(r->cmd, KR_ECLOSED, why, 1);
    if (!r->freed && r->sub)
      link_close(r->sub, KR_ECLOSED, why, 1);
    r->switching = 0;
    /* A new master deserves a prompt first attempt. */
    kr__backoff_reset(&r->backoff);
  }
  kick(r);
}

static void discovery_start(kr__redis *r) {
  if (r->disc || r->freed)
    return;
  size_t i = r->disc_idx % r->n_sentinels;
  link_start(r, L_SENTQ, &r->sentinels[i], i);
}

/* Starts whatever link is missing. Calls the owner (a failed attempt), so
 * it only runs from the loop (retry and kick events). */
static void reconcile(kr__redis *r) {
  if (r->freed)
    return;
  if (r->sentinel_mode && (r->need_discovery || !r->master_known)) {
    discovery_start(r);
    return;
  }
  if (!r->cmd)
    link_start(r, L_CMD, &r->master, 0);
  if (!r->freed && r->nsubs && !r->sub && !r->switching)
    link_start(r, L_SUB, &r->master, 0);
  if (!r->freed && r->sentinel_mode && !r->sentsub)
    link_start(r, L_SENTSUB, &r->sentinels[r->good_sentinel], r->good_sentinel);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg) {
  kr__redis *r = arg;
  enter(r);
  reconcile(r);
  leave(r);
}

static void kick(kr__redis *r) {
  if (!r->freed)
    event_active(r->kick_ev, EV_TIMEOUT, 1);
}

static void schedule_retry(kr__redis *r) {
  if (r->freed || evtimer_pending(r->retry_ev, NULL))
    return;
  uint64_t d = kr__backoff_next(&r->backoff, random_u64());
  struct timeval tv = {(time_t)(d / 1000000u), (suseconds_t)(d % 1000000u)};
  evtimer_add(r->retry_ev, &tv);
  kr__log(KR_LOG_DEBUG, "redis_retry_scheduled", "delay_ms=%llu",
          (unsigned long long)(d / MS));
}

/* ------------------------------------------------------------------ API */

static int copy_str(char *out, size_t size, const char *s) {
  if (!s)
    return 0;
  size_t n = strlen(s);
  if (n >= size)
    return KR_ECONFIG;
  memcpy(out, s, n + 1);
  return 0;
}

int kr__redis_new(struct event_base *base, const kr__redis_opts *o,
                  kr__redis **out, char *err, size_t errlen) {
  if (err && errlen)
    err[0] = 0;
  if (!base || !o || !out)
    return KR_EINVAL;
  *out = NULL;
  kr__redis *r = calloc(1, sizeof(*r));
  if (!r)
    return KR_ENOMEM;
  r->base = base;
  r->connect_timeout =
      (o->connect_timeout_ms ? o->connect_timeout_ms : 2000) * MS;
  r->command_timeout =
      (o->command_timeout_ms ? o->command_timeout_ms : 2000) * MS;
  r->max_pending = o->max_pending ? o->max_pending : 10000;
  r->on_state = o->on_state;
  r->state_ud = o->user_data;
  uint64_t base_us = (o->backoff_base_ms ? o->backoff_base_ms : 200) * MS;
  uint64_t cap_us = (o->backoff_cap_ms ? o->backoff_cap_ms : 5000) * MS;
  int rc = 0;
  if (kr__backoff_init(&r->backoff, base_us, cap_us, STABLE_US) < 0) {
    rc = KR_ECONFIG;
    set_err(err, errlen, "%s%s", "backoff cap below its base", "");
  } else if (o->url) {
    if (o->n_sentinels || o->master_name || o->password || o->user || o->db) {
      rc = KR_ECONFIG;
      set_err(err, errlen, "%s%s",
              "a redis URL carries its own password and db; sentinels "
              "exclude a URL",
              "");
    } else {
      rc = parse_url(o->url, 1, 6379, &r->master, r->user, r->password, &r->db,
                     err, errlen);
      if (rc == 0) {
        r->master_known = 1;
        format_addr(r->server, sizeof(r->server), r->master.host,
                    r->master.port);
      }
    }
  } else if (!o->n_sentinels || o->n_sentinels > KR__REDIS_MAX_SENTINELS ||
             !o->sentinels || !o->master_name || !*o->master_name) {
    rc = KR_ECONFIG;
    set_err(err, errlen, "%s%s",
            "need a redis URL, or 1 to 16 sentinels and a master name", "");
  } else if (copy_str(r->master_name, sizeof(r->master_name), o->master_name) <
                 0 ||
             strchr(o->master_name, ' ') ||
             copy_str(r->password, sizeof(r->password), o->password) < 0 ||
             copy_str(r->user, sizeof(r->user), o->user) < 0 ||
             (r->user[0] && !r->password[0]) || o->db < 0 || o->db > MAX_DB) {
    rc = KR_ECONFIG;
    set_err(err, errlen, "%s%s",
            "bad master name, user, password (user needs one) or db", "");
  } else {
    r->sentinel_mode = 1;
    r->db = o->db;
    r->n_sentinels = o->n_sentinels;
    for (size_t i = 0; rc == 0 && i < o->n_sentinels; i++) {
      char url[1100];
      if (!o->sentinels[i] || strlen(o->sentinels[i]) > 1000 ||
          strchr(o->sentinels[i], '/') || strchr(o->sentinels[i], '@')) {
        rc = KR_EADDR;
        set_err(err, errlen, "bad sentinel address %s%s",
                o->sentinels[i] ? "(expected host:port)" : "(null)", "");
        break;
      }
      snprintf(url, sizeof(url), "redis://%s", o->sentinels[i]);
      rc = parse_url(url, 0, 26379, &r->sentinels[i], NULL, NULL, NULL, err,
                     errlen);
    }
  }
  if (rc == 0) {
    r->switch_sub.channel = SWITCH_CHANNEL;
    r->retry_ev = evtimer_new(base, retry_cb, r);
    r->kick_ev = event_new(base, -1, 0, retry_cb, r);
    if (!r->retry_ev || !r->kick_ev)
      rc = KR_ENOMEM;
  }
  if (rc < 0) {
    release(r);
    return rc;
  }
  kick(r);
  *out = r;
  return 0;
}

int kr__redis_command_argv(kr__redis *r, int argc, const char **argv,
                           const size_t *argvlen, kr__redis_reply_fn cb,
                           void *ud) {
  if (!r || !argv || argc < 1 || argc > KR__REDIS_MAX_ARGC)
    return KR_EINVAL;
  for (int i = 0; i < argc; i++)
    if (!argv[i])
      return KR_EINVAL;
  rlink *l = r->cmd;
  if (r->freed || !l || l->state != LS_READY)
    return KR_ECLOSED;
  if (l->npending >= r->max_pending)
    return KR_EAGAIN;
  return link_send(l, ST_USER, kr__now_us() + r->command_timeout, argc, argv,
                   argvlen, cb, ud);
}

int kr__redis_subscribe(kr__redis *r, const char *channel,
                        kr__redis_message_fn cb, void *ud) {
  if (!r || !channel || !*channel || !cb ||
      strlen(channel) > KR__REDIS_MAX_CHANNEL)
    return KR_EINVAL;
  if (r->freed)
    return KR_ECLOSED;
  for (rsub *s = r->subs; s; s = s->next)
    if (strcmp(s->channel, channel) == 0)
      return KR_EINVAL;
  if (r->nsubs >= KR__REDIS_MAX_SUBSCRIPTIONS)
    return KR_ETOOBIG;
  rsub *s = calloc(1, sizeof(*s));
  if (!s || !(s->channel = strdup(channel))) {
    free(s);
    return KR_ENOMEM;
  }
  s->cb = cb;
  s->ud = ud;
  if (r->subs_tail)
    r->subs_tail->next = s;
  else
    r->subs = s;
  r->subs_tail = s;
  r->nsubs++;
  if (r->sub && r->sub->subs_sent)
    send_subscribe(r->sub, s);
  else if (!r->sub)
    kick(r);
  return 0;
}

int kr__redis_is_up(const kr__redis *r) {
  return r && !r->freed && r->cmd && r->cmd->state == LS_READY;
}

size_t kr__redis_pending(const kr__redis *r) {
  return r && !r->freed && r->cmd && r->cmd->state == LS_READY
             ? r->cmd->npending
             : 0;
}

const char *kr__redis_server(const kr__redis *r) {
  return r ? r->server : "";
}

void kr__redis_free(kr__redis *r) {
  if (!r || r->freed)
    return;
  r->freed = 1;
  enter(r);
  event_del(r->retry_ev);
  event_del(r->kick_ev);
  while (r->cmd)
    link_close(r->cmd, KR_ECLOSED, "client freed", 0);
  while (r->sub)
    link_close(r->sub, KR_ECLOSED, "client freed", 0);
  while (r->disc)
    link_close(r->disc, KR_ECLOSED, "client freed", 0);
  while (r->sentsub)
    link_close(r->sentsub, KR_ECLOSED, "client freed", 0);
  leave(r);
}
