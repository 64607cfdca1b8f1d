/* Which backend this process's sockets go through: one atomic pointer,
 * set at attach time. */
#include "backend.h"
#include "wfpr/error.h"

int wfpr__route_direct(wfpr__route *r)
{
	r->target = r->remote;
	return 0;
}

void wfpr__connect_done_nothing(void *pending, bool connected)
{
	(void)pending, (void)connected;
}

static int none_query(const wfpr__query *q, uint8_t *blob, size_t *len)
{
	(void)q, (void)blob, (void)len;
	return WFPR_WSAENETDOWN;
}

static int none_check_set(int fd, uint64_t cookie, const uint8_t *blob, size_t len)
{
	(void)fd, (void)cookie, (void)blob, (void)len;
	return WFPR_WSAENETDOWN;
}

static void none_first_datagram(int fd, const struct sockaddr_storage *from, bool want_context, uint8_t *records,
                                size_t *records_len, uint8_t *context, size_t *context_len)
{
	(void)fd, (void)from, (void)want_context, (void)records, (void)records_len, (void)context,
		(void)context_len;
}

int wfpr__annotate_with_route(int fd, const uint8_t *notes, size_t len)
{
	(void)fd, (void)notes, (void)len;
	return 0;
}

int wfpr__answer_to_init(wfpr__answer_to *a, const wfpr__query *q)
{
	*a = (wfpr__answer_to){.out = q->out, .out_len = q->out_len, .fill = q->fill, .ov = q->ov,
	                       .routine = q->routine, .queue = q->routine ? wfpr__apc_queue_self() : NULL};
	if (q->routine && !a->queue)
		return WFPR_WSAENOBUFS;
	q->ov->status = (uint32_t)WFPR_WSA_IO_PENDING;
	q->ov->bytes = 0;
	return 0;
}

void wfpr__answer_complete(wfpr__answer_to *a, int err, const uint8_t *blob, size_t len)
{
	uint32_t bytes = 0;
	if (err == 0)
		err = a->fill(a->out, a->out_len, blob, len, &bytes);
	wfpr__overlapped_complete(a->ov, a->routine, a->queue, err, bytes);
	wfpr__apc_queue_unref(a->queue);
}

void wfpr__answer_drop(wfpr__answer_to *a)
{
	a->ov->status = 0; /* ioctl.c completes it, or fails the call */
	wfpr__apc_queue_unref(a->queue);
}

void wfpr__socket_nothing(int fd, uint64_t cookie)
{
	(void)fd, (void)cookie;
}

void wfpr__closed_nothing(int fd, uint64_t cookie, const wfpr__tuple *tcp)
{
	(void)fd, (void)cookie, (void)tcp;
}

const wfpr__backend wfpr__backend_none = {
	.name = "none",
	.route = wfpr__route_direct, /* nothing classifies */
	.connect_done = wfpr__connect_done_nothing,
	.query = none_query,
	.check_set = none_check_set,
	.first_datagram = none_first_datagram,
	.annotate = wfpr__annotate_with_route,
	.flush = wfpr__socket_nothing,
	.closed = wfpr__closed_nothing,
};

static const wfpr__backend *current = &wfpr__backend_none;

const wfpr__backend *wfpr__backend_current(void)
{
	return __atomic_load_n(&current, __ATOMIC_ACQUIRE);
}

int wfpr__backend_attach(const wfpr__backend *b)
{
	const wfpr__backend *expected = &wfpr__backend_none;
	if (__atomic_compare_exchange_n(&current, &expected, b, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return 0;
	return expected == b ? 0 : WFPR_WSAEADDRINUSE;
}

void wfpr__backend_detach(const wfpr__backend *b)
{
	const wfpr__backend *expected = b;
	__atomic_compare_exchange_n(&current, &expected, &wfpr__backend_none, false, __ATOMIC_ACQ_REL,
	                            __ATOMIC_ACQUIRE);
}
