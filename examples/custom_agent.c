/* custom_agent: an agent whose services are written in C.
 *
 * Usage:
 *   custom_agent --kas URL --token-file FILE [--name NAME]
 *                [--connections N] [--help]
 *
 *   --kas          the kas agent listener: tcp://, tls://, ws:// or wss://
 *   --token-file   the agent token: the file's bytes up to a final newline
 *   --name         replica name sent to kas (default: the host name)
 *   --connections  tunnel connections to keep, 1..64 (default 2)
 *
 * Services:
 *
 *   sysinfo  HTTP (<kasroute/http_handler.h>). GET on any path answers
 *            200 with a JSON document:
 *              {"host":"...","agent":"NAME","uptime_s":N,
 *               "load":[1 min,5 min,15 min],"time":"RFC 3339, UTC",
 *               "user":"caller" or null}
 *            ("user" is the caller's name when kas sent one, e.g. for a
 *            client whose JWT names a user). Other methods: 405 with
 *            "Allow: GET".
 *
 *   exec     a stream service (<kasroute/handler.h>) that runs one
 *            command of a fixed list, chosen by the OPEN metadata entry
 *            "command" (never a command line from the caller):
 *              uptime, date   no argument
 *              seq            "arg": a count 1..10000000 (runs seq 1 N)
 *              sha256sum      hashes the stream's data
 *            The REPLY comes at once. The command's stdout is streamed to
 *            the caller with backpressure: when kr_stream_write() accepts
 *            less than offered, the pipe is not read again until
 *            on_writable, so a caller that does not read makes the command
 *            block on its full pipe. The stream's data goes to the
 *            command's stdin; its flow-control credit is returned
 *            (kr_stream_consume()) only as the pipe takes the bytes, so at
 *            most one stream window (2 MiB) waits per command. Input for a
 *            command that has closed its stdin is dropped. stderr goes to
 *            /dev/null; the command inherits the agent's environment.
 *            The end: exit status 0 half-closes the stream (FIN after the
 *            last byte); any other end resets it with KR_CODE_UPSTREAM and
 *            "exit status N" or "killed by signal N" (output still queued
 *            in the stream is dropped with the reset). An unknown or
 *            missing command resets with KR_CODE_NOT_FOUND, a bad "arg"
 *            with KR_CODE_PROTOCOL, a 65th command at once with
 *            KR_CODE_REFUSED. When the stream ends before the command
 *            (the caller went away, the tunnel failed, the agent stops),
 *            the command is killed by its pid. Every command is reaped by
 *            the SIGCHLD handler: no zombies.
 *            Events go to stderr as key=value lines:
 *              event=exec_start command=C pid=P
 *              event=exec_exit pid=P status="exit status N"
 *              event=exec_kill pid=P reason="..."
 *
 * Once set up it prints "custom_agent running name=NAME services=sysinfo,exec"
 * on stdout (connecting goes on in the background: kas logs it).
 * SIGTERM or SIGINT drains the agent (kr_agent_drain(): GOAWAY on every
 * tunnel, open streams get 10 s); a second signal stops at once. Then
 * everything is freed and the exit status is 0. Setup errors exit 1,
 * usage errors 2.
 */
#define _POSIX_C_SOURCE 200809L

#include <kasroute/kasroute.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TOKEN 4096
#define MAX_JOBS 64                /* commands running at once */
#define SEQ_MAX 10000000L          /* largest count seq accepts */
#define READ_BUDGET (256u * 1024u) /* output bytes moved per pipe event */
#define DRAIN_GRACE_US (10 * 1000000u)

extern char **environ;

struct job;

struct app {
  struct event_base *base;
  kr_agent *agent;
  char name[128]; /* replica name, also in the sysinfo document */
  struct event *sigterm, *sigint, *sigchld;
  struct job *jobs; /* commands not yet reaped or streams still open */
  unsigned n_jobs;
  int stopping;
};

/* One command of the exec service. */
struct command {
  const char *name;    /* the "command" value */
  const char *argv[3]; /* program (looked up on PATH) and fixed arguments */
  int counted;         /* 1: "arg" is a count, appended to argv */
};

static const struct command commands[] = {
    {"uptime", {"uptime", NULL}, 0},
    {"date", {"date", "-u", NULL}, 0},
    {"seq", {"seq", "1", NULL}, 1},
    {"sha256sum", {"sha256sum", NULL}, 0},
};

/* One exec stream and its command. The job is freed once both are over:
 * the stream has ended (on_close) and the command has been reaped,
 * whichever comes last. */
struct job {
  struct app *app;
  struct job *next;
  kr_stream *s;         /* NULL once on_close ran */
  pid_t pid;            /* 0 once reaped */
  int status;           /* wait status once reaped; -1: lost */
  int out_fd;           /* read end of the command's stdout; -1 after EOF */
  int in_fd;            /* write end of its stdin; -1 once closed */
  struct event *out_ev; /* EV_READ on out_fd; pending while reading */
  struct event *in_ev;  /* EV_WRITE on in_fd; pending while input waits */
  struct evbuffer *in;  /* stream data the pipe has not taken yet */
  int in_fin;           /* the caller half-closed */
  int ended;            /* FIN or RESET sent */
  size_t off, len;      /* buf[off..len): output not yet accepted */
  char buf[16384];
};

static void log_line(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

/* One event line on stderr, in the library's key=value style. */
static void log_line(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("level=info ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ------------------------------------------------------------- sysinfo */

static kr_md md_str(const char *name, const char *value) {
  kr_md m = {(const uint8_t *)name, strlen(name), (const uint8_t *)value,
             strlen(value)};
  return m;
}

static const char method_not_allowed[] = "{\"error\":\"method not allowed\"}\n";

static void respond_405(kr_http_exchange *x) {
  char len[16];
  snprintf(len, sizeof len, "%zu", sizeof method_not_allowed - 1);
  const kr_md f[] = {md_str("allow", "GET"),
                     md_str("content-type", "application/json"),
                     md_str("content-length", len)};
  /* A few bytes always fit a fresh stream's queue, so the write is whole;
   * a longer body would continue from on_writable. */
  if (kr_http_respond(x, 405, f, 3, 0) < 0 ||
      kr_http_write(x, method_not_allowed, sizeof method_not_allowed - 1) !=
          (int64_t)(sizeof method_not_allowed - 1) ||
      kr_http_finish(x) < 0)
    kr_http_abort(x, "cannot send the response");
}

/* A whole response; when it cannot be sent (out of memory) the exchange
 * is aborted, so that it never stays unanswered. */
static void respond_or_abort(kr_http_exchange *x, int status,
                             const char *type, const void *body, size_t len) {
  int e = kr_http_respond_body(x, status, type, body, len);
  if (e < 0 && e != KR_ECLOSED)
    kr_http_abort(x, kr_strerror(e));
}

static void sysinfo_request(kr_http_exchange *x, void *service_data) {
  struct app *a = service_data;
  if (strcmp(kr_http_method(x), "GET") != 0) {
    respond_405(x);
    return;
  }
  char host[256] = "";
  struct sysinfo si;
  if (gethostname(host, sizeof host - 1) < 0 || sysinfo(&si) < 0) {
    static const char msg[] = "cannot read the system state\n";
    respond_or_abort(x, 500, "text/plain", msg, sizeof msg - 1);
    return;
  }
  char now[32];
  struct tm tm;
  time_t t = time(NULL);
  strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
  /* sysinfo() gives the load averages in units of 1/65536. */
  const double unit = 1 << SI_LOAD_SHIFT;
  /* jansson escapes the strings; "s?" turns a NULL user into null. A
   * string that is not UTF-8 makes json_pack() fail: answered with 500. */
  json_t *doc =
      json_pack("{s:s, s:s, s:I, s:[f,f,f], s:s, s:s?}", "host", host, "agent",
                a->name, "uptime_s", (json_int_t)si.uptime, "load",
                si.loads[0] / unit, si.loads[1] / unit, si.loads[2] / unit,
                "time", now, "user", kr_http_user(x));
  char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  if (!body) {
    static const char msg[] = "cannot encode the document\n";
    respond_or_abort(x, 500, "text/plain", msg, sizeof msg - 1);
    return;
  }
  respond_or_abort(x, 200, "application/json", body, strlen(body));
  free(body);
}

/* ---------------------------------------------------------------- exec */

static void job_free(struct job *j);

/* Stops reading the command's output (EOF, or the stream is gone). */
static void close_out(struct job *j) {
  if (j->out_ev) {
    event_free(j->out_ev);
    j->out_ev = NULL;
  }
  if (j->out_fd >= 0) {
    close(j->out_fd);
    j->out_fd = -1;
  }
}

/* Closes the command's stdin (EOF for it). Input still waiting is dropped
 * and, while the stream is open, its credit returned so that the caller is
 * not left waiting for a window that would never reopen. */
static void close_in(struct job *j) {
  size_t left = j->in ? evbuffer_get_length(j->in) : 0;
  if (left) {
    evbuffer_drain(j->in, left);
    if (j->s)
      kr_stream_consume(j->s, left);
  }
  if (j->in_ev) {
    event_free(j->in_ev);
    j->in_ev = NULL;
  }
  if (j->in_fd >= 0) {
    close(j->in_fd);
    j->in_fd = -1;
  }
}

/* "exit status N", "killed by signal N", or "exit status unknown" (-1). */
static const char *describe(int st, char *buf, size_t len) {
  if (st == -1)
    snprintf(buf, len, "exit status unknown");
  else if (WIFEXITED(st))
    snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
  else
    snprintf(buf, len, "killed by signal %d", WTERMSIG(st));
  return buf;
}

/* Ends the stream once the command is reaped and every byte of its output
 * was accepted by kr_stream_write(). The stream call may fire on_close,
 * which frees j: nothing touches j afterwards. */
static void maybe_end(struct job *j) {
  if (!j->s || j->ended || j->pid || j->out_fd >= 0 || j->off < j->len)
    return;
  j->ended = 1;
  kr_stream *s = j->s;
  int st = j->status;
  if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    kr_stream_close_write(s);
    return;
  }
  char why[64];
  kr_stream_reset(s, KR_CODE_UPSTREAM, describe(st, why, sizeof why));
}

/* Moves the command's output to the stream until the stream's queue is
 * full (then waits for on_writable without reading the pipe: that is the
 * backpressure), the pipe is empty (waits for it), the pipe ends, or
 * READ_BUDGET bytes were moved (the pipe event fires again on the next
 * loop iteration, so one busy command does not starve the others). */
static void pump_out(struct job *j) {
  size_t moved = 0;
  while (j->s) {
    if (j->off < j->len) {
      int64_t w = kr_stream_write(j->s, j->buf + j->off, j->len - j->off);
      if (w == KR_EAGAIN)
        w = 0;
      if (w < 0) {
        if (j->s) /* KR_ENOMEM; KR_ECLOSED means on_close has run */
          kr_stream_reset(j->s, KR_CODE_INTERNAL, kr_strerror((int)w));
        return;
      }
      j->off += (size_t)w;
      moved += (size_t)w;
      if (j->off < j->len) {
        if (j->out_ev)
          event_del(j->out_ev); /* until on_writable */
        return;
      }
    }
    if (j->out_fd < 0) {
      maybe_end(j);
      return;
    }
    if (moved >= READ_BUDGET) {
      event_add(j->out_ev, NULL);
      return;
    }
    ssize_t n = read(j->out_fd, j->buf, sizeof j->buf);
    if (n > 0) {
      j->off = 0;
      j->len = (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      event_add(j->out_ev, NULL);
      return;
    } else {
      close_out(j); /* EOF (a read error ends the output the same way) */
    }
  }
}

/* Writes waiting input to the command's stdin; the credit of each byte
 * the pipe takes goes back to the caller. */
static void pump_in(struct job *j) {
  while (j->in_fd >= 0 && evbuffer_get_length(j->in) > 0) {
    int n = evbuffer_write(j->in, j->in_fd);
    if (n > 0) {
      kr_stream_consume(j->s, (size_t)n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      event_add(j->in_ev, NULL);
      return;
    } else {
      close_in(j); /* EPIPE: the command closed its stdin */
      return;
    }
  }
  if (j->in_ev)
    event_del(j->in_ev);
  if (j->in_fin && j->in_fd >= 0)
    close_in(j);
}

static void on_out_ready(evutil_socket_t fd, short what, void *arg) {
  pump_out(arg);
}

static void on_in_ready(evutil_socket_t fd, short what, void *arg) {
  pump_in(arg);
}

/* Reaps every command that has ended. Runs from the SIGCHLD event, so
 * never inside a library callback; the one signal may stand for several
 * children. */
static void reap(struct app *a) {
  struct job *next;
  for (struct job *j = a->jobs; j; j = next) {
    next = j->next;
    if (!j->pid)
      continue;
    int st = 0;
    pid_t r = waitpid(j->pid, &st, WNOHANG);
    if (r == 0 || (r < 0 && errno == EINTR))
      continue;
    if (r < 0)
      st = -1; /* ECHILD: someone else reaped it */
    char why[64];
    log_line("event=exec_exit pid=%ld status=\"%s\"", (long)j->pid,
             describe(st, why, sizeof why));
    j->pid = 0;
    j->status = st;
    close_in(j); /* nobody reads it any more */
    if (j->s)
      maybe_end(j);
    else
      job_free(j);
  }
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg) {
  reap(arg);
}

static const struct command *find_command(const kr_md *m) {
  for (size_t i = 0; m && i < sizeof commands / sizeof commands[0]; i++)
    if (m->value_len == strlen(commands[i].name) &&
        !memcmp(m->value, commands[i].name, m->value_len))
      return &commands[i];
  return NULL;
}

/* A count 1..SEQ_MAX in plain decimal into out (NUL-terminated); 0 if
 * the value is anything else. */
static int parse_count(const kr_md *m, char out[16]) {
  if (!m || m->value_len == 0 || m->value_len > 8)
    return 0;
  long v = 0;
  for (size_t i = 0; i < m->value_len; i++) {
    if (m->value[i] < '0' || m->value[i] > '9')
      return 0;
    v = v * 10 + (m->value[i] - '0');
  }
  if (v < 1 || v > SEQ_MAX)
    return 0;
  snprintf(out, 16, "%ld", v);
  return 1;
}

static int set_flags(int fd, int nonblock) {
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
    return -1;
  return nonblock ? fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) : 0;
}

/* Starts cmd with its stdin and stdout on pipes; fills j->pid, j->out_fd
 * and j->in_fd. Returns 0, or an errno value with nothing left open. */
static int spawn(struct job *j, const struct command *cmd, const char *count) {
  int out[2] = {-1, -1}, in[2] = {-1, -1}, e = 0;
  if (pipe(out) < 0 || pipe(in) < 0 || set_flags(out[0], 1) ||
      set_flags(out[1], 0) || set_flags(in[0], 0) || set_flags(in[1], 1)) {
    e = errno;
    goto out;
  }
  /* The child gets the pipes as fds 0 and 1 (dup2 clears close-on-exec;
   * every other descriptor of this process, the library's and libevent's
   * included, is close-on-exec), SIGPIPE back at its default (this
   * process ignores it) and an empty signal mask. */
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  sigset_t dfl, none;
  sigemptyset(&dfl);
  sigaddset(&dfl, SIGPIPE);
  sigemptyset(&none);
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_setsigdefault(&at, &dfl);
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  char *argv[4] = {NULL};
  size_t k = 0;
  for (; cmd->argv[k]; k++)
    argv[k] = (char *)cmd->argv[k];
  if (cmd->counted)
    argv[k] = (char *)count;
  e = posix_spawnp(&j->pid, argv[0], &fa, &at, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  if (e) {
    j->pid = 0;
    goto out;
  }
  j->out_fd = out[0];
  j->in_fd = in[1];
  out[0] = in[1] = -1;
out:
  for (int i = 0; i < 2; i++) {
    if (out[i] >= 0)
      close(out[i]);
    if (in[i] >= 0)
      close(in[i]);
  }
  return e;
}

/* Refuses a stream in on_open. Its user data goes back to NULL first:
 * on_close fires for it too, and must not take the service data for a
 * job. */
static void refuse(kr_stream *s, uint32_t code, const char *why) {
  kr_stream_set_user_data(s, NULL);
  kr_stream_reset(s, code, why);
}

static void exec_open(kr_stream *s, const kr_md *md, size_t n, int fin,
                      void *service_data) {
  struct app *a = service_data;
  const struct command *cmd = find_command(kr_md_find(md, n, "command"));
  char count[16] = "";
  if (!cmd) {
    refuse(s, KR_CODE_NOT_FOUND,
           "unknown command (known: uptime, date, seq, sha256sum)");
    return;
  }
  if (cmd->counted && !parse_count(kr_md_find(md, n, "arg"), count)) {
    refuse(s, KR_CODE_PROTOCOL, "seq needs \"arg\": a count 1..10000000");
    return;
  }
  if (a->stopping) {
    refuse(s, KR_CODE_REFUSED, "the agent is stopping");
    return;
  }
  if (a->n_jobs >= MAX_JOBS) {
    refuse(s, KR_CODE_REFUSED, "too many commands running");
    return;
  }
  struct job *j = calloc(1, sizeof *j);
  if (!j || !(j->in = evbuffer_new())) {
    free(j);
    refuse(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  j->app = a;
  j->s = s;
  j->out_fd = j->in_fd = -1;
  int e = spawn(j, cmd, count);
  if (e) {
    char why[128];
    snprintf(why, sizeof why, "cannot run %s: %s", cmd->name, strerror(e));
    evbuffer_free(j->in);
    free(j);
    refuse(s, KR_CODE_UPSTREAM, why);
    return;
  }
  log_line("event=exec_start command=%s pid=%ld", cmd->name, (long)j->pid);
  j->next = a->jobs;
  a->jobs = j;
  a->n_jobs++;
  /* From here on the job is the stream's user data: on_close (also the
   * one a failed reply fires) kills the command. */
  kr_stream_set_user_data(s, j);
  j->out_ev =
      event_new(a->base, j->out_fd, EV_READ | EV_PERSIST, on_out_ready, j);
  j->in_ev =
      event_new(a->base, j->in_fd, EV_WRITE | EV_PERSIST, on_in_ready, j);
  if (!j->out_ev || !j->in_ev) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  if (kr_stream_reply(s, NULL, 0, 0) < 0) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "cannot reply");
    return;
  }
  if (fin) {
    j->in_fin = 1;
    close_in(j);
  }
  event_add(j->out_ev, NULL);
}

static void exec_data(kr_stream *s, const uint8_t *data, size_t len,
                      void *user_data) {
  struct job *j = user_data;
  if (j->in_fd < 0) {
    kr_stream_consume(s, len); /* the command reads no more: dropped */
    return;
  }
  /* Held until the pipe takes it; bounded by the stream window, since the
   * credit only comes back in pump_in(). */
  if (evbuffer_add(j->in, data, len) < 0) {
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  pump_in(j);
}

static void exec_fin(kr_stream *s, void *user_data) {
  struct job *j = user_data;
  j->in_fin = 1;
  pump_in(j);
}

static void exec_writable(kr_stream *s, void *user_data) {
  pump_out(user_data);
}

static void exec_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                       size_t reason_len, void *user_data) {
  struct job *j = user_data;
  if (!j)
    return; /* refused in on_open */
  j->s = NULL;
  close_out(j);
  close_in(j);
  if (!j->pid) {
    job_free(j);
    return;
  }
  /* The stream ended before the command: nobody will read its output.
   * SIGKILL, because none of these commands has anything to clean up; the
   * SIGCHLD event reaps it and frees the job. */
  log_line("event=exec_kill pid=%ld reason=\"%s: %.*s\"", (long)j->pid,
           kr_code_name(code), (int)(reason_len > 200 ? 200 : reason_len),
           (const char *)reason);
  kill(j->pid, SIGKILL);
}

static void job_free(struct job *j) {
  struct app *a = j->app;
  for (struct job **p = &a->jobs; *p; p = &(*p)->next)
    if (*p == j) {
      *p = j->next;
      a->n_jobs--;
      break;
    }
  close_out(j);
  close_in(j);
  evbuffer_free(j->in);
  free(j);
}

/* ------------------------------------------------------------ the agent */

static void on_drained(kr_agent *agent, void *user_data) {
  struct app *a = user_data;
  log_line("event=drained");
  event_base_loopbreak(a->base);
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  struct app *a = arg;
  if (a->stopping) { /* a second signal: stop now */
    event_base_loopbreak(a->base);
    return;
  }
  a->stopping = 1;
  log_line("event=draining signal=%s", sig == SIGINT ? "SIGINT" : "SIGTERM");
  kr_agent_drain(a->agent, DRAIN_GRACE_US, on_drained, a);
}

/* Reads the token file: its bytes without a final "\n" or "\r\n".
 * Returns the length, or -1 with a message printed. */
static long read_token(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "custom_agent: %s: %s\n", path, strerror(errno));
    return -1;
  }
  size_t n = fread(buf, 1, cap, f);
  int bad = ferror(f) || (n == cap && fgetc(f) != EOF);
  fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  if (bad || n == 0) {
    fprintf(stderr, "custom_agent: %s: %s\n", path,
            bad ? "unreadable or longer than 4096 bytes" : "empty");
    return -1;
  }
  return (long)n;
}

static const char usage[] =
    "Usage: custom_agent --kas URL --token-file FILE [--name NAME]\n"
    "                    [--connections N]\n"
    "Serves two services written in C: sysinfo (HTTP, a JSON document about\n"
    "this host) and exec (runs uptime, date, seq or sha256sum, chosen by\n"
    "the stream's \"command\" metadata, and streams its output).\n"
    "  --kas URL          kas agent listener (tcp://, tls://, ws://, wss://)\n"
    "  --token-file FILE  the agent token\n"
    "  --name NAME        replica name (default: the host name)\n"
    "  --connections N    tunnel connections, 1..64 (default 2)\n"
    "  --help             this text\n"
    "SIGTERM or SIGINT drains and exits 0.\n";

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"kas", required_argument, NULL, 'k'},
      {"token-file", required_argument, NULL, 't'},
      {"name", required_argument, NULL, 'n'},
      {"connections", required_argument, NULL, 'c'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  static struct app a;
  const char *kas = NULL, *token_file = NULL, *name = NULL;
  long connections = 2;
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'k':
      kas = optarg;
      break;
    case 't':
      token_file = optarg;
      break;
    case 'n':
      name = optarg;
      break;
    case 'c':
      connections = strtol(optarg, NULL, 10);
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    default:
      fputs(usage, stderr);
      return 2;
    }
  }
  const char *bad = NULL;
  if (optind != argc)
    bad = "unexpected argument";
  else if (!kas || !token_file)
    bad = "--kas and --token-file are required";
  else if (connections < 1 || connections > 64)
    bad = "--connections must be 1..64";
  else if (name && strlen(name) >= sizeof a.name)
    bad = "--name is too long";
  if (bad) {
    fprintf(stderr, "custom_agent: %s\n%s", bad, usage);
    return 2;
  }
  if (name)
    snprintf(a.name, sizeof a.name, "%s", name);
  else if (gethostname(a.name, sizeof a.name - 1) < 0)
    snprintf(a.name, sizeof a.name, "custom-agent");

  static char token[MAX_TOKEN + 1];
  long token_len = read_token(token_file, token, sizeof token);
  if (token_len < 0)
    return 1;

  /* Writing to a pipe whose command has exited must fail with EPIPE, not
   * kill the agent. */
  signal(SIGPIPE, SIG_IGN);

  kr_agent_options *o = NULL;
  kr_handler *exec = NULL;
  kr_http_handler *sysinfo_h = NULL;
  char err[256] = "";
  int rc = 1;
  a.base = event_base_new();
  int e = a.base ? 0 : KR_ENOMEM;
  if (!e)
    e = kr_agent_options_new(&o);
  if (!e)
    e = kr_agent_options_set_kas_url(o, kas);
  if (!e)
    e = kr_agent_options_set_token(o, token, (size_t)token_len);
  if (!e)
    e = kr_agent_options_set_name(o, a.name);
  if (!e)
    e = kr_agent_options_set_connections(o, (unsigned)connections);
  if (!e)
    e = kr_http_handler_new(&sysinfo_h);
  if (!e) {
    kr_http_handler_set_on_request(sysinfo_h, sysinfo_request);
    e = kr_agent_options_add_http_handler(o, "sysinfo", sysinfo_h, &a);
  }
  if (!e)
    e = kr_handler_new(&exec);
  if (!e) {
    kr_handler_set_on_open(exec, exec_open);
    kr_handler_set_on_data(exec, exec_data);
    kr_handler_set_on_fin(exec, exec_fin);
    kr_handler_set_on_writable(exec, exec_writable);
    kr_handler_set_on_close(exec, exec_close);
    e = kr_agent_options_add_handler(o, "exec", exec, &a);
  }
  if (!e) /* options and handlers are copied: all freed below */
    e = kr_agent_new(&a.agent, a.base, o, err, sizeof err);
  memset(token, 0, sizeof token); /* the agent holds its own copy */
  kr_agent_options_free(o);
  kr_handler_free(exec);
  kr_http_handler_free(sysinfo_h);
  if (e) {
    fprintf(stderr, "custom_agent: %s: %s\n", kr_err_name(e),
            err[0] ? err : kr_strerror(e));
    goto out;
  }

  a.sigterm = evsignal_new(a.base, SIGTERM, on_signal, &a);
  a.sigint = evsignal_new(a.base, SIGINT, on_signal, &a);
  a.sigchld = evsignal_new(a.base, SIGCHLD, on_sigchld, &a);
  if (!a.sigterm || !a.sigint || !a.sigchld || event_add(a.sigterm, NULL) ||
      event_add(a.sigint, NULL) || event_add(a.sigchld, NULL)) {
    fprintf(stderr, "custom_agent: cannot watch signals\n");
    goto out;
  }
  printf("custom_agent running name=%s services=sysinfo,exec\n", a.name);
  fflush(stdout);
  event_base_dispatch(a.base);
  rc = 0;

out:
  /* The agent first: no callbacks after kr_agent_free(). Then commands
   * still running (a stop before the drain ended): killed and waited for,
   * so none outlives the agent and none is left a zombie. */
  kr_agent_free(a.agent);
  while (a.jobs) {
    struct job *j = a.jobs;
    j->s = NULL; /* the stream went with the agent */
    if (j->pid) {
      kill(j->pid, SIGKILL);
      while (waitpid(j->pid, NULL, 0) < 0 && errno == EINTR)
        ;
      log_line("event=exec_exit pid=%ld status=\"killed at exit\"",
               (long)j->pid);
    }
    job_free(j);
  }
  if (a.sigterm)
    event_free(a.sigterm);
  if (a.sigint)
    event_free(a.sigint);
  if (a.sigchld)
    event_free(a.sigchld);
  if (a.base)
    event_base_free(a.base);
  return rc;
}
