/* libkasroute — stream handlers: services an agent implements in code.
 *
 * A kr_handler is a set of callbacks that serves the streams kas opens to
 * one service of an agent (kr_agent_options_add_handler() in
 * <kasroute/agent.h>). Every stream goes through the same steps:
 *
 *   on_open      the OPEN arrived: its metadata (":service", the caller's
 *                own entries, and ":user" / ":group" when kas knows who
 *                the caller is) and whether a body follows (fin = 0).
 *                The handler answers exactly once, now or later, with
 *                kr_stream_reply() (then writes data with
 *                kr_stream_write() and ends with kr_stream_close_write())
 *                or with kr_stream_reset().
 *   on_data      bytes from the caller (valid during the call). Give the
 *                credit back with kr_stream_consume() once the bytes are
 *                no longer held: until then the caller cannot send more
 *                than the stream window (2 MiB), which is how a slow
 *                handler pushes back. Without on_data, data is consumed
 *                and dropped.
 *   on_fin       the caller half-closed: no more data will arrive.
 *   on_writable  a kr_stream_write() was short (or KR_EAGAIN): there is
 *                room again. Write the rest now.
 *   on_close     the stream is over, exactly once per on_open: code
 *                KR_CODE_NO_ERROR when both sides finished, otherwise the
 *                reset code and reason (the caller went away, the tunnel
 *                failed, kr_stream_reset() from this side, or the agent
 *                was freed: KR_CODE_SHUTDOWN). Free per-stream state here;
 *                the kr_stream handle is invalid once it returns.
 *
 * User data: a stream's user data starts as the service_data given to
 * kr_agent_options_add_handler(); on_open may replace it with per-stream
 * state (kr_stream_set_user_data()). Every later callback of that stream
 * receives the stream's current user data.
 *
 * Re-entrancy: inside any callback the kr_stream_* functions of
 * <kasroute/mux.h> may be called on any stream of the agent (a reset fires
 * that stream's on_close before returning); kr_agent_free() must not be
 * called from a handler callback (use kr_agent_drain() or defer the free
 * with an event). Outside callbacks, kr_stream_* calls are allowed from
 * the agent's loop thread at any time between on_open and on_close (for
 * example when a pipe or socket the handler watches becomes readable);
 * output is sent on the next loop iteration.
 *
 * Threading: every callback runs on the loop thread of the agent's
 * event_base; no kr_stream_* call may be made from another thread.
 */
#ifndef KASROUTE_HANDLER_H
#define KASROUTE_HANDLER_H

#include <kasroute/common.h>
#include <kasroute/mux.h>

KR_BEGIN_DECLS

/* The callbacks of one service (opaque; made by kr_handler_new()). */
typedef struct kr_handler kr_handler;

/* A stream for the service arrived; see above. md[0..n) is valid during
 * the call only. fin: the caller will send no data. service_data: the
 * pointer given with the handler (also the stream's user data so far). */
typedef void (*kr_handler_open_cb)(kr_stream *s, const kr_md *md, size_t n,
                                   int fin, void *service_data);

/* An empty callback set. Returns 0 or KR_ENOMEM. A handler needs on_open;
 * the other callbacks are optional. The set is copied when it is
 * registered and may be freed (or reused for another service) then. */
KR_API int kr_handler_new(kr_handler **out);
/* NULL is a no-op. */
KR_API void kr_handler_free(kr_handler *h);

/* Set one callback of the set (f NULL unsets it); the change applies to
 * this set only, not to services registered with it before. */
KR_API void kr_handler_set_on_open(kr_handler *h, kr_handler_open_cb f);
KR_API void kr_handler_set_on_data(kr_handler *h, kr_on_data_cb f);
KR_API void kr_handler_set_on_fin(kr_handler *h, kr_on_fin_cb f);
KR_API void kr_handler_set_on_writable(kr_handler *h, kr_on_writable_cb f);
KR_API void kr_handler_set_on_close(kr_handler *h, kr_on_close_cb f);

/* The first entry of md[0..n) named name (NUL-terminated, compared
 * byte for byte), or NULL (also for a NULL name). Values are not
 * NUL-terminated: use value_len. */
KR_API const kr_md *kr_md_find(const kr_md *md, size_t n, const char *name);

KR_END_DECLS

#endif
