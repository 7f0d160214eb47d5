/* exec_client: run a command of an agent's "exec" service (as served by
 * examples/custom_agent.c) through kas.
 *
 * Usage:
 *   exec_client --kas URL --agent ID [--service NAME] [--token-file FILE]
 *               COMMAND [ARG]
 *
 *   --kas         the kas API listener, e.g. tcp://127.0.0.1:8151
 *   --agent       the agent's id
 *   --service     the exec service's name (default "exec")
 *   --token-file  a file holding an API JWT (e.g. from `kasctl token`);
 *                 default: the KASROUTE_TOKEN environment variable
 *   COMMAND, ARG  sent in the OPEN as the metadata entries "command" and
 *                 "arg"
 *
 * stdin goes to the command (its end half-closes the stream: use
 * </dev/null for commands that read nothing); the command's output goes to
 * stdout. Writes to stdout block, and the stream's data is consumed only
 * once written: while nobody reads this program's stdout, kas and the agent
 * stop sending, and the command itself blocks.
 *
 * Exit status: 0 when the command ran and exited 0; 1 when the stream was
 * reset (the code and reason on stderr, e.g. "NOT_FOUND (NOSERVICE):
 * unknown command ..." or "UPSTREAM (UPSTREAM): exit status 1") or
 * the connection failed; 2 for a usage error.
 */
#define _POSIX_C_SOURCE 200809L

#include <kasroute/kasroute.h>

#include <event2/event.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_JWT 8192

struct app {
  struct event_base *base;
  kr_client *client;
  kr_stream *stream; /* NULL before the open and after on_close */
  int64_t agent;
  const char *service, *command, *arg;
  struct event *stdin_ev; /* one-shot EV_READ on fd 0, or activated */
  int stdin_pollable;     /* a pipe, socket or terminal; else always ready */
  int stdin_eof;
  uint8_t in[65536]; /* in[in_off..in_len): read, not yet written */
  size_t in_off, in_len;
  int status; /* exit status */
};

static struct app g;

static void fail(int status) {
  g.status = status;
  event_base_loopbreak(g.base);
}

/* Writes the input read so far. Returns 1 when all of it went, 0 when
 * the stream's queue is full (on_writable resumes) or the stream failed. */
static int flush_input(void) {
  if (g.in_off == g.in_len)
    return 1;
  int64_t w = kr_stream_write(g.stream, g.in + g.in_off, g.in_len - g.in_off);
  if (w == KR_EAGAIN)
    return 0;
  if (w < 0) {
    kr_stream_reset(g.stream, KR_CODE_INTERNAL, kr_strerror((int)w));
    return 0;
  }
  g.in_off += (size_t)w;
  return g.in_off == g.in_len;
}

/* Waits for stdin. A regular file or /dev/null cannot be polled, but a
 * read from it never waits: the event is simply run again. */
static void wait_stdin(void) {
  if (g.stdin_pollable)
    event_add(g.stdin_ev, NULL);
  else
    event_active(g.stdin_ev, EV_READ, 0);
}

/* stdin is readable: one read (more could block), then to the stream. */
static void on_stdin(evutil_socket_t fd, short what, void *arg) {
  if (!g.stream)
    return;
  ssize_t n = read(0, g.in, sizeof g.in);
  if (n < 0 && errno == EINTR) {
    wait_stdin();
    return;
  }
  if (n <= 0) { /* EOF; a read error ends the input as well */
    g.stdin_eof = 1;
    kr_stream_close_write(g.stream);
    return;
  }
  g.in_off = 0;
  g.in_len = (size_t)n;
  if (flush_input())
    wait_stdin();
}

/* ---- stream callbacks ---- */

static void on_data(kr_stream *s, const uint8_t *data, size_t len,
                    void *user_data) {
  size_t off = 0;
  while (off < len) {
    ssize_t w = write(1, data + off, len - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      fprintf(stderr, "exec_client: stdout: %s\n", strerror(errno));
      kr_stream_reset(s, KR_CODE_CANCEL, "the output cannot be written");
      return;
    }
    off += (size_t)w;
  }
  kr_stream_consume(s, len); /* written: the agent may send more */
}

static void on_writable(kr_stream *s, void *user_data) {
  if (!g.stdin_eof && flush_input())
    wait_stdin();
}

static void on_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                     size_t reason_len, void *user_data) {
  g.stream = NULL;
  if (code == KR_CODE_NO_ERROR) {
    g.status = 0;
    event_base_loopbreak(g.base);
    return;
  }
  fprintf(stderr, "exec_client: %s: %s (%s): %.*s\n", g.command,
          kr_code_name(code), kr_err_name(kr_error_from_code(code)),
          (int)reason_len, (const char *)reason);
  fail(1);
}

/* Connection ready: open the stream; or the connection failed. */
static void on_state(kr_client *c, int err, const char *reason,
                     void *user_data) {
  if (err) {
    fprintf(stderr, "exec_client: connection to kas: %s (%s): %s\n",
            kr_strerror(err), kr_err_name(err), reason ? reason : "");
    fail(1);
    return;
  }
  kr_md md[2] = {
      {(const uint8_t *)"command", 7, (const uint8_t *)g.command,
       strlen(g.command)},
      {(const uint8_t *)"arg", 3, (const uint8_t *)g.arg,
       g.arg ? strlen(g.arg) : 0},
  };
  int e = kr_client_open(c, g.agent, g.service, md, g.arg ? 2 : 1, 0, NULL,
                         &g.stream);
  if (e) {
    fprintf(stderr, "exec_client: cannot open a stream: %s\n", kr_strerror(e));
    fail(1);
    return;
  }
  wait_stdin();
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  fail(1); /* kr_client_free() in main closes the connection */
}

/* Reads a JWT file: its bytes without a final newline. NULL on error. */
static char *read_jwt(const char *path) {
  static char buf[MAX_JWT + 1];
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "exec_client: %s: %s\n", path, strerror(errno));
    return NULL;
  }
  size_t n = fread(buf, 1, MAX_JWT, f);
  int bad = ferror(f) || (n == MAX_JWT && fgetc(f) != EOF);
  fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  buf[n] = '\0';
  if (bad || n == 0) {
    fprintf(stderr, "exec_client: %s: %s\n", path,
            bad ? "unreadable or too long" : "empty");
    return NULL;
  }
  return buf;
}

static const char usage[] =
    "usage: exec_client --kas URL --agent ID [--service NAME]\n"
    "                   [--token-file FILE] COMMAND [ARG]\n"
    "  (without --token-file, the JWT comes from KASROUTE_TOKEN)\n";

int main(int argc, char **argv) {
  const char *url = NULL, *agent = NULL, *token_file = NULL;
  g.service = "exec";
  int i = 1;
  for (; i < argc && !strncmp(argv[i], "--", 2); i += 2) {
    if (!strcmp(argv[i], "--help")) {
      fputs(usage, stdout);
      return 0;
    }
    const char **dst = !strcmp(argv[i], "--kas")          ? &url
                       : !strcmp(argv[i], "--agent")      ? &agent
                       : !strcmp(argv[i], "--service")    ? &g.service
                       : !strcmp(argv[i], "--token-file") ? &token_file
                                                          : NULL;
    if (!dst || i + 1 >= argc) {
      fprintf(stderr, "exec_client: bad option %s\n%s", argv[i], usage);
      return 2;
    }
    *dst = argv[i + 1];
  }
  char *end = NULL;
  g.agent = agent ? strtoll(agent, &end, 10) : -1;
  if (!url || g.agent < 0 || (end && *end) || argc - i < 1 || argc - i > 2) {
    fputs(usage, stderr);
    return 2;
  }
  g.command = argv[i];
  g.arg = argc - i == 2 ? argv[i + 1] : NULL;
  const char *jwt =
      token_file ? read_jwt(token_file) : getenv("KASROUTE_TOKEN");
  if (!jwt) {
    if (!token_file)
      fprintf(stderr, "exec_client: no --token-file and no KASROUTE_TOKEN\n");
    return 2;
  }
  struct stat st;
  g.stdin_pollable = fstat(0, &st) == 0 && (S_ISFIFO(st.st_mode) ||
                                            S_ISSOCK(st.st_mode) || isatty(0));
  /* A stdout reader that left must end with a write error, not SIGPIPE. */
  signal(SIGPIPE, SIG_IGN);

  kr_client_options *o = NULL;
  kr_mux_callbacks *cbs = NULL;
  struct event *sigint = NULL, *sigterm = NULL;
  char err[256] = "";
  g.status = 1;
  g.base = event_base_new();
  if (!g.base || kr_client_options_new(&o) || kr_mux_callbacks_new(&cbs))
    goto out;
  kr_mux_callbacks_set_on_data(cbs, on_data);
  kr_mux_callbacks_set_on_writable(cbs, on_writable);
  kr_mux_callbacks_set_on_close(cbs, on_close);
  int e = kr_client_options_set_url(o, url);
  if (!e)
    e = kr_client_options_set_token(o, jwt, strlen(jwt));
  if (!e) /* o and cbs are copied */
    e = kr_client_new(&g.client, g.base, o, cbs, on_state, NULL, err,
                      sizeof err);
  if (e) {
    fprintf(stderr, "exec_client: %s: %s\n", kr_err_name(e),
            err[0] ? err : kr_strerror(e));
    goto out;
  }
  g.stdin_ev =
      event_new(g.base, g.stdin_pollable ? 0 : -1, EV_READ, on_stdin, NULL);
  sigint = evsignal_new(g.base, SIGINT, on_signal, NULL);
  sigterm = evsignal_new(g.base, SIGTERM, on_signal, NULL);
  if (!g.stdin_ev || !sigint || !sigterm || event_add(sigint, NULL) ||
      event_add(sigterm, NULL))
    goto out;
  event_base_dispatch(g.base); /* until on_close, a failure or a signal */

out:
  kr_client_free(g.client); /* no callbacks after this */
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  if (g.stdin_ev)
    event_free(g.stdin_ev);
  if (sigint)
    event_free(sigint);
  if (sigterm)
    event_free(sigterm);
  if (g.base)
    event_base_free(g.base);
  return g.status;
}
