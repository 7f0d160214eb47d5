/* The presence schema (lib/core/presence*.c) end to end against a real
 * redis-server on a free loopback port, driven through hiredis's
 * synchronous API: the commands the core produces are sent as they are,
 * the replies fed back as plain elements. Proves that registration,
 * wake-ups, lookups, heartbeat expiry, lazy clean-up, the sweep, the
 * listing, clean shutdown, recovery from lost data and the
 * compare-and-delete behave as docs/PRESENCE.md says.
 *
 * Without redis-server in PATH the program exits 77 (skipped), saying so.
 * The server is started once, dies with the test (PR_SET_PDEATHSIG) and is
 * killed by pid at exit. Each test case uses its own key prefix.
 */
#include <check.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/presence.h"
#include "redis_helper.h"

static int g_port;

/* ------------------------------------------------------------- server */

/* Ends the server and removes its files (only in the process that started
 * it: Check runs each test in a forked child, which runs atexit handlers
 * too). */
static void stop_redis(void) {
  tr_kill_all();
  tr_remove_tmpdir();
}

/* Starts redis-server on a free port and waits until it answers. 0 or -1
 * (the reason is on stderr). */
static int start_redis(void) {
  g_port = tr_free_port();
  if (g_port < 0)
    return -1;
  return tr_redis_start(g_port, NULL) > 0 ? 0 : -1;
}

/* ------------------------------------------------------------- driving */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static redisContext *conn(void) {
  redisContext *c = redisConnect("127.0.0.1", g_port);
  ck_assert_ptr_nonnull(c);
  ck_assert_msg(c->err == 0, "connect: %s", c->errstr);
  struct timeval tv = {10, 0};
  redisSetTimeout(c, tv);
  return c;
}

typedef struct node {
  const char *name;
  kr__presence *p;
  redisContext *c;
  kr__presence_cmds cmds;
} node;

static void node_init(node *n, const char *prefix, const char *name,
                      uint64_t boot, uint64_t hb_period, uint64_t hb_ttl) {
  kr__presence_config cf;
  kr__presence_config_defaults(&cf);
  char url[64];
  snprintf(url, sizeof url, "tls://%s.test:8155", name);
  cf.prefix = prefix;
  cf.instance = name;
  cf.boot = boot;
  cf.url = url;
  cf.heartbeat_period_ms = hb_period;
  cf.heartbeat_ttl_ms = hb_ttl;
  cf.scan_count = 50;
  n->name = name;
  ck_assert_int_eq(kr__presence_new(NULL, &cf, &n->p), 0);
  n->c = conn();
  kr__presence_cmds_init(&n->cmds, NULL);
  kr__presence_set_connected(n->p, 1, now_ms());
}

static void node_free(node *n) {
  kr__presence_cmds_free(&n->cmds);
  kr__presence_free(n->p);
  redisFree(n->c);
}

static kr__pstr g_items[200000];

/* Flattens a reply as presence.h says (SCAN: cursor, then the keys). */
static size_t flatten(const redisReply *r) {
  size_t n = 0;
  static char ints[64][24];
  switch (r->type) {
  case REDIS_REPLY_NIL:
    g_items[n++] = (kr__pstr){NULL, 0};
    break;
  case REDIS_REPLY_INTEGER:
    snprintf(ints[0], sizeof ints[0], "%lld", r->integer);
    g_items[n++] = (kr__pstr){ints[0], strlen(ints[0])};
    break;
  case REDIS_REPLY_ARRAY:
    for (size_t i = 0; i < r->elements; i++) {
      const redisReply *e = r->element[i];
      if (e->type == REDIS_REPLY_ARRAY) {
        for (size_t k = 0; k < e->elements; k++)
          g_items[n++] = (kr__pstr){e->element[k]->str, e->element[k]->len};
      } else if (e->type == REDIS_REPLY_NIL) {
        g_items[n++] = (kr__pstr){NULL, 0};
      } else {
        g_items[n++] = (kr__pstr){e->str, e->len};
      }
    }
    break;
  default:
    g_items[n++] = (kr__pstr){r->str, r->len};
    break;
  }
  return n;
}

/* Sends n->cmds pipelined, routes every reply. Returns the last job feed
 * result (or -100 when there was none) and the heartbeat result in *hb. */
static int exec(node *n, kr__presence_job *j, int *hb) {
  const kr__presence_cmds *c = &n->cmds;
  for (size_t i = 0; i < c->n; i++) {
    kr__presence_cmd k;
    ck_assert_int_eq(kr__presence_cmds_get(c, i, &k), 0);
    ck_assert_int_eq(redisAppendCommandArgv(n->c, k.argc, k.argv, k.argvlen),
                     REDIS_OK);
  }
  int job_rc = -100;
  for (size_t i = 0; i < c->n; i++) {
    kr__presence_cmd k;
    kr__presence_cmds_get(c, i, &k);
    redisReply *r = NULL;
    ck_assert_int_eq(redisGetReply(n->c, (void **)&r), REDIS_OK);
    ck_assert_msg(r->type != REDIS_REPLY_ERROR, "%s %s: %s", n->name, k.argv[0],
                  r->str);
    size_t m = flatten(r);
    if (k.op == KR__PRESENCE_OP_HEARTBEAT) {
      int rc = kr__presence_heartbeat_reply(n->p, &g_items[0], now_ms());
      if (hb)
        *hb = rc;
    } else if (k.op == KR__PRESENCE_OP_JOB) {
      ck_assert_ptr_nonnull(j);
      job_rc = kr__presence_job_feed(j, k.tag, g_items, m);
      ck_assert_int_ge(job_rc, 0);
    }
    freeReplyObject(r);
  }
  kr__presence_cmds_clear(&n->cmds);
  return job_rc;
}

static int tick_at(node *n, uint64_t now) {
  int hb = 0;
  ck_assert_int_ge(kr__presence_tick(n->p, now, &n->cmds, NULL), 0);
  exec(n, NULL, &hb);
  return hb;
}

static int tick(node *n) {
  return tick_at(n, now_ms());
}

static void set_agent(node *n, int64_t id, uint32_t conns) {
  kr__presence_replica r;
  snprintf(r.name, sizeof r.name, "%s-pod", n->name);
  r.conns = conns;
  r.since_ms = now_ms() - 1000;
  ck_assert_int_eq(
      kr__presence_agent_set(n->p, id, conns, &r, 1, now_ms(), &n->cmds), 0);
  exec(n, NULL, NULL);
}

/* Runs a job to the end on n's connection. */
static void run_job(node *n, kr__presence_job *j) {
  for (int i = 0; i < 100000; i++) {
    int rc = kr__presence_job_step(j, now_ms(), &n->cmds);
    ck_assert_int_ge(rc, 0);
    int fed = exec(n, j, NULL);
    if (rc == KR__PRESENCE_JOB_DONE)
      return;
    ck_assert_int_eq(fed, 1);
  }
  ck_abort_msg("job did not finish");
}

static size_t lookup(node *n, int64_t id, kr__presence_candidate *out,
                     size_t cap) {
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_lookup_new(n->p, id, &j), 0);
  run_job(n, j);
  size_t k = kr__presence_lookup_candidates(j, (uint64_t)rand(), out, cap);
  kr__presence_job_free(j);
  return k;
}

static long long rint_cmd(redisContext *c, const char *fmt, const char *a,
                          const char *b) {
  redisReply *r = redisCommand(c, fmt, a, b);
  ck_assert_ptr_nonnull(r);
  ck_assert_int_eq(r->type, REDIS_REPLY_INTEGER);
  long long v = r->integer;
  freeReplyObject(r);
  return v;
}

/* ------------------------------------------------------------------ tests */

START_TEST(register_wake_lookup_list) {
  node a, b, c;
  node_init(&a, "t1:", "kas-a", 0xa1, 2000, 60000);
  node_init(&b, "t1:", "kas-b", 0xb1, 2000, 60000);
  node_init(&c, "t1:", "kas-c", 0xc1, 2000, 60000);
  ck_assert_int_eq(tick(&a), 0);
  ck_assert_int_eq(tick(&b), 0);
  ck_assert_int_eq(tick(&c), 0);

  /* b listens for wake-ups on its own connection. */
  redisContext *sub = conn();
  kr__presence_cmds sc;
  kr__presence_cmds_init(&sc, NULL);
  ck_assert_int_eq(kr__presence_subscribe(b.p, &sc), 0);
  kr__presence_cmd k;
  kr__presence_cmds_get(&sc, 0, &k);
  redisReply *r = redisCommandArgv(sub, k.argc, k.argv, k.argvlen);
  ck_assert_ptr_nonnull(r);
  kr__presence_wake w;
  ck_assert_int_eq(kr__presence_wake_decode(b.p, g_items, flatten(r), &w),
                   KR__PRESENCE_IGNORE);
  freeReplyObject(r);

  /* Nobody holds agent 42 yet. */
  kr__presence_candidate cand[4];
  ck_assert_uint_eq(lookup(&b, 42, cand, 4), 0);

  /* a registers it: b is woken by the message alone. */
  set_agent(&a, 42, 2);
  ck_assert_int_eq(redisGetReply(sub, (void **)&r), REDIS_OK);
  ck_assert_int_eq(kr__presence_wake_decode(b.p, g_items, flatten(r), &w), 0);
  freeReplyObject(r);
  ck_assert_int_eq(w.agent_id, 42);
  ck_assert_str_eq(w.instance, "kas-a");
  ck_assert_str_eq(w.url, "tls://kas-a.test:8155");

  ck_assert_uint_eq(lookup(&b, 42, cand, 4), 1);
  ck_assert_str_eq(cand[0].instance, "kas-a");
  ck_assert_str_eq(cand[0].url, "tls://kas-a.test:8155");
  ck_assert_uint_eq(cand[0].conns, 2);
  /* The key expires with the entries unless refreshed. */
  long long pttl = rint_cmd(b.c, "PTTL %s", "t1:agent:42", NULL);
  ck_assert_int_gt(pttl, 300000);
  ck_assert_int_le(pttl, 360000);

  /* c registers it too; a's own lookup sees only c. */
  set_agent(&c, 42, 1);
  ck_assert_int_eq(redisGetReply(sub, (void **)&r), REDIS_OK);
  ck_assert_int_eq(kr__presence_wake_decode(b.p, g_items, flatten(r), &w), 0);
  freeReplyObject(r);
  ck_assert_str_eq(w.instance, "kas-c");
  ck_assert_uint_eq(lookup(&b, 42, cand, 4), 2);
  ck_assert_uint_eq(lookup(&a, 42, cand, 4), 1);
  ck_assert_str_eq(cand[0].instance, "kas-c");

  /* b's listing: agent 42 with both instances, 3 connections. */
  set_agent(&b, 7, 1);
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_list_new(b.p, 0, 0, &j), 0);
  run_job(&b, j);
  ck_assert_uint_eq(kr__presence_list_count(j), 2);
  const kr__presence_listed_agent *la = kr__presence_list_agent(j, 0);
  ck_assert_int_eq(la->agent_id, 7);
  la = kr__presence_list_agent(j, 1);
  ck_assert_int_eq(la->agent_id, 42);
  ck_assert_uint_eq(la->conns, 3);
  ck_assert_uint_eq(la->ninstances, 2);
  ck_assert_str_eq(la->instances[0].instance, "kas-a");
  ck_assert_str_eq(la->instances[1].instance, "kas-c");
  ck_assert_uint_eq(la->nreplicas, 2);
  ck_assert_str_eq(la->replicas[0].name, "kas-a-pod");
  char *json = NULL;
  ck_assert_int_eq(kr__presence_list_json(j, &json, NULL), 0);
  ck_assert_ptr_nonnull(strstr(json, "\"id\":42,\"connections\":3"));
  kr__presence_json_free(b.p, json);
  kr__presence_job_free(j);

  /* a's last tunnel goes: its field goes at once. */
  ck_assert_int_eq(kr__presence_agent_gone(a.p, 42, &a.cmds), 0);
  exec(&a, NULL, NULL);
  ck_assert_int_eq(rint_cmd(b.c, "HEXISTS %s %s", "t1:agent:42", "kas-a"), 0);
  ck_assert_uint_eq(lookup(&b, 42, cand, 4), 1);

  kr__presence_cmds_free(&sc);
  redisFree(sub);
  node_free(&a);
  node_free(&b);
  node_free(&c);
}
END_TEST

START_TEST(heartbeat_expiry_cleanup_sweep) {
  node a, b, c;
  node_init(&a, "t2:", "kas-a", 0xa2, 2000, 60000);
  node_init(&b, "t2:", "kas-b", 0xb2, 2000, 60000);
  /* c's heartbeat lives 1 s: it will "crash" by no longer ticking. */
  node_init(&c, "t2:", "kas-c", 0xc2, 300, 1000);
  tick(&a);
  tick(&b);
  set_agent(&a, 42, 1);
  set_agent(&c, 43, 1);
  for (int64_t id = 100; id < 160; id++)
    set_agent(&c, id, 1);
  set_agent(&c, 42, 1);
  tick(&c);
  kr__presence_candidate cand[4];
  ck_assert_uint_eq(lookup(&b, 42, cand, 4), 2);

  /* Wait for Redis to expire c's heartbeat: the keyspace event, not a
   * timer. */
  redisContext *ev = conn();
  redisReply *r = redisCommand(ev, "CONFIG SET notify-keyspace-events Ex");
  ck_assert_ptr_nonnull(r);
  freeReplyObject(r);
  r = redisCommand(ev, "SUBSCRIBE __keyevent@0__:expired");
  ck_assert_ptr_nonnull(r);
  freeReplyObject(r);
  uint64_t t0 = now_ms();
  for (;;) {
    ck_assert_int_eq(redisGetReply(ev, (void **)&r), REDIS_OK);
    int hit = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
              strcmp(r->element[2]->str, "t2:instance:kas-c") == 0;
    freeReplyObject(r);
    if (hit)
      break;
  }
  ck_assert_uint_lt(now_ms() - t0, 5000);
  redisFree(ev);

  /* Dead within the heartbeat TTL: b's lookup skips c and removes its
   * field lazily. */
  ck_assert_uint_eq(lookup(&b, 42, cand, 4), 1);
  ck_assert_str_eq(cand[0].instance, "kas-a");
  ck_assert_int_eq(rint_cmd(b.c, "HEXISTS %s %s", "t2:agent:42", "kas-c"), 0);
  ck_assert_int_eq(rint_cmd(b.c, "HEXISTS %s %s", "t2:agent:42", "kas-a"), 1);
  /* Nobody looks up 43 and 100..159: the sweep removes them (the hashes
   * go with their last field). */
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t2:agent:43", NULL), 1);
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_sweep_new(b.p, &j), 0);
  run_job(&b, j);
  kr__presence_job_stats st;
  kr__presence_job_get_stats(j, &st);
  kr__presence_job_free(j);
  ck_assert_int_eq(st.lock_held, 1);
  ck_assert_uint_ge(st.scan_steps, 2);
  ck_assert_uint_eq(st.keys, 62);
  ck_assert_uint_eq(st.stale, 61);
  ck_assert_uint_eq(st.live, 1);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t2:agent:43", NULL), 0);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t2:agent:120", NULL), 0);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t2:agent:42", NULL), 1);
  /* One sweeper per period: a does not get the lock now. */
  ck_assert_int_eq(kr__presence_sweep_new(a.p, &j), 0);
  run_job(&a, j);
  kr__presence_job_get_stats(j, &st);
  kr__presence_job_free(j);
  ck_assert_int_eq(st.lock_held, 0);
  ck_assert_uint_eq(st.keys, 0);

  /* c comes back on a new connection: everything it holds is rewritten
   * (and announced) by its next tick. */
  kr__presence_set_connected(c.p, 0, now_ms());
  kr__presence_set_connected(c.p, 1, now_ms());
  for (int i = 0; i < 3; i++)
    tick_at(&c, now_ms() + (uint64_t)i * 10);
  ck_assert_uint_eq(lookup(&b, 43, cand, 4), 1);
  ck_assert_str_eq(cand[0].instance, "kas-c");
  node_free(&a);
  node_free(&b);
  node_free(&c);
}
END_TEST

START_TEST(listing_shutdown_lost_data) {
  node a, b;
  node_init(&a, "t3:", "kas-a", 0xa3, 2000, 60000);
  node_init(&b, "t3:", "kas-b", 0xb3, 2000, 60000);
  tick(&a);
  tick(&b);
  for (int64_t id = 1; id <= 300; id++)
    set_agent(&a, id, 1 + (uint32_t)(id % 3));
  for (int64_t id = 250; id <= 320; id++)
    set_agent(&b, id, 1);
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_list_new(b.p, 0, 0, &j), 0);
  run_job(&b, j);
  ck_assert_uint_eq(kr__presence_list_count(j), 320);
  ck_assert_int_eq(kr__presence_list_truncated(j), 0);
  const kr__presence_listed_agent *la = kr__presence_list_agent(j, 299);
  ck_assert_int_eq(la->agent_id, 300);
  ck_assert_uint_eq(la->ninstances, 2);
  ck_assert_uint_eq(la->conns, 1 + 300 % 3 + 1);
  kr__presence_job_free(j);
  ck_assert_int_eq(kr__presence_list_new(b.p, 100, 0, &j), 0);
  run_job(&b, j);
  ck_assert_uint_eq(kr__presence_list_count(j), 100);
  ck_assert_int_eq(kr__presence_list_truncated(j), 1);
  kr__presence_job_free(j);

  /* Clean shutdown of a: only b's entries remain, a's heartbeat is gone. */
  int rc;
  while ((rc = kr__presence_shutdown(a.p, &a.cmds)) > 0)
    exec(&a, NULL, NULL);
  ck_assert_int_eq(rc, 0);
  exec(&a, NULL, NULL);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t3:instance:kas-a", NULL), 0);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t3:agent:1", NULL), 0);
  ck_assert_int_eq(rint_cmd(b.c, "HEXISTS %s %s", "t3:agent:300", "kas-a"), 0);
  ck_assert_int_eq(rint_cmd(b.c, "HEXISTS %s %s", "t3:agent:300", "kas-b"), 1);

  /* Redis loses b's data: the next heartbeat reply says so and the
   * following ticks rewrite everything. */
  ck_assert_int_eq(tick_at(&b, now_ms() + 2000), 0);
  redisReply *r = redisCommand(b.c, "DEL t3:instance:kas-b t3:agent:250");
  freeReplyObject(r);
  ck_assert_int_eq(tick_at(&b, now_ms() + 4000), KR__PRESENCE_LOST);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t3:agent:250", NULL), 0);
  tick_at(&b, now_ms() + 4000);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t3:agent:250", NULL), 1);
  ck_assert_int_eq(rint_cmd(b.c, "EXISTS %s", "t3:instance:kas-b", NULL), 1);
  node_free(&a);
  node_free(&b);
}
END_TEST

START_TEST(compare_and_delete) {
  node b, c;
  node_init(&b, "t4:", "kas-b", 0xb4, 2000, 60000);
  node_init(&c, "t4:", "kas-c", 0xc4, 2000, 60000);
  tick(&b);
  tick(&c);
  set_agent(&c, 50, 1);
  /* c looks dead (its heartbeat is gone) while b reads agent 50. */
  redisReply *r = redisCommand(b.c, "DEL t4:instance:kas-c");
  freeReplyObject(r);
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_lookup_new(b.p, 50, &j), 0);
  ck_assert_int_eq(kr__presence_job_step(j, now_ms(), &b.cmds),
                   KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(exec(&b, j, NULL), 1); /* HGETALL read */
  /* Meanwhile c rewrites its entry (a changed count). */
  kr__presence_replica rep = {"kas-c-pod", 2, 0};
  ck_assert_int_eq(
      kr__presence_agent_set(c.p, 50, 2, &rep, 1, now_ms(), &c.cmds), 0);
  tick_at(&c, now_ms() + 1000);
  r = redisCommand(b.c, "DEL t4:instance:kas-c");
  freeReplyObject(r);
  ck_assert_int_eq(kr__presence_job_step(j, now_ms(), &b.cmds),
                   KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(exec(&b, j, NULL), 1); /* MGET: c dead */
  ck_assert_int_eq(kr__presence_job_step(j, now_ms(), &b.cmds),
                   KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(b.cmds.n, 1); /* the compare-and-delete */
  exec(&b, j, NULL);
  kr__presence_job_free(j);
  /* The newer value survived. */
  ck_assert_int_eq(rint_cmd(b.c, "HEXISTS %s %s", "t4:agent:50", "kas-c"), 1);
  /* Read again (still no heartbeat): now it goes. */
  kr__presence_candidate cand[2];
  ck_assert_uint_eq(lookup(&b, 50, cand, 2), 0);
  ck_assert_int_eq(rint_cmd(b.c, "HEXISTS %s %s", "t4:agent:50", "kas-c"), 0);
  node_free(&b);
  node_free(&c);
}
END_TEST

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  if (!tr_have_program("redis-server")) {
    fprintf(stderr, "SKIP: redis-server not found in PATH: the presence "
                    "schema test needs a real Redis (apt-get install "
                    "redis-server)\n");
    return 77;
  }
  if (start_redis() != 0) {
    stop_redis();
    return 1;
  }
  atexit(stop_redis);
  srand(1);
  Suite *s = suite_create("presence_redis");
  TCase *tc = tcase_create("schema");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, register_wake_lookup_list);
  tcase_add_test(tc, heartbeat_expiry_cleanup_sweep);
  tcase_add_test(tc, listing_shutdown_lost_data);
  tcase_add_test(tc, compare_and_delete);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
