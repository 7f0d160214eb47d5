/* A client stream that sends a pattern and checks the echo, for the
 * transport integration tests. */
#ifndef KR_TEST_ECHO_CLIENT_H
#define KR_TEST_ECHO_CLIENT_H

#include "harness.h"

typedef struct th_echo {
  size_t total;     /* bytes to send */
  size_t sent, received;
  int mismatch;
  int done;         /* the stream ended */
  uint32_t code;    /* its close code */
  char reason[300];
  int state_err;    /* client on_state error, if any */
  int ready;
  kr_stream *s;
  const char *service;
  int64_t agent;
} th_echo;

/* Connects a client to api_url, opens one stream to (agent, service),
 * sends e->total pattern bytes, half-closes, verifies the echo. Returns
 * the client (free it after checking ec). */
kr_client *th_echo_start(th_env *env, th_echo *ec, const char *api_url,
                         const char *ca_file, int verify, const char *token);

#endif
