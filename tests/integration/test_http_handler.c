/* HTTP handlers (kasroute/http_handler.h), end to end in one process: a
 * kas with its HTTP gateway, an agent serving kr_http_handler services,
 * and real HTTP clients (libevent's evhttp) talking to the gateway over
 * loopback, plus kr_client streams for HTTP over streams. Everything runs
 * on one event_base. */
#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kasroute/error.h>
#include <kasroute/http_handler.h>

#include "core/jwt.h"
#include "core/mem_internal.h"
#include "harness.h"
#include "http/http_map.h"

static th_env env;
static kr_kas *kas;
static kr_agent *agent;
static kr_client *client;
static int client_ready;

/* -------------------------------------------------------------- records
 * What the handler saw, one record per exchange (its user data), so that
 * a callback after on_close is caught without touching freed memory. */

#define MAX_RECS 64
#define STREAM_TOTAL ((size_t)64 << 20)
#define UPLOAD_TOTAL ((size_t)16 << 20)
#define PAUSE_EVERY ((size_t)1 << 20)
#define BIGDOC_TOTAL (((size_t)8 << 20) + 17) /* over the send queue */

typedef struct rec {
  int used;
  kr_http_exchange *x;
  char method[16], path[256];
  char hdr_test[64], hdr_test_upper[64], hdr_fwd_proto[32];
  int has_connection; /* a hop-by-hop field arrived */
  int header_at_ok;   /* header_at listed x-test in lower case */
  int header_at_out_of_range;
  char user[64];
  char groups[4][32];
  size_t n_groups;
  int has_body_at_request;
  int body_end;
  int closed, close_err, after_close;
  /* Streaming. */
  size_t total, sent;
  /* Upload. */
  size_t received, since_resume, max_while_paused, while_paused;
  int pauses, paused, mismatch;
  /* Upgrade echo. */
  int upgraded;
} rec;

static rec recs[MAX_RECS];
static int n_requests, n_closes, late_callbacks;
static struct event *resume_ev, *later_ev;
static rec *resume_rec, *later_rec;

static uint8_t pattern(size_t i) {
  return (uint8_t)((i * 7 + i / 251) & 0xff);
}

static rec *rec_of(void *ud) {
  rec *r = ud;
  if (r->closed) {
    r->after_close++;
    late_callbacks++;
  }
  return r;
}

static int got_request(void *arg) {
  (void)arg;
  return n_requests > 0;
}

static int last_closed(void *arg) {
  (void)arg;
  return n_requests > 0 && recs[n_requests - 1].closed;
}

/* --------------------------------------------------------------- handler */

static kr_md md_str(const char *name, const char *value) {
  kr_md m = {(const uint8_t *)name, strlen(name), (const uint8_t *)value,
             strlen(value)};
  return m;
}

/* Writes the pattern from r->sent on until r->total or a short write;
 * finishes at the end. */
static void pump(rec *r) {
  static uint8_t buf[65536];
  while (r->sent < r->total) {
    size_t n = r->total - r->sent;
    if (n > sizeof(buf))
      n = sizeof(buf);
    for (size_t i = 0; i < n; i++)
      buf[i] = pattern(r->sent + i);
    int64_t w = kr_http_write(r->x, buf, n);
    if (w <= 0) {
      ck_assert_int_eq(w, KR_EAGAIN);
      return;
    }
    r->sent += (size_t)w;
  }
  ck_assert_int_eq(kr_http_finish(r->x), 0);
}

/* Every way kr_http_respond() and friends refuse, then a valid answer. */
static void check_errors(kr_http_exchange *x) {
  kr_md f[2];
  ck_assert_int_eq(kr_http_write(x, "x", 1), KR_ESTATE);
  ck_assert_int_eq(kr_http_finish(x), KR_ESTATE);
  ck_assert_int_eq(kr_http_respond(x, 99, NULL, 0, 1), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond(x, 100, NULL, 0, 1), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond(x, 199, NULL, 0, 1), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond(x, 600, NULL, 0, 1), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond(x, 101, NULL, 0, 0), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond(x, 200, NULL, 1, 1), KR_EINVAL);
  f[0] = md_str(":status", "201");
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 1), KR_EINVAL);
  f[0] = md_str(":x", "1");
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 1), KR_EINVAL);
  const char *hop[] = {
      "connection", "Transfer-Encoding", "keep-alive",      "te",
      "trailer",    "upgrade",           "proxy-connection"};
  for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
    f[0] = md_str(hop[i], "x");
    ck_assert_msg(kr_http_respond(x, 200, f, 1, 1) == KR_EINVAL, "%s", hop[i]);
  }
  f[0] = md_str("bad name", "x");
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 1), KR_EINVAL);
  f[0] = md_str("", "x");
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 1), KR_EINVAL);
  f[0] = md_str("x-split", "a\r\nx-injected: 1");
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 1), KR_EINVAL);
  f[0] = md_str("content-length", "12x");
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 0), KR_EINVAL);
  f[0] = md_str("content-length", "2");
  f[1] = md_str("Content-Length", "2");
  ck_assert_int_eq(kr_http_respond(x, 200, f, 2, 0), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 1), KR_EINVAL); /* end */
  ck_assert_int_eq(kr_http_respond_body(x, 101, NULL, "", 0), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond_body(x, 204, NULL, "x", 1), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond_body(x, 200, NULL, NULL, 1), KR_EINVAL);
  ck_assert_int_eq(kr_http_respond_body(x, 200, "a\nb", "x", 1), KR_EINVAL);
  /* Still unanswered: a valid response goes through once. */
  ck_assert_int_eq(kr_http_respond_body(x, 200, "text/plain", "ok", 2), 0);
  ck_assert_int_eq(kr_http_respond_body(x, 200, "text/plain", "ok", 2),
                   KR_ESTATE);
  ck_assert_int_eq(kr_http_respond(x, 200, NULL, 0, 1), KR_ESTATE);
  ck_assert_int_eq(kr_http_write(x, "x", 1), KR_ESTATE);
  ck_assert_int_eq(kr_http_finish(x), KR_ESTATE);
}

/* content-length is enforced: no more bytes than announced, no FIN
 * before them all. */
static void check_length(kr_http_exchange *x) {
  kr_md f[1] = {md_str("content-length", "5")};
  ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 0), 0);
  ck_assert_int_eq(kr_http_write(x, "abcdef", 6), KR_EINVAL);
  ck_assert_int_eq(kr_http_write(x, "abc", 3), 3);
  ck_assert_int_eq(kr_http_finish(x), KR_ESTATE);
  ck_assert_int_eq(kr_http_write(x, "de", 2), 2);
  ck_assert_int_eq(kr_http_finish(x), 0);
  ck_assert_int_eq(kr_http_finish(x), KR_ESTATE);
}

static void on_request(kr_http_exchange *x, void *service_data) {
  ck_assert_ptr_eq(service_data, &env);
  ck_assert_ptr_eq(kr_http_user_data(x), &env);
  ck_assert_int_lt(n_requests, MAX_RECS);
  rec *r = &recs[n_requests++];
  memset(r, 0, sizeof(*r));
  r->used = 1;
  r->x = x;
  kr_http_set_user_data(x, r);
  ck_assert_ptr_eq(kr_http_user_data(x), r);
  snprintf(r->method, sizeof(r->method), "%s", kr_http_method(x));
  snprintf(r->path, sizeof(r->path), "%s", kr_http_path(x));
  const char *v = kr_http_header(x, "x-test");
  snprintf(r->hdr_test, sizeof(r->hdr_test), "%s", v ? v : "(none)");
  v = kr_http_header(x, "X-TEST");
  snprintf(r->hdr_test_upper, sizeof(r->hdr_test_upper), "%s",
           v ? v : "(none)");
  v = kr_http_header(x, "x-forwarded-proto");
  snprintf(r->hdr_fwd_proto, sizeof(r->hdr_fwd_proto), "%s", v ? v : "");
  r->has_connection = kr_http_header(x, "connection") != NULL ||
                      kr_http_header(x, "keep-alive") != NULL;
  size_t n = kr_http_header_count(x);
  for (size_t i = 0; i < n; i++) {
    const char *name, *value;
    ck_assert_int_eq(kr_http_header_at(x, i, &name, &value), 0);
    if (strcmp(name, "x-test") == 0 && strcmp(value, r->hdr_test) == 0)
      r->header_at_ok = 1;
  }
  r->header_at_out_of_range = kr_http_header_at(x, n, NULL, NULL) == KR_EINVAL;
  v = kr_http_user(x);
  snprintf(r->user, sizeof(r->user), "%s", v ? v : "(none)");
  r->n_groups = kr_http_group_count(x);
  for (size_t i = 0; i < r->n_groups && i < 4; i++)
    snprintf(r->groups[i], sizeof(r->groups[i]), "%s", kr_http_group_at(x, i));
  ck_assert_ptr_null(kr_http_group_at(x, r->n_groups));
  r->has_body_at_request = kr_http_has_body(x);

  const char *p = r->path;
  if (strncmp(p, "/hello", 6) == 0 || strncmp(p, "/api/", 5) == 0 ||
      strcmp(p, "/head") == 0) {
    static const char body[] = "hello from the handler\n";
    ck_assert_int_eq(kr_http_respond_body(x, 200, "text/plain; charset=utf-8",
                                          body, strlen(body)),
                     0);
  } else if (strcmp(p, "/stream") == 0 || strcmp(p, "/forever") == 0) {
    kr_md f[1] = {md_str("content-type", "application/octet-stream")};
    ck_assert_int_eq(kr_http_respond(x, 200, f, 1, 0), 0);
    r->total = strcmp(p, "/stream") == 0 ? STREAM_TOTAL : (size_t)1 << 40;
    pump(r);
  } else if (strcmp(p, "/upload") == 0) {
    /* answered at on_body_end */
  } else if (strcmp(p, "/abort") == 0) {
    ck_assert_int_eq(kr_http_abort(x, "the handler gave up"), 0);
    ck_assert(r->closed);
    /* Still valid until this callback returns; calls are refused. */
    ck_assert_int_eq(kr_http_write(x, "x", 1), KR_ECLOSED);
    ck_assert_int_eq(kr_http_respond(x, 200, NULL, 0, 1), KR_ECLOSED);
    ck_assert_int_eq(kr_http_abort(x, NULL), KR_ECLOSED);
    ck_assert_int_eq(kr_http_pause_body(x, 1), KR_ECLOSED);
    ck_assert_int_eq(kr_http_has_body(x), 0);
  } else if (strcmp(p, "/errors") == 0) {
    check_errors(x);
  } else if (strcmp(p, "/length") == 0) {
    check_length(x);
  } else if (strcmp(p, "/ws") == 0) {
    kr_md f[1] = {md_str("upgrade", "echo")};
    ck_assert_int_eq(kr_http_respond(x, 101, f, 1, 0), 0);
    r->upgraded = 1;
  } else if (strcmp(p, "/bigdoc") == 0) {
    uint8_t *b = malloc(BIGDOC_TOTAL);
    for (size_t i = 0; i < BIGDOC_TOTAL; i++)
      b[i] = pattern(i);
    ck_assert_int_eq(kr_http_respond_body(x, 200, "application/octet-stream", b,
                                          BIGDOC_TOTAL),
                     0);
    free(b); /* copied */
  } else if (strcmp(p, "/later") == 0) {
    /* Answered from a timer, outside any callback. */
    later_rec = r;
    struct timeval tv = {0, 1000};
    evtimer_add(later_ev, &tv);
  } else if (strcmp(p, "/hold") == 0) {
    /* never answered */
  } else {
    ck_assert_int_eq(kr_http_respond_body(x, 404, NULL, NULL, 0), 0);
  }
}

static void resume_cb(evutil_socket_t fd, short what, void *arg) {
  rec *r = resume_rec;
  resume_rec = NULL;
  if (!r || r->closed)
    return;
  r->paused = 0;
  r->since_resume = 0;
  r->while_paused = 0;
  ck_assert_int_eq(kr_http_pause_body(r->x, 0), 0);
}

static void later_cb(evutil_socket_t fd, short what, void *arg) {
  rec *r = later_rec;
  later_rec = NULL;
  ck_assert(r && !r->closed);
  kr_md f[1] = {md_str("X-Later", "yes")};
  ck_assert_int_eq(kr_http_respond(r->x, 200, f, 1, 0), 0);
  ck_assert_int_eq(kr_http_write(r->x, "late", 4), 4);
  ck_assert_int_eq(kr_http_finish(r->x), 0);
  ck_assert(!r->closed); /* the end goes out from the loop */
}

static void on_body(kr_http_exchange *x, const uint8_t *p, size_t n, void *ud) {
  rec *r = rec_of(ud);
  ck_assert_ptr_eq(r->x, x);
  if (r->upgraded) {
    ck_assert_int_eq(kr_http_write(x, p, n), (int64_t)n);
    return;
  }
  for (size_t i = 0; i < n && !r->mismatch; i++)
    r->mismatch = p[i] != pattern(r->received + i);
  r->received += n;
  if (r->paused) {
    r->while_paused += n;
    if (r->while_paused > r->max_while_paused)
      r->max_while_paused = r->while_paused;
    return;
  }
  r->since_resume += n;
  if (strcmp(r->path, "/upload") == 0 && r->since_resume >= PAUSE_EVERY) {
    /* Hold the credit; a timer gives it back. */
    ck_assert_int_eq(kr_http_pause_body(x, 1), 0);
    r->paused = 1;
    r->pauses++;
    resume_rec = r;
    struct timeval tv = {0, 2000};
    evtimer_add(resume_ev, &tv);
  }
}

static void on_body_end(kr_http_exchange *x, void *ud) {
  rec *r = rec_of(ud);
  r->body_end++;
  ck_assert_int_eq(kr_http_has_body(x), 0);
  if (r->upgraded) {
    ck_assert_int_eq(kr_http_finish(x), 0);
  } else if (strcmp(r->path, "/upload") == 0) {
    char b[64];
    snprintf(b, sizeof(b), "got %zu", r->received);
    ck_assert_int_eq(kr_http_respond_body(x, 200, "text/plain", b, strlen(b)),
                     0);
  }
}

static void on_writable(kr_http_exchange *x, void *ud) {
  rec *r = rec_of(ud);
  ck_assert_ptr_eq(r->x, x);
  pump(r);
}

static void on_close(kr_http_exchange *x, int err, void *ud) {
  rec *r = rec_of(ud);
  ck_assert_int_eq(r->closed, 0);
  r->closed = 1;
  r->close_err = err;
  n_closes++;
  /* Still readable inside on_close; calls are refused. */
  ck_assert_str_eq(kr_http_path(x), r->path);
  ck_assert_int_eq(kr_http_write(x, "x", 1), KR_ECLOSED);
  ck_assert_int_eq(kr_http_finish(x), KR_ECLOSED);
}

/* ------------------------------------------------------------- fixtures */

static int agent_registered(void *arg) {
  (void)arg;
  return kr_kas_agent_count(kas) > 0;
}

static void start_kas(void) {
  kr_kas_options *o;
  char err[512];
  ck_assert_int_eq(kr_kas_options_new(&o), 0);
  ck_assert_int_eq(kr_kas_options_add_agent_listen(o, "tcp://127.0.0.1:0"), 0);
  ck_assert_int_eq(kr_kas_options_add_api_listen(o, "tcp://127.0.0.1:0"), 0);
  ck_assert_int_eq(kr_kas_options_add_http_listen(o, "http://127.0.0.1:0"), 0);
  kr_kas_options_set_agent_tokens_file(o, env.tokens);
  kr_kas_options_set_api_secret(o, (const uint8_t *)env.secret,
                                strlen(env.secret));
  kr_kas_options_set_route_timeout(o, 3000000);
  kr_kas_options_set_handshake_timeout(o, 2000000);
  int rc = kr_kas_new(&kas, env.base, o, err, sizeof(err));
  kr_kas_options_free(o);
  ck_assert_msg(rc == 0, "kr_kas_new: %s", err);
}

static void start_agent(void) {
  kr_agent_options *o;
  kr_http_handler *h;
  char err[512], url[64];
  ck_assert_int_eq(kr_agent_options_new(&o), 0);
  snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", kr_kas_agent_port(kas, 0));
  kr_agent_options_set_kas_url(o, url);
  kr_agent_options_set_token(o, TH_AGENT_TOKEN, strlen(TH_AGENT_TOKEN));
  kr_agent_options_set_connections(o, 1);
  kr_agent_options_set_backoff(o, 50000, 200000);
  ck_assert_int_eq(kr_http_handler_new(&h), 0);
  /* on_request is required. */
  ck_assert_int_eq(kr_agent_options_add_http_handler(o, "app", h, &env),
                   KR_EINVAL);
  kr_http_handler_set_on_request(h, on_request);
  kr_http_handler_set_on_body(h, on_body);
  kr_http_handler_set_on_body_end(h, on_body_end);
  kr_http_handler_set_on_writable(h, on_writable);
  kr_http_handler_set_on_close(h, on_close);
  ck_assert_int_eq(kr_agent_options_add_http_handler(o, "app", h, &env), 0);
  /* The gateway's Kubernetes proxy reaches the service "kubernetes": an
   * HTTP handler may play it, and then sees the caller's identity. */
  ck_assert_int_eq(kr_agent_options_add_http_handler(o, "kubernetes", h, &env),
                   0);
  kr_http_handler_free(h); /* copied at registration */
  kr_http_handler_free(NULL);
  int rc = kr_agent_new(&agent, env.base, o, err, sizeof(err));
  kr_agent_options_free(o);
  ck_assert_msg(rc == 0, "kr_agent_new: %s", err);
}

static void setup(void) {
  th_setup(&env);
  memset(recs, 0, sizeof(recs));
  n_requests = n_closes = late_callbacks = 0;
  client = NULL;
  client_ready = 0;
  resume_rec = NULL;
  resume_ev = evtimer_new(env.base, resume_cb, NULL);
  later_ev = evtimer_new(env.base, later_cb, NULL);
  later_rec = NULL;
  start_kas();
  start_agent();
  ck_assert(th_run_cond(&env, agent_registered, NULL, 5000));
}

static void teardown(void) {
  kr_client_free(client);
  kr_agent_free(agent); /* exchanges still open get on_close here */
  /* Every on_request got exactly one on_close, and nothing after it. */
  ck_assert_int_eq(n_closes, n_requests);
  ck_assert_int_eq(late_callbacks, 0);
  kr_kas_free(kas);
  event_free(resume_ev);
  event_free(later_ev);
  th_cleanup(&env);
}

/* A JWT for the gateway and the API listener; with identity, it names
 * agent 7 for the Kubernetes proxy and the user "alice" in "dev", "ops". */
static char *token(int identity) {
  char claims[512], *jwt = NULL;
  int64_t now = (int64_t)time(NULL);
  if (identity)
    snprintf(claims, sizeof(claims),
             "{\"aud\":\"gitlab-kas\",\"iat\":%lld,\"exp\":%lld,"
             "\"agent_id\":%d,\"user\":\"alice\",\"groups\":[\"dev\",\"ops\"]}",
             (long long)now, (long long)now + 300, TH_AGENT_ID);
  else
    snprintf(claims, sizeof(claims),
             "{\"aud\":\"gitlab-kas\",\"iat\":%lld,\"exp\":%lld}",
             (long long)now, (long long)now + 300);
  ck_assert_int_eq(kr__jwt_sign_hs256(kr_mem_default(),
                                      (const uint8_t *)env.secret,
                                      strlen(env.secret), claims, &jwt),
                   0);
  char *copy = strdup(jwt);
  kr__free(kr_mem_default(), jwt);
  return copy;
}

/* ----------------------------------------------------------- HTTP client */

typedef struct resp {
  int done;
  int status; /* -1: the request failed without a response */
  char ctype[128], clen[32], tenc[32];
  struct evbuffer *body;
  /* Streamed bodies: checked against the pattern, not kept. */
  int check_pattern;
  size_t received;
  int mismatch;
  size_t cancel_after; /* 0: never */
  int cancelled;
  struct evhttp_connection *conn;
} resp;

static void copy_header(struct evhttp_request *req, const char *name, char *out,
                        size_t size) {
  const char *v =
      evhttp_find_header(evhttp_request_get_input_headers(req), name);
  snprintf(out, size, "%s", v ? v : "(none)");
}

static void done_cb(struct evhttp_request *req, void *arg) {
  resp *r = arg;
  r->done = 1;
  if (!req || evhttp_request_get_response_code(req) == 0) {
    r->status = -1;
    return;
  }
  r->status = evhttp_request_get_response_code(req);
  copy_header(req, "Content-Type", r->ctype, sizeof(r->ctype));
  copy_header(req, "Content-Length", r->clen, sizeof(r->clen));
  copy_header(req, "Transfer-Encoding", r->tenc, sizeof(r->tenc));
  evbuffer_add_buffer(r->body, evhttp_request_get_input_buffer(req));
}

static void chunk_cb(struct evhttp_request *req, void *arg) {
  resp *r = arg;
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  struct evbuffer_ptr pos;
  struct evbuffer_iovec v;
  evbuffer_ptr_set(in, &pos, 0, EVBUFFER_PTR_SET);
  while (evbuffer_peek(in, -1, &pos, &v, 1) > 0) {
    const uint8_t *p = v.iov_base;
    for (size_t i = 0; i < v.iov_len && !r->mismatch; i++)
      r->mismatch = p[i] != pattern(r->received + i);
    r->received += v.iov_len;
    if (evbuffer_ptr_set(in, &pos, v.iov_len, EVBUFFER_PTR_ADD) < 0)
      break;
  }
  /* evhttp drains the input buffer after this callback. */
  if (r->cancel_after && r->received >= r->cancel_after && !r->cancelled) {
    r->cancelled = 1;
    r->done = 1;
    evhttp_cancel_request(req); /* allowed from the chunk callback */
  }
}

static int resp_done(void *arg) {
  return ((resp *)arg)->done;
}

/* Sends method uri to the gateway; body may be NULL. Returns once the
 * response ended (or the client cancelled). */
static void http_start(resp *r, enum evhttp_cmd_type method, const char *uri,
                       const char *jwt, struct evbuffer *body) {
  r->done = 0;
  r->status = 0;
  r->body = evbuffer_new();
  r->conn = evhttp_connection_base_new(env.base, NULL, "127.0.0.1",
                                       (ev_uint16_t)kr_kas_http_port(kas, 0));
  ck_assert_ptr_nonnull(r->conn);
  struct evhttp_request *req = evhttp_request_new(done_cb, r);
  if (r->check_pattern)
    evhttp_request_set_chunked_cb(req, chunk_cb);
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Host", "kas.example");
  evhttp_add_header(h, "X-Test", "Yes");
  evhttp_add_header(h, "Keep-Alive", "timeout=5");
  evhttp_add_header(h, "Connection", "keep-alive");
  char authz[1200];
  snprintf(authz, sizeof(authz), "Bearer %s", jwt);
  evhttp_add_header(h, "Authorization", authz);
  if (body)
    evbuffer_add_buffer(evhttp_request_get_output_buffer(req), body);
  ck_assert_int_eq(evhttp_make_request(r->conn, req, method, uri), 0);
}

static void http_wait(resp *r, int timeout_ms) {
  ck_assert_msg(th_run_cond(&env, resp_done, r, timeout_ms),
                "no response in time");
}

static void resp_free(resp *r) {
  evhttp_connection_free(r->conn);
  evbuffer_free(r->body);
}

static void http_get(resp *r, const char *uri, const char *jwt) {
  memset(r, 0, sizeof(*r));
  http_start(r, EVHTTP_REQ_GET, uri, jwt, NULL);
  http_wait(r, 15000);
}

static const char *body_str(resp *r) {
  static char b[4096];
  size_t n = evbuffer_get_length(r->body);
  if (n >= sizeof(b))
    n = sizeof(b) - 1;
  evbuffer_copyout(r->body, b, n);
  b[n] = 0;
  return b;
}

#define SVC "/api/v1/agents/7/services/app"

/* ----------------------------------------------------------- kr_client */

typedef struct sreq {
  kr_stream *s;
  int status, replied, fin, closed;
  uint32_t code;
  char reason[300];
  kr__mdlist md;
  struct evbuffer *body;
} sreq;

static void c_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                    void *ud) {
  sreq *q = ud;
  q->replied = 1;
  q->fin |= fin;
  for (size_t i = 0; i < n; i++)
    kr__mdlist_add(&q->md, md[i].name, md[i].name_len, md[i].value,
                   md[i].value_len);
  const kr_md *st = kr__md_find(md, n, KR_MD_STATUS);
  q->status = st ? kr__http_parse_status(st->value, st->value_len) : -1;
}

static void c_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  evbuffer_add(((sreq *)ud)->body, p, n);
  kr_stream_consume(s, n);
}

static void c_fin(kr_stream *s, void *ud) {
  ((sreq *)ud)->fin = 1;
}

static void c_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  sreq *q = ud;
  q->closed = 1;
  q->s = NULL;
  q->code = code;
  snprintf(q->reason, sizeof(q->reason), "%.*s", (int)len,
           (const char *)reason);
}

static void on_state(kr_client *c, int err, const char *why, void *ud) {
  if (err == 0)
    client_ready = 1;
}

static int is_client_ready(void *arg) {
  (void)arg;
  return client_ready;
}

static void start_client(void) {
  kr_client_options *o;
  kr_mux_callbacks *cbs;
  char err[256], url[64];
  char *jwt = token(1);
  kr_client_options_new(&o);
  snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", kr_kas_api_port(kas, 0));
  kr_client_options_set_url(o, url);
  kr_client_options_set_token(o, jwt, strlen(jwt));
  kr_mux_callbacks_new(&cbs);
  kr_mux_callbacks_set_on_reply(cbs, c_reply);
  kr_mux_callbacks_set_on_data(cbs, c_data);
  kr_mux_callbacks_set_on_fin(cbs, c_fin);
  kr_mux_callbacks_set_on_close(cbs, c_close);
  int rc = kr_client_new(&client, env.base, o, cbs, on_state, NULL, err,
                         sizeof(err));
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  free(jwt);
  ck_assert_msg(rc == 0, "kr_client_new: %s", err);
  ck_assert(th_run_cond(&env, is_client_ready, NULL, 5000));
}

static void sreq_open(sreq *q, const kr_md *md, size_t n, int fin) {
  memset(q, 0, sizeof(*q));
  kr__mdlist_init(&q->md);
  q->body = evbuffer_new();
  ck_assert_int_eq(
      kr_client_open(client, TH_AGENT_ID, "app", md, n, fin, q, &q->s), 0);
  kr_client_flush(client);
}

static int sreq_closed(void *arg) {
  return ((sreq *)arg)->closed;
}

static void sreq_free(sreq *q) {
  kr__mdlist_free(&q->md);
  evbuffer_free(q->body);
}

static const char *reply_field(sreq *q, const char *name) {
  static char v[256];
  const kr_md *m = kr__md_find(q->md.md, q->md.n, name);
  if (!m)
    return "(none)";
  snprintf(v, sizeof(v), "%.*s", (int)m->value_len, (const char *)m->value);
  return v;
}

/* ----------------------------------------------------------------- tests */

START_TEST(get_answered_with_respond_body) {
  char *jwt = token(0);
  resp r;
  http_get(&r, SVC "/hello?a=1&b=two%20words", jwt);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.ctype, "text/plain; charset=utf-8");
  ck_assert_str_eq(r.clen, "23");
  ck_assert_str_eq(body_str(&r), "hello from the handler\n");
  ck_assert_int_eq(n_requests, 1);
  rec *x = &recs[0];
  ck_assert_str_eq(x->method, "GET");
  ck_assert_str_eq(x->path, "/hello?a=1&b=two%20words");
  ck_assert_str_eq(x->hdr_test, "Yes");
  ck_assert_str_eq(x->hdr_test_upper, "Yes");
  ck_assert_str_eq(x->hdr_fwd_proto, "http");
  ck_assert(x->header_at_ok);
  ck_assert(x->header_at_out_of_range);
  ck_assert(!x->has_connection);
  ck_assert_str_eq(x->user, "(none)"); /* the credentials name no user */
  ck_assert_uint_eq(x->n_groups, 0);
  ck_assert_int_eq(x->has_body_at_request, 0);
  ck_assert_int_eq(x->body_end, 1);
  ck_assert(th_run_cond(&env, last_closed, NULL, 5000));
  ck_assert_int_eq(x->close_err, 0);
  resp_free(&r);

  /* An unknown path of the handler: 404 from the application. */
  http_get(&r, SVC "/missing", jwt);
  ck_assert_int_eq(r.status, 404);
  ck_assert_str_eq(body_str(&r), "");
  resp_free(&r);
  /* HEAD: the length of the document, no body. */
  memset(&r, 0, sizeof(r));
  http_start(&r, EVHTTP_REQ_HEAD, SVC "/head", jwt, NULL);
  http_wait(&r, 15000);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.clen, "23");
  ck_assert_uint_eq(evbuffer_get_length(r.body), 0);
  resp_free(&r);

  /* Answered later, from outside the callbacks. */
  http_get(&r, SVC "/later", jwt);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.tenc, "chunked");
  ck_assert_str_eq(body_str(&r), "late");
  resp_free(&r);
  free(jwt);
}
END_TEST

START_TEST(respond_body_larger_than_send_queue) {
  char *jwt = token(0);
  resp r;
  memset(&r, 0, sizeof(r));
  r.check_pattern = 1;
  http_start(&r, EVHTTP_REQ_GET, SVC "/bigdoc", jwt, NULL);
  http_wait(&r, 60000);
  ck_assert_int_eq(r.status, 200);
  char want[32];
  snprintf(want, sizeof(want), "%zu", BIGDOC_TOTAL);
  ck_assert_str_eq(r.clen, want);
  ck_assert_uint_eq(r.received, BIGDOC_TOTAL);
  ck_assert(!r.mismatch);
  ck_assert(th_run_cond(&env, last_closed, NULL, 5000));
  ck_assert_int_eq(recs[0].close_err, 0);
  resp_free(&r);
  free(jwt);
}
END_TEST

START_TEST(identity_through_kubernetes_proxy) {
  char *jwt = token(1);
  resp r;
  http_get(&r, "/k8s-proxy/api/v1/pods?watch=1", jwt);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(body_str(&r), "hello from the handler\n");
  rec *x = &recs[0];
  ck_assert_str_eq(x->path, "/api/v1/pods?watch=1");
  ck_assert_str_eq(x->user, "alice");
  ck_assert_uint_eq(x->n_groups, 2);
  ck_assert_str_eq(x->groups[0], "dev");
  ck_assert_str_eq(x->groups[1], "ops");
  resp_free(&r);
  free(jwt);
}
END_TEST

/* Credentials that name a user carry it through the service proxy too, so
 * that a handler can authorize. */
START_TEST(identity_through_service_proxy) {
  char *jwt = token(1);
  resp r;
  http_get(&r, SVC "/hello", jwt);
  ck_assert_int_eq(r.status, 200);
  rec *x = &recs[0];
  ck_assert_str_eq(x->path, "/hello");
  ck_assert_str_eq(x->user, "alice");
  ck_assert_uint_eq(x->n_groups, 2);
  ck_assert_str_eq(x->groups[0], "dev");
  ck_assert_str_eq(x->groups[1], "ops");
  resp_free(&r);
  free(jwt);
}
END_TEST

START_TEST(streamed_response_64mib) {
  char *jwt = token(0);
  resp r;
  memset(&r, 0, sizeof(r));
  r.check_pattern = 1;
  http_start(&r, EVHTTP_REQ_GET, SVC "/stream", jwt, NULL);
  http_wait(&r, 120000);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.tenc, "chunked"); /* no content-length given */
  ck_assert_str_eq(r.ctype, "application/octet-stream");
  ck_assert_uint_eq(r.received, STREAM_TOTAL);
  ck_assert(!r.mismatch);
  ck_assert(th_run_cond(&env, last_closed, NULL, 5000));
  ck_assert_uint_eq(recs[0].sent, STREAM_TOTAL);
  ck_assert_int_eq(recs[0].close_err, 0);
  resp_free(&r);
  free(jwt);
}
END_TEST

START_TEST(upload_16mib_with_pause) {
  char *jwt = token(0);
  struct evbuffer *b = evbuffer_new();
  static uint8_t chunk[65536];
  for (size_t off = 0; off < UPLOAD_TOTAL; off += sizeof(chunk)) {
    for (size_t i = 0; i < sizeof(chunk); i++)
      chunk[i] = pattern(off + i);
    evbuffer_add(b, chunk, sizeof(chunk));
  }
  resp r;
  memset(&r, 0, sizeof(r));
  http_start(&r, EVHTTP_REQ_POST, SVC "/upload", jwt, b);
  evbuffer_free(b);
  http_wait(&r, 120000);
  ck_assert_int_eq(r.status, 200);
  char want[64];
  snprintf(want, sizeof(want), "got %zu", UPLOAD_TOTAL);
  ck_assert_str_eq(body_str(&r), want);
  rec *x = &recs[0];
  ck_assert_str_eq(x->method, "POST");
  ck_assert_int_eq(x->has_body_at_request, 1);
  ck_assert_uint_eq(x->received, UPLOAD_TOTAL);
  ck_assert(!x->mismatch);
  ck_assert_int_eq(x->body_end, 1);
  ck_assert_int_ge(x->pauses, 8);
  /* While paused the caller could send at most one stream window. */
  ck_assert_uint_le(x->max_while_paused, (size_t)2 << 20);
  ck_assert(th_run_cond(&env, last_closed, NULL, 5000));
  ck_assert_int_eq(x->close_err, 0);
  resp_free(&r);
  free(jwt);
}
END_TEST

START_TEST(abort_before_head_gives_502) {
  char *jwt = token(0);
  resp r;
  http_get(&r, SVC "/abort", jwt);
  ck_assert_int_eq(r.status, 502);
  ck_assert_msg(strstr(body_str(&r), "the handler gave up") != NULL, "%s",
                body_str(&r));
  ck_assert(recs[0].closed);
  ck_assert_int_eq(recs[0].close_err, KR_ERESET);
  resp_free(&r);
  free(jwt);
}
END_TEST

START_TEST(client_disconnect_mid_response) {
  char *jwt = token(0);
  resp r;
  memset(&r, 0, sizeof(r));
  r.check_pattern = 1;
  r.cancel_after = (size_t)1 << 20;
  http_start(&r, EVHTTP_REQ_GET, SVC "/forever", jwt, NULL);
  http_wait(&r, 15000);
  ck_assert(r.cancelled);
  ck_assert(!r.mismatch);
  ck_assert(th_run_cond(&env, last_closed, NULL, 10000));
  ck_assert_int_ne(recs[0].close_err, 0);
  ck_assert_int_lt(recs[0].sent, recs[0].total);
  /* The loop goes on serving; nothing reaches the closed exchange. */
  resp r2;
  http_get(&r2, SVC "/hello", jwt);
  ck_assert_int_eq(r2.status, 200);
  ck_assert_int_eq(recs[0].after_close, 0);
  ck_assert_int_eq(n_closes, 1 + recs[1].closed);
  resp_free(&r2);
  resp_free(&r);
  free(jwt);
}
END_TEST

START_TEST(api_errors) {
  char *jwt = token(0);
  resp r;
  http_get(&r, SVC "/errors", jwt);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(body_str(&r), "ok");
  resp_free(&r);
  http_get(&r, SVC "/length", jwt);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.clen, "5");
  ck_assert_str_eq(body_str(&r), "abcde");
  resp_free(&r);
  ck_assert(th_run_cond(&env, last_closed, NULL, 5000));
  ck_assert_int_eq(recs[0].close_err, 0);
  ck_assert_int_eq(recs[1].close_err, 0);
  free(jwt);
}
END_TEST

START_TEST(http_over_stream) {
  start_client();
  kr_md md[3] = {md_str(KR_MD_METHOD, "GET"),
                 md_str(KR_MD_PATH, "/hello?via=stream"),
                 md_str("X-Test", "Stream")};
  sreq q;
  sreq_open(&q, md, 3, 1);
  ck_assert(th_run_cond(&env, sreq_closed, &q, 10000));
  ck_assert_msg(q.code == KR_CODE_NO_ERROR, "%s: %s", kr_code_name(q.code),
                q.reason);
  ck_assert_int_eq(q.status, 200);
  ck_assert(q.fin);
  ck_assert_str_eq(reply_field(&q, "content-type"),
                   "text/plain; charset=utf-8");
  ck_assert_str_eq(reply_field(&q, "content-length"), "23");
  ck_assert_uint_eq(evbuffer_get_length(q.body), 23);
  rec *x = &recs[0];
  ck_assert_str_eq(x->path, "/hello?via=stream");
  ck_assert_str_eq(x->hdr_test, "Stream");
  ck_assert(x->header_at_ok);         /* the name arrived lower-cased */
  ck_assert_str_eq(x->user, "alice"); /* kas adds the JWT's identity */
  ck_assert_uint_eq(x->n_groups, 2);
  ck_assert_str_eq(x->groups[1], "ops");
  sreq_free(&q);

  /* Upgrade: 101, then raw bytes both ways. */
  kr_md up[4] = {md_str(KR_MD_METHOD, "GET"), md_str(KR_MD_PATH, "/ws"),
                 md_str("connection", "Upgrade"), md_str("upgrade", "echo")};
  sreq_open(&q, up, 4, 0);
  ck_assert_int_eq(kr_stream_write(q.s, "ping", 4), 4);
  ck_assert_int_eq(kr_stream_close_write(q.s), 0);
  kr_client_flush(client);
  ck_assert(th_run_cond(&env, sreq_closed, &q, 10000));
  ck_assert_msg(q.code == KR_CODE_NO_ERROR, "%s: %s", kr_code_name(q.code),
                q.reason);
  ck_assert_int_eq(q.status, 101);
  ck_assert_str_eq(reply_field(&q, "upgrade"), "echo");
  ck_assert_uint_eq(evbuffer_get_length(q.body), 4);
  ck_assert(memcmp(evbuffer_pullup(q.body, -1), "ping", 4) == 0);
  ck_assert_int_eq(recs[1].body_end, 1);
  sreq_free(&q);
}
END_TEST

START_TEST(malformed_stream_refused) {
  start_client();
  kr_md md[1] = {md_str(KR_MD_METHOD, "GET")};
  sreq q;
  sreq_open(&q, md, 1, 1);
  ck_assert(th_run_cond(&env, sreq_closed, &q, 10000));
  ck_assert_uint_eq(q.code, KR_CODE_PROTOCOL);
  ck_assert(!q.replied);
  sreq_free(&q);
  kr_md bad[2] = {md_str(KR_MD_METHOD, "GET"), md_str(KR_MD_PATH, "nope")};
  sreq_open(&q, bad, 2, 1);
  ck_assert(th_run_cond(&env, sreq_closed, &q, 10000));
  ck_assert_uint_eq(q.code, KR_CODE_PROTOCOL);
  sreq_free(&q);
  ck_assert_int_eq(n_requests, 0);
}
END_TEST

START_TEST(agent_freed_with_open_exchange) {
  char *jwt = token(0);
  resp r;
  memset(&r, 0, sizeof(r));
  http_start(&r, EVHTTP_REQ_GET, SVC "/hold", jwt, NULL);
  ck_assert(th_run_cond(&env, got_request, NULL, 10000));
  ck_assert(!r.done);
  ck_assert(!recs[0].closed);
  kr_agent_free(agent);
  agent = NULL;
  ck_assert(recs[0].closed);
  ck_assert_int_eq(recs[0].close_err, KR_ERESET);
  http_wait(&r, 15000);
  ck_assert_msg(r.status == -1 || r.status >= 500, "%d", r.status);
  resp_free(&r);
  free(jwt);
}
END_TEST

/* A response finished right before the agent is freed: the stream may
 * end inside kr_http_respond_body() (its on_close is then owed, reported
 * from the loop); kr_agent_free() reports it, so on_close has fired
 * exactly once when it returns and nothing fires afterwards. */
START_TEST(agent_freed_right_after_response) {
  char *jwt = token(0);
  resp r;
  memset(&r, 0, sizeof(r));
  http_start(&r, EVHTTP_REQ_GET, SVC "/hold", jwt, NULL);
  ck_assert(th_run_cond(&env, got_request, NULL, 10000));
  ck_assert(!recs[0].closed);
  ck_assert_int_eq(kr_http_respond_body(recs[0].x, 200, "text/plain", "bye", 3),
                   0);
  ck_assert(!recs[0].closed); /* never inside the call */
  kr_agent_free(agent);
  agent = NULL;
  ck_assert(recs[0].closed);
  ck_assert_int_eq(n_closes, 1);
  http_wait(&r, 15000);
  ck_assert_int_eq(n_closes, 1);
  resp_free(&r);
  free(jwt);
}
END_TEST

int main(void) {
  /* A client that goes away mid-response makes the gateway's next write
   * fail; like the daemons, the host ignores SIGPIPE. */
  signal(SIGPIPE, SIG_IGN);
  Suite *s = suite_create("http_handler");
  TCase *tc = tcase_create("gateway");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, get_answered_with_respond_body);
  tcase_add_test(tc, respond_body_larger_than_send_queue);
  tcase_add_test(tc, identity_through_kubernetes_proxy);
  tcase_add_test(tc, identity_through_service_proxy);
  tcase_add_test(tc, agent_freed_right_after_response);
  tcase_add_test(tc, streamed_response_64mib);
  tcase_add_test(tc, upload_16mib_with_pause);
  tcase_add_test(tc, abort_before_head_gives_502);
  tcase_add_test(tc, client_disconnect_mid_response);
  tcase_add_test(tc, api_errors);
  tcase_add_test(tc, agent_freed_with_open_exchange);
  suite_add_tcase(s, tc);

  TCase *ts = tcase_create("streams");
  tcase_add_checked_fixture(ts, setup, teardown);
  tcase_set_timeout(ts, 60);
  tcase_add_test(ts, http_over_stream);
  tcase_add_test(ts, malformed_stream_refused);
  suite_add_tcase(s, ts);

  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
