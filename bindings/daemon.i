/* daemon.i: a program of any language registers a redirector with a
 * `wfpr daemon` (the host-wide eBPF layer): join its cgroup, then register
 * the address its proxy listens on, with a weight and a match. The link is
 * an opaque handle; the registration lasts until daemon_unregister or the
 * process's end. */

%ignore wfpr_daemon_join;
%ignore wfpr_daemon_register;
%ignore wfpr_daemon_redirector_name;
%ignore wfpr_daemon_link_id;
%ignore wfpr_daemon_add_redirector;
%ignore wfpr_daemon_remove_redirector;
%include "wfpr/daemon.h"

%rename(daemon_join) wfpr_binding_daemon_join;
%rename(daemon_register) wfpr_binding_daemon_register;
%rename(daemon_link_id) wfpr_binding_daemon_link_id;
%rename(daemon_add_redirector) wfpr_binding_daemon_add_redirector;
%rename(daemon_remove_redirector) wfpr_binding_daemon_remove_redirector;
%inline %{
/* Enter the daemon's cgroup (control: NULL or "" for the default path). */
void wfpr_binding_daemon_join(const char *control)
{
	char err[512] = "";
	int rc = wfpr_daemon_join(control, NULL, 0, err, sizeof(err));
	if (rc != 0)
		wfpr_binding_raise_detail(rc, err);
}

/* Register a proxy listening on host:port (and host6:port6 when port6 is
 * not 0) under name; its link (wfpr_daemon_link_id gives the id). */
wfpr_daemon_link *wfpr_binding_daemon_register(const char *control, const char *name, unsigned int weight,
                                               const char *match, const char *host, unsigned int port,
                                               const char *host6, unsigned int port6)
{
	struct sockaddr_storage a, a6;
	char err[512] = "";
	wfpr_daemon_link *link = NULL;
	if (!wfpr_binding_address(host, port, &a) || (port6 && !wfpr_binding_address(host6, port6, &a6)))
		return NULL;
	int rc = wfpr_daemon_register(&link, control, name, weight, match, &a, port6 ? &a6 : NULL, err, sizeof(err));
	if (rc != 0)
		wfpr_binding_raise_detail(rc, err);
	return link;
}

/* The 16-byte redirector id the daemon gave the link. */
void wfpr_binding_daemon_link_id(const wfpr_daemon_link *link, const uint8_t **DATA, size_t *LENGTH)
{
	if (!link) {
		wfpr_binding_raise(WFPR_WSAEFAULT, 0);
		return;
	}
	*DATA = wfpr_daemon_link_id(link);
	*LENGTH = WFPR_REDIRECTOR_ID_SIZE;
}

/* An unmodified transparent proxy (process pid, or the cgroup at cgroup
 * when pid is 0) listening on host:port, as the redirector name; its id. */
void wfpr_binding_daemon_add_redirector(const char *control, const char *name, unsigned int weight,
                                        const char *match, const char *host, unsigned int port, int pid,
                                        const char *cgroup, const uint8_t **DATA, size_t *LENGTH)
{
	static _Thread_local uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	struct sockaddr_storage a;
	char err[512] = "";
	if (!wfpr_binding_address(host, port, &a))
		return;
	int rc = wfpr_daemon_add_redirector(control, name, weight, match, &a, NULL, pid, cgroup, id, err, sizeof(err));
	if (rc != 0) {
		wfpr_binding_raise_detail(rc, err);
		return;
	}
	*DATA = id;
	*LENGTH = sizeof(id);
}

void wfpr_binding_daemon_remove_redirector(const char *control, const char *name)
{
	char err[512] = "";
	int rc = wfpr_daemon_remove_redirector(control, name, err, sizeof(err));
	if (rc != 0)
		wfpr_binding_raise_detail(rc, err);
}
%}
