// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * The eBPF backend's kernel half: the Linux counterpart of a WFP
 * ALE_CONNECT_REDIRECT callout, attached to one cgroup.
 *
 *   connect4/6    decide from the filters and the chain SET on the socket
 *                 (the four redirect states, the loop guard, the hop cap)
 *                 and send a TCP connect to the redirector's proxy;
 *   sock_ops      once the redirected connect is established, issue its
 *                 record (the chain plus one hop, with a random token) under
 *                 the connection's 4-tuple; watch the proxy's accepted
 *                 socket and forget the record when it closes;
 *   getsockopt    QUERY: the record or context of the proxy's connection;
 *   setsockopt    SET: only a record the kernel issued to a live
 *                 connection, byte for byte (looked up by its last token);
 *   getpeername   the client still sees its original destination;
 *   sendmsg4/6,   the same for UDP datagrams, per flow;
 *   recvmsg4/6    replies appear to come from the original destination.
 *
 * The record bytes follow docs/record-format.md; the decoder in
 * core/src/record.c reads them (tests/c/test_ebpf.c checks that it does).
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include "abi.h"
#include "record_writer.h"

#define AF_INET 2
#define AF_INET6 10
#define EINVAL 22
#define ENOENT 2
#define ENOSPC 28
#define ELOOP 40
#define ENOPROTOOPT 92
#define EPROTONOSUPPORT 93
#define EISCONN 106
#define ENOTCONN 107
#define ECONNREFUSED 111

#define HEADER WFPR__WIRE_HEADER_SIZE
#define HOP4 WFPR__WIRE_HOP_SIZE(4)
#define HOP6 WFPR__WIRE_HOP_SIZE(16)
#define CAP WFPR_EBPF_RECORD_CAP
#define CHUNK 256 /* a QUERY into a buffer shorter than CAP copies this much at a time */
#define NOTES_TLV_MAX WFPR__WIRE_NOTES_TLV_SIZE(WFPR__WIRE_NOTES_MAX)

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WFPR_EBPF_REDIRECTORS);
	__type(key, __u32);
	__type(value, struct wfpr_ebpf_redirector);
} redirectors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WFPR_EBPF_FILTERS);
	__type(key, __u32);
	__type(value, struct wfpr_ebpf_filter);
} filters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wfpr_ebpf_config);
} settings SEC(".maps");

/* Filter bits by remote prefix (values: a bitmask of filters), IPv4 and IPv6. */
#define LPM_TRIE(name, key_type)                                                                            \
	struct {                                                                                                \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);                                                            \
		__uint(max_entries, 256);                                                                       \
		__uint(map_flags, BPF_F_NO_PREALLOC);                                                           \
		__type(key, key_type);                                                                          \
		__type(value, __u32);                                                                           \
	} name SEC(".maps")

LPM_TRIE(lpm4, struct wfpr_ebpf_lpm4);
LPM_TRIE(lpm6, struct wfpr_ebpf_lpm6);
/* The same for the prefixes filters exclude (--exclude-dst). */
LPM_TRIE(xlpm4, struct wfpr_ebpf_lpm4);
LPM_TRIE(xlpm6, struct wfpr_ebpf_lpm6);

/* Each guarded redirector's proxy sockets (WFPR_EBPF_LISTENER_KEY). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2 * WFPR_EBPF_REDIRECTORS);
	__type(key, __u32);
	__type(value, __u64);
} listeners SEC(".maps");

/* TCP records: issued when the redirected connect is established, removed
 * when the proxy's accepted socket closes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct wfpr_ebpf_key);
	__type(value, struct wfpr_ebpf_entry);
} records SEC(".maps");

/* UDP records: a datagram flow has no close, so the least recently used
 * go. A record is needed until the proxy has the flow's first datagram and
 * has passed the flow on; flow_ids knows the flows for longer. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct wfpr_ebpf_key);
	__type(value, struct wfpr_ebpf_entry);
} flows SEC(".maps");

/* Which UDP flows go on: a sender's next datagram continues its flow (no
 * new record) while the flow is known here, from the same socket, to the
 * same destination, not idle. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WFPR_EBPF_FLOW_IDS);
	__type(key, struct wfpr_ebpf_key);
	__type(value, struct wfpr_ebpf_flow_id);
} flow_ids SEC(".maps");

struct token {
	__u8 b[WFPR_EBPF_TOKEN];
};

/* Each issued record's last token: where that record is. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct token);
	__type(value, struct wfpr_ebpf_key);
} tokens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct wfpr_ebpf_sock);
} socks SEC(".maps");

/* Unmodified proxies: the connections each accepted, per original
 * destination, whose records its connects there carry (abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct wfpr_ebpf_carry_key);
	__type(value, struct wfpr_ebpf_carry);
} carries SEC(".maps");

/* An empty carries value, never written: what a new entry starts as (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wfpr_ebpf_carry);
} carry_empty SEC(".maps");

/* UDP: the last peer a socket received a datagram from (not through a
 * proxy). A datagram back to it is a reply, not a new flow: never redirected. */
struct peer {
	__u8 ip[16];
	__u32 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct peer);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wfpr_ebpf_entry);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WFPR_EBPF_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &which);
	if (c)
		*c += 1;
}

#define AT_MOST WFPR__AT_MOST /* record_writer.h */

/* ---- addresses ---------------------------------------------------------- */

struct dest {
	__u8 ip[16];
	__u16 port;
	__u16 family;
};

static __always_inline void map4(__u8 *out, __u32 ip4)
{
#pragma unroll
	for (int i = 0; i < 10; i++)
		out[i] = 0;
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &ip4, 4);
}

static __always_inline void put6(__u8 *out, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	__builtin_memcpy(out, &w0, 4);
	__builtin_memcpy(out + 4, &w1, 4);
	__builtin_memcpy(out + 8, &w2, 4);
	__builtin_memcpy(out + 12, &w3, 4);
}

static __always_inline __u32 word(const __u8 *ip, int i)
{
	__u32 w;
	__builtin_memcpy(&w, ip + 4 * i, 4);
	return w;
}

static __always_inline int same_ip(const __u8 *a, const __u8 *b)
{
	int same = 1;
#pragma unroll
	for (int i = 0; i < 16; i++)
		if (a[i] != b[i])
			same = 0;
	return same;
}

static __always_inline int is_mapped(const __u8 *ip)
{
	__u8 m[16];
	map4(m, word(ip, 3));
	return same_ip(m, ip);
}

/* A socket's two ends as 16-byte addresses (IPv4 mapped). */
static __always_inline void sock_ends(struct bpf_sock *sk, __u8 *local, __u8 *peer)
{
	if (sk->family == AF_INET) {
		map4(local, sk->src_ip4);
		map4(peer, sk->dst_ip4);
	} else {
		put6(local, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
		put6(peer, sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]);
	}
}

/* ---- the decision ------------------------------------------------------- */

#define PERMIT -1
#define HOP_LIMIT -2
#define PROXY_GONE -3 /* fail-closed: the chosen redirector's proxy is gone */

static __always_inline struct wfpr_ebpf_redirector *redirector(__u32 slot)
{
	struct wfpr_ebpf_redirector *r = bpf_map_lookup_elem(&redirectors, &slot);
	return r && r->active ? r : 0;
}

/* Is ip:port where a redirector listens? */
static __always_inline int is_proxy(const __u8 *ip, __u16 port)
{
	for (__u32 i = 0; i < WFPR_EBPF_REDIRECTORS; i++) {
		struct wfpr_ebpf_redirector *r = redirector(i);
		if (r && ((r->port == port && same_ip(r->ip, ip)) || (r->port6 && r->port6 == port && same_ip(r->ip6, ip))))
			return 1;
	}
	return 0;
}

/* Where a socket of this family goes to reach r: its IPv6 address for an
 * IPv6 socket when it has one, else its IPv4 address (IPv4-mapped for an
 * IPv6 socket). */
static __always_inline const __u8 *target_ip(const struct wfpr_ebpf_redirector *r, int six)
{
	return six ? r->ip6 : r->ip;
}

static __always_inline __u16 target_port(const struct wfpr_ebpf_redirector *r, int six)
{
	return six ? r->port6 : r->port;
}

/* The chain a socket carries, as decide() reads it. */
struct chain {
	__u32 hops;
	__u8 slots[WFPR_EBPF_HOPS];
};

/* The redirect state of slot for a socket carrying chain c. */
static __always_inline int permit_only(const struct chain *c, __u32 slot)
{
	for (__u32 h = 0; h < WFPR_EBPF_HOPS; h++)
		if (h < c->hops && c->slots[h] == slot)
			return 1; /* REDIRECTED_BY_SELF (newest) or PREVIOUSLY_REDIRECTED_BY_SELF */
	return 0; /* NOT_REDIRECTED (no hops) or REDIRECTED_BY_OTHER */
}

/* The filters' bits for address ip in a pair of tries (0: no entry). */
static __always_inline __u32 prefix_bits(void *trie4, void *trie6, const __u8 *ip)
{
	__u32 *mask;
	if (is_mapped(ip)) {
		struct wfpr_ebpf_lpm4 k = {.prefixlen = 32};
		__builtin_memcpy(k.ip, ip + 12, 4);
		mask = bpf_map_lookup_elem(trie4, &k);
	} else {
		struct wfpr_ebpf_lpm6 k = {.prefixlen = 128};
		__builtin_memcpy(k.ip, ip, 16);
		mask = bpf_map_lookup_elem(trie6, &k);
	}
	return mask ? *mask : 0;
}

/* The process a connection is tested as: the chain's client when the
 * socket carries records (set from them), else the calling process, looked
 * up when first needed. */
struct who {
	struct wfpr_ebpf_origin o;
	int have; /* which parts of o are filled: WHO_* */
};

#define WHO_PROCESS 1 /* pid, uid, comm */
#define WHO_EXE 2
#define WHO_CGROUPS 4
#define WHO_ALL 7

/* comm: the process's (its main thread's, as /proc/PID/comm), not that of
 * the thread that connects (dig's is "isc-net-0000") */
static __always_inline void current_process(struct wfpr_ebpf_process *p)
{
	p->pid = bpf_get_current_pid_tgid() >> 32;
	p->uid = (__u32)bpf_get_current_uid_gid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	if (!leader || BPF_CORE_READ_INTO(&p->comm, leader, comm) != 0)
		bpf_get_current_comm(p->comm, sizeof(p->comm));
}

/* w's parts in want, looked up now where missing (a connection no
 * filter matches pays only for what the filters compare). */
static __always_inline struct wfpr_ebpf_origin *who_get(struct who *w, int want)
{
	int missing = want & ~w->have;
	if (missing & WHO_PROCESS)
		current_process(&w->o.p);
	if (missing & WHO_EXE) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct inode *inode = BPF_CORE_READ(task, mm, exe_file, f_inode);
		w->o.exe_ino = inode ? BPF_CORE_READ(inode, i_ino) : 0;
		w->o.exe_dev = inode ? BPF_CORE_READ(inode, i_sb, s_dev) : 0;
	}
	if (missing & WHO_CGROUPS)
		for (int i = 0; i < WFPR_EBPF_CGROUP_LEVELS; i++)
			if (!(w->o.cgroups[i] = bpf_get_current_ancestor_cgroup_id(i)))
				break; /* past the process's own level: 0 from here on, as w starts */
	w->have |= missing;
	return &w->o;
}

/* Where w is the calling process (no records SET), p as read already
 * (current_process): not read again. */
static __always_inline void who_caller(struct who *w, const struct wfpr_ebpf_process *p)
{
	if (!(w->have & WHO_PROCESS)) {
		w->o.p = *p;
		w->have |= WHO_PROCESS;
	}
}

/* A socket's client: the chain's, when records were SET on it. */
static __always_inline void who_init(struct who *w, const struct wfpr_ebpf_sock *st)
{
	w->have = st && st->hops ? WHO_ALL : 0;
	if (w->have)
		w->o = st->origin;
}

/* Each kind of condition: does any of f's entries match? */
static __always_inline int any_port(const struct wfpr_ebpf_filter *f, __u32 port)
{
	for (__u32 i = 0; i < WFPR_EBPF_MATCH_PORTS && i < f->n_ports; i++)
		if (port >= f->ports[i].lo && port <= f->ports[i].hi)
			return 1;
	return 0;
}

static __always_inline int any_uid(const struct wfpr_ebpf_filter *f, __u32 uid)
{
	for (__u32 i = 0; i < WFPR_EBPF_MATCH_UIDS && i < f->n_uids; i++)
		if (f->uids[i] == uid)
			return 1;
	return 0;
}

static __always_inline int any_comm(const struct wfpr_ebpf_filter *f, const __u8 *comm)
{
	__u64 c0, c1, a, b;
	__builtin_memcpy(&c0, comm, 8);
	__builtin_memcpy(&c1, comm + 8, 8);
	for (__u32 i = 0; i < WFPR_EBPF_MATCH_COMMS && i < f->n_comms; i++) {
		__builtin_memcpy(&a, f->comms[i], 8);
		__builtin_memcpy(&b, f->comms[i] + 8, 8);
		if (a == c0 && b == c1)
			return 1;
	}
	return 0;
}

static __always_inline int any_exe(const struct wfpr_ebpf_filter *f, const struct wfpr_ebpf_origin *w)
{
	for (__u32 i = 0; i < WFPR_EBPF_MATCH_EXES && i < f->n_exes; i++)
		if (f->exes[i].ino == w->exe_ino && f->exes[i].dev == w->exe_dev)
			return 1;
	return 0;
}

static __always_inline int any_cgroup(const struct wfpr_ebpf_filter *f, const struct wfpr_ebpf_origin *w)
{
	for (__u32 i = 0; i < WFPR_EBPF_MATCH_CGROUPS && i < f->n_cgroups; i++) {
		__u32 level = f->cgroups[i].level;
		if (level < WFPR_EBPF_CGROUP_LEVELS && w->cgroups[level] == f->cgroups[i].id)
			return 1;
	}
	return 0;
}

/* Does filter f take a connection to port of protocol from client who?
 * Each kind given must match (any of its entries). A global function, so
 * that the verifier checks it once rather than in each of the 32
 * iterations of decide()'s loop. */
__noinline int wfpr_filter_takes(const struct wfpr_ebpf_filter *f, __u32 port, __u32 protocol, struct who *who)
{
	if (!f || !who || (f->protocol && f->protocol != protocol) || (f->n_ports && !any_port(f, port)))
		return 0;
	if (!f->n_uids && !f->n_comms && !f->n_exes && !f->n_cgroups)
		return 1;
	struct wfpr_ebpf_origin *w = who_get(who, (f->n_uids || f->n_comms ? WHO_PROCESS : 0) |
	                                               (f->n_exes ? WHO_EXE : 0) | (f->n_cgroups ? WHO_CGROUPS : 0));
	return (!f->n_uids || any_uid(f, w->p.uid)) && (!f->n_comms || any_comm(f, w->p.comm)) &&
	       (!f->n_exes || any_exe(f, w)) && (!f->n_cgroups || any_cgroup(f, w));
}

/* Does slot's proxy still hold its socket for protocol? A global
 * function: the verifier checks it once. */
__noinline int wfpr_proxy_alive(__u32 slot, __u32 protocol)
{
	__u32 key = WFPR_EBPF_LISTENER_KEY(slot, protocol == IPPROTO_UDP);
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &key);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* The live entry at the key of the record SET on st (a socket with hops). */
static __always_inline struct wfpr_ebpf_entry *set_entry(const struct wfpr_ebpf_sock *st)
{
	return st->chain_key.protocol == IPPROTO_UDP ? bpf_map_lookup_elem(&flows, &st->chain_key)
	                                             : bpf_map_lookup_elem(&records, &st->chain_key);
}

/* A socket with records SET connects (or sends its flow's first
 * datagram): the record is this socket's now. 0 when another socket used
 * it already. A global function: the verifier checks it once. */
__noinline int wfpr_claim(struct wfpr_ebpf_sock *st)
{
	if (!st || !st->hops)
		return 1;
	struct wfpr_ebpf_entry *e = set_entry(st);
	if (!e)
		return 1; /* its connection is gone since the SET: nothing left to claim */
	if (e->used_by && e->used_by != st->id)
		return 0;
	e->used_by = st->id;
	return 1;
}

/* The unmodified proxy (docs/unmodified-proxies.md) the calling process
 * is, by its pid or cgroup: its slot, or -1. A global function. */
__noinline int wfpr_carrier(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 cgroup = bpf_get_current_cgroup_id();
	for (__u32 i = 0; i < WFPR_EBPF_REDIRECTORS; i++) {
		struct wfpr_ebpf_redirector *r = redirector(i);
		if (r && ((r->carry_pid && r->carry_pid == tgid) || (r->carry_cgroup && r->carry_cgroup == cgroup)))
			return (int)i;
	}
	return -1;
}

/* The unmodified proxy in slot connects to d: the record of the oldest
 * connection it accepted for d (within WFPR_EBPF_CARRY_TTL_NS, unused) goes
 * on the socket, as if the proxy had SET it. 1 if one did. A global
 * function: the verifier checks it once. */
__noinline int wfpr_carry(struct bpf_sock_addr *ctx, const struct dest *d, __u32 slot)
{
	if (!ctx || !d)
		return 0;
	struct wfpr_ebpf_carry_key k = {.port = d->port, .slot = (__u16)slot};
	__builtin_memcpy(k.ip, d->ip, 16);
	struct wfpr_ebpf_carry *c = bpf_map_lookup_elem(&carries, &k);
	if (!c)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	for (int attempt = 0; attempt < WFPR_EBPF_CARRY_DEPTH; attempt++) {
		int best = -1;
		__u64 best_at = 0;
		for (int j = 0; j < WFPR_EBPF_CARRY_DEPTH; j++) {
			__u64 at = c->at_ns[j];
			if (at && now - at < WFPR_EBPF_CARRY_TTL_NS && (best < 0 || at < best_at)) {
				best = j;
				best_at = at;
			}
		}
		if (best < 0)
			return 0;
		struct wfpr_ebpf_key key = c->keys[best & (WFPR_EBPF_CARRY_DEPTH - 1)];
		c->at_ns[best & (WFPR_EBPF_CARRY_DEPTH - 1)] = 0; /* taken: never carried twice */
		struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&records, &key);
		if (!e || e->used_by || e->len > CAP)
			continue; /* its connection closed, or its record passed one on already */
		struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			return 0;
		if (!st->id)
			st->id = ((__u64)bpf_get_prandom_u32() << 32 | bpf_get_prandom_u32()) | 1;
		st->chain_key = key;
		__builtin_memcpy(st->chain_token, e->token, WFPR_EBPF_TOKEN);
		st->chain_len = e->len;
		st->hops = e->hops;
		st->origin = e->origin;
		__builtin_memcpy(st->slots, e->slots, WFPR_EBPF_HOPS);
		count(WFPR_EBPF_CARRIED);
		return 1;
	}
	return 0;
}

/* The slot to redirect d to, PERMIT, HOP_LIMIT or PROXY_GONE, for a socket whose
 * storage is st (NULL: none), of client w. local_port: the socket's own
 * port when known (a proxy's own socket is never redirected). self: the
 * slot of the unmodified proxy that connects (-1: none), never its own target. */
static __always_inline int decide(const struct wfpr_ebpf_sock *st, const struct dest *d, __u32 protocol,
                                  const __u8 *local, __u16 local_port, struct who *w, int self)
{
	__u32 zero = 0;
	struct chain c = {};
	if (st) {
		c.hops = st->hops;
		__builtin_memcpy(c.slots, st->slots, WFPR_EBPF_HOPS);
	}
	struct wfpr_ebpf_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg || cfg->n_filters == 0)
		return PERMIT;
	if (is_proxy(d->ip, d->port) || (local_port && is_proxy(local, local_port)))
		return PERMIT;

	__u32 bits = prefix_bits(&lpm4, &lpm6, d->ip) & ~prefix_bits(&xlpm4, &xlpm6, d->ip);
	if (!bits)
		return PERMIT;
	for (__u32 i = 0; i < WFPR_EBPF_FILTERS; i++) {
		if (i >= cfg->n_filters)
			break;
		if (!(bits & (1u << i)))
			continue;
		__u32 k = i;
		struct wfpr_ebpf_filter *f = bpf_map_lookup_elem(&filters, &k);
		if (!f || !wfpr_filter_takes(f, d->port, protocol, w))
			continue;
		struct wfpr_ebpf_redirector *r = redirector(f->redirector);
		if (!r || permit_only(&c, f->redirector) || (int)f->redirector == self)
			continue; /* the callout may only permit (or it is the connecting proxy's own): the next filter is asked */
		if ((r->guarded & (protocol == IPPROTO_UDP ? 2 : 1)) && !wfpr_proxy_alive(f->redirector, protocol)) {
			if (cfg->fail_closed)
				return PROXY_GONE;
			continue; /* its proxy is gone: skipped, as a switched-off one */
		}
		if (c.hops >= WFPR_EBPF_HOPS)
			return HOP_LIMIT;
		return (int)f->redirector;
	}
	return PERMIT;
}

/* ---- records ------------------------------------------------------------ */

/* A struct sockaddr_in or sockaddr_in6 (host-order family) at p. */
static __always_inline void put_sockaddr(__u8 *p, int v4, const __u8 *ip, __u16 port)
{
	__u16 family = v4 ? AF_INET : AF_INET6;
	__builtin_memcpy(p, &family, 2);
	wfpr__be16(p + 2, port);
	if (v4) {
		__builtin_memcpy(p + 4, ip + 12, 4);
	} else {
#pragma unroll
		for (int i = 0; i < 16; i++)
			p[8 + i] = ip[i];
	}
}

/* The bytes of the chain SET on a socket (st its storage): the record it
 * was SET from, while that record lives (its connection or flow); NULL
 * when none was SET or that record is gone. */
static __always_inline const __u8 *chain_of(const struct wfpr_ebpf_sock *st)
{
	if (!st || !st->hops)
		return 0;
	struct wfpr_ebpf_entry *e = set_entry(st);
	if (!e || e->len != st->chain_len)
		return 0;
	return *(const __u64 *)e->token == *(const __u64 *)st->chain_token &&
	               *(const __u64 *)(e->token + 8) == *(const __u64 *)(st->chain_token + 8)
	           ? e->record
	           : 0;
}

/*
 * Issue the record of a redirect to slot r under key into map: the chain
 * SET on the socket (st, may be NULL; its bytes in chain) plus one hop.
 * v4: the socket's family.
 */
static __always_inline int issue(void *map, const struct wfpr_ebpf_key *key, const struct wfpr_ebpf_sock *st,
                                 const __u8 *chain, __u32 slot, const struct wfpr_ebpf_redirector *r, int v4, const __u8 *original,
                                 __u16 original_port, const struct wfpr_ebpf_process *who,
                                 const struct wfpr_ebpf_origin *origin)
{
	__u32 zero = 0;
	struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&scratch, &zero);
	struct wfpr_ebpf_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!e || !cfg)
		return -1;

	__u32 off = HEADER, hops = 0;
	if (st && st->hops) {
		off = st->chain_len;
		hops = st->hops;
		if (!chain || off < HEADER || off > CAP - HOP6 - NOTES_TLV_MAX || hops >= WFPR_EBPF_HOPS)
			return -1;
		bpf_probe_read_kernel(e->record, AT_MOST(off, CAP - HOP6), chain);
		__builtin_memcpy(e->slots, st->slots, WFPR_EBPF_HOPS);
	}
	__u32 t[4] = {bpf_get_prandom_u32(), bpf_get_prandom_u32(), bpf_get_prandom_u32(), bpf_get_prandom_u32()};
	__builtin_memcpy(e->token, t, sizeof(t));
	e->process = *who;
	e->origin = *origin;
	/* the annotations the proxy passing the connection on attached (read
	 * only when notes_len is not 0; e->context is just readable memory) */
	const __u8 *notes = e->context;
	__u32 notes_len = 0;
	if (st && st->hops && st->notes_len && st->notes_len <= WFPR__WIRE_NOTES_MAX) {
		notes = st->notes;
		notes_len = st->notes_len;
	}

	struct wfpr__hop_args a = {.id = r->id, .handle = r->handle, .pid = r->pid, .target = key->proxy,
	                           .target_port = key->proxy_port, .protocol = key->protocol, .original = original,
	                           .original_port = original_port, .local = key->client, .local_port = key->client_port,
	                           .time = bpf_ktime_get_ns() + cfg->realtime_offset_ns, .process_pid = e->process.pid,
	                           .process_uid = e->process.uid, .process_comm = e->process.comm, .notes = notes,
	                           .notes_len = notes_len, .token = e->token};
	__u32 len = off + (v4 ? wfpr__write_hop(e->record + off, 4, &a) : wfpr__write_hop(e->record + off, 16, &a));
	wfpr__write_header(e->record, hops + 1, len);
	e->len = len;
	e->hops = hops + 1;
	e->slots[hops & (WFPR_EBPF_HOPS - 1)] = slot;
	e->delivered = 0;
	__builtin_memcpy(e->original, original, 16);
	e->original_port = original_port;

	/* the default context: the original remote, then the original local address */
	__builtin_memset(e->context, 0, WFPR_EBPF_CONTEXT_SIZE);
	put_sockaddr(e->context, v4, original, original_port);
	put_sockaddr(e->context + 128, v4, key->client, key->client_port);

	if (bpf_map_update_elem(map, key, e, BPF_ANY) != 0)
		return -1;
	bpf_map_update_elem(&tokens, e->token, key, BPF_ANY);
	count(WFPR_EBPF_ISSUED);
	return 0;
}

/* One program per address family (cgroup/HOOK4 and HOOK6), one handler. */
#define BOTH_FAMILIES(hook, handler)                                        \
	SEC("cgroup/" #hook "4")                                            \
	int wfpr_##hook##4(struct bpf_sock_addr *ctx) { return handler(ctx, 1); } \
	SEC("cgroup/" #hook "6")                                            \
	int wfpr_##hook##6(struct bpf_sock_addr *ctx) { return handler(ctx, 0); }

/* ---- connect and getpeername -------------------------------------------- */

static __always_inline void rewrite(struct bpf_sock_addr *ctx, int v4, const __u8 *ip, __u16 port)
{
	if (v4) {
		ctx->user_ip4 = word(ip, 3);
	} else {
		ctx->user_ip6[0] = word(ip, 0);
		ctx->user_ip6[1] = word(ip, 1);
		ctx->user_ip6[2] = word(ip, 2);
		ctx->user_ip6[3] = word(ip, 3);
	}
	ctx->user_port = bpf_htons(port);
}

static __always_inline void dest_of(struct bpf_sock_addr *ctx, int v4, struct dest *d)
{
	if (v4)
		map4(d->ip, ctx->user_ip4);
	else
		put6(d->ip, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	d->port = bpf_ntohs(ctx->user_port);
}

static __always_inline int on_connect(struct bpf_sock_addr *ctx, int v4)
{
	struct dest d = {};
	dest_of(ctx, v4, &d);
	__u32 protocol = ctx->protocol;
	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return 1;
	struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, ctx->sk, 0, 0);
	int self = protocol == IPPROTO_TCP ? wfpr_carrier() : -1;
	if (self >= 0 && (!st || !st->hops) && wfpr_carry(ctx, &d, (__u32)self))
		st = bpf_sk_storage_get(&socks, ctx->sk, 0, 0);
	if (!wfpr_claim(st)) {
		count(WFPR_EBPF_BAD_SETS);
		bpf_set_retval(-EINVAL); /* its record passed another connection on already */
		return 0;
	}
	struct who w = {};
	who_init(&w, st);
	int slot = decide(st, &d, protocol, 0, 0, &w, self);
	if (slot == PERMIT) {
		count(WFPR_EBPF_PERMITS);
		return 1;
	}
	if (slot == HOP_LIMIT) {
		count(WFPR_EBPF_LOOP_BLOCKS);
		bpf_set_retval(-ELOOP);
		return 0;
	}
	if (slot == PROXY_GONE) {
		count(WFPR_EBPF_PROXY_GONE);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	struct wfpr_ebpf_redirector *r = redirector((__u32)slot);
	if (!r)
		return 1;
	if (protocol == IPPROTO_UDP && !v4 && !r->port6) {
		/* as for a datagram (on_sendmsg): IPv6 UDP needs an IPv6 proxy
		 * address; counted, so that wfpr run can say what went direct */
		count(WFPR_EBPF_UDP_CONNECTED);
		return 1;
	}
	if (!st)
		st = bpf_sk_storage_get(&socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1; /* no memory: the connection goes direct */
	int six = !v4 && r->port6;
	current_process(&st->process);
	who_caller(&w, &st->process);
	st->origin = *who_get(&w, WHO_ALL);
	st->pending = 1;
	st->redirected = 1;
	st->slot = slot;
	st->target6 = six;
	__builtin_memcpy(st->original, d.ip, 16);
	st->original_port = d.port;
	rewrite(ctx, v4, target_ip(r, six), target_port(r, six));
	count(WFPR_EBPF_REDIRECTS);
	return 1;
}

BOTH_FAMILIES(connect, on_connect)

static __always_inline int on_getpeername(struct bpf_sock_addr *ctx, int v4)
{
	struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, ctx->sk, 0, 0);
	if (st && st->redirected)
		rewrite(ctx, v4, st->original, st->original_port);
	return 1;
}

BOTH_FAMILIES(getpeername, on_getpeername)

/* ---- sock_ops: issue when established, forget when the proxy closes ----- */

static __always_inline void key_of(struct bpf_sock *sk, struct wfpr_ebpf_key *key)
{
	sock_ends(sk, key->proxy, key->client);
	key->client_port = bpf_ntohs(sk->dst_port);
	key->proxy_port = sk->src_port;
	key->protocol = sk->protocol;
}

/* An unmodified proxy accepted the connection at key (record e): its next
 * connect to e's original destination carries e (wfpr_carry). A global
 * function: the verifier checks it once. */
__noinline int wfpr_carry_later(const struct wfpr_ebpf_key *key, const struct wfpr_ebpf_entry *e)
{
	if (!key || !e || e->hops == 0 || e->hops > WFPR_EBPF_HOPS)
		return 0;
	__u32 slot = e->slots[(e->hops - 1) & (WFPR_EBPF_HOPS - 1)];
	struct wfpr_ebpf_redirector *r = redirector(slot);
	if (!r || (!r->carry_pid && !r->carry_cgroup))
		return 0;
	struct wfpr_ebpf_carry_key k = {.port = e->original_port, .slot = (__u16)slot};
	__builtin_memcpy(k.ip, e->original, 16);
	struct wfpr_ebpf_carry *c = bpf_map_lookup_elem(&carries, &k);
	if (!c) {
		__u32 zero = 0;
		struct wfpr_ebpf_carry *fresh = bpf_map_lookup_elem(&carry_empty, &zero);
		if (!fresh)
			return 0;
		bpf_map_update_elem(&carries, &k, fresh, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&carries, &k);
		if (!c)
			return 0;
	}
	/* a free place, else the oldest (a connection that waited this long is not carried) */
	int at = 0;
	for (int j = 1; j < WFPR_EBPF_CARRY_DEPTH; j++)
		if (c->at_ns[at] && (!c->at_ns[j] || c->at_ns[j] < c->at_ns[at]))
			at = j;
	c->keys[at & (WFPR_EBPF_CARRY_DEPTH - 1)] = *key;
	c->at_ns[at & (WFPR_EBPF_CARRY_DEPTH - 1)] = bpf_ktime_get_ns();
	return 1;
}

SEC("sockops")
int wfpr_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct wfpr_ebpf_key key = {};
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, sk, 0, 0);
		if (!st || !st->pending)
			break;
		st->pending = 0;
		__u32 slot = st->slot;
		struct wfpr_ebpf_redirector *r = redirector(slot);
		if (!r)
			break;
		__u8 peer[16];
		sock_ends(sk, key.client, peer);
		key.client_port = sk->src_port;
		int v4 = sk->family == AF_INET;
		__builtin_memcpy(key.proxy, target_ip(r, st->target6), 16);
		key.proxy_port = target_port(r, st->target6);
		key.protocol = IPPROTO_TCP;
		issue(&records, &key, st, chain_of(st), slot, r, v4, st->original, st->original_port, &st->process,
		      &st->origin);
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		key_of(sk, &key);
		struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&records, &key);
		if (!e)
			break;
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		wfpr_carry_later(&key, e);
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE) {
			key_of(sk, &key);
			struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&records, &key);
			if (e) {
				bpf_map_delete_elem(&tokens, e->token);
				bpf_map_delete_elem(&records, &key);
			}
		}
		break;
	}
	return 1;
}

/* ---- QUERY and SET ------------------------------------------------------ */

/* The entry a proxy's socket asks about: its TCP connection, or the flow of
 * the last datagram it received. */
static __always_inline struct wfpr_ebpf_entry *entry_of(struct bpf_sock *sk, int records_wanted, int *err)
{
	struct wfpr_ebpf_key key = {};
	if (sk->protocol == IPPROTO_TCP) {
		if (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_CLOSE || sk->state == BPF_TCP_SYN_SENT) {
			*err = ENOTCONN;
			return 0;
		}
		key_of(sk, &key);
		struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&records, &key);
		*err = e ? 0 : ENOENT;
		return e;
	}
	if (sk->protocol != IPPROTO_UDP) {
		*err = EPROTONOSUPPORT;
		return 0;
	}
	struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, sk, 0, 0);
	*err = ENOENT;
	if (!st || !st->from_port)
		return 0;
	__u8 peer[16];
	sock_ends(sk, key.proxy, peer);
	__builtin_memcpy(key.client, st->from, 16);
	key.client_port = st->from_port;
	key.proxy_port = sk->src_port;
	key.protocol = IPPROTO_UDP;
	struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&flows, &key);
	if (!e || (records_wanted && e->delivered))
		return 0;
	if (records_wanted)
		e->delivered = 1; /* the records come with a flow's first datagram only */
	*err = 0;
	return e;
}

#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 /* and IP6T_SO_ORIGINAL_DST */

/* getsockopt(SOL_IP, SO_ORIGINAL_DST) (or SOL_IPV6, IP6T_SO_ORIGINAL_DST)
 * on a connection with a record: the original destination, as netfilter's
 * REDIRECT would answer, for proxies written for it. Without a record the
 * kernel's own answer stands. */
static __always_inline int original_dst(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->protocol != IPPROTO_TCP || sk->state == BPF_TCP_LISTEN)
		return 1;
	struct wfpr_ebpf_key key = {};
	key_of(sk, &key);
	struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&records, &key);
	if (!e)
		return 1;
	int v4 = is_mapped(e->original);
	__u32 need = v4 ? 16 : 28;
	__u8 *dst = ctx->optval, *end = ctx->optval_end;
	if ((ctx->level == SOL_IP) != v4 || ctx->optlen < (__s32)need)
		return 1;
	if (v4) {
		if (dst + 16 > end)
			return 1;
		__builtin_memset(dst, 0, 16);
		put_sockaddr(dst, 1, e->original, e->original_port);
	} else {
		if (dst + 28 > end)
			return 1;
		__builtin_memset(dst, 0, 28);
		put_sockaddr(dst, 0, e->original, e->original_port);
	}
	count(WFPR_EBPF_ORIGINAL_DST);
	ctx->optlen = need;
	ctx->retval = 0;
	return 1;
}

SEC("cgroup/getsockopt")
int wfpr_getsockopt(struct bpf_sockopt *ctx)
{
	if ((ctx->level == SOL_IP || ctx->level == SOL_IPV6) && ctx->optname == SO_ORIGINAL_DST)
		return original_dst(ctx);
	if (ctx->level != WFPR_EBPF_SOL)
		return 1;
	int err = ENOPROTOOPT;
	__s32 optlen = ctx->optlen, out_len = optlen;
	__u8 *dst = ctx->optval, *end = ctx->optval_end;
	int records_wanted = ctx->optname == WFPR_EBPF_OPT_RECORDS;
	if (records_wanted || ctx->optname == WFPR_EBPF_OPT_CONTEXT) {
		struct wfpr_ebpf_entry *e = entry_of(ctx->sk, records_wanted, &err);
		if (e) {
			__u64 len = records_wanted ? e->len : WFPR_EBPF_CONTEXT_SIZE;
			const __u8 *src = records_wanted ? e->record : e->context;
			count(WFPR_EBPF_QUERIES);
			if (len > CAP) {
				err = EINVAL;
			} else if (optlen == 0) {
				out_len = len; /* the size probe */
			} else if ((__u64)optlen < len) {
				err = ENOSPC;
			} else if (dst + CAP <= end) {
				bpf_probe_read_kernel(dst, AT_MOST(len, CAP), src);
				out_len = len;
			} else {
				/* a buffer shorter than CAP: whole chunks, then the bytes
				 * (a byte loop over all of CAP is too long for the verifier) */
				__u32 i = 0;
				for (int c = 0; c < CAP / CHUNK; c++) {
					if (i + CHUNK > len || dst + (c + 1) * CHUNK > end)
						break;
					bpf_probe_read_kernel(dst + c * CHUNK, CHUNK, src + c * CHUNK);
					i += CHUNK;
				}
				for (__u32 k = 0; k < CHUNK; k++) {
					__u32 at = AT_MOST(i + k, CAP - 1);
					if (at >= len || dst + at + 1 > end)
						break;
					dst[at] = src[at];
				}
				out_len = len;
			}
		}
	}
	/* one store of each, at one exit: stores on several paths let clang
	 * merge them through a modified ctx pointer, which the verifier refuses */
	ctx->optlen = err ? optlen : out_len;
	ctx->retval = -err;
	return 1;
}

/* Is the blob in e->record (len bytes) byte for byte a live issued record?
 * Its entry, else NULL. */
static __always_inline struct wfpr_ebpf_entry *issued(struct wfpr_ebpf_entry *blob, __u32 len,
                                                      struct wfpr_ebpf_key *where)
{
	const __u8 *h = blob->record;
	if (h[0] != 'W' || h[1] != 'F' || h[2] != 'P' || h[3] != 'R' || h[4] != 1 || h[5] != 0)
		return 0;
	__u32 total = ((__u32)h[8] << 24) | ((__u32)h[9] << 16) | ((__u32)h[10] << 8) | h[11];
	if (total != len || len < HEADER + HOP4 || len > CAP)
		return 0;
	struct token t;
	__builtin_memcpy(t.b, blob->record + (len - WFPR_EBPF_TOKEN), WFPR_EBPF_TOKEN);
	struct wfpr_ebpf_key *key = bpf_map_lookup_elem(&tokens, &t);
	if (!key)
		return 0;
	struct wfpr_ebpf_entry *e = key->protocol == IPPROTO_UDP ? bpf_map_lookup_elem(&flows, key)
	                                                         : bpf_map_lookup_elem(&records, key);
	if (!e || e->len != len)
		return 0;
	*where = *key;
	for (__u32 i = 0; i < CAP / 8; i++) {
		__u32 at = i * 8;
		if (at >= len)
			break;
		__u64 a, b;
		__builtin_memcpy(&a, blob->record + at, 8);
		__builtin_memcpy(&b, e->record + at, 8);
		if (at + 8 > len) {
			__u32 shift = (at + 8 - len) * 8; /* compare only the bytes inside the blob */
			a <<= shift;
			b <<= shift;
		}
		if (a != b)
			return 0;
	}
	return e;
}

/* Did this UDP socket already send a datagram with the record SET on it
 * (its flow's hop made, annotations or not)? */
static __always_inline int sent_with(const struct wfpr_ebpf_sock *st)
{
	if (!st || !st->hops)
		return 0;
	struct wfpr_ebpf_entry *e = set_entry(st);
	return e && e->used_by == st->id;
}

SEC("cgroup/setsockopt")
int wfpr_setsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != WFPR_EBPF_SOL)
		return 1;
	int err = ENOPROTOOPT;
	__u32 zero = 0;
	__s32 optlen = ctx->optlen;
	if (ctx->optname == WFPR_EBPF_OPT_SET && ctx->sk->protocol != IPPROTO_TCP && ctx->sk->protocol != IPPROTO_UDP) {
		err = EPROTONOSUPPORT;
	} else if (ctx->optname == WFPR_EBPF_OPT_SET) {
		err = EINVAL; /* also for a connected socket: records go on before connect */
		struct bpf_sock *sk = ctx->sk;
		if ((sk->protocol == IPPROTO_TCP && sk->state != BPF_TCP_CLOSE) || (sk->protocol == IPPROTO_UDP && sk->dst_port))
			goto refuse;
		struct wfpr_ebpf_entry *blob = bpf_map_lookup_elem(&scratch, &zero);
		if (blob && optlen >= HEADER + HOP4 && optlen <= CAP &&
		    bpf_probe_read_kernel(blob->record, AT_MOST(optlen, CAP), ctx->optval) == 0) {
			struct wfpr_ebpf_key where = {};
			struct wfpr_ebpf_entry *e = issued(blob, (__u32)optlen, &where);
			struct wfpr_ebpf_sock *st = e ? bpf_sk_storage_get(&socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE) : 0;
			if (st && !st->id)
				st->id = ((__u64)bpf_get_prandom_u32() << 32 | bpf_get_prandom_u32()) | 1;
			/* single-use: once another socket connected with it, refused */
			if (st && e->used_by && e->used_by != st->id)
				st = 0;
			if (st) {
				st->chain_key = where;
				__builtin_memcpy(st->chain_token, e->token, WFPR_EBPF_TOKEN);
				st->chain_len = optlen;
				st->hops = e->hops;
				st->origin = e->origin;
				__builtin_memcpy(st->slots, e->slots, WFPR_EBPF_HOPS);
				err = 0;
			}
		}
	refuse:
		count(err ? WFPR_EBPF_BAD_SETS : WFPR_EBPF_SETS);
	} else if (ctx->optname == WFPR_EBPF_OPT_NOTES) {
		/* the annotations of a socket with records SET, before it connects
		 * or sends; the library checked their form, and a reader refuses
		 * a record with malformed ones, so a caller spoils only its own */
		struct bpf_sock *sk = ctx->sk;
		struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, ctx->sk, 0, 0);
		err = EINVAL;
		if ((sk->protocol == IPPROTO_TCP && sk->state != BPF_TCP_CLOSE) || (sk->protocol == IPPROTO_UDP && sk->dst_port) ||
		    (sk->protocol == IPPROTO_UDP && sent_with(st)))
			err = EISCONN;
		else if (st && st->hops && optlen > 0 && optlen <= WFPR__WIRE_NOTES_MAX &&
		         bpf_probe_read_kernel(st->notes, AT_MOST(optlen, WFPR__WIRE_NOTES_MAX), ctx->optval) == 0) {
			st->notes_len = optlen;
			err = 0;
		}
	}
	ctx->optlen = -1; /* the kernel does not know this level */
	if (err)
		bpf_set_retval(-err);
	return err ? 0 : 1;
}

/* ---- UDP ------------------------------------------------------------------ */

static __always_inline int on_sendmsg(struct bpf_sock_addr *ctx, int v4)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	struct dest d = {};
	dest_of(ctx, v4, &d);
	__u8 local[16], peer[16];
	sock_ends(sk, local, peer);
	__u16 local_port = sk->src_port;
	struct peer *last = bpf_sk_storage_get(&peers, sk, 0, 0);
	if (last && last->port == d.port && same_ip(last->ip, d.ip))
		return 1; /* a reply */
	struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!wfpr_claim(st)) {
		count(WFPR_EBPF_BAD_SETS);
		return 0; /* its record covers another socket's flow */
	}
	struct who w = {};
	who_init(&w, st);
	int slot = decide(st, &d, IPPROTO_UDP, local, local_port, &w, -1);
	if (slot == PERMIT)
		return 1;
	if (slot == HOP_LIMIT || slot == PROXY_GONE) {
		count(slot == HOP_LIMIT ? WFPR_EBPF_LOOP_BLOCKS : WFPR_EBPF_PROXY_GONE);
		return 0;
	}
	struct wfpr_ebpf_redirector *r = redirector((__u32)slot);
	if (!r || (!v4 && !r->port6)) {
		/* the kernel refuses an IPv6 datagram rewritten to an IPv4-mapped
		 * address (ENOTSUPP): without an IPv6 proxy address, UDP over IPv6
		 * goes direct (docs/ebpf.md) */
		count(WFPR_EBPF_PERMITS);
		return 1;
	}
	int six = !v4;
	const __u8 *to = target_ip(r, six);
	__u8 any[16] = {};
	__u8 any4[16];
	map4(any4, 0);
	int unbound = same_ip(local, any) || same_ip(local, any4);
	struct wfpr_ebpf_key key = {.client_port = local_port, .proxy_port = target_port(r, six), .protocol = IPPROTO_UDP};
	__builtin_memcpy(key.client, unbound ? to : local, 16);
	__builtin_memcpy(key.proxy, to, 16);
	/* a flow belongs to one socket, to one destination, and ends when idle:
	 * otherwise this datagram starts a new one, with a fresh record */
	struct wfpr_ebpf_flow_id *id = bpf_map_lookup_elem(&flow_ids, &key);
	__u64 now = bpf_ktime_get_ns(), sock = bpf_get_socket_cookie(ctx);
	__u32 zero = 0;
	struct wfpr_ebpf_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!id || id->original_port != d.port || !same_ip(id->original, d.ip) || id->sock != sock ||
	    (cfg && now - id->last_ns >= cfg->udp_idle_ns)) {
		struct wfpr_ebpf_process sender = {};
		current_process(&sender);
		who_caller(&w, &sender);
		if (issue(&flows, &key, st, chain_of(st), slot, r, v4, d.ip, d.port, &sender,
		          who_get(&w, WHO_ALL)) == 0) {
			struct wfpr_ebpf_flow_id fresh = {.sock = sock, .last_ns = now, .original_port = d.port};
			__builtin_memcpy(fresh.original, d.ip, 16);
			bpf_map_update_elem(&flow_ids, &key, &fresh, BPF_ANY);
		}
	} else {
		id->last_ns = now;
	}
	rewrite(ctx, v4, to, key.proxy_port);
	if (unbound) {
		/* pin the source, so the proxy sees the address the flow is keyed by */
		if (v4) {
			ctx->msg_src_ip4 = word(to, 3);
		} else {
			ctx->msg_src_ip6[0] = word(to, 0);
			ctx->msg_src_ip6[1] = word(to, 1);
			ctx->msg_src_ip6[2] = word(to, 2);
			ctx->msg_src_ip6[3] = word(to, 3);
		}
	}
	count(WFPR_EBPF_REDIRECTS);
	return 1;
}

BOTH_FAMILIES(sendmsg, on_sendmsg)

/* A datagram at a proxy from a connected UDP socket that on_connect sent
 * there: its flow's record is issued now, when the client's port is known
 * (it had none at connect). The client's socket is found by the 4-tuple. */
static __always_inline void connected_flow(struct bpf_sock_addr *ctx, int v4, const __u8 *local, __u16 local_port,
                                           const struct dest *from)
{
	struct wfpr_ebpf_key key = {.client_port = from->port, .proxy_port = local_port, .protocol = IPPROTO_UDP};
	__builtin_memcpy(key.client, from->ip, 16);
	__builtin_memcpy(key.proxy, local, 16);
	if (bpf_map_lookup_elem(&flows, &key))
		return;
	struct bpf_sock_tuple t = {};
	__u32 size;
	if (v4) {
		t.ipv4.saddr = word(local, 3);
		t.ipv4.daddr = word(from->ip, 3);
		t.ipv4.sport = bpf_htons(local_port);
		t.ipv4.dport = bpf_htons(from->port);
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, local, 16);
		__builtin_memcpy(t.ipv6.daddr, from->ip, 16);
		t.ipv6.sport = bpf_htons(local_port);
		t.ipv6.dport = bpf_htons(from->port);
		size = sizeof(t.ipv6);
	}
	struct bpf_sock *client = bpf_sk_lookup_udp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!client)
		return;
	struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, client, 0, 0);
	if (st && st->pending) {
		__u32 slot = st->slot;
		struct wfpr_ebpf_redirector *r = redirector(slot);
		if (r && target_port(r, st->target6) == local_port) {
			st->pending = 0;
			issue(&flows, &key, st, chain_of(st), slot, r, client->family == AF_INET, st->original, st->original_port,
			      &st->process, &st->origin);
		}
	}
	bpf_sk_release(client);
}

static __always_inline int on_recvmsg(struct bpf_sock_addr *ctx, int v4)
{
	struct bpf_sock *sk = ctx->sk;
	struct dest from = {};
	dest_of(ctx, v4, &from);
	__u8 local[16], peer[16];
	sock_ends(sk, local, peer);
	__u16 local_port = sk->src_port;

	if (is_proxy(local, local_port)) {
		/* a proxy's socket: QUERY asks about this datagram's flow */
		struct wfpr_ebpf_sock *st = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st) {
			__builtin_memcpy(st->from, from.ip, 16);
			st->from_port = from.port;
		}
		connected_flow(ctx, v4, local, local_port, &from);
		return 1;
	}
	if (!is_proxy(from.ip, from.port)) {
		struct peer *last = bpf_sk_storage_get(&peers, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (last) {
			__builtin_memcpy(last->ip, from.ip, 16);
			last->port = from.port;
		}
		return 1;
	}
	/* a reply from a proxy to a redirected client: from the original destination */
	__u8 any[16] = {};
	__u8 any4[16];
	map4(any4, 0);
	struct wfpr_ebpf_key key = {.client_port = local_port, .proxy_port = from.port, .protocol = IPPROTO_UDP};
	__builtin_memcpy(key.client, same_ip(local, any) || same_ip(local, any4) ? from.ip : local, 16);
	__builtin_memcpy(key.proxy, from.ip, 16);
	struct wfpr_ebpf_entry *e = bpf_map_lookup_elem(&flows, &key);
	if (e)
		rewrite(ctx, v4, e->original, e->original_port);
	return 1;
}

BOTH_FAMILIES(recvmsg, on_recvmsg)

