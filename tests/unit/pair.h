/* Shared helpers for the libkasroute unit suites.
 *
 * - kt_rng: a small deterministic PRNG (splitmix64) so every random test is
 *   reproducible from the seed it prints.
 * - kt_alloc: an accounting allocator (current/peak bytes and blocks) that
 *   can fail the Nth allocation attempt, plugged in through kr_mem.
 * - kt_pair: two muxes (a = dialer, b = acceptor) wired back to back in
 *   memory. Bytes move only when the test pumps them, optionally in random
 *   piece sizes so frames arrive split at arbitrary points. Every callback is
 *   recorded per side and per stream (kt_srec); tests add behaviour through
 *   hooks. A wire tap parses both byte streams and can check that DATA never
 *   exceeds the credit the receiver granted.
 *
 * Everything here asserts with Check, so it is only used inside test cases.
 */
#ifndef KT_PAIR_H
#define KT_PAIR_H

#include <stdint.h>
#include <stdio.h>

#include <check.h>
#include <kasroute/kasroute.h>

/* ------------------------------------------------------------------ misc */

/* Runs the suite with TAP output on stdout; returns the process exit code. */
int kt_run_suite(Suite *s);

/* 1 when built with AddressSanitizer (the big transfers scale down). */
int kt_sanitized(void);

/* 1 when running under valgrind (detected through its preload library). */
int kt_under_valgrind(void);

/* Adds a test case with its own Check timeout (seconds). */
void kt_add_tcase(Suite *s, const char *name, const TTest *t, double timeout);
#define KT_ADD(s, fn, timeout) kt_add_tcase((s), #fn, (fn), (timeout))

/* -------------------------------------------------------------------- rng */

typedef struct kt_rng {
  uint64_t s;
} kt_rng;

void kt_rng_seed(kt_rng *r, uint64_t seed);
uint64_t kt_rng_next(kt_rng *r);
/* Uniform in [0, n); n > 0. */
uint64_t kt_rng_below(kt_rng *r, uint64_t n);
/* Uniform in [lo, hi]. */
uint64_t kt_rng_range(kt_rng *r, uint64_t lo, uint64_t hi);
/* The seed to use: $KT_SEED if set, else dflt. Printed to stderr with what. */
uint64_t kt_seed(const char *what, uint64_t dflt);

/* Deterministic byte pattern: byte at offset off of the stream keyed key.
 * Writes n bytes starting at off. */
void kt_pattern(uint64_t key, uint64_t off, uint8_t *out, size_t n);
/* Compares in[0..n) with the pattern at off. Returns the index of the first
 * mismatch, or n when all match. */
size_t kt_pattern_check(uint64_t key, uint64_t off, const uint8_t *in,
                        size_t n);

/* -------------------------------------------------------------- allocator */

typedef struct kt_alloc {
  size_t bytes, blocks;           /* outstanding now */
  size_t peak_bytes, peak_blocks; /* high-water marks */
  uint64_t attempts;              /* malloc + realloc calls so far */
  uint64_t fail_at;               /* 1-based attempt that fails; 0: never */
  int fail_after;                 /* non-zero: every attempt >= fail_at fails */
  uint64_t failures;              /* attempts refused */
} kt_alloc;

void kt_alloc_init(kt_alloc *a);
/* A kr_mem whose hooks account into a (which must outlive every user). */
kr_mem kt_alloc_mem(kt_alloc *a);
/* Resets the peak marks to the current values. */
void kt_alloc_reset_peak(kt_alloc *a);

/* --------------------------------------------------------------- metadata */

/* Flattens md[0..n) into a freshly malloc'ed canonical byte string
 * (u32 name_len, name, u32 value_len, value per entry), for comparisons. */
uint8_t *kt_md_flatten(const kr_md *md, size_t n, size_t *len);
/* Convenience initialiser from NUL-terminated strings. */
kr_md kt_md(const char *name, const char *value);

/* -------------------------------------------------------------------- tap */

#define KT_TAP_IDS 4096 /* per-stream counters for ids below this */

/* Parses one direction of the wire. */
typedef struct kt_tap {
  uint8_t hdr[KR_FRAME_HEADER_SIZE];
  size_t hdr_have;
  uint32_t len, pay_have;
  uint8_t type, flags;
  uint32_t id;
  uint8_t pay[KR_FRAME_HEADER_SIZE + 8 + KR_MAX_REASON + 16];
  uint64_t frames[256]; /* per type */
  uint64_t data_bytes[KT_TAP_IDS];
  uint64_t data_total;
  uint32_t max_data_len; /* longest DATA payload seen */
  uint32_t max_len;      /* longest payload of any frame */
  int data_fin[KT_TAP_IDS];
  uint64_t window_incr[KT_TAP_IDS];
  uint64_t conn_incr;
  int goaways;
  uint32_t goaway_last, goaway_code;
  int resets, reset_acks;
  uint32_t reset_id, reset_code;
  uint64_t bytes;
} kt_tap;

void kt_tap_feed(kt_tap *t, const uint8_t *p, size_t n);

/* ------------------------------------------------------------------- pair */

#define KT_MAX_RECS 1024

struct kt_side;

/* Everything observed about one stream on one side. */
typedef struct kt_srec {
  struct kt_side *side;
  kr_stream *s; /* NULL once on_close returned */
  uint32_t id;
  int local;  /* opened by this side */
  int opened; /* on_open fired (peer-opened streams) */
  int open_fin;
  int replied; /* on_reply count */
  int reply_fin;
  uint8_t *md; /* flattened metadata of on_open / on_reply */
  size_t md_len;
  uint8_t *data; /* bytes kept when side->keep_data */
  size_t data_len, data_cap;
  uint64_t received;   /* total on_data bytes */
  uint64_t unconsumed; /* delivered minus consumed */
  uint64_t max_unconsumed;
  int fins;      /* on_fin count */
  int writables; /* on_writable count */
  int closed;    /* on_close count */
  uint32_t close_code;
  char reason[KR_MAX_REASON + 1];
  size_t reason_len;
  int data_after_close; /* on_data after on_close (a bug) */
  void *ctx;
} kt_srec;

typedef struct kt_side {
  const char *name;
  kr_mux *m;
  struct kt_pair *pair;
  struct kt_side *peer;
  int freed;        /* kr_mux_free() called from a hook; m becomes NULL */
  int64_t recv_err; /* first negative kr_mux_recv() result */
  int64_t recv_err_last;
  int hellos;
  uint8_t *hello_md;
  size_t hello_md_len;
  int goaways, goaway_remote;
  uint32_t goaway_code;
  char goaway_reason[KR_MAX_REASON + 1];
  size_t goaway_reason_len;
  int pings;
  kr_time_us last_rtt;
  int opens, replies, closes, fins, writables;
  uint64_t data_cb;
  kt_srec **recs;
  size_t nrecs;
  /* behaviour switches */
  int auto_reply;   /* reply (no metadata) from on_open */
  int auto_consume; /* consume every byte inside on_data */
  int keep_data;    /* append on_data bytes to rec->data */
  int reply_rc;     /* result of the last automatic reply */
  /* tolerant: library errors inside the helpers (automatic consume,
   * kr_mux_sent) are recorded in api_err instead of failing the test; for
   * the allocation-failure suite. */
  int tolerant;
  int api_err;
  /* optional hooks, called after recording */
  void (*hook_hello)(struct kt_side *);
  void (*hook_open)(struct kt_side *, kt_srec *);
  void (*hook_reply)(struct kt_side *, kt_srec *);
  void (*hook_data)(struct kt_side *, kt_srec *, const uint8_t *, size_t);
  void (*hook_fin)(struct kt_side *, kt_srec *);
  void (*hook_writable)(struct kt_side *, kt_srec *);
  void (*hook_close)(struct kt_side *, kt_srec *);
  void (*hook_goaway)(struct kt_side *);
  void *ctx;
} kt_side;

typedef struct kt_pair {
  kt_side a, b; /* a: dialer, b: acceptor */
  kr_time_us now;
  /* piece sizes: 0 = whatever kr_mux_send gives; otherwise random pieces in
   * [1, max_piece] drawn from rng */
  size_t max_piece;
  kt_rng rng;
  kt_tap tap_ab, tap_ba;
  /* receiver windows for the credit check (0: no check). [0] = a receives */
  uint32_t rx_stream_window[2], rx_conn_window[2];
  int drop_ab, drop_ba; /* discard bytes instead of delivering them */
  uint8_t *buf;
  size_t buf_cap;
  uint64_t moved_ab, moved_ba;
} kt_pair;

/* A lone side (no pair): for driving one mux with hand-made bytes.
 * kt_side_free frees its mux (unless freed from a hook) and records. */
void kt_side_init(kt_side *s, const char *name);
void kt_side_free(kt_side *s);

/* A callback set that records into kt_side (user_data = kt_side *). */
int kt_callbacks_new(kr_mux_callbacks **out);

/* Options with a role, asserting success. */
kr_mux_options *kt_opts(kr_role role);

/* Creates both muxes with the recorder callbacks. NULL options: defaults
 * with the right role. Returns 0 or the first error (nothing left
 * allocated by the pair except what kt_pair_free releases). */
int kt_pair_setup(kt_pair *p, const kr_mux_options *oa,
                  const kr_mux_options *ob, kr_time_us now);
/* Same, asserting success. */
void kt_pair_init(kt_pair *p, const kr_mux_options *oa,
                  const kr_mux_options *ob);
/* kt_pair_init + pump until both are ready (asserted). */
void kt_pair_ready(kt_pair *p, const kr_mux_options *oa,
                   const kr_mux_options *ob);
/* Frees both muxes (unless freed already) and every record. */
void kt_pair_free(kt_pair *p);

/* One step from -> peer: takes what kr_mux_send gives (or a random piece),
 * marks it sent and feeds it to the peer. Returns the bytes moved. */
size_t kt_move(kt_pair *p, kt_side *from);
/* Moves bytes both ways until neither side has anything to send.
 * Returns the bytes moved. Fails the test if it never settles. */
uint64_t kt_pump(kt_pair *p);

/* Opens a stream on side with a fresh record as its user data.
 * Returns the record or NULL with *rc set. */
kt_srec *kt_open(kt_side *side, const kr_md *md, size_t n, int fin, int *rc);
/* Same, asserting success. */
kt_srec *kt_open_ok(kt_side *side, const kr_md *md, size_t n, int fin);
/* The record of the stream with this id on side, or NULL. */
kt_srec *kt_rec(kt_side *side, uint32_t id);
/* The i-th peer-opened record (on_open order), or NULL. */
kt_srec *kt_peer_rec(kt_side *side, size_t i);

/* Writes all of buf[0..n) on rec (asserting every byte is accepted). */
void kt_write_all(kt_srec *rec, const void *buf, size_t n);
/* Consumes n delivered bytes (asserting success). */
void kt_consume(kt_srec *rec, size_t n);

/* Collects everything kr_mux_send() gives into a malloc'ed buffer. */
uint8_t *kt_drain(kr_mux *m, size_t *len);

#endif
