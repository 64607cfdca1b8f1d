/* The in-process backend: a layer attached to this process classifies its
 * connects and first datagrams, and the record store (core/src/store.h)
 * keeps the records it issues. A redirect really connects to the proxy's
 * socket. One lock guards the store and the layer pointer. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../backend.h"
#include "../layer.h"
#include "../sockutil.h"
#include "../store.h"
#include "wfpr/error.h"
#include "wfpr/socket.h"

/* A record nobody has queried outlives its closed client this long, so a
 * proxy that accepts late still finds it. */
#define UNQUERIED_GRACE_NS (60 * 1000000000LL)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t connect_ended = PTHREAD_COND_INITIALIZER;
static wfpr_layer *attached; /* guarded by lock */
static wfpr__store *store;   /* guarded by lock; made at the first attach */

static bool socket_alive(int fd, uint64_t cookie)
{
	return fd >= 0 && wfpr__socket_cookie(fd) == cookie;
}

/* Alive while the redirected socket is open; once a proxy socket QUERYed
 * it, while that socket is open; an unqueried TCP record a while longer. */
static bool entry_alive(const wfpr__entry *e, int64_t now)
{
	if (socket_alive(e->issuer_fd, e->issuer_cookie))
		return true;
	if (e->holder_socket) /* queried: holder is its descriptor + 1, 0 once closed */
		return e->holder && socket_alive((int)(e->holder - 1), e->holder_socket);
	return e->protocol == IPPROTO_TCP && e->committed && now - e->created_ns < UNQUERIED_GRACE_NS;
}

/* A socket connects with records SET: they are used now, by that socket
 * only (a record passes one connection on). */
static int consume(int fd, const uint8_t *records, size_t len)
{
	uint8_t token[WFPR_TOKEN_SIZE];
	uint64_t cookie = wfpr__socket_cookie(fd);
	int rc = WFPR_WSAEINVAL;
	pthread_mutex_lock(&lock);
	wfpr__entry *e = attached && wfpr__layer_check_records(attached, records, len, token) == 0
	                         ? wfpr__store_find_issued(store, records, len, token)
	                         : NULL;
	if (e && wfpr__entry_usable_by(e, cookie)) {
		e->consumed_by = cookie;
		rc = 0;
	} else if (attached) {
		wfpr__layer_count_bad_record(attached);
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

static int inproc_route(wfpr__route *r)
{
	conn_info info = {.protocol = r->protocol, .remote = r->remote, .pid = getpid(), .uid = getuid(),
	                  .notes = r->notes, .notes_len = r->notes_len};
	redirect_decision d;

	r->target = r->remote;
	wfpr__socket_local(r->fd, &info.local);
	pthread_mutex_lock(&lock);
	wfpr_layer *layer = attached;
	pthread_mutex_unlock(&lock);
	if (!layer)
		return 0;

	int rc = r->records_len ? consume(r->fd, r->records, r->records_len) : 0;
	if (rc != 0)
		return rc;
	rc = wfpr__layer_classify(layer, &info, r->records, r->records_len, &d);
	if (rc != 0)
		return rc;
	if (d.action != WFPR_ACTION_REDIRECT) {
		wfpr__redirect_decision_cleanup(&d);
		return d.action == WFPR_ACTION_BLOCK ? d.err : 0;
	}
	uint8_t *record = NULL, token[WFPR_TOKEN_SIZE];
	size_t record_len = 0;
	if (wfpr__socket_bind_for_redirect(r->fd, r->protocol, &d.target, &info.local) < 0) {
		r->errnum = errno;
		rc = wfpr_err_from_errno(errno);
	} else if ((rc = wfpr__layer_issue(layer, &d, &info, r->records, r->records_len, &record, &record_len,
	                                   token)) == 0) {
		pthread_mutex_lock(&lock);
		wfpr__entry *e = wfpr__store_add(store, r->protocol, &info.local, &d.target, record, record_len, d.context,
		                                 d.context_len, token, false);
		if (e) {
			e->issuer_fd = r->fd;
			e->issuer_cookie = wfpr__socket_cookie(r->fd);
		}
		pthread_mutex_unlock(&lock);
		d.context = NULL; /* the store owns it now */
		r->target = d.target;
		r->pending = e;
		rc = e ? 0 : WFPR_WSAENOBUFS;
	}
	wfpr__redirect_decision_cleanup(&d);
	return rc;
}

static void inproc_connect_done(void *pending, bool connected)
{
	if (!pending)
		return;
	pthread_mutex_lock(&lock);
	if (connected)
		wfpr__store_commit(store, pending);
	else
		wfpr__store_remove(store, pending);
	pthread_cond_broadcast(&connect_ended);
	pthread_mutex_unlock(&lock);
}

/* An overlapped QUERY waiting for its record's connect to end. */
typedef struct pending_query {
	wfpr__waiter w;
	bool context;
	wfpr__answer_to answer;
} pending_query;

static void pending_complete(wfpr__waiter *w, const wfpr__entry *e, bool aborted)
{
	pending_query *q = (pending_query *)w;
	if (e)
		wfpr__answer_complete(&q->answer, 0, q->context ? e->context : e->record,
		                      q->context ? e->context_len : e->record_len);
	else
		wfpr__answer_complete(&q->answer, aborted ? WFPR_WSA_OPERATION_ABORTED : WFPR_FWP_E_NOT_FOUND, NULL, 0);
	free(q);
}

/* Locked: an overlapped QUERY of e pends until e's connect ends. */
static int pend(const wfpr__query *q, const wfpr__entry *e)
{
	pending_query *p = calloc(1, sizeof(*p));
	if (!p || wfpr__answer_to_init(&p->answer, q) != 0) {
		free(p);
		return WFPR_WSAENOBUFS;
	}
	p->w = (wfpr__waiter){.fd = q->fd, .cookie = q->cookie, .complete = pending_complete};
	p->context = q->context;
	wfpr__store_wait(store, &p->w, e);
	return WFPR_WSA_IO_PENDING;
}

/* The connect that made a record may not have completed yet: an
 * overlapped QUERY then pends, a non-blocking one would block, and a
 * blocking one waits. */
static int inproc_query(const wfpr__query *q, uint8_t *blob, size_t *len)
{
	pthread_mutex_lock(&lock);
	int rc = WFPR_WSAENETDOWN;
	if (!attached)
		goto out;
	/* the socket's cookie only when it is not the one that found the record
	 * already (a syscall saved on every later QUERY of a connection) */
	uint64_t cookie = 0;
	wfpr__entry *e = wfpr__store_find(store, q->protocol, &q->local, &q->peer, 0);
	if (e && e->holder != (uint64_t)q->fd + 1) {
		cookie = q->cookie ? q->cookie : wfpr__socket_cookie(q->fd);
		e = wfpr__store_find(store, q->protocol, &q->local, &q->peer, cookie);
	}
	if (e && !e->committed) {
		rc = q->overlapped ? pend(q, e) : WFPR_WSAEWOULDBLOCK;
		if (q->overlapped || wfpr__socket_nonblocking(q->fd))
			goto out;
		while ((e = wfpr__store_find(store, q->protocol, &q->local, &q->peer, cookie)) && !e->committed)
			pthread_cond_wait(&connect_ended, &lock);
	}
	rc = WFPR_FWP_E_NOT_FOUND;
	if (!e)
		goto out;
	if (cookie) {
		/* the record now lives as long as this socket does */
		e->holder = (uint64_t)q->fd + 1;
		e->holder_socket = cookie;
	}
	*len = q->context ? e->context_len : e->record_len;
	memcpy(blob, q->context ? e->context : e->record, *len);
	rc = 0;
out:
	pthread_mutex_unlock(&lock);
	return rc;
}

/* Only a blob this layer issued to a live connection. */
static int inproc_check_set(int fd, uint64_t cookie, const uint8_t *blob, size_t len)
{
	uint8_t token[WFPR_TOKEN_SIZE];
	(void)fd;
	pthread_mutex_lock(&lock);
	int rc = WFPR_WSAENETDOWN;
	if (attached) {
		rc = wfpr__layer_check_records(attached, blob, len, token);
		wfpr__entry *e = rc == 0 ? wfpr__store_find_issued(store, blob, len, token) : NULL;
		if (rc == 0 && (!e || !wfpr__entry_usable_by(e, cookie)))
			rc = WFPR_WSAEINVAL; /* well formed, but not a live connection's record, or used */
		if (rc != 0)
			wfpr__layer_count_bad_record(attached);
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

static void inproc_first_datagram(int fd, const struct sockaddr_storage *from, bool want_context, uint8_t *records,
                                  size_t *records_len, uint8_t *context, size_t *context_len)
{
	struct sockaddr_storage local;
	wfpr__socket_local(fd, &local);
	pthread_mutex_lock(&lock);
	wfpr__entry *e = store ? wfpr__store_find(store, IPPROTO_UDP, &local, from, wfpr__socket_cookie(fd)) : NULL;
	if (e && e->committed && !e->delivered) {
		e->delivered = true;
		memcpy(records, e->record, *records_len = e->record_len);
		if (want_context)
			memcpy(context, e->context, *context_len = e->context_len);
	}
	pthread_mutex_unlock(&lock);
}

static void inproc_flush(int fd, uint64_t cookie)
{
	pthread_mutex_lock(&lock);
	if (store)
		wfpr__store_abort(store, fd, cookie);
	pthread_mutex_unlock(&lock);
}

/* fd closes: it neither keeps a record alive nor waits for one; a record
 * whose connect has not ended goes with its socket. */
static bool forget_socket(wfpr__entry *e, uint64_t fd)
{
	if (e->holder == fd + 1)
		e->holder = 0;
	if (e->issuer_fd != (int)fd)
		return false;
	e->issuer_fd = -1;
	return !e->committed;
}

static void inproc_closed(int fd, uint64_t cookie, const wfpr__tuple *tcp)
{
	(void)tcp;
	pthread_mutex_lock(&lock);
	if (store) {
		wfpr__store_abort(store, fd, cookie);
		if (wfpr__store_count(store))
			wfpr__store_drop_if(store, forget_socket, (uint64_t)fd);
		pthread_cond_broadcast(&connect_ended);
	}
	pthread_mutex_unlock(&lock);
}

const wfpr__backend wfpr__backend_inproc = {
	.name = "inproc",
	.route = inproc_route,
	.connect_done = inproc_connect_done,
	.query = inproc_query,
	.check_set = inproc_check_set,
	.annotate = wfpr__annotate_with_route,
	.first_datagram = inproc_first_datagram,
	.flush = inproc_flush,
	.closed = inproc_closed,
};

int wfpr_inproc_attach(wfpr_layer *layer)
{
	if (!layer)
		return WFPR_WSAEFAULT;
	pthread_mutex_lock(&lock);
	int rc = attached && attached != layer ? WFPR_WSAEADDRINUSE : 0;
	if (rc == 0 && !store && !(store = wfpr__store_new(0, entry_alive)))
		rc = WFPR_WSAENOBUFS;
	if (rc == 0 && !attached)
		rc = wfpr__backend_attach(&wfpr__backend_inproc);
	if (rc == 0)
		attached = layer;
	pthread_mutex_unlock(&lock);
	return rc;
}

void wfpr_inproc_detach(wfpr_layer *layer)
{
	pthread_mutex_lock(&lock);
	if (layer && attached == layer) {
		attached = NULL;
		wfpr__backend_detach(&wfpr__backend_inproc);
	}
	pthread_mutex_unlock(&lock);
}
