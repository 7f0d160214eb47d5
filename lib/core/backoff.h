/* Reconnect delays: exponential backoff with "full jitter". Internal to the
 * library.
 *
 * The n-th consecutive failed attempt (n = 0, 1, 2, ...) waits a uniformly
 * random time in [0, min(cap, base * 2^n)] (the "full jitter" scheme:
 * spreading every retry over the whole interval keeps a fleet of agents
 * that lost kas at the same moment from coming back in waves).
 *
 * The attempt counter resets only after a connection proved stable: the
 * caller reports kr__backoff_connected() when a connection is up and
 * kr__backoff_disconnected() when it goes away; if it lived at least
 * stable_us the next delay starts from base again. A peer that accepts and
 * immediately drops connections therefore still sees growing delays.
 *
 * No clock and no randomness are read here: times (microseconds, any
 * monotonic origin) and 64 random bits per delay come from the caller.
 * The struct is plain data; no allocation, no cleanup.
 */
#ifndef KR_CORE_BACKOFF_H
#define KR_CORE_BACKOFF_H

#include <stdint.h>

#include <kasroute/error.h>

typedef struct kr__backoff {
  uint64_t base_us;
  uint64_t cap_us;
  uint64_t stable_us;
  uint32_t attempt;      /* consecutive delays handed out since a reset */
  int connected;         /* between connected() and disconnected() */
  uint64_t connected_at; /* time given to connected() */
} kr__backoff;

/* Sets up b with attempt 0 and not connected. Returns 0, or KR_EINVAL when
 * b is NULL, base_us is 0 or cap_us < base_us (b is then untouched).
 * stable_us 0 means every connection counts as stable. */
int kr__backoff_init(kr__backoff *b, uint64_t base_us, uint64_t cap_us,
                     uint64_t stable_us);

/* Delay before the next attempt: random mapped into
 * [0, min(cap_us, base_us * 2^attempt)] (inclusive), then attempt is
 * incremented (saturating). random should be 64 uniformly random bits; the
 * mapping is a 64-bit modulo whose bias is below 2^-32 for any interval up
 * to 2^32 us (71 minutes), so negligible. */
uint64_t kr__backoff_next(kr__backoff *b, uint64_t random);

/* The ceiling the next call to kr__backoff_next will draw under. */
uint64_t kr__backoff_ceiling(const kr__backoff *b);

/* A connection (and whatever handshake the caller counts) is up at now_us.
 * The attempt counter is left alone until the connection proves stable. */
void kr__backoff_connected(kr__backoff *b, uint64_t now_us);

/* The connection went away at now_us. If kr__backoff_connected() was called
 * and the connection lived at least stable_us, the attempt counter goes
 * back to 0. A clock that went backwards counts as a short life. Calling it
 * without a preceding connected() only marks b disconnected. */
void kr__backoff_disconnected(kr__backoff *b, uint64_t now_us);

/* Forgets every failure: the next delay is drawn from [0, base_us]. */
void kr__backoff_reset(kr__backoff *b);

/* Number of delays handed out since the last reset. */
uint32_t kr__backoff_attempts(const kr__backoff *b);

#endif
