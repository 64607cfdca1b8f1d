#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>
#include "addr.h"
#include "sockutil.h"
#include "wfpr/socket.h"

uint64_t wfpr__socket_cookie(int fd)
{
	uint64_t cookie = 0;
	socklen_t len = sizeof(cookie);
	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) < 0)
		return 0;
	return cookie;
}

int wfpr__socket_protocol(int fd)
{
	int protocol = 0;
	socklen_t len = sizeof(protocol);
	if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) < 0) {
		if (errno == EBADF)
			errno = ENOTSOCK;
		return -1;
	}
	return protocol;
}

bool wfpr__socket_nonblocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

uint16_t wfpr__socket_local(int fd, struct sockaddr_storage *out)
{
	socklen_t len = sizeof(*out);
	memset(out, 0, sizeof(*out));
	if (getsockname(fd, (struct sockaddr *)out, &len) < 0)
		return 0;
	return addr_port(out);
}

bool wfpr__socket_takes(int fd, const struct sockaddr_storage *a)
{
	struct sockaddr_storage local;
	int listening = 0;
	socklen_t len = sizeof(listening);
	int protocol = wfpr__socket_protocol(fd);
	if (protocol == IPPROTO_TCP &&
	    (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening))
		return false;
	if ((protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) || wfpr__socket_local(fd, &local) == 0)
		return false;
	return addr_listens_on(&local, a);
}

/* TCP binds to the target's address (the source the kernel would pick for
 * a local destination); UDP, which may still send elsewhere, to the wildcard. */
int wfpr__socket_bind_for_redirect(int fd, int protocol, const struct sockaddr_storage *target,
                             struct sockaddr_storage *local)
{
	if (wfpr__socket_local(fd, local) != 0)
		return 0;
	struct sockaddr_storage addr;
	memset(&addr, 0, sizeof(addr));
	addr.ss_family = local->ss_family;
	if (protocol == IPPROTO_TCP && target->ss_family == local->ss_family)
		addr = *target;
	if (addr.ss_family == AF_INET)
		((struct sockaddr_in *)&addr)->sin_port = 0;
	else
		((struct sockaddr_in6 *)&addr)->sin6_port = 0;
	if (bind(fd, (struct sockaddr *)&addr, addr_len(&addr)) < 0)
		return -1;
	wfpr__socket_local(fd, local);
	return 0;
}

int64_t wfpr__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t wfpr__udp_flow_idle_ns(void)
{
	static int64_t idle; /* read once: a process has one setting */
	int64_t v = __atomic_load_n(&idle, __ATOMIC_RELAXED);
	if (v == 0) {
		const char *env = getenv("WFPR_UDP_IDLE_MS");
		char *end;
		long long ms = env && *env ? strtoll(env, &end, 10) : 0;
		if (!env || !*env || *end || ms <= 0)
			ms = WFPR_UDP_FLOW_IDLE_MS;
		v = ms * 1000000LL;
		__atomic_store_n(&idle, v, __ATOMIC_RELAXED);
	}
	return v;
}

int wfpr__parse_address(const char *text, struct sockaddr_storage *out)
{
	char host[64], *end;
	const char *colon = text ? strrchr(text, ':') : NULL;
	if (!colon || colon == text || (size_t)(colon - text) >= sizeof(host) || !colon[1] || colon[1] == '-')
		return -1;
	memcpy(host, text, (size_t)(colon - text));
	host[colon - text] = '\0';
	long port = strtol(colon + 1, &end, 10);
	if (*end || port < 0 || port > 65535)
		return -1;
	memset(out, 0, sizeof(*out));
	struct sockaddr_in *v4 = (struct sockaddr_in *)out;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
	size_t n = strlen(host);
	if (host[0] == '[' && n > 2 && host[n - 1] == ']') {
		host[n - 1] = '\0';
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		return inet_pton(AF_INET6, host + 1, &v6->sin6_addr) == 1 ? 0 : -1;
	}
	v4->sin_family = AF_INET;
	v4->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, host, &v4->sin_addr) == 1 ? 0 : -1;
}
