/* Plain TCP transport over a bufferevent. Internal. */
#ifndef KR_IO_TRANSPORT_TCP_H
#define KR_IO_TRANSPORT_TCP_H

#include <event2/util.h>

#include "transport.h"

/* Wraps an accepted socket (takes ownership of fd, also on failure).
 * The transport is open at once: on_open is not called.
 * Returns 0 or KR_ENOMEM. */
int kr__tcp_accept(struct event_base *base, evutil_socket_t fd,
                   const kr__transport_cbs *cbs, void *ud,
                   kr__transport **out);

/* Connects to host:port (numeric addresses connect at once; names are
 * resolved by libevent). on_open fires when connected, on_close with
 * KR_EIO on failure. Bytes written before that are sent after connecting.
 * Returns 0, KR_ENOMEM or KR_EADDR. */
int kr__tcp_connect(struct event_base *base, const char *host, int port,
                    const kr__transport_cbs *cbs, void *ud,
                    kr__transport **out);

#endif
