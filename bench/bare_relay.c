/*
 * The user-space limit for a relay that passes bytes on: accept on
 * 127.0.0.1:PORT, connect to TARGET_PORT on 127.0.0.1, and copy each
 * direction with read and send through a 1 MiB buffer, one thread per
 * direction. No records, no rules, no event loop. bench_proxies.py runs it
 * (one, and two chained) as the rows wfpr's relay is measured against.
 *
 *   bare-relay PORT TARGET_PORT
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER (1u << 20)

typedef struct pipe_half {
	int from, to;
} pipe_half;

static void *copy(void *arg)
{
	pipe_half *p = arg;
	char *buf = malloc(BUFFER);
	ssize_t n;
	while (buf && (n = read(p->from, buf, BUFFER)) > 0) {
		for (ssize_t off = 0; off < n;) {
			ssize_t w = send(p->to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
			if (w <= 0)
				goto done;
			off += w;
		}
	}
done:
	shutdown(p->to, SHUT_WR);
	free(buf);
	return NULL;
}

static void *serve(void *arg)
{
	int *fds = arg; /* client, upstream */
	pipe_half up = {fds[0], fds[1]}, down = {fds[1], fds[0]};
	pthread_t t;
	if (pthread_create(&t, NULL, copy, &up) == 0) {
		copy(&down);
		pthread_join(t, NULL);
	}
	close(fds[0]);
	close(fds[1]);
	free(fds);
	return NULL;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: bare-relay PORT TARGET_PORT\n");
		return 2;
	}
	struct sockaddr_in at = loopback(atoi(argv[1])), target = loopback(atoi(argv[2]));
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (struct sockaddr *)&at, sizeof(at)) != 0 || listen(ls, 4096) != 0) {
		perror("bare-relay: listen");
		return 1;
	}
	for (;;) {
		int c = accept(ls, NULL, NULL);
		if (c < 0)
			continue;
		int u = socket(AF_INET, SOCK_STREAM, 0);
		if (u < 0 || connect(u, (struct sockaddr *)&target, sizeof(target)) != 0) {
			close(c);
			if (u >= 0)
				close(u);
			continue;
		}
		int *fds = malloc(2 * sizeof(int));
		pthread_t t;
		if (!fds) {
			close(c);
			close(u);
			continue;
		}
		fds[0] = c;
		fds[1] = u;
		if (pthread_create(&t, NULL, serve, fds) == 0)
			pthread_detach(t);
	}
}
