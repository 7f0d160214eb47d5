/* The agent's "kubernetes" service: the HTTP service (http_service.h) in
 * front of a Kubernetes API server, acting for the caller. Internal.
 *
 * Each stream must carry the caller's identity (":user", and ":group" once
 * per group) set by kas; a stream without ":user" is reset with
 * KR_CODE_UNAUTHORIZED. The request goes on with
 *   authorization: Bearer <the agent's service-account token>
 *   impersonate-user: <:user>
 *   impersonate-group: <:group>        (one per group)
 * and every incoming "authorization" and "impersonate-*" field dropped, so
 * a caller can neither present its own credentials nor nest impersonation.
 *
 * The token file is re-read when its modification time, size or inode
 * change (checked at most once per second), so rotated tokens are picked
 * up; when a read fails the last good token stays in use and the failure
 * is logged once. The token is never logged.
 */
#ifndef KR_AGENT_KUBE_SERVICE_H
#define KR_AGENT_KUBE_SERVICE_H

#include <event2/event.h>
#include <stddef.h>

#include <kasroute/mux.h>

#include "http_service.h"

/* Where the in-cluster service account is mounted. */
#define KR__KUBE_SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"
#define KR__KUBE_MAX_TOKEN ((size_t)16 << 10)

typedef struct kr__kube_service kr__kube_service;

/* url: the API server (http:// or https://); NULL means in-cluster:
 * https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT with the token
 * <sa dir>/token and the CA <sa dir>/ca.crt unless token_file / ca_file
 * are given. With an explicit url, token_file NULL sends no token and
 * ca_file NULL uses the system store. verify 0 skips certificate checks
 * (tests only). Returns 0, KR_ECONFIG (not in a cluster, token file
 * unreadable or empty; reason in err), KR_EADDR, KR_ETLS or KR_ENOMEM. */
int kr__kube_service_new(struct event_base *base, const char *name,
                         const char *url, const char *token_file,
                         const char *ca_file, int verify,
                         kr__kube_service **out, char *err, size_t errlen);

/* Frees the service and its HTTP service (see kr__http_service_free()).
 * The token is wiped. NULL: no-op. */
void kr__kube_service_free(kr__kube_service *k);

/* Serves stream s just opened with md[0..n) (fin: no body). */
void kr__kube_service_serve(kr__kube_service *k, kr_stream *s, const kr_md *md,
                            size_t n, int fin);

/* The HTTP service underneath (for tests and stats). */
kr__http_service *kr__kube_service_http(kr__kube_service *k);

/* Tests only: the service-account directory used for in-cluster
 * configuration (NULL restores KR__KUBE_SA_DIR). Not thread-safe. */
void kr__kube_set_sa_dir(const char *dir);

#endif
