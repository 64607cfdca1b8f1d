/* wfpr.shared(name, {size = N, ttl = S}): a bounded table of counters and
 * short strings that all the rule hosts of a process share (a proxy's
 * workers) and that outlives a rule's reload or rebuild (docs/rules.md,
 * "Shared state"). Outside every Lua state, under one mutex per table.
 *
 * A watchdog may stop a call at any point in C code (watchdog.c): never
 * while a table's mutex is held. The locked regions allocate nothing from
 * Lua, and run as the allocator does, with the jump held back to their end. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "host.h"

#define NAME_MAX_LEN 63
#define KEY_MAX 64
#define STR_MAX 64
#define MAX_TABLES 32
#define MAX_ENTRIES_TOTAL (1u << 18) /* across every table: about 50 MB at most */
#define SHARED_META "wfpr.shared"

typedef struct slot {
	struct slot *next; /* in its bucket, or in the free list */
	int64_t expires_ns; /* 0: never */
	uint8_t key_len, str_len;
	bool is_num;
	double num;
	char key[KEY_MAX];
	char str[STR_MAX];
} slot;

typedef struct table {
	char name[NAME_MAX_LEN + 1];
	size_t size, count;
	int64_t ttl_ns;
	pthread_mutex_t lock;
	slot **buckets;
	size_t n_buckets;
	slot *pool, *free;
} table;

static pthread_mutex_t registry = PTHREAD_MUTEX_INITIALIZER;
static table *tables[MAX_TABLES];
static size_t entries_total;

/* A counter as an integer when it is one (1, not 1.0). */
static void push_number(lua_State *L, double v)
{
	if (v >= -9007199254740992.0 && v <= 9007199254740992.0 && v == (double)(lua_Integer)v)
		lua_pushinteger(L, (lua_Integer)v);
	else
		lua_pushnumber(L, v);
}

static wfpr_rules *host(lua_State *L)
{
	void *ud = NULL;
	lua_getallocf(L, &ud);
	return ud;
}

/* Around a locked region: a watchdog's jump waits for its end. */
static void critical_enter(wfpr_rules *r)
{
	r->in_alloc = 1;
}

static void critical_leave(wfpr_rules *r)
{
	r->in_alloc = 0;
	if (r->abort_pending && r->in_call)
		siglongjmp(r->abort_to, 1);
}

static uint64_t hash(const char *k, size_t n)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a: the keys are the rule's, not an attacker's choice of bucket count */
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)k[i]) * 1099511628211ull;
	return h;
}

static table *table_new(const char *name, size_t size, int64_t ttl_ns)
{
	table *t = calloc(1, sizeof(*t));
	size_t buckets = 16;
	while (buckets < size)
		buckets <<= 1;
	if (!t || !(t->pool = calloc(size, sizeof(slot))) || !(t->buckets = calloc(buckets, sizeof(slot *)))) {
		if (t)
			free(t->pool);
		free(t);
		return NULL;
	}
	strcpy(t->name, name);
	t->size = size;
	t->ttl_ns = ttl_ns;
	t->n_buckets = buckets;
	pthread_mutex_init(&t->lock, NULL);
	for (size_t i = size; i-- > 0;) {
		t->pool[i].next = t->free;
		t->free = &t->pool[i];
	}
	return t;
}

/* Locked. The live slot of key (removing it when expired), and its bucket. */
static slot *find(table *t, const char *k, size_t n, int64_t now, slot ***where)
{
	slot **p = &t->buckets[hash(k, n) & (t->n_buckets - 1)];
	*where = p;
	for (; *p; p = &(*p)->next) {
		slot *s = *p;
		if (s->key_len != n || memcmp(s->key, k, n) != 0)
			continue;
		if (s->expires_ns && s->expires_ns <= now) {
			*p = s->next;
			s->next = t->free;
			t->free = s;
			t->count--;
			return NULL;
		}
		return s;
	}
	return NULL;
}

/* Locked. Room for one more: a free slot, else one that expired (a scan). */
static slot *take(table *t, int64_t now)
{
	for (size_t b = 0; !t->free && b < t->n_buckets; b++)
		for (slot **p = &t->buckets[b]; *p;) {
			slot *s = *p;
			if (s->expires_ns && s->expires_ns <= now) {
				*p = s->next;
				s->next = t->free;
				t->free = s;
				t->count--;
			} else {
				p = &s->next;
			}
		}
	slot *s = t->free;
	if (s)
		t->free = s->next;
	return s;
}

static table *check_table(lua_State *L)
{
	table **t = luaL_checkudata(L, 1, SHARED_META);
	return *t;
}

static const char *check_key(lua_State *L, size_t *n)
{
	const char *k = luaL_checklstring(L, 2, n);
	if (*n == 0 || *n > KEY_MAX)
		luaL_error(L, "a shared table's key has 1 to %d bytes", KEY_MAX);
	return k;
}

/* t:get(key): the number or string, or nil. */
static int shared_get(lua_State *L)
{
	table *t = check_table(L);
	size_t n;
	const char *k = check_key(L, &n);
	wfpr_rules *r = host(L);
	slot copy, **where;
	bool found = false;
	int64_t now = wfpr__now_mono_ns();
	critical_enter(r);
	pthread_mutex_lock(&t->lock);
	slot *s = find(t, k, n, now, &where);
	if (s) {
		copy = *s;
		found = true;
	}
	pthread_mutex_unlock(&t->lock);
	critical_leave(r);
	if (!found)
		lua_pushnil(L);
	else if (copy.is_num)
		push_number(L, copy.num);
	else
		lua_pushlstring(L, copy.str, copy.str_len);
	return 1;
}

/* Locked. key's slot, made (and counted) when absent; NULL when full. */
static slot *find_or_add(table *t, const char *k, size_t n, int64_t now)
{
	slot **bucket, *s = find(t, k, n, now, &bucket);
	if (s || !(s = take(t, now)))
		return s;
	memset(s, 0, sizeof(*s));
	memcpy(s->key, k, n);
	s->key_len = (uint8_t)n;
	s->is_num = true;
	s->expires_ns = t->ttl_ns ? now + t->ttl_ns : 0;
	bucket = &t->buckets[hash(k, n) & (t->n_buckets - 1)]; /* take() may have changed the chain */
	s->next = *bucket;
	*bucket = s;
	t->count++;
	return s;
}

/* t:set(key, value): a number, a string of at most 64 bytes, or nil to
 * delete. true, or nil and "full". */
static int shared_set(lua_State *L)
{
	table *t = check_table(L);
	size_t n, len = 0;
	const char *k = check_key(L, &n);
	int type = lua_type(L, 3);
	const char *str = type == LUA_TSTRING ? lua_tolstring(L, 3, &len) : NULL;
	lua_Number num = type == LUA_TNUMBER ? lua_tonumber(L, 3) : 0;
	if (type != LUA_TNIL && type != LUA_TNUMBER && type != LUA_TSTRING)
		return luaL_error(L, "a shared table holds numbers and strings");
	if (len > STR_MAX)
		return luaL_error(L, "a shared table's string has at most %d bytes", STR_MAX);
	wfpr_rules *r = host(L);
	int64_t now = wfpr__now_mono_ns();
	bool ok = true;
	critical_enter(r);
	pthread_mutex_lock(&t->lock);
	slot **bucket, *s;
	if (type == LUA_TNIL) {
		if ((s = find(t, k, n, now, &bucket)) != NULL) {
			for (slot **p = bucket; *p; p = &(*p)->next)
				if (*p == s) {
					*p = s->next;
					break;
				}
			s->next = t->free;
			t->free = s;
			t->count--;
		}
	} else if ((s = find_or_add(t, k, n, now)) != NULL) {
		s->is_num = type == LUA_TNUMBER;
		s->num = num;
		if (str)
			memcpy(s->str, str, len);
		s->str_len = (uint8_t)len;
	} else {
		ok = false;
	}
	pthread_mutex_unlock(&t->lock);
	critical_leave(r);
	if (!ok) {
		lua_pushnil(L);
		lua_pushliteral(L, "full");
		return 2;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* t:incr(key [, by]): the counter after adding by (1); a missing or
 * expired one starts at 0 and lives the table's ttl. nil and "full". */
static int shared_incr(lua_State *L)
{
	table *t = check_table(L);
	size_t n;
	const char *k = check_key(L, &n);
	lua_Number by = luaL_optnumber(L, 3, 1);
	wfpr_rules *r = host(L);
	int64_t now = wfpr__now_mono_ns();
	bool ok = true, was_string = false;
	lua_Number value = 0;
	critical_enter(r);
	pthread_mutex_lock(&t->lock);
	slot *s = find_or_add(t, k, n, now);
	if (!s)
		ok = false;
	else if (!s->is_num)
		was_string = true;
	else
		value = s->num += by;
	pthread_mutex_unlock(&t->lock);
	critical_leave(r);
	if (was_string)
		return luaL_error(L, "shared %s: key '%s' holds a string", t->name, lua_tostring(L, 2));
	if (!ok) {
		lua_pushnil(L);
		lua_pushliteral(L, "full");
		return 2;
	}
	push_number(L, value);
	return 1;
}

/* #t and t:count(): the live entries (some may have expired since). */
static int shared_count(lua_State *L)
{
	table *t = check_table(L);
	wfpr_rules *r = host(L);
	critical_enter(r);
	pthread_mutex_lock(&t->lock);
	size_t count = t->count;
	pthread_mutex_unlock(&t->lock);
	critical_leave(r);
	lua_pushinteger(L, (lua_Integer)count);
	return 1;
}

/* wfpr.shared(name [, {size = N, ttl = S}]): the process's table of that
 * name, made on first use (size 1024 and no ttl by default). Later calls
 * get the same table; their options must agree or be left out. */
static int shared_open(lua_State *L)
{
	size_t name_len;
	const char *name = luaL_checklstring(L, 1, &name_len);
	lua_Integer size = 1024;
	lua_Number ttl = 0;
	bool given = !lua_isnoneornil(L, 2);
	if (given) {
		luaL_checktype(L, 2, LUA_TTABLE);
		if (lua_getfield(L, 2, "size") != LUA_TNIL)
			size = luaL_checkinteger(L, -1);
		if (lua_getfield(L, 2, "ttl") != LUA_TNIL)
			ttl = luaL_checknumber(L, -1);
		lua_pop(L, 2);
	}
	if (name_len == 0 || name_len > NAME_MAX_LEN)
		return luaL_error(L, "wfpr.shared: a name has 1 to %d bytes", NAME_MAX_LEN);
	if (size < 1 || size > (lua_Integer)MAX_ENTRIES_TOTAL)
		return luaL_error(L, "wfpr.shared: size is 1 to %d", (int)MAX_ENTRIES_TOTAL);
	if (ttl < 0 || ttl > 86400 * 365)
		return luaL_error(L, "wfpr.shared: ttl is 0 (none) to a year, in seconds");
	table **handle = lua_newuserdatauv(L, sizeof(table *), 0); /* before the lock: it allocates */
	wfpr_rules *r = host(L);
	const char *err = NULL;
	table *t = NULL;
	critical_enter(r);
	pthread_mutex_lock(&registry);
	size_t i = 0;
	for (; i < MAX_TABLES && tables[i]; i++)
		if (strcmp(tables[i]->name, name) == 0)
			break;
	if (i < MAX_TABLES && tables[i]) {
		t = tables[i];
		if (given && (t->size != (size_t)size || t->ttl_ns != (int64_t)(ttl * 1e9)))
			err = "wfpr.shared: this table exists with other options";
	} else if (i == MAX_TABLES) {
		err = "wfpr.shared: a process has at most 32 shared tables";
	} else if (entries_total + (size_t)size > MAX_ENTRIES_TOTAL) {
		err = "wfpr.shared: the shared tables of a process hold at most 262144 entries in all";
	} else if (!(t = table_new(name, (size_t)size, (int64_t)(ttl * 1e9)))) {
		err = "wfpr.shared: out of memory";
	} else {
		tables[i] = t;
		entries_total += (size_t)size;
	}
	pthread_mutex_unlock(&registry);
	critical_leave(r);
	if (err)
		return luaL_error(L, "%s", err);
	*handle = t;
	luaL_setmetatable(L, SHARED_META);
	return 1;
}

void wfpr__shared_open(lua_State *L)
{
	static const luaL_Reg methods[] = {{"get", shared_get}, {"set", shared_set}, {"incr", shared_incr},
	                                   {"count", shared_count}, {NULL, NULL}};
	luaL_newmetatable(L, SHARED_META);
	lua_newtable(L);
	luaL_setfuncs(L, methods, 0);
	lua_setfield(L, -2, "__index");
	lua_pushcfunction(L, shared_count);
	lua_setfield(L, -2, "__len");
	lua_pushliteral(L, "locked");
	lua_setfield(L, -2, "__metatable");
	lua_pop(L, 1);
}

void wfpr__shared_add(lua_State *L)
{
	lua_pushcfunction(L, shared_open);
	lua_setfield(L, -2, "shared");
}
