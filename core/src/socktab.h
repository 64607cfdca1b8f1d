#ifndef WFPR_SRC_SOCKTAB_H
#define WFPR_SRC_SOCKTAB_H

/*
 * The socket front end's state of each socket made or touched through the
 * library, whatever the backend: the overlapped attribute, the records SET
 * on it, a connect in progress, and where each UDP destination goes. One
 * lock (wfpr__socktab_lock) guards it; no backend lock is taken under it.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "backend.h"
#include "record_wire.h"

extern pthread_mutex_t wfpr__socktab_lock;

typedef struct wfpr__flow {
	struct wfpr__flow *next;
	struct sockaddr_storage dest;   /* what the application addressed */
	struct sockaddr_storage target; /* where its datagrams really go */
	int64_t last_ns;                /* its last datagram out: idle too long, the next starts a new flow */
} wfpr__flow;

typedef struct wfpr__sock {
	struct wfpr__sock *next;
	int fd;
	uint64_t cookie;
	int protocol; /* IPPROTO_TCP or IPPROTO_UDP once known (0: not yet) */
	bool overlapped;
	bool want_context;
	uint8_t *records; /* SET on this socket, checked */
	size_t records_len;
	uint8_t notes[WFPR__WIRE_NOTES_MAX]; /* wfpr_annotate: what the proxy says, wire form */
	size_t notes_len;
	bool connect_pending;                   /* a non-blocking connect in progress... */
	struct sockaddr_storage connect_target; /* ...to here (the proxy, if redirected) */
	const wfpr__backend *routed_by;         /* ...routed by this backend, */
	void *connecting;                       /* ...whose record waits for its end */
	wfpr__flow *flows;                      /* UDP: where each destination goes */
	size_t n_flows;
	bool has_tuple;   /* TCP: its addresses, read at its first QUERY (the kernel */
	wfpr__tuple tuple; /* forgets the peer once both FINs have passed) */
} wfpr__sock;

wfpr__sock *wfpr__socktab_find(int fd); /* locked; NULL if none or stale */
wfpr__sock *wfpr__socktab_get(int fd);  /* locked; creates; NULL when out of memory or not a socket */
/* The same, with fd's SO_COOKIE already read (one getsockopt per call of
 * the API, however many lookups it makes); 0: read it here. */
wfpr__sock *wfpr__socktab_find_as(int fd, uint64_t cookie);
wfpr__sock *wfpr__socktab_get_as(int fd, uint64_t cookie);
void wfpr__socktab_remove(int fd);      /* locked */

/* Not locked (they lock). fd's IPPROTO_*, kept with its state once known,
 * and its SO_COOKIE into *cookie: -1 with errno set (ENOTSOCK for a
 * non-socket). */
int wfpr__socktab_protocol(int fd, uint64_t *cookie);
/* A connected TCP socket's addresses, read once and kept: 0, or a wfpr_err. */
int wfpr__socktab_tuple(int fd, uint64_t cookie, wfpr__tuple *out);

/* SET (the IOCTL, the control message, the socket option): the backend
 * checks the blob, which then goes with fd's connect. cookie and protocol:
 * fd's, when the caller read them (else 0). 0 or a wfpr_err. (socket.c) */
int wfpr__set_records(int fd, uint64_t cookie, int protocol, const uint8_t *blob, size_t len);

#endif
