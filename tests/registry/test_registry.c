/* Unit tests: the tunnel registry (lib/core/registry.c).
 *
 * Every test runs the registry over a counting allocator and checks that
 * nothing is left allocated after kr__registry_free(), so leaks fail the
 * test even without a sanitizer. Random tests use a fixed seed, printed,
 * and can be replayed with KR_TEST_SEED=<n>.
 */
#include <check.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kasroute/error.h>

#include "core/registry.h"

/* -------------------------------------------------------------- helpers */

typedef struct counting {
  size_t live;      /* blocks outstanding */
  uint64_t calls;   /* malloc + realloc calls */
  uint64_t fail_at; /* 1-based call that fails; 0: never */
  int failed;       /* the failing call happened */
} counting;

static void *c_malloc(size_t n, void *ud) {
  counting *c = ud;
  if (++c->calls == c->fail_at) {
    c->failed = 1;
    return NULL;
  }
  void *p = malloc(n);
  if (p)
    c->live++;
  return p;
}

static void *c_realloc(void *p, size_t n, void *ud) {
  counting *c = ud;
  if (++c->calls == c->fail_at) {
    c->failed = 1;
    return NULL;
  }
  void *q = realloc(p, n);
  if (q && !p)
    c->live++;
  return q;
}

static void c_free(void *p, void *ud) {
  counting *c = ud;
  if (p) {
    c->live--;
    free(p);
  }
}

static counting cnt;
static kr_mem cmem;

static kr__registry *new_reg(void) {
  memset(&cnt, 0, sizeof(cnt));
  cmem = (kr_mem){&cnt, c_malloc, c_realloc, c_free};
  kr__registry *r = NULL;
  ck_assert_int_eq(kr__registry_new(&cmem, &r), 0);
  ck_assert_ptr_nonnull(r);
  return r;
}

static void free_reg(kr__registry *r) {
  kr__registry_free(r);
  ck_assert_msg(cnt.live == 0, "%zu blocks leaked", cnt.live);
}

static kr__tunnel *add(kr__registry *r, int64_t id, const char *name,
                       void *conn) {
  kr__tunnel *t = NULL;
  ck_assert_int_eq(kr__registry_add(r, id, name, conn, 1000, &t), 0);
  ck_assert_ptr_nonnull(t);
  return t;
}

static uint64_t seed_from_env(uint64_t dflt) {
  const char *s = getenv("KR_TEST_SEED");
  return s ? strtoull(s, NULL, 0) : dflt;
}

static uint64_t rng_next(uint64_t *s) { /* xorshift64* */
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Event log shared by the callbacks of one test. */
enum { EV_WAKE = 1, EV_TIMEOUT, EV_PRESENCE };
typedef struct ev {
  int kind;
  int tag;
  int64_t id;
  kr__tunnel *t;
  int present;
} ev;

#define MAX_EV 256
static ev evlog[MAX_EV];
static int nev;

static void log_ev(int kind, int tag, int64_t id, kr__tunnel *t, int present) {
  ck_assert_int_lt(nev, MAX_EV);
  evlog[nev++] = (ev){kind, tag, id, t, present};
}

/* What a waiter's callback does besides logging. */
typedef struct wctx {
  int tag;
  kr__registry *r;
  int bump;                /* raise the given tunnel's streams by one */
  int remove_given;        /* remove the tunnel it was given */
  kr__tunnel *make_usable; /* set this tunnel usable (0 streams) */
  kr__waiter *cancel;      /* cancel this waiter */
  int cancel_self;         /* cancel itself (must be a no-op) */
  int wait_again;          /* park a new waiter for the same agent */
  int64_t wait_other;      /* when non-zero: park one for this agent */
  int wait_rc;             /* result of that kr__registry_wait */
  kr__waiter *new_waiter;
  int add_for_same;   /* add a tunnel for the same agent */
  int free_registry;  /* kr__registry_free from the callback */
  struct wctx *chain; /* context of the waiters it parks */
} wctx;

static void waiter_cb(kr__waiter *w, kr__tunnel *t, int status, void *ud) {
  wctx *c = ud;
  int64_t id = kr__waiter_agent_id(w);
  if (status == 0) {
    ck_assert_ptr_nonnull(t);
    ck_assert(kr__tunnel_agent_id(t) == id);
    kr__tunnel_info in;
    kr__tunnel_get_info(t, &in);
    ck_assert(in.usable);
    log_ev(EV_WAKE, c->tag, id, t, 0);
  } else {
    ck_assert_int_eq(status, KR_ETIMEDOUT);
    ck_assert_ptr_null(t);
    log_ev(EV_TIMEOUT, c->tag, id, NULL, 0);
  }
  if (c->cancel_self)
    kr__registry_cancel(w);
  if (c->bump && t) {
    kr__tunnel_info in;
    kr__tunnel_get_info(t, &in);
    kr__tunnel_set_load(t, in.open_streams + 1, in.rtt, 1);
  }
  if (c->make_usable)
    kr__tunnel_set_load(c->make_usable, 0, 0, 1);
  if (c->cancel)
    kr__registry_cancel(c->cancel);
  if (c->remove_given && t)
    kr__registry_remove(c->r, t);
  if (c->wait_again)
    c->wait_rc =
        kr__registry_wait(c->r, id, 5000, waiter_cb, c->chain, &c->new_waiter);
  if (c->wait_other)
    c->wait_rc = kr__registry_wait(c->r, c->wait_other, 5000, waiter_cb,
                                   c->chain, &c->new_waiter);
  if (c->add_for_same) {
    kr__tunnel *nt = NULL;
    ck_assert_int_eq(kr__registry_add(c->r, id, "late", NULL, 2000, &nt), 0);
  }
  if (c->free_registry)
    kr__registry_free(c->r);
}

static kr__waiter *park(kr__registry *r, int64_t id, kr_time_us deadline,
                        wctx *c) {
  kr__waiter *w = NULL;
  ck_assert_int_eq(kr__registry_wait(r, id, deadline, waiter_cb, c, &w), 0);
  ck_assert_ptr_nonnull(w);
  ck_assert(kr__waiter_agent_id(w) == id);
  ck_assert(kr__waiter_deadline(w) == deadline);
  return w;
}

typedef struct pctx {
  kr__registry *r;
  kr__tunnel **remove_on_present; /* remove *this on present == 1 */
  int free_on_event;
} pctx;

static void presence_cb(int64_t id, int present, void *ud) {
  pctx *p = ud;
  log_ev(EV_PRESENCE, 0, id, NULL, present);
  if (present && p->remove_on_present && *p->remove_on_present) {
    kr__tunnel *t = *p->remove_on_present;
    *p->remove_on_present = NULL; /* the host clears its field */
    kr__registry_remove(p->r, t);
  }
  if (p->free_on_event)
    kr__registry_free(p->r);
}

/* ------------------------------------------------------------ tunnels */

START_TEST(pick_least_loaded) {
  kr__registry *r = new_reg();
  int c1, c2, c3;
  ck_assert_ptr_null(kr__registry_pick(r, 7));
  kr__tunnel *a = add(r, 7, "a", &c1);
  kr__tunnel *b = add(r, 7, "a", &c2);
  kr__tunnel *c = add(r, 7, "b", &c3);
  ck_assert_uint_eq(kr__registry_agent_count(r), 1);
  ck_assert_uint_eq(kr__registry_tunnel_count(r), 3);
  ck_assert_ptr_eq(kr__tunnel_conn(a), &c1);
  ck_assert(kr__tunnel_agent_id(b) == 7);

  kr__tunnel_set_load(a, 5, 100, 1);
  kr__tunnel_set_load(b, 2, 100, 1);
  kr__tunnel_set_load(c, 3, 100, 1);
  for (int i = 0; i < 3; i++)
    ck_assert_ptr_eq(kr__registry_pick(r, 7), b);
  kr__tunnel_set_load(b, 9, 100, 1);
  ck_assert_ptr_eq(kr__registry_pick(r, 7), c);
  /* Streams decide before RTT. */
  kr__tunnel_set_load(a, 0, 1000000, 1);
  ck_assert_ptr_eq(kr__registry_pick(r, 7), a);
  ck_assert_ptr_null(kr__registry_pick(r, 8));

  kr__registry_remove(r, a);
  ck_assert_uint_eq(kr__registry_tunnel_count(r), 2);
  ck_assert_ptr_eq(kr__registry_pick(r, 7), c);
  kr__registry_remove(r, c);
  ck_assert_ptr_eq(kr__registry_pick(r, 7), b);
  kr__registry_remove(r, b);
  ck_assert_ptr_null(kr__registry_pick(r, 7));
  ck_assert_uint_eq(kr__registry_agent_count(r), 0);
  ck_assert_uint_eq(kr__registry_tunnel_count(r), 0);
  kr__registry_remove(r, NULL);
  free_reg(r);
}
END_TEST

START_TEST(tie_break_rtt_then_round_robin) {
  kr__registry *r = new_reg();
  kr__tunnel *t[4];
  for (int i = 0; i < 4; i++)
    t[i] = add(r, -3, i < 2 ? "x" : "y", NULL);
  kr__tunnel_set_load(t[0], 1, 1300, 1);
  kr__tunnel_set_load(t[1], 1, 1100, 1);
  kr__tunnel_set_load(t[2], 1, 1100, 1);
  kr__tunnel_set_load(t[3], 1, 1100, 1);
  /* Lowest RTT wins; the three equal ones take turns, never-picked first. */
  kr__tunnel *seq[9];
  for (int i = 0; i < 9; i++)
    seq[i] = kr__registry_pick(r, -3);
  ck_assert_ptr_eq(seq[0], t[1]);
  ck_assert_ptr_eq(seq[1], t[2]);
  ck_assert_ptr_eq(seq[2], t[3]);
  for (int i = 3; i < 9; i++)
    ck_assert_ptr_eq(seq[i], seq[i - 3]);

  /* With a 1 ms granularity all four RTTs count as equal. */
  kr__registry_set_rtt_granularity(r, 1000);
  int hits[4] = {0};
  for (int i = 0; i < 40; i++) {
    kr__tunnel *p = kr__registry_pick(r, -3);
    for (int k = 0; k < 4; k++)
      hits[k] += p == t[k];
  }
  for (int k = 0; k < 4; k++)
    ck_assert_int_eq(hits[k], 10);
  /* 1999 and 1000 fall in the same millisecond, 2000 does not. */
  kr__tunnel_set_load(t[0], 1, 1999, 1);
  kr__tunnel_set_load(t[1], 1, 2000, 1);
  kr__tunnel_set_load(t[2], 1, 2500, 1);
  kr__tunnel_set_load(t[3], 1, 1000, 1);
  for (int i = 0; i < 4; i++) {
    kr__tunnel *p = kr__registry_pick(r, -3);
    ck_assert(p == t[0] || p == t[3]);
  }
  kr__registry_set_rtt_granularity(r, 0); /* taken as exact */
  ck_assert_ptr_eq(kr__registry_pick(r, -3), t[3]);
  ck_assert_ptr_eq(kr__registry_pick(r, -3), t[3]);
  free_reg(r);
}
END_TEST

START_TEST(unusable_tunnels_are_skipped) {
  kr__registry *r = new_reg();
  kr__tunnel *a = add(r, 1, "r", NULL);
  kr__tunnel *b = add(r, 1, "r", NULL);
  kr__tunnel_set_load(a, 0, 0, 0); /* draining, though idle */
  kr__tunnel_set_load(b, 50, 0, 1);
  ck_assert_ptr_eq(kr__registry_pick(r, 1), b);
  kr__tunnel_set_load(b, 50, 0, 0);
  ck_assert_ptr_null(kr__registry_pick(r, 1));
  /* Still connected: presence counts tunnels, usable or not. */
  ck_assert_uint_eq(kr__registry_agent_count(r), 1);
  kr__tunnel_set_load(a, 0, 0, 7); /* any non-zero means usable */
  ck_assert_ptr_eq(kr__registry_pick(r, 1), a);
  kr__tunnel_info in;
  kr__tunnel_get_info(a, &in);
  ck_assert_int_eq(in.usable, 1);
  free_reg(r);
}
END_TEST

START_TEST(replicas_and_listing) {
  kr__registry *r = new_reg();
  char name[300];
  strcpy(name, "pod-1");
  kr__tunnel *t1 = NULL, *t2 = NULL, *t3 = NULL, *t4 = NULL;
  ck_assert_int_eq(kr__registry_add(r, 42, name, NULL, 10, &t1), 0);
  strcpy(name, "pod-2");
  ck_assert_int_eq(kr__registry_add(r, 42, name, NULL, 20, &t2), 0);
  strcpy(name, "pod-1");
  ck_assert_int_eq(kr__registry_add(r, 42, name, NULL, 30, &t3), 0);
  ck_assert_int_eq(kr__registry_add(r, 43, "", NULL, 40, &t4), 0);
  strcpy(name, "garbage"); /* the registry holds its own copy */
  kr__tunnel_set_load(t3, 4, 250, 0);

  kr__tunnel_info in[8];
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 42, in, 8), 3);
  /* Grouped by replica, replicas in order of first appearance. */
  ck_assert_ptr_eq(in[0].tunnel, t1);
  ck_assert_ptr_eq(in[1].tunnel, t3);
  ck_assert_ptr_eq(in[2].tunnel, t2);
  ck_assert_str_eq(in[0].replica_name, "pod-1");
  ck_assert_str_eq(in[1].replica_name, "pod-1");
  ck_assert_str_eq(in[2].replica_name, "pod-2");
  ck_assert_uint_eq(in[0].replica_name_len, 5);
  ck_assert_uint_eq(in[0].replica_conns, 2);
  ck_assert_uint_eq(in[1].replica_conns, 2);
  ck_assert_uint_eq(in[2].replica_conns, 1);
  ck_assert(in[0].connected_since == 10);
  ck_assert(in[1].connected_since == 30);
  ck_assert(in[2].connected_since == 20);
  ck_assert_uint_eq(in[1].open_streams, 4);
  ck_assert(in[1].rtt == 250);
  ck_assert_int_eq(in[1].usable, 0);
  ck_assert(in[2].agent_id == 42);
  /* Short buffers get the total. */
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 42, in, 1), 3);
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 42, NULL, 0), 3);
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 99, in, 8), 0);
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 43, in, 8), 1);
  ck_assert_str_eq(in[0].replica_name, "");

  kr__registry_remove(r, t1);
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 42, in, 8), 2);
  /* pod-1 keeps its place while it has a tunnel. */
  ck_assert_ptr_eq(in[0].tunnel, t3);
  ck_assert_uint_eq(in[0].replica_conns, 1);
  ck_assert_ptr_eq(in[1].tunnel, t2);
  ck_assert_uint_eq(in[1].replica_conns, 1);
  kr__registry_remove(r, t3);
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 42, in, 8), 1);
  ck_assert_ptr_eq(in[0].tunnel, t2);
  t1 = add(r, 42, "pod-1", NULL); /* comes back behind pod-2 */
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 42, in, 8), 2);
  ck_assert_ptr_eq(in[0].tunnel, t2);
  ck_assert_ptr_eq(in[1].tunnel, t1);

  /* Name bounds. */
  memset(name, 'n', sizeof(name));
  name[KR__REPLICA_NAME_MAX] = '\0';
  kr__tunnel *t = NULL;
  ck_assert_int_eq(kr__registry_add(r, 44, name, NULL, 0, &t), 0);
  ck_assert_uint_eq(kr__registry_agent_tunnels(r, 44, in, 8), 1);
  ck_assert_uint_eq(in[0].replica_name_len, KR__REPLICA_NAME_MAX);
  name[KR__REPLICA_NAME_MAX] = 'n';
  name[KR__REPLICA_NAME_MAX + 1] = '\0';
  t = NULL;
  ck_assert_int_eq(kr__registry_add(r, 45, name, NULL, 0, &t), KR_ETOOBIG);
  ck_assert_ptr_null(t);
  ck_assert_int_eq(kr__registry_add(r, 45, NULL, NULL, 0, &t), KR_EINVAL);
  ck_assert_int_eq(kr__registry_add(r, 45, "x", NULL, 0, NULL), KR_EINVAL);
  ck_assert_int_eq(kr__registry_add(NULL, 45, "x", NULL, 0, &t), KR_EINVAL);
  ck_assert_uint_eq(kr__registry_agent_count(r), 3);
  free_reg(r);
}
END_TEST

/* ------------------------------------------------------------ waiters */

START_TEST(waiters_woken_fifo_on_add) {
  kr__registry *r = new_reg();
  nev = 0;
  wctx c[6];
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 6; i++) {
    c[i].tag = i;
    c[i].r = r;
    c[i].bump = 1;
  }
  /* Deadlines deliberately not in parking order. */
  for (int i = 0; i < 5; i++)
    park(r, 9, 900 - i * 100, &c[i]);
  park(r, 10, 100, &c[5]);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 6);
  ck_assert(kr__registry_next_deadline(r) == 100);

  kr__tunnel *t = add(r, 9, "r", NULL);
  ck_assert_int_eq(nev, 5);
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(evlog[i].kind, EV_WAKE);
    ck_assert_int_eq(evlog[i].tag, i);
    ck_assert_ptr_eq(evlog[i].t, t);
  }
  kr__tunnel_info in;
  kr__tunnel_get_info(t, &in);
  ck_assert_uint_eq(in.open_streams, 5);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 1);
  ck_assert(kr__registry_next_deadline(r) == 100);
  free_reg(r);
}
END_TEST

START_TEST(each_waiter_gets_least_loaded) {
  kr__registry *r = new_reg();
  nev = 0;
  kr__tunnel *t1 = add(r, 11, "a", NULL);
  kr__tunnel *t2 = add(r, 11, "b", NULL);
  kr__tunnel_set_load(t1, 0, 0, 0);
  kr__tunnel_set_load(t2, 0, 0, 0);
  wctx c[4];
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 4; i++) {
    c[i].tag = i;
    c[i].r = r;
    c[i].bump = 1;
    park(r, 11, 5000, &c[i]);
  }
  /* The first one woken brings t2 up while the wake loop runs. */
  c[0].make_usable = t2;
  kr__tunnel_set_load(t1, 0, 0, 1);
  ck_assert_int_eq(nev, 4);
  ck_assert_ptr_eq(evlog[0].t, t1);
  ck_assert_ptr_eq(evlog[1].t, t2);
  ck_assert_ptr_eq(evlog[2].t, t1);
  ck_assert_ptr_eq(evlog[3].t, t2);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 0);
  free_reg(r);
}
END_TEST

START_TEST(waiter_woken_when_tunnel_becomes_usable) {
  kr__registry *r = new_reg();
  nev = 0;
  kr__tunnel *t = add(r, 3, "r", NULL);
  wctx c = {.tag = 1, .r = r};
  kr__waiter *w = NULL;
  /* A usable tunnel exists: waiting would only wait for nothing. */
  ck_assert_int_eq(kr__registry_wait(r, 3, 100, waiter_cb, &c, &w), KR_ESTATE);
  ck_assert_ptr_null(w);
  kr__tunnel_set_load(t, 0, 0, 0);
  park(r, 3, 100, &c);
  kr__tunnel_set_load(t, 3, 10, 0); /* still draining: no wake */
  ck_assert_int_eq(nev, 0);
  kr__tunnel_set_load(t, 3, 10, 1);
  ck_assert_int_eq(nev, 1);
  ck_assert_int_eq(evlog[0].kind, EV_WAKE);
  ck_assert_ptr_eq(evlog[0].t, t);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 0);
  ck_assert(kr__registry_next_deadline(r) == UINT64_MAX);
  ck_assert_int_eq(kr__registry_expire(r, 1000), 0);
  ck_assert_int_eq(nev, 1);
  free_reg(r);
}
END_TEST

START_TEST(timeouts_in_deadline_order) {
  kr__registry *r = new_reg();
  nev = 0;
  wctx c[5];
  memset(c, 0, sizeof(c));
  const kr_time_us dl[5] = {300, 100, 200, 100, 250};
  const int64_t ids[5] = {1, 2, 1, 3, 2};
  for (int i = 0; i < 5; i++) {
    c[i].tag = i;
    c[i].r = r;
    park(r, ids[i], dl[i], &c[i]);
  }
  ck_assert(kr__registry_next_deadline(r) == 100);
  ck_assert_int_eq(kr__registry_expire(r, 99), 0);
  ck_assert_int_eq(nev, 0);
  ck_assert_int_eq(kr__registry_expire(r, 100), 2); /* deadline reached */
  ck_assert_int_eq(nev, 2);
  ck_assert_int_eq(evlog[0].tag, 1); /* equal deadlines: parking order */
  ck_assert_int_eq(evlog[1].tag, 3);
  ck_assert(evlog[0].id == 2 && evlog[1].id == 3);
  ck_assert(kr__registry_next_deadline(r) == 200);
  ck_assert_int_eq(kr__registry_expire(r, 10000), 3);
  ck_assert_int_eq(nev, 5);
  ck_assert_int_eq(evlog[2].tag, 2);
  ck_assert_int_eq(evlog[3].tag, 4);
  ck_assert_int_eq(evlog[4].tag, 0);
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(evlog[i].kind, EV_TIMEOUT);
  ck_assert(kr__registry_next_deadline(r) == UINT64_MAX);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 0);
  /* Agent records of timed-out waiters are gone: registry + table + heap. */
  ck_assert_uint_eq(cnt.live, 3);
  free_reg(r);
}
END_TEST

START_TEST(expire_does_not_loop_on_rearming_callbacks) {
  kr__registry *r = new_reg();
  nev = 0;
  /* Each callback parks a new waiter whose deadline has passed already. */
  wctx c[4];
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 4; i++) {
    c[i].tag = i;
    c[i].r = r;
    c[i].wait_again = i < 3;
    c[i].chain = &c[i + 1];
  }
  kr__waiter *w = NULL;
  ck_assert_int_eq(kr__registry_wait(r, 5, 10, waiter_cb, &c[0], &w), 0);
  /* The re-parked waiters use deadline 5000; only c[0] is due at 100. */
  ck_assert_int_eq(kr__registry_expire(r, 100), 1);
  ck_assert_int_eq(kr__registry_expire(r, 100000), 1);
  ck_assert_int_eq(kr__registry_expire(r, 100000), 1);
  ck_assert_int_eq(kr__registry_expire(r, 100000), 1);
  ck_assert_int_eq(kr__registry_expire(r, 100000), 0);
  ck_assert_int_eq(nev, 4);
  free_reg(r);
}
END_TEST

static void rearm_cb(kr__waiter *w, kr__tunnel *t, int status, void *ud) {
  kr__registry *r = ud;
  kr__waiter *nw = NULL;
  log_ev(EV_TIMEOUT, 0, 0, NULL, 0);
  ck_assert_int_eq(kr__registry_wait(r, 1, 0, rearm_cb, r, &nw), 0);
}

START_TEST(expire_budget_bounds_rearming) {
  kr__registry *r = new_reg();
  nev = 0;
  kr__waiter *w = NULL;
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(kr__registry_wait(r, 1, 0, rearm_cb, r, &w), 0);
  /* Always expired on arrival: each call fires as many as were pending. */
  ck_assert_int_eq(kr__registry_expire(r, 50), 3);
  ck_assert_int_eq(kr__registry_expire(r, 50), 3);
  ck_assert_int_eq(nev, 6);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 3);
  free_reg(r);
}
END_TEST

START_TEST(cancel_waiters) {
  kr__registry *r = new_reg();
  nev = 0;
  wctx c[7];
  memset(c, 0, sizeof(c));
  kr__waiter *w[7];
  for (int i = 0; i < 7; i++) {
    c[i].tag = i;
    c[i].r = r;
    w[i] = park(r, 20, 100 + i, &c[i]);
  }
  kr__registry_cancel(w[1]);
  kr__registry_cancel(NULL);
  c[2].cancel = w[4];   /* a later one, from a callback */
  c[3].cancel_self = 1; /* no-op */
  ck_assert_uint_eq(kr__registry_waiter_count(r), 6);
  ck_assert(kr__registry_next_deadline(r) == 100);
  kr__registry_cancel(w[0]);
  ck_assert(kr__registry_next_deadline(r) == 102);
  kr__registry_cancel(w[6]);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 4);
  ck_assert_int_eq(kr__registry_expire(r, 1000), 3);
  ck_assert_int_eq(nev, 3);
  ck_assert_int_eq(evlog[0].tag, 2);
  ck_assert_int_eq(evlog[1].tag, 3);
  ck_assert_int_eq(evlog[2].tag, 5);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 0);
  ck_assert_uint_eq(cnt.live, 3); /* registry, table, heap */
  free_reg(r);
}
END_TEST

START_TEST(callback_removes_given_tunnel) {
  kr__registry *r = new_reg();
  nev = 0;
  pctx p = {.r = r};
  kr__registry_set_presence_cb(r, presence_cb, &p);
  wctx c[3];
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 3; i++) {
    c[i].tag = i;
    c[i].r = r;
    park(r, 77, 5000, &c[i]);
  }
  c[0].remove_given = 1;
  kr__tunnel *t = add(r, 77, "r", NULL);
  (void)t;
  /* presence on, W0 woken, presence off; W1 and W2 keep waiting. */
  ck_assert_int_eq(nev, 3);
  ck_assert(evlog[0].kind == EV_PRESENCE && evlog[0].present == 1);
  ck_assert(evlog[1].kind == EV_WAKE && evlog[1].tag == 0);
  ck_assert(evlog[2].kind == EV_PRESENCE && evlog[2].present == 0);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 2);
  ck_assert_uint_eq(kr__registry_tunnel_count(r), 0);
  ck_assert_uint_eq(kr__registry_agent_count(r), 0);
  kr__tunnel *t2 = add(r, 77, "r", NULL);
  ck_assert_int_eq(nev, 6);
  ck_assert(evlog[3].kind == EV_PRESENCE && evlog[3].present == 1);
  ck_assert(evlog[4].kind == EV_WAKE && evlog[4].tag == 1);
  ck_assert(evlog[5].kind == EV_WAKE && evlog[5].tag == 2);
  ck_assert_ptr_eq(evlog[4].t, t2);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 0);
  free_reg(r);
}
END_TEST

START_TEST(callback_parks_new_waiters) {
  kr__registry *r = new_reg();
  nev = 0;
  wctx later = {.tag = 10};
  wctx other = {.tag = 11};
  wctx c[3];
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 3; i++) {
    c[i].tag = i;
    c[i].r = r;
  }
  later.r = other.r = r;
  /* W0 drops the tunnel and waits again for the same agent; W1 waits for
   * another agent; W2, with the tunnel still usable, is refused. */
  c[0].remove_given = 1;
  c[0].wait_again = 1;
  c[0].chain = &later;
  park(r, 5, 5000, &c[0]);
  add(r, 5, "r", NULL);
  ck_assert_int_eq(c[0].wait_rc, 0);
  ck_assert_ptr_nonnull(c[0].new_waiter);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 1);

  c[1].wait_other = 6;
  c[1].chain = &other;
  c[2].wait_again = 1;
  c[2].chain = &later;
  kr__tunnel *t = add(r, 5, "r", NULL); /* wakes `later` (tag 10) */
  ck_assert_int_eq(nev, 2);
  ck_assert_int_eq(evlog[1].tag, 10);
  kr__tunnel_set_load(t, 0, 0, 0);
  park(r, 5, 5000, &c[1]);
  park(r, 5, 5000, &c[2]);
  kr__tunnel_set_load(t, 0, 0, 1);
  ck_assert_int_eq(nev, 4);
  ck_assert_int_eq(evlog[2].tag, 1);
  ck_assert_int_eq(evlog[3].tag, 2);
  ck_assert_int_eq(c[1].wait_rc, 0);
  ck_assert_int_eq(c[2].wait_rc, KR_ESTATE);
  ck_assert_uint_eq(kr__registry_waiter_count(r), 1); /* `other`, agent 6 */
  add(r, 6, "r", NULL);
  ck_assert_int_eq(nev, 5);
  ck_assert_int_eq(evlog[4].tag, 11);
  free_reg(r);
}
END_TEST

START_TEST(callback_adds_tunnel_for_same_agent) {
  kr__registry *r = new_reg();
  nev = 0;
  wctx c[50];
  memset(c, 0, sizeof(c));
  kr__tunnel *t = add(r, 8, "r", NULL);
  kr__tunnel_set_load(t, 0, 0, 0);
  for (int i = 0; i < 50; i++) {
    c[i].tag = i;
    c[i].r = r;
    c[i].bump = 1;
    c[i].add_for_same = 1; /* each wakes more: the loop must stay flat */
    park(r, 8, 5000, &c[i]);
  }
  kr__tunnel_set_load(t, 0, 0, 1);
  ck_assert_int_eq(nev, 50);
  for (int i = 0; i < 50; i++)
    ck_assert_int_eq(evlog[i].tag, i);
  ck_assert_uint_eq(kr__registry_tunnel_count(r), 51);
  free_reg(r);
}
END_TEST

/* ------------------------------------------------------------ presence */

START_TEST(presence_first_and_last) {
  kr__registry *r = new_reg();
  nev = 0;
  pctx p = {.r = r};
  kr__registry_set_presence_cb(r, presence_cb, &p);
  kr__tunnel *a = add(r, 5, "x", NULL);
  kr__tunnel *b = add(r, 5, "y", NULL);
  kr__tunnel_set_load(a, 0, 0, 0);
  kr__tunnel_set_load(b, 0, 0, 0);
  ck_assert_int_eq(nev, 1);
  ck_assert(evlog[0].id == 5 && evlog[0].present == 1);
  kr__registry_remove(r, a);
  ck_assert_int_eq(nev, 1);
  kr__registry_remove(r, b);
  ck_assert_int_eq(nev, 2);
  ck_assert(evlog[1].id == 5 && evlog[1].present == 0);
  /* A presence callback that removes the tunnel being added: *out, the
   * host's field, is cleared by the host inside the callback. */
  kr__tunnel *field = NULL;
  p.remove_on_present = &field;
  ck_assert_int_eq(kr__registry_add(r, 6, "z", NULL, 0, &field), 0);
  ck_assert_ptr_null(field);
  ck_assert_int_eq(nev, 4);
  ck_assert(evlog[2].id == 6 && evlog[2].present == 1);
  ck_assert(evlog[3].id == 6 && evlog[3].present == 0);
  ck_assert_uint_eq(kr__registry_agent_count(r), 0);
  ck_assert_uint_eq(cnt.live, 2); /* registry, table */
  free_reg(r);
}
END_TEST

/* ------------------------------------------------------------ freeing */

START_TEST(free_with_pending_state_fires_nothing) {
  kr__registry *r = new_reg();
  nev = 0;
  pctx p = {.r = r};
  kr__registry_set_presence_cb(r, presence_cb, &p);
  wctx c = {.r = r};
  for (int i = 0; i < 100; i++) {
    kr__tunnel *t = add(r, i, i % 2 ? "a" : "b", NULL);
    kr__tunnel_set_load(t, 0, 0, i % 3 != 0);
  }
  for (int i = 0; i < 100; i++)
    if (i % 3 == 0)
      park(r, i, 5000, &c);
  for (int i = 1000; i < 1100; i++)
    park(r, i, 5000, &c);
  int before = nev;
  free_reg(r);
  ck_assert_int_eq(nev, before);
  kr__registry_free(NULL);
}
END_TEST

START_TEST(free_from_waiter_callback) {
  kr__registry *r = new_reg();
  nev = 0;
  wctx c[4];
  memset(c, 0, sizeof(c));
  for (int i = 0; i < 4; i++) {
    c[i].tag = i;
    c[i].r = r;
    park(r, 1, 100, &c[i]);
  }
  c[1].free_registry = 1;
  kr__tunnel *t = NULL;
  ck_assert_int_eq(kr__registry_add(r, 1, "r", NULL, 0, &t), 0);
  ck_assert_int_eq(nev, 2); /* no callback after the free */
  ck_assert_msg(cnt.live == 0, "%zu blocks leaked", cnt.live);

  r = new_reg();
  nev = 0;
  for (int i = 0; i < 4; i++) {
    c[i].r = r;
    park(r, i, 100, &c[i]);
  }
  ck_assert_int_eq(kr__registry_expire(r, 100), 2);
  ck_assert_msg(cnt.live == 0, "%zu blocks leaked", cnt.live);
}
END_TEST

START_TEST(free_from_presence_callback) {
  kr__registry *r = new_reg();
  nev = 0;
  pctx p = {.r = r, .free_on_event = 1};
  kr__registry_set_presence_cb(r, presence_cb, &p);
  wctx c = {.r = r};
  park(r, 1, 100, &c);
  kr__tunnel *t = NULL;
  ck_assert_int_eq(kr__registry_add(r, 1, "r", NULL, 0, &t), 0);
  ck_assert_int_eq(nev, 1); /* presence only; the waiter never fires */
  ck_assert_msg(cnt.live == 0, "%zu blocks leaked", cnt.live);

  r = new_reg();
  nev = 0;
  p = (pctx){.r = r};
  kr__registry_set_presence_cb(r, presence_cb, &p);
  t = add(r, 1, "r", NULL);
  add(r, 2, "r", NULL);
  p.free_on_event = 1;
  kr__registry_remove(r, t);
  ck_assert_int_eq(nev, 3);
  ck_assert_msg(cnt.live == 0, "%zu blocks leaked", cnt.live);
}
END_TEST

/* ------------------------------------------------------------ agent walk */

typedef struct walk {
  kr__registry *r;
  int visits[4096]; /* indexed by agent id */
  int nvisits;
  int add_agents;       /* on the first visit add this many new agents */
  kr__tunnel **tunnels; /* tunnel of agent i, for removals */
  int remove_others;    /* remove the tunnels of agents id + 1, id + 2 */
  int stop_after;
  int nested_rc;
  int free_at;
} walk;

static int visitor(const kr__agent_info *in, void *ud) {
  walk *w = ud;
  ck_assert(in->agent_id >= 0 && in->agent_id < 4096);
  ck_assert_uint_ge(in->tunnels, 1);
  w->visits[in->agent_id]++;
  w->nvisits++;
  w->nested_rc = kr__registry_foreach_agent(w->r, visitor, w);
  if (w->add_agents) {
    int n = w->add_agents;
    w->add_agents = 0;
    for (int i = 0; i < n; i++) {
      kr__tunnel *t = NULL;
      ck_assert_int_eq(kr__registry_add(w->r, 2000 + i, "n", NULL, 0, &t), 0);
    }
  }
  if (w->remove_others) {
    for (int64_t k = in->agent_id + 1; k <= in->agent_id + 2; k++)
      if (k < 100 && w->tunnels[k]) {
        kr__registry_remove(w->r, w->tunnels[k]);
        w->tunnels[k] = NULL;
      }
  }
  if (w->free_at && w->nvisits == w->free_at)
    kr__registry_free(w->r);
  if (w->stop_after && w->nvisits == w->stop_after)
    return KR_ENOMEM;
  return 0;
}

START_TEST(walk_agents) {
  kr__registry *r = new_reg();
  kr__tunnel *t[100];
  for (int i = 0; i < 100; i++)
    t[i] = add(r, i, "r", NULL);
  for (int i = 0; i < 100; i += 10)
    add(r, i, "s", NULL);
  wctx c = {.r = r};
  park(r, 3000, 5000, &c); /* waiting only: not connected, not visited */

  static walk w;
  memset(&w, 0, sizeof(w));
  w.r = r;
  ck_assert_int_eq(kr__registry_foreach_agent(r, visitor, &w), 0);
  ck_assert_int_eq(w.nvisits, 100);
  for (int i = 0; i < 100; i++)
    ck_assert_int_eq(w.visits[i], 1);
  ck_assert_int_eq(w.nested_rc, KR_ESTATE);

  /* Growing the table from the visitor: originals visited exactly once. */
  memset(&w, 0, sizeof(w));
  w.r = r;
  w.add_agents = 1000;
  ck_assert_int_eq(kr__registry_foreach_agent(r, visitor, &w), 0);
  for (int i = 0; i < 100; i++)
    ck_assert_int_eq(w.visits[i], 1);
  for (int i = 2000; i < 3000; i++)
    ck_assert_int_le(w.visits[i], 1);
  ck_assert_uint_eq(kr__registry_agent_count(r), 1100);

  /* Removing tunnels from the visitor; emptied records are swept after. */
  memset(&w, 0, sizeof(w));
  w.r = r;
  w.tunnels = t;
  w.remove_others = 1;
  size_t live = cnt.live;
  int removed_single = 0, removed = 0;
  ck_assert_int_eq(kr__registry_foreach_agent(r, visitor, &w), 0);
  for (int i = 0; i < 100; i++) {
    ck_assert_int_le(w.visits[i], 1);
    if (!t[i]) {
      removed++;
      removed_single += i % 10 != 0;
    }
  }
  ck_assert_int_gt(removed, 0);
  /* Each removal frees a tunnel and its replica; single-tunnel agents also
   * free their record (after the walk), those with a second replica not. */
  ck_assert_uint_eq(cnt.live,
                    live - 2 * (size_t)removed - (size_t)removed_single);

  /* Stopping early returns the visitor's value. */
  memset(&w, 0, sizeof(w));
  w.r = r;
  w.stop_after = 5;
  ck_assert_int_eq(kr__registry_foreach_agent(r, visitor, &w), KR_ENOMEM);
  ck_assert_int_eq(w.nvisits, 5);
  ck_assert_int_eq(kr__registry_foreach_agent(r, NULL, &w), KR_EINVAL);

  /* Freeing from the visitor ends the walk and releases everything. */
  memset(&w, 0, sizeof(w));
  w.r = r;
  w.free_at = 3;
  ck_assert_int_eq(kr__registry_foreach_agent(r, visitor, &w), 0);
  ck_assert_int_eq(w.nvisits, 3);
  ck_assert_msg(cnt.live == 0, "%zu blocks leaked", cnt.live);
}
END_TEST

/* Many deletions during a walk: agents that keep their tunnel throughout
 * are visited exactly once even though records around them empty out. */
typedef struct rmwalk {
  kr__registry *r;
  kr__tunnel *t[2000];
  int order[2000]; /* removable agents, shuffled */
  int nremovable, next;
  int visits[2000];
} rmwalk;

static int rm_visitor(const kr__agent_info *in, void *ud) {
  rmwalk *w = ud;
  ck_assert(in->agent_id >= 0 && in->agent_id < 2000);
  w->visits[in->agent_id]++;
  /* The visited agent itself (its slot empties under the cursor) ... */
  if (in->agent_id % 3 != 0 && w->t[in->agent_id]) {
    kr__registry_remove(w->r, w->t[in->agent_id]);
    w->t[in->agent_id] = NULL;
  }
  /* ... and others anywhere in the table. */
  for (int k = 0; k < 5 && w->next < w->nremovable; k++) {
    int id = w->order[w->next++];
    kr__registry_remove(w->r, w->t[id]); /* NULL when already gone */
    w->t[id] = NULL;
  }
  return 0;
}

START_TEST(walk_agents_while_removing) {
  static rmwalk w;
  memset(&w, 0, sizeof(w));
  kr__registry *r = new_reg();
  w.r = r;
  for (int i = 0; i < 2000; i++) {
    w.t[i] = add(r, i, "r", NULL);
    if (i % 3 != 0)
      w.order[w.nremovable++] = i;
  }
  uint64_t s = 12345;
  for (int i = w.nremovable - 1; i > 0; i--) {
    int j = (int)(rng_next(&s) % (uint64_t)(i + 1));
    int x = w.order[i];
    w.order[i] = w.order[j];
    w.order[j] = x;
  }
  size_t live = cnt.live;
  ck_assert_int_eq(kr__registry_foreach_agent(r, rm_visitor, &w), 0);
  ck_assert_int_gt(w.next, 100);
  int removed = 0;
  for (int i = 0; i < 2000; i++)
    removed += w.t[i] == NULL;
  for (int i = 0; i < 2000; i++) {
    if (i % 3 == 0)
      ck_assert_msg(w.visits[i] == 1, "agent %d visited %d times", i,
                    w.visits[i]);
    else
      ck_assert_int_le(w.visits[i], 1);
  }
  /* Tunnel, replica and agent record of each removed agent are gone once
   * the walk is over (the table may have shrunk: same block count). */
  ck_assert_uint_eq(cnt.live, live - 3 * (size_t)removed);
  ck_assert_uint_eq(kr__registry_agent_count(r), 2000 - (size_t)removed);
  free_reg(r);
}
END_TEST

/* ------------------------------------------------------------ limits */

START_TEST(max_waiters) {
  kr__registry *r = new_reg();
  nev = 0;
  wctx c = {.r = r};
  kr__waiter *w = NULL;
  for (int i = 0; i < KR__REGISTRY_DEFAULT_MAX_WAITERS; i++)
    ck_assert_int_eq(kr__registry_wait(r, i % 1000, 100 + i, waiter_cb, &c, &w),
                     0);
  ck_assert_int_eq(kr__registry_wait(r, 1, 1, waiter_cb, &c, &w), KR_EAGAIN);
  ck_assert_int_eq(kr__registry_expire(r, 100), 1);
  ck_assert_int_eq(kr__registry_wait(r, 1, 1, waiter_cb, &c, &w), 0);
  ck_assert_int_eq(kr__registry_wait(r, 1, 1, waiter_cb, &c, &w), KR_EAGAIN);

  kr__registry_set_max_waiters(r, 3); /* below the count: pending stay */
  ck_assert_uint_eq(kr__registry_waiter_count(r),
                    KR__REGISTRY_DEFAULT_MAX_WAITERS);
  nev = 0;
  kr__registry_set_max_waiters(r, SIZE_MAX);
  free_reg(r);

  r = new_reg();
  c.r = r;
  kr__registry_set_max_waiters(r, 2);
  kr__waiter *w1 = park(r, 1, 10, &c);
  park(r, 2, 10, &c);
  ck_assert_int_eq(kr__registry_wait(r, 3, 10, waiter_cb, &c, &w), KR_EAGAIN);
  kr__registry_cancel(w1);
  park(r, 3, 10, &c);
  kr__registry_set_max_waiters(r, 0);
  ck_assert_int_eq(kr__registry_wait(r, 4, 10, waiter_cb, &c, &w), KR_EAGAIN);
  ck_assert_int_eq(kr__registry_wait(r, 4, 10, NULL, &c, &w), KR_EINVAL);
  ck_assert_int_eq(kr__registry_wait(r, 4, 10, waiter_cb, &c, NULL), KR_EINVAL);
  free_reg(r);
}
END_TEST

START_TEST(new_arguments) {
  ck_assert_int_eq(kr__registry_new(NULL, NULL), KR_EINVAL);
  kr__registry *r = NULL;
  ck_assert_int_eq(kr__registry_new(NULL, &r), 0); /* default allocator */
  kr__tunnel *t = NULL;
  ck_assert_int_eq(kr__registry_add(r, 1, "r", NULL, 0, &t), 0);
  kr__registry_free(r);
}
END_TEST

/* ------------------------------------------------------------ allocation */

static void noop_cb(kr__waiter *w, kr__tunnel *t, int status, void *ud) {
  (*(int *)ud)++;
}

/* A scenario touching every allocation site: registry, table growth and
 * shrink, agent records, replicas, tunnels, heap growth, waiters. Every
 * call must succeed or fail with KR_ENOMEM leaving the counts unchanged.
 * Returns the number of KR_ENOMEM results seen. */
static int alloc_scenario(int *silent) {
  kr__registry *r = NULL;
  int rc = kr__registry_new(&cmem, &r);
  if (rc == KR_ENOMEM) {
    ck_assert_ptr_null(r);
    return 1;
  }
  ck_assert_int_eq(rc, 0);
  int nomem = 0, fired = 0;
  kr__tunnel *t[120] = {0};
  for (int i = 0; i < 120; i++) {
    size_t nt = kr__registry_tunnel_count(r);
    size_t na = kr__registry_agent_count(r);
    rc = kr__registry_add(r, i / 2, i % 4 < 2 ? "a" : "b", NULL, 0, &t[i]);
    if (rc == KR_ENOMEM) {
      nomem++;
      t[i] = NULL;
      ck_assert_uint_eq(kr__registry_tunnel_count(r), nt);
      ck_assert_uint_eq(kr__registry_agent_count(r), na);
    } else {
      ck_assert_int_eq(rc, 0);
    }
  }
  kr__waiter *w;
  for (int i = 0; i < 40; i++) {
    size_t nw = kr__registry_waiter_count(r);
    rc = kr__registry_wait(r, 1000 + i % 25, 100 + i, noop_cb, &fired, &w);
    if (rc == KR_ENOMEM) {
      nomem++;
      ck_assert_uint_eq(kr__registry_waiter_count(r), nw);
    } else {
      ck_assert_int_eq(rc, 0);
    }
  }
  /* A wake and a timeout still work after failures. */
  kr__tunnel *x = NULL;
  rc = kr__registry_add(r, 1000, "z", NULL, 0, &x);
  if (rc == KR_ENOMEM)
    nomem++;
  /* Shrinking the table as agents go is best effort: a failure there is
   * silent. */
  int was_failed = cnt.failed;
  kr__registry_expire(r, 120);
  for (int i = 0; i < 120; i++)
    kr__registry_remove(r, t[i]);
  if (!was_failed && cnt.failed)
    *silent = 1;
  ck_assert_uint_eq(kr__registry_tunnel_count(r), x ? 1 : 0);
  kr__registry_free(r);
  return nomem;
}

START_TEST(allocation_failures) {
  memset(&cnt, 0, sizeof(cnt));
  cmem = (kr_mem){&cnt, c_malloc, c_realloc, c_free};
  int silent = 0;
  alloc_scenario(&silent);
  uint64_t total = cnt.calls;
  ck_assert_uint_eq(cnt.live, 0);
  ck_assert_uint_gt(total, 100);
  for (uint64_t k = 1; k <= total; k++) {
    memset(&cnt, 0, sizeof(cnt));
    cnt.fail_at = k;
    silent = 0;
    int nomem = alloc_scenario(&silent);
    ck_assert_msg(cnt.failed, "allocation %" PRIu64 " never happened", k);
    ck_assert_msg(nomem == 1 || silent,
                  "allocation %" PRIu64 " failed: %d KR_ENOMEM results", k,
                  nomem);
    ck_assert_msg(cnt.live == 0, "allocation %" PRIu64 " failed: %zu leaked", k,
                  cnt.live);
  }
  printf("# allocation_failures: %" PRIu64 " allocation sites replayed\n",
         total);
}
END_TEST

/* ------------------------------------------------------------ model test */

/* ck_assert reports every passing check to the parent process (a write per
 * check in fork mode); the hot loops below check millions of times, so they
 * only call into Check on failure. */
#define REQ(c)                                                                 \
  do {                                                                         \
    if (!(c))                                                                  \
      ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #c);                       \
  } while (0)

#define POOL 40000
#define OPS_ADD 100000

typedef struct mt {
  kr__tunnel *t;
  int idx; /* pool index */
  uint32_t streams;
  int usable;
} mt;

static int64_t pool[POOL];
static int per_agent[POOL]; /* model: tunnels per pool index */
static int presence_state[POOL];
static int presence_events;

static int pool_index(int64_t id) {
  /* pool is sorted */
  int lo = 0, hi = POOL - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (pool[mid] == id)
      return mid;
    if (pool[mid] < id)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return -1;
}

static void model_presence(int64_t id, int present, void *ud) {
  int i = pool_index(id);
  REQ((i) >= (0));
  REQ((presence_state[i]) != (present));
  presence_state[i] = present;
  presence_events++;
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static int model_visit(const kr__agent_info *in, void *ud) {
  int *seen = ud;
  int i = pool_index(in->agent_id);
  REQ((i) >= (0));
  REQ((seen[i]) == (0));
  seen[i] = 1;
  REQ((in->tunnels) == ((size_t)per_agent[i]));
  return 0;
}

START_TEST(many_agents_against_model) {
  uint64_t seed = seed_from_env(0x5eed2024);
  printf("# many_agents_against_model: seed %" PRIu64 "\n", seed);
  uint64_t s = seed ? seed : 1;
  /* Distinct ids across the whole int64 range, extremes included. */
  pool[0] = 0;
  pool[1] = -1;
  pool[2] = INT64_MIN;
  pool[3] = INT64_MAX;
  for (int i = 4; i < POOL; i++) {
    int shift = (int)(rng_next(&s) % 48); /* small ids too */
    pool[i] = (int64_t)(rng_next(&s) >> shift);
    if (rng_next(&s) % 2)
      pool[i] = -pool[i] - 1;
  }
  qsort(pool, POOL, sizeof(pool[0]), cmp_i64);
  /* Make the ids distinct; INT64_MAX is already last. */
  for (int i = 1; i < POOL - 1; i++)
    if (pool[i] <= pool[i - 1])
      pool[i] = pool[i - 1] + 1;
  for (int i = 1; i < POOL; i++)
    REQ(pool[i] > pool[i - 1]);
  memset(per_agent, 0, sizeof(per_agent));
  memset(presence_state, 0, sizeof(presence_state));
  presence_events = 0;

  kr__registry *r = new_reg();
  kr__registry_set_presence_cb(r, model_presence, NULL);
  size_t cap = 1 << 16;
  mt *live = calloc(cap, sizeof(*live));
  int *seen = calloc(POOL, sizeof(*seen));
  REQ(live != NULL);
  REQ(seen != NULL);
  size_t nlive = 0, nagents = 0, peak = 0;
  int adds = 0, removes = 0, expected_events = 0;
  uint32_t stream_seq = 0;
  static const char *names[3] = {"pod-a", "pod-b", "pod-c"};
  kr__tunnel_info info[64];
  double t0 = now_s();

  for (uint64_t op = 0; adds < OPS_ADD || nlive > 0; op++) {
    int do_add = adds < OPS_ADD && (nlive == 0 || rng_next(&s) % 100 < 55);
    if (do_add) {
      /* Skewed: a few agents get many tunnels, most get one or two. */
      int idx = rng_next(&s) % 8 == 0 ? (int)(rng_next(&s) % 64)
                                      : (int)(rng_next(&s) % POOL);
      if (per_agent[idx] >= 60)
        continue;
      kr__tunnel *t = NULL;
      REQ((kr__registry_add(r, pool[idx], names[rng_next(&s) % 3], NULL, op,
                            &t)) == (0));
      REQ((nlive) < (cap));
      mt m = {t, idx, ++stream_seq, rng_next(&s) % 10 != 0};
      kr__tunnel_set_load(t, m.streams, 0, m.usable);
      live[nlive++] = m;
      if (per_agent[idx]++ == 0) {
        nagents++;
        expected_events++;
      }
      adds++;
    } else {
      size_t k = rng_next(&s) % nlive;
      mt m = live[k];
      live[k] = live[--nlive];
      kr__registry_remove(r, m.t);
      if (--per_agent[m.idx] == 0) {
        nagents--;
        expected_events++;
      }
      removes++;
    }
    if (nlive > peak)
      peak = nlive;
    REQ((kr__registry_tunnel_count(r)) == (nlive));
    REQ((kr__registry_agent_count(r)) == (nagents));
    REQ((presence_events) == (expected_events));

    if (op % 64 == 0 && nlive > 0) {
      /* Pick for the agent of a random live tunnel: the model's answer is
       * the usable tunnel with the fewest streams (all distinct). */
      int idx = live[rng_next(&s) % nlive].idx;
      kr__tunnel *want = NULL;
      uint32_t best = UINT32_MAX;
      int count = 0;
      for (size_t i = 0; i < nlive; i++)
        if (live[i].idx == idx) {
          count++;
          if (live[i].usable && live[i].streams < best) {
            best = live[i].streams;
            want = live[i].t;
          }
        }
      REQ((kr__registry_pick(r, pool[idx])) == (want));
      size_t n = kr__registry_agent_tunnels(r, pool[idx], info, 64);
      REQ((n) == ((size_t)count));
      for (size_t i = 0; i < n; i++)
        REQ(info[i].agent_id == pool[idx]);
      /* An absent agent. */
      int other = (int)(rng_next(&s) % POOL);
      if (per_agent[other] == 0) {
        REQ(kr__registry_pick(r, pool[other]) == NULL);
        REQ((kr__registry_agent_tunnels(r, pool[other], info, 0)) == (0));
      }
    }
    if (op % 20000 == 0) {
      memset(seen, 0, POOL * sizeof(*seen));
      REQ((kr__registry_foreach_agent(r, model_visit, seen)) == (0));
      size_t visited = 0;
      for (int i = 0; i < POOL; i++) {
        visited += seen[i];
        REQ((seen[i]) == (per_agent[i] > 0));
      }
      REQ((visited) == (nagents));
    }
  }
  double dt = now_s() - t0;
  REQ((adds) == (OPS_ADD));
  REQ((removes) == (OPS_ADD));
  REQ((kr__registry_agent_count(r)) == (0));
  for (int i = 0; i < POOL; i++)
    REQ((presence_state[i]) == (0));
  /* Everything left: the registry and a table shrunk back to its floor. */
  REQ((cnt.live) <= (2));
  printf("# many_agents_against_model: %d adds, %d removes, peak %zu tunnels, "
         "%.3f s\n",
         adds, removes, peak, dt);
  free(live);
  free(seen);
  free_reg(r);
}
END_TEST

/* Random waiters across agents, random cancels, time moving forward: every
 * timeout arrives in (deadline, parking order) and none is lost. */
typedef struct hw {
  kr__waiter *w;
  kr_time_us deadline;
  uint64_t order;
  int state; /* 0 pending, 1 fired, 2 cancelled */
} hw;

static hw hws[20000];
static kr_time_us last_deadline;
static uint64_t last_order;
static int heap_fired;

static void heap_cb(kr__waiter *w, kr__tunnel *t, int status, void *ud) {
  hw *h = ud;
  REQ((status) == (KR_ETIMEDOUT));
  REQ((h->state) == (0));
  REQ((h->w) == (w));
  REQ(h->deadline > last_deadline ||
      (h->deadline == last_deadline && h->order > last_order));
  last_deadline = h->deadline;
  last_order = h->order;
  h->state = 1;
  heap_fired++;
}

START_TEST(deadline_heap_random) {
  uint64_t seed = seed_from_env(0xdead11e);
  printf("# deadline_heap_random: seed %" PRIu64 "\n", seed);
  uint64_t s = seed ? seed : 1;
  kr__registry *r = new_reg();
  int n = 20000, cancelled = 0;
  for (int i = 0; i < n; i++) {
    hws[i].deadline = 1000 + rng_next(&s) % 5000; /* many equal deadlines */
    hws[i].order = (uint64_t)i;
    hws[i].state = 0;
    REQ((kr__registry_wait(r, (int64_t)(rng_next(&s) % 300), hws[i].deadline,
                           heap_cb, &hws[i], &hws[i].w)) == (0));
  }
  for (int i = 0; i < n; i++)
    if (rng_next(&s) % 4 == 0) {
      kr__registry_cancel(hws[i].w);
      hws[i].state = 2;
      cancelled++;
    }
  last_deadline = 0;
  last_order = 0;
  heap_fired = 0;
  kr_time_us now = 0;
  while (kr__registry_next_deadline(r) != UINT64_MAX) {
    kr_time_us next = kr__registry_next_deadline(r);
    REQ(next >= now);
    now = next + rng_next(&s) % 50;
    int before = heap_fired;
    int got = kr__registry_expire(r, now);
    REQ(got == heap_fired - before);
    REQ(kr__registry_next_deadline(r) > now);
    for (int i = 0; i < n; i++)
      if (hws[i].state == 0)
        REQ(hws[i].deadline > now);
    if (now > 100000)
      break;
  }
  REQ((heap_fired + cancelled) == (n));
  REQ((kr__registry_waiter_count(r)) == (0));
  free_reg(r);
}
END_TEST

/* ------------------------------------------------------------ runner */

int main(void) {
  Suite *s = suite_create("registry");
  struct {
    const char *name;
    const TTest *fn;
    int timeout;
  } cases[] = {
#define C(fn, t) {#fn, fn, t}
      C(pick_least_loaded, 10),
      C(tie_break_rtt_then_round_robin, 10),
      C(unusable_tunnels_are_skipped, 10),
      C(replicas_and_listing, 10),
      C(waiters_woken_fifo_on_add, 10),
      C(each_waiter_gets_least_loaded, 10),
      C(waiter_woken_when_tunnel_becomes_usable, 10),
      C(timeouts_in_deadline_order, 10),
      C(expire_does_not_loop_on_rearming_callbacks, 10),
      C(expire_budget_bounds_rearming, 10),
      C(cancel_waiters, 10),
      C(callback_removes_given_tunnel, 10),
      C(callback_parks_new_waiters, 10),
      C(callback_adds_tunnel_for_same_agent, 10),
      C(presence_first_and_last, 10),
      C(free_with_pending_state_fires_nothing, 10),
      C(free_from_waiter_callback, 10),
      C(free_from_presence_callback, 10),
      C(walk_agents, 30),
      C(walk_agents_while_removing, 30),
      C(max_waiters, 30),
      C(new_arguments, 10),
      C(allocation_failures, 120),
      C(many_agents_against_model, 240),
      C(deadline_heap_random, 120),
#undef C
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    TCase *tc = tcase_create(cases[i].name);
    tcase_set_timeout(tc, cases[i].timeout);
    tcase_add_test(tc, cases[i].fn);
    suite_add_tcase(s, tc);
  }
  SRunner *sr = srunner_create(s);
  srunner_set_tap(sr, "-");
  srunner_run_all(sr, CK_SILENT);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
