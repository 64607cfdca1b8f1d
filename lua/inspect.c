/* The protocol helpers of the wfpr module that rules require (docs/rules.md,
 * "Protocol helpers"): wfpr.tls.client_hello, wfpr.http.request and
 * .response, wfpr.dns.message. Each takes a string of bytes and returns a
 * table, or nil, "incomplete" or "invalid", and why. The parsing is C
 * (core/src/inspect/); this file only builds the tables. */
#include <ctype.h>
#include <string.h>
#include "../core/src/inspect/inspect.h"
#include "host.h"

static int fail(lua_State *L, int rc, const char *why)
{
	lua_pushnil(L);
	lua_pushstring(L, rc == WFPR__INCOMPLETE ? "incomplete" : "invalid");
	lua_pushstring(L, why ? why : "");
	return 3;
}

static void set_int(lua_State *L, const char *key, lua_Integer v)
{
	lua_pushinteger(L, v);
	lua_setfield(L, -2, key);
}

static void set_str(lua_State *L, const char *key, const char *p, size_t len)
{
	lua_pushlstring(L, p, len);
	lua_setfield(L, -2, key);
}

static void u16_list(lua_State *L, const char *key, const uint16_t *list, size_t n)
{
	lua_createtable(L, (int)n, 0);
	lua_Integer at = 1;
	for (size_t i = 0; i < n; i++) {
		if (wfpr__tls_grease(list[i]))
			continue;
		lua_pushinteger(L, list[i]);
		lua_rawseti(L, -2, at++);
	}
	lua_setfield(L, -2, key);
}

static int tls_client_hello(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	wfpr__tls_hello *h = lua_newuserdatauv(L, sizeof(*h), 0); /* big: not on the stack; the GC takes it */
	const char *why;
	int rc = wfpr__tls_client_hello(h, (const uint8_t *)s, len, &why);
	if (rc != WFPR__PARSED)
		return fail(L, rc, why);
	lua_createtable(L, 0, 8);
	set_str(L, "sni", h->sni, strlen(h->sni));
	lua_createtable(L, (int)h->n_alpn, 0);
	for (size_t i = 0; i < h->n_alpn; i++) {
		lua_pushstring(L, h->alpn[i]);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_setfield(L, -2, "alpn");
	u16_list(L, "versions", h->versions, h->n_versions);
	u16_list(L, "ciphers", h->ciphers, h->n_ciphers);
	u16_list(L, "extensions", h->extensions, h->n_extensions);
	u16_list(L, "signature_algorithms", h->sig_algs, h->n_sig_algs);
	set_int(L, "legacy_version", h->legacy_version);
	set_str(L, "ja4", h->ja4, strlen(h->ja4));
	return 1;
}

/* headers: a table keyed by lower-case name (repeated headers joined by
 * ", "), and header_list: {name, value} in order, as sent. */
static void http_headers(lua_State *L, const wfpr__http_head *h)
{
	lua_createtable(L, 0, (int)h->n_headers);
	lua_createtable(L, (int)h->n_headers, 0);
	for (size_t i = 0; i < h->n_headers; i++) {
		char name[256];
		size_t n = h->names[i].len < sizeof(name) ? h->names[i].len : sizeof(name) - 1;
		for (size_t k = 0; k < n; k++)
			name[k] = (char)tolower((unsigned char)h->names[i].p[k]);
		lua_createtable(L, 2, 0);
		lua_pushlstring(L, h->names[i].p, h->names[i].len);
		lua_rawseti(L, -2, 1);
		lua_pushlstring(L, h->values[i].p, h->values[i].len);
		lua_rawseti(L, -2, 2);
		lua_rawseti(L, -2, (lua_Integer)i + 1);
		lua_pushlstring(L, name, n);
		if (lua_rawget(L, -3) == LUA_TSTRING) { /* repeated: joined */
			lua_pushliteral(L, ", ");
			lua_pushlstring(L, h->values[i].p, h->values[i].len);
			lua_concat(L, 3);
		} else {
			lua_pop(L, 1);
			lua_pushlstring(L, h->values[i].p, h->values[i].len);
		}
		lua_pushlstring(L, name, n);
		lua_insert(L, -2);
		lua_rawset(L, -4);
	}
	lua_setfield(L, -3, "header_list");
	lua_setfield(L, -2, "headers");
}

static int http_parse(lua_State *L, bool response)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	wfpr__http_head *h = lua_newuserdatauv(L, sizeof(*h), 0);
	const char *why;
	int rc = wfpr__http_parse(h, (const uint8_t *)s, len, response, &why);
	if (rc == WFPR__NOT_THIS || (rc == WFPR__INCOMPLETE && !h->version))
		return fail(L, rc, why);
	lua_createtable(L, 0, 8);
	lua_pushboolean(L, rc == WFPR__PARSED);
	lua_setfield(L, -2, "complete");
	set_str(L, "version", h->version == 11 ? "1.1" : "1.0", 3);
	if (response) {
		set_int(L, "status", h->status);
		set_str(L, "reason", h->reason.p, h->reason.len);
	} else {
		set_str(L, "method", h->method.p, h->method.len);
		set_str(L, "target", h->target.p, h->target.len);
	}
	set_int(L, "head_length", (lua_Integer)h->head_len);
	set_int(L, "headers_cut", (lua_Integer)h->cut_headers);
	http_headers(L, h);
	return 1;
}

static int http_request(lua_State *L)
{
	return http_parse(L, false);
}

static int http_response(lua_State *L)
{
	return http_parse(L, true);
}

static void dns_records(lua_State *L, const char *key, const wfpr__dns_rr *rr, size_t n, bool answers)
{
	lua_createtable(L, (int)n, 0);
	for (size_t i = 0; i < n; i++) {
		lua_createtable(L, 0, 5);
		set_str(L, "name", rr[i].name, strlen(rr[i].name));
		set_int(L, "type", rr[i].type);
		set_int(L, "class", rr[i].klass);
		if (answers) {
			set_int(L, "ttl", rr[i].ttl);
			set_str(L, "data", rr[i].data, strlen(rr[i].data));
		}
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	lua_setfield(L, -2, key);
}

/* wfpr.dns.message(bytes [, tcp]): tcp: the 2-byte length comes first. */
static int dns_message(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	bool tcp = lua_toboolean(L, 2);
	wfpr__dns_msg *m = lua_newuserdatauv(L, sizeof(*m), 0);
	const char *why;
	int rc = wfpr__dns_parse(m, (const uint8_t *)s, len, tcp, &why);
	if (rc != WFPR__PARSED)
		return fail(L, rc, why);
	lua_createtable(L, 0, 8);
	set_int(L, "id", m->id);
	set_int(L, "flags", m->flags);
	lua_pushboolean(L, m->flags >> 15);
	lua_setfield(L, -2, "response");
	set_int(L, "opcode", m->flags >> 11 & 0xf);
	set_int(L, "rcode", m->flags & 0xf);
	dns_records(L, "questions", m->questions, m->n_questions, false);
	dns_records(L, "answers", m->answers, m->n_answers, true);
	return 1;
}

static void sub_table(lua_State *L, const char *name, const luaL_Reg *fns)
{
	lua_newtable(L);
	luaL_setfuncs(L, fns, 0);
	lua_setfield(L, -2, name);
}

void wfpr__inspect_add(lua_State *L)
{
	static const luaL_Reg tls[] = {{"client_hello", tls_client_hello}, {NULL, NULL}};
	static const luaL_Reg http[] = {{"request", http_request}, {"response", http_response}, {NULL, NULL}};
	static const luaL_Reg dns[] = {{"message", dns_message}, {NULL, NULL}};
	sub_table(L, "tls", tls);
	sub_table(L, "http", http);
	sub_table(L, "dns", dns);
}
