/* wfpr redirector add|remove|list: unmodified transparent proxies (haproxy,
 * mitmproxy, Envoy) as redirectors of a wfpr daemon (docs/unmodified-proxies.md). */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/daemon.h"
#include "wfpr/match.h"
#include "wfpr/wfpr.h"

static int add(int argc, char **argv)
{
	const char *name = NULL, *cgroup = NULL, *control = NULL, *opt = NULL;
	struct sockaddr_storage listen = {0}, listen6 = {0};
	long long pid = 0, weight = 100;
	static wfpr_match match;
	char why[512], match_text[WFPR_MATCH_TEXT_MAX + 1];
	for (int i = 0; i < argc; i += 2) {
		opt = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!val)
			goto usage;
		if (strcmp(opt, "--cgroup") == 0) { /* the proxy's; the clients' is --client-cgroup here */
			cgroup = val;
			continue;
		}
		int is_match = cli_match_option(strcmp(opt, "--client-cgroup") == 0 ? "--cgroup" : opt, val, &match, why,
		                                sizeof(why));
		if (is_match < 0) {
			fprintf(stderr, "wfpr redirector add: %s\n", why);
			return 2;
		}
		if (is_match)
			continue;
		if (strcmp(opt, "--name") == 0)
			name = val;
		else if (strcmp(opt, "--listen") == 0 && cli_parse_address(val, &listen) == 0 && listen.ss_family == AF_INET)
			continue;
		else if (strcmp(opt, "--listen6") == 0 && cli_parse_address(val, &listen6) == 0 && listen6.ss_family == AF_INET6)
			continue;
		else if (strcmp(opt, "--pid") == 0 && (pid = cli_parse_count(val)) > 0 && pid <= 0x7fffffff)
			continue;
		else if (strcmp(opt, "--weight") == 0 && (weight = cli_parse_count(val)) >= 0 && weight <= 0xffffffffLL)
			continue;
		else if (strcmp(opt, "--control") == 0)
			control = val;
		else
			goto usage;
	}
	if (!name || listen.ss_family != AF_INET || (pid > 0) == (cgroup != NULL)) {
		fprintf(stderr, "wfpr redirector add: give --name NAME, --listen ADDR:PORT (where the proxy listens) and its "
		                "process, --pid PID or --cgroup PATH\n\n%s", cli_usage);
		return 2;
	}
	wfpr_match_format(match_text, sizeof(match_text), &match);
	uint8_t id[16];
	int rc = wfpr_daemon_add_redirector(control, name, (uint32_t)weight, match_text, &listen,
	                                    listen6.ss_family == AF_INET6 ? &listen6 : NULL, (pid_t)pid, cgroup, id, why,
	                                    sizeof(why));
	if (rc != 0) {
		fprintf(stderr, "wfpr redirector add: %s\n", why);
		return 1;
	}
	char hex[33];
	printf("redirector %s (id %s) added; it takes %s\n", name, wfpr_redirector_id_format(hex, sizeof(hex), id),
	       *match_text ? match_text : "every connection");
	return 0;
usage:
	fprintf(stderr, "wfpr redirector add: unknown, incomplete or invalid option '%s'\n\n%s", opt, cli_usage);
	return 2;
}

/* wfpr redirector run --broker PATH --name NAME --listen ADDR:PORT [...] -- COMMAND: the preload
 * backend's form. The shim in COMMAND registers it when it listens there. */
static int run(int argc, char **argv)
{
	const char *broker = NULL, *name = NULL, *listen = NULL, *key_file = NULL, *opt = NULL;
	long long weight = 100;
	static wfpr_match match;
	char why[512], match_text[WFPR_MATCH_TEXT_MAX + 1], weight_text[16], key_path[4200], shim[4200];
	struct sockaddr_storage a;
	int i = 0;
	for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
		opt = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (!val)
			goto usage;
		int is_match = cli_match_option(opt, val, &match, why, sizeof(why));
		if (is_match < 0) {
			fprintf(stderr, "wfpr redirector run: %s\n", why);
			return 2;
		}
		if (is_match)
			continue;
		if (strcmp(opt, "--broker") == 0)
			broker = val;
		else if (strcmp(opt, "--name") == 0)
			name = val;
		else if (strcmp(opt, "--listen") == 0 && cli_parse_address(val, &a) == 0)
			listen = val;
		else if (strcmp(opt, "--key-file") == 0)
			key_file = val;
		else if (strcmp(opt, "--weight") == 0 && (weight = cli_parse_count(val)) >= 0 && weight <= 0xffffffffLL)
			continue;
		else
			goto usage;
	}
	if (!broker || !name || !listen || i + 1 >= argc) {
		fprintf(stderr, "wfpr redirector run: give --broker PATH, --name NAME, --listen ADDR:PORT (where COMMAND "
		                "listens), then -- COMMAND\n\n%s", cli_usage);
		return 2;
	}
	if (!key_file) {
		snprintf(key_path, sizeof(key_path), "%s.key", broker);
		key_file = key_path;
	}
	wfpr_match_format(match_text, sizeof(match_text), &match);
	snprintf(weight_text, sizeof(weight_text), "%lld", weight);
	cli_shim_path(shim, sizeof(shim));
	if (setenv("LD_PRELOAD", shim, 1) || setenv("WFPR_BROKER", broker, 1) || setenv("WFPR_REDIRECTOR", name, 1) ||
	    setenv("WFPR_REDIRECTOR_LISTEN", listen, 1) || setenv("WFPR_REDIRECTOR_WEIGHT", weight_text, 1) ||
	    setenv("WFPR_REDIRECTOR_MATCH", match_text, 1) || setenv("WFPR_KEY_FILE", key_file, 1)) {
		perror("wfpr redirector run");
		return 1;
	}
	execvp(argv[i + 1], argv + i + 1);
	fprintf(stderr, "wfpr redirector run: cannot run %s: %s\n", argv[i + 1], strerror(errno));
	return 127;
usage:
	fprintf(stderr, "wfpr redirector run: unknown, incomplete or invalid option '%s'\n\n%s", opt, cli_usage);
	return 2;
}

int cmd_redirector(int argc, char **argv)
{
	const char *control = NULL, *name = NULL;
	if (argc >= 1 && strcmp(argv[0], "add") == 0)
		return add(argc - 1, argv + 1);
	if (argc >= 1 && strcmp(argv[0], "run") == 0)
		return run(argc - 1, argv + 1);
	bool remove = argc >= 1 && strcmp(argv[0], "remove") == 0, list = argc >= 1 && strcmp(argv[0], "list") == 0;
	for (int i = 1; (remove || list) && i + 1 < argc + 1; i += 2) {
		if (i + 1 < argc && strcmp(argv[i], "--control") == 0) {
			control = argv[i + 1];
		} else if (i + 1 < argc && remove && strcmp(argv[i], "--name") == 0) {
			name = argv[i + 1];
		} else {
			fprintf(stderr, "wfpr redirector: unknown or incomplete option '%s'\n\n%s", argv[i], cli_usage);
			return 2;
		}
	}
	if (list) {
		daemon_status(stdout, control ? control : WFPR_DAEMON_CONTROL, 1);
		return 0;
	}
	if (!remove || !name) {
		fprintf(stderr, "wfpr redirector: add, run, remove --name NAME, or list\n\n%s", cli_usage);
		return 2;
	}
	char why[512];
	if (wfpr_daemon_remove_redirector(control, name, why, sizeof(why)) != 0) {
		fprintf(stderr, "wfpr redirector remove: %s\n", why);
		return 1;
	}
	printf("redirector %s removed\n", name);
	return 0;
}
