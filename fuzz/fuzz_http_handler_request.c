/* libFuzzer target for the request head of an HTTP handler exchange
 * (lib/agent/http_request.h): what h_open does with an OPEN's metadata.
 *
 * Input: an OPEN payload, i.e. one metadata block, decoded as the mux
 * decodes it (kr__md_validate, kr__md_decode in lib/core/frame.h); a
 * block the codec refuses never reaches the handler and is skipped.
 * The entries go to kr__http_request_parse(). Then, with __builtin_trap()
 * on any broken invariant:
 *   - a failure is KR_EPROTO with a reason, KR_ETOOBIG or KR_ENOMEM and
 *     leaves the request empty;
 *   - on success method, path, user and groups are the first ":method",
 *     ":path", ":user" (non-empty) and every ":group" of the input, byte
 *     for byte, and satisfy the rules of kasroute/http_handler.h;
 *   - the fields are exactly what an independent model of the rules
 *     computes from the input (lower-cased names, hop-by-hop ones gone
 *     except the upgrade pair), and every lookup (header by exact, upper-
 *     and as-sent case names, header_at for every index and one past the
 *     end, group at every index and one past) agrees with them;
 *   - every string handed out is readable and NUL-terminated with no NUL
 *     inside (ASan checks the reads).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "agent/http_request.h"
#include "core/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

/* Reads s[0..n] (so ASan sees a bad pointer) and checks that s is a C
 * string of exactly n bytes. */
static void touch(const char *s, size_t n) {
  CHECK(s != NULL);
  volatile size_t sum = 0;
  for (size_t i = 0; i <= n; i++)
    sum += (unsigned char)s[i];
  (void)sum;
  CHECK(strlen(s) == n);
}

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* a[0..n) equals the C string b ignoring ASCII case. */
static int ieq(const uint8_t *a, size_t n, const char *b) {
  if (strlen(b) != n)
    return 0;
  for (size_t i = 0; i < n; i++)
    if (lower(a[i]) != lower((unsigned char)b[i]))
      return 0;
  return 1;
}

static int tchar(uint8_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
    return 1;
  return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int same(const kr_md *m, const char *s) {
  return strlen(s) == m->value_len &&
         (m->value_len == 0 || memcmp(s, m->value, m->value_len) == 0);
}

/* An empty request: what a failed parse and kr__http_request_free leave. */
static void check_empty(const kr__http_request *r) {
  CHECK(r->info.n == 0 && r->info.md == NULL && r->info.blocks == NULL);
  CHECK(r->fields.n == 0 && r->fields.md == NULL && r->fields.blocks == NULL);
  CHECK(!r->method && !r->path && !r->user && r->n_groups == 0);
  CHECK(!r->is_head && !r->upgrade);
}

/* The model of the field rules (kasroute/http_handler.h): whether field
 * name[0..len) of the input is hop-by-hop, judged on the raw input (names
 * in any case). */
static int model_hop(const kr_md *md, size_t n, const uint8_t *name,
                     size_t len) {
  static const char *const fixed[] = {
      "connection", "keep-alive",        "proxy-connection", "te",
      "trailer",    "transfer-encoding", "upgrade"};
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    if (ieq(name, len, fixed[i]))
      return 1;
  char *lname = malloc(len + 1);
  if (lname == NULL)
    return -1; /* not modelled; the caller skips the comparison */
  for (size_t i = 0; i < len; i++)
    lname[i] = (char)lower(name[i]);
  lname[len] = 0;
  int hop = 0;
  for (size_t i = 0; i < n && !hop; i++)
    hop = ieq(md[i].name, md[i].name_len, "connection") &&
          kr__http_list_has(md[i].value, md[i].value_len, lname, len);
  free(lname);
  return hop;
}

/* Checks r->fields against the model; returns 0 when the model gave up
 * (out of memory). */
static int check_fields_model(const kr__http_request *r, const kr_md *md,
                              size_t n) {
  int has_upgrade = 0, conn_upgrade = 0;
  for (size_t i = 0; i < n; i++) {
    if (ieq(md[i].name, md[i].name_len, "upgrade") && md[i].value_len > 0)
      has_upgrade = 1;
    if (ieq(md[i].name, md[i].name_len, "connection") &&
        kr__http_list_has(md[i].value, md[i].value_len, "upgrade", 7))
      conn_upgrade = 1;
  }
  CHECK(r->upgrade == (has_upgrade && conn_upgrade));
  size_t k = 0; /* next output field */
  int conn_done = 0;
  for (size_t i = 0; i < n; i++) {
    const kr_md *f = &md[i];
    if (f->name[0] == ':')
      continue;
    const uint8_t *value = f->value;
    size_t value_len = f->value_len;
    if (r->upgrade && ieq(f->name, f->name_len, "connection")) {
      if (conn_done)
        continue;
      conn_done = 1;
      value = (const uint8_t *)"upgrade";
      value_len = 7;
    } else if (!(r->upgrade && ieq(f->name, f->name_len, "upgrade"))) {
      int hop = model_hop(md, n, f->name, f->name_len);
      if (hop < 0)
        return 0;
      if (hop)
        continue;
    }
    CHECK(k < r->fields.n);
    const kr_md *o = &r->fields.md[k++];
    CHECK(o->name_len == f->name_len);
    for (size_t j = 0; j < f->name_len; j++)
      CHECK(o->name[j] == lower(f->name[j]));
    CHECK(o->value_len == value_len);
    CHECK(value_len == 0 || memcmp(o->value, value, value_len) == 0);
  }
  CHECK(k == r->fields.n);
  return 1;
}

/* kr__http_request_header(name) must give the first field whose name
 * equals name ignoring case. */
static void check_lookup(const kr__http_request *r, const char *name) {
  const char *want = NULL;
  for (size_t i = 0; i < r->fields.n && !want; i++)
    if (ieq(r->fields.md[i].name, r->fields.md[i].name_len, name))
      want = (const char *)r->fields.md[i].value;
  CHECK(kr__http_request_header(r, name) == want);
}

static void check_lookup_bytes(const kr__http_request *r, const uint8_t *p,
                               size_t n, int upper) {
  char name[300];
  if (n >= sizeof name)
    return;
  for (size_t i = 0; i < n; i++)
    name[i] = (char)(upper && p[i] >= 'a' && p[i] <= 'z' ? p[i] - 32 : p[i]);
  name[n] = 0;
  if (strlen(name) == n)
    check_lookup(r, name);
}

static void check_request(const kr__http_request *r, const kr_md *md,
                          size_t n) {
  /* Method, path, user, groups: the input's, checked. */
  const kr_md *m = kr__md_find(md, n, KR_MD_METHOD);
  const kr_md *p = kr__md_find(md, n, KR_MD_PATH);
  const kr_md *u = kr__md_find(md, n, KR_MD_USER);
  CHECK(m && p && r->method && r->path);
  touch(r->method, m->value_len);
  CHECK(same(m, r->method));
  for (size_t i = 0; i < m->value_len; i++)
    CHECK(tchar((uint8_t)lower((unsigned char)r->method[i])));
  CHECK(r->is_head == (strcmp(r->method, "HEAD") == 0));
  touch(r->path, p->value_len);
  CHECK(same(p, r->path) && r->path[0] == '/');
  for (size_t i = 0; i < p->value_len; i++)
    CHECK((unsigned char)r->path[i] > 0x20 && r->path[i] != 0x7f);
  if (u && u->value_len > 0) {
    CHECK(r->user != NULL);
    touch(r->user, u->value_len);
    CHECK(same(u, r->user));
    CHECK(!strchr(r->user, '\r') && !strchr(r->user, '\n'));
  } else {
    CHECK(r->user == NULL);
  }
  size_t g = 0;
  for (size_t i = 0; i < n; i++) {
    if (!kr__md_is(&md[i], KR_MD_GROUP))
      continue;
    const char *s = kr__http_request_group(r, g++);
    CHECK(s != NULL && md[i].value_len > 0);
    touch(s, md[i].value_len);
    CHECK(same(&md[i], s));
    CHECK(!strchr(s, '\r') && !strchr(s, '\n'));
  }
  CHECK(g == r->n_groups);
  CHECK(kr__http_request_group(r, g) == NULL);
  CHECK(kr__http_request_group(r, SIZE_MAX) == NULL);

  /* Fields: lower-case tokens, clean values, end-to-end only. */
  int conn = 0, upg = 0;
  for (size_t i = 0; i < r->fields.n; i++) {
    const kr_md *f = &r->fields.md[i];
    const char *name = NULL, *value = NULL;
    CHECK(kr__http_request_header_at(r, i, &name, &value) == 0);
    CHECK(name == (const char *)f->name && value == (const char *)f->value);
    CHECK(kr__http_request_header_at(r, i, NULL, NULL) == 0);
    touch(name, f->name_len);
    touch(value, f->value_len);
    CHECK(f->name_len > 0);
    for (size_t j = 0; j < f->name_len; j++)
      CHECK(tchar(f->name[j]));
    CHECK(!strchr(value, '\r') && !strchr(value, '\n'));
    int is_conn = strcmp(name, "connection") == 0;
    int is_upg = strcmp(name, "upgrade") == 0;
    conn += is_conn;
    upg += is_upg && f->value_len > 0;
    if (kr__http_is_hop_by_hop(name, f->name_len, r->fields.md, r->fields.n))
      CHECK(r->upgrade && (is_conn || is_upg));
    if (is_conn)
      CHECK(strcmp(value, "upgrade") == 0);
  }
  CHECK(r->upgrade ? conn == 1 && upg >= 1 : conn == 0 && upg == 0);
  const char *sentinel = "unchanged", *name = sentinel, *value = sentinel;
  CHECK(kr__http_request_header_at(r, r->fields.n, &name, &value) == KR_EINVAL);
  CHECK(name == sentinel && value == sentinel);
  CHECK(kr__http_request_header_at(r, SIZE_MAX, &name, &value) == KR_EINVAL);
  (void)check_fields_model(r, md, n);

  /* Lookups: fixed names in several cases, every input name as sent and
   * upper-cased, every output name. */
  static const char *const names[] = {"host",
                                      "HOST",
                                      "Content-Type",
                                      "content-length",
                                      "upgrade",
                                      "Upgrade",
                                      "CONNECTION",
                                      "connection",
                                      "te",
                                      "x-missing",
                                      ""};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    check_lookup(r, names[i]);
  CHECK(kr__http_request_header(r, NULL) == NULL);
  for (size_t i = 0; i < n; i++) {
    check_lookup_bytes(r, md[i].name, md[i].name_len, 0);
    check_lookup_bytes(r, md[i].name, md[i].name_len, 1);
  }
  for (size_t i = 0; i < r->fields.n; i++)
    check_lookup(r, (const char *)r->fields.md[i].name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *reason = NULL;
  int count = kr__md_validate(data, size, &reason);
  if (count < 0)
    return 0;
  kr_md *md = calloc((size_t)count + 1, sizeof *md);
  if (md == NULL)
    return 0;
  kr__md_decode(data, md, (size_t)count);

  kr__http_request r;
  memset(&r, 0xa5, sizeof r); /* parse must not rely on a clean struct */
  const char *why = NULL;
  int rc = kr__http_request_parse(&r, md, (size_t)count, &why);
  if (rc == 0) {
    check_request(&r, md, (size_t)count);
  } else {
    CHECK(rc == KR_EPROTO || rc == KR_ETOOBIG || rc == KR_ENOMEM);
    if (rc == KR_EPROTO)
      CHECK(why != NULL && why[0] != '\0');
    check_empty(&r);
  }
  kr__http_request_free(&r);
  check_empty(&r);
  kr__http_request_free(&r); /* twice: a no-op */
  free(md);
  return 0;
}
