/* Byte buffers used by the mux. Internal to the library.
 *
 * kr__buf: linear; bytes are appended at the end and taken from the front
 *   (the mux output: usually drained whole, so it stays small and hot).
 * kr__ring: circular; for per-stream send queues, which are appended and
 *   drained in frame-sized pieces without moving the rest.
 * Both grow on demand; on allocation failure they are left unchanged.
 */
#ifndef KR_CORE_BUF_H
#define KR_CORE_BUF_H

#include <stdint.h>

#include <kasroute/mem.h>

typedef struct kr__buf {
  uint8_t *data;
  size_t off; /* first pending byte */
  size_t len; /* end of pending bytes */
  size_t cap;
} kr__buf;

static inline size_t kr__buf_pending(const kr__buf *b) { return b->len - b->off; }

/* Makes room for extra more bytes at the end. 0 or KR_ENOMEM. */
int kr__buf_reserve(const kr_mem *mem, kr__buf *b, size_t extra);
/* Appends n bytes. 0 or KR_ENOMEM (nothing appended). */
int kr__buf_append(const kr_mem *mem, kr__buf *b, const void *src, size_t n);
/* Drops n pending bytes from the front (n <= pending). */
void kr__buf_consume(kr__buf *b, size_t n);
void kr__buf_free(const kr_mem *mem, kr__buf *b);

typedef struct kr__ring {
  uint8_t *data;
  size_t cap;
  size_t head; /* index of the first byte */
  size_t len;  /* bytes held */
} kr__ring;

/* Appends n bytes, growing as needed. 0 or KR_ENOMEM (nothing appended). */
int kr__ring_write(const kr_mem *mem, kr__ring *r, const void *src, size_t n);
/* Copies the first n bytes (n <= len) to dst and drops them. */
void kr__ring_read(kr__ring *r, void *dst, size_t n);
void kr__ring_free(const kr_mem *mem, kr__ring *r);

#endif
