/* Stream <-> socket splice (see splice.h). */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <kasroute/error.h>

#include "conn.h"
#include "core/mux_internal.h"
#include "splice.h"

/* Socket output below which consumed credit goes back to the stream. */
#define SPLICE_LOW_WATER ((size_t)64 << 10)

struct kr__splice {
  kr_stream *s;
  struct bufferevent *bev;
  kr__splice_done_cb done;
  void *ud;
  size_t unconsumed;   /* stream bytes in the socket output, not consumed */
  int connected;
  int reply;
  int stream_fin;      /* the stream sent FIN: shut the socket down after */
  int socket_shut;     /* shutdown(SHUT_WR) done */
  int socket_eof;      /* the socket reached EOF: FIN the stream */
  int stream_closed;   /* the stream's on_close came */
  int finished;
  int busy; /* callbacks of this splice on the stack; free waits for 0 */
  uint64_t to_socket, to_stream;
};

static const kr__stream_handler splice_handler;

static void splice_free(kr__splice *sp) {
  if (sp->s) {
    kr__stream_set_handler(sp->s, NULL);
    kr_stream_set_user_data(sp->s, NULL);
  }
  if (sp->bev)
    bufferevent_free(sp->bev);
  free(sp);
}

static void enter(kr__splice *sp) { sp->busy++; }

/* Ends a callback; frees the splice if it finished meanwhile. The caller
 * must not touch sp afterwards. */
static void leave(kr__splice *sp) {
  if (--sp->busy == 0 && sp->finished)
    splice_free(sp);
}

static void finish(kr__splice *sp, int err, const char *why) {
  if (sp->finished)
    return;
  sp->finished = 1;
  if (sp->done)
    sp->done(sp, err, why, sp->ud);
  if (sp->s) {
    kr__stream_set_handler(sp->s, NULL);
    kr_stream_set_user_data(sp->s, NULL);
    sp->s = NULL;
  }
  if (sp->busy == 0)
    splice_free(sp);
}

/* Returns credit for stream bytes the socket has sent. */
static void give_credit(kr__splice *sp) {
  size_t pending = evbuffer_get_length(bufferevent_get_output(sp->bev));
  if (sp->s && sp->unconsumed > pending) {
    kr_stream_consume(sp->s, sp->unconsumed - pending);
    sp->unconsumed = pending;
  }
}

static void maybe_done(kr__splice *sp) {
  if (sp->stream_closed && (sp->socket_shut || !sp->stream_fin) &&
      evbuffer_get_length(bufferevent_get_output(sp->bev)) == 0)
    finish(sp, 0, "done");
}

/* Moves socket input into the stream while it accepts. */
static void pump_to_stream(kr__splice *sp) {
  struct evbuffer *in = bufferevent_get_input(sp->bev);
  while (sp->s && evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
      break;
    int64_t w = kr_stream_write(sp->s, v.iov_base, v.iov_len);
    if (w <= 0) {
      if (w != KR_EAGAIN && w < 0) {
        kr_stream_reset(sp->s, KR_CODE_INTERNAL, "stream write failed");
        return;
      }
      break;
    }
    evbuffer_drain(in, (size_t)w);
    sp->to_stream += (uint64_t)w;
    if ((size_t)w < v.iov_len)
      break;
  }
  if (evbuffer_get_length(in) > 0) {
    bufferevent_disable(sp->bev, EV_READ); /* until on_writable */
    return;
  }
  if (sp->socket_eof && sp->s) {
    kr_stream_close_write(sp->s);
  } else if (!sp->socket_eof) {
    bufferevent_enable(sp->bev, EV_READ);
  }
}

static void bev_read(struct bufferevent *bev, void *arg) {
  kr__splice *sp = arg;
  enter(sp);
  pump_to_stream(sp);
  leave(sp);
}

static void on_output_drained(kr__splice *sp) {
  struct bufferevent *bev = sp->bev;
  give_credit(sp);
  if (sp->stream_fin && !sp->socket_shut &&
      evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    shutdown(bufferevent_getfd(bev), SHUT_WR);
    sp->socket_shut = 1;
  }
  maybe_done(sp);
}

static void bev_write(struct bufferevent *bev, void *arg) {
  kr__splice *sp = arg;
  enter(sp);
  on_output_drained(sp);
  leave(sp);
}

static void bev_event_in(kr__splice *sp, struct bufferevent *bev, short what);

static void bev_event(struct bufferevent *bev, short what, void *arg) {
  kr__splice *sp = arg;
  enter(sp);
  bev_event_in(sp, bev, what);
  leave(sp);
}

static void bev_event_in(kr__splice *sp, struct bufferevent *bev, short what) {
  if (what & BEV_EVENT_CONNECTED) {
    sp->connected = 1;
    int one = 1;
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one,
               sizeof(one));
    if (sp->reply && sp->s) {
      kr_stream_reply(sp->s, NULL, 0, 0);
        pump_to_stream(sp);
    }
    if (sp->stream_fin)
      on_output_drained(sp); /* FIN arrived while connecting */
    return;
  }
  if (what & BEV_EVENT_EOF) {
    sp->socket_eof = 1;
    pump_to_stream(sp);
    maybe_done(sp);
    return;
  }
  if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
    int e = EVUTIL_SOCKET_ERROR();
    char why[160];
    snprintf(why, sizeof(why), "%s: %s",
             sp->connected ? "upstream connection failed"
                           : "cannot connect to upstream",
             e ? evutil_socket_error_to_string(e) : "unknown error");
    if (sp->s) {
      kr_stream *s = sp->s;
      sp->s = NULL;
      kr__stream_set_handler(s, NULL);
      kr_stream_set_user_data(s, NULL);
      kr_stream_reset(s, KR_CODE_UPSTREAM, why);
      kr__conn_kick(kr__conn_of(s));
    }
    finish(sp, KR_EUPSTREAM, why);
  }
}

/* ------------------------------------------------------ stream callbacks */

static void s_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr__splice *sp = ud;
  if (sp->finished)
    return;
  if (bufferevent_write(sp->bev, p, n) != 0) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  sp->unconsumed += n;
  sp->to_socket += n;
}

static void s_fin(kr_stream *s, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  sp->stream_fin = 1;
  if (sp->connected)
    on_output_drained(sp);
  leave(sp);
}

static void s_writable(kr_stream *s, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  pump_to_stream(sp);
  leave(sp);
}

static void s_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  sp->s = NULL;
  sp->stream_closed = 1;
  if (code != KR_CODE_NO_ERROR) {
    char why[KR_MAX_REASON + 32];
    snprintf(why, sizeof(why), "stream reset (%s): %.*s", kr_code_name(code),
             (int)len, (const char *)reason);
    finish(sp, KR_ERESET, why);
  } else {
    /* Clean end: the socket side may still be flushing. */
    maybe_done(sp);
  }
  leave(sp);
}

static const kr__stream_handler splice_handler = {NULL, s_data, s_fin,
                                                  s_writable, s_close};

int kr__splice_new(kr_stream *s, struct bufferevent *bev, int connected,
                   int reply, kr__splice_done_cb done, void *ud,
                   kr__splice **out) {
  kr__splice *sp = calloc(1, sizeof(*sp));
  if (!sp) {
    bufferevent_free(bev);
    return KR_ENOMEM;
  }
  sp->s = s;
  sp->bev = bev;
  sp->done = done;
  sp->ud = ud;
  sp->connected = connected;
  sp->reply = reply;
  kr_stream_set_user_data(s, sp);
  kr__stream_set_handler(s, &splice_handler);
  bufferevent_setcb(bev, bev_read, bev_write, bev_event, sp);
  /* libevent moves 16 KiB per read or write call by default: far too
   * little for bulk streams. */
  bufferevent_set_max_single_read(bev, KR__IO_CHUNK);
  bufferevent_set_max_single_write(bev, KR__IO_CHUNK);
  bufferevent_setwatermark(bev, EV_WRITE, SPLICE_LOW_WATER, 0);
  /* Never hold more than a window's worth of socket input unsent. */
  bufferevent_setwatermark(bev, EV_READ, 0, (size_t)256 << 10);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
  if (out)
    *out = sp;
  return 0;
}

void kr__splice_peer_fin(kr__splice *sp) {
  enter(sp);
  sp->stream_fin = 1;
  if (sp->connected)
    on_output_drained(sp);
  leave(sp);
}

void kr__splice_abort(kr__splice *sp, uint32_t code, const char *reason) {
  if (sp->s) {
    kr_stream *s = sp->s;
    sp->s = NULL;
    kr__stream_set_handler(s, NULL);
    kr_stream_set_user_data(s, NULL);
    kr_stream_reset(s, code, reason);
  }
  sp->finished = 1;
  splice_free(sp);
}

uint64_t kr__splice_bytes_to_socket(const kr__splice *sp) { return sp->to_socket; }
uint64_t kr__splice_bytes_to_stream(const kr__splice *sp) { return sp->to_stream; }
