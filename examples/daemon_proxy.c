/*
 * A complete proxy of its own that joins a running `wfpr daemon` (the
 * host-wide eBPF layer) with the library, not with `wfpr proxy`:
 *
 *   sudo wfpr daemon &
 *   sudo ./build/wfpr-daemon-proxy NAME 'proto=tcp dport=80'
 *
 * It joins the daemon's cgroup, turns the eBPF backend on, listens on
 * 127.0.0.1, registers a redirector with a match, and for each connection:
 * QUERYs its record and original destination, prints who connected, sets
 * the record on its outbound socket, connects to the destination and
 * relays both ways. A thread per connection keeps it short; a real proxy
 * uses an event loop (core/engine/).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "wfpr/wfpr.h"

static const uint8_t *my_id;

/* Copy both ways until both sides are done. */
static void relay(int a, int b)
{
	struct pollfd p[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};
	char buf[65536];
	int open_sides = 2;
	while (open_sides > 0 && poll(p, 2, -1) > 0) {
		for (int i = 0; i < 2; i++) {
			if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t n = read(p[i].fd, buf, sizeof(buf));
			if (n <= 0) {
				shutdown(p[1 - i].fd, SHUT_WR);
				p[i].fd = -1; /* poll skips it from now on */
				open_sides--;
				continue;
			}
			for (ssize_t off = 0, w; off < n; off += w)
				if ((w = write(p[1 - i].fd, buf + off, (size_t)(n - off))) <= 0)
					return;
		}
	}
}

static void *serve(void *arg)
{
	int client = (int)(intptr_t)arg;
	uint8_t record[WFPR_RECORD_MAX_SIZE];
	struct sockaddr_storage context[2];
	uint32_t len = 0, bytes = 0;
	wfpr_records *r = NULL;
	if (wfpr_ioctl(client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, record, sizeof(record), &len, NULL,
	               NULL) != 0 ||
	    wfpr_ioctl(client, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, context, sizeof(context), &bytes,
	               NULL, NULL) != 0 ||
	    wfpr_records_decode(&r, record, len) != 0) {
		fprintf(stderr, "no record: %s\n", wfpr_strerror(wfpr_get_last_error()));
		close(client);
		return NULL;
	}
	wfpr_process who = r->hops[0].process;
	wfpr_process_fill(&who); /* the kernel's hops carry no path */
	char to[64];
	wfpr_redirect_state state;
	wfpr_redirect_state_for_id(&state, record, len, my_id);
	printf("%s (pid %u, uid %u, %s) -> %s, hop %zu, %s\n", who.name, who.pid, who.uid, who.exe,
	       wfpr_sockaddr_format(to, sizeof(to), &context[0]), r->hop_count, wfpr_redirect_state_name(state));
	fflush(stdout);
	wfpr_records_free(r);

	int out = wfpr_socket(context[0].ss_family, SOCK_STREAM, 0, 0);
	socklen_t alen = context[0].ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
	if (out < 0 ||
	    wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, record, len, NULL, 0, &bytes, NULL, NULL) != 0 ||
	    wfpr_connect(out, (struct sockaddr *)&context[0], alen) != 0)
		fprintf(stderr, "cannot pass it on: %s\n", wfpr_strerror(wfpr_get_last_error()));
	else
		relay(client, out);
	if (out >= 0)
		wfpr_closesocket(out);
	close(client);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: %s NAME [MATCH] [CONTROL]   (MATCH: \"proto=tcp dport=80\", see docs/daemon.md)\n",
		        argv[0]);
		return 2;
	}
	const char *name = argv[1], *match = argc > 2 ? argv[2] : "", *control = argc > 3 ? argv[3] : NULL;
	char err[512];
	int rc = wfpr_daemon_join(control, NULL, 0, err, sizeof(err));
	if (rc == 0)
		rc = wfpr_ebpf_attach(1);
	if (rc != 0) {
		fprintf(stderr, "%s: %s (%s)\n", name, rc == WFPR_WSAEADDRINUSE ? "another backend is on" : err,
		        wfpr_err_name(rc));
		return 1;
	}
	struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct sockaddr_storage where;
	socklen_t wlen = sizeof(where);
	int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listener < 0 || bind(listener, (struct sockaddr *)&any, sizeof(any)) != 0 || listen(listener, 128) != 0 ||
	    getsockname(listener, (struct sockaddr *)&where, &wlen) != 0) {
		perror("listen");
		return 1;
	}
	wfpr_daemon_link *link = NULL;
	if ((rc = wfpr_daemon_register(&link, control, name, 100, match, &where, NULL, err, sizeof(err))) != 0) {
		fprintf(stderr, "%s: the daemon refused: %s (%s)\n", name, err, wfpr_err_name(rc));
		return 1;
	}
	my_id = wfpr_daemon_link_id(link);
	char at[64];
	printf("%s: registered at %s, taking %s\n", name, wfpr_sockaddr_format(at, sizeof(at), &where),
	       *match ? match : "every connection");
	fflush(stdout);
	for (;;) {
		int client = accept(listener, NULL, NULL);
		pthread_t t;
		if (client >= 0 && pthread_create(&t, NULL, serve, (void *)(intptr_t)client) == 0)
			pthread_detach(t);
	}
}
