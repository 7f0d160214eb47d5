/* libFuzzer target for the presence decoders and jobs
 * (lib/core/presence.c, presence_job.c): everything read from Redis.
 *
 * Input layout: byte 0 selects the mode (low 3 bits), the rest is text.
 *   0  an entry value: decode; a valid one re-encodes to a value that
 *      decodes to the same entry
 *   1  a heartbeat value
 *   2  a pub/sub reply: elements separated by '\n'
 *   3  a key for the agent-key parser
 *   4  lookup job   } replies separated by "\n--\n", elements of a
 *   5  sweep job    } reply by '\n' ("(nil)" is a nil element); each
 *   6  listing job  } OP_JOB command the job emits takes the next reply
 *   7  listing, max 2 agents
 * The presence state holds agents 1 and 2 (instance "kas-a", prefix "t:")
 * and the clock is 1000 ms, so own fields and expiry are exercised.
 *
 * Checks (a violation traps): return codes are the documented ones; a
 * failed job stays failed; every emitted command is well-formed (a known
 * verb, keys under the prefix); a finished job's counts add up; lookup
 * candidates have a URL, an instance other than this one and conns >= 1;
 * a finished listing is sorted, within its bound, and renders as JSON that
 * jansson reads back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/presence.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

#define MAX_ITEMS 4096
#define NOW 1000

static kr__presence *g_p;

static kr__presence *presence(void) {
  if (g_p != NULL)
    return g_p;
  kr__presence_config c;
  kr__presence_config_defaults(&c);
  c.prefix = "t:";
  c.instance = "kas-a";
  c.boot = 0xa;
  c.url = "tls://a:1";
  CHECK(kr__presence_new(NULL, &c, &g_p) == 0);
  kr__presence_cmds cmds;
  kr__presence_cmds_init(&cmds, NULL);
  kr__presence_set_connected(g_p, 1, 0);
  CHECK(kr__presence_agent_set(g_p, 1, 1, NULL, 0, 0, &cmds) == 0);
  CHECK(kr__presence_agent_set(g_p, 2, 3, NULL, 0, 0, &cmds) == 0);
  kr__presence_cmds_free(&cmds);
  return g_p;
}

/* Splits text into elements at '\n'; "(nil)" is nil. */
static size_t split(const char *s, size_t len, kr__pstr *out, size_t cap) {
  size_t n = 0, start = 0;
  if (len == 0)
    return 0;
  for (size_t i = 0; i <= len && n < cap; i++) {
    if (i == len || s[i] == '\n') {
      out[n].p = s + start;
      out[n].len = i - start;
      if (out[n].len == 5 && memcmp(out[n].p, "(nil)", 5) == 0)
        out[n].p = NULL;
      n++;
      start = i + 1;
    }
  }
  return n;
}

/* The reply starting at pos ends at the next "\n--\n" or at the end.
 * Returns where the following one starts. */
static size_t next_part(const char *text, size_t len, size_t pos,
                        size_t *plen) {
  for (size_t s = pos; s + 4 <= len; s++)
    if (memcmp(text + s, "\n--\n", 4) == 0) {
      *plen = s - pos;
      return s + 4;
    }
  *plen = len - pos;
  return len;
}

static int is_key(const char *s, size_t len) {
  return len > 2 && memcmp(s, "t:", 2) == 0;
}

static void check_cmds(const kr__presence_cmds *c) {
  for (size_t i = 0; i < c->n; i++) {
    kr__presence_cmd k;
    CHECK(kr__presence_cmds_get(c, i, &k) == 0);
    CHECK(k.argc >= 2);
    for (int a = 0; a < k.argc; a++)
      CHECK(k.argv[a][k.argvlen[a]] == '\0');
    const char *v = k.argv[0];
    if (strcmp(v, "EVAL") == 0) {
      CHECK(k.op == KR__PRESENCE_OP_WRITE && k.argc == 6);
      CHECK(is_key(k.argv[3], k.argvlen[3]));
    } else if (strcmp(v, "HGETALL") == 0 || strcmp(v, "MGET") == 0 ||
               strcmp(v, "SCAN") == 0 || strcmp(v, "SET") == 0) {
      CHECK(k.op == KR__PRESENCE_OP_JOB);
      if (strcmp(v, "SCAN") != 0)
        CHECK(is_key(k.argv[1], k.argvlen[1]));
    } else {
      CHECK(0);
    }
  }
}

static void check_listing(const kr__presence_job *j, size_t max) {
  size_t n = kr__presence_list_count(j);
  CHECK(n <= max);
  for (size_t i = 0; i < n; i++) {
    const kr__presence_listed_agent *a = kr__presence_list_agent(j, i);
    CHECK(a != NULL && a->agent_id > 0 && a->ninstances >= 1);
    CHECK(i == 0 || kr__presence_list_agent(j, i - 1)->agent_id < a->agent_id);
    uint64_t sum = 0;
    for (size_t k = 0; k < a->ninstances; k++) {
      CHECK(a->instances[k].conns >= 1 && a->instances[k].url != NULL);
      CHECK(a->instances[k].since_ms >= a->since_ms);
      sum += a->instances[k].conns;
    }
    CHECK(a->conns == (sum > UINT32_MAX ? UINT32_MAX : sum));
    for (size_t k = 0; k < a->nreplicas; k++)
      CHECK(a->replicas[k].name[0] != '\0' && a->replicas[k].conns >= 1);
  }
  CHECK(kr__presence_list_agent(j, n) == NULL);
  char *json = NULL;
  size_t len = 0;
  int rc = kr__presence_list_json(j, &json, &len);
  CHECK(rc == 0 || rc == KR_ENOMEM);
  if (rc == 0) {
    json_error_t err;
    json_t *v = json_loadb(json, len, 0, &err);
    CHECK(v != NULL && json_is_object(v));
    CHECK(json_array_size(json_object_get(v, "agents")) == n);
    json_decref(v);
    kr__presence_json_free(g_p, json);
  }
}

static void run_job(int mode, const char *text, size_t len) {
  kr__presence *p = presence();
  kr__presence_job *j = NULL;
  size_t max = mode == 7 ? 2 : 10000;
  int rc = mode == 4   ? kr__presence_lookup_new(p, 1 + (len % 3), &j)
           : mode == 5 ? kr__presence_sweep_new(p, &j)
                       : kr__presence_list_new(p, max, 0, &j);
  CHECK(rc == 0 && j != NULL);
  static kr__pstr items[MAX_ITEMS];
  kr__presence_cmds c;
  kr__presence_cmds_init(&c, NULL);
  size_t pos = 0;
  int done = 0, failed = 0;
  for (int round = 0; round < 64 && !done && !failed; round++) {
    kr__presence_cmds_clear(&c);
    rc = kr__presence_job_step(j, NOW, &c);
    CHECK(rc == KR__PRESENCE_JOB_WAIT || rc == KR__PRESENCE_JOB_DONE ||
          rc == KR_EPROTO || rc == KR_ENOMEM || rc == KR_ETOOBIG);
    if (rc < 0) {
      failed = rc;
      break;
    }
    check_cmds(&c);
    if (rc == KR__PRESENCE_JOB_DONE) {
      done = 1;
      break;
    }
    int complete = 0;
    for (size_t i = 0; i < c.n; i++) {
      kr__presence_cmd k;
      CHECK(kr__presence_cmds_get(&c, i, &k) == 0);
      if (k.op != KR__PRESENCE_OP_JOB)
        continue;
      CHECK(!complete);
      if (pos >= len) {
        /* Out of input: the job waits; stepping is refused. */
        CHECK(kr__presence_job_step(j, NOW, &c) == KR_ESTATE);
        goto out;
      }
      size_t plen;
      size_t next = next_part(text, len, pos, &plen);
      size_t n = split(text + pos, plen, items, MAX_ITEMS);
      pos = next;
      rc = kr__presence_job_feed(j, k.tag, items, n);
      CHECK(rc == 0 || rc == 1 || rc == KR_EPROTO || rc == KR_ENOMEM);
      if (rc < 0) {
        failed = rc;
        CHECK(kr__presence_job_feed(j, k.tag, items, n) == rc);
        CHECK(kr__presence_job_step(j, NOW, &c) == rc);
        goto out;
      }
      complete = rc == 1;
    }
    CHECK(complete);
  }
  if (done) {
    kr__presence_job_stats st;
    kr__presence_job_get_stats(j, &st);
    CHECK(st.live + st.stale + st.unknown == st.fields);
    if (mode == 4) {
      kr__presence_candidate cand[8];
      size_t n = kr__presence_lookup_candidates(j, len, cand, 8);
      CHECK(n <= st.live);
      for (size_t i = 0; i < n && i < 8; i++) {
        CHECK(cand[i].conns >= 1 && cand[i].url[0] != '\0');
        CHECK(strcmp(cand[i].instance, "kas-a") != 0);
      }
    } else if (mode >= 6) {
      check_listing(j, max);
    }
  }
out:
  kr__presence_cmds_free(&c);
  kr__presence_job_free(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  int mode = data[0] & 7;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  kr__presence *p = presence();
  switch (mode) {
  case 0: {
    kr__presence_entry e, e2;
    int rc = kr__presence_entry_decode(text, len, &e);
    CHECK(rc == 0 || rc == KR__PRESENCE_UNKNOWN || rc == KR_EPROTO ||
          rc == KR_ENOMEM);
    if (rc == 0) {
      char buf[KR__PRESENCE_ENTRY_MAX];
      int n = kr__presence_entry_encode(&e, buf, sizeof buf);
      CHECK(n > 0 || n == KR_ENOMEM);
      if (n > 0) {
        CHECK(kr__presence_entry_decode(buf, (size_t)n, &e2) == 0);
        CHECK(e2.boot == e.boot && e2.exp_ms == e.exp_ms &&
              e2.since_ms == e.since_ms && e2.conns == e.conns &&
              e2.nreplicas == e.nreplicas);
        for (size_t i = 0; i < e.nreplicas; i++)
          CHECK(strcmp(e.replicas[i].name, e2.replicas[i].name) == 0 &&
                e.replicas[i].conns == e2.replicas[i].conns &&
                e.replicas[i].since_ms == e2.replicas[i].since_ms);
      }
    }
    break;
  }
  case 1: {
    kr__presence_heartbeat h;
    int rc = kr__presence_heartbeat_decode(text, len, &h);
    CHECK(rc == 0 || rc == KR__PRESENCE_UNKNOWN || rc == KR_EPROTO ||
          rc == KR_ENOMEM);
    if (rc == 0)
      CHECK(h.boot != 0 && h.url[0] != '\0' &&
            strlen(h.url) <= KR__PRESENCE_URL_MAX);
    break;
  }
  case 2: {
    static kr__pstr items[8];
    size_t n = split(text, len, items, 8);
    kr__presence_wake w;
    int rc = kr__presence_wake_decode(p, items, n, &w);
    CHECK(rc == 0 || rc == KR__PRESENCE_IGNORE || rc == KR_EPROTO ||
          rc == KR_ENOMEM);
    if (rc == 0)
      CHECK(w.agent_id > 0 && w.boot != 0 && strcmp(w.instance, "kas-a") != 0 &&
            w.url[0] != '\0');
    break;
  }
  case 3: {
    int64_t id = 0;
    int rc = kr__presence_parse_agent_key(p, text, len, &id);
    CHECK(rc == 0 || rc == KR_EINVAL);
    if (rc == 0)
      CHECK(id > 0 && len > 8 && memcmp(text, "t:agent:", 8) == 0);
    break;
  }
  default:
    run_job(mode, text, len);
    break;
  }
  return 0;
}
