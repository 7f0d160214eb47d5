/* libkasroute — logging hook.
 *
 * The library logs events as one line of key=value pairs, for example
 *   level=warn event=agent_auth_failed peer=127.0.0.1:41312 reason="unknown token"
 * Secrets (tokens, JWTs, keys) are never logged. By default lines at INFO
 * and above go to stderr prefixed with an RFC 3339 UTC timestamp
 * ("ts=2024-05-01T12:00:00.123Z "); a host can route them elsewhere.
 * Lines are at most 1023 bytes (longer ones are cut). The handler and the
 * level are process-wide, shared by every object of the library.
 */
#ifndef KASROUTE_LOG_H
#define KASROUTE_LOG_H

#include <kasroute/common.h>

KR_BEGIN_DECLS

/* Severity of a line; lower is more severe. */
typedef enum kr_log_level {
  KR_LOG_ERROR = 0,
  KR_LOG_WARN = 1,
  KR_LOG_INFO = 2,
  KR_LOG_DEBUG = 3
} kr_log_level;

/* Receives one line. line: the key=value text without timestamp or
 * newline, NUL-terminated, valid during the call only (copy it to keep
 * it). Called on the thread that logs: the loop thread of the object that
 * logs, which for a kr_bclient is the library's own thread; with several
 * loops on several threads it runs on all of them, so it must be
 * thread-safe then. It runs inside library code: it must not call
 * libkasroute functions other than kr_strerror(), kr_err_name(),
 * kr_code_name() and kr_version(), and must not block for long (it holds
 * up the loop). */
typedef void (*kr_log_fn)(kr_log_level level, const char *line,
                          void *user_data);

/* Routes log lines to fn with user_data (NULL: back to the stderr
 * default). Process-wide; not thread-safe: call it before creating
 * objects or starting loops (and before kr_bclient_new(), whose thread
 * logs). */
KR_API void kr_log_set_handler(kr_log_fn fn, void *user_data);

/* Drops lines less severe than max (default KR_LOG_INFO; KR_LOG_DEBUG
 * adds per-connection detail). Process-wide; not thread-safe, like
 * kr_log_set_handler(). */
KR_API void kr_log_set_level(kr_log_level max);

KR_END_DECLS

#endif
