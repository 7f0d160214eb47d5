/* Unit tests: the kas HTTP gateway's caller identity (lib/kas/http_auth.c):
 * the Authorization field, JWT claims and pat: user tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth_helper.h"
#include "core/jwt.h"
#include "core/mem_internal.h"
#include "kas/http_auth.h"

#define NOW ((int64_t)1700000000)

static const uint8_t secret[] = "0123456789abcdef0123456789abcdef-api";
#define SECRET_LEN (sizeof secret - 1)

static kr__user_token_table *users;
static kr__http_auth_cfg cfg;

/* Tokens in the user table:
 *   tok-alice   agents 17,18   alice   dev,ops
 *   tok-any     *              ci-bot  (no groups)
 *   a:b:c       5              colon   (a token with colons)
 *   L x 4096    9              long */
static char long_tok[KR__HTTP_AUTH_MAX_PAT + 2];

static void hash_hex(const char *token, size_t n, char out[65]) {
  uint8_t h[KR__SHA256_LEN];
  ck_assert_int_eq(kr__sha256(token, n, h), 0);
  kr__hex_encode(h, sizeof h, out);
}

static void setup(void) {
  memset(long_tok, 'L', KR__HTTP_AUTH_MAX_PAT + 1);
  long_tok[KR__HTTP_AUTH_MAX_PAT + 1] = '\0';
  char h1[65], h2[65], h3[65], h4[65], text[1024];
  hash_hex("tok-alice", 9, h1);
  hash_hex("tok-any", 7, h2);
  hash_hex("a:b:c", 5, h3);
  hash_hex(long_tok, KR__HTTP_AUTH_MAX_PAT, h4);
  snprintf(text, sizeof text,
           "%s 17,18 alice dev,ops\n%s * ci-bot\n%s 5 colon\n%s 9 long\n", h1,
           h2, h3, h4);
  char err[256];
  ck_assert_int_eq(kr__user_token_table_parse(NULL, text, strlen(text), "u",
                                              &users, err, sizeof err),
                   0);
  cfg.api_secret = secret;
  cfg.api_secret_len = SECRET_LEN;
  cfg.user_tokens = users;
}

static void teardown(void) {
  kr__user_token_table_free(users);
  users = NULL;
}

/* An HS256 token over claims (a JSON object text). Caller frees. */
static char *sign(const char *claims) {
  char *tok = NULL;
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, secret, SECRET_LEN, claims, &tok),
                   0);
  return tok;
}

/* "Bearer " + a JWT with aud gitlab-kas, exp NOW + 60 and extra claims
 * (",\"user\":\"x\"" style, may be ""). Caller frees. */
static char *bearer_jwt(const char *extra) {
  char claims[16384];
  snprintf(claims, sizeof claims, "{\"aud\":\"gitlab-kas\",\"exp\":%lld%s}",
           (long long)(NOW + 60), extra);
  char *tok = sign(claims);
  size_t n = strlen(tok) + 8;
  char *out = malloc(n);
  ck_assert_ptr_nonnull(out);
  snprintf(out, n, "Bearer %s", tok);
  kr__free(kr_mem_default(), tok);
  return out;
}

static int check(const char *authz, kr__http_auth_kind kind, kr__identity *id,
                 const char **reason) {
  return kr__http_auth_check(&cfg, authz, authz ? strlen(authz) : 0, kind, NOW,
                             id, reason);
}

static int zeroed(const kr__identity *id) {
  static const kr__identity z;
  return memcmp(id, &z, sizeof z) == 0;
}

/* Expects a refusal with rc and reason; the identity must be zeroed and
 * the reason must not quote the credential. */
static void refused(const char *authz, kr__http_auth_kind kind, int want_rc,
                    const char *want_reason) {
  static kr__identity id;
  memset(&id, 0x5a, sizeof id);
  const char *reason = NULL;
  int rc = check(authz, kind, &id, &reason);
  ck_assert_msg(rc == want_rc, "rc %d (%s), want %d (%s) for %.60s", rc,
                reason ? reason : "-", want_rc, want_reason,
                authz ? authz : "(null)");
  ck_assert_ptr_nonnull(reason);
  if (want_reason != NULL)
    ck_assert_str_eq(reason, want_reason);
  ck_assert(zeroed(&id));
  ck_assert(strstr(reason, "tok-") == NULL);
  ck_assert(strstr(reason, "eyJ") == NULL);
}

static void accepted(const char *authz, kr__http_auth_kind kind,
                     kr__identity *id) {
  const char *reason = "unset";
  int rc = check(authz, kind, id, &reason);
  ck_assert_msg(rc == 0, "refused (%d, %s): %.80s", rc, reason, authz);
  ck_assert_ptr_null(reason);
}

/* -------------------------------------------------------- Authorization */

START_TEST(scheme_and_spacing) {
  static kr__identity id;
  accepted("Bearer pat:17:tok-alice", KR__AUTH_SERVICE_PROXY, &id);
  accepted("bearer pat:17:tok-alice", KR__AUTH_SERVICE_PROXY, &id);
  accepted("BEARER    pat:17:tok-alice", KR__AUTH_SERVICE_PROXY, &id);
  accepted("  BeArEr pat:17:tok-alice \t", KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_str_eq(id.user, "alice");

  const char *no = "not a Bearer credential";
  refused("Basic YWxpY2U6cHc=", KR__AUTH_SERVICE_PROXY, KR_EAUTH, no);
  refused("Bearer\tpat:17:tok-alice", KR__AUTH_SERVICE_PROXY, KR_EAUTH, no);
  refused("Bearerpat:17:tok-alice", KR__AUTH_SERVICE_PROXY, KR_EAUTH, no);
  refused("Bear", KR__AUTH_SERVICE_PROXY, KR_EAUTH, no);
  refused("Token pat:17:tok-alice", KR__AUTH_SERVICE_PROXY, KR_EAUTH, no);
  refused("pat:17:tok-alice", KR__AUTH_SERVICE_PROXY, KR_EAUTH, no);
  refused("Bearer", KR__AUTH_SERVICE_PROXY, KR_EAUTH,
          "empty Bearer credential");
  refused("Bearer    ", KR__AUTH_SERVICE_PROXY, KR_EAUTH,
          "empty Bearer credential");
  refused("", KR__AUTH_SERVICE_PROXY, KR_EAUTH, "no credentials");
  refused(NULL, KR__AUTH_K8S_PROXY, KR_EAUTH, "no credentials");
  refused("   ", KR__AUTH_SERVICE_PROXY, KR_EAUTH, "not a Bearer credential");
  /* Length is what counts, not a terminator. */
  const char *reason;
  ck_assert_int_eq(kr__http_auth_check(&cfg, "Bearer pat:17:tok-alice", 20,
                                       KR__AUTH_SERVICE_PROXY, NOW, &id,
                                       &reason),
                   KR_EAUTH);
  ck_assert_str_eq(reason, "unknown token");
}
END_TEST

START_TEST(arguments) {
  static kr__identity id;
  const char *reason;
  const char *a = "Bearer pat:17:tok-alice";
  ck_assert_int_eq(kr__http_auth_check(NULL, a, strlen(a),
                                       KR__AUTH_SERVICE_PROXY, NOW, &id,
                                       &reason),
                   KR_EINVAL);
  ck_assert_str_eq(reason, "invalid argument");
  ck_assert_int_eq(kr__http_auth_check(&cfg, a, strlen(a),
                                       KR__AUTH_SERVICE_PROXY, NOW, NULL,
                                       &reason),
                   KR_EINVAL);
  ck_assert_int_eq(kr__http_auth_check(&cfg, a, strlen(a),
                                       (kr__http_auth_kind)7, NOW, &id,
                                       &reason),
                   KR_EINVAL);
  /* reason may be NULL. */
  ck_assert_int_eq(kr__http_auth_check(&cfg, a, strlen(a),
                                       KR__AUTH_SERVICE_PROXY, NOW, &id, NULL),
                   0);
  ck_assert_int_eq(
      kr__http_auth_check(&cfg, "x", 1, KR__AUTH_SERVICE_PROXY, NOW, &id, NULL),
      KR_EAUTH);

  ck_assert(!kr__identity_allows(NULL, 1));
  memset(&id, 0, sizeof id);
  ck_assert(!kr__identity_allows(&id, 1));
  id.any_agent = 1;
  ck_assert(kr__identity_allows(&id, 1));
  ck_assert(!kr__identity_allows(&id, 0));
  ck_assert(!kr__identity_allows(&id, -1));
  id.any_agent = 0;
  id.agents[0] = 3;
  id.agents[1] = 4;
  id.n_agents = 2;
  ck_assert(kr__identity_allows(&id, 4));
  ck_assert(!kr__identity_allows(&id, 5));
}
END_TEST

/* ------------------------------------------------------------------ JWT */

START_TEST(jwt_service_proxy) {
  static kr__identity id;
  char *a = bearer_jwt("");
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_int_eq(id.any_agent, 1);
  ck_assert_uint_eq(id.n_agents, 0);
  ck_assert_int_eq(id.agent_id, 0);
  ck_assert_str_eq(id.user, "");
  ck_assert_uint_eq(id.n_groups, 0);
  ck_assert(kr__identity_allows(&id, 99));
  /* The K8s proxy needs agent_id and user. */
  refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH,
          "token lacks agent_id or user claim");
  free(a);

  a = bearer_jwt(",\"agents\":[7,9223372036854775807],\"user\":\"bob\","
                 "\"groups\":[\"a b\",\"system:masters\"],\"sub\":\"x\"");
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_int_eq(id.any_agent, 0);
  ck_assert_uint_eq(id.n_agents, 2);
  ck_assert(kr__identity_allows(&id, 7));
  ck_assert(kr__identity_allows(&id, INT64_MAX));
  ck_assert(!kr__identity_allows(&id, 8));
  ck_assert_str_eq(id.user, "bob");
  ck_assert_uint_eq(id.n_groups, 2);
  ck_assert_str_eq(id.groups[0], "a b");
  ck_assert_str_eq(id.groups[1], "system:masters");
  refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH,
          "token lacks agent_id or user claim");
  free(a);

  /* An empty agents array allows nothing. */
  a = bearer_jwt(",\"agents\":[]");
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_int_eq(id.any_agent, 0);
  ck_assert(!kr__identity_allows(&id, 1));
  free(a);
}
END_TEST

START_TEST(jwt_k8s_proxy) {
  static kr__identity id;
  char *a = bearer_jwt(",\"agent_id\":17,\"user\":\"alice\","
                       "\"groups\":[\"dev\"]");
  accepted(a, KR__AUTH_K8S_PROXY, &id);
  ck_assert_int_eq(id.agent_id, 17);
  ck_assert_int_eq(id.any_agent, 1);
  ck_assert_str_eq(id.user, "alice");
  ck_assert_uint_eq(id.n_groups, 1);
  ck_assert_str_eq(id.groups[0], "dev");
  free(a);

  a = bearer_jwt(",\"agent_id\":17,\"agents\":[17],\"user\":\"alice\"");
  accepted(a, KR__AUTH_K8S_PROXY, &id);
  ck_assert_int_eq(id.agent_id, 17);
  ck_assert_uint_eq(id.n_groups, 0);
  free(a);

  a = bearer_jwt(",\"agent_id\":17,\"agents\":[18],\"user\":\"alice\"");
  refused(a, KR__AUTH_K8S_PROXY, KR_EPERM, "agent not allowed for this token");
  /* The service proxy leaves the path's agent to the caller. */
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  ck_assert(!kr__identity_allows(&id, 17));
  free(a);

  a = bearer_jwt(",\"agent_id\":17");
  refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH,
          "token lacks agent_id or user claim");
  free(a);
  a = bearer_jwt(",\"user\":\"alice\",\"groups\":[\"g\"]");
  refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH,
          "token lacks agent_id or user claim");
  free(a);
}
END_TEST

/* Claims of the wrong type or over a limit: "malformed claims", whatever
 * the kind. */
START_TEST(jwt_malformed_claims) {
  static const char *const bad[] = {
      ",\"agents\":7",
      ",\"agents\":\"7\"",
      ",\"agents\":{}",
      ",\"agents\":null",
      ",\"agents\":[\"7\"]",
      ",\"agents\":[0]",
      ",\"agents\":[-3]",
      ",\"agents\":[1.0]",
      ",\"agents\":[1,[2]]",
      ",\"agents\":[true]",
      ",\"agent_id\":\"17\"",
      ",\"agent_id\":0",
      ",\"agent_id\":-17",
      ",\"agent_id\":17.5",
      ",\"agent_id\":null",
      ",\"user\":7",
      ",\"user\":[\"alice\"]",
      ",\"user\":null",
      ",\"user\":\"\"",
      ",\"user\":\" alice\"",
      ",\"user\":\"alice \"",
      ",\"user\":\"ali\\nce\"",
      ",\"user\":\"ali\\u007fce\"",
      ",\"user\":\"al\\u00e9\"",
      ",\"groups\":\"dev\"",
      ",\"groups\":[\"dev\",7]",
      ",\"groups\":[\"\"]",
      ",\"groups\":[\"dev\\r\"]",
      ",\"groups\":{\"dev\":1}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char extra[256];
    /* The K8s proxy sees the malformed claim before missing ones. */
    snprintf(extra, sizeof extra, "%s", bad[i]);
    char *a = bearer_jwt(extra);
    refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "malformed claims");
    refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH, "malformed claims");
    free(a);
  }
}
END_TEST

START_TEST(jwt_limits) {
  static kr__identity id;
  static char extra[14000];
  /* 64 agents accepted, 65 refused. */
  int w = snprintf(extra, sizeof extra, ",\"agents\":[");
  for (int i = 1; i <= 64; i++)
    w += snprintf(extra + w, sizeof extra - (size_t)w, "%s%d", i > 1 ? "," : "",
                  i);
  snprintf(extra + w, sizeof extra - (size_t)w, "]");
  char *a = bearer_jwt(extra);
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_uint_eq(id.n_agents, 64);
  ck_assert(kr__identity_allows(&id, 64));
  free(a);
  snprintf(extra + w, sizeof extra - (size_t)w, ",65]");
  a = bearer_jwt(extra);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "malformed claims");
  free(a);

  /* Names of 255 bytes accepted, 256 refused; 32 groups, not 33. */
  char n255[256], n256[257];
  memset(n255, 'u', 255);
  n255[255] = '\0';
  memset(n256, 'u', 256);
  n256[256] = '\0';
  snprintf(extra, sizeof extra, ",\"user\":\"%s\",\"agent_id\":1", n255);
  a = bearer_jwt(extra);
  accepted(a, KR__AUTH_K8S_PROXY, &id);
  ck_assert_uint_eq(strlen(id.user), 255);
  free(a);
  snprintf(extra, sizeof extra, ",\"user\":\"%s\"", n256);
  a = bearer_jwt(extra);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "malformed claims");
  free(a);
  snprintf(extra, sizeof extra, ",\"groups\":[\"%s\"]", n256);
  a = bearer_jwt(extra);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "malformed claims");
  free(a);

  /* 32 groups accepted, 33 refused (short names: 32 of 255 bytes would
   * exceed the JWT size limit first). */
  w = snprintf(extra, sizeof extra, ",\"groups\":[");
  for (int i = 0; i < 32; i++)
    w += snprintf(extra + w, sizeof extra - (size_t)w, "%s\"group-%02d\"",
                  i ? "," : "", i);
  snprintf(extra + w, sizeof extra - (size_t)w, "]");
  a = bearer_jwt(extra);
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_uint_eq(id.n_groups, 32);
  ck_assert_str_eq(id.groups[31], "group-31");
  free(a);
  snprintf(extra + w, sizeof extra - (size_t)w, ",\"x\"]");
  a = bearer_jwt(extra);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "malformed claims");
  free(a);

  /* A token over the JWT limit. */
  static char big[KR__JWT_MAX_TOKEN + 100];
  memcpy(big, "Bearer ", 7);
  memset(big + 7, 'A', KR__JWT_MAX_TOKEN + 1);
  big[7 + KR__JWT_MAX_TOKEN + 1] = '\0';
  refused(big, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "token too long");
}
END_TEST

/* The JWT layer's own refusals pass through with its reasons. */
START_TEST(jwt_refused) {
  char claims[256], *tok, a[2048];

  /* Expired (30 s leeway: 29 s late still passes, 30 s does not). */
  snprintf(claims, sizeof claims, "{\"aud\":\"gitlab-kas\",\"exp\":%lld}",
           (long long)(NOW - 29));
  tok = sign(claims);
  snprintf(a, sizeof a, "Bearer %s", tok);
  static kr__identity id;
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  kr__free(kr_mem_default(), tok);
  snprintf(claims, sizeof claims, "{\"aud\":\"gitlab-kas\",\"exp\":%lld}",
           (long long)(NOW - 30));
  tok = sign(claims);
  snprintf(a, sizeof a, "Bearer %s", tok);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "token expired");
  kr__free(kr_mem_default(), tok);

  /* Wrong and missing audience. */
  snprintf(claims, sizeof claims, "{\"aud\":\"gitlab-kass\",\"exp\":%lld}",
           (long long)(NOW + 60));
  tok = sign(claims);
  snprintf(a, sizeof a, "Bearer %s", tok);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "aud does not match");
  kr__free(kr_mem_default(), tok);
  snprintf(claims, sizeof claims, "{\"exp\":%lld}", (long long)(NOW + 60));
  tok = sign(claims);
  snprintf(a, sizeof a, "Bearer %s", tok);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "aud missing");
  kr__free(kr_mem_default(), tok);

  /* No exp. */
  tok = sign("{\"aud\":\"gitlab-kas\"}");
  snprintf(a, sizeof a, "Bearer %s", tok);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "exp missing");
  kr__free(kr_mem_default(), tok);

  /* alg none: header {"alg":"none","typ":"JWT"}, valid claims, empty
   * signature. */
  char h64[128], p64[256];
  static const char hdr[] = "{\"alg\":\"none\",\"typ\":\"JWT\"}";
  snprintf(claims, sizeof claims,
           "{\"aud\":\"gitlab-kas\",\"exp\":%lld,\"agent_id\":1,"
           "\"user\":\"admin\"}",
           (long long)(NOW + 60));
  ck_assert_int_eq(kr__b64url_encode(hdr, strlen(hdr), h64, sizeof h64, NULL),
                   0);
  ck_assert_int_eq(
      kr__b64url_encode(claims, strlen(claims), p64, sizeof p64, NULL), 0);
  snprintf(a, sizeof a, "Bearer %s.%s.", h64, p64);
  refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH, NULL);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, NULL);

  /* Signed with another secret. */
  static const uint8_t other[] = "another-secret-another-secret-xx!";
  ck_assert_int_eq(
      kr__jwt_sign_hs256(NULL, other, sizeof other - 1, claims, &tok), 0);
  snprintf(a, sizeof a, "Bearer %s", tok);
  refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH, NULL);
  kr__free(kr_mem_default(), tok);
  /* A tampered payload. */
  ck_assert_int_eq(kr__jwt_sign_hs256(NULL, secret, SECRET_LEN, claims, &tok),
                   0);
  snprintf(a, sizeof a, "Bearer %s", tok);
  accepted(a, KR__AUTH_K8S_PROXY, &id);
  char *dot = strchr(a, '.');
  dot[3] ^= 1;
  refused(a, KR__AUTH_K8S_PROXY, KR_EAUTH, NULL);
  kr__free(kr_mem_default(), tok);

  /* Garbage. */
  refused("Bearer eyJ", KR__AUTH_SERVICE_PROXY, KR_EAUTH, NULL);
  refused("Bearer a.b.c", KR__AUTH_SERVICE_PROXY, KR_EAUTH, NULL);
}
END_TEST

START_TEST(jwt_disabled_or_bad_secret) {
  char *a = bearer_jwt(",\"agent_id\":1,\"user\":\"u\"");
  kr__http_auth_cfg c = cfg;
  c.api_secret = NULL;
  static kr__identity id;
  const char *reason;
  ck_assert_int_eq(kr__http_auth_check(&c, a, strlen(a), KR__AUTH_K8S_PROXY,
                                       NOW, &id, &reason),
                   KR_EAUTH);
  ck_assert_str_eq(reason, "JWTs are not accepted");
  c.api_secret = secret;
  c.api_secret_len = 8;
  ck_assert_int_eq(kr__http_auth_check(&c, a, strlen(a), KR__AUTH_K8S_PROXY,
                                       NOW, &id, &reason),
                   KR_EINVAL);
  ck_assert_str_eq(reason, "API secret unusable");
  ck_assert(zeroed(&id));
  /* pat: still works without an API secret. */
  c.api_secret = NULL;
  const char *p = "Bearer pat:18:tok-alice";
  ck_assert_int_eq(kr__http_auth_check(&c, p, strlen(p), KR__AUTH_K8S_PROXY,
                                       NOW, &id, &reason),
                   0);
  free(a);
}
END_TEST

/* ------------------------------------------------------------------ pat */

START_TEST(pat_accepted) {
  static kr__identity id;
  accepted("Bearer pat:18:tok-alice", KR__AUTH_K8S_PROXY, &id);
  ck_assert_int_eq(id.any_agent, 0);
  ck_assert_uint_eq(id.n_agents, 1);
  ck_assert_int_eq(id.agents[0], 18);
  ck_assert_int_eq(id.agent_id, 18);
  ck_assert(kr__identity_allows(&id, 18));
  ck_assert(!kr__identity_allows(&id, 17)); /* only the one named */
  ck_assert_str_eq(id.user, "alice");
  ck_assert_uint_eq(id.n_groups, 2);
  ck_assert_str_eq(id.groups[0], "dev");
  ck_assert_str_eq(id.groups[1], "ops");

  /* A "*" token reaches any agent, one at a time. */
  accepted("Bearer pat:123456789:tok-any", KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_int_eq(id.any_agent, 0);
  ck_assert_int_eq(id.agent_id, 123456789);
  ck_assert(kr__identity_allows(&id, 123456789));
  ck_assert(!kr__identity_allows(&id, 1));
  ck_assert_str_eq(id.user, "ci-bot");
  ck_assert_uint_eq(id.n_groups, 0);
  accepted("Bearer pat:9223372036854775807:tok-any", KR__AUTH_K8S_PROXY, &id);
  ck_assert_int_eq(id.agent_id, INT64_MAX);

  /* Colons after the second one belong to the token. */
  accepted("Bearer pat:5:a:b:c", KR__AUTH_K8S_PROXY, &id);
  ck_assert_str_eq(id.user, "colon");
  ck_assert_int_eq(id.agent_id, 5);

  /* A 4096-byte token is looked up; one byte more is refused unread. */
  static char a[KR__HTTP_AUTH_MAX_PAT + 64];
  snprintf(a, sizeof a, "Bearer pat:9:%.*s", KR__HTTP_AUTH_MAX_PAT, long_tok);
  accepted(a, KR__AUTH_SERVICE_PROXY, &id);
  ck_assert_str_eq(id.user, "long");
  snprintf(a, sizeof a, "Bearer pat:9:%s", long_tok);
  refused(a, KR__AUTH_SERVICE_PROXY, KR_EAUTH, "token too long");
}
END_TEST

START_TEST(pat_refused) {
  const char *bad = "malformed pat: credential (pat:<agent_id>:<token>)";
  static const char *const forms[] = {
      "Bearer pat:",
      "Bearer pat:17",
      "Bearer pat:17:",
      "Bearer pat::tok-alice",
      "Bearer pat:0:tok-alice",
      "Bearer pat:017:tok-alice",
      "Bearer pat:-17:tok-alice",
      "Bearer pat:+17:tok-alice",
      "Bearer pat:1x:tok-alice",
      "Bearer pat:abc:tok-alice",
      "Bearer pat: 17:tok-alice",
      "Bearer pat:9223372036854775808:tok-any",
      "Bearer pat:99999999999999999999999:tok-any",
  };
  for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
    refused(forms[i], KR__AUTH_SERVICE_PROXY, KR_EAUTH, bad);
    refused(forms[i], KR__AUTH_K8S_PROXY, KR_EAUTH, bad);
  }
  refused("Bearer pat:17:tok-bob", KR__AUTH_SERVICE_PROXY, KR_EAUTH,
          "unknown token");
  refused("Bearer pat:17:tok-alice:", KR__AUTH_SERVICE_PROXY, KR_EAUTH,
          "unknown token");
  refused("Bearer pat:17:TOK-ALICE", KR__AUTH_SERVICE_PROXY, KR_EAUTH,
          "unknown token");
  refused("Bearer pat:5:a:b", KR__AUTH_SERVICE_PROXY, KR_EAUTH,
          "unknown token");
  /* A known token for an agent outside its list: 403, not 401. */
  refused("Bearer pat:19:tok-alice", KR__AUTH_SERVICE_PROXY, KR_EPERM,
          "agent not allowed for this token");
  refused("Bearer pat:19:tok-alice", KR__AUTH_K8S_PROXY, KR_EPERM,
          "agent not allowed for this token");
  refused("Bearer pat:6:a:b:c", KR__AUTH_K8S_PROXY, KR_EPERM,
          "agent not allowed for this token");
  /* An unknown token is refused as unknown even for a listed agent's id:
   * nothing about agent lists is learnt without a valid token. */
  refused("Bearer pat:19:tok-nobody", KR__AUTH_SERVICE_PROXY, KR_EAUTH,
          "unknown token");
  /* "PAT:" is not the prefix: it is treated (and refused) as a JWT. */
  refused("Bearer PAT:17:tok-alice", KR__AUTH_SERVICE_PROXY, KR_EAUTH, NULL);

  /* No user-token table configured. */
  kr__http_auth_cfg c = cfg;
  c.user_tokens = NULL;
  static kr__identity id;
  const char *reason;
  const char *a = "Bearer pat:17:tok-alice";
  ck_assert_int_eq(kr__http_auth_check(&c, a, strlen(a), KR__AUTH_SERVICE_PROXY,
                                       NOW, &id, &reason),
                   KR_EAUTH);
  ck_assert_str_eq(reason, "user tokens are not accepted");
}
END_TEST

int main(void) {
  Suite *s = suite_create("http_auth");
  const struct {
    const char *name;
    const TTest *t;
  } tests[] = {
      {"scheme_and_spacing", scheme_and_spacing},
      {"arguments", arguments},
      {"jwt_service_proxy", jwt_service_proxy},
      {"jwt_k8s_proxy", jwt_k8s_proxy},
      {"jwt_malformed_claims", jwt_malformed_claims},
      {"jwt_limits", jwt_limits},
      {"jwt_refused", jwt_refused},
      {"jwt_disabled_or_bad_secret", jwt_disabled_or_bad_secret},
      {"pat_accepted", pat_accepted},
      {"pat_refused", pat_refused},
  };
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
    TCase *tc = tcase_create(tests[i].name);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, tests[i].t);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
  }
  return ta_run_suite(s);
}
