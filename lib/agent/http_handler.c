/* HTTP handlers: an agent service answered by application callbacks
 * (kasroute/http_handler.h), on top of the HTTP-over-streams mapping
 * (docs/PROTOCOL.md section 6.3, lib/http/http_map.h).
 *
 * One kr_http_exchange per stream. The agent installs
 * kr__http_handler_stream for the service; h_open copies the request head
 * out of the OPEN (http_request.h), makes the exchange the stream's user
 * data and calls on_request. Later stream callbacks arrive here with the
 * exchange.
 *
 * Lifetime: every entry point (stream callback, the deferred-FIN event,
 * the kr_http_* calls that may end the stream) brackets its work with
 * x_enter()/x_leave(). The stream's on_close marks the exchange closed and
 * calls the application's on_close; the memory goes in x_leave() once
 * nothing of the exchange is on the stack, so an exchange aborted inside
 * on_request (or inside any callback) stays valid until that callback and
 * the calls around it have returned.
 *
 * The response's end (FIN) is queued at once by kr_http_finish() and
 * friends, so that it leaves in the same write as the last body bytes
 * (a separate FIN cost a send here and a read in kas per request). That
 * can end the stream inside the call (the caller had finished sending);
 * the application's on_close is then reported from a zero-delay event,
 * never from inside a kr_http_* call it is still making (x->api counts
 * those). Only kr_http_abort() closes at once (documented). Closes still
 * owed when the agent is freed are reported by
 * kr__http_handler_svc_flush(), so nothing fires after kr_agent_free().
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/client.h>
#include <kasroute/error.h>

#include "core/mux_internal.h"
#include "handler_internal.h"
#include "http/http_map.h"
#include "http_request.h"
#include "io/conn.h"
#include "io/log.h"

/* Longest response field name accepted (the header promises 1..255). */
#define HX_MAX_NAME 255

struct kr_http_exchange {
  kr__http_handler_svc *svc;
  kr_stream *s;     /* NULL once the stream ended */
  struct event *ev; /* reports a close owed to the application */
  void *user_data;
  kr__http_request req; /* the request head (owned copies) */
  int body_open;        /* request body bytes may still arrive */
  /* Request body credit. */
  int paused;
  size_t held; /* bytes delivered and not given back yet */
  /* Response state. */
  int replied;
  int ended;      /* no more kr_http_write(): finished or whole body */
  int fin_owed;   /* the FIN goes out once pending is flushed */
  int api;        /* kr_http_* calls of the application on the stack */
  int close_owed; /* the stream ended inside such a call: on_close is
                     reported from ev (listed in svc->owed) */
  int close_err;
  kr_http_exchange *owed_prev, *owed_next;
  int want_writable; /* a kr_http_write() was short: on_writable owed */
  int counted;       /* a content-length the body must match */
  uint64_t body_left;
  uint8_t *pending; /* kr_http_respond_body() bytes the stream refused */
  size_t pending_len, pending_off;
  /* Lifetime. */
  int depth;    /* entry points on the stack */
  int closed;   /* the stream ended and on_close was called */
  int aborting; /* kr_http_abort() is resetting the stream */
};

/* ---------------------------------------------------------- callback sets */

int kr_http_handler_new(kr_http_handler **out) {
  kr_http_handler *h = calloc(1, sizeof(*h));
  if (!h)
    return KR_ENOMEM;
  *out = h;
  return 0;
}

void kr_http_handler_free(kr_http_handler *h) {
  free(h);
}

void kr_http_handler_set_on_request(kr_http_handler *h, kr_http_request_cb f) {
  h->on_request = f;
}

void kr_http_handler_set_on_body(kr_http_handler *h, kr_http_body_cb f) {
  h->on_body = f;
}

void kr_http_handler_set_on_body_end(kr_http_handler *h, kr_http_event_cb f) {
  h->on_body_end = f;
}

void kr_http_handler_set_on_writable(kr_http_handler *h, kr_http_event_cb f) {
  h->on_writable = f;
}

void kr_http_handler_set_on_close(kr_http_handler *h, kr_http_close_cb f) {
  h->on_close = f;
}

/* ------------------------------------------------------------- lifetime */

static void x_free(kr_http_exchange *x) {
  if (x->ev)
    event_free(x->ev);
  kr__http_request_free(&x->req);
  free(x->pending);
  free(x);
}

static void x_enter(kr_http_exchange *x) {
  x->depth++;
}

/* Frees the exchange when it is closed and this was the outermost entry
 * point. x must not be used after the call unless the caller entered
 * again before. */
static void x_leave(kr_http_exchange *x) {
  if (--x->depth == 0 && x->closed)
    x_free(x);
}

/* Detaches the stream from this layer and resets it (its on_close then
 * goes nowhere): used before on_request only. */
static void refuse(kr_stream *s, uint32_t code, const char *why) {
  kr_stream_set_user_data(s, NULL);
  kr__stream_set_handler(s, NULL);
  kr_stream_reset(s, code, why);
}

/* Queues the FIN, now or (with body bytes still pending) once they are
 * in the stream. A FIN that cannot be queued for lack of memory ends the
 * stream with a reset instead (the caller sees a cut response). */
static void send_fin(kr_http_exchange *x) {
  x->fin_owed = 1;
  if (x->pending || !x->s)
    return;
  x->fin_owed = 0;
  x_enter(x);
  if (kr_stream_close_write(x->s) == KR_ENOMEM && x->s)
    kr_stream_reset(x->s, KR_CODE_INTERNAL, "out of memory");
  x_leave(x);
}

static void owed_unlink(kr_http_exchange *x) {
  if (x->owed_prev)
    x->owed_prev->owed_next = x->owed_next;
  else
    x->svc->owed = x->owed_next;
  if (x->owed_next)
    x->owed_next->owed_prev = x->owed_prev;
  x->owed_prev = x->owed_next = NULL;
}

/* The exchange is over for the application: on_close, once. */
static void deliver_close(kr_http_exchange *x, int err) {
  if (x->close_owed) {
    x->close_owed = 0;
    owed_unlink(x);
  }
  event_del(x->ev);
  x->closed = 1;
  if (x->svc->cbs.on_close)
    x->svc->cbs.on_close(x, err, x->user_data);
}

/* ------------------------------------------------------- stream handler */

static void end_cb(evutil_socket_t fd, short what, void *arg);

static void h_open(kr_stream *s, const kr_md *md, size_t n, int fin,
                   void *data) {
  kr__http_handler_svc *svc = data;
  kr_http_exchange *x = calloc(1, sizeof(*x));
  if (!x) {
    refuse(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  x->svc = svc;
  x->s = s;
  x->user_data = svc->service_data;
  x->body_open = !fin;
  const char *why = "out of memory";
  int rc = kr__http_request_parse(&x->req, md, n, &why);
  if (rc == 0 &&
      !(x->ev = event_new(kr__conn_base(kr__conn_of(s)), -1, 0, end_cb, x)))
    rc = KR_ENOMEM;
  if (rc < 0) {
    if (rc == KR_ENOMEM)
      why = "out of memory";
    else if (rc == KR_ETOOBIG)
      why = "request head too large";
    char q[300];
    kr__log(KR_LOG_INFO, "http_request_refused", "reason=%s",
            kr__log_quote(q, sizeof(q), why, strlen(why)));
    refuse(s, rc == KR_ENOMEM ? KR_CODE_INTERNAL : KR_CODE_PROTOCOL, why);
    x_free(x);
    return;
  }
  kr_stream_set_user_data(s, x);
  x_enter(x);
  svc->cbs.on_request(x, svc->service_data);
  if (!x->closed && !x->body_open && svc->cbs.on_body_end)
    svc->cbs.on_body_end(x, x->user_data);
  x_leave(x);
}

static void h_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr_http_exchange *x = ud;
  x_enter(x);
  x->held += n;
  if (x->svc->cbs.on_body)
    x->svc->cbs.on_body(x, p, n, x->user_data);
  if (x->s && !x->paused && x->held > 0) {
    kr_stream_consume(x->s, x->held);
    x->held = 0;
  }
  x_leave(x);
}

static void h_fin(kr_stream *s, void *ud) {
  kr_http_exchange *x = ud;
  x_enter(x);
  x->body_open = 0;
  if (x->svc->cbs.on_body_end)
    x->svc->cbs.on_body_end(x, x->user_data);
  x_leave(x);
}

/* Moves the rest of a kr_http_respond_body() body into the stream; the
 * FIN follows once all of it went. */
static void flush_pending(kr_http_exchange *x) {
  while (x->s && x->pending_off < x->pending_len) {
    int64_t w = kr_stream_write(x->s, x->pending + x->pending_off,
                                x->pending_len - x->pending_off);
    if (w == KR_ENOMEM) {
      /* Nothing taken and no notification coming: the response is cut. */
      kr_stream_reset(x->s, KR_CODE_INTERNAL, "out of memory");
      return;
    }
    if (w <= 0)
      return; /* KR_EAGAIN: on_writable comes back */
    x->pending_off += (size_t)w;
  }
  if (x->s) {
    free(x->pending);
    x->pending = NULL;
    x->pending_len = x->pending_off = 0;
    if (x->fin_owed)
      send_fin(x);
  }
}

static void h_writable(kr_stream *s, void *ud) {
  kr_http_exchange *x = ud;
  x_enter(x);
  if (x->pending) {
    flush_pending(x);
  } else if (x->want_writable && !x->ended) {
    x->want_writable = 0;
    if (x->svc->cbs.on_writable)
      x->svc->cbs.on_writable(x, x->user_data);
  }
  x_leave(x);
}

static void h_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  kr_http_exchange *x = ud;
  x_enter(x);
  x->s = NULL;
  int err = x->aborting ? KR_ERESET : kr_error_from_code(code);
  if (x->api > 0 && !x->aborting) {
    /* Inside the application's kr_http_finish() or the like: report
     * from the loop. */
    x->close_owed = 1;
    x->close_err = err;
    x->owed_next = x->svc->owed;
    if (x->owed_next)
      x->owed_next->owed_prev = x;
    x->svc->owed = x;
    event_active(x->ev, EV_TIMEOUT, 0);
  } else {
    deliver_close(x, err);
  }
  x_leave(x);
}

/* A close owed to the application (see h_close). */
static void end_cb(evutil_socket_t fd, short what, void *arg) {
  kr_http_exchange *x = arg;
  x_enter(x);
  if (x->close_owed)
    deliver_close(x, x->close_err);
  x_leave(x);
}

void kr__http_handler_svc_flush(kr__http_handler_svc *svc) {
  while (svc->owed) {
    kr_http_exchange *x = svc->owed;
    x_enter(x);
    deliver_close(x, x->close_err);
    x_leave(x);
  }
}

const struct kr_handler kr__http_handler_stream = {
    h_open, {NULL, h_data, h_fin, h_writable, h_close}};

/* -------------------------------------------------------------- request */

const char *kr_http_method(const kr_http_exchange *x) {
  return x->req.method;
}

const char *kr_http_path(const kr_http_exchange *x) {
  return x->req.path;
}

const char *kr_http_header(const kr_http_exchange *x, const char *name) {
  return kr__http_request_header(&x->req, name);
}

size_t kr_http_header_count(const kr_http_exchange *x) {
  return x->req.fields.n;
}

int kr_http_header_at(const kr_http_exchange *x, size_t i, const char **name,
                      const char **value) {
  return kr__http_request_header_at(&x->req, i, name, value);
}

const char *kr_http_user(const kr_http_exchange *x) {
  return x->req.user;
}

size_t kr_http_group_count(const kr_http_exchange *x) {
  return x->req.n_groups;
}

const char *kr_http_group_at(const kr_http_exchange *x, size_t i) {
  return kr__http_request_group(&x->req, i);
}

int kr_http_has_body(const kr_http_exchange *x) {
  return x->s && x->body_open;
}

void *kr_http_user_data(const kr_http_exchange *x) {
  return x->user_data;
}

void kr_http_set_user_data(kr_http_exchange *x, void *user_data) {
  x->user_data = user_data;
}

/* Giving credit back can fail the whole connection (KR_ENOMEM while
 * queueing the WINDOW frame), which ends this stream inside the call: the
 * exchange is entered and the call counted like the other kr_http_* calls
 * that may end the stream, so that x outlives the call and on_close is
 * reported from the loop, never from inside kr_http_pause_body(). */
int kr_http_pause_body(kr_http_exchange *x, int pause) {
  if (!x->s)
    return KR_ECLOSED;
  x->paused = pause ? 1 : 0;
  if (!x->paused && x->held > 0) {
    size_t held = x->held;
    x->held = 0;
    x_enter(x);
    x->api++;
    kr_stream_consume(x->s, held);
    x->api--;
    x_leave(x);
  }
  return 0;
}

/* ------------------------------------------------------------- response */

/* Parses a content-length value (1..18 decimal digits). 0 or -1. */
static int parse_length(const uint8_t *p, size_t n, uint64_t *out) {
  if (n == 0 || n > 18)
    return -1;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9')
      return -1;
    v = v * 10 + (uint64_t)(p[i] - '0');
  }
  *out = v;
  return 0;
}

/* Checks and sends the response head: ":status" and fields[0..n) (names
 * lower-cased). Nothing is sent on failure. end: the response has no
 * body (the FIN is queued at once, see send_fin). */
static int respond_head(kr_http_exchange *x, int status, const kr_md *fields,
                        size_t n, int end) {
  if (x->closed)
    return KR_ECLOSED;
  if (x->replied)
    return KR_ESTATE; /* also when the stream just ended (close owed) */
  if (!x->s)
    return KR_ECLOSED;
  if (status == 101 ? !x->req.upgrade : (status < 200 || status > 599))
    return KR_EINVAL;
  if (n > 0 && !fields)
    return KR_EINVAL;
  kr__mdlist l;
  kr__mdlist_init(&l);
  char st[8];
  snprintf(st, sizeof(st), "%03d", status);
  int rc = kr__mdlist_adds(&l, KR_MD_STATUS, st);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const kr_md *f = &fields[i];
    if (!f->name || f->name_len > HX_MAX_NAME ||
        !kr__http_token_ok(f->name, f->name_len) ||
        (f->value_len > 0 && !f->value) ||
        !kr__http_value_ok(f->value, f->value_len)) {
      rc = KR_EINVAL; /* a reserved ":" name is not a token either */
      break;
    }
    char name[HX_MAX_NAME + 1];
    kr__http_lower_copy(name, f->name, f->name_len);
    rc = kr__mdlist_add(&l, name, f->name_len, f->value, f->value_len);
  }
  /* Framing is the gateway's business; it trusts one content-length. */
  const kr_md *cl = NULL;
  for (size_t i = 1; rc == 0 && i < l.n; i++) {
    const kr_md *f = &l.md[i];
    const char *name = (const char *)f->name;
    if (kr__http_is_hop_by_hop(name, f->name_len, l.md, l.n) &&
        !(status == 101 && strcmp(name, "upgrade") == 0))
      rc = KR_EINVAL;
    else if (strcmp(name, "content-length") == 0 && cl)
      rc = KR_EINVAL;
    else if (strcmp(name, "content-length") == 0)
      cl = f;
  }
  uint64_t length = 0;
  if (rc == 0 && cl && parse_length(cl->value, cl->value_len, &length) < 0)
    rc = KR_EINVAL;
  int counted =
      cl && !x->req.is_head && status != 101 && status != 204 && status != 304;
  if (rc == 0 && end && counted && length > 0)
    rc = KR_EINVAL; /* an announced body that never comes */
  if (rc == 0)
    rc = kr_stream_reply(x->s, l.md, l.n, 0);
  kr__mdlist_free(&l);
  if (rc < 0)
    return rc;
  x->replied = 1;
  x->counted = counted;
  x->body_left = length;
  if (end) {
    x->ended = 1;
    send_fin(x);
  }
  return 0;
}

int kr_http_respond(kr_http_exchange *x, int status, const kr_md *fields,
                    size_t n, int end) {
  x->api++;
  int rc = respond_head(x, status, fields, n, end);
  x->api--;
  return rc;
}

static int respond_body(kr_http_exchange *x, int status,
                        const char *content_type, const void *body,
                        size_t len) {
  if (x->closed)
    return KR_ECLOSED;
  if (x->replied)
    return KR_ESTATE; /* also when the stream just ended (close owed) */
  if (!x->s)
    return KR_ECLOSED;
  int no_body = status == 204 || status == 304;
  if ((len > 0 && !body) || status == 101 || (no_body && len > 0))
    return KR_EINVAL;
  kr_md f[2];
  size_t nf = 0;
  char cl[24];
  if (content_type)
    f[nf++] = (kr_md){(const uint8_t *)"content-type", 12,
                      (const uint8_t *)content_type, strlen(content_type)};
  if (!no_body) {
    snprintf(cl, sizeof(cl), "%zu", len);
    f[nf++] = (kr_md){(const uint8_t *)"content-length", 14,
                      (const uint8_t *)cl, strlen(cl)};
  }
  size_t send = x->req.is_head ? 0 : len;
  /* The body is copied before the head goes, so that nothing can fail
   * once the response has started. */
  uint8_t *copy = NULL;
  if (send > 0 && !(copy = malloc(send)))
    return KR_ENOMEM;
  int rc = respond_head(x, status, f, nf, send == 0);
  if (rc < 0 || send == 0) {
    free(copy);
    return rc;
  }
  memcpy(copy, body, send);
  x->pending = copy;
  x->pending_len = send;
  x->pending_off = 0;
  x->ended = 1;
  x->fin_owed = 1;
  x->body_left = 0;
  x_enter(x);
  flush_pending(x);
  x_leave(x);
  return 0;
}

int kr_http_respond_body(kr_http_exchange *x, int status,
                         const char *content_type, const void *body,
                         size_t len) {
  x->api++;
  int rc = respond_body(x, status, content_type, body, len);
  x->api--;
  return rc;
}

int64_t kr_http_write(kr_http_exchange *x, const void *data, size_t len) {
  if (x->closed)
    return KR_ECLOSED;
  if (x->ended)
    return KR_ESTATE;
  if (!x->s)
    return KR_ECLOSED;
  if (!x->replied)
    return KR_ESTATE;
  if (len > 0 && !data)
    return KR_EINVAL;
  if (x->counted && len > x->body_left)
    return KR_EINVAL;
  if (len == 0)
    return 0;
  int64_t w = kr_stream_write(x->s, data, len);
  if (w == KR_EAGAIN || (w >= 0 && (size_t)w < len))
    x->want_writable = 1;
  if (w > 0 && x->counted)
    x->body_left -= (uint64_t)w;
  return w;
}

int kr_http_finish(kr_http_exchange *x) {
  if (x->closed)
    return KR_ECLOSED;
  if (x->ended)
    return KR_ESTATE;
  if (!x->s)
    return KR_ECLOSED;
  if (!x->replied || (x->counted && x->body_left > 0))
    return KR_ESTATE;
  x->ended = 1;
  x->api++;
  send_fin(x);
  x->api--;
  return 0;
}

int kr_http_abort(kr_http_exchange *x, const char *reason) {
  if (!x->s)
    return KR_ECLOSED;
  x_enter(x);
  x->aborting = 1;
  int rc = kr_stream_reset(x->s, KR_CODE_UPSTREAM,
                           reason ? reason : "the handler aborted the request");
  if (rc < 0)
    x->aborting = 0; /* KR_ENOMEM: nothing happened */
  x_leave(x);
  return rc;
}
