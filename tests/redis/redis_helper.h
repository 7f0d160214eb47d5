/* Real redis-server (and redis-sentinel) processes for the Redis-backed
 * suites (tests/redis, tests/presence), on free loopback ports.
 *
 * Started processes die with the process that started them
 * (PR_SET_PDEATHSIG) and are ended by pid: tr_end_proc() for one,
 * tr_kill_all() for all. Each process is owned by the process that started
 * it; Check runs test cases in forked children that run atexit handlers
 * too, so tr_kill_all() and tr_remove_tmpdir() only touch what the calling
 * process owns. Output (logs) and server files go to one temporary
 * directory under $TMPDIR, made on first use.
 *
 * Nothing here asserts: failures return -1 (or NULL) after writing the
 * reason to stderr, and call the hook set with tr_on_failure() -- tests
 * set it to abort the running Check case (ck_abort_msg), so a call site
 * needs no check of its own.
 */
#ifndef TR_REDIS_HELPER_H
#define TR_REDIS_HELPER_H

#include <sys/types.h>

#include <hiredis/hiredis.h>

/* Called with the reason after any failure below (NULL: none). */
void tr_on_failure(void (*fail)(const char *why));

/* 1 when name is an executable file in a $PATH directory. */
int tr_have_program(const char *name);

/* A loopback TCP port that was free a moment ago, or -1. */
int tr_free_port(void);

/* The temporary directory (made on first use), or NULL. */
const char *tr_tmpdir(void);
/* Removes the temporary directory with its contents (if this process made
 * it). */
void tr_remove_tmpdir(void);

/* Runs argv (argv[0] looked up in $PATH) in the temporary directory, its
 * output appended to <tmpdir>/<log>; returns the pid or -1. */
pid_t tr_spawn(char *const argv[], const char *log);

/* Waits (polling: an external process offers no event to wait on) until
 * the server pid on port answers PING other than "LOADING" (at most 10 s).
 * 0, or -1 when it exited or never answered. */
int tr_wait_ready(pid_t pid, int port);

/* Starts redis-server on 127.0.0.1:port (no persistence, files in the
 * temporary directory) with extra arguments (NULL-terminated, at most 16)
 * and waits until it is ready. Returns its pid or -1. */
pid_t tr_redis_start(int port, ...);

/* Ends the process pid (SIGCONT, then SIGKILL, then reaps it) if it is one
 * this module started. */
void tr_end_proc(pid_t pid);

/* Ends every process this process started. Fit for atexit(). */
void tr_kill_all(void);

/* One synchronous command on a fresh blocking connection to port, with
 * 1 s timeouts (test setup and checks only). NULL when the server cannot
 * be reached. */
redisReply *tr_sync_cmd(int port, const char *fmt, ...);

/* Sleeps ms milliseconds (only for polling external processes). */
void tr_pause_ms(int ms);

#endif
