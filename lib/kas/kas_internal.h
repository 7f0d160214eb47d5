/* Private structures of the kas role, shared by its modules. */
#ifndef KR_KAS_INTERNAL_H
#define KR_KAS_INTERNAL_H

#include <event2/event.h>

#include <kasroute/kas.h>

#include "core/registry.h"
#include "core/token_file.h"
#include "core/user_tokens.h"
#include "http/http_parse.h"
#include "io/conn.h"
#include "io/listener.h"
#include "io/transport_tls.h"
#include "io/url.h"
#include "kas/throttle.h"

#define KR__KAS_MAX_LISTEN 16

struct kr_kas_options {
  struct {
    kr__url url;
    int kind; /* KR__LISTEN_AGENT or KR__LISTEN_API */
  } listen[KR__KAS_MAX_LISTEN];
  size_t n_listen;
  char tls_cert[1024];
  char tls_key[1024];
  char tokens_file[1024];
  char user_tokens_file[1024]; /* "" = none: pat: credentials refused */
  kr__http_limits http_limits;
  kr_time_us http_request_timeout; /* to receive a request head */
  kr_time_us http_idle_timeout;    /* keep-alive idle */
  uint8_t api_secret[256];
  size_t api_secret_len;
  kr_time_us route_timeout;
  kr_time_us keepalive_interval;
  kr_time_us keepalive_timeout;
  kr_time_us handshake_timeout;
  char name[256];
  /* Several instances (issue: horizontal scale). */
  char redis_url[1024];       /* "" = single instance, in-memory presence */
  char redis_sentinels[1024]; /* "host:port,..." */
  char redis_master[256];
  char redis_password[512];
  char redis_prefix[128];
  char private_url[512];      /* advertised to peers */
  char private_ca_file[1024]; /* for tls:// peer links; "" = system store */
  uint8_t private_secret[256];
  size_t private_secret_len;
  kr_time_us hop_wait;        /* how long a hop stream waits for a local
                                 tunnel of its agent */
  /* The host's verifiers (NULL: none); see auth_request.h. */
  kr_kas_verify_cb agent_verify;
  void *agent_verify_ud;
  kr_kas_verify_cb api_verify;
  void *api_verify_ud;
};

typedef struct kr__relay kr__relay;
typedef struct kr__route kr__route;
typedef struct kas_conn kas_conn;
typedef struct gw_conn gw_conn;
typedef struct kr__peer kr__peer;
typedef struct kr__cluster kr__cluster;
typedef struct kc_held kc_held;

/* One accepted connection, agent tunnel or API client. */
struct kas_conn {
  kr_kas *k;
  kr__conn *conn;
  int kind;
  int authed;
  int64_t agent_id;     /* agents */
  char replica[128];    /* agents: HELLO ":name" */
  kr__tunnel *tunnel;   /* agents, while in the registry */
  /* Accepted connections: the peer's "ip:port", for logs. Links to other
   * instances (peer.c): the instance's private URL, which routing uses as
   * its key (kr__route_forget()), so it must hold a whole one. */
  char peer[512];
  char addr[64];        /* peer IP without port, for throttling */
  /* API clients: what their JWT allows (agents claim) and who they are
   * for the Kubernetes service (user, groups claims); NULL otherwise. */
  struct kr__identity *id;
  /* While the host's verifier decides (auth_request.h): the request, and
   * for API clients the streams opened meanwhile, held unanswered. */
  kr_kas_auth *auth;
  kc_held *held, *held_last; /* oldest first */
  size_t n_held;
  kas_conn *prev, *next;
};

_Static_assert(sizeof(((kas_conn *)0)->peer) >=
                   sizeof(((kr_kas_options *)0)->private_url),
               "kas_conn.peer must hold a whole private URL");

struct kr_kas {
  struct event_base *base;
  kr_kas_options opt;
  char name[256];
  uint8_t api_secret[256];
  size_t api_secret_len;
  kr__tls_config *tls;
  kr__listener *listeners[KR__KAS_MAX_LISTEN];
  size_t n_listeners;
  kr__token_table *tokens;
  kr__user_token_table *user_tokens; /* NULL without a file */
  uint64_t user_tokens_gen; /* bumped on every reload (credential caches) */
  kr__registry *reg;
  struct event *reg_timer;
  kr_mux_options *agent_mux_opt;
  kr_mux_options *api_mux_opt;
  kas_conn *conns;
  gw_conn *gw_conns; /* HTTP gateway connections */
  size_t gw_count;
  kr__peer *peers;    /* links to other kas instances */
  kr__cluster *cluster; /* NULL without Redis */
  void *route_cache;     /* route.c: where remote agents were last found */
  struct kr__listing *listings; /* pending agent listings */
  int cluster_leaving;   /* drain: presence being removed from Redis */
  uint8_t private_secret[256];
  size_t private_secret_len;
  kr__relay *relays; /* every live relay, for kr_kas_free() */
  kr__route *routes; /* every pending route, for kr_kas_free() */
  kr_kas_auth *auths; /* pending verifications (auth_request.c) */
  size_t n_auths;
  /* Failing addresses, one table per listener kind (agent, API), so that
   * agents failing behind a NAT do not lock out API clients there. */
  kr__throttle throttle[2];
  uint64_t stats[KR_KAS_STAT_COUNT];
  int draining;
  int freeing;
  struct event *drain_timer;
  kr_kas_drained_cb drained;
  void *drained_ud;
};

/* Fires the drain callback once draining and nothing is connected. */
void kr__kas_maybe_drained(kr_kas *k);

/* Re-arms the registry's waiter-deadline timer. */
void kr__kas_schedule_expiry(kr_kas *k);

#endif
