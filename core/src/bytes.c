#include <stdlib.h>
#include <string.h>
#include "bytes.h"

bool cursor_get_bytes(cursor *c, const uint8_t **out, size_t n)
{
	if (c->len < n)
		return false;
	*out = c->data;
	c->data += n;
	c->len -= n;
	return true;
}

static bool get_be(cursor *c, uint64_t *out, size_t n)
{
	const uint8_t *p;
	uint64_t v = 0;

	if (!cursor_get_bytes(c, &p, n))
		return false;
	for (size_t i = 0; i < n; i++)
		v = (v << 8) | p[i];
	*out = v;
	return true;
}

bool cursor_get_u8(cursor *c, uint8_t *out)
{
	uint64_t v;
	if (!get_be(c, &v, 1))
		return false;
	*out = (uint8_t)v;
	return true;
}

bool cursor_get_u16(cursor *c, uint16_t *out)
{
	uint64_t v;
	if (!get_be(c, &v, 2))
		return false;
	*out = (uint16_t)v;
	return true;
}

bool cursor_get_u32(cursor *c, uint32_t *out)
{
	uint64_t v;
	if (!get_be(c, &v, 4))
		return false;
	*out = (uint32_t)v;
	return true;
}

bool cursor_get_u64(cursor *c, uint64_t *out)
{
	return get_be(c, out, 8);
}

bool cursor_copy_bytes(cursor *c, void *out, size_t n)
{
	const uint8_t *p;
	if (!cursor_get_bytes(c, &p, n))
		return false;
	memcpy(out, p, n);
	return true;
}

bool cursor_get_sub(cursor *c, cursor *child, size_t n)
{
	const uint8_t *p;
	if (!cursor_get_bytes(c, &p, n))
		return false;
	cursor_init(child, p, n);
	return true;
}

void builder_init(builder *b, size_t max)
{
	memset(b, 0, sizeof(*b));
	b->max = max;
}

void builder_cleanup(builder *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

static uint8_t *builder_reserve(builder *b, size_t n)
{
	if (b->failed)
		return NULL;
	if (n > b->max - b->len) {
		b->failed = true;
		return NULL;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *data = realloc(b->data, cap);
		if (!data) {
			b->failed = true;
			return NULL;
		}
		b->data = data;
		b->cap = cap;
	}
	uint8_t *at = b->data + b->len;
	b->len += n;
	return at;
}

static bool add_be(builder *b, uint64_t v, size_t n)
{
	uint8_t *p = builder_reserve(b, n);
	if (!p)
		return false;
	for (size_t i = n; i-- > 0; v >>= 8)
		p[i] = (uint8_t)v;
	return true;
}

bool builder_add_u8(builder *b, uint8_t v) { return add_be(b, v, 1); }
bool builder_add_u16(builder *b, uint16_t v) { return add_be(b, v, 2); }
bool builder_add_u32(builder *b, uint32_t v) { return add_be(b, v, 4); }
bool builder_add_u64(builder *b, uint64_t v) { return add_be(b, v, 8); }

bool builder_add_bytes(builder *b, const void *p, size_t n)
{
	uint8_t *at = builder_reserve(b, n);
	if (!at)
		return false;
	if (n)
		memcpy(at, p, n);
	return true;
}

bool builder_open_u16(builder *b, size_t *slot)
{
	*slot = b->len;
	return add_be(b, 0, 2);
}

bool builder_close_u16(builder *b, size_t slot)
{
	if (b->failed)
		return false;
	size_t n = b->len - slot - 2;
	if (n > UINT16_MAX) {
		b->failed = true;
		return false;
	}
	builder_put_u16_at(b, slot, (uint16_t)n);
	return true;
}

void builder_put_u16_at(builder *b, size_t at, uint16_t v)
{
	b->data[at] = (uint8_t)(v >> 8);
	b->data[at + 1] = (uint8_t)v;
}

void builder_put_u32_at(builder *b, size_t at, uint32_t v)
{
	for (size_t i = 4; i-- > 0; v >>= 8)
		b->data[at + i] = (uint8_t)v;
}

uint8_t *builder_finish(builder *b, size_t *out_len)
{
	if (b->failed) {
		builder_cleanup(b);
		return NULL;
	}
	uint8_t *data = b->data;
	*out_len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return data;
}
