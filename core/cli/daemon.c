/* wfpr daemon: the host-wide (or cgroup-wide) eBPF layer. It loads the BPF
 * programs on a cgroup and serves its control socket: proxies started on
 * their own register a redirector with their filters (docs/daemon.md), and
 * lose it when their link closes. Runs until SIGTERM or SIGINT, then
 * removes all it loaded. Every decision is said on stderr (the journal). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/wfpr.h"
#ifdef WFPR_HAVE_EBPF
#include "../src/cgroup.h"
#include "../src/ebpf/control.h"
#include "loader.h"

#define MAX_CLIENTS 64
#define SLOTS 16 /* WFPR_EBPF_REDIRECTORS */
#define LOCK_DIR "/run/wfpr"

typedef struct slot {
	bool used, live;
	char name[WFPR_DAEMON_NAME_MAX + 2];
	uint8_t id[16];
	pid_t pid;
	uid_t uid;
	uint32_t weight;
	char listen[64], listen6[64];
	char match[WFPR_MATCH_TEXT_MAX + 1];
	int fd; /* the proxy's link (-1 for an unmodified proxy: it lives as long as its listener) */
	char carrier[300]; /* an unmodified proxy's: "pid N" or "cgroup PATH" ("": a wfpr proxy) */
	unsigned long generation; /* when last registered: the oldest dead slot is reused first */
} slot;

static volatile sig_atomic_t stopping;
static bool fail_closed;
static ebpf_instance *layer;
static char layer_cgroup[512]; /* the cgroup the layer covers, as a path */
static slot slots[SLOTS];
static unsigned long generation;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

static void reply(int fd, const char *text)
{
	send(fd, text, strlen(text), MSG_NOSIGNAL);
}

static void refuse(int fd, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refuse(int fd, const char *code, const char *fmt, ...)
{
	char reason[1024], msg[1200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	for (char *p = reason; *p; p++)
		if (*p == '\n')
			*p = ' ';
	snprintf(msg, sizeof(msg), "error\ncode: %s\nreason: %s\n", code, reason);
	reply(fd, msg);
	fprintf(stderr, "wfpr daemon: refused: %s\n", reason);
}

static const char *hex(char out[33], const uint8_t id[16])
{
	return wfpr_redirector_id_format(out, 33, id);
}

/* The redirector of slot i off: new connections skip it (with
 * --fail-closed the kernel refuses them instead, since its proxy's
 * sockets are gone). */
static void switch_off(size_t i, const char *why)
{
	slot *s = &slots[i];
	s->live = false;
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	/* a dying proxy closes its link before the kernel has dropped its
	 * listener: give that half a second; a listener that stays belongs to
	 * a proxy that unregistered on purpose */
	bool alive = fail_closed && ebpf_proxy_alive(layer, (unsigned int)i);
	for (int wait = 0; alive && wait < 50; wait++) {
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
		alive = ebpf_proxy_alive(layer, (unsigned int)i);
	}
	if (fail_closed && !alive) {
		fprintf(stderr, "wfpr daemon: proxy %s (pid %d) %s: its connections are refused until it is back "
		                "(--fail-closed)\n", s->name, (int)s->pid, why);
		return;
	}
	ebpf_set_match(layer, (unsigned int)i, NULL, 0, NULL, 0);
	ebpf_remove_redirector(layer, (unsigned int)i);
	fprintf(stderr, "wfpr daemon: proxy %s (pid %d) %s: redirector %zu off, new connections skip it\n", s->name,
	        (int)s->pid, why, i);
}

static int parse_listen(const char *text, int family, struct sockaddr_storage *out)
{
	return cli_parse_address(text, out) == 0 && out->ss_family == family ? 0 : -1;
}

static bool loopback(const struct sockaddr_storage *a)
{
	if (a->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127 &&
		       ((const struct sockaddr_in *)a)->sin_port != 0;
	return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)a)->sin6_addr) &&
	       ((const struct sockaddr_in6 *)a)->sin6_port != 0;
}

/* The slot for name: the same name's, with its id, unless that proxy still
 * lives (*again); else a free one with a new id. SLOTS when refused. */
static size_t find_slot(int fd, const char *name, bool *again)
{
	size_t at = SLOTS;
	for (size_t i = 0; i < SLOTS; i++)
		if (slots[i].used && strcmp(slots[i].name, name) == 0)
			at = i;
	if (at < SLOTS && slots[at].live) {
		refuse(fd, "name-taken", "a proxy named %s is registered already (pid %d); stop it or choose another --name",
		       name, (int)slots[at].pid);
		return SLOTS;
	}
	*again = at < SLOTS;
	for (size_t i = 0; at == SLOTS && i < SLOTS; i++)
		if (!slots[i].used)
			at = i;
	for (size_t i = 0; at == SLOTS && i < SLOTS; i++) /* full: the longest-dead name's slot */
		if (!slots[i].live && (at == SLOTS || slots[i].generation < slots[at].generation))
			at = i;
	if (at == SLOTS) {
		refuse(fd, "full", "all %d redirectors are taken by live proxies", SLOTS);
		return SLOTS;
	}
	if (!*again && getrandom(slots[at].id, sizeof(slots[at].id), 0) != (ssize_t)sizeof(slots[at].id)) {
		refuse(fd, "internal", "no random id: %s", strerror(errno));
		return SLOTS;
	}
	return at;
}

/* An unmodified proxy's process that holds the listener at a: pid itself,
 * or the first process of cgroup (a path) that does. The redirector of
 * slot is then guarded by that listener. The process, or -1 with err. */
static pid_t carrier_process(unsigned int at, pid_t pid, const char *cgroup, const struct sockaddr_storage *a,
                             char *err, size_t err_len)
{
	if (pid > 0) {
		if (!wfpr__cgroup_holds(pid, layer_cgroup))
			return snprintf(err, err_len, "process %d is outside the layer's cgroup %s", (int)pid, layer_cgroup), -1;
		return ebpf_guard_redirector(layer, at, pid, a, err, err_len) == 0 ? pid : -1;
	}
	char path[600];
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
	FILE *f = fopen(path, "re");
	if (!f)
		return snprintf(err, err_len, "no cgroup %s: %s", cgroup, strerror(errno)), -1;
	pid_t found = -1;
	int p;
	snprintf(err, err_len, "no process of the cgroup %s listens there", cgroup);
	while (found < 0 && fscanf(f, "%d", &p) == 1) {
		char ignored[256];
		if (ebpf_guard_redirector(layer, at, p, a, ignored, sizeof(ignored)) == 0)
			found = p;
	}
	fclose(f);
	return found;
}

/* register (a wfpr proxy, on its link) or redirector-add (an unmodified
 * proxy the operator names by pid or cgroup; it lives as long as its
 * listener, or until redirector-remove). */
static void do_register(int fd, const char *msg, bool *keep, bool unmodified)
{
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	char name[WFPR_DAEMON_NAME_MAX + 2], weight_text[16] = "100", listen[64], listen6[64] = "",
	     match[WFPR_MATCH_TEXT_MAX + 1] = "", err[256], id_text[33], pid_text[16] = "", cgroup[512] = "",
	     cgroup_path[512] = "";
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0)
		return refuse(fd, "bad-request", "cannot tell who is asking (SO_PEERCRED: %s)", strerror(errno));
	if (!wfpr__control_get(msg, "name", name, sizeof(name)) || !wfpr__control_get(msg, "listen", listen, sizeof(listen)))
		return refuse(fd, "bad-request", "a register message needs name and listen");
	if (!wfpr__control_name_valid(name))
		return refuse(fd, "bad-request", "a name has 1 to 63 characters: letters, digits, '-', '_' and '.'");
	wfpr__control_get(msg, "weight", weight_text, sizeof(weight_text));
	wfpr__control_get(msg, "listen6", listen6, sizeof(listen6));
	if (!wfpr__control_get(msg, "match", match, sizeof(match)) && strstr(msg, "\nmatch: "))
		return refuse(fd, "bad-match", "proxy %s: the match is longer than %d characters", name, WFPR_MATCH_TEXT_MAX);
	long long weight = cli_parse_count(weight_text), pid = 0;
	struct sockaddr_storage a, a6;
	wfpr_match m;
	if (weight < 0 || weight > 0xffffffffLL)
		return refuse(fd, "bad-request", "weight %s is not a number from 0 to 4294967295", weight_text);
	if (parse_listen(listen, AF_INET, &a) != 0 || !loopback(&a) ||
	    (*listen6 && (parse_listen(listen6, AF_INET6, &a6) != 0 || !loopback(&a6))))
		return refuse(fd, "bad-request", "proxy %s: listen %s%s%s is not a loopback address with a port", name, listen,
		              *listen6 ? " / " : "", listen6);
	if (wfpr_match_parse(&m, match, err, sizeof(err)) != 0)
		return refuse(fd, "bad-match", "proxy %s: %s", name, err);
	struct stat cgroup_st = {0};
	if (unmodified) {
		wfpr__control_get(msg, "pid", pid_text, sizeof(pid_text));
		wfpr__control_get(msg, "cgroup", cgroup, sizeof(cgroup));
		pid = *pid_text ? cli_parse_count(pid_text) : 0;
		if ((pid > 0) == (*cgroup != '\0') || pid < 0 || pid > 0x7fffffff)
			return refuse(fd, "bad-request", "proxy %s: give its process (pid) or its cgroup, one of them", name);
		if (*cgroup) {
			char mount[512];
			if (wfpr__cgroup2_mount(mount, sizeof(mount)) != 0)
				return refuse(fd, "internal", "no cgroup v2 hierarchy is mounted");
			const char *rel = wfpr__cgroup_relative(cgroup, mount);
			if (snprintf(cgroup_path, sizeof(cgroup_path), "%s%s%s", mount, *rel ? "/" : "", rel) >=
			        (int)sizeof(cgroup_path) ||
			    stat(cgroup_path, &cgroup_st) != 0)
				return refuse(fd, "bad-request", "proxy %s: no cgroup %s", name, cgroup);
			size_t n = strlen(layer_cgroup);
			if (strncmp(cgroup_path, layer_cgroup, n) != 0 || (cgroup_path[n] && cgroup_path[n] != '/' && n > 1))
				return refuse(fd, "bad-request", "proxy %s: the cgroup %s is outside the layer's cgroup %s", name,
				              cgroup_path, layer_cgroup);
		}
	}

	bool again;
	size_t at = find_slot(fd, name, &again);
	if (at == SLOTS)
		return;
	slot *s = &slots[at];
	/* the proxy must hold the listener it names: the kernel then checks
	 * that socket's life, not a port anyone may bind once it is gone */
	pid_t owner = unmodified ? (pid_t)pid : cred.pid;
	int rc = ebpf_add_redirector(layer, (unsigned int)at, s->id, at + 1, owner, &a, *listen6 ? &a6 : NULL);
	if (rc == 0 && unmodified)
		rc = (owner = carrier_process((unsigned int)at, (pid_t)pid, cgroup_path, &a, err, sizeof(err))) > 0 &&
		                     ebpf_set_carrier(layer, (unsigned int)at, (pid_t)pid, (uint64_t)cgroup_st.st_ino) == 0
		             ? 0
		             : -1;
	else if (rc == 0)
		rc = ebpf_guard_redirector(layer, (unsigned int)at, cred.pid, &a, err, sizeof(err));
	if (rc != 0) {
		ebpf_remove_redirector(layer, (unsigned int)at);
		return refuse(fd, "not-listening", "proxy %s: %s", name, err);
	}
	if (ebpf_set_match(layer, (unsigned int)at, &m, (uint32_t)weight, err, sizeof(err)) != 0) {
		ebpf_remove_redirector(layer, (unsigned int)at);
		return refuse(fd, "bad-match", "proxy %s: %s", name, err);
	}
	s->used = s->live = true;
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->pid = owner;
	s->uid = cred.uid;
	s->weight = (uint32_t)weight;
	snprintf(s->listen, sizeof(s->listen), "%s", listen);
	snprintf(s->listen6, sizeof(s->listen6), "%s", listen6);
	wfpr_match_format(s->match, sizeof(s->match), &m);
	s->fd = unmodified ? -1 : fd;
	if (unmodified && pid)
		snprintf(s->carrier, sizeof(s->carrier), "pid %lld", pid);
	else if (unmodified)
		snprintf(s->carrier, sizeof(s->carrier), "cgroup %s", cgroup_path);
	else
		s->carrier[0] = '\0';
	s->generation = ++generation;
	*keep = !unmodified;
	hex(id_text, s->id);
	char out[256];
	fprintf(stderr, "wfpr daemon: %s %s (pid %d, uid %u) %s redirector %zu (id %s, weight %u) at %s%s%s; takes %s%s%s\n",
	        unmodified ? "unmodified proxy" : "proxy", name, (int)owner, (unsigned int)cred.uid,
	        again ? "takes back" : "registered as", at, id_text, s->weight, listen, *listen6 ? " and " : "", listen6,
	        *s->match ? s->match : "every connection", unmodified ? "; records carried for its " : "", s->carrier);
	snprintf(out, sizeof(out), "ok\nid: %s\nslot: %zu\n", id_text, at);
	reply(fd, out);
}

/* redirector-remove: an unmodified proxy's redirector off, at once. */
static void do_remove(int fd, const char *msg)
{
	char name[WFPR_DAEMON_NAME_MAX + 2];
	if (!wfpr__control_get(msg, "name", name, sizeof(name)))
		return refuse(fd, "bad-request", "a redirector-remove message needs a name");
	for (size_t i = 0; i < SLOTS; i++) {
		slot *s = &slots[i];
		if (!s->used || strcmp(s->name, name) != 0)
			continue;
		if (!*s->carrier)
			return refuse(fd, "bad-request", "%s is a wfpr proxy: it unregisters when it stops", name);
		ebpf_set_match(layer, (unsigned int)i, NULL, 0, NULL, 0);
		ebpf_remove_redirector(layer, (unsigned int)i);
		s->used = s->live = false;
		fprintf(stderr, "wfpr daemon: unmodified proxy %s removed: redirector %zu off\n", name, i);
		return reply(fd, "ok\n");
	}
	refuse(fd, "not-found", "no redirector is named %s", name);
}

static void do_status(int fd)
{
	char out[WFPR__CONTROL_MAX], id_text[33];
	size_t len = (size_t)snprintf(out, sizeof(out), "ok\ncgroup: %s\n", ebpf_cgroup(layer));
	for (size_t i = 0; i < SLOTS && len < sizeof(out); i++) {
		const slot *s = &slots[i];
		if (!s->used)
			continue;
		hex(id_text, s->id);
		len += (size_t)snprintf(out + len, sizeof(out) - len,
		                        "proxy: %s slot %zu %s pid %d weight %u at %s%s%s id %s takes %s%s%s\n", s->name, i,
		                        s->live ? "live" : "gone", (int)s->pid, s->weight, s->listen, *s->listen6 ? " and " : "",
		                        s->listen6, id_text, *s->match ? s->match : "every connection",
		                        *s->carrier ? "; unmodified, carries for its " : "", s->carrier);
	}
	reply(fd, out);
}

/* One request from a client; *keep: its connection is now a proxy's link. */
static void handle(int fd, const char *msg, bool *keep)
{
	char id_text[64], out[256];
	if (wfpr__control_is(msg, "cgroup")) {
		snprintf(out, sizeof(out), "ok\ncgroup: %s\n", ebpf_cgroup(layer));
		reply(fd, out);
	} else if (wfpr__control_is(msg, "register")) {
		do_register(fd, msg, keep, false);
	} else if (wfpr__control_is(msg, "redirector-add")) {
		do_register(fd, msg, keep, true);
	} else if (wfpr__control_is(msg, "redirector-remove")) {
		do_remove(fd, msg);
	} else if (wfpr__control_is(msg, "name") && wfpr__control_get(msg, "id", id_text, sizeof(id_text))) {
		for (size_t i = 0; i < SLOTS; i++) {
			char h[33];
			if (slots[i].used && strcmp(hex(h, slots[i].id), id_text) == 0) {
				snprintf(out, sizeof(out), "ok\nname: %s\n", slots[i].name);
				return reply(fd, out);
			}
		}
		refuse(fd, "not-found", "no redirector has id %.40s", id_text);
	} else if (wfpr__control_is(msg, "status")) {
		do_status(fd);
	} else {
		refuse(fd, "bad-request", "unknown request (cgroup, register, redirector-add, redirector-remove, name, status)");
	}
}

/* The control socket: root's alone (0600) in a directory made for it. */
static int listen_control(const char *path)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(a.sun_path)) {
		fprintf(stderr, "wfpr daemon: the control path %s is too long\n", path);
		return -1;
	}
	strcpy(a.sun_path, path);
	int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof(a)) == 0) {
		fprintf(stderr, "wfpr daemon: another daemon answers on %s; give another --control PATH\n", path);
		close(probe);
		return -1;
	}
	if (probe >= 0)
		close(probe);
	unlink(path); /* a dead daemon's */
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	mode_t old = umask(0077);
	int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&a, sizeof(a));
	umask(old);
	if (rc != 0 || listen(fd, 64) != 0) {
		fprintf(stderr, "wfpr daemon: cannot listen on %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* One daemon per cgroup: a lock named after the cgroup's id, held for the
 * daemon's life (the kernel drops it when the daemon dies). */
static int take_lock(const char *cgroup)
{
	struct stat st;
	char path[128], text[32] = "";
	if (stat(cgroup, &st) != 0) {
		fprintf(stderr, "wfpr daemon: no cgroup %s: %s\n", cgroup, strerror(errno));
		return -1;
	}
	mkdir(LOCK_DIR, 0755);
	snprintf(path, sizeof(path), LOCK_DIR "/daemon-%llu.lock", (unsigned long long)st.st_ino);
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		fprintf(stderr, "wfpr daemon: cannot open %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		ssize_t n = read(fd, text, sizeof(text) - 1);
		text[n > 0 ? n : 0] = '\0';
		text[strcspn(text, "\n")] = '\0';
		fprintf(stderr, "wfpr daemon: a wfpr daemon (pid %s) already serves the cgroup %s; stop it first\n",
		        *text ? text : "?", cgroup);
		close(fd);
		return -1;
	}
	if (ftruncate(fd, 0) == 0)
		dprintf(fd, "%d\n", (int)getpid());
	return fd;
}

int cmd_daemon(int argc, char **argv)
{
	const char *cgroup = "", *control = WFPR_DAEMON_CONTROL;
	unsigned int udp_idle_ms = 0;
	for (int i = 0; i < argc; i += 2) { /* OPTION VALUE pairs, and --fail-closed */
		if (strcmp(argv[i], "--fail-closed") == 0) {
			fail_closed = true;
			i--;
			continue;
		}
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!val) {
			fprintf(stderr, "wfpr daemon: unknown option or missing value '%s'\n\n%s", argv[i], cli_usage);
			return 2;
		}
		if (strcmp(argv[i], "--cgroup") == 0)
			cgroup = val;
		else if (strcmp(argv[i], "--control") == 0)
			control = val;
		else if (strcmp(argv[i], "--udp-idle-timeout") != 0 || cli_set_udp_idle(val, &udp_idle_ms) != 0) {
			fprintf(stderr, "wfpr daemon: unknown or invalid option '%s'\n\n%s", argv[i], cli_usage);
			return 2;
		}
	}
	cli_notify_take();
	char err[512], dir[512];
	if (geteuid() != 0) {
		fprintf(stderr, "wfpr daemon: needs root, to load BPF programs and attach them to a cgroup\n");
		return 1;
	}
	if (wfpr__cgroup2_mount(dir, sizeof(dir)) != 0) {
		fprintf(stderr, "wfpr daemon: no cgroup v2 hierarchy is mounted\n");
		return 1;
	}
	if (*cgroup) {
		size_t rl = strlen(dir);
		const char *rel = wfpr__cgroup_relative(cgroup, dir);
		snprintf(dir + rl, sizeof(dir) - rl, "%s%s", *rel ? "/" : "", rel);
	}
	int lock = take_lock(dir);
	if (lock < 0)
		return 1;
	int server = listen_control(control); /* first: nothing is loaded for a daemon that cannot serve */
	if (server < 0)
		return 1;
	if (ebpf_open_on(&layer, dir, err, sizeof(err)) != 0) {
		fprintf(stderr, "wfpr daemon: cannot load the eBPF layer on %s: %s\n", dir, err);
		close(server);
		unlink(control);
		return 1;
	}
	snprintf(layer_cgroup, sizeof(layer_cgroup), "%s", dir);
	if (udp_idle_ms)
		ebpf_set_udp_idle(layer, udp_idle_ms);
	if (fail_closed)
		ebpf_set_fail_closed(layer, true);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; i < SLOTS; i++)
		slots[i].fd = -1;
	fprintf(stderr, "wfpr daemon: the eBPF layer is on %s; proxies register on %s\n", dir, control);
	cli_notify("READY=1\nSTATUS=serving the eBPF layer");

	int clients[MAX_CLIENTS];
	size_t n_clients = 0;
	while (!stopping) {
		struct pollfd p[1 + MAX_CLIENTS + SLOTS];
		size_t n = 0;
		p[n++] = (struct pollfd){.fd = server, .events = POLLIN};
		for (size_t i = 0; i < n_clients; i++)
			p[n++] = (struct pollfd){.fd = clients[i], .events = POLLIN};
		for (size_t i = 0; i < SLOTS; i++)
			if (slots[i].live && slots[i].fd >= 0)
				p[n++] = (struct pollfd){.fd = slots[i].fd, .events = POLLIN};
		int ready = poll(p, n, 1000); /* each second: do the unmodified proxies still listen? */
		for (size_t i = 0; i < SLOTS; i++)
			if (slots[i].live && *slots[i].carrier && !ebpf_proxy_alive(layer, (unsigned int)i))
				switch_off(i, "closed its listener");
		if (ready <= 0)
			continue; /* a second passed, or EINTR: a signal; the loop checks stopping */
		/* a proxy's link: any packet or its end means it is gone */
		for (size_t i = 0; i < SLOTS; i++) {
			for (size_t k = 1 + n_clients; slots[i].live && slots[i].fd >= 0 && k < n; k++)
				if (p[k].fd == slots[i].fd && p[k].revents)
					switch_off(i, "is gone");
		}
		for (size_t k = 1; k < 1 + n_clients; k++) {
			if (!p[k].revents)
				continue;
			char msg[WFPR__CONTROL_MAX + 1];
			ssize_t got = recv(p[k].fd, msg, sizeof(msg) - 1, MSG_DONTWAIT);
			bool keep = false;
			if (got > 0) {
				msg[got] = '\0';
				handle(p[k].fd, msg, &keep);
			}
			if (!keep)
				close(p[k].fd);
			p[k].fd = -1; /* answered: one request per connection, or now a link */
		}
		size_t kept = 0;
		for (size_t k = 1; k < 1 + n_clients; k++)
			if (p[k].fd >= 0)
				clients[kept++] = p[k].fd;
		n_clients = kept;
		if (p[0].revents & POLLIN) {
			int fd;
			while ((fd = accept4(server, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
				if (n_clients == MAX_CLIENTS) {
					refuse(fd, "busy", "too many requests at once; try again");
					close(fd);
					continue;
				}
				clients[n_clients++] = fd;
			}
		}
	}
	fprintf(stderr, "wfpr daemon: stopping: removing the eBPF layer from %s\n", dir);
	for (size_t i = 0; i < n_clients; i++)
		close(clients[i]);
	for (size_t i = 0; i < SLOTS; i++)
		if (slots[i].fd >= 0)
			close(slots[i].fd);
	close(server);
	unlink(control);
	ebpf_close(layer);
	close(lock);
	return 0;
}

void daemon_status(FILE *out, const char *control, int said)
{
	char reply_text[WFPR__CONTROL_MAX];
	int fd = wfpr__control_connect(control);
	if (fd < 0 || wfpr__control_call(fd, "status\n", reply_text, sizeof(reply_text)) != 0 ||
	    !wfpr__control_is(reply_text, "ok")) {
		if (said)
			fprintf(out, "no wfpr daemon answers on %s\n", control);
		if (fd >= 0)
			close(fd);
		return;
	}
	close(fd);
	char cgroup[512] = "?";
	wfpr__control_get(reply_text, "cgroup", cgroup, sizeof(cgroup));
	fprintf(out, "daemon on %s: the layer covers the cgroup %s\n", control, cgroup);
	for (const char *line = strstr(reply_text, "\nproxy: "); line; line = strstr(line + 1, "\nproxy: "))
		fprintf(out, "  proxy %.*s\n", (int)strcspn(line + 8, "\n"), line + 8);
}

#else

void daemon_status(FILE *out, const char *control, int said)
{
	(void)out, (void)control, (void)said;
}

int cmd_daemon(int argc, char **argv)
{
	(void)argc, (void)argv;
	fprintf(stderr, "wfpr daemon: this wfpr was built without the eBPF backend (it needs clang, bpftool, "
	                "libbpf-dev and the kernel's BTF at build time)\n");
	return 1;
}
#endif
