/* Frame codec for protocol v1 (see frame.h and docs/PROTOCOL.md). */
#include <string.h>

#include "frame.h"

void kr__frame_hdr_encode(uint8_t out[KR_FRAME_HEADER_SIZE],
                          const kr__frame_hdr *h) {
  kr__put_u24(out, h->length);
  out[3] = h->type;
  out[4] = h->flags;
  kr__put_u32(out + 5, h->stream_id);
}

/* Flags each type may carry. */
static const uint8_t allowed_flags[KR__FRAME_TYPE_COUNT] = {
    [KR__FRAME_DATA] = KR__FLAG_FIN,  [KR__FRAME_OPEN] = KR__FLAG_FIN,
    [KR__FRAME_REPLY] = KR__FLAG_FIN, [KR__FRAME_RESET] = KR__FLAG_ACK,
    [KR__FRAME_WINDOW] = 0,           [KR__FRAME_PING] = KR__FLAG_ACK,
    [KR__FRAME_GOAWAY] = 0,           [KR__FRAME_HELLO] = 0,
};

int kr__frame_hdr_decode(const uint8_t in[KR_FRAME_HEADER_SIZE],
                         uint32_t max_payload, kr__frame_hdr *h,
                         const char **reason) {
  h->length = kr__get_u24(in);
  h->type = in[3];
  h->flags = in[4];
  uint32_t sid = kr__get_u32(in + 5);
  h->stream_id = sid & 0x7fffffffu;
  if (sid & 0x80000000u) {
    *reason = "reserved stream-id bit set";
    return KR_EPROTO;
  }
  if (h->type >= KR__FRAME_TYPE_COUNT) {
    *reason = "unknown frame type";
    return KR_EPROTO;
  }
  if (h->length > max_payload) {
    *reason = "frame larger than MAX_FRAME_SIZE";
    return KR_EFRAMESIZE;
  }
  if (h->flags & ~allowed_flags[h->type]) {
    *reason = "undefined flag set";
    return KR_EPROTO;
  }
  switch (h->type) {
  case KR__FRAME_DATA:
  case KR__FRAME_OPEN:
  case KR__FRAME_REPLY:
  case KR__FRAME_RESET:
    if (h->stream_id == 0) {
      *reason = "stream frame on stream 0";
      return KR_EPROTO;
    }
    break;
  case KR__FRAME_PING:
  case KR__FRAME_GOAWAY:
  case KR__FRAME_HELLO:
    if (h->stream_id != 0) {
      *reason = "connection frame on a non-zero stream";
      return KR_EPROTO;
    }
    break;
  default: /* WINDOW: any stream */
    break;
  }
  switch (h->type) {
  case KR__FRAME_WINDOW:
    if (h->length != KR__WINDOW_LEN) {
      *reason = "WINDOW payload is not 4 bytes";
      return KR_EPROTO;
    }
    break;
  case KR__FRAME_PING:
    if (h->length != KR__PING_LEN) {
      *reason = "PING payload is not 8 bytes";
      return KR_EPROTO;
    }
    break;
  case KR__FRAME_RESET:
    if (h->length < KR__RESET_FIXED ||
        h->length > KR__RESET_FIXED + KR_MAX_REASON) {
      *reason = "RESET payload size out of range";
      return KR_EPROTO;
    }
    break;
  case KR__FRAME_GOAWAY:
    if (h->length < KR__GOAWAY_FIXED ||
        h->length > KR__GOAWAY_FIXED + KR_MAX_REASON) {
      *reason = "GOAWAY payload size out of range";
      return KR_EPROTO;
    }
    break;
  case KR__FRAME_HELLO:
    if (h->length < KR__HELLO_FIXED + 2) {
      *reason = "HELLO payload too short";
      return KR_EPROTO;
    }
    break;
  case KR__FRAME_OPEN:
  case KR__FRAME_REPLY:
    if (h->length < 2) {
      *reason = "metadata block too short";
      return KR_EPROTO;
    }
    break;
  default:
    break;
  }
  return 0;
}

size_t kr__md_size(const kr_md *md, size_t n) {
  if (n > 0xffff)
    return 0;
  size_t total = 2;
  for (size_t i = 0; i < n; i++) {
    if (md[i].name_len == 0 || md[i].name_len > 0xffff ||
        (uint64_t)md[i].value_len > 0xffffffffu)
      return 0;
    if (md[i].name == NULL || (md[i].value_len && md[i].value == NULL))
      return 0;
    size_t entry = KR__MD_ENTRY_FIXED + md[i].name_len;
    if (md[i].value_len > SIZE_MAX - entry ||
        total > SIZE_MAX - entry - md[i].value_len)
      return 0;
    total += entry + md[i].value_len;
  }
  return total;
}

void kr__md_encode(uint8_t *out, const kr_md *md, size_t n) {
  kr__put_u16(out, (uint16_t)n);
  out += 2;
  for (size_t i = 0; i < n; i++) {
    kr__put_u16(out, (uint16_t)md[i].name_len);
    kr__put_u32(out + 2, (uint32_t)md[i].value_len);
    out += KR__MD_ENTRY_FIXED;
    memcpy(out, md[i].name, md[i].name_len);
    out += md[i].name_len;
    if (md[i].value_len)
      memcpy(out, md[i].value, md[i].value_len);
    out += md[i].value_len;
  }
}

int kr__md_validate(const uint8_t *in, size_t len, const char **reason) {
  if (len < 2) {
    *reason = "metadata block too short";
    return KR_EPROTO;
  }
  size_t count = kr__get_u16(in), pos = 2;
  for (size_t i = 0; i < count; i++) {
    if (len - pos < KR__MD_ENTRY_FIXED) {
      *reason = "metadata entry header runs past the frame";
      return KR_EPROTO;
    }
    size_t nlen = kr__get_u16(in + pos);
    size_t vlen = kr__get_u32(in + pos + 2);
    pos += KR__MD_ENTRY_FIXED;
    if (nlen == 0) {
      *reason = "metadata entry with an empty name";
      return KR_EPROTO;
    }
    if (nlen > len - pos || vlen > len - pos - nlen) {
      *reason = "metadata length runs past the frame";
      return KR_EPROTO;
    }
    pos += nlen + vlen;
  }
  if (pos != len) {
    *reason = "trailing bytes after metadata";
    return KR_EPROTO;
  }
  return (int)count;
}

void kr__md_decode(const uint8_t *in, kr_md *out, size_t count) {
  size_t pos = 2;
  for (size_t i = 0; i < count; i++) {
    out[i].name_len = kr__get_u16(in + pos);
    out[i].value_len = kr__get_u32(in + pos + 2);
    pos += KR__MD_ENTRY_FIXED;
    out[i].name = in + pos;
    pos += out[i].name_len;
    out[i].value = in + pos;
    pos += out[i].value_len;
  }
}

int kr__hello_encode(uint8_t *out, size_t cap, const kr__hello *h,
                     const kr_md *md, size_t n) {
  size_t nset = 0;
  for (int id = 1; id <= KR__SETTING_LAST; id++)
    nset += h->settings[id] != 0;
  size_t mdsize = kr__md_size(md, n);
  if (mdsize == 0)
    return KR_EINVAL;
  size_t total = KR__HELLO_FIXED + nset * 6 + mdsize;
  if (total > cap)
    return KR_ETOOBIG;
  memcpy(out, KR__HELLO_MAGIC, 4);
  out[4] = h->min_version;
  out[5] = h->max_version;
  out[6] = h->role;
  out[7] = 0;
  kr__put_u16(out + 8, (uint16_t)nset);
  uint8_t *p = out + KR__HELLO_FIXED;
  for (int id = 1; id <= KR__SETTING_LAST; id++) {
    if (h->settings[id] == 0)
      continue;
    kr__put_u16(p, (uint16_t)id);
    kr__put_u32(p + 2, h->settings[id]);
    p += 6;
  }
  kr__md_encode(p, md, n);
  return (int)total;
}

/* Range check of a known setting; 0 or a reason. */
static const char *setting_error(uint16_t id, uint32_t v) {
  switch (id) {
  case KR__SETTING_MAX_FRAME_SIZE:
    return v < KR_MIN_FRAME_SIZE || v > KR_MAX_FRAME_SIZE
               ? "MAX_FRAME_SIZE out of range"
               : NULL;
  case KR__SETTING_STREAM_WINDOW:
  case KR__SETTING_CONNECTION_WINDOW:
    return v == 0 || v > KR_MAX_WINDOW ? "window setting out of range" : NULL;
  case KR__SETTING_MAX_STREAMS:
    return v == 0 ? "MAX_STREAMS is 0" : NULL;
  default:
    return NULL;
  }
}

int kr__hello_decode(const uint8_t *in, size_t len, kr__hello *h,
                     const char **reason) {
  memset(h, 0, sizeof(*h));
  if (len < KR__HELLO_FIXED || memcmp(in, KR__HELLO_MAGIC, 4) != 0) {
    *reason = "HELLO magic mismatch";
    return KR_EPROTO;
  }
  h->min_version = in[4];
  h->max_version = in[5];
  h->role = in[6];
  if (h->min_version == 0 || h->min_version > h->max_version) {
    *reason = "HELLO version range invalid";
    return KR_EPROTO;
  }
  if (h->role != KR_ROLE_DIALER && h->role != KR_ROLE_ACCEPTOR) {
    *reason = "HELLO role invalid";
    return KR_EPROTO;
  }
  if (in[7] != 0) {
    *reason = "HELLO reserved byte not zero";
    return KR_EPROTO;
  }
  size_t nset = kr__get_u16(in + 8);
  if (nset > (len - KR__HELLO_FIXED) / 6) {
    *reason = "HELLO settings run past the frame";
    return KR_EPROTO;
  }
  const uint8_t *p = in + KR__HELLO_FIXED;
  for (size_t i = 0; i < nset; i++, p += 6) {
    uint16_t id = kr__get_u16(p);
    uint32_t v = kr__get_u32(p + 2);
    if (id == 0 || id > KR__SETTING_LAST)
      continue; /* unknown settings are ignored */
    if (h->settings[id] != 0) {
      *reason = "HELLO setting repeated";
      return KR_EPROTO;
    }
    const char *err = setting_error(id, v);
    if (err) {
      *reason = err;
      return KR_EPROTO;
    }
    h->settings[id] = v;
  }
  h->md = p;
  h->md_len = len - (size_t)(p - in);
  return 0;
}

static size_t put_hdr(uint8_t *out, uint32_t len, uint8_t type, uint8_t flags,
                      uint32_t sid) {
  kr__frame_hdr h = {len, type, flags, sid};
  kr__frame_hdr_encode(out, &h);
  return KR_FRAME_HEADER_SIZE;
}

size_t kr__frame_reset(uint8_t *out, uint32_t stream_id, uint8_t flags,
                       uint32_t code, const char *reason, size_t reason_len) {
  if (reason_len > KR_MAX_REASON)
    reason_len = KR_MAX_REASON;
  size_t n = put_hdr(out, (uint32_t)(KR__RESET_FIXED + reason_len),
                     KR__FRAME_RESET, flags, stream_id);
  kr__put_u32(out + n, code);
  if (reason_len)
    memcpy(out + n + 4, reason, reason_len);
  return n + KR__RESET_FIXED + reason_len;
}

size_t kr__frame_goaway(uint8_t *out, uint32_t last_stream_id, uint32_t code,
                        const char *reason, size_t reason_len) {
  if (reason_len > KR_MAX_REASON)
    reason_len = KR_MAX_REASON;
  size_t n = put_hdr(out, (uint32_t)(KR__GOAWAY_FIXED + reason_len),
                     KR__FRAME_GOAWAY, 0, 0);
  kr__put_u32(out + n, last_stream_id);
  kr__put_u32(out + n + 4, code);
  if (reason_len)
    memcpy(out + n + 8, reason, reason_len);
  return n + KR__GOAWAY_FIXED + reason_len;
}

size_t kr__frame_window(uint8_t *out, uint32_t stream_id, uint32_t increment) {
  size_t n = put_hdr(out, KR__WINDOW_LEN, KR__FRAME_WINDOW, 0, stream_id);
  kr__put_u32(out + n, increment);
  return n + KR__WINDOW_LEN;
}

size_t kr__frame_ping(uint8_t *out, uint8_t flags, const uint8_t opaque[8]) {
  size_t n = put_hdr(out, KR__PING_LEN, KR__FRAME_PING, flags, 0);
  memcpy(out + n, opaque, 8);
  return n + KR__PING_LEN;
}
