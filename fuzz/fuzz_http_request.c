/* libFuzzer target for the HTTP/1.1 request parser (lib/http/http_parse.c)
 * as the kas gateway uses it: a stream of pipelined requests from a client.
 * The driver and the input layout are in fuzz_http.h. */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_http_one_input(1, data, size);
  return 0;
}
