/* Every row of the IOCTL conformance table (docs/ioctl.md), on real sockets,
 * against each backend: `test_ioctl inproc` (a layer in this process),
 * `test_ioctl preload` (a broker thread; this process is its proxy) and
 * `test_ioctl ebpf` (root: the kernel's programs on a cgroup of the test's
 * own; exit 77, skipped with the reason, where they cannot load). A row that
 * cannot happen on a backend says so, with why (docs/ioctl.md lists them). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "../../core/src/record.h"
#include "support.h"
#include "test.h"
#ifdef WFPR_HAVE_EBPF
#include "loader.h"
#endif

#define QUERY_RECORDS WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
#define QUERY_CONTEXT WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT
#define SET_RECORDS WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS
#define UNUSED_PORT 9 /* discard: nothing listens; every connect to it is redirected */

/* ---- the backends under test ---------------------------------------------- */

/* The proxy every row uses: connections to UNUSED_PORT go to proxy_fd. */
static int proxy_fd = -1;
static struct sockaddr_storage proxy_addr;
static uint8_t proxy_id[WFPR_REDIRECTOR_ID_SIZE];

typedef struct fixture {
	const char *name;
	unsigned int bit;
	/* 0, or 77 (skip) with the reason in why */
	int (*setup)(char *why, size_t why_len);
	void (*teardown)(void);
	/* detach the backend from this process, and attach it again */
	void (*detach)(void);
	void (*attach)(void);
	/* SETs the backend refused so far, or -1 where it keeps no count */
	long long (*refused_sets)(void);
} fixture;

static const fixture *F;

/* inproc: a layer in this process, with a callout for UNUSED_PORT */
static wfpr_layer *layer;
static manual_redirector manual;

static int inproc_setup(char *why, size_t why_len)
{
	(void)why, (void)why_len;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(manual_redirector_init(&manual, layer, "proxy", IPPROTO_TCP, UNUSED_PORT, 10), 0);
	proxy_fd = manual.listen_fd;
	proxy_addr = manual.addr;
	memcpy(proxy_id, wfpr_redirect_handle_id(manual.handle), sizeof(proxy_id));
	return wfpr_inproc_attach(layer);
}

static void inproc_teardown(void)
{
	wfpr_inproc_detach(layer);
	close(proxy_fd);
	wfpr_layer_free(layer);
}

static void inproc_detach(void)
{
	wfpr_inproc_detach(layer);
}

static void inproc_attach(void)
{
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
}

static long long inproc_refused_sets(void)
{
	wfpr_layer_stats st;
	CHECK_EQ(wfpr_layer_get_stats(&st, layer), 0);
	return (long long)st.bad_records;
}

/* preload: a broker thread; this process registers as its only proxy */
static char broker_path[64];
static wfpr_broker *broker;
static pthread_t broker_thread;

static void preload_attach(void)
{
	CHECK_EQ(wfpr_preload_attach(broker_path), 0);
	/* a proxy that comes back takes its redirector back, once the broker saw it go */
	int rc = WFPR_WSAEADDRINUSE;
	for (int i = 0; i < 200 && rc == WFPR_WSAEADDRINUSE; i++)
		if ((rc = wfpr_preload_register(proxy_id, "proxy", &proxy_addr)) == WFPR_WSAEADDRINUSE)
			usleep(10000);
	CHECK_EQ(rc, 0);
}

static int preload_setup(char *why, size_t why_len)
{
	(void)why, (void)why_len;
	snprintf(broker_path, sizeof(broker_path), "/tmp/wfpr-test-ioctl-%d.sock", (int)getpid());
	int rc = broker_thread_start(&broker, &broker_thread, broker_path, 0);
	if (rc != 0)
		return rc;
	proxy_fd = tcp_listen(&proxy_addr);
	preload_attach();
	return 0;
}

static void preload_detach(void)
{
	CHECK_EQ(wfpr_preload_attach(NULL), 0);
}

static void preload_teardown(void)
{
	wfpr_preload_attach(NULL);
	close(proxy_fd);
	broker_thread_stop(broker, broker_thread);
}

static long long preload_refused_sets(void)
{
	wfpr_layer_stats st;
	CHECK_EQ(wfpr_layer_get_stats(&st, wfpr_broker_layer(broker)), 0);
	return (long long)st.bad_records;
}

static long long not_counted(void)
{
	return -1;
}

#ifdef WFPR_HAVE_EBPF
/* eBPF: the programs on a cgroup of the test's own, which this process
 * (a child of the one that loaded them) enters; one redirector for
 * UNUSED_PORT, in the kernel. */
static ebpf_instance *instance;

static int ebpf_setup(char *why, size_t why_len)
{
	if (ebpf_enter(instance, getpid()) != 0) {
		snprintf(why, why_len, "cannot enter the cgroup: %s", strerror(errno));
		return 1;
	}
	proxy_fd = tcp_listen(&proxy_addr);
	memset(proxy_id, 0, sizeof(proxy_id));
	proxy_id[0] = 0xe0;
	CHECK_EQ(ebpf_add_redirector(instance, 0, proxy_id, 100, getpid(), &proxy_addr, NULL), 0);
	CHECK_EQ(ebpf_add_filter(instance, 0, NULL, 0, UNUSED_PORT, UNUSED_PORT, IPPROTO_TCP, 1000), 0);
	return wfpr_ebpf_attach(1);
}

static void ebpf_teardown(void)
{
	wfpr_ebpf_attach(0);
	close(proxy_fd);
}

static void ebpf_detach(void)
{
	CHECK_EQ(wfpr_ebpf_attach(0), 0);
}

static void ebpf_attach_again(void)
{
	CHECK_EQ(wfpr_ebpf_attach(1), 0);
}
#endif

enum { INPROC = 1, PRELOAD = 2, EBPF = 4 };

static const fixture fixtures[] = {
	{"inproc", INPROC, inproc_setup, inproc_teardown, inproc_detach, inproc_attach, inproc_refused_sets},
	{"preload", PRELOAD, preload_setup, preload_teardown, preload_detach, preload_attach, preload_refused_sets},
#ifdef WFPR_HAVE_EBPF
	{"ebpf", EBPF, ebpf_setup, ebpf_teardown, ebpf_detach, ebpf_attach_again, not_counted},
#endif
};

/* ---- the rows -------------------------------------------------------------- */

/* A redirected connection: the client's socket and the proxy's accepted one. */
typedef struct pair {
	int client, accepted;
} pair;

static pair redirected(void)
{
	pair p = {wfpr_socket(AF_INET, SOCK_STREAM, 0, 0), -1};
	struct sockaddr_storage dst = loopback_port(UNUSED_PORT);
	CHECK_EQ(wfpr_connect(p.client, (struct sockaddr *)&dst, addr_size(&dst)), 0);
	struct pollfd pf = {.fd = proxy_fd, .events = POLLIN};
	CHECK_EQ(poll(&pf, 1, 5000), 1);
	p.accepted = wfpr_accept(proxy_fd, NULL, NULL);
	CHECK(p.accepted >= 0);
	return p;
}

static void close_pair(pair p)
{
	wfpr_closesocket(p.client);
	wfpr_closesocket(p.accepted);
}

static uint32_t required_size(int fd, uint32_t code)
{
	uint32_t need = 0;
	CHECK_FAILS_WITH(wfpr_ioctl(fd, code, NULL, 0, NULL, 0, &need, NULL, NULL), WFPR_ERROR_INSUFFICIENT_BUFFER);
	return need;
}

static void row_bytes_returned_null(void)
{
	pair p = redirected();
	uint8_t buf[1024];
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), NULL, NULL, NULL), WFPR_WSAEFAULT);
	close_pair(p);
}

static void row_unknown_code(void)
{
	pair p = redirected();
	uint32_t bytes = 77;
	uint8_t buf[1024];
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, 0x980000FF, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAEINVAL);
	CHECK_EQ(bytes, 0);
	close_pair(p);
}

static void row_protocol_lacks_it(void)
{
	int sv[2];
	uint32_t bytes = 77;
	uint8_t buf[64];
	CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	CHECK_FAILS_WITH(wfpr_ioctl(sv[0], QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAEOPNOTSUPP);
	CHECK_EQ(bytes, 0);
	close(sv[0]);
	close(sv[1]);
}

static void row_not_a_socket(void)
{
	int fds[2];
	uint32_t bytes = 77;
	uint8_t buf[64];
	CHECK_EQ(pipe(fds), 0);
	CHECK_FAILS_WITH(wfpr_ioctl(fds[0], QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENOTSOCK);
	CHECK_EQ(bytes, 0);
	close(fds[0]);
	close(fds[1]);
	CHECK_FAILS_WITH(wfpr_ioctl(-1, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENOTSOCK);
	CHECK_FAILS_WITH(wfpr_ioctl(fds[0], QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENOTSOCK);
}

static void row_not_connected(void)
{
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	uint32_t bytes = 77;
	uint8_t buf[64];
	CHECK_FAILS_WITH(wfpr_ioctl(fd, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENOTCONN);
	CHECK_EQ(bytes, 0);
	CHECK_FAILS_WITH(wfpr_ioctl(proxy_fd, QUERY_CONTEXT, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENOTCONN);
	wfpr_closesocket(fd);
}

static void row_never_redirected(void)
{
	struct sockaddr_storage addr;
	int listener = tcp_listen(&addr);
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(connect(fd, (struct sockaddr *)&addr, addr_size(&addr)), 0); /* no filter matches its port */
	int accepted = accept(listener, NULL, NULL);
	uint32_t bytes = 77;
	uint8_t buf[1024];
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_FWP_E_NOT_FOUND);
	CHECK_EQ(bytes, 0);
	CHECK_FAILS_WITH(wfpr_ioctl(fd, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_FWP_E_NOT_FOUND);
	close(accepted);
	close(listener);
	wfpr_closesocket(fd);
}

static void row_size_probe(void)
{
	pair p = redirected();
	uint32_t need = required_size(p.accepted, QUERY_RECORDS);
	CHECK(need > 12 && need <= WFPR_RECORD_MAX_SIZE);
	CHECK_EQ(required_size(p.accepted, QUERY_CONTEXT), 2 * sizeof(struct sockaddr_storage));
	uint8_t buf[8];
	uint32_t bytes = 0;
	/* out may be non-NULL too: a zero length is a probe either way */
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, 0, &bytes, NULL, NULL), WFPR_ERROR_INSUFFICIENT_BUFFER);
	CHECK_EQ(bytes, need);
	close_pair(p);
}

static void row_smaller_than_ulong(void)
{
	pair p = redirected();
	uint8_t buf[4];
	for (uint32_t len = 1; len < 4; len++) {
		uint32_t bytes = 77;
		CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, len, &bytes, NULL, NULL), WFPR_WSAEINVAL);
		CHECK_EQ(bytes, 0);
	}
	close_pair(p);
}

static void row_insufficient(void)
{
	pair p = redirected();
	uint32_t need = required_size(p.accepted, QUERY_RECORDS);
	uint8_t buf[1024];
	for (uint32_t len = 4; len < need; len += 37) {
		uint32_t bytes = 0;
		memset(buf, 0xAA, sizeof(buf));
		CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, len, &bytes, NULL, NULL), WFPR_ERROR_INSUFFICIENT_BUFFER);
		CHECK_EQ(bytes, need);
		size_t touched = 0;
		for (size_t i = 0; i < sizeof(buf); i++)
			touched += buf[i] != 0xAA;
		CHECK_EQ(touched, 0);
	}
	close_pair(p);
}

static void row_out_null(void)
{
	pair p = redirected();
	uint32_t need = required_size(p.accepted, QUERY_RECORDS), bytes = 0;
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, NULL, 1024, &bytes, NULL, NULL), WFPR_WSAEFAULT);
	CHECK_EQ(bytes, need);
	close_pair(p);
}

static void row_enough_room(void)
{
	pair p = redirected();
	uint32_t need = required_size(p.accepted, QUERY_RECORDS), bytes = 0;
	uint8_t buf[1024];
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), 0);
	CHECK_EQ(bytes, need);
	CHECK(bytes != 0);
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, buf, bytes), 0);
	CHECK(r && r->hop_count == 1);
	if (r) {
		struct sockaddr_storage dst = loopback_port(UNUSED_PORT);
		CHECK(memcmp(&r->hops[0].original_remote, &dst, sizeof(struct sockaddr_in)) == 0);
		CHECK(memcmp(&r->hops[0].target, &proxy_addr, sizeof(struct sockaddr_in)) == 0);
		CHECK(memcmp(r->hops[0].redirector_id, proxy_id, 16) == 0);
		CHECK_EQ(r->hops[0].protocol, IPPROTO_TCP);
	}
	wfpr_records_free(r);

	/* The default context: original remote, then original local (the client's address). */
	struct sockaddr_storage ctx[2], client;
	socklen_t len = sizeof(client);
	getsockname(p.client, (struct sockaddr *)&client, &len);
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_CONTEXT, NULL, 0, ctx, sizeof(ctx), &bytes, NULL, NULL), 0);
	CHECK_EQ(bytes, sizeof(ctx));
	struct sockaddr_storage dst = loopback_port(UNUSED_PORT);
	CHECK(memcmp(&ctx[0], &dst, sizeof(struct sockaddr_in)) == 0);
	CHECK(memcmp(&ctx[1], &client, sizeof(struct sockaddr_in)) == 0);
	close_pair(p);
}

static void row_input_ignored(void)
{
	pair p = redirected();
	uint8_t junk[16] = {1, 2, 3}, buf[1024];
	uint32_t bytes = 0;
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, junk, sizeof(junk), buf, sizeof(buf), &bytes, NULL, NULL), 0);
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 12345, buf, sizeof(buf), &bytes, NULL, NULL), 0);
	close_pair(p);
}

static int query_into(int fd, uint8_t *buf, uint32_t cap, uint32_t *len)
{
	return wfpr_ioctl(fd, QUERY_RECORDS, NULL, 0, buf, cap, len, NULL, NULL);
}

static void row_set_bad_blobs(void)
{
	pair p = redirected();
	uint8_t blob[1024], bad[1024];
	uint32_t len = 0, bytes = 77;
	CHECK_EQ(query_into(p.accepted, blob, sizeof(blob), &len), 0);
	int out = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);

	/* the good blob first, to show the rest fail for their flaw alone */
	CHECK_EQ(wfpr_ioctl(out, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL), 0);

	memset(bad, 0x5A, sizeof(bad));
	CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, bad, len, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL); /* malformed */
	CHECK_EQ(bytes, 0);
	for (uint32_t i = 0; i < len; i++) { /* altered: every single bit */
		for (int bit = 0; bit < 8; bit++) {
			memcpy(bad, blob, len);
			bad[i] ^= (uint8_t)(1u << bit);
			CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, bad, len, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL);
		}
	}
	for (uint32_t cut = 0; cut < len; cut++) /* truncated */
		CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, blob, cut, NULL, 0, &bytes, NULL, NULL),
		                 WFPR_WSAEINVAL);
	static uint8_t huge[WFPR_RECORD_MAX_SIZE + 1]; /* oversized */
	memcpy(huge, blob, len);
	CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, huge, sizeof(huge), NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL);
	CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, NULL, 10, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEFAULT);

	/* forged: well formed, every field plausible, tokens under a key the layer never had */
	record_view view;
	CHECK_EQ(wfpr__record_parse(&view, blob, len), 0);
	uint8_t key[RECORD_KEY_SIZE] = {42}, *forged = NULL;
	size_t forged_len = 0;
	CHECK_EQ(wfpr__record_append(&forged, &forged_len, NULL, NULL, 0, &view.hops[0], NULL, 0, key), 0);
	CHECK_EQ(forged_len, len);
	CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, forged, (uint32_t)forged_len, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL);
	free(forged);

	/* a dead connection: both ends closed, the genuine blob is refused (the
	 * kernel forgets the record when the socket reaches TCP_CLOSE) */
	close_pair(p);
	int rc = 0;
	for (int i = 0; i < 200 && (rc = wfpr_ioctl(out, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL)) == 0; i++)
		usleep(10000);
	CHECK_EQ(rc, WFPR_SOCKET_ERROR);
	CHECK_EQ(wfpr_get_last_error(), WFPR_WSAEINVAL);
	long long refused = F->refused_sets();
	CHECK(refused == -1 || refused > 8 * (long long)len);
	wfpr_closesocket(out);
}

static void row_set_after_connect(void)
{
	pair p = redirected();
	uint8_t blob[1024];
	uint32_t len = 0, bytes = 77;
	CHECK_EQ(query_into(p.accepted, blob, sizeof(blob), &len), 0);
	CHECK_FAILS_WITH(wfpr_ioctl(p.client, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL);
	CHECK_EQ(bytes, 0);
	close_pair(p);
}

/* A record is the proxy's right to pass one connection on: once a socket
 * has connected with it, SET on another socket is refused. */
static void row_set_single_use(void)
{
	pair p = redirected();
	uint8_t blob[1024];
	uint32_t len = 0, bytes = 77;
	CHECK_EQ(query_into(p.accepted, blob, sizeof(blob), &len), 0);
	struct sockaddr_storage sink_addr = loopback_port(0);
	int sink = tcp_listen(&sink_addr);
	int first = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0), second = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0),
	    third = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_ioctl(first, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL), 0);
	CHECK_EQ(wfpr_ioctl(second, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL), 0); /* unused yet */
	CHECK_EQ(wfpr_connect(first, (struct sockaddr *)&sink_addr, sizeof(struct sockaddr_in)), 0);
	CHECK_FAILS_WITH(wfpr_ioctl(third, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL);
	CHECK_EQ(bytes, 0);
	CHECK_FAILS_WITH(wfpr_connect(second, (struct sockaddr *)&sink_addr, sizeof(struct sockaddr_in)), WFPR_WSAEINVAL);
	wfpr_closesocket(first);
	wfpr_closesocket(second);
	wfpr_closesocket(third);
	close(sink);
	close_pair(p);
}

/* wfpr_annotate: after SET, before the connect, within the limits */
static void row_annotate(void)
{
	pair p = redirected();
	uint8_t blob[1024];
	uint32_t len = 0, bytes = 0;
	CHECK_EQ(query_into(p.accepted, blob, sizeof(blob), &len), 0);
	struct sockaddr_storage sink_addr = loopback_port(0);
	int sink = tcp_listen(&sink_addr);
	int s = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_FAILS_WITH(wfpr_annotate(s, NULL, "x"), WFPR_WSAEFAULT);
	CHECK_FAILS_WITH(wfpr_annotate(s, "av", "inline"), WFPR_WSAEINVAL); /* no records SET */
	CHECK_FAILS_WITH(wfpr_annotate(-1, "av", "inline"), WFPR_WSAENOTSOCK);
	CHECK_EQ(wfpr_ioctl(s, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL), 0);
	CHECK_FAILS_WITH(wfpr_annotate(s, "a b", "x"), WFPR_WSAEINVAL);
	CHECK_FAILS_WITH(wfpr_annotate(s, "av", "tab\there"), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr_annotate(s, "av", "clean"), 0);
	CHECK_EQ(wfpr_annotate(s, "av", "inline"), 0);
	CHECK_FAILS_WITH(wfpr_annotate(s, "kkkkkk", "012345678901234567890123456789012345678901234567"),
	                 WFPR_WSAEMSGSIZE); /* 10 + 2 + 6 + 48 > 64 */
	CHECK_EQ(wfpr_connect(s, (struct sockaddr *)&sink_addr, sizeof(struct sockaddr_in)), 0);
	CHECK_FAILS_WITH(wfpr_annotate(s, "late", "x"), WFPR_WSAEISCONN);
	wfpr_closesocket(s);
	close(sink);
	close_pair(p);
}

static void row_overlapped_at_once(void)
{
	CHECK_EQ(wfpr_socket_set_overlapped(proxy_fd, 1), 0);
	pair p = redirected();
	CHECK_EQ(wfpr_socket_set_overlapped(proxy_fd, 0), 0);
	wfpr_overlapped ov;
	CHECK_EQ(wfpr_overlapped_init(&ov), 0);
	uint8_t buf[1024];
	uint32_t bytes = 0, got = 0;
	/* the record is here (on preload it may still be on its way to this
	 * process, and an overlapped QUERY would then pend) */
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), 0);
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, &ov, NULL), 0);
	CHECK(bytes > 0);
	struct pollfd pf = {.fd = ov.event_fd, .events = POLLIN};
	CHECK_EQ(poll(&pf, 1, 0), 1); /* completion is signalled all the same */
	CHECK_EQ(wfpr_get_overlapped_result(p.accepted, &ov, &got, 0, NULL), 0);
	CHECK_EQ(got, bytes);
	wfpr_overlapped_dispose(&ov);
	close_pair(p);
}

static void row_ov_on_plain_socket(void)
{
	pair p = redirected();
	wfpr_overlapped ov;
	CHECK_EQ(wfpr_overlapped_init(&ov), 0);
	uint8_t buf[1024];
	uint32_t bytes = 0;
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, &ov, NULL), 0);
	CHECK(bytes > 0);
	struct pollfd pf = {.fd = ov.event_fd, .events = POLLIN};
	CHECK_EQ(poll(&pf, 1, 0), 0); /* ignored: nothing signalled */
	/* synchronous, so bytes_returned is required */
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), NULL, &ov, NULL), WFPR_WSAEFAULT);
	wfpr_overlapped_dispose(&ov);
	close_pair(p);
}

static void row_backend_unreachable(void)
{
	pair p = redirected();
	uint8_t buf[1024];
	uint32_t bytes = 77;
	F->detach();
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENETDOWN);
	CHECK_EQ(bytes, 0);
	int other = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_FAILS_WITH(wfpr_ioctl(other, SET_RECORDS, buf, 64, NULL, 0, &bytes, NULL, NULL), WFPR_WSAENETDOWN);
	wfpr_closesocket(other);
	F->attach();
	close_pair(p);
}

static int callout_ioctl_error, callout_layer_error;

static wfpr_action reentrant(void *user, wfpr_connect_request *req)
{
	(void)req;
	uint32_t bytes;
	uint8_t buf[64];
	wfpr_ioctl(*(int *)user, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL);
	callout_ioctl_error = wfpr_get_last_error();
	uint64_t id;
	wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
	fo.callout_id = 1;
	callout_layer_error = wfpr_filter_add(&id, layer, &fo); /* the layer is busy classifying */
	return WFPR_ACTION_PERMIT;
}

static void row_in_callback(void)
{
	pair p = redirected();
	wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
	co.classify = reentrant;
	co.user = &p.accepted;
	uint32_t id;
	uint64_t filter;
	CHECK_EQ(wfpr_callout_register(&id, layer, &co), 0);
	wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
	fo.callout_id = id;
	fo.remote_port_min = fo.remote_port_max = 7;
	fo.weight = 1000;
	CHECK_EQ(wfpr_filter_add(&filter, layer, &fo), 0);
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	struct sockaddr_storage dst = loopback_port(7);
	wfpr_connect(fd, (struct sockaddr *)&dst, addr_size(&dst)); /* refused: nothing listens on 7 */
	CHECK_EQ(callout_ioctl_error, WFPR_WSAEINPROGRESS);
	CHECK_EQ(callout_layer_error, WFPR_WSAEINPROGRESS);
	CHECK_EQ(wfpr_filter_remove(layer, filter), 0);
	wfpr_closesocket(fd);
	close_pair(p);
}

static void row_flush_nothing_pending(void)
{
	pair p = redirected();
	uint32_t bytes = 77;
	CHECK_EQ(wfpr_ioctl(p.accepted, WFPR_SIO_FLUSH, NULL, 0, NULL, 0, &bytes, NULL, NULL), 0);
	CHECK_EQ(bytes, 0);
	close_pair(p);
}

static void udp_option_on_tcp(void)
{
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0), one = 1;
	CHECK_FAILS_WITH(wfpr_setsockopt(fd, IPPROTO_IP, WFPR_IP_WFP_REDIRECT_CONTEXT, &one, sizeof(one)), WFPR_WSAENOPROTOOPT);
	wfpr_closesocket(fd);
}

static void error_table(void)
{
	CHECK_EQ(WFPR_WSAEFAULT, 10014);
	CHECK_EQ(WFPR_ERROR_INSUFFICIENT_BUFFER, 122);
	CHECK_EQ((uint32_t)WFPR_FWP_E_NOT_FOUND, 0x80320008u);
	CHECK(strcmp(wfpr_err_name(WFPR_WSAENOTCONN), "WSAENOTCONN") == 0);
	CHECK(strcmp(wfpr_err_name(WFPR_FWP_E_NOT_FOUND), "FWP_E_NOT_FOUND") == 0);
	CHECK(wfpr_err_name(12345) == NULL);
	CHECK(strcmp(wfpr_strerror(12345), "unknown error") == 0);
	CHECK_EQ(wfpr_err_from_errno(ENOTCONN), WFPR_WSAENOTCONN);
	wfpr_set_last_error(WFPR_WSAEINTR);
	CHECK_EQ(wfpr_get_last_error(), WFPR_WSAEINTR);
}

typedef struct row {
	const char *name;
	void (*run)(void);
	unsigned int cannot;   /* the backends where it cannot happen... */
	const char *why;       /* ...and why */
} row;

#define ROW(f) #f, f
static const row rows[] = {
	{ROW(error_table), 0, NULL},
	{ROW(row_bytes_returned_null), 0, NULL},
	{ROW(row_unknown_code), 0, NULL},
	{ROW(row_protocol_lacks_it), 0, NULL},
	{ROW(row_not_a_socket), 0, NULL},
	{ROW(row_not_connected), 0, NULL},
	{ROW(row_never_redirected), 0, NULL},
	{ROW(row_size_probe), 0, NULL},
	{ROW(row_smaller_than_ulong), 0, NULL},
	{ROW(row_insufficient), 0, NULL},
	{ROW(row_out_null), 0, NULL},
	{ROW(row_enough_room), 0, NULL},
	{ROW(row_input_ignored), 0, NULL},
	{ROW(row_set_bad_blobs), 0, NULL},
	{ROW(row_set_after_connect), 0, NULL},
	{ROW(row_set_single_use), 0, NULL},
	{ROW(row_annotate), 0, NULL},
	{ROW(row_overlapped_at_once), 0, NULL},
	{ROW(row_ov_on_plain_socket), 0, NULL},
	{ROW(row_in_callback), PRELOAD | EBPF,
	 "the callouts run in the broker's process (preload) or are BPF programs (eBPF): no wfpr_ioctl runs inside one"},
	{ROW(row_flush_nothing_pending), 0, NULL},
	{ROW(udp_option_on_tcp), 0, NULL},
	{ROW(row_backend_unreachable), 0, NULL},
};

static int run_rows(void)
{
	char why[256] = "";
	int rc = F->setup(why, sizeof(why));
	if (rc != 0) {
		printf("FAIL setting up the %s backend: %s\n", F->name, why[0] ? why : wfpr_err_name(rc));
		return 1;
	}
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		if (rows[i].cannot & F->bit) {
			printf("n/a  %s on %s: %s\n", rows[i].name, F->name, rows[i].why);
			continue;
		}
		int before = test_failures;
		rows[i].run();
		printf("%s %s on %s\n", test_failures == before ? "ok  " : "FAIL", rows[i].name, F->name);
	}
	F->teardown();
	TEST_MAIN_END();
}

int main(int argc, char **argv)
{
	const char *name = argc > 1 ? argv[1] : "inproc";
	for (size_t i = 0; i < sizeof(fixtures) / sizeof(fixtures[0]); i++)
		if (strcmp(fixtures[i].name, name) == 0)
			F = &fixtures[i];
	if (!F && strcmp(name, "ebpf") == 0) {
		printf("SKIP: the eBPF backend is not built here (it needs clang, bpftool, libbpf-dev and kernel BTF)\n");
		return 77;
	}
	if (!F) {
		fprintf(stderr, "usage: test_ioctl inproc|preload|ebpf\n");
		return 2;
	}
#ifdef WFPR_HAVE_EBPF
	if (F->bit == EBPF) {
		/* load in this process, run the rows in a child inside the cgroup,
		 * and clean up here whatever the child did */
		char why[512];
		if (ebpf_open(&instance, why, sizeof(why)) != 0) {
			printf("SKIP: the eBPF backend cannot load here: %s\n", why);
			return 77;
		}
		fflush(stdout);
		pid_t pid = fork();
		if (pid == 0) {
			int rc = run_rows();
			fflush(stdout);
			fflush(stderr);
			_exit(rc);
		}
		int status = 1;
		waitpid(pid, &status, 0);
		ebpf_close(instance);
		return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
	}
#endif
	return run_rows();
}
