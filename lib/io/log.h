/* Internal logging (see kasroute/log.h). */
#ifndef KR_IO_LOG_H
#define KR_IO_LOG_H

#include <stddef.h>

#include <kasroute/log.h>

/* Logs "level=L event=EVENT " followed by the printf-formatted rest. */
void kr__log(kr_log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes text as a double-quoted value with \" \\ and control characters
 * escaped, cut to fit size. Returns out. */
char *kr__log_quote(char *out, size_t size, const char *text, size_t len);

#endif
