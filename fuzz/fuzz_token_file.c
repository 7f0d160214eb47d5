/* libFuzzer target for the agent token file parser
 * (lib/core/token_file.c).
 *
 * Input layout: byte 0 is a configuration byte, the rest is the file text.
 * Bit 0 of byte 0 selects small limits (4 KiB, 8 entries, 100-byte lines)
 * so the limit paths are reached quickly; otherwise the defaults apply.
 *
 * Checks (a violation traps):
 *   - the return code is one of the documented ones and *out is set only
 *     on success;
 *   - an error message starts with the name and is printable ASCII;
 *   - a table's entries are consistent: positive ids, names of at most 255
 *     bytes without control characters other than tab, hashes in strictly
 *     increasing order (no duplicates), and every entry is found again by
 *     its hash with the same id and name;
 *   - looking up the raw input as a token returns 0 or KR_EAUTH.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/token_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      __builtin_trap();                                                        \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1)
    return 0;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  static const kr__token_limits small = {4096, 8, 100};
  const kr__token_limits *lim = (data[0] & 1u) ? &small : NULL;

  kr__token_table *t = (kr__token_table *)1;
  char err[128];
  memset(err, 'X', sizeof err);
  int rc = kr__token_table_parse_limits(NULL, text, len, "fuzz", lim, &t, err,
                                        sizeof err);
  if (rc != 0) {
    CHECK(rc == KR_ECONFIG || rc == KR_ETOOBIG || rc == KR_ENOMEM);
    CHECK(t == NULL);
    CHECK(strncmp(err, "fuzz:", 5) == 0);
    for (const char *p = err; *p; p++)
      CHECK(*p >= 0x20 && *p < 0x7f);
    return 0;
  }
  CHECK(t != NULL);
  CHECK(err[0] == '\0');
  size_t count = kr__token_table_count(t);
  CHECK(count <= (lim ? lim->max_entries : KR__TOKEN_FILE_MAX_ENTRIES));
  CHECK(count <= len / 68 + 1); /* an entry takes at least 68 bytes */
  uint8_t prev[KR__SHA256_LEN];
  for (size_t i = 0; i < count; i++) {
    int64_t id = 0, id2 = 0;
    uint8_t h[KR__SHA256_LEN];
    const char *name = NULL, *name2 = NULL;
    size_t line = 0;
    CHECK(kr__token_table_get(t, i, &id, h, &name, &line) == 0);
    CHECK(id > 0);
    CHECK(line >= 1 && line <= len);
    size_t nl = strlen(name);
    CHECK(nl >= 1 && nl <= KR__TOKEN_NAME_MAX);
    for (size_t j = 0; j < nl; j++) {
      unsigned char c = (unsigned char)name[j];
      CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
      CHECK(c != '#');
    }
    CHECK(name[0] != ' ' && name[0] != '\t');
    CHECK(name[nl - 1] != ' ' && name[nl - 1] != '\t');
    CHECK(i == 0 || memcmp(prev, h, sizeof h) < 0);
    memcpy(prev, h, sizeof h);
    CHECK(kr__token_table_lookup_hash(t, h, &id2, &name2) == 0);
    CHECK(id2 == id && name2 == name);
  }
  CHECK(kr__token_table_get(t, count, NULL, NULL, NULL, NULL) == KR_EINVAL);
  rc = kr__token_table_lookup(t, text, len, NULL, NULL);
  CHECK(rc == 0 || rc == KR_EAUTH);
  kr__token_table_free(t);
  return 0;
}
