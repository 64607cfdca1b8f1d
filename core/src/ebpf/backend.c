/* The eBPF backend, as a process in its cgroup sees it: the kernel routes
 * every connect and datagram itself and keeps the records; QUERY and SET
 * are getsockopt and setsockopt on the BPF programs' custom level
 * (core/ebpf/abi.h), their errno turned into the conformance table's codes. */
#include <errno.h>
#include <sys/socket.h>
#include <linux/types.h>
#include "../../ebpf/abi.h"
#include "../backend.h"
#include "wfpr/ebpf.h"
#include "wfpr/error.h"

#define KERNEL_BLOB_MAX 4096 /* one page: what getsockopt hands a BPF program */
_Static_assert(KERNEL_BLOB_MAX <= WFPR__BLOB_MAX, "a kernel blob fits a QUERY's buffer");

/* The programs' errno, or the kernel's own when no program answered. */
static int from_errno(int err)
{
	switch (err) {
	case ENOENT: return WFPR_FWP_E_NOT_FOUND;     /* never redirected, or already delivered */
	case ENOTCONN: return WFPR_WSAENOTCONN;
	case EISCONN: return WFPR_WSAEISCONN;
	case EPROTONOSUPPORT: return WFPR_WSAEOPNOTSUPP; /* neither TCP nor UDP */
	case ENOSPC: return WFPR_ERROR_INSUFFICIENT_BUFFER;
	case EINVAL: return WFPR_WSAEINVAL;           /* SET: not a live record the kernel issued */
	case EOPNOTSUPP: case ENOPROTOOPT: case EPERM:
		return WFPR_WSAENETDOWN;                  /* no program on this socket's cgroup */
	default: return wfpr_err_from_errno(err);
	}
}

/* The record (or context) of fd's connection, or of the flow of the
 * datagram fd received last (UDP; the records only the first time). */
static int kernel_query(int fd, bool context, uint8_t *out, size_t *len)
{
	socklen_t n = KERNEL_BLOB_MAX;
	if (getsockopt(fd, WFPR_EBPF_SOL, context ? WFPR_EBPF_OPT_CONTEXT : WFPR_EBPF_OPT_RECORDS, out, &n) != 0)
		return from_errno(errno);
	*len = n;
	return 0;
}

/* Issued when the client's connect was established, so never pending. */
static int ebpf_query(const wfpr__query *q, uint8_t *blob, size_t *len)
{
	return kernel_query(q->fd, q->context, blob, len);
}

/* The kernel takes only a record it issued to a live connection, and
 * refuses a connected socket itself. */
static int ebpf_check_set(int fd, uint64_t cookie, const uint8_t *blob, size_t len)
{
	(void)cookie;
	if (len > WFPR_EBPF_RECORD_CAP)
		return WFPR_WSAEINVAL; /* longer than any record the kernel issues */
	if (setsockopt(fd, WFPR_EBPF_SOL, WFPR_EBPF_OPT_SET, blob, (socklen_t)len) != 0)
		return from_errno(errno);
	return 0;
}

/* The kernel writes them into the hop this socket's connect makes. */
static int ebpf_annotate(int fd, const uint8_t *notes, size_t len)
{
	if (setsockopt(fd, WFPR_EBPF_SOL, WFPR_EBPF_OPT_NOTES, notes, (socklen_t)len) != 0)
		return from_errno(errno);
	return 0;
}

static void ebpf_first_datagram(int fd, const struct sockaddr_storage *from, bool want_context, uint8_t *records,
                                size_t *records_len, uint8_t *context, size_t *context_len)
{
	(void)from;
	if (kernel_query(fd, false, records, records_len) == 0 && want_context)
		kernel_query(fd, true, context, context_len);
}

const wfpr__backend wfpr__backend_ebpf = {
	.name = "ebpf",
	.checks_sockets = true,
	.kernel_routes = true,
	.route = wfpr__route_direct, /* the kernel decides at connect and sendmsg */
	.connect_done = wfpr__connect_done_nothing,
	.query = ebpf_query,
	.check_set = ebpf_check_set,
	.annotate = ebpf_annotate,
	.first_datagram = ebpf_first_datagram,
	.flush = wfpr__socket_nothing, /* nothing ever pends */
	.closed = wfpr__closed_nothing,
};

int wfpr_ebpf_attach(int on)
{
	if (!on) {
		wfpr__backend_detach(&wfpr__backend_ebpf);
		return 0;
	}
	return wfpr__backend_attach(&wfpr__backend_ebpf);
}

int wfpr_ebpf_available(wfpr_socket_t s)
{
	uint8_t probe;
	socklen_t n = 0;
	if (getsockopt(s, WFPR_EBPF_SOL, WFPR_EBPF_OPT_RECORDS, &probe, &n) == 0)
		return 1;
	int rc = from_errno(errno);
	return rc != WFPR_WSAENETDOWN && rc != WFPR_WSAENOTSOCK;
}
