/* The client role (kasroute/client.h). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/client.h>
#include <kasroute/error.h>

#include "core/mux_internal.h"
#include "core/mux_types.h"
#include "io/conn.h"
#include "io/dial.h"
#include "io/url.h"

struct kr_client_options {
  kr__dial_opts dial; /* kas URL, token, TLS trust, keepalive */
};

typedef struct client_list client_list;

struct kr_client {
  struct event_base *base;
  kr_client_options opt;
  kr_mux_callbacks cbs; /* per-stream callbacks of the application */
  kr_client_state_cb on_state;
  void *ud;
  kr__dialer dialer;
  kr__conn *conn;
  int ready;
  int ended;
  uint32_t goaway_code; /* why kas sent GOAWAY, if it did */
  client_list *lists;   /* kr_client_list_agents() requests pending */
  /* Freeing from inside callbacks (kr_client_free()): depth counts the
   * application callbacks on the stack; freed silences them; reap_ev's
   * finalizer does the rest of the free once they have returned. */
  int depth;
  int freed;
  struct event *reap_ev;
};

/* Brackets every call into the application: a kr_client_free() inside
 * leaves c valid (freed set) until the loop reaps it. */
static void app_enter(kr_client *c) { c->depth++; }
static void app_leave(kr_client *c) { c->depth--; }

/* reap_ev is only ever finalized (kr_client_free()); it never fires. */
static void reap_never(evutil_socket_t fd, short what, void *arg) {}

int kr_client_options_new(kr_client_options **out) {
  kr_client_options *o = calloc(1, sizeof(*o));
  if (!o)
    return KR_ENOMEM;
  kr__dial_opts_init(&o->dial);
  *out = o;
  return 0;
}

void kr_client_options_free(kr_client_options *o) {
  if (o) {
    kr__dial_opts_wipe(&o->dial);
    free(o);
  }
}

int kr_client_options_set_url(kr_client_options *o, const char *url) {
  return kr__dial_opts_set_url(&o->dial, url);
}

int kr_client_options_set_token(kr_client_options *o, const char *jwt,
                                size_t len) {
  return kr__dial_opts_set_token(&o->dial, jwt, len, 8192);
}

int kr_client_options_set_tls_ca_file(kr_client_options *o, const char *path) {
  return kr__dial_opts_set_ca_file(&o->dial, path);
}

int kr_client_options_set_tls_verify(kr_client_options *o, int verify) {
  o->dial.verify = verify ? 1 : 0;
  return 0;
}

int kr_client_options_set_keepalive(kr_client_options *o, kr_time_us interval,
                                    kr_time_us timeout) {
  return kr__dial_opts_set_keepalive(&o->dial, interval, timeout);
}

int kr_error_from_code(uint32_t code) {
  switch (code) {
  case KR_CODE_NO_ERROR:
    return 0;
  case KR_CODE_UNAVAILABLE:
    return KR_ENOTCONN;
  case KR_CODE_NOT_FOUND:
    return KR_ENOSERVICE;
  case KR_CODE_UNAUTHORIZED:
    return KR_EAUTH;
  case KR_CODE_UPSTREAM:
    return KR_EUPSTREAM;
  case KR_CODE_TIMEOUT:
    return KR_ETIMEDOUT;
  case KR_CODE_PROTOCOL:
  case KR_CODE_FRAME_SIZE:
  case KR_CODE_FLOW_CONTROL:
    return KR_EPROTO;
  default:
    return KR_ERESET;
  }
}

/* ---------------------------------------------- per-stream trampolines */

static kr_client *client_of(kr_stream *s) {
  return kr__conn_user_data(kr__conn_of(s));
}

static void t_reply(kr_stream *s, const kr_md *md, size_t n, int fin, void *ud) {
  kr_client *c = client_of(s);
  if (c->freed || !c->cbs.on_reply)
    return;
  app_enter(c);
  c->cbs.on_reply(s, md, n, fin, ud);
  app_leave(c);
}
static void t_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr_client *c = client_of(s);
  if (c->freed || !c->cbs.on_data) {
    kr_stream_consume(s, n);
    return;
  }
  app_enter(c);
  c->cbs.on_data(s, p, n, ud);
  app_leave(c);
}
static void t_fin(kr_stream *s, void *ud) {
  kr_client *c = client_of(s);
  if (c->freed || !c->cbs.on_fin)
    return;
  app_enter(c);
  c->cbs.on_fin(s, ud);
  app_leave(c);
}
static void t_writable(kr_stream *s, void *ud) {
  kr_client *c = client_of(s);
  if (c->freed || !c->cbs.on_writable)
    return;
  app_enter(c);
  c->cbs.on_writable(s, ud);
  app_leave(c);
}
static void t_close(kr_stream *s, uint32_t code, const uint8_t *r, size_t rl,
                    void *ud) {
  kr_client *c = client_of(s);
  /* Streams refused because kas rejected the credentials say so. */
  if (code == KR_CODE_REFUSED && c->goaway_code == KR_CODE_UNAUTHORIZED)
    code = KR_CODE_UNAUTHORIZED;
  if (c->freed || !c->cbs.on_close)
    return;
  app_enter(c);
  c->cbs.on_close(s, code, r, rl, ud);
  app_leave(c);
}

static const kr__stream_handler trampoline = {t_reply, t_data, t_fin,
                                              t_writable, t_close};

/* ------------------------------------------------------------ connection */

static void state(kr_client *c, int err, const char *why) {
  if (c->freed || !c->on_state)
    return;
  app_enter(c);
  c->on_state(c, err, why, c->ud);
  app_leave(c);
}

static void end(kr_client *c, int err, const char *why) {
  if (c->ended)
    return;
  c->ended = 1;
  state(c, err, why);
}

static void cc_ready(kr__conn *conn, const kr_md *md, size_t n, void *ud) {
  kr_client *c = ud;
  c->ready = 1;
  state(c, 0, "ready");
}

static void cc_goaway(kr__conn *conn, uint32_t code, const uint8_t *r,
                      size_t rl, void *ud) {
  kr_client *c = ud;
  c->goaway_code = code;
}

static void cc_closed(kr__conn *conn, int err, const char *why, void *ud) {
  kr_client *c = ud;
  int e = err;
  if (c->goaway_code == KR_CODE_UNAUTHORIZED)
    e = KR_EAUTH;
  else if (!e)
    e = KR_ECLOSED;
  end(c, e, why);
}

static const kr__conn_cbs client_conn_cbs = {cc_ready, NULL, cc_goaway,
                                             cc_closed, NULL};

int kr_client_new(kr_client **out, struct event_base *base,
                  const kr_client_options *o,
                  const kr_mux_callbacks *stream_cbs,
                  kr_client_state_cb on_state, void *ud, char *err,
                  size_t errlen) {
  char dummy[8];
  if (!err) {
    err = dummy;
    errlen = sizeof(dummy);
  }
  err[0] = 0;
  if (!o || !o->dial.has_url || !o->dial.token_len) {
    snprintf(err, errlen, "%s", !o || !o->dial.has_url ? "the kas URL is required"
                                                   : "a token is required");
    return KR_ECONFIG;
  }
  kr_client *c = calloc(1, sizeof(*c));
  if (!c)
    return KR_ENOMEM;
  c->base = base;
  c->opt = *o;
  if (stream_cbs)
    c->cbs = *stream_cbs;
  c->on_state = on_state;
  c->ud = ud;
  int rc = kr__dialer_init_opts(&c->dialer, base, &o->dial, err, errlen);
  if (rc == 0 && !(c->reap_ev = event_new(base, -1, 0, reap_never, c)))
    rc = KR_ENOMEM;
  kr_mux_options *mo = NULL;
  if (rc == 0 && kr_mux_options_new(&mo) < 0)
    rc = KR_ENOMEM;
  if (rc == 0) {
    kr_md tok = {(const uint8_t *)KR_MD_TOKEN, strlen(KR_MD_TOKEN),
                 (const uint8_t *)o->dial.token, o->dial.token_len};
    kr_mux_options_set_role(mo, KR_ROLE_DIALER);
    kr_mux_options_set_keepalive(mo, o->dial.ka_interval, o->dial.ka_timeout);
    rc = kr_mux_options_add_hello(mo, &tok);
  }
  kr__transport *t = NULL;
  if (rc == 0) {
    const kr__url *u = &o->dial.url;
    rc = kr__dialer_connect(&c->dialer, o->dial.token, o->dial.token_len, 10000,
                            &t);
    if (rc == 0)
      rc = kr__conn_new(base, t, 0, mo, &client_conn_cbs, c, &c->conn);
    if (rc < 0)
      snprintf(err, errlen, "cannot connect to %s:%d: %s", u->host, u->port,
               kr_strerror(rc));
  }
  kr_mux_options_free(mo);
  if (rc < 0) {
    kr_client_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

static void list_drop_all(kr_client *c);

/* The rest of a free made inside a callback, from the loop (or from
 * event_base_free()): the conn and its transport are gone by then, so the
 * TLS configuration and WebSocket context they used can go too. */
static void reap(struct event *ev, void *arg) {
  kr_client *c = arg;
  kr__dialer_free(&c->dialer);
  free(c);
}

/* Inside a callback the conn defers its own end to the end of its
 * callback section (a transport may defer its own past that), and the
 * client stays, silent, until the reap event's finalizer runs: it must
 * answer the trampolines still on the stack, and the dialer must outlive
 * the transport. Outside callbacks everything goes at once. */
void kr_client_free(kr_client *c) {
  if (!c)
    return;
  list_drop_all(c); /* before the conn: the listings' streams die with it */
  c->freed = 1;
  kr__conn_free(c->conn);
  c->conn = NULL;
  kr__dial_opts_wipe(&c->opt.dial);
  if (c->depth > 0 && c->reap_ev) {
    event_free_finalize(0, c->reap_ev, reap);
    return;
  }
  if (c->reap_ev)
    event_free(c->reap_ev);
  kr__dialer_free(&c->dialer); /* after the conn */
  free(c);
}

int kr_client_open(kr_client *c, int64_t agent_id, const char *service,
                   const kr_md *extra, size_t n, int fin, void *sud,
                   kr_stream **out) {
  if (!c->ready || c->ended)
    return c->ended ? KR_ECLOSED : KR_ESTATE;
  if (agent_id <= 0 || !service || !*service || n > 1024)
    return KR_EINVAL;
  char agent[24];
  snprintf(agent, sizeof(agent), "%lld", (long long)agent_id);
  kr_md stack[16];
  kr_md *md = n + 2 <= 16 ? stack : malloc((n + 2) * sizeof(kr_md));
  if (!md)
    return KR_ENOMEM;
  md[0] = (kr_md){(const uint8_t *)KR_MD_AGENT, strlen(KR_MD_AGENT),
                  (const uint8_t *)agent, strlen(agent)};
  md[1] = (kr_md){(const uint8_t *)KR_MD_SERVICE, strlen(KR_MD_SERVICE),
                  (const uint8_t *)service, strlen(service)};
  for (size_t i = 0; i < n; i++)
    md[i + 2] = extra[i];
  kr_stream *s;
  int rc = kr_stream_open(kr__conn_mux(c->conn), md, n + 2, fin, sud, &s);
  if (md != stack)
    free(md);
  if (rc < 0)
    return rc;
  kr__stream_set_handler(s, &trampoline);
  kr__conn_kick(c->conn);
  *out = s;
  return 0;
}

void kr_client_flush(kr_client *c) { kr__conn_kick(c->conn); }

void kr_client_close(kr_client *c) {
  if (!c->ended)
    kr__conn_goaway(c->conn, KR_CODE_NO_ERROR, "client closing");
}

/* ------------------------------------------------------- agent listing */

/* Largest listing accepted (about 200,000 agents). */
#define KR__CLIENT_LIST_MAX ((size_t)64 << 20)

struct client_list {
  kr_client *c;
  kr_stream *s;
  client_list *prev, *next; /* in c->lists */
  kr_client_list_cb cb;
  void *ud;
  char *buf;
  size_t len, cap;
  int ok; /* REPLY ":status" 200 seen */
};

/* Detaches l from its stream and its client. */
static void list_unlink(client_list *l) {
  kr__stream_set_handler(l->s, NULL);
  kr_stream_set_user_data(l->s, NULL);
  if (l->prev)
    l->prev->next = l->next;
  else
    l->c->lists = l->next;
  if (l->next)
    l->next->prev = l->prev;
}

static void list_free(client_list *l) {
  free(l->buf);
  free(l);
}

/* kr_client_free(): pending listings end without their callback. */
static void list_drop_all(kr_client *c) {
  while (c->lists) {
    client_list *l = c->lists;
    list_unlink(l);
    list_free(l);
  }
}

/* Unlinked before the callback, which may free the client. */
static void list_end(kr_stream *s, client_list *l, int err) {
  kr_client *c = l->c;
  list_unlink(l);
  app_enter(c);
  if (err == 0)
    l->cb(l->buf ? l->buf : "", l->len, 0, l->ud);
  else
    l->cb(NULL, 0, err, l->ud);
  app_leave(c);
  list_free(l);
}

static void l_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                    void *ud) {
  client_list *l = ud;
  for (size_t i = 0; i < n; i++)
    if (md[i].name_len == strlen(KR_MD_STATUS) &&
        memcmp(md[i].name, KR_MD_STATUS, md[i].name_len) == 0 &&
        md[i].value_len == 3 && memcmp(md[i].value, "200", 3) == 0)
      l->ok = 1;
}

static void l_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  client_list *l = ud;
  if (l->len + n > KR__CLIENT_LIST_MAX) {
    kr_stream_reset(s, KR_CODE_CANCEL, "listing too large");
    return; /* on_close follows */
  }
  if (l->len + n + 1 > l->cap) {
    size_t cap = l->cap ? l->cap : 4096;
    while (cap < l->len + n + 1)
      cap *= 2;
    char *b = realloc(l->buf, cap);
    if (!b) {
      kr_stream_reset(s, KR_CODE_CANCEL, "out of memory");
      return;
    }
    l->buf = b;
    l->cap = cap;
  }
  memcpy(l->buf + l->len, p, n);
  l->len += n;
  l->buf[l->len] = 0;
  kr_stream_consume(s, n);
}

static void l_fin(kr_stream *s, void *ud) {
  client_list *l = ud;
  list_end(s, l, l->ok ? 0 : KR_EPROTO);
}

static void l_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  client_list *l = ud;
  kr_client *c = client_of(s);
  if (code == KR_CODE_REFUSED && c->goaway_code == KR_CODE_UNAUTHORIZED)
    code = KR_CODE_UNAUTHORIZED; /* refused because kas refused us */
  int err = kr_error_from_code(code);
  list_end(s, l, err ? err : KR_ECLOSED);
}

static const kr__stream_handler list_handler = {l_reply, l_data, l_fin, NULL,
                                                l_close};

int kr_client_list_agents(kr_client *c, kr_client_list_cb cb, void *ud) {
  if (!c || !cb)
    return KR_EINVAL;
  if (!c->ready || c->ended)
    return c->ended ? KR_ECLOSED : KR_ESTATE;
  client_list *l = calloc(1, sizeof(*l));
  if (!l)
    return KR_ENOMEM;
  l->c = c;
  l->cb = cb;
  l->ud = ud;
  kr_md md = {(const uint8_t *)KR_MD_LIST, strlen(KR_MD_LIST),
              (const uint8_t *)"agents", 6};
  int rc = kr_stream_open(kr__conn_mux(c->conn), &md, 1, 1, l, &l->s);
  if (rc < 0) {
    free(l);
    return rc;
  }
  kr__stream_set_handler(l->s, &list_handler);
  l->next = c->lists;
  if (c->lists)
    c->lists->prev = l;
  c->lists = l;
  kr__conn_kick(c->conn);
  return 0;
}
