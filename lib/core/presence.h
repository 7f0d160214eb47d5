/* Cluster presence over Redis: the schema, the decisions and the command
 * encoding, with no I/O. Internal to the library (kas side).
 *
 * kas replicas tell each other which agents they hold through Redis; the
 * schema, timings and failure behaviour are specified in docs/PRESENCE.md.
 * In short, with P the configured key prefix:
 *
 *   P agent:<id>        HASH  field <instance> -> entry JSON (boot, expiry,
 *                             connections, replicas); key PEXPIRE entry_ttl
 *   P instance:<name>   STRING heartbeat JSON (boot, private URL), PX
 *                             heartbeat_ttl, refreshed every heartbeat_period
 *   P wake              pub/sub channel: an agent's first tunnel on an
 *                             instance (agent, instance, boot, URL)
 *   P sweep             STRING lock, SET NX PX sweep_period: one sweeper
 *
 * This module never talks to Redis. It produces commands as argv vectors
 * (kr__presence_cmds, ready for hiredis's redisAsyncCommandArgv) and
 * consumes replies as plain byte strings (kr__pstr); every decision (what
 * to write when, which entries are live, which are stale and must go,
 * which instance to route to) is made here. Times are wall-clock
 * milliseconds since the Unix epoch, passed in by the host: entries carry
 * expiry times that other machines compare with their own clocks.
 *
 * The host (the kas role through a Redis client) does this:
 *   - on connect: kr__presence_set_connected(p, 1, now), SUBSCRIBE
 *     (kr__presence_subscribe) on a second, pub/sub connection;
 *   - on disconnect: kr__presence_set_connected(p, 0, now); commands still
 *     queued for the old connection are dropped (the next connect rewrites
 *     everything this instance holds);
 *   - an agent's tunnels here changed: kr__presence_agent_set() (or
 *     kr__presence_agent_set_from_registry()); its last tunnel here went
 *     away: kr__presence_agent_gone();
 *   - a timer at the deadline kr__presence_tick() returns; run a sweep job
 *     when the tick asks for one;
 *   - a reply to a KR__PRESENCE_OP_HEARTBEAT command:
 *     kr__presence_heartbeat_reply(); a KR__PRESENCE_OP_JOB reply:
 *     kr__presence_job_feed(); KR__PRESENCE_OP_WRITE replies carry no
 *     information beyond success (log errors);
 *   - a pub/sub message: kr__presence_wake_decode();
 *   - clean shutdown: kr__presence_shutdown() until it returns 0.
 * Every builder appends to a kr__presence_cmds list; send the commands in
 * list order on one connection (order matters: a registration's HSET must
 * not overtake an earlier HDEL of the same field).
 *
 * Values read from Redis are untrusted: every decoder bounds sizes and
 * counts, parses strictly (JSON through jansson) and treats what it cannot
 * read as stale, or as "unknown" when it is well-formed but of a newer
 * schema version (left alone, so a rolling upgrade does not make old and
 * new instances delete each other's entries).
 *
 * Not thread-safe: a kr__presence and its jobs belong to one thread.
 */
#ifndef KR_CORE_PRESENCE_H
#define KR_CORE_PRESENCE_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/error.h>
#include <kasroute/mem.h>

#include "registry.h"

#define KR__PRESENCE_DEFAULT_PREFIX "kasroute:"
/* Bytes, without the terminating NUL. Names, prefixes and URLs are
 * printable ASCII without spaces (0x21..0x7e). */
#define KR__PRESENCE_PREFIX_MAX 64
#define KR__PRESENCE_INSTANCE_MAX 128
#define KR__PRESENCE_URL_MAX 512
#define KR__PRESENCE_REPLICA_MAX 127
/* Replicas listed per entry (an agent with more on one instance lists the
 * first ones; its connection count stays exact). */
#define KR__PRESENCE_MAX_REPLICAS 16
#define KR__PRESENCE_MAX_CONNS 1000000u
/* Hash fields (instances) considered per agent; more are left for later
 * passes (stale ones among the first are deleted, so the rest surface). */
#define KR__PRESENCE_MAX_FIELDS 256
/* Encoded sizes: an entry, a heartbeat value, a wake-up message. */
#define KR__PRESENCE_ENTRY_MAX 4096
#define KR__PRESENCE_HEARTBEAT_MAX 1024
#define KR__PRESENCE_WAKE_MAX 1024
/* Keys of one SCAN reply that are read; the rest of the reply is skipped. */
#define KR__PRESENCE_SCAN_MAX_KEYS 4096
#define KR__PRESENCE_SCAN_COUNT_MAX 10000u
/* Distinct instances one job tracks heartbeats for. */
#define KR__PRESENCE_JOB_MAX_INSTANCES 1024
/* Bytes of reply values one job step keeps (stale fields need their exact
 * value for the compare-and-delete); over it, fields are skipped. */
#define KR__PRESENCE_STEP_MAX_BYTES (8u << 20)
/* Bytes a listing may hold (names, arrays); over it, it is truncated. */
#define KR__PRESENCE_LIST_MAX_BYTES (64u << 20)
/* Bytes of one command list. */
#define KR__PRESENCE_CMDS_MAX_BYTES (64u << 20)
/* SCAN round trips one sweep or listing may take. */
#define KR__PRESENCE_MAX_SCAN_STEPS 1000000u

/* Positive results (not errors). */
#define KR__PRESENCE_UNKNOWN 1     /* decoders: well-formed, newer version */
#define KR__PRESENCE_IGNORE 1      /* wake_decode: nothing for this instance */
#define KR__PRESENCE_LOST 1        /* heartbeat_reply: state rewritten */
#define KR__PRESENCE_TICK_SWEEP 1u /* tick flag: start a sweep job now */

/* A reply element: bytes, or nil when p is NULL. Redis integers are passed
 * as their decimal text. */
typedef struct kr__pstr {
  const char *p;
  size_t len;
} kr__pstr;

/* ------------------------------------------------------------- commands */

/* What the host does with a command's reply. */
typedef enum kr__presence_op {
  KR__PRESENCE_OP_WRITE = 0, /* only success matters (log errors) */
  KR__PRESENCE_OP_HEARTBEAT, /* to kr__presence_heartbeat_reply() */
  KR__PRESENCE_OP_JOB,       /* to kr__presence_job_feed() with tag */
  KR__PRESENCE_OP_SUBSCRIBE  /* pub/sub connection; messages to wake_decode */
} kr__presence_op;

/* One command. argv[i] has argvlen[i] bytes (binary-safe) followed by a
 * NUL that is not counted. Valid until the list is changed or freed. */
typedef struct kr__presence_cmd {
  int argc;
  const char **argv; /* the type redisAsyncCommandArgv takes */
  const size_t *argvlen;
  kr__presence_op op;
  uint32_t tag; /* OP_JOB: the reply slot to pass to kr__presence_job_feed */
} kr__presence_cmd;

/* A list of commands; builders append. Only n is public. A builder that
 * fails leaves the list exactly as it was. */
typedef struct kr__presence_cmds {
  size_t n; /* commands */
  /* private */
  kr_mem mem;
  int err;
  char *arena;
  size_t arena_len, arena_cap;
  size_t *arg_off, *arg_len;
  const char **argv;
  size_t nargs, args_cap, argv_ok;
  struct kr__pcmd *cmd;
  size_t cmd_cap;
} kr__presence_cmds;

/* mem NULL means kr_mem_default(); the struct is copied. */
void kr__presence_cmds_init(kr__presence_cmds *c, const kr_mem *mem);
/* Forgets the commands, keeps the memory for reuse. */
void kr__presence_cmds_clear(kr__presence_cmds *c);
void kr__presence_cmds_free(kr__presence_cmds *c);
/* 0, or KR_EINVAL when i >= n. */
int kr__presence_cmds_get(const kr__presence_cmds *c, size_t i,
                          kr__presence_cmd *out);

/* ----------------------------------------------------- configuration */

typedef struct kr__presence_config {
  /* Key prefix, 0..KR__PRESENCE_PREFIX_MAX bytes; NULL: the default. */
  const char *prefix;
  /* This kas instance's name: unique among the live instances (two live
   * processes with one name are reported by kr__presence_heartbeat_reply).
   * 1..KR__PRESENCE_INSTANCE_MAX bytes. Required. */
  const char *instance;
  /* Random, non-zero, new at every process start: entries written by an
   * earlier life of the same instance name are recognised as stale. */
  uint64_t boot;
  /* The private URL other instances dial to reach this one
   * (1..KR__PRESENCE_URL_MAX bytes). Required. */
  const char *url;
  uint64_t heartbeat_period_ms; /* 2000 */
  uint64_t heartbeat_ttl_ms;    /* 6000; > heartbeat_period_ms */
  uint64_t refresh_period_ms;   /* 150000 */
  uint64_t entry_ttl_ms;        /* 360000; > refresh_period_ms */
  uint64_t sweep_period_ms;     /* 600000 */
  uint64_t dirty_delay_ms;      /* 1000: changed counts are written after */
  uint64_t batch_gap_ms;        /* 5: pause between two full batches */
  uint32_t batch_agents;        /* 1000 agents written per tick */
  uint32_t scan_count;          /* 200: SCAN COUNT */
  size_t max_agents;            /* 1000000 agents held by this instance */
} kr__presence_config;

/* Fills c with the defaults above; prefix, instance and url NULL, boot 0. */
void kr__presence_config_defaults(kr__presence_config *c);

typedef struct kr__presence kr__presence;

/* Creates the presence state of one kas instance (disconnected, holding no
 * agent). Strings are copied. 0; KR_EINVAL (c, out NULL); KR_ECONFIG (a
 * value out of range: names, boot 0, a TTL not above its period, zero
 * periods or counts); KR_ENOMEM. */
int kr__presence_new(const kr_mem *mem, const kr__presence_config *c,
                     kr__presence **out);
/* Frees p (NULL is a no-op). Jobs of p must be freed first. */
void kr__presence_free(kr__presence *p);

const char *kr__presence_instance(const kr__presence *p);
const char *kr__presence_url(const kr__presence *p);
/* Agents this instance holds. */
size_t kr__presence_agent_count(const kr__presence *p);
/* 1 when agent_id has a tunnel here (as last reported), else 0. */
int kr__presence_holds(const kr__presence *p, int64_t agent_id);

/* ------------------------------------------------------ local changes */

/* A replica as written in an entry. name: 1..KR__PRESENCE_REPLICA_MAX
 * printable bytes (others are replaced by '_' when written). */
typedef struct kr__presence_replica {
  char name[KR__PRESENCE_REPLICA_MAX + 1];
  uint32_t conns;
  uint64_t since_ms;
} kr__presence_replica;

/* agent_id has conns (>= 1) tunnels here, from the replicas listed (at
 * most KR__PRESENCE_MAX_REPLICAS are kept). The first call for an agent
 * writes its entry at once (HSET, PEXPIRE, PUBLISH wake-up) when connected;
 * later calls that change something mark it to be written within
 * dirty_delay_ms. Disconnected, nothing is appended: the state is written
 * on the next connect.
 * 0; KR_EINVAL (bad id <= 0, conns 0 or over KR__PRESENCE_MAX_CONNS, reps
 * NULL with n > 0); KR_ETOOBIG (max_agents held); KR_ESTATE (after
 * shutdown); KR_ENOMEM (state unchanged). */
int kr__presence_agent_set(kr__presence *p, int64_t agent_id, uint32_t conns,
                           const kr__presence_replica *reps, size_t nreps,
                           uint64_t now_ms, kr__presence_cmds *out);

/* kr__presence_agent_set() with the agent's tunnels as the registry lists
 * them; connected-since times are converted from the registry's monotonic
 * microseconds (mono_now_us is the same clock's now) to wall-clock ms.
 * An agent without tunnels is passed to kr__presence_agent_gone(). */
int kr__presence_agent_set_from_registry(kr__presence *p, const kr__registry *r,
                                         int64_t agent_id,
                                         kr_time_us mono_now_us,
                                         uint64_t now_ms,
                                         kr__presence_cmds *out);

/* The agent has no tunnel here any more: its field is deleted (HDEL) when
 * connected, or at the next connect. Also the self-correction when a peer
 * routed a request here for an agent this instance does not hold (a stale
 * entry): safe because this instance's writes are ordered on one
 * connection. 0; KR_EINVAL; KR_ESTATE (after shutdown); KR_ENOMEM. */
int kr__presence_agent_gone(kr__presence *p, int64_t agent_id,
                            kr__presence_cmds *out);

/* The Redis connection went up (1) or down (0). Up: the heartbeat is due
 * at once and every held agent is rewritten (and announced with a
 * wake-up, for requests that waited while Redis was away) in batches by
 * the following ticks; a sweep is tried after one heartbeat TTL. */
void kr__presence_set_connected(kr__presence *p, int up, uint64_t now_ms);

/* Appends what is due at now_ms: the heartbeat (SET ... PX ttl GET, op
 * HEARTBEAT), up to batch_agents agent writes (changed ones first, then
 * those whose refresh is due; HSET + PEXPIRE each). *next_ms (may be NULL)
 * receives when to call again (UINT64_MAX: not before a change).
 * Returns a bit set (KR__PRESENCE_TICK_SWEEP: start a sweep job now) or
 * KR_ENOMEM / KR_ETOOBIG (list unchanged; state unchanged). Disconnected
 * or shut down: appends nothing. */
int kr__presence_tick(kr__presence *p, uint64_t now_ms, kr__presence_cmds *out,
                      uint64_t *next_ms);

/* The reply to the heartbeat command (the key's previous value, or nil).
 * 0: normal. KR__PRESENCE_LOST: the previous heartbeat was missing although
 * one was written since the connection came up (the key expired or Redis
 * lost data): every held agent is queued for rewriting. KR_ESTATE: the
 * previous value was written by another live process using this instance
 * name (a configuration error the host must report). */
int kr__presence_heartbeat_reply(kr__presence *p, const kr__pstr *old,
                                 uint64_t now_ms);

/* Appends the clean-shutdown deletions: HDEL of this instance's field for
 * up to 8 * batch_agents held agents per call, then DEL of the heartbeat
 * key. Returns the number of agents still to delete (call again) or 0
 * when done; after that p writes nothing more. Disconnected, it forgets
 * the agents and returns 0. KR_ENOMEM / KR_ETOOBIG: list unchanged. */
int kr__presence_shutdown(kr__presence *p, kr__presence_cmds *out);

/* Appends SUBSCRIBE <prefix>wake (op SUBSCRIBE) for the pub/sub
 * connection. */
int kr__presence_subscribe(const kr__presence *p, kr__presence_cmds *out);

/* ---------------------------------------------------------- decoders */

/* An entry (hash value). */
typedef struct kr__presence_entry {
  uint64_t boot;
  uint64_t exp_ms;
  uint64_t since_ms;
  uint32_t conns;
  size_t nreplicas;
  kr__presence_replica replicas[KR__PRESENCE_MAX_REPLICAS];
} kr__presence_entry;

/* Decoders return 0 (valid; *out filled), KR__PRESENCE_UNKNOWN (a JSON
 * object with an integer "v" above 1: a newer schema, not interpreted),
 * KR_EPROTO (anything else: not JSON, duplicate keys, a missing or
 * mistyped member, a value out of range, oversized) or KR_ENOMEM (the JSON
 * parser ran out of memory: no verdict). Unknown members are ignored. */
int kr__presence_entry_decode(const char *v, size_t len,
                              kr__presence_entry *out);
/* Writes e's JSON into buf; returns its length, or KR_ETOOBIG (over cap
 * or KR__PRESENCE_ENTRY_MAX) / KR_EINVAL (a value out of range) /
 * KR_ENOMEM. No NUL is written. */
int kr__presence_entry_encode(const kr__presence_entry *e, char *buf,
                              size_t cap);

typedef struct kr__presence_heartbeat {
  uint64_t boot;
  char url[KR__PRESENCE_URL_MAX + 1];
} kr__presence_heartbeat;

int kr__presence_heartbeat_decode(const char *v, size_t len,
                                  kr__presence_heartbeat *out);

/* A wake-up: agent_id's first tunnel on instance, reachable at url. */
typedef struct kr__presence_wake {
  int64_t agent_id;
  uint64_t boot;
  char instance[KR__PRESENCE_INSTANCE_MAX + 1];
  char url[KR__PRESENCE_URL_MAX + 1];
} kr__presence_wake;

/* Decodes a wake-up message payload (the JSON). */
int kr__presence_wake_decode_msg(const char *v, size_t len,
                                 kr__presence_wake *out);
/* Decodes a pub/sub reply of the subscription connection as flattened
 * elements: ["message", channel, payload]. 0: a wake-up from another
 * instance in *out. KR__PRESENCE_IGNORE: nothing to do (a subscribe
 * confirmation, another channel, this instance's own message, a newer
 * message version). KR_EPROTO: a malformed message on the channel. */
int kr__presence_wake_decode(const kr__presence *p, const kr__pstr *items,
                             size_t n, kr__presence_wake *out);

/* The agent id of key "<prefix>agent:<id>" (id a canonical decimal >= 1),
 * or KR_EINVAL. */
int kr__presence_parse_agent_key(const kr__presence *p, const char *key,
                                 size_t len, int64_t *id);

/* -------------------------------------------------------------- jobs */

/* Reads of Redis that take several round trips: a lookup of one agent,
 * the periodic sweep, the cluster-wide listing. Driving one:
 *
 *   rc = kr__presence_job_step(j, now, &cmds);   // appends commands
 *   send cmds; for each OP_JOB command's reply, flattened into elements:
 *     r = kr__presence_job_feed(j, cmd.tag, items, n);
 *     r == 1: every reply of the step arrived: call step again;
 *   ... until step returns 0 (done: read the results; the commands it
 *   appended last are OP_WRITE clean-ups, to send) or a negative error
 *   (free the job). A command that failed (error reply, disconnect) fails
 *   the job: free it.
 *
 * Flattening: an array reply becomes its elements (nil elements as nil);
 * a scalar or nil reply one element; a SCAN reply [cursor, [keys...]]
 * becomes cursor followed by the keys.
 *
 * Decisions per hash field (an instance's entry), taken by the step after
 * the replies: live when the entry decodes, has not expired (exp > now),
 * and the instance's heartbeat exists with the entry's boot; for this
 * instance's own field, when it decodes with this boot, has not expired
 * and p holds the agent. Stale otherwise (malformed field name or entry,
 * expired, no heartbeat, malformed heartbeat, boot mismatch): deleted with
 * a compare-and-delete (EVAL: HDEL only if the value is still the one
 * read, so a concurrent rewrite by a live instance is never lost).
 * Unknown (newer version, over a bound): left alone, not used.
 *
 * A job reads p (its configuration and held agents): free jobs before p. */
typedef struct kr__presence_job kr__presence_job;

#define KR__PRESENCE_JOB_DONE 0
#define KR__PRESENCE_JOB_WAIT 1

/* HGETALL of the agent's hash, MGET of the named instances' heartbeats,
 * then candidates and clean-ups. 0; KR_EINVAL; KR_ENOMEM. */
int kr__presence_lookup_new(kr__presence *p, int64_t agent_id,
                            kr__presence_job **out);
/* SET <prefix>sweep <instance> NX PX sweep_period (only the instance that
 * gets the lock sweeps), then SCAN ... MATCH <prefix>agent:* COUNT
 * scan_count steps, each reading the hashes found and deleting stale
 * fields. */
int kr__presence_sweep_new(kr__presence *p, kr__presence_job **out);
/* The cluster-wide listing: SCAN steps as the sweep (deleting stale fields
 * too), at most max_agents agents (0: 10000), this instance's own agents
 * from p's state rather than from Redis. local_only: p's agents only, no
 * command (the single-instance mode without Redis). */
int kr__presence_list_new(kr__presence *p, size_t max_agents, int local_only,
                          kr__presence_job **out);
void kr__presence_job_free(kr__presence_job *j);

/* KR__PRESENCE_JOB_WAIT (commands appended; feed their replies),
 * KR__PRESENCE_JOB_DONE, or a negative error: KR_ESTATE (replies of the
 * current step are missing), KR_EPROTO (a reply had the wrong shape),
 * KR_ETOOBIG (scan step bound), KR_ENOMEM (the list is unchanged; the job
 * failed). */
int kr__presence_job_step(kr__presence_job *j, uint64_t now_ms,
                          kr__presence_cmds *out);
/* 0 (more replies awaited), 1 (the step is complete) or a negative error
 * that fails the job: KR_EINVAL (tag not awaited, or fed twice),
 * KR_EPROTO (reply shape), KR_ENOMEM. */
int kr__presence_job_feed(kr__presence_job *j, uint32_t tag,
                          const kr__pstr *items, size_t n);

typedef struct kr__presence_job_stats {
  uint64_t scan_steps;   /* SCAN round trips */
  uint64_t keys;         /* agent hashes read */
  uint64_t fields;       /* fields seen */
  uint64_t live;         /* live fields (own included) */
  uint64_t stale;        /* fields deleted */
  uint64_t unknown;      /* fields left alone (newer version, bounds) */
  uint64_t ignored_keys; /* keys that are not "<prefix>agent:<id>" */
  int lock_held;         /* sweep: this instance got the lock */
} kr__presence_job_stats;

void kr__presence_job_get_stats(const kr__presence_job *j,
                                kr__presence_job_stats *out);

/* A live instance for an agent. */
typedef struct kr__presence_candidate {
  char instance[KR__PRESENCE_INSTANCE_MAX + 1];
  char url[KR__PRESENCE_URL_MAX + 1];
  uint64_t boot;
  uint32_t conns;
  uint64_t since_ms;
} kr__presence_candidate;

/* A finished lookup's live instances other than this one, in the order to
 * try them: a random permutation weighted by connection count (an instance
 * with twice the tunnels comes first twice as often), drawn from the 64
 * random bits given. Copies up to cap into out (NULL when cap is 0) and
 * returns how many there are. 0 for an unfinished or other job. */
size_t kr__presence_lookup_candidates(const kr__presence_job *j,
                                      uint64_t random,
                                      kr__presence_candidate *out, size_t cap);

typedef struct kr__presence_listed_instance {
  const char *instance;
  const char *url;
  uint32_t conns;
  uint64_t since_ms;
} kr__presence_listed_instance;

typedef struct kr__presence_listed_replica {
  const char *name;
  const char *instance;
  uint32_t conns;
  uint64_t since_ms;
} kr__presence_listed_replica;

/* An agent connected somewhere in the cluster: conns summed over its
 * instances, since_ms the earliest. Strings live as long as the job. */
typedef struct kr__presence_listed_agent {
  int64_t agent_id;
  uint32_t conns;
  uint64_t since_ms;
  size_t ninstances;
  kr__presence_listed_instance *instances; /* in name order */
  size_t nreplicas;
  kr__presence_listed_replica *replicas; /* by instance, then as written */
} kr__presence_listed_agent;

/* A finished listing: agents in id order. NULL past the end. */
size_t kr__presence_list_count(const kr__presence_job *j);
const kr__presence_listed_agent *
kr__presence_list_agent(const kr__presence_job *j, size_t i);
/* 1 when max_agents or a byte bound cut the listing short. */
int kr__presence_list_truncated(const kr__presence_job *j);

/* The listing as JSON for GET /api/v1/agents (see docs/PRESENCE.md):
 *   {"agents":[{"id":42,"connections":3,"connected_since_ms":...,
 *     "instances":[{"instance":"kas-a","connections":2,
 *                   "connected_since_ms":...}],
 *     "replicas":[{"name":"pod-a","instance":"kas-a","connections":2,
 *                  "connected_since_ms":...}]}],
 *    "truncated":false}
 * Private URLs are not included. *out is NUL-terminated, allocated with
 * the job's kr_mem (free with kr__presence_json_free). 0; KR_ESTATE (not a
 * finished listing); KR_ENOMEM. */
int kr__presence_list_json(const kr__presence_job *j, char **out, size_t *len);
void kr__presence_json_free(const kr__presence *p, char *s);

#endif
