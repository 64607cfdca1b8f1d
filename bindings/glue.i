/*
 * glue.i: language-neutral C for the bindings. Glue never touches the
 * target language (it may run with Python's GIL released): a failure is
 * parked in a per-thread slot with wfpr_binding_raise, and the language's
 * %exception turns it into its own error once the call returns.
 */

%{
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

typedef struct wfpr_binding_error {
	bool pending;
	int code;
	uint32_t bytes; /* the required size, for ERROR_INSUFFICIENT_BUFFER */
	char detail[512]; /* why, in words, where the library said ("" otherwise) */
} wfpr_binding_error;

static _Thread_local wfpr_binding_error binding_error;

static void wfpr_binding_raise(int code, uint32_t bytes)
{
	binding_error.pending = true;
	binding_error.code = code;
	binding_error.bytes = bytes;
	binding_error.detail[0] = '\0';
}

static void wfpr_binding_raise_detail(int code, const char *detail)
{
	wfpr_binding_raise(code, 0);
	snprintf(binding_error.detail, sizeof(binding_error.detail), "%s", detail ? detail : "");
}

static void wfpr_binding_raise_last(void)
{
	wfpr_binding_raise(wfpr_get_last_error(), 0);
}

/* "127.0.0.1" or "::1" plus a port. */
static bool wfpr_binding_parse_ip(const char *host, unsigned int port, struct sockaddr_storage *out)
{
	memset(out, 0, sizeof(*out));
	if (!host || port > 65535)
		return false;
	struct sockaddr_in *sin = (struct sockaddr_in *)out;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
	if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		return true;
	}
	if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		return true;
	}
	return false;
}

static socklen_t wfpr_binding_addr_len(const struct sockaddr_storage *a)
{
	return a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* An address a binding was given, or WSAEINVAL parked. */
static bool wfpr_binding_address(const char *host, unsigned int port, struct sockaddr_storage *out)
{
	if (wfpr_binding_parse_ip(host, port, out))
		return true;
	wfpr_binding_raise(WFPR_WSAEINVAL, 0);
	return false;
}
%}
