/* The preload backend in one process: a broker thread, two engines that
 * register as redirectors through it, and the test itself as a third,
 * hand-driven proxy, so the IOCTL rows run against records the broker
 * issued. All traffic is real loopback TCP. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support.h"
#include "test.h"
#include "wfpr/engine.h"


static char broker_path[64];
static wfpr_broker *broker;
static pthread_t broker_thread;

static void *engine_main(void *arg)
{
	wfpr_engine_run(arg);
	return NULL;
}

typedef struct proxy {
	wfpr_engine *engine;
	pthread_t thread;
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
} proxy;

static void proxy_start(proxy *p, const char *name)
{
	wfpr_engine_options o = WFPR_ENGINE_OPTIONS_INIT;
	o.name = name;
	o.redirector_id = p->id; /* filled in by the registration below, before the loop runs */
	struct sockaddr_storage addr;
	CHECK_EQ(wfpr_engine_new(&p->engine, &o), 0);
	CHECK_EQ(wfpr_engine_address(&addr, p->engine), 0);
	CHECK_EQ(wfpr_preload_register(p->id, name, &addr), 0);
	pthread_create(&p->thread, NULL, engine_main, p->engine);
}

/* Stats are read once the loop has returned: the loop's thread writes them. */
static wfpr_engine_stats proxy_stop(proxy *p)
{
	wfpr_engine_stats st;
	wfpr_engine_stop(p->engine);
	pthread_join(p->thread, NULL);
	wfpr_engine_get_stats(&st, p->engine);
	wfpr_engine_free(p->engine);
	return st;
}

static proxy alpha, beta;

static void test_chain_of_two(void)
{
	echo_server server;
	uint8_t sent[32], echoed[32];
	CHECK_EQ(echo_server_start(&server, 3), 0);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(echo_client(&server.addr, 1u << 20, sent, echoed), 0);
		CHECK(memcmp(sent, echoed, 32) == 0);
	}
	echo_server_join(&server);
}

/* The test is the third redirector: connect, accept, and QUERY by hand. */
/* Another broker client (a process that did not QUERY these records) can
 * SET neither them nor the record cut at a hop boundary, which equals the
 * second proxy's own live record: a record is its proxy's alone. */
static void another_process_cannot_set(int accepted, const uint8_t *records, uint32_t len)
{
	/* the first two hops, with their header: byte for byte beta's record */
	uint8_t cut[WFPR_RECORD_MAX_SIZE];
	uint32_t off = 12;
	for (int hop = 0; hop < 2; hop++)
		off += 4 + ((uint32_t)records[off + 2] << 8 | records[off + 3]);
	memcpy(cut, records, off);
	cut[7] = 2; /* hop count */
	cut[8] = (uint8_t)(off >> 24), cut[9] = (uint8_t)(off >> 16), cut[10] = (uint8_t)(off >> 8), cut[11] = (uint8_t)off;
	pid_t pid = fork();
	if (pid == 0) {
		/* a new broker connection: another client */
		int failures = 0, s = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
		uint32_t bytes;
		failures += wfpr_ioctl(s, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records, len, NULL, 0, &bytes, NULL,
		                       NULL) != WFPR_SOCKET_ERROR || wfpr_get_last_error() != WFPR_WSAEINVAL;
		failures += wfpr_ioctl(s, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, cut, off, NULL, 0, &bytes, NULL,
		                       NULL) != WFPR_SOCKET_ERROR || wfpr_get_last_error() != WFPR_WSAEINVAL;
		/* nor read it: only the proxy whose listener accepted it may QUERY */
		uint8_t got[WFPR_RECORD_MAX_SIZE];
		failures += wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, got, sizeof(got),
		                       &bytes, NULL, NULL) != WFPR_SOCKET_ERROR ||
		            wfpr_get_last_error() != WFPR_FWP_E_NOT_FOUND;
		_exit(failures);
	}
	int status = -1;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* this process, which QUERYed the whole record, still may; beta's own is
	 * used (beta connected with it), so not even this process may again */
	int s = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	uint32_t bytes;
	CHECK_EQ(wfpr_ioctl(s, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records, len, NULL, 0, &bytes, NULL, NULL), 0);
	CHECK_FAILS_WITH(wfpr_ioctl(s, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, cut, off, NULL, 0, &bytes, NULL, NULL),
	                 WFPR_WSAEINVAL);
	wfpr_closesocket(s);
}

static void test_ioctl_rows_through_broker(void)
{
	echo_server server;
	CHECK_EQ(echo_server_start(&server, 1), 0);
	struct sockaddr_storage me;
	int listener = tcp_listen(&me);
	uint8_t my_id[WFPR_REDIRECTOR_ID_SIZE];
	CHECK_EQ(wfpr_preload_register(my_id, "manual", &me), 0);
	CHECK_EQ(wfpr_preload_register(my_id, "manual", &me), WFPR_WSAEADDRINUSE); /* one name, one proxy */

	int client = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(client, (struct sockaddr *)&server.addr, addr_size(&server.addr)), 0);
	int accepted = accept(listener, NULL, NULL);
	CHECK(accepted >= 0);

	uint32_t need = 0, len = 0;
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, NULL, 0, &need,
	                            NULL, NULL), WFPR_ERROR_INSUFFICIENT_BUFFER);
	CHECK(need > 0);
	uint8_t small[2], records[WFPR_RECORD_MAX_SIZE];
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, small,
	                            sizeof(small), &len, NULL, NULL), WFPR_WSAEINVAL);
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records, need - 1,
	                            &len, NULL, NULL), WFPR_ERROR_INSUFFICIENT_BUFFER);
	CHECK_EQ(len, need);
	CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records, sizeof(records),
	                    &len, NULL, NULL), 0);
	CHECK_EQ(len, need);

	/* three hops: alpha, beta, then me; for me the state is SELF, for alpha PREVIOUSLY */
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, records, len), 0);
	CHECK_EQ(r ? r->hop_count : 0, 3);
	wfpr_records_free(r);
	wfpr_redirect_state state;
	CHECK_EQ(wfpr_redirect_state_for_id(&state, records, len, my_id), 0);
	CHECK_EQ(state, WFPR_CONNECTION_REDIRECTED_BY_SELF);
	CHECK_EQ(wfpr_redirect_state_for_id(&state, records, len, alpha.id), 0);
	CHECK_EQ(state, WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF);
	char name[65];
	CHECK_EQ(wfpr_preload_redirector_name(name, sizeof(name), beta.id), 0);
	CHECK(strcmp(name, "beta") == 0);
	another_process_cannot_set(accepted, records, len);

	struct sockaddr_storage context[2];
	CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, context, sizeof(context),
	                    &len, NULL, NULL), 0);
	CHECK_EQ(len, sizeof(context));
	CHECK_EQ(addr_port(&context[0]), addr_port(&server.addr));

	/* SET: a forged blob is refused; the real one goes on, and the connect is not redirected back */
	int out = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	records[need - 1] ^= 1;
	CHECK_FAILS_WITH(wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records, need, NULL, 0, &len,
	                            NULL, NULL), WFPR_WSAEINVAL);
	records[need - 1] ^= 1;
	CHECK_EQ(wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records, need, NULL, 0, &len, NULL, NULL), 0);
	CHECK_EQ(wfpr_connect(out, (struct sockaddr *)&context[0], addr_size(&context[0])), 0);
	const char hello[] = "hello through three proxies";
	char back[sizeof(hello)];
	CHECK_EQ(write(out, hello, sizeof(hello)), (ssize_t)sizeof(hello));
	shutdown(out, SHUT_WR);
	CHECK_EQ(read(out, back, sizeof(back)), (ssize_t)sizeof(back));
	CHECK(memcmp(hello, back, sizeof(hello)) == 0);
	wfpr_closesocket(out);
	echo_server_join(&server);

	/* once the proxy closes its side, the record is dead: SET refuses it */
	wfpr_closesocket(accepted);
	int late = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_FAILS_WITH(wfpr_ioctl(late, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records, need, NULL, 0, &len,
	                            NULL, NULL), WFPR_WSAEINVAL);
	wfpr_closesocket(late);
	wfpr_closesocket(client);

	/* a connection nobody redirected has no record */
	struct sockaddr_storage plain_addr;
	int plain = tcp_listen(&plain_addr);
	int direct = socket(AF_INET, SOCK_STREAM, 0);
	CHECK_EQ(connect(direct, (struct sockaddr *)&plain_addr, addr_size(&plain_addr)), 0);
	int plain_accepted = accept(plain, NULL, NULL);
	CHECK_FAILS_WITH(wfpr_ioctl(plain_accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
	                            sizeof(records), &len, NULL, NULL), WFPR_FWP_E_NOT_FOUND);
	close(plain_accepted);
	close(direct);
	close(plain);
	close(listener);
}

static void test_broker_gone(void)
{
	broker_thread_stop(broker, broker_thread);
	broker = NULL;
	struct sockaddr_storage addr;
	int listener = tcp_listen(&addr);
	int s = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_FAILS_WITH(wfpr_connect(s, (struct sockaddr *)&addr, addr_size(&addr)), WFPR_WSAENETDOWN);
	int direct = socket(AF_INET, SOCK_STREAM, 0);
	CHECK_EQ(connect(direct, (struct sockaddr *)&addr, addr_size(&addr)), 0);
	int accepted = accept(listener, NULL, NULL);
	uint32_t len;
	uint8_t buf[64];
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, buf, sizeof(buf),
	                            &len, NULL, NULL), WFPR_WSAENETDOWN);
	CHECK_EQ(len, 0);
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	CHECK_EQ(wfpr_preload_register(id, "late", &addr), WFPR_WSAENETDOWN);
	close(accepted);
	close(direct);
	wfpr_closesocket(s);
	close(listener);
}

int main(void)
{
	snprintf(broker_path, sizeof(broker_path), "/tmp/wfpr-test-broker-%d.sock", (int)getpid());
	if (broker_thread_start(&broker, &broker_thread, broker_path) != 0 || wfpr_preload_attach(broker_path) != 0) {
		fprintf(stderr, "cannot start the broker\n");
		return 1;
	}
	proxy_start(&alpha, "alpha");
	proxy_start(&beta, "beta");
	RUN(test_chain_of_two);
	RUN(test_ioctl_rows_through_broker);
	wfpr_engine_stats a = proxy_stop(&alpha), b = proxy_stop(&beta);
	CHECK_EQ(a.accepted, 4); /* the three echo connections, and the hand-driven proxy's */
	CHECK_EQ(b.accepted, 4);
	CHECK_EQ(a.failed + b.failed, 0);
	RUN(test_broker_gone);
	wfpr_preload_attach(NULL);
	TEST_MAIN_END();
}
