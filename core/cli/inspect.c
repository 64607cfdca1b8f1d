/* wfpr inspect BLOB|-: decode a redirect record for people. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cli.h"
#include "wfpr/wfpr.h"

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

int cmd_inspect(int argc, char **argv)
{
	if (argc != 1) {
		fprintf(stderr, "wfpr inspect: give one BLOB (hex) or -\n\n%s", cli_usage);
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
		if (h->process.pid)
			printf("       connected by %s (pid %u, uid %u)%s%s\n", h->process.name, h->process.pid, h->process.uid,
			       h->process.exe[0] ? " " : "", h->process.exe);
		for (size_t k = 0; k < h->annotation_count; k++)
			printf("       annotated %s=%s\n", h->annotations[k].key, h->annotations[k].value);
	}
	wfpr_records_free(r);
	return 0;
}

