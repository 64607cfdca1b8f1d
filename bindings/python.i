/*
 * python.i: Python typemaps and glue. Byte buffers go in as any buffer
 * object and come out as bytes; a parked error becomes the wfpr.WSAError
 * subclass for its code (wfpr.errors.from_code), raised with the GIL held.
 */

%{
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef void *WFPR_CALLOUT;
typedef int WFPR_STATUS_T;

static void wfpr_py_raise_detail(int code, uint32_t bytes, const char *detail)
{
	PyObject *errors = PyImport_ImportModule("wfpr.errors");
	if (!errors)
		return;
	PyObject *exc = PyObject_CallMethod(errors, "from_code", "iIs", code, (unsigned int)bytes, detail);
	Py_DECREF(errors);
	if (!exc)
		return;
	PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
	Py_DECREF(exc);
}

static void wfpr_py_raise(int code, uint32_t bytes)
{
	wfpr_py_raise_detail(code, bytes, "");
}

static PyObject *wfpr_py_addr(const struct sockaddr_storage *a)
{
	char host[INET6_ADDRSTRLEN];
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)a;
		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		return Py_BuildValue("(si)", host, ntohs(sin->sin_port));
	}
	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)a;
		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		return Py_BuildValue("(si)", host, ntohs(sin6->sin6_port));
	}
	Py_RETURN_NONE;
}

/* The context a Python callout returns must outlive its bytes object: the
 * layer copies it right after classify returns, on this thread. */
static _Thread_local uint8_t wfpr_py_context[WFPR_CONTEXT_MAX_SIZE];

/* A Python callout's answer: None/0 permit, 1 block, or
 * (2, host, port, target_pid, context bytes or None) to redirect. */
static wfpr_action wfpr_py_verdict(PyObject *r, wfpr_connect_request *req)
{
	if (r == Py_None)
		return WFPR_ACTION_PERMIT;
	if (PyLong_Check(r)) {
		long a = PyLong_AsLong(r);
		return a == WFPR_ACTION_BLOCK ? WFPR_ACTION_BLOCK : WFPR_ACTION_PERMIT;
	}
	int action = 0, target_pid = 0;
	unsigned int port = 0;
	const char *host = NULL;
	PyObject *context = Py_None;
	if (!PyArg_ParseTuple(r, "isIi|O", &action, &host, &port, &target_pid, &context))
		return WFPR_ACTION_PERMIT;
	if (action != WFPR_ACTION_REDIRECT || !wfpr_binding_parse_ip(host, port, &req->redirect_to))
		return WFPR_ACTION_PERMIT;
	req->target_pid = target_pid;
	if (context != Py_None) {
		Py_buffer view;
		if (PyObject_GetBuffer(context, &view, PyBUF_SIMPLE) < 0)
			return WFPR_ACTION_PERMIT;
		if ((size_t)view.len > sizeof(wfpr_py_context)) {
			PyBuffer_Release(&view);
			PyErr_SetString(PyExc_ValueError, "redirect context is larger than WFPR_CONTEXT_MAX_SIZE");
			return WFPR_ACTION_PERMIT;
		}
		memcpy(wfpr_py_context, view.buf, (size_t)view.len);
		req->context = wfpr_py_context;
		req->context_len = (size_t)view.len;
		PyBuffer_Release(&view);
	}
	return WFPR_ACTION_REDIRECT;
}

/* Every callout registered from Python classifies through here. */
static wfpr_action wfpr_binding_classify(void *user, wfpr_connect_request *req)
{
	PyGILState_STATE gil = PyGILState_Ensure();
	wfpr_action action = WFPR_ACTION_PERMIT;
	PyObject *info = Py_BuildValue("{s:i,s:N,s:N,s:i,s:i,s:n,s:i,s:K}",
	                               "protocol", req->protocol,
	                               "remote", wfpr_py_addr(&req->remote),
	                               "local", wfpr_py_addr(&req->local),
	                               "pid", (int)req->pid, "uid", (int)req->uid,
	                               "hop_count", (Py_ssize_t)req->hop_count,
	                               "state", (int)req->state,
	                               "handle", (unsigned long long)wfpr_redirect_handle_number(req->handle));
	PyObject *r = info ? PyObject_CallOneArg((PyObject *)user, info) : NULL;
	if (r)
		action = wfpr_py_verdict(r, req);
	if (PyErr_Occurred()) {
		/* The Python dispatcher handles the callout's own errors; this is
		 * the last guard: report it, and the connection is permitted. */
		PyErr_WriteUnraisable((PyObject *)user);
		action = WFPR_ACTION_PERMIT;
	}
	Py_XDECREF(r);
	Py_XDECREF(info);
	PyGILState_Release(gil);
	return action;
}
%}

%exception {
	binding_error.pending = false;
	$action
	if (binding_error.pending) {
		binding_error.pending = false;
		wfpr_py_raise_detail(binding_error.code, binding_error.bytes, binding_error.detail);
		SWIG_fail;
	}
}

/* An input buffer: any object with the buffer protocol, or None for NULL. */
%typemap(in) (const void *BUFFER, size_t LENGTH) (Py_buffer view) {
	view.obj = NULL;
	if ($input == Py_None) {
		$1 = NULL;
		$2 = 0;
	} else {
		if (PyObject_GetBuffer($input, &view, PyBUF_SIMPLE) < 0)
			SWIG_fail;
		$1 = view.buf;
		$2 = (size_t)view.len;
	}
}
%typemap(freearg) (const void *BUFFER, size_t LENGTH) {
	if (view$argnum.obj)
		PyBuffer_Release(&view$argnum);
}
%typemap(typecheck) (const void *BUFFER, size_t LENGTH) {
	$1 = $input == Py_None || PyObject_CheckBuffer($input);
}

/* An output buffer of the given size; the bytes used come back as bytes. */
%typemap(in) (void *OUT, uint32_t OUT_LEN, uint32_t *OUT_USED) (uint32_t used = 0) {
	unsigned long n = PyLong_AsUnsignedLong($input);
	if (PyErr_Occurred() || n > UINT32_MAX)
		SWIG_exception_fail(SWIG_ValueError, "out_len must be an int from 0 to 2**32-1");
	$2 = (uint32_t)n;
	$1 = malloc(n ? n : 1);
	if (!$1)
		SWIG_exception_fail(SWIG_MemoryError, "out of memory");
	$3 = &used;
}
%typemap(argout) (void *OUT, uint32_t OUT_LEN, uint32_t *OUT_USED) {
	Py_XDECREF($result);
	$result = PyBytes_FromStringAndSize((const char *)$1, (Py_ssize_t)(used$argnum <= $2 ? used$argnum : 0));
}
%typemap(freearg) (void *OUT, uint32_t OUT_LEN, uint32_t *OUT_USED) {
	free($1);
}

/* Bytes owned by the library, copied out. */
%typemap(in, numinputs=0) (const uint8_t **DATA, size_t *LENGTH) (const uint8_t *data = NULL, size_t length = 0) {
	$1 = ($1_ltype)&data;
	$2 = &length;
}
%typemap(argout) (const uint8_t **DATA, size_t *LENGTH) {
	Py_XDECREF($result);
	$result = PyBytes_FromStringAndSize((const char *)data$argnum, (Py_ssize_t)length$argnum);
}

/* A Python callable, kept alive for the layer's lifetime. */
%typemap(in) WFPR_CALLOUT {
	if (!PyCallable_Check($input))
		SWIG_exception_fail(SWIG_TypeError, "callout must be callable");
	Py_INCREF($input);
	$1 = $input;
}

/* An int status (0 or a wfpr_err code) and a Winsock-shaped result (-1 and
 * the last error): both become None or an exception. */
%typemap(out) int WFPR_STATUS {
	if ($1 != 0) {
		wfpr_py_raise($1, 0);
		SWIG_fail;
	}
	$result = Py_None;
	Py_INCREF(Py_None);
}
%typemap(out) int WFPR_SOCKET_RESULT {
	if ($1 != 0) {
		wfpr_py_raise(wfpr_get_last_error(), 0);
		SWIG_fail;
	}
	$result = Py_None;
	Py_INCREF(Py_None);
}

%nothread wfpr_binding_records_decode;
%nothread wfpr_binding_recvmsg;
%rename(records_decode) wfpr_binding_records_decode;
%rename(recvmsg) wfpr_binding_recvmsg;
%inline %{
/* A list of hop dicts, oldest first. */
PyObject *wfpr_binding_records_decode(PyObject *blob)
{
	Py_buffer view;
	wfpr_records *records = NULL;
	if (PyObject_GetBuffer(blob, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	int rc = wfpr_records_decode(&records, view.buf, (size_t)view.len);
	PyBuffer_Release(&view);
	if (rc != 0) {
		wfpr_py_raise(rc, 0);
		return NULL;
	}
	PyObject *hops = PyList_New(0);
	for (size_t i = 0; hops && i < records->hop_count; i++) {
		const wfpr_hop *h = &records->hops[i];
		const wfpr_process *p = &h->process;
		/* names and paths are bytes: undecodable ones as surrogates, as os.fsdecode does */
		PyObject *process = p->pid ? Py_BuildValue("{s:I,s:I,s:N,s:N}", "pid", p->pid, "uid", p->uid, "name",
		                                           PyUnicode_DecodeFSDefault(p->name), "exe",
		                                           PyUnicode_DecodeFSDefault(p->exe))
		                           : (Py_INCREF(Py_None), Py_None);
		PyObject *notes = process ? PyDict_New() : NULL;
		for (size_t k = 0; notes && k < h->annotation_count; k++) {
			PyObject *v = PyUnicode_FromString(h->annotations[k].value);
			if (!v || PyDict_SetItemString(notes, h->annotations[k].key, v) < 0)
				Py_CLEAR(notes);
			Py_XDECREF(v);
		}
		if (process && !notes)
			Py_CLEAR(process);
		PyObject *d = !process ? NULL : Py_BuildValue("{s:y#,s:K,s:I,s:i,s:N,s:N,s:N,s:K,s:y#,s:N,s:N}",
		                            "redirector_id", h->redirector_id, (Py_ssize_t)WFPR_REDIRECTOR_ID_SIZE,
		                            "handle", (unsigned long long)h->handle_id,
		                            "proxy_pid", (unsigned int)h->proxy_pid,
		                            "protocol", h->protocol,
		                            "original_remote", wfpr_py_addr(&h->original_remote),
		                            "original_local", wfpr_py_addr(&h->original_local),
		                            "target", wfpr_py_addr(&h->target),
		                            "time_ns", (unsigned long long)h->time_ns,
		                            "token", h->token, (Py_ssize_t)WFPR_TOKEN_SIZE, "process", process,
		                            "annotations", notes);
		if (!d || PyList_Append(hops, d) < 0)
			Py_CLEAR(hops);
		Py_XDECREF(d);
	}
	wfpr_records_free(records);
	return hops;
}

/* WSARecvMsg: (data, (host, port), records or None, context or None). */
PyObject *wfpr_binding_recvmsg(int s, unsigned int bufsize)
{
	enum { CONTROL = CMSG_SPACE(WFPR_RECORD_MAX_SIZE) + CMSG_SPACE(WFPR_CONTEXT_MAX_SIZE) };
	uint8_t *data = malloc(bufsize ? bufsize : 1), *control = malloc(CONTROL);
	struct sockaddr_storage from;
	memset(&from, 0, sizeof(from));
	struct iovec iov = {.iov_base = data, .iov_len = bufsize};
	struct msghdr msg = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1,
	                     .msg_control = control, .msg_controllen = CONTROL};
	ssize_t n = -1;
	if (data && control) {
		Py_BEGIN_ALLOW_THREADS
		n = wfpr_recvmsg(s, &msg, 0);
		Py_END_ALLOW_THREADS
	}
	PyObject *result = NULL;
	if (n < 0) {
		wfpr_py_raise(data && control ? wfpr_get_last_error() : WFPR_WSAENOBUFS, 0);
	} else {
		PyObject *records = Py_None, *context = Py_None;
		Py_INCREF(records);
		Py_INCREF(context);
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
			if (c->cmsg_level != IPPROTO_IP)
				continue;
			PyObject **slot = c->cmsg_type == WFPR_IP_WFP_REDIRECT_RECORDS ? &records
			                  : c->cmsg_type == WFPR_IP_WFP_REDIRECT_CONTEXT ? &context : NULL;
			if (slot) {
				Py_DECREF(*slot);
				*slot = PyBytes_FromStringAndSize((const char *)CMSG_DATA(c), (Py_ssize_t)(c->cmsg_len - CMSG_LEN(0)));
			}
		}
		result = Py_BuildValue("(y#NNN)", data, (Py_ssize_t)n, wfpr_py_addr(&from), records, context);
	}
	free(data);
	free(control);
	return result;
}
%}
