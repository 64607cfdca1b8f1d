/*
 * The user-space limit for a relay that passes datagrams on: receive on
 * 127.0.0.1:PORT, send each datagram on to 127.0.0.1:TARGET_PORT from a
 * socket of the sender's own (a flow, as a proxy keeps one), and send each
 * reply back from PORT. One thread, one epoll loop, no records, no rules;
 * up to 64 datagrams per system call each way (recvmmsg, sendmmsg).
 * bench_proxies.py runs two chained as the limit of the dnsperf row.
 *
 *   bare-udp-relay PORT TARGET_PORT
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* recvmmsg, sendmmsg */
#endif
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAX_DATAGRAM 65536
#define MAX_FLOWS 1024

typedef struct flow {
	struct sockaddr_in client;
	int fd; /* connected to the target */
} flow;

static flow flows[MAX_FLOWS];
static int n_flows;
static char buffers[BATCH][MAX_DATAGRAM];

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static flow *flow_of(int epoll_fd, const struct sockaddr_in *client, const struct sockaddr_in *target)
{
	for (int i = 0; i < n_flows; i++)
		if (flows[i].client.sin_port == client->sin_port && flows[i].client.sin_addr.s_addr == client->sin_addr.s_addr)
			return &flows[i];
	if (n_flows == MAX_FLOWS)
		return NULL;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (const struct sockaddr *)target, sizeof(*target)) != 0) {
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	flow *f = &flows[n_flows];
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)n_flows + 1};
	epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
	f->client = *client;
	f->fd = fd;
	n_flows++;
	return f;
}

/* Every datagram waiting on `from`: a client's to the target through its
 * flow, or (reply_flow) a reply back to that flow's client. */
static void relay(int epoll_fd, int from, const struct sockaddr_in *target, int listener, const flow *reply_flow)
{
	struct mmsghdr in[BATCH], out[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in source[BATCH];
	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){buffers[i], MAX_DATAGRAM};
			in[i].msg_hdr = (struct msghdr){.msg_name = &source[i], .msg_namelen = sizeof(source[i]), .msg_iov = &iov[i],
			                                .msg_iovlen = 1};
		}
		int n = recvmmsg(from, in, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			return;
		/* runs of datagrams to the same socket go in one sendmmsg */
		int run_fd = -1, run_start = 0;
		for (int i = 0; i <= n; i++) {
			int to = -1;
			if (i < n) {
				iov[i].iov_len = in[i].msg_len;
				out[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
				if (reply_flow) {
					out[i].msg_hdr.msg_name = (void *)&reply_flow->client;
					out[i].msg_hdr.msg_namelen = sizeof(reply_flow->client);
					to = listener;
				} else {
					flow *f = flow_of(epoll_fd, &source[i], target);
					to = f ? f->fd : -1;
				}
			}
			if (i == n || to != run_fd) {
				if (run_fd >= 0 && i > run_start)
					sendmmsg(run_fd, out + run_start, (unsigned int)(i - run_start), 0);
				run_fd = to;
				run_start = i;
			}
		}
	}
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: bare-udp-relay PORT TARGET_PORT\n");
		return 2;
	}
	struct sockaddr_in at = loopback(atoi(argv[1])), target = loopback(atoi(argv[2]));
	int listener = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (bind(listener, (struct sockaddr *)&at, sizeof(at)) != 0) {
		perror("bare-udp-relay: bind");
		return 1;
	}
	int epoll_fd = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};
	epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &ev);
	for (;;) {
		struct epoll_event ready[64];
		int n = epoll_wait(epoll_fd, ready, 64, -1);
		for (int i = 0; i < n; i++) {
			uint32_t k = ready[i].data.u32;
			if (k == 0)
				relay(epoll_fd, listener, &target, listener, NULL);
			else
				relay(epoll_fd, flows[k - 1].fd, &target, listener, &flows[k - 1]);
		}
	}
}
