/* The IOCTL's conformance rules (docs/ioctl.md), the same on every
 * backend; the attached backend (backend.h) only finds and checks records. */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include "backend.h"
#include "layer.h"
#include "overlapped.h"
#include "sockutil.h"
#include "socktab.h"
#include "wfpr/error.h"
#include "wfpr/ioctl.h"

/* The order of the checks is the order of the rows in docs/ioctl.md. */

static int query_fill(void *out, uint32_t out_len, const uint8_t *blob, size_t len, uint32_t *bytes)
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

typedef struct call {
	const wfpr__backend *backend;
	int fd;
	int protocol;
	uint64_t cookie;   /* the socket's SO_COOKIE, once read (0: not read) */
	bool overlapped;   /* an overlapped call (cookie is read) */
	wfpr_overlapped *ov;
	wfpr_completion_routine routine;
} call;

/* QUERY: 0, an error, or WSA_IO_PENDING (overlapped, the record not there yet). */
static int query(const call *k, bool context, void *out, uint32_t out_len, uint32_t *bytes)
{
	wfpr__query q = {.fd = k->fd, .protocol = k->protocol, .context = context, .cookie = k->cookie,
	                 .overlapped = k->overlapped, .ov = k->ov, .routine = k->routine, .out = out, .out_len = out_len,
	                 .fill = query_fill};
	socklen_t len = sizeof(q.peer);

	if (out_len > 0 && out_len < sizeof(uint32_t))
		return WFPR_WSAEINVAL;
	if (!k->backend->checks_sockets && k->protocol == IPPROTO_TCP) {
		/* kept with the socket: its later QUERYs and its close need no syscall for them */
		wfpr__tuple t;
		int rc = wfpr__socktab_tuple(k->fd, k->cookie, &t);
		if (rc != 0)
			return rc;
		q.local = t.local;
		q.peer = t.peer;
	} else if (!k->backend->checks_sockets) {
		if (getpeername(k->fd, (struct sockaddr *)&q.peer, &len) < 0)
			return errno == ENOTCONN ? WFPR_WSAENOTCONN : wfpr_err_from_errno(errno);
		len = sizeof(q.local);
		if (getsockname(k->fd, (struct sockaddr *)&q.local, &len) < 0)
			return wfpr_err_from_errno(errno);
	}
	static _Thread_local uint8_t blob[WFPR__BLOB_MAX];
	size_t blob_len = 0;
	int rc = k->backend->query(&q, blob, &blob_len);
	return rc != 0 ? rc : query_fill(out, out_len, blob, blob_len, bytes);
}

static int set(const call *k, const void *in, uint32_t in_len)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);

	if (!in && in_len)
		return WFPR_WSAEFAULT;
	if (!in || in_len == 0 || in_len > WFPR_RECORD_MAX_SIZE)
		return WFPR_WSAEINVAL;
	if (!k->backend->checks_sockets && getpeername(k->fd, (struct sockaddr *)&peer, &len) == 0)
		return WFPR_WSAEINVAL; /* records go on before connect */
	return wfpr__set_records(k->fd, k->cookie, k->protocol, in, in_len);
}

static int flush(const call *k)
{
	k->backend->flush(k->fd, k->cookie ? k->cookie : wfpr__socket_cookie(k->fd));
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
	call k = {.backend = wfpr__backend_current(), .fd = s, .ov = ov, .routine = routine};
	uint32_t bytes = 0;

	if (!bytes_returned && !ov)
		return fail(NULL, 0, WFPR_WSAEFAULT);
	if (bytes_returned)
		*bytes_returned = 0;
	if (wfpr__layer_in_callback())
		return fail(bytes_returned, 0, WFPR_WSAEINPROGRESS);
	if (!known_code(code))
		return fail(bytes_returned, 0, WFPR_WSAEINVAL);
	if (!k.backend->checks_sockets || code == WFPR_SIO_FLUSH) {
		k.protocol = wfpr__socktab_protocol(s, &k.cookie);
		if (k.protocol < 0)
			return fail(bytes_returned, 0, errno == ENOTSOCK ? WFPR_WSAENOTSOCK : wfpr_err_from_errno(errno));
		if (k.protocol != IPPROTO_TCP && k.protocol != IPPROTO_UDP)
			return fail(bytes_returned, 0, WFPR_WSAEOPNOTSUPP);
	}
	if (ov) {
		pthread_mutex_lock(&wfpr__socktab_lock);
		wfpr__sock *entry = wfpr__socktab_find_as(s, k.cookie);
		if (entry && entry->overlapped) {
			k.overlapped = true;
			k.cookie = entry->cookie;
		}
		pthread_mutex_unlock(&wfpr__socktab_lock);
		if (!k.overlapped) {
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
	if (k.overlapped) {
		/* Done at once on an overlapped socket: completion is still signalled. */
		apc_queue *q = k.routine ? wfpr__apc_queue_self() : NULL;
		wfpr__overlapped_complete(k.ov, k.routine, q, 0, bytes);
		wfpr__apc_queue_unref(q);
	}
	return 0;
}
