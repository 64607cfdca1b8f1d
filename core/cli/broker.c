/* wfpr broker --socket PATH [--key-file FILE]: hold the preload backend's
 * layer until SIGTERM or SIGINT. The registration key goes to FILE (mode
 * 0600; default PATH.key), for the proxies the operator starts. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/wfpr.h"

static wfpr_broker *serving;

static void on_signal(int sig)
{
	(void)sig;
	wfpr_broker_stop(serving); /* one write to an eventfd: safe in a handler */
}

/* The key into path, mode 0600, replacing an old file whole (a proxy never
 * reads half a key). 0, or -1 with errno. */
static int write_key_file(const char *path, const char *key)
{
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -1;
	size_t len = strlen(key);
	bool ok = write(fd, key, len) == (ssize_t)len && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
	int saved = errno;
	close(fd);
	if (!ok || rename(tmp, path) < 0) {
		saved = ok ? errno : saved;
		unlink(tmp);
		errno = saved;
		return -1;
	}
	return 0;
}

int broker_serve(const char *path, const char *key, const char *key_file, int ready_fd)
{
	wfpr_broker_options opts = WFPR_BROKER_OPTIONS_INIT;
	opts.path = path;
	opts.key = key;
	cli_raise_fd_limit();
	/* no other process of this user may read the key out of its memory */
	prctl(PR_SET_DUMPABLE, 0);
	int rc = wfpr_broker_new(&serving, &opts);
	if (rc != 0) {
		fprintf(stderr, "wfpr broker: cannot listen on %s: %s\n", path, wfpr_strerror(rc));
		return 1;
	}
	if (key_file && write_key_file(key_file, wfpr_broker_key(serving)) < 0) {
		fprintf(stderr, "wfpr broker: cannot write the registration key to %s: %s\n", key_file, strerror(errno));
		wfpr_broker_free(serving);
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (ready_fd < 0)
		fprintf(stderr, "wfpr broker: listening on %s; proxies register with the key in %s (mode 0600)\n", path,
		        key_file);
	if (ready_fd >= 0) {
		const char *k = wfpr_broker_key(serving); /* wfpr run hands it to its proxies */
		if (write(ready_fd, k, strlen(k) + 1) < 0) {
			/* the parent went away: serve anyway until told to stop */
		}
		close(ready_fd);
	}
	rc = wfpr_broker_run(serving);
	wfpr_broker_free(serving);
	serving = NULL;
	if (key_file)
		unlink(key_file);
	return rc == 0 ? 0 : 1;
}

int cmd_broker(int argc, char **argv)
{
	const char *path = NULL, *key_file = NULL;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
			path = argv[++i];
		} else if (strcmp(argv[i], "--key-file") == 0 && i + 1 < argc) {
			key_file = argv[++i];
		} else {
			fprintf(stderr, "wfpr broker: unknown or incomplete option '%s'\n\n%s", argv[i], cli_usage);
			return 2;
		}
	}
	if (!path) {
		fprintf(stderr, "wfpr broker: --socket PATH is required\n\n%s", cli_usage);
		return 2;
	}
	char default_key[PATH_MAX];
	if (!key_file) {
		snprintf(default_key, sizeof(default_key), "%s.key", path);
		key_file = default_key;
	}
	return broker_serve(path, NULL, key_file, -1);
}
