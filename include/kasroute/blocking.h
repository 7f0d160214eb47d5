/* libkasroute — the blocking client, for foreign-language callers (the
 * Ruby binding) and threaded programs.
 *
 * A kr_bclient runs its own libevent loop on a thread the library owns and
 * holds one multiplexed connection to a kas API listener (see
 * kasroute/client.h). Its calls block the calling thread until done or
 * until their timeout, and may be made from any number of threads at
 * once: every object here is thread-safe, except that one kr_bstream /
 * kr_bhttp_response must not be read by two threads at the same time, nor
 * written by two (one reading thread and one writing thread is fine).
 * No callback ever runs on a caller's thread; no call here runs user code.
 *
 * The connection is made at kr_bclient_new() and re-made on demand after
 * it failed (the next call dials again). Timeouts are relative, in
 * microseconds; 0 means the client's default (kr_bclient_options_set_timeout).
 *
 * Errors (negative kr_error codes): KR_ETIMEDOUT (the call's timeout
 * passed; a stream's state is unchanged and the call may be retried),
 * KR_ENOTCONN (the agent is not connected to kas before its route
 * deadline), KR_ENOSERVICE (unknown service), KR_EAUTH (kas refused the
 * credentials), KR_EUPSTREAM (the service behind the agent failed),
 * KR_EIO / KR_ETLS (connecting to kas failed), KR_ERESET (the stream was
 * reset), KR_ECLOSED (closed), KR_EPROTO, KR_EINVAL, KR_ENOMEM. A
 * human-readable reason for the last error of the calling thread is in
 * kr_bclient_last_error().
 *
 * Memory is bounded per stream: received bytes wait in the library until
 * read, and kas only sends more as they are read (the stream's window,
 * 2 MiB); written bytes are held up to 1 MiB beyond what the window lets
 * go, after which writes block.
 *
 * Fork: a kr_bclient must not be used in a child process; the child makes
 * its own (the parent's thread does not exist there). Calls in a child
 * return KR_ESTATE; kr_bclient_free() in a child releases nothing the
 * parent still uses.
 */
#ifndef KASROUTE_BLOCKING_H
#define KASROUTE_BLOCKING_H

#include <kasroute/common.h>
#include <kasroute/mux.h>

KR_BEGIN_DECLS

/* A blocking client (opaque): its thread, connection and streams;
 * kr_bclient_new() to kr_bclient_free(). Thread-safe. */
typedef struct kr_bclient kr_bclient;
/* Settings of a blocking client (opaque), copied by kr_bclient_new(). Not
 * thread-safe. */
typedef struct kr_bclient_options kr_bclient_options;
/* One byte stream to an agent's service (opaque): kr_bclient_open() to
 * kr_bstream_free(). Valid until its own free, even after the client's. */
typedef struct kr_bstream kr_bstream;
/* One HTTP response (opaque): kr_bclient_http_request() to
 * kr_bhttp_response_free(). Valid until its own free. */
typedef struct kr_bhttp_response kr_bhttp_response;

/* ---------------------------------------------------------------- options */

/* Creates options with the defaults (verification on, timeout 30 s).
 * Returns 0 or KR_ENOMEM. */
KR_API int kr_bclient_options_new(kr_bclient_options **out);
/* Wipes the token and secret and frees. NULL is a no-op. */
KR_API void kr_bclient_options_free(kr_bclient_options *o);
/* kas API listener: tcp://, tls://, ws:// or wss:// (copied; under 1024
 * bytes). Required. Returns 0, KR_EADDR (malformed, other scheme, too
 * long), KR_ENOMEM. */
KR_API int kr_bclient_options_set_url(kr_bclient_options *o, const char *url);
/* A JWT to present as is (copied, 1 byte to 8 KiB), or ... Returns 0,
 * KR_EINVAL (NULL, empty, too long), KR_ENOMEM. */
KR_API int kr_bclient_options_set_token(kr_bclient_options *o, const char *jwt,
                                        size_t len);
/* ... the API secret (32 to 1024 bytes, copied): the client mints
 * short-lived HS256 JWTs (audience "gitlab-kas", 5 minutes) for each
 * connection. When both are set the secret is used. Returns 0, KR_EINVAL
 * (NULL, too short, too long), KR_ENOMEM. */
KR_API int kr_bclient_options_set_secret(kr_bclient_options *o,
                                         const uint8_t *secret, size_t len);
/* CA bundle (PEM file) for tls:// and wss:// (default: the system
 * store), and verification (default on; off for tests only). The path is
 * copied (KR_EINVAL for NULL or 1024 bytes or more) and read by
 * kr_bclient_new(). Return 0 otherwise. */
KR_API int kr_bclient_options_set_tls_ca_file(kr_bclient_options *o,
                                              const char *path);
KR_API int kr_bclient_options_set_tls_verify(kr_bclient_options *o, int verify);
/* Default timeout of every blocking call (default 30 s). KR_EINVAL for 0. */
KR_API int kr_bclient_options_set_timeout(kr_bclient_options *o,
                                          kr_time_us timeout);

/* ----------------------------------------------------------------- client */

/* Starts the loop thread and connects. Returns at once: 0, KR_ECONFIG (URL
 * or credentials missing; reason in err), KR_ETLS (CA file), KR_ENOMEM,
 * KR_EIO (thread). o is copied. A kas that cannot be reached is not an
 * error here: the first call that needs the connection reports it.
 * err[0..errlen) receives a reason on failure (err may be NULL). Resolves
 * the kas host name on the calling thread (blocking). */
KR_API int kr_bclient_new(kr_bclient **out, const kr_bclient_options *o,
                          char *err, size_t errlen);

/* Stops the thread, closes the connection (open streams and responses are
 * reset; their later calls return KR_ECLOSED until freed) and frees the
 * client. Streams and responses stay valid objects until their own free.
 * NULL is a no-op. Must not be called concurrently with other calls on
 * the same client. */
KR_API void kr_bclient_free(kr_bclient *c);

/* The reason for the calling thread's last failed call on any bclient
 * ("" if none: every call of this header clears it first). Valid until
 * that thread's next call. */
KR_API const char *kr_bclient_last_error(void);

/* ---------------------------------------------------------------- streams */

/* Opens a stream to (agent, service) with optional extra metadata
 * extra[0..n) (copied) and waits for the agent's answer (its REPLY).
 * Returns 0 and *out, or KR_EINVAL (agent <= 0, no service, out NULL, an
 * entry with an empty name), KR_ETIMEDOUT (no answer in time; the stream
 * is abandoned), KR_ENOTCONN, KR_ENOSERVICE, KR_EAUTH, KR_EUPSTREAM,
 * KR_ERESET (the agent or kas refused the stream), KR_EIO / KR_ETLS (kas
 * unreachable), KR_ECLOSED (the client is being freed), KR_ENOMEM. */
KR_API int kr_bclient_open(kr_bclient *c, int64_t agent, const char *service,
                           const kr_md *extra, size_t n, kr_time_us timeout,
                           kr_bstream **out);

/* Writes all len bytes (blocking while the stream's window is closed):
 * returns len once they are all queued for sending, or an error. On
 * KR_ETIMEDOUT with no byte taken the stream is unchanged; when some bytes
 * were taken before an error, the stream is unusable for writing (later
 * writes return that error). KR_ESTATE after kr_bstream_close_write(). */
KR_API int64_t kr_bstream_write(kr_bstream *s, const void *buf, size_t len,
                                kr_time_us timeout);

/* Reads up to cap bytes, waiting for at least one. Returns the count,
 * 0 at the end of the stream (the agent half-closed), or an error
 * (KR_ETIMEDOUT: nothing arrived in time; the stream is still usable;
 * KR_EINVAL: buf NULL or cap 0; the stream was reset: the error of its
 * reset code as kr_error_from_code() gives it, KR_ERESET, KR_EUPSTREAM...;
 * KR_ECLOSED: the client was freed). Bytes that arrived before a reset
 * are still read first. */
KR_API int64_t kr_bstream_read(kr_bstream *s, void *buf, size_t cap,
                               kr_time_us timeout);

/* Half-closes the sending direction (FIN after what was written). Does not
 * block. Returns 0, KR_ESTATE if already done, or the stream's error
 * when it ended. */
KR_API int kr_bstream_close_write(kr_bstream *s);

/* Resets the stream if it is still open, and frees it. NULL is a no-op; in
 * a forked child it releases nothing. */
KR_API void kr_bstream_free(kr_bstream *s);

/* ------------------------------------------------------------------- HTTP */

/* Makes an HTTP request to an agent's http/https/kubernetes service
 * (docs/PROTOCOL.md "HTTP"): method, path (origin form, with query),
 * header fields (names are sent lower-cased, values without surrounding
 * blanks; hop-by-hop fields are dropped; "content-length" is added for a
 * body when missing), and a body (NULL/0: none). Blocks until the response
 * head arrives; the body is then read with kr_bhttp_response_read(). The
 * timeout covers sending the body and the head's arrival. headers and
 * body are copied. Returns 0 and *out, or KR_EINVAL: a method that is not
 * an HTTP token, a path not starting with '/', a field name that is empty
 * or starts with ':', CR/LF/NUL in a name or value; KR_EPROTO: the answer
 * has no valid ":status"; otherwise the errors of kr_bclient_open(). */
KR_API int kr_bclient_http_request(kr_bclient *c, int64_t agent,
                                   const char *service, const char *method,
                                   const char *path, const kr_md *headers,
                                   size_t n_headers, const void *body,
                                   size_t body_len, kr_time_us timeout,
                                   kr_bhttp_response **out);

/* The response status (100..599), or KR_EINVAL for a NULL r. */
KR_API int kr_bhttp_response_status(const kr_bhttp_response *r);
/* Number of response header fields (0 for a NULL r). */
KR_API size_t kr_bhttp_response_header_count(const kr_bhttp_response *r);
/* The i-th response header (lower-case name; neither is NUL-terminated:
 * use the lengths); pointers valid until the response is freed. Any out
 * pointer may be NULL. Returns 0, or KR_EINVAL past the end. */
KR_API int kr_bhttp_response_header(const kr_bhttp_response *r, size_t i,
                                    const char **name, size_t *name_len,
                                    const char **value, size_t *value_len);
/* Reads body bytes as kr_bstream_read() does (0 at the end of the body). */
KR_API int64_t kr_bhttp_response_read(kr_bhttp_response *r, void *buf,
                                      size_t cap, kr_time_us timeout);
/* Resets the stream if the body was not read to its end, and frees. NULL
 * is a no-op; in a forked child it releases nothing. */
KR_API void kr_bhttp_response_free(kr_bhttp_response *r);

/* ----------------------------------------------------------------- agents */

/* The connected agents as JSON (see kr_client_list_agents()). *json is
 * NUL-terminated and released with kr_bclient_free_string() (which takes
 * NULL too); *len (len may be NULL) is its length. Returns 0, or
 * KR_EINVAL (json NULL), KR_ETIMEDOUT, KR_EAUTH, KR_EIO, KR_ECLOSED,
 * KR_EPROTO, KR_ENOMEM (then *json is unchanged). */
KR_API int kr_bclient_list_agents(kr_bclient *c, kr_time_us timeout,
                                  char **json, size_t *len);
KR_API void kr_bclient_free_string(char *s);

KR_END_DECLS

#endif
