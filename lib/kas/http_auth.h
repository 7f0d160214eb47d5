/* Who is calling the kas HTTP gateway, from its Authorization field.
 * Internal.
 *
 * Two credential forms (README "HTTP API"):
 *   Authorization: Bearer <JWT>     HS256 with the API secret, audience
 *       "gitlab-kas", "exp" required (lib/core/jwt.h). Optional claims:
 *       "agents": array of agent ids the token may reach (absent: any);
 *       "agent_id": the agent for the Kubernetes proxy;
 *       "user": the Kubernetes user name, "groups": array of group names.
 *   Authorization: Bearer pat:<agent_id>:<token>
 *       a user token checked against the user-token file
 *       (lib/core/user_tokens.h): hashed, compared in constant time; the
 *       file says which agents the token may reach, the user and groups.
 *
 * Reasons are short static English text; never token or secret bytes.
 */
#ifndef KR_KAS_HTTP_AUTH_H
#define KR_KAS_HTTP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "core/user_tokens.h"

#define KR__IDENTITY_MAX_AGENTS 64
#define KR__IDENTITY_MAX_GROUPS 32
#define KR__IDENTITY_MAX_NAME 255 /* bytes of a user or group name */

/* What the gateway serves: the service proxy
 * (/api/v1/agents/{id}/services/...) or the Kubernetes proxy
 * (/k8s-proxy/...), which needs an agent and a user. */
typedef enum kr__http_auth_kind {
  KR__AUTH_SERVICE_PROXY = 1,
  KR__AUTH_K8S_PROXY = 2
} kr__http_auth_kind;

typedef struct kr__identity {
  int any_agent;  /* every agent allowed */
  int64_t agents[KR__IDENTITY_MAX_AGENTS];
  size_t n_agents;
  int64_t agent_id; /* the Kubernetes proxy's target agent; 0 if none */
  /* user: "" when the credentials carry none. Names contain printable
   * ASCII only (they become header values at the agent). */
  char user[KR__IDENTITY_MAX_NAME + 1];
  char groups[KR__IDENTITY_MAX_GROUPS][KR__IDENTITY_MAX_NAME + 1];
  size_t n_groups;
} kr__identity;

typedef struct kr__http_auth_cfg {
  const uint8_t *api_secret; /* NULL: JWTs are refused */
  size_t api_secret_len;
  const kr__user_token_table *user_tokens; /* NULL: pat: tokens refused */
} kr__http_auth_cfg;

/* Checks an Authorization field value authz[0..len) (NULL: none sent) for
 * kind at time now_s (seconds since the epoch).
 * Returns 0 with *id filled, or:
 *   KR_EAUTH  no, malformed, expired or unknown credentials (HTTP 401);
 *             for KR__AUTH_K8S_PROXY also a JWT without "agent_id" or
 *             "user"
 *   KR_EPERM  valid credentials that do not allow the agent named in a
 *             pat: token (HTTP 403)
 * with *reason set to a static text in both cases. */
int kr__http_auth_check(const kr__http_auth_cfg *cfg, const char *authz,
                        size_t len, kr__http_auth_kind kind, int64_t now_s,
                        kr__identity *id, const char **reason);

/* 1 if id may reach agent. */
int kr__identity_allows(const kr__identity *id, int64_t agent);

#endif
