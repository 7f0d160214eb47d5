/* Tunnel registry: agent id -> the live tunnel connections of that agent,
 * plus the requests waiting for one. Internal to the library (kas side).
 *
 * An agent runs one or more replicas (each with a name); a replica keeps one
 * or more tunnel connections open to this kas. The host (the kas role)
 * registers each connection once it is usable (authenticated, handshake
 * done), reports its load as it changes, and removes it when it closes,
 * receives GOAWAY or fails its keepalive. A request for agent N takes the
 * least-loaded usable connection with kr__registry_pick(); when there is
 * none it parks a waiter with a deadline, which is woken as soon as a
 * usable connection appears, or times out through kr__registry_expire().
 *
 * The module does no I/O and reads no clock: times are arguments
 * (kr_time_us, microseconds from the host's monotonic origin). Memory comes
 * from the kr_mem given to kr__registry_new(). Not thread-safe: one registry
 * belongs to one thread.
 *
 * Costs: pick and add are O(connections of that agent) (agents are found
 * through a hash table keyed by agent id); wait, cancel and each expiry are
 * O(log waiters) (deadlines live in a binary min-heap); next_deadline is
 * O(1).
 *
 * Callbacks (waiter callbacks, the presence callback and the agent visitor)
 * may call every function of this header, including kr__registry_remove()
 * of the tunnel they were handed, kr__registry_wait(), kr__registry_cancel()
 * of other waiters and kr__registry_free() (only a nested
 * kr__registry_foreach_agent() is refused). A free requested inside a
 * callback is deferred: no further callback fires, and the registry is
 * released when the outermost registry call returns. After
 * kr__registry_free() the registry must not be used, not even by the rest
 * of the callback that called it.
 */
#ifndef KR_CORE_REGISTRY_H
#define KR_CORE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/mem.h>
#include <kasroute/mux.h>

/* Longest replica name in bytes, without the terminating NUL. */
#define KR__REPLICA_NAME_MAX 255
/* Default bound on the number of pending waiters of a registry. */
#define KR__REGISTRY_DEFAULT_MAX_WAITERS 65536

typedef struct kr__registry kr__registry;
typedef struct kr__tunnel kr__tunnel;
typedef struct kr__waiter kr__waiter;

/* Fired exactly once per waiter, unless the waiter is cancelled first:
 *   status 0, t a usable tunnel of the agent (the least-loaded one at that
 *     moment, chosen as by kr__registry_pick()), when a usable tunnel is
 *     added for the agent or one of its tunnels becomes usable;
 *   status KR_ETIMEDOUT, t NULL, from kr__registry_expire() once the
 *     deadline is reached.
 * w is already dequeued and is freed when the callback returns: do not keep
 * it; cancelling it from inside its own callback is a no-op. The callback
 * normally opens a stream on t and reports the new load with
 * kr__tunnel_set_load(), so the next waiter woken gets the next
 * least-loaded tunnel. */
typedef void (*kr__waiter_cb)(kr__waiter *w, kr__tunnel *t, int status,
                              void *user_data);

/* Fired with present 1 when an agent's first tunnel is added and with
 * present 0 when its last tunnel is removed (usable or not), in the order
 * the changes happen, so the latest call always states the truth. */
typedef void (*kr__presence_cb)(int64_t agent_id, int present, void *user_data);

/* A tunnel as seen by the listing functions. */
typedef struct kr__tunnel_info {
  kr__tunnel *tunnel;
  void *conn; /* as given to kr__registry_add() */
  int64_t agent_id;
  /* NUL-terminated; valid until the tunnel is removed. */
  const char *replica_name;
  size_t replica_name_len;
  /* Tunnels of this agent with the same replica name, this one included. */
  uint32_t replica_conns;
  uint32_t open_streams;
  kr_time_us connected_since;
  kr_time_us rtt;
  int usable;
} kr__tunnel_info;

/* An agent as seen by kr__registry_foreach_agent(). */
typedef struct kr__agent_info {
  int64_t agent_id;
  size_t tunnels; /* >= 1 */
  size_t usable_tunnels;
  size_t replicas; /* distinct replica names */
  size_t waiters;  /* pending waiters */
} kr__agent_info;

/* Return 0 to go on, anything else to stop: kr__registry_foreach_agent()
 * then returns that value. */
typedef int (*kr__agent_visit_cb)(const kr__agent_info *info, void *user_data);

/* Creates an empty registry. mem NULL means kr_mem_default(); the struct is
 * copied. 0, KR_EINVAL (out NULL) or KR_ENOMEM. */
int kr__registry_new(const kr_mem *mem, kr__registry **out);

/* Frees the registry, every tunnel entry and every pending waiter without
 * firing any callback: hosts that attached state to waiters release it
 * themselves. Tunnel and waiter pointers held by the host become invalid;
 * the conn objects are the host's and are not touched. NULL is a no-op.
 * Inside a callback the free is deferred (see the top of this header). */
void kr__registry_free(kr__registry *r);

/* Registers a tunnel of agent_id from the replica named replica_name
 * (NUL-terminated, at most KR__REPLICA_NAME_MAX bytes, copied; "" allowed).
 * conn is the host's connection object, returned as is. The entry starts
 * usable, with 0 open streams, RTT 0 (unknown; treated as the fastest) and
 * connected-since now: register a connection once it can carry streams.
 *
 * *out is written before any callback fires, so passing the address of the
 * host's own field (&conn->tunnel) keeps it right even when a callback
 * removes the tunnel again (the host then clears that field). Callbacks:
 * the presence callback (present 1) when this is the agent's first tunnel,
 * then the agent's waiters, FIFO, as long as waiters and a usable tunnel
 * remain.
 *
 * 0; KR_EINVAL (r, replica_name or out NULL); KR_ETOOBIG (name too long);
 * KR_ENOMEM (nothing changed, no callback); KR_ESTATE (the registry is being
 * freed). */
int kr__registry_add(kr__registry *r, int64_t agent_id,
                     const char *replica_name, void *conn, kr_time_us now,
                     kr__tunnel **out);

/* Removes and frees a tunnel entry (r is the registry t belongs to): on
 * close, GOAWAY received or sent, or keepalive failure. Fires the presence
 * callback (present 0) when it was the agent's last tunnel. Pending waiters of
 * the agent stay queued. t NULL is a no-op. */
void kr__registry_remove(kr__registry *r, kr__tunnel *t);

/* Reports a tunnel's load: open streams, smoothed RTT (0 = unknown) and
 * whether it can take new streams (usable = handshake done and not
 * draining). When the tunnel is usable and the agent has waiters, they are
 * woken (FIFO) before this returns. */
void kr__tunnel_set_load(kr__tunnel *t, uint32_t open_streams, kr_time_us rtt,
                         int usable);

void *kr__tunnel_conn(const kr__tunnel *t);
int64_t kr__tunnel_agent_id(const kr__tunnel *t);
void kr__tunnel_get_info(const kr__tunnel *t, kr__tunnel_info *out);

/* The usable tunnel of agent_id with the fewest open streams; ties go to
 * the lower RTT (compared in units of the RTT granularity), then to the
 * tunnel picked least recently (never-picked first), so equal tunnels take
 * turns. Counts as a pick for that round robin. NULL when the agent has no
 * usable tunnel. Fires no callback. O(tunnels of the agent). */
kr__tunnel *kr__registry_pick(kr__registry *r, int64_t agent_id);

/* RTTs that fall in the same multiple of granularity (microseconds) count
 * as equal in kr__registry_pick(), so jitter does not defeat the round
 * robin. Default 1 (exact comparison); 0 is taken as 1. */
void kr__registry_set_rtt_granularity(kr__registry *r, kr_time_us granularity);

/* Parks a waiter for agent_id until a usable tunnel appears or the
 * deadline (absolute, kr_time_us) is reached; cb fires exactly once, never
 * from inside this call. Call it after kr__registry_pick() returned NULL.
 * *out identifies the waiter for kr__registry_cancel().
 *
 * 0; KR_EINVAL (r, cb or out NULL); KR_ESTATE (the agent has a usable
 * tunnel now: pick it, or the registry is being freed); KR_EAGAIN (the
 * registry already holds its maximum of waiters); KR_ENOMEM. */
int kr__registry_wait(kr__registry *r, int64_t agent_id, kr_time_us deadline,
                      kr__waiter_cb cb, void *user_data, kr__waiter **out);

/* Removes a pending waiter without calling its callback and frees it.
 * NULL, or a waiter whose callback is running, is a no-op; a waiter whose
 * callback has returned no longer exists and must not be passed. */
void kr__registry_cancel(kr__waiter *w);

int64_t kr__waiter_agent_id(const kr__waiter *w);
kr_time_us kr__waiter_deadline(const kr__waiter *w);

/* Fires KR_ETIMEDOUT for the waiters whose deadline <= now, in deadline
 * order (equal deadlines in the order they were parked). Fires at most as
 * many callbacks as waiters were pending when it was called, so a callback
 * that parks a new, already expired waiter cannot make it loop: that one is
 * left for the next call. Returns the number of callbacks fired. */
int kr__registry_expire(kr__registry *r, kr_time_us now);

/* Earliest pending waiter deadline, or UINT64_MAX when there is none: when
 * the host should call kr__registry_expire() next. */
kr_time_us kr__registry_next_deadline(const kr__registry *r);

/* Bound on pending waiters (default KR__REGISTRY_DEFAULT_MAX_WAITERS).
 * Lowering it below the current count keeps the pending ones. */
void kr__registry_set_max_waiters(kr__registry *r, size_t max_waiters);

void kr__registry_set_presence_cb(kr__registry *r, kr__presence_cb cb,
                                  void *user_data);

/* Agents with at least one tunnel; tunnels; pending waiters. */
size_t kr__registry_agent_count(const kr__registry *r);
size_t kr__registry_tunnel_count(const kr__registry *r);
size_t kr__registry_waiter_count(const kr__registry *r);

/* Calls visit for each agent with at least one tunnel, in no particular
 * order. The visitor may change the registry: every agent that has a
 * tunnel throughout the walk is visited exactly once; agents added during
 * the walk may or may not be. Returns 0 after the whole walk, the
 * visitor's non-zero return value when it stopped the walk, or KR_ESTATE
 * when called from inside a visitor of the same registry or while it is
 * being freed. */
int kr__registry_foreach_agent(kr__registry *r, kr__agent_visit_cb visit,
                               void *user_data);

/* Copies the tunnels of agent_id into out (at most cap entries; out may be
 * NULL when cap is 0), grouped by replica in the order the replicas first
 * appeared, and returns the agent's number of tunnels (0 for an unknown
 * agent), which may exceed cap. Fires no callback. */
size_t kr__registry_agent_tunnels(const kr__registry *r, int64_t agent_id,
                                  kr__tunnel_info *out, size_t cap);

#endif
