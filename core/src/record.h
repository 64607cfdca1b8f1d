#ifndef WFPR_SRC_RECORD_H
#define WFPR_SRC_RECORD_H

/* The one place that knows the redirect-record wire format. */

#include <stdbool.h>
#include "wfpr/record.h"

#define RECORD_KEY_SIZE 16

typedef struct record_view {
	size_t hop_count;
	wfpr_hop hops[WFPR_RECORD_MAX_HOPS];
	/* per hop, the bytes its token signs (inside the parsed blob) */
	const uint8_t *signed_data[WFPR_RECORD_MAX_HOPS];
	size_t signed_len[WFPR_RECORD_MAX_HOPS];
} record_view;

/* Structure only: magic, version, lengths, policy. 0 or WFPR_WSAEINVAL. */
int wfpr__record_parse(record_view *out, const uint8_t *blob, size_t len);

/* Every hop's token checks under key. */
bool wfpr__record_tokens_valid(const record_view *view, const uint8_t key[RECORD_KEY_SIZE]);

/* A new blob: the hops of prev plus hop, whose token is computed here under
 * key and written back into hop. prev is NULL (and prev_view too), or a
 * blob that already passed wfpr__record_parse (into prev_view) and
 * wfpr__record_tokens_valid. WFPR_WSAELOOP at the hop limit. */
int wfpr__record_append(uint8_t **out, size_t *out_len, const record_view *prev_view, const uint8_t *prev,
                  size_t prev_len, wfpr_hop *hop, const uint8_t key[RECORD_KEY_SIZE]);

#endif
