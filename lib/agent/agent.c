/* The agent role: tunnel connections to kas and the services behind them
 * (kasroute/agent.h). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <kasroute/agent.h>
#include <kasroute/error.h>

#include "agent_internal.h"
#include "core/backoff.h"
#include "handler_internal.h"
#include "core/mux_internal.h"
#include "http_service.h"
#include "io/conn.h"
#include "io/dial.h"
#include "io/log.h"
#include "io/sock.h"
#include "io/splice.h"
#include "io/url.h"
#include "kube_service.h"

#define KR__AGENT_MAX_SERVICES 256
#define KR__AGENT_MAX_CONNS 64
#define KR__AGENT_STABLE_US (60 * 1000000ull)

/* Kinds of service. Every kind runs as a kr_handler (handler.h): the
 * built-in ones (tcp, http, kubernetes) are handlers whose service data is
 * made when the agent starts. */
typedef enum service_type {
  SVC_TCP,         /* tcp://: bytes spliced to a socket */
  SVC_HTTP,        /* http(s)://: reverse proxy (http_service.h) */
  SVC_KUBE,        /* Kubernetes API proxy (kube_service.h) */
  SVC_HANDLER,     /* the application's kr_handler */
  SVC_HTTP_HANDLER /* the application's kr_http_handler */
} service_type;

/* A configured service. Strings are owned by the options. */
typedef struct agent_service {
  char name[128];
  service_type type;
  kr__url url;      /* tcp: the target */
  char *url_str;    /* http, kube: the URL (kube: NULL = in-cluster) */
  char *ca_file;    /* http, kube: NULL = default trust */
  char *token_file; /* kube */
  int verify;
  struct kr_handler handler;           /* SVC_HANDLER */
  struct kr_http_handler http_handler; /* SVC_HTTP_HANDLER */
  void *service_data;                  /* both */
} agent_service;

#define KR__AGENT_MAX_URLS 8

struct kr_agent_options {
  kr__dial_opts dial; /* kas URL, token, TLS trust, keepalive */
  kr__url more_urls[KR__AGENT_MAX_URLS - 1]; /* further kas URLs */
  size_t n_more_urls;
  unsigned connections;
  char name[128];
  agent_service *services;
  size_t n_services, cap_services;
  kr_time_us backoff_base, backoff_cap;
};

/* A service as it runs: a name, a handler and its service data. */
typedef struct agent_svc {
  char name[128];
  struct kr_handler handler;
  void *data;
  kr__url url;                    /* SVC_TCP: the data */
  kr__http_service *http;         /* SVC_HTTP: the data */
  kr__kube_service *kube;         /* SVC_KUBE: the data */
  kr__http_handler_svc http_ctx;  /* SVC_HTTP_HANDLER: the data */
} agent_svc;

typedef struct agent_slot agent_slot;
typedef struct agent_link agent_link;

/* One tunnel connection. A slot owns its current link; links replaced
 * after a GOAWAY live on as "retired" until their streams end. */
struct agent_link {
  kr_agent *a;
  agent_slot *slot; /* NULL once retired */
  kr__conn *conn;
  int ready;
  agent_link *prev, *next;
};

struct agent_slot {
  kr_agent *a;
  unsigned index;
  unsigned url; /* index into a->dialers of the next dial */
  agent_link *link;
  kr__backoff backoff;
  struct event *retry_ev;
};

struct kr_agent {
  struct event_base *base;
  kr_agent_options opt; /* without the services: see svcs */
  agent_svc *svcs;
  size_t n_svcs;
  kr__dialer dialers[KR__AGENT_MAX_URLS]; /* one per kas URL */
  size_t n_dialers;
  kr_mux_options *mux_opt;
  agent_slot slots[KR__AGENT_MAX_CONNS];
  agent_link *links; /* all live links */
  unsigned ready;
  int draining;
  struct event *drain_ev;
  kr_agent_drained_cb drained;
  void *drained_ud;
};

/* ---------------------------------------------------------------- options */

int kr_agent_options_new(kr_agent_options **out) {
  kr_agent_options *o = calloc(1, sizeof(*o));
  if (!o)
    return KR_ENOMEM;
  o->connections = 2;
  kr__dial_opts_init(&o->dial);
  o->backoff_base = 1000000ull;
  o->backoff_cap = 30 * 1000000ull;
  if (gethostname(o->name, sizeof(o->name) - 1) != 0 || !o->name[0])
    snprintf(o->name, sizeof(o->name), "agent");
  *out = o;
  return 0;
}

static void service_clear(agent_service *sv) {
  free(sv->url_str);
  free(sv->ca_file);
  free(sv->token_file);
}

void kr_agent_options_free(kr_agent_options *o) {
  if (o) {
    for (size_t i = 0; i < o->n_services; i++)
      service_clear(&o->services[i]);
    free(o->services);
    kr__dial_opts_wipe(&o->dial);
    free(o);
  }
}

int kr_agent_options_set_kas_url(kr_agent_options *o, const char *url) {
  return kr__dial_opts_set_url(&o->dial, url);
}

int kr_agent_options_add_kas_url(kr_agent_options *o, const char *url) {
  if (!o->dial.has_url)
    return kr_agent_options_set_kas_url(o, url);
  if (o->n_more_urls >= KR__AGENT_MAX_URLS - 1)
    return KR_ETOOBIG;
  kr__url u;
  int rc = kr__dial_parse_url(url, &u);
  if (rc < 0)
    return rc;
  o->more_urls[o->n_more_urls++] = u;
  return 0;
}

int kr_agent_options_set_token(kr_agent_options *o, const char *token,
                               size_t len) {
  return kr__dial_opts_set_token(&o->dial, token, len, 4096);
}

int kr_agent_options_set_connections(kr_agent_options *o, unsigned n) {
  if (n == 0 || n > KR__AGENT_MAX_CONNS)
    return KR_EINVAL;
  o->connections = n;
  return 0;
}

int kr_agent_options_set_name(kr_agent_options *o, const char *name) {
  if (!name || !*name || strlen(name) >= sizeof(o->name))
    return KR_EINVAL;
  snprintf(o->name, sizeof(o->name), "%s", name);
  return 0;
}

static int valid_service_name(const char *n) {
  size_t len = strlen(n);
  if (len == 0 || len > 127)
    return 0;
  for (const char *p = n; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
          (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
      return 0;
  return 1;
}

/* Appends a service named name; NULL with the error in *rc. */
static agent_service *service_append(kr_agent_options *o, const char *name,
                                     int *rc) {
  if (!name || !valid_service_name(name)) {
    *rc = KR_EINVAL;
    return NULL;
  }
  if (o->n_services >= KR__AGENT_MAX_SERVICES) {
    *rc = KR_ETOOBIG;
    return NULL;
  }
  for (size_t i = 0; i < o->n_services; i++)
    if (strcmp(o->services[i].name, name) == 0) {
      *rc = KR_ESTATE;
      return NULL;
    }
  if (o->n_services == o->cap_services) {
    size_t cap = o->cap_services ? o->cap_services * 2 : 8;
    agent_service *n = realloc(o->services, cap * sizeof(*n));
    if (!n) {
      *rc = KR_ENOMEM;
      return NULL;
    }
    o->services = n;
    o->cap_services = cap;
  }
  agent_service *sv = &o->services[o->n_services];
  memset(sv, 0, sizeof(*sv));
  snprintf(sv->name, sizeof(sv->name), "%s", name);
  sv->verify = 1;
  return sv;
}

static agent_service *service_find(kr_agent_options *o, const char *name) {
  for (size_t i = 0; name && i < o->n_services; i++)
    if (strcmp(o->services[i].name, name) == 0)
      return &o->services[i];
  return NULL;
}

/* strdup of an optional path of at most 1023 bytes; 0 or a KR_E* code. */
static int dup_path(const char *path, char **out) {
  *out = NULL;
  if (!path)
    return 0;
  if (!*path || strlen(path) > 1023)
    return KR_EINVAL;
  return (*out = strdup(path)) ? 0 : KR_ENOMEM;
}

int kr_agent_options_add_service(kr_agent_options *o, const char *name,
                                 const char *url) {
  char err[256];
  kr__url u;
  if (!name || !valid_service_name(name))
    return KR_EINVAL;
  if (kr__url_parse(url, &u, err, sizeof(err)) < 0 ||
      (u.scheme != KR__SCHEME_TCP && u.scheme != KR__SCHEME_HTTP &&
       u.scheme != KR__SCHEME_HTTPS))
    return KR_EADDR;
  int rc = 0;
  agent_service *sv = service_append(o, name, &rc);
  if (!sv)
    return rc;
  sv->url = u;
  sv->type = u.scheme == KR__SCHEME_TCP ? SVC_TCP : SVC_HTTP;
  if (sv->type == SVC_HTTP && !(sv->url_str = strdup(url)))
    return KR_ENOMEM;
  o->n_services++;
  return 0;
}

int kr_agent_options_add_kubernetes(kr_agent_options *o, const char *name,
                                    const char *url, const char *token_file,
                                    const char *ca_file) {
  char err[256];
  kr__url u;
  if (!name || !valid_service_name(name))
    return KR_EINVAL;
  if (url && (kr__url_parse(url, &u, err, sizeof(err)) < 0 ||
              (u.scheme != KR__SCHEME_HTTP && u.scheme != KR__SCHEME_HTTPS)))
    return KR_EADDR;
  char *tf = NULL, *ca = NULL, *us = NULL;
  int rc = dup_path(token_file, &tf);
  if (rc == 0)
    rc = dup_path(ca_file, &ca);
  if (rc == 0 && url && !(us = strdup(url)))
    rc = KR_ENOMEM;
  agent_service *sv = rc == 0 ? service_append(o, name, &rc) : NULL;
  if (!sv) {
    free(tf);
    free(ca);
    free(us);
    return rc;
  }
  sv->type = SVC_KUBE;
  sv->url_str = us;
  sv->token_file = tf;
  sv->ca_file = ca;
  o->n_services++;
  return 0;
}

int kr_agent_options_add_handler(kr_agent_options *o, const char *name,
                                 const kr_handler *h, void *service_data) {
  if (!h || !h->on_open)
    return KR_EINVAL;
  int rc = 0;
  agent_service *sv = service_append(o, name, &rc);
  if (!sv)
    return rc;
  sv->type = SVC_HANDLER;
  sv->handler = *h;
  sv->service_data = service_data;
  o->n_services++;
  return 0;
}

int kr_agent_options_add_http_handler(kr_agent_options *o, const char *name,
                                      const kr_http_handler *h,
                                      void *service_data) {
  if (!h || !h->on_request)
    return KR_EINVAL;
  int rc = 0;
  agent_service *sv = service_append(o, name, &rc);
  if (!sv)
    return rc;
  sv->type = SVC_HTTP_HANDLER;
  sv->http_handler = *h;
  sv->service_data = service_data;
  o->n_services++;
  return 0;
}

int kr_agent_options_set_service_ca_file(kr_agent_options *o, const char *name,
                                         const char *path) {
  agent_service *sv = service_find(o, name);
  if (!sv)
    return KR_ENOENT;
  if ((sv->type != SVC_HTTP && sv->type != SVC_KUBE) || !path)
    return KR_EINVAL;
  char *ca;
  int rc = dup_path(path, &ca);
  if (rc < 0)
    return rc;
  free(sv->ca_file);
  sv->ca_file = ca;
  return 0;
}

int kr_agent_options_set_service_verify(kr_agent_options *o, const char *name,
                                        int verify) {
  agent_service *sv = service_find(o, name);
  if (!sv)
    return KR_ENOENT;
  if (sv->type != SVC_HTTP && sv->type != SVC_KUBE)
    return KR_EINVAL;
  sv->verify = verify ? 1 : 0;
  return 0;
}

int kr_agent_options_set_tls_ca_file(kr_agent_options *o, const char *path) {
  return kr__dial_opts_set_ca_file(&o->dial, path);
}

int kr_agent_options_set_tls_verify(kr_agent_options *o, int verify) {
  o->dial.verify = verify ? 1 : 0;
  return 0;
}

int kr_agent_options_set_keepalive(kr_agent_options *o, kr_time_us interval,
                                   kr_time_us timeout) {
  return kr__dial_opts_set_keepalive(&o->dial, interval, timeout);
}

int kr_agent_options_set_backoff(kr_agent_options *o, kr_time_us base,
                                 kr_time_us cap) {
  if (base == 0 || cap < base)
    return KR_EINVAL;
  o->backoff_base = base;
  o->backoff_cap = cap;
  return 0;
}

/* ---------------------------------------------------------------- streams */

static const agent_svc *find_service(const kr_agent *a, const kr_md *md,
                                     size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (md[i].name_len != strlen(KR_MD_SERVICE) ||
        memcmp(md[i].name, KR_MD_SERVICE, md[i].name_len) != 0)
      continue;
    for (size_t j = 0; j < a->n_svcs; j++) {
      const agent_svc *sv = &a->svcs[j];
      if (strlen(sv->name) == md[i].value_len &&
          memcmp(sv->name, md[i].value, md[i].value_len) == 0)
        return sv;
    }
    return NULL;
  }
  return NULL;
}

/* ------------------------------------------------- built-in handlers
 * Each takes the stream over with the I/O layer's own machinery (a
 * splice, a pooled HTTP client), which installs its own stream handler. */

/* Placeholder callbacks until the splice takes the socket over. */
static const kr__sock_cbs no_sock_cbs = {NULL, NULL, NULL, NULL, NULL};

static void tcp_open(kr_stream *s, const kr_md *md, size_t n, int fin,
                     void *data) {
  const kr__url *url = data;
  kr__sock *sock;
  int rc = kr__sock_connect(kr__conn_base(kr__conn_of(s)), url->host,
                            url->port, &no_sock_cbs, NULL, &sock);
  if (rc < 0) {
    kr_stream_reset(s, KR_CODE_UPSTREAM,
                    rc == KR_EADDR ? "cannot resolve the upstream"
                                   : "out of memory");
    return;
  }
  kr__splice *sp;
  if (kr__splice_new(s, sock, 0, 1, NULL, NULL, &sp) < 0) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  if (fin)
    kr__splice_peer_fin(sp);
}

static void http_open(kr_stream *s, const kr_md *md, size_t n, int fin,
                      void *data) {
  kr__http_service_serve(data, s, md, n, fin, NULL, 0, NULL, NULL);
}

static void kube_open(kr_stream *s, const kr_md *md, size_t n, int fin,
                      void *data) {
  kr__kube_service_serve(data, s, md, n, fin);
}

static const struct kr_handler tcp_handler = {tcp_open, {0}};
static const struct kr_handler http_handler = {http_open, {0}};
static const struct kr_handler kube_handler = {kube_open, {0}};

/* Every stream goes the same way: the service's handler becomes the
 * stream's handler, its service data the stream's user data, and on_open
 * answers. */
static void on_stream(kr__conn *c, kr_stream *s, const kr_md *md, size_t n,
                      int fin, void *ud) {
  agent_link *l = ud;
  const agent_svc *sv = find_service(l->a, md, n);
  if (!sv) {
    kr_stream_reset(s, KR_CODE_NOT_FOUND, "unknown service");
    return;
  }
  kr__stream_set_handler(s, &sv->handler.cbs);
  kr_stream_set_user_data(s, sv->data);
  sv->handler.on_open(s, md, n, fin, sv->data);
}

/* ----------------------------------------------------------- connections */

static void dial(agent_slot *slot);
static void maybe_drained(kr_agent *a);

static void link_unlink(kr_agent *a, agent_link *l) {
  if (l->prev)
    l->prev->next = l->next;
  else
    a->links = l->next;
  if (l->next)
    l->next->prev = l->prev;
}

static uint64_t random_u64(void) {
  uint64_t r = 0;
  if (getrandom(&r, sizeof(r), 0) != sizeof(r))
    r = (uint64_t)kr__now_us() * 6364136223846793005ull;
  return r;
}

static void schedule_retry(agent_slot *slot) {
  uint64_t d = kr__backoff_next(&slot->backoff, random_u64());
  struct timeval tv = {(time_t)(d / 1000000u), (suseconds_t)(d % 1000000u)};
  event_add(slot->retry_ev, &tv);
  kr__log(KR_LOG_INFO, "reconnect_scheduled", "agent=%s slot=%u delay_ms=%llu",
          slot->a->opt.name, slot->index, (unsigned long long)(d / 1000));
}

static void on_ready(kr__conn *c, const kr_md *md, size_t n, void *ud) {
  agent_link *l = ud;
  l->ready = 1;
  l->a->ready++;
  if (l->slot)
    kr__backoff_connected(&l->slot->backoff, kr__now_us());
  kr__log(KR_LOG_INFO, "connected", "agent=%s peer=%s", l->a->opt.name,
          kr__conn_peer(c));
}

static void on_goaway(kr__conn *c, uint32_t code, const uint8_t *r, size_t rl,
                      void *ud) {
  agent_link *l = ud;
  char q[300];
  kr__log(KR_LOG_INFO, "goaway_received", "agent=%s code=%s reason=%s",
          l->a->opt.name, kr_code_name(code),
          kr__log_quote(q, sizeof(q), (const char *)r, rl));
  if (l->ready) {
    l->ready = 0;
    l->a->ready--;
  }
  if (code == KR_CODE_UNAUTHORIZED || code == KR_CODE_TIMEOUT) {
    /* Our token was refused, or its check took too long (a kas's custom
     * verifier that does not answer): keep the slot, so that the close
     * that follows schedules a retry with backoff (no reconnect storm). */
    if (code == KR_CODE_UNAUTHORIZED)
      kr__log(KR_LOG_ERROR, "token_refused", "agent=%s peer=%s",
              l->a->opt.name, kr__conn_peer(c));
    return;
  }
  /* Replace it now; the old link finishes its streams on its own. */
  agent_slot *slot = l->slot;
  if (slot && !l->a->draining) {
    slot->link = NULL;
    l->slot = NULL;
    kr__backoff_reset(&slot->backoff);
    dial(slot);
  }
}

static void on_closed(kr__conn *c, int err, const char *why, void *ud) {
  agent_link *l = ud;
  kr_agent *a = l->a;
  char q[200];
  kr__log(err ? KR_LOG_WARN : KR_LOG_INFO, "disconnected",
          "agent=%s peer=%s error=%s reason=%s", a->opt.name, kr__conn_peer(c),
          kr_err_name(err), kr__log_quote(q, sizeof(q), why, strlen(why)));
  if (l->ready)
    a->ready--;
  agent_slot *slot = l->slot;
  link_unlink(a, l);
  kr__conn_free(c);
  free(l);
  if (slot) {
    slot->link = NULL;
    kr__backoff_disconnected(&slot->backoff, kr__now_us());
    if (!a->draining)
      schedule_retry(slot);
  }
  maybe_drained(a);
}

static const kr__conn_cbs agent_conn_cbs = {on_ready, on_stream, on_goaway,
                                            on_closed, NULL};

static void dial(agent_slot *slot) {
  kr_agent *a = slot->a;
  agent_link *l = calloc(1, sizeof(*l));
  if (!l) {
    schedule_retry(slot);
    return;
  }
  l->a = a;
  l->slot = slot;
  kr__dialer *d = &a->dialers[slot->url % a->n_dialers];
  /* The next dial of this slot tries the next kas. */
  slot->url = (slot->url + 1) % (unsigned)a->n_dialers;
  const kr__url *u = &d->url;
  kr__transport *t = NULL;
  int rc = kr__dialer_connect(d, a->opt.dial.token, a->opt.dial.token_len,
                              10000, &t);
  if (rc == 0)
    rc = kr__conn_new(a->base, t, 0, a->mux_opt, &agent_conn_cbs, l, &l->conn);
  if (rc < 0) {
    kr__log(KR_LOG_WARN, "dial_failed", "agent=%s kas=%s:%d error=%s",
            a->opt.name, u->host, u->port, kr_err_name(rc));
    free(l);
    schedule_retry(slot);
    return;
  }
  slot->link = l;
  l->next = a->links;
  if (a->links)
    a->links->prev = l;
  a->links = l;
}

static void drain_cb(evutil_socket_t fd, short what, void *arg);

static void retry_cb(evutil_socket_t fd, short what, void *arg) {
  agent_slot *slot = arg;
  if (slot->a->draining && !slot->a->drain_ev) {
    drain_cb(fd, what, slot->a); /* standing in (kr_agent_drain()) */
    return;
  }
  if (!slot->a->draining && !slot->link)
    dial(slot);
}

/* Creates the running services from the options. On failure the ones
 * made are left in a->svcs for kr_agent_free(). */
static int start_services(kr_agent *a, const kr_agent_options *o, char *err,
                          size_t errlen) {
  if (o->n_services == 0)
    return 0;
  a->svcs = calloc(o->n_services, sizeof(*a->svcs));
  if (!a->svcs)
    return KR_ENOMEM;
  for (size_t i = 0; i < o->n_services; i++) {
    const agent_service *c = &o->services[i];
    agent_svc *sv = &a->svcs[a->n_svcs++];
    memcpy(sv->name, c->name, sizeof(sv->name));
    int rc = 0;
    switch (c->type) {
    case SVC_TCP:
      sv->url = c->url;
      sv->handler = tcp_handler;
      sv->data = &sv->url;
      break;
    case SVC_HTTP:
      rc = kr__http_service_new(a->base, c->name, c->url_str, c->ca_file,
                                c->verify, &sv->http, err, errlen);
      sv->handler = http_handler;
      sv->data = sv->http;
      break;
    case SVC_KUBE:
      rc = kr__kube_service_new(a->base, c->name, c->url_str, c->token_file,
                                c->ca_file, c->verify, &sv->kube, err, errlen);
      sv->handler = kube_handler;
      sv->data = sv->kube;
      break;
    case SVC_HANDLER:
      sv->handler = c->handler;
      sv->data = c->service_data;
      break;
    case SVC_HTTP_HANDLER:
      sv->handler = kr__http_handler_stream;
      sv->http_ctx.cbs = c->http_handler;
      sv->http_ctx.service_data = c->service_data;
      sv->data = &sv->http_ctx;
      break;
    }
    if (rc < 0)
      return rc;
  }
  return 0;
}

int kr_agent_new(kr_agent **out, struct event_base *base,
                 const kr_agent_options *o, char *err, size_t errlen) {
  char dummy[8];
  if (!err) {
    err = dummy;
    errlen = sizeof(dummy);
  }
  err[0] = 0;
  if (!o->dial.has_url || !o->dial.token_len) {
    snprintf(err, errlen, "%s",
             !o->dial.has_url ? "the kas URL is required"
                              : "the agent token is required");
    return KR_ECONFIG;
  }
  kr_agent *a = calloc(1, sizeof(*a));
  if (!a)
    return KR_ENOMEM;
  a->base = base;
  a->opt = *o;
  a->opt.services = NULL; /* owned by o; the agent keeps a->svcs */
  a->opt.n_services = a->opt.cap_services = 0;
  int rc = start_services(a, o, err, errlen);
  if (rc < 0) {
    kr_agent_free(a);
    return rc;
  }
  rc = kr__dialer_init_opts(&a->dialers[0], base, &o->dial, err, errlen);
  if (rc == 0)
    a->n_dialers = 1;
  for (size_t i = 0; rc == 0 && i < o->n_more_urls; i++) {
    rc = kr__dialer_init(&a->dialers[i + 1], base, &o->more_urls[i],
                         o->dial.ca_file[0] ? o->dial.ca_file : NULL,
                         o->dial.verify, err, errlen);
    if (rc == 0)
      a->n_dialers++;
  }
  kr_md md[2] = {{(const uint8_t *)KR_MD_TOKEN, strlen(KR_MD_TOKEN),
                  (const uint8_t *)o->dial.token, o->dial.token_len},
                 {(const uint8_t *)KR_MD_NAME, strlen(KR_MD_NAME),
                  (const uint8_t *)o->name, strlen(o->name)}};
  if (rc == 0 && kr_mux_options_new(&a->mux_opt) < 0)
    rc = KR_ENOMEM;
  if (rc == 0) {
    kr_mux_options_set_role(a->mux_opt, KR_ROLE_DIALER);
    kr_mux_options_set_keepalive(a->mux_opt, o->dial.ka_interval,
                                 o->dial.ka_timeout);
    if (kr_mux_options_add_hello(a->mux_opt, &md[0]) < 0 ||
        kr_mux_options_add_hello(a->mux_opt, &md[1]) < 0)
      rc = KR_ENOMEM;
  }
  for (unsigned i = 0; rc == 0 && i < o->connections; i++) {
    agent_slot *slot = &a->slots[i];
    slot->a = a;
    slot->index = i;
    slot->url = a->n_dialers ? i % (unsigned)a->n_dialers : 0;
    kr__backoff_init(&slot->backoff, o->backoff_base, o->backoff_cap,
                     KR__AGENT_STABLE_US);
    if (!(slot->retry_ev = event_new(base, -1, 0, retry_cb, slot)))
      rc = KR_ENOMEM;
  }
  if (rc < 0) {
    kr_agent_free(a);
    return rc;
  }
  for (unsigned i = 0; i < o->connections; i++)
    dial(&a->slots[i]);
  *out = a;
  return 0;
}

void kr_agent_free(kr_agent *a) {
  if (!a)
    return;
  /* Streams end first so that their splices release their sockets. */
  for (agent_link *l = a->links; l; l = l->next)
    kr_mux_abort(kr__conn_mux(l->conn), KR_CODE_SHUTDOWN, "agent freed");
  while (a->links) {
    agent_link *l = a->links;
    link_unlink(a, l);
    kr__conn_free(l->conn);
    free(l);
  }
  for (unsigned i = 0; i < KR__AGENT_MAX_CONNS; i++)
    if (a->slots[i].retry_ev)
      event_free(a->slots[i].retry_ev);
  if (a->drain_ev)
    event_free(a->drain_ev);
  /* Every stream has ended: the services hold only idle connections, and
   * HTTP handler services at most closes they still owe. */
  for (size_t i = 0; i < a->n_svcs; i++) {
    if (a->svcs[i].data == &a->svcs[i].http_ctx)
      kr__http_handler_svc_flush(&a->svcs[i].http_ctx);
    kr__http_service_free(a->svcs[i].http);
    kr__kube_service_free(a->svcs[i].kube);
  }
  free(a->svcs);
  kr_mux_options_free(a->mux_opt);
  for (size_t i = 0; i < a->n_dialers; i++)
    kr__dialer_free(&a->dialers[i]); /* after the conns */
  kr__dial_opts_wipe(&a->opt.dial);
  free(a);
}

unsigned kr_agent_connected(const kr_agent *a) {
  return a->ready;
}

kr__http_service *kr__agent_http_service(kr_agent *a, const char *name) {
  for (size_t i = 0; i < a->n_svcs; i++)
    if (strcmp(a->svcs[i].name, name) == 0)
      return a->svcs[i].kube ? kr__kube_service_http(a->svcs[i].kube)
                             : a->svcs[i].http;
  return NULL;
}

static void drain_cb(evutil_socket_t fd, short what, void *arg) {
  kr_agent *a = arg;
  if (a->links) {
    for (agent_link *l = a->links; l; l = l->next)
      kr__conn_abort(l->conn, KR_CODE_SHUTDOWN, "agent shut down");
    return;
  }
  kr_agent_drained_cb done = a->drained;
  a->drained = NULL;
  if (done)
    done(a, a->drained_ud);
}

static void maybe_drained(kr_agent *a) {
  if (a->draining && !a->links)
    event_active(a->drain_ev ? a->drain_ev : a->slots[0].retry_ev, EV_TIMEOUT,
                 0);
}

void kr_agent_drain(kr_agent *a, kr_time_us grace, kr_agent_drained_cb done,
                    void *ud) {
  if (a->draining)
    return;
  a->draining = 1;
  a->drained = done;
  a->drained_ud = ud;
  for (unsigned i = 0; i < a->opt.connections; i++)
    event_del(a->slots[i].retry_ev);
  a->drain_ev = event_new(a->base, -1, 0, drain_cb, a);
  if (!a->drain_ev) {
    /* No memory for the grace timer: no grace, every connection closes
     * now. Slot 0's retry event, idle while draining, reports done. */
    for (agent_link *l = a->links; l; l = l->next)
      kr__conn_abort(l->conn, KR_CODE_SHUTDOWN, "agent shut down");
    maybe_drained(a);
    return;
  }
  struct timeval tv = {(time_t)(grace / 1000000u),
                       (suseconds_t)(grace % 1000000u)};
  event_add(a->drain_ev, &tv);
  for (agent_link *l = a->links; l; l = l->next)
    kr__conn_goaway(l->conn, KR_CODE_SHUTDOWN, "agent is shutting down");
  maybe_drained(a);
}
