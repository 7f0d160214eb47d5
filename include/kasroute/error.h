/* libkasroute — error codes.
 *
 * Every function that can fail returns 0 (or a non-negative count) on
 * success and a negative KR_E* value on failure; never a bare -1. The list
 * below is the single source of the enum, of kr_strerror() and of
 * kr_err_name(). New codes are only ever appended, so values are stable.
 */
#ifndef KASROUTE_ERROR_H
#define KASROUTE_ERROR_H

#include <kasroute/common.h>

KR_BEGIN_DECLS

/* X(NAME, value, message) */
#define KR_ERROR_MAP(X)                                                        \
  X(NOMEM, -1, "out of memory")                                                \
  X(INVAL, -2, "invalid argument")                                             \
  X(AGAIN, -3, "would block; retry when the library says it may proceed")      \
  X(STATE, -4, "operation not allowed in the current state")                   \
  X(PROTO, -5, "protocol violation by the peer")                               \
  X(FLOWCTL, -6, "flow-control window exceeded by the peer")                   \
  X(FRAMESIZE, -7, "frame larger than the negotiated maximum")                 \
  X(CLOSED, -8, "stream or connection is closed")                              \
  X(GOAWAY, -9, "connection is draining; no new streams")                      \
  X(STREAMLIMIT, -10, "too many concurrent streams")                           \
  X(IDEXHAUSTED, -11, "stream ids exhausted; open a new connection")           \
  X(TIMEDOUT, -12, "timed out")                                                \
  X(VERSION, -13, "no protocol version in common with the peer")               \
  X(TOOBIG, -14, "value exceeds a configured or negotiated limit")             \
  X(RESET, -15, "stream was reset")                                           \
  X(AUTH, -16, "authentication failed")                                       \
  X(NOTCONN, -17, "agent is not connected")                                    \
  X(NOSERVICE, -18, "unknown service")                                         \
  X(IO, -19, "I/O error")                                                      \
  X(TLS, -20, "TLS failure")                                                   \
  X(CONFIG, -21, "invalid configuration")                                      \
  X(NOENT, -22, "no such entry")                                               \
  X(UPSTREAM, -23, "upstream service failed")                                  \
  X(ADDR, -24, "invalid or unresolvable address")                             \
  X(PERM, -25, "not permitted for these credentials")

/* The error codes, KR_E<NAME> = value for every X() line of
 * KR_ERROR_MAP. Functions return them as int (or int64_t) values; the
 * meaning of each code and what a caller does about it is tabled in
 * docs/API.md ("Errors"). */
typedef enum kr_error {
#define KR__ERROR_ENUM(name, value, msg) KR_E##name = (value),
  KR_ERROR_MAP(KR__ERROR_ENUM)
#undef KR__ERROR_ENUM
} kr_error;

/* Human-readable message for an error code ("unknown error" for values not
 * in the list, "success" for 0 or positive). The string is static: never
 * free it. Thread-safe; may be called from any callback. */
KR_API const char *kr_strerror(int err);

/* Symbolic name of an error code without the prefix ("NOMEM" for
 * KR_ENOMEM); "OK" for 0 or positive, "UNKNOWN" for values not in the
 * list. Bindings derive exception class names from it. The string is
 * static. Thread-safe; may be called from any callback. */
KR_API const char *kr_err_name(int err);

KR_END_DECLS

#endif
