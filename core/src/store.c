/* The record store (store.h): two hash indexes over one set of entries,
 * a sweep of dead entries as the set grows, and the waiting operations. */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include "addr.h"
#include "sockutil.h"
#include "store.h"

#define BUCKETS 4096
#define SWEEP_FLOOR 1024

struct wfpr__store {
	wfpr__entry *by_tuple[BUCKETS], *by_token[BUCKETS];
	size_t n, sweep_at, max;
	wfpr__entry_alive_fn alive;
	wfpr__waiter *waiters;
	void (*on_remove)(void *user, const wfpr__entry *e);
	void *on_remove_user;
};

wfpr__store *wfpr__store_new(size_t max_entries, wfpr__entry_alive_fn alive)
{
	wfpr__store *s = calloc(1, sizeof(*s));
	if (s) {
		s->max = max_entries;
		s->alive = alive;
		s->sweep_at = SWEEP_FLOOR;
	}
	return s;
}

void wfpr__store_on_remove(wfpr__store *s, void (*fn)(void *user, const wfpr__entry *e), void *user)
{
	s->on_remove = fn;
	s->on_remove_user = user;
}

static wfpr__entry **tuple_slot(wfpr__store *s, int protocol, uint16_t client_port, uint16_t target_port)
{
	uint32_t h = ((uint32_t)client_port * 2654435761u) ^ ((uint32_t)target_port << 7) ^ (uint32_t)protocol;
	return &s->by_tuple[h % BUCKETS];
}

static wfpr__entry **token_slot(wfpr__store *s, const uint8_t token[WFPR_TOKEN_SIZE])
{
	uint32_t h;
	memcpy(&h, token, sizeof(h));
	return &s->by_token[h % BUCKETS];
}

/* Complete (and forget) every waiter of e, with e when it is committed. */
static void wake(wfpr__store *s, const wfpr__entry *e, bool gone)
{
	for (wfpr__waiter **p = &s->waiters; *p;) {
		wfpr__waiter *w = *p;
		if (w->entry != e) {
			p = &w->next;
			continue;
		}
		*p = w->next;
		w->complete(w, gone ? NULL : e, false);
	}
}

void wfpr__store_remove(wfpr__store *s, wfpr__entry *e)
{
	for (wfpr__entry **p = tuple_slot(s, e->protocol, addr_port(&e->client), addr_port(&e->target)); *p;
	     p = &(*p)->next_tuple)
		if (*p == e) {
			*p = e->next_tuple;
			break;
		}
	for (wfpr__entry **p = token_slot(s, e->token); *p; p = &(*p)->next_token)
		if (*p == e) {
			*p = e->next_token;
			break;
		}
	wake(s, e, true);
	if (s->on_remove)
		s->on_remove(s->on_remove_user, e);
	free(e->record);
	free(e->context);
	free(e);
	__atomic_sub_fetch(&s->n, 1, __ATOMIC_RELAXED); /* wfpr__store_count may read it from another thread */
}

void wfpr__store_free(wfpr__store *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < BUCKETS; i++)
		while (s->by_tuple[i])
			wfpr__store_remove(s, s->by_tuple[i]);
	free(s);
}

void wfpr__store_drop_if(wfpr__store *s, bool (*drop)(wfpr__entry *e, uint64_t arg), uint64_t arg)
{
	for (size_t i = 0; i < BUCKETS; i++)
		for (wfpr__entry *e = s->by_tuple[i], *next; e; e = next) {
			next = e->next_tuple;
			if (drop(e, arg))
				wfpr__store_remove(s, e);
		}
}

bool wfpr__store_alive(const wfpr__store *s, const wfpr__entry *e)
{
	return s->alive(e, wfpr__now_ns());
}

/* Remove the committed entries that are no longer alive. */
static void sweep(wfpr__store *s)
{
	int64_t now = wfpr__now_ns();
	for (size_t i = 0; i < BUCKETS; i++)
		for (wfpr__entry *e = s->by_tuple[i], *next; e; e = next) {
			next = e->next_tuple;
			if (e->committed && !s->alive(e, now))
				wfpr__store_remove(s, e);
		}
	s->sweep_at = s->n * 2 > SWEEP_FLOOR ? s->n * 2 : SWEEP_FLOOR;
}

static wfpr__entry *find_tuple(wfpr__store *s, int protocol, const struct sockaddr_storage *client,
                               const struct sockaddr_storage *target)
{
	uint16_t client_port = addr_port(client), target_port = addr_port(target);
	for (wfpr__entry *e = *tuple_slot(s, protocol, client_port, target_port); e; e = e->next_tuple)
		if (e->protocol == protocol && addr_port(&e->client) == client_port && addr_port(&e->target) == target_port &&
		    addr_ip_matches(&e->client, client) && addr_ip_matches(&e->target, target))
			return e;
	return NULL;
}

wfpr__entry *wfpr__store_add(wfpr__store *s, int protocol, const struct sockaddr_storage *client,
                             const struct sockaddr_storage *target, uint8_t *record, size_t record_len,
                             uint8_t *context, size_t context_len, const uint8_t token[WFPR_TOKEN_SIZE],
                             bool committed)
{
	if (s->n >= s->sweep_at)
		sweep(s);
	wfpr__entry *e = !s->max || s->n < s->max ? calloc(1, sizeof(*e)) : NULL;
	if (!e) {
		free(record);
		free(context);
		return NULL;
	}
	wfpr__entry *old = find_tuple(s, protocol, client, target);
	if (old)
		wfpr__store_remove(s, old);
	int64_t now = wfpr__now_ns();
	*e = (wfpr__entry){.protocol = protocol, .client = *client, .target = *target, .record = record,
	                   .record_len = record_len, .context = context, .context_len = context_len,
	                   .created_ns = now, .used_ns = now, .committed = committed, .issuer_fd = -1};
	memcpy(e->token, token, WFPR_TOKEN_SIZE);
	wfpr__entry **slot = tuple_slot(s, protocol, addr_port(client), addr_port(target));
	e->next_tuple = *slot;
	*slot = e;
	slot = token_slot(s, token);
	e->next_token = *slot;
	*slot = e;
	__atomic_add_fetch(&s->n, 1, __ATOMIC_RELAXED);
	return e;
}

void wfpr__store_commit(wfpr__store *s, wfpr__entry *e)
{
	e->committed = true;
	wake(s, e, false);
}

wfpr__entry *wfpr__store_find(wfpr__store *s, int protocol, const struct sockaddr_storage *local,
                              const struct sockaddr_storage *peer, uint64_t socket)
{
	wfpr__entry *e = find_tuple(s, protocol, peer, local);
	if (e && socket && e->holder_socket && e->holder_socket != socket && protocol == IPPROTO_TCP) {
		wfpr__store_remove(s, e); /* an earlier connection's, on a tuple the kernel reused */
		return NULL;
	}
	return e;
}

wfpr__entry *wfpr__store_find_issued(wfpr__store *s, const uint8_t *blob, size_t len,
                                     const uint8_t token[WFPR_TOKEN_SIZE])
{
	for (wfpr__entry *e = *token_slot(s, token); e; e = e->next_token)
		if (memcmp(e->token, token, WFPR_TOKEN_SIZE) == 0)
			return e->record_len == len && memcmp(e->record, blob, len) == 0 && wfpr__store_alive(s, e) ? e : NULL;
	return NULL;
}

size_t wfpr__store_count(const wfpr__store *s)
{
	return __atomic_load_n(&s->n, __ATOMIC_RELAXED);
}

void wfpr__store_wait(wfpr__store *s, wfpr__waiter *w, const wfpr__entry *e)
{
	w->entry = e;
	w->next = s->waiters;
	s->waiters = w;
}

void wfpr__store_abort(wfpr__store *s, int fd, uint64_t cookie)
{
	for (wfpr__waiter **p = &s->waiters; *p;) {
		wfpr__waiter *w = *p;
		if (w->fd != fd || w->cookie != cookie) {
			p = &w->next;
			continue;
		}
		*p = w->next;
		w->complete(w, NULL, true);
	}
}
