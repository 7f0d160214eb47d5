/* libkasroute — the stream multiplexer (kr_mux), protocol v1.
 *
 * A kr_mux carries many flow-controlled, bidirectional streams over one
 * reliable, ordered byte stream (a TCP or TLS connection, or a sequence of
 * WebSocket binary messages). It does no I/O and reads no clock:
 *
 *   - bytes received from the transport go in with kr_mux_recv();
 *   - bytes to transmit come out with kr_mux_send() / kr_mux_sent();
 *   - time goes in as an argument (microseconds from any monotonic origin)
 *     to kr_mux_recv(), kr_mux_tick() and kr_mux_ping();
 *   - kr_mux_want_read() / kr_mux_want_write() / kr_mux_next_deadline() tell
 *     the host what to wait for.
 *
 * The wire format is specified in docs/PROTOCOL.md.
 *
 * Threading: a kr_mux and its streams belong to one thread at a time; no
 * call is thread-safe for the same mux. Different muxes are independent.
 *
 * Callbacks: every callback receives the user_data given to kr_mux_new();
 * a stream's own state is reached with kr_stream_user_data(). Inside a callback
 * every function of this header may be called except kr_mux_recv() and
 * kr_mux_tick() (they return KR_ESTATE). kr_mux_free() inside a callback is
 * safe: the mux is freed when the outermost library call returns.
 *
 * Stream lifetime: a kr_stream is created by kr_stream_open() or announced
 * by the on_open callback, and ends with exactly one on_close callback
 * (clean end, reset by either side, refusal, or connection failure). The
 * handle stays valid until that callback returns; calls on a closed stream
 * made from inside callbacks of the same library call return KR_ECLOSED.
 * Data delivered by on_data must be acknowledged with kr_stream_consume()
 * as the application frees it: that is what returns flow-control credit to
 * the sender. Bytes still unconsumed when on_close returns count as consumed.
 */
#ifndef KASROUTE_MUX_H
#define KASROUTE_MUX_H

#include <kasroute/common.h>
#include <kasroute/mem.h>

KR_BEGIN_DECLS

/* One multiplexed connection (opaque): kr_mux_new() to kr_mux_free(). */
typedef struct kr_mux kr_mux;
/* One stream of a kr_mux (opaque). Owned by its mux: valid from
 * kr_stream_open() or on_open until its on_close returns (or the mux is
 * freed); never freed by the application. */
typedef struct kr_stream kr_stream;
/* Settings of a mux (opaque), read by kr_mux_new(). */
typedef struct kr_mux_options kr_mux_options;
/* The callbacks of a mux (opaque), copied by kr_mux_new(). */
typedef struct kr_mux_callbacks kr_mux_callbacks;

/* Time in microseconds from an arbitrary monotonic origin chosen by the
 * host. Only differences are used. */
typedef uint64_t kr_time_us;

/* One metadata entry: an ordered name/value pair of byte strings (not
 * NUL-terminated; may contain any byte). Names starting with ':' are
 * reserved by the protocol (KR_MD_* below). Arrays of kr_md passed to the
 * library are only read during the call. Arrays passed to callbacks point
 * into library buffers valid only until the callback returns. */
typedef struct kr_md {
  const uint8_t *name;  /* name bytes (1 or more) */
  size_t name_len;      /* length of name */
  const uint8_t *value; /* value bytes; may be NULL when value_len is 0 */
  size_t value_len;     /* length of value */
} kr_md;

/* Reserved metadata names (docs/PROTOCOL.md, "Reserved names"). */
#define KR_MD_AGENT ":agent"     /* target agent id, decimal */
#define KR_MD_SERVICE ":service" /* service name at the agent */
#define KR_MD_METHOD ":method"   /* HTTP request method */
#define KR_MD_PATH ":path"       /* HTTP path and query */
#define KR_MD_STATUS ":status"   /* HTTP status (reply), three digits */
#define KR_MD_HOP ":hop"         /* kas-to-kas hop mark */
#define KR_MD_LIST ":list"       /* a listing from kas ("agents") */
#define KR_MD_TOKEN ":token"     /* HELLO: agent token */
#define KR_MD_NAME ":name"       /* HELLO: replica name */
#define KR_MD_USER ":user"       /* the caller's user name, set by kas */
#define KR_MD_GROUP ":group"     /* one of the caller's groups, set by kas */

/* Wire codes carried by RESET and GOAWAY frames (docs/PROTOCOL.md). */
typedef enum kr_code {
  KR_CODE_NO_ERROR = 0,     /* graceful */
  KR_CODE_PROTOCOL = 1,     /* the peer broke a protocol rule */
  KR_CODE_INTERNAL = 2,     /* local failure (out of memory, bug) */
  KR_CODE_FLOW_CONTROL = 3, /* the peer exceeded a window */
  KR_CODE_FRAME_SIZE = 4,   /* frame over the negotiated maximum */
  KR_CODE_REFUSED = 5,      /* stream not processed; safe to retry */
  KR_CODE_CANCEL = 6,       /* the application gave up on the stream */
  KR_CODE_STREAM_LIMIT = 7, /* too many concurrent streams opened */
  KR_CODE_TIMEOUT = 8,      /* handshake or keepalive timeout */
  KR_CODE_VERSION = 9,      /* no common protocol version */
  KR_CODE_UNAUTHORIZED = 10, /* credentials rejected */
  KR_CODE_NOT_FOUND = 11,   /* unknown agent or service */
  KR_CODE_UNAVAILABLE = 12, /* agent not connected */
  KR_CODE_UPSTREAM = 13,    /* the service behind the agent failed */
  KR_CODE_SHUTDOWN = 14     /* the sender is shutting down */
} kr_code;

/* Stable name of a wire code ("PROTOCOL", ...), "UNKNOWN" otherwise. The
 * string is static. Thread-safe. */
KR_API const char *kr_code_name(uint32_t code);

/* Which end of the transport this mux is. The dialer opens odd stream ids,
 * the acceptor even ones. Two muxes with the same role cannot talk. */
typedef enum kr_role { KR_ROLE_DIALER = 1, KR_ROLE_ACCEPTOR = 2 } kr_role;

/* Protocol limits (docs/PROTOCOL.md, "Limits"). */
#define KR_PROTOCOL_VERSION 1       /* the version this library speaks */
#define KR_FRAME_HEADER_SIZE 9      /* bytes before every frame's payload */
#define KR_MIN_FRAME_SIZE 16384u    /* smallest MAX_FRAME_SIZE allowed */
#define KR_MAX_FRAME_SIZE 16777215u /* 2^24 - 1 */
#define KR_MAX_WINDOW 2147483647u   /* 2^31 - 1 */
#define KR_MAX_STREAM_ID 2147483647u /* 2^31 - 1 */
#define KR_MAX_REASON 256u          /* bytes of reason text in RESET/GOAWAY */

/* ---------------------------------------------------------------- options */

/* Creates options holding the defaults below (allocated with the process
 * default allocator). An options object belongs to one thread at a time;
 * kr_mux_new() copies what it needs, so one object may serve many muxes.
 * Returns 0 or KR_ENOMEM. */
KR_API int kr_mux_options_new(kr_mux_options **out);
/* NULL is a no-op. */
KR_API void kr_mux_options_free(kr_mux_options *opt);

/* Role (required; default KR_ROLE_DIALER). KR_EINVAL for other values. */
KR_API int kr_mux_options_set_role(kr_mux_options *opt, kr_role role);
/* Largest frame payload this side accepts. Default 65536;
 * KR_EINVAL outside [KR_MIN_FRAME_SIZE, KR_MAX_FRAME_SIZE]. */
KR_API int kr_mux_options_set_max_frame_size(kr_mux_options *opt, uint32_t n);
/* Initial receive window of every stream. Default 2 MiB;
 * KR_EINVAL outside [1, KR_MAX_WINDOW]. */
KR_API int kr_mux_options_set_stream_window(kr_mux_options *opt, uint32_t n);
/* Initial receive window of the connection (all streams together).
 * Default 32 MiB; KR_EINVAL outside [1, KR_MAX_WINDOW]. */
KR_API int kr_mux_options_set_connection_window(kr_mux_options *opt,
                                                uint32_t n);
/* Most streams the peer may have open toward this side at once.
 * Default 1024; KR_EINVAL for 0. */
KR_API int kr_mux_options_set_max_streams(kr_mux_options *opt, uint32_t n);
/* Bytes a stream may hold queued while the peer's window is closed, beyond
 * which kr_stream_write() accepts less and on_writable fires later.
 * Default 1 MiB; KR_EINVAL for 0. */
KR_API int kr_mux_options_set_send_queue(kr_mux_options *opt, size_t n);
/* Pending output above which writes are queued per stream instead of framed
 * at once. A peer that makes this side answer control frames (PING, RESET)
 * while more than four times this much output is pending fails the
 * connection (a flood). Default 1 MiB; KR_EINVAL for 0. */
KR_API int kr_mux_options_set_output_limit(kr_mux_options *opt, size_t n);
/* Idle time after which a PING is sent, and silence after which the peer
 * is declared dead (GOAWAY TIMEOUT). Defaults 15 s and 45 s; 0 disables.
 * KR_EINVAL if timeout is non-zero and not greater than interval. */
KR_API int kr_mux_options_set_keepalive(kr_mux_options *opt,
                                        kr_time_us interval,
                                        kr_time_us timeout);
/* Time allowed for the peer's HELLO. Default 10 s; 0 disables.
 * Returns 0. */
KR_API int kr_mux_options_set_handshake_timeout(kr_mux_options *opt,
                                                kr_time_us timeout);
/* Adds one entry to the HELLO metadata (for example KR_MD_TOKEN). The
 * bytes are copied. KR_EINVAL for a NULL md or an empty name, KR_ETOOBIG
 * when HELLO would exceed KR_MIN_FRAME_SIZE, KR_ENOMEM. */
KR_API int kr_mux_options_add_hello(kr_mux_options *opt, const kr_md *md);
/* Allocator for the mux and its streams (copied). NULL: the process
 * default (<kasroute/mem.h>). Returns 0, or KR_EINVAL when a hook is
 * missing. */
KR_API int kr_mux_options_set_mem(kr_mux_options *opt, const kr_mem *mem);

/* -------------------------------------------------------------- callbacks */

/* The peer's HELLO arrived and was accepted. md[0..n) holds its metadata
 * (valid during the call). The host may call kr_mux_goaway() here to
 * reject the peer (for example a bad token). Streams may be opened from
 * now on. */
typedef void (*kr_on_hello_cb)(kr_mux *m, const kr_md *md, size_t n,
                               void *user_data);
/* The peer opened stream s with metadata md[0..n) (valid during the
 * call). fin: the peer will send no data. The application must answer
 * with kr_stream_reply() (now or later) or kr_stream_reset(). It may
 * attach its state with kr_stream_set_user_data(). Streams that cross a
 * GOAWAY this side sent are refused without this callback. */
typedef void (*kr_on_open_cb)(kr_mux *m, kr_stream *s, const kr_md *md,
                              size_t n, int fin, void *user_data);
/* The acceptor answered a stream this side opened; md[0..n) valid during
 * the call. fin: the acceptor will send no data. */
typedef void (*kr_on_reply_cb)(kr_stream *s, const kr_md *md, size_t n,
                               int fin, void *user_data);
/* Stream data arrived (len > 0). The bytes are valid until the callback
 * returns; call kr_stream_consume() once they are no longer held. */
typedef void (*kr_on_data_cb)(kr_stream *s, const uint8_t *data, size_t len,
                              void *user_data);
/* The peer half-closed: no more data will arrive on s. */
typedef void (*kr_on_fin_cb)(kr_stream *s, void *user_data);
/* A write on s was short or refused with KR_EAGAIN, and queue space is
 * available again (once per short write). Fires from kr_mux_recv() (a
 * WINDOW arrived) or kr_mux_send() (queued data went out). */
typedef void (*kr_on_writable_cb)(kr_stream *s, void *user_data);
/* s ended. code KR_CODE_NO_ERROR: both sides finished cleanly. Otherwise it
 * was reset (by either side, refused after GOAWAY, or the connection
 * failed) and reason explains (may be empty; not NUL-terminated; valid
 * during the call). Fires exactly once per stream, also for a reset this
 * side made (inside kr_stream_reset()); never from kr_mux_free(). The
 * handle is invalid once this returns: free per-stream state here. */
typedef void (*kr_on_close_cb)(kr_stream *s, uint32_t code,
                               const uint8_t *reason, size_t reason_len,
                               void *user_data);
/* A PING this side sent was answered after rtt microseconds. */
typedef void (*kr_on_ping_cb)(kr_mux *m, kr_time_us rtt, void *user_data);
/* A GOAWAY was received (remote = 1) or sent because of a local decision or
 * a protocol error (remote = 0). No new streams can be opened. */
typedef void (*kr_on_goaway_cb)(kr_mux *m, int remote, uint32_t code,
                                const uint8_t *reason, size_t reason_len,
                                void *user_data);

/* Creates an empty callback set. Returns 0 or KR_ENOMEM. Unset callbacks
 * are simply not called, with two consequences: without on_data, received
 * data is consumed and dropped at once; without on_open, streams the peer
 * opens are never answered (an acceptor needs on_open). With on_data set,
 * every byte must be given back with kr_stream_consume(), or the stream
 * stalls once its window is used. */
KR_API int kr_mux_callbacks_new(kr_mux_callbacks **out);
/* NULL is a no-op. kr_mux_new() copied the set: freeing it does not
 * affect existing muxes. */
KR_API void kr_mux_callbacks_free(kr_mux_callbacks *cbs);
/* Setters, one per callback type above; f NULL unsets it. They change the
 * set only, not muxes already made from it. */
KR_API void kr_mux_callbacks_set_on_hello(kr_mux_callbacks *c, kr_on_hello_cb f);
KR_API void kr_mux_callbacks_set_on_open(kr_mux_callbacks *c, kr_on_open_cb f);
KR_API void kr_mux_callbacks_set_on_reply(kr_mux_callbacks *c, kr_on_reply_cb f);
KR_API void kr_mux_callbacks_set_on_data(kr_mux_callbacks *c, kr_on_data_cb f);
KR_API void kr_mux_callbacks_set_on_fin(kr_mux_callbacks *c, kr_on_fin_cb f);
KR_API void kr_mux_callbacks_set_on_writable(kr_mux_callbacks *c,
                                             kr_on_writable_cb f);
KR_API void kr_mux_callbacks_set_on_close(kr_mux_callbacks *c, kr_on_close_cb f);
KR_API void kr_mux_callbacks_set_on_ping(kr_mux_callbacks *c, kr_on_ping_cb f);
KR_API void kr_mux_callbacks_set_on_goaway(kr_mux_callbacks *c,
                                           kr_on_goaway_cb f);

/* -------------------------------------------------------------------- mux */

/* Creates a mux and queues its HELLO for sending. opt may be NULL (all
 * defaults, dialer); opt and cbs are copied and may be freed afterwards.
 * now: current time, starts the handshake timer. Fires no callback.
 * Returns 0, KR_EINVAL (out or cbs NULL) or KR_ENOMEM (nothing
 * allocated). */
KR_API int kr_mux_new(kr_mux **out, const kr_mux_options *opt,
                      const kr_mux_callbacks *cbs, kr_time_us now,
                      void *user_data);

/* Frees the mux and every stream without calling callbacks (no on_close:
 * release per-stream state first, for example after kr_mux_abort()). NULL
 * is a no-op. Inside a callback the free is deferred to the end of the
 * outermost call, and kr_mux_recv() stops reading further frames. */
KR_API void kr_mux_free(kr_mux *m);

/* The user_data given to kr_mux_new(). */
KR_API void *kr_mux_user_data(const kr_mux *m);

/* Feeds len bytes received from the transport (read during the call
 * only); fires the receive callbacks (on_hello, on_open, on_reply,
 * on_data, on_fin, on_close, on_ping, on_goaway, on_writable). All bytes
 * are consumed on success (returns len). On a protocol violation the mux
 * queues a GOAWAY with the reason, closes every stream (on_close) and
 * returns KR_EPROTO, KR_EFLOWCTL, KR_EFRAMESIZE, KR_EVERSION or
 * KR_ESTREAMLIMIT; later calls return KR_ECLOSED. KR_ENOMEM: the
 * connection failed for lack of memory (GOAWAY INTERNAL queued).
 * KR_ESTATE when called from a callback. */
KR_API int64_t kr_mux_recv(kr_mux *m, const uint8_t *in, size_t len,
                           kr_time_us now);

/* Points *out at the next contiguous bytes to transmit and returns their
 * count (0: nothing to send now). Frames queued stream data that the peer's
 * windows allow, fairly across streams. The bytes stay valid and unchanged
 * until kr_mux_sent() or any other call on m. May fire on_writable (queue
 * space freed), on_close (a queued FIN completed a stream), and, when
 * memory runs out, on_goaway and on_close for every stream. */
KR_API size_t kr_mux_send(kr_mux *m, const uint8_t **out);

/* Marks the first n bytes returned by kr_mux_send() as transmitted
 * (n may be less than returned: a short write). Returns 0, or KR_EINVAL if
 * n exceeds them. Fires no callback: the next kr_mux_send() does. */
KR_API int kr_mux_sent(kr_mux *m, size_t n);

/* Drives timers: keepalive PINGs, dead-peer and handshake timeouts. Call it
 * at kr_mux_next_deadline() (earlier is harmless). Returns 0, KR_ETIMEDOUT
 * when the peer was declared dead (GOAWAY TIMEOUT queued, streams closed),
 * KR_ECLOSED after failure, KR_ESTATE inside a callback. */
KR_API int kr_mux_tick(kr_mux *m, kr_time_us now);

/* Absolute time at which kr_mux_tick() must next be called, or UINT64_MAX
 * when no timer runs. */
KR_API kr_time_us kr_mux_next_deadline(const kr_mux *m);

/* 1 if the host should read from the transport now: the mux has not
 * failed. Reading never waits for writing (a full-duplex peer may need our
 * reading to make progress); input is bounded by the flow-control windows
 * and the flood limit (kr_mux_options_set_output_limit()). */
KR_API int kr_mux_want_read(const kr_mux *m);

/* 1 if kr_mux_send() has bytes to give. May frame queued stream data,
 * and so fire on_close as kr_mux_send() does. */
KR_API int kr_mux_want_write(kr_mux *m);

/* 1 once the connection has nothing left to do: after a GOAWAY (either
 * way) every stream has ended, or the mux failed; and all output has been
 * taken by kr_mux_sent(). The host then closes the transport and frees m. */
KR_API int kr_mux_is_done(const kr_mux *m);

/* Sends a PING now; its answer fires on_ping. KR_EAGAIN while a PING is
 * already outstanding, KR_ESTATE before the handshake, KR_ECLOSED,
 * KR_ENOMEM. */
KR_API int kr_mux_ping(kr_mux *m, kr_time_us now);

/* Round-trip time of the last answered PING in microseconds, 0 if none. */
KR_API kr_time_us kr_mux_rtt(const kr_mux *m);

/* Starts draining: sends GOAWAY(code, reason) naming the last peer stream
 * this side processed; later peer OPENs are refused; open streams go on to
 * their end. reason may be NULL (copied; cut at KR_MAX_REASON bytes).
 * on_goaway fires (remote = 0) before this returns.
 * Returns 0, KR_ECLOSED if the mux failed, KR_ENOMEM. A second call only
 * sends another GOAWAY with the new code. */
KR_API int kr_mux_goaway(kr_mux *m, uint32_t code, const char *reason);

/* The transport is gone (reset, timed out, closed by the host): fails the
 * connection now. Every stream gets on_close(code, reason) and on_goaway
 * fires with remote = 0, so stream owners can clean up before
 * kr_mux_free(). Returns 0, or KR_ECLOSED if the mux had already failed. */
KR_API int kr_mux_abort(kr_mux *m, uint32_t code, const char *reason);

/* Streams currently open (both directions counted). */
KR_API size_t kr_mux_num_streams(const kr_mux *m);

/* 1 after the peer's HELLO was accepted. */
KR_API int kr_mux_is_ready(const kr_mux *m);

/* 1 if new streams can be opened: ready, no GOAWAY either way, not failed,
 * ids not exhausted, and under the peer's stream limit. */
KR_API int kr_mux_can_open(const kr_mux *m);

/* ----------------------------------------------------------------- stream */

/* Opens a stream with metadata md[0..n) (copied). fin: no data will follow.
 * user_data is attached to the stream (kr_stream_user_data()). Fires no
 * callback; the answer comes as on_reply (or on_close). Returns 0 and
 * *out, or:
 * KR_ESTATE before the handshake completed, KR_EGOAWAY after a GOAWAY,
 * KR_ECLOSED after failure, KR_ESTREAMLIMIT at the peer's stream limit,
 * KR_EIDEXHAUSTED when no stream id is left, KR_ETOOBIG when the metadata
 * does not fit one frame, KR_EINVAL for an empty name, KR_ENOMEM. */
KR_API int kr_stream_open(kr_mux *m, const kr_md *md, size_t n, int fin,
                          void *user_data, kr_stream **out);

/* Answers a stream the peer opened, exactly once, before any write, with
 * metadata md[0..n) (copied; n may be 0). fin: no data will follow; when
 * the peer had half-closed too, the stream is complete and
 * on_close(KR_CODE_NO_ERROR) fires before this returns.
 * Returns 0, KR_ESTATE (not peer-opened, or already replied), KR_ECLOSED,
 * KR_ETOOBIG (does not fit one frame), KR_EINVAL (an empty name),
 * KR_ENOMEM. */
KR_API int kr_stream_reply(kr_stream *s, const kr_md *md, size_t n, int fin);

/* Writes up to len bytes. Returns the count accepted (0..len), copied:
 * buf may be reused at once. Bytes the peer's windows allow are framed at
 * once, the rest is queued up to the send-queue limit. A count below len
 * (or KR_EAGAIN when nothing fits) means on_writable will fire when space
 * is available; the caller keeps the rest. Errors: KR_ESTATE
 * (half-closed for writing, or a reply is still owed), KR_ECLOSED,
 * KR_ENOMEM (nothing accepted). */
KR_API int64_t kr_stream_write(kr_stream *s, const void *buf, size_t len);

/* Half-closes the sending direction: FIN goes after all queued data. When
 * nothing is queued and the peer had half-closed too, the stream is
 * complete and on_close(KR_CODE_NO_ERROR) fires before this returns.
 * Returns 0, KR_ESTATE (already half-closed or reply owed), KR_ECLOSED,
 * KR_ENOMEM (nothing changed). */
KR_API int kr_stream_close_write(kr_stream *s);

/* Aborts the stream in both directions with a wire code (kr_code) and
 * reason (NULL allowed; copied; cut at KR_MAX_REASON). Queued data is
 * dropped. on_close fires (with this code) before this function returns.
 * Returns 0, KR_ECLOSED (already closed: no callback), KR_ENOMEM (the
 * RESET could not be queued; nothing changed). */
KR_API int kr_stream_reset(kr_stream *s, uint32_t code, const char *reason);

/* Returns n bytes of credit: the application no longer holds n bytes that
 * on_data delivered. Window updates are batched (docs/PROTOCOL.md).
 * Returns 0, KR_EINVAL when n exceeds the unconsumed bytes, KR_ECLOSED,
 * KR_ENOMEM (the WINDOW frame could not be queued: the connection failed,
 * and every stream, s included, got on_close before this returns). */
KR_API int kr_stream_consume(kr_stream *s, size_t n);

/* Bytes kr_stream_write() would accept now without queuing past the
 * limit (0 once the stream is half-closed for writing or closed). */
KR_API size_t kr_stream_write_space(const kr_stream *s);

/* Bytes written but not yet framed for sending (queued). */
KR_API size_t kr_stream_queued(const kr_stream *s);

/* The stream's id: odd when the dialer opened it, even for the acceptor. */
KR_API uint32_t kr_stream_id(const kr_stream *s);
/* The mux s belongs to. */
KR_API kr_mux *kr_stream_mux(const kr_stream *s);

/* The stream's user data (given to kr_stream_open(), or set with
 * kr_stream_set_user_data(); NULL at first for peer-opened streams of a
 * bare kr_mux; see <kasroute/handler.h> for agent streams). The
 * per-stream callbacks of the roles (agent handlers, kr_client streams)
 * receive it as their last argument; a bare kr_mux passes its own
 * user_data instead. May be called until on_close returns. */
KR_API void *kr_stream_user_data(const kr_stream *s);
KR_API void kr_stream_set_user_data(kr_stream *s, void *user_data);

KR_END_DECLS

#endif
