/* The layout of the public handler objects (kasroute/handler.h and
 * kasroute/http_handler.h), shared by the agent and the HTTP handler
 * layer. Internal. */
#ifndef KR_AGENT_HANDLER_INTERNAL_H
#define KR_AGENT_HANDLER_INTERNAL_H

#include <kasroute/handler.h>
#include <kasroute/http_handler.h>

#include "io/conn.h"

/* A stream handler: on_open, then the per-stream callbacks, which the
 * agent installs as the stream's I/O-layer handler (io/conn.h) so that
 * they receive the stream's current user data. on_reply stays NULL. */
struct kr_handler {
  kr_handler_open_cb on_open;
  kr__stream_handler cbs;
};

struct kr_http_handler {
  kr_http_request_cb on_request;
  kr_http_body_cb on_body;
  kr_http_event_cb on_body_end;
  kr_http_event_cb on_writable;
  kr_http_close_cb on_close;
};

/* An HTTP handler service as it runs: the application's callbacks and
 * service data. Lives as long as the agent. */
typedef struct kr__http_handler_svc {
  struct kr_http_handler cbs;
  void *service_data;
  struct kr_http_exchange *owed; /* ended exchanges whose on_close is
                                    still to be reported (http_handler.c) */
} kr__http_handler_svc;

/* Reports every close still owed to the application: called by
 * kr_agent_free() after the agent's streams ended, so that no callback
 * fires after it returns. */
void kr__http_handler_svc_flush(kr__http_handler_svc *svc);

/* The stream handler that serves an HTTP handler service: its
 * service_data is a kr__http_handler_svc (lib/agent/http_handler.c). */
extern const struct kr_handler kr__http_handler_stream;

#endif
