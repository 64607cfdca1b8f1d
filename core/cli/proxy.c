/* wfpr proxy: one redirect service of the preload backend. It attaches to
 * the broker, registers as a redirector, and serves with the engine and
 * its Lua rules until SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/engine.h"
#include "wfpr/rules.h"
#include "wfpr/wfpr.h"

static wfpr_engine *serving;

static void on_signal(int sig)
{
	(void)sig;
	wfpr_engine_stop(serving);
}

#define NAME_CACHE 32

typedef struct name_cache {
	uint8_t id[NAME_CACHE][WFPR_REDIRECTOR_ID_SIZE];
	char name[NAME_CACHE][65];
	size_t n;
} name_cache;

/* The log names hops by redirector name: asked of the broker once per id. */
static const char *hop_name(void *user, const uint8_t id[16], char *buf, size_t len)
{
	name_cache *cache = user;
	for (size_t i = 0; i < cache->n; i++)
		if (memcmp(cache->id[i], id, WFPR_REDIRECTOR_ID_SIZE) == 0)
			return strlen(cache->name[i]) < len ? strcpy(buf, cache->name[i]) : NULL;
	if (wfpr_preload_redirector_name(buf, len, id) != 0)
		return NULL;
	if (cache->n < NAME_CACHE && strlen(buf) < sizeof(cache->name[0])) {
		memcpy(cache->id[cache->n], id, WFPR_REDIRECTOR_ID_SIZE);
		strcpy(cache->name[cache->n++], buf);
	}
	return buf;
}

static void write_stats(const proxy_config *cfg, const wfpr_engine *engine, const wfpr_rules *rules)
{
	wfpr_engine_stats es;
	wfpr_rules_stats rs = {0};
	wfpr_engine_get_stats(&es, engine);
	if (rules)
		wfpr_rules_get_stats(&rs, rules);
	dprintf(cfg->stats_fd,
	        "{\"proxy\":\"%s\",\"connections\":%llu,\"pass\":%llu,\"inspect\":%llu,\"block\":%llu,\"failed\":%llu,"
	        "\"flows\":%llu,\"bytes_up\":%llu,\"bytes_down\":%llu,\"rule_errors\":%llu}\n",
	        cfg->name, (unsigned long long)es.accepted, (unsigned long long)es.passed,
	        (unsigned long long)es.inspected, (unsigned long long)es.blocked, (unsigned long long)es.failed,
	        (unsigned long long)es.flows, (unsigned long long)(es.bytes_up), (unsigned long long)es.bytes_down,
	        (unsigned long long)(rs.errors + rs.timeouts + rs.nomem));
}

int proxy_serve(const proxy_config *cfg)
{
	static name_cache names;
	wfpr_rules *rules = NULL;
	wfpr_rules_options ro = WFPR_RULES_OPTIONS_INIT;
	ro.fail_closed = cfg->fail_closed;
	cli_raise_fd_limit();
	int rc = wfpr_preload_attach(cfg->broker_path);
	if (rc == 0 && cfg->rules_path) {
		rc = wfpr_rules_new(&rules, &ro);
		if (rc == 0 && wfpr_rules_load_file(rules, cfg->rules_path) != 0) {
			fprintf(stderr, "wfpr proxy %s: %s\n", cfg->name, wfpr_rules_error(rules));
			wfpr_rules_free(rules);
			return 1;
		}
	}
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	wfpr_engine_options eo = WFPR_ENGINE_OPTIONS_INIT;
	eo.name = cfg->name;
	eo.listen_address = &cfg->listen;
	eo.rules = rules;
	eo.log_fd = cfg->log_fd;
	eo.udp = 1;
	eo.tcp_idle_ms = cfg->idle_ms;
	eo.buffer_size = cfg->buffer_size;
	eo.redirector_id = id;
	eo.hop_name = hop_name;
	eo.hop_name_user = &names;
	if (rc == 0)
		rc = wfpr_engine_new(&serving, &eo);
	struct sockaddr_storage address;
	if (rc == 0 && (rc = wfpr_engine_address(&address, serving)) == 0)
		rc = wfpr_preload_register(id, cfg->name, &address);
	if (rc != 0) {
		fprintf(stderr, "wfpr proxy %s: cannot start: %s (%s)\n", cfg->name, wfpr_strerror(rc), wfpr_err_name(rc));
		wfpr_engine_free(serving);
		wfpr_rules_free(rules);
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	char where[64];
	fprintf(stderr, "wfpr proxy %s: listening on %s\n", cfg->name, wfpr_sockaddr_format(where, sizeof(where), &address));
	if (cfg->ready_fd >= 0) {
		if (write(cfg->ready_fd, "p", 1) < 0) {
			/* the parent went away: serve anyway until told to stop */
		}
		close(cfg->ready_fd);
	}
	rc = wfpr_engine_run(serving);
	if (cfg->stats_fd >= 0)
		write_stats(cfg, serving, rules);
	wfpr_engine_free(serving);
	wfpr_rules_free(rules);
	serving = NULL;
	return rc == 0 ? 0 : 1;
}

int cmd_proxy(int argc, char **argv)
{
	proxy_config cfg = {.log_fd = -1, .ready_fd = -1, .stats_fd = -1};
	struct sockaddr_in *v4 = (struct sockaddr_in *)&cfg.listen;
	v4->sin_family = AF_INET;
	v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	const char *log_path = NULL;
	const char *opt = NULL;
	for (int i = 0; i < argc; i++) {
		opt = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		long long n = 0;
		if (!val)
			goto usage;
		i++;
		if (strcmp(opt, "--broker") == 0)
			cfg.broker_path = val;
		else if (strcmp(opt, "--name") == 0)
			cfg.name = val;
		else if (strcmp(opt, "--rules") == 0)
			cfg.rules_path = val;
		else if (strcmp(opt, "--log") == 0)
			log_path = val;
		else if (strcmp(opt, "--listen") == 0 && cli_parse_address(val, &cfg.listen) == 0)
			continue;
		else if (strcmp(opt, "--idle-timeout") == 0 && (n = cli_parse_count(val)) >= 0)
			cfg.idle_ms = (unsigned int)n;
		else if (strcmp(opt, "--buffer") == 0 && (n = cli_parse_count(val)) > 0)
			cfg.buffer_size = (size_t)n;
		else
			goto usage;
	}
	if (!cfg.broker_path || !cfg.name) {
		fprintf(stderr, "wfpr proxy: --broker PATH and --name NAME are required\n\n%s", cli_usage);
		return 2;
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
