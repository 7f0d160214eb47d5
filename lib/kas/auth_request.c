/* The host's credential verifications (see auth_request.h). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "io/log.h"
#include "kas/auth_request.h"
#include "kas/kas_internal.h"

struct kr_kas_auth {
  kr_kas *k; /* NULL once nobody waits (kr_kas_auth_cancelled()) */
  kr_kas_auth_kind kind;
  char peer[96];
  int64_t agent_id;
  /* API verdicts: allocated by the first setter that needs it, so that a
   * pending request costs little (many agents reconnect at once). */
  kr__identity *id;
  int agents_set;
  struct event *timer;
  kr__auth_done_cb done;
  void *ud;
  kr_kas_auth **slot;
  kr_kas_auth *prev, *next;
};

/* ---------------------------------------------------------------- options */

int kr_kas_options_set_agent_verifier(kr_kas_options *o, kr_kas_verify_cb cb,
                                      void *user_data) {
  if (!o)
    return KR_EINVAL;
  o->agent_verify = cb;
  o->agent_verify_ud = cb ? user_data : NULL;
  return 0;
}

int kr_kas_options_set_api_verifier(kr_kas_options *o, kr_kas_verify_cb cb,
                                    void *user_data) {
  if (!o)
    return KR_EINVAL;
  o->api_verify = cb;
  o->api_verify_ud = cb ? user_data : NULL;
  return 0;
}

/* ------------------------------------------------------------ life cycle */

int kr__auth_enabled(const kr_kas *k, kr_kas_auth_kind kind) {
  if (kind == KR_KAS_AUTH_AGENT)
    return k->opt.agent_verify != NULL;
  if (kind == KR_KAS_AUTH_API)
    return k->opt.api_verify != NULL;
  return 0;
}

/* Takes a off its kas: unlinked, timer gone, slot cleared, no callback.
 * The object itself stays for the application. */
static void detach(kr_kas_auth *a) {
  kr_kas *k = a->k;
  if (!k)
    return;
  if (a->prev)
    a->prev->next = a->next;
  else
    k->auths = a->next;
  if (a->next)
    a->next->prev = a->prev;
  a->prev = a->next = NULL;
  k->n_auths--;
  if (a->timer)
    event_free(a->timer);
  a->timer = NULL;
  if (a->slot)
    *a->slot = NULL;
  a->slot = NULL;
  a->done = NULL;
  a->ud = NULL;
  a->k = NULL;
}

/* Delivers v to the waiter, detaching a first: the waiter may close its
 * connection (and cancel) from inside done. */
static void deliver(kr_kas_auth *a, const kr__auth_verdict *v) {
  kr__auth_done_cb done = a->done;
  void *ud = a->ud;
  detach(a);
  if (done)
    done(v, ud);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg) {
  kr_kas_auth *a = arg;
  kr__log(KR_LOG_WARN, "auth_verify_timeout", "kas=%s peer=%s kind=%s",
          a->k->name, a->peer, a->kind == KR_KAS_AUTH_AGENT ? "agent" : "api");
  kr__auth_verdict v = {KR__AUTH_TIMEDOUT, NULL, 0, NULL};
  deliver(a, &v);
}

int kr__auth_start(kr_kas *k, kr_kas_auth_kind kind, const char *peer,
                   const uint8_t *token, size_t len, kr_time_us timeout,
                   kr__auth_done_cb done, void *ud, kr_kas_auth **slot) {
  kr_kas_verify_cb cb = kind == KR_KAS_AUTH_AGENT ? k->opt.agent_verify
                        : kind == KR_KAS_AUTH_API ? k->opt.api_verify
                                                  : NULL;
  void *cb_ud =
      kind == KR_KAS_AUTH_AGENT ? k->opt.agent_verify_ud : k->opt.api_verify_ud;
  if (!cb || !done || !slot)
    return KR_EINVAL;
  if (k->n_auths >= KR__AUTH_MAX_PENDING) {
    kr__log(KR_LOG_WARN, "auth_verify_busy", "kas=%s peer=%s pending=%zu",
            k->name, peer, k->n_auths);
    return KR_EAGAIN;
  }
  kr_kas_auth *a = calloc(1, sizeof(*a));
  if (!a)
    return KR_ENOMEM;
  if (timeout > 0 && !(a->timer = event_new(k->base, -1, 0, timeout_cb, a))) {
    free(a);
    return KR_ENOMEM;
  }
  a->k = k;
  a->kind = kind;
  snprintf(a->peer, sizeof(a->peer), "%s", peer ? peer : "");
  a->done = done;
  a->ud = ud;
  a->slot = slot;
  a->next = k->auths;
  if (k->auths)
    k->auths->prev = a;
  k->auths = a;
  k->n_auths++;
  if (a->timer) {
    struct timeval tv = {(time_t)(timeout / 1000000u),
                         (suseconds_t)(timeout % 1000000u)};
    event_add(a->timer, &tv);
  }
  *slot = a;
  /* Last: the verifier may complete (and free) a before it returns. */
  cb(a, token, len, cb_ud);
  return 0;
}

void kr__auth_cancel(kr_kas_auth *a) {
  if (a)
    detach(a);
}

void kr__auth_cancel_all(kr_kas *k) {
  while (k->auths)
    detach(k->auths);
}

/* ------------------------------------------------------------ public API */

kr_kas_auth_kind kr_kas_auth_get_kind(const kr_kas_auth *req) {
  return req ? req->kind : (kr_kas_auth_kind)0;
}

const char *kr_kas_auth_peer(const kr_kas_auth *req) {
  return req ? req->peer : "";
}

int kr_kas_auth_cancelled(const kr_kas_auth *req) {
  return !req || req->k == NULL;
}

/* The identity an API verdict fills, allocated on first use. */
static kr__identity *identity(kr_kas_auth *a) {
  if (!a->id && (a->id = calloc(1, sizeof(*a->id))) != NULL)
    a->id->any_agent = 1;
  return a->id;
}

int kr_kas_auth_set_agent_id(kr_kas_auth *req, int64_t id) {
  if (!req || id <= 0)
    return KR_EINVAL;
  req->agent_id = id;
  return 0;
}

int kr_kas_auth_set_agents(kr_kas_auth *req, const int64_t *ids, size_t n) {
  if (!req || req->kind != KR_KAS_AUTH_API || (n > 0 && !ids))
    return KR_EINVAL;
  if (n > KR__IDENTITY_MAX_AGENTS)
    return KR_ETOOBIG;
  for (size_t i = 0; i < n; i++)
    if (ids[i] <= 0)
      return KR_EINVAL;
  kr__identity *id = identity(req);
  if (!id)
    return KR_ENOMEM;
  id->any_agent = 0;
  if (n > 0)
    memcpy(id->agents, ids, n * sizeof(*ids));
  id->n_agents = n;
  req->agents_set = 1;
  return 0;
}

int kr_kas_auth_set_user(kr_kas_auth *req, const char *user) {
  if (!req || req->kind != KR_KAS_AUTH_API || !user)
    return KR_EINVAL;
  size_t n = strlen(user);
  if (n > KR__IDENTITY_MAX_NAME)
    return KR_ETOOBIG;
  if (!kr__identity_name_ok(user, n))
    return KR_EINVAL;
  kr__identity *id = identity(req);
  if (!id)
    return KR_ENOMEM;
  memcpy(id->user, user, n + 1);
  return 0;
}

int kr_kas_auth_add_group(kr_kas_auth *req, const char *group) {
  if (!req || req->kind != KR_KAS_AUTH_API || !group)
    return KR_EINVAL;
  size_t n = strlen(group);
  if (n > KR__IDENTITY_MAX_NAME)
    return KR_ETOOBIG;
  if (!kr__identity_name_ok(group, n))
    return KR_EINVAL;
  if (req->id && req->id->n_groups >= KR__IDENTITY_MAX_GROUPS)
    return KR_ETOOBIG;
  kr__identity *id = identity(req);
  if (!id)
    return KR_ENOMEM;
  memcpy(id->groups[id->n_groups++], group, n + 1);
  return 0;
}

static void auth_free(kr_kas_auth *a) {
  detach(a);
  free(a->id);
  free(a);
}

int kr_kas_auth_allow(kr_kas_auth *req) {
  if (!req)
    return KR_EINVAL;
  if (req->kind == KR_KAS_AUTH_AGENT && req->agent_id <= 0)
    return KR_EINVAL; /* stays pending: the verifier can still decide */
  if (req->k) {
    kr__identity any = {0};
    kr__identity *id = NULL;
    if (req->kind == KR_KAS_AUTH_API) {
      /* No setter called: any agent, no user (like a JWT without
       * claims); the stack copy avoids failing for lack of memory. */
      id = req->id ? req->id : &any;
      if (!req->id)
        any.any_agent = 1;
      id->agent_id = req->agent_id;
      id->valid_until = INT64_MAX;
    }
    kr__auth_verdict v = {KR__AUTH_ALLOWED, NULL, req->agent_id, id};
    deliver(req, &v);
  }
  auth_free(req);
  return 0;
}

void kr_kas_auth_deny(kr_kas_auth *req, const char *reason) {
  if (!req)
    return;
  if (req->k) {
    /* The reason reaches logs, GOAWAY frames and JSON bodies: printable
     * ASCII only, bounded. */
    char why[KR__AUTH_MAX_REASON + 1];
    size_t n = 0;
    for (const char *p = reason ? reason : ""; *p && n < KR__AUTH_MAX_REASON;
         p++)
      why[n++] = (*p >= 0x20 && *p <= 0x7e) ? *p : '_';
    why[n] = 0;
    if (n == 0)
      snprintf(why, sizeof(why), "refused by the verifier");
    kr__auth_verdict v = {KR__AUTH_DENIED, why, 0, NULL};
    deliver(req, &v);
  }
  auth_free(req);
}
