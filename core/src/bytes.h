#ifndef WFPR_SRC_BYTES_H
#define WFPR_SRC_BYTES_H

/*
 * A bounds-checked read cursor and a growing builder that back-fills
 * lengths (after BoringSSL's CBS/CBB). All multi-byte values are big-endian.
 * Every get checks the remaining length and advances only on success.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cursor {
	const uint8_t *data;
	size_t len;
} cursor;

static inline void cursor_init(cursor *c, const void *data, size_t len)
{
	c->data = data;
	c->len = len;
}

bool cursor_get_u8(cursor *c, uint8_t *out);
bool cursor_get_u16(cursor *c, uint16_t *out);
bool cursor_get_u32(cursor *c, uint32_t *out);
bool cursor_get_u64(cursor *c, uint64_t *out);
bool cursor_get_bytes(cursor *c, const uint8_t **out, size_t n);
bool cursor_copy_bytes(cursor *c, void *out, size_t n);
/* A child cursor over the next n bytes: nested lengths confine the child. */
bool cursor_get_sub(cursor *c, cursor *child, size_t n);

typedef struct builder {
	uint8_t *data;
	size_t len, cap, max;
	bool failed;
} builder;

void builder_init(builder *b, size_t max);
void builder_cleanup(builder *b);
bool builder_add_u8(builder *b, uint8_t v);
bool builder_add_u16(builder *b, uint16_t v);
bool builder_add_u32(builder *b, uint32_t v);
bool builder_add_u64(builder *b, uint64_t v);
bool builder_add_bytes(builder *b, const void *p, size_t n);
/* Reserve a u16 length slot; builder_close_u16 back-fills it with the bytes since. */
bool builder_open_u16(builder *b, size_t *slot);
bool builder_close_u16(builder *b, size_t slot);
void builder_put_u16_at(builder *b, size_t at, uint16_t v);
void builder_put_u32_at(builder *b, size_t at, uint32_t v);
/* Hands over the buffer (caller frees); NULL if any add failed. */
uint8_t *builder_finish(builder *b, size_t *out_len);

#endif
