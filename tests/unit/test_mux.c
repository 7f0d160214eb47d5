/* Unit tests: kr_mux behaviour over two in-memory muxes (lib/core/mux.c).
 * Time is fake: every `now` is chosen by the test. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"
#include "core/mux_internal.h"
#include "pair.h"

#define SEC ((kr_time_us)1000000)

static void assert_no_errors(kt_pair *p) {
  ck_assert_msg(p->a.recv_err == 0 && p->b.recv_err == 0,
                "unexpected connection failure: a recv %s, b recv %s "
                "(a goaway code %u \"%s\", b goaway code %u \"%s\")",
                kr_err_name((int)p->a.recv_err),
                kr_err_name((int)p->b.recv_err), p->a.goaway_code,
                p->a.goaway_reason, p->b.goaway_code, p->b.goaway_reason);
}

static void assert_closed(const kt_srec *r, uint32_t code, const char *reason) {
  ck_assert_msg(r->closed == 1, "%s: stream %u on_close fired %d times",
                r->side->name, r->id, r->closed);
  ck_assert_msg(r->close_code == code,
                "%s: stream %u closed with code %u (%s), expected %u (%s)",
                r->side->name, r->id, r->close_code,
                kr_code_name(r->close_code), code, kr_code_name(code));
  if (reason)
    ck_assert_msg(strcmp(r->reason, reason) == 0,
                  "%s: stream %u close reason \"%s\", expected \"%s\"",
                  r->side->name, r->id, r->reason, reason);
}

static void assert_md(const uint8_t *flat, size_t flat_len, const kr_md *md,
                      size_t n, const char *what) {
  size_t len;
  uint8_t *want = kt_md_flatten(md, n, &len);
  ck_assert_msg(flat_len == len && (len == 0 || memcmp(flat, want, len) == 0),
                "%s: metadata differs (%zu flattened bytes, expected %zu)",
                what, flat_len, len);
  free(want);
}

static void assert_data(const kt_srec *r, const void *want, size_t n) {
  ck_assert_msg(r->data_len == n, "%s: stream %u holds %zu bytes, expected %zu",
                r->side->name, r->id, r->data_len, n);
  if (n)
    ck_assert_msg(memcmp(r->data, want, n) == 0, "%s: stream %u data differs",
                  r->side->name, r->id);
}

/* ---------------------------------------------------------------- options */

START_TEST(options_validation) {
  kr_mux_options *o = NULL;
  ck_assert_int_eq(kr_mux_options_new(&o), 0);
  ck_assert_int_eq(kr_mux_options_set_role(o, KR_ROLE_DIALER), 0);
  ck_assert_int_eq(kr_mux_options_set_role(o, KR_ROLE_ACCEPTOR), 0);
  ck_assert_int_eq(kr_mux_options_set_role(o, (kr_role)0), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_role(o, (kr_role)3), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_max_frame_size(o, 16383), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_max_frame_size(o, 16384), 0);
  ck_assert_int_eq(kr_mux_options_set_max_frame_size(o, 16777215), 0);
  ck_assert_int_eq(kr_mux_options_set_max_frame_size(o, 16777216), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_stream_window(o, 0), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_stream_window(o, 1), 0);
  ck_assert_int_eq(kr_mux_options_set_stream_window(o, KR_MAX_WINDOW), 0);
  ck_assert_int_eq(kr_mux_options_set_stream_window(o, KR_MAX_WINDOW + 1u),
                   KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_connection_window(o, 0), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_connection_window(o, 1), 0);
  ck_assert_int_eq(kr_mux_options_set_connection_window(o, KR_MAX_WINDOW), 0);
  ck_assert_int_eq(kr_mux_options_set_connection_window(o, KR_MAX_WINDOW + 1u),
                   KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_max_streams(o, 0), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_max_streams(o, 1), 0);
  ck_assert_int_eq(kr_mux_options_set_send_queue(o, 0), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_send_queue(o, 1), 0);
  ck_assert_int_eq(kr_mux_options_set_output_limit(o, 0), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_output_limit(o, 1), 0);
  ck_assert_int_eq(kr_mux_options_set_keepalive(o, 0, 0), 0);
  ck_assert_int_eq(kr_mux_options_set_keepalive(o, SEC, 3 * SEC), 0);
  ck_assert_int_eq(kr_mux_options_set_keepalive(o, 3 * SEC, 3 * SEC),
                   KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_keepalive(o, 3 * SEC, SEC), KR_EINVAL);
  ck_assert_int_eq(kr_mux_options_set_handshake_timeout(o, 0), 0);
  ck_assert_int_eq(kr_mux_options_set_handshake_timeout(o, SEC), 0);
  kr_md ok = kt_md(":token", "t");
  ck_assert_int_eq(kr_mux_options_add_hello(o, &ok), 0);
  uint8_t *big = calloc(1, KR_MIN_FRAME_SIZE);
  ck_assert_ptr_nonnull(big);
  kr_md toobig = {(const uint8_t *)"x", 1, big, KR_MIN_FRAME_SIZE};
  ck_assert_int_eq(kr_mux_options_add_hello(o, &toobig), KR_ETOOBIG);
  free(big);
  kt_alloc al;
  kt_alloc_init(&al);
  kr_mem m = kt_alloc_mem(&al);
  ck_assert_int_eq(kr_mux_options_set_mem(o, &m), 0);
  ck_assert_int_eq(kr_mux_options_set_mem(o, NULL), 0);
  kr_mux_options_free(o);

  /* kr_mux_new without callbacks is refused; NULL options mean defaults. */
  kr_mux *mx = (kr_mux *)0x1;
  ck_assert_int_eq(kr_mux_new(&mx, NULL, NULL, 0, NULL), KR_EINVAL);
  kr_mux_callbacks *c = NULL;
  ck_assert_int_eq(kr_mux_callbacks_new(&c), 0);
  mx = NULL;
  ck_assert_int_eq(kr_mux_new(&mx, NULL, c, 0, &al), 0);
  ck_assert_ptr_nonnull(mx);
  ck_assert_ptr_eq(kr_mux_user_data(mx), &al);
  kr_mux_callbacks_free(c);
  ck_assert_int_eq(kr_mux_want_write(mx), 1); /* its HELLO */
  kr_mux_free(mx);
}
END_TEST

/* -------------------------------------------------------------- handshake */

START_TEST(handshake) {
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  static const uint8_t tok[] = {'t', 0, 0xff, 'k'};
  kr_md ha[2] = {{(const uint8_t *)":token", 6, tok, sizeof tok},
                 kt_md(":name", "agent-7")};
  kr_md hb[1] = {kt_md(":name", "kas-0")};
  ck_assert_int_eq(kr_mux_options_add_hello(oa, &ha[0]), 0);
  ck_assert_int_eq(kr_mux_options_add_hello(oa, &ha[1]), 0);
  ck_assert_int_eq(kr_mux_options_add_hello(ob, &hb[0]), 0);
  ck_assert_int_eq(kr_mux_options_set_stream_window(oa, 300000), 0);
  ck_assert_int_eq(kr_mux_options_set_max_streams(oa, 33), 0);

  kt_pair p;
  kt_pair_init(&p, oa, ob);
  kr_mux_options_free(oa); /* copied by kr_mux_new */
  kr_mux_options_free(ob);

  ck_assert_ptr_eq(kr_mux_user_data(p.a.m), &p.a);
  ck_assert_int_eq(kr_mux_is_ready(p.a.m), 0);
  ck_assert_int_eq(kr_mux_is_ready(p.b.m), 0);
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 0);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 0);
  ck_assert_int_eq(kr_mux_want_read(p.a.m), 1);
  ck_assert_int_eq(kr_mux_want_write(p.a.m), 1);
  ck_assert_int_eq(kr_mux_want_write(p.b.m), 1);
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  kr_stream *s = NULL;
  ck_assert_int_eq(kr_stream_open(p.a.m, NULL, 0, 0, NULL, &s), KR_ESTATE);
  ck_assert_int_eq(kr_mux_ping(p.a.m, 0), KR_ESTATE);
  ck_assert_msg(kr_mux_next_deadline(p.a.m) <= 10 * SEC,
                "handshake deadline %" PRIu64 " later than the 10 s default",
                kr_mux_next_deadline(p.a.m));

  /* The first bytes are exactly one HELLO frame carrying our settings. */
  const uint8_t *out = NULL;
  size_t n = kr_mux_send(p.a.m, &out);
  ck_assert_uint_ge(n, KR_FRAME_HEADER_SIZE + KR__HELLO_FIXED + 2);
  kr__frame_hdr h;
  const char *reason = NULL;
  ck_assert_int_eq(kr__frame_hdr_decode(out, KR_MIN_FRAME_SIZE, &h, &reason),
                   0);
  ck_assert_uint_eq(h.type, KR__FRAME_HELLO);
  ck_assert_uint_eq(h.stream_id, 0);
  ck_assert_uint_ge(n, KR_FRAME_HEADER_SIZE + h.length);
  kr__hello hello;
  ck_assert_int_eq(
      kr__hello_decode(out + KR_FRAME_HEADER_SIZE, h.length, &hello, &reason),
      0);
  ck_assert_uint_eq(hello.min_version, 1);
  ck_assert_uint_eq(hello.max_version, 1);
  ck_assert_uint_eq(hello.role, KR_ROLE_DIALER);
  ck_assert_uint_eq(hello.settings[KR__SETTING_STREAM_WINDOW], 300000);
  ck_assert_uint_eq(hello.settings[KR__SETTING_MAX_STREAMS], 33);
  ck_assert_int_eq(kr__md_validate(hello.md, hello.md_len, &reason), 2);

  /* a's HELLO alone makes b ready. */
  while (kt_move(&p, &p.a) > 0)
    ;
  ck_assert_int_eq(kr_mux_is_ready(p.b.m), 1);
  ck_assert_int_eq(p.b.hellos, 1);
  assert_md(p.b.hello_md, p.b.hello_md_len, ha, 2, "b sees a's HELLO");
  ck_assert_int_eq(kr_mux_is_ready(p.a.m), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(kr_mux_is_ready(p.a.m), 1);
  ck_assert_int_eq(p.a.hellos, 1);
  assert_md(p.a.hello_md, p.a.hello_md_len, hb, 1, "a sees b's HELLO");
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 1);
  ck_assert_int_eq(kr_mux_can_open(p.b.m), 1);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 0);
  ck_assert_int_eq(kr_mux_is_done(p.b.m), 0);
  ck_assert_uint_eq(p.tap_ab.frames[KR__FRAME_HELLO], 1);
  ck_assert_uint_eq(p.tap_ba.frames[KR__FRAME_HELLO], 1);
  ck_assert_int_eq(kr_mux_want_write(p.a.m), 0);
  ck_assert_int_eq(kr_mux_want_write(p.b.m), 0);
  /* Handshake done, no keepalive due before 15 s of silence. */
  ck_assert_msg(kr_mux_next_deadline(p.a.m) > 10 * SEC,
                "next deadline %" PRIu64 " after the handshake",
                kr_mux_next_deadline(p.a.m));
  kt_pair_free(&p);
}
END_TEST

/* ------------------------------------------------- open, reply, data, fin */

static void exchange(kt_pair *p, kt_side *opener, uint32_t expect_id) {
  kt_side *acc = opener->peer;
  kr_md omd[2] = {kt_md(":service", "echo"), kt_md(":path", "/x?y=1")};
  kr_md rmd[1] = {kt_md(":status", "200")};
  size_t opens = (size_t)acc->opens;

  kt_srec *ro = kt_open_ok(opener, omd, 2, 0);
  ck_assert_uint_eq(ro->id, expect_id);
  ck_assert_uint_ge(kr_mux_num_streams(opener->m), 1);
  kt_pump(p);
  assert_no_errors(p);
  ck_assert_uint_eq((size_t)acc->opens, opens + 1);
  kt_srec *ra = kt_rec(acc, expect_id);
  ck_assert_ptr_nonnull(ra);
  ck_assert_int_eq(ra->open_fin, 0);
  assert_md(ra->md, ra->md_len, omd, 2, "OPEN metadata");
  ck_assert_ptr_eq(kr_stream_mux(ra->s), acc->m);

  /* The acceptor owes a reply before it may write. */
  ck_assert_int_eq(kr_stream_write(ra->s, "x", 1), KR_ESTATE);
  ck_assert_int_eq(kr_stream_close_write(ra->s), KR_ESTATE);
  /* Only the acceptor replies. */
  ck_assert_int_eq(kr_stream_reply(ro->s, NULL, 0, 0), KR_ESTATE);
  ck_assert_int_eq(kr_stream_reply(ra->s, rmd, 1, 0), 0);
  ck_assert_int_eq(kr_stream_reply(ra->s, rmd, 1, 0), KR_ESTATE);

  /* The opener may write before the reply arrives. */
  kt_write_all(ro, "hello", 5);
  kt_pump(p);
  ck_assert_int_eq(ro->replied, 1);
  ck_assert_int_eq(ro->reply_fin, 0);
  assert_md(ro->md, ro->md_len, rmd, 1, "REPLY metadata");
  assert_data(ra, "hello", 5);
  kt_write_all(ra, "world!", 6);
  kt_write_all(ra, "!!", 2);
  kt_pump(p);
  assert_data(ro, "world!!!", 8);
  kt_consume(ro, 8);
  kt_consume(ra, 5);

  ck_assert_int_eq(kr_stream_close_write(ro->s), 0);
  ck_assert_int_eq(kr_stream_close_write(ro->s), KR_ESTATE);
  ck_assert_int_eq(kr_stream_write(ro->s, "x", 1), KR_ESTATE);
  kt_pump(p);
  ck_assert_int_eq(ra->fins, 1);
  ck_assert_int_eq(ra->closed, 0);
  ck_assert_int_eq(ro->closed, 0);
  ck_assert_int_eq(kr_stream_close_write(ra->s), 0);
  kt_pump(p);
  assert_no_errors(p);
  ck_assert_int_eq(ro->fins, 1);
  assert_closed(ro, KR_CODE_NO_ERROR, NULL);
  assert_closed(ra, KR_CODE_NO_ERROR, NULL);
  ck_assert_uint_eq(kr_mux_num_streams(p->a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p->b.m), 0);
}

START_TEST(open_reply_data_fin) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  p.a.keep_data = p.b.keep_data = 1;
  exchange(&p, &p.a, 1);
  exchange(&p, &p.b, 2);
  exchange(&p, &p.a, 3);
  exchange(&p, &p.b, 4);
  /* Random piece sizes split every frame somewhere. */
  p.max_piece = 3;
  exchange(&p, &p.a, 5);
  exchange(&p, &p.b, 6);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 0);
  kt_pair_free(&p);
}
END_TEST

START_TEST(many_streams_interleaved) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  p.a.keep_data = p.b.keep_data = 1;
  p.b.auto_reply = 1;
  kt_srec *r[50];
  for (int i = 0; i < 50; i++) {
    r[i] = kt_open_ok(&p.a, NULL, 0, 0);
    ck_assert_uint_eq(r[i]->id, (uint32_t)(2 * i + 1));
  }
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 50);
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < 50; i++) {
      char msg[32];
      int n = snprintf(msg, sizeof msg, "s%d-r%d;", i, round);
      kt_write_all(r[i], msg, (size_t)n);
    }
  for (int i = 0; i < 50; i++)
    ck_assert_int_eq(kr_stream_close_write(r[i]->s), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(p.b.opens, 50);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 50);
  for (int i = 0; i < 50; i++) {
    kt_srec *rb = kt_rec(&p.b, (uint32_t)(2 * i + 1));
    ck_assert_ptr_nonnull(rb);
    char want[128];
    int n = snprintf(want, sizeof want, "s%d-r0;s%d-r1;s%d-r2;", i, i, i);
    assert_data(rb, want, (size_t)n);
    ck_assert_int_eq(rb->fins, 1);
    ck_assert_int_eq(kr_stream_close_write(rb->s), 0);
  }
  kt_pump(&p);
  for (int i = 0; i < 50; i++)
    assert_closed(r[i], KR_CODE_NO_ERROR, NULL);
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 0);
  kt_pair_free(&p);
}
END_TEST

/* --------------------------------------------------------------- metadata */

START_TEST(metadata_intact) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  static const uint8_t bname[] = {'x', 0x00, 0xff, 0x80, '\n'};
  static const uint8_t bval[] = {0x00, 0x01, 0xfe, 0xff, 0x00};
  size_t bigv_len = 30000;
  uint8_t *bigv = malloc(bigv_len);
  ck_assert_ptr_nonnull(bigv);
  kt_pattern(9, 0, bigv, bigv_len);
  kr_md md[8];
  md[0] = kt_md(":agent", "42");
  md[1] = kt_md(":service", "kubernetes");
  md[2].name = bname;
  md[2].name_len = sizeof bname;
  md[2].value = bval;
  md[2].value_len = sizeof bval;
  md[3] = kt_md("empty", "");
  md[4] = kt_md("Dup", "1");
  md[5] = kt_md("Dup", "2");
  md[6].name = (const uint8_t *)"big";
  md[6].name_len = 3;
  md[6].value = bigv;
  md[6].value_len = bigv_len;
  md[7] = kt_md("content-type", "application/json");

  kt_srec *ra = kt_open_ok(&p.a, md, 8, 1);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  ck_assert_int_eq(rb->open_fin, 1);
  assert_md(rb->md, rb->md_len, md, 8, "OPEN with 8 entries");
  /* OPEN with FIN: the opener cannot write. */
  ck_assert_int_eq(kr_stream_write(ra->s, "x", 1), KR_ESTATE);

  ck_assert_int_eq(kr_stream_reply(rb->s, md + 2, 5, 1), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(ra->replied, 1);
  ck_assert_int_eq(ra->reply_fin, 1);
  assert_md(ra->md, ra->md_len, md + 2, 5, "REPLY with 5 entries");
  /* FIN both ways at open/reply: the stream is over. */
  assert_closed(ra, KR_CODE_NO_ERROR, NULL);
  assert_closed(rb, KR_CODE_NO_ERROR, NULL);

  /* Too big for one frame of the peer's size (65536): KR_ETOOBIG. */
  size_t huge_len = 70000;
  uint8_t *huge = calloc(1, huge_len);
  ck_assert_ptr_nonnull(huge);
  kr_md hm = {(const uint8_t *)"h", 1, huge, huge_len};
  int rc = 0;
  ck_assert_ptr_null(kt_open(&p.a, &hm, 1, 0, &rc));
  ck_assert_int_eq(rc, KR_ETOOBIG);
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  /* An empty name is refused. */
  kr_md en = {(const uint8_t *)"", 0, (const uint8_t *)"v", 1};
  ck_assert_ptr_null(kt_open(&p.a, &en, 1, 0, &rc));
  ck_assert_int_eq(rc, KR_EINVAL);
  /* The same limits on REPLY. */
  kt_srec *r2 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  kt_srec *r2b = kt_rec(&p.b, r2->id);
  ck_assert_ptr_nonnull(r2b);
  ck_assert_int_eq(r2b->md_len, 0);
  ck_assert_int_eq(kr_stream_reply(r2b->s, &hm, 1, 0), KR_ETOOBIG);
  ck_assert_int_eq(kr_stream_reply(r2b->s, &en, 1, 0), KR_EINVAL);
  ck_assert_int_eq(kr_stream_reply(r2b->s, NULL, 0, 0), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(r2->replied, 1);
  ck_assert_uint_eq(r2->md_len, 0);
  free(huge);
  free(bigv);
  kt_pair_free(&p);
}
END_TEST

START_TEST(metadata_peer_frame_limit) {
  /* b accepts frames of 16384 bytes only: a must refuse bigger metadata. */
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_max_frame_size(ob, KR_MIN_FRAME_SIZE), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  uint8_t *v = calloc(1, 20000);
  ck_assert_ptr_nonnull(v);
  kr_md m = {(const uint8_t *)"v", 1, v, 20000};
  int rc = 0;
  ck_assert_ptr_null(kt_open(&p.a, &m, 1, 0, &rc));
  ck_assert_int_eq(rc, KR_ETOOBIG);
  /* Exactly the frame size fits. */
  m.value_len = KR_MIN_FRAME_SIZE - 2 - 6 - 1;
  kt_srec *r = kt_open_ok(&p.a, &m, 1, 0);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *rb = kt_rec(&p.b, r->id);
  ck_assert_ptr_nonnull(rb);
  assert_md(rb->md, rb->md_len, &m, 1, "frame-sized metadata");
  free(v);
  kt_pair_free(&p);
}
END_TEST

/* ------------------------------------------------------------- half-close */

START_TEST(half_close_each_direction) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  p.a.keep_data = p.b.keep_data = 1;
  p.b.auto_reply = 1;

  /* Opener closes first; the acceptor keeps sending. */
  kt_srec *ra = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(ra, "req", 3);
  ck_assert_int_eq(kr_stream_close_write(ra->s), 0);
  kt_pump(&p);
  kt_srec *rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  ck_assert_int_eq(rb->fins, 1);
  assert_data(rb, "req", 3);
  for (int i = 0; i < 5; i++) {
    kt_write_all(rb, "resp", 4);
    kt_pump(&p);
    ck_assert_uint_eq(ra->data_len, 4 * (size_t)(i + 1));
    ck_assert_int_eq(ra->closed, 0);
  }
  ck_assert_int_eq(kr_stream_close_write(rb->s), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  assert_data(ra, "resprespresprespresp", 20);
  assert_closed(ra, KR_CODE_NO_ERROR, NULL);
  assert_closed(rb, KR_CODE_NO_ERROR, NULL);

  /* Acceptor closes first (FIN on its REPLY); the opener keeps sending. */
  p.b.auto_reply = 0;
  ra = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  ck_assert_int_eq(kr_stream_reply(rb->s, NULL, 0, 1), 0);
  ck_assert_int_eq(kr_stream_write(rb->s, "x", 1), KR_ESTATE);
  kt_pump(&p);
  ck_assert_int_eq(ra->reply_fin, 1);
  ck_assert_int_eq(ra->closed, 0);
  for (int i = 0; i < 5; i++) {
    kt_write_all(ra, "up", 2);
    kt_pump(&p);
    ck_assert_uint_eq(rb->data_len, 2 * (size_t)(i + 1));
  }
  ck_assert_int_eq(kr_stream_close_write(ra->s), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(rb->fins, 1);
  assert_closed(ra, KR_CODE_NO_ERROR, NULL);
  assert_closed(rb, KR_CODE_NO_ERROR, NULL);

  /* Acceptor closes first with an empty DATA FIN after its reply. */
  ra = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  rb = kt_rec(&p.b, ra->id);
  ck_assert_int_eq(kr_stream_reply(rb->s, NULL, 0, 0), 0);
  ck_assert_int_eq(kr_stream_close_write(rb->s), 0);
  kt_pump(&p);
  ck_assert_int_eq(ra->fins, 1);
  kt_write_all(ra, "late", 4);
  ck_assert_int_eq(kr_stream_close_write(ra->s), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  assert_data(rb, "late", 4);
  assert_closed(ra, KR_CODE_NO_ERROR, NULL);
  assert_closed(rb, KR_CODE_NO_ERROR, NULL);
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 0);
  kt_pair_free(&p);
}
END_TEST

/* ------------------------------------------------------------------ reset */

static void reset_from(kt_pair *p, kt_side *who_opens, int resetter_is_opener,
                       uint32_t code, const char *reason) {
  kt_side *acc = who_opens->peer;
  acc->auto_reply = 1;
  kt_srec *ro = kt_open_ok(who_opens, NULL, 0, 0);
  kt_write_all(ro, "abc", 3);
  kt_pump(p);
  kt_srec *ra = kt_rec(acc, ro->id);
  ck_assert_ptr_nonnull(ra);
  kt_write_all(ra, "def", 3);
  kt_pump(p);
  size_t before_a = kr_mux_num_streams(who_opens->m);
  size_t before_b = kr_mux_num_streams(acc->m);
  ck_assert_uint_ge(before_a, 1);

  kt_srec *rs = resetter_is_opener ? ro : ra;
  kt_srec *rr = resetter_is_opener ? ra : ro;
  kt_tap *fwd = (rs->side == &p->a) ? &p->tap_ab : &p->tap_ba;
  kt_tap *back = (rs->side == &p->a) ? &p->tap_ba : &p->tap_ab;
  int resets0 = fwd->resets, acks0 = back->reset_acks;
  ck_assert_int_eq(kr_stream_reset(rs->s, code, reason), 0);
  /* on_close fired before kr_stream_reset returned. */
  assert_closed(rs, code, reason);
  kt_pump(p);
  assert_no_errors(p);
  assert_closed(rr, code, reason);
  ck_assert_int_eq(fwd->resets, resets0 + 1);
  ck_assert_uint_eq(fwd->reset_code, code);
  ck_assert_int_eq(back->reset_acks, acks0 + 1);
  ck_assert_uint_eq(back->reset_code, code);
  ck_assert_uint_eq(kr_mux_num_streams(who_opens->m), before_a - 1);
  ck_assert_uint_eq(kr_mux_num_streams(acc->m), before_b - 1);
  ck_assert_int_eq(rr->data_after_close + rs->data_after_close, 0);
}

START_TEST(reset_either_side) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  reset_from(&p, &p.a, 1, KR_CODE_CANCEL, "user cancelled");
  reset_from(&p, &p.a, 0, KR_CODE_NOT_FOUND, "no such service");
  reset_from(&p, &p.b, 1, KR_CODE_UPSTREAM, "");
  reset_from(&p, &p.b, 0, 1234567, "unknown codes are passed through");
  /* NULL reason, and a reason cut at KR_MAX_REASON. */
  char longr[400];
  memset(longr, 'z', sizeof longr - 1);
  longr[sizeof longr - 1] = 0;
  kt_srec *r = kt_open_ok(&p.a, NULL, 0, 0);
  ck_assert_int_eq(kr_stream_reset(r->s, KR_CODE_CANCEL, NULL), 0);
  assert_closed(r, KR_CODE_CANCEL, "");
  r = kt_open_ok(&p.a, NULL, 0, 0);
  ck_assert_int_eq(kr_stream_reset(r->s, KR_CODE_CANCEL, longr), 0);
  ck_assert_uint_eq(r->reason_len, KR_MAX_REASON);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *rb = kt_rec(&p.b, r->id);
  /* The peer never saw the OPEN's stream announced, or saw it reset. */
  if (rb) {
    ck_assert_uint_eq(rb->reason_len, KR_MAX_REASON);
    ck_assert_int_eq(rb->closed, 1);
  }
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 0);
  /* The connection still works. */
  kt_srec *r2 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r2, "ok", 2);
  kt_pump(&p);
  kt_srec *r2b = kt_rec(&p.b, r2->id);
  ck_assert_ptr_nonnull(r2b);
  ck_assert_uint_eq(r2b->received, 2);
  kt_pair_free(&p);
}
END_TEST

START_TEST(reset_discards_crossing_data) {
  /* a: small windows. b's DATA crosses a's RESET; a discards it without
   * error and returns it to the connection window at once, so the next
   * stream can still use the whole connection window. */
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  ck_assert_int_eq(kr_mux_options_set_stream_window(oa, 65536), 0);
  ck_assert_int_eq(kr_mux_options_set_connection_window(oa, 70000), 0);
  kt_pair p;
  kt_pair_ready(&p, oa, NULL);
  kr_mux_options_free(oa);
  p.rx_stream_window[0] = 65536;
  p.rx_conn_window[0] = 70000;
  p.b.auto_reply = 1;

  kt_srec *ra = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  kt_srec *rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  uint8_t *buf = malloc(65536);
  ck_assert_ptr_nonnull(buf);
  kt_pattern(1, 0, buf, 65536);
  kt_write_all(rb, buf, 65536);
  ck_assert_int_eq(kr_stream_reset(ra->s, KR_CODE_CANCEL, "bye"), 0);
  assert_closed(ra, KR_CODE_CANCEL, "bye");
  uint64_t data_cb = p.a.data_cb;
  /* b's data reaches a before a's RESET reaches b. */
  while (kt_move(&p, &p.b) > 0)
    ;
  ck_assert_uint_eq(p.tap_ba.data_bytes[ra->id], 65536);
  ck_assert_msg(p.a.recv_err == 0,
                "DATA on a reset-sent stream failed the connection: %s",
                kr_err_name((int)p.a.recv_err));
  ck_assert_uint_eq(p.a.data_cb, data_cb);
  ck_assert_int_eq(ra->data_after_close, 0);
  kt_pump(&p);
  assert_no_errors(&p);
  assert_closed(rb, KR_CODE_CANCEL, "bye");
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 0);

  /* All 70000 bytes of connection credit are available again. */
  p.a.auto_consume = 1;
  kt_srec *ra2 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  kt_srec *rb2 = kt_rec(&p.b, ra2->id);
  ck_assert_ptr_nonnull(rb2);
  kt_write_all(rb2, buf, 65536);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_msg(ra2->received == 65536,
                "second stream got %" PRIu64 " of 65536 bytes: the discarded "
                "bytes were not returned to the connection window",
                ra2->received);
  free(buf);
  kt_pair_free(&p);
}
END_TEST

START_TEST(reset_crossing_resets) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  p.b.auto_reply = 1;
  kt_srec *ra = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  kt_srec *rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  ck_assert_int_eq(kr_stream_reset(ra->s, KR_CODE_CANCEL, "a"), 0);
  ck_assert_int_eq(kr_stream_reset(rb->s, KR_CODE_INTERNAL, "b"), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  assert_closed(ra, KR_CODE_CANCEL, "a");
  assert_closed(rb, KR_CODE_INTERNAL, "b");
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 0);

  /* A reset racing the peer's FIN: the peer already closed its side. */
  ra = kt_open_ok(&p.a, NULL, 0, 0);
  ck_assert_int_eq(kr_stream_close_write(ra->s), 0);
  kt_pump(&p);
  rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  ck_assert_int_eq(kr_stream_close_write(rb->s), 0); /* FIN in flight */
  ck_assert_int_eq(kr_stream_reset(ra->s, KR_CODE_CANCEL, "late"), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(ra->closed, 1);
  ck_assert_int_eq(rb->closed, 1);
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 0);
  kt_pair_free(&p);
}
END_TEST

/* ----------------------------------------------------------------- goaway */

START_TEST(goaway_drain) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  p.a.keep_data = p.b.keep_data = 1;
  p.b.auto_reply = 1;
  kt_srec *r1 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_srec *r3 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  ck_assert_int_eq(p.b.opens, 2);

  ck_assert_int_eq(kr_mux_goaway(p.b.m, KR_CODE_NO_ERROR, "drain"), 0);
  ck_assert_int_eq(p.b.goaways, 1);
  ck_assert_int_eq(p.b.goaway_remote, 0);
  ck_assert_uint_eq(p.b.goaway_code, KR_CODE_NO_ERROR);
  ck_assert_str_eq(p.b.goaway_reason, "drain");
  ck_assert_int_eq(kr_mux_can_open(p.b.m), 0);
  kr_stream *s = NULL;
  ck_assert_int_eq(kr_stream_open(p.b.m, NULL, 0, 0, NULL, &s), KR_EGOAWAY);

  /* a opens stream 5 before it hears of the GOAWAY: it crosses. */
  kt_srec *r5 = kt_open_ok(&p.a, NULL, 0, 0);
  ck_assert_uint_eq(r5->id, 5);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(p.a.goaways, 1);
  ck_assert_int_eq(p.a.goaway_remote, 1);
  ck_assert_uint_eq(p.a.goaway_code, KR_CODE_NO_ERROR);
  ck_assert_str_eq(p.a.goaway_reason, "drain");
  ck_assert_uint_eq(p.tap_ba.goaways, 1);
  ck_assert_uint_eq(p.tap_ba.goaway_last, 3);
  assert_closed(r5, KR_CODE_REFUSED, NULL);
  ck_assert_int_eq(p.b.opens, 2); /* stream 5 never reached the app */
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 0);
  ck_assert_int_eq(kr_stream_open(p.a.m, NULL, 0, 0, NULL, &s), KR_EGOAWAY);

  /* Streams 1 and 3 go on to their end, both ways. */
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 0);
  ck_assert_int_eq(kr_mux_is_done(p.b.m), 0);
  kt_srec *b1 = kt_rec(&p.b, 1), *b3 = kt_rec(&p.b, 3);
  ck_assert_ptr_nonnull(b1);
  ck_assert_ptr_nonnull(b3);
  kt_write_all(r1, "one", 3);
  kt_write_all(b3, "three", 5);
  kt_pump(&p);
  assert_data(b1, "one", 3);
  assert_data(r3, "three", 5);
  ck_assert_int_eq(kr_stream_close_write(r1->s), 0);
  ck_assert_int_eq(kr_stream_close_write(b1->s), 0);
  kt_pump(&p);
  assert_closed(r1, KR_CODE_NO_ERROR, NULL);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 0);
  ck_assert_int_eq(kr_mux_is_done(p.b.m), 0);
  ck_assert_int_eq(kr_stream_close_write(r3->s), 0);
  ck_assert_int_eq(kr_stream_close_write(b3->s), 0);
  /* Output not yet taken: not done. */
  ck_assert_int_eq(kr_mux_is_done(p.b.m), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  assert_closed(r3, KR_CODE_NO_ERROR, NULL);
  assert_closed(b3, KR_CODE_NO_ERROR, NULL);
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_uint_eq(kr_mux_num_streams(p.b.m), 0);
  ck_assert_msg(kr_mux_is_done(p.a.m) && kr_mux_is_done(p.b.m),
                "not done after drain: a %d b %d", kr_mux_is_done(p.a.m),
                kr_mux_is_done(p.b.m));

  /* A second GOAWAY with another code is allowed. */
  ck_assert_int_eq(kr_mux_goaway(p.b.m, KR_CODE_SHUTDOWN, "bye"), 0);
  kt_pump(&p);
  ck_assert_int_eq(p.a.goaways, 2);
  ck_assert_uint_eq(p.a.goaway_code, KR_CODE_SHUTDOWN);
  kt_pair_free(&p);
}
END_TEST

START_TEST(goaway_idle_is_done) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  ck_assert_int_eq(kr_mux_goaway(p.a.m, KR_CODE_SHUTDOWN, NULL), 0);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 0); /* GOAWAY not yet taken */
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(p.b.goaways, 1);
  ck_assert_int_eq(p.b.goaway_remote, 1);
  ck_assert_uint_eq(p.b.goaway_code, KR_CODE_SHUTDOWN);
  ck_assert_uint_eq(p.b.goaway_reason_len, 0);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 1);
  ck_assert_int_eq(kr_mux_is_done(p.b.m), 1);
  /* The acceptor's stream crossing the dialer's GOAWAY is refused too. */
  kt_pair_free(&p);

  kt_pair_ready(&p, NULL, NULL);
  p.a.auto_reply = 1;
  ck_assert_int_eq(kr_mux_goaway(p.a.m, KR_CODE_NO_ERROR, "x"), 0);
  kt_srec *rb = kt_open_ok(&p.b, NULL, 0, 0);
  kt_pump(&p);
  assert_no_errors(&p);
  assert_closed(rb, KR_CODE_REFUSED, NULL);
  ck_assert_int_eq(p.a.opens, 0);
  ck_assert_uint_eq(p.tap_ab.goaway_last, 0);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 1);
  ck_assert_int_eq(kr_mux_is_done(p.b.m), 1);
  kt_pair_free(&p);
}
END_TEST

/* ------------------------------------------------------------- ping, time */

START_TEST(ping_rtt) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  ck_assert_uint_eq(kr_mux_rtt(p.a.m), 0);
  p.now = 1000;
  ck_assert_int_eq(kr_mux_ping(p.a.m, 1000), 0);
  ck_assert_int_eq(kr_mux_ping(p.a.m, 1001), KR_EAGAIN);
  p.now = 3500;
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(p.a.pings, 1);
  ck_assert_uint_eq(p.a.last_rtt, 2500);
  ck_assert_uint_eq(kr_mux_rtt(p.a.m), 2500);
  ck_assert_int_eq(p.b.pings, 0); /* answering does not fire on_ping */
  ck_assert_uint_eq(p.tap_ab.frames[KR__FRAME_PING], 1);
  ck_assert_uint_eq(p.tap_ba.frames[KR__FRAME_PING], 1);

  /* b pings with a delay split over the two halves. */
  p.now = 10 * SEC;
  ck_assert_int_eq(kr_mux_ping(p.b.m, p.now), 0);
  kt_move(&p, &p.b);
  p.now += 777;
  kt_pump(&p);
  ck_assert_int_eq(p.b.pings, 1);
  ck_assert_uint_eq(kr_mux_rtt(p.b.m), 777);
  /* The next ping is allowed after the answer. */
  ck_assert_int_eq(kr_mux_ping(p.a.m, p.now), 0);
  p.now += 1;
  kt_pump(&p);
  ck_assert_int_eq(p.a.pings, 2);
  ck_assert_uint_eq(kr_mux_rtt(p.a.m), 1);
  kt_pair_free(&p);
}
END_TEST

/* Ticks m at its deadlines until `until` or a non-zero result. Returns the
 * time of that result (or UINT64_MAX) in *when. */
static int tick_until(kt_pair *p, kt_side *s, kr_time_us until,
                      kr_time_us *when) {
  for (int i = 0; i < 100000; i++) {
    kr_time_us d = kr_mux_next_deadline(s->m);
    ck_assert_msg(d >= p->now || d == 0,
                  "deadline %" PRIu64 " in the past "
                  "(now %" PRIu64 ")",
                  d, p->now);
    if (d > until)
      d = until;
    if (d > p->now)
      p->now = d;
    int rc = kr_mux_tick(s->m, p->now);
    kt_pump(p);
    if (rc != 0) {
      *when = p->now;
      return rc;
    }
    if (p->now >= until) {
      *when = UINT64_MAX;
      return 0;
    }
  }
  ck_abort_msg("tick loop does not advance");
  return 0;
}

START_TEST(keepalive_timeout) {
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  ck_assert_int_eq(kr_mux_options_set_keepalive(oa, 1 * SEC, 3 * SEC), 0);
  kt_pair p;
  kt_pair_ready(&p, oa, NULL);
  kr_mux_options_free(oa);
  p.b.auto_reply = 1;
  kt_srec *r = kt_open_ok(&p.a, NULL, 0, 0);
  kt_srec *rin = NULL;
  kt_pump(&p);
  ck_assert_msg(kr_mux_next_deadline(p.a.m) <= 1 * SEC,
                "keepalive deadline %" PRIu64 " later than the interval",
                kr_mux_next_deadline(p.a.m));
  /* b opens one toward a too: every stream must be closed. */
  p.a.auto_reply = 1;
  kt_srec *rb = kt_open_ok(&p.b, NULL, 0, 0);
  kt_pump(&p);
  rin = kt_rec(&p.a, rb->id);
  ck_assert_ptr_nonnull(rin);

  /* The peer goes silent. */
  p.drop_ab = p.drop_ba = 1;
  uint64_t pings0 = p.tap_ab.frames[KR__FRAME_PING];
  kr_time_us when = 0;
  int rc = tick_until(&p, &p.a, 60 * SEC, &when);
  ck_assert_msg(rc == KR_ETIMEDOUT,
                "kr_mux_tick returned %s, expected "
                "TIMEDOUT",
                kr_err_name(rc));
  ck_assert_msg(when >= 3 * SEC && when <= 4 * SEC,
                "declared dead at %" PRIu64 " us; last frame at 0, timeout 3 s",
                when);
  ck_assert_msg(p.tap_ab.frames[KR__FRAME_PING] > pings0,
                "no keepalive PING before the timeout");
  ck_assert_int_eq(p.a.goaways, 1);
  ck_assert_int_eq(p.a.goaway_remote, 0);
  ck_assert_uint_eq(p.a.goaway_code, KR_CODE_TIMEOUT);
  ck_assert_uint_gt(p.a.goaway_reason_len, 0);
  ck_assert_int_eq(p.tap_ab.goaways, 1);
  ck_assert_uint_eq(p.tap_ab.goaway_code, KR_CODE_TIMEOUT);
  ck_assert_int_eq(r->closed, 1);
  ck_assert_uint_ne(r->close_code, KR_CODE_NO_ERROR);
  ck_assert_int_eq(rin->closed, 1);
  ck_assert_uint_ne(rin->close_code, KR_CODE_NO_ERROR);
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 0);
  ck_assert_int_eq(kr_mux_tick(p.a.m, p.now + SEC), KR_ECLOSED);
  ck_assert_int_eq(kr_mux_want_read(p.a.m), 0);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 1);
  kt_pair_free(&p);
}
END_TEST

START_TEST(keepalive_keeps_alive) {
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_keepalive(oa, 1 * SEC, 3 * SEC), 0);
  ck_assert_int_eq(kr_mux_options_set_keepalive(ob, 2 * SEC, 5 * SEC), 0);
  kt_pair p;
  kt_pair_ready(&p, oa, ob);
  kr_mux_options_free(oa);
  kr_mux_options_free(ob);
  /* Both tick at their deadlines for a minute of idle connection. */
  while (p.now < 60 * SEC) {
    kr_time_us da = kr_mux_next_deadline(p.a.m);
    kr_time_us db = kr_mux_next_deadline(p.b.m);
    kr_time_us d = da < db ? da : db;
    ck_assert_msg(d != UINT64_MAX, "no timer with keepalive on");
    if (d > p.now)
      p.now = d;
    ck_assert_int_eq(kr_mux_tick(p.a.m, p.now), 0);
    ck_assert_int_eq(kr_mux_tick(p.b.m, p.now), 0);
    kt_pump(&p);
    assert_no_errors(&p);
  }
  ck_assert_int_eq(p.a.goaways + p.b.goaways, 0);
  ck_assert_uint_ge(p.tap_ab.frames[KR__FRAME_PING], 10);
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 1);
  kt_pair_free(&p);
}
END_TEST

START_TEST(handshake_timeout) {
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  ck_assert_int_eq(kr_mux_options_set_handshake_timeout(oa, 2 * SEC), 0);
  ck_assert_int_eq(kr_mux_options_set_keepalive(oa, 0, 0), 0);
  kt_pair p;
  kt_pair_init(&p, oa, NULL);
  kr_mux_options_free(oa);
  p.drop_ba = 1; /* b's HELLO never arrives */
  ck_assert_msg(kr_mux_next_deadline(p.a.m) <= 2 * SEC,
                "handshake deadline %" PRIu64, kr_mux_next_deadline(p.a.m));
  ck_assert_int_eq(kr_mux_tick(p.a.m, 2 * SEC - 1), 0);
  ck_assert_int_eq(p.a.goaways, 0);
  kr_time_us when = 0;
  int rc = tick_until(&p, &p.a, 30 * SEC, &when);
  ck_assert_msg(rc == KR_ETIMEDOUT, "kr_mux_tick returned %s", kr_err_name(rc));
  ck_assert_msg(when >= 2 * SEC && when <= 2 * SEC + 1000,
                "handshake timeout at %" PRIu64 " us", when);
  ck_assert_int_eq(p.a.goaways, 1);
  ck_assert_int_eq(p.a.goaway_remote, 0);
  ck_assert_uint_eq(p.a.goaway_code, KR_CODE_TIMEOUT);
  ck_assert_uint_gt(p.a.goaway_reason_len, 0);
  ck_assert_int_eq(p.tap_ab.goaways, 1);
  ck_assert_uint_eq(p.tap_ab.goaway_code, KR_CODE_TIMEOUT);
  ck_assert_int_eq(kr_mux_is_ready(p.a.m), 0);
  ck_assert_int_eq(kr_mux_is_done(p.a.m), 1);
  /* b heard the GOAWAY. */
  ck_assert_int_eq(p.b.goaways, 1);
  ck_assert_int_eq(p.b.goaway_remote, 1);
  ck_assert_uint_eq(p.b.goaway_code, KR_CODE_TIMEOUT);
  kt_pair_free(&p);

  /* Timeout 0 disables it. */
  oa = kt_opts(KR_ROLE_DIALER);
  ck_assert_int_eq(kr_mux_options_set_handshake_timeout(oa, 0), 0);
  ck_assert_int_eq(kr_mux_options_set_keepalive(oa, 0, 0), 0);
  kt_pair_init(&p, oa, NULL);
  kr_mux_options_free(oa);
  ck_assert_uint_eq(kr_mux_next_deadline(p.a.m), UINT64_MAX);
  ck_assert_int_eq(kr_mux_tick(p.a.m, 1000 * SEC), 0);
  ck_assert_int_eq(p.a.goaways, 0);
  kt_pump(&p);
  ck_assert_int_eq(kr_mux_is_ready(p.a.m), 1);
  kt_pair_free(&p);
}
END_TEST

/* ------------------------------------------------------------- stream ids */

START_TEST(stream_id_exhaustion) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  p.a.auto_reply = p.b.auto_reply = 1;
  p.a.keep_data = p.b.keep_data = 1;

  kr__mux_set_next_stream_id(p.a.m, KR_MAX_STREAM_ID);
  kt_srec *last = kt_open_ok(&p.a, NULL, 0, 0);
  ck_assert_uint_eq(last->id, KR_MAX_STREAM_ID);
  int rc = 0;
  ck_assert_ptr_null(kt_open(&p.a, NULL, 0, 0, &rc));
  ck_assert_int_eq(rc, KR_EIDEXHAUSTED);
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 0);
  kt_write_all(last, "top", 3);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *lb = kt_rec(&p.b, KR_MAX_STREAM_ID);
  ck_assert_ptr_nonnull(lb);
  assert_data(lb, "top", 3);
  ck_assert_int_eq(last->replied, 1);

  kr__mux_set_next_stream_id(p.b.m, KR_MAX_STREAM_ID - 1);
  kt_srec *lastb = kt_open_ok(&p.b, NULL, 0, 0);
  ck_assert_uint_eq(lastb->id, KR_MAX_STREAM_ID - 1);
  ck_assert_ptr_null(kt_open(&p.b, NULL, 0, 0, &rc));
  ck_assert_int_eq(rc, KR_EIDEXHAUSTED);
  ck_assert_int_eq(kr_mux_can_open(p.b.m), 0);
  kt_write_all(lastb, "even", 4);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *la = kt_rec(&p.a, KR_MAX_STREAM_ID - 1);
  ck_assert_ptr_nonnull(la);
  assert_data(la, "even", 4);
  /* Exhaustion is about new streams only: the old ones still finish. */
  ck_assert_int_eq(kr_stream_close_write(last->s), 0);
  ck_assert_int_eq(kr_stream_close_write(lb->s), 0);
  kt_pump(&p);
  assert_closed(last, KR_CODE_NO_ERROR, NULL);
  kr_stream *none = NULL;
  ck_assert_int_eq(kr_stream_open(p.a.m, NULL, 0, 0, NULL, &none),
                   KR_EIDEXHAUSTED);
  kt_pair_free(&p);
}
END_TEST

START_TEST(peer_stream_limit) {
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_max_streams(ob, 2), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  p.b.auto_reply = 1;
  kt_srec *r1 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_open_ok(&p.a, NULL, 0, 0);
  int rc = 0;
  ck_assert_ptr_null(kt_open(&p.a, NULL, 0, 0, &rc));
  ck_assert_int_eq(rc, KR_ESTREAMLIMIT);
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  /* b opening toward a is not limited by b's own limit. */
  for (int i = 0; i < 5; i++)
    kt_open_ok(&p.b, NULL, 0, 0);
  kt_pump(&p);
  assert_no_errors(&p);
  /* Once a stream ends, a may open again. */
  ck_assert_int_eq(kr_stream_reset(r1->s, KR_CODE_CANCEL, NULL), 0);
  kt_pump(&p);
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 1);
  kt_srec *r3 = kt_open_ok(&p.a, NULL, 0, 0);
  ck_assert_uint_eq(r3->id, 5);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_ptr_nonnull(kt_rec(&p.b, 5));
  kt_pair_free(&p);
}
END_TEST

/* ---------------------------------------------------------- flow control */

typedef struct wctx {
  const uint8_t *src;
  size_t total, off;
} wctx;

static void writer_on_writable(kt_side *side, kt_srec *r) {
  wctx *w = side->ctx;
  while (w->off < w->total && r->s) {
    size_t n = w->total - w->off;
    if (n > 200000)
      n = 200000;
    int64_t rc = kr_stream_write(r->s, w->src + w->off, n);
    if (rc == KR_EAGAIN || rc == 0)
      break;
    ck_assert_msg(rc > 0, "write from on_writable: %s", kr_err_name((int)rc));
    w->off += (size_t)rc;
    if ((size_t)rc < n)
      break;
  }
}

static void check_pattern_hook(kt_side *side, kt_srec *r, const uint8_t *d,
                               size_t n) {
  uint64_t off = r->received - n;
  size_t bad = kt_pattern_check(5, off, d, n);
  ck_assert_msg(bad == n, "%s: stream %u byte %" PRIu64 " differs", side->name,
                r->id, off + bad);
}

START_TEST(write_beyond_window) {
  const uint32_t W = 100000;
  const size_t Q = 1u << 20; /* default send queue */
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_stream_window(ob, W), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  p.rx_stream_window[1] = W;
  p.rx_conn_window[1] = 32u << 20;
  p.b.auto_reply = 1;
  p.b.hook_data = check_pattern_hook;

  size_t total = 3u << 20;
  uint8_t *src = malloc(total);
  ck_assert_ptr_nonnull(src);
  kt_pattern(5, 0, src, total);
  wctx w = {src, total, 0};
  p.a.ctx = &w;
  p.a.hook_writable = writer_on_writable;

  kt_srec *ra = kt_open_ok(&p.a, NULL, 0, 0);
  int64_t rc = kr_stream_write(ra->s, src, total);
  ck_assert_msg(rc > 0 && (size_t)rc < total,
                "write of %zu beyond window+queue accepted %lld", total,
                (long long)rc);
  ck_assert_msg((size_t)rc >= Q && (size_t)rc <= W + Q,
                "accepted %lld, expected between the queue (%zu) and "
                "window+queue (%zu)",
                (long long)rc, Q, (size_t)W + Q);
  w.off = (size_t)rc;
  ck_assert_uint_eq(kr_stream_write_space(ra->s), 0);
  int64_t rc2 = kr_stream_write(ra->s, src + w.off, 1000);
  ck_assert_msg(rc2 == KR_EAGAIN || rc2 == 0,
                "write with a full queue returned %lld", (long long)rc2);
  ck_assert_uint_gt(kr_stream_queued(ra->s), 0);

  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  ck_assert_msg(rb->received == W,
                "receiver got %" PRIu64 " bytes with a "
                "window of %u and no consumption",
                rb->received, W);
  ck_assert_uint_eq(p.tap_ab.data_bytes[ra->id], W);
  ck_assert_int_eq(ra->writables, 0);
  ck_assert_uint_eq(kr_stream_write_space(ra->s), 0);

  /* Consume in uneven steps; the writer refills from on_writable. */
  kt_rng rng;
  kt_rng_seed(&rng, kt_seed("write_beyond_window", 77));
  for (int iter = 0; rb->received < total; iter++) {
    ck_assert_msg(iter < 100000, "transfer stalled at %" PRIu64 " of %zu",
                  rb->received, total);
    if (rb->unconsumed) {
      size_t n = (size_t)kt_rng_range(&rng, 1, rb->unconsumed);
      kt_consume(rb, n);
    }
    kt_pump(&p);
    assert_no_errors(&p);
    ck_assert_uint_le(rb->max_unconsumed, W);
  }
  ck_assert_uint_eq(w.off, total);
  ck_assert_int_ge(ra->writables, 1);
  ck_assert_uint_eq(rb->received, total);
  ck_assert_uint_eq(p.tap_ab.data_bytes[ra->id], total);
  ck_assert_int_eq(kr_stream_close_write(ra->s), 0);
  kt_consume(rb, rb->unconsumed);
  ck_assert_int_eq(kr_stream_close_write(rb->s), 0);
  kt_pump(&p);
  assert_closed(ra, KR_CODE_NO_ERROR, NULL);
  assert_closed(rb, KR_CODE_NO_ERROR, NULL);
  free(src);
  kt_pair_free(&p);
}
END_TEST

START_TEST(credit_only_after_consume) {
  const uint32_t W = 65536;
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_stream_window(ob, W), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  p.rx_stream_window[1] = W;
  p.rx_conn_window[1] = 32u << 20;
  p.b.auto_reply = 1;
  uint8_t *buf = calloc(1, 2 * W);
  ck_assert_ptr_nonnull(buf);

  kt_srec *ra = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(ra, buf, W);
  kt_pump(&p);
  kt_srec *rb = kt_rec(&p.b, ra->id);
  ck_assert_ptr_nonnull(rb);
  ck_assert_uint_eq(rb->received, W);
  kt_write_all(ra, buf, 1000);
  kt_pump(&p);
  ck_assert_uint_eq(rb->received, W);
  ck_assert_uint_eq(kr_stream_queued(ra->s), 1000);
  ck_assert_uint_eq(p.tap_ba.frames[KR__FRAME_WINDOW], 0);

  /* Below a quarter of the window: nothing returned yet. */
  kt_consume(rb, W / 4 - 1);
  kt_pump(&p);
  ck_assert_msg(p.tap_ba.frames[KR__FRAME_WINDOW] == 0,
                "WINDOW sent after %u of %u bytes consumed", W / 4 - 1, W);
  ck_assert_uint_eq(rb->received, W);
  /* A quarter: one WINDOW for exactly what was consumed. */
  kt_consume(rb, 1);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_uint_eq(p.tap_ba.window_incr[ra->id], W / 4);
  ck_assert_uint_eq(p.tap_ba.conn_incr, 0); /* 32 MiB / 4 not reached */
  ck_assert_uint_eq(rb->received, W + 1000);
  ck_assert_uint_eq(kr_stream_queued(ra->s), 0);

  /* Over-consumption is refused. */
  ck_assert_int_eq(kr_stream_consume(rb->s, rb->unconsumed + 1), KR_EINVAL);
  kt_consume(rb, rb->unconsumed);
  kt_pump(&p);
  ck_assert_uint_eq(p.tap_ba.window_incr[ra->id], W + 1000);
  free(buf);
  kt_pair_free(&p);
}
END_TEST

START_TEST(connection_credit_after_consume) {
  /* Connection window 40000 < stream window 65536: the connection runs
   * out first and its WINDOW(0) comes back at 10000 consumed bytes. */
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_stream_window(ob, 65536), 0);
  ck_assert_int_eq(kr_mux_options_set_connection_window(ob, 40000), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  p.rx_stream_window[1] = 65536;
  p.rx_conn_window[1] = 40000;
  p.b.auto_reply = 1;
  uint8_t *buf = calloc(1, 100000);
  ck_assert_ptr_nonnull(buf);
  kt_srec *r1 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_srec *r3 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r1, buf, 30000);
  kt_write_all(r3, buf, 30000);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *b1 = kt_rec(&p.b, 1), *b3 = kt_rec(&p.b, 3);
  ck_assert_uint_eq(b1->received + b3->received, 40000);
  ck_assert_uint_eq(kr_stream_queued(r1->s) + kr_stream_queued(r3->s), 20000);
  kt_consume(b1, b1->received > 9999 ? 9999 : b1->received);
  if (b1->received < 9999)
    kt_consume(b3, 9999 - b1->received);
  kt_pump(&p);
  ck_assert_uint_eq(p.tap_ba.conn_incr, 0);
  ck_assert_uint_eq(b1->received + b3->received, 40000);
  if (b1->unconsumed)
    kt_consume(b1, 1);
  else
    kt_consume(b3, 1);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_uint_eq(p.tap_ba.conn_incr, 10000);
  ck_assert_uint_eq(b1->received + b3->received, 50000);
  /* Consume everything: the rest arrives. */
  for (int i = 0; i < 20 && b1->received + b3->received < 60000; i++) {
    kt_consume(b1, b1->unconsumed);
    kt_consume(b3, b3->unconsumed);
    kt_pump(&p);
  }
  ck_assert_uint_eq(b1->received, 30000);
  ck_assert_uint_eq(b3->received, 30000);
  free(buf);
  kt_pair_free(&p);
}
END_TEST

START_TEST(unconsumed_at_close_returns_credit) {
  /* Bytes still unconsumed when on_close returns count as consumed: the
   * connection window must get them back, or the connection slowly
   * starves. b's connection window is 40000. */
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_connection_window(ob, 40000), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  p.rx_conn_window[1] = 40000;
  p.b.auto_reply = 1;
  uint8_t *buf = calloc(1, 40000);
  ck_assert_ptr_nonnull(buf);

  /* Clean close with 30000 bytes unconsumed. */
  kt_srec *r1 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r1, buf, 30000);
  ck_assert_int_eq(kr_stream_close_write(r1->s), 0);
  kt_pump(&p);
  kt_srec *b1 = kt_rec(&p.b, r1->id);
  ck_assert_ptr_nonnull(b1);
  ck_assert_uint_eq(b1->received, 30000);
  ck_assert_int_eq(kr_stream_close_write(b1->s), 0);
  kt_pump(&p);
  assert_closed(b1, KR_CODE_NO_ERROR, NULL);
  assert_closed(r1, KR_CODE_NO_ERROR, NULL);

  /* The whole window again; then a reset by the receiver with everything
   * unconsumed. */
  kt_srec *r3 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r3, buf, 40000);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *b3 = kt_rec(&p.b, r3->id);
  ck_assert_ptr_nonnull(b3);
  ck_assert_msg(b3->received == 40000,
                "after a clean close with 30000 unconsumed bytes the next "
                "stream got %" PRIu64 " of 40000 bytes",
                b3->received);
  ck_assert_int_eq(kr_stream_reset(b3->s, KR_CODE_CANCEL, NULL), 0);
  kt_pump(&p);
  kt_srec *r5 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r5, buf, 40000);
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *b5 = kt_rec(&p.b, r5->id);
  ck_assert_ptr_nonnull(b5);
  ck_assert_msg(b5->received == 40000,
                "after a reset with 40000 unconsumed bytes the next stream "
                "got %" PRIu64 " of 40000 bytes",
                b5->received);
  free(buf);
  kt_pair_free(&p);
}
END_TEST

START_TEST(output_limit_and_want_read) {
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  ck_assert_int_eq(kr_mux_options_set_output_limit(oa, 1), 0);
  kt_pair p;
  kt_pair_init(&p, oa, NULL);
  kr_mux_options_free(oa);
  /* Its HELLO alone is over a 1-byte limit, yet reading goes on: a
   * full-duplex peer may need our reading to drain its own output. */
  ck_assert_int_eq(kr_mux_want_read(p.a.m), 1);
  ck_assert_int_eq(kr_mux_want_read(p.b.m), 1);
  kt_pump(&p);
  ck_assert_int_eq(kr_mux_want_read(p.a.m), 1);
  p.b.auto_reply = 1;
  p.b.keep_data = 1;
  kt_srec *r = kt_open_ok(&p.a, NULL, 0, 0);
  uint8_t *buf = malloc(300000);
  ck_assert_ptr_nonnull(buf);
  kt_pattern(8, 0, buf, 300000);
  kt_write_all(r, buf, 300000);
  ck_assert_int_eq(kr_mux_want_write(p.a.m), 1);
  /* Random small pieces: the mux frames lazily as output drains. */
  p.max_piece = 5000;
  kt_pump(&p);
  assert_no_errors(&p);
  kt_srec *rb = kt_rec(&p.b, r->id);
  ck_assert_ptr_nonnull(rb);
  assert_data(rb, buf, 300000);
  free(buf);
  kt_pair_free(&p);
}
END_TEST

START_TEST(ping_flood_fails_connection) {
  /* b answers PINGs but its host never takes the answers: past four
   * output limits of pending output the connection fails. */
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_output_limit(ob, 1000), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  uint8_t f[KR_FRAME_HEADER_SIZE + KR__PING_LEN], opaque[8] = {1};
  size_t n = kr__frame_ping(f, 0, opaque);
  int64_t rc = 0;
  int sent = 0;
  for (; sent < 1000 && rc >= 0; sent++)
    rc = kr_mux_recv(p.b.m, f, n, 0);
  ck_assert_int_eq(rc, KR_EPROTO);
  /* 4000 bytes of 17-byte answers: a couple of hundred PINGs, not 1000. */
  ck_assert_int_lt(sent, 300);
  ck_assert_int_eq(p.b.goaways, 1);
  ck_assert_int_eq(p.b.goaway_remote, 0);
  ck_assert_uint_eq(p.b.goaway_code, KR_CODE_PROTOCOL);
  kt_pair_free(&p);
}
END_TEST

START_TEST(peer_frame_size_honoured) {
  /* b accepts 16384-byte payloads, a the default 65536: each sender frames
   * to the other's limit. */
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_max_frame_size(ob, KR_MIN_FRAME_SIZE), 0);
  kt_pair p;
  kt_pair_ready(&p, NULL, ob);
  kr_mux_options_free(ob);
  p.a.auto_consume = p.b.auto_consume = 1;
  p.b.auto_reply = 1;
  uint8_t *buf = calloc(1, 500000);
  ck_assert_ptr_nonnull(buf);
  kt_srec *r = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r, buf, 500000);
  kt_pump(&p);
  kt_srec *rb = kt_rec(&p.b, r->id);
  ck_assert_ptr_nonnull(rb);
  kt_write_all(rb, buf, 500000);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_uint_eq(rb->received, 500000);
  ck_assert_uint_eq(r->received, 500000);
  ck_assert_uint_eq(p.tap_ab.max_data_len, KR_MIN_FRAME_SIZE);
  ck_assert_uint_le(p.tap_ab.max_len, KR_MIN_FRAME_SIZE);
  ck_assert_uint_eq(p.tap_ba.max_data_len, 65536);
  free(buf);
  kt_pair_free(&p);
}
END_TEST

START_TEST(abort_closes_everything) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  p.b.auto_reply = 1;
  kt_srec *r1 = kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  p.a.auto_reply = 1;
  kt_srec *r2 = kt_open_ok(&p.b, NULL, 0, 0);
  kt_pump(&p);
  kt_srec *in = kt_rec(&p.a, r2->id);
  ck_assert_ptr_nonnull(in);
  ck_assert_int_eq(kr_mux_abort(p.a.m, KR_CODE_UNAVAILABLE, "transport lost"),
                   0);
  assert_closed(r1, KR_CODE_UNAVAILABLE, NULL);
  assert_closed(in, KR_CODE_UNAVAILABLE, NULL);
  ck_assert_int_eq(p.a.goaways, 1);
  ck_assert_int_eq(p.a.goaway_remote, 0);
  ck_assert_uint_eq(p.a.goaway_code, KR_CODE_UNAVAILABLE);
  ck_assert_str_eq(p.a.goaway_reason, "transport lost");
  ck_assert_uint_eq(kr_mux_num_streams(p.a.m), 0);
  ck_assert_int_eq(kr_mux_can_open(p.a.m), 0);
  ck_assert_int_eq(kr_mux_want_read(p.a.m), 0);
  ck_assert_int_eq(kr_mux_abort(p.a.m, KR_CODE_UNAVAILABLE, NULL), KR_ECLOSED);
  ck_assert_int_eq(kr_mux_recv(p.a.m, (const uint8_t *)"x", 1, 0), KR_ECLOSED);
  ck_assert_int_eq(p.a.goaways, 1);
  kt_pair_free(&p);
}
END_TEST

/* ------------------------------------------------- callbacks and re-entry */

static void free_mux_hook_side(kt_side *side) {
  kr_mux_free(side->m);
  side->freed = 1;
}
static void free_on_open(kt_side *s, kt_srec *r) {
  free_mux_hook_side(s);
}
static void free_on_data(kt_side *s, kt_srec *r, const uint8_t *d, size_t n) {
  free_mux_hook_side(s);
}
static void free_on_close(kt_side *s, kt_srec *r) {
  free_mux_hook_side(s);
}
static void free_on_writable(kt_side *s, kt_srec *r) {
  free_mux_hook_side(s);
}
static void free_on_fin(kt_side *s, kt_srec *r) {
  free_mux_hook_side(s);
}
static void free_on_reply(kt_side *s, kt_srec *r) {
  free_mux_hook_side(s);
}

START_TEST(free_inside_callbacks) {
  kt_pair p;

  /* on_hello */
  kt_pair_init(&p, NULL, NULL);
  p.b.hook_hello = free_mux_hook_side;
  kt_pump(&p);
  ck_assert_ptr_null(p.b.m);
  kt_pair_free(&p);

  /* on_open, with more frames behind the OPEN in the same buffer */
  kt_pair_ready(&p, NULL, NULL);
  p.b.hook_open = free_on_open;
  for (int i = 0; i < 3; i++) {
    kt_srec *r = kt_open_ok(&p.a, NULL, 0, 0);
    kt_write_all(r, "data", 4);
  }
  kt_pump(&p);
  ck_assert_ptr_null(p.b.m);
  ck_assert_int_eq(p.b.opens, 1);
  kt_pair_free(&p);

  /* on_data */
  kt_pair_ready(&p, NULL, NULL);
  p.b.auto_reply = 1;
  p.b.hook_data = free_on_data;
  kt_srec *r = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r, "data", 4);
  kt_write_all(r, "more", 4);
  ck_assert_int_eq(kr_stream_close_write(r->s), 0);
  kt_pump(&p);
  ck_assert_ptr_null(p.b.m);
  kt_pair_free(&p);

  /* on_reply and on_fin */
  kt_pair_ready(&p, NULL, NULL);
  p.b.auto_reply = 1;
  p.a.hook_reply = free_on_reply;
  kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  ck_assert_ptr_null(p.a.m);
  kt_pair_free(&p);
  kt_pair_ready(&p, NULL, NULL);
  p.b.auto_reply = 1;
  p.b.hook_fin = free_on_fin;
  r = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r, "last words", 10);
  ck_assert_int_eq(kr_stream_close_write(r->s), 0);
  kt_pump(&p);
  ck_assert_ptr_null(p.b.m);
  kt_pair_free(&p);

  /* on_close fired by kr_stream_reset itself */
  kt_pair_ready(&p, NULL, NULL);
  p.a.hook_close = free_on_close;
  r = kt_open_ok(&p.a, NULL, 0, 0);
  kt_open_ok(&p.a, NULL, 0, 0);
  ck_assert_int_eq(kr_stream_reset(r->s, KR_CODE_CANCEL, "x"), 0);
  ck_assert_int_eq(p.a.freed, 1);
  p.a.m = NULL;
  kt_pump(&p);
  kt_pair_free(&p);

  /* on_close fired by the peer's RESET, among other streams */
  kt_pair_ready(&p, NULL, NULL);
  p.b.auto_reply = 1;
  p.a.hook_close = free_on_close;
  for (int i = 0; i < 3; i++)
    kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(
        kr_stream_reset(kt_peer_rec(&p.b, (size_t)i)->s, KR_CODE_CANCEL, NULL),
        0);
  kt_pump(&p);
  ck_assert_ptr_null(p.a.m);
  kt_pair_free(&p);

  /* on_close for every stream when the connection fails */
  kt_pair_ready(&p, NULL, NULL);
  p.b.hook_close = free_on_close;
  p.b.auto_reply = 1;
  for (int i = 0; i < 3; i++)
    kt_open_ok(&p.a, NULL, 0, 0);
  kt_pump(&p);
  {
    static const uint8_t junk[9] = {0, 0, 0, 0x7f, 0, 0, 0, 0, 0};
    int64_t rc = kr_mux_recv(p.b.m, junk, sizeof junk, 0);
    ck_assert_int_eq(rc, KR_EPROTO);
    ck_assert_int_eq(p.b.freed, 1);
    p.b.m = NULL;
  }
  kt_pair_free(&p);

  /* on_goaway */
  kt_pair_ready(&p, NULL, NULL);
  p.b.hook_goaway = free_mux_hook_side;
  ck_assert_int_eq(kr_mux_goaway(p.a.m, KR_CODE_SHUTDOWN, "bye"), 0);
  kt_pump(&p);
  ck_assert_ptr_null(p.b.m);
  kt_pair_free(&p);
  /* local on_goaway inside kr_mux_goaway */
  kt_pair_ready(&p, NULL, NULL);
  p.a.hook_goaway = free_mux_hook_side;
  ck_assert_int_eq(kr_mux_goaway(p.a.m, KR_CODE_SHUTDOWN, "bye"), 0);
  p.a.m = NULL;
  kt_pump(&p);
  kt_pair_free(&p);

  /* on_writable, fired from kr_mux_recv when credit returns */
  kr_mux_options *ob = kt_opts(KR_ROLE_ACCEPTOR);
  ck_assert_int_eq(kr_mux_options_set_stream_window(ob, 1000), 0);
  ck_assert_int_eq(kr_mux_options_set_send_queue(ob, 1), 0);
  kr_mux_options *oa = kt_opts(KR_ROLE_DIALER);
  ck_assert_int_eq(kr_mux_options_set_send_queue(oa, 10), 0);
  kt_pair_ready(&p, oa, ob);
  kr_mux_options_free(oa);
  kr_mux_options_free(ob);
  p.b.auto_reply = 1;
  p.b.auto_consume = 1;
  p.a.hook_writable = free_on_writable;
  r = kt_open_ok(&p.a, NULL, 0, 0);
  uint8_t buf[5000] = {0};
  int64_t rc = kr_stream_write(r->s, buf, sizeof buf);
  ck_assert_msg(rc > 0 && rc < (int64_t)sizeof buf, "write returned %lld",
                (long long)rc);
  kt_pump(&p);
  ck_assert_int_eq(p.a.writables, 1);
  ck_assert_ptr_null(p.a.m);
  kt_pair_free(&p);
}
END_TEST

typedef struct reentry {
  int64_t recv_rc;
  int tick_rc;
  int called;
} reentry;

static void reenter_on_data(kt_side *s, kt_srec *r, const uint8_t *d,
                            size_t n) {
  reentry *e = s->ctx;
  e->called++;
  e->recv_rc = kr_mux_recv(s->m, (const uint8_t *)"x", 1, 0);
  e->tick_rc = kr_mux_tick(s->m, 0);
  /* Everything else is allowed: write back from inside on_data. */
  kt_write_all(r, d, n);
}

START_TEST(reentry_rules) {
  kt_pair p;
  kt_pair_ready(&p, NULL, NULL);
  reentry e = {0, 0, 0};
  p.b.ctx = &e;
  p.b.auto_reply = 1;
  p.b.hook_data = reenter_on_data;
  p.b.auto_consume = 1;
  p.a.keep_data = 1;
  kt_srec *r = kt_open_ok(&p.a, NULL, 0, 0);
  kt_write_all(r, "echo me", 7);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(e.called, 1);
  ck_assert_int_eq(e.recv_rc, KR_ESTATE);
  ck_assert_int_eq(e.tick_rc, KR_ESTATE);
  assert_data(r, "echo me", 7);

  /* kr_mux_sent beyond what was given. */
  ck_assert_int_eq(kr_mux_ping(p.a.m, 0), 0);
  const uint8_t *out;
  size_t n = kr_mux_send(p.a.m, &out);
  ck_assert_uint_gt(n, 0);
  ck_assert_int_eq(kr_mux_sent(p.a.m, n + 1), KR_EINVAL);
  ck_assert_int_eq(kr_mux_sent(p.a.m, 0), 0);
  kt_pump(&p);
  assert_no_errors(&p);
  ck_assert_int_eq(p.a.pings, 1);
  kt_pair_free(&p);
}
END_TEST

int main(void) {
  Suite *s = suite_create("mux");
  KT_ADD(s, options_validation, 10);
  KT_ADD(s, handshake, 10);
  KT_ADD(s, open_reply_data_fin, 10);
  KT_ADD(s, many_streams_interleaved, 10);
  KT_ADD(s, metadata_intact, 10);
  KT_ADD(s, metadata_peer_frame_limit, 10);
  KT_ADD(s, half_close_each_direction, 10);
  KT_ADD(s, reset_either_side, 10);
  KT_ADD(s, reset_discards_crossing_data, 10);
  KT_ADD(s, reset_crossing_resets, 10);
  KT_ADD(s, goaway_drain, 10);
  KT_ADD(s, goaway_idle_is_done, 10);
  KT_ADD(s, ping_rtt, 10);
  KT_ADD(s, keepalive_timeout, 10);
  KT_ADD(s, keepalive_keeps_alive, 10);
  KT_ADD(s, handshake_timeout, 10);
  KT_ADD(s, stream_id_exhaustion, 10);
  KT_ADD(s, peer_stream_limit, 10);
  KT_ADD(s, write_beyond_window, 30);
  KT_ADD(s, credit_only_after_consume, 10);
  KT_ADD(s, connection_credit_after_consume, 10);
  KT_ADD(s, unconsumed_at_close_returns_credit, 10);
  KT_ADD(s, output_limit_and_want_read, 10);
  KT_ADD(s, ping_flood_fails_connection, 10);
  KT_ADD(s, peer_frame_size_honoured, 10);
  KT_ADD(s, abort_closes_everything, 10);
  KT_ADD(s, free_inside_callbacks, 10);
  KT_ADD(s, reentry_rules, 10);
  return kt_run_suite(s);
}
