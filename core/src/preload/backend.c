/* The preload backend, as a proxy or a library user sees it: this
 * process's sockets go through the broker (core/src/preload/client.c),
 * whose layer decides and keeps the records. */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "../backend.h"
#include "../sockutil.h"
#include "client.h"
#include "key.h"
#include "wfpr/broker.h"
#include "wfpr/error.h"
#include "wfpr/match.h"

_Static_assert(WIRE_BLOB_MAX <= WFPR__BLOB_MAX, "a broker's blob fits a QUERY's buffer");

static int preload_route(wfpr__route *r)
{
	bool redirected;
	int connect_result = 0;
	int rc = wfpr__client_route(r->fd, r->cookie, r->protocol, &r->remote, r->records, r->records_len, r->notes, r->notes_len,
	                            &r->target, &redirected,
	                      r->may_connect ? connect : NULL, &connect_result);
	if (rc == 0 && redirected && r->may_connect && r->protocol == IPPROTO_TCP) {
		r->connected = true;
		r->connect_result = connect_result;
		r->connect_errno = errno;
	}
	if (rc != 0 && rc != WFPR_WSAELOOP && rc != WFPR_WSAEACCES)
		r->errnum = ENETDOWN;
	return rc;
}

/* An overlapped QUERY's answer, once its record's push came. */
static void query_done(void *arg, int rc, const uint8_t *blob, size_t len)
{
	wfpr__answer_complete(arg, rc, blob, len);
	free(arg);
}

/* A TCP record is issued once the client has connected, and most often
 * pushed before the proxy asks. Until it comes, an overlapped QUERY of the
 * records pends (no worker waits on the broker), a non-blocking one would
 * block, and a blocking one asks the broker, which answers once it has the
 * record. */
static int preload_query(const wfpr__query *q, uint8_t *blob, size_t *len)
{
	uint64_t cookie = q->cookie ? q->cookie : wfpr__socket_cookie(q->fd);
	uint32_t flags = q->context ? WIRE_QUERY_CONTEXT : 0;
	if (q->protocol != IPPROTO_TCP || q->context) /* the context comes after the records: it is there */
		return wfpr__client_query(cookie, q->protocol, &q->local, &q->peer, flags, blob, WFPR__BLOB_MAX, len);
	wfpr__answer_to *w = q->overlapped ? malloc(sizeof(*w)) : NULL;
	if (q->overlapped && (!w || wfpr__answer_to_init(w, q) != 0)) {
		free(w);
		return WFPR_WSAENOBUFS;
	}
	int rc = wfpr__client_query_async(cookie, IPPROTO_TCP, &q->local, &q->peer, flags, blob, WFPR__BLOB_MAX, len,
	                                  w ? query_done : NULL, w);
	if (w && rc != WFPR_WSA_IO_PENDING) {
		wfpr__answer_drop(w);
		free(w);
	}
	if (rc == WFPR_WSAEWOULDBLOCK && !q->overlapped && !wfpr__socket_nonblocking(q->fd))
		rc = wfpr__client_query(cookie, IPPROTO_TCP, &q->local, &q->peer, flags, blob, WFPR__BLOB_MAX, len);
	return rc;
}

static void preload_first_datagram(int fd, const struct sockaddr_storage *from, bool want_context, uint8_t *records,
                                   size_t *records_len, uint8_t *context, size_t *context_len)
{
	uint64_t cookie = wfpr__socket_cookie(fd);
	struct sockaddr_storage local;
	wfpr__socket_local(fd, &local);
	if (wfpr__client_query(cookie, IPPROTO_UDP, &local, from, WIRE_QUERY_FIRST_DATAGRAM, records, WFPR__BLOB_MAX,
	                 records_len) == 0 && want_context)
		wfpr__client_query(cookie, IPPROTO_UDP, &local, from, WIRE_QUERY_CONTEXT, context, WFPR__BLOB_MAX, context_len);
}

static int preload_check_set(int fd, uint64_t cookie, const uint8_t *blob, size_t len)
{
	(void)fd;
	return wfpr__client_check(cookie, blob, len);
}

static void preload_flush(int fd, uint64_t cookie)
{
	(void)fd;
	wfpr__client_abort(cookie);
}

/* A proxy's closed socket lets its record go, and its QUERYs end. Only a
 * QUERY makes a socket hold a record, and the addresses it read are the
 * ones to name: at close the kernel may have forgotten the peer. */
static void preload_closed(int fd, uint64_t cookie, const wfpr__tuple *tcp)
{
	(void)fd;
	wfpr__client_abort(cookie);
	if (tcp)
		wfpr__client_release(cookie, IPPROTO_TCP, &tcp->local, &tcp->peer);
}

const wfpr__backend wfpr__backend_preload = {
	.name = "preload",
	.route = preload_route,
	.connect_done = wfpr__connect_done_nothing, /* the broker was told at ISSUE */
	.query = preload_query,
	.check_set = preload_check_set,
	.annotate = wfpr__annotate_with_route,
	.first_datagram = preload_first_datagram,
	.flush = preload_flush,
	.closed = preload_closed,
};

int wfpr_preload_attach(const char *path)
{
	if (path && !path[0])
		return WFPR_WSAEINVAL;
	if (!path) {
		wfpr__backend_detach(&wfpr__backend_preload);
		return wfpr__client_set_path(NULL);
	}
	int rc = wfpr__backend_attach(&wfpr__backend_preload);
	return rc != 0 ? rc : wfpr__client_set_path(path);
}

int wfpr_preload_set_key(const char *key)
{
	uint8_t k[WIRE_KEY_SIZE];
	if (key && !wfpr__key_parse(key, k))
		return WFPR_WSAEINVAL;
	return wfpr__client_set_key(key ? k : NULL);
}

int wfpr_preload_register(uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE], const char *name,
                          const struct sockaddr_storage *address)
{
	return wfpr_preload_register_dual(out_id, name, address, NULL);
}

int wfpr_preload_register_dual(uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE], const char *name,
                               const struct sockaddr_storage *address, const struct sockaddr_storage *address6)
{
	return wfpr_preload_register_filtered(out_id, name, address, address6, WFPR_DEFAULT_WEIGHT, NULL);
}

int wfpr_preload_register_filtered(uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE], const char *name,
                                   const struct sockaddr_storage *address, const struct sockaddr_storage *address6,
                                   uint32_t weight, const char *match)
{
	wfpr_match m;
	if (!out_id || !name || !address)
		return WFPR_WSAEFAULT;
	if ((address6 && address6->ss_family != AF_INET6) || (match && wfpr_match_parse(&m, match, NULL, 0) != 0))
		return WFPR_WSAEINVAL;
	if (!wfpr__client_enabled())
		return WFPR_WSAENETDOWN;
	/* this library QUERYs through the client, which takes the pushes */
	return wfpr__client_register(name, address, address6, weight, match, WIRE_REGISTER_PUSH, out_id);
}

int wfpr_preload_redirector_name(char *out, size_t len, const uint8_t id[WFPR_REDIRECTOR_ID_SIZE])
{
	if (!out || !id || len == 0)
		return WFPR_WSAEFAULT;
	if (!wfpr__client_enabled())
		return WFPR_WSAENETDOWN;
	return wfpr__client_name(id, out, len);
}
