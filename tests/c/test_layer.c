/* The redirect-state table (docs/record-format.md), read from real
 * redirects; the filter conditions; one backend at a time. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>
#include "support.h"
#include "test.h"

#define QUERY_RECORDS WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
#define QUERY_CONTEXT WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT
#define SET_RECORDS WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS
#define PORT 9

static wfpr_redirect_state state(const uint8_t *blob, uint32_t len, const manual_redirector *m)
{
	wfpr_redirect_state s = (wfpr_redirect_state)-1;
	CHECK_EQ(wfpr_query_redirect_state(&s, blob, len, m->handle), 0);
	return s;
}

/* Connect (with records when given) to PORT; return the socket. */
static int connect_with(const uint8_t *records, uint32_t len)
{
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	uint32_t bytes;
	if (records)
		CHECK_EQ(wfpr_ioctl(fd, SET_RECORDS, records, len, NULL, 0, &bytes, NULL, NULL), 0);
	struct sockaddr_storage dst = loopback_port(PORT);
	wfpr_connect(fd, (struct sockaddr *)&dst, addr_size(&dst));
	return fd;
}

static uint32_t accept_and_query(const manual_redirector *m, int *accepted, uint8_t *blob)
{
	uint32_t len = 0;
	*accepted = wfpr_accept(m->listen_fd, NULL, NULL);
	CHECK_EQ(wfpr_ioctl(*accepted, QUERY_RECORDS, NULL, 0, blob, 1024, &len, NULL, NULL), 0);
	return len;
}

static void state_table_along_a_chain(void)
{
	wfpr_layer *layer;
	manual_redirector a, b, c;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(manual_redirector_init(&a, layer, "a", IPPROTO_TCP, PORT, 30), 0);
	CHECK_EQ(manual_redirector_init(&b, layer, "b", IPPROTO_TCP, PORT, 20), 0);
	CHECK_EQ(manual_redirector_init(&c, layer, "c", IPPROTO_TCP, PORT, 10), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	uint8_t r1[1024], r2[1024], r3[1024];
	int client, at_a, out_a, at_b, out_b, at_c, out_c;

	/* an application connects: nobody redirected it yet */
	client = connect_with(NULL, 0);
	CHECK_EQ(a.last_state, WFPR_CONNECTION_NOT_REDIRECTED);
	CHECK_EQ(b.calls, 0); /* a redirected first; b gets its turn on a's outbound connection */
	uint32_t l1 = accept_and_query(&a, &at_a, r1);
	CHECK_EQ(state(NULL, 0, &a), WFPR_CONNECTION_NOT_REDIRECTED);
	CHECK_EQ(state(r1, l1, &a), WFPR_CONNECTION_REDIRECTED_BY_SELF);
	CHECK_EQ(state(r1, l1, &b), WFPR_CONNECTION_REDIRECTED_BY_OTHER);

	/* a's proxy passes the connection on: a permits its own, b redirects it */
	out_a = connect_with(r1, l1);
	CHECK_EQ(a.last_state, WFPR_CONNECTION_REDIRECTED_BY_SELF);
	CHECK_EQ(b.last_state, WFPR_CONNECTION_REDIRECTED_BY_OTHER);
	CHECK_EQ(b.last_hop_count, 1);
	uint32_t l2 = accept_and_query(&b, &at_b, r2);
	CHECK_EQ(state(r2, l2, &a), WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF);
	CHECK_EQ(state(r2, l2, &b), WFPR_CONNECTION_REDIRECTED_BY_SELF);
	CHECK_EQ(state(r2, l2, &c), WFPR_CONNECTION_REDIRECTED_BY_OTHER);

	/* the context at b still names the application's original destination */
	struct sockaddr_storage ctx[2], dst = loopback_port(PORT);
	uint32_t bytes;
	CHECK_EQ(wfpr_ioctl(at_b, QUERY_CONTEXT, NULL, 0, ctx, sizeof(ctx), &bytes, NULL, NULL), 0);
	CHECK(memcmp(&ctx[0], &dst, sizeof(struct sockaddr_in)) == 0);

	out_b = connect_with(r2, l2);
	CHECK_EQ(a.last_state, WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF);
	CHECK_EQ(b.last_state, WFPR_CONNECTION_REDIRECTED_BY_SELF);
	CHECK_EQ(c.last_state, WFPR_CONNECTION_REDIRECTED_BY_OTHER);
	uint32_t l3 = accept_and_query(&c, &at_c, r3);
	CHECK_EQ(state(r3, l3, &a), WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF);
	CHECK_EQ(state(r3, l3, &b), WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF);
	CHECK_EQ(state(r3, l3, &c), WFPR_CONNECTION_REDIRECTED_BY_SELF);

	/* c's outbound connection is redirected by nobody: it goes to PORT itself */
	int calls_before = a.calls + b.calls + c.calls;
	out_c = connect_with(r3, l3);
	CHECK_EQ(a.calls + b.calls + c.calls, calls_before + 3);
	CHECK_EQ(c.last_state, WFPR_CONNECTION_REDIRECTED_BY_SELF);
	wfpr_layer_stats st;
	CHECK_EQ(wfpr_layer_get_stats(&st, layer), 0);
	CHECK_EQ(st.redirected, 3);

	/* bad arguments */
	wfpr_redirect_state s;
	r3[l3 / 2] ^= 1;
	CHECK_EQ(wfpr_query_redirect_state(&s, r3, l3, c.handle), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr_query_redirect_state(&s, r1, l1, NULL), WFPR_WSAEFAULT);
	CHECK_EQ(wfpr_query_redirect_state(NULL, r1, l1, a.handle), WFPR_WSAEFAULT);

	int fds[] = {client, at_a, out_a, at_b, out_b, at_c, out_c};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		wfpr_closesocket(fds[i]);
	close(a.listen_fd);
	close(b.listen_fd);
	close(c.listen_fd);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

static int counted;

static wfpr_action count_calls(void *user, wfpr_connect_request *req)
{
	(void)user;
	(void)req;
	counted++;
	return WFPR_ACTION_PERMIT;
}

static wfpr_action block_all(void *user, wfpr_connect_request *req)
{
	(void)user;
	(void)req;
	return WFPR_ACTION_BLOCK;
}

static int try_connect(uint16_t port)
{
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	struct sockaddr_storage dst = loopback_port(port);
	int rc = wfpr_connect(fd, (struct sockaddr *)&dst, addr_size(&dst));
	int err = rc == 0 ? 0 : wfpr_get_last_error();
	wfpr_closesocket(fd);
	return err;
}

static int calls_for(wfpr_layer *layer, uint32_t callout, wfpr_filter_options fo, uint16_t port)
{
	uint64_t id;
	fo.callout_id = callout;
	CHECK_EQ(wfpr_filter_add(&id, layer, &fo), 0);
	counted = 0;
	try_connect(port);
	CHECK_EQ(wfpr_filter_remove(layer, id), 0);
	return counted;
}

static void filter_conditions(void)
{
	wfpr_layer *layer;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
	co.classify = count_calls;
	uint32_t callout;
	CHECK_EQ(wfpr_callout_register(&callout, layer, &co), 0);

	wfpr_filter_options any = WFPR_FILTER_OPTIONS_INIT, fo;
	CHECK_EQ(calls_for(layer, callout, any, 9), 1);
	fo = any; fo.protocol = IPPROTO_UDP;
	CHECK_EQ(calls_for(layer, callout, fo, 9), 0);
	fo = any; fo.remote_port_min = 8; fo.remote_port_max = 10;
	CHECK_EQ(calls_for(layer, callout, fo, 9), 1);
	CHECK_EQ(calls_for(layer, callout, fo, 11), 0);
	fo = any;
	struct sockaddr_in *p = (struct sockaddr_in *)&fo.remote_prefix;
	p->sin_family = AF_INET;
	p->sin_addr.s_addr = htonl(0x7f000000);
	fo.remote_prefix_len = 8;
	CHECK_EQ(calls_for(layer, callout, fo, 9), 1);
	p->sin_addr.s_addr = htonl(0x0a000000);
	CHECK_EQ(calls_for(layer, callout, fo, 9), 0);
	fo = any; fo.pid = getpid();
	CHECK_EQ(calls_for(layer, callout, fo, 9), 1);
	fo.pid = getpid() + 1;
	CHECK_EQ(calls_for(layer, callout, fo, 9), 0);
	fo = any; fo.uid = getuid();
	CHECK_EQ(calls_for(layer, callout, fo, 9), 1);
	fo = any; fo.local_port = 1;
	CHECK_EQ(calls_for(layer, callout, fo, 9), 0);

	/* invalid filters */
	uint64_t id;
	fo = any; fo.callout_id = 999;
	CHECK_EQ(wfpr_filter_add(&id, layer, &fo), WFPR_WSAEINVAL);
	fo = any; fo.callout_id = callout; fo.remote_port_min = 10; fo.remote_port_max = 9;
	CHECK_EQ(wfpr_filter_add(&id, layer, &fo), WFPR_WSAEINVAL);
	fo = any; fo.callout_id = callout; fo.remote_prefix.ss_family = AF_INET; fo.remote_prefix_len = 33;
	CHECK_EQ(wfpr_filter_add(&id, layer, &fo), WFPR_WSAEINVAL);
	fo = any; fo.callout_id = callout; fo.version = 99;
	CHECK_EQ(wfpr_filter_add(&id, layer, &fo), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr_filter_remove(layer, 12345), WFPR_FWP_E_NOT_FOUND);

	/* a block verdict refuses the connect with WSAEACCES */
	co.classify = block_all;
	uint32_t blocker;
	CHECK_EQ(wfpr_callout_register(&blocker, layer, &co), 0);
	fo = any; fo.callout_id = blocker;
	CHECK_EQ(wfpr_filter_add(&id, layer, &fo), 0);
	CHECK_EQ(try_connect(9), WFPR_WSAEACCES);
	wfpr_layer_stats st;
	CHECK_EQ(wfpr_layer_get_stats(&st, layer), 0);
	CHECK_EQ(st.blocked, 1);

	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

static void handles(void)
{
	wfpr_layer *layer, *other;
	wfpr_redirect_handle *h1, *h2, *h3;
	uint8_t id[16] = {1, 2, 3};
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(wfpr_layer_new(&other), 0);
	CHECK_EQ(wfpr_redirect_handle_create(&h1, layer, id, "av"), 0);
	CHECK_EQ(wfpr_redirect_handle_create(&h2, layer, id, "dup"), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr_redirect_handle_create(&h2, layer, NULL, NULL), 0);
	CHECK(memcmp(wfpr_redirect_handle_id(h1), id, 16) == 0);
	CHECK(strcmp(wfpr_redirect_handle_name(h1), "av") == 0);
	CHECK(wfpr_redirect_handle_number(h1) != wfpr_redirect_handle_number(h2));
	CHECK_EQ(wfpr_redirect_handle_create(NULL, layer, NULL, NULL), WFPR_WSAEFAULT);
	/* a callout may not use another layer's handle */
	CHECK_EQ(wfpr_redirect_handle_create(&h3, other, NULL, NULL), 0);
	wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
	co.classify = count_calls;
	co.handle = h3;
	uint32_t cid;
	CHECK_EQ(wfpr_callout_register(&cid, layer, &co), WFPR_WSAEINVAL);
	co.classify = NULL;
	CHECK_EQ(wfpr_callout_register(&cid, layer, &co), WFPR_WSAEFAULT);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	CHECK_EQ(wfpr_inproc_attach(other), WFPR_WSAEADDRINUSE);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
	wfpr_layer_free(other);
}

/* The rule every redirector follows, as one function. */
static void state_rule(void)
{
	CHECK_EQ(wfpr_redirect_state_allows_redirect(WFPR_CONNECTION_NOT_REDIRECTED), 1);
	CHECK_EQ(wfpr_redirect_state_allows_redirect(WFPR_CONNECTION_REDIRECTED_BY_OTHER), 1);
	CHECK_EQ(wfpr_redirect_state_allows_redirect(WFPR_CONNECTION_REDIRECTED_BY_SELF), 0);
	CHECK_EQ(wfpr_redirect_state_allows_redirect(WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF), 0);
	CHECK_EQ(wfpr_redirect_state_allows_redirect((wfpr_redirect_state)7), 0);
}

/* A process goes through one backend: attaching a second is refused until
 * the first is detached. */
static void one_backend_at_a_time(void)
{
	wfpr_layer *layer;
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0); /* the same layer again: nothing changes */
	CHECK_EQ(wfpr_ebpf_attach(1), WFPR_WSAEADDRINUSE);
	CHECK_EQ(wfpr_preload_attach("/nonexistent/broker.sock"), WFPR_WSAEADDRINUSE);
	wfpr_inproc_detach(layer);
	CHECK_EQ(wfpr_ebpf_attach(1), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), WFPR_WSAEADDRINUSE);
	CHECK_EQ(wfpr_preload_attach("/nonexistent/broker.sock"), WFPR_WSAEADDRINUSE);
	CHECK_EQ(wfpr_ebpf_attach(0), 0);
	CHECK_EQ(wfpr_preload_attach("/nonexistent/broker.sock"), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), WFPR_WSAEADDRINUSE);
	CHECK_EQ(wfpr_preload_attach(NULL), 0);
	/* with none attached, QUERY says the network (the layer) is down */
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0), other = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	CHECK_EQ(bind(listener, (struct sockaddr *)&a, sizeof(a)), 0);
	CHECK_EQ(listen(listener, 1), 0);
	CHECK_EQ(getsockname(listener, (struct sockaddr *)&a, &alen), 0);
	CHECK_EQ(wfpr_connect(fd, (struct sockaddr *)&a, sizeof(a)), 0); /* direct */
	uint32_t bytes = 0;
	uint8_t buf[64];
	CHECK_EQ(wfpr_ioctl(fd, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_SOCKET_ERROR);
	CHECK_EQ(wfpr_get_last_error(), WFPR_WSAENETDOWN);
	CHECK_EQ(wfpr_ioctl(other, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, buf, sizeof(buf), NULL, 0, &bytes,
	                    NULL, NULL), WFPR_SOCKET_ERROR);
	CHECK_EQ(wfpr_get_last_error(), WFPR_WSAENETDOWN);
	wfpr_closesocket(fd);
	wfpr_closesocket(other);
	close(listener);
	wfpr_layer_free(layer);
}

int main(void)
{
	RUN(state_table_along_a_chain);
	RUN(filter_conditions);
	RUN(handles);
	RUN(state_rule);
	RUN(one_backend_at_a_time);
	TEST_MAIN_END();
}
