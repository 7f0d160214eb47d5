/* kasd — the kas server daemon: parses options, builds a kr_kas, runs the
 * loop. SIGTERM/SIGINT drain, SIGHUP reloads the agent tokens. */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>
#include <kasroute/kas.h>
#include <kasroute/log.h>
#include <kasroute/version.h>

#include "common.h"

static const char usage[] =
    "Usage: kasd [OPTIONS]\n"
    "\n"
    "The kas server: agents dial in and keep tunnels open; API clients open\n"
    "streams to an agent's services through it, and HTTP clients reach them\n"
    "through its HTTP gateway.\n"
    "\n"
    "  --agent-listen URL        where agents connect: tcp://HOST:PORT,\n"
    "                            tls://HOST:PORT, ws://HOST:PORT/PATH or\n"
    "                            wss://HOST:PORT/PATH (repeatable)\n"
    "  --api-listen URL          where API clients connect (repeatable)\n"
    "  --http-listen URL         HTTP gateway: http://HOST:PORT or\n"
    "                            https://HOST:PORT (repeatable); serves\n"
    "                            /api/v1/agents/ID/services/NAME/... and\n"
    "                            /k8s-proxy/...\n"
    "  --user-tokens FILE        user tokens for \"Bearer pat:AGENT:TOKEN\" on\n"
    "                            /k8s-proxy/: lines \"SHA256_HEX AGENTS USER\n"
    "                            [GROUPS]\" (re-read on SIGHUP)\n"
    "  --redis URL               Redis for presence across kas instances:\n"
    "                            redis://[:PASSWORD@]HOST:PORT[/DB]; without\n"
    "                            it kas runs alone (in-memory presence)\n"
    "  --redis-sentinel LIST     Redis through Sentinel: HOST:PORT,HOST:PORT\n"
    "  --redis-master NAME       the Sentinel master's name\n"
    "  --redis-password-file FILE  Redis password (not on the command line)\n"
    "  --redis-prefix PREFIX     key prefix (kas:)\n"
    "  --private-listen URL      where other kas instances connect: tcp:// or\n"
    "                            tls://HOST:PORT (repeatable)\n"
    "  --private-url URL         how other instances reach this one (published\n"
    "                            in Redis; also the default --name)\n"
    "  --private-secret-file FILE  secret (>= 32 bytes) shared by the instances\n"
    "                            for their links (separate from the API secret)\n"
    "  --private-ca-file FILE    CA bundle for tls:// peer links\n"
    "  --http-request-timeout SECONDS  time to receive a request head (30)\n"
    "  --http-idle-timeout SECONDS     keep-alive idle time (60)\n"
    "  --agent-tokens FILE       agent token file: lines \"AGENT_ID SHA256_HEX NAME\"\n"
    "                            (re-read on SIGHUP)\n"
    "  --api-secret-file FILE    secret (>= 32 bytes) for API JWTs (HS256,\n"
    "                            audience gitlab-kas)\n"
    "  --tls-cert FILE           certificate chain (PEM) for tls://, wss://\n"
    "                            and https://\n"
    "  --tls-key FILE            its private key (PEM)\n"
    "  --route-timeout SECONDS   how long a stream waits for its agent (20)\n"
    "  --keepalive SECONDS       idle time before a PING (15); a peer silent\n"
    "                            for 3x this is dropped\n"
    "  --handshake-timeout SECONDS  TLS + HELLO time limit (10)\n"
    "  --drain-grace SECONDS     on SIGTERM, time open streams get (30)\n"
    "  --name NAME               instance name in logs (kas)\n"
    "  --log-level LEVEL         error, warn, info (default) or debug\n"
    "  --config FILE             JSON object with the same keys, e.g.\n"
    "                            {\"agent-listen\": [\"tcp://0.0.0.0:8150\"]};\n"
    "                            command-line options are applied after it\n"
    "  --help                    this text\n"
    "  --version                 print the version\n";

enum {
  OPT_AGENT_LISTEN = 256,
  OPT_API_LISTEN,
  OPT_HTTP_LISTEN,
  OPT_USER_TOKENS,
  OPT_HTTP_REQUEST_TIMEOUT,
  OPT_HTTP_IDLE_TIMEOUT,
  OPT_REDIS,
  OPT_REDIS_SENTINEL,
  OPT_REDIS_MASTER,
  OPT_REDIS_PASSWORD,
  OPT_REDIS_PREFIX,
  OPT_PRIVATE_LISTEN,
  OPT_PRIVATE_URL,
  OPT_PRIVATE_SECRET,
  OPT_PRIVATE_CA,
  OPT_TOKENS,
  OPT_SECRET,
  OPT_CERT,
  OPT_KEY,
  OPT_ROUTE_TIMEOUT,
  OPT_KEEPALIVE,
  OPT_HANDSHAKE,
  OPT_GRACE,
  OPT_NAME,
  OPT_LOG_LEVEL,
  OPT_CONFIG,
  OPT_HELP,
  OPT_VERSION
};

static const struct option opts[] = {
    {"agent-listen", required_argument, NULL, OPT_AGENT_LISTEN},
    {"api-listen", required_argument, NULL, OPT_API_LISTEN},
    {"http-listen", required_argument, NULL, OPT_HTTP_LISTEN},
    {"user-tokens", required_argument, NULL, OPT_USER_TOKENS},
    {"http-request-timeout", required_argument, NULL, OPT_HTTP_REQUEST_TIMEOUT},
    {"http-idle-timeout", required_argument, NULL, OPT_HTTP_IDLE_TIMEOUT},
    {"redis", required_argument, NULL, OPT_REDIS},
    {"redis-sentinel", required_argument, NULL, OPT_REDIS_SENTINEL},
    {"redis-master", required_argument, NULL, OPT_REDIS_MASTER},
    {"redis-password-file", required_argument, NULL, OPT_REDIS_PASSWORD},
    {"redis-prefix", required_argument, NULL, OPT_REDIS_PREFIX},
    {"private-listen", required_argument, NULL, OPT_PRIVATE_LISTEN},
    {"private-url", required_argument, NULL, OPT_PRIVATE_URL},
    {"private-secret-file", required_argument, NULL, OPT_PRIVATE_SECRET},
    {"private-ca-file", required_argument, NULL, OPT_PRIVATE_CA},
    {"agent-tokens", required_argument, NULL, OPT_TOKENS},
    {"api-secret-file", required_argument, NULL, OPT_SECRET},
    {"tls-cert", required_argument, NULL, OPT_CERT},
    {"tls-key", required_argument, NULL, OPT_KEY},
    {"route-timeout", required_argument, NULL, OPT_ROUTE_TIMEOUT},
    {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
    {"handshake-timeout", required_argument, NULL, OPT_HANDSHAKE},
    {"drain-grace", required_argument, NULL, OPT_GRACE},
    {"name", required_argument, NULL, OPT_NAME},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0}};

typedef struct kasd {
  struct event_base *base;
  kr_kas *kas;
  int64_t grace;
  int stopping;
} kasd;

static int die(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "kasd: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n");
  return 2;
}

static void drained(kr_kas *k, void *ud) {
  kasd *d = ud;
  event_base_loopbreak(d->base);
}

static void on_term(evutil_socket_t sig, short what, void *arg) {
  kasd *d = arg;
  if (d->stopping) {
    event_base_loopbreak(d->base); /* second signal: stop now */
    return;
  }
  d->stopping = 1;
  fprintf(stderr, "level=info event=signal signal=%s action=drain\n",
          sig == SIGINT ? "INT" : "TERM");
  kr_kas_drain(d->kas, (kr_time_us)d->grace, drained, d);
}

static void on_hup(evutil_socket_t sig, short what, void *arg) {
  kasd *d = arg;
  char err[512];
  if (kr_kas_reload_tokens(d->kas, err, sizeof(err)) < 0)
    fprintf(stderr, "level=error event=tokens_reload_failed reason=\"%s\"\n",
            err);
}

int main(int argc, char **argv) {
  char err[512];
  int ac;
  char **av;
  if (cli_load_config(cli_config_path(argc, argv), opts, argc, argv, &ac,
                         &av, err, sizeof(err)) < 0)
    return die("%s%s", err, "");
  kr_kas_options *o;
  if (kr_kas_options_new(&o) < 0)
    return die("out of memory%s%s", "", "");
  const char *cert = NULL, *key = NULL, *secret_file = NULL;
  const char *sentinels = NULL, *master = NULL, *redis_pw_file = NULL,
             *private_secret_file = NULL;
  int64_t grace = 30000000, keepalive = -1, v;
  int64_t http_head = 30000000, http_idle = 60000000;
  int rc = 0, c;
  while ((c = getopt_long(ac, av, "", opts, NULL)) != -1 && rc == 0) {
    switch (c) {
    case OPT_AGENT_LISTEN:
    case OPT_API_LISTEN:
      if ((c == OPT_AGENT_LISTEN ? kr_kas_options_add_agent_listen(o, optarg)
                                 : kr_kas_options_add_api_listen(o, optarg)) < 0)
        rc = die("invalid listen URL \"%s\" (use tcp://, tls://, ws:// "
                 "or wss://HOST:PORT)%s", optarg, "");
      break;
    case OPT_HTTP_LISTEN:
      if (kr_kas_options_add_http_listen(o, optarg) < 0)
        rc = die("invalid HTTP listen URL \"%s\" (use http:// or "
                 "https://HOST:PORT)%s", optarg, "");
      break;
    case OPT_USER_TOKENS:
      if (kr_kas_options_set_user_tokens_file(o, optarg) < 0)
        rc = die("path too long: %s%s", optarg, "");
      break;
    case OPT_REDIS:
      if (kr_kas_options_set_redis(o, optarg) < 0)
        rc = die("invalid Redis URL (use redis://[:PASSWORD@]HOST:PORT[/DB])"
                 "%s%s", "", "");
      break;
    case OPT_REDIS_SENTINEL:
      sentinels = optarg;
      break;
    case OPT_REDIS_MASTER:
      master = optarg;
      break;
    case OPT_REDIS_PASSWORD:
      redis_pw_file = optarg;
      break;
    case OPT_REDIS_PREFIX:
      if (kr_kas_options_set_redis_prefix(o, optarg) < 0)
        rc = die("invalid Redis key prefix \"%s\"%s", optarg, "");
      break;
    case OPT_PRIVATE_LISTEN:
      if (kr_kas_options_add_private_listen(o, optarg) < 0)
        rc = die("invalid private listen URL \"%s\" (use tcp:// or "
                 "tls://HOST:PORT)%s", optarg, "");
      break;
    case OPT_PRIVATE_URL:
      if (kr_kas_options_set_private_url(o, optarg) < 0)
        rc = die("invalid private URL \"%s\" (use tcp:// or "
                 "tls://HOST:PORT)%s", optarg, "");
      break;
    case OPT_PRIVATE_SECRET:
      private_secret_file = optarg;
      break;
    case OPT_PRIVATE_CA:
      if (kr_kas_options_set_private_ca_file(o, optarg) < 0)
        rc = die("path too long: %s%s", optarg, "");
      break;
    case OPT_TOKENS:
      kr_kas_options_set_agent_tokens_file(o, optarg);
      break;
    case OPT_SECRET:
      secret_file = optarg;
      break;
    case OPT_CERT:
      cert = optarg;
      break;
    case OPT_KEY:
      key = optarg;
      break;
    case OPT_ROUTE_TIMEOUT:
    case OPT_KEEPALIVE:
    case OPT_HANDSHAKE:
    case OPT_GRACE:
    case OPT_HTTP_REQUEST_TIMEOUT:
    case OPT_HTTP_IDLE_TIMEOUT:
      if ((v = cli_seconds(optarg)) <= 0) {
        rc = die("invalid duration \"%s\" (seconds expected)%s", optarg, "");
        break;
      }
      if (c == OPT_ROUTE_TIMEOUT)
        kr_kas_options_set_route_timeout(o, (kr_time_us)v);
      else if (c == OPT_KEEPALIVE)
        keepalive = v;
      else if (c == OPT_HANDSHAKE)
        kr_kas_options_set_handshake_timeout(o, (kr_time_us)v);
      else if (c == OPT_HTTP_REQUEST_TIMEOUT)
        http_head = v;
      else if (c == OPT_HTTP_IDLE_TIMEOUT)
        http_idle = v;
      else
        grace = v;
      break;
    case OPT_NAME:
      if (kr_kas_options_set_name(o, optarg) < 0)
        rc = die("name too long%s%s", "", "");
      break;
    case OPT_LOG_LEVEL:
      if ((v = cli_log_level(optarg)) < 0)
        rc = die("unknown log level \"%s\"%s", optarg, "");
      else
        kr_log_set_level((kr_log_level)v);
      break;
    case OPT_CONFIG:
      break;
    case OPT_HELP:
      fputs(usage, stdout);
      rc = 1;
      break;
    case OPT_VERSION:
      printf("kasd %s\n", KR_VERSION_STRING);
      rc = 1;
      break;
    default:
      fputs(usage, stderr);
      rc = 2;
    }
  }
  if (rc == 0 && optind < ac)
    rc = die("unexpected argument \"%s\"%s", av[optind], "");
  if (rc == 0 && keepalive > 0)
    kr_kas_options_set_keepalive(o, (kr_time_us)keepalive,
                                 (kr_time_us)keepalive * 3);
  if (rc == 0 && kr_kas_options_set_http_timeouts(o, (kr_time_us)http_head,
                                                  (kr_time_us)http_idle) < 0)
    rc = die("HTTP timeouts must be at least 1 second%s%s", "", "");
  if (rc == 0 && (cert || key)) {
    if (!cert || !key || kr_kas_options_set_tls(o, cert, key) < 0)
      rc = die("--tls-cert and --tls-key go together%s%s", "", "");
  }
  if (rc == 0 && secret_file) {
    char *secret = NULL;
    long n = cli_read_secret(secret_file, 4096, &secret, err, sizeof(err));
    if (n < 0)
      rc = die("%s%s", err, "");
    else if (kr_kas_options_set_api_secret(o, (const uint8_t *)secret,
                                           (size_t)n) < 0)
      rc = die("%s: the API secret must be 32 to 256 bytes%s", secret_file, "");
    cli_free_secret(secret, n > 0 ? (size_t)n : 0);
  }
  if (rc == 0 && (sentinels || master)) {
    if (!sentinels || !master ||
        kr_kas_options_set_redis_sentinel(o, sentinels, master) < 0)
      rc = die("--redis-sentinel and --redis-master go together%s%s", "", "");
  }
  if (rc == 0 && redis_pw_file) {
    char *pw = NULL;
    long n = cli_read_secret(redis_pw_file, 500, &pw, err, sizeof(err));
    if (n < 0)
      rc = die("%s%s", err, "");
    else if (kr_kas_options_set_redis_password(o, pw) < 0)
      rc = die("%s: password too long%s", redis_pw_file, "");
    cli_free_secret(pw, n > 0 ? (size_t)n : 0);
  }
  if (rc == 0 && private_secret_file) {
    char *secret = NULL;
    long n = cli_read_secret(private_secret_file, 4096, &secret, err,
                                sizeof(err));
    if (n < 0)
      rc = die("%s%s", err, "");
    else if (kr_kas_options_set_private_secret(o, (const uint8_t *)secret,
                                               (size_t)n) < 0)
      rc = die("%s: the private secret must be 32 to 256 bytes%s",
               private_secret_file, "");
    cli_free_secret(secret, n > 0 ? (size_t)n : 0);
  }
  cli_free_args(ac, av);
  if (rc != 0) {
    kr_kas_options_free(o);
    return rc == 1 ? 0 : rc;
  }

  signal(SIGPIPE, SIG_IGN);
  kasd d = {0};
  d.grace = grace;
  d.base = event_base_new();
  if (!d.base) {
    kr_kas_options_free(o);
    return die("cannot create the event loop%s%s", "", "");
  }
  rc = kr_kas_new(&d.kas, d.base, o, err, sizeof(err));
  kr_kas_options_free(o);
  if (rc < 0) {
    event_base_free(d.base);
    return die("%s (%s)", err[0] ? err : kr_strerror(rc), kr_err_name(rc));
  }
  struct event *term = evsignal_new(d.base, SIGTERM, on_term, &d);
  struct event *intr = evsignal_new(d.base, SIGINT, on_term, &d);
  struct event *hup = evsignal_new(d.base, SIGHUP, on_hup, &d);
  event_add(term, NULL);
  event_add(intr, NULL);
  event_add(hup, NULL);
  /* Machine-readable readiness line for scripts and tests. */
  int agent_port = kr_kas_agent_port(d.kas, 0),
      api_port = kr_kas_api_port(d.kas, 0);
  printf("kasd ready agent_port=%d api_port=%d", agent_port > 0 ? agent_port : 0,
         api_port > 0 ? api_port : 0);
  if (kr_kas_http_port(d.kas, 0) > 0)
    printf(" http_port=%d", kr_kas_http_port(d.kas, 0));
  if (kr_kas_private_port(d.kas, 0) > 0)
    printf(" private_port=%d", kr_kas_private_port(d.kas, 0));
  printf("\n");
  fflush(stdout);
  event_base_dispatch(d.base);
  kr_kas_free(d.kas);
  event_free(term);
  event_free(intr);
  event_free(hup);
  event_base_free(d.base);
  fprintf(stderr, "level=info event=exit\n");
  return 0;
}
