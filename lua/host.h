#ifndef WFPR_LUA_HOST_H
#define WFPR_LUA_HOST_H

/* The rule host's insides, shared by its files: the state and its limits
 * (alloc.c), the sandbox (sandbox.c), host objects (conn.c), and the calls
 * into hooks (rules.c). */

#include <lauxlib.h>
#include <lua.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include "wfpr/rules.h"

enum hook { HOOK_CONNECT, HOOK_DATA, HOOK_DATAGRAM, HOOK_CLOSE, HOOK_CLASSIFY, HOOK_COUNT };
extern const char *const wfpr__hook_names[HOOK_COUNT];

/* What conn:annotate collected in an on_connect call, as the record
 * carries it (core/src/record.h's wfpr__notes_put). */
typedef struct wfpr__notes {
	uint8_t data[WFPR_ANNOTATIONS_SIZE_MAX];
	size_t len;
} wfpr__notes;

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
	struct block *blocks; /* every block the state holds (alloc.c) */
	bool over_limit; /* the last failure was the memory cap */
	bool timed_out;  /* the last failure was the instruction budget */
	int hooks[HOOK_COUNT]; /* registry refs, LUA_NOREF when absent */
	unsigned int logged[HOOK_COUNT]; /* outcomes already logged, as bits */
	wfpr_rules_stats stats;
	char *error;
	char *warnings;
	char reason[128]; /* the last hook call's: the rule's own, or its failure */
	wfpr__notes notes; /* the last on_connect's conn:annotate calls */
	proxy_name *proxies;
	/* the replacement chunk of the last on_data/on_datagram */
	char *out;
	size_t out_cap;
	/* the rule's source, to build it again after an abandoned call */
	char *source;
	size_t source_len;
	char *chunkname;
	unsigned int rebuilds;
	unsigned long generation; /* of the state: one more each rebuild */
	uint64_t ticks; /* instructions run in the call in progress */
	/* the wall-clock limit (watchdog.c) */
	struct wfpr_rules *watch_next;
	pthread_t thread;
	_Atomic int64_t deadline_ns; /* of the call in progress; 0: none */
	_Atomic uint64_t calls;      /* calls entered: the watchdog rests while none come */
	volatile sig_atomic_t in_call, in_alloc, abort_pending; /* this thread and its signal handler */
	_Atomic int signalled; /* by the watchdog, once per call */
	sigjmp_buf abort_to;
};

/* watchdog.c: the signal it sends (a real-time one no library uses). */
#define WFPR__WATCHDOG_SIGNAL (SIGRTMAX - 4)
int64_t wfpr__now_mono_ns(void);
void wfpr__watchdog_add(wfpr_rules *r);
void wfpr__watchdog_remove(wfpr_rules *r);
/* Around a call: arm and disarm its deadline (opts.time_limit_ms). */
void wfpr__watchdog_enter(wfpr_rules *r);
void wfpr__watchdog_leave(wfpr_rules *r);

/* alloc.c */
void *wfpr__rules_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* Free every block of the state, without reading it (an abandoned one). */
void wfpr__rules_free_all(wfpr_rules *r);

/* sandbox.c: open the allowed libraries and build the locked base
 * environment, left in the registry under SANDBOX_BASE. */
#define SANDBOX_BASE "wfpr.base"
#define NEED_MORE_META "wfpr.need_more" /* need_more(n)'s answer: a userdata holding n */
#define SANDBOX_TAGS "wfpr.tags"
void wfpr__sandbox_open(lua_State *L);
/* A fresh environment for a rule chunk: reads fall to the base (an unknown
 * name is an error), writes stay in the rule's own table. */
void wfpr__sandbox_push_env(lua_State *L);
/* After the top level ran: no more global writes. */
void wfpr__sandbox_lock_env(lua_State *L, int env_index);
/* The sentinel values rules return: drop and close. */
bool wfpr__sandbox_is_sentinel(lua_State *L, int index, const char *name);

/* inspect.c: add wfpr.tls, wfpr.http and wfpr.dns to the module table on top. */
void wfpr__inspect_add(lua_State *L);

/* shared.c: the shared tables' metatable (once per state), and
 * wfpr.shared on the module table on top. */
void wfpr__shared_open(lua_State *L);
void wfpr__shared_add(lua_State *L);

/* conn.c: a host object valid only during the hook it is passed to.
 * notes: where conn:annotate writes (on_connect), NULL elsewhere. */
void wfpr__conn_push(lua_State *L, const wfpr_rule_conn *conn, wfpr__notes *notes);
void wfpr__conn_push_request(lua_State *L, const wfpr_connect_request *req);
void wfpr__conn_push_stats(lua_State *L, const wfpr_rule_close_stats *stats);
/* Invalidate every host object pushed since the last call. */
void wfpr__conn_expire_all(lua_State *L);
void wfpr__conn_forget_tag(lua_State *L, uint64_t id);

#endif
