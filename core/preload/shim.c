/*
 * The LD_PRELOAD shim of the preload backend. In an unmodified, dynamically
 * linked program it wraps connect, sendto and sendmsg (IPv4 and IPv6, TCP
 * and UDP): the broker named by WFPR_BROKER classifies each connect and new
 * UDP flow, and a redirect really connects to the proxy. getpeername,
 * recvfrom and recvmsg then show the original destination, so the program
 * sees no difference. If the broker cannot be reached the shim fails open
 * (connects as asked) or, with WFPR_FAIL=closed, fails the call with
 * ENETDOWN; it never waits more than the client's reply timeout. In an
 * unmodified transparent proxy that `wfpr redirector run` started, it also
 * wraps listen, accept, getsockopt(SO_ORIGINAL_DST) and close (unmodified.c).
 */
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "../src/addr.h"
#include "../src/preload/client.h"
#include "../src/sockutil.h"
#include "unmodified.h"
#include "wfpr/error.h"

#define SHIM_EXPORT __attribute__((visibility("default")))
#define BUCKETS 1024
#define MAX_FLOWS_PER_SOCKET 256

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
typedef ssize_t (*sendmsg_fn)(int, const struct msghdr *, int);
typedef int (*getpeername_fn)(int, struct sockaddr *, socklen_t *);
typedef ssize_t (*recvfrom_fn)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
typedef ssize_t (*recvmsg_fn)(int, struct msghdr *, int);
typedef int (*listen_fn)(int, int);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*close_fn)(int);

static connect_fn real_connect;
static sendto_fn real_sendto;
static sendmsg_fn real_sendmsg;
static getpeername_fn real_getpeername;
static recvfrom_fn real_recvfrom;
static recvmsg_fn real_recvmsg;
static listen_fn real_listen;
static accept_fn real_accept;
static accept4_fn real_accept4;
static unmodified_getsockopt_fn real_getsockopt;
static close_fn real_close;
static bool fail_closed;
static bool unmodified; /* this process is an unmodified proxy (unmodified.h) */
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Where a socket's connection or flow really goes: dest as the program
 * addressed it, target the proxy (or dest itself when permitted). */
typedef struct route {
	struct route *next;
	int fd;
	uint64_t cookie; /* a reused fd is another socket */
	struct sockaddr_storage dest, target;
	int64_t last_ns; /* UDP: its last datagram out */
} route;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static route *routes[BUCKETS];

/* The address each UDP socket last heard from, by fd (a slot that another
 * fd takes only costs a question): a datagram back to it is a reply, sent
 * as addressed and never redirected, as on the eBPF backend. An fd reused
 * by another socket grants that socket nothing the program could not do
 * with the first one. */
static struct heard {
	int fd_plus_one; /* 0: empty */
	struct sockaddr_in6 from; /* an IPv4 address as a sockaddr_in */
} heard[BUCKETS];

static void init(void)
{
	real_connect = (connect_fn)dlsym(RTLD_NEXT, "connect");
	real_sendto = (sendto_fn)dlsym(RTLD_NEXT, "sendto");
	real_sendmsg = (sendmsg_fn)dlsym(RTLD_NEXT, "sendmsg");
	real_getpeername = (getpeername_fn)dlsym(RTLD_NEXT, "getpeername");
	real_recvfrom = (recvfrom_fn)dlsym(RTLD_NEXT, "recvfrom");
	real_recvmsg = (recvmsg_fn)dlsym(RTLD_NEXT, "recvmsg");
	real_listen = (listen_fn)dlsym(RTLD_NEXT, "listen");
	real_accept = (accept_fn)dlsym(RTLD_NEXT, "accept");
	real_accept4 = (accept4_fn)dlsym(RTLD_NEXT, "accept4");
	real_getsockopt = (unmodified_getsockopt_fn)dlsym(RTLD_NEXT, "getsockopt");
	const char *path = getenv("WFPR_BROKER");
	const char *fail = getenv("WFPR_FAIL");
	fail_closed = fail && strcmp(fail, "closed") == 0;
	if (path && path[0])
		wfpr__client_set_path(path);
	__atomic_store_n(&unmodified, path && path[0] && wfpr__unmodified_init(), __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void shim_init(void)
{
	pthread_once(&once, init);
}

static bool inet_addr_of(const struct sockaddr *a, socklen_t len, struct sockaddr_storage *out)
{
	if (!a || !((a->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) ||
	            (a->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6))))
		return false;
	memset(out, 0, sizeof(*out));
	memcpy(out, a, a->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
	return true;
}

static route **bucket(int fd)
{
	return &routes[(unsigned int)fd % BUCKETS];
}

/* Locked. The fd's routes, dropping those of a closed socket it replaced. */
static route *routes_of(int fd, uint64_t cookie)
{
	for (route **p = bucket(fd); *p;) {
		route *r = *p;
		if (r->fd == fd && r->cookie != cookie) {
			*p = r->next;
			free(r);
			continue;
		}
		p = &r->next;
	}
	for (route *r = *bucket(fd); r; r = r->next)
		if (r->fd == fd)
			return r;
	return NULL;
}

/* The known route of fd to dest (by_target: from target), copied out. */
static bool find_route(int fd, const struct sockaddr_storage *addr, bool by_target, route *out)
{
	bool any = false;
	pthread_mutex_lock(&lock);
	for (route *r = *bucket(fd); r && !any; r = r->next)
		any = r->fd == fd;
	pthread_mutex_unlock(&lock);
	if (!any)
		return false; /* the common case, without a syscall */
	uint64_t cookie = wfpr__socket_cookie(fd);
	bool found = false;
	pthread_mutex_lock(&lock);
	for (route *r = routes_of(fd, cookie); r && !found; r = r->next) {
		if (r->fd != fd)
			continue;
		if (!addr || addr_equal(by_target ? &r->target : &r->dest, addr)) {
			*out = *r;
			found = true;
		}
	}
	pthread_mutex_unlock(&lock);
	return found;
}

static void remember(int fd, const struct sockaddr_storage *dest, const struct sockaddr_storage *target)
{
	route *r = malloc(sizeof(*r));
	if (!r)
		return; /* the program still works; it just sees the proxy's address */
	*r = (route){.fd = fd, .cookie = wfpr__socket_cookie(fd), .dest = *dest, .target = *target,
	             .last_ns = wfpr__now_ns()};
	pthread_mutex_lock(&lock);
	size_t n = 0;
	for (route *o = routes_of(fd, r->cookie); o; o = o->next)
		n += o->fd == fd;
	if (n < MAX_FLOWS_PER_SOCKET) {
		r->next = *bucket(fd);
		*bucket(fd) = r;
		r = NULL;
	}
	pthread_mutex_unlock(&lock);
	free(r);
}

/* Ask the broker where fd's connection or flow to dest goes. 0, or -1
 * with errno set. With connect_fn, a redirected TCP socket is connected
 * here: *connected says so, and the result is connect's (errno too). */
static int classify(int fd, int protocol, const struct sockaddr_storage *dest, const uint8_t *records,
                    size_t records_len, struct sockaddr_storage *target, bool *redirected, client_connect_fn connect_fn,
                    bool *connected)
{
	int saved = errno, connect_result = 0;
	int rc = wfpr__client_route(fd, 0, protocol, dest, records, records_len, NULL, 0, target, redirected, connect_fn,
	                            &connect_result);
	*connected = rc == 0 && *redirected && connect_fn && protocol == IPPROTO_TCP;
	if (*connected)
		return connect_result;
	if (rc == WFPR_WSAENETDOWN && !fail_closed) {
		*target = *dest; /* fail open: as if there were no proxies */
		*redirected = false;
		rc = 0;
	}
	if (rc == 0) {
		errno = saved;
		return 0;
	}
	errno = rc == WFPR_WSAENETDOWN ? ENETDOWN : rc == WFPR_WSAELOOP ? ELOOP : rc == WFPR_WSAEACCES ? EACCES :
	        rc == WFPR_WSAENOBUFS ? ENOBUFS : EINVAL; /* ENOBUFS: the user's programs hold their quota of records */
	return -1;
}

static int redirected_protocol(int fd)
{
	int protocol = wfpr__client_enabled() ? wfpr__socket_protocol(fd) : -1;
	return protocol == IPPROTO_TCP || protocol == IPPROTO_UDP ? protocol : -1;
}

SHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	pthread_once(&once, init);
	struct sockaddr_storage dest, target;
	int protocol;
	if (!inet_addr_of(addr, len, &dest) || (protocol = redirected_protocol(fd)) < 0)
		return real_connect(fd, addr, len);
	route known;
	if (protocol == IPPROTO_TCP && find_route(fd, NULL, false, &known)) /* a connect in progress, again */
		return real_connect(fd, (struct sockaddr *)&known.target, addr_len(&known.target));
	bool redirected, connected;
	uint8_t carried[WIRE_BLOB_MAX]; /* an unmodified proxy's connect to an accepted connection's destination */
	size_t carried_len = unmodified && protocol == IPPROTO_TCP ? wfpr__unmodified_carry(fd, &dest, carried, sizeof(carried)) : 0;
	int rc = classify(fd, protocol, &dest, carried_len ? carried : NULL, carried_len, &target, &redirected, real_connect,
	                  &connected);
	if (redirected) {
		int saved = errno;
		remember(fd, &dest, &target);
		errno = saved;
	}
	if (connected || rc < 0)
		return rc;
	return real_connect(fd, (struct sockaddr *)&target, addr_len(&target));
}

/* A UDP flow of fd to dest that has been used within the idle time: its
 * target, and the flow counts as used now. An idle one is forgotten, so
 * that its next datagram starts a new flow with a fresh record. */
static bool live_flow(int fd, const struct sockaddr_storage *dest, struct sockaddr_storage *target)
{
	route known;
	if (!find_route(fd, dest, false, &known))
		return false;
	int64_t now = wfpr__now_ns();
	bool live = false;
	pthread_mutex_lock(&lock);
	for (route **p = bucket(fd); *p; p = &(*p)->next) {
		route *r = *p;
		if (r->fd != fd || r->cookie != known.cookie || !addr_equal(&r->dest, dest))
			continue;
		live = now - r->last_ns < wfpr__udp_flow_idle_ns();
		if (live) {
			r->last_ns = now;
			*target = r->target;
		} else {
			*p = r->next;
			free(r);
		}
		break;
	}
	pthread_mutex_unlock(&lock);
	return live;
}

static void hear(int fd, const struct sockaddr *from, socklen_t from_len)
{
	struct sockaddr_storage addr;
	if (fd < 0 || !inet_addr_of(from, from_len, &addr))
		return;
	struct heard *h = &heard[(unsigned int)fd % BUCKETS];
	pthread_mutex_lock(&lock);
	h->fd_plus_one = fd + 1;
	memcpy(&h->from, &addr, addr_len(&addr));
	pthread_mutex_unlock(&lock);
}

static bool is_reply(int fd, const struct sockaddr_storage *dest)
{
	const struct heard *h = &heard[(unsigned int)fd % BUCKETS];
	pthread_mutex_lock(&lock);
	bool reply = h->fd_plus_one == fd + 1 && memcmp(&h->from, dest, addr_len(dest)) == 0;
	pthread_mutex_unlock(&lock);
	return reply;
}

/* Where a datagram to dest goes: the flow's route, classified once per
 * flow; a reply goes where it is addressed. */
static int datagram_target(int fd, const struct sockaddr_storage *dest, struct sockaddr_storage *target)
{
	if (live_flow(fd, dest, target))
		return 0;
	if (is_reply(fd, dest)) {
		*target = *dest;
		return 0;
	}
	bool redirected, connected;
	if (classify(fd, IPPROTO_UDP, dest, NULL, 0, target, &redirected, NULL, &connected) < 0)
		return -1;
	remember(fd, dest, target); /* permitted flows too: classified once */
	return 0;
}

SHIM_EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t to_len)
{
	pthread_once(&once, init);
	struct sockaddr_storage dest, target;
	if (!inet_addr_of(to, to_len, &dest) || redirected_protocol(fd) != IPPROTO_UDP)
		return real_sendto(fd, buf, len, flags, to, to_len);
	if (datagram_target(fd, &dest, &target) < 0)
		return -1;
	return real_sendto(fd, buf, len, flags, (struct sockaddr *)&target, addr_len(&target));
}

SHIM_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	pthread_once(&once, init);
	struct sockaddr_storage dest, target;
	if (!msg || !inet_addr_of(msg->msg_name, msg->msg_namelen, &dest) || redirected_protocol(fd) != IPPROTO_UDP)
		return real_sendmsg(fd, msg, flags);
	if (datagram_target(fd, &dest, &target) < 0)
		return -1;
	struct msghdr m = *msg;
	m.msg_name = &target;
	m.msg_namelen = addr_len(&target);
	return real_sendmsg(fd, &m, flags);
}

/* A reply from a proxy shows as from the original destination. */
static void unredirect(int fd, struct sockaddr *from, socklen_t *from_len)
{
	struct sockaddr_storage addr;
	route known;
	if (!wfpr__client_enabled() || !from || !from_len || !inet_addr_of(from, *from_len, &addr) ||
	    !find_route(fd, &addr, true, &known) || addr_equal(&known.dest, &known.target))
		return;
	socklen_t room = *from_len, need = addr_len(&known.dest);
	memcpy(from, &known.dest, room < need ? room : need);
	*from_len = need;
}

SHIM_EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	pthread_once(&once, init);
	int rc = real_getpeername(fd, addr, len);
	if (rc == 0) {
		int saved = errno;
		unredirect(fd, addr, len);
		errno = saved;
	}
	return rc;
}

SHIM_EXPORT ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *from_len)
{
	pthread_once(&once, init);
	ssize_t n = real_recvfrom(fd, buf, len, flags, from, from_len);
	if (n >= 0) {
		int saved = errno;
		if (from && from_len)
			hear(fd, from, *from_len); /* as it came: a proxy's address is never one the program sends to */
		unredirect(fd, from, from_len);
		errno = saved;
	}
	return n;
}

SHIM_EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	pthread_once(&once, init);
	ssize_t n = real_recvmsg(fd, msg, flags);
	if (n >= 0 && msg) {
		int saved = errno;
		hear(fd, msg->msg_name, msg->msg_namelen);
		unredirect(fd, msg->msg_name, &msg->msg_namelen);
		errno = saved;
	}
	return n;
}

/* ---- an unmodified transparent proxy (unmodified.h) ---- */

SHIM_EXPORT int listen(int fd, int backlog)
{
	pthread_once(&once, init);
	int rc = real_listen(fd, backlog);
	if (rc == 0 && unmodified) {
		int saved = errno;
		wfpr__unmodified_listened(fd);
		errno = saved;
	}
	return rc;
}

static int accepted(int listener, int fd)
{
	if (fd >= 0 && unmodified) {
		int saved = errno;
		wfpr__unmodified_accepted(listener, fd);
		errno = saved;
	}
	return fd;
}

SHIM_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	pthread_once(&once, init);
	return accepted(fd, real_accept(fd, addr, len));
}

SHIM_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	pthread_once(&once, init);
	return accepted(fd, real_accept4(fd, addr, len, flags));
}

#define SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST is the same */

SHIM_EXPORT int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
	pthread_once(&once, init);
	if (unmodified && (level == IPPROTO_IP || level == IPPROTO_IPV6) && name == SO_ORIGINAL_DST) {
		int saved = errno;
		if (wfpr__unmodified_original_dst(fd, level, value, len) == 0) {
			errno = saved;
			return 0;
		}
		errno = saved;
	}
	return real_getsockopt(fd, level, name, value, len);
}

/* No pthread_once here: init itself closes files (the key file). */
SHIM_EXPORT int close(int fd)
{
	close_fn real = __atomic_load_n(&real_close, __ATOMIC_ACQUIRE);
	if (!real) {
		real = (close_fn)dlsym(RTLD_NEXT, "close");
		__atomic_store_n(&real_close, real, __ATOMIC_RELEASE);
	}
	if (__atomic_load_n(&unmodified, __ATOMIC_ACQUIRE)) {
		int saved = errno;
		wfpr__unmodified_closing(fd);
		errno = saved;
	}
	return real(fd);
}
