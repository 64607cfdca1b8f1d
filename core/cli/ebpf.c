/* wfpr ebpf status|cleanup, and what wfpr run --backend ebpf asks of the
 * loader (core/ebpf/loader.c): one instance for the run, its proxies as
 * redirectors in the order given, and the run's processes in its cgroup. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/daemon.h"
#ifdef WFPR_HAVE_EBPF
#include "loader.h"

static ebpf_instance *instance;

int run_ebpf_open(char *err, size_t err_len)
{
	return ebpf_open(&instance, err, err_len);
}

int run_ebpf_enter(pid_t pid)
{
	return instance ? ebpf_enter(instance, pid) : -1;
}

int run_ebpf_add_proxy(unsigned int slot, const uint8_t id[16], pid_t pid, const struct sockaddr_storage address[2],
                       const wfpr_match *match, uint32_t weight, char *err, size_t err_len)
{
	if (!instance || ebpf_add_redirector(instance, slot, id, slot + 1, pid, &address[0], &address[1]) != 0)
		return snprintf(err, err_len, "cannot add its redirector"), -1;
	if (ebpf_guard_redirector(instance, slot, pid, &address[0], err, err_len) != 0)
		return -1;
	return ebpf_set_match(instance, slot, match, weight, err, err_len);
}

int run_ebpf_set_fail_closed(void)
{
	return ebpf_set_fail_closed(instance, true);
}

int run_ebpf_remove_proxy(unsigned int slot)
{
	return instance ? ebpf_remove_redirector(instance, slot) : -1;
}

int run_ebpf_set_udp_idle(unsigned int ms)
{
	return ebpf_set_udp_idle(instance, ms);
}

unsigned long long run_ebpf_udp_connected(void)
{
	return ebpf_udp_connected(instance);
}

void run_ebpf_close(void)
{
	ebpf_close(instance);
	instance = NULL;
}

int cmd_ebpf(int argc, char **argv)
{
	if (argc >= 1 && strcmp(argv[0], "status") == 0) {
		const char *control = argc == 3 && strcmp(argv[1], "--control") == 0 ? argv[2] : WFPR_DAEMON_CONTROL;
		if (argc != 1 && argc != 3) {
			fprintf(stderr, "wfpr ebpf status: give --control PATH or nothing\n");
			return 2;
		}
		int n = ebpf_status(stdout);
		daemon_status(stdout, control, argc == 3);
		return n < 0 ? 1 : 0;
	}
	bool all = argc == 2 && strcmp(argv[1], "--all") == 0;
	if ((argc == 1 || all) && strcmp(argv[0], "cleanup") == 0) {
		if (geteuid() != 0) {
			fprintf(stderr, "wfpr ebpf cleanup: needs root, to remove cgroups and BPF pins\n");
			return 1;
		}
		/* a running instance is left alone (its programs redirect live
		 * traffic) unless --all says to end it too */
		return ebpf_cleanup(stdout, !all) < 0 ? 1 : 0;
	}
	fprintf(stderr, "wfpr ebpf: give status or cleanup\n\n%s", cli_usage);
	return 2;
}

#else

static const char not_built[] = "this wfpr was built without the eBPF backend (it needs clang, bpftool, "
                                "libbpf-dev and the kernel's BTF at build time)";

int run_ebpf_open(char *err, size_t err_len)
{
	snprintf(err, err_len, "%s", not_built);
	return -1;
}

int run_ebpf_enter(pid_t pid)
{
	(void)pid;
	return -1;
}

int run_ebpf_add_proxy(unsigned int slot, const uint8_t id[16], pid_t pid, const struct sockaddr_storage address[2],
                       const wfpr_match *match, uint32_t weight, char *err, size_t err_len)
{
	(void)slot, (void)id, (void)pid, (void)address, (void)match, (void)weight;
	snprintf(err, err_len, "%s", not_built);
	return -1;
}

int run_ebpf_remove_proxy(unsigned int slot)
{
	(void)slot;
	return -1;
}

int run_ebpf_set_fail_closed(void)
{
	return -1;
}

int run_ebpf_set_udp_idle(unsigned int ms)
{
	(void)ms;
	return -1;
}

unsigned long long run_ebpf_udp_connected(void)
{
	return 0;
}

void run_ebpf_close(void)
{
}

int cmd_ebpf(int argc, char **argv)
{
	(void)argc, (void)argv;
	fprintf(stderr, "wfpr ebpf: %s\n", not_built);
	return 1;
}
#endif
