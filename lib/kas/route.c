/* Routing streams to agent tunnels (see route.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "core/mux_internal.h"
#include "io/log.h"
#include "kas/route.h"

/* Tunnels tried for one stream before falling back to waiting: a tunnel
 * that refuses an OPEN (full, draining) is marked unusable and the next
 * least-loaded one is tried. */
#define KR__ROUTE_ATTEMPTS 8

struct kr__route {
  kr_kas *k;
  int64_t agent;
  kr_md *md; /* one allocation: entries then bytes */
  size_t md_n;
  int fin;
  const kr__stream_handler *h;
  void *ud;
  kr__route_cb cb;
  kr__waiter *waiter;
  kr__route *prev, *next;
};

static void unlink_route(kr__route *r) {
  kr_kas *k = r->k;
  if (r->prev)
    r->prev->next = r->next;
  else
    k->routes = r->next;
  if (r->next)
    r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

static void route_free(kr__route *r) {
  unlink_route(r);
  if (r->waiter)
    kr__registry_cancel(r->waiter);
  free(r->md);
  free(r);
}

/* Ends the route with its outcome: the object is freed before the
 * callback so that the callback may start other routes or free the kas's
 * streams freely. */
static void finish(kr__route *r, kr_stream *s, kas_conn *ac, uint32_t code,
                   const char *reason) {
  kr__route_cb cb = r->cb;
  void *ud = r->ud;
  route_free(r);
  cb(s, ac, code, reason, ud);
}

/* Reports a tunnel's load to the registry after streams came or went. */
static void update_load(kas_conn *ac) {
  if (ac && ac->tunnel) {
    kr_mux *m = kr__conn_mux(ac->conn);
    kr__tunnel_set_load(ac->tunnel, (uint32_t)kr_mux_num_streams(m),
                        kr_mux_rtt(m), kr_mux_can_open(m));
  }
}

void kr__route_done(kr_kas *k, kas_conn *ac) {
  if (k->stats[KR_KAS_STAT_STREAMS_ACTIVE] > 0)
    k->stats[KR_KAS_STAT_STREAMS_ACTIVE]--;
  update_load(ac);
}

/* Opens the stream on tunnel t. 0, or the kr_stream_open error (the
 * tunnel is then marked unusable until its load changes). */
static int attach(kr__route *r, kr__tunnel *t) {
  kas_conn *ac = kr__tunnel_conn(t);
  kr_mux *m = kr__conn_mux(ac->conn);
  kr_stream *s;
  int rc = kr_stream_open(m, r->md, r->md_n, r->fin, r->ud, &s);
  if (rc < 0) {
    kr__tunnel_set_load(t, (uint32_t)kr_mux_num_streams(m), kr_mux_rtt(m), 0);
    return rc;
  }
  kr__stream_set_handler(s, r->h);
  r->k->stats[KR_KAS_STAT_STREAMS_ROUTED]++;
  r->k->stats[KR_KAS_STAT_STREAMS_ACTIVE]++;
  update_load(ac);
  finish(r, s, ac, KR_CODE_NO_ERROR, NULL);
  return 0;
}

static void try_route(kr__route *r);

static void waiter_cb(kr__waiter *w, kr__tunnel *t, int status, void *ud) {
  kr__route *r = ud;
  r->waiter = NULL;
  if (status == 0 && t) {
    try_route(r);
    return;
  }
  kr_kas *k = r->k;
  k->stats[KR_KAS_STAT_ROUTE_TIMEOUTS]++;
  char why[96];
  snprintf(why, sizeof(why), "agent %" PRId64 " is not connected", r->agent);
  kr__log(KR_LOG_INFO, "route_timeout", "kas=%s agent=%" PRId64, k->name,
          r->agent);
  finish(r, NULL, NULL, KR_CODE_UNAVAILABLE, why);
}

static void try_route(kr__route *r) {
  kr_kas *k = r->k;
  for (int i = 0; i < KR__ROUTE_ATTEMPTS; i++) {
    kr__tunnel *t = kr__registry_pick(k->reg, r->agent);
    if (!t)
      break;
    if (attach(r, t) == 0)
      return;
  }
  /* No usable tunnel now: wait for one (woken by registration). */
  if (kr__registry_wait(k->reg, r->agent, kr__now_us() + k->opt.route_timeout,
                        waiter_cb, r, &r->waiter) < 0) {
    finish(r, NULL, NULL, KR_CODE_REFUSED, "too many requests waiting");
    return;
  }
  kr__kas_schedule_expiry(k);
}

/* Copies md[0..n) into one allocation. */
static kr_md *copy_md(const kr_md *md, size_t n) {
  size_t bytes = n * sizeof(kr_md);
  for (size_t i = 0; i < n; i++)
    bytes += md[i].name_len + md[i].value_len;
  kr_md *out = malloc(bytes ? bytes : 1);
  if (!out)
    return NULL;
  uint8_t *p = (uint8_t *)(out + n);
  for (size_t i = 0; i < n; i++) {
    memcpy(p, md[i].name, md[i].name_len);
    out[i].name = p;
    out[i].name_len = md[i].name_len;
    p += md[i].name_len;
    if (md[i].value_len)
      memcpy(p, md[i].value, md[i].value_len);
    out[i].value = p;
    out[i].value_len = md[i].value_len;
    p += md[i].value_len;
  }
  return out;
}

int kr__route_start(kr_kas *k, int64_t agent, const kr_md *md, size_t n,
                    int fin, const kr__stream_handler *h, void *ud,
                    kr__route_cb cb, kr__route **out) {
  kr__route *r = calloc(1, sizeof(*r));
  if (!r || !(r->md = copy_md(md, n))) {
    free(r);
    *out = NULL;
    return KR_ENOMEM;
  }
  r->k = k;
  r->agent = agent;
  r->md_n = n;
  r->fin = fin;
  r->h = h;
  r->ud = ud;
  r->cb = cb;
  r->next = k->routes;
  if (k->routes)
    k->routes->prev = r;
  k->routes = r;
  *out = r;
  if (k->draining) {
    finish(r, NULL, NULL, KR_CODE_REFUSED, "kas is shutting down");
    return 0;
  }
  try_route(r);
  return 0;
}

void kr__route_cancel(kr__route *r) {
  if (r)
    route_free(r);
}

void kr__route_free_all(kr_kas *k) {
  while (k->routes)
    route_free(k->routes);
}
