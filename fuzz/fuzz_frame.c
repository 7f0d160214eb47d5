/* libFuzzer target for the frame codec (lib/core/frame.h).
 *
 * Every decoder runs on the raw input; whatever a decoder accepts is encoded
 * again and must give back what was decoded (__builtin_trap otherwise):
 *   - the 9-byte header against three receiver maxima: re-encoding an
 *     accepted header must reproduce the input bytes exactly;
 *   - the metadata block: validate, decode, re-encode must be byte-exact and
 *     kr__md_size() must equal the input length;
 *   - the HELLO payload: decode, then encode the decoded fields and decode
 *     that again; the fields must match (unknown settings are dropped by
 *     design, so the comparison is on decoded values, not bytes);
 *   - the control frame builders (RESET, GOAWAY, WINDOW, PING) fed with
 *     values taken from the input: the header they write must decode and
 *     the payload must carry the values back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

static void check_header(const uint8_t *in, size_t len) {
  static const uint32_t maxima[] = {KR_MIN_FRAME_SIZE, 65536,
                                    KR_MAX_FRAME_SIZE};
  if (len < KR_FRAME_HEADER_SIZE)
    return;
  for (size_t i = 0; i < sizeof maxima / sizeof maxima[0]; i++) {
    kr__frame_hdr h;
    const char *reason = NULL;
    memset(&h, 0xa5, sizeof h);
    int rc = kr__frame_hdr_decode(in, maxima[i], &h, &reason);
    if (rc != 0) {
      CHECK(rc == KR_EPROTO || rc == KR_EFRAMESIZE);
      CHECK(reason != NULL);
      continue;
    }
    CHECK(h.length <= maxima[i]);
    CHECK(h.type < KR__FRAME_TYPE_COUNT);
    CHECK((h.stream_id & 0x80000000u) == 0);
    uint8_t out[KR_FRAME_HEADER_SIZE];
    kr__frame_hdr_encode(out, &h);
    CHECK(memcmp(out, in, KR_FRAME_HEADER_SIZE) == 0);
  }
}

/* Validates, decodes and re-encodes a metadata block; returns the entry
 * count or a negative error (then nothing else is checked). */
static int check_md(const uint8_t *in, size_t len) {
  const char *reason = NULL;
  int count = kr__md_validate(in, len, &reason);
  if (count < 0) {
    CHECK(count == KR_EPROTO);
    CHECK(reason != NULL);
    return count;
  }
  /* Every entry takes at least its fixed part plus a one-byte name. */
  CHECK(len >= 2 && (size_t)count <= (len - 2) / (KR__MD_ENTRY_FIXED + 1));
  kr_md *md = calloc((size_t)count + 1, sizeof *md);
  if (md == NULL)
    return count;
  kr__md_decode(in, md, (size_t)count);
  for (int i = 0; i < count; i++) {
    CHECK(md[i].name_len > 0);
    CHECK(md[i].name >= in && md[i].name + md[i].name_len <= in + len);
    CHECK(md[i].value_len == 0 ||
          (md[i].value >= in && md[i].value + md[i].value_len <= in + len));
  }
  size_t need = kr__md_size(md, (size_t)count);
  CHECK(need == len);
  uint8_t *out = malloc(need);
  if (out != NULL) {
    kr__md_encode(out, md, (size_t)count);
    CHECK(memcmp(out, in, len) == 0);
    free(out);
  }
  free(md);
  return count;
}

static void check_hello(const uint8_t *in, size_t len) {
  kr__hello h;
  const char *reason = NULL;
  memset(&h, 0, sizeof h);
  int rc = kr__hello_decode(in, len, &h, &reason);
  if (rc != 0) {
    CHECK(rc == KR_EPROTO);
    CHECK(reason != NULL);
    return;
  }
  CHECK(len >= KR__HELLO_FIXED);
  CHECK(memcmp(in, KR__HELLO_MAGIC, 4) == 0);
  CHECK(h.min_version >= 1 && h.min_version <= h.max_version);
  if (h.settings[KR__SETTING_MAX_FRAME_SIZE] != 0)
    CHECK(h.settings[KR__SETTING_MAX_FRAME_SIZE] >= KR_MIN_FRAME_SIZE &&
          h.settings[KR__SETTING_MAX_FRAME_SIZE] <= KR_MAX_FRAME_SIZE);
  if (h.settings[KR__SETTING_STREAM_WINDOW] != 0)
    CHECK(h.settings[KR__SETTING_STREAM_WINDOW] <= KR_MAX_WINDOW);
  if (h.settings[KR__SETTING_CONNECTION_WINDOW] != 0)
    CHECK(h.settings[KR__SETTING_CONNECTION_WINDOW] <= KR_MAX_WINDOW);
  CHECK(h.md_len <= len - KR__HELLO_FIXED);
  if (h.md_len > 0)
    CHECK(h.md >= in && h.md + h.md_len == in + len);

  int count = check_md(h.md, h.md_len);
  if (count < 0)
    return;
  kr_md *md = calloc((size_t)count + 1, sizeof *md);
  if (md == NULL)
    return;
  kr__md_decode(h.md, md, (size_t)count);
  /* Unknown settings are dropped, so the re-encoding is never longer. */
  size_t cap = len;
  uint8_t *out = malloc(cap);
  if (out != NULL) {
    int n = kr__hello_encode(out, cap, &h, md, (size_t)count);
    CHECK(n > 0 && (size_t)n <= cap);
    kr__hello h2;
    memset(&h2, 0, sizeof h2);
    CHECK(kr__hello_decode(out, (size_t)n, &h2, &reason) == 0);
    CHECK(h2.min_version == h.min_version);
    CHECK(h2.max_version == h.max_version);
    CHECK(h2.role == h.role);
    for (int id = 1; id <= KR__SETTING_LAST; id++)
      CHECK(h2.settings[id] == h.settings[id]);
    CHECK(h2.md_len == h.md_len && memcmp(h2.md, h.md, h.md_len) == 0);
    /* One byte less room than needed must be refused, not overrun. */
    if (n > 0) {
      uint8_t *tight = malloc((size_t)n);
      if (tight != NULL) {
        CHECK(kr__hello_encode(tight, (size_t)n - 1, &h, md, (size_t)count) ==
              KR_ETOOBIG);
        free(tight);
      }
    }
    free(out);
  }
  free(md);
}

/* Decodes the header that a kr__frame_* builder wrote and checks it. */
static const uint8_t *built_header(const uint8_t *frame, size_t n, uint8_t type,
                                   uint8_t flags, uint32_t stream_id) {
  kr__frame_hdr h;
  const char *reason = NULL;
  CHECK(n >= KR_FRAME_HEADER_SIZE && n <= KR__CTRL_FRAME_MAX);
  CHECK(kr__frame_hdr_decode(frame, KR_MIN_FRAME_SIZE, &h, &reason) == 0);
  CHECK(h.type == type && h.flags == flags && h.stream_id == stream_id);
  CHECK(h.length == n - KR_FRAME_HEADER_SIZE);
  return frame + KR_FRAME_HEADER_SIZE;
}

static void check_builders(const uint8_t *in, size_t len) {
  if (len < 16)
    return;
  uint32_t a = kr__get_u32(in) & KR_MAX_STREAM_ID;
  uint32_t b = kr__get_u32(in + 4);
  uint32_t c = kr__get_u32(in + 8) & KR_MAX_WINDOW;
  const char *reason = (const char *)in + 12;
  size_t reason_len = len - 12;
  size_t cut = reason_len > KR_MAX_REASON ? KR_MAX_REASON : reason_len;
  uint8_t frame[KR__CTRL_FRAME_MAX];
  size_t n;

  if (a != 0) {
    uint8_t flags = in[0] & KR__FLAG_ACK;
    n = kr__frame_reset(frame, a, flags, b, reason, reason_len);
    const uint8_t *p = built_header(frame, n, KR__FRAME_RESET, flags, a);
    CHECK(n == KR_FRAME_HEADER_SIZE + KR__RESET_FIXED + cut);
    CHECK(kr__get_u32(p) == b);
    CHECK(memcmp(p + 4, reason, cut) == 0);
  }

  n = kr__frame_goaway(frame, a, b, reason, reason_len);
  const uint8_t *p = built_header(frame, n, KR__FRAME_GOAWAY, 0, 0);
  CHECK(n == KR_FRAME_HEADER_SIZE + KR__GOAWAY_FIXED + cut);
  CHECK(kr__get_u32(p) == a && kr__get_u32(p + 4) == b);
  CHECK(memcmp(p + 8, reason, cut) == 0);

  if (c != 0) {
    n = kr__frame_window(frame, a, c);
    p = built_header(frame, n, KR__FRAME_WINDOW, 0, a);
    CHECK(n == KR_FRAME_HEADER_SIZE + KR__WINDOW_LEN);
    CHECK(kr__get_u32(p) == c);
  }

  uint8_t flags = in[1] & KR__FLAG_ACK;
  n = kr__frame_ping(frame, flags, in + 4);
  p = built_header(frame, n, KR__FRAME_PING, flags, 0);
  CHECK(n == KR_FRAME_HEADER_SIZE + KR__PING_LEN);
  CHECK(memcmp(p, in + 4, 8) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_header(data, size);
  /* A whole frame: the payload after the header is decoded as the type the
   * header names, so seeds that are real frames reach deep paths. */
  if (size >= KR_FRAME_HEADER_SIZE) {
    const uint8_t *pl = data + KR_FRAME_HEADER_SIZE;
    size_t pl_len = size - KR_FRAME_HEADER_SIZE;
    switch (data[3]) {
    case KR__FRAME_OPEN:
    case KR__FRAME_REPLY:
      (void)check_md(pl, pl_len);
      break;
    case KR__FRAME_HELLO:
      check_hello(pl, pl_len);
      break;
    default:
      break;
    }
  }
  /* The whole input as each payload kind. */
  (void)check_md(data, size);
  check_hello(data, size);
  check_builders(data, size);
  return 0;
}
