/*
 * Relay throughput of the service engine, in one process over loopback:
 * one TCP stream of 512 MiB to a sink, direct and through one and two
 * cooperating engines (inproc backend). Rounds interleave the three paths;
 * medians of 5. Reproduce with `make bench`. (The iperf3/wrk tables against
 * haproxy need the preload backend and come with it.)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "bench_util.h"
#include "wfpr/engine.h"
#include "wfpr/wfpr.h"

#define STREAM (512ull << 20)
#ifndef ROUNDS
#define ROUNDS 5
#endif

typedef struct proxy {
	wfpr_engine *engine;
	struct sockaddr_storage addr;
	pthread_t thread;
} proxy;

static wfpr_action to_proxy(void *user, wfpr_connect_request *req)
{
	if (req->state == WFPR_CONNECTION_REDIRECTED_BY_SELF || req->state == WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF)
		return WFPR_ACTION_PERMIT;
	req->redirect_to = ((proxy *)user)->addr;
	return WFPR_ACTION_REDIRECT;
}

static void *run(void *arg)
{
	wfpr_engine_run(((proxy *)arg)->engine);
	return NULL;
}

static void *sink(void *arg)
{
	int fd = accept(*(int *)arg, NULL, NULL);
	static char buf[1 << 18];
	while (read(fd, buf, sizeof(buf)) > 0) {
	}
	close(fd);
	return NULL;
}

/* One stream through the layer's current filters; seconds. */
static double stream_once(int listener, const struct sockaddr_in *dst)
{
	static char buf[1 << 18];
	pthread_t t;
	pthread_create(&t, NULL, sink, &listener);
	double t0 = now_ns();
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	if (wfpr_connect(fd, (const struct sockaddr *)dst, sizeof(*dst)) != 0)
		abort();
	for (unsigned long long sent = 0; sent < STREAM;) {
		ssize_t n = send(fd, buf, sizeof(buf), MSG_NOSIGNAL);
		if (n <= 0)
			abort();
		sent += (unsigned long long)n;
	}
	shutdown(fd, SHUT_WR);
	pthread_join(t, NULL);
	double secs = (now_ns() - t0) / 1e9;
	wfpr_closesocket(fd);
	return secs;
}

int main(void)
{
	struct sockaddr_in dst = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(dst);
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	bind(listener, (struct sockaddr *)&dst, sizeof(dst));
	listen(listener, 16);
	getsockname(listener, (struct sockaddr *)&dst, &len);

	wfpr_layer *layer;
	proxy p[2];
	uint32_t callouts[2];
	wfpr_layer_new(&layer);
	for (int i = 0; i < 2; i++) {
		wfpr_redirect_handle *h;
		wfpr_redirect_handle_create(&h, layer, NULL, i ? "b" : "a");
		wfpr_engine_options o = WFPR_ENGINE_OPTIONS_INIT;
		o.handle = h;
		if (wfpr_engine_new(&p[i].engine, &o) != 0)
			abort();
		wfpr_engine_address(&p[i].addr, p[i].engine);
		pthread_create(&p[i].thread, NULL, run, &p[i]);
		wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
		co.classify = to_proxy;
		co.user = &p[i];
		co.handle = h;
		uint32_t cid;
		wfpr_callout_register(&cid, layer, &co);
		callouts[i] = cid; /* filters are added per path below */
	}
	wfpr_inproc_attach(layer);

	double gbps[3][ROUNDS];
	for (int r = 0; r < ROUNDS; r++) {
		for (int n = 0; n < 3; n++) {
			uint64_t added[2];
			for (int i = 0; i < n; i++) {
				wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
				fo.callout_id = callouts[i];
				fo.weight = (uint64_t)(10 - i);
				fo.remote_port_min = fo.remote_port_max = ntohs(dst.sin_port);
				wfpr_filter_add(&added[i], layer, &fo);
			}
			gbps[n][r] = (double)STREAM * 8 / stream_once(listener, &dst) / 1e9;
			for (int i = 0; i < n; i++)
				wfpr_filter_remove(layer, added[i]);
		}
	}
	double direct = median(gbps[0], ROUNDS), one = median(gbps[1], ROUNDS), two = median(gbps[2], ROUNDS);
	printf("| path (one 512 MiB stream, in process) | Gbit/s (median of %d) | ratio to direct |\n|---|---|---|\n", ROUNDS);
	printf("| direct | %.2f | 1.00 |\n", direct);
	printf("| through one engine | %.2f | %.2f |\n", one, one / direct);
	printf("| through two cooperating engines | %.2f | %.2f |\n", two, two / direct);
	for (int i = 0; i < 2; i++) {
		wfpr_engine_stop(p[i].engine);
		pthread_join(p[i].thread, NULL);
		wfpr_engine_free(p[i].engine);
	}
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
	return 0;
}
