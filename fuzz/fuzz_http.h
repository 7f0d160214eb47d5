/* The driver shared by fuzz_http_request and fuzz_http_response, and the
 * input layout make_corpus.c writes seeds for.
 *
 * Input layout:
 *   byte 0  configuration (FZ_HTTP_* below)
 *   byte 1  seed of the generator that picks piece sizes and pauses
 *   rest    the byte stream of HTTP messages
 *
 * Each input is parsed twice: once fed whole, once in pieces whose sizes
 * come from the seed, with on_body pausing at random and on_end resuming
 * from inside the callback or not. Both runs must see the same messages
 * (a digest of every head, the concatenated body of each message, every
 * end), the same consumed count, and fail or succeed together: where the
 * reads of a socket end must not change what a message means. Every
 * callback also checks the head it is given (pointers readable and
 * NUL-terminated, names lower-case tokens, values trimmed and free of CR,
 * LF and NUL, limits held) and the flow-control contract of feed().
 * A broken invariant calls __builtin_trap().
 */
#ifndef KR_FUZZ_HTTP_H
#define KR_FUZZ_HTTP_H

#include <stdint.h>
#include <string.h>

#include <kasroute/error.h>

#include "http/http_parse.h"

/* Configuration bits. */
#define FZ_HTTP_SMALL 0x01u     /* max_head 256, max_fields 8 */
#define FZ_HTTP_PAUSE 0x02u     /* pieces run: on_body pauses at random */
#define FZ_HTTP_RESUME_CB 0x04u /* pieces run: on_end resumes itself */
#define FZ_HTTP_HEAD 0x08u      /* responses: expect_head_response first */
/* Requests: on_head fails the second head; responses: NO_BODY for odd
 * heads. */
#define FZ_HTTP_REFUSE 0x10u
#define FZ_HTTP_PIECE_SHIFT 5 /* bits 5-7: piece size class */

#define FZ_HTTP_SMALL_HEAD 256
#define FZ_HTTP_SMALL_FIELDS 8

#ifndef FZ_HTTP_NO_DRIVER

#define FZ_CHECK(cond)                                                         \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

typedef struct fz_run {
  kr__http_parser *p;
  int is_request;
  unsigned cfg;
  uint64_t rng;
  int pieces; /* this run feeds pieces and may pause */
  kr__http_limits lim;
  uint64_t digest; /* FNV-1a over every event, in order */
  int heads, ends;
  int in_body; /* between on_head and on_end */
  int upgraded;
  int64_t body_bytes; /* of the current message */
  int64_t want_len;   /* its content_length, or -1 */
  int need_resume;
} fz_run;

static uint64_t fz_next(fz_run *r) {
  uint64_t z = (r->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void fz_hash(fz_run *r, const void *p, size_t n) {
  const uint8_t *b = p;
  uint64_t h = r->digest;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 0x100000001b3ull;
  }
  r->digest = h;
}

static void fz_hash_int(fz_run *r, int64_t v) {
  fz_hash(r, &v, sizeof(v));
}

/* Reads every byte of s[0..n) (so ASan sees a bad pointer) and checks the
 * NUL after it. */
static size_t fz_touch(const uint8_t *s, size_t n) {
  size_t sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += s[i];
  FZ_CHECK(s[n] == '\0');
  return sum;
}

static int fz_tchar(uint8_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
    return 1;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int fz_on_head(const kr__http_head *h, void *ud) {
  fz_run *r = ud;
  FZ_CHECK(!r->in_body && !r->upgraded);
  FZ_CHECK(h->is_request == r->is_request);
  FZ_CHECK(h->http_major == 1);
  size_t bytes = 0;
  fz_hash(r, "H", 1);
  if (h->is_request) {
    FZ_CHECK(h->method != NULL && h->target != NULL);
    FZ_CHECK(strlen(h->target) == h->target_len && h->target_len > 0);
    fz_touch((const uint8_t *)h->target, h->target_len);
    bytes += h->target_len;
    fz_hash(r, h->method, strlen(h->method));
    fz_hash(r, h->target, h->target_len);
    FZ_CHECK(h->is_head == (strcmp(h->method, "HEAD") == 0));
    FZ_CHECK(strcmp(h->method, "CONNECT") != 0);
  } else {
    FZ_CHECK(h->status >= 100 && h->status <= 599);
    fz_hash_int(r, h->status);
  }
  FZ_CHECK(h->n_fields <= r->lim.max_fields);
  FZ_CHECK(h->n_fields == 0 || h->fields != NULL);
  for (size_t i = 0; i < h->n_fields; i++) {
    const kr_md *f = &h->fields[i];
    FZ_CHECK(f->name_len > 0);
    fz_touch(f->name, f->name_len);
    fz_touch(f->value, f->value_len);
    for (size_t j = 0; j < f->name_len; j++)
      FZ_CHECK(fz_tchar(f->name[j]));
    for (size_t j = 0; j < f->value_len; j++)
      FZ_CHECK(f->value[j] != '\r' && f->value[j] != '\n' && f->value[j]);
    if (f->value_len > 0) {
      FZ_CHECK(f->value[0] != ' ' && f->value[0] != '\t');
      uint8_t last = f->value[f->value_len - 1];
      FZ_CHECK(last != ' ' && last != '\t');
    }
    bytes += f->name_len + f->value_len;
    fz_hash(r, f->name, f->name_len);
    fz_hash(r, ":", 1);
    fz_hash(r, f->value, f->value_len);
  }
  FZ_CHECK(bytes <= r->lim.max_head);
  FZ_CHECK(!(h->chunked && h->content_length >= 0));
  FZ_CHECK(h->content_length >= -1);
  if (h->is_request)
    FZ_CHECK(h->has_body ==
             (!h->upgrade && (h->chunked || h->content_length > 0)));
  else if (h->status < 200 || h->status == 204 || h->status == 304)
    FZ_CHECK(!h->has_body);
  int64_t flags[] = {h->content_length, h->chunked, h->has_body,
                     h->keep_alive,     h->upgrade, h->expect_continue,
                     h->http_minor};
  fz_hash(r, flags, sizeof(flags));
  FZ_CHECK(kr__http_parser_in_message(r->p) == 1);

  int idx = r->heads++;
  r->body_bytes = 0;
  r->want_len = h->has_body ? h->content_length : 0;
  if (h->upgrade) {
    r->upgraded = 1;
    return 0;
  }
  r->in_body = 1;
  if (r->cfg & FZ_HTTP_REFUSE) {
    if (r->is_request && idx == 1)
      return KR_EPERM;
    if (!r->is_request && (idx & 1)) {
      r->want_len = 0;
      return KR__HTTP_NO_BODY;
    }
  }
  return 0;
}

static int fz_on_body(const uint8_t *p, size_t n, void *ud) {
  fz_run *r = ud;
  FZ_CHECK(r->in_body && n > 0);
  fz_hash(r, p, n); /* reads every byte */
  r->body_bytes += (int64_t)n;
  if (r->want_len >= 0)
    FZ_CHECK(r->body_bytes <= r->want_len);
  if (r->pieces && (r->cfg & FZ_HTTP_PAUSE) && (fz_next(r) & 1)) {
    r->need_resume = 1;
    return KR__HTTP_PAUSE;
  }
  return 0;
}

static int fz_on_end(void *ud) {
  fz_run *r = ud;
  FZ_CHECK(r->in_body);
  if (r->want_len >= 0)
    FZ_CHECK(r->body_bytes == r->want_len);
  r->in_body = 0;
  r->ends++;
  fz_hash(r, "E", 1);
  if (r->pieces && (r->cfg & FZ_HTTP_RESUME_CB))
    kr__http_parser_resume(r->p);
  else
    r->need_resume = 1;
  return 0;
}

/* Parses in[0..n) in one run; returns the final code (0 or an error) and
 * writes the consumed count. */
static int fz_parse(fz_run *r, int is_request, unsigned cfg, uint8_t seed,
                    int pieces, const uint8_t *in, size_t n, size_t *used) {
  static const kr__http_parser_cbs cbs = {fz_on_head, fz_on_body, fz_on_end};
  memset(r, 0, sizeof(*r));
  r->is_request = is_request;
  r->cfg = cfg;
  r->rng = seed;
  r->pieces = pieces;
  r->digest = 0xcbf29ce484222325ull;
  r->lim.max_head = KR__HTTP_DEFAULT_MAX_HEAD;
  r->lim.max_fields = KR__HTTP_DEFAULT_MAX_FIELDS;
  if (cfg & FZ_HTTP_SMALL) {
    r->lim.max_head = FZ_HTTP_SMALL_HEAD;
    r->lim.max_fields = FZ_HTTP_SMALL_FIELDS;
  }
  FZ_CHECK(kr__http_parser_new(&r->p, is_request, &r->lim, &cbs, r) == 0);
  if (!is_request && (cfg & FZ_HTTP_HEAD))
    kr__http_parser_expect_head_response(r->p, 1);
  static const size_t classes[8] = {1, 2, 3, 7, 16, 61, 300, 4096};
  size_t cls = classes[(cfg >> FZ_HTTP_PIECE_SHIFT) & 7];
  size_t off = 0;
  int rc = 0, stalls = 0;
  while (off < n && !r->upgraded) {
    size_t len = n - off;
    if (pieces) {
      size_t k = 1 + (size_t)(fz_next(r) % cls);
      if (k < len)
        len = k;
    }
    int64_t c = kr__http_parser_feed(r->p, in + off, len);
    if (c < 0) {
      rc = (int)c;
      FZ_CHECK(rc == KR_EPROTO || rc == KR_ETOOBIG || rc == KR_EPERM);
      FZ_CHECK(kr__http_parser_error(r->p)[0] != '\0');
      FZ_CHECK(kr__http_parser_feed(r->p, in + off, len) == c);
      break;
    }
    FZ_CHECK((size_t)c <= len);
    off += (size_t)c;
    if (r->need_resume) {
      r->need_resume = 0;
      kr__http_parser_resume(r->p);
      stalls = 0;
    } else if ((size_t)c < len) {
      /* Only an upgrade stops short without a pause. */
      FZ_CHECK(r->upgraded);
    } else if (c == 0) {
      FZ_CHECK(++stalls < 3);
    }
  }
  if (r->upgraded && rc == 0)
    FZ_CHECK(kr__http_parser_feed(r->p, (const uint8_t *)"x", 1) == KR_ESTATE);
  *used = off;
  return rc;
}

static void fz_http_one_input(int is_request, const uint8_t *data,
                              size_t size) {
  if (size < 2)
    return;
  unsigned cfg = data[0];
  uint8_t seed = data[1];
  const uint8_t *in = data + 2;
  size_t n = size - 2;
  fz_run whole, split;
  size_t u1, u2;
  int rc1 = fz_parse(&whole, is_request, cfg, seed, 0, in, n, &u1);
  int rc2 = fz_parse(&split, is_request, cfg, seed, 1, in, n, &u2);
  FZ_CHECK((rc1 == 0) == (rc2 == 0));
  if (rc1 == 0) {
    FZ_CHECK(u1 == u2);
    FZ_CHECK(whole.digest == split.digest);
    FZ_CHECK(whole.heads == split.heads && whole.ends == split.ends);
    int e1 = kr__http_parser_eof(whole.p);
    int e2 = kr__http_parser_eof(split.p);
    FZ_CHECK(e1 == e2);
    FZ_CHECK(e1 == 0 || e1 == KR_EPROTO);
  }
  kr__http_parser_free(whole.p);
  kr__http_parser_free(split.p);
}

#endif /* FZ_HTTP_NO_DRIVER */

#endif
