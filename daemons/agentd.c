/* agentd — the agent daemon: dials kas, serves the configured services.
 * SIGTERM/SIGINT drain. */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/agent.h>
#include <kasroute/error.h>
#include <kasroute/log.h>
#include <kasroute/version.h>

#include "common.h"

static const char usage[] =
    "Usage: agentd --kas URL --token-file FILE --service NAME=URL... "
    "[OPTIONS]\n"
    "\n"
    "The agent: keeps tunnels open to kas and serves its services.\n"
    "\n"
    "  --kas URL                 kas agent listener: tcp://HOST:PORT,\n"
    "                            tls://HOST:PORT, ws://HOST:PORT/PATH or\n"
    "                            wss://HOST:PORT/PATH; repeatable (up to 8):\n"
    "                            connections spread over the URLs and move\n"
    "                            to the next one on reconnect\n"
    "  --token-file FILE         the agent token\n"
    "  --service NAME=URL        a service (repeatable); URL tcp://HOST:PORT,\n"
    "                            http://HOST:PORT[/BASE] or https://...\n"
    "  --service-ca NAME=FILE    CA bundle for the https service NAME\n"
    "                            (default: system store)\n"
    "  --service-insecure NAME   do not verify the certificate of the https\n"
    "                            service NAME (tests only)\n"
    "  --kubernetes              serve \"kubernetes\": the Kubernetes API "
    "with\n"
    "                            the in-cluster service account, acting for\n"
    "                            the caller (impersonation)\n"
    "  --kubernetes-url URL      its API server (http:// or https://) instead\n"
    "                            of the in-cluster one\n"
    "  --kubernetes-token-file F its bearer token (re-read when it changes)\n"
    "  --kubernetes-ca-file F    its CA bundle\n"
    "                            (any --kubernetes-* implies --kubernetes)\n"
    "  --connections N           tunnel connections to keep (2)\n"
    "  --name NAME               replica name (default: host name)\n"
    "  --ca-file FILE            CA bundle for tls:// (default: system store)\n"
    "  --insecure-skip-verify    do not verify the kas certificate (tests "
    "only)\n"
    "  --keepalive SECONDS       idle time before a PING (15); kas silent for\n"
    "                            3x this is considered gone\n"
    "  --drain-grace SECONDS     on SIGTERM, time open streams get (30)\n"
    "  --log-level LEVEL         error, warn, info (default) or debug\n"
    "  --config FILE             JSON object with the same keys, e.g.\n"
    "                            {\"service\": [\"db=tcp://127.0.0.1:5432\"],\n"
    "                             \"kubernetes\": true}\n"
    "  --help                    this text\n"
    "  --version                 print the version\n";

enum {
  OPT_KAS = 256,
  OPT_TOKEN,
  OPT_SERVICE,
  OPT_SERVICE_CA,
  OPT_SERVICE_INSECURE,
  OPT_KUBE,
  OPT_KUBE_URL,
  OPT_KUBE_TOKEN,
  OPT_KUBE_CA,
  OPT_CONNECTIONS,
  OPT_NAME,
  OPT_CA,
  OPT_INSECURE,
  OPT_KEEPALIVE,
  OPT_GRACE,
  OPT_LOG_LEVEL,
  OPT_CONFIG,
  OPT_HELP,
  OPT_VERSION
};

static const struct option opts[] = {
    {"kas", required_argument, NULL, OPT_KAS},
    {"token-file", required_argument, NULL, OPT_TOKEN},
    {"service", required_argument, NULL, OPT_SERVICE},
    {"service-ca", required_argument, NULL, OPT_SERVICE_CA},
    {"service-insecure", required_argument, NULL, OPT_SERVICE_INSECURE},
    {"kubernetes", no_argument, NULL, OPT_KUBE},
    {"kubernetes-url", required_argument, NULL, OPT_KUBE_URL},
    {"kubernetes-token-file", required_argument, NULL, OPT_KUBE_TOKEN},
    {"kubernetes-ca-file", required_argument, NULL, OPT_KUBE_CA},
    {"connections", required_argument, NULL, OPT_CONNECTIONS},
    {"name", required_argument, NULL, OPT_NAME},
    {"ca-file", required_argument, NULL, OPT_CA},
    {"insecure-skip-verify", no_argument, NULL, OPT_INSECURE},
    {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
    {"drain-grace", required_argument, NULL, OPT_GRACE},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"config", required_argument, NULL, OPT_CONFIG},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0}};

typedef struct agentd {
  struct event_base *base;
  kr_agent *agent;
  int64_t grace;
  int stopping;
} agentd;

static int die(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "agentd: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n");
  return 2;
}

/* --service-ca / --service-insecure name services that may come later on
 * the command line or in the config file: they apply after all of them. */
#define MAX_SERVICE_TLS 256
typedef struct service_tls {
  const char *name; /* points into the argument vector */
  const char *ca;   /* NULL: --service-insecure */
} service_tls;

static int apply_service_tls(kr_agent_options *o, const service_tls *st,
                             int n) {
  for (int i = 0; i < n; i++) {
    int rc = st[i].ca
                 ? kr_agent_options_set_service_ca_file(o, st[i].name, st[i].ca)
                 : kr_agent_options_set_service_verify(o, st[i].name, 0);
    if (rc == KR_ENOENT)
      return die("%s names no service \"%s\"",
                 st[i].ca ? "--service-ca" : "--service-insecure", st[i].name);
    if (rc < 0)
      return die("%s %s: the service is not an http, https or kubernetes "
                 "one, or the file name is invalid",
                 st[i].ca ? "--service-ca" : "--service-insecure", st[i].name);
  }
  return 0;
}

static void drained(kr_agent *a, void *ud) {
  agentd *d = ud;
  event_base_loopbreak(d->base);
}

static void on_term(evutil_socket_t sig, short what, void *arg) {
  agentd *d = arg;
  if (d->stopping) {
    event_base_loopbreak(d->base);
    return;
  }
  d->stopping = 1;
  fprintf(stderr, "level=info event=signal signal=%s action=drain\n",
          sig == SIGINT ? "INT" : "TERM");
  kr_agent_drain(d->agent, (kr_time_us)d->grace, drained, d);
}

int main(int argc, char **argv) {
  char err[512];
  int ac;
  char **av;
  if (cli_load_config(cli_config_path(argc, argv), opts, argc, argv, &ac,
                         &av, err, sizeof(err)) < 0)
    return die("%s%s", err, "");
  kr_agent_options *o;
  if (kr_agent_options_new(&o) < 0)
    return die("out of memory%s%s", "", "");
  const char *token_file = NULL;
  const char *kube_url = NULL, *kube_token = NULL, *kube_ca = NULL;
  int kube = 0;
  static service_tls stls[MAX_SERVICE_TLS];
  int n_stls = 0;
  int have_kas = 0, services = 0, rc = 0, c;
  int64_t grace = 30000000, v;
  char *eq;
  while ((c = getopt_long(ac, av, "", opts, NULL)) != -1 && rc == 0) {
    switch (c) {
    case OPT_KAS:
      if (kr_agent_options_add_kas_url(o, optarg) < 0)
        rc = die("invalid --kas URL \"%s\" (use tcp://, tls://, ws:// "
                 "or wss://HOST:PORT; at most 8)%s",
                 optarg, "");
      have_kas = 1;
      break;
    case OPT_TOKEN:
      token_file = optarg;
      break;
    case OPT_SERVICE:
      eq = strchr(optarg, '=');
      if (!eq) {
        rc = die("--service wants NAME=URL, got \"%s\"%s", optarg, "");
        break;
      }
      *eq = 0;
      switch (kr_agent_options_add_service(o, optarg, eq + 1)) {
      case 0:
        services++;
        break;
      case KR_EINVAL:
        rc = die("invalid service name \"%s\" (letters, digits, . _ -)%s",
                 optarg, "");
        break;
      case KR_ESTATE:
        rc = die("service \"%s\" given twice%s", optarg, "");
        break;
      case KR_EADDR:
        rc = die("service %s: invalid URL \"%s\" (use tcp://HOST:PORT, "
                 "http://HOST:PORT[/BASE] or https://...)",
                 optarg, eq + 1);
        break;
      default:
        rc = die("too many services%s%s", "", "");
      }
      break;
    case OPT_SERVICE_CA:
    case OPT_SERVICE_INSECURE:
      eq = c == OPT_SERVICE_CA ? strchr(optarg, '=') : NULL;
      if (c == OPT_SERVICE_CA && !eq) {
        rc = die("--service-ca wants NAME=FILE, got \"%s\"%s", optarg, "");
        break;
      }
      if (n_stls == MAX_SERVICE_TLS) {
        rc = die("too many --service-ca / --service-insecure%s%s", "", "");
        break;
      }
      if (eq)
        *eq = 0;
      stls[n_stls].name = optarg;
      stls[n_stls++].ca = eq ? eq + 1 : NULL;
      break;
    case OPT_KUBE:
      kube = 1;
      break;
    case OPT_KUBE_URL:
      kube = 1;
      kube_url = optarg;
      break;
    case OPT_KUBE_TOKEN:
      kube = 1;
      kube_token = optarg;
      break;
    case OPT_KUBE_CA:
      kube = 1;
      kube_ca = optarg;
      break;
    case OPT_CONNECTIONS:
      v = strtol(optarg, &eq, 10);
      if (*eq || kr_agent_options_set_connections(o, (unsigned)v) < 0)
        rc = die("--connections wants 1..64, got \"%s\"%s", optarg, "");
      break;
    case OPT_NAME:
      if (kr_agent_options_set_name(o, optarg) < 0)
        rc = die("invalid --name \"%s\"%s", optarg, "");
      break;
    case OPT_CA:
      if (kr_agent_options_set_tls_ca_file(o, optarg) < 0)
        rc = die("invalid --ca-file%s%s", "", "");
      break;
    case OPT_INSECURE:
      kr_agent_options_set_tls_verify(o, 0);
      break;
    case OPT_KEEPALIVE:
    case OPT_GRACE:
      if ((v = cli_seconds(optarg)) <= 0) {
        rc = die("invalid duration \"%s\" (seconds expected)%s", optarg, "");
        break;
      }
      if (c == OPT_KEEPALIVE)
        kr_agent_options_set_keepalive(o, (kr_time_us)v, (kr_time_us)v * 3);
      else
        grace = v;
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
      printf("agentd %s\n", KR_VERSION_STRING);
      rc = 1;
      break;
    default:
      fputs(usage, stderr);
      rc = 2;
    }
  }
  if (rc == 0 && optind < ac)
    rc = die("unexpected argument \"%s\"%s", av[optind], "");
  if (rc == 0 && (!have_kas || !token_file))
    rc = die("--kas and --token-file are required (see --help)%s%s", "", "");
  if (rc == 0 && kube) {
    switch (kr_agent_options_add_kubernetes(o, "kubernetes", kube_url,
                                            kube_token, kube_ca)) {
    case 0:
      services++;
      break;
    case KR_ESTATE:
      rc = die("--kubernetes: a service named \"kubernetes\" exists "
               "already%s%s",
               "", "");
      break;
    case KR_EADDR:
      rc = die("invalid --kubernetes-url \"%s\" (use http:// or "
               "https://HOST:PORT)%s",
               kube_url, "");
      break;
    default:
      rc = die("invalid --kubernetes-token-file or --kubernetes-ca-file%s%s",
               "", "");
    }
  }
  if (rc == 0)
    rc = apply_service_tls(o, stls, n_stls);
  if (rc == 0 && services == 0)
    fprintf(stderr, "agentd: warning: no --service given; every stream will "
                    "be refused\n");
  if (rc == 0) {
    char *token = NULL;
    long n = cli_read_secret(token_file, 4096, &token, err, sizeof(err));
    if (n < 0)
      rc = die("%s%s", err, "");
    else
      kr_agent_options_set_token(o, token, (size_t)n);
    cli_free_secret(token, n > 0 ? (size_t)n : 0);
  }
  cli_free_args(ac, av);
  if (rc != 0) {
    kr_agent_options_free(o);
    return rc == 1 ? 0 : rc;
  }

  signal(SIGPIPE, SIG_IGN);
  agentd d = {0};
  d.grace = grace;
  d.base = event_base_new();
  rc = d.base ? kr_agent_new(&d.agent, d.base, o, err, sizeof(err)) : KR_ENOMEM;
  kr_agent_options_free(o);
  if (rc < 0) {
    if (d.base)
      event_base_free(d.base);
    return die("%s (%s)", err[0] ? err : kr_strerror(rc), kr_err_name(rc));
  }
  struct event *term = evsignal_new(d.base, SIGTERM, on_term, &d);
  struct event *intr = evsignal_new(d.base, SIGINT, on_term, &d);
  event_add(term, NULL);
  event_add(intr, NULL);
  event_base_dispatch(d.base);
  kr_agent_free(d.agent);
  event_free(term);
  event_free(intr);
  event_base_free(d.base);
  fprintf(stderr, "level=info event=exit\n");
  return 0;
}
