/* WebSocket transports (ws://, wss://), in one process on one event loop.
 *
 *   framing   the frame-boundary logic of lib/io/transport_ws.c: outgoing
 *             queues split at every point, incoming messages cut at every
 *             point (pure functions, no sockets)
 *   pair      a ws:// transport pair: bearer token, backpressure, clean
 *             close, handshake timeout, a raw peer that breaks the framing
 *   tunnel    kas + agent + client over ws://: 4 MiB echo byte-exact, and
 *             a one-way transfer timed in both directions (16 MiB; set
 *             KR_WS_BENCH_MIB=256 for the measurement)
 *   wss       the same echo over wss:// with a self-signed certificate made
 *             by the openssl program, verification off and on, and refusals
 *
 * Exits 77 (skip) after the other cases pass when openssl is missing.
 */
#include <arpa/inet.h>
#include <check.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <kasroute/error.h>

#include "core/frame.h"
#include "echo_client.h"
#include "harness.h"
#include "io/conn.h"
#include "io/transport_ws.h"
#include "io/url.h"

static int have_openssl;

/* ============================================================== framing */

static uint64_t rng_state;
static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}

/* Appends a frame with a payload of n bytes to out at *len. */
static void put_frame(uint8_t *out, size_t *len, uint32_t n) {
  uint8_t *p = out + *len;
  kr__put_u24(p, n);
  p[3] = KR__FRAME_DATA;
  p[4] = 0;
  kr__put_u32(p + 5, 1);
  for (uint32_t i = 0; i < n; i++)
    p[KR_FRAME_HEADER_SIZE + i] = (uint8_t)rnd();
  *len += KR_FRAME_HEADER_SIZE + n;
}

/* Builds a stream of frames of mixed sizes (empty ones included). */
static size_t make_stream(uint8_t *out, size_t cap, const uint32_t *sizes,
                          size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    ck_assert(len + KR_FRAME_HEADER_SIZE + sizes[i] <= cap);
    put_frame(out, &len, sizes[i]);
  }
  return len;
}

/* Checks that msg[0..n) is whole frames. */
static void assert_whole_frames(const uint8_t *msg, size_t n) {
  kr__ws_rx r = {0};
  size_t off = 0;
  while (off < n) {
    ck_assert_uint_ge(n - off, KR_FRAME_HEADER_SIZE);
    off += KR_FRAME_HEADER_SIZE + kr__get_u24(msg + off);
  }
  ck_assert_uint_eq(off, n);
  kr__ws_rx_feed(&r, msg, n);
  ck_assert(kr__ws_rx_at_boundary(&r));
}

/* Sends everything whole from q into out (at *olen), checking messages. */
static void drain_messages(kr__ws_txq *q, uint8_t *out, size_t *olen,
                           size_t max) {
  uint8_t *p;
  size_t n;
  while ((n = kr__ws_txq_next(q, max, &p)) > 0) {
    assert_whole_frames(p, n);
    if (n > max) /* only a single oversized frame may exceed max */
      ck_assert_uint_eq(KR_FRAME_HEADER_SIZE + kr__get_u24(p), n);
    /* The headroom before the message is writable (libwebsockets puts the
     * WebSocket header there). */
    ck_assert(p - q->buf >= (ptrdiff_t)q->pre);
    memset(p - q->pre, 0xee, q->pre);
    memcpy(out + *olen, p, n);
    *olen += n;
    kr__ws_txq_consume(q, n);
  }
}

START_TEST(txq_split_everywhere) {
  rng_state = 20240601;
  fprintf(stderr, "framing seed %llu\n", (unsigned long long)rng_state);
  static const uint32_t sizes[] = {0, 1, 7, 8, 9, 100, 0, 300, 2, 0, 511};
  static uint8_t stream[4096], out[4096];
  size_t len = make_stream(stream, sizeof(stream), sizes, 11);
  /* Two writes split at every point, then three writes at many points,
   * with a small message limit so that messages group several frames. */
  for (size_t k = 0; k <= len; k++) {
    kr__ws_txq q;
    kr__ws_txq_init(&q, 16);
    size_t olen = 0;
    ck_assert_int_eq(kr__ws_txq_append(&q, stream, k), 0);
    drain_messages(&q, out, &olen, 200);
    ck_assert_int_eq(kr__ws_txq_append(&q, stream + k, len - k), 0);
    drain_messages(&q, out, &olen, 200);
    ck_assert_uint_eq(olen, len);
    ck_assert(memcmp(out, stream, len) == 0);
    ck_assert_uint_eq(kr__ws_txq_buffered(&q), 0);
    kr__ws_txq_free(&q);
  }
  for (size_t a = 0; a <= len; a += 7)
    for (size_t b = a; b <= len; b += 13) {
      kr__ws_txq q;
      kr__ws_txq_init(&q, 16);
      size_t olen = 0;
      kr__ws_txq_append(&q, stream, a);
      drain_messages(&q, out, &olen, 64);
      kr__ws_txq_append(&q, stream + a, b - a);
      drain_messages(&q, out, &olen, 64);
      kr__ws_txq_append(&q, stream + b, len - b);
      drain_messages(&q, out, &olen, 64);
      ck_assert_uint_eq(olen, len);
      ck_assert(memcmp(out, stream, len) == 0);
      kr__ws_txq_free(&q);
    }
  /* One byte at a time: nothing is ever sent before its frame is whole. */
  kr__ws_txq q;
  kr__ws_txq_init(&q, 16);
  size_t olen = 0;
  for (size_t i = 0; i < len; i++) {
    kr__ws_txq_append(&q, stream + i, 1);
    drain_messages(&q, out, &olen, 1 << 20);
  }
  ck_assert_uint_eq(olen, len);
  ck_assert(memcmp(out, stream, len) == 0);
  kr__ws_txq_free(&q);
}
END_TEST

START_TEST(txq_room_and_big_frames) {
  kr__ws_txq q;
  kr__ws_txq_init(&q, 16);
  ck_assert_uint_eq(kr__ws_txq_room(&q, 1000), 1000);
  /* A frame larger than the limit: its header promises 5000 bytes of
   * payload; the queue must take all of it or the writer would wait for
   * a drain that never comes. */
  uint8_t hdr[KR_FRAME_HEADER_SIZE] = {0};
  kr__put_u24(hdr, 5000);
  kr__ws_txq_append(&q, hdr, sizeof(hdr));
  ck_assert_uint_eq(kr__ws_txq_room(&q, 1000), 5000);
  static uint8_t body[5000];
  kr__ws_txq_append(&q, body, 4999);
  ck_assert_uint_eq(kr__ws_txq_room(&q, 1000), 1);
  uint8_t *p;
  ck_assert_uint_eq(kr__ws_txq_next(&q, 1000, &p), 0);
  kr__ws_txq_append(&q, body, 1);
  /* Complete now: sent alone although larger than the message limit. */
  ck_assert_uint_eq(kr__ws_txq_room(&q, 1000), 0);
  ck_assert_uint_eq(kr__ws_txq_next(&q, 1000, &p), 5009);
  kr__ws_txq_consume(&q, 5009);
  ck_assert_uint_eq(kr__ws_txq_room(&q, 1000), 1000);
  /* A partial header does not raise the limit. */
  kr__ws_txq_append(&q, hdr, 3);
  ck_assert_uint_eq(kr__ws_txq_room(&q, 1000), 997);
  kr__ws_txq_free(&q);
}
END_TEST

START_TEST(rx_messages_cut_everywhere) {
  rng_state = 77;
  static const uint32_t sizes[] = {5, 0, 40, 1, 0, 0, 9, 200};
  static uint8_t stream[2048];
  size_t len = make_stream(stream, sizeof(stream), sizes, 8);
  /* Frame boundaries of the stream. */
  static int boundary[2048];
  memset(boundary, 0, sizeof(boundary));
  for (size_t off = 0;;) {
    boundary[off] = 1;
    if (off == len)
      break;
    off += KR_FRAME_HEADER_SIZE + kr__get_u24(stream + off);
  }
  /* Two messages cut at k: the first ends on a boundary exactly when k is
   * one; each message arrives in fragments cut at every point j. */
  for (size_t k = 0; k <= len; k++) {
    for (size_t j = 0; j <= k; j += (k > 64 ? 5 : 1)) {
      kr__ws_rx r = {0};
      kr__ws_rx_feed(&r, stream, j);
      kr__ws_rx_feed(&r, stream + j, k - j);
      ck_assert_int_eq(kr__ws_rx_at_boundary(&r), boundary[k]);
      if (!boundary[k])
        continue;
      kr__ws_rx_feed(&r, stream + k, len - k);
      ck_assert(kr__ws_rx_at_boundary(&r));
    }
  }
  /* Byte by byte: at a boundary exactly at frame ends. */
  kr__ws_rx r = {0};
  for (size_t i = 0; i < len; i++) {
    kr__ws_rx_feed(&r, stream + i, 1);
    ck_assert_int_eq(kr__ws_rx_at_boundary(&r), boundary[i + 1]);
  }
}
END_TEST

/* ================================================================= pair */

typedef struct side {
  kr__transport *t;
  int open, closed, err, drains;
  char why[200];
  size_t got;
  uint8_t *buf; /* received bytes, when collecting */
  size_t cap;
} side;

static th_env penv;
static kr__ws_ctx *sctx, *cctx;
static struct evconnlistener *plist;
static int pport;
static side srv, cli;
static int hs_ms = 2000;

static void s_open(kr__transport *t, void *ud) {
  ((side *)ud)->open = 1;
}
static void s_read(kr__transport *t, const uint8_t *p, size_t n, void *ud) {
  side *s = ud;
  if (s->buf && s->got + n <= s->cap)
    memcpy(s->buf + s->got, p, n);
  s->got += n;
}
static void s_drain(kr__transport *t, void *ud) {
  ((side *)ud)->drains++;
}
static void s_close(kr__transport *t, int err, const char *why, void *ud) {
  side *s = ud;
  s->closed = 1;
  s->err = err;
  snprintf(s->why, sizeof(s->why), "%s", why);
}
static const kr__transport_cbs side_cbs = {s_open, s_read, s_drain, s_close};

static void p_accept(struct evconnlistener *l, evutil_socket_t fd,
                     struct sockaddr *sa, int len, void *arg) {
  ck_assert_ptr_null(srv.t);
  ck_assert_int_eq(kr__ws_accept(sctx, fd, hs_ms, &side_cbs, &srv, &srv.t), 0);
}

static void pair_setup(void) {
  th_setup(&penv);
  memset(&srv, 0, sizeof(srv));
  memset(&cli, 0, sizeof(cli));
  char err[256];
  ck_assert_int_eq(
      kr__ws_ctx_new_server(penv.base, NULL, NULL, &sctx, err, sizeof(err)), 0);
  ck_assert_int_eq(
      kr__ws_ctx_new_client(penv.base, 0, NULL, 1, &cctx, err, sizeof(err)), 0);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  plist = evconnlistener_new_bind(penv.base, p_accept, NULL,
                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
                                  (struct sockaddr *)&sin, sizeof(sin));
  ck_assert_ptr_nonnull(plist);
  socklen_t sl = sizeof(sin);
  getsockname(evconnlistener_get_fd(plist), (struct sockaddr *)&sin, &sl);
  pport = ntohs(sin.sin_port);
}

static void pair_teardown(void) {
  if (srv.t)
    srv.t->ops->free(srv.t);
  if (cli.t)
    cli.t->ops->free(cli.t);
  kr__ws_ctx_free(sctx);
  kr__ws_ctx_free(cctx);
  evconnlistener_free(plist);
  free(srv.buf);
  free(cli.buf);
  th_cleanup(&penv);
}

static int both_open(void *arg) {
  return srv.open && cli.open;
}
static int both_closed(void *arg) {
  return srv.closed && cli.closed;
}
static int srv_closed(void *arg) {
  return srv.closed;
}
static int never(void *arg) {
  return 0;
}

static void dial(const char *token) {
  char url[128], err[128];
  kr__url u;
  snprintf(url, sizeof(url), "ws://127.0.0.1:%d/any/path", pport);
  ck_assert_int_eq(kr__url_parse(url, &u, err, sizeof(err)), 0);
  ck_assert_int_eq(kr__ws_connect(cctx, &u, token, token ? strlen(token) : 0,
                                  hs_ms, &side_cbs, &cli, &cli.t),
                   0);
  ck_assert_msg(th_run_cond(&penv, both_open, NULL, 5000),
                "upgrade did not complete (server closed %d: %s)", srv.closed,
                srv.why);
}

START_TEST(pair_bearer_and_close) {
  dial("tok-123.abc");
  ck_assert(kr__transport_is_ws(srv.t));
  size_t n = 0;
  const char *b = kr__ws_bearer(srv.t, &n);
  ck_assert_ptr_nonnull(b);
  ck_assert_uint_eq(n, 11);
  ck_assert(memcmp(b, "tok-123.abc", 11) == 0);
  ck_assert_ptr_null(kr__ws_bearer(cli.t, NULL));
  /* A few frames, then a clean close from the client. */
  rng_state = 5;
  static uint8_t stream[8192];
  static const uint32_t sizes[] = {10, 0, 4000, 3};
  size_t len = make_stream(stream, sizeof(stream), sizes, 4);
  srv.buf = malloc(len);
  srv.cap = len;
  ck_assert_uint_eq(cli.t->ops->write(cli.t, stream, len), len);
  cli.t->ops->close(cli.t);
  ck_assert(th_run_cond(&penv, both_closed, NULL, 5000));
  ck_assert_uint_eq(srv.got, len);
  ck_assert(memcmp(srv.buf, stream, len) == 0);
  ck_assert_msg(cli.err == 0, "client: %s", cli.why);
  ck_assert_msg(srv.err == 0, "server: %s", srv.why);
}
END_TEST

START_TEST(pair_no_bearer) {
  dial(NULL);
  ck_assert_ptr_null(kr__ws_bearer(srv.t, NULL));
  /* A token that cannot travel in a header is not sent. */
  srv.t->ops->free(srv.t);
  srv.t = NULL;
  cli.t->ops->free(cli.t);
  cli.t = NULL;
  memset(&srv, 0, sizeof(srv));
  memset(&cli, 0, sizeof(cli));
  dial("bad token\r\nX-Injected: 1");
  ck_assert_ptr_null(kr__ws_bearer(srv.t, NULL));
}
END_TEST

/* Server pauses reading from the start; the client fills its queue. */
static void paused_open(kr__transport *t, void *ud) {
  ((side *)ud)->open = 1;
  t->ops->set_reading(t, 0);
}
static const kr__transport_cbs paused_cbs = {paused_open, s_read, s_drain,
                                             s_close};
static void p_accept_paused(struct evconnlistener *l, evutil_socket_t fd,
                            struct sockaddr *sa, int len, void *arg) {
  ck_assert_int_eq(kr__ws_accept(sctx, fd, hs_ms, &paused_cbs, &srv, &srv.t),
                   0);
}
static int srv_got_all(void *arg) {
  return srv.got == *(size_t *)arg;
}
static int drained_since(void *arg) {
  return cli.drains != *(int *)arg;
}

START_TEST(pair_backpressure) {
  evconnlistener_set_cb(plist, p_accept_paused, NULL);
  dial(NULL);
  rng_state = 99;
  /* More than loopback socket buffers can hold. */
  const uint32_t fsz = 60000;
  const int nframes = 560;
  size_t frame = KR_FRAME_HEADER_SIZE + fsz, total = nframes * frame;
  uint8_t *stream = malloc(total);
  size_t len = 0;
  for (int i = 0; i < nframes; i++)
    put_frame(stream, &len, fsz);
  srv.buf = malloc(total);
  srv.cap = total;
  /* Write until the transport refuses and stays full: no on_drain for
   * 300 ms after a refusal (before that, socket buffers absorb data and
   * drains are expected). */
  size_t sent = 0;
  for (int round = 0; round < 100000 && sent < total; round++) {
    size_t w = cli.t->ops->write(cli.t, stream + sent, total - sent);
    sent += w;
    if (w > 0) {
      event_base_loop(penv.base, EVLOOP_NONBLOCK);
      continue;
    }
    int d = cli.drains;
    if (!th_run_cond(&penv, drained_since, &d, 300))
      break;
  }
  ck_assert_msg(sent < total, "the client queue never filled (%zu)", sent);
  ck_assert_uint_eq(srv.got, 0); /* nothing read while paused */
  fprintf(stderr, "backpressure: %zu bytes accepted while paused\n", sent);
  /* Resume: everything arrives and the writer hears on_drain. */
  srv.t->ops->set_reading(srv.t, 1);
  while (sent < total) {
    int d = cli.drains;
    ck_assert_msg(th_run_cond(&penv, drained_since, &d, 5000),
                  "no on_drain after resuming (%zu of %zu sent, %zu read)",
                  sent, total, srv.got);
    sent += cli.t->ops->write(cli.t, stream + sent, total - sent);
  }
  ck_assert(th_run_cond(&penv, srv_got_all, &total, 5000));
  ck_assert(memcmp(srv.buf, stream, total) == 0);
  ck_assert(!srv.closed && !cli.closed);
  free(stream);
}
END_TEST

/* The server pauses inside on_read in the middle of the stream: what
 * libwebsockets already read waits, nothing is delivered while paused,
 * and everything arrives in order after the resume. */
static size_t pause_at, got_at_pause;
static void midpause_read(kr__transport *t, const uint8_t *p, size_t n,
                          void *ud) {
  s_read(t, p, n, ud);
  if (!got_at_pause && srv.got >= pause_at) {
    got_at_pause = srv.got;
    t->ops->set_reading(t, 0);
  }
}
static const kr__transport_cbs midpause_cbs = {s_open, midpause_read, s_drain,
                                               s_close};
static void p_accept_midpause(struct evconnlistener *l, evutil_socket_t fd,
                              struct sockaddr *sa, int len, void *arg) {
  ck_assert_int_eq(kr__ws_accept(sctx, fd, hs_ms, &midpause_cbs, &srv, &srv.t),
                   0);
}
static int paused_now(void *arg) {
  return got_at_pause != 0;
}

START_TEST(pair_pause_midstream) {
  evconnlistener_set_cb(plist, p_accept_midpause, NULL);
  dial(NULL);
  rng_state = 1234;
  size_t total = 0, len = 0;
  uint8_t *stream = malloc(40 * (KR_FRAME_HEADER_SIZE + 50000));
  for (int i = 0; i < 40; i++)
    put_frame(stream, &len, 1000 + rnd() % 49000);
  total = len;
  srv.buf = malloc(total);
  srv.cap = total;
  pause_at = 150000;
  got_at_pause = 0;
  size_t sent = 0;
  while (sent < total) {
    size_t w = cli.t->ops->write(cli.t, stream + sent, total - sent);
    sent += w;
    if (paused_now(NULL))
      break;
    event_base_loop(penv.base, EVLOOP_NONBLOCK);
  }
  ck_assert(th_run_cond(&penv, paused_now, NULL, 5000));
  /* Keep writing what fits; nothing may be delivered while paused. */
  for (int i = 0; i < 50; i++) {
    sent += cli.t->ops->write(cli.t, stream + sent, total - sent);
    event_base_loop(penv.base, EVLOOP_NONBLOCK);
  }
  th_run_cond(&penv, never, NULL, 200);
  ck_assert_uint_eq(srv.got, got_at_pause);
  srv.t->ops->set_reading(srv.t, 1);
  while (srv.got < total) {
    sent += cli.t->ops->write(cli.t, stream + sent, total - sent);
    size_t before = srv.got;
    int d = cli.drains;
    if (!th_run_cond(&penv, drained_since, &d, 300) && srv.got == before)
      break;
  }
  ck_assert_uint_eq(sent, total);
  ck_assert(th_run_cond(&penv, srv_got_all, &total, 5000));
  ck_assert(memcmp(srv.buf, stream, total) == 0);
  free(stream);
}
END_TEST

/* A TCP peer that never sends its upgrade request. */
START_TEST(pair_handshake_timeout) {
  hs_ms = 300;
  evutil_socket_t fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  sin.sin_port = htons(pport);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  ck_assert(th_run_cond(&penv, srv_closed, NULL, 5000));
  ck_assert_int_eq(srv.err, KR_ETIMEDOUT);
  ck_assert(!srv.open);
  /* The server closes the socket. */
  char c;
  ck_assert_int_le(recv(fd, &c, 1, 0), 0);
  close(fd);
  hs_ms = 2000;
}
END_TEST

/* A hand-written WebSocket client: upgrade, then frames of our choosing
 * (client frames are masked; a zero mask keeps the payload as is). */
static evutil_socket_t raw_upgrade(void) {
  evutil_socket_t fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  sin.sin_port = htons(pport);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  static const char req[] =
      "GET /whatever HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: kasroute.v1\r\n"
      "\r\n";
  ck_assert_int_eq(send(fd, req, sizeof(req) - 1, 0), (ssize_t)sizeof(req) - 1);
  ck_assert(th_run_until(&penv, &srv.open, 5000));
  char buf[1024];
  size_t got = 0;
  while (got < sizeof(buf) - 1) {
    ssize_t n = recv(fd, buf + got, 1, 0);
    ck_assert_int_eq(n, 1);
    got++;
    buf[got] = 0;
    if (got >= 4 && strcmp(buf + got - 4, "\r\n\r\n") == 0)
      break;
  }
  ck_assert_msg(strncmp(buf, "HTTP/1.1 101", 12) == 0, "%s", buf);
  return fd;
}

static void raw_send(evutil_socket_t fd, uint8_t opcode_fin, const uint8_t *p,
                     size_t n) {
  uint8_t h[8] = {opcode_fin, (uint8_t)(0x80 | n), 0, 0, 0, 0};
  ck_assert_uint_lt(n, 126);
  ck_assert_int_eq(send(fd, h, 6, 0), 6);
  if (n)
    ck_assert_int_eq(send(fd, p, n, 0), (ssize_t)n);
}

START_TEST(raw_message_ends_inside_frame) {
  evutil_socket_t fd = raw_upgrade();
  /* One whole frame (payload 2), then a message that stops inside the
   * second frame's header. */
  uint8_t m[32] = {0, 0, 2, 0, 0, 0, 0, 0, 1, 'h', 'i', 0, 0, 9, 0, 0};
  raw_send(fd, 0x82, m, 11);
  raw_send(fd, 0x82, m + 11, 5);
  ck_assert(th_run_cond(&penv, srv_closed, NULL, 5000));
  ck_assert_int_eq(srv.err, KR_EPROTO);
  ck_assert_msg(strstr(srv.why, "inside a frame") != NULL, "%s", srv.why);
  ck_assert_uint_eq(srv.got, 11); /* the whole frame was passed on */
  close(fd);
}
END_TEST

START_TEST(raw_fragments_reassembled) {
  evutil_socket_t fd = raw_upgrade();
  /* One message in three WebSocket fragments cut inside the frame: fine,
   * only the message end must fall on a frame boundary. */
  uint8_t m[16] = {0, 0, 4, 0, 0, 0, 0, 0, 1, 'a', 'b', 'c', 'd'};
  raw_send(fd, 0x02, m, 4);      /* binary, not final */
  raw_send(fd, 0x00, m + 4, 7);  /* continuation */
  raw_send(fd, 0x80, m + 11, 2); /* final continuation */
  size_t want = 13;
  ck_assert(th_run_cond(&penv, srv_got_all, &want, 5000));
  ck_assert(!srv.closed);
  /* A text message is refused. */
  raw_send(fd, 0x81, m, 13);
  ck_assert(th_run_cond(&penv, srv_closed, NULL, 5000));
  ck_assert_int_eq(srv.err, KR_EPROTO);
  close(fd);
}
END_TEST

/* =============================================================== tunnel */

static th_env env;
static kr_kas *kas;
static char agent_url[96], api_url[96];
static const char *scheme = "ws";
static const char *kas_host = "127.0.0.1";

static int agent_registered(void *arg) {
  return kr_kas_agent_count(kas) > 0;
}
static int echo_done(void *arg) {
  return ((th_echo *)arg)->done;
}

static void start_kas(void) {
  char a[96], b[96];
  snprintf(a, sizeof(a), "%s://%s:0", scheme, kas_host);
  snprintf(b, sizeof(b), "%s://%s:0/api", scheme, kas_host);
  kas = th_kas(&env, a, b, 2000);
  snprintf(agent_url, sizeof(agent_url), "%s://%s:%d/agent", scheme, kas_host,
           kr_kas_agent_port(kas, 0));
  snprintf(api_url, sizeof(api_url), "%s://%s:%d", scheme, kas_host,
           kr_kas_api_port(kas, 0));
}

static void ws_setup(void) {
  th_setup(&env);
  scheme = "ws";
  start_kas();
}

static void tunnel_teardown(void) {
  kr_kas_free(kas);
  th_cleanup(&env);
}

static void echo_case(const char *ca, int verify, size_t total) {
  kr_agent *a =
      th_agent(&env, agent_url, NULL, th_echo_server(&env), ca, verify);
  ck_assert_msg(th_run_cond(&env, agent_registered, NULL, 10000),
                "the agent did not register over %s", scheme);
  char *tok = th_api_token(&env);
  th_echo ec = {.total = total, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, api_url, ca, verify, tok);
  ck_assert_ptr_nonnull(c);
  ck_assert_msg(th_run_cond(&env, echo_done, &ec, 60000), "echo did not end");
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR && !ec.state_err,
                "closed with %s / %d: %s", kr_code_name(ec.code), ec.state_err,
                ec.reason);
  ck_assert_uint_eq(ec.received, ec.total);
  ck_assert(!ec.mismatch);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_STREAMS_ROUTED), 1);
  kr_client_free(c);
  kr_agent_free(a);
  free(tok);
}

START_TEST(ws_echo_4mib) {
  echo_case(NULL, 1, 4u << 20);
}
END_TEST

START_TEST(ws_bad_agent_token) {
  kr_agent *a =
      th_agent(&env, agent_url, "wrong-token", th_echo_server(&env), NULL, 1);
  th_run_cond(&env, never, NULL, 500);
  ck_assert_uint_ge(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 1);
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  kr_agent_free(a);
}
END_TEST

/* kas goes away and comes back on the same port: the agent's WebSocket
 * ends with an error, it redials on the same context and registers
 * again; a client then reaches it. */
START_TEST(ws_agent_reconnects) {
  kr_agent *a = th_agent(&env, agent_url, NULL, th_echo_server(&env), NULL, 1);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 10000));
  int port = kr_kas_agent_port(kas, 0);
  kr_kas_free(kas);
  kas = NULL;
  th_run_cond(&env, never, NULL, 100);
  char url[96];
  snprintf(url, sizeof(url), "ws://127.0.0.1:%d", port);
  kas = th_kas(&env, url, "ws://127.0.0.1:0", 2000);
  snprintf(api_url, sizeof(api_url), "ws://127.0.0.1:%d",
           kr_kas_api_port(kas, 0));
  ck_assert_msg(th_run_cond(&env, agent_registered, NULL, 10000),
                "the agent did not come back");
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 100000, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, api_url, NULL, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 20000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR && !ec.state_err, "%s", ec.reason);
  ck_assert_uint_eq(ec.received, ec.total);
  kr_client_free(c);
  kr_agent_free(a);
  free(tok);
}
END_TEST

/* Draining a kas with WebSocket agents sends them GOAWAY and completes:
 * the listeners' WebSocket context must outlive the listening sockets. */
static int ws_drained;
static void on_ws_drained(kr_kas *k, void *ud) { ws_drained = 1; }
static int agent_gone(void *arg) {
  return kr_kas_stat_get(kas, KR_KAS_STAT_AGENT_CONNECTIONS) == 0;
}

START_TEST(ws_drain_completes) {
  kr_agent *a = th_agent(&env, agent_url, NULL, th_echo_server(&env), NULL, 1);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 10000));
  ws_drained = 0;
  kr_kas_drain(kas, 3000000, on_ws_drained, NULL);
  /* Well before the 3 s grace: no stream is open, GOAWAY ends it. */
  ck_assert_msg(th_run_until(&env, &ws_drained, 2500),
                "drain did not complete (agent tunnels left: %llu)",
                (unsigned long long)kr_kas_stat_get(
                    kas, KR_KAS_STAT_AGENT_CONNECTIONS));
  ck_assert(agent_gone(NULL));
  kr_agent_free(a);
}
END_TEST

/* An agent may present its token only as "Authorization: Bearer" on the
 * upgrade, with no ":token" in its HELLO: kas takes it from there. */
static void bare_closed(kr__conn *c, int err, const char *why, void *ud) {}
static const kr__conn_cbs bare_cbs = {NULL, NULL, NULL, bare_closed, NULL};

static void bearer_case(const char *token, int expect_registered) {
  kr__ws_ctx *x;
  char err[256];
  ck_assert_int_eq(
      kr__ws_ctx_new_client(env.base, 0, NULL, 1, &x, err, sizeof(err)), 0);
  kr__url u;
  ck_assert_int_eq(kr__url_parse(agent_url, &u, err, sizeof(err)), 0);
  kr__transport *t;
  ck_assert_int_eq(kr__ws_connect(x, &u, token, strlen(token), 2000,
                                  &kr__transport_nop_cbs, NULL, &t), 0);
  kr_mux_options *mo;
  kr_mux_options_new(&mo);
  kr_md name = {(const uint8_t *)KR_MD_NAME, strlen(KR_MD_NAME),
                (const uint8_t *)"bearer-only", 11};
  kr_mux_options_add_hello(mo, &name);
  kr__conn *c;
  ck_assert_int_eq(kr__conn_new(env.base, t, 0, mo, &bare_cbs, NULL, &c), 0);
  kr_mux_options_free(mo);
  if (expect_registered) {
    ck_assert_msg(th_run_cond(&env, agent_registered, NULL, 10000),
                  "a bearer-only agent did not register");
  } else {
    th_run_cond(&env, never, NULL, 500);
    ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
    ck_assert_uint_ge(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 1);
  }
  kr__conn_free(c);
  kr__ws_ctx_free(x);
}

START_TEST(ws_bearer_only_agent) {
  bearer_case(TH_AGENT_TOKEN, 1);
}
END_TEST

START_TEST(ws_bearer_wrong_token) {
  bearer_case("not-the-token", 0);
}
END_TEST

START_TEST(ws_refused_connection) {
  /* Nothing listens there: the client hears an error, not a hang. */
  char url[64];
  snprintf(url, sizeof(url), "ws://127.0.0.1:%d", th_echo_server(&env));
  evconnlistener_free(env.echo);
  env.echo = NULL;
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, url, NULL, 1, tok);
  if (c) {
    ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
    ck_assert_int_lt(ec.state_err, 0);
    kr_client_free(c);
  }
  free(tok);
}
END_TEST

/* ------------------------------------------------- one-way throughput */

typedef struct flow {
  size_t total, sent, received;
  int ready, done;
  uint32_t code;
  kr_stream *s;
  struct bufferevent *up; /* the upstream end inside the test */
  size_t up_bytes;
  int upload; /* 1: client -> upstream; 0: upstream -> client */
} flow;

static flow fl;
static uint8_t chunk[256 << 10];

static void up_read(struct bufferevent *bev, void *arg) {
  struct evbuffer *in = bufferevent_get_input(bev);
  fl.up_bytes += evbuffer_get_length(in);
  evbuffer_drain(in, evbuffer_get_length(in));
}

static void up_fill(struct bufferevent *bev, void *arg) {
  /* Source: keep about 1 MiB queued until the total went out. */
  struct evbuffer *out = bufferevent_get_output(bev);
  while (fl.up_bytes < fl.total && evbuffer_get_length(out) < (1u << 20)) {
    size_t n = fl.total - fl.up_bytes;
    if (n > sizeof(chunk))
      n = sizeof(chunk);
    evbuffer_add(out, chunk, n);
    fl.up_bytes += n;
  }
  if (fl.up_bytes >= fl.total && evbuffer_get_length(out) == 0) {
    bufferevent_free(bev);
    fl.up = NULL;
  }
}

static void up_event(struct bufferevent *bev, short what, void *arg) {
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    bufferevent_free(bev);
    fl.up = NULL;
  }
}

static void up_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int len, void *arg) {
  struct bufferevent *bev =
      bufferevent_socket_new(env.base, fd, BEV_OPT_CLOSE_ON_FREE);
  fl.up = bev;
  bufferevent_set_max_single_read(bev, 256 << 10);
  bufferevent_set_max_single_write(bev, 256 << 10);
  if (fl.upload) {
    bufferevent_setcb(bev, up_read, NULL, up_event, NULL);
    bufferevent_enable(bev, EV_READ);
  } else {
    bufferevent_setcb(bev, NULL, up_fill, up_event, NULL);
    bufferevent_enable(bev, EV_WRITE);
    up_fill(bev, NULL);
  }
}

static void fl_pump(void) {
  while (fl.s && fl.upload && fl.sent < fl.total) {
    size_t n = fl.total - fl.sent;
    if (n > sizeof(chunk))
      n = sizeof(chunk);
    int64_t w = kr_stream_write(fl.s, chunk, n);
    if (w <= 0)
      return;
    fl.sent += (size_t)w;
  }
  if (fl.s && fl.sent == fl.total) {
    kr_stream_close_write(fl.s);
    fl.sent++;
  }
}

static void fl_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  fl.received += n;
  kr_stream_consume(s, n);
}
static void fl_writable(kr_stream *s, void *ud) {
  fl_pump();
}
static void fl_close(kr_stream *s, uint32_t code, const uint8_t *r, size_t rl,
                     void *ud) {
  fl.s = NULL;
  fl.code = code;
  fl.done = 1;
}
static void fl_state(kr_client *c, int err, const char *why, void *ud) {
  if (err) {
    fl.done = 1;
    return;
  }
  fl.ready = 1;
  ck_assert_int_eq(kr_client_open(c, TH_AGENT_ID, "echo", NULL, 0,
                                  fl.upload ? 0 : 1, NULL, &fl.s),
                   0);
  fl_pump();
}

static int fl_finished(void *arg) {
  return fl.upload ? fl.up_bytes >= fl.total && !fl.up : fl.done;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU time of this process: kas, agent, client and upstream all run on
 * this one thread, so bytes per CPU second is the rate one idle core
 * reaches (wall time also counts other load on the machine). */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void one_way(int upload, size_t total) {
  memset(&fl, 0, sizeof(fl));
  fl.total = total;
  fl.upload = upload;
  memset(chunk, 0x5a, sizeof(chunk));
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  struct evconnlistener *l = evconnlistener_new_bind(
      env.base, up_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
      (struct sockaddr *)&sin, sizeof(sin));
  socklen_t sl = sizeof(sin);
  getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &sl);
  /* wss: the self-signed certificate, verification off. */
  int verify = strcmp(scheme, "wss") != 0;
  kr_agent *a =
      th_agent(&env, agent_url, NULL, ntohs(sin.sin_port), NULL, verify);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 10000));
  char *tok = th_api_token(&env);
  kr_client_options *o;
  kr_mux_callbacks *cbs;
  kr_client *c = NULL;
  kr_client_options_new(&o);
  kr_mux_callbacks_new(&cbs);
  kr_client_options_set_url(o, api_url);
  kr_client_options_set_token(o, tok, strlen(tok));
  kr_client_options_set_tls_verify(o, verify);
  kr_mux_callbacks_set_on_data(cbs, fl_data);
  kr_mux_callbacks_set_on_writable(cbs, fl_writable);
  kr_mux_callbacks_set_on_close(cbs, fl_close);
  ck_assert_int_eq(kr_client_new(&c, env.base, o, cbs, fl_state, NULL, NULL, 0),
                   0);
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  ck_assert(th_run_until(&env, &fl.ready, 10000));
  double t0 = now_s(), c0 = cpu_s();
  ck_assert_msg(th_run_cond(&env, fl_finished, NULL, 280000),
                "transfer stalled: sent %zu received %zu upstream %zu", fl.sent,
                fl.received, fl.up_bytes);
  double dt = now_s() - t0, dc = cpu_s() - c0;
  if (upload) {
    ck_assert_uint_eq(fl.up_bytes, total);
  } else {
    ck_assert_uint_eq(fl.received, total);
    ck_assert_int_eq(fl.code, KR_CODE_NO_ERROR);
  }
  fprintf(stderr,
          "THROUGHPUT %s %s (%s): %zu MiB in %.3f s wall = %.1f MB/s; "
          "%.3f s CPU = %.1f MB/s per CPU second\n",
          scheme, upload ? "upload" : "download",
          upload ? "client -> kas -> agent -> upstream"
                 : "upstream -> agent -> kas -> client",
          total >> 20, dt, (double)total / dt / 1e6, dc,
          (double)total / dc / 1e6);
  kr_client_free(c);
  kr_agent_free(a);
  if (fl.up)
    bufferevent_free(fl.up);
  evconnlistener_free(l);
  free(tok);
}

static size_t bench_bytes(void) {
  const char *e = getenv("KR_WS_BENCH_MIB");
  size_t mib = e ? (size_t)strtoul(e, NULL, 10) : 16;
  return (mib ? mib : 16) << 20;
}

START_TEST(ws_throughput_upload) {
  one_way(1, bench_bytes());
}
END_TEST
START_TEST(ws_throughput_download) {
  one_way(0, bench_bytes());
}
END_TEST

/* ================================================================== wss */

static char other_cert[600], san_cert[600], san_key[600];

static void wss_setup(void) {
  th_setup(&env);
  scheme = "wss";
  kas_host = "127.0.0.1";
  /* The certificates: an unrelated one, one with subjectAltName
   * IP:127.0.0.1, and the server's own (CN=localhost, no SAN). */
  ck_assert_int_eq(th_make_cert(&env, "localhost", "other-"), 0);
  snprintf(other_cert, sizeof(other_cert), "%s", env.cert);
  snprintf(san_cert, sizeof(san_cert), "%s/san-cert.pem", env.dir);
  snprintf(san_key, sizeof(san_key), "%s/san-key.pem", env.dir);
  char cmd[2048];
  snprintf(cmd, sizeof(cmd),
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
           "-nodes -subj /CN=kas -addext subjectAltName=IP:127.0.0.1 -days 1 "
           "-keyout '%s' -out '%s' 2>/dev/null",
           san_key, san_cert);
  if (system(cmd) != 0)
    san_cert[0] = 0;
  ck_assert_int_eq(th_make_cert(&env, "localhost", ""), 0);
  start_kas();
}

static void wss_teardown(void) {
  tunnel_teardown();
  scheme = "ws";
}

/* Self-signed, verification off: the brief case. */
START_TEST(wss_echo_4mib_verify_off) {
  echo_case(NULL, 0, 4u << 20);
}
END_TEST

START_TEST(wss_echo_verify_on) {
  if (!san_cert[0]) {
    fprintf(stderr, "SKIP wss_echo_verify_on: openssl cannot -addext\n");
    return;
  }
  /* A kas whose certificate names 127.0.0.1; the CA file is that
   * certificate itself. */
  kr_kas_free(kas);
  snprintf(env.cert, sizeof(env.cert), "%s", san_cert);
  snprintf(env.key, sizeof(env.key), "%s", san_key);
  start_kas();
  echo_case(san_cert, 1, 1u << 20);
}
END_TEST

static void refused_case(const char *ca) {
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, api_url, ca, 1, tok);
  ck_assert_ptr_nonnull(c);
  ck_assert(th_run_cond(&env, echo_done, &ec, 10000));
  ck_assert_msg(ec.state_err == KR_ETLS, "state %d (%s)", ec.state_err,
                ec.reason);
  ck_assert_msg(strstr(ec.reason, "certificate") != NULL, "%s", ec.reason);
  fprintf(stderr, "refused as expected: %s\n", ec.reason);
  kr_client_free(c);
  free(tok);
}

/* The certificate names localhost; 127.0.0.1 must not match. */
START_TEST(wss_hostname_mismatch_refused) {
  refused_case(env.cert);
}
END_TEST

START_TEST(wss_wrong_ca_refused) {
  refused_case(other_cert);
}
END_TEST

START_TEST(wss_agent_wrong_ca_never_registers) {
  kr_agent *a =
      th_agent(&env, agent_url, NULL, th_echo_server(&env), other_cert, 1);
  th_run_cond(&env, never, NULL, 1000);
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  ck_assert_uint_eq(kr_agent_connected(a), 0);
  kr_agent_free(a);
}
END_TEST

START_TEST(wss_throughput_upload) {
  one_way(1, bench_bytes());
}
END_TEST

START_TEST(wss_throughput_download) {
  one_way(0, bench_bytes());
}
END_TEST

int main(void) {
  have_openssl = system("command -v openssl >/dev/null 2>&1") == 0;
  Suite *s = suite_create("ws");

  TCase *tc = tcase_create("framing");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, txq_split_everywhere);
  tcase_add_test(tc, txq_room_and_big_frames);
  tcase_add_test(tc, rx_messages_cut_everywhere);
  suite_add_tcase(s, tc);

  tc = tcase_create("pair");
  tcase_add_checked_fixture(tc, pair_setup, pair_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, pair_bearer_and_close);
  tcase_add_test(tc, pair_no_bearer);
  tcase_add_test(tc, pair_backpressure);
  tcase_add_test(tc, pair_pause_midstream);
  tcase_add_test(tc, pair_handshake_timeout);
  tcase_add_test(tc, raw_message_ends_inside_frame);
  tcase_add_test(tc, raw_fragments_reassembled);
  suite_add_tcase(s, tc);

  tc = tcase_create("tunnel");
  tcase_add_checked_fixture(tc, ws_setup, tunnel_teardown);
  tcase_set_timeout(tc, 290);
  tcase_add_test(tc, ws_echo_4mib);
  tcase_add_test(tc, ws_bad_agent_token);
  tcase_add_test(tc, ws_agent_reconnects);
  tcase_add_test(tc, ws_refused_connection);
  tcase_add_test(tc, ws_bearer_only_agent);
  tcase_add_test(tc, ws_drain_completes);
  tcase_add_test(tc, ws_bearer_wrong_token);
  tcase_add_test(tc, ws_throughput_upload);
  tcase_add_test(tc, ws_throughput_download);
  suite_add_tcase(s, tc);

  if (have_openssl) {
    tc = tcase_create("wss");
    tcase_add_checked_fixture(tc, wss_setup, wss_teardown);
    tcase_set_timeout(tc, 290);
    tcase_add_test(tc, wss_echo_4mib_verify_off);
    tcase_add_test(tc, wss_echo_verify_on);
    tcase_add_test(tc, wss_hostname_mismatch_refused);
    tcase_add_test(tc, wss_wrong_ca_refused);
    tcase_add_test(tc, wss_agent_wrong_ca_never_registers);
    tcase_add_test(tc, wss_throughput_upload);
    tcase_add_test(tc, wss_throughput_download);
    suite_add_tcase(s, tc);
  }

  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  if (failed)
    return 1;
  if (!have_openssl) {
    fprintf(stderr, "SKIP: wss:// cases not run: the openssl program is "
                    "needed to make test certificates (apt-get install "
                    "openssl)\n");
    return 77;
  }
  return 0;
}
