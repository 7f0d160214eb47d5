/* A Redis client on the host's libevent loop: one command connection, one
 * pub/sub connection, optional Sentinel discovery. Internal.
 *
 * Built on hiredis 0.14's async API and its libevent adapter. hiredis 0.14
 * has no timeouts, so this layer adds them with libevent timers:
 *  - connect timeout: from the start of a connection attempt until the
 *    connection is usable (TCP connect plus AUTH, SELECT and a PING, or
 *    ROLE under Sentinel; on the pub/sub connection, until every
 *    subscription is confirmed). A server that accepts and never answers
 *    fails the attempt with KR_ETIMEDOUT.
 *  - command timeout: when the oldest command awaiting a reply has waited
 *    that long, the connection is considered dead and closed; every pending
 *    callback gets KR_ETIMEDOUT exactly once. A command timeout on the
 *    command connection also recycles the pub/sub connection, which has no
 *    traffic of its own to notice a dead server with.
 * Lost connections come back by themselves after a full-jitter backoff
 * (lib/core/backoff.h), 200 ms up to 5 s by default. Subscriptions are
 * kept across reconnects: each new pub/sub connection subscribes to every
 * channel again and then reports KR__REDIS_SUB_UP, because messages
 * published while it was down are lost (owners resync their state then).
 *
 * Addresses: host names given in the URL or the Sentinel list are resolved
 * once, with a blocking getaddrinfo() in kr__redis_new(); numeric addresses
 * are the norm. Master addresses reported by Sentinel must be numeric
 * (Sentinel's default, "resolve-hostnames no"): hiredis 0.14 would resolve
 * names with a blocking call on the loop. No TLS (hiredis 0.14 has none).
 *
 * Sentinel: each sentinel is asked in turn "SENTINEL
 * get-master-addr-by-name NAME" over a short-lived connection (connect and
 * command timeouts apply); the command connection then checks with ROLE
 * that the server is a master, else discovery starts again. A subscription
 * to "+switch-master" on the sentinel that answered moves both connections
 * to the new master at once after a failover; any lost connection also
 * leads to a new discovery (after the backoff delay).
 *
 * Threading: everything runs on the loop thread of the event_base given to
 * kr__redis_new(). Callbacks are only ever called from the loop, never
 * from inside kr__redis_new(), kr__redis_command_argv() or
 * kr__redis_subscribe(). kr__redis_free() may be called anywhere,
 * including inside any of this object's callbacks (see there).
 *
 * hiredis writes with write(2): the host must ignore SIGPIPE (the daemons
 * do), or a reset connection kills the process. hiredis aborts the process
 * when an allocation fails.
 *
 * The password is never logged. State changes are logged through kr__log
 * with event names redis_connected, redis_disconnected, redis_subscribed,
 * redis_master, redis_discovery_failed.
 */
#ifndef KR_IO_REDIS_H
#define KR_IO_REDIS_H

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kr__redis kr__redis;

#define KR__REDIS_MAX_SENTINELS 16
#define KR__REDIS_MAX_SUBSCRIPTIONS 1024
#define KR__REDIS_MAX_CHANNEL 1024 /* bytes in a channel name */
#define KR__REDIS_MAX_ARGC 1048576 /* arguments in one command */

typedef enum kr__redis_event {
  /* The command connection is usable (after AUTH, SELECT and PING/ROLE). */
  KR__REDIS_UP = 1,
  /* The command connection was lost, or an attempt to establish it failed
   * (reported for each failed attempt; err and why say what happened:
   * KR_EAUTH for a refused password, KR_ETIMEDOUT, KR_ECLOSED, KR_EIO,
   * KR_ESTATE for a server that is not a master, KR_ECONFIG for a refused
   * SELECT). Under Sentinel, also when no sentinel gave a master address
   * (err KR_ENOENT or the last failure). Commands fail with KR_ECLOSED
   * until the next KR__REDIS_UP. */
  KR__REDIS_DOWN = 2,
  /* The pub/sub connection has confirmed every subscription. Reported on
   * each new pub/sub connection: after a reconnect, messages published
   * meanwhile were missed. */
  KR__REDIS_SUB_UP = 3,
  /* The pub/sub connection that had reported KR__REDIS_SUB_UP is lost. */
  KR__REDIS_SUB_DOWN = 4,
} kr__redis_event;

/* why: a short text (a Redis error reply or a socket error), valid during
 * the call; NULL for UP and SUB_UP (err is then 0). */
typedef void (*kr__redis_state_fn)(kr__redis *r, kr__redis_event ev, int err,
                                   const char *why, void *user_data);

/* Exactly once per accepted command. reply: the server's answer (an error
 * reply is a reply: type REDIS_REPLY_ERROR, err 0), valid during the call
 * only (hiredis frees it afterwards). NULL when no answer will come: err is
 * KR_ETIMEDOUT (command timeout), or KR_ECLOSED (connection lost, or
 * kr__redis_free()). */
typedef void (*kr__redis_reply_fn)(const redisReply *reply, int err,
                                   void *user_data);

/* One published message. channel is NUL-terminated; payload has len bytes
 * (and a NUL after them); both valid during the call. */
typedef void (*kr__redis_message_fn)(const char *channel, const char *payload,
                                     size_t len, void *user_data);

/* Settings; zero means the default. The strings are copied by
 * kr__redis_new(). */
typedef struct kr__redis_opts {
  /* "redis://[[user]:password@]host[:port][/db]" (port 6379 by default;
   * user and password percent-decoded; AUTH user password when a user is
   * given). NULL for Sentinel. */
  const char *url;
  /* Sentinel: "host:port" each ("[v6]:port" for IPv6 literals), and the
   * master's name. Used when url is NULL. */
  const char *const *sentinels;
  size_t n_sentinels; /* 1 .. KR__REDIS_MAX_SENTINELS */
  const char *master_name;
  /* Sentinel: the master's password (NULL: none), optional user, db. */
  const char *password;
  const char *user;
  int db;
  uint32_t connect_timeout_ms; /* default 2000 */
  uint32_t command_timeout_ms; /* default 2000 */
  uint32_t max_pending;        /* default 10000 commands awaiting replies */
  uint32_t backoff_base_ms;    /* default 200 */
  uint32_t backoff_cap_ms;     /* default 5000 */
  kr__redis_state_fn on_state; /* may be NULL */
  void *user_data;             /* for on_state */
} kr__redis_opts;

/* Creates the client and starts connecting (from the loop: the first
 * attempt runs on the next loop iteration). Returns 0, KR_EINVAL (NULL
 * arguments), KR_EADDR (bad URL or sentinel address, or a host name that
 * does not resolve), KR_ECONFIG (inconsistent settings) or KR_ENOMEM; err
 * (may be NULL) then says why, without the password. */
int kr__redis_new(struct event_base *base, const kr__redis_opts *opts,
                  kr__redis **out, char *err, size_t errlen);

/* Sends one command (argv[0] is the command name). argvlen NULL: the
 * arguments are C strings. argv is copied before the call returns. cb may
 * be NULL (the reply is dropped). Several commands issued in one loop
 * iteration leave in one write. Returns 0 (cb will be called exactly
 * once), KR_ECLOSED at once when the command connection is not up (callers
 * fail fast rather than queue), KR_EAGAIN when max_pending commands await
 * replies, KR_EINVAL (argc out of 1..KR__REDIS_MAX_ARGC, NULL argv). cb is
 * not called when this returns an error. Do not send SUBSCRIBE, MONITOR
 * or other commands that change the connection's mode here. */
int kr__redis_command_argv(kr__redis *r, int argc, const char **argv,
                           const size_t *argvlen, kr__redis_reply_fn cb,
                           void *user_data);

/* Subscribes to channel for the life of r (re-subscribed on every new
 * pub/sub connection). The pub/sub connection is opened with the first
 * subscription. Returns 0, KR_EINVAL (NULL, empty, longer than
 * KR__REDIS_MAX_CHANNEL, or already subscribed), KR_ETOOBIG (more than
 * KR__REDIS_MAX_SUBSCRIPTIONS), KR_ECLOSED (r is being freed) or
 * KR_ENOMEM. */
int kr__redis_subscribe(kr__redis *r, const char *channel,
                        kr__redis_message_fn cb, void *user_data);

/* 1 when commands are accepted (between KR__REDIS_UP and KR__REDIS_DOWN). */
int kr__redis_is_up(const kr__redis *r);

/* Commands accepted and not yet answered. */
size_t kr__redis_pending(const kr__redis *r);

/* "host:port" of the server the command connection uses or will use next
 * (under Sentinel: the master last discovered; "" before the first
 * answer). Valid until the next loop iteration. */
const char *kr__redis_server(const kr__redis *r);

/* Closes every connection and frees r; NULL is a no-op. Callbacks of
 * commands still awaiting replies are called exactly once with NULL and
 * KR_ECLOSED before this returns; no state or message callback follows.
 * Inside those callbacks commands return KR_ECLOSED and another
 * kr__redis_free(r) is a no-op. Safe inside any callback of r (including
 * the state, message and reply callbacks): the memory is released when the
 * outermost callback returns; hiredis contexts are closed with
 * redisAsyncFree() only where hiredis allows it (its deferred free inside
 * reply callbacks), never from its connect or disconnect callbacks. */
void kr__redis_free(kr__redis *r);

#endif
