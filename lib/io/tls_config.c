/* mbedTLS configurations shared by TLS transports (see transport_tls.h). */
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>

#include <kasroute/error.h>

#include "tls_internal.h"

/* AEAD suites with forward secrecy only. */
static const int kr_ciphersuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0};

static int tls_err(char *err, size_t errlen, const char *what, const char *file,
                   int rc) {
  char buf[128];
  mbedtls_strerror(rc, buf, sizeof(buf));
  snprintf(err, errlen, "%s%s%s: %s", what, file ? " " : "", file ? file : "",
           buf);
  return KR_ETLS;
}

static int config_common(kr__tls_config *c, int endpoint, char *err,
                         size_t errlen) {
  mbedtls_ssl_config_init(&c->conf);
  mbedtls_x509_crt_init(&c->cert);
  mbedtls_x509_crt_init(&c->ca);
  mbedtls_pk_init(&c->key);
  mbedtls_entropy_init(&c->entropy);
  mbedtls_ctr_drbg_init(&c->drbg);
  static const char pers[] = "libkasroute tls";
  int rc = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
                                 (const unsigned char *)pers, sizeof(pers) - 1);
  if (rc != 0)
    return tls_err(err, errlen, "seeding the random generator", NULL, rc);
  rc = mbedtls_ssl_config_defaults(&c->conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                   MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0)
    return tls_err(err, errlen, "TLS defaults", NULL, rc);
  mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
  mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                               MBEDTLS_SSL_MINOR_VERSION_3);
  mbedtls_ssl_conf_ciphersuites(&c->conf, kr_ciphersuites);
  return 0;
}

int kr__tls_config_server(const char *cert_file, const char *key_file,
                          kr__tls_config **out, char *err, size_t errlen) {
  kr__tls_config *c = calloc(1, sizeof(*c));
  if (!c)
    return KR_ENOMEM;
  int rc = config_common(c, MBEDTLS_SSL_IS_SERVER, err, errlen);
  if (rc == 0 && (rc = mbedtls_x509_crt_parse_file(&c->cert, cert_file)) != 0)
    rc = tls_err(err, errlen, "loading certificate", cert_file, rc);
  if (rc == 0 &&
      (rc = mbedtls_pk_parse_keyfile(&c->key, key_file, NULL)) != 0)
    rc = tls_err(err, errlen, "loading private key", key_file, rc);
  if (rc == 0 && (rc = mbedtls_ssl_conf_own_cert(&c->conf, &c->cert, &c->key)) != 0)
    rc = tls_err(err, errlen, "certificate and key do not match", NULL, rc);
  if (rc != 0) {
    kr__tls_config_free(c);
    return KR_ETLS;
  }
  mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_NONE);
  *out = c;
  return 0;
}

int kr__tls_config_client(const char *ca_file, int verify,
                          kr__tls_config **out, char *err, size_t errlen) {
  kr__tls_config *c = calloc(1, sizeof(*c));
  if (!c)
    return KR_ENOMEM;
  int rc = config_common(c, MBEDTLS_SSL_IS_CLIENT, err, errlen);
  const char *ca = ca_file ? ca_file : "/etc/ssl/certs/ca-certificates.crt";
  if (rc == 0 && verify && (rc = mbedtls_x509_crt_parse_file(&c->ca, ca)) != 0)
    rc = tls_err(err, errlen, "loading CA certificates", ca, rc);
  if (rc != 0) {
    kr__tls_config_free(c);
    return KR_ETLS;
  }
  c->verify = verify;
  mbedtls_ssl_conf_authmode(&c->conf, verify ? MBEDTLS_SSL_VERIFY_REQUIRED
                                             : MBEDTLS_SSL_VERIFY_NONE);
  if (verify)
    mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
  *out = c;
  return 0;
}

void kr__tls_config_free(kr__tls_config *c) {
  if (!c)
    return;
  mbedtls_ssl_config_free(&c->conf);
  mbedtls_x509_crt_free(&c->cert);
  mbedtls_x509_crt_free(&c->ca);
  mbedtls_pk_free(&c->key);
  mbedtls_ctr_drbg_free(&c->drbg);
  mbedtls_entropy_free(&c->entropy);
  free(c);
}
