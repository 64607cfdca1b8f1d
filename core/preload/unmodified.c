/* The shim in an unmodified transparent proxy (unmodified.h). */
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../src/addr.h"
#include "../src/preload/client.h"
#include "../src/preload/key.h"
#include "../src/sockutil.h"
#include "unmodified.h"
#include "wfpr/error.h"

#define CARRY_DEPTH 64                      /* accepted connections waiting for their proxy's connect */
#define CARRY_TTL_NS (10 * 1000000000LL)     /* as the eBPF backend's */
#define ACCEPTED_MAX 65536                  /* accepted sockets whose records the broker keeps (by fd) */

static struct {
	bool on;
	char name[WIRE_NAME_MAX];
	struct sockaddr_storage listen;
	uint32_t weight;
	const char *match;
	bool registered;
} me;

/* A connection the proxy accepted, until its connect carries the record. */
typedef struct pending {
	uint64_t cookie;
	int64_t at_ns; /* 0: free */
	struct sockaddr_storage original;
	size_t len;
	uint8_t records[WIRE_BLOB_MAX];
} pending;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pending carry[CARRY_DEPTH];
/* by fd: an accepted socket holding a record, and its addresses (at close
 * the kernel may have forgotten the peer), or NULL */
typedef struct held {
	uint64_t cookie;
	struct sockaddr_storage local, peer;
} held;
static held *accepted[ACCEPTED_MAX];

bool wfpr__unmodified_init(void)
{
	const char *name = getenv("WFPR_REDIRECTOR"), *listen = getenv("WFPR_REDIRECTOR_LISTEN");
	const char *weight = getenv("WFPR_REDIRECTOR_WEIGHT"), *key_file = getenv("WFPR_KEY_FILE");
	if (!name || !*name || strlen(name) >= sizeof(me.name))
		return false;
	if (wfpr__parse_address(listen, &me.listen) != 0 || addr_port(&me.listen) == 0) {
		fprintf(stderr, "wfpr: WFPR_REDIRECTOR_LISTEN=%s is not ADDR:PORT: %s is not registered\n",
		        listen ? listen : "", name);
		return false;
	}
	strcpy(me.name, name);
	me.weight = weight && *weight ? (uint32_t)strtoul(weight, NULL, 10) : 100;
	me.match = getenv("WFPR_REDIRECTOR_MATCH");
	uint8_t key[WIRE_KEY_SIZE];
	if (key_file && *key_file) {
		if (wfpr__key_read_file(key_file, key) != 0) {
			fprintf(stderr, "wfpr: cannot read the broker's key from %s: %s is not registered\n", key_file, name);
			return false;
		}
		wfpr__client_set_key(key);
	}
	me.on = true;
	return true;
}

void wfpr__unmodified_listened(int fd)
{
	struct sockaddr_storage local;
	if (!me.on || me.registered || wfpr__socket_local(fd, &local) == 0 || !addr_listens_on(&local, &me.listen))
		return;
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	int rc = wfpr__client_register(me.name, &me.listen, NULL, me.weight, me.match, WIRE_REGISTER_UNMODIFIED, id);
	if (rc != 0) {
		fprintf(stderr, "wfpr: the broker refused to register %s at %s: %s (%s)\n", me.name,
		        getenv("WFPR_REDIRECTOR_LISTEN"), wfpr_strerror(rc), wfpr_err_name(rc));
		return;
	}
	me.registered = true;
	fprintf(stderr, "wfpr: %s registered with the broker at %s: SO_ORIGINAL_DST answers, and records are carried\n",
	        me.name, getenv("WFPR_REDIRECTOR_LISTEN"));
}

static bool is_listener(int fd)
{
	struct sockaddr_storage local;
	return me.registered && wfpr__socket_local(fd, &local) != 0 && addr_listens_on(&local, &me.listen);
}

/* The record (or context) of accepted socket h, from the broker. */
static int query(const held *h, uint32_t flags, uint8_t *out, size_t cap, size_t *len)
{
	return wfpr__client_query(h->cookie, IPPROTO_TCP, &h->local, &h->peer, flags, out, cap, len);
}

/* Accepted socket fd as kept at its accept, else as the kernel tells: false
 * when it is not connected. */
static bool held_of(int fd, held *h)
{
	h->cookie = wfpr__socket_cookie(fd);
	pthread_mutex_lock(&lock);
	bool kept = fd >= 0 && fd < ACCEPTED_MAX && accepted[fd] && accepted[fd]->cookie == h->cookie;
	if (kept)
		*h = *accepted[fd];
	pthread_mutex_unlock(&lock);
	socklen_t pl = sizeof(h->peer);
	return kept || (wfpr__socket_local(fd, &h->local) != 0 && getpeername(fd, (struct sockaddr *)&h->peer, &pl) == 0);
}

void wfpr__unmodified_accepted(int listener, int fd)
{
	held h;
	if (!me.registered || fd < 0 || !is_listener(listener) || !held_of(fd, &h))
		return;
	pending p = {.cookie = h.cookie, .at_ns = wfpr__now_ns()};
	uint8_t context[WIRE_BLOB_MAX];
	size_t context_len = 0;
	held *kept = fd < ACCEPTED_MAX ? malloc(sizeof(*kept)) : NULL;
	if (query(&h, 0, p.records, sizeof(p.records), &p.len) != 0 ||
	    query(&h, WIRE_QUERY_CONTEXT, context, sizeof(context), &context_len) != 0 ||
	    context_len < sizeof(struct sockaddr_storage)) {
		free(kept);
		return; /* no record: a connection nobody redirected */
	}
	if (kept)
		*kept = h; /* else the broker forgets it when this proxy goes */
	memcpy(&p.original, context, sizeof(p.original));
	addr_unmap(&p.original);
	pthread_mutex_lock(&lock);
	if (kept) {
		free(accepted[fd]);
		accepted[fd] = kept;
	}
	size_t at = 0; /* a free place, else the oldest */
	for (size_t i = 1; i < CARRY_DEPTH; i++)
		if (carry[at].at_ns && (!carry[i].at_ns || carry[i].at_ns < carry[at].at_ns))
			at = i;
	carry[at] = p;
	pthread_mutex_unlock(&lock);
}

int wfpr__unmodified_original_dst(int fd, int level, void *out, socklen_t *len)
{
	if (!me.registered || !out || !len || wfpr__socket_protocol(fd) != IPPROTO_TCP)
		return -1;
	uint8_t context[WIRE_BLOB_MAX];
	size_t context_len = 0;
	held h;
	if (!held_of(fd, &h) || query(&h, WIRE_QUERY_CONTEXT, context, sizeof(context), &context_len) != 0 ||
	    context_len < sizeof(struct sockaddr_storage))
		return -1;
	struct sockaddr_storage original;
	memcpy(&original, context, sizeof(original));
	addr_unmap(&original);
	socklen_t need = addr_len(&original);
	if ((level == IPPROTO_IP) != (original.ss_family == AF_INET) || *len < need)
		return -1;
	memcpy(out, &original, need);
	*len = need;
	return 0;
}

size_t wfpr__unmodified_carry(int fd, const struct sockaddr_storage *dest, uint8_t *out, size_t cap)
{
	if (!me.registered)
		return 0;
	(void)fd;
	struct sockaddr_storage d = *dest;
	addr_unmap(&d);
	int64_t now = wfpr__now_ns();
	size_t len = 0;
	pthread_mutex_lock(&lock);
	pending *best = NULL;
	for (size_t i = 0; i < CARRY_DEPTH; i++) {
		pending *p = &carry[i];
		if (p->at_ns && now - p->at_ns >= CARRY_TTL_NS)
			p->at_ns = 0; /* waited too long: its proxy connects elsewhere, or not at all */
		if (p->at_ns && addr_equal(&p->original, &d) && (!best || p->at_ns < best->at_ns))
			best = p;
	}
	if (best && best->len <= cap) {
		memcpy(out, best->records, best->len);
		len = best->len;
		best->at_ns = 0; /* carried once */
	}
	pthread_mutex_unlock(&lock);
	return len;
}

void wfpr__unmodified_closing(int fd)
{
	if (!me.registered || fd < 0 || fd >= ACCEPTED_MAX)
		return;
	pthread_mutex_lock(&lock);
	held *h = accepted[fd];
	accepted[fd] = NULL;
	pthread_mutex_unlock(&lock);
	if (h && h->cookie == wfpr__socket_cookie(fd))
		wfpr__client_release(h->cookie, IPPROTO_TCP, &h->local, &h->peer); /* the broker may forget it */
	free(h);
}
