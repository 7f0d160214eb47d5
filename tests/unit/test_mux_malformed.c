/* Unit tests: a mux fed hand-made, malformed byte sequences
 * (lib/core/mux.c receive path).
 *
 * Each case builds a victim mux, completes its handshake with a valid peer
 * HELLO (unless the case is about the handshake), then feeds the bytes.
 * The victim must: return the right negative error from kr_mux_recv(), fire
 * on_goaway(remote = 0) with the right code and a non-empty reason, close
 * every stream, queue a GOAWAY frame with that code, refuse later input
 * with KR_ECLOSED, and free everything it allocated. Every case is run with
 * the bytes in one piece and again one byte per kr_mux_recv() call. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"
#include "pair.h"

/* Bound on what a victim may hold: it buffers at most one control frame
 * payload; DATA is delivered, not buffered. */
#define VICTIM_MEM_BOUND ((size_t)512 * 1024)

/* ------------------------------------------------------------- byte kits */

typedef struct wire {
  uint8_t b[200000];
  size_t n;
} wire;

static void w_frame(wire *w, uint8_t type, uint8_t flags, uint32_t id,
                    const void *payload, size_t len) {
  ck_assert_uint_le(w->n + 9 + len, sizeof w->b);
  kr__put_u24(w->b + w->n, (uint32_t)len);
  w->b[w->n + 3] = type;
  w->b[w->n + 4] = flags;
  kr__put_u32(w->b + w->n + 5, id);
  w->n += 9;
  if (len) {
    if (payload)
      memcpy(w->b + w->n, payload, len);
    else
      memset(w->b + w->n, 0x61, len);
  }
  w->n += len;
}

/* Only a header, claiming len bytes of payload that never come. */
static void w_hdr(wire *w, uint32_t len, uint8_t type, uint8_t flags,
                  uint32_t id) {
  kr__put_u24(w->b + w->n, len);
  w->b[w->n + 3] = type;
  w->b[w->n + 4] = flags;
  kr__put_u32(w->b + w->n + 5, id);
  w->n += 9;
}

static void w_open(wire *w, uint32_t id, uint8_t flags) {
  static const uint8_t empty_md[2] = {0, 0};
  w_frame(w, KR__FRAME_OPEN, flags, id, empty_md, 2);
}

static void w_u32_frame(wire *w, uint8_t type, uint8_t flags, uint32_t id,
                        uint32_t v) {
  uint8_t p[4];
  kr__put_u32(p, v);
  w_frame(w, type, flags, id, p, 4);
}

static void w_reset(wire *w, uint32_t id, uint8_t flags, uint32_t code) {
  w_u32_frame(w, KR__FRAME_RESET, flags, id, code);
}

static void w_hello(wire *w, uint8_t minv, uint8_t maxv, uint8_t role) {
  kr__hello h;
  memset(&h, 0, sizeof h);
  h.min_version = minv;
  h.max_version = maxv;
  h.role = role;
  kr_md md = kt_md(":name", "peer");
  uint8_t p[256];
  int n = kr__hello_encode(p, sizeof p, &h, &md, 1);
  ck_assert_int_gt(n, 0);
  w_frame(w, KR__FRAME_HELLO, 0, 0, p, (size_t)n);
}

/* --------------------------------------------------------------- victims */

typedef struct victim {
  kt_alloc al;
  kt_side side;
  kr_role role;
  int reply_fin; /* answer every OPEN with a REPLY carrying FIN */
} victim;

static void reply_fin_hook(kt_side *s, kt_srec *r) {
  int rc = kr_stream_reply(r->s, NULL, 0, 1);
  ck_assert_int_eq(rc, 0);
}

typedef void (*opts_fn)(kr_mux_options *o);

static void victim_new(victim *v, kr_role role, opts_fn opts, int reply_fin) {
  kt_alloc_init(&v->al);
  kt_side_init(&v->side, role == KR_ROLE_ACCEPTOR ? "acceptor" : "dialer");
  v->role = role;
  v->side.auto_reply = !reply_fin;
  if (reply_fin)
    v->side.hook_open = reply_fin_hook;
  kr_mux_options *o = kt_opts(role);
  kr_mem mem = kt_alloc_mem(&v->al);
  ck_assert_int_eq(kr_mux_options_set_mem(o, &mem), 0);
  if (opts)
    opts(o);
  kr_mux_callbacks *c = NULL;
  ck_assert_int_eq(kt_callbacks_new(&c), 0);
  int rc = kr_mux_new(&v->side.m, o, c, 0, &v->side);
  ck_assert_msg(rc == 0, "kr_mux_new: %s", kr_err_name(rc));
  kr_mux_options_free(o);
  kr_mux_callbacks_free(c);
  /* Its own HELLO goes out first. */
  size_t n;
  uint8_t *out = kt_drain(v->side.m, &n);
  kr__frame_hdr h;
  const char *reason = NULL;
  ck_assert_uint_ge(n, 9);
  ck_assert_int_eq(kr__frame_hdr_decode(out, KR_MIN_FRAME_SIZE, &h, &reason),
                   0);
  ck_assert_uint_eq(h.type, KR__FRAME_HELLO);
  ck_assert_uint_eq(n, 9 + h.length);
  free(out);
}

static void victim_handshake(victim *v) {
  wire w = {.n = 0};
  w_hello(&w, 1, 1,
          v->role == KR_ROLE_ACCEPTOR ? KR_ROLE_DIALER : KR_ROLE_ACCEPTOR);
  int64_t rc = kr_mux_recv(v->side.m, w.b, w.n, 0);
  ck_assert_msg(rc == (int64_t)w.n, "valid peer HELLO: %s",
                rc < 0 ? kr_err_name((int)rc) : "short");
  ck_assert_int_eq(kr_mux_is_ready(v->side.m), 1);
  ck_assert_int_eq(v->side.hellos, 1);
  ck_assert_int_eq(v->side.goaways, 0);
}

static void victim_free(victim *v) {
  kt_side_free(&v->side);
  ck_assert_msg(v->al.blocks == 0 && v->al.bytes == 0,
                "mux leaked %zu blocks / %zu bytes", v->al.blocks, v->al.bytes);
}

/* Finds the GOAWAY frame in out[0..n). */
static int find_goaway(const uint8_t *out, size_t n, uint32_t *code,
                       uint32_t *reason_len) {
  size_t off = 0;
  int found = 0;
  while (off + 9 <= n) {
    kr__frame_hdr h;
    const char *reason = NULL;
    int rc = kr__frame_hdr_decode(out + off, KR_MAX_FRAME_SIZE, &h, &reason);
    ck_assert_msg(rc == 0,
                  "the victim's own output does not decode at "
                  "offset %zu: %s (%s)",
                  off, kr_err_name(rc), reason ? reason : "");
    ck_assert_uint_le(off + 9 + h.length, n);
    if (h.type == KR__FRAME_GOAWAY) {
      *code = kr__get_u32(out + off + 9 + 4);
      *reason_len = h.length - 8;
      found++;
    }
    off += 9 + h.length;
  }
  ck_assert_uint_eq(off, n);
  return found;
}

/* ----------------------------------------------------------------- cases */

typedef struct mcase {
  const char *name;
  kr_role role;  /* the victim's */
  int handshake; /* complete it with a valid HELLO first */
  opts_fn opts;
  int reply_fin;
  /* builds the bytes; may call the victim's API (open streams) */
  void (*build)(victim *v, wire *w);
  int64_t err;
  uint32_t code;
} mcase;

static void o_small_frame(kr_mux_options *o) {
  ck_assert_int_eq(kr_mux_options_set_max_frame_size(o, KR_MIN_FRAME_SIZE), 0);
}
static void o_two_streams(kr_mux_options *o) {
  ck_assert_int_eq(kr_mux_options_set_max_streams(o, 2), 0);
}
static void o_small_windows(kr_mux_options *o) {
  ck_assert_int_eq(kr_mux_options_set_stream_window(o, 1000), 0);
  ck_assert_int_eq(kr_mux_options_set_connection_window(o, 1500), 0);
}

static kt_srec *victim_open(victim *v) {
  return kt_open_ok(&v->side, NULL, 0, 0);
}

static void b_len_over_default(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_hdr(w, 65537, KR__FRAME_DATA, 0, 1);
}
static void b_len_over_small(victim *v, wire *w) {
  w_hdr(w, KR_MIN_FRAME_SIZE + 1, KR__FRAME_OPEN, 0, 1);
}
static void b_len_max_u24(victim *v, wire *w) {
  w_hdr(w, 0xffffff, KR__FRAME_DATA, 0, 1);
}
static void b_unknown_type(victim *v, wire *w) {
  w_frame(w, 0x08, 0, 0, NULL, 0);
}
static void b_unknown_type_ff(victim *v, wire *w) {
  w_frame(w, 0xff, 0, 1, NULL, 4);
}
static void b_bad_flags_window(victim *v, wire *w) {
  w_u32_frame(w, KR__FRAME_WINDOW, 0x01, 0, 100);
}
static void b_bad_flags_data(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_DATA, 0x02, 1, "x", 1);
}
static void b_reserved_bit(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_DATA, 0, 0x80000001u, "x", 1);
}
static void b_data_unknown_stream(victim *v, wire *w) {
  w_frame(w, KR__FRAME_DATA, 0, 1, "x", 1);
}
static void b_data_unknown_stream_high(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_DATA, 0, 9, "x", 1);
}
static void b_data_after_fin(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_DATA, KR__FLAG_FIN, 1, "x", 1);
  w_frame(w, KR__FRAME_DATA, 0, 1, "y", 1);
}
static void b_data_after_open_fin(victim *v, wire *w) {
  w_open(w, 1, KR__FLAG_FIN);
  w_frame(w, KR__FRAME_DATA, 0, 1, "y", 1);
}
static void b_data_closed_stream(victim *v, wire *w) {
  /* Victim replies with FIN in on_open: after the peer's FIN the stream is
   * closed on both sides. */
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_DATA, KR__FLAG_FIN, 1, "x", 1);
  w_frame(w, KR__FRAME_DATA, 0, 1, "y", 1);
}
static void b_data_after_peer_reset(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_reset(w, 1, 0, KR_CODE_CANCEL);
  w_frame(w, KR__FRAME_DATA, 0, 1, "y", 1);
}
static void b_window_overflow_conn(victim *v, wire *w) {
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 0, KR_MAX_WINDOW);
}
static void b_window_overflow_stream(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 1, KR_MAX_WINDOW);
}
static void b_window_overflow_twice(victim *v, wire *w) {
  /* 32 MiB + 2^30 + 2^30 passes 2^31-1 on the second increment. */
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 0, 1u << 30);
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 0, 1u << 30);
}
static void b_window_zero_conn(victim *v, wire *w) {
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 0, 0);
}
static void b_window_zero_stream(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 1, 0);
}
static void b_window_reserved_bit(victim *v, wire *w) {
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 0, 0x80000001u);
}
static void b_window_bad_size(victim *v, wire *w) {
  w_frame(w, KR__FRAME_WINDOW, 0, 0, "\0\0\0\1\0", 5);
}
static void b_window_unknown_stream(victim *v, wire *w) {
  /* Never-opened id: not a legal race. */
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 7, 100);
}

/* Metadata blocks that lie about their inner lengths. */
static void md_open(wire *w, const uint8_t *md, size_t n) {
  w_frame(w, KR__FRAME_OPEN, 0, 1, md, n);
}
static void b_md_name_past_end(victim *v, wire *w) {
  static const uint8_t md[] = {0, 1, 0, 10, 0, 0, 0, 0, 'a', 'b', 'c'};
  md_open(w, md, sizeof md);
}
static void b_md_value_past_end(victim *v, wire *w) {
  static const uint8_t md[] = {0, 1, 0, 1, 0, 0, 0, 9, 'a', 'v'};
  md_open(w, md, sizeof md);
}
static void b_md_value_huge(victim *v, wire *w) {
  static const uint8_t md[] = {0, 1, 0, 1, 0xff, 0xff, 0xff, 0xff, 'a', 'v'};
  md_open(w, md, sizeof md);
}
static void b_md_trailing(victim *v, wire *w) {
  static const uint8_t md[] = {0, 1, 0, 1, 0, 0, 0, 1, 'a', 'v', 'X'};
  md_open(w, md, sizeof md);
}
static void b_md_count_more(victim *v, wire *w) {
  static const uint8_t md[] = {0, 2, 0, 1, 0, 0, 0, 1, 'a', 'v'};
  md_open(w, md, sizeof md);
}
static void b_md_empty_name(victim *v, wire *w) {
  static const uint8_t md[] = {0, 1, 0, 0, 0, 0, 0, 1, 'v'};
  md_open(w, md, sizeof md);
}
static void b_md_empty_payload(victim *v, wire *w) {
  w_frame(w, KR__FRAME_OPEN, 0, 1, NULL, 0);
}
static void b_md_reply_lies(victim *v, wire *w) {
  kt_srec *r = victim_open(v);
  static const uint8_t md[] = {0, 1, 0, 5, 0, 0, 0, 0, 'a'};
  w_frame(w, KR__FRAME_REPLY, 0, r->id, md, sizeof md);
}

static void b_too_many_streams(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_open(w, 3, 0);
  w_open(w, 5, 0);
}
static void b_too_many_streams_after_close(victim *v, wire *w) {
  /* Stream 1 ends cleanly (FIN both ways; the victim replies with FIN), so
   * 3 and 5 fit; 7 is the third concurrent one. */
  w_open(w, 1, KR__FLAG_FIN);
  w_open(w, 3, 0);
  w_open(w, 5, 0);
  w_open(w, 7, 0);
}
static void b_data_over_stream_window(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_DATA, 0, 1, NULL, 1001);
}
static void b_data_over_stream_window_sum(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_DATA, 0, 1, NULL, 600);
  w_frame(w, KR__FRAME_DATA, 0, 1, NULL, 401);
}
static void b_data_over_conn_window(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_open(w, 3, 0);
  w_frame(w, KR__FRAME_DATA, 0, 1, NULL, 1000);
  w_frame(w, KR__FRAME_DATA, 0, 3, NULL, 501);
}
static void b_open_non_increasing(victim *v, wire *w) {
  w_open(w, 5, 0);
  w_open(w, 3, 0);
}
static void b_open_reused(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_open(w, 1, 0);
}
static void b_open_reused_after_close(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_reset(w, 1, 0, KR_CODE_CANCEL);
  w_open(w, 1, 0);
}
static void b_open_wrong_parity(victim *v, wire *w) {
  w_open(w, 2, 0);
}
static void b_open_wrong_parity_at_dialer(victim *v, wire *w) {
  w_open(w, 1, 0);
}
static void b_second_hello(victim *v, wire *w) {
  w_hello(w, 1, 1,
          v->role == KR_ROLE_ACCEPTOR ? KR_ROLE_DIALER : KR_ROLE_ACCEPTOR);
}
static void b_first_ping(victim *v, wire *w) {
  w_frame(w, KR__FRAME_PING, 0, 0, "12345678", 8);
}
static void b_first_open(victim *v, wire *w) {
  w_open(w, 1, 0);
}
static void b_first_window(victim *v, wire *w) {
  w_u32_frame(w, KR__FRAME_WINDOW, 0, 0, 100);
}
static void b_role_clash(victim *v, wire *w) {
  w_hello(w, 1, 1, v->role);
}
static void b_role_invalid(victim *v, wire *w) {
  w_hello(w, 1, 1, 3);
}
static void b_version_future(victim *v, wire *w) {
  w_hello(w, 2, 3, v->role == KR_ROLE_ACCEPTOR ? 1 : 2);
}
static void b_hello_bad_magic(victim *v, wire *w) {
  w_hello(w, 1, 1, 1);
  w->b[9] = 'X';
}
static void b_hello_bad_setting(victim *v, wire *w) {
  uint8_t p[] = {'K', 'R', 'M', 'X', 1, 1, 1, 0,
                 0,   1,   0,   2,   0, 0, 0, 0, /* STREAM_WINDOW = 0 */
                 0,   0};
  w_frame(w, KR__FRAME_HELLO, 0, 0, p, sizeof p);
}
static void b_hello_md_lies(victim *v, wire *w) {
  uint8_t p[] = {'K', 'R', 'M', 'X', 1, 1, 1, 0, 0, 0, 0, 1, 0, 9, 0, 0, 0, 0};
  w_frame(w, KR__FRAME_HELLO, 0, 0, p, sizeof p);
}
static void b_hello_too_big(victim *v, wire *w) {
  /* Before HELLO is known every side accepts 16384 bytes, whatever its own
   * MAX_FRAME_SIZE. */
  w_hdr(w, KR_MIN_FRAME_SIZE + 1, KR__FRAME_HELLO, 0, 0);
}
static void b_reset_unknown(victim *v, wire *w) {
  w_reset(w, 7, 0, KR_CODE_CANCEL);
}
static void b_reset_reason_long(victim *v, wire *w) {
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_RESET, 0, 1, NULL, 4 + KR_MAX_REASON + 1);
}
static void b_reply_from_opener(victim *v, wire *w) {
  static const uint8_t md[2] = {0, 0};
  w_open(w, 1, 0);
  w_frame(w, KR__FRAME_REPLY, 0, 1, md, 2);
}
static void b_reply_twice(victim *v, wire *w) {
  kt_srec *r = victim_open(v);
  static const uint8_t md[2] = {0, 0};
  w_frame(w, KR__FRAME_REPLY, 0, r->id, md, 2);
  w_frame(w, KR__FRAME_REPLY, 0, r->id, md, 2);
}
static void b_data_before_reply(victim *v, wire *w) {
  kt_srec *r = victim_open(v);
  w_frame(w, KR__FRAME_DATA, 0, r->id, "x", 1);
}
static void b_reply_unknown(victim *v, wire *w) {
  static const uint8_t md[2] = {0, 0};
  w_frame(w, KR__FRAME_REPLY, 0, 1, md, 2);
}
static void b_ping_bad_size(victim *v, wire *w) {
  w_frame(w, KR__FRAME_PING, 0, 0, NULL, 7);
}
static void b_goaway_on_stream(victim *v, wire *w) {
  w_frame(w, KR__FRAME_GOAWAY, 0, 1, NULL, 8);
}
static void b_goaway_short(victim *v, wire *w) {
  w_frame(w, KR__FRAME_GOAWAY, 0, 0, NULL, 7);
}
static void b_hello_on_stream(victim *v, wire *w) {
  w_frame(w, KR__FRAME_HELLO, 0, 1, NULL, 12);
}

#define A KR_ROLE_ACCEPTOR
#define D KR_ROLE_DIALER
#define PROTO KR_EPROTO, KR_CODE_PROTOCOL
#define FSIZE KR_EFRAMESIZE, KR_CODE_FRAME_SIZE
#define FLOW KR_EFLOWCTL, KR_CODE_FLOW_CONTROL

static const mcase cases[] = {
    {"length over the default limit", A, 1, NULL, 0, b_len_over_default, FSIZE},
    {"length over a 16384 limit", A, 1, o_small_frame, 0, b_len_over_small,
     FSIZE},
    {"length 2^24-1", A, 1, NULL, 0, b_len_max_u24, FSIZE},
    {"unknown type 8", A, 1, NULL, 0, b_unknown_type, PROTO},
    {"unknown type 255", A, 1, NULL, 0, b_unknown_type_ff, PROTO},
    {"flags on WINDOW", A, 1, NULL, 0, b_bad_flags_window, PROTO},
    {"unknown DATA flag", A, 1, NULL, 0, b_bad_flags_data, PROTO},
    {"reserved stream-id bit", A, 1, NULL, 0, b_reserved_bit, PROTO},
    {"DATA on a never-opened stream", A, 1, NULL, 0, b_data_unknown_stream,
     PROTO},
    {"DATA on a higher never-opened stream", A, 1, NULL, 0,
     b_data_unknown_stream_high, PROTO},
    {"DATA after FIN", A, 1, NULL, 0, b_data_after_fin, PROTO},
    {"DATA after OPEN with FIN", A, 1, NULL, 0, b_data_after_open_fin, PROTO},
    {"DATA on a closed stream", A, 1, NULL, 1, b_data_closed_stream, PROTO},
    {"DATA after the peer's RESET", A, 1, NULL, 0, b_data_after_peer_reset,
     PROTO},
    {"WINDOW(0) overflowing 2^31-1", A, 1, NULL, 0, b_window_overflow_conn,
     FLOW},
    {"WINDOW(stream) overflowing 2^31-1", A, 1, NULL, 0,
     b_window_overflow_stream, FLOW},
    {"two WINDOWs overflowing together", A, 1, NULL, 0, b_window_overflow_twice,
     FLOW},
    {"WINDOW(0) increment 0", A, 1, NULL, 0, b_window_zero_conn, PROTO},
    {"WINDOW(stream) increment 0", A, 1, NULL, 0, b_window_zero_stream, PROTO},
    {"WINDOW with the reserved bit", A, 1, NULL, 0, b_window_reserved_bit,
     PROTO},
    {"WINDOW of 5 bytes", A, 1, NULL, 0, b_window_bad_size, PROTO},
    {"WINDOW on a never-opened stream", A, 1, NULL, 0, b_window_unknown_stream,
     PROTO},
    {"metadata name length past the end", A, 1, NULL, 0, b_md_name_past_end,
     PROTO},
    {"metadata value length past the end", A, 1, NULL, 0, b_md_value_past_end,
     PROTO},
    {"metadata value length 2^32-1", A, 1, NULL, 0, b_md_value_huge, PROTO},
    {"metadata trailing garbage", A, 1, NULL, 0, b_md_trailing, PROTO},
    {"metadata count larger than entries", A, 1, NULL, 0, b_md_count_more,
     PROTO},
    {"metadata empty name", A, 1, NULL, 0, b_md_empty_name, PROTO},
    {"OPEN without a metadata block", A, 1, NULL, 0, b_md_empty_payload, PROTO},
    {"REPLY metadata lies", D, 1, NULL, 0, b_md_reply_lies, PROTO},
    {"OPEN beyond MAX_STREAMS", A, 1, o_two_streams, 0, b_too_many_streams,
     KR_ESTREAMLIMIT, KR_CODE_STREAM_LIMIT},
    {"OPEN beyond MAX_STREAMS after a close", A, 1, o_two_streams, 1,
     b_too_many_streams_after_close, KR_ESTREAMLIMIT, KR_CODE_STREAM_LIMIT},
    {"DATA beyond the stream window", A, 1, o_small_windows, 0,
     b_data_over_stream_window, FLOW},
    {"DATA beyond the stream window in two frames", A, 1, o_small_windows, 0,
     b_data_over_stream_window_sum, FLOW},
    {"DATA beyond the connection window", A, 1, o_small_windows, 0,
     b_data_over_conn_window, FLOW},
    {"OPEN with a lower id", A, 1, NULL, 0, b_open_non_increasing, PROTO},
    {"OPEN reusing an id", A, 1, NULL, 0, b_open_reused, PROTO},
    {"OPEN reusing a closed id", A, 1, NULL, 0, b_open_reused_after_close,
     PROTO},
    {"OPEN with the acceptor's parity", A, 1, NULL, 0, b_open_wrong_parity,
     PROTO},
    {"OPEN with the dialer's parity", D, 1, NULL, 0,
     b_open_wrong_parity_at_dialer, PROTO},
    {"second HELLO", A, 1, NULL, 0, b_second_hello, PROTO},
    {"second HELLO at the dialer", D, 1, NULL, 0, b_second_hello, PROTO},
    {"PING before HELLO", A, 0, NULL, 0, b_first_ping, PROTO},
    {"OPEN before HELLO", A, 0, NULL, 0, b_first_open, PROTO},
    {"WINDOW before HELLO", D, 0, NULL, 0, b_first_window, PROTO},
    {"role clash (acceptors)", A, 0, NULL, 0, b_role_clash, PROTO},
    {"role clash (dialers)", D, 0, NULL, 0, b_role_clash, PROTO},
    {"invalid role", A, 0, NULL, 0, b_role_invalid, PROTO},
    {"version mismatch", A, 0, NULL, 0, b_version_future, KR_EVERSION,
     KR_CODE_VERSION},
    {"version mismatch at the dialer", D, 0, NULL, 0, b_version_future,
     KR_EVERSION, KR_CODE_VERSION},
    {"HELLO bad magic", A, 0, NULL, 0, b_hello_bad_magic, PROTO},
    {"HELLO setting out of range", A, 0, NULL, 0, b_hello_bad_setting, PROTO},
    {"HELLO metadata lies", A, 0, NULL, 0, b_hello_md_lies, PROTO},
    {"HELLO over 16384 bytes", A, 0, NULL, 0, b_hello_too_big, FSIZE},
    {"HELLO on a stream", A, 0, NULL, 0, b_hello_on_stream, PROTO},
    {"RESET for a never-opened stream", A, 1, NULL, 0, b_reset_unknown, PROTO},
    {"RESET with a 257-byte reason", A, 1, NULL, 0, b_reset_reason_long, PROTO},
    {"REPLY from the opener", A, 1, NULL, 0, b_reply_from_opener, PROTO},
    {"REPLY twice", D, 1, NULL, 0, b_reply_twice, PROTO},
    {"DATA before REPLY", D, 1, NULL, 0, b_data_before_reply, PROTO},
    {"REPLY for a never-opened stream", D, 1, NULL, 0, b_reply_unknown, PROTO},
    {"PING of 7 bytes", A, 1, NULL, 0, b_ping_bad_size, PROTO},
    {"GOAWAY on a stream", A, 1, NULL, 0, b_goaway_on_stream, PROTO},
    {"GOAWAY of 7 bytes", A, 1, NULL, 0, b_goaway_short, PROTO},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* Runs one case; bytewise: one kr_mux_recv() per byte. */
static void run_case(const mcase *c, int bytewise) {
  const char *mode = bytewise ? "bytewise" : "whole";
  victim v;
  victim_new(&v, c->role, c->opts, c->reply_fin);
  if (c->handshake)
    victim_handshake(&v);
  kr_mux *m = v.side.m;
  wire *w = calloc(1, sizeof *w);
  ck_assert_ptr_nonnull(w);
  c->build(&v, w);
  /* Output owed by the valid prefix (replies, its own OPENs) is not under
   * test: take it now so only the failure's output remains after. */
  size_t pre_n;
  free(kt_drain(m, &pre_n));
  int opens_before = v.side.opens;

  int64_t got = 0;
  size_t fed = 0;
  if (!bytewise) {
    got = kr_mux_recv(m, w->b, w->n, 0);
    fed = w->n;
  } else {
    for (fed = 0; fed < w->n; fed++) {
      got = kr_mux_recv(m, w->b + fed, 1, 0);
      if (got < 0) {
        fed++;
        break;
      }
      ck_assert_msg(got == 1, "[%s, %s] byte %zu: kr_mux_recv returned %lld",
                    c->name, mode, fed, (long long)got);
      got = 0;
    }
  }
  ck_assert_msg(got == c->err,
                "[%s, %s] kr_mux_recv returned %s (%lld) after %zu of %zu "
                "bytes, expected %s",
                c->name, mode, got < 0 ? kr_err_name((int)got) : "success",
                (long long)got, fed, w->n, kr_err_name((int)c->err));
  ck_assert_msg(v.side.goaways == 1, "[%s, %s] on_goaway fired %d times",
                c->name, mode, v.side.goaways);
  ck_assert_msg(v.side.goaway_remote == 0, "[%s, %s] on_goaway remote = %d",
                c->name, mode, v.side.goaway_remote);
  ck_assert_msg(v.side.goaway_code == c->code,
                "[%s, %s] on_goaway code %u (%s), expected %u (%s); "
                "reason \"%s\"",
                c->name, mode, v.side.goaway_code,
                kr_code_name(v.side.goaway_code), c->code,
                kr_code_name(c->code), v.side.goaway_reason);
  ck_assert_msg(v.side.goaway_reason_len > 0, "[%s, %s] empty GOAWAY reason",
                c->name, mode);

  /* Every stream got its on_close, with an error code. */
  ck_assert_uint_eq(kr_mux_num_streams(m), 0);
  for (size_t i = 0; i < v.side.nrecs; i++) {
    kt_srec *r = v.side.recs[i];
    ck_assert_msg(r->closed == 1,
                  "[%s, %s] stream %u: on_close fired %d "
                  "times",
                  c->name, mode, r->id, r->closed);
  }

  /* The GOAWAY is on the wire with the same code and a reason. */
  ck_assert_int_eq(kr_mux_want_write(m), 1);
  size_t n;
  uint8_t *out = kt_drain(m, &n);
  uint32_t code = 0, rlen = 0;
  int found = find_goaway(out, n, &code, &rlen);
  free(out);
  ck_assert_msg(found == 1, "[%s, %s] %d GOAWAY frames in the output", c->name,
                mode, found);
  ck_assert_msg(code == c->code, "[%s, %s] GOAWAY frame code %u, expected %u",
                c->name, mode, code, c->code);
  ck_assert_msg(rlen > 0, "[%s, %s] GOAWAY frame without a reason", c->name,
                mode);

  /* Dead from now on. */
  ck_assert_int_eq(kr_mux_recv(m, w->b, 1, 0), KR_ECLOSED);
  ck_assert_int_eq(kr_mux_recv(m, w->b, w->n, 0), KR_ECLOSED);
  ck_assert_int_eq(kr_mux_tick(m, 1), KR_ECLOSED);
  ck_assert_int_eq(kr_mux_want_read(m), 0);
  ck_assert_int_eq(kr_mux_is_done(m), 1);
  ck_assert_int_eq(kr_mux_can_open(m), 0);
  kr_stream *s = NULL;
  ck_assert_int_eq(kr_stream_open(m, NULL, 0, 0, NULL, &s), KR_ECLOSED);
  ck_assert_int_eq(kr_mux_goaway(m, 0, NULL), KR_ECLOSED);
  ck_assert_int_eq(v.side.goaways, 1);
  ck_assert_int_ge(v.side.opens, opens_before);
  ck_assert_msg(v.al.peak_bytes <= VICTIM_MEM_BOUND,
                "[%s, %s] the victim held up to %zu bytes (bound %zu)", c->name,
                mode, v.al.peak_bytes, VICTIM_MEM_BOUND);
  free(w);
  victim_free(&v);
}

START_TEST(malformed_whole) {
  run_case(&cases[_i], 0);
}
END_TEST

START_TEST(malformed_bytewise) {
  run_case(&cases[_i], 1);
}
END_TEST

/* ----------------------------------------------------- partial input */

START_TEST(partial_frames_wait) {
  victim v;
  victim_new(&v, KR_ROLE_ACCEPTOR, NULL, 0);
  kr_mux *m = v.side.m;
  /* A partial HELLO: nothing happens. */
  wire w = {.n = 0};
  w_hello(&w, 1, 1, KR_ROLE_DIALER);
  for (size_t i = 0; i + 1 < w.n; i++) {
    ck_assert_int_eq(kr_mux_recv(m, w.b + i, 1, 0), 1);
    ck_assert_int_eq(v.side.hellos, 0);
    ck_assert_int_eq(kr_mux_is_ready(m), 0);
  }
  ck_assert_int_eq(kr_mux_recv(m, w.b + w.n - 1, 1, 0), 1);
  ck_assert_int_eq(v.side.hellos, 1);

  /* Five bytes of a header: nothing fires, nothing is sent. */
  w.n = 0;
  kr_md md = kt_md(":service", "svc");
  uint8_t mdb[64];
  size_t mdn = kr__md_size(&md, 1);
  kr__md_encode(mdb, &md, 1);
  w_frame(&w, KR__FRAME_OPEN, 0, 1, mdb, mdn);
  w_frame(&w, KR__FRAME_DATA, 0, 1, "0123456789", 10);
  ck_assert_int_eq(kr_mux_recv(m, w.b, 5, 0), 5);
  ck_assert_int_eq(kr_mux_want_write(m), 0);
  ck_assert_int_eq(v.side.opens, 0);
  /* The rest of the header and half the metadata: still nothing. */
  ck_assert_int_eq(kr_mux_recv(m, w.b + 5, 4 + mdn / 2, 0),
                   (int64_t)(4 + mdn / 2));
  ck_assert_int_eq(v.side.opens, 0);
  ck_assert_int_eq(kr_mux_want_write(m), 0);
  size_t off = 9 + mdn / 2;
  ck_assert_int_eq(kr_mux_recv(m, w.b + off, 9 + mdn - off, 0),
                   (int64_t)(9 + mdn - off));
  ck_assert_int_eq(v.side.opens, 1);
  off = 9 + mdn;
  /* DATA arrives as it comes: part of a frame is delivered at once or
   * held, but never more than was sent. */
  ck_assert_int_eq(kr_mux_recv(m, w.b + off, 9 + 3, 0), 12);
  kt_srec *r = kt_rec(&v.side, 1);
  ck_assert_ptr_nonnull(r);
  ck_assert_uint_le(r->received, 3);
  off += 12;
  ck_assert_int_eq(kr_mux_recv(m, w.b + off, w.n - off, 0),
                   (int64_t)(w.n - off));
  ck_assert_uint_eq(r->received, 10);
  ck_assert_int_eq(v.side.goaways, 0);

  /* A truncated header, then the connection is closed: the host frees the
   * mux; nothing fired, nothing leaked. */
  uint8_t part[5];
  kr__put_u24(part, 100);
  part[3] = KR__FRAME_DATA;
  part[4] = 0;
  ck_assert_int_eq(kr_mux_recv(m, part, sizeof part, 0), 5);
  ck_assert_int_eq(v.side.goaways, 0);
  ck_assert_int_eq(r->closed, 0);
  victim_free(&v);
}
END_TEST

/* ------------------------------------------------------ legal races */

START_TEST(legal_races_are_not_errors) {
  victim v;
  victim_new(&v, KR_ROLE_ACCEPTOR, NULL, 1);
  victim_handshake(&v);
  kr_mux *m = v.side.m;
  wire w = {.n = 0};
  /* Stream 1: opened and finished both ways (the victim replies FIN). */
  w_open(&w, 1, KR__FLAG_FIN);
  /* WINDOW for the closed stream: ignored. */
  w_u32_frame(&w, KR__FRAME_WINDOW, 0, 1, 1000);
  /* RESET+ACK for a stream not in reset-sent: ignored. */
  w_reset(&w, 1, KR__FLAG_ACK, KR_CODE_CANCEL);
  /* RESET for a closed stream: answered with RESET+ACK. */
  w_reset(&w, 1, 0, KR_CODE_CANCEL);
  /* PING: answered. */
  w_frame(&w, KR__FRAME_PING, 0, 0, "pingpong", 8);
  /* Unknown PING ACK (nothing outstanding): ignored. */
  w_frame(&w, KR__FRAME_PING, KR__FLAG_ACK, 0, "whatever", 8);
  int64_t rc = kr_mux_recv(m, w.b, w.n, 0);
  ck_assert_msg(rc == (int64_t)w.n,
                "legal sequence refused: %s (goaway %u "
                "\"%s\")",
                rc < 0 ? kr_err_name((int)rc) : "short", v.side.goaway_code,
                v.side.goaway_reason);
  kt_srec *r1 = kt_rec(&v.side, 1);
  ck_assert_ptr_nonnull(r1);
  ck_assert_int_eq(r1->closed, 1);
  ck_assert_uint_eq(kr_mux_num_streams(m), 0);

  /* Empty DATA with FIN on an open stream, WINDOW on an open stream. */
  w.n = 0;
  v.side.hook_open = NULL;
  v.side.auto_reply = 1;
  w_open(&w, 3, 0);
  w_u32_frame(&w, KR__FRAME_WINDOW, 0, 3, 1000);
  w_frame(&w, KR__FRAME_DATA, KR__FLAG_FIN, 3, NULL, 0);
  /* A GOAWAY from the peer with a reason. */
  uint8_t ga[8 + 4];
  kr__put_u32(ga, 0);
  kr__put_u32(ga + 4, KR_CODE_SHUTDOWN);
  memcpy(ga + 8, "bye!", 4);
  w_frame(&w, KR__FRAME_GOAWAY, 0, 0, ga, sizeof ga);

  rc = kr_mux_recv(m, w.b, w.n, 0);
  ck_assert_msg(rc == (int64_t)w.n,
                "legal sequence refused: %s (goaway %u "
                "\"%s\")",
                rc < 0 ? kr_err_name((int)rc) : "short", v.side.goaway_code,
                v.side.goaway_reason);
  ck_assert_int_eq(v.side.goaways, 1);
  ck_assert_int_eq(v.side.goaway_remote, 1);
  ck_assert_uint_eq(v.side.goaway_code, KR_CODE_SHUTDOWN);
  ck_assert_str_eq(v.side.goaway_reason, "bye!");
  kt_srec *r3 = kt_rec(&v.side, 3);
  ck_assert_ptr_nonnull(r3);
  ck_assert_int_eq(r3->fins, 1);
  size_t n;
  uint8_t *out = kt_drain(m, &n);
  kt_tap tap;
  memset(&tap, 0, sizeof tap);
  kt_tap_feed(&tap, out, n);
  free(out);
  ck_assert_uint_eq(tap.frames[KR__FRAME_PING], 1);
  ck_assert_int_eq(tap.reset_acks, 1);
  ck_assert_int_eq(tap.goaways, 0);
  victim_free(&v);
}
END_TEST

START_TEST(legal_limits) {
  /* A peer offering versions 1..5 negotiates 1. */
  victim v;
  victim_new(&v, KR_ROLE_ACCEPTOR, NULL, 0);
  wire w = {.n = 0};
  w_hello(&w, 1, 5, KR_ROLE_DIALER);
  ck_assert_int_eq(kr_mux_recv(v.side.m, w.b, w.n, 0), (int64_t)w.n);
  ck_assert_int_eq(kr_mux_is_ready(v.side.m), 1);
  /* The connection send window may reach exactly 2^31-1 (the peer's
   * HELLO left it at the 32 MiB default). */
  w.n = 0;
  w_u32_frame(&w, KR__FRAME_WINDOW, 0, 0, KR_MAX_WINDOW - (32u << 20));
  /* A PING is echoed byte for byte. */
  w_frame(&w, KR__FRAME_PING, 0, 0, "\x01\x02\x03\x04\xfa\xfb\xfc\x00", 8);
  ck_assert_int_eq(kr_mux_recv(v.side.m, w.b, w.n, 0), (int64_t)w.n);
  ck_assert_int_eq(v.side.goaways, 0);
  size_t n;
  uint8_t *out = kt_drain(v.side.m, &n);
  ck_assert_uint_eq(n, 9 + 8);
  ck_assert_uint_eq(out[3], KR__FRAME_PING);
  ck_assert_uint_eq(out[4], KR__FLAG_ACK);
  ck_assert_mem_eq(out + 9, "\x01\x02\x03\x04\xfa\xfb\xfc\x00", 8);
  free(out);
  /* One more credit byte overflows. */
  w.n = 0;
  w_u32_frame(&w, KR__FRAME_WINDOW, 0, 0, 1);
  ck_assert_int_eq(kr_mux_recv(v.side.m, w.b, w.n, 0), KR_EFLOWCTL);
  ck_assert_uint_eq(v.side.goaway_code, KR_CODE_FLOW_CONTROL);
  victim_free(&v);
}
END_TEST

START_TEST(goaway_lowers_last_stream) {
  victim v;
  victim_new(&v, KR_ROLE_DIALER, NULL, 0);
  victim_handshake(&v);
  kt_srec *r[3];
  for (int i = 0; i < 3; i++)
    r[i] = victim_open(&v);
  ck_assert_uint_eq(r[2]->id, 5);
  size_t n;
  free(kt_drain(v.side.m, &n));
  wire w = {.n = 0};
  static const uint8_t md[2] = {0, 0};
  for (int i = 0; i < 3; i++)
    w_frame(&w, KR__FRAME_REPLY, 0, r[i]->id, md, 2);
  uint8_t ga[8];
  kr__put_u32(ga, 5);
  kr__put_u32(ga + 4, KR_CODE_NO_ERROR);
  w_frame(&w, KR__FRAME_GOAWAY, 0, 0, ga, 8);
  ck_assert_int_eq(kr_mux_recv(v.side.m, w.b, w.n, 0), (int64_t)w.n);
  ck_assert_int_eq(v.side.goaways, 1);
  ck_assert_int_eq(v.side.goaway_remote, 1);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(r[i]->closed, 0);
  kr_stream *s = NULL;
  ck_assert_int_eq(kr_stream_open(v.side.m, NULL, 0, 0, NULL, &s), KR_EGOAWAY);
  /* A second GOAWAY with a lower last id refuses 3 and 5; 1 goes on. */
  w.n = 0;
  kr__put_u32(ga, 1);
  kr__put_u32(ga + 4, 777); /* unknown codes are reported as received */
  w_frame(&w, KR__FRAME_GOAWAY, 0, 0, ga, 8);
  ck_assert_int_eq(kr_mux_recv(v.side.m, w.b, w.n, 0), (int64_t)w.n);
  ck_assert_int_eq(v.side.goaways, 2);
  ck_assert_uint_eq(v.side.goaway_code, 777);
  ck_assert_int_eq(r[0]->closed, 0);
  ck_assert_int_eq(r[1]->closed, 1);
  ck_assert_uint_eq(r[1]->close_code, KR_CODE_REFUSED);
  ck_assert_int_eq(r[2]->closed, 1);
  ck_assert_uint_eq(r[2]->close_code, KR_CODE_REFUSED);
  ck_assert_uint_eq(kr_mux_num_streams(v.side.m), 1);
  /* Stream 1 still carries data both ways and ends cleanly. */
  w.n = 0;
  w_frame(&w, KR__FRAME_DATA, KR__FLAG_FIN, 1, "fin", 3);
  ck_assert_int_eq(kr_mux_recv(v.side.m, w.b, w.n, 0), (int64_t)w.n);
  ck_assert_uint_eq(r[0]->received, 3);
  kt_write_all(r[0], "ok", 2);
  ck_assert_int_eq(kr_stream_close_write(r[0]->s), 0);
  ck_assert_int_eq(r[0]->closed, 1);
  ck_assert_uint_eq(r[0]->close_code, KR_CODE_NO_ERROR);
  ck_assert_int_eq(kr_mux_is_done(v.side.m), 0); /* output not taken */
  free(kt_drain(v.side.m, &n));
  ck_assert_int_eq(kr_mux_is_done(v.side.m), 1);
  victim_free(&v);
}
END_TEST

/* ------------------------------------------------ random garbage */

START_TEST(random_garbage_after_handshake) {
  kt_rng rng;
  kt_rng_seed(&rng, kt_seed("random_garbage_after_handshake", 4242));
  for (int round = 0; round < 300; round++) {
    victim v;
    victim_new(&v, round % 2 ? KR_ROLE_ACCEPTOR : KR_ROLE_DIALER, NULL, 0);
    victim_handshake(&v);
    uint8_t buf[512];
    size_t n = (size_t)kt_rng_range(&rng, 1, sizeof buf);
    for (size_t i = 0; i < n; i++)
      buf[i] = (uint8_t)kt_rng_next(&rng);
    /* Bias toward plausible headers: small lengths, known types. */
    if (kt_rng_below(&rng, 2)) {
      buf[0] = 0;
      buf[1] = 0;
      buf[3] &= 7;
      buf[5] &= 0x7f;
    }
    size_t off = 0;
    int64_t rc = 0;
    while (off < n) {
      size_t k = (size_t)kt_rng_range(&rng, 1, n - off);
      rc = kr_mux_recv(v.side.m, buf + off, k, 0);
      if (rc < 0)
        break;
      ck_assert_int_eq(rc, (int64_t)k);
      off += k;
    }
    if (rc < 0) {
      ck_assert_int_eq(v.side.goaways, 1);
      ck_assert_int_eq(v.side.goaway_remote, 0);
      ck_assert_uint_gt(v.side.goaway_reason_len, 0);
      ck_assert_int_eq(kr_mux_recv(v.side.m, buf, 1, 0), KR_ECLOSED);
    }
    free(kt_drain(v.side.m, &n));
    ck_assert_uint_le(v.al.peak_bytes, VICTIM_MEM_BOUND);
    victim_free(&v);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("mux_malformed");
  TCase *tc = tcase_create("malformed_whole");
  tcase_add_loop_test(tc, malformed_whole, 0, (int)NCASES);
  tcase_set_timeout(tc, kt_sanitized() ? 40 : 10);
  suite_add_tcase(s, tc);
  tc = tcase_create("malformed_bytewise");
  tcase_add_loop_test(tc, malformed_bytewise, 0, (int)NCASES);
  tcase_set_timeout(tc, kt_sanitized() ? 40 : 10);
  suite_add_tcase(s, tc);
  KT_ADD(s, partial_frames_wait, 10);
  KT_ADD(s, legal_races_are_not_errors, 10);
  KT_ADD(s, legal_limits, 10);
  KT_ADD(s, goaway_lowers_last_stream, 10);
  KT_ADD(s, random_garbage_after_handshake, 20);
  return kt_run_suite(s);
}
