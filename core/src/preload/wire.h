#ifndef WFPR_SRC_PRELOAD_WIRE_H
#define WFPR_SRC_PRELOAD_WIRE_H

/*
 * The broker's protocol: one SOCK_SEQPACKET message per request and per
 * reply, a fixed header and then a blob (records or context). Only local
 * processes of the same machine speak it; the broker still checks every
 * field, and takes the caller's pid and uid from SO_PEERCRED, never from
 * the message. Two requests carry descriptors (SCM_RIGHTS), so that the
 * broker checks a claim on the socket itself rather than believing it:
 * REGISTER the proxy's listening sockets, ISSUE the redirected socket.
 */

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include "wfpr/layer.h"
#include "wfpr/record.h"
#include "../record_wire.h"

#define WIRE_MAGIC 0x57465052u /* "WFPR" */
#define WIRE_NAME_MAX 64
#define WIRE_KEY_SIZE 32 /* the registration key (WFPR_BROKER_KEY_SIZE) */
#define WIRE_MAX_FDS 2   /* descriptors one request may carry */
#define WIRE_BLOB_MAX (WFPR_RECORD_MAX_SIZE > WFPR_CONTEXT_MAX_SIZE ? WFPR_RECORD_MAX_SIZE : WFPR_CONTEXT_MAX_SIZE)

/* A QUERY's reply carries the records and then the context. */
#define WIRE_REPLY_BLOB_MAX (WFPR_RECORD_MAX_SIZE + WFPR_CONTEXT_MAX_SIZE)

enum wire_type {
	WIRE_ROUTE = 1, /* a: remote, b: local, blob: the socket's SET records, then its annotations
	                 * (notes_len bytes) -> action, target; onward: WIRE_ROUTE_KEEP, generation, credit
	                 * (below), and fd: the broker's page with the first such reply. With
	                 * WIRE_ROUTE_ANNOUNCED: no reply */
	WIRE_ISSUE,     /* b: the local address now bound (after a REDIRECT), fd: that socket; a reply for UDP
	                 * only (sent once the record is stored and the page's udp_issued bumped), none for TCP */
	WIRE_QUERY,     /* a: the proxy socket's local, b: its peer, blob: notices that ride along (wire_notice
	                 * entries) -> records then context; action: records' length; onward, generation: the
	                 * proxy's own connect onward (below) */
	WIRE_CHECK,     /* blob: records to SET -> ok, or WSAEINVAL */
	WIRE_REGISTER,  /* key, name, a: the proxy's address, b: the same on IPv6 (or AF_UNSPEC), weight,
	                 * blob: its match (wfpr/match.h text, NUL-terminated),
	                 * fds: a socket listening on a, and one on b -> id, and fd: the broker's page */
	WIRE_NOTICE,    /* blob: wire_notice entries; no reply */
	WIRE_NAME,      /* id -> name */
};

#define WIRE_REGISTER_UNMODIFIED 0x1u /* REGISTER: an unmodified proxy (its fresh connects never come to itself) */
#define WIRE_REGISTER_PUSH 0x2u       /* REGISTER: push each TCP record issued toward this proxy to its client,
                                       * which takes the pushes off its socket when it QUERYs */
#define WIRE_ROUTE_ANNOUNCED 0x1u /* ROUTE: no reply; the client connects to the target it kept, or the
                                  * onward_to of its QUERY (below) */
#define WIRE_QUERY_CONTEXT 0x1u
#define WIRE_QUERY_FIRST_DATAGRAM 0x2u /* UDP: only once, with the flow's first datagram */

typedef struct wire_request {
	uint32_t magic;
	uint32_t type;
	uint32_t protocol;
	uint32_t flags;
	struct sockaddr_storage a, b;
	uint64_t socket; /* QUERY, RELEASE: the proxy socket's SO_COOKIE (a record belongs to one connection) */
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	char name[WIRE_NAME_MAX];
	uint32_t weight; /* REGISTER: its filter's (highest first; equal ones in registration order) */
	uint8_t key[WIRE_KEY_SIZE]; /* REGISTER: the broker's registration key */
	uint32_t notes_len;         /* ROUTE: the blob ends with this many bytes of annotations */
	uint64_t drained;           /* every request: how many pushes this client has taken off its socket */
	uint32_t blob_len;
} wire_request;

/* What a proxy tells the broker about one of its sockets (cookie, local
 * and peer as for QUERY), without waiting; a proxy sends them in batches.
 * Other clients' ISSUEs come in between, a later connection's on the same
 * tuple among them: a notice touches only the record it is about (a
 * RELEASE the one its socket holds, a HOLD the one with its token). */
enum wire_notice_kind {
	WIRE_NOTICE_RELEASE = 1, /* the socket closed: its record may go */
	WIRE_NOTICE_HOLD,        /* the socket took its record from a push: it holds it, as after a QUERY */
};

typedef struct wire_notice {
	uint32_t kind;
	uint32_t protocol;
	uint64_t socket;
	struct sockaddr_storage local, peer;
	uint8_t token[WFPR_TOKEN_SIZE]; /* HOLD: the last token of the record it took (a later connection on the
	                                * tuple has another) */
} wire_notice;

#define WIRE_NOTICE_MAX (WIRE_BLOB_MAX / sizeof(wire_notice))

/* The pushes a client may have on its socket, not yet taken off: more
 * would crowd the replies it waits for. */
#define WIRE_PUSH_WINDOW 64

/* QUERY's onward: a ROUTE of these very records, without annotations, to
 * the original destination, as the querying proxy will pass the connection
 * on, is permitted, or (TCP) redirected to onward_to (the next proxy); nothing
 * more is known otherwise. It holds while the page's generation is the
 * reply's: the proxy then connects without asking, or, redirected, tells
 * the broker (WIRE_ROUTE_ANNOUNCED, with the records, before its connect)
 * and connects to onward_to at once. */
#define WIRE_ONWARD_PERMIT 0x1u
#define WIRE_ONWARD_REDIRECT 0x4u

/* ROUTE's onward: the same ROUTE (this protocol and remote, from an
 * unbound socket, with no records or annotations) gets the same answer
 * while the page's generation is the reply's. The client may then keep the
 * answer: a permit connects without asking, and a redirect, while it has
 * credit (one per connect; the broker counts them against the user's quota
 * as records already issued), connects to the kept target and only tells
 * the broker (WIRE_ROUTE_ANNOUNCED, before its connect, so that a proxy's
 * QUERY never comes before it). */
#define WIRE_ROUTE_KEEP 0x2u
#define WIRE_ROUTE_CREDIT_MAX 64

typedef struct wire_reply {
	int32_t err; /* 0 or a wfpr_err */
	uint32_t action; /* ROUTE: wfpr_action; QUERY: the records' length */
	uint32_t onward; /* QUERY: WIRE_ONWARD_*; ROUTE: WIRE_ROUTE_KEEP */
	struct sockaddr_storage onward_to; /* QUERY with WIRE_ONWARD_REDIRECT: where */
	uint64_t generation; /* QUERY, ROUTE: the page's generation that onward was decided at */
	uint32_t credit; /* ROUTE with WIRE_ROUTE_KEEP: announced ROUTEs the client may make */
	uint32_t push; /* 1: no reply, but a push: a QUERY's answer before it was asked, for the
	                * connection from `from` to `to` (the proxy socket's peer and local) */
	struct sockaddr_storage from, to;
	uint8_t token[WFPR_TOKEN_SIZE]; /* QUERY, push: the record's last token, which a HOLD names */
	struct sockaddr_storage target;
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	char name[WIRE_NAME_MAX];
	uint32_t blob_len;
} wire_reply;

/* The broker's page: a sealed memfd that the broker writes and every
 * registered proxy maps read-only, so that a proxy learns without a round
 * trip that nothing it has asked about has changed. */
typedef struct wire_page {
	uint64_t generation; /* bumped whenever a proxy comes or goes (the layer's filters change) */
	uint64_t udp_issued; /* bumped with every UDP record issued, before the ISSUE's reply */
} wire_page;

/* Send one message with n_fds descriptors (at most WIRE_MAX_FDS); sendmsg's
 * result. flags: MSG_DONTWAIT or 0 (MSG_NOSIGNAL always). */
ssize_t wfpr__wire_send(int fd, const void *msg, size_t len, const int *fds, size_t n_fds, int flags);
/* Receive one message (at most cap bytes) and its descriptors, into fds,
 * *n_fds of them: WIRE_MAX_FDS + 1 when more came than fit (those that
 * fit are still in fds; the rest are closed). recvmsg's result. */
ssize_t wfpr__wire_receive(int fd, void *buf, size_t cap, int fds[WIRE_MAX_FDS], size_t *n_fds, int flags);

#endif
