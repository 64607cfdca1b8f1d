#ifndef WFPR_BROKER_H
#define WFPR_BROKER_H

/*
 * The preload backend. The broker holds the layer (its redirectors,
 * filters and records) and answers over a Unix socket: the LD_PRELOAD shim
 * in unmodified programs asks it to classify their connects and new UDP
 * flows, and the proxies QUERY and SET through it. A proxy process calls
 * wfpr_preload_attach: from then on its wfpr_connect, wfpr_ioctl,
 * wfpr_sendmsg, wfpr_recvmsg and wfpr_closesocket go through the broker,
 * and WSAENETDOWN says the broker is gone. No privilege is needed.
 *
 * What the broker believes, and what it checks (docs/trust.md): only a
 * process that presents the broker's registration key may register a
 * proxy, and only at an address where a socket of its own listens (the
 * library sends that socket with the request); a record is issued only for
 * a socket the caller shows the broker; and the programs of one user may
 * hold at most user_quota records.
 */

#include <stddef.h>
#include <sys/socket.h>
#include "common.h"
#include "layer.h"
#include "record.h"

WFPR_BEGIN_DECL

typedef struct wfpr_broker wfpr_broker;

typedef struct wfpr_broker_options {
	unsigned int version;
	const char *path; /* the Unix socket to listen on (created mode 0600; an old one is replaced) */
	/* version 2: */
	const char *key;        /* the registration key, 64 hex digits; NULL: a random one (wfpr_broker_key) */
	size_t user_quota;      /* records the programs of one user may hold; 0: 50,000 (proxies: no limit) */
} wfpr_broker_options;

#define WFPR_BROKER_OPTIONS_VERSION 2
#define WFPR_BROKER_OPTIONS_INIT {WFPR_BROKER_OPTIONS_VERSION, NULL, NULL, 0}
#define WFPR_BROKER_KEY_SIZE 32 /* bytes; 64 hex digits as text */

typedef struct wfpr_broker_stats {
	uint64_t requests, bad_requests, clients, proxies, records_live;
	uint64_t refused_registrations; /* a wrong key, or an address the caller does not listen on */
	uint64_t over_quota;            /* connects refused (WSAENOBUFS): their user held its quota */
} wfpr_broker_stats;

WFPR_EXTERN int wfpr_broker_new(wfpr_broker **out, const wfpr_broker_options *opts);
/* Serve until wfpr_broker_stop; 0, or a wfpr_err. */
WFPR_EXTERN int wfpr_broker_run(wfpr_broker *broker);
/* From any thread or a signal handler. */
WFPR_EXTERN void wfpr_broker_stop(wfpr_broker *broker);
/* From any thread. */
WFPR_EXTERN int wfpr_broker_get_stats(wfpr_broker_stats *out, const wfpr_broker *broker);
/* The registration key, 64 hex digits (the broker owns the text). Give it
 * to the proxies, never to the programs they inspect. */
WFPR_EXTERN const char *wfpr_broker_key(const wfpr_broker *broker);
/* The broker's layer (for wfpr_layer_get_stats); the broker owns it. */
WFPR_EXTERN const wfpr_layer *wfpr_broker_layer(const wfpr_broker *broker);
WFPR_EXTERN void wfpr_broker_free(wfpr_broker *broker);

/* This process's sockets go through the broker at path (NULL: detach).
 * WFPR_WSAEADDRINUSE while another backend (a layer, eBPF) is attached. */
WFPR_EXTERN int wfpr_preload_attach(const char *path);
/* The broker's registration key for this process's registrations, 64 hex
 * digits (WFPR_WSAEINVAL otherwise); NULL: read it, at each registration,
 * from the broker's key file, the socket's path plus ".key". */
WFPR_EXTERN int wfpr_preload_set_key(const char *key);
/* Make this process a redirector: connections are redirected to address
 * (TCP and UDP, an IPv4 or IPv6 loopback address), in registration order
 * among the redirectors. This process must hold a socket that listens on
 * address (TCP, or UDP bound there), and the key: else WFPR_WSAEADDRNOTAVAIL
 * or WFPR_WSAEACCES. out_id is its redirector id, for
 * wfpr_redirect_state_for_id. It lasts while this process stays connected
 * to the broker; one process may register several. */
WFPR_EXTERN int wfpr_preload_register(uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE], const char *name,
                                      const struct sockaddr_storage *address);
/* The same, for a proxy that also listens on IPv6 (address6, AF_INET6):
 * IPv6 connections and datagrams go there, so that IPV6_V6ONLY sockets
 * reach it, and replies to a dual-stack socket come from where it sent. */
WFPR_EXTERN int wfpr_preload_register_dual(uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE], const char *name,
                                           const struct sockaddr_storage *address,
                                           const struct sockaddr_storage *address6);
/* The same with a filter: the broker redirects to this proxy only the
 * connections match takes (wfpr/match.h text; NULL or "": all), asking
 * redirectors highest weight first (equal weights in registration order;
 * the two calls above use WFPR_DEFAULT_WEIGHT). WFPR_WSAEINVAL for a match
 * that does not parse (wfpr_match_parse says why). */
#define WFPR_DEFAULT_WEIGHT 100
WFPR_EXTERN int wfpr_preload_register_filtered(uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE], const char *name,
                                               const struct sockaddr_storage *address,
                                               const struct sockaddr_storage *address6, uint32_t weight,
                                               const char *match);
/* A redirector's name from its id, as the broker knows it. */
WFPR_EXTERN int wfpr_preload_redirector_name(char *out, size_t len, const uint8_t id[WFPR_REDIRECTOR_ID_SIZE]);

WFPR_END_DECL

#endif
