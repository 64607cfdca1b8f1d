/* wfpr rules test RULES.lua TRANSCRIPT...: replay recorded connections
 * through a rule, offline, and print each verdict (docs/rules.md,
 * "Testing a rule offline"). A transcript is text, a line per event:
 *
 *   # a comment
 *   connect tcp 127.0.0.1:40000 -> 93.184.216.34:80   (or udp: a flow)
 *   up "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n" (C escapes: \r \n \t \\ \" \xHH)
 *   down hex 485454502f312e31                         (or the bytes in hex)
 *   expect close EICAR                                (the last event's verdict, and its reason)
 *   close
 *
 * Exit 0 when every expect held and no rule failed; 1 otherwise. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "wfpr/rules.h"
#include "wfpr/wfpr.h"

#define MAX_CHUNK (1u << 20)

typedef struct replay {
	const char *path;
	unsigned int line;
	wfpr_rules *rules;
	wfpr_rule_conn conn;
	bool open;
	uint64_t up, down;
	/* need_more, per direction, as the engine holds the bytes */
	char *held[2];
	size_t held_len[2], held_need[2];
	char last[16];      /* the last event's verdict */
	char reason[128];   /* and its reason */
	int failures;
} replay;

static void fail(replay *r, const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "%s:%u: ", r->path, r->line);
	fprintf(stderr, fmt, a, b);
	fputc('\n', stderr);
	r->failures++;
}

static int hex_digit(int c)
{
	return isdigit(c) ? c - '0' : isxdigit(c) ? (tolower(c) - 'a' + 10) : -1;
}

/* The chunk after "up " or "down ": a quoted string with C escapes, or
 * "hex HEXDIGITS". Its length, or -1. */
static long chunk_of(const char *text, char *out)
{
	size_t n = 0;
	if (strncmp(text, "hex ", 4) == 0) {
		for (const char *p = text + 4; *p && *p != '\n'; p += 2) {
			int hi = hex_digit((unsigned char)p[0]), lo = hi < 0 ? -1 : hex_digit((unsigned char)p[1]);
			if (hi < 0 || lo < 0 || n == MAX_CHUNK)
				return -1;
			out[n++] = (char)(hi << 4 | lo);
		}
		return (long)n;
	}
	if (*text != '"')
		return -1;
	for (const char *p = text + 1;; p++) {
		if (!*p || *p == '\n' || n == MAX_CHUNK)
			return -1;
		if (*p == '"')
			return (long)n;
		if (*p != '\\') {
			out[n++] = *p;
			continue;
		}
		switch (*++p) {
		case 'r': out[n++] = '\r'; break;
		case 'n': out[n++] = '\n'; break;
		case 't': out[n++] = '\t'; break;
		case '0': out[n++] = '\0'; break;
		case '\\': out[n++] = '\\'; break;
		case '"': out[n++] = '"'; break;
		case 'x': {
			int hi = hex_digit((unsigned char)p[1]), lo = hi < 0 ? -1 : hex_digit((unsigned char)p[2]);
			if (hi < 0 || lo < 0)
				return -1;
			out[n++] = (char)(hi << 4 | lo);
			p += 2;
			break;
		}
		default: return -1;
		}
	}
}

static void said(replay *r, const char *event, const char *verdict)
{
	snprintf(r->last, sizeof(r->last), "%s", verdict);
	snprintf(r->reason, sizeof(r->reason), "%s", wfpr_rules_reason(r->rules));
	printf("%s: %s%s%s%s\n", event, verdict, *r->reason ? " (" : "", r->reason, *r->reason ? ")" : "");
}

static void do_close(replay *r);

static void do_connect(replay *r, const char *args)
{
	if (r->open)
		do_close(r); /* a connection the transcript did not close ends here */
	char proto[8], client[80], dst[80];
	if (sscanf(args, "%7s %79s -> %79s", proto, client, dst) != 3 || (strcmp(proto, "tcp") && strcmp(proto, "udp")))
		return fail(r, "expected: connect tcp|udp CLIENT -> DESTINATION%s%s", "", "");
	static uint64_t next_id;
	memset(&r->conn, 0, sizeof(r->conn));
	r->conn.version = WFPR_RULE_CONN_VERSION;
	r->conn.id = ++next_id;
	r->conn.protocol = strcmp(proto, "tcp") == 0 ? IPPROTO_TCP : IPPROTO_UDP;
	r->conn.state = WFPR_CONNECTION_REDIRECTED_BY_SELF;
	if (cli_parse_address(client, &r->conn.client) != 0 || cli_parse_address(dst, &r->conn.original_dst) != 0)
		return fail(r, "not an address: %s or %s", client, dst);
	r->open = true;
	r->up = r->down = 0;
	static const char *const names[] = {"pass", "inspect", "block"};
	char event[200];
	snprintf(event, sizeof(event), "connect %s %s -> %s", proto, client, dst);
	said(r, event, names[wfpr_rules_on_connect(r->rules, &r->conn)]);
	wfpr_annotation notes[WFPR_ANNOTATIONS_MAX];
	size_t n = wfpr_rules_annotations(r->rules, notes, WFPR_ANNOTATIONS_MAX);
	for (size_t i = 0; i < n; i++)
		printf("  annotate %s=%s\n", notes[i].key, notes[i].value);
}

/* One on_data (or on_datagram) call, as the engine makes it, need_more and all. */
static void ask(replay *r, int direction, const char *chunk, size_t n, const char *what, bool at_end)
{
	const void *out;
	size_t out_len;
	wfpr_data_verdict v = r->conn.protocol == IPPROTO_UDP
	                          ? wfpr_rules_on_datagram(r->rules, &r->conn, direction, chunk, n, &out, &out_len)
	                          : wfpr_rules_on_data(r->rules, &r->conn, direction, chunk, n, &out, &out_len);
	static const char *const names[] = {"pass", "replace", "drop", "close", "need_more"};
	char event[96];
	snprintf(event, sizeof(event), "%s %zu bytes%s", direction ? "down" : "up", n, what);
	if (v == WFPR_DATA_NEED_MORE && !at_end && r->held_len[direction] + (chunk == r->held[direction] ? 0 : n) + out_len <=
	                                                  WFPR_RULES_HOLD_MAX) {
		if (chunk != r->held[direction]) {
			memcpy(r->held[direction] + r->held_len[direction], chunk, n);
			r->held_len[direction] += n;
		}
		r->held_need[direction] = r->held_len[direction] + out_len;
		char verdict[48];
		snprintf(verdict, sizeof(verdict), "need_more %zu (holds %zu)", out_len, r->held_len[direction]);
		said(r, event, verdict);
		snprintf(r->last, sizeof(r->last), "need_more");
		return;
	}
	if (v == WFPR_DATA_NEED_MORE) /* past the cap, or the end: the default verdict */
		v = wfpr_rules_default_data_verdict(r->rules);
	if (chunk == r->held[direction])
		r->held_len[direction] = r->held_need[direction] = 0;
	said(r, event, names[v]);
}

static void do_data(replay *r, int direction, const char *args, char *chunk)
{
	if (!r->open)
		return fail(r, "data before a connect%s%s", "", "");
	long n = chunk_of(args, chunk);
	if (n < 0)
		return fail(r, "expected a \"quoted\" chunk (escapes \\r \\n \\t \\0 \\\\ \\\" \\xHH) or hex DIGITS%s%s", "", "");
	*(direction ? &r->down : &r->up) += (uint64_t)n;
	if (!r->held[direction] && !(r->held[direction] = malloc(WFPR_RULES_HOLD_MAX)))
		return fail(r, "out of memory%s%s", "", "");
	if (!r->held_len[direction]) {
		ask(r, direction, chunk, (size_t)n, "", false);
		return;
	}
	if (r->held_len[direction] + (size_t)n > WFPR_RULES_HOLD_MAX) /* past the cap: the held bytes first */
		ask(r, direction, r->held[direction], r->held_len[direction], " (held, past the cap)", true);
	if (!r->held_len[direction]) {
		ask(r, direction, chunk, (size_t)n, "", false);
		return;
	}
	memcpy(r->held[direction] + r->held_len[direction], chunk, (size_t)n);
	r->held_len[direction] += (size_t)n;
	if (r->held_len[direction] < r->held_need[direction]) {
		char event[64];
		snprintf(event, sizeof(event), "%s %ld bytes", direction ? "down" : "up", n);
		printf("%s: held (%zu of the %zu asked for)\n", event, r->held_len[direction], r->held_need[direction]);
		return;
	}
	ask(r, direction, r->held[direction], r->held_len[direction], " (with the held bytes)", false);
}

static void do_close(replay *r)
{
	if (!r->open)
		return fail(r, "close before a connect%s%s", "", "");
	for (int d = 0; d < 2; d++) /* the end: the held bytes are asked about once more */
		if (r->held_len[d])
			ask(r, d, r->held[d], r->held_len[d], " (held, at the end)", true);
	wfpr_rule_close_stats st = {.bytes_up = r->up, .bytes_down = r->down};
	wfpr_rules_on_close(r->rules, &r->conn, &st);
	r->open = false;
	printf("close\n");
}

static void do_expect(replay *r, const char *args)
{
	char verdict[16] = "";
	int used = 0;
	if (sscanf(args, "%15s%n", verdict, &used) != 1)
		return fail(r, "expected: expect VERDICT [REASON]%s%s", "", "");
	const char *reason = args + used;
	while (*reason == ' ')
		reason++;
	char want[128];
	snprintf(want, sizeof(want), "%.*s", (int)strcspn(reason, "\n"), reason);
	if (strcmp(verdict, r->last) != 0)
		fail(r, "expected the verdict %s, the rule gave %s", verdict, r->last);
	else if (*want && strcmp(want, r->reason) != 0)
		fail(r, "expected the reason \"%s\", the rule gave \"%s\"", want, r->reason);
}

static int replay_file(wfpr_rules *rules, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "wfpr rules test: cannot read %s: %s\n", path, strerror(errno));
		return 1;
	}
	replay r = {.path = path, .rules = rules};
	char *line = NULL, *chunk = malloc(MAX_CHUNK);
	size_t cap = 0;
	printf("== %s\n", path);
	while (chunk && getline(&line, &cap, f) > 0) {
		r.line++;
		char *p = line;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '#' || *p == '\n' || !*p)
			continue;
		if (strncmp(p, "connect ", 8) == 0)
			do_connect(&r, p + 8);
		else if (strncmp(p, "up ", 3) == 0)
			do_data(&r, 0, p + 3, chunk);
		else if (strncmp(p, "down ", 5) == 0)
			do_data(&r, 1, p + 5, chunk);
		else if (strncmp(p, "close", 5) == 0)
			do_close(&r);
		else if (strncmp(p, "expect ", 7) == 0)
			do_expect(&r, p + 7);
		else
			fail(&r, "unknown line: %.40s%s", p, "");
	}
	if (r.open)
		do_close(&r);
	free(r.held[0]);
	free(r.held[1]);
	free(line);
	free(chunk);
	fclose(f);
	return r.failures ? 1 : 0;
}

int cmd_rules_test(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "wfpr rules test: give the rules file, then one or more transcripts\n\n%s", cli_usage);
		return 2;
	}
	wfpr_rules *rules = NULL;
	if (wfpr_rules_new(&rules, NULL) != 0) {
		fprintf(stderr, "wfpr: cannot start a Lua state\n");
		return 1;
	}
	if (wfpr_rules_load_file(rules, argv[0]) != 0) {
		fprintf(stderr, "%s\n", wfpr_rules_error(rules));
		wfpr_rules_free(rules);
		return 1;
	}
	int status = 0;
	for (int i = 1; i < argc; i++)
		status |= replay_file(rules, argv[i]);
	wfpr_rules_stats st;
	wfpr_rules_get_stats(&st, rules);
	if (st.errors || st.timeouts || st.nomem) {
		fprintf(stderr, "wfpr rules test: the rule failed %llu times (errors %llu, timeouts %llu, out of memory %llu)\n",
		        (unsigned long long)(st.errors + st.timeouts + st.nomem), (unsigned long long)st.errors,
		        (unsigned long long)st.timeouts, (unsigned long long)st.nomem);
		status = 1;
	}
	wfpr_rules_free(rules);
	return status;
}
