/* embed_client: reach an agent's services through kas from a libevent
 * program.
 *
 * Usage:
 *   embed_client --kas URL --agent ID [--token JWT] [--echo SERVICE]
 *                [--http SERVICE] [--path PATH] [--message TEXT]
 *
 *   --kas      the kas API listener, e.g. tcp://127.0.0.1:8151
 *   --token    an API JWT (HS256, audience "gitlab-kas", e.g. from
 *              `kasctl token`); default: the KASROUTE_TOKEN environment
 *              variable, so the token need not appear in `ps`
 *   --echo     a service that echoes bytes back (default "echo")
 *   --http     an HTTP service of the agent (default "http")
 *   --path     the HTTP request's path and query (default "/")
 *   --message  what to send through the echo service (default "hello")
 *
 * Three steps run one after the other on one kr_client connection:
 *   1. a stream to (agent, echo): write the message, half-close, read the
 *      echo until the agent half-closes, compare;
 *   2. a stream to (agent, http) carrying a GET request as metadata
 *      (":method", ":path"; docs/PROTOCOL.md 6.3) and no body (fin): the
 *      REPLY's ":status" and the body are printed;
 *   3. kr_client_list_agents(): the JSON listing is printed.
 * Exit status 0 when all three succeeded, 1 otherwise (with a reason on
 * stderr). The whole run is bounded by a 30 s timer.
 */
#define _POSIX_C_SOURCE 200809L

#include <kasroute/kasroute.h>

#include <event2/event.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY (1u << 20) /* bytes of a reply kept; more is an error */

struct step {       /* one stream's state (its stream user data) */
  const char *name; /* "echo" or "http" */
  char *buf;        /* received bytes */
  size_t len;
  int status; /* ":status" of the REPLY (http) */
};

struct app {
  struct event_base *base;
  kr_client *client;
  int64_t agent;
  const char *echo, *http, *path, *message;
  struct step echo_step, http_step;
  int failed;
};

/* One instance; stream callbacks get their struct step as user data. */
static struct app g;

/* Ends the run: why NULL is success, else the reason (with err's text when
 * err < 0). Only breaks the loop: main() frees everything afterwards. */
static void finish(const char *why, int err) {
  if (why) {
    fprintf(stderr, "embed_client: %s%s%s\n", why, err ? ": " : "",
            err ? kr_strerror(err) : "");
    g.failed = 1;
  }
  event_base_loopbreak(g.base);
}

static kr_md md_str(const char *name, const char *value) {
  kr_md m = {(const uint8_t *)name, strlen(name), (const uint8_t *)value,
             strlen(value)};
  return m;
}

static void start_http(void);
static void start_list(void);

/* ---- stream callbacks: user_data is the struct step given at open ---- */

static void on_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                     void *user_data) {
  struct step *st = user_data;
  (void)s;
  (void)fin;
  /* md points into library buffers: copy what is kept. */
  for (size_t i = 0; i < n; i++)
    if (md[i].name_len == strlen(KR_MD_STATUS) &&
        !memcmp(md[i].name, KR_MD_STATUS, md[i].name_len) &&
        md[i].value_len == 3) {
      char v[4] = {0};
      memcpy(v, md[i].value, 3);
      st->status = atoi(v);
    }
}

static void on_data(kr_stream *s, const uint8_t *data, size_t len,
                    void *user_data) {
  struct step *st = user_data;
  if (st->len + len > MAX_BODY) {
    kr_stream_reset(s, KR_CODE_CANCEL, "reply too large");
    return;
  }
  char *nb = realloc(st->buf, st->len + len + 1);
  if (!nb) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  st->buf = nb;
  memcpy(st->buf + st->len, data, len);
  st->len += len;
  st->buf[st->len] = '\0';
  /* The bytes are copied: return their flow-control credit at once. */
  kr_stream_consume(s, len);
}

/* The stream ended: code KR_CODE_NO_ERROR after both sides' FIN, or a
 * reset. The next step starts from here, inside a callback, which the
 * library allows (kr_client_open is not one of the forbidden calls). */
static void on_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                     size_t reason_len, void *user_data) {
  struct step *st = user_data;
  (void)s;
  if (code != KR_CODE_NO_ERROR) {
    int e = kr_error_from_code(code);
    fprintf(stderr, "embed_client: %s stream reset: %s (%s) %.*s\n", st->name,
            kr_code_name(code), kr_err_name(e), (int)reason_len,
            (const char *)reason);
    finish(st == &g.echo_step ? "echo step failed" : "http step failed", 0);
    return;
  }
  if (st == &g.echo_step) {
    int same =
        st->len == strlen(g.message) && !memcmp(st->buf, g.message, st->len);
    if (!same) {
      finish("the echo differs from the message", 0);
      return;
    }
    printf("echo ok: %s\n", st->buf);
    start_http();
  } else {
    printf("http status=%d body_bytes=%zu\n", st->status, st->len);
    printf("%s%s", st->buf ? st->buf : "",
           st->len && st->buf[st->len - 1] != '\n' ? "\n" : "");
    if (st->status < 200 || st->status > 299) {
      finish("the HTTP request did not succeed (status above)", 0);
      return;
    }
    start_list();
  }
  fflush(stdout);
}

/* ---- the three steps ---- */

static void start_echo(void) {
  kr_stream *s;
  int e =
      kr_client_open(g.client, g.agent, g.echo, NULL, 0, 0, &g.echo_step, &s);
  if (e) {
    finish("cannot open the echo stream", e);
    return;
  }
  /* A short message fits the initial window; a larger one would need to
   * continue from on_writable when kr_stream_write() accepts less. */
  int64_t w = kr_stream_write(s, g.message, strlen(g.message));
  if (w != (int64_t)strlen(g.message) || kr_stream_close_write(s) != 0)
    finish("cannot write the message", 0);
}

static void start_http(void) {
  kr_md md[] = {md_str(KR_MD_METHOD, "GET"), md_str(KR_MD_PATH, g.path),
                md_str("accept", "*/*")};
  kr_stream *s;
  /* fin = 1: a GET has no body, so the request is complete with the OPEN. */
  int e = kr_client_open(g.client, g.agent, g.http, md, 3, 1, &g.http_step, &s);
  if (e)
    finish("cannot open the http stream", e);
}

static void on_list(const char *json, size_t len, int err, void *user_data) {
  (void)user_data;
  if (err) {
    finish("listing agents failed", err);
    return;
  }
  printf("agents: %.*s\n", (int)len, json);
  finish(NULL, 0);
}

static void start_list(void) {
  int e = kr_client_list_agents(g.client, on_list, NULL);
  if (e)
    finish("cannot list agents", e);
}

/* Connection state: 0 once ready (start the work), an error when the
 * connection failed or ended (every stream has ended by then). */
static void on_state(kr_client *c, int err, const char *reason,
                     void *user_data) {
  (void)c;
  (void)user_data;
  if (err == 0) {
    printf("connected\n");
    start_echo();
    return;
  }
  fprintf(stderr, "embed_client: connection: %s: %s\n", kr_err_name(err),
          reason ? reason : "");
  finish("connection lost", 0);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  finish("timed out after 30 s", 0);
}

int main(int argc, char **argv) {
  const char *url = NULL, *token = getenv("KASROUTE_TOKEN");
  g.echo = "echo";
  g.http = "http";
  g.path = "/";
  g.message = "hello";
  const char *agent = NULL;
  struct {
    const char *flag, **dst;
  } flags[] = {{"--kas", &url},          {"--token", &token},
               {"--agent", &agent},      {"--echo", &g.echo},
               {"--http", &g.http},      {"--path", &g.path},
               {"--message", &g.message}};
  int bad = argc % 2 == 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    size_t j = 0;
    while (j < sizeof flags / sizeof flags[0] && strcmp(argv[i], flags[j].flag))
      j++;
    if (j == sizeof flags / sizeof flags[0])
      bad = 1;
    else
      *flags[j].dst = argv[i + 1];
  }
  g.agent = agent ? strtoll(agent, NULL, 10) : -1;
  if (bad || !url || !token || g.agent < 0 || !g.message[0]) {
    fprintf(stderr, "usage: embed_client --kas URL --agent ID [--token JWT] "
                    "[--echo SVC] [--http SVC] [--path P] [--message M]\n"
                    "  (the JWT may come from KASROUTE_TOKEN instead)\n");
    return 1;
  }
  g.echo_step.name = "echo";
  g.http_step.name = "http";

  kr_client_options *o = NULL;
  kr_mux_callbacks *cbs = NULL;
  struct event *timer = NULL;
  char err[256] = "";
  g.failed = 1;
  g.base = event_base_new();
  if (!g.base || kr_client_options_new(&o) || kr_mux_callbacks_new(&cbs))
    goto out;
  kr_mux_callbacks_set_on_reply(cbs, on_reply);
  kr_mux_callbacks_set_on_data(cbs, on_data);
  kr_mux_callbacks_set_on_close(cbs, on_close);
  int e = kr_client_options_set_url(o, url);
  if (!e)
    e = kr_client_options_set_token(o, token, strlen(token));
  if (!e) /* o and cbs are copied: both can be freed right after */
    e = kr_client_new(&g.client, g.base, o, cbs, on_state, NULL, err,
                      sizeof err);
  if (e) {
    fprintf(stderr, "embed_client: %s: %s\n", kr_err_name(e),
            err[0] ? err : kr_strerror(e));
    goto out;
  }
  struct timeval tv = {30, 0};
  timer = evtimer_new(g.base, on_timeout, NULL);
  if (!timer)
    goto out;
  evtimer_add(timer, &tv);
  g.failed = 0;
  event_base_dispatch(g.base);

out:
  /* kr_client_free() closes at once, with no further callbacks. */
  kr_client_free(g.client);
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  if (timer)
    event_free(timer);
  if (g.base)
    event_base_free(g.base);
  free(g.echo_step.buf);
  free(g.http_step.buf);
  if (!g.failed)
    printf("embed_client ok\n");
  return g.failed ? 1 : 0;
}
