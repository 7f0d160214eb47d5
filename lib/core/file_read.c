/* Bounded whole-file read (see file_read.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <kasroute/error.h>

#include "file_read.h"
#include "mem_internal.h"

void kr__file_err(char *err, size_t errlen, const char *name, size_t line,
                  const char *fmt, ...) {
  if (err == NULL || errlen == 0)
    return;
  int n = line ? snprintf(err, errlen, "%s:%zu: ", name, line)
               : snprintf(err, errlen, "%s: ", name);
  if (n < 0 || (size_t)n >= errlen)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
  va_end(ap);
}

/* strerror is not thread-safe; glibc's strerror_r (the GNU variant under
 * _GNU_SOURCE) returns the text instead of filling buf. */
static const char *errno_text(int e, char *buf, size_t n) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  return strerror_r(e, buf, n);
#else
  return strerror_r(e, buf, n) == 0 ? buf : "unknown error";
#endif
}

int kr__file_read(const kr_mem *mem, const char *path, size_t limit, char **out,
                  size_t *out_len, char *err, size_t errlen) {
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (out != NULL)
    *out = NULL;
  if (out_len != NULL)
    *out_len = 0;
  if (out == NULL || out_len == NULL || path == NULL) {
    kr__file_err(err, errlen, path ? path : "(null)", 0, "invalid argument");
    return KR_EINVAL;
  }
  if (mem == NULL)
    mem = kr_mem_default();
  char ebuf[128];

  FILE *f = fopen(path, "rbe"); /* e: O_CLOEXEC */
  if (f == NULL) {
    int e = errno;
    kr__file_err(err, errlen, path, 0, "cannot open: %s",
                 errno_text(e, ebuf, sizeof ebuf));
    return e == ENOENT ? KR_ENOENT : KR_EIO;
  }
  size_t cap = 64 * 1024;
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode)) {
    if ((uintmax_t)st.st_size > limit) {
      fclose(f);
      kr__file_err(err, errlen, path, 0, "larger than %zu bytes", limit);
      return KR_ETOOBIG;
    }
    cap = (size_t)st.st_size + 1; /* + 1: room to see EOF in one read */
  }

  /* At most limit + 1 bytes are read, to tell "exactly at the limit" from
   * "over". */
  char *buf = kr__malloc(mem, cap);
  size_t len = 0;
  int rc = buf ? 0 : KR_ENOMEM;
  int read_errno = 0;
  while (rc == 0) {
    if (len == cap) {
      if (cap > limit) {
        rc = KR_ETOOBIG;
        break;
      }
      size_t ncap = cap * 2 > limit + 1 ? limit + 1 : cap * 2;
      char *nb = kr__realloc(mem, buf, ncap);
      if (nb == NULL) {
        rc = KR_ENOMEM;
        break;
      }
      buf = nb;
      cap = ncap;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) {
      if (ferror(f)) {
        read_errno = errno;
        rc = KR_EIO;
      }
      break;
    }
  }
  fclose(f);
  if (rc == 0 && len > limit)
    rc = KR_ETOOBIG;
  if (rc == 0) {
    *out = buf;
    *out_len = len;
    return 0;
  }
  if (rc == KR_ETOOBIG) {
    kr__file_err(err, errlen, path, 0, "larger than %zu bytes", limit);
  } else if (rc == KR_EIO) {
    kr__file_err(err, errlen, path, 0, "cannot read: %s",
                 errno_text(read_errno, ebuf, sizeof ebuf));
  } else {
    kr__file_err(err, errlen, path, 0, "out of memory");
  }
  if (buf != NULL) {
    memset(buf, 0, len);
    kr__free(mem, buf);
  }
  return rc;
}
