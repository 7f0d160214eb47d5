/* Integration test helpers (see harness.h). */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/jwt.h"
#include "core/mem_internal.h"
#include "core/sha256.h"
#include "harness.h"

void th_setup(th_env *e) {
  memset(e, 0, sizeof(*e));
  const char *tmp = getenv("TMPDIR");
  snprintf(e->dir, sizeof(e->dir), "%s/krtest.XXXXXX", tmp ? tmp : "/tmp");
  if (!mkdtemp(e->dir)) {
    perror("mkdtemp");
    exit(1);
  }
  snprintf(e->secret, sizeof(e->secret), "0123456789abcdef0123456789abcdef");
  snprintf(e->tokens, sizeof(e->tokens), "%s/tokens", e->dir);
  uint8_t h[32];
  char hex[65];
  kr__sha256(TH_AGENT_TOKEN, strlen(TH_AGENT_TOKEN), h);
  kr__hex_encode(h, 32, hex);
  FILE *f = fopen(e->tokens, "w");
  fprintf(f, "# test agents\n%d %s test agent\n", TH_AGENT_ID, hex);
  fclose(f);
  e->base = event_base_new();
}

void th_cleanup(th_env *e) {
  char cmd[700];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cleanup of %s failed\n", e->dir);
  if (e->echo)
    evconnlistener_free(e->echo);
  event_base_free(e->base);
}

int th_make_cert(th_env *e, const char *name, const char *prefix) {
  if (system("command -v openssl >/dev/null 2>&1") != 0)
    return -1;
  snprintf(e->cert, sizeof(e->cert), "%s/%scert.pem", e->dir, prefix);
  snprintf(e->key, sizeof(e->key), "%s/%skey.pem", e->dir, prefix);
  char cmd[2048];
  snprintf(cmd, sizeof(cmd),
           "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
           "-nodes -subj /CN=%s -days 1 -keyout '%s' -out '%s' 2>/dev/null",
           name, e->key, e->cert);
  return system(cmd) == 0 ? 0 : -1;
}

char *th_api_token(th_env *e) {
  char *jwt = NULL;
  if (kr__jwt_mint(kr_mem_default(), (const uint8_t *)e->secret,
                   strlen(e->secret), "test", "gitlab-kas", "tester",
                   (int64_t)time(NULL), 300, &jwt) < 0)
    return NULL;
  char *copy = strdup(jwt);
  kr__free(kr_mem_default(), jwt);
  return copy;
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg) {
  *(int *)arg = 1;
}

int th_run_until(th_env *e, volatile int *flag, int timeout_ms) {
  int expired = 0;
  struct event *t = evtimer_new(e->base, timeout_cb, &expired);
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  evtimer_add(t, &tv);
  while (!*flag && !expired)
    event_base_loop(e->base, EVLOOP_ONCE);
  event_free(t);
  return *flag;
}

/* ---------------------------------------------------------- echo server */

static void echo_read(struct bufferevent *bev, void *arg) {
  evbuffer_add_buffer(bufferevent_get_output(bev), bufferevent_get_input(bev));
}

static void echo_flushed(struct bufferevent *bev, void *arg) {
  bufferevent_free(bev);
}

static void echo_event(struct bufferevent *bev, short what, void *arg) {
  if (what & BEV_EVENT_EOF) {
    /* Half-close after the echo drained: shut our side, then free. */
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
      bufferevent_free(bev);
    } else {
      bufferevent_setcb(bev, NULL, echo_flushed, NULL, NULL);
    }
    return;
  }
  if (what & BEV_EVENT_ERROR)
    bufferevent_free(bev);
}

static void echo_accept(struct evconnlistener *l, evutil_socket_t fd,
                        struct sockaddr *sa, int len, void *arg) {
  struct bufferevent *bev =
      bufferevent_socket_new(arg, fd, BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(bev, echo_read, NULL, echo_event, NULL);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
}

int th_echo_server(th_env *e) {
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  struct evconnlistener *l = evconnlistener_new_bind(
      e->base, echo_accept, e->base, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
      -1, (struct sockaddr *)&sin, sizeof(sin));
  socklen_t sl = sizeof(sin);
  getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &sl);
  e->echo = l;
  return ntohs(sin.sin_port);
}

int th_run_cond(th_env *e, int (*cond)(void *), void *arg, int timeout_ms) {
  int expired = 0, v;
  struct event *t = evtimer_new(e->base, timeout_cb, &expired);
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  evtimer_add(t, &tv);
  while (!(v = cond(arg)) && !expired)
    event_base_loop(e->base, EVLOOP_ONCE);
  event_free(t);
  return v;
}

kr_kas *th_kas(th_env *e, const char *agent_url, const char *api_url,
               int route_ms) {
  kr_kas_options *o;
  kr_kas *k = NULL;
  char err[512];
  kr_kas_options_new(&o);
  kr_kas_options_add_agent_listen(o, agent_url);
  kr_kas_options_add_api_listen(o, api_url);
  kr_kas_options_set_agent_tokens_file(o, e->tokens);
  kr_kas_options_set_api_secret(o, (const uint8_t *)e->secret,
                                strlen(e->secret));
  kr_kas_options_set_route_timeout(o, (kr_time_us)route_ms * 1000);
  kr_kas_options_set_handshake_timeout(o, 2000000);
  if (e->cert[0])
    kr_kas_options_set_tls(o, e->cert, e->key);
  int rc = kr_kas_new(&k, e->base, o, err, sizeof(err));
  kr_kas_options_free(o);
  if (rc < 0) {
    fprintf(stderr, "kr_kas_new: %s\n", err);
    abort();
  }
  return k;
}

kr_agent *th_agent(th_env *e, const char *kas_url, const char *token,
                   int echo_port, const char *ca_file, int verify) {
  kr_agent_options *o;
  kr_agent *a = NULL;
  char err[512], svc[64];
  kr_agent_options_new(&o);
  kr_agent_options_set_kas_url(o, kas_url);
  if (!token)
    token = TH_AGENT_TOKEN;
  kr_agent_options_set_token(o, token, strlen(token));
  kr_agent_options_set_name(o, "replica-1");
  snprintf(svc, sizeof(svc), "tcp://127.0.0.1:%d", echo_port);
  kr_agent_options_add_service(o, "echo", svc);
  if (ca_file)
    kr_agent_options_set_tls_ca_file(o, ca_file);
  kr_agent_options_set_tls_verify(o, verify);
  kr_agent_options_set_backoff(o, 50000, 200000);
  int rc = kr_agent_new(&a, e->base, o, err, sizeof(err));
  kr_agent_options_free(o);
  if (rc < 0) {
    fprintf(stderr, "kr_agent_new: %s\n", err);
    abort();
  }
  return a;
}
