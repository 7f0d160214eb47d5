/* libkasroute — allocator hooks.
 *
 * Every object takes an optional kr_mem. When none is given the library uses
 * the process default, which is malloc/realloc/free unless changed with
 * kr_mem_set_default(). A hook that returns NULL makes the calling function
 * fail with KR_ENOMEM after releasing everything it had allocated.
 */
#ifndef KASROUTE_MEM_H
#define KASROUTE_MEM_H

#include <kasroute/common.h>

KR_BEGIN_DECLS

typedef struct kr_mem {
  /* Passed unchanged as the last argument of every hook. */
  void *user_data;
  /* Required. Returns NULL on failure. size is never 0. */
  void *(*malloc)(size_t size, void *user_data);
  /* Required. ptr may be NULL (acts as malloc); size is never 0. */
  void *(*realloc)(void *ptr, size_t size, void *user_data);
  /* Required. ptr may be NULL. */
  void (*free)(void *ptr, void *user_data);
} kr_mem;

/* Replaces the process-wide default allocator used by objects created
 * without their own kr_mem. The struct is copied. Pass NULL to restore
 * malloc/realloc/free. Not thread-safe: call it before creating objects.
 * Returns 0, or KR_EINVAL when a hook is missing. */
KR_API int kr_mem_set_default(const kr_mem *mem);

/* The current process-wide default allocator. Never NULL. */
KR_API const kr_mem *kr_mem_default(void);

KR_END_DECLS

#endif
