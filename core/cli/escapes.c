/* Traffic that wfpr run cannot redirect, said once, on stderr and in the
 * log: a statically linked COMMAND under the preload backend (the shim is
 * never loaded into it), and on the eBPF backend, connected IPv6 UDP
 * sockets whose proxy has no IPv6 address. */
#include <elf.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "cli.h"

/* Where execvp finds command: itself with a slash, else the first
 * executable one on PATH. */
static bool resolve(const char *command, char *out, size_t len)
{
	if (strchr(command, '/'))
		return snprintf(out, len, "%s", command) < (int)len && access(out, X_OK) == 0;
	const char *path = getenv("PATH");
	for (const char *p = path && *path ? path : "/usr/local/bin:/usr/bin:/bin"; *p;) {
		const char *end = strchr(p, ':');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if (snprintf(out, len, "%.*s/%s", (int)n, n ? p : ".", command) < (int)len && access(out, X_OK) == 0)
			return true;
		p += n + (end != NULL);
	}
	return false;
}

/* An ELF executable with no program interpreter: the dynamic loader, and so
 * LD_PRELOAD, never runs in it. */
static bool static_elf(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	Elf64_Ehdr h;
	bool is_static = false;
	if (pread(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h) && memcmp(h.e_ident, ELFMAG, SELFMAG) == 0 &&
	    h.e_ident[EI_CLASS] == ELFCLASS64 && h.e_phentsize == sizeof(Elf64_Phdr) && h.e_phnum < 256) {
		is_static = true;
		for (unsigned int i = 0; i < h.e_phnum && is_static; i++) {
			Elf64_Phdr ph;
			if (pread(fd, &ph, sizeof(ph), (off_t)(h.e_phoff + i * sizeof(ph))) != (ssize_t)sizeof(ph))
				is_static = false; /* unreadable: say nothing rather than something wrong */
			else if (ph.p_type == PT_INTERP)
				is_static = false;
		}
	}
	close(fd);
	return is_static;
}

void cli_say_escape(int log_fd, const char *what)
{
	fprintf(stderr, "wfpr run: %s\n", what);
	if (log_fd < 0)
		return;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	char line[1024];
	int n = snprintf(line, sizeof(line), "{\"time\":%.6f,\"proxy\":\"wfpr run\",\"event\":\"escape\",\"error\":\"",
	                 (double)now.tv_sec + (double)now.tv_nsec / 1e9);
	for (const char *p = what; *p && n < (int)sizeof(line) - 8; p++)
		if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20)
			line[n++] = *p;
	n += snprintf(line + n, sizeof(line) - (size_t)n, "\"}\n");
	if (write(log_fd, line, (size_t)n) < 0) {
		/* the log is best effort here; stderr said it */
	}
}

void cli_check_static_command(int log_fd, const char *command)
{
	char path[PATH_MAX], what[PATH_MAX + 256];
	if (!resolve(command, path, sizeof(path)) || !static_elf(path))
		return;
	snprintf(what, sizeof(what),
	         "%s is statically linked: the preload backend cannot see its connections, which go direct; "
	         "run it with --backend ebpf (as root) to inspect them", path);
	cli_say_escape(log_fd, what);
}
