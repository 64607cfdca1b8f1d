/* wfpr run: one proxy per rules file (each its own redirector, asked in the
 * order given) and COMMAND, whose connections go through all of them: with
 * the preload backend, a broker and the LD_PRELOAD shim in COMMAND; with
 * the eBPF backend, BPF programs on a cgroup that holds COMMAND and the
 * proxies. Exits with COMMAND's status after a summary per proxy. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/broker.h"
#include "wfpr/match.h"

#define MAX_PROXIES 16
#define READY_TIMEOUT_MS 10000

typedef struct options {
	proxy_config proxies[MAX_PROXIES];
	wfpr_match matches[MAX_PROXIES];
	char match_texts[MAX_PROXIES][WFPR_MATCH_TEXT_MAX + 1];
	char names[MAX_PROXIES][64];
	uint8_t ids[MAX_PROXIES][16];
	size_t n_proxies;
	int ebpf;
	const char *log_path;
	int fail_closed;
	unsigned int idle_ms, udp_idle_ms, workers, rule_time_ms;
	size_t buffer_size;
	const char *record_dir; /* a transcript per inspected connection */
	char **command;
} options;

static pid_t command_pid;

static void forward_signal(int sig)
{
	if (command_pid > 0)
		kill(command_pid, sig);
}

/* SIGHUP: every proxy loads its rules file again (COMMAND is left alone). */
static pid_t *reload_pids;
static size_t reload_count;

static void reload_proxies(int sig)
{
	for (size_t i = 0; i < reload_count; i++)
		if (reload_pids[i] > 0)
			kill(reload_pids[i], sig);
}

static int add_proxy(options *o, const char *name, size_t name_len, const char *rules)
{
	if (o->n_proxies == MAX_PROXIES || name_len == 0 || name_len >= sizeof(o->names[0])) {
		fprintf(stderr, "wfpr run: at most %d proxies, each with a name of 1 to 63 characters\n", MAX_PROXIES);
		return -1;
	}
	if (access(rules, R_OK) != 0) {
		fprintf(stderr, "wfpr run: cannot read the rules file %s\n", rules);
		return -1;
	}
	memcpy(o->names[o->n_proxies], name, name_len);
	o->names[o->n_proxies][name_len] = '\0';
	for (size_t i = 0; i < o->n_proxies; i++)
		if (strcmp(o->names[i], o->names[o->n_proxies]) == 0) {
			fprintf(stderr, "wfpr run: two proxies are named %s\n", o->names[i]);
			return -1;
		}
	o->proxies[o->n_proxies].rules_path = rules;
	o->proxies[o->n_proxies].name = o->names[o->n_proxies];
	/* without --weight, the proxies are asked in the order given */
	o->proxies[o->n_proxies].weight = (uint32_t)(WFPR_DEFAULT_WEIGHT + MAX_PROXIES - o->n_proxies);
	o->n_proxies++;
	return 0;
}

static int parse(options *o, int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(opt, "--") == 0) {
			if (i + 1 >= argc)
				break;
			o->command = argv + i + 1;
			return o->n_proxies ? 0 : (fprintf(stderr, "wfpr run: give --rules R.lua\n"), -1);
		}
		if (strcmp(opt, "--fail-closed") == 0) {
			o->fail_closed = 1;
			continue;
		}
		if (!val) {
			fprintf(stderr, "wfpr run: option '%s' needs a value\n", opt);
			return -1;
		}
		i++;
		/* match options and --weight belong to the proxy named just before them */
		char why[256];
		int is_match = o->n_proxies ? cli_match_option(opt, val, &o->matches[o->n_proxies - 1], why, sizeof(why)) : 0;
		if (is_match < 0) {
			fprintf(stderr, "wfpr run: proxy %s: %s\n", o->names[o->n_proxies - 1], why);
			return -1;
		}
		if (is_match)
			continue;
		if (strcmp(opt, "--weight") == 0 && o->n_proxies && cli_parse_count(val) >= 0 &&
		    cli_parse_count(val) <= 0xffffffffLL) {
			o->proxies[o->n_proxies - 1].weight = (uint32_t)cli_parse_count(val);
			continue;
		}
		if (strcmp(opt, "--rules") == 0) {
			/* the proxy is named after the file: rules/host_log.lua is host_log */
			const char *base = strrchr(val, '/') ? strrchr(val, '/') + 1 : val;
			const char *dot = strrchr(base, '.');
			if (add_proxy(o, base, dot && dot != base ? (size_t)(dot - base) : strlen(base), val) < 0)
				return -1;
		} else if (strcmp(opt, "--proxy") == 0) {
			const char *eq = strchr(val, '=');
			if (!eq || add_proxy(o, val, (size_t)(eq - val), eq + 1) < 0) {
				if (!eq)
					fprintf(stderr, "wfpr run: --proxy takes NAME=RULES.lua\n");
				return -1;
			}
		} else if (strcmp(opt, "--backend") == 0) {
			if (strcmp(val, "ebpf") == 0) {
				o->ebpf = 1;
			} else if (strcmp(val, "preload") == 0) {
				o->ebpf = 0;
			} else {
				fprintf(stderr, "wfpr run: unknown backend '%s': give preload or ebpf\n", val);
				return -1;
			}
		} else if (strcmp(opt, "--log") == 0) {
			o->log_path = val;
		} else if (strcmp(opt, "--record") == 0) {
			o->record_dir = val;
		} else if (strcmp(opt, "--idle-timeout") == 0 && cli_parse_count(val) >= 0) {
			o->idle_ms = (unsigned int)cli_parse_count(val);
		} else if (strcmp(opt, "--udp-idle-timeout") == 0 && cli_set_udp_idle(val, &o->udp_idle_ms) == 0) {
			continue;
		} else if (strcmp(opt, "--workers") == 0 && cli_parse_count(val) >= 1 && cli_parse_count(val) <= 16) {
			o->workers = (unsigned int)cli_parse_count(val);
		} else if (strcmp(opt, "--rule-time-limit") == 0 && cli_parse_count(val) >= 1 &&
		           cli_parse_count(val) <= 60000) {
			o->rule_time_ms = (unsigned int)cli_parse_count(val);
		} else if (strcmp(opt, "--buffer") == 0 && cli_parse_count(val) > 0) {
			o->buffer_size = (size_t)cli_parse_count(val);
		} else {
			fprintf(stderr, "wfpr run: unknown or invalid option '%s'\n", opt);
			return -1;
		}
	}
	fprintf(stderr, "wfpr run: give the command after --\n");
	return -1;
}

void cli_shim_path(char *out, size_t len)
{
	const char *env = getenv("WFPR_PRELOAD");
	if (env && *env) {
		snprintf(out, len, "%s", env);
		return;
	}
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		const char *dir = dirname(exe);
		/* beside it (the build tree, the wheel), then where an install
		 * under any prefix puts it (bin/../lib), then the configured libdir */
		snprintf(out, len, "%s/%s", dir, WFPR_PRELOAD_NAME);
		if (access(out, R_OK) == 0)
			return;
		snprintf(out, len, "%s/%s/%s", dir, WFPR_BIN_TO_LIB, WFPR_PRELOAD_NAME);
		if (access(out, R_OK) == 0)
			return;
	}
	snprintf(out, len, "%s/%s", WFPR_LIBDIR, WFPR_PRELOAD_NAME);
}

/* Wait for a child's "ready": a proxy sends its addresses, the broker its
 * registration key; what it sent goes to out (len bytes). False if it died
 * or took too long. */
static bool wait_ready(int fd, void *out, size_t len)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	bool ok = poll(&p, 1, READY_TIMEOUT_MS) == 1 && read(fd, out, len) == (ssize_t)len;
	close(fd);
	return ok;
}

/* Fork a child that serves (the broker when cfg is NULL); its pid once
 * ready, else -1. What it says when ready goes to ready (len bytes): a
 * proxy's addresses, the broker's key. */
static pid_t start_child(const char *socket_path, const proxy_config *cfg, int stats_fd, void *ready_out,
                         size_t ready_len)
{
	int ready[2];
	if (pipe2(ready, O_CLOEXEC) < 0)
		return -1;
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		close(ready[0]);
		/* wfpr run gone (killed): nobody reads the counts, and a proxy stuck
		 * in a rule would outlive a SIGTERM, so it ends at once */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		if (!cfg)
			_exit(broker_serve(socket_path, NULL, NULL, ready[1]));
		if (cfg->ebpf && run_ebpf_enter(getpid()) != 0) {
			fprintf(stderr, "wfpr run: cannot enter the cgroup: %s\n", strerror(errno));
			_exit(1);
		}
		proxy_config c = *cfg;
		c.broker_path = socket_path;
		c.ready_fd = ready[1];
		c.stats_fd = stats_fd;
		_exit(proxy_serve(&c));
	}
	close(ready[1]);
	if (pid < 0) {
		close(ready[0]);
		return -1;
	}
	if (!wait_ready(ready[0], ready_out, ready_len)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return -1;
	}
	return pid;
}

static void stop_child(pid_t pid)
{
	if (pid <= 0)
		return;
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
}

/* A proxy (or the broker) ended before COMMAND. On the eBPF backend its
 * redirector is switched off, so new connections go on to the next proxy
 * or direct, as the preload broker does when a proxy goes; with
 * --fail-closed it stays, and they fail. */
static void proxy_exited(const options *o, pid_t *proxies, pid_t pid, pid_t broker)
{
	for (size_t i = 0; i < o->n_proxies; i++) {
		if (proxies[i] != pid)
			continue;
		proxies[i] = 0; /* reaped: never signalled again */
		fprintf(stderr, "wfpr run: proxy %s exited%s\n", o->names[i],
		        !o->ebpf                ? ""
		        : o->fail_closed        ? "; its connections are refused (--fail-closed)"
		        : run_ebpf_remove_proxy((unsigned int)i) == 0 ? "; its connections go on without it" : "");
	}
	if (pid == broker)
		fprintf(stderr, "wfpr run: the broker exited\n");
}

/* Start COMMAND; its pid, and *running once it runs (in the cgroup on the
 * eBPF backend). A close-on-exec pipe tells exec from a failure before it;
 * a child that failed exits 126 or 127, for the caller to reap. */
static pid_t start_command(char **command, const char *socket_path, int fail_closed, int ebpf, bool *running)
{
	char shim[PATH_MAX], preload[2 * PATH_MAX];
	cli_shim_path(shim, sizeof(shim));
	const char *old = getenv("LD_PRELOAD");
	snprintf(preload, sizeof(preload), "%s%s%s", shim, old && *old ? " " : "", old ? old : "");
	int started[2];
	*running = false;
	if (pipe2(started, O_CLOEXEC) < 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		int err = 0;
		close(started[0]);
		if (ebpf && run_ebpf_enter(getpid()) != 0) {
			err = errno;
			fprintf(stderr, "wfpr run: cannot put %s in the cgroup: %s\n", command[0], strerror(err));
		} else {
			if (!ebpf) {
				setenv("LD_PRELOAD", preload, 1);
				setenv("WFPR_BROKER", socket_path, 1);
				setenv("WFPR_FAIL", fail_closed ? "closed" : "open", 1);
			}
			signal(SIGINT, SIG_DFL);
			signal(SIGTERM, SIG_DFL);
			execvp(command[0], command);
			err = errno;
			fprintf(stderr, "wfpr run: cannot run %s: %s\n", command[0], strerror(err));
		}
		if (write(started[1], &err, sizeof(err)) < 0)
			_exit(127);
		_exit(err == ENOENT ? 127 : 126);
	}
	close(started[1]);
	int err = 0;
	ssize_t n;
	while ((n = read(started[0], &err, sizeof(err))) < 0 && errno == EINTR)
		;
	close(started[0]);
	*running = pid > 0 && n == 0;
	return pid;
}

/* One line per proxy, from the counts each wrote at exit. */
static void print_summary(const options *o, int stats_fd)
{
	char text[16384];
	size_t len = 0;
	ssize_t n;
	while (len < sizeof(text) - 1 && (n = read(stats_fd, text + len, sizeof(text) - 1 - len)) > 0)
		len += (size_t)n;
	text[len] = '\0';
	fprintf(stderr, "\n%-16s %11s %8s %8s %8s %7s %6s %12s %12s %11s\n", "proxy", "connections", "pass", "inspect",
	        "block", "failed", "flows", "bytes up", "bytes down", "rule errors");
	for (size_t i = 0; i < o->n_proxies; i++) {
		char key[96];
		snprintf(key, sizeof(key), "{\"proxy\":\"%s\",", o->names[i]);
		const char *line = strstr(text, key);
		unsigned long long v[9];
		if (!line || sscanf(line + strlen(key),
		                    "\"connections\":%llu,\"pass\":%llu,\"inspect\":%llu,\"block\":%llu,\"failed\":%llu,"
		                    "\"flows\":%llu,\"bytes_up\":%llu,\"bytes_down\":%llu,\"rule_errors\":%llu",
		                    &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) != 9) {
			fprintf(stderr, "%-16s (exited early: no counts)\n", o->names[i]);
			continue;
		}
		fprintf(stderr, "%-16s %11llu %8llu %8llu %8llu %7llu %6llu %12llu %12llu %11llu\n", o->names[i], v[0], v[1],
		        v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
	}
}

int cmd_run(int argc, char **argv)
{
	static options o;
	memset(&o, 0, sizeof(o));
	cli_notify_take();
	if (parse(&o, argc, argv) < 0) {
		fprintf(stderr, "\n%s", cli_usage);
		return 2;
	}
	int log_fd = -1;
	if (o.log_path && (log_fd = open(o.log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
		fprintf(stderr, "wfpr run: cannot open the log %s: %s\n", o.log_path, strerror(errno));
		return 2;
	}
	const char *tmp = getenv("TMPDIR");
	char dir[PATH_MAX], socket_path[PATH_MAX + 16];
	snprintf(dir, sizeof(dir), "%s/wfpr-run-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	int stats[2];
	if (!mkdtemp(dir) || pipe2(stats, O_CLOEXEC) < 0) {
		fprintf(stderr, "wfpr run: cannot make a private directory for the broker: %s\n", strerror(errno));
		return 1;
	}
	snprintf(socket_path, sizeof(socket_path), "%s/broker.sock", dir);
	signal(SIGPIPE, SIG_IGN);

	int status = 1;
	pid_t broker = -1, proxies[MAX_PROXIES] = {0};
	char key[2 * WFPR_BROKER_KEY_SIZE + 1] = "";
	bool started;
	char why[512];
	if (o.ebpf) {
		started = run_ebpf_open(why, sizeof(why)) == 0 &&
		          getrandom(o.ids, sizeof(o.ids), 0) == (ssize_t)sizeof(o.ids) &&
		          (!o.udp_idle_ms || run_ebpf_set_udp_idle(o.udp_idle_ms) == 0) &&
		          (!o.fail_closed || run_ebpf_set_fail_closed() == 0);
		if (!started)
			fprintf(stderr, "wfpr run: the eBPF backend is not available: %s\n", why);
	} else {
		/* the key goes to the proxies in memory: never to a file or an
		 * environment that COMMAND could read; nor may COMMAND read this
		 * process's memory (it is dumpable again after its exec) */
		prctl(PR_SET_DUMPABLE, 0);
		broker = start_child(socket_path, NULL, -1, key, sizeof(key));
		key[sizeof(key) - 1] = '\0';
		started = broker > 0;
		if (!started)
			fprintf(stderr, "wfpr run: the broker did not start\n");
	}
	for (size_t i = 0; started && i < o.n_proxies; i++) {
		struct sockaddr_in *v4 = (struct sockaddr_in *)&o.proxies[i].listen;
		v4->sin_family = AF_INET;
		v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		o.proxies[i].log_fd = log_fd;
		o.proxies[i].idle_ms = o.idle_ms;
		o.proxies[i].udp_idle_ms = o.udp_idle_ms;
		o.proxies[i].workers = o.workers;
		o.proxies[i].rule_time_ms = o.rule_time_ms;
		o.proxies[i].buffer_size = o.buffer_size;
		o.proxies[i].record_dir = o.record_dir;
		o.proxies[i].fail_closed = o.fail_closed;
		o.proxies[i].ebpf = o.ebpf;
		o.proxies[i].ids = (const uint8_t(*)[16])o.ids;
		o.proxies[i].names = (const char(*)[64])o.names;
		o.proxies[i].n_ids = o.n_proxies;
		o.proxies[i].slot = i;
		wfpr_match_format(o.match_texts[i], sizeof(o.match_texts[i]), &o.matches[i]);
		o.proxies[i].match = o.match_texts[i];
		o.proxies[i].broker_key = o.ebpf ? NULL : key;
		struct sockaddr_storage address[2];
		proxies[i] = start_child(socket_path, &o.proxies[i], stats[1], address, sizeof(address));
		if (proxies[i] <= 0 || (o.ebpf && run_ebpf_add_proxy((unsigned int)i, o.ids[i], proxies[i], address,
		                                                      &o.matches[i], o.proxies[i].weight, why,
		                                                      sizeof(why)) != 0)) {
			fprintf(stderr, "wfpr run: proxy %s did not start%s%s\n", o.names[i], proxies[i] > 0 ? ": " : "",
			        proxies[i] > 0 ? why : "");
			started = false;
		}
	}
	if (started) {
		struct sigaction sa = {.sa_handler = forward_signal}, hup = {.sa_handler = reload_proxies};
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		reload_pids = proxies;
		reload_count = o.n_proxies;
		sigaction(SIGHUP, &hup, NULL);
		bool running = false;
		if (!o.ebpf)
			cli_check_static_command(log_fd, o.command[0]);
		command_pid = start_command(o.command, socket_path, o.fail_closed, o.ebpf, &running);
		if (running)
			cli_notify("READY=1\nSTATUS=COMMAND is running through the proxies");
		int ws = 0;
		while (command_pid > 0) {
			pid_t done = waitpid(-1, &ws, 0);
			if (done < 0 && errno == EINTR)
				continue;
			if (done < 0 || done == command_pid)
				break;
			proxy_exited(&o, proxies, done, broker);
			if (done == broker)
				broker = 0; /* reaped: never signalled again */
		}
		status = command_pid < 0 ? 1 : WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
		command_pid = 0;
	}
	/* first to last: a proxy settles what COMMAND left in its backlog
	 * (wfpr_engine_stop), and passes it on to the next, still running */
	for (size_t i = 0; i < o.n_proxies; i++)
		stop_child(proxies[i]);
	stop_child(broker);
	unsigned long long udp_connected = o.ebpf && started ? run_ebpf_udp_connected() : 0;
	if (udp_connected) {
		char what[256];
		snprintf(what, sizeof(what),
		         "%llu connected IPv6 UDP socket(s) went direct: their proxy has no [::1] address, and the kernel "
		         "cannot send an IPv6 datagram to an IPv4 one (docs/ebpf.md)", udp_connected);
		cli_say_escape(log_fd, what);
	}
	if (o.ebpf)
		run_ebpf_close();
	close(stats[1]);
	if (started)
		print_summary(&o, stats[0]);
	close(stats[0]);
	if (log_fd >= 0)
		close(log_fd);
	unlink(socket_path);
	rmdir(dir);
	return status;
}
