#ifndef WFPR_SRC_LAYER_H
#define WFPR_SRC_LAYER_H

/*
 * What backends ask of the layer. The layer decides (filters, callouts,
 * redirect state, hop limit) and issues records; a backend only stores and
 * finds them and carries out the redirect.
 */

#include <stdbool.h>
#include "record.h"
#include "wfpr/layer.h"

typedef struct conn_info {
	int protocol;
	struct sockaddr_storage remote;
	struct sockaddr_storage local;
	pid_t pid;
	uid_t uid;
	const uint8_t *notes; /* the annotations its socket carries (wire form), or NULL */
	size_t notes_len;
	bool probe; /* a look ahead at a connect still to come: the stats count nothing */
} conn_info;

typedef struct redirect_decision {
	wfpr_action action;
	int err; /* for BLOCK: WFPR_WSAEACCES, or WFPR_WSAELOOP at the hop limit */
	const wfpr_redirect_handle *handle;
	struct sockaddr_storage target;
	pid_t target_pid;
	uint8_t *context; /* owned; NULL: the default context is made at issue time */
	size_t context_len;
	record_view *chain; /* owned; the parsed records the new hop goes after (NULL: none) */
} redirect_decision;

/* records: the blob already SET on the connecting socket (checked), or NULL. */
int wfpr__layer_classify(wfpr_layer *layer, const conn_info *conn, const uint8_t *records,
                   size_t records_len, redirect_decision *out);

/* The record for a REDIRECT decision, once the backend knows the final local
 * address: records (the same that were classified) plus one new hop. Also
 * fills the default context. */
int wfpr__layer_issue(wfpr_layer *layer, redirect_decision *decision, const conn_info *conn,
                const uint8_t *records, size_t records_len,
                uint8_t **out_record, size_t *out_record_len, uint8_t out_token[WFPR_TOKEN_SIZE]);

void wfpr__redirect_decision_cleanup(redirect_decision *decision);

/* Structure and tokens: was this blob issued by this layer? (Liveness is the
 * backend's to check.) 0, or WFPR_WSAEINVAL. */
int wfpr__layer_check_records(wfpr_layer *layer, const uint8_t *blob, size_t len,
                        uint8_t out_last_token[WFPR_TOKEN_SIZE]);

void wfpr__layer_count_bad_record(wfpr_layer *layer);

/* True while this thread runs a callout or completion routine. */
bool wfpr__layer_in_callback(void);
void wfpr__layer_set_in_callback(bool on);

#endif
