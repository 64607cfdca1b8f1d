/* The counting lua_Alloc: the state's whole footprint is capped at
 * opts.memory_limit; past it an allocation fails and Lua raises a memory
 * error, which the host turns into the default verdict. */
#include <stdlib.h>
#include "host.h"

void *wfpr__rules_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	wfpr_rules *r = ud;
	size_t old = ptr ? osize : 0;

	if (nsize == 0) {
		free(ptr);
		r->in_use -= old;
		return NULL;
	}
	if (nsize > old && nsize - old > r->opts.memory_limit - r->in_use) {
		r->over_limit = true;
		return NULL;
	}
	void *p = realloc(ptr, nsize);
	if (!p)
		return NULL;
	r->in_use = r->in_use - old + nsize;
	if (r->in_use > r->peak)
		r->peak = r->in_use;
	return p;
}
