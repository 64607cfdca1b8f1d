#ifndef WFPR_SOCKET_H
#define WFPR_SOCKET_H

/*
 * Sockets through the in-process backend. These are real kernel sockets;
 * a connect or a new UDP flow made through these calls is classified by the
 * layer attached with wfpr_inproc_attach, and a redirect really connects to
 * the proxy. Like Winsock, they return WFPR_SOCKET_ERROR (-1) and set the
 * per-thread last error (errno is set too).
 */

#include <sys/socket.h>
#include <sys/types.h>
#include "common.h"
#include "layer.h"

WFPR_BEGIN_DECL

/* Control messages (cmsg_type) carried by wfpr_recvmsg / wfpr_sendmsg, and
 * the wfpr_setsockopt names, all at level IPPROTO_IP for IPv4 and IPv6
 * sockets alike. The reference page calls the first one
 * IP_CONNECTION_REDIRECT_RECORD. */
#define WFPR_IP_WFP_REDIRECT_RECORDS 60
#define WFPR_IP_WFP_REDIRECT_CONTEXT 70
#define WFPR_IP_CONNECTION_REDIRECT_RECORD WFPR_IP_WFP_REDIRECT_RECORDS

/* A UDP flow lives while datagrams flow. After WFPR_UDP_FLOW_IDLE_MS of
 * silence the sending side starts a new flow, with a fresh record, on its
 * next datagram (WFPR_UDP_IDLE_MS in the environment changes it for a
 * process; wfpr run --udp-idle-timeout sets it for COMMAND); a proxy ends
 * its side of an idle flow WFPR_UDP_FLOW_GRACE_MS later than that, so it
 * never drops a datagram of a flow the sender still uses. */
#define WFPR_UDP_FLOW_IDLE_MS 30000
#define WFPR_UDP_FLOW_GRACE_MS 5000

/* wfpr_socket flags */
#define WFPR_FLAG_OVERLAPPED 0x01u

/* The layer that classifies this process's wfpr_connect/wfpr_sendto calls.
 * One at a time, as one kernel has one stack: WFPR_WSAEADDRINUSE while
 * another layer or another backend (preload, eBPF) is attached. */
WFPR_EXTERN int wfpr_inproc_attach(wfpr_layer *layer);
WFPR_EXTERN void wfpr_inproc_detach(wfpr_layer *layer);

WFPR_EXTERN wfpr_socket_t wfpr_socket(int family, int type, int protocol, unsigned int flags);
/* Give an existing socket (say, one made by Python) the overlapped attribute. */
WFPR_EXTERN int wfpr_socket_set_overlapped(wfpr_socket_t s, int on);
WFPR_EXTERN int wfpr_connect(wfpr_socket_t s, const struct sockaddr *addr, socklen_t len);
/* The accepted socket inherits the listener's overlapped attribute. */
WFPR_EXTERN wfpr_socket_t wfpr_accept(wfpr_socket_t s, struct sockaddr *addr, socklen_t *len);
WFPR_EXTERN ssize_t wfpr_sendto(wfpr_socket_t s, const void *buf, size_t len, int flags,
                                const struct sockaddr *to, socklen_t to_len);
WFPR_EXTERN ssize_t wfpr_recvfrom(wfpr_socket_t s, void *buf, size_t len, int flags,
                                  struct sockaddr *from, socklen_t *from_len);
/* WSARecvMsg: the first datagram of a redirected flow carries
 * WFPR_IP_WFP_REDIRECT_RECORDS (and _CONTEXT when asked for). */
WFPR_EXTERN ssize_t wfpr_recvmsg(wfpr_socket_t s, struct msghdr *msg, int flags);
/* WSASendMsg: a WFPR_IP_WFP_REDIRECT_RECORDS control message sets the
 * socket's records (as SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS does). */
WFPR_EXTERN ssize_t wfpr_sendmsg(wfpr_socket_t s, const struct msghdr *msg, int flags);
/* At level IPPROTO_IP on a UDP socket: WFPR_IP_WFP_REDIRECT_CONTEXT (int,
 * nonzero) asks for the context control message, WFPR_IP_WFP_REDIRECT_RECORDS
 * (the blob) sets the records as a SET does. Anything else goes to setsockopt(2). */
WFPR_EXTERN int wfpr_setsockopt(wfpr_socket_t s, int level, int name, const void *value, socklen_t len);
/* Annotate the connection a proxy passes on (a wfpr extension): key=value
 * goes into the record of the redirect this socket's connect (or first
 * datagram) makes, covered by its token, where later proxies read it as
 * the annotations of this proxy's hop. Call it after SET and before the
 * connect; setting a key again replaces its value (docs/record-format.md
 * gives the limits). 0, or WFPR_SOCKET_ERROR with WSAEFAULT (NULL),
 * WSAEINVAL (a bad key or value, or no records SET), WSAEISCONN (already
 * connected), WSAEMSGSIZE (past WFPR_ANNOTATIONS_MAX or
 * WFPR_ANNOTATIONS_SIZE_MAX). */
WFPR_EXTERN int wfpr_annotate(wfpr_socket_t s, const char *key, const char *value);
/* closesocket: aborts the socket's pending overlapped operations. */
WFPR_EXTERN int wfpr_closesocket(wfpr_socket_t s);

WFPR_END_DECL

#endif
