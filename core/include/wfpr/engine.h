#ifndef WFPR_ENGINE_H
#define WFPR_ENGINE_H

/*
 * The redirect service engine: a transparent TCP proxy on an epoll loop of
 * non-blocking sockets. For each connection it accepts it QUERYs the record
 * and context (overlapped, so a record still on its way never blocks the
 * loop), asks the rules (on_connect, then on_data per chunk for inspected
 * connections), SETs the record on its outbound socket, connects to the
 * original destination and relays both ways with half-close. With udp set,
 * it serves UDP flows on the same port: the records come with a flow's
 * first datagram and go on with the first datagram it forwards; replies go
 * back to the client; an idle flow ends. Every decision is one JSON line.
 */

#include <sys/socket.h>
#include "common.h"
#include "layer.h"
#include "rules.h"

WFPR_BEGIN_DECL

typedef struct wfpr_engine wfpr_engine;

/* Writes a redirector's name for the log into buf (len bytes); returns buf, or NULL for its id in hex. */
typedef const char *(*wfpr_hop_name_fn)(void *user, const uint8_t id[16], char *buf, size_t len);

/* Hooks in C, in place of Lua rules: each may be NULL (pass; no data
 * inspection). They run on the engine's thread and must not block.
 * on_data sees each chunk of an inspected connection (and each datagram
 * of an inspected UDP flow; direction 0 up, 1 down); for
 * WFPR_DATA_REPLACE it points *out at bytes that stay valid until the
 * next call. */
typedef struct wfpr_engine_hooks {
	wfpr_verdict (*on_connect)(void *user, const wfpr_rule_conn *conn);
	wfpr_data_verdict (*on_data)(void *user, const wfpr_rule_conn *conn, int direction, const void *data, size_t len,
	                             const void **out, size_t *out_len);
	void (*on_close)(void *user, const wfpr_rule_conn *conn, const wfpr_rule_close_stats *stats);
	void *user;
} wfpr_engine_hooks;

typedef struct wfpr_engine_options {
	unsigned int version;
	const char *name;                             /* the proxy's name in the log */
	const struct sockaddr_storage *listen_address; /* NULL: 127.0.0.1, any port */
	const wfpr_redirect_handle *handle;           /* this proxy's redirector, for conn.state */
	wfpr_rules *rules;                            /* NULL: pass everything; used by the loop's thread only */
	size_t buffer_size;                           /* per direction, at most; 0: 1 MiB. A connection starts
	                                               * with 16 KiB and grows to it once a stream fills that */
	int log_fd;                                   /* JSON lines, one write each; -1: none.
	                                                 Open it O_APPEND when engines share it. */
	int udp;                                      /* also serve UDP flows on the same port */
	unsigned int udp_idle_ms;                     /* a UDP flow idle this long ends; 0: 30 s */
	unsigned int tcp_idle_ms;                     /* a connection idle this long is reset; 0: never */
	const uint8_t *redirector_id;                 /* without a handle (preload backend): this proxy's id */
	wfpr_hop_name_fn hop_name;                    /* names the log's hops; NULL: their ids in hex */
	void *hop_name_user;
	int reuse_port;                               /* SO_REUSEPORT: several engines (workers) share one address */
	const wfpr_engine_hooks *hooks;               /* C hooks, used instead of rules; NULL: none */
	/* version 2: */
	const char *record_dir; /* a transcript per inspected TCP connection, for `wfpr rules test`; NULL: none */
} wfpr_engine_options;

#define WFPR_ENGINE_OPTIONS_VERSION 2
#define WFPR_ENGINE_OPTIONS_INIT \
	{WFPR_ENGINE_OPTIONS_VERSION, NULL, NULL, NULL, NULL, 0, -1, 0, 0, 0, NULL, NULL, NULL, 0, NULL, NULL}

typedef struct wfpr_engine_stats {
	uint64_t accepted, passed, inspected, blocked, failed, timed_out;
	uint64_t flows, datagrams_up, datagrams_down, flows_expired;
	uint64_t bytes_up, bytes_down; /* relayed, TCP and UDP, of the connections and flows that ended */
	uint64_t active;
} wfpr_engine_stats;

WFPR_EXTERN int wfpr_engine_new(wfpr_engine **out, const wfpr_engine_options *opts);
/* Where it listens (to redirect to). */
WFPR_EXTERN int wfpr_engine_address(struct sockaddr_storage *out, const wfpr_engine *engine);
/* Serve until wfpr_engine_stop; 0, or a wfpr_err. */
WFPR_EXTERN int wfpr_engine_run(wfpr_engine *engine);
/* From any thread: wfpr_engine_run returns after closing its connections.
 * Those already made are settled first (accepted from the backlog, their
 * record and verdict come, the log says so; for a second at most), so a
 * program that connected just before the stop is still logged. */
WFPR_EXTERN void wfpr_engine_stop(wfpr_engine *engine);
/* From the loop's own thread (a hook), or once wfpr_engine_run has returned. */
/* Called once the engine no longer uses rules it was given with
 * wfpr_engine_replace_rules, on the loop's thread (or the caller's, for
 * rules replaced before the loop took them): free them there. */
typedef void (*wfpr_engine_rules_release_fn)(void *user, wfpr_rules *rules);
/* From any thread: connections and flows that start from now on get
 * rules; those running keep the rules they started under, to their end.
 * Rules replaced that nothing uses any more go to the release given with
 * them (opts.rules stay the caller's: it frees them after
 * wfpr_engine_free). 0, WFPR_WSAEFAULT, WFPR_WSAEINVAL for an engine with
 * C hooks, WFPR_WSAENOBUFS. */
WFPR_EXTERN int wfpr_engine_replace_rules(wfpr_engine *engine, wfpr_rules *rules, wfpr_engine_rules_release_fn release,
                                          void *user);
WFPR_EXTERN int wfpr_engine_get_stats(wfpr_engine_stats *out, const wfpr_engine *engine);
WFPR_EXTERN void wfpr_engine_free(wfpr_engine *engine);

WFPR_END_DECL

#endif
