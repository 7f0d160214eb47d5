/* libFuzzer target: an acceptor-role kr_mux fed hostile bytes.
 *
 * Input layout (fuzz_common.h): a configuration byte, a generator seed, then
 * the bytes "received from the dialer". A valid dialer HELLO can be put in
 * front (chosen by the configuration byte) so that mutations spend their time
 * past the handshake. The bytes go to kr_mux_recv() in chunks whose sizes the
 * generator picks, so frames arrive split at every possible offset.
 *
 * The mux runs with small limits (8 streams, windows of a few KiB, a small
 * output limit) and the callbacks act like a busy application: they reply and
 * write at once or later, hold data and consume it later, reset streams, send
 * GOAWAY, ping, open streams of their own, and occasionally free the mux from
 * inside a callback. Between chunks the output is drained (sometimes only in
 * part), the timers are driven with an advancing clock (sometimes exactly to
 * kr_mux_next_deadline()), and a PING the mux sent is answered when the
 * input sits at a frame boundary, so RTT handling runs too. Seeds 0xf0-0xff
 * give the mux an allocator that starts failing after a while.
 *
 * Checked (a failure calls __builtin_trap): the return values documented in
 * kasroute/mux.h, KR_ESTATE for re-entrant calls, one on_close per stream,
 * and that everything the mux sends parses as valid frames of an acceptor
 * (HELLO first and once, even stream ids for its OPENs, well-formed
 * metadata, frame sizes within the dialer's limit). Leaks are found by
 * LeakSanitizer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

#define FZ_SLOTS 32
#define FZ_OUT_BUF (64 * 1024)

typedef struct fz_slot {
  int used;
  kr_stream *s;
  size_t held;     /* delivered by on_data, not yet consumed */
  int peer_opened; /* on_open announced it */
  int replied;     /* we answered it (or it is ours) */
  int write_done;  /* we half-closed our side */
} fz_slot;

/* Incremental parser of the mux's output. */
typedef struct fz_out {
  uint8_t hdr[KR_FRAME_HEADER_SIZE];
  size_t hdr_have;
  kr__frame_hdr h;
  int in_payload;
  size_t pl_have;
  uint8_t *pl; /* payload of a non-DATA frame, if it fits FZ_OUT_BUF */
  uint32_t max_payload;
  int frames;
  int hello_seen;
  uint32_t last_open_id;
  uint8_t ping[8]; /* opaque bytes of the last PING the mux sent */
  int ping_pending;
} fz_out;

/* Frame boundaries of the input, so the harness can slip in a frame of its
 * own (the answer to the mux's PING, which the fuzzer cannot guess). */
typedef struct fz_in {
  size_t hdr_have;
  uint8_t hdr[3];
  uint64_t skip;
} fz_in;

typedef struct fz {
  uint64_t rng;
  uint8_t cfg;
  kr_mux *m;
  int freed; /* kr_mux_free() was called (maybe from a callback) */
  int failed;
  kr_time_us now;
  int nomem_mode;     /* the allocator fails now and then */
  unsigned allocs_ok; /* allocations that succeed before failures start */
  fz_slot slots[FZ_SLOTS];
  fz_out out;
  fz_in in;
} fz;

/* Success, or (only while allocations are made to fail) the out-of-memory
 * error or the closed state that a failed allocation leads to. */
#define OK(f, rc)                                                              \
  ((rc) == 0 || ((f)->nomem_mode && ((rc) == KR_ENOMEM || (rc) == KR_ECLOSED)))

static uint8_t g_pattern[20000];
/* KR_FUZZ_VERBOSE=1: trace events to stderr (for checking seeds). */
static int g_verbose;

#define TRACE(...)                                                             \
  do {                                                                         \
    if (g_verbose)                                                             \
      fprintf(stderr, __VA_ARGS__);                                            \
  } while (0)

static uint64_t fz_next(fz *f) {
  /* splitmix64 */
  uint64_t z = (f->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* 1 with probability 1/n. */
static int fz_one_in(fz *f, unsigned n) {
  return fz_next(f) % n == 0;
}

static size_t fz_below(fz *f, size_t n) {
  return n == 0 ? 0 : (size_t)(fz_next(f) % n);
}

/* The allocator given to the mux. With nomem_mode on, after allocs_ok
 * allocations every other one fails at random, so the fuzzer reaches the
 * out-of-memory paths (which must fail cleanly and leak nothing). */
static int fz_alloc_fails(fz *f) {
  if (!f->nomem_mode)
    return 0;
  if (f->allocs_ok > 0) {
    f->allocs_ok--;
    return 0;
  }
  return fz_one_in(f, 2);
}

static void *fz_malloc(size_t n, void *ud) {
  return fz_alloc_fails(ud) ? NULL : malloc(n);
}

static void *fz_realloc(void *p, size_t n, void *ud) {
  return fz_alloc_fails(ud) ? NULL : realloc(p, n);
}

static void fz_free(void *p, void *ud) {
  (void)ud;
  free(p);
}

static fz_slot *fz_slot_new(fz *f, kr_stream *s) {
  for (int i = 0; i < FZ_SLOTS; i++) {
    if (!f->slots[i].used) {
      memset(&f->slots[i], 0, sizeof f->slots[i]);
      f->slots[i].used = 1;
      f->slots[i].s = s;
      return &f->slots[i];
    }
  }
  return NULL;
}

/* ------------------------------------------------------- output checking */

static void out_frame_done(fz_out *o) {
  const kr__frame_hdr *h = &o->h;
  const uint8_t *pl = o->pl;
  int whole = h->length <= FZ_OUT_BUF;
  const char *reason = NULL;

  o->frames++;
  if (o->frames == 1)
    CHECK(h->type == KR__FRAME_HELLO);
  else
    CHECK(h->type != KR__FRAME_HELLO);
  switch (h->type) {
  case KR__FRAME_HELLO: {
    kr__hello hello;
    CHECK(whole);
    CHECK(kr__hello_decode(pl, h->length, &hello, &reason) == 0);
    CHECK(hello.role == KR_ROLE_ACCEPTOR);
    CHECK(hello.min_version <= KR_PROTOCOL_VERSION &&
          hello.max_version >= KR_PROTOCOL_VERSION);
    CHECK(kr__md_validate(hello.md, hello.md_len, &reason) >= 0);
    o->hello_seen = 1;
    break;
  }
  case KR__FRAME_OPEN:
    CHECK(h->stream_id % 2 == 0 && h->stream_id > o->last_open_id);
    o->last_open_id = h->stream_id;
    /* fall through */
  case KR__FRAME_REPLY:
    if (whole)
      CHECK(kr__md_validate(pl, h->length, &reason) >= 0);
    break;
  case KR__FRAME_PING:
    CHECK(whole && h->length == KR__PING_LEN);
    if (!(h->flags & KR__FLAG_ACK)) {
      memcpy(o->ping, pl, 8);
      o->ping_pending = 1;
    }
    break;
  case KR__FRAME_WINDOW:
    CHECK(whole);
    CHECK(kr__get_u32(pl) >= 1 && kr__get_u32(pl) <= KR_MAX_WINDOW);
    break;
  case KR__FRAME_RESET:
  case KR__FRAME_GOAWAY:
    CHECK(h->length <= KR__GOAWAY_FIXED + KR_MAX_REASON);
    break;
  default:
    break;
  }
}

/* Parses n more output bytes; every frame must decode. */
static void out_feed(fz_out *o, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (!o->in_payload) {
      size_t take = KR_FRAME_HEADER_SIZE - o->hdr_have;
      if (take > n)
        take = n;
      memcpy(o->hdr + o->hdr_have, p, take);
      o->hdr_have += take;
      p += take;
      n -= take;
      if (o->hdr_have < KR_FRAME_HEADER_SIZE)
        return;
      const char *reason = NULL;
      /* Before the dialer's HELLO is known only 16384 is safe; the mux only
       * sends its HELLO then, which must respect that bound too. */
      uint32_t max = o->frames == 0 ? KR_MIN_FRAME_SIZE : o->max_payload;
      CHECK(kr__frame_hdr_decode(o->hdr, max, &o->h, &reason) == 0);
      o->hdr_have = 0;
      o->in_payload = 1;
      o->pl_have = 0;
    }
    size_t take = o->h.length - o->pl_have;
    if (take > n)
      take = n;
    if (o->h.type != KR__FRAME_DATA && o->h.length <= FZ_OUT_BUF)
      memcpy(o->pl + o->pl_have, p, take);
    o->pl_have += take;
    p += take;
    n -= take;
    if (o->pl_have == o->h.length) {
      o->in_payload = 0;
      out_frame_done(o);
    }
  }
}

static void in_walk(fz_in *w, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (w->skip > 0) {
      size_t k = w->skip < n ? (size_t)w->skip : n;
      w->skip -= k, p += k, n -= k;
      continue;
    }
    if (w->hdr_have < 3)
      w->hdr[w->hdr_have] = *p;
    w->hdr_have++, p++, n--;
    if (w->hdr_have == KR_FRAME_HEADER_SIZE) {
      w->skip = kr__get_u24(w->hdr);
      w->hdr_have = 0;
    }
  }
}

static int in_at_boundary(const fz_in *w) {
  return w->hdr_have == 0 && w->skip == 0;
}

/* Takes output from the mux: all of it, or (lazy mode) a random part. */
static void fz_drain(fz *f, int lazy) {
  for (int round = 0; round < 64 && !f->freed; round++) {
    const uint8_t *p = NULL;
    int want = fz_one_in(f, 4) ? kr_mux_want_write(f->m) : -1;
    if (f->freed)
      break;
    size_t n = kr_mux_send(f->m, &p);
    if (want == 1 && !f->freed)
      CHECK(n > 0);
    if (n == 0)
      break;
    CHECK(p != NULL);
    if (fz_one_in(f, 64))
      CHECK(kr_mux_sent(f->m, n + 1) == KR_EINVAL);
    size_t take = n;
    if (lazy) {
      if (fz_one_in(f, 4) && kr_mux_want_read(f->m))
        break; /* leave it pending for now */
      take = 1 + fz_below(f, n);
    }
    out_feed(&f->out, p, take);
    CHECK(kr_mux_sent(f->m, take) == 0);
  }
}

/* ------------------------------------------------------------ callbacks */

/* Re-entrant calls must be refused while a callback runs. */
static void fz_check_reentry(fz *f) {
  static const uint8_t zero = 0;
  if (fz_one_in(f, 8)) {
    CHECK(kr_mux_recv(f->m, &zero, 1, f->now) == KR_ESTATE);
    CHECK(kr_mux_tick(f->m, f->now) == KR_ESTATE);
  }
}

static void fz_write(fz *f, fz_slot *sl) {
  size_t len = fz_below(f, sizeof g_pattern) + 1;
  int64_t rc = kr_stream_write(sl->s, g_pattern, len);
  CHECK((rc >= 0 && (uint64_t)rc <= len) || rc == KR_EAGAIN ||
        rc == KR_ESTATE || rc == KR_ECLOSED || rc == KR_ENOMEM);
  /* A short write means the queue is full: what is left does not fit.
   * (A failed allocation can also cut a write short.) */
  if (rc >= 0 && (size_t)rc < len) {
    TRACE("short write %zu of %zu, space %zu\n", (size_t)rc, len,
          kr_stream_write_space(sl->s));
    CHECK(f->nomem_mode || kr_stream_write_space(sl->s) < len - (size_t)rc);
  }
}

static void fz_open_stream(fz *f) {
  static const kr_md md[] = {FZ_MD(":service", "echo"),
                             FZ_MD(":path", "/fuzz")};
  if (!kr_mux_can_open(f->m))
    return;
  kr_stream *s = NULL;
  int fin = fz_one_in(f, 4);
  int rc = kr_stream_open(f->m, md, 2, fin, NULL, &s);
  if (rc != 0) {
    CHECK(rc == KR_ESTREAMLIMIT || rc == KR_EIDEXHAUSTED || rc == KR_ENOMEM ||
          rc == KR_EGOAWAY || rc == KR_ECLOSED);
    return;
  }
  CHECK(s != NULL && kr_stream_id(s) % 2 == 0);
  fz_slot *sl = fz_slot_new(f, s);
  if (sl == NULL) {
    int rrc = kr_stream_reset(s, KR_CODE_CANCEL, "no slot");
    CHECK(OK(f, rrc));
    return;
  }
  sl->replied = 1;
  sl->write_done = fin;
  kr_stream_set_user_data(s, sl);
  if (!fin && fz_one_in(f, 2))
    fz_write(f, sl);
}

/* Something a busy application might do with a stream, now. */
static void fz_act(fz *f, fz_slot *sl) {
  switch (fz_below(f, 8)) {
  case 0:
  case 1:
    if (sl->peer_opened && !sl->replied) {
      static const kr_md md[] = {FZ_MD(":status", "200")};
      int fin = fz_one_in(f, 4);
      int rc = kr_stream_reply(sl->s, md, 1, fin);
      CHECK(OK(f, rc) || rc == KR_ECLOSED);
      if (rc == 0) {
        sl->replied = 1;
        sl->write_done = fin;
      }
    } else if (sl->replied && !sl->write_done) {
      fz_write(f, sl);
    }
    break;
  case 2:
  case 3:
    if (sl->held > 0) {
      size_t n = fz_one_in(f, 2) ? sl->held : fz_below(f, sl->held) + 1;
      int rc = kr_stream_consume(sl->s, n);
      CHECK(OK(f, rc));
      sl->held -= n;
    }
    break;
  case 4:
    if (sl->replied && !sl->write_done) {
      int rc = kr_stream_close_write(sl->s);
      CHECK(OK(f, rc) || rc == KR_ECLOSED);
      sl->write_done = 1;
    }
    break;
  case 5:
    if (fz_one_in(f, (f->cfg & FZ_CFG_HARSH) ? 2 : 6)) {
      kr_stream *s = sl->s;
      int rc = kr_stream_reset(s, KR_CODE_CANCEL, "fuzz");
      CHECK(OK(f, rc));
      CHECK(!sl->used || sl->s != s); /* on_close ran before the return */
    }
    break;
  case 6:
    if (!f->nomem_mode)
      CHECK(kr_stream_consume(sl->s, sl->held + 1) == KR_EINVAL);
    break;
  default:
    break;
  }
}

static void on_hello(kr_mux *m, const kr_md *md, size_t n, void *ud) {
  fz *f = ud;
  if (f->freed)
    return;
  CHECK(m == f->m);
  for (size_t i = 0; i < n; i++)
    CHECK(md[i].name_len > 0 && md[i].name != NULL);
  fz_check_reentry(f);
  if ((f->cfg & FZ_CFG_HARSH) && fz_one_in(f, 8))
    (void)kr_mux_goaway(m, KR_CODE_UNAUTHORIZED, "bad token");
  if (f->cfg & FZ_CFG_OPEN)
    fz_open_stream(f);
}

static void on_open(kr_mux *m, kr_stream *s, const kr_md *md, size_t n, int fin,
                    void *ud) {
  fz *f = ud;
  if (f->freed)
    return;
  CHECK(kr_stream_mux(s) == m);
  CHECK(kr_stream_id(s) % 2 == 1);
  for (size_t i = 0; i < n; i++)
    CHECK(md[i].name_len > 0 && md[i].name != NULL);
  fz_check_reentry(f);
  TRACE("on_open %u fin=%d n=%zu\n", (unsigned)kr_stream_id(s), fin, n);
  fz_slot *sl = fz_slot_new(f, s);
  if (sl == NULL) {
    int rrc = kr_stream_reset(s, KR_CODE_REFUSED, "busy");
    CHECK(OK(f, rrc));
    return;
  }
  sl->peer_opened = 1;
  kr_stream_set_user_data(s, sl);
  CHECK(kr_stream_user_data(s) == sl);
  /* A write before the reply is refused. */
  CHECK(kr_stream_write(s, g_pattern, 1) == KR_ESTATE);
  switch (fz_below(f, 4)) {
  case 0: /* answer later */
    break;
  case 1: {
    static const kr_md rmd[] = {FZ_MD(":status", "200"),
                                FZ_MD("content-type", "x")};
    int rfin = fin && fz_one_in(f, 2);
    int rc1 = kr_stream_reply(s, rmd, 2, rfin);
    CHECK(OK(f, rc1));
    if (rc1 != 0)
      break;
    /* A second reply is refused; if both FINs are now out the stream has
     * already closed (on_close ran) and the answer is KR_ECLOSED. */
    int rc2 = kr_stream_reply(s, rmd, 2, 0);
    CHECK(rc2 == KR_ESTATE || ((rfin || f->nomem_mode) && rc2 == KR_ECLOSED));
    if (!sl->used || sl->s != s)
      break;
    sl->replied = 1;
    sl->write_done = rfin;
    if (!rfin) {
      fz_write(f, sl);
      if (fz_one_in(f, 2))
        fz_write(f, sl);
    }
    break;
  }
  case 2:
    fz_act(f, sl);
    break;
  default:
    if (fz_one_in(f, (f->cfg & FZ_CFG_HARSH) ? 2 : 8)) {
      int rc = kr_stream_reset(s, KR_CODE_NOT_FOUND, "no such service");
      CHECK(OK(f, rc));
    }
    break;
  }
}

static void on_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                     void *ud) {
  fz *f = ud;
  if (f->freed)
    return;
  fz_slot *sl = kr_stream_user_data(s);
  CHECK(sl != NULL && sl->s == s && !sl->peer_opened);
  for (size_t i = 0; i < n; i++)
    CHECK(md[i].name_len > 0);
  if (fz_one_in(f, 2))
    fz_act(f, sl);
}

static void on_data(kr_stream *s, const uint8_t *data, size_t len, void *ud) {
  fz *f = ud;
  if (f->freed)
    return;
  TRACE("on_data %u %zu\n", (unsigned)kr_stream_id(s), len);
  fz_slot *sl = kr_stream_user_data(s);
  CHECK(sl != NULL && sl->s == s);
  CHECK(len > 0 && data != NULL);
  /* Touch every byte so ASan sees a bad pointer or length. */
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < len; i++)
    sink ^= data[i];
  (void)sink;
  sl->held += len;
  fz_check_reentry(f);
  switch (fz_below(f, 16)) {
  case 0:
  case 1:
  case 2:
  case 3:
  case 4:
  case 5: {
    int rc = kr_stream_consume(s, sl->held);
    CHECK(OK(f, rc));
    sl->held = 0;
    break;
  }
  case 6:
  case 7:
  case 8:
    fz_act(f, sl);
    break;
  case 9:
    if ((f->cfg & FZ_CFG_HARSH) && fz_one_in(f, 4)) {
      int rc = kr_stream_reset(s, KR_CODE_CANCEL, NULL);
      CHECK(OK(f, rc));
      CHECK(!sl->used || sl->s != s);
    }
    break;
  case 10:
    if (fz_one_in(f, 4))
      (void)kr_mux_goaway(f->m, KR_CODE_NO_ERROR, "draining");
    break;
  case 11:
    if (fz_one_in(f, 32)) {
      /* Freeing inside a callback is deferred to the outermost return. */
      kr_mux_free(f->m);
      f->freed = 1;
    }
    break;
  default: /* hold it */
    break;
  }
}

static void on_fin(kr_stream *s, void *ud) {
  fz *f = ud;
  if (f->freed)
    return;
  fz_slot *sl = kr_stream_user_data(s);
  CHECK(sl != NULL && sl->s == s);
  if (sl->replied && !sl->write_done && fz_one_in(f, 2)) {
    if (fz_one_in(f, 2))
      fz_write(f, sl);
    int rc = kr_stream_close_write(s);
    CHECK(OK(f, rc));
    sl->write_done = 1;
  }
}

static void on_writable(kr_stream *s, void *ud) {
  fz *f = ud;
  if (f->freed)
    return;
  fz_slot *sl = kr_stream_user_data(s);
  CHECK(sl != NULL && sl->s == s);
  if (sl->replied && !sl->write_done && fz_one_in(f, 2))
    fz_write(f, sl);
}

static void on_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                     size_t reason_len, void *ud) {
  fz *f = ud;
  fz_slot *sl = kr_stream_user_data(s);
  CHECK(reason_len <= KR_MAX_REASON);
  CHECK(reason_len == 0 || reason != NULL);
  TRACE("on_close %u %s %.*s\n", (unsigned)kr_stream_id(s), kr_code_name(code),
        (int)reason_len, (const char *)reason);
  if (sl == NULL)
    return;                      /* never tracked (slot table full at open) */
  CHECK(sl->used && sl->s == s); /* exactly one on_close per stream */
  sl->used = 0;
  sl->s = NULL;
  if (f->freed)
    return;
  /* Calls on the closing stream must fail cleanly, not crash. */
  if (fz_one_in(f, 4)) {
    int64_t rc = kr_stream_write(s, g_pattern, 1);
    CHECK(rc == KR_ECLOSED || rc == KR_ESTATE);
  }
}

static void on_ping(kr_mux *m, kr_time_us rtt, void *ud) {
  fz *f = ud;
  if (f->freed)
    return;
  CHECK(kr_mux_rtt(m) == rtt);
}

static void on_goaway(kr_mux *m, int remote, uint32_t code,
                      const uint8_t *reason, size_t reason_len, void *ud) {
  fz *f = ud;
  CHECK(reason_len <= KR_MAX_REASON);
  CHECK(reason_len == 0 || reason != NULL);
  CHECK(remote == 0 || remote == 1);
  TRACE("on_goaway remote=%d %s %.*s\n", remote, kr_code_name(code),
        (int)reason_len, (const char *)reason);
  if (f->freed)
    return;
  CHECK(!kr_mux_can_open(m));
  CHECK(kr_stream_open(m, NULL, 0, 1, NULL, &(kr_stream *){NULL}) != 0);
}

/* ----------------------------------------------------------- the target */

static kr_mux *fz_mux_new(fz *f) {
  kr_mux_options *opt = NULL;
  kr_mux_callbacks *cbs = NULL;
  kr_mux *m = NULL;
  if (kr_mux_options_new(&opt) != 0 || kr_mux_callbacks_new(&cbs) != 0)
    goto out;
  CHECK(kr_mux_options_set_role(opt, KR_ROLE_ACCEPTOR) == 0);
  CHECK(kr_mux_options_set_role(opt, (kr_role)3) == KR_EINVAL);
  CHECK(kr_mux_options_set_max_frame_size(opt, KR_MIN_FRAME_SIZE) == 0);
  CHECK(kr_mux_options_set_max_streams(opt, 8) == 0);
  if (f->cfg & FZ_CFG_TINY) {
    CHECK(kr_mux_options_set_stream_window(opt, 1000) == 0);
    CHECK(kr_mux_options_set_connection_window(opt, 3000) == 0);
  } else {
    CHECK(kr_mux_options_set_stream_window(opt, 16384) == 0);
    CHECK(kr_mux_options_set_connection_window(opt, 40000) == 0);
  }
  CHECK(kr_mux_options_set_send_queue(opt, 8192) == 0);
  CHECK(kr_mux_options_set_output_limit(opt, 4096) == 0);
  CHECK(kr_mux_options_set_keepalive(opt, 1000000, 10000000) == 0);
  CHECK(kr_mux_options_set_handshake_timeout(opt, 2000000) == 0);
  kr_md tok = FZ_MD(":name", "kas-fuzz");
  CHECK(kr_mux_options_add_hello(opt, &tok) == 0);
  kr_mem mem = {f, fz_malloc, fz_realloc, fz_free};
  CHECK(kr_mux_options_set_mem(opt, &mem) == 0);
  kr_mux_callbacks_set_on_hello(cbs, on_hello);
  kr_mux_callbacks_set_on_open(cbs, on_open);
  kr_mux_callbacks_set_on_reply(cbs, on_reply);
  kr_mux_callbacks_set_on_data(cbs, on_data);
  kr_mux_callbacks_set_on_fin(cbs, on_fin);
  kr_mux_callbacks_set_on_writable(cbs, on_writable);
  kr_mux_callbacks_set_on_close(cbs, on_close);
  kr_mux_callbacks_set_on_ping(cbs, on_ping);
  kr_mux_callbacks_set_on_goaway(cbs, on_goaway);
  if (kr_mux_new(&m, opt, cbs, f->now, f) != 0)
    m = NULL;
out:
  kr_mux_options_free(opt);
  kr_mux_callbacks_free(cbs);
  return m;
}

static size_t fz_chunk_size(fz *f, size_t left) {
  static const size_t caps[] = {0, 16, 512, 8192};
  size_t cap = caps[(f->cfg & FZ_CFG_CHUNK_MASK) >> FZ_CFG_CHUNK_SHIFT];
  if (cap == 0 || left <= 1)
    return left;
  size_t n = 1 + fz_below(f, cap);
  return n < left ? n : left;
}

/* Between chunks: act on a few tracked streams, maybe ping or open. */
static void fz_between(fz *f) {
  for (int i = 0; i < 3 && !f->freed; i++) {
    fz_slot *sl = &f->slots[fz_below(f, FZ_SLOTS)];
    if (sl->used)
      fz_act(f, sl);
  }
  if (f->freed)
    return;
  if (fz_one_in(f, 16)) {
    int rc = kr_mux_ping(f->m, f->now);
    CHECK(rc == 0 || rc == KR_EAGAIN || rc == KR_ESTATE || rc == KR_ECLOSED ||
          rc == KR_ENOMEM);
  }
  if ((f->cfg & FZ_CFG_OPEN) && fz_one_in(f, 8))
    fz_open_stream(f);
}

/* Mostly small steps, so that a frame fed byte by byte still beats the
 * keepalive timeout (10 s); now and then a jump that may pass every timer. */
static void fz_advance(fz *f) {
  kr_time_us d = kr_mux_next_deadline(f->m);
  if (d != UINT64_MAX && d > f->now && d - f->now < 30000000 &&
      fz_one_in(f, 32))
    f->now = d; /* exactly when the mux asked to be woken */
  else if (fz_one_in(f, 256))
    f->now += fz_below(f, 12000000);
  else
    f->now += fz_below(f, 10000);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int init;
  if (!init) {
    g_verbose = getenv("KR_FUZZ_VERBOSE") != NULL;
    for (size_t i = 0; i < sizeof g_pattern; i++)
      g_pattern[i] = (uint8_t)(i * 131u + 7u);
    init = 1;
  }
  if (size < 2)
    return 0;

  fz *f = calloc(1, sizeof *f);
  if (f == NULL)
    return 0;
  f->cfg = data[0];
  f->rng = data[1] * 0x100000001b3ull + f->cfg;
  /* Seeds 0xf0..0xff: allocations start failing after a while. */
  f->nomem_mode = (data[1] & 0xf0) == 0xf0;
  f->allocs_ok = (unsigned)fz_below(f, 64);
  f->now = 1000000;
  f->out.pl = malloc(FZ_OUT_BUF);
  unsigned prefix = f->cfg & FZ_CFG_PREFIX_MASK;
  fz_prefix_settings ps = fz_prefix_settings_of(prefix);
  f->out.max_payload = prefix == FZ_PREFIX_NONE ? KR_MAX_FRAME_SIZE
                       : ps.max_frame != 0      ? ps.max_frame
                                                : 65536;
  const int lazy = (f->cfg & FZ_CFG_LAZY) != 0;
  if (f->out.pl == NULL || (f->m = fz_mux_new(f)) == NULL) {
    free(f->out.pl);
    free(f);
    return 0;
  }
  CHECK(kr_mux_user_data(f->m) == f);

  uint8_t hello[512];
  size_t hello_len = fz_prefix(hello, sizeof hello, prefix);
  CHECK(prefix == FZ_PREFIX_NONE || hello_len > 0);
  const uint8_t *in = data + 2;
  size_t left = size - 2;

  /* The prefix goes in as its own chunk(s), like the input. */
  int64_t rc = 0;
  for (size_t off = 0; off < hello_len && rc >= 0;) {
    size_t n = fz_chunk_size(f, hello_len - off);
    rc = kr_mux_recv(f->m, hello + off, n, f->now);
    CHECK(rc == (int64_t)n || (f->nomem_mode && rc == KR_ENOMEM));
    if (rc < 0)
      f->failed = 1;
    off += n;
  }
  if (!f->freed)
    fz_drain(f, lazy);

  while (left > 0 && !f->freed && !f->failed) {
    /* A host stops reading while want_read is off and writes instead; if
     * that does not help (closed or done) the bytes go in anyway: the mux
     * must cope with a host that reads regardless. */
    if (!kr_mux_want_read(f->m)) {
      fz_drain(f, 0);
      if (f->freed)
        break;
    }
    size_t n = fz_chunk_size(f, left);
    rc = kr_mux_recv(f->m, in, n, f->now);
    if (rc < 0) {
      TRACE("recv: %s\n", kr_err_name((int)rc));
      CHECK(rc == KR_EPROTO || rc == KR_EFLOWCTL || rc == KR_EFRAMESIZE ||
            rc == KR_EVERSION || rc == KR_ESTREAMLIMIT || rc == KR_ENOMEM ||
            rc == KR_ECLOSED);
      if (f->freed)
        break;
      f->failed = 1;
      CHECK(kr_mux_recv(f->m, in, n, f->now) == KR_ECLOSED);
      CHECK(kr_mux_num_streams(f->m) == 0);
      CHECK(!kr_mux_want_read(f->m));
      break;
    }
    CHECK(rc == (int64_t)n);
    in_walk(&f->in, in, n);
    in += n;
    left -= n;
    if (f->freed)
      break;
    fz_drain(f, lazy);
    if (f->freed)
      break;
    if (f->out.ping_pending && in_at_boundary(&f->in) && fz_one_in(f, 2)) {
      uint8_t ack[KR__CTRL_FRAME_MAX];
      size_t an = kr__frame_ping(ack, KR__FLAG_ACK, f->out.ping);
      f->out.ping_pending = 0;
      f->now += fz_below(f, 1000);
      rc = kr_mux_recv(f->m, ack, an, f->now);
      if (f->freed)
        break;
      if (rc < 0) {
        CHECK(rc == KR_ECLOSED || (f->nomem_mode && rc == KR_ENOMEM));
        f->failed = 1;
        break;
      }
      CHECK(rc == (int64_t)an);
    }
    if (kr_mux_is_done(f->m)) {
      /* The host closes the transport now. */
      CHECK(kr_mux_num_streams(f->m) == 0);
      const uint8_t *p = NULL;
      CHECK(kr_mux_send(f->m, &p) == 0);
      break;
    }
    fz_between(f);
    if (f->freed)
      break;
    fz_advance(f);
    int trc = kr_mux_tick(f->m, f->now);
    CHECK(trc == 0 || trc == KR_ETIMEDOUT || trc == KR_ECLOSED);
    if (trc == KR_ETIMEDOUT)
      CHECK(kr_mux_num_streams(f->m) == 0);
  }

  if (!f->freed) {
    /* Flush whatever is left; a failed mux still owes its GOAWAY. */
    fz_drain(f, 0);
    if (!f->freed && f->failed)
      CHECK(kr_mux_tick(f->m, f->now) == KR_ECLOSED);
    if (!f->freed)
      kr_mux_free(f->m);
  }
  free(f->out.pl);
  free(f);
  return 0;
}
