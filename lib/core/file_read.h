/* Reading a small configuration file whole. Internal to the library. */
#ifndef KR_CORE_FILE_READ_H
#define KR_CORE_FILE_READ_H

#include <stddef.h>

#include <kasroute/mem.h>

#if defined(__GNUC__)
#define KR__FILE_ERR_PRINTF __attribute__((format(printf, 5, 6)))
#else
#define KR__FILE_ERR_PRINTF
#endif

/* Writes "NAME:LINE: TEXT" (or "NAME: TEXT" when line is 0: a whole-file
 * error) into err, truncated to errlen; nothing when err is NULL or errlen
 * is 0. The one message format of the file loaders, so the daemons report
 * every configuration file alike. */
void kr__file_err(char *err, size_t errlen, const char *name, size_t line,
                  const char *fmt, ...) KR__FILE_ERR_PRINTF;

/* Reads all of the file at path (at most limit bytes) into a buffer from
 * mem (NULL: the default allocator). On success returns 0 and sets *out (to
 * be released with kr__free(mem, *out)) and *out_len; the buffer is not
 * NUL-terminated. The file is opened close-on-exec; its size is checked
 * before reading when it is a regular file, and the read itself stops one
 * byte past the limit, so a file that grows meanwhile (or a pipe) is caught
 * too.
 *
 * On failure *out is NULL, any partial contents have been wiped and
 * released, and err (if errlen > 0) holds "PATH: REASON":
 *   KR_ENOENT  "cannot open: <errno text>" (no such file)
 *   KR_EIO     "cannot open: <errno text>" or "cannot read: <errno text>"
 *   KR_ETOOBIG "larger than LIMIT bytes"
 *   KR_ENOMEM  "out of memory"
 *   KR_EINVAL  "invalid argument" (path, out or out_len NULL) */
int kr__file_read(const kr_mem *mem, const char *path, size_t limit, char **out,
                  size_t *out_len, char *err, size_t errlen);

#endif
