/* The user-token table (see user_tokens.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "file_read.h"
#include "mem_internal.h"
#include "hash_index.h"
#include "user_tokens.h"

/* Fixed-size record per entry; the variable parts live in three pools of
 * the table. Offsets are 32-bit: the text limit (16 MiB) bounds them. */
typedef struct ut_entry {
  kr__hash_key key;
  uint32_t user_off;   /* into names */
  uint32_t agents_off; /* into agents */
  uint32_t groups_off; /* into group_offs, later group_ptrs */
  uint8_t n_agents;
  uint8_t n_groups;
  uint8_t any_agent;
} ut_entry;

struct kr__user_token_table {
  kr_mem mem;
  ut_entry *entries; /* sorted by hash once built */
  size_t count, cap;
  char *names; /* NUL-terminated user and group names */
  size_t names_len, names_cap;
  int64_t *agents;
  size_t agents_len, agents_cap;
  uint32_t *group_offs; /* into names; replaced by group_ptrs when built */
  size_t groups_len, groups_cap;
  const char **group_ptrs;
  kr__hash_index index;
};

static const kr__user_token_limits default_limits = {
    KR__USER_TOKEN_FILE_MAX_BYTES, KR__USER_TOKEN_FILE_MAX_ENTRIES,
    KR__USER_TOKEN_FILE_MAX_LINE};

static int is_blank(char c) {
  return c == ' ' || c == '\t';
}

/* Characters of a user or group name in the file: printable ASCII without
 * space and ',' ('#' never reaches here: it starts a comment). */
static int is_name_char(char c) {
  return c > 0x20 && c < 0x7f && c != ',';
}

/* Strict positive decimal int64: digits only, no leading zero. Returns 0,
 * 1 (not such a number) or 2 (too large). */
static int parse_agent_id(const char *s, size_t n, int64_t *out) {
  if (n == 0 || s[0] == '0')
    return 1;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return 1;
  }
  int64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    int d = s[i] - '0';
    if (v > (INT64_MAX - d) / 10)
      return 2;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* Makes room for `more` elements of size elem in *p (capacity *cap,
 * *len in use), growing geometrically. Returns 0 or KR_ENOMEM (nothing
 * changed then). */
static int reserve(kr_mem *mem, void **p, size_t *cap, size_t len, size_t more,
                   size_t elem, size_t first) {
  if (*cap - len >= more)
    return 0;
  size_t ncap = *cap ? *cap : first;
  while (ncap - len < more) {
    if (ncap > SIZE_MAX / 2 / elem)
      return KR_ENOMEM;
    ncap *= 2;
  }
  void *np = kr__realloc(mem, *p, ncap * elem);
  if (np == NULL)
    return KR_ENOMEM;
  *p = np;
  *cap = ncap;
  return 0;
}

/* Appends name[0..n) and its NUL to the names pool; *off receives its
 * offset. Returns 0 or KR_ENOMEM. */
static int add_name(kr__user_token_table *t, const char *name, size_t n,
                    uint32_t *off) {
  if (reserve(&t->mem, (void **)&t->names, &t->names_cap, t->names_len, n + 1,
              1, 1024) != 0)
    return KR_ENOMEM;
  *off = (uint32_t)t->names_len;
  memcpy(t->names + t->names_len, name, n);
  t->names[t->names_len + n] = '\0';
  t->names_len += n + 1;
  return 0;
}

/* The fields of one line, as spans of the line. */
typedef struct span {
  const char *p;
  size_t n;
} span;

/* Parses AGENTS into ids[] (or *any). Returns 0 or KR_ECONFIG with err
 * set. */
static int parse_agents(span f, int *any, int64_t *ids, size_t *n_ids,
                        const char *fname, size_t lineno, char *err,
                        size_t errlen) {
  *any = 0;
  *n_ids = 0;
  if (f.n == 1 && f.p[0] == '*') {
    *any = 1;
    return 0;
  }
  size_t pos = 0;
  for (;;) {
    const char *s = f.p + pos;
    const char *comma = memchr(s, ',', f.n - pos);
    size_t n = comma ? (size_t)(comma - s) : f.n - pos;
    if (n == 1 && s[0] == '*') {
      kr__file_err(err, errlen, fname, lineno,
                   "\"*\" must be the only entry of the agents field");
      return KR_ECONFIG;
    }
    int64_t id = 0;
    switch (parse_agent_id(s, n, &id)) {
    case 0:
      break;
    case 2:
      kr__file_err(err, errlen, fname, lineno, "agent id is larger than %lld",
                   (long long)INT64_MAX);
      return KR_ECONFIG;
    default:
      kr__file_err(err, errlen, fname, lineno,
                   "agent id is not a positive decimal integer");
      return KR_ECONFIG;
    }
    if (*n_ids == KR__USER_TOKEN_MAX_AGENTS) {
      kr__file_err(err, errlen, fname, lineno, "more than %d agent ids",
                   KR__USER_TOKEN_MAX_AGENTS);
      return KR_ECONFIG;
    }
    for (size_t i = 0; i < *n_ids; i++) {
      if (ids[i] == id) {
        kr__file_err(err, errlen, fname, lineno, "agent id listed twice");
        return KR_ECONFIG;
      }
    }
    ids[(*n_ids)++] = id;
    if (comma == NULL)
      return 0;
    pos += n + 1;
  }
}

/* Checks a user or group name; what is "user" or "group" for messages.
 * Returns 0 or KR_ECONFIG with err set. */
static int check_name(const char *s, size_t n, const char *what,
                      const char *fname, size_t lineno, char *err,
                      size_t errlen) {
  if (n == 0) {
    kr__file_err(err, errlen, fname, lineno, "empty %s name", what);
    return KR_ECONFIG;
  }
  if (n > KR__USER_TOKEN_NAME_MAX) {
    kr__file_err(err, errlen, fname, lineno, "%s name is longer than %d bytes",
                 what, KR__USER_TOKEN_NAME_MAX);
    return KR_ECONFIG;
  }
  for (size_t i = 0; i < n; i++) {
    if (!is_name_char(s[i])) {
      kr__file_err(err, errlen, fname, lineno,
                   "%s name has a character other than printable ASCII "
                   "(no space or comma)",
                   what);
      return KR_ECONFIG;
    }
  }
  return 0;
}

/* Parses GROUPS into g[]. Returns 0 or KR_ECONFIG with err set. */
static int parse_groups(span f, span *g, size_t *n_g, const char *fname,
                        size_t lineno, char *err, size_t errlen) {
  *n_g = 0;
  size_t pos = 0;
  for (;;) {
    const char *s = f.p + pos;
    const char *comma = memchr(s, ',', f.n - pos);
    size_t n = comma ? (size_t)(comma - s) : f.n - pos;
    int rc = check_name(s, n, "group", fname, lineno, err, errlen);
    if (rc != 0)
      return rc;
    if (*n_g == KR__USER_TOKEN_MAX_GROUPS) {
      kr__file_err(err, errlen, fname, lineno, "more than %d groups",
                   KR__USER_TOKEN_MAX_GROUPS);
      return KR_ECONFIG;
    }
    for (size_t i = 0; i < *n_g; i++) {
      if (g[i].n == n && memcmp(g[i].p, s, n) == 0) {
        kr__file_err(err, errlen, fname, lineno, "group listed twice");
        return KR_ECONFIG;
      }
    }
    g[(*n_g)++] = (span){s, n};
    if (comma == NULL)
      return 0;
    pos += n + 1;
  }
}

/* Parses one line (without '\n'). Returns 0 (entry added or nothing to
 * add), or an error with err set. On error the table may hold partial
 * pool data; the caller frees the whole table. */
static int parse_line(kr__user_token_table *t, const char *line, size_t len,
                      const char *fname, size_t lineno,
                      const kr__user_token_limits *lim, char *err,
                      size_t errlen) {
  if (len > lim->max_line) {
    kr__file_err(err, errlen, fname, lineno, "line is longer than %zu bytes",
                 lim->max_line);
    return KR_ETOOBIG;
  }
  if (memchr(line, '\0', len) != NULL) {
    kr__file_err(err, errlen, fname, lineno, "line contains a NUL byte");
    return KR_ECONFIG;
  }
  const char *hash_mark = memchr(line, '#', len);
  if (hash_mark != NULL)
    len = (size_t)(hash_mark - line);
  while (len > 0 && (is_blank(line[len - 1]) || line[len - 1] == '\r'))
    len--;

  span f[5];
  size_t nf = 0;
  for (size_t p = 0; p < len && nf < 5;) {
    while (p < len && is_blank(line[p]))
      p++;
    if (p == len)
      break;
    size_t s = p;
    while (p < len && !is_blank(line[p]))
      p++;
    f[nf++] = (span){line + s, p - s};
  }
  if (nf == 0)
    return 0;
  static const char *const missing[] = {NULL, "missing agents", "missing user"};
  if (nf < 3) {
    kr__file_err(err, errlen, fname, lineno, "%s", missing[nf]);
    return KR_ECONFIG;
  }
  if (nf > 4) {
    kr__file_err(err, errlen, fname, lineno,
                 "too many fields (hash, agents, user, groups)");
    return KR_ECONFIG;
  }

  uint8_t hash[KR__SHA256_LEN];
  if (kr__hex_decode(f[0].p, f[0].n, hash, sizeof hash) != 0) {
    kr__file_err(err, errlen, fname, lineno, "hash is not 64 hex characters");
    return KR_ECONFIG;
  }
  int any = 0;
  int64_t ids[KR__USER_TOKEN_MAX_AGENTS];
  size_t n_ids = 0;
  int rc = parse_agents(f[1], &any, ids, &n_ids, fname, lineno, err, errlen);
  if (rc != 0)
    return rc;
  rc = check_name(f[2].p, f[2].n, "user", fname, lineno, err, errlen);
  if (rc != 0)
    return rc;
  span groups[KR__USER_TOKEN_MAX_GROUPS];
  size_t n_groups = 0;
  if (nf == 4) {
    rc = parse_groups(f[3], groups, &n_groups, fname, lineno, err, errlen);
    if (rc != 0)
      return rc;
  }

  if (t->count >= lim->max_entries) {
    kr__file_err(err, errlen, fname, lineno, "more than %zu entries",
                 lim->max_entries);
    return KR_ETOOBIG;
  }
  if (reserve(&t->mem, (void **)&t->entries, &t->cap, t->count, 1,
              sizeof *t->entries, 64) != 0 ||
      reserve(&t->mem, (void **)&t->agents, &t->agents_cap, t->agents_len,
              n_ids, sizeof *t->agents, 64) != 0 ||
      reserve(&t->mem, (void **)&t->group_offs, &t->groups_cap, t->groups_len,
              n_groups, sizeof *t->group_offs, 64) != 0)
    goto nomem;
  ut_entry e;
  memset(&e, 0, sizeof e);
  memcpy(e.key.hash, hash, sizeof hash);
  e.key.line = (uint32_t)lineno;
  e.any_agent = (uint8_t)any;
  e.n_agents = (uint8_t)n_ids;
  e.n_groups = (uint8_t)n_groups;
  e.agents_off = (uint32_t)t->agents_len;
  e.groups_off = (uint32_t)t->groups_len;
  if (add_name(t, f[2].p, f[2].n, &e.user_off) != 0)
    goto nomem;
  for (size_t i = 0; i < n_groups; i++) {
    if (add_name(t, groups[i].p, groups[i].n,
                 &t->group_offs[t->groups_len + i]) != 0)
      goto nomem;
  }
  if (n_ids) /* "*" lists none, and the table may have no array yet */
    memcpy(t->agents + t->agents_len, ids, n_ids * sizeof *ids);
  t->agents_len += n_ids;
  t->groups_len += n_groups;
  t->entries[t->count++] = e;
  return 0;
nomem:
  kr__file_err(err, errlen, fname, lineno, "out of memory");
  return KR_ENOMEM;
}

/* Sorts the entries, rejects duplicate hashes (reporting the earliest
 * second occurrence), resolves group names to pointers (the pools no
 * longer move) and builds the bucket index. */
static int build_index(kr__user_token_table *t, const char *fname, char *err,
                       size_t errlen) {
  size_t dup_line, dup_first;
  int rc = kr__hash_index_build(&t->index, &t->mem, t->entries, t->count,
                                sizeof *t->entries, &dup_line, &dup_first);
  if (rc == KR_ECONFIG) {
    kr__file_err(err, errlen, fname, dup_line,
                 "hash duplicates the one on line %zu", dup_first);
    return KR_ECONFIG;
  }
  if (rc < 0)
    goto nomem;

  if (t->groups_len > 0) {
    t->group_ptrs = kr__calloc(&t->mem, t->groups_len, sizeof *t->group_ptrs);
    if (t->group_ptrs == NULL)
      goto nomem;
    for (size_t i = 0; i < t->groups_len; i++)
      t->group_ptrs[i] = t->names + t->group_offs[i];
  }
  kr__free(&t->mem, t->group_offs);
  t->group_offs = NULL;
  return 0;
nomem:
  kr__file_err(err, errlen, fname, 0, "out of memory");
  return KR_ENOMEM;
}

int kr__user_token_table_parse_limits(const kr_mem *mem, const char *text,
                                      size_t len, const char *name_for_errors,
                                      const kr__user_token_limits *limits,
                                      kr__user_token_table **out, char *err,
                                      size_t errlen) {
  const char *fname = name_for_errors ? name_for_errors : "user-tokens";
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (out != NULL)
    *out = NULL;
  if (out == NULL || (text == NULL && len > 0)) {
    kr__file_err(err, errlen, fname, 0, "invalid argument");
    return KR_EINVAL;
  }
  const kr__user_token_limits *lim = limits ? limits : &default_limits;
  if (mem == NULL)
    mem = kr_mem_default();
  /* Offsets into the pools are 32-bit; the text bounds the pools. */
  if (len > lim->max_bytes || len > UINT32_MAX / 2) {
    kr__file_err(err, errlen, fname, 0, "larger than %zu bytes",
                 lim->max_bytes);
    return KR_ETOOBIG;
  }

  kr__user_token_table *t = kr__calloc(mem, 1, sizeof *t);
  if (t == NULL) {
    kr__file_err(err, errlen, fname, 0, "out of memory");
    return KR_ENOMEM;
  }
  t->mem = *mem;

  int rc = 0;
  size_t lineno = 0;
  for (size_t pos = 0; pos < len && rc == 0;) {
    lineno++;
    const char *line = text + pos;
    const char *nl = memchr(line, '\n', len - pos);
    size_t n = nl ? (size_t)(nl - line) : len - pos;
    rc = parse_line(t, line, n, fname, lineno, lim, err, errlen);
    pos += n + (nl != NULL);
  }
  if (rc == 0)
    rc = build_index(t, fname, err, errlen);
  if (rc != 0) {
    kr__user_token_table_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

int kr__user_token_table_parse(const kr_mem *mem, const char *text, size_t len,
                               const char *name_for_errors,
                               kr__user_token_table **out, char *err,
                               size_t errlen) {
  return kr__user_token_table_parse_limits(mem, text, len, name_for_errors,
                                           NULL, out, err, errlen);
}

/* Reads the whole file into memory from mem (kr__file_read: bounded by the
 * byte limit), then parses it. The file buffer is always released before
 * returning. */
int kr__user_token_table_load(const kr_mem *mem, const char *path,
                              kr__user_token_table **out, char *err,
                              size_t errlen) {
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (out != NULL)
    *out = NULL;
  if (out == NULL || path == NULL) {
    kr__file_err(err, errlen, path ? path : "(null)", 0, "invalid argument");
    return KR_EINVAL;
  }
  if (mem == NULL)
    mem = kr_mem_default();
  char *buf = NULL;
  size_t len = 0;
  int rc = kr__file_read(mem, path, KR__USER_TOKEN_FILE_MAX_BYTES, &buf, &len,
                         err, errlen);
  if (rc != 0)
    return rc;
  rc = kr__user_token_table_parse(mem, buf, len, path, out, err, errlen);
  /* The text holds no secrets (only hashes), but names are personal data:
   * do not leave them in freed memory. */
  memset(buf, 0, len);
  kr__free(mem, buf);
  return rc;
}

static void fill_entry(const kr__user_token_table *t, const ut_entry *e,
                       kr__user_token_entry *out) {
  out->any_agent = e->any_agent;
  out->agents = e->n_agents ? t->agents + e->agents_off : NULL;
  out->n_agents = e->n_agents;
  out->user = t->names + e->user_off;
  out->groups = e->n_groups ? t->group_ptrs + e->groups_off : NULL;
  out->n_groups = e->n_groups;
  out->line = e->key.line;
}

int kr__user_token_lookup_hash(const kr__user_token_table *t,
                               const uint8_t hash[KR__SHA256_LEN],
                               kr__user_token_entry *entry) {
  if (entry != NULL)
    memset(entry, 0, sizeof *entry);
  if (t == NULL || hash == NULL)
    return KR_EINVAL;
  if (t->count == 0)
    return KR_ENOENT;
  int64_t idx = kr__hash_index_find(&t->index, t->entries, t->count,
                                    sizeof *t->entries, hash);
  if (idx < 0)
    return KR_ENOENT;
  if (entry != NULL)
    fill_entry(t, &t->entries[idx], entry);
  return 0;
}

int kr__user_token_lookup(const kr__user_token_table *t, const char *token,
                          size_t len, kr__user_token_entry *entry) {
  if (entry != NULL)
    memset(entry, 0, sizeof *entry);
  if (t == NULL || (token == NULL && len > 0))
    return KR_EINVAL;
  if (len == 0)
    return KR_ENOENT;
  uint8_t hash[KR__SHA256_LEN];
  if (kr__sha256(token, len, hash) != 0)
    return KR_ENOENT;
  return kr__user_token_lookup_hash(t, hash, entry);
}

int kr__user_token_entry_allows(const kr__user_token_entry *entry,
                                int64_t agent) {
  if (entry == NULL || agent <= 0)
    return 0;
  if (entry->any_agent)
    return 1;
  for (size_t i = 0; i < entry->n_agents; i++) {
    if (entry->agents[i] == agent)
      return 1;
  }
  return 0;
}

size_t kr__user_token_table_count(const kr__user_token_table *t) {
  return t ? t->count : 0;
}

int kr__user_token_table_get(const kr__user_token_table *t, size_t i,
                             uint8_t hash[KR__SHA256_LEN],
                             kr__user_token_entry *entry) {
  if (t == NULL || i >= t->count)
    return KR_EINVAL;
  const ut_entry *e = &t->entries[i];
  if (entry != NULL)
    memset(entry, 0, sizeof *entry);
  if (hash != NULL)
    memcpy(hash, e->key.hash, KR__SHA256_LEN);
  if (entry != NULL)
    fill_entry(t, e, entry);
  return 0;
}

void kr__user_token_table_free(kr__user_token_table *t) {
  if (t == NULL)
    return;
  kr_mem mem = t->mem;
  kr__free(&mem, t->entries);
  kr__free(&mem, t->names);
  kr__free(&mem, t->agents);
  kr__free(&mem, t->group_offs);
  kr__free(&mem, (void *)t->group_ptrs);
  kr__hash_index_free(&t->index, &mem);
  kr__free(&mem, t);
}
