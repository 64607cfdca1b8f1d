/* The eBPF backend's loader: a cgroup, the programs attached to it, their
 * links and maps pinned, the redirectors and filters written to the maps;
 * and the status and cleanup of what a crash leaves. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "../src/cgroup.h"
#include "abi.h"
#include "loader.h"
#include "wfpr/error.h"
#include "wfpr/match.h"
#include "wfpr/record.h"
#include "wfpr/socket.h"
#include "wfpr.skel.h"

#define MAX_LINKS 16
#define CGROUP_PREFIX "wfpr-"

typedef struct filter_spec {
	unsigned int slot;
	uint32_t weight;
	wfpr_match match;
	struct wfpr_ebpf_filter kernel; /* match, as the BPF programs read it */
} filter_spec;

struct ebpf_instance {
	struct wfpr_bpf *skel;
	struct bpf_link *links[MAX_LINKS];
	size_t n_links;
	char cgroup[320];
	bool owns_cgroup; /* made it (wfpr run), so it empties and removes it */
	char pins[320];
	int cgroup_fd;
	filter_spec filters[WFPR_EBPF_FILTERS];
	size_t n_filters;
};

static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_WARN && getenv("WFPR_EBPF_DEBUG"))
		return vfprintf(stderr, fmt, ap);
	return 0;
}


static int ensure_bpffs(void)
{
	struct statfs st;
	if (statfs("/sys/fs/bpf", &st) == 0 && st.f_type == BPF_FS_MAGIC)
		return 0;
	if (mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") != 0)
		return -1;
	return 0;
}

static bool owner_alive(pid_t pid)
{
	return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/* Kill every process in a cgroup and wait (2 s at most) until it is empty. */
static void empty_cgroup(const char *cgroup)
{
	char path[640];
	snprintf(path, sizeof(path), "%s/cgroup.kill", cgroup);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "1", 1) < 0) {
			/* fall through to killing one by one */
		}
		close(fd);
	}
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
	for (int i = 0; i < 200; i++) {
		FILE *f = fopen(path, "r");
		int pid, n = 0;
		while (f && fscanf(f, "%d", &pid) == 1) {
			kill(pid, SIGKILL);
			n++;
		}
		if (f)
			fclose(f);
		if (n == 0)
			return;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static void remove_pins(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *ent;
	char path[640];
	while (d && (ent = readdir(d))) {
		if (ent->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, ent->d_name);
		unlink(path);
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

int ebpf_open(ebpf_instance **out, char *err, size_t err_len)
{
	return ebpf_open_on(out, NULL, err, err_len);
}

int ebpf_open_on(ebpf_instance **out, const char *cgroup, char *err, size_t err_len)
{
	char root[200];
	*out = NULL;
	if (geteuid() != 0) {
		snprintf(err, err_len, "the eBPF backend needs root (CAP_SYS_ADMIN, or CAP_BPF with CAP_NET_ADMIN and CAP_PERFMON) to load and attach its programs");
		return -1;
	}
	if (wfpr__cgroup2_mount(root, sizeof(root)) != 0) {
		snprintf(err, err_len, "no cgroup v2 hierarchy is mounted (see /proc/self/mounts)");
		return -1;
	}
	if (ensure_bpffs() != 0) {
		snprintf(err, err_len, "cannot mount a bpffs at /sys/fs/bpf: %s", strerror(errno));
		return -1;
	}
	ebpf_cleanup(NULL, true);
	libbpf_set_print(quiet);

	ebpf_instance *e = calloc(1, sizeof(*e));
	if (!e) {
		snprintf(err, err_len, "out of memory");
		return -1;
	}
	e->cgroup_fd = -1;
	e->owns_cgroup = !cgroup;
	if (cgroup) {
		const char *rel = wfpr__cgroup_relative(cgroup, root);
		snprintf(e->cgroup, sizeof(e->cgroup), "%s%s%s", root, *rel ? "/" : "", rel);
	} else {
		snprintf(e->cgroup, sizeof(e->cgroup), "%s/" CGROUP_PREFIX "%d", root, (int)getpid());
	}
	snprintf(e->pins, sizeof(e->pins), EBPF_PIN_ROOT "/%d", (int)getpid());
	if ((mkdir(EBPF_PIN_ROOT, 0700) != 0 && errno != EEXIST) || mkdir(e->pins, 0700) != 0) {
		snprintf(err, err_len, "cannot make %s: %s", e->pins, strerror(errno));
		free(e);
		return -1;
	}
	if ((e->owns_cgroup && mkdir(e->cgroup, 0755) != 0) ||
	    (e->cgroup_fd = open(e->cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		snprintf(err, err_len, "cannot %s the cgroup %s: %s", e->owns_cgroup ? "make" : "open", e->cgroup,
		         strerror(errno));
		rmdir(e->pins);
		free(e);
		return -1;
	}
	e->skel = wfpr_bpf__open_and_load();
	if (!e->skel) {
		snprintf(err, err_len, "the kernel refused the BPF programs (%s); WFPR_EBPF_DEBUG=1 shows the verifier's log",
		         strerror(errno));
		ebpf_close(e);
		return -1;
	}
	struct timespec mono, real;
	clock_gettime(CLOCK_MONOTONIC, &mono);
	clock_gettime(CLOCK_REALTIME, &real);
	struct wfpr_ebpf_config cfg = {
		.realtime_offset_ns = (int64_t)(real.tv_sec - mono.tv_sec) * 1000000000LL + (real.tv_nsec - mono.tv_nsec),
		.udp_idle_ns = (uint64_t)WFPR_UDP_FLOW_IDLE_MS * 1000000u};
	uint32_t zero = 0;
	bpf_map__update_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), BPF_ANY);

	struct bpf_program *prog;
	char path[640];
	bpf_object__for_each_program(prog, e->skel->obj) {
		struct bpf_link *link = bpf_program__attach_cgroup(prog, e->cgroup_fd);
		snprintf(path, sizeof(path), "%s/%s", e->pins, bpf_program__name(prog));
		if (!link || e->n_links == MAX_LINKS || bpf_link__pin(link, path) != 0) {
			snprintf(err, err_len, "cannot attach %s to %s: %s", bpf_program__name(prog), e->cgroup, strerror(errno));
			bpf_link__destroy(link);
			ebpf_close(e);
			return -1;
		}
		e->links[e->n_links++] = link;
	}
	struct bpf_map *shown[] = {e->skel->maps.redirectors, e->skel->maps.counters, e->skel->maps.records,
	                           e->skel->maps.flows, e->skel->maps.filters, e->skel->maps.settings};
	for (size_t i = 0; i < sizeof(shown) / sizeof(shown[0]); i++) {
		snprintf(path, sizeof(path), "%s/map_%s", e->pins, bpf_map__name(shown[i]));
		bpf_map__pin(shown[i], path);
	}
	*out = e;
	return 0;
}

static void to16(uint8_t out[16], const struct sockaddr_storage *a, uint16_t *port)
{
	memset(out, 0, 16);
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)a;
		out[10] = out[11] = 0xff;
		memcpy(out + 12, &in->sin_addr, 4);
		if (port)
			*port = ntohs(in->sin_port);
	} else {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
		memcpy(out, &in6->sin6_addr, 16);
		if (port)
			*port = ntohs(in6->sin6_port);
	}
}

int ebpf_add_redirector(ebpf_instance *e, unsigned int slot, const uint8_t id[16], uint64_t handle, pid_t pid,
                        const struct sockaddr_storage *address, const struct sockaddr_storage *address6)
{
	if (!e || !id || !address || slot >= WFPR_EBPF_REDIRECTORS ||
	    (address->ss_family != AF_INET && address->ss_family != AF_INET6))
		return -1;
	struct wfpr_ebpf_redirector r = {.handle = handle, .pid = (uint32_t)pid, .active = 1};
	memcpy(r.id, id, 16);
	to16(r.ip, address, &r.port);
	if (address6 && address6->ss_family == AF_INET6)
		to16(r.ip6, address6, &r.port6);
	uint32_t key = slot;
	return bpf_map__update_elem(e->skel->maps.redirectors, &key, sizeof(key), &r, sizeof(r), BPF_ANY);
}

/* A copy of pid's socket that is bound to address (by protocol), or -1. */
static int find_socket(int pidfd, pid_t pid, const struct sockaddr_storage *address, int protocol)
{
	char dir[64], path[320], link[64];
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(dir);
	struct dirent *ent;
	int found = -1;
	while (d && found < 0 && (ent = readdir(d))) {
		snprintf(path, sizeof(path), "%s/%s", dir, ent->d_name);
		ssize_t n = readlink(path, link, sizeof(link) - 1);
		if (n <= 0 || strncmp(link, "socket:", 7) != 0)
			continue;
		int fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(ent->d_name), 0);
		struct sockaddr_storage local;
		socklen_t len = sizeof(local);
		int proto = 0, listening = 0;
		socklen_t ol = sizeof(proto);
		if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &ol) == 0 && proto == protocol &&
		    (ol = sizeof(listening), getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ol)) == 0 &&
		    (protocol == IPPROTO_UDP || listening) && getsockname(fd, (struct sockaddr *)&local, &len) == 0 &&
		    local.ss_family == address->ss_family) {
			uint8_t a[16], b[16];
			uint16_t pa = 0, pb = 0;
			to16(a, &local, &pa);
			to16(b, address, &pb);
			if (pa == pb && memcmp(a, b, 16) == 0) {
				found = fd;
				continue;
			}
		}
		if (fd >= 0)
			close(fd);
	}
	if (d)
		closedir(d);
	return found;
}

int ebpf_guard_redirector(ebpf_instance *e, unsigned int slot, pid_t pid, const struct sockaddr_storage *address,
                          char *err, size_t err_len)
{
	struct wfpr_ebpf_redirector r;
	uint32_t key = slot;
	if (!e || !address || slot >= WFPR_EBPF_REDIRECTORS ||
	    bpf_map__lookup_elem(e->skel->maps.redirectors, &key, sizeof(key), &r, sizeof(r), 0) != 0)
		return snprintf(err, err_len, "no such redirector"), -1;
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		return snprintf(err, err_len, "cannot open process %d: %s", (int)pid, strerror(errno)), -1;
	int tcp = find_socket(pidfd, pid, address, IPPROTO_TCP), udp = find_socket(pidfd, pid, address, IPPROTO_UDP);
	close(pidfd);
	char where[64];
	int rc = -1;
	if (tcp < 0) {
		snprintf(err, err_len, "process %d has no TCP socket listening on %s", (int)pid,
		         wfpr_sockaddr_format(where, sizeof(where), address));
	} else {
		uint32_t k_tcp = WFPR_EBPF_LISTENER_KEY(slot, 0), k_udp = WFPR_EBPF_LISTENER_KEY(slot, 1);
		uint64_t v_tcp = (uint64_t)tcp, v_udp = (uint64_t)udp;
		r.guarded = 1;
		rc = bpf_map__update_elem(e->skel->maps.listeners, &k_tcp, sizeof(k_tcp), &v_tcp, sizeof(v_tcp), BPF_ANY);
		if (rc == 0 && udp >= 0 &&
		    bpf_map__update_elem(e->skel->maps.listeners, &k_udp, sizeof(k_udp), &v_udp, sizeof(v_udp), BPF_ANY) == 0)
			r.guarded |= 2;
		if (rc == 0)
			rc = bpf_map__update_elem(e->skel->maps.redirectors, &key, sizeof(key), &r, sizeof(r), BPF_ANY);
		if (rc != 0)
			snprintf(err, err_len, "cannot hold the proxy's sockets in the kernel: %s", strerror(errno));
	}
	if (tcp >= 0)
		close(tcp);
	if (udp >= 0)
		close(udp);
	return rc;
}

int ebpf_set_carrier(ebpf_instance *e, unsigned int slot, pid_t pid, uint64_t cgroup_id)
{
	struct wfpr_ebpf_redirector r;
	uint32_t key = slot;
	if (!e || slot >= WFPR_EBPF_REDIRECTORS ||
	    bpf_map__lookup_elem(e->skel->maps.redirectors, &key, sizeof(key), &r, sizeof(r), 0) != 0)
		return -1;
	r.carry_pid = (uint32_t)pid;
	r.carry_cgroup = cgroup_id;
	return bpf_map__update_elem(e->skel->maps.redirectors, &key, sizeof(key), &r, sizeof(r), BPF_ANY);
}

bool ebpf_proxy_alive(const ebpf_instance *e, unsigned int slot)
{
	uint32_t key = WFPR_EBPF_LISTENER_KEY(slot, 0);
	uint64_t cookie;
	return e && bpf_map__lookup_elem(e->skel->maps.listeners, &key, sizeof(key), &cookie, sizeof(cookie), 0) == 0;
}

int ebpf_set_fail_closed(ebpf_instance *e, bool on)
{
	uint32_t zero = 0;
	struct wfpr_ebpf_config cfg;
	if (!e || bpf_map__lookup_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), 0) != 0)
		return -1;
	cfg.fail_closed = on;
	return bpf_map__update_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), BPF_ANY);
}

int ebpf_remove_redirector(ebpf_instance *e, unsigned int slot)
{
	struct wfpr_ebpf_redirector r;
	uint32_t key = slot;
	if (!e || slot >= WFPR_EBPF_REDIRECTORS ||
	    bpf_map__lookup_elem(e->skel->maps.redirectors, &key, sizeof(key), &r, sizeof(r), 0) != 0)
		return -1;
	r.active = 0;
	return bpf_map__update_elem(e->skel->maps.redirectors, &key, sizeof(key), &r, sizeof(r), BPF_ANY);
}

/* Does prefix outer contain prefix inner? */
static bool covers(const wfpr_prefix *outer, const wfpr_prefix *inner)
{
	if (outer->family != inner->family || outer->len > inner->len)
		return false;
	unsigned int whole = outer->len / 8, rest = outer->len % 8;
	return memcmp(outer->addr, inner->addr, whole) == 0 &&
	       (rest == 0 || ((outer->addr[whole] ^ inner->addr[whole]) & (0xff << (8 - rest))) == 0);
}

static void clear_map(struct bpf_map *map, size_t key_size)
{
	uint8_t next[32];
	while (bpf_map__get_next_key(map, NULL, next, key_size) == 0)
		if (bpf_map__delete_elem(map, next, key_size, 0) != 0)
			break;
}

static const wfpr_prefix everything[2] = {{.family = AF_INET}, {.family = AF_INET6}};

/* A filter's prefixes of one list: its dst (none: every address), or its
 * exclude-dst. */
static const wfpr_prefix *prefixes(const filter_spec *f, bool exclude, size_t *n)
{
	if (exclude) {
		*n = f->match.n_exclude;
		return f->match.exclude;
	}
	*n = f->match.n_dst ? f->match.n_dst : 2;
	return f->match.n_dst ? f->match.dst : everything;
}

/* Fill one pair of tries: each prefix gets the bits of every filter with a
 * prefix that contains it, so the longest match carries all that apply. */
static int fill_tries(ebpf_instance *e, bool exclude, struct bpf_map *trie4, struct bpf_map *trie6)
{
	clear_map(trie4, sizeof(struct wfpr_ebpf_lpm4));
	clear_map(trie6, sizeof(struct wfpr_ebpf_lpm6));
	for (size_t i = 0; i < e->n_filters; i++) {
		size_t n;
		const wfpr_prefix *list = prefixes(&e->filters[i], exclude, &n);
		for (size_t k = 0; k < n; k++) {
			const wfpr_prefix *p = &list[k];
			uint32_t mask = 0;
			for (size_t j = 0; j < e->n_filters; j++) {
				size_t m;
				const wfpr_prefix *theirs = prefixes(&e->filters[j], exclude, &m);
				for (size_t l = 0; l < m; l++)
					if (covers(&theirs[l], p))
						mask |= 1u << j;
			}
			int rc;
			if (p->family == AF_INET) {
				struct wfpr_ebpf_lpm4 key = {.prefixlen = p->len};
				memcpy(key.ip, p->addr, 4);
				rc = bpf_map__update_elem(trie4, &key, sizeof(key), &mask, sizeof(mask), BPF_ANY);
			} else {
				struct wfpr_ebpf_lpm6 key = {.prefixlen = p->len};
				memcpy(key.ip, p->addr, 16);
				rc = bpf_map__update_elem(trie6, &key, sizeof(key), &mask, sizeof(mask), BPF_ANY);
			}
			if (rc != 0)
				return -1;
		}
	}
	return 0;
}

/* Rewrite the filter array and the tries from e->filters. */
static int commit_filters(ebpf_instance *e)
{
	uint32_t zero = 0;
	struct wfpr_ebpf_config cfg;
	if (bpf_map__lookup_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), 0) != 0)
		return -1;
	cfg.n_filters = 0; /* nothing matches while the maps change */
	bpf_map__update_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), BPF_ANY);

	for (uint32_t i = 0; i < e->n_filters; i++)
		if (bpf_map__update_elem(e->skel->maps.filters, &i, sizeof(i), &e->filters[i].kernel,
		                         sizeof(e->filters[i].kernel), BPF_ANY) != 0)
			return -1;
	if (fill_tries(e, false, e->skel->maps.lpm4, e->skel->maps.lpm6) != 0 ||
	    fill_tries(e, true, e->skel->maps.xlpm4, e->skel->maps.xlpm6) != 0)
		return -1;
	cfg.n_filters = (uint32_t)e->n_filters;
	return bpf_map__update_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), BPF_ANY);
}

/* The cgroup2 directory dir (absolute, or relative to the mount) as the
 * kernel names it: its id (inode number) and depth. */
static int cgroup_ident(const char *dir, uint64_t *id, uint32_t *level, char *err, size_t err_len)
{
	char root[200], path[600];
	struct stat st;
	if (wfpr__cgroup2_mount(root, sizeof(root)) != 0)
		return snprintf(err, err_len, "no cgroup v2 hierarchy is mounted"), -1;
	const char *rel = wfpr__cgroup_relative(dir, root);
	snprintf(path, sizeof(path), "%s/%s", root, rel);
	if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
		return snprintf(err, err_len, "cgroup: %s is not a cgroup directory", path), -1;
	*id = st.st_ino;
	*level = 0;
	for (const char *p = rel; *p; p++)
		if (*p != '/' && (p == rel || p[-1] == '/'))
			(*level)++;
	return 0;
}

/* m as the BPF programs read it: names looked up (exe: its inode). */
static int kernel_filter(struct wfpr_ebpf_filter *k, unsigned int slot, uint32_t weight, const wfpr_match *m,
                         char *err, size_t err_len)
{
	_Static_assert(WFPR_MATCH_PORTS == WFPR_EBPF_MATCH_PORTS && WFPR_MATCH_UIDS == WFPR_EBPF_MATCH_UIDS &&
	                       WFPR_MATCH_COMMS == WFPR_EBPF_MATCH_COMMS && WFPR_MATCH_EXES == WFPR_EBPF_MATCH_EXES &&
	                       WFPR_MATCH_CGROUPS == WFPR_EBPF_MATCH_CGROUPS && WFPR_EBPF_FILTERS <= 32,
	               "the kernel's filters hold a whole wfpr_match");
	memset(k, 0, sizeof(*k));
	k->redirector = slot;
	k->weight = weight;
	k->protocol = m->protocol > 0 ? (uint32_t)m->protocol : 0;
	k->n_ports = (uint8_t)m->n_ports;
	for (size_t i = 0; i < m->n_ports; i++) {
		k->ports[i].lo = m->ports[i].lo;
		k->ports[i].hi = m->ports[i].hi;
	}
	k->n_uids = (uint8_t)m->n_uids;
	memcpy(k->uids, m->uids, sizeof(k->uids));
	k->n_comms = (uint8_t)m->n_comms;
	for (size_t i = 0; i < m->n_comms; i++)
		memcpy(k->comms[i], m->comms[i], WFPR_EBPF_COMM);
	k->n_exes = (uint8_t)m->n_exes;
	for (size_t i = 0; i < m->n_exes; i++) {
		struct stat st;
		if (stat(m->exes[i], &st) != 0 || !S_ISREG(st.st_mode))
			return snprintf(err, err_len, "exe: %s is not a file (%s)", m->exes[i], strerror(errno)), -1;
		k->exes[i].ino = st.st_ino;
		k->exes[i].dev = (major(st.st_dev) << 20) | minor(st.st_dev);
	}
	k->n_cgroups = (uint8_t)m->n_cgroups;
	for (size_t i = 0; i < m->n_cgroups; i++) {
		uint64_t id;
		uint32_t level;
		if (cgroup_ident(m->cgroups[i], &id, &level, err, err_len) != 0)
			return -1;
		k->cgroups[i].id = id;
		k->cgroups[i].level = level;
	}
	return 0;
}

/* One more filter, in weight order (highest first; equal weights in the
 * order added). */
static int add_filter(ebpf_instance *e, unsigned int slot, const wfpr_match *m, uint32_t weight, char *err,
                      size_t err_len)
{
	if (e->n_filters == WFPR_EBPF_FILTERS)
		return snprintf(err, err_len, "at most %d filters", WFPR_EBPF_FILTERS), -1;
	filter_spec f = {.slot = slot, .weight = weight, .match = *m};
	if (kernel_filter(&f.kernel, slot, weight, m, err, err_len) != 0)
		return -1;
	size_t at = e->n_filters;
	while (at > 0 && e->filters[at - 1].weight < weight) {
		e->filters[at] = e->filters[at - 1];
		at--;
	}
	e->filters[at] = f;
	e->n_filters++;
	if (commit_filters(e) != 0)
		return snprintf(err, err_len, "cannot write the filter maps: %s", strerror(errno)), -1;
	return 0;
}

int ebpf_set_match(ebpf_instance *e, unsigned int slot, const wfpr_match *m, uint32_t weight, char *err, size_t err_len)
{
	char ignored[8];
	if (!err)
		err = ignored, err_len = sizeof(ignored);
	if (!e || slot >= WFPR_EBPF_REDIRECTORS)
		return snprintf(err, err_len, "no such redirector slot"), -1;
	size_t kept = 0;
	for (size_t i = 0; i < e->n_filters; i++)
		if (e->filters[i].slot != slot)
			e->filters[kept++] = e->filters[i];
	e->n_filters = kept;
	if (m && add_filter(e, slot, m, weight, err, err_len) == 0)
		return 0;
	commit_filters(e);
	return m ? -1 : 0;
}

int ebpf_add_filter(ebpf_instance *e, unsigned int slot, const struct sockaddr_storage *prefix, unsigned int prefix_len,
                    uint16_t port_lo, uint16_t port_hi, int protocol, uint32_t weight)
{
	if (!e || slot >= WFPR_EBPF_REDIRECTORS || port_lo > port_hi ||
	    (protocol != 0 && protocol != IPPROTO_TCP && protocol != IPPROTO_UDP))
		return -1;
	wfpr_match m = {.protocol = protocol};
	if (port_lo > 0 || port_hi < 65535) {
		m.n_ports = 1;
		m.ports[0].lo = port_lo;
		m.ports[0].hi = port_hi;
	}
	if (prefix) {
		if ((prefix->ss_family != AF_INET && prefix->ss_family != AF_INET6) ||
		    prefix_len > (prefix->ss_family == AF_INET ? 32u : 128u))
			return -1;
		uint8_t ip[16];
		to16(ip, prefix, NULL);
		m.dst[0].family = prefix->ss_family;
		memcpy(m.dst[0].addr, m.dst[0].family == AF_INET ? ip + 12 : ip, m.dst[0].family == AF_INET ? 4 : 16);
		m.dst[0].len = prefix_len;
		m.n_dst = 1;
	}
	char err[128];
	return add_filter(e, slot, &m, weight, err, sizeof(err));
}

static int write_pid(const char *dir, pid_t pid)
{
	char path[640], text[32];
	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int n = snprintf(text, sizeof(text), "%d\n", (int)pid);
	int rc = write(fd, text, (size_t)n) == n ? 0 : -1;
	close(fd);
	return rc;
}

const char *ebpf_cgroup(const ebpf_instance *e)
{
	return e ? e->cgroup : NULL;
}

int ebpf_enter(const ebpf_instance *e, pid_t pid)
{
	return e ? write_pid(e->cgroup, pid) : -1;
}

int ebpf_leave(const ebpf_instance *e, pid_t pid)
{
	char root[200];
	if (!e || wfpr__cgroup2_mount(root, sizeof(root)) != 0)
		return -1;
	return write_pid(root, pid);
}

void ebpf_close(ebpf_instance *e)
{
	if (!e)
		return;
	if (e->owns_cgroup)
		empty_cgroup(e->cgroup);
	for (size_t i = 0; i < e->n_links; i++) {
		bpf_link__unpin(e->links[i]);
		bpf_link__destroy(e->links[i]);
	}
	wfpr_bpf__destroy(e->skel);
	remove_pins(e->pins);
	if (e->cgroup_fd >= 0)
		close(e->cgroup_fd);
	if (e->owns_cgroup)
		rmdir(e->cgroup);
	free(e);
}

/* ---- status and cleanup --------------------------------------------------- */

static uint64_t counter_sum(int map_fd, uint32_t which)
{
	int cpus = libbpf_num_possible_cpus();
	if (cpus <= 0 || cpus > 4096)
		return 0;
	uint64_t *v = calloc((size_t)cpus, sizeof(uint64_t)), sum = 0;
	if (v && bpf_map_lookup_elem(map_fd, &which, v) == 0)
		for (int i = 0; i < cpus; i++)
			sum += v[i];
	free(v);
	return sum;
}

static unsigned int count_keys(int map_fd, size_t key_size)
{
	uint8_t key[64], next[64];
	unsigned int n = 0;
	if (map_fd < 0 || key_size > sizeof(key))
		return 0;
	void *prev = NULL;
	while (n < 1000000 && bpf_map_get_next_key(map_fd, prev, next) == 0) {
		memcpy(key, next, key_size);
		prev = key;
		n++;
	}
	return n;
}

/* One line per active filter, as the kernel holds it: an executable is its
 * device and inode, a cgroup its id, and the address prefixes are in the
 * tries (a daemon's status gives every condition as it was written). */
static void show_filters(FILE *out, int filters, int settings)
{
	uint32_t zero = 0;
	struct wfpr_ebpf_config cfg;
	if (filters < 0 || settings < 0 || bpf_map_lookup_elem(settings, &zero, &cfg) != 0)
		return;
	for (uint32_t i = 0; i < cfg.n_filters && i < WFPR_EBPF_FILTERS; i++) {
		struct wfpr_ebpf_filter f;
		if (bpf_map_lookup_elem(filters, &i, &f) != 0)
			continue;
		fprintf(out, "  filter %u: redirector %u, weight %u, %s", i, f.redirector, f.weight,
		        f.protocol == IPPROTO_TCP ? "tcp" : f.protocol == IPPROTO_UDP ? "udp" : "tcp and udp");
		for (unsigned int k = 0; k < f.n_ports && k < WFPR_EBPF_MATCH_PORTS; k++)
			fprintf(out, "%s%u-%u", k ? "," : ", ports ", f.ports[k].lo, f.ports[k].hi);
		for (unsigned int k = 0; k < f.n_uids && k < WFPR_EBPF_MATCH_UIDS; k++)
			fprintf(out, "%s%u", k ? "," : ", uid ", f.uids[k]);
		for (unsigned int k = 0; k < f.n_comms && k < WFPR_EBPF_MATCH_COMMS; k++)
			fprintf(out, "%s%.16s", k ? "," : ", comm ", (const char *)f.comms[k]);
		for (unsigned int k = 0; k < f.n_exes && k < WFPR_EBPF_MATCH_EXES; k++)
			fprintf(out, "%s%u:%u/%llu", k ? "," : ", exe (dev/inode) ", f.exes[k].dev >> 20, f.exes[k].dev & 0xfffff,
			        (unsigned long long)f.exes[k].ino);
		for (unsigned int k = 0; k < f.n_cgroups && k < WFPR_EBPF_MATCH_CGROUPS; k++)
			fprintf(out, "%s%llu", k ? "," : ", cgroup id ", (unsigned long long)f.cgroups[k].id);
		fputc('\n', out);
	}
}

/* One line per redirector slot in use: its id, addresses, proxy pid. */
static void show_redirector(FILE *out, int map_fd, uint32_t slot)
{
	struct wfpr_ebpf_redirector r;
	if (bpf_map_lookup_elem(map_fd, &slot, &r) != 0 || r.port == 0)
		return;
	char id[33], ip[INET6_ADDRSTRLEN], ip6[INET6_ADDRSTRLEN] = "";
	for (int i = 0; i < 16; i++)
		snprintf(id + 2 * i, 3, "%02x", r.id[i]);
	inet_ntop(AF_INET, r.ip + 12, ip, sizeof(ip));
	if (r.port6)
		inet_ntop(AF_INET6, r.ip6, ip6, sizeof(ip6));
	fprintf(out, "  redirector %u: id %s, proxy pid %u at %s:%u", slot, id, r.pid, ip, r.port);
	if (r.port6)
		fprintf(out, " and [%s]:%u", ip6, r.port6);
	fprintf(out, "%s\n", r.active ? "" : " (off: its proxy is gone)");
}

static void show(FILE *out, pid_t owner, const char *pins, const char *cgroup)
{
	char path[640];
	unsigned int n_pins = 0, n_procs = 0;
	DIR *d = opendir(pins);
	struct dirent *ent;
	while (d && (ent = readdir(d)))
		n_pins += ent->d_name[0] != '.';
	if (d)
		closedir(d);
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
	FILE *f = fopen(path, "r");
	int pid;
	while (f && fscanf(f, "%d", &pid) == 1)
		n_procs++;
	fprintf(out, "instance %d (%s)\n", (int)owner,
	        owner_alive(owner) ? "running" : "owner gone: `wfpr ebpf cleanup` removes it");
	if (f)
		fprintf(out, "  cgroup %s: present, %u process%s\n", cgroup, n_procs, n_procs == 1 ? "" : "es");
	else
		fprintf(out, "  on a cgroup it did not make (a wfpr daemon's: see below)\n");
	fprintf(out, "  pins %s: %u\n", pins, n_pins);
	if (f)
		fclose(f);
	snprintf(path, sizeof(path), "%s/map_counters", pins);
	int counters = bpf_obj_get(path);
	snprintf(path, sizeof(path), "%s/map_records", pins);
	int records = bpf_obj_get(path);
	snprintf(path, sizeof(path), "%s/map_flows", pins);
	int flows = bpf_obj_get(path);
	if (counters >= 0)
		fprintf(out,
		        "  redirects %llu, permits %llu, hop-limit blocks %llu, records issued %llu, queries %llu,"
		        " sets %llu, refused sets %llu, connected UDP gone direct %llu, refused (proxy gone) %llu,"
		        " records carried %llu, SO_ORIGINAL_DST answered %llu\n",
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_REDIRECTS),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_PERMITS),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_LOOP_BLOCKS),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_ISSUED),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_QUERIES),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_SETS),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_BAD_SETS),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_UDP_CONNECTED),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_PROXY_GONE),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_CARRIED),
		        (unsigned long long)counter_sum(counters, WFPR_EBPF_ORIGINAL_DST));
	if (records >= 0)
		fprintf(out, "  live TCP records %u, UDP flows %u\n", count_keys(records, sizeof(struct wfpr_ebpf_key)),
		        count_keys(flows, sizeof(struct wfpr_ebpf_key)));
	snprintf(path, sizeof(path), "%s/map_redirectors", pins);
	int redirectors = bpf_obj_get(path);
	for (uint32_t slot = 0; redirectors >= 0 && slot < WFPR_EBPF_REDIRECTORS; slot++)
		show_redirector(out, redirectors, slot);
	snprintf(path, sizeof(path), "%s/map_filters", pins);
	int filters = bpf_obj_get(path);
	snprintf(path, sizeof(path), "%s/map_settings", pins);
	int settings = bpf_obj_get(path);
	show_filters(out, filters, settings);
	int fds[] = {counters, records, flows, redirectors, filters, settings};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

#define MAX_INSTANCES 256

/* The owners of every instance: pin directories and cgroups named after them. */
static size_t instances(pid_t *out, const char *root)
{
	size_t n = 0;
	const char *dirs[] = {EBPF_PIN_ROOT, root};
	for (size_t k = 0; k < 2; k++) {
		DIR *d = dirs[k] ? opendir(dirs[k]) : NULL;
		struct dirent *ent;
		while (d && (ent = readdir(d)) && n < MAX_INSTANCES) {
			const char *name = ent->d_name;
			if (k == 1 && strncmp(name, CGROUP_PREFIX, strlen(CGROUP_PREFIX)) != 0)
				continue;
			if (k == 1)
				name += strlen(CGROUP_PREFIX);
			char *end;
			long pid = strtol(name, &end, 10);
			if (*name == '\0' || *end != '\0' || pid <= 0)
				continue;
			bool seen = false;
			for (size_t i = 0; i < n; i++)
				seen |= out[i] == (pid_t)pid;
			if (!seen)
				out[n++] = (pid_t)pid;
		}
		if (d)
			closedir(d);
	}
	return n;
}

static int each_instance(FILE *out, bool remove, bool dead_only)
{
	char root[200], pins[320], cgroup[320];
	bool have_root = wfpr__cgroup2_mount(root, sizeof(root)) == 0;
	pid_t owners[MAX_INSTANCES];
	size_t n = instances(owners, have_root ? root : NULL), done = 0;
	for (size_t i = 0; i < n; i++) {
		snprintf(pins, sizeof(pins), EBPF_PIN_ROOT "/%d", (int)owners[i]);
		snprintf(cgroup, sizeof(cgroup), "%s/" CGROUP_PREFIX "%d", have_root ? root : "", (int)owners[i]);
		if (!remove) {
			show(out, owners[i], pins, cgroup);
			done++;
			continue;
		}
		if (dead_only && owner_alive(owners[i]))
			continue;
		empty_cgroup(cgroup);
		remove_pins(pins); /* unpinned links with no other holder detach */
		rmdir(cgroup);
		if (out)
			fprintf(out, "removed instance %d (cgroup %s, pins %s)\n", (int)owners[i], cgroup, pins);
		done++;
	}
	return (int)done;
}

int ebpf_status(FILE *out)
{
	int n = each_instance(out, false, false);
	if (n == 0)
		fprintf(out, "no wfpr eBPF instance (no pins under " EBPF_PIN_ROOT ", no wfpr-* cgroup)\n");
	return n;
}

int ebpf_cleanup(FILE *out, bool dead_only)
{
	if (geteuid() != 0) {
		if (out)
			fprintf(out, "wfpr ebpf cleanup needs root\n");
		return -1;
	}
	int n = each_instance(out, true, dead_only);
	if (out && n == 0)
		fprintf(out, "nothing to clean up\n");
	return n;
}

int ebpf_set_udp_idle(ebpf_instance *e, unsigned int ms)
{
	uint32_t zero = 0;
	struct wfpr_ebpf_config cfg;
	if (!e || ms == 0 || bpf_map__lookup_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), 0) != 0)
		return -1;
	cfg.udp_idle_ns = (uint64_t)ms * 1000000u;
	return bpf_map__update_elem(e->skel->maps.settings, &zero, sizeof(zero), &cfg, sizeof(cfg), BPF_ANY);
}

uint64_t ebpf_udp_connected(const ebpf_instance *e)
{
	return e ? counter_sum(bpf_map__fd(e->skel->maps.counters), WFPR_EBPF_UDP_CONNECTED) : 0;
}
