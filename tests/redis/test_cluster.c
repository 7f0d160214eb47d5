/* The kas cluster glue (lib/kas/cluster.c) against a real redis-server on
 * a free loopback port: two or three kr__cluster objects in one process
 * and one event loop, each with its own tunnel registry (tunnels added
 * with fake connections), sharing one Redis. Proves wake-ups across
 * instances and their latency, lookups, listings, crash detection
 * through the heartbeat, clean shutdown, fail-fast while Redis is down,
 * recovery after a restart, command timeouts, passwords, the stale-entry
 * self-correction and freeing from inside callbacks.
 *
 * Also here (case peer_tls, no Redis needed): tls:// peer links between
 * two kr_kas instances in one loop, closed by the far end while data is
 * in flight, gracefully (GOAWAY, then close_notify: the close is reported
 * from inside the TLS read path) and abruptly (reset). The dialling kas
 * must survive, forget the link and leak nothing. mbedTLS is not built
 * with the sanitizer: a TLS configuration freed while its transport is
 * still being torn down shows under valgrind (meson test --setup
 * valgrind).
 *
 * Each Check case is one meson test (CK_RUN_CASE picks it). Without
 * redis-server in PATH the program exits 77 (skipped), saying so. Started
 * servers die with the test (PR_SET_PDEATHSIG) and are killed by pid.
 */
#include <check.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kasroute/error.h>
#include <kasroute/kas.h>
#include <kasroute/log.h>

#include "core/registry.h"
#include "io/conn.h"
#include "kas/cluster.h"
#include "kas/peer.h"
#include "redis_helper.h"

/* ------------------------------------------------------------ processes */

/* Servers come from redis_helper.c; a failure there fails the test. */
static void abort_case(const char *why) {
  ck_abort_msg("%s", why);
}

/* Ends the servers and removes their files (teardown and exit). */
static void kill_all(void) {
  tr_kill_all();
  tr_remove_tmpdir();
}

static long long sync_int(int port, const char *fmt, const char *arg) {
  redisReply *rep = tr_sync_cmd(port, fmt, arg);
  ck_assert_ptr_nonnull(rep);
  ck_assert_int_eq(rep->type, REDIS_REPLY_INTEGER);
  long long v = rep->integer;
  freeReplyObject(rep);
  return v;
}

/* redis-server on port, with a password when not NULL. */
static pid_t start_redis(int port, const char *password) {
  return password ? tr_redis_start(port, "--requirepass", password, NULL)
                  : tr_redis_start(port, NULL);
}

/* ------------------------------------------------------------- the loop */

static struct event_base *base;

static void tick_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
}

/* Runs the loop until cond(arg) or timeout_ms. With poll_ms, cond is
 * also checked every poll_ms (for state outside the loop, e.g. Redis). */
static int run_until_p(int (*cond)(void *), void *arg, int timeout_ms,
                       int poll_ms) {
  kr_time_us end = kr__now_us() + (kr_time_us)timeout_ms * 1000;
  struct event *t = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
  struct timeval tv = {0, (poll_ms ? poll_ms : 50) * 1000};
  event_add(t, &tv);
  int v;
  while (!(v = cond(arg)) && kr__now_us() < end)
    event_base_loop(base, EVLOOP_ONCE);
  event_free(t);
  return v;
}

static int run_until(int (*cond)(void *), void *arg, int timeout_ms) {
  return run_until_p(cond, arg, timeout_ms, 0);
}

static int never(void *arg) {
  (void)arg;
  return 0;
}

/* Runs the loop for ms (only where time itself is what is tested). */
static void run_for(int ms) {
  run_until(never, NULL, ms);
}

/* ------------------------------------------------------------- instances */

typedef struct node {
  char name[32];
  char url[64];
  kr__registry *reg;
  kr__cluster *c;
  int wakes;
  int64_t wake_agent;
  char wake_inst[64], wake_url[128];
  kr_time_us wake_at;
  int resyncs;
  int free_on_wake, free_on_resync;
} node;

static int g_port;
static const char *g_prefix = "t:";

static void on_presence(int64_t agent, int present, void *ud) {
  (void)present;
  node *n = ud;
  kr__cluster_agent_changed(n->c, agent);
}

static void on_wake(int64_t agent, const char *instance, const char *url,
                    void *ud) {
  node *n = ud;
  n->wakes++;
  n->wake_agent = agent;
  n->wake_at = kr__now_us();
  snprintf(n->wake_inst, sizeof(n->wake_inst), "%s", instance);
  snprintf(n->wake_url, sizeof(n->wake_url), "%s", url);
  if (n->free_on_wake) {
    kr__cluster_free(n->c);
    n->c = NULL;
  }
}

static void on_resync(void *ud) {
  node *n = ud;
  n->resyncs++;
  if (n->free_on_resync) {
    kr__cluster_free(n->c);
    n->c = NULL;
  }
}

static char g_url[128];
static const char *redis_url(void) {
  snprintf(g_url, sizeof(g_url), "redis://127.0.0.1:%d", g_port);
  return g_url;
}

static void node_start_cfg(node *n, const char *name, kr__cluster_config *cfg) {
  memset(n, 0, sizeof(*n));
  snprintf(n->name, sizeof(n->name), "%s", name);
  snprintf(n->url, sizeof(n->url), "tcp://%s.test:8155", name);
  ck_assert_int_eq(kr__registry_new(NULL, &n->reg), 0);
  kr__registry_set_presence_cb(n->reg, on_presence, n);
  cfg->private_url = n->url;
  cfg->instance = n->name;
  if (!cfg->prefix)
    cfg->prefix = g_prefix;
  kr__cluster_cbs cbs = {on_wake, on_resync};
  char err[256];
  int rc = kr__cluster_new(base, cfg, n->reg, &cbs, n, &n->c, err, sizeof(err));
  ck_assert_msg(rc == 0, "kr__cluster_new: %s: %s", kr_err_name(rc), err);
  ck_assert_str_eq(kr__cluster_instance(n->c), name);
}

static void node_start(node *n, const char *name,
                       const kr__presence_config *pc) {
  kr__cluster_config cfg = {.url = redis_url(), .presence = pc};
  node_start_cfg(n, name, &cfg);
}

static void node_free(node *n) {
  kr__cluster_free(n->c);
  n->c = NULL;
  kr__registry_free(n->reg);
  n->reg = NULL;
}

static int cond_up(void *arg) {
  node **ns = arg;
  for (; *ns; ns++)
    if (!kr__cluster_is_up((*ns)->c))
      return 0;
  return 1;
}

static int cond_down(void *arg) {
  node **ns = arg;
  for (; *ns; ns++)
    if (kr__cluster_is_up((*ns)->c))
      return 0;
  return 1;
}

static int g_want_subs;
/* Every instance has subscribed to the wake-up channel (Redis is asked:
 * the client reports no event for a first subscription). */
static int cond_subscribed(void *arg) {
  (void)arg;
  char chan[64];
  snprintf(chan, sizeof(chan), "%swake", g_prefix);
  redisReply *rep = tr_sync_cmd(g_port, "PUBSUB NUMSUB %s", chan);
  int ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
           rep->element[1]->integer >= g_want_subs;
  if (rep)
    freeReplyObject(rep);
  return ok;
}

/* Starts the nodes' clusters and waits until all are up and subscribed. */
static void wait_ready(node **ns) {
  ck_assert_msg(run_until(cond_up, ns, 10000), "clusters not up");
  g_want_subs = 0;
  for (node **p = ns; *p; p++)
    g_want_subs++;
  ck_assert_msg(run_until_p(cond_subscribed, NULL, 10000, 10),
                "clusters not subscribed");
}

static kr__tunnel *add_tunnel(node *n, int64_t agent, const char *replica) {
  kr__tunnel *t = NULL;
  ck_assert_int_eq(
      kr__registry_add(n->reg, agent, replica, NULL, kr__now_us(), &t), 0);
  return t;
}

/* ----------------------------------------------------------- lookups */

typedef struct lres {
  int calls;
  int err;
  size_t n;
  kr__presence_candidate cand[8];
  node *free_node; /* frees this node's cluster inside the callback */
} lres;

static void on_lookup(const kr__presence_candidate *cand, size_t n, int err,
                      void *ud) {
  lres *r = ud;
  r->calls++;
  r->err = err;
  r->n = n;
  if (err)
    ck_assert_uint_eq(n, 0);
  for (size_t i = 0; i < n && i < 8; i++)
    r->cand[i] = cand[i];
  if (r->free_node) {
    kr__cluster_free(r->free_node->c);
    r->free_node->c = NULL;
  }
}

static int cond_called(void *arg) {
  return ((lres *)arg)->calls > 0;
}

/* One lookup to its end; returns its error (or the call's). */
static int lookup(node *n, int64_t agent, lres *r) {
  memset(r, 0, sizeof(*r));
  kr__cluster_lookup_op *op = NULL;
  int rc = kr__cluster_lookup(n->c, agent, on_lookup, r, &op);
  if (rc < 0)
    return rc;
  ck_assert_ptr_nonnull(op);
  ck_assert_int_eq(r->calls, 0); /* never from inside the call */
  ck_assert_msg(run_until(cond_called, r, 10000), "lookup never answered");
  ck_assert_int_eq(r->calls, 1);
  return r->err;
}

/* Looks up until the agent has want candidates (a bounded poll: writes
 * of another instance travel on its own connection, so a read may come
 * first). Returns the milliseconds it took. */
static long lookup_until(node *n, int64_t agent, size_t want, lres *r,
                         int timeout_ms) {
  kr_time_us t0 = kr__now_us(), end = t0 + (kr_time_us)timeout_ms * 1000;
  for (;;) {
    int rc = lookup(n, agent, r);
    ck_assert_msg(rc == 0, "lookup: %s", kr_err_name(rc));
    if (r->n == want)
      return (long)((kr__now_us() - t0) / 1000);
    ck_assert_msg(kr__now_us() < end,
                  "agent %lld: %zu candidates, want %zu, after %d ms",
                  (long long)agent, r->n, want, timeout_ms);
    run_for(20);
  }
}

/* ------------------------------------------------------------ listings */

typedef struct listres {
  int calls, err;
  json_t *doc;
} listres;

static void on_list(const char *json, size_t len, int err, void *ud) {
  listres *l = ud;
  l->calls++;
  l->err = err;
  if (err == 0) {
    ck_assert_uint_eq(strlen(json), len);
    json_error_t e;
    l->doc = json_loadb(json, len, 0, &e);
    ck_assert_msg(l->doc != NULL, "bad JSON: %s", e.text);
  }
}

static int cond_listed(void *arg) {
  return ((listres *)arg)->calls > 0;
}

static json_t *agent_of(json_t *doc, int64_t id) {
  json_t *agents = json_object_get(doc, "agents"), *a;
  size_t i;
  json_array_foreach(agents, i, a) {
    if (json_integer_value(json_object_get(a, "id")) == id)
      return a;
  }
  return NULL;
}

/* ------------------------------------------------------------------ logs */

static char logbuf[1 << 16];
static size_t loglen;
static void on_log(kr_log_level level, const char *line, void *ud) {
  (void)level;
  (void)ud;
  size_t n = strlen(line);
  if (loglen + n + 2 < sizeof(logbuf)) {
    memcpy(logbuf + loglen, line, n);
    loglen += n;
    logbuf[loglen++] = '\n';
    logbuf[loglen] = 0;
  }
}

/* ------------------------------------------------------------------ tests */

static void setup(void) {
  base = event_base_new();
  ck_assert_ptr_nonnull(base);
}

static void teardown(void) {
  event_base_free(base);
  base = NULL;
  kill_all();
}

START_TEST(t_config) {
  setup();
  kr_log_set_handler(on_log, NULL);
  kr__registry *reg = NULL;
  ck_assert_int_eq(kr__registry_new(NULL, &reg), 0);
  kr__cluster *c = NULL;
  char err[256];
  struct {
    kr__cluster_config cfg;
    int rc;
    const char *msg;
  } cases[] = {
      {{.private_url = "tcp://a:1"}, KR_ECONFIG, "exactly one"},
      {{.url = "redis://127.0.0.1:1",
        .sentinels = "127.0.0.1:2",
        .private_url = "tcp://a:1"},
       KR_ECONFIG,
       "exactly one"},
      {{.url = "redis://127.0.0.1:1"}, KR_ECONFIG, "private URL"},
      {{.url = "redis://127.0.0.1:1", .private_url = "tcp://a b:1"},
       KR_ECONFIG,
       "presence"},
      {{.url = "redis://127.0.0.1:1",
        .private_url = "tcp://a:1",
        .instance = "has space"},
       KR_ECONFIG,
       "presence"},
      {{.url = "http://127.0.0.1:1", .private_url = "tcp://a:1"},
       KR_EADDR,
       "redis"},
      {{.url = "redis://:s3cret@127.0.0.1:1",
        .password = "s3cret",
        .private_url = "tcp://a:1"},
       KR_ECONFIG,
       "both"},
      {{.url = "not a url", .password = "s3cret", .private_url = "tcp://a:1"},
       KR_EADDR,
       "URL"},
      {{.sentinels = "127.0.0.1:2", .private_url = "tcp://a:1"},
       KR_ECONFIG,
       "master"},
      {{.sentinels = "127.0.0.1:2,,127.0.0.1:3",
        .master = "m",
        .private_url = "tcp://a:1"},
       KR_EADDR,
       "sentinel"},
      {{.url = "redis://127.0.0.1:1",
        .master = "m",
        .private_url = "tcp://a:1"},
       KR_ECONFIG,
       "master"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int rc = kr__cluster_new(base, &cases[i].cfg, reg, NULL, NULL, &c, err,
                             sizeof(err));
    ck_assert_msg(rc == cases[i].rc, "case %zu: %s (%s)", i, kr_err_name(rc),
                  err);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(err, cases[i].msg), "case %zu: %s", i, err);
    ck_assert_msg(!strstr(err, "s3cret"), "password in error: %s", err);
  }
  kr__cluster_config bad_presence = {.url = "redis://127.0.0.1:1",
                                     .private_url = "tcp://a:1"};
  kr__presence_config pc;
  kr__presence_config_defaults(&pc);
  pc.heartbeat_ttl_ms = pc.heartbeat_period_ms; /* TTL must exceed it */
  bad_presence.presence = &pc;
  ck_assert_int_eq(kr__cluster_new(base, &bad_presence, reg, NULL, NULL, &c,
                                   err, sizeof(err)),
                   KR_ECONFIG);
  ck_assert_int_eq(
      kr__cluster_new(NULL, &bad_presence, reg, NULL, NULL, &c, NULL, 0),
      KR_EINVAL);
  kr__cluster_free(NULL);

  /* Valid settings, nothing listening: lookups and listings fail fast;
   * sentinel lists are accepted. */
  int port = tr_free_port();
  char url[64];
  snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
  kr__cluster_config ok = {
      .url = url, .password = "pa:ss@w/rd s3cret", .private_url = "tcp://a:1"};
  ck_assert_int_eq(
      kr__cluster_new(base, &ok, reg, NULL, NULL, &c, err, sizeof(err)), 0);
  ck_assert_str_eq(kr__cluster_instance(c), "tcp://a:1");
  ck_assert_int_eq(kr__cluster_is_up(c), 0);
  lres r;
  kr__cluster_lookup_op *op = (kr__cluster_lookup_op *)&r;
  ck_assert_int_eq(kr__cluster_lookup(c, 5, on_lookup, &r, &op), KR_ECLOSED);
  ck_assert_ptr_null(op);
  ck_assert_int_eq(kr__cluster_lookup(c, 0, on_lookup, &r, &op), KR_EINVAL);
  listres l = {0};
  ck_assert_int_eq(kr__cluster_list(c, 0, on_list, &l), KR_ECLOSED);
  run_for(300);                    /* a few failed attempts */
  kr__cluster_agent_changed(c, 5); /* kept for later, nothing sent */
  kr__cluster_free(c);
  kr__cluster_config sent = {.sentinels = "127.0.0.1:1,[::1]:2",
                             .master = "mymaster",
                             .password = "s3cret",
                             .private_url = "tcp://a:1",
                             .instance = "kas-s"};
  ck_assert_int_eq(
      kr__cluster_new(base, &sent, reg, NULL, NULL, &c, err, sizeof(err)), 0);
  run_for(100);
  kr__cluster_free(c);
  kr__registry_free(reg);
  kr_log_set_handler(NULL, NULL);
  ck_assert_msg(!strstr(logbuf, "s3cret"), "password logged: %s", logbuf);
  teardown();
}
END_TEST

static int woke(void *arg) {
  node **ns = arg;
  for (; *ns; ns++)
    if ((*ns)->wakes == 0)
      return 0;
  return 1;
}

START_TEST(t_wake_lookup) {
  setup();
  g_port = tr_free_port();
  start_redis(g_port, NULL);
  node a, b, cc;
  node_start(&a, "kas-a", NULL);
  node_start(&b, "kas-b", NULL);
  node_start(&cc, "kas-c", NULL);
  node *all[] = {&a, &b, &cc, NULL};
  wait_ready(all);

  lres r;
  ck_assert_int_eq(lookup(&b, 42, &r), 0);
  ck_assert_uint_eq(r.n, 0);

  /* First tunnel on A: B and C learn at once. */
  kr_time_us t0 = kr__now_us();
  kr__tunnel *ta = add_tunnel(&a, 42, "pod-1");
  node *bc[] = {&b, &cc, NULL};
  ck_assert_msg(run_until(woke, bc, 2000), "no wake-up");
  long lat_b = (long)(b.wake_at - t0), lat_c = (long)(cc.wake_at - t0);
  fprintf(stderr, "wake-up latency: B %ld us, C %ld us\n", lat_b, lat_c);
  /* Under valgrind everything runs ~20 times slower. */
  long bound = getenv("KR_VALGRIND") ? 2000000 : 100000;
  ck_assert_msg(lat_b < bound && lat_c < bound, "wake-up took %ld/%ld us",
                lat_b, lat_c);
  ck_assert_int_eq(b.wake_agent, 42);
  ck_assert_str_eq(b.wake_inst, "kas-a");
  ck_assert_str_eq(b.wake_url, a.url);
  ck_assert_int_eq(a.wakes, 0); /* its own message is not reported */

  ck_assert_int_eq(lookup(&b, 42, &r), 0);
  ck_assert_uint_eq(r.n, 1);
  ck_assert_str_eq(r.cand[0].instance, "kas-a");
  ck_assert_str_eq(r.cand[0].url, a.url);
  ck_assert_uint_eq(r.cand[0].conns, 1);
  ck_assert_int_eq(lookup(&a, 42, &r), 0);
  ck_assert_uint_eq(r.n, 0); /* this instance is excluded */

  /* A second tunnel: the count follows within the dirty delay. */
  kr__tunnel *ta2 = add_tunnel(&a, 42, "pod-2");
  kr__cluster_agent_changed(a.c, 42);
  for (int i = 0;; i++) {
    lookup_until(&b, 42, 1, &r, 1000);
    if (r.cand[0].conns == 2)
      break;
    ck_assert_msg(i < 150, "connection count never reached 2");
    run_for(20);
  }

  /* The agent on C too: two candidates, C with one tunnel. */
  kr__tunnel *tc = add_tunnel(&cc, 42, "pod-3");
  lookup_until(&b, 42, 2, &r, 2000);
  int wakes_b = b.wakes;

  /* Gone from A: only C remains; then from C: nothing. */
  kr__registry_remove(a.reg, ta);
  kr__registry_remove(a.reg, ta2);
  lookup_until(&b, 42, 1, &r, 2000);
  ck_assert_str_eq(r.cand[0].instance, "kas-c");
  kr__registry_remove(cc.reg, tc);
  lookup_until(&b, 42, 0, &r, 2000);
  char key[64];
  snprintf(key, sizeof(key), "%sagent:42", g_prefix);
  ck_assert_int_eq(sync_int(g_port, "EXISTS %s", key), 0);
  ck_assert_int_eq(b.wakes, wakes_b); /* removals announce nothing */

  /* Cancelled before and after its commands left: never called. */
  add_tunnel(&a, 43, "pod-1");
  lres x, y;
  memset(&x, 0, sizeof(x));
  memset(&y, 0, sizeof(y));
  kr__cluster_lookup_op *ox = NULL, *oy = NULL;
  ck_assert_int_eq(kr__cluster_lookup(b.c, 43, on_lookup, &x, &ox), 0);
  kr__cluster_lookup_cancel(ox);
  ck_assert_int_eq(kr__cluster_lookup(b.c, 43, on_lookup, &y, &oy), 0);
  event_base_loop(base, EVLOOP_ONCE); /* the pump sends HGETALL */
  kr__cluster_lookup_cancel(oy);
  ck_assert_int_eq(lookup(&b, 43, &r), 0);
  ck_assert_uint_eq(r.n, 1);
  run_for(50);
  ck_assert_int_eq(x.calls, 0);
  ck_assert_int_eq(y.calls, 0);

  node_free(&a);
  node_free(&b);
  node_free(&cc);
  teardown();
}
END_TEST

START_TEST(t_list) {
  setup();
  g_port = tr_free_port();
  start_redis(g_port, NULL);
  node a, b, cc;
  node_start(&a, "kas-a", NULL);
  node_start(&b, "kas-b", NULL);
  node_start(&cc, "kas-c", NULL);
  node *all[] = {&a, &b, &cc, NULL};
  wait_ready(all);
  add_tunnel(&a, 1, "pod-a1");
  add_tunnel(&a, 2, "pod-a2");
  add_tunnel(&b, 2, "pod-b2");
  add_tunnel(&b, 3, "pod-b3");
  lres r;
  lookup_until(&cc, 2, 2, &r, 2000);
  lookup_until(&cc, 1, 1, &r, 2000);
  lookup_until(&cc, 3, 1, &r, 2000);

  listres l = {0};
  ck_assert_int_eq(kr__cluster_list(cc.c, 0, on_list, &l), 0);
  ck_assert_int_eq(l.calls, 0);
  ck_assert(run_until(cond_listed, &l, 5000));
  ck_assert_int_eq(l.err, 0);
  json_t *agents = json_object_get(l.doc, "agents");
  ck_assert_uint_eq(json_array_size(agents), 3);
  json_t *a2 = agent_of(l.doc, 2);
  ck_assert_ptr_nonnull(a2);
  ck_assert_int_eq(json_integer_value(json_object_get(a2, "connections")), 2);
  json_t *insts = json_object_get(a2, "instances");
  ck_assert_uint_eq(json_array_size(insts), 2);
  ck_assert_str_eq(
      json_string_value(json_object_get(json_array_get(insts, 0), "instance")),
      "kas-a");
  ck_assert_str_eq(
      json_string_value(json_object_get(json_array_get(insts, 1), "instance")),
      "kas-b");
  ck_assert_uint_eq(json_array_size(json_object_get(a2, "replicas")), 2);
  ck_assert_ptr_nonnull(agent_of(l.doc, 1));
  ck_assert_ptr_nonnull(agent_of(l.doc, 3));
  ck_assert(json_is_false(json_object_get(l.doc, "truncated")));
  json_decref(l.doc);

  /* From A: its own agents from its state, B's from Redis; bounded. */
  listres l2 = {0};
  ck_assert_int_eq(kr__cluster_list(a.c, 2, on_list, &l2), 0);
  ck_assert(run_until(cond_listed, &l2, 5000));
  ck_assert_int_eq(l2.err, 0);
  ck_assert_uint_eq(json_array_size(json_object_get(l2.doc, "agents")), 2);
  ck_assert(json_is_true(json_object_get(l2.doc, "truncated")));
  json_decref(l2.doc);
  node_free(&a);
  node_free(&b);
  node_free(&cc);
  teardown();
}
END_TEST

static kr__presence_config fast_presence(void) {
  kr__presence_config pc;
  kr__presence_config_defaults(&pc);
  pc.heartbeat_period_ms = 300;
  pc.heartbeat_ttl_ms = 1000;
  return pc;
}

START_TEST(t_crash) {
  setup();
  g_port = tr_free_port();
  start_redis(g_port, NULL);
  kr__presence_config pc = fast_presence();
  node a, b;
  node_start(&a, "kas-a", &pc);
  node_start(&b, "kas-b", &pc);
  node *all[] = {&a, &b, NULL};
  wait_ready(all);
  add_tunnel(&a, 7, "pod");
  lres r;
  lookup_until(&b, 7, 1, &r, 2000);
  /* The heartbeat is refreshed: A stays live well past one TTL. */
  run_for(1500);
  ck_assert_int_eq(lookup(&b, 7, &r), 0);
  ck_assert_uint_eq(r.n, 1);

  /* A vanishes without a word (as with kill -9). */
  kr__cluster_free(a.c);
  a.c = NULL;
  long ms = lookup_until(&b, 7, 0, &r, 5000);
  fprintf(stderr, "crashed instance dropped after %ld ms (TTL %llu ms)\n", ms,
          (unsigned long long)pc.heartbeat_ttl_ms);
  ck_assert_msg(ms <= (long)pc.heartbeat_ttl_ms + 500, "took %ld ms", ms);
  /* The lookup removed the stale field (compare-and-delete). */
  char key[64];
  snprintf(key, sizeof(key), "%sagent:7", g_prefix);
  for (int i = 0; i < 100 && sync_int(g_port, "EXISTS %s", key); i++)
    run_for(10);
  ck_assert_int_eq(sync_int(g_port, "EXISTS %s", key), 0);
  node_free(&a);
  node_free(&b);
  teardown();
}
END_TEST

static int g_keys_port;
static const char *g_keys_pattern;
static int cond_no_keys(void *arg) {
  (void)arg;
  redisReply *rep = tr_sync_cmd(g_keys_port, "KEYS %s", g_keys_pattern);
  int ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 0;
  if (rep)
    freeReplyObject(rep);
  return ok;
}

/* The periodic sweep removes a crashed instance's entries that nobody
 * looks up. */
START_TEST(t_sweep) {
  setup();
  g_port = tr_free_port();
  start_redis(g_port, NULL);
  kr__presence_config pc = fast_presence();
  pc.sweep_period_ms = 1500;
  node a, b;
  node_start(&a, "kas-a", &pc);
  node_start(&b, "kas-b", &pc);
  node *all[] = {&a, &b, NULL};
  wait_ready(all);
  for (int64_t id = 1; id <= 5; id++)
    add_tunnel(&a, id, "pod");
  lres r;
  lookup_until(&b, 5, 1, &r, 2000);
  kr__cluster_free(a.c);
  a.c = NULL;
  char pattern[64];
  snprintf(pattern, sizeof(pattern), "%sagent:*", g_prefix);
  g_keys_port = g_port;
  g_keys_pattern = pattern;
  kr_time_us t0 = kr__now_us();
  ck_assert_msg(run_until_p(cond_no_keys, NULL, 8000, 50),
                "entries of the crashed instance were never swept");
  fprintf(stderr, "swept after %lld ms\n",
          (long long)((kr__now_us() - t0) / 1000));
  node_free(&a);
  node_free(&b);
  teardown();
}
END_TEST

/* Redis loses its data without dropping the connection: the heartbeat
 * reply notices, and the state is written again. */
START_TEST(t_flush) {
  setup();
  g_port = tr_free_port();
  start_redis(g_port, NULL);
  kr__presence_config pc = fast_presence();
  node a, b;
  node_start(&a, "kas-a", &pc);
  node_start(&b, "kas-b", &pc);
  node *all[] = {&a, &b, NULL};
  wait_ready(all);
  add_tunnel(&a, 42, "pod");
  lres r;
  lookup_until(&b, 42, 1, &r, 2000);
  redisReply *rep = tr_sync_cmd(g_port, "FLUSHALL");
  ck_assert_ptr_nonnull(rep);
  freeReplyObject(rep);
  ck_assert_int_eq(lookup(&b, 42, &r), 0);
  ck_assert_uint_eq(r.n, 0);
  long ms = lookup_until(&b, 42, 1, &r, 3000);
  fprintf(stderr, "rewritten %ld ms after the flush\n", ms);
  ck_assert_int_eq(a.resyncs + b.resyncs, 0); /* no reconnect happened */
  node_free(&a);
  node_free(&b);
  teardown();
}
END_TEST

static int cond_conflict(void *arg) {
  (void)arg;
  return strstr(logbuf, "cluster_instance_conflict") != NULL;
}

/* Two live processes with one instance name: reported loudly. */
START_TEST(t_conflict) {
  setup();
  kr_log_set_handler(on_log, NULL);
  g_port = tr_free_port();
  start_redis(g_port, NULL);
  kr__presence_config pc = fast_presence();
  node a, a2;
  node_start(&a, "kas-a", &pc);
  node_start(&a2, "kas-a", &pc);
  node *all[] = {&a, &a2, NULL};
  wait_ready(all);
  ck_assert_msg(run_until_p(cond_conflict, NULL, 5000, 20),
                "no conflict reported");
  ck_assert(strstr(logbuf, "level=error event=cluster_instance_conflict"));
  kr_log_set_handler(NULL, NULL);
  node_free(&a);
  node_free(&a2);
  teardown();
}
END_TEST

static int g_done;
static kr__cluster *g_free_in_done;
static void on_done(void *ud) {
  g_done++;
  *(kr_time_us *)ud = kr__now_us();
  if (g_free_in_done) {
    kr__cluster_free(g_free_in_done);
    g_free_in_done = NULL;
  }
}
static int cond_done(void *arg) {
  return g_done >= *(int *)arg;
}

START_TEST(t_shutdown) {
  setup();
  g_port = tr_free_port();
  pid_t pid = start_redis(g_port, NULL);
  node a, b;
  node_start(&a, "kas-a", NULL);
  node_start(&b, "kas-b", NULL);
  node *all[] = {&a, &b, NULL};
  wait_ready(all);
  for (int64_t id = 100; id < 110; id++)
    add_tunnel(&a, id, "pod");
  lres r;
  lookup_until(&b, 109, 1, &r, 2000);

  kr_time_us t0 = kr__now_us(), t1 = 0;
  g_done = 0;
  kr__cluster_shutdown(a.c, on_done, &t1);
  kr__cluster_shutdown(a.c, on_done, &t1); /* ignored */
  ck_assert_int_eq(g_done, 0);
  int want = 1;
  ck_assert(run_until(cond_done, &want, 3000));
  fprintf(stderr, "clean shutdown took %lld us\n", (long long)(t1 - t0));
  ck_assert_msg(t1 - t0 < 1000000, "shutdown took %lld us",
                (long long)(t1 - t0));
  /* Confirmed by Redis: gone at once, no waiting. */
  for (int64_t id = 100; id < 110; id++) {
    ck_assert_int_eq(lookup(&b, id, &r), 0);
    ck_assert_uint_eq(r.n, 0);
  }
  char key[64];
  snprintf(key, sizeof(key), "%sinstance:kas-a", g_prefix);
  ck_assert_int_eq(sync_int(g_port, "EXISTS %s", key), 0);
  snprintf(key, sizeof(key), "%sagent:100", g_prefix);
  ck_assert_int_eq(sync_int(g_port, "EXISTS %s", key), 0);
  /* Nothing more is written; lookups still work. */
  add_tunnel(&a, 111, "pod");
  run_for(100);
  snprintf(key, sizeof(key), "%sagent:111", g_prefix);
  ck_assert_int_eq(sync_int(g_port, "EXISTS %s", key), 0);
  add_tunnel(&b, 112, "pod");
  lookup_until(&a, 112, 1, &r, 2000);
  run_for(50);
  ck_assert_int_eq(g_done, 1);

  /* Redis down: done comes promptly, from the loop; free inside it. */
  node_free(&a);
  tr_end_proc(pid);
  node *bb[] = {&b, NULL};
  ck_assert(run_until(cond_down, bb, 5000));
  g_done = 0;
  g_free_in_done = b.c;
  kr__cluster_shutdown(b.c, on_done, &t1);
  ck_assert_int_eq(g_done, 0);
  ck_assert(run_until(cond_done, &want, 1000));
  ck_assert_ptr_null(g_free_in_done);
  b.c = NULL;
  node_free(&b);
  teardown();
}
END_TEST

static int cond_resynced(void *arg) {
  node **ns = arg;
  for (; *ns; ns++)
    if ((*ns)->resyncs == 0)
      return 0;
  return 1;
}

START_TEST(t_restart) {
  setup();
  g_port = tr_free_port();
  pid_t pid = start_redis(g_port, NULL);
  node a, b;
  node_start(&a, "kas-a", NULL);
  node_start(&b, "kas-b", NULL);
  node *all[] = {&a, &b, NULL};
  wait_ready(all);
  add_tunnel(&a, 42, "pod");
  lres r;
  lookup_until(&b, 42, 1, &r, 2000);

  tr_end_proc(pid);
  ck_assert(run_until(cond_down, all, 5000));
  /* Fail fast while Redis is away. */
  kr_time_us t0 = kr__now_us();
  ck_assert_int_eq(lookup(&b, 42, &r), KR_ECLOSED);
  ck_assert_int_lt(kr__now_us() - t0, 10000);
  listres l = {0};
  ck_assert_int_eq(kr__cluster_list(b.c, 0, on_list, &l), KR_ECLOSED);
  /* Changes meanwhile are kept and written on return. */
  kr__tunnel *t43 = add_tunnel(&a, 43, "pod");
  add_tunnel(&b, 44, "pod");
  kr__registry_remove(a.reg, t43);
  add_tunnel(&a, 45, "pod");
  ck_assert_int_eq(a.resyncs + b.resyncs, 0);

  start_redis(g_port, NULL); /* empty: everything was lost */
  ck_assert(run_until(cond_up, all, 10000));
  ck_assert_msg(run_until(cond_resynced, all, 10000), "no resync");
  lookup_until(&b, 42, 1, &r, 3000);
  ck_assert_str_eq(r.cand[0].instance, "kas-a");
  lookup_until(&b, 45, 1, &r, 3000);
  lookup_until(&a, 44, 1, &r, 3000);
  ck_assert_int_eq(lookup(&b, 43, &r), 0);
  ck_assert_uint_eq(r.n, 0);
  node_free(&a);
  node_free(&b);
  teardown();
}
END_TEST

START_TEST(t_timeout) {
  setup();
  g_port = tr_free_port();
  pid_t pid = start_redis(g_port, NULL);
  node a, b;
  kr__cluster_config ca = {.url = redis_url(), .redis_timeout_ms = 300};
  node_start_cfg(&a, "kas-a", &ca);
  kr__cluster_config cb = {.url = redis_url(), .redis_timeout_ms = 300};
  node_start_cfg(&b, "kas-b", &cb);
  node *all[] = {&a, &b, NULL};
  wait_ready(all);
  add_tunnel(&a, 5, "pod");
  lres r;
  lookup_until(&b, 5, 1, &r, 2000);

  /* A server that stops answering: the lookup ends with KR_ETIMEDOUT. */
  kill(pid, SIGSTOP);
  kr_time_us t0 = kr__now_us();
  ck_assert_int_eq(lookup(&b, 5, &r), KR_ETIMEDOUT);
  long ms = (long)((kr__now_us() - t0) / 1000);
  ck_assert_msg(ms >= 250 && ms < 3000, "took %ld ms", ms);
  ck_assert(run_until(cond_down, all, 5000));
  kill(pid, SIGCONT);
  ck_assert(run_until(cond_up, all, 10000));
  lookup_until(&b, 5, 1, &r, 3000);
  node_free(&a);
  node_free(&b);
  teardown();
}
END_TEST

START_TEST(t_password) {
  setup();
  kr_log_set_handler(on_log, NULL);
  kr_log_set_level(KR_LOG_DEBUG);
  g_port = tr_free_port();
  start_redis(g_port, "s3cret:pw");
  node a, b;
  kr__cluster_config ca = {.url = redis_url(), .password = "s3cret:pw"};
  node_start_cfg(&a, "kas-a", &ca);
  char url[128];
  snprintf(url, sizeof(url), "redis://:s3cret%%3Apw@127.0.0.1:%d", g_port);
  kr__cluster_config cb = {.url = url};
  node_start_cfg(&b, "kas-b", &cb);
  node *all[] = {&a, &b, NULL};
  ck_assert(run_until(cond_up, all, 10000));
  add_tunnel(&a, 9, "pod");
  lres r;
  lookup_until(&b, 9, 1, &r, 2000);
  /* A wrong password never comes up. */
  node w;
  kr__cluster_config cw = {.url = redis_url(), .password = "wrong"};
  node_start_cfg(&w, "kas-w", &cw);
  run_for(500);
  ck_assert_int_eq(kr__cluster_is_up(w.c), 0);
  node_free(&w);
  node_free(&a);
  node_free(&b);
  kr_log_set_handler(NULL, NULL);
  ck_assert_msg(strstr(logbuf, "cluster_started"), "logs: %s", logbuf);
  ck_assert_msg(!strstr(logbuf, "s3cret") && !strstr(logbuf, "wrong"),
                "password logged: %s", logbuf);
  teardown();
}
END_TEST

START_TEST(t_not_here) {
  setup();
  g_port = tr_free_port();
  start_redis(g_port, NULL);
  node a, b;
  node_start(&a, "kas-a", NULL);
  node_start(&b, "kas-b", NULL);
  node *all[] = {&a, &b, NULL};
  wait_ready(all);
  kr__tunnel *t = add_tunnel(&a, 9, "pod");
  lres r;
  lookup_until(&b, 9, 1, &r, 2000);
  /* Held: not_here changes nothing. */
  kr__cluster_not_here(a.c, 9);
  run_for(100);
  ck_assert_int_eq(lookup(&b, 9, &r), 0);
  ck_assert_uint_eq(r.n, 1);
  /* The removal is lost (no presence callback): the entry is stale but
   * A is live, so it stays until A corrects itself. */
  kr__registry_set_presence_cb(a.reg, NULL, NULL);
  kr__registry_remove(a.reg, t);
  run_for(100);
  ck_assert_int_eq(lookup(&b, 9, &r), 0);
  ck_assert_uint_eq(r.n, 1);
  kr__cluster_not_here(a.c, 9);
  lookup_until(&b, 9, 0, &r, 2000);
  node_free(&a);
  node_free(&b);
  teardown();
}
END_TEST

START_TEST(t_free_inside) {
  setup();
  g_port = tr_free_port();
  pid_t pid = start_redis(g_port, NULL);
  node a, b, cc;
  node_start(&a, "kas-a", NULL);
  node_start(&b, "kas-b", NULL);
  node_start(&cc, "kas-c", NULL);
  node *all[] = {&a, &b, &cc, NULL};
  wait_ready(all);

  /* Inside a lookup callback, with more lookups and a listing pending:
   * they are dropped silently. */
  add_tunnel(&a, 1, "pod");
  lres r;
  lookup_until(&cc, 1, 1, &r, 2000);
  lres x[4];
  memset(x, 0, sizeof(x));
  x[0].free_node = &cc;
  kr__cluster_lookup_op *op;
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq(kr__cluster_lookup(cc.c, 1, on_lookup, &x[i], &op), 0);
  listres l = {0};
  ck_assert_int_eq(kr__cluster_list(cc.c, 0, on_list, &l), 0);
  ck_assert(run_until(cond_called, &x[0], 5000));
  ck_assert_ptr_null(cc.c);
  run_for(100);
  for (int i = 1; i < 4; i++)
    ck_assert_int_eq(x[i].calls, 0);
  ck_assert_int_eq(l.calls, 0);

  /* Inside a wake-up. */
  b.wakes = 0;
  b.free_on_wake = 1;
  add_tunnel(&a, 2, "pod");
  node *bb[] = {&b, NULL};
  ck_assert(run_until(woke, bb, 2000));
  ck_assert_ptr_null(b.c);

  /* Inside the resync after a restart. */
  a.free_on_resync = 1;
  tr_end_proc(pid);
  node *aa[] = {&a, NULL};
  ck_assert(run_until(cond_down, aa, 5000));
  start_redis(g_port, NULL);
  ck_assert(run_until(cond_resynced, aa, 10000));
  ck_assert_ptr_null(a.c);
  run_for(50);
  node_free(&a);
  node_free(&b);
  node_free(&cc);
  teardown();
}
END_TEST

/* ------------------------------------------------------ tls:// peer links */

/* What the stream B opened to C over the peer link saw. */
typedef struct peer_stream {
  int opened, open_err;
  kr_stream *s;
  int closed;
  uint32_t code;
  int64_t written;
} peer_stream;

static void ps_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                     void *ud) {
  (void)s, (void)md, (void)n, (void)fin, (void)ud;
}
static void ps_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  (void)p, (void)ud;
  kr_stream_consume(s, n);
}
static void ps_fin(kr_stream *s, void *ud) {
  (void)s, (void)ud;
}
static void ps_writable(kr_stream *s, void *ud) {
  (void)s, (void)ud;
}
static void ps_close(kr_stream *s, uint32_t code, const uint8_t *r, size_t rl,
                     void *ud) {
  (void)s, (void)r, (void)rl;
  peer_stream *ps = ud;
  ps->closed = 1;
  ps->code = code;
  ps->s = NULL;
}
static const kr__stream_handler ps_handler = {ps_reply, ps_data, ps_fin,
                                              ps_writable, ps_close};

/* Fills the stream's window and send queue: bytes in flight to C. */
static void ps_fill(peer_stream *ps) {
  static uint8_t buf[65536];
  memset(buf, 'x', sizeof(buf));
  for (int i = 0; i < 64 && ps->s; i++) {
    int64_t w = kr_stream_write(ps->s, buf, sizeof(buf));
    if (w <= 0)
      break;
    ps->written += w;
    if ((size_t)w < sizeof(buf))
      break;
  }
}

static void ps_opened(kr_stream *s, kas_conn *pc, int err, const char *why,
                      void *ud) {
  (void)pc, (void)why;
  peer_stream *ps = ud;
  ps->opened = 1;
  ps->open_err = err;
  ps->s = s;
  if (s)
    ps_fill(ps);
}

static int cond_ps_opened(void *arg) {
  return ((peer_stream *)arg)->opened;
}

typedef struct peer_end {
  peer_stream *ps;
  kr_kas *b;
  int drained;
} peer_end;

/* B's stream ended and B's link to C is gone. */
static int cond_link_gone(void *arg) {
  peer_end *e = arg;
  return e->ps->closed && kr__peers_count(e->b) == 0;
}

static int cond_no_links(void *arg) {
  return kr__peers_count(arg) == 0;
}

static void on_drained(kr_kas *k, void *ud) {
  (void)k;
  ((peer_end *)ud)->drained = 1;
}

static int cond_drained(void *arg) {
  return ((peer_end *)arg)->drained;
}

static const uint8_t peer_secret[32] = "a private secret of 32 bytes ok";

/* A kas with private_listen (NULL: none); it dials tls:// peers trusting
 * ca_file. */
static kr_kas *peer_kas(const char *name, const char *private_listen,
                        const char *cert, const char *key, const char *tokens) {
  kr_kas_options *o = NULL;
  ck_assert_int_eq(kr_kas_options_new(&o), 0);
  ck_assert_int_eq(kr_kas_options_set_name(o, name), 0);
  ck_assert_int_eq(kr_kas_options_set_agent_tokens_file(o, tokens), 0);
  ck_assert_int_eq(
      kr_kas_options_set_private_secret(o, peer_secret, sizeof(peer_secret)),
      0);
  ck_assert_int_eq(kr_kas_options_set_private_ca_file(o, cert), 0);
  ck_assert_int_eq(
      kr_kas_options_set_api_secret(o, peer_secret, sizeof(peer_secret)), 0);
  ck_assert_int_eq(kr_kas_options_set_handshake_timeout(o, 5000000), 0);
  if (private_listen) {
    ck_assert_int_eq(kr_kas_options_add_private_listen(o, private_listen), 0);
    ck_assert_int_eq(kr_kas_options_set_tls(o, cert, key), 0);
  }
  kr_kas *k = NULL;
  char err[256];
  int rc = kr_kas_new(&k, base, o, err, sizeof(err));
  kr_kas_options_free(o);
  ck_assert_msg(rc == 0, "kr_kas_new(%s): %s: %s", name, kr_err_name(rc), err);
  return k;
}

/* B opens a stream to agent 5 at C's tls:// URL; returns once it is open
 * (C's hop route waits for a tunnel that never comes, so the stream stays
 * open) with B's window to C filled. */
static void peer_open(kr_kas *b, const char *url, peer_stream *ps) {
  memset(ps, 0, sizeof(*ps));
  kr_md md[2] = {{(const uint8_t *)KR_MD_AGENT, strlen(KR_MD_AGENT),
                  (const uint8_t *)"5", 1},
                 {(const uint8_t *)KR_MD_SERVICE, strlen(KR_MD_SERVICE),
                  (const uint8_t *)"web", 3}};
  kr__peer_open *op = NULL;
  ck_assert_int_eq(kr__peer_open_start(b, url, md, 2, 0, &ps_handler, ps,
                                       ps_opened, ps, &op),
                   0);
  ck_assert_ptr_nonnull(op);
  ck_assert_msg(run_until(cond_ps_opened, ps, 10000), "peer open: no answer");
  ck_assert_msg(ps->s != NULL, "peer open failed: %s",
                kr_err_name(ps->open_err));
  ck_assert_int_gt(ps->written, 0);
}

START_TEST(t_peer_tls) {
  setup();
  kr_log_set_handler(on_log, NULL);
  const char *dir = tr_tmpdir();
  ck_assert_ptr_nonnull(dir);
  char cert[512], key[512], tokens[512], cmd[2048];
  snprintf(cert, sizeof(cert), "%s/peer-cert.pem", dir);
  snprintf(key, sizeof(key), "%s/peer-key.pem", dir);
  snprintf(tokens, sizeof(tokens), "%s/peer-tokens", dir);
  snprintf(cmd, sizeof(cmd),
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
           "-nodes -subj /CN=127.0.0.1 -days 1 -keyout '%s' -out '%s' "
           "2>/dev/null",
           key, cert);
  ck_assert_msg(system(cmd) == 0, "openssl could not make a certificate");
  FILE *f = fopen(tokens, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f, "1 %064d nobody\n", 0);
  fclose(f);

  kr_kas *b = peer_kas("kas-b", NULL, cert, key, tokens);
  peer_stream ps;
  peer_end e = {&ps, b, 0};
  char url[96];

  /* 1. C drains while B's bytes are in flight: GOAWAY, the hop route
   * ends, then the link closes with close_notify, which B reads (and
   * reports) from inside its TLS read path. */
  kr_kas *c = peer_kas("kas-c", "tls://127.0.0.1:0", cert, key, tokens);
  snprintf(url, sizeof(url), "tls://127.0.0.1:%d", kr_kas_private_port(c, 0));
  peer_open(b, url, &ps);
  ck_assert_uint_eq(kr__peers_count(b), 1);
  ps_fill(&ps);
  kr_kas_drain(c, 0, on_drained, &e);
  ck_assert_msg(run_until(cond_link_gone, &e, 10000),
                "B's link to the draining C: stream closed %d, links %zu",
                ps.closed, kr__peers_count(b));
  ck_assert_uint_ne(ps.code, KR_CODE_NO_ERROR);
  ck_assert_msg(run_until(cond_drained, &e, 10000), "C did not drain");
  kr_kas_free(c);

  /* 2. C is freed at once (its socket closes with B's bytes unread: a
   * reset) while B keeps writing. */
  c = peer_kas("kas-c", "tls://127.0.0.1:0", cert, key, tokens);
  snprintf(url, sizeof(url), "tls://127.0.0.1:%d", kr_kas_private_port(c, 0));
  peer_open(b, url, &ps);
  ck_assert_uint_eq(kr__peers_count(b), 1);
  kr_kas_free(c);
  ps_fill(&ps);
  ck_assert_msg(run_until(cond_link_gone, &e, 10000),
                "B's link to the freed C: stream closed %d, links %zu",
                ps.closed, kr__peers_count(b));
  ck_assert_uint_ne(ps.code, KR_CODE_NO_ERROR);

  /* B dials again cleanly (nothing listens there now: the open fails). */
  memset(&ps, 0, sizeof(ps));
  kr_md md = {(const uint8_t *)KR_MD_AGENT, strlen(KR_MD_AGENT),
              (const uint8_t *)"5", 1};
  kr__peer_open *op = NULL;
  ck_assert_int_eq(kr__peer_open_start(b, url, &md, 1, 1, &ps_handler, &ps,
                                       ps_opened, &ps, &op),
                   0);
  ck_assert(run_until(cond_ps_opened, &ps, 10000));
  ck_assert_ptr_null(ps.s);
  ck_assert_int_lt(ps.open_err, 0);
  ck_assert(run_until(cond_no_links, b, 10000));
  ck_assert_msg(strstr(logbuf, "event=peer_disconnected kas=kas-b") != NULL,
                "no peer_disconnected in the log:\n%s", logbuf);
  kr_kas_free(b);
  kr_log_set_handler(NULL, NULL);
  teardown(); /* event_base_free() runs pending finalizers */
}
END_TEST

/* ------------------------------------------------------------------ main */

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const char *only = getenv("CK_RUN_CASE");
  int need_server =
      !only || (strcmp(only, "config") != 0 && strcmp(only, "peer_tls") != 0);
  if (need_server && !tr_have_program("redis-server")) {
    fprintf(stderr, "SKIP: redis-server not found in PATH: these tests need "
                    "a real Redis (apt-get install redis-server)\n");
    return 77;
  }
  if (only && strcmp(only, "peer_tls") == 0 &&
      system("command -v openssl >/dev/null 2>&1") != 0) {
    fprintf(stderr, "SKIP: openssl not found in PATH: peer_tls makes its "
                    "certificate with it\n");
    return 77;
  }
  tr_on_failure(abort_case);
  atexit(kill_all);
  Suite *s = suite_create("cluster");
  struct {
    const char *name;
    const TTest *test;
  } cases[] = {
      {"config", t_config},     {"wake_lookup", t_wake_lookup},
      {"list", t_list},         {"crash", t_crash},
      {"shutdown", t_shutdown}, {"restart", t_restart},
      {"timeout", t_timeout},   {"password", t_password},
      {"not_here", t_not_here}, {"free_inside", t_free_inside},
      {"sweep", t_sweep},       {"flush", t_flush},
      {"conflict", t_conflict}, {"peer_tls", t_peer_tls},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    TCase *tc = tcase_create(cases[i].name);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, cases[i].test);
    suite_add_tcase(s, tc);
  }
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
