/* minimal_agent: serves "hello from NAME" as the HTTP service "hello". */
#include <event2/event.h>
#include <kasroute/kasroute.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kr_agent *agent;

static void on_request(kr_http_exchange *x, void *greeting) {
  kr_http_respond_body(x, 200, "text/plain", greeting, strlen(greeting));
}

static void on_drained(kr_agent *a, void *base) {
  event_base_loopbreak(base); /* every stream has ended */
}

static void on_sigterm(evutil_socket_t sig, short what, void *base) {
  kr_agent_drain(agent, 5000000, on_drained, base); /* 5 s grace */
}

int main(int argc, char **argv) {
  const char *token = getenv("KASROUTE_AGENT_TOKEN");
  const char *name = argc > 2 ? argv[2] : "minimal";
  if (argc < 2 || argc > 3 || !token) {
    fprintf(stderr, "usage: KASROUTE_AGENT_TOKEN=T %s URL [NAME]\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a ws:// peer may reset the socket */
  char greeting[160], err[256] = "";
  snprintf(greeting, sizeof greeting, "hello from %s\n", name);
  struct event_base *base = event_base_new();
  kr_agent_options *o = NULL;
  kr_http_handler *h = NULL;
  int e = base ? kr_http_handler_new(&h) : KR_ENOMEM; /* first error wins */
  if (!e)
    kr_http_handler_set_on_request(h, on_request);
  e = e ? e : kr_agent_options_new(&o);
  e = e ? e : kr_agent_options_set_kas_url(o, argv[1]);
  e = e ? e : kr_agent_options_set_token(o, token, strlen(token));
  e = e ? e : kr_agent_options_set_name(o, name);
  e = e ? e : kr_agent_options_add_http_handler(o, "hello", h, greeting);
  e = e ? e : kr_agent_new(&agent, base, o, err, sizeof err);
  kr_http_handler_free(h); /* both were copied */
  kr_agent_options_free(o);
  if (e) {
    fprintf(stderr, "minimal_agent: %s\n", err[0] ? err : kr_strerror(e));
    event_base_free(base);
    return 1;
  }
  struct event *term = evsignal_new(base, SIGTERM, on_sigterm, base);
  event_add(term, NULL);
  event_base_dispatch(base); /* returns after on_drained */
  kr_agent_free(agent);
  event_free(term);
  event_base_free(base);
  return 0;
}
