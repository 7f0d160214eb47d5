/* Non-blocking stream socket for bulk transfer (see sock.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <kasroute/error.h>

#include "sock.h"
#include "transport.h"

struct kr__sock {
  struct event_base *base;
  int fd;
  struct event *rev;   /* persistent read */
  struct event *wev;   /* write (armed while output is queued) */
  struct event *tev;   /* deadline */
  struct event *dev;   /* deferred notifications */
  struct evbuffer *out;
  kr__sock_cbs cb;
  void *ud;
  int reading;
  int connecting;
  int shut_pending, shut_done;
  int want_drain;
  size_t low_water;
  int fail_err; /* failure waiting to be reported from the loop */
  char fail_why[160];
  int failed;   /* reported */
  int busy, free_pending;
  char peer[96];
  char deadline_why[96];
};

/* Read buffer shared by every socket of the thread: on_read gets a pointer
 * into it that is only valid during the call. */
static _Thread_local uint8_t read_buf[KR__SOCK_READ_CHUNK];

static void destroy(kr__sock *s) {
  event_free(s->rev);
  event_free(s->wev);
  event_free(s->tev);
  event_free(s->dev);
  evbuffer_free(s->out);
  if (s->fd >= 0)
    close(s->fd);
  free(s);
}

static void enter(kr__sock *s) { s->busy++; }

/* Returns 1 if s was freed. */
static int leave(kr__sock *s) {
  if (--s->busy == 0 && s->free_pending) {
    destroy(s);
    return 1;
  }
  return 0;
}

void kr__sock_free(kr__sock *s) {
  if (!s)
    return;
  if (s->busy) {
    s->free_pending = 1;
    event_del(s->rev);
    event_del(s->wev);
    event_del(s->tev);
    event_del(s->dev);
    return;
  }
  destroy(s);
}

static void fail(kr__sock *s, int err, const char *why) {
  if (s->failed || s->free_pending)
    return;
  s->failed = 1;
  event_del(s->rev);
  event_del(s->wev);
  event_del(s->tev);
  if (s->cb.on_error)
    s->cb.on_error(s, err, why, s->ud);
}

static void fail_errno(kr__sock *s, const char *what, int e) {
  char why[160];
  snprintf(why, sizeof(why), "%s: %s", what, strerror(e));
  fail(s, KR_EIO, why);
}

/* A failure found inside a call is reported from the loop, so that the
 * caller's stack never sees callbacks it did not expect. */
static void defer_fail(kr__sock *s, const char *what, int e) {
  if (s->fail_err)
    return;
  s->fail_err = KR_EIO;
  snprintf(s->fail_why, sizeof(s->fail_why), "%s: %s", what, strerror(e));
  event_active(s->dev, EV_TIMEOUT, 0);
}

static void set_peer(kr__sock *s) {
  kr__peer_name(s->fd, s->peer, sizeof(s->peer));
}

static void check_drain(kr__sock *s) {
  if (s->want_drain && evbuffer_get_length(s->out) <= s->low_water &&
      !s->failed && !s->free_pending) {
    s->want_drain = 0;
    if (s->cb.on_drain)
      s->cb.on_drain(s, s->ud);
  }
}

/* Sends what the output buffer holds with sendmsg(MSG_NOSIGNAL): a peer
 * that closed must give EPIPE, never SIGPIPE, which would kill a host
 * program that did not ignore the signal (evbuffer_write uses writev). */
static ssize_t send_buffered(kr__sock *s) {
  struct evbuffer_iovec v[16];
  int nv = evbuffer_peek(s->out, -1, NULL, v, 16);
  if (nv > 16)
    nv = 16;
  struct msghdr msg = {0};
  struct iovec iov[16];
  for (int i = 0; i < nv; i++) {
    iov[i].iov_base = v[i].iov_base;
    iov[i].iov_len = v[i].iov_len;
  }
  msg.msg_iov = iov;
  msg.msg_iovlen = (size_t)nv;
  ssize_t n = sendmsg(s->fd, &msg, MSG_NOSIGNAL);
  if (n > 0)
    evbuffer_drain(s->out, (size_t)n);
  return n;
}

static void flush_out(kr__sock *s) {
  while (evbuffer_get_length(s->out) > 0) {
    ssize_t n = send_buffered(s);
    if (n > 0)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
      break;
    if (n < 0) {
      fail_errno(s, "send failed", errno);
      return;
    }
    break;
  }
  if (evbuffer_get_length(s->out) == 0) {
    event_del(s->wev);
    if (s->shut_pending && !s->shut_done) {
      shutdown(s->fd, SHUT_WR);
      s->shut_done = 1;
    }
  } else {
    event_add(s->wev, NULL);
  }
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
  kr__sock *s = arg;
  enter(s);
  /* A budget keeps one busy socket from starving the others. */
  size_t budget = 4 * KR__SOCK_READ_CHUNK;
  while (s->reading && !s->failed && !s->free_pending && budget > 0) {
    ssize_t n = recv(s->fd, read_buf, sizeof(read_buf), 0);
    if (n > 0) {
      budget -= (size_t)n < budget ? (size_t)n : budget;
      if (s->cb.on_read)
        s->cb.on_read(s, read_buf, (size_t)n, s->ud);
      if ((size_t)n < sizeof(read_buf))
        break; /* most likely drained: let epoll say when there is more */
      continue;
    }
    if (n == 0) {
      s->reading = 0;
      event_del(s->rev);
      if (s->cb.on_eof)
        s->cb.on_eof(s, s->ud);
      break;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      fail_errno(s, "receive failed", errno);
    break;
  }
  leave(s);
}

static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void on_writable(evutil_socket_t fd, short what, void *arg) {
  kr__sock *s = arg;
  enter(s);
  if (s->connecting) {
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      char why[200];
      snprintf(why, sizeof(why), "connect to %s failed: %s", s->peer,
               strerror(err));
      fail(s, KR_EIO, why);
      leave(s);
      return;
    }
    s->connecting = 0;
    set_nodelay(s->fd);
    set_peer(s);
    if (s->reading)
      event_add(s->rev, NULL);
    if (s->cb.on_connect)
      s->cb.on_connect(s, s->ud);
  }
  if (!s->failed && !s->free_pending) {
    flush_out(s);
    check_drain(s);
  }
  leave(s);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg) {
  kr__sock *s = arg;
  enter(s);
  fail(s, KR_ETIMEDOUT, s->deadline_why);
  leave(s);
}

static void on_deferred(evutil_socket_t fd, short what, void *arg) {
  kr__sock *s = arg;
  enter(s);
  if (s->fail_err)
    fail(s, s->fail_err, s->fail_why);
  else
    check_drain(s);
  leave(s);
}

static kr__sock *sock_alloc(struct event_base *base, int fd,
                            const kr__sock_cbs *cbs, void *ud) {
  kr__sock *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  s->base = base;
  s->fd = fd;
  s->cb = *cbs;
  s->ud = ud;
  s->reading = 1;
  snprintf(s->peer, sizeof(s->peer), "?");
  s->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, s);
  s->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, s);
  s->tev = event_new(base, -1, 0, on_deadline, s);
  s->dev = event_new(base, -1, 0, on_deferred, s);
  s->out = evbuffer_new();
  if (!s->rev || !s->wev || !s->tev || !s->dev || !s->out) {
    if (s->rev)
      event_free(s->rev);
    if (s->wev)
      event_free(s->wev);
    if (s->tev)
      event_free(s->tev);
    if (s->dev)
      event_free(s->dev);
    if (s->out)
      evbuffer_free(s->out);
    free(s);
    return NULL;
  }
  return s;
}

int kr__sock_new(struct event_base *base, int fd, const kr__sock_cbs *cbs,
                 void *ud, kr__sock **out) {
  evutil_make_socket_nonblocking(fd);
  evutil_make_socket_closeonexec(fd);
  set_nodelay(fd);
  kr__sock *s = sock_alloc(base, fd, cbs, ud);
  if (!s) {
    close(fd);
    return KR_ENOMEM;
  }
  set_peer(s);
  event_add(s->rev, NULL);
  *out = s;
  return 0;
}

int kr__sock_connect(struct event_base *base, const char *host, int port,
                     const kr__sock_cbs *cbs, void *ud, kr__sock **out) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  char ports[16];
  snprintf(ports, sizeof(ports), "%d", port);
  if (getaddrinfo(host, ports, &hints, &res) != 0 || !res)
    return KR_EADDR;
  int fd = -1, e = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd < 0)
      continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)
      break;
    e = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  kr__sock *s = NULL;
  if (fd >= 0 || e) {
    s = sock_alloc(base, fd, cbs, ud);
    if (!s) {
      if (fd >= 0)
        close(fd);
      return KR_ENOMEM;
    }
  }
  if (!s)
    return KR_EADDR;
  snprintf(s->peer, sizeof(s->peer), "%s:%d", host, port);
  if (fd < 0) {
    /* Refused at once: report from the loop like any connect failure. */
    s->fd = -1;
    defer_fail(s, "connect failed", e);
  } else {
    s->connecting = 1;
    event_add(s->wev, NULL);
  }
  *out = s;
  return 0;
}

void kr__sock_set_cbs(kr__sock *s, const kr__sock_cbs *cbs, void *ud) {
  s->cb = *cbs;
  s->ud = ud;
}

void kr__sock_set_reading(kr__sock *s, int on) {
  on = on ? 1 : 0;
  if (s->reading == on || s->failed)
    return;
  s->reading = on;
  if (s->connecting || s->fd < 0)
    return;
  if (on)
    event_add(s->rev, NULL);
  else
    event_del(s->rev);
}

size_t kr__sock_write(kr__sock *s, const void *p, size_t n, size_t limit) {
  if (s->failed || s->fail_err || s->shut_pending || n == 0)
    return 0;
  size_t done = 0;
  size_t queued = evbuffer_get_length(s->out);
  if (!s->connecting && queued == 0) {
    ssize_t w = send(s->fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      done = (size_t)w;
    } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
               errno != EINTR) {
      defer_fail(s, "send failed", errno);
      return 0;
    }
  }
  if (done < n && queued < limit) {
    size_t take = n - done;
    if (take > limit - queued)
      take = limit - queued;
    if (evbuffer_add(s->out, (const uint8_t *)p + done, take) == 0)
      done += take;
  }
  if (evbuffer_get_length(s->out) > 0 && !s->connecting)
    event_add(s->wev, NULL);
  if (done < n) {
    s->want_drain = 1;
    if (s->low_water == 0 || s->low_water > limit / 4)
      s->low_water = limit / 4;
  }
  return done;
}

size_t kr__sock_pending(const kr__sock *s) {
  return evbuffer_get_length(s->out);
}

void kr__sock_want_drain(kr__sock *s, size_t low_water) {
  s->want_drain = 1;
  s->low_water = low_water;
  /* Only an empty queue is reported at once: otherwise the notification
   * comes when a send shrinks the queue, never in a loop over a queue that
   * does not move (a socket still connecting, or blocked). */
  if (evbuffer_get_length(s->out) == 0 && !s->connecting)
    event_active(s->dev, EV_TIMEOUT, 0);
}

void kr__sock_shutdown_write(kr__sock *s) {
  if (s->shut_pending || s->failed)
    return;
  s->shut_pending = 1;
  if (!s->connecting && evbuffer_get_length(s->out) == 0 && s->fd >= 0) {
    shutdown(s->fd, SHUT_WR);
    s->shut_done = 1;
  }
}

void kr__sock_close_gracefully(kr__sock *s, int linger, int deadline_ms) {
  /* A peer that stops reading, or never closes, cannot hold this up. */
  kr__sock_set_deadline(s, deadline_ms, "close timed out");
  if (!linger) {
    kr__sock_want_drain(s, 0);
    return;
  }
  kr__sock_shutdown_write(s);
  kr__sock_set_reading(s, 1);
}

void kr__sock_set_deadline(kr__sock *s, int ms, const char *why) {
  snprintf(s->deadline_why, sizeof(s->deadline_why), "%s", why);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  event_add(s->tev, &tv);
}

void kr__sock_clear_deadline(kr__sock *s) { event_del(s->tev); }

const char *kr__sock_peer(const kr__sock *s) { return s->peer; }
