/* Dialling kas (see dial.h). */
#include <string.h>

#include <kasroute/error.h>

#include "conn.h"
#include "dial.h"
#include "transport_tcp.h"

static int is_ws(const kr__url *u) {
  return u->scheme == KR__SCHEME_WS || u->scheme == KR__SCHEME_WSS;
}

int kr__dial_parse_url(const char *url, kr__url *out) {
  char err[256];
  kr__url u;
  if (kr__url_parse(url, &u, err, sizeof(err)) < 0)
    return KR_EADDR;
  if (u.scheme != KR__SCHEME_TCP && u.scheme != KR__SCHEME_TLS && !is_ws(&u))
    return KR_EADDR;
  *out = u;
  return 0;
}

int kr__dialer_init(kr__dialer *d, struct event_base *base, const kr__url *url,
                    const char *ca_file, int verify, char *err, size_t errlen) {
  memset(d, 0, sizeof(*d));
  d->base = base;
  d->url = *url;
  if (url->scheme == KR__SCHEME_TLS)
    return kr__tls_config_client(ca_file, verify, &d->tls, err, errlen);
  if (is_ws(url))
    return kr__ws_ctx_new_client(base, url->scheme == KR__SCHEME_WSS, ca_file,
                                 verify, &d->ws, err, errlen);
  return 0;
}

int kr__dialer_connect(kr__dialer *d, const char *bearer, size_t bearer_len,
                       int handshake_ms, kr__transport **out) {
  const kr__url *u = &d->url;
  if (is_ws(u))
    return kr__ws_connect(d->ws, u, bearer, bearer_len, handshake_ms,
                          &kr__transport_nop_cbs, NULL, out);
  if (u->scheme == KR__SCHEME_TLS)
    return kr__tls_connect(d->base, u->host, u->port, u->host, d->tls,
                           handshake_ms, &kr__transport_nop_cbs, NULL, out);
  return kr__tcp_connect(d->base, u->host, u->port, &kr__transport_nop_cbs,
                         NULL, out);
}

void kr__dialer_free(kr__dialer *d) {
  kr__tls_config_free(d->tls);
  kr__ws_ctx_free(d->ws);
  d->tls = NULL;
  d->ws = NULL;
}
