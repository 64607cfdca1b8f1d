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
	lua_pop(L, 1);
	lua_pushcfunction(L, sandbox_require);
	lua_setfield(L, -2, "require");
	lua_pushcfunction(L, sandbox_log);
	lua_setfield(L, -2, "log");
	lua_pushcfunction(L, sandbox_now);
	lua_setfield(L, -2, "now");
	for (const char *const *v = (const char *const[]){"pass", "inspect", "block", "permit", NULL}; *v; v++) {
		lua_pushstring(L, *v);
		lua_setfield(L, -2, *v);
	}
	push_sentinel(L, "drop");
	lua_setfield(L, -2, "drop");
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
