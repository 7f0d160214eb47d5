/* The connected agents as a JSON document, for GET /api/v1/agents on the
 * HTTP gateway and for API clients (a stream opened with ":list"
 * "agents"). Internal to the kas role.
 *
 *   {"agents":[{"id":42,"connections":3,"connected_since_ms":...,
 *     "instances":[{"instance":"kas-a","connections":2,
 *                   "connected_since_ms":...}],
 *     "replicas":[{"name":"pod-a","instance":"kas-a","connections":2,
 *                  "connected_since_ms":...}]}],
 *    "truncated":false}
 *
 * Cluster-wide while Redis is reachable (docs/PRESENCE.md), else the
 * agents of this instance only (same format).
 */
#ifndef KR_KAS_LISTING_H
#define KR_KAS_LISTING_H

#include "kas/kas_internal.h"

typedef struct kr__listing kr__listing;

/* Once, never from inside kr__listing_start(): json[0..len) (valid during
 * the call), or err < 0 (KR_ENOMEM). */
typedef void (*kr__listing_cb)(const char *json, size_t len, int err,
                               void *ud);

/* 0 and *out (for kr__listing_cancel()), or KR_ENOMEM (no callback). */
int kr__listing_start(kr_kas *k, kr__listing_cb cb, void *ud,
                      kr__listing **out);

/* No callback after this. NULL is a no-op. */
void kr__listing_cancel(kr__listing *l);

/* Answers an API client's stream that asked for the listing (":list"
 * "agents"): REPLY ":status" 200, the document as DATA, FIN. */
void kr__listing_serve_stream(kr_kas *k, kr_stream *s);

/* Frees every pending listing without callbacks (kr_kas_free()). */
void kr__listing_free_all(kr_kas *k);

#endif
