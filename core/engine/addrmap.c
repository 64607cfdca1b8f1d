/* The engine's address map (addrmap.h): chained buckets, doubled when
 * they hold two entries each on average. */
#include "addrmap.h"
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define FIRST_BUCKETS 64

struct wfpr__addrmap_node {
	wfpr__addrmap_node *next;
	uint64_t hash;
	struct sockaddr_in6 key; /* an IPv4 address as a sockaddr_in, the rest zero */
	void *value;
};

/* The bytes of a that name it: family, port and address. */
static void key_of(const struct sockaddr_storage *a, struct sockaddr_in6 *key)
{
	memset(key, 0, sizeof(*key));
	key->sin6_family = a->ss_family;
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *six = (const struct sockaddr_in6 *)a;
		key->sin6_port = six->sin6_port;
		key->sin6_addr = six->sin6_addr;
		key->sin6_scope_id = six->sin6_scope_id;
	} else {
		const struct sockaddr_in *four = (const struct sockaddr_in *)a;
		struct sockaddr_in *k = (struct sockaddr_in *)key;
		k->sin_port = four->sin_port;
		k->sin_addr = four->sin_addr;
	}
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

static uint64_t hash_of(const wfpr__addrmap *m, const struct sockaddr_in6 *key)
{
	const uint8_t *p = (const uint8_t *)key;
	uint64_t h = m->seed;
	for (size_t i = 0; i < sizeof(*key); i += 8) {
		uint64_t w = 0;
		memcpy(&w, p + i, sizeof(*key) - i < 8 ? sizeof(*key) - i : 8);
		h = mix(h ^ w) + i;
	}
	return h;
}

int wfpr__addrmap_init(wfpr__addrmap *m)
{
	memset(m, 0, sizeof(*m));
	if (getrandom(&m->seed, sizeof(m->seed), GRND_NONBLOCK) != (ssize_t)sizeof(m->seed)) {
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		m->seed = mix((uint64_t)t.tv_nsec ^ ((uint64_t)t.tv_sec << 32) ^ (uint64_t)(uintptr_t)m);
	}
	m->buckets = calloc(FIRST_BUCKETS, sizeof(*m->buckets));
	m->n_buckets = FIRST_BUCKETS;
	return m->buckets ? 0 : -1;
}

void wfpr__addrmap_free(wfpr__addrmap *m)
{
	for (size_t i = 0; m->buckets && i < m->n_buckets; i++)
		for (wfpr__addrmap_node *n = m->buckets[i], *next; n; n = next) {
			next = n->next;
			free(n);
		}
	free(m->buckets);
	memset(m, 0, sizeof(*m));
}

void *wfpr__addrmap_get(const wfpr__addrmap *m, const struct sockaddr_storage *a)
{
	struct sockaddr_in6 key;
	key_of(a, &key);
	uint64_t h = hash_of(m, &key);
	for (wfpr__addrmap_node *n = m->buckets[h & (m->n_buckets - 1)]; n; n = n->next)
		if (n->hash == h && memcmp(&n->key, &key, sizeof(key)) == 0)
			return n->value;
	return NULL;
}

/* Twice the buckets; a map that cannot grow keeps working, with longer chains. */
static void grow(wfpr__addrmap *m)
{
	size_t n_buckets = m->n_buckets * 2;
	wfpr__addrmap_node **buckets = calloc(n_buckets, sizeof(*buckets));
	if (!buckets)
		return;
	for (size_t i = 0; i < m->n_buckets; i++)
		for (wfpr__addrmap_node *n = m->buckets[i], *next; n; n = next) {
			next = n->next;
			n->next = buckets[n->hash & (n_buckets - 1)];
			buckets[n->hash & (n_buckets - 1)] = n;
		}
	free(m->buckets);
	m->buckets = buckets;
	m->n_buckets = n_buckets;
}

int wfpr__addrmap_put(wfpr__addrmap *m, const struct sockaddr_storage *a, void *value)
{
	wfpr__addrmap_node *n = malloc(sizeof(*n));
	if (!n)
		return -1;
	key_of(a, &n->key);
	n->hash = hash_of(m, &n->key);
	n->value = value;
	wfpr__addrmap_node **b = &m->buckets[n->hash & (m->n_buckets - 1)];
	n->next = *b;
	*b = n;
	if (++m->count > 2 * m->n_buckets)
		grow(m);
	return 0;
}

void wfpr__addrmap_remove(wfpr__addrmap *m, const struct sockaddr_storage *a)
{
	struct sockaddr_in6 key;
	key_of(a, &key);
	uint64_t h = hash_of(m, &key);
	for (wfpr__addrmap_node **p = &m->buckets[h & (m->n_buckets - 1)]; *p; p = &(*p)->next) {
		wfpr__addrmap_node *n = *p;
		if (n->hash == h && memcmp(&n->key, &key, sizeof(key)) == 0) {
			*p = n->next;
			free(n);
			m->count--;
			return;
		}
	}
}
