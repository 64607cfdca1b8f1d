#ifndef WFPR_SRC_SOCKUTIL_H
#define WFPR_SRC_SOCKUTIL_H

/* Facts about a real socket, and the bind a redirect needs; shared by the
 * in-process backend, the preload client and the shim. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

/* SO_COOKIE, 0 if fd is not an open socket. */
uint64_t wfpr__socket_cookie(int fd);
/* IPPROTO_* of a socket, or -1 with errno set (ENOTSOCK for non-sockets). */
int wfpr__socket_protocol(int fd);
/* Is fd in non-blocking mode (O_NONBLOCK)? */
bool wfpr__socket_nonblocking(int fd);
/* The socket's local address into out; returns its port (0: unbound). */
uint16_t wfpr__socket_local(int fd, struct sockaddr_storage *out);
/* Does socket fd take connections at a: a TCP listener, or a bound UDP
 * socket, at a or on the wildcard address at a's port? */
bool wfpr__socket_takes(int fd, const struct sockaddr_storage *a);
/* An unbound socket gets its port now, so the record can be keyed by it
 * before the proxy can accept. 0, or -1 with errno set. */
int wfpr__socket_bind_for_redirect(int fd, int protocol, const struct sockaddr_storage *target,
                             struct sockaddr_storage *local);

/* How long a sender's UDP flow may stay silent before its next datagram
 * starts a new flow (WFPR_UDP_IDLE_MS, else WFPR_UDP_FLOW_IDLE_MS), in ns. */
int64_t wfpr__udp_flow_idle_ns(void);
/* "127.0.0.1:8080" or "[::1]:8080" into out: 0, or -1 when it is not one. */
int wfpr__parse_address(const char *text, struct sockaddr_storage *out);
/* CLOCK_MONOTONIC in ns. */
int64_t wfpr__now_ns(void);

#endif
