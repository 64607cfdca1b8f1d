#ifndef WFPR_DAEMON_H
#define WFPR_DAEMON_H

/*
 * The host-wide eBPF layer: `wfpr daemon` loads the BPF programs on a cgroup
 * (the whole host by default) and any proxy, started on its own at any
 * time, registers a redirector with it over the daemon's control socket
 * (docs/daemon.md). A registration lasts as long as its link: when the
 * proxy closes it, exits or is killed, the daemon switches the redirector
 * off, and new connections skip it. A proxy registering again under the
 * same name gets its redirector (and id) back.
 *
 * The order a proxy follows: wfpr_daemon_join() (its sockets must be in the
 * daemon's cgroup), wfpr_ebpf_attach(1), listen, wfpr_daemon_register().
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include "common.h"

WFPR_BEGIN_DECL

#define WFPR_DAEMON_CONTROL "/run/wfpr/control.sock"
#define WFPR_DAEMON_NAME_MAX 63

typedef struct wfpr_daemon_link wfpr_daemon_link;

/* Ask the daemon at control (NULL: WFPR_DAEMON_CONTROL) which cgroup it
 * serves, and move this process into it unless it is there already (that
 * needs write access to the cgroup, as root has). The cgroup's path goes to
 * cgroup when not NULL. 0; WFPR_WSAENETDOWN when no daemon answers;
 * WFPR_WSAEACCES when this process cannot enter; err says why. */
WFPR_EXTERN int wfpr_daemon_join(const char *control, char *cgroup, size_t cgroup_len, char *err, size_t err_len);

/* Register a redirector named name (1 to 63 characters: letters, digits,
 * '-', '_', '.') whose proxy listens on listen (an IPv4 loopback address)
 * and, when listen6 is not NULL, on listen6 ([::1], for IPv6 sockets).
 * Filters are asked highest weight first. match: the conditions of
 * wfpr/match.h in their text form (NULL or "": every connection). The new
 * link goes to out. 0; WFPR_WSAENETDOWN when no daemon answers;
 * WFPR_WSAEADDRINUSE when a live proxy has that name; WFPR_WSAEINVAL for a
 * bad argument or a refused match; err says why. */
WFPR_EXTERN int wfpr_daemon_register(wfpr_daemon_link **out, const char *control, const char *name, uint32_t weight,
                                     const char *match, const struct sockaddr_storage *listen,
                                     const struct sockaddr_storage *listen6, char *err, size_t err_len);

/* The redirector id the daemon gave (16 bytes; its records' hops carry it). */
WFPR_EXTERN const uint8_t *wfpr_daemon_link_id(const wfpr_daemon_link *link);
/* The link's descriptor: readable (end of file) once the daemon is gone. */
WFPR_EXTERN int wfpr_daemon_link_fd(const wfpr_daemon_link *link);
/* Unregister: new connections skip the redirector from now on. */
WFPR_EXTERN void wfpr_daemon_unregister(wfpr_daemon_link *link);

/* An unmodified transparent proxy (haproxy, mitmproxy, Envoy: written for
 * netfilter REDIRECT) as a redirector (docs/unmodified-proxies.md). It
 * listens on listen (and listen6) itself; it is the process pid, or any
 * process of the cgroup at cgroup (pid 0). Connections that match go to it
 * with a record; getsockopt(SO_ORIGINAL_DST) on them gives their original
 * destination; its connects to that destination carry their record. It
 * stays registered while its listener lives, or until
 * wfpr_daemon_remove_redirector. 0 or as wfpr_daemon_register; out_id
 * (may be NULL) gets its redirector id. */
WFPR_EXTERN int wfpr_daemon_add_redirector(const char *control, const char *name, uint32_t weight, const char *match,
                                           const struct sockaddr_storage *listen,
                                           const struct sockaddr_storage *listen6, pid_t pid, const char *cgroup,
                                           uint8_t out_id[16], char *err, size_t err_len);
/* Remove the unmodified proxy name: new connections skip it at once. */
WFPR_EXTERN int wfpr_daemon_remove_redirector(const char *control, const char *name, char *err, size_t err_len);

/* The name of the redirector with id, from the daemon. 0,
 * WFPR_FWP_E_NOT_FOUND, or WFPR_WSAENETDOWN. */
WFPR_EXTERN int wfpr_daemon_redirector_name(const char *control, const uint8_t id[16], char *name, size_t len);

WFPR_END_DECL

#endif
