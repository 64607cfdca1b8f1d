/*
 * Two cooperating redirectors and a client in one process, over real
 * loopback sockets. An "antivirus" and a "dlp" redirector both want to see
 * connections to a server. Each proxy reads the redirect record from its
 * accepted socket, sets it on its outbound socket and connects to the
 * original destination; the layer's redirect state makes the connection pass
 * each proxy exactly once and then reach the server.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "wfpr/wfpr.h"

#define PAYLOAD_SIZE (4u << 20)

static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *who, const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&print_lock);
	printf("%-10s ", who);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	pthread_mutex_unlock(&print_lock);
}

static const char *fmt_addr(char *buf, const struct sockaddr_storage *a)
{
	return wfpr_sockaddr_format(buf, 64, a);
}

static int listen_loopback(struct sockaddr_storage *addr)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)addr;
	socklen_t len = sizeof(*addr);
	memset(addr, 0, sizeof(*addr));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)sin, sizeof(*sin)) < 0 || listen(fd, 16) < 0 ||
	    getsockname(fd, (struct sockaddr *)addr, &len) < 0) {
		perror("listen");
		exit(1);
	}
	return fd;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Copy both ways until both sides have closed, passing half-closes on. */
static void relay(int a, int b)
{
	static _Thread_local uint8_t buf[256 * 1024];
	const int fds[2] = {a, b};
	struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
	for (int open_ends = 2; open_ends > 0 && poll(p, 2, -1) > 0;) {
		for (int i = 0; i < 2; i++) {
			if (!p[i].revents)
				continue;
			ssize_t n = read(fds[i], buf, sizeof(buf));
			if (n > 0 && send_all(fds[1 - i], buf, (size_t)n) == 0)
				continue;
			shutdown(fds[1 - i], SHUT_WR);
			p[i].fd = -1;
			open_ends--;
		}
	}
}

typedef struct proxy {
	const char *name;
	wfpr_redirect_handle *handle;
	int listen_fd;
	struct sockaddr_storage addr;
	pthread_t thread;
	int connections;
} proxy;

static wfpr_action classify(void *user, wfpr_connect_request *req)
{
	proxy *p = user;
	char to[64], via[64];
	bool mine = req->state == WFPR_CONNECTION_REDIRECTED_BY_SELF ||
	            req->state == WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF;
	if (mine) {
		say("  classify", "%-9s connect %s  state=%-29s -> permit", p->name, fmt_addr(to, &req->remote),
		    wfpr_redirect_state_name(req->state));
		return WFPR_ACTION_PERMIT;
	}
	req->redirect_to = p->addr;
	req->target_pid = getpid();
	say("  classify", "%-9s connect %s  state=%-29s -> redirect to %s", p->name, fmt_addr(to, &req->remote),
	    wfpr_redirect_state_name(req->state), fmt_addr(via, &p->addr));
	return WFPR_ACTION_REDIRECT;
}

static void print_chain(const proxy *p, const uint8_t *blob, uint32_t len, const proxy *all, int n)
{
	wfpr_records *records;
	if (wfpr_records_decode(&records, blob, len) != 0)
		return;
	say(p->name, "accepted; its redirect record (%u bytes) has %zu hop(s):", len, records->hop_count);
	for (size_t i = 0; i < records->hop_count; i++) {
		const wfpr_hop *h = &records->hops[i];
		const char *who = "?";
		for (int k = 0; k < n; k++)
			if (memcmp(h->redirector_id, wfpr_redirect_handle_id(all[k].handle), WFPR_REDIRECTOR_ID_SIZE) == 0)
				who = all[k].name;
		char from[64], to[64], via[64];
		say("", "  hop %zu  by %-9s %s -> %s  sent to %s", i + 1, who, fmt_addr(from, &h->original_local),
		    fmt_addr(to, &h->original_remote), fmt_addr(via, &h->target));
	}
	wfpr_records_free(records);
}

static proxy proxies[2];

static void *proxy_main(void *arg)
{
	proxy *p = arg;
	int client = wfpr_accept(p->listen_fd, NULL, NULL);
	uint32_t need = 0, len = 0;
	/* the size probe, then the record and the context */
	wfpr_ioctl(client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, NULL, 0, &need, NULL, NULL);
	uint8_t *record = malloc(need);
	struct sockaddr_storage context[2];
	if (wfpr_ioctl(client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, record, need, &len, NULL, NULL) != 0 ||
	    wfpr_ioctl(client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, context, sizeof(context), &need, NULL, NULL) != 0) {
		say(p->name, "QUERY failed: %s", wfpr_err_name(wfpr_get_last_error()));
		exit(1);
	}
	p->connections++;
	print_chain(p, record, len, proxies, 2);

	char to[64];
	say(p->name, "inspected; connecting to the original destination %s with the record set", fmt_addr(to, &context[0]));
	int out = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	uint32_t bytes;
	if (wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, record, len, NULL, 0, &bytes, NULL, NULL) != 0 ||
	    wfpr_connect(out, (struct sockaddr *)&context[0], sizeof(struct sockaddr_in)) != 0) {
		say(p->name, "forwarding failed: %s", wfpr_err_name(wfpr_get_last_error()));
		exit(1);
	}
	relay(client, out);
	wfpr_closesocket(out);
	wfpr_closesocket(client);
	free(record);
	return NULL;
}

typedef struct server {
	int listen_fd;
	struct sockaddr_storage addr;
	pthread_t thread;
	uint8_t digest[32];
	size_t received;
} server;

/* Receive everything, hash it, answer with the same bytes. */
static void *server_main(void *arg)
{
	server *s = arg;
	int fd = accept(s->listen_fd, NULL, NULL);
	uint8_t *data = malloc(PAYLOAD_SIZE), buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0 && s->received + (size_t)n <= PAYLOAD_SIZE) {
		memcpy(data + s->received, buf, (size_t)n);
		s->received += (size_t)n;
	}
	EVP_Digest(data, s->received, s->digest, NULL, EVP_sha256(), NULL);
	send_all(fd, data, s->received);
	close(fd);
	free(data);
	return NULL;
}

static void hex(char *out, const uint8_t *d)
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

int main(void)
{
	wfpr_layer *layer;
	server srv = {0};
	char a[64];

	if (wfpr_layer_new(&layer) != 0)
		return 1;
	printf("wfpr demo: two cooperating redirectors and a client, one process, real loopback TCP\n\n");
	srv.listen_fd = listen_loopback(&srv.addr);
	say("server", "listening on %s", fmt_addr(a, &srv.addr));

	const char *names[2] = {"antivirus", "dlp"};
	for (int i = 0; i < 2; i++) {
		proxy *p = &proxies[i];
		p->name = names[i];
		p->listen_fd = listen_loopback(&p->addr);
		wfpr_redirect_handle_create(&p->handle, layer, NULL, p->name);
		wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
		co.name = p->name;
		co.classify = classify;
		co.user = p;
		co.handle = p->handle;
		uint32_t callout;
		uint64_t filter;
		wfpr_callout_register(&callout, layer, &co);
		wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
		fo.callout_id = callout;
		fo.protocol = IPPROTO_TCP;
		fo.weight = (uint64_t)(10 - i);
		fo.remote_port_min = fo.remote_port_max = ntohs(((struct sockaddr_in *)&srv.addr)->sin_port);
		wfpr_filter_add(&filter, layer, &fo);
		char id[33];
		say(p->name, "redirector %s, proxy on %s", wfpr_redirector_id_format(id, sizeof(id), wfpr_redirect_handle_id(p->handle)),
		    fmt_addr(a, &p->addr));
		pthread_create(&p->thread, NULL, proxy_main, p);
	}
	pthread_create(&srv.thread, NULL, server_main, &srv);
	wfpr_inproc_attach(layer);

	putchar('\n');
	say("client", "connect %s and send %u random bytes", fmt_addr(a, &srv.addr), PAYLOAD_SIZE);
	int fd = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
	if (wfpr_connect(fd, (struct sockaddr *)&srv.addr, sizeof(struct sockaddr_in)) != 0) {
		say("client", "connect failed: %s", wfpr_err_name(wfpr_get_last_error()));
		return 1;
	}
	uint8_t *payload = malloc(PAYLOAD_SIZE), *echo = malloc(PAYLOAD_SIZE);
	RAND_bytes(payload, PAYLOAD_SIZE);
	send_all(fd, payload, PAYLOAD_SIZE);
	shutdown(fd, SHUT_WR);
	size_t got = 0;
	ssize_t n;
	while (got < PAYLOAD_SIZE && (n = read(fd, echo + got, PAYLOAD_SIZE - got)) > 0)
		got += (size_t)n;
	wfpr_closesocket(fd);
	pthread_join(srv.thread, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(proxies[i].thread, NULL);

	uint8_t sent[32], back[32];
	char h1[65], h2[65], h3[65];
	EVP_Digest(payload, PAYLOAD_SIZE, sent, NULL, EVP_sha256(), NULL);
	EVP_Digest(echo, got, back, NULL, EVP_sha256(), NULL);
	hex(h1, sent);
	hex(h2, srv.digest);
	hex(h3, back);
	putchar('\n');
	say("client", "sent     sha256 %s", h1);
	say("server", "received sha256 %s (%zu bytes)", h2, srv.received);
	say("client", "echoed   sha256 %s (%zu bytes)", h3, got);

	wfpr_layer_stats st;
	wfpr_layer_get_stats(&st, layer);
	bool ok = memcmp(sent, srv.digest, 32) == 0 && memcmp(sent, back, 32) == 0 &&
	          proxies[0].connections == 1 && proxies[1].connections == 1 && st.redirected == 2;
	printf("\n%s: %llu redirects, each redirector saw the connection %d and %d time(s), bytes %s\n",
	       ok ? "OK" : "FAILED", (unsigned long long)st.redirected, proxies[0].connections,
	       proxies[1].connections, memcmp(sent, back, 32) == 0 ? "intact" : "CORRUPTED");
	wfpr_inproc_detach(layer);
	wfpr_layer_free(layer);
	free(payload);
	free(echo);
	return ok ? 0 : 1;
}
