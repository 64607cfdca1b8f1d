/* Overlapped QUERY: done at once, pending then completed, pending then
 * aborted (SIO_FLUSH and closesocket), and completion routines that run only
 * in an alertable wait. The pending window is real: a non-blocking connect
 * publishes its record when the connecting side completes it. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include "support.h"
#include "test.h"

#define QUERY_RECORDS WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS
#define UNUSED_PORT 9

static wfpr_layer *layer;
static manual_redirector proxy;

typedef struct pending_pair {
	int client, accepted;
} pending_pair;

/* A redirected connection whose record has not reached the layer yet:
 * the handshake is done in the kernel, but the client has not finished
 * its non-blocking connect. */
static pending_pair start_pending(void)
{
	pending_pair p;
	p.client = wfpr_socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0, 0);
	struct sockaddr_storage dst = loopback_port(UNUSED_PORT);
	int rc = wfpr_connect(p.client, (struct sockaddr *)&dst, addr_size(&dst));
	CHECK(rc == 0 || (wfpr_get_last_error() == WFPR_WSAEWOULDBLOCK && errno == EINPROGRESS));
	struct pollfd pf = {.fd = proxy.listen_fd, .events = POLLIN};
	CHECK_EQ(poll(&pf, 1, 5000), 1);
	p.accepted = wfpr_accept(proxy.listen_fd, NULL, NULL);
	CHECK(p.accepted >= 0);
	return p;
}

static void finish_client(int fd)
{
	struct pollfd pf = {.fd = fd, .events = POLLOUT};
	CHECK_EQ(poll(&pf, 1, 5000), 1);
	struct sockaddr_storage dst = loopback_port(UNUSED_PORT);
	CHECK_EQ(wfpr_connect(fd, (struct sockaddr *)&dst, addr_size(&dst)), 0);
}

/* A pending pair with an overlapped QUERY already pending on its accepted end. */
static pending_pair begin_pending_query(wfpr_overlapped *ov, void *buf, uint32_t len, wfpr_completion_routine routine)
{
	pending_pair p = start_pending();
	uint32_t bytes = 77;
	CHECK_EQ(wfpr_overlapped_init(ov), 0);
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, len, &bytes, ov, routine), WFPR_WSA_IO_PENDING);
	CHECK_EQ(bytes, 0);
	return p;
}

static bool signalled(const wfpr_overlapped *ov)
{
	struct pollfd pf = {.fd = ov->event_fd, .events = POLLIN};
	return poll(&pf, 1, 0) == 1;
}

static void pending_then_completed(void)
{
	wfpr_overlapped ov;
	uint8_t buf[1024];
	uint32_t got = 0;
	pending_pair p = begin_pending_query(&ov, buf, sizeof(buf), NULL);
	CHECK(!signalled(&ov));
	CHECK_FAILS_WITH(wfpr_get_overlapped_result(p.accepted, &ov, &got, 0, NULL), WFPR_WSA_IO_INCOMPLETE);

	finish_client(p.client);
	CHECK(signalled(&ov));
	CHECK_EQ(wfpr_get_overlapped_result(p.accepted, &ov, &got, 1, NULL), 0);
	CHECK(got > 12);
	uint8_t direct[1024];
	uint32_t direct_len = 0;
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, direct, sizeof(direct), &direct_len, NULL, NULL), 0);
	CHECK_EQ(direct_len, got);
	CHECK(memcmp(direct, buf, got) == 0);
	wfpr_overlapped_dispose(&ov);
	wfpr_closesocket(p.client);
	wfpr_closesocket(p.accepted);
}

static void pending_small_buffer_completes_with_size(void)
{
	wfpr_overlapped ov;
	uint8_t buf[8];
	uint32_t got = 0;
	pending_pair p = begin_pending_query(&ov, buf, sizeof(buf), NULL);
	finish_client(p.client);
	CHECK_FAILS_WITH(wfpr_get_overlapped_result(p.accepted, &ov, &got, 1, NULL), WFPR_ERROR_INSUFFICIENT_BUFFER);
	CHECK(got > sizeof(buf));
	wfpr_overlapped_dispose(&ov);
	wfpr_closesocket(p.client);
	wfpr_closesocket(p.accepted);
}

static void pending_then_flushed(void)
{
	wfpr_overlapped ov;
	uint8_t buf[1024];
	uint32_t bytes = 0, got = 77;
	pending_pair p = begin_pending_query(&ov, buf, sizeof(buf), NULL);
	CHECK_EQ(wfpr_ioctl(p.accepted, WFPR_SIO_FLUSH, NULL, 0, NULL, 0, &bytes, NULL, NULL), 0);
	CHECK(signalled(&ov));
	CHECK_FAILS_WITH(wfpr_get_overlapped_result(p.accepted, &ov, &got, 1, NULL), WFPR_WSA_OPERATION_ABORTED);
	CHECK_EQ(got, 0);
	/* completing the connect later touches nothing of the aborted operation */
	memset(buf, 0xEE, sizeof(buf));
	finish_client(p.client);
	CHECK_EQ(buf[0], 0xEE);
	CHECK_EQ(ov.status, (uint32_t)WFPR_WSA_OPERATION_ABORTED);
	wfpr_overlapped_dispose(&ov);
	wfpr_closesocket(p.client);
	wfpr_closesocket(p.accepted);
}

static void pending_then_closed(void)
{
	wfpr_overlapped ov;
	uint8_t buf[1024];
	uint32_t got = 77;
	pending_pair p = begin_pending_query(&ov, buf, sizeof(buf), NULL);
	int fd = p.accepted;
	CHECK_EQ(wfpr_closesocket(p.accepted), 0);
	CHECK_FAILS_WITH(wfpr_get_overlapped_result(fd, &ov, &got, 1, NULL), WFPR_WSA_OPERATION_ABORTED);
	finish_client(p.client);
	wfpr_overlapped_dispose(&ov);
	wfpr_closesocket(p.client);
}

static int routine_calls;
static uint32_t routine_error, routine_bytes;
static wfpr_overlapped *routine_ov;

static void on_complete(uint32_t error, uint32_t bytes, wfpr_overlapped *ov, uint32_t flags)
{
	(void)flags;
	routine_calls++;
	routine_error = error;
	routine_bytes = bytes;
	routine_ov = ov;
}

static void completion_routine_runs_only_when_alertable(void)
{
	wfpr_overlapped ov;
	uint8_t buf[1024];
	uint32_t bytes = 0;
	routine_calls = 0;
	pending_pair p = begin_pending_query(&ov, buf, sizeof(buf), on_complete);
	finish_client(p.client);
	CHECK(signalled(&ov));
	CHECK_EQ(routine_calls, 0); /* completed, but no alertable wait yet */
	CHECK_EQ(wfpr_wait_alertable(1000), 1);
	CHECK_EQ(routine_calls, 1);
	CHECK_EQ(routine_error, 0);
	CHECK_EQ(routine_bytes, ov.bytes);
	CHECK(routine_ov == &ov);
	CHECK_EQ(wfpr_wait_alertable(0), 0);

	/* done at once: the routine is still queued, not called inline */
	CHECK_EQ(wfpr_overlapped_reset(&ov), 0);
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, &ov, on_complete), 0);
	CHECK_EQ(routine_calls, 1);
	CHECK_EQ(wfpr_wait_alertable(0), 1);
	CHECK_EQ(routine_calls, 2);

	/* aborted: the routine sees WSA_OPERATION_ABORTED */
	wfpr_closesocket(p.client);
	wfpr_closesocket(p.accepted);
	p = start_pending();
	CHECK_EQ(wfpr_overlapped_reset(&ov), 0);
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, &ov, on_complete), WFPR_WSA_IO_PENDING);
	CHECK_EQ(wfpr_ioctl(p.accepted, WFPR_SIO_FLUSH, NULL, 0, NULL, 0, &bytes, NULL, NULL), 0);
	CHECK_EQ(wfpr_wait_alertable(1000), 1);
	CHECK_EQ(routine_error, (uint32_t)WFPR_WSA_OPERATION_ABORTED);
	finish_client(p.client);
	wfpr_overlapped_dispose(&ov);
	wfpr_closesocket(p.client);
	wfpr_closesocket(p.accepted);
}

static void *finish_later(void *arg)
{
	usleep(100 * 1000);
	finish_client(*(int *)arg);
	return NULL;
}

static void synchronous_query_waits_or_would_block(void)
{
	pending_pair p = start_pending();
	uint8_t buf[1024];
	uint32_t bytes = 0;
	/* a non-blocking accepted socket: WSAEWOULDBLOCK */
	fcntl(p.accepted, F_SETFL, fcntl(p.accepted, F_GETFL) | O_NONBLOCK);
	CHECK_FAILS_WITH(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), WFPR_WSAEWOULDBLOCK);
	/* a blocking one waits until the record arrives */
	fcntl(p.accepted, F_SETFL, fcntl(p.accepted, F_GETFL) & ~O_NONBLOCK);
	pthread_t t;
	pthread_create(&t, NULL, finish_later, &p.client);
	CHECK_EQ(wfpr_ioctl(p.accepted, QUERY_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL), 0);
	CHECK(bytes > 12);
	pthread_join(t, NULL);
	wfpr_closesocket(p.client);
	wfpr_closesocket(p.accepted);
}

static void failed_connect_completes_not_found(void)
{
	wfpr_overlapped ov;
	uint8_t buf[1024];
	uint32_t got = 0;
	pending_pair p = begin_pending_query(&ov, buf, sizeof(buf), NULL);
	/* the connecting side gives up before finishing: the record never arrives */
	CHECK_EQ(wfpr_closesocket(p.client), 0);
	CHECK_FAILS_WITH(wfpr_get_overlapped_result(p.accepted, &ov, &got, 1, NULL), WFPR_FWP_E_NOT_FOUND);
	wfpr_overlapped_dispose(&ov);
	wfpr_closesocket(p.accepted);
}

int main(void)
{
	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(manual_redirector_init(&proxy, layer, "proxy", IPPROTO_TCP, UNUSED_PORT, 10), 0);
	CHECK_EQ(wfpr_socket_set_overlapped(proxy.listen_fd, 1), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);

	RUN(pending_then_completed);
	RUN(pending_small_buffer_completes_with_size);
	RUN(pending_then_flushed);
	RUN(pending_then_closed);
	RUN(completion_routine_runs_only_when_alertable);
	RUN(synchronous_query_waits_or_would_block);
	RUN(failed_connect_completes_not_found);

	wfpr_inproc_detach(layer);
	close(proxy.listen_fd);
	wfpr_layer_free(layer);
	TEST_MAIN_END();
}
