#ifndef WFPR_SRC_RECORD_WIRE_H
#define WFPR_SRC_RECORD_WIRE_H

/*
 * The redirect record's wire constants, in one place: the user-space codec
 * (record.c) and the BPF programs' writer (core/ebpf/record_writer.h) both
 * include this file, so neither can drift from the other.
 * docs/record-format.md is its prose version. Plain macros and an enum
 * only: it compiles as BPF C too.
 *
 *   header: "WFPR", version (1 byte), flags (1 byte, 0), hop count (u16),
 *           total length (u32), all big-endian
 *   then one TLV (type u16, length u16) per hop, of type WFPR__WIRE_HOP,
 *   whose value is the hop's attribute TLVs, each exactly once, token last.
 */

#define WFPR__WIRE_MAGIC "WFPR"
#define WFPR__WIRE_MAGIC_SIZE 4
#define WFPR__WIRE_VERSION 1
#define WFPR__WIRE_HEADER_SIZE 12
#define WFPR__WIRE_TLV_HEADER_SIZE 4
#define WFPR__WIRE_NONCRITICAL 0x8000u /* an unknown type with this bit is skipped, else refused */

#define WFPR__WIRE_HOP 1 /* the one top-level type */

enum wfpr__wire_hop_attr {
	WFPR__WIRE_REDIRECTOR = 1,      /* 16 bytes: the redirector's id */
	WFPR__WIRE_HANDLE = 2,          /* u64: its redirect handle */
	WFPR__WIRE_PID = 3,             /* u32: the proxy's pid */
	WFPR__WIRE_PROTOCOL = 4,        /* u8: IPPROTO_TCP or IPPROTO_UDP */
	WFPR__WIRE_ORIGINAL_REMOTE = 5, /* address */
	WFPR__WIRE_ORIGINAL_LOCAL = 6,  /* address */
	WFPR__WIRE_TARGET = 7,          /* address: where the connection was sent */
	WFPR__WIRE_TIME = 8,            /* u64: nanoseconds since the epoch */
	WFPR__WIRE_TOKEN = 9,           /* 16 bytes, last: binds the hop to the chain */
	WFPR__WIRE_HOP_ATTR_MAX = WFPR__WIRE_TOKEN
};

/* Optional, before TOKEN (so the token covers it), non-critical so that a
 * reader that predates it skips it: the process that made the connection.
 * Value: version (u8, 1; another version is skipped), pid (u32), uid (u32),
 * the command name (16 bytes, NUL-padded), then the executable's path
 * (0..255 bytes, no NUL; empty when the layer cannot name it). */
#define WFPR__WIRE_PROCESS (WFPR__WIRE_NONCRITICAL | 10u)
#define WFPR__WIRE_PROCESS_VERSION 1
#define WFPR__WIRE_COMM_SIZE 16
#define WFPR__WIRE_EXE_MAX 255
#define WFPR__WIRE_PROCESS_SIZE(exe_len) (1 + 4 + 4 + WFPR__WIRE_COMM_SIZE + (exe_len))

/* Optional, after PROCESS and before TOKEN, non-critical, never in the
 * first hop: the annotations of the proxy the connection comes from (the
 * previous hop's), which it attached to the socket that made this hop.
 * Value: pairs of key length (u8, 1..32), key, value length (u8, 0..48),
 * value; 3..64 bytes in all. */
#define WFPR__WIRE_NOTES (WFPR__WIRE_NONCRITICAL | 11u)
#define WFPR__WIRE_NOTES_MAX 64

#define WFPR__WIRE_ID_SIZE 16
#define WFPR__WIRE_TOKEN_SIZE 16
/* An address: family (4 or 6), port (u16), then 4 or 16 address bytes. */
#define WFPR__WIRE_ADDR_SIZE(ip_len) (3 + (ip_len))
/* A whole HOP TLV whose three addresses have ip_len bytes each, with a
 * PROCESS attribute without a path (as the BPF programs write it). */
#define WFPR__WIRE_HOP_VALUE_SIZE(ip_len)                                                    \
	(10 * WFPR__WIRE_TLV_HEADER_SIZE + WFPR__WIRE_ID_SIZE + 8 + 4 + 1 + 8 + WFPR__WIRE_TOKEN_SIZE + \
	 3 * WFPR__WIRE_ADDR_SIZE(ip_len) + WFPR__WIRE_PROCESS_SIZE(0))
#define WFPR__WIRE_HOP_SIZE(ip_len) (WFPR__WIRE_TLV_HEADER_SIZE + WFPR__WIRE_HOP_VALUE_SIZE(ip_len))

#endif
