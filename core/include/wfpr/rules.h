#ifndef WFPR_RULES_H
#define WFPR_RULES_H

/*
 * The Lua rule host: inspection rules written in Lua 5.4, run in a sandbox
 * with a memory cap and an instruction budget per call. A rule that fails,
 * runs too long or allocates too much gets the configured default verdict;
 * the host keeps serving. docs/rules.md is the rule writer's guide.
 * Link with libwfpr_rules (it brings the system's liblua5.4).
 */

#include <sys/socket.h>
#include <sys/types.h>
#include "common.h"
#include "layer.h"
#include "record.h"

WFPR_BEGIN_DECL

typedef struct wfpr_rules wfpr_rules;

/* on_connect */
typedef enum wfpr_verdict {
	WFPR_VERDICT_PASS = 0,    /* relay without looking at the data */
	WFPR_VERDICT_INSPECT = 1, /* relay, calling on_data for each chunk */
	WFPR_VERDICT_BLOCK = 2    /* close the connection */
} wfpr_verdict;

/* on_data, on_datagram */
typedef enum wfpr_data_verdict {
	WFPR_DATA_PASS = 0,
	WFPR_DATA_REPLACE = 1, /* send *out instead */
	WFPR_DATA_DROP = 2,    /* send nothing for this chunk */
	WFPR_DATA_CLOSE = 3,   /* close the connection (or the flow) */
	WFPR_DATA_NEED_MORE = 4 /* TCP: hold this chunk; call again with it and the next bytes once *out_len
	                         * more bytes came (at most WFPR_RULES_HOLD_MAX held in all) */
} wfpr_data_verdict;

/* How a call into Lua ended. */
typedef enum wfpr_rule_outcome {
	WFPR_RULE_OK = 0,
	WFPR_RULE_ERROR = 1,   /* the rule raised, or returned something invalid */
	WFPR_RULE_TIMEOUT = 2, /* it ran past its instruction budget */
	WFPR_RULE_NOMEM = 3    /* it tried to pass its memory cap */
} wfpr_rule_outcome;

WFPR_EXTERN const char *wfpr_rule_outcome_name(wfpr_rule_outcome outcome);

/* Called once per hook and kind of failure (the first), with the message
 * and traceback. NULL: the first of each is written to stderr. */
typedef void (*wfpr_rules_log_fn)(void *user, const char *hook, wfpr_rule_outcome outcome, const char *message);

typedef struct wfpr_rules_options {
	unsigned int version;
	size_t memory_limit;         /* bytes the Lua state may hold */
	uint64_t instruction_budget; /* VM instructions per hook call */
	int fail_closed;             /* on failure: 0 pass (fail-open), 1 block/close */
	wfpr_rules_log_fn log;
	void *log_user;
	unsigned int time_limit_ms; /* wall clock per hook call, library functions and all (0: 100) */
} wfpr_rules_options;

#define WFPR_RULES_OPTIONS_VERSION 1
#define WFPR_RULES_OPTIONS_INIT {WFPR_RULES_OPTIONS_VERSION, 16u << 20, 1000000u, 0, NULL, NULL, 100}

/* What the host tells a rule about a connection (or a UDP flow). */
typedef struct wfpr_rule_conn {
	unsigned int version;
	uint64_t id;                          /* stable per connection: conn.tag lives under it */
	int protocol;                         /* IPPROTO_TCP or IPPROTO_UDP */
	struct sockaddr_storage original_dst;
	struct sockaddr_storage client;
	const void *records;                  /* the redirect record, decoded into conn.hops */
	size_t records_len;
	wfpr_redirect_state state;            /* for this proxy's redirector */
	wfpr_process process;                 /* the client process (the first hop's); pid 0 if unknown */
} wfpr_rule_conn;

#define WFPR_RULE_CONN_VERSION 2

typedef struct wfpr_rule_close_stats {
	uint64_t bytes_up, bytes_down;
	uint64_t duration_ms;
} wfpr_rule_close_stats;

typedef struct wfpr_rules_stats {
	uint64_t calls, errors, timeouts, nomem;
	size_t memory_in_use, memory_peak;
} wfpr_rules_stats;

/* 0, or a wfpr_err (WSAEINVAL for bad options, WSAENOBUFS). */
WFPR_EXTERN int wfpr_rules_new(wfpr_rules **out, const wfpr_rules_options *opts);
WFPR_EXTERN void wfpr_rules_free(wfpr_rules *rules);

/* Load a rules file or string (text only, never bytecode) and run its top
 * level in the sandbox. 0, or WSAEINVAL with the reason in
 * wfpr_rules_error() (syntax errors carry the line). Loading again replaces
 * the hooks. */
WFPR_EXTERN int wfpr_rules_load_file(wfpr_rules *rules, const char *path);
WFPR_EXTERN int wfpr_rules_load_string(wfpr_rules *rules, const char *chunkname, const char *source, size_t len);
WFPR_EXTERN const char *wfpr_rules_error(const wfpr_rules *rules);

/* Problems a loaded rule has that do not stop it loading: global functions
 * named like hooks that are not hooks (a typo such as on_conect). One per
 * line; "" when none. */
WFPR_EXTERN const char *wfpr_rules_warnings(const wfpr_rules *rules);

/* 1 if the loaded rule defines that hook ("on_connect", ...). */
WFPR_EXTERN int wfpr_rules_has_hook(const wfpr_rules *rules, const char *hook);

WFPR_EXTERN wfpr_verdict wfpr_rules_on_connect(wfpr_rules *rules, const wfpr_rule_conn *conn);

/* direction: 0 client to server ("up"), 1 server to client ("down"). For
 * WFPR_DATA_REPLACE, *out points into the host and stays valid until the
 * next call on rules. */
WFPR_EXTERN wfpr_data_verdict wfpr_rules_on_data(wfpr_rules *rules, const wfpr_rule_conn *conn, int direction,
                                                 const void *chunk, size_t len, const void **out, size_t *out_len);
WFPR_EXTERN wfpr_data_verdict wfpr_rules_on_datagram(wfpr_rules *rules, const wfpr_rule_conn *flow, int direction,
                                                     const void *data, size_t len, const void **out, size_t *out_len);
/* Also forgets conn.tag for this connection. */
/* Why the last on_connect, on_data or on_datagram call gave its verdict:
 * the reason the rule returned with it (`return close, "EICAR"`, at most
 * 127 bytes), "rule error: the default verdict" (timeout, out of memory)
 * when the call failed, or "". Valid until the next call. */
WFPR_EXTERN const char *wfpr_rules_reason(const wfpr_rules *rules);
/* The annotations the last on_connect made with conn:annotate(key, value),
 * into out (at most max of them, WFPR_ANNOTATIONS_MAX in all); their
 * number. A host puts them on the socket that passes the connection on
 * (wfpr_annotate), so that later proxies read them as this proxy's hop's.
 * None after a failed call. */
WFPR_EXTERN size_t wfpr_rules_annotations(const wfpr_rules *rules, wfpr_annotation *out, size_t max);
/* The bytes a host holds at most for need_more, per connection and direction. */
#define WFPR_RULES_HOLD_MAX 65536
/* The verdict for bytes a rule cannot be asked about (held bytes past
 * WFPR_RULES_HOLD_MAX, or at the end of the stream): WFPR_DATA_PASS, or
 * WFPR_DATA_CLOSE when the rules fail closed. */
WFPR_EXTERN wfpr_data_verdict wfpr_rules_default_data_verdict(const wfpr_rules *rules);
WFPR_EXTERN void wfpr_rules_on_close(wfpr_rules *rules, const wfpr_rule_conn *conn, const wfpr_rule_close_stats *stats);

/* A wfpr_classify_fn: register it as a callout with user = rules. The
 * rule's classify(req) returns "permit", "block" or {redirect = "NAME"}
 * for a proxy named with wfpr_rules_set_proxy. */
WFPR_EXTERN wfpr_action wfpr_rules_classify(void *rules, wfpr_connect_request *request);
WFPR_EXTERN int wfpr_rules_set_proxy(wfpr_rules *rules, const char *name, const struct sockaddr_storage *addr);

WFPR_EXTERN int wfpr_rules_get_stats(wfpr_rules_stats *out, const wfpr_rules *rules);

WFPR_END_DECL

#endif
