#ifndef WFPR_IOCTL_H
#define WFPR_IOCTL_H

/*
 * The WSAIoctl-shaped entry point for the redirect-record control codes,
 * with overlapped completion. Every row of the conformance table in
 * docs/ioctl.md is implemented here.
 */

#include "common.h"

WFPR_BEGIN_DECL

#define WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS 0x980000DCu
#define WFPR_SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT 0x980000DDu
#define WFPR_SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS 0x980000DEu
#define WFPR_SIO_FLUSH 0x28000004u

/*
 * An overlapped operation. Initialise with wfpr_overlapped_init (which makes
 * event_fd, an eventfd that turns readable at completion) and keep it, and
 * the output buffer, alive until the operation completes.
 */
typedef struct wfpr_overlapped {
	uint32_t status; /* WSA_IO_PENDING while pending, then 0 or an error code */
	uint32_t bytes;  /* bytes returned, valid once complete */
	int event_fd;    /* pollable; readable once complete */
	void *user;      /* for the caller */
} wfpr_overlapped;

/* LPWSAOVERLAPPED_COMPLETION_ROUTINE: runs only inside wfpr_wait_alertable
 * on the thread that started the operation. */
typedef void (*wfpr_completion_routine)(uint32_t error, uint32_t bytes, wfpr_overlapped *ov, uint32_t flags);

WFPR_EXTERN int wfpr_overlapped_init(wfpr_overlapped *ov);
/* Clear the event before reusing ov (WSAResetEvent). */
WFPR_EXTERN int wfpr_overlapped_reset(wfpr_overlapped *ov);
WFPR_EXTERN void wfpr_overlapped_dispose(wfpr_overlapped *ov);

/* Returns 0 or WFPR_SOCKET_ERROR with wfpr_get_last_error() set. */
WFPR_EXTERN int wfpr_ioctl(wfpr_socket_t s, uint32_t code, const void *in, uint32_t in_len,
                           void *out, uint32_t out_len, uint32_t *bytes_returned,
                           wfpr_overlapped *ov, wfpr_completion_routine routine);

/* WSAGetOverlappedResult: 0 when complete and successful, else
 * WFPR_SOCKET_ERROR with the operation's error, or WSA_IO_INCOMPLETE when
 * still pending and wait is 0. flags is optional. */
WFPR_EXTERN int wfpr_get_overlapped_result(wfpr_socket_t s, wfpr_overlapped *ov, uint32_t *bytes,
                                           int wait, uint32_t *flags);

/* An alertable wait: runs the completion routines queued for this thread,
 * waiting up to timeout_ms (-1: forever) for one. Returns how many ran. */
WFPR_EXTERN int wfpr_wait_alertable(int timeout_ms);

WFPR_END_DECL

#endif
