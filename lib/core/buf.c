/* Linear and circular byte buffers (see buf.h). */
#include <string.h>

#include <kasroute/error.h>

#include "buf.h"
#include "mem_internal.h"

int kr__buf_reserve(const kr_mem *mem, kr__buf *b, size_t extra) {
  if (b->cap - b->len >= extra)
    return 0;
  size_t pending = b->len - b->off;
  if (extra > SIZE_MAX / 2 - pending)
    return KR_ENOMEM;
  if (b->off > 0 && pending + extra <= b->cap) {
    memmove(b->data, b->data + b->off, pending);
    b->off = 0;
    b->len = pending;
    return 0;
  }
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < pending + extra)
    cap *= 2;
  uint8_t *data = kr__malloc(mem, cap);
  if (!data)
    return KR_ENOMEM;
  if (pending)
    memcpy(data, b->data + b->off, pending);
  kr__free(mem, b->data);
  b->data = data;
  b->cap = cap;
  b->off = 0;
  b->len = pending;
  return 0;
}

int kr__buf_append(const kr_mem *mem, kr__buf *b, const void *src, size_t n) {
  int rc = kr__buf_reserve(mem, b, n);
  if (rc < 0)
    return rc;
  memcpy(b->data + b->len, src, n);
  b->len += n;
  return 0;
}

void kr__buf_consume(kr__buf *b, size_t n) {
  b->off += n;
  if (b->off == b->len)
    b->off = b->len = 0;
}

void kr__buf_free(const kr_mem *mem, kr__buf *b) {
  kr__free(mem, b->data);
  memset(b, 0, sizeof(*b));
}

/* Grows the ring to hold at least need bytes, unwrapping its content. */
static int ring_grow(const kr_mem *mem, kr__ring *r, size_t need) {
  if (need > SIZE_MAX / 2)
    return KR_ENOMEM;
  size_t cap = r->cap ? r->cap : 4096;
  while (cap < need)
    cap *= 2;
  uint8_t *data = kr__malloc(mem, cap);
  if (!data)
    return KR_ENOMEM;
  size_t first = r->cap - r->head < r->len ? r->cap - r->head : r->len;
  if (first)
    memcpy(data, r->data + r->head, first);
  if (r->len > first)
    memcpy(data + first, r->data, r->len - first);
  kr__free(mem, r->data);
  r->data = data;
  r->cap = cap;
  r->head = 0;
  return 0;
}

int kr__ring_write(const kr_mem *mem, kr__ring *r, const void *src, size_t n) {
  if (n == 0)
    return 0;
  if (r->cap - r->len < n) {
    int rc = ring_grow(mem, r, r->len + n);
    if (rc < 0)
      return rc;
  }
  size_t tail = (r->head + r->len) % r->cap;
  size_t first = r->cap - tail < n ? r->cap - tail : n;
  memcpy(r->data + tail, src, first);
  if (n > first)
    memcpy(r->data, (const uint8_t *)src + first, n - first);
  r->len += n;
  return 0;
}

void kr__ring_read(kr__ring *r, void *dst, size_t n) {
  if (n == 0)
    return;
  size_t first = r->cap - r->head < n ? r->cap - r->head : n;
  memcpy(dst, r->data + r->head, first);
  if (n > first)
    memcpy((uint8_t *)dst + first, r->data, n - first);
  r->len -= n;
  r->head = r->len ? (r->head + n) % r->cap : 0;
}

void kr__ring_free(const kr_mem *mem, kr__ring *r) {
  kr__free(mem, r->data);
  memset(r, 0, sizeof(*r));
}
