/* Allocation helpers over a kr_mem. Internal to the library. */
#ifndef KR_CORE_MEM_INTERNAL_H
#define KR_CORE_MEM_INTERNAL_H

#include <kasroute/mem.h>

/* NULL on failure or when size is 0. */
void *kr__malloc(const kr_mem *mem, size_t size);
/* Zero-filled n * size bytes; NULL on overflow or failure. */
void *kr__calloc(const kr_mem *mem, size_t n, size_t size);
/* NULL on failure (ptr untouched) or when size is 0. */
void *kr__realloc(const kr_mem *mem, void *ptr, size_t size);
void kr__free(const kr_mem *mem, void *ptr);

#endif
