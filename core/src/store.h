#ifndef WFPR_SRC_STORE_H
#define WFPR_SRC_STORE_H

/*
 * The record store, one for every backend that keeps records in user
 * space: the inproc backend (core/src/inproc/) and the preload broker
 * (core/src/preload/broker.c). It holds the records a layer issued, indexed
 * by the redirected connection (protocol, the client socket's local
 * address, the proxy's address) and by the record's last token; it says
 * which are alive, through the owner's liveness rule; and it keeps the
 * operations that wait for a record's connect to end.
 *
 * A record belongs to one connection, never to a 4-tuple: when the kernel
 * reuses a tuple, adding the new connection's record removes the old one,
 * and a proxy socket other than the one that first found a record (a later
 * connection on the reused tuple) does not get the old record.
 *
 * Not thread-safe: the owner locks around every call.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "wfpr/record.h"

typedef struct wfpr__entry {
	struct wfpr__entry *next_tuple, *next_token;
	int protocol;
	struct sockaddr_storage client; /* the redirected socket's local address */
	struct sockaddr_storage target; /* the proxy's address */
	uint8_t *record, *context;
	size_t record_len, context_len;
	uint8_t token[WFPR_TOKEN_SIZE];
	int64_t created_ns, used_ns;  /* CLOCK_MONOTONIC */
	bool committed;               /* visible to QUERY: its connect completed */
	bool delivered;               /* UDP: handed out with the flow's first datagram */
	/* who keeps it alive, for the owner's liveness rule */
	int issuer_fd;                /* inproc: the redirected socket, -1 once closed */
	uint64_t issuer_cookie;
	uint64_t holder;              /* what QUERYed it: inproc, the socket's descriptor + 1; broker, the client id */
	uint64_t holder_socket;       /* the SO_COOKIE of the proxy socket that QUERYed it (0: none yet) */
	uint64_t consumed_by;         /* the SO_COOKIE of the socket that connected with it SET (0: none yet):
	                               * a record passes one connection on, so SET elsewhere is refused */
	uint32_t quota_uid;           /* broker: the user whose quota it counts against */
	bool in_quota;                /* broker: it counts against quota_uid's */
} wfpr__entry;

/* May the socket with SO_COOKIE `socket` carry e? Only if no other socket
 * has connected with it yet (a record is single-use). */
static inline bool wfpr__entry_usable_by(const wfpr__entry *e, uint64_t socket)
{
	return !e->consumed_by || e->consumed_by == socket;
}

/* The owner's rule: is e still alive at now_ns? */
typedef bool (*wfpr__entry_alive_fn)(const wfpr__entry *e, int64_t now_ns);

/* An operation waiting for an entry's connect to end (an overlapped QUERY).
 * complete() runs once, with the entry (committed) or NULL (it went), or
 * with `aborted` set; the waiter is then the store's no more. */
typedef struct wfpr__waiter {
	struct wfpr__waiter *next;
	const wfpr__entry *entry;
	int fd;
	uint64_t cookie;
	void (*complete)(struct wfpr__waiter *w, const wfpr__entry *e, bool aborted);
} wfpr__waiter;

typedef struct wfpr__store wfpr__store;

/* max_entries: 0 for no cap. NULL when out of memory. */
wfpr__store *wfpr__store_new(size_t max_entries, wfpr__entry_alive_fn alive);
void wfpr__store_free(wfpr__store *s);

/* fn(user, e) runs as each entry goes (removed, replaced, swept, freed). */
void wfpr__store_on_remove(wfpr__store *s, void (*fn)(void *user, const wfpr__entry *e), void *user);

/* A new record (the store takes record and context, even on failure),
 * uncommitted unless `committed`. An entry of the same connection tuple
 * belongs to a connection that is gone: it is removed. NULL when the store
 * is full or out of memory. */
wfpr__entry *wfpr__store_add(wfpr__store *s, int protocol, const struct sockaddr_storage *client,
                             const struct sockaddr_storage *target, uint8_t *record, size_t record_len,
                             uint8_t *context, size_t context_len, const uint8_t token[WFPR_TOKEN_SIZE],
                             bool committed);
/* The connect completed: waiters complete with the record. */
void wfpr__store_commit(wfpr__store *s, wfpr__entry *e);
/* Remove e; its waiters complete with NULL. */
void wfpr__store_remove(wfpr__store *s, wfpr__entry *e);

/* The record of the connection a proxy's socket (local, peer; SO_COOKIE
 * `socket`, 0 when unknown) belongs to, alive or not; NULL if none. A
 * record another proxy socket already found is an earlier connection's on
 * a reused tuple: it is removed, and NULL returned. */
wfpr__entry *wfpr__store_find(wfpr__store *s, int protocol, const struct sockaddr_storage *local,
                              const struct sockaddr_storage *peer, uint64_t socket);
/* The live entry that issued exactly this blob (whose last token is
 * token), or NULL. */
wfpr__entry *wfpr__store_find_issued(wfpr__store *s, const uint8_t *blob, size_t len,
                                     const uint8_t token[WFPR_TOKEN_SIZE]);
bool wfpr__store_alive(const wfpr__store *s, const wfpr__entry *e);

/* Remove every entry for which drop(e, arg) says so. */
void wfpr__store_drop_if(wfpr__store *s, bool (*drop)(wfpr__entry *e, uint64_t arg), uint64_t arg);
size_t wfpr__store_count(const wfpr__store *s);

void wfpr__store_wait(wfpr__store *s, wfpr__waiter *w, const wfpr__entry *e);
/* Complete the waiters of socket (fd, cookie) as aborted. */
void wfpr__store_abort(wfpr__store *s, int fd, uint64_t cookie);

#endif
