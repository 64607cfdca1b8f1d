/* The daemon's control messages: text fields, one packet each. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "control.h"

#define REPLY_TIMEOUT_MS 5000

bool wfpr__control_is(const char *msg, const char *verb)
{
	size_t n = strlen(verb);
	return strncmp(msg, verb, n) == 0 && (msg[n] == '\n' || msg[n] == '\0');
}

bool wfpr__control_get(const char *msg, const char *key, char *out, size_t len)
{
	size_t n = strlen(key);
	for (const char *line = strchr(msg, '\n'); line; line = strchr(line, '\n')) {
		line++;
		if (strncmp(line, key, n) != 0 || line[n] != ':' || line[n + 1] != ' ')
			continue;
		const char *value = line + n + 2;
		size_t v = strcspn(value, "\n");
		if (v >= len)
			return false;
		memcpy(out, value, v);
		out[v] = '\0';
		return true;
	}
	return false;
}

int wfpr__control_connect(const char *path)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(a.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

int wfpr__control_call(int fd, const char *msg, char *reply, size_t len)
{
	if (send(fd, msg, strlen(msg), MSG_NOSIGNAL) < 0)
		return -1;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int ready;
	while ((ready = poll(&p, 1, REPLY_TIMEOUT_MS)) < 0 && errno == EINTR)
		;
	if (ready == 0)
		errno = ETIMEDOUT;
	ssize_t n = ready == 1 ? recv(fd, reply, len - 1, 0) : -1;
	if (n == 0)
		errno = ECONNRESET;
	if (n <= 0)
		return -1;
	reply[n] = '\0';
	return 0;
}

bool wfpr__control_name_valid(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n == 0 || n > WFPR__CONTROL_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
		      (name[i] >= '0' && name[i] <= '9') || strchr("-_.", name[i])))
			return false;
	return true;
}
