/* Metadata copy into one allocation (see md_dup.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "md_dup.h"

kr_md *kr__md_dup(const kr_md *md, size_t n) {
  if (n > SIZE_MAX / sizeof(kr_md))
    return NULL;
  size_t bytes = n * sizeof(kr_md);
  for (size_t i = 0; i < n; i++) {
    size_t add = md[i].name_len + md[i].value_len;
    if (add < md[i].name_len || bytes + add < bytes)
      return NULL;
    bytes += add;
  }
  kr_md *out = malloc(bytes ? bytes : 1);
  if (!out)
    return NULL;
  uint8_t *q = (uint8_t *)(out + n);
  for (size_t i = 0; i < n; i++) {
    /* memcpy with a NULL source is undefined even for 0 bytes. */
    if (md[i].name_len)
      memcpy(q, md[i].name, md[i].name_len);
    out[i].name = q;
    out[i].name_len = md[i].name_len;
    q += md[i].name_len;
    if (md[i].value_len)
      memcpy(q, md[i].value, md[i].value_len);
    out[i].value = q;
    out[i].value_len = md[i].value_len;
    q += md[i].value_len;
  }
  return out;
}
