#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include "sockutil.h"
#include "socktab.h"
#include "wfpr/error.h"

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

int wfpr__socktab_protocol(int fd, uint64_t *cookie)
{
	*cookie = wfpr__socket_cookie(fd);
	int protocol = 0;
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = *cookie ? wfpr__socktab_find_as(fd, *cookie) : NULL;
	if (s)
		protocol = s->protocol;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (protocol)
		return protocol;
	if ((protocol = wfpr__socket_protocol(fd)) < 0 || !*cookie)
		return protocol;
	pthread_mutex_lock(&wfpr__socktab_lock);
	if ((s = wfpr__socktab_find_as(fd, *cookie)))
		s->protocol = protocol;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	return protocol;
}

int wfpr__socktab_tuple(int fd, uint64_t cookie, wfpr__tuple *out)
{
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = wfpr__socktab_find_as(fd, cookie);
	bool known = s && s->has_tuple;
	if (known)
		*out = s->tuple;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (known)
		return 0;
	socklen_t len = sizeof(out->peer);
	if (getpeername(fd, (struct sockaddr *)&out->peer, &len) < 0)
		return errno == ENOTCONN ? WFPR_WSAENOTCONN : wfpr_err_from_errno(errno);
	len = sizeof(out->local);
	if (getsockname(fd, (struct sockaddr *)&out->local, &len) < 0)
		return wfpr_err_from_errno(errno);
	pthread_mutex_lock(&wfpr__socktab_lock);
	if ((s = wfpr__socktab_get_as(fd, cookie))) { /* no memory to keep them: read again next time */
		s->protocol = IPPROTO_TCP;
		s->has_tuple = true;
		s->tuple = *out;
	}
	pthread_mutex_unlock(&wfpr__socktab_lock);
	return 0;
}
