/* Tunnels over plain TCP, in one process: kas + agent + client. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "echo_client.h"
#include "harness.h"

static th_env env;
static kr_kas *kas;
static char agent_url[64], api_url[64];

static int agent_registered(void *arg) { return kr_kas_agent_count(kas) > 0; }
static int echo_done(void *arg) { return ((th_echo *)arg)->done; }

static void setup(void) {
  th_setup(&env);
  kas = th_kas(&env, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", 300);
  snprintf(agent_url, sizeof(agent_url), "tcp://127.0.0.1:%d",
           kr_kas_agent_port(kas, 0));
  snprintf(api_url, sizeof(api_url), "tcp://127.0.0.1:%d",
           kr_kas_api_port(kas, 0));
}

static void teardown(void) {
  kr_kas_free(kas);
  th_cleanup(&env);
}

static void run_echo(th_echo *ec, const char *token) {
  kr_client *c = th_echo_start(&env, ec, api_url, NULL, 1, token);
  ck_assert_ptr_nonnull(c);
  ck_assert_msg(th_run_cond(&env, echo_done, ec, 20000), "echo did not end");
  kr_client_free(c);
}

START_TEST(echo_4mib) {
  kr_agent *a = th_agent(&env, agent_url, NULL, th_echo_server(&env), NULL, 1);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 5000));
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 4u << 20, .service = "echo", .agent = TH_AGENT_ID};
  run_echo(&ec, tok);
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR, "closed with %s: %s",
                kr_code_name(ec.code), ec.reason);
  ck_assert_uint_eq(ec.received, ec.total);
  ck_assert(!ec.mismatch);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_STREAMS_ROUTED), 1);
  free(tok);
  kr_agent_free(a);
}
END_TEST

START_TEST(unknown_service) {
  kr_agent *a = th_agent(&env, agent_url, NULL, th_echo_server(&env), NULL, 1);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 5000));
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 10, .service = "nope", .agent = TH_AGENT_ID};
  run_echo(&ec, tok);
  ck_assert_int_eq(kr_error_from_code(ec.code), KR_ENOSERVICE);
  free(tok);
  kr_agent_free(a);
}
END_TEST

START_TEST(agent_not_connected) {
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 10, .service = "echo", .agent = 99};
  run_echo(&ec, tok);
  ck_assert_int_eq(kr_error_from_code(ec.code), KR_ENOTCONN);
  ck_assert_msg(strstr(ec.reason, "99") != NULL, "reason names the agent: %s",
                ec.reason);
  ck_assert_uint_eq(kr_kas_stat_get(kas, KR_KAS_STAT_ROUTE_TIMEOUTS), 1);
  free(tok);
}
END_TEST

START_TEST(waiting_stream_woken_by_registration) {
  char *tok = th_api_token(&env);
  /* The stream waits (route timeout raised); the agent connects later. */
  kr_kas_free(kas);
  kas = th_kas(&env, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", 10000);
  snprintf(agent_url, sizeof(agent_url), "tcp://127.0.0.1:%d",
           kr_kas_agent_port(kas, 0));
  snprintf(api_url, sizeof(api_url), "tcp://127.0.0.1:%d",
           kr_kas_api_port(kas, 0));
  th_echo ec = {.total = 1000, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, api_url, NULL, 1, tok);
  th_run_until(&env, &ec.ready, 5000);
  kr_agent *a = th_agent(&env, agent_url, NULL, th_echo_server(&env), NULL, 1);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR, "%s", ec.reason);
  ck_assert_uint_eq(ec.received, 1000);
  kr_client_free(c);
  kr_agent_free(a);
  free(tok);
}
END_TEST

START_TEST(bad_api_token) {
  th_echo ec = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, api_url, NULL, 1, "not.a.jwt");
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  ck_assert_msg(ec.state_err == KR_EAUTH ||
                    kr_error_from_code(ec.code) == KR_EAUTH,
                "state %d code %u", ec.state_err, ec.code);
  ck_assert_uint_ge(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 1);
  kr_client_free(c);
}
END_TEST

static int auth_failed(void *arg) {
  return kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES) > 0;
}

static int never_true(void *arg) { return 0; }
static int agent_idle(void *arg) { return kr_agent_connected(arg) == 0; }

START_TEST(bad_agent_token) {
  kr_agent *a = th_agent(&env, agent_url, "wrong-token", th_echo_server(&env),
                         NULL, 1);
  ck_assert(th_run_cond(&env, auth_failed, NULL, 5000));
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  /* The agent hears the refusal and stops counting the tunnels. */
  ck_assert(th_run_cond(&env, agent_idle, a, 5000));
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  kr_agent_free(a);
}
END_TEST

static int throttled(void *arg) {
  return kr_kas_stat_get(kas, KR_KAS_STAT_THROTTLED) > 0;
}

START_TEST(failing_agents_throttled_api_unaffected) {
  /* An agent that keeps failing (backoff 50-200 ms) gets its address
   * refused after 5 failures; API clients from that address are not. */
  kr_agent *a = th_agent(&env, agent_url, "wrong-token", th_echo_server(&env),
                         NULL, 1);
  ck_assert_msg(th_run_cond(&env, throttled, NULL, 10000),
                "no throttling after %llu failures",
                (unsigned long long)kr_kas_stat_get(kas,
                                                    KR_KAS_STAT_AUTH_FAILURES));
  ck_assert_uint_ge(kr_kas_stat_get(kas, KR_KAS_STAT_AUTH_FAILURES), 5);
  kr_agent_free(a);
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 10, .service = "echo", .agent = 99};
  kr_client *c = th_echo_start(&env, &ec, api_url, NULL, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 5000));
  /* Reached kas and was routed (no such agent), not refused unread. */
  ck_assert_int_eq(ec.state_err, 0);
  ck_assert_int_eq(kr_error_from_code(ec.code), KR_ENOTCONN);
  kr_client_free(c);
  free(tok);
}
END_TEST

/* A client freed inside its own on_writable callback (reached from the
 * connection's output pump) must not be touched afterwards. */
static kr_client *fw_client;
static kr_stream *fw_stream;
static int fw_freed;
static uint8_t fw_buf[1 << 20];

static void fw_fill(kr_stream *s) {
  for (int i = 0; i < 64; i++)
    if (kr_stream_write(s, fw_buf, sizeof(fw_buf)) <= 0)
      break;
}
static void fw_state(kr_client *c, int err, const char *why, void *ud) {
  if (err == 0 && !fw_stream &&
      kr_client_open(c, TH_AGENT_ID, "echo", NULL, 0, 0, NULL, &fw_stream) == 0)
    fw_fill(fw_stream);
}
static void fw_writable(kr_stream *s, void *ud) {
  if (!fw_freed) {
    fw_freed = 1;
    kr_client_free(fw_client);
    fw_client = NULL;
  }
}
static void fw_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr_stream_consume(s, n);
}

/* kr_client_list_agents(): the agents this (single) kas holds. */
static char list_json[4096];
static volatile int list_done;
static int list_err;

static void listed_cb(const char *json, size_t len, int err, void *ud) {
  list_err = err;
  snprintf(list_json, sizeof(list_json), "%.*s", (int)len, json ? json : "");
  list_done = 1;
}

static void list_state(kr_client *c, int err, const char *why, void *ud) {
  if (err == 0)
    ck_assert_int_eq(kr_client_list_agents(c, listed_cb, NULL), 0);
}

START_TEST(list_agents) {
  kr_agent *a = th_agent(&env, agent_url, NULL, th_echo_server(&env), NULL, 1);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 5000));
  char *tok = th_api_token(&env);
  kr_client_options *o;
  kr_client_options_new(&o);
  kr_client_options_set_url(o, api_url);
  kr_client_options_set_token(o, tok, strlen(tok));
  kr_client *c;
  char err[256];
  list_done = 0;
  ck_assert_int_eq(kr_client_new(&c, env.base, o, NULL, list_state, NULL, err,
                                 sizeof(err)),
                   0);
  kr_client_options_free(o);
  ck_assert_msg(th_run_until(&env, &list_done, 5000), "no listing");
  ck_assert_int_eq(list_err, 0);
  char want[64];
  snprintf(want, sizeof(want), "{\"id\":%d,", TH_AGENT_ID);
  ck_assert_msg(strstr(list_json, want) != NULL, "listing: %s", list_json);
  ck_assert_msg(strstr(list_json, "\"truncated\":false") != NULL, "listing: %s",
                list_json);
  kr_client_free(c);
  kr_agent_free(a);
  free(tok);
}
END_TEST

START_TEST(client_freed_inside_on_writable) {
  kr_agent *a = th_agent(&env, agent_url, NULL, th_echo_server(&env), NULL, 1);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 5000));
  char *tok = th_api_token(&env);
  kr_client_options *o;
  kr_mux_callbacks *cbs;
  kr_client_options_new(&o);
  kr_mux_callbacks_new(&cbs);
  kr_client_options_set_url(o, api_url);
  kr_client_options_set_token(o, tok, strlen(tok));
  kr_mux_callbacks_set_on_writable(cbs, fw_writable);
  kr_mux_callbacks_set_on_data(cbs, fw_data);
  char err[256];
  fw_stream = NULL;
  fw_freed = 0;
  ck_assert_int_eq(kr_client_new(&fw_client, env.base, o, cbs, fw_state, NULL,
                                 err, sizeof(err)),
                   0);
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  ck_assert_msg(th_run_until(&env, &fw_freed, 10000), "on_writable never came");
  /* Let the loop run on: nothing may touch the freed client. */
  th_run_cond(&env, never_true, NULL, 300);
  kr_agent_free(a);
  free(tok);
}
END_TEST

int main(void) {
  Suite *s = suite_create("tcp");
  TCase *tc = tcase_create("tunnel");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, echo_4mib);
  tcase_add_test(tc, unknown_service);
  tcase_add_test(tc, agent_not_connected);
  tcase_add_test(tc, waiting_stream_woken_by_registration);
  tcase_add_test(tc, bad_api_token);
  tcase_add_test(tc, bad_agent_token);
  tcase_add_test(tc, failing_agents_throttled_api_unaffected);
  tcase_add_test(tc, client_freed_inside_on_writable);
  tcase_add_test(tc, list_agents);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
