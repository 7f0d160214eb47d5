/* Listening sockets (see listener.h). */
#include <arpa/inet.h>
#include <event2/listener.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <kasroute/error.h>

#include "conn.h"
#include "listener.h"
#include "log.h"
#include "transport_tcp.h"
#include "transport_ws.h"

struct kr__listener {
  struct evconnlistener *l;
  struct event_base *base;
  kr__scheme scheme;
  int kind;
  int port;
  kr__tls_config *tls;
  kr__ws_ctx *ws; /* ws:// and wss:// listeners */
  int handshake_ms;
  kr__accept_cb cb;
  void *ud;
};

static void accept_cb(struct evconnlistener *el, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg) {
  kr__listener *l = arg;
  char addr[64] = "?";
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, addr, sizeof(addr));
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, addr,
              sizeof(addr));
  kr__transport *t = NULL;
  int rc, open = 0;
  if (l->scheme == KR__SCHEME_TLS || l->scheme == KR__SCHEME_HTTPS) {
    rc = kr__tls_accept(l->base, fd, l->tls, l->handshake_ms,
                        &kr__transport_nop_cbs, NULL, &t);
  } else if (l->scheme == KR__SCHEME_WS || l->scheme == KR__SCHEME_WSS) {
    if (l->ws) {
      rc = kr__ws_accept(l->ws, fd, l->handshake_ms, &kr__transport_nop_cbs,
                         NULL, &t);
    } else { /* wss:// without kr__listener_set_tls_files() */
      evutil_closesocket(fd);
      rc = KR_ETLS;
    }
  } else {
    rc = kr__tcp_accept(l->base, fd, &kr__transport_nop_cbs, NULL, &t);
    open = 1;
  }
  if (rc < 0) {
    kr__log(KR_LOG_ERROR, "accept_failed", "peer=%s error=%s", addr,
            kr_err_name(rc));
    return;
  }
  l->cb(l, t, open, addr, l->ud);
}

static void error_cb(struct evconnlistener *el, void *arg) {
  int e = EVUTIL_SOCKET_ERROR();
  kr__log(KR_LOG_ERROR, "accept_error", "error=\"%s\"",
          evutil_socket_error_to_string(e));
}

int kr__listener_new(struct event_base *base, const kr__url *u, int kind,
                     kr__tls_config *cfg, int handshake_ms, kr__accept_cb cb,
                     void *ud, kr__listener **out, char *err, size_t errlen) {
  if (u->scheme != KR__SCHEME_TCP && u->scheme != KR__SCHEME_TLS &&
      u->scheme != KR__SCHEME_WS && u->scheme != KR__SCHEME_WSS &&
      u->scheme != KR__SCHEME_HTTP && u->scheme != KR__SCHEME_HTTPS) {
    snprintf(err, errlen, "listener scheme %s is not supported",
             kr__scheme_name(u->scheme));
    return KR_EADDR;
  }
  struct evutil_addrinfo hints, *ai = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_NUMERICSERV;
  char port[16];
  snprintf(port, sizeof(port), "%d", u->port);
  int gai = evutil_getaddrinfo(u->host, port, &hints, &ai);
  if (gai != 0 || !ai) {
    snprintf(err, errlen, "cannot resolve %s: %s", u->host,
             evutil_gai_strerror(gai));
    return KR_EADDR;
  }
  kr__listener *l = calloc(1, sizeof(*l));
  if (!l) {
    evutil_freeaddrinfo(ai);
    return KR_ENOMEM;
  }
  l->base = base;
  l->scheme = u->scheme;
  l->kind = kind;
  l->tls = cfg;
  l->handshake_ms = handshake_ms;
  l->cb = cb;
  l->ud = ud;
  l->l = evconnlistener_new_bind(base, accept_cb, l,
                                 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                     LEV_OPT_CLOSE_ON_EXEC,
                                 -1, ai->ai_addr, (int)ai->ai_addrlen);
  evutil_freeaddrinfo(ai);
  if (!l->l) {
    int e = EVUTIL_SOCKET_ERROR();
    snprintf(err, errlen, "cannot listen on %s:%d: %s", u->host, u->port,
             evutil_socket_error_to_string(e));
    free(l);
    return KR_EADDR;
  }
  evconnlistener_set_error_cb(l->l, error_cb);
  if (u->scheme == KR__SCHEME_WS) {
    int rc = kr__ws_ctx_new_server(base, NULL, NULL, &l->ws, err, errlen);
    if (rc < 0) {
      kr__listener_free(l);
      return rc;
    }
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof(ss);
  getsockname(evconnlistener_get_fd(l->l), (struct sockaddr *)&ss, &sl);
  l->port = ss.ss_family == AF_INET6
                ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  *out = l;
  return 0;
}

int kr__listener_port(const kr__listener *l) { return l->port; }
int kr__listener_kind(const kr__listener *l) { return l->kind; }
void kr__listener_close(kr__listener *l) {
  if (l->l) {
    evconnlistener_free(l->l);
    l->l = NULL;
  }
}

void kr__listener_free(kr__listener *l) {
  if (!l)
    return;
  kr__listener_close(l);
  kr__ws_ctx_free(l->ws);
  free(l);
}

int kr__listener_set_tls_files(kr__listener *l, const char *cert_file,
                               const char *key_file, char *err,
                               size_t errlen) {
  if (l->scheme != KR__SCHEME_WSS || l->ws)
    return 0;
  if (!cert_file || !*cert_file || !key_file || !*key_file) {
    snprintf(err, errlen, "a wss:// listener needs a certificate and key");
    return KR_ECONFIG;
  }
  return kr__ws_ctx_new_server(l->base, cert_file, key_file, &l->ws, err,
                               errlen);
}
