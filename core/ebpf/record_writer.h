#ifndef WFPR_EBPF_RECORD_WRITER_H
#define WFPR_EBPF_RECORD_WRITER_H

/*
 * How the BPF programs write a record: a header and one HOP TLV at a time,
 * with the constants of core/src/record_wire.h, which record.c decodes.
 * BPF cannot call the user-space codec, so this is the one other writer;
 * it is plain C over __u8 arrays, so that tests/c/test_records.c compiles
 * this same code in user space and decodes what it writes (no root needed).
 * Include after vmlinux.h (BPF) or <linux/types.h> (user space).
 */

#include "../src/record_wire.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#if defined(__bpf__)
#define WFPR__UNROLL _Pragma("unroll") /* the verifier wants bounded, unrolled loops */
/* v, bounded for the verifier in the very register its users get (clang
 * may check a copy and use the original otherwise). v <= max already. */
#define WFPR__AT_MOST(v, max)                                                        \
	({                                                                           \
		__u64 _v = (v);                                                      \
		asm volatile("if %0 <= %1 goto +1; %0 = %1" : "+r"(_v) : "i"(max)); \
		_v;                                                                  \
	})
#else
#define WFPR__UNROLL
#define WFPR__AT_MOST(v, max) ((v) <= (max) ? (v) : (max))
#endif

static __always_inline void wfpr__be16(__u8 *p, __u16 v)
{
	p[0] = v >> 8;
	p[1] = v;
}

static __always_inline void wfpr__be32(__u8 *p, __u32 v)
{
	wfpr__be16(p, v >> 16);
	wfpr__be16(p + 2, v);
}

static __always_inline void wfpr__be64(__u8 *p, __u64 v)
{
	wfpr__be32(p, v >> 32);
	wfpr__be32(p + 4, v);
}

static __always_inline __u8 *wfpr__tlv(__u8 *p, __u16 type, __u16 len)
{
	wfpr__be16(p, type);
	wfpr__be16(p + 2, len);
	return p + WFPR__WIRE_TLV_HEADER_SIZE;
}

/* ip: 16 bytes, IPv4 as IPv4-mapped IPv6; ip_len (4 or 16) is a constant. */
static __always_inline __u8 *wfpr__put_addr(__u8 *p, const int ip_len, const __u8 *ip, __u16 port)
{
	p[0] = ip_len == 4 ? 4 : 6;
	wfpr__be16(p + 1, port);
	WFPR__UNROLL
	for (int i = 0; i < ip_len; i++)
		p[3 + i] = ip[16 - ip_len + i];
	return p + WFPR__WIRE_ADDR_SIZE(ip_len);
}

struct wfpr__hop_args {
	const __u8 *id; /* WFPR__WIRE_ID_SIZE bytes */
	__u64 handle;
	__u32 pid;
	__u32 protocol;
	const __u8 *target; /* addresses: 16 bytes each */
	__u16 target_port;
	const __u8 *original;
	__u16 original_port;
	const __u8 *local;
	__u16 local_port;
	__u64 time;
	__u32 process_pid, process_uid;
	const __u8 *process_comm; /* WFPR__WIRE_COMM_SIZE bytes */
	const __u8 *notes;        /* WFPR__WIRE_NOTES_MAX readable bytes, notes_len of them annotations */
	__u32 notes_len;          /* 0 (none) .. WFPR__WIRE_NOTES_MAX */
	const __u8 *token;        /* WFPR__WIRE_TOKEN_SIZE bytes */
};

/* The NOTES attribute of notes_len bytes (none when 0). */
#define WFPR__WIRE_NOTES_TLV_SIZE(notes_len) ((notes_len) ? WFPR__WIRE_TLV_HEADER_SIZE + (notes_len) : 0)

/* One HOP TLV at p, its attributes in the order record.c writes them;
 * returns its size, WFPR__WIRE_HOP_SIZE(ip_len) plus its annotations'. */
static __always_inline __u32 wfpr__write_hop(__u8 *p, const int ip_len, const struct wfpr__hop_args *a)
{
	__u32 notes_len = WFPR__AT_MOST(a->notes_len, WFPR__WIRE_NOTES_MAX);
	__u8 *q = wfpr__tlv(p, WFPR__WIRE_HOP, WFPR__WIRE_HOP_VALUE_SIZE(ip_len) + WFPR__WIRE_NOTES_TLV_SIZE(notes_len));
	q = wfpr__tlv(q, WFPR__WIRE_REDIRECTOR, WFPR__WIRE_ID_SIZE);
	WFPR__UNROLL
	for (int i = 0; i < WFPR__WIRE_ID_SIZE; i++)
		q[i] = a->id[i];
	q = wfpr__tlv(q + WFPR__WIRE_ID_SIZE, WFPR__WIRE_HANDLE, 8);
	wfpr__be64(q, a->handle);
	q = wfpr__tlv(q + 8, WFPR__WIRE_PID, 4);
	wfpr__be32(q, a->pid);
	q = wfpr__tlv(q + 4, WFPR__WIRE_PROTOCOL, 1);
	q[0] = a->protocol;
	q = wfpr__tlv(q + 1, WFPR__WIRE_ORIGINAL_REMOTE, WFPR__WIRE_ADDR_SIZE(ip_len));
	q = wfpr__put_addr(q, ip_len, a->original, a->original_port);
	q = wfpr__tlv(q, WFPR__WIRE_ORIGINAL_LOCAL, WFPR__WIRE_ADDR_SIZE(ip_len));
	q = wfpr__put_addr(q, ip_len, a->local, a->local_port);
	q = wfpr__tlv(q, WFPR__WIRE_TARGET, WFPR__WIRE_ADDR_SIZE(ip_len));
	q = wfpr__put_addr(q, ip_len, a->target, a->target_port);
	q = wfpr__tlv(q, WFPR__WIRE_TIME, 8);
	wfpr__be64(q, a->time);
	q = wfpr__tlv(q + 8, WFPR__WIRE_PROCESS, WFPR__WIRE_PROCESS_SIZE(0));
	q[0] = WFPR__WIRE_PROCESS_VERSION;
	wfpr__be32(q + 1, a->process_pid);
	wfpr__be32(q + 5, a->process_uid);
	WFPR__UNROLL
	for (int i = 0; i < WFPR__WIRE_COMM_SIZE; i++)
		q[9 + i] = a->process_comm[i];
	q += WFPR__WIRE_PROCESS_SIZE(0);
	if (notes_len) {
		q = wfpr__tlv(q, WFPR__WIRE_NOTES, notes_len);
		WFPR__UNROLL
		for (__u32 i = 0; i < WFPR__WIRE_NOTES_MAX; i++)
			if (i < notes_len)
				q[i] = a->notes[i];
		q += notes_len;
	}
	q = wfpr__tlv(q, WFPR__WIRE_TOKEN, WFPR__WIRE_TOKEN_SIZE);
	WFPR__UNROLL
	for (int i = 0; i < WFPR__WIRE_TOKEN_SIZE; i++)
		q[i] = a->token[i];
	return WFPR__WIRE_HOP_SIZE(ip_len) + WFPR__WIRE_NOTES_TLV_SIZE(notes_len);
}

/* The header of a record of `hops` hops and `len` bytes in all. */
static __always_inline void wfpr__write_header(__u8 *h, __u16 hops, __u32 len)
{
	h[0] = WFPR__WIRE_MAGIC[0];
	h[1] = WFPR__WIRE_MAGIC[1];
	h[2] = WFPR__WIRE_MAGIC[2];
	h[3] = WFPR__WIRE_MAGIC[3];
	h[4] = WFPR__WIRE_VERSION;
	h[5] = 0; /* flags */
	wfpr__be16(h + 6, hops);
	wfpr__be32(h + 8, len);
}

#endif
