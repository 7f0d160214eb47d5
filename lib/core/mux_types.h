/* Private structures of the mux, shared by mux.c and mux_options.c. */
#ifndef KR_CORE_MUX_TYPES_H
#define KR_CORE_MUX_TYPES_H

#include <kasroute/mux.h>

struct kr_mux_options {
  kr_mem alloc_mem; /* allocator the options themselves came from */
  kr_mem mem;       /* allocator for the mux */
  int has_mem;
  kr_role role;
  uint32_t max_frame_size;
  uint32_t stream_window;
  uint32_t connection_window;
  uint32_t max_streams;
  size_t send_queue;
  size_t output_limit;
  kr_time_us keepalive_interval;
  kr_time_us keepalive_timeout;
  kr_time_us handshake_timeout;
  kr_md *hello;      /* entries own one allocation each, at name */
  size_t hello_n;
  size_t hello_size; /* encoded size of the metadata block */
};

struct kr_mux_callbacks {
  kr_mem alloc_mem;
  kr_on_hello_cb on_hello;
  kr_on_open_cb on_open;
  kr_on_reply_cb on_reply;
  kr_on_data_cb on_data;
  kr_on_fin_cb on_fin;
  kr_on_writable_cb on_writable;
  kr_on_close_cb on_close;
  kr_on_ping_cb on_ping;
  kr_on_goaway_cb on_goaway;
};

/* Defaults (docs/PROTOCOL.md). */
#define KR__DEFAULT_MAX_FRAME 65536u
#define KR__DEFAULT_STREAM_WINDOW (2u << 20)
#define KR__DEFAULT_CONNECTION_WINDOW (32u << 20)
#define KR__DEFAULT_MAX_STREAMS 1024u
#define KR__DEFAULT_SEND_QUEUE ((size_t)1 << 20)
#define KR__DEFAULT_OUTPUT_LIMIT ((size_t)1 << 20)
#define KR__DEFAULT_KEEPALIVE_INTERVAL ((kr_time_us)15 * 1000000)
#define KR__DEFAULT_KEEPALIVE_TIMEOUT ((kr_time_us)45 * 1000000)
#define KR__DEFAULT_HANDSHAKE_TIMEOUT ((kr_time_us)10 * 1000000)

/* Fills o with the defaults (no HELLO metadata, default allocator). */
void kr__mux_options_init(kr_mux_options *o);

#endif
