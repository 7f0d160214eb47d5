/* kr_client_free() from inside the client's own callbacks: a stream's
 * on_close fired because kas went away, a reset by the far end or a local
 * kr_stream_reset(); on_state with an error or with 0 (ready); a listing
 * callback; and a free with kr_client_list_agents() requests pending.
 * After the free no callback may fire, nothing may touch the client, and
 * nothing may leak (run under AddressSanitizer). Every case runs over
 * tcp:// and ws://, and over tls:// and wss:// when the openssl program
 * is there to make a certificate. mbedTLS and libwebsockets are not
 * built with the sanitizer: a TLS configuration or WebSocket context
 * freed too early shows under valgrind (meson test --setup valgrind).
 *
 * Also here: kr_agent_drain() when libevent has no memory for the grace
 * timer (libevent's allocator is replaced to fail on demand). */
#include <check.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "harness.h"

/* tcp and ws need no certificate; tls and wss are run only with openssl. */
static const char *const schemes[] = {"tcp", "ws", "tls", "wss"};

static th_env env;
static kr_kas *kas;
static kr_agent *agent;
static const char *scheme;
static char agent_url[96], api_url[96];
static const char *ca_file; /* for tls:// */
static int verify;

/* What the callbacks saw. after_free counts callbacks that came after
 * kr_client_free(): it must stay 0. */
static struct {
  kr_client *c;
  int freed;
  int after_free;
  int ready;
  int state_err;
  int replies;
  int closes;
  uint32_t close_code;
  int lists;
  int list_err;
  kr_stream *s[2];
  /* What the case does where. */
  int free_on_ready, free_on_error, free_on_close, free_on_list;
  int open_on_ready, list_on_ready;
  int break_on_free; /* and leave the loop at once */
  const char *service;
} g;

static int never(void *arg) {
  return 0;
}
static int agent_registered(void *arg) {
  return kas && kr_kas_agent_count(kas) > 0;
}

static void setup(void) {
  th_setup(&env);
  memset(&g, 0, sizeof(g));
  kas = NULL;
  agent = NULL;
  ca_file = NULL;
  verify = 1;
}

static void teardown(void) {
  kr_agent_free(agent);
  kr_kas_free(kas);
  th_cleanup(&env);
}

/* Starts kas over schemes[i]; with_agent: and an agent serving "echo". */
static void start(int i, int with_agent) {
  scheme = schemes[i];
  const char *host = "127.0.0.1";
  if (strcmp(scheme, "tls") == 0 || strcmp(scheme, "wss") == 0)
    ck_assert_int_eq(th_make_cert(&env, "localhost", ""), 0);
  if (strcmp(scheme, "tls") == 0) {
    host = "localhost"; /* the certificate's name */
    ca_file = env.cert;
  }
  if (strcmp(scheme, "wss") == 0)
    verify = 0; /* self-signed for localhost, dialled by address */
  char a[96], b[96];
  snprintf(a, sizeof(a), "%s://%s:0", scheme, host);
  snprintf(b, sizeof(b), "%s://%s:0", scheme, host);
  kas = th_kas(&env, a, b, 2000);
  snprintf(agent_url, sizeof(agent_url), "%s://%s:%d", scheme, host,
           kr_kas_agent_port(kas, 0));
  snprintf(api_url, sizeof(api_url), "%s://%s:%d", scheme, host,
           kr_kas_api_port(kas, 0));
  if (with_agent) {
    agent =
        th_agent(&env, agent_url, NULL, th_echo_server(&env), ca_file, verify);
    ck_assert_msg(th_run_cond(&env, agent_registered, NULL, 10000),
                  "the agent did not register over %s", scheme);
  }
}

static void free_client(void) {
  kr_client_free(g.c);
  g.c = NULL;
  g.freed = 1;
  if (g.break_on_free)
    event_base_loopbreak(env.base);
}

static void on_listed(const char *json, size_t len, int err, void *ud) {
  if (g.freed)
    g.after_free++;
  g.lists++;
  g.list_err = err;
  if (g.free_on_list && !g.freed)
    free_client();
}

static void on_state(kr_client *c, int err, const char *why, void *ud) {
  if (g.freed) {
    g.after_free++;
    return;
  }
  if (err) {
    g.state_err = err;
    if (g.free_on_error)
      free_client();
    return;
  }
  g.ready = 1;
  for (int i = 0; i < g.open_on_ready; i++)
    ck_assert_int_eq(kr_client_open(c, TH_AGENT_ID,
                                    g.service ? g.service : "echo", NULL, 0, 0,
                                    NULL, &g.s[i]),
                     0);
  for (int i = 0; i < g.list_on_ready; i++)
    ck_assert_int_eq(kr_client_list_agents(c, on_listed, NULL), 0);
  if (g.free_on_ready)
    free_client();
}

static void on_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                     void *ud) {
  if (g.freed)
    g.after_free++;
  g.replies++;
}

static void on_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  if (g.freed)
    g.after_free++;
  kr_stream_consume(s, n);
}

static void on_close(kr_stream *s, uint32_t code, const uint8_t *r, size_t rl,
                     void *ud) {
  if (g.freed)
    g.after_free++;
  g.closes++;
  g.close_code = code;
  for (int i = 0; i < 2; i++)
    if (g.s[i] == s)
      g.s[i] = NULL;
  if (g.free_on_close && !g.freed)
    free_client();
}

/* A client of api_url with token tok (NULL: a valid one). */
static void client_start(const char *tok) {
  char *mine = tok ? NULL : th_api_token(&env);
  kr_client_options *o;
  kr_mux_callbacks *cbs;
  char err[256];
  kr_client_options_new(&o);
  kr_mux_callbacks_new(&cbs);
  kr_client_options_set_url(o, api_url);
  kr_client_options_set_token(o, tok ? tok : mine, strlen(tok ? tok : mine));
  if (ca_file)
    kr_client_options_set_tls_ca_file(o, ca_file);
  kr_client_options_set_tls_verify(o, verify);
  kr_mux_callbacks_set_on_reply(cbs, on_reply);
  kr_mux_callbacks_set_on_data(cbs, on_data);
  kr_mux_callbacks_set_on_close(cbs, on_close);
  int rc =
      kr_client_new(&g.c, env.base, o, cbs, on_state, NULL, err, sizeof(err));
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  free(mine);
  ck_assert_msg(rc == 0, "kr_client_new: %s", err);
}

static int is_freed(void *arg) {
  return g.freed;
}
static int is_ready(void *arg) {
  return g.ready;
}
/* Every stream opened on ready was answered. */
static int all_replied(void *arg) {
  return g.replies >= g.open_on_ready;
}
static int one_close(void *arg) {
  return g.closes >= 1;
}

/* The loop runs on for a while: a late callback or a touch of the freed
 * client would show now (after_free, or AddressSanitizer). */
static void settle(void) {
  th_run_cond(&env, never, NULL, 200);
  ck_assert_int_eq(g.after_free, 0);
}

/* Two streams are open when kas goes away: the first on_close frees the
 * client; the second stream and on_state must stay silent. */
START_TEST(free_in_on_close_kas_gone) {
  start(_i, 1);
  g.open_on_ready = 2;
  g.free_on_close = 1;
  client_start(NULL);
  ck_assert_msg(th_run_cond(&env, all_replied, NULL, 10000),
                "the streams were not answered over %s", scheme);
  kr_kas_free(kas);
  kas = NULL;
  ck_assert_msg(th_run_cond(&env, is_freed, NULL, 10000),
                "no on_close after kas went away");
  ck_assert_int_eq(g.closes, 1);
  ck_assert_int_eq(g.state_err, 0);
  settle();
}
END_TEST

/* The far end resets a stream (unknown service): freed in its on_close,
 * with a second stream and a listing pending. */
START_TEST(free_in_on_close_reset_by_peer) {
  start(_i, 1);
  g.open_on_ready = 2;
  g.list_on_ready = 1;
  g.service = "no-such-service";
  g.free_on_close = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, is_freed, NULL, 10000));
  ck_assert_int_eq(kr_error_from_code(g.close_code), KR_ENOSERVICE);
  ck_assert_int_eq(g.closes, 1);
  settle();
}
END_TEST

/* kr_stream_reset() from outside any callback: on_close fires inside it
 * and frees the client while the mux is still in that call. */
START_TEST(free_in_on_close_local_reset) {
  start(_i, 1);
  g.open_on_ready = 2;
  g.free_on_close = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, all_replied, NULL, 10000));
  ck_assert_int_eq(kr_stream_reset(g.s[0], KR_CODE_CANCEL, "test"), 0);
  ck_assert(g.freed);
  ck_assert_int_eq(g.closes, 1);
  settle();
}
END_TEST

/* kas refuses the token: freed inside on_state(KR_EAUTH). */
START_TEST(free_in_on_state_refused) {
  start(_i, 0);
  g.free_on_error = 1;
  client_start("not.a.jwt");
  ck_assert(th_run_cond(&env, is_freed, NULL, 10000));
  /* Under valgrind kas's 2 s handshake timeout may come first. */
  if (getenv("KR_VALGRIND"))
    ck_assert_int_lt(g.state_err, 0);
  else
    ck_assert_int_eq(g.state_err, KR_EAUTH);
  settle();
}
END_TEST

/* Nothing listens: freed inside on_state(error) of the failed connect. */
START_TEST(free_in_on_state_connect_failed) {
  start(_i, 0);
  kr_kas_free(kas); /* its port is free now */
  kas = NULL;
  g.free_on_error = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, is_freed, NULL, 10000));
  ck_assert_int_lt(g.state_err, 0);
  settle();
}
END_TEST

/* A ready connection breaks (kas goes away, streams and a listing
 * open): freed inside on_state(error) after every stream's on_close. */
START_TEST(free_in_on_state_broken) {
  start(_i, 1);
  g.open_on_ready = 2;
  g.free_on_error = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, all_replied, NULL, 10000));
  ck_assert_int_eq(kr_client_list_agents(g.c, on_listed, NULL), 0);
  kr_kas_free(kas);
  kas = NULL;
  ck_assert(th_run_cond(&env, is_freed, NULL, 10000));
  ck_assert_int_lt(g.state_err, 0);
  ck_assert_int_eq(g.closes, 2);
  ck_assert_int_eq(g.lists, 1);
  settle();
}
END_TEST

/* Freed inside on_state(0) right after opening streams and listings: the
 * listings' callbacks never fire and their state is released. */
START_TEST(free_in_on_state_ready) {
  start(_i, 1);
  g.open_on_ready = 2;
  g.list_on_ready = 2;
  g.free_on_ready = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, is_freed, NULL, 10000));
  settle();
  ck_assert_int_eq(g.lists, 0);
  ck_assert_int_eq(g.closes, 0);
}
END_TEST

/* Freed inside on_state(0), then the loop is left at once and never runs
 * again: event_base_free() (in the teardown) completes the free. */
START_TEST(free_in_on_state_ready_then_base_freed) {
  start(_i, 1);
  g.open_on_ready = 1;
  g.list_on_ready = 1;
  g.free_on_ready = 1;
  g.break_on_free = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, is_freed, NULL, 10000));
}
END_TEST

/* Freed from outside the callbacks with listings pending. */
START_TEST(free_with_list_pending) {
  start(_i, 1);
  client_start(NULL);
  ck_assert(th_run_cond(&env, is_ready, NULL, 10000));
  ck_assert_int_eq(kr_client_list_agents(g.c, on_listed, NULL), 0);
  ck_assert_int_eq(kr_client_list_agents(g.c, on_listed, NULL), 0);
  free_client();
  settle();
  ck_assert_int_eq(g.lists, 0);
}
END_TEST

/* Freed inside the first of two listing callbacks. */
START_TEST(free_in_list_callback) {
  start(_i, 1);
  g.list_on_ready = 2;
  g.free_on_list = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, is_freed, NULL, 10000));
  ck_assert_int_eq(g.list_err, 0);
  settle();
  ck_assert_int_eq(g.lists, 1);
}
END_TEST

/* libevent allocations fail while this is set. */
static int fail_libevent_alloc;
static void *ev_malloc(size_t n) {
  return fail_libevent_alloc ? NULL : malloc(n);
}
static void *ev_realloc(void *p, size_t n) {
  return fail_libevent_alloc ? NULL : realloc(p, n);
}

static int drained;
static void on_drained(kr_agent *a, void *ud) {
  drained++;
}
static int agent_gone(void *arg) {
  return kr_kas_agent_count(kas) == 0;
}

/* Without the grace timer's event the drain closes every connection at
 * once and reports done from the loop; kas sees the agent go. */
static int is_drained(void *arg) {
  return drained > 0;
}

START_TEST(agent_drain_without_timer_memory) {
  start(0, 1);
  g.open_on_ready = 1;
  client_start(NULL);
  ck_assert(th_run_cond(&env, all_replied, NULL, 10000));
  drained = 0;
  fail_libevent_alloc = 1;
  kr_agent_drain(agent, 5000000, on_drained, NULL);
  fail_libevent_alloc = 0;
  ck_assert_int_eq(drained, 0); /* from the loop, not inside the call */
  ck_assert_msg(th_run_cond(&env, is_drained, NULL, 2000),
                "done did not fire well before the 5 s grace");
  ck_assert_uint_eq(kr_agent_connected(agent), 0);
  ck_assert(th_run_cond(&env, agent_gone, NULL, 10000));
  /* The stream through the agent was ended, not left to the grace. */
  ck_assert(th_run_cond(&env, one_close, NULL, 10000));
  kr_client_free(g.c);
  g.c = NULL;
  th_run_cond(&env, never, NULL, 100);
  ck_assert_int_eq(drained, 1);
}
END_TEST

int main(void) {
  /* Before any other libevent call. */
  event_set_mem_functions(ev_malloc, ev_realloc, free);
  int n = 4;
  if (system("command -v openssl >/dev/null 2>&1") != 0) {
    fprintf(stderr, "SKIP tls:// and wss:// cases: the openssl program is "
                    "needed to make test certificates\n");
    n = 2;
  }
  Suite *s = suite_create("client_free");
  TCase *tc = tcase_create("free_inside_callbacks");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_loop_test(tc, free_in_on_close_kas_gone, 0, n);
  tcase_add_loop_test(tc, free_in_on_close_reset_by_peer, 0, n);
  tcase_add_loop_test(tc, free_in_on_close_local_reset, 0, n);
  tcase_add_loop_test(tc, free_in_on_state_refused, 0, n);
  tcase_add_loop_test(tc, free_in_on_state_connect_failed, 0, n);
  tcase_add_loop_test(tc, free_in_on_state_broken, 0, n);
  tcase_add_loop_test(tc, free_in_on_state_ready, 0, n);
  tcase_add_loop_test(tc, free_in_on_state_ready_then_base_freed, 0, n);
  tcase_add_loop_test(tc, free_with_list_pending, 0, n);
  tcase_add_loop_test(tc, free_in_list_callback, 0, n);
  suite_add_tcase(s, tc);
  TCase *td = tcase_create("agent_drain");
  tcase_add_checked_fixture(td, setup, teardown);
  tcase_set_timeout(td, 60);
  tcase_add_test(td, agent_drain_without_timer_memory);
  suite_add_tcase(s, td);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
