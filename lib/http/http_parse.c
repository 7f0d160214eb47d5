/* Incremental HTTP/1.1 parsing over libhttp-parser (see http_parse.h).
 *
 * libhttp-parser does the grammar; this module adds what a proxy needs on
 * top of it:
 *   - a byte scanner over each head before libhttp-parser sees it, which
 *     counts the head against max_head and refuses what libhttp-parser
 *     tolerates but a proxy must not (bare LF, CR without LF, NUL, obsolete
 *     line folding), so that kas and the peer can never disagree on where
 *     a head ends;
 *   - a guard over the framing bytes of chunked bodies (not their data):
 *     Debian builds libhttp-parser with HTTP_PARSER_STRICT=0, which takes
 *     any two bytes after a chunk's data for its CRLF, any byte after a
 *     chunk-size CR for LF, and bare LF inside chunk extensions; the guard
 *     refuses those before libhttp-parser consumes them, and bounds chunk
 *     lines and trailers. libhttp-parser still does the de-chunking;
 *   - for the same reason, no byte may follow a message after which the
 *     connection closes (libhttp-parser in that mode would parse on);
 *   - collection of the start line and fields, which libhttp-parser may
 *     deliver in pieces across feed() calls, into one arena per parser that
 *     is reused from message to message (no allocation per field once the
 *     arena has grown to the size of the largest head seen);
 *   - framing checks: one Host, Transfer-Encoding exactly "chunked",
 *     HTTP/1.x only, status 100..599, no CONNECT;
 *   - flow control: the parser pauses after every message and whenever
 *     on_body asks, and stops consuming after an upgrade.
 */
#include <http_parser.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "http/http_map.h"
#include "http/http_parse.h"

/* One header field while its head is collected: offsets into the arena,
 * which may move while it grows. */
typedef struct field_ref {
  size_t name_off, name_len;
  size_t value_off, value_len;
} field_ref;

/* The data callback that ran last, to tell a piece continuing the same
 * token (across feed() calls) from the start of the next one. */
enum { LAST_NONE, LAST_URL, LAST_FIELD, LAST_VALUE };

/* Chunked framing guard states. */
enum {
  G_OFF,
  G_SIZE0,    /* first hex digit of a chunk size */
  G_SIZE,     /* more hex digits, then ";", SP or CR */
  G_EXT,      /* chunk extension up to CR */
  G_SIZE_LF,  /* LF ending the chunk line */
  G_DATA,     /* `left` chunk data bytes */
  G_DATA_CR,  /* CR after the data */
  G_DATA_LF,  /* LF after the data */
  G_TR_START, /* start of a trailer line, or CR of the final CRLF */
  G_TR_LINE,  /* inside a trailer line */
  G_TR_LF,    /* LF ending a trailer line */
  G_END_LF,   /* LF of the final CRLF */
};

/* Longest chunk line (size and extensions) accepted. */
#define MAX_CHUNK_LINE 4096

/* The guard's state; feed() runs a copy ahead to find how far the bytes
 * are acceptable. */
typedef struct chunk_guard {
  int state;
  uint64_t left;      /* chunk data bytes still to skip */
  size_t line;        /* bytes of the current chunk line or trailers */
  size_t max_trailer; /* the parser's max_head */
  const char *why;    /* set when the scan stops at a bad byte */
  int err;
} chunk_guard;

struct kr__http_parser {
  http_parser hp;
  kr__http_parser_cbs cbs;
  void *ud;
  kr__http_limits lim;
  int is_request;

  int dead; /* an error was returned; err and reason keep it */
  int err;
  const char *reason;
  int finished; /* an upgrade head was reported; no more HTTP */
  int paused;   /* hp is paused by us (after on_end or KR__HTTP_PAUSE) */
  int ended;    /* on_end fired; resume() starts the next message */
  int in_msg;
  int in_exec;       /* inside http_parser_execute (callbacks may run) */
  int resume_wanted; /* resume() called from a callback */
  int expect_head;   /* the next final response answers HEAD */
  int head_done;     /* on_head ran for the current message */

  int closed; /* the last message ended the connection's HTTP */

  chunk_guard guard; /* chunked-framing guard (see the top) */

  /* Head scanner. */
  int scanning;      /* bytes fed are head bytes */
  int sc_prev_cr;    /* the last head byte was CR */
  int sc_line;       /* the current line has content */
  int sc_started;    /* the start line has begun */
  size_t head_bytes; /* counted against lim.max_head */
  size_t trailer_bytes;

  /* Head collection. The arena holds the target and every name and value,
   * each followed by a NUL; its size is bounded by arena_max. */
  char *arena;
  size_t alen, acap, arena_max;
  size_t url_len;
  field_ref *refs;
  kr_md *md;
  size_t nref, refcap;
  int last;

  kr__http_head head;
};

/* ---------------------------------------------------------------- helpers */

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int ieq(const char *a, size_t n, const char *lit) {
  size_t m = strlen(lit);
  if (n != m)
    return 0;
  for (size_t i = 0; i < n; i++) {
    if (lower((unsigned char)a[i]) != lit[i])
      return 0;
  }
  return 1;
}

static int fail(kr__http_parser *p, int err, const char *reason) {
  if (!p->dead) {
    p->dead = 1;
    p->err = err;
    p->reason = reason;
  }
  return p->err;
}

static const char *too_large(const kr__http_parser *p) {
  return p->is_request ? "request header too large"
                       : "response header too large";
}

/* The reason for an arena failure. */
static const char *why(const kr__http_parser *p, int rc) {
  return rc == KR_ENOMEM ? "out of memory" : too_large(p);
}

/* Forgets the previous head (its pointers die here) and expects a new one. */
static void begin_head(kr__http_parser *p) {
  p->alen = 0;
  p->url_len = 0;
  p->nref = 0;
  p->last = LAST_NONE;
  p->head_done = 0;
  p->scanning = 1;
  p->sc_prev_cr = 0;
  p->sc_line = 0;
  p->sc_started = 0;
  p->head_bytes = 0;
  p->trailer_bytes = 0;
  p->guard.state = G_OFF;
  memset(&p->head, 0, sizeof(p->head));
}

/* Appends n bytes (lower-cased when asked) and keeps room for one NUL.
 * On failure nothing changed; the caller fails the parser. */
static int arena_put(kr__http_parser *p, const char *s, size_t n, int lc) {
  if (n > p->arena_max || p->alen + 1 > p->arena_max - n)
    return KR_ETOOBIG;
  size_t need = p->alen + n + 1;
  if (need > p->acap) {
    size_t cap = p->acap ? p->acap : 512;
    while (cap < need)
      cap *= 2;
    if (cap > p->arena_max)
      cap = p->arena_max;
    char *a = realloc(p->arena, cap);
    if (a == NULL)
      return KR_ENOMEM;
    p->arena = a;
    p->acap = cap;
  }
  if (lc) {
    for (size_t i = 0; i < n; i++)
      p->arena[p->alen + i] = (char)lower((unsigned char)s[i]);
  } else if (n > 0) {
    memcpy(p->arena + p->alen, s, n);
  }
  p->alen += n;
  return 0;
}

/* Ends the current token with its NUL (room was kept by arena_put; a
 * token that received no bytes reserves its own). */
static int arena_nul(kr__http_parser *p) {
  if (p->alen >= p->acap) {
    int rc = arena_put(p, "", 0, 0);
    if (rc < 0)
      return rc;
  }
  p->arena[p->alen++] = '\0';
  return 0;
}

/* Closes whatever token the last data callback was building. */
static int close_token(kr__http_parser *p) {
  int rc = 0;
  switch (p->last) {
  case LAST_URL:
    rc = arena_nul(p);
    break;
  case LAST_FIELD: /* a name without a value callback: empty value */
    if ((rc = arena_nul(p)) == 0) {
      p->refs[p->nref - 1].value_off = p->alen;
      p->refs[p->nref - 1].value_len = 0;
      rc = arena_nul(p);
    }
    break;
  case LAST_VALUE:
    rc = arena_nul(p);
    break;
  default:
    break;
  }
  p->last = LAST_NONE;
  return rc;
}

/* Scans head bytes d[0..n) before libhttp-parser sees them. Stops (and
 * turns scanning off) at the empty line ending the head, so body bytes are
 * never looked at; *end is the count of head bytes in d. Returns 0 or
 * fails the parser. Ordinary bytes go through a tight loop: only CR, LF,
 * NUL and blanks at the start of a line need a decision. */
static int scan_head(kr__http_parser *p, const uint8_t *d, size_t n,
                     size_t *end) {
  size_t room = p->lim.max_head - p->head_bytes; /* never negative */
  size_t stop = n < room ? n : room;
  int prev_cr = p->sc_prev_cr, line = p->sc_line, started = p->sc_started;
  size_t i = 0;
  int rc = 0;
  *end = n;
  while (i < stop) {
    uint8_t c = d[i];
    if (prev_cr) {
      if (c != '\n') {
        rc = fail(p, KR_EPROTO, "CR without LF in header");
        break;
      }
      prev_cr = 0;
      i++;
      if (!line && started) {
        p->scanning = 0;
        *end = i;
        break;
      }
      line = 0;
      continue;
    }
    if (c > ' ') {
      line = started = 1;
      i++;
      while (i < stop && d[i] > '\r')
        i++;
      continue;
    }
    if (c == '\r') {
      prev_cr = 1;
    } else if (c == '\n') {
      rc = fail(p, KR_EPROTO, "bare LF in header");
      break;
    } else if (c == '\0') {
      rc = fail(p, KR_EPROTO, "NUL byte in header");
      break;
    } else {
      if ((c == ' ' || c == '\t') && !line && started) {
        rc = fail(p, KR_EPROTO, "obsolete line folding");
        break;
      }
      line = started = 1;
    }
    i++;
  }
  p->head_bytes += i;
  p->sc_prev_cr = prev_cr;
  p->sc_line = line;
  p->sc_started = started;
  if (rc == 0 && p->scanning && i == room && i < n)
    rc = fail(p, KR_ETOOBIG, too_large(p));
  return rc;
}

static int hexval(uint8_t c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = (uint8_t)lower(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Runs the guard over d[0..n). Returns how many bytes are acceptable: n, or the
 * offset of the first bad byte with g->why and g->err set. Turns itself off
 * after the final CRLF of the chunked body. Only framing bytes are looked at;
 * chunk data is skipped by count. */
static size_t guard_scan(chunk_guard *g, const uint8_t *d, size_t n) {
  size_t i = 0;
  while (i < n && g->state != G_OFF) {
    uint8_t c = d[i];
    switch (g->state) {
    case G_SIZE0:
    case G_SIZE: {
      int v = hexval(c);
      if (v >= 0) {
        if (g->left > (UINT64_MAX >> 4))
          goto bad_size;
        g->left = (g->left << 4) | (uint64_t)v;
        g->state = G_SIZE;
      } else if (g->state == G_SIZE0) {
        goto bad_size;
      } else if (c == ';' || c == ' ') {
        g->state = G_EXT;
      } else if (c == '\r') {
        g->state = G_SIZE_LF;
      } else {
        goto bad_size;
      }
      break;
    }
    case G_EXT:
      if (c == '\r')
        g->state = G_SIZE_LF;
      else if ((c < 0x20 && c != '\t') || c == 0x7f)
        goto bad_ext;
      break;
    case G_SIZE_LF:
      if (c != '\n')
        goto bad_ext;
      g->line = 0;
      g->state = g->left ? G_DATA : G_TR_START;
      break;
    case G_DATA: {
      uint64_t avail = n - i;
      uint64_t take = g->left < avail ? g->left : avail;
      g->left -= take;
      i += (size_t)take;
      if (g->left == 0)
        g->state = G_DATA_CR;
      continue; /* i already advanced */
    }
    case G_DATA_CR:
      if (c != '\r')
        goto bad_data;
      g->state = G_DATA_LF;
      break;
    case G_DATA_LF:
      if (c != '\n')
        goto bad_data;
      g->state = G_SIZE0;
      break;
    case G_TR_START:
      if (c == '\r') {
        g->state = G_END_LF;
      } else if (c == ' ' || c == '\t') {
        g->why = "obsolete line folding";
        goto bad;
      } else if (c == '\n' || c == 0) {
        goto bad_trailer;
      } else {
        g->state = G_TR_LINE;
      }
      break;
    case G_TR_LINE:
      if (c == '\r')
        g->state = G_TR_LF;
      else if (c == '\n' || c == 0)
        goto bad_trailer;
      break;
    case G_TR_LF:
    case G_END_LF:
      if (c != '\n')
        goto bad_trailer;
      g->state = g->state == G_END_LF ? G_OFF : G_TR_START;
      break;
    default:
      break;
    }
    /* Chunk lines and the trailer section are bounded like a head. */
    if (g->state == G_SIZE || g->state == G_EXT) {
      if (++g->line > MAX_CHUNK_LINE) {
        g->why = "chunk line too long";
        g->err = KR_ETOOBIG;
        return i;
      }
    } else if (g->state >= G_TR_START && g->state != G_OFF) {
      if (++g->line > g->max_trailer) {
        g->why = "trailer too large";
        g->err = KR_ETOOBIG;
        return i;
      }
    }
    if (g->state == G_SIZE0)
      g->left = 0, g->line = 0;
    i++;
  }
  return n;
bad_size:
  g->why = "bad chunk size";
  goto bad;
bad_ext:
  g->why = "bad chunk extension";
  goto bad;
bad_data:
  g->why = "chunk data not followed by CRLF";
  goto bad;
bad_trailer:
  g->why = "bad trailer";
bad:
  g->err = KR_EPROTO;
  return i;
}

/* Records a callback's failure so feed() can return it; libhttp-parser
 * stops on any non-zero return. */
static int cb_fail(kr__http_parser *p, int err, const char *reason) {
  fail(p, err, reason);
  return -1;
}

/* -------------------------------------------------------------- callbacks */

static int on_message_begin(http_parser *hp) {
  kr__http_parser *p = hp->data;
  p->in_msg = 1;
  return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n) {
  kr__http_parser *p = hp->data;
  int rc = arena_put(p, at, n, 0);
  if (rc < 0)
    return cb_fail(p, rc, why(p, rc));
  p->url_len += n;
  p->last = LAST_URL;
  return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t n) {
  kr__http_parser *p = hp->data;
  if (p->head_done) { /* a trailer field: counted, then dropped */
    p->trailer_bytes += n;
    if (p->trailer_bytes > p->lim.max_head)
      return cb_fail(p, KR_ETOOBIG, "trailer too large");
    return 0;
  }
  int rc;
  if (p->last != LAST_FIELD) {
    if ((rc = close_token(p)) < 0)
      return cb_fail(p, rc, why(p, rc));
    if (p->nref >= p->lim.max_fields)
      return cb_fail(p, KR_ETOOBIG, "too many header fields");
    if (p->nref == p->refcap) {
      size_t cap = p->refcap ? p->refcap * 2 : 16;
      if (cap > p->lim.max_fields)
        cap = p->lim.max_fields;
      field_ref *r = realloc(p->refs, cap * sizeof(*r));
      if (r == NULL)
        return cb_fail(p, KR_ENOMEM, "out of memory");
      p->refs = r;
      kr_md *m = realloc(p->md, cap * sizeof(*m));
      if (m == NULL)
        return cb_fail(p, KR_ENOMEM, "out of memory");
      p->md = m;
      p->refcap = cap;
    }
    field_ref *f = &p->refs[p->nref++];
    f->name_off = p->alen;
    f->name_len = 0;
    f->value_off = 0;
    f->value_len = 0;
    p->last = LAST_FIELD;
  }
  if ((rc = arena_put(p, at, n, 1)) < 0)
    return cb_fail(p, rc, why(p, rc));
  p->refs[p->nref - 1].name_len += n;
  return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t n) {
  kr__http_parser *p = hp->data;
  if (p->head_done) {
    p->trailer_bytes += n;
    if (p->trailer_bytes > p->lim.max_head)
      return cb_fail(p, KR_ETOOBIG, "trailer too large");
    return 0;
  }
  int rc;
  if (p->last != LAST_VALUE) {
    /* libhttp-parser reports a value only after its name. */
    if (p->last != LAST_FIELD)
      return cb_fail(p, KR_EPROTO, "bad header field");
    if ((rc = arena_nul(p)) < 0)
      return cb_fail(p, rc, why(p, rc));
    p->refs[p->nref - 1].value_off = p->alen;
    p->last = LAST_VALUE;
  }
  if ((rc = arena_put(p, at, n, 0)) < 0)
    return cb_fail(p, rc, why(p, rc));
  p->refs[p->nref - 1].value_len += n;
  return 0;
}

/* Every Transfer-Encoding field together must name exactly one coding,
 * "chunked": kas and the agent remove the framing and frame the body
 * again, so any other coding would be lost on the way (and libhttp-parser
 * accepts "gzip, chunked"). Returns 1 when acceptable. */
static int te_ok(const kr__http_head *h) {
  int chunked = 0;
  for (size_t i = 0; i < h->n_fields; i++) {
    const kr_md *f = &h->fields[i];
    if (f->name_len != 17 || memcmp(f->name, "transfer-encoding", 17) != 0)
      continue;
    const char *v = (const char *)f->value;
    size_t n = f->value_len, j = 0;
    while (j <= n) {
      size_t k = j;
      while (k < n && v[k] != ',')
        k++;
      size_t a = j, b = k;
      while (a < b && (v[a] == ' ' || v[a] == '\t'))
        a++;
      while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
        b--;
      if (b > a) {
        if (!ieq(v + a, b - a, "chunked") || chunked)
          return 0;
        chunked = 1;
      }
      j = k + 1;
    }
  }
  return 1;
}

/* Builds p->head from the collected pieces and checks it. Returns 0 or
 * fails the parser. */
static int finish_head(kr__http_parser *p) {
  http_parser *hp = &p->hp;
  kr__http_head *h = &p->head;
  int rc = close_token(p);
  if (rc < 0)
    return fail(p, rc, why(p, rc));

  h->is_request = p->is_request;
  h->http_major = hp->http_major;
  h->http_minor = hp->http_minor;
  if (hp->http_major != 1)
    return fail(p, KR_EPROTO, "unsupported HTTP version");

  size_t hosts = 0;
  for (size_t i = 0; i < p->nref; i++) {
    field_ref *f = &p->refs[i];
    const char *name = p->arena + f->name_off;
    if (f->name_len == 0)
      return fail(p, KR_EPROTO, "empty header field name");
    for (size_t j = 0; j < f->name_len; j++) {
      if (!kr__http_is_tchar((unsigned char)name[j]))
        return fail(p, KR_EPROTO, "bad header field name");
    }
    char *v = p->arena + f->value_off;
    size_t a = 0, b = f->value_len;
    while (a < b && (v[a] == ' ' || v[a] == '\t'))
      a++;
    while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
      b--;
    v[b] = '\0';
    p->md[i].name = (const uint8_t *)name;
    p->md[i].name_len = f->name_len;
    p->md[i].value = (const uint8_t *)v + a;
    p->md[i].value_len = b - a;
    if (f->name_len == 4 && memcmp(name, "host", 4) == 0)
      hosts++;
    if (p->is_request && f->name_len == 6 && memcmp(name, "expect", 6) == 0 &&
        ieq(v + a, b - a, "100-continue") && hp->http_minor >= 1)
      h->expect_continue = 1;
  }
  h->fields = p->nref ? p->md : NULL;
  h->n_fields = p->nref;

  if (!te_ok(h))
    return fail(p, KR_EPROTO, "unsupported transfer-encoding");
  h->chunked = (hp->flags & F_CHUNKED) != 0;
  h->content_length = -1;
  if (hp->flags & F_CONTENTLENGTH) {
    if (hp->content_length > (uint64_t)INT64_MAX)
      return fail(p, KR_EPROTO, "bad content-length");
    h->content_length = (int64_t)hp->content_length;
  }
  h->keep_alive = http_should_keep_alive(hp) != 0;

  if (p->is_request) {
    if (hp->method == HTTP_CONNECT)
      return fail(p, KR_EPROTO, "CONNECT not supported");
    /* RFC 9112 section 3.2: exactly one Host in HTTP/1.1, at most one
     * before; anything else is answered 400. */
    if (hosts > 1 || (hosts == 0 && hp->http_minor >= 1))
      return fail(p, KR_EPROTO, "missing or repeated host");
    h->method = http_method_str((enum http_method)hp->method);
    h->is_head = hp->method == HTTP_HEAD;
    h->target = p->arena; /* the URL is the arena's first token */
    h->target_len = p->url_len;
    h->upgrade = hp->upgrade != 0;
    h->has_body = !h->upgrade && (h->chunked || h->content_length > 0);
  } else {
    int st = (int)hp->status_code;
    if (st < 100 || st > 599)
      return fail(p, KR_EPROTO, "bad status code");
    h->status = st;
    h->upgrade = st == 101;
    h->has_body = !(st < 200 || st == 204 || st == 304 || p->expect_head ||
                    h->content_length == 0);
  }
  return 0;
}

/* Returns 0 (read the body as framed), 1 (no body) or 2 (upgrade: stop
 * after the head), -1 on failure, as libhttp-parser wants. */
static int on_headers_complete(http_parser *hp) {
  kr__http_parser *p = hp->data;
  if (finish_head(p) < 0)
    return -1;
  p->head_done = 1;
  p->scanning = 0;
  kr__http_head *h = &p->head;
  int rc = p->cbs.on_head ? p->cbs.on_head(h, p->ud) : 0;
  if (rc < 0)
    return cb_fail(p, rc, kr_strerror(rc));
  if (p->is_request) {
    if (h->upgrade)
      return 1; /* an upgrade's body bytes are raw too */
  } else {
    if (h->upgrade)
      return 2;
    if (rc == KR__HTTP_NO_BODY)
      h->has_body = 0;
    if (!h->has_body)
      return 1;
  }
  if (h->chunked) {
    p->guard.state = G_SIZE0;
    p->guard.left = 0;
    p->guard.line = 0;
    p->guard.max_trailer = p->lim.max_head;
  }
  return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n) {
  kr__http_parser *p = hp->data;
  if (n == 0 || p->cbs.on_body == NULL)
    return 0;
  int rc = p->cbs.on_body((const uint8_t *)at, n, p->ud);
  if (rc < 0)
    return cb_fail(p, rc, kr_strerror(rc));
  if (rc == KR__HTTP_PAUSE) {
    http_parser_pause(hp, 1);
    p->paused = 1;
  }
  return 0;
}

static int on_message_complete(http_parser *hp) {
  kr__http_parser *p = hp->data;
  p->in_msg = 0;
  if (p->head.upgrade) {
    /* libhttp-parser returns right after this; nothing more is HTTP. */
    p->finished = 1;
    return 0;
  }
  p->ended = 1;
  int rc = p->cbs.on_end ? p->cbs.on_end(p->ud) : 0;
  if (rc < 0)
    return cb_fail(p, rc, kr_strerror(rc));
  http_parser_pause(hp, 1);
  p->paused = 1;
  return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ------------------------------------------------------------------ API */

int kr__http_parser_new(kr__http_parser **out, int is_request,
                        const kr__http_limits *limits,
                        const kr__http_parser_cbs *cbs, void *ud) {
  kr__http_parser *p = calloc(1, sizeof(*p));
  if (p == NULL)
    return KR_ENOMEM;
  p->is_request = is_request != 0;
  p->lim.max_head = KR__HTTP_DEFAULT_MAX_HEAD;
  p->lim.max_fields = KR__HTTP_DEFAULT_MAX_FIELDS;
  if (limits != NULL) {
    if (limits->max_head > 0)
      p->lim.max_head = limits->max_head;
    if (limits->max_fields > 0)
      p->lim.max_fields = limits->max_fields;
  }
  /* Caps that keep the arena arithmetic far from overflow. */
  if (p->lim.max_head > KR__HTTP_MAX_LIMIT)
    p->lim.max_head = KR__HTTP_MAX_LIMIT;
  if (p->lim.max_fields > KR__HTTP_MAX_LIMIT / 64)
    p->lim.max_fields = KR__HTTP_MAX_LIMIT / 64;
  /* Target and names and values are head bytes; each adds one NUL. */
  p->arena_max = p->lim.max_head + 2 * p->lim.max_fields + 2;
  if (cbs != NULL)
    p->cbs = *cbs;
  p->ud = ud;
  http_parser_init(&p->hp, p->is_request ? HTTP_REQUEST : HTTP_RESPONSE);
  p->hp.data = p;
  begin_head(p);
  *out = p;
  return 0;
}

void kr__http_parser_free(kr__http_parser *p) {
  if (p == NULL)
    return;
  free(p->arena);
  free(p->refs);
  free(p->md);
  free(p);
}

static void do_resume(kr__http_parser *p) {
  if (p->dead || !p->paused)
    return;
  if (p->ended) {
    if (!p->is_request && p->head.status >= 200)
      p->expect_head = 0;
    if (!p->head.keep_alive && (p->is_request || p->head.status >= 200))
      p->closed = 1;
    p->ended = 0;
    begin_head(p);
  }
  p->paused = 0;
  http_parser_pause(&p->hp, 0);
}

void kr__http_parser_resume(kr__http_parser *p) {
  if (p->in_exec)
    p->resume_wanted = 1;
  else
    do_resume(p);
}

/* Maps a libhttp-parser error to a code and a reason that never quotes
 * input. */
static int map_error(kr__http_parser *p, enum http_errno e) {
  switch (e) {
  case HPE_HEADER_OVERFLOW:
    return fail(p, KR_ETOOBIG, too_large(p));
  case HPE_INVALID_CONTENT_LENGTH:
    return fail(p, KR_EPROTO, "bad content-length");
  case HPE_UNEXPECTED_CONTENT_LENGTH:
    return fail(p, KR_EPROTO,
                "repeated content-length or both content-length and "
                "transfer-encoding");
  case HPE_INVALID_TRANSFER_ENCODING:
    return fail(p, KR_EPROTO, "unsupported transfer-encoding");
  case HPE_INVALID_CHUNK_SIZE:
    return fail(p, KR_EPROTO, "bad chunk size");
  case HPE_INVALID_METHOD:
    return fail(p, KR_EPROTO, "bad method");
  case HPE_INVALID_URL:
    return fail(p, KR_EPROTO, "bad request target");
  case HPE_INVALID_VERSION:
    return fail(p, KR_EPROTO, "bad HTTP version");
  case HPE_INVALID_STATUS:
    return fail(p, KR_EPROTO, "bad status code");
  case HPE_INVALID_HEADER_TOKEN:
    return fail(p, KR_EPROTO, "bad header field");
  case HPE_CLOSED_CONNECTION:
    return fail(p, KR_EPROTO, "data after the last message");
  case HPE_INVALID_EOF_STATE:
    return fail(p, KR_EPROTO, "message cut short");
  default:
    /* libhttp-parser's descriptions are fixed strings. */
    return fail(p, KR_EPROTO, http_errno_description(e));
  }
}

/* Each pass hands libhttp-parser only bytes the scanners accepted: a head
 * alone (so the chunk guard, armed by on_headers_complete, sees the body
 * from its first byte), or body bytes up to the first bad framing byte.
 * The guard runs ahead on a copy and is then advanced by exactly what
 * libhttp-parser consumed, so a pause never leaves it out of step. */
int64_t kr__http_parser_feed(kr__http_parser *p, const uint8_t *data,
                             size_t n) {
  if (p->dead)
    return p->err;
  if (p->finished)
    return KR_ESTATE;
  if (p->closed && n > 0 && !p->paused)
    return fail(p, KR_EPROTO, "data after the last message");
  size_t total = 0;
  while (total < n && !p->paused && !p->finished) {
    const uint8_t *d = data + total;
    size_t len = n - total, lim = len;
    int guarded = 0;
    if (p->scanning) {
      if (scan_head(p, d, len, &lim) < 0)
        return p->err;
    } else if (p->guard.state != G_OFF) {
      chunk_guard ahead = p->guard;
      lim = guard_scan(&ahead, d, len);
      if (lim == 0)
        return fail(p, ahead.err, ahead.why);
      guarded = 1;
    }
    p->in_exec = 1;
    size_t r = http_parser_execute(&p->hp, &settings, (const char *)d, lim);
    p->in_exec = 0;
    if (p->dead)
      return p->err;
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    if (e != HPE_OK && e != HPE_PAUSED)
      return map_error(p, e);
    if (guarded)
      guard_scan(&p->guard, d, r);
    total += r;
    /* libhttp-parser stops short only when paused or upgraded. */
    if (r < lim && !p->paused && !p->finished)
      return fail(p, KR_EPROTO, "malformed message");
    if (p->resume_wanted) {
      p->resume_wanted = 0;
      do_resume(p);
    }
    if (p->closed && total < n)
      return fail(p, KR_EPROTO, "data after the last message");
  }
  return (int64_t)total;
}

int kr__http_parser_eof(kr__http_parser *p) {
  if (p->dead)
    return p->err;
  if (p->finished || !p->in_msg)
    return 0;
  if (p->paused && !p->ended) { /* no more body is coming anyway */
    p->paused = 0;
    http_parser_pause(&p->hp, 0);
  }
  p->in_exec = 1;
  http_parser_execute(&p->hp, &settings, NULL, 0);
  p->in_exec = 0;
  if (p->dead)
    return p->err;
  enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
  if (e != HPE_OK && e != HPE_PAUSED)
    return map_error(p, e);
  if (p->in_msg) /* libhttp-parser accepted the end but on_end did not run */
    return fail(p, KR_EPROTO, "message cut short");
  if (p->resume_wanted) {
    p->resume_wanted = 0;
    do_resume(p);
  }
  return 0;
}

void kr__http_parser_expect_head_response(kr__http_parser *p, int on) {
  p->expect_head = on != 0;
}

int kr__http_parser_in_message(const kr__http_parser *p) {
  return p->in_msg;
}

const char *kr__http_parser_error(const kr__http_parser *p) {
  return p->dead && p->reason ? p->reason : "";
}
