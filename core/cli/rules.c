/* wfpr rules check FILE...: load each rules file in the sandbox and report. */
#include <stdio.h>
#include "cli.h"
#include "wfpr/rules.h"

int cmd_rules_check(int argc, char **argv)
{
	if (argc < 1) {
		fprintf(stderr, "wfpr rules check: no rules file given\n\n%s", cli_usage);
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

