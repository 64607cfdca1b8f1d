/*
 * engine.i (Python): the C relay engine (wfpr/engine.h) behind wfpr.Proxy.
 * The engine runs its epoll loop with the GIL released; its hooks take the
 * GIL only to call the Python callables they were given: on_connect once
 * per connection, inspect per chunk of an inspected connection, on_close
 * once per connection. A `pass` proxy never enters Python for its bytes.
 */

%{
#include "wfpr/engine.h"

typedef struct wfpr_py_engine {
	wfpr_engine *engine;
	wfpr_engine_hooks hooks;
	PyObject *on_connect;  /* (id, records, (host, port)) -> None */
	PyObject *inspect;     /* (chunk, "up" | "down") -> bytes or None; or None: pass */
	PyObject *on_close;    /* (id, bytes_up, bytes_down) -> None */
	PyObject *replacement; /* the last chunk inspect returned: valid until the next call */
	uint8_t redirector_id[WFPR_REDIRECTOR_ID_SIZE];
} wfpr_py_engine;

/* A hook's Python call failed: reported, and the connection goes on. */
static void wfpr_py_hook_failed(PyObject *where)
{
	if (PyErr_Occurred())
		PyErr_WriteUnraisable(where);
}

static wfpr_verdict wfpr_py_on_connect(void *user, const wfpr_rule_conn *conn)
{
	wfpr_py_engine *e = user;
	PyGILState_STATE gil = PyGILState_Ensure();
	PyObject *r = PyObject_CallFunction(e->on_connect, "Ky#N", (unsigned long long)conn->id,
	                                    (const char *)conn->records, (Py_ssize_t)conn->records_len,
	                                    wfpr_py_addr(&conn->original_dst));
	if (!r)
		wfpr_py_hook_failed(e->on_connect);
	Py_XDECREF(r);
	wfpr_verdict v = e->inspect ? WFPR_VERDICT_INSPECT : WFPR_VERDICT_PASS;
	PyGILState_Release(gil);
	return v;
}

static wfpr_data_verdict wfpr_py_on_data(void *user, const wfpr_rule_conn *conn, int direction, const void *data,
                                         size_t len, const void **out, size_t *out_len)
{
	wfpr_py_engine *e = user;
	(void)conn;
	PyGILState_STATE gil = PyGILState_Ensure();
	wfpr_data_verdict v = WFPR_DATA_PASS;
	Py_CLEAR(e->replacement);
	PyObject *r = PyObject_CallFunction(e->inspect, "y#s", (const char *)data, (Py_ssize_t)len,
	                                    direction == 0 ? "up" : "down");
	if (!r) {
		wfpr_py_hook_failed(e->inspect);
	} else if (r == Py_None) {
		v = WFPR_DATA_DROP;
		Py_DECREF(r);
	} else if (PyBytes_Check(r)) {
		e->replacement = r; /* the engine copies it before the next call */
		*out = PyBytes_AS_STRING(r);
		*out_len = (size_t)PyBytes_GET_SIZE(r);
		v = WFPR_DATA_REPLACE;
	} else {
		PyErr_Format(PyExc_TypeError, "inspect must return bytes or None, not %.100s", Py_TYPE(r)->tp_name);
		wfpr_py_hook_failed(e->inspect);
		Py_DECREF(r);
	}
	PyGILState_Release(gil);
	return v;
}

static void wfpr_py_on_close(void *user, const wfpr_rule_conn *conn, const wfpr_rule_close_stats *stats)
{
	wfpr_py_engine *e = user;
	PyGILState_STATE gil = PyGILState_Ensure();
	PyObject *r = PyObject_CallFunction(e->on_close, "KKK", (unsigned long long)conn->id,
	                                    (unsigned long long)stats->bytes_up, (unsigned long long)stats->bytes_down);
	if (!r)
		wfpr_py_hook_failed(e->on_close);
	Py_XDECREF(r);
	PyGILState_Release(gil);
}
%}

%nothread wfpr_binding_engine_new;
%nothread wfpr_binding_engine_stop;
%nothread wfpr_binding_engine_set_redirector_id;
%rename(engine_set_redirector_id) wfpr_binding_engine_set_redirector_id;
%nothread wfpr_binding_engine_run;
%nothread wfpr_binding_engine_free;
%nothread wfpr_binding_engine_address;
%nothread wfpr_binding_engine_stats;
%rename(engine_new) wfpr_binding_engine_new;
%rename(engine_run) wfpr_binding_engine_run;
%rename(engine_stop) wfpr_binding_engine_stop;
%rename(engine_free) wfpr_binding_engine_free;
%rename(engine_address) wfpr_binding_engine_address;
%rename(engine_stats) wfpr_binding_engine_stats;
%inline %{
/* A relay engine listening on (host, port): its redirector is handle
 * (inproc) or the 16-byte redirector_id (preload; engine_set_redirector_id
 * may change it before engine_run); NULL/None otherwise. */
PyObject *wfpr_binding_engine_new(const char *name, const char *host, unsigned int port,
                                  const wfpr_redirect_handle *handle, PyObject *redirector_id,
                                  unsigned long buffer_size, PyObject *on_connect, PyObject *inspect,
                                  PyObject *on_close)
{
	struct sockaddr_storage listen;
	if (!name || !wfpr_binding_parse_ip(host, port, &listen)) {
		PyErr_SetString(PyExc_ValueError, "give a name, and an IPv4 or IPv6 address to listen on");
		return NULL;
	}
	if (!PyCallable_Check(on_connect) || !PyCallable_Check(on_close) ||
	    (inspect != Py_None && !PyCallable_Check(inspect))) {
		PyErr_SetString(PyExc_TypeError, "on_connect, on_close (and inspect, unless None) must be callable");
		return NULL;
	}
	wfpr_py_engine *e = calloc(1, sizeof(*e));
	if (!e)
		return PyErr_NoMemory();
	wfpr_engine_options o = WFPR_ENGINE_OPTIONS_INIT;
	o.name = name;
	o.listen_address = &listen;
	o.handle = handle;
	o.buffer_size = buffer_size;
	if (redirector_id != Py_None) {
		if (!PyBytes_Check(redirector_id) || PyBytes_GET_SIZE(redirector_id) != WFPR_REDIRECTOR_ID_SIZE) {
			free(e);
			PyErr_SetString(PyExc_ValueError, "redirector_id must be 16 bytes");
			return NULL;
		}
		memcpy(e->redirector_id, PyBytes_AS_STRING(redirector_id), WFPR_REDIRECTOR_ID_SIZE);
		o.redirector_id = e->redirector_id;
	}
	e->on_connect = on_connect;
	e->on_close = on_close;
	e->inspect = inspect == Py_None ? NULL : inspect;
	Py_INCREF(on_connect);
	Py_INCREF(on_close);
	Py_XINCREF(e->inspect);
	e->hooks = (wfpr_engine_hooks){.on_connect = wfpr_py_on_connect, .on_data = e->inspect ? wfpr_py_on_data : NULL,
	                               .on_close = wfpr_py_on_close, .user = e};
	o.hooks = &e->hooks;
	int rc = wfpr_engine_new(&e->engine, &o);
	if (rc != 0) {
		Py_DECREF(on_connect);
		Py_DECREF(on_close);
		Py_XDECREF(e->inspect);
		free(e);
		wfpr_py_raise(rc, 0);
		return NULL;
	}
	return PyCapsule_New(e, "wfpr.engine", NULL);
}

static wfpr_py_engine *wfpr_py_engine_of(PyObject *capsule)
{
	return PyCapsule_GetPointer(capsule, "wfpr.engine");
}

/* The preload backend: the id the broker gave this engine's address, set
 * before engine_run. */
PyObject *wfpr_binding_engine_set_redirector_id(PyObject *capsule, PyObject *id)
{
	wfpr_py_engine *e = wfpr_py_engine_of(capsule);
	if (!e)
		return NULL;
	if (!PyBytes_Check(id) || PyBytes_GET_SIZE(id) != WFPR_REDIRECTOR_ID_SIZE) {
		PyErr_SetString(PyExc_ValueError, "redirector_id must be 16 bytes");
		return NULL;
	}
	memcpy(e->redirector_id, PyBytes_AS_STRING(id), WFPR_REDIRECTOR_ID_SIZE);
	Py_RETURN_NONE;
}

/* Serve until engine_stop, the GIL released; raises on failure. */
PyObject *wfpr_binding_engine_run(PyObject *capsule)
{
	wfpr_py_engine *e = wfpr_py_engine_of(capsule);
	if (!e)
		return NULL;
	int rc;
	Py_BEGIN_ALLOW_THREADS
	rc = wfpr_engine_run(e->engine);
	Py_END_ALLOW_THREADS
	if (rc != 0) {
		wfpr_py_raise(rc, 0);
		return NULL;
	}
	Py_RETURN_NONE;
}

/* From any thread: engine_run returns after closing its connections. */
PyObject *wfpr_binding_engine_stop(PyObject *capsule)
{
	wfpr_py_engine *e = wfpr_py_engine_of(capsule);
	if (!e)
		return NULL;
	wfpr_engine_stop(e->engine);
	Py_RETURN_NONE;
}

PyObject *wfpr_binding_engine_address(PyObject *capsule)
{
	wfpr_py_engine *e = wfpr_py_engine_of(capsule);
	struct sockaddr_storage a;
	if (!e)
		return NULL;
	wfpr_engine_address(&a, e->engine);
	return wfpr_py_addr(&a);
}

/* Once engine_run has returned. */
PyObject *wfpr_binding_engine_stats(PyObject *capsule)
{
	wfpr_py_engine *e = wfpr_py_engine_of(capsule);
	wfpr_engine_stats st;
	if (!e)
		return NULL;
	wfpr_engine_get_stats(&st, e->engine);
	return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "accepted", (unsigned long long)st.accepted,
	                     "passed", (unsigned long long)st.passed, "inspected", (unsigned long long)st.inspected,
	                     "blocked", (unsigned long long)st.blocked, "failed", (unsigned long long)st.failed,
	                     "timed_out", (unsigned long long)st.timed_out, "bytes_up", (unsigned long long)st.bytes_up,
	                     "bytes_down", (unsigned long long)st.bytes_down);
}

/* Once engine_run has returned (or never ran). */
PyObject *wfpr_binding_engine_free(PyObject *capsule)
{
	wfpr_py_engine *e = wfpr_py_engine_of(capsule);
	if (!e)
		return NULL;
	wfpr_engine_free(e->engine);
	Py_DECREF(e->on_connect);
	Py_DECREF(e->on_close);
	Py_XDECREF(e->inspect);
	Py_XDECREF(e->replacement);
	free(e);
	/* freed: a later call finds no engine and raises */
	PyCapsule_SetName(capsule, "wfpr.engine (freed)");
	Py_RETURN_NONE;
}
%}
