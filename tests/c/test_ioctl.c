/* Every row of the IOCTL conformance table (docs/ioctl.md), on real sockets. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../core/src/record.h"
#include "support.h"
#include "test.h"

#define QUERY_RECORDS WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
#define QUERY_CONTEXT WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT
#define SET_RECORDS WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS
#define UNUSED_PORT 9 /* discard: nothing listens; every connect to it is redirected */

static wfpr_layer *layer;
static manual_redirector proxy;

/* A redirected connection: the client's socket and the proxy's accepted one. */
typedef struct pair {
	int client, accepted;
} pair;

static pair redirected(void)
{
	pair p = {wfpr_socket(AF_INET, SOCK_STREAM, 0, 0), -1};
	struct sockaddr_storage dst = loopback_port(UNUSED_PORT);
	CHECK_EQ(wfpr_connect(p.client, (struct sockaddr *)&dst, addr_size(&dst)), 0);
	p.accepted = wfpr_accept(proxy.listen_fd, NULL, NULL);
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
	CHECK_FAILS_WITH(wfpr_ioctl(proxy.listen_fd, QUERY_CONTEXT, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENOTCONN);
	wfpr_closesocket(fd);
}

static void row_never_redirected(void)
{
	struct sockaddr_storage addr;
	int listener = tcp_listen(&addr);
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(fd, (struct sockaddr *)&addr, addr_size(&addr)), 0);
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
		CHECK(memcmp(&r->hops[0].target, &proxy.addr, sizeof(struct sockaddr_in)) == 0);
		CHECK(memcmp(r->hops[0].redirector_id, wfpr_redirect_handle_id(proxy.handle), 16) == 0);
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
	CHECK_EQ(wfpr__record_append(&forged, &forged_len, NULL, NULL, 0, &view.hops[0], key), 0);
	CHECK_EQ(forged_len, len);
	CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, forged, (uint32_t)forged_len, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL);
	free(forged);

	/* a dead connection: both ends closed, the genuine blob is refused */
	wfpr_layer_stats st;
	close_pair(p);
	CHECK_FAILS_WITH(wfpr_ioctl(out, SET_RECORDS, blob, len, NULL, 0, &bytes, NULL, NULL), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr_layer_get_stats(&st, layer), 0);
	CHECK(st.bad_records > 8 * len);
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

static void row_overlapped_at_once(void)
{
	CHECK_EQ(wfpr_socket_set_overlapped(proxy.listen_fd, 1), 0);
	pair p = redirected();
	CHECK_EQ(wfpr_socket_set_overlapped(proxy.listen_fd, 0), 0);
	wfpr_overlapped ov;
	CHECK_EQ(wfpr_overlapped_init(&ov), 0);
	uint8_t buf[1024];
	uint32_t bytes = 0, got = 0;
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
	wfpr_inproc_detach(layer);
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAENETDOWN);
	CHECK_EQ(bytes, 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
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

int main(void)
{
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(manual_redirector_init(&proxy, layer, "proxy", IPPROTO_TCP, UNUSED_PORT, 10), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);

	RUN(error_table);
	RUN(row_bytes_returned_null);
	RUN(row_unknown_code);
	RUN(row_protocol_lacks_it);
	RUN(row_not_a_socket);
	RUN(row_not_connected);
	RUN(row_never_redirected);
	RUN(row_size_probe);
	RUN(row_smaller_than_ulong);
	RUN(row_insufficient);
	RUN(row_out_null);
	RUN(row_enough_room);
	RUN(row_input_ignored);
	RUN(row_set_bad_blobs);
	RUN(row_set_after_connect);
	RUN(row_overlapped_at_once);
	RUN(row_ov_on_plain_socket);
	RUN(row_backend_unreachable);
	RUN(row_in_callback);
	RUN(row_flush_nothing_pending);
	RUN(udp_option_on_tcp);

	wfpr_inproc_detach(layer);
	close(proxy.listen_fd);
	wfpr_layer_free(layer);
	TEST_MAIN_END();
}
