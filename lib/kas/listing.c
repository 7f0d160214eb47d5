/* Listing connected agents (see listing.h). */
#include <event2/event.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kasroute/error.h>

#include "core/mux_internal.h"
#include "kas/cluster.h"
#include "kas/listing.h"

/* Most agents one listing returns (the rest is cut, "truncated"). */
#define KR__LISTING_MAX 100000

/* A pending listing. The cluster's listing cannot be cancelled, so a
 * cancelled listing stays allocated (quiet) until its answer comes. */
struct kr__listing {
  kr_kas *k;
  kr__listing_cb cb;
  void *ud;
  int cancelled;
  int in_cluster; /* the cluster holds a pointer to it */
  struct event *ev; /* local listings are answered from the loop */
  kr__listing *prev, *next;
};

typedef struct local_list {
  kr_kas *k;
  json_t *agents;
  kr_time_us mono_now;
  uint64_t wall_now_ms;
} local_list;

static uint64_t wall_ms(kr_time_us mono_since, const local_list *l) {
  kr_time_us age = l->mono_now > mono_since ? l->mono_now - mono_since : 0;
  return l->wall_now_ms - age / 1000u;
}

static int visit_agent(const kr__agent_info *info, void *ud) {
  local_list *l = ud;
  kr__tunnel_info t[64];
  size_t n = kr__registry_agent_tunnels(l->k->reg, info->agent_id, t, 64);
  if (n > 64)
    n = 64;
  json_t *reps = json_array();
  uint64_t since = UINT64_MAX;
  for (size_t i = 0; i < n; i++) {
    uint64_t ms = wall_ms(t[i].connected_since, l);
    since = ms < since ? ms : since;
    /* One entry per replica (tunnels are grouped by replica). */
    if (i > 0 && strcmp(t[i].replica_name, t[i - 1].replica_name) == 0)
      continue;
    json_array_append_new(
        reps, json_pack("{s:s, s:s, s:i, s:I}", "name", t[i].replica_name,
                        "instance", l->k->name, "connections",
                        (int)t[i].replica_conns, "connected_since_ms",
                        (json_int_t)ms));
  }
  json_t *inst = json_pack("[{s:s, s:i, s:I}]", "instance", l->k->name,
                           "connections", (int)info->tunnels,
                           "connected_since_ms", (json_int_t)since);
  json_array_append_new(
      l->agents, json_pack("{s:I, s:i, s:I, s:o, s:o}", "id",
                           (json_int_t)info->agent_id, "connections",
                           (int)info->tunnels, "connected_since_ms",
                           (json_int_t)since, "instances", inst, "replicas",
                           reps));
  return 0;
}

/* This instance's agents, in the cluster listing's format. */
static char *local_listing(kr_kas *k) {
  local_list l = {k, json_array(), kr__now_us(), 0};
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  l.wall_now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  kr__registry_foreach_agent(k->reg, visit_agent, &l);
  json_t *doc = json_pack("{s:o, s:b}", "agents", l.agents, "truncated", 0);
  char *out = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  return out;
}


static void unlink_listing(kr__listing *l) {
  kr_kas *k = l->k;
  if (l->prev)
    l->prev->next = l->next;
  else if (k->listings == l)
    k->listings = l->next;
  if (l->next)
    l->next->prev = l->prev;
  l->prev = l->next = NULL;
}

static void listing_free(kr__listing *l) {
  unlink_listing(l);
  if (l->ev)
    event_free(l->ev);
  free(l);
}

static void answer_local(kr__listing *l) {
  kr__listing_cb cb = l->cb;
  void *ud = l->ud;
  kr_kas *k = l->k;
  listing_free(l);
  char *json = local_listing(k);
  if (json)
    cb(json, strlen(json), 0, ud);
  else
    cb(NULL, 0, KR_ENOMEM, ud);
  free(json);
}

static void local_cb(evutil_socket_t fd, short what, void *arg) {
  answer_local(arg);
}

static void cluster_cb(const char *json, size_t len, int err, void *ud) {
  kr__listing *l = ud;
  l->in_cluster = 0;
  if (l->cancelled) {
    listing_free(l);
    return;
  }
  if (err < 0 || !json) {
    answer_local(l); /* Redis failed meanwhile: what this instance knows */
    return;
  }
  kr__listing_cb cb = l->cb;
  void *ud2 = l->ud;
  listing_free(l);
  cb(json, len, 0, ud2);
}

int kr__listing_start(kr_kas *k, kr__listing_cb cb, void *ud,
                      kr__listing **out) {
  kr__listing *l = calloc(1, sizeof(*l));
  if (!l)
    return KR_ENOMEM;
  l->k = k;
  l->cb = cb;
  l->ud = ud;
  l->next = k->listings;
  if (k->listings)
    k->listings->prev = l;
  k->listings = l;
  if (k->cluster && kr__cluster_is_up(k->cluster) &&
      kr__cluster_list(k->cluster, KR__LISTING_MAX, cluster_cb, l) == 0) {
    l->in_cluster = 1;
  } else if (!(l->ev = event_new(k->base, -1, 0, local_cb, l))) {
    listing_free(l);
    return KR_ENOMEM;
  } else {
    event_active(l->ev, EV_TIMEOUT, 0);
  }
  *out = l;
  return 0;
}

void kr__listing_cancel(kr__listing *l) {
  if (!l)
    return;
  if (l->in_cluster) {
    l->cancelled = 1; /* stays listed; freed by cluster_cb or free_all */
    return;
  }
  listing_free(l);
}

void kr__listing_free_all(kr_kas *k) {
  /* Called right before the cluster is freed, which drops its callbacks:
   * cancelled listings still waiting for it go too. */
  while (k->listings)
    listing_free(k->listings);
}

/* ------------------------------------------------- over an API stream */

/* An API client asked for the listing with a stream: the answer is a
 * REPLY (":status" 200, "content-type" application/json), the document as
 * DATA, then FIN. */
typedef struct stream_listing {
  kr__listing *l;
  kr_stream *s;
  char *doc;
  size_t len, off;
} stream_listing;

static const kr__stream_handler stream_listing_handler;

static void sl_free(stream_listing *sl) {
  kr__listing_cancel(sl->l);
  free(sl->doc);
  free(sl);
}

/* Writes what the stream takes; FIN and free once everything went. */
static void sl_push(stream_listing *sl) {
  while (sl->off < sl->len) {
    int64_t w = kr_stream_write(sl->s, sl->doc + sl->off, sl->len - sl->off);
    if (w <= 0)
      return; /* on_writable comes back */
    sl->off += (size_t)w;
  }
  kr_stream *s = sl->s;
  kr__stream_set_handler(s, NULL);
  kr_stream_set_user_data(s, NULL);
  kr_stream_close_write(s);
  sl_free(sl);
}

static void sl_listed(const char *json, size_t len, int err, void *ud) {
  stream_listing *sl = ud;
  sl->l = NULL;
  if (err < 0 || !(sl->doc = malloc(len ? len : 1))) {
    kr_stream *s = sl->s;
    kr__stream_set_handler(s, NULL);
    kr_stream_set_user_data(s, NULL);
    kr_stream_reset(s, KR_CODE_INTERNAL, "cannot list agents");
    sl_free(sl);
    return;
  }
  memcpy(sl->doc, json, len);
  sl->len = len;
  static const char st[] = ":status", v200[] = "200", ct[] = "content-type",
                    json_t_[] = "application/json";
  kr_md md[2] = {{(const uint8_t *)st, sizeof(st) - 1, (const uint8_t *)v200,
                  sizeof(v200) - 1},
                 {(const uint8_t *)ct, sizeof(ct) - 1,
                  (const uint8_t *)json_t_, sizeof(json_t_) - 1}};
  if (kr_stream_reply(sl->s, md, 2, 0) < 0) {
    kr_stream *s = sl->s;
    kr__stream_set_handler(s, NULL);
    kr_stream_set_user_data(s, NULL);
    kr_stream_reset(s, KR_CODE_INTERNAL, "cannot reply");
    sl_free(sl);
    return;
  }
  sl_push(sl);
}

static void sl_writable(kr_stream *s, void *ud) { sl_push(ud); }

static void sl_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                     size_t len, void *ud) {
  sl_free(ud); /* the client went away */
}

static const kr__stream_handler stream_listing_handler = {
    NULL, NULL, NULL, sl_writable, sl_close};

void kr__listing_serve_stream(kr_kas *k, kr_stream *s) {
  stream_listing *sl = calloc(1, sizeof(*sl));
  if (!sl || kr__listing_start(k, sl_listed, sl, &sl->l) < 0) {
    free(sl);
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  sl->s = s;
  kr_stream_set_user_data(s, sl);
  kr__stream_set_handler(s, &stream_listing_handler);
}
