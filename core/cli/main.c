/* The wfpr command:
 *   wfpr rules check FILE...  load each rules file in the sandbox; report
 *                             syntax errors (with their line), failing top
 *                             levels (forbidden globals) and unknown hooks
 *   wfpr inspect BLOB|-       decode a redirect record for people
 * Exit status: 0 all good, 1 a problem found, 2 a usage error. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wfpr/rules.h"
#include "wfpr/wfpr.h"

static const char usage[] =
	"usage: wfpr rules check FILE...\n"
	"       wfpr inspect BLOB|-\n"
	"       wfpr --version\n"
	"\n"
	"  rules check   load each Lua rules file in the sandbox and report syntax errors,\n"
	"                failing top-level code (forbidden globals such as os or io) and\n"
	"                unknown hook names; exit 1 if any file has a problem\n"
	"  inspect       decode a redirect record: BLOB in hex, or - to read it from\n"
	"                standard input (raw bytes or hex); exit 1 if it is not a record\n";

#define MAX_INPUT (2 * WFPR_RECORD_MAX_SIZE + 1024)

/* Hex digits (whitespace ignored) into bytes; -1 if text is not hex. */
static long from_hex(const char *text, size_t len, uint8_t *out, size_t cap)
{
	size_t n = 0;
	int high = -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)text[i];
		if (isspace(ch))
			continue;
		if (!isxdigit(ch) || (high < 0 && n >= cap))
			return -1;
		int v = isdigit(ch) ? ch - '0' : tolower(ch) - 'a' + 10;
		if (high < 0) {
			high = v;
		} else {
			out[n++] = (uint8_t)(high << 4 | v);
			high = -1;
		}
	}
	return high < 0 ? (long)n : -1;
}

static int inspect(int argc, char **argv)
{
	if (argc != 1) {
		fprintf(stderr, "wfpr inspect: give one BLOB (hex) or -\n\n%s", usage);
		return 2;
	}
	static char input[MAX_INPUT];
	static uint8_t blob[MAX_INPUT];
	size_t len;
	if (strcmp(argv[0], "-") == 0) {
		len = fread(input, 1, sizeof(input), stdin);
	} else {
		len = strlen(argv[0]);
		if (len >= sizeof(input)) {
			fprintf(stderr, "wfpr inspect: BLOB is longer than a record can be\n");
			return 1;
		}
		memcpy(input, argv[0], len);
	}
	long n = from_hex(input, len, blob, sizeof(blob));
	if (n < 0) { /* not hex: the raw bytes */
		memcpy(blob, input, len);
		n = (long)len;
	}
	wfpr_records *r = NULL;
	int rc = wfpr_records_decode(&r, blob, (size_t)n);
	if (rc != 0) {
		fprintf(stderr, "wfpr inspect: not a redirect record (%s)\n", wfpr_err_name(rc));
		return 1;
	}
	printf("redirect record: %ld bytes, %zu hop(s), oldest first\n", n, r->hop_count);
	for (size_t i = 0; i < r->hop_count; i++) {
		const wfpr_hop *h = &r->hops[i];
		char id[33], from[64], to[64], via[64], when[32];
		time_t secs = (time_t)(h->time_ns / 1000000000u);
		struct tm tm;
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&secs, &tm));
		printf("hop %zu  redirector %s (handle %llu, proxy pid %u)\n", i + 1,
		       wfpr_redirector_id_format(id, sizeof(id), h->redirector_id), (unsigned long long)h->handle_id,
		       h->proxy_pid);
		printf("       %s %s -> %s, sent to %s, at %s\n", h->protocol == 17 ? "udp" : "tcp",
		       wfpr_sockaddr_format(from, sizeof(from), &h->original_local),
		       wfpr_sockaddr_format(to, sizeof(to), &h->original_remote),
		       wfpr_sockaddr_format(via, sizeof(via), &h->target), when);
	}
	wfpr_records_free(r);
	return 0;
}

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
	if (argc >= 2 && strcmp(argv[1], "inspect") == 0) {
		if (argc >= 3 && strcmp(argv[2], "--help") == 0) {
			fputs(usage, stdout);
			return 0;
		}
		return inspect(argc - 2, argv + 2);
	}
	fprintf(stderr, "wfpr: unknown command%s%s\n\n%s", argc >= 2 ? " " : "", argc >= 2 ? argv[1] : "", usage);
	return 2;
}
