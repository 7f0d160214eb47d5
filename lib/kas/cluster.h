/* kas across replicas: this instance's presence in Redis, wake-ups and
 * lookups of where an agent is connected. Internal to the kas role.
 *
 * Glue between the presence logic (lib/core/presence.h: schema, commands,
 * decisions; docs/PRESENCE.md) and the Redis client (lib/io/redis.h). The
 * kas core tells the cluster when an agent's tunnels here change and asks
 * it where an agent is; the cluster tells kas when an agent came up
 * somewhere (pub/sub wake-up) and when wake-ups may have been missed
 * (Redis came back). While Redis is unreachable lookups fail fast
 * (KR_ECLOSED) and kas keeps routing to local tunnels; what changed
 * meanwhile is written when Redis returns.
 *
 * Clocks: presence entries carry wall-clock expiry times (CLOCK_REALTIME,
 * compared across machines); the registry's connected-since times are
 * read with kr__now_us(), the clock the kas registers tunnels with.
 * Each kr__cluster_new() draws a fresh random boot id (getrandom()), so
 * entries of an earlier life of the same instance name read as stale.
 *
 * Callbacks run from the loop only, never from inside a call of this
 * header. Inside any of them every function of this header may be called,
 * kr__cluster_free() included (the memory is released when the outermost
 * callback returns).
 *
 * Logs (kr__log events): cluster_started, cluster_write_failed (a
 * write refused or not queued; repeated failures are logged at powers of
 * two), cluster_read_failed, cluster_rewrite, cluster_heartbeat_lost,
 * cluster_instance_conflict (two live processes use one instance name: a
 * configuration error, logged at each heartbeat), cluster_agent_failed,
 * cluster_bad_wake, cluster_sweep, cluster_shutdown. The Redis password is
 * never logged nor put in err.
 *
 * Threading: the kas loop thread only.
 */
#ifndef KR_KAS_CLUSTER_H
#define KR_KAS_CLUSTER_H

#include <event2/event.h>
#include <stdint.h>

#include "core/presence.h"
#include "core/registry.h"

typedef struct kr__cluster kr__cluster;
/* A pending lookup (the type is named apart from kr__cluster_lookup(),
 * which C would not allow under the same name). */
typedef struct kr__cluster_lookup kr__cluster_lookup_op;

typedef struct kr__cluster_config {
  /* Redis: exactly one of
   *  - url "redis://[[user]:password@]host:port[/db]", or
   *  - sentinels "host:port,host:port,..." (1..KR__REDIS_MAX_SENTINELS)
   *    and master, the name Sentinel knows the primary by (db 0). */
  const char *url;
  const char *sentinels;
  const char *master;
  /* NULL: none, or the one in url. Set (e.g. read from a file, so it is
   * not on a command line): the password of the primary; with url, the
   * url must then carry no user info. */
  const char *password;
  const char *prefix;      /* key prefix; NULL: KR__PRESENCE_DEFAULT_PREFIX */
  const char *instance;    /* unique instance name (NULL: private_url) */
  const char *private_url; /* where peers reach this instance; required */
  /* Timings and bounds of the presence (kr__presence_config); NULL: the
   * defaults. Its prefix, instance, boot and url members are ignored. */
  const kr__presence_config *presence;
  /* Redis connect and command timeouts in ms; 0: 2000. */
  uint32_t redis_timeout_ms;
} kr__cluster_config;

typedef struct kr__cluster_cbs {
  /* The agent's first tunnel registered at another instance, reachable
   * at url (wake-ups of this instance are not reported). Strings valid
   * during the call. May be NULL. */
  void (*on_wake)(int64_t agent, const char *instance, const char *url,
                  void *ud);
  /* The Redis pub/sub connection came back after a loss (every
   * KR__REDIS_SUB_UP after the first): wake-ups sent while it was down
   * were missed; pending routes should look up again. May be NULL. */
  void (*on_resync)(void *ud);
} kr__cluster_cbs;

/* Creates the cluster and starts connecting (from the loop). reg: the kas
 * registry (read for replica names and connection counts; must outlive
 * the cluster). cbs is copied; ud is passed to its callbacks. Returns 0,
 * KR_EINVAL (NULL arguments), KR_ECONFIG / KR_EADDR (bad settings, reason
 * in err, which may be NULL) or KR_ENOMEM. */
int kr__cluster_new(struct event_base *base, const kr__cluster_config *cfg,
                    kr__registry *reg, const kr__cluster_cbs *cbs, void *ud,
                    kr__cluster **out, char *err, size_t errlen);

/* Clean shutdown: this instance's entries and heartbeat are deleted, then
 * done fires once, from the loop, when Redis confirmed the deletions or
 * after 2 s at most (at once when Redis is down: the entries then expire
 * with the heartbeat). Afterwards nothing more is written; lookups and
 * listings still work. A second call is ignored. Free the cluster after
 * done (or from inside it). */
void kr__cluster_shutdown(kr__cluster *c, void (*done)(void *ud), void *ud);

/* Frees at once (no callbacks; pending lookups, listings and a pending
 * shutdown are dropped silently; commands not yet written to Redis are
 * lost: the heartbeat's expiry tells the others). NULL is a no-op. Safe
 * inside any callback of c. */
void kr__cluster_free(kr__cluster *c);

/* The agent's tunnels here changed (the registry presence callback, and
 * load changes worth publishing): re-reads the registry for it. The
 * first tunnel is written and announced at once; count changes within
 * the presence's dirty delay; no tunnel left: the entry is deleted. */
void kr__cluster_agent_changed(kr__cluster *c, int64_t agent);

/* A peer routed a stream here for an agent this instance does not hold:
 * its entry is stale; delete it (nothing is done while the registry
 * holds a tunnel of the agent). */
void kr__cluster_not_here(kr__cluster *c, int64_t agent);

/* Candidates for agent, best first (random order weighted by connection
 * count), this instance excluded. cb is called once: err 0 with n >= 0
 * candidates, or err < 0 (KR_ECLOSED: Redis lost meanwhile;
 * KR_ETIMEDOUT: no reply within the command timeout; KR_EIO: Redis
 * answered with an error; KR_EAGAIN: too many commands in flight;
 * KR_EPROTO / KR_ETOOBIG: a reply the presence cannot use; KR_ENOMEM)
 * with none. cand[] valid during the call only (NULL when n is 0).
 * Returns 0 with *out set — the callback never fires from inside this
 * call — or KR_ECLOSED at once while Redis is down (fail fast),
 * KR_EINVAL or KR_ENOMEM.
 * kr__cluster_lookup_cancel() drops a pending lookup (its callback never
 * fires; a reply arriving later is ignored). The handle is invalid once
 * the callback has returned; cancelling from inside the callback is a
 * no-op. */
typedef void (*kr__cluster_lookup_cb)(const kr__presence_candidate *cand,
                                      size_t n, int err, void *ud);
int kr__cluster_lookup(kr__cluster *c, int64_t agent, kr__cluster_lookup_cb cb,
                       void *ud, kr__cluster_lookup_op **out);
void kr__cluster_lookup_cancel(kr__cluster_lookup_op *l);

/* Every connected agent cluster-wide as the JSON document of
 * kr__presence_list_json() (at most max agents; 0: 10000). cb once, from
 * the loop: json (NUL-terminated, valid during the call) or err < 0 (as
 * for lookups). Returns 0 or KR_ECLOSED (Redis down) / KR_EINVAL /
 * KR_ENOMEM. Not cancellable; kr__cluster_free() drops it. */
typedef void (*kr__cluster_list_cb)(const char *json, size_t len, int err,
                                    void *ud);
int kr__cluster_list(kr__cluster *c, size_t max, kr__cluster_list_cb cb,
                     void *ud);

/* 1 while Redis is connected. */
int kr__cluster_is_up(const kr__cluster *c);

/* The instance name in use. */
const char *kr__cluster_instance(const kr__cluster *c);

#endif
