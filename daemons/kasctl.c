/* kasctl — client tool: pipe stdin/stdout to an agent's service, forward a
 * local port, mint API tokens, hash agent tokens, write kubeconfigs for the
 * kas Kubernetes proxy. */
#include <errno.h>
#include <event2/event.h>
#include <event2/http.h>
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

#include <jansson.h>
#include <mbedtls/base64.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/x509_crt.h>

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
    "            accept local connections (tcp://HOST:PORT), turn each\n"
    "            into a stream to the agent's service (kubectl port-forward)\n"
    "  agents    print the agents connected to the kas tier (JSON; every\n"
    "            instance when kas uses Redis); needs --kas\n"
    "  token     print an API JWT minted from --secret-file\n"
    "  hash-token  read a token on stdin, print its SHA-256 hex for the kasd\n"
    "            agent token file or user token file\n"
    "  kubeconfig  print a kubeconfig for kubectl through the kas Kubernetes\n"
    "            proxy (it holds a credential: store it with mode 0600)\n"
    "\n"
    "Options for pipe, forward and agents:\n"
    "  --kas URL               kas API listener (tcp, tls, ws, wss URL)\n"
    "  --token-file FILE       API JWT to present, or\n"
    "  --secret-file FILE      API secret to mint a short-lived JWT from\n"
    "  --agent ID              target agent id\n"
    "  --service NAME          target service\n"
    "  --ca-file FILE          CA bundle for tls://\n"
    "  --insecure-skip-verify  do not verify the kas certificate (tests only)\n"
    "Options for token:\n"
    "  --secret-file FILE      API secret\n"
    "  --ttl SECONDS           lifetime, 1..86400 (300)\n"
    "  --subject NAME          sub claim (kasctl)\n"
    "  --agent ID              restrict the token to this agent (\"agents\"\n"
    "                          claim); repeatable, up to 64\n"
    "  --k8s-agent ID          the Kubernetes proxy's agent (\"agent_id\")\n"
    "  --user NAME             Kubernetes user to impersonate (\"user\")\n"
    "  --group NAME            Kubernetes group (\"groups\"); repeatable, up\n"
    "                          to 32\n"
    "Options for kubeconfig:\n"
    "  --server URL            kas HTTP gateway, https://HOST:PORT[/PREFIX]\n"
    "                          (kubectl sends tokens only over https)\n"
    "  --agent ID              the agent whose Kubernetes API to reach\n"
    "  --ca-file FILE          PEM CA bundle of the gateway, inlined\n"
    "  --secret-file FILE      mint a JWT for --user and --group, with\n"
    "  --ttl SECONDS           its lifetime, 1..86400 (3600), or\n"
    "  --pat-file FILE         a user token listed in kasd --user-tokens\n"
    "  --name NAME             cluster, user and context name (kas-agent-ID)\n"
    "  User and group names: 1..255 bytes of printable ASCII, no space at\n"
    "  either end.\n"
    "Any command:\n"
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
  OPT_K8S_AGENT,
  OPT_USER,
  OPT_GROUP,
  OPT_SERVER,
  OPT_PAT_FILE,
  OPT_NAME,
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
    {"k8s-agent", required_argument, NULL, OPT_K8S_AGENT},
    {"user", required_argument, NULL, OPT_USER},
    {"group", required_argument, NULL, OPT_GROUP},
    {"server", required_argument, NULL, OPT_SERVER},
    {"pat-file", required_argument, NULL, OPT_PAT_FILE},
    {"name", required_argument, NULL, OPT_NAME},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0}};

/* Limits of the identity claims; the gateway refuses more
 * (lib/kas/http_auth.h). */
#define MAX_AGENTS 64
#define MAX_GROUPS 32
#define MAX_NAME 255

typedef struct cli {
  const char *kas, *token_file, *secret_file, *service, *ca_file, *subject;
  int64_t agent; /* the first --agent */
  int64_t agents[MAX_AGENTS];
  size_t n_agents;
  int64_t k8s_agent;
  const char *user;
  const char *groups[MAX_GROUPS];
  size_t n_groups;
  const char *server, *pat_file, *name;
  int insecure;
  int64_t ttl_s;
  int ttl_set;
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

/* Mints an HS256 JWT from --secret-file: iss, aud "gitlab-kas", sub,
 * iat, nbf, exp and, with identity, the claims the HTTP gateway reads
 * (agents, agent_id, user, groups) when their options were given. The
 * claims are built with jansson, so every value is encoded correctly. On
 * success *out is a malloc'ed string (wipe and free with
 * cli_free_secret). Returns 0 or an exit status after a message. */
static int mint_jwt(const cli *c, int identity, int64_t ttl_s, char **out,
                    size_t *len) {
  char err[300];
  char *secret = NULL;
  long n = cli_read_secret(c->secret_file, 4096, &secret, err, sizeof(err));
  if (n < 0)
    return fail(err, NULL);
  json_int_t now = (json_int_t)time(NULL);
  json_t *claims =
      json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "iss", "kasctl", "aud",
                "gitlab-kas", "sub", c->subject ? c->subject : "kasctl", "iat",
                now, "nbf", now, "exp", now + (json_int_t)ttl_s);
  int bad = claims == NULL;
  if (!bad && identity && c->n_agents > 0) {
    json_t *a = json_array();
    bad = a == NULL || json_object_set_new(claims, "agents", a) != 0;
    for (size_t i = 0; !bad && i < c->n_agents; i++)
      bad = json_array_append_new(a, json_integer(c->agents[i])) != 0;
  }
  if (!bad && identity && c->k8s_agent > 0)
    bad = json_object_set_new(claims, "agent_id", json_integer(c->k8s_agent)) !=
          0;
  if (!bad && identity && c->user)
    bad = json_object_set_new(claims, "user", json_string(c->user)) != 0;
  if (!bad && identity && c->n_groups > 0) {
    json_t *g = json_array();
    bad = g == NULL || json_object_set_new(claims, "groups", g) != 0;
    for (size_t i = 0; !bad && i < c->n_groups; i++)
      bad = json_array_append_new(g, json_string(c->groups[i])) != 0;
  }
  char *text = bad ? NULL : json_dumps(claims, JSON_COMPACT);
  json_decref(claims);
  char *jwt = NULL;
  int rc = text ? kr__jwt_sign_hs256(kr_mem_default(), (const uint8_t *)secret,
                                     (size_t)n, text, &jwt)
                : KR_ENOMEM;
  free(text);
  cli_free_secret(secret, (size_t)n);
  if (rc == KR_ETOOBIG)
    return fail("cannot mint a token: the claims make it too long", NULL);
  if (rc == KR_ENOMEM)
    return fail("out of memory", NULL);
  if (rc < 0)
    return fail("cannot mint a token: the secret must be at least 32 bytes",
                NULL);
  *len = strlen(jwt);
  *out = strdup(jwt);
  mbedtls_platform_zeroize(jwt, *len);
  kr__free(kr_mem_default(), jwt);
  return *out ? 0 : fail("out of memory", NULL);
}

/* The JWT to present: from --token-file, or minted from --secret-file. */
static int get_token(cli *c, char **out, size_t *len) {
  char err[300];
  char *buf = NULL;
  long n;
  if (c->token_file) {
    n = cli_read_secret(c->token_file, 8192, &buf, err, sizeof(err));
    if (n < 0)
      return fail(err, NULL);
    *out = buf;
    *len = (size_t)n;
    return 0;
  }
  if (!c->secret_file)
    return fail("--token-file or --secret-file is required", NULL);
  return mint_jwt(c, 0, c->ttl_s, out, len);
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

static void stdin_cb(evutil_socket_t fd, short what, void *arg) {
  pump_stdin(arg);
}

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

static void p_writable(kr_stream *s, void *ud) {
  pump_stdin(ud);
}

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
  int rc =
      kr_client_open(c->client, c->agent, c->service, NULL, 0, 0, NULL, &s);
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
    fprintf(stderr,
            "level=info event=forwarding listen=%s agent=%" PRId64
            " service=%s\n",
            c->listen, c->agent, c->service);
    evconnlistener_enable(c->listener);
    return;
  }
  fprintf(stderr, "kasctl: connection to kas ended: %s (%s): %s\n",
          kr_strerror(err), kr_err_name(err), why);
  c->status = 1;
  event_base_loopexit(c->base, NULL);
}

/* ---------------------------------------------------------------- agents */

static void agents_listed(const char *json, size_t len, int err, void *ud) {
  cli *c = ud;
  if (err < 0) {
    fprintf(stderr, "kasctl: listing agents failed: %s (%s)\n",
            kr_strerror(err), kr_err_name(err));
    c->status = 1;
  } else {
    fwrite(json, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
  }
  kr_client_close(c->client);
  event_base_loopexit(c->base, NULL);
}

static void agents_state(kr_client *k, int err, const char *why, void *ud) {
  cli *c = ud;
  if (err == 0) {
    int rc = kr_client_list_agents(k, agents_listed, c);
    if (rc == 0)
      return;
    err = rc;
    why = "cannot ask for the listing";
  }
  if (err != KR_ECLOSED || c->status == 0) {
    fprintf(stderr, "kasctl: connection to kas failed: %s (%s): %s\n",
            kr_strerror(err), kr_err_name(err), why);
    c->status = 1;
  }
  event_base_loopexit(c->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  cli *c = arg;
  event_base_loopexit(c->base, NULL);
}

/* mode: 0 pipe, 1 forward, 2 agents. */
static int run_client(cli *c, int mode) {
  char err[300];
  int forward = mode == 1;
  if (!c->kas || (mode != 2 && (c->agent <= 0 || !c->service)))
    return fail(mode == 2 ? "--kas is required"
                          : "--kas, --agent and --service are required",
                NULL);
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
  cli_free_secret(token, token_len);
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
        c->base, accept_cb, c,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_DISABLED, -1,
        ai->ai_addr, (int)ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    if (!c->listener)
      return fail("cannot listen on ", c->listen);
  } else if (mode == 0) {
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    c->stdin_ev = event_new(c->base, 0, EV_READ, stdin_cb, c);
  }
  rc = kr_client_new(&c->client, c->base, o, cbs,
                     mode == 1   ? forward_state
                     : mode == 2 ? agents_state
                                 : pipe_state,
                     c, err, sizeof(err));
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

/* A user or group name the gateway accepts (lib/kas/http_auth.c): 1..255
 * bytes of printable ASCII, no space at either end. */
static int name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MAX_NAME || s[0] == ' ' || s[n - 1] == ' ')
    return 0;
  for (size_t i = 0; i < n; i++) {
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
      return 0;
  }
  return 1;
}

static int cmd_token(cli *c) {
  if (!c->secret_file)
    return fail("token needs --secret-file", NULL);
  char *jwt;
  size_t len;
  int rc = mint_jwt(c, 1, c->ttl_s, &jwt, &len);
  if (rc)
    return rc;
  printf("%s\n", jwt);
  cli_free_secret(jwt, len);
  return fflush(stdout) == 0 ? 0 : fail("cannot write the token", NULL);
}

/* ------------------------------------------------------------ kubeconfig */

/* Writes s as a double-quoted scalar. JSON string syntax is valid YAML
 * (YAML 1.2 is a superset of JSON), and jansson does the escaping; the
 * values are validated printable ASCII anyway. Returns 0 or -1. */
static int yaml_str(FILE *f, const char *s) {
  json_t *j = json_string(s);
  char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
  json_decref(j);
  if (q == NULL)
    return -1;
  int rc = fputs(q, f) < 0 ? -1 : 0;
  mbedtls_platform_zeroize(q, strlen(q)); /* may be the token */
  free(q);
  return rc;
}

/* The cluster server: URL without a trailing '/', plus "/k8s-proxy".
 * The URL is checked with libevent's URI parser: http or https, a host,
 * no user info, query or fragment; printable ASCII without spaces. It is
 * never quoted in messages (it might hold a password). */
static int k8s_server(const char *url, char *out, size_t cap, int *https) {
  for (const char *p = url; *p; p++) {
    if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
      return fail("--server has a space or a non-ASCII character", NULL);
  }
  struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
  if (u == NULL)
    return fail("--server is not a URL", NULL);
  const char *scheme = evhttp_uri_get_scheme(u);
  const char *host = evhttp_uri_get_host(u);
  int ok = scheme && host && *host && !evhttp_uri_get_userinfo(u) &&
           !evhttp_uri_get_query(u) && !evhttp_uri_get_fragment(u) &&
           (strcmp(scheme, "https") == 0 || strcmp(scheme, "http") == 0);
  *https = ok && strcmp(scheme, "https") == 0;
  evhttp_uri_free(u);
  if (!ok)
    return fail("--server wants https://HOST:PORT[/PREFIX] (or http://), "
                "without user info, query or fragment",
                NULL);
  size_t n = strlen(url);
  while (n > 0 && url[n - 1] == '/')
    n--;
  if (n + sizeof "/k8s-proxy" > cap)
    return fail("--server is too long", NULL);
  memcpy(out, url, n);
  memcpy(out + n, "/k8s-proxy", sizeof "/k8s-proxy");
  return 0;
}

/* Reads a PEM CA bundle (at most 1 MiB), checks that mbedTLS parses every
 * certificate in it, and returns the base64 of the file's exact bytes in
 * *b64 (malloc'ed). */
static int ca_data(const char *path, char **b64) {
  const size_t max = (size_t)1 << 20;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "kasctl: cannot open %s: %s\n", path, strerror(errno));
    return 2;
  }
  char *pem = malloc(max + 2);
  size_t n = pem ? fread(pem, 1, max + 1, f) : 0;
  int bad = pem == NULL || ferror(f) || n > max;
  fclose(f);
  if (bad) {
    free(pem);
    return fail("--ca-file cannot be read or is larger than 1 MiB: ", path);
  }
  /* mbedTLS wants PEM NUL-terminated, the NUL counted in the length. */
  pem[n] = '\0';
  mbedtls_x509_crt crt;
  mbedtls_x509_crt_init(&crt);
  int pr = -1;
  if (memchr(pem, '\0', n) == NULL &&
      strstr(pem, "-----BEGIN CERTIFICATE-----") != NULL)
    pr = mbedtls_x509_crt_parse(&crt, (const unsigned char *)pem, n + 1);
  mbedtls_x509_crt_free(&crt);
  if (pr != 0) {
    free(pem);
    return fail("--ca-file is not a bundle of PEM certificates: ", path);
  }
  size_t olen = 0;
  mbedtls_base64_encode(NULL, 0, &olen, (const unsigned char *)pem, n);
  *b64 = malloc(olen);
  int rc = *b64 ? mbedtls_base64_encode((unsigned char *)*b64, olen, &olen,
                                        (const unsigned char *)pem, n)
                : -1;
  free(pem);
  if (rc != 0) {
    free(*b64);
    *b64 = NULL;
    return fail("out of memory", NULL);
  }
  return 0;
}

/* The user's token: a fresh JWT (agent_id and agents = the agent, user,
 * groups) or "pat:<agent>:<token from --pat-file>". */
static int k8s_token(cli *c, char **out, size_t *len) {
  char err[300];
  if (c->secret_file) {
    c->k8s_agent = c->agent;
    return mint_jwt(c, 1, c->ttl_set ? c->ttl_s : 3600, out, len);
  }
  char *pat = NULL;
  long n = cli_read_secret(c->pat_file, 4096, &pat, err, sizeof(err));
  if (n < 0)
    return fail(err, NULL);
  for (long i = 0; i < n; i++) {
    if ((unsigned char)pat[i] <= 0x20 || (unsigned char)pat[i] >= 0x7f) {
      cli_free_secret(pat, (size_t)n);
      return fail("the token in --pat-file must be printable ASCII without "
                  "spaces",
                  NULL);
    }
  }
  size_t cap = (size_t)n + 32;
  *out = malloc(cap);
  if (*out == NULL) {
    cli_free_secret(pat, (size_t)n);
    return fail("out of memory", NULL);
  }
  int w = snprintf(*out, cap, "pat:%" PRId64 ":%s", c->agent, pat);
  cli_free_secret(pat, (size_t)n);
  *len = (size_t)w;
  return 0;
}

/* Prints the kubeconfig in one write, after everything succeeded, so a
 * failure never leaves half a file. Exit status 0, 1 (write failed) or 2
 * (bad options). */
static int cmd_kubeconfig(cli *c) {
  if (!c->server || c->n_agents != 1)
    return fail("kubeconfig needs --server and one --agent", NULL);
  if (!c->secret_file == !c->pat_file)
    return fail("kubeconfig needs --secret-file (with --user) or --pat-file",
                NULL);
  if (c->secret_file && !c->user)
    return fail("kubeconfig with --secret-file needs --user", NULL);
  if (c->pat_file && (c->user || c->n_groups > 0 || c->ttl_set))
    return fail("--user, --group and --ttl come from the user token file "
                "with --pat-file",
                NULL);
  if (c->k8s_agent > 0 || c->token_file || c->kas || c->service)
    return fail("kubeconfig takes --agent, not --k8s-agent, --token-file, "
                "--kas or --service",
                NULL);
  char server[4096 + 16];
  int https = 0;
  int rc = k8s_server(c->server, server, sizeof server, &https);
  if (rc)
    return rc;
  if (!https)
    fprintf(stderr, "kasctl: warning: kubectl sends bearer tokens over "
                    "https:// only\n");
  char name[64];
  if (c->name == NULL) {
    snprintf(name, sizeof name, "kas-agent-%" PRId64, c->agent);
  } else {
    size_t n = strlen(c->name);
    if (n == 0 || n >= sizeof name ||
        strspn(c->name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                        "0123456789._@:-") != n)
      return fail("--name wants 1..63 characters of [A-Za-z0-9._@:-]", NULL);
    memcpy(name, c->name, n + 1);
  }
  char *ca = NULL;
  if (c->ca_file && (rc = ca_data(c->ca_file, &ca)) != 0)
    return rc;
  char *token = NULL;
  size_t token_len = 0;
  if ((rc = k8s_token(c, &token, &token_len)) != 0) {
    free(ca);
    return rc;
  }

  char *doc = NULL;
  size_t doc_len = 0;
  FILE *f = open_memstream(&doc, &doc_len);
  int bad = f == NULL;
  if (!bad) {
    bad |= fputs("apiVersion: v1\nkind: Config\nclusters:\n- name: ", f) < 0;
    bad |= yaml_str(f, name);
    bad |= fputs("\n  cluster:\n    server: ", f) < 0;
    bad |= yaml_str(f, server);
    if (ca) {
      bad |= fputs("\n    certificate-authority-data: ", f) < 0;
      bad |= yaml_str(f, ca);
    }
    bad |= fputs("\nusers:\n- name: ", f) < 0;
    bad |= yaml_str(f, name);
    bad |= fputs("\n  user:\n    token: ", f) < 0;
    bad |= yaml_str(f, token);
    bad |= fputs("\ncontexts:\n- name: ", f) < 0;
    bad |= yaml_str(f, name);
    bad |= fputs("\n  context:\n    cluster: ", f) < 0;
    bad |= yaml_str(f, name);
    bad |= fputs("\n    user: ", f) < 0;
    bad |= yaml_str(f, name);
    bad |= fputs("\ncurrent-context: ", f) < 0;
    bad |= yaml_str(f, name);
    bad |= fputs("\npreferences: {}\n", f) < 0;
    bad |= fclose(f) != 0;
  }
  cli_free_secret(token, token_len);
  free(ca);
  rc = 0;
  if (bad)
    rc = fail("out of memory", NULL);
  else if (fwrite(doc, 1, doc_len, stdout) != doc_len || fflush(stdout) != 0)
    rc = 1;
  if (rc == 1)
    fprintf(stderr, "kasctl: cannot write the kubeconfig: %s\n",
            strerror(errno));
  cli_free_secret(doc, doc_len);
  return rc;
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
  if (argc < 2 || strcmp(argv[1], "--help") == 0 ||
      strcmp(argv[1], "-h") == 0) {
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
    case OPT_KAS:
      c.kas = optarg;
      break;
    case OPT_TOKEN:
      c.token_file = optarg;
      break;
    case OPT_SECRET:
      c.secret_file = optarg;
      break;
    case OPT_SERVICE:
      c.service = optarg;
      break;
    case OPT_CA:
      c.ca_file = optarg;
      break;
    case OPT_INSECURE:
      c.insecure = 1;
      break;
    case OPT_SUBJECT:
      c.subject = optarg;
      break;
    case OPT_AGENT:
    case OPT_K8S_AGENT: {
      errno = 0;
      long long id = strtoll(optarg, &end, 10);
      if (*end || end == optarg || errno || id <= 0)
        return fail(ch == OPT_AGENT ? "--agent wants a positive id, got "
                                    : "--k8s-agent wants a positive id, got ",
                    optarg);
      if (ch == OPT_K8S_AGENT) {
        c.k8s_agent = id;
        break;
      }
      if (c.n_agents == MAX_AGENTS)
        return fail("--agent is accepted at most 64 times", NULL);
      c.agents[c.n_agents++] = id;
      c.agent = c.agents[0];
      break;
    }
    case OPT_USER:
      if (!name_ok(optarg))
        return fail("--user wants 1..255 bytes of printable ASCII without "
                    "leading or trailing space",
                    NULL);
      c.user = optarg;
      break;
    case OPT_GROUP:
      if (!name_ok(optarg))
        return fail("--group wants 1..255 bytes of printable ASCII without "
                    "leading or trailing space",
                    NULL);
      if (c.n_groups == MAX_GROUPS)
        return fail("--group is accepted at most 32 times", NULL);
      c.groups[c.n_groups++] = optarg;
      break;
    case OPT_SERVER:
      c.server = optarg;
      break;
    case OPT_PAT_FILE:
      c.pat_file = optarg;
      break;
    case OPT_NAME:
      c.name = optarg;
      break;
    case OPT_TTL:
      c.ttl_s = strtoll(optarg, &end, 10);
      if (*end || c.ttl_s <= 0 || c.ttl_s > 86400)
        return fail("--ttl wants 1..86400 seconds, got ", optarg);
      c.ttl_set = 1;
      break;
    case OPT_LOG_LEVEL: {
      int l = cli_log_level(optarg);
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
  if (optind < argc && strcmp(cmd, "forward") != 0)
    return fail("unexpected argument ", argv[optind]);
  if (c.n_agents > 1 &&
      (strcmp(cmd, "pipe") == 0 || strcmp(cmd, "forward") == 0))
    return fail("pipe and forward take one --agent", NULL);
  if (strcmp(cmd, "pipe") == 0)
    return run_client(&c, 0);
  if (strcmp(cmd, "forward") == 0) {
    if (optind + 1 != argc)
      return fail("forward wants one LISTEN_URL argument", NULL);
    c.listen = argv[optind];
    return run_client(&c, 1);
  }
  if (strcmp(cmd, "agents") == 0)
    return run_client(&c, 2);
  if (strcmp(cmd, "token") == 0)
    return cmd_token(&c);
  if (strcmp(cmd, "hash-token") == 0)
    return cmd_hash_token();
  if (strcmp(cmd, "kubeconfig") == 0)
    return cmd_kubeconfig(&c);
  return fail("unknown command ", cmd);
}
