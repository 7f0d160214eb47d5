/* Internal hooks of the mux, for the library's own tests. */
#ifndef KR_CORE_MUX_INTERNAL_H
#define KR_CORE_MUX_INTERNAL_H

#include <kasroute/mux.h>

/* Sets the id the next locally opened stream gets (must have this side's
 * parity). Lets tests reach stream-id exhaustion without 2^30 opens. */
void kr__mux_set_next_stream_id(kr_mux *m, uint32_t id);

#endif
