/* The public rule-host API: load a rule, call its hooks under the limits,
 * turn what they return into verdicts. Every call goes through
 * guarded_call: an instruction budget, a traceback, and one outcome
 * (ok, error, timeout, out of memory) that is counted and logged once. */
#include <limits.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../core/src/record.h"
#include "host.h"
#include "wfpr/error.h"

const char *const wfpr__hook_names[HOOK_COUNT] = {"on_connect", "on_data", "on_datagram", "on_close", "classify"};

#define MAX_RULE_FILE (1u << 20)

const char *wfpr_rule_outcome_name(wfpr_rule_outcome outcome)
{
	static const char *const names[] = {"ok", "error", "timeout", "out of memory"};
	return (unsigned int)outcome < 4 ? names[outcome] : "unknown";
}

static void set_text(char **slot, const char *text)
{
	free(*slot);
	*slot = text ? strdup(text) : NULL;
}

static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
	return 1;
}

static wfpr_rules *host_of(lua_State *L)
{
	void *ud = NULL;
	lua_getallocf(L, &ud);
	return ud;
}

#define HOOK_STEP 10000 /* instructions between two looks at the budget and the clock */

static void budget_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	wfpr_rules *r = host_of(L);
	r->ticks += HOOK_STEP;
	if (r->ticks >= r->opts.instruction_budget) {
		r->timed_out = true;
		luaL_error(L, "instruction budget exceeded");
	}
	if (wfpr__now_mono_ns() > atomic_load_explicit(&r->deadline_ns, memory_order_relaxed)) {
		r->timed_out = true;
		luaL_error(L, "time limit of %d ms exceeded", (int)r->opts.time_limit_ms);
	}
}

static int load(wfpr_rules *r, const char *chunkname, const char *source, size_t len);

/* A fresh state for r, its rule loaded again from its source, after a call
 * that the watchdog had to abandon (its state may be half-updated, so it is
 * never closed: its memory is freed block by block). After MAX_REBUILDS the
 * rule stays unloaded, and every hook gives the default verdict. */
#define MAX_REBUILDS 8
static void rebuild(wfpr_rules *r, bool reload)
{
	wfpr__rules_free_all(r); /* the abandoned state, block by block */
	r->L = NULL;
	r->generation++; /* (a new state may get the old one's address) */
	lua_State *L = lua_newstate(wfpr__rules_alloc, r);
	for (int h = 0; h < HOOK_COUNT; h++)
		r->hooks[h] = LUA_NOREF;
	if (!L)
		return;
	r->L = L;
	wfpr__sandbox_open(L);
	if (reload && ++r->rebuilds <= MAX_REBUILDS && r->source)
		load(r, r->chunkname, r->source, r->source_len);
}

static void log_failure(wfpr_rules *r, enum hook h, wfpr_rule_outcome outcome, const char *message)
{
	unsigned int bit = 1u << outcome;
	if (r->logged[h] & bit)
		return;
	r->logged[h] |= bit;
	if (r->opts.log)
		r->opts.log(r->opts.log_user, wfpr__hook_names[h], outcome, message);
	else
		fprintf(stderr, "wfpr rules: %s: %s: %s\n", wfpr__hook_names[h], wfpr_rule_outcome_name(outcome), message);
}

/* Stack: function, nargs arguments. On OK, nres results replace them. A
 * failure is counted and logged under hook h, or, with h == HOOK_COUNT (the
 * rule's top level), kept in r->error for the loader to report. */
static wfpr_rule_outcome guarded_call(wfpr_rules *r, enum hook h, int nargs, int nres)
{
	lua_State *L = r->L;
	int base = lua_gettop(L) - nargs;
	lua_pushcfunction(L, traceback);
	lua_insert(L, base);
	r->timed_out = r->over_limit = false;
	r->ticks = 0;
	r->reason[0] = '\0';
	uint64_t budget = r->opts.instruction_budget;
	lua_sethook(L, budget_hook, LUA_MASKCOUNT, budget < HOOK_STEP ? (int)budget : HOOK_STEP);
	wfpr__watchdog_enter(r);
	if (sigsetjmp(r->abort_to, 0) != 0) {
		/* the watchdog stopped the call inside C code or a finalizer */
		wfpr__watchdog_leave(r);
		r->stats.calls++;
		r->stats.timeouts++;
		char msg[400];
		snprintf(msg, sizeof(msg),
		         "time limit of %u ms exceeded inside a library function or a finalizer, where the instruction "
		         "budget cannot stop it: the call was abandoned and %s",
		         r->opts.time_limit_ms,
		         h == HOOK_COUNT             ? "the rule is not loaded"
		         : r->rebuilds < MAX_REBUILDS ? "the rule loaded again (its conn.tag tables are lost)"
		                                      : "the rule is switched off: it overran too often");
		if (h == HOOK_COUNT)
			set_text(&r->error, msg);
		else
			log_failure(r, h, WFPR_RULE_TIMEOUT, msg);
		rebuild(r, h != HOOK_COUNT);
		snprintf(r->reason, sizeof(r->reason), "rule %s: the default verdict", wfpr_rule_outcome_name(WFPR_RULE_TIMEOUT));
		return WFPR_RULE_TIMEOUT;
	}
	int rc = lua_pcall(L, nargs, nres, base);
	wfpr__watchdog_leave(r);
	lua_sethook(L, NULL, 0, 0);
	lua_remove(L, base);
	wfpr__conn_expire_all(L);
	r->stats.calls++;
	if (rc == LUA_OK)
		return WFPR_RULE_OK;

	wfpr_rule_outcome outcome = r->timed_out ? WFPR_RULE_TIMEOUT
	                            : (rc == LUA_ERRMEM || r->over_limit) ? WFPR_RULE_NOMEM : WFPR_RULE_ERROR;
	if (outcome == WFPR_RULE_TIMEOUT)
		r->stats.timeouts++;
	else if (outcome == WFPR_RULE_NOMEM)
		r->stats.nomem++;
	else
		r->stats.errors++;
	const char *msg = lua_tostring(L, -1);
	if (h == HOOK_COUNT)
		set_text(&r->error, msg ? msg : "(no message)");
	else
		log_failure(r, h, outcome, msg ? msg : "(no message)");
	lua_pop(L, 1);
	if (outcome == WFPR_RULE_NOMEM)
		lua_gc(L, LUA_GCCOLLECT); /* give the next call its memory back */
	snprintf(r->reason, sizeof(r->reason), "rule %s: the default verdict", wfpr_rule_outcome_name(outcome));
	return outcome;
}

/* A hook returned something it may not: an error like any other. */
static void bad_return(wfpr_rules *r, enum hook h, const char *expected)
{
	char msg[160];
	snprintf(msg, sizeof(msg), "%s returned a %s; expected %s", wfpr__hook_names[h], luaL_typename(r->L, -1), expected);
	r->stats.errors++;
	log_failure(r, h, WFPR_RULE_ERROR, msg);
}

int wfpr_rules_new(wfpr_rules **out, const wfpr_rules_options *opts)
{
	wfpr_rules_options defaults = WFPR_RULES_OPTIONS_INIT;
	if (!out)
		return WFPR_WSAEFAULT;
	*out = NULL;
	if (!opts)
		opts = &defaults;
	if (opts->version != WFPR_RULES_OPTIONS_VERSION || opts->memory_limit < (64u << 10) ||
	    opts->instruction_budget == 0)
		return WFPR_WSAEINVAL;
	wfpr_rules *r = calloc(1, sizeof(*r));
	if (!r)
		return WFPR_WSAENOBUFS;
	r->opts = *opts;
	if (!r->opts.time_limit_ms)
		r->opts.time_limit_ms = 100;
	for (int h = 0; h < HOOK_COUNT; h++)
		r->hooks[h] = LUA_NOREF;
	r->L = lua_newstate(wfpr__rules_alloc, r);
	if (!r->L) {
		free(r);
		return WFPR_WSAENOBUFS;
	}
	wfpr__sandbox_open(r->L);
	wfpr__watchdog_add(r);
	*out = r;
	return 0;
}

void wfpr_rules_free(wfpr_rules *r)
{
	if (!r)
		return;
	wfpr__watchdog_remove(r);
	if (r->L)
		lua_close(r->L);
	free(r->source);
	free(r->chunkname);
	for (proxy_name *p = r->proxies, *next; p; p = next) {
		next = p->next;
		free(p->name);
		free(p);
	}
	free(r->error);
	free(r->warnings);
	free(r->out);
	free(r);
}

const char *wfpr_rules_error(const wfpr_rules *r)
{
	return r && r->error ? r->error : "";
}

const char *wfpr_rules_warnings(const wfpr_rules *r)
{
	return r && r->warnings ? r->warnings : "";
}

static bool is_hook(const char *name)
{
	for (int h = 0; h < HOOK_COUNT; h++)
		if (strcmp(name, wfpr__hook_names[h]) == 0)
			return true;
	return false;
}

/* Global functions that look like hooks but are not (a typo such as on_conect). */
static void collect_warnings(wfpr_rules *r, int env)
{
	lua_State *L = r->L;
	char text[4096] = "";
	size_t used = 0;

	lua_pushnil(L);
	while (lua_next(L, env)) {
		if (lua_type(L, -2) == LUA_TSTRING && lua_isfunction(L, -1)) {
			const char *name = lua_tostring(L, -2);
			if (!is_hook(name) && strncmp(name, "on_", 3) == 0 && used < sizeof(text)) {
				lua_Debug ar;
				lua_pushvalue(L, -1);
				lua_getinfo(L, ">S", &ar);
				int n = snprintf(text + used, sizeof(text) - used,
				                 "%s:%d: unknown hook '%s' (the hooks are on_connect, on_data, on_datagram, on_close, classify)\n",
				                 ar.short_src, ar.linedefined, name);
				used += n > 0 ? (size_t)n : 0;
			}
		}
		lua_pop(L, 1);
	}
	set_text(&r->warnings, text);
}

int wfpr_rules_load_string(wfpr_rules *r, const char *chunkname, const char *source, size_t len)
{
	if (!r || !source)
		return WFPR_WSAEFAULT;
	/* kept, to load it again if a call ever has to be abandoned */
	char *copy = malloc(len + 1), *name = strdup(chunkname ? chunkname : "rules");
	if (!copy || !name) {
		free(copy);
		free(name);
		return WFPR_WSAENOBUFS;
	}
	memcpy(copy, source, len);
	copy[len] = '\0';
	free(r->source);
	free(r->chunkname);
	r->source = copy;
	r->source_len = len;
	r->chunkname = name;
	r->rebuilds = 0;
	return load(r, r->chunkname, r->source, r->source_len);
}

static int load(wfpr_rules *r, const char *chunkname, const char *source, size_t len)
{
	lua_State *L = r->L;
	if (!L)
		return WFPR_WSAENOBUFS;
	set_text(&r->error, NULL);
	char name[512];
	snprintf(name, sizeof(name), "=%s", chunkname ? chunkname : "rules");
	if (chunkname && chunkname[0] == '@')
		snprintf(name, sizeof(name), "%s", chunkname);
	if (luaL_loadbufferx(L, source, len, name, "t") != LUA_OK) {
		set_text(&r->error, lua_tostring(L, -1));
		lua_pop(L, 1);
		return WFPR_WSAEINVAL;
	}
	wfpr__sandbox_push_env(L);
	lua_pushvalue(L, -1);
	lua_setupvalue(L, -3, 1); /* the chunk's _ENV */
	lua_insert(L, -2);        /* env, chunk */
	unsigned long generation = r->generation;
	if (guarded_call(r, HOOK_COUNT, 0, 0) != WFPR_RULE_OK) {
		if (r->generation == generation) /* (else the call was abandoned, with L) */
			lua_pop(L, 1); /* the env */
		return WFPR_WSAEINVAL;
	}
	int env = lua_gettop(L);
	for (int h = 0; h < HOOK_COUNT; h++) {
		lua_pushstring(L, wfpr__hook_names[h]);
		int type = lua_rawget(L, env); /* raw: the env's __index raises for unknown names */
		if (type != LUA_TNIL && type != LUA_TFUNCTION) {
			char msg[128];
			snprintf(msg, sizeof(msg), "%s must be a function, not a %s", wfpr__hook_names[h], lua_typename(L, type));
			set_text(&r->error, msg);
			lua_settop(L, env - 1);
			return WFPR_WSAEINVAL;
		}
		lua_pop(L, 1);
	}
	for (int h = 0; h < HOOK_COUNT; h++) {
		luaL_unref(L, LUA_REGISTRYINDEX, r->hooks[h]);
		lua_pushstring(L, wfpr__hook_names[h]);
		lua_rawget(L, env);
		r->hooks[h] = lua_isfunction(L, -1) ? luaL_ref(L, LUA_REGISTRYINDEX) : (lua_pop(L, 1), LUA_NOREF);
	}
	collect_warnings(r, env);
	wfpr__sandbox_lock_env(L, env);
	lua_settop(L, env - 1);
	memset(r->logged, 0, sizeof(r->logged));
	return 0;
}

int wfpr_rules_load_file(wfpr_rules *r, const char *path)
{
	if (!r || !path)
		return WFPR_WSAEFAULT;
	FILE *f = fopen(path, "rb");
	char msg[600];
	if (!f) {
		snprintf(msg, sizeof(msg), "cannot open %s", path);
		set_text(&r->error, msg);
		return WFPR_WSAEINVAL;
	}
	char *text = malloc(MAX_RULE_FILE + 1);
	size_t n = text ? fread(text, 1, MAX_RULE_FILE + 1, f) : 0;
	fclose(f);
	if (!text || n > MAX_RULE_FILE) {
		free(text);
		snprintf(msg, sizeof(msg), "%s: larger than %u bytes", path, MAX_RULE_FILE);
		set_text(&r->error, msg);
		return WFPR_WSAEINVAL;
	}
	char chunkname[520];
	snprintf(chunkname, sizeof(chunkname), "@%s", path);
	int rc = wfpr_rules_load_string(r, chunkname, text, n);
	free(text);
	return rc;
}

int wfpr_rules_has_hook(const wfpr_rules *r, const char *hook)
{
	for (int h = 0; r && hook && h < HOOK_COUNT; h++)
		if (strcmp(hook, wfpr__hook_names[h]) == 0)
			return r->hooks[h] != LUA_NOREF;
	return 0;
}

/* The optional second result of a hook, its reason (`return close, "EICAR"`),
 * into r->reason; popped, leaving the verdict on top. */
static void take_reason(wfpr_rules *r)
{
	size_t n = 0;
	const char *s = lua_type(r->L, -1) == LUA_TSTRING ? lua_tolstring(r->L, -1, &n) : NULL;
	if (n >= sizeof(r->reason))
		n = sizeof(r->reason) - 1;
	if (s)
		memcpy(r->reason, s, n);
	r->reason[s ? n : 0] = '\0';
	lua_pop(r->L, 1);
}

size_t wfpr_rules_annotations(const wfpr_rules *r, wfpr_annotation *out, size_t max)
{
	return r && out ? wfpr__notes_list(r->notes.data, r->notes.len, out, max) : 0;
}

const char *wfpr_rules_reason(const wfpr_rules *r)
{
	return r ? r->reason : "";
}

wfpr_data_verdict wfpr_rules_default_data_verdict(const wfpr_rules *r)
{
	return r && r->opts.fail_closed ? WFPR_DATA_CLOSE : WFPR_DATA_PASS;
}

static bool push_hook(wfpr_rules *r, enum hook h)
{
	if (r->hooks[h] == LUA_NOREF)
		return false;
	lua_rawgeti(r->L, LUA_REGISTRYINDEX, r->hooks[h]);
	return true;
}

wfpr_verdict wfpr_rules_on_connect(wfpr_rules *r, const wfpr_rule_conn *conn)
{
	wfpr_verdict fallback = r && r->opts.fail_closed ? WFPR_VERDICT_BLOCK : WFPR_VERDICT_PASS;
	if (!r || !conn || !push_hook(r, HOOK_CONNECT))
		return r && conn ? WFPR_VERDICT_PASS : fallback;
	r->notes.len = 0;
	wfpr__conn_push(r->L, conn, &r->notes);
	if (guarded_call(r, HOOK_CONNECT, 1, 2) != WFPR_RULE_OK) {
		r->notes.len = 0;
		return fallback;
	}
	lua_State *L = r->L;
	take_reason(r);
	wfpr_verdict v = fallback;
	const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
	if (lua_isnil(L, -1) || wfpr__sandbox_is_sentinel(L, -1, "pass") || (s && strcmp(s, "pass") == 0))
		v = WFPR_VERDICT_PASS;
	else if (s && strcmp(s, "inspect") == 0)
		v = WFPR_VERDICT_INSPECT;
	else if (s && strcmp(s, "block") == 0)
		v = WFPR_VERDICT_BLOCK;
	else
		bad_return(r, HOOK_CONNECT, "\"pass\", \"inspect\" or \"block\"");
	lua_pop(L, 1);
	return v;
}

static wfpr_data_verdict data_hook(wfpr_rules *r, enum hook h, const wfpr_rule_conn *conn, int direction,
                                   const void *chunk, size_t len, const void **out, size_t *out_len)
{
	wfpr_data_verdict fallback = r && r->opts.fail_closed ? WFPR_DATA_CLOSE : WFPR_DATA_PASS;
	if (!r || !conn || (!chunk && len) || !out || !out_len)
		return fallback;
	*out = NULL;
	*out_len = 0;
	if (!push_hook(r, h))
		return WFPR_DATA_PASS;
	lua_State *L = r->L;
	wfpr__conn_push(L, conn, NULL);
	lua_pushstring(L, direction ? "down" : "up");
	lua_pushlstring(L, chunk ? chunk : "", len);
	if (guarded_call(r, h, 3, 2) != WFPR_RULE_OK)
		return fallback;
	take_reason(r);
	wfpr_data_verdict v = fallback;
	if (lua_isnil(L, -1) || wfpr__sandbox_is_sentinel(L, -1, "pass")) {
		v = WFPR_DATA_PASS;
	} else if (lua_type(L, -1) == LUA_TSTRING) {
		size_t n;
		const char *s = lua_tolstring(L, -1, &n);
		if (n > r->out_cap) {
			char *grown = realloc(r->out, n);
			if (grown) {
				r->out = grown;
				r->out_cap = n;
			}
		}
		if (n <= r->out_cap) {
			memcpy(r->out, s, n);
			*out = r->out;
			*out_len = n;
			v = WFPR_DATA_REPLACE;
		}
	} else if (h == HOOK_DATA && luaL_testudata(L, -1, NEED_MORE_META)) {
		v = WFPR_DATA_NEED_MORE;
		*out_len = (size_t)*(lua_Integer *)lua_touserdata(L, -1);
	} else if (wfpr__sandbox_is_sentinel(L, -1, "drop")) {
		v = WFPR_DATA_DROP;
	} else if (wfpr__sandbox_is_sentinel(L, -1, "close")) {
		v = WFPR_DATA_CLOSE;
	} else {
		bad_return(r, h, h == HOOK_DATA ? "nil or pass, a string, drop, close or need_more(n)"
		                                : "nil or pass, a string, drop or close");
	}
	lua_pop(L, 1);
	return v;
}

wfpr_data_verdict wfpr_rules_on_data(wfpr_rules *r, const wfpr_rule_conn *conn, int direction, const void *chunk,
                                     size_t len, const void **out, size_t *out_len)
{
	return data_hook(r, HOOK_DATA, conn, direction, chunk, len, out, out_len);
}

wfpr_data_verdict wfpr_rules_on_datagram(wfpr_rules *r, const wfpr_rule_conn *flow, int direction, const void *data,
                                         size_t len, const void **out, size_t *out_len)
{
	return data_hook(r, HOOK_DATAGRAM, flow, direction, data, len, out, out_len);
}

void wfpr_rules_on_close(wfpr_rules *r, const wfpr_rule_conn *conn, const wfpr_rule_close_stats *stats)
{
	if (!r || !conn)
		return;
	if (push_hook(r, HOOK_CLOSE)) {
		wfpr__conn_push(r->L, conn, NULL);
		wfpr__conn_push_stats(r->L, stats);
		guarded_call(r, HOOK_CLOSE, 2, 0);
	}
	if (r->L) /* (none only when a rebuild found no memory) */
		wfpr__conn_forget_tag(r->L, conn->id);
}

int wfpr_rules_set_proxy(wfpr_rules *r, const char *name, const struct sockaddr_storage *addr)
{
	if (!r || !name || !addr)
		return WFPR_WSAEFAULT;
	if (addr->ss_family != AF_INET && addr->ss_family != AF_INET6)
		return WFPR_WSAEAFNOSUPPORT;
	proxy_name *p = calloc(1, sizeof(*p));
	if (!p || !(p->name = strdup(name))) {
		free(p);
		return WFPR_WSAENOBUFS;
	}
	p->addr = *addr;
	p->next = r->proxies;
	r->proxies = p;
	return 0;
}

wfpr_action wfpr_rules_classify(void *rules, wfpr_connect_request *req)
{
	wfpr_rules *r = rules;
	wfpr_action fallback = r && r->opts.fail_closed ? WFPR_ACTION_BLOCK : WFPR_ACTION_PERMIT;
	if (!r || !req || !push_hook(r, HOOK_CLASSIFY))
		return r && req ? WFPR_ACTION_PERMIT : fallback;
	lua_State *L = r->L;
	wfpr__conn_push_request(L, req);
	if (guarded_call(r, HOOK_CLASSIFY, 1, 1) != WFPR_RULE_OK)
		return fallback;
	wfpr_action action = fallback;
	const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
	if (lua_isnil(L, -1) || (s && strcmp(s, "permit") == 0)) {
		action = WFPR_ACTION_PERMIT;
	} else if (s && strcmp(s, "block") == 0) {
		action = WFPR_ACTION_BLOCK;
	} else if (lua_istable(L, -1) && lua_getfield(L, -1, "redirect") == LUA_TSTRING) {
		const char *name = lua_tostring(L, -1);
		const proxy_name *p = r->proxies;
		while (p && strcmp(p->name, name) != 0)
			p = p->next;
		if (p) {
			req->redirect_to = p->addr;
			action = WFPR_ACTION_REDIRECT;
		} else {
			char msg[200];
			snprintf(msg, sizeof(msg), "classify redirected to '%s', which is no proxy of this host", name);
			r->stats.errors++;
			log_failure(r, HOOK_CLASSIFY, WFPR_RULE_ERROR, msg);
		}
		lua_pop(L, 1);
	} else {
		if (lua_istable(L, -1))
			lua_pop(L, 1);
		bad_return(r, HOOK_CLASSIFY, "\"permit\", \"block\" or {redirect = NAME}");
	}
	lua_pop(L, 1);
	return action;
}

int wfpr_rules_get_stats(wfpr_rules_stats *out, const wfpr_rules *r)
{
	if (!out || !r)
		return WFPR_WSAEFAULT;
	*out = r->stats;
	out->memory_in_use = r->in_use;
	out->memory_peak = r->peak;
	return 0;
}
