/* Credential verifications by the host's callbacks (kasroute/kas.h,
 * "custom verifiers"): the kr_kas_auth object and its life cycle.
 * Internal to the kas role.
 *
 * A waiter (an agent or API connection, a gateway request) starts a
 * verification and names a slot of its own (a kr_kas_auth pointer). The
 * slot holds the request while it is pending; the library clears it
 * before the waiter hears the outcome, and when the waiter cancels. A
 * pending request is on its kas's list; once the outcome is delivered,
 * the waiter cancelled, or the kas is freed, the request leaves the list
 * (kr_kas_auth_cancelled() then says 1) and lives on until the
 * application completes it, which then only frees it.
 */
#ifndef KR_KAS_AUTH_REQUEST_H
#define KR_KAS_AUTH_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include <kasroute/kas.h>

#include "kas/http_auth.h"

/* Verifications pending at once per kas; more are refused without
 * calling the verifier (the caller retries later). */
#define KR__AUTH_MAX_PENDING 16384
/* Bytes of a denial reason kept (the rest is cut). */
#define KR__AUTH_MAX_REASON 120

typedef enum kr__auth_outcome {
  KR__AUTH_ALLOWED = 0,
  KR__AUTH_DENIED = 1,
  KR__AUTH_TIMEDOUT = 2 /* no verdict in time: not a refusal */
} kr__auth_outcome;

typedef struct kr__auth_verdict {
  kr__auth_outcome outcome;
  /* Denied: the verifier's reason, printable ASCII, at most
   * KR__AUTH_MAX_REASON bytes, never empty. NULL otherwise. */
  const char *reason;
  /* Allowed: the agent verification's agent id (> 0); for an API
   * verification, the identity (any_agent unless kr_kas_auth_set_agents()
   * was called; agent_id 0 unless set). Valid during the callback. */
  int64_t agent_id;
  const kr__identity *id;
} kr__auth_verdict;

typedef void (*kr__auth_done_cb)(const kr__auth_verdict *v, void *ud);

/* 1 if a verifier of kind is configured on k, else 0. */
int kr__auth_enabled(const kr_kas *k, kr_kas_auth_kind kind);

/* Starts verifying token[0..len) with k's verifier of kind: sets *slot,
 * arms the timeout (0: none) and calls the verifier, which may complete
 * the request before this returns (done has then run and *slot is NULL
 * again). done runs exactly once unless the waiter cancels first: with
 * the verdict, or KR__AUTH_TIMEDOUT at the deadline. Returns 0, or
 * without calling anything: KR_EINVAL (no verifier of kind), KR_EAGAIN
 * (KR__AUTH_MAX_PENDING pending), KR_ENOMEM. */
int kr__auth_start(kr_kas *k, kr_kas_auth_kind kind, const char *peer,
                   const uint8_t *token, size_t len, kr_time_us timeout,
                   kr__auth_done_cb done, void *ud, kr_kas_auth **slot);

/* The waiter no longer waits: done will not run, *slot is cleared, the
 * request stays valid for the application. NULL is a no-op. */
void kr__auth_cancel(kr_kas_auth *a);

/* kr_kas_free(): cancels every pending request of k. */
void kr__auth_cancel_all(kr_kas *k);

#endif
