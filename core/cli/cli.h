#ifndef WFPR_CLI_H
#define WFPR_CLI_H

/* The wfpr command's subcommands, one file each, and what they share. */

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

struct wfpr_match;

extern const char cli_usage[];

int cmd_inspect(int argc, char **argv);
int cmd_rules_check(int argc, char **argv);
int cmd_broker(int argc, char **argv);
int cmd_proxy(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_ebpf(int argc, char **argv);
int cmd_daemon(int argc, char **argv);
int cmd_redirector(int argc, char **argv);
int cmd_rules_test(int argc, char **argv);
/* What the daemon on control serves: its cgroup, and each proxy with its
 * filter. Silent when none answers, unless asked (said). */
void daemon_status(FILE *out, const char *control, int said);

typedef struct proxy_config {
	const char *name;
	const char *rules_path;  /* NULL: pass everything */
	const char *broker_path;
	const char *broker_key;   /* the registration key (64 hex digits); NULL: the broker's key file */
	struct sockaddr_storage listen; /* port 0: any */
	int log_fd;              /* -1: none */
	int ready_fd;            /* written once when registered, -1: none */
	int stats_fd;            /* a JSON line of counts at exit, -1: none */
	unsigned int idle_ms;
	unsigned int udp_idle_ms; /* a sender's UDP flow idle this long starts anew; 0: WFPR_UDP_FLOW_IDLE_MS */
	size_t buffer_size;
	const char *record_dir;  /* a transcript per inspected TCP connection (docs/rules.md); NULL: none */
	unsigned int workers;    /* engines (threads) on the one address; 0: 1 */
	unsigned int rule_time_ms; /* wall clock per rule call; 0: the host's default (100) */
	int fail_closed;
	/* the eBPF backend: no broker; under wfpr run, the redirector ids the
	 * loader gave out; else (control set) a wfpr daemon gives one */
	int ebpf;
	const char *control; /* the daemon's control socket */
	uint32_t weight;     /* filters are asked highest weight first */
	const char *match;   /* the conditions (wfpr/match.h text); "" or NULL: every connection */
	const uint8_t (*ids)[16]; /* every proxy's id, this one's at index slot */
	const char (*names)[64];  /* and their names, for the log's hops */
	size_t n_ids, slot;
} proxy_config;

/* Serve as a proxy until SIGTERM or SIGINT; exit status. Once listening it
 * writes its addresses to ready_fd: two struct sockaddr_storage, where it
 * listens and (on the eBPF backend) the same port on [::1], else AF_UNSPEC. */
int proxy_serve(const proxy_config *cfg);
/* Serve as the broker until SIGTERM or SIGINT; exit status. key: the
 * registration key (NULL: a random one); key_file: where to write it for
 * proxies started on their own (NULL: nowhere, wfpr run hands it over). */
int broker_serve(const char *path, const char *key, const char *key_file, int ready_fd);

/* Traffic wfpr run cannot redirect, said once on stderr and as an "escape"
 * line in the log (escapes.c). */
void cli_say_escape(int log_fd, const char *what);
/* Under the preload backend: is COMMAND statically linked? Then say so. */
void cli_check_static_command(int log_fd, const char *command);
/* The eBPF backend: connected UDP sockets that went direct so far (IPv6
 * ones whose proxy has no [::1] address). */
unsigned long long run_ebpf_udp_connected(void);

/* The systemd readiness protocol (notify.c): take NOTIFY_SOCKET out of the
 * environment, so that children do not inherit it; later send it a state
 * such as "READY=1" (nothing when it was not set). */
void cli_notify_take(void);
int cli_notify(const char *state);

/* The LD_PRELOAD shim: WFPR_PRELOAD, the one beside this binary (the build
 * tree), else the installed one. */
void cli_shim_path(char *out, size_t len);

/* A relay holds two descriptors per connection: take the hard limit. */
void cli_raise_fd_limit(void);
/* A match option (--proto, --dport, --dst, --exclude-dst, --uid, --comm,
 * --exe, --cgroup) added to m: 1; -1 with the reason in err; 0 when opt is
 * not one. */
int cli_match_option(const char *opt, const char *val, struct wfpr_match *m, char *err, size_t err_len);
/* "127.0.0.1:8080", "[::1]:8080" */
int cli_parse_address(const char *text, struct sockaddr_storage *out);
/* Parse a whole non-negative number; -1 if text is not one. */
long long cli_parse_count(const char *text);

/* The eBPF backend for wfpr run (core/cli/ebpf.c): 0 or -1. */
int run_ebpf_open(char *err, size_t err_len);
int run_ebpf_enter(pid_t pid);
/* address: the proxy's IPv4 and IPv6 (AF_UNSPEC: none) addresses; match:
 * the connections it takes, asked highest weight first */
int run_ebpf_add_proxy(unsigned int slot, const uint8_t id[16], pid_t pid, const struct sockaddr_storage address[2],
                       const struct wfpr_match *match, uint32_t weight, char *err, size_t err_len);
int run_ebpf_remove_proxy(unsigned int slot);
/* A proxy that is gone: its connections are refused, never sent to its port. */
int run_ebpf_set_fail_closed(void);
int run_ebpf_set_udp_idle(unsigned int ms);
/* --udp-idle-timeout MS: every sender in this process and its children
 * (WFPR_UDP_IDLE_MS) starts a new flow after MS of silence. */
int cli_set_udp_idle(const char *text, unsigned int *out);
void run_ebpf_close(void);

#endif
