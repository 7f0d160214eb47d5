/* Internal hooks of the mux, for the library's own tests. */
#ifndef KR_CORE_MUX_INTERNAL_H
#define KR_CORE_MUX_INTERNAL_H

#include <kasroute/mux.h>

/* Sets the id the next locally opened stream gets (must have this side's
 * parity). Lets tests reach stream-id exhaustion without 2^30 opens. */
void kr__mux_set_next_stream_id(kr_mux *m, uint32_t id);

/* A second per-stream slot, beside the application's user data, that the
 * library's own I/O layer uses to dispatch stream callbacks. */
void kr__stream_set_handler(kr_stream *s, const void *handler);
const void *kr__stream_get_handler(const kr_stream *s);

/* hook runs (at most once between two kr_mux_send() calls) when the mux
 * gets something to send: the I/O layer schedules a write from it. It
 * must not call back into the mux. */
void kr__mux_set_output_hook(kr_mux *m, void (*hook)(kr_mux *, void *),
                             void *ud);

#endif
