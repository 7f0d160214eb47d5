/* Echo-checking client stream (see echo_client.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/error.h>

#include "echo_client.h"

static uint8_t pattern(size_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

static void pump(th_echo *ec) {
  uint8_t buf[65536];
  while (ec->s && ec->sent < ec->total) {
    size_t n = ec->total - ec->sent;
    if (n > sizeof(buf))
      n = sizeof(buf);
    for (size_t i = 0; i < n; i++)
      buf[i] = pattern(ec->sent + i);
    int64_t w = kr_stream_write(ec->s, buf, n);
    if (w <= 0)
      return;
    ec->sent += (size_t)w;
  }
  if (ec->s && ec->sent == ec->total) {
    kr_stream_close_write(ec->s);
    ec->sent++; /* FIN sent: do not close twice */
  }
}

static void on_data(kr_stream *s, const uint8_t *p, size_t n, void *ud) {
  th_echo *ec = ud;
  for (size_t i = 0; i < n; i++)
    if (p[i] != pattern(ec->received + i))
      ec->mismatch = 1;
  ec->received += n;
  kr_stream_consume(s, n);
}

static void on_writable(kr_stream *s, void *ud) { pump(ud); }

static void on_close(kr_stream *s, uint32_t code, const uint8_t *r, size_t rl,
                     void *ud) {
  th_echo *ec = ud;
  ec->s = NULL;
  ec->code = code;
  snprintf(ec->reason, sizeof(ec->reason), "%.*s", (int)rl, (const char *)r);
  ec->done = 1;
}

static void on_state(kr_client *c, int err, const char *why, void *ud) {
  th_echo *ec = ud;
  if (err) {
    ec->state_err = err;
    snprintf(ec->reason, sizeof(ec->reason), "%s", why);
    ec->done = 1;
    return;
  }
  ec->ready = 1;
  int rc = kr_client_open(c, ec->agent, ec->service, NULL, 0, 0, ec, &ec->s);
  if (rc < 0) {
    ec->state_err = rc;
    ec->done = 1;
    return;
  }
  pump(ec);
}

kr_client *th_echo_start(th_env *env, th_echo *ec, const char *api_url,
                         const char *ca_file, int verify, const char *token) {
  kr_client_options *o;
  kr_mux_callbacks *cbs;
  kr_client *c = NULL;
  char err[256];
  kr_client_options_new(&o);
  kr_mux_callbacks_new(&cbs);
  kr_client_options_set_url(o, api_url);
  kr_client_options_set_token(o, token, strlen(token));
  if (ca_file)
    kr_client_options_set_tls_ca_file(o, ca_file);
  kr_client_options_set_tls_verify(o, verify);
  kr_mux_callbacks_set_on_data(cbs, on_data);
  kr_mux_callbacks_set_on_writable(cbs, on_writable);
  kr_mux_callbacks_set_on_close(cbs, on_close);
  int rc = kr_client_new(&c, env->base, o, cbs, on_state, ec, err, sizeof(err));
  kr_client_options_free(o);
  kr_mux_callbacks_free(cbs);
  if (rc < 0) {
    fprintf(stderr, "kr_client_new: %s\n", err);
    return NULL;
  }
  return c;
}
