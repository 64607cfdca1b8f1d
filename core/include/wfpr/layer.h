#ifndef WFPR_LAYER_H
#define WFPR_LAYER_H

/*
 * The redirect layer: filters that match connections and point at callouts,
 * callouts that classify (permit, block or redirect to a local proxy), and
 * redirect handles, one per cooperating redirector. The layer appends a hop
 * to the connection's redirect record on every redirect and enforces the
 * redirect-state rules, so a connection passes each redirector at most once.
 */

#include <sys/socket.h>
#include <sys/types.h>
#include "common.h"

WFPR_BEGIN_DECL

typedef struct wfpr_layer wfpr_layer;
typedef struct wfpr_redirect_handle wfpr_redirect_handle;

/* FWPS_CONNECTION_REDIRECT_STATE, same values. */
typedef enum wfpr_redirect_state {
	WFPR_CONNECTION_NOT_REDIRECTED = 0,
	WFPR_CONNECTION_REDIRECTED_BY_SELF = 1,
	WFPR_CONNECTION_REDIRECTED_BY_OTHER = 2,
	WFPR_CONNECTION_PREVIOUSLY_REDIRECTED_BY_SELF = 3
} wfpr_redirect_state;

WFPR_EXTERN const char *wfpr_redirect_state_name(wfpr_redirect_state state);
/* The redirect-state rule: may a redirector whose state for a connection
 * is `state` redirect it? 1 for NOT_REDIRECTED and REDIRECTED_BY_OTHER; 0
 * when it already did (REDIRECTED_BY_SELF, PREVIOUSLY_REDIRECTED_BY_SELF),
 * so that it permits and no proxy loop can form; 0 for a value outside
 * the enum. The layer applies it to every callout's REDIRECT. */
WFPR_EXTERN int wfpr_redirect_state_allows_redirect(wfpr_redirect_state state);

/*
 * Every matching filter's callout is asked in weight order, so each
 * cooperating redirector gets its turn. BLOCK and REDIRECT end the
 * evaluation; a connection nobody blocks or redirects is permitted.
 */
typedef enum wfpr_action {
	WFPR_ACTION_PERMIT = 0,  /* this callout does not redirect; the others are asked */
	WFPR_ACTION_BLOCK = 1,   /* refuse the connect (WSAEACCES) */
	WFPR_ACTION_REDIRECT = 2 /* connect to redirect_to instead */
} wfpr_action;

#define WFPR_CONTEXT_MAX_SIZE 4096

/*
 * What a callout's classify sees and may change. The layer fills the
 * inputs; to redirect, the callout sets redirect_to (and optionally
 * target_pid and context) and returns WFPR_ACTION_REDIRECT. The layer
 * copies the context right after classify returns, so it must outlive the
 * call (not a buffer on classify's own stack).
 */
typedef struct wfpr_connect_request {
	unsigned int version;
	/* inputs */
	int protocol;                   /* IPPROTO_TCP or IPPROTO_UDP */
	struct sockaddr_storage remote; /* the destination asked for */
	struct sockaddr_storage local;  /* the socket's local address (port 0 if unbound) */
	pid_t pid;
	uid_t uid;
	size_t hop_count;               /* hops already in the connection's record */
	wfpr_redirect_state state;      /* the state for this callout's redirect handle */
	const wfpr_redirect_handle *handle; /* this callout's handle, or NULL */
	/* outputs, for WFPR_ACTION_REDIRECT */
	struct sockaddr_storage redirect_to; /* the local proxy's listening address */
	pid_t target_pid;               /* the proxy's pid, 0 if unknown */
	const void *context;            /* opaque context for the proxy; NULL: the default */
	size_t context_len;             /* at most WFPR_CONTEXT_MAX_SIZE */
} wfpr_connect_request;

#define WFPR_CONNECT_REQUEST_VERSION 1

typedef wfpr_action (*wfpr_classify_fn)(void *user, wfpr_connect_request *request);

typedef struct wfpr_callout_options {
	unsigned int version;
	const char *name;
	wfpr_classify_fn classify;
	void *user;
	const wfpr_redirect_handle *handle; /* required for callouts that redirect */
} wfpr_callout_options;

#define WFPR_CALLOUT_OPTIONS_VERSION 1
#define WFPR_CALLOUT_OPTIONS_INIT {WFPR_CALLOUT_OPTIONS_VERSION, NULL, NULL, NULL, NULL}

/* Conditions left at their INIT value match everything. */
typedef struct wfpr_filter_options {
	unsigned int version;
	const char *name;
	uint32_t callout_id;
	uint64_t weight;                       /* higher weights are evaluated first */
	int protocol;                          /* 0: any */
	struct sockaddr_storage remote_prefix; /* AF_UNSPEC: any */
	unsigned int remote_prefix_len;
	uint16_t remote_port_min, remote_port_max; /* 0, 0: any */
	uint16_t local_port;                   /* 0: any */
	int64_t pid;                           /* -1: any */
	int64_t uid;                           /* -1: any */
} wfpr_filter_options;

#define WFPR_FILTER_OPTIONS_VERSION 1
#define WFPR_FILTER_OPTIONS_INIT \
	{WFPR_FILTER_OPTIONS_VERSION, NULL, 0, 0, 0, {0}, 0, 0, 0, 0, -1, -1}

WFPR_EXTERN int wfpr_layer_new(wfpr_layer **out);
WFPR_EXTERN void wfpr_layer_free(wfpr_layer *layer);

/*
 * A handle identifies one redirector (FwpsRedirectHandleCreate). id is its
 * 16-byte provider id, or NULL for a random one; two handles of one layer
 * cannot share an id. The layer owns the handle until wfpr_layer_free.
 */
WFPR_EXTERN int wfpr_redirect_handle_create(wfpr_redirect_handle **out, wfpr_layer *layer,
                                            const uint8_t *id, const char *name);
WFPR_EXTERN const uint8_t *wfpr_redirect_handle_id(const wfpr_redirect_handle *handle);
WFPR_EXTERN uint64_t wfpr_redirect_handle_number(const wfpr_redirect_handle *handle);
WFPR_EXTERN const char *wfpr_redirect_handle_name(const wfpr_redirect_handle *handle);

/* The state of a connection with these records, for this handle
 * (FwpsQueryConnectionRedirectState). NULL/0 records: NOT_REDIRECTED. */
WFPR_EXTERN int wfpr_query_redirect_state(wfpr_redirect_state *out, const void *records,
                                          size_t len, const wfpr_redirect_handle *handle);

/* The same for a redirector known by its id, in a process that has no
 * handle of the layer (a proxy of the preload backend). The record's
 * structure is checked, not its tokens: use it on a record QUERY gave. */
WFPR_EXTERN int wfpr_redirect_state_for_id(wfpr_redirect_state *out, const void *records, size_t len,
                                           const uint8_t id[16]);

WFPR_EXTERN int wfpr_callout_register(uint32_t *out, wfpr_layer *layer, const wfpr_callout_options *opts);
WFPR_EXTERN int wfpr_filter_add(uint64_t *out, wfpr_layer *layer, const wfpr_filter_options *opts);
WFPR_EXTERN int wfpr_filter_remove(wfpr_layer *layer, uint64_t filter_id);

typedef struct wfpr_layer_stats {
	uint64_t classified;   /* connects and new flows seen */
	uint64_t redirected;
	uint64_t blocked;
	uint64_t refused_redirects; /* a callout asked to redirect where the state forbids it */
	uint64_t hop_limit;    /* blocked because the chain would pass the hop limit */
	uint64_t bad_records;  /* SET refused a malformed, forged or dead record */
} wfpr_layer_stats;

WFPR_EXTERN int wfpr_layer_get_stats(wfpr_layer_stats *out, const wfpr_layer *layer);

WFPR_END_DECL

#endif
