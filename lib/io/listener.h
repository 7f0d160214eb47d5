/* Listening sockets that turn accepted connections into transports.
 * Internal. */
#ifndef KR_IO_LISTENER_H
#define KR_IO_LISTENER_H

#include <event2/event.h>

#include "transport.h"
#include "transport_tls.h"
#include "url.h"

/* What a listener is for; opaque to this module, reported back. */
#define KR__LISTEN_AGENT 1
#define KR__LISTEN_API 2
#define KR__LISTEN_HTTP 3
#define KR__LISTEN_PRIVATE 4 /* other kas instances */

typedef struct kr__listener kr__listener;

/* A connection was accepted and wrapped: open tells whether t is usable
 * already (TCP) or will call on_open (TLS); addr is the peer IP without
 * port. Ownership of t passes to the callee. */
typedef void (*kr__accept_cb)(kr__listener *l, kr__transport *t, int open,
                              const char *addr, void *ud);

/* Binds u (tcp://, tls://, ws://, wss://, and http:// / https://, which
 * are plain TCP / TLS byte streams; tls needs cfg, wss the files
 * of kr__listener_set_tls_files()). handshake_ms bounds TLS handshakes and
 * WebSocket upgrades. Returns 0, KR_EADDR (resolve or bind failed, reason
 * in err) or KR_ENOMEM. */
int kr__listener_new(struct event_base *base, const kr__url *u, int kind,
                     kr__tls_config *cfg, int handshake_ms, kr__accept_cb cb,
                     void *ud, kr__listener **out, char *err, size_t errlen);
int kr__listener_port(const kr__listener *l);
int kr__listener_kind(const kr__listener *l);
/* Closes the listening socket (new connections are refused by the
 * kernel) but keeps what accepted connections still use (the WebSocket
 * context) until kr__listener_free(). */
void kr__listener_close(kr__listener *l);
void kr__listener_free(kr__listener *l);

/* wss:// listeners: the certificate chain and key (PEM files) that
 * libwebsockets loads; call once after kr__listener_new(). A no-op for
 * other schemes. Returns 0, KR_ECONFIG (missing files) or KR_ETLS /
 * KR_ENOMEM with a reason in err. */
int kr__listener_set_tls_files(kr__listener *l, const char *cert_file,
                               const char *key_file, char *err,
                               size_t errlen);

#endif
