/* Header test driver. The real test is that every generated translation
 * unit (one per public header, see meson.build) compiled with
 * -Wall -Wextra -Werror -pedantic; this program additionally checks that the
 * compiled-in version matches the library's and, when a C++ compiler was
 * available, that the headers give the functions C linkage. */
#include <kasroute/kasroute.h>

#include <stdio.h>
#include <string.h>

#ifdef KR_HEADER_TEST_CXX
int kr_header_test_cxx(void);
#endif

int main(void) {
  int failed = 0;
  if (strcmp(kr_version(), KR_VERSION_STRING) != 0) {
    fprintf(stderr, "kr_version() = %s but KR_VERSION_STRING = %s\n",
            kr_version(), KR_VERSION_STRING);
    failed = 1;
  }
  if (kr_version_number() != (unsigned)KR_VERSION_NUMBER) {
    fprintf(stderr,
            "kr_version_number() = 0x%06x but KR_VERSION_NUMBER = 0x%06x\n",
            kr_version_number(), (unsigned)KR_VERSION_NUMBER);
    failed = 1;
  }
#ifdef KR_HEADER_TEST_CXX
  if (kr_header_test_cxx() != 0) {
    fprintf(stderr, "C++ translation unit failed\n");
    failed = 1;
  }
  printf("headers: C11 and C++11 translation units compiled; version %s\n",
         kr_version());
#else
  printf("headers: C11 translation units compiled (no C++ compiler); "
         "version %s\n",
         kr_version());
#endif
  return failed;
}
