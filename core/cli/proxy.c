/* wfpr proxy: one redirect service. On the preload backend it attaches to
 * the broker and registers as a redirector; on the eBPF backend (started by
 * wfpr run) the loader made it one. It serves with the engine and its Lua
 * rules until SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/engine.h"
#include "wfpr/rules.h"
#include "wfpr/wfpr.h"

#define MAX_WORKERS 16
#define KEY_FILE_WAIT_MS 5000 /* for the key file of a broker that is starting */

/* One engine (and its own Lua state) per worker, all on one address. */
typedef struct worker {
	wfpr_engine *engine;
	wfpr_rules *rules;     /* the first rules (the engine's opts.rules) */
	wfpr_rules_stats done; /* of rules replaced by a reload, added up as they go */
	pthread_mutex_t done_lock;
	pthread_t thread;
} worker;

static worker workers[2 * MAX_WORKERS]; /* on the eBPF backend, as many again on [::1] */
static unsigned int n_workers;

static int reload_pipe[2] = {-1, -1};
static pthread_mutex_t reload_lock = PTHREAD_MUTEX_INITIALIZER; /* a reload, or the workers' end */

static void on_signal(int sig)
{
	if (sig == SIGHUP) { /* the reloader thread does the work */
		if (write(reload_pipe[1], "r", 1) < 0) {
			/* a reload is pending already */
		}
		return;
	}
	for (unsigned int i = 0; i < n_workers; i++)
		wfpr_engine_stop(workers[i].engine);
}

/* A worker's engine no longer uses rules a reload replaced. */
static void release_rules(void *user, wfpr_rules *rules)
{
	worker *w = user;
	wfpr_rules_stats st;
	if (wfpr_rules_get_stats(&st, rules) == 0) {
		pthread_mutex_lock(&w->done_lock);
		w->done.calls += st.calls;
		w->done.errors += st.errors;
		w->done.timeouts += st.timeouts;
		w->done.nomem += st.nomem;
		pthread_mutex_unlock(&w->done_lock);
	}
	wfpr_rules_free(rules);
}

/* SIGHUP: load the rules file again, for every worker, and check it; then
 * new connections get the new rules, and running ones keep theirs. A file
 * that fails leaves the old rules in place, and the log says why. */
static void *reloader(void *arg)
{
	const proxy_config *cfg = arg;
	char c;
	unsigned long generation = 0;
	while (read(reload_pipe[0], &c, 1) == 1) {
		pthread_mutex_lock(&reload_lock);
		if (!n_workers) { /* the proxy is stopping */
			pthread_mutex_unlock(&reload_lock);
			break;
		}
		wfpr_rules_options ro = WFPR_RULES_OPTIONS_INIT;
		ro.fail_closed = cfg->fail_closed;
		ro.time_limit_ms = cfg->rule_time_ms;
		wfpr_rules *fresh[2 * MAX_WORKERS] = {0};
		const char *why = NULL;
		char error[600] = "";
		for (unsigned int i = 0; i < n_workers && !why; i++) {
			int rc = wfpr_rules_new(&fresh[i], &ro);
			if (rc != 0) {
				why = wfpr_strerror(rc);
			} else if (wfpr_rules_load_file(fresh[i], cfg->rules_path) != 0) {
				snprintf(error, sizeof(error), "%s", wfpr_rules_error(fresh[i]));
				why = error;
			} else if (wfpr_rules_warnings(fresh[i])[0]) {
				snprintf(error, sizeof(error), "%s", wfpr_rules_warnings(fresh[i]));
				error[strcspn(error, "\n")] = '\0';
				why = error;
			}
		}
		if (why) {
			for (unsigned int i = 0; i < n_workers; i++)
				wfpr_rules_free(fresh[i]);
			fprintf(stderr, "wfpr proxy %s: SIGHUP: the rules in %s do not load, the old rules stay: %s\n", cfg->name,
			        cfg->rules_path, why);
			pthread_mutex_unlock(&reload_lock);
			continue;
		}
		for (unsigned int i = 0; i < n_workers; i++)
			if (wfpr_engine_replace_rules(workers[i].engine, fresh[i], release_rules, &workers[i]) != 0)
				wfpr_rules_free(fresh[i]);
		fprintf(stderr, "wfpr proxy %s: SIGHUP: the rules in %s are loaded again (reload %lu); new connections get "
		        "them, running ones finish under the rules they started with\n", cfg->name, cfg->rules_path,
		        ++generation);
		pthread_mutex_unlock(&reload_lock);
	}
	return NULL;
}

static void *worker_main(void *arg)
{
	wfpr_engine_run(arg);
	return NULL;
}

#define NAME_CACHE 32

typedef struct name_cache {
	uint8_t id[NAME_CACHE][WFPR_REDIRECTOR_ID_SIZE];
	char name[NAME_CACHE][65];
	size_t n;
} name_cache;

static const char *control_path; /* a wfpr daemon's, when registered with one */

/* The log names hops by redirector name: asked of the broker (or the
 * daemon) once per id. */
static const char *hop_name(void *user, const uint8_t id[16], char *buf, size_t len)
{
	name_cache *cache = user;
	for (size_t i = 0; i < cache->n; i++)
		if (memcmp(cache->id[i], id, WFPR_REDIRECTOR_ID_SIZE) == 0)
			return strlen(cache->name[i]) < len ? strcpy(buf, cache->name[i]) : NULL;
	if ((control_path ? wfpr_daemon_redirector_name(control_path, id, buf, len)
	                  : wfpr_preload_redirector_name(buf, len, id)) != 0)
		return NULL;
	if (cache->n < NAME_CACHE && strlen(buf) < sizeof(cache->name[0])) {
		memcpy(cache->id[cache->n], id, WFPR_REDIRECTOR_ID_SIZE);
		strcpy(cache->name[cache->n++], buf);
	}
	return buf;
}

static void write_stats(const proxy_config *cfg)
{
	wfpr_engine_stats sum = {0};
	uint64_t rule_errors = 0;
	for (unsigned int i = 0; i < n_workers; i++) {
		wfpr_engine_stats es;
		wfpr_rules_stats rs = {0};
		wfpr_engine_get_stats(&es, workers[i].engine);
		if (workers[i].rules)
			wfpr_rules_get_stats(&rs, workers[i].rules);
		pthread_mutex_lock(&workers[i].done_lock);
		rs.errors += workers[i].done.errors;
		rs.timeouts += workers[i].done.timeouts;
		rs.nomem += workers[i].done.nomem;
		pthread_mutex_unlock(&workers[i].done_lock);
		sum.accepted += es.accepted;
		sum.passed += es.passed;
		sum.inspected += es.inspected;
		sum.blocked += es.blocked;
		sum.failed += es.failed;
		sum.flows += es.flows;
		sum.bytes_up += es.bytes_up;
		sum.bytes_down += es.bytes_down;
		rule_errors += rs.errors + rs.timeouts + rs.nomem;
	}
	dprintf(cfg->stats_fd,
	        "{\"proxy\":\"%s\",\"connections\":%llu,\"pass\":%llu,\"inspect\":%llu,\"block\":%llu,\"failed\":%llu,"
	        "\"flows\":%llu,\"bytes_up\":%llu,\"bytes_down\":%llu,\"rule_errors\":%llu}\n",
	        cfg->name, (unsigned long long)sum.accepted, (unsigned long long)sum.passed,
	        (unsigned long long)sum.inspected, (unsigned long long)sum.blocked, (unsigned long long)sum.failed,
	        (unsigned long long)sum.flows, (unsigned long long)sum.bytes_up, (unsigned long long)sum.bytes_down,
	        (unsigned long long)rule_errors);
}

static void stop_workers(void)
{
	pthread_mutex_lock(&reload_lock); /* no reload uses an engine from here on */
	for (unsigned int i = 0; i < n_workers; i++) {
		wfpr_engine_free(workers[i].engine);
		wfpr_rules_free(workers[i].rules);
	}
	n_workers = 0;
	pthread_mutex_unlock(&reload_lock);
}

/* Worker i: its Lua state and its engine, on cfg's address (worker 0 picks
 * the port the others share). 0, or -1 (a message written unless quiet). */
static int start_worker(const proxy_config *cfg, unsigned int i, const struct sockaddr_storage *address,
                        const uint8_t *id, void *names, bool quiet)
{
	worker *w = &workers[i];
	pthread_mutex_init(&w->done_lock, NULL);
	wfpr_rules_options ro = WFPR_RULES_OPTIONS_INIT;
	ro.fail_closed = cfg->fail_closed;
	ro.time_limit_ms = cfg->rule_time_ms;
	if (cfg->rules_path) {
		int rc = wfpr_rules_new(&w->rules, &ro);
		if (rc != 0 || wfpr_rules_load_file(w->rules, cfg->rules_path) != 0) {
			fprintf(stderr, "wfpr proxy %s: %s\n", cfg->name, w->rules ? wfpr_rules_error(w->rules) : wfpr_strerror(rc));
			wfpr_rules_free(w->rules);
			w->rules = NULL;
			return -1;
		}
	}
	wfpr_engine_options eo = WFPR_ENGINE_OPTIONS_INIT;
	eo.name = cfg->name;
	eo.listen_address = address;
	eo.rules = w->rules;
	eo.log_fd = cfg->log_fd;
	eo.udp = 1;
	eo.tcp_idle_ms = cfg->idle_ms;
	/* end a flow only after its sender would have started a new one */
	eo.udp_idle_ms = (cfg->udp_idle_ms ? cfg->udp_idle_ms : WFPR_UDP_FLOW_IDLE_MS) + WFPR_UDP_FLOW_GRACE_MS;
	eo.buffer_size = cfg->buffer_size;
	eo.record_dir = cfg->record_dir;
	eo.redirector_id = id;
	eo.hop_name = hop_name;
	eo.hop_name_user = names;
	eo.reuse_port = cfg->workers > 1;
	int rc = wfpr_engine_new(&w->engine, &eo);
	if (rc != 0) {
		if (!quiet)
			fprintf(stderr, "wfpr proxy %s: cannot listen: %s\n", cfg->name, wfpr_strerror(rc));
		wfpr_rules_free(w->rules);
		w->rules = NULL;
		return -1;
	}
	n_workers++;
	return 0;
}

/* One worker per CPU this process may run on, as haproxy's threads. */
static unsigned int default_workers(void)
{
	cpu_set_t set;
	int n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
	return n < 1 ? 1 : n > MAX_WORKERS ? MAX_WORKERS : (unsigned int)n;
}

int proxy_serve(const proxy_config *cfg)
{
	if (cfg->record_dir && mkdir(cfg->record_dir, 0700) != 0 && errno != EEXIST) {
		fprintf(stderr, "wfpr proxy %s: cannot make the transcript directory %s: %s\n", cfg->name, cfg->record_dir,
		        strerror(errno));
		return 1;
	}
	static name_cache names;
	static uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	cli_raise_fd_limit();
	static proxy_config resolved; /* the reloader thread reads it to the end */
	resolved = *cfg;
	if (!resolved.workers)
		resolved.workers = default_workers();
	cfg = &resolved;
	unsigned int count = cfg->workers;
	struct sockaddr_storage address = cfg->listen;
	char why[512];
	int rc = 0;
	if (cfg->ebpf && cfg->control) {
		/* the daemon's layer: this process's sockets in its cgroup first */
		control_path = cfg->control;
		if ((rc = wfpr_daemon_join(cfg->control, NULL, 0, why, sizeof(why))) != 0) {
			fprintf(stderr, "wfpr proxy %s: %s\n", cfg->name, why);
			return 1;
		}
	}
	if (!cfg->ebpf)
		prctl(PR_SET_DUMPABLE, 0); /* no other process of this user may read the key out of its memory */
	if (rc == 0)
		rc = cfg->ebpf ? wfpr_ebpf_attach(1) : wfpr_preload_attach(cfg->broker_path);
	if (rc == 0 && !cfg->ebpf && cfg->broker_key && (rc = wfpr_preload_set_key(cfg->broker_key)) != 0) {
		fprintf(stderr, "wfpr proxy %s: the key file does not hold a key (64 hex digits)\n", cfg->name);
		return 1;
	}
	for (size_t i = 0; cfg->ebpf && i < cfg->n_ids && i < NAME_CACHE; i++) {
		memcpy(names.id[i], cfg->ids[i], WFPR_REDIRECTOR_ID_SIZE);
		snprintf(names.name[i], sizeof(names.name[i]), "%s", cfg->names[i]);
		names.n = i + 1;
	}
	if (cfg->ebpf && cfg->ids)
		memcpy(id, cfg->ids[cfg->slot], WFPR_REDIRECTOR_ID_SIZE);
	for (unsigned int i = 0; rc == 0 && i < count && i < MAX_WORKERS; i++) {
		if (start_worker(cfg, i, &address, id, &names, false) != 0)
			rc = -1;
		else if (i == 0)
			wfpr_engine_address(&address, workers[0].engine);
	}
	/* the same port on [::1] too, so that IPv6 sockets (IPV6_V6ONLY ones,
	 * and UDP) reach the proxy as IPv6; if the port is taken there, they
	 * use the IPv4 address, mapped */
	struct sockaddr_storage address6 = {.ss_family = AF_UNSPEC};
	if (rc == 0 && address.ss_family == AF_INET) {
		struct sockaddr_in6 *six = (struct sockaddr_in6 *)&address6;
		*six = (struct sockaddr_in6){.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
		                             .sin6_port = ((struct sockaddr_in *)&address)->sin_port};
		unsigned int first = n_workers;
		for (unsigned int i = 0; i < count && i < MAX_WORKERS; i++)
			if (start_worker(cfg, first + i, &address6, id, &names, true) != 0)
				break;
		if (n_workers == first)
			address6.ss_family = AF_UNSPEC;
	}
	static wfpr_daemon_link *link;
	if (rc == 0 && cfg->ebpf && cfg->control) {
		rc = wfpr_daemon_register(&link, cfg->control, cfg->name, cfg->weight, cfg->match, &address,
		                          address6.ss_family == AF_INET6 ? &address6 : NULL, why, sizeof(why));
		if (rc != 0) {
			fprintf(stderr, "wfpr proxy %s: the daemon refused: %s\n", cfg->name, why);
			rc = -1;
		} else {
			memcpy(id, wfpr_daemon_link_id(link), WFPR_REDIRECTOR_ID_SIZE);
		}
	} else if (rc == 0 && !cfg->ebpf) {
		/* a broker that has just started listens first and writes its key
		 * file next: a key read from that file gets a few seconds to appear */
		for (int tries = 0;; tries++) {
			rc = wfpr_preload_register_filtered(id, cfg->name, &address,
			                                    address6.ss_family == AF_INET6 ? &address6 : NULL,
			                                    cfg->weight ? cfg->weight : WFPR_DEFAULT_WEIGHT, cfg->match);
			if (rc != WFPR_WSAEACCES || cfg->broker_key || tries == KEY_FILE_WAIT_MS / 50)
				break;
			usleep(50 * 1000);
		}
		if (rc == WFPR_WSAEACCES) {
			fprintf(stderr, "wfpr proxy %s: the broker refused the registration key %s; give --key-file with the "
			                "file that `wfpr broker` wrote (default: %s.key)\n", cfg->name,
			        cfg->broker_key ? "given" : "in its key file", cfg->broker_path);
			rc = -1;
		}
	}
	if (rc != 0) {
		if (rc > 0)
			fprintf(stderr, "wfpr proxy %s: cannot start: %s (%s)\n", cfg->name, wfpr_strerror(rc), wfpr_err_name(rc));
		stop_workers();
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	pthread_t reload_thread;
	bool reloads = cfg->rules_path && pipe2(reload_pipe, O_CLOEXEC) == 0 &&
	               pthread_create(&reload_thread, NULL, reloader, (void *)cfg) == 0;
	if (reloads) {
		sigaction(SIGHUP, &sa, NULL); /* kill -HUP, systemctl reload: the rules file again */
		pthread_detach(reload_thread);
	}
	char where[64], where6[64] = "";
	if (address6.ss_family == AF_INET6)
		wfpr_sockaddr_format(where6, sizeof(where6), &address6);
	fprintf(stderr, "wfpr proxy %s: listening on %s%s%s (%u worker%s); takes %s\n", cfg->name,
	        wfpr_sockaddr_format(where, sizeof(where), &address), *where6 ? " and " : "", where6, count,
	        count > 1 ? "s" : "", cfg->match && *cfg->match ? cfg->match : "every connection");
	if (cfg->ready_fd < 0) /* on its own; under wfpr run, run says when all is ready */
		cli_notify("READY=1\nSTATUS=listening and registered");
	if (cfg->ready_fd >= 0) {
		struct sockaddr_storage both[2] = {address, address6};
		if (write(cfg->ready_fd, both, sizeof(both)) < 0) {
			/* the parent went away: serve anyway until told to stop */
		}
		close(cfg->ready_fd);
	}
	for (unsigned int i = 1; i < n_workers; i++)
		pthread_create(&workers[i].thread, NULL, worker_main, workers[i].engine);
	rc = wfpr_engine_run(workers[0].engine);
	for (unsigned int i = 1; i < n_workers; i++)
		pthread_join(workers[i].thread, NULL);
	if (cfg->stats_fd >= 0)
		write_stats(cfg);
	wfpr_daemon_unregister(link);
	link = NULL;
	stop_workers();
	return rc == 0 ? 0 : 1;
}

int cmd_proxy(int argc, char **argv)
{
	proxy_config cfg = {.log_fd = -1, .ready_fd = -1, .stats_fd = -1, .weight = 100};
	struct sockaddr_in *v4 = (struct sockaddr_in *)&cfg.listen;
	v4->sin_family = AF_INET;
	v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	const char *log_path = NULL, *key_file = NULL;
	const char *opt = NULL;
	static char key[128];
	static wfpr_match match;
	static char match_text[WFPR_MATCH_TEXT_MAX + 1];
	char why[256];
	cli_notify_take();
	for (int i = 0; i < argc; i++) {
		opt = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		long long n = 0;
		if (!val)
			goto usage;
		i++;
		int is_match = cli_match_option(opt, val, &match, why, sizeof(why));
		if (is_match < 0) {
			fprintf(stderr, "wfpr proxy: %s\n", why);
			return 2;
		}
		if (is_match)
			continue;
		if (strcmp(opt, "--broker") == 0)
			cfg.broker_path = val;
		else if (strcmp(opt, "--key-file") == 0)
			key_file = val;
		else if (strcmp(opt, "--backend") == 0 && (strcmp(val, "ebpf") == 0 || strcmp(val, "preload") == 0))
			cfg.ebpf = strcmp(val, "ebpf") == 0;
		else if (strcmp(opt, "--control") == 0)
			cfg.control = val;
		else if (strcmp(opt, "--weight") == 0 && (n = cli_parse_count(val)) >= 0 && n <= 0xffffffffLL)
			cfg.weight = (uint32_t)n;
		else if (strcmp(opt, "--name") == 0)
			cfg.name = val;
		else if (strcmp(opt, "--rules") == 0)
			cfg.rules_path = val;
		else if (strcmp(opt, "--log") == 0)
			log_path = val;
		else if (strcmp(opt, "--record") == 0)
			cfg.record_dir = val;
		else if (strcmp(opt, "--listen") == 0 && cli_parse_address(val, &cfg.listen) == 0)
			continue;
		else if (strcmp(opt, "--idle-timeout") == 0 && (n = cli_parse_count(val)) >= 0)
			cfg.idle_ms = (unsigned int)n;
		else if (strcmp(opt, "--udp-idle-timeout") == 0 && cli_set_udp_idle(val, &cfg.udp_idle_ms) == 0)
			continue;
		else if (strcmp(opt, "--buffer") == 0 && (n = cli_parse_count(val)) > 0)
			cfg.buffer_size = (size_t)n;
		else if (strcmp(opt, "--workers") == 0 && (n = cli_parse_count(val)) >= 1 && n <= 16)
			cfg.workers = (unsigned int)n;
		else if (strcmp(opt, "--rule-time-limit") == 0 && (n = cli_parse_count(val)) >= 1 && n <= 60000)
			cfg.rule_time_ms = (unsigned int)n;
		else
			goto usage;
	}
	wfpr_match_format(match_text, sizeof(match_text), &match);
	cfg.match = match_text;
	if (cfg.ebpf) {
		if (!cfg.control)
			cfg.control = WFPR_DAEMON_CONTROL;
		if (cfg.broker_path) {
			fprintf(stderr, "wfpr proxy: --broker is for --backend preload; the eBPF backend's proxies register with "
			                "a wfpr daemon (--control PATH)\n");
			return 2;
		}
	}
	if ((!cfg.broker_path && !cfg.ebpf) || !cfg.name) {
		fprintf(stderr, "wfpr proxy: give --name NAME, and --broker PATH (preload) or --backend ebpf (a wfpr daemon)"
		                "\n\n%s", cli_usage);
		return 2;
	}
	if (key_file) {
		FILE *f = fopen(key_file, "re");
		bool read = f && fgets(key, sizeof(key), f);
		if (f)
			fclose(f);
		if (!read) {
			fprintf(stderr, "wfpr proxy: cannot read the key file %s\n", key_file);
			return 2;
		}
		key[strcspn(key, "\r\n")] = '\0';
		cfg.broker_key = key;
	}
	if (cfg.rules_path && access(cfg.rules_path, R_OK) != 0) {
		fprintf(stderr, "wfpr proxy: cannot read the rules file %s\n", cfg.rules_path);
		return 2;
	}
	if (log_path && (cfg.log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
		fprintf(stderr, "wfpr proxy: cannot open the log %s\n", log_path);
		return 2;
	}
	return proxy_serve(&cfg);
usage:
	fprintf(stderr, "wfpr proxy: unknown, incomplete or invalid option '%s'\n\n%s", opt, cli_usage);
	return 2;
}
