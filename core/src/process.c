/* The process behind a connection, for its hop's PROCESS attribute: its
 * command name and executable path, read from /proc. */
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "wfpr/error.h"
#include "wfpr/record.h"

/* The last process described, for a second: a process connecting many times
 * (and the in-process backend, always the same one) reads /proc once. */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static wfpr_process cache;
static time_t cache_time;

static void read_name(pid_t pid, char *out, size_t len)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, out, len - 1) : -1;
	if (fd >= 0)
		close(fd);
	out[n > 0 ? n : 0] = '\0';
	out[strcspn(out, "\n")] = '\0';
}

static void read_exe(pid_t pid, char *out, size_t len)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
	ssize_t n = readlink(path, out, len - 1);
	out[n > 0 ? n : 0] = '\0';
}

int wfpr_process_fill(wfpr_process *p)
{
	if (!p)
		return WFPR_WSAEFAULT;
	if (p->pid == 0)
		return WFPR_WSAEINVAL;
	bool want_name = p->name[0] == '\0', want_exe = p->exe[0] == '\0';
	if (!want_name && !want_exe)
		return 0;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&cache_lock);
	/* the same pid and, where the hop names it, the same command */
	bool cached = cache.pid == p->pid && now.tv_sec - cache_time < 1 && (want_name || strcmp(cache.name, p->name) == 0);
	if (cached) {
		if (want_name)
			memcpy(p->name, cache.name, sizeof(p->name));
		if (want_exe)
			memcpy(p->exe, cache.exe, sizeof(p->exe));
	}
	pthread_mutex_unlock(&cache_lock);
	if (cached)
		return 0;
	if (want_name)
		read_name((pid_t)p->pid, p->name, sizeof(p->name));
	if (want_exe)
		read_exe((pid_t)p->pid, p->exe, sizeof(p->exe));
	if (want_exe) { /* a hop from the eBPF backend names its command, never its path */
		pthread_mutex_lock(&cache_lock);
		cache = *p;
		cache_time = now.tv_sec;
		pthread_mutex_unlock(&cache_lock);
	}
	return p->name[0] || p->exe[0] ? 0 : WFPR_FWP_E_NOT_FOUND; /* the process is gone */
}
