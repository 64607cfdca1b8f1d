#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include "inproc.h"

#define SOCKTAB_BUCKETS 1024

static sock *buckets[SOCKTAB_BUCKETS];

static void sock_free(sock *s)
{
	for (flow *f = s->flows, *next; f; f = next) {
		next = f->next;
		free(f);
	}
	free(s->records);
	free(s);
}

static sock **slot_of(int fd)
{
	return &buckets[(unsigned int)fd % SOCKTAB_BUCKETS];
}

sock *socktab_find(int fd)
{
	for (sock **p = slot_of(fd); *p; p = &(*p)->next) {
		sock *s = *p;
		if (s->fd != fd)
			continue;
		/* a descriptor number reused by a later socket is not the same socket */
		if (s->cookie == socket_cookie(fd))
			return s;
		*p = s->next;
		sock_free(s);
		return NULL;
	}
	return NULL;
}

sock *socktab_get(int fd)
{
	sock *s = socktab_find(fd);
	if (s)
		return s;
	uint64_t cookie = socket_cookie(fd);
	if (cookie == 0 || !(s = calloc(1, sizeof(*s))))
		return NULL;
	s->fd = fd;
	s->cookie = cookie;
	s->next = *slot_of(fd);
	*slot_of(fd) = s;
	return s;
}

void socktab_remove(int fd)
{
	for (sock **p = slot_of(fd); *p; p = &(*p)->next) {
		if ((*p)->fd == fd) {
			sock *s = *p;
			*p = s->next;
			sock_free(s);
			return;
		}
	}
}
