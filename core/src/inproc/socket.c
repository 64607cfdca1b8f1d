#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include "../addr.h"
#include "../ebpf/kernel.h"
#include "../preload/client.h"
#include "inproc.h"
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

/* Classify a connect or a new flow. On 0, *target is where to send
 * (addr itself when permitted); for a redirect the record is stored and
 * *out_conn is its (uncommitted) entry. On the preload backend, a TCP
 * connect (connecting not NULL) that is redirected is made here, and
 * *connecting gets connect's result (else it stays INT_MIN). */
static int route(int fd, int protocol, const struct sockaddr *addr, struct sockaddr_storage *target,
                 conn **out_conn, int *connecting)
{
	conn_info info = {.protocol = protocol};
	redirect_decision d;

	*out_conn = NULL;
	to_storage(target, addr);
	if (kernel_enabled())
		return 0; /* the eBPF backend: the kernel decides at connect or sendto */
	info.pid = getpid();
	info.uid = getuid();
	to_storage(&info.remote, addr);
	socket_local(fd, &info.local);

	pthread_mutex_lock(&inproc_lock);
	wfpr_layer *layer = inproc_layer;
	sock *s = socktab_find(fd);
	size_t records_len = s ? s->records_len : 0;
	uint8_t *records = s ? dup_bytes(s->records, s->records_len) : NULL;
	pthread_mutex_unlock(&inproc_lock);
	if (records_len && !records)
		return fail(WFPR_WSAENOBUFS, ENOMEM);
	if (client_enabled()) {
		/* the preload backend: the broker's layer decides and keeps the record */
		bool redirected;
		int connect_result = 0;
		int rc = client_route(fd, protocol, &info.remote, records, records_len, target, &redirected,
		                      connecting ? connect : NULL, &connect_result);
		free(records);
		if (rc == 0 && redirected && connecting && protocol == IPPROTO_TCP)
			*connecting = connect_result;
		return rc == 0 ? 0 : fail(rc, rc == WFPR_WSAELOOP ? ELOOP : rc == WFPR_WSAEACCES ? EACCES : ENETDOWN);
	}
	if (!layer) {
		free(records);
		return 0;
	}

	int rc = layer_classify(layer, &info, records, records_len, &d);
	if (rc != 0) {
		free(records);
		return fail(rc, EINVAL);
	}
	if (d.action == WFPR_ACTION_BLOCK) {
		free(records);
		redirect_decision_cleanup(&d);
		return fail(d.err, d.err == WFPR_WSAELOOP ? ELOOP : EACCES);
	}
	if (d.action == WFPR_ACTION_PERMIT) {
		free(records);
		return 0;
	}

	uint8_t *record = NULL, token[WFPR_TOKEN_SIZE];
	size_t record_len = 0;
	if (socket_bind_for_redirect(fd, protocol, &d.target, &info.local) < 0) {
		rc = fail_errno();
	} else if ((rc = layer_issue(layer, &d, &info, records, records_len, &record, &record_len, token)) != 0) {
		rc = fail(rc, rc == WFPR_WSAELOOP ? ELOOP : EINVAL);
	} else {
		pthread_mutex_lock(&inproc_lock);
		*out_conn = store_reserve(protocol, &info.local, &d.target, fd, record, record_len, d.context,
		                          d.context_len, token);
		pthread_mutex_unlock(&inproc_lock);
		d.context = NULL; /* the store owns it now */
		*target = d.target;
		rc = *out_conn ? 0 : fail(WFPR_WSAENOBUFS, ENOMEM);
	}
	free(records);
	redirect_decision_cleanup(&d);
	return rc;
}

int wfpr_inproc_attach(wfpr_layer *layer)
{
	if (!layer)
		return WFPR_WSAEFAULT;
	pthread_mutex_lock(&inproc_lock);
	int rc = inproc_layer && inproc_layer != layer ? WFPR_WSAEADDRINUSE : 0;
	if (rc == 0)
		inproc_layer = layer;
	pthread_mutex_unlock(&inproc_lock);
	return rc;
}

void wfpr_inproc_detach(wfpr_layer *layer)
{
	pthread_mutex_lock(&inproc_lock);
	if (inproc_layer == layer)
		inproc_layer = NULL;
	pthread_mutex_unlock(&inproc_lock);
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
	if (socket_protocol(fd) < 0)
		return fail_errno();
	pthread_mutex_lock(&inproc_lock);
	sock *s = socktab_get(fd);
	if (s)
		s->overlapped = on != 0;
	pthread_mutex_unlock(&inproc_lock);
	return s ? 0 : fail(WFPR_WSAENOBUFS, ENOMEM);
}

/* A second connect on a non-blocking socket whose connect is in progress:
 * finish it (a redirected one publishes its record now), never classify again. */
static int finish_connect(int fd, const struct sockaddr_storage *target)
{
	int rc = connect(fd, (const struct sockaddr *)target, addr_len(target));
	int e = errno;
	bool done = rc == 0 || e == EISCONN;
	pthread_mutex_lock(&inproc_lock);
	sock *s = socktab_find(fd);
	if (s && s->connect_pending) {
		if (done && s->connecting)
			store_commit(s->connecting);
		else if (!done && e != EALREADY && e != EINPROGRESS && s->connecting)
			store_abandon(s->connecting);
		if (done || (e != EALREADY && e != EINPROGRESS)) {
			s->connect_pending = false;
			s->connecting = NULL;
		}
	}
	pthread_mutex_unlock(&inproc_lock);
	if (done)
		return 0;
	return fail(e == EINPROGRESS ? WFPR_WSAEALREADY : wfpr_err_from_errno(e), e);
}

int wfpr_connect(wfpr_socket_t fd, const struct sockaddr *addr, socklen_t len)
{
	if (!addr)
		return fail(WFPR_WSAEFAULT, EFAULT);
	int protocol = socket_protocol(fd);
	if (protocol < 0)
		return fail_errno();
	if (!is_inet(addr, len) || (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP))
		return connect(fd, addr, len) == 0 ? 0 : fail_errno();

	pthread_mutex_lock(&inproc_lock);
	sock *s = socktab_find(fd);
	bool pending = s && s->connect_pending;
	struct sockaddr_storage pending_target;
	if (pending)
		pending_target = s->connect_target;
	pthread_mutex_unlock(&inproc_lock);
	if (pending)
		return finish_connect(fd, &pending_target);

	struct sockaddr_storage target;
	conn *c;
	int connected = INT_MIN;
	if (route(fd, protocol, addr, &target, &c, &connected) < 0)
		return WFPR_SOCKET_ERROR;
	int rc = connected != INT_MIN ? connected : connect(fd, (struct sockaddr *)&target, addr_len(&target));
	int e = errno;
	pthread_mutex_lock(&inproc_lock);
	if (rc == 0 && c) {
		store_commit(c);
	} else if (rc != 0 && e == EINPROGRESS && (s = socktab_get(fd))) {
		s->connect_pending = true;
		s->connect_target = target;
		s->connecting = c;
	} else if (rc != 0 && c) {
		store_abandon(c);
	}
	pthread_mutex_unlock(&inproc_lock);
	return rc == 0 ? 0 : fail(wfpr_err_from_errno(e), e);
}

wfpr_socket_t wfpr_accept(wfpr_socket_t fd, struct sockaddr *addr, socklen_t *len)
{
	int child = accept4(fd, addr, len, SOCK_CLOEXEC);
	if (child < 0)
		return fail_errno();
	pthread_mutex_lock(&inproc_lock);
	sock *listener = socktab_find(fd);
	bool overlapped = listener && listener->overlapped;
	sock *s = overlapped ? socktab_get(child) : NULL;
	if (s)
		s->overlapped = true;
	pthread_mutex_unlock(&inproc_lock);
	if (overlapped && !s) {
		close(child);
		return fail(WFPR_WSAENOBUFS, ENOMEM);
	}
	return child;
}

/* Where a datagram to `to` goes, classifying the flow the first time. */
static int route_datagram(int fd, const struct sockaddr *to, struct sockaddr_storage *target)
{
	struct sockaddr_storage dest;
	to_storage(&dest, to);

	pthread_mutex_lock(&inproc_lock);
	sock *s = socktab_find(fd);
	for (flow *f = s ? s->flows : NULL; f; f = f->next) {
		if (addr_equal(&f->dest, &dest)) {
			*target = f->target;
			pthread_mutex_unlock(&inproc_lock);
			return 0;
		}
	}
	pthread_mutex_unlock(&inproc_lock);

	conn *c;
	if (route(fd, IPPROTO_UDP, to, target, &c, NULL) < 0)
		return WFPR_SOCKET_ERROR;
	pthread_mutex_lock(&inproc_lock);
	if (c)
		store_commit(c); /* a datagram needs no handshake */
	s = socktab_get(fd);
	flow *f = s ? calloc(1, sizeof(*f)) : NULL;
	if (f) {
		f->dest = dest;
		f->target = *target;
		f->next = s->flows;
		s->flows = f;
		if (++s->n_flows > MAX_FLOWS_PER_SOCKET) {
			flow **p = &s->flows;
			while ((*p)->next)
				p = &(*p)->next;
			free(*p);
			*p = NULL;
			s->n_flows--;
		}
	}
	pthread_mutex_unlock(&inproc_lock);
	return 0;
}

static int datagram_target(int fd, const struct sockaddr *to, socklen_t to_len, struct sockaddr_storage *target,
                           bool *routed)
{
	*routed = false;
	if (!to || !is_inet(to, to_len))
		return 0;
	int protocol = socket_protocol(fd);
	if (protocol < 0)
		return fail_errno();
	if (protocol != IPPROTO_UDP)
		return 0;
	*routed = true;
	return route_datagram(fd, to, target);
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

/* The preload and eBPF backends: the broker or the kernel hands out a
 * flow's records once, with its first datagram. */
static void remote_first_datagram(int fd, struct msghdr *msg, size_t capacity, const struct sockaddr_storage *local,
                                  const struct sockaddr_storage *from, bool want_context)
{
	if (kernel_enabled()) {
		uint8_t blob[KERNEL_BLOB_MAX];
		size_t len;
		if (kernel_query(fd, false, blob, &len) != 0 || !capacity)
			return;
		append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_RECORDS, blob, len);
		if (want_context && kernel_query(fd, true, blob, &len) == 0)
			append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_CONTEXT, blob, len);
		return;
	}
	uint64_t cookie = socket_cookie(fd);
	uint8_t blob[WIRE_BLOB_MAX];
	size_t len;
	if (client_query(cookie, IPPROTO_UDP, local, from, WIRE_QUERY_FIRST_DATAGRAM, blob, sizeof(blob), &len) != 0 || !capacity)
		return;
	append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_RECORDS, blob, len);
	if (want_context && client_query(cookie, IPPROTO_UDP, local, from, WIRE_QUERY_CONTEXT, blob, sizeof(blob), &len) == 0)
		append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_CONTEXT, blob, len);
}

/* After a datagram arrived from `from`: a client sees replies from the
 * original destination; a proxy gets the records with a flow's first datagram. */
static void after_receive(int fd, struct msghdr *msg, size_t capacity, struct sockaddr_storage *from)
{
	struct sockaddr_storage local;
	socket_local(fd, &local);

	pthread_mutex_lock(&inproc_lock);
	sock *s = socktab_find(fd);
	for (flow *f = s ? s->flows : NULL; f; f = f->next) {
		if (addr_equal(&f->target, from) && !addr_equal(&f->target, &f->dest)) {
			if (msg->msg_name)
				memcpy(msg->msg_name, &f->dest, msg->msg_namelen < addr_len(&f->dest) ? msg->msg_namelen : addr_len(&f->dest));
			msg->msg_namelen = addr_len(&f->dest);
			break;
		}
	}
	if (client_enabled() || kernel_enabled()) {
		bool want_context = s && s->want_context;
		pthread_mutex_unlock(&inproc_lock);
		remote_first_datagram(fd, msg, capacity, &local, from, want_context);
		return;
	}
	conn *c = store_find(IPPROTO_UDP, &local, from);
	if (c && c->committed && !c->delivered) {
		c->delivered = true;
		if (capacity) {
			append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_RECORDS, c->record, c->record_len);
			if (s && s->want_context)
				append_cmsg(msg, capacity, WFPR_IP_WFP_REDIRECT_CONTEXT, c->context, c->context_len);
		}
	}
	pthread_mutex_unlock(&inproc_lock);
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

/* SET: a checked, live blob becomes the socket's records. */
int inproc_set_records(int fd, const uint8_t *blob, size_t len)
{
	uint8_t token[WFPR_TOKEN_SIZE];

	if (!blob)
		return WFPR_WSAEFAULT;
	if (len == 0 || len > WFPR_RECORD_MAX_SIZE)
		return WFPR_WSAEINVAL;
	if (kernel_enabled())
		return kernel_set(fd, blob, len);
	bool remote = client_enabled();
	int rc = remote ? client_check(blob, len) : WFPR_WSAENETDOWN;
	pthread_mutex_lock(&inproc_lock);
	wfpr_layer *layer = inproc_layer;
	if (!remote && layer) {
		rc = layer_check_records(layer, blob, len, token);
		if (rc == 0 && !store_find_issued(blob, len, token))
			rc = WFPR_WSAEINVAL; /* well formed, but not a live connection's record */
		if (rc != 0)
			layer_count_bad_record(layer);
	}
	if (rc == 0) {
		sock *s = socktab_get(fd);
		uint8_t *copy = dup_bytes(blob, len);
		if (!s || !copy) {
			free(copy);
			rc = WFPR_WSAENOBUFS;
		} else {
			free(s->records);
			s->records = copy;
			s->records_len = len;
		}
	}
	pthread_mutex_unlock(&inproc_lock);
	return rc;
}

ssize_t wfpr_sendmsg(wfpr_socket_t fd, const struct msghdr *msg, int flags)
{
	if (!msg || (msg->msg_controllen && !msg->msg_control))
		return fail(WFPR_WSAEFAULT, EFAULT);
	struct msghdr m = *msg;
	uint8_t *control = NULL;

	if (msg->msg_controllen) {
		/* Our control messages are for the layer, not the kernel: take them out. */
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
			int rc = inproc_set_records(fd, CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0));
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
	int protocol = socket_protocol(fd);
	if (protocol < 0)
		return fail_errno();
	if (protocol != IPPROTO_UDP)
		return fail(WFPR_WSAENOPROTOOPT, ENOPROTOOPT);
	if (!value)
		return fail(WFPR_WSAEFAULT, EFAULT);
	if (name == WFPR_IP_WFP_REDIRECT_RECORDS) {
		int rc = inproc_set_records(fd, value, len);
		return rc == 0 ? 0 : fail(rc, EINVAL);
	}
	if (len < (socklen_t)sizeof(int))
		return fail(WFPR_WSAEFAULT, EFAULT);
	int on;
	memcpy(&on, value, sizeof(on));
	pthread_mutex_lock(&inproc_lock);
	sock *s = socktab_get(fd);
	if (s)
		s->want_context = on != 0;
	pthread_mutex_unlock(&inproc_lock);
	return s ? 0 : fail(WFPR_WSAENOBUFS, ENOMEM);
}

/* The preload backend: a proxy's closed socket lets its record go. */
static void remote_release(int fd)
{
	struct sockaddr_storage local, peer;
	socklen_t len = sizeof(peer);
	if (socket_protocol(fd) == IPPROTO_TCP && getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
	    socket_local(fd, &local) != 0)
		client_release(socket_cookie(fd), IPPROTO_TCP, &local, &peer);
}

int wfpr_closesocket(wfpr_socket_t fd)
{
	uint64_t cookie = socket_cookie(fd);
	if (cookie == 0)
		return fail(WFPR_WSAENOTSOCK, ENOTSOCK);
	if (client_enabled())
		remote_release(fd);
	pthread_mutex_lock(&inproc_lock);
	store_abort_pending(fd, cookie);
	store_socket_closed(fd);
	socktab_remove(fd);
	pthread_mutex_unlock(&inproc_lock);
	return close(fd) == 0 ? 0 : fail_errno();
}
