/* The splice between a client stream and a tunnel stream, with routing.
 * Internal to the kas role.
 *
 * Backpressure end to end: bytes from one side are written into the other
 * stream and consumed (credit returned) only for the part that stream
 * accepted; the rest waits in the relay until on_writable, and is bounded
 * by the sender's stream window because nothing more is consumed.
 */
#ifndef KR_KAS_RELAY_H
#define KR_KAS_RELAY_H

#include "kas/kas_internal.h"

struct evbuffer;

/* A client opened stream s with metadata md: validate ":agent" and
 * ":service", then route it (now, or when a tunnel registers, or fail it
 * with KR_CODE_UNAVAILABLE at the route timeout). fin: the OPEN carried
 * FIN. early (NULL: none): bytes s delivered before the relay started
 * (held while the client's credentials were verified), not yet consumed;
 * the relay takes them (early is left empty) and consumes them as the
 * tunnel stream accepts them. early_fin: s half-closed since the OPEN. */
void kr__relay_start(kr_kas *k, kas_conn *cc, kr_stream *s, const kr_md *md,
                     size_t n, int fin, struct evbuffer *early, int early_fin);

/* Frees every relay without touching streams (kr_kas_free()). */
void kr__relay_free_all(kr_kas *k);

#endif
