/* tunnel_sink — the upstream for tunnel throughput runs: listens on
 * 127.0.0.1 (port argument, 0 or none = any), prints "port N" on stdout,
 * reads and discards everything each connection sends, and closes the
 * connection once it has read EOF. Stops on SIGTERM; with --verbose it
 * prints the bytes each connection delivered to stderr.
 *
 * Same contract as tests/system/echo_server.c --sink, but it reads with
 * 256 KiB read() calls on raw events: a bufferevent reads at most 4 KiB per
 * call in libevent 2.1, which makes the upstream itself the bottleneck of a
 * loopback benchmark (about 1 GB/s on one core) instead of the tunnel. */
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE ((size_t)256 << 10)

static unsigned char rbuf[READ_SIZE];
static int verbose;

typedef struct sink_conn {
  struct event *ev;
  uint64_t bytes;
} sink_conn;

static void drop(sink_conn *c, evutil_socket_t fd, const char *why) {
  if (verbose)
    fprintf(stderr, "tunnel_sink: fd %d %s after %" PRIu64 " bytes\n", (int)fd,
            why, c->bytes);
  event_free(c->ev);
  close(fd);
  free(c);
}

static void read_cb(evutil_socket_t fd, short what, void *arg) {
  sink_conn *c = arg;
  /* A bounded number of reads per wake-up keeps connections fair. */
  for (int i = 0; i < 16; i++) {
    ssize_t n = read(fd, rbuf, sizeof(rbuf));
    if (n > 0) {
      c->bytes += (uint64_t)n;
      continue;
    }
    if (n == 0) {
      drop(c, fd, "EOF");
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      drop(c, fd, strerror(errno));
    return;
  }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int len, void *arg) {
  struct event_base *base = arg;
  sink_conn *c = calloc(1, sizeof(*c));
  if (!c) {
    close(fd);
    return;
  }
  evutil_make_socket_nonblocking(fd);
  c->ev = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, c);
  event_add(c->ev, NULL);
}

static void on_term(evutil_socket_t s, short w, void *arg) {
  event_base_loopbreak(arg);
}

int main(int argc, char **argv) {
  int port = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--verbose") == 0)
      verbose = 1;
    else
      port = atoi(argv[i]);
  }
  signal(SIGPIPE, SIG_IGN);
  struct event_base *base = event_base_new();
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sin.sin_port = htons((unsigned short)port);
  struct evconnlistener *l = evconnlistener_new_bind(
      base, accept_cb, base, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, -1,
      (struct sockaddr *)&sin, sizeof(sin));
  if (!l) {
    perror("tunnel_sink: listen");
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
