/* A statically linked HTTP client (no libc.so, so no LD_PRELOAD shim can
 * catch it): GET http://HOST:PORT/PATH with HTTP/1.0 and write the body to
 * standard output. HOST is an IPv4 or IPv6 literal. Exit 0 on a 200. The
 * eBPF backend's tests use it to show that the kernel redirects it. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: static-fetch HOST PORT PATH\n");
		return 2;
	}
	struct sockaddr_storage ss = {0};
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	socklen_t len;
	if (inet_pton(AF_INET, argv[1], &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((unsigned short)atoi(argv[2]));
		len = sizeof(*in);
	} else if (inet_pton(AF_INET6, argv[1], &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((unsigned short)atoi(argv[2]));
		len = sizeof(*in6);
	} else {
		fprintf(stderr, "static-fetch: %s is not an address\n", argv[1]);
		return 2;
	}
	int fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) != 0) {
		perror("static-fetch: connect");
		return 1;
	}
	char request[512];
	int n = snprintf(request, sizeof(request), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", argv[3], argv[1]);
	if (write(fd, request, (size_t)n) != n) {
		perror("static-fetch: write");
		return 1;
	}
	static char buf[1 << 16];
	size_t have = 0;
	ssize_t got;
	char *body = NULL;
	int status = 0;
	while ((got = read(fd, buf + have, sizeof(buf) - have)) > 0) {
		have += (size_t)got;
		if (!body) {
			char *end = memmem(buf, have, "\r\n\r\n", 4);
			if (!end && have < sizeof(buf))
				continue;
			if (!end || sscanf(buf, "HTTP/%*s %d", &status) != 1)
				return 1;
			body = end + 4;
			fwrite(body, 1, have - (size_t)(body - buf), stdout);
		} else {
			fwrite(buf, 1, have, stdout);
		}
		have = 0;
	}
	close(fd);
	return status == 200 ? 0 : 1;
}
