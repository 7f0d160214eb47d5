/* The agent's HTTP and kubernetes services, in one process: kas + agent +
 * client + an upstream HTTP server (libevent's evhttp) on loopback, plus a
 * small raw upstream for the cases evhttp cannot play (101 upgrade, a
 * keep-alive connection closed under a request, silence). */
#include <sys/queue.h> /* first: TAILQ_FOREACH for keyvalq_struct.h */

#include <check.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kasroute/error.h>

#include "agent/agent_internal.h"
#include "agent/http_service.h"
#include "agent/kube_service.h"
#include "harness.h"
#include "http/http_map.h"

static th_env env;
static kr_kas *kas;
static kr_agent *agent;
static kr_client *client;
static int client_ready;
static char agent_url[64], api_url[64], token_file[700];

/* ------------------------------------------------------- evhttp upstream */

#define MAX_SEEN 64

static struct upstream {
  struct evhttp *http;
  int port;
  int requests;
  char method[16], uri[1024];
  char names[MAX_SEEN][64], values[MAX_SEEN][512];
  int n_headers;
  size_t body_len;
  int body_ok;
  int peer_ports[MAX_SEEN];
  int n_ports;
  struct evhttp_request *stream_req; /* /stream: reply in progress */
  int stream_closed;                 /* its connection closed */
} up;

static const char *method_name(enum evhttp_cmd_type t) {
  switch (t) {
  case EVHTTP_REQ_GET:
    return "GET";
  case EVHTTP_REQ_POST:
    return "POST";
  case EVHTTP_REQ_HEAD:
    return "HEAD";
  case EVHTTP_REQ_PUT:
    return "PUT";
  case EVHTTP_REQ_DELETE:
    return "DELETE";
  default:
    return "OTHER";
  }
}

/* Values of request field name seen last, joined with '|' ("" if none). */
static const char *seen(const char *name) {
  static char out[2048];
  out[0] = 0;
  for (int i = 0; i < up.n_headers; i++)
    if (strcasecmp(up.names[i], name) == 0) {
      if (out[0])
        strncat(out, "|", sizeof(out) - strlen(out) - 1);
      strncat(out, up.values[i], sizeof(out) - strlen(out) - 1);
    }
  return out;
}

static int seen_has(const char *name) {
  for (int i = 0; i < up.n_headers; i++)
    if (strcasecmp(up.names[i], name) == 0)
      return 1;
  return 0;
}

static uint8_t pattern(size_t i) {
  return (uint8_t)((i * 7 + i / 251) & 0xff);
}

#define BIG_SIZE (((size_t)8 << 20) + 7)

static void stream_conn_closed(struct evhttp_connection *evcon, void *arg) {
  up.stream_closed = 1;
  /* evhttp detached the unfinished reply from the connection; ending it
   * now frees it. */
  if (up.stream_req)
    evhttp_send_reply_end(up.stream_req);
  up.stream_req = NULL;
}

static void up_handler(struct evhttp_request *req, void *arg) {
  up.requests++;
  snprintf(up.method, sizeof(up.method), "%s",
           method_name(evhttp_request_get_command(req)));
  snprintf(up.uri, sizeof(up.uri), "%s", evhttp_request_get_uri(req));
  up.n_headers = 0;
  struct evkeyval *kv;
  TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
    if (up.n_headers == MAX_SEEN)
      break;
    snprintf(up.names[up.n_headers], 64, "%s", kv->key);
    snprintf(up.values[up.n_headers], 512, "%s", kv->value);
    up.n_headers++;
  }
  struct evhttp_connection *evcon = evhttp_request_get_connection(req);
  char *addr;
  ev_uint16_t port;
  evhttp_connection_get_peer(evcon, &addr, &port);
  int known = 0;
  for (int i = 0; i < up.n_ports; i++)
    known |= up.peer_ports[i] == port;
  if (!known && up.n_ports < MAX_SEEN)
    up.peer_ports[up.n_ports++] = port;

  struct evbuffer *in = evhttp_request_get_input_buffer(req);
  up.body_len = evbuffer_get_length(in);
  const char *path = up.uri;
  struct evbuffer *out = evbuffer_new();
  if (strcmp(path, "/upload") == 0) {
    const uint8_t *b = evbuffer_pullup(in, -1);
    up.body_ok = 1;
    for (size_t i = 0; i < up.body_len; i++)
      if (b[i] != pattern(i)) {
        up.body_ok = 0;
        break;
      }
    evbuffer_add_printf(out, "got %zu", up.body_len);
    evhttp_send_reply(req, 200, "OK", out);
  } else if (strcmp(path, "/big") == 0) {
    for (size_t i = 0; i < BIG_SIZE; i += 4096) {
      uint8_t b[4096];
      size_t n = BIG_SIZE - i < sizeof(b) ? BIG_SIZE - i : sizeof(b);
      for (size_t j = 0; j < n; j++)
        b[j] = pattern(i + j);
      evbuffer_add(out, b, n);
    }
    evhttp_send_reply(req, 200, "OK", out);
  } else if (strcmp(path, "/hugeheader") == 0) {
    static char v[40000];
    memset(v, 'x', sizeof(v) - 1);
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Huge", v);
    evhttp_send_reply(req, 200, "OK", NULL);
  } else if (strcmp(path, "/echo") == 0) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Echo", "1");
    evhttp_send_reply(req, 201, "Created", in);
  } else if (strcmp(path, "/nocontent") == 0) {
    evhttp_send_reply(req, 204, "No Content", NULL);
  } else if (strcmp(path, "/stream") == 0) {
    up.stream_req = req;
    up.stream_closed = 0;
    evhttp_connection_set_closecb(evcon, stream_conn_closed, NULL);
    evhttp_send_reply_start(req, 200, "OK");
    evbuffer_add(out, "first", 5);
    evhttp_send_reply_chunk(req, out);
  } else if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
    /* evhttp would send a body after a HEAD reply: none here. */
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length",
                      "21");
    evhttp_send_reply(req, 200, "OK", NULL);
  } else {
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Upstream",
                      "evhttp");
    evbuffer_add_printf(out, "hello from %s", path);
    evhttp_send_reply(req, 200, "OK", out);
  }
  evbuffer_free(out);
}

static void upstream_start(void) {
  memset(&up, 0, sizeof(up));
  up.http = evhttp_new(env.base);
  evhttp_set_allowed_methods(up.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                          EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                          EVHTTP_REQ_DELETE);
  evhttp_set_gencb(up.http, up_handler, NULL);
  struct evhttp_bound_socket *bs =
      evhttp_bind_socket_with_handle(up.http, "127.0.0.1", 0);
  ck_assert_ptr_nonnull(bs);
  struct sockaddr_in sin;
  socklen_t sl = sizeof(sin);
  getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &sl);
  up.port = ntohs(sin.sin_port);
}

/* The same upstream over TLS (OpenSSL through libevent_openssl), with a
 * self-signed certificate for CN=127.0.0.1. */
static struct https_up {
  SSL_CTX *ctx;
  struct evhttp *http;
  int port;
} hup;

static struct bufferevent *https_bev(struct event_base *base, void *arg) {
  return bufferevent_openssl_socket_new(base, -1, SSL_new(hup.ctx),
                                        BUFFEREVENT_SSL_ACCEPTING,
                                        BEV_OPT_CLOSE_ON_FREE);
}

/* 0, or -1 when no certificate could be made (openssl missing). */
static int https_start(void) {
  memset(&hup, 0, sizeof(hup));
  if (th_make_cert(&env, "127.0.0.1", "up-") < 0)
    return -1;
  hup.ctx = SSL_CTX_new(TLS_server_method());
  ck_assert_int_eq(
      SSL_CTX_use_certificate_file(hup.ctx, env.cert, SSL_FILETYPE_PEM), 1);
  ck_assert_int_eq(
      SSL_CTX_use_PrivateKey_file(hup.ctx, env.key, SSL_FILETYPE_PEM), 1);
  hup.http = evhttp_new(env.base);
  evhttp_set_bevcb(hup.http, https_bev, NULL);
  evhttp_set_gencb(hup.http, up_handler, NULL);
  struct evhttp_bound_socket *bs =
      evhttp_bind_socket_with_handle(hup.http, "127.0.0.1", 0);
  ck_assert_ptr_nonnull(bs);
  struct sockaddr_in sin;
  socklen_t sl = sizeof(sin);
  getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &sl);
  hup.port = ntohs(sin.sin_port);
  return 0;
}

/* ------------------------------------------------------- raw upstream */

enum raw_mode { RAW_UPGRADE, RAW_CLOSE_SECOND, RAW_SILENT };

static struct raw {
  struct evconnlistener *l;
  int port;
  enum raw_mode mode;
  int conns; /* accepted */
} raw;

typedef struct raw_conn {
  struct bufferevent *bev;
  int requests;
  int upgraded;
  struct raw_conn *next;
} raw_conn;

static raw_conn *raw_conns; /* open ones, freed at teardown */

static void raw_close(struct bufferevent *bev) {
  void *state;
  bufferevent_getcb(bev, NULL, NULL, NULL, &state);
  for (raw_conn **pp = &raw_conns; *pp; pp = &(*pp)->next)
    if (*pp == state) {
      *pp = ((raw_conn *)state)->next;
      break;
    }
  free(state);
  bufferevent_free(bev);
}

static void raw_read(struct bufferevent *bev, void *arg) {
  raw_conn *rc = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  struct evbuffer *out = bufferevent_get_output(bev);
  for (;;) {
    if (rc->upgraded) {
      evbuffer_add_buffer(out, in); /* echo the upgraded protocol */
      return;
    }
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0)
      return;
    evbuffer_drain(in, (size_t)end.pos + 4);
    rc->requests++;
    if (raw.mode == RAW_SILENT)
      continue;
    if (raw.mode == RAW_UPGRADE) {
      evbuffer_add_printf(out, "HTTP/1.1 101 Switching Protocols\r\n"
                               "Connection: Upgrade\r\nUpgrade: test-echo\r\n"
                               "\r\n");
      rc->upgraded = 1;
      continue;
    }
    /* RAW_CLOSE_SECOND: the first connection answers one request, then
     * closes under the next without a byte; later ones answer all. */
    if (raw.conns == 1 && rc->requests == 2) {
      raw_close(bev);
      return;
    }
    evbuffer_add_printf(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  }
}

static void raw_event(struct bufferevent *bev, short what, void *arg) {
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
    raw_close(bev);
}

static void raw_accept(struct evconnlistener *l, evutil_socket_t fd,
                       struct sockaddr *sa, int len, void *arg) {
  raw.conns++;
  struct bufferevent *bev =
      bufferevent_socket_new(env.base, fd, BEV_OPT_CLOSE_ON_FREE);
  raw_conn *rc = calloc(1, sizeof(*rc));
  rc->bev = bev;
  rc->next = raw_conns;
  raw_conns = rc;
  bufferevent_setcb(bev, raw_read, NULL, raw_event, rc);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void raw_start(enum raw_mode mode) {
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  memset(&raw, 0, sizeof(raw));
  raw.mode = mode;
  raw.l = evconnlistener_new_bind(env.base, raw_accept, NULL,
                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
                                  (struct sockaddr *)&sin, sizeof(sin));
  ck_assert_ptr_nonnull(raw.l);
  socklen_t sl = sizeof(sin);
  getsockname(evconnlistener_get_fd(raw.l), (struct sockaddr *)&sin, &sl);
  raw.port = ntohs(sin.sin_port);
}

/* A loopback port nobody listens on. */
static int dead_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  bind(fd, (struct sockaddr *)&sin, sizeof(sin));
  socklen_t sl = sizeof(sin);
  getsockname(fd, (struct sockaddr *)&sin, &sl);
  close(fd);
  return ntohs(sin.sin_port);
}

/* ------------------------------------------------------------- requests */

typedef struct req {
  kr_stream *s;
  int replied, fin, closed;
  int status;
  uint32_t code;
  char reason[300];
  kr__mdlist md; /* the REPLY's metadata */
  struct evbuffer *body;
  int reset_on_data; /* reset the stream when the first byte arrives */
  int stall;         /* keep what arrives unconsumed (no credit back) */
  size_t unconsumed;
  int check_pattern; /* compare the body with pattern() as it arrives */
  size_t received;
  int mismatch;
  size_t up_total, up_sent; /* upload of pattern bytes */
} req;

static void req_init(req *r) {
  memset(r, 0, sizeof(*r));
  kr__mdlist_init(&r->md);
  r->body = evbuffer_new();
}

static void req_free(req *r) {
  kr__mdlist_free(&r->md);
  evbuffer_free(r->body);
}

/* Value of reply field name, or NULL. */
static const char *reply_field(req *r, const char *name) {
  static char v[1024];
  const kr_md *m = kr__md_find(r->md.md, r->md.n, name);
  if (!m)
    return NULL;
  snprintf(v, sizeof(v), "%.*s", (int)m->value_len, (const char *)m->value);
  return v;
}

static char *body_str(req *r) {
  static char b[4096];
  size_t n = evbuffer_get_length(r->body);
  if (n >= sizeof(b))
    n = sizeof(b) - 1;
  evbuffer_copyout(r->body, b, n);
  b[n] = 0;
  return b;
}

static void pump_upload(req *r) {
  static uint8_t chunk[65536];
  while (r->up_sent < r->up_total) {
    size_t n = r->up_total - r->up_sent;
    if (n > sizeof(chunk))
      n = sizeof(chunk);
    for (size_t i = 0; i < n; i++)
      chunk[i] = pattern(r->up_sent + i);
    int64_t w = kr_stream_write(r->s, chunk, n);
    if (w <= 0)
      return;
    r->up_sent += (size_t)w;
  }
  if (r->up_total) {
    kr_stream_close_write(r->s);
    r->up_total = 0;
  }
}

static void c_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                    void *ud) {
  req *r = ud;
  r->replied = 1;
  r->fin |= fin;
  for (size_t i = 0; i < n; i++)
    kr__mdlist_add(&r->md, md[i].name, md[i].name_len, md[i].value,
                   md[i].value_len);
  const kr_md *st = kr__md_find(md, n, KR_MD_STATUS);
  r->status = st ? kr__http_parse_status(st->value, st->value_len) : -1;
}

static void c_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  req *r = ud;
  if (r->check_pattern) {
    for (size_t i = 0; i < n; i++)
      r->mismatch |= p[i] != pattern(r->received + i);
  } else {
    evbuffer_add(r->body, p, n);
  }
  r->received += n;
  if (r->stall)
    r->unconsumed += n;
  else
    kr_stream_consume(s, n);
  if (r->reset_on_data) {
    r->reset_on_data = 0;
    kr_stream_reset(s, KR_CODE_CANCEL, "client gave up");
  }
}

static void c_fin(kr_stream *s, void *ud) {
  ((req *)ud)->fin = 1;
}

static void c_writable(kr_stream *s, void *ud) {
  pump_upload(ud);
}

static void c_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  req *r = ud;
  r->closed = 1;
  r->s = NULL;
  r->code = code;
  snprintf(r->reason, sizeof(r->reason), "%.*s", (int)len,
           (const char *)reason);
}

static void on_state(kr_client *c, int err, const char *why, void *ud) {
  if (err == 0)
    client_ready = 1;
}

static kr_md md_str(const char *name, const char *value) {
  kr_md m = {(const uint8_t *)name, strlen(name), (const uint8_t *)value,
             strlen(value)};
  return m;
}

/* Opens an HTTP stream: :method, :path, then fields given as
 * "name", "value" pairs ending with NULL. */
static void open_req(req *r, const char *service, const char *method,
                     const char *path, int fin, ...) {
  kr_md md[40];
  size_t n = 0;
  md[n++] = md_str(KR_MD_METHOD, method);
  md[n++] = md_str(KR_MD_PATH, path);
  va_list ap;
  va_start(ap, fin);
  const char *name;
  while ((name = va_arg(ap, const char *)) != NULL && n < 40) {
    const char *value = va_arg(ap, const char *);
    md[n++] = md_str(name, value);
  }
  va_end(ap);
  int rc = kr_client_open(client, TH_AGENT_ID, service, md, n, fin, r, &r->s);
  ck_assert_int_eq(rc, 0);
  kr_client_flush(client);
}

static int req_closed(void *arg) {
  return ((req *)arg)->closed;
}

static void wait_closed(req *r) {
  ck_assert_msg(th_run_cond(&env, req_closed, r, 15000), "stream never ended");
}

static void get(req *r, const char *service, const char *path) {
  req_init(r);
  open_req(r, service, "GET", path, 1, NULL);
  wait_closed(r);
}

/* ----------------------------------------------------------- fixtures */

static int agent_registered(void *arg) {
  return kr_kas_agent_count(kas) > 0;
}

static void write_token(const char *tok) {
  char tmp[800];
  snprintf(tmp, sizeof(tmp), "%s.tmp", token_file);
  FILE *f = fopen(tmp, "w");
  fprintf(f, "%s\n", tok);
  fclose(f);
  ck_assert_int_eq(rename(tmp, token_file), 0); /* a new inode */
}

static void start_agent(void) {
  kr_agent_options *o;
  char err[512], url[128];
  kr_agent_options_new(&o);
  kr_agent_options_set_kas_url(o, agent_url);
  kr_agent_options_set_token(o, TH_AGENT_TOKEN, strlen(TH_AGENT_TOKEN));
  kr_agent_options_set_connections(o, 1);
  kr_agent_options_set_backoff(o, 50000, 200000);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", up.port);
  ck_assert_int_eq(kr_agent_options_add_service(o, "web", url), 0);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/base/", up.port);
  ck_assert_int_eq(kr_agent_options_add_service(o, "based", url), 0);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", dead_port());
  ck_assert_int_eq(kr_agent_options_add_service(o, "down", url), 0);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", raw.port);
  ck_assert_int_eq(kr_agent_options_add_service(o, "raw", url), 0);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", up.port);
  ck_assert_int_eq(
      kr_agent_options_add_kubernetes(o, "kubernetes", url, token_file, NULL),
      0);
  if (hup.http) {
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/", hup.port);
    ck_assert_int_eq(kr_agent_options_add_service(o, "secure", url), 0);
    ck_assert_int_eq(
        kr_agent_options_set_service_ca_file(o, "secure", env.cert), 0);
    ck_assert_int_eq(kr_agent_options_add_service(o, "untrusted", url), 0);
    ck_assert_int_eq(kr_agent_options_add_service(o, "insecure", url), 0);
    ck_assert_int_eq(kr_agent_options_set_service_verify(o, "insecure", 0), 0);
    /* In-cluster configuration from the environment, IPv6 host. */
    char sa[700], port[16];
    snprintf(sa, sizeof(sa), "%s/sa", env.dir);
    mkdir(sa, 0700);
    snprintf(sa, sizeof(sa), "%s/sa/token", env.dir);
    FILE *f = fopen(sa, "w");
    fprintf(f, "in-cluster-token\n");
    fclose(f);
    snprintf(sa, sizeof(sa), "%s/sa/ca.crt", env.dir);
    ck_assert_int_eq(link(env.cert, sa), 0);
    snprintf(sa, sizeof(sa), "%s/sa", env.dir);
    kr__kube_set_sa_dir(sa);
    snprintf(port, sizeof(port), "%d", dead_port());
    setenv("KUBERNETES_SERVICE_HOST", "::1", 1);
    setenv("KUBERNETES_SERVICE_PORT", port, 1);
    ck_assert_int_eq(
        kr_agent_options_add_kubernetes(o, "incluster", NULL, NULL, NULL), 0);
  }
  int rc = kr_agent_new(&agent, env.base, o, err, sizeof(err));
  ck_assert_msg(rc == 0, "kr_agent_new: %s", err);
  kr_agent_options_free(o);
}

static int https_skipped;

static void setup_mode(enum raw_mode mode, int https) {
  th_setup(&env);
  kas = th_kas(&env, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", 3000);
  memset(&hup, 0, sizeof(hup));
  https_skipped = https && https_start() < 0;
  if (https_skipped)
    fprintf(stderr, "SKIP: https cases need the openssl command\n");
  snprintf(agent_url, sizeof(agent_url), "tcp://127.0.0.1:%d",
           kr_kas_agent_port(kas, 0));
  snprintf(api_url, sizeof(api_url), "tcp://127.0.0.1:%d",
           kr_kas_api_port(kas, 0));
  snprintf(token_file, sizeof(token_file), "%s/sa-token", env.dir);
  write_token("tok-1");
  upstream_start();
  raw_start(mode);
  start_agent();
  ck_assert(th_run_cond(&env, agent_registered, NULL, 5000));

  char *tok = th_api_token(&env);
  kr_client_options *o;
  kr_mux_callbacks *cbs;
  char err[256];
  kr_client_options_new(&o);
  kr_client_options_set_url(o, api_url);
  kr_client_options_set_token(o, tok, strlen(tok));
  kr_mux_callbacks_new(&cbs);
  kr_mux_callbacks_set_on_reply(cbs, c_reply);
  kr_mux_callbacks_set_on_data(cbs, c_data);
  kr_mux_callbacks_set_on_fin(cbs, c_fin);
  kr_mux_callbacks_set_on_writable(cbs, c_writable);
  kr_mux_callbacks_set_on_close(cbs, c_close);
  client_ready = 0;
  ck_assert_int_eq(kr_client_new(&client, env.base, o, cbs, on_state, NULL, err,
                                 sizeof(err)),
                   0);
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  free(tok);
  ck_assert(th_run_until(&env, &client_ready, 5000));
}

static void setup(void) {
  setup_mode(RAW_UPGRADE, 0);
}
static void setup_close_second(void) {
  setup_mode(RAW_CLOSE_SECOND, 0);
}
static void setup_silent(void) {
  setup_mode(RAW_SILENT, 0);
}
static void setup_https(void) {
  setup_mode(RAW_UPGRADE, 1);
}

static void teardown(void) {
  kr_client_free(client);
  kr_agent_free(agent);
  kr_kas_free(kas);
  evhttp_free(up.http);
  if (hup.http) {
    evhttp_free(hup.http);
    SSL_CTX_free(hup.ctx);
    kr__kube_set_sa_dir(NULL);
  }
  evconnlistener_free(raw.l);
  while (raw_conns)
    raw_close(raw_conns->bev);
  th_cleanup(&env);
}

static kr__http_service_stats stats(const char *service) {
  kr__http_service_stats st;
  kr__http_service *sv = kr__agent_http_service(agent, service);
  ck_assert_ptr_nonnull(sv);
  kr__http_service_get_stats(sv, &st);
  return st;
}

/* --------------------------------------------------------------- tests */

START_TEST(get_forwards_fields) {
  req r;
  req_init(&r);
  open_req(&r, "web", "GET", "/hello?x=1", 1, "x-test", "yes", "host",
           "kas.example", "connection", "x-secret", "x-secret", "drop me", "te",
           "trailers", "expect", "100-continue", NULL);
  wait_closed(&r);
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s: %s", kr_code_name(r.code),
                r.reason);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(body_str(&r), "hello from /hello?x=1");
  ck_assert_str_eq(reply_field(&r, "x-upstream"), "evhttp");
  ck_assert_str_eq(reply_field(&r, "content-length"), "21");
  ck_assert_str_eq(up.method, "GET");
  ck_assert_str_eq(seen("x-test"), "yes");
  char host[64];
  snprintf(host, sizeof(host), "127.0.0.1:%d", up.port);
  ck_assert_str_eq(seen("host"), host);
  ck_assert(!seen_has("x-secret"));
  ck_assert(!seen_has("connection"));
  ck_assert(!seen_has("te"));
  ck_assert(!seen_has("expect"));
  ck_assert(!seen_has("content-length")); /* GET without a body */
  req_free(&r);
}
END_TEST

START_TEST(base_path_prefixes) {
  req r;
  get(&r, "based", "/api/v1?watch=1");
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(up.uri, "/base/api/v1?watch=1");
  req_free(&r);
}
END_TEST

START_TEST(post_with_content_length) {
  req r;
  req_init(&r);
  open_req(&r, "web", "POST", "/echo", 0, "content-length", "11",
           "content-type", "text/plain", NULL);
  ck_assert_int_eq(kr_stream_write(r.s, "hello world", 11), 11);
  kr_stream_close_write(r.s);
  wait_closed(&r);
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_int_eq(r.status, 201);
  ck_assert_str_eq(body_str(&r), "hello world");
  ck_assert_str_eq(reply_field(&r, "x-echo"), "1");
  ck_assert_str_eq(up.method, "POST");
  ck_assert_str_eq(seen("content-length"), "11");
  ck_assert(!seen_has("transfer-encoding"));
  ck_assert_str_eq(seen("content-type"), "text/plain");
  req_free(&r);
}
END_TEST

START_TEST(post_without_body_gets_length_zero) {
  req r;
  req_init(&r);
  open_req(&r, "web", "POST", "/echo", 1, NULL);
  wait_closed(&r);
  ck_assert_int_eq(r.status, 201);
  ck_assert_str_eq(seen("content-length"), "0");
  ck_assert_uint_eq(evbuffer_get_length(r.body), 0);
  req_free(&r);
}
END_TEST

START_TEST(chunked_upload_byte_exact) {
  req r;
  req_init(&r);
  open_req(&r, "web", "PUT", "/upload", 0, NULL);
  r.up_total = (5u << 20) + 12345; /* a few MiB, odd size */
  size_t total = r.up_total;
  pump_upload(&r);
  wait_closed(&r);
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(up.method, "PUT");
  ck_assert_str_eq(seen("transfer-encoding"), "chunked");
  ck_assert(!seen_has("content-length"));
  ck_assert_uint_eq(up.body_len, total);
  ck_assert(up.body_ok);
  char want[64];
  snprintf(want, sizeof(want), "got %zu", total);
  ck_assert_str_eq(body_str(&r), want);
  req_free(&r);
}
END_TEST

static int got_first(void *arg) {
  return evbuffer_get_length(((req *)arg)->body) >= 5;
}

START_TEST(streaming_response_arrives_before_end) {
  req r;
  req_init(&r);
  open_req(&r, "web", "GET", "/stream", 1, NULL);
  ck_assert_msg(th_run_cond(&env, got_first, &r, 10000), "no first chunk");
  ck_assert_str_eq(body_str(&r), "first");
  ck_assert(!r.fin);
  ck_assert_ptr_null(reply_field(&r, "transfer-encoding"));
  ck_assert_ptr_nonnull(up.stream_req);
  struct evbuffer *b = evbuffer_new();
  evbuffer_add(b, " and the rest", 13);
  evhttp_send_reply_chunk(up.stream_req, b);
  evbuffer_free(b);
  evhttp_send_reply_end(up.stream_req);
  up.stream_req = NULL;
  wait_closed(&r);
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert(r.fin);
  ck_assert_str_eq(body_str(&r), "first and the rest");
  req_free(&r);
}
END_TEST

static int got_some(void *arg) {
  return ((req *)arg)->received > 0;
}

START_TEST(download_with_backpressure) {
  req r;
  req_init(&r);
  r.check_pattern = 1;
  r.stall = 1;
  open_req(&r, "web", "GET", "/big", 1, NULL);
  ck_assert(th_run_cond(&env, got_some, &r, 10000));
  /* A client that stops reading holds the transfer at its window. */
  th_run_cond(&env, req_closed, &r, 500);
  ck_assert(!r.closed);
  ck_assert_uint_le(r.received, 2u << 20);
  size_t at_stall = r.received;
  th_run_cond(&env, req_closed, &r, 200);
  ck_assert_uint_eq(r.received, at_stall);
  r.stall = 0;
  kr_stream_consume(r.s, r.unconsumed);
  kr_client_flush(client);
  wait_closed(&r);
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_int_eq(r.status, 200);
  ck_assert_uint_eq(r.received, BIG_SIZE);
  ck_assert(!r.mismatch);
  char cl[32];
  snprintf(cl, sizeof(cl), "%zu", BIG_SIZE);
  ck_assert_str_eq(reply_field(&r, "content-length"), cl);
  /* The connection went back to the pool after the whole body. */
  ck_assert_uint_eq(stats("web").idle, 1);
  req_free(&r);
}
END_TEST

START_TEST(head_has_no_body) {
  req r;
  req_init(&r);
  open_req(&r, "web", "HEAD", "/hello", 1, NULL);
  wait_closed(&r);
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(up.method, "HEAD");
  ck_assert_str_eq(reply_field(&r, "content-length"), "21");
  ck_assert(r.fin);
  ck_assert_uint_eq(evbuffer_get_length(r.body), 0);
  /* The connection stays usable: the next request reuses it. */
  req r2;
  get(&r2, "web", "/after-head");
  ck_assert_int_eq(r2.status, 200);
  ck_assert_str_eq(body_str(&r2), "hello from /after-head");
  ck_assert_int_eq(up.n_ports, 1);
  req_free(&r);
  req_free(&r2);
}
END_TEST

START_TEST(no_content) {
  req r;
  get(&r, "web", "/nocontent");
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_int_eq(r.status, 204);
  ck_assert(r.fin);
  ck_assert_uint_eq(evbuffer_get_length(r.body), 0);
  req_free(&r);
}
END_TEST

START_TEST(upstream_down_resets_upstream) {
  req r;
  get(&r, "down", "/x");
  ck_assert_uint_eq(r.code, KR_CODE_UPSTREAM);
  ck_assert_int_eq(kr_error_from_code(r.code), KR_EUPSTREAM);
  ck_assert_msg(strstr(r.reason, "upstream 127.0.0.1:") != NULL,
                "reason names the upstream: %s", r.reason);
  ck_assert(!r.replied);
  ck_assert_uint_eq(stats("down").live, 0);
  req_free(&r);
}
END_TEST

START_TEST(response_header_too_large) {
  req r;
  get(&r, "web", "/hugeheader");
  ck_assert_uint_eq(r.code, KR_CODE_UPSTREAM);
  ck_assert_msg(strstr(r.reason, "response header too large") != NULL, "%s",
                r.reason);
  ck_assert(!r.replied);
  ck_assert_uint_eq(stats("web").live, 0);
  req_free(&r);
}
END_TEST

START_TEST(keep_alive_reuses_one_connection) {
  for (int i = 0; i < 20; i++) {
    req r;
    char path[32];
    snprintf(path, sizeof(path), "/n/%d", i);
    get(&r, "web", path);
    ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%d: %s", i, r.reason);
    ck_assert_int_eq(r.status, 200);
    req_free(&r);
  }
  ck_assert_int_eq(up.requests, 20);
  ck_assert_int_eq(up.n_ports, 1); /* one upstream TCP connection */
  kr__http_service_stats st = stats("web");
  ck_assert_uint_eq(st.connects, 1);
  ck_assert_uint_eq(st.reused, 19);
  ck_assert_uint_eq(st.idle, 1);
  ck_assert_uint_eq(st.exchanges, 0);
}
END_TEST

static int stream_conn_gone(void *arg) {
  return up.stream_closed;
}

START_TEST(client_reset_closes_upstream) {
  req r;
  req_init(&r);
  r.reset_on_data = 1;
  open_req(&r, "web", "GET", "/stream", 1, NULL);
  wait_closed(&r);
  ck_assert_uint_eq(r.code, KR_CODE_CANCEL);
  ck_assert_msg(th_run_cond(&env, stream_conn_gone, NULL, 10000),
                "the upstream connection stayed open");
  kr__http_service_stats st = stats("web");
  ck_assert_uint_eq(st.live, 0);
  ck_assert_uint_eq(st.exchanges, 0);
  req_free(&r);
}
END_TEST

START_TEST(agent_freed_with_streams_in_flight) {
  req r;
  req_init(&r);
  open_req(&r, "web", "GET", "/stream", 1, NULL);
  ck_assert(th_run_cond(&env, got_first, &r, 10000));
  kr_agent_free(agent); /* upstream connection in the middle of a reply */
  agent = NULL;
  ck_assert(th_run_cond(&env, stream_conn_gone, NULL, 10000));
  wait_closed(&r);
  ck_assert_uint_ne(r.code, KR_CODE_NO_ERROR);
  req_free(&r);
}
END_TEST

static int got_bytes(void *arg) {
  return evbuffer_get_length(((req *)arg)->body) >= 9;
}

START_TEST(upgrade_relays_raw_bytes) {
  req r;
  req_init(&r);
  open_req(&r, "raw", "GET", "/ws", 0, "connection", "Upgrade", "upgrade",
           "test-echo", NULL);
  ck_assert(th_run_cond(&env, req_closed, &r, 200) == 0);
  ck_assert_int_eq(r.status, 101);
  ck_assert_str_eq(reply_field(&r, "upgrade"), "test-echo");
  ck_assert_str_eq(reply_field(&r, "connection"), "upgrade");
  ck_assert_int_eq(kr_stream_write(r.s, "ping pong", 9), 9);
  kr_client_flush(client);
  ck_assert(th_run_cond(&env, got_bytes, &r, 10000));
  ck_assert_str_eq(body_str(&r), "ping pong");
  kr_stream_reset(r.s, KR_CODE_CANCEL, "done");
  ck_assert(th_run_cond(&env, req_closed, &r, 1000));
  req_free(&r);
}
END_TEST

START_TEST(stale_connection_retried_once) {
  req r1, r2;
  get(&r1, "raw", "/one");
  ck_assert_int_eq(r1.status, 200);
  /* The pooled connection is closed under the second request. */
  get(&r2, "raw", "/two");
  ck_assert_msg(r2.code == KR_CODE_NO_ERROR, "%s", r2.reason);
  ck_assert_int_eq(r2.status, 200);
  ck_assert_str_eq(body_str(&r2), "ok");
  ck_assert_int_eq(raw.conns, 2);
  ck_assert_uint_eq(stats("raw").retries, 1);
  req_free(&r1);
  req_free(&r2);
}
END_TEST

START_TEST(silent_upstream_times_out) {
  kr__http_service_set_timeouts(kr__agent_http_service(agent, "raw"), 0, 300,
                                0);
  req r;
  get(&r, "raw", "/silence");
  ck_assert_uint_eq(r.code, KR_CODE_UPSTREAM);
  ck_assert_msg(strstr(r.reason, "no response") != NULL, "%s", r.reason);
  ck_assert_uint_eq(stats("raw").live, 0);
  req_free(&r);
}
END_TEST

START_TEST(malformed_stream_refused) {
  req r;
  req_init(&r);
  open_req(&r, "web", "GET", "no-slash", 1, NULL);
  wait_closed(&r);
  ck_assert_uint_eq(r.code, KR_CODE_PROTOCOL);
  req_free(&r);
  req_init(&r);
  open_req(&r, "web", "GET", "/x", 1, "bad name", "v", NULL);
  wait_closed(&r);
  ck_assert_uint_eq(r.code, KR_CODE_PROTOCOL);
  req_free(&r);
  ck_assert_int_eq(up.requests, 0);
}
END_TEST

/* ------------------------------------------------------------ kubernetes */

static void kube_get(req *r, const char *path) {
  req_init(r);
  open_req(r, "kubernetes", "GET", path, 1, ":user", "alice", ":group", "dev",
           ":group", "ops", "impersonate-user", "mallory", "Impersonate-Group",
           "system:masters", "authorization", "Bearer caller", "accept",
           "application/json", NULL);
  wait_closed(r);
}

START_TEST(kube_impersonates_with_file_token) {
  req r;
  kube_get(&r, "/api/v1/namespaces");
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(up.uri, "/api/v1/namespaces");
  ck_assert_str_eq(seen("authorization"), "Bearer tok-1");
  ck_assert_str_eq(seen("impersonate-user"), "alice");
  ck_assert_str_eq(seen("impersonate-group"), "dev|ops");
  ck_assert_str_eq(seen("accept"), "application/json");
  req_free(&r);
}
END_TEST

static int never(void *arg) {
  return 0;
}

START_TEST(kube_token_rotation) {
  req r;
  kube_get(&r, "/version");
  ck_assert_str_eq(seen("authorization"), "Bearer tok-1");
  req_free(&r);
  write_token("tok-2-rotated");
  /* The file is looked at no more than once a second. */
  th_run_cond(&env, never, NULL, 1100);
  kube_get(&r, "/version");
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_str_eq(seen("authorization"), "Bearer tok-2-rotated");
  req_free(&r);
  /* An unreadable file keeps the last good token. */
  unlink(token_file);
  th_run_cond(&env, never, NULL, 1100);
  kube_get(&r, "/version");
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_str_eq(seen("authorization"), "Bearer tok-2-rotated");
  req_free(&r);
}
END_TEST

START_TEST(kube_without_identity_refused) {
  req r;
  req_init(&r);
  open_req(&r, "kubernetes", "GET", "/api", 1, "impersonate-user", "alice",
           NULL);
  wait_closed(&r);
  ck_assert_uint_eq(r.code, KR_CODE_UNAUTHORIZED);
  ck_assert_str_eq(r.reason, "the kubernetes service needs a caller identity");
  ck_assert_int_eq(up.requests, 0);
  req_free(&r);
}
END_TEST

/* ----------------------------------------------------------------- https */

START_TEST(https_with_service_ca) {
  if (https_skipped)
    return;
  req r;
  get(&r, "secure", "/over-tls");
  ck_assert_msg(r.code == KR_CODE_NO_ERROR, "%s", r.reason);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(body_str(&r), "hello from /over-tls");
  char host[64];
  snprintf(host, sizeof(host), "127.0.0.1:%d", hup.port);
  ck_assert_str_eq(seen("host"), host);
  req_free(&r);
  get(&r, "secure", "/again"); /* pooled TLS connection */
  ck_assert_int_eq(r.status, 200);
  ck_assert_uint_eq(stats("secure").connects, 1);
  req_free(&r);
}
END_TEST

START_TEST(https_untrusted_certificate_refused) {
  if (https_skipped)
    return;
  req r;
  get(&r, "untrusted", "/x");
  ck_assert_uint_eq(r.code, KR_CODE_UPSTREAM);
  ck_assert_msg(strstr(r.reason, "cannot connect to upstream 127.0.0.1:") &&
                    strstr(r.reason, "certificate"),
                "%s", r.reason);
  ck_assert_int_eq(up.requests, 0);
  req_free(&r);
  get(&r, "insecure", "/x"); /* verification off: tests only */
  ck_assert_int_eq(r.status, 200);
  req_free(&r);
}
END_TEST

START_TEST(in_cluster_config) {
  if (https_skipped)
    return;
  req r;
  req_init(&r);
  open_req(&r, "incluster", "GET", "/api", 1, ":user", "bob", NULL);
  wait_closed(&r);
  ck_assert_uint_eq(r.code, KR_CODE_UPSTREAM);
  ck_assert_msg(strstr(r.reason, "upstream [::1]:") != NULL, "%s", r.reason);
  req_free(&r);
  /* Without a readable token the agent does not start. */
  kr_agent_options *o;
  kr_agent *a = NULL;
  char err[512];
  kr_agent_options_new(&o);
  kr_agent_options_set_kas_url(o, agent_url);
  kr_agent_options_set_token(o, "t", 1);
  kr__kube_set_sa_dir("/nonexistent");
  kr_agent_options_add_kubernetes(o, "kubernetes", NULL, NULL, NULL);
  ck_assert_int_eq(kr_agent_new(&a, env.base, o, err, sizeof(err)), KR_ECONFIG);
  ck_assert_msg(strstr(err, "/nonexistent/token") != NULL, "%s", err);
  unsetenv("KUBERNETES_SERVICE_HOST");
  ck_assert_int_eq(kr_agent_new(&a, env.base, o, err, sizeof(err)), KR_ECONFIG);
  ck_assert_msg(strstr(err, "KUBERNETES_SERVICE_HOST") != NULL, "%s", err);
  kr_agent_options_free(o);
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_service");
  TCase *tc = tcase_create("http");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, get_forwards_fields);
  tcase_add_test(tc, base_path_prefixes);
  tcase_add_test(tc, post_with_content_length);
  tcase_add_test(tc, post_without_body_gets_length_zero);
  tcase_add_test(tc, chunked_upload_byte_exact);
  tcase_add_test(tc, streaming_response_arrives_before_end);
  tcase_add_test(tc, download_with_backpressure);
  tcase_add_test(tc, head_has_no_body);
  tcase_add_test(tc, no_content);
  tcase_add_test(tc, upstream_down_resets_upstream);
  tcase_add_test(tc, response_header_too_large);
  tcase_add_test(tc, keep_alive_reuses_one_connection);
  tcase_add_test(tc, client_reset_closes_upstream);
  tcase_add_test(tc, agent_freed_with_streams_in_flight);
  tcase_add_test(tc, upgrade_relays_raw_bytes);
  tcase_add_test(tc, malformed_stream_refused);
  suite_add_tcase(s, tc);

  TCase *tr = tcase_create("raw");
  tcase_add_checked_fixture(tr, setup_close_second, teardown);
  tcase_set_timeout(tr, 60);
  tcase_add_test(tr, stale_connection_retried_once);
  suite_add_tcase(s, tr);

  TCase *ts = tcase_create("silent");
  tcase_add_checked_fixture(ts, setup_silent, teardown);
  tcase_set_timeout(ts, 60);
  tcase_add_test(ts, silent_upstream_times_out);
  suite_add_tcase(s, ts);

  TCase *tk = tcase_create("kubernetes");
  tcase_add_checked_fixture(tk, setup, teardown);
  tcase_set_timeout(tk, 60);
  tcase_add_test(tk, kube_impersonates_with_file_token);
  tcase_add_test(tk, kube_token_rotation);
  tcase_add_test(tk, kube_without_identity_refused);
  suite_add_tcase(s, tk);

  TCase *th = tcase_create("https");
  tcase_add_checked_fixture(th, setup_https, teardown);
  tcase_set_timeout(th, 60);
  tcase_add_test(th, https_with_service_ca);
  tcase_add_test(th, https_untrusted_certificate_refused);
  tcase_add_test(th, in_cluster_config);
  suite_add_tcase(s, th);

  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
