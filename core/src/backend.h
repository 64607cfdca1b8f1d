#ifndef WFPR_SRC_BACKEND_H
#define WFPR_SRC_BACKEND_H

/*
 * The backend interface. A backend routes a process's connects and first
 * datagrams (through a layer, a broker or the kernel), keeps the records it
 * issued and finds them again. The conformance rules (ioctl.c) and the
 * socket front end (socket.c) call only these operations, through the one
 * backend attached to the process; they include no backend's header.
 *
 * The backends: inproc/backend.c (a layer in this process), preload/backend.c
 * (a broker over a socket), ebpf/backend.c (BPF programs in the kernel).
 * With none attached, connects go direct and QUERY and SET fail with
 * WSAENETDOWN.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "wfpr/ioctl.h"
#include "wfpr/layer.h"
#include "wfpr/record.h"
#include "overlapped.h"

/* The largest blob a QUERY can return: a record or a context. */
#define WFPR__BLOB_MAX (WFPR_RECORD_MAX_SIZE > WFPR_CONTEXT_MAX_SIZE ? WFPR_RECORD_MAX_SIZE : WFPR_CONTEXT_MAX_SIZE)

/* The conformance table's buffer rules, once the blob is known (ioctl.c
 * passes it in, so that a backend completing a pending QUERY later applies
 * the same rules without calling back into ioctl.c). */
typedef int (*wfpr__fill_fn)(void *out, uint32_t out_len, const uint8_t *blob, size_t len, uint32_t *bytes);

/* A connect, or the first datagram of a UDP flow, to be routed. */
typedef struct wfpr__route {
	int fd;
	uint64_t cookie;                      /* fd's SO_COOKIE */
	int protocol;
	struct sockaddr_storage remote;       /* what the application addressed */
	const uint8_t *records;               /* SET on the socket (checked), or NULL */
	size_t records_len;
	const uint8_t *notes;                 /* its annotations (wire form), or NULL */
	size_t notes_len;
	bool may_connect;                     /* TCP: the backend may make the connect itself */
	/* out */
	struct sockaddr_storage target;       /* where to connect or send (remote when permitted) */
	void *pending;                        /* a record that waits for the connect's end (connect_done) */
	bool connected;                       /* the backend made the connect: its result follows */
	int connect_result, connect_errno;
	int errnum;                           /* errno for a failure, when the backend knows it (else 0) */
} wfpr__route;

/* A connected socket's addresses. */
typedef struct wfpr__tuple {
	struct sockaddr_storage local, peer;
} wfpr__tuple;

/* A QUERY of one socket, its arguments checked. */
typedef struct wfpr__query {
	int fd;
	int protocol;                         /* unset when the backend checks sockets */
	struct sockaddr_storage local, peer;  /* unset when the backend checks sockets */
	bool context;                         /* the context rather than the records */
	uint64_t cookie;                      /* its SO_COOKIE, when read (0: not read) */
	bool overlapped;                      /* an overlapped call on this socket (cookie is read) */
	wfpr_overlapped *ov;
	wfpr_completion_routine routine;
	void *out;                            /* where a pending QUERY writes, through fill */
	uint32_t out_len;
	wfpr__fill_fn fill;
} wfpr__query;

/* Where the answer of a QUERY that pends goes, kept from the call that
 * pended (its buffer, fill, overlapped and completion routine). */
typedef struct wfpr__answer_to {
	void *out;
	uint32_t out_len;
	wfpr__fill_fn fill;
	wfpr_overlapped *ov;
	wfpr_completion_routine routine;
	apc_queue *queue; /* the calling thread's, for the routine */
} wfpr__answer_to;

/* Keep where q's answer goes, and mark q->ov pending (before another
 * thread can complete it): 0, or WSAENOBUFS. */
int wfpr__answer_to_init(wfpr__answer_to *a, const wfpr__query *q);
/* Complete it: with err, else with blob (len bytes) through fill. */
void wfpr__answer_complete(wfpr__answer_to *a, int err, const uint8_t *blob, size_t len);
/* Let it go unused: the call was answered at once, or failed. */
void wfpr__answer_drop(wfpr__answer_to *a);

typedef struct wfpr__backend {
	const char *name;
	/* the kernel checks the socket's kind and state itself (one syscall less) */
	bool checks_sockets;
	/* the kernel routes every connect and datagram, keeps the records SET
	 * and gives replies the original source itself: the front end keeps no
	 * state for a socket's connect, SET or flows (so it reads no SO_COOKIE
	 * for them), and asks about every datagram it receives (one syscall, as
	 * looking up the socket would be) */
	bool kernel_routes;

	/* Classify; fill target (and pending, connected). 0 or a wfpr_err. */
	int (*route)(wfpr__route *r);
	/* The connect of a route that left pending has ended. */
	void (*connect_done)(void *pending, bool connected);
	/* The blob into blob (WFPR__BLOB_MAX bytes), its length in *len: 0,
	 * WFPR_WSA_IO_PENDING (q->fill completes q->ov later), or a wfpr_err. */
	int (*query)(const wfpr__query *q, uint8_t *blob, size_t *len);
	/* SET: may fd (cookie: its SO_COOKIE, 0 where the kernel routes) carry
	 * this blob? 0 or a wfpr_err. */
	int (*check_set)(int fd, uint64_t cookie, const uint8_t *blob, size_t len);
	/* fd's annotations are now notes (wire form, checked); a backend that
	 * routes in user space gets them with the route instead. 0 or a wfpr_err. */
	int (*annotate)(int fd, const uint8_t *notes, size_t len);
	/* A datagram from `from` arrived on fd: if it is the first of a
	 * redirected flow, its records (and, when asked, context) are handed out
	 * once, into the buffers (WFPR__BLOB_MAX each). It runs for every
	 * datagram, so fd's local address is read only by a backend that needs it. */
	void (*first_datagram)(int fd, const struct sockaddr_storage *from,
	                       bool want_context, uint8_t *records, size_t *records_len, uint8_t *context,
	                       size_t *context_len);
	/* Complete fd's pending operations with WSA_OPERATION_ABORTED. */
	void (*flush)(int fd, uint64_t cookie);
	/* fd is about to close; tcp: its addresses, if a QUERY read them. */
	void (*closed)(int fd, uint64_t cookie, const wfpr__tuple *tcp);
} wfpr__backend;

/* Operations for a backend that has nothing to do there: route direct,
 * nothing to finish after a connect, nothing kept per socket. */
int wfpr__route_direct(wfpr__route *r);
void wfpr__connect_done_nothing(void *pending, bool connected);
void wfpr__socket_nothing(int fd, uint64_t cookie);
void wfpr__closed_nothing(int fd, uint64_t cookie, const wfpr__tuple *tcp);
int wfpr__annotate_with_route(int fd, const uint8_t *notes, size_t len);

/* The attached backend (never NULL: wfpr__backend_none when none is). */
const wfpr__backend *wfpr__backend_current(void);
/* Attach b; WFPR_WSAEADDRINUSE while another backend is attached. */
int wfpr__backend_attach(const wfpr__backend *b);
/* Detach b if it is the attached one. */
void wfpr__backend_detach(const wfpr__backend *b);

extern const wfpr__backend wfpr__backend_none;
extern const wfpr__backend wfpr__backend_inproc;
extern const wfpr__backend wfpr__backend_preload;
extern const wfpr__backend wfpr__backend_ebpf;

#endif
