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
#include <string.h>

typedef struct cursor {
	const uint8_t *data;
	size_t len;
} cursor;

static inline void cursor_init(cursor *c, const void *data, size_t len)
{
	c->data = data;
	c->len = len;
}

/* The getters are inline: a record parse makes dozens of them per hop. */
static inline bool cursor_get_bytes(cursor *c, const uint8_t **out, size_t n)
{
	if (c->len < n)
		return false;
	*out = c->data;
	c->data += n;
	c->len -= n;
	return true;
}

static inline bool cursor_get_u8(cursor *c, uint8_t *out)
{
	const uint8_t *p;
	if (!cursor_get_bytes(c, &p, 1))
		return false;
	*out = p[0];
	return true;
}

static inline bool cursor_get_u16(cursor *c, uint16_t *out)
{
	const uint8_t *p;
	if (!cursor_get_bytes(c, &p, 2))
		return false;
	*out = (uint16_t)((p[0] << 8) | p[1]);
	return true;
}

static inline bool cursor_get_u32(cursor *c, uint32_t *out)
{
	const uint8_t *p;
	if (!cursor_get_bytes(c, &p, 4))
		return false;
	*out = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
	return true;
}

static inline bool cursor_get_u64(cursor *c, uint64_t *out)
{
	uint32_t hi, lo;
	if (c->len < 8)
		return false;
	cursor_get_u32(c, &hi);
	cursor_get_u32(c, &lo);
	*out = ((uint64_t)hi << 32) | lo;
	return true;
}

static inline bool cursor_copy_bytes(cursor *c, void *out, size_t n)
{
	const uint8_t *p;
	if (!cursor_get_bytes(c, &p, n))
		return false;
	memcpy(out, p, n);
	return true;
}

/* A child cursor over the next n bytes: nested lengths confine the child. */
static inline bool cursor_get_sub(cursor *c, cursor *child, size_t n)
{
	const uint8_t *p;
	if (!cursor_get_bytes(c, &p, n))
		return false;
	cursor_init(child, p, n);
	return true;
}

typedef struct builder {
	uint8_t *data;
	size_t len, cap, max;
	bool failed;
} builder;

/* max: the most it may grow to; hint: the capacity to start with. */
void wfpr__builder_init(builder *b, size_t max, size_t hint);
void wfpr__builder_cleanup(builder *b);
/* Grows the buffer; the slow path of builder_reserve. */
bool wfpr__builder_grow(builder *b, size_t n);

/* n more bytes at the end, or NULL once the builder has failed. */
static inline uint8_t *builder_reserve(builder *b, size_t n)
{
	if (b->failed || (b->len + n > b->cap && !wfpr__builder_grow(b, n)))
		return NULL;
	uint8_t *at = b->data + b->len;
	b->len += n;
	return at;
}

static inline bool builder_add_be(builder *b, uint64_t v, size_t n)
{
	uint8_t *p = builder_reserve(b, n);
	if (!p)
		return false;
	for (size_t i = n; i-- > 0; v >>= 8)
		p[i] = (uint8_t)v;
	return true;
}

static inline bool builder_add_u8(builder *b, uint8_t v) { return builder_add_be(b, v, 1); }
static inline bool builder_add_u16(builder *b, uint16_t v) { return builder_add_be(b, v, 2); }
static inline bool builder_add_u32(builder *b, uint32_t v) { return builder_add_be(b, v, 4); }
static inline bool builder_add_u64(builder *b, uint64_t v) { return builder_add_be(b, v, 8); }

static inline bool builder_add_bytes(builder *b, const void *p, size_t n)
{
	uint8_t *at = builder_reserve(b, n);
	if (!at)
		return false;
	if (n)
		memcpy(at, p, n);
	return true;
}

/* Reserve a u16 length slot; wfpr__builder_close_u16 back-fills it with the bytes since. */
static inline bool builder_open_u16(builder *b, size_t *slot)
{
	*slot = b->len;
	return builder_add_be(b, 0, 2);
}

bool wfpr__builder_close_u16(builder *b, size_t slot);
void wfpr__builder_put_u16_at(builder *b, size_t at, uint16_t v);
void wfpr__builder_put_u32_at(builder *b, size_t at, uint32_t v);
/* Hands over the buffer (caller frees); NULL if any add failed. */
uint8_t *wfpr__builder_finish(builder *b, size_t *out_len);

#endif
