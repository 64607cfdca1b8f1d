#ifndef WFPR_SRC_PRELOAD_CLIENT_H
#define WFPR_SRC_PRELOAD_CLIENT_H

/*
 * The broker's client: what the shim (in unmodified programs) and the
 * library (in the proxies, after wfpr_preload_attach) ask the broker. One
 * connection per process, reopened after fork; calls are serialised. Every
 * call returns 0 or a wfpr_err; WSAENETDOWN when the broker cannot be
 * reached or does not answer in time (never a hang).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "wire.h"

/* The broker's socket path for this process; NULL turns the client off. */
int wfpr__client_set_path(const char *path);
bool wfpr__client_enabled(void);

typedef int (*client_connect_fn)(int fd, const struct sockaddr *addr, socklen_t len);

/* Classify a connect or a new UDP flow on fd to remote, carrying the
 * records SET on fd (NULL if none) and its annotations (notes, wire form,
 * NULL if none). *target is where to send (remote
 * itself when permitted). A block comes back as its error (WSAEACCES,
 * WSAELOOP). On a TCP redirect with connect_fn, this connects (through
 * connect_fn, result in *connect_result, errno kept) and then has the
 * record issued for the port the kernel chose; the caller must not
 * connect again. Otherwise (UDP, or connect_fn NULL) a redirected socket
 * is bound and the record issued before this returns. cookie: fd's
 * SO_COOKIE, or 0 to read it here. */
int wfpr__client_route(int fd, uint64_t cookie, int protocol, const struct sockaddr_storage *remote, const uint8_t *records,
                 size_t records_len, const uint8_t *notes, size_t notes_len, struct sockaddr_storage *target,
                 bool *redirected, client_connect_fn connect_fn, int *connect_result);
/* The record (or context) of the connection a proxy's socket (its
 * SO_COOKIE, local, peer) belongs to, whole, into out (cap >= WIRE_BLOB_MAX). */
int wfpr__client_query(uint64_t socket, int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer,
                 uint32_t flags, uint8_t *out, size_t cap, size_t *len);
/* The end of a QUERY that waited (below): rc, and when 0 the blob. It
 * runs on whichever thread finds the answer, under the client's lock: it
 * must not call the client. */
typedef void (*client_done_fn)(void *arg, int rc, const uint8_t *blob, size_t len);
/* As wfpr__client_query, for TCP, but an answer the broker has not pushed
 * yet is not waited for here: WFPR_WSAEWOULDBLOCK, or, with done,
 * WFPR_WSA_IO_PENDING and done(arg, ...) gets it later (from the push, or
 * from the broker if none comes within a few milliseconds). */
int wfpr__client_query_async(uint64_t socket, int protocol, const struct sockaddr_storage *local,
                             const struct sockaddr_storage *peer, uint32_t flags, uint8_t *out, size_t cap,
                             size_t *len, client_done_fn done, void *arg);
/* The waiting QUERYs of this socket end with WSA_OPERATION_ABORTED. */
void wfpr__client_abort(uint64_t socket);
/* Is this a live record the broker issued? (SET) */
int wfpr__client_check(uint64_t socket, const uint8_t *blob, size_t len);
/* The proxy closed its side of (local, peer): its record may go. */
void wfpr__client_release(uint64_t socket, int protocol, const struct sockaddr_storage *local, const struct sockaddr_storage *peer);
/* The registration key (NULL: REGISTER reads the broker's key file, PATH.key). */
int wfpr__client_set_key(const uint8_t key[WIRE_KEY_SIZE]);
/* Register this process's proxy listening at address (the broker checks
 * the listening socket itself, which goes with the request).
 * address6: the same proxy on IPv6, or NULL */
/* match: NULL or the filter's conditions as text */
/* flags: WIRE_REGISTER_* */
int wfpr__client_register(const char *name, const struct sockaddr_storage *address,
                          const struct sockaddr_storage *address6, uint32_t weight, const char *match,
                          uint32_t flags, uint8_t out_id[WFPR_REDIRECTOR_ID_SIZE]);
int wfpr__client_name(const uint8_t id[WFPR_REDIRECTOR_ID_SIZE], char *out, size_t len);

#endif
