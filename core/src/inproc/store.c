#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../addr.h"
#include "inproc.h"
#include "wfpr/error.h"

#define STORE_BUCKETS 4096
/* A record nobody has queried outlives its closed client this long, so a
 * proxy that accepts late still finds it. */
#define UNQUERIED_GRACE_S 60

pthread_mutex_t wfpr__inproc_lock = PTHREAD_MUTEX_INITIALIZER;
wfpr_layer *wfpr__inproc_layer;

static pthread_cond_t committed_cond = PTHREAD_COND_INITIALIZER;
static conn *by_tuple[STORE_BUCKETS];
static conn *by_token[STORE_BUCKETS];
static pending_op *pending;
static size_t n_conns, sweep_at = 256;

static int64_t now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

static conn **tuple_slot(int protocol, uint16_t client_port, uint16_t target_port)
{
	uint32_t h = ((uint32_t)client_port * 2654435761u) ^ ((uint32_t)target_port << 7) ^ (uint32_t)protocol;
	return &by_tuple[h % STORE_BUCKETS];
}

static conn **token_slot(const uint8_t token[WFPR_TOKEN_SIZE])
{
	uint32_t h;
	memcpy(&h, token, sizeof(h));
	return &by_token[h % STORE_BUCKETS];
}

static bool socket_alive(int fd, uint64_t cookie)
{
	return fd >= 0 && wfpr__socket_cookie(fd) == cookie;
}

static bool conn_alive(const conn *c)
{
	if (socket_alive(c->client_fd, c->client_cookie))
		return true;
	if (c->queried)
		return socket_alive(c->query_fd, c->query_cookie);
	return c->protocol == IPPROTO_TCP && c->committed && now_s() - c->created < UNQUERIED_GRACE_S;
}

/* Complete (and free) every operation waiting on c. */
static void finish_waiters(conn *c)
{
	for (pending_op **p = &pending; *p;) {
		pending_op *op = *p;
		if (op->conn != c) {
			p = &op->next;
			continue;
		}
		*p = op->next;
		uint32_t bytes = 0;
		int err = WFPR_FWP_E_NOT_FOUND;
		if (c->committed)
			err = op->context ? op->fill(op->out, op->out_len, c->context, c->context_len, &bytes)
			                  : op->fill(op->out, op->out_len, c->record, c->record_len, &bytes);
		wfpr__overlapped_complete(op->ov, op->routine, op->queue, err, bytes);
		wfpr__apc_queue_unref(op->queue);
		free(op);
	}
}

static void unlink_from(conn **slot, conn *c, bool token_chain)
{
	for (conn **p = slot; *p; p = token_chain ? &(*p)->next_token : &(*p)->next_tuple) {
		if (*p == c) {
			*p = token_chain ? c->next_token : c->next_tuple;
			return;
		}
	}
}

static void conn_remove(conn *c)
{
	unlink_from(tuple_slot(c->protocol, addr_port(&c->client), addr_port(&c->target)), c, false);
	unlink_from(token_slot(c->token), c, true);
	finish_waiters(c);
	free(c->record);
	free(c->context);
	free(c);
	n_conns--;
	pthread_cond_broadcast(&committed_cond);
}

static void sweep(void)
{
	for (size_t i = 0; i < STORE_BUCKETS; i++) {
		for (conn *c = by_tuple[i], *next; c; c = next) {
			next = c->next_tuple;
			if (c->committed && !conn_alive(c))
				conn_remove(c);
		}
	}
	sweep_at = n_conns * 2 > 256 ? n_conns * 2 : 256;
}

conn *wfpr__store_reserve(int protocol, const struct sockaddr_storage *client, const struct sockaddr_storage *target,
                    int client_fd, uint8_t *record, size_t record_len, uint8_t *context, size_t context_len,
                    const uint8_t token[WFPR_TOKEN_SIZE])
{
	conn *c = calloc(1, sizeof(*c));
	if (!c) {
		free(record);
		free(context);
		return NULL;
	}
	c->protocol = protocol;
	c->client = *client;
	c->target = *target;
	c->client_fd = client_fd;
	c->client_cookie = wfpr__socket_cookie(client_fd);
	c->query_fd = -1;
	c->record = record;
	c->record_len = record_len;
	c->context = context;
	c->context_len = context_len;
	memcpy(c->token, token, WFPR_TOKEN_SIZE);
	c->created = now_s();

	if (n_conns >= sweep_at)
		sweep();
	conn **slot = tuple_slot(protocol, addr_port(client), addr_port(target));
	c->next_tuple = *slot;
	*slot = c;
	slot = token_slot(token);
	c->next_token = *slot;
	*slot = c;
	n_conns++;
	return c;
}

void wfpr__store_commit(conn *c)
{
	c->committed = true;
	finish_waiters(c);
	pthread_cond_broadcast(&committed_cond);
}

void wfpr__store_abandon(conn *c)
{
	conn_remove(c);
}

conn *wfpr__store_find(int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer)
{
	uint16_t client_port = addr_port(peer), target_port = addr_port(local);
	for (conn *c = *tuple_slot(protocol, client_port, target_port); c; c = c->next_tuple) {
		if (c->protocol == protocol && addr_port(&c->client) == client_port &&
		    addr_port(&c->target) == target_port && addr_ip_matches(&c->client, peer) &&
		    addr_ip_matches(&c->target, local))
			return c;
	}
	return NULL;
}

conn *wfpr__store_find_issued(const uint8_t *blob, size_t len, const uint8_t token[WFPR_TOKEN_SIZE])
{
	for (conn *c = *token_slot(token); c; c = c->next_token) {
		if (memcmp(c->token, token, WFPR_TOKEN_SIZE) == 0)
			return c->record_len == len && memcmp(c->record, blob, len) == 0 && conn_alive(c) ? c : NULL;
	}
	return NULL;
}

void wfpr__store_add_pending(conn *c, pending_op *op)
{
	op->conn = c;
	op->next = pending;
	pending = op;
}

void wfpr__store_abort_pending(int fd, uint64_t cookie)
{
	for (pending_op **p = &pending; *p;) {
		pending_op *op = *p;
		if (op->fd != fd || op->cookie != cookie) {
			p = &op->next;
			continue;
		}
		*p = op->next;
		wfpr__overlapped_complete(op->ov, op->routine, op->queue, WFPR_WSA_OPERATION_ABORTED, 0);
		wfpr__apc_queue_unref(op->queue);
		free(op);
	}
}

void wfpr__store_socket_closed(int fd)
{
	if (n_conns == 0)
		return; /* nothing to scan (the preload and eBPF backends keep no records here) */
	for (size_t i = 0; i < STORE_BUCKETS; i++) {
		for (conn *c = by_tuple[i], *next; c; c = next) {
			next = c->next_tuple;
			if (c->query_fd == fd)
				c->query_fd = -1;
			if (c->client_fd == fd) {
				c->client_fd = -1;
				if (!c->committed)
					conn_remove(c);
			}
		}
	}
}

bool wfpr__store_wait_committed(int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer)
{
	conn *c;
	while ((c = wfpr__store_find(protocol, local, peer)) && !c->committed)
		pthread_cond_wait(&committed_cond, &wfpr__inproc_lock);
	return c != NULL;
}
