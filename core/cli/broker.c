/* wfpr broker --socket PATH: hold the preload backend's layer until SIGTERM or SIGINT. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "cli.h"
#include "wfpr/wfpr.h"

static wfpr_broker *serving;

static void on_signal(int sig)
{
	(void)sig;
	wfpr_broker_stop(serving); /* one write to an eventfd: safe in a handler */
}

int broker_serve(const char *path, int ready_fd)
{
	wfpr_broker_options opts = WFPR_BROKER_OPTIONS_INIT;
	opts.path = path;
	cli_raise_fd_limit();
	int rc = wfpr_broker_new(&serving, &opts);
	if (rc != 0) {
		fprintf(stderr, "wfpr broker: cannot listen on %s: %s\n", path, wfpr_strerror(rc));
		return 1;
	}
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (ready_fd < 0)
		fprintf(stderr, "wfpr broker: listening on %s\n", path);
	if (ready_fd >= 0) {
		if (write(ready_fd, "b", 1) < 0) {
			/* the parent went away: serve anyway until told to stop */
		}
		close(ready_fd);
	}
	rc = wfpr_broker_run(serving);
	wfpr_broker_free(serving);
	serving = NULL;
	return rc == 0 ? 0 : 1;
}

int cmd_broker(int argc, char **argv)
{
	const char *path = NULL;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
			path = argv[++i];
		} else {
			fprintf(stderr, "wfpr broker: unknown or incomplete option '%s'\n\n%s", argv[i], cli_usage);
			return 2;
		}
	}
	if (!path) {
		fprintf(stderr, "wfpr broker: --socket PATH is required\n\n%s", cli_usage);
		return 2;
	}
	return broker_serve(path, -1);
}
