/* Shared helpers for the authentication unit suites (tests/auth).
 *
 * - ta_run_suite: TAP on stdout for meson (TA_VERBOSE=1: Check's report);
 * - ta_rng: splitmix64, so random cases replay from the printed seed;
 * - ta_alloc: a kr_mem that counts live blocks and bytes and can fail the
 *   Nth allocation, to walk every allocation failure path of a call and
 *   prove nothing leaks on any of them.
 * - ta_hash_hex, ta_upper_hex: token hashes as the token files hold them;
 * - ta_write_file, ta_check_load_errors: the whole-file errors every
 *   table loader built on kr__file_read shares.
 */
#ifndef TA_AUTH_HELPER_H
#define TA_AUTH_HELPER_H

#include <stddef.h>
#include <stdint.h>

#include <check.h>
#include <kasroute/kasroute.h>

int ta_run_suite(Suite *s);

/* 1 under valgrind (its preload library is in LD_PRELOAD). */
int ta_under_valgrind(void);

/* Adds fn as its own test case with a Check timeout in seconds (scaled up
 * under valgrind and sanitizers). */
void ta_add_tcase(Suite *s, const char *name, const TTest *t, double timeout);
#define TA_ADD(s, fn, timeout) ta_add_tcase((s), #fn, (fn), (timeout))

typedef struct ta_rng {
  uint64_t s;
} ta_rng;

/* Seeds from TA_SEED when set (decimal), else from seed; prints the seed
 * used with the test name so a failure can be replayed. */
void ta_rng_init(ta_rng *r, uint64_t seed, const char *what);
uint64_t ta_rng_next(ta_rng *r);
void ta_rng_bytes(ta_rng *r, void *out, size_t n);

typedef struct ta_alloc {
  kr_mem mem;    /* pass &a.mem to the code under test */
  long fail_at;  /* 1-based allocation attempt that fails; 0 = none */
  long attempts; /* malloc + growing realloc attempts so far */
  long live_blocks;
  size_t live_bytes;
} ta_alloc;

void ta_alloc_init(ta_alloc *a, long fail_at);

/* Lowercase hex SHA-256 of a token, as the token files hold it
 * (kr__sha256 is checked against the FIPS vectors in test_sha256); out has
 * room for 64 characters and the NUL. */
void ta_hash_hex(const char *token, char *out);
/* Uppercases the hex letters of s in place. */
void ta_upper_hex(char *s);

/* Writes data[0..len) to path (replacing it); asserts on failure. */
void ta_write_file(const char *path, const void *data, size_t len);

/* A table loader under test: loads path with the default allocator and
 * frees what it loaded; returns the loader's code and on success sets
 * *count to the table's entry count. */
typedef int (*ta_loader)(const char *path, size_t *count, char *err,
                         size_t errlen);

/* Checks the whole-file errors of a loader, in the directory dir: a missing
 * file (KR_ENOENT, "PATH: cannot open: ..."), dir itself (KR_EIO, "DIR:
 * cannot read: ..."), a file of exactly max bytes of comment lines (loads,
 * no entries) and of max + 1 (KR_ETOOBIG, "PATH: larger than MAX bytes"),
 * and the existing file `existing` made unreadable (KR_EIO; not checked as
 * root, who reads anyway). Leaves dir without the files it made. */
void ta_check_load_errors(ta_loader load, const char *dir, size_t max,
                          const char *existing);

#endif
