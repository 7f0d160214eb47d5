/* kr_mux_options and kr_mux_callbacks: opaque configuration objects. */
#include <string.h>

#include <kasroute/error.h>

#include "frame.h"
#include "mem_internal.h"
#include "mux_types.h"

void kr__mux_options_init(kr_mux_options *o) {
  memset(o, 0, sizeof(*o));
  o->alloc_mem = *kr_mem_default();
  o->role = KR_ROLE_DIALER;
  o->max_frame_size = KR__DEFAULT_MAX_FRAME;
  o->stream_window = KR__DEFAULT_STREAM_WINDOW;
  o->connection_window = KR__DEFAULT_CONNECTION_WINDOW;
  o->max_streams = KR__DEFAULT_MAX_STREAMS;
  o->send_queue = KR__DEFAULT_SEND_QUEUE;
  o->output_limit = KR__DEFAULT_OUTPUT_LIMIT;
  o->keepalive_interval = KR__DEFAULT_KEEPALIVE_INTERVAL;
  o->keepalive_timeout = KR__DEFAULT_KEEPALIVE_TIMEOUT;
  o->handshake_timeout = KR__DEFAULT_HANDSHAKE_TIMEOUT;
  o->hello_size = 2;
}

int kr_mux_options_new(kr_mux_options **out) {
  const kr_mem *mem = kr_mem_default();
  kr_mux_options *o = kr__malloc(mem, sizeof(*o));
  if (!o)
    return KR_ENOMEM;
  kr__mux_options_init(o);
  *out = o;
  return 0;
}

void kr_mux_options_free(kr_mux_options *o) {
  if (!o)
    return;
  for (size_t i = 0; i < o->hello_n; i++)
    kr__free(&o->alloc_mem, (void *)o->hello[i].name);
  kr__free(&o->alloc_mem, o->hello);
  kr_mem mem = o->alloc_mem;
  kr__free(&mem, o);
}

int kr_mux_options_set_role(kr_mux_options *o, kr_role role) {
  if (role != KR_ROLE_DIALER && role != KR_ROLE_ACCEPTOR)
    return KR_EINVAL;
  o->role = role;
  return 0;
}

int kr_mux_options_set_max_frame_size(kr_mux_options *o, uint32_t n) {
  if (n < KR_MIN_FRAME_SIZE || n > KR_MAX_FRAME_SIZE)
    return KR_EINVAL;
  o->max_frame_size = n;
  return 0;
}

int kr_mux_options_set_stream_window(kr_mux_options *o, uint32_t n) {
  if (n == 0 || n > KR_MAX_WINDOW)
    return KR_EINVAL;
  o->stream_window = n;
  return 0;
}

int kr_mux_options_set_connection_window(kr_mux_options *o, uint32_t n) {
  if (n == 0 || n > KR_MAX_WINDOW)
    return KR_EINVAL;
  o->connection_window = n;
  return 0;
}

int kr_mux_options_set_max_streams(kr_mux_options *o, uint32_t n) {
  if (n == 0)
    return KR_EINVAL;
  o->max_streams = n;
  return 0;
}

int kr_mux_options_set_send_queue(kr_mux_options *o, size_t n) {
  if (n == 0)
    return KR_EINVAL;
  o->send_queue = n;
  return 0;
}

int kr_mux_options_set_output_limit(kr_mux_options *o, size_t n) {
  if (n == 0)
    return KR_EINVAL;
  o->output_limit = n;
  return 0;
}

int kr_mux_options_set_keepalive(kr_mux_options *o, kr_time_us interval,
                                 kr_time_us timeout) {
  if (timeout != 0 && timeout <= interval)
    return KR_EINVAL;
  o->keepalive_interval = interval;
  o->keepalive_timeout = timeout;
  return 0;
}

int kr_mux_options_set_handshake_timeout(kr_mux_options *o,
                                         kr_time_us timeout) {
  o->handshake_timeout = timeout;
  return 0;
}

int kr_mux_options_add_hello(kr_mux_options *o, const kr_md *md) {
  if (!md)
    return KR_EINVAL;
  size_t entry = kr__md_size(md, 1);
  if (entry == 0)
    return KR_EINVAL;
  entry -= 2; /* kr__md_size counts the block's u16 count too */
  /* HELLO = fixed part + every setting + metadata, within 16 KiB. */
  size_t limit =
      KR_MIN_FRAME_SIZE - KR__HELLO_FIXED - 6 * (size_t)KR__SETTING_LAST;
  if (o->hello_n >= 0xffff || o->hello_size + entry > limit)
    return KR_ETOOBIG;
  kr_md *arr =
      kr__realloc(&o->alloc_mem, o->hello, (o->hello_n + 1) * sizeof(*arr));
  if (!arr)
    return KR_ENOMEM;
  o->hello = arr;
  uint8_t *copy = kr__malloc(&o->alloc_mem, md->name_len + md->value_len);
  if (!copy)
    return KR_ENOMEM;
  memcpy(copy, md->name, md->name_len);
  if (md->value_len)
    memcpy(copy + md->name_len, md->value, md->value_len);
  arr[o->hello_n].name = copy;
  arr[o->hello_n].name_len = md->name_len;
  arr[o->hello_n].value = copy + md->name_len;
  arr[o->hello_n].value_len = md->value_len;
  o->hello_n++;
  o->hello_size += entry;
  return 0;
}

int kr_mux_options_set_mem(kr_mux_options *o, const kr_mem *mem) {
  if (!mem) {
    o->has_mem = 0;
    return 0;
  }
  if (!mem->malloc || !mem->realloc || !mem->free)
    return KR_EINVAL;
  o->mem = *mem;
  o->has_mem = 1;
  return 0;
}

int kr_mux_callbacks_new(kr_mux_callbacks **out) {
  const kr_mem *mem = kr_mem_default();
  kr_mux_callbacks *c = kr__calloc(mem, 1, sizeof(*c));
  if (!c)
    return KR_ENOMEM;
  c->alloc_mem = *mem;
  *out = c;
  return 0;
}

void kr_mux_callbacks_free(kr_mux_callbacks *c) {
  if (!c)
    return;
  kr_mem mem = c->alloc_mem;
  kr__free(&mem, c);
}

#define KR__CB_SETTER(field, type)                                             \
  void kr_mux_callbacks_set_##field(kr_mux_callbacks *c, type f) {             \
    c->field = f;                                                              \
  }
KR__CB_SETTER(on_hello, kr_on_hello_cb)
KR__CB_SETTER(on_open, kr_on_open_cb)
KR__CB_SETTER(on_reply, kr_on_reply_cb)
KR__CB_SETTER(on_data, kr_on_data_cb)
KR__CB_SETTER(on_fin, kr_on_fin_cb)
KR__CB_SETTER(on_writable, kr_on_writable_cb)
KR__CB_SETTER(on_close, kr_on_close_cb)
KR__CB_SETTER(on_ping, kr_on_ping_cb)
KR__CB_SETTER(on_goaway, kr_on_goaway_cb)
#undef KR__CB_SETTER
