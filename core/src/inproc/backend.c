/* The in-process backend: a layer attached to this process classifies its
 * connects and first datagrams, and the store (store.c) keeps the records
 * it issues. A redirect really connects to the proxy's socket. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "inproc.h"
#include "wfpr/error.h"
#include "wfpr/socket.h"

static int inproc_route(wfpr__route *r)
{
	conn_info info = {.protocol = r->protocol, .remote = r->remote, .pid = getpid(), .uid = getuid()};
	redirect_decision d;

	r->target = r->remote;
	wfpr__socket_local(r->fd, &info.local);
	pthread_mutex_lock(&wfpr__inproc_lock);
	wfpr_layer *layer = wfpr__inproc_layer;
	pthread_mutex_unlock(&wfpr__inproc_lock);
	if (!layer)
		return 0;

	int rc = wfpr__layer_classify(layer, &info, r->records, r->records_len, &d);
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
	} else if ((rc = wfpr__layer_issue(layer, &d, &info, r->records, r->records_len, &record, &record_len, token)) == 0) {
		pthread_mutex_lock(&wfpr__inproc_lock);
		r->pending = wfpr__store_reserve(r->protocol, &info.local, &d.target, r->fd, record, record_len, d.context,
		                           d.context_len, token);
		pthread_mutex_unlock(&wfpr__inproc_lock);
		d.context = NULL; /* the store owns it now */
		r->target = d.target;
		rc = r->pending ? 0 : WFPR_WSAENOBUFS;
	}
	wfpr__redirect_decision_cleanup(&d);
	return rc;
}

static void inproc_connect_done(void *pending, bool connected)
{
	if (!pending)
		return;
	pthread_mutex_lock(&wfpr__inproc_lock);
	if (connected)
		wfpr__store_commit(pending);
	else
		wfpr__store_abandon(pending);
	pthread_mutex_unlock(&wfpr__inproc_lock);
}

static bool would_block(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

/* The connect that made a record may not have completed yet: an
 * overlapped QUERY is then pending, a non-blocking one would block, and a
 * blocking one waits. */
static int inproc_query(const wfpr__query *q, uint8_t *blob, size_t *len)
{
	pthread_mutex_lock(&wfpr__inproc_lock);
	int rc = WFPR_WSAENETDOWN;
	if (!wfpr__inproc_layer)
		goto out;
	conn *c = wfpr__store_find(q->protocol, &q->local, &q->peer);
	if (c && !c->committed) {
		if (q->cookie) {
			pending_op *op = calloc(1, sizeof(*op));
			apc_queue *queue = q->routine ? wfpr__apc_queue_self() : NULL;
			rc = WFPR_WSAENOBUFS;
			if (!op || (q->routine && !queue)) {
				free(op);
				wfpr__apc_queue_unref(queue);
				goto out;
			}
			*op = (pending_op){.fd = q->fd, .cookie = q->cookie, .context = q->context, .out = q->out,
			                   .out_len = q->out_len, .fill = q->fill, .ov = q->ov, .routine = q->routine,
			                   .queue = queue};
			q->ov->status = (uint32_t)WFPR_WSA_IO_PENDING;
			q->ov->bytes = 0;
			wfpr__store_add_pending(c, op);
			rc = WFPR_WSA_IO_PENDING;
			goto out;
		}
		rc = WFPR_WSAEWOULDBLOCK;
		if (would_block(q->fd))
			goto out;
		wfpr__store_wait_committed(q->protocol, &q->local, &q->peer);
		c = wfpr__store_find(q->protocol, &q->local, &q->peer);
	}
	rc = WFPR_FWP_E_NOT_FOUND;
	if (!c)
		goto out;
	if (c->query_fd != q->fd) {
		/* The record now lives as long as this socket does. */
		c->query_fd = q->fd;
		c->query_cookie = wfpr__socket_cookie(q->fd);
		c->queried = true;
	}
	*len = q->context ? c->context_len : c->record_len;
	memcpy(blob, q->context ? c->context : c->record, *len);
	rc = 0;
out:
	pthread_mutex_unlock(&wfpr__inproc_lock);
	return rc;
}

/* Only a blob this layer issued to a live connection. */
static int inproc_check_set(int fd, const uint8_t *blob, size_t len)
{
	uint8_t token[WFPR_TOKEN_SIZE];
	(void)fd;
	pthread_mutex_lock(&wfpr__inproc_lock);
	int rc = WFPR_WSAENETDOWN;
	if (wfpr__inproc_layer) {
		rc = wfpr__layer_check_records(wfpr__inproc_layer, blob, len, token);
		if (rc == 0 && !wfpr__store_find_issued(blob, len, token))
			rc = WFPR_WSAEINVAL; /* well formed, but not a live connection's record */
		if (rc != 0)
			wfpr__layer_count_bad_record(wfpr__inproc_layer);
	}
	pthread_mutex_unlock(&wfpr__inproc_lock);
	return rc;
}

static void inproc_first_datagram(int fd, const struct sockaddr_storage *local, const struct sockaddr_storage *from,
                                  bool want_context, uint8_t *records, size_t *records_len, uint8_t *context,
                                  size_t *context_len)
{
	(void)fd;
	pthread_mutex_lock(&wfpr__inproc_lock);
	conn *c = wfpr__store_find(IPPROTO_UDP, local, from);
	if (c && c->committed && !c->delivered) {
		c->delivered = true;
		memcpy(records, c->record, *records_len = c->record_len);
		if (want_context)
			memcpy(context, c->context, *context_len = c->context_len);
	}
	pthread_mutex_unlock(&wfpr__inproc_lock);
}

static void inproc_flush(int fd, uint64_t cookie)
{
	pthread_mutex_lock(&wfpr__inproc_lock);
	wfpr__store_abort_pending(fd, cookie);
	pthread_mutex_unlock(&wfpr__inproc_lock);
}

static void inproc_closed(int fd, uint64_t cookie)
{
	pthread_mutex_lock(&wfpr__inproc_lock);
	wfpr__store_abort_pending(fd, cookie);
	wfpr__store_socket_closed(fd);
	pthread_mutex_unlock(&wfpr__inproc_lock);
}

const wfpr__backend wfpr__backend_inproc = {
	.name = "inproc",
	.route = inproc_route,
	.connect_done = inproc_connect_done,
	.query = inproc_query,
	.check_set = inproc_check_set,
	.first_datagram = inproc_first_datagram,
	.flush = inproc_flush,
	.closed = inproc_closed,
};

int wfpr_inproc_attach(wfpr_layer *layer)
{
	if (!layer)
		return WFPR_WSAEFAULT;
	pthread_mutex_lock(&wfpr__inproc_lock);
	int rc = wfpr__inproc_layer && wfpr__inproc_layer != layer ? WFPR_WSAEADDRINUSE : 0;
	if (rc == 0 && !wfpr__inproc_layer)
		rc = wfpr__backend_attach(&wfpr__backend_inproc);
	if (rc == 0)
		wfpr__inproc_layer = layer;
	pthread_mutex_unlock(&wfpr__inproc_lock);
	return rc;
}

void wfpr_inproc_detach(wfpr_layer *layer)
{
	pthread_mutex_lock(&wfpr__inproc_lock);
	if (layer && wfpr__inproc_layer == layer) {
		wfpr__inproc_layer = NULL;
		wfpr__backend_detach(&wfpr__backend_inproc);
	}
	pthread_mutex_unlock(&wfpr__inproc_lock);
}
