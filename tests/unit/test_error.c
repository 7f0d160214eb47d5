/* Unit tests: error codes, wire-code names, version (lib/core/error.c,
 * lib/core/version.c, lib/core/mem.c defaults). */
#include <limits.h>
#include <string.h>

#include <kasroute/kasroute.h>

#include "pair.h"

typedef struct err_entry {
  int value;
  const char *name;
  const char *msg;
} err_entry;

/* The table is generated from the same X-macro the library uses, so a code
 * added to the list is covered here automatically. */
static const err_entry errors[] = {
#define ENTRY(name, value, msg) {KR_E##name, #name, msg},
    KR_ERROR_MAP(ENTRY)
#undef ENTRY
};
#define NERRORS (sizeof errors / sizeof errors[0])

START_TEST(error_values_are_negative_and_distinct) {
  ck_assert_uint_ge(NERRORS, 15);
  for (size_t i = 0; i < NERRORS; i++) {
    ck_assert_msg(errors[i].value < 0, "KR_E%s = %d is not negative",
                  errors[i].name, errors[i].value);
    for (size_t j = i + 1; j < NERRORS; j++)
      ck_assert_msg(errors[i].value != errors[j].value,
                    "KR_E%s and KR_E%s share the value %d", errors[i].name,
                    errors[j].name, errors[i].value);
  }
  /* Values are part of the ABI. */
  ck_assert_int_eq(KR_ENOMEM, -1);
  ck_assert_int_eq(KR_EINVAL, -2);
  ck_assert_int_eq(KR_EAGAIN, -3);
  ck_assert_int_eq(KR_ESTATE, -4);
  ck_assert_int_eq(KR_EPROTO, -5);
  ck_assert_int_eq(KR_EFLOWCTL, -6);
  ck_assert_int_eq(KR_EFRAMESIZE, -7);
  ck_assert_int_eq(KR_ECLOSED, -8);
  ck_assert_int_eq(KR_EGOAWAY, -9);
  ck_assert_int_eq(KR_ESTREAMLIMIT, -10);
  ck_assert_int_eq(KR_EIDEXHAUSTED, -11);
  ck_assert_int_eq(KR_ETIMEDOUT, -12);
  ck_assert_int_eq(KR_EVERSION, -13);
  ck_assert_int_eq(KR_ETOOBIG, -14);
  ck_assert_int_eq(KR_ERESET, -15);
}
END_TEST

START_TEST(error_names_and_messages) {
  for (size_t i = 0; i < NERRORS; i++) {
    int v = errors[i].value;
    const char *name = kr_err_name(v);
    const char *msg = kr_strerror(v);
    ck_assert_ptr_nonnull(name);
    ck_assert_ptr_nonnull(msg);
    ck_assert_msg(strcmp(name, errors[i].name) == 0,
                  "kr_err_name(%d) = \"%s\", expected \"%s\"", v, name,
                  errors[i].name);
    ck_assert_msg(strcmp(msg, errors[i].msg) == 0,
                  "kr_strerror(%d) = \"%s\", expected \"%s\"", v, msg,
                  errors[i].msg);
    ck_assert_msg(strlen(msg) > 0, "empty message for %s", name);
    ck_assert_msg(strcmp(name, "UNKNOWN") != 0 && strcmp(name, "OK") != 0,
                  "KR_E%s has a reserved name", errors[i].name);
    ck_assert_msg(strcmp(msg, "unknown error") != 0 &&
                      strcmp(msg, "success") != 0,
                  "KR_E%s has a reserved message", errors[i].name);
    for (size_t j = 0; j < i; j++) {
      ck_assert_msg(strcmp(name, kr_err_name(errors[j].value)) != 0,
                    "%d and %d share the name %s", v, errors[j].value, name);
      ck_assert_msg(strcmp(msg, kr_strerror(errors[j].value)) != 0,
                    "%d and %d share the message \"%s\"", v, errors[j].value,
                    msg);
    }
    /* Names are upper-case identifiers (bindings derive class names). */
    for (const char *c = name; *c; c++)
      ck_assert_msg((*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                        *c == '_',
                    "name \"%s\" is not an identifier", name);
  }
  /* Spot-check against the header text. */
  ck_assert_str_eq(kr_err_name(KR_ENOMEM), "NOMEM");
  ck_assert_str_eq(kr_strerror(KR_ENOMEM), "out of memory");
  ck_assert_str_eq(kr_err_name(KR_EIDEXHAUSTED), "IDEXHAUSTED");
}
END_TEST

START_TEST(error_zero_positive_unknown) {
  ck_assert_str_eq(kr_err_name(0), "OK");
  ck_assert_str_eq(kr_strerror(0), "success");
  const int positive[] = {1, 2, 17, 65536, INT_MAX};
  for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++) {
    ck_assert_msg(strcmp(kr_err_name(positive[i]), "OK") == 0,
                  "kr_err_name(%d) = %s", positive[i],
                  kr_err_name(positive[i]));
    ck_assert_msg(strcmp(kr_strerror(positive[i]), "success") == 0,
                  "kr_strerror(%d) = %s", positive[i],
                  kr_strerror(positive[i]));
  }
  int lowest = 0;
  for (size_t i = 0; i < NERRORS; i++)
    if (errors[i].value < lowest)
      lowest = errors[i].value;
  const int unknown[] = {lowest - 1, lowest - 2, -1000, -65536, INT_MIN};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    ck_assert_msg(strcmp(kr_err_name(unknown[i]), "UNKNOWN") == 0,
                  "kr_err_name(%d) = %s", unknown[i], kr_err_name(unknown[i]));
    ck_assert_msg(strcmp(kr_strerror(unknown[i]), "unknown error") == 0,
                  "kr_strerror(%d) = %s", unknown[i], kr_strerror(unknown[i]));
  }
}
END_TEST

START_TEST(version_matches_header) {
  ck_assert_ptr_nonnull(kr_version());
  ck_assert_str_eq(kr_version(), KR_VERSION_STRING);
  ck_assert_uint_eq(kr_version_number(), KR_VERSION_NUMBER);
  char buf[64];
  snprintf(buf, sizeof buf, "%d.%d.%d", KR_VERSION_MAJOR, KR_VERSION_MINOR,
           KR_VERSION_PATCH);
  ck_assert_str_eq(kr_version(), buf);
  ck_assert_uint_eq(kr_version_number(), ((unsigned)KR_VERSION_MAJOR << 16) |
                                             ((unsigned)KR_VERSION_MINOR << 8) |
                                             (unsigned)KR_VERSION_PATCH);
  /* Static string: the same pointer every time. */
  ck_assert_ptr_eq(kr_version(), kr_version());
}
END_TEST

START_TEST(code_names) {
  static const struct {
    uint32_t code;
    const char *name;
  } codes[] = {
      {KR_CODE_NO_ERROR, "NO_ERROR"},
      {KR_CODE_PROTOCOL, "PROTOCOL"},
      {KR_CODE_INTERNAL, "INTERNAL"},
      {KR_CODE_FLOW_CONTROL, "FLOW_CONTROL"},
      {KR_CODE_FRAME_SIZE, "FRAME_SIZE"},
      {KR_CODE_REFUSED, "REFUSED"},
      {KR_CODE_CANCEL, "CANCEL"},
      {KR_CODE_STREAM_LIMIT, "STREAM_LIMIT"},
      {KR_CODE_TIMEOUT, "TIMEOUT"},
      {KR_CODE_VERSION, "VERSION"},
      {KR_CODE_UNAUTHORIZED, "UNAUTHORIZED"},
      {KR_CODE_NOT_FOUND, "NOT_FOUND"},
      {KR_CODE_UNAVAILABLE, "UNAVAILABLE"},
      {KR_CODE_UPSTREAM, "UPSTREAM"},
      {KR_CODE_SHUTDOWN, "SHUTDOWN"},
  };
  for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
    ck_assert_uint_eq(codes[i].code, i); /* wire values are fixed */
    const char *n = kr_code_name(codes[i].code);
    ck_assert_ptr_nonnull(n);
    ck_assert_msg(strcmp(n, codes[i].name) == 0,
                  "kr_code_name(%u) = \"%s\", expected \"%s\"", codes[i].code,
                  n, codes[i].name);
  }
  const uint32_t unknown[] = {15,          16,          255,
                              0x7fffffffu, 0x80000000u, UINT32_MAX};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
    ck_assert_msg(strcmp(kr_code_name(unknown[i]), "UNKNOWN") == 0,
                  "kr_code_name(%u) = \"%s\"", unknown[i],
                  kr_code_name(unknown[i]));
}
END_TEST

START_TEST(mem_default_hooks) {
  const kr_mem *d = kr_mem_default();
  ck_assert_ptr_nonnull(d);
  ck_assert_ptr_nonnull(d->malloc);
  ck_assert_ptr_nonnull(d->realloc);
  ck_assert_ptr_nonnull(d->free);
  void *p = d->malloc(16, d->user_data);
  ck_assert_ptr_nonnull(p);
  p = d->realloc(p, 64, d->user_data);
  ck_assert_ptr_nonnull(p);
  d->free(p, d->user_data);
  d->free(NULL, d->user_data);

  kt_alloc al;
  kt_alloc_init(&al);
  kr_mem m = kt_alloc_mem(&al);
  kr_mem bad = m;
  bad.malloc = NULL;
  ck_assert_int_eq(kr_mem_set_default(&bad), KR_EINVAL);
  bad = m;
  bad.realloc = NULL;
  ck_assert_int_eq(kr_mem_set_default(&bad), KR_EINVAL);
  bad = m;
  bad.free = NULL;
  ck_assert_int_eq(kr_mem_set_default(&bad), KR_EINVAL);
  /* A refused replacement leaves the default untouched. */
  ck_assert_ptr_eq(kr_mem_default()->malloc, d->malloc);

  ck_assert_int_eq(kr_mem_set_default(&m), 0);
  ck_assert_ptr_eq(kr_mem_default()->user_data, &al);
  /* Objects created without their own allocator use the default. */
  kr_mux_options *o = NULL;
  ck_assert_int_eq(kr_mux_options_new(&o), 0);
  ck_assert_msg(al.blocks > 0, "kr_mux_options_new did not use the default "
                               "allocator");
  kr_mux_options_free(o);
  ck_assert_uint_eq(al.blocks, 0);
  ck_assert_uint_eq(al.bytes, 0);
  ck_assert_int_eq(kr_mem_set_default(NULL), 0);
  ck_assert_ptr_ne(kr_mem_default()->user_data, &al);
  /* NULL frees are no-ops. */
  kr_mux_options_free(NULL);
  kr_mux_callbacks_free(NULL);
  kr_mux_free(NULL);
}
END_TEST

int main(void) {
  Suite *s = suite_create("error");
  KT_ADD(s, error_values_are_negative_and_distinct, 10);
  KT_ADD(s, error_names_and_messages, 10);
  KT_ADD(s, error_zero_positive_unknown, 10);
  KT_ADD(s, version_matches_header, 10);
  KT_ADD(s, code_names, 10);
  KT_ADD(s, mem_default_hooks, 10);
  return kt_run_suite(s);
}
