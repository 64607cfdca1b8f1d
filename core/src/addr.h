#ifndef WFPR_SRC_ADDR_H
#define WFPR_SRC_ADDR_H

/* Small helpers over IPv4/IPv6 socket addresses, shared by the layer and the backends. */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>

static inline uint16_t addr_port(const struct sockaddr_storage *a)
{
	if (a->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)a)->sin_port);
	if (a->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
	return 0;
}

static inline socklen_t addr_len(const struct sockaddr_storage *a)
{
	return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* Same family, address and port. */
static inline bool addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
	return x->sin6_port == y->sin6_port && IN6_ARE_ADDR_EQUAL(&x->sin6_addr, &y->sin6_addr);
}

/* The wildcard address of its family, port 0: what an unbound socket shows. */
static inline bool addr_unbound(const struct sockaddr_storage *a)
{
	struct sockaddr_storage any;
	memset(&any, 0, sizeof(any));
	any.ss_family = a->ss_family;
	return (a->ss_family == AF_INET || a->ss_family == AF_INET6) && addr_equal(a, &any);
}

/* Addresses equal, or one of them the wildcard (a socket bound to any address). */
static inline bool addr_ip_matches(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		in_addr_t x = ((const struct sockaddr_in *)a)->sin_addr.s_addr;
		in_addr_t y = ((const struct sockaddr_in *)b)->sin_addr.s_addr;
		return x == y || x == htonl(INADDR_ANY) || y == htonl(INADDR_ANY);
	}
	const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr;
	const struct in6_addr *y = &((const struct sockaddr_in6 *)b)->sin6_addr;
	return IN6_ARE_ADDR_EQUAL(x, y) || IN6_IS_ADDR_UNSPECIFIED(x) || IN6_IS_ADDR_UNSPECIFIED(y);
}

/* An IPv4-mapped IPv6 address (a dual-stack socket talking IPv4) as the
 * IPv4 address it is, so both ends of one connection name it alike. */
static inline void addr_unmap(struct sockaddr_storage *a)
{
	const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)a;
	if (a->ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr))
		return;
	struct sockaddr_in v4;
	memset(&v4, 0, sizeof(v4));
	v4.sin_family = AF_INET;
	v4.sin_port = v6->sin6_port;
	memcpy(&v4.sin_addr, &v6->sin6_addr.s6_addr[12], 4);
	memset(a, 0, sizeof(*a));
	memcpy(a, &v4, sizeof(v4));
}

/* The IPv4 address v4 as an IPv4-mapped IPv6 address (for an IPv6 socket). */
static inline void addr_map_v6(struct sockaddr_storage *out, const struct sockaddr_storage *v4)
{
	const struct sockaddr_in *in = (const struct sockaddr_in *)v4;
	struct sockaddr_in6 v6;
	memset(&v6, 0, sizeof(v6));
	v6.sin6_family = AF_INET6;
	v6.sin6_port = in->sin_port;
	v6.sin6_addr.s6_addr[10] = v6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&v6.sin6_addr.s6_addr[12], &in->sin_addr, 4);
	memset(out, 0, sizeof(*out));
	memcpy(out, &v6, sizeof(v6));
}

/* Does a socket bound at `at` take connections to a: at is a itself, or
 * the wildcard address of a's family at a's port? */
static inline bool addr_listens_on(const struct sockaddr_storage *at, const struct sockaddr_storage *a)
{
	if (addr_equal(at, a))
		return true;
	struct sockaddr_storage any;
	memset(&any, 0, sizeof(any));
	any.ss_family = at->ss_family;
	if (at->ss_family == AF_INET)
		((struct sockaddr_in *)&any)->sin_port = ((const struct sockaddr_in *)at)->sin_port;
	else if (at->ss_family == AF_INET6)
		((struct sockaddr_in6 *)&any)->sin6_port = ((const struct sockaddr_in6 *)at)->sin6_port;
	else
		return false;
	return addr_equal(at, &any) && at->ss_family == a->ss_family && addr_port(at) == addr_port(a);
}

#endif
