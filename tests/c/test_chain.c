/* Two and three cooperating redirectors in one process over real loopback
 * TCP and UDP: every connection passes every proxy exactly once, in weight
 * order, and the bytes arrive intact (SHA-256 at both ends). */
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include "support.h"
#include "test.h"

#define CONNECTIONS 4
#define PAYLOAD (1u << 20)

static void tcp_chain(int n, bool greedy)
{
	static const char *names[] = {"antivirus", "dlp", "tls-inspect"};
	wfpr_layer *layer;
	echo_server server;
	redirector r[3];

	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, CONNECTIONS), 0);
	for (int i = 0; i < n; i++)
		CHECK_EQ(redirector_start(&r[i], layer, names[i], IPPROTO_TCP, addr_port(&server.addr),
		                          (uint64_t)(100 - i), greedy), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);

	uint8_t sent[CONNECTIONS][32], echoed[32];
	for (int c = 0; c < CONNECTIONS; c++) {
		CHECK_EQ(echo_client(&server.addr, PAYLOAD + (size_t)c * 4099, sent[c], echoed), 0);
		CHECK(memcmp(sent[c], echoed, 32) == 0);
	}
	echo_server_join(&server);
	CHECK_EQ(server.served, CONNECTIONS);
	for (int c = 0; c < CONNECTIONS; c++)
		CHECK(memcmp(server.digest[c], sent[c], 32) == 0);

	for (int i = 0; i < n; i++) {
		redirector_stop(&r[i]);
		CHECK_EQ(r[i].connections, CONNECTIONS); /* exactly once each */
		CHECK_EQ(r[i].errors, 0);
		CHECK_EQ(r[i].context_matches, CONNECTIONS);
		for (int c = 0; c < CONNECTIONS; c++)
			CHECK_EQ(r[i].hops_seen[c], i + 1); /* the i-th proxy sees i earlier hops plus its own */
	}
	wfpr_layer_stats st;
	CHECK_EQ(wfpr_layer_get_stats(&st, layer), 0);
	CHECK_EQ(st.redirected, (uint64_t)n * CONNECTIONS);
	CHECK_EQ(st.blocked, 0);
	if (greedy) /* every proxy's outbound connect met its own or an earlier redirect and was refused */
		CHECK(st.refused_redirects >= (uint64_t)n * CONNECTIONS);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

static void two_tcp_redirectors(void) { tcp_chain(2, false); }
static void three_tcp_redirectors(void) { tcp_chain(3, false); }
/* Callouts that redirect whatever the state: the layer alone stops the loop. */
static void three_greedy_redirectors_still_terminate(void) { tcp_chain(3, true); }

static void udp_chain(int n)
{
	static const char *names[] = {"dns-filter", "dlp", "audit"};
	wfpr_layer *layer;
	udp_echo server;
	redirector r[3];

	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(udp_echo_start(&server), 0);
	for (int i = 0; i < n; i++)
		CHECK_EQ(redirector_start(&r[i], layer, names[i], IPPROTO_UDP, addr_port(&server.addr),
		                          (uint64_t)(100 - i), false), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);

	int fd = wfpr_socket(AF_INET, SOCK_DGRAM, 0, 0);
	enum { DATAGRAMS = 5 };
	for (int d = 0; d < DATAGRAMS; d++) {
		uint8_t out[1200], in[1500], sent_hash[32], got_hash[32];
		RAND_bytes(out, sizeof(out));
		CHECK_EQ(wfpr_sendto(fd, out, sizeof(out), 0, (struct sockaddr *)&server.addr, addr_size(&server.addr)),
		         sizeof(out));
		struct pollfd pf = {.fd = fd, .events = POLLIN};
		CHECK_EQ(poll(&pf, 1, 5000), 1);
		struct sockaddr_storage from;
		socklen_t from_len = sizeof(from);
		ssize_t got = wfpr_recvfrom(fd, in, sizeof(in), 0, (struct sockaddr *)&from, &from_len);
		CHECK_EQ(got, sizeof(out));
		sha256(sent_hash, out, sizeof(out));
		sha256(got_hash, in, got > 0 ? (size_t)got : 0);
		CHECK(memcmp(sent_hash, got_hash, 32) == 0);
		/* the reply comes from the original destination, not from a proxy */
		CHECK(memcmp(&from, &server.addr, sizeof(struct sockaddr_in)) == 0);
	}
	wfpr_closesocket(fd);
	for (int i = 0; i < n; i++) {
		redirector_stop(&r[i]);
		CHECK_EQ(r[i].connections, 1); /* one flow, its records on the first datagram only */
		CHECK_EQ(r[i].hops_seen[0], i + 1);
		CHECK_EQ(r[i].context_matches, 1);
		CHECK_EQ(r[i].errors, 0);
	}
	udp_echo_stop(&server);
	CHECK_EQ(server.datagrams, DATAGRAMS);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

static void two_udp_redirectors(void) { udp_chain(2); }
static void three_udp_redirectors(void) { udp_chain(3); }

/* Seventeen distinct redirectors each want the connection once: the 17th
 * redirect would pass the 16-hop limit, so that connect is refused. */
static void hop_limit_blocks_the_seventeenth(void)
{
	enum { N = WFPR_RECORD_MAX_HOPS + 1 };
	static redirector r[N];
	static char names[N][16];
	wfpr_layer *layer;
	echo_server server;

	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, 1), 0);
	for (int i = 0; i < N; i++) {
		snprintf(names[i], sizeof(names[i]), "r%d", i);
		CHECK_EQ(redirector_start(&r[i], layer, names[i], IPPROTO_TCP, addr_port(&server.addr), (uint64_t)(100 - i), false), 0);
	}
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	uint8_t sent[32], echoed[32];
	CHECK(echo_client(&server.addr, 1000, sent, echoed) != 0); /* the chain fails closed */

	wfpr_layer_stats st;
	CHECK_EQ(wfpr_layer_get_stats(&st, layer), 0);
	CHECK_EQ(st.hop_limit, 1);
	CHECK_EQ(st.redirected, WFPR_RECORD_MAX_HOPS);
	for (int i = 0; i < N; i++) {
		redirector_stop(&r[i]);
		CHECK_EQ(r[i].connections, i < WFPR_RECORD_MAX_HOPS ? 1 : 0);
	}
	CHECK_EQ(r[WFPR_RECORD_MAX_HOPS - 1].hops_seen[0], WFPR_RECORD_MAX_HOPS);
	/* the server never saw the connection; let its thread go */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	connect(fd, (struct sockaddr *)&server.addr, addr_size(&server.addr));
	close(fd);
	echo_server_join(&server);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

typedef struct client_job {
	const struct sockaddr_storage *addr;
	size_t len;
	uint8_t sent[32], echoed[32];
	int rc;
} client_job;

static void *client_main(void *arg)
{
	client_job *j = arg;
	j->rc = echo_client(j->addr, j->len, j->sent, j->echoed);
	return NULL;
}

/* Many clients at once through two redirectors: the store and the layer
 * under contention; every payload intact, every connection seen once each. */
static void concurrent_connections(void)
{
	enum { CLIENTS = 64 };
	static client_job jobs[CLIENTS];
	pthread_t threads[CLIENTS];
	wfpr_layer *layer;
	echo_server server;
	redirector r[2];

	CHECK_EQ(wfpr_layer_new(&layer), 0);
	CHECK_EQ(echo_server_start(&server, CLIENTS), 0);
	for (int i = 0; i < 2; i++)
		CHECK_EQ(redirector_start(&r[i], layer, i ? "dlp" : "av", IPPROTO_TCP, addr_port(&server.addr), (uint64_t)(10 - i), false), 0);
	CHECK_EQ(wfpr_inproc_attach(layer), 0);
	for (int c = 0; c < CLIENTS; c++) {
		jobs[c] = (client_job){.addr = &server.addr, .len = 65536 + (size_t)c * 977};
		pthread_create(&threads[c], NULL, client_main, &jobs[c]);
	}
	for (int c = 0; c < CLIENTS; c++) {
		pthread_join(threads[c], NULL);
		CHECK_EQ(jobs[c].rc, 0);
		CHECK(memcmp(jobs[c].sent, jobs[c].echoed, 32) == 0);
	}
	echo_server_join(&server);
	CHECK_EQ(server.served, CLIENTS);
	for (int i = 0; i < 2; i++) {
		redirector_stop(&r[i]);
		CHECK_EQ(r[i].connections, CLIENTS);
		CHECK_EQ(r[i].errors, 0);
	}
	wfpr_layer_stats st;
	CHECK_EQ(wfpr_layer_get_stats(&st, layer), 0);
	CHECK_EQ(st.redirected, 2 * CLIENTS);
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
}

int main(void)
{
	RUN(two_tcp_redirectors);
	RUN(three_tcp_redirectors);
	RUN(three_greedy_redirectors_still_terminate);
	RUN(two_udp_redirectors);
	RUN(three_udp_redirectors);
	RUN(hop_limit_blocks_the_seventeenth);
	RUN(concurrent_connections);
	TEST_MAIN_END();
}
