/* Unit tests: the frame codec (lib/core/frame.c, lib/core/frame.h). */
#include <stdlib.h>
#include <string.h>

#include "core/frame.h"
#include "pair.h"

/* ---------------------------------------------------------------- helpers */

static void raw_hdr(uint8_t out[9], uint32_t len, uint8_t type, uint8_t flags,
                    uint32_t id) {
  kr__put_u24(out, len);
  out[3] = type;
  out[4] = flags;
  kr__put_u32(out + 5, id);
}

/* Decodes a raw header; returns the codec's result and checks the reason
 * contract (a non-empty static string on failure). */
static int dec(uint32_t len, uint8_t type, uint8_t flags, uint32_t id,
               uint32_t max, kr__frame_hdr *h) {
  uint8_t b[9];
  kr__frame_hdr tmp;
  if (!h)
    h = &tmp;
  raw_hdr(b, len, type, flags, id);
  const char *reason = NULL;
  int rc = kr__frame_hdr_decode(b, max, h, &reason);
  if (rc != 0) {
    ck_assert_msg(reason != NULL && reason[0] != 0,
                  "decode of (len %u type %u flags %#x id %#x) failed with %s "
                  "but gave no reason",
                  len, type, flags, id, kr_err_name(rc));
  }
  return rc;
}

#define EXPECT_HDR(rc_expected, len, type, flags, id, max)                     \
  do {                                                                         \
    int rc_ = dec((len), (type), (flags), (id), (max), NULL);                  \
    ck_assert_msg(rc_ == (rc_expected),                                        \
                  "header len %u type %u flags %#x id %#x max %u: got %s, "    \
                  "expected %s",                                               \
                  (unsigned)(len), (unsigned)(type), (unsigned)(flags),        \
                  (unsigned)(id), (unsigned)(max), kr_err_name(rc_),           \
                  kr_err_name(rc_expected));                                   \
  } while (0)

static const uint8_t all_types[] = {
    KR__FRAME_DATA,   KR__FRAME_OPEN, KR__FRAME_REPLY,  KR__FRAME_RESET,
    KR__FRAME_WINDOW, KR__FRAME_PING, KR__FRAME_GOAWAY, KR__FRAME_HELLO};

/* A payload length that is valid for the type. */
static uint32_t good_len(uint8_t type) {
  switch (type) {
  case KR__FRAME_WINDOW:
    return 4;
  case KR__FRAME_PING:
    return 8;
  case KR__FRAME_RESET:
    return 4;
  case KR__FRAME_GOAWAY:
    return 8;
  case KR__FRAME_HELLO:
    return 12;
  case KR__FRAME_OPEN:
  case KR__FRAME_REPLY:
    return 2;
  default:
    return 100;
  }
}

static uint32_t good_id(uint8_t type) {
  switch (type) {
  case KR__FRAME_PING:
  case KR__FRAME_GOAWAY:
  case KR__FRAME_HELLO:
    return 0;
  default:
    return 7;
  }
}

static uint8_t allowed_flags(uint8_t type) {
  switch (type) {
  case KR__FRAME_DATA:
  case KR__FRAME_OPEN:
  case KR__FRAME_REPLY:
    return KR__FLAG_FIN;
  case KR__FRAME_RESET:
  case KR__FRAME_PING:
    return KR__FLAG_ACK;
  default:
    return 0;
  }
}

/* ------------------------------------------------------------- the header */

START_TEST(hdr_constants) {
  ck_assert_int_eq(KR_FRAME_HEADER_SIZE, 9);
  ck_assert_int_eq(KR__FRAME_TYPE_COUNT, 8);
  ck_assert_int_eq(KR__HELLO_FIXED, 10);
  ck_assert_int_eq(KR__MD_ENTRY_FIXED, 6);
  ck_assert_uint_eq(KR__CTRL_FRAME_MAX, 9 + 8 + 256);
  uint8_t b[4];
  kr__put_u16(b, 0xabcd);
  ck_assert_uint_eq(b[0], 0xab);
  ck_assert_uint_eq(b[1], 0xcd);
  ck_assert_uint_eq(kr__get_u16(b), 0xabcd);
  kr__put_u24(b, 0x123456);
  ck_assert_uint_eq(b[0], 0x12);
  ck_assert_uint_eq(b[2], 0x56);
  ck_assert_uint_eq(kr__get_u24(b), 0x123456);
  kr__put_u32(b, 0xfedcba98u);
  ck_assert_uint_eq(b[0], 0xfe);
  ck_assert_uint_eq(b[3], 0x98);
  ck_assert_uint_eq(kr__get_u32(b), 0xfedcba98u);
}
END_TEST

START_TEST(hdr_round_trip) {
  kt_rng r;
  kt_rng_seed(&r, kt_seed("hdr_round_trip", 0x5eed01));
  for (int i = 0; i < 20000; i++) {
    kr__frame_hdr in, out;
    memset(&out, 0xaa, sizeof out);
    in.type = all_types[kt_rng_below(&r, 8)];
    uint8_t fl = allowed_flags(in.type);
    in.flags = fl && kt_rng_below(&r, 2) ? fl : 0;
    uint32_t max =
        (uint32_t)kt_rng_range(&r, KR_MIN_FRAME_SIZE, KR_MAX_FRAME_SIZE);
    switch (in.type) {
    case KR__FRAME_WINDOW:
      in.length = 4;
      in.stream_id = (uint32_t)kt_rng_below(&r, 2)
                         ? 0
                         : (uint32_t)kt_rng_range(&r, 1, KR_MAX_STREAM_ID);
      break;
    case KR__FRAME_PING:
      in.length = 8;
      in.stream_id = 0;
      break;
    case KR__FRAME_RESET:
      in.length = (uint32_t)kt_rng_range(&r, 4, 4 + KR_MAX_REASON);
      in.stream_id = (uint32_t)kt_rng_range(&r, 1, KR_MAX_STREAM_ID);
      break;
    case KR__FRAME_GOAWAY:
      in.length = (uint32_t)kt_rng_range(&r, 8, 8 + KR_MAX_REASON);
      in.stream_id = 0;
      break;
    case KR__FRAME_HELLO:
      in.length = (uint32_t)kt_rng_range(&r, 12, KR_MIN_FRAME_SIZE);
      in.stream_id = 0;
      break;
    default:
      in.length = (uint32_t)kt_rng_range(&r, in.type == 0 ? 0 : 2, max);
      in.stream_id = (uint32_t)kt_rng_range(&r, 1, KR_MAX_STREAM_ID);
      break;
    }
    uint8_t b[9];
    kr__frame_hdr_encode(b, &in);
    ck_assert_uint_eq(kr__get_u24(b), in.length);
    ck_assert_uint_eq(b[3], in.type);
    ck_assert_uint_eq(b[4], in.flags);
    ck_assert_uint_eq(kr__get_u32(b + 5), in.stream_id);
    const char *reason = NULL;
    int rc = kr__frame_hdr_decode(b, max, &out, &reason);
    ck_assert_msg(rc == 0,
                  "round trip %d: type %u flags %#x len %u id %u max %u: %s "
                  "(%s)",
                  i, in.type, in.flags, in.length, in.stream_id, max,
                  kr_err_name(rc), reason ? reason : "");
    ck_assert_uint_eq(out.length, in.length);
    ck_assert_uint_eq(out.type, in.type);
    ck_assert_uint_eq(out.flags, in.flags);
    ck_assert_uint_eq(out.stream_id, in.stream_id);
  }
}
END_TEST

START_TEST(hdr_payload_lengths) {
  const uint32_t maxes[] = {KR_MIN_FRAME_SIZE, 65536, 1000000,
                            KR_MAX_FRAME_SIZE};
  for (size_t i = 0; i < sizeof maxes / sizeof maxes[0]; i++) {
    uint32_t max = maxes[i];
    kr__frame_hdr h;
    ck_assert_int_eq(dec(0, KR__FRAME_DATA, 0, 1, max, &h), 0);
    ck_assert_uint_eq(h.length, 0);
    ck_assert_int_eq(dec(1, KR__FRAME_DATA, 0, 1, max, &h), 0);
    ck_assert_uint_eq(h.length, 1);
    ck_assert_int_eq(dec(max - 1, KR__FRAME_DATA, 0, 1, max, &h), 0);
    ck_assert_uint_eq(h.length, max - 1);
    ck_assert_int_eq(dec(max, KR__FRAME_DATA, KR__FLAG_FIN, 1, max, &h), 0);
    ck_assert_uint_eq(h.length, max);
    if (max < KR_MAX_FRAME_SIZE) {
      EXPECT_HDR(KR_EFRAMESIZE, max + 1, KR__FRAME_DATA, 0, 1, max);
      EXPECT_HDR(KR_EFRAMESIZE, KR_MAX_FRAME_SIZE, KR__FRAME_DATA, 0, 1, max);
      /* The size limit applies to every type. */
      EXPECT_HDR(KR_EFRAMESIZE, max + 1, KR__FRAME_OPEN, 0, 1, max);
      EXPECT_HDR(KR_EFRAMESIZE, max + 1, KR__FRAME_HELLO, 0, 0, max);
    }
  }
}
END_TEST

START_TEST(hdr_reserved_bit) {
  for (size_t i = 0; i < 8; i++) {
    uint8_t t = all_types[i];
    EXPECT_HDR(0, good_len(t), t, 0, good_id(t), 65536);
    EXPECT_HDR(KR_EPROTO, good_len(t), t, 0, good_id(t) | 0x80000000u, 65536);
  }
  EXPECT_HDR(KR_EPROTO, 0, KR__FRAME_DATA, 0, 0xffffffffu, 65536);
}
END_TEST

START_TEST(hdr_unknown_type) {
  for (unsigned t = KR__FRAME_TYPE_COUNT; t <= 255; t++) {
    EXPECT_HDR(KR_EPROTO, 0, t, 0, 0, 65536);
    EXPECT_HDR(KR_EPROTO, 4, t, 0, 1, 65536);
  }
}
END_TEST

START_TEST(hdr_flags) {
  for (size_t i = 0; i < 8; i++) {
    uint8_t t = all_types[i];
    uint8_t ok = allowed_flags(t);
    for (unsigned f = 0; f <= 255; f++) {
      int want = (f & ~ok) ? KR_EPROTO : 0;
      EXPECT_HDR(want, good_len(t), t, f, good_id(t), 65536);
    }
  }
}
END_TEST

START_TEST(hdr_stream_id_class) {
  /* DATA, OPEN, REPLY, RESET need a stream; PING, GOAWAY, HELLO need 0;
   * WINDOW takes both. */
  const uint8_t need_stream[] = {KR__FRAME_DATA, KR__FRAME_OPEN,
                                 KR__FRAME_REPLY, KR__FRAME_RESET};
  const uint8_t need_zero[] = {KR__FRAME_PING, KR__FRAME_GOAWAY,
                               KR__FRAME_HELLO};
  for (size_t i = 0; i < sizeof need_stream; i++) {
    uint8_t t = need_stream[i];
    EXPECT_HDR(KR_EPROTO, good_len(t), t, 0, 0, 65536);
    EXPECT_HDR(0, good_len(t), t, 0, 1, 65536);
    EXPECT_HDR(0, good_len(t), t, 0, 2, 65536);
    EXPECT_HDR(0, good_len(t), t, 0, KR_MAX_STREAM_ID, 65536);
  }
  for (size_t i = 0; i < sizeof need_zero; i++) {
    uint8_t t = need_zero[i];
    EXPECT_HDR(0, good_len(t), t, 0, 0, 65536);
    EXPECT_HDR(KR_EPROTO, good_len(t), t, 0, 1, 65536);
    EXPECT_HDR(KR_EPROTO, good_len(t), t, 0, 2, 65536);
    EXPECT_HDR(KR_EPROTO, good_len(t), t, 0, KR_MAX_STREAM_ID, 65536);
  }
  EXPECT_HDR(0, 4, KR__FRAME_WINDOW, 0, 0, 65536);
  EXPECT_HDR(0, 4, KR__FRAME_WINDOW, 0, 1, 65536);
  EXPECT_HDR(0, 4, KR__FRAME_WINDOW, 0, KR_MAX_STREAM_ID, 65536);
}
END_TEST

START_TEST(hdr_fixed_sizes) {
  for (uint32_t len = 0; len <= 300; len++) {
    EXPECT_HDR(len == 4 ? 0 : KR_EPROTO, len, KR__FRAME_WINDOW, 0, 0, 65536);
    EXPECT_HDR(len == 4 ? 0 : KR_EPROTO, len, KR__FRAME_WINDOW, 0, 3, 65536);
    EXPECT_HDR(len == 8 ? 0 : KR_EPROTO, len, KR__FRAME_PING, 0, 0, 65536);
    EXPECT_HDR(len == 8 ? 0 : KR_EPROTO, len, KR__FRAME_PING, KR__FLAG_ACK, 0,
               65536);
    EXPECT_HDR((len >= 4 && len <= 4 + KR_MAX_REASON) ? 0 : KR_EPROTO, len,
               KR__FRAME_RESET, 0, 5, 65536);
    EXPECT_HDR((len >= 4 && len <= 4 + KR_MAX_REASON) ? 0 : KR_EPROTO, len,
               KR__FRAME_RESET, KR__FLAG_ACK, 5, 65536);
    EXPECT_HDR((len >= 8 && len <= 8 + KR_MAX_REASON) ? 0 : KR_EPROTO, len,
               KR__FRAME_GOAWAY, 0, 0, 65536);
  }
  /* Far past the fixed size but under the frame limit: still PROTOCOL. */
  EXPECT_HDR(KR_EPROTO, 65536, KR__FRAME_WINDOW, 0, 0, 65536);
  EXPECT_HDR(KR_EPROTO, 65536, KR__FRAME_PING, 0, 0, 65536);
  EXPECT_HDR(KR_EPROTO, 65536, KR__FRAME_RESET, 0, 1, 65536);
  EXPECT_HDR(KR_EPROTO, 65536, KR__FRAME_GOAWAY, 0, 0, 65536);
  /* Over the frame limit: FRAME_SIZE wins (the length is checked first so
   * the reader never waits for an oversized payload). */
  EXPECT_HDR(KR_EFRAMESIZE, 65537, KR__FRAME_DATA, 0, 1, 65536);
}
END_TEST

/* ------------------------------------------------------------ control frames
 */

static void check_ctrl(const uint8_t *f, size_t n, uint8_t type, uint8_t flags,
                       uint32_t id, uint32_t payload_len) {
  ck_assert_uint_eq(n, 9 + payload_len);
  ck_assert_uint_le(n, KR__CTRL_FRAME_MAX);
  kr__frame_hdr h;
  const char *reason = NULL;
  int rc = kr__frame_hdr_decode(f, KR_MIN_FRAME_SIZE, &h, &reason);
  ck_assert_msg(rc == 0, "own control frame type %u rejected: %s (%s)", type,
                kr_err_name(rc), reason ? reason : "");
  ck_assert_uint_eq(h.type, type);
  ck_assert_uint_eq(h.flags, flags);
  ck_assert_uint_eq(h.stream_id, id);
  ck_assert_uint_eq(h.length, payload_len);
}

START_TEST(ctrl_frames) {
  uint8_t f[KR__CTRL_FRAME_MAX + 64];
  memset(f, 0xee, sizeof f);
  size_t n = kr__frame_reset(f, 5, 0, KR_CODE_CANCEL, "bye", 3);
  check_ctrl(f, n, KR__FRAME_RESET, 0, 5, 7);
  ck_assert_uint_eq(kr__get_u32(f + 9), KR_CODE_CANCEL);
  ck_assert_mem_eq(f + 13, "bye", 3);

  n = kr__frame_reset(f, KR_MAX_STREAM_ID, KR__FLAG_ACK, 77, NULL, 0);
  check_ctrl(f, n, KR__FRAME_RESET, KR__FLAG_ACK, KR_MAX_STREAM_ID, 4);
  ck_assert_uint_eq(kr__get_u32(f + 9), 77);

  char longr[400];
  memset(longr, 'r', sizeof longr);
  longr[0] = 'R';
  memset(f, 0xee, sizeof f);
  n = kr__frame_reset(f, 9, 0, KR_CODE_INTERNAL, longr, sizeof longr);
  check_ctrl(f, n, KR__FRAME_RESET, 0, 9, 4 + KR_MAX_REASON);
  ck_assert_mem_eq(f + 13, longr, KR_MAX_REASON);
  ck_assert_uint_eq(f[n], 0xee); /* nothing written past the frame */

  memset(f, 0xee, sizeof f);
  n = kr__frame_goaway(f, 41, KR_CODE_SHUTDOWN, "drain", 5);
  check_ctrl(f, n, KR__FRAME_GOAWAY, 0, 0, 13);
  ck_assert_uint_eq(kr__get_u32(f + 9), 41);
  ck_assert_uint_eq(kr__get_u32(f + 13), KR_CODE_SHUTDOWN);
  ck_assert_mem_eq(f + 17, "drain", 5);

  memset(f, 0xee, sizeof f);
  n = kr__frame_goaway(f, 0, KR_CODE_PROTOCOL, longr, sizeof longr);
  check_ctrl(f, n, KR__FRAME_GOAWAY, 0, 0, 8 + KR_MAX_REASON);
  ck_assert_mem_eq(f + 17, longr, KR_MAX_REASON);
  ck_assert_uint_eq(f[n], 0xee);

  n = kr__frame_window(f, 0, 12345);
  check_ctrl(f, n, KR__FRAME_WINDOW, 0, 0, 4);
  ck_assert_uint_eq(kr__get_u32(f + 9), 12345);
  n = kr__frame_window(f, 3, KR_MAX_WINDOW);
  check_ctrl(f, n, KR__FRAME_WINDOW, 0, 3, 4);
  ck_assert_uint_eq(kr__get_u32(f + 9), KR_MAX_WINDOW);

  const uint8_t op[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  n = kr__frame_ping(f, 0, op);
  check_ctrl(f, n, KR__FRAME_PING, 0, 0, 8);
  ck_assert_mem_eq(f + 9, op, 8);
  n = kr__frame_ping(f, KR__FLAG_ACK, op);
  check_ctrl(f, n, KR__FRAME_PING, KR__FLAG_ACK, 0, 8);
  ck_assert_mem_eq(f + 9, op, 8);
}
END_TEST

/* --------------------------------------------------------------- metadata */

static void md_round_trip(const kr_md *md, size_t n) {
  size_t sz = kr__md_size(md, n);
  size_t expect = 2;
  for (size_t i = 0; i < n; i++)
    expect += 6 + md[i].name_len + md[i].value_len;
  ck_assert_uint_eq(sz, expect);
  uint8_t *buf = malloc(sz + 1);
  ck_assert_ptr_nonnull(buf);
  buf[sz] = 0x5a;
  kr__md_encode(buf, md, n);
  ck_assert_uint_eq(buf[sz], 0x5a);
  ck_assert_uint_eq(kr__get_u16(buf), n);
  const char *reason = NULL;
  int count = kr__md_validate(buf, sz, &reason);
  ck_assert_msg(count == (int)n, "kr__md_validate: %d (%s), expected %zu",
                count, reason ? reason : "", n);
  kr_md *out = calloc(n ? n : 1, sizeof *out);
  ck_assert_ptr_nonnull(out);
  kr__md_decode(buf, out, (size_t)count);
  for (size_t i = 0; i < n; i++) {
    ck_assert_uint_eq(out[i].name_len, md[i].name_len);
    ck_assert_uint_eq(out[i].value_len, md[i].value_len);
    ck_assert_mem_eq(out[i].name, md[i].name, md[i].name_len);
    if (md[i].value_len)
      ck_assert_mem_eq(out[i].value, md[i].value, md[i].value_len);
    /* Decoded entries point into the block. */
    ck_assert_msg(out[i].name >= buf && out[i].name < buf + sz,
                  "entry %zu name does not point into the block", i);
  }
  free(out);
  free(buf);
}

START_TEST(md_round_trips) {
  md_round_trip(NULL, 0);
  kr_md one = kt_md(":service", "kubernetes");
  md_round_trip(&one, 1);

  static const uint8_t bin_name[] = {0x00, 0xff, 0x0a, 0x80, ':'};
  static const uint8_t bin_val[] = {0x00, 0x00, 0xc3, 0x28, 0xff, 0x0d, 0x0a};
  kr_md many[40];
  char names[40][16];
  for (int i = 0; i < 40; i++) {
    snprintf(names[i], sizeof names[i], "h-%d", i);
    many[i] = kt_md(names[i], i % 3 ? "value" : "");
  }
  many[5].name = bin_name;
  many[5].name_len = sizeof bin_name;
  many[5].value = bin_val;
  many[5].value_len = sizeof bin_val;
  many[6] = kt_md("dup", "1");
  many[7] = kt_md("dup", "2");
  many[8].value = NULL; /* empty value given as NULL */
  many[8].value_len = 0;
  md_round_trip(many, 40);

  /* A large value. */
  size_t big = 60000;
  uint8_t *v = malloc(big);
  ck_assert_ptr_nonnull(v);
  kt_pattern(3, 0, v, big);
  kr_md bigmd = {(const uint8_t *)"x", 1, v, big};
  md_round_trip(&bigmd, 1);
  free(v);
}
END_TEST

START_TEST(md_size_limits) {
  kr_md e = {(const uint8_t *)"", 0, (const uint8_t *)"v", 1};
  ck_assert_uint_eq(kr__md_size(&e, 1), 0);
  kr_md two[2] = {kt_md("a", "b"), e};
  ck_assert_uint_eq(kr__md_size(two, 2), 0);

  /* A 65535-byte name is the most a u16 can say; one more cannot encode. */
  uint8_t *name = malloc(65536);
  ck_assert_ptr_nonnull(name);
  memset(name, 'n', 65536);
  kr_md n1 = {name, 65535, NULL, 0};
  ck_assert_uint_eq(kr__md_size(&n1, 1), 2 + 6 + 65535);
  kr_md n2 = {name, 65536, NULL, 0};
  ck_assert_uint_eq(kr__md_size(&n2, 1), 0);
  free(name);

  /* A value over 2^32-1 bytes cannot encode (the size is never read). */
  if (sizeof(size_t) > 4) {
    kr_md huge = {(const uint8_t *)"v", 1, (const uint8_t *)"x",
                  (size_t)UINT32_MAX + 1};
    ck_assert_uint_eq(kr__md_size(&huge, 1), 0);
  }

  /* More than 65535 entries cannot encode. */
  size_t cnt = 65536;
  kr_md *lots = malloc(cnt * sizeof *lots);
  ck_assert_ptr_nonnull(lots);
  for (size_t i = 0; i < cnt; i++)
    lots[i] = kt_md("a", "");
  ck_assert_uint_eq(kr__md_size(lots, 65535), 2 + 65535 * 7);
  ck_assert_uint_eq(kr__md_size(lots, cnt), 0);
  free(lots);
}
END_TEST

/* Builders for hand-made (possibly lying) metadata blocks. */
typedef struct mdb {
  uint8_t b[512];
  size_t n;
} mdb;

static void mdb_u16(mdb *m, uint16_t v) {
  kr__put_u16(m->b + m->n, v);
  m->n += 2;
}
static void mdb_u32(mdb *m, uint32_t v) {
  kr__put_u32(m->b + m->n, v);
  m->n += 4;
}
static void mdb_bytes(mdb *m, const char *s, size_t n) {
  memcpy(m->b + m->n, s, n);
  m->n += n;
}
static void mdb_entry(mdb *m, const char *name, const char *value) {
  mdb_u16(m, (uint16_t)strlen(name));
  mdb_u32(m, (uint32_t)strlen(value));
  mdb_bytes(m, name, strlen(name));
  mdb_bytes(m, value, strlen(value));
}

static void expect_md_bad(const mdb *m, const char *what) {
  const char *reason = NULL;
  int rc = kr__md_validate(m->b, m->n, &reason);
  ck_assert_msg(rc == KR_EPROTO, "%s: kr__md_validate returned %d (%s)", what,
                rc, rc < 0 ? kr_err_name(rc) : "accepted");
  ck_assert_msg(reason != NULL && reason[0] != 0, "%s: no reason", what);
}

static void expect_md_good(const mdb *m, int count, const char *what) {
  const char *reason = NULL;
  int rc = kr__md_validate(m->b, m->n, &reason);
  ck_assert_msg(rc == count, "%s: kr__md_validate returned %d (%s)", what, rc,
                reason ? reason : "");
}

START_TEST(md_lies) {
  mdb m;

  memset(&m, 0, sizeof m);
  m.n = 0;
  expect_md_bad(&m, "empty payload (no count)");
  m.n = 1;
  expect_md_bad(&m, "one byte (half a count)");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 0);
  expect_md_good(&m, 0, "zero entries");
  m.b[m.n++] = 0;
  expect_md_bad(&m, "zero entries + trailing byte");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_entry(&m, "name", "value");
  expect_md_good(&m, 1, "one entry");
  m.b[m.n++] = 'x';
  expect_md_bad(&m, "trailing garbage");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_u16(&m, 10); /* name length 10, only 3 bytes follow */
  mdb_u32(&m, 0);
  mdb_bytes(&m, "abc", 3);
  expect_md_bad(&m, "name length past the end");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_u16(&m, 0xffff);
  mdb_u32(&m, 0);
  mdb_bytes(&m, "abc", 3);
  expect_md_bad(&m, "name length 65535 past the end");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_u16(&m, 3);
  mdb_u32(&m, 5); /* value length 5, only 2 bytes follow */
  mdb_bytes(&m, "abc", 3);
  mdb_bytes(&m, "vv", 2);
  expect_md_bad(&m, "value length past the end");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_u16(&m, 3);
  mdb_u32(&m, 0xffffffffu); /* would wrap a 32-bit offset */
  mdb_bytes(&m, "abc", 3);
  expect_md_bad(&m, "value length 2^32-1");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_u16(&m, 3);
  mdb_u32(&m, 0xfffffffdu);
  mdb_bytes(&m, "abcdef", 6);
  expect_md_bad(&m, "value length wrapping to the end");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 3); /* says 3, holds 2 */
  mdb_entry(&m, "a", "1");
  mdb_entry(&m, "b", "2");
  expect_md_bad(&m, "count larger than entries present");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 0xffff);
  mdb_entry(&m, "a", "1");
  expect_md_bad(&m, "count 65535 with one entry");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1); /* says 1, holds 2 */
  mdb_entry(&m, "a", "1");
  mdb_entry(&m, "b", "2");
  expect_md_bad(&m, "count smaller than entries present");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_entry(&m, "", "value");
  expect_md_bad(&m, "empty name");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 2);
  mdb_entry(&m, "ok", "1");
  mdb_entry(&m, "", "");
  expect_md_bad(&m, "empty name in the second entry");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 1);
  mdb_u16(&m, 3);
  mdb_bytes(&m, "\0\0", 2); /* entry header cut in the middle */
  expect_md_bad(&m, "truncated entry header");

  memset(&m, 0, sizeof m);
  mdb_u16(&m, 2);
  mdb_entry(&m, "a", "");
  mdb_entry(&m, ":x", "");
  expect_md_good(&m, 2, "empty values");
}
END_TEST

/* ------------------------------------------------------------------ HELLO */

START_TEST(hello_round_trip) {
  kr__hello h;
  memset(&h, 0, sizeof h);
  h.min_version = 1;
  h.max_version = 3;
  h.role = KR_ROLE_ACCEPTOR;
  h.settings[KR__SETTING_MAX_FRAME_SIZE] = 100000;
  h.settings[KR__SETTING_STREAM_WINDOW] = 1;
  h.settings[KR__SETTING_CONNECTION_WINDOW] = KR_MAX_WINDOW;
  h.settings[KR__SETTING_MAX_STREAMS] = 7;
  kr_md md[2] = {kt_md(":token", "s3cr3t"), kt_md(":name", "replica-0")};

  uint8_t buf[KR_MIN_FRAME_SIZE];
  int n = kr__hello_encode(buf, sizeof buf, &h, md, 2);
  size_t mdsz = kr__md_size(md, 2);
  ck_assert_int_eq(n, (int)(KR__HELLO_FIXED + 4 * 6 + mdsz));
  ck_assert_mem_eq(buf, "KRMX", 4);
  ck_assert_uint_eq(buf[4], 1);
  ck_assert_uint_eq(buf[5], 3);
  ck_assert_uint_eq(buf[6], KR_ROLE_ACCEPTOR);
  ck_assert_uint_eq(buf[7], 0);
  ck_assert_uint_eq(kr__get_u16(buf + 8), 4);

  kr__hello d;
  memset(&d, 0xcc, sizeof d);
  const char *reason = NULL;
  int rc = kr__hello_decode(buf, (size_t)n, &d, &reason);
  ck_assert_msg(rc == 0, "decode of own HELLO: %s (%s)", kr_err_name(rc),
                reason ? reason : "");
  ck_assert_uint_eq(d.min_version, 1);
  ck_assert_uint_eq(d.max_version, 3);
  ck_assert_uint_eq(d.role, KR_ROLE_ACCEPTOR);
  for (int i = 1; i <= KR__SETTING_LAST; i++)
    ck_assert_msg(d.settings[i] == h.settings[i], "setting %d: %u != %u", i,
                  d.settings[i], h.settings[i]);
  ck_assert_uint_eq(d.md_len, mdsz);
  ck_assert_ptr_eq(d.md, buf + n - mdsz);
  ck_assert_int_eq(kr__md_validate(d.md, d.md_len, &reason), 2);

  /* No settings, no metadata: absent settings decode as 0. */
  memset(&h, 0, sizeof h);
  h.min_version = h.max_version = 1;
  h.role = KR_ROLE_DIALER;
  n = kr__hello_encode(buf, sizeof buf, &h, NULL, 0);
  ck_assert_int_eq(n, KR__HELLO_FIXED + 2);
  memset(&d, 0xcc, sizeof d);
  ck_assert_int_eq(kr__hello_decode(buf, (size_t)n, &d, &reason), 0);
  for (int i = 1; i <= KR__SETTING_LAST; i++)
    ck_assert_uint_eq(d.settings[i], 0);
  ck_assert_uint_eq(d.role, KR_ROLE_DIALER);
  ck_assert_uint_eq(d.md_len, 2);

  /* Only some settings set: only those are encoded. */
  h.settings[KR__SETTING_STREAM_WINDOW] = 4096;
  n = kr__hello_encode(buf, sizeof buf, &h, NULL, 0);
  ck_assert_int_eq(n, KR__HELLO_FIXED + 6 + 2);
  ck_assert_int_eq(kr__hello_decode(buf, (size_t)n, &d, &reason), 0);
  ck_assert_uint_eq(d.settings[KR__SETTING_STREAM_WINDOW], 4096);
  ck_assert_uint_eq(d.settings[KR__SETTING_MAX_FRAME_SIZE], 0);

  /* cap too small */
  ck_assert_int_eq(kr__hello_encode(buf, (size_t)n - 1, &h, NULL, 0),
                   KR_ETOOBIG);
  uint8_t *bigv = calloc(1, KR_MIN_FRAME_SIZE);
  ck_assert_ptr_nonnull(bigv);
  kr_md big = {(const uint8_t *)":token", 6, bigv, KR_MIN_FRAME_SIZE};
  ck_assert_int_eq(kr__hello_encode(buf, sizeof buf, &h, &big, 1), KR_ETOOBIG);
  free(bigv);
}
END_TEST

/* Hand-made HELLO payloads. */
typedef struct hb {
  uint8_t b[256];
  size_t n;
} hb;

static void hb_start(hb *h, const char *magic, uint8_t minv, uint8_t maxv,
                     uint8_t role, uint16_t nsettings) {
  memset(h, 0, sizeof *h);
  memcpy(h->b, magic, 4);
  h->b[4] = minv;
  h->b[5] = maxv;
  h->b[6] = role;
  h->b[7] = 0;
  kr__put_u16(h->b + 8, nsettings);
  h->n = 10;
}
static void hb_setting(hb *h, uint16_t id, uint32_t v) {
  kr__put_u16(h->b + h->n, id);
  kr__put_u32(h->b + h->n + 2, v);
  h->n += 6;
}
static void hb_md_empty(hb *h) {
  kr__put_u16(h->b + h->n, 0);
  h->n += 2;
}

static int hb_decode(const hb *h, kr__hello *d) {
  const char *reason = NULL;
  int rc = kr__hello_decode(h->b, h->n, d, &reason);
  if (rc != 0)
    ck_assert_msg(reason && reason[0], "HELLO rejected without a reason");
  return rc;
}

#define EXPECT_HELLO(rc_expected, hbp, what)                                   \
  do {                                                                         \
    kr__hello d_;                                                              \
    int rc_ = hb_decode((hbp), &d_);                                           \
    ck_assert_msg(rc_ == (rc_expected), "%s: got %s, expected %s", (what),     \
                  kr_err_name(rc_), kr_err_name(rc_expected));                 \
  } while (0)

START_TEST(hello_bad) {
  hb h;
  hb_start(&h, "KRMX", 1, 1, 1, 0);
  hb_md_empty(&h);
  EXPECT_HELLO(0, &h, "minimal HELLO");

  hb_start(&h, "KRMY", 1, 1, 1, 0);
  hb_md_empty(&h);
  EXPECT_HELLO(KR_EPROTO, &h, "bad magic");
  hb_start(&h, "krmx", 1, 1, 1, 0);
  hb_md_empty(&h);
  EXPECT_HELLO(KR_EPROTO, &h, "lower-case magic");

  hb_start(&h, "KRMX", 2, 1, 1, 0);
  hb_md_empty(&h);
  EXPECT_HELLO(KR_EPROTO, &h, "min > max");
  hb_start(&h, "KRMX", 0, 1, 1, 0);
  hb_md_empty(&h);
  EXPECT_HELLO(KR_EPROTO, &h, "min version 0");
  hb_start(&h, "KRMX", 0, 0, 1, 0);
  hb_md_empty(&h);
  EXPECT_HELLO(KR_EPROTO, &h, "version 0..0");
  hb_start(&h, "KRMX", 2, 200, 2, 0);
  hb_md_empty(&h);
  EXPECT_HELLO(0, &h, "future versions decode (negotiation is the mux's)");

  /* Truncations. */
  hb_start(&h, "KRMX", 1, 1, 1, 0);
  for (size_t n = 0; n < KR__HELLO_FIXED; n++) {
    h.n = n;
    EXPECT_HELLO(KR_EPROTO, &h, "truncated fixed part");
  }
  hb_start(&h, "KRMX", 1, 1, 1, 2);
  hb_setting(&h, 1, 65536);
  EXPECT_HELLO(KR_EPROTO, &h, "setting count larger than settings present");
  hb_start(&h, "KRMX", 1, 1, 1, 1);
  hb_setting(&h, 1, 65536);
  h.n -= 2;
  EXPECT_HELLO(KR_EPROTO, &h, "setting cut in the middle");

  /* Repeated known setting. */
  for (uint16_t id = 1; id <= KR__SETTING_LAST; id++) {
    hb_start(&h, "KRMX", 1, 1, 1, 2);
    hb_setting(&h, id, 65536);
    hb_setting(&h, id, 65536);
    hb_md_empty(&h);
    EXPECT_HELLO(KR_EPROTO, &h, "repeated known setting");
  }

  /* Ranges. */
  static const struct {
    uint16_t id;
    uint32_t v;
    int ok;
  } ranges[] = {
      {1, 16383, 0},       {1, 16384, 1},       {1, 16777215, 1},
      {1, 16777216, 0},    {1, 0, 0},           {1, UINT32_MAX, 0},
      {2, 0, 0},           {2, 1, 1},           {2, 2147483647u, 1},
      {2, 2147483648u, 0}, {2, UINT32_MAX, 0},  {3, 0, 0},
      {3, 1, 1},           {3, 2147483647u, 1}, {3, 2147483648u, 0},
      {4, 0, 0},           {4, 1, 1},           {4, UINT32_MAX, 1},
  };
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
    hb_start(&h, "KRMX", 1, 1, 1, 1);
    hb_setting(&h, ranges[i].id, ranges[i].v);
    hb_md_empty(&h);
    kr__hello d;
    int rc = hb_decode(&h, &d);
    ck_assert_msg(rc == (ranges[i].ok ? 0 : KR_EPROTO),
                  "setting %u = %u: got %s, expected %s", ranges[i].id,
                  ranges[i].v, kr_err_name(rc), ranges[i].ok ? "OK" : "PROTO");
    if (ranges[i].ok)
      ck_assert_uint_eq(d.settings[ranges[i].id], ranges[i].v);
  }

  /* Unknown settings are ignored, even repeated, even with wild values. */
  hb_start(&h, "KRMX", 1, 1, 2, 5);
  hb_setting(&h, 99, 0);
  hb_setting(&h, 2, 12345);
  hb_setting(&h, 0, UINT32_MAX);
  hb_setting(&h, 0xffff, 1);
  hb_setting(&h, 99, 7);
  hb_md_empty(&h);
  kr__hello d;
  ck_assert_int_eq(hb_decode(&h, &d), 0);
  ck_assert_uint_eq(d.settings[KR__SETTING_STREAM_WINDOW], 12345);
  ck_assert_uint_eq(d.settings[KR__SETTING_MAX_FRAME_SIZE], 0);
  ck_assert_uint_eq(d.settings[KR__SETTING_MAX_STREAMS], 0);
  ck_assert_uint_eq(d.role, 2);
  ck_assert_uint_eq(d.md_len, 2);
  ck_assert_ptr_eq(d.md, h.b + h.n - 2);
}
END_TEST

int main(void) {
  Suite *s = suite_create("frame");
  KT_ADD(s, hdr_constants, 10);
  KT_ADD(s, hdr_round_trip, 20);
  KT_ADD(s, hdr_payload_lengths, 10);
  KT_ADD(s, hdr_reserved_bit, 10);
  KT_ADD(s, hdr_unknown_type, 10);
  KT_ADD(s, hdr_flags, 10);
  KT_ADD(s, hdr_stream_id_class, 10);
  KT_ADD(s, hdr_fixed_sizes, 10);
  KT_ADD(s, ctrl_frames, 10);
  KT_ADD(s, md_round_trips, 10);
  KT_ADD(s, md_size_limits, 10);
  KT_ADD(s, md_lies, 10);
  KT_ADD(s, hello_round_trip, 10);
  KT_ADD(s, hello_bad, 10);
  return kt_run_suite(s);
}
