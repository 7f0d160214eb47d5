/* Frame codec for protocol v1 (docs/PROTOCOL.md). Internal to the library.
 *
 * Pure functions over byte buffers: no allocation, no state. Decoders
 * validate everything the frame itself can tell (lengths, reserved bits,
 * stream-id class, setting ranges) and return KR_EPROTO / KR_EFRAMESIZE with
 * a static reason string; the mux checks what needs connection state.
 */
#ifndef KR_CORE_FRAME_H
#define KR_CORE_FRAME_H

#include <kasroute/error.h>
#include <kasroute/mux.h>

enum kr__frame_type {
  KR__FRAME_DATA = 0x0,
  KR__FRAME_OPEN = 0x1,
  KR__FRAME_REPLY = 0x2,
  KR__FRAME_RESET = 0x3,
  KR__FRAME_WINDOW = 0x4,
  KR__FRAME_PING = 0x5,
  KR__FRAME_GOAWAY = 0x6,
  KR__FRAME_HELLO = 0x7,
  KR__FRAME_TYPE_COUNT
};

#define KR__FLAG_FIN 0x01 /* DATA, OPEN, REPLY */
#define KR__FLAG_ACK 0x01 /* PING, RESET */

/* HELLO settings identifiers. */
enum kr__setting {
  KR__SETTING_MAX_FRAME_SIZE = 1,
  KR__SETTING_STREAM_WINDOW = 2,
  KR__SETTING_CONNECTION_WINDOW = 3,
  KR__SETTING_MAX_STREAMS = 4,
  KR__SETTING_LAST = 4
};

#define KR__HELLO_MAGIC "KRMX"
#define KR__HELLO_FIXED 10 /* magic 4, min ver 1, max ver 1, role 1, rsv 1, count 2 */
#define KR__MD_ENTRY_FIXED 6 /* name length u16 + value length u32 */
#define KR__RESET_FIXED 4
#define KR__GOAWAY_FIXED 8
#define KR__WINDOW_LEN 4
#define KR__PING_LEN 8

typedef struct kr__frame_hdr {
  uint32_t length; /* payload bytes, 24 bits on the wire */
  uint8_t type;
  uint8_t flags;
  uint32_t stream_id; /* 31 bits; the top bit is reserved and must be 0 */
} kr__frame_hdr;

typedef struct kr__hello {
  uint8_t min_version;
  uint8_t max_version;
  uint8_t role;
  /* settings[id] for id 1..KR__SETTING_LAST; 0 when absent. */
  uint32_t settings[KR__SETTING_LAST + 1];
  const uint8_t *md; /* metadata block (points into the decoded payload) */
  size_t md_len;
} kr__hello;

static inline void kr__put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static inline void kr__put_u24(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 16);
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)v;
}
static inline void kr__put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}
static inline uint16_t kr__get_u16(const uint8_t *p) {
  return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t kr__get_u24(const uint8_t *p) {
  return ((uint32_t)p[0] << 16) | ((uint32_t)p[1] << 8) | p[2];
}
static inline uint32_t kr__get_u32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
         ((uint32_t)p[2] << 8) | p[3];
}

/* Writes the 9-byte header. Caller guarantees length < 2^24. */
void kr__frame_hdr_encode(uint8_t out[KR_FRAME_HEADER_SIZE],
                          const kr__frame_hdr *h);

/* Reads a 9-byte header and checks it against max_payload (this side's
 * MAX_FRAME_SIZE) and the per-type rules that need no stream state: known
 * type, allowed flags, stream 0 vs non-zero, fixed payload sizes.
 * Returns 0, KR_EFRAMESIZE or KR_EPROTO; *reason names the rule broken. */
int kr__frame_hdr_decode(const uint8_t in[KR_FRAME_HEADER_SIZE],
                         uint32_t max_payload, kr__frame_hdr *h,
                         const char **reason);

/* Bytes the metadata block for md[0..n) takes, or 0 when it cannot be
 * encoded (more than 65535 entries, an empty name or a name over 65535
 * bytes, a value over 2^32-1). */
size_t kr__md_size(const kr_md *md, size_t n);

/* Encodes the metadata block into out (size from kr__md_size()). */
void kr__md_encode(uint8_t *out, const kr_md *md, size_t n);

/* Counts the entries of a metadata block and validates every inner length
 * against len: the block must end exactly at len. Returns the number of
 * entries (>= 0) or KR_EPROTO with *reason. */
int kr__md_validate(const uint8_t *in, size_t len, const char **reason);

/* Fills out[0..count) from a block that kr__md_validate() accepted; the
 * entries point into in. */
void kr__md_decode(const uint8_t *in, kr_md *out, size_t count);

/* Encodes a HELLO payload (no frame header): fixed part, the settings that
 * are non-zero in h->settings, then the metadata block for md[0..n).
 * Returns the payload size, or KR_ETOOBIG when it exceeds cap. */
int kr__hello_encode(uint8_t *out, size_t cap, const kr__hello *h,
                     const kr_md *md, size_t n);

/* Decodes a HELLO payload: magic, versions (min <= max, min >= 1), role,
 * settings (known ones range-checked, unknown ones ignored, none repeated),
 * and leaves the metadata block in h->md/h->md_len unvalidated.
 * Returns 0 or KR_EPROTO with *reason. */
int kr__hello_decode(const uint8_t *in, size_t len, kr__hello *h,
                     const char **reason);

/* Writes a whole control frame (header + payload) into out and returns its
 * size. reason is cut at KR_MAX_REASON; out must hold
 * KR_FRAME_HEADER_SIZE + KR__GOAWAY_FIXED + KR_MAX_REASON bytes. */
size_t kr__frame_reset(uint8_t *out, uint32_t stream_id, uint8_t flags,
                       uint32_t code, const char *reason, size_t reason_len);
size_t kr__frame_goaway(uint8_t *out, uint32_t last_stream_id, uint32_t code,
                        const char *reason, size_t reason_len);
size_t kr__frame_window(uint8_t *out, uint32_t stream_id, uint32_t increment);
size_t kr__frame_ping(uint8_t *out, uint8_t flags, const uint8_t opaque[8]);

/* Largest control frame kr__frame_* can produce. */
#define KR__CTRL_FRAME_MAX (KR_FRAME_HEADER_SIZE + KR__GOAWAY_FIXED + KR_MAX_REASON)

#endif
