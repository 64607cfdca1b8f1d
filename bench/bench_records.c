/*
 * Record and QUERY costs, as medians of repeated runs (the machine is shared
 * and noisy). Reproduce with `make bench`.
 *   build+parse : append a 4th hop to a 3-hop record, then parse it
 *   verify      : check the four hop tokens (what SET adds to a parse)
 *   decode      : wfpr_records_decode of the 4-hop record (for people)
 *   QUERY       : synchronous SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS on a
 *                 redirected socket, against the syscalls it must make
 *                 (SO_PROTOCOL, getpeername, getsockname) timed in the same run
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "../core/src/record.h"
#include "bench_util.h"
#include "wfpr/wfpr.h"


static wfpr_hop hop(int i)
{
	wfpr_hop h;
	memset(&h, 0, sizeof(h));
	RAND_bytes(h.redirector_id, sizeof(h.redirector_id));
	h.handle_id = (uint64_t)i;
	h.protocol = IPPROTO_TCP;
	struct sockaddr_in *a = (struct sockaddr_in *)&h.original_remote;
	a->sin_family = AF_INET;
	a->sin_port = htons(443);
	a->sin_addr.s_addr = htonl(0x7f000001);
	h.original_local = h.target = h.original_remote;
	return h;
}

typedef void (*body_fn)(void *arg, int iterations);

static double per_call_ns(body_fn body, void *arg, int iterations)
{
	double runs[RUNS];
	body(arg, iterations / 10); /* warm up */
	for (int r = 0; r < RUNS; r++) {
		double t0 = now_ns();
		body(arg, iterations);
		runs[r] = (now_ns() - t0) / iterations;
	}
	return median(runs, RUNS);
}

/* Median over runs of (a - b), the two timed back to back in each run, so
 * both see the same machine noise. */
static double paired_difference_ns(body_fn a, body_fn b, void *arg, int iterations, double *a_median, double *b_median)
{
	double diff[RUNS], ta[RUNS], tb[RUNS];
	a(arg, iterations / 10);
	b(arg, iterations / 10);
	for (int r = 0; r < RUNS; r++) {
		double t0 = now_ns();
		a(arg, iterations);
		double t1 = now_ns();
		b(arg, iterations);
		double t2 = now_ns();
		ta[r] = (t1 - t0) / iterations;
		tb[r] = (t2 - t1) / iterations;
		diff[r] = ta[r] - tb[r];
	}
	*a_median = median(ta, RUNS);
	*b_median = median(tb, RUNS);
	return median(diff, RUNS);
}

typedef struct record_bench {
	uint8_t key[RECORD_KEY_SIZE];
	uint8_t *three;
	size_t three_len;
	record_view three_view; /* as the layer holds it from classify */
	uint8_t *four;
	size_t four_len;
	wfpr_hop fourth;
} record_bench;

static void build_and_parse(void *arg, int n)
{
	record_bench *b = arg;
	static record_view view;
	for (int i = 0; i < n; i++) {
		uint8_t *blob;
		size_t len;
		wfpr_hop h = b->fourth;
		if (wfpr__record_append(&blob, &len, &b->three_view, b->three, b->three_len, &h, NULL, 0, b->key) != 0 ||
		    wfpr__record_parse(&view, blob, len) != 0)
			abort();
		free(blob);
	}
}

static void verify(void *arg, int n)
{
	record_bench *b = arg;
	static record_view view;
	if (wfpr__record_parse(&view, b->four, b->four_len) != 0)
		abort();
	for (int i = 0; i < n; i++)
		if (!wfpr__record_tokens_valid(&view, b->key))
			abort();
}

static void decode(void *arg, int n)
{
	record_bench *b = arg;
	for (int i = 0; i < n; i++) {
		wfpr_records *r;
		if (wfpr_records_decode(&r, b->four, b->four_len) != 0)
			abort();
		wfpr_records_free(r);
	}
}

static void query(void *arg, int n)
{
	int fd = *(int *)arg;
	uint8_t buf[1024];
	uint32_t bytes;
	for (int i = 0; i < n; i++)
		if (wfpr_ioctl(fd, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, buf, sizeof(buf), &bytes, NULL, NULL) != 0)
			abort();
}

static void query_syscalls(void *arg, int n)
{
	int fd = *(int *)arg;
	for (int i = 0; i < n; i++) {
		struct sockaddr_storage a;
		socklen_t len = sizeof(a);
		int protocol;
		socklen_t plen = sizeof(protocol);
		getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &plen);
		getpeername(fd, (struct sockaddr *)&a, &len);
		len = sizeof(a);
		getsockname(fd, (struct sockaddr *)&a, &len);
	}
}

static wfpr_action redirect_all(void *user, wfpr_connect_request *req)
{
	req->redirect_to = *(struct sockaddr_storage *)user;
	return WFPR_ACTION_REDIRECT;
}

/* A real redirected connection; returns the proxy's accepted socket. */
static int redirected_socket(wfpr_layer *layer)
{
	static struct sockaddr_storage proxy;
	socklen_t len = sizeof(proxy);
	struct sockaddr_in *sin = (struct sockaddr_in *)&proxy;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	bind(listener, (struct sockaddr *)sin, sizeof(*sin));
	listen(listener, 4);
	getsockname(listener, (struct sockaddr *)&proxy, &len);

	wfpr_redirect_handle *h;
	wfpr_redirect_handle_create(&h, layer, NULL, "bench");
	wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
	co.classify = redirect_all;
	co.user = &proxy;
	co.handle = h;
	uint32_t cid;
	uint64_t fid;
	wfpr_callout_register(&cid, layer, &co);
	wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
	fo.callout_id = cid;
	fo.remote_port_min = fo.remote_port_max = 9;
	wfpr_filter_add(&fid, layer, &fo);
	wfpr_inproc_attach(layer);

	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int client = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	if (wfpr_connect(client, (struct sockaddr *)&dst, sizeof(dst)) != 0)
		abort();
	return wfpr_accept(listener, NULL, NULL);
}

int main(void)
{
	record_bench b;
	RAND_bytes(b.key, sizeof(b.key));
	b.three = NULL;
	b.three_len = 0;
	for (int i = 0; i < 3; i++) {
		uint8_t *next;
		size_t len;
		wfpr_hop h = hop(i);
		if (b.three && wfpr__record_parse(&b.three_view, b.three, b.three_len) != 0)
			abort();
		wfpr__record_append(&next, &len, b.three ? &b.three_view : NULL, b.three, b.three_len, &h, NULL, 0, b.key);
		free(b.three);
		b.three = next;
		b.three_len = len;
	}
	b.fourth = hop(3);
	wfpr_hop h = b.fourth;
	if (wfpr__record_parse(&b.three_view, b.three, b.three_len) != 0)
		abort();
	wfpr__record_append(&b.four, &b.four_len, &b.three_view, b.three, b.three_len, &h, NULL, 0, b.key);

	wfpr_layer *layer;
	wfpr_layer_new(&layer);
	int fd = redirected_socket(layer);

	double bp = per_call_ns(build_and_parse, &b, 200000);
	double ver = per_call_ns(verify, &b, 200000);
	double dec = per_call_ns(decode, &b, 200000);
	double q, sys;
	double over = paired_difference_ns(query, query_syscalls, &fd, 50000, &q, &sys);

	printf("| measure | median per call | target |\n|---|---|---|\n");
	printf("| build + parse a 4-hop record (%zu bytes) | %.0f ns | <= 1000 ns |\n", b.four_len, bp);
	printf("| verify its 4 hop tokens (SipHash-2-4-128, OpenSSL EVP_MAC) | %.0f ns | |\n", ver);
	printf("| decode a 4-hop record for people | %.0f ns | |\n", dec);
	printf("| QUERY on the inproc backend | %.0f ns | |\n", q);
	printf("| the syscalls QUERY must make, same run | %.0f ns | |\n", sys);
	printf("| QUERY beyond its syscalls (median of paired runs) | %.0f ns | <= 300 ns |\n", over);
	wfpr_inproc_detach(layer);
	return 0;
}
