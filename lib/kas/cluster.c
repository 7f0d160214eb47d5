/* The kas cluster glue (cluster.h): drives the presence core
 * (core/presence.h) with a libevent timer and carries its commands and
 * replies over the Redis client (io/redis.h).
 *
 * One timer does the periodic work ("pump"): it starts queued jobs
 * (lookups, listings, sweeps; they never start inside the call that asks
 * for them, so their callbacks always come from the loop), runs the
 * presence tick (heartbeat, refreshes, delayed writes) and re-arms itself
 * for the deadline the tick names. Every command of this instance goes
 * through the one command connection of kr__redis, in the order the
 * presence produced it; that order is what makes an HDEL followed by an
 * HSET of the same field safe.
 *
 * A job command carries a small request record (job, reply tag); its
 * reply is flattened into kr__pstr elements as presence.h describes and
 * fed back; a complete step runs the next one. A job that failed,
 * finished or was cancelled stays allocated (unlinked) until its last
 * outstanding reply arrived, so late replies are dropped safely;
 * kr__redis guarantees each reply callback runs exactly once, at the
 * latest inside kr__redis_free().
 *
 * Re-entrancy: every entry from the loop (timer, Redis callbacks) runs
 * between enter() and leave(); kr__cluster_free() inside a callback only
 * marks the object and frees the Redis client (whose pending callbacks
 * then run at once and see the mark); the rest is released by the
 * outermost leave().
 */
#include <event2/event.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <kasroute/error.h>

#include "io/conn.h"
#include "io/log.h"
#include "io/redis.h"
#include "kas/cluster.h"

/* How long a clean shutdown waits for Redis to confirm the deletions. */
#define SHUTDOWN_WAIT_MS 2000
/* Retry delay of a state rewrite that could not be queued. */
#define RESYNC_RETRY_MS 100
/* The timer runs at least this often, so a wall-clock step cannot park
 * the presence for long. */
#define MAX_TIMER_MS 60000
/* Commands in flight on the Redis connection: a full refresh batch
 * (batch_agents * 3) and a shutdown chunk (8 * batch_agents + 1) fit
 * beside lookups with the defaults. */
#define MAX_PENDING 65536
/* A state rewrite waits while more commands than this are in flight. */
#define RESYNC_MAX_PENDING (MAX_PENDING / 4)

typedef enum { RUN_LOOKUP, RUN_LIST, RUN_SWEEP } run_kind;
typedef enum { IN_NONE, IN_QUEUE, IN_ACTIVE } run_where;

/* One job: a lookup (the public handle), a listing or a sweep. */
struct kr__cluster_lookup {
  kr__cluster *c;
  run_kind kind;
  run_where where;
  kr__presence_job *job;
  kr__cluster_lookup_cb lookup_cb;
  kr__cluster_list_cb list_cb;
  void *ud;
  size_t outstanding; /* job commands sent and not answered yet */
  int dead;           /* finished, failed or cancelled */
  struct kr__cluster_lookup *prev, *next;
};
typedef struct kr__cluster_lookup run;

typedef struct runlist {
  run *head, *tail;
} runlist;

/* The user data of one job command. */
typedef struct jreq {
  run *r;
  uint32_t tag;
} jreq;

struct kr__cluster {
  struct event_base *base;
  kr__registry *reg;
  kr__cluster_cbs cbs;
  void *ud;
  kr__redis *redis;
  kr__presence *p;
  kr__presence_cmds cmds; /* scratch: filled and sent at once */
  struct event *timer;    /* pump */
  kr_time_us timer_at;    /* when the armed timer fires (0: not armed) */
  struct event *shut_timer;
  runlist queue, active;
  run *sweep;
  kr__pstr *items; /* flattened reply */
  size_t items_cap;
  char (*ints)[24]; /* text of integer replies */
  size_t ints_cap;
  int depth, freed;
  unsigned sub_ups;
  unsigned cmd_ups; /* command link connections so far */
  int resync; /* a write could not be queued: rewrite everything */
  uint64_t write_errs, bad_wakes;
  int shutting, shut_more, shut_fired;
  size_t shut_pending;
  void (*done)(void *);
  void *done_ud;
};

/* ---------------------------------------------------------------- helpers */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t random_u64(void) {
  uint64_t v = 0;
  if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
    v = (uint64_t)kr__now_us() * 6364136223846793005ull + (uint64_t)now_ms();
  return v;
}

static void wipe(void *p, size_t n) {
  volatile unsigned char *v = p;
  for (size_t i = 0; i < n; i++)
    v[i] = 0;
}

static void set_err(char *err, size_t errlen, const char *msg) {
  if (err && errlen)
    snprintf(err, errlen, "%s", msg);
}

/* Logs the 1st, 2nd, 4th, 8th... occurrence: a persistent failure stays
 * visible without flooding the log. */
static int log_this(uint64_t *count) {
  uint64_t n = ++*count;
  return (n & (n - 1)) == 0;
}

static void rl_push(runlist *l, run *r, run_where where) {
  r->prev = l->tail;
  r->next = NULL;
  if (l->tail)
    l->tail->next = r;
  else
    l->head = r;
  l->tail = r;
  r->where = where;
}

static void rl_unlink(kr__cluster *c, run *r) {
  runlist *l = r->where == IN_QUEUE ? &c->queue : &c->active;
  if (r->where == IN_NONE)
    return;
  if (r->prev)
    r->prev->next = r->next;
  else
    l->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    l->tail = r->prev;
  r->prev = r->next = NULL;
  r->where = IN_NONE;
}

/* -------------------------------------------------------- depth and free */

static void enter(kr__cluster *c) {
  c->depth++;
}

static void release(kr__cluster *c) {
  /* kr__redis_free() has answered every command: no job awaits a reply. */
  runlist *lists[2] = {&c->queue, &c->active};
  for (int i = 0; i < 2; i++)
    while (lists[i]->head) {
      run *r = lists[i]->head;
      rl_unlink(c, r);
      kr__presence_job_free(r->job);
      free(r);
    }
  kr__presence_free(c->p);
  kr__presence_cmds_free(&c->cmds);
  if (c->timer)
    event_free(c->timer);
  if (c->shut_timer)
    event_free(c->shut_timer);
  free(c->items);
  free(c->ints);
  free(c);
}

static void leave(kr__cluster *c) {
  if (--c->depth == 0 && c->freed)
    release(c);
}

/* ------------------------------------------------------------------ timer */

/* Runs the pump after delay_ms unless it is armed to run earlier. */
static void arm(kr__cluster *c, uint64_t delay_ms) {
  if (c->freed)
    return;
  if (delay_ms > MAX_TIMER_MS)
    delay_ms = MAX_TIMER_MS;
  kr_time_us when = kr__now_us() + delay_ms * 1000u;
  if (c->timer_at && c->timer_at <= when && evtimer_pending(c->timer, NULL))
    return;
  struct timeval tv = {(time_t)(delay_ms / 1000u),
                       (suseconds_t)((delay_ms % 1000u) * 1000u)};
  evtimer_add(c->timer, &tv);
  c->timer_at = when;
}

/* ---------------------------------------------------------------- replies */

/* Flattens a reply into c->items as presence.h describes: an array
 * becomes its elements, an array inside it (a SCAN reply's keys) its
 * elements in turn; integers become their decimal text. 0, KR_EPROTO
 * (deeper nesting) or KR_ENOMEM. */
static int flatten(kr__cluster *c, const redisReply *rep, size_t *out_n) {
  size_t n = 0, ints = 0;
  const redisReply *const *top = &rep;
  size_t ntop = 1;
  if (rep->type == REDIS_REPLY_ARRAY) {
    top = (const redisReply *const *)rep->element;
    ntop = rep->elements;
  }
  for (size_t i = 0; i < ntop; i++) {
    const redisReply *e = top[i];
    if (e->type == REDIS_REPLY_ARRAY) {
      for (size_t k = 0; k < e->elements; k++) {
        int t = e->element[k]->type;
        if (t == REDIS_REPLY_ARRAY)
          return KR_EPROTO;
        ints += t == REDIS_REPLY_INTEGER;
      }
      n += e->elements;
    } else {
      ints += e->type == REDIS_REPLY_INTEGER;
      n++;
    }
  }
  if (n > c->items_cap) {
    kr__pstr *p = realloc(c->items, n * sizeof(*p));
    if (!p)
      return KR_ENOMEM;
    c->items = p;
    c->items_cap = n;
  }
  if (ints > c->ints_cap) {
    char(*p)[24] = realloc(c->ints, ints * sizeof(*p));
    if (!p)
      return KR_ENOMEM;
    c->ints = p;
    c->ints_cap = ints;
  }
  size_t k = 0, ki = 0;
  for (size_t i = 0; i < ntop; i++) {
    const redisReply *e = top[i];
    const redisReply *const *sub = &e;
    size_t nsub = 1;
    if (e->type == REDIS_REPLY_ARRAY) {
      sub = (const redisReply *const *)e->element;
      nsub = e->elements;
    }
    for (size_t j = 0; j < nsub; j++) {
      const redisReply *x = sub[j];
      if (x->type == REDIS_REPLY_NIL) {
        c->items[k++] = (kr__pstr){NULL, 0};
      } else if (x->type == REDIS_REPLY_INTEGER) {
        int len =
            snprintf(c->ints[ki], sizeof(c->ints[ki]), "%lld", x->integer);
        c->items[k++] = (kr__pstr){c->ints[ki++], (size_t)len};
      } else {
        c->items[k++] = (kr__pstr){x->str ? x->str : "", x->len};
      }
    }
  }
  *out_n = k;
  return 0;
}

static void log_reply_error(kr__cluster *c, const char *what,
                            const redisReply *rep) {
  if (!log_this(&c->write_errs))
    return;
  char q[200];
  kr__log_quote(q, sizeof(q), rep->str ? rep->str : "",
                rep->str ? rep->len : 0);
  kr__log(KR_LOG_WARN, "cluster_write_failed",
          "instance=%s command=%s reason=%s count=%llu",
          kr__presence_instance(c->p), what, q,
          (unsigned long long)c->write_errs);
}

/* A write or heartbeat could not be queued: the presence believes it was
 * sent. The whole state is rewritten once the connection has room (a
 * lost connection rewrites it anyway when it comes back). */
static void write_failed(kr__cluster *c, int rc) {
  if (c->shutting)
    return;
  if (!c->resync && log_this(&c->write_errs))
    kr__log(KR_LOG_WARN, "cluster_write_failed",
            "instance=%s command=queue reason=%s count=%llu",
            kr__presence_instance(c->p), kr_err_name(rc),
            (unsigned long long)c->write_errs);
  c->resync = 1;
  arm(c, RESYNC_RETRY_MS);
}

static void on_write(const redisReply *rep, int err, void *ud) {
  kr__cluster *c = ud;
  enter(c);
  if (!c->freed && rep && rep->type == REDIS_REPLY_ERROR)
    log_reply_error(c, "write", rep);
  leave(c);
}

static void on_heartbeat(const redisReply *rep, int err, void *ud) {
  kr__cluster *c = ud;
  enter(c);
  if (!c->freed && rep) {
    if (rep->type == REDIS_REPLY_ERROR) {
      /* e.g. Redis before 6.2 refuses SET ... GET */
      log_reply_error(c, "heartbeat", rep);
    } else {
      kr__pstr old = {NULL, 0};
      if (rep->type == REDIS_REPLY_STRING)
        old = (kr__pstr){rep->str, rep->len};
      int rc = kr__presence_heartbeat_reply(c->p, &old, now_ms());
      if (rc == KR__PRESENCE_LOST) {
        kr__log(KR_LOG_WARN, "cluster_heartbeat_lost",
                "instance=%s action=rewrite", kr__presence_instance(c->p));
        arm(c, 0);
      } else if (rc == KR_ESTATE) {
        kr__log(KR_LOG_ERROR, "cluster_instance_conflict",
                "instance=%s reason=\"another live process uses this "
                "instance name; give each kas a unique one\"",
                kr__presence_instance(c->p));
      }
    }
  }
  leave(c);
}

static void on_job_reply(const redisReply *rep, int err, void *ud);

/* Sends c->cmds in order and clears it. Job commands belong to r (NULL:
 * there are none); after a job command fails, the job's other commands
 * are not sent. Writes use write_cb (shutdown counts its own). Returns 0
 * or the first job command's failure. */
static int send_cmds(kr__cluster *c, run *r, kr__redis_reply_fn write_cb) {
  int err = 0;
  for (size_t i = 0; i < c->cmds.n; i++) {
    kr__presence_cmd k;
    if (kr__presence_cmds_get(&c->cmds, i, &k) < 0)
      break;
    int rc;
    switch (k.op) {
    case KR__PRESENCE_OP_JOB: {
      if (!r || err)
        break;
      jreq *q = malloc(sizeof(*q));
      if (!q) {
        err = KR_ENOMEM;
        break;
      }
      q->r = r;
      q->tag = k.tag;
      rc = kr__redis_command_argv(c->redis, k.argc, k.argv, k.argvlen,
                                  on_job_reply, q);
      if (rc < 0) {
        free(q);
        err = rc;
      } else {
        r->outstanding++;
      }
      break;
    }
    case KR__PRESENCE_OP_HEARTBEAT:
      rc = kr__redis_command_argv(c->redis, k.argc, k.argv, k.argvlen,
                                  on_heartbeat, c);
      if (rc < 0)
        write_failed(c, rc);
      break;
    case KR__PRESENCE_OP_SUBSCRIBE:
      break; /* subscriptions go through kr__redis_subscribe() */
    case KR__PRESENCE_OP_WRITE:
    default:
      rc = kr__redis_command_argv(c->redis, k.argc, k.argv, k.argvlen, write_cb,
                                  c);
      if (rc < 0) {
        if (write_cb == on_write)
          write_failed(c, rc);
        else
          err = err ? err : rc;
      } else if (write_cb != on_write) {
        c->shut_pending++;
      }
      break;
    }
  }
  kr__presence_cmds_clear(&c->cmds);
  return err;
}

/* ------------------------------------------------------------------- jobs */

/* Ends r: reports to its owner (unless the cluster is being freed), frees
 * the job, and frees r unless replies are still outstanding. */
static void finish(run *r, int err) {
  kr__cluster *c = r->c;
  r->dead = 1;
  rl_unlink(c, r);
  if (c->sweep == r)
    c->sweep = NULL;
  if (!c->freed) {
    switch (r->kind) {
    case RUN_LOOKUP: {
      kr__presence_candidate *cand = NULL;
      size_t n = 0;
      if (err == 0) {
        n = kr__presence_lookup_candidates(r->job, 0, NULL, 0);
        if (n) {
          cand = calloc(n, sizeof(*cand));
          if (cand)
            n = kr__presence_lookup_candidates(r->job, random_u64(), cand, n);
          else
            err = KR_ENOMEM;
        }
      }
      r->lookup_cb(err ? NULL : cand, err ? 0 : n, err, r->ud);
      free(cand);
      break;
    }
    case RUN_LIST: {
      char *json = NULL;
      size_t len = 0;
      if (err == 0)
        err = kr__presence_list_json(r->job, &json, &len);
      r->list_cb(err ? NULL : json, err ? 0 : len, err, r->ud);
      kr__presence_json_free(c->p, json);
      break;
    }
    case RUN_SWEEP: {
      kr__presence_job_stats st;
      kr__presence_job_get_stats(r->job, &st);
      kr__log(err || st.lock_held ? KR_LOG_INFO : KR_LOG_DEBUG, "cluster_sweep",
              "instance=%s result=%s lock=%d keys=%llu fields=%llu "
              "stale=%llu unknown=%llu",
              kr__presence_instance(c->p), err ? kr_err_name(err) : "ok",
              st.lock_held, (unsigned long long)st.keys,
              (unsigned long long)st.fields, (unsigned long long)st.stale,
              (unsigned long long)st.unknown);
      break;
    }
    }
  }
  kr__presence_job_free(r->job);
  r->job = NULL;
  if (r->outstanding == 0)
    free(r);
}

/* Runs the next step of r and sends its commands. */
static void step_run(run *r) {
  kr__cluster *c = r->c;
  int rc = kr__presence_job_step(r->job, now_ms(), &c->cmds);
  if (rc < 0) {
    kr__presence_cmds_clear(&c->cmds);
    finish(r, rc);
    return;
  }
  int err = send_cmds(c, r, on_write);
  if (err < 0)
    finish(r, err);
  else if (rc == KR__PRESENCE_JOB_DONE)
    finish(r, 0);
  else if (r->outstanding == 0) /* waiting for nothing would hang */
    finish(r, KR_ESTATE);
}

static void on_job_reply(const redisReply *rep, int err, void *ud) {
  jreq *q = ud;
  run *r = q->r;
  uint32_t tag = q->tag;
  free(q);
  kr__cluster *c = r->c;
  enter(c);
  r->outstanding--;
  if (r->dead) {
    if (r->outstanding == 0)
      free(r);
  } else if (c->freed) {
    /* release() frees it */
  } else if (!rep) {
    finish(r, err < 0 ? err : KR_ECLOSED);
  } else if (rep->type == REDIS_REPLY_ERROR) {
    char q2[200];
    kr__log_quote(q2, sizeof(q2), rep->str ? rep->str : "",
                  rep->str ? rep->len : 0);
    kr__log(KR_LOG_WARN, "cluster_read_failed", "instance=%s reason=%s",
            kr__presence_instance(c->p), q2);
    finish(r, KR_EIO);
  } else {
    size_t n = 0;
    int rc = flatten(c, rep, &n);
    if (rc == 0)
      rc = kr__presence_job_feed(r->job, tag, c->items, n);
    if (rc < 0)
      finish(r, rc);
    else if (rc == 1)
      step_run(r);
  }
  leave(c);
}

static run *new_run(kr__cluster *c, run_kind kind, kr__presence_job *j) {
  run *r = calloc(1, sizeof(*r));
  if (!r) {
    kr__presence_job_free(j);
    return NULL;
  }
  r->c = c;
  r->kind = kind;
  r->job = j;
  rl_push(&c->queue, r, IN_QUEUE);
  arm(c, 0);
  return r;
}

static void start_sweep(kr__cluster *c) {
  if (c->sweep)
    return;
  kr__presence_job *j = NULL;
  if (kr__presence_sweep_new(c->p, &j) < 0)
    return;
  c->sweep = new_run(c, RUN_SWEEP, j);
}

/* ------------------------------------------------------------------- pump */

static void pump(kr__cluster *c) {
  run *r;
  while (!c->freed && (r = c->queue.head) != NULL) {
    rl_unlink(c, r);
    rl_push(&c->active, r, IN_ACTIVE);
    step_run(r);
  }
  if (c->freed || c->shutting)
    return;
  uint64_t now = now_ms(), next = UINT64_MAX;
  if (c->resync && kr__redis_is_up(c->redis)) {
    if (kr__redis_pending(c->redis) < RESYNC_MAX_PENDING) {
      kr__presence_set_connected(c->p, 0, now);
      kr__presence_set_connected(c->p, 1, now);
      c->resync = 0;
      kr__log(KR_LOG_INFO, "cluster_rewrite", "instance=%s agents=%zu",
              kr__presence_instance(c->p), kr__presence_agent_count(c->p));
    } else {
      next = now + RESYNC_RETRY_MS;
    }
  }
  uint64_t tnext = UINT64_MAX;
  int rc = kr__presence_tick(c->p, now, &c->cmds, &tnext);
  if (rc < 0) {
    kr__presence_cmds_clear(&c->cmds);
    if (log_this(&c->write_errs))
      kr__log(KR_LOG_WARN, "cluster_write_failed",
              "instance=%s command=tick reason=%s", kr__presence_instance(c->p),
              kr_err_name(rc));
    tnext = now + 1000;
  } else {
    send_cmds(c, NULL, on_write);
  }
  if (tnext < next)
    next = tnext;
  if (next != UINT64_MAX)
    arm(c, next > now ? next - now : 0);
  if (rc > 0 && (rc & KR__PRESENCE_TICK_SWEEP))
    start_sweep(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  kr__cluster *c = arg;
  enter(c);
  c->timer_at = 0;
  pump(c);
  leave(c);
}

/* ---------------------------------------------------------- redis events */

static void on_state(kr__redis *rd, kr__redis_event ev, int err,
                     const char *why, void *ud) {
  (void)rd;
  (void)err;
  (void)why;
  kr__cluster *c = ud;
  enter(c);
  if (!c->freed) {
    switch (ev) {
    case KR__REDIS_UP:
      kr__presence_set_connected(c->p, 1, now_ms());
      c->resync = 0; /* connecting rewrites everything */
      arm(c, 0);
      /* Lookups skipped while the command link was down can run now (the
       * pub/sub link may have come back first). */
      if (c->cmd_ups++ > 0 && c->cbs.on_resync)
        c->cbs.on_resync(c->ud);
      break;
    case KR__REDIS_DOWN:
      kr__presence_set_connected(c->p, 0, now_ms());
      break;
    case KR__REDIS_SUB_UP:
      if (c->sub_ups++ > 0 && c->cbs.on_resync)
        c->cbs.on_resync(c->ud);
      break;
    case KR__REDIS_SUB_DOWN:
      break;
    }
  }
  leave(c);
}

static void on_message(const char *channel, const char *payload, size_t len,
                       void *ud) {
  kr__cluster *c = ud;
  enter(c);
  if (!c->freed) {
    kr__pstr it[3] = {
        {"message", 7}, {channel, strlen(channel)}, {payload, len}};
    kr__presence_wake w;
    int rc = kr__presence_wake_decode(c->p, it, 3, &w);
    if (rc == 0) {
      if (c->cbs.on_wake)
        c->cbs.on_wake(w.agent_id, w.instance, w.url, c->ud);
    } else if (rc < 0 && log_this(&c->bad_wakes)) {
      kr__log(KR_LOG_WARN, "cluster_bad_wake",
              "instance=%s reason=%s len=%zu count=%llu",
              kr__presence_instance(c->p), kr_err_name(rc), len,
              (unsigned long long)c->bad_wakes);
    }
  }
  leave(c);
}

/* --------------------------------------------------------------- shutdown */

static void shut_complete(kr__cluster *c) {
  /* done fires from the loop, never inside kr__cluster_shutdown() */
  struct timeval tv = {0, 0};
  evtimer_add(c->shut_timer, &tv);
}

static void on_shut_reply(const redisReply *rep, int err, void *ud);

/* Sends the next chunk of deletions once the previous one is answered.
 * When Redis cannot take them, the rest is forgotten: the heartbeat then
 * expires and the others treat the entries as stale. */
static void shut_continue(kr__cluster *c) {
  while (!c->shut_fired && c->shut_pending == 0 && c->shut_more) {
    int rc = kr__presence_shutdown(c->p, &c->cmds);
    if (rc < 0) {
      kr__presence_cmds_clear(&c->cmds);
      kr__log(KR_LOG_WARN, "cluster_shutdown", "instance=%s result=%s",
              kr__presence_instance(c->p), kr_err_name(rc));
      c->shut_more = 0;
      break;
    }
    c->shut_more = rc > 0;
    if (send_cmds(c, NULL, on_shut_reply) < 0 && c->shut_more) {
      kr__presence_set_connected(c->p, 0, now_ms());
      kr__presence_shutdown(c->p, &c->cmds); /* forgets the rest */
      kr__presence_cmds_clear(&c->cmds);
      c->shut_more = 0;
    }
  }
  if (!c->shut_fired && c->shut_pending == 0 && !c->shut_more)
    shut_complete(c);
}

static void on_shut_reply(const redisReply *rep, int err, void *ud) {
  (void)err;
  kr__cluster *c = ud;
  enter(c);
  c->shut_pending--;
  if (!c->freed && !c->shut_fired) {
    if (rep && rep->type == REDIS_REPLY_ERROR)
      log_reply_error(c, "shutdown", rep);
    shut_continue(c);
  }
  leave(c);
}

static void on_shut_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  kr__cluster *c = arg;
  enter(c);
  if (!c->freed && !c->shut_fired) {
    c->shut_fired = 1;
    int clean = c->shut_pending == 0 && !c->shut_more;
    kr__log(clean ? KR_LOG_INFO : KR_LOG_WARN, "cluster_shutdown",
            "instance=%s result=%s", kr__presence_instance(c->p),
            clean ? "ok" : "timeout");
    if (c->done)
      c->done(c->done_ud);
  }
  leave(c);
}

void kr__cluster_shutdown(kr__cluster *c, void (*done)(void *ud), void *ud) {
  if (!c || c->freed || c->shutting)
    return;
  c->shutting = 1;
  c->shut_more = 1;
  c->done = done;
  c->done_ud = ud;
  struct timeval tv = {SHUTDOWN_WAIT_MS / 1000,
                       (SHUTDOWN_WAIT_MS % 1000) * 1000};
  evtimer_add(c->shut_timer, &tv);
  shut_continue(c);
}

/* ----------------------------------------------------------------- create */

/* url with ":<password>@" inserted (percent-encoded) into *out (malloc'd;
 * the caller wipes and frees it). */
static int url_with_password(const char *url, const char *pw, char **out,
                             char *err, size_t errlen) {
  struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
  if (!u) {
    set_err(err, errlen, "bad redis URL (expected redis://host:port)");
    return KR_EADDR;
  }
  int rc = 0;
  char *enc = NULL, *ui = NULL, *buf = NULL;
  size_t cap = strlen(url) + 3 * strlen(pw) + 16;
  if (evhttp_uri_get_userinfo(u)) {
    rc = KR_ECONFIG;
    set_err(err, errlen,
            "a redis password is given both in the URL and separately");
  } else if (!(enc = evhttp_uriencode(pw, -1, 0)) ||
             !(ui = malloc(strlen(enc) + 2)) || !(buf = malloc(cap))) {
    rc = KR_ENOMEM;
  } else {
    ui[0] = ':';
    memcpy(ui + 1, enc, strlen(enc) + 1);
    if (evhttp_uri_set_userinfo(u, ui) != 0 || !evhttp_uri_join(u, buf, cap)) {
      rc = KR_EADDR;
      set_err(err, errlen, "bad redis URL");
    }
  }
  /* the parsed URI holds its own copy of the user info */
  const char *held = evhttp_uri_get_userinfo(u);
  if (held && ui)
    wipe((char *)held, strlen(held));
  evhttp_uri_free(u);
  if (enc) {
    wipe(enc, strlen(enc));
    free(enc);
  }
  if (ui) {
    wipe(ui, strlen(ui));
    free(ui);
  }
  if (rc < 0 && buf) {
    wipe(buf, cap);
    free(buf);
    buf = NULL;
  }
  *out = buf;
  return rc;
}

/* Splits "host:port,host:port" into list (copies in store). */
static int split_sentinels(const char *s, char store[][1024], const char **list,
                           size_t *n, char *err, size_t errlen) {
  *n = 0;
  const char *p = s;
  for (;;) {
    const char *e = strchr(p, ',');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == 0 || len >= 1024) {
      set_err(err, errlen, "bad sentinel list (expected host:port,...)");
      return KR_EADDR;
    }
    if (*n >= KR__REDIS_MAX_SENTINELS) {
      set_err(err, errlen, "too many sentinels");
      return KR_ECONFIG;
    }
    memcpy(store[*n], p, len);
    store[*n][len] = 0;
    list[*n] = store[*n];
    (*n)++;
    if (!e)
      return 0;
    p = e + 1;
  }
}

static int make_redis(kr__cluster *c, const kr__cluster_config *cfg, char *err,
                      size_t errlen) {
  kr__redis_opts o;
  memset(&o, 0, sizeof(o));
  o.connect_timeout_ms = cfg->redis_timeout_ms;
  o.command_timeout_ms = cfg->redis_timeout_ms;
  o.max_pending = MAX_PENDING;
  o.on_state = on_state;
  o.user_data = c;
  if (!cfg->url == !cfg->sentinels) {
    set_err(err, errlen, "give exactly one of a redis URL and sentinels");
    return KR_ECONFIG;
  }
  if (cfg->url) {
    if (cfg->master) {
      set_err(err, errlen, "a master name needs sentinels, not a URL");
      return KR_ECONFIG;
    }
    char *url = NULL;
    if (cfg->password) {
      int rc = url_with_password(cfg->url, cfg->password, &url, err, errlen);
      if (rc < 0)
        return rc;
    }
    o.url = url ? url : cfg->url;
    int rc = kr__redis_new(c->base, &o, &c->redis, err, errlen);
    if (url) {
      wipe(url, strlen(url));
      free(url);
    }
    return rc;
  }
  if (!cfg->master || !*cfg->master) {
    set_err(err, errlen, "sentinels need a master name");
    return KR_ECONFIG;
  }
  char(*store)[1024] = malloc(KR__REDIS_MAX_SENTINELS * sizeof(*store));
  if (!store)
    return KR_ENOMEM;
  const char *list[KR__REDIS_MAX_SENTINELS];
  size_t n = 0;
  int rc = split_sentinels(cfg->sentinels, store, list, &n, err, errlen);
  if (rc == 0) {
    o.sentinels = list;
    o.n_sentinels = n;
    o.master_name = cfg->master;
    o.password = cfg->password;
    rc = kr__redis_new(c->base, &o, &c->redis, err, errlen);
  }
  free(store);
  return rc;
}

int kr__cluster_new(struct event_base *base, const kr__cluster_config *cfg,
                    kr__registry *reg, const kr__cluster_cbs *cbs, void *ud,
                    kr__cluster **out, char *err, size_t errlen) {
  set_err(err, errlen, "");
  if (!base || !cfg || !reg || !out)
    return KR_EINVAL;
  *out = NULL;
  if (!cfg->private_url || !*cfg->private_url) {
    set_err(err, errlen,
            "a private URL (where peers reach this kas) is "
            "required");
    return KR_ECONFIG;
  }
  kr__cluster *c = calloc(1, sizeof(*c));
  if (!c)
    return KR_ENOMEM;
  c->base = base;
  c->reg = reg;
  if (cbs)
    c->cbs = *cbs;
  c->ud = ud;
  kr__presence_cmds_init(&c->cmds, NULL);

  kr__presence_config pc;
  if (cfg->presence)
    pc = *cfg->presence;
  else
    kr__presence_config_defaults(&pc);
  pc.prefix = cfg->prefix;
  pc.instance = cfg->instance ? cfg->instance : cfg->private_url;
  pc.url = cfg->private_url;
  do
    pc.boot = random_u64();
  while (pc.boot == 0);
  int rc = kr__presence_new(NULL, &pc, &c->p);
  if (rc == KR_ECONFIG)
    set_err(err, errlen,
            "bad presence settings: instance name, private URL (printable, "
            "no spaces, bounded), key prefix or timings");
  if (rc == 0) {
    c->timer = evtimer_new(base, on_timer, c);
    c->shut_timer = evtimer_new(base, on_shut_timer, c);
    if (!c->timer || !c->shut_timer)
      rc = KR_ENOMEM;
  }
  if (rc == 0)
    rc = make_redis(c, cfg, err, errlen);
  if (rc == 0) {
    kr__presence_cmd k;
    rc = kr__presence_subscribe(c->p, &c->cmds);
    if (rc == 0 && (rc = kr__presence_cmds_get(&c->cmds, 0, &k)) == 0)
      rc = k.argc == 2 ? kr__redis_subscribe(c->redis, k.argv[1], on_message, c)
                       : KR_ESTATE;
    kr__presence_cmds_clear(&c->cmds);
  }
  if (rc < 0) {
    kr__redis_free(c->redis);
    c->redis = NULL;
    c->freed = 1;
    release(c);
    return rc;
  }
  kr__log(KR_LOG_INFO, "cluster_started", "instance=%s redis=%s%s",
          kr__presence_instance(c->p),
          cfg->url ? kr__redis_server(c->redis) : "sentinel:",
          cfg->url ? "" : cfg->master);
  *out = c;
  return 0;
}

void kr__cluster_free(kr__cluster *c) {
  if (!c || c->freed)
    return;
  enter(c);
  c->freed = 1;
  event_del(c->timer);
  event_del(c->shut_timer);
  /* Answers every pending command now (the callbacks see freed). */
  kr__redis_free(c->redis);
  c->redis = NULL;
  leave(c);
}

/* ---------------------------------------------------------------- changes */

void kr__cluster_agent_changed(kr__cluster *c, int64_t agent) {
  if (!c || c->freed || c->shutting || agent <= 0)
    return;
  int rc = kr__presence_agent_set_from_registry(
      c->p, c->reg, agent, kr__now_us(), now_ms(), &c->cmds);
  if (rc < 0) {
    kr__presence_cmds_clear(&c->cmds);
    kr__log(KR_LOG_WARN, "cluster_agent_failed",
            "instance=%s agent=%lld reason=%s", kr__presence_instance(c->p),
            (long long)agent, kr_err_name(rc));
    return;
  }
  send_cmds(c, NULL, on_write);
  arm(c, 0); /* the tick schedules delayed writes */
}

void kr__cluster_not_here(kr__cluster *c, int64_t agent) {
  if (!c || c->freed)
    return;
  if (kr__registry_agent_tunnels(c->reg, agent, NULL, 0) > 0)
    return;
  kr__cluster_agent_changed(c, agent);
}

/* ---------------------------------------------------------------- lookups */

int kr__cluster_lookup(kr__cluster *c, int64_t agent, kr__cluster_lookup_cb cb,
                       void *ud, kr__cluster_lookup_op **out) {
  if (out)
    *out = NULL;
  if (!c || c->freed || !cb || !out || agent <= 0)
    return KR_EINVAL;
  if (!kr__redis_is_up(c->redis))
    return KR_ECLOSED;
  kr__presence_job *j = NULL;
  int rc = kr__presence_lookup_new(c->p, agent, &j);
  if (rc < 0)
    return rc;
  run *r = new_run(c, RUN_LOOKUP, j);
  if (!r)
    return KR_ENOMEM;
  r->lookup_cb = cb;
  r->ud = ud;
  *out = r;
  return 0;
}

void kr__cluster_lookup_cancel(kr__cluster_lookup_op *l) {
  if (!l || l->dead)
    return;
  l->dead = 1;
  rl_unlink(l->c, l);
  kr__presence_job_free(l->job);
  l->job = NULL;
  if (l->outstanding == 0)
    free(l);
}

int kr__cluster_list(kr__cluster *c, size_t max, kr__cluster_list_cb cb,
                     void *ud) {
  if (!c || c->freed || !cb)
    return KR_EINVAL;
  if (!kr__redis_is_up(c->redis))
    return KR_ECLOSED;
  kr__presence_job *j = NULL;
  int rc = kr__presence_list_new(c->p, max, 0, &j);
  if (rc < 0)
    return rc;
  run *r = new_run(c, RUN_LIST, j);
  if (!r)
    return KR_ENOMEM;
  r->list_cb = cb;
  r->ud = ud;
  return 0;
}

int kr__cluster_is_up(const kr__cluster *c) {
  return c && !c->freed && kr__redis_is_up(c->redis);
}

const char *kr__cluster_instance(const kr__cluster *c) {
  return c ? kr__presence_instance(c->p) : "";
}
