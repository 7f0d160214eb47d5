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

void kr__dial_opts_init(kr__dial_opts *d) {
  memset(d, 0, sizeof(*d));
  d->verify = 1;
  d->ka_interval = 15 * 1000000ull;
  d->ka_timeout = 45 * 1000000ull;
}

void kr__dial_opts_wipe(kr__dial_opts *d) {
  volatile char *p = d->token;
  for (size_t i = 0; i < sizeof(d->token); i++)
    p[i] = 0;
  d->token_len = 0;
}

int kr__dial_opts_set_url(kr__dial_opts *d, const char *url) {
  kr__url u;
  if (kr__dial_parse_url(url, &u) < 0)
    return KR_EADDR;
  d->url = u;
  d->has_url = 1;
  return 0;
}

int kr__dial_opts_set_token(kr__dial_opts *d, const char *token, size_t len,
                            size_t max) {
  if (!token || len == 0 || len > max || len >= sizeof(d->token))
    return KR_EINVAL;
  memcpy(d->token, token, len);
  d->token[len] = 0;
  d->token_len = len;
  return 0;
}

int kr__dial_opts_set_ca_file(kr__dial_opts *d, const char *path) {
  if (!path || strlen(path) >= sizeof(d->ca_file))
    return KR_EINVAL;
  memcpy(d->ca_file, path, strlen(path) + 1);
  return 0;
}

int kr__dial_opts_set_keepalive(kr__dial_opts *d, kr_time_us interval,
                                kr_time_us timeout) {
  if (timeout != 0 && timeout <= interval)
    return KR_EINVAL;
  d->ka_interval = interval;
  d->ka_timeout = timeout;
  return 0;
}

int kr__dialer_init_opts(kr__dialer *d, struct event_base *base,
                         const kr__dial_opts *o, char *err, size_t errlen) {
  return kr__dialer_init(d, base, &o->url, o->ca_file[0] ? o->ca_file : NULL,
                         o->verify, err, errlen);
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
