/* The Redis client layer (lib/io/redis.c) against real redis-server and
 * redis-sentinel processes on loopback ports, started and ended (by pid)
 * by the tests themselves.
 *
 * Each Check test case is one meson test (CK_RUN_CASE picks it). Without
 * redis-server (or redis-sentinel for the sentinel case) the program exits
 * 77, which meson reports as skipped. Started servers die with the test
 * process (PR_SET_PDEATHSIG) and are killed by an atexit handler.
 */
#include <check.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <kasroute/error.h>
#include <kasroute/log.h>

#include "io/conn.h"
#include "io/redis.h"
#include "redis_helper.h"

/* ------------------------------------------------------------ processes */

/* Servers come from redis_helper.c; a failure there fails the test. */
static void abort_case(const char *why) {
  ck_abort_msg("%s", why);
}

/* -------------------------------------------------------------- the loop */

typedef struct tctx {
  struct event_base *base;
  kr__redis *r;
  int ups, downs, sub_ups, sub_downs;
  int last_err;
  char last_why[256];
  int free_on_up;
  int msgs;
  char last_chan[64];
  char last_msg[256];
  size_t last_len;
  int free_on_msg;
} tctx;

static void on_state(kr__redis *r, kr__redis_event ev, int err, const char *why,
                     void *ud) {
  tctx *t = ud;
  ck_assert_ptr_eq(r, t->r);
  switch (ev) {
  case KR__REDIS_UP:
    ck_assert_int_eq(err, 0);
    t->ups++;
    if (t->free_on_up) {
      kr__redis_free(r);
      t->r = NULL;
    }
    break;
  case KR__REDIS_DOWN:
    t->downs++;
    break;
  case KR__REDIS_SUB_UP:
    t->sub_ups++;
    break;
  case KR__REDIS_SUB_DOWN:
    t->sub_downs++;
    break;
  }
  if (ev == KR__REDIS_DOWN || ev == KR__REDIS_SUB_DOWN) {
    ck_assert_int_lt(err, 0);
    ck_assert_ptr_nonnull(why);
    t->last_err = err;
    snprintf(t->last_why, sizeof(t->last_why), "%s", why);
  }
}

static void on_message(const char *channel, const char *payload, size_t len,
                       void *ud) {
  tctx *t = ud;
  t->msgs++;
  snprintf(t->last_chan, sizeof(t->last_chan), "%s", channel);
  ck_assert_uint_lt(len, sizeof(t->last_msg));
  memcpy(t->last_msg, payload, len);
  t->last_len = len;
  if (t->free_on_msg) {
    kr__redis_free(t->r);
    t->r = NULL;
  }
}

static void noop_cb(evutil_socket_t fd, short what, void *arg) {
  *(int *)arg = 1;
}

/* Runs the loop until cond(arg) or timeout_ms; returns the last cond. */
static int run_until(struct event_base *base, int (*cond)(void *), void *arg,
                     int timeout_ms) {
  int expired = 0, v;
  struct event *t = evtimer_new(base, noop_cb, &expired);
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  evtimer_add(t, &tv);
  while (!(v = cond(arg)) && !expired)
    event_base_loop(base, EVLOOP_ONCE);
  event_free(t);
  return v;
}

static int want_ups;
static int cond_ups(void *arg) {
  return ((tctx *)arg)->ups >= want_ups;
}
static int want_downs;
static int cond_downs(void *arg) {
  return ((tctx *)arg)->downs >= want_downs;
}
static int want_sub_ups;
static int cond_sub_ups(void *arg) {
  return ((tctx *)arg)->sub_ups >= want_sub_ups;
}
static int want_sub_downs;
static int cond_sub_downs(void *arg) {
  return ((tctx *)arg)->sub_downs >= want_sub_downs;
}
static int want_msgs;
static int cond_msgs(void *arg) {
  return ((tctx *)arg)->msgs >= want_msgs;
}

static void wait_ups(tctx *t, int n, int ms) {
  want_ups = n;
  ck_assert_msg(run_until(t->base, cond_ups, t, ms),
                "no KR__REDIS_UP #%d within %d ms (last: %s %s)", n, ms,
                kr_err_name(t->last_err), t->last_why);
}

static void wait_downs(tctx *t, int n, int ms) {
  want_downs = n;
  ck_assert_msg(run_until(t->base, cond_downs, t, ms),
                "no KR__REDIS_DOWN #%d within %d ms", n, ms);
}

static void wait_sub_ups(tctx *t, int n, int ms) {
  want_sub_ups = n;
  ck_assert_msg(run_until(t->base, cond_sub_ups, t, ms),
                "no KR__REDIS_SUB_UP #%d within %d ms (last: %s %s)", n, ms,
                kr_err_name(t->last_err), t->last_why);
}

static void wait_sub_downs(tctx *t, int n, int ms) {
  want_sub_downs = n;
  ck_assert_msg(run_until(t->base, cond_sub_downs, t, ms),
                "no KR__REDIS_SUB_DOWN #%d within %d ms", n, ms);
}

static void wait_msgs(tctx *t, int n, int ms) {
  want_msgs = n;
  ck_assert_msg(run_until(t->base, cond_msgs, t, ms),
                "no message #%d within %d ms", n, ms);
}

/* One command's outcome. */
typedef struct treply {
  int calls;
  int err;
  int type;
  long long integer;
  char str[256];
  size_t len;
  tctx *free_ctx; /* frees this client inside the callback */
} treply;

static void on_reply(const redisReply *rep, int err, void *ud) {
  treply *x = ud;
  x->calls++;
  x->err = err;
  if (rep) {
    ck_assert_int_eq(err, 0);
    x->type = rep->type;
    x->integer = rep->integer;
    if (rep->str) {
      x->len = rep->len < sizeof(x->str) - 1 ? rep->len : sizeof(x->str) - 1;
      memcpy(x->str, rep->str, x->len);
      x->str[x->len] = 0;
    }
  } else {
    ck_assert_int_lt(err, 0);
    x->type = -1;
  }
  if (x->free_ctx && x->free_ctx->r) {
    kr__redis_free(x->free_ctx->r);
    x->free_ctx->r = NULL;
  }
}

static int cond_freed(void *arg) {
  return ((tctx *)arg)->r == NULL;
}

static int cond_reply(void *arg) {
  return ((treply *)arg)->calls > 0;
}

/* Sends a command of C strings and waits for its callback. */
static treply command(tctx *t, int n, ...) {
  const char *argv[8];
  va_list ap;
  va_start(ap, n);
  for (int i = 0; i < n; i++)
    argv[i] = va_arg(ap, const char *);
  va_end(ap);
  static treply x;
  memset(&x, 0, sizeof(x));
  int rc = kr__redis_command_argv(t->r, n, argv, NULL, on_reply, &x);
  ck_assert_msg(rc == 0, "command %s: %s", argv[0], kr_err_name(rc));
  ck_assert_msg(run_until(t->base, cond_reply, &x, 5000), "no reply to %s",
                argv[0]);
  ck_assert_int_eq(x.calls, 1);
  return x;
}

static void client(tctx *t, kr__redis_opts *o) {
  o->on_state = on_state;
  o->user_data = t;
  char err[256];
  int rc = kr__redis_new(t->base, o, &t->r, err, sizeof(err));
  ck_assert_msg(rc == 0, "kr__redis_new: %s: %s", kr_err_name(rc), err);
}

static void setup_ctx(tctx *t) {
  memset(t, 0, sizeof(*t));
  t->base = event_base_new();
  ck_assert_ptr_nonnull(t->base);
}

static void teardown_ctx(tctx *t) {
  kr__redis_free(t->r);
  t->r = NULL;
  event_base_free(t->base);
  tr_kill_all();
  tr_remove_tmpdir();
}

static char *url_for(int port, const char *auth, const char *db) {
  static char buf[256];
  snprintf(buf, sizeof(buf), "redis://%s%s127.0.0.1:%d%s", auth ? auth : "",
           auth ? "@" : "", port, db ? db : "");
  return buf;
}

/* Log lines, to prove the password never appears. */
static char logbuf[1 << 16];
static size_t loglen;
static void on_log(kr_log_level level, const char *line, void *ud) {
  size_t n = strlen(line);
  if (loglen + n + 2 < sizeof(logbuf)) {
    memcpy(logbuf + loglen, line, n);
    loglen += n;
    logbuf[loglen++] = '\n';
    logbuf[loglen] = 0;
  }
}

/* ------------------------------------------------------------------ tests */

START_TEST(t_config_errors) {
  tctx t;
  setup_ctx(&t);
  kr__redis *r = NULL;
  char err[256];
  struct {
    const char *url;
    int rc;
    const char *msg;
  } cases[] = {
      {"http://127.0.0.1:6379", KR_EADDR, "scheme"},
      {"rediss://:s3cret@127.0.0.1:6379", KR_EADDR, "TLS"},
      {"redis://:s3cret@127.0.0.1:6379/abc", KR_EADDR, "/DB"},
      {"redis://s3cret@127.0.0.1:6379", KR_EADDR, "password"},
      {"redis://:s3cret@127.0.0.1:0", KR_EADDR, "port"},
      {"redis://127.0.0.1:6379/?x=1", KR_EADDR, "query"},
      {"not a url", KR_EADDR, "URL"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    kr__redis_opts o = {.url = cases[i].url};
    int rc = kr__redis_new(t.base, &o, &r, err, sizeof(err));
    ck_assert_msg(rc == cases[i].rc, "%s: %s", cases[i].url, kr_err_name(rc));
    ck_assert_ptr_null(r);
    ck_assert_msg(strstr(err, cases[i].msg), "%s: %s", cases[i].url, err);
    ck_assert_msg(!strstr(err, "s3cret"), "password in error: %s", err);
  }
  const char *sent[] = {"127.0.0.1:26379"};
  kr__redis_opts both = {.url = "redis://127.0.0.1:6379",
                         .sentinels = sent,
                         .n_sentinels = 1,
                         .master_name = "m"};
  ck_assert_int_eq(kr__redis_new(t.base, &both, &r, err, sizeof(err)),
                   KR_ECONFIG);
  kr__redis_opts none = {0};
  ck_assert_int_eq(kr__redis_new(t.base, &none, &r, err, sizeof(err)),
                   KR_ECONFIG);
  const char *bad[] = {"127.0.0.1:26379/x"};
  kr__redis_opts badsent = {
      .sentinels = bad, .n_sentinels = 1, .master_name = "m"};
  ck_assert_int_eq(kr__redis_new(t.base, &badsent, &r, err, sizeof(err)),
                   KR_EADDR);
  ck_assert_int_eq(kr__redis_new(NULL, &none, &r, err, sizeof(err)), KR_EINVAL);
  kr__redis_free(NULL);

  /* A valid client that never reached a server: commands fail fast,
   * subscriptions are checked, free releases everything. */
  kr__redis_opts ok = {.url = "redis://[::1]:1/3"};
  ck_assert_int_eq(kr__redis_new(t.base, &ok, &r, err, sizeof(err)), 0);
  ck_assert_str_eq(kr__redis_server(r), "[::1]:1");
  const char *ping[] = {"PING"};
  ck_assert_int_eq(kr__redis_command_argv(r, 1, ping, NULL, NULL, NULL),
                   KR_ECLOSED);
  ck_assert_int_eq(kr__redis_command_argv(r, 0, ping, NULL, NULL, NULL),
                   KR_EINVAL);
  ck_assert_int_eq(kr__redis_subscribe(r, "a", on_message, &t), 0);
  ck_assert_int_eq(kr__redis_subscribe(r, "a", on_message, &t), KR_EINVAL);
  ck_assert_int_eq(kr__redis_subscribe(r, "", on_message, &t), KR_EINVAL);
  ck_assert_int_eq(kr__redis_is_up(r), 0);
  kr__redis_free(r);
  teardown_ctx(&t);
}
END_TEST

START_TEST(t_basic) {
  tctx t;
  setup_ctx(&t);
  int port = tr_free_port();
  tr_redis_start(port, NULL);
  kr__redis_opts o = {.url = url_for(port, NULL, NULL)};
  client(&t, &o);
  wait_ups(&t, 1, 5000);
  ck_assert_int_eq(kr__redis_is_up(t.r), 1);
  char expect[64];
  snprintf(expect, sizeof(expect), "127.0.0.1:%d", port);
  ck_assert_str_eq(kr__redis_server(t.r), expect);

  treply x = command(&t, 3, "SET", "k", "v");
  ck_assert_int_eq(x.type, REDIS_REPLY_STATUS);
  ck_assert_str_eq(x.str, "OK");
  x = command(&t, 2, "GET", "k");
  ck_assert_int_eq(x.type, REDIS_REPLY_STRING);
  ck_assert_str_eq(x.str, "v");
  /* A Redis error is a reply, not a failure. */
  x = command(&t, 2, "INCR", "k");
  ck_assert_int_eq(x.err, 0);
  ck_assert_int_eq(x.type, REDIS_REPLY_ERROR);
  /* Binary arguments with explicit lengths. */
  const char *argv[] = {"SET", "bin", "a\0b"};
  size_t lens[] = {3, 3, 3};
  treply y = {0};
  ck_assert_int_eq(kr__redis_command_argv(t.r, 3, argv, lens, on_reply, &y), 0);
  ck_assert(run_until(t.base, cond_reply, &y, 5000));
  x = command(&t, 2, "STRLEN", "bin");
  ck_assert_int_eq(x.integer, 3);

  /* SELECT from the URL's path: db 2 is another keyspace. */
  tctx t2;
  setup_ctx(&t2);
  kr__redis_opts o2 = {.url = url_for(port, NULL, "/2")};
  client(&t2, &o2);
  wait_ups(&t2, 1, 5000);
  x = command(&t2, 2, "GET", "k");
  ck_assert_int_eq(x.type, REDIS_REPLY_NIL);
  command(&t2, 3, "SET", "k", "db2");
  x = command(&t, 2, "GET", "k");
  ck_assert_str_eq(x.str, "v");
  kr__redis_free(t2.r);
  event_base_free(t2.base);
  teardown_ctx(&t);
}
END_TEST

typedef struct pipe_state {
  int calls, in_order;
  long long next;
} pipe_state;

static void on_incr(const redisReply *rep, int err, void *ud) {
  pipe_state *p = ud;
  p->calls++;
  if (rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == p->next)
    p->in_order++;
  p->next++;
}

static int cond_pipe(void *arg) {
  return ((pipe_state *)arg)->calls >= 10000;
}

START_TEST(t_pipeline) {
  tctx t;
  setup_ctx(&t);
  int port = tr_free_port();
  tr_redis_start(port, NULL);
  /* Under valgrind 10,000 replies take longer than the default 2 s. */
  kr__redis_opts o = {.url = url_for(port, NULL, NULL),
                      .command_timeout_ms = getenv("KR_VALGRIND") ? 30000 : 0};
  client(&t, &o);
  wait_ups(&t, 1, 5000);
  pipe_state p = {.next = 1};
  const char *argv[] = {"INCR", "counter"};
  /* 10,000 commands in one loop iteration: the default bound exactly. */
  for (int i = 0; i < 10000; i++)
    ck_assert_int_eq(kr__redis_command_argv(t.r, 2, argv, NULL, on_incr, &p),
                     0);
  ck_assert_uint_eq(kr__redis_pending(t.r), 10000);
  ck_assert_int_eq(kr__redis_command_argv(t.r, 2, argv, NULL, on_incr, &p),
                   KR_EAGAIN);
  ck_assert_int_eq(p.calls, 0); /* never from inside the call */
  ck_assert(run_until(t.base, cond_pipe, &p, 40000));
  ck_assert_int_eq(p.calls, 10000);
  ck_assert_int_eq(p.in_order, 10000);
  ck_assert_uint_eq(kr__redis_pending(t.r), 0);
  treply x = command(&t, 2, "GET", "counter");
  ck_assert_str_eq(x.str, "10000");
  teardown_ctx(&t);
}
END_TEST

/* A listener that accepts and never answers. */
static evutil_socket_t silent_fds[64];
static int n_silent;
static void on_silent_accept(struct evconnlistener *l, evutil_socket_t fd,
                             struct sockaddr *a, int len, void *ud) {
  if (n_silent < 64)
    silent_fds[n_silent++] = fd;
  else
    evutil_closesocket(fd);
}

START_TEST(t_connect_timeout) {
  tctx t;
  setup_ctx(&t);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct evconnlistener *lis = evconnlistener_new_bind(
      t.base, on_silent_accept, NULL, LEV_OPT_CLOSE_ON_FREE, 16,
      (struct sockaddr *)&a, sizeof(a));
  ck_assert_ptr_nonnull(lis);
  socklen_t len = sizeof(a);
  getsockname(evconnlistener_get_fd(lis), (struct sockaddr *)&a, &len);
  kr__redis_opts o = {.url = url_for(ntohs(a.sin_port), NULL, NULL),
                      .connect_timeout_ms = 300};
  client(&t, &o);
  kr_time_us t0 = kr__now_us();
  wait_downs(&t, 1, 3000);
  kr_time_us took = kr__now_us() - t0;
  ck_assert_int_eq(t.last_err, KR_ETIMEDOUT);
  ck_assert_msg(took >= 290000 && took < 3000000, "took %lld us",
                (long long)took);
  ck_assert_int_ge(n_silent, 1);
  ck_assert_int_eq(t.ups, 0);
  const char *ping[] = {"PING"};
  ck_assert_int_eq(kr__redis_command_argv(t.r, 1, ping, NULL, NULL, NULL),
                   KR_ECLOSED);
  /* It keeps trying, with backoff. */
  wait_downs(&t, 2, 3000);
  ck_assert_int_eq(t.last_err, KR_ETIMEDOUT);
  kr__redis_free(t.r);
  t.r = NULL;
  evconnlistener_free(lis);
  for (int i = 0; i < n_silent; i++)
    evutil_closesocket(silent_fds[i]);
  teardown_ctx(&t);
}
END_TEST

START_TEST(t_command_timeout) {
  tctx t;
  setup_ctx(&t);
  int port = tr_free_port();
  pid_t pid = tr_redis_start(port, NULL);
  kr__redis_opts o = {.url = url_for(port, NULL, NULL),
                      .command_timeout_ms = 500,
                      .connect_timeout_ms = 500};
  client(&t, &o);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "c", on_message, &t), 0);
  wait_ups(&t, 1, 5000);
  wait_sub_ups(&t, 1, 5000);

  kill(pid, SIGSTOP);
  treply x[3];
  memset(x, 0, sizeof(x));
  const char *ping[] = {"PING"};
  kr_time_us t0 = kr__now_us();
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(
        kr__redis_command_argv(t.r, 1, ping, NULL, on_reply, &x[i]), 0);
  ck_assert(run_until(t.base, cond_reply, &x[2], 3000));
  kr_time_us took = kr__now_us() - t0;
  ck_assert_msg(took >= 490000 && took < 3000000, "took %lld us",
                (long long)took);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(x[i].calls, 1);
    ck_assert_int_eq(x[i].err, KR_ETIMEDOUT);
  }
  ck_assert_int_ge(t.downs, 1);
  ck_assert_int_eq(t.last_err, KR_ETIMEDOUT);
  /* The pub/sub connection is recycled with it. */
  wait_sub_downs(&t, 1, 1000);
  ck_assert_int_eq(kr__redis_command_argv(t.r, 1, ping, NULL, NULL, NULL),
                   KR_ECLOSED);
  /* Attempts against the stopped server time out too. */
  wait_downs(&t, 2, 3000);

  kill(pid, SIGCONT);
  wait_ups(&t, 2, 8000);
  wait_sub_ups(&t, 2, 8000);
  treply y = command(&t, 3, "SET", "after", "cont");
  ck_assert_str_eq(y.str, "OK");
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(x[i].calls, 1); /* exactly once */
  teardown_ctx(&t);
}
END_TEST

static void publish(tctx *pub, const char *chan, const char *msg, size_t len) {
  const char *argv[] = {"PUBLISH", chan, msg};
  size_t lens[] = {7, strlen(chan), len};
  static treply x;
  memset(&x, 0, sizeof(x));
  ck_assert_int_eq(kr__redis_command_argv(pub->r, 3, argv, lens, on_reply, &x),
                   0);
  ck_assert(run_until(pub->base, cond_reply, &x, 5000));
  ck_assert_int_eq(x.type, REDIS_REPLY_INTEGER);
}

START_TEST(t_restart) {
  tctx t;
  setup_ctx(&t);
  int port = tr_free_port();
  pid_t pid = tr_redis_start(port, NULL);
  kr__redis_opts o = {.url = url_for(port, NULL, NULL)};
  client(&t, &o);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "news", on_message, &t), 0);
  wait_ups(&t, 1, 5000);
  wait_sub_ups(&t, 1, 5000);
  publish(&t, "news", "one", 3);
  wait_msgs(&t, 1, 5000);
  ck_assert_str_eq(t.last_chan, "news");

  tr_end_proc(pid);
  wait_downs(&t, 1, 5000);
  wait_sub_downs(&t, 1, 5000);
  ck_assert_int_eq(kr__redis_is_up(t.r), 0);
  const char *ping[] = {"PING"};
  ck_assert_int_eq(kr__redis_command_argv(t.r, 1, ping, NULL, NULL, NULL),
                   KR_ECLOSED);

  tr_redis_start(port, NULL);
  wait_ups(&t, 2, 10000);
  wait_sub_ups(&t, 2, 10000);
  publish(&t, "news", "two", 3);
  wait_msgs(&t, 2, 5000);
  ck_assert_int_eq(t.last_len, 3);
  ck_assert(memcmp(t.last_msg, "two", 3) == 0);
  teardown_ctx(&t);
}
END_TEST

/* Publishes until the subscriber has it (a late SUBSCRIBE has no event of
 * its own to wait for: each PUBLISH reply says how many received it). */
static int publish_until_received(tctx *t, const char *chan) {
  for (int i = 0; i < 200; i++) {
    const char *argv[] = {"PUBLISH", chan, "late"};
    treply x = {0};
    ck_assert_int_eq(kr__redis_command_argv(t->r, 3, argv, NULL, on_reply, &x),
                     0);
    ck_assert(run_until(t->base, cond_reply, &x, 5000));
    if (x.integer > 0)
      return 1;
  }
  return 0;
}

START_TEST(t_pubsub) {
  tctx t;
  setup_ctx(&t);
  int port = tr_free_port();
  tr_redis_start(port, NULL);
  kr__redis_opts o = {.url = url_for(port, NULL, NULL)};
  client(&t, &o);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "a", on_message, &t), 0);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "b", on_message, &t), 0);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "b", on_message, &t), KR_EINVAL);
  wait_ups(&t, 1, 5000);
  wait_sub_ups(&t, 1, 5000);
  publish(&t, "b", "x\0y\n", 4);
  wait_msgs(&t, 1, 5000);
  ck_assert_str_eq(t.last_chan, "b");
  ck_assert_uint_eq(t.last_len, 4);
  ck_assert(memcmp(t.last_msg, "x\0y\n", 4) == 0);
  publish(&t, "a", "", 0);
  wait_msgs(&t, 2, 5000);
  ck_assert_str_eq(t.last_chan, "a");
  ck_assert_uint_eq(t.last_len, 0);
  /* Not subscribed: nothing arrives (a later message proves order). */
  publish(&t, "zzz", "no", 2);
  /* A subscription added while connected. */
  ck_assert_int_eq(kr__redis_subscribe(t.r, "late", on_message, &t), 0);
  ck_assert(publish_until_received(&t, "late"));
  wait_msgs(&t, 3, 5000);
  ck_assert_str_eq(t.last_chan, "late");
  ck_assert_int_eq(t.sub_ups, 1);
  teardown_ctx(&t);
}
END_TEST

START_TEST(t_auth) {
  kr_log_set_handler(on_log, NULL);
  kr_log_set_level(KR_LOG_DEBUG);
  tctx t;
  setup_ctx(&t);
  int port = tr_free_port();
  tr_redis_start(port, "--requirepass", "s3cret", NULL);

  kr__redis_opts o = {.url = url_for(port, ":s3cret", "/1")};
  client(&t, &o);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "c", on_message, &t), 0);
  wait_ups(&t, 1, 5000);
  wait_sub_ups(&t, 1, 5000);
  treply x = command(&t, 3, "SET", "k", "v");
  ck_assert_str_eq(x.str, "OK");
  publish(&t, "c", "hi", 2);
  wait_msgs(&t, 1, 5000);

  /* The ACL form user:password (Redis 6+: the "default" user). */
  tctx u;
  setup_ctx(&u);
  kr__redis_opts ou = {.url = url_for(port, "default:s3cret", NULL)};
  client(&u, &ou);
  wait_ups(&u, 1, 5000);
  kr__redis_free(u.r);
  event_base_free(u.base);

  /* Wrong password: a clear error, for every attempt. */
  tctx w;
  setup_ctx(&w);
  kr__redis_opts ow = {.url = url_for(port, ":wrong%20pass", NULL)};
  client(&w, &ow);
  wait_downs(&w, 1, 5000);
  ck_assert_int_eq(w.last_err, KR_EAUTH);
  ck_assert_msg(strstr(w.last_why, "WRONGPASS") ||
                    strstr(w.last_why, "invalid"),
                "why: %s", w.last_why);
  wait_downs(&w, 2, 5000);
  ck_assert_int_eq(w.last_err, KR_EAUTH);
  ck_assert_int_eq(w.ups, 0);
  kr__redis_free(w.r);
  event_base_free(w.base);

  /* No password at all. */
  tctx n;
  setup_ctx(&n);
  kr__redis_opts on = {.url = url_for(port, NULL, NULL)};
  client(&n, &on);
  wait_downs(&n, 1, 5000);
  ck_assert_int_eq(n.last_err, KR_EAUTH);
  ck_assert_msg(strstr(n.last_why, "NOAUTH"), "why: %s", n.last_why);
  kr__redis_free(n.r);
  event_base_free(n.base);

  teardown_ctx(&t);
  ck_assert_msg(strstr(logbuf, "redis_connected"), "logs: %s", logbuf);
  ck_assert_msg(strstr(logbuf, "redis_disconnected"), "logs: %s", logbuf);
  ck_assert_msg(!strstr(logbuf, "s3cret") && !strstr(logbuf, "wrong"),
                "password logged: %s", logbuf);
  kr_log_set_handler(NULL, NULL);
}
END_TEST

START_TEST(t_free_inside) {
  tctx t;
  setup_ctx(&t);
  int port = tr_free_port();
  tr_redis_start(port, NULL);
  kr__redis_opts o = {.url = url_for(port, NULL, NULL)};

  /* Inside a reply callback, with more commands pending: they fail once
   * with KR_ECLOSED before kr__redis_free() returns. */
  client(&t, &o);
  wait_ups(&t, 1, 5000);
  treply x[5];
  memset(x, 0, sizeof(x));
  x[0].free_ctx = &t;
  const char *ping[] = {"PING"};
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(
        kr__redis_command_argv(t.r, 1, ping, NULL, on_reply, &x[i]), 0);
  ck_assert(run_until(t.base, cond_reply, &x[0], 5000));
  ck_assert_ptr_null(t.r);
  ck_assert_int_eq(x[0].calls, 1);
  ck_assert_int_eq(x[0].err, 0);
  for (int i = 1; i < 5; i++) {
    ck_assert_int_eq(x[i].calls, 1);
    ck_assert_int_eq(x[i].err, KR_ECLOSED);
  }
  /* The loop carries on without touching the freed client. */
  event_base_loop(t.base, EVLOOP_NONBLOCK);
  for (int i = 1; i < 5; i++)
    ck_assert_int_eq(x[i].calls, 1);

  /* Inside the state callback. */
  int ups = t.ups;
  t.free_on_up = 1;
  client(&t, &o);
  wait_ups(&t, ups + 1, 5000);
  ck_assert_ptr_null(t.r);
  t.free_on_up = 0;

  /* Inside a message callback. */
  client(&t, &o);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "f", on_message, &t), 0);
  wait_ups(&t, ups + 2, 5000);
  wait_sub_ups(&t, 1, 5000);
  tctx pub;
  memset(&pub, 0, sizeof(pub));
  pub.base = t.base; /* one loop for both clients */
  client(&pub, &o);
  wait_ups(&pub, 1, 5000);
  t.free_on_msg = 1;
  const char *argv[] = {"PUBLISH", "f", "bye"};
  ck_assert_int_eq(kr__redis_command_argv(pub.r, 3, argv, NULL, NULL, NULL), 0);
  ck_assert(run_until(t.base, cond_freed, &t, 5000));
  t.free_on_msg = 0;
  kr__redis_free(pub.r);

  /* Outside any callback, with commands pending. */
  client(&t, &o);
  wait_ups(&t, ups + 3, 5000);
  memset(x, 0, sizeof(x));
  for (int i = 0; i < 5; i++)
    ck_assert_int_eq(
        kr__redis_command_argv(t.r, 1, ping, NULL, on_reply, &x[i]), 0);
  kr__redis_free(t.r);
  t.r = NULL;
  for (int i = 0; i < 5; i++) {
    ck_assert_int_eq(x[i].calls, 1);
    ck_assert_int_eq(x[i].err, KR_ECLOSED);
  }
  teardown_ctx(&t);
}
END_TEST

/* ------------------------------------------------------------- sentinel */

static int sentinel_ready(int sport, int rport) {
  redisReply *rep = tr_sync_cmd(sport, "SENTINEL replicas mymaster");
  int ok = 0;
  char want[16];
  snprintf(want, sizeof(want), "%d", rport);
  if (rep && rep->type == REDIS_REPLY_ARRAY) {
    for (size_t i = 0; i < rep->elements; i++) {
      redisReply *e = rep->element[i];
      int port_ok = 0, flags_ok = 0, link_ok = 0;
      for (size_t j = 0; e->type == REDIS_REPLY_ARRAY && j + 1 < e->elements;
           j += 2) {
        const char *k = e->element[j]->str, *v = e->element[j + 1]->str;
        if (!k || !v)
          continue;
        if (!strcmp(k, "port") && !strcmp(v, want))
          port_ok = 1;
        if (!strcmp(k, "flags") && !strcmp(v, "slave"))
          flags_ok = 1;
        if (!strcmp(k, "master-link-status") && !strcmp(v, "ok"))
          link_ok = 1;
      }
      ok |= port_ok && flags_ok && link_ok;
    }
  }
  if (rep)
    freeReplyObject(rep);
  return ok;
}

START_TEST(t_sentinel) {
  tctx t;
  setup_ctx(&t);
  int mport = tr_free_port(), rport = tr_free_port(), sport = tr_free_port();
  while (rport == mport)
    rport = tr_free_port();
  while (sport == mport || sport == rport)
    sport = tr_free_port();
  char mportstr[16];
  snprintf(mportstr, sizeof(mportstr), "%d", mport);
  pid_t master = tr_redis_start(mport, NULL);
  tr_redis_start(rport, "--replicaof", "127.0.0.1", mportstr, NULL);

  const char *dir = tr_tmpdir();
  char conf[700];
  snprintf(conf, sizeof(conf), "%s/sentinel.conf", dir);
  FILE *f = fopen(conf, "w");
  ck_assert_ptr_nonnull(f);
  fprintf(f,
          "port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\n"
          "sentinel monitor mymaster 127.0.0.1 %d 1\n"
          "sentinel down-after-milliseconds mymaster 1000\n"
          "sentinel failover-timeout mymaster 3000\n"
          "sentinel parallel-syncs mymaster 1\n",
          sport, dir, mport);
  fclose(f);
  char *sargv[] = {"redis-sentinel", conf, NULL};
  pid_t sent = tr_spawn(sargv, "sentinel.log");
  tr_wait_ready(sent, sport);

  char saddr[32];
  snprintf(saddr, sizeof(saddr), "127.0.0.1:%d", sport);
  /* The first sentinel listed is down: discovery moves on to the next. */
  char dead[32];
  snprintf(dead, sizeof(dead), "127.0.0.1:%d", tr_free_port());
  const char *sentinels[] = {dead, saddr};
  kr__redis_opts o = {.sentinels = sentinels,
                      .n_sentinels = 2,
                      .master_name = "mymaster",
                      .connect_timeout_ms = 500,
                      .command_timeout_ms = 500};
  client(&t, &o);
  ck_assert_int_eq(kr__redis_subscribe(t.r, "s", on_message, &t), 0);
  wait_ups(&t, 1, 10000);
  wait_sub_ups(&t, 1, 10000);
  char expect[32];
  snprintf(expect, sizeof(expect), "127.0.0.1:%d", mport);
  ck_assert_str_eq(kr__redis_server(t.r), expect);
  treply x = command(&t, 3, "SET", "k", "before");
  ck_assert_str_eq(x.str, "OK");

  /* The sentinel must know a synced replica before a failover can work. */
  int ready = 0;
  for (int i = 0; i < 300 && !(ready = sentinel_ready(sport, rport)); i++)
    tr_pause_ms(100);
  ck_assert_msg(ready, "sentinel never saw the replica in sync");
  x = command(&t, 2, "WAIT", "1", "2000"); /* "k" reached the replica */

  kr_time_us t0 = kr__now_us();
  tr_end_proc(master); /* kill -9 */
  snprintf(expect, sizeof(expect), "127.0.0.1:%d", rport);
  int ups = t.ups;
  for (int i = 0; i < 40; i++) {
    wait_ups(&t, ups + 1, 30000);
    ups = t.ups;
    if (strcmp(kr__redis_server(t.r), expect) == 0)
      break;
  }
  kr_time_us took = kr__now_us() - t0;
  ck_assert_str_eq(kr__redis_server(t.r), expect);
  fprintf(stderr, "failover followed in %lld ms\n", (long long)(took / 1000));
  ck_assert_msg(took < 20000000, "took %lld ms", (long long)(took / 1000));
  x = command(&t, 2, "GET", "k");
  ck_assert_str_eq(x.str, "before");
  x = command(&t, 3, "SET", "k", "after");
  ck_assert_str_eq(x.str, "OK");
  /* Subscriptions follow the master too. */
  wait_sub_ups(&t, 2, 10000);
  publish(&t, "s", "moved", 5);
  wait_msgs(&t, 1, 5000);
  teardown_ctx(&t);
}
END_TEST

/* A scripted sentinel on loopback: answers SENTINEL queries with
 * answer_port and SUBSCRIBE with a confirmation, and can push a
 * "+switch-master" message. Requests are parsed with hiredis's reader. */
typedef struct fake_conn {
  struct fake_sentinel *fs;
  struct bufferevent *bev;
  redisReader *rd;
  int subscribed;
} fake_conn;

typedef struct fake_sentinel {
  struct evconnlistener *lis;
  int port;
  int answer_port;
  int queries;
  fake_conn *conns[64];
  int nconns;
} fake_sentinel;

static void fake_close(fake_conn *c) {
  for (int i = 0; i < c->fs->nconns; i++)
    if (c->fs->conns[i] == c)
      c->fs->conns[i] = NULL;
  bufferevent_free(c->bev);
  redisReaderFree(c->rd);
  free(c);
}

static void fake_request(fake_conn *c, const redisReply *q) {
  struct evbuffer *out = bufferevent_get_output(c->bev);
  const char *cmd = q->type == REDIS_REPLY_ARRAY && q->elements &&
                            q->element[0]->type == REDIS_REPLY_STRING
                        ? q->element[0]->str
                        : "";
  if (strcasecmp(cmd, "SENTINEL") == 0) {
    char port[16];
    snprintf(port, sizeof(port), "%d", c->fs->answer_port);
    c->fs->queries++;
    evbuffer_add_printf(out, "*2\r\n$9\r\n127.0.0.1\r\n$%zu\r\n%s\r\n",
                        strlen(port), port);
  } else if (strcasecmp(cmd, "SUBSCRIBE") == 0 && q->elements == 2) {
    c->subscribed = 1;
    evbuffer_add_printf(out, "*3\r\n$9\r\nsubscribe\r\n$%zu\r\n%s\r\n:1\r\n",
                        q->element[1]->len, q->element[1]->str);
  } else {
    evbuffer_add_printf(out, "-ERR unknown command\r\n");
  }
}

static void fake_read(struct bufferevent *bev, void *arg) {
  fake_conn *c = arg;
  char buf[4096];
  size_t n;
  while ((n = bufferevent_read(bev, buf, sizeof(buf))) > 0)
    redisReaderFeed(c->rd, buf, n);
  void *q = NULL;
  while (redisReaderGetReply(c->rd, &q) == REDIS_OK && q) {
    fake_request(c, q);
    freeReplyObject(q);
    q = NULL;
  }
}

static void fake_event(struct bufferevent *bev, short what, void *arg) {
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
    fake_close(arg);
}

static void fake_accept(struct evconnlistener *l, evutil_socket_t fd,
                        struct sockaddr *a, int len, void *ud) {
  fake_sentinel *fs = ud;
  fake_conn *c = calloc(1, sizeof(*c));
  c->fs = fs;
  c->rd = redisReaderCreate();
  c->bev = bufferevent_socket_new(evconnlistener_get_base(l), fd,
                                  BEV_OPT_CLOSE_ON_FREE);
  bufferevent_setcb(c->bev, fake_read, NULL, fake_event, c);
  bufferevent_enable(c->bev, EV_READ | EV_WRITE);
  ck_assert_int_lt(fs->nconns, 64);
  fs->conns[fs->nconns++] = c;
}

static void fake_start(fake_sentinel *fs, struct event_base *base) {
  memset(fs, 0, sizeof(*fs));
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  fs->lis = evconnlistener_new_bind(base, fake_accept, fs,
                                    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                    16, (struct sockaddr *)&a, sizeof(a));
  ck_assert_ptr_nonnull(fs->lis);
  socklen_t len = sizeof(a);
  getsockname(evconnlistener_get_fd(fs->lis), (struct sockaddr *)&a, &len);
  fs->port = ntohs(a.sin_port);
}

static void fake_switch(fake_sentinel *fs, int from, int to) {
  char msg[128];
  snprintf(msg, sizeof(msg), "mymaster 127.0.0.1 %d 127.0.0.1 %d", from, to);
  fs->answer_port = to;
  for (int i = 0; i < fs->nconns; i++)
    if (fs->conns[i] && fs->conns[i]->subscribed)
      evbuffer_add_printf(
          bufferevent_get_output(fs->conns[i]->bev),
          "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%zu\r\n%s\r\n",
          strlen(msg), msg);
}

static void fake_free(fake_sentinel *fs) {
  for (int i = 0; i < fs->nconns; i++)
    if (fs->conns[i])
      fake_close(fs->conns[i]);
  evconnlistener_free(fs->lis);
}

static int want_err;
static int cond_down_err(void *arg) {
  tctx *t = arg;
  return t->downs >= want_downs && t->last_err == want_err;
}

/* ROLE guards against a sentinel naming a replica; "+switch-master" moves
 * the client at once. */
START_TEST(t_sentinel_role) {
  tctx t;
  setup_ctx(&t);
  int mport = tr_free_port(), m2port = tr_free_port(), rport = tr_free_port();
  while (m2port == mport)
    m2port = tr_free_port();
  while (rport == mport || rport == m2port)
    rport = tr_free_port();
  char nowhere[16];
  snprintf(nowhere, sizeof(nowhere), "%d", tr_free_port());
  tr_redis_start(mport, NULL);
  tr_redis_start(m2port, NULL);
  tr_redis_start(rport, "--replicaof", "127.0.0.1", nowhere, NULL);
  fake_sentinel fs;
  fake_start(&fs, t.base);
  fs.answer_port = rport;
  char saddr[32];
  snprintf(saddr, sizeof(saddr), "127.0.0.1:%d", fs.port);
  const char *sentinels[] = {saddr};
  kr__redis_opts o = {.sentinels = sentinels,
                      .n_sentinels = 1,
                      .master_name = "mymaster",
                      .backoff_base_ms = 50,
                      .backoff_cap_ms = 200};
  client(&t, &o);
  want_downs = 1;
  want_err = KR_ESTATE;
  ck_assert(run_until(t.base, cond_down_err, &t, 5000));
  ck_assert_msg(strstr(t.last_why, "not a master"), "why: %s", t.last_why);
  /* Discovery is asked again after each refusal. */
  want_downs = 2;
  ck_assert(run_until(t.base, cond_down_err, &t, 5000));
  ck_assert_int_ge(fs.queries, 2);
  ck_assert_int_eq(t.ups, 0);

  fs.answer_port = mport;
  wait_ups(&t, 1, 5000);
  char expect[32];
  snprintf(expect, sizeof(expect), "127.0.0.1:%d", mport);
  ck_assert_str_eq(kr__redis_server(t.r), expect);
  treply x = command(&t, 3, "SET", "k", "m1");
  ck_assert_str_eq(x.str, "OK");

  /* Wait for the +switch-master subscription, then announce a failover. */
  int subscribed = 0;
  for (int i = 0; i < 500 && !subscribed; i++) {
    for (int j = 0; j < fs.nconns; j++)
      subscribed |= fs.conns[j] && fs.conns[j]->subscribed;
    if (!subscribed)
      event_base_loop(t.base, EVLOOP_ONCE);
  }
  ck_assert(subscribed);
  fake_switch(&fs, mport, m2port);
  wait_ups(&t, 2, 5000);
  snprintf(expect, sizeof(expect), "127.0.0.1:%d", m2port);
  ck_assert_str_eq(kr__redis_server(t.r), expect);
  x = command(&t, 2, "GET", "k");
  ck_assert_int_eq(x.type, REDIS_REPLY_NIL); /* another server indeed */
  kr__redis_free(t.r);
  t.r = NULL;
  fake_free(&fs);
  teardown_ctx(&t);
}
END_TEST

/* ------------------------------------------------------------------ main */

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const char *only = getenv("CK_RUN_CASE");
  int need_server = !only || strcmp(only, "config") != 0;
  if (need_server && !tr_have_program("redis-server")) {
    fprintf(stderr, "SKIP: redis-server not found in PATH: these tests need "
                    "a real Redis (apt-get install redis-server)\n");
    return 77;
  }
  if (only && strcmp(only, "sentinel") == 0 &&
      !tr_have_program("redis-sentinel")) {
    fprintf(stderr, "SKIP: redis-sentinel not found in PATH: the Sentinel "
                    "test needs it (apt-get install redis-sentinel)\n");
    return 77;
  }
  tr_on_failure(abort_case);
  atexit(tr_kill_all);
  Suite *s = suite_create("redis");
  struct {
    const char *name;
    const TTest *test;
  } cases[] = {
      {"config", t_config_errors},
      {"basic", t_basic},
      {"pipeline", t_pipeline},
      {"connect_timeout", t_connect_timeout},
      {"command_timeout", t_command_timeout},
      {"restart", t_restart},
      {"pubsub", t_pubsub},
      {"auth", t_auth},
      {"free_inside", t_free_inside},
      {"sentinel", t_sentinel},
      {"sentinel_role", t_sentinel_role},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    TCase *tc = tcase_create(cases[i].name);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, cases[i].test);
    suite_add_tcase(s, tc);
  }
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
