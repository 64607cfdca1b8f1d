#ifndef WFPR_SRC_EBPF_KERNEL_H
#define WFPR_SRC_EBPF_KERNEL_H

/*
 * The library's side of the eBPF backend: QUERY and SET as getsockopt and
 * setsockopt on the BPF programs' custom level (core/ebpf/abi.h), their
 * errno turned into the conformance table's codes. Every call returns 0 or
 * a wfpr_err.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KERNEL_BLOB_MAX 4096 /* one page: what getsockopt hands a BPF program */

bool kernel_enabled(void);
/* The record (or context) of fd's connection, or of the flow of the
 * datagram fd received last (UDP; the records only the first time). */
int kernel_query(int fd, bool context, uint8_t out[KERNEL_BLOB_MAX], size_t *len);
/* SET: the kernel takes only a record it issued to a live connection. */
int kernel_set(int fd, const uint8_t *blob, size_t len);

#endif
