/* Stream handler callback sets (kasroute/handler.h). */
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>
#include <kasroute/handler.h>

#include "handler_internal.h"
#include "http/http_map.h"

int kr_handler_new(kr_handler **out) {
  kr_handler *h = calloc(1, sizeof(*h));
  if (!h)
    return KR_ENOMEM;
  *out = h;
  return 0;
}

void kr_handler_free(kr_handler *h) { free(h); }

void kr_handler_set_on_open(kr_handler *h, kr_handler_open_cb f) {
  h->on_open = f;
}

void kr_handler_set_on_data(kr_handler *h, kr_on_data_cb f) {
  h->cbs.on_data = f;
}

void kr_handler_set_on_fin(kr_handler *h, kr_on_fin_cb f) { h->cbs.on_fin = f; }

void kr_handler_set_on_writable(kr_handler *h, kr_on_writable_cb f) {
  h->cbs.on_writable = f;
}

void kr_handler_set_on_close(kr_handler *h, kr_on_close_cb f) {
  h->cbs.on_close = f;
}

const kr_md *kr_md_find(const kr_md *md, size_t n, const char *name) {
  return name ? kr__md_find(md, n, name) : NULL;
}
