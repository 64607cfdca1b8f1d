/* Host objects handed to hooks: conn (or flow), req and stats. A conn is a
 * userdata whose fields live in its user value; once the hook returns it is
 * marked expired, and any later use raises an error instead of reading
 * freed host memory (after Wireshark's wslua). conn.tag is one table per
 * connection id that outlives the hooks until on_close. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include "../core/src/record.h"
#include "host.h"
#include "wfpr/error.h"
#include "wfpr/record.h"

#define CONN_META "wfpr.conn"
#define ADDR_META "wfpr.addr"
#define LIVE "wfpr.live"

/* Fields are built from the C data on first use (most rules read few of
 * them) and cached in the user value. The C data is valid exactly while
 * the object is: during the hook. */
typedef struct host_object {
	bool valid;
	const char *kind;
	const wfpr_rule_conn *conn;
	const wfpr_connect_request *req;
	wfpr__notes *notes; /* conn:annotate writes here (on_connect only) */
} host_object;

static void push_field(lua_State *L, const host_object *o, const char *key);

static int object_index(lua_State *L)
{
	host_object *o = luaL_checkudata(L, 1, CONN_META);
	if (!o->valid)
		return luaL_error(L, "this %s was kept past its hook and has expired", o->kind);
	if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, -1);
		lua_setiuservalue(L, 1, 1);
	}
	lua_pushvalue(L, 2);
	if (lua_rawget(L, -2) != LUA_TNIL || lua_type(L, 2) != LUA_TSTRING)
		return 1;
	lua_pop(L, 1);
	push_field(L, o, lua_tostring(L, 2));
	lua_pushvalue(L, 2);
	lua_pushvalue(L, -2);
	lua_rawset(L, -4);
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

/* {pid, uid, name, exe}, or nil when the hop does not say */
static void push_process(lua_State *L, const wfpr_process *p)
{
	if (p->pid == 0) {
		lua_pushnil(L);
		return;
	}
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, p->pid);
	lua_setfield(L, -2, "pid");
	lua_pushinteger(L, p->uid);
	lua_setfield(L, -2, "uid");
	lua_pushstring(L, p->name);
	lua_setfield(L, -2, "name");
	lua_pushstring(L, p->exe);
	lua_setfield(L, -2, "exe");
}

static void push_annotations(lua_State *L, const wfpr_hop *h)
{
	lua_createtable(L, 0, (int)h->annotation_count);
	for (size_t i = 0; i < h->annotation_count; i++) {
		lua_pushstring(L, h->annotations[i].value);
		lua_setfield(L, -2, h->annotations[i].key);
	}
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
		lua_createtable(L, 0, 11);
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
		push_process(L, &h->process);
		lua_setfield(L, -2, "process");
		push_annotations(L, h);
		lua_setfield(L, -2, "annotations");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	wfpr_records_free(r);
}

#define LIVE_MAX 8 /* host objects per call: conn, and req */

/* A new host object for this call, remembered to be expired after it. */
static host_object *wrap(lua_State *L, const char *kind)
{
	host_object *o = lua_newuserdatauv(L, sizeof(*o), 1);
	memset(o, 0, sizeof(*o));
	o->valid = true;
	o->kind = kind;
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
	/* the LIVE table is kept and reused: no allocation per call */
	if (lua_getfield(L, LUA_REGISTRYINDEX, LIVE) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_createtable(L, LIVE_MAX, 0);
		lua_pushvalue(L, -1);
		lua_setfield(L, LUA_REGISTRYINDEX, LIVE);
	}
	lua_pushvalue(L, -2);
	lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
	lua_pop(L, 1);
	return o;
}

/* conn:annotate(key, value): true, or nil and why. The annotation goes
 * into the record of the connection this proxy passes on. */
static int conn_annotate(lua_State *L)
{
	host_object *o = luaL_checkudata(L, 1, CONN_META);
	const char *key = luaL_checkstring(L, 2), *value = luaL_checkstring(L, 3);
	if (!o->valid)
		return luaL_error(L, "this %s was kept past its hook and has expired", o->kind);
	const char *why = NULL;
	if (!o->notes) {
		why = "conn:annotate works in on_connect only: the connection is passed on when on_connect returns";
	} else {
		int rc = wfpr__notes_put(o->notes->data, &o->notes->len, key, value);
		if (rc == WFPR_WSAEMSGSIZE)
			why = "too many annotations: at most 8 pairs and 64 bytes (2 + key + value each)";
		else if (rc != 0)
			why = "a key is 1 to 32 of A-Z a-z 0-9 _ . -, a value at most 48 printable ASCII characters";
	}
	if (why) {
		lua_pushnil(L);
		lua_pushstring(L, why);
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
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

static void push_conn_field(lua_State *L, const wfpr_rule_conn *c, const char *key)
{
	if (strcmp(key, "original_dst") == 0) {
		push_addr(L, &c->original_dst);
	} else if (strcmp(key, "client") == 0) {
		push_addr(L, &c->client);
	} else if (strcmp(key, "proto") == 0) {
		lua_pushstring(L, proto_name(c->protocol));
	} else if (strcmp(key, "hops") == 0) {
		push_hops(L, c->records, c->records_len);
	} else if (strcmp(key, "state") == 0) {
		lua_pushstring(L, wfpr_redirect_state_name(c->state));
	} else if (strcmp(key, "process") == 0) {
		push_process(L, &c->process);
	} else if (strcmp(key, "id") == 0) {
		lua_pushinteger(L, (lua_Integer)c->id);
	} else if (strcmp(key, "tag") == 0) {
		push_tag(L, c->id);
	} else if (strcmp(key, "annotate") == 0) {
		lua_pushcfunction(L, conn_annotate);
	} else {
		lua_pushnil(L);
	}
}

static void push_request_field(lua_State *L, const wfpr_connect_request *req, const char *key)
{
	if (strcmp(key, "proto") == 0)
		lua_pushstring(L, proto_name(req->protocol));
	else if (strcmp(key, "remote") == 0)
		push_addr(L, &req->remote);
	else if (strcmp(key, "local") == 0)
		push_addr(L, &req->local);
	else if (strcmp(key, "pid") == 0)
		lua_pushinteger(L, req->pid);
	else if (strcmp(key, "uid") == 0)
		lua_pushinteger(L, req->uid);
	else if (strcmp(key, "hop_count") == 0)
		lua_pushinteger(L, (lua_Integer)req->hop_count);
	else if (strcmp(key, "state") == 0)
		lua_pushstring(L, wfpr_redirect_state_name(req->state));
	else
		lua_pushnil(L);
}

static void push_field(lua_State *L, const host_object *o, const char *key)
{
	if (o->conn)
		push_conn_field(L, o->conn, key);
	else if (o->req)
		push_request_field(L, o->req, key);
	else
		lua_pushnil(L);
}

void wfpr__conn_push(lua_State *L, const wfpr_rule_conn *c, wfpr__notes *notes)
{
	host_object *o = wrap(L, c->protocol == IPPROTO_UDP ? "flow" : "conn");
	o->conn = c;
	o->notes = notes;
}

void wfpr__conn_push_request(lua_State *L, const wfpr_connect_request *req)
{
	wrap(L, "req")->req = req;
}

void wfpr__conn_push_stats(lua_State *L, const wfpr_rule_close_stats *s)
{
	lua_createtable(L, 0, 3);
	lua_pushinteger(L, (lua_Integer)(s ? s->bytes_up : 0));
	lua_setfield(L, -2, "bytes_up");
	lua_pushinteger(L, (lua_Integer)(s ? s->bytes_down : 0));
	lua_setfield(L, -2, "bytes_down");
	lua_pushinteger(L, (lua_Integer)(s ? s->duration_ms : 0));
	lua_setfield(L, -2, "duration_ms");
}

void wfpr__conn_expire_all(lua_State *L)
{
	if (lua_getfield(L, LUA_REGISTRYINDEX, LIVE) == LUA_TTABLE) {
		for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1); i >= 1; i--) {
			lua_rawgeti(L, -1, i);
			host_object *o = lua_touserdata(L, -1);
			if (o) {
				o->valid = false;
				o->conn = NULL;
				o->req = NULL;
				o->notes = NULL;
			}
			lua_pop(L, 1);
			lua_pushnil(L);
			lua_rawseti(L, -2, i);
		}
	}
	lua_pop(L, 1);
}

void wfpr__conn_forget_tag(lua_State *L, uint64_t id)
{
	lua_getfield(L, LUA_REGISTRYINDEX, SANDBOX_TAGS);
	lua_pushnil(L);
	lua_rawseti(L, -2, (lua_Integer)id);
	lua_pop(L, 1);
}
