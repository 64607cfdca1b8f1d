/* The socket front end: wfpr_connect, wfpr_sendto/recvmsg/sendmsg and the
 * rest, the same on every backend. Each connect and each new UDP flow is
 * routed through the attached backend (backend.h); the application keeps
 * seeing the addresses it used. */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include "addr.h"
#include "backend.h"
#include "sockutil.h"
#include "record.h"
#include "socktab.h"
#include "wfpr/error.h"
#include "wfpr/socket.h"

#define MAX_FLOWS_PER_SOCKET 256

/* Set both the Winsock last error and errno; returns WFPR_SOCKET_ERROR. */
static int fail(int err, int errnum)
{
	wfpr_set_last_error(err);
	errno = errnum;
	return WFPR_SOCKET_ERROR;
}

static int fail_errno(void)
{
	int e = errno;
	return fail(wfpr_err_from_errno(e), e);
}

static bool is_inet(const struct sockaddr *addr, socklen_t len)
{
	return (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) ||
	       (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6));
}

static void to_storage(struct sockaddr_storage *out, const struct sockaddr *addr)
{
	memset(out, 0, sizeof(*out));
	memcpy(out, addr, addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
	uint8_t *copy = p && n ? malloc(n) : NULL;
	if (copy)
		memcpy(copy, p, n);
	return copy;
}

/* The errno of a route's failure when the backend gave none. */
static int errno_of(int err)
{
	switch (err) {
	case WFPR_WSAELOOP: return ELOOP;
	case WFPR_WSAEACCES: return EACCES;
	case WFPR_WSAENOBUFS: return ENOMEM;
	case WFPR_WSAENETDOWN: return ENETDOWN;
	case WFPR_WSAEISCONN: return EISCONN;
	case WFPR_WSAEMSGSIZE: return EMSGSIZE;
	default: return EINVAL;
	}
}

/* Route a connect or a new flow through backend b, with the records SET
 * on the socket. On 0, r->target is where to send. */
static int route(const wfpr__backend *b, int fd, uint64_t cookie, int protocol, const struct sockaddr *addr,
                 bool may_connect, wfpr__route *r)
{
	*r = (wfpr__route){.fd = fd, .cookie = cookie, .protocol = protocol, .may_connect = may_connect};
	to_storage(&r->remote, addr);
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = wfpr__socktab_find_as(fd, cookie);
	size_t records_len = s ? s->records_len : 0;
	uint8_t *records = s ? dup_bytes(s->records, s->records_len) : NULL;
	uint8_t notes[WFPR__WIRE_NOTES_MAX];
	size_t notes_len = s ? s->notes_len : 0;
	if (notes_len)
		memcpy(notes, s->notes, notes_len);
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (records_len && !records)
		return fail(WFPR_WSAENOBUFS, ENOMEM);
	r->records = records;
	r->records_len = records_len;
	r->notes = notes_len ? notes : NULL;
	r->notes_len = notes_len;
	int rc = b->route(r);
	free(records);
	r->records = NULL;
	r->notes = NULL;
	return rc == 0 ? 0 : fail(rc, r->errnum ? r->errnum : errno_of(rc));
}

wfpr_socket_t wfpr_socket(int family, int type, int protocol, unsigned int flags)
{
	if (flags & ~WFPR_FLAG_OVERLAPPED)
		return fail(WFPR_WSAEINVAL, EINVAL);
	int fd = socket(family, type | SOCK_CLOEXEC, protocol);
	if (fd < 0)
		return fail_errno();
	if (flags & WFPR_FLAG_OVERLAPPED && wfpr_socket_set_overlapped(fd, 1) < 0) {
		int err = wfpr_get_last_error();
		close(fd);
		return fail(err, ENOMEM);
	}
	return fd;
}

int wfpr_socket_set_overlapped(wfpr_socket_t fd, int on)
{
	if (wfpr__socket_protocol(fd) < 0)
		return fail_errno();
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = wfpr__socktab_get(fd);
	if (s)
		s->overlapped = on != 0;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	return s ? 0 : fail(WFPR_WSAENOBUFS, ENOMEM);
}

/* A second connect on a non-blocking socket whose connect is in progress:
 * finish it (a redirected one publishes its record now), never route again. */
static int finish_connect(int fd, uint64_t cookie, const struct sockaddr_storage *target)
{
	int rc = connect(fd, (const struct sockaddr *)target, addr_len(target));
	int e = errno;
	bool done = rc == 0 || e == EISCONN, ended = done || (e != EALREADY && e != EINPROGRESS);
	const wfpr__backend *b = NULL;
	void *pending = NULL;
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = wfpr__socktab_find_as(fd, cookie);
	if (s && s->connect_pending && ended) {
		b = s->routed_by;
		pending = s->connecting;
		s->connect_pending = false;
		s->connecting = NULL;
	}
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (pending)
		b->connect_done(pending, done);
	if (done)
		return 0;
	return fail(e == EINPROGRESS ? WFPR_WSAEALREADY : wfpr_err_from_errno(e), e);
}

int wfpr_connect(wfpr_socket_t fd, const struct sockaddr *addr, socklen_t len)
{
	if (!addr)
		return fail(WFPR_WSAEFAULT, EFAULT);
	const wfpr__backend *b = wfpr__backend_current();
	/* where the kernel routes, it also keeps the records SET and finishes a
	 * connect in progress (a second call: EALREADY, then 0 once it is
	 * established): the front end keeps nothing, and asks nothing */
	if (b->kernel_routes)
		return connect(fd, addr, len) == 0 ? 0 : fail_errno();
	/* one SO_COOKIE for this call's lookups; the protocol is kept with the socket's state */
	uint64_t cookie = wfpr__socket_cookie(fd);
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = cookie ? wfpr__socktab_find_as(fd, cookie) : NULL;
	int protocol = s ? s->protocol : 0;
	bool in_progress = s && s->connect_pending;
	struct sockaddr_storage pending_target;
	if (in_progress)
		pending_target = s->connect_target;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (!protocol && (protocol = wfpr__socket_protocol(fd)) < 0)
		return fail_errno();
	if (!is_inet(addr, len) || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP))
		return connect(fd, addr, len) == 0 ? 0 : fail_errno();
	if (in_progress)
		return finish_connect(fd, cookie, &pending_target);

	wfpr__route r;
	if (route(b, fd, cookie, protocol, addr, true, &r) < 0)
		return WFPR_SOCKET_ERROR;
	int rc = r.connected ? r.connect_result : connect(fd, (struct sockaddr *)&r.target, addr_len(&r.target));
	int e = r.connected ? r.connect_errno : errno;
	if (rc != 0 && e == EINPROGRESS) {
		pthread_mutex_lock(&wfpr__socktab_lock);
		s = wfpr__socktab_get_as(fd, cookie);
		if (s) {
			s->protocol = protocol;
			s->connect_pending = true;
			s->connect_target = r.target;
			s->routed_by = b;
			s->connecting = r.pending;
			r.pending = NULL;
		}
		pthread_mutex_unlock(&wfpr__socktab_lock);
	}
	if (r.pending)
		b->connect_done(r.pending, rc == 0);
	return rc == 0 ? 0 : fail(wfpr_err_from_errno(e), e);
}

wfpr_socket_t wfpr_accept(wfpr_socket_t fd, struct sockaddr *addr, socklen_t *len)
{
	int child = accept4(fd, addr, len, SOCK_CLOEXEC);
	if (child < 0)
		return fail_errno();
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *listener = wfpr__socktab_find(fd);
	bool overlapped = listener && listener->overlapped;
	wfpr__sock *s = overlapped ? wfpr__socktab_get(child) : NULL;
	if (s)
		s->overlapped = true;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (overlapped && !s) {
		close(child);
		return fail(WFPR_WSAENOBUFS, ENOMEM);
	}
	return child;
}

/* Where a datagram to `to` goes: the flow's target, routed the first time
 * and again after the flow was idle too long (a new flow, a fresh record). */
static int route_datagram(int fd, uint64_t cookie, const struct sockaddr *to, struct sockaddr_storage *target)
{
	struct sockaddr_storage dest;
	to_storage(&dest, to);
	int64_t now = wfpr__now_ns();

	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = wfpr__socktab_find_as(fd, cookie);
	for (wfpr__flow **p = s ? &s->flows : NULL; p && *p; p = &(*p)->next) {
		wfpr__flow *f = *p;
		if (!addr_equal(&f->dest, &dest))
			continue;
		if (now - f->last_ns < wfpr__udp_flow_idle_ns()) {
			f->last_ns = now;
			*target = f->target;
			pthread_mutex_unlock(&wfpr__socktab_lock);
			return 0;
		}
		*p = f->next; /* idle too long: routed again below */
		free(f);
		s->n_flows--;
		break;
	}
	pthread_mutex_unlock(&wfpr__socktab_lock);

	const wfpr__backend *b = wfpr__backend_current();
	wfpr__route r;
	if (route(b, fd, cookie, IPPROTO_UDP, to, false, &r) < 0)
		return WFPR_SOCKET_ERROR;
	if (r.pending)
		b->connect_done(r.pending, true); /* a datagram needs no handshake */
	*target = r.target;
	pthread_mutex_lock(&wfpr__socktab_lock);
	s = wfpr__socktab_get_as(fd, cookie);
	wfpr__flow *f = s ? calloc(1, sizeof(*f)) : NULL;
	if (s)
		s->protocol = IPPROTO_UDP;
	if (f) {
		f->dest = dest;
		f->target = r.target;
		f->last_ns = now;
		f->next = s->flows;
		s->flows = f;
		if (++s->n_flows > MAX_FLOWS_PER_SOCKET) {
			wfpr__flow **p = &s->flows;
			while ((*p)->next)
				p = &(*p)->next;
			free(*p);
			*p = NULL;
			s->n_flows--;
		}
	}
	pthread_mutex_unlock(&wfpr__socktab_lock);
	return 0;
}

static int datagram_target(int fd, const struct sockaddr *to, socklen_t to_len, struct sockaddr_storage *target,
                           bool *routed)
{
	*routed = false;
	if (!to || !is_inet(to, to_len) || wfpr__backend_current()->kernel_routes)
		return 0; /* where the kernel routes, it routes each datagram itself */
	/* one SO_COOKIE for the datagram; the protocol is kept with the socket's flows */
	uint64_t cookie = wfpr__socket_cookie(fd);
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = cookie ? wfpr__socktab_find_as(fd, cookie) : NULL;
	int protocol = s ? s->protocol : 0;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (!protocol && (protocol = wfpr__socket_protocol(fd)) < 0)
		return fail_errno();
	if (protocol != IPPROTO_UDP)
		return 0;
	*routed = true;
	return route_datagram(fd, cookie, to, target);
}

ssize_t wfpr_sendto(wfpr_socket_t fd, const void *buf, size_t len, int flags, const struct sockaddr *to,
                    socklen_t to_len)
{
	struct sockaddr_storage target;
	bool routed;
	if (!buf && len)
		return fail(WFPR_WSAEFAULT, EFAULT);
	if (datagram_target(fd, to, to_len, &target, &routed) < 0)
		return WFPR_SOCKET_ERROR;
	ssize_t n = routed ? sendto(fd, buf, len, flags, (struct sockaddr *)&target, addr_len(&target))
	                   : sendto(fd, buf, len, flags, to, to_len);
	return n < 0 ? fail_errno() : n;
}

static bool is_ours(const struct cmsghdr *c)
{
	return c->cmsg_level == IPPROTO_IP &&
	       (c->cmsg_type == WFPR_IP_WFP_REDIRECT_RECORDS || c->cmsg_type == WFPR_IP_WFP_REDIRECT_CONTEXT);
}

/* Append one control message after what the kernel wrote; MSG_CTRUNC if it does not fit. */
static void append_cmsg(struct msghdr *msg, size_t capacity, int type, const uint8_t *data, size_t len)
{
	size_t used = CMSG_ALIGN(msg->msg_controllen);
	if (!msg->msg_control || used + CMSG_SPACE(len) > capacity) {
		msg->msg_flags |= MSG_CTRUNC;
		return;
	}
	struct cmsghdr *c = (struct cmsghdr *)((uint8_t *)msg->msg_control + used);
	c->cmsg_level = IPPROTO_IP;
	c->cmsg_type = type;
	c->cmsg_len = CMSG_LEN(len);
	memcpy(CMSG_DATA(c), data, len);
	msg->msg_controllen = used + CMSG_SPACE(len);
}

/* after_receive where routing is done here: false for a reply (its source
 * rewritten), else the layer was asked. */
static bool user_space_receive(int fd, struct msghdr *msg, const struct sockaddr_storage *from, uint8_t *records,
                               size_t *records_len, uint8_t *context, size_t *context_len)
{
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = wfpr__socktab_find(fd);
	bool reply = false;
	for (wfpr__flow *f = s ? s->flows : NULL; f && !reply; f = f->next) {
		reply = addr_equal(&f->target, from);
		if (reply && !addr_equal(&f->target, &f->dest)) {
			if (msg->msg_name)
				memcpy(msg->msg_name, &f->dest, msg->msg_namelen < addr_len(&f->dest) ? msg->msg_namelen : addr_len(&f->dest));
			msg->msg_namelen = addr_len(&f->dest);
		}
	}
	bool want_context = s && s->want_context;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (reply)
		return false;
	wfpr__backend_current()->first_datagram(fd, from, want_context, records, records_len, context, context_len);
	return true;
}

/* After a datagram arrived from `from`: a client sees replies from the
 * original destination; a proxy gets the records with a flow's first
 * datagram (once, even when there is no room for them). Where routing is
 * done here, a reply, from where one of the socket's own flows goes,
 * starts no flow: the layer is not asked (a broker round trip per
 * datagram on preload). Where the kernel routes, it also gives replies
 * their source, and asking it is one system call, as the socket's state
 * would be: that is looked up only for a first datagram. */
static void after_receive(int fd, struct msghdr *msg, size_t capacity, struct sockaddr_storage *from)
{
	static _Thread_local uint8_t records[WFPR__BLOB_MAX], context[WFPR__BLOB_MAX];
	size_t records_len = 0, context_len = 0;
	const wfpr__backend *b = wfpr__backend_current();
	if (b->kernel_routes) {
		b->first_datagram(fd, from, true, records, &records_len, context, &context_len);
		if (!records_len)
			return;
		pthread_mutex_lock(&wfpr__socktab_lock);
		wfpr__sock *s = wfpr__socktab_find(fd);
		if (!s || !s->want_context)
			context_len = 0;
		pthread_mutex_unlock(&wfpr__socktab_lock);
	} else if (!user_space_receive(fd, msg, from, records, &records_len, context, &context_len)) {
		return;
	}
	if (records_len && capacity) {
		append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_RECORDS, records, records_len);
		if (context_len)
			append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_CONTEXT, context, context_len);
	}
}

ssize_t wfpr_recvmsg(wfpr_socket_t fd, struct msghdr *msg, int flags)
{
	if (!msg)
		return fail(WFPR_WSAEFAULT, EFAULT);
	struct sockaddr_storage from;
	struct msghdr m = *msg;
	size_t capacity = msg->msg_controllen;
	m.msg_name = &from;
	m.msg_namelen = sizeof(from);
	memset(&from, 0, sizeof(from));

	ssize_t n = recvmsg(fd, &m, flags);
	if (n < 0)
		return fail_errno();
	msg->msg_controllen = m.msg_controllen;
	msg->msg_flags = m.msg_flags;
	if (msg->msg_name) {
		socklen_t copy = msg->msg_namelen < m.msg_namelen ? msg->msg_namelen : m.msg_namelen;
		memcpy(msg->msg_name, &from, copy);
		msg->msg_namelen = m.msg_namelen;
	}
	if (from.ss_family == AF_INET || from.ss_family == AF_INET6)
		after_receive(fd, msg, capacity, &from);
	return n;
}

ssize_t wfpr_recvfrom(wfpr_socket_t fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *from_len)
{
	if ((!buf && len) || (from && !from_len))
		return fail(WFPR_WSAEFAULT, EFAULT);
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr msg = {.msg_name = from, .msg_namelen = from ? *from_len : 0, .msg_iov = &iov, .msg_iovlen = 1};
	ssize_t n = wfpr_recvmsg(fd, &msg, flags);
	if (n >= 0 && from)
		*from_len = msg.msg_namelen;
	return n;
}

int wfpr__set_records(int fd, uint64_t cookie, int protocol, const uint8_t *blob, size_t len)
{
	if (!blob)
		return WFPR_WSAEFAULT;
	if (len == 0 || len > WFPR_RECORD_MAX_SIZE)
		return WFPR_WSAEINVAL;
	const wfpr__backend *b = wfpr__backend_current();
	if (!cookie && !b->kernel_routes)
		cookie = wfpr__socket_cookie(fd);
	int rc = b->check_set(fd, cookie, blob, len);
	if (rc != 0 || b->kernel_routes)
		return rc; /* the kernel keeps them (and routes with them) */
	uint8_t *copy = dup_bytes(blob, len);
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = copy ? wfpr__socktab_get_as(fd, cookie) : NULL;
	if (s && protocol)
		s->protocol = protocol;
	if (s) {
		free(s->records);
		s->records = copy;
		s->records_len = len;
	}
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (!s)
		free(copy);
	return s ? 0 : WFPR_WSAENOBUFS;
}

int wfpr_annotate(wfpr_socket_t fd, const char *key, const char *value)
{
	if (!key || !value)
		return fail(WFPR_WSAEFAULT, EFAULT);
	int protocol = wfpr__socket_protocol(fd);
	if (protocol < 0)
		return fail_errno();
	struct sockaddr_storage peer;
	socklen_t peer_len = sizeof(peer);
	if (protocol == IPPROTO_TCP && getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0)
		return fail(WFPR_WSAEISCONN, EISCONN);
	uint8_t notes[WFPR__WIRE_NOTES_MAX];
	size_t len = 0;
	int rc = 0;
	const wfpr__backend *b = wfpr__backend_current();
	pthread_mutex_lock(&wfpr__socktab_lock);
	/* a proxy annotates what it passes on: SET the records first (where
	 * the kernel keeps them, it checks that itself) */
	wfpr__sock *s = b->kernel_routes ? wfpr__socktab_get(fd) : wfpr__socktab_find(fd);
	if (!s)
		rc = b->kernel_routes ? WFPR_WSAENOBUFS : WFPR_WSAEINVAL;
	else if (!b->kernel_routes && !s->records)
		rc = WFPR_WSAEINVAL;
	else if (s->connect_pending || s->n_flows)
		rc = WFPR_WSAEISCONN;
	else {
		len = s->notes_len;
		memcpy(notes, s->notes, len);
		rc = wfpr__notes_put(notes, &len, key, value);
	}
	pthread_mutex_unlock(&wfpr__socktab_lock);
	if (rc == 0)
		rc = b->annotate(fd, notes, len);
	if (rc != 0)
		return fail(rc, errno_of(rc));
	pthread_mutex_lock(&wfpr__socktab_lock);
	s = wfpr__socktab_find(fd);
	if (s) {
		memcpy(s->notes, notes, len);
		s->notes_len = len;
	}
	pthread_mutex_unlock(&wfpr__socktab_lock);
	return 0;
}

ssize_t wfpr_sendmsg(wfpr_socket_t fd, const struct msghdr *msg, int flags)
{
	if (!msg || (msg->msg_controllen && !msg->msg_control))
		return fail(WFPR_WSAEFAULT, EFAULT);
	struct msghdr m = *msg;
	uint8_t *control = NULL;

	if (msg->msg_controllen) {
		/* Our control messages are for the backend, not the kernel: take them out. */
		control = malloc(msg->msg_controllen);
		if (!control)
			return fail(WFPR_WSAENOBUFS, ENOMEM);
		size_t kept = 0;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR((struct msghdr *)msg, c)) {
			if (!is_ours(c)) {
				size_t space = CMSG_ALIGN(c->cmsg_len);
				if (kept + space > msg->msg_controllen)
					space = msg->msg_controllen - kept;
				memcpy(control + kept, c, space);
				kept += space;
				continue;
			}
			if (c->cmsg_type != WFPR_IP_WFP_REDIRECT_RECORDS)
				continue;
			int rc = wfpr__set_records(fd, 0, IPPROTO_UDP, CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0));
			if (rc != 0) {
				free(control);
				return fail(rc, EINVAL);
			}
		}
		m.msg_control = kept ? control : NULL;
		m.msg_controllen = kept;
	}

	struct sockaddr_storage target;
	bool routed;
	ssize_t n = WFPR_SOCKET_ERROR;
	if (datagram_target(fd, msg->msg_name, msg->msg_namelen, &target, &routed) == 0) {
		if (routed) {
			m.msg_name = &target;
			m.msg_namelen = addr_len(&target);
		}
		n = sendmsg(fd, &m, flags);
		if (n < 0)
			fail_errno();
	}
	free(control);
	return n;
}

int wfpr_setsockopt(wfpr_socket_t fd, int level, int name, const void *value, socklen_t len)
{
	bool ours = level == IPPROTO_IP &&
	            (name == WFPR_IP_WFP_REDIRECT_CONTEXT || name == WFPR_IP_WFP_REDIRECT_RECORDS);
	if (!ours)
		return setsockopt(fd, level, name, value, len) == 0 ? 0 : fail_errno();
	int protocol = wfpr__socket_protocol(fd);
	if (protocol < 0)
		return fail_errno();
	if (protocol != IPPROTO_UDP)
		return fail(WFPR_WSAENOPROTOOPT, ENOPROTOOPT);
	if (!value)
		return fail(WFPR_WSAEFAULT, EFAULT);
	if (name == WFPR_IP_WFP_REDIRECT_RECORDS) {
		int rc = wfpr__set_records(fd, 0, IPPROTO_UDP, value, len);
		return rc == 0 ? 0 : fail(rc, EINVAL);
	}
	if (len < (socklen_t)sizeof(int))
		return fail(WFPR_WSAEFAULT, EFAULT);
	int on;
	memcpy(&on, value, sizeof(on));
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__sock *s = wfpr__socktab_get(fd);
	if (s)
		s->want_context = on != 0;
	pthread_mutex_unlock(&wfpr__socktab_lock);
	return s ? 0 : fail(WFPR_WSAENOBUFS, ENOMEM);
}

int wfpr_closesocket(wfpr_socket_t fd)
{
	const wfpr__backend *b = wfpr__backend_current();
	if (b->closed == wfpr__closed_nothing) {
		/* nothing to forget by cookie: is it a socket at all (a cheaper
		 * question than SO_COOKIE, which the eBPF backend's programs see) */
		struct stat st;
		if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
			return fail(WFPR_WSAENOTSOCK, ENOTSOCK);
	} else {
		uint64_t cookie = wfpr__socket_cookie(fd);
		if (cookie == 0)
			return fail(WFPR_WSAENOTSOCK, ENOTSOCK);
		/* the backend forgets the socket's records, and a record still
		 * waiting for this socket's connect */
		pthread_mutex_lock(&wfpr__socktab_lock);
		wfpr__sock *s = wfpr__socktab_find_as(fd, cookie);
		wfpr__tuple tcp;
		bool queried = s && s->has_tuple;
		if (queried)
			tcp = s->tuple;
		pthread_mutex_unlock(&wfpr__socktab_lock);
		b->closed(fd, cookie, queried ? &tcp : NULL);
	}
	pthread_mutex_lock(&wfpr__socktab_lock);
	wfpr__socktab_remove(fd);
	pthread_mutex_unlock(&wfpr__socktab_lock);
	return close(fd) == 0 ? 0 : fail_errno();
}
