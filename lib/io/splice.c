/* Stream <-> socket splice (see splice.h). */
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "conn.h"
#include "core/mux_internal.h"
#include "splice.h"

/* Socket output below which consumed credit goes back to the stream. */
#define SPLICE_LOW_WATER ((size_t)64 << 10)

struct kr__splice {
  kr_stream *s;
  kr__sock *sock;
  kr__splice_done_cb done;
  void *ud;
  struct evbuffer *hold; /* socket bytes the stream refused (<= one read) */
  size_t unconsumed;     /* stream bytes queued on the socket, unconsumed */
  int connected;
  int reply;
  int stream_fin;    /* the stream sent FIN: shut the socket down after */
  int socket_eof;    /* the socket reached EOF: FIN the stream */
  int stream_closed; /* the stream's on_close came */
  int finished;
  int busy; /* callbacks of this splice on the stack; free waits for 0 */
};

static const kr__stream_handler splice_handler;

static void detach_stream(kr__splice *sp) {
  if (sp->s) {
    kr__stream_set_handler(sp->s, NULL);
    kr_stream_set_user_data(sp->s, NULL);
    sp->s = NULL;
  }
}

static void splice_free(kr__splice *sp) {
  detach_stream(sp);
  kr__sock_free(sp->sock);
  evbuffer_free(sp->hold);
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
  detach_stream(sp);
  if (sp->busy == 0)
    splice_free(sp);
}

/* Returns credit for stream bytes the socket has sent. */
static void give_credit(kr__splice *sp) {
  size_t pending = kr__sock_pending(sp->sock);
  if (sp->s && sp->unconsumed > pending) {
    kr_stream_consume(sp->s, sp->unconsumed - pending);
    sp->unconsumed = pending;
  }
}

static void maybe_done(kr__splice *sp) {
  if (sp->stream_closed && kr__sock_pending(sp->sock) == 0)
    finish(sp, 0, "done");
}

/* Moves held socket bytes into the stream; resumes reading when all went. */
static void pump_hold(kr__splice *sp) {
  while (sp->s && evbuffer_get_length(sp->hold) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(sp->hold, -1, NULL, &v, 1) < 1)
      break;
    int64_t w = kr_stream_write(sp->s, v.iov_base, v.iov_len);
    if (w <= 0)
      return; /* on_writable comes back here */
    evbuffer_drain(sp->hold, (size_t)w);
  }
  if (!sp->s)
    return;
  if (sp->socket_eof)
    kr_stream_close_write(sp->s); /* may end the stream (and the splice) */
  else
    kr__sock_set_reading(sp->sock, 1);
}

/* ------------------------------------------------------ socket callbacks */

static void k_connect(kr__sock *sock, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  sp->connected = 1;
  if (sp->reply && sp->s)
    kr_stream_reply(sp->s, NULL, 0, 0);
  if (sp->stream_fin)
    kr__sock_shutdown_write(sock); /* FIN arrived while connecting */
  leave(sp);
}

static void k_read(kr__sock *sock, const uint8_t *p, size_t n, void *ud) {
  kr__splice *sp = ud;
  if (!sp->s || sp->finished)
    return;
  enter(sp);
  size_t done = 0;
  if (evbuffer_get_length(sp->hold) == 0) {
    int64_t w = kr_stream_write(sp->s, p, n);
    if (w > 0)
      done = (size_t)w;
    else if (w < 0 && w != KR_EAGAIN)
      kr_stream_reset(sp->s, KR_CODE_INTERNAL, "stream write failed");
  }
  if (sp->s && done < n) {
    /* The stream is full: keep the rest and stop reading until it drains. */
    evbuffer_add(sp->hold, p + done, n - done);
    kr__sock_set_reading(sock, 0);
  }
  leave(sp);
}

static void k_drain(kr__sock *sock, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  give_credit(sp);
  if (kr__sock_pending(sock) > 0)
    kr__sock_want_drain(sock, sp->stream_closed ? 0 : SPLICE_LOW_WATER);
  maybe_done(sp);
  leave(sp);
}

static void k_eof(kr__sock *sock, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  sp->socket_eof = 1;
  if (sp->s && evbuffer_get_length(sp->hold) == 0)
    kr_stream_close_write(sp->s);
  leave(sp);
}

static void k_error(kr__sock *sock, int err, const char *why, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  char msg[200];
  snprintf(msg, sizeof(msg), "%s%s",
           sp->connected ? "upstream connection failed: "
                         : "cannot connect to upstream: ",
           why);
  if (sp->s) {
    kr_stream *s = sp->s;
    detach_stream(sp);
    kr_stream_reset(s, KR_CODE_UPSTREAM, msg);
  }
  finish(sp, KR_EUPSTREAM, msg);
  leave(sp);
}

static const kr__sock_cbs splice_sock_cbs = {k_connect, k_read, k_drain, k_eof,
                                             k_error};

/* ------------------------------------------------------ stream callbacks */

static void s_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr__splice *sp = ud;
  if (sp->finished)
    return;
  /* Credit-bounded: the window limits what can be queued here. */
  size_t w = kr__sock_write(sp->sock, p, n, SIZE_MAX);
  if (w < n) {
    kr_stream_reset(s, KR_CODE_UPSTREAM, "upstream socket failed");
    return;
  }
  sp->unconsumed += n;
  give_credit(sp);
  if (kr__sock_pending(sp->sock) > 0)
    kr__sock_want_drain(sp->sock, SPLICE_LOW_WATER);
}

static void s_fin(kr_stream *s, void *ud) {
  kr__splice *sp = ud;
  sp->stream_fin = 1;
  if (sp->connected)
    kr__sock_shutdown_write(sp->sock);
}

static void s_writable(kr_stream *s, void *ud) {
  kr__splice *sp = ud;
  enter(sp);
  pump_hold(sp);
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
  } else if (kr__sock_pending(sp->sock) > 0) {
    /* Clean end: let the socket flush first, but not forever (an upstream
     * that stopped reading ends the splice through k_error). */
    kr__sock_want_drain(sp->sock, 0);
    kr__sock_set_deadline(sp->sock, 30000, "upstream stopped reading");
  } else {
    maybe_done(sp);
  }
  leave(sp);
}

static const kr__stream_handler splice_handler = {NULL, s_data, s_fin,
                                                  s_writable, s_close};

int kr__splice_new(kr_stream *s, kr__sock *sock, int connected, int reply,
                   kr__splice_done_cb done, void *ud, kr__splice **out) {
  kr__splice *sp = calloc(1, sizeof(*sp));
  if (!sp || !(sp->hold = evbuffer_new())) {
    free(sp);
    kr__sock_free(sock);
    return KR_ENOMEM;
  }
  sp->s = s;
  sp->sock = sock;
  sp->done = done;
  sp->ud = ud;
  sp->connected = connected;
  sp->reply = reply;
  kr_stream_set_user_data(s, sp);
  kr__stream_set_handler(s, &splice_handler);
  kr__sock_set_cbs(sock, &splice_sock_cbs, sp);
  if (out)
    *out = sp;
  return 0;
}

void kr__splice_peer_fin(kr__splice *sp) {
  sp->stream_fin = 1;
  if (sp->connected)
    kr__sock_shutdown_write(sp->sock);
}
