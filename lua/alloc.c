/* The counting lua_Alloc: the state's whole footprint is capped at
 * opts.memory_limit; past it an allocation fails and Lua raises a memory
 * error, which the host turns into the default verdict. Every block is on
 * a list, so that a state the watchdog abandoned (its insides may be
 * half-updated, so lua_close cannot be trusted) is freed block by block,
 * without reading it. */
#include <stdalign.h>
#include <stdlib.h>
#include "host.h"

typedef struct block {
	alignas(max_align_t) struct block *prev;
	struct block *next;
} block;

static void link_block(wfpr_rules *r, block *b)
{
	b->prev = NULL;
	b->next = r->blocks;
	if (r->blocks)
		r->blocks->prev = b;
	r->blocks = b;
}

static void unlink_block(wfpr_rules *r, block *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		r->blocks = b->next;
	if (b->next)
		b->next->prev = b->prev;
}

static void *alloc(wfpr_rules *r, void *ptr, size_t osize, size_t nsize)
{
	size_t old = ptr ? osize : 0;
	block *b = ptr ? (block *)ptr - 1 : NULL;

	if (nsize == 0) {
		if (b) {
			unlink_block(r, b);
			free(b);
		}
		r->in_use -= old;
		return NULL;
	}
	if ((nsize > old && nsize - old > r->opts.memory_limit - r->in_use) || nsize > SIZE_MAX - sizeof(block)) {
		r->over_limit = true;
		return NULL;
	}
	if (b)
		unlink_block(r, b);
	block *grown = realloc(b, sizeof(block) + nsize);
	if (!grown) {
		if (b)
			link_block(r, b); /* the old block stays, as Lua expects */
		return NULL;
	}
	link_block(r, grown);
	r->in_use = r->in_use - old + nsize;
	if (r->in_use > r->peak)
		r->peak = r->in_use;
	return grown + 1;
}

void *wfpr__rules_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	wfpr_rules *r = ud;
	/* the watchdog never jumps out of here (it would leave malloc's lock,
	 * or this list, half-changed): it marks the call, and the jump happens
	 * once the allocation is done */
	r->in_alloc = 1;
	void *p = alloc(r, ptr, osize, nsize);
	r->in_alloc = 0;
	if (r->abort_pending && r->in_call)
		siglongjmp(r->abort_to, 1);
	return p;
}

void wfpr__rules_free_all(wfpr_rules *r)
{
	for (block *b = r->blocks, *next; b; b = next) {
		next = b->next;
		free(b);
	}
	r->blocks = NULL;
	r->in_use = 0;
}
