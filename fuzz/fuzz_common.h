/* Helpers shared by the fuzz targets and the seed generator (make_corpus.c):
 * frame builders on top of the codec, and the dialer HELLO prefixes that
 * fuzz_mux_recv puts in front of its input. Keeping them in one place makes
 * the committed seeds line up with what the target expects.
 */
#ifndef KR_FUZZ_COMMON_H
#define KR_FUZZ_COMMON_H

#include <stdint.h>
#include <string.h>

#include "core/frame.h"

/* fuzz_mux_recv input layout:
 *   byte 0  configuration (FZ_CFG_* below)
 *   byte 1  seed of the generator that picks chunk sizes, clock steps and
 *           what the callbacks do; 0xf0..0xff also make allocations fail
 *   rest    bytes received from the dialer, after the HELLO prefix chosen
 *           by the low two bits of byte 0 (none: the input brings its own). */
#define FZ_CFG_PREFIX_MASK 0x03u
#define FZ_PREFIX_NONE 0u    /* the input starts with the dialer's HELLO */
#define FZ_PREFIX_DEFAULT 1u /* dialer HELLO with no settings */
#define FZ_PREFIX_SMALL 2u   /* small frames, windows, stream limit */
#define FZ_PREFIX_META 3u    /* large frames, HELLO metadata */
#define FZ_CFG_CHUNK_SHIFT 2 /* bits 2-3: chunk size class */
#define FZ_CFG_CHUNK_MASK 0x0cu
#define FZ_CFG_OPEN 0x10u  /* acceptor opens stream 2 in on_hello */
#define FZ_CFG_TINY 0x20u  /* tiny receive windows on the acceptor */
#define FZ_CFG_LAZY 0x40u  /* drain output lazily (partial kr_mux_sent) */
#define FZ_CFG_HARSH 0x80u /* callbacks reset / goaway more often */

/* Settings each prefix announces (0 = absent, the default applies). */
typedef struct fz_prefix_settings {
  uint32_t max_frame;
  uint32_t stream_window;
  uint32_t conn_window;
  uint32_t max_streams;
} fz_prefix_settings;

static inline fz_prefix_settings fz_prefix_settings_of(unsigned prefix) {
  fz_prefix_settings s = {0, 0, 0, 0};
  switch (prefix) {
  case FZ_PREFIX_SMALL:
    s.max_frame = KR_MIN_FRAME_SIZE;
    s.stream_window = 1000;
    s.conn_window = 3000;
    s.max_streams = 2;
    break;
  case FZ_PREFIX_META:
    s.max_frame = 1u << 20;
    break;
  default:
    break;
  }
  return s;
}

/* Writes a frame header followed by the payload; returns the frame size. */
static inline size_t fz_frame(uint8_t *out, uint8_t type, uint8_t flags,
                              uint32_t stream_id, const void *payload,
                              size_t len) {
  kr__frame_hdr h;
  h.length = (uint32_t)len;
  h.type = type;
  h.flags = flags;
  h.stream_id = stream_id;
  kr__frame_hdr_encode(out, &h);
  if (len > 0)
    memcpy(out + KR_FRAME_HEADER_SIZE, payload, len);
  return KR_FRAME_HEADER_SIZE + len;
}

/* Writes a HELLO frame for role with the given settings and metadata;
 * returns its size or 0 when it does not fit cap. */
static inline size_t fz_hello_frame(uint8_t *out, size_t cap, uint8_t role,
                                    uint8_t min_v, uint8_t max_v,
                                    const fz_prefix_settings *s,
                                    const kr_md *md, size_t n) {
  kr__hello h;
  memset(&h, 0, sizeof h);
  h.min_version = min_v;
  h.max_version = max_v;
  h.role = role;
  if (s != NULL) {
    h.settings[KR__SETTING_MAX_FRAME_SIZE] = s->max_frame;
    h.settings[KR__SETTING_STREAM_WINDOW] = s->stream_window;
    h.settings[KR__SETTING_CONNECTION_WINDOW] = s->conn_window;
    h.settings[KR__SETTING_MAX_STREAMS] = s->max_streams;
  }
  if (cap < KR_FRAME_HEADER_SIZE)
    return 0;
  int len = kr__hello_encode(out + KR_FRAME_HEADER_SIZE,
                             cap - KR_FRAME_HEADER_SIZE, &h, md, n);
  if (len < 0)
    return 0;
  kr__frame_hdr fh = {(uint32_t)len, KR__FRAME_HELLO, 0, 0};
  kr__frame_hdr_encode(out, &fh);
  return KR_FRAME_HEADER_SIZE + (size_t)len;
}

#define FZ_MD(n, v)                                                            \
  { (const uint8_t *)(n), sizeof(n) - 1, (const uint8_t *)(v), sizeof(v) - 1 }

/* The dialer HELLO that fuzz_mux_recv feeds before the input for prefix
 * (1..3). Returns its size (0 for FZ_PREFIX_NONE). */
static inline size_t fz_prefix(uint8_t *out, size_t cap, unsigned prefix) {
  static const kr_md meta[] = {FZ_MD(":token", "fuzz-token"),
                               FZ_MD(":name", "replica-0"),
                               FZ_MD("x-extra", "")};
  fz_prefix_settings s = fz_prefix_settings_of(prefix);
  switch (prefix) {
  case FZ_PREFIX_DEFAULT:
  case FZ_PREFIX_SMALL:
    return fz_hello_frame(out, cap, KR_ROLE_DIALER, 1, 1, &s, NULL, 0);
  case FZ_PREFIX_META:
    return fz_hello_frame(out, cap, KR_ROLE_DIALER, 1, 1, &s, meta, 3);
  default:
    return 0;
  }
}

#endif
