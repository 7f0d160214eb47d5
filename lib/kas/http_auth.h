/* Who is calling the kas HTTP gateway, from its Authorization field.
 * Internal.
 *
 * Two credential forms (README "HTTP API"), both after the scheme "Bearer"
 * (any case) and one or more spaces; blanks around the whole field value
 * are ignored:
 *   Authorization: Bearer <JWT>     HS256 with the API secret, audience
 *       "gitlab-kas", "exp" required, 30 s leeway (lib/core/jwt.h).
 *       Optional claims:
 *       "agents": array of at most 64 positive integer agent ids the token
 *                 may reach (absent: any; empty: none);
 *       "agent_id": positive integer, the agent for the Kubernetes proxy;
 *       "user": the Kubernetes user name (string);
 *       "groups": array of at most 32 group names (strings).
 *       A claim of the wrong type or over its limit refuses the token
 *       ("malformed claims"); so does a user or group name that is not
 *       1..255 bytes of printable ASCII (0x20..0x7e) or that starts or ends
 *       with a space (header parsers would strip it).
 *   Authorization: Bearer pat:<agent_id>:<token>
 *       a user token checked against the user-token file
 *       (lib/core/user_tokens.h): hashed, compared in constant time; the
 *       file says which agents the token may reach, the user and groups.
 *       <agent_id> is a positive decimal without leading zeros; <token> is
 *       everything after the second colon (colons included), 1..4096
 *       bytes. The identity then allows exactly that one agent and its
 *       agent_id is that agent.
 *
 * Reasons are short static English text; never token or secret bytes.
 * Callers must not log the Authorization value either.
 */
#ifndef KR_KAS_HTTP_AUTH_H
#define KR_KAS_HTTP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "core/user_tokens.h"

#define KR__IDENTITY_MAX_AGENTS 64
#define KR__IDENTITY_MAX_GROUPS 32
#define KR__IDENTITY_MAX_NAME 255  /* bytes of a user or group name */
#define KR__HTTP_AUTH_MAX_PAT 4096 /* bytes of the token in pat:ID:TOKEN */

/* What the gateway serves: the service proxy
 * (/api/v1/agents/{id}/services/...) or the Kubernetes proxy
 * (/k8s-proxy/...), which needs an agent and a user. */
typedef enum kr__http_auth_kind {
  KR__AUTH_SERVICE_PROXY = 1,
  KR__AUTH_K8S_PROXY = 2
} kr__http_auth_kind;

typedef struct kr__identity {
  int any_agent; /* every agent allowed */
  int64_t agents[KR__IDENTITY_MAX_AGENTS];
  size_t n_agents;
  int64_t agent_id; /* the Kubernetes proxy's target agent; 0 if none */
  /* user: "" when the credentials carry none. Names contain printable
   * ASCII only (they become header values at the agent). */
  char user[KR__IDENTITY_MAX_NAME + 1];
  char groups[KR__IDENTITY_MAX_GROUPS][KR__IDENTITY_MAX_NAME + 1];
  size_t n_groups;
  /* Until when (seconds since the epoch) the credentials stay valid, for
   * callers that cache a check: a JWT's exp plus the leeway; INT64_MAX
   * for user tokens (valid until the user-token table changes). */
  int64_t valid_until;
} kr__identity;

typedef struct kr__http_auth_cfg {
  const uint8_t *api_secret; /* NULL: JWTs are refused */
  size_t api_secret_len;
  const kr__user_token_table *user_tokens; /* NULL: pat: tokens refused */
} kr__http_auth_cfg;

/* Checks an Authorization field value authz[0..len) (NULL: none sent) for
 * kind at time now_s (seconds since the epoch). Thread-safe; the
 * user-token table is only read.
 * Returns 0 with *id filled, or (with *id zeroed):
 *   KR_EAUTH  no, malformed, expired or unknown credentials (HTTP 401);
 *             for KR__AUTH_K8S_PROXY also a JWT without "agent_id" or
 *             "user"; a JWT when api_secret is NULL, a pat: credential
 *             when user_tokens is NULL
 *   KR_EPERM  valid credentials that do not allow the agent named in a
 *             pat: token, or (KR__AUTH_K8S_PROXY) a JWT whose "agents"
 *             claim excludes its own "agent_id" (HTTP 403)
 *   KR_EINVAL NULL cfg or id, an unknown kind, or an API secret shorter
 *             than KR__JWT_MIN_SECRET (a server fault: HTTP 500)
 *   KR_ENOMEM jansson could not allocate (HTTP 500)
 * with *reason (reason may be NULL) set to a static text in every case.
 * For the service proxy the caller still checks the agent of the path
 * with kr__identity_allows (a JWT restricts it only through "agents"). */
int kr__http_auth_check(const kr__http_auth_cfg *cfg, const char *authz,
                        size_t len, kr__http_auth_kind kind, int64_t now_s,
                        kr__identity *id, const char **reason);

/* 1 if id may reach agent (agent > 0), else 0; NULL id gives 0. */
int kr__identity_allows(const kr__identity *id, int64_t agent);

/* 1 if s[0..n) may be a user or group name of an identity: 1..255 bytes
 * of printable ASCII (0x20..0x7e), not starting or ending with a space
 * (header parsers would strip it, and " admin" must not turn into
 * "admin"); else 0. The one rule for JWT claims and host verdicts. */
int kr__identity_name_ok(const char *s, size_t n);

/* What kind needs beyond valid credentials, for an identity that did not
 * come from a JWT (a host verifier's verdict): 0, or KR_EAUTH for a
 * Kubernetes proxy identity without agent_id or user, KR_EPERM when its
 * agents exclude its own agent_id; *reason (may be NULL) static text. The
 * same rule kr__http_auth_check() applies to JWT claims. */
int kr__identity_check_kind(const kr__identity *id, kr__http_auth_kind kind,
                            const char **reason);

/* Finds the credential of a Bearer Authorization value authz[0..len)
 * (the same parsing as kr__http_auth_check(): blanks around the value and
 * after the scheme ignored, scheme in any case). Returns 0 with
 * *cred and *n pointing into authz, or KR_EAUTH (none, another scheme, an
 * empty credential) with *reason (may be NULL) a static text. */
int kr__http_auth_bearer(const char *authz, size_t len, const char **cred,
                         size_t *n, const char **reason);

#endif
