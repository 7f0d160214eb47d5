/* Placeholder until the HTTP handler layer lands. */
#include <kasroute/error.h>
#include "handler_internal.h"

static void stub_open(kr_stream *s, const kr_md *md, size_t n, int fin, void *d) {
  kr_stream_reset(s, KR_CODE_INTERNAL, "not implemented");
}
const struct kr_handler kr__http_handler_stream = {stub_open, {0}};

int kr_http_handler_new(kr_http_handler **out) { return KR_ESTATE; }
void kr_http_handler_free(kr_http_handler *h) {}
void kr_http_handler_set_on_request(kr_http_handler *h, kr_http_request_cb f) {}
void kr_http_handler_set_on_body(kr_http_handler *h, kr_http_body_cb f) {}
void kr_http_handler_set_on_body_end(kr_http_handler *h, kr_http_event_cb f) {}
void kr_http_handler_set_on_writable(kr_http_handler *h, kr_http_event_cb f) {}
void kr_http_handler_set_on_close(kr_http_handler *h, kr_http_close_cb f) {}
const char * kr_http_method(const kr_http_exchange *x) { return 0; }
const char * kr_http_path(const kr_http_exchange *x) { return 0; }
const char * kr_http_header(const kr_http_exchange *x, const char *name) { return 0; }
size_t kr_http_header_count(const kr_http_exchange *x) { return 0; }
int kr_http_header_at(const kr_http_exchange *x, size_t i, const char **name, const char **value) { return KR_ESTATE; }
const char * kr_http_user(const kr_http_exchange *x) { return 0; }
size_t kr_http_group_count(const kr_http_exchange *x) { return 0; }
const char * kr_http_group_at(const kr_http_exchange *x, size_t i) { return 0; }
int kr_http_has_body(const kr_http_exchange *x) { return KR_ESTATE; }
void * kr_http_user_data(const kr_http_exchange *x) { return 0; }
void kr_http_set_user_data(kr_http_exchange *x, void *user_data) {}
int kr_http_pause_body(kr_http_exchange *x, int pause) { return KR_ESTATE; }
int kr_http_respond(kr_http_exchange *x, int status, const kr_md *fields, size_t n, int end) { return KR_ESTATE; }
int kr_http_respond_body(kr_http_exchange *x, int status, const char *content_type, const void *body, size_t len) { return KR_ESTATE; }
int64_t kr_http_write(kr_http_exchange *x, const void *data, size_t len) { return KR_ESTATE; }
int kr_http_finish(kr_http_exchange *x) { return KR_ESTATE; }
int kr_http_abort(kr_http_exchange *x, const char *reason) { return KR_ESTATE; }
