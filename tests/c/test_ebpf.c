/* The eBPF backend against the real kernel (root). The test loads the BPF
 * programs on a cgroup of its own and forks a child into it; the child is
 * client, server and hand-driven proxies at once, so the IOCTL rows run
 * against records the kernel issued. Exit 77 (skipped, with the reason)
 * without root or BPF. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "loader.h"
#include "../../core/src/record_wire.h"
#include "support.h"
#include "test.h"

#define HOP4 WFPR__WIRE_HOP_SIZE(4) /* one hop as the kernel writes it */
#define HOP6 WFPR__WIRE_HOP_SIZE(16)

static ebpf_instance *instance;

#define QUERY(fd, code, buf, cap, len) wfpr_ioctl(fd, code, NULL, 0, buf, cap, len, NULL, NULL)
#define RECORDS WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
#define CONTEXT WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT
#define SET(fd, blob, n, len) wfpr_ioctl(fd, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, blob, n, NULL, 0, len, NULL, NULL)

typedef struct proxy_slot {
	int listen_fd, udp_fd;
	struct sockaddr_storage addr;
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
} proxy_slot;

static proxy_slot slots[16];

/* A redirector in slot i: a TCP listener and a UDP socket on one loopback port. */
static void add_slot(unsigned int i)
{
	proxy_slot *p = &slots[i];
	p->listen_fd = tcp_listen(&p->addr);
	p->udp_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	CHECK(p->listen_fd >= 0 && p->udp_fd >= 0);
	CHECK_EQ(bind(p->udp_fd, (struct sockaddr *)&p->addr, sizeof(struct sockaddr_in)), 0);
	memset(p->id, 0, sizeof(p->id));
	p->id[0] = 0xe0;
	p->id[15] = (uint8_t)i;
	CHECK_EQ(ebpf_add_redirector(instance, i, p->id, 100 + i, getpid(), &p->addr, NULL), 0);
	CHECK_EQ(ebpf_add_filter(instance, i, NULL, 0, 0, 65535, 0, 1000 - i), 0);
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family || addr_port(a) != addr_port(b))
		return false;
	if (a->ss_family == AF_INET)
		return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
	return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr, 16) == 0;
}

static bool readable(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, ms) == 1;
}

static void echo_once(int fd)
{
	const char hello[] = "hello through the kernel";
	char back[sizeof(hello)];
	CHECK_EQ(write(fd, hello, sizeof(hello)), (ssize_t)sizeof(hello));
	shutdown(fd, SHUT_WR);
	CHECK_EQ(read(fd, back, sizeof(back)), (ssize_t)sizeof(back));
	CHECK(memcmp(hello, back, sizeof(hello)) == 0);
}

/* Every row of the IOCTL table that a kernel-issued record can reach, and
 * the record's bytes as the decoder reads them. */
static void test_ioctl_rows(void)
{
	echo_server server;
	CHECK_EQ(echo_server_start(&server, 1), 0);
	int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(client, (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	struct sockaddr_storage peer, local;
	socklen_t n = sizeof(peer);
	CHECK_EQ(getpeername(client, (struct sockaddr *)&peer, &n), 0);
	CHECK(same_addr(&peer, &server.addr)); /* the client still sees where it was going */
	n = sizeof(local);
	getsockname(client, (struct sockaddr *)&local, &n);
	CHECK(readable(slots[0].listen_fd, 2000));
	int accepted = accept(slots[0].listen_fd, NULL, NULL);
	CHECK(accepted >= 0);

	uint32_t need = 0, len = 0;
	uint8_t small[2], records[WFPR_RECORD_MAX_SIZE];
	CHECK_FAILS_WITH(QUERY(accepted, RECORDS, NULL, 0, &need), WFPR_ERROR_INSUFFICIENT_BUFFER);
	CHECK_EQ(need, 12 + HOP4); /* one IPv4 hop */
	CHECK_FAILS_WITH(QUERY(accepted, RECORDS, small, sizeof(small), &len), WFPR_WSAEINVAL);
	CHECK_FAILS_WITH(QUERY(accepted, RECORDS, records, need - 1, &len), WFPR_ERROR_INSUFFICIENT_BUFFER);
	CHECK_EQ(len, need);
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, RECORDS, NULL, 0, records, sizeof(records), NULL, NULL, NULL), WFPR_WSAEFAULT);
	CHECK_EQ(QUERY(accepted, RECORDS, records, need, &len), 0);
	CHECK_EQ(len, need);

	/* overlapped: done at once (the kernel issued the record before accept), completion still signalled */
	wfpr_overlapped ov;
	CHECK_EQ(wfpr_overlapped_init(&ov), 0);
	CHECK_EQ(wfpr_socket_set_overlapped(accepted, 1), 0);
	uint8_t again_buf[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_ioctl(accepted, RECORDS, NULL, 0, again_buf, sizeof(again_buf), NULL, &ov, NULL), 0);
	uint32_t ov_bytes = 0;
	CHECK_EQ(wfpr_get_overlapped_result(accepted, &ov, &ov_bytes, 1, NULL), 0);
	CHECK_EQ(ov_bytes, need);
	CHECK(memcmp(again_buf, records, need) == 0);
	wfpr_overlapped_dispose(&ov);

	/* the kernel's encoder and core/src/record.c's decoder agree */
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, records, len), 0);
	if (r) {
		CHECK_EQ(r->hop_count, 1);
		const wfpr_hop *h = &r->hops[0];
		CHECK(memcmp(h->redirector_id, slots[0].id, 16) == 0);
		CHECK_EQ(h->handle_id, 100);
		CHECK_EQ(h->proxy_pid, getpid());
		CHECK_EQ(h->protocol, IPPROTO_TCP);
		CHECK(same_addr(&h->original_remote, &server.addr));
		CHECK(same_addr(&h->original_local, &local));
		CHECK(same_addr(&h->target, &slots[0].addr));
		CHECK((long long)(h->time_ns / 1000000000ULL) - (long long)time(NULL) < 60);
		CHECK((long long)time(NULL) - (long long)(h->time_ns / 1000000000ULL) < 60);
	}
	wfpr_records_free(r);
	wfpr_redirect_state state;
	CHECK_EQ(wfpr_redirect_state_for_id(&state, records, len, slots[0].id), 0);
	CHECK_EQ(state, WFPR_CONNECTION_REDIRECTED_BY_SELF);

	struct sockaddr_storage context[2];
	CHECK_EQ(QUERY(accepted, CONTEXT, context, sizeof(context), &len), 0);
	CHECK_EQ(len, sizeof(context));
	CHECK(same_addr(&context[0], &server.addr));
	CHECK(same_addr(&context[1], &local));

	/* SET: forged, altered, truncated blobs are refused, and do not skip the redirect */
	int forged = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	uint8_t junk[200];
	RAND_bytes(junk, sizeof(junk));
	CHECK_FAILS_WITH(SET(forged, junk, sizeof(junk), &len), WFPR_WSAEINVAL);
	records[need - 1] ^= 1; /* the token */
	CHECK_FAILS_WITH(SET(forged, records, need, &len), WFPR_WSAEINVAL);
	records[need - 1] ^= 1;
	records[40] ^= 1; /* the handle, inside the hop */
	CHECK_FAILS_WITH(SET(forged, records, need, &len), WFPR_WSAEINVAL);
	records[40] ^= 1;
	CHECK_FAILS_WITH(SET(forged, records, need - 1, &len), WFPR_WSAEINVAL);
	CHECK_EQ(connect(forged, (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	CHECK(readable(slots[0].listen_fd, 2000)); /* still redirected to the proxy */
	int again = accept(slots[0].listen_fd, NULL, NULL);
	close(again);
	close(forged);

	/* the genuine record goes on; the connect is not redirected back to its proxy */
	int out = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(SET(out, records, need, &len), 0);
	CHECK_EQ(wfpr_connect(out, (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	CHECK_FAILS_WITH(SET(out, records, need, &len), WFPR_WSAEINVAL); /* connected: too late */
	echo_once(out);
	echo_server_join(&server);
	close(out);

	/* once the proxy's side is closed, the record is dead and SET refuses it */
	close(client);
	close(accepted);
	int late = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	int rc = 0;
	for (int i = 0; i < 100 && (rc = SET(late, records, need, &len)) == 0; i++)
		usleep(10000);
	CHECK_EQ(rc, WFPR_SOCKET_ERROR);
	CHECK_EQ(wfpr_get_last_error(), WFPR_WSAEINVAL);
	close(late);

	/* a connection to the proxy itself is not redirected, and has no record */
	int direct = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(direct, (struct sockaddr *)&slots[0].addr, addr_size(&slots[0].addr)), 0);
	int plain = accept(slots[0].listen_fd, NULL, NULL);
	CHECK_FAILS_WITH(QUERY(plain, RECORDS, records, sizeof(records), &len), WFPR_FWP_E_NOT_FOUND);
	CHECK_EQ(len, 0);
	close(plain);
	close(direct);

	/* a listening socket is not connected; neither TCP nor UDP; not a socket */
	CHECK_FAILS_WITH(QUERY(slots[0].listen_fd, RECORDS, records, sizeof(records), &len), WFPR_WSAENOTCONN);
	int pair[2];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
	CHECK_FAILS_WITH(QUERY(pair[0], RECORDS, records, sizeof(records), &len), WFPR_WSAEOPNOTSUPP);
	close(pair[0]);
	pair[0] = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK_FAILS_WITH(SET(pair[0], records, need, &len), WFPR_WSAEOPNOTSUPP);
	close(pair[0]);
	close(pair[1]);
	CHECK_EQ(pipe(pair), 0);
	CHECK_FAILS_WITH(QUERY(pair[0], RECORDS, records, sizeof(records), &len), WFPR_WSAENOTSOCK);
	close(pair[0]);
	close(pair[1]);
}

/* An IPv6 client to [::1]: sent to the IPv4 proxy, its hop keeps IPv6 addresses. */
static void test_ipv6(void)
{
	struct sockaddr_in6 six = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int server = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	socklen_t n = sizeof(six);
	CHECK_EQ(bind(server, (struct sockaddr *)&six, sizeof(six)), 0);
	CHECK_EQ(listen(server, 8), 0);
	getsockname(server, (struct sockaddr *)&six, &n);
	int client = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(client, (struct sockaddr *)&six, sizeof(six)), 0);
	struct sockaddr_in6 peer;
	n = sizeof(peer);
	CHECK_EQ(getpeername(client, (struct sockaddr *)&peer, &n), 0);
	CHECK(peer.sin6_port == six.sin6_port && memcmp(&peer.sin6_addr, &six.sin6_addr, 16) == 0);
	CHECK(readable(slots[0].listen_fd, 2000));
	int accepted = accept(slots[0].listen_fd, NULL, NULL);
	uint8_t records[WFPR_RECORD_MAX_SIZE];
	uint32_t len = 0;
	CHECK_EQ(QUERY(accepted, RECORDS, records, sizeof(records), &len), 0);
	CHECK_EQ(len, 12 + HOP6);
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, records, len), 0);
	if (r) {
		CHECK_EQ(r->hops[0].original_remote.ss_family, AF_INET6);
		CHECK(same_addr(&r->hops[0].original_remote, (struct sockaddr_storage *)&six));
	}
	wfpr_records_free(r);
	close(accepted);
	close(client);
	close(server);
}

/* Through all sixteen redirectors, each once, in weight order, then direct:
 * each proxy QUERYs, SETs and connects on to the original destination. */
static void test_sixteen_hops(void)
{
	echo_server server;
	CHECK_EQ(echo_server_start(&server, 1), 0);
	int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(client, (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	int accepted[16], outs[16];
	uint8_t records[WFPR_RECORD_MAX_SIZE];
	uint32_t len = 0;
	for (int i = 0; i < 16; i++) {
		CHECK(readable(slots[i].listen_fd, 2000));
		accepted[i] = accept(slots[i].listen_fd, NULL, NULL);
		CHECK_EQ(QUERY(accepted[i], RECORDS, records, sizeof(records), &len), 0);
		wfpr_redirect_state state = WFPR_CONNECTION_NOT_REDIRECTED;
		wfpr_redirect_state_for_id(&state, records, len, slots[i].id);
		CHECK_EQ(state, WFPR_CONNECTION_REDIRECTED_BY_SELF);
		CHECK_EQ(len, 12 + HOP4 * (i + 1));
		outs[i] = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
		CHECK_EQ(SET(outs[i], records, len, &len), 0);
		CHECK_EQ(connect(outs[i], (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	}
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, records, 12 + HOP4 * 16), 0);
	for (int i = 0; r && i < 16; i++)
		CHECK(memcmp(r->hops[i].redirector_id, slots[i].id, 16) == 0);
	wfpr_records_free(r);
	echo_once(outs[15]); /* the last one reached the server itself */
	echo_server_join(&server);
	for (int i = 0; i < 16; i++) {
		close(outs[i]);
		close(accepted[i]);
	}
	close(client);
}

/* UDP: the first datagram of a flow carries the records; replies come from
 * the original destination; the proxy's forward with the records goes direct. */
static void test_udp(void)
{
	udp_echo echo;
	CHECK_EQ(udp_echo_start(&echo), 0);
	int client = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int fwd = wfpr_socket(AF_INET, SOCK_DGRAM, 0, 0);
	proxy_slot *p = &slots[0];
	for (int round = 0; round < 2; round++) {
		char msg[32];
		int m = snprintf(msg, sizeof(msg), "datagram %d", round);
		CHECK_EQ(sendto(client, msg, (size_t)m, 0, (struct sockaddr *)&echo.addr, addr_size(&echo.addr)), m);
		CHECK(readable(p->udp_fd, 2000));
		char buf[64];
		uint8_t control[4096];
		struct sockaddr_storage from;
		struct iovec iov = {buf, sizeof(buf)};
		struct msghdr h = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1,
		                   .msg_control = control, .msg_controllen = sizeof(control)};
		ssize_t got = wfpr_recvmsg(p->udp_fd, &h, 0);
		CHECK_EQ(got, m);
		struct cmsghdr *c = CMSG_FIRSTHDR(&h);
		bool has_records = c && c->cmsg_level == IPPROTO_IP && c->cmsg_type == WFPR_IP_WFP_REDIRECT_RECORDS;
		CHECK_EQ(has_records, round == 0); /* with the first datagram only */
		struct msghdr f = {.msg_name = &echo.addr, .msg_namelen = addr_size(&echo.addr), .msg_iov = &iov, .msg_iovlen = 1};
		iov.iov_len = (size_t)got;
		uint8_t fcontrol[CMSG_SPACE(WFPR_RECORD_MAX_SIZE)];
		if (has_records) {
			wfpr_records *r = NULL;
			CHECK_EQ(wfpr_records_decode(&r, CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0)), 0);
			CHECK(r && r->hops[0].protocol == IPPROTO_UDP && same_addr(&r->hops[0].original_remote, &echo.addr));
			wfpr_records_free(r);
			struct cmsghdr *fc = (struct cmsghdr *)fcontrol;
			*fc = *c;
			memcpy(CMSG_DATA(fc), CMSG_DATA(c), c->cmsg_len - CMSG_LEN(0));
			f.msg_control = fcontrol;
			f.msg_controllen = CMSG_SPACE(c->cmsg_len - CMSG_LEN(0));
		}
		CHECK_EQ(wfpr_sendmsg(fwd, &f, 0), m); /* with its records: not redirected again */
		CHECK(readable(fwd, 2000));
		got = recv(fwd, buf, sizeof(buf), 0);
		CHECK_EQ(got, m);
		CHECK_EQ(sendto(p->udp_fd, buf, (size_t)got, 0, (struct sockaddr *)&from, addr_size(&from)), m);
		struct sockaddr_storage reply_from;
		socklen_t n = sizeof(reply_from);
		CHECK(readable(client, 2000));
		CHECK_EQ(recvfrom(client, buf, sizeof(buf), 0, (struct sockaddr *)&reply_from, &n), m);
		CHECK(memcmp(buf, msg, (size_t)m) == 0);
		CHECK(same_addr(&reply_from, &echo.addr)); /* from the original destination */
	}
	CHECK_EQ(__atomic_load_n(&echo.datagrams, __ATOMIC_RELAXED), 2);
	close(fwd);
	close(client);
	udp_echo_stop(&echo);
}

/* Annotations on a UDP socket go with its first datagram: the kernel takes
 * them after SET and refuses them once that datagram made the flow's hop
 * (the front end keeps no flows of its own on this backend). */
static void test_udp_annotate(void)
{
	udp_echo echo;
	CHECK_EQ(udp_echo_start(&echo), 0);
	int client = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int fwd = wfpr_socket(AF_INET, SOCK_DGRAM, 0, 0);
	proxy_slot *p = &slots[0];
	CHECK_EQ(sendto(client, "noted", 5, 0, (struct sockaddr *)&echo.addr, addr_size(&echo.addr)), 5);
	CHECK(readable(p->udp_fd, 2000));
	char buf[64];
	uint8_t control[4096];
	struct iovec iov = {buf, sizeof(buf)};
	struct msghdr h = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
	CHECK_EQ(wfpr_recvmsg(p->udp_fd, &h, 0), 5);
	struct cmsghdr *c = CMSG_FIRSTHDR(&h);
	CHECK(c && c->cmsg_type == WFPR_IP_WFP_REDIRECT_RECORDS);
	if (c) {
		CHECK_FAILS_WITH(wfpr_annotate(fwd, "dlp", "seen"), WFPR_WSAEINVAL); /* no records SET yet */
		CHECK_EQ(wfpr_setsockopt(fwd, IPPROTO_IP, WFPR_IP_WFP_REDIRECT_RECORDS, CMSG_DATA(c),
		                         (socklen_t)(c->cmsg_len - CMSG_LEN(0))), 0);
		CHECK_EQ(wfpr_annotate(fwd, "dlp", "seen"), 0);
		CHECK_EQ(wfpr_sendto(fwd, "noted", 5, 0, (struct sockaddr *)&echo.addr, addr_size(&echo.addr)), 5);
		CHECK_FAILS_WITH(wfpr_annotate(fwd, "dlp", "late"), WFPR_WSAEISCONN);
		CHECK(readable(fwd, 2000)); /* reached the server, not redirected again */
	}
	close(fwd);
	close(client);
	udp_echo_stop(&echo);
}

/* Filters: a higher-weight redirector for one /32 prefix, one port and TCP
 * only goes first there; the catch-all redirector comes after it in the
 * chain, and alone everywhere else. */
static void test_filters(void)
{
	struct sockaddr_in two = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.2", &two.sin_addr);
	int listen2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	socklen_t n = sizeof(two);
	CHECK_EQ(bind(listen2, (struct sockaddr *)&two, sizeof(two)), 0);
	CHECK_EQ(listen(listen2, 8), 0);
	getsockname(listen2, (struct sockaddr *)&two, &n);

	proxy_slot *p = &slots[1];
	p->listen_fd = tcp_listen(&p->addr);
	p->id[0] = 0xe1;
	struct sockaddr_storage prefix = {0};
	memcpy(&prefix, &two, sizeof(two));
	CHECK_EQ(ebpf_add_redirector(instance, 1, p->id, 101, getpid(), &p->addr, NULL), 0);
	CHECK_EQ(ebpf_add_filter(instance, 1, &prefix, 32, ntohs(two.sin_port), ntohs(two.sin_port), IPPROTO_TCP, 2000), 0);

	/* to 127.0.0.2:port: slot 1 first, then slot 0, then the server */
	int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(client, (struct sockaddr *)&two, sizeof(two)), 0);
	CHECK(readable(p->listen_fd, 2000));
	int a1 = accept(p->listen_fd, NULL, NULL);
	uint8_t records[WFPR_RECORD_MAX_SIZE];
	uint32_t len = 0;
	CHECK_EQ(QUERY(a1, RECORDS, records, sizeof(records), &len), 0);
	CHECK_EQ(len, 12 + HOP4);
	int o1 = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(SET(o1, records, len, &len), 0);
	CHECK_EQ(connect(o1, (struct sockaddr *)&two, sizeof(two)), 0);
	CHECK(readable(slots[0].listen_fd, 2000));
	int a0 = accept(slots[0].listen_fd, NULL, NULL);
	CHECK_EQ(QUERY(a0, RECORDS, records, sizeof(records), &len), 0);
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, records, len), 0);
	CHECK(r && r->hop_count == 2 && memcmp(r->hops[0].redirector_id, slots[1].id, 16) == 0 &&
	      memcmp(r->hops[1].redirector_id, slots[0].id, 16) == 0);
	wfpr_records_free(r);
	int o0 = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(SET(o0, records, len, &len), 0);
	CHECK_EQ(connect(o0, (struct sockaddr *)&two, sizeof(two)), 0);
	CHECK(readable(listen2, 2000)); /* the server, at last */
	int served = accept(listen2, NULL, NULL);
	close(served);

	/* another port on 127.0.0.2, or another address: slot 0 alone */
	struct sockaddr_storage other_addr;
	int other = tcp_listen(&other_addr);
	int c2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(c2, (struct sockaddr *)&other_addr, addr_size(&other_addr)), 0);
	CHECK(readable(slots[0].listen_fd, 2000));
	CHECK(!readable(p->listen_fd, 0));
	int a2 = accept(slots[0].listen_fd, NULL, NULL);
	CHECK_EQ(QUERY(a2, RECORDS, records, sizeof(records), &len), 0);
	CHECK_EQ(len, 12 + HOP4);
	int fds[] = {client, a1, o1, a0, o0, other, c2, a2, listen2, p->listen_fd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		close(fds[i]);
}

static int child(void)
{
	if (ebpf_enter(instance, getpid()) != 0) {
		fprintf(stderr, "cannot enter the cgroup: %s\n", strerror(errno));
		return 1;
	}
	wfpr_ebpf_attach(1);
	add_slot(0);
	RUN(test_ioctl_rows);
	RUN(test_ipv6);
	RUN(test_udp);
	RUN(test_udp_annotate);
	RUN(test_filters);
	for (unsigned int i = 1; i < 16; i++)
		add_slot(i);
	RUN(test_sixteen_hops);
	TEST_MAIN_END();
}

int main(void)
{
	char why[512];
	if (ebpf_open(&instance, why, sizeof(why)) != 0) {
		printf("SKIP: the eBPF backend cannot load here: %s\n", why);
		return 77;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int rc = child();
		fflush(stdout);
		fflush(stderr);
		_exit(rc);
	}
	int status = 1;
	waitpid(pid, &status, 0);
	char pins[64];
	snprintf(pins, sizeof(pins), EBPF_PIN_ROOT "/%d", (int)getpid());
	ebpf_close(instance);
	struct stat st;
	CHECK(stat(pins, &st) != 0); /* cleanup: no pins left */
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	printf("%s cleanup\n", test_failures ? "FAIL" : "ok  ");
	TEST_MAIN_END();
}
