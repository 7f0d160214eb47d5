/* The layout of kr__tls_config, shared by tls_config.c and
 * transport_tls.c. Internal. */
#ifndef KR_IO_TLS_INTERNAL_H
#define KR_IO_TLS_INTERNAL_H

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "transport_tls.h"

struct kr__tls_config {
  mbedtls_ssl_config conf;
  mbedtls_x509_crt cert;
  mbedtls_x509_crt ca;
  mbedtls_pk_context key;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  int verify;
};

#endif
