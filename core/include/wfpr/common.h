#ifndef WFPR_COMMON_H
#define WFPR_COMMON_H

/* Shared definitions for every public wfpr header. */

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define WFPR_EXTERN __attribute__((visibility("default")))
#else
#define WFPR_EXTERN
#endif

#ifdef __cplusplus
#define WFPR_BEGIN_DECL extern "C" {
#define WFPR_END_DECL }
#else
#define WFPR_BEGIN_DECL
#define WFPR_END_DECL
#endif

#define WFPR_VERSION_MAJOR 0
#define WFPR_VERSION_MINOR 1
#define WFPR_VERSION_PATCH 0
#define WFPR_VERSION "0.1.0"

/* A socket is the plain Linux file descriptor of a real kernel socket. */
typedef int wfpr_socket_t;

/* The Winsock-shaped calls return this and set the per-thread last error. */
#define WFPR_SOCKET_ERROR (-1)
#define WFPR_INVALID_SOCKET (-1)

#endif
