/* Unit tests: the incremental HTTP/1.1 parser (lib/http/http_parse.c).
 *
 * Every message is fed whole, split at every byte boundary, and one byte
 * at a time where the split matters: libhttp-parser hands header pieces
 * and body bytes across feed() calls, and the results must not depend on
 * where the reads of a socket happened to end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/kasroute.h>

#include "http/http_parse.h"
#include "pair.h"

/* ---------------------------------------------------- allocation failures */

/* The executable is linked with --wrap=malloc, calloc and realloc
 * (tests/unit/meson.build), so every allocation of the statically linked
 * library passes here. fail_in > 0: the fail_in-th allocation from now
 * returns NULL, once; fail_hits counts those failures. */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);

static long fail_in;
static long fail_hits;

static int alloc_fails(void) {
  if (fail_in > 0 && --fail_in == 0) {
    fail_hits++;
    return 1;
  }
  return 0;
}

void *__wrap_malloc(size_t n) {
  return alloc_fails() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t m) {
  return alloc_fails() ? NULL : __real_calloc(n, m);
}

void *__wrap_realloc(void *p, size_t n) {
  return alloc_fails() ? NULL : __real_realloc(p, n);
}

/* ------------------------------------------------------------- recorder */

#define MAX_MSGS 8

/* What on_head saw, copied (the head is only valid until resume). */
typedef struct seen_head {
  char method[16];
  char target[256];
  int status, major, minor, is_head;
  char fields[1024]; /* "name=value\n" per field */
  size_t n_fields;
  int64_t content_length;
  int chunked, has_body, keep_alive, upgrade, expect_continue;
} seen_head;

typedef struct rec {
  kr__http_parser *p;
  int is_request;
  seen_head heads[MAX_MSGS];
  int n_heads, n_ends;
  char body[MAX_MSGS][4096];
  size_t body_len[MAX_MSGS];
  int body_calls;
  /* Behaviour. */
  int pause_body;     /* on_body returns KR__HTTP_PAUSE */
  int no_body_reply;  /* on_head returns KR__HTTP_NO_BODY */
  int head_error;     /* on_head returns this (negative) */
  int body_error;     /* on_body returns this (negative) */
  int resume_in_end;  /* on_end calls kr__http_parser_resume */
  int in_msg_at_head; /* kr__http_parser_in_message in on_head */
  int need_resume;    /* a pause happened: the driver must resume */
} rec;

static int on_head(const kr__http_head *h, void *ud) {
  rec *r = ud;
  ck_assert_int_lt(r->n_heads, MAX_MSGS);
  seen_head *s = &r->heads[r->n_heads++];
  memset(s, 0, sizeof(*s));
  ck_assert_int_eq(h->is_request, r->is_request);
  if (h->is_request) {
    ck_assert_ptr_nonnull(h->method);
    ck_assert_ptr_nonnull(h->target);
    ck_assert_uint_eq(strlen(h->target), h->target_len);
    snprintf(s->method, sizeof(s->method), "%s", h->method);
    snprintf(s->target, sizeof(s->target), "%s", h->target);
  }
  s->status = h->status;
  s->major = h->http_major;
  s->minor = h->http_minor;
  s->is_head = h->is_head;
  s->n_fields = h->n_fields;
  size_t off = 0;
  for (size_t i = 0; i < h->n_fields; i++) {
    const kr_md *f = &h->fields[i];
    /* NUL-terminated after their lengths. */
    ck_assert_uint_eq(strlen((const char *)f->name), f->name_len);
    ck_assert_uint_eq(strlen((const char *)f->value), f->value_len);
    int n = snprintf(s->fields + off, sizeof(s->fields) - off, "%s=%s\n",
                     (const char *)f->name, (const char *)f->value);
    ck_assert_int_gt(n, 0);
    off += (size_t)n;
    ck_assert_uint_lt(off, sizeof(s->fields));
  }
  s->content_length = h->content_length;
  s->chunked = h->chunked;
  s->has_body = h->has_body;
  s->keep_alive = h->keep_alive;
  s->upgrade = h->upgrade;
  s->expect_continue = h->expect_continue;
  r->in_msg_at_head = kr__http_parser_in_message(r->p);
  if (r->head_error)
    return r->head_error;
  return r->no_body_reply ? KR__HTTP_NO_BODY : 0;
}

static int on_body(const uint8_t *p, size_t n, void *ud) {
  rec *r = ud;
  ck_assert_uint_gt(n, 0);
  ck_assert_int_ge(r->n_heads, 1);
  int m = r->n_heads - 1;
  ck_assert_uint_le(r->body_len[m] + n, sizeof(r->body[m]));
  memcpy(r->body[m] + r->body_len[m], p, n);
  r->body_len[m] += n;
  r->body_calls++;
  if (r->body_error)
    return r->body_error;
  if (r->pause_body) {
    r->need_resume = 1;
    return KR__HTTP_PAUSE;
  }
  return 0;
}

static int on_end(void *ud) {
  rec *r = ud;
  r->n_ends++;
  ck_assert_int_eq(r->n_ends, r->n_heads);
  if (r->resume_in_end)
    kr__http_parser_resume(r->p);
  else
    r->need_resume = 1;
  return 0;
}

static const kr__http_parser_cbs cbs = {on_head, on_body, on_end};

static void rec_init(rec *r, int is_request, const kr__http_limits *lim) {
  memset(r, 0, sizeof(*r));
  r->is_request = is_request;
  ck_assert_int_eq(kr__http_parser_new(&r->p, is_request, lim, &cbs, r), 0);
}

static void rec_free(rec *r) {
  kr__http_parser_free(r->p);
  r->p = NULL;
}

/* Feeds s[0..n) in pieces of at most `piece` bytes (0: whole), starting a
 * new piece at every split point listed (sorted), resuming after every
 * pause like a caller would once its receiver drained. Stops at an error
 * (returned) or when the parser consumes nothing (an upgrade). Writes the
 * total consumed to *used. */
static int64_t drive(rec *r, const char *s, size_t n, size_t piece,
                     size_t *used) {
  size_t off = 0;
  int idle = 0;
  while (off < n) {
    if (r->n_heads > 0 && r->heads[r->n_heads - 1].upgrade)
      break; /* the rest is not HTTP */
    size_t len = n - off;
    if (piece && len > piece)
      len = piece;
    int64_t c = kr__http_parser_feed(r->p, (const uint8_t *)s + off, len);
    if (c < 0) {
      *used = off;
      return c;
    }
    ck_assert_int_le(c, (int64_t)len);
    off += (size_t)c;
    if (r->need_resume) {
      r->need_resume = 0;
      kr__http_parser_resume(r->p);
      idle = 0;
    } else if ((size_t)c < len) {
      break; /* an upgrade: the rest is not HTTP */
    } else if (c == 0 && ++idle > 1) {
      break;
    }
  }
  *used = off;
  return 0;
}

/* Feeds s split once at `split`. */
static int64_t drive_split(rec *r, const char *s, size_t n, size_t split,
                           size_t *used) {
  size_t u1 = 0, u2 = 0;
  int64_t rc = drive(r, s, split, 0, &u1);
  if (rc < 0 || u1 < split) { /* failed, or stopped at an upgrade */
    *used = u1;
    return rc;
  }
  /* Whatever the first part left unconsumed is fed again with the rest. */
  rc = drive(r, s + u1, n - u1, 0, &u2);
  *used = u1 + u2;
  return rc;
}

#define S(lit) lit, sizeof(lit) - 1

/* ------------------------------------------------------------- requests */

START_TEST(req_get_no_body) {
  static const char m[] = "GET /a/b?c=d HTTP/1.1\r\n"
                          "Host: example\r\n"
                          "User-Agent:  test  \t\r\n"
                          "X-Empty:\r\n"
                          "X-Mixed-CASE: Keep Case\r\n"
                          "\r\n";
  rec r;
  rec_init(&r, 1, NULL);
  ck_assert_int_eq(kr__http_parser_in_message(r.p), 0);
  int64_t c = kr__http_parser_feed(r.p, (const uint8_t *)m, sizeof(m) - 1);
  ck_assert_int_eq(c, (int64_t)sizeof(m) - 1);
  ck_assert_int_eq(r.n_heads, 1);
  ck_assert_int_eq(r.n_ends, 1);
  ck_assert_int_eq(r.in_msg_at_head, 1);
  ck_assert_int_eq(kr__http_parser_in_message(r.p), 0);
  seen_head *h = &r.heads[0];
  ck_assert_str_eq(h->method, "GET");
  ck_assert_str_eq(h->target, "/a/b?c=d");
  ck_assert_int_eq(h->major, 1);
  ck_assert_int_eq(h->minor, 1);
  ck_assert_str_eq(h->fields, "host=example\nuser-agent=test\nx-empty=\n"
                              "x-mixed-case=Keep Case\n");
  ck_assert_int_eq(h->content_length, -1);
  ck_assert_int_eq(h->chunked, 0);
  ck_assert_int_eq(h->has_body, 0);
  ck_assert_int_eq(h->keep_alive, 1);
  ck_assert_int_eq(h->upgrade, 0);
  ck_assert_int_eq(h->is_head, 0);
  ck_assert_int_eq(h->expect_continue, 0);
  ck_assert_uint_eq(r.body_len[0], 0);
  ck_assert_str_eq(kr__http_parser_error(r.p), "");
  ck_assert_int_eq(kr__http_parser_eof(r.p), 0);
  rec_free(&r);
}
END_TEST

START_TEST(req_content_length_every_split) {
  static const char m[] = "POST /upload HTTP/1.1\r\n"
                          "Host: h\r\n"
                          "Content-Length: 11\r\n"
                          "Content-Type: text/plain\r\n"
                          "\r\n"
                          "hello world";
  const size_t n = sizeof(m) - 1;
  for (size_t split = 0; split <= n; split++) {
    rec r;
    rec_init(&r, 1, NULL);
    size_t used;
    ck_assert_int_eq(drive_split(&r, m, n, split, &used), 0);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(r.n_heads, 1);
    ck_assert_int_eq(r.n_ends, 1);
    ck_assert_str_eq(r.heads[0].method, "POST");
    ck_assert_str_eq(r.heads[0].target, "/upload");
    ck_assert_str_eq(r.heads[0].fields,
                     "host=h\ncontent-length=11\ncontent-type=text/plain\n");
    ck_assert_int_eq(r.heads[0].content_length, 11);
    ck_assert_int_eq(r.heads[0].has_body, 1);
    ck_assert_uint_eq(r.body_len[0], 11);
    ck_assert(memcmp(r.body[0], "hello world", 11) == 0);
    rec_free(&r);
  }
  /* One byte at a time. */
  rec r;
  rec_init(&r, 1, NULL);
  size_t used;
  ck_assert_int_eq(drive(&r, m, n, 1, &used), 0);
  ck_assert_uint_eq(used, n);
  ck_assert_int_eq(r.n_ends, 1);
  ck_assert_uint_eq(r.body_len[0], 11);
  ck_assert_str_eq(r.heads[0].target, "/upload");
  rec_free(&r);
}
END_TEST

START_TEST(req_chunked_extensions_trailers) {
  static const char m[] = "PUT /x HTTP/1.1\r\n"
                          "Host: h\r\n"
                          "Transfer-Encoding: chunked\r\n"
                          "Trailer: X-Sum\r\n"
                          "\r\n"
                          "5;name=value;flag\r\n"
                          "hello\r\n"
                          "6\r\n"
                          " world\r\n"
                          "A\r\n"
                          "0123456789\r\n"
                          "0;last=1\r\n"
                          "X-Sum: abc\r\n"
                          "X-Other: def\r\n"
                          "\r\n";
  const size_t n = sizeof(m) - 1;
  static const char want[] = "hello world0123456789";
  for (size_t split = 0; split <= n; split++) {
    rec r;
    rec_init(&r, 1, NULL);
    size_t used;
    ck_assert_int_eq(drive_split(&r, m, n, split, &used), 0);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(r.n_ends, 1);
    ck_assert_int_eq(r.heads[0].chunked, 1);
    ck_assert_int_eq(r.heads[0].content_length, -1);
    ck_assert_int_eq(r.heads[0].has_body, 1);
    /* Trailer fields are not head fields. */
    ck_assert_uint_eq(r.heads[0].n_fields, 3);
    ck_assert_uint_eq(r.body_len[0], sizeof(want) - 1);
    ck_assert(memcmp(r.body[0], want, sizeof(want) - 1) == 0);
    rec_free(&r);
  }
}
END_TEST

START_TEST(req_pipelined_pause_resume) {
  static const char m[] = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                          "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                          "\r\nabc"
                          "GET /3 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n";
  const size_t n = sizeof(m) - 1;
  const size_t first = strlen("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n");
  rec r;
  rec_init(&r, 1, NULL);
  const uint8_t *d = (const uint8_t *)m;
  int64_t c = kr__http_parser_feed(r.p, d, n);
  /* Stops after the first message and waits. */
  ck_assert_int_eq(c, (int64_t)first);
  ck_assert_int_eq(r.n_heads, 1);
  ck_assert_int_eq(r.n_ends, 1);
  ck_assert_str_eq(r.heads[0].target, "/1");
  /* Still paused: nothing consumed, the head is still readable. */
  ck_assert_int_eq(kr__http_parser_feed(r.p, d + first, n - first), 0);
  ck_assert_int_eq(r.n_heads, 1);
  kr__http_parser_resume(r.p);
  size_t off = first;
  c = kr__http_parser_feed(r.p, d + off, n - off);
  ck_assert_int_gt(c, 0);
  off += (size_t)c;
  ck_assert_int_eq(r.n_ends, 2);
  ck_assert_str_eq(r.heads[1].target, "/2");
  ck_assert_uint_eq(r.body_len[1], 3);
  kr__http_parser_resume(r.p);
  c = kr__http_parser_feed(r.p, d + off, n - off);
  ck_assert_int_eq(c, (int64_t)(n - off));
  ck_assert_int_eq(r.n_ends, 3);
  ck_assert_str_eq(r.heads[2].target, "/3");
  ck_assert_str_eq(r.heads[2].fields, "host=h\nx-a=1\n");
  rec_free(&r);

  /* Resuming from inside on_end parses the whole pipeline in one call,
   * each head still checked (the third one is bad). */
  static const char bad[] = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                            "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                            "GET /3 HTTP/1.1\r\nHost: h\nX: y\r\n\r\n";
  rec_init(&r, 1, NULL);
  r.resume_in_end = 1;
  c = kr__http_parser_feed(r.p, (const uint8_t *)m, n);
  ck_assert_int_eq(c, (int64_t)n);
  ck_assert_int_eq(r.n_ends, 3);
  rec_free(&r);
  rec_init(&r, 1, NULL);
  r.resume_in_end = 1;
  c = kr__http_parser_feed(r.p, (const uint8_t *)bad, sizeof(bad) - 1);
  ck_assert_int_eq(c, KR_EPROTO);
  ck_assert_int_eq(r.n_ends, 2);
  ck_assert_str_eq(kr__http_parser_error(r.p), "bare LF in header");
  rec_free(&r);
}
END_TEST

START_TEST(req_expect_continue) {
  static const char m11[] = "POST / HTTP/1.1\r\nHost: h\r\n"
                            "Expect: 100-Continue\r\nContent-Length: 2\r\n"
                            "\r\nok";
  static const char m10[] = "POST / HTTP/1.0\r\n"
                            "Expect: 100-continue\r\nContent-Length: 2\r\n"
                            "\r\nok";
  static const char other[] = "POST / HTTP/1.1\r\nHost: h\r\n"
                              "Expect: something\r\nContent-Length: 2\r\n"
                              "\r\nok";
  rec r;
  size_t used;
  rec_init(&r, 1, NULL);
  /* The head is reported before any body byte arrives: the caller can
   * answer 100 Continue then. */
  ck_assert_int_eq(drive(&r, m11, sizeof(m11) - 3, 0, &used), 0);
  ck_assert_int_eq(r.n_heads, 1);
  ck_assert_int_eq(r.heads[0].expect_continue, 1);
  ck_assert_int_eq(r.n_ends, 0);
  ck_assert_int_eq(kr__http_parser_in_message(r.p), 1);
  ck_assert_int_eq(drive(&r, m11 + used, 2, 0, &used), 0);
  ck_assert_int_eq(r.n_ends, 1);
  rec_free(&r);
  rec_init(&r, 1, NULL);
  ck_assert_int_eq(drive(&r, S(m10), 0, &used), 0);
  ck_assert_int_eq(r.heads[0].expect_continue, 0); /* HTTP/1.0 ignores it */
  rec_free(&r);
  rec_init(&r, 1, NULL);
  ck_assert_int_eq(drive(&r, S(other), 0, &used), 0);
  ck_assert_int_eq(r.heads[0].expect_continue, 0);
  rec_free(&r);
}
END_TEST

static int keep_alive_of(const char *m, int *err) {
  rec r;
  size_t used;
  rec_init(&r, 1, NULL);
  *err = (int)drive(&r, m, strlen(m), 0, &used);
  int ka = r.n_heads ? r.heads[0].keep_alive : -1;
  rec_free(&r);
  return ka;
}

START_TEST(req_keep_alive_rules) {
  int err;
  ck_assert_int_eq(keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\n\r\n", &err), 1);
  ck_assert_int_eq(
      keep_alive_of("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                    &err),
      0);
  ck_assert_int_eq(keep_alive_of("GET / HTTP/1.0\r\n\r\n", &err), 0);
  ck_assert_int_eq(
      keep_alive_of("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &err),
      1);
  ck_assert_int_eq(keep_alive_of("GET / HTTP/1.0\r\nHost: h\r\n\r\n", &err), 0);
  /* Nothing may follow a message that closes the connection. */
  static const char m[] = "GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n";
  rec r;
  size_t used;
  rec_init(&r, 1, NULL);
  ck_assert_int_eq(drive(&r, S(m), 0, &used), KR_EPROTO);
  ck_assert_int_eq(r.n_ends, 1);
  ck_assert_str_eq(kr__http_parser_error(r.p), "data after the last message");
  rec_free(&r);
  /* The same for a response that closes the connection. */
  static const char resp[] = "HTTP/1.1 200 OK\r\nConnection: close\r\n"
                             "Content-Length: 1\r\n\r\nx"
                             "HTTP/1.1 200 OK\r\n\r\n";
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(drive(&r, S(resp), 0, &used), KR_EPROTO);
  ck_assert_int_eq(r.n_ends, 1);
  ck_assert_int_eq(r.heads[0].keep_alive, 0);
  rec_free(&r);
}
END_TEST

START_TEST(req_upgrade) {
  static const char m[] = "GET /ws HTTP/1.1\r\n"
                          "Host: h\r\n"
                          "Connection: keep-alive, Upgrade\r\n"
                          "Upgrade: websocket\r\n"
                          "Sec-WebSocket-Version: 13\r\n"
                          "\r\n"
                          "\x81\x05hello GET / HTTP/1.1\r\n\r\n";
  const size_t head = strlen("GET /ws HTTP/1.1\r\n"
                             "Host: h\r\n"
                             "Connection: keep-alive, Upgrade\r\n"
                             "Upgrade: websocket\r\n"
                             "Sec-WebSocket-Version: 13\r\n"
                             "\r\n");
  for (size_t split = 0; split <= head; split++) {
    rec r;
    rec_init(&r, 1, NULL);
    size_t used;
    ck_assert_int_eq(drive_split(&r, m, sizeof(m) - 1, split, &used), 0);
    ck_assert_uint_eq(used, head); /* the raw bytes are left */
    ck_assert_int_eq(r.n_heads, 1);
    ck_assert_int_eq(r.heads[0].upgrade, 1);
    ck_assert_int_eq(r.heads[0].has_body, 0);
    ck_assert_int_eq(r.n_ends, 0);
    ck_assert_int_eq(kr__http_parser_feed(r.p, (const uint8_t *)m + head, 2),
                     KR_ESTATE);
    rec_free(&r);
  }
  /* An upgrade announcing a body: the body bytes are raw too. */
  static const char b[] = "POST /h2c HTTP/1.1\r\nHost: h\r\n"
                          "Connection: Upgrade, HTTP2-Settings\r\n"
                          "Upgrade: h2c\r\nContent-Length: 3\r\n\r\nabcRAW";
  rec r;
  rec_init(&r, 1, NULL);
  int64_t c = kr__http_parser_feed(r.p, (const uint8_t *)b, sizeof(b) - 1);
  ck_assert_int_eq(c, (int64_t)(sizeof(b) - 1 - 6));
  ck_assert_int_eq(r.heads[0].upgrade, 1);
  ck_assert_int_eq(r.heads[0].has_body, 0);
  ck_assert_int_eq(r.heads[0].content_length, 3);
  ck_assert_uint_eq(r.body_len[0], 0);
  rec_free(&r);
  /* Upgrade without "Connection: upgrade" is an ordinary request. */
  static const char u[] = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                          "\r\n";
  rec_init(&r, 1, NULL);
  c = kr__http_parser_feed(r.p, (const uint8_t *)u, sizeof(u) - 1);
  ck_assert_int_eq(c, (int64_t)sizeof(u) - 1);
  ck_assert_int_eq(r.heads[0].upgrade, 0);
  ck_assert_int_eq(r.n_ends, 1);
  rec_free(&r);
}
END_TEST

START_TEST(req_head_method) {
  static const char m[] = "HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n"
                          "DELETE /y HTTP/1.1\r\nHost: h\r\n\r\n";
  rec r;
  size_t used;
  rec_init(&r, 1, NULL);
  ck_assert_int_eq(drive(&r, S(m), 0, &used), 0);
  ck_assert_int_eq(r.n_ends, 2);
  ck_assert_str_eq(r.heads[0].method, "HEAD");
  ck_assert_int_eq(r.heads[0].is_head, 1);
  ck_assert_str_eq(r.heads[1].method, "DELETE");
  ck_assert_int_eq(r.heads[1].is_head, 0);
  rec_free(&r);
}
END_TEST

/* Many messages through one parser: heads of changing sizes reuse the
 * arena and come out right every time. */
START_TEST(req_many_messages_arena_reuse) {
  rec r;
  rec_init(&r, 1, NULL);
  r.resume_in_end = 1;
  char buf[8192];
  for (int i = 0; i < 2000; i++) {
    int k = (i * 37) % 90;
    char val[128];
    memset(val, 'a' + i % 26, (size_t)k);
    val[k] = '\0';
    int n = snprintf(buf, sizeof(buf),
                     "GET /%d HTTP/1.1\r\nHost: h%d\r\nX-V: %s\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     i, i, val, k, val);
    r.n_heads = r.n_ends = 0;
    r.body_len[0] = 0;
    int64_t c = kr__http_parser_feed(r.p, (const uint8_t *)buf, (size_t)n);
    ck_assert_int_eq(c, n);
    ck_assert_int_eq(r.n_ends, 1);
    char want[64];
    snprintf(want, sizeof(want), "/%d", i);
    ck_assert_str_eq(r.heads[0].target, want);
    ck_assert_uint_eq(r.body_len[0], (size_t)k);
  }
  rec_free(&r);
}
END_TEST

/* ------------------------------------------------------------ responses */

START_TEST(resp_content_length_and_chunked) {
  static const char m[] = "HTTP/1.1 200 OK\r\n"
                          "Content-Type: application/json\r\n"
                          "Content-Length: 7\r\n"
                          "\r\n"
                          "{\"a\":1}"
                          "HTTP/1.1 404 Not Found\r\n"
                          "Transfer-Encoding: chunked\r\n"
                          "\r\n"
                          "3\r\nnot\r\n6\r\n found\r\n0\r\n\r\n";
  const size_t n = sizeof(m) - 1;
  for (size_t split = 0; split <= n; split++) {
    rec r;
    rec_init(&r, 0, NULL);
    size_t used;
    ck_assert_int_eq(drive_split(&r, m, n, split, &used), 0);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(r.n_ends, 2);
    ck_assert_int_eq(r.heads[0].status, 200);
    ck_assert_int_eq(r.heads[0].content_length, 7);
    ck_assert_int_eq(r.heads[0].has_body, 1);
    ck_assert_int_eq(r.heads[0].keep_alive, 1);
    ck_assert_uint_eq(r.body_len[0], 7);
    ck_assert(memcmp(r.body[0], "{\"a\":1}", 7) == 0);
    ck_assert_int_eq(r.heads[1].status, 404);
    ck_assert_int_eq(r.heads[1].chunked, 1);
    ck_assert_uint_eq(r.body_len[1], 9);
    ck_assert(memcmp(r.body[1], "not found", 9) == 0);
    rec_free(&r);
  }
}
END_TEST

START_TEST(resp_close_delimited_eof) {
  static const char m[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                          "all of this until the close";
  const size_t n = sizeof(m) - 1;
  for (size_t split = 0; split <= n; split += 7) {
    rec r;
    rec_init(&r, 0, NULL);
    size_t used;
    ck_assert_int_eq(drive_split(&r, m, n, split, &used), 0);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(r.n_heads, 1);
    ck_assert_int_eq(r.heads[0].keep_alive, 0);
    ck_assert_int_eq(r.heads[0].has_body, 1);
    ck_assert_int_eq(r.n_ends, 0);
    ck_assert_int_eq(kr__http_parser_in_message(r.p), 1);
    ck_assert_int_eq(kr__http_parser_eof(r.p), 0);
    ck_assert_int_eq(r.n_ends, 1);
    ck_assert_uint_eq(r.body_len[0], strlen("all of this until the close"));
    rec_free(&r);
  }
  /* A length-delimited response cut short is an error at eof. */
  rec r;
  size_t used;
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(drive(&r,
                         S("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n"
                           "\r\nabc"),
                         0, &used),
                   0);
  ck_assert_int_eq(kr__http_parser_eof(r.p), KR_EPROTO);
  ck_assert_str_eq(kr__http_parser_error(r.p), "message cut short");
  rec_free(&r);
  /* So is a head cut short; between messages eof is clean. */
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(drive(&r, S("HTTP/1.1 200 OK\r\nContent-Le"), 0, &used), 0);
  ck_assert_int_eq(kr__http_parser_eof(r.p), KR_EPROTO);
  rec_free(&r);
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(kr__http_parser_eof(r.p), 0);
  rec_free(&r);
}
END_TEST

START_TEST(resp_no_body_statuses) {
  /* 204 and 304 have no body whatever Content-Length says; the next
   * response follows at once. */
  static const char m[] = "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
                          "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n";
  rec r;
  size_t used;
  rec_init(&r, 0, NULL);
  /* The second one is refused for CL + TE, after the first completed. */
  ck_assert_int_eq(drive(&r, S(m), 0, &used), KR_EPROTO);
  ck_assert_int_eq(r.n_ends, 1);
  ck_assert_int_eq(r.heads[0].status, 204);
  ck_assert_int_eq(r.heads[0].has_body, 0);
  rec_free(&r);
  static const char m2[] =
      "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
      "HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(drive(&r, S(m2), 0, &used), 0);
  ck_assert_uint_eq(used, sizeof(m2) - 1);
  ck_assert_int_eq(r.n_ends, 3);
  ck_assert_int_eq(r.heads[1].status, 304);
  ck_assert_int_eq(r.heads[1].has_body, 0);
  ck_assert_int_eq(r.heads[2].has_body, 0); /* Content-Length: 0 */
  ck_assert_int_eq(r.heads[2].keep_alive, 1);
  rec_free(&r);
}
END_TEST

START_TEST(resp_101_upgrade) {
  static const char m[] = "HTTP/1.1 101 Switching Protocols\r\n"
                          "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                          "RAW BYTES";
  static const char bare[] = "HTTP/1.1 101 Switching Protocols\r\n\r\nRAW";
  rec r;
  size_t used;
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(drive(&r, S(m), 0, &used), 0);
  ck_assert_uint_eq(used, sizeof(m) - 1 - 9);
  ck_assert_int_eq(r.heads[0].status, 101);
  ck_assert_int_eq(r.heads[0].upgrade, 1);
  ck_assert_int_eq(r.heads[0].has_body, 0);
  ck_assert_int_eq(r.n_ends, 0);
  ck_assert_int_eq(kr__http_parser_feed(r.p, (const uint8_t *)"R", 1),
                   KR_ESTATE);
  rec_free(&r);
  /* A 101 switches protocols even without the fields. */
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(drive(&r, S(bare), 0, &used), 0);
  ck_assert_uint_eq(used, sizeof(bare) - 1 - 3);
  ck_assert_int_eq(r.heads[0].upgrade, 1);
  rec_free(&r);
  /* "Connection: upgrade" on a 200 only announces support. */
  rec_init(&r, 0, NULL);
  ck_assert_int_eq(drive(&r,
                         S("HTTP/1.1 200 OK\r\nConnection: upgrade\r\n"
                           "Upgrade: h2c\r\nContent-Length: 1\r\n\r\nx"),
                         0, &used),
                   0);
  ck_assert_int_eq(r.heads[0].upgrade, 0);
  ck_assert_int_eq(r.n_ends, 1);
  rec_free(&r);
}
END_TEST

START_TEST(resp_head_reply) {
  static const char m[] = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
                          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                          "\r\n";
  /* The callback decides. */
  rec r;
  size_t used;
  rec_init(&r, 0, NULL);
  r.no_body_reply = 1;
  ck_assert_int_eq(drive(&r, S(m), 0, &used), 0);
  ck_assert_uint_eq(used, sizeof(m) - 1);
  ck_assert_int_eq(r.n_ends, 2);
  ck_assert_int_eq(r.heads[0].content_length, 1000);
  ck_assert_uint_eq(r.body_len[0], 0);
  rec_free(&r);
  /* Or the caller said so beforehand; it holds for one final response. */
  rec_init(&r, 0, NULL);
  kr__http_parser_expect_head_response(r.p, 1);
  int64_t c = kr__http_parser_feed(r.p, (const uint8_t *)m, sizeof(m) - 1);
  ck_assert_int_eq(c, (int64_t)strlen("HTTP/1.1 200 OK\r\n"
                                      "Content-Length: 1000\r\n\r\n"));
  ck_assert_int_eq(r.heads[0].has_body, 0);
  ck_assert_int_eq(r.n_ends, 1);
  kr__http_parser_resume(r.p);
  static const char next[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
  c = kr__http_parser_feed(r.p, (const uint8_t *)next, sizeof(next) - 1);
  ck_assert_int_eq(c, (int64_t)sizeof(next) - 1);
  ck_assert_int_eq(r.heads[1].has_body, 1);
  ck_assert_uint_eq(r.body_len[1], 2);
  rec_free(&r);
}
END_TEST

/* A 1xx is its own message: on_head (status 100) + on_end, then the final
 * response after resume. expect_head_response outlives the 1xx. */
START_TEST(resp_interim_100) {
  static const char m[] = "HTTP/1.1 100 Continue\r\n\r\n"
                          "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                          "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n"
                          "ok";
  const size_t n = sizeof(m) - 1;
  for (size_t split = 0; split <= n; split++) {
    rec r;
    size_t used;
    rec_init(&r, 0, NULL);
    ck_assert_int_eq(drive_split(&r, m, n, split, &used), 0);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(r.n_ends, 3);
    ck_assert_int_eq(r.heads[0].status, 100);
    ck_assert_int_eq(r.heads[0].has_body, 0);
    ck_assert_int_eq(r.heads[1].status, 103);
    ck_assert_str_eq(r.heads[1].fields, "link=</a>\n");
    ck_assert_int_eq(r.heads[2].status, 201);
    ck_assert_uint_eq(r.body_len[2], 2);
    rec_free(&r);
  }
  rec r;
  rec_init(&r, 0, NULL);
  kr__http_parser_expect_head_response(r.p, 1);
  size_t used;
  ck_assert_int_eq(drive(&r,
                         S("HTTP/1.1 100 Continue\r\n\r\n"
                           "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
                         0, &used),
                   0);
  ck_assert_int_eq(r.n_ends, 2);
  ck_assert_int_eq(r.heads[1].has_body, 0);
  rec_free(&r);
}
END_TEST

/* --------------------------------------------------------------- limits */

START_TEST(limit_head_size) {
  kr__http_limits lim = {200, 0};
  char m[512];
  /* Grow one field until the head is exactly at the limit, then one more
   * byte; fed whole and one byte at a time. */
  const char *pre = "GET / HTTP/1.1\r\nHost: h\r\nX: ";
  for (int piece = 0; piece <= 1; piece++) {
    for (size_t total = 190; total <= 201; total++) {
      size_t fill = total - strlen(pre) - 4;
      int n =
          snprintf(m, sizeof(m), "%s%.*s\r\n\r\n", pre, (int)fill,
                   "SECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRET"
                   "SECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRET"
                   "SECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRET"
                   "SECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRETSECRET");
      ck_assert_uint_eq((size_t)n, total);
      rec r;
      size_t used;
      rec_init(&r, 1, &lim);
      int64_t rc = drive(&r, m, (size_t)n, (size_t)piece, &used);
      if (total <= 200) {
        ck_assert_int_eq(rc, 0);
        ck_assert_int_eq(r.n_ends, 1);
      } else {
        ck_assert_int_eq(rc, KR_ETOOBIG);
        ck_assert_int_eq(r.n_heads, 0);
        ck_assert_str_eq(kr__http_parser_error(r.p),
                         "request header too large");
        /* Dead: the same error again. */
        ck_assert_int_eq(kr__http_parser_feed(r.p, (const uint8_t *)"x", 1),
                         KR_ETOOBIG);
      }
      rec_free(&r);
    }
  }
  /* A response head. */
  rec r;
  size_t used;
  lim.max_head = 40;
  rec_init(&r, 0, &lim);
  ck_assert_int_eq(drive(&r,
                         S("HTTP/1.1 200 OK\r\nServer: a-long-server-name"
                           "\r\n\r\n"),
                         0, &used),
                   KR_ETOOBIG);
  ck_assert_str_eq(kr__http_parser_error(r.p), "response header too large");
  rec_free(&r);
  /* The default limit holds against a stream of field bytes. */
  rec_init(&r, 1, NULL);
  ck_assert_int_eq(drive(&r, S("GET / HTTP/1.1\r\nX: "), 0, &used), 0);
  char chunk[1024];
  memset(chunk, 'v', sizeof(chunk));
  int64_t rc = 0;
  size_t fed = 0;
  while (rc >= 0 && fed < KR__HTTP_DEFAULT_MAX_HEAD * 2) {
    rc = kr__http_parser_feed(r.p, (const uint8_t *)chunk, sizeof(chunk));
    fed += sizeof(chunk);
  }
  ck_assert_int_eq(rc, KR_ETOOBIG);
  ck_assert_uint_le(fed, KR__HTTP_DEFAULT_MAX_HEAD + sizeof(chunk));
  rec_free(&r);
}
END_TEST

START_TEST(limit_field_count) {
  kr__http_limits lim = {0, 4};
  rec r;
  size_t used;
  rec_init(&r, 1, &lim);
  ck_assert_int_eq(drive(&r,
                         S("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n"
                           "C: 3\r\n\r\n"),
                         0, &used),
                   0);
  ck_assert_uint_eq(r.heads[0].n_fields, 4);
  rec_free(&r);
  rec_init(&r, 1, &lim);
  ck_assert_int_eq(drive(&r,
                         S("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n"
                           "C: 3\r\nD: 4\r\n\r\n"),
                         1, &used),
                   KR_ETOOBIG);
  ck_assert_str_eq(kr__http_parser_error(r.p), "too many header fields");
  ck_assert_int_eq(r.n_heads, 0);
  rec_free(&r);
  /* Trailers do not count as fields but are bounded by max_head. */
  lim.max_head = 64;
  rec_init(&r, 1, &lim);
  char m[512];
  int n =
      snprintf(m, sizeof(m),
               "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
               "chunked\r\n\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: %080d\r\n\r\n",
               7);
  ck_assert_int_eq(drive(&r, m, (size_t)n, 0, &used), KR_ETOOBIG);
  ck_assert_int_eq(r.n_heads, 1);
  ck_assert_int_eq(r.n_ends, 0);
  rec_free(&r);
}
END_TEST

START_TEST(limit_chunk_line) {
  char m[8192];
  int n = snprintf(m, sizeof(m),
                   "POST / HTTP/1.1\r\nHost: h\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n3;");
  memset(m + n, 'e', 5000);
  n += 5000;
  n += snprintf(m + n, sizeof(m) - (size_t)n, "\r\nabc\r\n0\r\n\r\n");
  rec r;
  size_t used;
  rec_init(&r, 1, NULL);
  ck_assert_int_eq(drive(&r, m, (size_t)n, 512, &used), KR_ETOOBIG);
  ck_assert_str_eq(kr__http_parser_error(r.p), "chunk line too long");
  rec_free(&r);
}
END_TEST

START_TEST(limit_long_url) {
  kr__http_limits lim = {1024, 0};
  char m[4096];
  memcpy(m, "GET /", 5);
  memset(m + 5, 'u', 2000);
  strcpy(m + 2005, " HTTP/1.1\r\nHost: h\r\n\r\n");
  rec r;
  size_t used;
  rec_init(&r, 1, &lim);
  ck_assert_int_eq(drive(&r, m, strlen(m), 100, &used), KR_ETOOBIG);
  ck_assert_str_eq(kr__http_parser_error(r.p), "request header too large");
  ck_assert_uint_le(used, 1024);
  rec_free(&r);
  /* Within the limit the whole target comes through, split or not. */
  lim.max_head = 4096;
  rec_init(&r, 1, &lim);
  ck_assert_int_eq(drive(&r, m, strlen(m), 7, &used), 0);
  ck_assert_uint_eq(strlen(r.heads[0].target), 255); /* truncated copy */
  rec_free(&r);
}
END_TEST

/* ------------------------------------------------------------ malformed */

typedef struct bad_case {
  int is_request;
  const char *what;
  const char *msg;
  size_t len; /* 0: strlen */
  int err;
} bad_case;

START_TEST(malformed_inputs) {
  static const bad_case cases[] = {
      {1, "bad chunk size",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "zz\r\nabc\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "chunk size overflow",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "fffffffffffffffff\r\n",
       0, KR_EPROTO},
      {1, "chunk line with bare LF",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3\nabc\n0\n\n",
       0, KR_EPROTO},
      {1, "chunk data not followed by CRLF",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3\r\nabcXY0\r\n\r\n",
       0, KR_EPROTO},
      {1, "chunk data followed by bare LF",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3\r\nabc\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "chunk size CR without LF",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3\rXabc\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "bare LF in chunk extension",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3;a\nb\r\nabc\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "control byte in chunk extension",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "3;a\x01\r\nabc\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "empty chunk size",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       ";a\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "trailer with bare LF",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "0\r\nX: a\n\r\n",
       0, KR_EPROTO},
      {1, "trailer folding",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "0\r\nX: a\r\n b\r\n\r\n",
       0, KR_EPROTO},
      {1, "final CRLF broken",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
       "0\r\n\rX",
       0, KR_EPROTO},
      {1, "CL then TE",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "TE then CL",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
       "Content-Length: 3\r\n\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "differing CL",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
       "Content-Length: 4\r\n\r\nabcd",
       0, KR_EPROTO},
      {1, "repeated equal CL",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
       "Content-Length: 3\r\n\r\nabc",
       0, KR_EPROTO},
      {1, "CL list",
       "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n", 0,
       KR_EPROTO},
      {1, "CL sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n",
       0, KR_EPROTO},
      {1, "TE gzip",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 0,
       KR_EPROTO},
      {1, "TE gzip, chunked",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
       "0\r\n\r\n",
       0, KR_EPROTO},
      {1, "TE chunked twice",
       "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {1, "bare LF request line", "GET / HTTP/1.1\nHost: h\r\n\r\n", 0,
       KR_EPROTO},
      {1, "bare LF field", "GET / HTTP/1.1\r\nHost: h\nX: SECRET\r\n\r\n", 0,
       KR_EPROTO},
      {1, "bare LF end", "GET / HTTP/1.1\r\nHost: h\r\n\n", 0, KR_EPROTO},
      {1, "CR without LF", "GET / HTTP/1.1\r\nHost: h\rX: SECRET\r\n\r\n", 0,
       KR_EPROTO},
      {1, "NUL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: SE\0CRET\r\n\r\n",
       39, KR_EPROTO},
      {1, "NUL in name", "GET / HTTP/1.1\r\nHost: h\r\nX\0Y: SECRET\r\n\r\n",
       40, KR_EPROTO},
      {1, "NUL in target", "GET /SE\0CRET HTTP/1.1\r\nHost: h\r\n\r\n", 34,
       KR_EPROTO},
      {1, "control char in value",
       "GET / HTTP/1.1\r\nHost: h\r\nX: SE\x01CRET\r\n\r\n", 0, KR_EPROTO},
      {1, "obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  SECRET\r\n\r\n",
       0, KR_EPROTO},
      {1, "space before first field", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", 0,
       KR_EPROTO},
      {1, "space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 0,
       KR_EPROTO},
      {1, "empty name", "GET / HTTP/1.1\r\nHost: h\r\n: SECRET\r\n\r\n", 0,
       KR_EPROTO},
      {1, "HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 0, KR_EPROTO},
      {1, "HTTP/0.9", "GET /\r\n\r\n", 0, KR_EPROTO},
      {1, "bad version", "GET / HTTP/1.x\r\nHost: h\r\n\r\n", 0, KR_EPROTO},
      {1, "bad method", "G@T / HTTP/1.1\r\nHost: h\r\n\r\n", 0, KR_EPROTO},
      {1, "missing host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 0, KR_EPROTO},
      {1, "two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 0,
       KR_EPROTO},
      {1, "CONNECT", "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 0,
       KR_EPROTO},
      {1, "space in target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 0,
       KR_EPROTO},
      {0, "status 999", "HTTP/1.1 999 Nope\r\nContent-Length: 0\r\n\r\n", 0,
       KR_EPROTO},
      {0, "status 099", "HTTP/1.1 099 Nope\r\nContent-Length: 0\r\n\r\n", 0,
       KR_EPROTO},
      {0, "status letters", "HTTP/1.1 2x0 OK\r\n\r\n", 0, KR_EPROTO},
      {0, "response TE gzip, chunked",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {0, "response CL + TE",
       "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
       0, KR_EPROTO},
      {0, "response bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", 0,
       KR_EPROTO},
      {0, "response HTTP/2", "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", 0,
       KR_EPROTO},
      {0, "response bad chunk",
       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"
       "\r\n\r\n5\r\nabcdeX\r\n",
       0, KR_EPROTO},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const bad_case *bc = &cases[i];
    size_t len = bc->len ? bc->len : strlen(bc->msg);
    for (size_t piece = 0; piece <= 1; piece++) {
      rec r;
      size_t used;
      rec_init(&r, bc->is_request, NULL);
      int64_t rc = drive(&r, bc->msg, len, piece, &used);
      ck_assert_msg(rc == bc->err, "%s (piece %zu): %lld, reason \"%s\"",
                    bc->what, piece, (long long)rc, kr__http_parser_error(r.p));
      const char *why = kr__http_parser_error(r.p);
      ck_assert_msg(why[0] != '\0', "%s: no reason", bc->what);
      ck_assert_msg(strstr(why, "SECRET") == NULL,
                    "%s: reason quotes input: %s", bc->what, why);
      ck_assert_int_eq(r.n_ends, 0);
      /* Dead from now on. */
      ck_assert_int_eq(kr__http_parser_feed(r.p, (const uint8_t *)"G", 1),
                       bc->err);
      ck_assert_int_eq(kr__http_parser_eof(r.p), bc->err);
      rec_free(&r);
    }
  }
}
END_TEST

/* The same inputs with a single byte changed are still accepted when the
 * change is harmless: the checks above are not over-eager. */
START_TEST(accepted_edge_cases) {
  static const char *const ok_req[] = {
      "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",    /* leading empty lines */
      "GET / HTTP/1.0\r\n\r\n",                       /* no Host in 1.0 */
      "GET http://h/x?y HTTP/1.1\r\nHost: h\r\n\r\n", /* absolute form */
      "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
      "0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX:\tv\t\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX-Utf8: caf\xc3\xa9\r\n\r\n",
  };
  static const char *const ok_chunked[] = {
      "3 ;a=b\r\nabc\r\n0\r\n\r\n",
      "0000003\r\nabc\r\n0\r\n\r\n",
      "3;q=\"x;y\"\r\nabc\r\n000\r\n\r\n",
      "3 ;a\r\nabc\r\n0;z\r\nA: 1\r\nB:2\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof(ok_chunked) / sizeof(ok_chunked[0]); i++) {
    char m[256];
    int n = snprintf(m, sizeof(m),
                     "POST / HTTP/1.1\r\nHost: h\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n%s",
                     ok_chunked[i]);
    for (size_t piece = 0; piece <= 1; piece++) {
      rec r;
      size_t used;
      rec_init(&r, 1, NULL);
      int64_t rc = drive(&r, m, (size_t)n, piece, &used);
      ck_assert_msg(rc == 0, "chunked case %zu: %lld (%s)", i, (long long)rc,
                    kr__http_parser_error(r.p));
      ck_assert_int_eq(r.n_ends, 1);
      ck_assert_uint_eq(r.body_len[0], 3);
      ck_assert(memcmp(r.body[0], "abc", 3) == 0);
      rec_free(&r);
    }
  }
  for (size_t i = 0; i < sizeof(ok_req) / sizeof(ok_req[0]); i++) {
    rec r;
    size_t used;
    rec_init(&r, 1, NULL);
    int64_t rc = drive(&r, ok_req[i], strlen(ok_req[i]), 0, &used);
    ck_assert_msg(rc == 0, "case %zu: %lld (%s)", i, (long long)rc,
                  kr__http_parser_error(r.p));
    ck_assert_int_eq(r.n_ends, 1);
    rec_free(&r);
  }
}
END_TEST

/* ------------------------------------------------------- body pause etc */

START_TEST(body_pause_resume) {
  static const char m[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 26\r\n"
                          "\r\nabcdefghijklmnopqrstuvwxyz"
                          "POST / HTTP/1.1\r\nHost: h\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n"
                          "4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
                          "GET /last HTTP/1.1\r\nHost: h\r\n\r\n";
  const size_t n = sizeof(m) - 1;
  for (size_t piece = 1; piece <= 40; piece++) {
    rec r;
    size_t used;
    rec_init(&r, 1, NULL);
    r.pause_body = 1;
    ck_assert_int_eq(drive(&r, m, n, piece, &used), 0);
    ck_assert_uint_eq(used, n);
    ck_assert_int_eq(r.n_ends, 3);
    ck_assert_uint_eq(r.body_len[0], 26);
    ck_assert(memcmp(r.body[0], "abcdefghijklmnopqrstuvwxyz", 26) == 0);
    ck_assert_uint_eq(r.body_len[1], 7);
    ck_assert(memcmp(r.body[1], "abcdefg", 7) == 0);
    ck_assert_str_eq(r.heads[2].target, "/last");
    rec_free(&r);
  }
  /* While paused nothing is consumed and nothing is called. */
  rec r;
  rec_init(&r, 1, NULL);
  r.pause_body = 1;
  int64_t c = kr__http_parser_feed(r.p, (const uint8_t *)m, 60);
  ck_assert_int_gt(c, 0);
  ck_assert_int_eq(r.body_calls, 1);
  ck_assert_int_eq(kr__http_parser_feed(r.p, (const uint8_t *)m + c, 10), 0);
  ck_assert_int_eq(r.body_calls, 1);
  ck_assert_int_eq(kr__http_parser_in_message(r.p), 1);
  rec_free(&r);
}
END_TEST

START_TEST(callback_errors) {
  static const char m[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                          "\r\nabc";
  rec r;
  size_t used;
  rec_init(&r, 1, NULL);
  r.head_error = KR_EPERM;
  ck_assert_int_eq(drive(&r, S(m), 0, &used), KR_EPERM);
  ck_assert_uint_eq(r.body_len[0], 0);
  ck_assert_int_eq(kr__http_parser_feed(r.p, (const uint8_t *)"x", 1),
                   KR_EPERM);
  rec_free(&r);
  rec_init(&r, 1, NULL);
  r.body_error = KR_ECLOSED;
  ck_assert_int_eq(drive(&r, S(m), 0, &used), KR_ECLOSED);
  ck_assert_int_eq(r.n_ends, 0);
  rec_free(&r);
}
END_TEST

/* Callbacks without Check assertions, for the allocation failure test
 * (Check allocates on every assertion). */
typedef struct nm_rec {
  kr__http_parser *p;
  int heads, ends, fields0;
  size_t body;
  char target1[16];
} nm_rec;

static int nm_head(const kr__http_head *h, void *ud) {
  nm_rec *r = ud;
  if (r->heads == 0)
    r->fields0 = (int)h->n_fields;
  else
    snprintf(r->target1, sizeof(r->target1), "%s", h->target);
  r->heads++;
  return 0;
}

static int nm_body(const uint8_t *p, size_t n, void *ud) {
  (void)p;
  ((nm_rec *)ud)->body += n;
  return 0;
}

static int nm_end(void *ud) {
  nm_rec *r = ud;
  r->ends++;
  kr__http_parser_resume(r->p);
  return 0;
}

/* Each allocation of a parser's life fails once in turn (the parser, the
 * arena and the field tables as they grow): new() or feed() returns
 * KR_ENOMEM with the reason "out of memory", or everything parses as
 * without the failure. Nothing leaks (ASan / valgrind). */
START_TEST(parse_enomem) {
  static const kr__http_parser_cbs nm_cbs = {nm_head, nm_body, nm_end};
  char m[4096];
  int n = snprintf(m, sizeof(m), "POST /first HTTP/1.1\r\nHost: h\r\n");
  for (int i = 0; i < 40; i++)
    n += snprintf(m + n, sizeof(m) - (size_t)n, "X-F%d: %0*d\r\n", i,
                  20 + i * 2, i);
  n += snprintf(m + n, sizeof(m) - (size_t)n,
                "Content-Length: 3\r\n\r\nabc"
                "GET /second HTTP/1.1\r\nHost: h\r\nX-Big: %0900d\r\n\r\n",
                1);
  ck_assert_int_lt(n, (int)sizeof(m));
  for (long k = 1;; k++) {
    nm_rec r;
    memset(&r, 0, sizeof(r));
    fail_hits = 0;
    fail_in = k;
    int rc = kr__http_parser_new(&r.p, 1, NULL, &nm_cbs, &r);
    int64_t frc = 0;
    size_t off = 0;
    while (rc == 0 && off < (size_t)n) {
      size_t len = (size_t)n - off < 5 ? (size_t)n - off : 5;
      frc = kr__http_parser_feed(r.p, (const uint8_t *)m + off, len);
      if (frc < 0)
        break;
      off += (size_t)frc;
    }
    fail_in = 0;
    if (rc != 0) {
      ck_assert_int_eq(rc, KR_ENOMEM);
      ck_assert_int_eq(fail_hits, 1);
      continue;
    }
    if (fail_hits > 0) {
      ck_assert_int_eq(frc, KR_ENOMEM);
      ck_assert_str_eq(kr__http_parser_error(r.p), "out of memory");
    } else {
      ck_assert_int_ge(frc, 0);
      ck_assert_uint_eq(off, (size_t)n);
      ck_assert_int_eq(r.ends, 2);
      ck_assert_int_eq(r.fields0, 42);
      ck_assert_uint_eq(r.body, 3);
      ck_assert_str_eq(r.target1, "/second");
    }
    kr__http_parser_free(r.p);
    if (fail_hits == 0)
      break;
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_parse");
  KT_ADD(s, req_get_no_body, 10);
  KT_ADD(s, req_content_length_every_split, 10);
  KT_ADD(s, req_chunked_extensions_trailers, 10);
  KT_ADD(s, req_pipelined_pause_resume, 10);
  KT_ADD(s, req_expect_continue, 10);
  KT_ADD(s, req_keep_alive_rules, 10);
  KT_ADD(s, req_upgrade, 10);
  KT_ADD(s, req_head_method, 10);
  KT_ADD(s, req_many_messages_arena_reuse, 20);
  KT_ADD(s, resp_content_length_and_chunked, 10);
  KT_ADD(s, resp_close_delimited_eof, 10);
  KT_ADD(s, resp_no_body_statuses, 10);
  KT_ADD(s, resp_101_upgrade, 10);
  KT_ADD(s, resp_head_reply, 10);
  KT_ADD(s, resp_interim_100, 10);
  KT_ADD(s, limit_head_size, 10);
  KT_ADD(s, limit_field_count, 10);
  KT_ADD(s, limit_chunk_line, 10);
  KT_ADD(s, limit_long_url, 10);
  KT_ADD(s, malformed_inputs, 10);
  KT_ADD(s, accepted_edge_cases, 10);
  KT_ADD(s, body_pause_resume, 10);
  KT_ADD(s, callback_errors, 10);
  KT_ADD(s, parse_enomem, 30);
  return kt_run_suite(s);
}
