#ifndef WFPR_ERROR_H
#define WFPR_ERROR_H

/*
 * Error codes. Every value is the Winsock or Win32 number, so code written
 * against WSAGetLastError() reads the same here. This one table generates
 * the enum, wfpr_strerror() and wfpr_err_name().
 */

#include "common.h"

WFPR_BEGIN_DECL

#define WFPR_ERRNO_MAP(XX)                                                              \
	XX(OK, 0, "success")                                                                \
	XX(ERROR_INSUFFICIENT_BUFFER, 122, "the output buffer is too small; the required size was returned") \
	XX(WSA_OPERATION_ABORTED, 995, "the overlapped operation was aborted by SIO_FLUSH or closing the socket") \
	XX(WSA_IO_INCOMPLETE, 996, "the overlapped operation has not completed yet")        \
	XX(WSA_IO_PENDING, 997, "the overlapped operation was started and will complete later") \
	XX(WSAEINTR, 10004, "a blocking operation was interrupted")                         \
	XX(WSAEACCES, 10013, "permission denied: a filter blocked the connection, or the caller lacks the key") \
	XX(WSAEFAULT, 10014, "a pointer argument is not valid")                             \
	XX(WSAEINVAL, 10022, "an argument is not valid for this operation")                 \
	XX(WSAEMFILE, 10024, "too many open sockets")                                      \
	XX(WSAEWOULDBLOCK, 10035, "the operation would block on a non-blocking socket")     \
	XX(WSAEINPROGRESS, 10036, "called while a callout or completion routine is running") \
	XX(WSAENOTSOCK, 10038, "the descriptor is not a socket")                            \
	XX(WSAEMSGSIZE, 10040, "too long: past the size limit (of an annotation, say)")     \
	XX(WSAENOPROTOOPT, 10042, "the option is not supported on this protocol")           \
	XX(WSAEOPNOTSUPP, 10045, "the operation is not supported by this socket or backend") \
	XX(WSAEAFNOSUPPORT, 10047, "the address family is not supported")                   \
	XX(WSAEADDRINUSE, 10048, "the address is already in use")                           \
	XX(WSAEADDRNOTAVAIL, 10049, "the address is not valid here: no socket of the caller's listens on it") \
	XX(WSAENETDOWN, 10050, "the redirect layer is not reachable")                       \
	XX(WSAENOBUFS, 10055, "out of memory")                                              \
	XX(WSAEISCONN, 10056, "the socket is already connected")                            \
	XX(WSAENOTCONN, 10057, "the socket is not connected")                               \
	XX(WSAETIMEDOUT, 10060, "the connection timed out")                                 \
	XX(WSAECONNREFUSED, 10061, "the connection was refused")                            \
	XX(WSAELOOP, 10062, "the redirect chain would pass the hop limit")                  \
	XX(WSAEALREADY, 10037, "a non-blocking connect is already in progress")             \
	XX(WSAEHOSTUNREACH, 10065, "the host is unreachable")                               \
	XX(FWP_E_NOT_FOUND, 0x80320008, "the connection has no redirect record")

typedef enum wfpr_err {
#define WFPR_ERR_ENUM_(name, value, text) WFPR_##name = (int)(value),
	WFPR_ERRNO_MAP(WFPR_ERR_ENUM_)
#undef WFPR_ERR_ENUM_
} wfpr_err;

/* Human text for a code; never NULL ("unknown error" for a code not in the table). */
WFPR_EXTERN const char *wfpr_strerror(int err);

/* The symbolic name ("WSAEINVAL"); NULL for a code not in the table. */
WFPR_EXTERN const char *wfpr_err_name(int err);

/* Per-thread last error, as WSAGetLastError/WSASetLastError. */
WFPR_EXTERN int wfpr_get_last_error(void);
WFPR_EXTERN void wfpr_set_last_error(int err);

/* The table itself, for bindings that build one exception class per code:
 * wfpr_err_code_at(i) for i < wfpr_err_count(). */
WFPR_EXTERN size_t wfpr_err_count(void);
WFPR_EXTERN int wfpr_err_code_at(size_t index);

/* The code for a Linux errno value (EINVAL -> WSAEINVAL, ...). */
WFPR_EXTERN int wfpr_err_from_errno(int errnum);

WFPR_END_DECL

#endif
