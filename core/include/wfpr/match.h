#ifndef WFPR_MATCH_H
#define WFPR_MATCH_H

/*
 * Which connections a redirector takes: WFP's filter conditions. Each kind
 * may be given several times (ORed); kinds are ANDed; a kind not given
 * matches everything. The eBPF daemon evaluates a match in the kernel, the
 * preload broker in its process, before any redirect (docs/daemon.md).
 *
 * The text form, which `wfpr proxy` options and the control protocols use,
 * is space-separated KIND=VALUE words:
 *
 *   proto=tcp|udp   dport=80,443,8000-8100   dst=CIDR   exclude-dst=CIDR
 *   uid=N|USER      comm=NAME   exe=/ABS/PATH   cgroup=PATH
 *
 * (cgroup: a cgroup v2 directory, absolute or relative to the cgroup2 mount;
 * the process is in it or below it.)
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "common.h"
#include "record.h"

WFPR_BEGIN_DECL

#define WFPR_MATCH_PORTS 8
#define WFPR_MATCH_PREFIXES 8
#define WFPR_MATCH_UIDS 8
#define WFPR_MATCH_COMMS 4
#define WFPR_MATCH_EXES 4
#define WFPR_MATCH_CGROUPS 4
#define WFPR_MATCH_TEXT_MAX 4096 /* the longest text form */

typedef struct wfpr_prefix {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned int len;
} wfpr_prefix;

typedef struct wfpr_match {
	int protocol; /* 0: TCP and UDP */
	size_t n_ports;
	struct {
		uint16_t lo, hi;
	} ports[WFPR_MATCH_PORTS];
	size_t n_dst, n_exclude;
	wfpr_prefix dst[WFPR_MATCH_PREFIXES], exclude[WFPR_MATCH_PREFIXES];
	size_t n_uids;
	uint32_t uids[WFPR_MATCH_UIDS];
	size_t n_comms;
	char comms[WFPR_MATCH_COMMS][16];
	size_t n_exes;
	char exes[WFPR_MATCH_EXES][256];
	size_t n_cgroups;
	char cgroups[WFPR_MATCH_CGROUPS][256];
} wfpr_match;

/* Add one condition: kind "proto", "dport", "dst", "exclude-dst", "uid",
 * "comm", "exe" or "cgroup", and its value (dport, dst and uid take comma
 * lists). 0, or WFPR_WSAEINVAL with the reason in err (a wrong value, or
 * too many of a kind), WFPR_WSAEFAULT for NULL. */
WFPR_EXTERN int wfpr_match_add(wfpr_match *m, const char *kind, const char *value, char *err, size_t err_len);

/* Parse the text form into m (zeroed first). 0 or as wfpr_match_add. */
WFPR_EXTERN int wfpr_match_parse(wfpr_match *m, const char *text, char *err, size_t err_len);

/* The text form of m into buf ("" matches everything); the length it
 * needs, as snprintf. */
WFPR_EXTERN size_t wfpr_match_format(char *buf, size_t len, const wfpr_match *m);

/* Does m take a connection of protocol to dst, made by process p (pid,
 * uid, name and exe filled; NULL: unknown, so that any process condition
 * fails)? 1 or 0. Reads /proc/PID/cgroup for a cgroup condition. */
WFPR_EXTERN int wfpr_match_test(const wfpr_match *m, int protocol, const struct sockaddr_storage *dst,
                                const wfpr_process *p);

WFPR_END_DECL

#endif
