/* Host objects handed to hooks: conn (or flow), req and stats. A conn is a
 * userdata whose fields live in its user value; once the hook returns it is
 * marked expired, and any later use raises an error instead of reading
 * freed host memory (after Wireshark's wslua). conn.tag is one table per
 * connection id that outlives the hooks until on_close. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include "host.h"
#include "wfpr/record.h"

#define CONN_META "wfpr.conn"
#define ADDR_META "wfpr.addr"
#define LIVE "wfpr.live"

typedef struct host_object {
	bool valid;
	const char *kind;
} host_object;

static int object_index(lua_State *L)
{
	host_object *o = luaL_checkudata(L, 1, CONN_META);
	if (!o->valid)
		return luaL_error(L, "this %s was kept past its hook and has expired", o->kind);
	lua_getiuservalue(L, 1, 1);
	lua_pushvalue(L, 2);
	lua_rawget(L, -2);
	return 1;
}

static int object_newindex(lua_State *L)
{
	host_object *o = luaL_checkudata(L, 1, CONN_META);
	return luaL_error(L, "%s is read-only (keep your own state in conn.tag)", o->kind);
}

static int object_tostring(lua_State *L)
{
	host_object *o = luaL_checkudata(L, 1, CONN_META);
	lua_pushfstring(L, "%s%s", o->kind, o->valid ? "" : " (expired)");
	return 1;
}

static int addr_tostring(lua_State *L)
{
	lua_getfield(L, 1, "ip");
	lua_getfield(L, 1, "port");
	const char *ip = lua_tostring(L, -2);
	if (ip && strchr(ip, ':'))
		lua_pushfstring(L, "[%s]:%s", ip, lua_tostring(L, -1));
	else
		lua_pushfstring(L, "%s:%s", ip ? ip : "?", lua_tostring(L, -1));
	return 1;
}

static void push_addr(lua_State *L, const struct sockaddr_storage *a)
{
	char host[INET6_ADDRSTRLEN] = "";
	unsigned int port = 0;
	if (a->ss_family == AF_INET) {
		inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, host, sizeof(host));
		port = ntohs(((const struct sockaddr_in *)a)->sin_port);
	} else if (a->ss_family == AF_INET6) {
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, host, sizeof(host));
		port = ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
	} else {
		lua_pushnil(L);
		return;
	}
	lua_createtable(L, 0, 2);
	lua_pushstring(L, host);
	lua_setfield(L, -2, "ip");
	lua_pushinteger(L, port);
	lua_setfield(L, -2, "port");
	if (luaL_newmetatable(L, ADDR_META)) {
		lua_pushcfunction(L, addr_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_setmetatable(L, -2);
}

static const char *proto_name(int protocol)
{
	return protocol == IPPROTO_TCP ? "tcp" : protocol == IPPROTO_UDP ? "udp" : "other";
}

static void push_hops(lua_State *L, const void *records, size_t len)
{
	wfpr_records *r = NULL;
	lua_newtable(L);
	if (!records || len == 0 || wfpr_records_decode(&r, records, len) != 0)
		return;
	for (size_t i = 0; i < r->hop_count; i++) {
		const wfpr_hop *h = &r->hops[i];
		char id[2 * WFPR_REDIRECTOR_ID_SIZE + 1];
		lua_createtable(L, 0, 7);
		lua_pushstring(L, wfpr_redirector_id_format(id, sizeof(id), h->redirector_id));
		lua_setfield(L, -2, "redirector");
		lua_pushinteger(L, (lua_Integer)h->handle_id);
		lua_setfield(L, -2, "handle");
		lua_pushinteger(L, h->proxy_pid);
		lua_setfield(L, -2, "pid");
		lua_pushstring(L, proto_name(h->protocol));
		lua_setfield(L, -2, "proto");
		push_addr(L, &h->original_remote);
		lua_setfield(L, -2, "original_dst");
		push_addr(L, &h->original_local);
		lua_setfield(L, -2, "client");
		push_addr(L, &h->target);
		lua_setfield(L, -2, "target");
		lua_pushnumber(L, (lua_Number)h->time_ns / 1e9);
		lua_setfield(L, -2, "time");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	wfpr_records_free(r);
}

/* A new host object around the table on the top of the stack (popped). */
static void wrap(lua_State *L, const char *kind)
{
	host_object *o = lua_newuserdatauv(L, sizeof(*o), 1);
	o->valid = true;
	o->kind = kind;
	lua_insert(L, -2);
	lua_setiuservalue(L, -2, 1);
	if (luaL_newmetatable(L, CONN_META)) {
		lua_pushcfunction(L, object_index);
		lua_setfield(L, -2, "__index");
		lua_pushcfunction(L, object_newindex);
		lua_setfield(L, -2, "__newindex");
		lua_pushcfunction(L, object_tostring);
		lua_setfield(L, -2, "__tostring");
		lua_pushliteral(L, "locked");
		lua_setfield(L, -2, "__metatable");
	}
	lua_setmetatable(L, -2);
	/* remember it, to expire it after the call */
	if (lua_getfield(L, LUA_REGISTRYINDEX, LIVE) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, -1);
		lua_setfield(L, LUA_REGISTRYINDEX, LIVE);
	}
	lua_pushvalue(L, -2);
	lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
	lua_pop(L, 1);
}

static void push_tag(lua_State *L, uint64_t id)
{
	lua_getfield(L, LUA_REGISTRYINDEX, SANDBOX_TAGS);
	if (lua_rawgeti(L, -1, (lua_Integer)id) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, -1);
		lua_rawseti(L, -3, (lua_Integer)id);
	}
	lua_remove(L, -2);
}

static const char *state_name(wfpr_redirect_state s)
{
	return wfpr_redirect_state_name(s);
}

void conn_push(lua_State *L, const wfpr_rule_conn *c)
{
	lua_createtable(L, 0, 9);
	push_addr(L, &c->original_dst);
	lua_setfield(L, -2, "original_dst");
	push_addr(L, &c->client);
	lua_setfield(L, -2, "client");
	lua_pushstring(L, proto_name(c->protocol));
	lua_setfield(L, -2, "proto");
	push_hops(L, c->records, c->records_len);
	lua_setfield(L, -2, "hops");
	lua_pushstring(L, state_name(c->state));
	lua_setfield(L, -2, "state");
	lua_createtable(L, 0, 2);
	lua_pushinteger(L, c->pid);
	lua_setfield(L, -2, "pid");
	if (c->process_name) {
		lua_pushstring(L, c->process_name);
		lua_setfield(L, -2, "name");
	}
	lua_setfield(L, -2, "process");
	lua_pushinteger(L, (lua_Integer)c->id);
	lua_setfield(L, -2, "id");
	push_tag(L, c->id);
	lua_setfield(L, -2, "tag");
	wrap(L, c->protocol == IPPROTO_UDP ? "flow" : "conn");
}

void conn_push_request(lua_State *L, const wfpr_connect_request *req)
{
	lua_createtable(L, 0, 7);
	lua_pushstring(L, proto_name(req->protocol));
	lua_setfield(L, -2, "proto");
	push_addr(L, &req->remote);
	lua_setfield(L, -2, "remote");
	push_addr(L, &req->local);
	lua_setfield(L, -2, "local");
	lua_pushinteger(L, req->pid);
	lua_setfield(L, -2, "pid");
	lua_pushinteger(L, req->uid);
	lua_setfield(L, -2, "uid");
	lua_pushinteger(L, (lua_Integer)req->hop_count);
	lua_setfield(L, -2, "hop_count");
	lua_pushstring(L, state_name(req->state));
	lua_setfield(L, -2, "state");
	wrap(L, "req");
}

void conn_push_stats(lua_State *L, const wfpr_rule_close_stats *s)
{
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, (lua_Integer)(s ? s->bytes_up : 0));
	lua_setfield(L, -2, "bytes_up");
	lua_pushinteger(L, (lua_Integer)(s ? s->bytes_down : 0));
	lua_setfield(L, -2, "bytes_down");
	lua_pushinteger(L, (lua_Integer)(s ? s->duration_ms : 0));
	lua_setfield(L, -2, "duration_ms");
}

void conn_expire_all(lua_State *L)
{
	if (lua_getfield(L, LUA_REGISTRYINDEX, LIVE) == LUA_TTABLE) {
		for (lua_Integer i = 1, n = (lua_Integer)lua_rawlen(L, -1); i <= n; i++) {
			lua_rawgeti(L, -1, i);
			host_object *o = lua_touserdata(L, -1);
			if (o)
				o->valid = false;
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	lua_newtable(L);
	lua_setfield(L, LUA_REGISTRYINDEX, LIVE);
}

void conn_forget_tag(lua_State *L, uint64_t id)
{
	lua_getfield(L, LUA_REGISTRYINDEX, SANDBOX_TAGS);
	lua_pushnil(L);
	lua_rawseti(L, -2, (lua_Integer)id);
	lua_pop(L, 1);
}
