/* The sandbox: only base (without load, loadfile, dofile, collectgarbage,
 * rawset), string (without dump), table, math and utf8; `require` that
 * resolves only wfpr.*; strict, locked globals. (After Suricata's and
 * Redis's Lua sandboxes.) */
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "host.h"

static const char *const removed_base[] = {"load", "loadfile", "dofile", "collectgarbage", "rawset", NULL};

/* The wfpr module a rule may require: verdict names and small helpers. */
static const char wfpr_module[] =
	"local M = {pass = 'pass', inspect = 'inspect', block = 'block', permit = 'permit',\n"
	"           drop = drop, close = close}\n"
	"function M.redirect(proxy) return {redirect = proxy} end\n"
	"function M.addr(a) return a.ip .. ':' .. a.port end\n"
	"function M.hex(s) return (s:gsub('.', function(c) return string.format('%02x', c:byte()) end)) end\n"
	"return M\n";

static void push_readonly(lua_State *L, int t, const char *name);

static int sandbox_require(lua_State *L)
{
	const char *name = luaL_checkstring(L, 1);
	lua_getfield(L, LUA_REGISTRYINDEX, "wfpr.loaded");
	if (lua_getfield(L, -1, name) != LUA_TNIL)
		return 1;
	lua_pop(L, 1);
	if (strcmp(name, "wfpr") != 0)
		return luaL_error(L, "require: module '%s' is not allowed in rules (only wfpr)", name);
	if (luaL_loadbufferx(L, wfpr_module, sizeof(wfpr_module) - 1, "=wfpr", "t") != LUA_OK)
		return lua_error(L);
	lua_getfield(L, LUA_REGISTRYINDEX, SANDBOX_BASE);
	lua_setupvalue(L, -2, 1); /* its _ENV: the sandbox base */
	lua_call(L, 0, 1);
	/* the protocol helpers, and the module read-only: a rule cannot change
	 * them for every later connection */
	wfpr__inspect_add(L);
	wfpr__shared_add(L);
	static const char *const parts[] = {"tls", "http", "dns"};
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		lua_getfield(L, -1, parts[i]);
		push_readonly(L, -1, parts[i]);
		lua_setfield(L, -3, parts[i]);
		lua_pop(L, 1);
	}
	push_readonly(L, -1, "wfpr");
	lua_remove(L, -2);
	lua_pushvalue(L, -1);
	lua_setfield(L, -3, name);
	return 1;
}

/* log(...): the values, tostring'd and joined by spaces, to the host's log. */
static int sandbox_log(lua_State *L)
{
	luaL_Buffer b;
	int n = lua_gettop(L);
	luaL_buffinit(L, &b);
	for (int i = 1; i <= n; i++) {
		luaL_tolstring(L, i, NULL);
		luaL_addvalue(&b);
		if (i < n)
			luaL_addchar(&b, ' ');
	}
	luaL_pushresult(&b);
	void *ud = NULL;
	lua_getallocf(L, &ud);
	wfpr_rules *r = ud;
	if (r->opts.log)
		r->opts.log(r->opts.log_user, "log", WFPR_RULE_OK, lua_tostring(L, -1));
	else
		fprintf(stderr, "wfpr rule: %s\n", lua_tostring(L, -1));
	return 0;
}

/* now(): monotonic seconds, for rates and timeouts (there is no os.time). */
static int sandbox_now(lua_State *L)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
	return 1;
}

static size_t memory_limit(lua_State *L)
{
	void *ud = NULL;
	lua_getallocf(L, &ud);
	return ((wfpr_rules *)ud)->opts.memory_limit;
}

/* The library function a guard wraps (its upvalue), with all the
 * arguments: its one result. */
static int call_original(lua_State *L)
{
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

/* string.rep, bounded: its result must fit the rule's memory, and
 * rep("", huge) is "" at once (Lua's loops huge times making nothing). */
static int bounded_rep(lua_State *L)
{
	size_t len, sep_len = 0;
	luaL_checklstring(L, 1, &len);
	lua_Integer n = luaL_checkinteger(L, 2);
	luaL_optlstring(L, 3, "", &sep_len);
	if (n <= 0 || len + sep_len == 0) {
		lua_pushliteral(L, "");
		return 1;
	}
	if ((lua_Unsigned)n > memory_limit(L) / (len + sep_len))
		return luaL_error(L, "string.rep: the result would be larger than the rule's memory limit");
	return call_original(L);
}

/* table.move, bounded: at most as many elements as the memory could hold
 * (table.move({}, 1, 2^40, 2) otherwise loops 2^40 times). */
static int bounded_move(lua_State *L)
{
	lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
	if (e >= f && (lua_Unsigned)e - (lua_Unsigned)f >= memory_limit(L) / 16)
		return luaL_error(L, "table.move: more elements than the rule's memory could hold");
	return call_original(L);
}

/* setmetatable without finalizers: Lua runs __gc with hooks off, where no
 * budget stops it, and at any allocation, even outside a hook call. */
static int no_gc_setmetatable(lua_State *L)
{
	if (lua_istable(L, 2)) {
		lua_pushliteral(L, "__gc");
		if (lua_rawget(L, 2) != LUA_TNIL)
			return luaL_error(L, "setmetatable: __gc finalizers are not allowed in rules");
		lua_pop(L, 1);
	}
	return call_original(L);
}

static int readonly_newindex(lua_State *L)
{
	return luaL_error(L, "the %s library is read-only", lua_tostring(L, lua_upvalueindex(1)));
}

static int readonly_pairs(lua_State *L)
{
	lua_getglobal(L, "next");
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushnil(L);
	return 3;
}

/* Replace library field name of the table at index lib with a closure of
 * fn over the original. */
static void wrap(lua_State *L, int lib, const char *name, lua_CFunction fn)
{
	lib = lua_absindex(L, lib);
	lua_getfield(L, lib, name);
	lua_pushcclosure(L, fn, 1);
	lua_setfield(L, lib, name);
}

/* Push a read-only view of the table at index t, named name in errors. */
static void push_readonly(lua_State *L, int t, const char *name)
{
	t = lua_absindex(L, t);
	lua_newtable(L); /* the view */
	lua_newtable(L); /* its metatable */
	lua_pushvalue(L, t);
	lua_setfield(L, -2, "__index");
	lua_pushstring(L, name);
	lua_pushcclosure(L, readonly_newindex, 1);
	lua_setfield(L, -2, "__newindex");
	lua_pushvalue(L, t);
	lua_pushcclosure(L, readonly_pairs, 1);
	lua_setfield(L, -2, "__pairs");
	lua_pushliteral(L, "locked");
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
}

/* The global name of library lib becomes a read-only view of it: a rule
 * cannot change string.rep for every later connection (as Redis keeps its
 * Lua libraries read-only). */
static void make_readonly(lua_State *L, int globals, const char *name)
{
	lua_getfield(L, globals, name);
	push_readonly(L, -1, name);
	lua_setfield(L, globals, name);
	lua_pop(L, 1);
}

static int strict_index(lua_State *L)
{
	return luaL_error(L, "unknown or forbidden global '%s'", lua_tostring(L, 2));
}

static int locked_newindex(lua_State *L)
{
	return luaL_error(L, "globals are locked: cannot set '%s' outside the rule's top level", lua_tostring(L, 2));
}

static int sentinel_tostring(lua_State *L)
{
	lua_getfield(L, lua_upvalueindex(1), "name");
	return 1;
}

/* need_more(n): on_data's answer when the chunk is not yet a whole message:
 * the engine holds it, and calls on_data again with it and the next bytes
 * once n more have come (docs/rules.md, "Waiting for more bytes"). */
static int sandbox_need_more(lua_State *L)
{
	lua_Integer n = luaL_checkinteger(L, 1);
	luaL_argcheck(L, n >= 1 && n <= WFPR_RULES_HOLD_MAX, 1, "need_more(n): n is 1 to 65536 bytes");
	lua_Integer *box = lua_newuserdatauv(L, sizeof(*box), 0);
	*box = n;
	luaL_setmetatable(L, NEED_MORE_META);
	return 1;
}

static void push_sentinel(lua_State *L, const char *name)
{
	lua_newtable(L);
	lua_pushstring(L, name);
	lua_setfield(L, -2, "name");
	lua_newtable(L); /* its metatable */
	lua_pushvalue(L, -2);
	lua_pushcclosure(L, sentinel_tostring, 1);
	lua_setfield(L, -2, "__tostring");
	lua_pushliteral(L, "locked");
	lua_setfield(L, -2, "__metatable");
	lua_pushcfunction(L, locked_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_setmetatable(L, -2);
}

bool wfpr__sandbox_is_sentinel(lua_State *L, int index, const char *name)
{
	index = lua_absindex(L, index);
	lua_getfield(L, LUA_REGISTRYINDEX, SANDBOX_BASE);
	lua_pushstring(L, name);
	lua_rawget(L, -2);
	bool same = lua_rawequal(L, -1, index);
	lua_pop(L, 2);
	return same;
}

void wfpr__sandbox_open(lua_State *L)
{
	static const luaL_Reg libs[] = {
		{LUA_GNAME, luaopen_base}, {LUA_STRLIBNAME, luaopen_string}, {LUA_TABLIBNAME, luaopen_table},
		{LUA_MATHLIBNAME, luaopen_math}, {LUA_UTF8LIBNAME, luaopen_utf8}, {NULL, NULL}};

	wfpr__shared_open(L);
	luaL_newmetatable(L, NEED_MORE_META);
	lua_pushliteral(L, "locked");
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
	for (const luaL_Reg *lib = libs; lib->func; lib++) {
		luaL_requiref(L, lib->name, lib->func, 1);
		lua_pop(L, 1);
	}
	lua_pushglobaltable(L);
	for (const char *const *name = removed_base; *name; name++) {
		lua_pushnil(L);
		lua_setfield(L, -2, *name);
	}
	lua_getfield(L, -1, LUA_STRLIBNAME);
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	wrap(L, -1, "rep", bounded_rep);
	lua_pop(L, 1);
	lua_getfield(L, -1, LUA_TABLIBNAME);
	wrap(L, -1, "move", bounded_move);
	lua_pop(L, 1);
	wrap(L, -1, "setmetatable", no_gc_setmetatable);
	/* strings' metatable: its __index is the real string library */
	lua_pushliteral(L, "");
	lua_getmetatable(L, -1);
	lua_pushliteral(L, "locked");
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 2);
	int globals = lua_gettop(L);
	for (const char *const *lib = (const char *const[]){LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME,
	                                                     LUA_UTF8LIBNAME, NULL};
	     *lib; lib++)
		make_readonly(L, globals, *lib);
	lua_pushcfunction(L, sandbox_require);
	lua_setfield(L, -2, "require");
	lua_pushcfunction(L, sandbox_log);
	lua_setfield(L, -2, "log");
	lua_pushcfunction(L, sandbox_now);
	lua_setfield(L, -2, "now");
	for (const char *const *v = (const char *const[]){"inspect", "block", "permit", NULL}; *v; v++) {
		lua_pushstring(L, *v);
		lua_setfield(L, -2, *v);
	}
	/* a value of its own, so that `return pass` in on_data passes the chunk
	 * rather than replacing it with the string "pass" */
	push_sentinel(L, "pass");
	lua_setfield(L, -2, "pass");
	push_sentinel(L, "drop");
	lua_setfield(L, -2, "drop");
	lua_pushcfunction(L, sandbox_need_more);
	lua_setfield(L, -2, "need_more");
	push_sentinel(L, "close");
	lua_setfield(L, -2, "close");

	/* The base is read-only and strict, and its metatable cannot be replaced. */
	lua_newtable(L);
	lua_pushcfunction(L, strict_index);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, locked_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pushliteral(L, "locked");
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
	lua_setfield(L, LUA_REGISTRYINDEX, SANDBOX_BASE);

	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, "wfpr.loaded");
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, SANDBOX_TAGS);
}

static int env_index(lua_State *L)
{
	/* upvalue 1: the base; reading an unknown name raises via its metatable */
	lua_pushvalue(L, 2);
	lua_gettable(L, lua_upvalueindex(1));
	return 1;
}

void wfpr__sandbox_push_env(lua_State *L)
{
	lua_newtable(L);
	lua_newtable(L);
	lua_getfield(L, LUA_REGISTRYINDEX, SANDBOX_BASE);
	lua_pushcclosure(L, env_index, 1);
	lua_setfield(L, -2, "__index");
	lua_pushliteral(L, "locked");
	lua_setfield(L, -2, "__metatable");
	lua_setmetatable(L, -2);
}

void wfpr__sandbox_lock_env(lua_State *L, int env)
{
	env = lua_absindex(L, env);
	/* the metatable is protected from the rule, not from the host */
	lua_getmetatable(L, env);
	lua_pushcfunction(L, locked_newindex);
	lua_setfield(L, -2, "__newindex");
	lua_pop(L, 1);
}
