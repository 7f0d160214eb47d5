/* The stream multiplexer: protocol v1 state machine, flow control and send
 * scheduling (docs/PROTOCOL.md). No I/O, no clock: see kasroute/mux.h.
 *
 * Memory discipline: DATA payload is never buffered on receive (it is
 * handed to on_data straight from the caller's input); on send it is copied
 * once into the output buffer when the windows allow, or once into the
 * stream's bounded queue and later into the output buffer when they do not.
 * Control-frame payloads are buffered, at most one frame (<= MAX_FRAME_SIZE).
 *
 * Re-entrancy: every public entry point that can fire callbacks brackets its
 * work with enter()/leave(). Stream objects that end while callbacks may run
 * go to a dead list and are freed when the outermost call returns, so no
 * pointer held by an outer frame ever dangles; kr_mux_free() inside a
 * callback is deferred the same way.
 */
#include <string.h>

#include <kasroute/error.h>

#include "buf.h"
#include "frame.h"
#include "mem_internal.h"
#include "mux_internal.h"
#include "mux_types.h"
#include "stream_map.h"

struct kr_stream {
  kr_mux *m;
  uint32_t id;
  void *user_data;
  const void *handler;        /* per-stream dispatch for lib/io (internal) */
  unsigned local : 1;         /* opened by this side */
  unsigned in_map : 1;        /* protocol state still live (counts) */
  unsigned app_closed : 1;    /* on_close delivered; handle is dead */
  unsigned reset_sent : 1;    /* waiting for the peer's RESET ACK */
  unsigned send_open : 1;     /* this side may still send DATA */
  unsigned fin_queued : 1;    /* FIN goes after the queue drains */
  unsigned fin_sent : 1;
  unsigned recv_open : 1;     /* the peer has not sent FIN */
  unsigned reply_owed : 1;    /* peer-opened, REPLY not yet sent */
  unsigned reply_expected : 1; /* locally opened, REPLY not yet received */
  unsigned want_writable : 1; /* a write was short; notify on space */
  unsigned in_ready : 1;
  unsigned in_wlist : 1;
  int64_t send_window;     /* credit the peer granted us */
  int64_t recv_window;     /* credit we granted the peer, unused */
  size_t recv_unconsumed;  /* delivered, not yet consumed */
  size_t consumed_unacked; /* consumed, not yet returned by WINDOW */
  kr__ring queue;          /* written, not yet framed */
  kr_stream *ready_prev, *ready_next; /* send scheduling FIFO */
  kr_stream *wnext;                   /* pending on_writable */
  kr_stream *all_prev, *all_next;     /* every stream object */
  kr_stream *dead_next;               /* awaiting free */
};

struct kr_mux {
  kr_mem mem;
  kr_mux_callbacks cb;
  void *user_data;
  kr_mux_options opt; /* copied values; hello entries not kept */

  /* peer settings, valid once hello_received */
  uint32_t peer_max_frame;
  uint32_t peer_stream_window;
  uint32_t peer_max_streams;

  uint32_t next_id;      /* next id this side opens */
  uint32_t last_peer_id; /* highest id the peer opened */
  kr__stream_map streams;
  size_t n_local; /* locally opened streams in the map */
  size_t n_peer;  /* peer-opened streams in the map */

  int64_t conn_send_window;
  int64_t conn_recv_window;
  size_t conn_consumed_unacked;

  kr__buf out;
  /* The final GOAWAY after a failure lives outside out so that it can be
   * sent even when memory ran out; it goes after everything in out. */
  uint8_t final[KR__CTRL_FRAME_MAX];
  size_t final_len, final_off;

  /* receive parser */
  uint8_t hdr[KR_FRAME_HEADER_SIZE];
  size_t hdr_len;
  kr__frame_hdr cur;
  size_t got;           /* payload bytes of cur seen so far */
  kr_stream *data_to;   /* DATA target, NULL: discard */
  uint8_t *ctl;         /* control payload */
  size_t ctl_cap;
  kr_md *md;            /* decoded metadata scratch */
  size_t md_cap;

  kr_stream *ready_head, *ready_tail;
  kr_stream *wlist;
  kr_stream *all;
  kr_stream *dead;

  kr_time_us created, last_rx, ping_sent, rtt;
  unsigned hello_received : 1;
  unsigned ping_out : 1;
  unsigned goaway_sent : 1;
  unsigned goaway_received : 1;
  unsigned free_pending : 1;
  uint32_t goaway_sent_last; /* peer ids above are refused */
  uint32_t goaway_recv_last; /* our ids above were not processed */
  int failed; /* 0 or the error kr_mux_recv/tick returned */
  void (*out_hook)(kr_mux *m, void *ud); /* output became pending */
  void *out_hook_ud;
  int out_signalled; /* hook called since the last kr_mux_send() */
  int depth;  /* nesting of public calls that fire callbacks */
};

static void mux_destroy(kr_mux *m);

/* Tells the host's I/O layer, once per kr_mux_send(), that there is
 * something to send. */
static void signal_output(kr_mux *m) {
  if (m->out_hook && !m->out_signalled) {
    m->out_signalled = 1;
    m->out_hook(m, m->out_hook_ud);
  }
}

/* ------------------------------------------------------------ re-entrancy */

static void enter(kr_mux *m) { m->depth++; }

static void stream_free(kr_mux *m, kr_stream *s) {
  if (m->data_to == s)
    m->data_to = NULL;
  /* A pending on_writable must not outlive the stream. */
  if (s->in_wlist) {
    kr_stream **pp = &m->wlist;
    while (*pp && *pp != s)
      pp = &(*pp)->wnext;
    if (*pp)
      *pp = s->wnext;
    s->in_wlist = 0;
  }
  if (s->all_prev)
    s->all_prev->all_next = s->all_next;
  else
    m->all = s->all_next;
  if (s->all_next)
    s->all_next->all_prev = s->all_prev;
  kr__ring_free(&m->mem, &s->queue);
  kr__free(&m->mem, s);
}

/* Returns 1 if m was freed: the caller must not touch it again. */
static int leave(kr_mux *m) {
  if (--m->depth > 0)
    return 0;
  while (m->dead) {
    kr_stream *s = m->dead;
    m->dead = s->dead_next;
    stream_free(m, s);
  }
  if (m->free_pending) {
    mux_destroy(m);
    return 1;
  }
  return 0;
}

/* A stream whose handle is dead and whose protocol state is gone. */
static void stream_bury(kr_mux *m, kr_stream *s) {
  if (s->app_closed && !s->in_map) {
    if (m->depth == 0) {
      stream_free(m, s);
    } else {
      s->dead_next = m->dead;
      m->dead = s;
    }
  }
}

/* ------------------------------------------------------------- scheduling */

static void ready_remove(kr_mux *m, kr_stream *s) {
  if (!s->in_ready)
    return;
  if (s->ready_prev)
    s->ready_prev->ready_next = s->ready_next;
  else
    m->ready_head = s->ready_next;
  if (s->ready_next)
    s->ready_next->ready_prev = s->ready_prev;
  else
    m->ready_tail = s->ready_prev;
  s->ready_prev = s->ready_next = NULL;
  s->in_ready = 0;
}

/* Puts s at the tail of the send FIFO if it can make progress: queued data
 * and stream credit, or a FIN waiting behind an empty queue. */
static void ready_update(kr_mux *m, kr_stream *s) {
  int eligible = !s->app_closed && s->send_open &&
                 ((s->queue.len > 0 && s->send_window > 0) ||
                  (s->fin_queued && s->queue.len == 0));
  if (!eligible) {
    ready_remove(m, s);
    return;
  }
  if (s->in_ready)
    return;
  signal_output(m);
  s->ready_prev = m->ready_tail;
  s->ready_next = NULL;
  if (m->ready_tail)
    m->ready_tail->ready_next = s;
  else
    m->ready_head = s;
  m->ready_tail = s;
  s->in_ready = 1;
}

static size_t stream_space(const kr_stream *s) {
  size_t limit = s->m->opt.send_queue;
  return s->queue.len >= limit ? 0 : limit - s->queue.len;
}

static void wlist_add(kr_mux *m, kr_stream *s) {
  if (s->in_wlist || !s->want_writable || stream_space(s) == 0)
    return;
  s->in_wlist = 1;
  s->wnext = m->wlist;
  m->wlist = s;
}

/* ---------------------------------------------------------- closing paths */

static int return_credit(kr_mux *m, kr_stream *s);

/* Delivers on_close once and returns the stream's unconsumed bytes to the
 * connection window (the application gave them up by returning). */
static void app_close(kr_mux *m, kr_stream *s, uint32_t code,
                      const uint8_t *reason, size_t reason_len) {
  if (s->app_closed)
    return;
  s->app_closed = 1;
  s->want_writable = 0;
  ready_remove(m, s);
  if (m->cb.on_close)
    m->cb.on_close(s, code, reason, reason_len, m->user_data);
  size_t given_up = s->recv_unconsumed;
  m->conn_consumed_unacked += given_up;
  s->recv_unconsumed = 0;
  /* Without this WINDOW a connection whose window those bytes filled would
   * never move again. */
  if (given_up && !m->failed)
    return_credit(m, NULL);
}

/* Ends the protocol state of s: it stops counting toward the limits. */
static void map_remove(kr_mux *m, kr_stream *s) {
  if (!s->in_map)
    return;
  kr__map_del(&m->streams, s->id);
  s->in_map = 0;
  if (s->local)
    m->n_local--;
  else
    m->n_peer--;
}

static void stream_end(kr_mux *m, kr_stream *s, uint32_t code,
                       const uint8_t *reason, size_t reason_len) {
  map_remove(m, s);
  app_close(m, s, code, reason, reason_len);
  stream_bury(m, s);
}

/* Closes s cleanly once both directions finished. */
static void maybe_close(kr_mux *m, kr_stream *s) {
  if (s->in_map && !s->reset_sent && s->fin_sent && !s->recv_open)
    stream_end(m, s, KR_CODE_NO_ERROR, NULL, 0);
}

/* Connection failure: queue the final GOAWAY, tell the application, end
 * every stream. Idempotent. Returns err. */
static int fail(kr_mux *m, int err, uint32_t code, const char *reason) {
  if (m->failed)
    return m->failed;
  m->failed = err;
  size_t rlen = reason ? strlen(reason) : 0;
  uint32_t last = m->goaway_sent ? m->goaway_sent_last : m->last_peer_id;
  m->final_len = kr__frame_goaway(m->final, last, code, reason, rlen);
  m->final_off = 0;
  signal_output(m);
  if (m->cb.on_goaway)
    m->cb.on_goaway(m, 0, code, (const uint8_t *)reason,
                    rlen > KR_MAX_REASON ? KR_MAX_REASON : rlen, m->user_data);
  for (kr_stream *s = m->all, *next; s; s = next) {
    next = s->all_next;
    if (s->in_map || !s->app_closed)
      stream_end(m, s, code, (const uint8_t *)reason,
                 rlen > KR_MAX_REASON ? KR_MAX_REASON : rlen);
  }
  m->ready_head = m->ready_tail = NULL;
  m->wlist = NULL;
  return err;
}

static int fail_nomem(kr_mux *m) {
  return fail(m, KR_ENOMEM, KR_CODE_INTERNAL, "out of memory");
}

/* ------------------------------------------------------------------ output */

/* Appends a control frame; a failure fails the connection. */
static int emit(kr_mux *m, const uint8_t *frame, size_t len) {
  if (kr__buf_append(&m->mem, &m->out, frame, len) < 0)
    return fail_nomem(m);
  signal_output(m);
  return 0;
}

/* A peer that keeps sending PINGs or RESETs while not reading our
 * answers would grow the output without bound: past four output limits of
 * pending output, answering frames fail the connection. */
static int flood_check(kr_mux *m) {
  if (kr__buf_pending(&m->out) > 4 * m->opt.output_limit)
    return fail(m, KR_EPROTO, KR_CODE_PROTOCOL,
                "peer floods control frames without reading the answers");
  return 0;
}

static int emit_window(kr_mux *m, uint32_t sid, size_t inc) {
  uint8_t f[KR_FRAME_HEADER_SIZE + KR__WINDOW_LEN];
  return emit(m, f, kr__frame_window(f, sid, (uint32_t)inc));
}

/* Returns consumed credit once it reaches a quarter of the window, so the
 * sender always keeps at least three quarters in flight. */
static int return_credit(kr_mux *m, kr_stream *s) {
  if (s && s->in_map && !s->reset_sent && s->recv_open) {
    size_t threshold = m->opt.stream_window / 4;
    if (s->consumed_unacked >= (threshold ? threshold : 1)) {
      if (emit_window(m, s->id, s->consumed_unacked) < 0)
        return m->failed;
      s->recv_window += (int64_t)s->consumed_unacked;
      s->consumed_unacked = 0;
    }
  }
  size_t threshold = m->opt.connection_window / 4;
  if (m->conn_consumed_unacked >= (threshold ? threshold : 1)) {
    if (emit_window(m, 0, m->conn_consumed_unacked) < 0)
      return m->failed;
    m->conn_recv_window += (int64_t)m->conn_consumed_unacked;
    m->conn_consumed_unacked = 0;
  }
  return 0;
}

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

/* Writes one DATA frame of n bytes taken from src (or from s's queue when
 * src is NULL) into out. Caller checked windows; out has room. */
static void put_data(kr_mux *m, kr_stream *s, const void *src, size_t n,
                     int fin) {
  kr__frame_hdr h = {(uint32_t)n, KR__FRAME_DATA, fin ? KR__FLAG_FIN : 0,
                     s->id};
  uint8_t *p = m->out.data + m->out.len;
  kr__frame_hdr_encode(p, &h);
  if (src)
    memcpy(p + KR_FRAME_HEADER_SIZE, src, n);
  else
    kr__ring_read(&s->queue, p + KR_FRAME_HEADER_SIZE, n);
  m->out.len += KR_FRAME_HEADER_SIZE + n;
  signal_output(m);
  s->send_window -= (int64_t)n;
  m->conn_send_window -= (int64_t)n;
  if (fin) {
    s->fin_sent = 1;
    s->send_open = 0;
  }
}

/* Moves queued stream data into out, one frame per stream per turn in FIFO
 * order, while the connection window and the output limit allow. A stream
 * without credit leaves the FIFO until a WINDOW for it arrives, so it never
 * holds up the others. May fire on_close (a FIN completed a stream). */
static void flush(kr_mux *m) {
  kr_stream *s;
  while (!m->failed && (s = m->ready_head) &&
         kr__buf_pending(&m->out) < m->opt.output_limit) {
    size_t n = 0;
    if (s->queue.len > 0) {
      if (m->conn_send_window <= 0)
        break;
      n = min_size(s->queue.len, (size_t)s->send_window);
      n = min_size(n, (size_t)m->conn_send_window);
      n = min_size(n, m->peer_max_frame);
    }
    int fin = s->fin_queued && n == s->queue.len;
    if (kr__buf_reserve(&m->mem, &m->out, KR_FRAME_HEADER_SIZE + n) < 0) {
      fail_nomem(m);
      return;
    }
    put_data(m, s, NULL, n, fin);
    ready_remove(m, s);
    ready_update(m, s);
    wlist_add(m, s);
    if (fin)
      maybe_close(m, s);
  }
}

/* Fires the pending on_writable callbacks. */
static void notify_writable(kr_mux *m) {
  while (m->wlist && !m->failed) {
    kr_stream *s = m->wlist;
    m->wlist = s->wnext;
    s->in_wlist = 0;
    if (s->app_closed || !s->want_writable || stream_space(s) == 0)
      continue;
    s->want_writable = 0;
    if (m->cb.on_writable)
      m->cb.on_writable(s, m->user_data);
  }
}

/* -------------------------------------------------------------------- new */

static kr_stream *stream_new(kr_mux *m, uint32_t id, int local) {
  kr_stream *s = kr__calloc(&m->mem, 1, sizeof(*s));
  if (!s)
    return NULL;
  if (kr__map_put(&m->mem, &m->streams, id, s) < 0) {
    kr__free(&m->mem, s);
    return NULL;
  }
  s->m = m;
  s->id = id;
  s->local = local ? 1 : 0;
  s->in_map = 1;
  s->send_open = 1;
  s->recv_open = 1;
  s->send_window = m->peer_stream_window;
  s->recv_window = m->opt.stream_window;
  s->all_next = m->all;
  if (m->all)
    m->all->all_prev = s;
  m->all = s;
  if (local)
    m->n_local++;
  else
    m->n_peer++;
  return s;
}

int kr_mux_new(kr_mux **out, const kr_mux_options *opt,
               const kr_mux_callbacks *cbs, kr_time_us now, void *user_data) {
  if (!out || !cbs)
    return KR_EINVAL;
  kr_mux_options defaults;
  if (!opt) {
    kr__mux_options_init(&defaults);
    opt = &defaults;
  }
  const kr_mem *mem = opt->has_mem ? &opt->mem : kr_mem_default();
  kr_mux *m = kr__calloc(mem, 1, sizeof(*m));
  if (!m)
    return KR_ENOMEM;
  m->mem = *mem;
  m->cb = *cbs;
  m->user_data = user_data;
  m->opt = *opt;
  m->opt.hello = NULL;
  m->opt.hello_n = 0;
  m->next_id = opt->role == KR_ROLE_DIALER ? 1 : 2;
  m->conn_recv_window = opt->connection_window;
  m->created = m->last_rx = now;

  kr__hello h = {KR_PROTOCOL_VERSION, KR_PROTOCOL_VERSION, (uint8_t)opt->role,
                 {0}, NULL, 0};
  h.settings[KR__SETTING_MAX_FRAME_SIZE] = opt->max_frame_size;
  h.settings[KR__SETTING_STREAM_WINDOW] = opt->stream_window;
  h.settings[KR__SETTING_CONNECTION_WINDOW] = opt->connection_window;
  h.settings[KR__SETTING_MAX_STREAMS] = opt->max_streams;
  if (kr__buf_reserve(&m->mem, &m->out,
                      KR_FRAME_HEADER_SIZE + KR_MIN_FRAME_SIZE) < 0) {
    kr__free(&m->mem, m);
    return KR_ENOMEM;
  }
  int len = kr__hello_encode(m->out.data + KR_FRAME_HEADER_SIZE,
                             KR_MIN_FRAME_SIZE, &h, opt->hello, opt->hello_n);
  if (len < 0) {
    kr__buf_free(&m->mem, &m->out);
    kr__free(&m->mem, m);
    return len;
  }
  kr__frame_hdr fh = {(uint32_t)len, KR__FRAME_HELLO, 0, 0};
  kr__frame_hdr_encode(m->out.data, &fh);
  m->out.len = KR_FRAME_HEADER_SIZE + (size_t)len;
  *out = m;
  return 0;
}

static void mux_destroy(kr_mux *m) {
  while (m->all)
    stream_free(m, m->all);
  kr__map_free(&m->mem, &m->streams);
  kr__buf_free(&m->mem, &m->out);
  kr__free(&m->mem, m->ctl);
  kr__free(&m->mem, m->md);
  kr_mem mem = m->mem;
  kr__free(&mem, m);
}

void kr_mux_free(kr_mux *m) {
  if (!m)
    return;
  if (m->depth > 0) {
    m->free_pending = 1;
    return;
  }
  mux_destroy(m);
}

void *kr_mux_user_data(const kr_mux *m) { return m->user_data; }

void kr__mux_set_next_stream_id(kr_mux *m, uint32_t id) { m->next_id = id; }

void kr__mux_set_output_hook(kr_mux *m, void (*hook)(kr_mux *, void *),
                             void *ud) {
  m->out_hook = hook;
  m->out_hook_ud = ud;
}

void kr__stream_set_handler(kr_stream *s, const void *handler) {
  s->handler = handler;
}

const void *kr__stream_get_handler(const kr_stream *s) { return s->handler; }

/* ----------------------------------------------------------------- receive */

static int local_parity(const kr_mux *m) {
  return m->opt.role == KR_ROLE_DIALER ? 1 : 0;
}

/* An id that was used once but whose protocol state is gone. */
static int id_is_past(const kr_mux *m, uint32_t id) {
  if ((int)(id & 1) == local_parity(m))
    return id < m->next_id;
  return id <= m->last_peer_id;
}

static int proto(kr_mux *m, const char *reason) {
  return fail(m, KR_EPROTO, KR_CODE_PROTOCOL, reason);
}

/* Validates and decodes a metadata block into the scratch array.
 * Returns the entry count or a failure. */
static int decode_md(kr_mux *m, const uint8_t *in, size_t len) {
  const char *reason = NULL;
  int n = kr__md_validate(in, len, &reason);
  if (n < 0)
    return proto(m, reason);
  if ((size_t)n > m->md_cap) {
    kr_md *md = kr__realloc(&m->mem, m->md, (size_t)n * sizeof(*md));
    if (!md)
      return fail_nomem(m);
    m->md = md;
    m->md_cap = (size_t)n;
  }
  kr__md_decode(in, m->md, (size_t)n);
  return n;
}

static int on_hello_frame(kr_mux *m, const uint8_t *p, size_t len) {
  kr__hello h;
  const char *reason = NULL;
  if (kr__hello_decode(p, len, &h, &reason) < 0)
    return proto(m, reason);
  uint8_t v = h.max_version < KR_PROTOCOL_VERSION ? h.max_version
                                                   : KR_PROTOCOL_VERSION;
  uint8_t need = h.min_version > KR_PROTOCOL_VERSION ? h.min_version
                                                      : KR_PROTOCOL_VERSION;
  if (v < need)
    return fail(m, KR_EVERSION, KR_CODE_VERSION,
                "no protocol version in common");
  if (h.role == (uint8_t)m->opt.role)
    return proto(m, "both ends claim the same role");
  int n = decode_md(m, h.md, h.md_len);
  if (n < 0)
    return n;
  uint32_t *st = h.settings;
  m->peer_max_frame = st[KR__SETTING_MAX_FRAME_SIZE]
                          ? st[KR__SETTING_MAX_FRAME_SIZE]
                          : KR__DEFAULT_MAX_FRAME;
  m->peer_stream_window = st[KR__SETTING_STREAM_WINDOW]
                              ? st[KR__SETTING_STREAM_WINDOW]
                              : KR__DEFAULT_STREAM_WINDOW;
  m->conn_send_window = st[KR__SETTING_CONNECTION_WINDOW]
                            ? st[KR__SETTING_CONNECTION_WINDOW]
                            : KR__DEFAULT_CONNECTION_WINDOW;
  m->peer_max_streams = st[KR__SETTING_MAX_STREAMS]
                            ? st[KR__SETTING_MAX_STREAMS]
                            : KR__DEFAULT_MAX_STREAMS;
  m->hello_received = 1;
  if (m->cb.on_hello)
    m->cb.on_hello(m, m->md, (size_t)n, m->user_data);
  return 0;
}

static int send_reset(kr_mux *m, uint32_t id, uint8_t flags, uint32_t code,
                      const char *reason) {
  uint8_t f[KR__CTRL_FRAME_MAX];
  if (flood_check(m) < 0)
    return m->failed;
  size_t rlen = reason ? strlen(reason) : 0;
  return emit(m, f, kr__frame_reset(f, id, flags, code, reason, rlen));
}

static int on_open_frame(kr_mux *m, const uint8_t *p, size_t len) {
  uint32_t id = m->cur.stream_id;
  if ((int)(id & 1) == local_parity(m))
    return proto(m, "OPEN with this side's stream-id parity");
  if (id <= m->last_peer_id)
    return proto(m, "OPEN stream id not increasing");
  if (m->n_peer >= m->opt.max_streams)
    return fail(m, KR_ESTREAMLIMIT, KR_CODE_STREAM_LIMIT,
                "OPEN beyond MAX_STREAMS");
  m->last_peer_id = id;
  int n = decode_md(m, p, len);
  if (n < 0)
    return n;
  kr_stream *s = stream_new(m, id, 0);
  if (!s)
    return fail_nomem(m);
  int fin = (m->cur.flags & KR__FLAG_FIN) != 0;
  if (fin)
    s->recv_open = 0;
  if (m->goaway_sent && id > m->goaway_sent_last) {
    /* Crossed our GOAWAY: refuse; the object only tracks the RESET ACK. */
    s->app_closed = 1;
    s->send_open = 0;
    s->reset_sent = 1;
    return send_reset(m, id, 0, KR_CODE_REFUSED, "connection is draining");
  }
  s->reply_owed = 1;
  if (m->cb.on_open)
    m->cb.on_open(m, s, m->md, (size_t)n, fin, m->user_data);
  return 0;
}

static int on_reply_frame(kr_mux *m, const uint8_t *p, size_t len) {
  kr_stream *s = kr__map_get(&m->streams, m->cur.stream_id);
  if (!s)
    return proto(m, id_is_past(m, m->cur.stream_id)
                        ? "REPLY on a closed stream"
                        : "REPLY on an unknown stream");
  if (!s->local)
    return proto(m, "REPLY from the stream's opener");
  if (!s->reply_expected && !s->reset_sent)
    return proto(m, "second REPLY");
  int n = decode_md(m, p, len);
  if (n < 0 || s->reset_sent)
    return n < 0 ? n : 0;
  s->reply_expected = 0;
  int fin = (m->cur.flags & KR__FLAG_FIN) != 0;
  if (fin)
    s->recv_open = 0;
  if (m->cb.on_reply)
    m->cb.on_reply(s, m->md, (size_t)n, fin, m->user_data);
  if (fin && !s->app_closed)
    maybe_close(m, s);
  return 0;
}

static int on_reset_frame(kr_mux *m, const uint8_t *p, size_t len) {
  uint32_t id = m->cur.stream_id;
  uint32_t code = kr__get_u32(p);
  kr_stream *s = kr__map_get(&m->streams, id);
  if (!s && !id_is_past(m, id))
    return proto(m, "RESET on an unknown stream");
  if (m->cur.flags & KR__FLAG_ACK) {
    if (s && s->reset_sent)
      stream_end(m, s, code, NULL, 0);
    return 0;
  }
  /* The peer reset: it is in reset-sent and waits for our ACK, even when
   * we already closed the stream or reset it ourselves (crossing). */
  if (send_reset(m, id, KR__FLAG_ACK, code, NULL) < 0)
    return m->failed;
  if (s)
    stream_end(m, s, code, p + KR__RESET_FIXED, len - KR__RESET_FIXED);
  return 0;
}

static int on_window_frame(kr_mux *m, const uint8_t *p) {
  uint32_t inc = kr__get_u32(p);
  if (inc == 0 || (inc & 0x80000000u))
    return proto(m, "WINDOW increment out of range");
  if (m->cur.stream_id == 0) {
    m->conn_send_window += inc;
    if (m->conn_send_window > (int64_t)KR_MAX_WINDOW)
      return fail(m, KR_EFLOWCTL, KR_CODE_FLOW_CONTROL,
                  "connection window above 2^31-1");
    return 0;
  }
  kr_stream *s = kr__map_get(&m->streams, m->cur.stream_id);
  if (!s) {
    if (id_is_past(m, m->cur.stream_id))
      return 0; /* a WINDOW crossing the stream's end: legal */
    return proto(m, "WINDOW on an unknown stream");
  }
  s->send_window += inc;
  if (s->send_window > (int64_t)KR_MAX_WINDOW)
    return fail(m, KR_EFLOWCTL, KR_CODE_FLOW_CONTROL,
                "stream window above 2^31-1");
  ready_update(m, s);
  return 0;
}

static int on_ping_frame(kr_mux *m, const uint8_t *p, kr_time_us now) {
  if (m->cur.flags & KR__FLAG_ACK) {
    uint64_t sent = ((uint64_t)kr__get_u32(p) << 32) | kr__get_u32(p + 4);
    if (m->ping_out && sent == m->ping_sent) {
      m->ping_out = 0;
      m->rtt = now >= sent ? now - sent : 0;
      if (m->cb.on_ping)
        m->cb.on_ping(m, m->rtt, m->user_data);
    }
    return 0;
  }
  uint8_t f[KR_FRAME_HEADER_SIZE + KR__PING_LEN];
  if (flood_check(m) < 0)
    return m->failed;
  return emit(m, f, kr__frame_ping(f, KR__FLAG_ACK, p));
}

static int on_goaway_frame(kr_mux *m, const uint8_t *p, size_t len) {
  uint32_t last = kr__get_u32(p) & 0x7fffffffu;
  uint32_t code = kr__get_u32(p + 4);
  if (!m->goaway_received || last < m->goaway_recv_last)
    m->goaway_recv_last = last;
  m->goaway_received = 1;
  /* The application hears why before the refused streams close. */
  if (m->cb.on_goaway)
    m->cb.on_goaway(m, 1, code, p + KR__GOAWAY_FIXED, len - KR__GOAWAY_FIXED,
                    m->user_data);
  static const char refused[] = "not processed before the peer's GOAWAY";
  for (kr_stream *s = m->all, *next; s; s = next) {
    next = s->all_next;
    if (s->local && s->in_map && s->id > m->goaway_recv_last)
      stream_end(m, s, KR_CODE_REFUSED, (const uint8_t *)refused,
                 sizeof(refused) - 1);
  }
  return 0;
}

/* Checks a DATA header against stream state and windows and picks where
 * its payload goes. */
static int on_data_header(kr_mux *m) {
  uint32_t id = m->cur.stream_id, len = m->cur.length;
  kr_stream *s = kr__map_get(&m->streams, id);
  if (!s)
    return proto(m, id_is_past(m, id) ? "DATA on a closed stream"
                                      : "DATA on an unknown stream");
  if ((int64_t)len > m->conn_recv_window)
    return fail(m, KR_EFLOWCTL, KR_CODE_FLOW_CONTROL,
                "DATA beyond the connection window");
  m->conn_recv_window -= len;
  m->data_to = NULL;
  if (s->reset_sent) {
    m->conn_consumed_unacked += len; /* discarded: credit back at once */
    return return_credit(m, NULL);
  }
  if (!s->recv_open)
    return proto(m, "DATA after FIN");
  if (s->local && s->reply_expected)
    return proto(m, "DATA before REPLY");
  if ((int64_t)len > s->recv_window)
    return fail(m, KR_EFLOWCTL, KR_CODE_FLOW_CONTROL,
                "DATA beyond the stream window");
  s->recv_window -= len;
  m->data_to = s;
  return 0;
}

static void on_data_chunk(kr_mux *m, const uint8_t *p, size_t n) {
  kr_stream *s = m->data_to;
  if (s && !s->app_closed) {
    s->recv_unconsumed += n;
    if (m->cb.on_data)
      m->cb.on_data(s, p, n, m->user_data);
    else
      kr_stream_consume(s, n);
  } else {
    /* Reset while the frame was arriving: give the credit back. */
    m->conn_consumed_unacked += n;
    return_credit(m, NULL);
  }
}

static int on_data_end(kr_mux *m) {
  kr_stream *s = m->data_to;
  m->data_to = NULL;
  if (!s || s->app_closed || !(m->cur.flags & KR__FLAG_FIN))
    return 0;
  s->recv_open = 0;
  if (m->cb.on_fin)
    m->cb.on_fin(s, m->user_data);
  if (!s->app_closed)
    maybe_close(m, s);
  return 0;
}

/* A frame header is complete: validate it and prepare for its payload. */
static int on_header(kr_mux *m) {
  const char *reason = NULL;
  uint32_t max = m->hello_received ? m->opt.max_frame_size : KR_MIN_FRAME_SIZE;
  int rc = kr__frame_hdr_decode(m->hdr, max, &m->cur, &reason);
  if (rc == KR_EFRAMESIZE)
    return fail(m, rc, KR_CODE_FRAME_SIZE, reason);
  if (rc < 0)
    return proto(m, reason);
  if (!m->hello_received && m->cur.type != KR__FRAME_HELLO)
    return proto(m, "first frame is not HELLO");
  if (m->hello_received && m->cur.type == KR__FRAME_HELLO)
    return proto(m, "second HELLO");
  if (m->cur.type == KR__FRAME_DATA)
    return on_data_header(m);
  if (m->cur.length > m->ctl_cap) {
    size_t cap = m->cur.length < 4096 ? 4096 : m->cur.length;
    uint8_t *ctl = kr__realloc(&m->mem, m->ctl, cap);
    if (!ctl)
      return fail_nomem(m);
    m->ctl = ctl;
    m->ctl_cap = cap;
  }
  return 0;
}

/* A whole frame arrived. */
static int on_frame(kr_mux *m, kr_time_us now) {
  const uint8_t *p = m->ctl;
  size_t len = m->cur.length;
  switch (m->cur.type) {
  case KR__FRAME_DATA:
    return on_data_end(m);
  case KR__FRAME_HELLO:
    return on_hello_frame(m, p, len);
  case KR__FRAME_OPEN:
    return on_open_frame(m, p, len);
  case KR__FRAME_REPLY:
    return on_reply_frame(m, p, len);
  case KR__FRAME_RESET:
    return on_reset_frame(m, p, len);
  case KR__FRAME_WINDOW:
    return on_window_frame(m, p);
  case KR__FRAME_PING:
    return on_ping_frame(m, p, now);
  case KR__FRAME_GOAWAY:
    return on_goaway_frame(m, p, len);
  default:
    return proto(m, "unknown frame type");
  }
}

int64_t kr_mux_recv(kr_mux *m, const uint8_t *in, size_t len, kr_time_us now) {
  if (m->depth > 0)
    return KR_ESTATE;
  if (m->failed)
    return KR_ECLOSED;
  enter(m);
  m->last_rx = now;
  size_t pos = 0;
  while (pos < len && !m->failed && !m->free_pending) {
    if (m->hdr_len < KR_FRAME_HEADER_SIZE) {
      size_t take = min_size(KR_FRAME_HEADER_SIZE - m->hdr_len, len - pos);
      memcpy(m->hdr + m->hdr_len, in + pos, take);
      m->hdr_len += take;
      pos += take;
      if (m->hdr_len < KR_FRAME_HEADER_SIZE)
        break;
      if (on_header(m) < 0)
        break;
      m->got = 0;
    } else {
      size_t take = min_size(m->cur.length - m->got, len - pos);
      if (m->cur.type == KR__FRAME_DATA)
        on_data_chunk(m, in + pos, take);
      else
        memcpy(m->ctl + m->got, in + pos, take);
      m->got += take;
      pos += take;
    }
    if (m->got == m->cur.length && m->hdr_len == KR_FRAME_HEADER_SIZE &&
        !m->failed) {
      m->hdr_len = 0;
      on_frame(m, now);
    }
  }
  int failed = m->failed;
  if (!failed)
    notify_writable(m);
  if (leave(m))
    return failed ? failed : (int64_t)len;
  return failed ? failed : (int64_t)len;
}

/* ------------------------------------------------------------------- send */

size_t kr_mux_send(kr_mux *m, const uint8_t **out) {
  *out = NULL;
  m->out_signalled = 0;
  enter(m);
  flush(m);
  while (m->wlist && !m->failed) {
    notify_writable(m);
    flush(m);
  }
  if (leave(m))
    return 0;
  size_t pending = kr__buf_pending(&m->out);
  if (pending) {
    *out = m->out.data + m->out.off;
    return pending;
  }
  if (m->final_off < m->final_len) {
    *out = m->final + m->final_off;
    return m->final_len - m->final_off;
  }
  return 0;
}

int kr_mux_sent(kr_mux *m, size_t n) {
  size_t pending = kr__buf_pending(&m->out);
  if (pending) {
    if (n > pending)
      return KR_EINVAL;
    kr__buf_consume(&m->out, n);
    return 0;
  }
  if (n > m->final_len - m->final_off)
    return KR_EINVAL;
  m->final_off += n;
  return 0;
}

int kr_mux_want_write(kr_mux *m) {
  if (m->depth == 0) {
    enter(m);
    flush(m);
    if (leave(m))
      return 0;
  } else {
    flush(m);
  }
  return kr__buf_pending(&m->out) > 0 || m->final_off < m->final_len;
}

int kr_mux_want_read(const kr_mux *m) {
  /* Reading never waits for writing: a full-duplex peer whose output is
   * blocked needs our input (its WINDOW frames) to unblock. Input is
   * bounded by the windows; answers to control frames by flood_check(). */
  return !m->failed;
}

int kr_mux_is_done(const kr_mux *m) {
  if (kr__buf_pending(&m->out) > 0 || m->final_off < m->final_len)
    return 0;
  if (m->failed)
    return 1;
  return (m->goaway_sent || m->goaway_received) && m->streams.count == 0;
}

/* ------------------------------------------------------------------ timers */

int kr_mux_tick(kr_mux *m, kr_time_us now) {
  if (m->depth > 0)
    return KR_ESTATE;
  if (m->failed)
    return KR_ECLOSED;
  enter(m);
  const kr_mux_options *o = &m->opt;
  if (!m->hello_received) {
    if (o->handshake_timeout && now - m->created >= o->handshake_timeout)
      fail(m, KR_ETIMEDOUT, KR_CODE_TIMEOUT, "no HELLO within the handshake timeout");
  } else if (o->keepalive_timeout && now - m->last_rx >= o->keepalive_timeout) {
    fail(m, KR_ETIMEDOUT, KR_CODE_TIMEOUT, "keepalive timeout: peer silent");
  } else if (o->keepalive_interval && !m->ping_out &&
             now - m->last_rx >= o->keepalive_interval) {
    kr_mux_ping(m, now);
  }
  int rc = m->failed;
  leave(m);
  return rc;
}

kr_time_us kr_mux_next_deadline(const kr_mux *m) {
  const kr_mux_options *o = &m->opt;
  kr_time_us d = UINT64_MAX;
  if (m->failed)
    return d;
  if (!m->hello_received) {
    if (o->handshake_timeout)
      d = m->created + o->handshake_timeout;
    return d;
  }
  if (o->keepalive_timeout)
    d = m->last_rx + o->keepalive_timeout;
  if (o->keepalive_interval && !m->ping_out &&
      m->last_rx + o->keepalive_interval < d)
    d = m->last_rx + o->keepalive_interval;
  return d;
}

int kr_mux_ping(kr_mux *m, kr_time_us now) {
  if (m->failed)
    return KR_ECLOSED;
  if (!m->hello_received)
    return KR_ESTATE;
  if (m->ping_out)
    return KR_EAGAIN;
  uint8_t opaque[8];
  kr__put_u32(opaque, (uint32_t)(now >> 32));
  kr__put_u32(opaque + 4, (uint32_t)now);
  uint8_t f[KR_FRAME_HEADER_SIZE + KR__PING_LEN];
  if (kr__buf_append(&m->mem, &m->out, f, kr__frame_ping(f, 0, opaque)) < 0)
    return KR_ENOMEM;
  signal_output(m);
  m->ping_out = 1;
  m->ping_sent = now;
  return 0;
}

kr_time_us kr_mux_rtt(const kr_mux *m) { return m->rtt; }

int kr_mux_goaway(kr_mux *m, uint32_t code, const char *reason) {
  if (m->failed)
    return KR_ECLOSED;
  uint8_t f[KR__CTRL_FRAME_MAX];
  size_t rlen = reason ? strlen(reason) : 0;
  /* A later GOAWAY never raises the id announced first. */
  uint32_t last = m->goaway_sent ? m->goaway_sent_last : m->last_peer_id;
  size_t n = kr__frame_goaway(f, last, code, reason, rlen);
  if (kr__buf_append(&m->mem, &m->out, f, n) < 0)
    return KR_ENOMEM;
  signal_output(m);
  m->goaway_sent = 1;
  m->goaway_sent_last = last;
  enter(m);
  if (m->cb.on_goaway)
    m->cb.on_goaway(m, 0, code, (const uint8_t *)reason,
                    rlen > KR_MAX_REASON ? KR_MAX_REASON : rlen, m->user_data);
  leave(m);
  return 0;
}

int kr_mux_abort(kr_mux *m, uint32_t code, const char *reason) {
  if (m->failed)
    return KR_ECLOSED;
  enter(m);
  fail(m, KR_ECLOSED, code, reason);
  leave(m);
  return 0;
}

size_t kr_mux_num_streams(const kr_mux *m) { return m->streams.count; }

int kr_mux_is_ready(const kr_mux *m) { return m->hello_received; }

int kr_mux_can_open(const kr_mux *m) {
  return m->hello_received && !m->failed && !m->goaway_sent &&
         !m->goaway_received && m->next_id <= KR_MAX_STREAM_ID &&
         m->n_local < m->peer_max_streams;
}

/* ----------------------------------------------------------------- stream */

/* Appends an OPEN or REPLY frame with metadata; nothing changes on error. */
static int put_md_frame(kr_mux *m, uint8_t type, uint32_t id, const kr_md *md,
                        size_t n, int fin) {
  size_t size = kr__md_size(md, n);
  if (size == 0)
    return KR_EINVAL;
  if (size > m->peer_max_frame)
    return KR_ETOOBIG;
  if (kr__buf_reserve(&m->mem, &m->out, KR_FRAME_HEADER_SIZE + size) < 0)
    return KR_ENOMEM;
  kr__frame_hdr h = {(uint32_t)size, type, fin ? KR__FLAG_FIN : 0, id};
  uint8_t *p = m->out.data + m->out.len;
  kr__frame_hdr_encode(p, &h);
  kr__md_encode(p + KR_FRAME_HEADER_SIZE, md, n);
  m->out.len += KR_FRAME_HEADER_SIZE + size;
  signal_output(m);
  return 0;
}

int kr_stream_open(kr_mux *m, const kr_md *md, size_t n, int fin,
                   void *user_data, kr_stream **out) {
  if (m->failed)
    return KR_ECLOSED;
  if (!m->hello_received)
    return KR_ESTATE;
  if (m->goaway_sent || m->goaway_received)
    return KR_EGOAWAY;
  if (m->next_id > KR_MAX_STREAM_ID)
    return KR_EIDEXHAUSTED;
  if (m->n_local >= m->peer_max_streams)
    return KR_ESTREAMLIMIT;
  size_t size = kr__md_size(md, n);
  if (size == 0)
    return KR_EINVAL;
  if (size > m->peer_max_frame)
    return KR_ETOOBIG;
  kr_stream *s = stream_new(m, m->next_id, 1);
  if (!s)
    return KR_ENOMEM;
  int rc = put_md_frame(m, KR__FRAME_OPEN, s->id, md, n, fin);
  if (rc < 0) {
    map_remove(m, s);
    s->app_closed = 1;
    stream_free(m, s);
    return rc;
  }
  m->next_id += 2;
  s->user_data = user_data;
  s->reply_expected = 1;
  if (fin) {
    s->send_open = 0;
    s->fin_sent = 1;
  }
  *out = s;
  return 0;
}

int kr_stream_reply(kr_stream *s, const kr_md *md, size_t n, int fin) {
  kr_mux *m = s->m;
  if (s->app_closed || m->failed)
    return KR_ECLOSED;
  if (!s->reply_owed)
    return KR_ESTATE;
  int rc = put_md_frame(m, KR__FRAME_REPLY, s->id, md, n, fin);
  if (rc < 0)
    return rc;
  s->reply_owed = 0;
  if (fin) {
    s->send_open = 0;
    s->fin_sent = 1;
    enter(m);
    maybe_close(m, s);
    leave(m);
  }
  return 0;
}

int64_t kr_stream_write(kr_stream *s, const void *buf, size_t len) {
  kr_mux *m = s->m;
  if (s->app_closed || m->failed)
    return KR_ECLOSED;
  if (s->reply_owed || !s->send_open || s->fin_queued)
    return KR_ESTATE;
  const uint8_t *p = buf;
  size_t done = 0;
  int nomem = 0;
  /* Direct path: nothing queued ahead on this stream nor waiting on others
   * (they get the connection credit first), output not full. */
  if (s->queue.len == 0 && m->ready_head == NULL) {
    while (done < len && s->send_window > 0 && m->conn_send_window > 0 &&
           kr__buf_pending(&m->out) < m->opt.output_limit) {
      size_t n = min_size(len - done, (size_t)s->send_window);
      n = min_size(n, (size_t)m->conn_send_window);
      n = min_size(n, m->peer_max_frame);
      if (kr__buf_reserve(&m->mem, &m->out, KR_FRAME_HEADER_SIZE + n) < 0) {
        nomem = 1;
        break;
      }
      put_data(m, s, p + done, n, 0);
      done += n;
    }
  }
  size_t rest = min_size(len - done, stream_space(s));
  if (rest) {
    if (kr__ring_write(&m->mem, &s->queue, p + done, rest) == 0) {
      done += rest;
      ready_update(m, s);
    } else {
      nomem = 1;
    }
  }
  if (done == 0 && len > 0 && nomem)
    return KR_ENOMEM;
  if (done < len) {
    s->want_writable = 1;
    /* Short because memory ran out while queue space is free: no flush
     * will free space, so schedule the notification now; the retry gets
     * KR_ENOMEM if memory is still short. */
    if (nomem)
      wlist_add(m, s);
  }
  if (done == 0 && len > 0)
    return KR_EAGAIN;
  return (int64_t)done;
}

int kr_stream_close_write(kr_stream *s) {
  kr_mux *m = s->m;
  if (s->app_closed || m->failed)
    return KR_ECLOSED;
  if (s->reply_owed || !s->send_open || s->fin_queued)
    return KR_ESTATE;
  if (s->queue.len > 0) {
    s->fin_queued = 1;
    ready_update(m, s);
    return 0;
  }
  if (kr__buf_reserve(&m->mem, &m->out, KR_FRAME_HEADER_SIZE) < 0)
    return KR_ENOMEM;
  put_data(m, s, NULL, 0, 1);
  enter(m);
  maybe_close(m, s);
  leave(m);
  return 0;
}

int kr_stream_reset(kr_stream *s, uint32_t code, const char *reason) {
  kr_mux *m = s->m;
  if (s->app_closed)
    return KR_ECLOSED;
  size_t rlen = reason ? strlen(reason) : 0;
  if (rlen > KR_MAX_REASON)
    rlen = KR_MAX_REASON;
  if (!m->failed) {
    uint8_t f[KR__CTRL_FRAME_MAX];
    size_t n = kr__frame_reset(f, s->id, 0, code, reason, rlen);
    if (kr__buf_append(&m->mem, &m->out, f, n) < 0)
      return KR_ENOMEM;
    signal_output(m);
    s->reset_sent = 1;
  }
  s->send_open = 0;
  kr__ring_free(&m->mem, &s->queue);
  enter(m);
  app_close(m, s, code, (const uint8_t *)reason, rlen);
  if (m->failed)
    map_remove(m, s);
  stream_bury(m, s);
  if (!m->failed)
    return_credit(m, NULL);
  leave(m);
  return 0;
}

int kr_stream_consume(kr_stream *s, size_t n) {
  kr_mux *m = s->m;
  if (s->app_closed)
    return KR_ECLOSED;
  if (n > s->recv_unconsumed)
    return KR_EINVAL;
  s->recv_unconsumed -= n;
  s->consumed_unacked += n;
  m->conn_consumed_unacked += n;
  if (m->failed)
    return 0;
  enter(m);
  int rc = return_credit(m, s);
  leave(m);
  return rc < 0 ? rc : 0;
}

size_t kr_stream_write_space(const kr_stream *s) {
  if (s->app_closed || !s->send_open || s->fin_queued)
    return 0;
  return stream_space(s);
}

size_t kr_stream_queued(const kr_stream *s) { return s->queue.len; }
uint32_t kr_stream_id(const kr_stream *s) { return s->id; }
kr_mux *kr_stream_mux(const kr_stream *s) { return s->m; }
void *kr_stream_user_data(const kr_stream *s) { return s->user_data; }
void kr_stream_set_user_data(kr_stream *s, void *ud) { s->user_data = ud; }
