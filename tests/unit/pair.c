/* Shared helpers for the libkasroute unit suites (see pair.h). */
#include "pair.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ misc */

int kt_run_suite(Suite *s) {
  SRunner *sr = srunner_create(s);
  /* TAP on stdout for meson; the plain report would interleave with it.
   * KT_VERBOSE=1 gives Check's own report instead (with line numbers). */
  const char *v = getenv("KT_VERBOSE");
  if (v && *v && *v != '0') {
    srunner_run_all(sr, CK_VERBOSE);
  } else {
    srunner_set_tap(sr, "-");
    srunner_run_all(sr, CK_SILENT);
  }
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}

#if defined(__SANITIZE_ADDRESS__)
#define KT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KT_ASAN 1
#endif
#endif

int kt_sanitized(void) {
#ifdef KT_ASAN
  return 1;
#else
  return 0;
#endif
}

int kt_under_valgrind(void) {
  const char *pre = getenv("LD_PRELOAD");
  return pre != NULL && strstr(pre, "vgpreload") != NULL;
}

void kt_add_tcase(Suite *s, const char *name, const TTest *t, double timeout) {
  TCase *tc = tcase_create(name);
  tcase_add_test(tc, t);
  /* Check's own per-test alarm; meson's timeout bounds the whole suite. */
  if (kt_under_valgrind())
    timeout *= 20;
  else if (kt_sanitized())
    timeout *= 4;
  tcase_set_timeout(tc, timeout);
  suite_add_tcase(s, tc);
}

/* -------------------------------------------------------------------- rng */

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void kt_rng_seed(kt_rng *r, uint64_t seed) {
  r->s = seed;
}

uint64_t kt_rng_next(kt_rng *r) {
  r->s += 0x9e3779b97f4a7c15ull;
  return mix64(r->s);
}

uint64_t kt_rng_below(kt_rng *r, uint64_t n) {
  /* The modulo bias is irrelevant for test scheduling. */
  return kt_rng_next(r) % n;
}

uint64_t kt_rng_range(kt_rng *r, uint64_t lo, uint64_t hi) {
  if (hi <= lo)
    return lo;
  if (hi - lo == UINT64_MAX)
    return kt_rng_next(r);
  return lo + kt_rng_below(r, hi - lo + 1);
}

uint64_t kt_seed(const char *what, uint64_t dflt) {
  uint64_t seed = dflt;
  const char *env = getenv("KT_SEED");
  if (env && *env)
    seed = strtoull(env, NULL, 0);
  fprintf(stderr, "# %s: seed %" PRIu64 " (override with KT_SEED)\n", what,
          seed);
  return seed;
}

static inline uint64_t pattern_word(uint64_t key, uint64_t word) {
  return mix64(key ^ (word * 0x9e3779b97f4a7c15ull));
}

void kt_pattern(uint64_t key, uint64_t off, uint8_t *out, size_t n) {
  while (n > 0 && (off & 7) != 0) {
    *out++ = (uint8_t)(pattern_word(key, off >> 3) >> (8 * (off & 7)));
    off++;
    n--;
  }
  while (n >= 8) {
    uint64_t w = pattern_word(key, off >> 3);
    for (int i = 0; i < 8; i++)
      out[i] = (uint8_t)(w >> (8 * i));
    out += 8;
    off += 8;
    n -= 8;
  }
  while (n > 0) {
    *out++ = (uint8_t)(pattern_word(key, off >> 3) >> (8 * (off & 7)));
    off++;
    n--;
  }
}

size_t kt_pattern_check(uint64_t key, uint64_t off, const uint8_t *in,
                        size_t n) {
  uint8_t tmp[4096];
  size_t done = 0;
  while (done < n) {
    size_t k = n - done < sizeof tmp ? n - done : sizeof tmp;
    kt_pattern(key, off + done, tmp, k);
    if (memcmp(tmp, in + done, k) != 0) {
      for (size_t i = 0; i < k; i++)
        if (tmp[i] != in[done + i])
          return done + i;
    }
    done += k;
  }
  return n;
}

/* -------------------------------------------------------------- allocator */

/* Every block carries its size in a header aligned like malloc's result. */
typedef union kt_hdr {
  max_align_t align;
  size_t size;
} kt_hdr;

static int alloc_refuse(kt_alloc *a) {
  a->attempts++;
  if (a->fail_at != 0 && (a->attempts == a->fail_at ||
                          (a->fail_after && a->attempts > a->fail_at))) {
    a->failures++;
    return 1;
  }
  return 0;
}

static void alloc_note(kt_alloc *a) {
  if (a->bytes > a->peak_bytes)
    a->peak_bytes = a->bytes;
  if (a->blocks > a->peak_blocks)
    a->peak_blocks = a->blocks;
}

static void *kt_malloc(size_t size, void *ud) {
  kt_alloc *a = ud;
  ck_assert_msg(size > 0, "kr_mem contract: malloc called with size 0");
  if (alloc_refuse(a))
    return NULL;
  kt_hdr *h = malloc(sizeof(kt_hdr) + size);
  if (!h)
    return NULL;
  h->size = size;
  a->bytes += size;
  a->blocks++;
  alloc_note(a);
  return h + 1;
}

static void *kt_realloc(void *ptr, size_t size, void *ud) {
  kt_alloc *a = ud;
  ck_assert_msg(size > 0, "kr_mem contract: realloc called with size 0");
  if (ptr == NULL)
    return kt_malloc(size, ud);
  if (alloc_refuse(a))
    return NULL;
  kt_hdr *old = (kt_hdr *)ptr - 1;
  size_t old_size = old->size;
  kt_hdr *h = realloc(old, sizeof(kt_hdr) + size);
  if (!h)
    return NULL;
  h->size = size;
  a->bytes = a->bytes - old_size + size;
  alloc_note(a);
  return h + 1;
}

static void kt_free(void *ptr, void *ud) {
  kt_alloc *a = ud;
  if (!ptr)
    return;
  kt_hdr *h = (kt_hdr *)ptr - 1;
  ck_assert_msg(a->blocks > 0 && a->bytes >= h->size,
                "free of a block this allocator does not hold "
                "(blocks %zu bytes %zu size %zu)",
                a->blocks, a->bytes, h->size);
  a->bytes -= h->size;
  a->blocks--;
  free(h);
}

void kt_alloc_init(kt_alloc *a) {
  memset(a, 0, sizeof *a);
}

kr_mem kt_alloc_mem(kt_alloc *a) {
  kr_mem m;
  m.user_data = a;
  m.malloc = kt_malloc;
  m.realloc = kt_realloc;
  m.free = kt_free;
  return m;
}

void kt_alloc_reset_peak(kt_alloc *a) {
  a->peak_bytes = a->bytes;
  a->peak_blocks = a->blocks;
}

/* --------------------------------------------------------------- metadata */

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

uint8_t *kt_md_flatten(const kr_md *md, size_t n, size_t *len) {
  size_t total = 1;
  for (size_t i = 0; i < n; i++)
    total += 8 + md[i].name_len + md[i].value_len;
  uint8_t *out = malloc(total);
  ck_assert_ptr_nonnull(out);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    put32(out + o, (uint32_t)md[i].name_len);
    o += 4;
    if (md[i].name_len)
      memcpy(out + o, md[i].name, md[i].name_len);
    o += md[i].name_len;
    put32(out + o, (uint32_t)md[i].value_len);
    o += 4;
    if (md[i].value_len)
      memcpy(out + o, md[i].value, md[i].value_len);
    o += md[i].value_len;
  }
  *len = o;
  return out;
}

kr_md kt_md(const char *name, const char *value) {
  kr_md m;
  m.name = (const uint8_t *)name;
  m.name_len = strlen(name);
  m.value = (const uint8_t *)value;
  m.value_len = strlen(value);
  return m;
}

/* -------------------------------------------------------------------- tap */

typedef void (*kt_tap_hdr_fn)(kt_tap *t);

static uint32_t get32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
         ((uint32_t)p[2] << 8) | p[3];
}

/* Set by kt_move for the duration of a feed: the credit check. */
static kt_pair *tap_pair;

static void tap_check_credit(kt_tap *t) {
  kt_pair *p = tap_pair;
  if (!p || t->type != 0x0)
    return;
  int rx = (t == &p->tap_ab) ? 1 : 0; /* receiving side index */
  kt_tap *back = rx == 1 ? &p->tap_ba : &p->tap_ab;
  uint32_t sw = p->rx_stream_window[rx], cw = p->rx_conn_window[rx];
  if (sw && t->id < KT_TAP_IDS) {
    ck_assert_msg(t->data_bytes[t->id] <=
                      (uint64_t)sw + back->window_incr[t->id],
                  "%s sent DATA beyond the stream window on stream %u: "
                  "%" PRIu64 " bytes sent, window %u + %" PRIu64 " returned",
                  rx == 1 ? "a" : "b", t->id, t->data_bytes[t->id], sw,
                  back->window_incr[t->id]);
  }
  if (cw) {
    ck_assert_msg(t->data_total <= (uint64_t)cw + back->conn_incr,
                  "%s sent DATA beyond the connection window: %" PRIu64
                  " bytes sent, window %u + %" PRIu64 " returned",
                  rx == 1 ? "a" : "b", t->data_total, cw, back->conn_incr);
  }
}

static void tap_frame_end(kt_tap *t) {
  t->frames[t->type]++;
  size_t have = t->pay_have < sizeof t->pay ? t->pay_have : sizeof t->pay;
  switch (t->type) {
  case 0x0:
    if ((t->flags & 1) && t->id < KT_TAP_IDS)
      t->data_fin[t->id] = 1;
    break;
  case 0x3:
    if (have >= 4) {
      if (t->flags & 1)
        t->reset_acks++;
      else
        t->resets++;
      t->reset_id = t->id;
      t->reset_code = get32(t->pay);
    }
    break;
  case 0x4:
    if (have >= 4) {
      uint32_t inc = get32(t->pay) & 0x7fffffffu;
      if (t->id == 0)
        t->conn_incr += inc;
      else if (t->id < KT_TAP_IDS)
        t->window_incr[t->id] += inc;
    }
    break;
  case 0x6:
    if (have >= 8) {
      t->goaways++;
      t->goaway_last = get32(t->pay);
      t->goaway_code = get32(t->pay + 4);
    }
    break;
  default:
    break;
  }
  t->hdr_have = 0;
}

void kt_tap_feed(kt_tap *t, const uint8_t *p, size_t n) {
  t->bytes += n;
  while (n > 0) {
    if (t->hdr_have < KR_FRAME_HEADER_SIZE) {
      size_t k = KR_FRAME_HEADER_SIZE - t->hdr_have;
      if (k > n)
        k = n;
      memcpy(t->hdr + t->hdr_have, p, k);
      t->hdr_have += k;
      p += k;
      n -= k;
      if (t->hdr_have == KR_FRAME_HEADER_SIZE) {
        t->len = ((uint32_t)t->hdr[0] << 16) | ((uint32_t)t->hdr[1] << 8) |
                 t->hdr[2];
        t->type = t->hdr[3];
        t->flags = t->hdr[4];
        t->id = get32(t->hdr + 5) & 0x7fffffffu;
        t->pay_have = 0;
        if (t->len > t->max_len)
          t->max_len = t->len;
        if (t->type == 0x0 && t->len > t->max_data_len)
          t->max_data_len = t->len;
        if (t->type == 0x0) {
          t->data_total += t->len;
          if (t->id < KT_TAP_IDS)
            t->data_bytes[t->id] += t->len;
          tap_check_credit(t);
        }
        if (t->len == 0)
          tap_frame_end(t);
      }
      continue;
    }
    size_t k = t->len - t->pay_have;
    if (k > n)
      k = n;
    if (t->type != 0x0 && t->pay_have < sizeof t->pay) {
      size_t c = sizeof t->pay - t->pay_have;
      if (c > k)
        c = k;
      memcpy(t->pay + t->pay_have, p, c);
    }
    t->pay_have += (uint32_t)k;
    p += k;
    n -= k;
    if (t->pay_have == t->len)
      tap_frame_end(t);
  }
}

/* ------------------------------------------------------------- recorders */

static kt_srec *rec_new(kt_side *side, kr_stream *s, int local) {
  ck_assert_msg(side->nrecs < KT_MAX_RECS,
                "too many streams for the test "
                "helper (%zu)",
                side->nrecs);
  kt_srec *r = calloc(1, sizeof *r);
  ck_assert_ptr_nonnull(r);
  r->side = side;
  r->s = s;
  r->local = local;
  side->recs[side->nrecs++] = r;
  return r;
}

static void on_hello(kr_mux *m, const kr_md *md, size_t n, void *ud) {
  kt_side *side = ud;
  side->hellos++;
  free(side->hello_md);
  side->hello_md = kt_md_flatten(md, n, &side->hello_md_len);
  if (side->hook_hello)
    side->hook_hello(side);
}

static void on_open(kr_mux *m, kr_stream *s, const kr_md *md, size_t n, int fin,
                    void *ud) {
  kt_side *side = ud;
  kt_srec *r = rec_new(side, s, 0);
  r->id = kr_stream_id(s);
  r->opened++;
  r->open_fin = fin;
  r->md = kt_md_flatten(md, n, &r->md_len);
  kr_stream_set_user_data(s, r);
  side->opens++;
  if (side->auto_reply)
    side->reply_rc = kr_stream_reply(s, NULL, 0, 0);
  if (side->hook_open)
    side->hook_open(side, r);
}

static void on_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                     void *ud) {
  kt_side *side = ud;
  kt_srec *r = kr_stream_user_data(s);
  ck_assert_msg(r != NULL, "%s: on_reply for a stream without user data",
                side->name);
  r->replied++;
  r->reply_fin = fin;
  free(r->md);
  r->md = kt_md_flatten(md, n, &r->md_len);
  side->replies++;
  if (side->hook_reply)
    side->hook_reply(side, r);
}

static void on_data(kr_stream *s, const uint8_t *data, size_t len, void *ud) {
  kt_side *side = ud;
  kt_srec *r = kr_stream_user_data(s);
  ck_assert_msg(r != NULL, "%s: on_data without user data", side->name);
  ck_assert_msg(len > 0, "%s: on_data with len 0 on stream %u", side->name,
                r->id);
  if (r->closed)
    r->data_after_close++;
  side->data_cb++;
  r->received += len;
  r->unconsumed += len;
  if (r->unconsumed > r->max_unconsumed)
    r->max_unconsumed = r->unconsumed;
  if (side->keep_data) {
    if (r->data_len + len > r->data_cap) {
      size_t cap = r->data_cap ? r->data_cap : 1024;
      while (cap < r->data_len + len)
        cap *= 2;
      r->data = realloc(r->data, cap);
      ck_assert_ptr_nonnull(r->data);
      r->data_cap = cap;
    }
    memcpy(r->data + r->data_len, data, len);
    r->data_len += len;
  }
  if (side->auto_consume) {
    int rc = kr_stream_consume(s, len);
    if (rc != 0 && side->tolerant) {
      if (!side->api_err)
        side->api_err = rc;
    } else {
      ck_assert_msg(rc == 0, "%s: kr_stream_consume(%zu) on stream %u: %s",
                    side->name, len, r->id, kr_err_name(rc));
      r->unconsumed -= len;
    }
  }
  if (side->hook_data)
    side->hook_data(side, r, data, len);
}

static void on_fin(kr_stream *s, void *ud) {
  kt_side *side = ud;
  kt_srec *r = kr_stream_user_data(s);
  ck_assert_ptr_nonnull(r);
  r->fins++;
  side->fins++;
  if (side->hook_fin)
    side->hook_fin(side, r);
}

static void on_writable(kr_stream *s, void *ud) {
  kt_side *side = ud;
  kt_srec *r = kr_stream_user_data(s);
  ck_assert_ptr_nonnull(r);
  r->writables++;
  side->writables++;
  if (side->hook_writable)
    side->hook_writable(side, r);
}

static void on_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                     size_t reason_len, void *ud) {
  kt_side *side = ud;
  kt_srec *r = kr_stream_user_data(s);
  ck_assert_msg(r != NULL, "%s: on_close without user data", side->name);
  r->closed++;
  ck_assert_msg(r->closed == 1, "%s: on_close fired %d times on stream %u",
                side->name, r->closed, r->id);
  r->close_code = code;
  ck_assert_msg(reason_len <= KR_MAX_REASON, "%s: close reason of %zu bytes",
                side->name, reason_len);
  if (reason_len)
    memcpy(r->reason, reason, reason_len);
  r->reason[reason_len] = 0;
  r->reason_len = reason_len;
  side->closes++;
  if (side->hook_close)
    side->hook_close(side, r);
  r->s = NULL;
  r->unconsumed = 0; /* counted as consumed once on_close returns */
}

static void on_ping(kr_mux *m, kr_time_us rtt, void *ud) {
  kt_side *side = ud;
  side->pings++;
  side->last_rtt = rtt;
}

static void on_goaway(kr_mux *m, int remote, uint32_t code,
                      const uint8_t *reason, size_t reason_len, void *ud) {
  kt_side *side = ud;
  side->goaways++;
  side->goaway_remote = remote;
  side->goaway_code = code;
  ck_assert_msg(reason_len <= KR_MAX_REASON, "%s: goaway reason of %zu bytes",
                side->name, reason_len);
  if (reason_len)
    memcpy(side->goaway_reason, reason, reason_len);
  side->goaway_reason[reason_len] = 0;
  side->goaway_reason_len = reason_len;
  if (side->hook_goaway)
    side->hook_goaway(side);
}

int kt_callbacks_new(kr_mux_callbacks **out) {
  kr_mux_callbacks *c;
  int rc = kr_mux_callbacks_new(&c);
  if (rc != 0)
    return rc;
  kr_mux_callbacks_set_on_hello(c, on_hello);
  kr_mux_callbacks_set_on_open(c, on_open);
  kr_mux_callbacks_set_on_reply(c, on_reply);
  kr_mux_callbacks_set_on_data(c, on_data);
  kr_mux_callbacks_set_on_fin(c, on_fin);
  kr_mux_callbacks_set_on_writable(c, on_writable);
  kr_mux_callbacks_set_on_close(c, on_close);
  kr_mux_callbacks_set_on_ping(c, on_ping);
  kr_mux_callbacks_set_on_goaway(c, on_goaway);
  *out = c;
  return 0;
}

kr_mux_options *kt_opts(kr_role role) {
  kr_mux_options *o = NULL;
  int rc = kr_mux_options_new(&o);
  ck_assert_msg(rc == 0 && o != NULL, "kr_mux_options_new: %s",
                kr_err_name(rc));
  rc = kr_mux_options_set_role(o, role);
  ck_assert_msg(rc == 0, "kr_mux_options_set_role: %s", kr_err_name(rc));
  return o;
}

/* ------------------------------------------------------------------- pair */

void kt_side_init(kt_side *s, const char *name) {
  memset(s, 0, sizeof *s);
  s->name = name;
  s->recs = calloc(KT_MAX_RECS, sizeof *s->recs);
  ck_assert_ptr_nonnull(s->recs);
}

static void side_init(kt_pair *p, kt_side *s, const char *name, kt_side *peer) {
  kt_side_init(s, name);
  s->pair = p;
  s->peer = peer;
}

int kt_pair_setup(kt_pair *p, const kr_mux_options *oa,
                  const kr_mux_options *ob, kr_time_us now) {
  memset(p, 0, sizeof *p);
  side_init(p, &p->a, "a", &p->b);
  side_init(p, &p->b, "b", &p->a);
  p->now = now;
  kt_rng_seed(&p->rng, 1);

  kr_mux_callbacks *cbs = NULL;
  kr_mux_options *own_a = NULL, *own_b = NULL;
  int rc = kt_callbacks_new(&cbs);
  if (rc != 0)
    goto out;
  if (!oa) {
    rc = kr_mux_options_new(&own_a);
    if (rc != 0)
      goto out;
    kr_mux_options_set_role(own_a, KR_ROLE_DIALER);
    oa = own_a;
  }
  if (!ob) {
    rc = kr_mux_options_new(&own_b);
    if (rc != 0)
      goto out;
    kr_mux_options_set_role(own_b, KR_ROLE_ACCEPTOR);
    ob = own_b;
  }
  rc = kr_mux_new(&p->a.m, oa, cbs, now, &p->a);
  if (rc != 0) {
    p->a.m = NULL;
    goto out;
  }
  rc = kr_mux_new(&p->b.m, ob, cbs, now, &p->b);
  if (rc != 0)
    p->b.m = NULL;
out:
  kr_mux_options_free(own_a);
  kr_mux_options_free(own_b);
  kr_mux_callbacks_free(cbs);
  return rc;
}

void kt_pair_init(kt_pair *p, const kr_mux_options *oa,
                  const kr_mux_options *ob) {
  int rc = kt_pair_setup(p, oa, ob, 0);
  ck_assert_msg(rc == 0, "creating the mux pair: %s", kr_err_name(rc));
  ck_assert_ptr_nonnull(p->a.m);
  ck_assert_ptr_nonnull(p->b.m);
}

void kt_pair_ready(kt_pair *p, const kr_mux_options *oa,
                   const kr_mux_options *ob) {
  kt_pair_init(p, oa, ob);
  kt_pump(p);
  ck_assert_msg(kr_mux_is_ready(p->a.m) && kr_mux_is_ready(p->b.m),
                "handshake did not complete: a ready %d (recv %s), b ready "
                "%d (recv %s)",
                kr_mux_is_ready(p->a.m), kr_err_name((int)p->a.recv_err),
                kr_mux_is_ready(p->b.m), kr_err_name((int)p->b.recv_err));
}

void kt_side_free(kt_side *s) {
  if (s->m && !s->freed)
    kr_mux_free(s->m);
  s->m = NULL;
  for (size_t i = 0; i < s->nrecs; i++) {
    free(s->recs[i]->md);
    free(s->recs[i]->data);
    free(s->recs[i]);
  }
  free(s->recs);
  s->recs = NULL;
  s->nrecs = 0;
  free(s->hello_md);
  s->hello_md = NULL;
}

void kt_pair_free(kt_pair *p) {
  kt_side_free(&p->a);
  kt_side_free(&p->b);
  free(p->buf);
  p->buf = NULL;
}

/* A hook may have freed the mux; the free took effect when the outermost
 * library call returned, so forget the handle now. */
static void side_settle(kt_side *s) {
  if (s->freed)
    s->m = NULL;
}

size_t kt_move(kt_pair *p, kt_side *from) {
  kt_side *to = from->peer;
  if (!from->m)
    return 0;
  const uint8_t *out = NULL;
  size_t n = kr_mux_send(from->m, &out);
  side_settle(from);
  if (n == 0 || !from->m)
    return 0;
  ck_assert_ptr_nonnull(out);
  size_t k = n;
  if (p->max_piece) {
    size_t piece = (size_t)kt_rng_range(&p->rng, 1, p->max_piece);
    if (piece < k)
      k = piece;
  }
  if (p->buf_cap < k) {
    size_t cap = p->buf_cap ? p->buf_cap : 65536;
    while (cap < k)
      cap *= 2;
    p->buf = realloc(p->buf, cap);
    ck_assert_ptr_nonnull(p->buf);
    p->buf_cap = cap;
  }
  /* Copy first: callbacks fired by the peer may call into `from`, which
   * invalidates the bytes kr_mux_send() pointed at. */
  memcpy(p->buf, out, k);
  int rc = kr_mux_sent(from->m, k);
  if (rc != 0 && from->tolerant) {
    if (!from->api_err)
      from->api_err = rc;
  } else {
    ck_assert_msg(rc == 0, "%s: kr_mux_sent(%zu) after send gave %zu: %s",
                  from->name, k, n, kr_err_name(rc));
  }
  side_settle(from);

  int ab = (from == &p->a);
  tap_pair = p;
  kt_tap_feed(ab ? &p->tap_ab : &p->tap_ba, p->buf, k);
  tap_pair = NULL;
  if (ab)
    p->moved_ab += k;
  else
    p->moved_ba += k;
  if ((ab ? p->drop_ab : p->drop_ba) || !to->m)
    return k;
  int64_t r = kr_mux_recv(to->m, p->buf, k, p->now);
  side_settle(to);
  if (r < 0) {
    if (to->recv_err == 0)
      to->recv_err = r;
    to->recv_err_last = r;
  } else if (to->m) {
    ck_assert_msg((size_t)r == k, "%s: kr_mux_recv(%zu bytes) returned %lld",
                  to->name, k, (long long)r);
  }
  return k;
}

uint64_t kt_pump(kt_pair *p) {
  uint64_t total = 0;
  for (long iter = 0;; iter++) {
    ck_assert_msg(iter < 50000000,
                  "pump never settles (%" PRIu64 " bytes moved)", total);
    size_t x = kt_move(p, &p->a);
    size_t y = kt_move(p, &p->b);
    total += x + y;
    if (x == 0 && y == 0)
      break;
  }
  return total;
}

kt_srec *kt_open(kt_side *side, const kr_md *md, size_t n, int fin, int *rc) {
  kt_srec *r = rec_new(side, NULL, 1);
  kr_stream *s = NULL;
  int e = kr_stream_open(side->m, md, n, fin, r, &s);
  if (rc)
    *rc = e;
  if (e != 0) {
    side->recs[--side->nrecs] = NULL;
    free(r);
    return NULL;
  }
  ck_assert_ptr_nonnull(s);
  r->s = s;
  r->id = kr_stream_id(s);
  ck_assert_ptr_eq(kr_stream_user_data(s), r);
  ck_assert_ptr_eq(kr_stream_mux(s), side->m);
  return r;
}

kt_srec *kt_open_ok(kt_side *side, const kr_md *md, size_t n, int fin) {
  int rc = 0;
  kt_srec *r = kt_open(side, md, n, fin, &rc);
  ck_assert_msg(r != NULL, "%s: kr_stream_open: %s", side->name,
                kr_err_name(rc));
  return r;
}

kt_srec *kt_rec(kt_side *side, uint32_t id) {
  for (size_t i = 0; i < side->nrecs; i++)
    if (side->recs[i]->id == id)
      return side->recs[i];
  return NULL;
}

kt_srec *kt_peer_rec(kt_side *side, size_t i) {
  for (size_t j = 0; j < side->nrecs; j++)
    if (!side->recs[j]->local && i-- == 0)
      return side->recs[j];
  return NULL;
}

void kt_write_all(kt_srec *rec, const void *buf, size_t n) {
  ck_assert_msg(rec->s != NULL, "write on closed stream %u", rec->id);
  int64_t rc = kr_stream_write(rec->s, buf, n);
  ck_assert_msg(rc == (int64_t)n,
                "%s: kr_stream_write(%zu) on stream %u returned %lld (%s)",
                rec->side->name, n, rec->id, (long long)rc,
                rc < 0 ? kr_err_name((int)rc) : "short");
}

void kt_consume(kt_srec *rec, size_t n) {
  ck_assert_msg(rec->s != NULL, "consume on closed stream %u", rec->id);
  int rc = kr_stream_consume(rec->s, n);
  ck_assert_msg(rc == 0, "%s: kr_stream_consume(%zu) on stream %u: %s",
                rec->side->name, n, rec->id, kr_err_name(rc));
  ck_assert_msg(rec->unconsumed >= n, "test consumed more than delivered");
  rec->unconsumed -= n;
}

uint8_t *kt_drain(kr_mux *m, size_t *len) {
  uint8_t *buf = NULL;
  size_t have = 0, cap = 0;
  for (;;) {
    const uint8_t *out = NULL;
    size_t n = kr_mux_send(m, &out);
    if (n == 0)
      break;
    if (have + n > cap) {
      cap = cap ? cap : 4096;
      while (cap < have + n)
        cap *= 2;
      buf = realloc(buf, cap);
      ck_assert_ptr_nonnull(buf);
    }
    memcpy(buf + have, out, n);
    have += n;
    ck_assert_msg(have < (1u << 30), "kr_mux_send never runs dry");
    int rc = kr_mux_sent(m, n);
    ck_assert_msg(rc == 0, "kr_mux_sent(%zu): %s", n, kr_err_name(rc));
  }
  *len = have;
  if (!buf)
    buf = malloc(1);
  return buf;
}
