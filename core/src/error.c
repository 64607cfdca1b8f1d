#include <errno.h>
#include "wfpr/error.h"

static _Thread_local int last_error;

const char *wfpr_strerror(int err)
{
	switch (err) {
#define WFPR_ERR_TEXT_(name, value, text) case (int)(value): return text;
		WFPR_ERRNO_MAP(WFPR_ERR_TEXT_)
#undef WFPR_ERR_TEXT_
	}
	return "unknown error";
}

const char *wfpr_err_name(int err)
{
	switch (err) {
#define WFPR_ERR_NAME_(name, value, text) case (int)(value): return #name;
		WFPR_ERRNO_MAP(WFPR_ERR_NAME_)
#undef WFPR_ERR_NAME_
	}
	return NULL;
}

static const int all_codes[] = {
#define WFPR_ERR_CODE_(name, value, text) (int)(value),
	WFPR_ERRNO_MAP(WFPR_ERR_CODE_)
#undef WFPR_ERR_CODE_
};

size_t wfpr_err_count(void)
{
	return sizeof(all_codes) / sizeof(all_codes[0]);
}

int wfpr_err_code_at(size_t index)
{
	return index < wfpr_err_count() ? all_codes[index] : 0;
}

int wfpr_get_last_error(void)
{
	return last_error;
}

void wfpr_set_last_error(int err)
{
	last_error = err;
}

int wfpr_err_from_errno(int errnum)
{
	switch (errnum) {
	case 0: return WFPR_OK;
	case EINTR: return WFPR_WSAEINTR;
	case EACCES: case EPERM: return WFPR_WSAEACCES;
	case EFAULT: return WFPR_WSAEFAULT;
	case EINVAL: return WFPR_WSAEINVAL;
	case EMFILE: case ENFILE: return WFPR_WSAEMFILE;
	case EAGAIN: return WFPR_WSAEWOULDBLOCK;
	case EINPROGRESS: return WFPR_WSAEWOULDBLOCK; /* as Winsock reports a pending non-blocking connect */
	case EALREADY: return WFPR_WSAEALREADY;
	case ENOTSOCK: case EBADF: return WFPR_WSAENOTSOCK;
	case ENOPROTOOPT: return WFPR_WSAENOPROTOOPT;
	case EOPNOTSUPP: return WFPR_WSAEOPNOTSUPP;
	case EAFNOSUPPORT: return WFPR_WSAEAFNOSUPPORT;
	case EADDRINUSE: return WFPR_WSAEADDRINUSE;
	case EADDRNOTAVAIL: return WFPR_WSAEADDRNOTAVAIL;
	case ENOMEM: case ENOBUFS: return WFPR_WSAENOBUFS;
	case EISCONN: return WFPR_WSAEISCONN;
	case ENOTCONN: return WFPR_WSAENOTCONN;
	case ETIMEDOUT: return WFPR_WSAETIMEDOUT;
	case ECONNREFUSED: return WFPR_WSAECONNREFUSED;
	case ELOOP: return WFPR_WSAELOOP;
	case EHOSTUNREACH: case ENETUNREACH: return WFPR_WSAEHOSTUNREACH;
	case ENETDOWN: return WFPR_WSAENETDOWN;
	default: return WFPR_WSAEINVAL;
	}
}
