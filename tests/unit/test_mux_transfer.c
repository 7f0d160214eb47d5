/* Unit tests: bulk transfers through two in-memory muxes
 * (lib/core/mux.c flow control, scheduling, framing and parsing under
 * random splits).
 *
 * transfer_1gib: 1 GiB in total over 64 streams, both directions, random
 * write sizes, random transport piece sizes (frames arrive split anywhere),
 * random consumption delays (the receiver holds delivered bytes in a
 * per-stream buffer and consumes them at random later times). Every byte
 * is checked against a per-stream pseudo-random pattern when consumed.
 * Library memory (accounting allocator) stays under a bound computed from
 * the configured windows and queues.
 *
 * head_of_line: one stream whose receiver never consumes while another
 * stream on the same connection moves 256 MiB.
 *
 * Under valgrind the volumes shrink (KT_TRANSFER_MIB / KT_HOL_MIB override
 * them either way). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/frame.h"
#include "pair.h"

#define MIB ((uint64_t)1 << 20)

/* ASan+UBSan runs the full volumes in well under a minute, so they only
 * shrink under valgrind (about 50 times slower). */
static uint64_t volume_mib(const char *env, uint64_t normal,
                           uint64_t valgrind) {
  const char *v = getenv(env);
  if (v && *v)
    return strtoull(v, NULL, 0);
  return kt_under_valgrind() ? valgrind : normal;
}

static double wall(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------- the model */

/* One direction of one stream. */
typedef struct flow {
  uint64_t key;   /* pattern key */
  uint64_t total; /* bytes the writer sends */
  uint64_t sent;  /* accepted by kr_stream_write */
  int fin_sent;
  uint64_t recvd;    /* delivered by on_data */
  uint64_t verified; /* consumed and checked */
  int fin_seen;
  /* bytes delivered but not yet consumed (at most the stream window) */
  uint8_t *ring;
  size_t cap, head, len;
  size_t max_len;
  int stalled; /* the receiver never consumes */
} flow;

typedef struct tstream {
  kt_srec *ro; /* record on the opener's side */
  kt_srec *ra; /* record on the acceptor's side */
  kt_side *opener;
  flow up;   /* opener -> acceptor */
  flow down; /* acceptor -> opener */
} tstream;

typedef struct world {
  kt_pair p;
  kt_alloc al_a, al_b;
  tstream *ts;
  size_t nts;
  kt_rng rng;
  uint8_t *scratch;
  size_t scratch_cap;
  uint32_t window; /* both sides' stream window */
} world;

static world *W_; /* the hooks reach the world through this */

static tstream *ts_of(kt_srec *r) {
  ck_assert_ptr_nonnull(r->ctx);
  return r->ctx;
}

/* The flow a record receives. */
static flow *rx_flow(kt_srec *r) {
  tstream *t = ts_of(r);
  return r->local ? &t->down : &t->up;
}

static void hook_open(kt_side *side, kt_srec *r) {
  /* Match by id: the opener recorded its streams in W_->ts. */
  for (size_t i = 0; i < W_->nts; i++) {
    tstream *t = &W_->ts[i];
    if (t->opener == side->peer && t->ro && t->ro->id == r->id) {
      ck_assert_ptr_null(t->ra);
      t->ra = r;
      r->ctx = t;
      return;
    }
  }
  ck_abort_msg("%s: on_open for unknown stream %u", side->name, r->id);
}

static void hook_data(kt_side *side, kt_srec *r, const uint8_t *d, size_t n) {
  flow *f = rx_flow(r);
  ck_assert_msg(!f->fin_seen, "%s: data after FIN on stream %u", side->name,
                r->id);
  ck_assert_msg(f->len + n <= f->cap,
                "%s: stream %u holds %zu unconsumed bytes + %zu new > its "
                "window %zu",
                side->name, r->id, f->len, n, f->cap);
  ck_assert_msg(f->recvd + n <= f->total,
                "%s: stream %u received %" PRIu64 " bytes of %" PRIu64,
                side->name, r->id, f->recvd + n, f->total);
  size_t tail = (f->head + f->len) % f->cap;
  size_t first = f->cap - tail < n ? f->cap - tail : n;
  memcpy(f->ring + tail, d, first);
  memcpy(f->ring, d + first, n - first);
  f->len += n;
  if (f->len > f->max_len)
    f->max_len = f->len;
  f->recvd += n;
}

static void hook_fin(kt_side *side, kt_srec *r) {
  flow *f = rx_flow(r);
  ck_assert_msg(f->recvd == f->total,
                "%s: FIN on stream %u after %" PRIu64 " of %" PRIu64 " bytes",
                side->name, r->id, f->recvd, f->total);
  f->fin_seen = 1;
}

static void hook_close(kt_side *side, kt_srec *r) {
  ck_assert_msg(r->close_code == KR_CODE_NO_ERROR,
                "%s: stream %u closed with %s \"%s\"", side->name, r->id,
                kr_code_name(r->close_code), r->reason);
}

/* Checks and consumes n held bytes of f (received through r). */
static void consume(flow *f, kt_srec *r, size_t n) {
  while (n > 0) {
    size_t k = f->cap - f->head < n ? f->cap - f->head : n;
    if (k > f->len)
      k = f->len;
    size_t bad = kt_pattern_check(f->key, f->verified, f->ring + f->head, k);
    ck_assert_msg(bad == k,
                  "stream %u (key %" PRIu64 "): byte %" PRIu64 " differs",
                  r->id, f->key, f->verified + bad);
    if (r->s) {
      int rc = kr_stream_consume(r->s, k);
      ck_assert_msg(rc == 0, "consume(%zu) on stream %u: %s", k, r->id,
                    kr_err_name(rc));
      r->unconsumed -= k;
    }
    f->verified += k;
    f->head = (f->head + k) % f->cap;
    f->len -= k;
    n -= k;
  }
}

/* Writes a random-sized chunk of f through r; returns bytes accepted. */
static size_t write_some(world *w, flow *f, kt_srec *r) {
  if (!r || !r->s || f->fin_sent)
    return 0;
  if (f->sent == f->total) {
    int rc = kr_stream_close_write(r->s);
    ck_assert_msg(rc == 0, "close_write on stream %u: %s", r->id,
                  kr_err_name(rc));
    f->fin_sent = 1;
    return 0;
  }
  size_t want;
  switch (kt_rng_below(&w->rng, 4)) {
  case 0:
    want = (size_t)kt_rng_range(&w->rng, 1, 100);
    break;
  case 1:
    want = (size_t)kt_rng_range(&w->rng, 1, 16384);
    break;
  default:
    want = (size_t)kt_rng_range(&w->rng, 16384, 256 * 1024);
    break;
  }
  if (want > f->total - f->sent)
    want = (size_t)(f->total - f->sent);
  size_t space = kr_stream_write_space(r->s);
  if (space == 0)
    return 0;
  if (want > w->scratch_cap) {
    w->scratch = realloc(w->scratch, want);
    ck_assert_ptr_nonnull(w->scratch);
    w->scratch_cap = want;
  }
  /* Only generate what can be taken (plus a little to exercise short
   * writes). */
  size_t gen = want < space + 100 ? want : space + 100;
  kt_pattern(f->key, f->sent, w->scratch, gen);
  int64_t rc = kr_stream_write(r->s, w->scratch, gen);
  if (rc == KR_EAGAIN)
    return 0;
  ck_assert_msg(rc >= 0, "write on stream %u: %s", r->id, kr_err_name((int)rc));
  ck_assert_msg((size_t)rc <= gen, "write accepted more than offered");
  if (gen <= space)
    ck_assert_msg((size_t)rc == gen,
                  "write of %zu with write_space %zu accepted %lld", gen, space,
                  (long long)rc);
  f->sent += (uint64_t)rc;
  return (size_t)rc;
}

static void flow_init(flow *f, uint64_t key, uint64_t total, size_t cap) {
  memset(f, 0, sizeof *f);
  f->key = key;
  f->total = total;
  f->cap = cap;
  f->ring = malloc(cap);
  ck_assert_ptr_nonnull(f->ring);
}

static void world_init(world *w, kr_mux_options *oa, kr_mux_options *ob,
                       uint32_t window, uint64_t seed) {
  memset(w, 0, sizeof *w);
  W_ = w;
  kt_alloc_init(&w->al_a);
  kt_alloc_init(&w->al_b);
  kr_mem ma = kt_alloc_mem(&w->al_a), mb = kt_alloc_mem(&w->al_b);
  ck_assert_int_eq(kr_mux_options_set_mem(oa, &ma), 0);
  ck_assert_int_eq(kr_mux_options_set_mem(ob, &mb), 0);
  kt_pair_ready(&w->p, oa, ob);
  kt_rng_seed(&w->rng, seed);
  w->window = window;
  kt_pair *p = &w->p;
  p->a.auto_reply = p->b.auto_reply = 1;
  p->a.hook_open = p->b.hook_open = hook_open;
  p->a.hook_data = p->b.hook_data = hook_data;
  p->a.hook_fin = p->b.hook_fin = hook_fin;
  p->a.hook_close = p->b.hook_close = hook_close;
  kt_rng_seed(&p->rng, seed ^ 0xabcdef);
}

static void world_free(world *w) {
  for (size_t i = 0; i < w->nts; i++) {
    free(w->ts[i].up.ring);
    free(w->ts[i].down.ring);
  }
  free(w->ts);
  free(w->scratch);
  kt_pair_free(&w->p);
  ck_assert_msg(w->al_a.blocks == 0 && w->al_b.blocks == 0,
                "leaked blocks: a %zu, b %zu", w->al_a.blocks, w->al_b.blocks);
  W_ = NULL;
}

/* Moves bytes both ways in random pieces, up to budget bytes per side. */
static uint64_t pump_some(world *w, uint64_t budget) {
  static const size_t pieces[] = {7,     100,       1500,   9000,
                                  16384, 65536 + 9, 262144, 1 << 20};
  kt_pair *p = &w->p;
  uint64_t moved = 0, ma = 0, mb = 0;
  int idle_a = 0, idle_b = 0;
  while (!(idle_a && idle_b)) {
    p->max_piece = pieces[kt_rng_below(&w->rng, 8)];
    size_t x = idle_a ? 0 : kt_move(p, &p->a);
    p->max_piece = pieces[kt_rng_below(&w->rng, 8)];
    size_t y = idle_b ? 0 : kt_move(p, &p->b);
    ma += x;
    mb += y;
    idle_a = x == 0 || ma >= budget;
    idle_b = y == 0 || mb >= budget;
    moved += x + y;
  }
  ck_assert_msg(p->a.recv_err == 0 && p->b.recv_err == 0,
                "connection failed: a %s (%s), b %s (%s)",
                kr_err_name((int)p->a.recv_err), p->a.goaway_reason,
                kr_err_name((int)p->b.recv_err), p->b.goaway_reason);
  return moved;
}

/* Consumes a random amount from a random subset of the receiving flows. */
static uint64_t consume_some(world *w, int all) {
  uint64_t done = 0;
  size_t picks = all ? w->nts * 2 : (size_t)kt_rng_range(&w->rng, 1, 16);
  for (size_t k = 0; k < picks; k++) {
    size_t i = all ? k / 2 : (size_t)kt_rng_below(&w->rng, w->nts);
    int dir = all ? (int)(k & 1) : (int)kt_rng_below(&w->rng, 2);
    tstream *t = &w->ts[i];
    flow *f = dir ? &t->down : &t->up;
    kt_srec *rx = dir ? t->ro : t->ra;
    if (!rx || f->len == 0 || f->stalled)
      continue;
    size_t n = all ? f->len : (size_t)kt_rng_range(&w->rng, 1, f->len);
    consume(f, rx, n);
    done += n;
  }
  return done;
}

static int flow_done(const flow *f) {
  return f->stalled || (f->verified == f->total && f->fin_seen);
}

/* -------------------------------------------------------- 1 GiB transfer */

START_TEST(transfer_1gib) {
  const uint64_t total = volume_mib("KT_TRANSFER_MIB", 1024, 16) * MIB;
  const size_t nstreams = 64;
  const uint32_t window = 256 * 1024;
  const uint32_t conn_window = 4 * 1024 * 1024;
  const size_t send_queue = 256 * 1024;
  const size_t output_limit = 1 << 20;
  const uint32_t max_frame = 65536;
  uint64_t seed = kt_seed("transfer_1gib", 20240611);
  fprintf(stderr, "# transfer_1gib: %" PRIu64 " MiB over %zu streams\n",
          total / MIB, nstreams);

  kr_mux_options *o[2] = {kt_opts(KR_ROLE_DIALER), kt_opts(KR_ROLE_ACCEPTOR)};
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(kr_mux_options_set_stream_window(o[i], window), 0);
    ck_assert_int_eq(kr_mux_options_set_connection_window(o[i], conn_window),
                     0);
    ck_assert_int_eq(kr_mux_options_set_send_queue(o[i], send_queue), 0);
    ck_assert_int_eq(kr_mux_options_set_output_limit(o[i], output_limit), 0);
    ck_assert_int_eq(kr_mux_options_set_max_frame_size(o[i], max_frame), 0);
  }
  world w;
  world_init(&w, o[0], o[1], window, seed);
  kr_mux_options_free(o[0]);
  kr_mux_options_free(o[1]);
  kt_pair *p = &w.p;
  p->rx_stream_window[0] = p->rx_stream_window[1] = window;
  p->rx_conn_window[0] = p->rx_conn_window[1] = conn_window;

  /* Split the volume over 128 flows with random weights; a few are empty. */
  w.nts = nstreams;
  w.ts = calloc(nstreams, sizeof *w.ts);
  ck_assert_ptr_nonnull(w.ts);
  uint64_t weights[128], wsum = 0;
  for (int i = 0; i < 128; i++) {
    weights[i] = i % 29 == 5 ? 0 : kt_rng_range(&w.rng, 1, 1000);
    wsum += weights[i];
  }
  uint64_t assigned = 0;
  for (size_t i = 0; i < nstreams; i++) {
    tstream *t = &w.ts[i];
    uint64_t up = total * weights[2 * i] / wsum;
    uint64_t down = total * weights[2 * i + 1] / wsum;
    if (i == nstreams - 1)
      up = total - assigned - down; /* the remainder */
    assigned += up + down;
    flow_init(&t->up, seed * 1000 + 2 * i, up, window);
    flow_init(&t->down, seed * 1000 + 2 * i + 1, down, window);
    t->opener = (i % 2) ? &p->b : &p->a;
    t->ro = kt_open_ok(t->opener, NULL, 0, 0);
    t->ro->ctx = t;
  }
  ck_assert_uint_eq(assigned, total);

  /* The library may hold: per side its output (limit + one frame, doubled
   * for buffer growth), each stream's send queue (doubled likewise) and
   * state, and one control-frame payload being received. */
  size_t bound = 2 * (output_limit + max_frame + KR_FRAME_HEADER_SIZE) +
                 nstreams * (2 * send_queue + 4096) + 2 * max_frame +
                 256 * 1024;

  double t0 = wall();
  uint64_t iter = 0;
  for (;; iter++) {
    ck_assert_msg(iter < 50000000, "no end in sight");
    uint64_t progress = 0;
    for (size_t i = 0; i < nstreams; i++) {
      tstream *t = &w.ts[i];
      progress += write_some(&w, &t->up, t->ro);
      progress += write_some(&w, &t->down, t->ra);
    }
    p->now += 10;
    progress += pump_some(&w, 4 * MIB);
    if (kt_rng_below(&w.rng, 3) == 0)
      progress += consume_some(&w, 0);
    if (progress == 0)
      progress += consume_some(&w, 1);
    int done = 1;
    for (size_t i = 0; i < nstreams && done; i++)
      done = flow_done(&w.ts[i].up) && flow_done(&w.ts[i].down) &&
             w.ts[i].ro->closed && w.ts[i].ra && w.ts[i].ra->closed;
    if (done)
      break;
    if (progress == 0) {
      /* Nothing moved, nothing held: a stall. Say where. */
      for (size_t i = 0; i < nstreams; i++) {
        tstream *t = &w.ts[i];
        fprintf(stderr,
                "stream %u: up %" PRIu64 "/%" PRIu64 "/%" PRIu64
                " fin %d/%d, down %" PRIu64 "/%" PRIu64 "/%" PRIu64
                " fin %d/%d, queued %zu/%zu\n",
                t->ro->id, t->up.sent, t->up.recvd, t->up.total, t->up.fin_sent,
                t->up.fin_seen, t->down.sent, t->down.recvd, t->down.total,
                t->down.fin_sent, t->down.fin_seen,
                t->ro->s ? kr_stream_queued(t->ro->s) : 0,
                t->ra && t->ra->s ? kr_stream_queued(t->ra->s) : 0);
      }
      ck_abort_msg("transfer stalled after %" PRIu64 " iterations", iter);
    }
  }
  double secs = wall() - t0;
  uint64_t moved = p->moved_ab + p->moved_ba;
  fprintf(stderr,
          "# transfer_1gib: %" PRIu64 " payload bytes, %" PRIu64
          " wire bytes, %" PRIu64 " iterations, %.2f s (%.0f MiB/s)\n",
          total, moved, iter, secs, (double)total / MIB / secs);
  fprintf(stderr,
          "# transfer_1gib: peak library memory a %zu, b %zu bytes "
          "(bound %zu)\n",
          w.al_a.peak_bytes, w.al_b.peak_bytes, bound);
  ck_assert_msg(w.al_a.peak_bytes <= bound && w.al_b.peak_bytes <= bound,
                "peak library memory a %zu b %zu over the bound %zu",
                w.al_a.peak_bytes, w.al_b.peak_bytes, bound);
  for (size_t i = 0; i < nstreams; i++) {
    tstream *t = &w.ts[i];
    ck_assert_uint_eq(t->up.verified, t->up.total);
    ck_assert_uint_eq(t->down.verified, t->down.total);
    ck_assert_uint_le(t->up.max_len, window);
    ck_assert_uint_le(t->down.max_len, window);
  }
  ck_assert_uint_eq(p->tap_ab.data_total + p->tap_ba.data_total, total);
  ck_assert_uint_eq(kr_mux_num_streams(p->a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p->b.m), 0);
  world_free(&w);
}
END_TEST

/* --------------------------------------------------------- head of line */

static void hol_run(int both_directions) {
  const uint64_t total = volume_mib("KT_HOL_MIB", 256, 8) * MIB;
  uint64_t seed = kt_seed("head_of_line", 99);
  /* Defaults: 2 MiB stream window, 32 MiB connection window. */
  const uint32_t window = 2u << 20;
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  world w;
  world_init(&w, oa, ob, window, seed);
  kr_mux_options_free(oa);
  kr_mux_options_free(ob);
  kt_pair *p = &w.p;
  p->rx_stream_window[0] = p->rx_stream_window[1] = window;
  p->rx_conn_window[0] = p->rx_conn_window[1] = 32u << 20;

  w.nts = both_directions ? 3 : 2;
  w.ts = calloc(w.nts, sizeof *w.ts);
  ck_assert_ptr_nonnull(w.ts);
  /* ts[0]: a -> b, stalled (b never consumes); endless supply. */
  tstream *st = &w.ts[0];
  flow_init(&st->up, 1, UINT64_MAX / 2, window);
  flow_init(&st->down, 2, 0, window);
  st->up.stalled = 1;
  st->opener = &p->a;
  st->ro = kt_open_ok(&p->a, NULL, 0, 0);
  st->ro->ctx = st;
  /* ts[1]: a -> b, the bulk stream. */
  tstream *bulk = &w.ts[1];
  flow_init(&bulk->up, 3, total, window);
  flow_init(&bulk->down, 4, 0, window);
  bulk->opener = &p->a;
  bulk->ro = kt_open_ok(&p->a, NULL, 0, 0);
  bulk->ro->ctx = bulk;
  if (both_directions) {
    /* ts[2]: b -> a, stalled too (a never consumes). */
    tstream *st2 = &w.ts[2];
    flow_init(&st2->up, 5, UINT64_MAX / 2, window);
    flow_init(&st2->down, 6, 0, window);
    st2->up.stalled = 1;
    st2->opener = &p->b;
    st2->ro = kt_open_ok(&p->b, NULL, 0, 0);
    st2->ro->ctx = st2;
  }

  double t0 = wall();
  uint64_t iter = 0;
  while (!(bulk->up.verified == total && bulk->up.fin_seen)) {
    ck_assert_msg(iter++ < 50000000, "no end in sight");
    uint64_t progress = 0;
    for (size_t i = 0; i < w.nts; i++) {
      tstream *t = &w.ts[i];
      progress += write_some(&w, &t->up, t->ro);
      if (!t->up.stalled)
        progress += write_some(&w, &t->down, t->ra);
    }
    p->now += 10;
    progress += pump_some(&w, 8 * MIB);
    if (kt_rng_below(&w.rng, 2) == 0)
      progress += consume_some(&w, 0);
    if (progress == 0)
      progress += consume_some(&w, 1);
    for (size_t i = 0; i < w.nts; i++) {
      flow *f = &w.ts[i].up;
      if (f->stalled)
        ck_assert_msg(f->recvd <= window,
                      "stalled stream %zu received %" PRIu64
                      " bytes, more than its window %u",
                      i, f->recvd, window);
    }
    if (progress == 0)
      ck_abort_msg("bulk stream stalled at %" PRIu64 " of %" PRIu64
                   " bytes behind a stalled stream (stalled one got %" PRIu64
                   ")",
                   bulk->up.recvd, total, st->up.recvd);
  }
  double secs = wall() - t0;
  fprintf(stderr,
          "# head_of_line: %" PRIu64 " MiB next to %s stalled stream(s) in "
          "%.2f s; stalled stream got %" PRIu64
          " bytes (window %u), wrote %" PRIu64 "\n",
          total / MIB, both_directions ? "two" : "one", secs, st->up.recvd,
          window, st->up.sent);
  ck_assert_uint_le(st->up.recvd, window);
  ck_assert_uint_le(st->up.max_len, window);
  /* The stalled stream used its whole window and no more. */
  ck_assert_uint_eq(st->up.recvd, window);
  ck_assert_uint_eq(p->tap_ab.data_bytes[st->ro->id], window);
  if (both_directions)
    ck_assert_uint_eq(w.ts[2].up.recvd, window);
  world_free(&w);
}

START_TEST(head_of_line) {
  hol_run(0);
}
END_TEST

START_TEST(head_of_line_both_ways) {
  hol_run(1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("mux_transfer");
  KT_ADD(s, transfer_1gib, 280);
  KT_ADD(s, head_of_line, 200);
  KT_ADD(s, head_of_line_both_ways, 200);
  return kt_run_suite(s);
}
