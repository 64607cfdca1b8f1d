#ifndef WFPR_SRC_RECORD_H
#define WFPR_SRC_RECORD_H

/* The one place that knows the redirect-record wire format. */

#include <stdbool.h>
#include "wfpr/record.h"
#include "record_wire.h"

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
 * wfpr__record_tokens_valid. notes (notes_len bytes, 0 for none; only with
 * prev) are the annotations the connecting proxy attached: the new hop
 * carries them, and prev's newest hop gets them when decoded.
 * WFPR_WSAELOOP at the hop limit. */
int wfpr__record_append(uint8_t **out, size_t *out_len, const record_view *prev_view, const uint8_t *prev,
                  size_t prev_len, wfpr_hop *hop, const uint8_t *notes, size_t notes_len,
                  const uint8_t key[RECORD_KEY_SIZE]);

/* Annotations as the wire carries them (record_wire.h), at most
 * WFPR__WIRE_NOTES_MAX bytes in notes, *len of them used: add key=value,
 * replacing key's value if it has one. 0, WFPR_WSAEINVAL for a bad key or
 * value, WFPR_WSAEMSGSIZE when it does not fit. */
int wfpr__notes_put(uint8_t *notes, size_t *len, const char *key, const char *value);
/* The pairs of notes (wire form) into out, at most max; their number (0
 * for malformed notes). */
size_t wfpr__notes_list(const uint8_t *notes, size_t len, wfpr_annotation *out, size_t max);

#endif
