/* Tunnel registry (see registry.h).
 *
 * Layout: a hash table (open addressing, linear probing, backward-shift
 * deletion) maps agent id -> agent record. An agent record holds its
 * replicas in order of first appearance, each replica its tunnels, and the
 * agent's pending waiters as a FIFO list. Every pending waiter also sits in
 * one binary min-heap ordered by (deadline, parking order).
 *
 * Re-entrancy: callbacks may change anything, so
 *   - an agent record is kept alive while a loop of this module still uses
 *     it (pin) and while an agent walk runs (defer_gc: no table deletion,
 *     empty records are swept when the walk ends);
 *   - loops re-read their state after every callback instead of holding
 *     iterators across it;
 *   - kr__registry_free() inside a callback only sets `closing`; loops stop
 *     firing, and the outermost call releases everything (leave()).
 */
#include <limits.h>
#include <string.h>

#include <kasroute/error.h>

#include "mem_internal.h"
#include "registry.h"

typedef struct kr__agent kr__agent;
typedef struct kr__replica kr__replica;

struct kr__tunnel {
  kr__registry *reg;
  kr__agent *agent;
  kr__replica *replica;
  kr__tunnel *prev, *next; /* within the replica */
  void *conn;
  kr_time_us since;
  kr_time_us rtt;
  uint64_t last_pick; /* pick sequence number; 0: never picked */
  uint32_t open_streams;
  int usable;
};

struct kr__replica {
  kr__replica *prev, *next; /* within the agent */
  kr__tunnel *head, *tail;
  uint32_t conns;
  size_t name_len;
  char name[]; /* NUL-terminated */
};

struct kr__agent {
  int64_t id;
  kr__replica *rep_head, *rep_tail;
  size_t ntunnels, nusable, nreplicas;
  kr__waiter *w_head, *w_tail; /* FIFO */
  size_t nwaiters;
  unsigned pin;   /* loops of this module using the record */
  int waking;     /* a wake loop runs for this agent */
  uint64_t visit; /* walk epoch that visited it last */
};

enum { W_QUEUED = 1, W_FIRING = 2 };

struct kr__waiter {
  kr__registry *reg;
  kr__agent *agent; /* valid while queued */
  int64_t agent_id;
  kr__waiter *prev, *next; /* agent FIFO */
  size_t heap_idx;
  kr_time_us deadline;
  uint64_t seq;
  kr__waiter_cb cb;
  void *user_data;
  int state;
};

typedef struct slot {
  int64_t id;
  kr__agent *agent; /* NULL: empty */
} slot;

struct kr__registry {
  kr_mem mem;
  slot *slots;
  size_t cap; /* power of two, or 0 */
  size_t count;
  uint64_t table_gen; /* bumped when slots move (resize) */
  size_t nconnected;  /* agents with >= 1 tunnel */
  size_t ntunnels;
  kr__waiter **heap;
  size_t heap_len, heap_cap;
  size_t max_waiters;
  uint64_t wait_seq, pick_seq, epoch;
  kr_time_us rtt_gran;
  kr__presence_cb presence_cb;
  void *presence_ud;
  unsigned depth; /* callbacks running */
  int walking;    /* an agent walk runs: defer table deletions */
  int gc_pending; /* empty agent records left in the table by a walk */
  int closing;    /* free requested inside a callback */
};

/* ------------------------------------------------------------ hash table */

static size_t home_of(int64_t id, size_t cap) {
  /* A 64-bit finalizer: agent ids are often small and sequential. */
  uint64_t x = (uint64_t)id;
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9u;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebu;
  x ^= x >> 31;
  return (size_t)x & (cap - 1);
}

static kr__agent *table_find(const kr__registry *r, int64_t id) {
  if (r->cap == 0)
    return NULL;
  for (size_t i = home_of(id, r->cap);; i = (i + 1) & (r->cap - 1)) {
    if (!r->slots[i].agent)
      return NULL;
    if (r->slots[i].id == id)
      return r->slots[i].agent;
  }
}

static void slot_insert(slot *slots, size_t cap, kr__agent *a) {
  size_t i = home_of(a->id, cap);
  while (slots[i].agent)
    i = (i + 1) & (cap - 1);
  slots[i].id = a->id;
  slots[i].agent = a;
}

/* Moves every record into a table of cap slots. KR_ENOMEM leaves the table
 * as it was. */
static int table_resize(kr__registry *r, size_t cap) {
  slot *slots = kr__calloc(&r->mem, cap, sizeof(*slots));
  if (!slots)
    return KR_ENOMEM;
  for (size_t i = 0; i < r->cap; i++)
    if (r->slots[i].agent)
      slot_insert(slots, cap, r->slots[i].agent);
  kr__free(&r->mem, r->slots);
  r->slots = slots;
  r->cap = cap;
  r->table_gen++;
  return 0;
}

/* Inserts a (id not present). KR_ENOMEM leaves the table as it was. */
static int table_put(kr__registry *r, kr__agent *a) {
  if ((r->count + 1) * 4 > r->cap * 3) { /* keep the load under 3/4 */
    if (r->cap > SIZE_MAX / 2 / sizeof(slot))
      return KR_ENOMEM;
    int rc = table_resize(r, r->cap ? r->cap * 2 : 16);
    if (rc < 0)
      return rc;
  }
  slot_insert(r->slots, r->cap, a);
  r->count++;
  return 0;
}

/* Empties slot i and shifts later members of its probe run back, so lookups
 * never need tombstones. Entries only move towards i (cyclically). */
static void table_del_at(kr__registry *r, size_t i) {
  size_t mask = r->cap - 1, hole = i;
  for (size_t j = (i + 1) & mask; r->slots[j].agent; j = (j + 1) & mask) {
    size_t home = home_of(r->slots[j].id, r->cap);
    if (((j - home) & mask) >= ((j - hole) & mask)) {
      r->slots[hole] = r->slots[j];
      hole = j;
    }
  }
  r->slots[hole].agent = NULL;
  r->slots[hole].id = 0;
  r->count--;
}

static void table_del(kr__registry *r, int64_t id) {
  size_t i = home_of(id, r->cap);
  while (r->slots[i].id != id || !r->slots[i].agent)
    i = (i + 1) & (r->cap - 1);
  table_del_at(r, i);
}

/* Gives memory back after a crowd of agents left. Best effort: a failed
 * allocation keeps the larger table. */
static void table_maybe_shrink(kr__registry *r) {
  if (r->cap > 64 && r->count * 8 < r->cap)
    (void)table_resize(r, r->cap / 4);
}

/* ------------------------------------------------------------ agents */

static int agent_empty(const kr__agent *a) {
  return a->ntunnels == 0 && a->nwaiters == 0 && a->pin == 0;
}

/* Frees the record of an agent with no tunnel, no waiter and no loop using
 * it. During a walk the record stays in the table until the walk ends. */
static void agent_gc(kr__registry *r, kr__agent *a) {
  if (!agent_empty(a) || r->closing)
    return;
  if (r->walking) {
    r->gc_pending = 1;
    return;
  }
  table_del(r, a->id);
  kr__free(&r->mem, a);
  table_maybe_shrink(r);
}

/* Frees every empty record left behind by a walk. Deleting slot i may pull
 * a later member of its probe run into i, so i is examined again; entries
 * not yet examined never move below i. */
static void sweep(kr__registry *r) {
  r->gc_pending = 0;
  for (size_t i = 0; i < r->cap;) {
    kr__agent *a = r->slots[i].agent;
    if (a && agent_empty(a)) {
      table_del_at(r, i);
      kr__free(&r->mem, a);
      continue;
    }
    i++;
  }
  table_maybe_shrink(r);
}

/* Finds or creates the record of id. NULL on KR_ENOMEM (nothing changed). */
static kr__agent *agent_get(kr__registry *r, int64_t id) {
  kr__agent *a = table_find(r, id);
  if (a)
    return a;
  a = kr__calloc(&r->mem, 1, sizeof(*a));
  if (!a)
    return NULL;
  a->id = id;
  if (table_put(r, a) < 0) {
    kr__free(&r->mem, a);
    return NULL;
  }
  return a;
}

static kr__replica *replica_find(const kr__agent *a, const char *name,
                                 size_t len) {
  for (kr__replica *p = a->rep_head; p; p = p->next)
    if (p->name_len == len && memcmp(p->name, name, len) == 0)
      return p;
  return NULL;
}

/* ------------------------------------------------------------ waiter heap */

static int w_before(const kr__waiter *x, const kr__waiter *y) {
  if (x->deadline != y->deadline)
    return x->deadline < y->deadline;
  return x->seq < y->seq;
}

static void heap_set(kr__registry *r, size_t i, kr__waiter *w) {
  r->heap[i] = w;
  w->heap_idx = i;
}

static void heap_up(kr__registry *r, size_t i) {
  kr__waiter *w = r->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!w_before(w, r->heap[parent]))
      break;
    heap_set(r, i, r->heap[parent]);
    i = parent;
  }
  heap_set(r, i, w);
}

static void heap_down(kr__registry *r, size_t i) {
  kr__waiter *w = r->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= r->heap_len)
      break;
    if (c + 1 < r->heap_len && w_before(r->heap[c + 1], r->heap[c]))
      c++;
    if (!w_before(r->heap[c], w))
      break;
    heap_set(r, i, r->heap[c]);
    i = c;
  }
  heap_set(r, i, w);
}

static void heap_remove(kr__registry *r, kr__waiter *w) {
  size_t i = w->heap_idx;
  kr__waiter *last = r->heap[--r->heap_len];
  if (last == w)
    return;
  heap_set(r, i, last);
  if (i > 0 && w_before(last, r->heap[(i - 1) / 2]))
    heap_up(r, i);
  else
    heap_down(r, i);
}

/* Room for one more heap entry. KR_ENOMEM leaves the heap as it was. */
static int heap_reserve(kr__registry *r) {
  if (r->heap_len < r->heap_cap)
    return 0;
  size_t cap = r->heap_cap ? r->heap_cap * 2 : 16;
  if (cap > SIZE_MAX / sizeof(*r->heap))
    return KR_ENOMEM;
  kr__waiter **h = kr__realloc(&r->mem, r->heap, cap * sizeof(*h));
  if (!h)
    return KR_ENOMEM;
  r->heap = h;
  r->heap_cap = cap;
  return 0;
}

/* Takes a pending waiter out of its agent's FIFO and out of the heap. The
 * agent record is not collected here. */
static void waiter_unqueue(kr__registry *r, kr__waiter *w) {
  kr__agent *a = w->agent;
  if (w->prev)
    w->prev->next = w->next;
  else
    a->w_head = w->next;
  if (w->next)
    w->next->prev = w->prev;
  else
    a->w_tail = w->prev;
  w->prev = w->next = NULL;
  w->agent = NULL;
  a->nwaiters--;
  heap_remove(r, w);
  w->state = 0;
}

/* ------------------------------------------------------------ callbacks */

/* Releases the registry if a callback asked for it and no callback is
 * running any more. Called last by every entry point that fires callbacks;
 * r must not be used afterwards. */
static void destroy(kr__registry *r);
static void leave(kr__registry *r) {
  if (r->closing && r->depth == 0)
    destroy(r);
}

static void fire_presence(kr__registry *r, int64_t id, int present) {
  if (!r->presence_cb || r->closing)
    return;
  r->depth++;
  r->presence_cb(id, present, r->presence_ud);
  r->depth--;
}

static kr__tunnel *pick_in(kr__registry *r, kr__agent *a) {
  kr__tunnel *best = NULL;
  uint64_t best_rtt = 0;
  for (kr__replica *p = a->rep_head; p; p = p->next) {
    for (kr__tunnel *t = p->head; t; t = t->next) {
      if (!t->usable)
        continue;
      uint64_t rtt = t->rtt / r->rtt_gran;
      if (best) {
        if (t->open_streams != best->open_streams) {
          if (t->open_streams > best->open_streams)
            continue;
        } else if (rtt != best_rtt) {
          if (rtt > best_rtt)
            continue;
        } else if (t->last_pick >= best->last_pick) {
          continue;
        }
      }
      best = t;
      best_rtt = rtt;
    }
  }
  if (best)
    best->last_pick = ++r->pick_seq;
  return best;
}

/* Hands usable tunnels to the agent's waiters, oldest first, while both
 * exist. A wake requested from inside one of these callbacks for the same
 * agent is left to this loop, which re-reads the agent after every
 * callback; so the stack stays flat however many waiters there are. */
static void wake(kr__registry *r, kr__agent *a) {
  if (a->waking)
    return;
  a->waking = 1;
  a->pin++;
  while (!r->closing && a->w_head && a->nusable > 0) {
    kr__tunnel *t = pick_in(r, a);
    kr__waiter *w = a->w_head;
    waiter_unqueue(r, w);
    w->state = W_FIRING;
    r->depth++;
    w->cb(w, t, 0, w->user_data);
    r->depth--;
    kr__free(&r->mem, w);
  }
  a->waking = 0;
  a->pin--;
  agent_gc(r, a);
}

/* ------------------------------------------------------------ lifetime */

int kr__registry_new(const kr_mem *mem, kr__registry **out) {
  if (!out)
    return KR_EINVAL;
  *out = NULL;
  if (!mem)
    mem = kr_mem_default();
  kr__registry *r = kr__calloc(mem, 1, sizeof(*r));
  if (!r)
    return KR_ENOMEM;
  r->mem = *mem;
  r->max_waiters = KR__REGISTRY_DEFAULT_MAX_WAITERS;
  r->rtt_gran = 1;
  *out = r;
  return 0;
}

static void destroy(kr__registry *r) {
  for (size_t i = 0; i < r->cap; i++) {
    kr__agent *a = r->slots[i].agent;
    if (!a)
      continue;
    for (kr__replica *p = a->rep_head, *pn; p; p = pn) {
      pn = p->next;
      for (kr__tunnel *t = p->head, *tn; t; t = tn) {
        tn = t->next;
        kr__free(&r->mem, t);
      }
      kr__free(&r->mem, p);
    }
    for (kr__waiter *w = a->w_head, *wn; w; w = wn) {
      wn = w->next;
      kr__free(&r->mem, w);
    }
    kr__free(&r->mem, a);
  }
  kr__free(&r->mem, r->slots);
  kr__free(&r->mem, r->heap);
  kr_mem mem = r->mem;
  kr__free(&mem, r);
}

void kr__registry_free(kr__registry *r) {
  if (!r)
    return;
  if (r->depth > 0) {
    r->closing = 1;
    return;
  }
  destroy(r);
}

/* ------------------------------------------------------------ tunnels */

/* Every allocation happens before anything is linked, so a failure leaves
 * the registry untouched and fires nothing. */
int kr__registry_add(kr__registry *r, int64_t agent_id,
                     const char *replica_name, void *conn, kr_time_us now,
                     kr__tunnel **out) {
  if (!r || !replica_name || !out)
    return KR_EINVAL;
  if (r->closing)
    return KR_ESTATE;
  size_t len = 0; /* bounded: never reads past the limit */
  while (len <= KR__REPLICA_NAME_MAX && replica_name[len] != '\0')
    len++;
  if (len > KR__REPLICA_NAME_MAX)
    return KR_ETOOBIG;

  kr__agent *a = table_find(r, agent_id);
  kr__replica *rep = a ? replica_find(a, replica_name, len) : NULL;
  kr__tunnel *t = kr__calloc(&r->mem, 1, sizeof(*t));
  if (!t)
    return KR_ENOMEM;
  kr__replica *new_rep = NULL;
  if (!rep) {
    new_rep = kr__calloc(&r->mem, 1, sizeof(*new_rep) + len + 1);
    if (!new_rep) {
      kr__free(&r->mem, t);
      return KR_ENOMEM;
    }
    memcpy(new_rep->name, replica_name, len);
    new_rep->name[len] = '\0';
    new_rep->name_len = len;
  }
  if (!a) {
    a = agent_get(r, agent_id);
    if (!a) {
      kr__free(&r->mem, new_rep);
      kr__free(&r->mem, t);
      return KR_ENOMEM;
    }
  }

  if (new_rep) {
    rep = new_rep;
    rep->prev = a->rep_tail;
    if (a->rep_tail)
      a->rep_tail->next = rep;
    else
      a->rep_head = rep;
    a->rep_tail = rep;
    a->nreplicas++;
  }
  t->reg = r;
  t->agent = a;
  t->replica = rep;
  t->conn = conn;
  t->since = now;
  t->usable = 1;
  t->prev = rep->tail;
  if (rep->tail)
    rep->tail->next = t;
  else
    rep->head = t;
  rep->tail = t;
  rep->conns++;
  a->ntunnels++;
  a->nusable++;
  r->ntunnels++;
  *out = t;

  a->pin++;
  if (a->ntunnels == 1) {
    r->nconnected++;
    fire_presence(r, agent_id, 1);
  }
  wake(r, a);
  a->pin--;
  agent_gc(r, a);
  leave(r);
  return 0;
}

void kr__registry_remove(kr__registry *r, kr__tunnel *t) {
  if (!t)
    return;
  r = t->reg;
  kr__agent *a = t->agent;
  kr__replica *rep = t->replica;
  if (t->prev)
    t->prev->next = t->next;
  else
    rep->head = t->next;
  if (t->next)
    t->next->prev = t->prev;
  else
    rep->tail = t->prev;
  if (--rep->conns == 0) {
    if (rep->prev)
      rep->prev->next = rep->next;
    else
      a->rep_head = rep->next;
    if (rep->next)
      rep->next->prev = rep->prev;
    else
      a->rep_tail = rep->prev;
    a->nreplicas--;
    kr__free(&r->mem, rep);
  }
  if (t->usable)
    a->nusable--;
  a->ntunnels--;
  r->ntunnels--;
  kr__free(&r->mem, t);

  if (a->ntunnels == 0) {
    r->nconnected--;
    a->pin++;
    fire_presence(r, a->id, 0);
    a->pin--;
  }
  agent_gc(r, a);
  leave(r);
}

void kr__tunnel_set_load(kr__tunnel *t, uint32_t open_streams, kr_time_us rtt,
                         int usable) {
  kr__registry *r = t->reg;
  kr__agent *a = t->agent;
  usable = usable != 0;
  if (usable != t->usable) {
    if (usable)
      a->nusable++;
    else
      a->nusable--;
    t->usable = usable;
  }
  t->open_streams = open_streams;
  t->rtt = rtt;
  if (usable && a->w_head)
    wake(r, a);
  leave(r);
}

void *kr__tunnel_conn(const kr__tunnel *t) {
  return t->conn;
}

int64_t kr__tunnel_agent_id(const kr__tunnel *t) {
  return t->agent->id;
}

void kr__tunnel_get_info(const kr__tunnel *t, kr__tunnel_info *out) {
  out->tunnel = (kr__tunnel *)t;
  out->conn = t->conn;
  out->agent_id = t->agent->id;
  out->replica_name = t->replica->name;
  out->replica_name_len = t->replica->name_len;
  out->replica_conns = t->replica->conns;
  out->open_streams = t->open_streams;
  out->connected_since = t->since;
  out->rtt = t->rtt;
  out->usable = t->usable;
}

kr__tunnel *kr__registry_pick(kr__registry *r, int64_t agent_id) {
  kr__agent *a = table_find(r, agent_id);
  if (!a || a->nusable == 0)
    return NULL;
  return pick_in(r, a);
}

void kr__registry_set_rtt_granularity(kr__registry *r, kr_time_us granularity) {
  r->rtt_gran = granularity ? granularity : 1;
}

/* ------------------------------------------------------------ waiters */

/* Allocations first (heap room, waiter, agent record); a failure leaves
 * the registry as it was, apart from a possibly larger heap array. */
int kr__registry_wait(kr__registry *r, int64_t agent_id, kr_time_us deadline,
                      kr__waiter_cb cb, void *user_data, kr__waiter **out) {
  if (!r || !cb || !out)
    return KR_EINVAL;
  if (r->closing)
    return KR_ESTATE;
  kr__agent *a = table_find(r, agent_id);
  if (a && a->nusable > 0)
    return KR_ESTATE;
  if (r->heap_len >= r->max_waiters)
    return KR_EAGAIN;
  if (heap_reserve(r) < 0)
    return KR_ENOMEM;
  kr__waiter *w = kr__calloc(&r->mem, 1, sizeof(*w));
  if (!w)
    return KR_ENOMEM;
  if (!a) {
    a = agent_get(r, agent_id);
    if (!a) {
      kr__free(&r->mem, w);
      return KR_ENOMEM;
    }
  }
  w->reg = r;
  w->agent = a;
  w->agent_id = agent_id;
  w->deadline = deadline;
  w->seq = ++r->wait_seq;
  w->cb = cb;
  w->user_data = user_data;
  w->state = W_QUEUED;
  w->prev = a->w_tail;
  if (a->w_tail)
    a->w_tail->next = w;
  else
    a->w_head = w;
  a->w_tail = w;
  a->nwaiters++;
  r->heap[r->heap_len++] = w;
  heap_up(r, r->heap_len - 1);
  *out = w;
  return 0;
}

void kr__registry_cancel(kr__waiter *w) {
  if (!w || w->state != W_QUEUED)
    return;
  kr__registry *r = w->reg;
  kr__agent *a = w->agent;
  waiter_unqueue(r, w);
  kr__free(&r->mem, w);
  agent_gc(r, a);
}

int64_t kr__waiter_agent_id(const kr__waiter *w) {
  return w->agent_id;
}

kr_time_us kr__waiter_deadline(const kr__waiter *w) {
  return w->deadline;
}

int kr__registry_expire(kr__registry *r, kr_time_us now) {
  if (r->closing)
    return 0;
  size_t budget = r->heap_len;
  int fired = 0;
  while (budget > 0 && !r->closing && r->heap_len > 0 &&
         r->heap[0]->deadline <= now) {
    budget--;
    kr__waiter *w = r->heap[0];
    kr__agent *a = w->agent;
    waiter_unqueue(r, w);
    agent_gc(r, a);
    w->state = W_FIRING;
    r->depth++;
    w->cb(w, NULL, KR_ETIMEDOUT, w->user_data);
    r->depth--;
    kr__free(&r->mem, w);
    if (fired < INT_MAX)
      fired++;
  }
  leave(r);
  return fired;
}

kr_time_us kr__registry_next_deadline(const kr__registry *r) {
  return r->heap_len ? r->heap[0]->deadline : UINT64_MAX;
}

void kr__registry_set_max_waiters(kr__registry *r, size_t max_waiters) {
  r->max_waiters = max_waiters;
}

void kr__registry_set_presence_cb(kr__registry *r, kr__presence_cb cb,
                                  void *user_data) {
  r->presence_cb = cb;
  r->presence_ud = user_data;
}

/* ------------------------------------------------------------ listing */

size_t kr__registry_agent_count(const kr__registry *r) {
  return r->nconnected;
}

size_t kr__registry_tunnel_count(const kr__registry *r) {
  return r->ntunnels;
}

size_t kr__registry_waiter_count(const kr__registry *r) {
  return r->heap_len;
}

/* Walks the slots; no record leaves the table during the walk (deletions
 * are deferred), and a record only moves when the table is resized, which
 * restarts the scan. The epoch stamp keeps each agent to one visit. */
int kr__registry_foreach_agent(kr__registry *r, kr__agent_visit_cb visit,
                               void *user_data) {
  if (!r || !visit)
    return KR_EINVAL;
  if (r->walking || r->closing)
    return KR_ESTATE;
  r->walking = 1;
  uint64_t epoch = ++r->epoch;
  int rc = 0;
  uint64_t gen;
  do {
    gen = r->table_gen;
    for (size_t i = 0; i < r->cap && !r->closing; i++) {
      kr__agent *a = r->slots[i].agent;
      if (!a || a->visit == epoch || a->ntunnels == 0)
        continue;
      a->visit = epoch;
      kr__agent_info info = {.agent_id = a->id,
                             .tunnels = a->ntunnels,
                             .usable_tunnels = a->nusable,
                             .replicas = a->nreplicas,
                             .waiters = a->nwaiters};
      r->depth++;
      rc = visit(&info, user_data);
      r->depth--;
      if (rc != 0 || r->table_gen != gen)
        break;
    }
  } while (rc == 0 && !r->closing && r->table_gen != gen);
  r->walking = 0;
  if (r->gc_pending && !r->closing)
    sweep(r);
  leave(r);
  return rc;
}

size_t kr__registry_agent_tunnels(const kr__registry *r, int64_t agent_id,
                                  kr__tunnel_info *out, size_t cap) {
  const kr__agent *a = table_find(r, agent_id);
  if (!a)
    return 0;
  size_t n = 0;
  for (const kr__replica *p = a->rep_head; p; p = p->next)
    for (const kr__tunnel *t = p->head; t; t = t->next) {
      if (n < cap)
        kr__tunnel_get_info(t, &out[n]);
      n++;
    }
  return n;
}
