/* Allocator hooks: the process default and overflow-checked helpers. */
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "mem_internal.h"

static void *std_malloc(size_t size, void *ud) { return malloc(size); }
static void *std_realloc(void *p, size_t size, void *ud) {
  return realloc(p, size);
}
static void std_free(void *p, void *ud) { free(p); }

static const kr_mem std_mem = {NULL, std_malloc, std_realloc, std_free};
static kr_mem default_mem = {NULL, std_malloc, std_realloc, std_free};

int kr_mem_set_default(const kr_mem *mem) {
  if (mem == NULL) {
    default_mem = std_mem;
    return 0;
  }
  if (!mem->malloc || !mem->realloc || !mem->free)
    return KR_EINVAL;
  default_mem = *mem;
  return 0;
}

const kr_mem *kr_mem_default(void) { return &default_mem; }

void *kr__malloc(const kr_mem *mem, size_t size) {
  if (size == 0)
    return NULL;
  return mem->malloc(size, mem->user_data);
}

void *kr__calloc(const kr_mem *mem, size_t n, size_t size) {
  if (n == 0 || size == 0 || n > SIZE_MAX / size)
    return NULL;
  void *p = mem->malloc(n * size, mem->user_data);
  if (p)
    memset(p, 0, n * size);
  return p;
}

void *kr__realloc(const kr_mem *mem, void *ptr, size_t size) {
  if (size == 0)
    return NULL;
  return mem->realloc(ptr, size, mem->user_data);
}

void kr__free(const kr_mem *mem, void *ptr) {
  if (ptr)
    mem->free(ptr, mem->user_data);
}
