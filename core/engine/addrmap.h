/* A map from a peer's address (IPv4 or IPv6, with its port) to a pointer:
 * how the engine finds a datagram's UDP flow in constant time, however
 * many flows it has. Keyed with a secret seed per map, so that a sender
 * who picks its addresses and ports cannot make every flow land in one
 * bucket. Not thread-safe: one engine's loop uses it. */
#ifndef WFPR_ENGINE_ADDRMAP_H
#define WFPR_ENGINE_ADDRMAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct wfpr__addrmap_node wfpr__addrmap_node;

typedef struct wfpr__addrmap {
	wfpr__addrmap_node **buckets;
	size_t n_buckets, count;
	uint64_t seed;
} wfpr__addrmap;

/* 0, or -1 (no memory). */
int wfpr__addrmap_init(wfpr__addrmap *m);
void wfpr__addrmap_free(wfpr__addrmap *m);
/* The value at a, or NULL. */
void *wfpr__addrmap_get(const wfpr__addrmap *m, const struct sockaddr_storage *a);
/* Put value at a (a must have none): 0, or -1 (no memory; the map is as it was). */
int wfpr__addrmap_put(wfpr__addrmap *m, const struct sockaddr_storage *a, void *value);
/* Take a out, if it is there. */
void wfpr__addrmap_remove(wfpr__addrmap *m, const struct sockaddr_storage *a);

#endif
