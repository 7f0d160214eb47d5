/* HTTP heads <-> stream metadata, and head serialization (see http_map.h).
 *
 * The writers are the only place where bytes from one side (metadata from
 * the peer, fields from a client) become HTTP/1.1 text for the other side,
 * so they refuse anything that could end a line or a token early (CR, LF,
 * NUL, names that are not tokens, a target with spaces): a value can never
 * smuggle a field or a second message.
 */
#include <http_parser.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "http/http_map.h"

/* Entries share blocks of this size; a bigger entry gets its own. */
#define MDLIST_BLOCK 4096

/* ------------------------------------------------------------- kr__mdlist */

void kr__mdlist_init(kr__mdlist *l) {
  memset(l, 0, sizeof(*l));
}

void kr__mdlist_free(kr__mdlist *l) {
  for (size_t i = 0; i < l->n_blocks; i++)
    free(l->blocks[i]);
  free(l->blocks);
  free(l->md);
  kr__mdlist_init(l);
}

/* Every allocation happens before the list changes, so a failure leaves
 * it exactly as it was (spare capacity aside). */
int kr__mdlist_add(kr__mdlist *l, const void *name, size_t name_len,
                   const void *value, size_t value_len) {
  if (l->n >= KR__MDLIST_MAX_ENTRIES || name_len > KR__MDLIST_MAX_BYTES ||
      value_len > KR__MDLIST_MAX_BYTES - name_len ||
      l->bytes > KR__MDLIST_MAX_BYTES - name_len - value_len)
    return KR_ETOOBIG;
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    if (cap > KR__MDLIST_MAX_ENTRIES)
      cap = KR__MDLIST_MAX_ENTRIES;
    kr_md *md = realloc(l->md, cap * sizeof(*md));
    if (md == NULL)
      return KR_ENOMEM;
    l->md = md;
    l->cap = cap;
  }
  size_t need = name_len + value_len + 2; /* each NUL-terminated */
  if (l->n_blocks == 0 || need > l->block_cap - l->block_used) {
    if (l->n_blocks == l->cap_blocks) {
      size_t cap = l->cap_blocks ? l->cap_blocks * 2 : 4;
      uint8_t **bl = realloc(l->blocks, cap * sizeof(*bl));
      if (bl == NULL)
        return KR_ENOMEM;
      l->blocks = bl;
      l->cap_blocks = cap;
    }
    size_t size = need > MDLIST_BLOCK ? need : MDLIST_BLOCK;
    uint8_t *blk = malloc(size);
    if (blk == NULL)
      return KR_ENOMEM;
    l->blocks[l->n_blocks++] = blk;
    l->block_used = 0;
    l->block_cap = size;
  }
  uint8_t *dst = l->blocks[l->n_blocks - 1] + l->block_used;
  if (name_len > 0)
    memcpy(dst, name, name_len);
  dst[name_len] = '\0';
  if (value_len > 0)
    memcpy(dst + name_len + 1, value, value_len);
  dst[name_len + 1 + value_len] = '\0';
  l->block_used += need;
  l->md[l->n].name = dst;
  l->md[l->n].name_len = name_len;
  l->md[l->n].value = dst + name_len + 1;
  l->md[l->n].value_len = value_len;
  l->n++;
  l->bytes += name_len + value_len;
  return 0;
}

int kr__mdlist_adds(kr__mdlist *l, const char *name, const char *value) {
  return kr__mdlist_add(l, name, strlen(name), value, strlen(value));
}

/* ------------------------------------------------------------- lookups */

int kr__md_is(const kr_md *m, const char *name) {
  size_t n = strlen(name);
  return m->name_len == n && (n == 0 || memcmp(m->name, name, n) == 0);
}

const kr_md *kr__md_find(const kr_md *md, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++) {
    if (kr__md_is(&md[i], name))
      return &md[i];
  }
  return NULL;
}

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* a[0..n) equals the lower-case b[0..n) ignoring ASCII case. */
static int ieq(const uint8_t *a, const char *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (lower(a[i]) != (unsigned char)b[i])
      return 0;
  }
  return 1;
}

static int name_is(const char *name, size_t len, const char *lit) {
  size_t n = strlen(lit);
  return len == n && memcmp(name, lit, n) == 0;
}

int kr__http_list_has(const uint8_t *v, size_t n, const char *name,
                      size_t len) {
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    while (j < n && v[j] != ',')
      j++;
    size_t a = i, b = j;
    while (a < b && (v[a] == ' ' || v[a] == '\t'))
      a++;
    while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
      b--;
    if (b - a == len && ieq(v + a, name, len))
      return 1;
    i = j + 1;
  }
  return 0;
}

int kr__http_is_hop_by_hop(const char *name, size_t name_len,
                           const kr_md *fields, size_t n) {
  static const char *const fixed[] = {
      "connection", "keep-alive",        "proxy-connection", "te",
      "trailer",    "transfer-encoding", "upgrade",
  };
  for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
    if (name_is(name, name_len, fixed[i]))
      return 1;
  }
  if (name_len == 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    if (kr__md_is(&fields[i], "connection") &&
        kr__http_list_has(fields[i].value, fields[i].value_len, name, name_len))
      return 1;
  }
  return 0;
}

/* On failure the entries appended so far stay in out. */
int kr__http_copy_fields(kr__mdlist *out, const kr__http_head *h,
                         int (*skip)(const char *name, size_t len, void *ud),
                         void *skip_ud) {
  int conn_added = 0, rc;
  for (size_t i = 0; i < h->n_fields; i++) {
    const kr_md *f = &h->fields[i];
    const char *name = (const char *)f->name;
    if (skip != NULL && skip(name, f->name_len, skip_ud))
      continue;
    if (h->upgrade) {
      /* Only the upgrade token of Connection travels on: the rest names
       * fields of this hop. */
      if (name_is(name, f->name_len, "connection")) {
        if (!conn_added) {
          if ((rc = kr__mdlist_adds(out, "connection", "upgrade")) < 0)
            return rc;
          conn_added = 1;
        }
        continue;
      }
      if (name_is(name, f->name_len, "upgrade")) {
        rc = kr__mdlist_add(out, f->name, f->name_len, f->value, f->value_len);
        if (rc < 0)
          return rc;
        continue;
      }
    }
    if (kr__http_is_hop_by_hop(name, f->name_len, h->fields, h->n_fields))
      continue;
    rc = kr__mdlist_add(out, f->name, f->name_len, f->value, f->value_len);
    if (rc < 0)
      return rc;
  }
  /* A 101 without "Connection: upgrade" still switches protocols; the
   * next hop is told so explicitly. */
  if (h->upgrade && !conn_added)
    return kr__mdlist_adds(out, "connection", "upgrade");
  return 0;
}

/* ------------------------------------------------------------ kr__strbuf */

void kr__strbuf_init(kr__strbuf *b) {
  memset(b, 0, sizeof(*b));
}

void kr__strbuf_free(kr__strbuf *b) {
  free(b->p);
  kr__strbuf_init(b);
}

/* Makes room for n more bytes plus a NUL; sets failed when it cannot. */
static int strbuf_reserve(kr__strbuf *b, size_t n) {
  if (b->failed)
    return -1;
  if (n >= SIZE_MAX / 2 - b->len) {
    b->failed = 1;
    return -1;
  }
  size_t need = b->len + n + 1;
  if (need <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need)
    cap *= 2;
  char *p = realloc(b->p, cap);
  if (p == NULL) {
    b->failed = 1;
    return -1;
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

void kr__strbuf_add(kr__strbuf *b, const void *p, size_t n) {
  if (strbuf_reserve(b, n) < 0)
    return;
  if (n > 0)
    memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void kr__strbuf_addf(kr__strbuf *b, const char *fmt, ...) {
  if (strbuf_reserve(b, 0) < 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = 1;
    return;
  }
  if ((size_t)n >= b->cap - b->len) {
    if (strbuf_reserve(b, (size_t)n) < 0)
      return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}

/* -------------------------------------------------------------- writers */

/* RFC 9110 token characters ("!#$%&'*+-.^_`|~", digits, letters) as two
 * bitmaps of the ASCII range. */
int kr__http_is_tchar(unsigned char c) {
  static const uint64_t lo = 0x03ff6cfa00000000ull; /* 0..63 */
  static const uint64_t hi = 0x57ffffffc7fffffeull; /* 64..127 */
  if (c < 64)
    return (int)((lo >> c) & 1);
  return c < 128 && ((hi >> (c - 64)) & 1);
}

int kr__http_token_ok(const uint8_t *s, size_t n) {
  if (n == 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    if (!kr__http_is_tchar(s[i]))
      return 0;
  }
  return 1;
}

int kr__http_value_ok(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
      return 0;
  }
  return 1;
}

static int write_fields(kr__strbuf *b, const kr_md *md, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const kr_md *f = &md[i];
    if (f->name_len > 0 && f->name[0] == ':')
      continue;
    if (!kr__http_token_ok(f->name, f->name_len) ||
        !kr__http_value_ok(f->value, f->value_len))
      return KR_EPROTO;
    kr__strbuf_add(b, f->name, f->name_len);
    kr__strbuf_add(b, ": ", 2);
    kr__strbuf_add(b, f->value, f->value_len);
    kr__strbuf_add(b, "\r\n", 2);
  }
  return 0;
}

/* Finishes a head: on any failure b is cut back to where the head began,
 * so b never holds half a head. */
static int end_head(kr__strbuf *b, size_t start, int rc) {
  if (rc == 0) {
    kr__strbuf_add(b, "\r\n", 2);
    if (!b->failed)
      return 0;
    rc = KR_ENOMEM;
  }
  if (b->p != NULL && start <= b->len) {
    b->len = start;
    b->p[start] = '\0';
  }
  return rc;
}

int kr__http_write_request_head(kr__strbuf *b, const char *method,
                                const char *target, size_t target_len,
                                const kr_md *md, size_t n, const kr_md *extra,
                                size_t n_extra) {
  if (b->failed)
    return KR_ENOMEM;
  size_t start = b->len;
  size_t mlen = strlen(method);
  if (!kr__http_token_ok((const uint8_t *)method, mlen) || target_len == 0)
    return KR_EPROTO;
  /* request-target: visible ASCII and obs-text only (no SP, no CTL). */
  for (size_t i = 0; i < target_len; i++) {
    unsigned char c = (unsigned char)target[i];
    if (c <= 0x20 || c == 0x7f)
      return KR_EPROTO;
  }
  kr__strbuf_add(b, method, mlen);
  kr__strbuf_add(b, " ", 1);
  kr__strbuf_add(b, target, target_len);
  kr__strbuf_add(b, " HTTP/1.1\r\n", 11);
  int rc = write_fields(b, md, n);
  if (rc == 0)
    rc = write_fields(b, extra, n_extra);
  return end_head(b, start, rc);
}

int kr__http_write_response_head(kr__strbuf *b, int status, const kr_md *md,
                                 size_t n, const kr_md *extra, size_t n_extra) {
  if (b->failed)
    return KR_ENOMEM;
  if (status < 100 || status > 999)
    return KR_EPROTO;
  size_t start = b->len;
  kr__strbuf_addf(b, "HTTP/1.1 %d %s\r\n", status, kr__http_reason(status));
  int rc = write_fields(b, md, n);
  if (rc == 0)
    rc = write_fields(b, extra, n_extra);
  return end_head(b, start, rc);
}

/* ----------------------------------------------------------------- misc */

const char *kr__http_reason(int status) {
  if (status < 100 || status > 599)
    return "Unknown";
  /* libhttp-parser carries the IANA registry's phrases. */
  const char *r = http_status_str((enum http_status)status);
  return r[0] == '<' ? "Unknown" : r;
}

size_t kr__http_chunk_line(char *out, size_t n) {
  static const char hex[] = "0123456789abcdef";
  char tmp[16];
  size_t k = 0;
  do {
    tmp[k++] = hex[n & 15];
    n >>= 4;
  } while (n != 0);
  size_t len = 0;
  while (k > 0)
    out[len++] = tmp[--k];
  out[len++] = '\r';
  out[len++] = '\n';
  out[len] = '\0';
  return len;
}

int kr__http_parse_status(const uint8_t *p, size_t n) {
  if (n != 3)
    return -1;
  int v = 0;
  for (size_t i = 0; i < 3; i++) {
    if (p[i] < '0' || p[i] > '9')
      return -1;
    v = v * 10 + (p[i] - '0');
  }
  return v >= 100 && v <= 599 ? v : -1;
}
