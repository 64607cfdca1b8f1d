#ifndef WFPR_SRC_EBPF_CONTROL_H
#define WFPR_SRC_EBPF_CONTROL_H

/*
 * The daemon's control protocol (docs/daemon.md), shared by its client
 * (daemon_client.c) and `wfpr daemon` (core/cli/daemon.c). One message per
 * SOCK_SEQPACKET packet, text: a verb on the first line ("cgroup",
 * "register", "names"; replies "ok" or "error"), then "key: value" lines.
 */

#include <stdbool.h>
#include <stddef.h>

#define WFPR__CONTROL_MAX 8192 /* the longest message */

/* The value of the first line "key: value" of msg into out (at most len-1
 * bytes; a longer value is refused). */
bool wfpr__control_get(const char *msg, const char *key, char *out, size_t len);
/* Is msg's first line verb? */
bool wfpr__control_is(const char *msg, const char *verb);
/* Send msg and read the reply into reply (NUL-terminated), within a few
 * seconds; 0 or -1 with errno set. */
int wfpr__control_call(int fd, const char *msg, char *reply, size_t len);
#define WFPR__CONTROL_NAME_MAX 63
/* A proxy's name: 1 to 63 letters, digits, '-', '_' or '.'. */
bool wfpr__control_name_valid(const char *name);
/* A new connection to the daemon's control socket at path; -1 with errno. */
int wfpr__control_connect(const char *path);

#endif
