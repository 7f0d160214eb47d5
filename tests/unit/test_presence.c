/* Unit tests: cluster presence over Redis without Redis
 * (lib/core/presence.c, presence_job.c): command encoding byte for byte,
 * the instance's write schedule, decoders on valid, stale, expired,
 * malformed and oversized input, lookup / sweep / listing jobs, candidate
 * order, allocation failures. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/kasroute.h>

#include "core/presence.h"
#include "core/registry.h"
#include "pair.h"

#define BOOT 0x1122334455667788u
#define BOOT_HEX "1122334455667788"
#define URL "tls://10.0.0.1:8155"
#define HB_A "{\"v\":1,\"boot\":\"" BOOT_HEX "\",\"url\":\"" URL "\"}"

static kr__pstr S(const char *s) {
  kr__pstr x = {s, strlen(s)};
  return x;
}

static const kr__pstr NIL = {NULL, 0};

static void config(kr__presence_config *c) {
  kr__presence_config_defaults(c);
  c->prefix = "t:";
  c->instance = "kas-a";
  c->boot = BOOT;
  c->url = URL;
}

static kr__presence *mk(void) {
  kr__presence_config c;
  config(&c);
  kr__presence *p = NULL;
  ck_assert_int_eq(kr__presence_new(NULL, &c, &p), 0);
  ck_assert_ptr_nonnull(p);
  return p;
}

/* Checks command i: op, then its arguments (NULL-terminated list). */
static void expect_cmd(const kr__presence_cmds *c, size_t i, kr__presence_op op,
                       ...) {
  kr__presence_cmd k;
  ck_assert_msg(kr__presence_cmds_get(c, i, &k) == 0, "no command %zu", i);
  ck_assert_int_eq(k.op, op);
  va_list ap;
  va_start(ap, op);
  int a = 0;
  for (const char *s; (s = va_arg(ap, const char *)) != NULL; a++) {
    ck_assert_msg(a < k.argc, "command %zu has %d args, want more", i, k.argc);
    ck_assert_msg(k.argvlen[a] == strlen(s) &&
                      memcmp(k.argv[a], s, k.argvlen[a]) == 0,
                  "command %zu arg %d: got '%.*s' want '%s'", i, a,
                  (int)k.argvlen[a], k.argv[a], s);
    ck_assert_int_eq(k.argv[a][k.argvlen[a]], '\0');
  }
  va_end(ap);
  ck_assert_msg(a == k.argc, "command %zu has %d args, want %d", i, k.argc, a);
}

/* Argument a of command i as a NUL-terminated string. */
static const char *arg(const kr__presence_cmds *c, size_t i, int a) {
  kr__presence_cmd k;
  ck_assert_int_eq(kr__presence_cmds_get(c, i, &k), 0);
  ck_assert_int_lt(a, k.argc);
  return k.argv[a];
}

static const char *cmd0(const kr__presence_cmds *c, size_t i) {
  return arg(c, i, 0);
}

/* An entry value as the encoder writes it (into a rotating buffer). */
static const char *entry(uint64_t boot, uint64_t exp, uint64_t since,
                         uint32_t conns) {
  static char bufs[16][KR__PRESENCE_ENTRY_MAX + 1];
  static int k;
  char *b = bufs[k++ % 16];
  kr__presence_entry e;
  memset(&e, 0, sizeof e);
  e.boot = boot;
  e.exp_ms = exp;
  e.since_ms = since;
  e.conns = conns;
  e.nreplicas = 1;
  snprintf(e.replicas[0].name, sizeof e.replicas[0].name, "pod-%u", conns);
  e.replicas[0].conns = conns;
  e.replicas[0].since_ms = since;
  int n = kr__presence_entry_encode(&e, b, KR__PRESENCE_ENTRY_MAX);
  ck_assert_int_gt(n, 0);
  b[n] = '\0';
  return b;
}

static const char *hb(uint64_t boot, const char *url) {
  static char bufs[8][256];
  static int k;
  char *b = bufs[k++ % 8];
  snprintf(b, 256, "{\"v\":1,\"boot\":\"%016llx\",\"url\":\"%s\"}",
           (unsigned long long)boot, url);
  return b;
}

/* ---------------------------------------------------------- configuration */

START_TEST(config_validation) {
  kr__presence_config c;
  kr__presence *p = (kr__presence *)1;
  ck_assert_int_eq(kr__presence_new(NULL, NULL, &p), KR_EINVAL);
  ck_assert_ptr_null(p);
  config(&c);
  ck_assert_int_eq(kr__presence_new(NULL, &c, NULL), KR_EINVAL);

#define BAD(stmt)                                                              \
  do {                                                                         \
    config(&c);                                                                \
    stmt;                                                                      \
    p = (kr__presence *)1;                                                     \
    ck_assert_int_eq(kr__presence_new(NULL, &c, &p), KR_ECONFIG);              \
    ck_assert_ptr_null(p);                                                     \
  } while (0)
  BAD(c.instance = NULL);
  BAD(c.instance = "");
  BAD(c.instance = "kas a");
  BAD(c.url = NULL);
  BAD(c.url = "tls://x\n");
  BAD(c.boot = 0);
  BAD(c.prefix = "with space:");
  BAD(c.heartbeat_ttl_ms = c.heartbeat_period_ms);
  BAD(c.entry_ttl_ms = c.refresh_period_ms);
  BAD(c.heartbeat_period_ms = 0);
  BAD(c.sweep_period_ms = 0);
  BAD(c.batch_agents = 0);
  BAD(c.scan_count = 0);
  BAD(c.scan_count = KR__PRESENCE_SCAN_COUNT_MAX + 1);
  BAD(c.max_agents = 0);
  BAD(c.refresh_period_ms = UINT64_MAX);
  char big[KR__PRESENCE_URL_MAX + 2];
  memset(big, 'u', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  BAD(c.url = big);
  big[KR__PRESENCE_INSTANCE_MAX + 1] = '\0';
  BAD(c.instance = big);
  big[KR__PRESENCE_PREFIX_MAX + 1] = '\0';
  BAD(c.prefix = big);
#undef BAD

  /* Limits themselves are fine; an empty prefix too; NULL is the default. */
  config(&c);
  big[KR__PRESENCE_PREFIX_MAX] = '\0';
  c.prefix = big;
  ck_assert_int_eq(kr__presence_new(NULL, &c, &p), 0);
  kr__presence_free(p);
  c.prefix = "";
  ck_assert_int_eq(kr__presence_new(NULL, &c, &p), 0);
  kr__presence_free(p);
  c.prefix = NULL;
  memset(big, 'u', sizeof big - 1);
  big[KR__PRESENCE_URL_MAX] = '\0';
  c.url = big;
  ck_assert_int_eq(kr__presence_new(NULL, &c, &p), 0);
  ck_assert_str_eq(kr__presence_instance(p), "kas-a");
  ck_assert_str_eq(kr__presence_url(p), big);
  kr__presence_cmds cmds;
  kr__presence_cmds_init(&cmds, NULL);
  ck_assert_int_eq(kr__presence_subscribe(p, &cmds), 0);
  expect_cmd(&cmds, 0, KR__PRESENCE_OP_SUBSCRIBE, "SUBSCRIBE", "kasroute:wake",
             NULL);
  kr__presence_cmds_free(&cmds);
  kr__presence_free(p);
  kr__presence_free(NULL);
}
END_TEST

/* ---------------------------------------------------------------- writes */

START_TEST(register_writes_and_announces) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 1000);

  kr__presence_replica r = {"pod-a", 2, 900};
  ck_assert_int_eq(kr__presence_agent_set(p, 42, 2, &r, 1, 1000, &c), 0);
  ck_assert_uint_eq(c.n, 3);
  expect_cmd(&c, 0, KR__PRESENCE_OP_WRITE, "HSET", "t:agent:42", "kas-a",
             "{\"v\":1,\"boot\":\"" BOOT_HEX "\",\"exp\":361000,\"since\":900,"
             "\"conns\":2,\"replicas\":[{\"name\":\"pod-a\",\"conns\":2,"
             "\"since\":900}]}",
             NULL);
  expect_cmd(&c, 1, KR__PRESENCE_OP_WRITE, "PEXPIRE", "t:agent:42", "360000",
             NULL);
  expect_cmd(&c, 2, KR__PRESENCE_OP_WRITE, "PUBLISH", "t:wake",
             "{\"v\":1,\"agent\":42,\"instance\":\"kas-a\",\"boot\":\"" BOOT_HEX
             "\",\"url\":\"" URL "\"}",
             NULL);
  ck_assert_int_eq(kr__presence_holds(p, 42), 1);
  ck_assert_int_eq(kr__presence_holds(p, 43), 0);
  ck_assert_uint_eq(kr__presence_agent_count(p), 1);

  /* The same state again: nothing to write. */
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_agent_set(p, 42, 2, &r, 1, 1500, &c), 0);
  ck_assert_uint_eq(c.n, 0);

  /* The first tick: heartbeat only (the agent was just written). */
  uint64_t next = 0;
  ck_assert_int_eq(kr__presence_tick(p, 1000, &c, &next), 0);
  ck_assert_uint_eq(c.n, 1);
  expect_cmd(&c, 0, KR__PRESENCE_OP_HEARTBEAT, "SET", "t:instance:kas-a", HB_A,
             "PX", "6000", "GET", NULL);
  ck_assert_uint_eq(next, 3000);
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_tick(p, 2999, &c, &next), 0);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_uint_eq(next, 3000);

  /* A changed count is written after dirty_delay, without a wake-up. */
  r.conns = 3;
  ck_assert_int_eq(kr__presence_agent_set(p, 42, 3, &r, 1, 2000, &c), 0);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_int_eq(kr__presence_tick(p, 2500, &c, &next), 0);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_uint_eq(next, 3000);
  ck_assert_int_eq(kr__presence_tick(p, 3000, &c, &next), 0);
  ck_assert_uint_eq(c.n, 3);
  ck_assert_str_eq(cmd0(&c, 0), "SET");
  expect_cmd(&c, 1, KR__PRESENCE_OP_WRITE, "HSET", "t:agent:42", "kas-a",
             "{\"v\":1,\"boot\":\"" BOOT_HEX "\",\"exp\":363000,\"since\":900,"
             "\"conns\":3,\"replicas\":[{\"name\":\"pod-a\",\"conns\":3,"
             "\"since\":900}]}",
             NULL);
  ck_assert_str_eq(cmd0(&c, 2), "PEXPIRE");
  ck_assert_uint_eq(next, 5000);

  /* Refresh: due refresh_period after the last write. */
  uint64_t t = 5000;
  for (; t < 153000; t += 2000) {
    kr__presence_cmds_clear(&c);
    ck_assert_int_eq(
        kr__presence_tick(p, t, &c, NULL) & ~KR__PRESENCE_TICK_SWEEP, 0);
    ck_assert_uint_eq(c.n, 1); /* heartbeat */
  }
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_tick(p, 153000, &c, NULL), 0);
  ck_assert_uint_eq(c.n, 3);
  ck_assert_str_eq(cmd0(&c, 1), "HSET");
  ck_assert_str_eq(cmd0(&c, 2), "PEXPIRE");

  /* Gone: HDEL at once. Not held (a stale entry a peer routed by): HDEL. */
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_agent_gone(p, 42, &c), 0);
  ck_assert_int_eq(kr__presence_agent_gone(p, 7, &c), 0);
  ck_assert_uint_eq(c.n, 2);
  expect_cmd(&c, 0, KR__PRESENCE_OP_WRITE, "HDEL", "t:agent:42", "kas-a", NULL);
  expect_cmd(&c, 1, KR__PRESENCE_OP_WRITE, "HDEL", "t:agent:7", "kas-a", NULL);
  ck_assert_int_eq(kr__presence_holds(p, 42), 0);
  ck_assert_uint_eq(kr__presence_agent_count(p), 0);

  /* Bad arguments. */
  ck_assert_int_eq(kr__presence_agent_set(p, 0, 1, NULL, 0, 1, &c), KR_EINVAL);
  ck_assert_int_eq(kr__presence_agent_set(p, 1, 0, NULL, 0, 1, &c), KR_EINVAL);
  ck_assert_int_eq(kr__presence_agent_set(p, 1, 1, NULL, 1, 1, &c), KR_EINVAL);
  ck_assert_int_eq(kr__presence_agent_set(p, 1, 1, NULL, 0, 1, NULL),
                   KR_EINVAL);
  ck_assert_int_eq(
      kr__presence_agent_set(p, 1, KR__PRESENCE_MAX_CONNS + 1, NULL, 0, 1, &c),
      KR_EINVAL);
  ck_assert_int_eq(kr__presence_agent_gone(p, -1, &c), KR_EINVAL);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(replica_names_sanitised_and_capped) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 0);
  kr__presence_replica r[KR__PRESENCE_MAX_REPLICAS + 3];
  memset(r, 0, sizeof r);
  for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
    snprintf(r[i].name, sizeof r[i].name, "r%zu", i);
    r[i].conns = 1;
    r[i].since_ms = 100 + i;
  }
  strcpy(r[0].name, "a b\"c");
  r[1].name[0] = '\0';
  r[2].conns = 0;
  ck_assert_int_eq(kr__presence_agent_set(p, 5, 19, r, 19, 1000, &c), 0);
  kr__presence_entry e;
  const char *v = arg(&c, 0, 3);
  ck_assert_int_eq(kr__presence_entry_decode(v, strlen(v), &e), 0);
  ck_assert_uint_eq(e.nreplicas, KR__PRESENCE_MAX_REPLICAS);
  ck_assert_uint_eq(e.conns, 19);
  ck_assert_str_eq(e.replicas[0].name, "a_b\"c");
  ck_assert_str_eq(e.replicas[1].name, "_");
  ck_assert_uint_eq(e.replicas[2].conns, 1);
  ck_assert_uint_eq(e.since_ms, 100);
  ck_assert_uint_eq(e.exp_ms, 361000);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(refresh_in_batches) {
  kr__presence_config cf;
  config(&cf);
  cf.batch_agents = 1000;
  kr__presence *p = NULL;
  ck_assert_int_eq(kr__presence_new(NULL, &cf, &p), 0);
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 0);
  for (int64_t id = 1; id <= 2500; id++) {
    ck_assert_int_eq(kr__presence_agent_set(p, id, 1, NULL, 0, 0, &c), 0);
    kr__presence_cmds_clear(&c);
  }
  uint64_t now = 150000, next;
  int batches = 0;
  size_t writes = 0;
  for (;;) {
    kr__presence_cmds_clear(&c);
    ck_assert_int_ge(kr__presence_tick(p, now, &c, &next), 0);
    size_t hset = 0;
    for (size_t i = 0; i < c.n; i++)
      hset += strcmp(cmd0(&c, i), "HSET") == 0;
    if (hset == 0)
      break;
    ck_assert_uint_le(hset, 1000);
    writes += hset;
    batches++;
    if (writes < 2500) {
      ck_assert_uint_eq(hset, 1000);
      ck_assert_uint_eq(next, now + cf.batch_gap_ms);
    }
    now = next;
  }
  ck_assert_int_eq(batches, 3);
  ck_assert_uint_eq(writes, 2500);

  /* Reconnect: everything is rewritten and announced, in batches too. */
  kr__presence_set_connected(p, 0, now);
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_tick(p, now, &c, &next), 0);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_uint_eq(next, UINT64_MAX);
  kr__presence_set_connected(p, 1, now);
  size_t pubs = 0;
  writes = 0;
  for (int i = 0; i < 10; i++) {
    kr__presence_cmds_clear(&c);
    ck_assert_int_ge(kr__presence_tick(p, now, &c, &next), 0);
    for (size_t k = 0; k < c.n; k++) {
      writes += strcmp(cmd0(&c, k), "HSET") == 0;
      pubs += strcmp(cmd0(&c, k), "PUBLISH") == 0;
    }
    now = next;
  }
  ck_assert_uint_eq(writes, 2500);
  ck_assert_uint_eq(pubs, 2500);

  /* A clock that stepped back far is treated as due (nothing waits for
   * a time that will not come). */
  kr__presence_cmds_clear(&c);
  ck_assert_int_ge(kr__presence_tick(p, 10, &c, &next), 0);
  ck_assert_str_eq(cmd0(&c, 0), "SET");
  ck_assert_uint_eq(c.n, 1 + 2 * 1000);
  ck_assert_uint_eq(next, 10 + cf.batch_gap_ms); /* the rest is due too */
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(disconnected_changes_apply_on_connect) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  /* Not connected: state only, nothing appended (out may be NULL). */
  ck_assert_int_eq(kr__presence_agent_set(p, 1, 1, NULL, 0, 100, NULL), 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 2, 1, NULL, 0, 100, &c), 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 3, 1, NULL, 0, 100, &c), 0);
  ck_assert_uint_eq(c.n, 0);
  kr__presence_set_connected(p, 1, 200);
  kr__presence_set_connected(p, 0, 200);
  ck_assert_int_eq(kr__presence_agent_gone(p, 2, NULL), 0);
  ck_assert_int_eq(kr__presence_agent_gone(p, 9, NULL), 0); /* unknown */
  ck_assert_int_eq(kr__presence_holds(p, 2), 0);
  ck_assert_uint_eq(kr__presence_agent_count(p), 2);
  /* 3 goes and comes back before the removal was written. */
  ck_assert_int_eq(kr__presence_agent_gone(p, 3, NULL), 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 3, 4, NULL, 0, 150, NULL), 0);
  ck_assert_int_eq(kr__presence_tick(p, 300, &c, NULL), 0);
  ck_assert_uint_eq(c.n, 0);

  kr__presence_set_connected(p, 1, 1000);
  uint64_t next;
  ck_assert_int_eq(kr__presence_tick(p, 1000, &c, &next), 0);
  /* heartbeat; agent 1: HSET PEXPIRE PUBLISH; agent 2: HDEL; agent 3:
   * HSET PEXPIRE PUBLISH (queue order is the order of the changes). */
  ck_assert_uint_eq(c.n, 1 + 3 + 1 + 3);
  ck_assert_str_eq(cmd0(&c, 0), "SET");
  ck_assert_str_eq(cmd0(&c, 1), "HSET");
  ck_assert_str_eq(arg(&c, 1, 1), "t:agent:1");
  ck_assert_str_eq(cmd0(&c, 3), "PUBLISH");
  expect_cmd(&c, 4, KR__PRESENCE_OP_WRITE, "HDEL", "t:agent:2", "kas-a", NULL);
  ck_assert_str_eq(arg(&c, 5, 1), "t:agent:3");
  ck_assert_str_eq(cmd0(&c, 7), "PUBLISH");
  ck_assert_uint_eq(kr__presence_agent_count(p), 2);
  ck_assert_uint_eq(next, 3000);
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_tick(p, 3000, &c, &next), 0);
  ck_assert_uint_eq(next, 5000);
  /* The sweep is first tried one heartbeat TTL after connecting. */
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_tick(p, 7000, &c, &next),
                   KR__PRESENCE_TICK_SWEEP);
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_tick(p, 9000, &c, &next), 0);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(heartbeat_replies) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 1, 1, NULL, 0, 0, &c), 0);
  ck_assert_int_eq(kr__presence_tick(p, 0, &c, NULL), 0);
  kr__presence_cmds_clear(&c);

  kr__pstr own = S(HB_A), other = S(hb(0x99, URL)), junk = S("{]");
  /* First reply after connecting: nil or an earlier life are normal. */
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, &NIL, 10), 0);
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, &own, 20), 0);
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, &junk, 20), 0);
  /* Missing later: Redis lost it; everything is rewritten and announced. */
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, NULL, 30),
                   KR__PRESENCE_LOST);
  ck_assert_int_eq(kr__presence_tick(p, 30, &c, NULL), 0);
  ck_assert_uint_eq(c.n, 3);
  ck_assert_str_eq(cmd0(&c, 0), "HSET");
  ck_assert_str_eq(cmd0(&c, 2), "PUBLISH");
  /* Another process with this name. */
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, &other, 40), KR_ESTATE);
  /* After a reconnect the first reply is again the normal case. */
  kr__presence_set_connected(p, 0, 50);
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, &other, 50), 0);
  kr__presence_set_connected(p, 1, 60);
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, &other, 60), 0);
  ck_assert_int_eq(kr__presence_heartbeat_reply(p, &own, 61), 0);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(shutdown_in_chunks) {
  kr__presence_config cf;
  config(&cf);
  cf.batch_agents = 2; /* 16 HDELs per call */
  kr__presence *p = NULL;
  ck_assert_int_eq(kr__presence_new(NULL, &cf, &p), 0);
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 0);
  for (int64_t id = 1; id <= 20; id++)
    ck_assert_int_eq(kr__presence_agent_set(p, id, 1, NULL, 0, 0, &c), 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 3, 2, NULL, 0, 0, &c), 0);
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_shutdown(p, &c), 4);
  ck_assert_uint_eq(c.n, 16);
  int seen[21] = {0};
  for (size_t i = 0; i < c.n; i++) {
    ck_assert_str_eq(cmd0(&c, i), "HDEL");
    seen[atoi(arg(&c, i, 1) + 8)]++;
  }
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_shutdown(p, &c), 0);
  ck_assert_uint_eq(c.n, 5);
  for (size_t i = 0; i < 4; i++)
    seen[atoi(arg(&c, i, 1) + 8)]++;
  for (int id = 1; id <= 20; id++)
    ck_assert_int_eq(seen[id], 1);
  expect_cmd(&c, 4, KR__PRESENCE_OP_WRITE, "DEL", "t:instance:kas-a", NULL);
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(kr__presence_shutdown(p, &c), 0);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 1, 1, NULL, 0, 0, &c), KR_ESTATE);
  ck_assert_int_eq(kr__presence_agent_gone(p, 1, &c), KR_ESTATE);
  ck_assert_int_eq(kr__presence_tick(p, 100000, &c, NULL), 0);
  ck_assert_uint_eq(c.n, 0);
  kr__presence_free(p);

  /* Disconnected: forgets and is done. */
  ck_assert_int_eq(kr__presence_new(NULL, &cf, &p), 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 1, 1, NULL, 0, 0, &c), 0);
  ck_assert_int_eq(kr__presence_shutdown(p, &c), 0);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_uint_eq(kr__presence_agent_count(p), 0);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(max_agents_bound) {
  kr__presence_config cf;
  config(&cf);
  cf.max_agents = 3;
  kr__presence *p = NULL;
  ck_assert_int_eq(kr__presence_new(NULL, &cf, &p), 0);
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 0);
  for (int64_t id = 1; id <= 3; id++)
    ck_assert_int_eq(kr__presence_agent_set(p, id, 1, NULL, 0, 0, &c), 0);
  size_t n = c.n;
  ck_assert_int_eq(kr__presence_agent_set(p, 4, 1, NULL, 0, 0, &c), KR_ETOOBIG);
  ck_assert_uint_eq(c.n, n);
  ck_assert_int_eq(kr__presence_agent_gone(p, 2, &c), 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 4, 1, NULL, 0, 0, &c), 0);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(from_registry) {
  kr__registry *reg = NULL;
  ck_assert_int_eq(kr__registry_new(NULL, &reg), 0);
  kr__tunnel *t;
  int conn;
  /* Monotonic clock in us: tunnels at 1 s, 2 s, 3 s; now is 10 s. */
  ck_assert_int_eq(kr__registry_add(reg, 8, "pod-a", &conn, 1000000, &t), 0);
  ck_assert_int_eq(kr__registry_add(reg, 8, "pod-b", &conn, 3000000, &t), 0);
  ck_assert_int_eq(kr__registry_add(reg, 8, "pod-a", &conn, 2000000, &t), 0);
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 0);
  ck_assert_int_eq(
      kr__presence_agent_set_from_registry(p, reg, 8, 10000000, 50000, &c), 0);
  expect_cmd(&c, 0, KR__PRESENCE_OP_WRITE, "HSET", "t:agent:8", "kas-a",
             "{\"v\":1,\"boot\":\"" BOOT_HEX
             "\",\"exp\":410000,\"since\":41000,"
             "\"conns\":3,\"replicas\":[{\"name\":\"pod-a\",\"conns\":2,"
             "\"since\":41000},{\"name\":\"pod-b\",\"conns\":1,\"since\":"
             "43000}]}",
             NULL);
  /* No tunnels: gone. */
  kr__presence_cmds_clear(&c);
  ck_assert_int_eq(
      kr__presence_agent_set_from_registry(p, reg, 9, 10000000, 50000, &c), 0);
  expect_cmd(&c, 0, KR__PRESENCE_OP_WRITE, "HDEL", "t:agent:9", "kas-a", NULL);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
  kr__registry_free(reg);
}
END_TEST

/* -------------------------------------------------------------- decoders */

START_TEST(entry_codec) {
  kr__presence_entry e, d;
  memset(&e, 0, sizeof e);
  e.boot = 0xabcdef0123456789u;
  e.exp_ms = 1700000360000u;
  e.since_ms = 1700000000000u;
  e.conns = 5;
  e.nreplicas = 2;
  strcpy(e.replicas[0].name, "agentk-7d9f-x");
  e.replicas[0].conns = 4;
  e.replicas[0].since_ms = 1700000000000u;
  strcpy(e.replicas[1].name, "b\\\"/");
  e.replicas[1].conns = 1;
  e.replicas[1].since_ms = 1700000000500u;
  char buf[KR__PRESENCE_ENTRY_MAX];
  int n = kr__presence_entry_encode(&e, buf, sizeof buf);
  ck_assert_int_gt(n, 0);
  const char *want =
      "{\"v\":1,\"boot\":\"abcdef0123456789\",\"exp\":1700000360000,"
      "\"since\":1700000000000,\"conns\":5,\"replicas\":[{\"name\":"
      "\"agentk-7d9f-x\",\"conns\":4,\"since\":1700000000000},{\"name\":"
      "\"b\\\\\\\"/\",\"conns\":1,\"since\":1700000000500}]}";
  ck_assert_int_eq(n, (int)strlen(want));
  ck_assert(memcmp(buf, want, (size_t)n) == 0);
  memset(&d, 0x5a, sizeof d);
  ck_assert_int_eq(kr__presence_entry_decode(buf, (size_t)n, &d), 0);
  ck_assert_uint_eq(d.boot, e.boot);
  ck_assert_uint_eq(d.exp_ms, e.exp_ms);
  ck_assert_uint_eq(d.since_ms, e.since_ms);
  ck_assert_uint_eq(d.conns, 5);
  ck_assert_uint_eq(d.nreplicas, 2);
  ck_assert_str_eq(d.replicas[1].name, "b\\\"/");
  ck_assert_uint_eq(d.replicas[1].since_ms, 1700000000500u);

  /* Encoder limits. */
  ck_assert_int_eq(kr__presence_entry_encode(&e, buf, (size_t)n - 1),
                   KR_ETOOBIG);
  ck_assert_int_eq(kr__presence_entry_encode(&e, buf, (size_t)n), n);
  d = e;
  d.boot = 0;
  ck_assert_int_eq(kr__presence_entry_encode(&d, buf, sizeof buf), KR_EINVAL);
  d = e;
  d.conns = 0;
  ck_assert_int_eq(kr__presence_entry_encode(&d, buf, sizeof buf), KR_EINVAL);
  d = e;
  d.exp_ms = UINT64_MAX;
  ck_assert_int_eq(kr__presence_entry_encode(&d, buf, sizeof buf), KR_EINVAL);
  d = e;
  d.replicas[0].name[3] = ' ';
  ck_assert_int_eq(kr__presence_entry_encode(&d, buf, sizeof buf), KR_EINVAL);
  d = e;
  d.nreplicas = KR__PRESENCE_MAX_REPLICAS + 1;
  ck_assert_int_eq(kr__presence_entry_encode(&d, buf, sizeof buf), KR_EINVAL);
  /* The largest entry fits the bound. */
  d = e;
  d.nreplicas = KR__PRESENCE_MAX_REPLICAS;
  d.exp_ms = d.since_ms = (uint64_t)INT64_MAX;
  d.conns = KR__PRESENCE_MAX_CONNS;
  for (size_t i = 0; i < d.nreplicas; i++) {
    memset(d.replicas[i].name, 'n', KR__PRESENCE_REPLICA_MAX);
    d.replicas[i].name[KR__PRESENCE_REPLICA_MAX] = '\0';
    d.replicas[i].conns = KR__PRESENCE_MAX_CONNS;
    d.replicas[i].since_ms = (uint64_t)INT64_MAX;
  }
  n = kr__presence_entry_encode(&d, buf, sizeof buf);
  ck_assert_int_gt(n, 0);
  ck_assert_int_eq(kr__presence_entry_decode(buf, (size_t)n, NULL), 0);
}
END_TEST

#define E_OK "\"boot\":\"00000000000000b1\",\"exp\":5,\"since\":1,\"conns\":1"

START_TEST(entry_decode_strict) {
  static const char *const good[] = {
      "{\"v\":1," E_OK ",\"replicas\":[]}",
      "{\"replicas\":[],\"v\":1," E_OK ",\"future\":{\"x\":[1,2]}}",
      " {\"v\":1," E_OK ",\"replicas\":[{\"name\":\"a\",\"conns\":1,"
      "\"since\":0}]} \n",
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
    ck_assert_msg(kr__presence_entry_decode(good[i], strlen(good[i]), NULL) ==
                      0,
                  "good %zu", i);
  static const char *const unknown[] = {
      "{\"v\":2}",
      "{\"v\":99,\"boot\":7}",
  };
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
    ck_assert_int_eq(
        kr__presence_entry_decode(unknown[i], strlen(unknown[i]), NULL),
        KR__PRESENCE_UNKNOWN);
  static const char *const bad[] = {
      "",
      "null",
      "[]",
      "{}",
      "{\"v\":0," E_OK ",\"replicas\":[]}",
      "{\"v\":-1}",
      "{\"v\":\"1\"," E_OK ",\"replicas\":[]}",
      "{\"v\":1.0," E_OK ",\"replicas\":[]}",
      "{\"v\":1," E_OK "}",
      "{\"v\":1," E_OK ",\"replicas\":{}}",
      "{\"v\":1," E_OK ",\"replicas\":[],\"v\":1}",
      "{\"v\":1," E_OK ",\"replicas\":[]}x",
      "{\"v\":1," E_OK ",\"replicas\":[]",
      "{\"v\":1,\"boot\":\"00000000000000B1\",\"exp\":5,\"since\":1,"
      "\"conns\":1,\"replicas\":[]}",
      "{\"v\":1,\"boot\":\"0000000000000000\",\"exp\":5,\"since\":1,"
      "\"conns\":1,\"replicas\":[]}",
      "{\"v\":1,\"boot\":\"00b1\",\"exp\":5,\"since\":1,"
      "\"conns\":1,\"replicas\":[]}",
      "{\"v\":1,\"boot\":177,\"exp\":5,\"since\":1,\"conns\":1,"
      "\"replicas\":[]}",
      "{\"v\":1,\"boot\":\"00000000000000b1\",\"exp\":-5,\"since\":1,"
      "\"conns\":1,\"replicas\":[]}",
      "{\"v\":1,\"boot\":\"00000000000000b1\",\"exp\":5.5,\"since\":1,"
      "\"conns\":1,\"replicas\":[]}",
      "{\"v\":1,\"boot\":\"00000000000000b1\",\"exp\":99999999999999999999,"
      "\"since\":1,\"conns\":1,\"replicas\":[]}",
      "{\"v\":1,\"boot\":\"00000000000000b1\",\"exp\":5,\"since\":1,"
      "\"conns\":0,\"replicas\":[]}",
      "{\"v\":1,\"boot\":\"00000000000000b1\",\"exp\":5,\"since\":1,"
      "\"conns\":1000001,\"replicas\":[]}",
      "{\"v\":1," E_OK ",\"replicas\":[1]}",
      "{\"v\":1," E_OK ",\"replicas\":[{\"name\":\"a b\",\"conns\":1,"
      "\"since\":0}]}",
      "{\"v\":1," E_OK ",\"replicas\":[{\"name\":\"\",\"conns\":1,"
      "\"since\":0}]}",
      "{\"v\":1," E_OK ",\"replicas\":[{\"name\":\"a\\u0000b\",\"conns\":1,"
      "\"since\":0}]}",
      "{\"v\":1," E_OK ",\"replicas\":[{\"name\":\"\\u00e9\",\"conns\":1,"
      "\"since\":0}]}",
      "{\"v\":1," E_OK ",\"replicas\":[{\"name\":\"a\",\"conns\":0,"
      "\"since\":0}]}",
      "{\"v\":1," E_OK ",\"replicas\":[{\"name\":\"a\",\"conns\":1}]}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(kr__presence_entry_decode(bad[i], strlen(bad[i]), NULL) ==
                      KR_EPROTO,
                  "bad %zu: %s", i, bad[i]);
  /* Embedded NUL, NULL pointer. */
  ck_assert_int_eq(kr__presence_entry_decode("{\"v\":1}\0", 8, NULL),
                   KR_EPROTO);
  ck_assert_int_eq(kr__presence_entry_decode(NULL, 0, NULL), KR_EPROTO);

  /* Too many replicas, too long a name, too long a value. */
  char big[KR__PRESENCE_ENTRY_MAX * 2];
  size_t k =
      (size_t)snprintf(big, sizeof big, "{\"v\":1," E_OK ",\"replicas\":[");
  for (int i = 0; i < KR__PRESENCE_MAX_REPLICAS + 1; i++)
    k += (size_t)snprintf(big + k, sizeof big - k,
                          "%s{\"name\":\"r\",\"conns\":1,\"since\":0}",
                          i ? "," : "");
  k += (size_t)snprintf(big + k, sizeof big - k, "]}");
  ck_assert_int_eq(kr__presence_entry_decode(big, k, NULL), KR_EPROTO);
  k = (size_t)snprintf(big, sizeof big,
                       "{\"v\":1," E_OK ",\"replicas\":[{\"name\":\"");
  memset(big + k, 'n', KR__PRESENCE_REPLICA_MAX + 1);
  k += KR__PRESENCE_REPLICA_MAX + 1;
  k += (size_t)snprintf(big + k, sizeof big - k,
                        "\",\"conns\":1,\"since\":0}]}");
  ck_assert_int_eq(kr__presence_entry_decode(big, k, NULL), KR_EPROTO);
  k = (size_t)snprintf(big, sizeof big,
                       "{\"v\":1," E_OK ",\"replicas\":[],"
                       "\"pad\":\"");
  memset(big + k, 'p', KR__PRESENCE_ENTRY_MAX);
  k += KR__PRESENCE_ENTRY_MAX;
  k += (size_t)snprintf(big + k, sizeof big - k, "\"}");
  ck_assert_int_eq(kr__presence_entry_decode(big, k, NULL), KR_EPROTO);
}
END_TEST

START_TEST(heartbeat_and_wake_codecs) {
  kr__presence_heartbeat h;
  ck_assert_int_eq(kr__presence_heartbeat_decode(HB_A, strlen(HB_A), &h), 0);
  ck_assert_uint_eq(h.boot, BOOT);
  ck_assert_str_eq(h.url, URL);
  static const char *const bad_hb[] = {
      "{\"v\":1,\"boot\":\"" BOOT_HEX "\"}",
      "{\"v\":1,\"url\":\"x\"}",
      "{\"v\":1,\"boot\":\"" BOOT_HEX "\",\"url\":\"\"}",
      "{\"v\":1,\"boot\":\"" BOOT_HEX "\",\"url\":\"a b\"}",
      "{\"v\":1,\"boot\":\"" BOOT_HEX "\",\"url\":7}",
      "garbage",
  };
  for (size_t i = 0; i < sizeof bad_hb / sizeof bad_hb[0]; i++)
    ck_assert_int_eq(
        kr__presence_heartbeat_decode(bad_hb[i], strlen(bad_hb[i]), NULL),
        KR_EPROTO);
  ck_assert_int_eq(kr__presence_heartbeat_decode("{\"v\":3}", 7, NULL),
                   KR__PRESENCE_UNKNOWN);

  /* The wake-up a registration publishes decodes back. */
  kr__presence *p = mk();
  kr__presence_config cf;
  config(&cf);
  cf.instance = "kas-b";
  cf.boot = 0xb;
  cf.url = "tcp://10.0.0.2:1";
  kr__presence *pb = NULL;
  ck_assert_int_eq(kr__presence_new(NULL, &cf, &pb), 0);
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(pb, 1, 0);
  ck_assert_int_eq(kr__presence_agent_set(pb, 77, 1, NULL, 0, 0, &c), 0);
  kr__pstr msg[3] = {S("message"), S(arg(&c, 2, 1)), S(arg(&c, 2, 2))};
  kr__presence_wake w;
  memset(&w, 0, sizeof w);
  ck_assert_int_eq(kr__presence_wake_decode(p, msg, 3, &w), 0);
  ck_assert_int_eq(w.agent_id, 77);
  ck_assert_uint_eq(w.boot, 0xb);
  ck_assert_str_eq(w.instance, "kas-b");
  ck_assert_str_eq(w.url, "tcp://10.0.0.2:1");
  /* Its own message is nothing for kas-b. */
  ck_assert_int_eq(kr__presence_wake_decode(pb, msg, 3, &w),
                   KR__PRESENCE_IGNORE);
  /* Subscribe confirmations, other channels, other shapes. */
  kr__pstr sub[3] = {S("subscribe"), S("t:wake"), S("1")};
  ck_assert_int_eq(kr__presence_wake_decode(p, sub, 3, &w),
                   KR__PRESENCE_IGNORE);
  kr__pstr oth[3] = {S("message"), S("t:wakeup"), S(arg(&c, 2, 2))};
  ck_assert_int_eq(kr__presence_wake_decode(p, oth, 3, &w),
                   KR__PRESENCE_IGNORE);
  ck_assert_int_eq(kr__presence_wake_decode(p, msg, 2, &w),
                   KR__PRESENCE_IGNORE);
  kr__pstr badm[3] = {S("message"), S("t:wake"), S("{\"v\":1,\"agent\":0}")};
  ck_assert_int_eq(kr__presence_wake_decode(p, badm, 3, &w), KR_EPROTO);
  badm[2] = NIL;
  ck_assert_int_eq(kr__presence_wake_decode(p, badm, 3, &w), KR_EPROTO);
  badm[2] = S("{\"v\":2,\"agent\":\"x\"}");
  ck_assert_int_eq(kr__presence_wake_decode(p, badm, 3, &w),
                   KR__PRESENCE_IGNORE);
  static const char *const bad_wake[] = {
      "{\"v\":1,\"agent\":-4,\"instance\":\"b\",\"boot\":\"000000000000000b\","
      "\"url\":\"u\"}",
      "{\"v\":1,\"agent\":4,\"instance\":\"\",\"boot\":\"000000000000000b\","
      "\"url\":\"u\"}",
      "{\"v\":1,\"agent\":4,\"instance\":\"b\",\"boot\":\"b\",\"url\":\"u\"}",
      "{\"v\":1,\"agent\":4,\"instance\":\"b\",\"boot\":\"000000000000000b\"}",
  };
  for (size_t i = 0; i < sizeof bad_wake / sizeof bad_wake[0]; i++)
    ck_assert_int_eq(
        kr__presence_wake_decode_msg(bad_wake[i], strlen(bad_wake[i]), NULL),
        KR_EPROTO);
  kr__presence_cmds_free(&c);
  kr__presence_free(pb);
  kr__presence_free(p);
}
END_TEST

START_TEST(agent_keys) {
  kr__presence *p = mk();
  int64_t id = 0;
  ck_assert_int_eq(kr__presence_parse_agent_key(p, "t:agent:42", 10, &id), 0);
  ck_assert_int_eq(id, 42);
  ck_assert_int_eq(
      kr__presence_parse_agent_key(p, "t:agent:9223372036854775807", 27, &id),
      0);
  ck_assert_int_eq(id, INT64_MAX);
  static const char *const bad[] = {
      "t:agent:",
      "t:agent:0",
      "t:agent:042",
      "t:agent:-1",
      "t:agent:+1",
      "t:agent:1x",
      "t:agent: 1",
      "t:agents:1",
      "u:agent:1",
      "agent:1",
      "t:agent:9223372036854775808",
      "t:agent:99999999999999999999",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(kr__presence_parse_agent_key(p, bad[i], strlen(bad[i]),
                                               &id) == KR_EINVAL,
                  "%s", bad[i]);
  ck_assert_int_eq(kr__presence_parse_agent_key(p, NULL, 0, &id), KR_EINVAL);
  ck_assert_int_eq(kr__presence_parse_agent_key(p, "t:agent:1\0", 10, &id),
                   KR_EINVAL);
  kr__presence_free(p);
}
END_TEST

/* ------------------------------------------------------------------ jobs */

/* Runs one step and returns its result, checking the list grew. */
static int step(kr__presence_job *j, uint64_t now, kr__presence_cmds *c) {
  kr__presence_cmds_clear(c);
  return kr__presence_job_step(j, now, c);
}

START_TEST(lookup_decisions) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_lookup_new(p, 0, &j), KR_EINVAL);
  ck_assert_ptr_null(j);
  ck_assert_int_eq(kr__presence_lookup_new(p, 42, &j), 0);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_uint_eq(c.n, 1);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "HGETALL", "t:agent:42", NULL);
  /* Stepping again before the reply is refused. */
  ck_assert_int_eq(step(j, 1000, &c), KR_ESTATE);

  const uint64_t now = 1000;
  const char *malformed = "{\"v\":1,\"boot\":\"x\"}";
  const char *newer = "{\"v\":2,\"anything\":true}";
  char oversized[KR__PRESENCE_ENTRY_MAX + 2];
  memset(oversized, ' ', sizeof oversized - 1);
  oversized[sizeof oversized - 1] = '\0';
  oversized[0] = '{';
  oversized[sizeof oversized - 2] = '}';
  kr__pstr fields[] = {
      S("kas-b"),    S(entry(0xb, now + 1, 10, 3)),  /* live */
      S("kas-c"),    S(entry(0xc, now + 1, 10, 1)),  /* no heartbeat */
      S("kas-d"),    S(entry(0xd1, now + 1, 10, 1)), /* boot mismatch */
      S("kas-e"),    S(entry(0xe, now, 10, 1)),      /* expired */
      S("kas-f"),    S(malformed),                   /* malformed */
      S("bad name"), S(entry(0xb, now + 1, 10, 1)),  /* bad field */
      S("kas-g"),    S(newer),                       /* newer entry */
      S("kas-h"),    S(entry(0x8, now + 1, 10, 1)),  /* newer heartbeat */
      S("kas-a"),    S(entry(BOOT, now + 1, 10, 1)), /* self, not held */
      S("kas-i"),    S(entry(0x9, now + 1, 10, 2)),  /* junk heartbeat */
      S("kas-j"),    S(oversized),                   /* oversized */
      S("kas-k"),    S(entry(0xf, now + 1, 20, 2)),  /* live */
  };
  size_t nf = sizeof fields / sizeof fields[0];
  ck_assert_int_eq(kr__presence_job_feed(j, 0, fields, nf), 1);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_uint_eq(c.n, 1);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "MGET", "t:instance:kas-b",
             "t:instance:kas-c", "t:instance:kas-d", "t:instance:kas-e",
             "t:instance:kas-h", "t:instance:kas-i", "t:instance:kas-k", NULL);
  kr__pstr hbs[] = {S(hb(0xb, "tls://b:1")), NIL,
                    S(hb(0xd, "tls://d:1")), S(hb(0xe, "tls://e:1")),
                    S("{\"v\":5}"),          S("not json"),
                    S(hb(0xf, "tls://k:1"))};
  /* A wrong element count is a protocol error that fails the job. */
  kr__presence_job *j2 = NULL;
  ck_assert_int_eq(kr__presence_lookup_new(p, 42, &j2), 0);
  ck_assert_int_eq(step(j2, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j2, 0, fields, nf), 1);
  ck_assert_int_eq(step(j2, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j2, 0, hbs, 6), KR_EPROTO);
  ck_assert_int_eq(step(j2, now, &c), KR_EPROTO);
  kr__presence_job_free(j2);

  ck_assert_int_eq(kr__presence_job_feed(j, 1, hbs, 7), KR_EINVAL);
  kr__presence_job_free(j);
  ck_assert_int_eq(kr__presence_lookup_new(p, 42, &j), 0);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, fields, nf), 1);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, fields, nf), KR_EINVAL);
  kr__presence_job_free(j);

  ck_assert_int_eq(kr__presence_lookup_new(p, 42, &j), 0);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, fields, nf), 1);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, hbs, 7), 1);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_DONE);
  /* Clean-ups: c (no heartbeat), d (boot), e (expired), f (malformed),
   * "bad name", self (not held), i (junk heartbeat), j (oversized), in
   * field order. */
  ck_assert_uint_eq(c.n, 8);
  static const char *const gone[] = {"kas-c",    "kas-d", "kas-e", "kas-f",
                                     "bad name", "kas-a", "kas-i", "kas-j"};
  for (size_t i = 0; i < c.n; i++) {
    ck_assert_str_eq(cmd0(&c, i), "EVAL");
    ck_assert_str_eq(arg(&c, i, 3), "t:agent:42");
    ck_assert_str_eq(arg(&c, i, 4), gone[i]);
  }
  expect_cmd(&c, 3, KR__PRESENCE_OP_WRITE, "EVAL",
             "if redis.call('HGET',KEYS[1],ARGV[1])==ARGV[2] then return "
             "redis.call('HDEL',KEYS[1],ARGV[1]) end return 0",
             "1", "t:agent:42", "kas-f", malformed, NULL);
  ck_assert_str_eq(arg(&c, 7, 5), oversized);

  kr__presence_job_stats st;
  kr__presence_job_get_stats(j, &st);
  ck_assert_uint_eq(st.keys, 1);
  ck_assert_uint_eq(st.fields, 12);
  ck_assert_uint_eq(st.live, 2);
  ck_assert_uint_eq(st.stale, 8);
  ck_assert_uint_eq(st.unknown, 2);

  kr__presence_candidate cand[4];
  ck_assert_uint_eq(kr__presence_lookup_candidates(j, 1, NULL, 0), 2);
  ck_assert_uint_eq(kr__presence_lookup_candidates(j, 1, cand, 4), 2);
  ck_assert(strcmp(cand[0].instance, "kas-b") == 0 ||
            strcmp(cand[0].instance, "kas-k") == 0);
  ck_assert_str_ne(cand[0].instance, cand[1].instance);
  for (int i = 0; i < 2; i++) {
    if (strcmp(cand[i].instance, "kas-b") == 0) {
      ck_assert_str_eq(cand[i].url, "tls://b:1");
      ck_assert_uint_eq(cand[i].conns, 3);
      ck_assert_uint_eq(cand[i].boot, 0xb);
    } else {
      ck_assert_str_eq(cand[i].url, "tls://k:1");
      ck_assert_uint_eq(cand[i].since_ms, 20);
    }
  }
  /* Done is final. */
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 0);
  kr__presence_job_free(j);

  /* Own field while holding the agent: live, not a candidate, kept. */
  kr__presence_set_connected(p, 1, 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 42, 1, NULL, 0, 0, &c), 0);
  ck_assert_int_eq(kr__presence_lookup_new(p, 42, &j), 0);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr self[] = {S("kas-a"), S(entry(BOOT, now + 1, 10, 1))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, self, 2), 1);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_uint_eq(kr__presence_lookup_candidates(j, 1, cand, 4), 0);
  kr__presence_job_free(j);
  /* ... but an earlier life's field (other boot) goes. */
  ck_assert_int_eq(kr__presence_lookup_new(p, 42, &j), 0);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr old[] = {S("kas-a"), S(entry(0x77, now + 1, 10, 1))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, old, 2), 1);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 1);
  ck_assert_str_eq(cmd0(&c, 0), "EVAL");
  kr__presence_job_free(j);

  /* No such hash (empty array, or nil): done at once, no candidate. */
  ck_assert_int_eq(kr__presence_lookup_new(p, 43, &j), 0);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, NULL, 0), 1);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_uint_eq(kr__presence_lookup_candidates(j, 1, cand, 4), 0);
  kr__presence_job_free(j);
  ck_assert_int_eq(kr__presence_lookup_new(p, 43, &j), 0);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, &NIL, 1), 1);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_DONE);
  kr__presence_job_free(j);
  /* An odd element count is not a hash. */
  ck_assert_int_eq(kr__presence_lookup_new(p, 43, &j), 0);
  ck_assert_int_eq(step(j, now, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, fields, 3), KR_EPROTO);
  kr__presence_job_free(j);
  kr__presence_job_free(NULL);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(lookup_field_bound) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_lookup_new(p, 1, &j), 0);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  enum { N = KR__PRESENCE_MAX_FIELDS + 44 };
  static char names[N][16];
  static kr__pstr f[2 * N];
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "i%d", i);
    f[2 * i] = S(names[i]);
    f[2 * i + 1] = S("{\"v\":1}"); /* malformed: stale, no heartbeat */
  }
  ck_assert_int_eq(kr__presence_job_feed(j, 0, f, 2 * N), 1);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, KR__PRESENCE_MAX_FIELDS);
  kr__presence_job_stats st;
  kr__presence_job_get_stats(j, &st);
  ck_assert_uint_eq(st.fields, N);
  ck_assert_uint_eq(st.stale, KR__PRESENCE_MAX_FIELDS);
  ck_assert_uint_eq(st.unknown, 44);
  kr__presence_job_free(j);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(candidate_order_weighted) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_lookup_new(p, 1, &j), 0);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr f[] = {S("x1"), S(entry(1, 9, 0, 1)), S("x2"), S(entry(2, 9, 0, 2)),
                  S("x7"), S(entry(7, 9, 0, 7))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, f, 6), 1);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr h[] = {S(hb(1, "u1")), S(hb(2, "u2")), S(hb(7, "u7"))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, h, 3), 1);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_DONE);
  int first[8] = {0};
  kt_rng rng;
  kt_rng_seed(&rng, kt_seed("candidate_order", 7));
  enum { DRAWS = 20000 };
  for (int i = 0; i < DRAWS; i++) {
    kr__presence_candidate cand[3];
    ck_assert_uint_eq(
        kr__presence_lookup_candidates(j, kt_rng_next(&rng), cand, 3), 3);
    int seen = 0;
    for (int k = 0; k < 3; k++)
      seen |= 1 << (cand[k].instance[1] - '0');
    ck_assert_int_eq(seen, (1 << 1) | (1 << 2) | (1 << 7));
    first[cand[0].instance[1] - '0']++;
  }
  /* Expected shares 10 %, 20 %, 70 %: allow +-2 points. */
  ck_assert_int_ge(first[1], DRAWS * 8 / 100);
  ck_assert_int_le(first[1], DRAWS * 12 / 100);
  ck_assert_int_ge(first[2], DRAWS * 18 / 100);
  ck_assert_int_le(first[2], DRAWS * 22 / 100);
  ck_assert_int_ge(first[7], DRAWS * 68 / 100);
  /* The same random bits give the same order; cap 1 gives the first. */
  kr__presence_candidate a[3], b[1];
  kr__presence_lookup_candidates(j, 12345, a, 3);
  kr__presence_lookup_candidates(j, 12345, b, 1);
  ck_assert_str_eq(a[0].instance, b[0].instance);
  kr__presence_job_free(j);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(sweep_steps) {
  kr__presence_config cf;
  config(&cf);
  cf.prefix = "k*[?]\\:";
  cf.scan_count = 50;
  kr__presence *p = NULL;
  ck_assert_int_eq(kr__presence_new(NULL, &cf, &p), 0);
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);

  /* Another instance holds the lock: nothing else happens. */
  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_sweep_new(p, &j), 0);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "SET", "k*[?]\\:sweep", "kas-a", "NX",
             "PX", "600000", NULL);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, &NIL, 1), 1);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 0);
  kr__presence_job_stats st;
  kr__presence_job_get_stats(j, &st);
  ck_assert_int_eq(st.lock_held, 0);
  kr__presence_job_free(j);

  /* A strange lock reply is a protocol error. */
  ck_assert_int_eq(kr__presence_sweep_new(p, &j), 0);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr weird = S("QUEUED");
  ck_assert_int_eq(kr__presence_job_feed(j, 0, &weird, 1), KR_EPROTO);
  kr__presence_job_free(j);

  ck_assert_int_eq(kr__presence_sweep_new(p, &j), 0);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr ok = S("OK");
  ck_assert_int_eq(kr__presence_job_feed(j, 0, &ok, 1), 1);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "SCAN", "0", "MATCH",
             "k\\*\\[\\?\\]\\\\:agent:*", "COUNT", "50", NULL);
  kr__pstr scan1[] = {
      S("17"), S("k*[?]\\:agent:1"), S("k*[?]\\:agent:x"), S("other"),
      NIL,     S("k*[?]\\:agent:2")};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, scan1, 6), 1);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_uint_eq(c.n, 2);
  kr__presence_cmd k;
  ck_assert_int_eq(kr__presence_cmds_get(&c, 1, &k), 0);
  ck_assert_uint_eq(k.tag, 1);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "HGETALL", "k*[?]\\:agent:1", NULL);
  expect_cmd(&c, 1, KR__PRESENCE_OP_JOB, "HGETALL", "k*[?]\\:agent:2", NULL);
  /* Replies may come in any order. */
  kr__pstr h2[] = {S("kas-b"), S(entry(0xb, 99, 0, 1))};
  kr__pstr h1[] = {S("kas-b"), S(entry(0xb, 99, 0, 1)), S("kas-z"),
                   S(entry(0x2, 99, 0, 1))};
  ck_assert_int_eq(kr__presence_job_feed(j, 1, h2, 2), 0);
  ck_assert_int_eq(step(j, 0, &c), KR_ESTATE);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, h1, 4), 1);
  ck_assert_int_eq(step(j, 0, &c), KR__PRESENCE_JOB_WAIT);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "MGET", "k*[?]\\:instance:kas-b",
             "k*[?]\\:instance:kas-z", NULL);
  kr__pstr hbs[] = {S(hb(0xb, "u")), NIL};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, hbs, 2), 1);
  ck_assert_int_eq(step(j, 50, &c), KR__PRESENCE_JOB_WAIT);
  /* kas-z is dead: its field goes; then the next SCAN. */
  ck_assert_uint_eq(c.n, 2);
  ck_assert_str_eq(cmd0(&c, 0), "EVAL");
  ck_assert_str_eq(arg(&c, 0, 3), "k*[?]\\:agent:1");
  ck_assert_str_eq(arg(&c, 0, 4), "kas-z");
  ck_assert_str_eq(cmd0(&c, 1), "SCAN");
  ck_assert_str_eq(arg(&c, 1, 1), "17");
  /* An empty page, then a page whose only instance is known already
   * (no MGET), then the end. */
  kr__pstr scan2[] = {S("33")};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, scan2, 1), 1);
  ck_assert_int_eq(step(j, 60, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_uint_eq(c.n, 1);
  ck_assert_str_eq(arg(&c, 0, 1), "33");
  kr__pstr scan3[] = {S("0"), S("k*[?]\\:agent:3")};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, scan3, 2), 1);
  ck_assert_int_eq(step(j, 60, &c), KR__PRESENCE_JOB_WAIT);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "HGETALL", "k*[?]\\:agent:3", NULL);
  kr__pstr h3[] = {S("kas-b"), S(entry(0xb, 99, 0, 1)), S("kas-z"),
                   S(entry(0x2, 99, 0, 1))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, h3, 4), 1);
  /* kas-b's entry expired by now (exp 99). */
  ck_assert_int_eq(step(j, 100, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 2);
  ck_assert_str_eq(arg(&c, 0, 4), "kas-b");
  ck_assert_str_eq(arg(&c, 1, 4), "kas-z");
  kr__presence_job_get_stats(j, &st);
  ck_assert_int_eq(st.lock_held, 1);
  ck_assert_uint_eq(st.scan_steps, 3);
  ck_assert_uint_eq(st.keys, 3);
  ck_assert_uint_eq(st.fields, 5);
  ck_assert_uint_eq(st.live, 2);
  ck_assert_uint_eq(st.stale, 3);
  ck_assert_uint_eq(st.ignored_keys, 3);
  kr__presence_job_free(j);

  /* Malformed cursors. */
  static const char *const badc[] = {"", "-1", "1a", "18446744073709551616",
                                     "123456789012345678901"};
  for (size_t i = 0; i < sizeof badc / sizeof badc[0]; i++) {
    kr__presence_job *l = NULL;
    ck_assert_int_eq(kr__presence_list_new(p, 0, 0, &l), 0);
    ck_assert_int_eq(step(l, 0, &c), KR__PRESENCE_JOB_WAIT);
    kr__pstr cur = S(badc[i]);
    ck_assert_int_eq(kr__presence_job_feed(l, 0, &cur, 1), KR_EPROTO);
    ck_assert_int_eq(kr__presence_job_feed(l, 0, &cur, 1), KR_EPROTO);
    kr__presence_job_free(l);
  }
  kr__presence_job *l = NULL;
  ck_assert_int_eq(kr__presence_list_new(p, 0, 0, &l), 0);
  ck_assert_int_eq(step(l, 0, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(l, 0, NULL, 0), KR_EPROTO);
  kr__presence_job_free(l);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

START_TEST(listing_aggregates) {
  kr__presence *p = mk();
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  kr__presence_set_connected(p, 1, 0);
  kr__presence_replica ra = {"pod-x", 2, 500};
  ck_assert_int_eq(kr__presence_agent_set(p, 5, 2, &ra, 1, 600, &c), 0);
  ck_assert_int_eq(kr__presence_agent_set(p, 9, 1, NULL, 0, 700, &c), 0);

  kr__presence_job *j = NULL;
  ck_assert_int_eq(kr__presence_list_new(p, 0, 0, &j), 0);
  char *json = NULL;
  ck_assert_int_eq(kr__presence_list_json(j, &json, NULL), KR_ESTATE);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_str_eq(arg(&c, 0, 3), "t:agent:*");
  kr__pstr s1[] = {S("4"), S("t:agent:5"), S("t:agent:3")};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, s1, 3), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  /* Agent 5: this instance (from Redis, ignored: own state counts), kas-b
   * live; agent 3: kas-b live, kas-c dead. */
  kr__pstr h5[] = {S("kas-a"), S(entry(BOOT, 99999, 1, 7)), S("kas-b"),
                   S(entry(0xb, 99999, 400, 1))};
  kr__pstr h3[] = {S("kas-c"), S(entry(0xc, 99999, 100, 1)), S("kas-b"),
                   S(entry(0xb, 99999, 300, 4))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, h5, 4), 0);
  ck_assert_int_eq(kr__presence_job_feed(j, 1, h3, 4), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr hb1[] = {S(hb(0xb, "tls://b:1")), NIL};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, hb1, 2), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_uint_eq(c.n, 2); /* kas-c's field, next SCAN */
  ck_assert_str_eq(arg(&c, 0, 4), "kas-c");
  /* SCAN may return a key again: counted once. */
  kr__pstr s2[] = {S("0"), S("t:agent:3"), S("t:agent:11")};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, s2, 3), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr h11[] = {S("kas-d"), S(entry(0xd, 99999, 50, 2))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, h3, 4), 0);
  ck_assert_int_eq(kr__presence_job_feed(j, 1, h11, 2), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  expect_cmd(&c, 0, KR__PRESENCE_OP_JOB, "MGET", "t:instance:kas-d", NULL);
  kr__pstr hb2[] = {S(hb(0xd, "tls://d:1"))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, hb2, 1), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 1); /* kas-c again */

  ck_assert_uint_eq(kr__presence_list_count(j), 4);
  ck_assert_int_eq(kr__presence_list_truncated(j), 0);
  const kr__presence_listed_agent *a = kr__presence_list_agent(j, 1);
  ck_assert_int_eq(a->agent_id, 5);
  ck_assert_uint_eq(a->conns, 3);
  ck_assert_uint_eq(a->since_ms, 400);
  ck_assert_uint_eq(a->ninstances, 2);
  ck_assert_str_eq(a->instances[0].instance, "kas-a");
  ck_assert_str_eq(a->instances[0].url, URL);
  ck_assert_str_eq(a->instances[1].url, "tls://b:1");
  ck_assert_ptr_null(kr__presence_list_agent(j, 4));

  size_t len = 0;
  ck_assert_int_eq(kr__presence_list_json(j, &json, &len), 0);
  const char *want =
      "{\"agents\":["
      "{\"id\":3,\"connections\":4,\"connected_since_ms\":300,"
      "\"instances\":[{\"instance\":\"kas-b\",\"connections\":4,"
      "\"connected_since_ms\":300}],"
      "\"replicas\":[{\"name\":\"pod-4\",\"instance\":\"kas-b\","
      "\"connections\":4,\"connected_since_ms\":300}]},"
      "{\"id\":5,\"connections\":3,\"connected_since_ms\":400,"
      "\"instances\":[{\"instance\":\"kas-a\",\"connections\":2,"
      "\"connected_since_ms\":500},{\"instance\":\"kas-b\",\"connections\":1,"
      "\"connected_since_ms\":400}],"
      "\"replicas\":[{\"name\":\"pod-x\",\"instance\":\"kas-a\","
      "\"connections\":2,\"connected_since_ms\":500},{\"name\":\"pod-1\","
      "\"instance\":\"kas-b\",\"connections\":1,\"connected_since_ms\":400}]},"
      "{\"id\":9,\"connections\":1,\"connected_since_ms\":700,"
      "\"instances\":[{\"instance\":\"kas-a\",\"connections\":1,"
      "\"connected_since_ms\":700}],\"replicas\":[]},"
      "{\"id\":11,\"connections\":2,\"connected_since_ms\":50,"
      "\"instances\":[{\"instance\":\"kas-d\",\"connections\":2,"
      "\"connected_since_ms\":50}],"
      "\"replicas\":[{\"name\":\"pod-2\",\"instance\":\"kas-d\","
      "\"connections\":2,\"connected_since_ms\":50}]}"
      "],\"truncated\":false}";
  ck_assert_str_eq(json, want);
  ck_assert_uint_eq(len, strlen(want));
  kr__presence_json_free(p, json);
  kr__presence_job_free(j);

  /* max_agents cuts the listing short and stops scanning. */
  ck_assert_int_eq(kr__presence_list_new(p, 1, 0, &j), 0);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr s3[] = {S("8"), S("t:agent:3"), S("t:agent:11")};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, s3, 3), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  ck_assert_int_eq(kr__presence_job_feed(j, 0, h3, 4), 0);
  ck_assert_int_eq(kr__presence_job_feed(j, 1, h11, 2), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_WAIT);
  kr__pstr hb3[] = {S(hb(0xc, "tls://c:1")), S(hb(0xb, "tls://b:1")),
                    S(hb(0xd, "tls://d:1"))};
  ck_assert_int_eq(kr__presence_job_feed(j, 0, hb3, 3), 1);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_DONE);
  for (size_t i = 0; i < c.n; i++)
    ck_assert_str_ne(cmd0(&c, i), "SCAN");
  ck_assert_uint_eq(kr__presence_list_count(j), 1);
  ck_assert_int_eq(kr__presence_list_truncated(j), 1);
  ck_assert_int_eq(kr__presence_list_json(j, &json, NULL), 0);
  ck_assert_ptr_nonnull(strstr(json, "\"truncated\":true"));
  kr__presence_json_free(p, json);
  kr__presence_job_free(j);

  /* Local only: no command. */
  ck_assert_int_eq(kr__presence_list_new(p, 0, 1, &j), 0);
  ck_assert_int_eq(step(j, 1000, &c), KR__PRESENCE_JOB_DONE);
  ck_assert_uint_eq(c.n, 0);
  ck_assert_uint_eq(kr__presence_list_count(j), 2);
  ck_assert_int_eq(kr__presence_list_agent(j, 0)->agent_id, 5);
  ck_assert_int_eq(kr__presence_list_agent(j, 1)->agent_id, 9);
  kr__presence_job_free(j);
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
}
END_TEST

/* ------------------------------------------------------ allocation faults */

/* One scenario through every allocating path; with the n-th allocation
 * failing, every call either succeeds or fails cleanly. Returns 1 when it
 * ran to the end without a failure injected. */
static int alloc_scenario(kt_alloc *al) {
  kr_mem mem = kt_alloc_mem(al);
  kr__presence_config cf;
  config(&cf);
  cf.batch_agents = 3;
  kr__presence *p = NULL;
  int clean = 1;
  if (kr__presence_new(&mem, &cf, &p) < 0)
    return 0;
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, &mem);
  kr__presence_set_connected(p, 1, 0);
  kr__presence_replica r = {"pod", 1, 0};
  for (int64_t id = 1; id <= 40; id++) {
    size_t n = c.n;
    int held = kr__presence_holds(p, id);
    int rc = kr__presence_agent_set(p, id, 1, &r, 1, 0, &c);
    if (rc < 0) {
      ck_assert_int_eq(rc, KR_ENOMEM);
      ck_assert_uint_eq(c.n, n);
      ck_assert_int_eq(kr__presence_holds(p, id), held);
      clean = 0;
    }
  }
  for (uint64_t t = 0; t < 400000; t += 50000)
    if (kr__presence_tick(p, t, &c, NULL) < 0)
      clean = 0;
  kr__presence_job *j = NULL;
  if (kr__presence_list_new(p, 0, 0, &j) == 0) {
    int rc = kr__presence_job_step(j, 0, &c);
    kr__pstr s[] = {S("0"), S("t:agent:1"), S("t:agent:2")};
    if (rc == KR__PRESENCE_JOB_WAIT && kr__presence_job_feed(j, 0, s, 3) == 1 &&
        kr__presence_job_step(j, 0, &c) == KR__PRESENCE_JOB_WAIT) {
      kr__pstr h[] = {S("kas-b"), S(entry(0xb, 99, 0, 1)), S("kas-c"),
                      S("junk")};
      if (kr__presence_job_feed(j, 0, h, 4) == 0 &&
          kr__presence_job_feed(j, 1, h, 4) == 1 &&
          kr__presence_job_step(j, 0, &c) == KR__PRESENCE_JOB_WAIT) {
        kr__pstr hbs[] = {S(hb(0xb, "u"))};
        if (kr__presence_job_feed(j, 0, hbs, 1) == 1 &&
            kr__presence_job_step(j, 0, &c) == KR__PRESENCE_JOB_DONE) {
          char *json = NULL;
          if (kr__presence_list_json(j, &json, NULL) == 0)
            kr__presence_json_free(p, json);
          else
            clean = 0;
        } else {
          clean = 0;
        }
      } else {
        clean = 0;
      }
    } else {
      clean = 0;
    }
    kr__presence_job_free(j);
  } else {
    clean = 0;
  }
  for (int i = 0; i < 100; i++) {
    int rc = kr__presence_shutdown(p, &c);
    if (rc == 0)
      break;
    if (rc < 0)
      clean = 0;
  }
  kr__presence_cmds_free(&c);
  kr__presence_free(p);
  return clean;
}

START_TEST(allocation_failures) {
  for (uint64_t fail = 1;; fail++) {
    kt_alloc al;
    kt_alloc_init(&al);
    al.fail_at = fail;
    int clean = alloc_scenario(&al);
    ck_assert_uint_eq(al.bytes, 0);
    ck_assert_uint_eq(al.blocks, 0);
    if (clean && al.failures == 0)
      break;
    ck_assert_uint_lt(fail, 10000);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("presence");
  KT_ADD(s, config_validation, 10);
  KT_ADD(s, register_writes_and_announces, 10);
  KT_ADD(s, replica_names_sanitised_and_capped, 10);
  KT_ADD(s, refresh_in_batches, 30);
  KT_ADD(s, disconnected_changes_apply_on_connect, 10);
  KT_ADD(s, heartbeat_replies, 10);
  KT_ADD(s, shutdown_in_chunks, 10);
  KT_ADD(s, max_agents_bound, 10);
  KT_ADD(s, from_registry, 10);
  KT_ADD(s, entry_codec, 10);
  KT_ADD(s, entry_decode_strict, 10);
  KT_ADD(s, heartbeat_and_wake_codecs, 10);
  KT_ADD(s, agent_keys, 10);
  KT_ADD(s, lookup_decisions, 10);
  KT_ADD(s, lookup_field_bound, 10);
  KT_ADD(s, candidate_order_weighted, 30);
  KT_ADD(s, sweep_steps, 10);
  KT_ADD(s, listing_aggregates, 10);
  KT_ADD(s, allocation_failures, 120);
  return kt_run_suite(s);
}
