/* socket.i: sockets through the in-process backend, on plain descriptors. */

%ignore wfpr_socket;
%ignore wfpr_connect;
%ignore wfpr_accept;
%ignore wfpr_sendto;
%ignore wfpr_recvfrom;
%ignore wfpr_recvmsg;
%ignore wfpr_sendmsg;
%ignore wfpr_setsockopt;
%apply int WFPR_STATUS { int wfpr_inproc_attach };
%apply int WFPR_SOCKET_RESULT { int wfpr_socket_set_overlapped, int wfpr_closesocket, int wfpr_annotate };
%include "wfpr/socket.h"

%apply (const void *BUFFER, size_t LENGTH) { (const void *data, size_t len), (const void *records, size_t records_len) };

%rename(connect) wfpr_binding_connect;
%rename(sendto) wfpr_binding_sendto;
%rename(sendmsg) wfpr_binding_sendmsg;
%rename(set_want_context) wfpr_binding_set_want_context;
%inline %{
void wfpr_binding_connect(int s, const char *host, unsigned int port)
{
	struct sockaddr_storage addr;
	if (wfpr_binding_address(host, port, &addr) &&
	    wfpr_connect(s, (struct sockaddr *)&addr, wfpr_binding_addr_len(&addr)) != 0)
		wfpr_binding_raise_last();
}

long wfpr_binding_sendto(int s, const void *data, size_t len, const char *host, unsigned int port)
{
	struct sockaddr_storage addr;
	if (!wfpr_binding_address(host, port, &addr))
		return -1;
	ssize_t n = wfpr_sendto(s, data, len, 0, (struct sockaddr *)&addr, wfpr_binding_addr_len(&addr));
	if (n < 0)
		wfpr_binding_raise_last();
	return (long)n;
}

/* WSASendMsg with the records as an IP_WFP_REDIRECT_RECORDS control message. */
long wfpr_binding_sendmsg(int s, const void *data, size_t len, const char *host, unsigned int port,
                          const void *records, size_t records_len)
{
	struct sockaddr_storage addr;
	if (!wfpr_binding_address(host, port, &addr))
		return -1;
	if (records_len > WFPR_RECORD_MAX_SIZE) {
		wfpr_binding_raise(WFPR_WSAEINVAL, 0);
		return -1;
	}
	struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
	struct msghdr msg = {.msg_name = &addr, .msg_namelen = wfpr_binding_addr_len(&addr), .msg_iov = &iov, .msg_iovlen = 1};
	uint8_t *control = NULL;
	if (records) {
		control = calloc(1, CMSG_SPACE(records_len));
		if (!control) {
			wfpr_binding_raise(WFPR_WSAENOBUFS, 0);
			return -1;
		}
		msg.msg_control = control;
		msg.msg_controllen = CMSG_SPACE(records_len);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = IPPROTO_IP;
		c->cmsg_type = WFPR_IP_WFP_REDIRECT_RECORDS;
		c->cmsg_len = CMSG_LEN(records_len);
		memcpy(CMSG_DATA(c), records, records_len);
	}
	ssize_t n = wfpr_sendmsg(s, &msg, 0);
	if (n < 0)
		wfpr_binding_raise_last();
	free(control);
	return (long)n;
}

/* Ask for IP_WFP_REDIRECT_CONTEXT with the first datagram of each flow. */
void wfpr_binding_set_want_context(int s, bool on)
{
	int value = on;
	if (wfpr_setsockopt(s, IPPROTO_IP, WFPR_IP_WFP_REDIRECT_CONTEXT, &value, sizeof(value)) != 0)
		wfpr_binding_raise_last();
}
%}
