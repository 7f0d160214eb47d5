/* A TCP echo upstream for system tests and benchmarks: listens on
 * 127.0.0.1 (port 0 = any), prints "port N" on stdout, echoes every
 * connection, half-closes after the client does. With --sink it discards
 * input instead; with --source BYTES it sends BYTES of a pattern (byte i
 * is (i * 31 + 7) & 0xff) to each connection, ignoring input, and closes.
 * An optional numeric argument is the port. Stops on SIGTERM. */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int sink;
static long long source; /* --source BYTES: bytes to send per connection */

/* --source: per-connection count of bytes still to produce. */
typedef struct src_state {
  long long left;
  unsigned long long pos;
} src_state;

/* Tops the output up to 1 MiB with the next pattern bytes (byte i of a
 * connection is (i * 31 + 7) & 0xff); closes once all went out. */
static void source_fill(struct bufferevent *bev, src_state *st) {
  struct evbuffer *out = bufferevent_get_output(bev);
  unsigned char chunk[16384];
  while (st->left > 0 && evbuffer_get_length(out) < (1 << 20)) {
    size_t n = st->left < (long long)sizeof(chunk) ? (size_t)st->left
                                                   : sizeof(chunk);
    for (size_t i = 0; i < n; i++)
      chunk[i] = (unsigned char)((st->pos + i) * 31 + 7);
    evbuffer_add(out, chunk, n);
    st->left -= (long long)n;
    st->pos += n;
  }
}

static void source_write_cb(struct bufferevent *bev, void *arg) {
  src_state *st = arg;
  if (st->left == 0 && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    bufferevent_free(bev);
    free(st);
    return;
  }
  source_fill(bev, st);
}

static void source_read_cb(struct bufferevent *bev, void *arg) {
  struct evbuffer *in = bufferevent_get_input(bev);
  evbuffer_drain(in, evbuffer_get_length(in));
}

static void source_event_cb(struct bufferevent *bev, short what, void *arg) {
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
    bufferevent_free(bev);
    free(arg);
  }
}

static void read_cb(struct bufferevent *bev, void *arg) {
  struct evbuffer *in = bufferevent_get_input(bev);
  if (sink) {
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  /* Echo with backpressure: stop reading while the output is full. */
  evbuffer_add_buffer(bufferevent_get_output(bev), in);
  if (evbuffer_get_length(bufferevent_get_output(bev)) > (1 << 20))
    bufferevent_disable(bev, EV_READ);
}

static void write_cb(struct bufferevent *bev, void *arg) {
  if (arg) { /* EOF seen: close once everything went out */
    bufferevent_free(bev);
    return;
  }
  bufferevent_enable(bev, EV_READ);
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
  if (what & BEV_EVENT_EOF) {
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
      bufferevent_free(bev);
      return;
    }
    bufferevent_setcb(bev, NULL, write_cb, event_cb, (void *)1);
    bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
    return;
  }
  if (what & BEV_EVENT_ERROR)
    bufferevent_free(bev);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int len, void *arg) {
  struct event_base *base = arg;
  struct bufferevent *bev =
      bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
  if (source > 0) {
    src_state *st = calloc(1, sizeof(*st));
    if (!st) {
      bufferevent_free(bev);
      return;
    }
    st->left = source;
    bufferevent_setcb(bev, source_read_cb, source_write_cb, source_event_cb,
                      st);
    bufferevent_setwatermark(bev, EV_WRITE, 256 << 10, 0);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    source_fill(bev, st);
    return;
  }
  bufferevent_setcb(bev, read_cb, write_cb, event_cb, NULL);
  bufferevent_setwatermark(bev, EV_WRITE, 256 << 10, 0);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void on_term(evutil_socket_t s, short w, void *arg) {
  event_base_loopbreak(arg);
}

int main(int argc, char **argv) {
  int port = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--sink") == 0)
      sink = 1;
    else if (strcmp(argv[i], "--source") == 0 && i + 1 < argc)
      source = atoll(argv[++i]);
    else
      port = atoi(argv[i]);
  }
  signal(SIGPIPE, SIG_IGN);
  struct event_base *base = event_base_new();
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(0x7f000001);
  sin.sin_port = htons((unsigned short)port);
  struct evconnlistener *l = evconnlistener_new_bind(
      base, accept_cb, base, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
      (struct sockaddr *)&sin, sizeof(sin));
  if (!l) {
    perror("echo_server: listen");
    return 1;
  }
  socklen_t sl = sizeof(sin);
  getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &sl);
  printf("port %d\n", ntohs(sin.sin_port));
  fflush(stdout);
  struct event *term = evsignal_new(base, SIGTERM, on_term, base);
  event_add(term, NULL);
  event_base_dispatch(base);
  event_free(term);
  evconnlistener_free(l);
  event_base_free(base);
  return 0;
}
