/* Error and wire-code names, generated from the X-macro lists. */
#include <kasroute/error.h>
#include <kasroute/mux.h>

const char *kr_strerror(int err) {
  if (err >= 0)
    return "success";
  switch (err) {
#define KR__ERROR_MSG(name, value, msg)                                        \
  case value:                                                                  \
    return msg;
    KR_ERROR_MAP(KR__ERROR_MSG)
#undef KR__ERROR_MSG
  }
  return "unknown error";
}

const char *kr_err_name(int err) {
  if (err >= 0)
    return "OK";
  switch (err) {
#define KR__ERROR_NAME(name, value, msg)                                       \
  case value:                                                                  \
    return #name;
    KR_ERROR_MAP(KR__ERROR_NAME)
#undef KR__ERROR_NAME
  }
  return "UNKNOWN";
}

const char *kr_code_name(uint32_t code) {
  static const char *const names[] = {
      "NO_ERROR",     "PROTOCOL",     "INTERNAL",  "FLOW_CONTROL",
      "FRAME_SIZE",   "REFUSED",      "CANCEL",    "STREAM_LIMIT",
      "TIMEOUT",      "VERSION",      "UNAUTHORIZED", "NOT_FOUND",
      "UNAVAILABLE",  "UPSTREAM",     "SHUTDOWN"};
  if (code < sizeof(names) / sizeof(names[0]))
    return names[code];
  return "UNKNOWN";
}
