/* A proxy's side of the daemon's control protocol (wfpr/daemon.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../cgroup.h"
#include "control.h"
#include "wfpr/daemon.h"
#include "wfpr/error.h"
#include "wfpr/match.h"
#include "wfpr/record.h"

_Static_assert(WFPR__CONTROL_NAME_MAX == WFPR_DAEMON_NAME_MAX, "one limit on names");

struct wfpr_daemon_link {
	int fd;
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
};

static void say(char *err, size_t err_len, const char *what)
{
	if (err && err_len)
		snprintf(err, err_len, "%s", what);
}

/* One request on a new connection (kept open in *keep when keep is not
 * NULL); the reply in reply. 0, or a wfpr_err with err filled. */
static int call(const char *control, const char *msg, char *reply, size_t len, int *keep, char *err, size_t err_len)
{
	const char *path = control && *control ? control : WFPR_DAEMON_CONTROL;
	int fd = wfpr__control_connect(path);
	if (fd < 0 || wfpr__control_call(fd, msg, reply, len) != 0) {
		if (err && err_len)
			snprintf(err, err_len, "no wfpr daemon answers on %s (%s): start one with `wfpr daemon`", path,
			         strerror(errno));
		if (fd >= 0)
			close(fd);
		return WFPR_WSAENETDOWN;
	}
	if (keep)
		*keep = fd;
	else
		close(fd);
	if (wfpr__control_is(reply, "ok"))
		return 0;
	char reason[512] = "the daemon refused without a reason", code[32] = "";
	wfpr__control_get(reply, "reason", reason, sizeof(reason));
	wfpr__control_get(reply, "code", code, sizeof(code));
	say(err, err_len, reason);
	if (keep) {
		close(*keep);
		*keep = -1;
	}
	return strcmp(code, "name-taken") == 0 ? WFPR_WSAEADDRINUSE : WFPR_WSAEINVAL;
}

int wfpr_daemon_join(const char *control, char *cgroup, size_t cgroup_len, char *err, size_t err_len)
{
	char reply[WFPR__CONTROL_MAX], dir[512], procs[600];
	int rc = call(control, "cgroup\n", reply, sizeof(reply), NULL, err, err_len);
	if (rc)
		return rc;
	if (!wfpr__control_get(reply, "cgroup", dir, sizeof(dir)) || dir[0] != '/') {
		say(err, err_len, "the daemon did not name its cgroup");
		return WFPR_WSAENETDOWN;
	}
	if (cgroup && cgroup_len)
		snprintf(cgroup, cgroup_len, "%s", dir);
	if (wfpr__cgroup_holds(0, dir))
		return 0; /* in it, or below it, already */
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", dir);
	FILE *p = fopen(procs, "we");
	bool entered = p && fprintf(p, "%d\n", (int)getpid()) > 0;
	if (p && fclose(p) != 0)
		entered = false;
	if (!entered) {
		if (err && err_len)
			snprintf(err, err_len,
			         "this process is outside the daemon's cgroup %s and cannot enter it (%s): start it inside "
			         "(as root, or in a systemd unit with the daemon's Slice=)",
			         dir, strerror(errno));
		return WFPR_WSAEACCES;
	}
	return 0;
}

static bool hex_id(const char *text, uint8_t id[WFPR_REDIRECTOR_ID_SIZE])
{
	if (strlen(text) != 2 * WFPR_REDIRECTOR_ID_SIZE)
		return false;
	for (size_t i = 0; i < WFPR_REDIRECTOR_ID_SIZE; i++) {
		unsigned int b;
		if (sscanf(text + 2 * i, "%2x", &b) != 1)
			return false;
		id[i] = (uint8_t)b;
	}
	return true;
}

/* The register or redirector-add message for these arguments into msg
 * (the caller's extra lines in tail). 0, or a wfpr_err with err filled. */
static int registration(char *msg, size_t len, const char *verb, const char *name, uint32_t weight, const char *match,
                        const struct sockaddr_storage *listen, const struct sockaddr_storage *listen6,
                        const char *tail, char *err, size_t err_len)
{
	if (!listen)
		return WFPR_WSAEFAULT;
	if (!wfpr__control_name_valid(name)) {
		say(err, err_len, "a name has 1 to 63 characters: letters, digits, '-', '_' and '.'");
		return WFPR_WSAEINVAL;
	}
	wfpr_match m;
	char check[256];
	if (wfpr_match_parse(&m, match ? match : "", check, sizeof(check)) != 0) {
		say(err, err_len, check);
		return WFPR_WSAEINVAL;
	}
	if (listen->ss_family != AF_INET || (listen6 && listen6->ss_family != AF_INET6)) {
		say(err, err_len, "a proxy listens on an IPv4 address, and on an IPv6 one for IPv6 sockets");
		return WFPR_WSAEINVAL;
	}
	char a[64], a6[64] = "";
	wfpr_sockaddr_format(a, sizeof(a), listen);
	if (listen6)
		wfpr_sockaddr_format(a6, sizeof(a6), listen6);
	int n = snprintf(msg, len, "%s\nname: %s\nweight: %u\nlisten: %s\n%s%s%smatch: %s\n%s", verb, name,
	                 (unsigned int)weight, a, listen6 ? "listen6: " : "", a6, listen6 ? "\n" : "", match ? match : "",
	                 tail);
	if (n < 0 || (size_t)n >= len || strchr(match ? match : "", '\n')) {
		say(err, err_len, "the match is too long or has a line break");
		return WFPR_WSAEINVAL;
	}
	return 0;
}

/* The redirector id in a reply into id. */
static int reply_id(const char *reply, uint8_t id[WFPR_REDIRECTOR_ID_SIZE], char *err, size_t err_len)
{
	char text[64];
	if (wfpr__control_get(reply, "id", text, sizeof(text)) && hex_id(text, id))
		return 0;
	say(err, err_len, "the daemon's reply has no redirector id");
	return WFPR_WSAENETDOWN;
}

int wfpr_daemon_register(wfpr_daemon_link **out, const char *control, const char *name, uint32_t weight,
                         const char *match, const struct sockaddr_storage *listen,
                         const struct sockaddr_storage *listen6, char *err, size_t err_len)
{
	if (!out)
		return WFPR_WSAEFAULT;
	*out = NULL;
	char msg[WFPR__CONTROL_MAX], reply[WFPR__CONTROL_MAX];
	int rc = registration(msg, sizeof(msg), "register", name, weight, match, listen, listen6, "", err, err_len);
	if (rc)
		return rc;
	wfpr_daemon_link *link = calloc(1, sizeof(*link));
	if (!link)
		return WFPR_WSAENOBUFS;
	link->fd = -1;
	rc = call(control, msg, reply, sizeof(reply), &link->fd, err, err_len);
	if (rc == 0)
		rc = reply_id(reply, link->id, err, err_len);
	if (rc) {
		wfpr_daemon_unregister(link);
		return rc;
	}
	*out = link;
	return 0;
}

int wfpr_daemon_add_redirector(const char *control, const char *name, uint32_t weight, const char *match,
                               const struct sockaddr_storage *listen, const struct sockaddr_storage *listen6, pid_t pid,
                               const char *cgroup, uint8_t out_id[16], char *err, size_t err_len)
{
	char msg[WFPR__CONTROL_MAX], reply[WFPR__CONTROL_MAX], tail[600];
	if ((pid > 0) == (cgroup && *cgroup) || pid < 0) {
		say(err, err_len, "name the proxy's process or its cgroup, one of them");
		return WFPR_WSAEINVAL;
	}
	if (cgroup && (strlen(cgroup) > 512 || strchr(cgroup, '\n'))) {
		say(err, err_len, "the cgroup path is too long or has a line break");
		return WFPR_WSAEINVAL;
	}
	if (pid > 0)
		snprintf(tail, sizeof(tail), "pid: %d\n", (int)pid);
	else
		snprintf(tail, sizeof(tail), "cgroup: %s\n", cgroup);
	int rc = registration(msg, sizeof(msg), "redirector-add", name, weight, match, listen, listen6, tail, err,
	                      err_len);
	uint8_t id[WFPR_REDIRECTOR_ID_SIZE];
	if (rc == 0)
		rc = call(control, msg, reply, sizeof(reply), NULL, err, err_len);
	if (rc == 0)
		rc = reply_id(reply, id, err, err_len);
	if (rc == 0 && out_id)
		memcpy(out_id, id, sizeof(id));
	return rc;
}

int wfpr_daemon_remove_redirector(const char *control, const char *name, char *err, size_t err_len)
{
	char msg[128], reply[WFPR__CONTROL_MAX];
	if (!wfpr__control_name_valid(name)) {
		say(err, err_len, "a name has 1 to 63 characters: letters, digits, '-', '_' and '.'");
		return WFPR_WSAEINVAL;
	}
	snprintf(msg, sizeof(msg), "redirector-remove\nname: %s\n", name);
	return call(control, msg, reply, sizeof(reply), NULL, err, err_len);
}

const uint8_t *wfpr_daemon_link_id(const wfpr_daemon_link *link)
{
	return link ? link->id : NULL;
}

int wfpr_daemon_link_fd(const wfpr_daemon_link *link)
{
	return link ? link->fd : -1;
}

void wfpr_daemon_unregister(wfpr_daemon_link *link)
{
	if (!link)
		return;
	if (link->fd >= 0)
		close(link->fd);
	free(link);
}

int wfpr_daemon_redirector_name(const char *control, const uint8_t id[16], char *name, size_t len)
{
	if (!id || !name || !len)
		return WFPR_WSAEFAULT;
	char msg[128], reply[WFPR__CONTROL_MAX], hex[2 * WFPR_REDIRECTOR_ID_SIZE + 1];
	snprintf(msg, sizeof(msg), "name\nid: %s\n", wfpr_redirector_id_format(hex, sizeof(hex), id));
	int rc = call(control, msg, reply, sizeof(reply), NULL, NULL, 0);
	if (rc)
		return rc == WFPR_WSAENETDOWN ? rc : WFPR_FWP_E_NOT_FOUND;
	return wfpr__control_get(reply, "name", name, len) ? 0 : WFPR_FWP_E_NOT_FOUND;
}
