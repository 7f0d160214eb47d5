/* Redis server processes for the tests (see redis_helper.h). */
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redis_helper.h"

#define MAX_PROCS 8

static struct {
  pid_t pid;
  pid_t owner; /* the process that started it */
} procs[MAX_PROCS];
static char tmpdir[512];
static pid_t tmpdir_owner;
static void (*fail_hook)(const char *why);

void tr_on_failure(void (*fail)(const char *why)) {
  fail_hook = fail;
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *fmt, ...) {
  char why[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", why);
  if (fail_hook)
    fail_hook(why);
}

int tr_have_program(const char *name) {
  const char *path = getenv("PATH");
  char buf[4096];
  snprintf(buf, sizeof(buf), "%s", path ? path : "");
  char *save = NULL;
  for (char *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    char f[4200];
    snprintf(f, sizeof(f), "%s/%s", d, name);
    if (access(f, X_OK) == 0)
      return 1;
  }
  return 0;
}

int tr_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    if (fd >= 0)
      close(fd);
    fail("no free loopback port");
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

const char *tr_tmpdir(void) {
  if (tmpdir[0])
    return tmpdir;
  const char *t = getenv("TMPDIR");
  snprintf(tmpdir, sizeof(tmpdir), "%s/krredis.XXXXXX", t ? t : "/tmp");
  if (mkdtemp(tmpdir) == NULL) {
    tmpdir[0] = 0;
    fail("cannot make a temporary directory under %s", t ? t : "/tmp");
    return NULL;
  }
  tmpdir_owner = getpid();
  return tmpdir;
}

void tr_remove_tmpdir(void) {
  if (!tmpdir[0] || tmpdir_owner != getpid())
    return;
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", tmpdir);
  tmpdir[0] = 0;
}

pid_t tr_spawn(char *const argv[], const char *log) {
  int slot = -1;
  for (int i = 0; i < MAX_PROCS && slot < 0; i++)
    if (procs[i].pid == 0)
      slot = i;
  if (slot < 0) {
    fail("too many processes");
    return -1;
  }
  const char *dir = tr_tmpdir();
  if (!dir)
    return -1;
  char path[700];
  snprintf(path, sizeof(path), "%s/%s", dir, log);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    fail("fork failed");
    return -1;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
      _exit(127);
    FILE *f = fopen(path, "a");
    if (f) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    if (chdir(dir) != 0)
      _exit(127);
    execvp(argv[0], argv);
    _exit(127);
  }
  procs[slot].pid = pid;
  procs[slot].owner = parent;
  return pid;
}

void tr_pause_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

redisReply *tr_sync_cmd(int port, const char *fmt, ...) {
  struct timeval tv = {1, 0};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (!c || c->err) {
    if (c)
      redisFree(c);
    return NULL;
  }
  redisSetTimeout(c, tv);
  va_list ap;
  va_start(ap, fmt);
  redisReply *rep = redisvCommand(c, fmt, ap);
  va_end(ap);
  redisFree(c);
  return rep;
}

int tr_wait_ready(pid_t pid, int port) {
  for (int i = 0; i < 500; i++) {
    int st;
    if (waitpid(pid, &st, WNOHANG) != 0) {
      fail("server on port %d exited at start (see %s)", port, tmpdir);
      return -1;
    }
    redisReply *rep = tr_sync_cmd(port, "PING");
    if (rep) {
      int loading = rep->type == REDIS_REPLY_ERROR &&
                    strncmp(rep->str, "LOADING", 7) == 0;
      freeReplyObject(rep);
      if (!loading)
        return 0;
    }
    tr_pause_ms(20);
  }
  fail("server on port %d not ready (see %s)", port, tmpdir);
  return -1;
}

pid_t tr_redis_start(int port, ...) {
  const char *dir = tr_tmpdir();
  if (!dir)
    return -1;
  char portstr[16], log[32];
  snprintf(portstr, sizeof(portstr), "%d", port);
  snprintf(log, sizeof(log), "redis-%d.log", port);
  char *argv[32] = {
      "redis-server", "--port", portstr,    "--save",    "",
      "--appendonly", "no",     "--bind",   "127.0.0.1", "--daemonize",
      "no",           "--dir",  (char *)dir};
  int n = 13;
  va_list ap;
  va_start(ap, port);
  for (char *a; n < 29 && (a = va_arg(ap, char *)) != NULL;)
    argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  pid_t pid = tr_spawn(argv, log);
  if (pid < 0)
    return -1;
  if (tr_wait_ready(pid, port) != 0) {
    tr_end_proc(pid);
    return -1;
  }
  return pid;
}

void tr_end_proc(pid_t pid) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (procs[i].pid == pid && pid > 0) {
      kill(pid, SIGCONT);
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      procs[i].pid = 0;
    }
}

void tr_kill_all(void) {
  pid_t self = getpid();
  for (int i = 0; i < MAX_PROCS; i++)
    if (procs[i].pid > 0 && procs[i].owner == self)
      tr_end_proc(procs[i].pid);
}
