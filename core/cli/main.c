/* The wfpr command. For now: `wfpr rules check FILE...`, which loads each
 * rules file in the sandbox and reports syntax errors (with their line),
 * errors in its top level (forbidden globals included) and unknown hook
 * names. Exit status: 0 all good, 1 a problem found, 2 a usage error. */
#include <stdio.h>
#include <string.h>
#include "wfpr/rules.h"
#include "wfpr/wfpr.h"

static const char usage[] =
	"usage: wfpr rules check FILE...\n"
	"       wfpr --version\n"
	"\n"
	"  rules check   load each Lua rules file in the sandbox and report syntax errors,\n"
	"                failing top-level code (forbidden globals such as os or io) and\n"
	"                unknown hook names; exit 1 if any file has a problem\n";

static int rules_check(int argc, char **argv)
{
	if (argc < 1) {
		fprintf(stderr, "wfpr rules check: no rules file given\n\n%s", usage);
		return 2;
	}
	int status = 0;
	for (int i = 0; i < argc; i++) {
		wfpr_rules *rules = NULL;
		if (wfpr_rules_new(&rules, NULL) != 0) {
			fprintf(stderr, "wfpr: cannot start a Lua state\n");
			return 1;
		}
		if (wfpr_rules_load_file(rules, argv[i]) != 0) {
			fprintf(stderr, "%s\n", wfpr_rules_error(rules));
			status = 1;
		} else if (wfpr_rules_warnings(rules)[0]) {
			fputs(wfpr_rules_warnings(rules), stderr);
			status = 1;
		} else {
			static const char *const hooks[] = {"on_connect", "on_data", "on_datagram", "on_close", "classify"};
			printf("%s: ok; hooks:", argv[i]);
			int any = 0;
			for (size_t h = 0; h < sizeof(hooks) / sizeof(hooks[0]); h++)
				if (wfpr_rules_has_hook(rules, hooks[h]))
					any = printf(" %s", hooks[h]);
			printf("%s\n", any ? "" : " none");
		}
		wfpr_rules_free(rules);
	}
	return status;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		fputs(usage, stdout);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
		printf("wfpr %s\n", WFPR_VERSION);
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "rules") == 0 && strcmp(argv[2], "check") == 0) {
		if (argc >= 4 && strcmp(argv[3], "--help") == 0) {
			fputs(usage, stdout);
			return 0;
		}
		return rules_check(argc - 3, argv + 3);
	}
	fprintf(stderr, "wfpr: unknown command%s%s\n\n%s", argc >= 2 ? " " : "", argc >= 2 ? argv[1] : "", usage);
	return 2;
}
