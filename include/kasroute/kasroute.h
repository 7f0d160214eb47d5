/* libkasroute — umbrella header: includes every public header. */
#ifndef KASROUTE_KASROUTE_H
#define KASROUTE_KASROUTE_H

#include <kasroute/agent.h>
#include <kasroute/blocking.h>
#include <kasroute/client.h>
#include <kasroute/common.h>
#include <kasroute/error.h>
#include <kasroute/handler.h>
#include <kasroute/http_handler.h>
#include <kasroute/kas.h>
#include <kasroute/log.h>
#include <kasroute/mem.h>
#include <kasroute/mux.h>
#include <kasroute/version.h>

#endif
