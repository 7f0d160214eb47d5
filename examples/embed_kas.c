/* embed_kas: a kas server inside a program that owns its libevent loop.
 *
 * Usage:
 *   embed_kas (--agent-tokens FILE | --agent-token-dir DIR)
 *             --api-secret-file FILE [--seconds N] [--interval-ms MS]
 *
 *   --agent-tokens     the agent token table (README "Agent tokens"; make a
 *                      line with `kasctl hash-token < token`)
 *   --agent-token-dir  instead of the table, the program verifies agent
 *                      tokens itself with a custom verifier
 *                      (kr_kas_options_set_agent_verifier()): DIR stands
 *                      for the host's own store, one file per agent named
 *                      by its id and holding its token. The verdict is
 *                      given later, from the loop, as a lookup in another
 *                      system would be.
 *   --api-secret-file  the HS256 secret for API JWTs: the file's bytes up to
 *                      a final newline, at least 32 (e.g. `head -c 32
 *                      /dev/urandom | base64 > secret`)
 *   --seconds N        stop by itself after N seconds (default: run until
 *                      SIGINT or SIGTERM)
 *   --interval-ms MS   period of the program's own work (default 500)
 *
 * The program creates one event_base and puts three things on it: the kas
 * (agent and API listeners on 127.0.0.1, ports picked by the system), a
 * periodic timer standing for the host program's own work (here it prints
 * the kas counters), and the signal / deadline handling. Once it is ready it
 * prints "embed_kas ready agent_port=A api_port=P" on stdout.
 *
 * Shutdown is graceful: kr_kas_drain() sends GOAWAY to every connection and
 * calls back once none remains (or the grace ran out); only then is the kas
 * freed with kr_kas_free(), followed by the program's own events and the
 * loop itself. Exit status 0 after a clean stop, 1 on a setup error.
 */
#define _DEFAULT_SOURCE /* explicit_bzero, POSIX 2008 */

#include <kasroute/kasroute.h>

#include <event2/event.h>

#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SECRET 4096
#define DRAIN_GRACE_US (5 * 1000000u) /* open streams get 5 s to finish */

struct app {
  struct event_base *base;
  kr_kas *kas;
  struct event *tick;     /* the program's own periodic work */
  struct event *deadline; /* --seconds */
  struct event *sigint, *sigterm;
  const char *token_dir;   /* --agent-token-dir */
  struct lookup *lookups;  /* verifications in progress */
  int stopping;
};

/* Reads the secret file: its bytes without a final "\n" or "\r\n".
 * Returns the length, or -1 with a message printed. */
static long read_secret(const char *path, uint8_t *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  size_t n = fread(buf, 1, cap, f);
  int bad = ferror(f) || (n == cap && fgetc(f) != EOF);
  fclose(f);
  if (bad) {
    fprintf(stderr, "embed_kas: %s: unreadable or too large\n", path);
    return -1;
  }
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  return (long)n;
}

/* ------------------------------------------------ the custom verifier */

#define MAX_TOKEN 4096

/* One verification in progress: the token is copied (the library's bytes
 * are valid only during the callback) and wiped when done. Lookups are
 * listed on the app, so that those still waiting when the program stops
 * are completed and wiped too. */
struct lookup {
  struct app *app;
  struct event *ev; /* the lookup, one loop iteration later */
  kr_kas_auth *req;
  size_t len;
  uint8_t token[MAX_TOKEN];
  struct lookup *next;
};

/* Compares without an early exit, so that timing does not reveal how much
 * of a token matched. */
static int same_token(const uint8_t *a, size_t alen, const uint8_t *b,
                      size_t blen) {
  unsigned diff = alen != blen;
  for (size_t i = 0; i < alen && i < blen; i++)
    diff |= a[i] ^ b[i];
  return diff == 0;
}

/* The agent id whose file in dir holds token, or 0. */
static int64_t find_agent(const char *dir, const uint8_t *token, size_t len) {
  DIR *d = opendir(dir);
  if (!d)
    return 0;
  int64_t found = 0;
  struct dirent *e;
  static uint8_t buf[MAX_TOKEN + 2];
  while ((e = readdir(d)) != NULL) {
    char *end;
    long long id = strtoll(e->d_name, &end, 10);
    if (id <= 0 || *end)
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    long n = read_secret(path, buf, sizeof buf);
    if (n > 0 && same_token(buf, (size_t)n, token, len))
      found = id; /* keep going: every lookup costs the same */
  }
  explicit_bzero(buf, sizeof buf);
  closedir(d);
  return found;
}

/* Completes l's request with a denial (or the verdict, when id > 0),
 * then wipes and frees l. */
static void lookup_end(struct lookup *l, int64_t id) {
  struct lookup **p = &l->app->lookups;
  while (*p != l)
    p = &(*p)->next;
  *p = l->next;
  /* A request whose connection went away still needs completing (that
   * frees it); the answer just reaches nobody. */
  if (id > 0 && kr_kas_auth_set_agent_id(l->req, id) == 0)
    kr_kas_auth_allow(l->req);
  else
    kr_kas_auth_deny(l->req, "unknown agent token");
  explicit_bzero(l->token, sizeof l->token);
  event_free(l->ev);
  free(l);
}

/* The verdict, one loop iteration after the question. */
static void on_lookup_done(evutil_socket_t fd, short what, void *arg) {
  struct lookup *l = arg;
  (void)fd;
  (void)what;
  lookup_end(l, kr_kas_auth_cancelled(l->req)
                    ? 0
                    : find_agent(l->app->token_dir, l->token, l->len));
}

/* kr_kas_verify_cb: the library asks; the answer comes later. */
static void verify_agent(kr_kas_auth *req, const uint8_t *token, size_t len,
                         void *user_data) {
  struct app *a = user_data;
  struct lookup *l = len <= MAX_TOKEN ? calloc(1, sizeof *l) : NULL;
  if (l)
    l->ev = evtimer_new(a->base, on_lookup_done, l);
  if (!l || !l->ev) {
    free(l);
    kr_kas_auth_deny(req, len > MAX_TOKEN ? "token too long" : "busy");
    return;
  }
  l->app = a;
  l->req = req;
  l->len = len;
  memcpy(l->token, token, len);
  l->next = a->lookups;
  a->lookups = l;
  struct timeval now = {0, 0};
  evtimer_add(l->ev, &now);
}

/* ------------------------------------------------------ the host's work */

/* The host's own work. It runs on the same thread as the kas, so reading
 * kas counters needs no locking (nothing in the library is thread-safe). */
static void on_tick(evutil_socket_t fd, short what, void *arg) {
  struct app *a = arg;
  (void)fd;
  (void)what;
  printf("stats agents=%zu agent_connections=%" PRIu64
         " api_connections=%" PRIu64 " streams_routed=%" PRIu64
         " streams_active=%" PRIu64 " auth_failures=%" PRIu64 "\n",
         kr_kas_agent_count(a->kas),
         kr_kas_stat_get(a->kas, KR_KAS_STAT_AGENT_CONNECTIONS),
         kr_kas_stat_get(a->kas, KR_KAS_STAT_API_CONNECTIONS),
         kr_kas_stat_get(a->kas, KR_KAS_STAT_STREAMS_ROUTED),
         kr_kas_stat_get(a->kas, KR_KAS_STAT_STREAMS_ACTIVE),
         kr_kas_stat_get(a->kas, KR_KAS_STAT_AUTH_FAILURES));
  fflush(stdout);
}

/* Called from the loop once the kas has no connection left. Freeing the kas
 * here is allowed: the drain callback is its last call into the program. */
static void on_drained(kr_kas *k, void *user_data) {
  struct app *a = user_data;
  (void)k;
  printf("embed_kas drained\n");
  fflush(stdout);
  event_base_loopbreak(a->base);
}

static void begin_stop(struct app *a, const char *why) {
  if (a->stopping)
    return;
  a->stopping = 1;
  printf("embed_kas stopping (%s)\n", why);
  fflush(stdout);
  event_del(a->tick);
  kr_kas_drain(a->kas, DRAIN_GRACE_US, on_drained, a);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)what;
  begin_stop(arg, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  begin_stop(arg, "--seconds elapsed");
}

int main(int argc, char **argv) {
  const char *tokens = NULL, *token_dir = NULL, *secret_file = NULL;
  long seconds = 0, interval_ms = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--agent-tokens"))
      tokens = argv[i + 1];
    else if (!strcmp(argv[i], "--agent-token-dir"))
      token_dir = argv[i + 1];
    else if (!strcmp(argv[i], "--api-secret-file"))
      secret_file = argv[i + 1];
    else if (!strcmp(argv[i], "--seconds"))
      seconds = strtol(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--interval-ms"))
      interval_ms = strtol(argv[i + 1], NULL, 10);
  }
  if (!tokens == !token_dir || !secret_file || seconds < 0 ||
      interval_ms <= 0 || argc % 2 == 0) {
    fprintf(stderr, "usage: embed_kas (--agent-tokens FILE | --agent-token-dir "
                    "DIR) --api-secret-file FILE [--seconds N] "
                    "[--interval-ms MS]\n");
    return 1;
  }
  static uint8_t secret[MAX_SECRET];
  long slen = read_secret(secret_file, secret, sizeof secret);
  if (slen < 0)
    return 1;

  struct app a = {0};
  a.token_dir = token_dir;
  kr_kas_options *o = NULL;
  char err[256] = "";
  int rc = 1;
  a.base = event_base_new();
  if (!a.base || kr_kas_options_new(&o) != 0)
    goto out;
  /* Options are copied by kr_kas_new(), so o can be freed right after. */
  int e = kr_kas_options_add_agent_listen(o, "tcp://127.0.0.1:0");
  if (!e)
    e = kr_kas_options_add_api_listen(o, "tcp://127.0.0.1:0");
  if (!e && tokens)
    e = kr_kas_options_set_agent_tokens_file(o, tokens);
  if (!e && token_dir) /* a.base is set: the verifier schedules on it */
    e = kr_kas_options_set_agent_verifier(o, verify_agent, &a);
  if (!e)
    e = kr_kas_options_set_api_secret(o, secret, (size_t)slen);
  if (!e)
    e = kr_kas_options_set_name(o, "embedded");
  if (!e)
    e = kr_kas_new(&a.kas, a.base, o, err, sizeof err);
  explicit_bzero(secret, sizeof secret); /* the kas holds its own copy */
  kr_kas_options_free(o);
  if (e) {
    fprintf(stderr, "embed_kas: %s: %s\n", kr_err_name(e),
            err[0] ? err : kr_strerror(e));
    goto out;
  }

  /* The program's own events, on the same base as the kas. */
  struct timeval iv = {interval_ms / 1000, (interval_ms % 1000) * 1000};
  a.tick = event_new(a.base, -1, EV_PERSIST, on_tick, &a);
  a.sigint = evsignal_new(a.base, SIGINT, on_signal, &a);
  a.sigterm = evsignal_new(a.base, SIGTERM, on_signal, &a);
  if (!a.tick || !a.sigint || !a.sigterm)
    goto out;
  event_add(a.tick, &iv);
  event_add(a.sigint, NULL);
  event_add(a.sigterm, NULL);
  if (seconds > 0) {
    struct timeval dl = {seconds, 0};
    a.deadline = evtimer_new(a.base, on_deadline, &a);
    if (!a.deadline)
      goto out;
    evtimer_add(a.deadline, &dl);
  }

  printf("embed_kas ready agent_port=%d api_port=%d\n",
         kr_kas_agent_port(a.kas, 0), kr_kas_api_port(a.kas, 0));
  fflush(stdout);
  event_base_dispatch(a.base); /* returns after on_drained */
  on_tick(-1, 0, &a);          /* final counters */
  rc = a.stopping ? 0 : 1;

out:
  /* Teardown order: the kas first (no callbacks after kr_kas_free()), then
   * the program's events, then the loop they all lived on. */
  kr_kas_free(a.kas);
  while (a.lookups) /* verifications still waiting: completed and wiped */
    lookup_end(a.lookups, 0);
  if (a.tick)
    event_free(a.tick);
  if (a.deadline)
    event_free(a.deadline);
  if (a.sigint)
    event_free(a.sigint);
  if (a.sigterm)
    event_free(a.sigterm);
  if (a.base)
    event_base_free(a.base);
  if (rc == 0)
    printf("embed_kas stopped\n");
  return rc;
}
