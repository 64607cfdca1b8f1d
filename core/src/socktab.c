#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include "sockutil.h"
#include "socktab.h"

#define SOCKTAB_BUCKETS 1024

pthread_mutex_t wfpr__socktab_lock = PTHREAD_MUTEX_INITIALIZER;
static wfpr__sock *buckets[SOCKTAB_BUCKETS];

static void sock_free(wfpr__sock *s)
{
	for (wfpr__flow *f = s->flows, *next; f; f = next) {
		next = f->next;
		free(f);
	}
	free(s->records);
	free(s);
}

static wfpr__sock **slot_of(int fd)
{
	return &buckets[(unsigned int)fd % SOCKTAB_BUCKETS];
}

wfpr__sock *wfpr__socktab_find_as(int fd, uint64_t cookie)
{
	for (wfpr__sock **p = slot_of(fd); *p; p = &(*p)->next) {
		wfpr__sock *s = *p;
		if (s->fd != fd)
			continue;
		/* a descriptor number reused by a later socket is not the same socket */
		if (s->cookie == (cookie ? cookie : wfpr__socket_cookie(fd)))
			return s;
		*p = s->next;
		sock_free(s);
		return NULL;
	}
	return NULL;
}

wfpr__sock *wfpr__socktab_find(int fd)
{
	return wfpr__socktab_find_as(fd, 0);
}

wfpr__sock *wfpr__socktab_get_as(int fd, uint64_t cookie)
{
	wfpr__sock *s = wfpr__socktab_find_as(fd, cookie);
	if (s)
		return s;
	if (!cookie)
		cookie = wfpr__socket_cookie(fd);
	if (cookie == 0 || !(s = calloc(1, sizeof(*s))))
		return NULL;
	s->fd = fd;
	s->cookie = cookie;
	s->next = *slot_of(fd);
	*slot_of(fd) = s;
	return s;
}

wfpr__sock *wfpr__socktab_get(int fd)
{
	return wfpr__socktab_get_as(fd, 0);
}

void wfpr__socktab_remove(int fd)
{
	for (wfpr__sock **p = slot_of(fd); *p; p = &(*p)->next) {
		if ((*p)->fd == fd) {
			wfpr__sock *s = *p;
			*p = s->next;
			sock_free(s);
			return;
		}
	}
}
