/*
 * lua.i: Lua typemaps and glue. Strings stand for byte buffers. A parked
 * error is raised as a Lua error whose value is a table {code, name,
 * message, required_size} that prints as "WSAEINVAL (10022): ...".
 */

%{
#include <lauxlib.h>

typedef void *WFPR_CALLOUT;

static int wfpr_lua_error_tostring(lua_State *L)
{
	lua_getfield(L, 1, "message");
	return 1;
}

static void wfpr_lua_push_error(lua_State *L, int code, uint32_t bytes, const char *detail)
{
	const char *name = wfpr_err_name(code);
	lua_createtable(L, 0, 4);
	lua_pushinteger(L, code);
	lua_setfield(L, -2, "code");
	lua_pushstring(L, name ? name : "UNKNOWN");
	lua_setfield(L, -2, "name");
	lua_pushfstring(L, "%s (%d): %s%s%s", name ? name : "UNKNOWN", code, wfpr_strerror(code),
	                detail && *detail ? ": " : "", detail ? detail : "");
	lua_setfield(L, -2, "message");
	lua_pushinteger(L, bytes);
	lua_setfield(L, -2, "required_size");
	if (luaL_newmetatable(L, "wfpr.error")) {
		lua_pushcfunction(L, wfpr_lua_error_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_setmetatable(L, -2);
}

static void wfpr_lua_push_addr(lua_State *L, const struct sockaddr_storage *a)
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
}

/* A Lua callout: called on the thread that connects, in the state that
 * registered it (a standalone script's single thread). */
typedef struct wfpr_lua_callout {
	lua_State *L;
	int ref;
} wfpr_lua_callout;

/* The callout returns nil or "permit", "block", or "redirect", ip, port. */
static wfpr_action wfpr_binding_classify(void *user, wfpr_connect_request *req)
{
	wfpr_lua_callout *c = user;
	lua_State *L = c->L;
	int top = lua_gettop(L);
	wfpr_action action = WFPR_ACTION_PERMIT;
	lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
	lua_createtable(L, 0, 6);
	lua_pushstring(L, req->protocol == IPPROTO_UDP ? "udp" : "tcp");
	lua_setfield(L, -2, "proto");
	wfpr_lua_push_addr(L, &req->remote);
	lua_setfield(L, -2, "remote");
	wfpr_lua_push_addr(L, &req->local);
	lua_setfield(L, -2, "local");
	lua_pushinteger(L, req->pid);
	lua_setfield(L, -2, "pid");
	lua_pushinteger(L, (lua_Integer)req->hop_count);
	lua_setfield(L, -2, "hop_count");
	lua_pushstring(L, wfpr_redirect_state_name(req->state));
	lua_setfield(L, -2, "state");
	if (lua_pcall(L, 1, 3, 0) != LUA_OK) {
		fprintf(stderr, "wfpr: Lua callout failed: %s\n", lua_tostring(L, -1));
	} else {
		const char *verdict = lua_tostring(L, -3);
		if (verdict && strcmp(verdict, "block") == 0)
			action = WFPR_ACTION_BLOCK;
		else if (verdict && strcmp(verdict, "redirect") == 0 &&
		         wfpr_binding_parse_ip(lua_tostring(L, -2), (unsigned int)lua_tointeger(L, -1), &req->redirect_to))
			action = WFPR_ACTION_REDIRECT;
	}
	lua_settop(L, top);
	return action;
}
%}

%exception {
	binding_error.pending = false;
	$action
	if (binding_error.pending) {
		binding_error.pending = false;
		wfpr_lua_push_error(L, binding_error.code, binding_error.bytes, binding_error.detail);
		SWIG_fail;
	}
}

%typemap(in) (const void *BUFFER, size_t LENGTH) {
	if (lua_isnil(L, $input)) {
		$1 = NULL;
		$2 = 0;
	} else {
		size_t len = 0;
		$1 = (void *)luaL_checklstring(L, $input, &len);
		$2 = len;
	}
}
%typemap(typecheck) (const void *BUFFER, size_t LENGTH) {
	$1 = lua_isnil(L, $input) || lua_type(L, $input) == LUA_TSTRING;
}

%typemap(in) (void *OUT, uint32_t OUT_LEN, uint32_t *OUT_USED) (uint32_t used = 0) {
	lua_Integer n = luaL_checkinteger(L, $input);
	if (n < 0 || n > (lua_Integer)UINT32_MAX)
		SWIG_fail_arg("$symname", $argnum, "out_len from 0 to 2^32-1");
	$2 = (uint32_t)n;
	$1 = malloc(n ? (size_t)n : 1);
	$3 = &used;
}
%typemap(argout) (void *OUT, uint32_t OUT_LEN, uint32_t *OUT_USED) {
	lua_pushlstring(L, (const char *)$1, used$argnum <= $2 ? used$argnum : 0);
	SWIG_arg++;
}
%typemap(freearg) (void *OUT, uint32_t OUT_LEN, uint32_t *OUT_USED) {
	free($1);
}

%typemap(in, numinputs=0) (const uint8_t **DATA, size_t *LENGTH) (const uint8_t *data = NULL, size_t length = 0) {
	$1 = ($1_ltype)&data;
	$2 = &length;
}
%typemap(argout) (const uint8_t **DATA, size_t *LENGTH) {
	lua_pushlstring(L, (const char *)data$argnum, length$argnum);
	SWIG_arg++;
}

%typemap(in) WFPR_CALLOUT {
	luaL_checktype(L, $input, LUA_TFUNCTION);
	wfpr_lua_callout *c = malloc(sizeof(*c)); /* lives as long as the process: the layer may call it */
	if (!c)
		SWIG_fail_arg("$symname", $argnum, "memory");
	c->L = L;
	lua_pushvalue(L, $input);
	c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
	$1 = c;
}

%typemap(out) int WFPR_STATUS {
	if ($1 != 0) {
		wfpr_lua_push_error(L, $1, 0, NULL);
		SWIG_fail;
	}
}
%typemap(out) int WFPR_SOCKET_RESULT {
	if ($1 != 0) {
		wfpr_lua_push_error(L, wfpr_get_last_error(), 0, NULL);
		SWIG_fail;
	}
}

%native(records_decode) int wfpr_lua_records_decode(lua_State *L);
%native(tcp_socket) int wfpr_lua_tcp_socket(lua_State *L);
%{
/* records_decode(blob) -> array of hops, oldest first. */
static int wfpr_lua_records_decode(lua_State *L)
{
	size_t len = 0;
	const char *blob = luaL_checklstring(L, 1, &len);
	wfpr_records *r = NULL;
	int rc = wfpr_records_decode(&r, blob, len);
	if (rc != 0) {
		wfpr_lua_push_error(L, rc, 0, NULL);
		return lua_error(L);
	}
	lua_createtable(L, (int)r->hop_count, 0);
	for (size_t i = 0; i < r->hop_count; i++) {
		const wfpr_hop *h = &r->hops[i];
		char id[2 * WFPR_REDIRECTOR_ID_SIZE + 1];
		lua_createtable(L, 0, 7);
		lua_pushstring(L, wfpr_redirector_id_format(id, sizeof(id), h->redirector_id));
		lua_setfield(L, -2, "redirector");
		lua_pushinteger(L, (lua_Integer)h->handle_id);
		lua_setfield(L, -2, "handle");
		lua_pushstring(L, h->protocol == IPPROTO_UDP ? "udp" : "tcp");
		lua_setfield(L, -2, "proto");
		wfpr_lua_push_addr(L, &h->original_remote);
		lua_setfield(L, -2, "original_dst");
		wfpr_lua_push_addr(L, &h->original_local);
		lua_setfield(L, -2, "client");
		wfpr_lua_push_addr(L, &h->target);
		lua_setfield(L, -2, "target");
		lua_pushnumber(L, (lua_Number)h->time_ns / 1e9);
		lua_setfield(L, -2, "time");
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
	wfpr_records_free(r);
	return 1;
}

/* tcp_socket([ipv6]) -> a new TCP socket's descriptor, for scripts without a socket library. */
static int wfpr_lua_tcp_socket(lua_State *L)
{
	int fd = wfpr_socket(lua_toboolean(L, 1) ? AF_INET6 : AF_INET, SOCK_STREAM, 0, 0);
	if (fd < 0) {
		wfpr_lua_push_error(L, wfpr_get_last_error(), 0, NULL);
		return lua_error(L);
	}
	lua_pushinteger(L, fd);
	return 1;
}
%}
