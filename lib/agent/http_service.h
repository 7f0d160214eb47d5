/* The agent's HTTP services: an HTTP/1.1 reverse proxy from mux streams to
 * one upstream base URL. Internal.
 *
 * Each stream carries one exchange in the "HTTP over streams" mapping
 * (lib/http/http_map.h): the OPEN gives ":method", ":path" and the
 * end-to-end request fields, DATA the body, FIN its end; the service
 * answers with a REPLY (":status" and the response's end-to-end fields),
 * DATA and FIN, or with RESET KR_CODE_UPSTREAM and a short reason naming
 * the upstream when the upstream cannot be reached or misbehaves.
 *
 * Upstream connections come from a per-service keep-alive pool (LIFO, at
 * most KR__HTTP_SERVICE_MAX_IDLE idle, each closed after the idle
 * timeout). A request without a body that fails on a reused connection
 * before any response byte is retried once on a fresh connection. A
 * connection goes back to the pool only after a complete exchange (request
 * fully sent, response fully read, keep-alive); a stream reset by kas
 * closes its connection.
 *
 * Bodies stream both ways with backpressure: stream credit is returned
 * only as the upstream connection accepts the bytes, and upstream reading
 * stops while the stream refuses more. After a 101 reply both directions
 * carry raw bytes; the client's FIN is not passed on then (a transport
 * cannot half-close), the upstream's close ends the stream's sending side.
 *
 * Everything runs on the loop thread of the event_base given at creation.
 */
#ifndef KR_AGENT_HTTP_SERVICE_H
#define KR_AGENT_HTTP_SERVICE_H

#include <event2/event.h>
#include <stddef.h>

#include <kasroute/mux.h>

#define KR__HTTP_SERVICE_MAX_IDLE 32
#define KR__HTTP_SERVICE_CONNECT_MS 10000 /* connect and TLS handshake */
#define KR__HTTP_SERVICE_HEAD_MS 60000    /* request sent -> response head */
#define KR__HTTP_SERVICE_IDLE_MS 60000    /* idle pooled connection */

typedef struct kr__http_service kr__http_service;

/* Creates a service for url (http://host:port[/base] or
 * https://host:port[/base]); name is used in logs. https verifies the
 * upstream certificate and host name against ca_file (NULL: the system
 * store) unless verify is 0 (tests only). Returns 0, KR_EADDR (bad URL,
 * reason in err), KR_ETLS (CA file) or KR_ENOMEM. */
int kr__http_service_new(struct event_base *base, const char *name,
                         const char *url, const char *ca_file, int verify,
                         kr__http_service **out, char *err, size_t errlen);

/* Closes every upstream connection and detaches from every stream still
 * served (they get no more callbacks from the service; their owner resets
 * or frees them). NULL: no-op. */
void kr__http_service_free(kr__http_service *sv);

/* Returns 1 for request field names (lower case, len bytes) the caller
 * wants dropped before forwarding. */
typedef int (*kr__http_field_filter)(const char *name, size_t len, void *ud);

/* Serves stream s, just opened with metadata md[0..n) (fin: no body).
 * The service takes the stream's handler and user data, and always
 * answers: REPLY, or RESET (KR_CODE_PROTOCOL for a malformed request,
 * KR_CODE_UPSTREAM when the upstream fails, KR_CODE_INTERNAL when memory
 * runs out). extra[0..n_extra) are fields added to the request (copied
 * during the call); drop (may be NULL) removes incoming fields. Never
 * forwarded whatever the stream says: hop-by-hop fields, "host" (the
 * upstream's own is sent), "expect". */
void kr__http_service_serve(kr__http_service *sv, kr_stream *s, const kr_md *md,
                            size_t n, int fin, const kr_md *extra,
                            size_t n_extra, kr__http_field_filter drop,
                            void *drop_ud);

/* Tests only: timeouts in milliseconds (0 keeps the current value). */
void kr__http_service_set_timeouts(kr__http_service *sv, int connect_ms,
                                   int head_ms, int idle_ms);

/* Counters, for tests and logs. */
typedef struct kr__http_service_stats {
  unsigned long long connects; /* upstream connections started */
  unsigned long long reused;   /* exchanges served by a pooled connection */
  unsigned long long retries;  /* exchanges retried on a fresh connection */
  size_t live;                 /* upstream connections open now */
  size_t idle;                 /* of which idle in the pool */
  size_t exchanges;            /* streams being served now */
} kr__http_service_stats;

void kr__http_service_get_stats(const kr__http_service *sv,
                                kr__http_service_stats *out);

#endif
