/* Shared plumbing of the bundled programs (kasd, agentd, kasctl): config
 * files, secret files, signals and logging. Uses internal library headers
 * only where noted. */
#ifndef KR_DAEMONS_COMMON_H
#define KR_DAEMONS_COMMON_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

/* Builds an argument vector from a JSON config file whose keys are long
 * option names ("agent-listen": ["tcp://..."], "name": "kas-1",
 * "connections": 2, "insecure": true), followed by the command line's own
 * arguments, so the command line wins. argv[0] is kept. Returns 0 or -1
 * with a message in err. The result is freed by cli_free_args(). */
int cli_load_config(const char *path, const struct option *opts, int argc,
                       char **argv, int *out_argc, char ***out_argv, char *err,
                       size_t errlen);
void cli_free_args(int argc, char **argv);

/* Finds "--config FILE" / "--config=FILE" in argv, or NULL. */
const char *cli_config_path(int argc, char **argv);

/* Reads a whole secret file (at most max bytes), dropping one trailing
 * newline. Returns the length or -1 with a message in err (which never
 * contains file content). The buffer is malloc'ed and must be wiped and
 * freed by the caller (cli_free_secret). */
long cli_read_secret(const char *path, size_t max, char **out, char *err,
                        size_t errlen);
void cli_free_secret(char *s, size_t len);

/* Parses a duration in seconds ("2.5" allowed) into microseconds; -1 on
 * error. */
int64_t cli_seconds(const char *s);

/* Parses a log level name into kr_log_level; -1 on error. */
int cli_log_level(const char *s);

#endif
