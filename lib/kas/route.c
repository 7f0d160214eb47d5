/* Routing streams to agent tunnels (see route.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "core/md_dup.h"
#include "core/mux_internal.h"
#include "io/log.h"
#include "kas/cluster.h"
#include "kas/peer.h"
#include "kas/route.h"

/* Tunnels tried for one stream before falling back to waiting: a tunnel
 * that refuses an OPEN (full, draining) is marked unusable and the next
 * least-loaded one is tried. */
#define KR__ROUTE_ATTEMPTS 8
/* Other instances tried per lookup, best first. */
#define KR__ROUTE_MAX_CANDIDATES 8
/* Where an agent was last found through the cluster is remembered this
 * long (from the lookup, not renewed by use), so that a busy remote agent
 * costs one Redis lookup per period, not one per request. Every candidate
 * of the lookup is kept and requests are spread over them (replicas on
 * several instances all get traffic). A peer that failed, or answered
 * "not here", is dropped at once. */
#define KR__ROUTE_CACHE_US 2000000u
#define KR__ROUTE_CACHE_SLOTS 1024u
#define KR__ROUTE_CACHE_URLS 4
/* A peer that answered "not here" (or refused) for an agent is no
 * candidate for it this long, whatever a lookup says: it deletes its own
 * field when it answers, but that HDEL races with the lookup the first
 * kas makes next (a request routed again, another request), which could
 * otherwise read the field before it is gone and send the peer another
 * stream that waits its whole hop wait in vain. A wake-up from that peer
 * (it registered the agent since) lifts the mark at once. */
#define KR__ROUTE_GONE_US 2000000u
#define KR__ROUTE_GONE_URLS 2

typedef struct route_cache_slot {
  int64_t agent;
  kr_time_us until;
  /* A lookup of pending_agent is in flight until its answer (or until
   * pending_until at the latest): requests for it wait for that answer
   * instead of asking Redis too. */
  int64_t pending_agent;
  kr_time_us pending_until;
  unsigned n, next;
  char url[KR__ROUTE_CACHE_URLS][256];
  /* Peers that said "not here" for agent, each until gone_until[i]. */
  kr_time_us gone_until[KR__ROUTE_GONE_URLS];
  char gone[KR__ROUTE_GONE_URLS][256];
} route_cache_slot;

/* A direct-mapped table per kas (allocated on first use). */
static route_cache_slot *cache_slot(kr_kas *k, int64_t agent) {
  if (!k->route_cache &&
      !(k->route_cache = calloc(KR__ROUTE_CACHE_SLOTS, sizeof(route_cache_slot))))
    return NULL;
  route_cache_slot *c = k->route_cache;
  return &c[(uint64_t)agent % KR__ROUTE_CACHE_SLOTS];
}

/* The slot of agent, taken over (empty) if another agent had it. */
static route_cache_slot *cache_own(kr_kas *k, int64_t agent) {
  route_cache_slot *c = cache_slot(k, agent);
  if (c && c->agent != agent) {
    c->agent = agent;
    c->until = 0;
    c->n = c->next = 0;
    memset(c->gone_until, 0, sizeof(c->gone_until));
  }
  return c;
}

/* Starts a fresh list of candidates for agent (drops what another agent
 * had there; keeps the agent's "not here" marks). */
static route_cache_slot *cache_reset(kr_kas *k, int64_t agent) {
  route_cache_slot *c = cache_own(k, agent);
  if (!c)
    return NULL;
  c->until = kr__now_us() + KR__ROUTE_CACHE_US;
  c->n = c->next = 0;
  return c;
}

/* Whether the peer at url said "not here" for agent lately. */
static int cache_is_gone(kr_kas *k, int64_t agent, const char *url) {
  route_cache_slot *c = cache_slot(k, agent);
  if (!c || c->agent != agent)
    return 0;
  kr_time_us now = kr__now_us();
  for (unsigned i = 0; i < KR__ROUTE_GONE_URLS; i++)
    if (c->gone_until[i] > now && strcmp(c->gone[i], url) == 0)
      return 1;
  return 0;
}

/* Marks url "not here" for agent (replacing the oldest mark if full). */
static void cache_mark_gone(kr_kas *k, int64_t agent, const char *url) {
  route_cache_slot *c = cache_own(k, agent);
  if (!c || strlen(url) >= sizeof(c->gone[0]))
    return;
  unsigned at = 0;
  for (unsigned i = 0; i < KR__ROUTE_GONE_URLS; i++) {
    if (strcmp(c->gone[i], url) == 0) {
      at = i;
      break;
    }
    if (c->gone_until[i] < c->gone_until[at])
      at = i;
  }
  snprintf(c->gone[at], sizeof(c->gone[0]), "%s", url);
  c->gone_until[at] = kr__now_us() + KR__ROUTE_GONE_US;
}

/* News from url for agent (a wake-up): it is a candidate again. */
static void cache_unmark_gone(kr_kas *k, int64_t agent, const char *url) {
  route_cache_slot *c = cache_slot(k, agent);
  if (!c || c->agent != agent)
    return;
  for (unsigned i = 0; i < KR__ROUTE_GONE_URLS; i++)
    if (strcmp(c->gone[i], url) == 0)
      c->gone_until[i] = 0;
}

static void cache_add(route_cache_slot *c, const char *url) {
  if (!c || strlen(url) >= sizeof(c->url[0]) || c->n == KR__ROUTE_CACHE_URLS)
    return;
  for (unsigned i = 0; i < c->n; i++)
    if (strcmp(c->url[i], url) == 0)
      return;
  snprintf(c->url[c->n++], sizeof(c->url[0]), "%s", url);
}

/* A candidate for agent, taken in turn, or NULL. */
static const char *cache_get(kr_kas *k, int64_t agent) {
  route_cache_slot *c = cache_slot(k, agent);
  if (!c || c->agent != agent || c->n == 0 || c->until < kr__now_us())
    return NULL;
  return c->url[c->next++ % c->n];
}

/* url (NULL: every URL) is no good for agent any more. */
static void cache_drop(kr_kas *k, int64_t agent, const char *url) {
  route_cache_slot *c = cache_slot(k, agent);
  if (!c || c->agent != agent)
    return;
  if (!url) {
    c->n = 0;
    return;
  }
  for (unsigned i = 0; i < c->n; i++)
    if (strcmp(c->url[i], url) == 0) {
      memmove(c->url[i], c->url[i + 1], (c->n - i - 1) * sizeof(c->url[0]));
      c->n--;
      return;
    }
}

void kr__route_forget(kr_kas *k, int64_t agent, const char *url) {
  cache_drop(k, agent, url);
  if (url)
    cache_mark_gone(k, agent, url);
}

struct kr__route {
  kr_kas *k;
  int64_t agent;
  kr_md *md; /* one allocation: entries then bytes */
  size_t md_n;
  int fin;
  const kr__stream_handler *h;
  void *ud;
  kr__route_cb cb;
  int hop;               /* local tunnels only */
  kr_time_us deadline;
  kr__waiter *waiter;    /* waiting for a local tunnel */
  kr__cluster_lookup_op *lookup;
  kr__peer_open *peer_open;
  char *cands[KR__ROUTE_MAX_CANDIDATES]; /* peer URLs still to try */
  char tried[256]; /* the URL of the peer open in flight */
  int looked_up;   /* the cached location was tried */
  int lookups;     /* Redis lookups made */
  size_t n_cands;
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

static void start_lookup(kr__route *r);

static void clear_cands(kr__route *r) {
  for (size_t i = 0; i < r->n_cands; i++)
    free(r->cands[i]);
  r->n_cands = 0;
}

static void route_free(kr__route *r) {
  unlink_route(r);
  if (r->waiter)
    kr__registry_cancel(r->waiter);
  if (r->lookup) {
    /* Waiting requests of the agent must not wait for an answer that will
     * not come: the next one asks Redis itself. */
    route_cache_slot *cs = cache_slot(r->k, r->agent);
    if (cs && cs->pending_agent == r->agent)
      cs->pending_agent = 0;
  }
  kr__cluster_lookup_cancel(r->lookup);
  kr__peer_open_cancel(r->peer_open);
  clear_cands(r);
  free(r->md);
  int64_t agent = r->lookup ? r->agent : 0;
  kr_kas *k = r->k;
  free(r);
  if (agent && !k->freeing && !k->draining) /* another waiting request asks */
    for (kr__route *q = k->routes; q; q = q->next)
      if (q->agent == agent && !q->lookup && !q->peer_open) {
        start_lookup(q);
        break;
      }
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
  r->k->stats[KR_KAS_STAT_ROUTED_LOCAL]++;
  r->k->stats[KR_KAS_STAT_STREAMS_ACTIVE]++;
  update_load(ac);
  finish(r, s, ac, KR_CODE_NO_ERROR, NULL);
  return 0;
}

static void try_route(kr__route *r);
static void try_peers(kr__route *r);
static void start_lookup(kr__route *r);

static void waiter_cb(kr__waiter *w, kr__tunnel *t, int status, void *ud) {
  kr__route *r = ud;
  r->waiter = NULL;
  if (status == 0 && t) {
    try_route(r);
    return;
  }
  kr_kas *k = r->k;
  k->stats[KR_KAS_STAT_ROUTE_TIMEOUTS]++;
  char why[128];
  snprintf(why, sizeof(why), "agent %" PRId64 " is not connected%s", r->agent,
           r->hop ? " here" : "");
  kr__log(KR_LOG_INFO, "route_timeout", "kas=%s agent=%" PRId64 " hop=%d",
          k->name, r->agent, r->hop);
  if (r->hop && k->cluster)
    kr__cluster_not_here(k->cluster, r->agent); /* a stale entry sent it */
  finish(r, NULL, NULL, KR_CODE_UNAVAILABLE, why);
}

/* The stream opened on a peer link, or the link failed: next candidate. */
static void peer_cb(kr_stream *s, kas_conn *pc, int err, const char *why,
                    void *ud) {
  kr__route *r = ud;
  kr_kas *k = r->k;
  r->peer_open = NULL;
  if (s) {
    k->stats[KR_KAS_STAT_STREAMS_ROUTED]++;
    k->stats[KR_KAS_STAT_ROUTED_PEER]++;
    k->stats[KR_KAS_STAT_STREAMS_ACTIVE]++;
    finish(r, s, pc, KR_CODE_NO_ERROR, NULL);
    return;
  }
  char q[300];
  cache_drop(k, r->agent, r->tried);
  k->stats[KR_KAS_STAT_ROUTE_RETRIES]++;
  kr__log(KR_LOG_INFO, "route_peer_failed", "kas=%s agent=%" PRId64 " why=%s",
          k->name, r->agent, kr__log_quote(q, sizeof(q), why, strlen(why)));
  try_peers(r);
  if (!r->peer_open)
    start_lookup(r); /* the cached location was wrong: ask Redis once */
}

/* Opens the stream through the next candidate instance, if any is left;
 * the local wait goes on meanwhile. */
static void try_peers(kr__route *r) {
  kr_kas *k = r->k;
  while (r->n_cands > 0 && !r->peer_open) {
    char *url = r->cands[0];
    memmove(r->cands, r->cands + 1, (r->n_cands - 1) * sizeof(char *));
    r->n_cands--;
    snprintf(r->tried, sizeof(r->tried), "%s", url);
    /* The request's metadata plus the target agent and the hop mark. */
    kr_md *md = malloc((r->md_n + 2) * sizeof(kr_md));
    char agent[24];
    snprintf(agent, sizeof(agent), "%" PRId64, r->agent);
    int rc = KR_ENOMEM;
    if (md) {
      md[0] = (kr_md){(const uint8_t *)KR_MD_AGENT, strlen(KR_MD_AGENT),
                      (const uint8_t *)agent, strlen(agent)};
      md[1] = (kr_md){(const uint8_t *)KR_MD_HOP, strlen(KR_MD_HOP),
                      (const uint8_t *)"1", 1};
      memcpy(md + 2, r->md, r->md_n * sizeof(kr_md));
      rc = kr__peer_open_start(k, url, md, r->md_n + 2, r->fin, r->h, r->ud,
                               peer_cb, r, &r->peer_open);
      free(md);
    }
    if (rc < 0) {
      k->stats[KR_KAS_STAT_ROUTE_RETRIES]++;
      kr__log(KR_LOG_WARN, "route_peer_failed", "kas=%s agent=%" PRId64
              " error=%s", k->name, r->agent, kr_err_name(rc));
    }
    free(url);
  }
}

/* Adds a candidate URL (front: freshest news first), without duplicates. */
static void add_cand(kr__route *r, const char *url, int front) {
  for (size_t i = 0; i < r->n_cands; i++)
    if (strcmp(r->cands[i], url) == 0)
      return;
  if (r->n_cands == KR__ROUTE_MAX_CANDIDATES)
    return;
  char *u = strdup(url);
  if (!u)
    return;
  if (front) {
    memmove(r->cands + 1, r->cands, r->n_cands * sizeof(char *));
    r->cands[0] = u;
  } else {
    r->cands[r->n_cands] = u;
  }
  r->n_cands++;
}

static void lookup_cb(const kr__presence_candidate *c, size_t n, int err,
                      void *ud) {
  kr__route *r = ud;
  kr_kas *k = r->k;
  int64_t agent = r->agent;
  r->lookup = NULL;
  route_cache_slot *cs = cache_slot(k, agent);
  if (cs && cs->pending_agent == agent)
    cs->pending_agent = 0;
  cs = n ? cache_reset(k, agent) : NULL;
  for (size_t i = 0; i < n; i++)
    if (!cache_is_gone(k, agent, c[i].url))
      cache_add(cs, c[i].url);
  /* Every request waiting for this agent gets the answer: while this
   * lookup ran, the others did not ask Redis themselves. */
  for (kr__route *q = k->routes; q; q = q->next) {
    if (q->agent != agent || q->hop || q->peer_open || q->lookup)
      continue;
    for (size_t i = 0; i < n; i++)
      if (!cache_is_gone(k, agent, c[i].url))
        add_cand(q, c[i].url, 0);
    try_peers(q);
  }
}

/* Looks the agent up in the cluster (unless one is running, or a peer
 * open is). */
static void start_lookup(kr__route *r) {
  kr_kas *k = r->k;
  if (r->hop || !k->cluster || r->lookup || r->peer_open)
    return;
  const char *known = cache_get(k, r->agent);
  if (known && !r->looked_up) {
    r->looked_up = 1; /* the cache is tried once; then Redis */
    add_cand(r, known, 1);
    try_peers(r);
    if (r->peer_open)
      return;
  }
  /* At most two lookups per request: a candidate that keeps failing must
   * not turn into a stream of Redis commands; wake-ups still arrive. */
  if (!kr__cluster_is_up(k->cluster) || r->lookups >= 2)
    return;
  route_cache_slot *cs = cache_slot(k, r->agent);
  kr_time_us now = kr__now_us();
  if (cs && cs->pending_agent == r->agent && cs->pending_until > now)
    return; /* lookup_cb of that lookup serves this request too */
  r->lookups++;
  if (kr__cluster_lookup(k->cluster, r->agent, lookup_cb, r, &r->lookup) == 0 &&
      cs) {
    cs->pending_agent = r->agent;
    cs->pending_until = now + KR__ROUTE_CACHE_US;
  }
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
  /* No usable tunnel here: ask the cluster, and wait for a local one
   * (woken by registration) until the deadline either way. */
  start_lookup(r);
  if (r->waiter)
    return;
  if (kr__registry_wait(k->reg, r->agent, r->deadline, waiter_cb, r,
                        &r->waiter) < 0) {
    finish(r, NULL, NULL, KR_CODE_REFUSED, "too many requests waiting");
    return;
  }
  kr__kas_schedule_expiry(k);
}

void kr__route_wake(kr_kas *k, int64_t agent, const char *url) {
  if (url && *url) {
    cache_unmark_gone(k, agent, url);
    route_cache_slot *c = cache_slot(k, agent);
    if (c && (c->agent != agent || c->until < kr__now_us()))
      c = cache_reset(k, agent);
    cache_add(c, url);
  }
  for (kr__route *r = k->routes; r; r = r->next)
    if (r->agent == agent && !r->hop && url && *url) {
      add_cand(r, url, 1);
      if (!r->peer_open)
        try_peers(r);
    }
}

void kr__route_resync(kr_kas *k) {
  for (kr__route *r = k->routes; r; r = r->next) {
    r->lookups = 0; /* news may have been missed: look again */
    start_lookup(r);
  }
}

int kr__route_start(kr_kas *k, int64_t agent, const kr_md *md, size_t n,
                    int fin, int hop, const kr__stream_handler *h, void *ud,
                    kr__route_cb cb, kr__route **out) {
  kr_time_us wait = k->opt.route_timeout;
  if (hop && k->opt.hop_wait < wait)
    wait = k->opt.hop_wait;
  return kr__route_start_until(k, agent, md, n, fin, hop, kr__now_us() + wait,
                               h, ud, cb, out);
}

int kr__route_start_until(kr_kas *k, int64_t agent, const kr_md *md, size_t n,
                          int fin, int hop, kr_time_us deadline,
                          const kr__stream_handler *h, void *ud,
                          kr__route_cb cb, kr__route **out) {
  kr__route *r = calloc(1, sizeof(*r));
  if (!r || !(r->md = kr__md_dup(md, n))) {
    free(r);
    *out = NULL;
    return KR_ENOMEM;
  }
  r->k = k;
  r->agent = agent;
  r->md_n = n;
  r->fin = fin;
  r->hop = hop;
  r->deadline = deadline;
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

void kr__route_drain(kr_kas *k) {
  while (k->routes)
    finish(k->routes, NULL, NULL, KR_CODE_SHUTDOWN, "kas is shutting down");
}

void kr__route_free_all(kr_kas *k) {
  while (k->routes)
    route_free(k->routes);
}
