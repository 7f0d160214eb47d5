/* Logging: key=value lines to a host hook or stderr (see kasroute/log.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "log.h"

static kr_log_fn log_fn;
static void *log_ud;
static kr_log_level log_max = KR_LOG_INFO;

void kr_log_set_handler(kr_log_fn fn, void *ud) {
  log_fn = fn;
  log_ud = ud;
}

void kr_log_set_level(kr_log_level max) { log_max = max; }

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void kr__log(kr_log_level level, const char *event, const char *fmt, ...) {
  if (level > log_max)
    return;
  char line[1024];
  int n = snprintf(line, sizeof(line), "level=%s event=%s", level_names[level],
                   event);
  if (fmt && *fmt && n > 0 && (size_t)n < sizeof(line) - 1) {
    line[n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
  }
  if (log_fn) {
    log_fn(level, line, log_ud);
    return;
  }
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  fprintf(stderr, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s\n",
          tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
          tm.tm_sec, (int)(tv.tv_usec / 1000), line);
}

char *kr__log_quote(char *out, size_t size, const char *text, size_t len) {
  size_t o = 0;
  if (size < 3) {
    if (size)
      out[0] = 0;
    return out;
  }
  out[o++] = '"';
  for (size_t i = 0; i < len && o + 5 < size; i++) {
    unsigned char ch = (unsigned char)text[i];
    if (ch == '"' || ch == '\\') {
      out[o++] = '\\';
      out[o++] = (char)ch;
    } else if (ch < 0x20 || ch == 0x7f) {
      o += (size_t)snprintf(out + o, size - o, "\\x%02x", ch);
    } else {
      out[o++] = (char)ch;
    }
  }
  out[o++] = '"';
  out[o] = 0;
  return out;
}
