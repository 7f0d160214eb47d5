/* The kas HTTP gateway (see gateway.h). */
#include <event2/buffer.h>
#include <event2/event.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <kasroute/error.h>

#include "core/mux_internal.h"
#include "http/http_map.h"
#include "http/http_parse.h"
#include "io/log.h"
#include "kas/auth_request.h"
#include "kas/cluster.h"
#include "kas/gateway.h"
#include "kas/http_auth.h"
#include "kas/listing.h"
#include "kas/route.h"

/* Unparsed client input held per connection (pipelined requests, body
 * bytes waiting for the tunnel stream): reading stops above it. */
#define GW_INPUT_LIMIT ((size_t)256 << 10)
/* Request body bytes held while the tunnel stream refuses more: the
 * parser pauses above it. */
#define GW_BODY_LIMIT ((size_t)256 << 10)
/* Response bytes queued for a slow client before stream credit is held
 * back (the agent's window then stops the flow). */
#define GW_OUTPUT_LOW ((size_t)256 << 10)
/* A client that neither sends nor receives while it owes us progress. */
#define GW_STALL_TIMEOUT_S 60
/* Client connections served at once; more are closed at accept. */
#define GW_MAX_CONNS 20000

#define API_PREFIX "/api/v1/agents/"
#define K8S_PREFIX "/k8s-proxy"

typedef struct gw_conn gw_conn;
typedef struct gw_req gw_req;

typedef enum gw_timer_phase {
  GW_T_NONE,
  GW_T_HEAD, /* waiting for a request head: idle or request timeout */
  GW_T_IO    /* the client owes progress (reading our output, sending body) */
} gw_timer_phase;

/* One request being served. */
struct gw_req {
  gw_conn *gc;
  int64_t agent;
  kr__route *route;   /* while routing */
  kr_stream *ts;      /* tunnel stream while open */
  kas_conn *ac;       /* its tunnel connection */
  int routed;         /* kr__route_done() owed */
  int open_fin;       /* the OPEN carried FIN (no body) */
  int has_body;
  int body_done;      /* the request message ended (parser on_end) */
  int fin_sent;       /* FIN sent on ts (or carried by the OPEN) */
  int upgrade;        /* the request asks for an upgrade */
  int expect_continue;
  int is_head;
  int http10;
  int keep_alive;     /* the client allows another request after this */
  struct evbuffer *to_agent; /* body bytes ts refused */
  /* Response state. */
  int replied;        /* a response head went to the client */
  int chunked;        /* we frame the body in chunks */
  int close_delimited;/* the body ends with the connection */
  int no_body;
  int resp_done;      /* the response is complete */
  size_t owed;        /* bytes received on ts, not yet consumed */
  kr__listing *list_ticket; /* GET /api/v1/agents in progress */
  kr__mdlist md;      /* a body-less request's metadata, until its reply */
  int retried;        /* re-routed once after a peer said "not here" */
  kr_time_us deadline; /* when routing gives up (kept for the retry) */
  int counted;        /* the response has a content-length we enforce */
  uint64_t body_left; /* its bytes still due */
  /* Kept from the head until the credentials are known. */
  kr__http_auth_kind kind;
  int impersonate;   /* Impersonate-* fields were sent (refused) */
  int md_rc;         /* building md failed (answered once authorized) */
  kr_kas_auth *auth; /* the host's verifier decides (auth_request.h) */
  int op;            /* what its verdict continues: GW_OP_* */
};

enum { GW_OP_ROUTE = 1, GW_OP_LIST = 2 };

struct gw_conn {
  kr_kas *k;
  kr__transport *t;
  int secure;
  char addr[64];  /* client IP, for X-Forwarded-For */
  char peer[96];  /* ip:port, for logs */
  kr__http_parser *parser;
  struct evbuffer *in;  /* received, not yet consumed by the parser */
  struct evbuffer *out; /* for the client, refused by the transport */
  gw_req *req;
  int paused;      /* the parser waits for the response (after on_end) */
  int body_paused; /* the parser waits for the tunnel stream to take body
                      bytes (on_body returned KR__HTTP_PAUSE) */
  int upgraded; /* raw relay after a 101 */
  int closing;  /* close once the output is sent; read nothing more */
  int reading;
  int in_feed;     /* inside kr__http_parser_feed() */
  int want_resume; /* resume the parser once feed() returns */
  int depth;    /* callbacks on the stack */
  int dead;     /* free when depth returns to 0 */
  struct event *timer;
  gw_timer_phase phase;
  struct event *flush_ev; /* one write per loop iteration */
  /* The last credentials this connection presented and what they proved:
   * clients send the same Authorization on every request, and a full JWT
   * check costs more than the rest of the request. */
  char *auth;
  size_t auth_len;
  kr__http_auth_kind auth_kind;
  uint64_t auth_gen; /* k->user_tokens_gen it was checked against */
  kr__identity *auth_id;
  const char *auth_reason; /* static text of the last refusal */
  gw_conn *prev, *next;
};

static const kr__stream_handler tunnel_handler;
static void process(gw_conn *gc);
static void finish_request(gw_conn *gc);

/* ------------------------------------------------------------ lifetime */

static void req_free(gw_req *r) {
  if (!r)
    return;
  kr__auth_cancel(r->auth);
  kr__listing_cancel(r->list_ticket);
  kr__mdlist_free(&r->md);
  kr__route_cancel(r->route);
  if (r->to_agent)
    evbuffer_free(r->to_agent);
  free(r);
}

/* Detaches the tunnel stream from the request; reset it unless it ended
 * cleanly (code KR_CODE_NO_ERROR and both directions closed). */
static void release_stream(gw_req *r, uint32_t code, const char *why) {
  if (!r->ts)
    return;
  kr_stream *s = r->ts;
  r->ts = NULL;
  kr__stream_set_handler(s, NULL);
  kr_stream_set_user_data(s, NULL);
  if (code != KR_CODE_NO_ERROR)
    kr_stream_reset(s, code, why);
  if (r->routed) {
    r->routed = 0;
    kr__route_done(r->gc->k, r->ac);
  }
}

static void conn_unlink(gw_conn *gc) {
  kr_kas *k = gc->k;
  if (gc->prev)
    gc->prev->next = gc->next;
  else if (k->gw_conns == gc)
    k->gw_conns = gc->next;
  else
    return; /* not listed */
  if (gc->next)
    gc->next->prev = gc->prev;
  gc->prev = gc->next = NULL;
  k->gw_count--;
}

static void conn_free_now(gw_conn *gc) {
  if (gc->req) {
    release_stream(gc->req, KR_CODE_CANCEL, "client went away");
    req_free(gc->req);
    gc->req = NULL;
  }
  if (gc->t)
    gc->t->ops->free(gc->t);
  kr__http_parser_free(gc->parser);
  if (gc->in)
    evbuffer_free(gc->in);
  if (gc->out)
    evbuffer_free(gc->out);
  if (gc->timer)
    event_free(gc->timer);
  if (gc->flush_ev)
    event_free(gc->flush_ev);
  if (gc->auth) {
    memset(gc->auth, 0, gc->auth_len);
    free(gc->auth);
  }
  free(gc->auth_id);
  free(gc);
}

/* Ends the connection at once (no linger): the transport is freed, the
 * tunnel stream reset. Deferred while callbacks are on the stack. */
static void conn_kill(gw_conn *gc) {
  if (gc->dead)
    return;
  gc->dead = 1;
  kr_kas *k = gc->k;
  conn_unlink(gc);
  if (gc->req && !gc->req->resp_done)
    kr__log(KR_LOG_INFO, "http_aborted",
            "kas=%s peer=%s agent=%" PRId64 " replied=%d upgraded=%d", k->name,
            gc->peer, gc->req->agent, gc->req->replied,
            gc->upgraded);
  if (gc->req) {
    release_stream(gc->req, KR_CODE_CANCEL, "client went away");
    kr__auth_cancel(gc->req->auth); /* no verdict may come back now */
  }
  if (gc->timer)
    event_del(gc->timer);
  if (gc->flush_ev)
    event_del(gc->flush_ev);
  if (gc->t) {
    gc->t->ops->free(gc->t);
    gc->t = NULL;
  }
  if (gc->depth == 0)
    conn_free_now(gc);
  kr__kas_maybe_drained(k);
}

static void enter(gw_conn *gc) { gc->depth++; }

/* Returns 0 if gc is still alive. */
static int leave(gw_conn *gc) {
  if (--gc->depth == 0 && gc->dead) {
    conn_free_now(gc);
    return -1;
  }
  return gc->dead ? -1 : 0;
}

/* ----------------------------------------------------------- timers */

static void set_timer(gw_conn *gc, gw_timer_phase ph, int seconds) {
  gc->phase = ph;
  if (ph == GW_T_NONE) {
    event_del(gc->timer);
    return;
  }
  struct timeval tv = {seconds, 0};
  event_add(gc->timer, &tv);
}

/* Chooses the timer after a state change. The head timer is set once per
 * request (so a client trickling bytes cannot extend it); the I/O timer is
 * re-armed on progress. Waiting for the agent has no timer here: a
 * Kubernetes watch may be silent for minutes, and the route deadline
 * bounds the wait for a tunnel. */
static void update_timer(gw_conn *gc, int progress) {
  gw_req *r = gc->req;
  if (gc->dead)
    return;
  if (!r && !gc->upgraded && !gc->closing) {
    if (gc->phase != GW_T_HEAD) {
      kr_time_us t = kr__http_parser_in_message(gc->parser)
                         ? gc->k->opt.http_request_timeout
                         : gc->k->opt.http_idle_timeout;
      set_timer(gc, GW_T_HEAD, (int)(t / 1000000u));
    }
    return;
  }
  int owes = evbuffer_get_length(gc->out) > 0 ||
             (r && !r->body_done && !gc->paused && !r->upgrade);
  if (!owes) {
    if (gc->phase != GW_T_NONE)
      set_timer(gc, GW_T_NONE, 0);
    return;
  }
  if (gc->phase != GW_T_IO || progress)
    set_timer(gc, GW_T_IO, GW_STALL_TIMEOUT_S);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  gw_conn *gc = arg;
  kr__log(KR_LOG_INFO, "http_timeout", "kas=%s peer=%s phase=%s",
          gc->k->name, gc->peer,
          gc->phase == GW_T_HEAD ? "request" : "stalled");
  conn_kill(gc);
}

/* ------------------------------------------------------------ output */

/* Sends queued output; returns credit on the tunnel stream for response
 * bytes once the queue is short again. */
static void flush(gw_conn *gc) {
  if (!gc->t)
    return;
  while (evbuffer_get_length(gc->out) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(gc->out, -1, NULL, &v, 1) < 1)
      break;
    size_t w = gc->t->ops->write(gc->t, v.iov_base, v.iov_len);
    evbuffer_drain(gc->out, w);
    if (w < v.iov_len)
      break;
  }
  gw_req *r = gc->req;
  if (r && r->ts && r->owed && evbuffer_get_length(gc->out) <= GW_OUTPUT_LOW) {
    kr_stream_consume(r->ts, r->owed);
    r->owed = 0;
  }
  if (gc->closing && evbuffer_get_length(gc->out) == 0 && !gc->dead) {
    /* Everything is out: close with a FIN, reading until the client's. */
    kr__transport *t = gc->t;
    set_timer(gc, GW_T_NONE, 0);
    t->ops->close(t);
  }
}

/* Queues bytes for the client. They go out in one write at the end of
 * this loop iteration (a response head and its body, or several DATA
 * frames read together, share a segment), or at once through flush(). */
static void send_bytes(gw_conn *gc, const void *p, size_t n) {
  if (!gc->t || gc->dead)
    return;
  evbuffer_add(gc->out, p, n);
  event_active(gc->flush_ev, EV_TIMEOUT, 0);
}

static void flush_cb(evutil_socket_t fd, short what, void *arg) {
  gw_conn *gc = arg;
  enter(gc);
  flush(gc);
  if (!gc->dead)
    update_timer(gc, 1);
  leave(gc);
}

/* The small JSON error every failure answers with. */
/* A whole response generated by kas itself: a JSON document b[0..n)
 * (a newline is appended). */
static void send_json(gw_conn *gc, int status, const char *b, size_t n) {
  gw_req *r = gc->req;
  if (r && r->replied) {
    /* Mid-response: the only signal left is a cut connection. */
    conn_kill(gc);
    return;
  }
  if (!r || (r->has_body && !r->body_done) || r->upgrade)
    gc->closing = 1; /* the rest of the request cannot be skipped safely */
  char head[256];
  int hl = snprintf(head, sizeof(head),
                    "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                    "content-length: %zu\r\n%s\r\n",
                    status, kr__http_reason(status), n + 1,
                    gc->closing ? "connection: close\r\n" : "");
  send_bytes(gc, head, (size_t)hl);
  if (!r || !r->is_head) { /* a HEAD response carries the length only */
    send_bytes(gc, b, n);
    send_bytes(gc, "\n", 1);
  }
  if (r) {
    r->replied = 1;
    r->resp_done = 1;
  }
}

static void send_error(gw_conn *gc, int status, const char *code,
                       const char *msg) {
  json_t *j = json_pack("{s:s, s:s}", "error", msg, "code", code);
  char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  const char *b = body ? body : "{\"error\":\"internal error\"}";
  send_json(gc, status, b, strlen(b));
  free(body);
  kr__log(KR_LOG_INFO, "http_error", "kas=%s peer=%s status=%d code=%s",
          gc->k->name, gc->peer, status, code);
}

/* Maps why a tunnel stream ended before a response to an HTTP error. */
static void send_stream_error(gw_conn *gc, uint32_t code, const char *why) {
  switch (code) {
  case KR_CODE_NOT_FOUND:
    send_error(gc, 404, "not_found", why);
    break;
  case KR_CODE_UNAVAILABLE:
    send_error(gc, 504, "agent_not_connected", why);
    break;
  case KR_CODE_TIMEOUT:
    send_error(gc, 504, "timeout", why);
    break;
  case KR_CODE_UNAUTHORIZED:
    send_error(gc, 403, "forbidden", why);
    break;
  case KR_CODE_REFUSED:
  case KR_CODE_SHUTDOWN:
    send_error(gc, 503, "unavailable", why);
    break;
  case KR_CODE_INTERNAL:
    send_error(gc, 500, "internal", why);
    break;
  default:
    send_error(gc, 502, "upstream_failed", why);
    break;
  }
}

/* ----------------------------------------------------- request body */

/* Moves held body bytes into the tunnel stream; sends FIN once the body
 * ended and nothing is held. Returns credit-free: body bytes are not
 * stream data we received, so only the parser is paused/resumed. */
static void push_body(gw_req *r) {
  if (!r->ts)
    return;
  struct evbuffer *b = r->to_agent;
  while (evbuffer_get_length(b) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(b, -1, NULL, &v, 1) < 1)
      break;
    int64_t w = kr_stream_write(r->ts, v.iov_base, v.iov_len);
    if (w <= 0)
      break;
    evbuffer_drain(b, (size_t)w);
    if ((size_t)w < v.iov_len)
      break;
  }
  if (r->body_done && !r->fin_sent && !r->upgrade &&
      evbuffer_get_length(b) == 0) {
    r->fin_sent = 1;
    kr_stream_close_write(r->ts);
  }
}

/* Body bytes from the client (or raw bytes after an upgrade). */
static void to_agent(gw_req *r, const uint8_t *p, size_t n) {
  if (r->ts && evbuffer_get_length(r->to_agent) == 0) {
    int64_t w = kr_stream_write(r->ts, p, n);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
    }
  }
  if (n)
    evbuffer_add(r->to_agent, p, n);
}

/* --------------------------------------------------- request routing */

static int is_service_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

/* The fields the gateway never forwards: credentials meant for kas, and
 * what it sets itself. */
static int skip_field(const char *name, size_t len, void *ud) {
  static const char *const skip[] = {
      "authorization", "host", "expect", "x-forwarded-for",
      "x-forwarded-proto", "x-forwarded-host", "proxy-authorization"};
  for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
    if (strlen(skip[i]) == len && memcmp(skip[i], name, len) == 0)
      return 1;
  return 0;
}

/* 1 if the path (before any '?') has a "." or ".." segment, also
 * percent-encoded ("%2e"). */
static int has_dot_segment(const char *path) {
  const char *p = path;
  while (*p && *p != '?' && *p != '#') {
    if (*p++ != '/')
      continue;
    int dots = 0;
    for (;;) {
      if (*p == '.') {
        p++;
      } else if (p[0] == '%' && p[1] == '2' && (p[2] == 'e' || p[2] == 'E')) {
        p += 3;
      } else {
        break;
      }
      dots++;
    }
    if ((dots == 1 || dots == 2) &&
        (*p == '/' || *p == 0 || *p == '?' || *p == '#'))
      return 1;
  }
  return 0;
}

static const char *field(const kr__http_head *h, const char *name) {
  const kr_md *m = kr__md_find(h->fields, h->n_fields, name);
  return m ? (const char *)m->value : NULL;
}

/* Body backpressure is over once the tunnel stream took most of what was
 * held: the parser goes on (at once, or when the current feed returns). */
static void resume_body(gw_conn *gc, gw_req *r) {
  if (!gc->body_paused ||
      evbuffer_get_length(r->to_agent) > GW_BODY_LIMIT / 2)
    return;
  gc->body_paused = 0;
  if (gc->in_feed)
    gc->want_resume = 1;
  else
    kr__http_parser_resume(gc->parser);
}

static void routed(kr_stream *s, kas_conn *ac, uint32_t code,
                   const char *reason, void *ud) {
  gw_req *r = ud;
  gw_conn *gc = r->gc;
  r->route = NULL;
  enter(gc);
  if (!s) {
    send_stream_error(gc, code, reason);
    /* Without the whole request read, p_end finishes it (or the
     * connection closes because the body cannot be skipped). */
    if (r->body_done)
      finish_request(gc);
    leave(gc);
    return;
  }
  r->ts = s;
  r->ac = ac;
  r->routed = 1;
  if (r->expect_continue && !r->body_done)
    send_bytes(gc, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  push_body(r);
  resume_body(gc, r);
  process(gc);
  leave(gc);
}

/* Checks the request's credentials, reusing the connection's last
 * successful check when the same Authorization value comes again and is
 * still valid. Returns what
 * kr__http_auth_check() returns; *out points at the identity (valid until
 * the next call) on success, gc->auth_reason holds the refusal reason. */
static int authenticate(gw_conn *gc, const char *authz, kr__http_auth_kind kind,
                        const kr__identity **out) {
  kr_kas *k = gc->k;
  size_t len = authz ? strlen(authz) : 0;
  int64_t now = (int64_t)time(NULL);
  gc->auth_reason = NULL;
  if (authz && gc->auth && gc->auth_len == len && gc->auth_kind == kind &&
      gc->auth_gen == k->user_tokens_gen &&
      now < gc->auth_id->valid_until && memcmp(gc->auth, authz, len) == 0) {
    /* memcmp, not a constant-time compare: both sides are what this same
     * client sent on this connection, so timing reveals nothing it does
     * not know (the verification itself was constant-time). */
    *out = gc->auth_id;
    return 0;
  }
  if (!gc->auth_id && !(gc->auth_id = malloc(sizeof(*gc->auth_id))))
    return KR_ENOMEM;
  if (gc->auth) { /* forget the old credentials first */
    memset(gc->auth, 0, gc->auth_len);
    free(gc->auth);
    gc->auth = NULL;
  }
  kr__http_auth_cfg cfg = {k->api_secret_len ? k->api_secret : NULL,
                           k->api_secret_len, k->user_tokens};
  int rc = kr__http_auth_check(&cfg, authz, len, kind, now, gc->auth_id,
                               &gc->auth_reason);
  if (rc < 0)
    return rc;
  if ((gc->auth = malloc(len + 1)) != NULL) {
    memcpy(gc->auth, authz, len + 1);
    gc->auth_len = len;
    gc->auth_kind = kind;
    gc->auth_gen = k->user_tokens_gen;
  }
  *out = gc->auth_id;
  return 0;
}

/* ------------------------------------------------- GET /api/v1/agents */

static void listed(const char *json, size_t len, int err, void *ud) {
  gw_req *r = ud;
  r->list_ticket = NULL;
  gw_conn *gc = r->gc;
  enter(gc);
  if (err < 0)
    send_error(gc, 500, "internal", "cannot list agents");
  else
    send_json(gc, 200, json, len);
  if (r->body_done)
    finish_request(gc);
  leave(gc);
}

/* The listing once the credentials were checked: rc and reason as
 * authenticate() gives them, idp the identity when rc is 0. Returns 0, or
 * a negative error after answering. */
static int list_authorized(gw_conn *gc, int rc, const kr__identity *idp,
                           const char *reason) {
  kr_kas *k = gc->k;
  gw_req *r = gc->req;
  if (rc == KR_EAUTH || rc == KR_EPERM) {
    k->stats[KR_KAS_STAT_AUTH_FAILURES]++;
    send_error(gc, 401, "unauthorized",
               reason ? reason : "credentials refused");
    return rc;
  }
  if (rc < 0 || !idp->any_agent) {
    send_error(gc, rc < 0 ? 500 : 403, rc < 0 ? "internal" : "forbidden",
               rc < 0 ? "cannot check credentials"
                      : "listing agents needs credentials for every agent");
    return rc < 0 ? rc : KR_EPERM;
  }
  if (kr__listing_start(k, listed, r, &r->list_ticket) < 0) {
    send_error(gc, 500, "internal", "out of memory");
    return KR_ENOMEM;
  }
  return 0;
}

/* ------------------------------------------------- host verification */

static int route_authorized(gw_conn *gc, int rc, const kr__identity *idp,
                            const char *reason);

/* The host's verdict on the request's credential (see verify_request). */
static void verified(const kr__auth_verdict *v, void *ud) {
  gw_req *r = ud;
  gw_conn *gc = r->gc;
  enter(gc);
  int rc;
  if (v->outcome == KR__AUTH_TIMEDOUT) {
    send_error(gc, 504, "timeout", "credential verification timed out");
    rc = KR_ETIMEDOUT;
  } else {
    const char *reason = v->reason;
    int arc = v->outcome == KR__AUTH_ALLOWED
                  ? kr__identity_check_kind(v->id, r->kind, &reason)
                  : KR_EAUTH;
    rc = r->op == GW_OP_LIST ? list_authorized(gc, arc, v->id, reason)
                             : route_authorized(gc, arc, v->id, reason);
  }
  /* On success r may be gone (routed and answered at once); on failure
   * it waits for the end of its body, unless that came already. */
  if (rc < 0 && r->body_done)
    finish_request(gc);
  leave(gc);
}

/* A Bearer credential the built-in checks refused (rc KR_EAUTH) goes to
 * the host's API verifier, if there is one. Verdicts are not cached: the
 * next request with the same credential asks again. Returns 0 when that
 * does not apply (the refusal stands), 1 when the verdict continues the
 * request (it may have done so already), or a negative error after
 * answering. */
static int verify_request(gw_conn *gc, const char *authz, int rc, int op) {
  kr_kas *k = gc->k;
  gw_req *r = gc->req;
  const char *cred;
  size_t n;
  if (rc != KR_EAUTH || !kr__auth_enabled(k, KR_KAS_AUTH_API) || !authz ||
      kr__http_auth_bearer(authz, strlen(authz), &cred, &n, NULL) != 0)
    return 0;
  r->op = op;
  rc = kr__auth_start(k, KR_KAS_AUTH_API, gc->peer, (const uint8_t *)cred, n,
                      k->opt.http_request_timeout, verified, r, &r->auth);
  if (rc < 0) {
    send_error(gc, 503, "unavailable",
               rc == KR_EAGAIN ? "too many credential verifications pending"
                               : "out of memory");
    return rc;
  }
  return 1;
}

/* GET /api/v1/agents: every connected agent, cluster-wide when Redis is
 * up, else this instance's. Needs credentials not limited to some
 * agents. */
static int list_agents(gw_conn *gc, const kr__http_head *h) {
  gw_req *r = gc->req;
  if (strcmp(h->method, "GET") != 0 && strcmp(h->method, "HEAD") != 0) {
    send_error(gc, 405, "method_not_allowed", "use GET");
    return KR_EINVAL;
  }
  r->kind = KR__AUTH_SERVICE_PROXY;
  const char *authz = field(h, "authorization");
  const kr__identity *idp;
  int rc = authenticate(gc, authz, KR__AUTH_SERVICE_PROXY, &idp);
  int v = verify_request(gc, authz, rc, GW_OP_LIST);
  if (v != 0)
    return v < 0 ? v : 0;
  return list_authorized(gc, rc, idp, gc->auth_reason);
}

/* ------------------------------------------------- proxied requests */

/* The stream's metadata for request h, but the caller's identity (added
 * once known). 0, or KR_ETOOBIG / KR_ENOMEM (md is then emptied). */
static int build_md(gw_conn *gc, const kr__http_head *h, const char *service,
                    size_t service_len, const char *path_prefix,
                    const char *path, kr__mdlist *md) {
  int rc = kr__mdlist_add(md, KR_MD_SERVICE, strlen(KR_MD_SERVICE), service,
                          service_len);
  if (rc == 0)
    rc = kr__mdlist_adds(md, KR_MD_METHOD, h->method);
  if (rc == 0) {
    size_t pl = strlen(path_prefix) + strlen(path);
    char *full = malloc(pl + 1);
    rc = KR_ENOMEM;
    if (full) {
      snprintf(full, pl + 1, "%s%s", path_prefix, path);
      /* A fragment never belongs in a request; drop one if sent. */
      pl = strcspn(full, "#");
      rc = kr__mdlist_add(md, KR_MD_PATH, strlen(KR_MD_PATH), full, pl);
      free(full);
    }
  }
  if (rc == 0)
    rc = kr__http_copy_fields(md, h, skip_field, NULL);
  if (rc == 0) {
    const char *xff = field(h, "x-forwarded-for");
    char buf[1024];
    if (xff && strlen(xff) < sizeof(buf) - 80)
      snprintf(buf, sizeof(buf), "%s, %s", xff, gc->addr);
    else
      snprintf(buf, sizeof(buf), "%s", gc->addr);
    rc = kr__mdlist_adds(md, "x-forwarded-for", buf);
  }
  if (rc == 0)
    rc =
        kr__mdlist_adds(md, "x-forwarded-proto", gc->secure ? "https" : "http");
  const char *host = field(h, "host");
  if (rc == 0 && host)
    rc = kr__mdlist_adds(md, "x-forwarded-host", host);
  if (rc < 0)
    kr__mdlist_free(md);
  return rc;
}

/* Routes the request once its credentials were checked (rc and reason as
 * authenticate() gives them, idp the identity when rc is 0): the
 * identity's checks, then the metadata prepared from the head, then the
 * route. Returns 0 (r may be gone then: routed and answered at once), or
 * a negative error after answering. */
static int route_authorized(gw_conn *gc, int rc, const kr__identity *idp,
                            const char *reason) {
  kr_kas *k = gc->k;
  gw_req *r = gc->req;
  if (rc == KR_EPERM || rc == KR_EAUTH) {
    k->stats[KR_KAS_STAT_AUTH_FAILURES]++;
    send_error(gc, rc == KR_EPERM ? 403 : 401,
               rc == KR_EPERM ? "forbidden" : "unauthorized",
               reason ? reason : "credentials refused");
    return rc;
  }
  if (rc < 0) { /* out of memory, or a server-side misconfiguration */
    send_error(gc, 500, "internal", "cannot check credentials");
    return rc;
  }
  if (r->kind == KR__AUTH_K8S_PROXY)
    r->agent = idp->agent_id;
  if (!kr__identity_allows(idp, r->agent)) {
    send_error(gc, 403, "forbidden", "agent not allowed for these credentials");
    return KR_EPERM;
  }
  if (r->impersonate) {
    send_error(gc, 403, "forbidden",
               "Impersonate-* headers are not accepted: the caller's "
               "identity comes from its credentials");
    return KR_EPERM;
  }
  rc = r->md_rc;
  /* Who is calling goes with the request when kas knows it: always on the
   * Kubernetes proxy (the agent impersonates that user), and on the
   * service proxy when the credentials name a user, so that an agent's
   * handler can authorize (kr_http_user()). As for API clients
   * (relay.c), never from the caller's own fields: reserved names
   * cannot come from a request head. */
  if (rc == 0 && (r->kind == KR__AUTH_K8S_PROXY || idp->user[0])) {
    rc = kr__mdlist_adds(&r->md, KR__MD_USER, idp->user);
    for (size_t i = 0; rc == 0 && i < idp->n_groups; i++)
      rc = kr__mdlist_adds(&r->md, KR__MD_GROUP, idp->groups[i]);
  }
  if (rc < 0) {
    kr__mdlist_free(&r->md);
    if (rc == KR_ETOOBIG)
      send_error(gc, 431, "header_too_large", "request header too large");
    else
      send_error(gc, 500, "internal", "out of memory");
    return rc;
  }
  k->stats[KR_KAS_STAT_HTTP_REQUESTS]++;
  r->deadline = kr__now_us() + k->opt.route_timeout;
  /* A body-less request keeps its metadata in r for one retry through
   * another instance. The route copies it, and may answer (and free r)
   * before it returns 0: r is not touched after success. */
  int keep = r->open_fin;
  kr__mdlist md = r->md;
  if (!keep)
    kr__mdlist_init(&r->md); /* md owns the entries now */
  rc =
      kr__route_start_until(k, r->agent, md.md, md.n, r->open_fin, 0,
                            r->deadline, &tunnel_handler, r, routed, &r->route);
  if (!keep)
    kr__mdlist_free(&md);
  if (rc < 0) { /* nothing was called back: r is there */
    kr__mdlist_free(&r->md);
    send_error(gc, 500, "internal", "out of memory");
    return rc;
  }
  return 0;
}

/* Checks the request line and the credentials, prepares the stream's
 * metadata and routes the request, now or once the host's verifier
 * decides. Returns 0, or a negative error after answering the client. */
static int start_request(gw_conn *gc, const kr__http_head *h) {
  gw_req *r = gc->req;
  const char *target = h->target;
  /* absolute-form (RFC 9112 3.2.2): the path starts after the authority. */
  if (strncasecmp(target, "http://", 7) == 0 ||
      strncasecmp(target, "https://", 8) == 0) {
    const char *p = strchr(target + (target[4] == ':' ? 7 : 8), '/');
    target = p ? p : "/";
  }
  const char *service = NULL, *path = "/";
  size_t service_len = 0;
  kr__http_auth_kind kind;
  int64_t agent = 0;

  if (strcmp(target, "/api/v1/agents") == 0 ||
      strncmp(target, "/api/v1/agents?", 15) == 0)
    return list_agents(gc, h);
  if (strncmp(target, API_PREFIX, strlen(API_PREFIX)) == 0) {
    kind = KR__AUTH_SERVICE_PROXY;
    const char *p = target + strlen(API_PREFIX);
    char *end;
    if (*p < '1' || *p > '9') {
      send_error(gc, 404, "not_found", "expected /api/v1/agents/{id}/services/{service}/...");
      return KR_EINVAL;
    }
    errno = 0;
    long long id = strtoll(p, &end, 10);
    if (strncmp(end, "/services/", 10) != 0 || id <= 0 || errno == ERANGE) {
      send_error(gc, 404, "not_found", "expected /api/v1/agents/{id}/services/{service}/...");
      return KR_EINVAL;
    }
    agent = id;
    service = end + 10;
    while (is_service_char(service[service_len]))
      service_len++;
    char after = service[service_len];
    if (service_len == 0 || service_len > 127 ||
        (after != 0 && after != '/' && after != '?')) {
      send_error(gc, 404, "not_found", "invalid service name");
      return KR_EINVAL;
    }
    if (after == '/' || after == '?')
      path = service + service_len; /* "?query" alone gets a "/" below */
  } else if (strncmp(target, K8S_PREFIX, strlen(K8S_PREFIX)) == 0 &&
             (target[strlen(K8S_PREFIX)] == '/' ||
              target[strlen(K8S_PREFIX)] == '?' ||
              target[strlen(K8S_PREFIX)] == 0)) {
    kind = KR__AUTH_K8S_PROXY;
    service = "kubernetes";
    service_len = strlen(service);
    if (target[strlen(K8S_PREFIX)])
      path = target + strlen(K8S_PREFIX);
  } else {
    send_error(gc, 404, "not_found", "unknown path");
    return KR_EINVAL;
  }
  if (has_dot_segment(path)) {
    /* A service's base path must not be escaped ("/app/../admin"). */
    send_error(gc, 400, "bad_request", "\".\" and \"..\" path segments are "
                                       "not accepted");
    return KR_EINVAL;
  }
  char qpath[2] = "/";
  const char *path_prefix = path[0] == '?' ? qpath : "";

  /* What the head says, kept for when the credentials are known (the head
   * is gone if the host's verifier answers later). Errors in it are
   * reported after the credentials' ones. */
  r->kind = kind;
  r->agent = agent;
  r->open_fin = !h->has_body && !h->upgrade;
  r->fin_sent = r->open_fin;
  r->expect_continue = h->expect_continue;
  r->is_head = h->is_head;
  r->http10 = h->http_major == 1 && h->http_minor == 0;
  for (size_t i = 0; i < h->n_fields; i++) {
    const kr_md *f = &h->fields[i];
    if (f->name_len >= 12 && memcmp(f->name, "impersonate-", 12) == 0)
      r->impersonate = 1;
  }
  r->md_rc = build_md(gc, h, service, service_len, path_prefix, path, &r->md);

  /* Who is calling. */
  const char *authz = field(h, "authorization");
  const kr__identity *idp;
  int rc = authenticate(gc, authz, kind, &idp);
  int v = verify_request(gc, authz, rc, GW_OP_ROUTE);
  if (v != 0)
    return v < 0 ? v : 0;
  return route_authorized(gc, rc, idp, gc->auth_reason);
}

/* ------------------------------------------------- parser callbacks */

static int p_head(const kr__http_head *h, void *ud) {
  gw_conn *gc = ud;
  gw_req *r = calloc(1, sizeof(*r));
  if (!r || !(r->to_agent = evbuffer_new())) {
    free(r);
    return KR_ENOMEM;
  }
  r->gc = gc;
  r->has_body = h->has_body;
  r->upgrade = h->upgrade;
  r->is_head = h->is_head;
  /* A draining kas answers this request, then closes. */
  r->keep_alive = h->keep_alive && !gc->k->draining;
  gc->req = r;
  set_timer(gc, GW_T_NONE, 0);
  int has_body = h->has_body;
  /* r may be gone when this returns (answered and finished at once). A
   * request answered already (an error, also from a host verdict given
   * at once) whose body cannot be skipped ends the parsing. */
  int rc = start_request(gc, h);
  return gc->closing || (rc < 0 && has_body) ? KR_ECLOSED : 0;
}

static int p_body(const uint8_t *p, size_t n, void *ud) {
  gw_conn *gc = ud;
  gw_req *r = gc->req;
  if (!r || r->resp_done)
    return 0; /* answered already: the body is dropped */
  to_agent(r, p, n);
  if (evbuffer_get_length(r->to_agent) <= GW_BODY_LIMIT)
    return 0;
  gc->body_paused = 1; /* until the stream takes most of it */
  return KR__HTTP_PAUSE;
}

static int p_end(void *ud) {
  gw_conn *gc = ud;
  gw_req *r = gc->req;
  if (!r)
    return 0;
  r->body_done = 1;
  push_body(r);
  gc->paused = 1; /* the next request waits for this response */
  if (r->resp_done)
    finish_request(gc);
  return 0;
}

static const kr__http_parser_cbs parser_cbs = {p_head, p_body, p_end};

/* ---------------------------------------------------- input pumping */

/* Feeds buffered input to the parser (or, after an upgrade, to the
 * tunnel stream) until it pauses or the input is used up; then decides
 * whether to keep reading. */
static void process(gw_conn *gc) {
  if (gc->in_feed)
    return; /* the feed loop below goes on by itself */
  int moved = 0; /* client bytes consumed: progress for the stall timer */
  while (!gc->dead && !gc->closing && evbuffer_get_length(gc->in) > 0) {
    gw_req *r = gc->req;
    if (gc->upgraded) {
      if (!r || !r->ts || evbuffer_get_length(r->to_agent) > GW_BODY_LIMIT)
        break;
      size_t n = evbuffer_get_length(gc->in);
      uint8_t *p = evbuffer_pullup(gc->in, -1);
      to_agent(r, p, n);
      evbuffer_drain(gc->in, n);
      moved = 1;
      break;
    }
    if (gc->paused || gc->body_paused || (r && r->upgrade))
      break; /* an upgrade's bytes wait for the 101 */
    struct evbuffer_iovec v;
    if (evbuffer_peek(gc->in, -1, NULL, &v, 1) < 1)
      break;
    gc->in_feed = 1;
    int64_t used = kr__http_parser_feed(gc->parser, v.iov_base, v.iov_len);
    gc->in_feed = 0;
    if (gc->dead)
      return;
    if (gc->want_resume) {
      gc->want_resume = 0;
      kr__http_parser_resume(gc->parser);
    }
    if (used < 0) {
      if (used == KR_ECLOSED || gc->closing) {
        flush(gc);
        break;
      }
      const char *why = kr__http_parser_error(gc->parser);
      if (gc->req)
        release_stream(gc->req, KR_CODE_CANCEL, "malformed request");
      gc->closing = 1;
      if (used == KR_ETOOBIG)
        send_error(gc, 431, "header_too_large",
                   why[0] ? why : "request header too large");
      else if (used == KR_ENOMEM)
        send_error(gc, 500, "internal", "out of memory");
      else
        send_error(gc, 400, "bad_request", why[0] ? why : "malformed request");
      return;
    }
    evbuffer_drain(gc->in, (size_t)used);
    moved |= used > 0;
  }
  if (gc->dead || !gc->t)
    return;
  int want = !gc->closing && evbuffer_get_length(gc->in) < GW_INPUT_LIMIT;
  if (want != gc->reading) {
    gc->reading = want;
    gc->t->ops->set_reading(gc->t, want);
  }
  update_timer(gc, moved);
}

/* The response is complete and the request fully read: ready for the
 * next request, or close. */
static void finish_request(gw_conn *gc) {
  gw_req *r = gc->req;
  if (!r)
    return;
  if (r->ts)
    release_stream(r, r->resp_done && r->fin_sent ? KR_CODE_NO_ERROR
                                                   : KR_CODE_CANCEL,
                   "request ended");
  if (!r->keep_alive || r->close_delimited || r->upgrade || !r->body_done ||
      gc->k->draining)
    gc->closing = 1;
  req_free(r);
  gc->req = NULL;
  gc->paused = 0;
  gc->body_paused = 0;
  gc->phase = GW_T_NONE;
  if (gc->closing) {
    flush(gc);
    return;
  }
  if (gc->in_feed) {
    gc->want_resume = 1; /* feed() pauses after on_end: undo it there */
    return;
  }
  kr__http_parser_resume(gc->parser);
  process(gc);
}

/* The agent finished the response (FIN, or a REPLY with FIN). */
static void response_ended(gw_conn *gc, gw_req *r) {
  if (r->chunked)
    send_bytes(gc, "0\r\n\r\n", 5);
  r->resp_done = 1;
  if (r->close_delimited || gc->upgraded)
    gc->closing = 1;
  if (r->body_done || gc->upgraded) {
    finish_request(gc);
  } else {
    /* The response ended before the request body: the body's rest
     * cannot be skipped safely, so the connection closes after this. */
    gc->closing = 1;
    if (r->ts)
      release_stream(r, KR_CODE_CANCEL, "response complete");
    flush(gc);
  }
}

/* --------------------------------------------------- tunnel stream */

static void t_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                    void *ud) {
  gw_req *r = ud;
  gw_conn *gc = r->gc;
  enter(gc);
  const kr_md *st = kr__md_find(md, n, KR_MD_STATUS);
  int status = st ? kr__http_parse_status(st->value, st->value_len) : -1;
  if (status < 200 && status != 101) {
    release_stream(r, KR_CODE_PROTOCOL, "bad :status");
    send_error(gc, 502, "upstream_failed", "the agent sent no valid status");
    goto out;
  }
  int upgrade = status == 101 && r->upgrade;
  if (status == 101 && !upgrade) {
    release_stream(r, KR_CODE_PROTOCOL, "101 without an upgrade request");
    send_error(gc, 502, "upstream_failed", "unexpected 101 response");
    goto out;
  }
  /* The agent's fields, minus hop-by-hop ones (an upgrade keeps
   * "upgrade"; "connection" is ours). */
  kr_md keep[KR__MDLIST_MAX_ENTRIES];
  size_t nk = 0;
  const kr_md *cl = NULL;
  int bad_cl = 0;
  for (size_t i = 0; i < n && nk < KR__MDLIST_MAX_ENTRIES; i++) {
    if (md[i].name_len && md[i].name[0] == ':')
      continue;
    char name[64];
    if (md[i].name_len < sizeof(name)) {
      memcpy(name, md[i].name, md[i].name_len);
      name[md[i].name_len] = 0;
      if (upgrade && strcmp(name, "upgrade") == 0) {
        keep[nk++] = md[i];
        continue;
      }
      if (kr__http_is_hop_by_hop(name, md[i].name_len, md, n))
        continue;
      if (strcmp(name, "content-length") == 0) {
        /* The framing we announce must be the one we enforce: one
         * decimal value (repeats must agree). */
        if (cl && (cl->value_len != md[i].value_len ||
                   memcmp(cl->value, md[i].value, cl->value_len) != 0))
          bad_cl = 1;
        if (cl)
          continue;
        cl = &md[i];
      }
    }
    keep[nk++] = md[i];
  }
  uint64_t cl_value = 0;
  if (cl) {
    if (cl->value_len == 0 || cl->value_len > 18)
      bad_cl = 1;
    for (size_t i = 0; i < cl->value_len && !bad_cl; i++) {
      if (cl->value[i] < '0' || cl->value[i] > '9')
        bad_cl = 1;
      else
        cl_value = cl_value * 10 + (uint64_t)(cl->value[i] - '0');
    }
  }
  if (bad_cl) {
    release_stream(r, KR_CODE_PROTOCOL, "invalid content-length");
    send_error(gc, 502, "upstream_failed", "the agent sent an invalid "
                                           "content-length");
    goto out;
  }
  /* Response framing toward the client. */
  r->no_body = r->is_head || status == 204 || status == 304 || upgrade;
  if (cl && !r->no_body) {
    r->counted = 1;
    r->body_left = cl_value;
  }
  kr_md extra[2];
  size_t n_extra = 0;
  static const char k_te[] = "transfer-encoding", v_chunked[] = "chunked",
                    k_conn[] = "connection", v_close[] = "close",
                    v_upgrade[] = "upgrade";
  if (!r->no_body && !cl) {
    if (r->http10) {
      r->close_delimited = 1;
    } else {
      r->chunked = 1;
      extra[n_extra++] = (kr_md){(const uint8_t *)k_te, sizeof(k_te) - 1,
                                 (const uint8_t *)v_chunked,
                                 sizeof(v_chunked) - 1};
    }
  }
  if (upgrade)
    extra[n_extra++] = (kr_md){(const uint8_t *)k_conn, sizeof(k_conn) - 1,
                               (const uint8_t *)v_upgrade,
                               sizeof(v_upgrade) - 1};
  else if (r->close_delimited || !r->keep_alive || gc->closing ||
           gc->k->draining)
    extra[n_extra++] = (kr_md){(const uint8_t *)k_conn, sizeof(k_conn) - 1,
                               (const uint8_t *)v_close, sizeof(v_close) - 1};
  kr__strbuf b;
  kr__strbuf_init(&b);
  int rc = kr__http_write_response_head(&b, status, keep, nk, extra, n_extra);
  if (rc < 0 || b.failed) {
    kr__strbuf_free(&b);
    release_stream(r, KR_CODE_PROTOCOL, "response head refused");
    send_error(gc, 502, "upstream_failed", "the agent's response head is invalid");
    goto out;
  }
  r->replied = 1;
  kr__mdlist_free(&r->md); /* no retry after an answer */
  send_bytes(gc, b.p, b.len);
  kr__strbuf_free(&b);
  if (upgrade) {
    gc->upgraded = 1;
    process(gc); /* bytes the client sent after its request */
  }
  if (fin && r->counted && r->body_left > 0)
    conn_kill(gc); /* an announced body that never came */
  else if (fin)
    response_ended(gc, r);
out:
  leave(gc);
}

static void t_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  gw_req *r = ud;
  gw_conn *gc = r->gc;
  enter(gc);
  r->owed += n;
  if (r->counted) {
    if (n > r->body_left) {
      /* More than announced: the client would take the rest for the
       * next response. */
      kr__log(KR_LOG_WARN, "http_agent_overrun", "kas=%s peer=%s agent=%" PRId64,
              gc->k->name, gc->peer, r->agent);
      conn_kill(gc);
      leave(gc);
      return;
    }
    r->body_left -= n;
  }
  if (r->no_body && !gc->upgraded) {
    /* A body where HTTP allows none: dropped. */
  } else if (r->chunked) {
    char line[24];
    size_t l = kr__http_chunk_line(line, n);
    send_bytes(gc, line, l);
    send_bytes(gc, p, n);
    send_bytes(gc, "\r\n", 2);
  } else {
    send_bytes(gc, p, n);
  }
  leave(gc);
}

static void t_fin(kr_stream *s, void *ud) {
  gw_req *r = ud;
  gw_conn *gc = r->gc;
  enter(gc);
  if (r->counted && r->body_left > 0) {
    conn_kill(gc); /* shorter than announced: the cut must show */
    leave(gc);
    return;
  }
  response_ended(gc, r);
  leave(gc);
}

static void t_writable(kr_stream *s, void *ud) {
  gw_req *r = ud;
  gw_conn *gc = r->gc;
  enter(gc);
  push_body(r);
  resume_body(gc, r);
  process(gc);
  leave(gc);
}

static void t_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  gw_req *r = ud;
  gw_conn *gc = r->gc;
  enter(gc);
  r->ts = NULL;
  kas_conn *ac = r->ac;
  if (r->routed) {
    r->routed = 0;
    kr__route_done(gc->k, ac);
  }
  if (!r->replied && ac && ac->kind == KR__LISTEN_PRIVATE &&
      (code == KR_CODE_UNAVAILABLE || code == KR_CODE_REFUSED)) {
    /* The instance presence named does not hold the agent (any more), or
     * refused the stream before processing it: forget it, and route a
     * body-less request once more (a fresh lookup). */
    kr__route_forget(gc->k, r->agent, ac->peer);
    if (!r->retried && r->md.n > 0 && !gc->upgraded) {
      r->retried = 1;
      r->ac = NULL;
      if (kr__route_start_until(gc->k, r->agent, r->md.md, r->md.n, 1, 0,
                                r->deadline, &tunnel_handler, r, routed,
                                &r->route) == 0) {
        leave(gc);
        return;
      }
    }
  }
  if (code != KR_CODE_NO_ERROR || !r->resp_done) {
    char why[KR_MAX_REASON + 1];
    snprintf(why, sizeof(why), "%.*s", (int)len, (const char *)reason);
    if (gc->upgraded || r->replied) {
      /* Mid-response: what arrived goes out, then the connection closes,
       * so the client sees the cut (no last chunk, or a short body). */
      if (!gc->upgraded || code != KR_CODE_NO_ERROR)
        kr__log(KR_LOG_INFO, "http_response_cut",
                "kas=%s peer=%s agent=%" PRId64 " code=%s", gc->k->name,
                gc->peer, r->agent, kr_code_name(code));
      gc->closing = 1;
      flush(gc);
    } else {
      if (ac && ac->kind == KR__LISTEN_PRIVATE && code == KR_CODE_INTERNAL)
        code = KR_CODE_UPSTREAM; /* the link to the other instance broke */
      send_stream_error(gc, code, why[0] ? why : "stream ended");
      if (r->body_done)
        finish_request(gc);
    }
  }
  leave(gc);
}

static const kr__stream_handler tunnel_handler = {t_reply, t_data, t_fin,
                                                  t_writable, t_close};

/* ------------------------------------------------ transport callbacks */

static void c_open(kr__transport *t, void *ud) {
  gw_conn *gc = ud;
  enter(gc);
  update_timer(gc, 0);
  leave(gc);
}

static void c_read(kr__transport *t, const uint8_t *p, size_t n, void *ud) {
  gw_conn *gc = ud;
  if (gc->closing)
    return; /* lingering close: input is dropped */
  enter(gc);
  evbuffer_add(gc->in, p, n);
  process(gc);
  leave(gc);
}

static void c_drain(kr__transport *t, void *ud) {
  gw_conn *gc = ud;
  enter(gc);
  flush(gc);
  if (!gc->dead)
    update_timer(gc, 1);
  leave(gc);
}

static void c_close(kr__transport *t, int err, const char *why, void *ud) {
  gw_conn *gc = ud;
  gc->t = NULL; /* its last callback: ours to free */
  t->ops->free(t);
  enter(gc);
  conn_kill(gc);
  leave(gc);
}

static const kr__transport_cbs conn_cbs = {c_open, c_read, c_drain, c_close};

/* ---------------------------------------------------------- public */

void kr__gateway_accept(kr_kas *k, kr__transport *t, int open,
                        const char *addr, int secure) {
  if (k->gw_count >= GW_MAX_CONNS) {
    kr__log(KR_LOG_WARN, "http_too_many_connections", "kas=%s peer=%s",
            k->name, t->peer);
    t->ops->free(t);
    return;
  }
  gw_conn *gc = calloc(1, sizeof(*gc));
  if (!gc || !(gc->in = evbuffer_new()) || !(gc->out = evbuffer_new()) ||
      !(gc->timer = event_new(k->base, -1, 0, timer_cb, gc)) ||
      !(gc->flush_ev = event_new(k->base, -1, 0, flush_cb, gc)) ||
      kr__http_parser_new(&gc->parser, 1, &k->opt.http_limits, &parser_cbs,
                          gc) < 0) {
    if (gc) {
      gc->t = t;
      conn_free_now(gc);
    } else {
      t->ops->free(t);
    }
    return;
  }
  gc->k = k;
  gc->t = t;
  gc->secure = secure;
  gc->reading = 1;
  snprintf(gc->addr, sizeof(gc->addr), "%s", addr);
  snprintf(gc->peer, sizeof(gc->peer), "%s", t->peer);
  t->cb = conn_cbs;
  t->ud = gc;
  gc->next = k->gw_conns;
  if (k->gw_conns)
    k->gw_conns->prev = gc;
  k->gw_conns = gc;
  k->gw_count++;
  /* The request timer runs from the accept, TLS handshake included. */
  set_timer(gc, GW_T_HEAD, (int)(k->opt.http_request_timeout / 1000000u));
  (void)open;
}

void kr__gateway_drain(kr_kas *k) {
  gw_conn *gc = k->gw_conns;
  while (gc) {
    gw_conn *next = gc->next;
    if (!gc->req) {
      conn_kill(gc); /* idle, or mid-head: nothing was promised */
    } else if (gc->req->auth) {
      /* Still verifying: its verdict would come too late to route. */
      gw_req *r = gc->req;
      enter(gc);
      kr__auth_cancel(r->auth);
      send_error(gc, 503, "unavailable", "kas is shutting down");
      if (r->body_done)
        finish_request(gc);
      leave(gc);
    }
    gc = next;
  }
}

void kr__gateway_free_all(kr_kas *k) {
  while (k->gw_conns) {
    gw_conn *gc = k->gw_conns;
    conn_unlink(gc);
    if (gc->req && gc->req->ts) {
      /* The tunnel connections are freed right after: no reset needed. */
      kr__stream_set_handler(gc->req->ts, NULL);
      kr_stream_set_user_data(gc->req->ts, NULL);
      gc->req->ts = NULL;
    }
    conn_free_now(gc);
  }
}

size_t kr__gateway_count(const kr_kas *k) { return k->gw_count; }
