/* The request head of an HTTP handler exchange: checked and copied out of
 * the OPEN metadata (http_request.h).
 */
#include <string.h>
#include <strings.h>

#include <kasroute/error.h>

#include "http_request.h"

/* ---------------------------------------------------------- field checks */

void kr__http_lower_copy(char *out, const uint8_t *name, size_t n) {
  for (size_t i = 0; i < n; i++)
    out[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
  out[n] = 0;
}

/* ----------------------------------------------------------------- parse */

/* ":method", ":path", ":user" and the ":group"s into r->info. Same
 * returns as kr__http_request_parse(); on failure r->info may hold
 * partial copies. */
static int copy_info(kr__http_request *r, const kr_md *md, size_t n,
                     const char **why) {
  const kr_md *method = kr__md_find(md, n, KR_MD_METHOD);
  const kr_md *path = kr__md_find(md, n, KR_MD_PATH);
  *why = "an HTTP stream needs :method and :path";
  if (!method || !path)
    return KR_EPROTO;
  *why = "invalid :method";
  if (!kr__http_token_ok(method->value, method->value_len))
    return KR_EPROTO;
  *why = ":path must start with '/'";
  if (path->value_len == 0 || path->value[0] != '/')
    return KR_EPROTO;
  *why = "invalid byte in :path";
  for (size_t i = 0; i < path->value_len; i++)
    if (path->value[i] <= 0x20 || path->value[i] == 0x7f)
      return KR_EPROTO;
  int rc = kr__mdlist_add(&r->info, method->name, method->name_len,
                          method->value, method->value_len);
  if (rc == 0)
    rc = kr__mdlist_add(&r->info, path->name, path->name_len, path->value,
                        path->value_len);
  const kr_md *user = kr__md_find(md, n, KR_MD_USER);
  if (rc == 0 && user && user->value_len > 0) {
    *why = "invalid :user";
    if (!kr__http_value_ok(user->value, user->value_len))
      return KR_EPROTO;
    rc = kr__mdlist_add(&r->info, user->name, user->name_len, user->value,
                        user->value_len);
  }
  r->group0 = r->info.n;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (!kr__md_is(&md[i], KR_MD_GROUP))
      continue;
    *why = "invalid :group";
    if (md[i].value_len == 0 ||
        !kr__http_value_ok(md[i].value, md[i].value_len))
      return KR_EPROTO;
    rc = kr__mdlist_add(&r->info, md[i].name, md[i].name_len, md[i].value,
                        md[i].value_len);
  }
  if (rc < 0)
    return rc;
  r->n_groups = r->info.n - r->group0;
  /* Entries never move once added (http_map.h): the pointers stay. */
  r->method = (const char *)r->info.md[0].value;
  r->path = (const char *)r->info.md[1].value;
  if (user && user->value_len > 0)
    r->user = (const char *)r->info.md[2].value;
  r->is_head = strcmp(r->method, "HEAD") == 0;
  return 0;
}

/* The fields into r->fields: checked, lower-cased, then without the
 * hop-by-hop ones (openers other than the kas gateway are not trusted to
 * have dropped them). Same returns as kr__http_request_parse(); on
 * failure r->fields may hold partial copies. */
static int copy_fields(kr__http_request *r, const kr_md *md, size_t n,
                       const char **why) {
  kr__mdlist all;
  kr__mdlist_init(&all);
  int rc = 0, has_upgrade = 0, conn_upgrade = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    const kr_md *f = &md[i];
    if (f->name_len > 0 && f->name[0] == ':')
      continue;
    if (!kr__http_token_ok(f->name, f->name_len)) {
      *why = "invalid request field name";
      rc = KR_EPROTO;
    } else if (!kr__http_value_ok(f->value, f->value_len)) {
      *why = "invalid request field value";
      rc = KR_EPROTO;
    } else if ((rc = kr__mdlist_add(&all, f->name, f->name_len, f->value,
                                    f->value_len)) == 0) {
      /* The copy is ours: lower-case its name in place. */
      char *name = (char *)all.md[all.n - 1].name;
      kr__http_lower_copy(name, (const uint8_t *)name, f->name_len);
      if (strcmp(name, "upgrade") == 0 && f->value_len > 0)
        has_upgrade = 1;
      if (strcmp(name, "connection") == 0 &&
          kr__http_list_has(f->value, f->value_len, "upgrade", 7))
        conn_upgrade = 1;
    }
  }
  r->upgrade = has_upgrade && conn_upgrade;
  if (rc == 0) {
    kr__http_head h;
    memset(&h, 0, sizeof(h));
    h.fields = all.md;
    h.n_fields = all.n;
    h.upgrade = r->upgrade;
    rc = kr__http_copy_fields(&r->fields, &h, NULL, NULL);
  }
  kr__mdlist_free(&all);
  return rc;
}

int kr__http_request_parse(kr__http_request *out, const kr_md *md, size_t n,
                           const char **why) {
  memset(out, 0, sizeof(*out));
  kr__mdlist_init(&out->info);
  kr__mdlist_init(&out->fields);
  int rc = copy_info(out, md, n, why);
  if (rc == 0)
    rc = copy_fields(out, md, n, why);
  if (rc < 0)
    kr__http_request_free(out);
  return rc;
}

void kr__http_request_free(kr__http_request *r) {
  kr__mdlist_free(&r->info);
  kr__mdlist_free(&r->fields);
  memset(r, 0, sizeof(*r));
  kr__mdlist_init(&r->info);
  kr__mdlist_init(&r->fields);
}

/* --------------------------------------------------------------- lookups */

const char *kr__http_request_header(const kr__http_request *r,
                                    const char *name) {
  if (!name)
    return NULL;
  size_t len = strlen(name);
  for (size_t i = 0; i < r->fields.n; i++) {
    const kr_md *f = &r->fields.md[i];
    if (f->name_len == len &&
        strncasecmp((const char *)f->name, name, len) == 0)
      return (const char *)f->value;
  }
  return NULL;
}

int kr__http_request_header_at(const kr__http_request *r, size_t i,
                               const char **name, const char **value) {
  if (i >= r->fields.n)
    return KR_EINVAL;
  if (name)
    *name = (const char *)r->fields.md[i].name;
  if (value)
    *value = (const char *)r->fields.md[i].value;
  return 0;
}

const char *kr__http_request_group(const kr__http_request *r, size_t i) {
  if (i >= r->n_groups)
    return NULL;
  return (const char *)r->info.md[r->group0 + i].value;
}
