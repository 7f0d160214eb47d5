/* Cluster presence: configuration, the instance's held agents, command
 * encoding and the JSON codecs (see presence.h and docs/PRESENCE.md).
 *
 * Held agents live in an id table and in exactly one of two FIFO queues:
 *   dirty: to be written from r->t on (new while disconnected, changed
 *          counts, everything after a (re)connect, removals pending while
 *          disconnected);
 *   due:   written, next refresh at r->t. Every write sets t = now +
 *          refresh_period and appends, so the queue stays in due order
 *          and a tick only looks at its head.
 * Writes that fail to encode leave both the list and the state as they
 * were: commands are built first, state is changed only afterwards.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include <kasroute/error.h>

#include "mem_internal.h"
#include "presence_internal.h"

enum { Q_NONE = 0, Q_DUE, Q_DIRTY };

#define JSON_INT_MAX ((uint64_t)INT64_MAX)

/* ------------------------------------------------------------ commands */

struct kr__pcmd {
  size_t first; /* index of the first argument */
  int argc;
  kr__presence_op op;
  uint32_t tag;
};

void kr__presence_cmds_init(kr__presence_cmds *c, const kr_mem *mem) {
  memset(c, 0, sizeof(*c));
  c->mem = mem ? *mem : *kr_mem_default();
}

void kr__presence_cmds_clear(kr__presence_cmds *c) {
  c->n = 0;
  c->nargs = 0;
  c->argv_ok = 0;
  c->arena_len = 0;
  c->err = 0;
}

void kr__presence_cmds_free(kr__presence_cmds *c) {
  kr__free(&c->mem, c->arena);
  kr__free(&c->mem, c->arg_off);
  kr__free(&c->mem, c->arg_len);
  kr__free(&c->mem, (void *)c->argv);
  kr__free(&c->mem, c->cmd);
  kr_mem mem = c->mem;
  memset(c, 0, sizeof(*c));
  c->mem = mem;
}

int kr__presence_cmds_get(const kr__presence_cmds *c, size_t i,
                          kr__presence_cmd *out) {
  if (c == NULL || out == NULL || i >= c->n)
    return KR_EINVAL;
  const struct kr__pcmd *k = &c->cmd[i];
  out->argc = k->argc;
  out->argv = c->argv + k->first;
  out->argvlen = c->arg_len + k->first;
  out->op = k->op;
  out->tag = k->tag;
  return 0;
}

kr__pc_mark kr__pc_mark_get(const kr__presence_cmds *c) {
  kr__pc_mark m = {c->n, c->nargs, c->arena_len};
  return m;
}

/* Rolls back to m on a sticky error; otherwise points every new argv entry
 * into the arena (which may have moved while growing). */
int kr__pc_done(kr__presence_cmds *c, kr__pc_mark m) {
  if (c->err) {
    int err = c->err;
    c->n = m.n;
    c->nargs = m.nargs;
    c->arena_len = m.arena_len;
    if (c->argv_ok > c->nargs)
      c->argv_ok = c->nargs;
    c->err = 0;
    return err;
  }
  for (size_t i = c->argv_ok; i < c->nargs; i++)
    c->argv[i] = c->arena + c->arg_off[i];
  c->argv_ok = c->nargs;
  return 0;
}

/* Grows *arr (elements of size sz) to hold need; sticky KR_ENOMEM. */
static int grow(kr__presence_cmds *c, void **arr, size_t *cap, size_t need,
                size_t sz) {
  if (need <= *cap)
    return 0;
  size_t ncap = *cap ? *cap : 16;
  while (ncap < need) {
    if (ncap > SIZE_MAX / 2 / sz) {
      c->err = KR_ENOMEM;
      return -1;
    }
    ncap *= 2;
  }
  void *n = kr__realloc(&c->mem, *arr, ncap * sz);
  if (n == NULL) {
    c->err = KR_ENOMEM;
    return -1;
  }
  *arr = n;
  *cap = ncap;
  return 0;
}

void kr__pc_begin(kr__presence_cmds *c, kr__presence_op op, uint32_t tag) {
  if (c->err)
    return;
  size_t cap = c->cmd_cap;
  if (grow(c, (void **)&c->cmd, &cap, c->n + 1, sizeof(*c->cmd)) < 0)
    return;
  c->cmd_cap = cap;
  c->cmd[c->n].first = c->nargs;
  c->cmd[c->n].argc = 0;
  c->cmd[c->n].op = op;
  c->cmd[c->n].tag = tag;
}

/* Reserves room for one more argument of len bytes (+ NUL) and returns
 * where to write it, or NULL (sticky error). */
static char *arg_reserve(kr__presence_cmds *c, size_t len) {
  if (c->err)
    return NULL;
  if (len > KR__PRESENCE_CMDS_MAX_BYTES ||
      c->arena_len + len + 1 > KR__PRESENCE_CMDS_MAX_BYTES) {
    c->err = KR_ETOOBIG;
    return NULL;
  }
  if (c->nargs + 1 > c->args_cap) {
    size_t cap = c->args_cap, need = c->nargs + 1;
    size_t c1 = cap, c2 = cap;
    if (grow(c, (void **)&c->arg_off, &c1, need, sizeof(size_t)) < 0 ||
        grow(c, (void **)&c->arg_len, &c2, need, sizeof(size_t)) < 0)
      return NULL;
    size_t c3 = cap;
    if (grow(c, (void **)&c->argv, &c3, need, sizeof(char *)) < 0)
      return NULL;
    /* All three grew to the same capacity (same start, same rule). */
    c->args_cap = c1;
  }
  if (c->arena_len + len + 1 > c->arena_cap) {
    char *old = c->arena;
    size_t cap = c->arena_cap;
    if (grow(c, (void **)&c->arena, &cap, c->arena_len + len + 1, 1) < 0)
      return NULL;
    c->arena_cap = cap;
    if (c->arena != old)
      c->argv_ok = 0;
  }
  char *dst = c->arena + c->arena_len;
  c->arg_off[c->nargs] = c->arena_len;
  c->arg_len[c->nargs] = len;
  c->arena_len += len + 1;
  c->nargs++;
  c->cmd[c->n].argc++;
  dst[len] = '\0';
  return dst;
}

void kr__pc_arg(kr__presence_cmds *c, const void *p, size_t len) {
  char *dst = arg_reserve(c, len);
  if (dst != NULL && len > 0)
    memcpy(dst, p, len);
}

void kr__pc_arg_str(kr__presence_cmds *c, const char *s) {
  kr__pc_arg(c, s, strlen(s));
}

void kr__pc_arg_u64(kr__presence_cmds *c, uint64_t v) {
  char b[24];
  int n = snprintf(b, sizeof b, "%" PRIu64, v);
  kr__pc_arg(c, b, (size_t)n);
}

void kr__pc_arg_key(kr__presence_cmds *c, const kr__presence *p,
                    const char *mid, const char *tail, size_t tail_len) {
  size_t ml = strlen(mid);
  char *dst = arg_reserve(c, p->prefix_len + ml + tail_len);
  if (dst == NULL)
    return;
  memcpy(dst, p->prefix, p->prefix_len);
  memcpy(dst + p->prefix_len, mid, ml);
  if (tail_len > 0)
    memcpy(dst + p->prefix_len + ml, tail, tail_len);
}

void kr__pc_arg_agent_key(kr__presence_cmds *c, const kr__presence *p,
                          int64_t id) {
  char b[24];
  int n = snprintf(b, sizeof b, "%" PRId64, id);
  kr__pc_arg_key(c, p, "agent:", b, (size_t)n);
}

void kr__pc_end(kr__presence_cmds *c) {
  if (!c->err)
    c->n++;
}

/* ------------------------------------------------------------- helpers */

int kr__presence_name_ok(const char *s, size_t len, size_t max) {
  if (s == NULL || len == 0 || len > max)
    return 0;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
      return 0;
  return 1;
}

static void hex16(uint64_t v, char out[17]) {
  static const char d[] = "0123456789abcdef";
  for (int i = 15; i >= 0; i--) {
    out[i] = d[v & 0xf];
    v >>= 4;
  }
  out[16] = '\0';
}

/* 16 lowercase hex digits, not all zero. */
static int unhex16(const char *s, size_t len, uint64_t *out) {
  if (len != 16)
    return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < 16; i++) {
    char ch = s[i];
    unsigned d;
    if (ch >= '0' && ch <= '9')
      d = (unsigned)(ch - '0');
    else if (ch >= 'a' && ch <= 'f')
      d = (unsigned)(ch - 'a' + 10);
    else
      return -1;
    v = v << 4 | d;
  }
  if (v == 0)
    return -1;
  *out = v;
  return 0;
}

static uint64_t add_sat(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* ---------------------------------------------------------- JSON codecs */

/* Parses an object and checks "v": 0 (v == 1, *root set), UNKNOWN (an
 * integer v > 1), KR_EPROTO, KR_ENOMEM. */
static int load_versioned(const char *v, size_t len, size_t max,
                          json_t **root) {
  *root = NULL;
  if (v == NULL || len > max)
    return KR_EPROTO;
  json_error_t err;
  json_t *o = json_loadb(v, len, JSON_REJECT_DUPLICATES, &err);
  if (o == NULL)
    return json_error_code(&err) == json_error_out_of_memory ? KR_ENOMEM
                                                             : KR_EPROTO;
  json_t *ver = json_is_object(o) ? json_object_get(o, "v") : NULL;
  if (ver == NULL || !json_is_integer(ver) || json_integer_value(ver) < 1) {
    json_decref(o);
    return KR_EPROTO;
  }
  if (json_integer_value(ver) > 1) {
    json_decref(o);
    return KR__PRESENCE_UNKNOWN;
  }
  *root = o;
  return 0;
}

static int get_uint(const json_t *o, const char *key, uint64_t min,
                    uint64_t max, uint64_t *out) {
  const json_t *v = json_object_get(o, key);
  if (v == NULL || !json_is_integer(v))
    return -1;
  json_int_t i = json_integer_value(v);
  if (i < 0 || (uint64_t)i < min || (uint64_t)i > max)
    return -1;
  *out = (uint64_t)i;
  return 0;
}

/* A printable name of 1..max bytes copied NUL-terminated into out. */
static int get_name(const json_t *o, const char *key, size_t max, char *out) {
  const json_t *v = json_object_get(o, key);
  if (v == NULL || !json_is_string(v))
    return -1;
  const char *s = json_string_value(v);
  size_t n = json_string_length(v);
  if (!kr__presence_name_ok(s, n, max))
    return -1;
  memcpy(out, s, n);
  out[n] = '\0';
  return 0;
}

static int get_boot(const json_t *o, uint64_t *out) {
  const json_t *v = json_object_get(o, "boot");
  if (v == NULL || !json_is_string(v))
    return -1;
  return unhex16(json_string_value(v), json_string_length(v), out);
}

int kr__presence_entry_decode(const char *v, size_t len,
                              kr__presence_entry *out) {
  json_t *o;
  int rc = load_versioned(v, len, KR__PRESENCE_ENTRY_MAX, &o);
  if (rc != 0)
    return rc;
  kr__presence_entry e;
  memset(&e, 0, sizeof e);
  uint64_t conns;
  const json_t *reps = json_object_get(o, "replicas");
  rc = KR_EPROTO;
  if (get_boot(o, &e.boot) < 0 ||
      get_uint(o, "exp", 0, JSON_INT_MAX, &e.exp_ms) < 0 ||
      get_uint(o, "since", 0, JSON_INT_MAX, &e.since_ms) < 0 ||
      get_uint(o, "conns", 1, KR__PRESENCE_MAX_CONNS, &conns) < 0 ||
      reps == NULL || !json_is_array(reps) ||
      json_array_size(reps) > KR__PRESENCE_MAX_REPLICAS)
    goto out;
  e.conns = (uint32_t)conns;
  e.nreplicas = json_array_size(reps);
  for (size_t i = 0; i < e.nreplicas; i++) {
    const json_t *r = json_array_get(reps, i);
    uint64_t rc_conns;
    if (!json_is_object(r) ||
        get_name(r, "name", KR__PRESENCE_REPLICA_MAX, e.replicas[i].name) < 0 ||
        get_uint(r, "conns", 1, KR__PRESENCE_MAX_CONNS, &rc_conns) < 0 ||
        get_uint(r, "since", 0, JSON_INT_MAX, &e.replicas[i].since_ms) < 0)
      goto out;
    e.replicas[i].conns = (uint32_t)rc_conns;
  }
  if (out != NULL)
    *out = e;
  rc = 0;
out:
  json_decref(o);
  return rc;
}

/* Serialises o compactly into buf (at most min(cap, max) bytes); o is
 * consumed. Length, KR_ETOOBIG or KR_ENOMEM (o NULL: a failed build). */
static int dump_into(json_t *o, char *buf, size_t cap, size_t max) {
  if (o == NULL)
    return KR_ENOMEM;
  size_t n = json_dumpb(o, NULL, 0, JSON_COMPACT);
  int rc;
  if (n == 0)
    rc = KR_ENOMEM;
  else if (n > cap || n > max)
    rc = KR_ETOOBIG;
  else
    rc = json_dumpb(o, buf, n, JSON_COMPACT) == n ? (int)n : KR_ENOMEM;
  json_decref(o);
  return rc;
}

int kr__presence_entry_encode(const kr__presence_entry *e, char *buf,
                              size_t cap) {
  if (e == NULL || (buf == NULL && cap > 0) || e->boot == 0 ||
      e->exp_ms > JSON_INT_MAX || e->since_ms > JSON_INT_MAX || e->conns == 0 ||
      e->conns > KR__PRESENCE_MAX_CONNS ||
      e->nreplicas > KR__PRESENCE_MAX_REPLICAS)
    return KR_EINVAL;
  for (size_t i = 0; i < e->nreplicas; i++) {
    const kr__presence_replica *r = &e->replicas[i];
    if (!kr__presence_name_ok(r->name,
                              strnlen(r->name, KR__PRESENCE_REPLICA_MAX + 1),
                              KR__PRESENCE_REPLICA_MAX) ||
        r->conns == 0 || r->conns > KR__PRESENCE_MAX_CONNS ||
        r->since_ms > JSON_INT_MAX)
      return KR_EINVAL;
  }
  char boot[17];
  hex16(e->boot, boot);
  json_t *reps = json_array();
  for (size_t i = 0; reps != NULL && i < e->nreplicas; i++) {
    const kr__presence_replica *r = &e->replicas[i];
    if (json_array_append_new(reps,
                              json_pack("{s:s, s:I, s:I}", "name", r->name,
                                        "conns", (json_int_t)r->conns, "since",
                                        (json_int_t)r->since_ms)) != 0) {
      json_decref(reps);
      reps = NULL;
    }
  }
  if (reps == NULL)
    return KR_ENOMEM;
  /* "o" steals reps, also when json_pack fails. */
  json_t *o =
      json_pack("{s:i, s:s, s:I, s:I, s:I, s:o}", "v", 1, "boot", boot, "exp",
                (json_int_t)e->exp_ms, "since", (json_int_t)e->since_ms,
                "conns", (json_int_t)e->conns, "replicas", reps);
  return dump_into(o, buf, cap, KR__PRESENCE_ENTRY_MAX);
}

int kr__presence_heartbeat_decode(const char *v, size_t len,
                                  kr__presence_heartbeat *out) {
  json_t *o;
  int rc = load_versioned(v, len, KR__PRESENCE_HEARTBEAT_MAX, &o);
  if (rc != 0)
    return rc;
  kr__presence_heartbeat h;
  rc = KR_EPROTO;
  if (get_boot(o, &h.boot) == 0 &&
      get_name(o, "url", KR__PRESENCE_URL_MAX, h.url) == 0) {
    if (out != NULL)
      *out = h;
    rc = 0;
  }
  json_decref(o);
  return rc;
}

int kr__presence_wake_decode_msg(const char *v, size_t len,
                                 kr__presence_wake *out) {
  json_t *o;
  int rc = load_versioned(v, len, KR__PRESENCE_WAKE_MAX, &o);
  if (rc != 0)
    return rc;
  kr__presence_wake w;
  uint64_t id;
  rc = KR_EPROTO;
  if (get_uint(o, "agent", 1, JSON_INT_MAX, &id) == 0 &&
      get_boot(o, &w.boot) == 0 &&
      get_name(o, "instance", KR__PRESENCE_INSTANCE_MAX, w.instance) == 0 &&
      get_name(o, "url", KR__PRESENCE_URL_MAX, w.url) == 0) {
    w.agent_id = (int64_t)id;
    if (out != NULL)
      *out = w;
    rc = 0;
  }
  json_decref(o);
  return rc;
}

static int pstr_is(const kr__pstr *s, const char *a, size_t alen, const char *b,
                   size_t blen) {
  return s->p != NULL && s->len == alen + blen && memcmp(s->p, a, alen) == 0 &&
         (blen == 0 || memcmp(s->p + alen, b, blen) == 0);
}

int kr__presence_wake_decode(const kr__presence *p, const kr__pstr *items,
                             size_t n, kr__presence_wake *out) {
  if (p == NULL || (items == NULL && n > 0))
    return KR_EINVAL;
  if (n != 3 || !pstr_is(&items[0], "message", 7, "", 0) ||
      !pstr_is(&items[1], p->prefix, p->prefix_len, "wake", 4))
    return KR__PRESENCE_IGNORE;
  if (items[2].p == NULL)
    return KR_EPROTO;
  kr__presence_wake w;
  int rc = kr__presence_wake_decode_msg(items[2].p, items[2].len, &w);
  if (rc < 0)
    return rc == KR_ENOMEM ? rc : KR_EPROTO;
  if (rc == KR__PRESENCE_UNKNOWN || strcmp(w.instance, p->instance) == 0)
    return KR__PRESENCE_IGNORE;
  if (out != NULL)
    *out = w;
  return 0;
}

int kr__presence_parse_agent_key(const kr__presence *p, const char *key,
                                 size_t len, int64_t *id) {
  size_t pl = p->prefix_len;
  if (key == NULL || len <= pl + 6 || memcmp(key, p->prefix, pl) != 0 ||
      memcmp(key + pl, "agent:", 6) != 0)
    return KR_EINVAL;
  const char *d = key + pl + 6;
  size_t dl = len - pl - 6;
  if (dl > 19 || d[0] == '0')
    return KR_EINVAL;
  uint64_t v = 0;
  for (size_t i = 0; i < dl; i++) {
    if (d[i] < '0' || d[i] > '9')
      return KR_EINVAL;
    v = v * 10 + (uint64_t)(d[i] - '0'); /* 19 digits cannot overflow */
  }
  if (v > (uint64_t)INT64_MAX)
    return KR_EINVAL;
  if (id != NULL)
    *id = (int64_t)v;
  return 0;
}

/* ------------------------------------------------------- configuration */

void kr__presence_config_defaults(kr__presence_config *c) {
  memset(c, 0, sizeof(*c));
  c->heartbeat_period_ms = 2000;
  c->heartbeat_ttl_ms = 6000;
  c->refresh_period_ms = 150000;
  c->entry_ttl_ms = 360000;
  c->sweep_period_ms = 600000;
  c->dirty_delay_ms = 1000;
  c->batch_gap_ms = 5;
  c->batch_agents = 1000;
  c->scan_count = 200;
  c->max_agents = 1000000;
}

/* The periods are bounded so deadlines (now + period) cannot overflow for
 * any plausible clock and PX/PEXPIRE arguments stay within Redis's range. */
#define PERIOD_MAX (UINT64_C(1) << 40)

static int config_ok(const kr__presence_config *c) {
  const char *pre = c->prefix ? c->prefix : KR__PRESENCE_DEFAULT_PREFIX;
  size_t pl = strlen(pre);
  if (pl > KR__PRESENCE_PREFIX_MAX ||
      (pl > 0 && !kr__presence_name_ok(pre, pl, KR__PRESENCE_PREFIX_MAX)))
    return 0;
  if (c->instance == NULL || c->url == NULL ||
      !kr__presence_name_ok(c->instance, strlen(c->instance),
                            KR__PRESENCE_INSTANCE_MAX) ||
      !kr__presence_name_ok(c->url, strlen(c->url), KR__PRESENCE_URL_MAX))
    return 0;
  const uint64_t periods[] = {c->heartbeat_period_ms, c->heartbeat_ttl_ms,
                              c->refresh_period_ms,   c->entry_ttl_ms,
                              c->sweep_period_ms,     c->dirty_delay_ms,
                              c->batch_gap_ms};
  for (size_t i = 0; i < sizeof periods / sizeof periods[0]; i++)
    if (periods[i] == 0 || periods[i] > PERIOD_MAX)
      return 0;
  return c->boot != 0 && c->heartbeat_ttl_ms > c->heartbeat_period_ms &&
         c->entry_ttl_ms > c->refresh_period_ms && c->batch_agents > 0 &&
         c->scan_count > 0 && c->scan_count <= KR__PRESENCE_SCAN_COUNT_MAX &&
         c->max_agents > 0;
}

int kr__presence_new(const kr_mem *mem, const kr__presence_config *c,
                     kr__presence **out) {
  if (out == NULL)
    return KR_EINVAL;
  *out = NULL;
  if (c == NULL)
    return KR_EINVAL;
  if (!config_ok(c))
    return KR_ECONFIG;
  if (mem == NULL)
    mem = kr_mem_default();
  kr__presence *p = kr__calloc(mem, 1, sizeof(*p));
  if (p == NULL)
    return KR_ENOMEM;
  p->mem = *mem;
  p->cfg = *c;
  const char *pre = c->prefix ? c->prefix : KR__PRESENCE_DEFAULT_PREFIX;
  p->prefix_len = strlen(pre);
  memcpy(p->prefix, pre, p->prefix_len + 1);
  p->instance_len = strlen(c->instance);
  memcpy(p->instance, c->instance, p->instance_len + 1);
  p->url_len = strlen(c->url);
  memcpy(p->url, c->url, p->url_len + 1);
  p->cfg.prefix = p->prefix;
  p->cfg.instance = p->instance;
  p->cfg.url = p->url;
  hex16(c->boot, p->boot_hex);
  int n = dump_into(
      json_pack("{s:i, s:s, s:s}", "v", 1, "boot", p->boot_hex, "url", p->url),
      p->hb_json, sizeof p->hb_json, KR__PRESENCE_HEARTBEAT_MAX);
  if (n < 0) {
    kr__free(mem, p);
    return n == KR_ETOOBIG ? KR_ECONFIG : n;
  }
  p->hb_json_len = (size_t)n;
  *out = p;
  return 0;
}

static void rec_free(kr__presence *p, kr__prec *r) {
  kr__free(&p->mem, r->reps);
  kr__free(&p->mem, r);
}

void kr__presence_free(kr__presence *p) {
  if (p == NULL)
    return;
  for (size_t i = 0; i < p->cap; i++)
    if (p->slots[i])
      rec_free(p, p->slots[i]);
  kr__free(&p->mem, p->slots);
  kr__free(&p->mem, p);
}

const char *kr__presence_instance(const kr__presence *p) {
  return p->instance;
}

const char *kr__presence_url(const kr__presence *p) {
  return p->url;
}

size_t kr__presence_agent_count(const kr__presence *p) {
  return p->held;
}

/* ------------------------------------------------------------ id table */

static size_t home_of(int64_t id, size_t cap) {
  uint64_t x = (uint64_t)id; /* ids are often small and sequential */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9u;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebu;
  x ^= x >> 31;
  return (size_t)x & (cap - 1);
}

kr__prec *kr__presence_find(const kr__presence *p, int64_t id) {
  if (p->cap == 0)
    return NULL;
  for (size_t i = home_of(id, p->cap);; i = (i + 1) & (p->cap - 1)) {
    if (p->slots[i] == NULL)
      return NULL;
    if (p->slots[i]->id == id)
      return p->slots[i];
  }
}

int kr__presence_holds(const kr__presence *p, int64_t agent_id) {
  const kr__prec *r = p ? kr__presence_find(p, agent_id) : NULL;
  return r != NULL && !r->gone;
}

static void slot_put(kr__prec **slots, size_t cap, kr__prec *r) {
  size_t i = home_of(r->id, cap);
  while (slots[i])
    i = (i + 1) & (cap - 1);
  slots[i] = r;
}

static int table_resize(kr__presence *p, size_t cap) {
  kr__prec **slots = kr__calloc(&p->mem, cap, sizeof(*slots));
  if (slots == NULL)
    return KR_ENOMEM;
  for (size_t i = 0; i < p->cap; i++)
    if (p->slots[i])
      slot_put(slots, cap, p->slots[i]);
  kr__free(&p->mem, p->slots);
  p->slots = slots;
  p->cap = cap;
  return 0;
}

/* Room for one more record (load under 3/4). KR_ENOMEM: unchanged. */
static int table_reserve(kr__presence *p) {
  if ((p->count + 1) * 4 <= p->cap * 3)
    return 0;
  if (p->cap > SIZE_MAX / 4 / sizeof(kr__prec *))
    return KR_ENOMEM;
  return table_resize(p, p->cap ? p->cap * 2 : 16);
}

/* Backward-shift deletion: no tombstones. */
static void table_del(kr__presence *p, int64_t id) {
  size_t mask = p->cap - 1, i = home_of(id, p->cap);
  while (p->slots[i]->id != id)
    i = (i + 1) & mask;
  size_t hole = i;
  for (size_t j = (i + 1) & mask; p->slots[j]; j = (j + 1) & mask) {
    size_t home = home_of(p->slots[j]->id, p->cap);
    if (((j - home) & mask) >= ((j - hole) & mask)) {
      p->slots[hole] = p->slots[j];
      hole = j;
    }
  }
  p->slots[hole] = NULL;
  p->count--;
  if (p->cap > 64 && p->count * 8 < p->cap)
    (void)table_resize(p, p->cap / 4); /* best effort */
}

int kr__presence_each(const kr__presence *p,
                      int (*fn)(const kr__prec *r, void *ud), void *ud) {
  for (size_t i = 0; i < p->cap; i++) {
    const kr__prec *r = p->slots[i];
    if (r != NULL && !r->gone) {
      int rc = fn(r, ud);
      if (rc != 0)
        return rc;
    }
  }
  return 0;
}

/* -------------------------------------------------------------- queues */

static kr__pqueue *queue_of(kr__presence *p, int where) {
  return where == Q_DUE ? &p->due : where == Q_DIRTY ? &p->dirty : NULL;
}

static void q_unlink(kr__presence *p, kr__prec *r) {
  kr__pqueue *q = queue_of(p, r->where);
  if (q == NULL)
    return;
  if (r->prev)
    r->prev->next = r->next;
  else
    q->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    q->tail = r->prev;
  q->n--;
  r->prev = r->next = NULL;
  r->where = Q_NONE;
}

static void q_append(kr__presence *p, kr__prec *r, int where, uint64_t t) {
  q_unlink(p, r);
  kr__pqueue *q = queue_of(p, where);
  r->where = where;
  r->t = t;
  r->prev = q->tail;
  r->next = NULL;
  if (q->tail)
    q->tail->next = r;
  else
    q->head = r;
  q->tail = r;
  q->n++;
}

static void rec_remove(kr__presence *p, kr__prec *r) {
  q_unlink(p, r);
  table_del(p, r->id);
  if (!r->gone)
    p->held--;
  rec_free(p, r);
}

/* Every record becomes writable now (and is announced again): after a
 * (re)connect or a lost heartbeat, Redis may have lost what was written. */
static void resync(kr__presence *p, uint64_t now) {
  for (kr__prec *r = p->dirty.head; r; r = r->next) {
    r->t = now;
    r->announce = !r->gone;
  }
  while (p->due.head) {
    kr__prec *r = p->due.head;
    r->announce = 1;
    q_append(p, r, Q_DIRTY, now);
  }
}

/* --------------------------------------------------------------- writes */

static void emit_hdel(kr__presence_cmds *c, const kr__presence *p, int64_t id) {
  kr__pc_begin(c, KR__PRESENCE_OP_WRITE, 0);
  kr__pc_arg(c, "HDEL", 4);
  kr__pc_arg_agent_key(c, p, id);
  kr__pc_arg(c, p->instance, p->instance_len);
  kr__pc_end(c);
}

/* The commands that bring Redis to r's state at now: HDEL for a removal;
 * HSET + PEXPIRE (+ PUBLISH when announcing) otherwise. */
static void emit_write(kr__presence_cmds *c, const kr__presence *p,
                       const kr__prec *r, uint64_t now) {
  if (r->gone) {
    emit_hdel(c, p, r->id);
    return;
  }
  kr__presence_entry e;
  e.boot = p->cfg.boot;
  e.exp_ms = add_sat(now, p->cfg.entry_ttl_ms);
  e.since_ms = r->since_ms;
  e.conns = r->conns;
  e.nreplicas = r->nrep;
  if (r->nrep > 0)
    memcpy(e.replicas, r->reps, r->nrep * sizeof(*r->reps));
  char val[KR__PRESENCE_ENTRY_MAX];
  int n = kr__presence_entry_encode(&e, val, sizeof val);
  if (n < 0) {
    if (!c->err)
      c->err = n;
    return;
  }
  kr__pc_begin(c, KR__PRESENCE_OP_WRITE, 0);
  kr__pc_arg(c, "HSET", 4);
  kr__pc_arg_agent_key(c, p, r->id);
  kr__pc_arg(c, p->instance, p->instance_len);
  kr__pc_arg(c, val, (size_t)n);
  kr__pc_end(c);
  kr__pc_begin(c, KR__PRESENCE_OP_WRITE, 0);
  kr__pc_arg(c, "PEXPIRE", 7);
  kr__pc_arg_agent_key(c, p, r->id);
  kr__pc_arg_u64(c, p->cfg.entry_ttl_ms);
  kr__pc_end(c);
  if (!r->announce)
    return;
  char msg[KR__PRESENCE_WAKE_MAX];
  n = dump_into(json_pack("{s:i, s:I, s:s, s:s, s:s}", "v", 1, "agent",
                          (json_int_t)r->id, "instance", p->instance, "boot",
                          p->boot_hex, "url", p->url),
                msg, sizeof msg, KR__PRESENCE_WAKE_MAX);
  if (n < 0) {
    if (!c->err)
      c->err = n;
    return;
  }
  kr__pc_begin(c, KR__PRESENCE_OP_WRITE, 0);
  kr__pc_arg(c, "PUBLISH", 7);
  kr__pc_arg_key(c, p, "wake", "", 0);
  kr__pc_arg(c, msg, (size_t)n);
  kr__pc_end(c);
}

/* After r's commands went out: r is current until its next refresh. */
static void wrote(kr__presence *p, kr__prec *r, uint64_t now) {
  if (r->gone) {
    rec_remove(p, r);
    return;
  }
  r->announce = 0;
  q_append(p, r, Q_DUE, add_sat(now, p->cfg.refresh_period_ms));
}

/* ------------------------------------------------------- local changes */

static int reps_equal(const kr__presence_replica *a, size_t na,
                      const kr__presence_replica *b, size_t nb) {
  if (na != nb)
    return 0;
  for (size_t i = 0; i < na; i++)
    if (a[i].conns != b[i].conns || a[i].since_ms != b[i].since_ms ||
        strcmp(a[i].name, b[i].name) != 0)
      return 0;
  return 1;
}

/* A sanitised copy of reps: names cut to the maximum, bytes outside
 * 0x21..0x7e replaced by '_', empty names become "_", counts clamped. */
static int reps_copy(kr__presence *p, const kr__presence_replica *reps,
                     size_t n, kr__presence_replica **out) {
  *out = NULL;
  if (n == 0)
    return 0;
  kr__presence_replica *a = kr__calloc(&p->mem, n, sizeof(*a));
  if (a == NULL)
    return KR_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    size_t len = strnlen(reps[i].name, KR__PRESENCE_REPLICA_MAX);
    for (size_t j = 0; j < len; j++) {
      unsigned char ch = (unsigned char)reps[i].name[j];
      a[i].name[j] = ch < 0x21 || ch > 0x7e ? '_' : (char)ch;
    }
    if (len == 0)
      a[i].name[len++] = '_';
    a[i].name[len] = '\0';
    a[i].conns = reps[i].conns == 0 ? 1
                 : reps[i].conns > KR__PRESENCE_MAX_CONNS
                     ? KR__PRESENCE_MAX_CONNS
                     : reps[i].conns;
    a[i].since_ms =
        reps[i].since_ms > JSON_INT_MAX ? JSON_INT_MAX : reps[i].since_ms;
  }
  *out = a;
  return 0;
}

int kr__presence_agent_set(kr__presence *p, int64_t agent_id, uint32_t conns,
                           const kr__presence_replica *reps, size_t nreps,
                           uint64_t now_ms, kr__presence_cmds *out) {
  if (p == NULL || agent_id <= 0 || conns == 0 ||
      conns > KR__PRESENCE_MAX_CONNS || (reps == NULL && nreps > 0) ||
      (out == NULL && p->connected) || now_ms > JSON_INT_MAX)
    return KR_EINVAL;
  if (p->closed)
    return KR_ESTATE;
  if (nreps > KR__PRESENCE_MAX_REPLICAS)
    nreps = KR__PRESENCE_MAX_REPLICAS;
  kr__presence_replica *copy;
  int rc = reps_copy(p, reps, nreps, &copy);
  if (rc < 0)
    return rc;
  uint64_t since = now_ms;
  for (size_t i = 0; i < nreps; i++)
    if (copy[i].since_ms < since)
      since = copy[i].since_ms;

  kr__prec *r = kr__presence_find(p, agent_id);
  if (r != NULL && !r->gone) {
    if (r->conns == conns && reps_equal(r->reps, r->nrep, copy, nreps)) {
      kr__free(&p->mem, copy);
      return 0;
    }
    kr__free(&p->mem, r->reps);
    r->reps = copy;
    r->nrep = nreps;
    r->conns = conns;
    if (nreps > 0)
      r->since_ms = since;
    if (r->where == Q_DUE)
      q_append(p, r, Q_DIRTY, add_sat(now_ms, p->cfg.dirty_delay_ms));
    return 0;
  }

  /* First tunnel here (or back before a pending removal was written). */
  kr__prec *fresh = NULL;
  if (r == NULL) {
    if (p->held >= p->cfg.max_agents) {
      kr__free(&p->mem, copy);
      return KR_ETOOBIG;
    }
    fresh = kr__calloc(&p->mem, 1, sizeof(*fresh));
    if (fresh == NULL || table_reserve(p) < 0) {
      kr__free(&p->mem, fresh);
      kr__free(&p->mem, copy);
      return KR_ENOMEM;
    }
    fresh->id = agent_id;
  }
  kr__prec view = r ? *r : *fresh;
  view.gone = 0;
  view.announce = 1;
  view.conns = conns;
  view.since_ms = since;
  view.nrep = nreps;
  view.reps = copy;
  if (p->connected) {
    kr__pc_mark m = kr__pc_mark_get(out);
    emit_write(out, p, &view, now_ms);
    rc = kr__pc_done(out, m);
    if (rc < 0) {
      kr__free(&p->mem, fresh);
      kr__free(&p->mem, copy);
      return rc;
    }
  }
  if (fresh != NULL) {
    slot_put(p->slots, p->cap, fresh);
    p->count++;
    r = fresh;
  }
  kr__free(&p->mem, r->reps);
  r->gone = 0;
  r->announce = 1;
  r->conns = conns;
  r->since_ms = since;
  r->nrep = nreps;
  r->reps = copy;
  p->held++;
  if (p->connected)
    wrote(p, r, now_ms);
  else if (r->where != Q_DIRTY)
    q_append(p, r, Q_DIRTY, now_ms);
  return 0;
}

int kr__presence_agent_set_from_registry(
    kr__presence *p, const kr__registry *reg, int64_t agent_id,
    kr_time_us mono_now_us, uint64_t now_ms, kr__presence_cmds *out) {
  if (p == NULL || reg == NULL)
    return KR_EINVAL;
  size_t n = kr__registry_agent_tunnels(reg, agent_id, NULL, 0);
  if (n == 0)
    return kr__presence_agent_gone(p, agent_id, out);
  kr__tunnel_info *ti = kr__calloc(&p->mem, n, sizeof(*ti));
  if (ti == NULL)
    return KR_ENOMEM;
  n = kr__registry_agent_tunnels(reg, agent_id, ti, n);
  kr__presence_replica reps[KR__PRESENCE_MAX_REPLICAS];
  size_t nrep = 0;
  /* The registry lists tunnels grouped by replica. */
  for (size_t i = 0; i < n;) {
    size_t j = i;
    kr_time_us first = ti[i].connected_since;
    while (j < n && strcmp(ti[j].replica_name, ti[i].replica_name) == 0) {
      if (ti[j].connected_since < first)
        first = ti[j].connected_since;
      j++;
    }
    if (nrep < KR__PRESENCE_MAX_REPLICAS) {
      kr__presence_replica *r = &reps[nrep++];
      snprintf(r->name, sizeof r->name, "%s", ti[i].replica_name);
      r->conns = (uint32_t)(j - i);
      uint64_t age_ms = first <= mono_now_us ? (mono_now_us - first) / 1000 : 0;
      r->since_ms = age_ms <= now_ms ? now_ms - age_ms : 0;
    }
    i = j;
  }
  kr__free(&p->mem, ti);
  uint32_t conns =
      n > KR__PRESENCE_MAX_CONNS ? KR__PRESENCE_MAX_CONNS : (uint32_t)n;
  return kr__presence_agent_set(p, agent_id, conns, reps, nrep, now_ms, out);
}

int kr__presence_agent_gone(kr__presence *p, int64_t agent_id,
                            kr__presence_cmds *out) {
  if (p == NULL || agent_id <= 0 || (out == NULL && p->connected))
    return KR_EINVAL;
  if (p->closed)
    return KR_ESTATE;
  kr__prec *r = kr__presence_find(p, agent_id);
  if (p->connected) {
    kr__pc_mark m = kr__pc_mark_get(out);
    emit_hdel(out, p, agent_id);
    int rc = kr__pc_done(out, m);
    if (rc < 0)
      return rc;
    if (r != NULL)
      rec_remove(p, r);
    return 0;
  }
  if (r != NULL && !r->gone) {
    kr__free(&p->mem, r->reps);
    r->reps = NULL;
    r->nrep = 0;
    r->gone = 1;
    r->announce = 0;
    p->held--;
    if (r->where != Q_DIRTY)
      q_append(p, r, Q_DIRTY, 0);
  }
  return 0;
}

void kr__presence_set_connected(kr__presence *p, int up, uint64_t now_ms) {
  if (p == NULL)
    return;
  if (!up) {
    p->connected = 0;
    return;
  }
  if (p->connected || p->closed)
    return;
  p->connected = 1;
  p->hb_seen = 0;
  p->hb_next = now_ms;
  p->sweep_next = add_sat(now_ms, p->cfg.heartbeat_ttl_ms);
  resync(p, now_ms);
}

/* Due at now, also when the clock stepped back by more than a period (the
 * stored time is then in a future that would never come). */
static int due(uint64_t t, uint64_t now, uint64_t period) {
  return t <= now || t > add_sat(now, period);
}

int kr__presence_tick(kr__presence *p, uint64_t now_ms, kr__presence_cmds *out,
                      uint64_t *next_ms) {
  if (next_ms != NULL)
    *next_ms = UINT64_MAX;
  if (p == NULL || out == NULL)
    return KR_EINVAL;
  if (!p->connected || p->closed)
    return 0;
  const kr__presence_config *c = &p->cfg;
  kr__pc_mark m = kr__pc_mark_get(out);
  int hb = due(p->hb_next, now_ms, c->heartbeat_period_ms);
  if (hb) {
    kr__pc_begin(out, KR__PRESENCE_OP_HEARTBEAT, 0);
    kr__pc_arg(out, "SET", 3);
    kr__pc_arg_key(out, p, "instance:", p->instance, p->instance_len);
    kr__pc_arg(out, p->hb_json, p->hb_json_len);
    kr__pc_arg(out, "PX", 2);
    kr__pc_arg_u64(out, c->heartbeat_ttl_ms);
    kr__pc_arg(out, "GET", 3);
    kr__pc_end(out);
  }
  size_t kd = 0, kq = 0;
  const kr__prec *r;
  for (r = p->dirty.head;
       r && kd < c->batch_agents && due(r->t, now_ms, c->dirty_delay_ms);
       r = r->next, kd++)
    emit_write(out, p, r, now_ms);
  for (r = p->due.head; r && kd + kq < c->batch_agents &&
                        due(r->t, now_ms, c->refresh_period_ms);
       r = r->next, kq++)
    emit_write(out, p, r, now_ms);
  int rc = kr__pc_done(out, m);
  if (rc < 0)
    return rc;

  if (hb)
    p->hb_next = add_sat(now_ms, c->heartbeat_period_ms);
  for (size_t i = 0; i < kq; i++) /* before the dirty ones join the queue */
    wrote(p, p->due.head, now_ms);
  for (size_t i = 0; i < kd; i++)
    wrote(p, p->dirty.head, now_ms);
  int flags = 0;
  if (due(p->sweep_next, now_ms, c->sweep_period_ms)) {
    flags |= KR__PRESENCE_TICK_SWEEP;
    p->sweep_next = add_sat(now_ms, c->sweep_period_ms);
  }
  if (next_ms != NULL) {
    /* Writes still due now: the batch was full; pause, then go on. */
    int more =
        (p->dirty.head && due(p->dirty.head->t, now_ms, c->dirty_delay_ms)) ||
        (p->due.head && due(p->due.head->t, now_ms, c->refresh_period_ms));
    uint64_t next = p->hb_next < p->sweep_next ? p->hb_next : p->sweep_next;
    if (p->dirty.head && p->dirty.head->t < next)
      next = p->dirty.head->t;
    if (p->due.head && p->due.head->t < next)
      next = p->due.head->t;
    *next_ms = more ? add_sat(now_ms, c->batch_gap_ms) : next;
  }
  return flags;
}

int kr__presence_heartbeat_reply(kr__presence *p, const kr__pstr *old,
                                 uint64_t now_ms) {
  if (p == NULL)
    return KR_EINVAL;
  if (p->closed || !p->connected)
    return 0;
  int seen = p->hb_seen;
  p->hb_seen = 1;
  if (old == NULL || old->p == NULL) {
    if (!seen)
      return 0; /* first since connecting: everything is being rewritten */
    resync(p, now_ms);
    return KR__PRESENCE_LOST;
  }
  kr__presence_heartbeat h;
  int rc = kr__presence_heartbeat_decode(old->p, old->len, &h);
  if (rc == 0 && h.boot != p->cfg.boot && seen)
    return KR_ESTATE;
  return 0;
}

int kr__presence_shutdown(kr__presence *p, kr__presence_cmds *out) {
  if (p == NULL || out == NULL)
    return KR_EINVAL;
  if (p->closed)
    return 0;
  if (!p->connected) {
    while (p->dirty.head)
      rec_remove(p, p->dirty.head);
    while (p->due.head)
      rec_remove(p, p->due.head);
    p->closed = 1;
    return 0;
  }
  size_t limit = (size_t)p->cfg.batch_agents * 8, k = 0;
  kr__pc_mark m = kr__pc_mark_get(out);
  const kr__prec *r;
  for (r = p->dirty.head; r && k < limit; r = r->next, k++)
    emit_hdel(out, p, r->id);
  for (r = p->due.head; r && k < limit; r = r->next, k++)
    emit_hdel(out, p, r->id);
  size_t remaining = p->dirty.n + p->due.n - k;
  if (remaining == 0) {
    kr__pc_begin(out, KR__PRESENCE_OP_WRITE, 0);
    kr__pc_arg(out, "DEL", 3);
    kr__pc_arg_key(out, p, "instance:", p->instance, p->instance_len);
    kr__pc_end(out);
  }
  int rc = kr__pc_done(out, m);
  if (rc < 0)
    return rc;
  for (size_t i = 0; i < k; i++)
    rec_remove(p, p->dirty.head ? p->dirty.head : p->due.head);
  if (remaining == 0)
    p->closed = 1;
  return remaining > INT32_MAX ? INT32_MAX : (int)remaining;
}

int kr__presence_subscribe(const kr__presence *p, kr__presence_cmds *out) {
  if (p == NULL || out == NULL)
    return KR_EINVAL;
  kr__pc_mark m = kr__pc_mark_get(out);
  kr__pc_begin(out, KR__PRESENCE_OP_SUBSCRIBE, 0);
  kr__pc_arg(out, "SUBSCRIBE", 9);
  kr__pc_arg_key(out, p, "wake", "", 0);
  kr__pc_end(out);
  return kr__pc_done(out, m);
}
