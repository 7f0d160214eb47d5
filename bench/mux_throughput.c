/* mux_throughput — in-memory kr_mux to kr_mux throughput.
 *
 * Two muxes in one thread: A (dialer) writes, B (acceptor) receives. There is
 * no transport: the bytes kr_mux_send() yields on A go straight into
 * kr_mux_recv() of B (the same pointer, no copy in between), and B's output
 * (WINDOW updates) straight back into A. The writer writes 64 KiB chunks
 * taken in turn from a source buffer; the receiver copies every delivered
 * chunk into a 64 KiB sink buffer (the "copy out") and consumes it at once,
 * so credit flows back as it would from a fast application.
 *
 * The baseline copies the same number of bytes from the same source buffer
 * into the same sink in the same 64 KiB pieces with memcpy(). The mux has to
 * copy at least twice (into a frame, out of it), so about 0.5 of memcpy is
 * the ceiling and anything above 0.3 means the framing itself is cheap. A
 * second baseline, "memcpy x2", does exactly those two copies (through a
 * staging buffer, at the payload offset behind a frame header) and nothing
 * else: the floor the mux is measured against.
 *
 * Counted exactly: DATA frames, by walking the frame headers of A's output
 * (every frame of type DATA, including an empty DATA frame that only carries
 * FIN); on_data calls on B (a frame split across two kr_mux_recv() calls is
 * delivered in two calls). "ns/frame" is elapsed time divided by DATA frames.
 * Stream setup (HELLO, OPEN, REPLY) is outside the timed part; the final
 * FINs and the stream closes are inside it.
 *
 *   mux_throughput [--bytes N[K|M|G]] [--runs N] [--quick]
 *                  [--streams A,B,...] [--src-size N[K|M|G]] [--verify]
 *
 * Defaults: 4 GiB per scenario, scenarios of 1 and 100 streams, 5 runs,
 * median reported, 1 MiB source buffer. --quick: 256 MiB. --verify checks
 * every delivered byte against the source (slower; for testing the bench).
 * Each run measures memcpy, memcpy x2 and then every scenario, so noise on a
 * shared machine hits all of them alike; the ratio printed is the median of
 * the per-run ratios.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kasroute/error.h>
#include <kasroute/mux.h>

#define CHUNK ((size_t)64 * 1024)
#define MAX_SCENARIOS 8
#define MAX_RUNS 101

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static kr_time_us now_us(void) {
  return now_ns() / 1000u;
}

static void die(const char *what, int64_t rc) {
  fprintf(stderr, "mux_throughput: %s failed: %s (%" PRId64 ")\n", what,
          rc < 0 ? kr_err_name((int)rc) : "unexpected", rc);
  exit(1);
}

/* Keeps the compiler from dropping copies into a buffer nobody reads. */
static void clobber(void *p) {
  __asm__ volatile("" : : "r"(p) : "memory");
}

/* ------------------------------------------------------------- the state */

typedef struct wstream { /* writer side (A) */
  kr_stream *s;
  uint64_t left; /* bytes still to write */
  uint64_t pos;  /* bytes written so far (source offset) */
  int blocked;   /* short write; waiting for on_writable */
  int fin_sent;
  int closed;
} wstream;

typedef struct rstream { /* receiver side (B) */
  uint64_t rx;
  int closed;
} rstream;

typedef struct walker { /* counts frames in A's output */
  uint8_t hdr[KR_FRAME_HEADER_SIZE];
  size_t have;
  uint64_t skip;
  uint64_t frames;
  uint64_t data_frames;
} walker;

typedef struct bench {
  kr_mux *a, *b;
  const uint8_t *src;
  size_t src_len;
  uint8_t *sink;
  size_t sink_pos;
  wstream *ws;
  rstream *rs;
  size_t nstreams;
  size_t rs_used;
  size_t replies;
  size_t closed_a, closed_b;
  uint64_t on_data_calls;
  uint64_t received;
  int verify;
  walker w;
} bench;

/* ------------------------------------------------------------- callbacks */

static void b_on_open(kr_mux *m, kr_stream *s, const kr_md *md, size_t n,
                      int fin, void *ud) {
  bench *bn = ud;
  (void)m, (void)md, (void)n, (void)fin;
  if (bn->rs_used == bn->nstreams)
    die("unexpected stream", -1);
  kr_stream_set_user_data(s, &bn->rs[bn->rs_used++]);
  static const kr_md reply[] = {
      {(const uint8_t *)":status", 7, (const uint8_t *)"200", 3}};
  int rc = kr_stream_reply(s, reply, 1, 0);
  if (rc != 0)
    die("kr_stream_reply", rc);
}

static void b_on_data(kr_stream *s, const uint8_t *data, size_t len, void *ud) {
  bench *bn = ud;
  rstream *r = kr_stream_user_data(s);
  if (bn->verify) {
    size_t off = (size_t)(r->rx % bn->src_len);
    for (size_t i = 0; i < len; i++) {
      if (data[i] != bn->src[off]) {
        fprintf(stderr,
                "mux_throughput: stream %" PRIu32 " byte %" PRIu64 " differs\n",
                kr_stream_id(s), r->rx + i);
        exit(1);
      }
      if (++off == bn->src_len)
        off = 0;
    }
  }
  /* The copy out: into the 64 KiB sink, as an application would. */
  if (bn->sink_pos + len > CHUNK)
    bn->sink_pos = 0;
  memcpy(bn->sink + bn->sink_pos, data, len);
  bn->sink_pos += len;
  r->rx += len;
  bn->received += len;
  bn->on_data_calls++;
  int rc = kr_stream_consume(s, len);
  if (rc != 0)
    die("kr_stream_consume", rc);
}

static void b_on_fin(kr_stream *s, void *ud) {
  (void)ud;
  int rc = kr_stream_close_write(s);
  if (rc != 0)
    die("kr_stream_close_write (receiver)", rc);
}

static void b_on_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                       size_t reason_len, void *ud) {
  bench *bn = ud;
  rstream *r = kr_stream_user_data(s);
  if (code != KR_CODE_NO_ERROR) {
    fprintf(stderr, "mux_throughput: receiver stream closed with %s: %.*s\n",
            kr_code_name(code), (int)reason_len, (const char *)reason);
    exit(1);
  }
  r->closed = 1;
  bn->closed_b++;
}

static void a_on_reply(kr_stream *s, const kr_md *md, size_t n, int fin,
                       void *ud) {
  bench *bn = ud;
  (void)s, (void)md, (void)n, (void)fin;
  bn->replies++;
}

static void a_on_writable(kr_stream *s, void *ud) {
  (void)ud;
  wstream *w = kr_stream_user_data(s);
  w->blocked = 0;
}

static void a_on_close(kr_stream *s, uint32_t code, const uint8_t *reason,
                       size_t reason_len, void *ud) {
  bench *bn = ud;
  wstream *w = kr_stream_user_data(s);
  if (code != KR_CODE_NO_ERROR) {
    fprintf(stderr, "mux_throughput: writer stream closed with %s: %.*s\n",
            kr_code_name(code), (int)reason_len, (const char *)reason);
    exit(1);
  }
  w->closed = 1;
  bn->closed_a++;
}

static void on_goaway(kr_mux *m, int remote, uint32_t code,
                      const uint8_t *reason, size_t reason_len, void *ud) {
  (void)m, (void)ud;
  fprintf(stderr, "mux_throughput: GOAWAY %s (%s): %.*s\n",
          remote ? "received" : "sent", kr_code_name(code), (int)reason_len,
          (const char *)reason);
  exit(1);
}

/* ------------------------------------------------------------- transport */

static void walk(walker *w, const uint8_t *p, size_t n) {
  while (n > 0) {
    if (w->skip > 0) {
      size_t k = w->skip < n ? (size_t)w->skip : n;
      w->skip -= k;
      p += k;
      n -= k;
      continue;
    }
    size_t k = KR_FRAME_HEADER_SIZE - w->have;
    if (k > n)
      k = n;
    memcpy(w->hdr + w->have, p, k);
    w->have += k;
    p += k;
    n -= k;
    if (w->have == KR_FRAME_HEADER_SIZE) {
      w->have = 0;
      w->skip =
          ((uint32_t)w->hdr[0] << 16) | ((uint32_t)w->hdr[1] << 8) | w->hdr[2];
      w->frames++;
      if (w->hdr[3] == 0) /* DATA */
        w->data_frames++;
    }
  }
}

/* Moves bytes both ways until neither side has anything to send. */
static void pump(bench *bn) {
  for (;;) {
    int moved = 0;
    const uint8_t *p;
    size_t n = kr_mux_send(bn->a, &p);
    if (n > 0) {
      walk(&bn->w, p, n);
      int64_t rc = kr_mux_recv(bn->b, p, n, now_us());
      if (rc != (int64_t)n)
        die("kr_mux_recv (receiver)", rc);
      int src = kr_mux_sent(bn->a, n);
      if (src != 0)
        die("kr_mux_sent (writer)", src);
      moved = 1;
    }
    n = kr_mux_send(bn->b, &p);
    if (n > 0) {
      int64_t rc = kr_mux_recv(bn->a, p, n, now_us());
      if (rc != (int64_t)n)
        die("kr_mux_recv (writer)", rc);
      int src = kr_mux_sent(bn->b, n);
      if (src != 0)
        die("kr_mux_sent (receiver)", src);
      moved = 1;
    }
    if (!moved)
      return;
  }
}

static kr_mux *mux_new(bench *bn, kr_role role) {
  kr_mux_options *opt = NULL;
  kr_mux_callbacks *cbs = NULL;
  kr_mux *m = NULL;
  int rc = kr_mux_options_new(&opt);
  if (rc == 0)
    rc = kr_mux_options_set_role(opt, role);
  if (rc == 0)
    rc = kr_mux_callbacks_new(&cbs);
  if (rc != 0)
    die("options", rc);
  kr_mux_callbacks_set_on_goaway(cbs, on_goaway);
  if (role == KR_ROLE_ACCEPTOR) {
    kr_mux_callbacks_set_on_open(cbs, b_on_open);
    kr_mux_callbacks_set_on_data(cbs, b_on_data);
    kr_mux_callbacks_set_on_fin(cbs, b_on_fin);
    kr_mux_callbacks_set_on_close(cbs, b_on_close);
  } else {
    kr_mux_callbacks_set_on_reply(cbs, a_on_reply);
    kr_mux_callbacks_set_on_writable(cbs, a_on_writable);
    kr_mux_callbacks_set_on_close(cbs, a_on_close);
  }
  rc = kr_mux_new(&m, opt, cbs, now_us(), bn);
  if (rc != 0)
    die("kr_mux_new", rc);
  kr_mux_options_free(opt);
  kr_mux_callbacks_free(cbs);
  return m;
}

/* ------------------------------------------------------------- measuring */

typedef struct result {
  double seconds;
  uint64_t data_frames;
  uint64_t on_data_calls;
} result;

/* One mux run: nstreams streams share `bytes` in whole 64 KiB chunks. */
static result run_mux(const uint8_t *src, size_t src_len, uint8_t *sink,
                      uint64_t bytes, size_t nstreams, int verify) {
  bench bn;
  memset(&bn, 0, sizeof bn);
  bn.src = src;
  bn.src_len = src_len;
  bn.sink = sink;
  bn.nstreams = nstreams;
  bn.verify = verify;
  bn.ws = calloc(nstreams, sizeof *bn.ws);
  bn.rs = calloc(nstreams, sizeof *bn.rs);
  if (bn.ws == NULL || bn.rs == NULL)
    die("calloc", KR_ENOMEM);
  bn.a = mux_new(&bn, KR_ROLE_DIALER);
  bn.b = mux_new(&bn, KR_ROLE_ACCEPTOR);
  pump(&bn); /* HELLOs */
  if (!kr_mux_is_ready(bn.a) || !kr_mux_is_ready(bn.b))
    die("handshake", -1);

  uint64_t chunks = bytes / CHUNK;
  static const kr_md md[] = {
      {(const uint8_t *)":service", 8, (const uint8_t *)"bench", 5}};
  for (size_t i = 0; i < nstreams; i++) {
    wstream *w = &bn.ws[i];
    w->left = (chunks / nstreams + (i < chunks % nstreams)) * CHUNK;
    int rc = kr_stream_open(bn.a, md, 1, 0, w, &w->s);
    if (rc != 0)
      die("kr_stream_open", rc);
  }
  pump(&bn);
  if (bn.replies != nstreams)
    die("replies", -1);
  uint64_t frames0 = bn.w.data_frames;

  uint64_t t0 = now_ns();
  size_t open_writers = nstreams;
  while (open_writers > 0 || bn.closed_a < nstreams || bn.closed_b < nstreams) {
    int progress = 0;
    for (size_t i = 0; i < nstreams; i++) {
      wstream *w = &bn.ws[i];
      if (w->fin_sent || w->blocked)
        continue;
      if (w->left > 0) {
        /* The rest of the current 64 KiB chunk (all of it unless the last
         * write was short). */
        size_t in_chunk = (size_t)(w->pos % CHUNK);
        size_t piece = CHUNK - in_chunk;
        if (piece > w->left)
          piece = (size_t)w->left;
        size_t off = (size_t)(w->pos % src_len);
        int64_t rc = kr_stream_write(w->s, src + off, piece);
        if (rc == KR_EAGAIN) {
          w->blocked = 1;
          continue;
        }
        if (rc < 0)
          die("kr_stream_write", rc);
        w->pos += (uint64_t)rc;
        w->left -= (uint64_t)rc;
        if ((size_t)rc < piece)
          w->blocked = 1;
        progress = 1;
      }
      if (w->left == 0) {
        int rc = kr_stream_close_write(w->s);
        if (rc != 0)
          die("kr_stream_close_write", rc);
        w->fin_sent = 1;
        open_writers--;
        progress = 1;
      }
      pump(&bn);
    }
    if (!progress) {
      pump(&bn);
      /* Everyone blocked and nothing moved: the library lost a wake-up. */
      int any = 0;
      for (size_t i = 0; i < nstreams; i++)
        any |= !bn.ws[i].blocked && !bn.ws[i].fin_sent;
      if (!any && open_writers > 0 && !kr_mux_want_write(bn.a) &&
          !kr_mux_want_write(bn.b)) {
        fprintf(stderr,
                "mux_throughput: stalled: %zu writers blocked, "
                "no output, no on_writable\n",
                open_writers);
        exit(1);
      }
      if (open_writers == 0 &&
          (bn.closed_a < nstreams || bn.closed_b < nstreams) &&
          !kr_mux_want_write(bn.a) && !kr_mux_want_write(bn.b)) {
        fprintf(stderr,
                "mux_throughput: streams did not close (%zu/%zu "
                "writer, %zu/%zu receiver)\n",
                bn.closed_a, nstreams, bn.closed_b, nstreams);
        exit(1);
      }
    }
  }
  uint64_t t1 = now_ns();
  clobber(sink);

  if (bn.received != chunks * CHUNK) {
    fprintf(stderr, "mux_throughput: received %" PRIu64 " of %" PRIu64 "\n",
            bn.received, chunks * CHUNK);
    exit(1);
  }
  result r = {(double)(t1 - t0) / 1e9, bn.w.data_frames - frames0,
              bn.on_data_calls};
  kr_mux_free(bn.a);
  kr_mux_free(bn.b);
  free(bn.ws);
  free(bn.rs);
  return r;
}

/* The baseline. With staging != NULL each chunk is copied twice, through
 * staging + KR_FRAME_HEADER_SIZE (where a DATA payload sits behind its
 * header): the two copies the mux cannot avoid, and nothing else. */
static result run_memcpy(const uint8_t *src, size_t src_len, uint8_t *sink,
                         uint8_t *staging, uint64_t bytes) {
  uint64_t chunks = bytes / CHUNK;
  uint64_t t0 = now_ns();
  size_t off = 0;
  for (uint64_t i = 0; i < chunks; i++) {
    if (staging != NULL) {
      memcpy(staging + KR_FRAME_HEADER_SIZE, src + off, CHUNK);
      clobber(staging);
      memcpy(sink, staging + KR_FRAME_HEADER_SIZE, CHUNK);
    } else {
      memcpy(sink, src + off, CHUNK);
    }
    clobber(sink);
    off += CHUNK;
    if (off == src_len)
      off = 0;
  }
  uint64_t t1 = now_ns();
  result r = {(double)(t1 - t0) / 1e9, chunks, 0};
  return r;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t parse_size(const char *s, const char *opt) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s)
    goto bad;
  switch (*end) {
  case 'K':
  case 'k':
    v <<= 10;
    end++;
    break;
  case 'M':
  case 'm':
    v <<= 20;
    end++;
    break;
  case 'G':
  case 'g':
    v <<= 30;
    end++;
    break;
  default:
    break;
  }
  if (*end == 'i' && end[1] == 'B')
    end += 2;
  if (*end != '\0')
    goto bad;
  return v;
bad:
  fprintf(stderr, "mux_throughput: bad value for %s: %s\n", opt, s);
  exit(2);
}

static void usage(void) {
  fprintf(stderr,
          "usage: mux_throughput [--bytes N[K|M|G]] [--runs N] [--quick]\n"
          "                      [--streams A,B,...] [--src-size N[K|M|G]]\n"
          "                      [--verify]\n");
  exit(2);
}

int main(int argc, char **argv) {
  uint64_t bytes = (uint64_t)4 << 30;
  int runs = 5;
  size_t src_len = (size_t)1 << 20;
  size_t streams[MAX_SCENARIOS] = {1, 100};
  int nscen = 2;
  int verify = 0;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--quick") == 0) {
      bytes = (uint64_t)256 << 20;
    } else if (strcmp(a, "--verify") == 0) {
      verify = 1;
    } else if (strcmp(a, "--bytes") == 0 && i + 1 < argc) {
      bytes = parse_size(argv[++i], a);
    } else if (strcmp(a, "--src-size") == 0 && i + 1 < argc) {
      src_len = (size_t)parse_size(argv[++i], a);
    } else if (strcmp(a, "--runs") == 0 && i + 1 < argc) {
      runs = (int)parse_size(argv[++i], a);
    } else if (strcmp(a, "--streams") == 0 && i + 1 < argc) {
      char *list = argv[++i], *save = NULL;
      nscen = 0;
      for (char *t = strtok_r(list, ",", &save); t != NULL;
           t = strtok_r(NULL, ",", &save)) {
        if (nscen == MAX_SCENARIOS)
          usage();
        streams[nscen++] = (size_t)parse_size(t, "--streams");
      }
    } else {
      usage();
    }
  }
  if (runs < 1 || runs > MAX_RUNS || nscen == 0 || src_len < CHUNK ||
      src_len % CHUNK != 0 || bytes < CHUNK)
    usage();
  bytes -= bytes % CHUNK;
  for (int s = 0; s < nscen; s++)
    if (streams[s] == 0 || streams[s] > bytes / CHUNK)
      usage();

  uint8_t *src = malloc(src_len);
  uint8_t *sink = malloc(CHUNK);
  uint8_t *staging = malloc(CHUNK + KR_FRAME_HEADER_SIZE);
  if (src == NULL || sink == NULL || staging == NULL)
    die("malloc", KR_ENOMEM);
  uint64_t x = 0x9e3779b97f4a7c15ull; /* fixed pattern, any bytes do */
  for (size_t i = 0; i < src_len; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    src[i] = (uint8_t)x;
  }
  memset(sink, 0, CHUNK);
  memset(staging, 0, CHUNK + KR_FRAME_HEADER_SIZE);

  printf("mux_throughput: libkasroute %s, %" PRIu64 " bytes per scenario in "
         "64 KiB writes, source buffer %zu KiB, %d run(s), default mux "
         "options%s\n",
         kr_version(), bytes, src_len >> 10, runs,
         verify ? ", verifying every byte" : "");
  fflush(stdout);

  /* Rows: 0 memcpy, 1 memcpy twice, 2.. the mux scenarios. */
  enum { BASE = 2 };
  static double mbps[MAX_SCENARIOS + BASE][MAX_RUNS];
  static double nspf[MAX_SCENARIOS + BASE][MAX_RUNS];
  static double ratio[MAX_SCENARIOS + BASE][MAX_RUNS];
  uint64_t frames[MAX_SCENARIOS + BASE] = {0};
  uint64_t calls[MAX_SCENARIOS + BASE] = {0};

  for (int r = 0; r < runs; r++) {
    for (int row = 0; row < nscen + BASE; row++) {
      result q = row == 0   ? run_memcpy(src, src_len, sink, NULL, bytes)
                 : row == 1 ? run_memcpy(src, src_len, sink, staging, bytes)
                            : run_mux(src, src_len, sink, bytes,
                                      streams[row - BASE], verify);
      mbps[row][r] = (double)bytes / 1e6 / q.seconds;
      nspf[row][r] = q.seconds * 1e9 / (double)q.data_frames;
      ratio[row][r] = mbps[row][r] / mbps[0][r];
      frames[row] = q.data_frames;
      calls[row] = q.on_data_calls;
    }
    printf("run %d: memcpy %.0f MB/s, memcpy x2 %.0f MB/s", r + 1, mbps[0][r],
           mbps[1][r]);
    for (int row = BASE; row < nscen + BASE; row++)
      printf(", %zu stream(s) %.0f MB/s", streams[row - BASE], mbps[row][r]);
    printf("\n");
    fflush(stdout);
  }

  /* MB/s: median and range over the runs. Ratio: median over the runs of
   * (this run's MB/s / this run's memcpy MB/s); each run measures memcpy
   * right before the rest, so slow drifts of a shared machine cancel. */
  printf("\nmedian of %d run(s), %" PRIu64 " bytes each:\n", runs, bytes);
  printf("| scenario | MB/s | MB/s min-max | ns/DATA frame | DATA frames "
         "| on_data calls | ratio to memcpy |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|\n");
  for (int row = 0; row < nscen + BASE; row++) {
    double lo = mbps[row][0], hi = mbps[row][0];
    for (int r = 1; r < runs; r++) {
      lo = mbps[row][r] < lo ? mbps[row][r] : lo;
      hi = mbps[row][r] > hi ? mbps[row][r] : hi;
    }
    double v = median(mbps[row], runs);
    double ns = median(nspf[row], runs);
    double q = median(ratio[row], runs);
    if (row < BASE)
      printf("| %s, 64 KiB chunks | %.0f | %.0f-%.0f | %.0f (per chunk) | "
             "%" PRIu64 " (chunks) | - | %.2f |\n",
             row == 0 ? "memcpy" : "memcpy x2 (floor)", v, lo, hi, ns,
             frames[row], q);
    else
      printf("| mux, %zu stream%s | %.0f | %.0f-%.0f | %.0f | %" PRIu64
             " | %" PRIu64 " | %.2f |\n",
             streams[row - BASE], streams[row - BASE] == 1 ? "" : "s", v, lo,
             hi, ns, frames[row], calls[row], q);
  }
  free(staging);
  free(src);
  free(sink);
  return 0;
}
