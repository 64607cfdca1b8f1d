/* layer.i: the redirect layer, redirect handles, filters and callouts. */

%apply (const void *BUFFER, size_t LENGTH) { (const void *blob, size_t len), (const void *id, size_t id_len) };

%ignore wfpr_connect_request;
%rename(local_address) wfpr_connect_request::local; /* "local" is a Lua keyword */
%ignore wfpr_callout_options;
%ignore wfpr_filter_options;
%ignore wfpr_layer_new;
%ignore wfpr_layer_free;
%ignore wfpr_redirect_handle_create;
%ignore wfpr_redirect_handle_id;
%ignore wfpr_redirect_handle_number;
%ignore wfpr_redirect_handle_name;
%ignore wfpr_query_redirect_state;
%ignore wfpr_redirect_state_for_id;
%ignore wfpr_callout_register;
%ignore wfpr_filter_add;
%ignore wfpr_filter_remove;
%ignore wfpr_layer_get_stats;
%ignore wfpr_classify_fn;
%include "wfpr/layer.h"

/* Opaque to C callers; SWIG needs a body to make a class of them. Handles
 * belong to their layer: Python neither makes nor frees them. */
%nodefaultctor wfpr_redirect_handle;
%nodefaultdtor wfpr_redirect_handle;
struct wfpr_layer {};
struct wfpr_redirect_handle {};

%newobject wfpr_layer::wfpr_layer;
%extend wfpr_layer {
	wfpr_layer() {
		wfpr_layer *layer = NULL;
		int rc = wfpr_layer_new(&layer);
		if (rc != 0)
			wfpr_binding_raise(rc, 0);
		return layer;
	}
	~wfpr_layer() {
		wfpr_inproc_detach($self);
		wfpr_layer_free($self);
	}
	wfpr_redirect_handle *handle_create(const void *id, size_t id_len, const char *name) {
		wfpr_redirect_handle *h = NULL;
		int rc = id && id_len != WFPR_REDIRECTOR_ID_SIZE ? WFPR_WSAEINVAL
		         : wfpr_redirect_handle_create(&h, $self, id, name);
		if (rc != 0)
			wfpr_binding_raise(rc, 0);
		return h;
	}
	uint32_t callout_register(const char *name, WFPR_CALLOUT callout, const wfpr_redirect_handle *handle) {
		wfpr_callout_options co = WFPR_CALLOUT_OPTIONS_INIT;
		uint32_t id = 0;
		co.name = name;
		co.classify = wfpr_binding_classify;
		co.user = callout;
		co.handle = handle;
		int rc = wfpr_callout_register(&id, $self, &co);
		if (rc != 0)
			wfpr_binding_raise(rc, 0);
		return id;
	}
	uint64_t filter_add(uint32_t callout_id, uint64_t weight, int protocol,
	                    const char *remote_prefix, unsigned int remote_prefix_len,
	                    unsigned int port_min, unsigned int port_max, unsigned int local_port,
	                    long long pid, long long uid, const char *name) {
		wfpr_filter_options fo = WFPR_FILTER_OPTIONS_INIT;
		uint64_t id = 0;
		int rc = 0;
		fo.name = name;
		fo.callout_id = callout_id;
		fo.weight = weight;
		fo.protocol = protocol;
		if (remote_prefix && remote_prefix[0] && !wfpr_binding_parse_ip(remote_prefix, 0, &fo.remote_prefix))
			rc = WFPR_WSAEINVAL;
		fo.remote_prefix_len = remote_prefix_len;
		if (port_min > 65535 || port_max > 65535 || local_port > 65535)
			rc = WFPR_WSAEINVAL;
		fo.remote_port_min = (uint16_t)port_min;
		fo.remote_port_max = (uint16_t)port_max;
		fo.local_port = (uint16_t)local_port;
		fo.pid = pid;
		fo.uid = uid;
		if (rc == 0)
			rc = wfpr_filter_add(&id, $self, &fo);
		if (rc != 0)
			wfpr_binding_raise(rc, 0);
		return id;
	}
	void filter_remove(uint64_t filter_id) {
		int rc = wfpr_filter_remove($self, filter_id);
		if (rc != 0)
			wfpr_binding_raise(rc, 0);
	}
	wfpr_layer_stats stats_snapshot() {
		wfpr_layer_stats s;
		wfpr_layer_get_stats(&s, $self);
		return s;
	}
}

%extend wfpr_redirect_handle {
	void redirector_id(const uint8_t **DATA, size_t *LENGTH) {
		*DATA = wfpr_redirect_handle_id($self);
		*LENGTH = WFPR_REDIRECTOR_ID_SIZE;
	}
	uint64_t handle_number() { return wfpr_redirect_handle_number($self); }
	const char *handle_name() { return wfpr_redirect_handle_name($self); }
}

%rename(query_redirect_state) wfpr_binding_query_redirect_state;
%inline %{
/* FwpsQueryConnectionRedirectState over a blob. */
int wfpr_binding_query_redirect_state(const void *blob, size_t len, const wfpr_redirect_handle *handle)
{
	wfpr_redirect_state state = WFPR_CONNECTION_NOT_REDIRECTED;
	int rc = handle ? wfpr_query_redirect_state(&state, blob, len, handle) : WFPR_WSAEFAULT;
	if (rc != 0)
		wfpr_binding_raise(rc, 0);
	return (int)state;
}
%}
