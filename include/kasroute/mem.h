/* libkasroute — allocator hooks.
 *
 * Which allocator serves what:
 *   - a kr_mux and its streams: the kr_mem given with
 *     kr_mux_options_set_mem(), else the process default (so the muxes
 *     inside the agent, kas and client objects use the default);
 *   - kr_mux_options and kr_mux_callbacks objects, and the library's
 *     internal tables (token tables, the agent registry, JWTs): the
 *     process default at the time they are made;
 *   - everything else (the role objects kr_agent, kr_kas, kr_client,
 *     kr_bclient and their options, and the libraries underneath:
 *     libevent, mbedTLS, libwebsockets, hiredis, jansson): malloc.
 * The process default is malloc/realloc/free unless changed with
 * kr_mem_set_default(). A hook that returns NULL makes the calling function
 * fail with KR_ENOMEM after releasing what it had allocated for that call;
 * inside kr_mux_recv() or kr_mux_send() it fails the connection (GOAWAY
 * INTERNAL) instead, since the peer's bytes cannot be taken back.
 * Hooks are called on the thread that runs the object (a kr_bclient's own
 * thread included): a default allocator shared across threads must be
 * thread-safe.
 */
#ifndef KASROUTE_MEM_H
#define KASROUTE_MEM_H

#include <kasroute/common.h>

KR_BEGIN_DECLS

/* An allocator: three hooks and the pointer they receive. Copied by the
 * functions that take one, so it may live on the caller's stack. */
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
 * malloc/realloc/free. Objects keep the allocator they were made with
 * (they copy it). Not thread-safe: call it before creating objects (and
 * before any kr_bclient thread runs). Returns 0, or KR_EINVAL when a hook
 * is missing (the default is then unchanged). */
KR_API int kr_mem_set_default(const kr_mem *mem);

/* The current process-wide default allocator. Never NULL; the pointer
 * stays valid, its contents change with kr_mem_set_default(). */
KR_API const kr_mem *kr_mem_default(void);

KR_END_DECLS

#endif
