/* Caller identity for the kas HTTP gateway (see http_auth.h). */
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include <kasroute/error.h>

#include "core/jwt.h"
#include "kas/http_auth.h"

#define AUDIENCE "gitlab-kas"
#define LEEWAY_S 30
#define PAT_PREFIX "pat:"

static int is_space(char c) {
  return c == ' ' || c == '\t';
}

/* A user or group name that may become an Impersonate-* header value. */
int kr__identity_name_ok(const char *s, size_t n) {
  if (n == 0 || n > KR__IDENTITY_MAX_NAME || s[0] == ' ' || s[n - 1] == ' ')
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c > 0x7e)
      return 0;
  }
  return 1;
}

static int copy_name(char *dst, const json_t *v) {
  if (!json_is_string(v))
    return 0;
  const char *s = json_string_value(v);
  size_t n = json_string_length(v);
  /* json_string_length counts an embedded NUL ("\u0000"), which the
   * name check then refuses as a control character. */
  if (!kr__identity_name_ok(s, n))
    return 0;
  memcpy(dst, s, n);
  dst[n] = '\0';
  return 1;
}

static int positive_int(const json_t *v, int64_t *out) {
  if (!json_is_integer(v) || json_integer_value(v) <= 0)
    return 0;
  *out = (int64_t)json_integer_value(v);
  return 1;
}

/* Fills id from verified JWT claims. Returns 0 or KR_EAUTH with *reason.
 * id was zeroed by the caller. */
static int identity_from_claims(const json_t *claims, kr__http_auth_kind kind,
                                kr__identity *id, const char **reason) {
  static const char *const malformed = "malformed claims";
  const json_t *v = json_object_get(claims, "agents");
  if (v == NULL) {
    id->any_agent = 1;
  } else {
    if (!json_is_array(v) || json_array_size(v) > KR__IDENTITY_MAX_AGENTS) {
      *reason = malformed;
      return KR_EAUTH;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
      if (!positive_int(json_array_get(v, i), &id->agents[i])) {
        *reason = malformed;
        return KR_EAUTH;
      }
    }
    id->n_agents = json_array_size(v);
  }

  v = json_object_get(claims, "agent_id");
  if (v != NULL && !positive_int(v, &id->agent_id)) {
    *reason = malformed;
    return KR_EAUTH;
  }
  v = json_object_get(claims, "user");
  if (v != NULL && !copy_name(id->user, v)) {
    *reason = malformed;
    return KR_EAUTH;
  }
  v = json_object_get(claims, "groups");
  if (v != NULL) {
    if (!json_is_array(v) || json_array_size(v) > KR__IDENTITY_MAX_GROUPS) {
      *reason = malformed;
      return KR_EAUTH;
    }
    for (size_t i = 0; i < json_array_size(v); i++) {
      if (!copy_name(id->groups[i], json_array_get(v, i))) {
        *reason = malformed;
        return KR_EAUTH;
      }
    }
    id->n_groups = json_array_size(v);
  }

  if (kind == KR__AUTH_K8S_PROXY) {
    if (id->agent_id == 0 || id->user[0] == '\0') {
      *reason = "token lacks agent_id or user claim";
      return KR_EAUTH;
    }
    if (!kr__identity_allows(id, id->agent_id)) {
      *reason = "agent not allowed for this token";
      return KR_EPERM;
    }
  }
  return 0;
}

int kr__identity_check_kind(const kr__identity *id, kr__http_auth_kind kind,
                            const char **reason) {
  static const char *dummy;
  if (reason == NULL)
    reason = &dummy;
  *reason = NULL;
  if (kind != KR__AUTH_K8S_PROXY)
    return 0;
  if (id->agent_id <= 0 || id->user[0] == '\0') {
    *reason = "credentials lack an agent id or a user";
    return KR_EAUTH;
  }
  if (!kr__identity_allows(id, id->agent_id)) {
    *reason = "agent not allowed for these credentials";
    return KR_EPERM;
  }
  return 0;
}

static int check_jwt(const kr__http_auth_cfg *cfg, const char *tok, size_t n,
                     kr__http_auth_kind kind, int64_t now_s, kr__identity *id,
                     const char **reason) {
  if (cfg->api_secret == NULL) {
    *reason = "JWTs are not accepted";
    return KR_EAUTH;
  }
  json_t *claims = NULL;
  const char *why = NULL;
  int rc = kr__jwt_verify_hs256(cfg->api_secret, cfg->api_secret_len, tok, n,
                                AUDIENCE, now_s, LEEWAY_S, &claims, &why);
  switch (rc) {
  case 0:
    break;
  case KR_EAUTH:
    *reason = why ? why : "invalid token";
    return KR_EAUTH;
  case KR_ETOOBIG:
    *reason = "token too long";
    return KR_EAUTH;
  case KR_ENOMEM:
    *reason = "out of memory";
    return KR_ENOMEM;
  default:
    /* Only an unusable API secret gets here (shorter than the minimum). */
    *reason = "API secret unusable";
    return KR_EINVAL;
  }
  rc = identity_from_claims(claims, kind, id, reason);
  if (rc == 0) {
    /* Verified: exp is a number; accepted while now < exp + leeway. */
    double exp = json_number_value(json_object_get(claims, "exp"));
    id->valid_until = exp > 9e15 ? INT64_MAX : (int64_t)exp + LEEWAY_S;
  }
  json_decref(claims);
  return rc;
}

/* Strict positive decimal int64 without sign or leading zero. */
static int parse_id(const char *s, size_t n, int64_t *out) {
  if (n == 0 || n > 19 || s[0] == '0')
    return 0;
  int64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return 0;
    int d = s[i] - '0';
    if (v > (INT64_MAX - d) / 10)
      return 0;
    v = v * 10 + d;
  }
  *out = v;
  return 1;
}

/* "pat:<agent_id>:<token>": the token is everything after the second
 * colon, colons included. The token is looked up before the agent is
 * checked, so an unknown token learns nothing about agent lists. */
static int check_pat(const kr__http_auth_cfg *cfg, const char *cred, size_t n,
                     kr__identity *id, const char **reason) {
  const char *p = cred + strlen(PAT_PREFIX);
  size_t rest = n - strlen(PAT_PREFIX);
  const char *colon = memchr(p, ':', rest);
  int64_t agent = 0;
  if (colon == NULL || !parse_id(p, (size_t)(colon - p), &agent)) {
    *reason = "malformed pat: credential (pat:<agent_id>:<token>)";
    return KR_EAUTH;
  }
  const char *tok = colon + 1;
  size_t tok_len = rest - (size_t)(tok - p);
  if (tok_len == 0) {
    *reason = "malformed pat: credential (pat:<agent_id>:<token>)";
    return KR_EAUTH;
  }
  if (tok_len > KR__HTTP_AUTH_MAX_PAT) {
    *reason = "token too long";
    return KR_EAUTH;
  }
  if (cfg->user_tokens == NULL) {
    *reason = "user tokens are not accepted";
    return KR_EAUTH;
  }
  kr__user_token_entry e;
  int rc = kr__user_token_lookup(cfg->user_tokens, tok, tok_len, &e);
  if (rc != 0) {
    *reason = "unknown token";
    return KR_EAUTH;
  }
  if (!kr__user_token_entry_allows(&e, agent)) {
    *reason = "agent not allowed for this token";
    return KR_EPERM;
  }
  /* The table's names satisfy kr__identity_name_ok (a stricter charset,
   * same limit). */
  id->any_agent = 0;
  id->agents[0] = agent;
  id->n_agents = 1;
  id->agent_id = agent;
  id->valid_until = INT64_MAX;
  memcpy(id->user, e.user, strlen(e.user) + 1);
  for (size_t i = 0; i < e.n_groups && i < KR__IDENTITY_MAX_GROUPS; i++)
    memcpy(id->groups[i], e.groups[i], strlen(e.groups[i]) + 1);
  id->n_groups = e.n_groups;
  return 0;
}

int kr__http_auth_bearer(const char *authz, size_t len, const char **cred,
                         size_t *n, const char **reason) {
  static const char *dummy;
  if (reason == NULL)
    reason = &dummy;
  if (authz == NULL || len == 0) {
    *reason = "no credentials";
    return KR_EAUTH;
  }
  /* Optional whitespace around a field value is not part of it (RFC 9110
   * section 5.5); the parser may or may not have removed it. */
  while (len > 0 && is_space(authz[0])) {
    authz++;
    len--;
  }
  while (len > 0 && is_space(authz[len - 1]))
    len--;
  static const char scheme[] = "Bearer";
  const size_t sl = sizeof scheme - 1;
  if (len < sl || strncasecmp(authz, scheme, sl) != 0 ||
      (len > sl && authz[sl] != ' ')) {
    *reason = "not a Bearer credential";
    return KR_EAUTH;
  }
  const char *c = authz + sl;
  size_t m = len - sl;
  while (m > 0 && c[0] == ' ') {
    c++;
    m--;
  }
  if (m == 0) {
    *reason = "empty Bearer credential";
    return KR_EAUTH;
  }
  *cred = c;
  *n = m;
  return 0;
}

int kr__http_auth_check(const kr__http_auth_cfg *cfg, const char *authz,
                        size_t len, kr__http_auth_kind kind, int64_t now_s,
                        kr__identity *id, const char **reason) {
  static const char *dummy;
  if (reason == NULL)
    reason = &dummy;
  *reason = NULL;
  if (id != NULL)
    memset(id, 0, sizeof *id);
  if (cfg == NULL || id == NULL ||
      (kind != KR__AUTH_SERVICE_PROXY && kind != KR__AUTH_K8S_PROXY)) {
    *reason = "invalid argument";
    return KR_EINVAL;
  }
  const char *cred;
  size_t n;
  int rc = kr__http_auth_bearer(authz, len, &cred, &n, reason);
  if (rc != 0)
    return rc;
  if (n >= strlen(PAT_PREFIX) &&
      memcmp(cred, PAT_PREFIX, strlen(PAT_PREFIX)) == 0)
    rc = check_pat(cfg, cred, n, id, reason);
  else
    rc = check_jwt(cfg, cred, n, kind, now_s, id, reason);
  if (rc != 0)
    memset(id, 0, sizeof *id);
  return rc;
}

int kr__identity_allows(const kr__identity *id, int64_t agent) {
  if (id == NULL || agent <= 0)
    return 0;
  if (id->any_agent)
    return 1;
  for (size_t i = 0; i < id->n_agents && i < KR__IDENTITY_MAX_AGENTS; i++) {
    if (id->agents[i] == agent)
      return 1;
  }
  return 0;
}
