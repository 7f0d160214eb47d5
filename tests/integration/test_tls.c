/* Tunnels over TLS (mbedTLS), in one process: verification on, wrong CA
 * and wrong host name refused. Skips (77) without the openssl program,
 * which makes the test certificates. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "echo_client.h"
#include "harness.h"

static th_env env;
static kr_kas *kas;
static char agent_url[64], api_url[64], other_cert[600];

static int agent_registered(void *arg) { return kr_kas_agent_count(kas) > 0; }
static int echo_done(void *arg) { return ((th_echo *)arg)->done; }

static void setup(void) {
  th_setup(&env);
  /* A second, unrelated CA first; then the server's own certificate. */
  ck_assert_int_eq(th_make_cert(&env, "localhost", "other-"), 0);
  snprintf(other_cert, sizeof(other_cert), "%s", env.cert);
  ck_assert_int_eq(th_make_cert(&env, "localhost", ""), 0);
  kas = th_kas(&env, "tls://localhost:0", "tls://localhost:0", 300);
  snprintf(agent_url, sizeof(agent_url), "tls://localhost:%d",
           kr_kas_agent_port(kas, 0));
  snprintf(api_url, sizeof(api_url), "tls://localhost:%d",
           kr_kas_api_port(kas, 0));
}

static void teardown(void) {
  kr_kas_free(kas);
  th_cleanup(&env);
}

START_TEST(echo_over_tls) {
  kr_agent *a =
      th_agent(&env, agent_url, NULL, th_echo_server(&env), env.cert, 1);
  ck_assert(th_run_cond(&env, agent_registered, NULL, 10000));
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 4u << 20, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, api_url, env.cert, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 20000));
  ck_assert_msg(ec.code == KR_CODE_NO_ERROR && !ec.state_err, "%s", ec.reason);
  ck_assert_uint_eq(ec.received, ec.total);
  ck_assert(!ec.mismatch);
  kr_client_free(c);
  kr_agent_free(a);
  free(tok);
}
END_TEST

START_TEST(client_wrong_ca_refused) {
  char *tok = th_api_token(&env);
  th_echo ec = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, api_url, other_cert, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 10000));
  ck_assert_msg(ec.state_err == KR_ETLS, "state %d (%s)", ec.state_err,
                ec.reason);
  ck_assert_msg(strstr(ec.reason, "certificate") != NULL, "%s", ec.reason);
  kr_client_free(c);
  free(tok);
}
END_TEST

START_TEST(client_wrong_hostname_refused) {
  char *tok = th_api_token(&env);
  char url[64];
  /* The certificate names localhost; asking for 127.0.0.1 must fail. */
  snprintf(url, sizeof(url), "tls://127.0.0.1:%d", kr_kas_api_port(kas, 0));
  th_echo ec = {.total = 10, .service = "echo", .agent = TH_AGENT_ID};
  kr_client *c = th_echo_start(&env, &ec, url, env.cert, 1, tok);
  ck_assert(th_run_cond(&env, echo_done, &ec, 10000));
  ck_assert_msg(ec.state_err == KR_ETLS, "state %d (%s)", ec.state_err,
                ec.reason);
  kr_client_free(c);
  free(tok);
}
END_TEST

static int agent_dial_failed(void *arg) { return 0; }

START_TEST(agent_wrong_ca_never_registers) {
  kr_agent *a =
      th_agent(&env, agent_url, NULL, th_echo_server(&env), other_cert, 1);
  /* Several dial attempts (backoff 50..200 ms) fail verification. */
  th_run_cond(&env, agent_dial_failed, NULL, 1000);
  ck_assert_uint_eq(kr_kas_agent_count(kas), 0);
  ck_assert_uint_eq(kr_agent_connected(a), 0);
  kr_agent_free(a);
}
END_TEST

int main(void) {
  if (system("command -v openssl >/dev/null 2>&1") != 0) {
    fprintf(stderr, "SKIP: the openssl program is needed to make test "
                    "certificates (apt-get install openssl)\n");
    return 77;
  }
  Suite *s = suite_create("tls");
  TCase *tc = tcase_create("tunnel");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, echo_over_tls);
  tcase_add_test(tc, client_wrong_ca_refused);
  tcase_add_test(tc, client_wrong_hostname_refused);
  tcase_add_test(tc, agent_wrong_ca_never_registers);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
