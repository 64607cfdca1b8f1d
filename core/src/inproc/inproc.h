#ifndef WFPR_SRC_INPROC_H
#define WFPR_SRC_INPROC_H

/*
 * The in-process backend: it stores the records the layer issues, keyed by
 * the redirected connection's 4-tuple and by the record's last token, and
 * finds them again for QUERY and SET. One lock (wfpr__inproc_lock) guards the
 * store and the attached layer.
 */

#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include "../layer.h"
#include "../backend.h"
#include "../overlapped.h"
#include "../sockutil.h"

extern pthread_mutex_t wfpr__inproc_lock;
extern wfpr_layer *wfpr__inproc_layer; /* guarded by wfpr__inproc_lock */

/* ---- records: store.c ---- */

typedef struct pending_op {
	struct pending_op *next;
	struct conn *conn;
	int fd;
	uint64_t cookie;
	bool context;
	void *out;
	uint32_t out_len;
	wfpr__fill_fn fill;
	wfpr_overlapped *ov;
	wfpr_completion_routine routine;
	apc_queue *queue;
} pending_op;

typedef struct conn {
	struct conn *next_tuple, *next_token;
	int protocol;
	struct sockaddr_storage client; /* the redirected socket's local address */
	struct sockaddr_storage target; /* the proxy's address */
	int client_fd;
	uint64_t client_cookie;
	int query_fd; /* the proxy's socket that found this record, or -1 once closed */
	uint64_t query_cookie;
	bool queried;   /* some proxy socket found it: it lives as long as that socket */
	bool committed; /* visible to QUERY: the connect completed */
	bool delivered; /* UDP: the first datagram went past the proxy */
	uint8_t *record, *context;
	size_t record_len, context_len;
	uint8_t token[WFPR_TOKEN_SIZE];
	int64_t created;
} conn;

/* Takes ownership of record and context. NULL when out of memory. */
conn *wfpr__store_reserve(int protocol, const struct sockaddr_storage *client, const struct sockaddr_storage *target,
                    int client_fd, uint8_t *record, size_t record_len, uint8_t *context, size_t context_len,
                    const uint8_t token[WFPR_TOKEN_SIZE]);
/* The connect completed: QUERY may see it; waiting operations complete. */
void wfpr__store_commit(conn *c);
/* The connect failed: waiting operations complete with FWP_E_NOT_FOUND. */
void wfpr__store_abandon(conn *c);

/* The record of the connection a proxy's socket (local, peer) belongs to. */
conn *wfpr__store_find(int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer);
/* The live connection that issued this exact blob, or NULL. */
conn *wfpr__store_find_issued(const uint8_t *blob, size_t len, const uint8_t token[WFPR_TOKEN_SIZE]);

void wfpr__store_add_pending(conn *c, pending_op *op);
/* Complete every pending operation of socket fd with WSA_OPERATION_ABORTED. */
void wfpr__store_abort_pending(int fd, uint64_t cookie);
/* The socket is closing: forget its part in every connection. */
void wfpr__store_socket_closed(int fd);
/* Wait (blocking QUERY) until c is committed or gone; false if gone. */
bool wfpr__store_wait_committed(int protocol, const struct sockaddr_storage *local,
                          const struct sockaddr_storage *peer);

#endif
