#ifndef WFPR_PRELOAD_UNMODIFIED_H
#define WFPR_PRELOAD_UNMODIFIED_H

/*
 * The shim in an unmodified transparent proxy (haproxy, mitmproxy: written
 * for netfilter REDIRECT), started by `wfpr redirector run`
 * (docs/unmodified-proxies.md). The environment names it:
 *   WFPR_REDIRECTOR         its redirector's name
 *   WFPR_REDIRECTOR_LISTEN  where it listens (127.0.0.1:PORT)
 *   WFPR_REDIRECTOR_WEIGHT, WFPR_REDIRECTOR_MATCH  its filter (optional)
 *   WFPR_KEY_FILE           the broker's key file (default: WFPR_BROKER.key)
 * When it listens there, the shim registers it with the broker. On the
 * connections it accepts, getsockopt(SO_ORIGINAL_DST) answers from the
 * record, and its connects to a connection's original destination carry
 * that record (the oldest not yet carried, within 10 s of the accept).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef int (*unmodified_getsockopt_fn)(int, int, int, void *, socklen_t *);

/* From the environment, once; false when this process is no such proxy. */
bool wfpr__unmodified_init(void);
/* fd now listens: if it is at the named address, register. */
void wfpr__unmodified_listened(int fd);
/* accepted came from listener: remember its record, for the carry. */
void wfpr__unmodified_accepted(int listener, int accepted);
/* getsockopt(level, SO_ORIGINAL_DST) on fd: 0 and the answer in out/len;
 * -1 to let the kernel answer (no record, or not this level's family). */
int wfpr__unmodified_original_dst(int fd, int level, void *out, socklen_t *len);
/* fd connects to dest: the records to carry into out (cap bytes), their
 * length; 0 when there are none. */
size_t wfpr__unmodified_carry(int fd, const struct sockaddr_storage *dest, uint8_t *out, size_t cap);
/* fd is about to close: an accepted connection's record can go. */
void wfpr__unmodified_closing(int fd);

#endif
