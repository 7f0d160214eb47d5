/* libFuzzer target for the user-token file parser
 * (lib/core/user_tokens.c) and the gateway's pat: credential path
 * (lib/kas/http_auth.c).
 *
 * Input layout: byte 0 is a configuration byte, the rest is the file text.
 * Bit 0 of byte 0 selects small limits (4 KiB, 8 entries, 300-byte lines)
 * so the limit paths are reached quickly; otherwise the defaults apply.
 *
 * Checks (a violation traps):
 *   - the return code is one of the documented ones and *out is set only
 *     on success;
 *   - an error message starts with the name and is printable ASCII;
 *   - a table's entries are consistent: hashes strictly increasing (no
 *     duplicates); "*" entries list no agents, others 1..64 distinct
 *     positive ids; user and group names of 1..255 bytes of printable
 *     ASCII without space, ',' or '#'; at most 32 distinct groups; every
 *     entry found again by its hash with the same contents, and allowing
 *     exactly its agents;
 *   - looking up the raw input as a token returns 0 or KR_ENOENT, and so
 *     does a pat: credential built from it; the identity an accepted
 *     credential yields names exactly the credential's agent.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/user_tokens.h"
#include "kas/http_auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

static void check_name(const char *s) {
  size_t n = strlen(s);
  CHECK(n >= 1 && n <= KR__USER_TOKEN_NAME_MAX);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    CHECK(c > 0x20 && c < 0x7f && c != ',' && c != '#');
  }
}

static void check_entry(const kr__user_token_entry *e, size_t len) {
  CHECK(e->line >= 1 && e->line <= len);
  if (e->any_agent) {
    CHECK(e->n_agents == 0);
    CHECK(kr__user_token_entry_allows(e, 1));
    CHECK(kr__user_token_entry_allows(e, INT64_MAX));
  } else {
    CHECK(e->n_agents >= 1 && e->n_agents <= KR__USER_TOKEN_MAX_AGENTS);
    for (size_t i = 0; i < e->n_agents; i++) {
      CHECK(e->agents[i] > 0);
      CHECK(kr__user_token_entry_allows(e, e->agents[i]));
      for (size_t j = 0; j < i; j++)
        CHECK(e->agents[j] != e->agents[i]);
    }
  }
  CHECK(!kr__user_token_entry_allows(e, 0));
  check_name(e->user);
  CHECK(e->n_groups <= KR__USER_TOKEN_MAX_GROUPS);
  CHECK((e->n_groups == 0) == (e->groups == NULL));
  for (size_t i = 0; i < e->n_groups; i++) {
    check_name(e->groups[i]);
    for (size_t j = 0; j < i; j++)
      CHECK(strcmp(e->groups[j], e->groups[i]) != 0);
  }
}

/* Presents "Bearer pat:<agent>:<input>" to the gateway check. */
static void check_pat(const kr__user_token_table *t, const char *tok,
                      size_t len) {
  if (len > KR__HTTP_AUTH_MAX_PAT + 1)
    len = KR__HTTP_AUTH_MAX_PAT + 1;
  static char authz[KR__HTTP_AUTH_MAX_PAT + 64];
  int64_t agent = len > 0 ? (int64_t)(unsigned char)tok[0] % 4 + 1 : 1;
  int n = snprintf(authz, sizeof authz, "Bearer pat:%lld:", (long long)agent);
  memcpy(authz + n, tok, len);
  kr__http_auth_cfg cfg = {NULL, 0, t};
  static kr__identity id;
  const char *reason = NULL;
  int rc = kr__http_auth_check(&cfg, authz, (size_t)n + len, KR__AUTH_K8S_PROXY,
                               0, &id, &reason);
  CHECK(reason != NULL || rc == 0);
  CHECK(rc == 0 || rc == KR_EAUTH || rc == KR_EPERM);
  if (rc == 0) {
    CHECK(id.agent_id == agent && !id.any_agent && id.n_agents == 1);
    CHECK(kr__identity_allows(&id, agent));
    CHECK(!kr__identity_allows(&id, agent + 1));
    check_name(id.user);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  static const kr__user_token_limits small = {4096, 8, 300};
  const kr__user_token_limits *lim = (data[0] & 1u) ? &small : NULL;

  kr__user_token_table *t = (kr__user_token_table *)1;
  char err[128];
  memset(err, 'X', sizeof err);
  int rc = kr__user_token_table_parse_limits(NULL, text, len, "fuzz", lim, &t,
                                             err, sizeof err);
  if (rc != 0) {
    CHECK(rc == KR_ECONFIG || rc == KR_ETOOBIG || rc == KR_ENOMEM);
    CHECK(t == NULL);
    CHECK(strncmp(err, "fuzz:", 5) == 0);
    for (const char *p = err; *p; p++)
      CHECK(*p >= 0x20 && *p < 0x7f);
    return 0;
  }
  CHECK(t != NULL);
  CHECK(err[0] == '\0');
  size_t count = kr__user_token_table_count(t);
  CHECK(count <=
        (lim ? lim->max_entries : (size_t)KR__USER_TOKEN_FILE_MAX_ENTRIES));
  CHECK(count <= len / 68 + 1); /* an entry takes at least 68 bytes */
  uint8_t prev[KR__SHA256_LEN];
  for (size_t i = 0; i < count; i++) {
    uint8_t h[KR__SHA256_LEN];
    kr__user_token_entry e, e2;
    CHECK(kr__user_token_table_get(t, i, h, &e) == 0);
    check_entry(&e, len);
    CHECK(i == 0 || memcmp(prev, h, sizeof h) < 0);
    memcpy(prev, h, sizeof h);
    CHECK(kr__user_token_lookup_hash(t, h, &e2) == 0);
    CHECK(e.any_agent == e2.any_agent && e.agents == e2.agents &&
          e.n_agents == e2.n_agents && e.user == e2.user &&
          e.groups == e2.groups && e.n_groups == e2.n_groups &&
          e.line == e2.line);
  }
  CHECK(kr__user_token_table_get(t, count, NULL, NULL) == KR_EINVAL);
  rc = kr__user_token_lookup(t, text, len, NULL);
  CHECK(rc == 0 || rc == KR_ENOENT);
  check_pat(t, text, len);
  kr__user_token_table_free(t);
  return 0;
}
