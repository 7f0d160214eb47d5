/* TLS transport: mbedTLS 2.28 over a bufferevent. Internal.
 *
 * TLS 1.2 (2.28 has no 1.3), AEAD suites with ECDHE only, certificate
 * verification on by default with the hostname checked (2.28 cannot
 * express subjectAltName in certificates it writes; verification uses the
 * SAN when present, else the CN).
 */
#ifndef KR_IO_TRANSPORT_TLS_H
#define KR_IO_TRANSPORT_TLS_H

#include <event2/util.h>

#include "transport.h"

typedef struct kr__tls_config kr__tls_config;

/* Server side: certificate chain and private key (PEM or DER files).
 * Returns 0 or KR_ETLS / KR_ENOMEM with a reason in err. */
int kr__tls_config_server(const char *cert_file, const char *key_file,
                          kr__tls_config **out, char *err, size_t errlen);

/* Client side: ca_file NULL uses the system store
 * (/etc/ssl/certs/ca-certificates.crt); verify 0 disables verification
 * (for tests and explicit opt-out only). */
int kr__tls_config_client(const char *ca_file, int verify,
                          kr__tls_config **out, char *err, size_t errlen);

void kr__tls_config_free(kr__tls_config *cfg);

/* Both keep a reference to cfg, which must outlive the transport.
 * handshake_ms bounds the handshake (0: 10 s). Ownership of fd passes to
 * the transport, also on failure. on_open fires when the handshake is
 * done; on_close(KR_ETLS, reason) if it fails. */
int kr__tls_accept(struct event_base *base, evutil_socket_t fd,
                   kr__tls_config *cfg, int handshake_ms,
                   const kr__transport_cbs *cbs, void *ud,
                   kr__transport **out);
/* server_name: expected certificate name and SNI (usually the URL host). */
int kr__tls_connect(struct event_base *base, const char *host, int port,
                    const char *server_name, kr__tls_config *cfg,
                    int handshake_ms, const kr__transport_cbs *cbs, void *ud,
                    kr__transport **out);

#endif
