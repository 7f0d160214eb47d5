/* Transport URLs: tcp://, tls://, ws://, wss:// (and http://, https:// for
 * later listeners). Parsed with libevent's evhttp_uri parser. Internal. */
#ifndef KR_IO_URL_H
#define KR_IO_URL_H

#include <stddef.h>

typedef enum kr__scheme {
  KR__SCHEME_TCP,
  KR__SCHEME_TLS,
  KR__SCHEME_WS,
  KR__SCHEME_WSS,
  KR__SCHEME_HTTP,
  KR__SCHEME_HTTPS
} kr__scheme;

typedef struct kr__url {
  kr__scheme scheme;
  char host[256]; /* without brackets for IPv6 */
  int port;
  char path[256]; /* "/" when absent */
} kr__url;

/* Parses url. Returns 0, or KR_EADDR with a reason in err: unknown scheme,
 * missing host or port, port out of range, user info present, oversized
 * parts. */
int kr__url_parse(const char *url, kr__url *out, char *err, size_t errlen);

/* 1 for tls:// wss:// https://. */
int kr__url_is_secure(const kr__url *u);

/* "tcp", "tls", ... */
const char *kr__scheme_name(kr__scheme s);

#endif
