/* Internal hooks of the agent role, for the library's own tests. */
#ifndef KR_AGENT_AGENT_INTERNAL_H
#define KR_AGENT_AGENT_INTERNAL_H

#include <kasroute/agent.h>

#include "http_service.h"

/* The HTTP service behind service name (an http, https or kubernetes
 * service), or NULL. Valid until kr_agent_free(). */
kr__http_service *kr__agent_http_service(kr_agent *a, const char *name);

#endif
