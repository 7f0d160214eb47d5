/* The kas server role: listeners, authentication, registry, routing and
 * the splice between client streams and tunnel streams (kasroute/kas.h).
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/platform_util.h>

#include <kasroute/error.h>
#include <kasroute/kas.h>

#include "core/jwt.h"
#include "core/mem_internal.h"
#include "core/mux_internal.h"
#include "core/registry.h"
#include "core/token_file.h"
#include "http/http_map.h"
#include "io/conn.h"
#include "io/listener.h"
#include "io/log.h"
#include "io/transport_ws.h"
#include "io/url.h"
#include "kas/auth_request.h"
#include "kas/cluster.h"
#include "kas/gateway.h"
#include "kas/http_auth.h"
#include "kas/kas_internal.h"
#include "kas/listing.h"
#include "kas/peer.h"
#include "kas/relay.h"
#include "kas/route.h"

/* ---------------------------------------------------------------- options */

int kr_kas_options_new(kr_kas_options **out) {
  kr_kas_options *o = calloc(1, sizeof(*o));
  if (!o)
    return KR_ENOMEM;
  o->route_timeout = 20 * 1000000ull;
  o->keepalive_interval = 15 * 1000000ull;
  o->keepalive_timeout = 45 * 1000000ull;
  o->handshake_timeout = 10 * 1000000ull;
  o->hop_wait = 2 * 1000000ull;
  snprintf(o->redis_prefix, sizeof(o->redis_prefix), "kas:");
  o->http_request_timeout = 30 * 1000000ull;
  o->http_idle_timeout = 60 * 1000000ull;
  o->http_limits.max_head = KR__HTTP_DEFAULT_MAX_HEAD;
  o->http_limits.max_fields = KR__HTTP_DEFAULT_MAX_FIELDS;
  snprintf(o->name, sizeof(o->name), "kas");
  *out = o;
  return 0;
}

void kr_kas_options_free(kr_kas_options *o) {
  if (o) {
    mbedtls_platform_zeroize(o, sizeof(*o)); /* secrets, Redis password */
    free(o);
  }
}

static int copy_path(char *dst, size_t size, const char *src) {
  if (!src || strlen(src) >= size)
    return KR_EINVAL;
  snprintf(dst, size, "%s", src);
  return 0;
}

static int add_listen(kr_kas_options *o, const char *url, int kind) {
  kr__url u;
  char err[256];
  if (kr__url_parse(url, &u, err, sizeof(err)) < 0)
    return KR_EADDR;
  int http = u.scheme == KR__SCHEME_HTTP || u.scheme == KR__SCHEME_HTTPS;
  if (http != (kind == KR__LISTEN_HTTP))
    return KR_EADDR;
  if (kind == KR__LISTEN_PRIVATE && u.scheme != KR__SCHEME_TCP &&
      u.scheme != KR__SCHEME_TLS)
    return KR_EADDR;
  if (o->n_listen >= KR__KAS_MAX_LISTEN)
    return KR_ETOOBIG;
  o->listen[o->n_listen].url = u;
  o->listen[o->n_listen].kind = kind;
  o->n_listen++;
  return 0;
}

int kr_kas_options_add_agent_listen(kr_kas_options *o, const char *url) {
  return add_listen(o, url, KR__LISTEN_AGENT);
}

int kr_kas_options_add_api_listen(kr_kas_options *o, const char *url) {
  return add_listen(o, url, KR__LISTEN_API);
}

int kr_kas_options_add_http_listen(kr_kas_options *o, const char *url) {
  return add_listen(o, url, KR__LISTEN_HTTP);
}

int kr_kas_options_add_private_listen(kr_kas_options *o, const char *url) {
  return add_listen(o, url, KR__LISTEN_PRIVATE);
}

int kr_kas_options_set_private_url(kr_kas_options *o, const char *url) {
  kr__url u;
  char err[64];
  if (!url || kr__url_parse(url, &u, err, sizeof(err)) < 0 ||
      (u.scheme != KR__SCHEME_TCP && u.scheme != KR__SCHEME_TLS) ||
      strlen(url) >= sizeof(o->private_url))
    return KR_EADDR;
  snprintf(o->private_url, sizeof(o->private_url), "%s", url);
  return 0;
}

int kr_kas_options_set_private_secret(kr_kas_options *o, const uint8_t *secret,
                                      size_t len) {
  if (!secret || len < 32 || len > sizeof(o->private_secret))
    return KR_EINVAL;
  memcpy(o->private_secret, secret, len);
  o->private_secret_len = len;
  return 0;
}

int kr_kas_options_set_private_ca_file(kr_kas_options *o, const char *path) {
  return copy_path(o->private_ca_file, sizeof(o->private_ca_file), path);
}

int kr_kas_options_set_redis(kr_kas_options *o, const char *url) {
  if (!url || strncmp(url, "redis://", 8) != 0 ||
      strlen(url) >= sizeof(o->redis_url))
    return KR_EADDR;
  snprintf(o->redis_url, sizeof(o->redis_url), "%s", url);
  return 0;
}

int kr_kas_options_set_redis_sentinel(kr_kas_options *o, const char *sentinels,
                                      const char *master) {
  if (!sentinels || !*sentinels || !master || !*master ||
      strlen(sentinels) >= sizeof(o->redis_sentinels) ||
      strlen(master) >= sizeof(o->redis_master))
    return KR_EINVAL;
  snprintf(o->redis_sentinels, sizeof(o->redis_sentinels), "%s", sentinels);
  snprintf(o->redis_master, sizeof(o->redis_master), "%s", master);
  return 0;
}

int kr_kas_options_set_redis_password(kr_kas_options *o, const char *password) {
  if (!password || strlen(password) >= sizeof(o->redis_password))
    return KR_EINVAL;
  snprintf(o->redis_password, sizeof(o->redis_password), "%s", password);
  return 0;
}

int kr_kas_options_set_redis_prefix(kr_kas_options *o, const char *prefix) {
  if (!prefix || !*prefix || strlen(prefix) >= sizeof(o->redis_prefix))
    return KR_EINVAL;
  snprintf(o->redis_prefix, sizeof(o->redis_prefix), "%s", prefix);
  return 0;
}

int kr_kas_options_set_http_timeouts(kr_kas_options *o, kr_time_us head,
                                     kr_time_us idle) {
  if (head < 1000000u || idle < 1000000u)
    return KR_EINVAL;
  o->http_request_timeout = head;
  o->http_idle_timeout = idle;
  return 0;
}

int kr_kas_options_set_http_limits(kr_kas_options *o, size_t max_head,
                                   size_t max_fields) {
  if (max_head < 1024 || max_head > ((size_t)60 << 10) || max_fields < 8 ||
      max_fields > 256)
    return KR_EINVAL;
  o->http_limits.max_head = max_head;
  o->http_limits.max_fields = max_fields;
  return 0;
}


int kr_kas_options_set_tls(kr_kas_options *o, const char *cert, const char *key) {
  if (copy_path(o->tls_cert, sizeof(o->tls_cert), cert) < 0 ||
      copy_path(o->tls_key, sizeof(o->tls_key), key) < 0)
    return KR_EINVAL;
  return 0;
}

int kr_kas_options_set_agent_tokens_file(kr_kas_options *o, const char *path) {
  return copy_path(o->tokens_file, sizeof(o->tokens_file), path);
}

int kr_kas_options_set_user_tokens_file(kr_kas_options *o, const char *path) {
  return copy_path(o->user_tokens_file, sizeof(o->user_tokens_file), path);
}

int kr_kas_options_set_api_secret(kr_kas_options *o, const uint8_t *secret,
                                  size_t len) {
  if (!secret || len < KR__JWT_MIN_SECRET || len > sizeof(o->api_secret))
    return KR_EINVAL;
  memcpy(o->api_secret, secret, len);
  o->api_secret_len = len;
  return 0;
}

int kr_kas_options_set_route_timeout(kr_kas_options *o, kr_time_us t) {
  if (t == 0)
    return KR_EINVAL;
  o->route_timeout = t;
  return 0;
}

int kr_kas_options_set_keepalive(kr_kas_options *o, kr_time_us interval,
                                 kr_time_us timeout) {
  if (timeout != 0 && timeout <= interval)
    return KR_EINVAL;
  o->keepalive_interval = interval;
  o->keepalive_timeout = timeout;
  return 0;
}

int kr_kas_options_set_handshake_timeout(kr_kas_options *o, kr_time_us t) {
  o->handshake_timeout = t;
  return 0;
}

int kr_kas_options_set_name(kr_kas_options *o, const char *name) {
  return copy_path(o->name, sizeof(o->name), name);
}

/* ------------------------------------------------------------ connections */

static void kconn_unlink(kr_kas *k, kas_conn *kc) {
  if (kc->prev)
    kc->prev->next = kc->next;
  else
    k->conns = kc->next;
  if (kc->next)
    kc->next->prev = kc->prev;
  kc->prev = kc->next = NULL;
}

static const kr_md *md_find(const kr_md *md, size_t n, const char *name) {
  size_t len = strlen(name);
  for (size_t i = 0; i < n; i++)
    if (md[i].name_len == len && memcmp(md[i].name, name, len) == 0)
      return &md[i];
  return NULL;
}

/* ----------------------------------------------------------- held streams */

/* Streams an API client opens while the host verifies its credentials:
 * unanswered, their bytes kept unconsumed (the stream and connection
 * windows bound them), started once the client is allowed, reset when it
 * is not. At most KC_MAX_HELD per connection (the mux's default stream
 * limit); more are refused. */
#define KC_MAX_HELD 1024

struct kc_held {
  kas_conn *kc;
  kr_stream *s;
  kr__mdlist md;         /* the OPEN's metadata */
  int fin;               /* the OPEN carried FIN */
  int fin_recv;          /* FIN came later */
  struct evbuffer *data; /* bytes received, not consumed */
  kc_held *prev, *next;
};

/* Unlinks and frees h without touching its stream. */
static void held_free(kc_held *h) {
  kas_conn *kc = h->kc;
  if (h->prev)
    h->prev->next = h->next;
  else
    kc->held = h->next;
  if (h->next)
    h->next->prev = h->prev;
  else
    kc->held_last = h->prev;
  kc->n_held--;
  kr__mdlist_free(&h->md);
  if (h->data)
    evbuffer_free(h->data);
  free(h);
}

/* Detaches h from its stream; the caller answers the stream. */
static kr_stream *held_detach(kc_held *h) {
  kr_stream *s = h->s;
  kr__stream_set_handler(s, NULL);
  kr_stream_set_user_data(s, NULL);
  return s;
}

static void h_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kc_held *h = ud;
  if (evbuffer_add(h->data, p, n) < 0) {
    held_detach(h);
    held_free(h);
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
  }
}

static void h_fin(kr_stream *s, void *ud) {
  kc_held *h = ud;
  h->fin_recv = 1;
}

static void h_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  held_free(ud); /* the client gave up on it */
}

static const kr__stream_handler held_handler = {NULL, h_data, h_fin, NULL,
                                                h_close};

static void hold_stream(kas_conn *kc, kr_stream *s, const kr_md *md, size_t n,
                        int fin) {
  if (kc->n_held >= KC_MAX_HELD) {
    kr_stream_reset(s, KR_CODE_REFUSED,
                    "too many streams before authentication");
    return;
  }
  kc_held *h = calloc(1, sizeof(*h));
  int rc = h && (h->data = evbuffer_new()) ? 0 : KR_ENOMEM;
  if (h)
    kr__mdlist_init(&h->md);
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = kr__mdlist_add(&h->md, md[i].name, md[i].name_len, md[i].value,
                        md[i].value_len);
  if (rc < 0) {
    if (h) {
      kr__mdlist_free(&h->md);
      if (h->data)
        evbuffer_free(h->data);
      free(h);
    }
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  h->kc = kc;
  h->s = s;
  h->fin = fin;
  h->prev = kc->held_last; /* oldest first */
  if (kc->held_last)
    kc->held_last->next = h;
  else
    kc->held = h;
  kc->held_last = h;
  kc->n_held++;
  kr_stream_set_user_data(s, h);
  kr__stream_set_handler(s, &held_handler);
}

/* Resets every held stream of kc with code. */
static void held_reset_all(kas_conn *kc, uint32_t code, const char *why) {
  while (kc->held) {
    kr_stream *s = held_detach(kc->held);
    held_free(kc->held);
    kr_stream_reset(s, code, why);
  }
}

/* Frees the held list without touching streams (the mux is going). */
static void held_drop_all(kas_conn *kc) {
  while (kc->held)
    held_free(kc->held);
}

/* An authenticated client's stream: a listing, or a relay to an agent.
 * early/early_fin: what a held stream received meanwhile (NULL/0 when the
 * stream is new). */
static void serve_stream(kas_conn *kc, kr_stream *s, const kr_md *md, size_t n,
                         int fin, struct evbuffer *early, int early_fin) {
  const kr_md *list = md_find(md, n, KR_MD_LIST);
  if (list && kc->kind == KR__LISTEN_API) {
    if (early && evbuffer_get_length(early) > 0) /* a listing reads nothing */
      kr_stream_consume(s, evbuffer_get_length(early));
    if (list->value_len == 6 && memcmp(list->value, "agents", 6) == 0)
      kr__listing_serve_stream(kc->k, s);
    else
      kr_stream_reset(s, KR_CODE_NOT_FOUND, "unknown listing");
    return;
  }
  kr__relay_start(kc->k, kc, s, md, n, fin, early, early_fin);
}

/* The client was allowed: its held streams start, oldest first. */
static void held_start_all(kas_conn *kc) {
  while (kc->held) {
    kc_held *h = kc->held;
    kr_stream *s = held_detach(h);
    /* Unlinked first: serving may reset the stream at once. */
    kr__mdlist md = h->md;
    struct evbuffer *data = h->data;
    int fin = h->fin, fin_recv = h->fin_recv;
    kr__mdlist_init(&h->md);
    h->data = NULL;
    held_free(h);
    serve_stream(kc, s, md.md, md.n, fin, data, fin_recv);
    kr__mdlist_free(&md);
    evbuffer_free(data);
  }
}

/* ------------------------------------------------------------ connections */

static void kc_closed(kr__conn *c, int err, const char *why, void *ud) {
  kas_conn *kc = ud;
  kr_kas *k = kc->k;
  char q[200];
  kr__log_quote(q, sizeof(q), why, strlen(why));
  kr__auth_cancel(kc->auth); /* the host may stop verifying */
  held_drop_all(kc);         /* empty: every stream got on_close before */
  if (kc->kind == KR__LISTEN_AGENT && kc->authed) {
    kr__registry_remove(k->reg, kc->tunnel);
    kc->tunnel = NULL;
    k->stats[KR_KAS_STAT_AGENT_CONNECTIONS]--;
    kr__log(KR_LOG_INFO, "agent_disconnected",
            "kas=%s agent=%lld replica=%s peer=%s reason=%s", k->name,
            (long long)kc->agent_id, kc->replica, kc->peer, q);
  } else if (kc->kind == KR__LISTEN_API && kc->authed) {
    k->stats[KR_KAS_STAT_API_CONNECTIONS]--;
    kr__log(KR_LOG_DEBUG, "api_disconnected", "kas=%s peer=%s reason=%s",
            k->name, kc->peer, q);
  } else {
    kr__log(KR_LOG_DEBUG, "connection_closed", "kas=%s peer=%s reason=%s",
            k->name, kc->peer, q);
  }
  kconn_unlink(k, kc);
  kr__conn_free(c);
  free(kc->id);
  free(kc);
  kr__kas_maybe_drained(k);
}

/* Refuses a peer's credentials: GOAWAY UNAUTHORIZED, counted, logged
 * without the credential, and the address is slowed down. */
static void refuse(kas_conn *kc, const char *what, const char *reason) {
  kr_kas *k = kc->k;
  k->stats[KR_KAS_STAT_AUTH_FAILURES]++;
  kr__throttle_failure(&k->throttle[kc->kind != KR__LISTEN_AGENT], kc->addr,
                       kr__now_us());
  char q[160], msg[200];
  snprintf(msg, sizeof(msg), "%s refused: %s", what, reason);
  kr__log(KR_LOG_WARN, "auth_failed", "kas=%s peer=%s kind=\"%s\" reason=%s",
          k->name, kc->peer, what,
          kr__log_quote(q, sizeof(q), reason, strlen(reason)));
  kr__conn_goaway(kc->conn, KR_CODE_UNAUTHORIZED, msg);
}

/* The host's verifier gave no verdict in time (not a refusal: nothing is
 * counted against the address). */
static void verify_timed_out(kas_conn *kc) {
  static const char why[] = "credential verification timed out";
  held_reset_all(kc, KR_CODE_TIMEOUT, why);
  kr__conn_goaway(kc->conn, KR_CODE_TIMEOUT, why);
}

/* Hands token[0..len) to the host's verifier of kind; done gets the
 * verdict (now or later) unless the connection goes first. */
static void verify(kas_conn *kc, kr_kas_auth_kind kind, const char *token,
                   size_t len, kr__auth_done_cb done) {
  kr_kas *k = kc->k;
  int rc = kr__auth_start(k, kind, kc->peer, (const uint8_t *)token, len,
                          k->opt.handshake_timeout, done, kc, &kc->auth);
  if (rc == 0)
    return;
  /* Overloaded: UNAUTHORIZED makes an agent retry with backoff; not a
   * refusal of the credential, so neither counted nor throttled. */
  kr__conn_goaway(kc->conn,
                  rc == KR_EAGAIN ? KR_CODE_UNAUTHORIZED : KR_CODE_INTERNAL,
                  rc == KR_EAGAIN ? "too many credential verifications "
                                    "pending; retry later"
                                  : "out of memory");
}

/* An agent proved agent_id: its tunnel joins the registry. */
static void agent_accept(kas_conn *kc, int64_t agent_id, const char *label) {
  kr_kas *k = kc->k;
  if (kr__registry_add(k->reg, agent_id, kc->replica, kc, kr__now_us(),
                       &kc->tunnel) < 0) {
    kr__conn_goaway(kc->conn, KR_CODE_INTERNAL, "registry full");
    return;
  }
  kc->agent_id = agent_id;
  kc->authed = 1;
  k->stats[KR_KAS_STAT_AGENT_CONNECTIONS]++;
  char q[300];
  if (k->cluster)
    kr__cluster_agent_changed(k->cluster, agent_id);
  kr__log(KR_LOG_INFO, "agent_connected",
          "kas=%s agent=%lld replica=%s peer=%s label=%s", k->name,
          (long long)agent_id, kc->replica, kc->peer,
          kr__log_quote(q, sizeof(q), label, strlen(label)));
}

static void agent_verified(const kr__auth_verdict *v, void *ud) {
  kas_conn *kc = ud;
  if (v->outcome == KR__AUTH_ALLOWED)
    agent_accept(kc, v->agent_id, "");
  else if (v->outcome == KR__AUTH_DENIED)
    refuse(kc, "agent token", v->reason);
  else
    verify_timed_out(kc);
}

/* The longest agent token a WebSocket upgrade can carry (transport_ws.c
 * keeps bearers up to 8 KiB). */
#define KR__AGENT_MAX_TOKEN 8192

static void agent_check(kas_conn *kc, const char *token, size_t token_len);

/* HELLO of an agent connection: its replica name, then its token. */
static void agent_ready(kas_conn *kc, const kr_md *md, size_t n) {
  const kr_md *tok = md_find(md, n, KR_MD_TOKEN);
  const kr_md *name = md_find(md, n, KR_MD_NAME);
  /* The replica name first: HELLO's metadata is gone once a verification
   * has to wait. */
  size_t nl = name ? name->value_len : 0;
  if (nl > sizeof(kc->replica) - 1)
    nl = sizeof(kc->replica) - 1;
  if (nl) {
    memcpy(kc->replica, name->value, nl);
    kc->replica[nl] = 0;
  } else {
    snprintf(kc->replica, sizeof(kc->replica), "%.127s", kc->peer);
  }
  /* Replica names go into logs and listings: keep them printable. */
  for (char *p = kc->replica; *p; p++)
    if (*p < 0x21 || *p > 0x7e)
      *p = '_';
  /* The token comes in HELLO, or as "Authorization: Bearer" on the
   * WebSocket upgrade. The transport's copy of a bearer is wiped here:
   * the check below uses a copy on the stack, wiped when it returns, so
   * the secret does not stay in memory for the connection's life. */
  const char *token = tok ? (const char *)tok->value : NULL;
  size_t token_len = tok ? tok->value_len : 0;
  kr__transport *t = kr__conn_transport(kc->conn);
  char bearer[KR__AGENT_MAX_TOKEN];
  if (!token && t && kr__transport_is_ws(t)) {
    const char *b = kr__ws_bearer(t, &token_len);
    if (b && token_len <= sizeof(bearer)) {
      memcpy(bearer, b, token_len);
      token = bearer;
    }
    kr__ws_forget_bearer(t);
  }
  agent_check(kc, token, token ? token_len : 0);
  if (token == bearer)
    mbedtls_platform_zeroize(bearer, token_len);
}

/* Checks an agent's token (token_len 0: none): the token table, then the
 * custom verifier. */
static void agent_check(kas_conn *kc, const char *token, size_t token_len) {
  kr_kas *k = kc->k;
  if (!token || token_len == 0) {
    refuse(kc, "agent token", "no token presented");
    return;
  }
  int64_t agent_id = 0;
  const char *label = NULL;
  if (k->tokens && kr__token_table_lookup(k->tokens, token, token_len,
                                          &agent_id, &label) == 0) {
    agent_accept(kc, agent_id, label ? label : "");
    return;
  }
  if (kr__auth_enabled(k, KR_KAS_AUTH_AGENT)) {
    verify(kc, KR_KAS_AUTH_AGENT, token, token_len, agent_verified);
    return;
  }
  refuse(kc, "agent token", "unknown token");
}

/* An API client proved who it is (id: owned from now on): its streams,
 * held ones first, are served. */
static void api_accept(kas_conn *kc, kr__identity *id) {
  kc->id = id;
  kc->authed = 1;
  kc->k->stats[KR_KAS_STAT_API_CONNECTIONS]++;
  held_start_all(kc);
}

static void api_verified(const kr__auth_verdict *v, void *ud) {
  kas_conn *kc = ud;
  if (v->outcome == KR__AUTH_ALLOWED) {
    kr__identity *id = malloc(sizeof(*id));
    if (!id) {
      held_reset_all(kc, KR_CODE_INTERNAL, "out of memory");
      kr__conn_goaway(kc->conn, KR_CODE_INTERNAL, "out of memory");
      return;
    }
    *id = *v->id;
    api_accept(kc, id);
  } else if (v->outcome == KR__AUTH_DENIED) {
    held_reset_all(kc, KR_CODE_UNAUTHORIZED, "API token refused");
    refuse(kc, "API token", v->reason);
  } else {
    verify_timed_out(kc);
  }
}

/* API clients present the same JWTs as HTTP callers: the gateway's check
 * (lib/kas/http_auth.h) gives the agents they may reach ("agents" claim)
 * and the Kubernetes identity ("user", "groups") their streams carry. A
 * token that check refuses goes to the host's API verifier, if any. */
static void api_ready(kas_conn *kc, const kr_md *md, size_t n) {
  kr_kas *k = kc->k;
  const kr_md *tok = md_find(md, n, KR_MD_TOKEN);
  const char *reason = "no token presented";
  if (!tok || tok->value_len == 0) {
    refuse(kc, "API token", reason);
    return;
  }
  if (!k->api_secret_len) {
    reason = "JWTs are not accepted";
  } else if (tok->value_len > KR__JWT_MAX_TOKEN) {
    reason = "token too long";
  } else {
    char authz[KR__JWT_MAX_TOKEN + 8];
    memcpy(authz, "Bearer ", 7);
    memcpy(authz + 7, tok->value, tok->value_len);
    kr__http_auth_cfg cfg = {k->api_secret, k->api_secret_len, NULL};
    kr__identity *id = calloc(1, sizeof(*id));
    int rc = id ? kr__http_auth_check(&cfg, authz, tok->value_len + 7,
                                      KR__AUTH_SERVICE_PROXY,
                                      (int64_t)time(NULL), id, &reason)
                : KR_ENOMEM;
    memset(authz, 0, tok->value_len + 7);
    if (rc == 0) {
      api_accept(kc, id);
      return;
    }
    free(id);
    if (rc == KR_ENOMEM) {
      refuse(kc, "API token", "out of memory");
      return;
    }
  }
  if (kr__auth_enabled(k, KR_KAS_AUTH_API)) {
    verify(kc, KR_KAS_AUTH_API, (const char *)tok->value, tok->value_len,
           api_verified);
    return;
  }
  refuse(kc, "API token", reason);
}

/* Another kas instance: a JWT signed with the private secret. */
static void private_ready(kas_conn *kc, const kr_md *md, size_t n) {
  kr_kas *k = kc->k;
  const kr_md *tok = md_find(md, n, KR_MD_TOKEN);
  const char *reason = "no token presented";
  json_t *claims = NULL;
  if (tok && k->private_secret_len &&
      kr__jwt_verify_hs256(k->private_secret, k->private_secret_len,
                           (const char *)tok->value, tok->value_len,
                           KR__PEER_AUDIENCE, (int64_t)time(NULL), 30, &claims,
                           &reason) == 0) {
    json_decref(claims);
    kc->authed = 1;
    kr__log(KR_LOG_INFO, "peer_accepted", "kas=%s peer=%s", k->name, kc->peer);
    return;
  }
  refuse(kc, "peer token", reason);
}

static void kc_ready(kr__conn *c, const kr_md *md, size_t n, void *ud) {
  kas_conn *kc = ud;
  if (kc->k->draining) {
    kr__conn_goaway(c, KR_CODE_SHUTDOWN, "kas is shutting down");
    return;
  }
  if (kc->kind == KR__LISTEN_AGENT)
    agent_ready(kc, md, n);
  else if (kc->kind == KR__LISTEN_PRIVATE)
    private_ready(kc, md, n);
  else
    api_ready(kc, md, n);
}

static void kc_stream(kr__conn *c, kr_stream *s, const kr_md *md, size_t n,
                      int fin, void *ud) {
  kas_conn *kc = ud;
  if (kc->kind == KR__LISTEN_AGENT) {
    kr_stream_reset(s, KR_CODE_REFUSED, "agents cannot open streams here");
    return;
  }
  if (!kc->authed) {
    if (kc->auth && kc->kind == KR__LISTEN_API)
      hold_stream(kc, s, md, n, fin); /* until the verdict */
    else
      kr_stream_reset(s, KR_CODE_UNAUTHORIZED, "not authenticated");
    return;
  }
  serve_stream(kc, s, md, n, fin, NULL, 0);
}

static void kc_goaway(kr__conn *c, uint32_t code, const uint8_t *r, size_t rl,
                      void *ud) {
  kas_conn *kc = ud;
  /* A draining agent connection takes no new streams; it leaves the
   * registry at once so that requests go to its replacement. */
  if (kc->kind == KR__LISTEN_AGENT && kc->tunnel) {
    kr__registry_remove(kc->k->reg, kc->tunnel);
    kc->tunnel = NULL;
  }
}

static const kr__conn_cbs kas_conn_cbs = {kc_ready, kc_stream, kc_goaway,
                                          kc_closed, NULL};

/* A listener accepted a transport. */
static void on_accept(kr__listener *l, kr__transport *t, int open,
                      const char *addr, void *ud) {
  kr_kas *k = ud;
  int kind = kr__listener_kind(l);
  if (kind == KR__LISTEN_HTTP) {
    /* HTTP credentials are checked per request (a 401 costs one HMAC);
     * the gateway is not throttled per address. */
    if (k->draining) {
      t->ops->free(t);
      return;
    }
    kr__gateway_accept(k, t, open, addr, !open);
    return;
  }
  if (k->draining || kr__throttle_blocked(&k->throttle[kind != KR__LISTEN_AGENT],
                                         addr, kr__now_us())) {
    if (!k->draining) {
      k->stats[KR_KAS_STAT_THROTTLED]++;
      kr__log(KR_LOG_WARN, "auth_throttled", "kas=%s peer=%s", k->name,
              t->peer);
    }
    t->ops->free(t);
    return;
  }
  kas_conn *kc = calloc(1, sizeof(*kc));
  if (!kc) {
    t->ops->free(t);
    return;
  }
  kc->k = k;
  kc->kind = kind;
  snprintf(kc->peer, sizeof(kc->peer), "%s", t->peer);
  snprintf(kc->addr, sizeof(kc->addr), "%s", addr);
  if (kr__conn_new(k->base, t, open, kind == KR__LISTEN_AGENT ? k->agent_mux_opt
                                                              : k->api_mux_opt,
                   &kas_conn_cbs, kc, &kc->conn) < 0) {
    free(kc);
    return;
  }
  kc->next = k->conns;
  if (k->conns)
    k->conns->prev = kc;
  k->conns = kc;
}

/* ---------------------------------------------------------------- cluster */

static void on_presence(int64_t agent, int present, void *ud) {
  kr_kas *k = ud;
  if (k->cluster)
    kr__cluster_agent_changed(k->cluster, agent);
}

static void on_wake(int64_t agent, const char *instance, const char *url,
                    void *ud) {
  kr_kas *k = ud;
  if (strcmp(instance, kr__cluster_instance(k->cluster)) != 0)
    kr__route_wake(k, agent, url);
}

static void on_resync(void *ud) { kr__route_resync(ud); }

/* Joins the cluster when Redis is configured. 0 or KR_ECONFIG & co. */
static int start_cluster(kr_kas *k, const kr_kas_options *o, char *err,
                         size_t errlen) {
  if (!o->redis_url[0] && !o->redis_sentinels[0])
    return 0;
  if (!o->private_url[0] || !o->private_secret_len) {
    snprintf(err, errlen, "with Redis, a private URL and a private secret "
                          "are required (peers route through them)");
    return KR_ECONFIG;
  }
  kr__cluster_config cc = {0};
  cc.url = o->redis_url[0] ? o->redis_url : NULL;
  cc.sentinels = o->redis_sentinels[0] ? o->redis_sentinels : NULL;
  cc.master = o->redis_master[0] ? o->redis_master : NULL;
  cc.password = o->redis_password[0] ? o->redis_password : NULL;
  cc.prefix = o->redis_prefix;
  cc.instance = k->name;
  cc.private_url = o->private_url;
  kr__cluster_cbs cbs = {on_wake, on_resync};
  int rc = kr__cluster_new(k->base, &cc, k->reg, &cbs, k, &k->cluster, err,
                           errlen);
  if (rc == 0)
    kr__registry_set_presence_cb(k->reg, on_presence, k);
  return rc;
}

/* ----------------------------------------------------------------- timers */

static void reg_timer_cb(evutil_socket_t fd, short what, void *arg) {
  kr_kas *k = arg;
  kr__registry_expire(k->reg, kr__now_us());
  kr__kas_schedule_expiry(k);
}

void kr__kas_schedule_expiry(kr_kas *k) {
  kr_time_us at = kr__registry_next_deadline(k->reg);
  if (at == UINT64_MAX) {
    event_del(k->reg_timer);
    return;
  }
  kr_time_us now = kr__now_us();
  kr_time_us d = at > now ? at - now : 0;
  struct timeval tv = {(time_t)(d / 1000000u), (suseconds_t)(d % 1000000u)};
  event_add(k->reg_timer, &tv);
}

/* --------------------------------------------------------------- lifetime */

static int make_mux_opt(kr_kas *k, kr_mux_options **out) {
  kr_mux_options *mo;
  if (kr_mux_options_new(&mo) < 0)
    return KR_ENOMEM;
  kr_mux_options_set_role(mo, KR_ROLE_ACCEPTOR);
  kr_mux_options_set_keepalive(mo, k->opt.keepalive_interval,
                               k->opt.keepalive_timeout);
  kr_mux_options_set_handshake_timeout(mo, k->opt.handshake_timeout);
  *out = mo;
  return 0;
}

int kr_kas_new(kr_kas **out, struct event_base *base, const kr_kas_options *o,
               char *err, size_t errlen) {
  char dummy[8];
  if (!err) {
    err = dummy;
    errlen = sizeof(dummy);
  }
  err[0] = 0;
  if (!out || !base || !o)
    return KR_EINVAL;
  kr_kas *k = calloc(1, sizeof(*k));
  if (!k)
    return KR_ENOMEM;
  k->base = base;
  k->opt = *o;
  /* Instances must have distinct names in a cluster: the private URL
   * unless a name was given. */
  snprintf(k->name, sizeof(k->name), "%.255s",
           strcmp(o->name, "kas") == 0 && o->private_url[0] ? o->private_url
                                                            : o->name);
  memcpy(k->private_secret, o->private_secret, o->private_secret_len);
  k->private_secret_len = o->private_secret_len;
  memcpy(k->api_secret, o->api_secret, o->api_secret_len);
  k->api_secret_len = o->api_secret_len;
  int rc = 0, has_api = 0, has_tls = 0;
  for (size_t i = 0; i < o->n_listen; i++) {
    has_api |= o->listen[i].kind != KR__LISTEN_AGENT;
    has_tls |= kr__url_is_secure(&o->listen[i].url);
  }
  if (!o->tokens_file[0] && !o->agent_verify) {
    snprintf(err, errlen,
             "an agent token file or an agent verifier is "
             "required");
    rc = KR_ECONFIG;
  } else if (has_api && !o->api_secret_len && !o->api_verify) {
    snprintf(err, errlen,
             "an API or HTTP listener needs an API secret or "
             "an API verifier");
    rc = KR_ECONFIG;
  } else if (has_tls && !o->tls_cert[0]) {
    snprintf(err, errlen, "a tls://, wss:// or https:// listener needs a "
                          "certificate and key");
    rc = KR_ECONFIG;
  }
  if (rc == 0 && o->tokens_file[0] &&
      kr__token_file_load(kr_mem_default(), o->tokens_file, &k->tokens, err,
                          errlen) < 0)
    rc = KR_ECONFIG;
  if (rc == 0 && o->user_tokens_file[0] &&
      kr__user_token_table_load(kr_mem_default(), o->user_tokens_file,
                                &k->user_tokens, err, errlen) < 0)
    rc = KR_ECONFIG;
  if (rc == 0 && has_tls &&
      kr__tls_config_server(o->tls_cert, o->tls_key, &k->tls, err, errlen) < 0)
    rc = KR_ETLS;
  if (rc == 0 && (kr__registry_new(kr_mem_default(), &k->reg) < 0 ||
                  make_mux_opt(k, &k->agent_mux_opt) < 0 ||
                  make_mux_opt(k, &k->api_mux_opt) < 0 ||
                  !(k->reg_timer = event_new(base, -1, 0, reg_timer_cb, k))))
    rc = KR_ENOMEM;
  if (rc == 0)
    rc = start_cluster(k, o, err, errlen);
  int hs_ms = (int)(o->handshake_timeout / 1000);
  for (size_t i = 0; rc == 0 && i < o->n_listen; i++) {
    rc = kr__listener_new(base, &o->listen[i].url, o->listen[i].kind, k->tls,
                          hs_ms, on_accept, k, &k->listeners[i], err, errlen);
    if (rc == 0)
      k->n_listeners++;
    if (rc == 0) /* wss:// loads the files into libwebsockets */
      rc = kr__listener_set_tls_files(k->listeners[i], o->tls_cert, o->tls_key,
                                      err, errlen);
  }
  if (rc < 0) {
    kr_kas_free(k);
    return rc;
  }
  for (size_t i = 0; i < k->n_listeners; i++)
    kr__log(KR_LOG_INFO, "listening", "kas=%s kind=%s url=%s://%s:%d", k->name,
            o->listen[i].kind == KR__LISTEN_AGENT  ? "agent"
            : o->listen[i].kind == KR__LISTEN_API ? "api"
            : o->listen[i].kind == KR__LISTEN_HTTP ? "http"
                                                   : "private",
            kr__scheme_name(o->listen[i].url.scheme), o->listen[i].url.host,
            kr__listener_port(k->listeners[i]));
  *out = k;
  return 0;
}

void kr_kas_free(kr_kas *k) {
  if (!k)
    return;
  k->freeing = 1;
  /* No new connections while the old ones go. */
  for (size_t i = 0; i < k->n_listeners; i++)
    kr__listener_close(k->listeners[i]);
  /* Verifications still pending outlive the kas until the host completes
   * them; from now on that only frees them. */
  kr__auth_cancel_all(k);
  /* Connections go without callbacks: relays are released through the
   * stream close path of each mux, which kr__conn_free() does not run, so
   * release them explicitly first. */
  kr__gateway_free_all(k);
  kr__relay_free_all(k);
  kr__route_free_all(k);
  kr__peers_free_all(k);
  kr__listing_free_all(k);
  kr__cluster_free(k->cluster);
  k->cluster = NULL;
  free(k->route_cache);
  while (k->conns) {
    kas_conn *kc = k->conns;
    kconn_unlink(k, kc);
    held_drop_all(kc); /* the mux frees the streams */
    kr__conn_free(kc->conn);
    free(kc->id);
    free(kc);
  }
  /* Last: WebSocket connections used the listeners' contexts. */
  for (size_t i = 0; i < k->n_listeners; i++)
    kr__listener_free(k->listeners[i]);
  kr__registry_free(k->reg);
  if (k->reg_timer)
    event_free(k->reg_timer);
  if (k->drain_timer)
    event_free(k->drain_timer);
  kr_mux_options_free(k->agent_mux_opt);
  kr_mux_options_free(k->api_mux_opt);
  kr__token_table_free(k->tokens);
  kr__user_token_table_free(k->user_tokens);
  kr__tls_config_free(k->tls);
  kr__throttle_clear(&k->throttle[0]);
  kr__throttle_clear(&k->throttle[1]);
  memset(k->api_secret, 0, sizeof(k->api_secret));
  memset(k->private_secret, 0, sizeof(k->private_secret));
  free(k);
}

static int nth_port(const kr_kas *k, size_t i, int kind) {
  for (size_t j = 0; j < k->n_listeners; j++)
    if (k->opt.listen[j].kind == kind && i-- == 0)
      return kr__listener_port(k->listeners[j]);
  return KR_EINVAL;
}

int kr_kas_agent_port(const kr_kas *k, size_t i) {
  return nth_port(k, i, KR__LISTEN_AGENT);
}

int kr_kas_api_port(const kr_kas *k, size_t i) {
  return nth_port(k, i, KR__LISTEN_API);
}

int kr_kas_http_port(const kr_kas *k, size_t i) {
  return nth_port(k, i, KR__LISTEN_HTTP);
}

int kr_kas_private_port(const kr_kas *k, size_t i) {
  return nth_port(k, i, KR__LISTEN_PRIVATE);
}

int kr_kas_reload_tokens(kr_kas *k, char *err, size_t errlen) {
  kr__token_table *t = NULL;
  char dummy[8];
  if (!err) {
    err = dummy;
    errlen = sizeof(dummy);
  }
  /* Without a file (an agent verifier alone) there is nothing to read. */
  int rc = k->opt.tokens_file[0]
               ? kr__token_file_load(kr_mem_default(), k->opt.tokens_file, &t,
                                     err, errlen)
               : 0;
  if (rc < 0) {
    kr__log(KR_LOG_ERROR, "tokens_reload_failed", "kas=%s", k->name);
    return rc;
  }
  kr__user_token_table *ut = NULL;
  if (k->opt.user_tokens_file[0] &&
      kr__user_token_table_load(kr_mem_default(), k->opt.user_tokens_file, &ut,
                                err, errlen) < 0) {
    kr__token_table_free(t);
    kr__log(KR_LOG_ERROR, "tokens_reload_failed", "kas=%s", k->name);
    return KR_ECONFIG;
  }
  if (t) {
    kr__token_table_free(k->tokens);
    k->tokens = t;
  }
  if (ut) {
    kr__user_token_table_free(k->user_tokens);
    k->user_tokens = ut;
  }
  k->user_tokens_gen++;
  kr__log(KR_LOG_INFO, "tokens_reloaded", "kas=%s", k->name);
  return 0;
}

static void drain_done_cb(evutil_socket_t fd, short what, void *arg) {
  kr_kas *k = arg;
  if (k->conns || k->gw_conns) {
    /* Grace period over: close what is left. */
    kr__gateway_free_all(k);
    kr__log(KR_LOG_WARN, "drain_timeout", "kas=%s", k->name);
    for (kas_conn *kc = k->conns; kc; kc = kc->next)
      kr__conn_abort(kc->conn, KR_CODE_SHUTDOWN, "kas shut down");
    /* Connections that close later come back through maybe_drained. */
    kr__kas_maybe_drained(k);
    return;
  }
  if (k->cluster_leaving)
    return; /* cluster_left() comes back here */
  kr_kas_drained_cb done = k->drained;
  k->drained = NULL;
  if (done)
    done(k, k->drained_ud);
}

void kr__kas_maybe_drained(kr_kas *k) {
  if (k->draining && !k->conns && !k->gw_conns && !k->cluster_leaving &&
      !k->freeing)
    event_active(k->drain_timer, EV_TIMEOUT, 0);
}

/* This instance's presence is gone from Redis (or the attempt ended). */
static void cluster_left(void *ud) {
  kr_kas *k = ud;
  k->cluster_leaving = 0;
  kr__kas_maybe_drained(k);
}

void kr_kas_drain(kr_kas *k, kr_time_us grace, kr_kas_drained_cb done,
                  void *ud) {
  if (k->draining)
    return;
  k->draining = 1;
  k->drained = done;
  k->drained_ud = ud;
  /* Close the listening sockets: a disabled listener would still let the
   * kernel complete connections that nobody serves. The listeners live on
   * until kr_kas_free(): WebSocket connections use their context. */
  for (size_t i = 0; i < k->n_listeners; i++)
    kr__listener_close(k->listeners[i]);
  k->drain_timer = event_new(k->base, -1, 0, drain_done_cb, k);
  struct timeval tv = {(time_t)(grace / 1000000u),
                       (suseconds_t)(grace % 1000000u)};
  event_add(k->drain_timer, &tv);
  kr__log(KR_LOG_INFO, "draining", "kas=%s connections=%llu", k->name,
          (unsigned long long)(k->stats[KR_KAS_STAT_AGENT_CONNECTIONS] +
                               k->stats[KR_KAS_STAT_API_CONNECTIONS]));
  for (kas_conn *kc = k->conns; kc; kc = kc->next) {
    if (kc->tunnel) {
      kr__registry_remove(k->reg, kc->tunnel);
      kc->tunnel = NULL;
    }
    /* A verification still pending no longer matters. */
    kr__auth_cancel(kc->auth);
    held_reset_all(kc, KR_CODE_REFUSED, "kas is shutting down");
    kr__conn_goaway(kc->conn, KR_CODE_SHUTDOWN, "kas is shutting down");
  }
  kr__route_drain(k);
  kr__peers_goaway(k);
  kr__gateway_drain(k);
  if (k->cluster) {
    k->cluster_leaving = 1;
    kr__cluster_shutdown(k->cluster, cluster_left, k);
  }
  kr__kas_maybe_drained(k);
}

uint64_t kr_kas_stat_get(const kr_kas *k, kr_kas_stat id) {
  if ((unsigned)id >= KR_KAS_STAT_COUNT)
    return 0;
  return k->stats[id];
}

size_t kr_kas_agent_count(const kr_kas *k) {
  return kr__registry_agent_count(k->reg);
}
