/* Copying stream metadata. Internal to the library. */
#ifndef KR_CORE_MD_DUP_H
#define KR_CORE_MD_DUP_H

#include <stddef.h>

#include <kasroute/mux.h>

/* Copies md[0..n) -- the entries and the bytes they point at -- into one
 * malloc()ed block, so the copy outlives md and is released with a single
 * free(). Entries keep their order; an empty value still points into the
 * block. Returns NULL when out of memory or when the total size does not fit
 * a size_t (never for n == 0: a 1-byte block stands in). */
kr_md *kr__md_dup(const kr_md *md, size_t n);

#endif
