/* Writes the seed corpora of the fuzz targets with the library's own codec:
 *
 *   build-fuzz/fuzz/make_corpus fuzz/corpus
 *
 * creates fuzz/corpus/fuzz_frame/ (single frames and payloads) and
 * fuzz/corpus/fuzz_mux_recv/ (a configuration byte, a seed byte, then what a
 * dialer sends after the HELLO prefix; see fuzz_common.h). Valid sequences
 * of every frame type and a few malformed ones, each well under 4 KiB. The
 * output is deterministic: rerunning it rewrites the same bytes.
 * fuzz/corpus/fuzz_http_request/ and fuzz_http_response/ get HTTP/1.1
 * message streams behind the configuration and seed bytes of fuzz_http.h.
 * fuzz/corpus/fuzz_http_handler_request/ gets OPEN metadata blocks: HTTP
 * requests as kas and other openers send them to an HTTP handler.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"
#define FZ_HTTP_NO_DRIVER
#include "fuzz_http.h"

typedef struct seed {
  uint8_t b[4096];
  size_t n;
} seed;

static const char *g_dir;
static int g_failed;

static void seed_write(const char *target, const char *name, const seed *s) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", g_dir, target);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    perror(path);
    g_failed = 1;
    return;
  }
  snprintf(path, sizeof path, "%s/%s/%s", g_dir, target, name);
  FILE *fp = fopen(path, "wb");
  if (fp == NULL || fwrite(s->b, 1, s->n, fp) != s->n || fclose(fp) != 0) {
    perror(path);
    g_failed = 1;
  }
}

static void put(seed *s, const void *p, size_t n) {
  if (s->n + n > sizeof s->b) {
    fprintf(stderr, "make_corpus: seed over 4 KiB\n");
    exit(1);
  }
  memcpy(s->b + s->n, p, n);
  s->n += n;
}

static void frame(seed *s, uint8_t type, uint8_t flags, uint32_t id,
                  const void *payload, size_t len) {
  uint8_t buf[4096];
  if (len + KR_FRAME_HEADER_SIZE > sizeof buf)
    exit(1);
  put(s, buf, fz_frame(buf, type, flags, id, payload, len));
}

static void md_frame(seed *s, uint8_t type, uint8_t flags, uint32_t id,
                     const kr_md *md, size_t n) {
  uint8_t pl[2048];
  size_t len = kr__md_size(md, n);
  if (len == 0 || len > sizeof pl)
    exit(1);
  kr__md_encode(pl, md, n);
  frame(s, type, flags, id, pl, len);
}

static void open_frame(seed *s, uint32_t id, int fin) {
  static const kr_md md[] = {FZ_MD(":agent", "42"), FZ_MD(":service", "http"),
                             FZ_MD(":method", "GET"), FZ_MD(":path", "/"),
                             FZ_MD("accept", "*/*")};
  md_frame(s, KR__FRAME_OPEN, fin ? KR__FLAG_FIN : 0, id, md, 5);
}

static void reply_frame(seed *s, uint32_t id, int fin) {
  static const kr_md md[] = {FZ_MD(":status", "200"),
                             FZ_MD("content-type", "text/plain")};
  md_frame(s, KR__FRAME_REPLY, fin ? KR__FLAG_FIN : 0, id, md, 2);
}

static void data_frame(seed *s, uint32_t id, int fin, size_t len) {
  uint8_t pl[4096];
  if (len > sizeof pl)
    exit(1);
  for (size_t i = 0; i < len; i++)
    pl[i] = (uint8_t)('a' + i % 26);
  frame(s, KR__FRAME_DATA, fin ? KR__FLAG_FIN : 0, id, pl, len);
}

static void ctrl(seed *s, size_t n, const uint8_t *buf) {
  put(s, buf, n);
}

static void reset_frame(seed *s, uint32_t id, int ack, uint32_t code,
                        const char *reason) {
  uint8_t buf[KR__CTRL_FRAME_MAX];
  ctrl(s,
       kr__frame_reset(buf, id, ack ? KR__FLAG_ACK : 0, code, reason,
                       reason ? strlen(reason) : 0),
       buf);
}

static void window_frame(seed *s, uint32_t id, uint32_t inc) {
  uint8_t buf[KR__CTRL_FRAME_MAX];
  ctrl(s, kr__frame_window(buf, id, inc), buf);
}

static void ping_frame(seed *s, int ack) {
  static const uint8_t opaque[8] = {0, 0, 0, 0, 0, 0x0f, 0x42, 0x40};
  uint8_t buf[KR__CTRL_FRAME_MAX];
  ctrl(s, kr__frame_ping(buf, ack ? KR__FLAG_ACK : 0, opaque), buf);
}

static void goaway_frame(seed *s, uint32_t last, uint32_t code,
                         const char *reason) {
  uint8_t buf[KR__CTRL_FRAME_MAX];
  ctrl(s,
       kr__frame_goaway(buf, last, code, reason, reason ? strlen(reason) : 0),
       buf);
}

static void hello(seed *s, uint8_t role, uint8_t min_v, uint8_t max_v,
                  unsigned prefix_settings) {
  static const kr_md md[] = {FZ_MD(":token", "secret-token"),
                             FZ_MD(":name", "agent-replica-1")};
  fz_prefix_settings ps = fz_prefix_settings_of(prefix_settings);
  uint8_t buf[1024];
  size_t n = fz_hello_frame(buf, sizeof buf, role, min_v, max_v, &ps, md, 2);
  if (n == 0)
    exit(1);
  put(s, buf, n);
}

static seed *mux_seed(seed *s, uint8_t cfg, uint8_t gen_seed) {
  s->n = 0;
  put(s, &cfg, 1);
  put(s, &gen_seed, 1);
  return s;
}

static void frame_corpus(void) {
  const char *t = "fuzz_frame";
  seed s;

  s.n = 0;
  hello(&s, KR_ROLE_DIALER, 1, 1, FZ_PREFIX_SMALL);
  seed_write(t, "hello_dialer", &s);
  s.n = 0;
  hello(&s, KR_ROLE_ACCEPTOR, 1, 3, FZ_PREFIX_META);
  seed_write(t, "hello_acceptor_v1_3", &s);
  s.n = 0;
  open_frame(&s, 1, 0);
  seed_write(t, "open", &s);
  s.n = 0;
  reply_frame(&s, 2, 1);
  seed_write(t, "reply_fin", &s);
  s.n = 0;
  data_frame(&s, 3, 1, 100);
  seed_write(t, "data_fin", &s);
  s.n = 0;
  reset_frame(&s, 5, 1, KR_CODE_CANCEL, "client went away");
  seed_write(t, "reset_ack", &s);
  s.n = 0;
  window_frame(&s, 0, 1u << 20);
  seed_write(t, "window", &s);
  s.n = 0;
  ping_frame(&s, 1);
  seed_write(t, "ping_ack", &s);
  s.n = 0;
  goaway_frame(&s, 7, KR_CODE_SHUTDOWN, "restarting");
  seed_write(t, "goaway", &s);

  /* A bare metadata block with an empty value and binary bytes. */
  static const kr_md md[] = {FZ_MD("a", ""), FZ_MD("bin", "\0\xff\x01")};
  s.n = kr__md_size(md, 2);
  kr__md_encode(s.b, md, 2);
  seed_write(t, "md_block", &s);

  /* Malformed: trailing byte after a metadata block. */
  s.b[s.n++] = 0;
  seed_write(t, "bad_md_trailing", &s);
  /* Malformed: unknown type, reserved stream-id bit. */
  static const uint8_t bad_hdr[] = {0, 0, 4, 9, 0, 0x80, 0, 0, 1, 1, 2, 3, 4};
  s.n = 0;
  put(&s, bad_hdr, sizeof bad_hdr);
  seed_write(t, "bad_header", &s);
}

static void mux_corpus(void) {
  const char *t = "fuzz_mux_recv";
  const uint8_t chunk1 = 1u << FZ_CFG_CHUNK_SHIFT;
  const uint8_t chunk2 = 2u << FZ_CFG_CHUNK_SHIFT;
  const uint8_t chunk3 = 3u << FZ_CFG_CHUNK_SHIFT;
  seed s;

  /* A request with a body: OPEN, DATA, empty DATA+FIN. */
  mux_seed(&s, FZ_PREFIX_DEFAULT, 1);
  open_frame(&s, 1, 0);
  data_frame(&s, 1, 0, 300);
  data_frame(&s, 1, 1, 0);
  seed_write(t, "open_data_fin", &s);

  /* Byte-by-byte, small dialer limits: two streams, window updates. */
  mux_seed(&s, FZ_PREFIX_SMALL | chunk1, 2);
  open_frame(&s, 1, 0);
  open_frame(&s, 3, 1);
  data_frame(&s, 1, 0, 900);
  window_frame(&s, 0, 5000);
  window_frame(&s, 1, 100);
  window_frame(&s, 3, 7);
  ping_frame(&s, 0);
  data_frame(&s, 1, 1, 50);
  seed_write(t, "small_windows_bytewise", &s);

  /* The acceptor opens stream 2; the dialer replies and sends data. */
  mux_seed(&s, FZ_PREFIX_DEFAULT | FZ_CFG_OPEN | chunk2, 3);
  reply_frame(&s, 2, 0);
  window_frame(&s, 2, 65536);
  data_frame(&s, 2, 0, 1000);
  data_frame(&s, 2, 1, 10);
  seed_write(t, "acceptor_opens_reply", &s);

  /* Resets both ways, crossing resets and a stray ACK. */
  mux_seed(&s, FZ_PREFIX_DEFAULT | FZ_CFG_HARSH | chunk3, 4);
  open_frame(&s, 1, 0);
  open_frame(&s, 3, 0);
  data_frame(&s, 3, 0, 64);
  reset_frame(&s, 1, 0, KR_CODE_CANCEL, "bye");
  reset_frame(&s, 3, 1, KR_CODE_CANCEL, NULL);
  reset_frame(&s, 3, 0, KR_CODE_INTERNAL, "late");
  seed_write(t, "resets", &s);

  /* GOAWAY from the dialer with streams open, then PING traffic. */
  mux_seed(&s, FZ_PREFIX_META | FZ_CFG_OPEN, 5);
  open_frame(&s, 1, 1);
  goaway_frame(&s, 0, KR_CODE_SHUTDOWN, "going away");
  ping_frame(&s, 0);
  ping_frame(&s, 1);
  data_frame(&s, 1, 0, 5); /* after FIN: a protocol error */
  seed_write(t, "goaway_ping", &s);

  /* The whole handshake in the input. */
  mux_seed(&s, FZ_PREFIX_NONE | chunk2, 6);
  hello(&s, KR_ROLE_DIALER, 1, 2, FZ_PREFIX_META);
  open_frame(&s, 1, 0);
  data_frame(&s, 1, 1, 200);
  seed_write(t, "handshake_in_input", &s);

  /* Bad handshakes: same role; no common version. */
  mux_seed(&s, FZ_PREFIX_NONE, 7);
  hello(&s, KR_ROLE_ACCEPTOR, 1, 1, FZ_PREFIX_DEFAULT);
  seed_write(t, "bad_hello_role", &s);
  mux_seed(&s, FZ_PREFIX_NONE | chunk1, 8);
  hello(&s, KR_ROLE_DIALER, 2, 3, FZ_PREFIX_DEFAULT);
  seed_write(t, "bad_hello_version", &s);

  /* DATA over the acceptor's tiny stream window (1000): FLOW_CONTROL. */
  mux_seed(&s, FZ_PREFIX_DEFAULT | FZ_CFG_TINY, 9);
  open_frame(&s, 1, 0);
  data_frame(&s, 1, 0, 800);
  data_frame(&s, 1, 0, 800);
  seed_write(t, "flow_control_violation", &s);

  /* Nine streams over the limit of eight: STREAM_LIMIT. */
  mux_seed(&s, FZ_PREFIX_SMALL | chunk3, 10);
  for (uint32_t id = 1; id <= 17; id += 2)
    open_frame(&s, id, 0);
  seed_write(t, "stream_limit", &s);

  /* Malformed frames: WINDOW with a flag, then an unknown type. */
  mux_seed(&s, FZ_PREFIX_DEFAULT, 11);
  static const uint8_t bad[] = {
      0, 0, 4, KR__FRAME_WINDOW, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0x0a, 0, 0,
      0, 0, 0};
  put(&s, bad, sizeof bad);
  seed_write(t, "bad_flags_unknown_type", &s);

  /* A busy mix: many short streams, lazy draining, tiny windows. */
  mux_seed(&s, FZ_PREFIX_DEFAULT | FZ_CFG_TINY | FZ_CFG_LAZY | chunk2, 12);
  for (uint32_t id = 1; id <= 13; id += 2) {
    open_frame(&s, id, id == 9);
    if (id != 9)
      data_frame(&s, id, 0, 100 + id * 10);
    if (id > 5 && id - 4 != 9) {
      window_frame(&s, id - 4, 2000);
      data_frame(&s, id - 4, 1, 0);
    }
  }
  window_frame(&s, 0, 100000);
  seed_write(t, "busy_mix", &s);

  /* The same traffic with an allocator that starts failing (seed 0xf0+). */
  s.b[1] = 0xf4;
  seed_write(t, "busy_mix_nomem", &s);
}

/* HTTP seeds: configuration byte, seed byte, then the message text. */
static void http_seed(const char *target, const char *name, uint8_t cfg,
                      uint8_t rnd, const char *text) {
  seed s;
  s.n = 0;
  put(&s, &cfg, 1);
  put(&s, &rnd, 1);
  put(&s, text, strlen(text));
  seed_write(target, name, &s);
}

static void http_corpus(void) {
  const char *t = "fuzz_http_request";
  const uint8_t p1 = 0u << FZ_HTTP_PIECE_SHIFT; /* one-byte pieces */
  const uint8_t p4 = 4u << FZ_HTTP_PIECE_SHIFT;
  const uint8_t p6 = 6u << FZ_HTTP_PIECE_SHIFT;
  http_seed(t, "get", p4, 1,
            "GET /api/v1/agents/1/services/web/x?y=1 HTTP/1.1\r\n"
            "Host: kas.example\r\nAuthorization: Bearer abc\r\n"
            "Accept: */*\r\n\r\n");
  http_seed(t, "post_cl_pause", p1 | FZ_HTTP_PAUSE, 2,
            "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n"
            "Content-Type: text/plain\r\n\r\nhello world");
  http_seed(t, "chunked_trailers", p4 | FZ_HTTP_PAUSE, 3,
            "PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            "\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n");
  http_seed(t, "pipelined", p6 | FZ_HTTP_RESUME_CB, 4,
            "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            "HEAD /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  http_seed(t, "expect_continue", p4, 5,
            "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
            "Content-Length: 2\r\n\r\nok");
  http_seed(t, "http10", p4, 6,
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            "GET / HTTP/1.0\r\n\r\n");
  http_seed(t, "upgrade_ws", p4, 7,
            "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade"
            "\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n\x81\x05hello");
  http_seed(t, "upgrade_spdy", p6, 8,
            "POST /k8s-proxy/api/v1/namespaces/d/pods/p/exec?command=sh "
            "HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
            "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: "
            "v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\nRAW");
  http_seed(t, "small_limits", p4 | FZ_HTTP_SMALL, 9,
            "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n"
            "D: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\n\r\n");
  http_seed(t, "refuse_second", p4 | FZ_HTTP_REFUSE, 10,
            "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
  http_seed(t, "bad_cl_te", p4, 11,
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  http_seed(t, "bad_bare_lf", p4, 12, "GET / HTTP/1.1\nHost: h\n\n");
  http_seed(t, "bad_chunk_crlf", p4, 13,
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            "\r\n3\r\nabcXY0\r\n\r\n");
  http_seed(t, "bad_fold", p4, 14,
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n");

  t = "fuzz_http_response";
  http_seed(t, "cl", p4, 1,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            "Content-Length: 7\r\n\r\n{\"a\":1}");
  http_seed(t, "chunked_pause", p1 | FZ_HTTP_PAUSE, 2,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\nA;x=1\r\n0123456789\r\n0\r\n\r\n");
  http_seed(t, "close_delimited", p4, 3,
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil eof");
  http_seed(t, "no_body_statuses", p6, 4,
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
            "HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  http_seed(t, "interim", p6 | FZ_HTTP_RESUME_CB, 5,
            "HTTP/1.1 100 Continue\r\n\r\n"
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
  http_seed(t, "head_reply", p4 | FZ_HTTP_HEAD, 6,
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
  http_seed(t, "no_body_cb", p4 | FZ_HTTP_REFUSE, 7,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\n\r\n");
  http_seed(t, "switching", p4, 8,
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            "Upgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\nRAW");
  http_seed(t, "http10_close", p4, 9,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody");
  http_seed(t, "bad_status", p4, 10, "HTTP/1.1 999 Nope\r\n\r\n");
  http_seed(t, "bad_te", p4, 11,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            "0\r\n\r\n");
}

/* Writes md[0..n) as one metadata block (an OPEN payload). */
static void md_seed(const char *target, const char *name, const kr_md *md,
                    size_t n) {
  seed s;
  s.n = kr__md_size(md, n);
  if (s.n == 0 || s.n > sizeof s.b)
    exit(1);
  kr__md_encode(s.b, md, n);
  seed_write(target, name, &s);
}

#define MD_SEED(t, name, ...)                                                  \
  do {                                                                         \
    static const kr_md md_[] = {__VA_ARGS__};                                  \
    md_seed(t, name, md_, sizeof md_ / sizeof md_[0]);                         \
  } while (0)

static void handler_request_corpus(void) {
  const char *t = "fuzz_http_handler_request";
  MD_SEED(t, "get", FZ_MD(":agent", "42"), FZ_MD(":service", "web"),
          FZ_MD(":method", "GET"), FZ_MD(":path", "/api/x?y=1&z=%20"),
          FZ_MD("host", "kas.example"), FZ_MD("User-Agent", "curl/8"),
          FZ_MD("accept", "*/*"), FZ_MD("X-Empty", ""),
          FZ_MD("accept", "text/plain"));
  MD_SEED(t, "head", FZ_MD(":service", "web"), FZ_MD(":method", "HEAD"),
          FZ_MD(":path", "/"), FZ_MD("Content-Length", "10"));
  MD_SEED(t, "identity", FZ_MD(":method", "POST"), FZ_MD(":path", "/submit"),
          FZ_MD(":user", "alice@example"), FZ_MD("content-type", "a/b"),
          FZ_MD(":group", "dev"), FZ_MD(":group", "system:authenticated"),
          FZ_MD(":user", "second-user-ignored"), FZ_MD(":group", "ops"));
  MD_SEED(t, "empty_user", FZ_MD(":method", "GET"), FZ_MD(":path", "/"),
          FZ_MD(":user", ""), FZ_MD(":user", "bob"));
  MD_SEED(t, "upgrade_ws", FZ_MD(":method", "GET"), FZ_MD(":path", "/ws"),
          FZ_MD("Host", "h"), FZ_MD("Connection", "keep-alive, Upgrade"),
          FZ_MD("Upgrade", "websocket"), FZ_MD("Sec-WebSocket-Key", "x=="),
          FZ_MD("Keep-Alive", "timeout=5"), FZ_MD("connection", "x-hop"),
          FZ_MD("x-hop", "dropped"), FZ_MD("Sec-WebSocket-Version", "13"));
  MD_SEED(t, "upgrade_spdy", FZ_MD(":method", "POST"),
          FZ_MD(":path", "/api/v1/namespaces/d/pods/p/exec?command=sh"),
          FZ_MD(":user", "kube-admin"), FZ_MD(":group", "system:masters"),
          FZ_MD("connection", "Upgrade"), FZ_MD("upgrade", "SPDY/3.1"),
          FZ_MD("x-stream-protocol-version", "v4.channel.k8s.io"),
          FZ_MD("upgrade", ""));
  MD_SEED(t, "upgrade_no_connection", FZ_MD(":method", "GET"),
          FZ_MD(":path", "/"), FZ_MD("upgrade", "h2c"),
          FZ_MD("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"));
  MD_SEED(t, "hop_by_hop", FZ_MD(":method", "PUT"), FZ_MD(":path", "/f"),
          FZ_MD("Connection", "close, X-Secret,,"), FZ_MD("X-Secret", "s"),
          FZ_MD("TE", "trailers"), FZ_MD("Transfer-Encoding", "chunked"),
          FZ_MD("Proxy-Connection", "keep-alive"), FZ_MD("Trailer", "x"),
          FZ_MD("x-kept", "1"));
  MD_SEED(t, "bad_no_path", FZ_MD(":method", "GET"), FZ_MD("host", "h"));
  MD_SEED(t, "bad_method", FZ_MD(":method", "GE T"), FZ_MD(":path", "/"));
  MD_SEED(t, "bad_path_relative", FZ_MD(":method", "GET"),
          FZ_MD(":path", "x/y"));
  MD_SEED(t, "bad_path_ctl", FZ_MD(":method", "GET"), FZ_MD(":path", "/a\x7f"));
  MD_SEED(t, "bad_field_name", FZ_MD(":method", "GET"), FZ_MD(":path", "/"),
          FZ_MD("bad name", "v"));
  MD_SEED(t, "bad_field_value", FZ_MD(":method", "GET"), FZ_MD(":path", "/"),
          FZ_MD("x", "a\r\nInjected: 1"));
  MD_SEED(t, "bad_user", FZ_MD(":method", "GET"), FZ_MD(":path", "/"),
          FZ_MD(":user", "eve\nadmin"));
  MD_SEED(t, "bad_group_empty", FZ_MD(":method", "GET"), FZ_MD(":path", "/"),
          FZ_MD(":group", "dev"), FZ_MD(":group", ""));

  /* Over the 256-entry limit: KR_ETOOBIG. */
  kr_md many[300];
  many[0] = (kr_md)FZ_MD(":method", "GET");
  many[1] = (kr_md)FZ_MD(":path", "/");
  for (size_t i = 2; i < sizeof many / sizeof many[0]; i++)
    many[i] = (kr_md)FZ_MD("a", "");
  md_seed(t, "too_many_fields", many, sizeof many / sizeof many[0]);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR (e.g. fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_dir = argv[1];
  if (mkdir(g_dir, 0755) != 0 && errno != EEXIST) {
    perror(g_dir);
    return 1;
  }
  frame_corpus();
  mux_corpus();
  http_corpus();
  handler_request_corpus();
  return g_failed;
}
