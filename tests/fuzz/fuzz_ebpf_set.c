/* libFuzzer target for the eBPF backend's SET parser, in the kernel: the
 * input is SET (setsockopt at the programs' level) on a fresh socket in a
 * cgroup with the BPF programs attached. One record the kernel really
 * issued, to a connection that stays open, may pass (the seed corpus holds
 * it, so mutations start next to it); anything else must be refused with
 * EINVAL, and the kernel must keep answering. Root only: without it, every
 * input is skipped, and the first run says why. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "abi.h"
#include "loader.h"

static ebpf_instance *instance;
static uint8_t genuine[4096];
static socklen_t genuine_len;
static int keep[3]; /* the redirected connection: its record stays live */

static int listener(struct sockaddr_in *addr)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	socklen_t len = sizeof(*addr);
	*addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (fd < 0 || bind(fd, (struct sockaddr *)addr, sizeof(*addr)) || listen(fd, 8) ||
	    getsockname(fd, (struct sockaddr *)addr, &len))
		abort();
	return fd;
}

static void done(void)
{
	ebpf_leave(instance, getpid());
	ebpf_close(instance);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	char why[512];
	if (ebpf_open(&instance, why, sizeof(why)) != 0) {
		fprintf(stderr, "fuzz-ebpf-set: SKIP, every input: %s\n", why);
		instance = NULL;
		return 0;
	}
	if (ebpf_enter(instance, getpid()) != 0)
		abort();
	atexit(done);
	struct sockaddr_in proxy, sink;
	int proxy_fd = listener(&proxy), sink_fd = listener(&sink);
	uint8_t id[16] = {0xf0};
	if (ebpf_add_redirector(instance, 0, id, 1, getpid(), (struct sockaddr_storage *)&proxy, NULL) ||
	    ebpf_add_filter(instance, 0, NULL, 0, 0, 65535, 0, 1))
		abort();
	keep[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(keep[0], (struct sockaddr *)&sink, sizeof(sink)) != 0)
		abort();
	keep[1] = accept(proxy_fd, NULL, NULL);
	keep[2] = sink_fd;
	genuine_len = sizeof(genuine);
	if (getsockopt(keep[1], WFPR_EBPF_SOL, WFPR_EBPF_OPT_RECORDS, genuine, &genuine_len) != 0)
		abort();
	/* the seed: the genuine record, for a corpus directory given on the command line */
	const char *seed_dir = getenv("WFPR_FUZZ_SEED_DIR");
	if (seed_dir) {
		char path[512];
		snprintf(path, sizeof(path), "%s/genuine", seed_dir);
		FILE *f = fopen(path, "wb");
		if (f) {
			fwrite(genuine, 1, genuine_len, f);
			fclose(f);
		}
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!instance)
		return 0;
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		abort();
	int rc = setsockopt(s, WFPR_EBPF_SOL, WFPR_EBPF_OPT_SET, data, (socklen_t)size);
	int err = errno;
	bool is_genuine = size == genuine_len && memcmp(data, genuine, size) == 0;
	if (is_genuine && rc != 0) {
		fprintf(stderr, "fuzz-ebpf-set: the genuine record was refused: %s\n", strerror(err));
		abort();
	}
	if (!is_genuine && (rc == 0 || err != EINVAL)) {
		fprintf(stderr, "fuzz-ebpf-set: %zu made-up bytes got %s\n", size, rc == 0 ? "accepted" : strerror(err));
		abort();
	}
	close(s);
	return 0;
}
