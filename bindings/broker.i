/* broker.i: the proxy side of the preload backend. A process that attaches
 * sends its QUERY, SET and connects through the broker; a proxy in it
 * registers as a redirector. (The broker itself runs as `wfpr broker`.) */

%ignore wfpr_broker;
%ignore wfpr_broker_options;
%ignore wfpr_broker_stats;
%ignore wfpr_broker_new;
%ignore wfpr_broker_run;
%ignore wfpr_broker_stop;
%ignore wfpr_broker_get_stats;
%ignore wfpr_broker_layer;
%ignore wfpr_broker_free;
%ignore wfpr_broker_key;
%ignore wfpr_preload_register;
%ignore wfpr_preload_register_dual;
%ignore wfpr_preload_redirector_name;
%apply int WFPR_STATUS { int wfpr_preload_attach };
%apply int WFPR_STATUS { int wfpr_preload_set_key };
%include "wfpr/broker.h"

%ignore wfpr_preload_register_filtered;
%rename(preload_register) wfpr_binding_preload_register;
%inline %{
/* Register host:port (a listening proxy of this process) as the redirector
 * `name`, taking the connections match says (wfpr/match.h text, "" for
 * all), asked by weight; returns its 16-byte redirector id. */
void wfpr_binding_preload_register(const char *name, const char *host, unsigned int port, unsigned int weight,
                                   const char *match, const uint8_t **DATA, size_t *LENGTH)
{
	static _Thread_local uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	struct sockaddr_storage addr;
	if (!wfpr_binding_address(host, port, &addr))
		return;
	char why[256] = "";
	wfpr_match m;
	if (match && wfpr_match_parse(&m, match, why, sizeof(why)) != 0) {
		wfpr_binding_raise_detail(WFPR_WSAEINVAL, why);
		return;
	}
	int rc = wfpr_preload_register_filtered(id, name, &addr, NULL, weight, match);
	if (rc == WFPR_WSAEACCES) {
		wfpr_binding_raise_detail(rc, "the broker refused the registration key: give broker_key= (the text of "
		                              "the key file `wfpr broker` wrote, by default the socket's path + .key)");
		return;
	}
	if (rc != 0) {
		wfpr_binding_raise(rc, 0);
		return;
	}
	*DATA = id;
	*LENGTH = sizeof(id);
}
%}
