#ifndef WFPR_LUA_HOST_H
#define WFPR_LUA_HOST_H

/* The rule host's insides, shared by its files: the state and its limits
 * (alloc.c), the sandbox (sandbox.c), host objects (conn.c), and the calls
 * into hooks (rules.c). */

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include "wfpr/rules.h"

enum hook { HOOK_CONNECT, HOOK_DATA, HOOK_DATAGRAM, HOOK_CLOSE, HOOK_CLASSIFY, HOOK_COUNT };
extern const char *const wfpr__hook_names[HOOK_COUNT];

typedef struct proxy_name {
	struct proxy_name *next;
	char *name;
	struct sockaddr_storage addr;
} proxy_name;

struct wfpr_rules {
	lua_State *L;
	wfpr_rules_options opts;
	/* the counting allocator */
	size_t in_use, peak;
	bool over_limit; /* the last failure was the memory cap */
	bool timed_out;  /* the last failure was the instruction budget */
	int hooks[HOOK_COUNT]; /* registry refs, LUA_NOREF when absent */
	unsigned int logged[HOOK_COUNT]; /* outcomes already logged, as bits */
	wfpr_rules_stats stats;
	char *error;
	char *warnings;
	proxy_name *proxies;
	/* the replacement chunk of the last on_data/on_datagram */
	char *out;
	size_t out_cap;
};

/* alloc.c */
void *wfpr__rules_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* sandbox.c: open the allowed libraries and build the locked base
 * environment, left in the registry under SANDBOX_BASE. */
#define SANDBOX_BASE "wfpr.base"
#define SANDBOX_TAGS "wfpr.tags"
void wfpr__sandbox_open(lua_State *L);
/* A fresh environment for a rule chunk: reads fall to the base (an unknown
 * name is an error), writes stay in the rule's own table. */
void wfpr__sandbox_push_env(lua_State *L);
/* After the top level ran: no more global writes. */
void wfpr__sandbox_lock_env(lua_State *L, int env_index);
/* The sentinel values rules return: drop and close. */
bool wfpr__sandbox_is_sentinel(lua_State *L, int index, const char *name);

/* conn.c: a host object valid only during the hook it is passed to. */
void wfpr__conn_push(lua_State *L, const wfpr_rule_conn *conn);
void wfpr__conn_push_request(lua_State *L, const wfpr_connect_request *req);
void wfpr__conn_push_stats(lua_State *L, const wfpr_rule_close_stats *stats);
/* Invalidate every host object pushed since the last call. */
void wfpr__conn_expire_all(lua_State *L);
void wfpr__conn_forget_tag(lua_State *L, uint64_t id);

#endif
