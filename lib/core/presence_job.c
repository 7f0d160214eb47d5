/* Multi-step presence reads: lookup, sweep, listing (see presence.h).
 *
 * A job alternates between emitting the commands of a step and receiving
 * their replies. One step reads a set of agent hashes (one for a lookup,
 * the keys of one SCAN reply otherwise): HGETALL each, then one MGET of
 * the heartbeats of instances the job has not seen yet (heartbeats are
 * remembered for the whole job, so a sweep over thousands of agents held
 * by ten instances fetches ten heartbeats), then a decision per field.
 * Field names and values of a step are copied into a per-step pool (they
 * are needed for the compare-and-delete), bounded by
 * KR__PRESENCE_STEP_MAX_BYTES; instance names, URLs and listing strings
 * live in a pool that lasts as long as the job.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <kasroute/error.h>

#include "mem_internal.h"
#include "presence_internal.h"

enum { K_LOOKUP, K_SWEEP, K_LIST };
enum {
  PH_START,
  PH_LOCK,
  PH_SCAN,
  PH_HASHES,
  PH_HB,
  PH_FINISH,
  PH_DONE,
  PH_FAILED
};
/* Instance heartbeat states. */
enum { I_NEED, I_PENDING, I_ALIVE, I_DEAD, I_UNKNOWN };
/* Field classes: after the read (F_STALE, F_UNKNOWN, F_CHECK, F_SELF), and
 * after the decision (F_LIVE, F_SELF_LIVE, F_STALE, F_UNKNOWN). */
enum { F_STALE, F_UNKNOWN, F_CHECK, F_SELF, F_LIVE, F_SELF_LIVE };

/* Compare-and-delete: the field goes only if it still holds the value
 * that was judged stale. */
static const char cas_script[] =
    "if redis.call('HGET',KEYS[1],ARGV[1])==ARGV[2] then "
    "return redis.call('HDEL',KEYS[1],ARGV[1]) end return 0";

typedef struct spool_block {
  struct spool_block *next;
  size_t used, cap;
  char data[];
} spool_block;

typedef struct spool {
  spool_block *head;
  size_t bytes;
} spool;

typedef struct jinst {
  const char *name;
  size_t len;
  int state;
  uint64_t boot;
  const char *url;
} jinst;

typedef struct jfield {
  const char *name, *val; /* NULL when over the step's byte bound */
  size_t name_len, val_len;
  int cls;
  int32_t inst; /* index into in[] for F_CHECK */
  uint64_t boot, exp, since;
  uint32_t conns;
} jfield;

typedef struct jhash {
  int64_t id;
  size_t first, n; /* fields */
} jhash;

typedef struct amap_slot {
  int64_t id;
  size_t idx1; /* agent index + 1; 0: empty */
} amap_slot;

struct kr__presence_job {
  kr__presence *p;
  int kind, phase, err;
  int awaiting;
  uint32_t expect, got;
  uint8_t *seen;
  size_t seen_cap;
  int64_t agent_id;
  char cursor[24];
  int scan_end;
  /* The current step. */
  jhash *h;
  size_t nh, hcap;
  jfield *f;
  size_t nf, fcap;
  spool step;
  /* Heartbeats seen by the job: in[] plus an index (slots hold i + 1). */
  jinst *in;
  size_t nin, incap;
  uint32_t *islot;
  size_t iscap;
  uint32_t *mget;
  size_t nmget, mcap;
  spool keep;
  /* Lookup result. */
  kr__presence_candidate *cand;
  size_t ncand;
  /* Listing. */
  size_t max_agents;
  int local_only, truncated;
  size_t list_bytes;
  kr__presence_listed_agent *ag;
  size_t nag, agcap;
  amap_slot *amap;
  size_t amap_cap;
  kr__presence_job_stats st;
};

/* -------------------------------------------------------------- memory */

static const kr_mem *mem_of(const kr__presence_job *j) {
  return &j->p->mem;
}

static int vgrow(const kr_mem *mem, void **arr, size_t *cap, size_t need,
                 size_t sz) {
  if (need <= *cap)
    return 0;
  size_t ncap = *cap ? *cap : 8;
  while (ncap < need) {
    if (ncap > SIZE_MAX / 2 / sz)
      return KR_ENOMEM;
    ncap *= 2;
  }
  void *n = kr__realloc(mem, *arr, ncap * sz);
  if (n == NULL)
    return KR_ENOMEM;
  *arr = n;
  *cap = ncap;
  return 0;
}

/* A NUL-terminated copy of s[0..len) that lives until the pool is
 * released; NULL on allocation failure. */
static char *spool_dup(const kr_mem *mem, spool *sp, const char *s,
                       size_t len) {
  spool_block *b = sp->head;
  if (b == NULL || b->cap - b->used < len + 1) {
    size_t cap = len + 1 > 16384 ? len + 1 : 16384;
    b = kr__malloc(mem, sizeof(*b) + cap);
    if (b == NULL)
      return NULL;
    b->used = 0;
    b->cap = cap;
    if (len + 1 > 4096 && sp->head != NULL) {
      /* A big string gets its own block behind the current one, so the
       * current block's free space stays usable. */
      b->next = sp->head->next;
      sp->head->next = b;
    } else {
      b->next = sp->head;
      sp->head = b;
    }
  }
  char *d = b->data + b->used;
  if (len > 0)
    memcpy(d, s, len);
  d[len] = '\0';
  b->used += len + 1;
  sp->bytes += len + 1;
  return d;
}

static void spool_free(const kr_mem *mem, spool *sp) {
  while (sp->head) {
    spool_block *b = sp->head;
    sp->head = b->next;
    kr__free(mem, b);
  }
  sp->bytes = 0;
}

/* ------------------------------------------------------ instance cache */

static size_t name_hash(const char *s, size_t len) {
  uint64_t x = 0xcbf29ce484222325u; /* FNV-1a */
  for (size_t i = 0; i < len; i++) {
    x ^= (unsigned char)s[i];
    x *= 0x100000001b3u;
  }
  return (size_t)(x ^ (x >> 32));
}

/* Index of the instance named s, added in state I_NEED when new; -1 when
 * the job already tracks KR__PRESENCE_JOB_MAX_INSTANCES; KR_ENOMEM. */
static int inst_get(kr__presence_job *j, const char *s, size_t len) {
  if (j->iscap == 0) {
    j->iscap = 2 * KR__PRESENCE_JOB_MAX_INSTANCES;
    j->islot = kr__calloc(mem_of(j), j->iscap, sizeof(*j->islot));
    if (j->islot == NULL) {
      j->iscap = 0;
      return KR_ENOMEM;
    }
  }
  size_t mask = j->iscap - 1, i = name_hash(s, len) & mask;
  for (; j->islot[i]; i = (i + 1) & mask) {
    const jinst *in = &j->in[j->islot[i] - 1];
    if (in->len == len && memcmp(in->name, s, len) == 0)
      return (int)(j->islot[i] - 1);
  }
  if (j->nin >= KR__PRESENCE_JOB_MAX_INSTANCES)
    return -1;
  if (vgrow(mem_of(j), (void **)&j->in, &j->incap, j->nin + 1, sizeof(*j->in)) <
      0)
    return KR_ENOMEM;
  char *name = spool_dup(mem_of(j), &j->keep, s, len);
  if (name == NULL)
    return KR_ENOMEM;
  jinst *in = &j->in[j->nin];
  memset(in, 0, sizeof(*in));
  in->name = name;
  in->len = len;
  in->state = I_NEED;
  j->islot[i] = (uint32_t)++j->nin;
  return (int)(j->nin - 1);
}

/* ---------------------------------------------------------- agent map */

static size_t id_home(int64_t id, size_t cap) {
  uint64_t x = (uint64_t)id * 0x9e3779b97f4a7c15u;
  return (size_t)(x ^ (x >> 29)) & (cap - 1);
}

static size_t amap_get(const kr__presence_job *j, int64_t id) {
  if (j->amap_cap == 0)
    return 0;
  for (size_t i = id_home(id, j->amap_cap);; i = (i + 1) & (j->amap_cap - 1)) {
    if (j->amap[i].idx1 == 0)
      return 0;
    if (j->amap[i].id == id)
      return j->amap[i].idx1;
  }
}

static int amap_put(kr__presence_job *j, int64_t id, size_t idx1) {
  if ((j->nag + 1) * 4 > j->amap_cap * 3) {
    size_t cap = j->amap_cap ? j->amap_cap * 2 : 64;
    amap_slot *n = kr__calloc(mem_of(j), cap, sizeof(*n));
    if (n == NULL)
      return KR_ENOMEM;
    for (size_t k = 0; k < j->amap_cap; k++) {
      if (j->amap[k].idx1 == 0)
        continue;
      size_t i = id_home(j->amap[k].id, cap);
      while (n[i].idx1)
        i = (i + 1) & (cap - 1);
      n[i] = j->amap[k];
    }
    kr__free(mem_of(j), j->amap);
    j->amap = n;
    j->amap_cap = cap;
  }
  size_t i = id_home(id, j->amap_cap);
  while (j->amap[i].idx1)
    i = (i + 1) & (j->amap_cap - 1);
  j->amap[i].id = id;
  j->amap[i].idx1 = idx1;
  return 0;
}

/* ----------------------------------------------------------- lifecycle */

static int job_new(kr__presence *p, int kind, kr__presence_job **out) {
  if (out == NULL)
    return KR_EINVAL;
  *out = NULL;
  if (p == NULL)
    return KR_EINVAL;
  kr__presence_job *j = kr__calloc(&p->mem, 1, sizeof(*j));
  if (j == NULL)
    return KR_ENOMEM;
  j->p = p;
  j->kind = kind;
  j->phase = PH_START;
  memcpy(j->cursor, "0", 2);
  *out = j;
  return 0;
}

int kr__presence_lookup_new(kr__presence *p, int64_t agent_id,
                            kr__presence_job **out) {
  if (agent_id <= 0) {
    if (out)
      *out = NULL;
    return KR_EINVAL;
  }
  int rc = job_new(p, K_LOOKUP, out);
  if (rc == 0)
    (*out)->agent_id = agent_id;
  return rc;
}

int kr__presence_sweep_new(kr__presence *p, kr__presence_job **out) {
  return job_new(p, K_SWEEP, out);
}

int kr__presence_list_new(kr__presence *p, size_t max_agents, int local_only,
                          kr__presence_job **out) {
  int rc = job_new(p, K_LIST, out);
  if (rc == 0) {
    (*out)->max_agents = max_agents ? max_agents : 10000;
    (*out)->local_only = local_only;
  }
  return rc;
}

void kr__presence_job_free(kr__presence_job *j) {
  if (j == NULL)
    return;
  const kr_mem *mem = mem_of(j);
  for (size_t i = 0; i < j->nag; i++) {
    kr__free(mem, j->ag[i].instances);
    kr__free(mem, j->ag[i].replicas);
  }
  kr__free(mem, j->ag);
  kr__free(mem, j->amap);
  kr__free(mem, j->cand);
  kr__free(mem, j->mget);
  kr__free(mem, j->islot);
  kr__free(mem, j->in);
  kr__free(mem, j->f);
  kr__free(mem, j->h);
  kr__free(mem, j->seen);
  spool_free(mem, &j->step);
  spool_free(mem, &j->keep);
  kr__free(mem, j);
}

static int fail(kr__presence_job *j, int err) {
  j->phase = PH_FAILED;
  j->err = err;
  j->awaiting = 0;
  return err;
}

/* Replies tagged 0..k-1 are awaited in phase ph. */
static int await(kr__presence_job *j, int ph, uint32_t k) {
  if (vgrow(mem_of(j), (void **)&j->seen, &j->seen_cap, k, 1) < 0)
    return KR_ENOMEM;
  memset(j->seen, 0, k);
  j->phase = ph;
  j->awaiting = 1;
  j->expect = k;
  j->got = 0;
  return 0;
}

static void step_reset(kr__presence_job *j) {
  j->nh = 0;
  j->nf = 0;
  j->nmget = 0;
  spool_free(mem_of(j), &j->step);
}

/* ------------------------------------------------------------- replies */

static int feed_lock(kr__presence_job *j, const kr__pstr *it, size_t n) {
  if (n != 1)
    return KR_EPROTO;
  if (it[0].p == NULL)
    return 0; /* another instance sweeps this period */
  if (it[0].len != 2 || memcmp(it[0].p, "OK", 2) != 0)
    return KR_EPROTO;
  j->st.lock_held = 1;
  return 0;
}

static int add_hash(kr__presence_job *j, int64_t id) {
  if (vgrow(mem_of(j), (void **)&j->h, &j->hcap, j->nh + 1, sizeof(*j->h)) < 0)
    return KR_ENOMEM;
  jhash *h = &j->h[j->nh++];
  h->id = id;
  h->first = 0;
  h->n = 0;
  return 0;
}

static int feed_scan(kr__presence_job *j, const kr__pstr *it, size_t n) {
  if (n < 1 || it[0].p == NULL || it[0].len == 0 || it[0].len > 20)
    return KR_EPROTO;
  uint64_t v = 0;
  for (size_t i = 0; i < it[0].len; i++) {
    char ch = it[0].p[i];
    if (ch < '0' || ch > '9')
      return KR_EPROTO;
    uint64_t d = (uint64_t)(ch - '0');
    if (v > (UINT64_MAX - d) / 10)
      return KR_EPROTO;
    v = v * 10 + d;
  }
  memcpy(j->cursor, it[0].p, it[0].len);
  j->cursor[it[0].len] = '\0';
  j->scan_end = v == 0;
  for (size_t i = 1; i < n; i++) {
    int64_t id;
    if (i > KR__PRESENCE_SCAN_MAX_KEYS ||
        kr__presence_parse_agent_key(j->p, it[i].p, it[i].len, &id) < 0) {
      j->st.ignored_keys++;
      continue;
    }
    if (add_hash(j, id) < 0)
      return KR_ENOMEM;
  }
  return 0;
}

/* Reads one field of hash h: copies it, decodes the entry, and sets what
 * the decision will need (the instance whose heartbeat counts). */
static int read_field(kr__presence_job *j, const kr__pstr *name,
                      const kr__pstr *val) {
  if (vgrow(mem_of(j), (void **)&j->f, &j->fcap, j->nf + 1, sizeof(*j->f)) < 0)
    return KR_ENOMEM;
  jfield *f = &j->f[j->nf++];
  memset(f, 0, sizeof(*f));
  f->inst = -1;
  j->st.fields++;
  if (name->p == NULL || val->p == NULL ||
      j->step.bytes + name->len + val->len + 2 > KR__PRESENCE_STEP_MAX_BYTES) {
    f->cls = F_UNKNOWN;
    return 0;
  }
  char *nc = spool_dup(mem_of(j), &j->step, name->p, name->len);
  char *vc = nc ? spool_dup(mem_of(j), &j->step, val->p, val->len) : NULL;
  if (vc == NULL)
    return KR_ENOMEM;
  f->name = nc;
  f->name_len = name->len;
  f->val = vc;
  f->val_len = val->len;
  if (!kr__presence_name_ok(nc, name->len, KR__PRESENCE_INSTANCE_MAX)) {
    f->cls = F_STALE;
    return 0;
  }
  kr__presence_entry e;
  int rc = kr__presence_entry_decode(vc, val->len, &e);
  if (rc == KR_ENOMEM)
    return rc;
  if (rc < 0) {
    f->cls = F_STALE;
    return 0;
  }
  if (rc == KR__PRESENCE_UNKNOWN) {
    f->cls = F_UNKNOWN;
    return 0;
  }
  f->boot = e.boot;
  f->exp = e.exp_ms;
  f->since = e.since_ms;
  f->conns = e.conns;
  if (name->len == j->p->instance_len &&
      memcmp(nc, j->p->instance, name->len) == 0) {
    f->cls = F_SELF;
    return 0;
  }
  int idx = inst_get(j, nc, name->len);
  if (idx == KR_ENOMEM)
    return idx;
  f->cls = idx < 0 ? F_UNKNOWN : F_CHECK;
  f->inst = idx;
  return 0;
}

static int feed_hash(kr__presence_job *j, uint32_t tag, const kr__pstr *it,
                     size_t n) {
  if (n == 1 && it[0].p == NULL)
    n = 0; /* nil: no such hash */
  if (n % 2 != 0)
    return KR_EPROTO;
  jhash *h = &j->h[tag];
  h->first = j->nf;
  j->st.keys++;
  size_t pairs = n / 2;
  if (pairs > KR__PRESENCE_MAX_FIELDS) {
    j->st.fields += pairs - KR__PRESENCE_MAX_FIELDS;
    j->st.unknown += pairs - KR__PRESENCE_MAX_FIELDS;
    pairs = KR__PRESENCE_MAX_FIELDS;
  }
  for (size_t i = 0; i < pairs; i++) {
    int rc = read_field(j, &it[2 * i], &it[2 * i + 1]);
    if (rc < 0)
      return rc;
  }
  h->n = j->nf - h->first;
  return 0;
}

static int feed_hb(kr__presence_job *j, const kr__pstr *it, size_t n) {
  if (n != j->nmget)
    return KR_EPROTO;
  for (size_t i = 0; i < n; i++) {
    jinst *in = &j->in[j->mget[i]];
    if (it[i].p == NULL) {
      in->state = I_DEAD;
      continue;
    }
    kr__presence_heartbeat hb;
    int rc = kr__presence_heartbeat_decode(it[i].p, it[i].len, &hb);
    if (rc == KR_ENOMEM)
      return rc;
    if (rc == KR__PRESENCE_UNKNOWN) {
      in->state = I_UNKNOWN;
    } else if (rc < 0) {
      in->state = I_DEAD; /* nobody can reach it through that */
    } else {
      in->url = spool_dup(mem_of(j), &j->keep, hb.url, strlen(hb.url));
      if (in->url == NULL)
        return KR_ENOMEM;
      in->boot = hb.boot;
      in->state = I_ALIVE;
    }
  }
  return 0;
}

int kr__presence_job_feed(kr__presence_job *j, uint32_t tag,
                          const kr__pstr *items, size_t n) {
  if (j == NULL)
    return KR_EINVAL;
  if (j->phase == PH_FAILED)
    return j->err;
  if (!j->awaiting || tag >= j->expect || j->seen[tag] ||
      (items == NULL && n > 0))
    return fail(j, KR_EINVAL);
  int rc;
  switch (j->phase) {
  case PH_LOCK:
    rc = feed_lock(j, items, n);
    break;
  case PH_SCAN:
    rc = feed_scan(j, items, n);
    break;
  case PH_HASHES:
    rc = feed_hash(j, tag, items, n);
    break;
  default: /* PH_HB */
    rc = feed_hb(j, items, n);
    break;
  }
  if (rc < 0)
    return fail(j, rc);
  j->seen[tag] = 1;
  j->got++;
  return j->got == j->expect;
}

/* ------------------------------------------------------------ commands */

static int emit_scan(kr__presence_job *j, kr__presence_cmds *out) {
  if (++j->st.scan_steps > KR__PRESENCE_MAX_SCAN_STEPS)
    return KR_ETOOBIG;
  /* MATCH takes a glob: the prefix's own glob characters are escaped. */
  char pat[2 * KR__PRESENCE_PREFIX_MAX + 8];
  size_t k = 0;
  for (size_t i = 0; i < j->p->prefix_len; i++) {
    char ch = j->p->prefix[i];
    if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\')
      pat[k++] = '\\';
    pat[k++] = ch;
  }
  memcpy(pat + k, "agent:*", 7);
  k += 7;
  kr__pc_begin(out, KR__PRESENCE_OP_JOB, 0);
  kr__pc_arg(out, "SCAN", 4);
  kr__pc_arg_str(out, j->cursor);
  kr__pc_arg(out, "MATCH", 5);
  kr__pc_arg(out, pat, k);
  kr__pc_arg(out, "COUNT", 5);
  kr__pc_arg_u64(out, j->p->cfg.scan_count);
  kr__pc_end(out);
  step_reset(j);
  return await(j, PH_SCAN, 1);
}

static int emit_hgetall(kr__presence_job *j, kr__presence_cmds *out) {
  for (size_t i = 0; i < j->nh; i++) {
    kr__pc_begin(out, KR__PRESENCE_OP_JOB, (uint32_t)i);
    kr__pc_arg(out, "HGETALL", 7);
    kr__pc_arg_agent_key(out, j->p, j->h[i].id);
    kr__pc_end(out);
  }
  return await(j, PH_HASHES, (uint32_t)j->nh);
}

/* MGET of the heartbeats not known yet; 0 commands when none is needed. */
static int emit_mget(kr__presence_job *j, kr__presence_cmds *out, int *sent) {
  *sent = 0;
  j->nmget = 0;
  for (size_t i = 0; i < j->nin; i++) {
    if (j->in[i].state != I_NEED)
      continue;
    if (vgrow(mem_of(j), (void **)&j->mget, &j->mcap, j->nmget + 1,
              sizeof(*j->mget)) < 0)
      return KR_ENOMEM;
    j->mget[j->nmget++] = (uint32_t)i;
  }
  if (j->nmget == 0)
    return 0;
  kr__pc_begin(out, KR__PRESENCE_OP_JOB, 0);
  kr__pc_arg(out, "MGET", 4);
  for (size_t i = 0; i < j->nmget; i++) {
    const jinst *in = &j->in[j->mget[i]];
    kr__pc_arg_key(out, j->p, "instance:", in->name, in->len);
  }
  kr__pc_end(out);
  for (size_t i = 0; i < j->nmget; i++)
    j->in[j->mget[i]].state = I_PENDING;
  *sent = 1;
  return await(j, PH_HB, 1);
}

/* ----------------------------------------------------------- decisions */

static int classify(const kr__presence_job *j, const jhash *h, const jfield *f,
                    uint64_t now) {
  switch (f->cls) {
  case F_SELF:
    return f->boot == j->p->cfg.boot && f->exp > now &&
                   kr__presence_holds(j->p, h->id)
               ? F_SELF_LIVE
               : F_STALE;
  case F_CHECK: {
    const jinst *in = &j->in[f->inst];
    if (in->state == I_DEAD)
      return F_STALE;
    if (in->state != I_ALIVE)
      return F_UNKNOWN;
    return in->boot == f->boot && f->exp > now ? F_LIVE : F_STALE;
  }
  default:
    return f->cls;
  }
}

static void emit_cas(kr__presence_job *j, const jhash *h, const jfield *f,
                     kr__presence_cmds *out) {
  kr__pc_begin(out, KR__PRESENCE_OP_WRITE, 0);
  kr__pc_arg(out, "EVAL", 4);
  kr__pc_arg(out, cas_script, sizeof cas_script - 1);
  kr__pc_arg(out, "1", 1);
  kr__pc_arg_agent_key(out, j->p, h->id);
  kr__pc_arg(out, f->name, f->name_len);
  kr__pc_arg(out, f->val, f->val_len);
  kr__pc_end(out);
}

static int add_candidate(kr__presence_job *j, const jfield *f) {
  if (j->cand == NULL) {
    /* A lookup reads one hash: at most KR__PRESENCE_MAX_FIELDS fields. */
    j->cand = kr__calloc(mem_of(j), KR__PRESENCE_MAX_FIELDS, sizeof(*j->cand));
    if (j->cand == NULL)
      return KR_ENOMEM;
  }
  if (j->ncand >= KR__PRESENCE_MAX_FIELDS)
    return 0;
  const jinst *in = &j->in[f->inst];
  kr__presence_candidate *c = &j->cand[j->ncand++];
  memcpy(c->instance, in->name, in->len + 1);
  memcpy(c->url, in->url, strlen(in->url) + 1);
  c->boot = f->boot;
  c->conns = f->conns;
  c->since_ms = f->since;
  return 0;
}

/* Adds one instance's entry (and its replicas) to listed agent a.
 * Replica names are copied into the job's pool. */
static int agent_add_instance(kr__presence_job *j, kr__presence_listed_agent *a,
                              const char *inst, const char *url, uint32_t conns,
                              uint64_t since, const kr__presence_replica *reps,
                              size_t nrep) {
  size_t bytes = sizeof(kr__presence_listed_instance) +
                 nrep * (sizeof(kr__presence_listed_replica) +
                         KR__PRESENCE_REPLICA_MAX + 1);
  if (j->list_bytes + bytes > KR__PRESENCE_LIST_MAX_BYTES) {
    j->truncated = 1;
    return 0;
  }
  j->list_bytes += bytes;
  void *arr = a->instances;
  size_t cap = a->ninstances; /* arrays are kept exactly sized */
  if (vgrow(mem_of(j), &arr, &cap, a->ninstances + 1, sizeof(*a->instances)) <
      0)
    return KR_ENOMEM;
  a->instances = arr;
  kr__presence_listed_instance *li = &a->instances[a->ninstances];
  li->instance = inst;
  li->url = url;
  li->conns = conns;
  li->since_ms = since;
  if (nrep > 0) {
    arr = a->replicas;
    cap = a->nreplicas;
    if (vgrow(mem_of(j), &arr, &cap, a->nreplicas + nrep,
              sizeof(*a->replicas)) < 0)
      return KR_ENOMEM;
    a->replicas = arr;
    for (size_t i = 0; i < nrep; i++) {
      const char *name =
          spool_dup(mem_of(j), &j->keep, reps[i].name, strlen(reps[i].name));
      if (name == NULL)
        return KR_ENOMEM;
      kr__presence_listed_replica *lr = &a->replicas[a->nreplicas + i];
      lr->name = name;
      lr->instance = inst;
      lr->conns = reps[i].conns;
      lr->since_ms = reps[i].since_ms;
    }
    a->nreplicas += nrep;
  }
  a->ninstances++;
  uint64_t total = (uint64_t)a->conns + conns;
  a->conns = total > UINT32_MAX ? UINT32_MAX : (uint32_t)total;
  if (a->ninstances == 1 || since < a->since_ms)
    a->since_ms = since;
  return 0;
}

/* The listed agent for id, created when new; NULL with *rc 0 when the
 * listing is full (truncated). */
static kr__presence_listed_agent *agent_for(kr__presence_job *j, int64_t id,
                                            int *rc) {
  *rc = 0;
  size_t idx1 = amap_get(j, id);
  if (idx1)
    return &j->ag[idx1 - 1];
  if (j->nag >= j->max_agents ||
      j->list_bytes + sizeof(*j->ag) > KR__PRESENCE_LIST_MAX_BYTES) {
    j->truncated = 1;
    return NULL;
  }
  if (vgrow(mem_of(j), (void **)&j->ag, &j->agcap, j->nag + 1, sizeof(*j->ag)) <
          0 ||
      amap_put(j, id, j->nag + 1) < 0) {
    *rc = KR_ENOMEM;
    return NULL;
  }
  kr__presence_listed_agent *a = &j->ag[j->nag++];
  memset(a, 0, sizeof(*a));
  a->agent_id = id;
  j->list_bytes += sizeof(*a);
  return a;
}

/* Lists hash h's live fields of other instances. SCAN may return a key
 * twice: only its first reading counts. */
static int list_hash(kr__presence_job *j, const jhash *h) {
  size_t live = 0;
  for (size_t i = 0; i < h->n; i++)
    live += j->f[h->first + i].cls == F_LIVE;
  if (live == 0 || amap_get(j, h->id))
    return 0;
  int rc;
  kr__presence_listed_agent *a = agent_for(j, h->id, &rc);
  if (a == NULL)
    return rc;
  for (size_t i = 0; i < h->n; i++) {
    const jfield *f = &j->f[h->first + i];
    if (f->cls != F_LIVE)
      continue;
    kr__presence_entry e;
    rc = kr__presence_entry_decode(f->val, f->val_len, &e);
    if (rc != 0)
      return rc < 0 ? rc : KR_EPROTO; /* it decoded a moment ago */
    const jinst *in = &j->in[f->inst];
    rc = agent_add_instance(j, a, in->name, in->url, e.conns, e.since_ms,
                            e.replicas, e.nreplicas);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* Decides every field of the step: clean-ups appended to out, live ones
 * kept as candidates or listed. */
static int decide(kr__presence_job *j, uint64_t now, kr__presence_cmds *out) {
  for (size_t k = 0; k < j->nh; k++) {
    const jhash *h = &j->h[k];
    for (size_t i = 0; i < h->n; i++) {
      jfield *f = &j->f[h->first + i];
      f->cls = classify(j, h, f, now);
      switch (f->cls) {
      case F_STALE:
        j->st.stale++;
        emit_cas(j, h, f, out);
        break;
      case F_UNKNOWN:
        j->st.unknown++;
        break;
      case F_LIVE:
        j->st.live++;
        if (j->kind == K_LOOKUP) {
          int rc = add_candidate(j, f);
          if (rc < 0)
            return rc;
        }
        break;
      default: /* F_SELF_LIVE */
        j->st.live++;
        break;
      }
    }
    if (j->kind == K_LIST && !j->truncated) {
      int rc = list_hash(j, h);
      if (rc < 0)
        return rc;
    }
  }
  return out->err;
}

/* ------------------------------------------------------------- listing */

typedef struct self_ctx {
  kr__presence_job *j;
  int rc;
} self_ctx;

static int add_self(const kr__prec *r, void *ud) {
  self_ctx *c = ud;
  kr__presence_job *j = c->j;
  kr__presence_listed_agent *a = agent_for(j, r->id, &c->rc);
  if (a == NULL)
    return c->rc < 0 ? 1 : 0;
  c->rc = agent_add_instance(j, a, j->p->instance, j->p->url, r->conns,
                             r->since_ms, r->reps, r->nrep);
  return c->rc < 0;
}

static int cmp_agent(const void *a, const void *b) {
  const kr__presence_listed_agent *x = a, *y = b;
  return x->agent_id < y->agent_id ? -1 : x->agent_id > y->agent_id;
}

static int cmp_inst(const void *a, const void *b) {
  const kr__presence_listed_instance *x = a, *y = b;
  return strcmp(x->instance, y->instance);
}

static int cmp_rep(const void *a, const void *b) {
  const kr__presence_listed_replica *x = a, *y = b;
  int c = strcmp(x->instance, y->instance);
  return c ? c : strcmp(x->name, y->name);
}

/* This instance's agents come from its own state: it is authoritative, and
 * Redis may be behind (a write pending) or have lost them. */
static int finish_list(kr__presence_job *j) {
  self_ctx c = {j, 0};
  (void)kr__presence_each(j->p, add_self, &c);
  if (c.rc < 0)
    return c.rc;
  if (j->nag > 1)
    qsort(j->ag, j->nag, sizeof(*j->ag), cmp_agent);
  for (size_t i = 0; i < j->nag; i++) {
    kr__presence_listed_agent *a = &j->ag[i];
    if (a->ninstances > 1)
      qsort(a->instances, a->ninstances, sizeof(*a->instances), cmp_inst);
    if (a->nreplicas > 1)
      qsort(a->replicas, a->nreplicas, sizeof(*a->replicas), cmp_rep);
  }
  kr__free(mem_of(j), j->amap); /* indexes are stale after the sort */
  j->amap = NULL;
  j->amap_cap = 0;
  return 0;
}

/* ---------------------------------------------------------------- step */

static int run(kr__presence_job *j, uint64_t now, kr__presence_cmds *out) {
  int rc, sent;
  for (;;) {
    if (out->err)
      return out->err;
    switch (j->phase) {
    case PH_START:
      if (j->kind == K_LOOKUP) {
        if (add_hash(j, j->agent_id) < 0)
          return KR_ENOMEM;
        rc = emit_hgetall(j, out);
        return rc < 0 ? rc : KR__PRESENCE_JOB_WAIT;
      }
      if (j->kind == K_SWEEP) {
        kr__pc_begin(out, KR__PRESENCE_OP_JOB, 0);
        kr__pc_arg(out, "SET", 3);
        kr__pc_arg_key(out, j->p, "sweep", "", 0);
        kr__pc_arg(out, j->p->instance, j->p->instance_len);
        kr__pc_arg(out, "NX", 2);
        kr__pc_arg(out, "PX", 2);
        kr__pc_arg_u64(out, j->p->cfg.sweep_period_ms);
        kr__pc_end(out);
        rc = await(j, PH_LOCK, 1);
        return rc < 0 ? rc : KR__PRESENCE_JOB_WAIT;
      }
      if (j->local_only) {
        j->phase = PH_FINISH;
        continue;
      }
      rc = emit_scan(j, out);
      return rc < 0 ? rc : KR__PRESENCE_JOB_WAIT;
    case PH_LOCK:
      j->awaiting = 0;
      if (!j->st.lock_held) {
        j->phase = PH_DONE;
        return KR__PRESENCE_JOB_DONE;
      }
      rc = emit_scan(j, out);
      return rc < 0 ? rc : KR__PRESENCE_JOB_WAIT;
    case PH_SCAN:
      j->awaiting = 0;
      if (j->nh > 0) {
        rc = emit_hgetall(j, out);
        return rc < 0 ? rc : KR__PRESENCE_JOB_WAIT;
      }
      if (j->scan_end) {
        j->phase = PH_FINISH;
        continue;
      }
      rc = emit_scan(j, out);
      return rc < 0 ? rc : KR__PRESENCE_JOB_WAIT;
    case PH_HASHES:
      j->awaiting = 0;
      rc = emit_mget(j, out, &sent);
      if (rc < 0)
        return rc;
      if (sent)
        return KR__PRESENCE_JOB_WAIT;
      /* Every heartbeat needed is known: decide now. */
      /* fall through */
    case PH_HB:
      j->awaiting = 0;
      rc = decide(j, now, out);
      if (rc < 0)
        return rc;
      step_reset(j);
      if (j->kind == K_LOOKUP) {
        j->phase = PH_DONE;
        return KR__PRESENCE_JOB_DONE;
      }
      if (j->scan_end || j->truncated) {
        j->phase = PH_FINISH;
        continue;
      }
      rc = emit_scan(j, out);
      return rc < 0 ? rc : KR__PRESENCE_JOB_WAIT;
    case PH_FINISH:
      if (j->kind == K_LIST) {
        rc = finish_list(j);
        if (rc < 0)
          return rc;
      }
      j->phase = PH_DONE;
      return KR__PRESENCE_JOB_DONE;
    default: /* PH_DONE */
      return KR__PRESENCE_JOB_DONE;
    }
  }
}

int kr__presence_job_step(kr__presence_job *j, uint64_t now_ms,
                          kr__presence_cmds *out) {
  if (j == NULL || out == NULL)
    return KR_EINVAL;
  if (j->phase == PH_FAILED)
    return j->err;
  if (j->phase == PH_DONE)
    return KR__PRESENCE_JOB_DONE;
  if (j->awaiting && j->got < j->expect)
    return KR_ESTATE;
  kr__pc_mark m = kr__pc_mark_get(out);
  int rc = run(j, now_ms, out);
  int rc2 = kr__pc_done(out, m);
  if (rc2 < 0)
    rc = rc2;
  return rc < 0 ? fail(j, rc) : rc;
}

/* ------------------------------------------------------------- results */

void kr__presence_job_get_stats(const kr__presence_job *j,
                                kr__presence_job_stats *out) {
  if (j == NULL || out == NULL)
    return;
  *out = j->st;
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

size_t kr__presence_lookup_candidates(const kr__presence_job *j,
                                      uint64_t random,
                                      kr__presence_candidate *out, size_t cap) {
  if (j == NULL || j->kind != K_LOOKUP || j->phase != PH_DONE)
    return 0;
  size_t n = j->ncand;
  if (out == NULL || cap == 0)
    return n;
  /* Weighted draw without replacement: each pick takes a remaining
   * candidate with probability conns / (remaining conns). */
  size_t idx[KR__PRESENCE_MAX_FIELDS];
  for (size_t i = 0; i < n; i++)
    idx[i] = i;
  uint64_t s = random;
  for (size_t k = 0; k < n && k < cap; k++) {
    uint64_t total = 0;
    for (size_t i = k; i < n; i++)
      total += j->cand[idx[i]].conns;
    uint64_t r = splitmix(&s) % total, acc = 0;
    size_t pick = k;
    for (size_t i = k; i < n; i++) {
      acc += j->cand[idx[i]].conns;
      if (r < acc) {
        pick = i;
        break;
      }
    }
    size_t t = idx[k];
    idx[k] = idx[pick];
    idx[pick] = t;
    out[k] = j->cand[idx[k]];
  }
  return n;
}

size_t kr__presence_list_count(const kr__presence_job *j) {
  return j != NULL && j->kind == K_LIST && j->phase == PH_DONE ? j->nag : 0;
}

const kr__presence_listed_agent *
kr__presence_list_agent(const kr__presence_job *j, size_t i) {
  return i < kr__presence_list_count(j) ? &j->ag[i] : NULL;
}

int kr__presence_list_truncated(const kr__presence_job *j) {
  return j != NULL && j->truncated;
}

/* ------------------------------------------------------------------ JSON */

static json_t *agent_json(const kr__presence_listed_agent *a) {
  json_t *insts = json_array(), *reps = json_array();
  for (size_t i = 0; insts && i < a->ninstances; i++) {
    const kr__presence_listed_instance *li = &a->instances[i];
    if (json_array_append_new(
            insts, json_pack("{s:s, s:I, s:I}", "instance", li->instance,
                             "connections", (json_int_t)li->conns,
                             "connected_since_ms", (json_int_t)li->since_ms)) !=
        0) {
      json_decref(insts);
      insts = NULL;
    }
  }
  for (size_t i = 0; reps && i < a->nreplicas; i++) {
    const kr__presence_listed_replica *lr = &a->replicas[i];
    if (json_array_append_new(
            reps,
            json_pack("{s:s, s:s, s:I, s:I}", "name", lr->name, "instance",
                      lr->instance, "connections", (json_int_t)lr->conns,
                      "connected_since_ms", (json_int_t)lr->since_ms)) != 0) {
      json_decref(reps);
      reps = NULL;
    }
  }
  if (insts == NULL || reps == NULL) {
    json_decref(insts);
    json_decref(reps);
    return NULL;
  }
  return json_pack("{s:I, s:I, s:I, s:o, s:o}", "id", (json_int_t)a->agent_id,
                   "connections", (json_int_t)a->conns, "connected_since_ms",
                   (json_int_t)a->since_ms, "instances", insts, "replicas",
                   reps);
}

int kr__presence_list_json(const kr__presence_job *j, char **out, size_t *len) {
  if (out == NULL)
    return KR_EINVAL;
  *out = NULL;
  if (j == NULL || j->kind != K_LIST || j->phase != PH_DONE)
    return KR_ESTATE;
  json_t *agents = json_array();
  for (size_t i = 0; agents && i < j->nag; i++) {
    if (json_array_append_new(agents, agent_json(&j->ag[i])) != 0) {
      json_decref(agents);
      agents = NULL;
    }
  }
  if (agents == NULL)
    return KR_ENOMEM;
  json_t *root =
      json_pack("{s:o, s:b}", "agents", agents, "truncated", j->truncated);
  if (root == NULL)
    return KR_ENOMEM;
  size_t n = json_dumpb(root, NULL, 0, JSON_COMPACT);
  char *s = n ? kr__malloc(mem_of(j), n + 1) : NULL;
  if (s == NULL || json_dumpb(root, s, n, JSON_COMPACT) != n) {
    kr__free(mem_of(j), s);
    json_decref(root);
    return KR_ENOMEM;
  }
  json_decref(root);
  s[n] = '\0';
  *out = s;
  if (len != NULL)
    *len = n;
  return 0;
}

void kr__presence_json_free(const kr__presence *p, char *s) {
  if (p != NULL)
    kr__free(&p->mem, s);
}
