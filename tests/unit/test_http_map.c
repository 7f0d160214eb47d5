/* Unit tests: metadata lists, hop-by-hop fields and HTTP/1.1 head writing
 * (lib/http/http_map.c). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/kasroute.h>

#include "http/http_map.h"
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

static kr_md md(const char *name, const char *value) {
  kr_md m = {(const uint8_t *)name, strlen(name), (const uint8_t *)value,
             strlen(value)};
  return m;
}

/* ------------------------------------------------------------- mdlist */

START_TEST(mdlist_add_find_free) {
  kr__mdlist l;
  kr__mdlist_init(&l);
  /* Freeing an empty list is fine, twice. */
  kr__mdlist_free(&l);
  kr__mdlist_free(&l);
  ck_assert_int_eq(kr__mdlist_adds(&l, ":status", "200"), 0);
  ck_assert_int_eq(kr__mdlist_adds(&l, "content-type", "text/plain"), 0);
  ck_assert_int_eq(kr__mdlist_add(&l, "x-bin", 5, "a\0b", 3), 0);
  ck_assert_int_eq(kr__mdlist_add(&l, "x-empty", 7, NULL, 0), 0);
  ck_assert_uint_eq(l.n, 4);
  ck_assert_uint_eq(l.bytes, 7 + 3 + 12 + 10 + 5 + 3 + 7);
  const kr_md *m = kr__md_find(l.md, l.n, "content-type");
  ck_assert_ptr_nonnull(m);
  ck_assert_str_eq((const char *)m->value, "text/plain"); /* NUL-terminated */
  ck_assert_int_eq(kr__md_is(m, "content-type"), 1);
  ck_assert_int_eq(kr__md_is(m, "content-typ"), 0);
  ck_assert_int_eq(kr__md_is(m, "Content-Type"), 0);
  m = kr__md_find(l.md, l.n, "x-bin");
  ck_assert_uint_eq(m->value_len, 3);
  ck_assert(memcmp(m->value, "a\0b", 3) == 0);
  ck_assert_ptr_null(kr__md_find(l.md, l.n, "x-missing"));
  ck_assert_ptr_null(kr__md_find(l.md, 0, ":status"));
  /* Entries added later never move earlier ones. */
  const uint8_t *first = l.md[0].value;
  for (int i = 0; i < 200; i++)
    ck_assert_int_eq(kr__mdlist_adds(&l, "x-filler", "0123456789abcdef"), 0);
  ck_assert_ptr_eq(l.md[0].value, first);
  ck_assert_str_eq((const char *)l.md[0].value, "200");
  kr__mdlist_free(&l);
  ck_assert_uint_eq(l.n, 0);
  ck_assert_uint_eq(l.bytes, 0);
  /* Reusable after free. */
  ck_assert_int_eq(kr__mdlist_adds(&l, "a", "b"), 0);
  ck_assert_uint_eq(l.n, 1);
  kr__mdlist_free(&l);
}
END_TEST

START_TEST(mdlist_limits) {
  kr__mdlist l;
  kr__mdlist_init(&l);
  for (int i = 0; i < KR__MDLIST_MAX_ENTRIES; i++)
    ck_assert_int_eq(kr__mdlist_adds(&l, "n", "v"), 0);
  ck_assert_int_eq(kr__mdlist_adds(&l, "n", "v"), KR_ETOOBIG);
  ck_assert_uint_eq(l.n, KR__MDLIST_MAX_ENTRIES);
  ck_assert_uint_eq(l.bytes, 2 * KR__MDLIST_MAX_ENTRIES);
  kr__mdlist_free(&l);

  /* Bytes: exactly at the limit is accepted, one more is not, and a
   * refused entry leaves the list as it was. */
  size_t big = KR__MDLIST_MAX_BYTES - 10;
  char *v = malloc(big + 1);
  ck_assert_ptr_nonnull(v);
  memset(v, 'x', big);
  v[big] = '\0';
  ck_assert_int_eq(kr__mdlist_add(&l, "name", 4, v, big), 0);
  ck_assert_int_eq(kr__mdlist_add(&l, "abcd", 4, "1234567", 7), KR_ETOOBIG);
  ck_assert_uint_eq(l.n, 1);
  ck_assert_uint_eq(l.bytes, big + 4);
  ck_assert_int_eq(kr__mdlist_add(&l, "abc", 3, "123", 3), 0);
  ck_assert_uint_eq(l.bytes, KR__MDLIST_MAX_BYTES);
  ck_assert_int_eq(kr__mdlist_add(&l, "a", 1, NULL, 0), KR_ETOOBIG);
  ck_assert_uint_eq(l.n, 2);
  ck_assert(memcmp(l.md[0].value, v, big) == 0);
  kr__mdlist_free(&l);
  /* Sizes that would overflow are refused, not wrapped. */
  ck_assert_int_eq(kr__mdlist_add(&l, "a", SIZE_MAX, "b", 1), KR_ETOOBIG);
  ck_assert_int_eq(kr__mdlist_add(&l, "a", 1, "b", SIZE_MAX), KR_ETOOBIG);
  ck_assert_int_eq(kr__mdlist_add(&l, "a", SIZE_MAX / 2, "b", SIZE_MAX / 2),
                   KR_ETOOBIG);
  ck_assert_uint_eq(l.n, 0);
  free(v);
  kr__mdlist_free(&l);
}
END_TEST

/* Every allocation of a growing list fails once in turn: the failing add
 * reports KR_ENOMEM and leaves the list as it was; later adds work and
 * every entry keeps its bytes. (No Check assertion runs while failures
 * are armed: Check allocates on every assertion.) */
START_TEST(mdlist_enomem) {
  char value[1000];
  enum { N = 100 };
  for (long k = 1;; k++) {
    kr__mdlist l;
    kr__mdlist_init(&l);
    int rcs[N];
    size_t n_before[N], n_after[N], bytes_before[N], bytes_after[N];
    fail_hits = 0;
    fail_in = k;
    for (int i = 0; i < N; i++) {
      char name[16];
      snprintf(name, sizeof(name), "n%d", i);
      memset(value, 'a' + i % 26, sizeof(value));
      n_before[i] = l.n;
      bytes_before[i] = l.bytes;
      rcs[i] = kr__mdlist_add(&l, name, strlen(name), value, sizeof(value));
      n_after[i] = l.n;
      bytes_after[i] = l.bytes;
    }
    fail_in = 0;
    int added[N], n_added = 0, nomem = 0;
    for (int i = 0; i < N; i++) {
      if (rcs[i] == 0) {
        ck_assert_uint_eq(n_after[i], n_before[i] + 1);
        added[n_added++] = i;
        continue;
      }
      ck_assert_uint_eq(n_after[i], n_before[i]);
      ck_assert_uint_eq(bytes_after[i], bytes_before[i]);
      if (rcs[i] == KR_ENOMEM)
        nomem++;
      else
        ck_assert_int_eq(rcs[i], KR_ETOOBIG);
    }
    ck_assert_int_eq(nomem, (int)fail_hits);
    ck_assert_uint_eq(l.n, (size_t)n_added);
    for (int j = 0; j < n_added; j++) {
      char name[16];
      snprintf(name, sizeof(name), "n%d", added[j]);
      ck_assert_str_eq((const char *)l.md[j].name, name);
      ck_assert_uint_eq(l.md[j].value_len, sizeof(value));
      memset(value, 'a' + added[j] % 26, sizeof(value));
      ck_assert(memcmp(l.md[j].value, value, sizeof(value)) == 0);
    }
    kr__mdlist_free(&l);
    if (fail_hits == 0)
      break; /* k is past the last allocation: all were covered */
  }
}
END_TEST

/* Head writers and copy_fields under allocation failure: KR_ENOMEM, the
 * buffer cut back to where the head began, never a crash or a leak. */
START_TEST(writers_enomem) {
  kr_md f[40];
  char vals[40][64];
  for (int i = 0; i < 40; i++) {
    snprintf(vals[i], sizeof(vals[i]), "value-%d-%040d", i, i);
    f[i] = md("x-field", vals[i]);
  }
  kr__http_head h;
  memset(&h, 0, sizeof(h));
  h.fields = f;
  h.n_fields = 40;
  for (long k = 1;; k++) {
    kr__strbuf b;
    kr__strbuf_init(&b);
    fail_hits = 0;
    fail_in = k;
    int rc1 = kr__http_write_request_head(&b, "GET", "/x", 2, f, 40, NULL, 0);
    int rc2 = kr__http_write_response_head(&b, 200, f, 40, NULL, 0);
    kr__mdlist l;
    kr__mdlist_init(&l);
    int rc3 = kr__http_copy_fields(&l, &h, NULL, NULL);
    fail_in = 0;
    ck_assert(rc1 == 0 || rc1 == KR_ENOMEM);
    ck_assert(rc2 == 0 || rc2 == KR_ENOMEM);
    ck_assert(rc3 == 0 || rc3 == KR_ENOMEM);
    if (rc1 == KR_ENOMEM || rc2 == KR_ENOMEM)
      ck_assert_int_eq(b.failed, 1);
    if (rc1 == 0 && rc2 == 0) {
      ck_assert_int_eq(b.failed, 0);
      ck_assert(memcmp(b.p, "GET /x HTTP/1.1\r\nx-field: value-0-", 34) == 0);
    }
    if (rc3 == 0)
      ck_assert_uint_eq(l.n, 40);
    kr__mdlist_free(&l);
    kr__strbuf_free(&b);
    if (fail_hits == 0)
      break;
  }
}
END_TEST

/* ---------------------------------------------------------- hop-by-hop */

START_TEST(hop_by_hop_fields) {
  static const char *const fixed[] = {
      "connection", "keep-alive",        "proxy-connection", "te",
      "trailer",    "transfer-encoding", "upgrade"};
  for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
    ck_assert_int_eq(
        kr__http_is_hop_by_hop(fixed[i], strlen(fixed[i]), NULL, 0), 1);
  ck_assert_int_eq(kr__http_is_hop_by_hop("host", 4, NULL, 0), 0);
  ck_assert_int_eq(kr__http_is_hop_by_hop("content-length", 14, NULL, 0), 0);
  ck_assert_int_eq(kr__http_is_hop_by_hop("", 0, NULL, 0), 0);
  kr_md f[] = {
      md("host", "h"),      md("connection", "close,X-Foo ,\t x-BAR\t"),
      md("connection", ""), md("connection", ",,  ,keep-alive, X-Third"),
      md("x-foo", "1"),
  };
  size_t n = sizeof(f) / sizeof(f[0]);
  ck_assert_int_eq(kr__http_is_hop_by_hop("x-foo", 5, f, n), 1);
  ck_assert_int_eq(kr__http_is_hop_by_hop("x-bar", 5, f, n), 1);
  ck_assert_int_eq(kr__http_is_hop_by_hop("x-third", 7, f, n), 1);
  ck_assert_int_eq(kr__http_is_hop_by_hop("close", 5, f, n), 1);
  ck_assert_int_eq(kr__http_is_hop_by_hop("x-fo", 4, f, n), 0);
  ck_assert_int_eq(kr__http_is_hop_by_hop("x-foobar", 8, f, n), 0);
  ck_assert_int_eq(kr__http_is_hop_by_hop("host", 4, f, n), 0);
  /* Only Connection fields list names. */
  kr_md g[] = {md("x-list", "host")};
  ck_assert_int_eq(kr__http_is_hop_by_hop("host", 4, g, 1), 0);
}
END_TEST

static int skip_auth(const char *name, size_t len, void *ud) {
  (*(int *)ud)++;
  return len == 13 && memcmp(name, "authorization", 13) == 0;
}

START_TEST(copy_fields) {
  kr_md f[] = {
      md("host", "example"),
      md("connection", "keep-alive, x-hop"),
      md("keep-alive", "timeout=5"),
      md("x-hop", "1"),
      md("authorization", "Bearer t"),
      md("accept", "*/*"),
      md("te", "trailers"),
      md("accept", "text/html"),
      md("upgrade", "websocket"),
  };
  kr__http_head h;
  memset(&h, 0, sizeof(h));
  h.fields = f;
  h.n_fields = sizeof(f) / sizeof(f[0]);
  kr__mdlist out;
  kr__mdlist_init(&out);
  int calls = 0;
  ck_assert_int_eq(kr__http_copy_fields(&out, &h, skip_auth, &calls), 0);
  ck_assert_int_eq(calls, (int)h.n_fields);
  ck_assert_uint_eq(out.n, 3);
  ck_assert_int_eq(kr__md_is(&out.md[0], "host"), 1);
  ck_assert_int_eq(kr__md_is(&out.md[1], "accept"), 1);
  ck_assert_str_eq((const char *)out.md[1].value, "*/*");
  ck_assert_int_eq(kr__md_is(&out.md[2], "accept"), 1);
  ck_assert_str_eq((const char *)out.md[2].value, "text/html");
  kr__mdlist_free(&out);

  /* An upgrade keeps "connection: upgrade" (once, normalized) and the
   * upgrade field; the other Connection tokens still name hop fields. */
  kr_md u[] = {
      md("host", "h"),
      md("connection", "keep-alive, Upgrade, x-hop"),
      md("upgrade", "SPDY/3.1"),
      md("x-hop", "1"),
      md("connection", "close"),
      md("x-stream-protocol-version", "v4.channel.k8s.io"),
  };
  memset(&h, 0, sizeof(h));
  h.fields = u;
  h.n_fields = sizeof(u) / sizeof(u[0]);
  h.upgrade = 1;
  ck_assert_int_eq(kr__http_copy_fields(&out, &h, NULL, NULL), 0);
  ck_assert_uint_eq(out.n, 4);
  ck_assert_int_eq(kr__md_is(&out.md[0], "host"), 1);
  ck_assert_int_eq(kr__md_is(&out.md[1], "connection"), 1);
  ck_assert_str_eq((const char *)out.md[1].value, "upgrade");
  ck_assert_int_eq(kr__md_is(&out.md[2], "upgrade"), 1);
  ck_assert_str_eq((const char *)out.md[2].value, "SPDY/3.1");
  ck_assert_int_eq(kr__md_is(&out.md[3], "x-stream-protocol-version"), 1);
  kr__mdlist_free(&out);

  /* A 101 without Connection still tells the next hop. */
  kr_md r[] = {md("upgrade", "websocket"), md("sec-websocket-accept", "x")};
  h.fields = r;
  h.n_fields = 2;
  ck_assert_int_eq(kr__http_copy_fields(&out, &h, NULL, NULL), 0);
  ck_assert_uint_eq(out.n, 3);
  ck_assert_ptr_nonnull(kr__md_find(out.md, out.n, "connection"));
  kr__mdlist_free(&out);

  /* Errors of the list come through. */
  kr_md many[300];
  for (size_t i = 0; i < 300; i++)
    many[i] = md("x-a", "b");
  h.fields = many;
  h.n_fields = 300;
  h.upgrade = 0;
  ck_assert_int_eq(kr__http_copy_fields(&out, &h, NULL, NULL), KR_ETOOBIG);
  kr__mdlist_free(&out);
}
END_TEST

/* -------------------------------------------------------------- writers */

START_TEST(write_request_head_exact) {
  kr_md m[] = {md(":method", "GET"), md(":path", "/x"), md("accept", "*/*"),
               md("x-empty", "")};
  kr_md extra[] = {md("host", "up:8080"), md("content-length", "0")};
  kr__strbuf b;
  kr__strbuf_init(&b);
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "GET", "/base/x?y=1", 11, m, 4, extra, 2),
      0);
  static const char want[] = "GET /base/x?y=1 HTTP/1.1\r\n"
                             "accept: */*\r\n"
                             "x-empty: \r\n"
                             "host: up:8080\r\n"
                             "content-length: 0\r\n"
                             "\r\n";
  ck_assert_uint_eq(b.len, sizeof(want) - 1);
  ck_assert(memcmp(b.p, want, b.len) == 0);
  /* Appends after what is there. */
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "DELETE", "/", 1, NULL, 0, NULL, 0), 0);
  ck_assert_uint_eq(b.len,
                    sizeof(want) - 1 + strlen("DELETE / HTTP/1.1\r\n\r\n"));
  ck_assert(memcmp(b.p + sizeof(want) - 1, "DELETE / HTTP/1.1\r\n\r\n", 21) ==
            0);
  kr__strbuf_free(&b);
}
END_TEST

START_TEST(write_response_head_exact) {
  kr_md m[] = {md(":status", "404"), md("content-type", "application/json"),
               md("content-length", "2")};
  kr__strbuf b;
  kr__strbuf_init(&b);
  ck_assert_int_eq(kr__http_write_response_head(&b, 404, m, 3, NULL, 0), 0);
  static const char want[] = "HTTP/1.1 404 Not Found\r\n"
                             "content-type: application/json\r\n"
                             "content-length: 2\r\n"
                             "\r\n";
  ck_assert_uint_eq(b.len, sizeof(want) - 1);
  ck_assert(memcmp(b.p, want, b.len) == 0);
  b.len = 0;
  kr_md x[] = {md("x-forwarded-for", "127.0.0.1")};
  ck_assert_int_eq(kr__http_write_response_head(&b, 299, NULL, 0, x, 1), 0);
  ck_assert_str_eq(
      b.p, "HTTP/1.1 299 Unknown\r\nx-forwarded-for: 127.0.0.1\r\n\r\n");
  b.len = 0;
  ck_assert_int_eq(kr__http_write_response_head(&b, 101, NULL, 0, NULL, 0), 0);
  ck_assert_str_eq(b.p, "HTTP/1.1 101 Switching Protocols\r\n\r\n");
  kr__strbuf_free(&b);
}
END_TEST

START_TEST(writers_refuse_injection) {
  kr__strbuf b;
  kr__strbuf_init(&b);
  kr__strbuf_add(&b, "kept", 4);
  kr_md good = md("accept", "*/*");
  kr_md bad_values[] = {
      md("x", "a\r\nX-Injected: 1"),
      md("x", "a\nb"),
      md("x", "a\rb"),
      {(const uint8_t *)"x", 1, (const uint8_t *)"a\0b", 3},
  };
  kr_md bad_names[] = {
      md("", "v"),
      md("x y", "v"),
      md("x:y", "v"),
      md("x\r\ny", "v"),
      md("x\ty", "v"),
      md("(x)", "v"),
      md("caf\xc3\xa9", "v"),
      {(const uint8_t *)"a\0b", 3, (const uint8_t *)"v", 1},
  };
  for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
    kr_md m[] = {good, bad_values[i]};
    ck_assert_int_eq(
        kr__http_write_request_head(&b, "GET", "/", 1, m, 2, NULL, 0),
        KR_EPROTO);
    ck_assert_uint_eq(b.len, 4);
    ck_assert_int_eq(
        kr__http_write_request_head(&b, "GET", "/", 1, NULL, 0, m, 2),
        KR_EPROTO);
    ck_assert_int_eq(kr__http_write_response_head(&b, 200, m, 2, NULL, 0),
                     KR_EPROTO);
    ck_assert_uint_eq(b.len, 4);
  }
  for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
    ck_assert_int_eq(
        kr__http_write_response_head(&b, 200, NULL, 0, &bad_names[i], 1),
        KR_EPROTO);
    ck_assert_uint_eq(b.len, 4);
  }
  /* Method and target. */
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "GE T", "/", 1, NULL, 0, NULL, 0),
      KR_EPROTO);
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "", "/", 1, NULL, 0, NULL, 0), KR_EPROTO);
  static const char *const targets[] = {"/a b", "/a\r\nX: y", "/a\nb", "/a\tb",
                                        "/a\x7f"};
  for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
    ck_assert_int_eq(kr__http_write_request_head(&b, "GET", targets[i],
                                                 strlen(targets[i]), NULL, 0,
                                                 NULL, 0),
                     KR_EPROTO);
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "GET", "/a\0b", 4, NULL, 0, NULL, 0),
      KR_EPROTO);
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "GET", "", 0, NULL, 0, NULL, 0),
      KR_EPROTO);
  /* Status out of range. */
  ck_assert_int_eq(kr__http_write_response_head(&b, 42, NULL, 0, NULL, 0),
                   KR_EPROTO);
  ck_assert_int_eq(kr__http_write_response_head(&b, 1000, NULL, 0, NULL, 0),
                   KR_EPROTO);
  ck_assert_uint_eq(b.len, 4);
  ck_assert(memcmp(b.p, "kept", 4) == 0);
  /* ':' names are never written, whatever they hold. */
  kr_md pseudo = md(":path", "/x\r\ny");
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "GET", "/", 1, &pseudo, 1, NULL, 0), 0);
  ck_assert_str_eq(b.p, "keptGET / HTTP/1.1\r\n\r\n");
  kr__strbuf_free(&b);
}
END_TEST

START_TEST(strbuf_growth) {
  kr__strbuf b;
  kr__strbuf_init(&b);
  kr__strbuf_add(&b, "", 0);
  ck_assert_int_eq(b.failed, 0);
  for (int i = 0; i < 1000; i++)
    kr__strbuf_addf(&b, "%04d,", i);
  ck_assert_uint_eq(b.len, 5000);
  ck_assert(memcmp(b.p + 4995, "0999,", 5) == 0);
  char big[10000];
  memset(big, 'z', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  kr__strbuf_addf(&b, "[%s]", big);
  ck_assert_uint_eq(b.len, 5000 + 2 + sizeof(big) - 1);
  ck_assert_int_eq(b.p[b.len - 1], ']');
  ck_assert_int_eq(b.failed, 0);
  /* An impossible size marks the buffer failed; the writers then refuse. */
  kr__strbuf_add(&b, big, SIZE_MAX - 8);
  ck_assert_int_eq(b.failed, 1);
  ck_assert_int_eq(
      kr__http_write_request_head(&b, "GET", "/", 1, NULL, 0, NULL, 0),
      KR_ENOMEM);
  kr__strbuf_free(&b);
  ck_assert_int_eq(b.failed, 0);
  ck_assert_uint_eq(b.len, 0);
}
END_TEST

/* ----------------------------------------------------------------- misc */

START_TEST(reasons_chunks_status) {
  ck_assert_str_eq(kr__http_reason(200), "OK");
  ck_assert_str_eq(kr__http_reason(404), "Not Found");
  ck_assert_str_eq(kr__http_reason(431), "Request Header Fields Too Large");
  ck_assert_str_eq(kr__http_reason(502), "Bad Gateway");
  ck_assert_str_eq(kr__http_reason(504), "Gateway Timeout");
  ck_assert_str_eq(kr__http_reason(299), "Unknown");
  ck_assert_str_eq(kr__http_reason(0), "Unknown");
  ck_assert_str_eq(kr__http_reason(-1), "Unknown");
  ck_assert_str_eq(kr__http_reason(999), "Unknown");

  char out[20];
  ck_assert_uint_eq(kr__http_chunk_line(out, 0), 3);
  ck_assert(memcmp(out, "0\r\n", 3) == 0);
  ck_assert_uint_eq(kr__http_chunk_line(out, 8000), 6);
  ck_assert(memcmp(out, "1f40\r\n", 6) == 0);
  ck_assert_uint_eq(kr__http_chunk_line(out, 15), 3);
  ck_assert(memcmp(out, "f\r\n", 3) == 0);
  ck_assert_uint_eq(kr__http_chunk_line(out, 16), 4);
  ck_assert(memcmp(out, "10\r\n", 4) == 0);
  ck_assert_uint_eq(kr__http_chunk_line(out, SIZE_MAX), 18);
  ck_assert(memcmp(out, "ffffffffffffffff\r\n", 18) == 0);

  ck_assert_int_eq(kr__http_parse_status((const uint8_t *)"200", 3), 200);
  ck_assert_int_eq(kr__http_parse_status((const uint8_t *)"101", 3), 101);
  ck_assert_int_eq(kr__http_parse_status((const uint8_t *)"599", 3), 599);
  ck_assert_int_eq(kr__http_parse_status((const uint8_t *)"100", 3), 100);
  static const char *const bad[] = {"099", "600", "999", "20",  "2000", "",
                                    "2x0", " 20", "20 ", "+20", "-20"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_int_eq(
        kr__http_parse_status((const uint8_t *)bad[i], strlen(bad[i])), -1);
  ck_assert_int_eq(kr__http_parse_status((const uint8_t *)"2\0"
                                                          "0",
                                         3),
                   -1);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_map");
  KT_ADD(s, mdlist_add_find_free, 10);
  KT_ADD(s, mdlist_limits, 10);
  KT_ADD(s, mdlist_enomem, 30);
  KT_ADD(s, writers_enomem, 30);
  KT_ADD(s, hop_by_hop_fields, 10);
  KT_ADD(s, copy_fields, 10);
  KT_ADD(s, write_request_head_exact, 10);
  KT_ADD(s, write_response_head_exact, 10);
  KT_ADD(s, writers_refuse_injection, 10);
  KT_ADD(s, strbuf_growth, 10);
  KT_ADD(s, reasons_chunks_status, 10);
  return kt_run_suite(s);
}
