/* The eBPF backend's QUERY against the transparent-proxy baseline, in one
 * run (root): a synchronous QUERY of a 1 KiB record (nine hops, issued by
 * the kernel) through wfpr_ioctl, and getsockopt(SO_ORIGINAL_DST) on a
 * connection that nftables redirected, rounds interleaved. The baseline's
 * sockets are made in the network namespace NETNS, whose nftables redirect
 * 127.0.0.1:NAT_FROM to NAT_TO (bench/bench_ebpf.py sets that up and writes
 * the table); the eBPF chain lives in the caller's namespace.
 *
 *     bench-ebpf NETNS NAT_FROM NAT_TO
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <linux/netfilter_ipv4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "bench_util.h"
#include "loader.h"
#include "wfpr/wfpr.h"

#define HOPS 9
#define CALLS 20000
#define CONNECTS 2000

static struct sockaddr_in loopback(uint16_t port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static int listener(struct sockaddr_in *addr)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), on = 1;
	socklen_t len = sizeof(*addr);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(*addr)) != 0 || listen(fd, 64) != 0 ||
	    getsockname(fd, (struct sockaddr *)addr, &len) != 0) {
		perror("bench-ebpf: listen");
		exit(1);
	}
	return fd;
}

/* Connections that no filter matches, against the same connections from
 * outside the layer's cgroup: connect, accept and close, rounds
 * interleaved (this process moves between the cgroups; a socket belongs to
 * the cgroup it was made in). */
static void connect_rate(ebpf_instance *e)
{
	struct sockaddr_in target = loopback(0);
	int fd = listener(&target);
	double direct[RUNS], unmatched[RUNS], ratio[RUNS];
	for (int r = 0; r < RUNS; r++) {
		for (int inside = 0; inside < 2; inside++) {
			if (inside ? ebpf_enter(e, getpid()) : ebpf_leave(e, getpid())) {
				perror("bench-ebpf: move between cgroups");
				exit(1);
			}
			double t0 = now_ns();
			for (int i = 0; i < CONNECTS; i++) {
				int c = socket(AF_INET, SOCK_STREAM, 0);
				if (connect(c, (struct sockaddr *)&target, sizeof(target)) != 0) {
					perror("bench-ebpf: connect");
					exit(1);
				}
				close(accept(fd, NULL, NULL));
				close(c);
			}
			(inside ? unmatched : direct)[r] = (now_ns() - t0) / CONNECTS;
		}
		ratio[r] = unmatched[r] / direct[r];
	}
	close(fd);
	printf("connect_direct_ns %.0f\nconnect_unmatched_ns %.0f\nconnect_ratio %.3f\n", median(direct, RUNS),
	       median(unmatched, RUNS), median(ratio, RUNS));
}

static int run(ebpf_instance *e, const char *netns, uint16_t nat_from, uint16_t nat_to)
{
	wfpr_ebpf_attach(1);
	struct sockaddr_in sink = loopback(0), proxies[HOPS];
	int sink_fd = listener(&sink), proxy_fd[HOPS];
	(void)sink_fd; /* the last hop connects here, straight (the backlog accepts) */
	for (unsigned int i = 0; i < HOPS; i++) {
		uint8_t id[16] = {0xbe, (uint8_t)i};
		proxies[i] = loopback(0);
		proxy_fd[i] = listener(&proxies[i]);
		ebpf_add_redirector(e, i, id, i + 1, getpid(), (struct sockaddr_storage *)&proxies[i], NULL);
		/* only connections to the sink are redirected */
		ebpf_add_filter(e, i, NULL, 0, ntohs(sink.sin_port), ntohs(sink.sin_port), IPPROTO_TCP, 100 - i);
	}
	/* and one that names a process nobody runs: every connection is tested
	 * against the process conditions too */
	wfpr_match nobody = {0};
	uint8_t id[16] = {0xbe, HOPS};
	struct sockaddr_in extra = loopback(0);
	int extra_fd = listener(&extra);
	(void)extra_fd;
	if (wfpr_match_add(&nobody, "comm", "nobody-runs-me", NULL, 0) != 0 ||
	    ebpf_add_redirector(e, HOPS, id, HOPS + 1, getpid(), (struct sockaddr_storage *)&extra, NULL) != 0 ||
	    ebpf_set_match(e, HOPS, &nobody, 1, NULL, 0) != 0)
		return 1;
	connect_rate(e);
	int client = socket(AF_INET, SOCK_STREAM, 0), accepted = -1;
	if (connect(client, (struct sockaddr *)&sink, sizeof(sink)) != 0)
		return 1;
	uint8_t record[4096];
	uint32_t len = 0;
	for (int i = 0; i < HOPS; i++) {
		accepted = accept(proxy_fd[i], NULL, NULL);
		if (wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, record, sizeof(record), &len,
		               NULL, NULL) != 0) {
			fprintf(stderr, "bench-ebpf: QUERY at hop %d: %s\n", i + 1, wfpr_err_name(wfpr_get_last_error()));
			return 1;
		}
		int out = wfpr_socket(AF_INET, SOCK_STREAM, 0, 0);
		wfpr_ioctl(out, WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, record, len, NULL, 0, &len, NULL, NULL);
		if (connect(out, (struct sockaddr *)&sink, sizeof(sink)) != 0)
			return 1;
	}

	/* the baseline: a connection nftables redirected from nat_from to nat_to */
	int ns = open(netns, O_RDONLY | O_CLOEXEC);
	if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) {
		perror("bench-ebpf: setns");
		return 1;
	}
	close(ns);
	struct sockaddr_in nat = loopback(nat_to), from = loopback(nat_from);
	int nat_fd = listener(&nat), nat_client = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(nat_client, (struct sockaddr *)&from, sizeof(from)) != 0) {
		perror("bench-ebpf: connect through the nftables redirect");
		return 1;
	}
	int nat_accepted = accept(nat_fd, NULL, NULL);
	struct sockaddr_in original;
	socklen_t olen = sizeof(original);
	if (getsockopt(nat_accepted, SOL_IP, SO_ORIGINAL_DST, &original, &olen) != 0 || original.sin_port != from.sin_port) {
		perror("bench-ebpf: SO_ORIGINAL_DST");
		return 1;
	}

	double query[RUNS], raw[RUNS], orig[RUNS], ratio[RUNS];
	for (int r = 0; r < RUNS; r++) {
		double t0 = now_ns();
		for (int i = 0; i < CALLS; i++)
			wfpr_ioctl(accepted, WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, record, sizeof(record), &len,
			           NULL, NULL);
		double t1 = now_ns();
		for (int i = 0; i < CALLS; i++) {
			olen = sizeof(original);
			getsockopt(nat_accepted, SOL_IP, SO_ORIGINAL_DST, &original, &olen);
		}
		double t2 = now_ns();
		for (int i = 0; i < CALLS; i++) {
			socklen_t n = sizeof(record);
			getsockopt(accepted, 0x57465052, 1, record, &n);
		}
		double t3 = now_ns();
		query[r] = (t1 - t0) / CALLS;
		orig[r] = (t2 - t1) / CALLS;
		raw[r] = (t3 - t2) / CALLS;
		ratio[r] = query[r] / orig[r];
	}
	printf("record_bytes %u\nhops %d\n", len, HOPS);
	printf("query_ns %.0f\nso_original_dst_ns %.0f\ngetsockopt_ns %.0f\nratio %.2f\n", median(query, RUNS),
	       median(orig, RUNS), median(raw, RUNS), median(ratio, RUNS));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: bench-ebpf NETNS NAT_FROM NAT_TO (a netns with an nftables redirect)\n");
		return 2;
	}
	char why[512];
	ebpf_instance *e;
	if (ebpf_open(&e, why, sizeof(why)) != 0) {
		fprintf(stderr, "bench-ebpf: %s\n", why);
		return 1;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		int rc = ebpf_enter(e, getpid()) == 0 ? run(e, argv[1], (uint16_t)atoi(argv[2]), (uint16_t)atoi(argv[3])) : 1;
		fflush(stdout);
		_exit(rc);
	}
	int status = 1;
	waitpid(pid, &status, 0);
	ebpf_close(e);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
