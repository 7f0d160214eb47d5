/* The agent token table (see token_file.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "file_read.h"
#include "hash_index.h"
#include "mem_internal.h"
#include "token_file.h"

typedef struct token_entry {
  kr__hash_key key;  /* line: the text limit keeps it within 32 bits */
  int64_t agent_id;
  uint32_t name_off; /* into names; NUL-terminated there */
} token_entry;

struct kr__token_table {
  kr_mem mem;
  token_entry *entries; /* sorted by hash */
  size_t count;
  size_t cap;
  char *names;
  size_t names_len;
  size_t names_cap;
  kr__hash_index index;
};

static const kr__token_limits default_limits = {KR__TOKEN_FILE_MAX_BYTES,
                                                KR__TOKEN_FILE_MAX_ENTRIES,
                                                KR__TOKEN_FILE_MAX_LINE};

static int is_blank(char c) {
  return c == ' ' || c == '\t';
}

/* Strict positive decimal int64: digits only, no leading zero. Returns 0,
 * 1 (not such a number) or 2 (too large). */
static int parse_agent_id(const char *s, size_t n, int64_t *out) {
  if (n == 0 || s[0] == '0')
    return 1;
  int64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return 1;
  }
  for (size_t i = 0; i < n; i++) {
    int d = s[i] - '0';
    if (v > (INT64_MAX - d) / 10)
      return 2;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

/* Appends an entry, growing the arrays geometrically. Returns 0 or
 * KR_ENOMEM (the table is unchanged then). */
static int add_entry(kr__token_table *t, const uint8_t *hash, int64_t id,
                     size_t line, const char *name, size_t name_len) {
  if (t->count == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    token_entry *e = kr__realloc(&t->mem, t->entries, cap * sizeof *e);
    if (e == NULL)
      return KR_ENOMEM;
    t->entries = e;
    t->cap = cap;
  }
  if (t->names_cap - t->names_len < name_len + 1) {
    size_t cap = t->names_cap ? t->names_cap : 1024;
    while (cap - t->names_len < name_len + 1)
      cap *= 2;
    char *p = kr__realloc(&t->mem, t->names, cap);
    if (p == NULL)
      return KR_ENOMEM;
    t->names = p;
    t->names_cap = cap;
  }
  token_entry *e = &t->entries[t->count++];
  memcpy(e->key.hash, hash, KR__SHA256_LEN);
  e->agent_id = id;
  e->key.line = (uint32_t)line;
  e->name_off = (uint32_t)t->names_len;
  memcpy(t->names + t->names_len, name, name_len);
  t->names[t->names_len + name_len] = '\0';
  t->names_len += name_len + 1;
  return 0;
}

/* Parses one line (without '\n'). Returns 0 (entry added or nothing to
 * add), or an error with err set. */
static int parse_line(kr__token_table *t, const char *line, size_t len,
                      const char *fname, size_t lineno,
                      const kr__token_limits *lim, char *err, size_t errlen) {
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
  size_t p = 0;
  while (p < len && is_blank(line[p]))
    p++;
  if (p == len)
    return 0;

  size_t f = p;
  while (p < len && !is_blank(line[p]))
    p++;
  int64_t id = 0;
  switch (parse_agent_id(line + f, p - f, &id)) {
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

  while (p < len && is_blank(line[p]))
    p++;
  if (p == len) {
    kr__file_err(err, errlen, fname, lineno, "missing hash");
    return KR_ECONFIG;
  }
  f = p;
  while (p < len && !is_blank(line[p]))
    p++;
  uint8_t hash[KR__SHA256_LEN];
  if (kr__hex_decode(line + f, p - f, hash, sizeof hash) != 0) {
    kr__file_err(err, errlen, fname, lineno, "hash is not 64 hex characters");
    return KR_ECONFIG;
  }

  while (p < len && is_blank(line[p]))
    p++;
  if (p == len) {
    kr__file_err(err, errlen, fname, lineno, "missing name");
    return KR_ECONFIG;
  }
  size_t name_len = len - p;
  if (name_len > KR__TOKEN_NAME_MAX) {
    kr__file_err(err, errlen, fname, lineno, "name is longer than %d bytes",
                 KR__TOKEN_NAME_MAX);
    return KR_ECONFIG;
  }
  for (size_t i = p; i < len; i++) {
    unsigned char c = (unsigned char)line[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      kr__file_err(err, errlen, fname, lineno,
                   "name contains a control character");
      return KR_ECONFIG;
    }
  }

  if (t->count >= lim->max_entries) {
    kr__file_err(err, errlen, fname, lineno, "more than %zu entries",
                 lim->max_entries);
    return KR_ETOOBIG;
  }
  if (add_entry(t, hash, id, lineno, line + p, name_len) != 0) {
    kr__file_err(err, errlen, fname, lineno, "out of memory");
    return KR_ENOMEM;
  }
  return 0;
}

/* Sorts the entries, rejects duplicate hashes (reporting the earliest
 * second occurrence) and builds the lookup index. */
static int build_index(kr__token_table *t, const char *fname, char *err,
                       size_t errlen) {
  size_t dup_line, dup_first;
  int rc = kr__hash_index_build(&t->index, &t->mem, t->entries, t->count,
                                sizeof *t->entries, &dup_line, &dup_first);
  if (rc == KR_ECONFIG)
    kr__file_err(err, errlen, fname, dup_line,
                 "hash duplicates the one on line %zu", dup_first);
  else if (rc < 0)
    kr__file_err(err, errlen, fname, 0, "out of memory");
  return rc;
}

int kr__token_table_parse_limits(const kr_mem *mem, const char *text,
                                 size_t len, const char *name_for_errors,
                                 const kr__token_limits *limits,
                                 kr__token_table **out, char *err,
                                 size_t errlen) {
  const char *fname = name_for_errors ? name_for_errors : "tokens";
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (out != NULL)
    *out = NULL;
  if (out == NULL || (text == NULL && len > 0)) {
    kr__file_err(err, errlen, fname, 0, "invalid argument");
    return KR_EINVAL;
  }
  const kr__token_limits *lim = limits ? limits : &default_limits;
  if (mem == NULL)
    mem = kr_mem_default();
  if (len > lim->max_bytes) {
    kr__file_err(err, errlen, fname, 0, "larger than %zu bytes",
                 lim->max_bytes);
    return KR_ETOOBIG;
  }

  kr__token_table *t = kr__calloc(mem, 1, sizeof *t);
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
    kr__token_table_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

int kr__token_table_parse(const kr_mem *mem, const char *text, size_t len,
                          const char *name_for_errors, kr__token_table **out,
                          char *err, size_t errlen) {
  return kr__token_table_parse_limits(mem, text, len, name_for_errors, NULL,
                                      out, err, errlen);
}

/* Reads the whole file into memory from mem (kr__file_read: bounded by the
 * byte limit), then parses it. The file buffer is always released before
 * returning. */
int kr__token_file_load(const kr_mem *mem, const char *path,
                        kr__token_table **out, char *err, size_t errlen) {
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
  int rc = kr__file_read(mem, path, KR__TOKEN_FILE_MAX_BYTES, &buf, &len, err,
                         errlen);
  if (rc != 0)
    return rc;
  rc = kr__token_table_parse(mem, buf, len, path, out, err, errlen);
  kr__free(mem, buf);
  return rc;
}

int kr__token_table_lookup_hash(const kr__token_table *t,
                                const uint8_t hash[KR__SHA256_LEN],
                                int64_t *agent_id, const char **name) {
  if (t == NULL || hash == NULL)
    return KR_EINVAL;
  if (t->count == 0)
    return KR_EAUTH;
  int64_t idx = kr__hash_index_find(&t->index, t->entries, t->count,
                                    sizeof *t->entries, hash);
  if (idx < 0)
    return KR_EAUTH;
  if (agent_id)
    *agent_id = t->entries[idx].agent_id;
  if (name)
    *name = t->names + t->entries[idx].name_off;
  return 0;
}

int kr__token_table_lookup(const kr__token_table *t, const char *token,
                           size_t len, int64_t *agent_id, const char **name) {
  if (t == NULL || (token == NULL && len > 0))
    return KR_EINVAL;
  if (len == 0)
    return KR_EAUTH;
  uint8_t hash[KR__SHA256_LEN];
  if (kr__sha256(token, len, hash) != 0)
    return KR_EAUTH;
  return kr__token_table_lookup_hash(t, hash, agent_id, name);
}

size_t kr__token_table_count(const kr__token_table *t) {
  return t ? t->count : 0;
}

int kr__token_table_get(const kr__token_table *t, size_t i, int64_t *agent_id,
                        uint8_t hash[KR__SHA256_LEN], const char **name,
                        size_t *line) {
  if (t == NULL || i >= t->count)
    return KR_EINVAL;
  const token_entry *e = &t->entries[i];
  if (agent_id)
    *agent_id = e->agent_id;
  if (hash)
    memcpy(hash, e->key.hash, KR__SHA256_LEN);
  if (name)
    *name = t->names + e->name_off;
  if (line)
    *line = e->key.line;
  return 0;
}

void kr__token_table_free(kr__token_table *t) {
  if (t == NULL)
    return;
  kr_mem mem = t->mem;
  kr__free(&mem, t->entries);
  kr__free(&mem, t->names);
  kr__hash_index_free(&t->index, &mem);
  kr__free(&mem, t);
}
