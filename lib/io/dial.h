/* Dialling kas: the transport setup the agent and client roles share.
 * Internal.
 *
 * A kr__dialer holds what every connection to one kas URL needs: the
 * parsed URL, a TLS configuration for tls://, a libwebsockets context for
 * ws:// and wss://. kr__dialer_connect() starts one transport.
 */
#ifndef KR_IO_DIAL_H
#define KR_IO_DIAL_H

#include <event2/event.h>

#include <kasroute/mux.h>

#include "transport.h"
#include "transport_tls.h"
#include "transport_ws.h"
#include "url.h"

/* Parses a kas URL: tcp://, tls://, ws:// or wss://. 0 or KR_EADDR. */
int kr__dial_parse_url(const char *url, kr__url *out);

/* The dialling settings the agent and client options share. */
typedef struct kr__dial_opts {
  kr__url url;
  int has_url;
  char token[8193]; /* secret: wiped by kr__dial_opts_wipe() */
  size_t token_len;
  char ca_file[1024]; /* "" = the system store */
  int verify;
  kr_time_us ka_interval, ka_timeout;
} kr__dial_opts;

/* Defaults: verification on, keepalive 15 s / 45 s. */
void kr__dial_opts_init(kr__dial_opts *d);
/* Zeroes the token. */
void kr__dial_opts_wipe(kr__dial_opts *d);
/* 0 or KR_EADDR (see kr__dial_parse_url()). */
int kr__dial_opts_set_url(kr__dial_opts *d, const char *url);
/* 1..max bytes (max <= 8192), copied. 0 or KR_EINVAL. */
int kr__dial_opts_set_token(kr__dial_opts *d, const char *token, size_t len,
                            size_t max);
/* 0 or KR_EINVAL (NULL or too long). */
int kr__dial_opts_set_ca_file(kr__dial_opts *d, const char *path);
/* 0 or KR_EINVAL (timeout set and not above interval). */
int kr__dial_opts_set_keepalive(kr__dial_opts *d, kr_time_us interval,
                                kr_time_us timeout);

typedef struct kr__dialer {
  struct event_base *base;
  kr__url url;
  kr__tls_config *tls; /* tls:// */
  kr__ws_ctx *ws;      /* ws://, wss:// */
} kr__dialer;

/* Prepares d for url. ca_file NULL: the system store; verify 0 accepts any
 * certificate (tests only). Returns 0, KR_ETLS (CA file, reason in err) or
 * KR_ENOMEM; on failure d needs no kr__dialer_free(). */
int kr__dialer_init(kr__dialer *d, struct event_base *base, const kr__url *url,
                    const char *ca_file, int verify, char *err, size_t errlen);

/* kr__dialer_init() with the URL and TLS settings of o. */
int kr__dialer_init_opts(kr__dialer *d, struct event_base *base,
                         const kr__dial_opts *o, char *err, size_t errlen);

/* Starts a connection; the transport reports on_open or on_close. bearer
 * (may be NULL) goes as "Authorization: Bearer" on WebSocket upgrades.
 * Returns 0, KR_EADDR or KR_ENOMEM. */
int kr__dialer_connect(kr__dialer *d, const char *bearer, size_t bearer_len,
                       int handshake_ms, kr__transport **out);

/* Frees the TLS configuration and the WebSocket context; call it after
 * every transport of d is gone. */
void kr__dialer_free(kr__dialer *d);

#endif
