#ifndef WFPR_EBPF_ABI_H
#define WFPR_EBPF_ABI_H

/*
 * What the BPF programs (wfpr.bpf.c), their loader (loader.c) and the
 * library's eBPF backend (core/src/ebpf/backend.c) share: the custom
 * socket-option level and names, and the layout of the maps. Included by
 * BPF C (after vmlinux.h) and by user space (after <linux/types.h>).
 *
 * Addresses are kept as 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d),
 * so an IPv6 socket redirected to an IPv4 proxy has one key. Ports in keys
 * and maps are in host order.
 */

#include "../src/record_wire.h"

/* The custom level of getsockopt/setsockopt ("WFPR"). */
#define WFPR_EBPF_SOL 0x57465052
#define WFPR_EBPF_OPT_RECORDS 1 /* get: the record of this connection (TCP) or of the last datagram's flow (UDP) */
#define WFPR_EBPF_OPT_CONTEXT 2 /* get: its redirect context */
#define WFPR_EBPF_OPT_SET 3     /* set: records issued by the kernel, before connect or sendto */
#define WFPR_EBPF_OPT_NOTES 4   /* set, after SET and before connect or sendto: the annotations (wire form)
                                 * the hop this socket's connect makes carries */

#define WFPR_EBPF_REDIRECTORS 16
#define WFPR_EBPF_FILTERS 32
#define WFPR_EBPF_HOPS 16
#define WFPR_EBPF_FLOW_IDS 32768 /* UDP flows known at once (the flow_ids map) */
#define WFPR_EBPF_RECORD_CAP 4096 /* 12 + 16 hops of 179 bytes (IPv6, with PROCESS), 15 of them with
                                    * 4 + 64 bytes of annotations, fit: 3896 */
#define WFPR_EBPF_CONTEXT_SIZE 256 /* two struct sockaddr_storage */
#define WFPR_EBPF_TOKEN 16

/* Where a record is found: the redirected connection (or UDP flow) as the
 * proxy's socket sees it. */
struct wfpr_ebpf_key {
	__u8 client[16];
	__u8 proxy[16];
	__u16 client_port;
	__u16 proxy_port;
	__u32 protocol;
};

struct wfpr_ebpf_redirector {
	__u8 id[16];
	__u64 handle;
	__u32 pid;
	__u16 active;
	__u16 guarded; /* bit 0 TCP, bit 1 UDP: that proxy socket is in the listeners map, and
	                * a connect or datagram checks that it still lives */
	__u8 ip[16];  /* where it listens (TCP and UDP) for IPv4 sockets */
	__u16 port;
	__u16 port6;  /* and for IPv6 sockets (0: none; they go to ip as IPv4-mapped) */
	__u32 carry_pid; /* an unmodified proxy (docs/unmodified-proxies.md): its process, or 0 */
	__u8 ip6[16];
	__u64 carry_cgroup; /* or the id of its cgroup (0: none). Its connects to the original
	                     * destination of a connection it accepted carry that record */
};

/* The carries map: per unmodified proxy and original destination, the
 * connections it accepted whose record its next connect there carries,
 * oldest first. */
#define WFPR_EBPF_CARRY_DEPTH 8
#define WFPR_EBPF_CARRY_TTL_NS (10ull * 1000000000ull) /* an accepted connection waits this long at most */

struct wfpr_ebpf_carry_key {
	__u8 ip[16]; /* the original destination */
	__u16 port;
	__u16 slot;  /* the redirector */
	__u32 pad;
};

struct wfpr_ebpf_carry {
	struct wfpr_ebpf_key keys[WFPR_EBPF_CARRY_DEPTH]; /* where each record is */
	__u64 at_ns[WFPR_EBPF_CARRY_DEPTH];               /* when accepted (0: free) */
};

/* The listeners map (a SOCKMAP): the proxy's own sockets, by key
 * slot * 2 + (UDP). The kernel drops a socket from it when it closes, so a
 * port that a dead proxy left, and anyone may bind, is never a target. */
#define WFPR_EBPF_LISTENER_KEY(slot, udp) ((slot) * 2u + ((udp) ? 1u : 0u))

/* What a filter may name of each kind (docs/daemon.md, the match options). */
#define WFPR_EBPF_MATCH_PORTS 8
#define WFPR_EBPF_MATCH_UIDS 8
#define WFPR_EBPF_MATCH_COMMS 4
#define WFPR_EBPF_MATCH_EXES 4
#define WFPR_EBPF_MATCH_CGROUPS 4
#define WFPR_EBPF_COMM 16

/* Filters, highest weight first. Filter i applies to a remote address whose
 * longest-prefix entry in lpm4/lpm6 has bit i set and whose entry in the
 * exclusion tries (xlpm4/xlpm6) has not. Within a kind any entry matches;
 * a kind with no entries matches everything; all kinds must match. */
struct wfpr_ebpf_filter {
	__u32 redirector; /* slot in the redirectors map */
	__u32 protocol;   /* 0: TCP and UDP */
	__u32 weight;
	__u8 n_ports, n_uids, n_comms, n_exes, n_cgroups;
	__u8 pad[3];
	struct {
		__u16 lo, hi; /* remote port range, inclusive */
	} ports[WFPR_EBPF_MATCH_PORTS];
	__u32 uids[WFPR_EBPF_MATCH_UIDS];
	__u8 comms[WFPR_EBPF_MATCH_COMMS][WFPR_EBPF_COMM]; /* the task's comm, NUL-padded */
	struct {
		__u64 ino;
		__u32 dev; /* the kernel's encoding: major << 20 | minor */
		__u32 pad;
	} exes[WFPR_EBPF_MATCH_EXES];
	struct {
		__u64 id;    /* the cgroup's id (its inode number) */
		__u32 level; /* its depth below the cgroup2 root */
		__u32 pad;
	} cgroups[WFPR_EBPF_MATCH_CGROUPS];
};

/* The process that made a connection, as its hop's PROCESS attribute says. */
struct wfpr_ebpf_process {
	__u32 pid;
	__u32 uid;
	__u8 comm[WFPR_EBPF_COMM];
};

/* The client process of a chain (the first hop's), as the filters test it:
 * a proxy's outbound connection is tested as its client's, not its own. */
#define WFPR_EBPF_CGROUP_LEVELS 12
struct wfpr_ebpf_origin {
	struct wfpr_ebpf_process p;
	__u64 exe_ino;
	__u32 exe_dev;
	__u32 pad;
	__u64 cgroups[WFPR_EBPF_CGROUP_LEVELS]; /* the ids of its cgroup's ancestors, by level (0: the root) */
};

struct wfpr_ebpf_config {
	__u32 n_filters;
	__u32 fail_closed; /* a guarded redirector whose proxy is gone: refuse (1) or skip it (0) */
	__s64 realtime_offset_ns; /* CLOCK_REALTIME - CLOCK_MONOTONIC at load */
	__u64 udp_idle_ns;        /* a UDP flow silent this long: its next datagram starts a new flow */
};

struct wfpr_ebpf_lpm4 {
	__u32 prefixlen;
	__u8 ip[4];
};

struct wfpr_ebpf_lpm6 {
	__u32 prefixlen;
	__u8 ip[16];
};

/* An issued record, with what the kernel needs to check and use it. */
struct wfpr_ebpf_entry {
	__u32 len;
	__u8 hops;
	__u8 delivered; /* UDP: handed to the proxy with the flow's first datagram */
	__u8 slots[WFPR_EBPF_HOPS]; /* the redirector slot of each hop, oldest first */
	__u16 pad;
	__u8 token[WFPR_EBPF_TOKEN];
	__u8 original[16]; /* the newest hop's original destination */
	__u16 original_port;
	__u16 pad2;
	__u32 pad3;
	struct wfpr_ebpf_process process; /* that made the newest hop's connection */
	struct wfpr_ebpf_origin origin;   /* the chain's client */
	__u64 used_by; /* the id of the socket that connected with it SET (0: none): a record is single-use */
	__u8 context[WFPR_EBPF_CONTEXT_SIZE];
	__u8 record[WFPR_EBPF_RECORD_CAP];
};

/* A UDP flow as the sender's datagrams find it (the flow_ids map, by the
 * flow's key): small, so that many more flows are known than records are
 * kept, and a flow whose record went from the flows map goes on as the
 * same flow. */
struct wfpr_ebpf_flow_id {
	__u64 sock;    /* the SO_COOKIE of the socket that sends it (a flow belongs to one socket) */
	__u64 last_ns; /* its last datagram out (CLOCK_MONOTONIC) */
	__u8 original[16];
	__u16 original_port;
	__u16 pad;
	__u32 pad2;
};

/* Per socket (SK_STORAGE): what the chain SET on it says, and a redirect
 * to finish. The chain's bytes are not copied here: they are the live
 * record at chain_key, whose last token is chain_token, so that a socket
 * holds a few hundred bytes, not a page. */
struct wfpr_ebpf_sock {
	__u32 chain_len;
	__u8 hops;
	__u8 pending;    /* connect redirected; TCP: the record is issued once established,
	                  * UDP: when the proxy receives the first datagram */
	__u8 slot;       /* the redirector it went to */
	__u8 redirected; /* getpeername shows original */
	__u8 target6;    /* sent to the redirector's IPv6 address */
	__u8 pad[3];
	__u8 slots[WFPR_EBPF_HOPS];
	__u8 original[16];
	__u16 original_port;
	__u16 from_port; /* UDP at a proxy: the last datagram's source */
	struct wfpr_ebpf_process process; /* who connected it (TCP, connected UDP) */
	struct wfpr_ebpf_origin origin;   /* the client: from the chain SET on it, else who connected it */
	__u64 id;                         /* random, made at its first SET: what used_by names */
	__u32 notes_len;                  /* its annotations (OPT_NOTES), which its redirect's hop carries */
	__u8 notes[WFPR__WIRE_NOTES_MAX];
	struct wfpr_ebpf_key chain_key;   /* where the record SET on it is */
	__u8 chain_token[WFPR_EBPF_TOKEN]; /* its last token: still that record, not a later one's */
	__u8 from[16];
};

/* Counters (a per-CPU array, summed by `wfpr ebpf status`). */
enum wfpr_ebpf_counter {
	WFPR_EBPF_REDIRECTS,
	WFPR_EBPF_PERMITS,
	WFPR_EBPF_LOOP_BLOCKS,
	WFPR_EBPF_ISSUED,
	WFPR_EBPF_QUERIES,
	WFPR_EBPF_SETS,
	WFPR_EBPF_BAD_SETS,
	WFPR_EBPF_UDP_CONNECTED, /* connected UDP sockets a filter matched: they go direct */
	WFPR_EBPF_PROXY_GONE,    /* fail-closed: refused, the redirector's proxy is gone */
	WFPR_EBPF_CARRIED,       /* an unmodified proxy's connect carried an accepted connection's record */
	WFPR_EBPF_ORIGINAL_DST,  /* SO_ORIGINAL_DST answered from a record */
	WFPR_EBPF_COUNTERS
};

#endif
