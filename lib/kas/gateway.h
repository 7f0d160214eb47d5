/* The kas HTTP gateway: HTTP/1.1 clients (curl, kubectl, the platform)
 * reach agents' services. Internal to the kas role.
 *
 *   ANY /api/v1/agents/{agent_id}/services/{service}/{path...}
 *   ANY /k8s-proxy/{path...}
 *
 * Each request becomes one tunnel stream (lib/http/http_map.h describes
 * the mapping); bodies stream both ways with end-to-end backpressure;
 * an upgrade (101) turns the connection into a raw byte relay. Requests on
 * one connection are served one after another (pipelined requests wait in
 * the input buffer, bounded), so responses keep their order.
 */
#ifndef KR_KAS_GATEWAY_H
#define KR_KAS_GATEWAY_H

#include "kas/kas_internal.h"

/* An HTTP listener accepted transport t (open: usable now; else it calls
 * on_open after its TLS handshake). Takes ownership of t. */
void kr__gateway_accept(kr_kas *k, kr__transport *t, int open,
                        const char *addr, int secure);

/* Drain: idle connections close now, busy ones after their response. */
void kr__gateway_drain(kr_kas *k);

/* Frees every gateway connection without callbacks (kr_kas_free()). */
void kr__gateway_free_all(kr_kas *k);

/* Connections open now. */
size_t kr__gateway_count(const kr_kas *k);

#endif
