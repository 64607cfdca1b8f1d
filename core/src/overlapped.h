#ifndef WFPR_SRC_OVERLAPPED_H
#define WFPR_SRC_OVERLAPPED_H

/* Overlapped completion: the status/event of a wfpr_overlapped, and the
 * per-thread queues whose completion routines run in wfpr_wait_alertable. */

#include "wfpr/ioctl.h"

typedef struct apc_queue apc_queue;

/* This thread's queue, with a reference for the caller; NULL if out of memory. */
apc_queue *wfpr__apc_queue_self(void);
void wfpr__apc_queue_unref(apc_queue *q);

/* Mark ov complete, signal its event and, with a routine, queue it on q
 * (the issuing thread's queue). Consumes nothing; q may be NULL. */
void wfpr__overlapped_complete(wfpr_overlapped *ov, wfpr_completion_routine routine, apc_queue *q,
                         int err, uint32_t bytes);

#endif
