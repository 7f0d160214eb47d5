/* Client-stream <-> tunnel-stream splice and routing (see relay.h). */
#include <event2/buffer.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "core/mux_internal.h"
#include "io/log.h"
#include "http/http_map.h"
#include "kas/http_auth.h"
#include "kas/relay.h"
#include "kas/route.h"

struct kr__relay {
  kr_kas *k;
  int64_t agent_id;
  kas_conn *ac;  /* tunnel connection, once routed */
  kr_stream *cs; /* client stream; NULL once it ended */
  kr_stream *as; /* tunnel stream; NULL before routing and once it ended */
  kr__route *route; /* while routing */
  int open_fin;
  struct evbuffer *to_agent;  /* client bytes the tunnel stream refused */
  struct evbuffer *to_client; /* tunnel bytes the client stream refused */
  int fin_to_agent, fin_to_client;
  int routed;
  kr__relay *prev, *next;
};

static const kr__stream_handler client_handler;
static const kr__stream_handler agent_handler;

static void relay_free(kr__relay *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    r->k->relays = r->next;
  if (r->next)
    r->next->prev = r->prev;
  kr__route_cancel(r->route);
  if (r->to_agent)
    evbuffer_free(r->to_agent);
  if (r->to_client)
    evbuffer_free(r->to_client);
  free(r);
}

static void maybe_free(kr__relay *r) {
  if (!r->cs && !r->as)
    relay_free(r);
}

void kr__relay_free_all(kr_kas *k) {
  while (k->relays)
    relay_free(k->relays);
}

static void reset_stream(kr_stream **sp, uint32_t code, const char *reason) {
  kr_stream *s = *sp;
  if (!s)
    return;
  *sp = NULL; /* its on_close must not come back into the relay */
  kr__stream_set_handler(s, NULL);
  kr_stream_set_user_data(s, NULL);
  kr_stream_reset(s, code, reason);
}

/* Moves buffered bytes from buf into dst, returning credit on src for
 * what dst took. Closes dst for writing once buf is empty and fin set. */
static void drain(struct evbuffer *buf, kr_stream *dst, kr_stream *src,
                  int fin) {
  if (!dst)
    return;
  while (evbuffer_get_length(buf) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(buf, -1, NULL, &v, 1) < 1)
      break;
    int64_t w = kr_stream_write(dst, v.iov_base, v.iov_len);
    if (w <= 0)
      break;
    evbuffer_drain(buf, (size_t)w);
    if (src) {
      kr_stream_consume(src, (size_t)w);
    }
    if ((size_t)w < v.iov_len)
      break;
  }
  if (fin && evbuffer_get_length(buf) == 0)
    kr_stream_close_write(dst); /* KR_ESTATE when already closed: fine */
}

/* Bytes from src go to dst now if nothing is queued ahead of them. */
static void forward(struct evbuffer *buf, kr_stream *dst, kr_stream *src,
                    const uint8_t *p, size_t n) {
  size_t done = 0;
  if (dst && evbuffer_get_length(buf) == 0) {
    int64_t w = kr_stream_write(dst, p, n);
    if (w > 0) {
      done = (size_t)w;
      kr_stream_consume(src, done);
    }
  }
  if (done < n)
    evbuffer_add(buf, p + done, n - done);
}

/* ------------------------------------------------------------- routing */

/* The tunnel stream ended or was reset by the relay: account for it. */
static void tunnel_done(kr__relay *r) {
  if (r->routed) {
    r->routed = 0;
    kr__route_done(r->k, r->ac);
  }
  r->ac = NULL;
}

static void routed(kr_stream *as, kas_conn *ac, uint32_t code,
                   const char *reason, void *ud) {
  kr__relay *r = ud;
  r->route = NULL;
  if (!as) {
    reset_stream(&r->cs, code, reason);
    maybe_free(r);
    return;
  }
  r->as = as;
  r->ac = ac;
  r->routed = 1;
  if (r->open_fin)
    r->fin_to_agent = 0; /* the OPEN carried it */
  drain(r->to_agent, r->as, r->cs, r->fin_to_agent);
}

static int md_is(const kr_md *m, const char *name) {
  size_t len = strlen(name);
  return m->name_len == len && memcmp(m->name, name, len) == 0;
}

/* The metadata sent on: md without ":agent" and ":hop" (entries only;
 * bytes stay in md). ":user" and ":group" (the Kubernetes identity) from
 * an API client: when its JWT names a user ("user", "groups" claims), or
 * is limited to some agents ("agents"), the identity comes from the
 * claims and what the client sent is dropped; an unrestricted platform
 * token without a user may state the identity itself (the platform acts
 * for its users). Other kas instances pass on what their client proved. */
static kr_md *relay_md(const kr_md *md, size_t n, const kas_conn *cc,
                       size_t *out_n) {
  kr_md *out = malloc((n + 1 + KR__IDENTITY_MAX_GROUPS) * sizeof(kr_md));
  size_t k = 0;
  int api = cc->kind == KR__LISTEN_API && cc->id &&
            (cc->id->user[0] || !cc->id->any_agent);
  if (!out)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    if (md_is(&md[i], KR_MD_AGENT) || md_is(&md[i], KR_MD_HOP))
      continue;
    if (api && (md_is(&md[i], KR__MD_USER) || md_is(&md[i], KR__MD_GROUP)))
      continue;
    out[k++] = md[i];
  }
  if (api && cc->id->user[0]) {
    const kr__identity *id = cc->id;
    out[k++] = (kr_md){(const uint8_t *)KR__MD_USER, strlen(KR__MD_USER),
                       (const uint8_t *)id->user, strlen(id->user)};
    for (size_t g = 0; g < id->n_groups; g++)
      out[k++] = (kr_md){(const uint8_t *)KR__MD_GROUP, strlen(KR__MD_GROUP),
                         (const uint8_t *)id->groups[g],
                         strlen(id->groups[g])};
  }
  *out_n = k;
  return out;
}

void kr__relay_start(kr_kas *k, kas_conn *cc, kr_stream *s, const kr_md *md,
                     size_t n, int fin, struct evbuffer *early, int early_fin) {
  int64_t agent = 0;
  int has_service = 0, has_agent = 0;
  for (size_t i = 0; i < n; i++) {
    if (md_is(&md[i], KR_MD_AGENT)) {
      char buf[24];
      size_t l = md[i].value_len;
      char *end;
      if (l == 0 || l >= sizeof(buf))
        break;
      memcpy(buf, md[i].value, l);
      buf[l] = 0;
      long long v = strtoll(buf, &end, 10);
      if (*end == 0 && v > 0) {
        agent = v;
        has_agent = 1;
      }
    } else if (md_is(&md[i], KR_MD_SERVICE) && md[i].value_len > 0) {
      has_service = 1;
    }
  }
  if (!has_agent || !has_service) {
    kr_stream_reset(s, KR_CODE_PROTOCOL,
                    !has_agent ? "missing or invalid :agent" : "missing :service");
    return;
  }
  if (k->draining) {
    kr_stream_reset(s, KR_CODE_REFUSED, "kas is shutting down");
    return;
  }
  if (cc->kind == KR__LISTEN_API && cc->id &&
      !kr__identity_allows(cc->id, agent)) {
    kr_stream_reset(s, KR_CODE_UNAUTHORIZED,
                    "agent not allowed for these credentials");
    return;
  }
  kr__relay *r = calloc(1, sizeof(*r));
  if (!r || !(r->to_agent = evbuffer_new()) ||
      !(r->to_client = evbuffer_new())) {
    if (r) {
      if (r->to_agent)
        evbuffer_free(r->to_agent);
      if (r->to_client)
        evbuffer_free(r->to_client);
      free(r);
    }
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  r->k = k;
  r->agent_id = agent;
  r->cs = s;
  r->open_fin = fin;
  r->fin_to_agent = fin || early_fin;
  if (early)
    evbuffer_add_buffer(r->to_agent, early);
  r->next = k->relays;
  if (k->relays)
    k->relays->prev = r;
  k->relays = r;
  kr_stream_set_user_data(s, r);
  kr__stream_set_handler(s, &client_handler);
  size_t md_n;
  kr_md *amd = relay_md(md, n, cc, &md_n);
  /* A stream another kas routed here is served from local tunnels only. */
  int hop = cc->kind == KR__LISTEN_PRIVATE;
  if (hop)
    k->stats[KR_KAS_STAT_HOP_STREAMS]++;
  if (!amd || kr__route_start(k, agent, amd, md_n, fin, hop, &agent_handler, r,
                              routed, &r->route) < 0) {
    free(amd);
    reset_stream(&r->cs, KR_CODE_INTERNAL, "out of memory");
    maybe_free(r);
    return;
  }
  free(amd);
}

/* ------------------------------------------------------ client stream */

static void c_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr__relay *r = ud;
  forward(r->to_agent, r->as, s, p, n);
}

static void c_fin(kr_stream *s, void *ud) {
  kr__relay *r = ud;
  r->fin_to_agent = 1;
  if (r->as)
    drain(r->to_agent, r->as, s, 1);
}

static void c_writable(kr_stream *s, void *ud) {
  kr__relay *r = ud;
  drain(r->to_client, s, r->as, r->fin_to_client);
}

static void c_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  kr__relay *r = ud;
  r->cs = NULL;
  if (code != KR_CODE_NO_ERROR && r->as)
    reset_stream(&r->as, KR_CODE_CANCEL, "client went away");
  if (r->as == NULL)
    tunnel_done(r);
  maybe_free(r);
}

static const kr__stream_handler client_handler = {NULL, c_data, c_fin,
                                                  c_writable, c_close};

/* ------------------------------------------------------ tunnel stream */

static void a_reply(kr_stream *s, const kr_md *md, size_t n, int fin, void *ud) {
  kr__relay *r = ud;
  if (!r->cs)
    return;
  if (kr_stream_reply(r->cs, md, n, fin) < 0) {
    /* Both streams end here without coming back to the relay (their
     * handlers are detached): account and free it now. */
    reset_stream(&r->cs, KR_CODE_INTERNAL, "cannot relay the reply");
    reset_stream(&r->as, KR_CODE_CANCEL, "client stream failed");
    tunnel_done(r);
    maybe_free(r);
    return;
  }
}

static void a_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  kr__relay *r = ud;
  forward(r->to_client, r->cs, s, p, n);
}

static void a_fin(kr_stream *s, void *ud) {
  kr__relay *r = ud;
  r->fin_to_client = 1;
  if (r->cs)
    drain(r->to_client, r->cs, s, 1);
}

static void a_writable(kr_stream *s, void *ud) {
  kr__relay *r = ud;
  drain(r->to_agent, s, r->cs, r->fin_to_agent);
}

static void a_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                    size_t len, void *ud) {
  kr__relay *r = ud;
  r->as = NULL;
  if (r->ac && r->ac->kind == KR__LISTEN_PRIVATE &&
      (code == KR_CODE_UNAVAILABLE || code == KR_CODE_REFUSED))
    kr__route_forget(r->k, r->agent_id, r->ac->peer); /* stale candidate */
  if (code != KR_CODE_NO_ERROR) {
    char why[KR_MAX_REASON + 1];
    snprintf(why, sizeof(why), "%.*s", (int)len, (const char *)reason);
    reset_stream(&r->cs, code, why);
  }
  tunnel_done(r);
  maybe_free(r);
}

static const kr__stream_handler agent_handler = {a_reply, a_data, a_fin,
                                                 a_writable, a_close};
