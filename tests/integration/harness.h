/* Helpers for integration tests: a kas, agents and clients in one process
 * on one event loop, over real loopback sockets. */
#ifndef KR_TEST_HARNESS_H
#define KR_TEST_HARNESS_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#include <kasroute/agent.h>
#include <kasroute/client.h>
#include <kasroute/kas.h>

/* A fresh directory under $TMPDIR; removed by th_cleanup(). */
typedef struct th_env {
  char dir[512];
  char tokens[600];   /* token file: agent 7 <- "agent-7-token" */
  char secret[32 + 1]; /* API secret (32 bytes, printable) */
  char cert[600], key[600]; /* self-signed CN=localhost, when made */
  struct event_base *base;
  struct evconnlistener *echo;
} th_env;

void th_setup(th_env *e);
void th_cleanup(th_env *e);

/* Writes cert.pem / key.pem (CN=name) with the openssl command line.
 * Returns 0, or -1 when openssl is not available. */
int th_make_cert(th_env *e, const char *name, const char *prefix);

/* A short-lived API JWT for e->secret (caller frees with free()). */
char *th_api_token(th_env *e);

/* Runs the loop until *flag != 0 or timeout_ms passes; returns *flag. */
int th_run_until(th_env *e, volatile int *flag, int timeout_ms);

/* Runs the loop until cond(arg) returns non-zero or timeout_ms passes;
 * returns the last cond value. cond is checked after every loop pass. */
int th_run_cond(th_env *e, int (*cond)(void *), void *arg, int timeout_ms);

/* Starts a kas with the given agent and API listener URLs (port 0), TLS
 * files if cert is set, route timeout ms. Aborts the test on failure. */
kr_kas *th_kas(th_env *e, const char *agent_url, const char *api_url,
               int route_ms);

/* Starts an agent for TH_AGENT_ID with token (NULL: the right one),
 * serving "echo" at 127.0.0.1:echo_port. */
kr_agent *th_agent(th_env *e, const char *kas_url, const char *token,
                   int echo_port, const char *ca_file, int verify);

/* Echo upstream on 127.0.0.1 inside the loop; returns its port. */
int th_echo_server(th_env *e);

#define TH_AGENT_ID 7
#define TH_AGENT_TOKEN "agent-7-token"

#endif
