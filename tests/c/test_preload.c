/* The preload backend in one process: a broker thread, two engines that
 * register as redirectors through it, and the test itself as a third,
 * hand-driven proxy, so the IOCTL rows run against records the broker
 * issued. All traffic is real loopback TCP. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include "wfpr/broker.h"
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "../../core/src/preload/wire.h"
#include "support.h"
#include "test.h"
#include "wfpr/engine.h"

#define USER_QUOTA 64 /* this broker's: records the programs of one user may hold */


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

/* A proxy registers only with the key, and only where it listens itself. */
static void test_registration_checks(void)
{
	struct sockaddr_storage addr;
	int listener = tcp_listen(&addr);
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	CHECK_EQ(wfpr_preload_set_key("not a key"), WFPR_WSAEINVAL);
	CHECK_EQ(wfpr_preload_set_key("0000000000000000000000000000000000000000000000000000000000000000"), 0);
	CHECK_EQ(wfpr_preload_register(id, "keyless", &addr), WFPR_WSAEACCES);
	/* with no key given, the key file beside the socket: there is none */
	CHECK_EQ(wfpr_preload_set_key(NULL), 0);
	CHECK_EQ(wfpr_preload_register(id, "keyless", &addr), WFPR_WSAEACCES);
	CHECK_EQ(wfpr_preload_set_key(wfpr_broker_key(broker)), 0);

	/* an address where another process listens, and one where nobody does */
	int ready[2], done[2];
	CHECK_EQ(pipe(ready), 0);
	CHECK_EQ(pipe(done), 0);
	pid_t pid = fork();
	if (pid == 0) {
		struct sockaddr_storage theirs;
		int l = tcp_listen(&theirs);
		if (write(ready[1], &theirs, sizeof(theirs)) != (ssize_t)sizeof(theirs))
			_exit(1);
		char c;
		_exit(read(done[0], &c, 1) < 0 || l < 0);
	}
	struct sockaddr_storage theirs, nobody = addr;
	CHECK_EQ(read(ready[0], &theirs, sizeof(theirs)), (ssize_t)sizeof(theirs));
	CHECK_EQ(wfpr_preload_register(id, "squatter", &theirs), WFPR_WSAEADDRNOTAVAIL);
	close(listener);
	CHECK_EQ(wfpr_preload_register(id, "squatter", &nobody), WFPR_WSAEADDRNOTAVAIL);
	CHECK_EQ(write(done[1], "x", 1), 1);
	waitpid(pid, NULL, 0);
	close(ready[0]);
	close(ready[1]);
	close(done[0]);
	close(done[1]);
}

/* A raw client of the broker, as a hostile program would be. */
static int raw_client(void)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", broker_path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	CHECK_EQ(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	return fd;
}

/* Send rq with the descriptor fd (-1: none); its reply into rp, if given. */
static void raw_call(int raw, wire_request *rq, int fd, wire_reply *rp)
{
	rq->magic = WIRE_MAGIC;
	struct iovec iov = {.iov_base = rq, .iov_len = sizeof(*rq)};
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (fd >= 0) {
		memset(&control, 0, sizeof(control));
		mh.msg_control = control.buf;
		mh.msg_controllen = sizeof(control.buf);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	CHECK_EQ(sendmsg(raw, &mh, 0), (ssize_t)sizeof(*rq));
	if (rp)
		CHECK_EQ(recv(raw, rp, sizeof(*rp), 0), (ssize_t)sizeof(*rp));
}

/* A ROUTE to remote that the broker redirects; then an ISSUE for local,
 * showing the broker fd (-1: none). */
static void route_and_issue(int raw, const struct sockaddr_storage *remote, const struct sockaddr_storage *local,
                            int fd)
{
	wire_request rq = {.type = WIRE_ROUTE, .protocol = IPPROTO_TCP, .a = *remote, .b = *local};
	wire_reply rp;
	raw_call(raw, &rq, -1, &rp);
	CHECK_EQ(rp.err, 0);
	CHECK_EQ(rp.action, WFPR_ACTION_REDIRECT);
	wire_request issue = {.type = WIRE_ISSUE, .protocol = IPPROTO_TCP, .b = *local};
	raw_call(raw, &issue, fd, NULL);
	wire_request name = {.type = WIRE_NAME}; /* answered after the ISSUE: it has been handled */
	raw_call(raw, &name, -1, &rp);
}

static uint16_t original_port(int accepted)
{
	struct sockaddr_storage context[2];
	uint32_t len = 0;
	memset(context, 0, sizeof(context));
	CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, context, sizeof(context),
	                    &len, NULL, NULL), 0);
	return addr_port(&context[0]);
}

/* Accept on listener the connection from `from`. */
static int accept_from(int listener, const struct sockaddr_storage *from)
{
	for (int i = 0; i < 8; i++) {
		struct sockaddr_storage peer;
		socklen_t len = sizeof(peer);
		int fd = accept(listener, (struct sockaddr *)&peer, &len);
		if (fd < 0 || addr_port(&peer) == addr_port(from))
			return fd;
		close(fd);
	}
	return -1;
}

/* A record is issued only for a socket the caller shows the broker: a
 * program cannot have one issued for another's connection (which would
 * replace that one's record, and its original destination, at the proxy). */
static void test_issue_needs_the_socket(void)
{
	struct sockaddr_storage sink_addr, p_addr, q_addr, victim_local, mine;
	int sink = tcp_listen(&sink_addr), p = tcp_listen(&p_addr), q = tcp_listen(&q_addr);
	char match[64];
	snprintf(match, sizeof(match), "proto=tcp dport=%u,%u", addr_port(&p_addr), addr_port(&q_addr));
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "sink", &sink_addr, NULL, 1000, match), 0);

	int victim = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(victim, (struct sockaddr *)&p_addr, addr_size(&p_addr)), 0);
	socklen_t len = sizeof(victim_local);
	getsockname(victim, (struct sockaddr *)&victim_local, &len);

	int raw = raw_client();
	route_and_issue(raw, &q_addr, &victim_local, -1); /* no socket shown */
	int other = socket(AF_INET, SOCK_STREAM, 0);      /* its own socket, bound elsewhere */
	mine = loopback_port(0);
	CHECK_EQ(bind(other, (struct sockaddr *)&mine, sizeof(struct sockaddr_in)), 0);
	route_and_issue(raw, &q_addr, &victim_local, other);
	len = sizeof(mine);
	getsockname(other, (struct sockaddr *)&mine, &len);
	route_and_issue(raw, &q_addr, &mine, other); /* its own, but connecting nowhere */

	int accepted = accept_from(sink, &victim_local);
	CHECK(accepted >= 0);
	CHECK_EQ(original_port(accepted), addr_port(&p_addr)); /* still the victim's record */

	/* the same client, showing its own socket connected to the proxy, gets its record */
	CHECK_EQ(connect(other, (struct sockaddr *)&sink_addr, addr_size(&sink_addr)), 0);
	route_and_issue(raw, &q_addr, &mine, other);
	int own = accept_from(sink, &mine);
	CHECK(own >= 0);
	CHECK_EQ(original_port(own), addr_port(&q_addr));

	close(own);
	close(other);
	close(raw);
	close(accepted);
	wfpr_closesocket(victim);
	close(p);
	close(q);
	close(sink);
}

/* A program that connects without end holds at most its user's quota of
 * records: then its connects fail with ENOBUFS (WSAENOBUFS), and the
 * proxies, which have no quota, go on. */
static void test_user_quota(void)
{
	struct sockaddr_storage sink_addr, p_addr;
	int sink = tcp_listen(&sink_addr), p = tcp_listen(&p_addr);
	char match[64];
	snprintf(match, sizeof(match), "proto=tcp dport=%u", addr_port(&p_addr));
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "quota-sink", &sink_addr, NULL, 1000, match), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* a new broker client, registered nowhere: a program under the shim */
		int connected = 0, refused_with = 0;
		for (int i = 0; i < USER_QUOTA + 8 && !refused_with; i++) {
			int s = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
			if (wfpr_connect(s, (struct sockaddr *)&p_addr, addr_size(&p_addr)) == 0)
				connected++;
			else
				refused_with = wfpr_get_last_error();
		}
		/* the record test_issue_needs_the_socket's raw client had issued counts too */
		bool ok = connected == USER_QUOTA - 1 && refused_with == WFPR_WSAENOBUFS;
		if (!ok)
			fprintf(stderr, "connected %d, then %d\n", connected, refused_with);
		_exit(ok ? 0 : 1);
	}
	int status = -1;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	int s = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0); /* this process registered proxies: no quota */
	CHECK_EQ(wfpr_connect(s, (struct sockaddr *)&p_addr, addr_size(&p_addr)), 0);
	wfpr_closesocket(s);
	close(p);
	close(sink);
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

/* Run test in a child process: what it registers goes when the child's
 * connection to the broker does. */
static void in_child(void (*test)(void))
{
	pid_t pid = fork();
	if (pid == 0) {
		test();
		_exit(test_failures ? 1 : 0);
	}
	int status = -1;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static bool readable(int fd, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, timeout_ms) == 1;
}

/* SET records on a new socket and connect it to `to`: the connection must
 * land on the proxy listening on `next`, not at dest, and its QUERY there
 * find `hops` hops. */
static void passes_on_to(const uint8_t *records, uint32_t len, const struct sockaddr_storage *to, int next, int dest,
                         size_t hops)
{
	int out = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	uint32_t bytes;
	uint8_t got[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records, len, NULL, 0, &bytes, NULL, NULL),
	         0);
	CHECK_EQ(wfpr_connect(out, (const struct sockaddr *)to, addr_size(to)), 0);
	CHECK(readable(next, 5000));
	CHECK(!readable(dest, 0));
	int accepted = accept(next, NULL, NULL);
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, got, sizeof(got), &bytes,
	                    NULL, NULL), 0);
	CHECK_EQ(wfpr_records_decode(&r, got, bytes), 0);
	CHECK_EQ(r ? r->hop_count : 0, hops);
	wfpr_records_free(r);
	wfpr_closesocket(accepted);
	wfpr_closesocket(out);
}

/* A QUERY tells the proxy that its connect onward is permitted (nobody is
 * left to redirect it), so the connect goes without asking the broker
 * again; a proxy that registers in between must still get the connection. */
static void onward_sees_a_new_proxy(void)
{
	struct sockaddr_storage server, first, late;
	int dest = tcp_listen(&server), l1 = tcp_listen(&first), l2 = tcp_listen(&late);
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE], records[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "onward-first", &first, NULL, 1000, NULL), 0);
	int client = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(client, (struct sockaddr *)&server, addr_size(&server)), 0);
	int accepted = accept(l1, NULL, NULL);
	uint32_t len = 0;
	CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records, sizeof(records),
	                    &len, NULL, NULL), 0);
	CHECK_EQ(wfpr_preload_register_filtered(id, "onward-late", &late, NULL, 999, NULL), 0);
	passes_on_to(records, len, &server, l2, dest, 2); /* the late proxy has it, and the destination nothing */
	wfpr_closesocket(accepted);
	wfpr_closesocket(client);
	close(dest);
	close(l1);
	close(l2);
}

/* Records come with a UDP flow's first datagram only, and the flow's
 * later datagrams need no question to the broker; a new socket on the same
 * port is a new flow, whose first datagram has its own records. */
static void udp_first_datagrams(void)
{
	struct sockaddr_storage server, me, local = {0};
	int dest = udp_bind(&server), proxy = udp_bind(&me);
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "udp-first", &me, NULL, 1000, NULL), 0);
	uint8_t first_token[WFPR_TOKEN_SIZE] = {0};
	for (int flow = 0; flow < 2; flow++) {
		int c = wfpr_socket(AF_INET, SOCK_DGRAM, 0, 0);
		if (flow == 0) {
			local.ss_family = AF_INET;
			((struct sockaddr_in *)&local)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		}
		CHECK_EQ(bind(c, (struct sockaddr *)&local, addr_size(&local)), 0);
		socklen_t n = sizeof(local);
		getsockname(c, (struct sockaddr *)&local, &n);
		for (int i = 0; i < 3; i++) {
			CHECK_EQ(wfpr_sendto(c, "x", 1, 0, (struct sockaddr *)&server, addr_size(&server)), 1);
			CHECK(readable(proxy, 5000));
			char data[8];
			union {
				struct cmsghdr align;
				uint8_t buf[CMSG_SPACE(WFPR_RECORD_MAX_SIZE) + CMSG_SPACE(WFPR_CONTEXT_MAX_SIZE)];
			} control;
			struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
			struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
			                     .msg_controllen = sizeof(control.buf)};
			CHECK_EQ(wfpr_recvmsg(proxy, &msg, 0), 1);
			struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
			bool has = cm && cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == WFPR_IP_WFP_REDIRECT_RECORDS;
			CHECK_EQ(has, i == 0);
			wfpr_records *r = NULL;
			if (has && wfpr_records_decode(&r, CMSG_DATA(cm), cm->cmsg_len - CMSG_LEN(0)) == 0) {
				/* the second flow's record is its own */
				CHECK(flow == 0 || memcmp(first_token, r->hops[0].token, WFPR_TOKEN_SIZE) != 0);
				memcpy(first_token, r->hops[0].token, WFPR_TOKEN_SIZE);
			}
			CHECK(!has || r);
			wfpr_records_free(r);
		}
		wfpr_closesocket(c);
	}
	CHECK(!readable(dest, 0));
	close(dest);
	close(proxy);
}

static uint64_t broker_requests(void)
{
	wfpr_broker_stats st;
	CHECK_EQ(wfpr_broker_get_stats(&st, broker), 0);
	return st.requests;
}

/* The broker pushes a record to the proxy it goes to as it issues it: the
 * proxy's QUERY then asks nothing, and its connect onward, with those
 * records, is still its own to make (the proxy's notice that it holds the
 * record reaches the broker first). Proxies of their own, for connections
 * to one port, in this process: the broker's counters are at hand. */
static void test_push_answers_a_query(void)
{
	struct sockaddr_storage server, first, second;
	int dest = tcp_listen(&server), l1 = tcp_listen(&first), l2 = tcp_listen(&second);
	char match[64];
	snprintf(match, sizeof(match), "proto=tcp dport=%u", (unsigned)addr_port(&server));
	uint8_t id1[WFPR_REDIRECTOR_ID_SIZE], id2[WFPR_REDIRECTOR_ID_SIZE], records[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id1, "pushed-first", &first, NULL, 1000, match), 0);
	CHECK_EQ(wfpr_preload_register_filtered(id2, "pushed-second", &second, NULL, 900, match), 0);
	int client = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_connect(client, (struct sockaddr *)&server, addr_size(&server)), 0);
	char name[65];
	/* answered after the client's ISSUE, and after the push it made, on this same connection */
	CHECK_EQ(wfpr_preload_redirector_name(name, sizeof(name), id1), 0);
	uint64_t before = broker_requests();
	int accepted = accept(l1, NULL, NULL);
	uint32_t len = 0, context_len = 0;
	struct sockaddr_storage context[2];
	CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records, sizeof(records),
	                    &len, NULL, NULL), 0);
	CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, context, sizeof(context),
	                    &context_len, NULL, NULL), 0);
	CHECK_EQ(broker_requests(), before); /* nothing asked */
	CHECK_EQ(addr_port(&context[0]), addr_port(&server));
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, records, len), 0);
	CHECK(r && r->hop_count == 1 && memcmp(r->hops[0].redirector_id, id1, WFPR_REDIRECTOR_ID_SIZE) == 0);
	wfpr_records_free(r);
	passes_on_to(records, len, &context[0], l2, dest, 2);
	wfpr_closesocket(accepted);
	wfpr_closesocket(client);
	close(dest);
	close(l1);
	close(l2);
}

/* A proxy that closes its connection once both FINs have passed (when
 * the kernel no longer tells its peer) still lets the broker forget the
 * record it held: under Connection: close load the broker's table must
 * not fill up with records of closed connections. */
static void test_release_after_both_fins(void)
{
	struct sockaddr_storage server, me;
	int dest = tcp_listen(&server), l1 = tcp_listen(&me);
	char match[64], name[65];
	snprintf(match, sizeof(match), "proto=tcp dport=%u", (unsigned)addr_port(&server));
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE], records[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "release-after-fins", &me, NULL, 1000, match), 0);
	for (int i = 0; i < 3; i++) {
		int client = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
		CHECK_EQ(wfpr_connect(client, (struct sockaddr *)&server, addr_size(&server)), 0);
		int accepted = accept(l1, NULL, NULL);
		uint32_t len = 0;
		CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
		                    sizeof(records), &len, NULL, NULL), 0);
		wfpr_broker_stats st;
		CHECK_EQ(wfpr_broker_get_stats(&st, broker), 0);
		uint64_t live = st.records_live;
		shutdown(accepted, SHUT_WR);
		shutdown(client, SHUT_WR);
		char c;
		CHECK_EQ(read(accepted, &c, 1), 0);
		CHECK_EQ(read(client, &c, 1), 0);
		struct sockaddr_storage peer;
		socklen_t pl = sizeof(peer);
		for (int wait = 0; wait < 100 && getpeername(accepted, (struct sockaddr *)&peer, &pl) == 0; wait++)
			usleep(10000);
		CHECK(getpeername(accepted, (struct sockaddr *)&peer, &pl) != 0); /* the case this is about */
		wfpr_closesocket(accepted);
		wfpr_closesocket(client);
		/* answered after the release notice, which goes first */
		CHECK_EQ(wfpr_preload_redirector_name(name, sizeof(name), id), 0);
		CHECK_EQ(wfpr_broker_get_stats(&st, broker), 0);
		CHECK_EQ(st.records_live, live - 1);
	}
	close(dest);
	close(l1);
}

/* A worker thread's QUERY of its connection, made while another thread is
 * between its own QUERY and its SET (a proxy with several workers). */
typedef struct other_query {
	int accepted;
	int rc;
} other_query;

static void *query_on_another_thread(void *arg)
{
	other_query *q = arg;
	uint8_t records[WFPR_RECORD_MAX_SIZE];
	uint32_t len = 0;
	q->rc = wfpr_ioctl(q->accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
	                   sizeof(records), &len, NULL, NULL);
	return NULL;
}

/* Each thread keeps its own last answer: another worker's QUERY in
 * between does not make this one's context QUERY, SET and connect onward
 * ask the broker again. */
static void test_answers_per_thread(void)
{
	struct sockaddr_storage server, first;
	int dest = tcp_listen(&server), l1 = tcp_listen(&first);
	char match[64];
	snprintf(match, sizeof(match), "proto=tcp dport=%u", (unsigned)addr_port(&server));
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE], records[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "per-thread", &first, NULL, 1000, match), 0);
	int clients[2], accepted[2];
	for (int i = 0; i < 2; i++) {
		clients[i] = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
		CHECK_EQ(wfpr_connect(clients[i], (struct sockaddr *)&server, addr_size(&server)), 0);
		accepted[i] = accept(l1, NULL, NULL);
	}
	uint32_t len = 0, context_len = 0, bytes = 0;
	CHECK_EQ(wfpr_ioctl(accepted[0], WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
	                    sizeof(records), &len, NULL, NULL), 0);
	other_query q = {accepted[1], -1};
	pthread_t t;
	CHECK_EQ(pthread_create(&t, NULL, query_on_another_thread, &q), 0);
	pthread_join(t, NULL);
	CHECK_EQ(q.rc, 0);
	uint64_t before = broker_requests();
	struct sockaddr_storage context[2];
	CHECK_EQ(wfpr_ioctl(accepted[0], WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, context,
	                    sizeof(context), &context_len, NULL, NULL), 0);
	int out = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	CHECK_EQ(wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records, len, NULL, 0, &bytes, NULL, NULL),
	         0);
	CHECK_EQ(wfpr_connect(out, (const struct sockaddr *)&context[0], addr_size(&context[0])), 0);
	CHECK_EQ(broker_requests(), before); /* nothing asked */
	CHECK(readable(dest, 5000)); /* the proxy was the last: onward to the destination */
	close(accept(dest, NULL, NULL));
	wfpr_closesocket(out);
	for (int i = 0; i < 2; i++) {
		wfpr_closesocket(accepted[i]);
		wfpr_closesocket(clients[i]);
	}
	close(dest);
	close(l1);
}

/* A client in a process of its own (its own broker connection), from
 * this fixed local address to dest: it says when its record is issued
 * (ready), and closes once told to (go), after the proxy did. */
static pid_t client_from(const struct sockaddr_storage *local, const struct sockaddr_storage *dest, int ready, int go)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	int c = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	int one = 1;
	char name[65], byte;
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE] = {0};
	setsockopt(c, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	bool ok = bind(c, (const struct sockaddr *)local, addr_size(local)) == 0 &&
	          wfpr_connect(c, (const struct sockaddr *)dest, addr_size(dest)) == 0;
	wfpr_preload_redirector_name(name, sizeof(name), id); /* answered after this connection's ISSUE */
	ok = ok && write(ready, "x", 1) == 1 && read(go, &byte, 1) == 1 && read(c, &byte, 1) == 0;
	_exit(ok ? 0 : 1);
}

/* A proxy's notices about a connection (it took the record from a push,
 * then closed) reach the broker late, after the next connection on the
 * same tuple has its record: they must leave that one alone. The proxy
 * closes first, so the client can take the same port again at once. */
static void reused_tuple_and_late_notices(void)
{
	struct sockaddr_storage server, first, second, local = {.ss_family = AF_INET};
	int dest = tcp_listen(&server), l1 = tcp_listen(&first), l2 = tcp_listen(&second);
	int taken = tcp_listen(&local); /* a free port for the client, then let go */
	close(taken);
	char match[64];
	snprintf(match, sizeof(match), "proto=tcp dport=%u", (unsigned)addr_port(&server));
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE], records[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "reuse-first", &first, NULL, 1000, match), 0);
	CHECK_EQ(wfpr_preload_register_filtered(id, "reuse-second", &second, NULL, 900, match), 0);
	char name[65], byte;
	uint32_t len;
	for (int round = 0; round < 2; round++) {
		int ready[2], go[2];
		CHECK_EQ(pipe(ready), 0);
		CHECK_EQ(pipe(go), 0);
		pid_t client = client_from(&local, &server, ready[1], go[0]);
		CHECK_EQ(read(ready[0], &byte, 1), 1);
		/* after the client's ISSUE: the first round's notices go now, and this one's push comes */
		CHECK_EQ(wfpr_preload_redirector_name(name, sizeof(name), id), 0);
		int accepted = accept(l1, NULL, NULL);
		CHECK_EQ(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
		                    sizeof(records), &len, NULL, NULL), 0);
		if (round == 1) /* the record is still the broker's: passing it on to the next proxy works */
			passes_on_to(records, len, &server, l2, dest, 2);
		wfpr_closesocket(accepted); /* the proxy first: its side keeps the TIME_WAIT */
		CHECK_EQ(write(go[1], "x", 1), 1);
		int status = -1;
		waitpid(client, &status, 0);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		close(ready[0]);
		close(ready[1]);
		close(go[0]);
		close(go[1]);
	}
	close(dest);
	close(l1);
	close(l2);
}

static void test_reused_tuple_and_late_notices(void)
{
	in_child(reused_tuple_and_late_notices);
}

/* The first hop of the record of a connection the test accepted at l. */
static bool first_hop_is(int l, const uint8_t *id)
{
	uint8_t records[WFPR_RECORD_MAX_SIZE];
	uint32_t len = 0;
	wfpr_records *r = NULL;
	if (!readable(l, 5000))
		return false;
	int accepted = accept(l, NULL, NULL);
	bool ok = wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
	                     sizeof(records), &len, NULL, NULL) == 0 &&
	          wfpr_records_decode(&r, records, len) == 0 && r->hop_count == 1 &&
	          memcmp(r->hops[0].redirector_id, id, WFPR_REDIRECTOR_ID_SIZE) == 0;
	wfpr_records_free(r);
	wfpr_closesocket(accepted);
	return ok;
}

/* A program keeps the broker's answer for a destination (its later
 * connects ask nothing, or only announce themselves) while no proxy comes
 * or goes: a kept permit, then a kept redirect, give way to the proxy that
 * registers next, and every announced connect has its record. */
static void kept_routes_follow_the_proxies(void)
{
	struct sockaddr_storage server, first, second;
	int dest = tcp_listen(&server), l1 = tcp_listen(&first), l2 = tcp_listen(&second);
	char match[64], byte;
	snprintf(match, sizeof(match), "proto=tcp dport=%u", (unsigned)addr_port(&server));
	uint8_t id1[WFPR_REDIRECTOR_ID_SIZE], id2[WFPR_REDIRECTOR_ID_SIZE];
	int ready[2], go[2];
	CHECK_EQ(pipe(ready), 0);
	CHECK_EQ(pipe(go), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* the program: a broker client of its own that registered nothing */
		bool ok = true;
		for (int phase = 0; phase < 3 && ok; phase++) {
			int s[3];
			for (int i = 0; i < 3; i++) {
				s[i] = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
				ok = ok && wfpr_connect(s[i], (const struct sockaddr *)&server, addr_size(&server)) == 0;
			}
			ok = ok && write(ready[1], "x", 1) == 1 && read(go[0], &byte, 1) == 1;
			for (int i = 0; i < 3; i++)
				wfpr_closesocket(s[i]);
		}
		_exit(ok ? 0 : 1);
	}
	CHECK_EQ(read(ready[0], &byte, 1), 1);
	for (int i = 0; i < 3; i++) { /* no proxy takes them yet */
		CHECK(readable(dest, 5000));
		close(accept(dest, NULL, NULL));
	}
	CHECK_EQ(wfpr_preload_register_filtered(id1, "kept-first", &first, NULL, 1000, match), 0);
	CHECK_EQ(write(go[1], "x", 1), 1);
	CHECK_EQ(read(ready[0], &byte, 1), 1);
	for (int i = 0; i < 3; i++)
		CHECK(first_hop_is(l1, id1));
	CHECK(!readable(dest, 0));
	CHECK_EQ(wfpr_preload_register_filtered(id2, "kept-second", &second, NULL, 2000, match), 0);
	CHECK_EQ(write(go[1], "x", 1), 1);
	CHECK_EQ(read(ready[0], &byte, 1), 1);
	for (int i = 0; i < 3; i++)
		CHECK(first_hop_is(l2, id2));
	CHECK(!readable(l1, 0));
	/* a QUERY about a connection nobody redirected waits only until the
	 * broker has read what was sent before it (an announced ROUTE), not the
	 * 2 s it gives an ISSUE that is on its way */
	int direct = socket(AF_INET, SOCK_STREAM, 0);
	CHECK_EQ(connect(direct, (const struct sockaddr *)&second, addr_size(&second)), 0);
	int accepted = accept(l2, NULL, NULL);
	uint8_t records[WFPR_RECORD_MAX_SIZE];
	uint32_t len = 0;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
	                            sizeof(records), &len, NULL, NULL), WFPR_FWP_E_NOT_FOUND);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	CHECK(t1.tv_sec - t0.tv_sec < 1);
	CHECK_EQ(write(go[1], "x", 1), 1);
	int status = -1;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	wfpr_closesocket(accepted);
	close(direct);
	close(dest);
	close(l1);
	close(l2);
	for (int i = 0; i < 2; i++) {
		close(ready[i]);
		close(go[i]);
	}
}

static void test_kept_routes_follow_the_proxies(void)
{
	in_child(kept_routes_follow_the_proxies);
}

/* A client (raw, so the test decides when its ISSUE goes) redirected to
 * the proxy at l and connected there, its ISSUE not sent yet; the
 * connection as the proxy accepted it, and the client's socket in *c. */
static int connected_before_issue(int raw, const struct sockaddr_storage *server, const struct sockaddr_storage *proxy,
                                  int l, int *c, struct sockaddr_storage *local)
{
	wire_request rq = {.type = WIRE_ROUTE, .protocol = IPPROTO_TCP, .a = *server, .b = {.ss_family = AF_INET}};
	wire_reply rp;
	raw_call(raw, &rq, -1, &rp);
	CHECK(rp.err == 0 && rp.action == WFPR_ACTION_REDIRECT);
	*c = socket(AF_INET, SOCK_STREAM, 0);
	CHECK_EQ(connect(*c, (const struct sockaddr *)proxy, addr_size(proxy)), 0);
	socklen_t len = sizeof(*local);
	getsockname(*c, (struct sockaddr *)local, &len);
	int accepted = accept(l, NULL, NULL);
	CHECK_EQ(wfpr_socket_set_overlapped(accepted, 1), 0);
	return accepted;
}

/* A proxy may accept before the broker has its client's record: an
 * overlapped QUERY then pends, no thread waits on the broker, and it
 * completes when the record comes; closing the socket ends it instead. */
static void overlapped_query_waits_for_its_record(void)
{
	struct sockaddr_storage server, first, local;
	int dest = tcp_listen(&server), l1 = tcp_listen(&first), raw = raw_client(), c;
	char match[64];
	snprintf(match, sizeof(match), "proto=tcp dport=%u", (unsigned)addr_port(&server));
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE], records[WFPR_RECORD_MAX_SIZE];
	CHECK_EQ(wfpr_preload_register_filtered(id, "waits", &first, NULL, 1000, match), 0);
	wfpr_overlapped ov;
	CHECK_EQ(wfpr_overlapped_init(&ov), 0);
	struct pollfd done = {.fd = ov.event_fd, .events = POLLIN};
	uint32_t len = 0;

	int accepted = connected_before_issue(raw, &server, &first, l1, &c, &local);
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
	                            sizeof(records), &len, &ov, NULL), WFPR_WSA_IO_PENDING);
	CHECK_EQ(poll(&done, 1, 100), 0);
	wire_request issue = {.type = WIRE_ISSUE, .protocol = IPPROTO_TCP, .b = local};
	raw_call(raw, &issue, c, NULL);
	CHECK_EQ(poll(&done, 1, 5000), 1);
	CHECK_EQ(wfpr_get_overlapped_result(accepted, &ov, &len, 0, NULL), 0);
	wfpr_records *r = NULL;
	CHECK_EQ(wfpr_records_decode(&r, records, len), 0);
	CHECK(r && r->hop_count == 1 && memcmp(r->hops[0].redirector_id, id, WFPR_REDIRECTOR_ID_SIZE) == 0);
	wfpr_records_free(r);
	CHECK_EQ(original_port(accepted), addr_port(&server));
	wfpr_closesocket(accepted);
	close(c);

	wfpr_overlapped_reset(&ov);
	accepted = connected_before_issue(raw, &server, &first, l1, &c, &local);
	CHECK_FAILS_WITH(wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records,
	                            sizeof(records), &len, &ov, NULL), WFPR_WSA_IO_PENDING);
	wfpr_closesocket(accepted);
	CHECK_EQ(poll(&done, 1, 0), 1);
	CHECK_FAILS_WITH(wfpr_get_overlapped_result(accepted, &ov, &len, 0, NULL), WFPR_WSA_OPERATION_ABORTED);
	wfpr_overlapped_dispose(&ov);
	close(c);
	close(raw);
	close(dest);
	close(l1);
}

/* In this process (no child: the QUERY that pends starts a thread, which
 * a forked child of this threaded process may not under TSan). */
static void test_overlapped_query_waits_for_its_record(void)
{
	overlapped_query_waits_for_its_record();
}

static void test_onward_sees_a_new_proxy(void)
{
	in_child(onward_sees_a_new_proxy);
}

static void test_udp_first_datagrams(void)
{
	in_child(udp_first_datagrams);
}

int main(void)
{
	snprintf(broker_path, sizeof(broker_path), "/tmp/wfpr-test-broker-%d.sock", (int)getpid());
	if (broker_thread_start(&broker, &broker_thread, broker_path, USER_QUOTA) != 0 || wfpr_preload_attach(broker_path) != 0) {
		fprintf(stderr, "cannot start the broker\n");
		return 1;
	}
	/* first: registrations of their own, with no other proxy yet */
	RUN(test_onward_sees_a_new_proxy);
	RUN(test_udp_first_datagrams);
	RUN(test_push_answers_a_query);
	RUN(test_answers_per_thread);
	RUN(test_release_after_both_fins);
	RUN(test_reused_tuple_and_late_notices);
	RUN(test_kept_routes_follow_the_proxies);
	RUN(test_overlapped_query_waits_for_its_record);
	proxy_start(&alpha, "alpha");
	proxy_start(&beta, "beta");
	RUN(test_chain_of_two);
	RUN(test_ioctl_rows_through_broker);
	wfpr_engine_stats a = proxy_stop(&alpha), b = proxy_stop(&beta);
	CHECK_EQ(a.accepted, 4); /* the three echo connections, and the hand-driven proxy's */
	CHECK_EQ(b.accepted, 4);
	CHECK_EQ(a.failed + b.failed, 0);
	RUN(test_registration_checks);
	RUN(test_issue_needs_the_socket);
	RUN(test_user_quota); /* last: the records it leaves count for a minute */
	RUN(test_broker_gone);
	wfpr_preload_attach(NULL);
	TEST_MAIN_END();
}
