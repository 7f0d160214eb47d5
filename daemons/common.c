/* Shared plumbing of the bundled programs (see common.h). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kasroute/log.h>

#include "common.h"

const char *cli_config_path(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
      return argv[i + 1];
    if (strncmp(argv[i], "--config=", 9) == 0)
      return argv[i] + 9;
  }
  return NULL;
}

static int known(const struct option *opts, const char *name, int *has_arg) {
  for (; opts->name; opts++)
    if (strcmp(opts->name, name) == 0) {
      *has_arg = opts->has_arg;
      return 1;
    }
  return 0;
}

static int push(char ***v, int *n, int *cap, const char *s) {
  if (*n + 1 >= *cap) {
    int nc = *cap ? *cap * 2 : 32;
    char **nv = realloc(*v, (size_t)nc * sizeof(char *));
    if (!nv)
      return -1;
    *v = nv;
    *cap = nc;
  }
  if (!((*v)[(*n)++] = strdup(s)))
    return -1;
  (*v)[*n] = NULL;
  return 0;
}

/* Appends "--key value" for one JSON value (string, integer, real). */
static int push_value(char ***v, int *n, int *cap, const char *key,
                      json_t *val, int has_arg, char *err, size_t errlen) {
  char flag[160], num[64];
  snprintf(flag, sizeof(flag), "--%s", key);
  if (!has_arg) {
    if (!json_is_boolean(val)) {
      snprintf(err, errlen, "config key \"%s\" takes true or false", key);
      return -1;
    }
    return json_is_true(val) ? push(v, n, cap, flag) : 0;
  }
  const char *s;
  if (json_is_string(val)) {
    s = json_string_value(val);
  } else if (json_is_integer(val)) {
    snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(val));
    s = num;
  } else if (json_is_real(val)) {
    snprintf(num, sizeof(num), "%g", json_real_value(val));
    s = num;
  } else {
    snprintf(err, errlen, "config key \"%s\": expected a string or number", key);
    return -1;
  }
  return push(v, n, cap, flag) < 0 || push(v, n, cap, s) < 0 ? -1 : 0;
}

int cli_load_config(const char *path, const struct option *opts, int argc,
                       char **argv, int *out_argc, char ***out_argv, char *err,
                       size_t errlen) {
  char **v = NULL;
  int n = 0, cap = 0;
  json_error_t je;
  json_t *root = NULL;
  if (push(&v, &n, &cap, argv[0]) < 0)
    goto oom;
  if (path) {
    root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
      snprintf(err, errlen, "%s:%d: %s", path, je.line, je.text);
      goto fail;
    }
    if (!json_is_object(root)) {
      snprintf(err, errlen, "%s: the config must be a JSON object", path);
      goto fail;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
      int has_arg = 0;
      if (strcmp(key, "config") == 0 || !known(opts, key, &has_arg)) {
        snprintf(err, errlen, "%s: unknown key \"%s\"", path, key);
        goto fail;
      }
      if (json_is_array(val)) {
        size_t i;
        json_t *item;
        json_array_foreach(val, i, item) {
          if (push_value(&v, &n, &cap, key, item, has_arg, err, errlen) < 0)
            goto fail;
        }
      } else if (push_value(&v, &n, &cap, key, val, has_arg, err, errlen) < 0) {
        goto fail;
      }
    }
    json_decref(root);
    root = NULL;
  }
  for (int i = 1; i < argc; i++)
    if (push(&v, &n, &cap, argv[i]) < 0)
      goto oom;
  *out_argc = n;
  *out_argv = v;
  return 0;
oom:
  snprintf(err, errlen, "out of memory");
fail:
  json_decref(root);
  cli_free_args(n, v);
  return -1;
}

void cli_free_args(int argc, char **argv) {
  for (int i = 0; i < argc; i++)
    free(argv[i]);
  free(argv);
}

long cli_read_secret(const char *path, size_t max, char **out, char *err,
                        size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return -1;
  }
  char *buf = malloc(max + 2);
  if (!buf) {
    fclose(f);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  size_t len = fread(buf, 1, max + 1, f);
  int bad = ferror(f);
  fclose(f);
  if (bad || len > max) {
    snprintf(err, errlen, "%s: %s", path,
             bad ? "read error" : "file too large for a secret");
    cli_free_secret(buf, max + 2);
    return -1;
  }
  if (len > 0 && buf[len - 1] == '\n')
    len--;
  if (len > 0 && buf[len - 1] == '\r')
    len--;
  if (len == 0) {
    snprintf(err, errlen, "%s: the file is empty", path);
    cli_free_secret(buf, max + 2);
    return -1;
  }
  buf[len] = 0;
  *out = buf;
  return (long)len;
}

void cli_free_secret(char *s, size_t len) {
  if (!s)
    return;
  volatile char *p = s;
  for (size_t i = 0; i < len; i++)
    p[i] = 0;
  free(s);
}

int64_t cli_seconds(const char *s) {
  char *end;
  errno = 0;
  double d = strtod(s, &end);
  if (errno || end == s || *end || d < 0 || d > 86400.0 * 365)
    return -1;
  return (int64_t)(d * 1e6);
}

int cli_log_level(const char *s) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0)
      return i;
  return -1;
}
