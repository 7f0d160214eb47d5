/* kasctl — client tool: pipe stdin/stdout to an agent's service, forward a
 * local port, mint API tokens, hash agent tokens. */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kasroute/client.h>
#include <kasroute/error.h>
#include <kasroute/log.h>
#include <kasroute/version.h>

#include "common.h"
#include "core/jwt.h"
#include "core/mem_internal.h"
#include "core/mux_internal.h"
#include "core/sha256.h"
#include "io/conn.h"
#include "io/sock.h"
#include "io/splice.h"
#include "io/url.h"

static const char usage[] =
    "Usage: kasctl COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  pipe      connect stdin/stdout to an agent's service (like ssh -W)\n"
    "  forward LISTEN_URL\n"
    "            accept local connections (tcp://HOST:PORT) and turn each into\n"
    "            a stream to the agent's service (like kubectl port-forward)\n"
    "  token     print an API JWT minted from --secret-file\n"
    "  hash-token  read an agent token on stdin, print its SHA-256 hex for the\n"
    "            kasd token file\n"
    "\n"
    "Options for pipe and forward:\n"
    "  --kas URL               kas API listener (tcp://, tls://, ws://, wss://)\n"
    "  --token-file FILE       API JWT to present, or\n"
    "  --secret-file FILE      API secret to mint a short-lived JWT from\n"
    "  --agent ID              target agent id\n"
    "  --service NAME          target service\n"
    "  --ca-file FILE          CA bundle for tls://\n"
    "  --insecure-skip-verify  do not verify the kas certificate (tests only)\n"
    "Options for token:\n"
    "  --secret-file FILE      API secret\n"
    "  --ttl SECONDS           lifetime (300)\n"
    "  --subject NAME          sub claim (kasctl)\n"
    "  --log-level LEVEL       error, warn (default), info, debug\n";

enum {
  OPT_KAS = 256,
  OPT_TOKEN,
  OPT_SECRET,
  OPT_AGENT,
  OPT_SERVICE,
  OPT_CA,
  OPT_INSECURE,
  OPT_TTL,
  OPT_SUBJECT,
  OPT_LOG_LEVEL,
  OPT_HELP
};

static const struct option opts[] = {
    {"kas", required_argument, NULL, OPT_KAS},
    {"token-file", required_argument, NULL, OPT_TOKEN},
    {"secret-file", required_argument, NULL, OPT_SECRET},
    {"agent", required_argument, NULL, OPT_AGENT},
    {"service", required_argument, NULL, OPT_SERVICE},
    {"ca-file", required_argument, NULL, OPT_CA},
    {"insecure-skip-verify", no_argument, NULL, OPT_INSECURE},
    {"ttl", required_argument, NULL, OPT_TTL},
    {"subject", required_argument, NULL, OPT_SUBJECT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0}};

typedef struct cli {
  const char *kas, *token_file, *secret_file, *service, *ca_file, *subject;
  int64_t agent;
  int insecure;
  int64_t ttl_s;
  const char *listen;
  struct event_base *base;
  kr_client *client;
  int status; /* exit code */
  /* pipe */
  kr_stream *stream;
  struct event *stdin_ev;
  int stdin_eof;
  uint8_t inbuf[65536];
  size_t in_len, in_off;
  /* forward */
  struct evconnlistener *listener;
} cli;

static int fail(const char *msg, const char *arg) {
  fprintf(stderr, "kasctl: %s%s\n", msg, arg ? arg : "");
  return 2;
}

/* The JWT to present: from --token-file, or minted from --secret-file. */
static int get_token(cli *c, char **out, size_t *len) {
  char err[300];
  char *buf = NULL;
  long n;
  if (c->token_file) {
    n = kr_cli_read_secret(c->token_file, 8192, &buf, err, sizeof(err));
    if (n < 0)
      return fail(err, NULL);
    *out = buf;
    *len = (size_t)n;
    return 0;
  }
  if (!c->secret_file)
    return fail("--token-file or --secret-file is required", NULL);
  n = kr_cli_read_secret(c->secret_file, 4096, &buf, err, sizeof(err));
  if (n < 0)
    return fail(err, NULL);
  char *jwt = NULL;
  int rc = kr__jwt_mint(kr_mem_default(), (const uint8_t *)buf, (size_t)n,
                        "kasctl", "gitlab-kas",
                        c->subject ? c->subject : "kasctl",
                        (int64_t)time(NULL), c->ttl_s, &jwt);
  kr_cli_free_secret(buf, (size_t)n);
  if (rc < 0)
    return fail("cannot mint a token: the secret must be at least 32 bytes",
                NULL);
  *len = strlen(jwt);
  *out = strdup(jwt);
  kr__free(kr_mem_default(), jwt);
  return *out ? 0 : fail("out of memory", NULL);
}

static void report_close(cli *c, uint32_t code, const uint8_t *r, size_t rl) {
  int e = kr_error_from_code(code);
  if (e == 0)
    return;
  fprintf(stderr, "kasctl: agent %" PRId64 " service %s: %s (%s): %.*s\n",
          c->agent, c->service, kr_strerror(e), kr_err_name(e), (int)rl,
          (const char *)r);
  c->status = 1;
}

/* ------------------------------------------------------------------ pipe */

static void pump_stdin(cli *c) {
  while (c->stream) {
    if (c->in_off == c->in_len && !c->stdin_eof) {
      ssize_t n = read(0, c->inbuf, sizeof(c->inbuf));
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        event_add(c->stdin_ev, NULL);
        return;
      }
      if (n <= 0) {
        c->stdin_eof = 1;
      } else {
        c->in_len = (size_t)n;
        c->in_off = 0;
      }
    }
    if (c->in_off < c->in_len) {
      int64_t w = kr_stream_write(c->stream, c->inbuf + c->in_off,
                                  c->in_len - c->in_off);
      if (w <= 0)
        return; /* on_writable resumes */
      c->in_off += (size_t)w;
      if (c->in_off < c->in_len)
        return;
      continue;
    }
    if (c->stdin_eof) {
      kr_stream_close_write(c->stream);
      return;
    }
  }
}

static void stdin_cb(evutil_socket_t fd, short what, void *arg) { pump_stdin(arg); }

static void p_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(1, p + off, n - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      kr_stream_reset(s, KR_CODE_CANCEL, "stdout closed");
      return;
    }
    off += (size_t)w;
  }
  kr_stream_consume(s, n);
}

static void p_writable(kr_stream *s, void *ud) { pump_stdin(ud); }

static void p_close(kr_stream *s, uint32_t code, const uint8_t *r, size_t rl,
                    void *ud) {
  cli *c = ud;
  c->stream = NULL;
  report_close(c, code, r, rl);
  kr_client_close(c->client);
  event_base_loopexit(c->base, NULL);
}

static void pipe_state(kr_client *k, int err, const char *why, void *ud) {
  cli *c = ud;
  if (err == 0) {
    int rc = kr_client_open(k, c->agent, c->service, NULL, 0, 0, c, &c->stream);
    if (rc < 0) {
      fprintf(stderr, "kasctl: cannot open a stream: %s\n", kr_strerror(rc));
      c->status = 1;
      event_base_loopexit(c->base, NULL);
      return;
    }
    pump_stdin(c);
    return;
  }
  if (c->stream || c->status == 0) {
    if (err != KR_ECLOSED || c->stream) {
      fprintf(stderr, "kasctl: connection to kas failed: %s (%s): %s\n",
              kr_strerror(err), kr_err_name(err), why);
      c->status = 1;
    }
  }
  event_base_loopexit(c->base, NULL);
}

/* --------------------------------------------------------------- forward */

static void f_close_cb(kr__splice *sp, int err, const char *why, void *ud) {
  if (err)
    fprintf(stderr, "level=info event=forward_stream_end reason=\"%s\"\n", why);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg) {
  cli *c = arg;
  kr_stream *s;
  int rc = kr_client_open(c->client, c->agent, c->service, NULL, 0, 0, NULL, &s);
  if (rc < 0) {
    fprintf(stderr, "kasctl: cannot open a stream: %s\n", kr_strerror(rc));
    evutil_closesocket(fd);
    return;
  }
  kr__sock *sock;
  static const kr__sock_cbs no_cbs = {NULL, NULL, NULL, NULL, NULL};
  if (kr__sock_new(c->base, fd, &no_cbs, NULL, &sock) < 0 ||
      kr__splice_new(s, sock, 1, 0, f_close_cb, c, NULL) < 0) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
}

static void forward_state(kr_client *k, int err, const char *why, void *ud) {
  cli *c = ud;
  if (err == 0) {
    fprintf(stderr, "level=info event=forwarding listen=%s agent=%" PRId64
                    " service=%s\n", c->listen, c->agent, c->service);
    evconnlistener_enable(c->listener);
    return;
  }
  fprintf(stderr, "kasctl: connection to kas ended: %s (%s): %s\n",
          kr_strerror(err), kr_err_name(err), why);
  c->status = 1;
  event_base_loopexit(c->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  cli *c = arg;
  event_base_loopexit(c->base, NULL);
}

static int run_client(cli *c, int forward) {
  char err[300];
  if (!c->kas || c->agent <= 0 || !c->service)
    return fail("--kas, --agent and --service are required", NULL);
  char *token;
  size_t token_len;
  int rc = get_token(c, &token, &token_len);
  if (rc)
    return rc;
  kr_client_options *o;
  kr_mux_callbacks *cbs;
  if (kr_client_options_new(&o) < 0 || kr_mux_callbacks_new(&cbs) < 0)
    return fail("out of memory", NULL);
  if (kr_client_options_set_url(o, c->kas) < 0)
    return fail("invalid --kas URL: ", c->kas);
  kr_client_options_set_token(o, token, token_len);
  kr_cli_free_secret(token, token_len);
  if (c->ca_file)
    kr_client_options_set_tls_ca_file(o, c->ca_file);
  if (c->insecure)
    kr_client_options_set_tls_verify(o, 0);
  kr_mux_callbacks_set_on_data(cbs, p_data);
  kr_mux_callbacks_set_on_writable(cbs, p_writable);
  kr_mux_callbacks_set_on_close(cbs, p_close);
  c->base = event_base_new();
  if (forward) {
    kr__url u;
    if (kr__url_parse(c->listen, &u, err, sizeof(err)) < 0 ||
        u.scheme != KR__SCHEME_TCP)
      return fail("forward wants LISTEN_URL tcp://HOST:PORT: ", c->listen);
    struct evutil_addrinfo hints = {0}, *ai;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_PASSIVE;
    char port[16];
    snprintf(port, sizeof(port), "%d", u.port);
    if (evutil_getaddrinfo(u.host, port, &hints, &ai) != 0)
      return fail("cannot resolve ", u.host);
    c->listener = evconnlistener_new_bind(
        c->base, accept_cb, c, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                   LEV_OPT_DISABLED, -1, ai->ai_addr,
        (int)ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    if (!c->listener)
      return fail("cannot listen on ", c->listen);
  } else {
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    c->stdin_ev = event_new(c->base, 0, EV_READ, stdin_cb, c);
  }
  rc = kr_client_new(&c->client, c->base, o, cbs,
                     forward ? forward_state : pipe_state, c, err, sizeof(err));
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  if (rc < 0)
    return fail(err[0] ? err : kr_strerror(rc), NULL);
  struct event *term = evsignal_new(c->base, SIGTERM, on_signal, c);
  struct event *intr = evsignal_new(c->base, SIGINT, on_signal, c);
  event_add(term, NULL);
  event_add(intr, NULL);
  event_base_dispatch(c->base);
  kr_client_free(c->client);
  if (c->listener)
    evconnlistener_free(c->listener);
  if (c->stdin_ev)
    event_free(c->stdin_ev);
  event_free(term);
  event_free(intr);
  event_base_free(c->base);
  return c->status;
}

static int cmd_token(cli *c) {
  if (!c->secret_file)
    return fail("token needs --secret-file", NULL);
  char *jwt;
  size_t len;
  int rc = get_token(c, &jwt, &len);
  if (rc)
    return rc;
  printf("%s\n", jwt);
  kr_cli_free_secret(jwt, len);
  return 0;
}

static int cmd_hash_token(void) {
  char buf[4097];
  size_t n = fread(buf, 1, sizeof(buf), stdin);
  if (n == 0 || n > 4096)
    return fail("hash-token reads a token of 1..4096 bytes on stdin", NULL);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  uint8_t h[32];
  char hex[65];
  kr__sha256(buf, n, h);
  kr__hex_encode(h, 32, hex);
  printf("%s\n", hex);
  memset(buf, 0, sizeof(buf));
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("kasctl %s\n", KR_VERSION_STRING);
    return 0;
  }
  signal(SIGPIPE, SIG_IGN);
  kr_log_set_level(KR_LOG_WARN);
  cli c = {0};
  c.ttl_s = 300;
  const char *cmd = argv[1];
  int ch;
  char *end;
  optind = 2;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
    case OPT_KAS: c.kas = optarg; break;
    case OPT_TOKEN: c.token_file = optarg; break;
    case OPT_SECRET: c.secret_file = optarg; break;
    case OPT_SERVICE: c.service = optarg; break;
    case OPT_CA: c.ca_file = optarg; break;
    case OPT_INSECURE: c.insecure = 1; break;
    case OPT_SUBJECT: c.subject = optarg; break;
    case OPT_AGENT:
      c.agent = strtoll(optarg, &end, 10);
      if (*end || c.agent <= 0)
        return fail("--agent wants a positive id, got ", optarg);
      break;
    case OPT_TTL:
      c.ttl_s = strtoll(optarg, &end, 10);
      if (*end || c.ttl_s <= 0 || c.ttl_s > 86400)
        return fail("--ttl wants 1..86400 seconds, got ", optarg);
      break;
    case OPT_LOG_LEVEL: {
      int l = kr_cli_log_level(optarg);
      if (l < 0)
        return fail("unknown log level ", optarg);
      kr_log_set_level((kr_log_level)l);
      break;
    }
    case OPT_HELP:
      fputs(usage, stdout);
      return 0;
    default:
      fputs(usage, stderr);
      return 2;
    }
  }
  if (strcmp(cmd, "pipe") == 0)
    return optind < argc ? fail("unexpected argument ", argv[optind])
                         : run_client(&c, 0);
  if (strcmp(cmd, "forward") == 0) {
    if (optind + 1 != argc)
      return fail("forward wants one LISTEN_URL argument", NULL);
    c.listen = argv[optind];
    return run_client(&c, 1);
  }
  if (strcmp(cmd, "token") == 0)
    return cmd_token(&c);
  if (strcmp(cmd, "hash-token") == 0)
    return cmd_hash_token();
  return fail("unknown command ", cmd);
}
