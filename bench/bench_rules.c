/*
 * The Lua rule host's cost per call, medians of 9 runs. Reproduce with
 * `make bench`.
 *   on_connect, 10-line rule : a realistic allowlist-and-tag rule
 *   on_data, 64 KiB find     : string.find for a pattern absent from a 64 KiB chunk
 *   host overhead            : wfpr_rules_on_connect of a rule that only returns,
 *                              against lua_pcall of the same function in a bare state
 *   protocol helpers         : on_data calling wfpr.tls.client_hello, wfpr.http.request or
 *                              wfpr.dns.message on the fuzz corpus's seeds, and the C parse alone
 */
#include <arpa/inet.h>
#include <lauxlib.h>
#include <lualib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../core/src/inspect/inspect.h"
#include "bench_util.h"
#include "wfpr/rules.h"

/* A seed of tests/fuzz/corpus-inspect (its first byte chooses the parser there). */
static char *seed(const char *name, size_t *len)
{
	static char buf[4][4096];
	static int next;
	char path[512];
	snprintf(path, sizeof(path), "%s/tests/fuzz/corpus-inspect/%s", WFPR_SOURCE_DIR, name);
	FILE *f = fopen(path, "rb");
	if (!f)
		abort();
	char *b = buf[next++ & 3];
	size_t n = fread(b, 1, sizeof(buf[0]), f);
	fclose(f);
	*len = n - 1;
	return b + 1;
}

/* on_data calling helper(chunk), median ns per call. */
static double helper_call(wfpr_rules *r, wfpr_rule_conn *c, const char *chunk, size_t len)
{
	enum { CALLS = 20000 };
	double t[RUNS];
	for (int run = 0; run < RUNS; run++) {
		double t0 = now_ns();
		for (int i = 0; i < CALLS; i++) {
			const void *out;
			size_t out_len;
			if (wfpr_rules_on_data(r, c, 0, chunk, len, &out, &out_len) != WFPR_DATA_PASS)
				abort();
		}
		t[run] = (now_ns() - t0) / CALLS;
	}
	return median(t, RUNS);
}


static const char rule10[] =
	"local allowed = {[80] = true, [443] = true, [8080] = true}\n"
	"function on_connect(conn)\n"
	"  local dst = conn.original_dst\n"
	"  if not allowed[dst.port] then return block end\n"
	"  if conn.proto ~= 'tcp' then return pass end\n"
	"  conn.tag.seen = (conn.tag.seen or 0) + 1\n"
	"  if #conn.hops > 3 then return block end\n"
	"  if dst.ip:sub(1, 4) == '127.' then return inspect end\n"
	"  return pass\n"
	"end\n";

static const char find_rule[] =
	"function on_data(conn, dir, chunk)\n"
	"  if chunk:find('EICAR-STANDARD-ANTIVIRUS-TEST-FILE', 1, true) then return close end\n"
	"end\n";

static const char empty_rule[] = "function on_connect(conn) return 'pass' end\n";

static wfpr_rules *load(const char *src)
{
	wfpr_rules *r;
	if (wfpr_rules_new(&r, NULL) != 0 || wfpr_rules_load_string(r, "bench", src, strlen(src)) != 0)
		abort();
	return r;
}

int main(void)
{
	wfpr_rule_conn c;
	memset(&c, 0, sizeof(c));
	c.version = WFPR_RULE_CONN_VERSION;
	c.protocol = IPPROTO_TCP;
	struct sockaddr_in *dst = (struct sockaddr_in *)&c.original_dst, *cli = (struct sockaddr_in *)&c.client;
	dst->sin_family = cli->sin_family = AF_INET;
	dst->sin_addr.s_addr = cli->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	dst->sin_port = htons(80);
	cli->sin_port = htons(40000);

	enum { CALLS = 100000, DATA_CALLS = 5000 };
	double t[RUNS];
	wfpr_rules *r = load(rule10);
	for (int run = 0; run < RUNS; run++) {
		double t0 = now_ns();
		for (int i = 0; i < CALLS; i++) {
			c.id = (uint64_t)(i & 1023);
			if (wfpr_rules_on_connect(r, &c) != WFPR_VERDICT_INSPECT)
				abort();
		}
		t[run] = (now_ns() - t0) / CALLS;
	}
	double connect10 = median(t, RUNS);
	wfpr_rules_free(r);

	r = load(find_rule);
	static char chunk[65536];
	memset(chunk, 'a', sizeof(chunk));
	for (int run = 0; run < RUNS; run++) {
		double t0 = now_ns();
		for (int i = 0; i < DATA_CALLS; i++) {
			const void *out;
			size_t out_len;
			if (wfpr_rules_on_data(r, &c, 0, chunk, sizeof(chunk), &out, &out_len) != WFPR_DATA_PASS)
				abort();
		}
		t[run] = (now_ns() - t0) / DATA_CALLS;
	}
	double data64k = median(t, RUNS);
	wfpr_rules_free(r);

	/* host overhead: the same trivial hook through the host, and bare */
	r = load(empty_rule);
	lua_State *L = luaL_newstate();
	luaL_openlibs(L);
	luaL_dostring(L, empty_rule);
	double host[RUNS], bare[RUNS];
	for (int run = 0; run < RUNS; run++) {
		double t0 = now_ns();
		for (int i = 0; i < CALLS; i++)
			wfpr_rules_on_connect(r, &c);
		double t1 = now_ns();
		for (int i = 0; i < CALLS; i++) {
			lua_getglobal(L, "on_connect");
			lua_pushnil(L);
			lua_pcall(L, 1, 1, 0);
			lua_pop(L, 1);
		}
		host[run] = (t1 - t0) / CALLS;
		bare[run] = (now_ns() - t1) / CALLS;
	}
	double h = median(host, RUNS), b = median(bare, RUNS);
	lua_close(L);
	wfpr_rules_free(r);

	/* the protocol helpers, through a rule and in C alone */
	size_t tls_len, http_len, dns_len;
	const char *tls = seed("tls-client-hello-curl", &tls_len), *http = seed("http-request", &http_len),
	           *dns = seed("dns-response", &dns_len);
	const char *helpers[3] = {
		"local wfpr = require 'wfpr'\nfunction on_data(c, d, s) if not wfpr.tls.client_hello(s).ja4 then return close end end\n",
		"local wfpr = require 'wfpr'\nfunction on_data(c, d, s) if not wfpr.http.request(s).headers.host then return close end end\n",
		"local wfpr = require 'wfpr'\nfunction on_data(c, d, s) if not wfpr.dns.message(s).answers[1] then return close end end\n"};
	const char *inputs[3] = {tls, http, dns};
	size_t lens[3] = {tls_len, http_len, dns_len};
	double in_rule[3], in_c[3];
	for (int k = 0; k < 3; k++) {
		r = load(helpers[k]);
		in_rule[k] = helper_call(r, &c, inputs[k], lens[k]);
		wfpr_rules_free(r);
		static wfpr__tls_hello th;
		static wfpr__http_head hh;
		static wfpr__dns_msg dm;
		for (int run = 0; run < RUNS; run++) {
			double t0 = now_ns();
			for (int i = 0; i < 20000; i++) {
				int rc = k == 0 ? wfpr__tls_client_hello(&th, (const uint8_t *)tls, tls_len, NULL)
				       : k == 1 ? wfpr__http_parse(&hh, (const uint8_t *)http, http_len, false, NULL)
				                : wfpr__dns_parse(&dm, (const uint8_t *)dns, dns_len, false, NULL);
				if (rc != WFPR__PARSED)
					abort();
			}
			t[run] = (now_ns() - t0) / 20000;
		}
		in_c[k] = median(t, RUNS);
	}

	printf("| measure | median per call | target |\n|---|---|---|\n");
	printf("| on_connect, 10-line rule | %.2f us | <= 5 us |\n", connect10 / 1e3);
	printf("| on_data, string.find over a 64 KiB chunk | %.2f us | <= 30 us |\n", data64k / 1e3);
	printf("| trivial on_connect through the host | %.2f us | |\n", h / 1e3);
	printf("| the same function, bare lua_pcall | %.2f us | |\n", b / 1e3);
	printf("| host overhead per call | %.2f us | <= 1 us |\n", (h - b) / 1e3);
	static const char *const names[3] = {"wfpr.tls.client_hello (a %zu-byte ClientHello, JA4 included)",
	                                      "wfpr.http.request (a %zu-byte request head)",
	                                      "wfpr.dns.message (a %zu-byte response)"};
	for (int k = 0; k < 3; k++) {
		char label[128];
		snprintf(label, sizeof(label), names[k], lens[k]);
		printf("| on_data calling %s | %.2f us | <= 10 us |\n", label, in_rule[k] / 1e3);
		printf("| the same parse in C alone | %.2f us | |\n", in_c[k] / 1e3);
	}
	return 0;
}
