// Compiles the umbrella header as C++11 with -Wall -Wextra -Werror -pedantic.
// The function calls through the C declarations, so the test program links
// only if the headers wrap them in extern "C".
#include <kasroute/kasroute.h>

extern "C" int kr_header_test_cxx(void);

extern "C" int kr_header_test_cxx(void) {
  const char *v = kr_version();
  const char *e = kr_strerror(KR_ENOMEM);
  return (v != nullptr && e != nullptr &&
          kr_version_number() == static_cast<unsigned>(KR_VERSION_NUMBER))
             ? 0
             : 1;
}
