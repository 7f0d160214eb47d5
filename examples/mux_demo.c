/* mux_demo: two kr_mux instances talking to each other in memory.
 *
 * A dialer and an acceptor are wired back to back: whatever one gives out
 * through kr_mux_send()/kr_mux_sent() is carried over an in-memory "wire"
 * into kr_mux_recv() of the other, in chunks, as a transport would. The
 * dialer opens a few streams to an "echo" service with metadata, the
 * acceptor replies and echoes every byte back, both sides half-close, the
 * dialer measures a PING round trip and ends with a GOAWAY. One stream asks
 * for a service that does not exist and is reset by the acceptor.
 *
 * The program uses the public API only. It exits 0 only if every echo came
 * back byte-exact, every stream ended as expected and both muxes finished
 * cleanly.
 *
 * Flow control is visible only in effect: the largest stream is bigger than
 * the default 2 MiB stream window, so it completes only because the
 * acceptor (and then the dialer) return credit with kr_stream_consume() as
 * they finish with the bytes.
 */
#define _POSIX_C_SOURCE 200809L

#include <kasroute/kasroute.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEMO_SEED UINT64_C(0x6b617372) /* fixed: runs are reproducible */
#define WIRE_CHUNK 16384               /* bytes handed to kr_mux_recv at once */
#define MAX_ROUNDS 1000000             /* guard against a livelock */

static kr_time_us now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (kr_time_us)ts.tv_sec * 1000000u + (kr_time_us)ts.tv_nsec / 1000u;
}

static void say(const char *who, const char *fmt, ...) {
  va_list ap;
  printf("%-9s ", who);
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "mux_demo: out of memory\n");
    exit(2);
  }
  return p;
}

static kr_md md_str(const char *name, const char *value) {
  kr_md m;
  m.name = (const uint8_t *)name;
  m.name_len = strlen(name);
  m.value = (const uint8_t *)value;
  m.value_len = strlen(value);
  return m;
}

/* 1 if entry md has the given name and value. */
static int md_is(const kr_md *md, const char *name, const char *value) {
  return md->name_len == strlen(name) &&
         memcmp(md->name, name, md->name_len) == 0 &&
         md->value_len == strlen(value) &&
         memcmp(md->value, value, md->value_len) == 0;
}

static void md_print(const char *who, const char *what, const kr_md *md,
                     size_t n) {
  char line[512];
  size_t used = 0;
  line[0] = '\0';
  for (size_t i = 0; i < n && used < sizeof line; i++) {
    int w = snprintf(line + used, sizeof line - used, " %.*s=%.*s",
                     (int)md[i].name_len, (const char *)md[i].name,
                     (int)md[i].value_len, (const char *)md[i].value);
    if (w < 0)
      break;
    used += (size_t)w;
  }
  say(who, "%s%s", what, n ? line : " (no metadata)");
}

/* ------------------------------------------------------------- the wire */

/* One direction of the in-memory transport: bytes taken from the sending
 * mux wait here until the receiving mux wants to read. It grows as needed;
 * the muxes' flow control is what bounds it. */
typedef struct wire {
  uint8_t *buf;
  size_t len;
  size_t cap;
  uint64_t total;
} wire;

static void wire_push(wire *w, const uint8_t *p, size_t n) {
  if (w->len + n > w->cap) {
    size_t cap = w->cap ? w->cap : 65536;
    while (cap < w->len + n)
      cap *= 2;
    uint8_t *nb = realloc(w->buf, cap);
    if (!nb) {
      fprintf(stderr, "mux_demo: out of memory\n");
      exit(2);
    }
    w->buf = nb;
    w->cap = cap;
  }
  memcpy(w->buf + w->len, p, n);
  w->len += n;
  w->total += n;
}

/* Moves everything `from` has to send onto the wire. Returns bytes moved. */
static size_t drain(kr_mux *from, wire *w) {
  size_t moved = 0;
  const uint8_t *p;
  size_t n;
  while ((n = kr_mux_send(from, &p)) > 0) {
    wire_push(w, p, n);
    if (kr_mux_sent(from, n) != 0) {
      fprintf(stderr, "mux_demo: kr_mux_sent refused %zu bytes\n", n);
      exit(2);
    }
    moved += n;
  }
  return moved;
}

/* Feeds wire bytes to `to` in WIRE_CHUNK pieces while it wants to read.
 * Returns bytes fed, or -1 when the receiving mux failed. */
static int64_t feed(kr_mux *to, const char *who, wire *w) {
  size_t off = 0;
  while (off < w->len && kr_mux_want_read(to)) {
    size_t n = w->len - off;
    if (n > WIRE_CHUNK)
      n = WIRE_CHUNK;
    int64_t r = kr_mux_recv(to, w->buf + off, n, now_us());
    if (r < 0) {
      say(who, "kr_mux_recv failed: %s (%s)", kr_err_name((int)r),
          kr_strerror((int)r));
      return -1;
    }
    off += n;
  }
  memmove(w->buf, w->buf + off, w->len - off);
  w->len -= off;
  return (int64_t)off;
}

/* --------------------------------------------------------------- dialer */

typedef struct dstream {
  const char *service;
  const char *path;
  size_t size;          /* bytes to send and expect back */
  uint32_t expect_code; /* how the stream should end */
  uint8_t *data;        /* what was sent */
  size_t written;       /* accepted by kr_stream_write */
  size_t received;      /* echoed bytes seen so far */
  size_t mismatch_at;   /* first differing offset + 1, 0 if none */
  int replied;
  char status[8];
  int fin_received;
  int closed;
  uint32_t close_code;
  uint32_t id;
} dstream;

typedef struct dialer {
  dstream streams[4];
  size_t nstreams;
  size_t nclosed;
  int failed;
  int goaway_sent;
  int pinged;
  kr_time_us rtt;
} dialer;

/* Writes as much of the stream's data as the mux accepts; half-closes once
 * everything is accepted. The rest continues from on_writable. */
static void dialer_pump_stream(kr_stream *s, dstream *ds, dialer *d) {
  while (ds->written < ds->size) {
    int64_t r =
        kr_stream_write(s, ds->data + ds->written, ds->size - ds->written);
    if (r == KR_EAGAIN || r == 0)
      return; /* on_writable continues */
    if (r < 0) {
      say("dialer", "stream %" PRIu32 ": write failed: %s", ds->id,
          kr_err_name((int)r));
      d->failed = 1;
      return;
    }
    ds->written += (size_t)r;
  }
  if (ds->written == ds->size && ds->size > 0) {
    int r = kr_stream_close_write(s);
    if (r == 0)
      ds->written++; /* marks FIN as sent: written == size + 1 */
    else if (r != KR_ESTATE) {
      say("dialer", "stream %" PRIu32 ": close_write failed: %s", ds->id,
          kr_err_name(r));
      d->failed = 1;
    }
  }
}

/* Opens the demo streams and starts writing. */
static void dialer_open_streams(kr_mux *m, dialer *d) {
  for (size_t i = 0; i < d->nstreams; i++) {
    dstream *ds = &d->streams[i];
    char size_text[32];
    snprintf(size_text, sizeof size_text, "%zu", ds->size);
    kr_md req[4] = {md_str(KR_MD_SERVICE, ds->service),
                    md_str(KR_MD_METHOD, "POST"), md_str(KR_MD_PATH, ds->path),
                    md_str("content-length", size_text)};
    kr_stream *s = NULL;
    int r = kr_stream_open(m, req, 4, ds->size == 0, ds, &s);
    if (r != 0) {
      say("dialer", "kr_stream_open(%s): %s", ds->path, kr_err_name(r));
      d->failed = 1;
      return;
    }
    ds->id = kr_stream_id(s);
    say("dialer",
        "stream %" PRIu32 ": opened :service=%s :path=%s, "
        "%zu bytes to send",
        ds->id, ds->service, ds->path, ds->size);
    dialer_pump_stream(s, ds, d);
  }
}

/* Handshake done: measure the round trip on the idle connection first;
 * the streams open when the answer arrives (dialer_on_ping). */
static void dialer_on_hello(kr_mux *m, const kr_md *md, size_t n,
                            void *user_data) {
  dialer *d = user_data;
  md_print("dialer", "handshake done; peer HELLO:", md, n);
  int r = kr_mux_ping(m, now_us());
  if (r != 0) {
    say("dialer", "kr_mux_ping: %s", kr_err_name(r));
    d->failed = 1;
    dialer_open_streams(m, d);
  }
}

static void dialer_on_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                            void *user_data) {
  dstream *ds = kr_stream_user_data(s);
  (void)fin;
  (void)user_data;
  ds->replied = 1;
  for (size_t i = 0; i < n; i++)
    if (md[i].name_len == strlen(KR_MD_STATUS) &&
        memcmp(md[i].name, KR_MD_STATUS, md[i].name_len) == 0 &&
        md[i].value_len < sizeof ds->status) {
      memcpy(ds->status, md[i].value, md[i].value_len);
      ds->status[md[i].value_len] = '\0';
    }
  char what[64];
  snprintf(what, sizeof what, "stream %" PRIu32 ": reply:", ds->id);
  md_print("dialer", what, md, n);
}

static void dialer_on_data(kr_stream *s, const uint8_t *data, size_t len,
                           void *user_data) {
  dstream *ds = kr_stream_user_data(s);
  dialer *d = user_data;
  if (ds->received + len > ds->size) {
    say("dialer", "stream %" PRIu32 ": %zu bytes more than were sent", ds->id,
        ds->received + len - ds->size);
    d->failed = 1;
  } else if (!ds->mismatch_at &&
             memcmp(data, ds->data + ds->received, len) != 0) {
    for (size_t i = 0; i < len; i++)
      if (data[i] != ds->data[ds->received + i]) {
        ds->mismatch_at = ds->received + i + 1;
        break;
      }
  }
  ds->received += len;
  /* Checked and no longer held: return the credit. */
  int r = kr_stream_consume(s, len);
  if (r != 0) {
    say("dialer", "kr_stream_consume: %s", kr_err_name(r));
    d->failed = 1;
  }
}

static void dialer_on_fin(kr_stream *s, void *user_data) {
  dstream *ds = kr_stream_user_data(s);
  (void)user_data;
  ds->fin_received = 1;
  say("dialer", "stream %" PRIu32 ": peer half-closed after %zu bytes", ds->id,
      ds->received);
}

static void dialer_on_writable(kr_stream *s, void *user_data) {
  dialer_pump_stream(s, kr_stream_user_data(s), user_data);
}

static void dialer_on_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                            size_t reason_len, void *user_data) {
  dstream *ds = kr_stream_user_data(s);
  dialer *d = user_data;
  ds->closed = 1;
  ds->close_code = code;
  d->nclosed++;
  say("dialer", "stream %" PRIu32 ": closed: %s%s%.*s%s", ds->id,
      kr_code_name(code), reason_len ? " (\"" : "", (int)reason_len,
      (const char *)reason, reason_len ? "\")" : "");

  /* Every stream ended: drain the connection. */
  if (d->nclosed == d->nstreams && !d->goaway_sent) {
    kr_mux *m = kr_stream_mux(s);
    int r = kr_mux_goaway(m, KR_CODE_NO_ERROR, "demo finished");
    if (r != 0) {
      say("dialer", "kr_mux_goaway: %s", kr_err_name(r));
      d->failed = 1;
    }
    d->goaway_sent = 1;
  }
}

static void dialer_on_ping(kr_mux *m, kr_time_us rtt, void *user_data) {
  dialer *d = user_data;
  d->rtt = rtt;
  say("dialer", "PING answered: round trip %" PRIu64 " us (idle connection)",
      rtt);
  if (!d->pinged) {
    d->pinged = 1;
    dialer_open_streams(m, d);
  }
}

static void on_goaway(const char *who, int remote, uint32_t code,
                      const uint8_t *reason, size_t reason_len) {
  say(who, "GOAWAY %s: %s \"%.*s\"", remote ? "received" : "sent",
      kr_code_name(code), (int)reason_len, (const char *)reason);
}

static void dialer_on_goaway(kr_mux *m, int remote, uint32_t code,
                             const uint8_t *reason, size_t reason_len,
                             void *user_data) {
  dialer *d = user_data;
  (void)m;
  on_goaway("dialer", remote, code, reason, reason_len);
  if (code != KR_CODE_NO_ERROR)
    d->failed = 1;
}

/* ------------------------------------------------------------- acceptor */

/* Echo state of one stream. Bytes that kr_stream_write() did not accept
 * are copied here and stay unconsumed until written, so the dialer's window
 * closes instead of this side buffering without bound. */
typedef struct astream {
  uint8_t *pending;
  size_t pending_len;
  size_t pending_cap;
  uint64_t echoed;
  int fin_received;
  int fin_sent;
} astream;

typedef struct acceptor {
  int failed;
  size_t opened;
  size_t refused;
} acceptor;

/* Writes pending bytes; consumes what the mux accepted; sends FIN once the
 * peer has finished and everything went out. */
static void acceptor_flush(kr_stream *s, astream *as, acceptor *a) {
  size_t off = 0;
  while (off < as->pending_len) {
    int64_t r = kr_stream_write(s, as->pending + off, as->pending_len - off);
    if (r == KR_EAGAIN || r == 0)
      break;
    if (r < 0) {
      say("acceptor", "stream %" PRIu32 ": write failed: %s", kr_stream_id(s),
          kr_err_name((int)r));
      a->failed = 1;
      return;
    }
    off += (size_t)r;
  }
  if (off) {
    memmove(as->pending, as->pending + off, as->pending_len - off);
    as->pending_len -= off;
    as->echoed += off;
    int r = kr_stream_consume(s, off);
    if (r != 0) {
      say("acceptor", "kr_stream_consume: %s", kr_err_name(r));
      a->failed = 1;
    }
  }
  if (as->fin_received && !as->fin_sent && as->pending_len == 0) {
    /* Both directions are finished once this FIN is queued, so on_close
     * may run (and free as) before kr_stream_close_write() returns: as is
     * not touched after the call. */
    as->fin_sent = 1;
    int r = kr_stream_close_write(s);
    if (r != 0) {
      say("acceptor", "kr_stream_close_write: %s", kr_err_name(r));
      a->failed = 1;
    }
  }
}

static void acceptor_on_hello(kr_mux *m, const kr_md *md, size_t n,
                              void *user_data) {
  acceptor *a = user_data;
  (void)m;
  md_print("acceptor", "handshake done; peer HELLO:", md, n);
  int named = 0;
  for (size_t i = 0; i < n; i++)
    named |= md_is(&md[i], KR_MD_NAME, "mux-demo-dialer");
  if (!named) {
    say("acceptor", "expected :name=mux-demo-dialer in HELLO");
    a->failed = 1;
  }
}

static void acceptor_on_open(kr_mux *m, kr_stream *s, const kr_md *md, size_t n,
                             int fin, void *user_data) {
  acceptor *a = user_data;
  (void)m;
  char what[64];
  snprintf(what, sizeof what,
           "stream %" PRIu32 ": peer opened%s:", kr_stream_id(s),
           fin ? " (no data)" : "");
  md_print("acceptor", what, md, n);
  a->opened++;

  int echo = 0;
  for (size_t i = 0; i < n; i++)
    echo |= md_is(&md[i], KR_MD_SERVICE, "echo");
  if (!echo) {
    a->refused++;
    int r = kr_stream_reset(s, KR_CODE_NOT_FOUND, "no such service");
    if (r != 0)
      a->failed = 1;
    return;
  }

  astream *as = xmalloc(sizeof *as);
  memset(as, 0, sizeof *as);
  as->fin_received = fin;
  kr_stream_set_user_data(s, as);
  kr_md head[2] = {md_str(KR_MD_STATUS, "200"),
                   md_str("content-type", "application/octet-stream")};
  int r = kr_stream_reply(s, head, 2, 0);
  if (r != 0) {
    say("acceptor", "kr_stream_reply: %s", kr_err_name(r));
    a->failed = 1;
    return;
  }
  acceptor_flush(s, as, a); /* sends FIN at once for a data-less stream */
}

static void acceptor_on_data(kr_stream *s, const uint8_t *data, size_t len,
                             void *user_data) {
  astream *as = kr_stream_user_data(s);
  acceptor *a = user_data;
  if (!as) { /* a refused stream: nothing is delivered for it */
    a->failed = 1;
    return;
  }
  size_t off = 0;
  if (as->pending_len == 0) {
    /* Echo straight from the delivered buffer; consume what was taken. */
    while (off < len) {
      int64_t r = kr_stream_write(s, data + off, len - off);
      if (r == KR_EAGAIN || r == 0)
        break;
      if (r < 0) {
        say("acceptor", "write failed: %s", kr_err_name((int)r));
        a->failed = 1;
        return;
      }
      off += (size_t)r;
    }
    if (off) {
      as->echoed += off;
      int r = kr_stream_consume(s, off);
      if (r != 0) {
        say("acceptor", "kr_stream_consume: %s", kr_err_name(r));
        a->failed = 1;
      }
    }
  }
  if (off < len) { /* hold the rest, unconsumed, until on_writable */
    size_t need = as->pending_len + (len - off);
    if (need > as->pending_cap) {
      size_t cap = as->pending_cap ? as->pending_cap : 65536;
      while (cap < need)
        cap *= 2;
      uint8_t *nb = realloc(as->pending, cap);
      if (!nb) {
        fprintf(stderr, "mux_demo: out of memory\n");
        exit(2);
      }
      as->pending = nb;
      as->pending_cap = cap;
    }
    memcpy(as->pending + as->pending_len, data + off, len - off);
    as->pending_len += len - off;
  }
}

static void acceptor_on_fin(kr_stream *s, void *user_data) {
  astream *as = kr_stream_user_data(s);
  if (!as)
    return;
  as->fin_received = 1;
  acceptor_flush(s, as, user_data);
}

static void acceptor_on_writable(kr_stream *s, void *user_data) {
  astream *as = kr_stream_user_data(s);
  if (as)
    acceptor_flush(s, as, user_data);
}

static void acceptor_on_close(kr_stream *s, uint32_t code,
                              const uint8_t *reason, size_t reason_len,
                              void *user_data) {
  astream *as = kr_stream_user_data(s);
  (void)user_data;
  if (as) {
    say("acceptor", "stream %" PRIu32 ": closed: %s, %" PRIu64 " bytes echoed",
        kr_stream_id(s), kr_code_name(code), as->echoed);
    free(as->pending);
    free(as);
    kr_stream_set_user_data(s, NULL);
  } else {
    say("acceptor", "stream %" PRIu32 ": closed: %s \"%.*s\"", kr_stream_id(s),
        kr_code_name(code), (int)reason_len, (const char *)reason);
  }
}

static void acceptor_on_goaway(kr_mux *m, int remote, uint32_t code,
                               const uint8_t *reason, size_t reason_len,
                               void *user_data) {
  acceptor *a = user_data;
  (void)m;
  on_goaway("acceptor", remote, code, reason, reason_len);
  if (code != KR_CODE_NO_ERROR)
    a->failed = 1;
}

/* ----------------------------------------------------------------- main */

static uint64_t rng_state = DEMO_SEED;
static uint8_t rng_byte(void) { /* xorshift64* */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (uint8_t)((rng_state * UINT64_C(2685821657736338717)) >> 56);
}

static int check(int r, const char *what) {
  if (r != 0) {
    fprintf(stderr, "mux_demo: %s: %s (%s)\n", what, kr_err_name(r),
            kr_strerror(r));
    exit(2);
  }
  return r;
}

static kr_mux *make_mux(kr_role role, const kr_md *hello, void *user_data,
                        const kr_mux_callbacks *cbs) {
  kr_mux_options *opt = NULL;
  kr_mux *m = NULL;
  check(kr_mux_options_new(&opt), "kr_mux_options_new");
  check(kr_mux_options_set_role(opt, role), "kr_mux_options_set_role");
  if (hello)
    check(kr_mux_options_add_hello(opt, hello), "kr_mux_options_add_hello");
  check(kr_mux_new(&m, opt, cbs, now_us(), user_data), "kr_mux_new");
  kr_mux_options_free(opt);
  return m;
}

int main(void) {
  printf("mux_demo: libkasroute %s (headers %s), protocol v%d, seed 0x%" PRIx64
         "\n",
         kr_version(), KR_VERSION_STRING, KR_PROTOCOL_VERSION, DEMO_SEED);
  if (strcmp(kr_version(), KR_VERSION_STRING) != 0) {
    fprintf(stderr, "mux_demo: header and library versions differ\n");
    return 1;
  }

  dialer d;
  acceptor a;
  memset(&d, 0, sizeof d);
  memset(&a, 0, sizeof a);
  d.streams[0] = (dstream){.service = "echo",
                           .path = "/greeting",
                           .size = 14,
                           .expect_code = KR_CODE_NO_ERROR};
  d.streams[1] = (dstream){.service = "echo",
                           .path = "/medium",
                           .size = 100000,
                           .expect_code = KR_CODE_NO_ERROR};
  /* Twice the default stream window: completes only if credit returns. */
  d.streams[2] = (dstream){.service = "echo",
                           .path = "/large",
                           .size = 4u << 20,
                           .expect_code = KR_CODE_NO_ERROR};
  d.streams[3] = (dstream){.service = "missing",
                           .path = "/",
                           .size = 0,
                           .expect_code = KR_CODE_NOT_FOUND};
  d.nstreams = 4;
  for (size_t i = 0; i < d.nstreams; i++) {
    dstream *ds = &d.streams[i];
    ds->data = xmalloc(ds->size);
    if (i == 0)
      memcpy(ds->data, "hello, world!\n", ds->size);
    else
      for (size_t j = 0; j < ds->size; j++)
        ds->data[j] = rng_byte();
  }

  kr_mux_callbacks *dc = NULL, *ac = NULL;
  check(kr_mux_callbacks_new(&dc), "kr_mux_callbacks_new");
  kr_mux_callbacks_set_on_hello(dc, dialer_on_hello);
  kr_mux_callbacks_set_on_reply(dc, dialer_on_reply);
  kr_mux_callbacks_set_on_data(dc, dialer_on_data);
  kr_mux_callbacks_set_on_fin(dc, dialer_on_fin);
  kr_mux_callbacks_set_on_writable(dc, dialer_on_writable);
  kr_mux_callbacks_set_on_close(dc, dialer_on_close);
  kr_mux_callbacks_set_on_ping(dc, dialer_on_ping);
  kr_mux_callbacks_set_on_goaway(dc, dialer_on_goaway);
  check(kr_mux_callbacks_new(&ac), "kr_mux_callbacks_new");
  kr_mux_callbacks_set_on_hello(ac, acceptor_on_hello);
  kr_mux_callbacks_set_on_open(ac, acceptor_on_open);
  kr_mux_callbacks_set_on_data(ac, acceptor_on_data);
  kr_mux_callbacks_set_on_fin(ac, acceptor_on_fin);
  kr_mux_callbacks_set_on_writable(ac, acceptor_on_writable);
  kr_mux_callbacks_set_on_close(ac, acceptor_on_close);
  kr_mux_callbacks_set_on_goaway(ac, acceptor_on_goaway);

  kr_md name = md_str(KR_MD_NAME, "mux-demo-dialer");
  kr_mux *dm = make_mux(KR_ROLE_DIALER, &name, &d, dc);
  kr_mux *am = make_mux(KR_ROLE_ACCEPTOR, NULL, &a, ac);
  kr_mux_callbacks_free(dc);
  kr_mux_callbacks_free(ac);

  wire d2a = {0}, a2d = {0};
  kr_time_us started = now_us();
  int failed = 0;
  long rounds = 0;
  while (!(kr_mux_is_done(dm) && kr_mux_is_done(am))) {
    size_t moved = drain(dm, &d2a) + drain(am, &a2d);
    int64_t in1 = feed(am, "acceptor", &d2a);
    int64_t in2 = feed(dm, "dialer", &a2d);
    if (in1 < 0 || in2 < 0) {
      failed = 1;
      break;
    }
    kr_time_us t = now_us();
    if (t >= kr_mux_next_deadline(dm))
      kr_mux_tick(dm, t);
    if (t >= kr_mux_next_deadline(am))
      kr_mux_tick(am, t);
    if (moved == 0 && in1 == 0 && in2 == 0 && !kr_mux_want_write(dm) &&
        !kr_mux_want_write(am)) {
      fprintf(stderr,
              "mux_demo: stalled: nothing to send or read, but not done "
              "(dialer: %zu streams, done %d; acceptor: %zu streams, "
              "done %d; wire %zu/%zu bytes)\n",
              kr_mux_num_streams(dm), kr_mux_is_done(dm),
              kr_mux_num_streams(am), kr_mux_is_done(am), d2a.len, a2d.len);
      failed = 1;
      break;
    }
    if (++rounds > MAX_ROUNDS) {
      fprintf(stderr, "mux_demo: gave up after %ld rounds\n", rounds);
      failed = 1;
      break;
    }
  }
  kr_time_us elapsed = now_us() - started;

  printf("\nsummary\n");
  uint64_t up = 0, down = 0;
  for (size_t i = 0; i < d.nstreams; i++) {
    dstream *ds = &d.streams[i];
    int ok =
        ds->closed && ds->close_code == ds->expect_code && !ds->mismatch_at;
    if (ds->expect_code == KR_CODE_NO_ERROR)
      ok = ok && ds->replied && strcmp(ds->status, "200") == 0 &&
           ds->fin_received && ds->written == ds->size + 1 &&
           ds->received == ds->size;
    up += ds->size;
    down += ds->received;
    printf("  stream %-2" PRIu32 " %-10s sent %8zu B, echoed %8zu B, ended %s "
           "(expected %s)%s%s\n",
           ds->id, ds->path, ds->size, ds->received,
           ds->closed ? kr_code_name(ds->close_code) : "never",
           kr_code_name(ds->expect_code), ds->mismatch_at ? ", MISMATCH" : "",
           ok ? "  ok" : "  FAILED");
    if (ds->mismatch_at)
      printf("    first differing byte at offset %zu\n", ds->mismatch_at - 1);
    if (!ok)
      failed = 1;
  }
  printf("  payload: %" PRIu64 " B dialer->acceptor, %" PRIu64
         " B acceptor->dialer\n",
         up, down);
  printf("  on the wire (frames included): %" PRIu64 " B and %" PRIu64
         " B, %ld rounds, %.1f ms\n",
         d2a.total, a2d.total, rounds, (double)elapsed / 1000.0);
  printf("  streams opened at the acceptor: %zu (%zu refused)\n", a.opened,
         a.refused);
  printf("  flow control: %s is twice the default 2 MiB stream window; it\n"
         "    finished because consumed bytes returned credit (WINDOW frames\n"
         "    the library sends on its own; the application never sees them)\n",
         d.streams[2].path);
  if (d.pinged)
    printf("  ping round trip: %" PRIu64 " us (kr_mux_rtt: %" PRIu64 " us)\n",
           d.rtt, kr_mux_rtt(dm));
  else
    printf("  ping: never answered\n");
  if (!d.pinged || !d.goaway_sent || !kr_mux_is_done(dm) ||
      !kr_mux_is_done(am) || d.failed || a.failed)
    failed = 1;
  printf("  connection: %s\n", kr_mux_is_done(dm) && kr_mux_is_done(am)
                                   ? "closed cleanly (GOAWAY)"
                                   : "NOT finished");

  kr_mux_free(dm);
  kr_mux_free(am);
  for (size_t i = 0; i < d.nstreams; i++)
    free(d.streams[i].data);
  free(d2a.buf);
  free(a2d.buf);

  printf("%s\n", failed ? "mux_demo: FAILED"
                        : "mux_demo: OK, every stream echoed byte-exact");
  return failed ? 1 : 0;
}
