/* bclient_load — N small HTTP requests through kas with the blocking client
 * (kasroute/blocking.h) from T threads sharing one kr_bclient: the C
 * baseline that bench/ruby/run.sh compares the Ruby binding with.
 *
 *   bclient_load --kas URL --secret-file FILE --agent ID --service NAME
 *                [--path /hello] [--requests 10000] [--threads 1]
 *                [--expect-bytes N]
 *
 * Every response must have status 200 (and, with --expect-bytes, a body
 * of exactly that size); any other answer or error fails the run (exit 1).
 * Prints one line:
 *   c threads=T requests=N seconds=S rps=R
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kasroute/blocking.h>
#include <kasroute/error.h>

#define MAX_THREADS 256
#define SECRET_MAX 1024

static kr_bclient *client;
static int64_t agent;
static const char *service;
static const char *path = "/hello";
static long expect_bytes = -1;
static atomic_long next_request;
static long total = 10000;
static atomic_int failed;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One request, its body read to the end. 0 or -1 (reason printed). */
static int one_request(void) {
  kr_bhttp_response *r;
  int rc = kr_bclient_http_request(client, agent, service, "GET", path, NULL, 0,
                                   NULL, 0, 0, &r);
  if (rc < 0) {
    fprintf(stderr, "bclient_load: request: %s (%s)\n", kr_err_name(rc),
            kr_bclient_last_error());
    return -1;
  }
  int status = kr_bhttp_response_status(r);
  char buf[16384];
  long got = 0;
  int64_t n;
  while ((n = kr_bhttp_response_read(r, buf, sizeof(buf), 0)) > 0)
    got += n;
  kr_bhttp_response_free(r);
  if (n < 0 || status != 200 || (expect_bytes >= 0 && got != expect_bytes)) {
    fprintf(stderr, "bclient_load: status %d, %ld body bytes%s%s\n", status,
            got, n < 0 ? ", read: " : "", n < 0 ? kr_err_name((int)n) : "");
    return -1;
  }
  return 0;
}

static void *worker(void *arg) {
  (void)arg;
  while (atomic_fetch_add(&next_request, 1) < total && !atomic_load(&failed))
    if (one_request() < 0)
      atomic_store(&failed, 1);
  return NULL;
}

static int read_secret(const char *file, uint8_t *out, size_t *len) {
  FILE *f = fopen(file, "rb");
  if (!f)
    return -1;
  size_t n = fread(out, 1, SECRET_MAX, f);
  fclose(f);
  while (n && (out[n - 1] == '\n' || out[n - 1] == '\r'))
    n--;
  *len = n;
  return n ? 0 : -1;
}

static void usage(void) {
  fprintf(stderr, "usage: bclient_load --kas URL --secret-file FILE --agent "
                  "ID --service NAME [--path P] [--requests N] [--threads "
                  "T] [--expect-bytes N]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *url = NULL, *secret_file = NULL;
  long threads = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc)
      usage();
    const char *v = argv[++i];
    if (!strcmp(a, "--kas"))
      url = v;
    else if (!strcmp(a, "--secret-file"))
      secret_file = v;
    else if (!strcmp(a, "--agent"))
      agent = strtoll(v, NULL, 10);
    else if (!strcmp(a, "--service"))
      service = v;
    else if (!strcmp(a, "--path"))
      path = v;
    else if (!strcmp(a, "--requests"))
      total = strtol(v, NULL, 10);
    else if (!strcmp(a, "--threads"))
      threads = strtol(v, NULL, 10);
    else if (!strcmp(a, "--expect-bytes"))
      expect_bytes = strtol(v, NULL, 10);
    else
      usage();
  }
  if (!url || !secret_file || agent <= 0 || !service || total <= 0 ||
      threads <= 0 || threads > MAX_THREADS)
    usage();

  uint8_t secret[SECRET_MAX];
  size_t secret_len;
  if (read_secret(secret_file, secret, &secret_len) < 0) {
    fprintf(stderr, "bclient_load: cannot read %s\n", secret_file);
    return 1;
  }
  kr_bclient_options *o;
  char err[256] = "";
  int rc = kr_bclient_options_new(&o);
  if (rc == 0)
    rc = kr_bclient_options_set_url(o, url);
  if (rc == 0)
    rc = kr_bclient_options_set_secret(o, secret, secret_len);
  memset(secret, 0, sizeof(secret));
  if (rc == 0)
    rc = kr_bclient_new(&client, o, err, sizeof(err));
  kr_bclient_options_free(o);
  if (rc < 0) {
    fprintf(stderr, "bclient_load: %s: %s\n", kr_err_name(rc),
            err[0] ? err : kr_strerror(rc));
    return 1;
  }
  /* One request first: the connection is up before the clock starts, as
   * for the Ruby side. */
  if (one_request() < 0) {
    kr_bclient_free(client);
    return 1;
  }

  pthread_t tid[MAX_THREADS];
  double t0 = now_s();
  long started = 0;
  for (; started < threads; started++)
    if (pthread_create(&tid[started], NULL, worker, NULL) != 0) {
      atomic_store(&failed, 1);
      break;
    }
  for (long i = 0; i < started; i++)
    pthread_join(tid[i], NULL);
  double dt = now_s() - t0;
  kr_bclient_free(client);
  if (atomic_load(&failed))
    return 1;
  printf("c threads=%ld requests=%ld seconds=%.3f rps=%.0f\n", threads, total,
         dt, (double)total / dt);
  return 0;
}
