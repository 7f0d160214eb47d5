/* The kas "custom verifiers" (kasroute/kas.h): agent tokens and API
 * credentials checked by the host's callbacks, now or later, in one
 * process: kas + kr_agent + kr_client + a raw HTTP client + an evhttp
 * upstream for the Kubernetes proxy, on one event_base over 127.0.0.1. */
#include <sys/queue.h> /* first: TAILQ_FOREACH for keyvalq_struct.h */

#include <check.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <kasroute/error.h>
#include <kasroute/log.h>

#include "echo_client.h"
#include "harness.h"

/* Every credential the verifier sees carries this mark: no log line may. */
#define MARK "s3cr3t"
#define AGENT_TOKEN "platform-agent-" MARK
#define API_TOKEN "opaque-api-" MARK
#define USER_TOKEN "opaque-user-" MARK

static th_env env;
static kr_kas *kas;
static char agent_url[64], api_url[64];
static int http_port;

static int never_true(void *arg) {
  return 0;
}

/* ---------------------------------------------------------------- logs */

static struct {
  char lines[4096][400];
  size_t n;
  int leaked; /* a line contained a credential */
} logs;

static void log_cb(kr_log_level level, const char *line, void *ud) {
  if (strstr(line, MARK))
    logs.leaked = 1;
  if (getenv("KR_TEST_VERBOSE"))
    fprintf(stderr, "%s\n", line);
  if (logs.n < sizeof(logs.lines) / sizeof(logs.lines[0]))
    snprintf(logs.lines[logs.n++], sizeof(logs.lines[0]), "%s", line);
}

/* Lines containing both a and b (b may be NULL). */
static int log_count(const char *a, const char *b) {
  int n = 0;
  for (size_t i = 0; i < logs.n; i++)
    if (strstr(logs.lines[i], a) && (!b || strstr(logs.lines[i], b)))
      n++;
  return n;
}

/* ------------------------------------------------------------ verifier */

enum { V_ALLOW, V_DENY, V_HOLD };

static struct {
  int mode;     /* V_*: what the verdict is (V_HOLD: none until the test) */
  int async_ms; /* 0: inside the callback; else from a timer this late */
  int calls;
  int api_calls;
  kr_kas_auth_kind kind;
  char token[256];
  kr_kas_auth *held[64];
  size_t n_held;
  struct event *timer;
  /* Verdict contents. */
  int64_t agent_id;
  int64_t agents[4];
  size_t n_agents;
  int set_agents;
  const char *user;
  const char *groups[4];
  size_t n_groups;
  /* What the timer saw just before it decided. */
  size_t agents_before_verdict;
  int echo_sent_before_verdict;
  th_echo *watch; /* an echo stream opened before the verdict */
} V;

static void decide(kr_kas_auth *req) {
  if (V.mode == V_DENY) {
    kr_kas_auth_deny(req, "not on the platform's list\n");
    return;
  }
  if (V.agent_id)
    ck_assert_int_eq(kr_kas_auth_set_agent_id(req, V.agent_id), 0);
  if (kr_kas_auth_get_kind(req) == KR_KAS_AUTH_API) {
    if (V.set_agents)
      ck_assert_int_eq(kr_kas_auth_set_agents(req, V.agents, V.n_agents), 0);
    if (V.user)
      ck_assert_int_eq(kr_kas_auth_set_user(req, V.user), 0);
    for (size_t i = 0; i < V.n_groups; i++)
      ck_assert_int_eq(kr_kas_auth_add_group(req, V.groups[i]), 0);
  }
  ck_assert_int_eq(kr_kas_auth_allow(req), 0);
}

static void verdict_timer(evutil_socket_t fd, short what, void *arg) {
  V.agents_before_verdict = kr_kas_agent_count(kas);
  if (V.watch)
    V.echo_sent_before_verdict = (int)V.watch->sent;
  while (V.n_held > 0)
    decide(V.held[--V.n_held]);
}

static void verify_cb(kr_kas_auth *req, const uint8_t *token, size_t len,
                      void *ud) {
  ck_assert_ptr_eq(ud, &V);
  ck_assert_int_gt(len, 0);
  V.calls++;
  V.kind = kr_kas_auth_get_kind(req);
  if (V.kind == KR_KAS_AUTH_API)
    V.api_calls++;
  ck_assert_int_eq(kr_kas_auth_cancelled(req), 0);
  ck_assert_msg(strncmp(kr_kas_auth_peer(req), "127.0.0.1:", 10) == 0,
                "peer %s", kr_kas_auth_peer(req));
  snprintf(V.token, sizeof(V.token), "%.*s", (int)len, (const char *)token);
  if (V.mode == V_HOLD || V.async_ms) {
    ck_assert_uint_lt(V.n_held, sizeof(V.held) / sizeof(V.held[0]));
    V.held[V.n_held++] = req;
    if (V.mode != V_HOLD && !evtimer_pending(V.timer, NULL)) {
      struct timeval tv = {0, V.async_ms * 1000};
      evtimer_add(V.timer, &tv);
    }
    return;
  }
  decide(req);
}

/* ------------------------------------------------------------- kas */

typedef struct kas_cfg {
  int token_file; /* agent 7 <- TH_AGENT_TOKEN */
  int api_secret;
  int agent_verifier;
  int api_verifier;
  int handshake_ms; /* 0: 2 s */
} kas_cfg;

static int make_kas(const kas_cfg *c, kr_kas **out, char *err, size_t errlen) {
  kr_kas_options *o;
  ck_assert_int_eq(kr_kas_options_new(&o), 0);
  ck_assert_int_eq(kr_kas_options_add_agent_listen(o, "tcp://127.0.0.1:0"), 0);
  ck_assert_int_eq(kr_kas_options_add_api_listen(o, "tcp://127.0.0.1:0"), 0);
  ck_assert_int_eq(kr_kas_options_add_http_listen(o, "http://127.0.0.1:0"), 0);
  if (c->token_file)
    kr_kas_options_set_agent_tokens_file(o, env.tokens);
  if (c->api_secret)
    kr_kas_options_set_api_secret(o, (const uint8_t *)env.secret,
                                  strlen(env.secret));
  if (c->agent_verifier)
    ck_assert_int_eq(kr_kas_options_set_agent_verifier(o, verify_cb, &V), 0);
  if (c->api_verifier)
    ck_assert_int_eq(kr_kas_options_set_api_verifier(o, verify_cb, &V), 0);
  kr_kas_options_set_route_timeout(o, 3000000);
  kr_kas_options_set_handshake_timeout(
      o, (kr_time_us)(c->handshake_ms ? c->handshake_ms : 2000) * 1000);
  kr_kas_options_set_http_timeouts(o, 1000000, 5000000);
  int rc = kr_kas_new(out, env.base, o, err, errlen);
  kr_kas_options_free(o);
  return rc;
}

static void start_kas(const kas_cfg *c) {
  char err[256];
  int rc = make_kas(c, &kas, err, sizeof(err));
  ck_assert_msg(rc == 0, "kr_kas_new: %s", err);
  snprintf(agent_url, sizeof(agent_url), "tcp://127.0.0.1:%d",
           kr_kas_agent_port(kas, 0));
  snprintf(api_url, sizeof(api_url), "tcp://127.0.0.1:%d",
           kr_kas_api_port(kas, 0));
  http_port = kr_kas_http_port(kas, 0);
}

/* ------------------------------------------------------------ agent */

/* An agent with one tunnel presenting token, serving "echo" (echo_port)
 * and, when kube_url is set, "kubernetes" there. Backoff 200 ms doubling
 * to 1 s. */
static kr_agent *make_agent(const char *token, int echo_port,
                            const char *kube_url) {
  kr_agent_options *o;
  kr_agent *a = NULL;
  char err[256], svc[64];
  kr_agent_options_new(&o);
  kr_agent_options_set_kas_url(o, agent_url);
  kr_agent_options_set_token(o, token, strlen(token));
  kr_agent_options_set_name(o, "replica-1");
  kr_agent_options_set_connections(o, 1); /* one verification per agent */
  snprintf(svc, sizeof(svc), "tcp://127.0.0.1:%d", echo_port);
  kr_agent_options_add_service(o, "echo", svc);
  if (kube_url)
    ck_assert_int_eq(
        kr_agent_options_add_kubernetes(o, "kubernetes", kube_url, NULL, NULL),
        0);
  kr_agent_options_set_backoff(o, 200000, 1000000);
  int rc = kr_agent_new(&a, env.base, o, err, sizeof(err));
  kr_agent_options_free(o);
  ck_assert_msg(rc == 0, "kr_agent_new: %s", err);
  return a;
}

static int agents_at_least(void *arg) {
  return kr_kas_agent_count(kas) >= (size_t)(intptr_t)arg;
}
static int calls_at_least(void *arg) {
  return V.calls >= (intptr_t)arg;
}
static int held_at_least(void *arg) {
  return V.n_held >= (size_t)(intptr_t)arg;
}
static int echo_done(void *arg) {
  return ((th_echo *)arg)->done;
}

/* ----------------------------------------------------- raw HTTP client */

typedef struct http_call {
  struct bufferevent *bev;
  struct evbuffer *in;
  int done;
  int status;
  char text[8192]; /* the response, NUL-terminated (cut) */
} http_call;

static void hc_read(struct bufferevent *b, void *arg) {
  http_call *hc = arg;
  evbuffer_add_buffer(hc->in, bufferevent_get_input(b));
}

static void hc_event(struct bufferevent *b, short what, void *arg) {
  http_call *hc = arg;
  if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
    return;
  evbuffer_add_buffer(hc->in, bufferevent_get_input(b));
  size_t n = evbuffer_get_length(hc->in);
  if (n >= sizeof(hc->text))
    n = sizeof(hc->text) - 1;
  evbuffer_copyout(hc->in, hc->text, n);
  hc->text[n] = 0;
  if (sscanf(hc->text, "HTTP/1.1 %d", &hc->status) != 1)
    hc->status = -1;
  hc->done = 1;
}

/* Sends "method path" with an Authorization field (NULL: none), a body
 * of body_len pattern bytes ('a'..'z') and "connection: close"; the
 * answer ends with the connection. */
static void http_send(http_call *hc, const char *method, const char *path,
                      const char *authz, size_t body_len) {
  memset(hc, 0, sizeof(*hc));
  hc->in = evbuffer_new();
  hc->bev = bufferevent_socket_new(env.base, -1, BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(hc->bev, hc_read, NULL, hc_event, hc);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  sin.sin_port = htons((uint16_t)http_port);
  ck_assert_int_eq(
      bufferevent_socket_connect(hc->bev, (struct sockaddr *)&sin, sizeof(sin)),
      0);
  struct evbuffer *out = bufferevent_get_output(hc->bev);
  evbuffer_add_printf(out, "%s %s HTTP/1.1\r\nHost: kas.test\r\n", method,
                      path);
  if (authz)
    evbuffer_add_printf(out, "Authorization: %s\r\n", authz);
  if (body_len)
    evbuffer_add_printf(out, "Content-Length: %zu\r\n", body_len);
  evbuffer_add_printf(out, "Connection: close\r\n\r\n");
  for (size_t i = 0; i < body_len; i++) {
    char ch = (char)('a' + i % 26);
    evbuffer_add(out, &ch, 1);
  }
  bufferevent_enable(hc->bev, EV_READ | EV_WRITE);
}

static void http_start(http_call *hc, const char *path, const char *authz) {
  http_send(hc, "GET", path, authz, 0);
}

static void http_free(http_call *hc) {
  if (hc->bev)
    bufferevent_free(hc->bev);
  if (hc->in)
    evbuffer_free(hc->in);
  hc->bev = NULL;
  hc->in = NULL;
}

static int http_done(void *arg) {
  return ((http_call *)arg)->done;
}

/* ------------------------------------------- Kubernetes API upstream */

static struct {
  struct evhttp *http;
  int port;
  int requests;
  char user[300];
  char groups[600];  /* Impersonate-Group values joined with ',' */
  int authorization; /* an Authorization field reached it */
  size_t body_len;
  int body_ok; /* the body was the pattern http_send() sends */
} kube;

static void kube_handler(struct evhttp_request *req, void *arg) {
  kube.requests++;
  kube.user[0] = kube.groups[0] = 0;
  struct evkeyval *kv;
  TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
    if (strcasecmp(kv->key, "impersonate-user") == 0)
      snprintf(kube.user, sizeof(kube.user), "%s", kv->value);
    if (strcasecmp(kv->key, "impersonate-group") == 0) {
      if (kube.groups[0])
        strncat(kube.groups, ",",
                sizeof(kube.groups) - strlen(kube.groups) - 1);
      strncat(kube.groups, kv->value,
              sizeof(kube.groups) - strlen(kube.groups) - 1);
    }
    if (strcasecmp(kv->key, "authorization") == 0)
      kube.authorization = 1;
  }
  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  kube.body_len = evbuffer_get_length(in);
  const char *b = (const char *)evbuffer_pullup(in, -1);
  kube.body_ok = 1;
  for (size_t i = 0; i < kube.body_len; i++)
    if (b[i] != (char)('a' + i % 26))
      kube.body_ok = 0;
  struct evbuffer *out = evbuffer_new();
  evbuffer_add_printf(out, "{\"kind\":\"NamespaceList\"}");
  evhttp_send_reply(req, 200, "OK", out);
  evbuffer_free(out);
}

static void kube_start(char *url, size_t size) {
  memset(&kube, 0, sizeof(kube));
  kube.http = evhttp_new(env.base);
  evhttp_set_gencb(kube.http, kube_handler, NULL);
  struct evhttp_bound_socket *bs =
      evhttp_bind_socket_with_handle(kube.http, "127.0.0.1", 0);
  ck_assert_ptr_nonnull(bs);
  struct sockaddr_in sin;
  socklen_t sl = sizeof(sin);
  getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &sl);
  kube.port = ntohs(sin.sin_port);
  snprintf(url, size, "http://127.0.0.1:%d", kube.port);
}

/* ------------------------------------------------------------ fixture */

static void setup(void) {
  th_setup(&env);
  memset(&V, 0, sizeof(V));
  memset(&logs, 0, sizeof(logs));
  V.timer = evtimer_new(env.base, verdict_timer, NULL);
  kr_log_set_handler(log_cb, NULL);
  kr_log_set_level(KR_LOG_DEBUG);
  kas = NULL;
}

static void teardown(void) {
  kr_kas_free(kas);
  kas = NULL;
  /* Requests still held outlive the kas: completing them only frees. */
  while (V.n_held > 0) {
    kr_kas_auth *req = V.held[--V.n_held];
    ck_assert_int_eq(kr_kas_auth_cancelled(req), 1);
    kr_kas_auth_deny(req, NULL);
  }
  if (kube.http)
    evhttp_free(kube.http);
  memset(&kube, 0, sizeof(kube));
  event_free(V.timer);
  kr_log_set_handler(NULL, NULL);
  ck_assert_msg(!logs.leaked, "a log line contained a credential");
  th_cleanup(&env);
}

/* ------------------------------------------------------------- config */

START_TEST(config_verifiers_make_file_and_secret_optional) {
  kr_kas *k = NULL;
  char err[256];
  kas_cfg none = {0};
  ck_assert_int_eq(make_kas(&none, &k, err, sizeof(err)), KR_ECONFIG);
  ck_assert_msg(strstr(err, "agent verifier") != NULL, "%s", err);
  kas_cfg agent_only = {.agent_verifier = 1};
  ck_assert_int_eq(make_kas(&agent_only, &k, err, sizeof(err)), KR_ECONFIG);
  ck_assert_msg(strstr(err, "API verifier") != NULL, "%s", err);
  kas_cfg both = {.agent_verifier = 1, .api_verifier = 1};
  ck_assert_int_eq(make_kas(&both, &k, err, sizeof(err)), 0);
  /* Nothing to re-read without files: fine. */
  ck_assert_int_eq(kr_kas_reload_tokens(k, err, sizeof(err)), 0);
  kr_kas_free(k);
  ck_assert_int_eq(kr_kas_options_set_agent_verifier(NULL, verify_cb, NULL),
                   KR_EINVAL);
}
END_TEST

/* ------------------------------------------------------------ agents */

START_TEST(agent_allowed_at_once) {
  kas_cfg c = {.api_secret = 1, .agent_verifier = 1};
  start_kas(&c);
  V.mode = V_ALLOW;
  V.agent_id = TH_AGENT_ID;
  kr_agent *a = make_agent(AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)1, 5000));
  ck_assert_int_eq(V.calls, 1);
  ck_assert_int_eq(V.kind, KR_KAS_AUTH_AGENT);
  ck_assert_str_eq(V.token, AGENT_TOKEN);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AGENT_CONNECTIONS), 1);
  /* Streams route to it. */
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 100000, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR, "%s", ec.reason);
  ck_assert_uint_eq(ec.received, ec.total);
  ck_assert(!ec.mismatch);
  ck_assert_int_eq(V.calls, 1); /* the JWT needed no verifier */
  kr_client_free(cl);
  kr_agent_free(a);
  free(tok);
}
END_TEST

START_TEST(agent_allowed_later) {
  kas_cfg c = {.api_secret = 1, .agent_verifier = 1};
  start_kas(&c);
  V.mode = V_ALLOW;
  V.async_ms = 300;
  V.agent_id = TH_AGENT_ID;
  V.agents_before_verdict = 99;
  kr_agent *a = make_agent(AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, calls_at_least, (void *)1, 5000));
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)1, 5000));
  /* Registered by the verdict, not before. */
  ck_assert_uint_eq(V.agents_before_verdict, 0);
  ck_assert_int_eq(V.calls, 1);
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 1000, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR, "%s", ec.reason);
  ck_assert_uint_eq(ec.received, 1000);
  kr_client_free(cl);
  kr_agent_free(a);
  free(tok);
}
END_TEST

static int refusals_seen(void *arg) {
  return log_count("event=token_refused", NULL) >= (intptr_t)arg;
}

static int retry_scheduled(void *arg) {
  return log_count("event=reconnect_scheduled", NULL) >= 1;
}

START_TEST(agent_denied) {
  kas_cfg c = {.api_secret = 1, .agent_verifier = 1};
  start_kas(&c);
  V.mode = V_DENY;
  V.async_ms = 50;
  kr_agent *a = make_agent(AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, refusals_seen, (void *)1, 5000));
  /* The agent heard GOAWAY UNAUTHORIZED with the verifier's reason
   * (made printable). */
  ck_assert_int_ge(log_count("event=goaway_received", "code=UNAUTHORIZED"), 1);
  ck_assert_int_ge(
      log_count("event=goaway_received", "not on the platform's list_"), 1);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 1);
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  /* No reconnect storm: the agent backs off (200 ms doubling), and the
   * address is throttled after repeated refusals. */
  ck_assert(th_run_cond(&env, retry_scheduled, NULL, 5000));
  th_run_cond(&env, never_true, NULL, 1000);
  uint64_t attempts =
      (uint64_t)V.calls + kr_kas_stat_get(kas, KR_KAS_STAT_THROTTLED);
  ck_assert_msg(attempts <= 10, "%llu connections in about a second",
                (unsigned long long)attempts);
  /* Every verdict counted (one may still be on its way). */
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES) + V.n_held,
                    (uint64_t)V.calls);
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  kr_agent_free(a);
}
END_TEST

static int verify_timed_out(void *arg) {
  return log_count("event=auth_verify_timeout", NULL) >= 1 &&
         log_count("event=goaway_received", "code=TIMEOUT") >= 1;
}

START_TEST(agent_verifier_never_answers) {
  kas_cfg c = {.api_secret = 1, .agent_verifier = 1, .handshake_ms = 400};
  start_kas(&c);
  V.mode = V_HOLD;
  kr_agent *a = make_agent(AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, held_at_least, (void *)1, 5000));
  kr_kas_auth *req = V.held[0];
  ck_assert_int_eq(kr_kas_auth_cancelled(req), 0);
  /* At the handshake timeout the connection is failed (GOAWAY TIMEOUT,
   * not a refusal). */
  ck_assert(th_run_cond(&env, verify_timed_out, NULL, 5000));
  ck_assert_int_eq(kr_kas_auth_cancelled(req), 1);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 0);
  kr_agent_free(a);
  /* Completing it afterwards only frees it. */
  ck_assert_int_eq(kr_kas_auth_set_agent_id(req, TH_AGENT_ID), 0);
  ck_assert_int_eq(kr_kas_auth_allow(req), 0);
  V.held[0] = V.held[--V.n_held];
  th_run_cond(&env, never_true, NULL, 100);
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AGENT_CONNECTIONS), 0);
}
END_TEST

START_TEST(token_file_first_then_verifier) {
  kas_cfg c = {.token_file = 1, .api_secret = 1, .agent_verifier = 1};
  start_kas(&c);
  V.mode = V_ALLOW;
  V.async_ms = 100;
  V.agent_id = 8;
  int echo = th_echo_server(&env);
  kr_agent *a7 = make_agent(TH_AGENT_TOKEN, echo, NULL);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)1, 5000));
  ck_assert_int_eq(V.calls, 0); /* the file knew it */
  kr_agent *a8 = make_agent(AGENT_TOKEN, echo, NULL);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)2, 5000));
  ck_assert_int_eq(V.calls, 1);
  ck_assert_str_eq(V.token, AGENT_TOKEN);
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 5000, .service = "echo", .agent = 8};
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR, "%s", ec.reason);
  ck_assert_uint_eq(ec.received, 5000);
  kr_client_free(cl);
  kr_agent_free(a7);
  kr_agent_free(a8);
  free(tok);
}
END_TEST

/* ------------------------------------------------------------ API */

/* kr_client_list_agents() from a client opened before the verdict. */
static struct {
  volatile int done;
  int err;
  char json[2048];
} listing;

static void listed_cb(const char *json, size_t len, int err, void *ud) {
  listing.err = err;
  snprintf(listing.json, sizeof(listing.json), "%.*s", (int)len,
           json ? json : "");
  listing.done = 1;
}

static void list_state(kr_client *c, int err, const char *why, void *ud) {
  if (err == 0)
    ck_assert_int_eq(kr_client_list_agents(c, listed_cb, NULL), 0);
}

static kr_client *list_client(const char *token) {
  kr_client_options *o;
  kr_client *c = NULL;
  char err[256];
  kr_client_options_new(&o);
  kr_client_options_set_url(o, api_url);
  kr_client_options_set_token(o, token, strlen(token));
  memset(&listing, 0, sizeof(listing));
  ck_assert_int_eq(
      kr_client_new(&c, env.base, o, NULL, list_state, NULL, err, sizeof(err)),
      0);
  kr_client_options_free(o);
  return c;
}

START_TEST(api_streams_held_then_started) {
  kas_cfg c = {.token_file = 1, .api_verifier = 1};
  start_kas(&c);
  kr_agent *a = make_agent(TH_AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)1, 5000));
  V.mode = V_ALLOW;
  V.async_ms = 300;
  th_echo ec = {.total = 200000, .service = "echo", .agent = TH_AGENT_ID};
  V.watch = &ec;
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, API_TOKEN);
  kr_client *lc = list_client(API_TOKEN);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR, "%s: %s", kr_code_name(ec.code),
                ec.reason);
  ck_assert_uint_eq(ec.received, ec.total);
  ck_assert(!ec.mismatch);
  /* The stream was open, with data sent, before the verdict. */
  ck_assert_int_gt(V.echo_sent_before_verdict, 0);
  ck_assert_int_eq(V.api_calls, 2);
  ck_assert_str_eq(V.token, API_TOKEN);
  ck_assert(th_run_until(&env, &listing.done, 5000));
  ck_assert_int_eq(listing.err, 0);
  char want[32];
  snprintf(want, sizeof(want), "{\"id\":%d,", TH_AGENT_ID);
  ck_assert_msg(strstr(listing.json, want) != NULL, "%s", listing.json);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_API_CONNECTIONS), 2);
  kr_client_free(lc);
  kr_client_free(cl);
  kr_agent_free(a);
}
END_TEST

START_TEST(api_denied_streams_reset) {
  kas_cfg c = {.token_file = 1, .api_secret = 1, .api_verifier = 1};
  start_kas(&c);
  kr_agent *a = make_agent(TH_AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)1, 5000));
  V.mode = V_DENY;
  V.async_ms = 200;
  th_echo ec = {.total = 10000, .service = "echo", .agent = TH_AGENT_ID};
  V.watch = &ec;
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, API_TOKEN);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_int_gt(V.echo_sent_before_verdict, 0);
  ck_assert_msg(ec.code == KR_CODE_UNAUTHORIZED, "%s: %s (state %d)",
                kr_code_name(ec.code), ec.reason, ec.state_err);
  ck_assert_uint_eq(ec.received, 0);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 1);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_STREAMS_ROUTED), 0);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_API_CONNECTIONS), 0);
  kr_client_free(cl);
  /* A JWT still works without the verifier. */
  char *tok = th_api_token(&env);
  th_echo ok = {.total = 100, .service = "echo", .agent = TH_AGENT_ID};
  cl = th_echo_start(&env, &ok, api_url, NULL, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ok, 5000));
  ck_assert_msg(ok.code == KR_CODE_NO_ERROR, "%s", ok.reason);
  ck_assert_int_eq(V.calls, 1);
  kr_client_free(cl);
  kr_agent_free(a);
  free(tok);
}
END_TEST

START_TEST(api_verdict_limits_agents) {
  kas_cfg c = {.token_file = 1, .api_verifier = 1};
  start_kas(&c);
  kr_agent *a = make_agent(TH_AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)1, 5000));
  V.mode = V_ALLOW;
  V.set_agents = 1;
  V.agents[0] = 8;
  V.n_agents = 1;
  th_echo no = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *cl = th_echo_start(&env, &no, api_url, NULL, 1, API_TOKEN);
  ck_assert(th_run_cond(&env, echo_done, &no, 5000));
  ck_assert_int_eq(kr_error_from_code(no.code), KR_EAUTH);
  ck_assert_msg(strstr(no.reason, "not allowed") != NULL, "%s", no.reason);
  kr_client_free(cl);
  /* The same verdict naming agent 7 lets it through. */
  V.agents[1] = TH_AGENT_ID;
  V.n_agents = 2;
  th_echo yes = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  cl = th_echo_start(&env, &yes, api_url, NULL, 1, API_TOKEN);
  ck_assert(th_run_cond(&env, echo_done, &yes, 5000));
  ck_assert_msg(yes.code == KR_CODE_NO_ERROR, "%s", yes.reason);
  ck_assert_uint_eq(yes.received, 10);
  kr_client_free(cl);
  kr_agent_free(a);
}
END_TEST

/* ------------------------------------------------------------ gateway */

START_TEST(gateway_verified_later_identity_reaches_agent) {
  kas_cfg c = {.token_file = 1, .api_secret = 1, .api_verifier = 1};
  start_kas(&c);
  char kube_url[64];
  kube_start(kube_url, sizeof(kube_url));
  kr_agent *a = make_agent(TH_AGENT_TOKEN, th_echo_server(&env), kube_url);
  ck_assert(th_run_cond(&env, agents_at_least, (void *)1, 5000));
  V.mode = V_ALLOW;
  V.async_ms = 200;
  V.agent_id = TH_AGENT_ID;
  V.user = "alice@example.com";
  V.groups[0] = "dev";
  V.groups[1] = "system:authenticated";
  V.n_groups = 2;
  http_call hc;
  http_start(&hc, "/k8s-proxy/api/v1/namespaces", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 200, "%s", hc.text);
  ck_assert_msg(strstr(hc.text, "NamespaceList") != NULL, "%s", hc.text);
  ck_assert_int_eq(V.calls, 1);
  ck_assert_int_eq(V.kind, KR_KAS_AUTH_API);
  ck_assert_str_eq(V.token, USER_TOKEN); /* without "Bearer " */
  ck_assert_int_eq(kube.requests, 1);
  ck_assert_str_eq(kube.user, "alice@example.com");
  ck_assert_str_eq(kube.groups, "dev,system:authenticated");
  ck_assert_int_eq(kube.authorization, 0); /* the caller's never passes */
  http_free(&hc);
  /* Not cached: the next request asks again. */
  http_start(&hc, "/k8s-proxy/version", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 200, "%s", hc.text);
  ck_assert_int_eq(V.calls, 2);
  http_free(&hc);
  /* A verdict without a user cannot use the Kubernetes proxy. */
  V.user = NULL;
  http_start(&hc, "/k8s-proxy/version", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 401, "%s", hc.text);
  http_free(&hc);
  /* A verdict limited to other agents: forbidden. */
  V.user = "alice@example.com";
  V.set_agents = 1;
  V.agents[0] = 8;
  V.n_agents = 1;
  http_start(&hc, "/k8s-proxy/version", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 403, "%s", hc.text);
  http_free(&hc);
  ck_assert_int_eq(kube.requests, 2);
  /* A body sent while the verdict is pending waits, then goes on. */
  V.set_agents = 0;
  evhttp_set_allowed_methods(kube.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
  http_send(&hc, "POST", "/k8s-proxy/api/v1/namespaces", "Bearer " USER_TOKEN,
            300000);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 200, "%s", hc.text);
  ck_assert_int_eq(kube.requests, 3);
  ck_assert_uint_eq(kube.body_len, 300000);
  ck_assert(kube.body_ok);
  http_free(&hc);
  /* The same, decided inside the verifier. */
  V.async_ms = 0;
  http_send(&hc, "POST", "/k8s-proxy/api/v1/namespaces", "Bearer " USER_TOKEN,
            1000);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 200, "%s", hc.text);
  ck_assert_int_eq(kube.requests, 4);
  ck_assert_uint_eq(kube.body_len, 1000);
  ck_assert(kube.body_ok);
  http_free(&hc);
  kr_agent_free(a);
}
END_TEST

START_TEST(gateway_denied_and_timed_out) {
  kas_cfg c = {.token_file = 1, .api_verifier = 1};
  start_kas(&c);
  V.mode = V_DENY;
  V.async_ms = 100;
  http_call hc;
  http_start(&hc, "/api/v1/agents/7/services/echo/x", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 401, "%s", hc.text);
  ck_assert_msg(strstr(hc.text, "not on the platform") != NULL, "%s", hc.text);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 1);
  http_free(&hc);
  /* No credential: refused without asking the verifier. */
  http_start(&hc, "/api/v1/agents/7/services/echo/x", NULL);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 401, "%s", hc.text);
  ck_assert_int_eq(V.calls, 1);
  http_free(&hc);
  /* The verifier never answers: 504 at the request timeout (1 s). */
  V.mode = V_HOLD;
  http_start(&hc, "/api/v1/agents", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 504, "%s", hc.text);
  ck_assert_int_eq(V.calls, 2);
  ck_assert_int_eq(kr_kas_auth_cancelled(V.held[0]), 1);
  kr_kas_auth_deny(V.held[--V.n_held], "late");
  http_free(&hc);
  /* The listing through the gateway with an allowing verdict, later and
   * at once. */
  V.mode = V_ALLOW;
  http_start(&hc, "/api/v1/agents", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 200, "%s", hc.text);
  ck_assert_msg(strstr(hc.text, "\"agents\":[]") != NULL, "%s", hc.text);
  http_free(&hc);
  V.async_ms = 0;
  http_start(&hc, "/api/v1/agents", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 200, "%s", hc.text);
  http_free(&hc);
  /* Denied at once, with a body the gateway cannot skip: 401, closed. */
  V.mode = V_DENY;
  http_send(&hc, "POST", "/api/v1/agents/7/services/echo/x",
            "Bearer " USER_TOKEN, 100000);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 401, "%s", hc.text);
  http_free(&hc);
  ck_assert_int_eq(V.calls, 5);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 3);
}
END_TEST

/* ------------------------------------------------------------ lifetime */

START_TEST(kas_freed_with_verifications_pending) {
  kas_cfg c = {.api_verifier = 1, .agent_verifier = 1};
  start_kas(&c);
  V.mode = V_HOLD;
  kr_agent *a = make_agent(AGENT_TOKEN, th_echo_server(&env), NULL);
  th_echo ec = {.total = 50000, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, API_TOKEN);
  http_call hc;
  http_start(&hc, "/k8s-proxy/version", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, held_at_least, (void *)3, 5000));
  ck_assert(th_run_until(&env, &ec.ready, 5000)); /* its stream is held */
  for (size_t i = 0; i < V.n_held; i++)
    ck_assert_int_eq(kr_kas_auth_cancelled(V.held[i]), 0);
  kr_kas_free(kas);
  kas = NULL;
  for (size_t i = 0; i < V.n_held; i++)
    ck_assert_int_eq(kr_kas_auth_cancelled(V.held[i]), 1);
  /* Completing them now only frees them, whatever the verdict. */
  while (V.n_held > 0) {
    kr_kas_auth *req = V.held[--V.n_held];
    if (kr_kas_auth_get_kind(req) == KR_KAS_AUTH_AGENT) {
      ck_assert_int_eq(kr_kas_auth_set_agent_id(req, TH_AGENT_ID), 0);
      ck_assert_int_eq(kr_kas_auth_allow(req), 0);
    } else if (V.n_held % 2) {
      ck_assert_int_eq(kr_kas_auth_set_user(req, "bob"), 0);
      ck_assert_int_eq(kr_kas_auth_allow(req), 0);
    } else {
      kr_kas_auth_deny(req, "too late");
    }
  }
  /* The clients see their connections end. */
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  http_free(&hc);
  kr_client_free(cl);
  kr_agent_free(a);
}
END_TEST

static int held_cancelled(void *arg) {
  return V.n_held > 0 && kr_kas_auth_cancelled(V.held[0]);
}

START_TEST(client_gone_while_pending) {
  kas_cfg c = {.token_file = 1, .api_verifier = 1};
  start_kas(&c);
  V.mode = V_HOLD;
  th_echo ec = {.total = 1000, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, API_TOKEN);
  ck_assert(th_run_cond(&env, held_at_least, (void *)1, 5000));
  ck_assert(th_run_until(&env, &ec.ready, 5000));
  ck_assert_int_eq(kr_kas_auth_cancelled(V.held[0]), 0);
  kr_client_free(cl); /* its held stream and the connection go */
  ck_assert(th_run_cond(&env, held_cancelled, NULL, 5000));
  ck_assert_int_eq(kr_kas_auth_allow(V.held[0]), 0); /* only frees */
  V.n_held = 0;
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_API_CONNECTIONS), 0);
  /* The same for a gateway request whose client goes away. */
  http_call hc;
  http_start(&hc, "/api/v1/agents", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, held_at_least, (void *)1, 5000));
  http_free(&hc);
  ck_assert(th_run_cond(&env, held_cancelled, NULL, 5000));
  kr_kas_auth_deny(V.held[0], "gone");
  V.n_held = 0;
}
END_TEST

static volatile int drained;
static void on_drained(kr_kas *k, void *ud) {
  drained = 1;
}

START_TEST(drain_with_verifications_pending) {
  kas_cfg c = {.agent_verifier = 1, .api_verifier = 1};
  start_kas(&c);
  V.mode = V_HOLD;
  kr_agent *a = make_agent(AGENT_TOKEN, th_echo_server(&env), NULL);
  th_echo ec = {.total = 1000, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, API_TOKEN);
  http_call hc;
  http_start(&hc, "/api/v1/agents", "Bearer " USER_TOKEN);
  ck_assert(th_run_cond(&env, held_at_least, (void *)3, 5000));
  ck_assert(th_run_until(&env, &ec.ready, 5000));
  drained = 0;
  kr_kas_drain(kas, 5000000, on_drained, NULL);
  /* Nobody waits for these verdicts any more. */
  for (size_t i = 0; i < V.n_held; i++)
    ck_assert_int_eq(kr_kas_auth_cancelled(V.held[i]), 1);
  ck_assert(th_run_cond(&env, http_done, &hc, 5000));
  ck_assert_msg(hc.status == 503, "%s", hc.text);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.code == KR_CODE_REFUSED, "%s: %s", kr_code_name(ec.code),
                ec.reason);
  /* Verdicts that come now change nothing. */
  while (V.n_held > 0) {
    kr_kas_auth *req = V.held[--V.n_held];
    if (kr_kas_auth_get_kind(req) == KR_KAS_AUTH_AGENT)
      kr_kas_auth_set_agent_id(req, TH_AGENT_ID);
    ck_assert_int_eq(kr_kas_auth_allow(req), 0);
  }
  kr_agent_free(a); /* it would redial the closed listener meanwhile */
  kr_client_free(cl);
  http_free(&hc);
  ck_assert(th_run_until(&env, &drained, 5000));
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
}
END_TEST

/* ------------------------------------------------------------ setters */

START_TEST(setter_arguments_checked) {
  kas_cfg c = {.agent_verifier = 1, .api_verifier = 1};
  start_kas(&c);
  V.mode = V_HOLD;
  kr_agent *a = make_agent(AGENT_TOKEN, th_echo_server(&env), NULL);
  ck_assert(th_run_cond(&env, held_at_least, (void *)1, 5000));
  kr_kas_auth *ag = V.held[0];
  th_echo ec = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *cl = th_echo_start(&env, &ec, api_url, NULL, 1, API_TOKEN);
  ck_assert(th_run_cond(&env, held_at_least, (void *)2, 5000));
  kr_kas_auth *api = V.held[1];
  ck_assert_int_eq(kr_kas_auth_get_kind(ag), KR_KAS_AUTH_AGENT);
  ck_assert_int_eq(kr_kas_auth_get_kind(api), KR_KAS_AUTH_API);

  /* Agent verification. */
  ck_assert_int_eq(kr_kas_auth_set_agent_id(ag, 0), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_agent_id(ag, -5), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_agent_id(NULL, 7), KR_EINVAL);
  int64_t one = 7;
  ck_assert_int_eq(kr_kas_auth_set_agents(ag, &one, 1), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_user(ag, "bob"), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_add_group(ag, "dev"), KR_EINVAL);
  /* No agent id yet: stays pending. */
  ck_assert_int_eq(kr_kas_auth_allow(ag), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_cancelled(ag), 0);

  /* API verification. */
  int64_t ids[65];
  for (int i = 0; i < 65; i++)
    ids[i] = i + 1;
  ck_assert_int_eq(kr_kas_auth_set_agents(api, ids, 65), KR_ETOOBIG);
  ck_assert_int_eq(kr_kas_auth_set_agents(api, NULL, 2), KR_EINVAL);
  ids[3] = 0;
  ck_assert_int_eq(kr_kas_auth_set_agents(api, ids, 4), KR_EINVAL);
  ids[3] = -1;
  ck_assert_int_eq(kr_kas_auth_set_agents(api, ids, 4), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_agents(api, NULL, 0), 0); /* none */
  ids[3] = 4;
  ck_assert_int_eq(kr_kas_auth_set_agents(api, ids, 64), 0);
  ck_assert_int_eq(kr_kas_auth_set_agent_id(api, 0), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_user(api, ""), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_user(api, " bob"), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_user(api, "bob "), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_user(api, "bo\nb"), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_user(api, "b\xc3\xb6"), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_set_user(api, NULL), KR_EINVAL);
  char longname[300];
  memset(longname, 'x', sizeof(longname) - 1);
  longname[sizeof(longname) - 1] = 0;
  ck_assert_int_eq(kr_kas_auth_set_user(api, longname), KR_ETOOBIG);
  longname[255] = 0;
  ck_assert_int_eq(kr_kas_auth_set_user(api, longname), 0);
  ck_assert_int_eq(kr_kas_auth_set_user(api, "carol smith"), 0);
  ck_assert_int_eq(kr_kas_auth_add_group(api, "bad\tgroup"), KR_EINVAL);
  for (int i = 0; i < 32; i++) {
    char g[16];
    snprintf(g, sizeof(g), "g%d", i);
    ck_assert_int_eq(kr_kas_auth_add_group(api, g), 0);
  }
  ck_assert_int_eq(kr_kas_auth_add_group(api, "one-too-many"), KR_ETOOBIG);
  ck_assert_int_eq(kr_kas_auth_add_group(NULL, "g"), KR_EINVAL);
  ck_assert_int_eq(kr_kas_auth_allow(NULL), KR_EINVAL);
  kr_kas_auth_deny(NULL, "x"); /* no-op */
  ck_assert_int_eq(kr_kas_auth_cancelled(api), 0);

  /* The verdicts now: the agent (7) registers; the API client was
   * limited to agents 1..64 (7 included), its stream reaches it. */
  ck_assert_int_eq(kr_kas_auth_set_agent_id(ag, TH_AGENT_ID), 0);
  ck_assert_int_eq(kr_kas_auth_allow(ag), 0);
  ck_assert_int_eq(kr_kas_auth_allow(api), 0);
  V.n_held = 0;
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR, "%s", ec.reason);
  ck_assert_uint_eq(ec.received, 10);
  kr_client_free(cl);
  kr_agent_free(a);
}
END_TEST

int main(void) {
  Suite *s = suite_create("kas_verify");
  TCase *tc = tcase_create("verifiers");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, config_verifiers_make_file_and_secret_optional);
  tcase_add_test(tc, agent_allowed_at_once);
  tcase_add_test(tc, agent_allowed_later);
  tcase_add_test(tc, agent_denied);
  tcase_add_test(tc, agent_verifier_never_answers);
  tcase_add_test(tc, token_file_first_then_verifier);
  tcase_add_test(tc, api_streams_held_then_started);
  tcase_add_test(tc, api_denied_streams_reset);
  tcase_add_test(tc, api_verdict_limits_agents);
  tcase_add_test(tc, gateway_verified_later_identity_reaches_agent);
  tcase_add_test(tc, gateway_denied_and_timed_out);
  tcase_add_test(tc, kas_freed_with_verifications_pending);
  tcase_add_test(tc, client_gone_while_pending);
  tcase_add_test(tc, drain_with_verifications_pending);
  tcase_add_test(tc, setter_arguments_checked);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
