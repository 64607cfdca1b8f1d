#ifndef WFPR_RECORD_H
#define WFPR_RECORD_H

/*
 * Redirect records: the opaque blob that travels with a redirected
 * connection. Proxies pass it on untouched; these functions decode it for
 * people (the format is in docs/record-format.md). Decoding checks the
 * structure only; whether a blob was really issued is checked by the layer
 * when it is SET.
 */

#include <sys/socket.h>
#include "common.h"

WFPR_BEGIN_DECL

#define WFPR_RECORD_MAX_HOPS 16
#define WFPR_RECORD_MAX_SIZE 8192
#define WFPR_REDIRECTOR_ID_SIZE 16
#define WFPR_TOKEN_SIZE 16

/* The process that made a redirected connection (the hop's PROCESS
 * attribute, docs/record-format.md). */
typedef struct wfpr_process {
	uint32_t pid;  /* 0: unknown (the hop does not say) */
	uint32_t uid;
	char name[17]; /* the command name (comm), NUL-terminated */
	char exe[256]; /* the executable's path; "" when the layer could not name it */
} wfpr_process;

/* Hop annotations: short key/value pairs a proxy attaches to the
 * connection it passes on (wfpr_annotate), carried in the next hop and
 * covered by its token (docs/record-format.md). A key is 1..32 of
 * [A-Za-z0-9_.-], a value 0..48 printable ASCII bytes; at most 8 pairs and
 * WFPR_ANNOTATIONS_SIZE_MAX encoded bytes per hop. */
#define WFPR_ANNOTATIONS_MAX 8
#define WFPR_ANNOTATION_KEY_MAX 32
#define WFPR_ANNOTATION_VALUE_MAX 48
#define WFPR_ANNOTATIONS_SIZE_MAX 64 /* each pair costs 2 + key + value bytes */

typedef struct wfpr_annotation {
	char key[WFPR_ANNOTATION_KEY_MAX + 1];
	char value[WFPR_ANNOTATION_VALUE_MAX + 1];
} wfpr_annotation;

typedef struct wfpr_hop {
	uint8_t redirector_id[WFPR_REDIRECTOR_ID_SIZE];
	uint64_t handle_id;
	uint32_t proxy_pid;
	int protocol;                            /* IPPROTO_TCP or IPPROTO_UDP */
	struct sockaddr_storage original_remote; /* where the connection was going */
	struct sockaddr_storage original_local;  /* where it came from */
	struct sockaddr_storage target;          /* the proxy it was sent to */
	uint64_t time_ns;                        /* CLOCK_REALTIME of the redirect */
	uint8_t token[WFPR_TOKEN_SIZE];          /* issuing token (keyed MAC) */
	wfpr_process process;                    /* who connected */
	/* what this hop's proxy said when it passed the connection on (empty
	 * for the newest hop: its proxy has not passed it on yet) */
	size_t annotation_count;
	wfpr_annotation annotations[WFPR_ANNOTATIONS_MAX];
} wfpr_hop;

typedef struct wfpr_records {
	unsigned int version;
	size_t hop_count;
	wfpr_hop hops[WFPR_RECORD_MAX_HOPS]; /* hops[0] is the oldest redirect */
} wfpr_records;

/* Decode a blob into hops. 0, or WFPR_WSAEINVAL for a malformed blob,
 * WFPR_WSAEFAULT for NULL pointers. Free with wfpr_records_free(). */
WFPR_EXTERN int wfpr_records_decode(wfpr_records **out, const void *blob, size_t len);
WFPR_EXTERN void wfpr_records_free(wfpr_records *records);

/* Fill p's empty name and exe for process p->pid from /proc (a hop from the
 * eBPF backend carries no path). 0, WFPR_WSAEINVAL for pid 0,
 * WFPR_FWP_E_NOT_FOUND when the process is gone, WFPR_WSAEFAULT for NULL. */
WFPR_EXTERN int wfpr_process_fill(wfpr_process *p);

/* "127.0.0.1:80" or "[::1]:80" into buf; returns buf. */
WFPR_EXTERN const char *wfpr_sockaddr_format(char *buf, size_t len, const struct sockaddr_storage *addr);

/* The redirector id as 32 hex digits plus NUL (33 bytes) into buf; returns buf. */
WFPR_EXTERN const char *wfpr_redirector_id_format(char *buf, size_t len, const uint8_t id[WFPR_REDIRECTOR_ID_SIZE]);

WFPR_END_DECL

#endif
