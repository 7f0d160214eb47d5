/* Helpers shared by the transports. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "transport.h"

int kr__peer_name(int fd, char *out, size_t size) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  char host[INET6_ADDRSTRLEN] = "?";
  if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
    return -1;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    snprintf(out, size, "%s:%d", host, ntohs(a->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    snprintf(out, size, "[%s]:%d", host, ntohs(a->sin6_port));
  } else {
    return -1;
  }
  return 0;
}

void kr__transport_set_peer(kr__transport *t, int fd) {
  if (kr__peer_name(fd, t->peer, sizeof(t->peer)) < 0)
    snprintf(t->peer, sizeof(t->peer), "?");
}
