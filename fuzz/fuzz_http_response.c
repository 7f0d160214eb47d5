/* libFuzzer target for the HTTP/1.1 response parser (lib/http/http_parse.c)
 * as the agent's HTTP services use it: responses from an upstream, with
 * interim 1xx, replies to HEAD, close-delimited bodies and 101 upgrades.
 * The driver and the input layout are in fuzz_http.h. */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_http_one_input(0, data, size);
  return 0;
}
