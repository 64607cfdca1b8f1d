#ifndef WFPR_EBPF_LOADER_H
#define WFPR_EBPF_LOADER_H

/*
 * The eBPF backend's loader (root): one instance is a cgroup under the
 * cgroup2 mount (wfpr-PID) with the BPF programs of wfpr.bpf.c attached,
 * their links and maps pinned under /sys/fs/bpf/wfpr/PID. Processes put in
 * the cgroup (ebpf_enter) have their connects and datagrams redirected to
 * the redirectors added here. Used by `wfpr run --backend ebpf`, `wfpr ebpf`
 * and the tests; the library's side (QUERY, SET) is core/src/ebpf/.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>
#include "wfpr/match.h"

typedef struct ebpf_instance ebpf_instance;

#define EBPF_PIN_ROOT "/sys/fs/bpf/wfpr"

/* Load, attach and pin; 0, or -1 with a message in err (no root, no BPF,
 * no cgroup2). Instances left by a dead owner are removed first. */
int ebpf_open(ebpf_instance **out, char *err, size_t err_len);

/* The same on an existing cgroup v2 directory (absolute, or relative to
 * the cgroup2 mount; "" or "/" is the whole host), which ebpf_close leaves
 * as it is (wfpr daemon). */
int ebpf_open_on(ebpf_instance **out, const char *cgroup, char *err, size_t err_len);
/* The cgroup directory the instance is attached to. */
const char *ebpf_cgroup(const ebpf_instance *e);

/* Redirector slot (0..15): connections go to address (TCP and UDP on an
 * IPv4 loopback address); those of IPv6 sockets to address6 when it is an
 * AF_INET6 address (NULL or another family: to address, IPv4-mapped). id
 * is the redirector id its records carry. */
int ebpf_add_redirector(ebpf_instance *e, unsigned int slot, const uint8_t id[16], uint64_t handle, pid_t pid,
                        const struct sockaddr_storage *address, const struct sockaddr_storage *address6);

/* Hold the sockets of slot's proxy, process pid, in the kernel: its TCP
 * listener on address (required) and its UDP socket there (if any). From
 * then on a connection goes to slot only while that socket lives; when the
 * proxy is gone it is skipped, or refused with ECONNREFUSED (fail-closed).
 * A port that anyone may bind once the proxy is dead is never a target.
 * Also proves that pid listens where it says. 0, or -1 with err. */
int ebpf_guard_redirector(ebpf_instance *e, unsigned int slot, pid_t pid, const struct sockaddr_storage *address,
                          char *err, size_t err_len);
/* Slot's proxy is an unmodified one (docs/unmodified-proxies.md): the
 * process pid, or the processes of the cgroup cgroup_id (0: not by cgroup).
 * SO_ORIGINAL_DST answers on the connections it accepts, and its connects
 * to their original destinations carry their records. 0, or -1. */
int ebpf_set_carrier(ebpf_instance *e, unsigned int slot, pid_t pid, uint64_t cgroup_id);
/* Does slot's proxy still hold the listener it was guarded with? */
bool ebpf_proxy_alive(const ebpf_instance *e, unsigned int slot);
/* A guarded redirector whose proxy is gone: refuse (on) or skip it. */
int ebpf_set_fail_closed(ebpf_instance *e, bool on);

/* Switch slot's redirector off (its proxy is gone): its filters no longer
 * match, and connections go on to the next filter. */
int ebpf_remove_redirector(ebpf_instance *e, unsigned int slot);

/* A filter: connections whose remote address is in prefix/prefix_len (an
 * AF_INET or AF_INET6 sockaddr; NULL: every address of both families), to a
 * port in [port_lo, port_hi], of protocol (0: TCP and UDP), go to slot's
 * redirector. Filters are asked highest weight first; a redirector that may
 * only permit a connection (it is already in its chain) passes it on to the
 * next. At most 32. */
/* Connected UDP sockets that a filter matched, which went direct. */
uint64_t ebpf_udp_connected(const ebpf_instance *e);
/* A sender's UDP flow silent this long: its next datagram starts a new flow
 * with a fresh record (default WFPR_UDP_FLOW_IDLE_MS). 0 or -1. */
int ebpf_set_udp_idle(ebpf_instance *e, unsigned int ms);
int ebpf_add_filter(ebpf_instance *e, unsigned int slot, const struct sockaddr_storage *prefix, unsigned int prefix_len,
                    uint16_t port_lo, uint16_t port_hi, int protocol, uint32_t weight);

/* Slot's one filter, with every condition of m (wfpr/match.h), in place of
 * the filters it had (m NULL: none). exe and cgroup names are looked up
 * now. 0, or -1 with the reason in err. */
int ebpf_set_match(ebpf_instance *e, unsigned int slot, const wfpr_match *m, uint32_t weight, char *err, size_t err_len);

/* Put a process in the instance's cgroup (before it makes its sockets). */
int ebpf_enter(const ebpf_instance *e, pid_t pid);

/* Move a process back to the root of the cgroup hierarchy (before
 * ebpf_close, which kills what it finds in the instance's cgroup). */
int ebpf_leave(const ebpf_instance *e, pid_t pid);

/* Kill what is left in the cgroup, detach, unpin, remove the cgroup. */
void ebpf_close(ebpf_instance *e);

/* `wfpr ebpf status` and `wfpr ebpf cleanup`: what instances exist (owner
 * alive or not, pins, cgroup, counters), and remove them (all, or only
 * those whose owner is dead). The number found, or -1. */
int ebpf_status(FILE *out);
int ebpf_cleanup(FILE *out, bool dead_only);

#endif
