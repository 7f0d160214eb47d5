/* libkasroute — common definitions shared by every public header.
 *
 * KR_API marks the symbols the shared library exports. Everything else is
 * built with -fvisibility=hidden and listed nowhere in the linker version
 * script, so it cannot leak into the ABI.
 */
#ifndef KASROUTE_COMMON_H
#define KASROUTE_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* KR_API: the export attribute of every public function (empty outside
 * the library's own build). */
#if defined(KR_BUILDING_LIBRARY) && defined(__GNUC__)
#define KR_API __attribute__((visibility("default")))
#else
#define KR_API
#endif

/* KR_BEGIN_DECLS / KR_END_DECLS: C linkage for C++ callers. */
#ifdef __cplusplus
#define KR_BEGIN_DECLS extern "C" {
#define KR_END_DECLS }
#else
#define KR_BEGIN_DECLS
#define KR_END_DECLS
#endif

KR_BEGIN_DECLS

/* Run-time version of the library as "MAJOR.MINOR.PATCH". The string is
 * static; never free it. Compare with KR_VERSION_STRING from
 * <kasroute/version.h> to detect a header/library mismatch. Thread-safe. */
KR_API const char *kr_version(void);

/* Run-time version as (MAJOR << 16) | (MINOR << 8) | PATCH. Thread-safe. */
KR_API unsigned kr_version_number(void);

KR_END_DECLS

#endif
