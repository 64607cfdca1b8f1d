/* The systemd readiness protocol (sd_notify(3)), without libsystemd: one
 * datagram to the AF_UNIX socket named by NOTIFY_SOCKET. A unit of
 * Type=notify, and a test, learn that the service is ready from it rather
 * than by polling for its side effects. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "cli.h"

static char notify_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

void cli_notify_take(void)
{
	const char *path = getenv("NOTIFY_SOCKET");
	if (path && (path[0] == '/' || path[0] == '@') && strlen(path) < sizeof(notify_path))
		snprintf(notify_path, sizeof(notify_path), "%s", path);
	/* the proxies and COMMAND are not the service systemd waits for */
	unsetenv("NOTIFY_SOCKET");
}

int cli_notify(const char *state)
{
	if (!notify_path[0])
		return 0;
	struct sockaddr_un to = {.sun_family = AF_UNIX};
	size_t len = strlen(notify_path);
	memcpy(to.sun_path, notify_path, len);
	if (to.sun_path[0] == '@')
		to.sun_path[0] = '\0'; /* an abstract socket */
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	char msg[256];
	int n = snprintf(msg, sizeof(msg), "%s\nMAINPID=%d", state, (int)getpid());
	ssize_t sent = sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&to,
	                      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len));
	int err = errno;
	close(fd);
	if (sent < 0)
		fprintf(stderr, "wfpr: cannot tell %s that we are ready: %s\n", notify_path, strerror(err));
	return sent < 0 ? -1 : 0;
}
