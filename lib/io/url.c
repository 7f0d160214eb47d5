/* Transport URL parsing over evhttp_uri (see url.h). */
#include <event2/http.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <kasroute/error.h>

#include "url.h"

static const struct {
  const char *name;
  kr__scheme scheme;
} schemes[] = {{"tcp", KR__SCHEME_TCP},   {"tls", KR__SCHEME_TLS},
               {"ws", KR__SCHEME_WS},     {"wss", KR__SCHEME_WSS},
               {"http", KR__SCHEME_HTTP}, {"https", KR__SCHEME_HTTPS}};

const char *kr__scheme_name(kr__scheme s) {
  for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
    if (schemes[i].scheme == s)
      return schemes[i].name;
  return "?";
}

int kr__url_is_secure(const kr__url *u) {
  return u->scheme == KR__SCHEME_TLS || u->scheme == KR__SCHEME_WSS ||
         u->scheme == KR__SCHEME_HTTPS;
}

static int bad(char *err, size_t errlen, const char *url, const char *why) {
  snprintf(err, errlen, "bad URL \"%.200s\": %s", url, why);
  return KR_EADDR;
}

int kr__url_parse(const char *url, kr__url *out, char *err, size_t errlen) {
  memset(out, 0, sizeof(*out));
  if (!url || strlen(url) > 1000)
    return bad(err, errlen, url ? "(too long)" : "(null)", "missing or too long");
  struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
  if (!u)
    return bad(err, errlen, url, "not a URL (expected scheme://host:port)");
  int rc = 0;
  const char *scheme = evhttp_uri_get_scheme(u);
  const char *host = evhttp_uri_get_host(u);
  const char *path = evhttp_uri_get_path(u);
  int port = evhttp_uri_get_port(u);
  size_t i, n = sizeof(schemes) / sizeof(schemes[0]);
  for (i = 0; scheme && i < n; i++)
    if (strcasecmp(scheme, schemes[i].name) == 0)
      break;
  if (!scheme || i == n) {
    rc = bad(err, errlen, url, "scheme must be tcp, tls, ws, wss, http or https");
  } else if (evhttp_uri_get_userinfo(u)) {
    rc = bad(err, errlen, url, "user info is not allowed");
  } else if (!host || !*host || strlen(host) >= sizeof(out->host)) {
    rc = bad(err, errlen, url, "missing or oversized host");
  } else if (path && strlen(path) >= sizeof(out->path)) {
    rc = bad(err, errlen, url, "path too long");
  } else {
    out->scheme = schemes[i].scheme;
    if (port < 0) {
      /* Defaults only where the scheme has a well-known one. */
      switch (out->scheme) {
      case KR__SCHEME_WS:
      case KR__SCHEME_HTTP:
        port = 80;
        break;
      case KR__SCHEME_WSS:
      case KR__SCHEME_HTTPS:
        port = 443;
        break;
      default:
        break;
      }
    }
    if (port < 0 || port > 65535) {
      rc = bad(err, errlen, url, "missing or invalid port");
    } else {
      out->port = port;
      /* evhttp_uri keeps IPv6 literals in brackets. */
      size_t hl = strlen(host);
      if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']')
        snprintf(out->host, sizeof(out->host), "%.*s", (int)(hl - 2), host + 1);
      else
        snprintf(out->host, sizeof(out->host), "%s", host);
      snprintf(out->path, sizeof(out->path), "%s", path && *path ? path : "/");
    }
  }
  evhttp_uri_free(u);
  return rc;
}
