/* The "kubernetes" service (see kube_service.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kasroute/error.h>

#include "http/http_map.h"
#include "io/conn.h"
#include "io/log.h"
#include "kube_service.h"

#define KUBE_RECHECK_US 1000000u /* token file stat at most this often */
#define KUBE_MAX_GROUPS 256      /* bounded by the metadata anyway */

static char sa_dir[512] = KR__KUBE_SA_DIR;

void kr__kube_set_sa_dir(const char *dir) {
  snprintf(sa_dir, sizeof(sa_dir), "%s", dir ? dir : KR__KUBE_SA_DIR);
}

struct kr__kube_service {
  char name[128];
  kr__http_service *http;
  char token_file[1024]; /* "" = no token */
  char *token;           /* secret: wiped on replacement and free */
  size_t token_len;
  struct stat token_st; /* what the current token was read from */
  kr_time_us checked_at;
  int read_failed; /* logged once until a read succeeds again */
};

static void wipe_free(char *p, size_t n) {
  if (!p)
    return;
  volatile char *v = p;
  for (size_t i = 0; i < n; i++)
    v[i] = 0;
  free(p);
}

/* Reads the token file: whole, at most KR__KUBE_MAX_TOKEN bytes, trailing
 * white space dropped, no control characters. On success *out (malloc'ed,
 * NUL-terminated) and *len; else a reason in why (never the content). */
static int read_token(const char *path, char **out, size_t *len,
                      struct stat *st, char *why, size_t whylen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, whylen, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  char *buf = malloc(KR__KUBE_MAX_TOKEN + 1);
  size_t n = 0;
  int rc = -1;
  if (!buf) {
    snprintf(why, whylen, "out of memory");
    goto out;
  }
  if (fstat(fd, st) != 0) {
    snprintf(why, whylen, "cannot stat %s: %s", path, strerror(errno));
    goto out;
  }
  for (;;) {
    ssize_t r = read(fd, buf + n, KR__KUBE_MAX_TOKEN + 1 - n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      snprintf(why, whylen, "cannot read %s: %s", path, strerror(errno));
      goto out;
    }
    if (r == 0)
      break;
    n += (size_t)r;
    if (n > KR__KUBE_MAX_TOKEN) {
      snprintf(why, whylen, "%s: token larger than %zu bytes", path,
               KR__KUBE_MAX_TOKEN);
      goto out;
    }
  }
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
                   buf[n - 1] == ' ' || buf[n - 1] == '\t'))
    n--;
  if (n == 0) {
    snprintf(why, whylen, "%s: the token file is empty", path);
    goto out;
  }
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)buf[i] < 0x21 || buf[i] == 0x7f) {
      snprintf(why, whylen, "%s: the token contains invalid bytes", path);
      goto out;
    }
  buf[n] = 0;
  *out = buf;
  *len = n;
  buf = NULL;
  rc = 0;
out:
  close(fd);
  wipe_free(buf, KR__KUBE_MAX_TOKEN + 1);
  return rc;
}

static int same_file(const struct stat *a, const struct stat *b) {
  return a->st_ino == b->st_ino && a->st_dev == b->st_dev &&
         a->st_size == b->st_size && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
         a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Picks up a rotated token. A failure keeps the current token. */
static void refresh_token(kr__kube_service *k) {
  if (!k->token_file[0])
    return;
  kr_time_us now = kr__now_us();
  if (now - k->checked_at < KUBE_RECHECK_US)
    return;
  k->checked_at = now;
  struct stat st;
  char why[300], q[1100];
  char *tok = NULL;
  size_t len = 0;
  if (stat(k->token_file, &st) == 0 && same_file(&st, &k->token_st))
    return;
  if (read_token(k->token_file, &tok, &len, &st, why, sizeof(why)) < 0) {
    if (!k->read_failed)
      kr__log(KR_LOG_WARN, "kube_token_read_failed",
              "service=%s reason=%s action=keep_last_token", k->name,
              kr__log_quote(q, sizeof(q), why, strlen(why)));
    k->read_failed = 1;
    return;
  }
  if (k->read_failed || len != k->token_len || !k->token ||
      memcmp(tok, k->token, len) != 0)
    kr__log(KR_LOG_INFO, "kube_token_loaded", "service=%s file=%s", k->name,
            kr__log_quote(q, sizeof(q), k->token_file, strlen(k->token_file)));
  k->read_failed = 0;
  wipe_free(k->token, k->token_len + 1);
  k->token = tok;
  k->token_len = len;
  k->token_st = st;
}

int kr__kube_service_new(struct event_base *base, const char *name,
                         const char *url, const char *token_file,
                         const char *ca_file, int verify,
                         kr__kube_service **out, char *err, size_t errlen) {
  char in_cluster[600], tf[1024] = "", ca[1024] = "";
  if (!url) {
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    if (!host || !*host || !port || !*port) {
      snprintf(err, errlen,
               "not running in a Kubernetes cluster "
               "(KUBERNETES_SERVICE_HOST/_PORT unset): give the API server "
               "URL");
      return KR_ECONFIG;
    }
    snprintf(in_cluster, sizeof(in_cluster),
             strchr(host, ':') ? "https://[%.255s]:%.20s"
                               : "https://%.255s:%.20s",
             host, port);
    url = in_cluster;
    snprintf(tf, sizeof(tf), "%s/token", sa_dir);
    snprintf(ca, sizeof(ca), "%s/ca.crt", sa_dir);
  }
  if (token_file)
    snprintf(tf, sizeof(tf), "%s", token_file);
  if (ca_file)
    snprintf(ca, sizeof(ca), "%s", ca_file);
  kr__kube_service *k = calloc(1, sizeof(*k));
  if (!k)
    return KR_ENOMEM;
  snprintf(k->name, sizeof(k->name), "%s", name ? name : "kubernetes");
  snprintf(k->token_file, sizeof(k->token_file), "%s", tf);
  int rc = 0;
  if (tf[0]) {
    char why[300];
    if (read_token(tf, &k->token, &k->token_len, &k->token_st, why,
                   sizeof(why)) < 0) {
      snprintf(err, errlen, "kubernetes service %s: %s", k->name, why);
      rc = KR_ECONFIG;
    }
    k->checked_at = kr__now_us();
  }
  if (rc == 0)
    rc = kr__http_service_new(base, k->name, url, ca[0] ? ca : NULL, verify,
                              &k->http, err, errlen);
  if (rc < 0) {
    kr__kube_service_free(k);
    return rc;
  }
  *out = k;
  return 0;
}

void kr__kube_service_free(kr__kube_service *k) {
  if (!k)
    return;
  kr__http_service_free(k->http);
  wipe_free(k->token, k->token_len + 1);
  free(k);
}

kr__http_service *kr__kube_service_http(kr__kube_service *k) {
  return k->http;
}

/* Incoming credentials and impersonation never pass. */
static int drop_identity(const char *name, size_t len, void *ud) {
  return (len == 13 && strncasecmp(name, "authorization", 13) == 0) ||
         (len >= 12 && strncasecmp(name, "impersonate-", 12) == 0);
}

void kr__kube_service_serve(kr__kube_service *k, kr_stream *s, const kr_md *md,
                            size_t n, int fin) {
  const kr_md *user = kr__md_find(md, n, KR__MD_USER);
  if (!user || user->value_len == 0) {
    kr_stream_reset(s, KR_CODE_UNAUTHORIZED,
                    "the kubernetes service needs a caller identity");
    return;
  }
  refresh_token(k);
  size_t groups = 0;
  for (size_t i = 0; i < n; i++)
    if (kr__md_is(&md[i], KR__MD_GROUP))
      groups++;
  if (groups > KUBE_MAX_GROUPS) {
    kr_stream_reset(s, KR_CODE_PROTOCOL, "too many :group entries");
    return;
  }
  kr_md *x = malloc((groups + 2) * sizeof(kr_md));
  char *bearer = NULL;
  size_t bearer_len = 0, nx = 0;
  if (k->token) {
    bearer_len = 7 + k->token_len;
    bearer = malloc(bearer_len + 1);
  }
  if (!x || (k->token && !bearer)) {
    free(x);
    wipe_free(bearer, bearer_len + 1);
    kr_stream_reset(s, KR_CODE_INTERNAL, "out of memory");
    return;
  }
  if (bearer) {
    memcpy(bearer, "Bearer ", 7);
    memcpy(bearer + 7, k->token, k->token_len + 1);
    x[nx++] = (kr_md){(const uint8_t *)"authorization", 13,
                      (const uint8_t *)bearer, bearer_len};
  }
  x[nx++] = (kr_md){(const uint8_t *)"impersonate-user", 16, user->value,
                    user->value_len};
  for (size_t i = 0; i < n; i++)
    if (kr__md_is(&md[i], KR__MD_GROUP))
      x[nx++] = (kr_md){(const uint8_t *)"impersonate-group", 17, md[i].value,
                        md[i].value_len};
  kr__http_service_serve(k->http, s, md, n, fin, x, nx, drop_identity, NULL);
  wipe_free(bearer, bearer_len + 1);
  free(x);
}
