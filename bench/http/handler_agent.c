/* handler_agent — the agent of the "handler" path of bench/http/run.sh: its
 * one service is an HTTP handler (kasroute/http_handler.h) that answers
 * every request itself, with no upstream behind it, so the benchmark can
 * compare it with kas -> agentd -> upstream nginx on the same response.
 *
 *   handler_agent --kas URL (--body-file FILE | --size N)
 *                 [--token-file FILE] [--service NAME] [--content-type T]
 *                 [--connections N] [--ca-file FILE] [--name NAME]
 *                 [--drain-grace SECONDS]
 *
 * The token comes from --token-file (one trailing newline dropped, as
 * agentd reads it) or else from $KASROUTE_AGENT_TOKEN. Every request to
 * the service (default "hello"), whatever its method and path, gets
 * status 200, "content-type" T (default text/plain) and the body: the
 * content of --body-file (1 byte .. 16 MiB), or N bytes of 'x' ending in
 * a newline (--size 1 .. 16 MiB), sent with kr_http_respond_body(). A
 * request body is dropped. --connections (1..64, default 2 as agentd),
 * --ca-file (tls:// and wss://) and --name as agentd's options.
 *
 * Prints "handler_agent ready bytes=N service=NAME" on stdout once the
 * agent exists (it dials from then on). SIGTERM or SIGINT drains: GOAWAY,
 * open exchanges get --drain-grace seconds (default 1), then exit 0; a
 * second signal stops at once. Exit 1 on a failure to start, 2 on bad
 * arguments. Public API only.
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <kasroute/kasroute.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY (16u << 20)
#define MAX_TOKEN 4096

typedef struct {
  const char *content_type;
  char *body;
  size_t len;
} response;

typedef struct {
  struct event_base *base;
  kr_agent *agent;
  kr_time_us grace;
  int stopping;
} agent_state;

static int usage(const char *why) {
  if (why)
    fprintf(stderr, "handler_agent: %s\n", why);
  fprintf(stderr,
          "usage: handler_agent --kas URL (--body-file FILE | --size N)\n"
          "         [--token-file FILE] [--service NAME] [--content-type T]\n"
          "         [--connections N] [--ca-file FILE] [--name NAME]\n"
          "         [--drain-grace SECONDS]\n"
          "  the token from --token-file, or $KASROUTE_AGENT_TOKEN\n");
  return 2;
}

static void on_request(kr_http_exchange *x, void *data) {
  const response *r = data;
  int rc = kr_http_respond_body(x, 200, r->content_type, r->body, r->len);
  if (rc < 0) /* only KR_ENOMEM or KR_ECLOSED here: fail the request */
    kr_http_abort(x, kr_err_name(rc));
}

static void on_drained(kr_agent *a, void *data) {
  (void)a;
  agent_state *s = data;
  event_base_loopbreak(s->base);
}

static void on_signal(evutil_socket_t sig, short what, void *data) {
  (void)sig;
  (void)what;
  agent_state *s = data;
  if (s->stopping) {
    event_base_loopbreak(s->base);
    return;
  }
  s->stopping = 1;
  kr_agent_drain(s->agent, s->grace, on_drained, s);
}

/* Reads at most max bytes of path into a new buffer (*out, *len). Returns
 * 0, or -1 with a reason in err (nothing allocated). An empty file or one
 * larger than max is an error. */
static int read_file(const char *path, size_t max, char **out, size_t *len,
                     char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  char *buf = malloc(max + 1);
  size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
  int bad = ferror(f);
  fclose(f);
  if (!buf || bad || n == 0 || n > max) {
    snprintf(err, errlen, "%s: %s", path,
             !buf  ? "out of memory"
             : bad ? "read error"
             : n   ? "too large"
                   : "empty");
    free(buf);
    return -1;
  }
  *out = buf;
  *len = n;
  return 0;
}

/* Parses a decimal in [lo, hi]; -1 when s is not one. */
static long parse_range(const char *s, long lo, long hi) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi)
    return -1;
  return v;
}

enum {
  OPT_KAS = 1,
  OPT_TOKEN_FILE,
  OPT_SERVICE,
  OPT_BODY_FILE,
  OPT_SIZE,
  OPT_CONTENT_TYPE,
  OPT_CONNECTIONS,
  OPT_CA_FILE,
  OPT_NAME,
  OPT_GRACE,
};

static const struct option opts[] = {
    {"kas", required_argument, NULL, OPT_KAS},
    {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
    {"service", required_argument, NULL, OPT_SERVICE},
    {"body-file", required_argument, NULL, OPT_BODY_FILE},
    {"size", required_argument, NULL, OPT_SIZE},
    {"content-type", required_argument, NULL, OPT_CONTENT_TYPE},
    {"connections", required_argument, NULL, OPT_CONNECTIONS},
    {"ca-file", required_argument, NULL, OPT_CA_FILE},
    {"name", required_argument, NULL, OPT_NAME},
    {"drain-grace", required_argument, NULL, OPT_GRACE},
    {NULL, 0, NULL, 0},
};

int main(int argc, char **argv) {
  const char *kas = NULL, *token_file = NULL, *service = "hello";
  const char *body_file = NULL, *ca_file = NULL, *name = "bench-handler";
  long size = -1, conns = 2, grace_s = 1;
  response r = {.content_type = "text/plain"};
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case OPT_KAS:
      kas = optarg;
      break;
    case OPT_TOKEN_FILE:
      token_file = optarg;
      break;
    case OPT_SERVICE:
      service = optarg;
      break;
    case OPT_BODY_FILE:
      body_file = optarg;
      break;
    case OPT_SIZE:
      if ((size = parse_range(optarg, 1, MAX_BODY)) < 0)
        return usage("--size wants 1..16777216");
      break;
    case OPT_CONTENT_TYPE:
      r.content_type = optarg;
      break;
    case OPT_CONNECTIONS:
      if ((conns = parse_range(optarg, 1, 64)) < 0)
        return usage("--connections wants 1..64");
      break;
    case OPT_CA_FILE:
      ca_file = optarg;
      break;
    case OPT_NAME:
      name = optarg;
      break;
    case OPT_GRACE:
      if ((grace_s = parse_range(optarg, 0, 3600)) < 0)
        return usage("--drain-grace wants 0..3600 seconds");
      break;
    default:
      return usage(NULL);
    }
  }
  if (optind != argc || !kas || (!body_file) == (size < 0))
    return usage("needs --kas and one of --body-file, --size");

  char err[512] = "";
  char *token = NULL;
  size_t token_len = 0;
  if (token_file) {
    if (read_file(token_file, MAX_TOKEN + 2, &token, &token_len, err,
                  sizeof err) < 0) {
      fprintf(stderr, "handler_agent: %s\n", err);
      return 1;
    }
    if (token[token_len - 1] == '\n')
      token_len--;
    if (token_len > 0 && token[token_len - 1] == '\r')
      token_len--;
  } else {
    const char *t = getenv("KASROUTE_AGENT_TOKEN");
    if (!t || !*t)
      return usage("no --token-file and no $KASROUTE_AGENT_TOKEN");
    token_len = strlen(t);
    token = malloc(token_len + 1);
    if (!token) {
      fprintf(stderr, "handler_agent: out of memory\n");
      return 1;
    }
    memcpy(token, t, token_len);
  }

  if (body_file) {
    if (read_file(body_file, MAX_BODY, &r.body, &r.len, err, sizeof err) < 0) {
      fprintf(stderr, "handler_agent: %s\n", err);
      free(token);
      return 1;
    }
  } else if ((r.body = malloc((size_t)size))) {
    r.len = (size_t)size;
    memset(r.body, 'x', r.len - 1);
    r.body[r.len - 1] = '\n';
  }

  signal(SIGPIPE, SIG_IGN); /* a peer may reset a socket mid-write */
  agent_state s = {.grace = (kr_time_us)grace_s * 1000000};
  s.base = r.body ? event_base_new() : NULL;
  kr_agent_options *o = NULL;
  kr_http_handler *h = NULL;
  int e = s.base ? kr_http_handler_new(&h) : KR_ENOMEM; /* first error wins */
  if (!e)
    kr_http_handler_set_on_request(h, on_request);
  e = e ? e : kr_agent_options_new(&o);
  e = e ? e : kr_agent_options_set_kas_url(o, kas);
  e = e ? e : kr_agent_options_set_token(o, token, token_len);
  e = e ? e : kr_agent_options_set_connections(o, (unsigned)conns);
  e = e ? e : kr_agent_options_set_name(o, name);
  e = e || !ca_file ? e : kr_agent_options_set_tls_ca_file(o, ca_file);
  e = e ? e : kr_agent_options_add_http_handler(o, service, h, &r);
  e = e ? e : kr_agent_new(&s.agent, s.base, o, err, sizeof err);
  kr_http_handler_free(h); /* both were copied */
  kr_agent_options_free(o);
  memset(token, 0, token_len);
  free(token);
  if (e) {
    fprintf(stderr, "handler_agent: %s (%s)\n", err[0] ? err : kr_strerror(e),
            kr_err_name(e));
    if (s.base)
      event_base_free(s.base);
    free(r.body);
    return 1;
  }
  struct event *term = evsignal_new(s.base, SIGTERM, on_signal, &s);
  struct event *intr = evsignal_new(s.base, SIGINT, on_signal, &s);
  if (!term || !intr || event_add(term, NULL) || event_add(intr, NULL)) {
    fprintf(stderr, "handler_agent: cannot watch signals\n");
    e = 1;
  } else {
    printf("handler_agent ready bytes=%zu service=%s\n", r.len, service);
    fflush(stdout);
    event_base_dispatch(s.base); /* returns after on_drained */
  }
  kr_agent_free(s.agent);
  if (term)
    event_free(term);
  if (intr)
    event_free(intr);
  event_base_free(s.base);
  free(r.body);
  return e ? 1 : 0;
}
