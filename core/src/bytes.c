#include <stdlib.h>
#include <string.h>
#include "bytes.h"

void wfpr__builder_init(builder *b, size_t max, size_t hint)
{
	memset(b, 0, sizeof(*b));
	b->max = max;
	if (hint > max)
		hint = max;
	b->data = hint ? malloc(hint) : NULL;
	b->cap = b->data ? hint : 0;
}

void wfpr__builder_cleanup(builder *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

bool wfpr__builder_grow(builder *b, size_t n)
{
	if (n > b->max - b->len) {
		b->failed = true;
		return false;
	}
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap *= 2;
	if (cap > b->max)
		cap = b->max; /* so the inline fast path can never pass max */
	uint8_t *data = realloc(b->data, cap);
	if (!data) {
		b->failed = true;
		return false;
	}
	b->data = data;
	b->cap = cap;
	return true;
}

bool wfpr__builder_close_u16(builder *b, size_t slot)
{
	if (b->failed)
		return false;
	size_t n = b->len - slot - 2;
	if (n > UINT16_MAX) {
		b->failed = true;
		return false;
	}
	wfpr__builder_put_u16_at(b, slot, (uint16_t)n);
	return true;
}

void wfpr__builder_put_u16_at(builder *b, size_t at, uint16_t v)
{
	b->data[at] = (uint8_t)(v >> 8);
	b->data[at + 1] = (uint8_t)v;
}

void wfpr__builder_put_u32_at(builder *b, size_t at, uint32_t v)
{
	for (size_t i = 4; i-- > 0; v >>= 8)
		b->data[at + i] = (uint8_t)v;
}

uint8_t *wfpr__builder_finish(builder *b, size_t *out_len)
{
	if (b->failed) {
		wfpr__builder_cleanup(b);
		return NULL;
	}
	uint8_t *data = b->data;
	*out_len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return data;
}
