/* The wfpr command. Exit status: 0 all good, 1 a problem found, 2 a usage
 * error (a wrong option, a missing file); wfpr run exits with COMMAND's. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "../src/sockutil.h"
#include "cli.h"
#include "wfpr/wfpr.h"

const char cli_usage[] =
	"usage: wfpr run --rules R.lua [MATCH...] [--proxy NAME=R2.lua [MATCH...] ...] [--backend preload|ebpf]\n"
	"                [--log FILE] [--fail-closed] [--idle-timeout MS] [--udp-idle-timeout MS] [--workers N]\n"
	"                [--buffer BYTES] [--rule-time-limit MS] [--record DIR] -- COMMAND [ARGS...]\n"
	"       wfpr daemon [--cgroup PATH] [--control PATH] [--fail-closed] [--udp-idle-timeout MS]\n"
	"       wfpr proxy --name NAME (--backend ebpf [--control PATH] | --broker PATH [--key-file F])\n"
	"                  [--rules R.lua]\n"
	"                  [--weight N] [MATCH...] [--listen ADDR:PORT] [--log FILE] [--idle-timeout MS]\n"
	"                  [--udp-idle-timeout MS] [--buffer BYTES] [--workers N] [--rule-time-limit MS]\n"
	"                  [--record DIR]\n"
	"       wfpr redirector add --name NAME --listen ADDR:PORT (--pid PID | --cgroup PATH) [--weight N]\n"
	"                  [MATCH...] [--listen6 [::1]:PORT] [--control PATH]   (MATCH's --cgroup is\n"
	"                  --client-cgroup here)\n"
	"       wfpr redirector run --broker PATH --name NAME --listen ADDR:PORT [--weight N] [MATCH...]\n"
	"                  [--key-file F] -- COMMAND [ARGS...]   (the preload backend's form)\n"
	"       wfpr redirector remove --name NAME | list   [--control PATH]\n"
	"       wfpr broker --socket PATH [--key-file F]\n"
	"       wfpr ebpf status [--control PATH] | cleanup [--all]\n"
	"       wfpr inspect BLOB|-\n"
	"       wfpr rules check FILE...\n"
	"       wfpr rules test RULES.lua TRANSCRIPT...\n"
	"       wfpr --version\n"
	"\n"
	"  run           start a broker and one proxy per rules file (each its own redirector),\n"
	"                then run COMMAND with its connections going through all of them;\n"
	"                print a summary per proxy and exit with COMMAND's status\n"
	"                (--backend ebpf: as root, BPF programs on a cgroup of their own redirect\n"
	"                every program in it, static binaries too; see docs/ebpf.md)\n"
	"  daemon        as root, load the eBPF layer on a cgroup (default: the whole host) and let\n"
	"                proxies started on their own register with it (docs/daemon.md)\n"
	"  proxy         a redirect service (proxy) with Lua rules: with --backend ebpf it registers\n"
	"                with a wfpr daemon (default control " WFPR_DAEMON_CONTROL "), else with a broker\n"
	"  redirector    an unmodified transparent proxy (haproxy, mitmproxy: written for netfilter\n"
	"                REDIRECT) as a redirector of a wfpr daemon: SO_ORIGINAL_DST answers, and its\n"
	"                connects carry the records (docs/unmodified-proxies.md)\n"
	"  broker        hold the redirect layer of the preload backend on a Unix socket; proxies\n"
	"                register with the key it writes to F (mode 0600; default PATH.key), which\n"
	"                the programs they inspect must not read (docs/trust.md)\n"
	"  ebpf          status: what eBPF instances, cgroups and pins exist, and a daemon's proxies and\n"
	"                filters; cleanup: remove those whose owner is gone (--all: every one, ending the\n"
	"                processes in its cgroup)\n"
	"  inspect       decode a redirect record: BLOB in hex, or - to read it from\n"
	"                standard input (raw bytes or hex); exit 1 if it is not a record\n"
	"  rules check   load each Lua rules file in the sandbox and report syntax errors,\n"
	"                failing top-level code (forbidden globals such as os or io) and\n"
	"                unknown hook names; exit 1 if any file has a problem\n"
	"  rules test    replay recorded connections (transcripts: docs/rules.md) through a rule\n"
	"                offline and print each verdict and its reason; exit 1 if an expect line\n"
	"                fails or the rule does\n"
	"\n"
	"  MATCH: the connections a proxy takes (WFP's filter conditions); each may repeat (any of\n"
	"  them), different ones must all hold; none: every connection. In wfpr run they belong to\n"
	"  the proxy named just before them.\n"
	"    --proto tcp|udp        --dport 80,443,8000-8100     --dst CIDR     --exclude-dst CIDR\n"
	"    --uid N|USER           --comm NAME (as /proc/PID/comm)     --exe /PATH     --cgroup PATH\n"
	"  --weight N             filters are asked highest weight first (default 100; wfpr run: in the\n"
	"                         order given)\n"
	"  --rule-time-limit MS   stop a rule call after MS of wall clock, library functions included\n"
	"                         (default 100; the connection gets the default verdict)\n"
	"  --idle-timeout MS      reset a TCP connection idle this long (default: never)\n"
	"  --workers N            threads per proxy, each with its own rule host (default: one per\n"
	"                         CPU, at most 16; a rule's locals belong to one worker)\n"
	"  --record DIR           a transcript of each inspected TCP connection, for wfpr rules test\n"
	"  --udp-idle-timeout MS  a UDP flow silent this long ends; the sender's next datagram starts a\n"
	"                         new flow with a fresh record (default 30000; the proxy keeps its side\n"
	"                         5000 longer, so no datagram of a live flow is dropped)\n";

void cli_raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int cli_parse_address(const char *text, struct sockaddr_storage *out)
{
	return wfpr__parse_address(text, out);
}

int cli_match_option(const char *opt, const char *val, wfpr_match *m, char *err, size_t err_len)
{
	static const char *const kinds[] = {"proto", "dport", "dst", "exclude-dst", "uid", "comm", "exe", "cgroup"};
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (strncmp(opt, "--", 2) == 0 && strcmp(opt + 2, kinds[i]) == 0)
			return wfpr_match_add(m, kinds[i], val, err, err_len) == 0 ? 1 : -1;
	return 0;
}

long long cli_parse_count(const char *text)
{
	char *end;
	if (!text || !*text || *text == '-')
		return -1;
	long long v = strtoll(text, &end, 10);
	return *end ? -1 : v;
}

static int wants_help(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			return 0;
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
			return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*run)(int, char **);
	} commands[] = {
		{"run", cmd_run}, {"broker", cmd_broker}, {"proxy", cmd_proxy}, {"inspect", cmd_inspect},
		{"ebpf", cmd_ebpf}, {"daemon", cmd_daemon}, {"redirector", cmd_redirector},
	};
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		fputs(cli_usage, stdout);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
		printf("wfpr %s\n", WFPR_VERSION);
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "rules") == 0 && (strcmp(argv[2], "check") == 0 || strcmp(argv[2], "test") == 0)) {
		if (wants_help(argc - 3, argv + 3)) {
			fputs(cli_usage, stdout);
			return 0;
		}
		return strcmp(argv[2], "check") == 0 ? cmd_rules_check(argc - 3, argv + 3) : cmd_rules_test(argc - 3, argv + 3);
	}
	for (size_t i = 0; argc >= 2 && i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name) != 0)
			continue;
		if (wants_help(argc - 2, argv + 2)) {
			fputs(cli_usage, stdout);
			return 0;
		}
		return commands[i].run(argc - 2, argv + 2);
	}
	fprintf(stderr, "wfpr: unknown command%s%s\n\n%s", argc >= 2 ? " " : "", argc >= 2 ? argv[1] : "", cli_usage);
	return 2;
}

int cli_set_udp_idle(const char *text, unsigned int *out)
{
	long long ms = cli_parse_count(text);
	if (ms < 1 || ms > 24LL * 3600 * 1000)
		return -1;
	*out = (unsigned int)ms;
	return setenv("WFPR_UDP_IDLE_MS", text, 1);
}
