/* tunnel_load — bulk-throughput load generator for tunnel benchmarks.
 *
 * Opens --conns TCP connections to --host:--port at once and pushes --bytes
 * through each one, on a single libevent loop (no threads: the generator
 * should cost as little CPU as possible, since it shares the machine with
 * the tunnel it measures).
 *
 * What is measured (mode "sink", the default): the upstream behind the
 * tunnel discards input and closes its side after it has read EOF (see
 * tests/system/echo_server.c --sink). Each connection writes its bytes,
 * half-closes (shutdown SHUT_WR), and counts as finished when it reads EOF.
 * That EOF can only arrive after the upstream has read every byte and the
 * close has travelled back through the tunnel, so bytes still sitting in
 * tunnel buffers are never counted as delivered. The clock runs from the
 * first connect() to the last EOF; MB/s = total bytes / seconds / 1e6.
 *
 * Mode "echo" (against an echo upstream) also verifies content: every byte
 * read back must match the pattern sent at that offset, and a connection
 * finishes only when it has read back exactly --bytes and then EOF. It
 * measures round trips of the payload, so it is a correctness check for
 * tunnels rather than a one-way throughput number.
 *
 * The payload is a pseudo-random pattern (xorshift64, seed printed and
 * settable with --seed), so no layer can profit from compressible data.
 *
 * Exit status: 0 when every connection finished, 1 on any error or on
 * --timeout. The result is one line on stdout:
 *   result mode=sink conns=N bytes_per_conn=B total_bytes=T seconds=S
 *          MBps=X first_done=S0 last_done=S1 cpu_user=U cpu_sys=Y
 * --free-port prints a currently unused 127.0.0.1 TCP port and exits (the
 * driver script uses it for listeners that need a fixed port).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Pattern period: a power of two, larger than any write, so that offsets
 * map to pattern bytes with a mask. */
#define PATTERN_SIZE ((size_t)1 << 20)
#define READ_SIZE ((size_t)256 << 10)

typedef struct load load;

typedef struct conn {
  load *ld;
  int fd;
  int connected;
  int write_done; /* all bytes written and SHUT_WR sent */
  int finished;
  uint64_t sent;
  uint64_t received;
  struct event *rev;
  struct event *wev;
} conn;

struct load {
  struct event_base *base;
  struct sockaddr_in addr;
  conn *conns;
  int nconns;
  int remaining;
  uint64_t bytes;
  size_t chunk;
  int echo;
  int failed;
  double t0;
  double first_done;
  double last_done;
  unsigned char *pattern;
  unsigned char *rbuf;
};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(FILE *f) {
  fprintf(f,
          "Usage: tunnel_load --port PORT [OPTIONS]\n"
          "       tunnel_load --free-port\n"
          "\n"
          "  --host ADDR     IPv4 address to connect to (127.0.0.1)\n"
          "  --port PORT     port to connect to\n"
          "  --conns N       concurrent connections (1)\n"
          "  --bytes B       bytes to send per connection; suffixes K, M, G\n"
          "                  are powers of 1024 (64M)\n"
          "  --chunk B       bytes per write() (256K)\n"
          "  --mode MODE     sink (one-way, default) or echo (verify the\n"
          "                  echoed bytes)\n"
          "  --seed N        pattern seed (default 1)\n"
          "  --timeout S     give up after S seconds (300)\n"
          "  --free-port     print an unused 127.0.0.1 TCP port and exit\n");
}

static int parse_size(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s)
    return -1;
  uint64_t mul = 1;
  if (*end == 'K' || *end == 'k')
    mul = 1024, end++;
  else if (*end == 'M' || *end == 'm')
    mul = 1024 * 1024, end++;
  else if (*end == 'G' || *end == 'g')
    mul = 1024ull * 1024 * 1024, end++;
  if (*end != '\0' || v > UINT64_MAX / mul)
    return -1;
  *out = (uint64_t)v * mul;
  return 0;
}

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof(sin);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
      getsockname(fd, (struct sockaddr *)&sin, &sl) < 0) {
    perror("tunnel_load: free port");
    return 1;
  }
  printf("%d\n", ntohs(sin.sin_port));
  close(fd);
  return 0;
}

static void fail(load *ld, int idx, const char *what, int err) {
  fprintf(stderr,
          "tunnel_load: connection %d: %s%s%s (sent %" PRIu64
          ", received %" PRIu64 ")\n",
          idx, what, err ? ": " : "", err ? strerror(err) : "",
          ld->conns[idx].sent, ld->conns[idx].received);
  ld->failed = 1;
  event_base_loopbreak(ld->base);
}

static void finish(conn *c) {
  load *ld = c->ld;
  c->finished = 1;
  event_del(c->rev);
  event_del(c->wev);
  close(c->fd);
  c->fd = -1;
  double t = now() - ld->t0;
  if (ld->first_done == 0)
    ld->first_done = t;
  ld->last_done = t;
  if (--ld->remaining == 0)
    event_base_loopbreak(ld->base);
}

static void read_cb(evutil_socket_t fd, short what, void *arg) {
  conn *c = arg;
  load *ld = c->ld;
  int idx = (int)(c - ld->conns);
  for (;;) {
    ssize_t n = read(fd, ld->rbuf, READ_SIZE);
    if (n > 0) {
      if (ld->echo) {
        /* Compare against the pattern at this offset, one contiguous
         * pattern run at a time. */
        size_t done = 0;
        while (done < (size_t)n) {
          size_t off = (size_t)((c->received + done) & (PATTERN_SIZE - 1));
          size_t run = PATTERN_SIZE - off;
          if (run > (size_t)n - done)
            run = (size_t)n - done;
          if (memcmp(ld->rbuf + done, ld->pattern + off, run) != 0) {
            fail(ld, idx, "echoed bytes differ from the bytes sent", 0);
            return;
          }
          done += run;
        }
        if (c->received + (uint64_t)n > ld->bytes) {
          fail(ld, idx, "more bytes echoed than sent", 0);
          return;
        }
      }
      c->received += (uint64_t)n;
      continue;
    }
    if (n == 0) {
      if (!c->write_done) {
        fail(ld, idx, "EOF before all bytes were written", 0);
        return;
      }
      if (ld->echo && c->received != ld->bytes) {
        fail(ld, idx, "EOF before all bytes were echoed", 0);
        return;
      }
      finish(c);
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return;
    fail(ld, idx, "read", errno);
    return;
  }
}

static void write_cb(evutil_socket_t fd, short what, void *arg) {
  conn *c = arg;
  load *ld = c->ld;
  int idx = (int)(c - ld->conns);
  if (!c->connected) {
    int err = 0;
    socklen_t el = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
      fail(ld, idx, "connect", err);
      return;
    }
    c->connected = 1;
    event_add(c->rev, NULL);
  }
  while (c->sent < ld->bytes) {
    size_t off = (size_t)(c->sent & (PATTERN_SIZE - 1));
    size_t len = ld->chunk;
    if (len > PATTERN_SIZE - off)
      len = PATTERN_SIZE - off;
    if ((uint64_t)len > ld->bytes - c->sent)
      len = (size_t)(ld->bytes - c->sent);
    ssize_t n = write(fd, ld->pattern + off, len);
    if (n > 0) {
      c->sent += (uint64_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return;
    fail(ld, idx, "write", n < 0 ? errno : EIO);
    return;
  }
  if (shutdown(fd, SHUT_WR) < 0) {
    fail(ld, idx, "shutdown", errno);
    return;
  }
  c->write_done = 1;
  event_del(c->wev);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg) {
  load *ld = arg;
  int unfinished = 0;
  for (int i = 0; i < ld->nconns; i++)
    unfinished += !ld->conns[i].finished;
  fprintf(stderr,
          "tunnel_load: timeout with %d of %d connections "
          "unfinished\n",
          unfinished, ld->nconns);
  for (int i = 0, shown = 0; i < ld->nconns && shown < 5; i++) {
    conn *c = &ld->conns[i];
    if (c->finished)
      continue;
    fprintf(stderr,
            "  connection %d: sent %" PRIu64 " received %" PRIu64 "%s\n", i,
            c->sent, c->received, c->write_done ? " (write side closed)" : "");
    shown++;
  }
  ld->failed = 1;
  event_base_loopbreak(ld->base);
}

static double tv_sec(struct timeval tv) {
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = -1, nconns = 1;
  uint64_t bytes = 64ull << 20, chunk = 256 << 10, seed = 1;
  int echo = 0;
  double timeout = 300;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(a, "--free-port") == 0)
      return free_port();
    if (!v) {
      fprintf(stderr, "tunnel_load: %s: missing value\n", a);
      return 2;
    }
    i++;
    if (strcmp(a, "--host") == 0)
      host = v;
    else if (strcmp(a, "--port") == 0)
      port = atoi(v);
    else if (strcmp(a, "--conns") == 0)
      nconns = atoi(v);
    else if (strcmp(a, "--bytes") == 0 && parse_size(v, &bytes) == 0)
      ;
    else if (strcmp(a, "--chunk") == 0 && parse_size(v, &chunk) == 0)
      ;
    else if (strcmp(a, "--seed") == 0 && parse_size(v, &seed) == 0)
      ;
    else if (strcmp(a, "--timeout") == 0)
      timeout = atof(v);
    else if (strcmp(a, "--mode") == 0 &&
             (strcmp(v, "sink") == 0 || strcmp(v, "echo") == 0))
      echo = strcmp(v, "echo") == 0;
    else {
      fprintf(stderr, "tunnel_load: bad option %s %s\n", a, v);
      usage(stderr);
      return 2;
    }
  }
  if (port <= 0 || port > 65535 || nconns <= 0 || bytes == 0 || chunk == 0 ||
      chunk > PATTERN_SIZE || timeout <= 0) {
    usage(stderr);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);

  load ld = {0};
  ld.addr.sin_family = AF_INET;
  ld.addr.sin_port = htons((unsigned short)port);
  if (inet_pton(AF_INET, host, &ld.addr.sin_addr) != 1) {
    fprintf(stderr, "tunnel_load: --host wants an IPv4 address: %s\n", host);
    return 2;
  }
  ld.nconns = ld.remaining = nconns;
  ld.bytes = bytes;
  ld.chunk = (size_t)chunk;
  ld.echo = echo;
  ld.pattern = malloc(PATTERN_SIZE);
  ld.rbuf = malloc(READ_SIZE);
  ld.conns = calloc((size_t)nconns, sizeof(conn));
  ld.base = event_base_new();
  if (!ld.pattern || !ld.rbuf || !ld.conns || !ld.base) {
    fprintf(stderr, "tunnel_load: out of memory\n");
    return 1;
  }
  uint64_t x = seed ? seed : 1;
  for (size_t i = 0; i < PATTERN_SIZE; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    ld.pattern[i] = (unsigned char)(x >> 32);
  }
  fprintf(stderr, "tunnel_load: seed %" PRIu64 "\n", seed);

  ld.t0 = now();
  for (int i = 0; i < nconns; i++) {
    conn *c = &ld.conns[i];
    c->ld = &ld;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) {
      perror("tunnel_load: socket");
      return 1;
    }
    evutil_make_socket_nonblocking(c->fd);
    if (connect(c->fd, (struct sockaddr *)&ld.addr, sizeof(ld.addr)) < 0 &&
        errno != EINPROGRESS) {
      fprintf(stderr, "tunnel_load: connect %s:%d: %s\n", host, port,
              strerror(errno));
      return 1;
    }
    c->rev = event_new(ld.base, c->fd, EV_READ | EV_PERSIST, read_cb, c);
    c->wev = event_new(ld.base, c->fd, EV_WRITE | EV_PERSIST, write_cb, c);
    event_add(c->wev, NULL);
  }
  struct timeval tv = {
      (time_t)timeout,
      (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
  struct event *tmo = evtimer_new(ld.base, timeout_cb, &ld);
  evtimer_add(tmo, &tv);

  event_base_dispatch(ld.base);
  double secs = now() - ld.t0;

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  int rc = ld.failed ? 1 : 0;
  if (!ld.failed) {
    double total = (double)bytes * nconns;
    printf("result mode=%s conns=%d bytes_per_conn=%" PRIu64
           " total_bytes=%.0f seconds=%.6f MBps=%.2f first_done=%.6f "
           "last_done=%.6f cpu_user=%.3f cpu_sys=%.3f\n",
           echo ? "echo" : "sink", nconns, bytes, total, secs,
           total / secs / 1e6, ld.first_done, ld.last_done, tv_sec(ru.ru_utime),
           tv_sec(ru.ru_stime));
  }
  for (int i = 0; i < nconns; i++) {
    conn *c = &ld.conns[i];
    if (c->rev)
      event_free(c->rev);
    if (c->wev)
      event_free(c->wev);
    if (c->fd >= 0)
      close(c->fd);
  }
  event_free(tmo);
  event_base_free(ld.base);
  free(ld.conns);
  free(ld.rbuf);
  free(ld.pattern);
  return rc;
}
