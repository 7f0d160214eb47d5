/* libkasroute — logging hook.
 *
 * The library logs events as one line of key=value pairs, e.g.
 *   level=warn event=agent_auth_failed peer=127.0.0.1:41312 reason="unknown token"
 * Secrets (tokens, JWTs, keys) are never logged. By default lines at INFO
 * and above go to stderr prefixed with an RFC 3339 UTC timestamp; a host
 * can route them elsewhere.
 */
#ifndef KASROUTE_LOG_H
#define KASROUTE_LOG_H

#include <kasroute/common.h>

KR_BEGIN_DECLS

typedef enum kr_log_level {
  KR_LOG_ERROR = 0,
  KR_LOG_WARN = 1,
  KR_LOG_INFO = 2,
  KR_LOG_DEBUG = 3
} kr_log_level;

/* line: the key=value text without timestamp or newline; valid during the
 * call. Called on the thread that logs (the event-loop thread). */
typedef void (*kr_log_fn)(kr_log_level level, const char *line,
                          void *user_data);

/* Routes log lines to fn (NULL: back to the stderr default). Process-wide;
 * call before starting loops (not thread-safe). */
KR_API void kr_log_set_handler(kr_log_fn fn, void *user_data);

/* Drops lines less severe than max (default KR_LOG_INFO). */
KR_API void kr_log_set_level(kr_log_level max);

KR_END_DECLS

#endif
