#include <errno.h>
#include <sys/socket.h>
#include <linux/types.h>
#include "../../ebpf/abi.h"
#include "kernel.h"
#include "wfpr/ebpf.h"
#include "wfpr/error.h"

static int enabled;

int wfpr_ebpf_attach(int on)
{
	__atomic_store_n(&enabled, on != 0, __ATOMIC_RELEASE);
	return 0;
}

bool kernel_enabled(void)
{
	return __atomic_load_n(&enabled, __ATOMIC_ACQUIRE);
}

/* The programs' errno, or the kernel's own when no program answered. */
static int from_errno(int err)
{
	switch (err) {
	case ENOENT: return WFPR_FWP_E_NOT_FOUND;     /* never redirected, or already delivered */
	case ENOTCONN: return WFPR_WSAENOTCONN;
	case EPROTONOSUPPORT: return WFPR_WSAEOPNOTSUPP; /* neither TCP nor UDP */
	case ENOSPC: return WFPR_ERROR_INSUFFICIENT_BUFFER;
	case EINVAL: return WFPR_WSAEINVAL;           /* SET: not a live record the kernel issued */
	case EOPNOTSUPP: case ENOPROTOOPT: case EPERM:
		return WFPR_WSAENETDOWN;                  /* no program on this socket's cgroup */
	default: return wfpr_err_from_errno(err);
	}
}

int kernel_query(int fd, bool context, uint8_t out[KERNEL_BLOB_MAX], size_t *len)
{
	socklen_t n = KERNEL_BLOB_MAX;
	if (getsockopt(fd, WFPR_EBPF_SOL, context ? WFPR_EBPF_OPT_CONTEXT : WFPR_EBPF_OPT_RECORDS, out, &n) != 0)
		return from_errno(errno);
	*len = n;
	return 0;
}

int kernel_set(int fd, const uint8_t *blob, size_t len)
{
	if (len > WFPR_EBPF_RECORD_CAP)
		return WFPR_WSAEINVAL; /* longer than any record the kernel issues */
	if (setsockopt(fd, WFPR_EBPF_SOL, WFPR_EBPF_OPT_SET, blob, (socklen_t)len) != 0)
		return from_errno(errno);
	return 0;
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
