#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include "ebpf/kernel.h"
#include "inproc/inproc.h"
#include "preload/client.h"
#include "wfpr/error.h"
#include "wfpr/ioctl.h"

/* The order of the checks is the order of the rows in docs/ioctl.md. */

int query_fill(void *out, uint32_t out_len, const uint8_t *blob, size_t len, uint32_t *bytes)
{
	*bytes = (uint32_t)len;
	if (out_len == 0)
		return WFPR_ERROR_INSUFFICIENT_BUFFER; /* the size probe */
	if (!out)
		return WFPR_WSAEFAULT;
	if (out_len < len)
		return WFPR_ERROR_INSUFFICIENT_BUFFER; /* the buffer is left untouched */
	memcpy(out, blob, len);
	return 0;
}

static bool is_query(uint32_t code)
{
	return code == WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS ||
	       code == WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT;
}

static bool known_code(uint32_t code)
{
	return is_query(code) || code == WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS || code == WFPR_SIO_FLUSH;
}

static bool would_block(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

typedef struct call {
	int fd;
	int protocol;
	uint64_t cookie;   /* nonzero when the call is overlapped */
	wfpr_overlapped *ov;
	wfpr_completion_routine routine;
} call;

/* QUERY: 0, an error, or WSA_IO_PENDING (overlapped, the record not there yet). */
static int query(const call *k, bool context, void *out, uint32_t out_len, uint32_t *bytes)
{
	struct sockaddr_storage local, peer;
	socklen_t len = sizeof(peer);

	if (out_len > 0 && out_len < sizeof(uint32_t))
		return WFPR_WSAEINVAL;
	if (kernel_enabled()) {
		/* the eBPF backend: issued when the client's connect was established, so never pending */
		uint8_t blob[KERNEL_BLOB_MAX];
		size_t blob_len;
		int rc = kernel_query(k->fd, context, blob, &blob_len);
		return rc != 0 ? rc : query_fill(out, out_len, blob, blob_len, bytes);
	}
	if (getpeername(k->fd, (struct sockaddr *)&peer, &len) < 0)
		return errno == ENOTCONN ? WFPR_WSAENOTCONN : wfpr_err_from_errno(errno);
	len = sizeof(local);
	if (getsockname(k->fd, (struct sockaddr *)&local, &len) < 0)
		return wfpr_err_from_errno(errno);

	if (client_enabled()) {
		/* the preload backend: issued before the client's connect, so never pending */
		uint8_t blob[WIRE_BLOB_MAX];
		size_t blob_len;
		int rc = client_query(socket_cookie(k->fd), k->protocol, &local, &peer, context ? WIRE_QUERY_CONTEXT : 0, blob, sizeof(blob), &blob_len);
		return rc != 0 ? rc : query_fill(out, out_len, blob, blob_len, bytes);
	}
	pthread_mutex_lock(&inproc_lock);
	int rc = WFPR_WSAENETDOWN;
	if (!inproc_layer)
		goto out;
	conn *c = store_find(k->protocol, &local, &peer);
	if (c && !c->committed) {
		/* The connect that made this record has not completed yet. */
		if (k->cookie) {
			pending_op *op = calloc(1, sizeof(*op));
			apc_queue *q = k->routine ? apc_queue_self() : NULL;
			rc = WFPR_WSAENOBUFS;
			if (!op || (k->routine && !q)) {
				free(op);
				apc_queue_unref(q);
				goto out;
			}
			*op = (pending_op){.fd = k->fd, .cookie = k->cookie, .context = context, .out = out,
			                   .out_len = out_len, .ov = k->ov, .routine = k->routine, .queue = q};
			k->ov->status = (uint32_t)WFPR_WSA_IO_PENDING;
			k->ov->bytes = 0;
			store_add_pending(c, op);
			rc = WFPR_WSA_IO_PENDING;
			goto out;
		}
		rc = WFPR_WSAEWOULDBLOCK;
		if (would_block(k->fd))
			goto out;
		store_wait_committed(k->protocol, &local, &peer);
		c = store_find(k->protocol, &local, &peer);
	}
	rc = WFPR_FWP_E_NOT_FOUND;
	if (!c)
		goto out;
	if (c->query_fd != k->fd) {
		/* The record now lives as long as this socket does. */
		c->query_fd = k->fd;
		c->query_cookie = socket_cookie(k->fd);
		c->queried = true;
	}
	rc = context ? query_fill(out, out_len, c->context, c->context_len, bytes)
	             : query_fill(out, out_len, c->record, c->record_len, bytes);
out:
	pthread_mutex_unlock(&inproc_lock);
	return rc;
}

static int set(const call *k, const void *in, uint32_t in_len)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);

	if (!in && in_len)
		return WFPR_WSAEFAULT;
	if (!in || in_len == 0 || in_len > WFPR_RECORD_MAX_SIZE)
		return WFPR_WSAEINVAL;
	if (kernel_enabled())
		return kernel_set(k->fd, in, in_len); /* the BPF program refuses a connected socket itself */
	if (getpeername(k->fd, (struct sockaddr *)&peer, &len) == 0)
		return WFPR_WSAEINVAL; /* records go on before connect */
	return inproc_set_records(k->fd, in, in_len);
}

static int flush(const call *k)
{
	uint64_t cookie = k->cookie ? k->cookie : socket_cookie(k->fd);
	pthread_mutex_lock(&inproc_lock);
	store_abort_pending(k->fd, cookie);
	pthread_mutex_unlock(&inproc_lock);
	return 0;
}

static int fail(uint32_t *bytes_returned, uint32_t bytes, int err)
{
	if (bytes_returned)
		*bytes_returned = bytes;
	wfpr_set_last_error(err);
	return WFPR_SOCKET_ERROR;
}

int wfpr_ioctl(wfpr_socket_t s, uint32_t code, const void *in, uint32_t in_len, void *out,
               uint32_t out_len, uint32_t *bytes_returned, wfpr_overlapped *ov,
               wfpr_completion_routine routine)
{
	call k = {.fd = s, .ov = ov, .routine = routine};
	uint32_t bytes = 0;

	if (!bytes_returned && !ov)
		return fail(NULL, 0, WFPR_WSAEFAULT);
	if (bytes_returned)
		*bytes_returned = 0;
	if (layer_in_callback())
		return fail(bytes_returned, 0, WFPR_WSAEINPROGRESS);
	if (!known_code(code))
		return fail(bytes_returned, 0, WFPR_WSAEINVAL);
	if (!kernel_enabled() || code == WFPR_SIO_FLUSH) {
		/* (on the eBPF backend the BPF programs check the socket: one syscall less) */
		k.protocol = socket_protocol(s);
		if (k.protocol < 0)
			return fail(bytes_returned, 0, errno == ENOTSOCK ? WFPR_WSAENOTSOCK : wfpr_err_from_errno(errno));
		if (k.protocol != IPPROTO_TCP && k.protocol != IPPROTO_UDP)
			return fail(bytes_returned, 0, WFPR_WSAEOPNOTSUPP);
	}
	if (ov) {
		pthread_mutex_lock(&inproc_lock);
		sock *entry = socktab_find(s);
		if (entry && entry->overlapped)
			k.cookie = entry->cookie;
		pthread_mutex_unlock(&inproc_lock);
		if (!k.cookie) {
			k.ov = NULL; /* a non-overlapped socket ignores ov: synchronous */
			k.routine = NULL;
			if (!bytes_returned)
				return fail(NULL, 0, WFPR_WSAEFAULT);
		}
	}

	int rc;
	if (is_query(code))
		rc = query(&k, code == WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, out, out_len, &bytes);
	else if (code == WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS)
		rc = set(&k, in, in_len);
	else
		rc = flush(&k);

	if (rc == WFPR_WSA_IO_PENDING)
		return fail(bytes_returned, 0, rc);
	if (rc != 0) {
		bool sized = rc == WFPR_ERROR_INSUFFICIENT_BUFFER || (rc == WFPR_WSAEFAULT && is_query(code) && bytes);
		return fail(bytes_returned, sized ? bytes : 0, rc);
	}
	if (bytes_returned)
		*bytes_returned = bytes;
	if (k.cookie) {
		/* Done at once on an overlapped socket: completion is still signalled. */
		apc_queue *q = k.routine ? apc_queue_self() : NULL;
		overlapped_complete(k.ov, k.routine, q, 0, bytes);
		apc_queue_unref(q);
	}
	return 0;
}
